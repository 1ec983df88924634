//! Training a causal speech denoiser: synthetic noise, mixing at a chosen SNR, the SNR loss
//! and a time-budgeted training loop over a [`Network`].
//!
//! Noise (each generated at unit RMS, from a seeded [`Rng`]):
//!
//! ```text
//! white   w_t ~ N(0, 1)
//! pink    Σ_k f_k^{−½} · lp_k(w)_t,  lp_k a one-pole low-pass at f_k = 5·2^k Hz (k = 0..10):
//!         Σ_k f_k^{−1} / (1 + (f/f_k)²) ≈ c/f between 5 Hz and 5 kHz  (−3 dB per octave)
//! brown   b_t = ρ b_{t−1} + w_t, ρ = 1 − 2π·20 Hz/fs  (−6 dB per octave above 20 Hz)
//! mixture α·white + β·pink + γ·brown, (α, β, γ) uniform on the simplex, renormalized
//! ```
//!
//! Mixing at SNR s dB: `noisy = clean + n · rms(clean)/rms(n) · 10^{−s/20}`.
//! Loss (negative SNR, mean over the batch): `10·log10((Σ(ŷ − y)² + ε)/(Σ y² + ε))`.

use std::f64::consts::PI;
use std::time::{Duration, Instant};

use candle_core::{bail, Device, Result, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use crate::init::Rng;
use crate::network::{Activation, Network, StageSpec};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, WarmupCosine};

/// A kind of synthetic noise (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseKind {
    /// Flat spectrum.
    White,
    /// −3 dB per octave.
    Pink,
    /// −6 dB per octave.
    Brown,
    /// A random convex combination of the three.
    Mixture,
}

impl NoiseKind {
    /// All kinds, in a fixed order.
    pub const ALL: [NoiseKind; 4] = [
        NoiseKind::White,
        NoiseKind::Pink,
        NoiseKind::Brown,
        NoiseKind::Mixture,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            NoiseKind::White => "white",
            NoiseKind::Pink => "pink",
            NoiseKind::Brown => "brown",
            NoiseKind::Mixture => "mixture",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        NoiseKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Root mean square `√(Σ x²/n)` (0 for an empty slice).
pub fn rms(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// `x` scaled to unit RMS (unchanged when it is all zeros).
fn unit_rms(mut x: Vec<f64>) -> Vec<f32> {
    let r = (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt();
    if r > 0.0 {
        x.iter_mut().for_each(|v| *v /= r);
    }
    x.into_iter().map(|v| v as f32).collect()
}

/// `n` samples of noise of `kind` at sample rate `fs`, unit RMS (module doc). `fs` must be
/// finite and above `2π·20` Hz (where brown noise's 20 Hz leak `1 − 2π·20/fs` is positive).
pub fn noise(kind: NoiseKind, n: usize, fs: f64, rng: &mut Rng) -> Result<Vec<f32>> {
    if !(fs.is_finite() && fs > 2.0 * PI * 20.0) {
        bail!("noise: sample rate {fs} Hz must be finite and above 2π·20 Hz");
    }
    let white: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Ok(match kind {
        NoiseKind::White => unit_rms(white),
        NoiseKind::Pink => {
            let mut out = vec![0.0f64; n];
            for k in 0..11 {
                let fk = 5.0 * f64::powi(2.0, k);
                let p = (-2.0 * PI * fk / fs).exp();
                let g = fk.powf(-0.5);
                let mut y = 0.0;
                for (o, w) in out.iter_mut().zip(&white) {
                    y = p * y + (1.0 - p) * w;
                    *o += g * y;
                }
            }
            unit_rms(out)
        }
        NoiseKind::Brown => {
            let rho = 1.0 - 2.0 * PI * 20.0 / fs;
            let mut y = 0.0;
            unit_rms(
                white
                    .iter()
                    .map(|w| {
                        y = rho * y + w;
                        y
                    })
                    .collect(),
            )
        }
        NoiseKind::Mixture => {
            // Uniform on the simplex: normalized exponentials.
            let e: Vec<f64> = (0..3).map(|_| -rng.uniform().ln()).collect();
            let s: f64 = e.iter().sum();
            let mut parts = Vec::with_capacity(3);
            for k in [NoiseKind::White, NoiseKind::Pink, NoiseKind::Brown] {
                parts.push(noise(k, n, fs, rng)?);
            }
            let mix: Vec<f64> = (0..n)
                .map(|t| (0..3).map(|j| e[j] / s * parts[j][t] as f64).sum())
                .collect();
            unit_rms(mix)
        }
    })
}

/// `clean + noise·rms(clean)/rms(noise)·10^{−snr_db/20}`; the lengths must agree.
pub fn mix_at_snr(clean: &[f32], noise: &[f32], snr_db: f64) -> Result<Vec<f32>> {
    if clean.len() != noise.len() {
        bail!(
            "mix: {} clean samples and {} noise samples",
            clean.len(),
            noise.len()
        );
    }
    if !snr_db.is_finite() {
        bail!("mix: the SNR {snr_db} dB is not finite");
    }
    for (what, x) in [("clean", clean), ("noise", noise)] {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            bail!("mix: {what} sample {i} is {}", x[i]);
        }
    }
    let rn = rms(noise);
    if rn == 0.0 {
        bail!("mix: the noise is all zeros");
    }
    let g = rms(clean) / rn * 10f64.powf(-snr_db / 20.0);
    Ok(clean
        .iter()
        .zip(noise)
        .map(|(c, n)| (*c as f64 + g * *n as f64) as f32)
        .collect())
}

/// The SNR of `estimate` against `reference`, `10·log10(Σ y²/Σ(ŷ − y)²)` in dB.
pub fn snr_db(reference: &[f32], estimate: &[f32]) -> f64 {
    let (mut s, mut e) = (0.0f64, 0.0f64);
    for (y, h) in reference.iter().zip(estimate) {
        s += (*y as f64).powi(2);
        e += (*h as f64 - *y as f64).powi(2);
    }
    10.0 * (s / e.max(1e-30)).log10()
}

/// The loss: mean over the batch of `10·log10((Σ_t(ŷ − y)² + ε)/(Σ_t y² + ε))` for
/// `estimate`, `clean` (B, L, 1).
pub fn neg_snr_loss(estimate: &Tensor, clean: &Tensor) -> Result<Tensor> {
    const EPS: f64 = 1e-8;
    let err = (estimate - clean)?.sqr()?.sum((1, 2))?;
    let sig = clean.sqr()?.sum((1, 2))?;
    let ratio = ((err + EPS)? / (sig + EPS)?)?;
    (ratio.log()? * (10.0 / std::f64::consts::LN_10))?.mean_all()
}

/// A causal denoiser of `blocks` residual blocks around lrnnx layer `class` (width `width`,
/// `d_state` = `state`), with a skip connection from input to output, so that it starts near
/// the identity and learns the correction:
///
/// ```text
/// y = x + Dense(w→1)( Blockᵇ( Dense(1→w)(x) ) )
/// Block(h) = h + Glu( Dense(w→2w)( act( layer(h) ) ) )
/// ```
pub fn causal_denoiser(
    class: &str,
    layer_kwargs: &serde_json::Value,
    width: usize,
    blocks: usize,
    act: Activation,
) -> Vec<StageSpec> {
    let mut spec = vec![
        StageSpec::ResidualBegin,
        StageSpec::Dense {
            d_in: 1,
            d_out: width,
            bias: true,
        },
    ];
    for _ in 0..blocks {
        spec.extend([
            StageSpec::ResidualBegin,
            StageSpec::Layer {
                class: class.to_owned(),
                kwargs: layer_kwargs.clone(),
            },
            StageSpec::Activation(act),
            StageSpec::Dense {
                d_in: width,
                d_out: 2 * width,
                bias: true,
            },
            StageSpec::Glu,
            StageSpec::ResidualEnd,
        ]);
    }
    spec.extend([
        StageSpec::Dense {
            d_in: width,
            d_out: 1,
            bias: true,
        },
        StageSpec::ResidualEnd,
    ]);
    spec
}

/// Sizes of the quickstart's denoiser ([`quickstart_denoiser`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuickstartSizes {
    /// Samples per frame (the output lags the input by `frame − 1`).
    pub frame: usize,
    /// Channels of the frame code (the LRUs' `d_model`).
    pub channels: usize,
    /// LRU `d_state`.
    pub state: usize,
    /// LRU blocks in the mask path.
    pub blocks: usize,
}

/// The quickstart denoiser's default sizes.
pub const QUICKSTART_SIZES: QuickstartSizes = QuickstartSizes {
    frame: 32,
    channels: 64,
    state: 32,
    blocks: 1,
};

/// The quickstart's denoiser: [`codec_denoiser`] with `sizes` and
/// [`quickstart_lru_kwargs`]; returns the spec and its latency (`frame − 1` samples).
pub fn quickstart_denoiser(sizes: &QuickstartSizes) -> (Vec<StageSpec>, usize) {
    let kwargs = quickstart_lru_kwargs(sizes.channels, sizes.state);
    (
        codec_denoiser(sizes.frame, sizes.channels, &kwargs, sizes.blocks),
        sizes.frame.saturating_sub(1),
    )
}

/// The quickstart denoiser's LRU constructor arguments: `d_model = width`, `d_state = state`,
/// decay radii initialized in `[0.9, 0.9999]` (long memory for envelope following).
pub fn quickstart_lru_kwargs(width: usize, state: usize) -> serde_json::Value {
    serde_json::json!({"d_model": width, "d_state": state, "r_min": 0.9, "r_max": 0.9999})
}

/// A causal masking denoiser: `blocks` analysis layers, each followed by a mask computed
/// from the rectified band signals by a second layer (the envelope follower), then a dense
/// synthesis:
///
/// ```text
/// y = Dense(w→1)( Maskᵇ( Dense(1→w)(x) ) )
/// Mask(h):  a = layer₁(h);  y = a ⊙ σ( Dense(w→w)( act( layer₂(|a|) ) ) )
/// ```
pub fn masking_denoiser(
    class: &str,
    layer_kwargs: &serde_json::Value,
    width: usize,
    blocks: usize,
    act: Activation,
) -> Vec<StageSpec> {
    let layer = || StageSpec::Layer {
        class: class.to_owned(),
        kwargs: layer_kwargs.clone(),
    };
    let mut spec = vec![StageSpec::Dense {
        d_in: 1,
        d_out: width,
        bias: true,
    }];
    for _ in 0..blocks {
        spec.extend([
            layer(),
            StageSpec::ResidualBegin,
            StageSpec::Activation(Activation::Abs),
            layer(),
            StageSpec::Activation(act),
            StageSpec::Dense {
                d_in: width,
                d_out: width,
                bias: true,
            },
            StageSpec::GateEnd,
        ]);
    }
    spec.push(StageSpec::Dense {
        d_in: width,
        d_out: 1,
        bias: true,
    });
    spec
}

/// A frame-codec masking denoiser that runs at `1/frame` of the sample rate (Conv-TasNet-like
/// with kernel = stride = `frame`, causal):
///
/// ```text
/// e_m  = W_enc [x_{km} … x_{km+k−1}] + b            frames of k samples → C channels
/// g_m  = σ(Dense(SiLU(LRU(… |e_m| …))))              mask from `blocks` LRUs over |e|
/// ŝ    = split(W_dec (e_m ⊙ g_m) + b)                 C → k samples, one per step
/// ```
///
/// Its output lags the input by `frame − 1` samples (the frame is decoded from the step that
/// completes it on): train and evaluate it with that [`DenoiserTraining::latency`].
pub fn codec_denoiser(
    frame: usize,
    channels: usize,
    lru_kwargs: &serde_json::Value,
    blocks: usize,
) -> Vec<StageSpec> {
    let mut spec = vec![
        StageSpec::Downsample {
            factor: frame,
            pooling: crate::network::Pooling::Concat,
        },
        StageSpec::Dense {
            d_in: frame,
            d_out: channels,
            bias: true,
        },
        StageSpec::ResidualBegin,
        StageSpec::Activation(Activation::Abs),
    ];
    for _ in 0..blocks {
        spec.extend([
            StageSpec::Layer {
                class: "LRU".into(),
                kwargs: lru_kwargs.clone(),
            },
            StageSpec::Activation(Activation::Silu),
        ]);
    }
    spec.extend([
        StageSpec::Dense {
            d_in: channels,
            d_out: channels,
            bias: true,
        },
        StageSpec::GateEnd,
        StageSpec::Dense {
            d_in: channels,
            d_out: frame,
            bias: true,
        },
        StageSpec::Upsample {
            factor: frame,
            unpooling: crate::network::Unpooling::Split,
        },
    ]);
    spec
}

/// A causal U-Net denoiser in the aTENNuate style (spec §14.3, with lrnnx's one-step causal
/// shift replaced by the correct `factor − 1`): each level is a strided convolution (a
/// `Concat` downsample and a dense stage, kernel = stride = `factors[i]`) doubling the
/// channels, LRU + SiLU blocks, and a transposed convolution back (dense + `Split` upsample)
/// added to the level's skip; `channels[0]` channels at the top level, `2^i·channels[0]` below.
///
/// ```text
/// x → down(r_0) → C_0 ─┬─ LRU,SiLU → down(r_1) → C_1 … bottleneck: 2 × (LRU,SiLU) … up ─┐
///                      └──────────────────────────── + ───────────────────────────────┘
///                      → LRU,SiLU → dense C_0 → r_0 samples → split
/// ```
///
/// The output lags the input by `factors[0] − 1` samples. `lru_kwargs(width)` gives each
/// LRU's constructor arguments.
pub fn unet_denoiser(
    factors: &[usize],
    channels: usize,
    lru_kwargs: &dyn Fn(usize) -> serde_json::Value,
) -> Vec<StageSpec> {
    use crate::network::{Pooling, Unpooling};
    let lru = |w: usize| {
        [
            StageSpec::Layer {
                class: "LRU".into(),
                kwargs: lru_kwargs(w),
            },
            StageSpec::Activation(Activation::Silu),
        ]
    };
    let Some((&r0, inner)) = factors.split_first() else {
        return Vec::new();
    };
    let mut spec = vec![
        StageSpec::Downsample {
            factor: r0,
            pooling: Pooling::Concat,
        },
        StageSpec::Dense {
            d_in: r0,
            d_out: channels,
            bias: true,
        },
    ];
    let mut width = channels;
    for &r in inner {
        spec.push(StageSpec::ResidualBegin);
        spec.extend(lru(width));
        spec.extend([
            StageSpec::Downsample {
                factor: r,
                pooling: Pooling::Concat,
            },
            StageSpec::Dense {
                d_in: r * width,
                d_out: 2 * width,
                bias: true,
            },
        ]);
        width *= 2;
    }
    spec.extend(lru(width));
    spec.extend(lru(width));
    for &r in inner.iter().rev() {
        spec.extend([
            StageSpec::Dense {
                d_in: width,
                d_out: r * width / 2,
                bias: true,
            },
            StageSpec::Upsample {
                factor: r,
                unpooling: Unpooling::Split,
            },
            StageSpec::ResidualEnd,
        ]);
        width /= 2;
        spec.extend(lru(width));
    }
    if inner.is_empty() {
        spec.extend(lru(width));
    }
    spec.extend([
        StageSpec::Dense {
            d_in: width,
            d_out: r0,
            bias: true,
        },
        StageSpec::Upsample {
            factor: r0,
            unpooling: Unpooling::Split,
        },
    ]);
    spec
}

/// How to train a denoiser.
#[derive(Debug, Clone)]
pub struct DenoiserTraining {
    /// Sample rate of the clips.
    pub sample_rate: f64,
    /// Clips per step.
    pub batch_size: usize,
    /// Samples per training crop.
    pub crop_len: usize,
    /// Input SNR range (dB), drawn uniformly.
    pub snr_range: (f64, f64),
    /// Random gain range (dB) applied to clean and noisy alike.
    pub gain_range_db: (f64, f64),
    /// Wall-clock budget; training stops at the first step past it (or at `max_steps`).
    pub time_budget: Duration,
    /// Upper bound on steps (also the length of the cosine schedule).
    pub max_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Global gradient-norm limit.
    pub max_grad_norm: f64,
    /// Seed of the data draws.
    pub seed: u64,
    /// Samples the output lags the input by (a frame-based network's `frame − 1`): the loss
    /// compares output step `t + latency` with clean step `t`.
    pub latency: usize,
    /// Draw a progress bar with the loss.
    pub progress: bool,
    /// Threads computing gradients in parallel, each on `batch_size / threads` crops (data
    /// parallelism; the gradients are averaged in a fixed order, so a seed still gives the
    /// same run). Must divide `batch_size`.
    pub threads: usize,
}

impl Default for DenoiserTraining {
    fn default() -> Self {
        DenoiserTraining {
            sample_rate: 16_000.0,
            batch_size: 8,
            crop_len: 4096,
            snr_range: (-5.0, 10.0),
            gain_range_db: (-6.0, 6.0),
            time_budget: Duration::from_secs(120),
            max_steps: 2000,
            lr: 3e-3,
            warmup_steps: 30,
            max_grad_norm: 1.0,
            seed: 0,
            latency: 0,
            progress: false,
            threads: 1,
        }
    }
}

/// What a denoiser training run did.
#[derive(Debug, Clone)]
pub struct DenoiserReport {
    /// Loss (negative SNR, dB) of every step.
    pub losses: Vec<f32>,
    /// Wall-clock time spent.
    pub elapsed: Duration,
}

/// One batch of (noisy, clean) crops, each (B, L, 1).
pub fn draw_batch(
    clips: &[Vec<f32>],
    cfg: &DenoiserTraining,
    rng: &mut Rng,
) -> Result<(Tensor, Tensor)> {
    let l = cfg.crop_len;
    let usable: Vec<&Vec<f32>> = clips.iter().filter(|c| c.len() >= l).collect();
    if usable.is_empty() || l == 0 {
        bail!("denoiser training: no clip has {l} samples");
    }
    let (mut noisy, mut clean) = (Vec::with_capacity(cfg.batch_size * l), Vec::new());
    for _ in 0..cfg.batch_size {
        // Prefer crops with speech in them (a few tries, then take what comes).
        let mut crop: &[f32] = &[];
        for _ in 0..8 {
            let c = usable[rng.below(usable.len())];
            let start = rng.below(c.len() - l + 1);
            crop = &c[start..start + l];
            if rms(crop) > 0.01 {
                break;
            }
        }
        let kind = NoiseKind::ALL[rng.below(4)];
        let n = noise(kind, l, cfg.sample_rate, rng)?;
        let snr = cfg.snr_range.0 + (cfg.snr_range.1 - cfg.snr_range.0) * rng.uniform();
        let gain_db =
            cfg.gain_range_db.0 + (cfg.gain_range_db.1 - cfg.gain_range_db.0) * rng.uniform();
        let g = 10f64.powf(gain_db / 20.0) as f32;
        let mixed = mix_at_snr(crop, &n, snr)?;
        noisy.extend(mixed.iter().map(|v| v * g));
        clean.extend(crop.iter().map(|v| v * g));
    }
    let shape = (cfg.batch_size, l, 1);
    Ok((
        Tensor::from_vec(noisy, shape, &Device::Cpu)?,
        Tensor::from_vec(clean, shape, &Device::Cpu)?,
    ))
}

/// Trains `net` (1 → 1) to map noisy crops of `clips` to the clean ones (module doc), with
/// AdamW, gradient clipping and warmup + cosine decay, until the time budget or `max_steps`.
pub fn train_denoiser(
    net: &Network,
    clips: &[Vec<f32>],
    cfg: &DenoiserTraining,
) -> Result<DenoiserReport> {
    if net.d_in() != 1 || net.d_out() != 1 {
        bail!(
            "a denoiser maps 1 channel to 1, this network maps {} to {}",
            net.d_in(),
            net.d_out()
        );
    }
    if cfg.latency >= cfg.crop_len {
        bail!(
            "latency {} leaves nothing of a crop of {} samples to compare",
            cfg.latency,
            cfg.crop_len
        );
    }
    if let Some((i, _)) = clips
        .iter()
        .enumerate()
        .find(|(_, c)| c.iter().any(|v| !v.is_finite()))
    {
        bail!("clip {i} holds a NaN or infinite sample");
    }
    let threads = cfg.threads.max(1);
    if !cfg.batch_size.is_multiple_of(threads) || cfg.batch_size == 0 {
        bail!(
            "batch size {} is not a positive multiple of {threads} threads",
            cfg.batch_size
        );
    }
    let part = cfg.batch_size / threads;
    let vars = net.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    let schedule = WarmupCosine {
        peak_lr: cfg.lr,
        min_lr: cfg.lr * 0.02,
        warmup_steps: cfg.warmup_steps,
        total_steps: cfg.max_steps,
    };
    let bar = if cfg.progress {
        let bar = ProgressBar::new(cfg.time_budget.as_secs().max(1));
        if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut rng = Rng::new(cfg.seed).fork(3);
    let start = Instant::now();
    let mut losses = Vec::new();
    let mut smooth = f64::NAN;
    for step in 0..cfg.max_steps {
        if start.elapsed() >= cfg.time_budget {
            break;
        }
        let (noisy, clean) = draw_batch(clips, cfg, &mut rng)?;
        // Each thread: loss and gradients of its share of the batch; the mean over shares
        // is the loss and gradient of the whole batch.
        let shares: Vec<Result<(f32, candle_core::backprop::GradStore)>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|j| {
                        let (noisy, clean) = (&noisy, &clean);
                        scope.spawn(move || {
                            let x = noisy.narrow(0, j * part, part)?;
                            let y = clean.narrow(0, j * part, part)?;
                            let out = net.forward(&x, None)?;
                            let loss = match cfg.latency {
                                0 => neg_snr_loss(&out, &y)?,
                                d => {
                                    let n = out.dim(1)?.saturating_sub(d);
                                    neg_snr_loss(&out.narrow(1, d, n)?, &y.narrow(1, 0, n)?)?
                                }
                            };
                            let grads = loss.backward()?;
                            Ok((loss.to_scalar::<f32>()?, grads))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(candle_core::Error::Msg("gradient thread panicked".into()))
                        })
                    })
                    .collect()
            });
        let mut l = 0.0f32;
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        for share in shares {
            let (share_loss, share_grads) = share?;
            l += share_loss / threads as f32;
            grads = Some(match grads {
                None => share_grads,
                Some(mut g) => {
                    for (_, v) in &vars {
                        if let Some(add) = share_grads.get(v.as_tensor()) {
                            let sum = match g.get(v.as_tensor()) {
                                Some(prev) => (prev + add)?,
                                None => add.clone(),
                            };
                            g.insert(v.as_tensor(), sum);
                        }
                    }
                    g
                }
            });
        }
        let Some(mut grads) = grads else {
            bail!("no gradient computed");
        };
        if threads > 1 {
            for (_, v) in &vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    let mean = (g / threads as f64)?;
                    grads.insert(v.as_tensor(), mean);
                }
            }
        }
        // A non-finite loss or gradient stops training before the optimizer step, so the
        // parameters (and AdamW's moments) keep their last finite values.
        if !l.is_finite() {
            bar.abandon();
            bail!("loss is {l} at step {step}; the parameters were not updated");
        }
        if let Err(e) = clip_grad_norm(&mut grads, vars.iter().map(|(_, v)| v), cfg.max_grad_norm) {
            bar.abandon();
            bail!("step {step}: {e}; the parameters were not updated");
        }
        // Compress the schedule into the time budget: progress is the larger of the step
        // fraction and the time fraction.
        let frac_time = start.elapsed().as_secs_f64() / cfg.time_budget.as_secs_f64();
        let virtual_step = step.max((frac_time * cfg.max_steps as f64) as usize);
        opt.step(&grads, schedule.lr(virtual_step))?;
        losses.push(l);
        smooth = if smooth.is_nan() {
            l as f64
        } else {
            0.95 * smooth + 0.05 * l as f64
        };
        bar.set_position(start.elapsed().as_secs());
        bar.set_message(format!("step {step}, SNR gain on crops {:+.2} dB", -smooth));
    }
    bar.finish();
    Ok(DenoiserReport {
        losses,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Power in [lo, hi) Hz by a direct DFT of `x` (slow, obviously right).
    fn band_power(x: &[f32], fs: f64, lo: f64, hi: f64) -> f64 {
        let n = x.len();
        let mut p = 0.0;
        let k0 = (lo / fs * n as f64).ceil() as usize;
        let k1 = (hi / fs * n as f64).ceil() as usize;
        for k in k0..k1 {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (t, v) in x.iter().enumerate() {
                let ph = 2.0 * PI * (k * t) as f64 / n as f64;
                re += *v as f64 * ph.cos();
                im -= *v as f64 * ph.sin();
            }
            p += re * re + im * im;
        }
        p
    }

    /// Slope in dB per octave between the octave bands [f, 2f) and [2f, 4f), averaged over
    /// several segments.
    fn slope(kind: NoiseKind, f: f64) -> f64 {
        let fs = 16_000.0;
        let mut rng = Rng::new(5);
        let (mut a, mut b) = (0.0, 0.0);
        for _ in 0..4 {
            let x = noise(kind, 2048, fs, &mut rng).unwrap();
            a += band_power(&x, fs, f, 2.0 * f);
            b += band_power(&x, fs, 2.0 * f, 4.0 * f);
        }
        // Power per octave: density ∝ f^−α gives band power ∝ f^{1−α}.
        10.0 * (b / a).log10() - 10.0 * 2f64.log10()
    }

    #[test]
    fn noise_spectra_have_their_slopes() {
        // Density slope in dB/octave (band power minus the 3 dB the band widening adds).
        let w = slope(NoiseKind::White, 500.0);
        let p = slope(NoiseKind::Pink, 500.0);
        let b = slope(NoiseKind::Brown, 500.0);
        assert!(w.abs() < 1.0, "white {w}");
        assert!((p + 3.0).abs() < 1.0, "pink {p}");
        assert!((b + 6.0).abs() < 1.0, "brown {b}");
        for k in NoiseKind::ALL {
            let x = noise(k, 1000, 16_000.0, &mut Rng::new(1)).unwrap();
            assert!((rms(&x) - 1.0).abs() < 1e-6);
            assert_eq!(NoiseKind::from_name(k.name()), Some(k));
            // a sample rate brown noise's leak cannot take is an error, not NaN noise
            for fs in [0.0, -16_000.0, f64::NAN, f64::INFINITY, 100.0] {
                let e = noise(k, 10, fs, &mut Rng::new(1)).unwrap_err().to_string();
                assert!(e.contains("sample rate"), "{e}");
            }
        }
    }

    /// Settings that cannot train are refused before the first step.
    #[test]
    fn degenerate_training_settings_are_refused() {
        use crate::network::{Network, StageSpec};
        let net = Network::new(
            &[StageSpec::Dense {
                d_in: 1,
                d_out: 1,
                bias: true,
            }],
            1,
            0,
            &Device::Cpu,
        )
        .unwrap();
        let clip: Vec<f32> = (0..5000).map(|t| (t as f32 * 0.01).sin()).collect();
        let cfg = DenoiserTraining {
            crop_len: 256,
            latency: 256,
            max_steps: 1,
            ..DenoiserTraining::default()
        };
        let e = train_denoiser(&net, std::slice::from_ref(&clip), &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("latency 256"), "{e}");
        let mut nan = clip.clone();
        nan[3] = f32::NAN;
        let cfg = DenoiserTraining {
            crop_len: 256,
            max_steps: 1,
            ..DenoiserTraining::default()
        };
        let e = train_denoiser(&net, &[clip.clone(), nan], &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("clip 1"), "{e}");
        let cfg = DenoiserTraining {
            sample_rate: 0.0,
            ..cfg
        };
        let e = train_denoiser(&net, &[clip], &cfg).unwrap_err().to_string();
        assert!(e.contains("sample rate"), "{e}");
    }

    #[test]
    fn mixing_hits_the_snr_and_the_loss_is_the_negative_snr() {
        let mut rng = Rng::new(2);
        let clean: Vec<f32> = (0..4000).map(|t| (t as f32 * 0.05).sin() * 0.3).collect();
        let n = noise(NoiseKind::Pink, 4000, 16_000.0, &mut rng).unwrap();
        let mut bad = clean.clone();
        bad[17] = f32::NAN;
        let e = mix_at_snr(&bad, &n, 0.0).unwrap_err().to_string();
        assert!(e.contains("clean sample 17"), "{e}");
        assert!(mix_at_snr(&clean, &n, f64::NAN).is_err());
        for snr in [-5.0, 0.0, 7.5] {
            let noisy = mix_at_snr(&clean, &n, snr).unwrap();
            assert!((snr_db(&clean, &noisy) - snr).abs() < 1e-4);
            let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, v.len(), 1), &Device::Cpu);
            let loss = neg_snr_loss(&t(&noisy).unwrap(), &t(&clean).unwrap())
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!((loss as f64 + snr).abs() < 1e-3, "{loss} vs {snr}");
        }
        assert!(mix_at_snr(&clean, &n[..10], 0.0).is_err());
        assert!(mix_at_snr(&clean, &vec![0.0; 4000], 0.0).is_err());
    }
}
