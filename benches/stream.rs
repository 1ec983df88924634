//! Time per sample of lrnnx-stream's processor on silence vs on signal: the denormal guard
//! keeps a long silence from slowing the recurrence down.
//!
//! The model is an LRU (H = 16, N = 32, real decay 0.9995 per sample) fed the quiet tail of a
//! sound (an impulse of 1e−36) and then silence, so its state spends most of the run in the
//! subnormal range, as a real recurrence does over a long enough silence. Measured in
//! one process: the processor (flush-to-zero + state floor) on silence and on signal, and the
//! same layer stepped directly (no guard) on silence and on signal, as the baseline.
//!
//! `cargo bench --bench stream`

use std::hint::black_box;
use std::time::Instant;

use lrnnx::core::{Layer, Lru, LruConfig, SliceParams, TensorView};
use lrnnx::stream::Processor;

const H: usize = 16;
const N: usize = 32;
const SAMPLES: usize = 40_000;

fn lru() -> Lru<Vec<f32>> {
    let nu = vec![(-(0.9995f32.ln())).ln(); N];
    let theta = vec![-30.0; N];
    let gamma = vec![0.0; N];
    let b: Vec<f32> = (0..N * H)
        .map(|k| ((k * 7 % 11) as f32 - 5.0) / 10.0)
        .collect();
    let c: Vec<f32> = (0..H * N)
        .map(|k| ((k * 5 % 13) as f32 - 6.0) / 10.0)
        .collect();
    let z = vec![0.0; N * H];
    let d = vec![0.5; H];
    let entries = [
        (
            "nu_log",
            TensorView {
                data: &nu,
                shape: &[N],
            },
        ),
        (
            "theta_log",
            TensorView {
                data: &theta,
                shape: &[N],
            },
        ),
        (
            "gamma_log",
            TensorView {
                data: &gamma,
                shape: &[N],
            },
        ),
        (
            "B_re",
            TensorView {
                data: &b,
                shape: &[N, H],
            },
        ),
        (
            "B_im",
            TensorView {
                data: &z,
                shape: &[N, H],
            },
        ),
        (
            "C_re",
            TensorView {
                data: &c,
                shape: &[H, N],
            },
        ),
        (
            "C_im",
            TensorView {
                data: &z,
                shape: &[H, N],
            },
        ),
        (
            "D",
            TensorView {
                data: &d,
                shape: &[H],
            },
        ),
    ];
    let cfg = LruConfig {
        d_model: H,
        d_state: N,
    };
    Lru::from_lrnnx(
        cfg,
        &SliceParams { entries: &entries },
        vec![0.0; cfg.weights_len()],
    )
    .expect("bench layer")
}

/// Best of 5: ns per sample.
fn time(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e9 / SAMPLES as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let layer = lru();
    let signal: Vec<f32> = (0..SAMPLES * H)
        .map(|k| ((k as f32) * 0.013).sin())
        .collect();
    let silence = vec![0.0f32; SAMPLES * H];
    // The tail of a sound that has almost died away: the state enters the subnormal range
    // after ~2,000 samples and stays there for ~30,000 (decay 0.9995 per sample).
    let impulse = vec![1e-36f32; H];
    let mut out = vec![0.0f32; SAMPLES * H];
    let mut y = vec![0.0f32; H];

    let mut direct = |input: &[f32], out: &mut [f32]| {
        let mut state = vec![0.0f32; layer.state_len()];
        layer.step(&mut state, &impulse, &mut y).unwrap();
        for (x, o) in input.chunks_exact(H).zip(out.chunks_exact_mut(H)) {
            layer.step_prechecked(&mut state, black_box(x), o);
        }
        black_box(&state);
    };
    let direct_signal = time(|| direct(&signal, &mut out));
    let direct_silence = time(|| direct(&silence, &mut out));

    let processed = |input: &[f32], out: &mut [f32]| {
        let mut p = Processor::new(&layer);
        p.process(&impulse, &mut [0.0; H]).unwrap();
        for (x, o) in input.chunks(256 * H).zip(out.chunks_mut(256 * H)) {
            p.process_block(black_box(x), o).unwrap();
        }
        black_box(p.state());
    };
    let proc_signal = time(|| processed(&signal, &mut out));
    let proc_silence = time(|| processed(&silence, &mut out));

    println!("stream bench: LRU H={H} N={N}, {SAMPLES} samples after a 1e-36 impulse, best of 5");
    println!("  direct step (no guard): signal {direct_signal:7.1} ns/sample, silence {direct_silence:7.1} ns/sample, silence/signal {:.2}", direct_silence / direct_signal);
    println!("  processor (FTZ+floor):  signal {proc_signal:7.1} ns/sample, silence {proc_silence:7.1} ns/sample, silence/signal {:.2}", proc_silence / proc_signal);
    println!(
        "  processor vs direct on silence: {:.1}x faster",
        direct_silence / proc_silence
    );
}
