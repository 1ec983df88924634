//! lrnnx `lrnnx.models.ltv.s7.S7(d_model, d_state, J=1, use_fast_path, layer_idx)`.
//! `use_fast_path` and `layer_idx` do not change the numbers.

use lrnnx_core::s7::{S7Config, S7};
use lrnnx_core::ParamSource;
use serde_json::Value;

use super::{buffer, precheck, usize_arg, usize_arg_or, CoreModel, ImportError};

pub(super) fn build<P: ParamSource + ?Sized>(
    _class: &str,
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    let j = usize_arg_or(kwargs, "J", 1)?;
    let config = S7Config {
        d_model: usize_arg(kwargs, "d_model")?,
        d_state: usize_arg(kwargs, "d_state")?,
        j,
    };
    let h = config.d_model;
    precheck(
        params,
        &[
            ("in_proj.weight", &[h, h]),
            ("x_proj.weight", &[config.proj_len(), h]),
        ],
    )?;
    let layer = S7::from_lrnnx(config, params, buffer(config.weights_len())?)?;
    Ok(CoreModel::Plain(Box::new(layer)))
}
