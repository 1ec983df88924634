//! A real-time processor: a model (any [`Layer`], typically an
//! [`lrnnx_core::Network`]) with its state, consuming one sample or a block of samples at a
//! time.
//!
//! ```text
//! for each frame t of the block:   y_t = model.step(state, x_t)     (state carried across calls)
//! ```
//!
//! Real-time rules: every buffer is allocated in [`Processor::new`]; [`Processor::process`] and
//! [`Processor::process_block`] take no locks, do no I/O and allocate nothing (tested with a
//! counting allocator); flush-to-zero is on while they run ([`crate::denormal`]), and the stored
//! state is floored out of the subnormal range after each block, so a long silence costs the
//! same per sample as signal. A block is checked (lengths, finiteness) before the state is
//! touched: a bad block is an error that loses nothing.

use lrnnx_core::{EventLayer, Layer};

use crate::denormal::{flush_subnormals, FlushToZero};

/// Why a call was refused (the state is unchanged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamError {
    /// A buffer has the wrong length.
    Length {
        /// Which buffer.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// An input value is NaN or infinite.
    NonFinite {
        /// Which buffer.
        what: &'static str,
        /// Index of the first bad value.
        index: usize,
    },
    /// The core refused (an event time step that is zero, negative or not finite, ...).
    Core(lrnnx_core::Error),
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StreamError::Length {
                what,
                expected,
                got,
            } => write!(f, "{what} has {got} values, expected {expected}"),
            StreamError::NonFinite { what, index } => write!(
                f,
                "{what} is NaN or infinite at index {index}; nothing was processed"
            ),
            StreamError::Core(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<lrnnx_core::Error> for StreamError {
    fn from(e: lrnnx_core::Error) -> Self {
        StreamError::Core(e)
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), StreamError> {
    if expected == got {
        Ok(())
    } else {
        Err(StreamError::Length {
            what,
            expected,
            got,
        })
    }
}

fn check_finite(what: &'static str, v: &[f32]) -> Result<(), StreamError> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(StreamError::NonFinite { what, index }),
    }
}

/// A model and its state (module doc).
#[derive(Debug, Clone)]
pub struct Processor<M> {
    model: M,
    state: Vec<f32>,
}

impl<M: Layer> Processor<M> {
    /// A processor at the start of a stream (state zero). Allocates the state here, once.
    pub fn new(model: M) -> Self {
        let state = vec![0.0; model.state_len()];
        Processor { model, state }
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Inputs per frame.
    pub fn d_input(&self) -> usize {
        self.model.d_input()
    }

    /// Outputs per frame.
    pub fn d_output(&self) -> usize {
        self.model.d_output()
    }

    /// Back to the start of a stream (state zero).
    pub fn reset(&mut self) {
        self.state.iter_mut().for_each(|v| *v = 0.0);
    }

    /// The state, to save (copy it out) and later [`Processor::restore`].
    pub fn state(&self) -> &[f32] {
        &self.state
    }

    /// Restores a state saved from [`Processor::state`] (same model): checked for length and
    /// finiteness first, so a bad one changes nothing.
    pub fn restore(&mut self, saved: &[f32]) -> Result<(), StreamError> {
        check_len("saved state", self.state.len(), saved.len())?;
        check_finite("saved state", saved)?;
        self.state.copy_from_slice(saved);
        Ok(())
    }

    /// One frame: `x` (`d_input` values) → `y` (`d_output` values).
    #[inline]
    pub fn process(&mut self, x: &[f32], y: &mut [f32]) -> Result<(), StreamError> {
        check_len("input frame", self.model.d_input(), x.len())?;
        check_len("output frame", self.model.d_output(), y.len())?;
        check_finite("input frame", x)?;
        let _ftz = FlushToZero::enable();
        self.model.step_prechecked(&mut self.state, x, y);
        Ok(())
    }

    /// A block of frames, interleaved: `input` is `(T, d_input)` row-major, `output`
    /// `(T, d_output)`. The whole block is checked before the state is touched.
    pub fn process_block(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), StreamError> {
        let (di, dout) = (self.model.d_input(), self.model.d_output());
        if dout == 0 {
            // a user's own model may say so; the output rows below are chunks of d_output
            return Err(StreamError::Length {
                what: "model output width (must be positive)",
                expected: 1,
                got: 0,
            });
        }
        if di == 0 || !input.len().is_multiple_of(di) {
            return Err(StreamError::Length {
                what: "input block (a multiple of the input width)",
                expected: di * (input.len() / di.max(1)),
                got: input.len(),
            });
        }
        let frames = input.len() / di;
        check_len("output block", frames * dout, output.len())?;
        check_finite("input block", input)?;
        {
            let _ftz = FlushToZero::enable();
            for (x, y) in input.chunks_exact(di).zip(output.chunks_exact_mut(dout)) {
                self.model.step_prechecked(&mut self.state, x, y);
            }
        }
        flush_subnormals(&mut self.state);
        Ok(())
    }
}

impl<M: EventLayer> Processor<M> {
    /// One event frame with `dt`, the time since the previous event (event layers step with
    /// it; `dt` must be positive and finite).
    pub fn process_event(&mut self, x: &[f32], dt: f32, y: &mut [f32]) -> Result<(), StreamError> {
        check_len("input frame", self.model.d_input(), x.len())?;
        check_len("output frame", self.model.d_output(), y.len())?;
        check_finite("input frame", x)?;
        lrnnx_core::layer::check_time_step(0, dt)?;
        let _ftz = FlushToZero::enable();
        self.model.step_event_prechecked(&mut self.state, x, dt, y);
        Ok(())
    }
}
