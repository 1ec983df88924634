//! Branch-free `f32` sine and cosine for the step path of the event-driven layers (the complex
//! transition `exp(τΔΛ) = e^{τΔ Re Λ}·(cos(τΔ Im Λ) + i·sin(τΔ Im Λ))` of S5 in Event-SSM mode),
//! written so that loops over slices vectorize: no table look-ups, and the quadrant logic is
//! done with selects and sign-bit flips instead of data-dependent branches.
//!
//! Accuracy for `|x| ≤ 8192`: absolute error below 1.2e-7 against the exact values, which is
//! within 2 ulp of the correctly rounded value wherever `|sin x|`, `|cos x| ≥ 0.01` (near a zero
//! of sin or cos the result is tiny and only the absolute bound holds: hundreds of ulp of
//! it). Beyond 8192 the argument reduction loses accuracy gradually (measured: 5e-7 at 10^5,
//! 3e-2 at 10^6, no phase left near 2^23), but the results always stay in `[−1, 1]`. NaN and
//! ±∞ give NaN.

/// `(sin x, cos x)` for `f32`.
///
/// `x = q·π/2 + r` with `q` the nearest integer to `x·2/π` and `|r| ≤ π/4` (Cody–Waite reduction
/// with π/2 split in three parts), then `sin r = r + r³·S(r²)` and
/// `cos r = 1 − r²/2 + r⁴·C(r²)` (Cephes' minimax polynomials), and by quadrant `q mod 4`:
/// `(sin x, cos x) = (s, c), (c, −s), (−s, −c), (−c, s)`.
#[inline(always)]
pub fn sincos(x: f32) -> (f32, f32) {
    const FRAC_2_PI: f32 = core::f32::consts::FRAC_2_PI;
    // π/2 = DP1 + DP2 + DP3, DP1 and DP2 with few significant bits so that q·DP1, q·DP2 are exact.
    const DP1: f32 = 1.570_312_5;
    const DP2: f32 = 4.837_513e-4;
    const DP3: f32 = 7.549_79e-8;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer
    let qr = x * FRAC_2_PI + ROUND;
    let q = qr - ROUND;
    // |r| exceeds π/4 only by the rounding of q (below 1e-3 for |x| ≤ 8192); the clamp at ±1
    // only bites for huge |x|, where the reduction is meaningless, and keeps |sin|, |cos| ≤ 1.
    let r = (((x - q * DP1) - q * DP2) - q * DP3).clamp(-1.0, 1.0);
    let r2 = r * r;
    let s = r + r * r2 * (-1.666_665_5e-1 + r2 * (8.332_161e-3 + r2 * -1.951_529_6e-4));
    let c =
        1.0 - 0.5 * r2 + r2 * r2 * (4.166_664_6e-2 + r2 * (-1.388_731_6e-3 + r2 * 2.443_315_7e-5));
    // q mod 4 from the low bits of the rounding sum (a float-to-int conversion would not
    // vectorize on x86); exact while |q| < 2^22, and any quadrant is as good as another beyond.
    let qi = qr.to_bits() as i32;
    let swap = qi & 1 != 0;
    let (sn, cs) = if swap { (c, s) } else { (s, c) };
    let sin_flip = ((qi & 2) as u32) << 30;
    let cos_flip = ((qi.wrapping_add(1) & 2) as u32) << 30;
    (
        f32::from_bits(sn.to_bits() ^ sin_flip),
        f32::from_bits(cs.to_bits() ^ cos_flip),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_matches_libm_f64() {
        let (mut worst, mut worst_ulp) = (0.0f64, 0i64);
        let mut x = -8192.0f32;
        while x < 8192.0 {
            let (s, c) = sincos(x);
            assert!(!s.is_nan() && !c.is_nan(), "sincos({x}) is NaN");
            let xd = x as f64;
            let (ws, wc) = (libm::sin(xd), libm::cos(xd));
            worst = worst.max((s as f64 - ws).abs()).max((c as f64 - wc).abs());
            for (got, want) in [(s, ws), (c, wc)] {
                if want.abs() >= 0.01 {
                    let ulps = (got.to_bits() as i64 - (want as f32).to_bits() as i64).abs();
                    worst_ulp = worst_ulp.max(ulps);
                }
            }
            x += 0.013_7;
        }
        assert!(worst < 1.2e-7, "worst abs error {worst}");
        assert!(
            worst_ulp <= 2,
            "worst ulp error {worst_ulp} where |result| ≥ 0.01"
        );
    }

    #[test]
    fn sincos_small_and_quadrant_edges() {
        use core::f32::consts::{FRAC_PI_2, PI};
        for &x in &[
            0.0f32, 1e-8, -1e-8, 0.785, 0.786, FRAC_PI_2, PI, -PI, 4.712389, 100.0,
        ] {
            let (s, c) = sincos(x);
            let xd = x as f64;
            assert!((s as f64 - libm::sin(xd)).abs() < 1e-7, "sin {x}");
            assert!((c as f64 - libm::cos(xd)).abs() < 1e-7, "cos {x}");
        }
        assert_eq!(sincos(0.0), (0.0, 1.0));
        assert!(sincos(f32::NAN).0.is_nan());
        assert!(sincos(f32::INFINITY).1.is_nan());
    }

    #[test]
    fn sincos_of_huge_arguments_stays_bounded() {
        for x in [1e7f32, 1.3e7, 1e8, 1e10, 1e20, 3e38, -3e38] {
            let (s, c) = sincos(x);
            assert!(
                s.abs() <= 1.0 && c.abs() <= 1.0,
                "sincos({x:e}) = ({s}, {c})"
            );
        }
    }
}
