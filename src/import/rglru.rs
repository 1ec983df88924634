//! lrnnx `lrnnx.models.ltv.rglru.RGLRU(d_model, d_conv=4, expand=1, c=8.0,
//! a_init_range=(0.9, 0.999), conv_bias=True, bias=False, use_fast_path, layer_idx)`.
//! `a_init_range`, `use_fast_path` and `layer_idx` do not change the numbers. The inner width is
//! `int(expand · d_model)`, as lrnnx computes it.

use lrnnx_core::rglru::{RgLru, RgLruConfig};
use lrnnx_core::ParamSource;
use serde_json::Value;

use super::{
    bool_arg_or, buffer, f64_arg_or, precheck, usize_arg, usize_arg_or, CoreModel, ImportError,
};

pub(super) fn build<P: ParamSource + ?Sized>(
    _class: &str,
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    let d_model = usize_arg(kwargs, "d_model")?;
    let expand = f64_arg_or(kwargs, "expand", 1.0)?;
    if !(expand.is_finite() && expand > 0.0) {
        return Err(ImportError::Kwarg {
            name: "expand".into(),
            reason: format!("must be a positive number, got {expand}"),
        });
    }
    let d_conv = usize_arg_or(kwargs, "d_conv", 4)?;
    let config = RgLruConfig {
        d_model,
        d_inner: (expand * d_model as f64) as usize,
        d_conv,
        c: f64_arg_or(kwargs, "c", 8.0)? as f32,
        bias: bool_arg_or(kwargs, "bias", false)?,
        conv_bias: bool_arg_or(kwargs, "conv_bias", true)?,
    };
    let (h, d) = (config.d_model, config.d_inner);
    precheck(
        params,
        &[
            ("in_proj.weight", &[d, h]),
            ("recurrent_gate_proj.weight", &[d, d]),
            ("conv1d.weight", &[d, 1, config.d_conv]),
        ],
    )?;
    let layer = RgLru::from_lrnnx(config, params, buffer(config.weights_len())?)?;
    Ok(CoreModel::Plain(Box::new(layer)))
}
