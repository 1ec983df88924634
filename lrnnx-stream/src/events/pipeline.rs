//! Events through an event-driven core layer, one at a time: S5 time-varying in Event-SSM mode
//! or Mamba in STREAM mode (any [`EventLayer`]).
//!
//! Each event `e_i = (t_i, x_i, y_i, p_i)` becomes one input vector `u_i` ([`EventEncoder`]) and
//! one event time step `τ_i` ([`EventTiming`]), and the layer steps once:
//! `y_i = layer.step_event(state, u_i, τ_i)`.
//!
//! **Input encoding** (`d = d_input` features, `W × H` sensor, pixel centres mapped into
//! `(−1, 1)`):
//!
//! ```text
//! x̂ = (2x + 1)/W − 1          ŷ = (2y + 1)/H − 1
//! u[0] = +1 (ON) or −1 (OFF)   u[1] = x̂   u[2] = ŷ
//! u[3 + 4k + 0] = sin(2ᵏπ x̂)   u[3 + 4k + 1] = cos(2ᵏπ x̂)
//! u[3 + 4k + 2] = sin(2ᵏπ ŷ)   u[3 + 4k + 3] = cos(2ᵏπ ŷ)      k = 0, 1, 2, ...
//! ```
//!
//! truncated to `d` features (`d ≥ 3`): a polarity, the position, and Fourier features of the
//! position at doubling frequencies (for `d = 16`: the three base features, octaves k = 0, 1, 2
//! in full and `sin(8π x̂)`). The per-column and per-row parts are tabulated once, at
//! construction, so encoding an event is `d` additions.
//!
//! **Time steps.** `τ_i = (t_i − t_{i−1}) · (1 / time_unit_us)`, then clamped into
//! `[min_dt, max_dt]`:
//!
//! * the first event (or the first after [`EventPipeline::reset`]) gets `τ = min_dt`; the state is
//!   zero then, so its transition has no effect and any positive value gives the same output;
//! * equal timestamps (`t_i = t_{i−1}`, common: cameras stamp in whole µs and read out events
//!   in bursts) and steps shorter than `min_dt` get `τ = min_dt` (default: 1 µs);
//! * long gaps pass through (the layer's state decays as `exp(τ·Re ΔΛ)`), capped at `max_dt`
//!   (default `1e6` time units, 1000 s) so that `τ` stays finite;
//! * a timestamp earlier than the previous one is, by [`Backwards::Error`] (the default),
//!   [`EventError::TimeWentBackwards`] naming the event's index and both timestamps, with the
//!   state left as it was; with [`Backwards::Clamp`] the event is taken as simultaneous with the
//!   latest timestamp seen (`τ = min_dt`), and later time steps are measured from that latest
//!   timestamp.
//!
//! So a zero, negative, infinite or NaN time step never reaches the layer (which would refuse
//! it with `Error::InvalidTimeStep`), and the outputs stay finite.
//!
//! **Real time.** [`EventPipeline::step`] allocates nothing, takes no lock and does no I/O: the
//! state, the input and output vectors and the encoding tables are allocated in
//! [`EventPipeline::new`]. Flush-to-zero is on while the layer steps ([`crate::denormal`]), so a
//! state decaying through the subnormal range after a long gap costs no more than any other.

use lrnnx_core::EventLayer;

use super::{Event, EventError};
use crate::denormal::FlushToZero;

/// What to do with an event whose timestamp is earlier than the previous event's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backwards {
    /// Refuse it: [`EventError::TimeWentBackwards`] (the state is not touched).
    #[default]
    Error,
    /// Treat it as simultaneous with the latest timestamp seen (`τ = min_dt`).
    Clamp,
}

/// How timestamps become event time steps (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventTiming {
    /// Microseconds per unit of `τ` (default 1000: `τ` in milliseconds).
    pub time_unit_us: f64,
    /// Smallest time step, given to equal timestamps (default 0.001 = 1 µs at the default unit).
    pub min_dt: f32,
    /// Largest time step (default 1e6 units).
    pub max_dt: f32,
    /// Policy for decreasing timestamps.
    pub backwards: Backwards,
}

impl Default for EventTiming {
    fn default() -> Self {
        EventTiming {
            time_unit_us: 1000.0,
            min_dt: 1e-3,
            max_dt: 1e6,
            backwards: Backwards::Error,
        }
    }
}

impl EventTiming {
    /// Checks the settings: a positive finite unit whose inverse is finite too (a subnormal
    /// unit would make `1 / unit` infinite and a zero gap `0·∞ = NaN`), `0 < min_dt ≤ max_dt < ∞`.
    pub fn validate(&self) -> Result<(), EventError> {
        if !(self.time_unit_us.is_finite()
            && self.time_unit_us > 0.0
            && self.per_unit().is_finite())
        {
            return Err(EventError::Config(format!(
                "time_unit_us = {} must be positive and finite, with a finite inverse",
                self.time_unit_us
            )));
        }
        if !(self.min_dt.is_finite() && self.min_dt > 0.0) {
            return Err(EventError::Config(format!(
                "min_dt = {} must be positive and finite",
                self.min_dt
            )));
        }
        if !(self.max_dt.is_finite() && self.max_dt >= self.min_dt) {
            return Err(EventError::Config(format!(
                "max_dt = {} must be finite and at least min_dt = {}",
                self.max_dt, self.min_dt
            )));
        }
        Ok(())
    }

    /// `1 / time_unit_us`.
    #[inline(always)]
    fn per_unit(&self) -> f64 {
        1.0 / self.time_unit_us
    }

    /// The time steps of a whole event sequence (as [`EventPipeline::step`] computes them, from
    /// a fresh start): for a batch (parallel) forward of the same events.
    pub fn time_steps(&self, events: &[Event]) -> Result<Vec<f32>, EventError> {
        self.validate()?;
        let mut clock = Clock::default();
        events
            .iter()
            .map(|e| {
                let (tau, latest) = clock.peek(self, e.t)?;
                clock.commit(latest);
                Ok(tau)
            })
            .collect()
    }
}

/// The time-step state: the latest timestamp seen and the event count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Clock {
    latest: Option<i64>,
    index: u64,
}

impl Clock {
    /// `(τ, new latest timestamp)` for an event at `t`, without advancing.
    /// `τ = clamp((t − latest)/unit, min_dt, max_dt)`; `t < latest` follows the policy.
    #[inline]
    fn peek(&self, timing: &EventTiming, t: i64) -> Result<(f32, i64), EventError> {
        let Some(prev) = self.latest else {
            return Ok((timing.min_dt, t));
        };
        if t < prev {
            return match timing.backwards {
                Backwards::Error => Err(EventError::TimeWentBackwards {
                    index: self.index,
                    previous: prev,
                    got: t,
                }),
                Backwards::Clamp => Ok((timing.min_dt, prev)),
            };
        }
        // t ≥ prev: the difference fits a u64 exactly (wrapping arithmetic gives it even when
        // it overflows an i64). Multiplying by the reciprocal unit keeps a division off the
        // path from the timestamp to the layer's transition.
        let dt_us = t.wrapping_sub(prev) as u64 as f64;
        let tau = ((dt_us * timing.per_unit()) as f32).clamp(timing.min_dt, timing.max_dt);
        Ok((tau, t))
    }

    #[inline]
    fn commit(&mut self, latest: i64) {
        self.latest = Some(latest);
        self.index += 1;
    }
}

/// Per-event input vectors (the encoding in the module docs), tabulated per column and row.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEncoder {
    width: u16,
    height: u16,
    d: usize,
    /// `width × d`: the x-dependent features of each column (zeros elsewhere).
    x_table: Vec<f32>,
    /// `height × d`: the y-dependent features of each row (zeros elsewhere).
    y_table: Vec<f32>,
}

/// Which coordinate feature `j ≥ 1` depends on (`true`: x) and its value at `c ∈ (−1, 1)`:
/// `j = 1, 2` the coordinate itself, `j = 3 + 4k + m` `sin`/`cos(2ᵏπ c)` (m = 0, 1: x; 2, 3: y).
fn feature(j: usize, c: f64) -> (bool, f64) {
    match j {
        1 => (true, c),
        2 => (false, c),
        _ => {
            let (k, m) = ((j - 3) / 4, (j - 3) % 4);
            let w = std::f64::consts::PI * (1u64 << k.min(62)) as f64;
            let v = if m % 2 == 0 {
                (w * c).sin()
            } else {
                (w * c).cos()
            };
            (m < 2, v)
        }
    }
}

impl EventEncoder {
    /// Tables for a `width × height` sensor and `d ≥ 3` features.
    pub fn new(width: u16, height: u16, d: usize) -> Result<Self, EventError> {
        if width == 0 || height == 0 {
            return Err(EventError::Config(format!(
                "sensor size {width}x{height} must be positive"
            )));
        }
        if d < 3 {
            return Err(EventError::Config(format!(
                "the layer takes {d} input features; the event encoding needs at least 3 \
                 (polarity, x, y)"
            )));
        }
        let table = |n: u16, is_x: bool| {
            let mut t = vec![0.0f32; n as usize * d];
            for (i, row) in t.chunks_exact_mut(d).enumerate() {
                let c = (2 * i + 1) as f64 / n as f64 - 1.0;
                for (j, v) in row.iter_mut().enumerate().skip(1) {
                    let (on_x, value) = feature(j, c);
                    if on_x == is_x {
                        *v = value as f32;
                    }
                }
            }
            t
        };
        Ok(EventEncoder {
            width,
            height,
            d,
            x_table: table(width, true),
            y_table: table(height, false),
        })
    }

    /// Number of features.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Sensor `(width, height)`.
    pub fn sensor(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// Writes `u` (d features) for `e`; `false` (and `u` untouched) when the event lies outside
    /// the sensor or `u` has the wrong length.
    #[inline]
    pub fn encode(&self, e: &Event, u: &mut [f32]) -> bool {
        let d = self.d;
        let (xi, yi) = (e.x as usize * d, e.y as usize * d);
        let (Some(xr), Some(yr)) = (self.x_table.get(xi..xi + d), self.y_table.get(yi..yi + d))
        else {
            return false;
        };
        if u.len() != d {
            return false;
        }
        for ((o, &a), &b) in u.iter_mut().zip(xr).zip(yr) {
            *o = a + b;
        }
        u[0] = if e.on { 1.0 } else { -1.0 };
        true
    }

    /// The inputs of a whole event sequence, `(L, d)` row-major.
    pub fn encode_all(&self, events: &[Event]) -> Result<Vec<f32>, EventError> {
        let mut out = vec![0.0f32; events.len() * self.d];
        for (i, (e, u)) in events.iter().zip(out.chunks_exact_mut(self.d)).enumerate() {
            if !self.encode(e, u) {
                return Err(EventError::OutOfSensor {
                    index: i as u64,
                    x: e.x,
                    y: e.y,
                });
            }
        }
        Ok(out)
    }
}

/// An event-driven layer with its state, stepping one event at a time (see the module docs).
pub struct EventPipeline<'l, L: EventLayer + ?Sized> {
    layer: &'l L,
    encoder: EventEncoder,
    timing: EventTiming,
    clock: Clock,
    state: Vec<f32>,
    u: Vec<f32>,
    y: Vec<f32>,
}

impl<'l, L: EventLayer + ?Sized> EventPipeline<'l, L> {
    /// A pipeline for a `width × height` sensor over `layer` (fresh, zero state).
    pub fn new(
        layer: &'l L,
        width: u16,
        height: u16,
        timing: EventTiming,
    ) -> Result<Self, EventError> {
        timing.validate()?;
        if layer.d_output() == 0 {
            return Err(EventError::Config(
                "the layer has no outputs (d_output 0)".into(),
            ));
        }
        let encoder = EventEncoder::new(width, height, layer.d_input())?;
        Ok(EventPipeline {
            layer,
            encoder,
            timing,
            clock: Clock::default(),
            state: vec![0.0; layer.state_len()],
            u: vec![0.0; layer.d_input()],
            y: vec![0.0; layer.d_output()],
        })
    }

    /// The encoder (for building the same inputs for a batch forward).
    pub fn encoder(&self) -> &EventEncoder {
        &self.encoder
    }

    /// The timing settings.
    pub fn timing(&self) -> &EventTiming {
        &self.timing
    }

    /// Number of output features per event.
    pub fn d_output(&self) -> usize {
        self.y.len()
    }

    /// Events stepped since the last reset.
    pub fn events_seen(&self) -> u64 {
        self.clock.index
    }

    /// Back to the start of a stream: zero state, no previous timestamp, event index 0.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.clock = Clock::default();
    }

    /// One event: encodes it, computes its time step, steps the layer; returns the output
    /// (`d_output` values, valid until the next call). On an error (timestamp going backwards
    /// under [`Backwards::Error`], an event outside the sensor) nothing changes.
    #[inline]
    pub fn step(&mut self, e: &Event) -> Result<&[f32], EventError> {
        // a long gap decays the state through the subnormal range (crate::denormal)
        let _ftz = FlushToZero::enable();
        self.step_flushing(e)?;
        Ok(&self.y)
    }

    /// [`EventPipeline::step`] for a caller that holds a [`FlushToZero`] guard (one for a whole
    /// run of events rather than one per event).
    #[inline]
    fn step_flushing(&mut self, e: &Event) -> Result<(), EventError> {
        let (tau, latest) = self.clock.peek(&self.timing, e.t)?;
        if !self.encoder.encode(e, &mut self.u) {
            return Err(EventError::OutOfSensor {
                index: self.clock.index,
                x: e.x,
                y: e.y,
            });
        }
        // What `step_event` would check holds by construction: the buffers were sized from
        // this layer, the encoding tables are finite, and `tau` lies in [min_dt, max_dt]
        // (validated positive and finite), so the checked call's per-event checks are skipped.
        debug_assert!(tau.is_finite() && tau > 0.0);
        self.layer
            .step_event_prechecked(&mut self.state, &self.u, tau, &mut self.y);
        self.clock.commit(latest);
        Ok(())
    }

    /// Steps through `events`, writing the outputs to `out` (`events.len() × d_output`,
    /// row-major). Stops at the first bad event with its error (the events before it have been
    /// stepped and their outputs written).
    pub fn run(&mut self, events: &[Event], out: &mut [f32]) -> Result<(), EventError> {
        let d = self.y.len();
        if out.len() != events.len() * d {
            return Err(EventError::Config(format!(
                "output buffer has {} values, {} events × {d} outputs need {}",
                out.len(),
                events.len(),
                events.len() * d
            )));
        }
        let _ftz = FlushToZero::enable();
        for (e, o) in events.iter().zip(out.chunks_exact_mut(d)) {
            self.step_flushing(e)?;
            o.copy_from_slice(&self.y);
        }
        Ok(())
    }

    /// Steps through `events` keeping only the last output (returned); the fast path for
    /// measuring or for models whose read-out only needs the final state.
    pub fn run_last(&mut self, events: &[Event]) -> Result<&[f32], EventError> {
        let _ftz = FlushToZero::enable();
        for e in events {
            self.step_flushing(e)?;
        }
        Ok(&self.y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrnnx_core::Layer;

    /// A layer that shows what it is given: `y = [τ, u_0, .., u_{d−1}, steps so far]`, state =
    /// the step count.
    struct Probe {
        d: usize,
    }

    impl Layer for Probe {
        fn d_input(&self) -> usize {
            self.d
        }
        fn d_output(&self) -> usize {
            self.d + 2
        }
        fn state_len(&self) -> usize {
            1
        }
        fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
            self.step_event_prechecked(state, x, 1.0, y)
        }
    }

    impl EventLayer for Probe {
        fn step_event_prechecked(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]) {
            state[0] += 1.0;
            y[0] = dt;
            y[1..=self.d].copy_from_slice(x);
            y[self.d + 1] = state[0];
        }
    }

    fn ev(t: i64, x: u16, y: u16, on: bool) -> Event {
        Event { t, x, y, on }
    }

    /// A state that shrinks 1000× an event: `s₀ = 1`, `s_k = s_{k−1} · 10⁻³`, through the
    /// subnormal range after 13 events.
    struct Decay;

    impl Layer for Decay {
        fn d_input(&self) -> usize {
            3
        }
        fn d_output(&self) -> usize {
            1
        }
        fn state_len(&self) -> usize {
            2
        }
        fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
            self.step_event_prechecked(state, x, 1.0, y)
        }
    }

    impl EventLayer for Decay {
        fn step_event_prechecked(&self, state: &mut [f32], _: &[f32], _: f32, y: &mut [f32]) {
            state[1] += 1.0;
            state[0] = if state[1] == 1.0 {
                1.0
            } else {
                state[0] * 1e-3
            };
            y[0] = state[0];
        }
    }

    /// Stepped directly, the state becomes subnormal (so the check can fail); through the
    /// pipeline, with flush-to-zero on, it never holds one.
    #[test]
    fn the_pipeline_keeps_subnormals_out_of_the_state() {
        use crate::denormal::{has_subnormal, FlushToZero};
        let mut raw = [0.0f32; 2];
        let mut y = [0.0f32];
        let mut saw = false;
        for _ in 0..20 {
            Decay.step_event_prechecked(&mut raw, &[0.0; 3], 1.0, &mut y);
            saw |= has_subnormal(&raw);
        }
        assert!(saw, "the reference never became subnormal");
        let mut p = EventPipeline::new(&Decay, 8, 8, EventTiming::default()).unwrap();
        for t in 0..20 {
            p.step(&ev(t, 1, 1, true)).unwrap();
            if FlushToZero::SUPPORTED {
                assert!(!has_subnormal(&p.state), "subnormal state after event {t}");
            }
        }
        assert_eq!(p.state[0], 0.0);
        // run and run_last too: after 14 events the state would be 10⁻³⁹ (subnormal)
        let events: Vec<Event> = (0..14).map(|t| ev(t, 1, 1, true)).collect();
        if FlushToZero::SUPPORTED {
            p.reset();
            p.run_last(&events).unwrap();
            assert!(!has_subnormal(&p.state), "subnormal state after run_last");
            p.reset();
            p.run(&events, &mut [0.0; 14]).unwrap();
            assert!(!has_subnormal(&p.state), "subnormal state after run");
        }
    }

    #[test]
    fn encoding_matches_its_formula() {
        let (w, h, d) = (346u16, 260u16, 16usize);
        let enc = EventEncoder::new(w, h, d).unwrap();
        let mut u = vec![0.0f32; d];
        for &(x, y, on) in &[(0u16, 0u16, true), (345, 259, false), (100, 37, true)] {
            assert!(enc.encode(&ev(0, x, y, on), &mut u));
            let xh = (2.0 * x as f64 + 1.0) / w as f64 - 1.0;
            let yh = (2.0 * y as f64 + 1.0) / h as f64 - 1.0;
            let pi = std::f64::consts::PI;
            let mut want = vec![if on { 1.0 } else { -1.0 }, xh, yh];
            for k in 0..4 {
                let f = pi * 2f64.powi(k);
                want.extend([
                    (f * xh).sin(),
                    (f * xh).cos(),
                    (f * yh).sin(),
                    (f * yh).cos(),
                ]);
            }
            for (j, (&g, &w)) in u.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 1e-6,
                    "({x},{y}) feature {j}: {g} vs {w}"
                );
            }
        }
        assert!(!enc.encode(&ev(0, 346, 0, true), &mut u));
        assert!(!enc.encode(&ev(0, 0, 260, true), &mut u));
        assert!(!enc.encode(&ev(0, 0, 0, true), &mut u[..3]));
        assert!(EventEncoder::new(10, 10, 2).is_err());
        assert!(EventEncoder::new(0, 10, 4).is_err());
        let three = EventEncoder::new(4, 2, 3).unwrap();
        let mut u3 = [0.0f32; 3];
        assert!(three.encode(&ev(0, 3, 0, false), &mut u3));
        assert_eq!(u3, [-1.0, 0.75, -0.5]);
    }

    #[test]
    fn time_steps_follow_the_documented_policy() {
        let probe = Probe { d: 3 };
        let timing = EventTiming {
            time_unit_us: 100.0,
            min_dt: 0.01,
            max_dt: 50.0,
            backwards: Backwards::Error,
        };
        let mut p = EventPipeline::new(&probe, 8, 8, timing).unwrap();
        // first → min_dt; +250 µs → 2.5; equal → min_dt; +0.5 µs cannot happen (integer µs);
        // +1 µs → 0.01 (= min_dt exactly); a 1 s gap → capped at 50.
        let ts = [1000i64, 1250, 1250, 1251, 1_001_251];
        let want = [0.01f32, 2.5, 0.01, 0.01, 50.0];
        for (&t, &w) in ts.iter().zip(&want) {
            let y = p.step(&ev(t, 1, 2, true)).unwrap();
            assert!((y[0] - w).abs() < 1e-7, "t={t}: τ={} want {w}", y[0]);
        }
        assert_eq!(
            timing.time_steps(&ts.map(|t| ev(t, 0, 0, true))).unwrap(),
            want
        );
        // Going back: an error naming the event, nothing changes, the next good event goes on.
        let before = p.events_seen();
        match p.step(&ev(1_001_000, 1, 2, true)) {
            Err(EventError::TimeWentBackwards {
                index,
                previous,
                got,
            }) => assert_eq!((index, previous, got), (5, 1_001_251, 1_001_000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.events_seen(), before);
        let y = p.step(&ev(1_001_351, 1, 2, true)).unwrap();
        assert!((y[0] - 1.0).abs() < 1e-6 && y[4] == 6.0, "{y:?}");
        // Out of the sensor: an error, nothing changes.
        assert!(matches!(
            p.step(&ev(1_001_400, 8, 0, true)),
            Err(EventError::OutOfSensor {
                index: 6,
                x: 8,
                y: 0
            })
        ));
        assert_eq!(p.events_seen(), 6);
        // Clamp: a step back counts as simultaneous with the latest timestamp; the next step is
        // measured from that latest timestamp.
        let mut p = EventPipeline::new(
            &probe,
            8,
            8,
            EventTiming {
                backwards: Backwards::Clamp,
                ..timing
            },
        )
        .unwrap();
        let ts = [500i64, 900, 100, 1000];
        let want = [0.01f32, 4.0, 0.01, 1.0];
        for (&t, &w) in ts.iter().zip(&want) {
            let y = p.step(&ev(t, 0, 0, false)).unwrap();
            assert!((y[0] - w).abs() < 1e-6, "t={t}: τ={} want {w}", y[0]);
        }
        // Reset starts over.
        p.reset();
        assert_eq!(p.events_seen(), 0);
        assert_eq!(p.step(&ev(0, 0, 0, true)).unwrap()[0], 0.01);
        // Extreme timestamps stay finite and positive.
        let mut p = EventPipeline::new(&probe, 8, 8, EventTiming::default()).unwrap();
        for t in [i64::MIN, 0, i64::MAX] {
            let y = p.step(&ev(t, 0, 0, true)).unwrap();
            assert!(y[0].is_finite() && y[0] > 0.0);
        }
    }

    #[test]
    fn run_writes_every_output_and_checks_buffers() {
        let probe = Probe { d: 4 };
        let mut p = EventPipeline::new(&probe, 4, 4, EventTiming::default()).unwrap();
        let evs: Vec<Event> = (0..5)
            .map(|i| ev(i * 1000, i as u16 % 4, 1, i % 2 == 0))
            .collect();
        let mut out = vec![0.0f32; 5 * 6];
        p.run(&evs, &mut out).unwrap();
        let xs = p.encoder().encode_all(&evs).unwrap();
        let taus = p.timing().time_steps(&evs).unwrap();
        for (i, row) in out.chunks_exact(6).enumerate() {
            assert_eq!(row[0], taus[i]);
            assert_eq!(&row[1..5], &xs[i * 4..i * 4 + 4]);
            assert_eq!(row[5], (i + 1) as f32);
        }
        assert!(matches!(
            p.run(&evs, &mut out[..7]),
            Err(EventError::Config(_))
        ));
        assert_eq!(p.run_last(&evs[..0]).unwrap().len(), 6);
    }

    #[test]
    fn bad_settings_are_refused() {
        let probe = Probe { d: 3 };
        let base = EventTiming::default();
        for t in [
            EventTiming {
                time_unit_us: 0.0,
                ..base
            },
            EventTiming {
                time_unit_us: f64::NAN,
                ..base
            },
            // subnormal: 1 / unit is infinite
            EventTiming {
                time_unit_us: 1e-310,
                ..base
            },
            EventTiming {
                min_dt: 0.0,
                ..base
            },
            EventTiming {
                min_dt: f32::INFINITY,
                ..base
            },
            EventTiming {
                max_dt: f32::INFINITY,
                ..base
            },
            EventTiming {
                max_dt: 1e-4,
                ..base
            },
        ] {
            assert!(matches!(
                EventPipeline::new(&probe, 4, 4, t),
                Err(EventError::Config(_))
            ));
            assert!(t.time_steps(&[]).is_err());
        }
        let two = Probe { d: 2 };
        assert!(EventPipeline::new(&two, 4, 4, base).is_err());
    }
}
