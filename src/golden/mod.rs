//! lrnnx golden cases: loading them and checking implementations against them.
//!
//! A case is one safetensors file in the `lrnnx-golden-v1` format (see
//! `tests/data/lrnnx-golden/README.md`): lrnnx's weights (`param.*`), inputs (`input.*`), the
//! forward output (`output.y`), the step-by-step output (`output.y_step`), gradients, and a JSON
//! `config` in the metadata. Each *implementation* (the core stepping, later the training
//! crate's parallel forward and gradients) turns a case into report lines:
//!
//! ```text
//! <case> <implementation> max_abs=<x> rel=<y> ok|FAIL|unsupported
//! ```
//!
//! A comparison passes when `max_abs <= 1e-5 · max|reference| + 1e-6` (float32 rounding).

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::safetensors_io::{ReadError, Tensor, TensorFile};

mod core_lm;
mod core_ops;
mod core_step;
mod train;
mod train_ops;

/// Relative tolerance of a golden forward comparison (times `max|reference|`).
pub const REL_TOL: f64 = 1e-5;
/// Relative tolerance of a golden gradient comparison (gradients sum over the whole sequence,
/// so their float32 rounding is larger than the outputs').
pub const GRAD_REL_TOL: f64 = 1e-4;
/// Absolute tolerance added to [`REL_TOL`]` · max|reference|`.
pub const ABS_TOL: f64 = 1e-6;

/// One golden case.
#[derive(Debug)]
pub struct Case {
    /// The case name (`config.case`, e.g. `s5_lti_zoh`).
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// The parsed `config` metadata.
    pub config: Value,
    /// All tensors.
    pub file: TensorFile,
}

/// Why a case could not be used.
#[derive(Debug)]
pub enum CaseError {
    /// The file could not be read or parsed.
    Read(ReadError),
    /// The metadata is missing or malformed.
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the check needs is missing.
    MissingTensor {
        /// The case.
        case: String,
        /// The tensor key.
        name: String,
    },
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseError::Read(e) => write!(f, "{e}"),
            CaseError::Metadata { path, reason } => {
                write!(f, "{}: bad golden metadata: {reason}", path.display())
            }
            CaseError::MissingTensor { case, name } => {
                write!(f, "case {case}: tensor `{name}` is missing")
            }
        }
    }
}

impl std::error::Error for CaseError {}

impl Case {
    /// Reads a case file.
    pub fn load(path: impl AsRef<Path>) -> Result<Case, CaseError> {
        let path = path.as_ref();
        let file = TensorFile::read(path).map_err(CaseError::Read)?;
        let bad = |reason: String| CaseError::Metadata {
            path: path.to_owned(),
            reason,
        };
        let format = file.metadata.get("format").map(String::as_str);
        if format != Some("lrnnx-golden-v1") {
            return Err(bad(format!(
                "format is {format:?}, expected \"lrnnx-golden-v1\""
            )));
        }
        let config: Value = serde_json::from_str(
            file.metadata
                .get("config")
                .ok_or_else(|| bad("no `config` entry".into()))?,
        )
        .map_err(|e| bad(format!("config is not JSON: {e}")))?;
        let name = config
            .get("case")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("config has no `case` name".into()))?
            .to_owned();
        Ok(Case {
            name,
            path: path.to_owned(),
            config,
            file,
        })
    }

    /// `module`, `lm` or `op`.
    pub fn kind(&self) -> &str {
        self.config
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The lrnnx class (module cases) or op name (op cases).
    pub fn class(&self) -> &str {
        self.config
            .get("class")
            .or_else(|| self.config.get("op"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The constructor keyword arguments (module cases).
    pub fn ctor_kwargs(&self) -> &Value {
        self.config.get("ctor_kwargs").unwrap_or(&Value::Null)
    }

    /// Whether the case passes `integration_timesteps` (Event-SSM / STREAM mode).
    pub fn event_mode(&self) -> bool {
        self.config
            .get("event_mode")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The tensor `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, CaseError> {
        self.file.get(name).ok_or_else(|| CaseError::MissingTensor {
            case: self.name.clone(),
            name: name.to_owned(),
        })
    }
}

/// The result of comparing an output with its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// `max |ours − reference|` (infinite when the lengths differ or a value is NaN).
    pub max_abs: f64,
    /// `max_abs / max |reference|`.
    pub rel: f64,
    /// Whether `max_abs <= REL_TOL · max|reference| + ABS_TOL`.
    pub ok: bool,
}

/// Compares `ours` with `reference` elementwise at the forward tolerance ([`REL_TOL`]).
pub fn compare(ours: &[f32], reference: &[f32]) -> Comparison {
    compare_with(ours, reference, REL_TOL)
}

/// Compares with a relative tolerance `rel_tol` (times `max|reference|`, plus [`ABS_TOL`]).
pub fn compare_with(ours: &[f32], reference: &[f32], rel_tol: f64) -> Comparison {
    let scale = reference
        .iter()
        .fold(0.0f64, |m, &r| m.max((r as f64).abs()));
    let max_abs = if ours.len() != reference.len() {
        f64::INFINITY
    } else {
        ours.iter()
            .zip(reference)
            .map(|(&a, &b)| {
                let d = (a as f64 - b as f64).abs();
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    d
                }
            })
            .fold(0.0, f64::max)
    };
    let rel = if scale > 0.0 {
        max_abs / scale
    } else {
        max_abs
    };
    Comparison {
        max_abs,
        rel,
        ok: max_abs <= rel_tol * scale + ABS_TOL,
    }
}

/// What an implementation made of a case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Compared with a reference.
    Compared(Comparison),
    /// The implementation does not cover this case; the reason says why.
    Unsupported(String),
    /// The implementation should cover the case but failed to run it.
    Error(String),
}

/// One report line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The case name.
    pub case: String,
    /// The implementation and the reference compared, e.g. `core:y_step`.
    pub implementation: String,
    /// The outcome.
    pub outcome: Outcome,
}

impl Line {
    /// Whether the line counts as a failure.
    pub fn failed(&self) -> bool {
        match &self.outcome {
            Outcome::Compared(c) => !c.ok,
            Outcome::Unsupported(_) => false,
            Outcome::Error(_) => true,
        }
    }

    /// The explanation for an unsupported or erroneous line.
    pub fn reason(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Compared(_) => None,
            Outcome::Unsupported(r) | Outcome::Error(r) => Some(r),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.case, self.implementation)?;
        match &self.outcome {
            Outcome::Compared(c) => write!(
                f,
                "max_abs={:.3e} rel={:.3e} {}",
                c.max_abs,
                c.rel,
                if c.ok { "ok" } else { "FAIL" }
            ),
            Outcome::Unsupported(_) => write!(f, "max_abs=- rel=- unsupported"),
            Outcome::Error(_) => write!(f, "max_abs=- rel=- FAIL"),
        }
    }
}

/// An implementation checked against golden cases.
pub struct Implementation {
    /// Its name (the prefix of its report lines).
    pub name: &'static str,
    /// Turns a case into report lines.
    pub check: fn(&Case) -> Vec<Line>,
}

/// Every implementation this build can check.
pub fn implementations() -> Vec<Implementation> {
    vec![
        Implementation {
            name: "core",
            check: core_step::check,
        },
        Implementation {
            name: "train",
            check: train::check,
        },
    ]
}

/// The `train` implementation's report lines for one case with every tensor on `device`
/// (e.g. a CUDA device with the `cuda` feature; [`implementations`] runs it on the CPU).
pub fn check_train_on(case: &Case, device: &lrnnx_train::candle_core::Device) -> Vec<Line> {
    train::check_on(case, device)
}

/// The `*.safetensors` files of `dir`, sorted by name.
pub fn case_files(dir: impl AsRef<Path>) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs every implementation on one case file. A file that cannot be loaded gives one failing
/// line per implementation.
pub fn check_file(path: &Path) -> Vec<Line> {
    match Case::load(path) {
        Ok(case) => implementations()
            .iter()
            .flat_map(|imp| (imp.check)(&case))
            .collect(),
        Err(e) => {
            let case = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            implementations()
                .iter()
                .map(|imp| Line {
                    case: case.clone(),
                    implementation: imp.name.to_owned(),
                    outcome: Outcome::Error(e.to_string()),
                })
                .collect()
        }
    }
}

/// Counts of a report: `(passed, failed, unsupported)`.
pub fn tally(lines: &[Line]) -> (usize, usize, usize) {
    lines
        .iter()
        .fold((0, 0, 0), |(p, f, u), l| match l.outcome {
            Outcome::Unsupported(_) => (p, f, u + 1),
            _ if l.failed() => (p, f + 1, u),
            _ => (p + 1, f, u),
        })
}

/// Shape helper: the `(B, L, H)` dimensions of a 3-D tensor.
pub(crate) fn dims3(t: &Tensor, case: &str, name: &str) -> Result<(usize, usize, usize), String> {
    match t.shape.as_slice() {
        [b, l, h] => Ok((*b, *l, *h)),
        s => Err(format!(
            "case {case}: `{name}` has shape {s:?}, expected (B, L, H)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_applies_the_tolerance() {
        let r = [1.0f32, -2.0, 0.5];
        assert!(compare(&[1.0, -2.0, 0.5], &r).ok);
        // 2e-5 absolute on a scale of 2: allowed is 1e-5·2 + 1e-6 = 2.1e-5.
        assert!(compare(&[1.0 + 2e-5, -2.0, 0.5], &r).ok);
        assert!(!compare(&[1.0 + 3e-5, -2.0, 0.5], &r).ok);
        assert!(!compare(&[1.0, -2.0], &r).ok);
        assert!(!compare(&[f32::NAN, -2.0, 0.5], &r).ok);
    }

    #[test]
    fn line_format() {
        let l = Line {
            case: "c".into(),
            implementation: "core:y".into(),
            outcome: Outcome::Compared(compare(&[1.0], &[1.0])),
        };
        assert_eq!(l.to_string(), "c core:y max_abs=0.000e0 rel=0.000e0 ok");
    }
}
