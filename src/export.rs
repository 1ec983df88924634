//! Export of a trained layer to lrnnx-core's stepping layout, discretized once: as a byte blob
//! ([`to_blob`], read back by [`read_blob`] / [`parse_blob`]) and as Rust source for firmware
//! ([`to_rust_source`]).
//!
//! The trained parameters (lrnnx names, [`lrnnx_train::Params`]) go through the same path as an
//! lrnnx checkpoint: [`crate::import::build_core`] validates them (constructor arguments,
//! shapes, finiteness), and the core layer's own `from_lrnnx` discretizes them into its weight
//! buffer. This lives in the root crate because it needs both crates and the importer's
//! argument rules; the mapping from lrnnx arguments to each core config below repeats the
//! importer's, and the tests check that both give bit-identical layers.
//!
//! Blob layout (version 1; every field little-endian, 4-byte aligned, so a blob placed at a
//! 4-aligned address on a little-endian target holds its weights as an `[f32]` in place):
//!
//! ```text
//! offset  size  field
//!      0     8  magic b"LRNXCORE"
//!      8     4  u32 version (1)
//!     12     4  u32 layer kind (CoreConfig::kind: 1 S5Lti, 2 S5Ltv, 3 Lru, 4 Mamba, 5 RgLru,
//!               6 S7, 7 Centaurus, 8 S4d, 9 S4)
//!     16     4  u32 C, number of config words
//!     20     4  u32 W, number of weights
//!     24    4C  config words (u32: sizes; 0/1: flags; enum codes; f32 bit patterns)
//! 24+4C     4W  f32 weights, the core layer's `weights()`
//! ```
//!
//! The Rust source holds `pub const <NAME>_CONFIG: lrnnx_core::<Layer>Config` and
//! `pub static <NAME>_WEIGHTS: [f32; W]`; on the device,
//! `lrnnx_core::<Layer>::from_weights(<NAME>_CONFIG, &<NAME>_WEIGHTS[..])` is the layer, with
//! its weights in flash and no copy.

use std::fmt;

use lrnnx_core::{
    Centaurus, CentaurusConfig, CentaurusMode, Discretization, Lru, LruConfig, Mamba, MambaConfig,
    ParamSource, ParamTransform, RgLru, RgLruConfig, S4Config, S4Transforms, S4d, S4dConfig, S5Lti,
    S5LtiConfig, S5Ltv, S5LtvConfig, S7Config, TensorView, S4, S7,
};
pub use lrnnx_core::{CoreConfig, CoreLayer};
use lrnnx_train::Params;
use serde_json::Value;

use crate::import::{
    bool_arg_or, buffer, build_core, f64_arg_or, str_arg_or, usize_arg, usize_arg_or, zeroed,
    ImportError,
};

/// The blob's first 8 bytes.
pub const BLOB_MAGIC: [u8; 8] = *b"LRNXCORE";
/// The blob format version written by [`to_blob`].
pub const BLOB_VERSION: u32 = 1;
/// Bytes before the config words.
const BLOB_HEADER: usize = 24;

/// Why a layer could not be exported, or a blob read.
#[derive(Debug)]
pub enum ExportError {
    /// The class, constructor arguments or parameters are not a core layer (the importer's
    /// error: it names the argument or tensor).
    Import(ImportError),
    /// A trained parameter could not be read out of its tensor.
    Param {
        /// The parameter.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The blob is not a valid layer blob.
    Blob(String),
    /// The Rust source cannot be generated (bad name, non-finite value).
    Source(String),
    /// The layer is not causal (a bidirectional layer): the core steps one sample at a time
    /// and cannot run it.
    NotCausal(String),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Import(e) => write!(f, "{e}"),
            ExportError::Param { name, reason } => write!(f, "parameter `{name}`: {reason}"),
            ExportError::Blob(m) => write!(f, "blob: {m}"),
            ExportError::Source(m) => write!(f, "Rust source: {m}"),
            ExportError::NotCausal(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<ImportError> for ExportError {
    fn from(e: ImportError) -> Self {
        ExportError::Import(e)
    }
}

impl From<lrnnx_core::Error> for ExportError {
    fn from(e: lrnnx_core::Error) -> Self {
        ExportError::Import(ImportError::Core(e))
    }
}

type Result<T> = std::result::Result<T, ExportError>;

/// Discretization rules by blob code.
const DISCRETIZATIONS: [Discretization; 7] = [
    Discretization::Zoh,
    Discretization::Bilinear,
    Discretization::Dirac,
    Discretization::Async,
    Discretization::None,
    Discretization::Mamba,
    Discretization::LrnnxInvertedBilinear,
];
/// Parameter transforms by blob code.
const TRANSFORMS: [ParamTransform; 5] = [
    ParamTransform::None,
    ParamTransform::Exp,
    ParamTransform::Relu,
    ParamTransform::Sigmoid,
    ParamTransform::Softplus,
];
/// Centaurus modes by blob code.
const MODES: [CentaurusMode; 4] = [
    CentaurusMode::Neck,
    CentaurusMode::PointwiseNeck,
    CentaurusMode::DepthwiseSeparable,
    CentaurusMode::Full,
];

/// Appends config words, converting sizes to u32.
struct Words(Vec<u32>);

impl Words {
    fn size(&mut self, v: usize) -> Result<&mut Self> {
        let w = u32::try_from(v)
            .map_err(|_| ExportError::Blob(format!("size {v} does not fit in a u32 field")))?;
        self.0.push(w);
        Ok(self)
    }
    fn flag(&mut self, v: bool) -> &mut Self {
        self.0.push(v as u32);
        self
    }
    fn code<T: PartialEq>(&mut self, table: &[T], v: T) -> &mut Self {
        // Every variant is in its table, so the position exists.
        self.0.push(
            table
                .iter()
                .position(|t| *t == v)
                .unwrap_or(u32::MAX as usize) as u32,
        );
        self
    }
    fn float(&mut self, v: f32) -> &mut Self {
        self.0.push(v.to_bits());
        self
    }
}

/// Reads config words back, refusing out-of-range codes and flags.
struct Reader<'w>(std::slice::Iter<'w, u32>);

impl Reader<'_> {
    fn next(&mut self) -> Result<u32> {
        self.0
            .next()
            .copied()
            .ok_or_else(|| ExportError::Blob("too few config words".into()))
    }
    fn size(&mut self) -> Result<usize> {
        Ok(self.next()? as usize)
    }
    fn flag(&mut self) -> Result<bool> {
        match self.next()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(ExportError::Blob(format!("flag word {v} is not 0 or 1"))),
        }
    }
    fn code<T: Copy>(&mut self, table: &[T], what: &str) -> Result<T> {
        let v = self.next()?;
        table
            .get(v as usize)
            .copied()
            .ok_or_else(|| ExportError::Blob(format!("{what} code {v} is unknown")))
    }
    fn float(&mut self) -> Result<f32> {
        Ok(f32::from_bits(self.next()?))
    }
}

/// The blob encoding of a [`CoreConfig`] (private to this module).
trait ConfigCodec: Sized {
    fn words(&self) -> Result<Vec<u32>>;
    fn from_words(kind: u32, words: &[u32]) -> Result<Self>;
    fn rust_expr(&self) -> Result<String>;
}

impl ConfigCodec for CoreConfig {
    fn words(&self) -> Result<Vec<u32>> {
        let mut w = Words(Vec::new());
        match *self {
            CoreConfig::S5Lti(c) => {
                w.size(c.d_model)?
                    .size(c.d_state)?
                    .code(&DISCRETIZATIONS, c.discretization);
            }
            CoreConfig::S5Ltv(c) => {
                w.size(c.d_model)?
                    .size(c.d_state)?
                    .code(&DISCRETIZATIONS, c.discretization)
                    .flag(c.conj_sym)
                    .float(c.step_rescale);
            }
            CoreConfig::Lru(c) => {
                w.size(c.d_model)?.size(c.d_state)?;
            }
            CoreConfig::Mamba(c) => {
                w.size(c.d_model)?
                    .size(c.d_state)?
                    .size(c.d_conv)?
                    .size(c.d_inner)?
                    .size(c.dt_rank)?
                    .flag(c.bias)
                    .flag(c.conv_bias)
                    .code(&DISCRETIZATIONS, c.discretization);
            }
            CoreConfig::RgLru(c) => {
                w.size(c.d_model)?
                    .size(c.d_inner)?
                    .size(c.d_conv)?
                    .float(c.c)
                    .flag(c.bias)
                    .flag(c.conv_bias);
            }
            CoreConfig::S7(c) => {
                w.size(c.d_model)?.size(c.d_state)?.size(c.j)?;
            }
            CoreConfig::Centaurus(c) => {
                w.size(c.d_model)?
                    .size(c.d_state)?
                    .size(c.sub_state_dim)?
                    .code(&MODES, c.mode);
            }
            CoreConfig::S4d(c) => {
                w.size(c.d_model)?
                    .size(c.d_state)?
                    .size(c.n_ssm)?
                    .size(c.channels)?
                    .flag(c.dt_tied);
                transform_words(&mut w, c.transforms)
                    .code(&DISCRETIZATIONS, c.discretization)
                    .flag(c.output_linear);
            }
            CoreConfig::S4(c) => {
                w.size(c.d_model)?
                    .size(c.d_state)?
                    .size(c.n_ssm)?
                    .size(c.channels)?
                    .size(c.rank)?
                    .flag(c.dt_tied);
                transform_words(&mut w, c.transforms).flag(c.output_linear);
            }
        }
        Ok(w.0)
    }

    fn from_words(kind: u32, words: &[u32]) -> Result<Self> {
        let mut r = Reader(words.iter());
        let d = |r: &mut Reader| r.code(&DISCRETIZATIONS, "discretization");
        let config = match kind {
            1 => CoreConfig::S5Lti(S5LtiConfig {
                d_model: r.size()?,
                d_state: r.size()?,
                discretization: d(&mut r)?,
            }),
            2 => CoreConfig::S5Ltv(S5LtvConfig {
                d_model: r.size()?,
                d_state: r.size()?,
                discretization: d(&mut r)?,
                conj_sym: r.flag()?,
                step_rescale: r.float()?,
            }),
            3 => CoreConfig::Lru(LruConfig {
                d_model: r.size()?,
                d_state: r.size()?,
            }),
            4 => CoreConfig::Mamba(MambaConfig {
                d_model: r.size()?,
                d_state: r.size()?,
                d_conv: r.size()?,
                d_inner: r.size()?,
                dt_rank: r.size()?,
                bias: r.flag()?,
                conv_bias: r.flag()?,
                discretization: d(&mut r)?,
            }),
            5 => CoreConfig::RgLru(RgLruConfig {
                d_model: r.size()?,
                d_inner: r.size()?,
                d_conv: r.size()?,
                c: r.float()?,
                bias: r.flag()?,
                conv_bias: r.flag()?,
            }),
            6 => CoreConfig::S7(S7Config {
                d_model: r.size()?,
                d_state: r.size()?,
                j: r.size()?,
            }),
            7 => CoreConfig::Centaurus(CentaurusConfig {
                d_model: r.size()?,
                d_state: r.size()?,
                sub_state_dim: r.size()?,
                mode: r.code(&MODES, "Centaurus mode")?,
            }),
            8 => CoreConfig::S4d(S4dConfig {
                d_model: r.size()?,
                d_state: r.size()?,
                n_ssm: r.size()?,
                channels: r.size()?,
                dt_tied: r.flag()?,
                transforms: read_transforms(&mut r)?,
                discretization: d(&mut r)?,
                output_linear: r.flag()?,
            }),
            9 => CoreConfig::S4(S4Config {
                d_model: r.size()?,
                d_state: r.size()?,
                n_ssm: r.size()?,
                channels: r.size()?,
                rank: r.size()?,
                dt_tied: r.flag()?,
                transforms: read_transforms(&mut r)?,
                output_linear: r.flag()?,
            }),
            other => return Err(ExportError::Blob(format!("unknown layer kind {other}"))),
        };
        if r.0.next().is_some() {
            return Err(ExportError::Blob(format!(
                "{} config words for layer kind {kind}, expected fewer",
                words.len()
            )));
        }
        Ok(config)
    }

    /// The config as a Rust constant expression of `lrnnx_core`'s config type.
    fn rust_expr(&self) -> Result<String> {
        let disc = |d: Discretization| format!("lrnnx_core::Discretization::{d:?}");
        let float = |name: &str, v: f32| {
            if v.is_finite() {
                Ok(format!("{v:?}"))
            } else {
                Err(ExportError::Source(format!("config field `{name}` is {v}")))
            }
        };
        let transforms = |t: S4Transforms| {
            format!(
                "lrnnx_core::S4Transforms {{ dt: lrnnx_core::ParamTransform::{:?}, dt_fast: {}, \
                 real: lrnnx_core::ParamTransform::{:?}, imag: lrnnx_core::ParamTransform::{:?} }}",
                t.dt, t.dt_fast, t.real, t.imag
            )
        };
        let fields: Vec<(&str, String)> = match *self {
            CoreConfig::S5Lti(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
                ("discretization", disc(c.discretization)),
            ],
            CoreConfig::S5Ltv(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
                ("discretization", disc(c.discretization)),
                ("conj_sym", c.conj_sym.to_string()),
                ("step_rescale", float("step_rescale", c.step_rescale)?),
            ],
            CoreConfig::Lru(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
            ],
            CoreConfig::Mamba(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
                ("d_conv", c.d_conv.to_string()),
                ("d_inner", c.d_inner.to_string()),
                ("dt_rank", c.dt_rank.to_string()),
                ("bias", c.bias.to_string()),
                ("conv_bias", c.conv_bias.to_string()),
                ("discretization", disc(c.discretization)),
            ],
            CoreConfig::RgLru(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_inner", c.d_inner.to_string()),
                ("d_conv", c.d_conv.to_string()),
                ("c", float("c", c.c)?),
                ("bias", c.bias.to_string()),
                ("conv_bias", c.conv_bias.to_string()),
            ],
            CoreConfig::S7(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
                ("j", c.j.to_string()),
            ],
            CoreConfig::Centaurus(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
                ("sub_state_dim", c.sub_state_dim.to_string()),
                ("mode", format!("lrnnx_core::CentaurusMode::{:?}", c.mode)),
            ],
            CoreConfig::S4d(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
                ("n_ssm", c.n_ssm.to_string()),
                ("channels", c.channels.to_string()),
                ("dt_tied", c.dt_tied.to_string()),
                ("transforms", transforms(c.transforms)),
                ("discretization", disc(c.discretization)),
                ("output_linear", c.output_linear.to_string()),
            ],
            CoreConfig::S4(c) => vec![
                ("d_model", c.d_model.to_string()),
                ("d_state", c.d_state.to_string()),
                ("n_ssm", c.n_ssm.to_string()),
                ("channels", c.channels.to_string()),
                ("rank", c.rank.to_string()),
                ("dt_tied", c.dt_tied.to_string()),
                ("transforms", transforms(c.transforms)),
                ("output_linear", c.output_linear.to_string()),
            ],
        };
        let mut s = format!("lrnnx_core::{}Config {{\n", self.layer_name());
        for (name, value) in fields {
            s.push_str(&format!("    {name}: {value},\n"));
        }
        s.push('}');
        Ok(s)
    }
}

fn transform_words(w: &mut Words, t: S4Transforms) -> &mut Words {
    w.code(&TRANSFORMS, t.dt)
        .flag(t.dt_fast)
        .code(&TRANSFORMS, t.real)
        .code(&TRANSFORMS, t.imag)
}

fn read_transforms(r: &mut Reader) -> Result<S4Transforms> {
    Ok(S4Transforms {
        dt: r.code(&TRANSFORMS, "transform")?,
        dt_fast: r.flag()?,
        real: r.code(&TRANSFORMS, "transform")?,
        imag: r.code(&TRANSFORMS, "transform")?,
    })
}

/// The core config of lrnnx class `class` constructed with `kwargs` (the importer's rules:
/// [`crate::import`]; call [`build_core`] first to have the arguments fully validated).
pub fn core_config(class: &str, kwargs: &Value) -> Result<CoreConfig> {
    let kwarg = |name: &str, reason: String| ImportError::Kwarg {
        name: name.into(),
        reason,
    };
    let expand = |default: f64| -> Result<usize> {
        let e = f64_arg_or(kwargs, "expand", default)?;
        if !(e.is_finite() && e > 0.0) {
            return Err(kwarg("expand", format!("expected a positive number, got {e}")).into());
        }
        // Python's int(expand * d_model) truncates.
        Ok((e * usize_arg(kwargs, "d_model")? as f64) as usize)
    };
    let transform = |name: &str, default: &str| -> Result<ParamTransform> {
        let v = str_arg_or(kwargs, name, default)?;
        Ok(ParamTransform::from_name(v)
            .ok_or_else(|| kwarg(name, format!("unknown transform `{v}`")))?)
    };
    let rule = |default: &str, allowed: &[&str]| -> Result<Discretization> {
        let v = str_arg_or(kwargs, "discretization", default)?;
        if !allowed.contains(&v) {
            return Err(kwarg("discretization", format!("`{v}` is not one of {allowed:?}")).into());
        }
        Ok(Discretization::from_name(v)
            .ok_or_else(|| kwarg("discretization", format!("unknown `{v}`")))?)
    };
    Ok(match class {
        "lrnnx.models.lti.s5.S5" => CoreConfig::S5Lti(S5LtiConfig {
            d_model: usize_arg(kwargs, "d_model")?,
            d_state: usize_arg(kwargs, "d_state")?,
            // lrnnx's LTI "bilinear" is its inverted rule (see crate::import).
            discretization: match str_arg_or(kwargs, "discretization", "")? {
                "bilinear" => Discretization::LrnnxInvertedBilinear,
                _ => rule("", &["zoh", "dirac", "no_discretization"])?,
            },
        }),
        "lrnnx.models.ltv.s5.S5" => CoreConfig::S5Ltv(S5LtvConfig {
            d_model: usize_arg(kwargs, "d_model")?,
            d_state: usize_arg(kwargs, "d_state")?,
            discretization: rule("zoh", &["zoh", "bilinear", "dirac"])?,
            conj_sym: bool_arg_or(kwargs, "conj_sym", false)?,
            step_rescale: f64_arg_or(kwargs, "step_rescale", 1.0)? as f32,
        }),
        "lrnnx.models.lti.lru.LRU" | "LRU" => CoreConfig::Lru(LruConfig {
            d_model: usize_arg(kwargs, "d_model")?,
            d_state: usize_arg(kwargs, "d_state")?,
        }),
        "lrnnx.models.ltv.mamba.Mamba" | "Mamba" => {
            let d_model = usize_arg(kwargs, "d_model")?;
            let dt_rank = match kwargs.get("dt_rank") {
                None | Some(Value::Null) => d_model.div_ceil(16),
                Some(Value::String(s)) if s == "auto" => d_model.div_ceil(16),
                Some(_) => usize_arg(kwargs, "dt_rank")?,
            };
            CoreConfig::Mamba(MambaConfig {
                d_model,
                d_state: usize_arg_or(kwargs, "d_state", 16)?,
                d_conv: usize_arg_or(kwargs, "d_conv", 4)?,
                d_inner: expand(2.0)?,
                dt_rank,
                bias: bool_arg_or(kwargs, "bias", false)?,
                conv_bias: bool_arg_or(kwargs, "conv_bias", true)?,
                discretization: rule("mamba", &["mamba", "zoh", "bilinear", "dirac"])?,
            })
        }
        "lrnnx.models.ltv.rglru.RGLRU" | "RGLRU" => CoreConfig::RgLru(RgLruConfig {
            d_model: usize_arg(kwargs, "d_model")?,
            d_inner: expand(1.0)?,
            d_conv: usize_arg_or(kwargs, "d_conv", 4)?,
            c: f64_arg_or(kwargs, "c", 8.0)? as f32,
            bias: bool_arg_or(kwargs, "bias", false)?,
            conv_bias: bool_arg_or(kwargs, "conv_bias", true)?,
        }),
        "lrnnx.models.ltv.s7.S7" | "S7" => CoreConfig::S7(S7Config {
            d_model: usize_arg(kwargs, "d_model")?,
            d_state: usize_arg(kwargs, "d_state")?,
            j: usize_arg_or(kwargs, "J", 1)?,
        }),
        "lrnnx.models.lti.s4.S4" | "S4" | "lrnnx.models.lti.s4d.S4D" | "S4D" => {
            let d_model = usize_arg(kwargs, "d_model")?;
            let transforms = S4Transforms {
                dt: transform("dt_transform", "exp")?,
                dt_fast: bool_arg_or(kwargs, "dt_fast", false)?,
                real: transform("real_transform", "exp")?,
                imag: transform("imag_transform", "none")?,
            };
            // `final_act` (default "glu") or its deprecated alias `postact`: any non-None value
            // builds the output linear.
            let set = |k: &str| kwargs.get(k).is_some_and(|v| !v.is_null());
            let output_linear =
                set("postact") || !matches!(kwargs.get("final_act"), Some(Value::Null));
            let (d_state, n_ssm) = (
                usize_arg_or(kwargs, "d_state", 64)?,
                usize_arg_or(kwargs, "n_ssm", d_model)?,
            );
            let channels = usize_arg_or(kwargs, "channels", 1)?;
            let dt_tied = bool_arg_or(kwargs, "dt_tie", true)?;
            if class.ends_with("S4D") {
                CoreConfig::S4d(S4dConfig {
                    d_model,
                    d_state,
                    n_ssm,
                    channels,
                    dt_tied,
                    transforms,
                    discretization: match str_arg_or(kwargs, "disc", "zoh")? {
                        "bilinear" => Discretization::Bilinear,
                        "zoh" => Discretization::Zoh,
                        other => return Err(kwarg("disc", format!("unknown `{other}`")).into()),
                    },
                    output_linear,
                })
            } else {
                CoreConfig::S4(S4Config {
                    d_model,
                    d_state,
                    n_ssm,
                    channels,
                    rank: usize_arg_or(kwargs, "rank", 1)?,
                    dt_tied,
                    transforms,
                    output_linear,
                })
            }
        }
        _ => match CentaurusMode::from_lrnnx_class(class) {
            Some(mode) => CoreConfig::Centaurus(CentaurusConfig {
                d_model: usize_arg(kwargs, "d_model")?,
                d_state: usize_arg(kwargs, "d_state")?,
                sub_state_dim: usize_arg(kwargs, "sub_state_dim")?,
                mode,
            }),
            None => return Err(ImportError::UnsupportedClass(class.to_owned()).into()),
        },
    })
}

/// Why a bidirectional layer with arguments `kwargs` cannot be exported.
pub(crate) fn not_causal(kwargs: &Value) -> String {
    let inner = kwargs
        .get("layer")
        .and_then(|l| l.get("class"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!(
        "a bidirectional layer ({inner}) cannot be exported to the core: it is not causal (its \
         output at time t depends on later inputs), and the core steps one sample at a time"
    )
}

/// Trained parameters as an lrnnx-named [`ParamSource`] (f32 values and shapes).
#[derive(Debug, Clone, Default)]
pub struct TrainedParams {
    tensors: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TrainedParams {
    /// Copies every parameter out of its candle variable, as f32.
    pub fn new(params: &Params) -> Result<Self> {
        let mut tensors = std::collections::BTreeMap::new();
        for (name, var) in params.vars() {
            let data = var
                .as_tensor()
                .to_dtype(lrnnx_train::candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| ExportError::Param {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            tensors.insert(name.clone(), (var.dims().to_vec(), data));
        }
        Ok(TrainedParams { tensors })
    }
}

impl ParamSource for TrainedParams {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensors
            .get(name)
            .map(|(shape, data)| TensorView { data, shape })
    }
}

/// Exports a trained layer, given by its lrnnx class, constructor arguments and parameters
/// (e.g. from an [`lrnnx_train::checkpoint::Checkpoint`], or `layer.params()`), to the core
/// layer, discretized once.
/// A bidirectional layer ([`lrnnx_train::bidirectional`]) is refused with
/// [`ExportError::NotCausal`].
pub fn export(class: &str, kwargs: &Value, params: &Params) -> Result<CoreLayer<Vec<f32>>> {
    if class == lrnnx_train::bidirectional::CLASS {
        return Err(ExportError::NotCausal(not_causal(kwargs)));
    }
    let src = TrainedParams::new(params)?;
    // The importer validates arguments, shapes and values exactly as for an lrnnx checkpoint.
    build_core(class, kwargs, &src)?;
    let config = core_config(class, kwargs)?;
    let w = buffer(config.weights_len())?;
    Ok(match config {
        CoreConfig::S5Lti(c) => CoreLayer::S5Lti(S5Lti::from_lrnnx(c, &src, w)?),
        CoreConfig::S5Ltv(c) => CoreLayer::S5Ltv(S5Ltv::from_lrnnx(c, &src, w)?),
        CoreConfig::Lru(c) => CoreLayer::Lru(Lru::from_lrnnx(c, &src, w)?),
        CoreConfig::Mamba(c) => CoreLayer::Mamba(Mamba::from_lrnnx(c, &src, w)?),
        CoreConfig::RgLru(c) => CoreLayer::RgLru(RgLru::from_lrnnx(c, &src, w)?),
        CoreConfig::S7(c) => CoreLayer::S7(S7::from_lrnnx(c, &src, w)?),
        CoreConfig::Centaurus(c) => CoreLayer::Centaurus(Centaurus::from_lrnnx(c, &src, w)?),
        CoreConfig::S4d(c) => CoreLayer::S4d(S4d::from_lrnnx(c, &src, w)?),
        CoreConfig::S4(c) => {
            let mut scratch = zeroed::<f64>(c.construction_scratch_len())?;
            CoreLayer::S4(S4::from_lrnnx(c, &src, w, &mut scratch)?)
        }
    })
}

/// The layer as a blob (layout in the module doc).
pub fn to_blob<W: AsRef<[f32]>>(layer: &CoreLayer<W>) -> Result<Vec<u8>> {
    let config = layer.config();
    let words = config.words()?;
    let weights = layer.weights();
    let count = |n: usize| {
        u32::try_from(n).map_err(|_| ExportError::Blob(format!("{n} entries exceed a u32")))
    };
    let mut out = Vec::with_capacity(BLOB_HEADER + 4 * (words.len() + weights.len()));
    out.extend_from_slice(&BLOB_MAGIC);
    for w in [
        BLOB_VERSION,
        config.kind(),
        count(words.len())?,
        count(weights.len())?,
    ]
    .iter()
    .chain(&words)
    {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for v in weights {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// A parsed blob: the config, and the weights' bytes (f32 little-endian, at a 4-aligned offset
/// of the blob).
#[derive(Debug, Clone, Copy)]
pub struct BlobView<'b> {
    /// The layer configuration.
    pub config: CoreConfig,
    /// The weights' bytes.
    pub weight_bytes: &'b [u8],
}

impl BlobView<'_> {
    /// The weights, decoded.
    pub fn weights(&self) -> Vec<f32> {
        self.weight_bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// Parses a blob's header and config, checking its length; the weights are not copied. (A
/// caller with the blob at a 4-aligned address on a little-endian target can view
/// `weight_bytes` as `&[f32]` and pass it to [`CoreLayer::from_weights`].)
pub fn parse_blob(blob: &[u8]) -> Result<BlobView<'_>> {
    let bad = |m: String| ExportError::Blob(m);
    if blob.len() < BLOB_HEADER {
        return Err(bad(format!(
            "{} bytes, shorter than the {BLOB_HEADER}-byte header",
            blob.len()
        )));
    }
    if blob[..8] != BLOB_MAGIC {
        return Err(bad("wrong magic (not an lrnnx layer blob)".into()));
    }
    let word = |i: usize| {
        let at = 8 + 4 * i;
        u32::from_le_bytes([blob[at], blob[at + 1], blob[at + 2], blob[at + 3]])
    };
    let (version, kind, n_config, n_weights) = (word(0), word(1), word(2), word(3));
    if version != BLOB_VERSION {
        return Err(bad(format!(
            "version {version}; this reader knows {BLOB_VERSION}"
        )));
    }
    let expected = (n_config as u64 + n_weights as u64) * 4 + BLOB_HEADER as u64;
    if blob.len() as u64 != expected {
        return Err(bad(format!(
            "{} bytes, but the header describes {expected} ({n_config} config words, \
             {n_weights} weights): truncated or corrupt",
            blob.len()
        )));
    }
    let start = BLOB_HEADER + 4 * n_config as usize;
    let words: Vec<u32> = blob[BLOB_HEADER..start]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let config = CoreConfig::from_words(kind, &words)?;
    if config.weights_len() != n_weights as usize {
        return Err(bad(format!(
            "{n_weights} weights, but this {} needs {}",
            config.layer_name(),
            config.weights_len()
        )));
    }
    Ok(BlobView {
        config,
        weight_bytes: &blob[start..],
    })
}

/// Reads a blob back into a core layer that owns its weights (checked by the core's
/// `from_weights`: length, finiteness, layout invariants).
pub fn read_blob(blob: &[u8]) -> Result<CoreLayer<Vec<f32>>> {
    let view = parse_blob(blob)?;
    Ok(CoreLayer::from_weights(view.config, view.weights())?)
}

/// The layer as Rust source for a `no_std` crate depending on `lrnnx_core`:
/// `pub const <NAME>_CONFIG` and `pub static <NAME>_WEIGHTS: [f32; N]` (every weight printed
/// in the shortest form that reads back to the same bits). `name` must be an upper-case
/// identifier (`[A-Z_][A-Z0-9_]*`).
pub fn to_rust_source<W: AsRef<[f32]>>(layer: &CoreLayer<W>, name: &str) -> Result<String> {
    let ok_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !ok_name {
        return Err(ExportError::Source(format!(
            "`{name}` is not an upper-case Rust identifier"
        )));
    }
    let config = layer.config();
    let weights = layer.weights();
    if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
        return Err(ExportError::Source(format!("weight {i} is {}", weights[i])));
    }
    let ty = config.layer_name();
    let mut s = format!(
        "// Generated by lrnnx::export::to_rust_source. Do not edit.\n\
         // The layer: lrnnx_core::{ty}::from_weights({name}_CONFIG, &{name}_WEIGHTS[..])\n\n\
         /// Configuration of the exported layer `{name}`.\n\
         pub const {name}_CONFIG: lrnnx_core::{ty}Config = {};\n\n\
         /// Weights of `{name}` in lrnnx-core's stepping layout (discretized).\n\
         #[allow(clippy::approx_constant, clippy::excessive_precision)]\n\
         pub static {name}_WEIGHTS: [f32; {}] = [",
        config.rust_expr()?,
        weights.len()
    );
    for (i, v) in weights.iter().enumerate() {
        s.push_str(if i % 8 == 0 { "\n    " } else { " " });
        s.push_str(&format!("{v:?},"));
    }
    s.push_str("\n];\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::Case;
    use lrnnx_core::{run_event_sequence, run_sequence};
    use lrnnx_train::candle_core::{Device, Tensor, Var};

    fn golden(case: &str) -> Case {
        Case::load(format!(
            "{}/tests/data/lrnnx-golden/{case}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Steps `layer` over `x` (B, L, H), one sequence at a time (event steps with `taus`).
    fn step_all(
        layer: &CoreLayer<impl AsRef<[f32]>>,
        x: &[f32],
        taus: Option<&[f32]>,
        b: usize,
    ) -> Vec<f32> {
        let l = x.len() / b / layer.as_layer().d_input();
        let (hi, ho) = (layer.as_layer().d_input(), layer.as_layer().d_output());
        let mut y = vec![0.0; b * l * ho];
        for r in 0..b {
            let mut state = vec![0.0; layer.as_layer().state_len()];
            let (xs, ys) = (
                &x[r * l * hi..(r + 1) * l * hi],
                &mut y[r * l * ho..(r + 1) * l * ho],
            );
            match taus {
                Some(t) => run_event_sequence(
                    layer.as_event_layer().unwrap(),
                    &mut state,
                    xs,
                    &t[r * l..(r + 1) * l],
                    ys,
                )
                .unwrap(),
                None => run_sequence(layer.as_layer(), &mut state, xs, ys).unwrap(),
            }
        }
        y
    }

    /// Reads `[f32; N] = [ ... ];` back out of generated source.
    fn reread_weights(src: &str, name: &str) -> Vec<f32> {
        let head = format!("pub static {name}_WEIGHTS: [f32; ");
        let at = src.find(&head).unwrap() + head.len();
        let (n, rest) = src[at..].split_once("] = [").unwrap();
        let body = &rest[..rest.find("];").unwrap()];
        let v: Vec<f32> = body
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<f32>().unwrap())
            .collect();
        assert_eq!(v.len(), n.parse::<usize>().unwrap());
        v
    }

    const CASES: [&str; 15] = [
        "s5_lti_zoh",
        "s5_lti_bilinear",
        "s5_ltv_zoh_event",
        "s5_ltv_zoh_conjsym",
        "lru",
        "s4d_zoh",
        "s4d_bilinear",
        "centaurus_neck",
        "centaurus_pointwise",
        "centaurus_dws",
        "centaurus_full",
        "mamba_zoh_event",
        "mamba_mamba",
        "rglru",
        "s7",
    ];

    /// Train a few SGD steps on a random regression target, export, and check the core's
    /// stepping against the training crate's parallel forward; the blob and the Rust source
    /// carry the exact same layer; the export equals the importer's layer bit for bit.
    #[test]
    fn trained_layers_export_to_the_same_function() {
        let (b, l) = (2usize, 24usize);
        for name in CASES {
            let case = golden(name);
            let (class, kwargs) = (case.class(), case.ctor_kwargs());
            let mut params = Params::new();
            for (key, t) in &case.file.tensors {
                let Some(k) = key.strip_prefix("param.") else {
                    continue;
                };
                if k.starts_with("layer.kernel.") {
                    continue;
                }
                let t = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &Device::Cpu).unwrap();
                params.insert(k, &t).unwrap();
            }
            let layer = lrnnx_train::build(class, kwargs, params).unwrap();
            let h = case.tensor("input.x").unwrap().shape[2];
            let x = rand_vec(b * l * h, 7);
            let xt = Tensor::from_vec(x.clone(), (b, l, h), &Device::Cpu).unwrap();
            let taus: Option<Vec<f32>> = case
                .event_mode()
                .then(|| rand_vec(b * l, 9).iter().map(|v| 1.0 + 1.5 * v).collect());
            let tt = taus
                .as_ref()
                .map(|t| Tensor::from_vec(t.clone(), (b, l), &Device::Cpu).unwrap());
            let target = Tensor::from_vec(rand_vec(b * l * h, 8), (b, l, h), &Device::Cpu).unwrap();
            let loss = |layer: &dyn lrnnx_train::TrainLayer| {
                let d = (layer.forward(&xt, tt.as_ref()).unwrap() - &target).unwrap();
                d.sqr().unwrap().mean_all().unwrap()
            };
            let before: Vec<Vec<f32>> = layer
                .params()
                .vars()
                .values()
                .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            let l0 = loss(layer.as_ref()).to_scalar::<f32>().unwrap();
            let lr = 5e-2;
            for _ in 0..5 {
                let grads = loss(layer.as_ref()).backward().unwrap();
                for var in layer.params().vars().values() {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        let v: &Var = var;
                        v.set(&(v.as_tensor() - (g * lr).unwrap()).unwrap())
                            .unwrap();
                    }
                }
            }
            let l1 = loss(layer.as_ref()).to_scalar::<f32>().unwrap();
            assert!(l1 < l0, "{name}: loss {l0} -> {l1}");
            let after: Vec<Vec<f32>> = layer
                .params()
                .vars()
                .values()
                .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            assert_ne!(before, after, "{name}: SGD changed nothing");

            let core = export(class, kwargs, layer.params()).unwrap();
            // Core stepping vs the training crate's parallel forward.
            let want: Vec<f32> = layer
                .forward(&xt, tt.as_ref())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = step_all(&core, &x, taus.as_deref(), b);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, c)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - c).abs() <= 1e-5 * scale,
                    "{name}[{i}]: step {a} vs forward {c} (max {scale})"
                );
            }
            // The importer builds the same layer from the same trained parameters.
            let src = TrainedParams::new(layer.params()).unwrap();
            let imported = build_core(class, kwargs, &src).unwrap();
            let mut y_imp = vec![0.0; got.len()];
            let (hi, ho) = (h, core.as_layer().d_output());
            for r in 0..b {
                let mut s = vec![0.0; imported.as_layer().state_len()];
                let (xs, ys) = (
                    &x[r * l * hi..(r + 1) * l * hi],
                    &mut y_imp[r * l * ho..(r + 1) * l * ho],
                );
                match &taus {
                    Some(t) => run_event_sequence(
                        imported.as_event_layer().unwrap(),
                        &mut s,
                        xs,
                        &t[r * l..(r + 1) * l],
                        ys,
                    )
                    .unwrap(),
                    None => run_sequence(imported.as_layer(), &mut s, xs, ys).unwrap(),
                }
            }
            assert!(
                got.iter()
                    .zip(&y_imp)
                    .all(|(a, c)| a.to_bits() == c.to_bits()),
                "{name}: export differs from import"
            );
            // Blob round trip: same config, same weight bits, same outputs.
            let blob = to_blob(&core).unwrap();
            let back = read_blob(&blob).unwrap();
            assert_eq!(back.config(), core.config(), "{name}");
            assert!(back
                .weights()
                .iter()
                .zip(core.weights())
                .all(|(a, c)| a.to_bits() == c.to_bits()));
            assert_eq!(back.weights().len(), core.weights().len());
            let y_blob = step_all(&back, &x, taus.as_deref(), b);
            assert!(
                y_blob
                    .iter()
                    .zip(&got)
                    .all(|(a, c)| a.to_bits() == c.to_bits()),
                "{name}"
            );
            // Zero-copy view over decoded weights behaves the same.
            let view = parse_blob(&blob).unwrap();
            let ws = view.weights();
            let borrowed = CoreLayer::from_weights(view.config, &ws[..]).unwrap();
            assert_eq!(step_all(&borrowed, &x, taus.as_deref(), b), got);
            // Rust source: structure, and the numbers read back to the same bits.
            let src = to_rust_source(&core, "LAYER").unwrap();
            let ty = core.config().layer_name();
            assert!(
                src.contains(&format!(
                    "pub const LAYER_CONFIG: lrnnx_core::{ty}Config = lrnnx_core::{ty}Config {{\n"
                )),
                "{src}"
            );
            assert!(src.contains(&format!(
                "pub static LAYER_WEIGHTS: [f32; {}] = [",
                core.weights().len()
            )));
            assert_eq!(src.matches('{').count(), src.matches('}').count());
            let reread = reread_weights(&src, "LAYER");
            assert!(
                reread
                    .iter()
                    .zip(core.weights())
                    .all(|(a, c)| a.to_bits() == c.to_bits()),
                "{name}"
            );
        }
    }

    #[test]
    fn config_source_lists_every_field() {
        let case = golden("s4d_zoh");
        assert!(export(case.class(), case.ctor_kwargs(), &Params::new()).is_err());
        let c = core_config(case.class(), case.ctor_kwargs()).unwrap();
        let e = c.rust_expr().unwrap();
        for f in ["d_model: 8,", "d_state: 8,", "n_ssm: 8,", "channels: 1,", "dt_tied: true,",
            "transforms: lrnnx_core::S4Transforms { dt: lrnnx_core::ParamTransform::Exp, dt_fast: false, real: lrnnx_core::ParamTransform::Exp, imag: lrnnx_core::ParamTransform::None },",
            "discretization: lrnnx_core::Discretization::Zoh,", "output_linear: true,"] {
            assert!(e.contains(f), "{f} not in {e}");
        }
        let c = CoreConfig::S5Ltv(S5LtvConfig {
            d_model: 2,
            d_state: 3,
            discretization: Discretization::Dirac,
            conj_sym: true,
            step_rescale: 0.1,
        });
        assert!(c.rust_expr().unwrap().contains("step_rescale: 0.1,"));
        assert_eq!(
            CoreConfig::from_words(c.kind(), &c.words().unwrap()).unwrap(),
            c
        );
    }

    #[test]
    fn bad_blobs_and_names_are_errors() {
        let case = golden("lru");
        let mut params = Params::new();
        for (key, t) in &case.file.tensors {
            if let Some(k) = key.strip_prefix("param.") {
                params
                    .insert(
                        k,
                        &Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &Device::Cpu)
                            .unwrap(),
                    )
                    .unwrap();
            }
        }
        let core = export(case.class(), case.ctor_kwargs(), &params).unwrap();
        let blob = to_blob(&core).unwrap();
        assert!(read_blob(&blob).is_ok());
        for cut in [0, 3, 23, 24, blob.len() - 1] {
            assert!(read_blob(&blob[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = blob.clone();
        longer.extend_from_slice(&[0; 4]);
        assert!(read_blob(&longer).is_err());
        let corrupt = |at: usize, v: u32| {
            let mut b = blob.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            read_blob(&b).err().map(|e| e.to_string())
        };
        assert!(corrupt(0, 0).unwrap().contains("magic"));
        assert!(corrupt(8, 2).unwrap().contains("version"));
        assert!(corrupt(12, 99).unwrap().contains("kind"));
        assert!(corrupt(12, 1).is_some()); // LRU words read as S5: too few words
        assert!(corrupt(16, u32::MAX).is_some());
        assert!(corrupt(20, u32::MAX).is_some());
        assert!(corrupt(24, 9).unwrap().contains("weights")); // d_model 9: wrong weight count
        let last = blob.len() - 4;
        assert!(corrupt(last, f32::NAN.to_bits()).is_some()); // the core refuses NaN
        for bad in ["", "layer", "9LAYER", "LA YER", "LAYER-1"] {
            assert!(to_rust_source(&core, bad).is_err(), "{bad}");
        }
        assert!(to_rust_source(&core, "_L2").is_ok());
        // Unknown class, bad kwargs: errors naming them.
        let e = export("Nope", case.ctor_kwargs(), &params)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("Nope"), "{e}");
        let e = export(case.class(), &serde_json::json!({"d_model": 8}), &params)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("d_state"), "{e}");
    }

    /// The generated source compiles in a `no_std` crate and its items fit the core's
    /// `from_weights` (runs `cargo check` on a temporary crate).
    #[test]
    fn generated_source_compiles_in_a_no_std_crate() {
        let dir = std::env::temp_dir().join(format!("lrnnx-export-nostd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let core_path = format!("{}/lrnnx-core", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                "[package]\nname = \"fw\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
                 [dependencies]\nlrnnx-core = {{ path = \"{core_path}\" }}\n[workspace]\n"
            ),
        )
        .unwrap();
        let mut lib =
            String::from("//! Generated layers.\n#![no_std]\n#![deny(missing_docs, warnings)]\n");
        let mut checks = Vec::new();
        for (i, name) in CASES.iter().enumerate() {
            let case = golden(name);
            let mut params = Params::new();
            for (key, t) in &case.file.tensors {
                if let Some(k) = key.strip_prefix("param.") {
                    if !k.starts_with("layer.kernel.") {
                        let t = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &Device::Cpu);
                        params.insert(k, &t.unwrap()).unwrap();
                    }
                }
            }
            let core = export(case.class(), case.ctor_kwargs(), &params).unwrap();
            let n = format!("L{i}");
            lib.push_str(&to_rust_source(&core, &n).unwrap());
            checks.push(format!(
                "lrnnx_core::{}::from_weights({n}_CONFIG, &{n}_WEIGHTS[..]).is_ok()",
                core.config().layer_name()
            ));
        }
        lib.push_str(&format!(
            "/// Whether every layer builds.\npub fn all_ok() -> bool {{\n    {}\n}}\n",
            checks.join("\n        && ")
        ));
        std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["check", "--offline", "--quiet"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "generated crate in {} does not compile",
            dir.display()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
