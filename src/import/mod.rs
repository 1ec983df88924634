//! Building `lrnnx-core` layers from lrnnx (PyTorch) models: the lrnnx class name, its
//! constructor keyword arguments, and its state dict (names and layouts unchanged).
//!
//! ```no_run
//! use lrnnx::import::build_core;
//! use lrnnx::safetensors_io::TensorFile;
//! let file = TensorFile::read("s5.safetensors").unwrap();
//! let kwargs = serde_json::json!({"d_model": 8, "d_state": 8, "discretization": "zoh"});
//! let layer = build_core("lrnnx.models.lti.s5.S5", &kwargs, &file.params("")).unwrap();
//! println!("{} inputs per step", layer.as_layer().d_input());
//! ```
//!
//! One module per layer family holds the mapping from lrnnx's arguments to the core config.

use std::fmt;

use lrnnx_core::{EventLayer, Layer, ParamSource};
use serde_json::Value;

mod centaurus;
mod lru;
mod mamba;
mod rglru;
mod s4;
mod s5_lti;
mod s5_ltv;
mod s7;

/// A core layer built from lrnnx weights, owning its weight buffer.
pub enum CoreModel {
    /// A layer that steps on samples only.
    Plain(Box<dyn Layer + Send + Sync>),
    /// A layer that can also step on events with a time step (Event-SSM, STREAM).
    Event(Box<dyn EventLayer + Send + Sync>),
}

impl CoreModel {
    /// The layer's sample-step interface.
    pub fn as_layer(&self) -> &dyn Layer {
        match self {
            CoreModel::Plain(l) => l.as_ref(),
            CoreModel::Event(l) => l.as_ref(),
        }
    }

    /// The event-step interface, for layers that have one.
    pub fn as_event_layer(&self) -> Option<&dyn EventLayer> {
        match self {
            CoreModel::Plain(_) => None,
            CoreModel::Event(l) => Some(l.as_ref()),
        }
    }
}

/// Why an lrnnx model could not be turned into a core layer.
#[derive(Debug)]
pub enum ImportError {
    /// The class is not one this library can build into the core (yet).
    UnsupportedClass(String),
    /// A constructor argument is missing, of the wrong type, or not supported.
    Kwarg {
        /// The argument.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The core rejected the parameters (missing or mis-shaped tensor, non-finite value, ...).
    Core(lrnnx_core::Error),
    /// The configuration asks for more memory than can be allocated (usually a `d_model` or
    /// `d_state` that does not belong to these weights).
    Allocation {
        /// Number of elements requested.
        elements: usize,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::UnsupportedClass(c) => write!(f, "lrnnx class `{c}` has no core layer"),
            ImportError::Kwarg { name, reason } => {
                write!(f, "constructor argument `{name}`: {reason}")
            }
            ImportError::Core(e) => write!(f, "{e}"),
            ImportError::Allocation { elements } => write!(
                f,
                "cannot allocate {elements} elements for the layer; check d_model/d_state \
                 against the tensors"
            ),
        }
    }
}

impl std::error::Error for ImportError {}

impl From<lrnnx_core::Error> for ImportError {
    fn from(e: lrnnx_core::Error) -> Self {
        ImportError::Core(e)
    }
}

/// Builds the core layer for an lrnnx module of class `class` (full import path, as in the
/// golden files' `class` field, or the bare class name) constructed with `kwargs`.
pub fn build_core<P: ParamSource + ?Sized>(
    class: &str,
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    match class {
        "lrnnx.models.lti.s5.S5" => s5_lti::build(kwargs, params),
        "lrnnx.models.lti.lru.LRU" | "LRU" => lru::build(kwargs, params),
        "lrnnx.models.lti.s4.S4" | "S4" | "lrnnx.models.lti.s4d.S4D" | "S4D" => {
            s4::build(class, kwargs, params)
        }
        "lrnnx.models.lti.centaurus.CentaurusNeck"
        | "lrnnx.models.lti.centaurus.CentaurusPWNeck"
        | "lrnnx.models.lti.centaurus.CentaurusDWS"
        | "lrnnx.models.lti.centaurus.CentaurusFull"
        | "CentaurusNeck"
        | "CentaurusPWNeck"
        | "CentaurusDWS"
        | "CentaurusFull" => centaurus::build(class, kwargs, params),
        "lrnnx.models.ltv.mamba.Mamba" | "Mamba" => mamba::build(class, kwargs, params),
        "lrnnx.models.ltv.s5.S5" => s5_ltv::build(class, kwargs, params),
        "lrnnx.models.ltv.rglru.RGLRU" | "RGLRU" => rglru::build(class, kwargs, params),
        "lrnnx.models.ltv.s7.S7" | "S7" => s7::build(class, kwargs, params),
        other => Err(ImportError::UnsupportedClass(other.to_owned())),
    }
}

/// Reads a required non-negative integer argument.
pub(crate) fn usize_arg(kwargs: &Value, name: &str) -> Result<usize, ImportError> {
    match kwargs.get(name) {
        Some(v) => v
            .as_u64()
            .and_then(|u| usize::try_from(u).ok())
            .ok_or_else(|| ImportError::Kwarg {
                name: name.into(),
                reason: format!("expected a non-negative integer, got {v}"),
            }),
        None => Err(ImportError::Kwarg {
            name: name.into(),
            reason: "missing".into(),
        }),
    }
}

/// Reads an optional integer argument with lrnnx's default.
pub(crate) fn usize_arg_or(
    kwargs: &Value,
    name: &str,
    default: usize,
) -> Result<usize, ImportError> {
    if kwargs.get(name).is_none_or(Value::is_null) {
        Ok(default)
    } else {
        usize_arg(kwargs, name)
    }
}

/// Reads an optional float argument with lrnnx's default.
pub(crate) fn f64_arg_or(kwargs: &Value, name: &str, default: f64) -> Result<f64, ImportError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| ImportError::Kwarg {
            name: name.into(),
            reason: format!("expected a number, got {v}"),
        }),
    }
}

/// Reads an optional boolean argument with lrnnx's default.
pub(crate) fn bool_arg_or(kwargs: &Value, name: &str, default: bool) -> Result<bool, ImportError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| ImportError::Kwarg {
            name: name.into(),
            reason: format!("expected true or false, got {v}"),
        }),
    }
}

/// Reads an optional string argument with lrnnx's default.
pub(crate) fn str_arg_or<'v>(
    kwargs: &'v Value,
    name: &str,
    default: &'v str,
) -> Result<&'v str, ImportError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| ImportError::Kwarg {
            name: name.into(),
            reason: format!("expected a string, got {v}"),
        }),
    }
}

/// Checks, before anything is allocated, the tensors whose shapes pin the layer's largest
/// dimensions, so that a `d_model`/`d_state` that does not belong to the weights is reported
/// by tensor name (and never turns into a huge allocation).
pub(crate) fn precheck<P: ParamSource + ?Sized>(
    params: &P,
    tensors: &[(&'static str, &[usize])],
) -> Result<(), ImportError> {
    for (name, shape) in tensors {
        lrnnx_core::params::require(params, name, shape)?;
    }
    Ok(())
}

/// A zeroed buffer of `len` elements, or an error (not an abort) when it cannot be allocated.
/// Configurations are validated before anything is allocated; a size that overflows `usize`
/// saturates to `usize::MAX` and lands here as an error too.
pub(crate) fn zeroed<T: Default + Clone>(len: usize) -> Result<Vec<T>, ImportError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| ImportError::Allocation { elements: len })?;
    v.resize(len, T::default());
    Ok(v)
}

/// A zeroed `f32` weight buffer of `len` elements (see [`zeroed`]).
pub(crate) fn buffer(len: usize) -> Result<Vec<f32>, ImportError> {
    zeroed(len)
}
