//! A hierarchical sequence classifier in the Event-SSM style (lrnnx's
//! `architectures.classifier.Classifier`, spec §14.2): event-driven layers at decreasing rates
//! with mean pooling between the stages and a sequence-pooling head, built as a
//! [`crate::network`] spec, so that it trains in parallel here and exports to
//! `lrnnx_core::Network`, which steps it event by event.
//!
//! ```text
//! h = x Wᵢₙᵀ + bᵢₙ                                       (B, L, F) → (B, L, H)   stage 0
//! block j = 0 … n−1:  h ← Norm(h + act(lrnn_j(h, τ)))    (residual, then LayerNorm)
//!                     between blocks: Downsample(k, Mean)  h_m = (h_{km} + … + h_{km+k−1})/k,
//!                                                          τ_m = τ_{km} + … + τ_{km+k−1}
//! z_m = h_m Wₒᵤₜᵀ + bₒᵤₜ                                 (B, L/F, C),  F = k^(n−1)
//! logits_b = (1/N_b) Σ_{m < N_b} z_{b,m}   (head "mean")   or   z_{b, N_b − 1}   (head "last")
//! N_b = ⌊len_b / F⌋                                       (complete frames of sequence b)
//! loss = mean_b −log softmax(logits_b)[label_b]
//! ```
//!
//! The output projection is applied to every frame before the pooling (the stream classifier
//! then only averages logits): pooling is linear, so `mean(z) = mean(h)·Wₒᵤₜᵀ + bₒᵤₜ`, the same
//! numbers as lrnnx's pool-then-project. The block is lrnnx's `x ← LayerNorm(lrnn(x) + x)` with
//! an optional pointwise `act` on the layer output (default GELU: an S5 layer is linear, and
//! without it the only nonlinearity would be the norm; `act = None` is lrnnx's block exactly).
//! Dropout is not used.
//!
//! **Lengths, padding and masking.** A batch holds sequences of different lengths `len_b`,
//! padded at the end to the longest (inputs 0, time steps 1; [`EventSet::batch`]). Every stage
//! is causal, so padding changes no frame that ends at or before `len_b`; the head uses the
//! `N_b = ⌊len_b / F⌋` complete frames of each sequence and nothing else, so a padded sequence
//! gives the same logits as the same sequence alone (tested). The last `len_b mod F` events of a
//! sequence reach no frame (the stream classifier, stepping event by event, sees exactly the
//! same frames), and a sequence needs at least `F` events ([`EventClassifier::logits`] refuses
//! shorter ones). This differs from lrnnx's `SequencePooling`, which also averages the last,
//! incomplete window with zeros for the padding: that window depends on where the sequence
//! ends, which a causal stream does not know.

use candle_core::{bail, DType, Device, Result, Tensor, D};
use serde_json::Value;

use crate::layer::BuildError;
use crate::network::{output_factor, Activation, Network, NormKind, Pooling, StageSpec};
use crate::trainer::{cross_entropy, train_minibatches, TrainConfig, TrainReport};

/// How the head pools the frames of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadPooling {
    /// The mean over the complete frames (masked by the length).
    Mean,
    /// The last complete frame.
    Last,
}

/// The classifier's architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    /// Features per event.
    pub d_in: usize,
    /// Number of classes.
    pub n_classes: usize,
    /// Width `H` of every block.
    pub d_model: usize,
    /// Number of blocks `n` (≥ 1).
    pub n_blocks: usize,
    /// Mean-pooling factor `k` between blocks (≥ 1).
    pub pooling_factor: usize,
    /// lrnnx class of every block's layer (e.g. `lrnnx.models.ltv.s5.S5`, event-driven).
    pub layer_class: String,
    /// Its constructor arguments; `d_model` is set to [`ClassifierConfig::d_model`].
    pub layer_kwargs: Value,
    /// Pointwise function on the layer output before the residual (`None`: lrnnx's block).
    pub activation: Option<Activation>,
    /// The block norm (lrnnx: LayerNorm).
    pub norm: NormKind,
    /// The head's sequence pooling.
    pub head: HeadPooling,
}

impl ClassifierConfig {
    /// S5 time-varying (Event-SSM mode, zoh) blocks with GELU, LayerNorm and a mean head.
    pub fn event_s5(
        d_in: usize,
        n_classes: usize,
        d_model: usize,
        d_state: usize,
        n_blocks: usize,
        pooling_factor: usize,
    ) -> Self {
        ClassifierConfig {
            d_in,
            n_classes,
            d_model,
            n_blocks,
            pooling_factor,
            layer_class: "lrnnx.models.ltv.s5.S5".into(),
            layer_kwargs: serde_json::json!({"d_state": d_state, "discretization": "zoh"}),
            activation: Some(Activation::Gelu),
            norm: NormKind::LayerNorm,
            head: HeadPooling::Mean,
        }
    }

    /// The network spec (module doc): input projection, the blocks with a mean downsample
    /// between them, the output projection applied per frame.
    pub fn spec(&self) -> std::result::Result<Vec<StageSpec>, BuildError> {
        if self.d_in == 0 || self.n_classes == 0 || self.d_model == 0 {
            return Err(BuildError::Kwarg(
                "classifier: d_in, n_classes and d_model must be positive".into(),
            ));
        }
        if self.n_blocks == 0 || self.pooling_factor == 0 {
            return Err(BuildError::Kwarg(
                "classifier: n_blocks and pooling_factor must be at least 1".into(),
            ));
        }
        let mut kwargs = match &self.layer_kwargs {
            Value::Object(m) => m.clone(),
            Value::Null => Default::default(),
            _ => {
                return Err(BuildError::Kwarg(
                    "classifier: layer_kwargs must be a JSON object".into(),
                ))
            }
        };
        kwargs.insert("d_model".into(), self.d_model.into());
        let h = self.d_model;
        let mut spec = vec![StageSpec::Dense {
            d_in: self.d_in,
            d_out: h,
            bias: true,
        }];
        for j in 0..self.n_blocks {
            spec.push(StageSpec::ResidualBegin);
            spec.push(StageSpec::Layer {
                class: self.layer_class.clone(),
                kwargs: Value::Object(kwargs.clone()),
            });
            if let Some(a) = self.activation {
                spec.push(StageSpec::Activation(a));
            }
            spec.push(StageSpec::ResidualEnd);
            spec.push(StageSpec::Norm {
                kind: self.norm,
                d: h,
                eps: 1e-5,
            });
            if j + 1 < self.n_blocks {
                spec.push(StageSpec::Downsample {
                    factor: self.pooling_factor,
                    pooling: Pooling::Mean,
                });
            }
        }
        spec.push(StageSpec::Dense {
            d_in: h,
            d_out: self.n_classes,
            bias: true,
        });
        Ok(spec)
    }
}

/// The trainable classifier: its configuration and the network of [`ClassifierConfig::spec`].
pub struct EventClassifier {
    config: ClassifierConfig,
    net: Network,
    factor: usize,
}

impl EventClassifier {
    /// A fresh classifier, every parameter drawn from `seed` (f32).
    pub fn new(config: ClassifierConfig, seed: u64) -> std::result::Result<Self, BuildError> {
        EventClassifier::with_dtype(config, seed, DType::F32)
    }

    /// Like [`EventClassifier::new`] with parameters in `dtype` (F64 for gradient checks).
    pub fn with_dtype(
        config: ClassifierConfig,
        seed: u64,
        dtype: DType,
    ) -> std::result::Result<Self, BuildError> {
        let spec = config.spec()?;
        let net = Network::with_dtype(&spec, config.d_in, seed, &Device::Cpu, dtype)?;
        let factor = output_factor(&spec);
        Ok(EventClassifier {
            config,
            net,
            factor,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// The network (for export to the core: `lrnnx::export_network`).
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Events per output frame, `F = k^(n−1)`: the least length a sequence may have.
    pub fn frame_factor(&self) -> usize {
        self.factor
    }

    /// The logits (B, C) of `x` (B, L, d_in) with event time steps `time_steps` (B, L) and the
    /// true lengths `lengths` (B entries, `F ≤ len_b ≤ L`); padding beyond a length is ignored
    /// (module doc).
    pub fn logits(&self, x: &Tensor, time_steps: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, l) = match x.dims() {
            [b, l, f] if *f == self.config.d_in => (*b, *l),
            d => bail!(
                "classifier input `x` has shape {d:?}, expected (batch, length, {})",
                self.config.d_in
            ),
        };
        if lengths.len() != b {
            bail!("`lengths` has {} entries for a batch of {b}", lengths.len());
        }
        let frames = l / self.factor;
        let mut w = vec![0f64; b * frames.max(1)];
        for (i, &len) in lengths.iter().enumerate() {
            if len > l || len < self.factor {
                bail!(
                    "`lengths[{i}]` = {len}: a sequence needs {} to {l} events (padded length {l}, \
                     frame factor {})",
                    self.factor,
                    self.factor
                );
            }
            let n = len / self.factor;
            match self.config.head {
                HeadPooling::Mean => w[i * frames..i * frames + n]
                    .iter_mut()
                    .for_each(|v| *v = 1.0 / n as f64),
                HeadPooling::Last => w[i * frames + n - 1] = 1.0,
            }
        }
        let z = self.net.forward(x, Some(time_steps))?; // (B, frames, C)
        let w = Tensor::from_vec(w, (b, frames, 1), x.device())?.to_dtype(z.dtype())?;
        z.broadcast_mul(&w)?.sum(1)
    }

    /// The predicted classes.
    pub fn predict(&self, x: &Tensor, time_steps: &Tensor, lengths: &[usize]) -> Result<Vec<u32>> {
        self.logits(x, time_steps, lengths)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()
    }
}

/// A labelled set of event sequences of different lengths: per event `d_in` features and a
/// time step (the time since the previous event, > 0).
#[derive(Debug, Clone, PartialEq)]
pub struct EventSet {
    d_in: usize,
    features: Vec<Vec<f32>>,
    time_steps: Vec<Vec<f32>>,
    labels: Vec<u32>,
}

impl EventSet {
    /// From per-sequence features (`len·d_in` values, event-major), time steps (`len` values,
    /// positive and finite) and labels; every error names the sequence.
    pub fn new(
        d_in: usize,
        features: Vec<Vec<f32>>,
        time_steps: Vec<Vec<f32>>,
        labels: Vec<u32>,
    ) -> Result<Self> {
        if d_in == 0 || features.len() != time_steps.len() || features.len() != labels.len() {
            bail!(
                "event set: {} feature sequences, {} time-step sequences, {} labels, d_in {d_in}",
                features.len(),
                time_steps.len(),
                labels.len()
            );
        }
        for (i, (f, t)) in features.iter().zip(&time_steps).enumerate() {
            if f.len() != t.len() * d_in || t.is_empty() {
                bail!(
                    "event set: sequence {i} has {} feature values for {} events of {d_in}",
                    f.len(),
                    t.len()
                );
            }
            if let Some(k) = f.iter().position(|v| !v.is_finite()) {
                bail!("event set: sequence {i} has a non-finite feature at {k}");
            }
            if let Some(k) = t.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
                bail!(
                    "event set: sequence {i} has time step {} at event {k} (must be > 0)",
                    t[k]
                );
            }
        }
        Ok(EventSet {
            d_in,
            features,
            time_steps,
            labels,
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features per event.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Sequence `i`: (features, time steps, label).
    pub fn get(&self, i: usize) -> Option<(&[f32], &[f32], u32)> {
        Some((
            self.features.get(i)?,
            self.time_steps.get(i)?,
            *self.labels.get(i)?,
        ))
    }

    /// The sequences at `idx`, padded at the end to the longest (inputs 0, time steps 1):
    /// `x` (B, L, d_in), time steps (B, L), the lengths and the labels.
    pub fn batch(&self, idx: &[u32]) -> Result<(Tensor, Tensor, Vec<usize>, Vec<u32>)> {
        let mut lengths = Vec::with_capacity(idx.len());
        for &i in idx {
            match self.time_steps.get(i as usize) {
                Some(t) => lengths.push(t.len()),
                None => bail!(
                    "event set: index {i} out of range ({} sequences)",
                    self.len()
                ),
            }
        }
        let l = lengths.iter().copied().max().unwrap_or(0);
        let (b, d) = (idx.len(), self.d_in);
        let mut x = vec![0f32; b * l * d];
        let mut dt = vec![1f32; b * l];
        for (r, &i) in idx.iter().enumerate() {
            let (f, t) = (&self.features[i as usize], &self.time_steps[i as usize]);
            x[r * l * d..r * l * d + f.len()].copy_from_slice(f);
            dt[r * l..r * l + t.len()].copy_from_slice(t);
        }
        let labels = idx.iter().map(|&i| self.labels[i as usize]).collect();
        Ok((
            Tensor::from_vec(x, (b, l, d), &Device::Cpu)?,
            Tensor::from_vec(dt, (b, l), &Device::Cpu)?,
            lengths,
            labels,
        ))
    }
}

/// Trains `model` on `data` with AdamW (weight decay on matrices only), global gradient-norm
/// clipping and warmup + cosine decay over shuffled mini-batches ([`TrainConfig`], as
/// [`crate::trainer::train`]); deterministic given `cfg.seed`.
pub fn train(model: &EventClassifier, data: &EventSet, cfg: &TrainConfig) -> Result<TrainReport> {
    if data.is_empty() || cfg.batch_size == 0 {
        bail!("training needs a non-empty event set and a positive batch size");
    }
    train_minibatches(model.net.vars(), data.len(), cfg, |idx| {
        let (x, dt, lengths, labels) = data.batch(idx)?;
        cross_entropy(&model.logits(&x, &dt, &lengths)?, &labels)
    })
}

/// The logits of every sequence of `data` (in order), evaluated `batch_size` at a time.
pub fn all_logits(
    model: &EventClassifier,
    data: &EventSet,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    if batch_size == 0 {
        bail!("evaluation needs a positive batch size");
    }
    let idx: Vec<u32> = (0..data.len() as u32).collect();
    let mut out = Vec::with_capacity(data.len());
    for chunk in idx.chunks(batch_size) {
        let (x, dt, lengths, _) = data.batch(chunk)?;
        let z: Vec<Vec<f32>> = model
            .logits(&x, &dt, &lengths)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        out.extend(z);
    }
    Ok(out)
}

/// The index of the largest value (the first on ties; `0` for an empty slice).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// The fraction of `data` whose largest logit is its label.
pub fn accuracy(model: &EventClassifier, data: &EventSet, batch_size: usize) -> Result<f64> {
    if data.is_empty() {
        bail!("accuracy needs a non-empty event set");
    }
    let logits = all_logits(model, data, batch_size)?;
    let right = logits
        .iter()
        .zip(&data.labels)
        .filter(|(z, &l)| argmax(z) == l as usize)
        .count();
    Ok(right as f64 / data.len() as f64)
}

/// The 8×8 digits of `tests/data/digits` (records of 64 pixel intensities 0..16, row-major,
/// then the label) as event sequences: every nonzero pixel, in raster order, is one event
///
/// ```text
/// r = 8·row + col        features (v/16, (2·col + 1)/8 − 1, (2·row + 1)/8 − 1)
/// t = r + 1              time step τ_i = t_i − t_{i−1}  (t_{−1} = 0), so τ ≥ 1, irregular
/// ```
///
/// (16 to 42 events per digit). Errors name the record.
pub fn digit_events(raw: &[u8]) -> Result<EventSet> {
    const REC: usize = 65;
    if raw.is_empty() || !raw.len().is_multiple_of(REC) {
        bail!(
            "digits: {} bytes is not a positive multiple of 65-byte records",
            raw.len()
        );
    }
    let (mut features, mut steps, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (i, rec) in raw.chunks_exact(REC).enumerate() {
        if rec[..64].iter().any(|&p| p > 16) || rec[64] > 9 {
            bail!("digits: record {i} is out of range (pixels 0..16, label 0..9)");
        }
        let (mut f, mut t, mut prev) = (Vec::new(), Vec::new(), 0usize);
        for (r, &v) in rec[..64].iter().enumerate().filter(|(_, &v)| v > 0) {
            let (row, col) = (r / 8, r % 8);
            f.extend([
                v as f32 / 16.0,
                (2 * col + 1) as f32 / 8.0 - 1.0,
                (2 * row + 1) as f32 / 8.0 - 1.0,
            ]);
            t.push((r + 1 - prev) as f32);
            prev = r + 1;
        }
        if t.is_empty() {
            bail!("digits: record {i} has no nonzero pixel");
        }
        features.push(f);
        steps.push(t);
        labels.push(rec[64] as u32);
    }
    EventSet::new(3, features, steps, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(head: HeadPooling, dtype: DType) -> EventClassifier {
        let mut cfg = ClassifierConfig::event_s5(3, 3, 4, 2, 2, 2);
        cfg.head = head;
        EventClassifier::with_dtype(cfg, 5, dtype).unwrap()
    }

    fn toy_set(lengths: &[usize]) -> EventSet {
        let (mut f, mut t, mut l) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &n) in lengths.iter().enumerate() {
            f.push(
                (0..3 * n)
                    .map(|k| ((k * 7 + i * 3) as f32 * 0.37).sin())
                    .collect(),
            );
            t.push((0..n).map(|k| 0.5 + ((k + i) % 3) as f32).collect());
            l.push((i % 3) as u32);
        }
        EventSet::new(3, f, t, l).unwrap()
    }

    /// Shapes, the spec's structure, and masking: a sequence padded inside a batch of longer
    /// ones gives the same logits as alone; lengths shorter than a frame are refused.
    #[test]
    fn padded_sequences_give_their_own_logits() {
        for head in [HeadPooling::Mean, HeadPooling::Last] {
            let m = tiny(head, DType::F32);
            assert_eq!(m.frame_factor(), 2);
            let spec = m.config().spec().unwrap();
            assert_eq!(
                spec.iter()
                    .filter(|s| matches!(s, StageSpec::Downsample { .. }))
                    .count(),
                1
            );
            let set = toy_set(&[5, 11, 2, 8]);
            let (x, dt, lengths, _) = set.batch(&[0, 1, 2, 3]).unwrap();
            assert_eq!(x.dims(), [4, 11, 3]);
            assert_eq!(lengths, [5, 11, 2, 8]);
            let together: Vec<Vec<f32>> = m.logits(&x, &dt, &lengths).unwrap().to_vec2().unwrap();
            assert_eq!((together.len(), together[0].len()), (4, 3));
            for i in 0..4u32 {
                let (x, dt, lengths, _) = set.batch(&[i]).unwrap();
                let alone: Vec<Vec<f32>> = m.logits(&x, &dt, &lengths).unwrap().to_vec2().unwrap();
                for (a, b) in alone[0].iter().zip(&together[i as usize]) {
                    assert!(
                        (a - b).abs() < 1e-5 * (1.0 + a.abs()),
                        "{head:?} {i}: {a} vs {b}"
                    );
                }
            }
            let e = m.logits(&x, &dt, &[5, 11, 1, 8]).unwrap_err().to_string();
            assert!(e.contains("lengths[2]"), "{e}");
            assert!(m.logits(&x, &dt, &[5, 12, 2, 8]).is_err());
            assert!(m.logits(&x, &dt, &[5, 11]).is_err());
        }
    }

    /// Last-frame head = the frame of the (independently computed) network output at
    /// `⌊len/F⌋ − 1`; mean head = the mean of the first `⌊len/F⌋` frames.
    #[test]
    fn heads_pool_the_complete_frames() {
        let set = toy_set(&[9]);
        let (x, dt, lengths, _) = set.batch(&[0]).unwrap();
        let mean = tiny(HeadPooling::Mean, DType::F32);
        let last = tiny(HeadPooling::Last, DType::F32);
        let frames: Vec<Vec<f32>> = mean
            .network()
            .forward(&x, Some(&dt))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(frames.len(), 4);
        let zm: Vec<Vec<f32>> = mean.logits(&x, &dt, &lengths).unwrap().to_vec2().unwrap();
        let zl: Vec<Vec<f32>> = last.logits(&x, &dt, &lengths).unwrap().to_vec2().unwrap();
        for c in 0..3 {
            let m = frames.iter().map(|f| f[c] as f64).sum::<f64>() / 4.0;
            assert!((zm[0][c] as f64 - m).abs() < 1e-6, "{} vs {m}", zm[0][c]);
            assert_eq!(zl[0][c], frames[3][c]);
        }
    }

    /// Gradients of the cross-entropy of a tiny classifier (2 blocks, event-mode S5, LayerNorm,
    /// mean pooling, padding) against central finite differences in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let m = tiny(HeadPooling::Mean, DType::F64);
        let set = toy_set(&[7, 4, 6]);
        let (x, dt, lengths, labels) = set.batch(&[0, 1, 2]).unwrap();
        let (x, dt) = (
            x.to_dtype(DType::F64).unwrap(),
            dt.to_dtype(DType::F64).unwrap(),
        );
        let loss = |m: &EventClassifier| -> f64 {
            cross_entropy(&m.logits(&x, &dt, &lengths).unwrap(), &labels)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let vars = m.network().vars();
        let l = cross_entropy(&m.logits(&x, &dt, &lengths).unwrap(), &labels).unwrap();
        let grads = l.backward().unwrap();
        let mut checked = 0;
        for (name, var) in &vars {
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for k in [0, orig.len() / 2, orig.len() - 1] {
                let at = |delta: f64| {
                    let mut v = orig.clone();
                    v[k] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    var.set(&t).unwrap();
                    loss(&m)
                };
                let h = 1e-6;
                let fd = (at(h) - at(-h)) / (2.0 * h);
                var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                assert!(
                    (fd - g[k]).abs() < 1e-6 + 1e-5 * fd.abs(),
                    "{name}[{k}]: autodiff {} vs finite differences {fd}",
                    g[k]
                );
                checked += 1;
            }
        }
        // input proj (2), 2 × (S5: A, B, C, D, log_dt; norm: w, b), head (2).
        assert_eq!(vars.len(), 2 + 2 * 7 + 2);
        assert_eq!(checked, 3 * vars.len());
    }

    #[test]
    fn digits_become_events_and_bad_data_is_refused() {
        let mut rec = vec![0u8; 65];
        rec[3] = 16; // row 0, col 3
        rec[10] = 8; // row 1, col 2
        rec[64] = 7;
        let set = digit_events(&rec).unwrap();
        let (f, t, label) = set.get(0).unwrap();
        assert_eq!(label, 7);
        assert_eq!(t, [4.0, 7.0]);
        assert_eq!(f, [1.0, -0.125, -0.875, 0.5, -0.375, -0.625]);
        assert!(digit_events(&rec[..64]).is_err());
        let mut bad = rec.clone();
        bad[0] = 17;
        assert!(digit_events(&bad)
            .unwrap_err()
            .to_string()
            .contains("record 0"));
        assert!(digit_events(&[0u8; 65]).is_err());
        assert!(EventSet::new(3, vec![vec![0.0; 3]], vec![vec![0.0]], vec![0]).is_err());
        assert!(EventSet::new(3, vec![vec![0.0; 2]], vec![vec![1.0]], vec![0]).is_err());
        let cfg = ClassifierConfig {
            n_blocks: 0,
            ..ClassifierConfig::event_s5(3, 2, 4, 2, 1, 2)
        };
        assert!(EventClassifier::new(cfg, 0).is_err());
    }

    /// Training lowers the loss on a toy task and is deterministic given the seed.
    #[test]
    fn trains_deterministically() {
        let set = toy_set(&[6, 9, 7, 8, 10, 6, 7, 9, 8, 6, 7, 11]);
        let cfg = TrainConfig {
            epochs: 8,
            batch_size: 4,
            lr: 1e-2,
            warmup_steps: 2,
            seed: 3,
            ..TrainConfig::default()
        };
        let run = || {
            let m = tiny(HeadPooling::Mean, DType::F32);
            train(&m, &set, &cfg).unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a.losses, b.losses);
        assert!(
            a.epoch_losses.last().unwrap() < &a.epoch_losses[0],
            "{:?}",
            a.epoch_losses
        );
    }
}
