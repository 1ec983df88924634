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
use crate::error::{check_finite_weights, check_len, check_nonzero, Result};
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
        2 * n + 4 * n * h + h
    }

    /// Number of `f32` state elements.
    pub const fn state_len(&self) -> usize {
        2 * self.d_state
    }

    fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)
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

    /// Views an already built weight buffer (zero-copy); checks length and finiteness.
    pub fn from_weights(config: LruConfig, weights: W) -> Result<Self> {
        config.validate()?;
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        check_finite_weights("LRU weights", weights.as_ref())?;
        Ok(Lru { config, weights })
    }

    /// The configuration.
    pub fn config(&self) -> &LruConfig {
        &self.config
    }

    /// The weights in the stepping layout (for export).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }
}

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
        let (w_ssm, w_d) = self.weights.as_ref().split_at(ssm.weights_len());
        ssm.split(w_ssm).step(state, x, y);
        diag_acc(y, w_d, x);
    }
}
