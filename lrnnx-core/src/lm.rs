//! A language model stepped one token at a time: lrnnx's `LRNNLMHeadModel` (spec §14.1), the
//! stepping twin of `lrnnx_train::lm::LanguageModel`, without allocation.
//!
//! With `E` (V, d) the embedding, `V` the padded vocabulary and `W` (V, d) the head (`W = E` when
//! tied):
//!
//! ```text
//! h = E[token],  r = 0
//! block i:  r = h + r                        (r = h for the first block)
//!           h = mixer_i(norm_i(r))
//!           if the block has an MLP:  r = h + r;  h = mlp_i(norm2_i(r))
//! logits = W · norm_f(h + r)
//! RMSNorm:   y = x · (mean(x²) + ε)^{−½} ⊙ w         LayerNorm: y = (x − μ)/√(σ² + ε) ⊙ w + b
//! GatedMLP:  [a, g] = fc1 · x (two halves of width n),  out = fc2 · (a ⊙ SiLU(g))
//! ```
//!
//! A mixer is any [`CoreLayer`] with `d_model` inputs and outputs, or causal multi-head
//! [`Attention`] with grouped key/value heads and a key/value cache of fixed capacity
//! (`max_context` tokens) held in the state: stepping past it is [`Error::ContextFull`].
//!
//! Every matrix is stored transposed (one row per *input* element), so the step's inner loops
//! are the contiguous axpys of [`crate::linalg::gemv_t_acc`]. The tied head is the exception: it
//! reads the embedding's rows as dot products (one copy of `E` serves both).
//!
//! Weight buffers (each part has its own `W`, owned, borrowed or `static`):
//!
//! ```text
//! LanguageModel   E (V rows of d), then Wᵀ (d rows of V) unless tied
//! Norm            w (d), then b (d) for LayerNorm
//! GatedMlp        fc1ᵀ (d rows of 2n: [a | g]), then fc2ᵀ (n rows of d)
//! Attention       in_projᵀ (d rows of q·h_d + 2·kv·h_d), [in_proj bias], out_projᵀ (q·h_d rows of d), [out_proj bias]
//! ```
//!
//! State (`f32`, zeros = an empty context; [`LanguageModel::state_len`]):
//!
//! ```text
//! [ each block's mixer state, in block order | h (d) | r (d) | x (d) | y (d) | MLP (2·n_max) | logits (V) | sampling (V) ]
//! ```
//!
//! An attention mixer's state is `[position (1) | Kᵀ (kv·h_d rows of max_context) | V (kv ×
//! max_context rows of h_d) | work: qkv, context, scores (n_heads × max_context)]`; the position is stored as
//! an `f32` (exact up to 2²⁴ tokens). Everything after the mixer states is a working area that
//! carries nothing between steps except the last logits.

use crate::error::{check_finite_input, check_finite_weights, check_len, check_sizes, Error};
use crate::error::{sum_of_products, Result};
use crate::fastmath;
use crate::linalg::{copy_prefix, gemv_t_acc, take, take_mut, transpose_into};
use crate::norm::Norm;
use crate::CoreLayer;

/// `Σ a[i]` with 8 partial sums `s_k` over `i ≡ k (mod 8)` (the tail into `s₀`), then
/// `((s₀+s₄) + (s₂+s₆)) + ((s₁+s₅) + (s₃+s₇))`.
#[inline]
fn sum8(a: &[f32]) -> f32 {
    let a8 = a.chunks_exact(8);
    let rest = a8.remainder();
    let mut s = [0.0f32; 8];
    for x in a8 {
        if let Ok(x) = <&[f32; 8]>::try_from(x) {
            for k in 0..8 {
                s[k] += x[k];
            }
        }
    }
    for x in rest {
        s[0] += x;
    }
    hsum8(&s)
}

/// `((s₀+s₄) + (s₂+s₆)) + ((s₁+s₅) + (s₃+s₇))`.
#[inline(always)]
fn hsum8(s: &[f32; 8]) -> f32 {
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

/// `out[r] = Σ_i m[r·d + i]·y[i]` for a row-major `m` (one row of `d` per output), every row
/// summed with 8 partial sums like [`sum8`] (`y` must hold `d` values; otherwise `out` is zeroed). Rows go `R` at a time so that each 8-wide chunk of `y` serves `R` rows
/// (with one row at a time, the horizontal sums dominate). Mismatched lengths truncate.
// Indexed loops over the constant `R`: the iterator form compiled to a much slower kernel here
// (permutes instead of FMAs; measured 3x on the tied head).
#[allow(clippy::needless_range_loop)]
#[inline]
fn rows_dot<const R: usize>(out: &mut [f32], m: &[f32], y: &[f32], d: usize) {
    if d == 0 || y.len() != d {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    let whole = d / 8 * 8;
    let mut done = 0;
    for (o, rows) in out.chunks_exact_mut(R).zip(m.chunks_exact(R * d)) {
        let mut acc = [[0.0f32; 8]; R];
        for (j, yc) in y.chunks_exact(8).enumerate() {
            let Ok(yc) = <&[f32; 8]>::try_from(yc) else {
                continue;
            };
            for r in 0..R {
                if let Some(Ok(w)) = rows
                    .get(r * d + 8 * j..r * d + 8 * j + 8)
                    .map(<&[f32; 8]>::try_from)
                {
                    for k in 0..8 {
                        acc[r][k] += w[k] * yc[k];
                    }
                }
            }
        }
        for r in 0..R {
            if let (Some(w), Some(t)) = (rows.get(r * d + whole..(r + 1) * d), y.get(whole..d)) {
                for (wi, yi) in w.iter().zip(t) {
                    acc[r][0] += wi * yi;
                }
            }
            if let Some(o) = o.get_mut(r) {
                *o = hsum8(&acc[r]);
            }
        }
        done += R;
    }
    if R > 1 {
        if let (Some(o), Some(rest)) = (out.get_mut(done..), m.get(done * d..)) {
            rows_dot::<1>(o, rest, y, d);
        }
    }
}

/// Sizes of a [`GatedMlp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpConfig {
    /// Input and output width `d`.
    pub d_model: usize,
    /// Hidden width `n` (lrnnx rounds `d_intermediate` up to a multiple of 128).
    pub hidden: usize,
}

impl MlpConfig {
    /// Number of weights: `d·2n + n·d`.
    pub const fn weights_len(&self) -> usize {
        sum_of_products(&[
            &[self.d_model, 2, self.hidden],
            &[self.hidden, self.d_model],
        ])
    }
}

/// lrnnx's `GatedMLP` without biases: `[a, g] = fc1 · x`, `out = fc2 · (a ⊙ SiLU(g))`.
#[derive(Debug, Clone)]
pub struct GatedMlp<W> {
    config: MlpConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> GatedMlp<W> {
    /// Views a weight buffer `[fc1ᵀ | fc2ᵀ]` (zero-copy); checks sizes and finiteness.
    pub fn from_weights(config: MlpConfig, weights: W) -> Result<Self> {
        if config.d_model == 0 || config.hidden == 0 {
            return Err(Error::InvalidConfig {
                what: "gated MLP",
                reason: "d_model and hidden must be positive",
            });
        }
        check_sizes(config.weights_len(), 0)?;
        check_len(
            "gated MLP weights",
            config.weights_len(),
            weights.as_ref().len(),
        )?;
        check_finite_weights("gated MLP weights", weights.as_ref())?;
        Ok(GatedMlp { config, weights })
    }

    /// The sizes.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The weights (`fc1ᵀ`, then `fc2ᵀ`).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }

    /// `y = fc2 · (a ⊙ SiLU(g))` with `[a | g] = fc1 · x` written to `up` (`2n` values, a
    /// working area); mismatched lengths truncate.
    #[inline]
    pub fn apply(&self, x: &[f32], up: &mut [f32], y: &mut [f32]) {
        let (d, n) = (self.config.d_model, self.config.hidden);
        let mut w = self.weights.as_ref();
        let fc1 = take(&mut w, d * 2 * n);
        let fc2 = take(&mut w, n * d);
        up.iter_mut().for_each(|v| *v = 0.0);
        gemv_t_acc(up, fc1, x);
        let (a, g) = up.split_at_mut(n.min(up.len()));
        for (ai, &gi) in a.iter_mut().zip(g.iter()) {
            *ai *= fastmath::silu(gi);
        }
        y.iter_mut().for_each(|v| *v = 0.0);
        gemv_t_acc(y, fc2, a);
    }
}

impl<W: AsRef<[f32]> + AsMut<[f32]>> GatedMlp<W> {
    /// Fills `weights` from PyTorch's layouts: `fc1` (2n, d) and `fc2` (d, n), row-major.
    pub fn from_torch(config: MlpConfig, fc1: &[f32], fc2: &[f32], mut weights: W) -> Result<Self> {
        let (d, n) = (config.d_model, config.hidden);
        // the products below fit once their sum does
        check_sizes(config.weights_len(), 0)?;
        check_len("gated MLP fc1.weight", 2 * n * d, fc1.len())?;
        check_len("gated MLP fc2.weight", d * n, fc2.len())?;
        check_len(
            "gated MLP weights",
            config.weights_len(),
            weights.as_ref().len(),
        )?;
        let (w1, w2) = weights.as_mut().split_at_mut(d * 2 * n);
        transpose_into(w1, fc1, 2 * n, d);
        transpose_into(w2, fc2, d, n);
        GatedMlp::from_weights(config, weights)
    }
}

/// Sizes and options of an [`Attention`] mixer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionConfig {
    /// Input and output width `d`.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads; each serves `n_heads / n_kv_heads` consecutive query heads.
    pub n_kv_heads: usize,
    /// Width of one head `h_d`.
    pub head_dim: usize,
    /// Softmax scale `s` (lrnnx's default `1/√h_d`).
    pub scale: f32,
    /// Whether `in_proj` has a bias.
    pub qkv_bias: bool,
    /// Whether `out_proj` has a bias.
    pub out_bias: bool,
    /// Capacity of the key/value cache in tokens.
    pub max_context: usize,
}

impl AttentionConfig {
    /// Width of the input projection `h_d·(n_heads + 2·n_kv_heads)`.
    pub const fn qkv_width(&self) -> usize {
        sum_of_products(&[
            &[self.head_dim, self.n_heads],
            &[self.head_dim, 2, self.n_kv_heads],
        ])
    }

    /// Number of weights (module doc).
    pub const fn weights_len(&self) -> usize {
        let qkv = self.qkv_width();
        let q = self.n_heads.saturating_mul(self.head_dim);
        sum_of_products(&[
            &[self.d_model, qkv],
            &[if self.qkv_bias { qkv } else { 0 }],
            &[q, self.d_model],
            &[if self.out_bias { self.d_model } else { 0 }],
        ])
    }

    /// Number of state elements: `1 + 2·max_context·kv·h_d + qkv + n_heads·h_d + n_heads·max_context`.
    pub const fn state_len(&self) -> usize {
        sum_of_products(&[
            &[1],
            &[2, self.max_context, self.n_kv_heads, self.head_dim],
            &[self.qkv_width()],
            &[self.n_heads, self.head_dim],
            &[self.n_heads, self.max_context],
        ])
    }

    fn validate(&self) -> Result<()> {
        let bad = |what, reason| Err(Error::InvalidConfig { what, reason });
        if self.d_model == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.head_dim == 0 {
            return bad(
                "attention sizes",
                "d_model, heads and head_dim must be positive",
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad("attention n_kv_heads", "must divide n_heads");
        }
        if self.max_context == 0 || self.max_context > 1 << 24 {
            return bad(
                "attention max_context",
                "must be between 1 and 2^24 (positions are stored as f32)",
            );
        }
        if !self.scale.is_finite() {
            return bad("attention scale", "must be finite");
        }
        check_sizes(self.weights_len(), self.state_len())
    }
}

/// lrnnx's causal `MHA` (spec §13.4; no rotary embeddings, convolution or fused MLP) stepped
/// with a key/value cache. For query head `j` (key/value head `g = j / (n_heads / kv)`) at
/// position `t`:
///
/// ```text
/// [q, k_t, v_t] = in_proj · x + b_in
/// y = out_proj · [ctx_1 … ctx_{n_heads}] + b_out,   ctx_j = Σ_{s ≤ t} softmax_s(s·q_j·k_{s,g}) v_{s,g}
/// ```
#[derive(Debug, Clone)]
pub struct Attention<W> {
    config: AttentionConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> Attention<W> {
    /// Views a weight buffer in the layout of the module doc (zero-copy); checks the
    /// configuration, the length and finiteness.
    pub fn from_weights(config: AttentionConfig, weights: W) -> Result<Self> {
        config.validate()?;
        check_len(
            "attention weights",
            config.weights_len(),
            weights.as_ref().len(),
        )?;
        check_finite_weights("attention weights", weights.as_ref())?;
        Ok(Attention { config, weights })
    }

    /// The configuration.
    pub fn config(&self) -> &AttentionConfig {
        &self.config
    }

    /// The weights in the stepping layout.
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }

    /// Number of tokens in the cache of `state`, or an error when the stored position is not a
    /// whole number in `0..=max_context` (a corrupt state).
    pub fn position(&self, state: &[f32]) -> Result<usize> {
        let p = state.first().copied().unwrap_or(f32::NAN);
        if p >= 0.0 && p <= self.config.max_context as f32 && libm::truncf(p) == p {
            Ok(p as usize)
        } else {
            Err(Error::InvalidConfig {
                what: "attention state",
                reason:
                    "the position counter is not a whole number in 0..=max_context (corrupt state)",
            })
        }
    }

    /// Checks that one more token fits: [`Error::ContextFull`] when the cache is full.
    fn check_room(&self, state: &[f32], tokens: usize) -> Result<()> {
        let p = self.position(state)?;
        if p.saturating_add(tokens) > self.config.max_context {
            Err(Error::ContextFull {
                max_context: self.config.max_context,
            })
        } else {
            Ok(())
        }
    }

    /// One token: like [`crate::Layer::step`] (lengths and finiteness checked, the state untouched on
    /// error), and [`Error::ContextFull`] once `max_context` tokens are cached.
    pub fn step(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) -> Result<()> {
        check_len("state", self.config.state_len(), state.len())?;
        check_len("input x", self.config.d_model, x.len())?;
        check_len("output y", self.config.d_model, y.len())?;
        check_finite_input(x)?;
        self.check_room(state, 1)?;
        self.step_prechecked(state, x, y);
        Ok(())
    }

    /// The step once the lengths and the room are known to be right (does nothing otherwise;
    /// never panics, never allocates).
    pub fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let c = self.config;
        if state.len() != c.state_len() || x.len() != c.d_model || y.len() != c.d_model {
            return;
        }
        let Ok(p) = self.position(state) else { return };
        if p >= c.max_context {
            return;
        }
        let (cap, hd, nkv) = (c.max_context, c.head_dim, c.n_kv_heads);
        let (qw, kvw) = (c.n_heads * hd, nkv * hd);
        let mut w = self.weights.as_ref();
        let in_t = take(&mut w, c.d_model * c.qkv_width());
        let b_in = take(&mut w, if c.qkv_bias { c.qkv_width() } else { 0 });
        let out_t = take(&mut w, qw * c.d_model);
        let b_out = w;
        let (pos, mut rest) = state.split_at_mut(1);
        let kt = take_mut(&mut rest, kvw * cap);
        let vc = take_mut(&mut rest, kvw * cap);
        let qkv = take_mut(&mut rest, c.qkv_width());
        let ctx = take_mut(&mut rest, qw);
        let scores = take_mut(&mut rest, c.n_heads * cap);
        // [q, k, v] = in_proj · x + b
        if c.qkv_bias {
            copy_prefix(qkv, b_in);
        } else {
            qkv.iter_mut().for_each(|v| *v = 0.0);
        }
        gemv_t_acc(qkv, in_t, x);
        let (q, kv) = qkv.split_at_mut(qw);
        let (k_new, v_new) = kv.split_at(kvw);
        // Append: Kᵀ row (g, e) gets column p; V row (g, p) gets the head's values.
        for (row, &k) in kt.chunks_exact_mut(cap).zip(k_new) {
            row[p] = k;
        }
        for (g, vn) in v_new.chunks_exact(hd).enumerate() {
            copy_prefix(&mut vc[(g * cap + p) * hd..(g * cap + p + 1) * hd], vn);
        }
        q.iter_mut().for_each(|v| *v *= c.scale);
        let n = p + 1;
        // The query heads of one key/value head go together, so that each cached key and
        // value is read once per group.
        let group = c.n_heads / nkv;
        for (g, ((qg, cg), sg)) in q
            .chunks_exact(group * hd)
            .zip(ctx.chunks_exact_mut(group * hd))
            .zip(scores.chunks_exact_mut(group * cap))
            .enumerate()
        {
            // scores[j][s] = Σ_e q_{j,e} · Kᵀ[g, e][s]: axpys over the cached positions.
            sg.iter_mut().for_each(|v| *v = 0.0);
            for (e, krow) in kt[g * hd * cap..(g + 1) * hd * cap]
                .chunks_exact(cap)
                .enumerate()
            {
                let krow = &krow[..n];
                for (qh, srow) in qg.chunks_exact(hd).zip(sg.chunks_exact_mut(cap)) {
                    let qe = qh[e];
                    for (s, &k) in srow[..n].iter_mut().zip(krow) {
                        *s += qe * k;
                    }
                }
            }
            for srow in sg.chunks_exact_mut(cap) {
                let sc = &mut srow[..n];
                let m = sc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                sc.iter_mut().for_each(|v| *v = fastmath::exp(*v - m));
                let inv = 1.0 / sum8(sc);
                sc.iter_mut().for_each(|v| *v *= inv);
            }
            // ctx_j = Σ_s p[j][s] · V[g, s].
            cg.iter_mut().for_each(|v| *v = 0.0);
            for (s, vrow) in vc[g * cap * hd..(g * cap + n) * hd]
                .chunks_exact(hd)
                .enumerate()
            {
                for (j, ch) in cg.chunks_exact_mut(hd).enumerate() {
                    let w = sg[j * cap + s];
                    for (o, &v) in ch.iter_mut().zip(vrow) {
                        *o += w * v;
                    }
                }
            }
        }
        if c.out_bias {
            copy_prefix(y, b_out);
        } else {
            y.iter_mut().for_each(|v| *v = 0.0);
        }
        gemv_t_acc(y, out_t, ctx);
        pos[0] = n as f32;
    }
}

impl<W: AsRef<[f32]> + AsMut<[f32]>> Attention<W> {
    /// Fills `weights` from PyTorch's layouts: `in_proj.weight` (qkv, d), `in_proj.bias` (qkv),
    /// `out_proj.weight` (d, n_heads·h_d), `out_proj.bias` (d); each bias given exactly when
    /// the configuration has it.
    pub fn from_torch(
        config: AttentionConfig,
        in_w: &[f32],
        in_b: Option<&[f32]>,
        out_w: &[f32],
        out_b: Option<&[f32]>,
        mut weights: W,
    ) -> Result<Self> {
        config.validate()?;
        let (d, qkv, qw) = (
            config.d_model,
            config.qkv_width(),
            config.n_heads * config.head_dim,
        );
        check_len("attention in_proj.weight", qkv * d, in_w.len())?;
        check_len("attention out_proj.weight", d * qw, out_w.len())?;
        check_len(
            "attention weights",
            config.weights_len(),
            weights.as_ref().len(),
        )?;
        if in_b.is_some() != config.qkv_bias || out_b.is_some() != config.out_bias {
            return Err(Error::InvalidConfig {
                what: "attention biases",
                reason: "a bias must be given exactly when the config has one",
            });
        }
        let mut rest = weights.as_mut();
        let t_in = take_mut(&mut rest, d * qkv);
        transpose_into(t_in, in_w, qkv, d);
        if let Some(b) = in_b {
            check_len("attention in_proj.bias", qkv, b.len())?;
            copy_prefix(take_mut(&mut rest, qkv), b);
        }
        transpose_into(take_mut(&mut rest, qw * d), out_w, d, qw);
        if let Some(b) = out_b {
            check_len("attention out_proj.bias", d, b.len())?;
            copy_prefix(take_mut(&mut rest, d), b);
        }
        Attention::from_weights(config, weights)
    }
}

/// A block's mixer.
#[derive(Debug, Clone)]
pub enum Mixer<W> {
    /// Any core sequence layer (`d_model` in and out).
    Layer(CoreLayer<W>),
    /// Causal multi-head attention with a key/value cache.
    Attention(Attention<W>),
}

impl<W: AsRef<[f32]>> Mixer<W> {
    /// Number of state elements.
    pub fn state_len(&self) -> usize {
        match self {
            Mixer::Layer(l) => l.state_len(),
            Mixer::Attention(a) => a.config.state_len(),
        }
    }
}

/// One block: norm, mixer, and an optional `(norm2, MLP)`.
#[derive(Debug, Clone)]
pub struct LmBlock<W> {
    /// The norm before the mixer.
    pub norm: Norm<W>,
    /// The mixer.
    pub mixer: Mixer<W>,
    /// The norm and gated MLP after the mixer, if the model has them.
    pub mlp: Option<(Norm<W>, GatedMlp<W>)>,
}

/// Sizes of a [`LanguageModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmConfig {
    /// Width `d`.
    pub d_model: usize,
    /// Vocabulary size before padding: tokens that [`LanguageModel::generate`] samples from.
    pub vocab_size: usize,
    /// Padded vocabulary `V` (rows of the embedding and the head; ids `0..V` are accepted).
    pub padded_vocab: usize,
    /// Whether the head is the embedding (no `Wᵀ` stored).
    pub tied: bool,
}

impl LmConfig {
    /// Number of weights of the model's own buffer: `V·d`, plus `d·V` for an untied head.
    pub const fn weights_len(&self) -> usize {
        let e = self.padded_vocab.saturating_mul(self.d_model);
        if self.tied {
            e
        } else {
            e.saturating_mul(2)
        }
    }
}

/// How [`LanguageModel::generate`] picks the next token from the logits of the unpadded
/// vocabulary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest index among equal maxima).
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the `top_k` largest logits
    /// (ties at the k-th value kept by lowest index; all tokens when `None`).
    Temperature {
        /// Positive and finite.
        temperature: f32,
        /// Keep this many most likely tokens (≥ 1).
        top_k: Option<usize>,
    },
}

/// A small seeded generator (SplitMix64, the same sequence as `lrnnx_train::init::Rng`).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 bits: `s += 0x9E3779B97F4A7C15`, then SplitMix64's finalizer of `s`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1): `((bits >> 11) + ½) · 2⁻⁵³`.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks a token from `logits` (module-level [`Sampling`]); `scratch` holds at least
/// `logits.len()` values. For [`Sampling::Temperature`], with the kept set `K` (the `top_k`
/// largest logits) and `p_i ∝ exp((ℓ_i − max ℓ)/T)` over `K`: the smallest kept index `i`
/// (in index order) whose cumulative probability exceeds one uniform draw of `rng`.
pub fn pick(
    sampling: Sampling,
    logits: &[f32],
    rng: &mut SplitMix64,
    scratch: &mut [f32],
) -> Result<usize> {
    if logits.is_empty() {
        return Err(Error::InvalidConfig {
            what: "sampling",
            reason: "the vocabulary is empty",
        });
    }
    if let Some(index) = logits.iter().position(|l| l.is_nan()) {
        return Err(Error::NonFiniteParameter {
            name: "logits",
            index,
        });
    }
    let argmax = logits
        .iter()
        .enumerate()
        .fold(0, |b, (i, &l)| if l > logits[b] { i } else { b });
    let (temperature, top_k) = match sampling {
        Sampling::Greedy => return Ok(argmax),
        Sampling::Temperature { temperature, top_k } => (temperature, top_k),
    };
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::InvalidConfig {
            what: "sampling temperature",
            reason: "must be positive and finite",
        });
    }
    let v = logits.len();
    let k = top_k.unwrap_or(v).min(v);
    if k == 0 {
        return Err(Error::InvalidConfig {
            what: "sampling top_k",
            reason: "must be at least 1",
        });
    }
    check_len("sampling scratch", v, scratch.len().min(v))?;
    let scratch = &mut scratch[..v];
    // The k-th largest logit t: keep every ℓ > t, and the first (k − #{ℓ > t}) ties at t.
    let (t, mut ties) = if k < v {
        scratch.copy_from_slice(logits);
        let (_, &mut t, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let above = logits.iter().filter(|&&l| l > t).count();
        (t, k - above)
    } else {
        (f32::NEG_INFINITY, v)
    };
    let (m, inv_t) = (logits[argmax], 1.0 / temperature);
    for (w, &l) in scratch.iter_mut().zip(logits) {
        let keep = l > t || (l == t && ties > 0);
        if l == t && ties > 0 {
            ties -= 1;
        }
        *w = if keep || k == v {
            fastmath::exp((l - m) * inv_t)
        } else {
            0.0
        };
    }
    let total: f64 = scratch.iter().map(|&w| w as f64).sum();
    let u = rng.uniform() * total;
    let mut acc = 0.0f64;
    let mut last = argmax;
    for (i, &w) in scratch.iter().enumerate() {
        if w > 0.0 {
            acc += w as f64;
            last = i;
            if u < acc {
                return Ok(i);
            }
        }
    }
    Ok(last)
}

/// The language model (module doc) over its own weights `W` (embedding, untied head), a final
/// norm and the blocks `B` (an array, a `Vec`, a slice of [`LmBlock`]s).
#[derive(Debug, Clone)]
pub struct LanguageModel<W, B> {
    config: LmConfig,
    weights: W,
    norm_f: Norm<W>,
    blocks: B,
    mixer_state_len: usize,
    mlp_len: usize,
}

impl<W: AsRef<[f32]>, B: AsRef<[LmBlock<W>]>> LanguageModel<W, B> {
    /// Checks that every part has width `d_model` (a mismatch is [`Error::NetworkStage`] with
    /// the block index), the weights' length and finiteness.
    pub fn new(config: LmConfig, weights: W, norm_f: Norm<W>, blocks: B) -> Result<Self> {
        let d = config.d_model;
        if d == 0 || config.vocab_size == 0 || config.padded_vocab < config.vocab_size {
            return Err(Error::InvalidConfig {
                what: "language model",
                reason: "d_model and vocab_size must be positive, padded_vocab ≥ vocab_size",
            });
        }
        check_sizes(config.weights_len(), 0)?;
        check_len(
            "language model weights",
            config.weights_len(),
            weights.as_ref().len(),
        )?;
        check_finite_weights("language model weights", weights.as_ref())?;
        let bad = |index, reason| Err(Error::NetworkStage { index, reason });
        let (mut mixer_state_len, mut mlp_len) = (0usize, 0usize);
        for (i, b) in blocks.as_ref().iter().enumerate() {
            if b.norm.config().d != d {
                return bad(i, "block norm width differs from d_model");
            }
            match &b.mixer {
                Mixer::Layer(l) => {
                    let l = l.as_layer();
                    if l.d_input() != d || l.d_output() != d {
                        return bad(i, "mixer input or output width differs from d_model");
                    }
                }
                Mixer::Attention(a) => {
                    if a.config.d_model != d {
                        return bad(i, "attention width differs from d_model");
                    }
                }
            }
            if let Some((n2, mlp)) = &b.mlp {
                if n2.config().d != d || mlp.config.d_model != d {
                    return bad(i, "MLP or norm2 width differs from d_model");
                }
                mlp_len = mlp_len.max(2 * mlp.config.hidden);
            }
            mixer_state_len = mixer_state_len.saturating_add(b.mixer.state_len());
        }
        if norm_f.config().d != d {
            return bad(blocks.as_ref().len(), "norm_f width differs from d_model");
        }
        let lm = LanguageModel {
            config,
            weights,
            norm_f,
            blocks,
            mixer_state_len,
            mlp_len,
        };
        check_sizes(0, lm.state_len())?;
        Ok(lm)
    }

    /// The sizes.
    pub fn config(&self) -> &LmConfig {
        &self.config
    }

    /// The model's own weights (`E`, then `Wᵀ` unless tied).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }

    /// The final norm.
    pub fn norm_f(&self) -> &Norm<W> {
        &self.norm_f
    }

    /// The blocks.
    pub fn blocks(&self) -> &[LmBlock<W>] {
        self.blocks.as_ref()
    }

    /// Number of `f32` state elements (module doc); zeros = an empty context.
    pub fn state_len(&self) -> usize {
        let (d, v) = (self.config.d_model, self.config.padded_vocab);
        sum_of_products(&[&[self.mixer_state_len], &[4, d], &[self.mlp_len], &[2, v]])
    }

    /// Checks `state`'s length and that every attention cache has room for `tokens` more.
    fn check_state(&self, state: &[f32], tokens: usize) -> Result<()> {
        check_len("state", self.state_len(), state.len())?;
        let mut rest = state;
        for b in self.blocks.as_ref() {
            let st = take(&mut rest, b.mixer.state_len());
            if let Mixer::Attention(a) = &b.mixer {
                a.check_room(st, tokens)?;
            }
        }
        Ok(())
    }

    fn check_token(&self, token: usize) -> Result<()> {
        if token < self.config.padded_vocab {
            Ok(())
        } else {
            Err(Error::InvalidToken {
                token,
                vocab: self.config.padded_vocab,
            })
        }
    }

    /// One token: advances `state` and returns the logits (`V` values, inside `state`).
    ///
    /// Errors (the state is left untouched): a state of the wrong length or with a corrupt
    /// attention position, a token id `≥ V` ([`Error::InvalidToken`]), an attention cache that
    /// is full ([`Error::ContextFull`]). Never allocates, never panics.
    pub fn step<'s>(&self, state: &'s mut [f32], token: usize) -> Result<&'s [f32]> {
        self.check_token(token)?;
        self.check_state(state, 1)?;
        Ok(self.step_prechecked(state, token))
    }

    /// The step once `token` and `state` are checked.
    fn step_prechecked<'s>(&self, state: &'s mut [f32], token: usize) -> &'s [f32] {
        let (d, v) = (self.config.d_model, self.config.padded_vocab);
        let (mixers, mut rest) = state.split_at_mut(self.mixer_state_len.min(state.len()));
        let h = take_mut(&mut rest, d);
        let r = take_mut(&mut rest, d);
        let x = take_mut(&mut rest, d);
        let y = take_mut(&mut rest, d);
        let up = take_mut(&mut rest, self.mlp_len);
        let logits = take_mut(&mut rest, v);
        let emb = self.weights.as_ref();
        copy_prefix(h, emb.get(token * d..(token + 1) * d).unwrap_or(&[]));
        let mut mixers = mixers;
        for (i, b) in self.blocks.as_ref().iter().enumerate() {
            if i == 0 {
                r.copy_from_slice(h);
            } else {
                r.iter_mut().zip(h.iter()).for_each(|(ri, hi)| *ri += hi);
            }
            b.norm.apply(r, x);
            let st = take_mut(&mut mixers, b.mixer.state_len());
            match &b.mixer {
                Mixer::Layer(l) => l.as_layer().step_prechecked(st, x, h),
                Mixer::Attention(a) => a.step_prechecked(st, x, h),
            }
            if let Some((n2, mlp)) = &b.mlp {
                r.iter_mut().zip(h.iter()).for_each(|(ri, hi)| *ri += hi);
                n2.apply(r, x);
                mlp.apply(x, &mut up[..2 * mlp.config.hidden], h);
            }
        }
        if !self.blocks.as_ref().is_empty() {
            h.iter_mut().zip(r.iter()).for_each(|(hi, ri)| *hi += ri);
        }
        self.norm_f.apply(h, y);
        if self.config.tied {
            rows_dot::<4>(logits, emb, y, d);
        } else {
            logits.iter_mut().for_each(|l| *l = 0.0);
            gemv_t_acc(logits, emb.get(v * d..).unwrap_or(&[]), y);
        }
        logits
    }

    /// The logits of the last step (inside `state`; zeros before the first step).
    pub fn logits<'s>(&self, state: &'s [f32]) -> &'s [f32] {
        let v = self.config.padded_vocab;
        let end = self.state_len().saturating_sub(v).min(state.len());
        &state[end.saturating_sub(v)..end]
    }

    /// Autoregressive generation: steps every token of `prompt` (at least one) from `state`,
    /// then `out.len()` times picks a token from the last logits (restricted to the unpadded
    /// vocabulary) with `sampling` and `rng`, writes it to `out` and steps it (the last one is
    /// not stepped). Every argument is checked before the state is touched: token ids, room in
    /// every attention cache for `prompt.len() + out.len() − 1` tokens, sampling arguments.
    /// What cannot be checked in advance is the logits: a pick from logits that are not finite
    /// (weights whose activations overflow) fails with the state stepped through the prompt and
    /// the tokens written to `out` before it.
    pub fn generate(
        &self,
        state: &mut [f32],
        prompt: &[usize],
        sampling: Sampling,
        rng: &mut SplitMix64,
        out: &mut [usize],
    ) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::InvalidConfig {
                what: "prompt",
                reason: "must hold at least one token",
            });
        }
        for &t in prompt {
            self.check_token(t)?;
        }
        let steps = prompt
            .len()
            .saturating_add(out.len())
            .saturating_sub(1)
            .max(prompt.len());
        self.check_state(state, steps)?;
        if let Sampling::Temperature { temperature, top_k } = sampling {
            if !(temperature.is_finite() && temperature > 0.0) || top_k == Some(0) {
                return Err(Error::InvalidConfig {
                    what: "sampling",
                    reason: "temperature must be positive and finite, top_k at least 1",
                });
            }
        }
        for &t in prompt {
            self.step_prechecked(state, t);
        }
        let (vs, vp) = (self.config.vocab_size, self.config.padded_vocab);
        let n = out.len();
        for (i, o) in out.iter_mut().enumerate() {
            let len = state.len();
            let (front, scratch) = state.split_at_mut(len - vp);
            let logits = &front[front.len() - vp..][..vs];
            let tok = pick(sampling, logits, rng, scratch)?;
            *o = tok;
            if i + 1 < n {
                self.step_prechecked(state, tok);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::test_util::Rng;

    fn rand_vec(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        let mut v = vec![0.0f32; n];
        rng.fill(&mut v, lo, hi);
        v
    }

    #[test]
    fn gated_mlp_matches_a_naive_loop() {
        let mut rng = Rng::new(2);
        let (d, n) = (6, 5);
        let fc1 = rand_vec(&mut rng, 2 * n * d, -1.0, 1.0); // (2n, d)
        let fc2 = rand_vec(&mut rng, d * n, -1.0, 1.0); // (d, n)
        let x = rand_vec(&mut rng, d, -1.0, 1.0);
        let cfg = MlpConfig {
            d_model: d,
            hidden: n,
        };
        let mlp = GatedMlp::from_torch(cfg, &fc1, &fc2, vec![0.0; cfg.weights_len()]).unwrap();
        let (mut up, mut y) = (vec![0.0f32; 2 * n], vec![0.0f32; d]);
        mlp.apply(&x, &mut up, &mut y);
        let lin = |r: usize| {
            (0..d)
                .map(|j| fc1[r * d + j] as f64 * x[j] as f64)
                .sum::<f64>()
        };
        let hid: Vec<f64> = (0..n)
            .map(|k| {
                let g = lin(n + k);
                lin(k) * g / (1.0 + (-g).exp())
            })
            .collect();
        for o in 0..d {
            let want: f64 = (0..n).map(|k| fc2[o * n + k] as f64 * hid[k]).sum();
            assert!((y[o] as f64 - want).abs() < 1e-5, "{o}: {} vs {want}", y[o]);
        }
        assert!(GatedMlp::from_torch(cfg, &fc1[1..], &fc2, vec![0.0; cfg.weights_len()]).is_err());
    }

    /// Attention stepped over a sequence against causal softmax attention written as a plain
    /// f64 loop over heads, queries and keys (4 query heads on 2 key/value heads).
    #[test]
    fn attention_matches_a_naive_causal_loop() {
        let mut rng = Rng::new(3);
        let (d, nh, nkv, hd, len) = (6, 4, 2, 3, 7);
        for (qkv_bias, out_bias) in [(true, true), (false, false)] {
            let cfg = AttentionConfig {
                d_model: d,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale: 0.7,
                qkv_bias,
                out_bias,
                max_context: len,
            };
            let qkv = cfg.qkv_width();
            let w_in = rand_vec(&mut rng, qkv * d, -1.0, 1.0);
            let b_in = rand_vec(&mut rng, qkv, -0.3, 0.3);
            let w_out = rand_vec(&mut rng, d * nh * hd, -1.0, 1.0);
            let b_out = rand_vec(&mut rng, d, -0.3, 0.3);
            let xs = rand_vec(&mut rng, len * d, -1.5, 1.5);
            let att = Attention::from_torch(
                cfg,
                &w_in,
                qkv_bias.then_some(&b_in[..]),
                &w_out,
                out_bias.then_some(&b_out[..]),
                vec![0.0; cfg.weights_len()],
            )
            .unwrap();
            let proj: Vec<Vec<f64>> = (0..len)
                .map(|t| {
                    (0..qkv)
                        .map(|c| {
                            let b = if qkv_bias { b_in[c] as f64 } else { 0.0 };
                            b + (0..d)
                                .map(|j| w_in[c * d + j] as f64 * xs[t * d + j] as f64)
                                .sum::<f64>()
                        })
                        .collect()
                })
                .collect();
            let mut state = vec![0.0f32; cfg.state_len()];
            let mut y = vec![0.0f32; d];
            for t in 0..len {
                att.step(&mut state, &xs[t * d..(t + 1) * d], &mut y)
                    .unwrap();
                let mut ctx = vec![0.0f64; nh * hd];
                for h in 0..nh {
                    let g = h / (nh / nkv);
                    let q = &proj[t][h * hd..(h + 1) * hd];
                    let sc: Vec<f64> = (0..=t)
                        .map(|s| {
                            let k = &proj[s][nh * hd + g * hd..nh * hd + (g + 1) * hd];
                            0.7f32 as f64 * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()
                        })
                        .collect();
                    let z: f64 = sc.iter().map(|v| v.exp()).sum();
                    for (s, v) in sc.iter().enumerate() {
                        let off = (nh + nkv) * hd + g * hd;
                        for e in 0..hd {
                            ctx[h * hd + e] += v.exp() / z * proj[s][off + e];
                        }
                    }
                }
                for o in 0..d {
                    let b = if out_bias { b_out[o] as f64 } else { 0.0 };
                    let want = b
                        + (0..nh * hd)
                            .map(|c| w_out[o * nh * hd + c] as f64 * ctx[c])
                            .sum::<f64>();
                    assert!(
                        (y[o] as f64 - want).abs() < 2e-5 * (1.0 + want.abs()),
                        "t {t} o {o}: {} vs {want}",
                        y[o]
                    );
                }
            }
            // Full: an error, the state untouched.
            let before = state.clone();
            let e = att.step(&mut state, &xs[..d], &mut y).unwrap_err();
            assert_eq!(e, Error::ContextFull { max_context: len });
            assert_eq!(state, before);
            // A non-finite input is refused before anything changes.
            let mut fresh = vec![0.0f32; cfg.state_len()];
            let mut x = xs[..d].to_vec();
            x[2] = f32::NAN;
            assert!(att.step(&mut fresh, &x, &mut y).is_err());
            assert!(fresh.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn bad_attention_configs_are_errors() {
        let ok = AttentionConfig {
            d_model: 8,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 2,
            scale: 0.5,
            qkv_bias: true,
            out_bias: true,
            max_context: 4,
        };
        let w = vec![0.0f32; ok.weights_len()];
        assert!(Attention::from_weights(ok, &w[..]).is_ok());
        for bad in [
            AttentionConfig {
                n_kv_heads: 3,
                ..ok
            },
            AttentionConfig {
                max_context: 0,
                ..ok
            },
            AttentionConfig { head_dim: 0, ..ok },
            AttentionConfig {
                scale: f32::INFINITY,
                ..ok
            },
            AttentionConfig {
                max_context: usize::MAX,
                ..ok
            },
        ] {
            assert!(Attention::from_weights(bad, &w[..]).is_err(), "{bad:?}");
        }
        assert!(Attention::from_weights(ok, &w[1..]).is_err());
    }

    #[test]
    fn sampling_frequencies_follow_the_truncated_softmax() {
        let logits = [0.0f32, 1.0, -0.5, 0.3, 1.0, -2.0];
        let mut scratch = [0.0f32; 6];
        let mut rng = SplitMix64::new(42);
        assert_eq!(
            pick(Sampling::Greedy, &logits, &mut rng, &mut scratch).unwrap(),
            1
        );
        let n = 40_000;
        for (temp, top_k, kept) in [
            (0.7f64, None, &[0usize, 1, 2, 3, 4, 5][..]),
            (1.3, Some(3), &[1, 3, 4][..]),
            // A tie at the k-th value keeps the lower index.
            (1.0, Some(1), &[1][..]),
        ] {
            let s = Sampling::Temperature {
                temperature: temp as f32,
                top_k,
            };
            let z: f64 = kept.iter().map(|&i| (logits[i] as f64 / temp).exp()).sum();
            let mut counts = [0usize; 6];
            for _ in 0..n {
                counts[pick(s, &logits, &mut rng, &mut scratch).unwrap()] += 1;
            }
            for i in 0..6 {
                let p = if kept.contains(&i) {
                    (logits[i] as f64 / temp).exp() / z
                } else {
                    0.0
                };
                let f = counts[i] as f64 / n as f64;
                let sd = (p * (1.0 - p) / n as f64).sqrt();
                assert!(
                    (f - p).abs() <= 5.0 * sd + 1e-12,
                    "T {temp} k {top_k:?} token {i}: {f} vs {p}"
                );
            }
        }
        for bad in [
            Sampling::Temperature {
                temperature: 0.0,
                top_k: None,
            },
            Sampling::Temperature {
                temperature: 1.0,
                top_k: Some(0),
            },
        ] {
            assert!(pick(bad, &logits, &mut rng, &mut scratch).is_err());
        }
        assert!(pick(Sampling::Greedy, &[1.0, f32::NAN], &mut rng, &mut scratch).is_err());
        assert!(pick(Sampling::Greedy, &[], &mut rng, &mut scratch).is_err());
    }

    /// SplitMix64's published first outputs for seed 0 (and `lrnnx_train::init::Rng`'s).
    #[test]
    fn splitmix_matches_its_reference_values() {
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
