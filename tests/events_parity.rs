//! Events through the stream pipeline equal the training crate's parallel forward.
//!
//! A few thousand real events (the shipped DAVIS346 recording) become per-event inputs and
//! event time steps (`lrnnx::stream::events`); the same inputs and time steps go through
//! lrnnx-train's parallel forward (`TrainLayer::forward` with `time_steps`, float32) of an S5
//! time-varying layer (Event-SSM) and a Mamba layer (STREAM), and, after export to the core,
//! event by event through `EventPipeline`. Both outputs must agree to float32 rounding
//! (`max|Δ| ≤ 2e-5·max|y| + 1e-6`, the bound of the training-vs-core cross check). A second part feeds hostile
//! timestamps (bursts of equal ones, huge gaps, steps back under the clamp policy) and checks
//! that every output stays finite.

use std::path::Path;

use lrnnx::export::export;
use lrnnx::stream::events::{read_file, Backwards, Event, EventPipeline, EventTiming};
use lrnnx::train::candle_core::{DType, Device, Tensor};
use lrnnx::train::init::{fresh, Rng};
use serde_json::{json, Value};

/// The bound of the training-vs-core cross check (tests/cross_mode.rs). With τ in ms the
/// modes barely decay over these 4096 events (Ā ≈ 1: near-integrators), so each side's f32
/// rounding accumulates; the largest relative difference measured is 1.5e-5 (bilinear), the
/// others below 6e-6.
const REL_TOL: f64 = 2e-5;
const ABS_TOL: f64 = 1e-6;

fn recording() -> lrnnx::stream::events::Recording {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/events/davis346.aedat4");
    read_file(path).unwrap()
}

/// Streamed vs parallel outputs of one layer over `events`; returns (max |Δ|, max |y|).
fn compare(
    class: &str,
    kw: &Value,
    seed: u64,
    events: &[Event],
    timing: EventTiming,
) -> (f64, f64) {
    let layer = fresh(class, kw, &mut Rng::new(seed), DType::F32, &Device::Cpu).unwrap();
    let core = export(class, kw, layer.params()).unwrap();
    let ev_layer = core.as_event_layer().expect("an event layer");
    let mut pipe = EventPipeline::new(ev_layer, 346, 260, timing).unwrap();
    let h = ev_layer.d_input();
    let d_out = ev_layer.d_output();
    let mut streamed = vec![0.0f32; events.len() * d_out];
    pipe.run(events, &mut streamed).unwrap();

    let xs = pipe.encoder().encode_all(events).unwrap();
    let taus = timing.time_steps(events).unwrap();
    let l = events.len();
    let xt = Tensor::from_vec(xs, (1, l, h), &Device::Cpu).unwrap();
    let tt = Tensor::from_vec(taus, (1, l), &Device::Cpu).unwrap();
    let parallel: Vec<f32> = layer
        .forward(&xt, Some(&tt))
        .and_then(|y| y.flatten_all())
        .and_then(|y| y.to_vec1())
        .unwrap();
    assert_eq!(parallel.len(), streamed.len());
    let scale = parallel
        .iter()
        .fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    let max_abs = parallel
        .iter()
        .zip(&streamed)
        .map(|(&a, &b)| {
            let d = (a as f64 - b as f64).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max);
    (max_abs, scale)
}

#[test]
fn streamed_events_equal_the_parallel_forward() {
    let rec = recording();
    // 4096 consecutive real events from the middle of the recording (equal timestamps
    // included).
    let events = &rec.events[20_000..24_096];
    assert!(events.windows(2).any(|w| w[0].t == w[1].t));
    let mut failures = Vec::new();
    let s5 = "lrnnx.models.ltv.s5.S5";
    let mamba = "lrnnx.models.ltv.mamba.Mamba";
    let cases = [
        (s5, json!({"d_model": 16, "d_state": 16})),
        (
            s5,
            json!({"d_model": 16, "d_state": 16, "discretization": "bilinear"}),
        ),
        (
            s5,
            json!({"d_model": 16, "d_state": 16, "discretization": "dirac", "conj_sym": true}),
        ),
        (s5, json!({"d_model": 12, "d_state": 10})),
        (mamba, json!({"d_model": 16})),
        (mamba, json!({"d_model": 16, "discretization": "zoh"})),
    ];
    for (unit, label) in [(1000.0, "τ in ms"), (10.0, "τ in 10 µs")] {
        let timing = EventTiming {
            time_unit_us: unit,
            ..EventTiming::default()
        };
        for (i, (class, kw)) in cases.iter().enumerate() {
            let (max_abs, scale) = compare(class, kw, 100 + i as u64, events, timing);
            let ok = max_abs <= REL_TOL * scale + ABS_TOL;
            println!(
                "{class} {kw} ({label}): max|y|={scale:.3e} max|Δ|={max_abs:.3e} {}",
                if ok { "ok" } else { "FAIL" }
            );
            assert!(scale > 1e-3, "{class} {kw}: output is trivially small");
            if !ok {
                failures.push(format!(
                    "{class} {kw} ({label}): {max_abs:.3e} vs {scale:.3e}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn hostile_timestamps_never_give_nan() {
    let rec = recording();
    let mut events: Vec<Event> = rec.events[..3000].to_vec();
    // Bursts of equal timestamps, gaps of an hour and of 10^12 s, and steps back.
    for (i, e) in events.iter_mut().enumerate() {
        e.t = match i % 500 {
            0..=99 => 1_000_000,
            100 => 3_600_000_000,
            200 => i64::MAX / 2,
            300 => 5, // back
            _ => e.t,
        } + (i as i64 / 500) * 7;
    }
    let timing = EventTiming {
        backwards: Backwards::Clamp,
        ..EventTiming::default()
    };
    let cases = [
        (
            "lrnnx.models.ltv.s5.S5",
            json!({"d_model": 16, "d_state": 16}),
        ),
        (
            "lrnnx.models.ltv.s5.S5",
            json!({"d_model": 16, "d_state": 16, "discretization": "bilinear"}),
        ),
        (
            "lrnnx.models.ltv.s5.S5",
            json!({"d_model": 16, "d_state": 16, "discretization": "dirac"}),
        ),
        ("lrnnx.models.ltv.mamba.Mamba", json!({"d_model": 16})),
        (
            "lrnnx.models.ltv.mamba.Mamba",
            json!({"d_model": 16, "discretization": "bilinear"}),
        ),
        (
            "lrnnx.models.ltv.mamba.Mamba",
            json!({"d_model": 16, "discretization": "zoh"}),
        ),
        (
            "lrnnx.models.ltv.mamba.Mamba",
            json!({"d_model": 16, "discretization": "dirac"}),
        ),
    ];
    for (i, (class, kw)) in cases.iter().enumerate() {
        let layer = fresh(class, kw, &mut Rng::new(i as u64), DType::F32, &Device::Cpu).unwrap();
        let core = export(class, kw, layer.params()).unwrap();
        let ev_layer = core.as_event_layer().unwrap();
        let mut pipe = EventPipeline::new(ev_layer, 346, 260, timing).unwrap();
        let mut out = vec![0.0f32; events.len() * ev_layer.d_output()];
        pipe.run(&events, &mut out).unwrap();
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{class} {kw}: non-finite output"
        );
        // Under the default policy the first step back is an error naming it.
        let mut strict = EventPipeline::new(ev_layer, 346, 260, EventTiming::default()).unwrap();
        match strict.run(&events, &mut out) {
            Err(lrnnx::stream::events::EventError::TimeWentBackwards { index, .. }) => {
                // Event 200 jumps to i64::MAX / 2; event 201 is the first one before it.
                assert_eq!(index, 201)
            }
            other => panic!("{other:?}"),
        }
    }
}
