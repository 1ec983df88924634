//! The quickstart: train a small causal speech denoiser on the CPU, export it to `lrnnx-core`,
//! and stream a held-out noisy clip through `lrnnx-stream` sample by sample.
//!
//! ```text
//! cargo run --release --example quickstart                  # ~2 minutes of training
//! cargo run --release --example quickstart -- --seconds 30  # shorter (CI)
//! ```
//!
//! Data: the twelve clean sentences in `tests/data/speech/` (16 kHz); `clean_11.wav` is held
//! out. Training mixes the others with synthetic white, pink, brown noise and mixtures at SNRs
//! from −5 to 10 dB ([`lrnnx::train::denoiser`]). Evaluation: the held-out clip with a
//! mixture noise (fixed seed) at 0 dB. The streamed output is checked against the training
//! crate's parallel forward on the same clip. Writes `noisy.wav`, `denoised.wav` and the model
//! (`denoiser.lrnx`, a network blob for the `denoise` example) into `--out` (default
//! `quickstart-out/`), and ends with one line:
//!
//! `quickstart: snr_in=<dB> snr_out=<dB> improvement=<dB> stream_vs_parallel=<max abs err> realtime=<x>`
//!
//! where `realtime` is seconds of audio streamed per second of one core.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lrnnx::export_network::{export_network, network_to_blob};
use lrnnx::stream::wav::{self, Audio, WavFormat};
use lrnnx::stream::Processor;
use lrnnx::train::candle_core::{Device, Tensor};
use lrnnx::train::denoiser::{
    causal_denoiser, mix_at_snr, noise, snr_db, train_denoiser, DenoiserTraining, NoiseKind,
};
use lrnnx::train::init::Rng;
use lrnnx::train::network::{Activation, Network};
use serde_json::json;

const SAMPLE_RATE: u32 = 16_000;

struct Args {
    width: usize,
    state: usize,
    blocks: usize,
    seconds: u64,
    steps: usize,
    batch: usize,
    crop: usize,
    lr: f64,
    out: PathBuf,
    seed: u64,
    progress: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        width: 16,
        state: 32,
        blocks: 2,
        seconds: 600,
        steps: 600,
        batch: 8,
        crop: 4096,
        lr: 3e-3,
        out: PathBuf::from("quickstart-out"),
        seed: 0,
        progress: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--width" => a.width = value("--width")?.parse().map_err(|e| format!("--width: {e}"))?,
            "--state" => a.state = value("--state")?.parse().map_err(|e| format!("--state: {e}"))?,
            "--blocks" => a.blocks = value("--blocks")?.parse().map_err(|e| format!("--blocks: {e}"))?,
            "--steps" => a.steps = value("--steps")?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--batch" => a.batch = value("--batch")?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--crop" => a.crop = value("--crop")?.parse().map_err(|e| format!("--crop: {e}"))?,
            "--lr" => a.lr = value("--lr")?.parse().map_err(|e| format!("--lr: {e}"))?,
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--seed" => {
                a.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--no-progress" => a.progress = false,
            "-h" | "--help" => {
                println!("usage: quickstart [--seconds N] [--out DIR] [--seed N] [--no-progress]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(a)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech");
    let mut clips = Vec::new();
    for i in 0..12 {
        let a = wav::read(data.join(format!("clean_{i:02}.wav")))?;
        if a.sample_rate != SAMPLE_RATE || a.channels.len() != 1 {
            return Err(format!("clean_{i:02}.wav is not 16 kHz mono").into());
        }
        clips.push(a.channels.into_iter().next().unwrap_or_default());
    }
    let held_out = clips.pop().unwrap_or_default();

    // The model: LRU blocks with GLU gates around a skip connection.
    let (width, state, blocks) = (args.width, args.state, args.blocks);
    let spec = causal_denoiser(
        "LRU",
        &json!({"d_model": width, "d_state": state, "r_min": 0.9, "r_max": 0.9999}),
        width,
        blocks,
        Activation::Silu,
    );
    let net = Network::new(&spec, 1, args.seed, &Device::Cpu)?;
    let cfg = DenoiserTraining {
        time_budget: Duration::from_secs(args.seconds),
        seed: args.seed,
        progress: args.progress,
        batch_size: args.batch,
        crop_len: args.crop,
        lr: args.lr,
        max_steps: args.steps,
        ..DenoiserTraining::default()
    };
    eprintln!(
        "training a {blocks}-block LRU denoiser (width {width}, state {state}) for {} s on {} clips ...",
        args.seconds,
        clips.len()
    );
    let report = train_denoiser(&net, &clips, &cfg)?;
    eprintln!(
        "trained {} steps in {:.1} s",
        report.losses.len(),
        report.elapsed.as_secs_f64()
    );

    // Export to the core and write the model file.
    let core = export_network(&net)?;
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("denoiser.lrnx"),
        network_to_blob(&core, SAMPLE_RATE as f32)?,
    )?;

    // Held-out evaluation at 0 dB, every noise kind (the mixture is the headline).
    let parallel = |x: &[f32]| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let t = Tensor::from_vec(x.to_vec(), (1, x.len(), 1), &Device::Cpu)?;
        Ok(net.forward(&t, None)?.flatten_all()?.to_vec1::<f32>()?)
    };
    for kind in NoiseKind::ALL {
        let n = noise(
            kind,
            held_out.len(),
            SAMPLE_RATE as f64,
            &mut Rng::new(1234),
        );
        let noisy = mix_at_snr(&held_out, &n, 0.0)?;
        let out = parallel(&noisy)?;
        eprintln!(
            "  held-out, {:>7} noise at 0 dB: {:+.2} dB -> {:+.2} dB",
            kind.name(),
            snr_db(&held_out, &noisy),
            snr_db(&held_out, &out)
        );
    }
    let n = noise(
        NoiseKind::Mixture,
        held_out.len(),
        SAMPLE_RATE as f64,
        &mut Rng::new(1234),
    );
    let noisy = mix_at_snr(&held_out, &n, 0.0)?;
    let reference = parallel(&noisy)?;

    // Stream it, sample by sample, through lrnnx-stream on the exported core network.
    let mut processor = Processor::new(core);
    let mut denoised = vec![0.0f32; noisy.len()];
    let start = Instant::now();
    for (x, y) in noisy.iter().zip(denoised.iter_mut()) {
        let mut out = [0.0f32];
        processor.process(&[*x], &mut out)?;
        *y = out[0];
    }
    let stream_secs = start.elapsed().as_secs_f64();
    let audio_secs = noisy.len() as f64 / SAMPLE_RATE as f64;
    let max_err = denoised
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if max_err > 1e-3 {
        return Err(
            format!("streamed output differs from the parallel forward by {max_err}").into(),
        );
    }

    let mono = |x: Vec<f32>| Audio {
        sample_rate: SAMPLE_RATE,
        channels: vec![x],
    };
    wav::write(
        args.out.join("noisy.wav"),
        &mono(noisy.clone()),
        WavFormat::Pcm16,
    )?;
    wav::write(
        args.out.join("denoised.wav"),
        &mono(denoised.clone()),
        WavFormat::Pcm16,
    )?;
    let (snr_in, snr_out) = (snr_db(&held_out, &noisy), snr_db(&held_out, &denoised));
    eprintln!(
        "wrote {}/{{noisy.wav, denoised.wav, denoiser.lrnx}}",
        args.out.display()
    );
    println!(
        "quickstart: snr_in={snr_in:.2} snr_out={snr_out:.2} improvement={:.2} stream_vs_parallel={max_err:.2e} realtime={:.0}",
        snr_out - snr_in,
        audio_secs / stream_secs
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("quickstart: error: {e}");
        std::process::exit(1);
    }
}
