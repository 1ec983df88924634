//! The step interface shared by every layer, and the helpers that run a whole sequence by stepping.
//!
//! A layer holds only its (discretized) weights; the recurrent state lives in a caller-owned
//! `[f32]` of [`Layer::state_len`] elements, zero-initialised. A zeroed state is the start of a
//! sequence; copying the slice saves or restores it; one set of weights serves any number of
//! states (channels, streams, batch rows). Some layers keep a small working area at the end of
//! the state slice (documented per layer); it carries no information between steps.

use crate::error::{check_finite_input, check_len, Error, Result};

/// A recurrent layer that consumes one input vector per step.
pub trait Layer {
    /// Number of input features per step.
    fn d_input(&self) -> usize;
    /// Number of output features per step.
    fn d_output(&self) -> usize;
    /// Number of `f32` elements of the caller-owned state (zero = start of sequence).
    fn state_len(&self) -> usize;

    /// The recurrence for one sample. Called by [`Layer::step`] once the lengths of `state`,
    /// `x` and `y` are known to be right and `x` is finite; it must not allocate. Implementors
    /// provide it; users call [`Layer::step`].
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]);

    /// One step: reads `x` (`d_input` values), advances `state`, writes `y` (`d_output` values).
    ///
    /// Errors (the state is left untouched): a buffer of the wrong length, or a non-finite `x`.
    /// Never panics, never allocates.
    #[inline]
    fn step(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) -> Result<()> {
        check_len("state", self.state_len(), state.len())?;
        check_len("input x", self.d_input(), x.len())?;
        check_len("output y", self.d_output(), y.len())?;
        check_finite_input(x)?;
        self.step_prechecked(state, x, y);
        Ok(())
    }
}

/// A layer whose step also takes the time elapsed since the previous sample (event-driven /
/// asynchronous mode: S5 Event-SSM, Mamba STREAM).
pub trait EventLayer: Layer {
    /// The recurrence for one event with time step `dt` (already checked: positive and finite).
    fn step_event_prechecked(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]);

    /// One event: like [`Layer::step`], with `dt` the time since the previous event.
    ///
    /// Errors (the state is left untouched): wrong lengths, non-finite `x`, or a `dt` that is
    /// zero, negative, NaN or infinite ([`Error::InvalidTimeStep`]).
    #[inline]
    fn step_event(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]) -> Result<()> {
        check_len("state", self.state_len(), state.len())?;
        check_len("input x", self.d_input(), x.len())?;
        check_len("output y", self.d_output(), y.len())?;
        check_finite_input(x)?;
        check_time_step(0, dt)?;
        self.step_event_prechecked(state, x, dt, y);
        Ok(())
    }
}

/// Implements, for a layer `$layer<W>` whose weights are fully checked by its config's
/// `validate`, the three methods every layer has: `from_weights` (a zero-copy view of a weight
/// buffer in the stepping layout, as written by `from_lrnnx` or an export: checks the config,
/// the buffer length and that every value is finite), `config()` and `weights()`.
/// A fourth argument, a function `fn(&$layer<W>) -> Result<()>`, adds the layer's own checks of
/// its values (a domain the layout's values must lie in).
macro_rules! weight_view_methods {
    ($layer:ident, $config:ty, $what:literal) => {
        $crate::layer::weight_view_methods!($layer, $config, $what, $crate::layer::no_value_checks);
    };
    ($layer:ident, $config:ty, $what:literal, $values:path) => {
        impl<W: AsRef<[f32]>> $layer<W> {
            /// Views an already discretized weight buffer (as written by `from_lrnnx` or an
            /// export) without copying. Checks the configuration, the buffer's length, that
            /// every value is finite, and the layer's value domain where it has one.
            pub fn from_weights(config: $config, weights: W) -> $crate::Result<Self> {
                config.validate()?;
                $crate::error::check_len("weights", config.weights_len(), weights.as_ref().len())?;
                $crate::error::check_finite_weights($what, weights.as_ref())?;
                let layer = $layer { config, weights };
                $values(&layer)?;
                Ok(layer)
            }

            /// The configuration.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// The discretized weights in the stepping layout (for export).
            pub fn weights(&self) -> &[f32] {
                self.weights.as_ref()
            }
        }
    };
}
pub(crate) use weight_view_methods;

/// The value check of a layer without one (see [`weight_view_methods`]).
pub(crate) fn no_value_checks<T>(_: &T) -> Result<()> {
    Ok(())
}

/// A time step must be a positive finite number.
#[inline]
pub fn check_time_step(index: usize, dt: f32) -> Result<()> {
    if dt.is_finite() && dt > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidTimeStep { index, value: dt })
    }
}

/// Checks the shapes of a sequence call and returns its length `L`.
fn check_sequence<L: Layer + ?Sized>(
    layer: &L,
    state: &[f32],
    xs: &[f32],
    ys: &[f32],
) -> Result<usize> {
    check_len("state", layer.state_len(), state.len())?;
    let (di, dout) = (layer.d_input(), layer.d_output());
    if dout == 0 {
        // a user's own layer may say so; the output rows below are chunks of d_output
        return Err(Error::InvalidConfig {
            what: "layer",
            reason: "d_output must be positive",
        });
    }
    if di == 0 || !xs.len().is_multiple_of(di) {
        return Err(Error::BufferLength {
            what: "input sequence (a multiple of d_input)",
            expected: di * (xs.len() / di.max(1)),
            got: xs.len(),
        });
    }
    let len = xs.len() / di;
    check_len("output sequence", len * dout, ys.len())?;
    check_finite_input(xs)?;
    Ok(len)
}

/// Runs a whole sequence by stepping: `xs` is `(L, d_input)` row-major, `ys` is `(L, d_output)`.
/// `state` carries over from (and into) the surrounding calls.
///
/// The whole input is validated before the state is touched, so an error loses nothing.
pub fn run_sequence<L: Layer + ?Sized>(
    layer: &L,
    state: &mut [f32],
    xs: &[f32],
    ys: &mut [f32],
) -> Result<()> {
    check_sequence(layer, state, xs, ys)?;
    let (di, dout) = (layer.d_input(), layer.d_output());
    for (x, y) in xs.chunks_exact(di).zip(ys.chunks_exact_mut(dout)) {
        layer.step_prechecked(state, x, y);
    }
    Ok(())
}

/// Runs an event sequence by stepping: like [`run_sequence`], with `dts[t]` the time since the
/// previous event. Every time step must be positive and finite (checked before the state is
/// touched; [`Error::InvalidTimeStep`] names the first bad one).
pub fn run_event_sequence<L: EventLayer + ?Sized>(
    layer: &L,
    state: &mut [f32],
    xs: &[f32],
    dts: &[f32],
    ys: &mut [f32],
) -> Result<()> {
    let len = check_sequence(layer, state, xs, ys)?;
    check_len("time steps", len, dts.len())?;
    for (i, &dt) in dts.iter().enumerate() {
        check_time_step(i, dt)?;
    }
    let (di, dout) = (layer.d_input(), layer.d_output());
    for ((x, y), &dt) in xs.chunks_exact(di).zip(ys.chunks_exact_mut(dout)).zip(dts) {
        layer.step_event_prechecked(state, x, dt, y);
    }
    Ok(())
}

/// A shared reference steps like the layer it points to (one set of weights, many states).
impl<L: Layer + ?Sized> Layer for &L {
    #[inline]
    fn d_input(&self) -> usize {
        (**self).d_input()
    }
    #[inline]
    fn d_output(&self) -> usize {
        (**self).d_output()
    }
    #[inline]
    fn state_len(&self) -> usize {
        (**self).state_len()
    }
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        (**self).step_prechecked(state, x, y)
    }
}

/// A shared reference steps events like the layer it points to.
impl<L: EventLayer + ?Sized> EventLayer for &L {
    #[inline]
    fn step_event_prechecked(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]) {
        (**self).step_event_prechecked(state, x, dt, y)
    }
}
