//! lrnnx `lrnnx.models.ltv.s5.S5(d_model, d_state, discretization="zoh", conj_sym=False,
//! dt_min, dt_max, step_rescale=1.0, use_fast_path)`: the time-varying S5, with Event-SSM mode
//! (built as [`CoreModel::Event`]). `dt_min`, `dt_max` and `use_fast_path` do not change the
//! numbers, so they are not needed here.

use lrnnx_core::s5_ltv::{S5Ltv, S5LtvConfig};
use lrnnx_core::{Discretization, ParamSource};
use serde_json::Value;

use super::{
    bool_arg_or, buffer, f64_arg_or, precheck, str_arg_or, usize_arg, CoreModel, ImportError,
};

pub(super) fn build<P: ParamSource + ?Sized>(
    _class: &str,
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    let name = str_arg_or(kwargs, "discretization", "zoh")?;
    let discretization = match name {
        "zoh" => Discretization::Zoh,
        "bilinear" => Discretization::Bilinear,
        "dirac" => Discretization::Dirac,
        other => {
            return Err(ImportError::Kwarg {
                name: "discretization".into(),
                reason: format!(
                    "lrnnx's time-varying S5 supports zoh, bilinear and dirac, not `{other}`"
                ),
            })
        }
    };
    let config = S5LtvConfig {
        d_model: usize_arg(kwargs, "d_model")?,
        d_state: usize_arg(kwargs, "d_state")?,
        discretization,
        conj_sym: bool_arg_or(kwargs, "conj_sym", false)?,
        step_rescale: f64_arg_or(kwargs, "step_rescale", 1.0)? as f32,
    };
    precheck(params, &[("B", &[config.d_state, config.d_model, 2])])?;
    let layer = S5Ltv::from_lrnnx(config, params, buffer(config.weights_len())?)?;
    Ok(CoreModel::Event(Box::new(layer)))
}
