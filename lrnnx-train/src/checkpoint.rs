//! Checkpoints: a layer's [`Params`] in a safetensors file under lrnnx's state-dict names, with
//! the lrnnx class and constructor arguments in the file's metadata, so that a checkpoint
//! rebuilds its layer by itself ([`load`]); and lrnnx (PyTorch) state dicts imported as they are
//! ([`import_lrnnx`]).
//!
//! File layout (plain safetensors, readable by PyTorch's `safetensors.torch.load_file`):
//!
//! ```text
//! tensors        every parameter under its lrnnx name and lrnnx's shape, finite, all F32 (all
//!                F64 for a double-precision layer, which so round-trips exactly)
//! __metadata__   "format":       "lrnnx-train-checkpoint-v1"
//!                "lrnnx.class":  lrnnx class, e.g. "lrnnx.models.lti.s5.S5"
//!                "lrnnx.kwargs": constructor arguments as JSON, e.g. {"d_model": 8, ...}
//! ```
//!
//! Reading is strict, and never panics: a file that is not safetensors, a truncated file, a
//! tensor whose dtype is not F32 or F64 (or F32 and F64 mixed), a value that is not finite, a
//! missing or mis-shaped tensor, and a tensor the layer does not have (an extra key) are all
//! refused with a [`CheckpointError`] that names the tensor.
//! Keys lrnnx's state dicts carry that the layer legitimately does not read are accepted:
//! the `layer.kernel.X` aliases of S4/S4D (the same storage as the top-level `X`; skipped),
//! S4's `layer.kernel.l_kernel` buffer (an integer in lrnnx; read by S4, kept as F32) and
//! Mamba's `dtA_proj.weight` (a parameter lrnnx never uses; kept, so a saved checkpoint is still
//! a complete lrnnx state dict, and checked to have the shape lrnnx gives it, that of
//! `dt_proj.weight`).
//!
//! Which keys a layer reads is found by building it: a key is extra when the layer still builds
//! without it. So the check follows every layer's constructor (including optional tensors such
//! as biases) without a second list of names to keep in sync.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::layer::{build, BuildError, TrainLayer};
use crate::params::Params;

/// The `format` metadata value of a checkpoint written by this module.
pub const FORMAT: &str = "lrnnx-train-checkpoint-v1";
/// Metadata key of the lrnnx class.
pub const META_CLASS: &str = "lrnnx.class";
/// Metadata key of the constructor arguments (JSON).
pub const META_KWARGS: &str = "lrnnx.kwargs";

/// Largest safetensors header accepted (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Why a checkpoint could not be written or read.
#[derive(Debug)]
pub enum CheckpointError {
    /// The file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a safetensors file (too short, header cut off, header not JSON, ...).
    Format {
        /// The file (empty for bytes in memory).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The metadata lacks the class or constructor arguments, or they are malformed.
    Metadata {
        /// The file (empty for bytes in memory).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One tensor is unusable: wrong dtype, data cut off by a truncated file, a size that does
    /// not match its shape, a malformed header entry.
    Tensor {
        /// The tensor's key.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the layer does not have.
    Extra {
        /// The tensor's key.
        name: String,
        /// The lrnnx class.
        class: String,
    },
    /// The layer could not be built: unknown class, bad constructor argument, or a missing or
    /// mis-shaped parameter (the message names the tensor).
    Build(BuildError),
    /// A tensor operation failed while converting parameters.
    Candle(candle_core::Error),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CheckpointError::Format { path, reason } => {
                write!(f, "{}: not a safetensors file: {reason}", path.display())
            }
            CheckpointError::Metadata { path, reason } => {
                write!(f, "{}: checkpoint metadata: {reason}", path.display())
            }
            CheckpointError::Tensor { name, reason } => write!(f, "tensor `{name}`: {reason}"),
            CheckpointError::Extra { name, class } => write!(
                f,
                "unexpected tensor `{name}`: the `{class}` layer with these constructor \
                 arguments has no such parameter"
            ),
            CheckpointError::Build(e) => write!(f, "{e}"),
            CheckpointError::Candle(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckpointError {}

impl From<BuildError> for CheckpointError {
    fn from(e: BuildError) -> Self {
        CheckpointError::Build(e)
    }
}

impl From<candle_core::Error> for CheckpointError {
    fn from(e: candle_core::Error) -> Self {
        CheckpointError::Candle(e)
    }
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// A layer's description: lrnnx class, constructor arguments and parameters, checked to build
/// that layer with exactly these parameters (no missing, mis-shaped or extra tensor).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    class: String,
    kwargs: Value,
    params: Params,
}

impl Checkpoint {
    /// Checks that `params` are exactly the parameters of `class` built with `kwargs` (the
    /// accepted lrnnx-only keys of the module doc aside) and keeps the three together.
    pub fn new(class: &str, kwargs: &Value, params: Params) -> Result<Self> {
        check_exact(class, kwargs, &params)?;
        Ok(Checkpoint {
            class: class.to_owned(),
            kwargs: kwargs.clone(),
            params,
        })
    }

    /// Reads a checkpoint written by [`Checkpoint::save`] (or [`save`]).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes).map_err(|e| with_path(e, path))
    }

    /// Parses checkpoint bytes (see [`Checkpoint::read`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let file = RawFile::parse(bytes)?;
        let meta = |reason: String| CheckpointError::Metadata {
            path: PathBuf::new(),
            reason,
        };
        match file.metadata.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            other => {
                return Err(meta(format!(
                    "`format` is {other:?}, expected {FORMAT:?} (for an lrnnx state dict use \
                     import_lrnnx with its class and constructor arguments)"
                )))
            }
        }
        let class = file
            .metadata
            .get(META_CLASS)
            .ok_or_else(|| meta(format!("no `{META_CLASS}` entry")))?;
        let kwargs: Value = serde_json::from_str(
            file.metadata
                .get(META_KWARGS)
                .ok_or_else(|| meta(format!("no `{META_KWARGS}` entry")))?,
        )
        .map_err(|e| meta(format!("`{META_KWARGS}` is not JSON: {e}")))?;
        let params = file.params("", class)?;
        Self::new(class, &kwargs, params)
    }

    /// Imports an lrnnx (PyTorch) state dict saved as safetensors, as it is: the tensors under
    /// `prefix` (e.g. `"param."` in the golden files, `""` for a plain state dict) are the
    /// parameters of `class` constructed with `kwargs`; other keys of the file are ignored.
    pub fn import_lrnnx(
        path: impl AsRef<Path>,
        prefix: &str,
        class: &str,
        kwargs: &Value,
    ) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        let file = RawFile::parse(&bytes).map_err(|e| with_path(e, path))?;
        Self::new(class, kwargs, file.params(prefix, class)?)
    }

    /// The lrnnx class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The constructor arguments.
    pub fn kwargs(&self) -> &Value {
        &self.kwargs
    }

    /// The parameters (shared with every layer built from this checkpoint).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Builds the layer (its parameters are this checkpoint's variables, not copies).
    pub fn build(&self) -> Result<Box<dyn TrainLayer>> {
        Ok(build(&self.class, &self.kwargs, self.params.clone())?)
    }

    /// The checkpoint as safetensors bytes: every parameter as F64 when all of them are f64
    /// (a double-precision layer round-trips exactly), else as F32 (f32, f16 and bf16 values are
    /// all exact in F32). Refuses parameters that mix f32 and f64, and a value that is not
    /// finite (which [`Checkpoint::read`] would refuse), naming the tensor; nothing is written
    /// then.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let vars = self.params.vars();
        let dtype = match vars.values().find(|v| v.dtype() == DType::F64) {
            None => DType::F32,
            Some(_) => {
                if let Some((name, v)) = vars.iter().find(|(_, v)| v.dtype() != DType::F64) {
                    return Err(CheckpointError::Tensor {
                        name: name.clone(),
                        reason: format!(
                            "has dtype {:?} while other parameters are F64 (a checkpoint's \
                             parameters share one precision)",
                            v.dtype()
                        ),
                    });
                }
                DType::F64
            }
        };
        let mut data = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let t = var.as_tensor().to_dtype(dtype)?.flatten_all()?;
            let not_finite = |i: usize, v: f64| CheckpointError::Tensor {
                name: name.clone(),
                reason: format!("value {i} is {v} (not finite); a checkpoint holds finite values"),
            };
            let bytes: Vec<u8> = if dtype == DType::F64 {
                let v = t.to_vec1::<f64>()?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(not_finite(i, v[i]));
                }
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                let v = t.to_vec1::<f32>()?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(not_finite(i, v[i] as f64));
                }
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            data.push((name.clone(), var.dims().to_vec(), bytes));
        }
        let st_dtype = if dtype == DType::F64 {
            safetensors::Dtype::F64
        } else {
            safetensors::Dtype::F32
        };
        let views = data
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| CheckpointError::Tensor {
                        name: name.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([
            ("format".to_owned(), FORMAT.to_owned()),
            (META_CLASS.to_owned(), self.class.clone()),
            (META_KWARGS.to_owned(), self.kwargs.to_string()),
        ]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| CheckpointError::Format {
            path: PathBuf::new(),
            reason: e.to_string(),
        })
    }

    /// Writes the checkpoint to `path` (through a temporary file renamed into place, so an
    /// interrupted save never leaves a truncated checkpoint under `path`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes().map_err(|e| with_path(e, path))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let io = |source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        };
        // written in full and flushed to the disk before it replaces `path`; on any error the
        // partial file is removed and `path` is untouched
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

/// Saves `layer`'s parameters with its lrnnx class and constructor arguments (the ones it was
/// built with) to `path`. Refuses parameters that would not rebuild the layer.
pub fn save(
    path: impl AsRef<Path>,
    class: &str,
    kwargs: &Value,
    layer: &dyn TrainLayer,
) -> Result<()> {
    Checkpoint::new(class, kwargs, layer.params().clone())?.save(path)
}

/// Loads a checkpoint written by [`save`] and rebuilds its layer.
pub fn load(path: impl AsRef<Path>) -> Result<Box<dyn TrainLayer>> {
    Checkpoint::read(path)?.build()
}

/// Builds the layer of `class` (constructed with `kwargs`) from an lrnnx state dict stored as
/// safetensors under `prefix` (see [`Checkpoint::import_lrnnx`]).
pub fn import_lrnnx(
    path: impl AsRef<Path>,
    prefix: &str,
    class: &str,
    kwargs: &Value,
) -> Result<Box<dyn TrainLayer>> {
    Checkpoint::import_lrnnx(path, prefix, class, kwargs)?.build()
}

/// Whether `class` is S4 or S4D, whose lrnnx state dicts repeat parameters under
/// `layer.kernel.`.
fn is_s4(class: &str) -> bool {
    matches!(
        class,
        "lrnnx.models.lti.s4.S4" | "S4" | "lrnnx.models.lti.s4d.S4D" | "S4D"
    )
}

/// Whether `key` is an lrnnx key that the layer of `class` does not read but that is kept
/// (Mamba's `dtA_proj.weight`; the same key of a bidirectional layer's directions, under
/// `fwd.` / `bwd.`). S4 reads its `layer.kernel.l_kernel`; S4D has none.
fn kept_unused(class: &str, kwargs: &Value, key: &str) -> bool {
    if class == crate::bidirectional::CLASS {
        let inner = kwargs.get("layer");
        let inner_class = inner.and_then(|l| l.get("class")).and_then(Value::as_str);
        let inner_kwargs = inner.and_then(|l| l.get("kwargs")).unwrap_or(&Value::Null);
        let shared = kwargs.get("shared").and_then(Value::as_bool) == Some(true);
        let name = key.strip_prefix(crate::bidirectional::FWD).or_else(|| {
            key.strip_prefix(crate::bidirectional::BWD)
                .filter(|_| !shared)
        });
        return match (inner_class, name) {
            (Some(c), Some(name)) => kept_unused(c, inner_kwargs, name),
            _ => false,
        };
    }
    matches!(class, "lrnnx.models.ltv.mamba.Mamba" | "Mamba") && key == DTA_WEIGHT
}

/// S4's kernel-length buffer (an integer in lrnnx's state dict).
const L_KERNEL: &str = "layer.kernel.l_kernel";

/// The error for S4's `layer.kernel.X` when it is not the same tensor as the top-level `X`
/// (lrnnx stores S4's kernel parameters twice, as one storage).
fn alias_differs(name: String) -> CheckpointError {
    CheckpointError::Tensor {
        name,
        reason: "differs from the tensor it aliases (lrnnx stores S4's kernel parameters \
                 twice, as one storage)"
            .into(),
    }
}

/// Checks a language model's mixer parameters as [`Checkpoint::new`] checks a layer's: `params`
/// must be exactly the parameters of `class` built with `kwargs`. S4/S4D's `layer.kernel.X`
/// aliases of a top-level `X` (lrnnx's state dicts hold both) are checked to equal it and
/// dropped first; returns the parameters left, ready for [`build`].
pub(crate) fn exact_layer_params(class: &str, kwargs: &Value, params: Params) -> Result<Params> {
    let mut kept = Params::new();
    for (name, var) in params.vars() {
        let alias_of = name
            .strip_prefix("layer.kernel.")
            .filter(|_| is_s4(class))
            .and_then(|x| params.vars().get(x));
        if let Some(x) = alias_of {
            // bit for bit, in the tensors' own dtype (one storage in lrnnx: NaN equals NaN,
            // −0 differs from 0), as the single-layer import compares them
            let bits = |t: &Tensor| -> Result<Vec<u64>> {
                let t = t.flatten_all()?;
                Ok(match t.dtype() {
                    DType::F64 => t.to_vec1::<f64>()?.iter().map(|v| v.to_bits()).collect(),
                    _ => t
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?
                        .iter()
                        .map(|v| u64::from(v.to_bits()))
                        .collect(),
                })
            };
            let same = x.dims() == var.dims()
                && x.dtype() == var.dtype()
                && bits(x.as_tensor())? == bits(var.as_tensor())?;
            if !same {
                return Err(alias_differs(name.clone()));
            }
            continue;
        }
        kept.insert(name, var.as_tensor())?;
    }
    check_exact(class, kwargs, &kept)?;
    Ok(kept)
}

/// Mamba's kept (unused) dt-projection weight of the input projection for `ΔA`.
const DTA_WEIGHT: &str = "dtA_proj.weight";
/// The dt projection whose shape `dtA_proj.weight` repeats in lrnnx: `(d_inner, dt_rank)`.
const DT_WEIGHT: &str = "dt_proj.weight";

/// Checks a kept key the layer does not read (see [`kept_unused`]) as lrnnx would have written
/// it, so that the file stays a loadable lrnnx state dict: `dtA_proj.weight` has the shape of its
/// `dt_proj.weight` sibling.
fn check_kept(name: &str, params: &Params) -> Result<()> {
    let vars = params.vars();
    let tensor = vars[name].as_tensor();
    let bad = |reason: String| CheckpointError::Tensor {
        name: name.to_owned(),
        reason,
    };
    if let Some(prefix) = name.strip_suffix(DTA_WEIGHT) {
        let sibling = format!("{prefix}{DT_WEIGHT}");
        // The layer built, so its dt projection is there; compare only when it is.
        if let Some(dt) = vars.get(&sibling) {
            if dt.dims() != tensor.dims() {
                return Err(bad(format!(
                    "shape {:?}, expected {:?} (the shape of `{sibling}`, as in lrnnx)",
                    tensor.dims(),
                    dt.dims()
                )));
            }
        }
    }
    Ok(())
}

/// Builds the layer to check `params` (missing and mis-shaped tensors, constructor arguments),
/// then checks that every tensor is needed: the layer must fail to build without it.
fn check_exact(class: &str, kwargs: &Value, params: &Params) -> Result<()> {
    build(class, kwargs, params.clone())?;
    for name in params.vars().keys() {
        if kept_unused(class, kwargs, name) {
            check_kept(name, params)?;
            continue;
        }
        let mut without = Params::new();
        for (k, v) in params.vars() {
            if k != name {
                without.insert(k, v.as_tensor())?; // shares the variable, no copy
            }
        }
        if build(class, kwargs, without).is_ok() {
            return Err(CheckpointError::Extra {
                name: name.clone(),
                class: class.to_owned(),
            });
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })
}

fn with_path(e: CheckpointError, path: &Path) -> CheckpointError {
    match e {
        CheckpointError::Format { reason, .. } => CheckpointError::Format {
            path: path.to_owned(),
            reason,
        },
        CheckpointError::Metadata { reason, .. } => CheckpointError::Metadata {
            path: path.to_owned(),
            reason,
        },
        other => other,
    }
}

/// One header entry: dtype name, shape, and the data's byte range in the file.
#[derive(Debug)]
struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

/// A parsed safetensors file (header checked against the file's length, data not converted).
#[derive(Debug)]
struct RawFile<'b> {
    bytes: &'b [u8],
    tensors: BTreeMap<String, RawTensor>,
    metadata: BTreeMap<String, String>,
}

/// A little-endian f64 from 8 bytes.
fn le_f64(b: &[u8]) -> f64 {
    f64::from_bits(le_i64(b) as u64)
}

/// A little-endian i64 from 8 bytes.
fn le_i64(b: &[u8]) -> i64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(b);
    i64::from_le_bytes(le)
}

/// Bytes per element of a safetensors dtype.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

impl<'b> RawFile<'b> {
    /// Parses the header and checks every tensor's byte range against the file, naming the
    /// first tensor that is cut off or inconsistent.
    fn parse(bytes: &'b [u8]) -> Result<Self> {
        let format = |reason: String| CheckpointError::Format {
            path: PathBuf::new(),
            reason,
        };
        let Some(len) = bytes.get(..8) else {
            return Err(format(format!(
                "{} bytes, shorter than the 8-byte header length",
                bytes.len()
            )));
        };
        let mut le = [0u8; 8];
        le.copy_from_slice(len);
        let n = u64::from_le_bytes(le);
        let available = bytes.len() as u64 - 8;
        if n > MAX_HEADER || n > available {
            return Err(format(format!(
                "the header claims {n} bytes but {available} follow (truncated or not safetensors)"
            )));
        }
        let body = 8 + n as usize;
        let header = std::str::from_utf8(&bytes[8..body])
            .map_err(|e| format(format!("header is not UTF-8: {e}")))?;
        let header: Value = serde_json::from_str(header.trim_end())
            .map_err(|e| format(format!("header is not JSON: {e}")))?;
        let Value::Object(entries) = header else {
            return Err(format("header is not a JSON object".into()));
        };
        let data_len = bytes.len() - body;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                let Value::Object(m) = entry else {
                    return Err(format("`__metadata__` is not an object".into()));
                };
                for (k, v) in m {
                    let Value::String(v) = v else {
                        return Err(format(format!("metadata `{k}` is not a string")));
                    };
                    metadata.insert(k, v);
                }
                continue;
            }
            tensors.insert(name.clone(), Self::entry(&name, &entry)?);
        }
        // The first tensor (in file order) whose data runs past the end is the one cut off.
        let cut = tensors
            .iter()
            .filter(|(_, t)| t.range.end > data_len)
            .min_by_key(|(_, t)| t.range.start);
        if let Some((name, t)) = cut {
            return Err(CheckpointError::Tensor {
                name: name.clone(),
                reason: format!(
                    "its data ends at byte {} of the data section, which has only {data_len} \
                     bytes (the file is truncated)",
                    t.range.end
                ),
            });
        }
        // The data section is the tensors back to back from byte 0 to its end: a gap, an
        // overlap or trailing bytes mean a corrupt file (as safetensors itself refuses).
        let mut by_start: Vec<(&String, &RawTensor)> = tensors.iter().collect();
        by_start.sort_by_key(|(_, t)| (t.range.start, t.range.end));
        let mut at = 0;
        for (name, t) in &by_start {
            if t.range.start != at {
                return Err(CheckpointError::Tensor {
                    name: (*name).clone(),
                    reason: format!(
                        "its data starts at byte {} of the data section, expected {at} (the \
                         tensors' data must follow each other without gaps or overlaps)",
                        t.range.start
                    ),
                });
            }
            at = t.range.end;
        }
        if at != data_len {
            return Err(format(format!(
                "the data section has {data_len} bytes, but the tensors take {at} (trailing \
                 bytes)"
            )));
        }
        for t in tensors.values_mut() {
            t.range = body + t.range.start..body + t.range.end;
        }
        Ok(RawFile {
            bytes,
            tensors,
            metadata,
        })
    }

    /// Checks one header entry; the range returned is relative to the data section.
    fn entry(name: &str, entry: &Value) -> Result<RawTensor> {
        let bad = |reason: String| CheckpointError::Tensor {
            name: name.to_owned(),
            reason,
        };
        let dtype = entry
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("header entry has no `dtype` string".into()))?;
        let size = dtype_size(dtype).ok_or_else(|| bad(format!("unknown dtype `{dtype}`")))?;
        let ints = |key: &str| -> Result<Vec<usize>> {
            entry
                .get(key)
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .map(|v| v.as_u64().and_then(|u| usize::try_from(u).ok()))
                        .collect::<Option<Vec<usize>>>()
                })
                .ok_or_else(|| bad(format!("header entry has no `{key}` list of integers")))
        };
        let shape = ints("shape")?;
        let offsets = ints("data_offsets")?;
        let &[start, end] = offsets.as_slice() else {
            return Err(bad("`data_offsets` is not a [begin, end] pair".into()));
        };
        // the byte count, and (for an empty tensor, whose count is 0 whatever the other axes)
        // the product of the non-zero axes: both must fit, or the strides overflow later
        let need = shape
            .iter()
            .try_fold(size, |p, &d| p.checked_mul(d))
            .filter(|_| {
                shape
                    .iter()
                    .filter(|&&d| d != 0)
                    .try_fold(size, |p, &d| p.checked_mul(d))
                    .is_some()
            })
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if end < start || end - start != need {
            return Err(bad(format!(
                "holds bytes {start}..{end}, but {dtype} {shape:?} needs {need} bytes"
            )));
        }
        Ok(RawTensor {
            dtype: dtype.to_owned(),
            shape,
            range: start..end,
        })
    }

    /// The tensor `key` as a candle tensor on the CPU: F32 and F64 as they are; an integer
    /// buffer (I64), when `int_ok`, in `int_dtype` (exact up to 2^24, refused above); other
    /// dtypes refused. Every value must be finite.
    fn float_tensor(&self, key: &str, int_ok: bool, int_dtype: DType) -> Result<Tensor> {
        let bad = |reason: String| CheckpointError::Tensor {
            name: key.to_owned(),
            reason,
        };
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| bad("not in the file".into()))?;
        let raw = &self.bytes[t.range.clone()];
        let shape = t.shape.as_slice();
        let not_finite = |i: usize, v: f64| bad(format!("value {i} is {v} (not finite)"));
        match t.dtype.as_str() {
            "F32" => {
                let data: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                    return Err(not_finite(i, data[i] as f64));
                }
                Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
            }
            "F64" => {
                let data: Vec<f64> = raw.chunks_exact(8).map(le_f64).collect();
                if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                    return Err(not_finite(i, data[i]));
                }
                Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
            }
            "I64" if int_ok => {
                let data = raw
                    .chunks_exact(8)
                    .map(|b| {
                        let v = le_i64(b);
                        if v.unsigned_abs() <= 1 << 24 {
                            Ok(v as f32)
                        } else {
                            Err(bad(format!("integer {v} is not exact in f32")))
                        }
                    })
                    .collect::<Result<Vec<f32>>>()?;
                Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(int_dtype)?)
            }
            other => Err(bad(format!("has dtype {other}, expected F32 or F64"))),
        }
    }

    /// The parameters under `prefix` (prefix removed), without the skipped aliases of `class`.
    fn params(&self, prefix: &str, class: &str) -> Result<Params> {
        // one precision for all: the first float tensor's (F32 unless it is F64)
        let mut floats = self
            .tensors
            .iter()
            .filter(|(k, t)| k.starts_with(prefix) && matches!(t.dtype.as_str(), "F32" | "F64"));
        let first = floats.next();
        if let Some((name, t)) = floats.find(|(_, t)| Some(&t.dtype) != first.map(|f| &f.1.dtype)) {
            return Err(CheckpointError::Tensor {
                name: name.clone(),
                reason: format!(
                    "has dtype {} while `{}` has {} (a checkpoint's parameters share one \
                     precision)",
                    t.dtype,
                    first.map_or("", |f| f.0.as_str()),
                    first.map_or("", |f| f.1.dtype.as_str())
                ),
            });
        }
        let float_dtype = match first {
            Some((_, t)) if t.dtype == "F64" => DType::F64,
            _ => DType::F32,
        };
        let mut params = Params::new();
        for key in self.tensors.keys() {
            let Some(name) = key.strip_prefix(prefix) else {
                continue;
            };
            // S4/S4D: `layer.kernel.X` is the same storage as the top-level `X`; skip it, once
            // it is checked to be just that (same dtype, shape and bytes).
            let alias_of = name
                .strip_prefix("layer.kernel.")
                .and_then(|x| self.tensors.get(&format!("{prefix}{x}")));
            if let (true, Some(x)) = (is_s4(class), alias_of) {
                let a = &self.tensors[key];
                if a.dtype != x.dtype
                    || a.shape != x.shape
                    || self.bytes[a.range.clone()] != self.bytes[x.range.clone()]
                {
                    return Err(alias_differs(key.clone()));
                }
                continue;
            }
            let int_ok = is_s4(class) && name == L_KERNEL;
            params.insert(name, &self.float_tensor(key, int_ok, float_dtype)?)?;
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S5: &str = "lrnnx.models.lti.s5.S5";

    fn golden(case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/lrnnx-golden")
            .join(format!("{case}.safetensors"))
    }

    /// A fresh directory under the system's temporary directory.
    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lrnnx-train-checkpoint-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
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

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(rand_vec(n, seed), shape, &Device::Cpu).unwrap()
    }

    /// S5 (LTI) parameters for H = 3, N = 4.
    fn s5_params() -> Params {
        let mut p = Params::new();
        for (i, (name, shape)) in [
            ("A", vec![4, 2]),
            ("B", vec![4, 3]),
            ("log_dt", vec![4]),
            ("C", vec![3, 4, 2]),
            ("D", vec![3, 3]),
        ]
        .into_iter()
        .enumerate()
        {
            p.insert(name, &tensor(&shape, 11 + i as u64)).unwrap();
        }
        p
    }

    fn s5_kwargs() -> Value {
        json!({"d_model": 3, "d_state": 4, "discretization": "zoh"})
    }

    fn forward(layer: &dyn TrainLayer, x: &Tensor, taus: Option<&Tensor>) -> Vec<f32> {
        layer
            .forward(x, taus)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    /// Writes `tensors` (name, dtype, shape, raw bytes) and `metadata` as safetensors.
    fn write_raw(
        path: &Path,
        tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)],
        metadata: HashMap<String, String>,
    ) {
        let views = tensors.iter().map(|(n, d, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        });
        std::fs::write(path, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
    }

    fn f32_bytes(t: &Tensor) -> Vec<u8> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn meta(class: &str, kwargs: &Value) -> HashMap<String, String> {
        HashMap::from([
            ("format".to_owned(), FORMAT.to_owned()),
            (META_CLASS.to_owned(), class.to_owned()),
            (META_KWARGS.to_owned(), kwargs.to_string()),
        ])
    }

    #[test]
    fn round_trip_gives_the_identical_forward() {
        let dir = temp_dir("round_trip");
        let path = dir.join("s5.safetensors");
        let layer = build(S5, &s5_kwargs(), s5_params()).unwrap();
        save(&path, S5, &s5_kwargs(), layer.as_ref()).unwrap();
        let loaded = load(&path).unwrap();
        let x = tensor(&[2, 9, 3], 5);
        assert_eq!(
            forward(loaded.as_ref(), &x, None),
            forward(layer.as_ref(), &x, None)
        );
        for (name, var) in layer.params().vars() {
            let got = &loaded.params().vars()[name];
            assert_eq!(
                f32_bytes(got.as_tensor()),
                f32_bytes(var.as_tensor()),
                "{name}"
            );
        }
        assert_eq!(loaded.params().vars().len(), 5);
        // An independent reader (candle's, on the safetensors crate) reads the same tensors.
        let other = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(other.len(), 5);
        assert_eq!(
            f32_bytes(&other["C"]),
            f32_bytes(layer.params().vars()["C"].as_tensor())
        );
        // f64 parameters (here with digits f32 cannot hold) are stored as F64 and come back
        // bit for bit.
        let bits64 = |t: &Tensor| -> Vec<u64> {
            let v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let mut p64 = Params::new();
        for (name, var) in layer.params().vars() {
            let t = (var.as_tensor().to_dtype(DType::F64).unwrap() + 1e-12).unwrap();
            p64.insert(name, &t).unwrap();
        }
        let path64 = dir.join("s5_f64.safetensors");
        Checkpoint::new(S5, &s5_kwargs(), p64.clone())
            .unwrap()
            .save(&path64)
            .unwrap();
        let loaded64 = load(&path64).unwrap();
        for (name, var) in p64.vars() {
            let got = loaded64.params().vars()[name].as_tensor();
            assert_eq!(got.dtype(), DType::F64);
            assert_eq!(bits64(got), bits64(var.as_tensor()), "{name}");
        }
        // Refused before anything is written (the file saved above keeps its bytes): f32 and
        // f64 mixed, and a value that is not finite, each naming the tensor.
        let before = std::fs::read(&path64).unwrap();
        let mut mixed = p64.clone();
        mixed
            .insert("D", layer.params().vars()["D"].as_tensor())
            .unwrap();
        let e = Checkpoint::new(S5, &s5_kwargs(), mixed)
            .unwrap()
            .save(&path64)
            .unwrap_err();
        assert!(
            e.to_string().contains("`D`") && e.to_string().contains("one precision"),
            "{e}"
        );
        for dtype in [DType::F32, DType::F64] {
            let mut nan = Params::new();
            for (name, var) in layer.params().vars() {
                nan.insert(name, &var.as_tensor().to_dtype(dtype).unwrap())
                    .unwrap();
            }
            let c = nan.vars()["C"].as_tensor().clone();
            let poisoned = (c.ones_like().unwrap() * f64::NAN).unwrap();
            nan.insert("C", &poisoned).unwrap();
            let e = Checkpoint::new(S5, &s5_kwargs(), nan)
                .unwrap()
                .save(&path64)
                .unwrap_err();
            assert!(
                e.to_string().contains("`C`") && e.to_string().contains("NaN"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(&path64).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every trainable class: the lrnnx state dict of its golden case imports as it is (aliases
    /// and all) and reproduces lrnnx's forward; saving and loading it changes nothing.
    #[test]
    fn lrnnx_state_dicts_import_and_round_trip() {
        let dir = temp_dir("import");
        for case in [
            "s5_lti_zoh",
            "s5_ltv_zoh_event",
            "lru",
            "s4",
            "s4d_zoh",
            "centaurus_neck",
            "centaurus_full",
            "centaurus_pointwise",
            "centaurus_dws",
            "mamba_zoh_event",
            "rglru",
            "s7",
        ] {
            let bytes = std::fs::read(golden(case)).unwrap();
            let file = RawFile::parse(&bytes).unwrap();
            let config: Value = serde_json::from_str(&file.metadata["config"]).unwrap();
            let class = config["class"].as_str().unwrap();
            let kwargs = &config["ctor_kwargs"];
            let ckpt = Checkpoint::import_lrnnx(golden(case), "param.", class, kwargs).unwrap();
            let layer = ckpt.build().unwrap();
            let x = file.float_tensor("input.x", false, DType::F32).unwrap();
            let taus = file
                .float_tensor("input.integration_timesteps", false, DType::F32)
                .ok();
            let y = forward(layer.as_ref(), &x, taus.as_ref());
            let want = file.float_tensor("output.y", false, DType::F32).unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * scale + 1e-6, "{case}: {a} vs {b}");
            }
            let path = dir.join(format!("{case}.safetensors"));
            ckpt.save(&path).unwrap();
            let loaded = load(&path).unwrap();
            assert_eq!(forward(loaded.as_ref(), &x, taus.as_ref()), y, "{case}");
            // Every lrnnx tensor but S4's `layer.kernel.*` aliases of its own parameters (its
            // `l_kernel` buffer is kept), by name.
            let mut want_names: Vec<&str> = file
                .tensors
                .keys()
                .filter_map(|k| k.strip_prefix("param."))
                .filter(|k| !k.starts_with("layer.kernel.") || *k == "layer.kernel.l_kernel")
                .collect();
            want_names.sort_unstable();
            let mut names: Vec<&str> = loaded.params().vars().keys().map(String::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, want_names, "{case}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Broken checkpoints are refused with an error naming the tensor; nothing panics.
    #[test]
    fn broken_checkpoints_are_refused_naming_the_tensor() {
        let dir = temp_dir("refusals");
        let kwargs = s5_kwargs();
        let good: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = s5_params()
            .vars()
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    safetensors::Dtype::F32,
                    v.dims().to_vec(),
                    f32_bytes(v.as_tensor()),
                )
            })
            .collect();
        let refuse = |file: &str,
                      tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)],
                      name: &str| {
            let path = dir.join(file);
            write_raw(&path, tensors, meta(S5, &kwargs));
            let e = load(&path)
                .err()
                .unwrap_or_else(|| panic!("{file} was accepted"));
            let msg = e.to_string();
            assert!(msg.contains(&format!("`{name}`")), "{file}: {msg}");
            e
        };
        // The well-formed file loads.
        write_raw(&dir.join("good.safetensors"), &good, meta(S5, &kwargs));
        load(dir.join("good.safetensors")).unwrap();

        let missing: Vec<_> = good.iter().filter(|t| t.0 != "B").cloned().collect();
        let e = refuse("missing.safetensors", &missing, "B");
        assert!(e.to_string().contains("missing"), "{e}");

        let mut extra = good.clone();
        extra.push(("E".into(), safetensors::Dtype::F32, vec![2], vec![0; 8]));
        let e = refuse("extra.safetensors", &extra, "E");
        assert!(matches!(e, CheckpointError::Extra { .. }), "{e}");

        let mut shaped = good.clone();
        let c = shaped.iter_mut().find(|t| t.0 == "C").unwrap();
        c.2 = vec![4, 3, 2];
        let e = refuse("misshaped.safetensors", &shaped, "C");
        assert!(e.to_string().contains("shape"), "{e}");

        let mut f64s = good.clone();
        let d = f64s.iter_mut().find(|t| t.0 == "D").unwrap();
        d.1 = safetensors::Dtype::F64;
        d.3 = vec![0; 9 * 8];
        let e = refuse("f64.safetensors", &f64s, "D");
        assert!(e.to_string().contains("has dtype F64 while"), "{e}");
        let mut f16s = good.clone();
        let d = f16s.iter_mut().find(|t| t.0 == "D").unwrap();
        d.1 = safetensors::Dtype::F16;
        d.3 = vec![0; 9 * 2];
        let e = refuse("f16.safetensors", &f16s, "D");
        assert!(e.to_string().contains("expected F32 or F64"), "{e}");

        // Truncated: the first tensor whose bytes are cut is named.
        let bytes = std::fs::read(dir.join("good.safetensors")).unwrap();
        let parsed = RawFile::parse(&bytes).unwrap();
        for cut in [1, 5, 40] {
            let end = bytes.len() - cut;
            let (first_cut, _) = parsed
                .tensors
                .iter()
                .filter(|(_, t)| t.range.end > end)
                .min_by_key(|(_, t)| t.range.start)
                .unwrap();
            let path = dir.join(format!("truncated{cut}.safetensors"));
            std::fs::write(&path, &bytes[..end]).unwrap();
            let msg = load(&path).err().unwrap().to_string();
            assert!(
                msg.contains(&format!("`{first_cut}`")) && msg.contains("truncated"),
                "{msg}"
            );
        }
        // Cut inside the header, or garbage: a format error, no panic.
        for (i, junk) in [
            bytes[..bytes.len() / 8].to_vec(),
            bytes[..5].to_vec(),
            vec![],
            vec![0xff; 64],
            b"\x10\0\0\0\0\0\0\0{\"a\":{\"dtype\":1}}".to_vec(),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.join(format!("junk{i}.safetensors"));
            std::fs::write(&path, junk).unwrap();
            assert!(load(&path).is_err());
        }
        // A header entry whose size does not match its shape names the tensor.
        let mut lying = bytes.clone();
        let text = String::from_utf8_lossy(&lying[8..]).into_owned();
        let at = text.find("\"shape\":[4,2]").unwrap();
        lying[8 + at..8 + at + 13].copy_from_slice(b"\"shape\":[4,3]");
        let path = dir.join("lying.safetensors");
        std::fs::write(&path, &lying).unwrap();
        let msg = load(&path).err().unwrap().to_string();
        assert!(msg.contains("`A`"), "{msg}");
        // NaN or infinite weights: refused, naming the tensor and the value.
        for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut nan = good.clone();
            let c = nan.iter_mut().find(|t| t.0 == "C").unwrap();
            c.3[4..8].copy_from_slice(&bad_value.to_le_bytes());
            let e = refuse("nonfinite.safetensors", &nan, "C");
            assert!(e.to_string().contains("value 1 is"), "{e}");
        }
        // Trailing bytes after the last tensor: a corrupt file.
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"GARBAGE");
        let path = dir.join("trailing.safetensors");
        std::fs::write(&path, &trailing).unwrap();
        let msg = load(&path).err().unwrap().to_string();
        assert!(msg.contains("trailing"), "{msg}");
        // Hand-made headers: aliased (overlapping) data, a gap, and an empty tensor whose other
        // axes overflow; each names its tensor.
        let raw = |header: &str, data_len: usize| {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header.as_bytes());
            b.extend(std::iter::repeat_n(0u8, data_len));
            b
        };
        for (i, (header, data_len, name, what)) in [
            (
                r#"{"A":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"B":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "B",
                "starts at byte 0",
            ),
            (
                r#"{"A":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "A",
                "starts at byte 4",
            ),
            (
                r#"{"Z":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#,
                0,
                "Z",
                "overflows",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.join(format!("layout{i}.safetensors"));
            std::fs::write(&path, raw(header, data_len)).unwrap();
            let msg = load(&path).err().unwrap().to_string();
            assert!(
                msg.contains(&format!("`{name}`")) && msg.contains(what),
                "{msg}"
            );
        }
        // No metadata: not a checkpoint (an lrnnx state dict needs import_lrnnx).
        let path = dir.join("nometa.safetensors");
        write_raw(&path, &good, HashMap::new());
        assert!(matches!(load(&path), Err(CheckpointError::Metadata { .. })));
        assert!(import_lrnnx(&path, "", S5, &kwargs).is_ok());
        // A missing file.
        assert!(matches!(
            load(dir.join("absent.safetensors")),
            Err(CheckpointError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Mamba's `dtA_proj.weight`, kept without being read, must have its `dt_proj.weight`'s
    /// shape; S4's `layer.kernel.l_kernel` must be one non-negative integer and S4D's is extra;
    /// each refusal names the tensor.
    #[test]
    fn kept_keys_are_checked() {
        let golden_params = |case: &str| {
            let bytes = std::fs::read(golden(case)).unwrap();
            let file = RawFile::parse(&bytes).unwrap();
            let config: Value = serde_json::from_str(&file.metadata["config"]).unwrap();
            let class = config["class"].as_str().unwrap().to_owned();
            let kwargs = config["ctor_kwargs"].clone();
            let params = file.params("param.", &class).unwrap();
            (class, kwargs, params)
        };
        let refused = |class: &str, kwargs: &Value, p: Params, name: &str, what: &str| {
            let e = Checkpoint::new(class, kwargs, p).err().unwrap();
            assert!(matches!(e, CheckpointError::Tensor { .. }), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("`{name}`")) && msg.contains(what),
                "{msg}"
            );
        };

        let (class, kwargs, params) = golden_params("mamba_zoh_event");
        Checkpoint::new(&class, &kwargs, params.clone()).unwrap();
        let dims = params.vars()[DTA_WEIGHT].dims().to_vec();
        let mut p = params.clone();
        p.insert(DTA_WEIGHT, &tensor(&[dims[0], dims[1] + 1], 7))
            .unwrap();
        refused(&class, &kwargs, p, DTA_WEIGHT, "dt_proj.weight");
        let mut p = params.clone();
        p.insert(DTA_WEIGHT, &tensor(&[dims[0] * dims[1]], 7))
            .unwrap();
        refused(&class, &kwargs, p, DTA_WEIGHT, "shape");

        // S4 reads its `l_kernel` (one non-negative integer); S4D has none, so it is extra.
        let (class, kwargs, params) = golden_params("s4");
        Checkpoint::new(&class, &kwargs, params.clone()).unwrap();
        for (value, shape, what) in [
            (vec![1.5f32], vec![1], "non-negative integer"),
            (vec![-1.0], vec![], "non-negative integer"),
            (vec![0.0, 0.0], vec![2], "shape"),
        ] {
            let mut p = params.clone();
            let t = Tensor::from_vec(value, shape, &Device::Cpu).unwrap();
            p.insert(L_KERNEL, &t).unwrap();
            let msg = Checkpoint::new(&class, &kwargs, p)
                .err()
                .unwrap()
                .to_string();
            assert!(
                msg.contains(&format!("`{L_KERNEL}`")) && msg.contains(what),
                "{msg}"
            );
        }
        let (class, kwargs, mut params) = golden_params("s4d_zoh");
        params
            .insert(L_KERNEL, &Tensor::new(&[0f32], &Device::Cpu).unwrap())
            .unwrap();
        let e = Checkpoint::new(&class, &kwargs, params).err().unwrap();
        assert!(matches!(e, CheckpointError::Extra { .. }), "{e}");
    }

    /// S4's `layer.kernel.X` must be the same tensor as `X`, bit for bit in the same dtype, on
    /// both import paths: the raw safetensors file (bytes compared) and a parameter map
    /// (`exact_layer_params`, as a language model's mixers are checked).
    #[test]
    fn s4_kernel_aliases_must_equal_their_tensor() {
        const ALIAS: &str = "layer.kernel.C";
        let bytes = std::fs::read(golden("s4")).unwrap();
        let file = RawFile::parse(&bytes).unwrap();
        let config: Value = serde_json::from_str(&file.metadata["config"]).unwrap();
        let class = config["class"].as_str().unwrap().to_owned();
        let kwargs = config["ctor_kwargs"].clone();
        let params = file.params("param.", &class).unwrap();
        assert!(!params.vars().contains_key(ALIAS), "the alias is dropped");

        // The raw file: the alias's first float with its sign bit flipped.
        let key = format!("param.{ALIAS}");
        let start = file.tensors[&key].range.start;
        let mut broken = bytes.clone();
        broken[start + 3] ^= 0x80;
        let file = RawFile::parse(&broken).unwrap();
        let e = file.params("param.", &class).err().unwrap();
        assert!(matches!(e, CheckpointError::Tensor { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("`{key}`")) && msg.contains("aliases"),
            "{msg}"
        );

        // A parameter map: the same values pass; one flipped sign, or the same values in f64,
        // are refused naming the alias.
        let c = params.vars()["C"].as_tensor().clone();
        let flipped = {
            let mut v = c.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[0] = -v[0];
            Tensor::from_vec(v, c.dims(), &Device::Cpu).unwrap()
        };
        let with_alias = |t: &Tensor| {
            let mut p = params.clone();
            p.insert(ALIAS, t).unwrap();
            exact_layer_params(&class, &kwargs, p)
        };
        let kept = with_alias(&c).unwrap();
        assert!(!kept.vars().contains_key(ALIAS));
        assert_eq!(kept.vars().len(), params.vars().len());
        for bad in [flipped, c.to_dtype(DType::F64).unwrap()] {
            let e = with_alias(&bad).err().unwrap();
            assert!(matches!(e, CheckpointError::Tensor { .. }), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("`{ALIAS}`")) && msg.contains("aliases"),
                "{msg}"
            );
        }
    }

    /// Saving refuses parameters that do not rebuild the layer, naming the tensor.
    #[test]
    fn save_refuses_parameters_that_do_not_rebuild() {
        let layer = build(S5, &s5_kwargs(), s5_params()).unwrap();
        let dir = temp_dir("save");
        let e = save(
            dir.join("x.safetensors"),
            S5,
            &json!({"d_model": 3, "d_state": 5, "discretization": "zoh"}),
            layer.as_ref(),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("`A`"), "{e}");
        let mut p = s5_params();
        p.insert("log_dt_extra", &tensor(&[4], 1)).unwrap();
        let e = Checkpoint::new(S5, &s5_kwargs(), p).err().unwrap();
        assert!(e.to_string().contains("`log_dt_extra`"), "{e}");
        // S4D: an lrnnx-only alias key is accepted on import but a stray top-level key is not.
        let bytes = std::fs::read(golden("s4d_zoh")).unwrap();
        let file = RawFile::parse(&bytes).unwrap();
        let mut p = file.params("param.", "S4D").unwrap();
        let kw = json!({"d_model": 8, "d_state": 8, "disc": "zoh"});
        Checkpoint::new("S4D", &kw, p.clone()).unwrap();
        p.insert("kernel.C", &tensor(&[1, 8, 4, 2], 3)).unwrap();
        let e = Checkpoint::new("S4D", &kw, p).err().unwrap();
        assert!(e.to_string().contains("`kernel.C`"), "{e}");
        // A failed save leaves neither a partial file nor a changed target: into a missing
        // directory, and onto a directory (the rename fails after the write).
        let ckpt = Checkpoint::new(S5, &s5_kwargs(), s5_params()).unwrap();
        let missing = dir.join("absent").join("x.safetensors");
        assert!(matches!(
            ckpt.save(&missing),
            Err(CheckpointError::Io { .. })
        ));
        assert!(!dir.join("absent").exists());
        let target = dir.join("taken");
        std::fs::create_dir(&target).unwrap();
        assert!(matches!(
            ckpt.save(&target),
            Err(CheckpointError::Io { .. })
        ));
        assert!(target.is_dir() && !dir.join("taken.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
