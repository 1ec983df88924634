//! LRU, the Linear Recurrent Unit (lrnnx `lrnnx.models.lti.lru.LRU`, spec §7).
//!
//! ```text
//! λ = exp(−exp(nu_log) + i·exp(theta_log))                  (N,)
//! B_norm = (B_re + i·B_im) ⊙ exp(gamma_log)[:, None]        (N,H)
//! h_t = λ ⊙ h_{t−1} + B_norm x_t
//! y_t = Re(C h_t) + D ⊙ x_t                                 (C = C_re + i·C_im, H×N; D (H,))
//! ```
//!
//! lrnnx keys: `nu_log` (N,), `theta_log` (N,), `gamma_log` (N,), `B_re`/`B_im` (N,H),
//! `C_re`/`C_im` (H,N), `D` (H,). λ is parameterized directly, so there is no discretization.
//!
//! Weight layout: the [`diag_ssm`](crate::diag_ssm) segments for (λ, B_norm, C), then `D` (H).
//! State: `h_re` (N), `h_im` (N).

use num_complex::Complex64;

use crate::diag_ssm::DiagSsmDims;
use crate::error::{
    check_finite_weights, check_len, check_nonzero, check_sizes, sum_of_products, Result,
};
use crate::layer::Layer;
use crate::linalg::diag_acc;
use crate::params::{require, ParamSource};

/// Sizes of an LRU layer (lrnnx's constructor arguments `d_model`, `d_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LruConfig {
    /// H, input and output features.
    pub d_model: usize,
    /// N, complex states.
    pub d_state: usize,
}

impl LruConfig {
    fn ssm(&self) -> DiagSsmDims {
        DiagSsmDims {
            n: self.d_state,
            d_in: self.d_model,
            d_out: self.d_model,
        }
    }

    /// Number of `f32` weights of the stepping layout.
    pub const fn weights_len(&self) -> usize {
        let (n, h) = (self.d_state, self.d_model);
        sum_of_products(&[&[2, n], &[4, n, h], &[h]])
    }

    /// Number of `f32` state elements.
    pub const fn state_len(&self) -> usize {
        sum_of_products(&[&[2, self.d_state]])
    }

    fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)?;
        check_sizes(self.weights_len(), self.state_len())
    }
}

/// An LRU layer ready to step; `W` holds the weights (owned or borrowed).
#[derive(Debug, Clone)]
pub struct Lru<W> {
    config: LruConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> Lru<W> {
    /// Builds the layer from lrnnx parameters into `weights` (`config.weights_len()` elements).
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: LruConfig,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        let (h, n) = (config.d_model, config.d_state);
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let nu_log = require(params, "nu_log", &[n])?;
        let theta_log = require(params, "theta_log", &[n])?;
        let gamma_log = require(params, "gamma_log", &[n])?;
        let b_re = require(params, "B_re", &[n, h])?;
        let b_im = require(params, "B_im", &[n, h])?;
        let c_re = require(params, "C_re", &[h, n])?;
        let c_im = require(params, "C_im", &[h, n])?;
        let d = require(params, "D", &[h])?;

        let lambda = |s: usize| {
            let mag = -libm::exp(nu_log[s] as f64);
            let phase = libm::exp(theta_log[s] as f64);
            Complex64::new(mag, phase).exp()
        };
        let w = weights.as_mut();
        let ssm = config.ssm();
        let (w_ssm, w_d) = w.split_at_mut(ssm.weights_len());
        ssm.write(
            w_ssm,
            lambda,
            |s, i| {
                let g = libm::exp(gamma_log[s] as f64);
                Complex64::new(b_re[s * h + i] as f64 * g, b_im[s * h + i] as f64 * g)
            },
            |o, s| Complex64::new(c_re[o * n + s] as f64, c_im[o * n + s] as f64),
        );
        w_d.copy_from_slice(d);
        check_finite_weights("LRU weights", w)?;
        Ok(Lru { config, weights })
    }
}

crate::layer::weight_view_methods!(Lru, LruConfig, "LRU weights");

impl<W: AsRef<[f32]>> Layer for Lru<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.d_model
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// `h ← λ⊙h + B_norm x;  y = Re(C h) + D⊙x`.
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let ssm = self.config.ssm();
        let w = self.weights.as_ref();
        let (w_ssm, w_d) = w.split_at(ssm.weights_len().min(w.len()));
        ssm.split(w_ssm).step(state, x, y, None);
        diag_acc(y, w_d, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::layer::run_sequence;
    use crate::test_util::{Rng, TestParams};
    use num_complex::Complex64 as C;

    const H: usize = 4;
    const N: usize = 9;
    const L: usize = 80;
    const WLEN: usize = 2 * N + 4 * N * H + H;

    fn params(rng: &mut Rng) -> TestParams {
        let mut p = TestParams::new();
        // nu_log, theta_log as lrnnx's ring init would produce (|λ| ∈ (0.5, 0.99)).
        p.add(rng, "nu_log", &[N], -4.5, -0.4);
        p.add(rng, "theta_log", &[N], -3.0, 1.8);
        p.add(rng, "gamma_log", &[N], -2.0, 0.0);
        p.add(rng, "B_re", &[N, H], -0.5, 0.5);
        p.add(rng, "B_im", &[N, H], -0.5, 0.5);
        p.add(rng, "C_re", &[H, N], -0.5, 0.5);
        p.add(rng, "C_im", &[H, N], -0.5, 0.5);
        p.add(rng, "D", &[H], -1.0, 1.0);
        p
    }

    /// Reference: the impulse response K[t] = Re(C λ^t B_norm) (spec §7.3, computed with powers
    /// of λ in f64) convolved directly with x, plus D ⊙ x.
    fn reference(p: &TestParams, x: &[f32]) -> [f32; L * H] {
        let t = |n: &str| p.tensor(n).unwrap().data;
        let lam: [C; N] = core::array::from_fn(|s| {
            C::new(
                -(t("nu_log")[s] as f64).exp(),
                (t("theta_log")[s] as f64).exp(),
            )
            .exp()
        });
        let bn = |s: usize, i: usize| {
            C::new(t("B_re")[s * H + i] as f64, t("B_im")[s * H + i] as f64)
                * (t("gamma_log")[s] as f64).exp()
        };
        let c =
            |o: usize, s: usize| C::new(t("C_re")[o * N + s] as f64, t("C_im")[o * N + s] as f64);
        let mut y = [0.0f32; L * H];
        for tt in 0..L {
            for o in 0..H {
                let mut acc = t("D")[o] as f64 * x[tt * H + o] as f64;
                for lag in 0..=tt {
                    for (s, l) in lam.iter().enumerate() {
                        let k = c(o, s) * l.powu(lag as u32);
                        for i in 0..H {
                            acc += (k * bn(s, i)).re * x[(tt - lag) * H + i] as f64;
                        }
                    }
                }
                y[tt * H + o] = acc as f32;
            }
        }
        y
    }

    #[test]
    fn step_matches_convolution_with_impulse_response() {
        let mut rng = Rng::new(21);
        let p = params(&mut rng);
        let mut x = [0.0f32; L * H];
        rng.fill(&mut x, -1.0, 1.0);
        let cfg = LruConfig {
            d_model: H,
            d_state: N,
        };
        let layer = Lru::from_lrnnx(cfg, &p, [0.0f32; WLEN]).unwrap();
        let mut state = [0.0f32; 2 * N];
        let mut y = [0.0f32; L * H];
        run_sequence(&layer, &mut state, &x, &mut y).unwrap();
        let want = reference(&p, &x);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in y.iter().zip(want.iter()) {
            assert!((a - b).abs() <= 2e-6 * scale + 1e-6, "{a} vs {b}");
        }
        // Stepping in two halves with the state carried over gives the same result.
        let mut state2 = [0.0f32; 2 * N];
        let mut y2 = [0.0f32; L * H];
        let (x1, x2) = x.split_at(L / 2 * H);
        let (y2a, y2b) = y2.split_at_mut(L / 2 * H);
        run_sequence(&layer, &mut state2, x1, y2a).unwrap();
        run_sequence(&layer, &mut state2, x2, y2b).unwrap();
        assert_eq!(y, y2);
    }

    #[test]
    fn errors() {
        let mut rng = Rng::new(22);
        let cfg = LruConfig {
            d_model: H,
            d_state: N,
        };
        let mut p = params(&mut rng);
        p.reshape("D", &[H, 1]);
        assert!(matches!(
            Lru::from_lrnnx(cfg, &p, [0.0f32; WLEN]),
            Err(Error::TensorShape { name: "D", .. })
        ));
        let mut p = params(&mut rng);
        p.remove("gamma_log");
        assert_eq!(
            Lru::from_lrnnx(cfg, &p, [0.0f32; WLEN]).unwrap_err(),
            Error::MissingTensor { name: "gamma_log" }
        );
        let mut p = params(&mut rng);
        p.get_mut("nu_log")[2] = f32::INFINITY;
        assert_eq!(
            Lru::from_lrnnx(cfg, &p, [0.0f32; WLEN]).unwrap_err(),
            Error::NonFiniteParameter {
                name: "nu_log",
                index: 2
            }
        );
        let p = params(&mut rng);
        let layer = Lru::from_lrnnx(cfg, &p, [0.0f32; WLEN]).unwrap();
        let mut xs = [0.1f32; 3 * H];
        xs[H + 1] = f32::NAN;
        let mut ys = [0.0f32; 3 * H];
        let mut state = [0.0f32; 2 * N];
        // The whole sequence is validated first: nothing is processed.
        assert_eq!(
            run_sequence(&layer, &mut state, &xs, &mut ys),
            Err(Error::NonFiniteInput { index: H + 1 })
        );
        assert_eq!(state, [0.0f32; 2 * N]);
        assert!(matches!(
            run_sequence(&layer, &mut state, &xs[..H + 1], &mut ys),
            Err(Error::BufferLength { .. })
        ));
    }
}
