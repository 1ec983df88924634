//! Generate bytes with the core language model (no training): build a fresh byte-level model
//! (lrnnx's initialization, or the weights of a blob), export it to the core, write and read
//! back its blob, and generate one token at a time, printing tokens per second.
//!
//! ```text
//! cargo run --release --example generate                        # Mamba + attention, d_model 256
//! cargo run --release --example generate -- --mixers LRU,Mamba --tokens 2000 --out lm.lrnx
//! cargo run --release --example generate -- --model lm.lrnx --temperature 0.8 --top-k 40
//! ```
//!
//! Options: `--mixers A,B,...` (lrnnx mixer type names: LRU, S4, S4D, S5, Centaurus, Mamba,
//! RGLRU, S7, attn), `--d-model`, `--d-state`, `--context` (attention cache, tokens),
//! `--tokens` (to generate), `--prompt TEXT`, `--temperature T` (greedy when absent),
//! `--top-k K`, `--seed S`, `--model FILE` (a blob from `lrnnx::export_lm::lm_to_blob`; the
//! model options are then ignored), `--out FILE` (write the blob). An untrained model produces
//! noise; the point is the speed and the path from a candle model to a core blob.

use std::time::Instant;

use lrnnx::core::lm::{Sampling, SplitMix64};
use lrnnx::export_lm::{export_lm, lm_to_blob, read_lm_blob};
use lrnnx::train::candle_core::{DType, Device};
use lrnnx::train::init::Rng;
use lrnnx::train::lm::{init_params, LanguageModel};
use serde_json::json;

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match value(args, name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name} {v}: not a number")),
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tokens: usize = number(&args, "--tokens", 511)?;
    let context: usize = number(&args, "--context", 512)?;
    let seed: u64 = number(&args, "--seed", 0)?;
    let blob = match value(&args, "--model") {
        Some(path) => std::fs::read(path).map_err(|e| format!("{path}: {e}"))?,
        None => {
            let mixers: Vec<&str> = value(&args, "--mixers")
                .unwrap_or("Mamba,attn")
                .split(',')
                .collect();
            let d_model: usize = number(&args, "--d-model", 256)?;
            let kw = json!({
                "d_model": d_model, "d_state": number(&args, "--d-state", 16usize)?,
                "n_layer": mixers.len(), "vocab_size": 256, "mixer_types": mixers,
                "rms_norm": true, "tie_embeddings": true, "fused_add_norm": false,
                "mixer_kwargs": {
                    "S5": {"discretization": "zoh"},
                    "S4": {"transposed": false}, "S4D": {"transposed": false},
                    "Centaurus": {"sub_state_dim": 4},
                    "attn": {"num_heads": (d_model / 64).max(1), "causal": true},
                },
            });
            let params = init_params(&kw, &mut Rng::new(seed), DType::F32, &Device::Cpu)?;
            let model = LanguageModel::from_lrnnx(&kw, params)?;
            lm_to_blob(&export_lm(&model, context)?)?
        }
    };
    if let Some(path) = value(&args, "--out") {
        std::fs::write(path, &blob).map_err(|e| format!("{path}: {e}"))?;
        println!("wrote {path} ({} bytes)", blob.len());
    }
    let lm = read_lm_blob(&blob)?;
    let sampling = match value(&args, "--temperature") {
        None => Sampling::Greedy,
        Some(t) => Sampling::Temperature {
            temperature: t
                .parse()
                .map_err(|_| format!("--temperature {t}: not a number"))?,
            top_k: value(&args, "--top-k")
                .map(|k| k.parse().map_err(|_| format!("--top-k {k}: not a number")))
                .transpose()?,
        },
    };
    let prompt: Vec<usize> = value(&args, "--prompt")
        .unwrap_or("A")
        .bytes()
        .map(usize::from)
        .collect();
    let c = lm.config();
    println!(
        "model: {} blocks, d_model {}, vocabulary {} (padded {}), blob of {} bytes",
        lm.blocks().len(),
        c.d_model,
        c.vocab_size,
        c.padded_vocab,
        blob.len()
    );
    let mut state = vec![0.0f32; lm.state_len()];
    let mut out = vec![0usize; tokens];
    let mut rng = SplitMix64::new(seed);
    let start = Instant::now();
    lm.generate(&mut state, &prompt, sampling, &mut rng, &mut out)?;
    let secs = start.elapsed().as_secs_f64();
    let steps = prompt.len() + tokens.saturating_sub(1);
    let text: String = out
        .iter()
        .map(|&t| match t as u8 {
            b if b.is_ascii_graphic() || b == b' ' => b as char,
            _ => '.',
        })
        .collect();
    println!("{text}");
    println!(
        "generate: steps={steps} seconds={secs:.4} tokens_per_s={:.0}",
        steps as f64 / secs
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
