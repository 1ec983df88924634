//! Errors of construction and stepping. Every error names what was wrong (the lrnnx tensor key,
//! the buffer, the argument) so that a user can fix the input without reading the source.

use core::fmt;

use crate::discretize::Discretization;

/// A tensor shape of rank at most 4, printed as `(a, b, c)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    rank: u8,
    dims: [usize; 4],
}

impl Dims {
    /// Shape from a slice; ranks above 4 keep their first 4 dimensions and rank 5+ is reported
    /// as rank 4 plus the product of the rest folded into the last entry.
    pub fn new(shape: &[usize]) -> Self {
        let mut dims = [0usize; 4];
        let rank = shape.len().min(4);
        dims[..rank].copy_from_slice(&shape[..rank]);
        if shape.len() > 4 {
            dims[3] = shape[3..].iter().fold(1usize, |p, &d| p.saturating_mul(d));
        }
        Dims {
            rank: rank as u8,
            dims,
        }
    }

    /// The dimensions as a slice.
    pub fn as_slice(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.rank == 1 {
            f.write_str(",")?;
        }
        f.write_str(")")
    }
}

/// Everything that can go wrong in `lrnnx-core`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Error {
    /// A parameter tensor that the layer needs is not in the parameter source.
    MissingTensor {
        /// lrnnx state-dict key.
        name: &'static str,
    },
    /// A parameter tensor has the wrong shape.
    TensorShape {
        /// lrnnx state-dict key.
        name: &'static str,
        /// The shape the layer's configuration implies.
        expected: Dims,
        /// The shape found.
        got: Dims,
    },
    /// A parameter (or derived, discretized) value is NaN or infinite.
    NonFiniteParameter {
        /// lrnnx state-dict key, or the name of the derived quantity.
        name: &'static str,
        /// Flat index of the first bad element.
        index: usize,
    },
    /// A buffer (weights, state, input or output) has the wrong length.
    BufferLength {
        /// Which buffer.
        what: &'static str,
        /// Required number of `f32` elements.
        expected: usize,
        /// Number given.
        got: usize,
    },
    /// An input sample contains NaN or infinity; the state was left untouched.
    NonFiniteInput {
        /// Flat index of the first bad element in the input given to the call.
        index: usize,
    },
    /// An event time step is zero, negative, NaN or infinite; the state was left untouched.
    InvalidTimeStep {
        /// Index of the step in the call (0 for a single step).
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The layer does not implement this discretization.
    UnsupportedDiscretization {
        /// Layer name.
        layer: &'static str,
        /// Requested discretization.
        discretization: Discretization,
    },
    /// A matrix that construction must invert is singular for these parameters.
    SingularMatrix {
        /// Which matrix (with the layer).
        what: &'static str,
        /// The channel whose matrix is singular.
        channel: usize,
    },
    /// A configuration value is out of range (zero sizes, inconsistent dimensions, ...).
    InvalidConfig {
        /// The configuration field.
        what: &'static str,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A token id outside the model's (padded) vocabulary; the state was left untouched.
    InvalidToken {
        /// The token id given.
        token: usize,
        /// The vocabulary size (ids `0..vocab` are valid).
        vocab: usize,
    },
    /// An attention key/value cache is full (`max_context` tokens); the state was left untouched.
    ContextFull {
        /// The cache's capacity in tokens.
        max_context: usize,
    },
    /// A network's stages do not fit together (widths, GLU input, residual brackets).
    NetworkStage {
        /// Index of the offending stage (the number of stages for an unclosed bracket).
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingTensor { name } => write!(f, "missing parameter tensor `{name}`"),
            Error::TensorShape {
                name,
                expected,
                got,
            } => write!(f, "tensor `{name}` has shape {got}, expected {expected}"),
            Error::NonFiniteParameter { name, index } => {
                write!(f, "parameter `{name}` is not finite at flat index {index}")
            }
            Error::BufferLength {
                what,
                expected,
                got,
            } => write!(f, "{what} has {got} elements, expected {expected}"),
            Error::NonFiniteInput { index } => write!(
                f,
                "input is NaN or infinite at flat index {index}; the state was not changed"
            ),
            Error::InvalidTimeStep { index, value } => write!(
                f,
                "time step {value} at index {index} is not a positive finite number; the state was not changed"
            ),
            Error::UnsupportedDiscretization {
                layer,
                discretization,
            } => write!(
                f,
                "{layer} does not support the {} discretization",
                discretization.name()
            ),
            Error::SingularMatrix { what, channel } => {
                write!(f, "{what} is singular for channel {channel}")
            }
            Error::InvalidConfig { what, reason } => write!(f, "invalid {what}: {reason}"),
            Error::InvalidToken { token, vocab } => write!(
                f,
                "token id {token} is outside the vocabulary 0..{vocab}; the state was not changed"
            ),
            Error::ContextFull { max_context } => write!(
                f,
                "the attention cache is full ({max_context} tokens, the model's max_context); \
                 the state was not changed"
            ),
            Error::NetworkStage { index, reason } => {
                write!(f, "network stage {index}: {reason}")
            }
        }
    }
}

impl core::error::Error for Error {}

/// Result type of `lrnnx-core`.
pub type Result<T> = core::result::Result<T, Error>;

/// Checks that a buffer has exactly `expected` elements.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::BufferLength {
            what,
            expected,
            got,
        })
    }
}

/// Checks that every element of `v` is finite.
pub(crate) fn check_finite_input(v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFiniteInput { index }),
    }
}

/// Checks that every derived weight is finite (after discretization).
pub(crate) fn check_finite_weights(name: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFiniteParameter { name, index }),
    }
}

/// `Σ_k Π_j terms[k][j]`, saturating at `usize::MAX`: the size formulas of weight and state
/// buffers. A size that saturates means the configuration cannot exist in memory; every
/// layer's `validate` rejects it (`check_sizes`), so a huge `d_model` from a user's
/// file is an error, never an overflow.
pub const fn sum_of_products(terms: &[&[usize]]) -> usize {
    let mut total = 0usize;
    let mut k = 0;
    while k < terms.len() {
        let mut prod = 1usize;
        let mut j = 0;
        while j < terms[k].len() {
            prod = prod.saturating_mul(terms[k][j]);
            j += 1;
        }
        total = total.saturating_add(prod);
        k += 1;
    }
    total
}

/// Rejects a configuration whose weight or state size overflows `usize`.
pub(crate) fn check_sizes(weights_len: usize, state_len: usize) -> Result<()> {
    if weights_len == usize::MAX || state_len == usize::MAX {
        Err(Error::InvalidConfig {
            what: "sizes",
            reason: "the weight or state buffer would not fit in memory (size overflows usize)",
        })
    } else {
        Ok(())
    }
}

/// Checks that a size in a configuration is non-zero.
pub(crate) fn check_nonzero(what: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        Err(Error::InvalidConfig {
            what,
            reason: "must be at least 1",
        })
    } else {
        Ok(())
    }
}
