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
use crate::error::{check_finite_weights, check_len, check_nonzero, Error, Result};
use crate::layer::Layer;
use crate::linalg::gemv_t_acc;
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
        let n = self.d_state;
        let h = self.d_model;
        2 * n + 4 * n * h + h * h
    }

    /// Number of `f32` state elements.
    pub const fn state_len(&self) -> usize {
        2 * self.d_state
    }

    fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)?;
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

    /// Views an already discretized weight buffer (as written by [`S5Lti::from_lrnnx`] or an
    /// export), without copying. Checks its length and that every value is finite.
    pub fn from_weights(config: S5LtiConfig, weights: W) -> Result<Self> {
        config.validate()?;
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        check_finite_weights("S5 weights", weights.as_ref())?;
        Ok(S5Lti { config, weights })
    }

    /// The configuration.
    pub fn config(&self) -> &S5LtiConfig {
        &self.config
    }

    /// The discretized weights in the stepping layout (for export).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }
}

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
        let (w_ssm, w_d) = self.weights.as_ref().split_at(ssm.weights_len());
        ssm.split(w_ssm).step(state, x, y);
        gemv_t_acc(y, w_d, x);
    }
}
