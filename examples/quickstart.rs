//! The quickstart: train a small causal speech denoiser on the CPU, export it to `lrnnx-core`,
//! and stream a held-out noisy clip through `lrnnx-stream` sample by sample.
//!
//! ```text
//! cargo run --release --example quickstart                   # 2000 steps, about 25 s on 2 cores
//! cargo run --release --example quickstart -- --steps 200    # shorter
//! ```
//!
//! Data: the twelve clean sentences in `tests/data/speech/` (16 kHz); `clean_11.wav` is held
//! out. Training mixes crops of the others with synthetic white, pink, brown noise and
//! mixtures at SNRs from −5 to 10 dB ([`lrnnx::train::denoiser`]), minimizing the negative SNR.
//! The model ([`lrnnx::train::denoiser::quickstart_denoiser`], `--arch codec`): frames of 32
//! samples encoded to 64 channels by a learned basis (a strided convolution), a mask
//! `σ(Dense(SiLU(LRU(|code|))))` from an LRU (32 complex modes) running at the frame rate
//! (500 Hz), and a learned decoder back to 32 samples per frame; its output lags the input by
//! 31 samples (1.9 ms), which the training loss, the SNR and `denoised.wav` account for.
//! `--arch mask` (the earlier full-rate masking LRU denoiser), `residual`, and `unet` (the
//! aTENNuate-style U-Net, [`lrnnx::train::denoiser::unet_denoiser`]) train the other
//! architectures on the same data. Evaluation: the held-out clip with mixture noise (fixed
//! seed) at 0 dB. The streamed output is checked against the training crate's parallel forward
//! on the same clip. Writes `noisy.wav`, `denoised.wav` and the model (`denoiser.lrnx`, a
//! network blob with the sample rate and latency, for the `denoise` example and the firmware)
//! into `--out` (default `quickstart-out/`), and ends with one line:
//!
//! `quickstart: snr_in=<dB> snr_out=<dB> improvement=<dB> stream_vs_parallel=<max abs err> realtime=<x>`
//!
//! where `realtime` is seconds of audio streamed per second of one core. Training is
//! deterministic given `--seed` and `--steps` while each step takes less than
//! `--seconds / --steps` (0.3 s at the defaults; about 0.01 s here): the learning-rate schedule
//! follows the larger of the step fraction and the wall-clock fraction, so on a machine slower
//! than that the schedule is compressed into the `--seconds` cap and the result depends on
//! timing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lrnnx::export_network::{export_network, network_to_blob_with_latency};
use lrnnx::stream::wav::{self, Audio, WavFormat};
use lrnnx::stream::Processor;
use lrnnx::train::candle_core::{Device, Tensor};
use lrnnx::train::denoiser::{
    causal_denoiser, masking_denoiser, mix_at_snr, noise, quickstart_denoiser,
    quickstart_lru_kwargs, snr_db, train_denoiser, unet_denoiser, DenoiserTraining, NoiseKind,
    QuickstartSizes, QUICKSTART_SIZES,
};
use lrnnx::train::init::Rng;
use lrnnx::train::network::{Activation, Network};

const SAMPLE_RATE: u32 = 16_000;

/// The denoiser architectures the quickstart can train.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arch {
    /// `masking_denoiser`: full-rate LRU filterbank with LRU envelope masks.
    Mask,
    /// `causal_denoiser`: residual LRU blocks.
    Residual,
    /// `codec_denoiser`: frames of `--frame` samples, masked at the frame rate.
    Codec,
    /// `unet_denoiser`: aTENNuate-style U-Net, factors 4 and 4.
    Unet,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Mask => "masking",
            Arch::Residual => "residual",
            Arch::Codec => "frame-codec",
            Arch::Unet => "U-Net",
        }
    }
}

/// Downsampling factors of the quickstart's U-Net (`--arch unet`).
const UNET_FACTORS: [usize; 2] = [4, 4];

struct Args {
    threads: usize,
    arch: Arch,
    frame: usize,
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

const USAGE: &str = "usage: quickstart [--steps N] [--seconds S] \
[--arch mask|residual|codec|unet] [--frame K] [--width W] [--state N] [--blocks B] [--batch B] [--crop L] [--lr X] [--threads T] [--seed N] \
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
        arch: Arch::Codec,
        frame: QUICKSTART_SIZES.frame,
        width: QUICKSTART_SIZES.channels,
        state: QUICKSTART_SIZES.state,
        blocks: QUICKSTART_SIZES.blocks,
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
            "--frame" => a.frame = parse(f, it.next())?,
            "--arch" => {
                a.arch = match parse::<String>(f, it.next())?.as_str() {
                    "mask" => Arch::Mask,
                    "residual" => Arch::Residual,
                    "codec" => Arch::Codec,
                    "unet" => Arch::Unet,
                    other => {
                        return Err(format!(
                            "--arch: `{other}` is not mask, residual, codec or unet"
                        ))
                    }
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

/// SNR of `out` against `clean` when `out` lags by `latency` samples: output step
/// `t + latency` against clean step `t`.
fn aligned_snr(clean: &[f32], out: &[f32], latency: usize) -> f64 {
    let n = clean.len().min(out.len()).saturating_sub(latency);
    snr_db(&clean[..n], &out[latency..latency + n])
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
    let kwargs = quickstart_lru_kwargs(width, state);
    let (spec, latency) = match args.arch {
        Arch::Mask => (
            masking_denoiser("LRU", &kwargs, width, blocks, Activation::Silu),
            0,
        ),
        Arch::Residual => (
            causal_denoiser("LRU", &kwargs, width, blocks, Activation::Silu),
            0,
        ),
        Arch::Codec => quickstart_denoiser(&QuickstartSizes {
            frame: args.frame,
            channels: width,
            state,
            blocks,
        }),
        Arch::Unet => (
            unet_denoiser(&UNET_FACTORS, width, &|w| quickstart_lru_kwargs(w, state)),
            UNET_FACTORS[0] - 1,
        ),
    };
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
        latency,
        ..DenoiserTraining::default()
    };
    eprintln!(
        "training a {} LRU denoiser ({blocks} block(s), width {width}, state {state}, \
         {n_params} parameters, latency {latency} samples): {} steps of {} crops x {} samples \
         on {} clips, {} thread(s) ...",
        args.arch.name(),
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
        network_to_blob_with_latency(&core, SAMPLE_RATE as f32, latency)?,
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
        )?;
        let noisy = mix_at_snr(&held_out, &n, 0.0)?;
        let out = parallel(&noisy)?;
        eprintln!(
            "  held-out, {:>7} noise at 0 dB: {:+.2} dB -> {:+.2} dB",
            kind.name(),
            snr_db(&held_out, &noisy),
            aligned_snr(&held_out, &out, latency)
        );
    }
    let n = noise(
        NoiseKind::Mixture,
        held_out.len(),
        SAMPLE_RATE as f64,
        &mut Rng::new(1234),
    )?;
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
    // Aligned with the input: the first `latency` outputs precede the signal.
    let mut aligned = denoised[latency.min(denoised.len())..].to_vec();
    aligned.resize(denoised.len(), 0.0);
    wav::write(
        args.out.join("denoised.wav"),
        &mono(aligned),
        WavFormat::Pcm16,
    )?;
    let (snr_in, snr_out) = (
        snr_db(&held_out, &noisy),
        aligned_snr(&held_out, &denoised, latency),
    );
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
