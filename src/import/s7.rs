//! Import of lrnnx's s7 layer(s) — filled in by the layer's work.

use lrnnx_core::ParamSource;
use serde_json::Value;

use super::{CoreModel, ImportError};

pub(super) fn build<P: ParamSource + ?Sized>(
    class: &str,
    _kwargs: &Value,
    _params: &P,
) -> Result<CoreModel, ImportError> {
    Err(ImportError::UnsupportedClass(class.to_owned()))
}
