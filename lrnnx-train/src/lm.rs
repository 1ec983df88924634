//! lrnnx's language model (`LRNNLMHeadModel`, spec §14.1): token embedding, a stack of
//! Mamba-style "Add → Norm → Mixer (→ Add → Norm → MLP)" blocks (§13.1) with any lrnnx mixer,
//! a final norm and a (usually tied) linear head.
//!
//! With `V` the vocabulary padded up to a multiple of `pad_vocab_size_multiple`, `E` (V, d) the
//! embedding and `W` (V, d) the head (`W = E` when tied):
//!
//! ```text
//! h_0 = E[ids],  r_0 = 0
//! block i:  r   = h + r                       (r = h for the first block)
//!           h   = mixer_i(norm_i(r))
//!           if d_intermediate > 0:  r = h + r;  h = mlp_i(norm2_i(r))
//! logits    = norm_f(h + r) · Wᵀ
//! RMSNorm:  y = x · (mean(x²) + ε)^{−½} · w          LayerNorm: y = (x − μ)/√(σ² + ε) · w + b
//! GatedMLP: [y, g] = x · fc1ᵀ (halves of width ⌈d_intermediate/128⌉·128),  out = (y ⊙ SiLU(g)) · fc2ᵀ
//! ```
//!
//! This is lrnnx's `fused_add_norm=False` path (the fused Triton path has the same math). Every
//! block mixer is a [`TrainLayer`] built with [`crate::build`] from the mixer type name
//! (`"LRU"`, `"S4"`, `"S4D"`, `"S5"` = LTI S5, `"Centaurus"`, `"Mamba"`, `"RGLRU"`, `"S7"`) with
//! `d_model`, `d_state` (not for RG-LRU) and the type's entry of `mixer_kwargs`; `"attn"` is
//! [`Mha`], lrnnx's multi-head attention (without its rotary embeddings, convolution and fused
//! MLP).
//!
//! [`LanguageModel::step`] runs the same blocks one token at a time with each mixer's
//! [`TrainLayer::step`]; [`LanguageModel::generate`] feeds a prompt through it and then samples
//! (greedy, or temperature / top-k with a seeded [`Rng`]).
//!
//! Parameters are kept under lrnnx's state-dict names (`backbone.embedding.weight`,
//! `backbone.layers.{i}.norm.weight`, `backbone.layers.{i}.mixer.*`, `…norm2.*`, `…mlp.fc1.weight`,
//! `…mlp.fc2.weight`, `backbone.norm_f.weight`, `lm_head.weight`). When the embeddings are tied,
//! `lm_head.weight` is the embedding parameter itself (one [`Var`], reported under both names).

use candle_core::{bail, DType, Result, Tensor, Var, D};
use serde_json::{Map, Value};

use crate::init::Rng;
use crate::layer::{axes_fit, positive_arg, usize_arg, Cache};
use crate::{build, BuildError, Params, TrainLayer};

/// The language model's configuration (lrnnx's `config.json` keys plus `mixer_kwargs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LmConfig {
    /// Model width.
    pub d_model: usize,
    /// State size passed to every mixer that takes one.
    pub d_state: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Vocabulary size before padding.
    pub vocab_size: usize,
    /// Mixer type of each block (lrnnx registry names).
    pub mixer_types: Vec<String>,
    /// Extra constructor arguments per mixer type name (a JSON object).
    pub mixer_kwargs: Value,
    /// Hidden width of the gated MLP (rounded up to a multiple of 128); 0 = no MLP.
    pub d_intermediate: usize,
    /// ε of every norm.
    pub norm_epsilon: f64,
    /// RMSNorm (`true`) or LayerNorm.
    pub rms_norm: bool,
    /// Whether `lm_head.weight` is the embedding.
    pub tie_embeddings: bool,
    /// The vocabulary is padded up to a multiple of this.
    pub pad_vocab_size_multiple: usize,
}

impl LmConfig {
    /// Reads lrnnx's constructor arguments (`LRNNLMHeadModel(**kwargs)`), with lrnnx's defaults
    /// for the optional ones. `residual_in_fp32` must be false (or absent); `fused_add_norm` is
    /// accepted either way (same math).
    pub fn from_lrnnx(kwargs: &Value) -> std::result::Result<Self, BuildError> {
        let kw = |m: String| BuildError::Kwarg(m);
        let opt_usize = |name: &str, default: usize| match kwargs.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => usize_arg(kwargs, name),
        };
        let opt_bool = |name: &str, default: bool| match kwargs.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| kw(format!("`{name}`: expected a boolean"))),
        };
        let mixer_types: Vec<String> = kwargs
            .get("mixer_types")
            .and_then(Value::as_array)
            .ok_or_else(|| kw("`mixer_types`: expected a list of mixer type names".into()))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| kw("`mixer_types`: every entry must be a string".into()))
            })
            .collect::<std::result::Result<_, _>>()?;
        let n_layer = usize_arg(kwargs, "n_layer")?;
        if mixer_types.len() != n_layer {
            return Err(kw(format!(
                "`mixer_types` has {} entries, `n_layer` is {n_layer}",
                mixer_types.len()
            )));
        }
        let mixer_kwargs = match kwargs.get("mixer_kwargs") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(kw("`mixer_kwargs`: expected an object".into())),
        };
        let norm_epsilon = match kwargs.get("norm_epsilon") {
            None | Some(Value::Null) => 1e-5,
            Some(v) => v
                .as_f64()
                .filter(|e| e.is_finite() && *e >= 0.0)
                .ok_or_else(|| kw("`norm_epsilon`: expected a non-negative number".into()))?,
        };
        if opt_bool("residual_in_fp32", false)? {
            return Err(kw(
                "`residual_in_fp32` = true is not supported (the model computes in one dtype)"
                    .into(),
            ));
        }
        opt_bool("fused_add_norm", true)?;
        let pad = opt_usize("pad_vocab_size_multiple", 8)?;
        if pad == 0 {
            return Err(kw("`pad_vocab_size_multiple` must be positive".into()));
        }
        let (d_model, d_state) = (usize_arg(kwargs, "d_model")?, usize_arg(kwargs, "d_state")?);
        let vocab_size = positive_arg(kwargs, "vocab_size")?;
        let d_intermediate = opt_usize("d_intermediate", 0)?;
        // every size an axis: the padded vocabulary, the MLP width and their products with
        // d_model then fit a usize
        let padded_vocab = vocab_size.div_ceil(pad).saturating_mul(pad);
        axes_fit(&[
            ("d_model", d_model),
            ("d_state", d_state),
            ("n_layer", n_layer),
            ("vocab_size", vocab_size),
            ("pad_vocab_size_multiple", pad),
            ("vocab_size padded to pad_vocab_size_multiple", padded_vocab),
            ("d_intermediate", d_intermediate),
        ])?;
        Ok(LmConfig {
            d_model,
            d_state,
            n_layer,
            vocab_size,
            mixer_types,
            mixer_kwargs,
            d_intermediate,
            norm_epsilon,
            rms_norm: opt_bool("rms_norm", true)?,
            tie_embeddings: opt_bool("tie_embeddings", true)?,
            pad_vocab_size_multiple: pad,
        })
    }

    /// The padded vocabulary size `V = ⌈vocab_size / m⌉ · m`.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(self.pad_vocab_size_multiple) * self.pad_vocab_size_multiple
    }

    /// The gated MLP's hidden width, `⌈d_intermediate / 128⌉ · 128` (0 without an MLP).
    pub fn mlp_hidden(&self) -> usize {
        self.d_intermediate.div_ceil(128) * 128
    }
}

/// The lrnnx class and constructor arguments of the mixer of type `mixer_type` (registry name)
/// in a model of configuration `cfg`.
pub fn mixer_class(
    cfg: &LmConfig,
    mixer_type: &str,
) -> std::result::Result<(&'static str, Value), BuildError> {
    let extra = cfg
        .mixer_kwargs
        .get(mixer_type)
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let Value::Object(mut kwargs) = extra else {
        return Err(BuildError::Kwarg(format!(
            "`mixer_kwargs.{mixer_type}`: expected an object"
        )));
    };
    let class = match mixer_type {
        "LRU" => "lrnnx.models.lti.lru.LRU",
        "S4" => "lrnnx.models.lti.s4.S4",
        "S4D" => "lrnnx.models.lti.s4d.S4D",
        "S5" => "lrnnx.models.lti.s5.S5",
        "Centaurus" => match kwargs.get("mode").and_then(Value::as_str).unwrap_or("neck") {
            "neck" => "lrnnx.models.lti.centaurus.CentaurusNeck",
            "pointwise" | "pw" | "s5" => "lrnnx.models.lti.centaurus.CentaurusPWNeck",
            "dws" => "lrnnx.models.lti.centaurus.CentaurusDWS",
            "full" => "lrnnx.models.lti.centaurus.CentaurusFull",
            m => {
                return Err(BuildError::Kwarg(format!(
                    "`mixer_kwargs.Centaurus.mode` = {m:?}: expected neck, pointwise, pw, s5, dws or full"
                )))
            }
        },
        "Mamba" => "lrnnx.models.ltv.mamba.Mamba",
        "RGLRU" => "lrnnx.models.ltv.rglru.RGLRU",
        "S7" => "lrnnx.models.ltv.s7.S7",
        "attn" => "lrnnx.layers.mha.MHA",
        other => {
            return Err(BuildError::Kwarg(format!(
                "`mixer_types`: unknown mixer type {other:?} (expected LRU, S4, S4D, S5, \
                 Centaurus, Mamba, RGLRU, S7 or attn)"
            )))
        }
    };
    // lrnnx passes d_model (and d_state, to a class that takes one) itself: the same name in
    // mixer_kwargs is a TypeError there ("got multiple values"), an error here
    let takes_d_state = mixer_type != "RGLRU" && mixer_type != "attn";
    let given_twice = ["d_model", "d_state"]
        .into_iter()
        .filter(|&k| k == "d_model" || takes_d_state)
        .find(|&k| kwargs.contains_key(k));
    if let Some(k) = given_twice {
        return Err(BuildError::Kwarg(format!(
            "`mixer_kwargs.{mixer_type}.{k}`: the model passes `{k}` to its mixers itself \
             (lrnnx raises a TypeError for it)"
        )));
    }
    kwargs.insert("d_model".into(), cfg.d_model.into());
    if takes_d_state {
        kwargs.insert("d_state".into(), cfg.d_state.into());
    }
    Ok((class, Value::Object(kwargs)))
}

/// Whether lrnnx passes event time steps to this mixer type's `step` (its LTV mixers).
fn is_ltv(mixer_type: &str) -> bool {
    matches!(mixer_type, "Mamba" | "RGLRU" | "S7")
}

/// A norm: RMSNorm (`bias = None`) or LayerNorm.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    /// RMSNorm `x · (mean(x²) + ε)^{−½} · w` or LayerNorm `(x − μ)/√(σ² + ε) · w + b` over the
    /// last axis.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            None => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                let inv = ms.affine(1.0, self.eps)?.sqrt()?.recip()?;
                x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
            }
            Some(b) => {
                let mu = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mu)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                let inv = var.affine(1.0, self.eps)?.sqrt()?.recip()?;
                xc.broadcast_mul(&inv)?
                    .broadcast_mul(&self.weight)?
                    .broadcast_add(b)
            }
        }
    }
}

/// `x · wᵀ` for `x` (…, in) and `w` (out, in).
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(&w.t()?)
}

/// One block: norm, mixer and the optional gated MLP with its norm.
struct Block {
    mixer_type: String,
    norm: Norm,
    mixer: Box<dyn TrainLayer>,
    /// `(norm2, fc1, fc2)`.
    mlp: Option<(Norm, Tensor, Tensor)>,
}

impl Block {
    /// The MLP half of the block: `(r + h, mlp(norm2(r + h)))`, or `(h, r)` unchanged without
    /// an MLP.
    fn mlp(&self, h: Tensor, residual: Tensor) -> Result<(Tensor, Tensor)> {
        match &self.mlp {
            None => Ok((h, residual)),
            Some((norm2, fc1, fc2)) => {
                let residual = (h + residual)?;
                let up = linear(&norm2.forward(&residual)?, fc1)?;
                let hid = fc2.dim(1)?;
                let y = up.narrow(D::Minus1, 0, hid)?;
                let gate = up.narrow(D::Minus1, hid, hid)?;
                Ok((linear(&(y * gate.silu()?)?, fc2)?, residual))
            }
        }
    }
}

/// lrnnx's `MHA` mixer (spec §13.4) without rotary embeddings, `d_conv` and the fused MLP
/// (those are refused at build time). With `x` (B, L, d), `n_h` query heads of width `d_h`
/// and `n_kv` key/value heads (each shared by `n_h / n_kv` consecutive query heads):
///
/// ```text
/// [q, k, v] = x · in_projᵀ + b_in        (q: n_h·d_h, then k: n_kv·d_h, then v: n_kv·d_h)
/// ctx_h     = softmax(q_h k_hᵀ · s [+ causal mask: −∞ where key time > query time]) v_h
/// y         = [ctx_1 … ctx_{n_h}] · out_projᵀ + b_out,   s = softmax_scale or 1/√d_h
/// ```
///
/// Keys `in_proj.weight` (n_h·d_h + 2·n_kv·d_h, d), `in_proj.bias` (if `qkv_proj_bias`, default
/// true), `out_proj.weight` (d, n_h·d_h), `out_proj.bias` (if `out_proj_bias`, default true).
/// `causal` defaults to false as in lrnnx (§18): a language model needs `causal: true`, and only a
/// causal MHA can be stepped. Its step cache holds every past key and value (it grows by one
/// time step per step). lrnnx's own LM `step` skips attention layers (§18); this one does not.
pub struct Mha {
    d_model: usize,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scale: f64,
    causal: bool,
    params: Params,
    in_w: Tensor,
    in_b: Option<Tensor>,
    out_w: Tensor,
    out_b: Option<Tensor>,
}

/// The attention block's sizes from its constructor arguments and the model width `d`:
/// `(num_heads, num_heads_kv, head_dim, qkv)` with `qkv = head_dim·(num_heads + 2·num_heads_kv)`
/// (the rows of `in_proj`). `num_heads` and `head_dim` (default `d / num_heads`) must be
/// positive, `num_heads_kv` (default `num_heads`) must divide `num_heads`, and every size must
/// fit an axis.
fn attn_dims(
    kwargs: &Value,
    d: usize,
) -> std::result::Result<(usize, usize, usize, usize), BuildError> {
    use crate::s4d::usize_or;
    let n_heads = usize_arg(kwargs, "num_heads")?;
    if n_heads == 0 {
        return Err(BuildError::Kwarg("`num_heads` must be positive".into()));
    }
    let n_kv = usize_or(kwargs, "num_heads_kv", n_heads)?;
    if n_kv == 0 || n_heads % n_kv != 0 {
        return Err(BuildError::Kwarg(format!(
            "`num_heads_kv` = {n_kv} must divide `num_heads` = {n_heads}"
        )));
    }
    let head_dim = usize_or(kwargs, "head_dim", d / n_heads)?;
    if head_dim == 0 {
        return Err(BuildError::Kwarg(format!(
            "`head_dim` is 0 (`d_model` = {d} over `num_heads` = {n_heads}): give a positive \
             `head_dim` or fewer heads"
        )));
    }
    axes_fit(&[
        ("d_model", d),
        ("num_heads", n_heads),
        ("head_dim", head_dim),
    ])?;
    let qkv = head_dim * (n_heads + 2 * n_kv);
    axes_fit(&[("head_dim·(num_heads + 2·num_heads_kv)", qkv)])?;
    Ok((n_heads, n_kv, head_dim, qkv))
}

impl Mha {
    /// Builds it from lrnnx's constructor arguments (`d_model` as `embed_dim`, `num_heads`,
    /// optional `num_heads_kv`, `head_dim`, `qkv_proj_bias`, `out_proj_bias`, `softmax_scale`,
    /// `causal`) and its parameters; shapes are checked here.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        use crate::s4d::{bool_or, usize_or};
        let d = usize_arg(kwargs, "d_model")?;
        let (n_heads, n_kv, head_dim, qkv) = attn_dims(kwargs, d)?;
        for name in ["mlp_dim", "d_conv", "rotary_emb_dim"] {
            if usize_or(kwargs, name, 0)? != 0 {
                return Err(BuildError::Kwarg(format!(
                    "`{name}` > 0 is not supported by the Rust MHA"
                )));
            }
        }
        let scale = match kwargs.get("softmax_scale") {
            None | Some(Value::Null) => 1.0 / (head_dim as f64).sqrt(),
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite())
                .ok_or_else(|| BuildError::Kwarg("`softmax_scale`: expected a number".into()))?,
        };
        let in_w = params.get("in_proj.weight", &[qkv, d])?;
        let in_b = if bool_or(kwargs, "qkv_proj_bias", true)? {
            Some(params.get("in_proj.bias", &[qkv])?)
        } else {
            None
        };
        let out_w = params.get("out_proj.weight", &[d, n_heads * head_dim])?;
        let out_b = if bool_or(kwargs, "out_proj_bias", true)? {
            Some(params.get("out_proj.bias", &[d])?)
        } else {
            None
        };
        let read = [
            Some("in_proj.weight"),
            in_b.as_ref().map(|_| "in_proj.bias"),
            Some("out_proj.weight"),
            out_b.as_ref().map(|_| "out_proj.bias"),
        ];
        if let Some(k) = params
            .vars()
            .keys()
            .find(|k| !read.contains(&Some(k.as_str())))
        {
            return Err(BuildError::Kwarg(format!(
                "tensor `{k}` is not a parameter of this attention block"
            )));
        }
        Ok(Mha {
            d_model: d,
            n_heads,
            n_kv,
            head_dim,
            scale,
            causal: bool_or(kwargs, "causal", false)?,
            params,
            in_w,
            in_b,
            out_w,
            out_b,
        })
    }

    /// `x · wᵀ (+ b)`.
    fn affine(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = linear(x, w)?;
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Splits `x · in_projᵀ + b` of `x` (B, T, d) into q (B, n_h, T, d_h) and k, v
    /// (B, T, n_kv, d_h).
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let y = Self::affine(x, &self.in_w, self.in_b.as_ref())?;
        let q = y
            .narrow(2, 0, nh * hd)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = y.narrow(2, nh * hd, nkv * hd)?.reshape((b, t, nkv, hd))?;
        let v = y
            .narrow(2, (nh + nkv) * hd, nkv * hd)?
            .reshape((b, t, nkv, hd))?;
        Ok((q, k, v))
    }

    /// Keys or values (B, T, n_kv, d_h) → (B, n_h, T, d_h), each kv head repeated for its
    /// `n_h / n_kv` query heads.
    fn expand(&self, k: &Tensor) -> Result<Tensor> {
        let (b, t, nkv, hd) = k.dims4()?;
        let g = self.n_heads / nkv;
        k.unsqueeze(3)?
            .broadcast_as((b, t, nkv, g, hd))?
            .reshape((b, t, self.n_heads, hd))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `softmax(q kᵀ · s + mask) v`, heads merged: (B, T_q, n_h·d_h). With `causal`, query `i`
    /// sees keys `j ≤ i + T_k − T_q` (the queries are the last `T_q` times).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
        let (b, nh, tq, hd) = q.dims4()?;
        let tk = k.dim(2)?;
        let mut s = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * self.scale)?;
        if causal {
            let off = tk - tq;
            let mask: Vec<f64> = (0..tq)
                .flat_map(|i| {
                    (0..tk).map(move |j| if j > i + off { f64::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (tq, tk), q.device())?.to_dtype(q.dtype())?;
            s = s.broadcast_add(&mask)?;
        }
        let m = s.max_keepdim(D::Minus1)?.detach();
        let e = s.broadcast_sub(&m)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        p.matmul(v)?.transpose(1, 2)?.reshape((b, tq, nh * hd))
    }
}

impl TrainLayer for Mha {
    fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor> {
        if time_steps.is_some() {
            bail!("MHA has no event mode: it takes no time steps");
        }
        match x.dims() {
            [_, _, h] if *h == self.d_model => {}
            s => bail!(
                "MHA input has shape {s:?}, expected (B, L, {})",
                self.d_model
            ),
        }
        let (q, k, v) = self.qkv(x)?;
        let ctx = self.attend(&q, &self.expand(&k)?, &self.expand(&v)?, self.causal)?;
        Self::affine(&ctx, &self.out_w, self.out_b.as_ref())
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// State: `[keys (B, T, n_kv, d_h), values (B, T, n_kv, d_h)]` of the `T` steps so far
    /// (empty before the first step).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        Ok(Cache::new(
            "MHA",
            self.params(),
            batch,
            self.in_w.dtype(),
            vec![],
            vec![],
        ))
    }

    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        if !self.causal {
            bail!("a non-causal MHA (lrnnx's default `causal: false`) cannot be stepped");
        }
        cache.check_step("MHA", self.params(), x_t, self.d_model, time_step, false)?;
        let (q, k, v) = self.qkv(&x_t.unsqueeze(1)?)?;
        let (k, v) = match cache.state.as_slice() {
            [pk, pv] => (Tensor::cat(&[pk, &k], 1)?, Tensor::cat(&[pv, &v], 1)?),
            _ => (k, v),
        };
        let ctx = self.attend(&q, &self.expand(&k)?, &self.expand(&v)?, false)?;
        let y = Self::affine(&ctx, &self.out_w, self.out_b.as_ref())?.squeeze(1)?;
        cache.state = vec![k, v];
        Ok(y)
    }
}

/// The step state of a [`LanguageModel`]: one [`Cache`] per block.
#[derive(Debug, Clone)]
pub struct LmCache {
    batch: usize,
    layers: Vec<Cache>,
}

impl LmCache {
    /// The batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The mixer caches, one per block.
    pub fn layers(&self) -> &[Cache] {
        &self.layers
    }
}

/// How [`LanguageModel::generate`] picks the next token from the logits of the unpadded
/// vocabulary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest index among equal maxima).
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the `top_k` largest logits
    /// (all of them when `None`).
    Temperature {
        /// The temperature, positive and finite.
        temperature: f64,
        /// Keep only this many most likely tokens (≥ 1).
        top_k: Option<usize>,
    },
}

impl Sampling {
    /// Picks a token index from `logits`: for [`Sampling::Temperature`], with `p_i ∝
    /// exp((ℓ_i − max ℓ)/T)` over the kept tokens, the smallest `i` (in descending-logit order)
    /// whose cumulative probability exceeds one uniform draw of `rng`.
    pub fn pick(&self, logits: &[f64], rng: &mut Rng) -> Result<usize> {
        if logits.is_empty() {
            bail!("cannot sample from an empty vocabulary");
        }
        if let Some(i) = logits.iter().position(|l| l.is_nan()) {
            bail!("logit {i} is NaN");
        }
        let argmax = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best
        };
        match *self {
            Sampling::Greedy => Ok(argmax()),
            Sampling::Temperature { temperature, top_k } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    bail!("sampling temperature {temperature} must be positive and finite");
                }
                let k = top_k.unwrap_or(logits.len());
                if k == 0 {
                    bail!("sampling top_k must be at least 1");
                }
                let mut order: Vec<usize> = (0..logits.len()).collect();
                // Descending logits, ties by index (a stable sort keeps index order).
                order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
                order.truncate(k.min(logits.len()));
                let top = logits[order[0]];
                let w: Vec<f64> = order
                    .iter()
                    .map(|&i| ((logits[i] - top) / temperature).exp())
                    .collect();
                let total: f64 = w.iter().sum();
                let u = rng.uniform() * total;
                let mut acc = 0.0;
                for (j, &wj) in w.iter().enumerate() {
                    acc += wj;
                    if u < acc {
                        return Ok(order[j]);
                    }
                }
                Ok(order[order.len() - 1])
            }
        }
    }
}

/// Fresh parameters for `LRNNLMHeadModel(**kwargs)` under lrnnx's state-dict names, with
/// lrnnx's distributions (spec §14.1), not its random stream: embedding `N(0, 0.02²)`; every
/// mixer from [`crate::init::init_params`]; attention `in_proj` (and the MLP's `fc1`) uniform in
/// `±1/√fan_in`; `out_proj.weight` and `fc2.weight` uniform in `±1/√fan_in` divided by
/// `√n_layer`; biases zero; norm weights one, biases zero; the head tied or, untied, drawn like
/// the embedding.
pub fn init_params(
    kwargs: &Value,
    rng: &mut Rng,
    dtype: DType,
    device: &candle_core::Device,
) -> std::result::Result<Params, BuildError> {
    let cfg = LmConfig::from_lrnnx(kwargs)?;
    let (d, v) = (cfg.d_model, cfg.padded_vocab());
    let mut p = Params::new();
    let put = |p: &mut Params, name: &str, vals: Vec<f64>, shape: &[usize]| -> Result<()> {
        let t = Tensor::from_vec(vals, shape, device)?.to_dtype(dtype)?;
        p.insert(name, &t)
    };
    let normal = |rng: &mut Rng, n: usize, sd: f64| (0..n).map(|_| sd * rng.normal()).collect();
    let uniform = |rng: &mut Rng, n: usize, bound: f64| {
        (0..n)
            .map(|_| bound * (2.0 * rng.uniform() - 1.0))
            .collect::<Vec<f64>>()
    };
    let depth = (cfg.n_layer.max(1) as f64).sqrt();
    put(
        &mut p,
        "backbone.embedding.weight",
        normal(rng, v * d, 0.02),
        &[v, d],
    )?;
    if !cfg.tie_embeddings {
        put(&mut p, "lm_head.weight", normal(rng, v * d, 0.02), &[v, d])?;
    }
    let norm = |p: &mut Params, prefix: &str| -> Result<()> {
        put(p, &format!("{prefix}.weight"), vec![1.0; d], &[d])?;
        if !cfg.rms_norm {
            put(p, &format!("{prefix}.bias"), vec![0.0; d], &[d])?;
        }
        Ok(())
    };
    for (i, ty) in cfg.mixer_types.iter().enumerate() {
        let pre = format!("backbone.layers.{i}");
        norm(&mut p, &format!("{pre}.norm"))?;
        let (class, kw) = mixer_class(&cfg, ty)?;
        if ty == "attn" {
            let (n_heads, _, hd, qkv) = attn_dims(&kw, d)?;
            let b_in = 1.0 / (d as f64).sqrt();
            let b_out = 1.0 / ((n_heads * hd) as f64).sqrt() / depth;
            put(
                &mut p,
                &format!("{pre}.mixer.in_proj.weight"),
                uniform(rng, qkv * d, b_in),
                &[qkv, d],
            )?;
            if crate::s4d::bool_or(&kw, "qkv_proj_bias", true)? {
                put(
                    &mut p,
                    &format!("{pre}.mixer.in_proj.bias"),
                    vec![0.0; qkv],
                    &[qkv],
                )?;
            }
            put(
                &mut p,
                &format!("{pre}.mixer.out_proj.weight"),
                uniform(rng, d * n_heads * hd, b_out),
                &[d, n_heads * hd],
            )?;
            if crate::s4d::bool_or(&kw, "out_proj_bias", true)? {
                put(
                    &mut p,
                    &format!("{pre}.mixer.out_proj.bias"),
                    vec![0.0; d],
                    &[d],
                )?;
            }
        } else {
            let mp = crate::init::init_params(class, &kw, rng, dtype, device)?;
            for (k, var) in mp.vars() {
                p.insert(&format!("{pre}.mixer.{k}"), var.as_tensor())?;
            }
        }
        if cfg.d_intermediate > 0 {
            let hid = cfg.mlp_hidden();
            norm(&mut p, &format!("{pre}.norm2"))?;
            put(
                &mut p,
                &format!("{pre}.mlp.fc1.weight"),
                uniform(rng, 2 * hid * d, 1.0 / (d as f64).sqrt()),
                &[2 * hid, d],
            )?;
            put(
                &mut p,
                &format!("{pre}.mlp.fc2.weight"),
                uniform(rng, d * hid, 1.0 / (hid as f64).sqrt() / depth),
                &[d, hid],
            )?;
        }
    }
    norm(&mut p, "backbone.norm_f")?;
    Ok(p)
}

/// lrnnx's `LRNNLMHeadModel` (module docs) for training and generation.
pub struct LanguageModel {
    config: LmConfig,
    /// Embedding, norms, MLPs and head (not the mixers' parameters).
    params: Params,
    embedding: Tensor,
    head: Tensor,
    blocks: Vec<Block>,
    norm_f: Norm,
}

impl LanguageModel {
    /// Builds the model from lrnnx's constructor arguments (see [`LmConfig::from_lrnnx`]) and a
    /// state dict under lrnnx's names (module docs). With tied embeddings `lm_head.weight` may
    /// be absent; when present it must equal the embedding. Every shape is checked here; a
    /// tensor the model does not use is an error naming it.
    pub fn from_lrnnx(kwargs: &Value, state: Params) -> std::result::Result<Self, BuildError> {
        let config = LmConfig::from_lrnnx(kwargs)?;
        let (d, v) = (config.d_model, config.padded_vocab());
        let mut own = Params::new();
        let mut mixer_params: Vec<Params> = vec![Params::new(); config.n_layer];
        for (name, var) in state.vars() {
            // `backbone.layers.{i}.mixer.{key}` with `i` written as lrnnx writes it (`01` or
            // `+1` is not block 1: such a key stays with the model's own and is refused below)
            let mixer = name.strip_prefix("backbone.layers.").and_then(|rest| {
                let (i, key) = rest.split_once('.')?;
                let key = key.strip_prefix("mixer.")?;
                let block = i.parse::<usize>().ok().filter(|b| b.to_string() == i)?;
                Some((block, key))
            });
            match mixer {
                Some((i, key)) if i < config.n_layer => {
                    mixer_params[i].insert(key, var.as_tensor())?
                }
                _ => own.insert(name, var.as_tensor())?,
            }
        }
        let eps = config.norm_epsilon;
        let norm = |p: &Params, prefix: &str| -> Result<Norm> {
            Ok(Norm {
                weight: p.get(&format!("{prefix}.weight"), &[d])?,
                bias: if config.rms_norm {
                    None
                } else {
                    Some(p.get(&format!("{prefix}.bias"), &[d])?)
                },
                eps,
            })
        };
        let head = if config.tie_embeddings {
            if own.vars().contains_key("lm_head.weight") {
                let e = own.get("backbone.embedding.weight", &[v, d])?;
                let h = own.get("lm_head.weight", &[v, d])?;
                let diff = (&h - &e)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                if diff != 0.0 {
                    return Err(BuildError::Kwarg(format!(
                        "`tie_embeddings` is true but `lm_head.weight` differs from \
                         `backbone.embedding.weight` (max |diff| = {diff})"
                    )));
                }
                // One parameter for both names: drop the head's copy.
                let mut tied = Params::new();
                for (k, x) in own.vars() {
                    if k != "lm_head.weight" {
                        tied.insert(k, x.as_tensor())?;
                    }
                }
                own = tied;
            }
            own.get("backbone.embedding.weight", &[v, d])?
        } else {
            own.get("lm_head.weight", &[v, d])?
        };
        let embedding = own.get("backbone.embedding.weight", &[v, d])?;
        let hid = config.mlp_hidden();
        let mut blocks = Vec::with_capacity(config.n_layer);
        for (i, (ty, mp)) in config.mixer_types.iter().zip(mixer_params).enumerate() {
            let (class, kw) = mixer_class(&config, ty)?;
            let built = if ty == "attn" {
                Mha::from_lrnnx(&kw, mp).map(|m| Box::new(m) as Box<dyn TrainLayer>)
            } else {
                // exactly the mixer's parameters: a stray key under `mixer.` is an error
                let mp = crate::checkpoint::exact_layer_params(class, &kw, mp).map_err(|e| {
                    BuildError::Kwarg(format!("block {i} ({ty}) mixer parameters: {e}"))
                })?;
                build(class, &kw, mp)
            };
            let mixer = built.map_err(|e| match e {
                BuildError::UnsupportedClass(c) => BuildError::UnsupportedClass(c),
                BuildError::Kwarg(m) => BuildError::Kwarg(format!("block {i} ({ty}): {m}")),
                BuildError::Candle(e) => {
                    BuildError::Kwarg(format!("block {i} ({ty}) mixer parameters: {e}"))
                }
            })?;
            let p = format!("backbone.layers.{i}");
            let mlp = if config.d_intermediate > 0 {
                Some((
                    norm(&own, &format!("{p}.norm2"))?,
                    own.get(&format!("{p}.mlp.fc1.weight"), &[2 * hid, d])?,
                    own.get(&format!("{p}.mlp.fc2.weight"), &[d, hid])?,
                ))
            } else {
                None
            };
            blocks.push(Block {
                mixer_type: ty.clone(),
                norm: norm(&own, &format!("{p}.norm"))?,
                mixer,
                mlp,
            });
        }
        let norm_f = norm(&own, "backbone.norm_f")?;
        let model = LanguageModel {
            config,
            params: own,
            embedding,
            head,
            blocks,
            norm_f,
        };
        let mut expected = vec![
            "backbone.embedding.weight".to_string(),
            "lm_head.weight".into(),
        ];
        let mut norm_keys = vec!["backbone.norm_f".to_string()];
        for i in 0..model.config.n_layer {
            norm_keys.push(format!("backbone.layers.{i}.norm"));
            if model.config.d_intermediate > 0 {
                norm_keys.push(format!("backbone.layers.{i}.norm2"));
                expected.push(format!("backbone.layers.{i}.mlp.fc1.weight"));
                expected.push(format!("backbone.layers.{i}.mlp.fc2.weight"));
            }
        }
        for n in norm_keys {
            expected.push(format!("{n}.weight"));
            if !model.config.rms_norm {
                expected.push(format!("{n}.bias"));
            }
        }
        if let Some(k) = model.params.vars().keys().find(|k| !expected.contains(k)) {
            return Err(BuildError::Kwarg(format!(
                "state dict tensor `{k}` is not a parameter of this model"
            )));
        }
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &LmConfig {
        &self.config
    }

    /// Every parameter under its lrnnx state-dict name (mixers' under
    /// `backbone.layers.{i}.mixer.`); with tied embeddings the embedding [`Var`] appears under
    /// both `backbone.embedding.weight` and `lm_head.weight`.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .params
            .vars()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.config.tie_embeddings {
            if let Some(v) = self.params.vars().get("backbone.embedding.weight") {
                out.push(("lm_head.weight".into(), v.clone()));
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            for (k, v) in b.mixer.params().vars() {
                out.push((format!("backbone.layers.{i}.mixer.{k}"), v.clone()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Checks token ids (any shape) of dtype U32 or I64 against the padded vocabulary and returns
    /// them as U32.
    fn check_ids(&self, ids: &Tensor, name: &str) -> Result<Tensor> {
        if !matches!(ids.dtype(), DType::U32 | DType::I64 | DType::U8) {
            bail!(
                "`{name}` has dtype {:?}, expected integer token ids (U32 or I64)",
                ids.dtype()
            );
        }
        let v = self.config.padded_vocab() as i64;
        let flat = ids.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        if let Some((i, t)) = flat.iter().enumerate().find(|(_, t)| !(0..v).contains(*t)) {
            bail!("`{name}`[flat index {i}] = {t} is outside the vocabulary 0..{v}");
        }
        ids.to_dtype(DType::U32)
    }

    /// The embeddings `E[ids]` of ids (…) → (…, d_model).
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.config.d_model);
        // contiguous ids: candle's CUDA index_select reads the ids as if contiguous, whatever
        // their strides (a token column `ids[:, t]` would read the wrong ids)
        self.embedding
            .index_select(&ids.flatten_all()?.contiguous()?, 0)?
            .reshape(shape)
    }

    /// The logits `norm_f(h + r) · Wᵀ`.
    fn head(&self, h: &Tensor, residual: &Tensor) -> Result<Tensor> {
        linear(&self.norm_f.forward(&(h + residual)?)?, &self.head)
    }

    /// The parallel forward: token ids (B, L) (U32 or I64) → logits (B, L, V_pad). `time_steps`
    /// (B, L), when given, are passed to the LTV mixers (Mamba, RG-LRU, S7) as event time steps,
    /// as lrnnx's `integration_timesteps`.
    pub fn forward(&self, ids: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor> {
        if ids.rank() != 2 {
            bail!(
                "`input_ids` has shape {:?}, expected (batch, length)",
                ids.dims()
            );
        }
        let ids = self.check_ids(ids, "input_ids")?;
        let mut h = self.embed(&ids)?;
        let mut residual: Option<Tensor> = None;
        for b in &self.blocks {
            let r = match residual {
                None => h,
                Some(r) => (h + r)?,
            };
            let tau = if is_ltv(&b.mixer_type) {
                time_steps
            } else {
                None
            };
            let y = b.mixer.forward(&b.norm.forward(&r)?, tau)?;
            let (y, r) = b.mlp(y, r)?;
            h = y;
            residual = Some(r);
        }
        match residual {
            Some(r) => self.head(&h, &r),
            None => linear(&self.norm_f.forward(&h)?, &self.head),
        }
    }

    /// A zero step state for `batch` sequences (each mixer's [`TrainLayer::init_cache`]).
    pub fn init_cache(&self, batch: usize) -> Result<LmCache> {
        Ok(LmCache {
            batch,
            layers: self
                .blocks
                .iter()
                .map(|b| b.mixer.init_cache(batch))
                .collect::<Result<_>>()?,
        })
    }

    /// One token per sequence: `token` (B,) (U32 or I64) → logits (B, V_pad), advancing
    /// `cache`; the same blocks as [`LanguageModel::forward`] with each mixer's
    /// [`TrainLayer::step`]. `time_step` (B,) goes to the LTV mixers only (as in lrnnx's
    /// `step`). On error the cache may be partly advanced: discard it.
    pub fn step(
        &self,
        token: &Tensor,
        cache: &mut LmCache,
        time_step: Option<&Tensor>,
    ) -> Result<Tensor> {
        if token.dims() != [cache.batch] {
            bail!(
                "`token` has shape {:?}, expected (batch,) = ({},)",
                token.dims(),
                cache.batch
            );
        }
        if cache.layers.len() != self.blocks.len() {
            bail!(
                "the cache has {} layers, the model {}",
                cache.layers.len(),
                self.blocks.len()
            );
        }
        let token = self.check_ids(token, "token")?;
        let mut h = self.embed(&token)?;
        let mut residual: Option<Tensor> = None;
        for (b, c) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let r = match residual {
                None => h,
                Some(r) => (h + r)?,
            };
            let tau = if is_ltv(&b.mixer_type) {
                time_step
            } else {
                None
            };
            let y = b.mixer.step(&b.norm.forward(&r)?, c, tau)?;
            let (y, r) = b.mlp(y, r)?;
            h = y;
            residual = Some(r);
        }
        match residual {
            Some(r) => self.head(&h, &r),
            None => linear(&self.norm_f.forward(&h)?, &self.head),
        }
    }

    /// Autoregressive generation: steps every prompt (`prompt` (B, L_p), L_p ≥ 1) through a
    /// fresh cache, then `n` times picks a token from the last logits (restricted to the
    /// unpadded vocabulary) with `sampling` and `rng` and feeds it back. Returns the `n` new
    /// tokens of each sequence.
    pub fn generate(
        &self,
        prompt: &Tensor,
        n: usize,
        sampling: Sampling,
        rng: &mut Rng,
    ) -> Result<Vec<Vec<u32>>> {
        let (batch, len) = match prompt.dims() {
            [b, l] if *l > 0 => (*b, *l),
            s => bail!("`prompt` has shape {s:?}, expected (batch, length ≥ 1)"),
        };
        let prompt = self.check_ids(prompt, "prompt")?;
        let mut cache = self.init_cache(batch)?;
        let mut logits = None;
        for t in 0..len {
            let tok = prompt.narrow(1, t, 1)?.squeeze(1)?;
            logits = Some(self.step(&tok, &mut cache, None)?);
        }
        // (capacity capped: `n` is the caller's and may be far more than will fit)
        let mut out = vec![Vec::with_capacity(n.min(1 << 16)); batch];
        let vocab = self.config.vocab_size;
        for step in 0..n {
            let Some(l) = &logits else {
                bail!("no logits (empty prompt)");
            };
            let rows = l
                .narrow(1, 0, vocab)?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?;
            let mut next = Vec::with_capacity(batch);
            for (seq, row) in out.iter_mut().zip(&rows) {
                let tok = sampling.pick(row, rng)? as u32;
                seq.push(tok);
                next.push(tok);
            }
            if step + 1 < n {
                let tok = Tensor::from_vec(next, batch, prompt.device())?;
                logits = Some(self.step(&tok, &mut cache, None)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use serde_json::json;

    use super::*;
    use crate::init;

    fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn randn(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
        let n = shape.iter().product();
        t((0..n).map(|_| scale * rng.normal()).collect(), shape)
    }

    /// A tiny untied LayerNorm model: LRU then LRU, d = 4, N = 3, vocabulary 5 (padded to 8).
    fn tiny(d_intermediate: usize) -> (Value, Params) {
        tiny_with(d_intermediate, false)
    }

    /// [`tiny`], with block 1 a causal MHA (2 query heads, 1 kv head, head width 2) when `attn`.
    fn tiny_with(d_intermediate: usize, attn: bool) -> (Value, Params) {
        let mut rng = Rng::new(7);
        let (d, n, v) = (4, 3, 8);
        let mut p = Params::new();
        p.insert("backbone.embedding.weight", &randn(&mut rng, &[v, d], 1.0))
            .unwrap();
        p.insert("lm_head.weight", &randn(&mut rng, &[v, d], 0.5))
            .unwrap();
        for i in 0..2 {
            let mut lru =
                init::lru(d, n, 0.5, 0.9, 3.0, &mut rng, DType::F64, &Device::Cpu).unwrap();
            if attn && i == 1 {
                lru = Params::new();
                lru.insert("in_proj.weight", &randn(&mut rng, &[8, d], 0.8))
                    .unwrap();
                lru.insert("in_proj.bias", &randn(&mut rng, &[8], 0.1))
                    .unwrap();
                lru.insert("out_proj.weight", &randn(&mut rng, &[d, 4], 0.5))
                    .unwrap();
                lru.insert("out_proj.bias", &randn(&mut rng, &[d], 0.1))
                    .unwrap();
            }
            for (k, x) in lru.vars() {
                p.insert(&format!("backbone.layers.{i}.mixer.{k}"), x.as_tensor())
                    .unwrap();
            }
            let mut norms = vec!["norm"];
            if d_intermediate > 0 {
                norms.push("norm2");
                p.insert(
                    &format!("backbone.layers.{i}.mlp.fc1.weight"),
                    &randn(&mut rng, &[256, d], 0.3),
                )
                .unwrap();
                p.insert(
                    &format!("backbone.layers.{i}.mlp.fc2.weight"),
                    &randn(&mut rng, &[d, 128], 0.1),
                )
                .unwrap();
            }
            for nm in norms {
                p.insert(
                    &format!("backbone.layers.{i}.{nm}.weight"),
                    &randn(&mut rng, &[d], 1.0),
                )
                .unwrap();
                p.insert(
                    &format!("backbone.layers.{i}.{nm}.bias"),
                    &randn(&mut rng, &[d], 0.1),
                )
                .unwrap();
            }
        }
        p.insert("backbone.norm_f.weight", &randn(&mut rng, &[d], 1.0))
            .unwrap();
        p.insert("backbone.norm_f.bias", &randn(&mut rng, &[d], 0.1))
            .unwrap();
        let second = if attn { "attn" } else { "LRU" };
        let kw = json!({
            "d_model": d, "d_state": n, "n_layer": 2, "vocab_size": 5,
            "mixer_types": ["LRU", second], "d_intermediate": d_intermediate,
            "mixer_kwargs": {"attn": {"num_heads": 2, "num_heads_kv": 1, "causal": true}},
            "rms_norm": false, "tie_embeddings": false, "fused_add_norm": false,
        });
        (kw, p)
    }

    #[test]
    fn norms_match_their_closed_forms() {
        let x = [1.0, -2.0, 0.5, 3.0];
        let w = [0.5, 1.5, -1.0, 2.0];
        let b = [0.1, 0.0, -0.2, 0.3];
        let eps = 1e-5;
        let xt = t(x.to_vec(), &[1, 4]);
        let rms = Norm {
            weight: t(w.to_vec(), &[4]),
            bias: None,
            eps,
        };
        let ms = x.iter().map(|v| v * v).sum::<f64>() / 4.0;
        let got = rms.forward(&xt).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f64>().unwrap();
        for i in 0..4 {
            let want = x[i] / (ms + eps).sqrt() * w[i];
            assert!(
                (got[i] - want).abs() < 1e-12,
                "rms {i}: {} vs {want}",
                got[i]
            );
        }
        let ln = Norm {
            weight: t(w.to_vec(), &[4]),
            bias: Some(t(b.to_vec(), &[4])),
            eps,
        };
        let mu = x.iter().sum::<f64>() / 4.0;
        let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / 4.0;
        let got = ln.forward(&xt).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f64>().unwrap();
        for i in 0..4 {
            let want = (x[i] - mu) / (var + eps).sqrt() * w[i] + b[i];
            assert!(
                (got[i] - want).abs() < 1e-12,
                "ln {i}: {} vs {want}",
                got[i]
            );
        }
    }

    #[test]
    fn greedy_and_top_k_follow_the_logits() {
        let logits = [0.1, 2.0, -1.0, 2.0, 1.5];
        let mut rng = Rng::new(1);
        assert_eq!(Sampling::Greedy.pick(&logits, &mut rng).unwrap(), 1);
        let top1 = Sampling::Temperature {
            temperature: 3.0,
            top_k: Some(1),
        };
        for _ in 0..20 {
            assert_eq!(top1.pick(&logits, &mut rng).unwrap(), 1);
        }
        let top3 = Sampling::Temperature {
            temperature: 1.0,
            top_k: Some(3),
        };
        for _ in 0..200 {
            assert!([1, 3, 4].contains(&top3.pick(&logits, &mut rng).unwrap()));
        }
    }

    #[test]
    fn temperature_sampling_frequencies_follow_the_softmax() {
        let logits: [f64; 4] = [0.0, 1.0, -0.5, 0.3];
        let temp: f64 = 0.7;
        let z: f64 = logits.iter().map(|l| (l / temp).exp()).sum();
        let s = Sampling::Temperature {
            temperature: temp,
            top_k: None,
        };
        let mut rng = Rng::new(42);
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.pick(&logits, &mut rng).unwrap()] += 1;
        }
        for i in 0..4 {
            let p = (logits[i] / temp).exp() / z;
            let f = counts[i] as f64 / n as f64;
            // 5 standard deviations of a binomial frequency.
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((f - p).abs() < 5.0 * sd, "token {i}: {f} vs {p}");
        }
    }

    #[test]
    fn bad_sampling_arguments_are_errors() {
        let mut rng = Rng::new(0);
        for (temperature, top_k) in [(0.0, None), (f64::NAN, None), (1.0, Some(0))] {
            let s = Sampling::Temperature { temperature, top_k };
            assert!(s.pick(&[1.0, 2.0], &mut rng).is_err());
        }
        assert!(Sampling::Greedy.pick(&[], &mut rng).is_err());
        assert!(Sampling::Greedy.pick(&[1.0, f64::NAN], &mut rng).is_err());
    }

    #[test]
    fn config_errors_name_the_field() {
        let (kw, p) = tiny(0);
        let mut bad = kw.clone();
        bad["mixer_types"] = json!(["LRU"]);
        let e = LanguageModel::from_lrnnx(&bad, p.clone()).err().unwrap();
        assert!(e.to_string().contains("mixer_types"), "{e}");
        let mut attn = kw.clone();
        attn["mixer_types"] = json!(["LRU", "attn"]);
        let e = LanguageModel::from_lrnnx(&attn, p.clone()).err().unwrap();
        assert!(e.to_string().contains("block 1 (attn)"), "{e}");
        assert!(e.to_string().contains("in_proj.weight"), "{e}");
        attn["mixer_kwargs"] = json!({});
        let e = LanguageModel::from_lrnnx(&attn, p.clone()).err().unwrap();
        assert!(e.to_string().contains("num_heads"), "{e}");
        let mut extra = p.clone();
        extra.insert("backbone.stray", &t(vec![1.0], &[1])).unwrap();
        let e = LanguageModel::from_lrnnx(&kw, extra).err().unwrap();
        assert!(e.to_string().contains("backbone.stray"), "{e}");
        let mut missing = Params::new();
        for (k, v) in p.vars() {
            if k != "backbone.norm_f.bias" {
                missing.insert(k, v.as_tensor()).unwrap();
            }
        }
        let e = LanguageModel::from_lrnnx(&kw, missing).err().unwrap();
        assert!(e.to_string().contains("backbone.norm_f.bias"), "{e}");
        // A stray tensor under a mixer (an LRU's, an attention block's) and a block index not
        // written as lrnnx writes it are refused, naming the tensor.
        for (attn, key) in [
            (false, "backbone.layers.0.mixer.nu_logg"),
            (true, "backbone.layers.1.mixer.q_proj.weight"),
            (false, "backbone.layers.01.mixer.nu_log"),
        ] {
            let (kw, mut p) = tiny_with(0, attn);
            p.insert(key, &t(vec![1.0], &[1])).unwrap();
            let e = LanguageModel::from_lrnnx(&kw, p).err().unwrap().to_string();
            let name = key.rsplit("mixer.").next().unwrap();
            assert!(e.contains(name), "{key}: {e}");
        }
        let (kw, p) = tiny_with(0, true);
        LanguageModel::from_lrnnx(&kw, p).unwrap();
        // Sizes past an axis, and an attention head width of 0, are refused.
        let mut big = kw.clone();
        big["vocab_size"] = json!(1u64 << 40);
        let e = LanguageModel::from_lrnnx(&big, Params::new())
            .err()
            .unwrap();
        assert!(e.to_string().contains("vocab_size"), "{e}");
        let (mut kw, p) = tiny_with(0, true);
        kw["mixer_kwargs"]["attn"]["num_heads"] = json!(8);
        kw["mixer_kwargs"]["attn"]["num_heads_kv"] = json!(8);
        kw["mixer_kwargs"]["attn"]
            .as_object_mut()
            .unwrap()
            .remove("head_dim");
        let e = LanguageModel::from_lrnnx(&kw, p).err().unwrap();
        assert!(e.to_string().contains("`head_dim` is 0"), "{e}");
        // An empty vocabulary; `d_model` / `d_state` given again in a mixer's kwargs (lrnnx:
        // "got multiple values", a TypeError) rather than silently replaced.
        let (kw, p) = tiny(0);
        let mut empty = kw.clone();
        empty["vocab_size"] = json!(0);
        let e = LanguageModel::from_lrnnx(&empty, p.clone()).err().unwrap();
        assert!(
            e.to_string().contains("`vocab_size` must be positive"),
            "{e}"
        );
        for key in ["d_model", "d_state"] {
            let mut twice = kw.clone();
            twice["mixer_kwargs"] = json!({"LRU": {key: 2}});
            let e = LanguageModel::from_lrnnx(&twice, p.clone()).err().unwrap();
            assert!(
                e.to_string().contains(&format!("mixer_kwargs.LRU.{key}")),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_token_ids_are_errors() {
        let (kw, p) = tiny(0);
        let m = LanguageModel::from_lrnnx(&kw, p).unwrap();
        assert_eq!(m.config().padded_vocab(), 8);
        let ids = Tensor::new(&[[1u32, 8]], &Device::Cpu).unwrap();
        let e = m.forward(&ids, None).err().unwrap();
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        let f = t(vec![1.0, 2.0], &[1, 2]);
        assert!(m.forward(&f, None).is_err());
        let mut cache = m.init_cache(2).unwrap();
        let one = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        assert!(m.step(&one, &mut cache, None).is_err());
    }

    /// Stepping token by token reproduces the parallel forward, with and without the MLP
    /// (LayerNorm, untied head).
    #[test]
    fn step_matches_forward() {
        for (d_int, attn) in [(0, false), (20, false), (20, true)] {
            let (kw, p) = tiny_with(d_int, attn);
            let m = LanguageModel::from_lrnnx(&kw, p).unwrap();
            let ids = Tensor::new(
                &[[1u32, 4, 0, 2, 2, 3, 7], [0, 0, 1, 4, 3, 2, 1]],
                &Device::Cpu,
            )
            .unwrap();
            let y = m.forward(&ids, None).unwrap();
            assert_eq!(y.dims(), [2, 7, 8]);
            let mut cache = m.init_cache(2).unwrap();
            for step in 0..7 {
                let tok = ids.narrow(1, step, 1).unwrap().squeeze(1).unwrap();
                let ys = m.step(&tok, &mut cache, None).unwrap();
                let yf = y.narrow(1, step, 1).unwrap().squeeze(1).unwrap();
                let d = (ys - yf)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!(
                    d < 1e-10,
                    "d_intermediate {d_int} attn {attn} step {step}: {d}"
                );
            }
        }
    }

    /// Greedy generation picks, at every step, the argmax of the parallel forward over the
    /// prompt plus the tokens generated so far.
    #[test]
    fn greedy_generation_follows_the_forward() {
        let (kw, p) = tiny(20);
        let m = LanguageModel::from_lrnnx(&kw, p).unwrap();
        let prompt = Tensor::new(&[[1u32, 4, 0], [2, 2, 3]], &Device::Cpu).unwrap();
        let gen = m
            .generate(&prompt, 5, Sampling::Greedy, &mut Rng::new(0))
            .unwrap();
        let rows = prompt.to_vec2::<u32>().unwrap();
        for (b, (row, g)) in rows.iter().zip(&gen).enumerate() {
            assert_eq!(g.len(), 5);
            let mut seq = row.clone();
            for &tok in g {
                let l = seq.len();
                let ids = Tensor::from_vec(seq.clone(), (1, l), &Device::Cpu).unwrap();
                let y = m.forward(&ids, None).unwrap();
                let last = y
                    .get(0)
                    .unwrap()
                    .get(l - 1)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                // The reference argmax: the first index of the largest of the 5 real logits.
                let want = (0..5).fold(0, |best, i| if last[i] > last[best] { i } else { best });
                assert_eq!(tok as usize, want, "sequence {b} position {l}");
                seq.push(tok);
            }
        }
    }

    /// Attention against a plain loop over heads, queries and keys (GQA: 4 query heads on 2
    /// kv heads), causal and not.
    #[test]
    fn mha_matches_a_naive_loop() {
        let mut rng = Rng::new(3);
        let (b, l, d, nh, nkv, hd) = (2, 5, 6, 4, 2, 3);
        let qkv = hd * (nh + 2 * nkv);
        let mut p = Params::new();
        let w_in = randn(&mut rng, &[qkv, d], 0.7);
        let b_in = randn(&mut rng, &[qkv], 0.2);
        let w_out = randn(&mut rng, &[d, nh * hd], 0.5);
        let b_out = randn(&mut rng, &[d], 0.2);
        p.insert("in_proj.weight", &w_in).unwrap();
        p.insert("in_proj.bias", &b_in).unwrap();
        p.insert("out_proj.weight", &w_out).unwrap();
        p.insert("out_proj.bias", &b_out).unwrap();
        let x = randn(&mut rng, &[b, l, d], 1.0);
        let xv = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let wi = w_in.to_vec2::<f64>().unwrap();
        let bi = b_in.to_vec1::<f64>().unwrap();
        let wo = w_out.to_vec2::<f64>().unwrap();
        let bo = b_out.to_vec1::<f64>().unwrap();
        for causal in [false, true] {
            let kw = json!({"d_model": d, "num_heads": nh, "num_heads_kv": nkv,
                            "head_dim": hd, "causal": causal});
            let m = Mha::from_lrnnx(&kw, p.clone()).unwrap();
            let y = m.forward(&x, None).unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for bb in 0..b {
                // proj[t][c] = x_t · w_in[c] + b_in[c]
                let proj: Vec<Vec<f64>> = (0..l)
                    .map(|t| {
                        (0..qkv)
                            .map(|c| {
                                bi[c]
                                    + (0..d)
                                        .map(|j| xv[(bb * l + t) * d + j] * wi[c][j])
                                        .sum::<f64>()
                            })
                            .collect()
                    })
                    .collect();
                for t in 0..l {
                    let mut ctx = vec![0.0; nh * hd];
                    for h in 0..nh {
                        let g = h / (nh / nkv);
                        let q = &proj[t][h * hd..(h + 1) * hd];
                        let keys = if causal { t + 1 } else { l };
                        let sc: Vec<f64> = (0..keys)
                            .map(|s| {
                                let k = &proj[s][nh * hd + g * hd..nh * hd + (g + 1) * hd];
                                q.iter().zip(k).map(|(a, c)| a * c).sum::<f64>()
                                    / (hd as f64).sqrt()
                            })
                            .collect();
                        let z: f64 = sc.iter().map(|v| v.exp()).sum();
                        for (s, sv) in sc.iter().enumerate() {
                            let off = (nh + nkv) * hd + g * hd;
                            for e in 0..hd {
                                ctx[h * hd + e] += sv.exp() / z * proj[s][off + e];
                            }
                        }
                    }
                    for o in 0..d {
                        let want = bo[o] + (0..nh * hd).map(|c| ctx[c] * wo[o][c]).sum::<f64>();
                        let got = y[(bb * l + t) * d + o];
                        assert!(
                            (got - want).abs() < 1e-12,
                            "causal {causal} b {bb} t {t} o {o}: {got} vs {want}"
                        );
                    }
                }
            }
            let mut cache = m.init_cache(b).unwrap();
            let x0 = x.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
            assert_eq!(m.step(&x0, &mut cache, None).is_ok(), causal);
        }
    }

    /// MHA gradients (through the causal mask and the softmax) against central finite
    /// differences of `loss = Σ y ⊙ g` in f64.
    #[test]
    fn mha_gradients_match_finite_differences() {
        let mut rng = Rng::new(11);
        let (b, l, d) = (1, 4, 4);
        let names = [
            ("in_proj.weight", vec![8, d]),
            ("in_proj.bias", vec![8]),
            ("out_proj.weight", vec![d, 4]),
        ];
        let mut p = Params::new();
        for (k, shape) in &names {
            p.insert(k, &randn(&mut rng, shape, 0.8)).unwrap();
        }
        p.insert("out_proj.bias", &randn(&mut rng, &[d], 0.1))
            .unwrap();
        let x = randn(&mut rng, &[b, l, d], 1.0);
        let g = randn(&mut rng, &[b, l, d], 1.0);
        let kw = json!({"d_model": d, "num_heads": 2, "num_heads_kv": 1, "causal": true});
        let loss = |p: &Params| -> (f64, Mha) {
            let m = Mha::from_lrnnx(&kw, p.clone()).unwrap();
            let y = m.forward(&x, None).unwrap();
            let v = (y * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            (v, m)
        };
        let (_, m) = loss(&p);
        let y = m.forward(&x, None).unwrap();
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for (k, _) in &names {
            let var = &m.params().vars()[*k];
            let ours = grads.get(var.as_tensor()).unwrap();
            let ours = ours.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for i in [0, base.len() / 2, base.len() - 1] {
                let h = 1e-6;
                let at = |dv: f64| {
                    let mut v = base.clone();
                    v[i] += dv;
                    let mut q = p.clone();
                    q.insert(k, &t(v, var.dims())).unwrap();
                    loss(&q).0
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (fd - ours[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{k}[{i}]: {} vs {fd}",
                    ours[i]
                );
            }
        }
    }
}
