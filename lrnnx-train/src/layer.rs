//! The interface every trainable layer has, and building one from lrnnx's class name.

use candle_core::{Result, Tensor};
use serde_json::Value;

use crate::params::Params;

/// A layer trained in parallel mode.
pub trait TrainLayer: Send + Sync {
    /// The parallel forward over `x` (B, L, H); `time_steps` (B, L) are the event time steps of
    /// event-driven layers (Event-SSM, STREAM), `None` otherwise.
    fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor>;

    /// The parameters, by lrnnx state-dict name.
    fn params(&self) -> &Params;
}

/// Why a layer could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// No trainable layer for this lrnnx class (yet).
    UnsupportedClass(String),
    /// A constructor argument is missing or invalid.
    Kwarg(String),
    /// The parameters are wrong (missing, mis-shaped).
    Candle(candle_core::Error),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::UnsupportedClass(c) => {
                write!(f, "no trainable layer for lrnnx class `{c}`")
            }
            BuildError::Kwarg(m) => write!(f, "constructor argument: {m}"),
            BuildError::Candle(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BuildError {}

impl From<candle_core::Error> for BuildError {
    fn from(e: candle_core::Error) -> Self {
        BuildError::Candle(e)
    }
}

/// Reads a required non-negative integer argument.
pub(crate) fn usize_arg(kwargs: &Value, name: &str) -> std::result::Result<usize, BuildError> {
    kwargs
        .get(name)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected a non-negative integer")))
}

/// Reads a string argument (empty when absent).
pub(crate) fn str_arg<'v>(kwargs: &'v Value, name: &str) -> &'v str {
    kwargs.get(name).and_then(Value::as_str).unwrap_or("")
}

/// Builds the trainable layer of lrnnx class `class` (full import path or bare name) with
/// constructor arguments `kwargs` and the given parameters.
pub fn build(
    class: &str,
    kwargs: &Value,
    params: Params,
) -> std::result::Result<Box<dyn TrainLayer>, BuildError> {
    match class {
        "lrnnx.models.lti.s5.S5" => Ok(Box::new(crate::s5_lti::S5Lti::from_lrnnx(kwargs, params)?)),
        "lrnnx.models.lti.lru.LRU" | "LRU" => {
            Ok(Box::new(crate::lru::Lru::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.lti.s4.S4" | "S4" => Ok(Box::new(crate::s4::S4::from_lrnnx(kwargs, params)?)),
        "lrnnx.models.lti.s4d.S4D" | "S4D" => {
            Ok(Box::new(crate::s4d::S4d::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.lti.centaurus.CentaurusNeck"
        | "lrnnx.models.lti.centaurus.CentaurusPWNeck"
        | "lrnnx.models.lti.centaurus.CentaurusDWS"
        | "lrnnx.models.lti.centaurus.CentaurusFull"
        | "CentaurusNeck"
        | "CentaurusPWNeck"
        | "CentaurusDWS"
        | "CentaurusFull" => Ok(Box::new(crate::centaurus::Centaurus::from_lrnnx(
            class, kwargs, params,
        )?)),
        "lrnnx.models.ltv.s5.S5" => Ok(Box::new(crate::s5_ltv::S5Ltv::from_lrnnx(kwargs, params)?)),
        "lrnnx.models.ltv.mamba.Mamba" => {
            Ok(Box::new(crate::mamba::Mamba::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.ltv.rglru.RGLRU" | "RGLRU" => {
            Ok(Box::new(crate::rglru::RgLru::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.ltv.s7.S7" | "S7" => Ok(Box::new(crate::s7::S7::from_lrnnx(kwargs, params)?)),
        other => Err(BuildError::UnsupportedClass(other.to_owned())),
    }
}
