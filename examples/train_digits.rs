//! Trains a small lrnnx sequence classifier on scikit-learn's 8×8 digits, each image read
//! as a sequence of 64 pixels (one feature per step), and prints the held-out accuracy.
//!
//! ```text
//! cargo run --release --example train_digits                 # full run (30 epochs, ~20 s; what CI runs)
//! cargo run --release --example train_digits -- --epochs 2   # short run
//! ```
//!
//! Options: `--epochs N`, `--seed S`, `--layer s5|lru`, `--d-model H`, `--d-state N`,
//! `--lr X`, `--batch B`, `--no-progress`, `--data PATH` (default
//! `tests/data/digits/digits.bin`; see the README there for its origin and format).
//! Split: the first 1437 images train, the last 360 are held out (fixed).
//! The last line is `train_digits: held_out_accuracy=<x> epochs=<n> seconds=<s>`.

use std::process::ExitCode;
use std::time::Instant;

use lrnnx_train::trainer::{accuracy, train, Activation, Dataset, SeqClassifier, TrainConfig};
use serde_json::json;

const IMAGES: usize = 1797;
const PIXELS: usize = 64;
const HELD_OUT: usize = 360;

struct Args {
    epochs: usize,
    seed: u64,
    layer: String,
    d_model: usize,
    d_state: usize,
    lr: f64,
    batch: usize,
    progress: bool,
    linear: bool,
    threads: usize,
    data: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        epochs: 30,
        seed: 0,
        layer: "s5".into(),
        d_model: 32,
        d_state: 32,
        lr: 1e-2,
        batch: 32,
        progress: true,
        linear: false,
        threads: 1,
        data: format!(
            "{}/tests/data/digits/digits.bin",
            env!("CARGO_MANIFEST_DIR")
        ),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-progress" {
            a.progress = false;
            continue;
        }
        if flag == "--linear" {
            a.linear = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: cannot read `{value}`");
        match flag.as_str() {
            "--epochs" => a.epochs = value.parse().map_err(bad)?,
            "--seed" => a.seed = value.parse().map_err(bad)?,
            "--d-model" => a.d_model = value.parse().map_err(bad)?,
            "--d-state" => a.d_state = value.parse().map_err(bad)?,
            "--batch" => a.batch = value.parse().map_err(bad)?,
            "--threads" => a.threads = value.parse().map_err(bad)?,
            "--lr" => {
                a.lr = value
                    .parse()
                    .map_err(|_| format!("{flag}: cannot read `{value}`"))?
            }
            "--layer" => a.layer = value,
            "--data" => a.data = value,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

/// Reads the 1797 records of 65 bytes (64 pixels 0..16, label) into (train, held-out).
fn load(path: &str) -> Result<(Dataset, Dataset), String> {
    let raw = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if raw.len() != IMAGES * (PIXELS + 1) {
        return Err(format!(
            "{path}: {} bytes, expected {} (1797 records of 65)",
            raw.len(),
            IMAGES * (PIXELS + 1)
        ));
    }
    let split = |range: std::ops::Range<usize>| -> Result<Dataset, String> {
        let mut x = Vec::with_capacity(range.len() * PIXELS);
        let mut labels = Vec::with_capacity(range.len());
        for i in range.clone() {
            let rec = &raw[i * (PIXELS + 1)..(i + 1) * (PIXELS + 1)];
            if rec[..PIXELS].iter().any(|&p| p > 16) || rec[PIXELS] > 9 {
                return Err(format!("{path}: record {i} is out of range"));
            }
            x.extend(rec[..PIXELS].iter().map(|&p| p as f32 / 16.0));
            labels.push(rec[PIXELS] as u32);
        }
        Dataset::new(x, range.len(), PIXELS, 1, labels).map_err(|e| e.to_string())
    };
    Ok((
        split(0..IMAGES - HELD_OUT)?,
        split(IMAGES - HELD_OUT..IMAGES)?,
    ))
}

fn run() -> Result<(), String> {
    let a = parse()?;
    // candle sizes its CPU thread pools from these on first use; the model is small enough
    // that one thread is fastest (and losses do not depend on the count).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", a.threads.to_string());
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    }
    let (train_set, test_set) = load(&a.data)?;
    let (class, kwargs) = match a.layer.as_str() {
        "s5" => (
            "lrnnx.models.lti.s5.S5",
            json!({"d_model": a.d_model, "d_state": a.d_state, "discretization": "zoh"}),
        ),
        "lru" => (
            "lrnnx.models.lti.lru.LRU",
            json!({"d_model": a.d_model, "d_state": a.d_state}),
        ),
        other => return Err(format!("--layer {other}: expected s5 or lru")),
    };
    let start = Instant::now();
    let model = SeqClassifier::new(class, &kwargs, 1, 10, a.seed).map_err(|e| e.to_string())?;
    let model = model.with_activation(if a.linear {
        Activation::None
    } else {
        Activation::Gelu
    });
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch,
        lr: a.lr,
        min_lr: a.lr * 0.01,
        warmup_steps: 45,
        seed: a.seed,
        progress: a.progress,
        ..TrainConfig::default()
    };
    let report = train(&model, &train_set, &cfg).map_err(|e| e.to_string())?;
    let train_acc = accuracy(&model, &train_set, 256).map_err(|e| e.to_string())?;
    let held_out = accuracy(&model, &test_set, 256).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "train_digits: layer={} d_model={} d_state={} steps={} final_epoch_loss={:.4} \
         train_accuracy={:.4}",
        a.layer,
        a.d_model,
        a.d_state,
        report.steps,
        report.epoch_losses.last().copied().unwrap_or(f32::NAN),
        train_acc
    );
    println!(
        "train_digits: held_out_accuracy={held_out:.4} epochs={} seconds={seconds:.1}",
        a.epochs
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train_digits: {e}");
            ExitCode::FAILURE
        }
    }
}
