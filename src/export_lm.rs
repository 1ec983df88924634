//! The language model in the core: [`lrnnx_core::LanguageModel`] built from a trained
//! [`lrnnx_train::lm::LanguageModel`] ([`export_lm`]) or from lrnnx's `LRNNLMHeadModel`
//! constructor arguments and state dict ([`lm_from_lrnnx`]); every mixer discretized once through
//! [`crate::export::export`], attention and MLP matrices transposed into the stepping layout.
//! Written to a file by [`lm_to_blob`] and read back by [`read_lm_blob`].
//!
//! Blob layout (version 1; little-endian 32-bit words, so every weight is 4-byte aligned):
//!
//! ```text
//! offset  size  field
//!      0     8  magic b"LRNXLMOD"
//!      8     4  u32 version (1)
//!     12     4  u32 d_model
//!     16     4  u32 vocab_size (unpadded)
//!     20     4  u32 padded vocabulary V
//!     24     4  u32 tied head (0/1)
//!     28     4  u32 norm kind (0 RMSNorm, 1 LayerNorm)
//!     32     4  f32 norm ε
//!     36     4  u32 number of blocks n
//!     40        f32 model weights (E, then Wᵀ unless tied), then norm_f's weights
//!               n block records:
//!                 u32 mixer tag, then its body:
//!                   1 layer      u32 byte length m (a multiple of 4), then m bytes: a layer blob
//!                                (crate::export's LRNXCORE layout)
//!                   2 attention  u32 n_heads, u32 n_kv_heads, u32 head_dim, f32 scale,
//!                                u32 qkv bias (0/1), u32 out bias (0/1), u32 max_context,
//!                                then the attention weights
//!                 the norm's weights
//!                 u32 MLP hidden width (0: no MLP), then norm2's weights and the MLP weights
//! ```
//!
//! Reading never panics: a short, truncated, padded or corrupt file is refused with an
//! [`ExportError::Blob`] that names the field and byte offset.

use lrnnx_core::lm::{
    Attention, AttentionConfig, GatedMlp, LanguageModel, LmBlock, LmConfig as CoreLmConfig, Mixer,
    MlpConfig,
};
use lrnnx_core::{CoreLayer, Norm, NormConfig, NormKind, ParamSource};

use crate::blob::{push_f32s, push_u32, u32_of, Cursor};
use lrnnx_train::lm::{mixer_class, LanguageModel as TrainLm, LmConfig};
use lrnnx_train::Params;
use serde_json::Value;

use crate::export::{export, parse_blob, to_blob, ExportError, TrainedParams};

/// A core language model that owns its weights.
pub type OwnedLm = LanguageModel<Vec<f32>, Vec<LmBlock<Vec<f32>>>>;

/// The language-model blob's first 8 bytes.
pub const LM_MAGIC: [u8; 8] = *b"LRNXLMOD";
/// The language-model blob version written by [`lm_to_blob`].
pub const LM_VERSION: u32 = 1;

type Result<T> = std::result::Result<T, ExportError>;

/// Exports a trained language model to the core; every attention mixer gets a key/value cache
/// of `max_context` tokens.
pub fn export_lm(model: &TrainLm, max_context: usize) -> Result<OwnedLm> {
    let mut params = Params::new();
    for (name, var) in model.vars() {
        params
            .insert(&name, var.as_tensor())
            .map_err(|e| ExportError::Param {
                name: name.clone(),
                reason: e.to_string(),
            })?;
    }
    lm_from_params(model.config(), &params, max_context)
}

/// Builds the core model from lrnnx's `LRNNLMHeadModel` constructor arguments (`kwargs`, read
/// by [`LmConfig::from_lrnnx`]) and its state dict under lrnnx's names.
pub fn lm_from_lrnnx(kwargs: &Value, params: &Params, max_context: usize) -> Result<OwnedLm> {
    let config = LmConfig::from_lrnnx(kwargs).map_err(|e| ExportError::Blob(e.to_string()))?;
    lm_from_params(&config, params, max_context)
}

/// A named tensor's f32 values after checking its shape (the error names the tensor).
fn tensor<'p>(src: &'p TrainedParams, name: &str, shape: &[usize]) -> Result<&'p [f32]> {
    let t = src.tensor(name).ok_or_else(|| ExportError::Param {
        name: name.to_owned(),
        reason: "missing".into(),
    })?;
    if t.shape != shape {
        return Err(ExportError::Param {
            name: name.to_owned(),
            reason: format!("shape {:?}, expected {shape:?}", t.shape),
        });
    }
    Ok(t.data)
}

/// The attention configuration from lrnnx's MHA arguments (as `lrnnx_train::lm::Mha`).
fn attention_config(kw: &Value, d: usize, max_context: usize) -> Result<AttentionConfig> {
    let bad = |m: String| ExportError::Blob(format!("attention: {m}"));
    let int = |name: &str, default: Option<usize>| -> Result<usize> {
        match kw.get(name) {
            None | Some(Value::Null) => default.ok_or_else(|| bad(format!("`{name}` is missing"))),
            Some(v) => v
                .as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| bad(format!("`{name}`: expected a non-negative integer"))),
        }
    };
    let flag = |name: &str, default: bool| -> Result<bool> {
        match kw.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("`{name}`: expected true or false"))),
        }
    };
    let n_heads = int("num_heads", None)?;
    if n_heads == 0 {
        return Err(bad("`num_heads` must be positive".into()));
    }
    let n_kv_heads = int("num_heads_kv", Some(n_heads))?;
    let head_dim = int("head_dim", Some(d / n_heads))?;
    for name in ["mlp_dim", "d_conv", "rotary_emb_dim"] {
        if int(name, Some(0))? != 0 {
            return Err(bad(format!("`{name}` > 0 is not supported")));
        }
    }
    if !flag("causal", false)? {
        return Err(bad(
            "only a causal MHA (`causal: true`) can be stepped in a language model".into(),
        ));
    }
    let scale = match kw.get("softmax_scale") {
        None | Some(Value::Null) => 1.0 / (head_dim as f64).sqrt(),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| bad("`softmax_scale`: expected a number".into()))?,
    };
    Ok(AttentionConfig {
        d_model: d,
        n_heads,
        n_kv_heads,
        head_dim,
        scale: scale as f32,
        qkv_bias: flag("qkv_proj_bias", true)?,
        out_bias: flag("out_proj_bias", true)?,
        max_context,
    })
}

/// The core model from a configuration and every parameter under lrnnx's state-dict names.
pub fn lm_from_params(config: &LmConfig, params: &Params, max_context: usize) -> Result<OwnedLm> {
    let src = TrainedParams::new(params)?;
    let (d, v) = (config.d_model, config.padded_vocab());
    let kind = if config.rms_norm {
        NormKind::RmsNorm
    } else {
        NormKind::LayerNorm
    };
    let norm_cfg = NormConfig {
        d,
        kind,
        eps: config.norm_epsilon as f32,
    };
    let norm = |prefix: &str| -> Result<Norm<Vec<f32>>> {
        let mut w = tensor(&src, &format!("{prefix}.weight"), &[d])?.to_vec();
        if kind == NormKind::LayerNorm {
            w.extend_from_slice(tensor(&src, &format!("{prefix}.bias"), &[d])?);
        }
        Ok(Norm::from_weights(norm_cfg, w)?)
    };
    let emb = tensor(&src, "backbone.embedding.weight", &[v, d])?;
    let mut weights = emb.to_vec();
    if config.tie_embeddings {
        if let Some(h) = src.tensor("lm_head.weight") {
            if h.data != emb {
                return Err(ExportError::Param {
                    name: "lm_head.weight".into(),
                    reason: "`tie_embeddings` is true but it differs from the embedding".into(),
                });
            }
        }
    } else {
        let head = tensor(&src, "lm_head.weight", &[v, d])?;
        let mut t = vec![0.0f32; v * d];
        lrnnx_core::linalg::transpose_into(&mut t, head, v, d);
        weights.extend_from_slice(&t);
    }
    let core_config = CoreLmConfig {
        d_model: d,
        vocab_size: config.vocab_size,
        padded_vocab: v,
        tied: config.tie_embeddings,
    };
    let mut blocks = Vec::with_capacity(config.n_layer);
    for (i, ty) in config.mixer_types.iter().enumerate() {
        let p = format!("backbone.layers.{i}");
        let ctx = |e: ExportError| ExportError::Blob(format!("block {i} ({ty}): {e}"));
        let (class, kw) = mixer_class(config, ty).map_err(|e| ExportError::Blob(e.to_string()))?;
        let mixer = if ty == "attn" {
            let ac = attention_config(&kw, d, max_context).map_err(ctx)?;
            let qw = ac
                .n_heads
                .checked_mul(ac.head_dim)
                .ok_or_else(|| ctx(ExportError::Blob("num_heads · head_dim overflows".into())))?;
            let qkv = ac.qkv_width();
            let in_w = tensor(&src, &format!("{p}.mixer.in_proj.weight"), &[qkv, d])?;
            let in_b = match ac.qkv_bias {
                true => Some(tensor(&src, &format!("{p}.mixer.in_proj.bias"), &[qkv])?),
                false => None,
            };
            let out_w = tensor(&src, &format!("{p}.mixer.out_proj.weight"), &[d, qw])?;
            let out_b = match ac.out_bias {
                true => Some(tensor(&src, &format!("{p}.mixer.out_proj.bias"), &[d])?),
                false => None,
            };
            let w = vec![0.0f32; ac.weights_len()];
            Mixer::Attention(Attention::from_torch(ac, in_w, in_b, out_w, out_b, w)?)
        } else {
            let prefix = format!("{p}.mixer.");
            let mut mp = Params::new();
            for (k, var) in params.vars() {
                if let Some(key) = k.strip_prefix(&prefix) {
                    mp.insert(key, var.as_tensor())
                        .map_err(|e| ExportError::Param {
                            name: k.clone(),
                            reason: e.to_string(),
                        })?;
                }
            }
            Mixer::Layer(export(class, &kw, &mp).map_err(ctx)?)
        };
        let mlp = if config.d_intermediate > 0 {
            let hidden = config.mlp_hidden();
            let fc1 = tensor(&src, &format!("{p}.mlp.fc1.weight"), &[2 * hidden, d])?;
            let fc2 = tensor(&src, &format!("{p}.mlp.fc2.weight"), &[d, hidden])?;
            let mc = MlpConfig { d_model: d, hidden };
            let mlp = GatedMlp::from_torch(mc, fc1, fc2, vec![0.0; mc.weights_len()])?;
            Some((norm(&format!("{p}.norm2"))?, mlp))
        } else {
            None
        };
        blocks.push(LmBlock {
            norm: norm(&format!("{p}.norm"))?,
            mixer,
            mlp,
        });
    }
    Ok(LanguageModel::new(
        core_config,
        weights,
        norm("backbone.norm_f")?,
        blocks,
    )?)
}

/// The model as a blob (layout in the module doc).
pub fn lm_to_blob<W: AsRef<[f32]>, B: AsRef<[LmBlock<W>]>>(
    lm: &LanguageModel<W, B>,
) -> Result<Vec<u8>> {
    let c = lm.config();
    let nf = lm.norm_f().config();
    let mut out = Vec::new();
    out.extend_from_slice(&LM_MAGIC);
    push_u32(&mut out, LM_VERSION);
    push_u32(&mut out, u32_of(c.d_model, "d_model")?);
    push_u32(&mut out, u32_of(c.vocab_size, "vocab_size")?);
    push_u32(&mut out, u32_of(c.padded_vocab, "padded vocabulary")?);
    push_u32(&mut out, c.tied as u32);
    push_u32(&mut out, (nf.kind == NormKind::LayerNorm) as u32);
    push_u32(&mut out, nf.eps.to_bits());
    push_u32(&mut out, u32_of(lm.blocks().len(), "block count")?);
    push_f32s(&mut out, lm.weights());
    push_f32s(&mut out, lm.norm_f().weights());
    for b in lm.blocks() {
        match &b.mixer {
            Mixer::Layer(l) => {
                let blob = to_blob(l)?;
                push_u32(&mut out, 1);
                push_u32(&mut out, u32_of(blob.len(), "layer blob length")?);
                out.extend_from_slice(&blob);
            }
            Mixer::Attention(a) => {
                let ac = a.config();
                push_u32(&mut out, 2);
                push_u32(&mut out, u32_of(ac.n_heads, "n_heads")?);
                push_u32(&mut out, u32_of(ac.n_kv_heads, "n_kv_heads")?);
                push_u32(&mut out, u32_of(ac.head_dim, "head_dim")?);
                push_u32(&mut out, ac.scale.to_bits());
                push_u32(&mut out, ac.qkv_bias as u32);
                push_u32(&mut out, ac.out_bias as u32);
                push_u32(&mut out, u32_of(ac.max_context, "max_context")?);
                push_f32s(&mut out, a.weights());
            }
        }
        push_f32s(&mut out, b.norm.weights());
        match &b.mlp {
            None => push_u32(&mut out, 0),
            Some((n2, mlp)) => {
                push_u32(&mut out, u32_of(mlp.config().hidden, "MLP hidden width")?);
                push_f32s(&mut out, n2.weights());
                push_f32s(&mut out, mlp.weights());
            }
        }
    }
    Ok(out)
}

/// A cursor over the blob's words that reports where it ran out.
/// Reads a language-model blob (module doc) back; every part is checked by the core (sizes,
/// finiteness, widths), and errors name the field and byte offset.
pub fn read_lm_blob(blob: &[u8]) -> Result<OwnedLm> {
    let mut c = Cursor::new(blob);
    if c.bytes(8, "magic")? != LM_MAGIC {
        return Err(ExportError::Blob(
            "wrong magic (not an lrnnx language-model blob)".into(),
        ));
    }
    let version = c.u32("version")?;
    if version != LM_VERSION {
        return Err(ExportError::Blob(format!(
            "language-model blob version {version}; this reader knows {LM_VERSION}"
        )));
    }
    let d = c.u32("d_model")? as usize;
    let vocab_size = c.u32("vocab_size")? as usize;
    let padded_vocab = c.u32("padded vocabulary")? as usize;
    let tied = c.flag("tied flag")?;
    let kind = if c.flag("norm kind")? {
        NormKind::LayerNorm
    } else {
        NormKind::RmsNorm
    };
    let eps = f32::from_bits(c.u32("norm epsilon")?);
    let n = c.u32("block count")? as usize;
    let config = CoreLmConfig {
        d_model: d,
        vocab_size,
        padded_vocab,
        tied,
    };
    let norm_cfg = NormConfig { d, kind, eps };
    let at = c.at;
    let weights = c.f32s(config.weights_len(), "model weights")?;
    let core =
        |at: usize| move |e: lrnnx_core::Error| ExportError::Blob(format!("offset {at}: {e}"));
    let read_norm = |c: &mut Cursor, what: &str| -> Result<Norm<Vec<f32>>> {
        let at = c.at;
        let w = c.f32s(norm_cfg.weights_len(), what)?;
        Norm::from_weights(norm_cfg, w)
            .map_err(|e| ExportError::Blob(format!("{what} at offset {at}: {e}")))
    };
    let norm_f = read_norm(&mut c, "norm_f weights")?;
    // Each block takes at least 12 bytes: refuse absurd counts before reserving anything.
    if n > blob.len() / 12 {
        return Err(ExportError::Blob(format!(
            "{n} blocks cannot fit in {} bytes (corrupt)",
            blob.len()
        )));
    }
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let at = c.at;
        let ctx = |m: String| ExportError::Blob(format!("block {i} at offset {at}: {m}"));
        let mixer = match c.u32(&format!("block {i} mixer tag"))? {
            1 => {
                let len = c.u32("layer blob length")? as usize;
                let bytes = c.bytes(len, &format!("block {i} layer blob"))?;
                let view = parse_blob(bytes).map_err(|e| ctx(e.to_string()))?;
                Mixer::Layer(
                    CoreLayer::from_weights(view.config, view.weights())
                        .map_err(|e| ctx(e.to_string()))?,
                )
            }
            2 => {
                let ac = AttentionConfig {
                    d_model: d,
                    n_heads: c.u32("attention n_heads")? as usize,
                    n_kv_heads: c.u32("attention n_kv_heads")? as usize,
                    head_dim: c.u32("attention head_dim")? as usize,
                    scale: f32::from_bits(c.u32("attention scale")?),
                    qkv_bias: c.flag("attention qkv bias flag")?,
                    out_bias: c.flag("attention out bias flag")?,
                    max_context: c.u32("attention max_context")? as usize,
                };
                let w = c.f32s(ac.weights_len(), &format!("block {i} attention weights"))?;
                Mixer::Attention(Attention::from_weights(ac, w).map_err(|e| ctx(e.to_string()))?)
            }
            t => return Err(ctx(format!("mixer tag {t} is unknown"))),
        };
        let norm = read_norm(&mut c, &format!("block {i} norm weights"))?;
        let hidden = c.u32(&format!("block {i} MLP width"))? as usize;
        let mlp = if hidden > 0 {
            let n2 = read_norm(&mut c, &format!("block {i} norm2 weights"))?;
            let mc = MlpConfig { d_model: d, hidden };
            let at = c.at;
            let w = c.f32s(mc.weights_len(), &format!("block {i} MLP weights"))?;
            Some((n2, GatedMlp::from_weights(mc, w).map_err(core(at))?))
        } else {
            None
        };
        blocks.push(LmBlock { norm, mixer, mlp });
    }
    if c.at != blob.len() {
        return Err(ExportError::Blob(format!(
            "{} bytes after the last block (corrupt)",
            blob.len() - c.at
        )));
    }
    LanguageModel::new(config, weights, norm_f, blocks).map_err(core(at))
}
