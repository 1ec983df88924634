//! Token generation at batch 1 on one thread: the core language model
//! (`lrnnx_core::LanguageModel::generate`, no allocation) against the training crate's
//! `LanguageModel::generate` (candle, one thread) in the same process, on 2-layer models with
//! `d_model` 256, a byte vocabulary (256) and a key/value cache of 512 tokens.
//!
//! ```text
//! cargo bench --bench generate
//! ```
//!
//! Prints per model: `generate <mixers> core_full=<tok/s> core=<tok/s> candle=<tok/s>
//! speedup=<x>`, where `core_full` fills the whole 512-token context (one prompt token, 511
//! generated: attention reads a growing cache) and `core` / `candle` generate the same first
//! `CANDLE_TOKENS` tokens greedily (the speedup is their ratio). Best of 15 repetitions (60 for the
//! short core runs, 5 for candle); `--quick` for 2.
//!
//! A `parts` line per model gives the cost of each block's mixer alone (attention with 256
//! cached tokens) and of a whole step at half the context.

use std::hint::black_box;
use std::time::Instant;

use lrnnx::core::lm::{Sampling, SplitMix64};
use lrnnx::export_lm::export_lm;
use lrnnx::train::candle_core::{DType, Device, Tensor};
use lrnnx::train::init::Rng;
use lrnnx::train::lm::{init_params, LanguageModel, Sampling as TrainSampling};
use serde_json::json;

const CONTEXT: usize = 512;
const CANDLE_TOKENS: usize = 64;

fn model(mixers: [&str; 2], d_state: usize) -> LanguageModel {
    let kw = json!({
        "d_model": 256, "d_state": d_state, "n_layer": 2, "vocab_size": 256,
        "mixer_types": mixers, "rms_norm": true, "tie_embeddings": true,
        "fused_add_norm": false,
        "mixer_kwargs": {
            "S5": {"discretization": "zoh"},
            "attn": {"num_heads": 4, "num_heads_kv": 2, "causal": true},
        },
    });
    let params = init_params(&kw, &mut Rng::new(1), DType::F32, &Device::Cpu).unwrap();
    LanguageModel::from_lrnnx(&kw, params).unwrap()
}

/// Best tokens per second of `run` (which generates `tokens` tokens) over `reps` repetitions.
fn best_rate(reps: usize, tokens: usize, mut run: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            run();
            tokens as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Microseconds per call of `f`, best of 5 rounds of `n` calls.
fn micros(n: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The cost of each part of one step at half the context: every block's mixer alone (an
/// attention mixer with `CONTEXT / 2` cached tokens), and the whole step.
fn parts(lm: &lrnnx::export_lm::OwnedLm) -> String {
    use lrnnx::core::lm::Mixer;
    let d = lm.config().d_model;
    let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0.0f32; d];
    let mut line = String::new();
    for (i, b) in lm.blocks().iter().enumerate() {
        let mut st = vec![0.0f32; b.mixer.state_len()];
        let us = match &b.mixer {
            Mixer::Layer(l) => micros(2000, || {
                l.as_layer().step_prechecked(&mut st, &x, &mut y);
                black_box(&y);
            }),
            Mixer::Attention(a) => {
                for _ in 0..CONTEXT / 2 {
                    a.step(&mut st, &x, &mut y).unwrap();
                }
                let saved = st.clone();
                micros(2000, || {
                    st[0] = saved[0]; // rewind the position: always CONTEXT/2 cached tokens
                    a.step_prechecked(&mut st, &x, &mut y);
                    black_box(&y);
                })
            }
        };
        line += &format!("block{i}={us:.1}us ");
    }
    let mut state = vec![0.0f32; lm.state_len()];
    for t in 0..CONTEXT / 2 {
        lm.step(&mut state, t % 256).unwrap();
    }
    // Rewind only the attention positions (copying the whole state would time the copy).
    let mut positions = Vec::new();
    let mut off = 0;
    for b in lm.blocks() {
        if let Mixer::Attention(_) = b.mixer {
            positions.push((off, state[off]));
        }
        off += b.mixer.state_len();
    }
    let whole = micros(500, || {
        for &(at, p) in &positions {
            state[at] = p;
        }
        black_box(lm.step(&mut state, 65).unwrap());
    });
    line + &format!("step_at_half_context={whole:.1}us")
}

fn main() {
    // One thread for candle (its CPU kernels read RAYON_NUM_THREADS); the core never spawns.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let quick = std::env::args().any(|a| a == "--quick");
    // Many short repetitions: on a shared machine the best one is the uncontended speed.
    let reps = if quick { 2 } else { 15 };
    for (mixers, d_state) in [
        (["Mamba", "attn"], 16),
        (["LRU", "Mamba"], 16),
        (["S5", "attn"], 64),
    ] {
        let m = model(mixers, d_state);
        let lm = export_lm(&m, CONTEXT).unwrap();
        println!("parts {}+{}: {}", mixers[0], mixers[1], parts(&lm));
        let mut state = vec![0.0f32; lm.state_len()];
        let mut out = vec![0usize; CONTEXT - 1];
        let full = best_rate(reps, CONTEXT, || {
            state.iter_mut().for_each(|v| *v = 0.0);
            lm.generate(
                &mut state,
                &[65],
                Sampling::Greedy,
                &mut SplitMix64::new(0),
                &mut out,
            )
            .unwrap();
            black_box(&out);
        });
        let topk = best_rate(reps, CONTEXT, || {
            state.iter_mut().for_each(|v| *v = 0.0);
            let s = Sampling::Temperature {
                temperature: 0.8,
                top_k: Some(40),
            };
            lm.generate(&mut state, &[65], s, &mut SplitMix64::new(0), &mut out)
                .unwrap();
            black_box(&out);
        });
        let mut short = vec![0usize; CANDLE_TOKENS];
        let core = best_rate(reps * 4, CANDLE_TOKENS + 1, || {
            state.iter_mut().for_each(|v| *v = 0.0);
            lm.generate(
                &mut state,
                &[65],
                Sampling::Greedy,
                &mut SplitMix64::new(0),
                &mut short,
            )
            .unwrap();
            black_box(&short);
        });
        let prompt = Tensor::new(&[[65u32]], &Device::Cpu).unwrap();
        let mut candle_out = Vec::new();
        let candle = best_rate(reps.min(5), CANDLE_TOKENS + 1, || {
            candle_out = m
                .generate(
                    &prompt,
                    CANDLE_TOKENS,
                    TrainSampling::Greedy,
                    &mut Rng::new(0),
                )
                .unwrap();
        });
        let same = candle_out[0]
            .iter()
            .zip(&short)
            .take_while(|(a, b)| **a as usize == **b)
            .count();
        println!(
            "generate {}+{} (d_model 256, d_state {d_state}, vocab 256, context {CONTEXT}): \
             core_full={full:.0} tok/s core_topk40={topk:.0} tok/s | first {CANDLE_TOKENS}: \
             core={core:.0} tok/s candle={candle:.0} tok/s speedup={:.1}x (greedy tokens equal \
             for the first {same})",
            mixers[0],
            mixers[1],
            core / candle
        );
    }
}
