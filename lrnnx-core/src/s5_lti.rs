//! S5, time-invariant (lrnnx `lrnnx.models.lti.s5.S5`, spec §6).
//!
//! ```text
//! A_c = −softplus(A[:,0]) + i·A[:,1]        Δ = exp(log_dt)            (per state n)
//! (Ā, γ̄) = discretize(A_c, Δ)              B̄ = γ̄ ⊙ B                  (B real, N×H)
//! h_t = Ā ⊙ h_{t−1} + B̄ x_t
//! y_t = Re(C h_t) + Dᵀ x_t                  (C complex H×N, D a full H×H matrix: y = x @ D)
//! ```
//!
//! lrnnx keys: `A` (N,2) = (pre-softplus real, imag), `B` (N,H), `log_dt` (N,), `C` (H,N,2) =
//! (re, im), `D` (H,H). Discretizations: zoh, bilinear (Tustin), dirac, none, and
//! [`Discretization::LrnnxInvertedBilinear`] to reproduce lrnnx checkpoints trained with its
//! inverted "bilinear".
//!
//! Weight layout: the [`diag_ssm`](crate::diag_ssm) segments for (Ā, B̄, C), then `D` (H×H,
//! as stored by lrnnx, row i = input i). State: `h_re` (N), `h_im` (N).

use num_complex::Complex64;

use crate::activation::softplus_f64;
use crate::diag_ssm::DiagSsmDims;
use crate::discretize::{discretize, Discretization};
use crate::error::{
    check_finite_weights, check_len, check_nonzero, check_sizes, sum_of_products, Error, Result,
};
use crate::layer::Layer;
use crate::params::{require, ParamSource};

/// Sizes and discretization of an S5-LTI layer (lrnnx's constructor arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S5LtiConfig {
    /// H, input and output features.
    pub d_model: usize,
    /// N, complex states.
    pub d_state: usize,
    /// Discretization rule.
    pub discretization: Discretization,
}

impl S5LtiConfig {
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
        sum_of_products(&[&[2, n], &[4, n, h], &[h, h]])
    }

    /// Number of `f32` state elements.
    pub const fn state_len(&self) -> usize {
        sum_of_products(&[&[2, self.d_state]])
    }

    fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)?;
        check_sizes(self.weights_len(), self.state_len())?;
        match self.discretization {
            Discretization::Zoh
            | Discretization::Bilinear
            | Discretization::Dirac
            | Discretization::None
            | Discretization::LrnnxInvertedBilinear => Ok(()),
            d => Err(Error::UnsupportedDiscretization {
                layer: "S5 (LTI)",
                discretization: d,
            }),
        }
    }
}

/// An S5-LTI layer ready to step; `W` holds the weights (owned or borrowed, e.g. from flash).
#[derive(Debug, Clone)]
pub struct S5Lti<W> {
    config: S5LtiConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> S5Lti<W> {
    /// Builds the layer from lrnnx parameters, discretizing once into `weights`
    /// (`config.weights_len()` elements, overwritten).
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: S5LtiConfig,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        let (h, n) = (config.d_model, config.d_state);
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let a = require(params, "A", &[n, 2])?;
        let b = require(params, "B", &[n, h])?;
        let log_dt = require(params, "log_dt", &[n])?;
        let c = require(params, "C", &[h, n, 2])?;
        let d = require(params, "D", &[h, h])?;

        let disc = |s: usize| {
            let a_c = Complex64::new(-softplus_f64(a[2 * s] as f64), a[2 * s + 1] as f64);
            let dt = libm::exp(log_dt[s] as f64);
            discretize(config.discretization, a_c, dt, 1.0)
        };
        let w = weights.as_mut();
        let ssm = config.ssm();
        let (w_ssm, w_d) = w.split_at_mut(ssm.weights_len());
        ssm.write(
            w_ssm,
            |s| disc(s).a_bar,
            |s, i| disc(s).gamma * b[s * h + i] as f64,
            |o, s| Complex64::new(c[(o * n + s) * 2] as f64, c[(o * n + s) * 2 + 1] as f64),
        );
        w_d.copy_from_slice(d);
        check_finite_weights("discretized S5 weights", w)?;
        Ok(S5Lti { config, weights })
    }
}

crate::layer::weight_view_methods!(S5Lti, S5LtiConfig, "S5 weights");

impl<W: AsRef<[f32]>> Layer for S5Lti<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.d_model
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// `h ← Ā⊙h + B̄x;  y = Re(C h) + Dᵀx`.
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let ssm = self.config.ssm();
        let w = self.weights.as_ref();
        let (w_ssm, w_d) = w.split_at(ssm.weights_len().min(w.len()));
        ssm.split(w_ssm).step(state, x, y, Some(w_d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Dims;
    use crate::layer::run_sequence;
    use crate::test_util::{Rng, TestParams};
    use num_complex::Complex64 as C;

    const H: usize = 5;
    const N: usize = 7;
    const L: usize = 60;

    fn params(rng: &mut Rng, stable_raw_a: bool) -> TestParams {
        let mut p = TestParams::new();
        let a = p.add(rng, "A", &[N, 2], -1.0, 1.0);
        if stable_raw_a {
            // For `none`, Ā = A itself must lie inside the unit circle.
            for s in 0..N {
                a[2 * s] = -0.2 + 0.3 * s as f32 / N as f32; // softplus ∈ (0.6, 0.8)
                a[2 * s + 1] = 0.1 * s as f32;
            }
        }
        p.add(rng, "B", &[N, H], -0.5, 0.5);
        p.add(rng, "log_dt", &[N], (0.001f64).ln(), (0.1f64).ln());
        p.add(rng, "C", &[H, N, 2], -0.5, 0.5);
        p.add(rng, "D", &[H, H], -0.5, 0.5);
        p
    }

    /// Slow reference in f64: the rule's formulas written out, then the recurrence on complex
    /// numbers, exactly as lrnnx's step describes it (spec §6.3, §6.5).
    fn reference(p: &TestParams, rule: Discretization, x: &[f32]) -> [f32; L * H] {
        let t = |n: &str| p.tensor(n).unwrap().data;
        let (a, b, log_dt, c, d) = (t("A"), t("B"), t("log_dt"), t("C"), t("D"));
        let mut ab = [C::new(0.0, 0.0); N];
        let mut g = [C::new(0.0, 0.0); N];
        for s in 0..N {
            let ac = C::new(-(1.0 + (a[2 * s] as f64).exp()).ln(), a[2 * s + 1] as f64);
            let dt = (log_dt[s] as f64).exp();
            let one = C::new(1.0, 0.0);
            (ab[s], g[s]) = match rule {
                Discretization::Zoh => ((ac * dt).exp(), ((ac * dt).exp() - 1.0) / ac),
                Discretization::Bilinear => (
                    (one + ac * dt / 2.0) / (one - ac * dt / 2.0),
                    dt / (one - ac * dt / 2.0),
                ),
                Discretization::LrnnxInvertedBilinear => (
                    (one - ac * dt / 2.0) / (one + ac * dt / 2.0),
                    dt / (one + ac * dt / 2.0),
                ),
                Discretization::Dirac => ((ac * dt).exp(), one),
                Discretization::None => (ac, one),
                _ => unreachable!(),
            };
        }
        let mut h = [C::new(0.0, 0.0); N];
        let mut y = [0.0f32; L * H];
        for tt in 0..L {
            let xt = &x[tt * H..(tt + 1) * H];
            for s in 0..N {
                let bx: f64 = (0..H).map(|i| b[s * H + i] as f64 * xt[i] as f64).sum();
                h[s] = ab[s] * h[s] + g[s] * bx;
            }
            for o in 0..H {
                let mut acc = 0.0;
                for s in 0..N {
                    let cc = C::new(c[(o * N + s) * 2] as f64, c[(o * N + s) * 2 + 1] as f64);
                    acc += (cc * h[s]).re;
                }
                for i in 0..H {
                    acc += xt[i] as f64 * d[i * H + o] as f64;
                }
                y[tt * H + o] = acc as f32;
            }
        }
        y
    }

    fn config(rule: Discretization) -> S5LtiConfig {
        S5LtiConfig {
            d_model: H,
            d_state: N,
            discretization: rule,
        }
    }

    #[test]
    fn steps_match_slow_reference_for_every_rule() {
        for (k, rule) in [
            Discretization::Zoh,
            Discretization::Bilinear,
            Discretization::Dirac,
            Discretization::None,
            Discretization::LrnnxInvertedBilinear,
        ]
        .into_iter()
        .enumerate()
        {
            let mut rng = Rng::new(10 + k as u64);
            let p = params(&mut rng, rule == Discretization::None);
            let mut x = [0.0f32; L * H];
            rng.fill(&mut x, -1.0, 1.0);
            let cfg = config(rule);
            let layer = S5Lti::from_lrnnx(cfg, &p, [0.0f32; 2 * N + 4 * N * H + H * H]).unwrap();
            let mut state = [0.0f32; 2 * N];
            let mut y = [0.0f32; L * H];
            run_sequence(&layer, &mut state, &x, &mut y).unwrap();
            let want = reference(&p, rule, &x);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in y.iter().zip(want.iter()) {
                assert!((a - b).abs() <= 2e-6 * scale + 1e-6, "{rule:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn weights_view_round_trips() {
        let mut rng = Rng::new(3);
        let p = params(&mut rng, false);
        let cfg = config(Discretization::Zoh);
        let built = S5Lti::from_lrnnx(cfg, &p, [0.0f32; 2 * N + 4 * N * H + H * H]).unwrap();
        let view = S5Lti::from_weights(cfg, built.weights()).unwrap();
        let x = [0.3f32; H];
        let (mut s1, mut s2) = ([0.0f32; 2 * N], [0.0f32; 2 * N]);
        let (mut y1, mut y2) = ([0.0f32; H], [0.0f32; H]);
        built.step(&mut s1, &x, &mut y1).unwrap();
        view.step(&mut s2, &x, &mut y2).unwrap();
        assert_eq!(y1, y2);
        let mut bad = [0.0f32; 2 * N + 4 * N * H + H * H];
        bad.copy_from_slice(built.weights());
        bad[3] = f32::INFINITY;
        assert!(matches!(
            S5Lti::from_weights(cfg, &bad[..]),
            Err(Error::NonFiniteParameter { index: 3, .. })
        ));
    }

    #[test]
    fn construction_errors_name_the_problem() {
        let mut rng = Rng::new(4);
        let cfg = config(Discretization::Zoh);
        let buf = || [0.0f32; 2 * N + 4 * N * H + H * H];

        let mut p = params(&mut rng, false);
        p.reshape("C", &[H, N]);
        assert_eq!(
            S5Lti::from_lrnnx(cfg, &p, buf()).unwrap_err(),
            Error::TensorShape {
                name: "C",
                expected: Dims::new(&[H, N, 2]),
                got: Dims::new(&[H, N])
            }
        );

        let mut p = params(&mut rng, false);
        p.remove("log_dt");
        assert_eq!(
            S5Lti::from_lrnnx(cfg, &p, buf()).unwrap_err(),
            Error::MissingTensor { name: "log_dt" }
        );

        let mut p = params(&mut rng, false);
        p.get_mut("B")[4] = f32::NAN;
        assert_eq!(
            S5Lti::from_lrnnx(cfg, &p, buf()).unwrap_err(),
            Error::NonFiniteParameter {
                name: "B",
                index: 4
            }
        );

        // Finite parameters whose discretization overflows f32: A ≈ 0 and Δ = e^89, so the
        // ZOH input gain γ̄ ≈ Δ exceeds f32::MAX.
        let mut p = params(&mut rng, false);
        p.get_mut("log_dt")[0] = 89.0;
        p.get_mut("A")[0] = -100.0;
        p.get_mut("A")[1] = 0.0;
        p.get_mut("B")[0] = 1.0;
        assert!(matches!(
            S5Lti::from_lrnnx(cfg, &p, buf()),
            Err(Error::NonFiniteParameter {
                name: "discretized S5 weights",
                ..
            })
        ));

        let p = params(&mut rng, false);
        let asy = S5LtiConfig {
            discretization: Discretization::Async,
            ..cfg
        };
        assert_eq!(
            S5Lti::from_lrnnx(asy, &p, buf()).unwrap_err(),
            Error::UnsupportedDiscretization {
                layer: "S5 (LTI)",
                discretization: Discretization::Async
            }
        );
        let zero = S5LtiConfig { d_state: 0, ..cfg };
        assert!(matches!(
            S5Lti::from_lrnnx(zero, &p, buf()),
            Err(Error::InvalidConfig {
                what: "d_state",
                ..
            })
        ));
        assert_eq!(
            S5Lti::from_lrnnx(cfg, &p, [0.0f32; 3]).unwrap_err(),
            Error::BufferLength {
                what: "weights",
                expected: cfg.weights_len(),
                got: 3
            }
        );
    }

    #[test]
    fn bad_step_input_leaves_state_untouched() {
        let mut rng = Rng::new(5);
        let p = params(&mut rng, false);
        let layer = S5Lti::from_lrnnx(
            config(Discretization::Zoh),
            &p,
            [0.0f32; 2 * N + 4 * N * H + H * H],
        )
        .unwrap();
        let mut state = [0.0f32; 2 * N];
        let mut y = [0.0f32; H];
        layer.step(&mut state, &[1.0; H], &mut y).unwrap();
        let saved = state;
        let mut x = [0.5f32; H];
        x[2] = f32::NAN;
        assert_eq!(
            layer.step(&mut state, &x, &mut y),
            Err(Error::NonFiniteInput { index: 2 })
        );
        assert_eq!(
            layer.step(&mut state, &[0.5; H - 1], &mut y),
            Err(Error::BufferLength {
                what: "input x",
                expected: H,
                got: H - 1
            })
        );
        assert_eq!(
            layer.step(&mut state[..3], &[0.5; H], &mut y),
            Err(Error::BufferLength {
                what: "state",
                expected: 2 * N,
                got: 3
            })
        );
        assert_eq!(state, saved);
    }
}
