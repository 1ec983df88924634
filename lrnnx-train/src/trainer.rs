//! A small sequence classifier and its training loop.
//!
//! ```text
//! z = x Wᵢₙᵀ + bᵢₙ                 (B, L, F) → (B, L, H)     `input_proj.{weight,bias}`
//! y = act(layer(z))                (B, L, H)                  `lrnn.<lrnnx key>`
//! p = mean over t of y             (B, H)
//! logits = p Wₒᵤₜᵀ + bₒᵤₜ          (B, C)                     `output_proj.{weight,bias}`
//! loss = mean over the batch of −log softmax(logits)[label]
//! ```
//!
//! `act` is [`Activation::Gelu`] (PyTorch's exact `nn.GELU`) by default, or the identity
//! ([`Activation::None`], which makes the whole model linear in `x`).
//! The layer is any lrnnx class with a fresh initializer ([`crate::init`]); the Linears use
//! PyTorch's default initialization. [`train`] runs AdamW ([`crate::optim`]) with global
//! gradient-norm clipping and a warmup + cosine learning rate over shuffled mini-batches,
//! optionally with a progress bar showing the loss. Everything random (initialization,
//! shuffling) comes from one `u64` seed through [`Rng`]; given the seed, the losses are
//! bit-identical from run to run.

use candle_core::{bail, DType, Device, Result, Tensor, Var, D};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::init::{fresh, linear, Rng};
use crate::layer::{usize_arg, BuildError, TrainLayer};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, WarmupCosine};

/// Sub-stream of the seed used for parameter initialization.
const INIT_STREAM: u64 = 1;
/// Sub-stream of the seed used for shuffling.
const SHUFFLE_STREAM: u64 = 2;

/// A `Linear` layer (`y = x Wᵀ + b`), PyTorch layout.
pub struct Linear {
    weight: Var,
    bias: Var,
}

impl Linear {
    /// PyTorch-default initialized `Linear(n_in, n_out)`.
    pub fn new(n_in: usize, n_out: usize, rng: &mut Rng, device: &Device) -> Result<Self> {
        let (w, b) = linear(n_in, n_out, rng, DType::F32, device)?;
        Ok(Linear {
            weight: Var::from_tensor(&w)?,
            bias: Var::from_tensor(&b)?,
        })
    }

    /// `x Wᵀ + b` over the last axis of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }
}

/// The pointwise function between the layer and the pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `x·Φ(x)` (erf form, PyTorch's `nn.GELU()`).
    #[default]
    Gelu,
    /// The identity.
    None,
}

/// Input projection → lrnnx layer → activation → mean over time → linear head (module doc).
pub struct SeqClassifier {
    n_in: usize,
    activation: Activation,
    input_proj: Linear,
    layer: Box<dyn TrainLayer>,
    output_proj: Linear,
}

impl SeqClassifier {
    /// A fresh classifier of `n_in` input features and `n_classes` classes around lrnnx layer
    /// `class` with constructor arguments `layer_kwargs` (its `d_model` is the hidden width),
    /// every parameter drawn from `seed`.
    pub fn new(
        class: &str,
        layer_kwargs: &Value,
        n_in: usize,
        n_classes: usize,
        seed: u64,
    ) -> std::result::Result<Self, BuildError> {
        let h = usize_arg(layer_kwargs, "d_model")?;
        if n_in == 0 || n_classes == 0 {
            return Err(BuildError::Kwarg(
                "the classifier needs at least one input feature and one class".into(),
            ));
        }
        let device = Device::Cpu;
        let mut rng = Rng::new(seed).fork(INIT_STREAM);
        let input_proj = Linear::new(n_in, h, &mut rng, &device)?;
        let layer = fresh(class, layer_kwargs, &mut rng, DType::F32, &device)?;
        let output_proj = Linear::new(h, n_classes, &mut rng, &device)?;
        Ok(SeqClassifier {
            n_in,
            activation: Activation::default(),
            input_proj,
            layer,
            output_proj,
        })
    }

    /// The same classifier with activation `activation` between the layer and the pooling.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Every parameter with its name (`input_proj.*`, `lrnn.<lrnnx key>`, `output_proj.*`).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![
            ("input_proj.weight".into(), self.input_proj.weight.clone()),
            ("input_proj.bias".into(), self.input_proj.bias.clone()),
        ];
        for (k, var) in self.layer.params().vars() {
            v.push((format!("lrnn.{k}"), var.clone()));
        }
        v.push(("output_proj.weight".into(), self.output_proj.weight.clone()));
        v.push(("output_proj.bias".into(), self.output_proj.bias.clone()));
        v
    }

    /// The logits (B, C) for `x` (B, L, F).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match x.dims() {
            [_, l, f] if *f == self.n_in && *l > 0 => {}
            d => bail!(
                "input `x` has shape {d:?}, expected (batch, length ≥ 1, {})",
                self.n_in
            ),
        }
        let z = self.input_proj.forward(x)?;
        let y = self.layer.forward(&z, None)?;
        let y = match self.activation {
            Activation::Gelu => y.gelu_erf()?,
            Activation::None => y,
        };
        self.output_proj.forward(&y.mean(1)?)
    }

    /// The predicted classes of `x` (B, L, F).
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.logits(x)?.argmax(D::Minus1)?.to_vec1::<u32>()
    }
}

/// Mean cross-entropy of `logits` (B, C) against `labels` (B entries, each < C).
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if b == 0 || c == 0 {
        bail!("cross_entropy needs at least one row and one class, got logits ({b}, {c})");
    }
    if labels.len() != b {
        bail!("`labels` has {} entries for a batch of {b}", labels.len());
    }
    let mut onehot = vec![0f32; b * c];
    for (i, &l) in labels.iter().enumerate() {
        if l as usize >= c {
            bail!("label {l} out of range for {c} classes");
        }
        onehot[i * c + l as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (b, c), logits.device())?.to_dtype(logits.dtype())?;
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_p = shifted.broadcast_sub(&log_z)?;
    (log_p * onehot)?.sum_all()? / -(b as f64)
}

/// A labelled set of sequences: `x` (n, L, F) and one label per sequence.
pub struct Dataset {
    /// The sequences, (n, L, F), f32.
    pub x: Tensor,
    /// The labels.
    pub labels: Vec<u32>,
}

impl Dataset {
    /// From row-major data of `n` sequences of `len` steps and `features` features each.
    pub fn new(
        data: Vec<f32>,
        n: usize,
        len: usize,
        features: usize,
        labels: Vec<u32>,
    ) -> Result<Self> {
        let want = n.checked_mul(len).and_then(|v| v.checked_mul(features));
        if want != Some(data.len()) || labels.len() != n {
            bail!(
                "dataset: {} values and {} labels for {n} sequences of ({len}, {features})",
                data.len(),
                labels.len()
            );
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!(
                "dataset: value {i} (sequence {}) is {}: every value must be finite",
                i / (len * features).max(1),
                data[i]
            );
        }
        Ok(Dataset {
            x: Tensor::from_vec(data, (n, len, features), &Device::Cpu)?,
            labels,
        })
    }

    /// The number of sequences.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The sequences and labels at `idx`.
    pub fn batch(&self, idx: &[u32]) -> Result<(Tensor, Vec<u32>)> {
        if let Some(&i) = idx.iter().find(|&&i| i as usize >= self.len()) {
            bail!(
                "dataset: index {i} out of range for {} sequences",
                self.len()
            );
        }
        let t = Tensor::new(idx, self.x.device())?;
        let labels = idx.iter().map(|&i| self.labels[i as usize]).collect();
        Ok((self.x.index_select(&t, 0)?, labels))
    }
}

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Sequences per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Peak learning rate (after warmup).
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup, in steps.
    pub warmup_steps: usize,
    /// AdamW's β₁, β₂, ε and decoupled weight decay (applied to matrices only: parameters of
    /// rank ≥ 2; biases and per-state vectors such as `log_dt` are not decayed).
    pub adamw: AdamWConfig,
    /// Global gradient-norm limit (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Seed of the shuffling (use the model's seed: one `u64` for the whole run).
    pub seed: u64,
    /// Draw a progress bar with the loss on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 32,
            lr: 3e-3,
            min_lr: 1e-5,
            warmup_steps: 50,
            adamw: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            seed: 0,
            progress: false,
        }
    }
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The loss of every step, in order.
    pub losses: Vec<f32>,
    /// The mean loss of every epoch.
    pub epoch_losses: Vec<f32>,
    /// Steps taken.
    pub steps: usize,
}

/// Trains `model` on `data` (module doc); returns the losses.
pub fn train(model: &SeqClassifier, data: &Dataset, cfg: &TrainConfig) -> Result<TrainReport> {
    if data.is_empty() || cfg.batch_size == 0 {
        bail!("training needs a non-empty dataset and a positive batch size");
    }
    train_minibatches(model.vars(), data.len(), cfg, |idx| {
        let (x, labels) = data.batch(idx)?;
        cross_entropy(&model.logits(&x)?, &labels)
    })
}

/// The training loop shared by the classifiers: `cfg.epochs` passes over `n_items` items in
/// shuffled mini-batches of `cfg.batch_size` (shuffle stream forked from `cfg.seed`), each
/// step minimizing `loss_of(batch indices)` over `vars` with AdamW (no weight decay on
/// parameters of rank < 2), global gradient-norm clipping and warmup + cosine decay. Stops with
/// an error at a non-finite loss.
pub fn train_minibatches(
    vars: Vec<(String, candle_core::Var)>,
    n_items: usize,
    cfg: &TrainConfig,
    mut loss_of: impl FnMut(&[u32]) -> Result<Tensor>,
) -> Result<TrainReport> {
    if n_items == 0 || cfg.batch_size == 0 {
        bail!("training needs items and a positive batch size");
    }
    let mut opt = AdamW::new(vars.clone(), cfg.adamw)?;
    for (name, var) in &vars {
        if var.rank() < 2 {
            opt.set_weight_decay(name, 0.0);
        }
    }
    let steps_per_epoch = n_items.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let schedule = WarmupCosine {
        peak_lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_steps: cfg.warmup_steps.min(total),
        total_steps: total,
    };
    let bar = if cfg.progress {
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps, epoch {prefix} loss {msg} (eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut shuffle_rng = Rng::new(cfg.seed).fork(SHUFFLE_STREAM);
    let mut order: Vec<u32> = (0..n_items as u32).collect();
    let mut report = TrainReport {
        losses: Vec::with_capacity(total),
        epoch_losses: Vec::with_capacity(cfg.epochs),
        steps: 0,
    };
    for epoch in 0..cfg.epochs {
        shuffle_rng.shuffle(&mut order);
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        let mut epoch_sum = 0.0f64;
        for idx in order.chunks(cfg.batch_size) {
            let loss = loss_of(idx)?;
            // A non-finite loss or gradient stops training before the optimizer step, so the
            // parameters (and AdamW's moments) keep their last finite values.
            let l = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
            if !l.is_finite() {
                bar.abandon();
                bail!(
                    "loss is {l} at step {}; the parameters were not updated",
                    report.steps
                );
            }
            let mut grads = loss.backward()?;
            let max_norm = cfg.max_grad_norm.unwrap_or(f64::INFINITY);
            if let Err(e) = clip_grad_norm(&mut grads, vars.iter().map(|(_, v)| v), max_norm) {
                bar.abandon();
                bail!(
                    "step {}: {e}; the parameters were not updated",
                    report.steps
                );
            }
            opt.step(&grads, schedule.lr(report.steps))?;
            report.losses.push(l);
            report.steps += 1;
            epoch_sum += l as f64 * idx.len() as f64;
            bar.set_message(format!("{l:.4}"));
            bar.inc(1);
        }
        report
            .epoch_losses
            .push((epoch_sum / n_items as f64) as f32);
    }
    bar.finish();
    Ok(report)
}

/// The fraction of `data` that `model` classifies correctly (evaluated `batch_size` at a time).
pub fn accuracy(model: &SeqClassifier, data: &Dataset, batch_size: usize) -> Result<f64> {
    if data.is_empty() || batch_size == 0 {
        bail!("accuracy needs a non-empty dataset and a positive batch size");
    }
    let idx: Vec<u32> = (0..data.len() as u32).collect();
    let mut right = 0usize;
    for chunk in idx.chunks(batch_size) {
        let (x, labels) = data.batch(chunk)?;
        let pred = model.predict(&x)?;
        right += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    }
    Ok(right as f64 / data.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A toy task: the class is the sign of a pulse at a random time, in noise.
    fn toy(n: usize, seed: u64) -> Dataset {
        let (l, f) = (12, 2);
        let mut r = Rng::new(seed);
        let mut x = vec![0f32; n * l * f];
        let mut labels = Vec::new();
        for i in 0..n {
            let c = (i % 2) as u32;
            let t = r.below(l);
            for v in x[i * l * f..(i + 1) * l * f].iter_mut() {
                *v = 0.1 * r.normal() as f32;
            }
            x[(i * l + t) * f] += 2.0 * c as f32 - 1.0;
            labels.push(c);
        }
        Dataset::new(x, n, l, f, labels).unwrap()
    }

    fn config(epochs: usize, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: 8,
            lr: 1e-2,
            warmup_steps: 3,
            seed,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn cross_entropy_matches_hand_computed() {
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &Device::Cpu).unwrap();
        let got: f32 = cross_entropy(&logits, &[1, 0])
            .unwrap()
            .to_scalar()
            .unwrap();
        let lse = |v: &[f64]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let e = 0.5 * ((lse(&[1.0, 2.0, 0.5]) - 2.0) + (lse(&[0.0, 0.0, 3.0]) - 0.0));
        assert!((got as f64 - e).abs() < 1e-6, "{got} {e}");
        assert!(cross_entropy(&logits, &[1]).is_err());
        assert!(cross_entropy(&logits, &[1, 3]).is_err());
        let empty = Tensor::zeros((0, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(cross_entropy(&empty, &[]).is_err());
    }

    /// A step whose loss is not finite stops training with an error before the optimizer runs:
    /// every parameter keeps its value.
    #[test]
    fn a_non_finite_loss_leaves_the_parameters_unchanged() {
        let data = toy(16, 5);
        let kw = json!({"d_model": 4, "d_state": 3});
        let m = SeqClassifier::new("LRU", &kw, 2, 2, 1).unwrap();
        let vars = m.vars();
        let (_, w) = vars.iter().find(|(n, _)| n == "input_proj.weight").unwrap();
        w.set(&(w.as_tensor().ones_like().unwrap() * 3e38).unwrap())
            .unwrap();
        let before: Vec<Vec<f32>> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let e = train(&m, &data, &config(1, 1)).unwrap_err().to_string();
        assert!(e.contains("not updated"), "{e}");
        let after: Vec<Vec<f32>> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let bits =
            |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&before), bits(&after));
    }

    #[test]
    fn same_seed_gives_bit_identical_losses() {
        let data = toy(32, 4);
        for class in ["lrnnx.models.lti.s5.S5", "lrnnx.models.lti.lru.LRU"] {
            let kw = json!({"d_model": 8, "d_state": 4, "discretization": "zoh"});
            let run = |seed: u64| {
                let m = SeqClassifier::new(class, &kw, 2, 2, seed).unwrap();
                train(&m, &data, &config(2, seed)).unwrap().losses
            };
            let (a, b, c) = (run(11), run(11), run(12));
            assert_eq!(a.len(), 8);
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{class}"
            );
            assert_ne!(a, c, "{class}: another seed must give another run");
        }
    }

    #[test]
    fn learns_a_toy_task() {
        let data = toy(64, 8);
        let kw = json!({"d_model": 8, "d_state": 8, "discretization": "zoh"});
        let m = SeqClassifier::new("lrnnx.models.lti.s5.S5", &kw, 2, 2, 3).unwrap();
        let before = accuracy(&m, &data, 16).unwrap();
        let r = train(&m, &data, &config(15, 3)).unwrap();
        let after = accuracy(&m, &data, 16).unwrap();
        assert!(
            r.epoch_losses.last().unwrap() < &(0.5 * r.epoch_losses[0]),
            "{:?}",
            r.epoch_losses
        );
        assert!(after >= 0.9 && after >= before, "{before} → {after}");
    }

    #[test]
    fn names_and_errors() {
        let kw = json!({"d_model": 4, "d_state": 3});
        let m = SeqClassifier::new("LRU", &kw, 2, 3, 0).unwrap();
        let names: Vec<String> = m.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.first().unwrap(), "input_proj.weight");
        assert!(names.contains(&"lrnn.nu_log".to_string()));
        assert_eq!(names.last().unwrap(), "output_proj.bias");
        let bad = Tensor::zeros((2, 5, 3), DType::F32, &Device::Cpu).unwrap();
        let e = m.logits(&bad).unwrap_err().to_string();
        assert!(e.contains("`x`"), "{e}");
        assert!(SeqClassifier::new("LRU", &json!({"d_state": 3}), 2, 3, 0).is_err());
        assert!(Dataset::new(vec![0.0; 5], 1, 2, 2, vec![0]).is_err());
        // sizes whose product overflows, a NaN value, an index past the end
        assert!(Dataset::new(vec![], 1, 1 << 33, 1 << 31, vec![0]).is_err());
        let e = Dataset::new(vec![0.0, f32::NAN, 0.0, 0.0], 2, 1, 2, vec![0, 1])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("value 1") && e.contains("NaN"), "{e}");
        let d = Dataset::new(vec![0.0; 4], 2, 1, 2, vec![0, 1]).unwrap();
        assert!(d.batch(&[1, 0]).is_ok());
        let e = d.batch(&[2]).unwrap_err().to_string();
        assert!(e.contains("index 2"), "{e}");
    }
}
