//! The RG-LRU scan of lrnnx (`rglru_scan_fn` / `rglru_scan_ref`, spec §4.6), and the per-time
//! update that [`RgLru`](crate::rglru::RgLru) steps with.
//!
//! ```text
//! Ā_t = A ^ δ_t = exp(δ_t · ln A)          A ∈ (0,1)^{D×n}, δ (b,D,L)
//! h_t = Ā_t ⊙ h_{t−1} + sqrt(1 − Ā_t²) ⊙ u_t      (h_{−1} = 0, u broadcast over n)
//! y_t = Σ_n h_t[n]
//! ```

use crate::error::sum_of_products;
use crate::error::{check_len, Result};
use crate::fastmath;

/// The per-state RG-LRU update, shared by the scan and the layer's step, from the log-decay
/// `e = δ·ln a` (`Ā = a^δ = e^e`): `h ← Ā·h + sqrt(1 − Ā²)·u`, with the input gain computed
/// as `sqrt(−expm1(2e))`, free of the cancellation of `1 − Ā²` when `Ā` is close to 1 (the
/// regime of trained Griffin-style decays; lrnnx's f32 formula loses up to 1% there).
#[inline(always)]
pub fn advance(h: f32, log_decay: f32, u: f32) -> f32 {
    let a_bar = fastmath::exp(log_decay);
    let gain = libm::sqrtf(-fastmath::expm1(2.0 * log_decay));
    a_bar * h + gain * u
}

/// Sizes of an RG-LRU scan call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RgLruScanDims {
    /// b, independent sequences.
    pub batch: usize,
    /// D, channels.
    pub d: usize,
    /// n, states per channel (lrnnx's `dstate`; the RG-LRU layer uses 1).
    pub d_state: usize,
    /// L, time steps.
    pub len: usize,
}

/// Runs the RG-LRU scan (module doc): `u` (b, D, L) pre-gated input, `delta` (b, D, L) exponent,
/// `a` (D, n) base in (0, 1); writes `out` (b, D, L) and `last_state` (b, D, n) = `h_{L−1}`.
/// A base outside (0, 1] gives NaN or growing states, as in lrnnx.
///
/// Errors: [`Error::BufferLength`](crate::Error::BufferLength) when a buffer does not match
/// `dims`. Does not allocate.
pub fn rglru_scan(
    dims: RgLruScanDims,
    u: &[f32],
    delta: &[f32],
    a: &[f32],
    out: &mut [f32],
    last_state: &mut [f32],
) -> Result<()> {
    let RgLruScanDims {
        batch,
        d,
        d_state: n,
        len,
    } = dims;
    check_len("u (b, D, L)", sum_of_products(&[&[batch, d, len]]), u.len())?;
    check_len(
        "delta (b, D, L)",
        sum_of_products(&[&[batch, d, len]]),
        delta.len(),
    )?;
    check_len("A (D, n)", sum_of_products(&[&[d, n]]), a.len())?;
    check_len(
        "out (b, D, L)",
        sum_of_products(&[&[batch, d, len]]),
        out.len(),
    )?;
    check_len(
        "last_state (b, D, n)",
        sum_of_products(&[&[batch, d, n]]),
        last_state.len(),
    )?;
    out.fill(0.0);
    last_state.fill(0.0);
    for bi in 0..batch {
        for di in 0..d {
            let row = (bi * d + di) * len;
            let (u_r, d_r) = (&u[row..row + len], &delta[row..row + len]);
            let out_r = &mut out[row..row + len];
            for ni in 0..n {
                // y_t = Σ_n h_t[n], accumulated state by state.
                let ln_a = libm::logf(a[di * n + ni]);
                let mut h = 0.0f32;
                for ((o, &ut), &dt) in out_r.iter_mut().zip(u_r).zip(d_r) {
                    h = advance(h, dt * ln_a, ut);
                    *o += h;
                }
                last_state[(bi * d + di) * n + ni] = h;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    /// The input gain sqrt(1 − Ā²) keeps full f32 precision when Ā is close to 1, where the
    /// direct formula in f32 cancels (compared with the formula evaluated in f64).
    #[test]
    fn input_gain_is_accurate_near_unit_decay() {
        for e in [-1e-7f32, -1e-6, -3e-5, -1e-3, -0.05, -2.0] {
            let got = advance(0.0, e, 1.0) as f64;
            let want = (1.0 - (2.0 * e as f64).exp()).sqrt();
            assert!(
                (got - want).abs() <= 5e-7 * want,
                "e = {e}: {got} vs {want}"
            );
        }
        // The decay itself: h ← Ā h with u = 0.
        let got = advance(1.0, -0.25, 0.0) as f64;
        assert!((got - (-0.25f64).exp()).abs() < 1e-7);
    }

    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::error::Error;

    fn det(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Independent f64 reference with `powf` and time as the outer loop.
    #[test]
    fn matches_f64_reference() {
        let (b, d, n, l) = (2, 3, 2, 25);
        let mut s = 1;
        let u: Vec<f32> = (0..b * d * l).map(|_| det(&mut s)).collect();
        let delta: Vec<f32> = (0..b * d * l).map(|_| 8.0 * det(&mut s).abs()).collect();
        let a: Vec<f32> = (0..d * n).map(|_| 0.5 + 0.49 * det(&mut s).abs()).collect();
        let mut out = vec![0.0; b * d * l];
        let mut last = vec![0.0; b * d * n];
        let dims = RgLruScanDims {
            batch: b,
            d,
            d_state: n,
            len: l,
        };
        rglru_scan(dims, &u, &delta, &a, &mut out, &mut last).unwrap();
        for bi in 0..b {
            let mut h = vec![0.0f64; d * n];
            for t in 0..l {
                for di in 0..d {
                    let k = (bi * d + di) * l + t;
                    let mut y = 0.0;
                    for ni in 0..n {
                        let ab = (a[di * n + ni] as f64).powf(delta[k] as f64);
                        let hh = &mut h[di * n + ni];
                        *hh = ab * *hh + (1.0 - ab * ab).sqrt() * u[k] as f64;
                        y += *hh;
                    }
                    assert!((out[k] as f64 - y).abs() < 2e-6, "{k}");
                }
            }
            for (i, hv) in h.iter().enumerate() {
                assert!((last[bi * d * n + i] as f64 - hv).abs() < 2e-6);
            }
        }
    }

    #[test]
    fn buffer_errors() {
        let dims = RgLruScanDims {
            batch: 1,
            d: 2,
            d_state: 1,
            len: 3,
        };
        let z = [0.5f32; 6];
        let mut out = [0.0f32; 6];
        let mut last = [0.0f32; 2];
        assert!(rglru_scan(dims, &z, &z, &z[..2], &mut out, &mut last).is_ok());
        assert!(matches!(
            rglru_scan(dims, &z[..5], &z, &z[..2], &mut out, &mut last),
            Err(Error::BufferLength {
                expected: 6,
                got: 5,
                ..
            })
        ));
        assert!(matches!(
            rglru_scan(dims, &z, &z, &z[..3], &mut out, &mut last),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            rglru_scan(dims, &z, &z, &z[..2], &mut out, &mut last[..1]),
            Err(Error::BufferLength { .. })
        ));
    }
}
