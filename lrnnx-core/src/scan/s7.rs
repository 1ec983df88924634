//! The S7 scan of lrnnx (`s7_scan_fn` / `s7_scan_ref`, spec §4.5), and the per-time update
//! that [`S7`](crate::s7::S7) steps with.
//!
//! ```text
//! Ā_t = 1 − 1/(A_t² + ½)                       (elementwise; Ā ∈ [−1, 1))
//! Bu_t[n] = Σ_h B_t[n,h]·u_t[h] + bias_t[n]
//! x_t = Ā_t ⊙ x_{t−1} + Bu_t                   (x_{−1} = 0)
//! y_t[h] = Σ_n C_t[h,n]·x_t[n]
//! ```

use crate::error::sum_of_products;
use crate::error::{check_len, Result};

/// The S7 transition `Ā = 1 − 1/(A² + ½)`.
#[inline(always)]
pub fn transition(a: f32) -> f32 {
    1.0 - 1.0 / (a * a + 0.5)
}

/// The per-state S7 update, shared by the scan and the layer's step: `x ← Ā(A)·x + Bu`.
#[inline(always)]
pub fn advance(x: f32, a: f32, bu: f32) -> f32 {
    transition(a) * x + bu
}

/// Sizes of an S7 scan call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S7ScanDims {
    /// b, independent sequences.
    pub batch: usize,
    /// H, input/output channels.
    pub d_model: usize,
    /// N, states.
    pub d_state: usize,
    /// L, time steps.
    pub len: usize,
}

/// The inputs of [`s7_scan`], in lrnnx's layouts (all input-dependent, time last).
#[derive(Debug, Clone, Copy)]
pub struct S7ScanInputs<'a> {
    /// `u` (b, H, L).
    pub u: &'a [f32],
    /// `A` (b, N, L), the pre-transition values `A_t`.
    pub a: &'a [f32],
    /// `B` (b, N, H, L).
    pub b: &'a [f32],
    /// `C` (b, H, N, L).
    pub c: &'a [f32],
    /// `bias` (b, N, L), optional.
    pub bias: Option<&'a [f32]>,
}

/// Runs the S7 scan (module doc): writes `out` (b, H, L) and `last_state` (b, N) = `x_{L−1}`.
///
/// Errors: [`Error::BufferLength`](crate::Error::BufferLength) when a buffer does not match
/// `dims`. Does not allocate.
pub fn s7_scan(
    dims: S7ScanDims,
    inputs: S7ScanInputs<'_>,
    out: &mut [f32],
    last_state: &mut [f32],
) -> Result<()> {
    let S7ScanDims {
        batch,
        d_model: h,
        d_state: n,
        len,
    } = dims;
    let S7ScanInputs { u, a, b, c, bias } = inputs;
    check_len("u (b, H, L)", sum_of_products(&[&[batch, h, len]]), u.len())?;
    check_len("A (b, N, L)", sum_of_products(&[&[batch, n, len]]), a.len())?;
    check_len(
        "B (b, N, H, L)",
        sum_of_products(&[&[batch, n, h, len]]),
        b.len(),
    )?;
    check_len(
        "C (b, H, N, L)",
        sum_of_products(&[&[batch, h, n, len]]),
        c.len(),
    )?;
    if let Some(bs) = bias {
        check_len(
            "bias (b, N, L)",
            sum_of_products(&[&[batch, n, len]]),
            bs.len(),
        )?;
    }
    check_len(
        "out (b, H, L)",
        sum_of_products(&[&[batch, h, len]]),
        out.len(),
    )?;
    check_len(
        "last_state (b, N)",
        sum_of_products(&[&[batch, n]]),
        last_state.len(),
    )?;
    for bi in 0..batch {
        // The running state lives in the caller's `last_state` row.
        let x = &mut last_state[bi * n..(bi + 1) * n];
        x.fill(0.0);
        for t in 0..len {
            for (ni, xn) in x.iter_mut().enumerate() {
                let mut bu = 0.0f32;
                for hi in 0..h {
                    bu += b[((bi * n + ni) * h + hi) * len + t] * u[(bi * h + hi) * len + t];
                }
                if let Some(bs) = bias {
                    bu += bs[(bi * n + ni) * len + t];
                }
                *xn = advance(*xn, a[(bi * n + ni) * len + t], bu);
            }
            for hi in 0..h {
                let mut y = 0.0f32;
                for (ni, &xn) in x.iter().enumerate() {
                    y += c[((bi * h + hi) * n + ni) * len + t] * xn;
                }
                out[(bi * h + hi) * len + t] = y;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    /// Independent f64 reference: the impulse-response form
    /// `x_t = Σ_{τ≤t} (Π_{τ<j≤t} Ā_j) Bu_τ` instead of the recurrence.
    #[test]
    fn matches_f64_impulse_response_form() {
        let (bn, h, n, l) = (2, 3, 4, 12);
        let mut s = 3;
        let mut g = |k: usize| (0..k).map(|_| det(&mut s)).collect::<Vec<f32>>();
        let (u, a, b, c, bias) = (
            g(bn * h * l),
            g(bn * n * l),
            g(bn * n * h * l),
            g(bn * h * n * l),
            g(bn * n * l),
        );
        for with_bias in [false, true] {
            let inp = S7ScanInputs {
                u: &u,
                a: &a,
                b: &b,
                c: &c,
                bias: with_bias.then_some(&bias[..]),
            };
            let mut out = vec![0.0; bn * h * l];
            let mut last = vec![9.0; bn * n];
            let dims = S7ScanDims {
                batch: bn,
                d_model: h,
                d_state: n,
                len: l,
            };
            s7_scan(dims, inp, &mut out, &mut last).unwrap();
            for bi in 0..bn {
                let abar = |ni: usize, t: usize| {
                    let v = a[(bi * n + ni) * l + t] as f64;
                    1.0 - 1.0 / (v * v + 0.5)
                };
                let bu = |ni: usize, t: usize| {
                    (0..h)
                        .map(|hi| {
                            b[((bi * n + ni) * h + hi) * l + t] as f64
                                * u[(bi * h + hi) * l + t] as f64
                        })
                        .sum::<f64>()
                        + if with_bias {
                            bias[(bi * n + ni) * l + t] as f64
                        } else {
                            0.0
                        }
                };
                let state = |ni: usize, t: usize| {
                    (0..=t)
                        .map(|tau| {
                            ((tau + 1)..=t).map(|j| abar(ni, j)).product::<f64>() * bu(ni, tau)
                        })
                        .sum::<f64>()
                };
                for t in 0..l {
                    for hi in 0..h {
                        let y: f64 = (0..n)
                            .map(|ni| c[((bi * h + hi) * n + ni) * l + t] as f64 * state(ni, t))
                            .sum();
                        assert!(
                            (out[(bi * h + hi) * l + t] as f64 - y).abs() < 1e-5,
                            "{bi} {hi} {t}"
                        );
                    }
                }
                for ni in 0..n {
                    assert!((last[bi * n + ni] as f64 - state(ni, l - 1)).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn buffer_errors() {
        let dims = S7ScanDims {
            batch: 1,
            d_model: 2,
            d_state: 2,
            len: 2,
        };
        let z = [0.1f32; 16];
        let inp = S7ScanInputs {
            u: &z[..4],
            a: &z[..4],
            b: &z[..8],
            c: &z[..8],
            bias: None,
        };
        let mut out = [0.0f32; 4];
        let mut last = [0.0f32; 2];
        assert!(s7_scan(dims, inp, &mut out, &mut last).is_ok());
        assert!(matches!(
            s7_scan(
                dims,
                S7ScanInputs {
                    bias: Some(&z[..3]),
                    ..inp
                },
                &mut out,
                &mut last
            ),
            Err(Error::BufferLength {
                expected: 4,
                got: 3,
                ..
            })
        ));
        assert!(matches!(
            s7_scan(
                dims,
                S7ScanInputs { b: &z[..7], ..inp },
                &mut out,
                &mut last
            ),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            s7_scan(dims, inp, &mut out[..3], &mut last),
            Err(Error::BufferLength { .. })
        ));
    }
}
