//! Reading safetensors files into named `f32` tensors, with errors that name the file and tensor.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use lrnnx_core::{ParamSource, TensorView};
use safetensors::{Dtype, SafeTensors};

/// One tensor, converted to `f32`: F32 as is, F64 rounded, I64 (such as lrnnx's `l_kernel`
/// buffer) converted where exact (|v| ≤ 2^24; larger integers are refused).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: Vec<f32>,
}

/// Every tensor of a safetensors file plus its string metadata.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
}

/// Why a tensor file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file (truncated, corrupt header, ...).
    Format {
        /// The file (empty when reading from memory).
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A tensor has a dtype this reader does not convert.
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            ReadError::Format { path, reason } => {
                write!(
                    f,
                    "{} is not a valid safetensors file: {reason}",
                    path.display()
                )
            }
            ReadError::Dtype { name, dtype } => {
                write!(
                    f,
                    "tensor `{name}` has dtype {dtype}; expected F32, F64 or I64"
                )
            }
        }
    }
}

impl std::error::Error for ReadError {}

impl TensorFile {
    /// Reads and converts a whole file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ReadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            ReadError::Format { reason, .. } => ReadError::Format {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses safetensors bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReadError> {
        let format = |e: safetensors::SafeTensorError| ReadError::Format {
            path: PathBuf::new(),
            reason: e.to_string(),
        };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(format)?;
        let st = SafeTensors::deserialize(bytes).map_err(format)?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                    .collect(),
                Dtype::I64 => raw
                    .chunks_exact(8)
                    .map(|b| {
                        let v = i64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                        if v.unsigned_abs() <= 1 << 24 {
                            Ok(v as f32)
                        } else {
                            Err(ReadError::Format {
                                path: PathBuf::new(),
                                reason: format!(
                                    "tensor `{name}`: integer {v} is not exact in f32 (|v| > 2^24)"
                                ),
                            })
                        }
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(ReadError::Dtype {
                        name,
                        dtype: format!("{other:?}"),
                    })
                }
            };
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(TensorFile { tensors, metadata })
    }

    /// A parameter source that looks names up under `prefix` (e.g. `"param."` in golden files).
    pub fn params<'a>(&'a self, prefix: &'a str) -> PrefixedTensors<'a> {
        PrefixedTensors { file: self, prefix }
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

/// A [`ParamSource`] over a [`TensorFile`] with a key prefix.
#[derive(Debug, Clone, Copy)]
pub struct PrefixedTensors<'a> {
    file: &'a TensorFile,
    prefix: &'a str,
}

impl ParamSource for PrefixedTensors<'_> {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let key = format!("{}{}", self.prefix, name);
        self.file.tensors.get(&key).map(|t| TensorView {
            data: &t.data,
            shape: &t.shape,
        })
    }
}
