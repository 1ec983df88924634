//! lrnnx `lrnnx.models.lti.s4.S4(d_model, ...)` and `lrnnx.models.lti.s4d.S4D(d_model, ...)`
//! (spec §5.1).
//!
//! Arguments used: `d_model`, `d_state` (64), `n_ssm` (None → d_model), `channels` (1),
//! `rank` (1, S4 only), `dt_tie` (True), `dt_transform` ("exp"), `dt_fast` (False),
//! `real_transform` ("exp"), `imag_transform` ("none"), `disc` ("zoh", S4D only), `final_act`
//! ("glu"; any non-None value builds Linear + GELU, None builds nothing) and its deprecated
//! alias `postact`.
//!
//! Rejected with an explanation: `gate`, `bottleneck` (lrnnx's shapes are inconsistent there,
//! spec §18.31), `is_real`, `swap_channels`. Ignored (no effect at inference or on the step):
//! `transposed`, `l_max` (it caps lrnnx's FFT kernel at `l_max` taps, so lrnnx's own forward
//! differs from its step on sequences longer than `l_max`; the core is the untruncated
//! recurrence, i.e. lrnnx's step), `dropout`, `tie_dropout`,
//! `lr`, `wd`, `verbose` and the initializer arguments (`init`, `dt_min`, `dt_max`,
//! `deterministic`, ...).

use lrnnx_core::discretize::Discretization;
use lrnnx_core::s4::{S4Config, S4};
use lrnnx_core::s4_block::{ParamTransform, S4Transforms};
use lrnnx_core::s4d::{S4d, S4dConfig};
use lrnnx_core::ParamSource;
use serde_json::Value;

use super::{
    bool_arg_or, buffer, precheck, str_arg_or, usize_arg, usize_arg_or, zeroed, CoreModel,
    ImportError,
};

fn kwarg_err(name: &str, reason: impl Into<String>) -> ImportError {
    ImportError::Kwarg {
        name: name.into(),
        reason: reason.into(),
    }
}

fn transform_arg(kwargs: &Value, name: &str, default: &str) -> Result<ParamTransform, ImportError> {
    let v = str_arg_or(kwargs, name, default)?;
    ParamTransform::from_name(v).ok_or_else(|| {
        kwarg_err(
            name,
            format!("unknown transform `{v}` (expected none, exp, relu, sigmoid or softplus)"),
        )
    })
}

/// Whether `final_act` (or its deprecated alias `postact`) asks for the output linear.
/// lrnnx: `final_act` defaults to "glu"; `postact`, if given, replaces it (and lrnnx asserts
/// that `final_act` was then passed as None).
fn output_linear(kwargs: &Value) -> Result<bool, ImportError> {
    if kwargs.get("postact").is_some_and(|v| !v.is_null()) {
        if kwargs.get("final_act").is_some_and(|v| !v.is_null()) {
            return Err(kwarg_err(
                "postact",
                "lrnnx requires final_act=None when the deprecated postact is given",
            ));
        }
        return Ok(true);
    }
    Ok(match kwargs.get("final_act") {
        None => true,
        Some(Value::Null) => false,
        Some(_) => true,
    })
}

fn reject_if_set(kwargs: &Value, name: &str, reason: &str) -> Result<(), ImportError> {
    match kwargs.get(name) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(_) => Err(kwarg_err(name, reason)),
    }
}

pub(super) fn build<P: ParamSource + ?Sized>(
    class: &str,
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    let is_s4d = matches!(class, "lrnnx.models.lti.s4d.S4D" | "S4D");
    reject_if_set(
        kwargs,
        "gate",
        "the gated (GSS) variant is not supported: lrnnx's own output_gate shapes are \
         inconsistent (spec §18.31)",
    )?;
    reject_if_set(
        kwargs,
        "bottleneck",
        "the bottleneck variant is not supported: lrnnx's own input_linear shapes are \
         inconsistent (spec §18.31)",
    )?;
    reject_if_set(
        kwargs,
        "is_real",
        "the real-valued SSM variant is not supported",
    )?;
    reject_if_set(
        kwargs,
        "swap_channels",
        "only lrnnx's default (channel, feature) output order is supported",
    )?;
    let d_model = usize_arg(kwargs, "d_model")?;
    let d_state = usize_arg_or(kwargs, "d_state", 64)?;
    let n_ssm = usize_arg_or(kwargs, "n_ssm", d_model)?;
    let channels = usize_arg_or(kwargs, "channels", 1)?;
    let dt_tied = bool_arg_or(kwargs, "dt_tie", true)?;
    let transforms = S4Transforms {
        dt: transform_arg(kwargs, "dt_transform", "exp")?,
        dt_fast: bool_arg_or(kwargs, "dt_fast", false)?,
        real: transform_arg(kwargs, "real_transform", "exp")?,
        imag: transform_arg(kwargs, "imag_transform", "none")?,
    };
    let output_linear = output_linear(kwargs)?;
    if is_s4d {
        let discretization = match str_arg_or(kwargs, "disc", "zoh")? {
            "zoh" => Discretization::Zoh,
            "bilinear" => Discretization::Bilinear,
            other => {
                return Err(kwarg_err(
                    "disc",
                    format!("unknown discretization `{other}` (lrnnx S4D knows zoh, bilinear)"),
                ))
            }
        };
        let config = S4dConfig {
            d_model,
            d_state,
            n_ssm,
            channels,
            dt_tied,
            transforms,
            discretization,
            output_linear,
        };
        precheck(params, &[("C", &[channels, d_model, d_state / 2, 2])])?;
        let layer = S4d::from_lrnnx(config, params, buffer(config.weights_len())?)?;
        Ok(CoreModel::Plain(Box::new(layer)))
    } else {
        let config = S4Config {
            d_model,
            d_state,
            n_ssm,
            channels,
            rank: usize_arg_or(kwargs, "rank", 1)?,
            dt_tied,
            transforms,
            output_linear,
        };
        precheck(params, &[("C", &[channels, d_model, d_state / 2, 2])])?;
        let mut scratch = zeroed::<f64>(config.construction_scratch_len())?;
        let layer = S4::from_lrnnx(config, params, buffer(config.weights_len())?, &mut scratch)?;
        Ok(CoreModel::Plain(Box::new(layer)))
    }
}
