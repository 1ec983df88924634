//! S7 (lrnnx `lrnnx.models.ltv.s7.S7`, spec §12): an input-dependent real diagonal SSM with an
//! internal gate and residual connection.
//!
//! ```text
//! x_t = W_in h_t                                          (no bias)
//! [a | b | c | d | e] = W_x x_t   split as [N, H·N, H·N, H, N]   (no bias)
//! A_t[n] = a[n] + base_params[n]
//! B_t[n,h] = b[h·N + n],  C_t[h,n] = c[h·N + n],  D_t[h] = d[h],  bias_t[n] = e[n]
//! s_t = (1 − 1/(A_t² + ½)) ⊙ s_{t−1} + B_t x_t + bias_t          (s_{−1} = 0)
//! y_t = C_t s_t + D_t ⊙ x_t
//! out_t = σ(W_gate GELU(y_t)) ⊙ y_t + h_t                  (exact erf GELU; residual inside)
//! ```
//!
//! lrnnx keys: `in_proj.weight` (H,H), `base_params` (N,), `x_proj.weight` (2N+2HN+H, H),
//! `gate_proj.weight` (H,H). `J` (the number of HiPPO blocks tiled into `base_params`) only
//! shapes the initialization; lrnnx requires `d_state % J == 0`. lrnnx's `base_params` keeps
//! only the real part −0.5 of the HiPPO eigenvalues (spec §18.16); the stored values are used
//! as they are.
//!
//! Weight layout (`f32`, matrices transposed: one row per input element):
//!
//! | segment  | length | meaning                                   |
//! |----------|--------|-------------------------------------------|
//! | `in_t`   | H·H    | `W_inᵀ`                                   |
//! | `base`   | N      | `base_params`                             |
//! | `xp_t`   | H·M    | `W_xᵀ`, M = 2N + 2HN + H (lrnnx's order)  |
//! | `gate_t` | H·H    | `W_gateᵀ`                                 |
//!
//! State (`N + 3H + M`): `s` (N), then a working area that carries nothing between steps:
//! `x` (H), the projection `[a|b|c|d|e]` (M), `y` (H), `GELU(y)` (H).

use crate::activation::gelu;
use crate::error::{check_finite_weights, check_len, check_nonzero, Error, Result};
use crate::fastmath;
use crate::layer::Layer;
use crate::linalg::{gemv_t_acc, take, take_mut, transpose_into};
use crate::params::{require, ParamSource};
use crate::scan::s7::advance;

/// `Σ_i a[i]·b[i]` with eight partial sums (vectorizes; summation order differs from a plain
/// left-to-right sum only by rounding).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(p, q)| p * q).sum();
    acc.iter().sum::<f32>() + tail
}

/// Sizes of an S7 layer (lrnnx's constructor arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S7Config {
    /// H, input and output features.
    pub d_model: usize,
    /// N, real states.
    pub d_state: usize,
    /// J, HiPPO blocks (lrnnx requires `d_state % J == 0`; default 1).
    pub j: usize,
}

impl S7Config {
    /// M = 2N + 2HN + H, the output size of `x_proj`.
    pub const fn proj_len(&self) -> usize {
        let (h, n) = (self.d_model, self.d_state);
        crate::error::sum_of_products(&[&[2, n], &[2, h, n], &[h]])
    }

    /// Number of `f32` weights of the stepping layout.
    pub const fn weights_len(&self) -> usize {
        let h = self.d_model;
        crate::error::sum_of_products(&[&[2, h, h], &[self.d_state], &[h, self.proj_len()]])
    }

    /// Number of `f32` state elements (including the working area).
    pub const fn state_len(&self) -> usize {
        crate::error::sum_of_products(&[&[self.d_state], &[3, self.d_model], &[self.proj_len()]])
    }

    fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)?;
        check_nonzero("J", self.j)?;
        crate::error::check_sizes(self.weights_len(), self.state_len())?;
        if self.d_state / self.j * self.j != self.d_state {
            return Err(Error::InvalidConfig {
                what: "J",
                reason: "d_state must be a multiple of J",
            });
        }
        Ok(())
    }
}

/// An S7 layer ready to step; `W` holds the weights.
#[derive(Debug, Clone)]
pub struct S7<W> {
    config: S7Config,
    weights: W,
}

impl<W: AsRef<[f32]>> S7<W> {
    /// Builds the layer from lrnnx parameters into `weights` (`config.weights_len()` elements).
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: S7Config,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        let (h, n, m) = (config.d_model, config.d_state, config.proj_len());
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let in_w = require(params, "in_proj.weight", &[h, h])?;
        let base = require(params, "base_params", &[n])?;
        let xp_w = require(params, "x_proj.weight", &[m, h])?;
        let gate_w = require(params, "gate_proj.weight", &[h, h])?;
        let w = weights.as_mut();
        let mut rest: &mut [f32] = w;
        transpose_into(take_mut(&mut rest, h * h), in_w, h, h);
        take_mut(&mut rest, n).copy_from_slice(base);
        transpose_into(take_mut(&mut rest, h * m), xp_w, m, h);
        transpose_into(take_mut(&mut rest, h * h), gate_w, h, h);
        check_finite_weights("S7 weights", weights.as_ref())?;
        Ok(S7 { config, weights })
    }
}

crate::layer::weight_view_methods!(S7, S7Config, "S7 weights");

impl<W: AsRef<[f32]>> Layer for S7<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.d_model
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// One S7 step (module doc); the state update is the shared [`advance`].
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], h_in: &[f32], out: &mut [f32]) {
        let (h, n, m) = (
            self.config.d_model,
            self.config.d_state,
            self.config.proj_len(),
        );
        let mut w = self.weights.as_ref();
        let in_t = take(&mut w, h * h);
        let base = take(&mut w, n);
        let xp_t = take(&mut w, h * m);
        let gate_t = take(&mut w, h * h);
        let mut st: &mut [f32] = state;
        let s = take_mut(&mut st, n);
        let x = take_mut(&mut st, h);
        let p = take_mut(&mut st, m);
        let yv = take_mut(&mut st, h);
        let gl = take_mut(&mut st, h);

        x.fill(0.0);
        gemv_t_acc(x, in_t, h_in);
        p.fill(0.0);
        gemv_t_acc(p, xp_t, x);
        let mut pr: &mut [f32] = p;
        let a = take_mut(&mut pr, n);
        let b = take_mut(&mut pr, h * n);
        let c = take_mut(&mut pr, h * n);
        let d = take_mut(&mut pr, h);
        let e = take_mut(&mut pr, n);
        // e ← bias + Σ_h x[h]·B[:, h]  (B[n,h] = b[h·N + n]: one contiguous axpy per h)
        for (bh, &xh) in b.chunks_exact(n).zip(x.iter()) {
            for (ei, &bv) in e.iter_mut().zip(bh) {
                *ei += xh * bv;
            }
        }
        for ((si, &ai), (&bi, &bu)) in s.iter_mut().zip(a.iter()).zip(base.iter().zip(e.iter())) {
            *si = advance(*si, ai + bi, bu);
        }
        // y[h] = C[h,:]·s + d[h]·x[h]
        for ((yh, ch), (&dh, &xh)) in yv
            .iter_mut()
            .zip(c.chunks_exact(n))
            .zip(d.iter().zip(x.iter()))
        {
            *yh = dot(ch, s) + dh * xh;
        }
        for (g, &yh) in gl.iter_mut().zip(yv.iter()) {
            *g = gelu(yh);
        }
        out.fill(0.0);
        gemv_t_acc(out, gate_t, gl);
        for (o, (&yh, &hh)) in out.iter_mut().zip(yv.iter().zip(h_in)) {
            *o = fastmath::sigmoid(*o) * yh + hh;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::error::Error;
    use crate::layer::run_sequence;
    use crate::params::{SliceParams, TensorView};

    fn det(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    struct P {
        inp: Vec<f32>,
        base: Vec<f32>,
        xp: Vec<f32>,
        gate: Vec<f32>,
        shapes: [[usize; 2]; 4],
    }

    impl P {
        fn new(c: &S7Config, seed: u64) -> P {
            let (h, n, m) = (c.d_model, c.d_state, c.proj_len());
            let mut s = seed;
            let mut g = |k: usize, sc: f32| (0..k).map(|_| sc * det(&mut s)).collect::<Vec<f32>>();
            P {
                inp: g(h * h, 0.7),
                base: g(n, 0.3).iter().map(|v| v - 0.5).collect(),
                xp: g(m * h, 0.5),
                gate: g(h * h, 0.7),
                shapes: [[h, h], [n, 0], [m, h], [h, h]],
            }
        }

        fn entries(&self) -> [(&'static str, TensorView<'_>); 4] {
            let s = &self.shapes;
            [
                (
                    "in_proj.weight",
                    TensorView {
                        data: &self.inp,
                        shape: &s[0],
                    },
                ),
                (
                    "base_params",
                    TensorView {
                        data: &self.base,
                        shape: &s[1][..1],
                    },
                ),
                (
                    "x_proj.weight",
                    TensorView {
                        data: &self.xp,
                        shape: &s[2],
                    },
                ),
                (
                    "gate_proj.weight",
                    TensorView {
                        data: &self.gate,
                        shape: &s[3],
                    },
                ),
            ]
        }
    }

    /// Independent f64 reference: materializes B_t, C_t as matrices (indices as in spec §12.3)
    /// and uses plain nested sums.
    fn reference(c: &S7Config, p: &P, hs: &[f32]) -> Vec<f64> {
        let (h, n, m) = (c.d_model, c.d_state, c.proj_len());
        let l = hs.len() / h;
        let mut s = vec![0.0f64; n];
        let mut out = vec![];
        for t in 0..l {
            let ht: Vec<f64> = hs[t * h..(t + 1) * h].iter().map(|&v| v as f64).collect();
            let x: Vec<f64> = (0..h)
                .map(|o| (0..h).map(|i| p.inp[o * h + i] as f64 * ht[i]).sum())
                .collect();
            let pr: Vec<f64> = (0..m)
                .map(|o| (0..h).map(|i| p.xp[o * h + i] as f64 * x[i]).sum())
                .collect();
            let bm = |nn: usize, hh: usize| pr[n + hh * n + nn];
            let cm = |hh: usize, nn: usize| pr[n + h * n + hh * n + nn];
            for nn in 0..n {
                let at = pr[nn] + p.base[nn] as f64;
                let abar = 1.0 - 1.0 / (at * at + 0.5);
                let bu: f64 =
                    (0..h).map(|hh| bm(nn, hh) * x[hh]).sum::<f64>() + pr[n + 2 * h * n + h + nn];
                s[nn] = abar * s[nn] + bu;
            }
            let y: Vec<f64> = (0..h)
                .map(|hh| {
                    (0..n).map(|nn| cm(hh, nn) * s[nn]).sum::<f64>()
                        + pr[n + 2 * h * n + hh] * x[hh]
                })
                .collect();
            let gl: Vec<f64> = y
                .iter()
                .map(|&v| 0.5 * v * (1.0 + libm::erf(v / core::f64::consts::SQRT_2)))
                .collect();
            for o in 0..h {
                let z: f64 = (0..h).map(|i| p.gate[o * h + i] as f64 * gl[i]).sum();
                out.push(y[o] / (1.0 + (-z).exp()) + ht[o]);
            }
        }
        out
    }

    #[test]
    fn matches_f64_reference() {
        for (h, n) in [(3, 4), (5, 11), (2, 16)] {
            let c = S7Config {
                d_model: h,
                d_state: n,
                j: 1,
            };
            let p = P::new(&c, 8);
            let e = p.entries();
            let layer = S7::from_lrnnx(c, &SliceParams { entries: &e }, vec![0.0; c.weights_len()])
                .unwrap();
            let mut seed = 2;
            let l = 25;
            let xs: Vec<f32> = (0..l * h).map(|_| det(&mut seed)).collect();
            let mut ys = vec![0.0; l * h];
            let mut st = vec![0.0; c.state_len()];
            run_sequence(&layer, &mut st, &xs, &mut ys).unwrap();
            let want = reference(&c, &p, &xs);
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (i, (&a, &b)) in ys.iter().zip(&want).enumerate() {
                assert!(
                    (a as f64 - b).abs() < 3e-6 * scale,
                    "{h} {n} {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn errors_and_untouched_state() {
        let c = S7Config {
            d_model: 3,
            d_state: 4,
            j: 2,
        };
        let mut p = P::new(&c, 1);
        let w = || vec![0.0f32; c.weights_len()];
        {
            let e = p.entries();
            assert_eq!(
                S7::from_lrnnx(c, &SliceParams { entries: &e[1..] }, w()).unwrap_err(),
                Error::MissingTensor {
                    name: "in_proj.weight"
                }
            );
            let bad = S7Config { j: 3, ..c };
            assert!(matches!(
                S7::from_lrnnx(bad, &SliceParams { entries: &e }, w()),
                Err(Error::InvalidConfig { what: "J", .. })
            ));
            let bad = S7Config {
                d_state: 6,
                j: 1,
                ..c
            };
            assert!(matches!(
                S7::from_lrnnx(
                    bad,
                    &SliceParams { entries: &e },
                    vec![0.0; bad.weights_len()]
                ),
                Err(Error::TensorShape {
                    name: "base_params",
                    ..
                })
            ));
            assert!(matches!(
                S7::from_lrnnx(c, &SliceParams { entries: &e }, vec![0.0; 1]),
                Err(Error::BufferLength { .. })
            ));
            let layer = S7::from_lrnnx(c, &SliceParams { entries: &e }, w()).unwrap();
            let mut st = vec![0.0; c.state_len()];
            let mut y = [0.0f32; 3];
            layer.step(&mut st, &[0.5, -1.0, 2.0], &mut y).unwrap();
            let before = st.clone();
            assert_eq!(
                layer.step(&mut st, &[f32::NAN, 1.0, 2.0], &mut y),
                Err(Error::NonFiniteInput { index: 0 })
            );
            assert!(matches!(
                layer.step(&mut st, &[1.0, 2.0, 3.0], &mut y[..2]),
                Err(Error::BufferLength { .. })
            ));
            assert_eq!(st, before);
            layer.step_prechecked(&mut st[..9], &[1.0], &mut y[..2]);
        }
        p.xp[5] = f32::INFINITY;
        let e = p.entries();
        assert_eq!(
            S7::from_lrnnx(c, &SliceParams { entries: &e }, w()).unwrap_err(),
            Error::NonFiniteParameter {
                name: "x_proj.weight",
                index: 5
            }
        );
        let mut ww = w();
        ww[1] = f32::NAN;
        assert!(S7::from_weights(c, ww).is_err());
    }
}
