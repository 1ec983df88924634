//! The quickstart: train a small causal speech denoiser on the CPU, export it to `lrnnx-core`,
//! and stream a held-out noisy clip through `lrnnx-stream` sample by sample.
//!
//! ```text
//! cargo run --release --example quickstart                   # 2000 steps, about 2 minutes on 2 cores
//! cargo run --release --example quickstart -- --steps 200    # shorter
//! ```
//!
//! Data: the twelve clean sentences in `tests/data/speech/` (16 kHz); `clean_11.wav` is held
//! out. Training mixes crops of the others with synthetic white, pink, brown noise and
//! mixtures at SNRs from −5 to 10 dB ([`lrnnx::train::denoiser`]), minimizing the negative SNR.
//! The model ([`lrnnx::train::denoiser::masking_denoiser`]): an input projection to 16
//! channels, an LRU (32 complex modes) as an analysis filterbank, a mask
//! `σ(Dense(SiLU(LRU(|bands|))))` from a second LRU following the band envelopes, and a dense
//! synthesis back to one channel. Evaluation: the held-out clip with mixture noise (fixed
//! seed) at 0 dB. The streamed output is checked against the training crate's parallel forward
//! on the same clip. Writes `noisy.wav`, `denoised.wav` and the model (`denoiser.lrnx`, a
//! network blob for the `denoise` example and the firmware) into `--out` (default
//! `quickstart-out/`), and ends with one line:
//!
//! `quickstart: snr_in=<dB> snr_out=<dB> improvement=<dB> stream_vs_parallel=<max abs err> realtime=<x>`
//!
//! where `realtime` is seconds of audio streamed per second of one core. Training is
//! deterministic given `--seed` and `--steps` (`--seconds` is only a wall-clock cap).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lrnnx::export_network::{export_network, network_to_blob};
use lrnnx::stream::wav::{self, Audio, WavFormat};
use lrnnx::stream::Processor;
use lrnnx::train::candle_core::{Device, Tensor};
use lrnnx::train::denoiser::{
    causal_denoiser, masking_denoiser, mix_at_snr, noise, quickstart_lru_kwargs, snr_db,
    train_denoiser, DenoiserTraining, NoiseKind, QUICKSTART_SIZES,
};
use lrnnx::train::init::Rng;
use lrnnx::train::network::{Activation, Network};

const SAMPLE_RATE: u32 = 16_000;

struct Args {
    threads: usize,
    mask: bool,
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

const USAGE: &str = "usage: quickstart [--steps N] [--seconds S] [--arch mask|residual] \
[--width W] [--state N] [--blocks B] [--batch B] [--crop L] [--lr X] [--threads T] [--seed N] \
[--out DIR] [--no-progress]";

/// Parses `flag`'s value.
fn parse<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let v = v.ok_or(format!("{flag} needs a value"))?;
    v.parse().map_err(|e| format!("{flag} {v}: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: 2,
        mask: true,
        width: QUICKSTART_SIZES.0,
        state: QUICKSTART_SIZES.1,
        blocks: QUICKSTART_SIZES.2,
        seconds: 600,
        steps: 2000,
        batch: 8,
        crop: 2048,
        lr: 3e-3,
        out: PathBuf::from("quickstart-out"),
        seed: 0,
        progress: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let f = flag.as_str();
        match f {
            "--steps" => a.steps = parse(f, it.next())?,
            "--seconds" => a.seconds = parse(f, it.next())?,
            "--width" => a.width = parse(f, it.next())?,
            "--state" => a.state = parse(f, it.next())?,
            "--blocks" => a.blocks = parse(f, it.next())?,
            "--batch" => a.batch = parse(f, it.next())?,
            "--crop" => a.crop = parse(f, it.next())?,
            "--lr" => a.lr = parse(f, it.next())?,
            "--threads" => a.threads = parse(f, it.next())?,
            "--seed" => a.seed = parse(f, it.next())?,
            "--out" => a.out = PathBuf::from(parse::<String>(f, it.next())?),
            "--arch" => {
                a.mask = match parse::<String>(f, it.next())?.as_str() {
                    "mask" => true,
                    "residual" => false,
                    other => return Err(format!("--arch: `{other}` is not mask or residual")),
                }
            }
            "--no-progress" => a.progress = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(a)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    // Data parallelism over whole gradient computations (`--threads`, default 2) instead of
    // candle's per-op threads: its small per-op work items spend most of their time in the
    // thread barrier (measured: 0.42 s vs 0.15 s per step on 2 shared cores).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
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

    // The model (module doc): LRU analysis layers with masks from LRU envelope followers,
    // or (`--arch residual`) residual LRU blocks with GLU gates around a skip connection.
    let (width, state, blocks) = (args.width, args.state, args.blocks);
    let build = if args.mask {
        masking_denoiser
    } else {
        causal_denoiser
    };
    let spec = build(
        "LRU",
        &quickstart_lru_kwargs(width, state),
        width,
        blocks,
        Activation::Silu,
    );
    let net = Network::new(&spec, 1, args.seed, &Device::Cpu)?;
    let n_params: usize = net.vars().iter().map(|(_, v)| v.elem_count()).sum();
    let cfg = DenoiserTraining {
        time_budget: Duration::from_secs(args.seconds),
        seed: args.seed,
        progress: args.progress,
        batch_size: args.batch,
        crop_len: args.crop,
        lr: args.lr,
        max_steps: args.steps,
        threads: args.threads,
        ..DenoiserTraining::default()
    };
    eprintln!(
        "training a {} LRU denoiser ({blocks} block(s), width {width}, state {state}, \
         {n_params} parameters): {} steps of {} crops x {} samples on {} clips, {} thread(s) ...",
        if args.mask { "masking" } else { "residual" },
        args.steps,
        args.batch,
        args.crop,
        clips.len(),
        args.threads
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
