//! lrnnx `lrnnx.models.ltv.mamba.Mamba(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto",
//! ..., conv_bias=True, bias=False, ..., discretization="mamba")`, built as an event layer
//! (STREAM mode steps with `integration_timesteps`).
//!
//! The initialisation arguments (`dt_min`, `dt_max`, `dt_init`, `dt_scale`, `dt_init_floor`) and
//! `use_fast_path`, `layer_idx`, `device`, `dtype` do not affect stepping and are ignored.

use lrnnx_core::mamba::{Mamba, MambaConfig};
use lrnnx_core::{Discretization, ParamSource};
use serde_json::Value;

use super::{
    bool_arg_or, buffer, f64_arg_or, precheck, str_arg_or, usize_arg, usize_arg_or, CoreModel,
    ImportError,
};

/// lrnnx's `dt_rank`: `"auto"` (default) = `ceil(d_model/16)`, or an integer.
fn dt_rank(kwargs: &Value, d_model: usize) -> Result<usize, ImportError> {
    match kwargs.get("dt_rank") {
        None | Some(Value::Null) => Ok(d_model.div_ceil(16)),
        Some(Value::String(s)) if s == "auto" => Ok(d_model.div_ceil(16)),
        Some(_) => usize_arg(kwargs, "dt_rank"),
    }
}

/// The selective-scan rules lrnnx's Mamba accepts.
fn rule(name: &str) -> Result<Discretization, ImportError> {
    match name {
        "mamba" => Ok(Discretization::Mamba),
        "zoh" => Ok(Discretization::Zoh),
        "bilinear" => Ok(Discretization::Bilinear),
        "dirac" => Ok(Discretization::Dirac),
        other => Err(ImportError::Kwarg {
            name: "discretization".into(),
            reason: format!("lrnnx's Mamba supports mamba, zoh, bilinear and dirac, not `{other}`"),
        }),
    }
}

pub(super) fn build<P: ParamSource + ?Sized>(
    class: &str,
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    debug_assert!(class.ends_with("Mamba"));
    let d_model = usize_arg(kwargs, "d_model")?;
    let expand = f64_arg_or(kwargs, "expand", 2.0)?;
    if !(expand.is_finite() && expand > 0.0) {
        return Err(ImportError::Kwarg {
            name: "expand".into(),
            reason: format!("expected a positive number, got {expand}"),
        });
    }
    let config = MambaConfig {
        d_model,
        d_state: usize_arg_or(kwargs, "d_state", 16)?,
        d_conv: usize_arg_or(kwargs, "d_conv", 4)?,
        // Python's int(expand * d_model) truncates.
        d_inner: (expand * d_model as f64) as usize,
        dt_rank: dt_rank(kwargs, d_model)?,
        bias: bool_arg_or(kwargs, "bias", false)?,
        conv_bias: bool_arg_or(kwargs, "conv_bias", true)?,
        discretization: rule(str_arg_or(kwargs, "discretization", "mamba")?)?,
    };
    let (h, e, n, r) = (
        config.d_model,
        config.d_inner,
        config.d_state,
        config.dt_rank,
    );
    precheck(
        params,
        &[
            ("in_proj.weight", &[e.saturating_mul(2), h]),
            ("x_proj.weight", &[r.saturating_add(n.saturating_mul(2)), e]),
            ("A_log", &[e, n]),
            ("out_proj.weight", &[h, e]),
        ],
    )?;
    let layer = Mamba::from_lrnnx(config, params, buffer(config.weights_len())?)?;
    Ok(CoreModel::Event(Box::new(layer)))
}
