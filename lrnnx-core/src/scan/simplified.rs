//! The simplified (S5) scan of lrnnx (`simplified_scan_fn` / `simplified_scan_ref`, spec §4.3),
//! and the per-state update that [`S5Ltv`](crate::s5_ltv::S5Ltv) steps with.
//!
//! ```text
//! (Bu)_t = B u_t                                  B ∈ ℂ^{P×H}, u_t ∈ ℂ^H
//! z_t = ΔA_t ⊙ Λ          (ΔA = deltaA if given, else delta; both raw, no softplus)
//! zoh      : Ā_t = exp(z_t),               γ̄_t = (exp(δ_t Λ) − 1)/Λ
//! bilinear : Ā_t = (1 + z_t/2)/(1 − z_t/2), γ̄_t = δ_t/(1 − δ_t Λ/2)      (Tustin)
//! dirac    : Ā_t = exp(z_t),               γ̄_t = 1
//! x_t = Ā_t ⊙ x_{t−1} + γ̄_t ⊙ (Bu)_t       (x_{−1} = 0)
//! y_t = C x_t                                      C ∈ ℂ^{H×P}, complex output
//! ```
//!
//! The scan computes in `f32` with the branch-free [`fastmath`] exponential and
//! [`fastmath_trig`] sine/cosine, as the step of the layer does.
//!
//! **`last_state`.** lrnnx's `return_last_state` builds the last state from the wrong slice of
//! its state sequence (spec §18.12). [`simplified_scan`] returns the true final state `x_{L−1}`.

use crate::discretize::Discretization;
use crate::error::sum_of_products;
use crate::error::{check_len, Error, Result};
use crate::fastmath;
use crate::fastmath_trig;

/// `exp(z)` for complex `z = z_re + i·z_im`: `e^{z_re}·(cos z_im + i·sin z_im)` (the zoh and
/// dirac transition `Ā`).
#[inline(always)]
pub fn exp_transition(z_re: f32, z_im: f32) -> (f32, f32) {
    let m = fastmath::exp(z_re);
    let (s, c) = fastmath_trig::sincos(z_im);
    // A fully decayed mode is exactly 0, whatever its (meaningless) phase.
    if m == 0.0 {
        (0.0, 0.0)
    } else {
        (m * c, m * s)
    }
}

/// The Tustin transition `Ā = (1 + z/2)/(1 − z/2)` for complex `z`, computed as
/// `(1 + z/2)·conj(1 − z/2) / |1 − z/2|²`. (The denominator vanishes only at `z = 2`, which a
/// stable `Re Λ < 0` never reaches; there the result is infinite.) `z` is clamped to
/// `±1e18` per part, where `Ā` has reached its limit `−1`, so that a huge event time step
/// cannot overflow `|1 − z/2|²` into `∞·0 = NaN`.
#[inline(always)]
pub fn bilinear_transition(z_re: f32, z_im: f32) -> (f32, f32) {
    const LIMIT: f32 = 1e18;
    let (z_re, z_im) = (z_re.clamp(-LIMIT, LIMIT), z_im.clamp(-LIMIT, LIMIT));
    let (hr, hi) = (0.5 * z_re, 0.5 * z_im);
    let (nr, ni) = (1.0 + hr, hi);
    let (dr, di) = (1.0 - hr, -hi);
    let inv = 1.0 / (dr * dr + di * di);
    ((nr * dr + ni * di) * inv, (ni * dr - nr * di) * inv)
}

/// `Ā` of one state for `rule` from `z = ΔA·Λ`: [`bilinear_transition`] for
/// [`Discretization::Bilinear`], [`exp_transition`] (`exp(z)`) for zoh and dirac.
#[inline(always)]
pub fn transition(rule: Discretization, z_re: f32, z_im: f32) -> (f32, f32) {
    match rule {
        Discretization::Bilinear => bilinear_transition(z_re, z_im),
        _ => exp_transition(z_re, z_im),
    }
}

/// `γ̄` of one state for `rule`, eigenvalue `Λ = lam_re + i·lam_im` and step `δ`:
/// zoh `(exp(δΛ) − 1)/Λ`, bilinear `δ/(1 − δΛ/2)`, dirac `1` (in `f32`, as lrnnx's kernels).
#[inline(always)]
pub fn input_gain(rule: Discretization, lam_re: f32, lam_im: f32, dt: f32) -> (f32, f32) {
    match rule {
        Discretization::Bilinear => {
            let (dr, di) = (1.0 - 0.5 * dt * lam_re, -0.5 * dt * lam_im);
            let inv = dt / (dr * dr + di * di);
            (dr * inv, -di * inv)
        }
        Discretization::Dirac => (1.0, 0.0),
        _ => {
            let (er, ei) = exp_transition(dt * lam_re, dt * lam_im);
            let (nr, ni) = (er - 1.0, ei);
            let inv = 1.0 / (lam_re * lam_re + lam_im * lam_im);
            (
                (nr * lam_re + ni * lam_im) * inv,
                (ni * lam_re - nr * lam_im) * inv,
            )
        }
    }
}

/// The per-state update of S5, shared by the scan and the layer's step:
/// `x ← Ā·x + v` for complex `x = (re, im)`, `Ā`, and the (already scaled) input `v = γ̄·(Bu)`.
#[inline(always)]
pub fn advance(x: (f32, f32), a_bar: (f32, f32), v: (f32, f32)) -> (f32, f32) {
    (
        a_bar.0 * x.0 - a_bar.1 * x.1 + v.0,
        a_bar.0 * x.1 + a_bar.1 * x.0 + v.1,
    )
}

/// Sizes of a simplified-scan call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimplifiedScanDims {
    /// b, independent sequences.
    pub batch: usize,
    /// H, input/output channels.
    pub d_model: usize,
    /// P, complex states.
    pub d_state: usize,
    /// L, time steps.
    pub len: usize,
}

/// The inputs of [`simplified_scan`], in lrnnx's layouts. Complex tensors are `f32` with a
/// trailing `(re, im)` axis (`torch.view_as_real`).
#[derive(Debug, Clone, Copy)]
pub struct SimplifiedScanInputs<'a> {
    /// `u` (b, H, L, 2), complex input.
    pub u: &'a [f32],
    /// `delta` (b, P, L), the step of the input gain `γ̄` (and of `Ā` when `delta_a` is `None`).
    pub delta: &'a [f32],
    /// `A` (P, 2), the continuous-time eigenvalues Λ.
    pub a: &'a [f32],
    /// `B` (P, H, 2).
    pub b: &'a [f32],
    /// `C` (H, P, 2).
    pub c: &'a [f32],
    /// `deltaA` (b, P, L), optional separate step of `Ā` (Event-SSM).
    pub delta_a: Option<&'a [f32]>,
}

/// Runs the simplified scan (module doc) over whole sequences: writes `out` (b, H, L, 2) =
/// `y = C x` (complex) and `last_state` (b, P, 2) = the final state `x_{L−1}` (zeros for `L = 0`).
///
/// Errors: [`Error::UnsupportedDiscretization`] for a rule other than zoh, bilinear, dirac;
/// [`Error::BufferLength`] when a buffer does not match `dims`. Does not allocate.
pub fn simplified_scan(
    dims: SimplifiedScanDims,
    rule: Discretization,
    inputs: SimplifiedScanInputs<'_>,
    out: &mut [f32],
    last_state: &mut [f32],
) -> Result<()> {
    match rule {
        Discretization::Zoh | Discretization::Bilinear | Discretization::Dirac => {}
        d => {
            return Err(Error::UnsupportedDiscretization {
                layer: "simplified scan",
                discretization: d,
            })
        }
    }
    let SimplifiedScanDims {
        batch,
        d_model: h,
        d_state: p,
        len,
    } = dims;
    let SimplifiedScanInputs {
        u,
        delta,
        a,
        b,
        c,
        delta_a,
    } = inputs;
    // The row offsets below are products of these sizes; with L = 0 the buffer lengths are 0
    // whatever the other sizes, so the products are checked with L at least 1.
    let l1 = len.max(1);
    crate::error::check_sizes(
        sum_of_products(&[&[batch, h, l1, 2], &[batch, p, l1, 2], &[p, h, 2]]),
        0,
    )?;
    check_len(
        "u (b, H, L, 2)",
        sum_of_products(&[&[batch, h, len, 2]]),
        u.len(),
    )?;
    check_len(
        "delta (b, P, L)",
        sum_of_products(&[&[batch, p, len]]),
        delta.len(),
    )?;
    check_len("A (P, 2)", sum_of_products(&[&[p, 2]]), a.len())?;
    check_len("B (P, H, 2)", sum_of_products(&[&[p, h, 2]]), b.len())?;
    check_len("C (H, P, 2)", sum_of_products(&[&[h, p, 2]]), c.len())?;
    if let Some(da) = delta_a {
        check_len(
            "deltaA (b, P, L)",
            sum_of_products(&[&[batch, p, len]]),
            da.len(),
        )?;
    }
    check_len(
        "out (b, H, L, 2)",
        sum_of_products(&[&[batch, h, len, 2]]),
        out.len(),
    )?;
    check_len(
        "last_state (b, P, 2)",
        sum_of_products(&[&[batch, p, 2]]),
        last_state.len(),
    )?;
    let delta_a = delta_a.unwrap_or(delta);

    for bi in 0..batch {
        // The running state lives in the caller's `last_state` row.
        let x = &mut last_state[bi * p * 2..(bi + 1) * p * 2];
        x.fill(0.0);
        let u_b = &u[bi * h * len * 2..(bi + 1) * h * len * 2];
        let out_b = &mut out[bi * h * len * 2..(bi + 1) * h * len * 2];
        for t in 0..len {
            for (pi, xs) in x.chunks_exact_mut(2).enumerate() {
                let (lr, li) = (a[2 * pi], a[2 * pi + 1]);
                let k = (bi * p + pi) * len + t;
                let da = delta_a[k];
                let a_bar = transition(rule, da * lr, da * li);
                let g = input_gain(rule, lr, li, delta[k]);
                // (Bu)_p = Σ_h B[p,h]·u[h,t]
                let (mut br, mut bim) = (0.0f32, 0.0f32);
                for hi in 0..h {
                    let (wr, wi) = (b[(pi * h + hi) * 2], b[(pi * h + hi) * 2 + 1]);
                    let (ur, ui) = (u_b[(hi * len + t) * 2], u_b[(hi * len + t) * 2 + 1]);
                    br += wr * ur - wi * ui;
                    bim += wr * ui + wi * ur;
                }
                let v = (g.0 * br - g.1 * bim, g.0 * bim + g.1 * br);
                let nx = advance((xs[0], xs[1]), a_bar, v);
                xs[0] = nx.0;
                xs[1] = nx.1;
            }
            for hi in 0..h {
                let (mut yr, mut yi) = (0.0f32, 0.0f32);
                for (pi, xs) in x.chunks_exact(2).enumerate() {
                    let (cr, ci) = (c[(hi * p + pi) * 2], c[(hi * p + pi) * 2 + 1]);
                    yr += cr * xs[0] - ci * xs[1];
                    yi += cr * xs[1] + ci * xs[0];
                }
                out_b[(hi * len + t) * 2] = yr;
                out_b[(hi * len + t) * 2 + 1] = yi;
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

    use num_complex::Complex64;

    use super::*;

    fn det(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Naive f64 reference written with num_complex and a different loop order (the whole
    /// discretized system first, then the recurrence).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        dims: SimplifiedScanDims,
        rule: Discretization,
        inp: &SimplifiedScanInputs<'_>,
    ) -> (Vec<Complex64>, Vec<Complex64>) {
        let (bn, h, p, l) = (dims.batch, dims.d_model, dims.d_state, dims.len);
        let cx = |s: &[f32], i: usize| Complex64::new(s[2 * i] as f64, s[2 * i + 1] as f64);
        let mut out = vec![Complex64::new(0.0, 0.0); bn * h * l];
        let mut last = vec![Complex64::new(0.0, 0.0); bn * p];
        for bi in 0..bn {
            let mut x = vec![Complex64::new(0.0, 0.0); p];
            for t in 0..l {
                for (pi, xp) in x.iter_mut().enumerate() {
                    let lam = cx(inp.a, pi);
                    let k = (bi * p + pi) * l + t;
                    let dt = inp.delta[k] as f64;
                    let dta = inp.delta_a.map_or(dt, |d| d[k] as f64);
                    let (abar, g) = match rule {
                        Discretization::Zoh => ((dta * lam).exp(), ((dt * lam).exp() - 1.0) / lam),
                        Discretization::Bilinear => (
                            (1.0 + dta * lam / 2.0) / (1.0 - dta * lam / 2.0),
                            dt / (1.0 - dt * lam / 2.0),
                        ),
                        _ => ((dta * lam).exp(), Complex64::new(1.0, 0.0)),
                    };
                    let bu: Complex64 = (0..h)
                        .map(|hi| cx(inp.b, pi * h + hi) * cx(inp.u, (bi * h + hi) * l + t))
                        .sum();
                    *xp = abar * *xp + g * bu;
                }
                for hi in 0..h {
                    out[(bi * h + hi) * l + t] =
                        (0..p).map(|pi| cx(inp.c, hi * p + pi) * x[pi]).sum();
                }
            }
            last[bi * p..(bi + 1) * p].copy_from_slice(&x);
        }
        (out, last)
    }

    fn check(rule: Discretization, with_delta_a: bool) {
        let dims = SimplifiedScanDims {
            batch: 2,
            d_model: 3,
            d_state: 4,
            len: 17,
        };
        let mut seed = 7u64;
        let (bn, h, p, l) = (2, 3, 4, 17);
        let u: Vec<f32> = (0..bn * h * l * 2).map(|_| det(&mut seed)).collect();
        let delta: Vec<f32> = (0..bn * p * l)
            .map(|_| 0.05 + 0.1 * det(&mut seed).abs())
            .collect();
        let da: Vec<f32> = (0..bn * p * l)
            .map(|_| 0.3 * det(&mut seed).abs())
            .collect();
        let a: Vec<f32> = (0..p)
            .flat_map(|i| [-0.5 - 0.2 * i as f32, 3.0 * det(&mut seed)])
            .collect();
        let b: Vec<f32> = (0..p * h * 2).map(|_| det(&mut seed)).collect();
        let c: Vec<f32> = (0..h * p * 2).map(|_| det(&mut seed)).collect();
        let inp = SimplifiedScanInputs {
            u: &u,
            delta: &delta,
            a: &a,
            b: &b,
            c: &c,
            delta_a: with_delta_a.then_some(&da[..]),
        };
        let mut out = vec![0.0f32; bn * h * l * 2];
        let mut last = vec![1.0f32; bn * p * 2];
        simplified_scan(dims, rule, inp, &mut out, &mut last).unwrap();
        let (ro, rl) = reference(dims, rule, &inp);
        for (i, r) in ro.iter().enumerate() {
            assert!(
                (out[2 * i] as f64 - r.re).abs() < 2e-5 * (1.0 + r.norm()),
                "{rule:?} out {i}"
            );
            assert!((out[2 * i + 1] as f64 - r.im).abs() < 2e-5 * (1.0 + r.norm()));
        }
        for (i, r) in rl.iter().enumerate() {
            assert!(
                (last[2 * i] as f64 - r.re).abs() < 2e-5 * (1.0 + r.norm()),
                "last {i}"
            );
            assert!((last[2 * i + 1] as f64 - r.im).abs() < 2e-5 * (1.0 + r.norm()));
        }
    }

    #[test]
    fn matches_complex_f64_reference() {
        for rule in [
            Discretization::Zoh,
            Discretization::Bilinear,
            Discretization::Dirac,
        ] {
            check(rule, false);
            check(rule, true);
        }
    }

    #[test]
    fn transitions_match_closed_forms() {
        let z = Complex64::new(-0.3, 2.7);
        let e = exp_transition(z.re as f32, z.im as f32);
        let want = z.exp();
        assert!((e.0 as f64 - want.re).abs() < 1e-6 && (e.1 as f64 - want.im).abs() < 1e-6);
        let bl = bilinear_transition(z.re as f32, z.im as f32);
        let want = (1.0 + z / 2.0) / (1.0 - z / 2.0);
        assert!((bl.0 as f64 - want.re).abs() < 1e-6 && (bl.1 as f64 - want.im).abs() < 1e-6);
        let lam = Complex64::new(-0.5, 3.0);
        let g = input_gain(Discretization::Zoh, -0.5, 3.0, 0.1);
        let want = ((0.1 * lam).exp() - 1.0) / lam;
        assert!((g.0 as f64 - want.re).abs() < 1e-6 && (g.1 as f64 - want.im).abs() < 1e-6);
        let g = input_gain(Discretization::Bilinear, -0.5, 3.0, 0.1);
        let want = 0.1 / (1.0 - 0.1 * lam / 2.0);
        assert!((g.0 as f64 - want.re).abs() < 1e-6 && (g.1 as f64 - want.im).abs() < 1e-6);
    }

    #[test]
    fn errors() {
        let dims = SimplifiedScanDims {
            batch: 1,
            d_model: 2,
            d_state: 2,
            len: 3,
        };
        let z = [0.0f32; 64];
        let inp = SimplifiedScanInputs {
            u: &z[..12],
            delta: &z[..6],
            a: &z[..4],
            b: &z[..8],
            c: &z[..8],
            delta_a: None,
        };
        let mut out = [0.0f32; 12];
        let mut last = [0.0f32; 4];
        assert!(simplified_scan(dims, Discretization::Zoh, inp, &mut out, &mut last).is_ok());
        assert_eq!(
            simplified_scan(dims, Discretization::Mamba, inp, &mut out, &mut last),
            Err(Error::UnsupportedDiscretization {
                layer: "simplified scan",
                discretization: Discretization::Mamba
            })
        );
        let bad = SimplifiedScanInputs {
            delta_a: Some(&z[..5]),
            ..inp
        };
        assert!(matches!(
            simplified_scan(dims, Discretization::Zoh, bad, &mut out, &mut last),
            Err(Error::BufferLength {
                expected: 6,
                got: 5,
                ..
            })
        ));
        assert!(matches!(
            simplified_scan(dims, Discretization::Zoh, inp, &mut out[..11], &mut last),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            simplified_scan(dims, Discretization::Zoh, inp, &mut out, &mut last[..3]),
            Err(Error::BufferLength { .. })
        ));
    }
}
