//! S5, time-invariant (lrnnx `lrnnx.models.lti.s5.S5`, spec §6), trainable.
//!
//! ```text
//! A_c = −softplus(A[:,0]) + i·A[:,1]        Δ = exp(log_dt)            (per state n)
//! (Ā, γ̄) = discretize(A_c, Δ)              B̄ = γ̄ ⊙ B                  (B real, N×H)
//! h_t = Ā ⊙ h_{t−1} + B̄ x_t                (parallel: the complex scan over t)
//! y_t = Re(C h_t) + x_t @ D
//! ```
//!
//! Parameters (lrnnx names): `A` (N,2), `B` (N,H), `log_dt` (N,), `C` (H,N,2), `D` (H,H). An lrnnx
//! checkpoint whose `discretization` is `"bilinear"` was trained with lrnnx's inverted rule,
//! so it loads as [`Discretization::LrnnxInvertedBilinear`], as in the core's importer.

use candle_core::{Result, Tensor};
use lrnnx_core::Discretization;
use serde_json::Value;

use crate::complex::CTensor;
use crate::layer::{str_arg, usize_arg, BuildError, TrainLayer};
use crate::ops::softplus;
use crate::params::Params;
use crate::scan::complex_scan;

/// A trainable LTI S5 layer.
pub struct S5Lti {
    d_model: usize,
    d_state: usize,
    discretization: Discretization,
    params: Params,
}

impl S5Lti {
    /// From lrnnx's constructor arguments (`d_model`, `d_state`, `discretization`) and its
    /// parameters; checks every parameter's shape.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let d_model = usize_arg(kwargs, "d_model")?;
        let d_state = usize_arg(kwargs, "d_state")?;
        let discretization = match str_arg(kwargs, "discretization") {
            "bilinear" => Discretization::LrnnxInvertedBilinear,
            "zoh" => Discretization::Zoh,
            "dirac" => Discretization::Dirac,
            "no_discretization" => Discretization::None,
            other => {
                return Err(BuildError::Kwarg(format!(
                "`discretization`: `{other}` is not one of zoh, bilinear, dirac, no_discretization"
            )))
            }
        };
        let layer = S5Lti {
            d_model,
            d_state,
            discretization,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// The parameters with their shapes checked.
    fn weights(&self) -> Result<[Tensor; 5]> {
        let (h, n) = (self.d_model, self.d_state);
        let p = &self.params;
        Ok([
            p.get("A", &[n, 2])?,
            p.get("B", &[n, h])?,
            p.get("log_dt", &[n])?,
            p.get("C", &[h, n, 2])?,
            p.get("D", &[h, h])?,
        ])
    }

    /// `(Ā, B̄)` from the parameters (module doc).
    fn discretized(&self) -> Result<(CTensor, CTensor)> {
        let [a, b, log_dt, _, _] = self.weights()?;
        let a_c = CTensor::new(
            softplus(&a.narrow(1, 0, 1)?.squeeze(1)?)?.neg()?,
            a.narrow(1, 1, 1)?.squeeze(1)?,
        );
        let dt = log_dt.exp()?;
        let z = a_c.mul_real(&dt)?;
        let one = CTensor::from_real(&z.re.ones_like()?)?;
        let (a_bar, gamma) = match self.discretization {
            Discretization::Zoh => {
                let a_bar = z.exp()?;
                let gamma = a_bar.affine(1.0, -1.0)?.div(&a_c)?; // (Ā − 1)/A
                (a_bar, gamma)
            }
            Discretization::LrnnxInvertedBilinear => {
                let den = z.affine(0.5, 1.0)?; // 1 + ΔA/2
                let num = z.affine(-0.5, 1.0)?; // 1 − ΔA/2
                let gamma = CTensor::from_real(&dt)?.div(&den)?;
                (num.div(&den)?, gamma)
            }
            Discretization::Dirac => (z.exp()?, one),
            _ => (a_c.clone(), one),
        };
        let b_bar = CTensor::from_real(&b)?.mul(&CTensor::new(
            gamma.re.unsqueeze(1)?,
            gamma.im.unsqueeze(1)?,
        ))?;
        Ok((a_bar, b_bar))
    }
}

impl TrainLayer for S5Lti {
    fn forward(&self, x: &Tensor, _time_steps: Option<&Tensor>) -> Result<Tensor> {
        let [_, _, _, c, d] = self.weights()?;
        let (a_bar, b_bar) = self.discretized()?;
        // u = x B̄ᵀ: (B, L, H) × (H, N) → (B, L, N), complex.
        let u = CTensor::new(
            x.broadcast_matmul(&b_bar.re.t()?)?,
            x.broadcast_matmul(&b_bar.im.t()?)?,
        );
        let h = complex_scan(&a_bar, &u)?;
        // y = Re(h Cᵀ) + x D
        let c_re = c.narrow(2, 0, 1)?.squeeze(2)?;
        let c_im = c.narrow(2, 1, 1)?.squeeze(2)?;
        let y = (h.re.broadcast_matmul(&c_re.t()?)? - h.im.broadcast_matmul(&c_im.t()?)?)?;
        y + x.broadcast_matmul(&d)?
    }

    fn params(&self) -> &Params {
        &self.params
    }
}
