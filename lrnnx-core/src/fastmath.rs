//! Branch-free `f32` elementary functions for the step path of the time-varying layers, written
//! so that loops over slices vectorize (no table look-ups, no data-dependent branches).
//! Accuracy (each function states and tests its own bound): `exp` within 2 ulp of the correctly
//! rounded value on `[−87.3, EXP_MAX]`, 0 below (it returns no subnormal or near-subnormal
//! results) and +∞ above, where `e^x` overflows `f32`.

/// The largest `f32` whose `e^x` is finite in `f32` (`ln(f32::MAX)` = 88.722839… rounded
/// down): [`exp`] and [`expm1`] return +∞ above it.
pub const EXP_MAX: f32 = 88.722_83;

/// `e^x` for `f32`: `x = k·ln2 + r` with `|r| ≤ ln2/2`, `e^r = 1 + r + r²·P(r)` (Cephes'
/// minimax polynomial), scaled by `2^k` through the exponent bits. `k` is read from the bits of
/// the rounding sum `k + 1.5·2^23` (a float-to-int conversion would not vectorize on x86), and
/// `2^k` is applied in two halves so that `k = 128` (x near 88.72) stays finite. Returns 0
/// below −87.3 (no subnormal results), +∞ above [`EXP_MAX`], NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23; bits 0x4b40_0000
    let xc = x.clamp(-87.3, EXP_MAX);
    let kr = xc * LOG2E + ROUND;
    let k = kr - ROUND;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes 5.000_000_1e-1, which rounds to 0.5 in f32
    let er = p * r * r + r + 1.0;
    // k ∈ [−126, 128] from the bits of kr = 0x4b40_0000 + k.
    let k = (kr.to_bits() as i32).wrapping_sub(0x4b40_0000);
    let k1 = k >> 1;
    let s1 = f32::from_bits((k1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((k.wrapping_sub(k1).wrapping_add(127) as u32) << 23);
    let y = er * s1 * s2;
    if x < -87.3 {
        0.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        y
    }
}

/// `e^x` for `x ≤ 0` only (decay factors such as `exp(Δ·A)` with `Δ ≥ 0`, `A ≤ 0`): [`exp`]
/// without its overflow handling (no upper clamp, no ∞ select, `2^k` in one scale since
/// `k ≤ 0`). Same result as [`exp`] for every `x ≤ 0` (bit for bit, tested); for `x > 0` the
/// result is meaningless, so callers must guarantee the sign.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23; bits 0x4b40_0000
                                     // A select rather than `max`, so that NaN propagates as in [`exp`].
    let xc = if x < -87.3 { -87.3 } else { x };
    let kr = xc * LOG2E + ROUND;
    let k = kr - ROUND;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // k ∈ [−126, 0]: 2^k is a normal number, applied in one multiplication.
    let k = (kr.to_bits() as i32).wrapping_sub(0x4b40_0000);
    let s = f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = er * s;
    if x < -87.3 {
        0.0
    } else {
        y
    }
}

/// `e^x − 1` for `f32` without cancellation near 0: with the reduction of [`exp`],
/// `x = k·ln2 + r`, `e^x − 1 = 2^k·(e^r − 1) + (2^k − 1)` where `e^r − 1 = r + r²·P(r)` is
/// evaluated without adding 1. Returns −1 below −87.3 and +∞ above [`EXP_MAX`].
/// Accuracy: within 3 ulp of the correctly rounded value (tested against `libm::expm1` in
/// `f64`), including tiny `|x|` where `exp(x) − 1` would lose every digit.
#[inline(always)]
pub fn expm1(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, EXP_MAX);
    let kr = xc * LOG2E + ROUND;
    let k = kr - ROUND;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes 5.000_000_1e-1, which rounds to 0.5 in f32
    let em1 = p * r * r + r; // e^r − 1
                             // k from the bits of the rounding sum (vectorizes, unlike a float-to-int conversion);
                             // 2^k in two halves so that k = 128 does not overflow.
    let k = (kr.to_bits() as i32).wrapping_sub(0x4b40_0000);
    let k1 = k >> 1;
    let s1 = f32::from_bits((k1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((k.wrapping_sub(k1).wrapping_add(127) as u32) << 23);
    let s = s1 * s2; // 2^k; +∞ only for k = 128, where `big` is selected
    let moderate = em1 * s + (s - 1.0);
    let big = (em1 + 1.0) * s1 * s2 - 1.0;
    let y = if k > 24 { big } else { moderate };
    if x < -87.3 {
        -1.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        y
    }
}

/// Natural logarithm `ln x` for `f32`, branch-free (Cephes' `logf`): `x = m·2^e` with
/// `m ∈ [√½, √2)`, `ln m = t − t²/2 + t³·P(t)` with `t = m − 1`, plus `e·ln2` in two parts.
/// Subnormal inputs are scaled by `2^25` first. `ln 0 = −∞`, `ln x = NaN` for `x < 0` or NaN,
/// `ln ∞ = ∞`. Accuracy: within 2 ulp of the correctly rounded value over all positive `f32`
/// (tested against `libm::log` in `f64`).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = core::f32::consts::FRAC_1_SQRT_2;
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 33_554_432.0 } else { x }; // 2^25
    let bits = xs.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 126 - if sub { 25 } else { 0 };
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // m ∈ [0.5, 1)
    let lo = m < SQRT_HALF;
    let e = e - lo as i32;
    let t = if lo { m + m - 1.0 } else { m - 1.0 };
    let z = t * t;
    let mut p = 7.037_683_6e-2f32;
    p = p * t - 1.151_461e-1;
    p = p * t + 1.167_699_9e-1;
    p = p * t - 1.242_014_1e-1;
    p = p * t + 1.424_932_3e-1;
    p = p * t - 1.666_805_8e-1;
    p = p * t + 2.000_071_5e-1;
    p = p * t - 2.499_999_4e-1;
    p = p * t + 3.333_333e-1; // Cephes 3.333_333_1e-1, rounded to f32
    let ef = e as f32;
    let y = p * t * z - 2.121_944_4e-4 * ef - 0.5 * z;
    let r = (t + y) + 0.693_359_4 * ef;
    if x.is_nan() || x < 0.0 {
        f32::NAN
    } else if x == 0.0 {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::INFINITY
    } else {
        r
    }
}

/// `ln(1 + x)` for `f32`, accurate near 0: with `u = 1 + x` (rounded),
/// `ln(1 + x) = ln u + ((x − (u − 1))/u)` (the first-order correction for the rounding of `u`).
/// `log1p(−1) = −∞`, NaN below −1, `log1p(∞) = ∞`. Accuracy: within 2 ulp (tested against
/// `libm::log1p` in `f64` over `(−1, 10^30]`).
#[inline(always)]
pub fn log1p(x: f32) -> f32 {
    let u = 1.0 + x;
    let r = ln(u) + (x - (u - 1.0)) / u;
    if x == f32::INFINITY || u == 0.0 {
        ln(u)
    } else {
        r
    }
}

/// PyTorch's softplus (threshold 20): `ln(1 + e^x)` for `x ≤ 20`, `x` above, evaluated as
/// `max(x, 0) + log1p(e^{−|x|})` (no overflow, no cancellation). Returns 0 below −87.3 where the
/// exact value is below `1.2e−38`. Accuracy: relative error below `4e−7` (about 3 ulp) for
/// `x ≥ −87` (tested against the `f64` formula).
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    let e = exp(-x.abs());
    let r = x.max(0.0) + log1p(e);
    if x > 20.0 {
        x
    } else {
        r
    }
}

/// Logistic sigmoid `σ(x) = 1/(1 + e^{−x})`. Accuracy: relative error below `4e−7` over the
/// whole `f32` range where `σ(x) ≥ 1.2e−38` (tested against the `f64` formula); 0 below
/// `−EXP_MAX` (−∞ included).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// SiLU `x·σ(x) = x/(1 + e^{−x})`. Accuracy: relative error below `4e−7` where the result is a
/// normal `f32` (`|x·σ(x)| ≥ 1.2e−38`; below that, within 2 ulp) (tested against the `f64`
/// formula); exactly `−0` below `−EXP_MAX`, −∞ included (the limit, where the formula would
/// give `−∞/∞`).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let y = x / (1.0 + exp(-x));
    if x < -EXP_MAX {
        -0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_diff(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_f64() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.5 {
            let want = libm::exp(x as f64) as f32;
            worst = worst.max(ulp_diff(exp(x), want));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst ulp error {worst}");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!((exp(88.7) - libm::expf(88.7)).abs() / libm::expf(88.7) < 3e-7);
    }

    /// Relative error of `got` against the `f64` reference `want`.
    /// `|got − want| / |want|` (`|got|` where `want` is 0); infinite when either is NaN, so a
    /// NaN fails every bound even through `f64::max`.
    fn rel(got: f32, want: f64) -> f64 {
        if got.is_nan() || want.is_nan() {
            f64::INFINITY
        } else if want == 0.0 {
            (got as f64).abs()
        } else {
            ((got as f64 - want) / want).abs()
        }
    }

    /// Visits about 200k points spread log-uniformly over `±[1e-30, hi]` plus 0.
    fn sweep(hi: f32, mut f: impl FnMut(f32)) {
        f(0.0);
        let steps = 100_000;
        let (l0, l1) = (libm::log(1e-30f64), libm::log(hi as f64));
        for i in 0..=steps {
            let v = libm::exp(l0 + (l1 - l0) * i as f64 / steps as f64) as f32;
            f(v);
            f(-v);
        }
    }

    #[test]
    fn exp_nonpositive_equals_exp_for_every_nonpositive_input() {
        let mut x = 0.0f32;
        while x > -90.0 {
            assert_eq!(exp_nonpositive(x).to_bits(), exp(x).to_bits(), "x = {x}");
            x -= 0.000_377;
        }
        for x in [-0.0f32, -1e-30, -87.29, -87.31, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp_nonpositive(x).to_bits(), exp(x).to_bits(), "x = {x}");
        }
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn exp_is_within_two_ulp_up_to_the_overflow_edge() {
        // Near the top of the range the scaling by 2^k happens in two halves.
        let mut x = 88.0f32;
        while x <= 88.72 {
            let want = libm::exp(x as f64) as f32;
            assert!(ulp_diff(exp(x), want) <= 2, "x = {x}");
            x += 0.000_31;
        }
        // every f32 from 88.72 to EXP_MAX is finite and within 2 ulp; the next one overflows
        let mut x = 88.72f32;
        while x <= EXP_MAX {
            let want = libm::exp(x as f64) as f32;
            assert!(want.is_finite() && ulp_diff(exp(x), want) <= 2, "x = {x}");
            assert!(ulp_diff(expm1(x), want) <= 3, "expm1, x = {x}");
            x = f32::from_bits(x.to_bits() + 1);
        }
        assert!(
            libm::exp(x as f64) as f32 == f32::INFINITY,
            "EXP_MAX is not the last"
        );
        assert_eq!((exp(x), expm1(x)), (f32::INFINITY, f32::INFINITY));
        assert_eq!(exp(88.8), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn expm1_is_within_three_ulp_of_libm_f64() {
        let mut worst = 0;
        sweep(88.0, |x| {
            if x < -87.0 {
                return;
            }
            let want = libm::expm1(x as f64) as f32;
            worst = worst.max(ulp_diff(expm1(x), want));
        });
        assert!(worst <= 3, "worst ulp error {worst}");
        assert_eq!(expm1(0.0), 0.0);
        assert_eq!(expm1(-100.0), -1.0);
        assert_eq!(expm1(100.0), f32::INFINITY);
        assert!(expm1(f32::NAN).is_nan());
        assert_eq!(expm1(1e-30), 1e-30);
    }

    #[test]
    fn ln_is_within_two_ulp_of_libm_f64() {
        let mut worst = 0;
        let mut bits = 1u32; // every 997th positive float, subnormals included
        while bits < f32::INFINITY.to_bits() {
            let x = f32::from_bits(bits);
            let want = libm::log(x as f64) as f32;
            worst = worst.max(ulp_diff(ln(x), want));
            bits += 997;
        }
        assert!(worst <= 2, "worst ulp error {worst}");
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert_eq!(ln(f32::INFINITY), f32::INFINITY);
        assert!(ln(-1.0).is_nan() && ln(f32::NAN).is_nan());
    }

    #[test]
    fn log1p_is_within_two_ulp_of_libm_f64() {
        let mut worst = 0;
        sweep(1e30, |x| {
            if x <= -1.0 {
                return;
            }
            let want = libm::log1p(x as f64) as f32;
            worst = worst.max(ulp_diff(log1p(x), want));
        });
        let mut x = -0.999_99f32;
        while x < 4.0 {
            let want = libm::log1p(x as f64) as f32;
            worst = worst.max(ulp_diff(log1p(x), want));
            x += 0.000_377;
        }
        assert!(worst <= 2, "worst ulp error {worst}");
        assert_eq!(log1p(-1.0), f32::NEG_INFINITY);
        assert_eq!(log1p(f32::INFINITY), f32::INFINITY);
        assert!(log1p(-2.0).is_nan());
    }

    #[test]
    fn softplus_sigmoid_silu_match_f64_formulas() {
        let (mut w_sp, mut w_sig, mut w_silu) = (0.0f64, 0.0f64, 0.0f64);
        sweep(1e30, |x| {
            let xd = x as f64;
            let sp = if xd > 20.0 {
                xd
            } else {
                libm::log1p(libm::exp(xd))
            };
            if x >= -87.0 {
                w_sp = w_sp.max(rel(softplus(x), sp));
            }
            let sig = 1.0 / (1.0 + libm::exp(-xd));
            if sig >= 1.2e-38 {
                w_sig = w_sig.max(rel(sigmoid(x), sig));
                w_silu = w_silu.max(rel(silu(x), xd * sig));
            }
        });
        assert!(w_sp < 4e-7, "softplus worst relative error {w_sp:e}");
        assert!(w_sig < 4e-7, "sigmoid worst relative error {w_sig:e}");
        assert!(w_silu < 4e-7, "silu worst relative error {w_silu:e}");
        // Threshold 20 exactly as PyTorch: identity above.
        assert_eq!(softplus(20.5), 20.5);
        assert_eq!(softplus(1e30), 1e30);
        assert_eq!(softplus(-100.0), 0.0);
        assert_eq!(sigmoid(-100.0), 0.0);
        assert_eq!(sigmoid(100.0), 1.0);
        assert_eq!(silu(-100.0), 0.0);
        assert_eq!(silu(100.0), 100.0);
        assert!(softplus(f32::NAN).is_nan() && silu(f32::NAN).is_nan());
        // the limits at ±∞ (silu(−∞) would be −∞/∞ by the formula)
        assert_eq!(silu(f32::NEG_INFINITY).to_bits(), (-0.0f32).to_bits());
        assert_eq!(silu(-EXP_MAX - 0.01).to_bits(), (-0.0f32).to_bits());
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
        assert_eq!(
            (sigmoid(f32::NEG_INFINITY), sigmoid(f32::INFINITY)),
            (0.0, 1.0)
        );
        // results below the normal range: within 2 ulp of the rounded f64 formula
        for bits in (1u32..0x0080_0000).step_by(9973) {
            let x = -f32::from_bits(bits) * 2.0;
            let xd = x as f64;
            let want = (xd / (1.0 + libm::exp(-xd))) as f32;
            assert!(ulp_diff(silu(x), want) <= 2, "x = {x:e}");
        }
    }
}
