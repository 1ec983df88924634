//! lrnnx `lrnnx.models.lti.lru.LRU(d_model, d_state, r_min=0, r_max=1, max_phase=2π)`.
//! `r_min`, `r_max` and `max_phase` only shape the initialization, so they are not needed here.

use lrnnx_core::{Lru, LruConfig, ParamSource};
use serde_json::Value;

use super::{buffer, precheck, usize_arg, CoreModel, ImportError};

pub(super) fn build<P: ParamSource + ?Sized>(
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    let config = LruConfig {
        d_model: usize_arg(kwargs, "d_model")?,
        d_state: usize_arg(kwargs, "d_state")?,
    };
    let (h, n) = (config.d_model, config.d_state);
    precheck(params, &[("B_re", &[n, h]), ("C_re", &[h, n])])?;
    let layer = Lru::from_lrnnx(config, params, buffer(config.weights_len())?)?;
    Ok(CoreModel::Plain(Box::new(layer)))
}
