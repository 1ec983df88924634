//! Streams an event-camera recording, event by event, through a small event-driven model.
//!
//! ```text
//! cargo run --release --example events -- FILE [--seed N]
//! ```
//!
//! FILE is an AEDAT 4.0 (`.aedat4`) or Prophesee EVT 3.0 (`.raw`) recording, detected from its
//! header (or extension). The model is one S5 time-varying layer (H = 16, P = 16, Event-SSM
//! mode) with fresh weights from the training crate's initializer (seeded), exported to the
//! core and stepped through `lrnnx_stream::events::EventPipeline`: each event becomes 16 input
//! features (polarity, position, Fourier features of the position) and its time since the
//! previous event is the event time step. The same events then go through a Mamba layer
//! (H = 16, STREAM mode) for comparison.
//!
//! Prints the recording's size, the decode and model throughputs (events per second, on one
//! core: decoding is the best of several decodes of the whole file held in memory; the model
//! time is the sum over chunks of 8192 events of each chunk's best time over several passes),
//! and a last line
//! `events: file=... events=N decode_meps=... model_meps=...` (model = the S5 layer).

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use lrnnx::core::EventLayer;
use lrnnx::export::{export, CoreLayer};
use lrnnx::stream::events::{decode, EventPipeline, EventTiming, Recording};
use lrnnx::train::candle_core::{DType, Device};
use lrnnx::train::init::{init_params, Rng};
use serde_json::json;

/// Best wall time of `f` over passes until `budget` is spent (at least 3 passes).
fn best_of<T>(budget: Duration, mut f: impl FnMut() -> T) -> (Duration, T) {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut passes = 0;
    loop {
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed());
        passes += 1;
        if passes >= 3 && start.elapsed() >= budget {
            return (best, out);
        }
    }
}

/// Steps every event of `rec` through `layer`, pass after pass (each from a reset state) for
/// about `budget`; returns (time of one pass, sum of the last output). The pass is timed in
/// chunks of 8192 events and each chunk's best time over the passes is kept, so that a pass
/// on a shared machine is not charged for the moments another process had the core.
fn stream<L: EventLayer + ?Sized>(
    layer: &L,
    rec: &Recording,
    timing: EventTiming,
) -> Result<(Duration, f32), Box<dyn Error>> {
    const CHUNK: usize = 8192;
    let mut pipe = EventPipeline::new(layer, rec.width, rec.height, timing)?;
    let chunks = rec.events.len().div_ceil(CHUNK);
    let mut best = vec![Duration::MAX; chunks];
    let mut sum = 0.0f32;
    let start = Instant::now();
    let mut passes = 0;
    while passes < 5 || start.elapsed() < Duration::from_millis(1500) {
        pipe.reset();
        for (b, events) in best.iter_mut().zip(rec.events.chunks(CHUNK)) {
            let t = Instant::now();
            let y = pipe.run_last(events)?;
            *b = (*b).min(t.elapsed());
            sum = y.iter().sum();
        }
        passes += 1;
    }
    Ok((best.iter().sum(), sum))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(file) = args.first() else {
        eprintln!("usage: events FILE [--seed N]   (FILE: .aedat4 or EVT 3.0 .raw)");
        std::process::exit(2);
    };
    let seed = match args.iter().position(|a| a == "--seed") {
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .ok_or("--seed needs an integer")?,
        None => 0u64,
    };
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let name = Path::new(file)
        .file_name()
        .map_or(file.clone(), |n| n.to_string_lossy().into_owned());
    let (decode_time, rec) = best_of(Duration::from_millis(300), || decode(&bytes, file));
    let rec = rec?;
    let n = rec.events.len();
    if n == 0 {
        return Err(format!("{file}: no events").into());
    }
    let on = rec.events.iter().filter(|e| e.on).count();
    let secs = rec.duration_us() as f64 * 1e-6;
    println!(
        "{name}: {} {}x{}, {n} events ({on} ON, {} OFF), {} triggers, {secs:.3} s of recording \
         ({:.3} M events/s of recording)",
        rec.format,
        rec.width,
        rec.height,
        n - on,
        rec.triggers.len(),
        n as f64 / secs.max(1e-9) * 1e-6
    );
    let decode_meps = n as f64 / decode_time.as_secs_f64() * 1e-6;
    println!(
        "decode: {:.2} ms for {} bytes, {decode_meps:.1} M events/s",
        decode_time.as_secs_f64() * 1e3,
        bytes.len()
    );

    let timing = EventTiming::default();
    let (dev, dt) = (Device::Cpu, DType::F32);
    let mut rng = Rng::new(seed);
    let s5_class = "lrnnx.models.ltv.s5.S5";
    let s5_kw = json!({"d_model": 16, "d_state": 16});
    let s5 = export(
        s5_class,
        &s5_kw,
        &init_params(s5_class, &s5_kw, &mut rng, dt, &dev)?,
    )?;
    let CoreLayer::S5Ltv(s5) = s5 else {
        return Err("the S5 export is not an S5Ltv".into());
    };
    let (s5_time, s5_sum) = stream(&s5, &rec, timing)?;
    let model_meps = n as f64 / s5_time.as_secs_f64() * 1e-6;
    println!(
        "model S5 (time-varying, Event-SSM, H=16 P=16): {:.2} ms per pass, {:.1} ns/event, \
         {model_meps:.1} M events/s, {:.0}x real time (last output sum {s5_sum:.4})",
        s5_time.as_secs_f64() * 1e3,
        s5_time.as_secs_f64() * 1e9 / n as f64,
        secs / s5_time.as_secs_f64()
    );
    if !s5_sum.is_finite() {
        return Err("the S5 output is not finite".into());
    }

    let m_class = "lrnnx.models.ltv.mamba.Mamba";
    let m_kw = json!({"d_model": 16});
    let mamba = export(
        m_class,
        &m_kw,
        &init_params(m_class, &m_kw, &mut rng, dt, &dev)?,
    )?;
    let CoreLayer::Mamba(mamba) = mamba else {
        return Err("the Mamba export is not a Mamba".into());
    };
    let (m_time, m_sum) = stream(&mamba, &rec, timing)?;
    println!(
        "model Mamba (STREAM, H=16 E=32 N=16): {:.2} ms per pass, {:.1} ns/event, {:.2} M \
         events/s (last output sum {m_sum:.4})",
        m_time.as_secs_f64() * 1e3,
        m_time.as_secs_f64() * 1e9 / n as f64,
        n as f64 / m_time.as_secs_f64() * 1e-6
    );
    println!(
        "events: file={name} events={n} decode_meps={decode_meps:.1} model_meps={model_meps:.1}"
    );
    Ok(())
}
