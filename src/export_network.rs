//! Export of a trained [`lrnnx_train::network::Network`] to the core's
//! [`lrnnx_core::Network`], stage by stage (layers discretized once through
//! [`crate::export::export`]), as a file ([`network_to_blob`], read back by
//! [`read_network_blob`]) and as Rust source for firmware ([`network_to_rust_source`]).
//!
//! Blob layout (version 2; little-endian 32-bit words, so every weight is 4-byte aligned):
//!
//! ```text
//! offset  size  field
//!      0     8  magic b"LRNXNETW"
//!      8     4  u32 version (2; version 1 files, without the latency word, are read too)
//!     12     4  u32 input width
//!     16     4  f32 sample rate in Hz (0: not given)
//!     20     4  u32 latency in steps: the output lags the input by this much (0 for v1;
//!               at most MAX_LATENCY)
//!     24     4  u32 number of stages S
//!     28        S stage records, each a u32 tag then its body:
//!               1 dense       u32 d_in, u32 d_out, u32 bias (0/1), then the weights (Wᵀ, b) as f32
//!               2 layer       u32 byte length n (a multiple of 4), then n bytes: a layer blob
//!                             (crate::export's LRNXCORE layout)
//!               3 activation  u32 code (0 GELU, 1 SiLU, 2 tanh, 3 ReLU, 4 |x|)
//!               4 glu, 5 residual begin, 6 residual end, 7 gate end: no body
//!               8 downsample  u32 factor, u32 pooling (0 concat, 1 mean, 2 last)
//!               9 upsample    u32 factor, u32 unpooling (0 split, 1 hold)
//!              10 norm        u32 kind (0 LayerNorm, 1 RMSNorm), u32 d, f32 eps, then the
//!                             weights (w, then b for LayerNorm) as f32
//! ```
//!
//! Reading never panics: a short, truncated, padded or corrupt file is refused with an
//! [`ExportError::Blob`] that names the stage and byte offset.

use lrnnx_core::{
    Activation, CoreLayer, Dense, DenseConfig, Network, Norm, NormConfig, NormKind, Pooling, Stage,
    Unpooling,
};
use lrnnx_train::network::{self as train_net, StageSpec};

use crate::blob::{push_u32, u32_of, Cursor};
use crate::export::{export, parse_blob, to_blob, to_rust_source, ExportError};

/// The largest latency a blob may record: 2^24 steps (17 minutes of 16 kHz audio, 16 times the
/// largest rate change a trained network may make). A larger word is taken as corruption, so a
/// player never pads or buffers an absurd number of steps on a corrupt file's say-so.
pub const MAX_LATENCY: usize = 1 << 24;

/// A core network that owns its weights.
pub type OwnedNetwork = Network<Vec<f32>, Vec<Stage<Vec<f32>>>>;

/// The network blob's first 8 bytes.
pub const NETWORK_MAGIC: [u8; 8] = *b"LRNXNETW";
/// The network blob version written by [`network_to_blob`].
pub const NETWORK_VERSION: u32 = 2;

type Result<T> = std::result::Result<T, ExportError>;

const NORM_KINDS: [NormKind; 2] = [NormKind::LayerNorm, NormKind::RmsNorm];
const POOLINGS: [Pooling; 3] = [Pooling::Concat, Pooling::Mean, Pooling::Last];
const UNPOOLINGS: [Unpooling; 2] = [Unpooling::Split, Unpooling::Hold];

const ACTIVATIONS: [Activation; 5] = [
    Activation::Gelu,
    Activation::Silu,
    Activation::Tanh,
    Activation::Relu,
    Activation::Abs,
];

fn activation_to_core(a: train_net::Activation) -> Activation {
    match a {
        train_net::Activation::Gelu => Activation::Gelu,
        train_net::Activation::Silu => Activation::Silu,
        train_net::Activation::Tanh => Activation::Tanh,
        train_net::Activation::Relu => Activation::Relu,
        train_net::Activation::Abs => Activation::Abs,
    }
}

/// Reads a candle tensor as f32 values.
fn values(t: &lrnnx_train::candle_core::Tensor, name: &str) -> Result<Vec<f32>> {
    t.to_dtype(lrnnx_train::candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| ExportError::Param {
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

/// Exports a trained network to the core, every layer discretized once.
pub fn export_network(net: &train_net::Network) -> Result<OwnedNetwork> {
    let mut stages = Vec::with_capacity(net.spec().len());
    for (i, spec) in net.spec().iter().enumerate() {
        let missing = || ExportError::Blob(format!("stage {i}: no parameters"));
        stages.push(match spec {
            StageSpec::Dense { d_in, d_out, bias } => {
                let (w, b) = net.dense_params(i).ok_or_else(missing)?;
                let w = values(&w, &format!("stages.{i}.weight"))?;
                let b = match b {
                    Some(b) => Some(values(&b, &format!("stages.{i}.bias"))?),
                    None => None,
                };
                let config = DenseConfig {
                    d_in: *d_in,
                    d_out: *d_out,
                    bias: *bias,
                };
                Stage::Dense(Dense::from_torch(
                    config,
                    &w,
                    b.as_deref(),
                    vec![0.0; config.weights_len()],
                )?)
            }
            StageSpec::Layer { class, kwargs } => {
                let params = net.layer_params(i).ok_or_else(missing)?;
                Stage::Layer(export(class, kwargs, params)?)
            }
            StageSpec::Bidirectional(b) => {
                return Err(ExportError::NotCausal(format!(
                    "network stage {i}: {}",
                    crate::export::not_causal(&b.to_json())
                )))
            }
            StageSpec::Activation(a) => Stage::Activation(activation_to_core(*a)),
            StageSpec::Glu => Stage::Glu,
            StageSpec::Norm { kind, d, eps } => {
                let (w, b) = net.norm_params(i).ok_or_else(missing)?;
                let w = values(&w, &format!("stages.{i}.weight"))?;
                let b = match b {
                    Some(b) => Some(values(&b, &format!("stages.{i}.bias"))?),
                    None => None,
                };
                let config = NormConfig {
                    kind: *kind,
                    d: *d,
                    eps: *eps as f32,
                };
                Stage::Norm(Norm::from_torch(
                    config,
                    &w,
                    b.as_deref(),
                    vec![0.0; config.weights_len()],
                )?)
            }
            StageSpec::ResidualBegin => Stage::ResidualBegin,
            StageSpec::ResidualEnd => Stage::ResidualEnd,
            StageSpec::GateEnd => Stage::GateEnd,
            StageSpec::Downsample { factor, pooling } => Stage::Downsample {
                factor: *factor,
                pooling: *pooling,
            },
            StageSpec::Upsample { factor, unpooling } => Stage::Upsample {
                factor: *factor,
                unpooling: *unpooling,
            },
        });
    }
    Ok(Network::new(net.d_in(), stages)?)
}

/// The network as a blob (layout in the module doc); `sample_rate` in Hz (0: not given),
/// latency 0.
pub fn network_to_blob<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>>(
    net: &Network<W, S>,
    sample_rate: f32,
) -> Result<Vec<u8>> {
    network_to_blob_with_latency(net, sample_rate, 0)
}

/// [`network_to_blob`] recording that the output lags the input by `latency` steps (a
/// frame-based denoiser's `frame − 1`), so that a player can align it.
pub fn network_to_blob_with_latency<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>>(
    net: &Network<W, S>,
    sample_rate: f32,
    latency: usize,
) -> Result<Vec<u8>> {
    use lrnnx_core::Layer;
    if latency > MAX_LATENCY {
        return Err(ExportError::Blob(format!(
            "latency {latency} exceeds MAX_LATENCY ({MAX_LATENCY} steps)"
        )));
    }
    let mut out = Vec::new();
    out.extend_from_slice(&NETWORK_MAGIC);
    push_u32(&mut out, NETWORK_VERSION);
    push_u32(&mut out, u32_of(net.d_input(), "input width")?);
    push_u32(&mut out, sample_rate.to_bits());
    push_u32(&mut out, u32_of(latency, "latency")?);
    push_u32(&mut out, u32_of(net.stages().len(), "stage count")?);
    for stage in net.stages() {
        match stage {
            Stage::Dense(d) => {
                let c = d.config();
                push_u32(&mut out, 1);
                push_u32(&mut out, u32_of(c.d_in, "dense d_in")?);
                push_u32(&mut out, u32_of(c.d_out, "dense d_out")?);
                push_u32(&mut out, c.bias as u32);
                for v in d.weights() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Stage::Layer(l) => {
                let blob = to_blob(l)?;
                push_u32(&mut out, 2);
                push_u32(&mut out, u32_of(blob.len(), "layer blob length")?);
                out.extend_from_slice(&blob);
            }
            Stage::Activation(a) => {
                push_u32(&mut out, 3);
                let code = ACTIVATIONS.iter().position(|x| x == a).unwrap_or(0);
                push_u32(&mut out, code as u32);
            }
            Stage::Glu => push_u32(&mut out, 4),
            Stage::Norm(n) => {
                let c = n.config();
                push_u32(&mut out, 10);
                let code = NORM_KINDS.iter().position(|k| *k == c.kind).unwrap_or(0);
                push_u32(&mut out, code as u32);
                push_u32(&mut out, u32_of(c.d, "norm d")?);
                push_u32(&mut out, c.eps.to_bits());
                for v in n.weights() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Stage::ResidualBegin => push_u32(&mut out, 5),
            Stage::ResidualEnd => push_u32(&mut out, 6),
            Stage::GateEnd => push_u32(&mut out, 7),
            Stage::Downsample { factor, pooling } => {
                push_u32(&mut out, 8);
                push_u32(&mut out, u32_of(*factor, "downsample factor")?);
                let code = POOLINGS.iter().position(|p| p == pooling).unwrap_or(0);
                push_u32(&mut out, code as u32);
            }
            Stage::Upsample { factor, unpooling } => {
                push_u32(&mut out, 9);
                push_u32(&mut out, u32_of(*factor, "upsample factor")?);
                let code = UNPOOLINGS.iter().position(|u| u == unpooling).unwrap_or(0);
                push_u32(&mut out, code as u32);
            }
        }
    }
    Ok(out)
}

/// A network read from a blob, with the sample rate it was trained at (0: not given).
pub struct NetworkFile {
    /// The network, owning its weights.
    pub network: OwnedNetwork,
    /// Sample rate in Hz (0: not given).
    pub sample_rate: f32,
    /// Steps the output lags the input by (0 in version 1 files).
    pub latency: usize,
}

/// Reads a network blob (module doc) back; every stage is checked by the core (lengths,
/// finiteness, widths, residual brackets).
pub fn read_network_blob(blob: &[u8]) -> Result<NetworkFile> {
    let mut c = Cursor::new(blob);
    if c.bytes(8, "magic")? != NETWORK_MAGIC {
        return Err(ExportError::Blob(
            "wrong magic (not an lrnnx network blob)".into(),
        ));
    }
    let version = c.u32("version")?;
    if !(1..=NETWORK_VERSION).contains(&version) {
        return Err(ExportError::Blob(format!(
            "network blob version {version}; this reader knows 1 to {NETWORK_VERSION}"
        )));
    }
    let d_in = c.u32("input width")? as usize;
    let sample_rate = f32::from_bits(c.u32("sample rate")?);
    if !(sample_rate.is_finite() && sample_rate >= 0.0) {
        return Err(ExportError::Blob(format!(
            "sample rate {sample_rate} is invalid"
        )));
    }
    let latency = if version >= 2 {
        c.u32("latency")? as usize
    } else {
        0
    };
    if latency > MAX_LATENCY {
        return Err(ExportError::Blob(format!(
            "latency {latency} exceeds MAX_LATENCY ({MAX_LATENCY} steps; corrupt)"
        )));
    }
    let n = c.u32("stage count")? as usize;
    // Each stage takes at least 4 bytes: refuse absurd counts before reserving anything.
    if n > blob.len() / 4 {
        return Err(ExportError::Blob(format!(
            "{n} stages cannot fit in {} bytes (corrupt)",
            blob.len()
        )));
    }
    let mut stages = Vec::with_capacity(n);
    for i in 0..n {
        let at = c.at;
        let ctx = |m: String| ExportError::Blob(format!("stage {i} at offset {at}: {m}"));
        let tag = c.u32(&format!("stage {i} tag"))?;
        stages.push(match tag {
            1 => {
                let d_in = c.u32("dense d_in")? as usize;
                let d_out = c.u32("dense d_out")? as usize;
                let bias = match c.u32("dense bias flag")? {
                    0 => false,
                    1 => true,
                    v => return Err(ctx(format!("bias flag {v} is not 0 or 1"))),
                };
                let config = DenseConfig { d_in, d_out, bias };
                let len = d_in
                    .checked_mul(d_out)
                    .and_then(|n| n.checked_add(if bias { d_out } else { 0 }))
                    .and_then(|n| n.checked_mul(4))
                    .ok_or_else(|| ctx("dense sizes overflow".into()))?;
                let bytes = c.bytes(len, &format!("stage {i} dense weights"))?;
                let w: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Stage::Dense(Dense::from_weights(config, w).map_err(|e| ctx(e.to_string()))?)
            }
            2 => {
                let len = c.u32("layer blob length")? as usize;
                let bytes = c.bytes(len, &format!("stage {i} layer blob"))?;
                let view = parse_blob(bytes).map_err(|e| ctx(e.to_string()))?;
                Stage::Layer(
                    CoreLayer::from_weights(view.config, view.weights())
                        .map_err(|e| ctx(e.to_string()))?,
                )
            }
            3 => {
                let code = c.u32("activation code")?;
                Stage::Activation(
                    *ACTIVATIONS
                        .get(code as usize)
                        .ok_or_else(|| ctx(format!("activation code {code} is unknown")))?,
                )
            }
            4 => Stage::Glu,
            5 => Stage::ResidualBegin,
            6 => Stage::ResidualEnd,
            7 => Stage::GateEnd,
            8 => {
                let factor = c.u32("downsample factor")? as usize;
                let code = c.u32("pooling code")?;
                Stage::Downsample {
                    factor,
                    pooling: *POOLINGS
                        .get(code as usize)
                        .ok_or_else(|| ctx(format!("pooling code {code} is unknown")))?,
                }
            }
            9 => {
                let factor = c.u32("upsample factor")? as usize;
                let code = c.u32("unpooling code")?;
                Stage::Upsample {
                    factor,
                    unpooling: *UNPOOLINGS
                        .get(code as usize)
                        .ok_or_else(|| ctx(format!("unpooling code {code} is unknown")))?,
                }
            }
            10 => {
                let code = c.u32("norm kind")?;
                let kind = *NORM_KINDS
                    .get(code as usize)
                    .ok_or_else(|| ctx(format!("norm kind {code} is unknown")))?;
                let d = c.u32("norm d")? as usize;
                let eps = f32::from_bits(c.u32("norm eps")?);
                let config = NormConfig { kind, d, eps };
                let len = config
                    .weights_len()
                    .checked_mul(4)
                    .filter(|_| d <= blob.len())
                    .ok_or_else(|| ctx("norm sizes overflow".into()))?;
                let bytes = c.bytes(len, &format!("stage {i} norm weights"))?;
                let w: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Stage::Norm(Norm::from_weights(config, w).map_err(|e| ctx(e.to_string()))?)
            }
            t => return Err(ctx(format!("stage tag {t} is unknown"))),
        });
    }
    if c.at != blob.len() {
        return Err(ExportError::Blob(format!(
            "{} bytes after the last stage (corrupt)",
            blob.len() - c.at
        )));
    }
    Ok(NetworkFile {
        network: Network::new(d_in, stages)?,
        sample_rate,
        latency,
    })
}

/// The network as Rust source for a `no_std` crate depending on `lrnnx_core`: one `static`
/// weight array per stage (`<NAME>_S<i>_WEIGHTS`), `<NAME>_D_IN`, `<NAME>_SAMPLE_RATE`, and
/// `pub fn <name>_network()` building the network over those statics without a copy.
/// `name` must be an upper-case identifier.
pub fn network_to_rust_source<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>>(
    net: &Network<W, S>,
    name: &str,
    sample_rate: f32,
) -> Result<String> {
    use lrnnx_core::Layer;
    let mut s = String::from(
        "// Generated by lrnnx::export_network::network_to_rust_source. Do not edit.\n\n",
    );
    let mut exprs = Vec::new();
    for (i, stage) in net.stages().iter().enumerate() {
        let id = format!("{name}_S{i}");
        exprs.push(match stage {
            Stage::Dense(d) => {
                let c = d.config();
                s.push_str(&format!(
                    "/// Weights of stage {i} (dense {} → {}): Wᵀ then b.\n\
                     #[allow(clippy::approx_constant, clippy::excessive_precision)]\n\
                     pub static {id}_WEIGHTS: [f32; {}] = [",
                    c.d_in,
                    c.d_out,
                    d.weights().len()
                ));
                for (k, v) in d.weights().iter().enumerate() {
                    s.push_str(if k % 8 == 0 { "\n    " } else { " " });
                    s.push_str(&format!("{v:?},"));
                }
                s.push_str("\n];\n\n");
                format!(
                    "lrnnx_core::Stage::Dense(lrnnx_core::Dense::from_weights(\
                     lrnnx_core::DenseConfig {{ d_in: {}, d_out: {}, bias: {} }}, &{id}_WEIGHTS[..])?)",
                    c.d_in, c.d_out, c.bias
                )
            }
            Stage::Layer(l) => {
                s.push_str(&to_rust_source(l, &id)?);
                s.push('\n');
                let ty = l.config().layer_name();
                format!(
                    "lrnnx_core::Stage::Layer(lrnnx_core::CoreLayer::{ty}(\
                     lrnnx_core::{ty}::from_weights({id}_CONFIG, &{id}_WEIGHTS[..])?))"
                )
            }
            Stage::Activation(a) => format!("lrnnx_core::Stage::Activation(lrnnx_core::Activation::{a:?})"),
            Stage::Norm(n) => {
                let c = n.config();
                s.push_str(&format!(
                    "/// Weights of stage {i} ({:?}, d = {}): w{}.\n\
                     #[allow(clippy::approx_constant, clippy::excessive_precision)]\n\
                     pub static {id}_WEIGHTS: [f32; {}] = [",
                    c.kind,
                    c.d,
                    if c.kind == NormKind::LayerNorm { " then b" } else { "" },
                    n.weights().len()
                ));
                for (k, v) in n.weights().iter().enumerate() {
                    s.push_str(if k % 8 == 0 { "\n    " } else { " " });
                    s.push_str(&format!("{v:?},"));
                }
                s.push_str("\n];\n\n");
                format!(
                    "lrnnx_core::Stage::Norm(lrnnx_core::Norm::from_weights(\
                     lrnnx_core::NormConfig {{ kind: lrnnx_core::NormKind::{:?}, d: {}, eps: {:?} }}, \
                     &{id}_WEIGHTS[..])?)",
                    c.kind, c.d, c.eps
                )
            }
            Stage::Glu => "lrnnx_core::Stage::Glu".into(),
            Stage::ResidualBegin => "lrnnx_core::Stage::ResidualBegin".into(),
            Stage::ResidualEnd => "lrnnx_core::Stage::ResidualEnd".into(),
            Stage::GateEnd => "lrnnx_core::Stage::GateEnd".into(),
            Stage::Downsample { factor, pooling } => format!(
                "lrnnx_core::Stage::Downsample {{ factor: {factor}, pooling: lrnnx_core::Pooling::{pooling:?} }}"
            ),
            Stage::Upsample { factor, unpooling } => format!(
                "lrnnx_core::Stage::Upsample {{ factor: {factor}, unpooling: lrnnx_core::Unpooling::{unpooling:?} }}"
            ),
        });
    }
    let n = exprs.len();
    let lower = name.to_ascii_lowercase();
    s.push_str(&format!(
        "/// Input width of `{name}`.\npub const {name}_D_IN: usize = {};\n\
         /// Sample rate `{name}` was trained at, in Hz (0: not given).\n\
         pub const {name}_SAMPLE_RATE: f32 = {sample_rate:?};\n\n\
         /// The network `{name}` over the weights above (no copy).\n\
         pub fn {lower}_network() -> lrnnx_core::Result<\n    \
         lrnnx_core::Network<&'static [f32], [lrnnx_core::Stage<&'static [f32]>; {n}]>,\n> {{\n    \
         lrnnx_core::Network::new(\n        {name}_D_IN,\n        [\n",
        net.d_input()
    ));
    for e in exprs {
        s.push_str(&format!("            {e},\n"));
    }
    s.push_str("        ],\n    )\n}\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrnnx_core::Layer;
    use lrnnx_train::candle_core::{Device, Tensor};
    use serde_json::json;

    fn spec() -> Vec<StageSpec> {
        vec![
            StageSpec::ResidualBegin,
            StageSpec::Dense {
                d_in: 1,
                d_out: 4,
                bias: true,
            },
            StageSpec::ResidualBegin,
            StageSpec::Layer {
                class: "LRU".into(),
                kwargs: json!({"d_model": 4, "d_state": 6}),
            },
            StageSpec::Activation(train_net::Activation::Tanh),
            StageSpec::Dense {
                d_in: 4,
                d_out: 8,
                bias: true,
            },
            StageSpec::Glu,
            StageSpec::ResidualEnd,
            StageSpec::Layer {
                class: "lrnnx.models.lti.s5.S5".into(),
                kwargs: json!({"d_model": 4, "d_state": 4, "discretization": "zoh"}),
            },
            StageSpec::Activation(train_net::Activation::Silu),
            StageSpec::Dense {
                d_in: 4,
                d_out: 1,
                bias: false,
            },
            StageSpec::ResidualEnd,
        ]
    }

    /// Exported core network stepped sample by sample = the training network's parallel
    /// forward; the blob round trip is bit-exact.
    #[test]
    fn export_steps_like_the_parallel_forward_and_round_trips() {
        let dev = Device::Cpu;
        let net = train_net::Network::new(&spec(), 1, 3, &dev).unwrap();
        let len = 300;
        let xs: Vec<f32> = (0..len).map(|t| ((t * t) as f32 * 0.013).sin()).collect();
        let x = Tensor::from_vec(xs.clone(), (1, len, 1), &dev).unwrap();
        let want: Vec<f32> = net
            .forward(&x, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let core = export_network(&net).unwrap();
        let blob = network_to_blob(&core, 16000.0).unwrap();
        let back = read_network_blob(&blob).unwrap();
        assert_eq!(back.sample_rate, 16000.0);
        assert_eq!(network_to_blob(&back.network, 16000.0).unwrap(), blob);
        let mut st = vec![0.0; core.state_len()];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (t, (x, w)) in xs.iter().zip(&want).enumerate() {
            let mut y = [0.0];
            back.network.step(&mut st, &[*x], &mut y).unwrap();
            assert!(
                (y[0] - w).abs() <= 1e-5 * scale + 1e-6,
                "t={t}: {} vs {w}",
                y[0]
            );
        }
    }

    /// A U-Net-like multi-rate network (strided-convolution encoder, nested mean/hold part,
    /// transposed-convolution decoder, skip across) with event-driven S5 layers at two rates:
    /// the exported network stepped event by event with irregular time steps equals the
    /// training network's parallel forward (padding, block sums of the time steps and the
    /// causal k − 1 delay included), at a length that is not a multiple of the frames; and the
    /// blob round trip keeps the rate stages.
    #[test]
    fn multirate_event_network_steps_like_the_parallel_forward() {
        use lrnnx_core::EventLayer;
        use train_net::{Pooling, Unpooling};
        let s5 = |h: usize| StageSpec::Layer {
            class: "lrnnx.models.ltv.s5.S5".into(),
            kwargs: json!({"d_model": h, "d_state": 4}),
        };
        let spec = vec![
            StageSpec::Dense {
                d_in: 1,
                d_out: 2,
                bias: true,
            },
            s5(2),
            StageSpec::ResidualBegin,
            StageSpec::Downsample {
                factor: 4,
                pooling: Pooling::Concat,
            },
            StageSpec::Dense {
                d_in: 8,
                d_out: 4,
                bias: true,
            },
            s5(4),
            StageSpec::ResidualBegin,
            StageSpec::Downsample {
                factor: 3,
                pooling: Pooling::Mean,
            },
            s5(4),
            StageSpec::Norm {
                kind: train_net::NormKind::LayerNorm,
                d: 4,
                eps: 1e-5,
            },
            StageSpec::Upsample {
                factor: 3,
                unpooling: Unpooling::Hold,
            },
            StageSpec::GateEnd,
            StageSpec::Dense {
                d_in: 4,
                d_out: 8,
                bias: true,
            },
            StageSpec::Upsample {
                factor: 4,
                unpooling: Unpooling::Split,
            },
            StageSpec::ResidualEnd,
            StageSpec::Norm {
                kind: train_net::NormKind::RmsNorm,
                d: 2,
                eps: 1e-5,
            },
            StageSpec::Dense {
                d_in: 2,
                d_out: 1,
                bias: true,
            },
        ];
        assert_eq!(train_net::frame_multiple(&spec), 12);
        let back = train_net::spec_from_json(&train_net::spec_to_json(&spec)).unwrap();
        assert_eq!(back, spec);
        let dev = Device::Cpu;
        let net = train_net::Network::new(&spec, 1, 11, &dev).unwrap();
        // Norm weights away from their (1, 0) init, so that they are checked too.
        for (name, var) in net.vars() {
            if name.starts_with("stages.9.") || name.starts_with("stages.15.") {
                let n = var.elem_count();
                let v: Vec<f32> = (0..n).map(|k| 0.7 + 0.3 * k as f32).collect();
                var.set(&Tensor::from_vec(v, n, &dev).unwrap()).unwrap();
            }
        }
        let len = 101;
        let xs: Vec<f32> = (0..len).map(|t| ((t * t) as f32 * 0.013).sin()).collect();
        let dts: Vec<f32> = (0..len)
            .map(|t| 0.2 + 0.15 * ((t * 7 % 5) as f32))
            .collect();
        let x = Tensor::from_vec(xs.clone(), (1, len, 1), &dev).unwrap();
        let ts = Tensor::from_vec(dts.clone(), (1, len), &dev).unwrap();
        let want: Vec<f32> = net
            .forward(&x, Some(&ts))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(want.len(), len);
        let core = export_network(&net).unwrap();
        let blob = network_to_blob(&core, 0.0).unwrap();
        let back = read_network_blob(&blob).unwrap().network;
        assert_eq!(network_to_blob(&back, 0.0).unwrap(), blob);
        let src = network_to_rust_source(&back, "MR", 0.0).unwrap();
        assert!(
            src.contains("lrnnx_core::NormKind::LayerNorm, d: 4, eps: 1e-5"),
            "{src}"
        );
        assert!(src.contains("MR_S15_WEIGHTS: [f32; 2]"));
        let mut st = vec![0.0; back.state_len()];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (t, ((x, dt), w)) in xs.iter().zip(&dts).zip(&want).enumerate() {
            let mut y = [0.0];
            back.step_event(&mut st, &[*x], *dt, &mut y).unwrap();
            assert!(
                (y[0] - w).abs() <= 2e-5 * scale + 1e-6,
                "t={t}: {} vs {w}",
                y[0]
            );
        }
        // The same network without its upsample and decoder: a low-rate output of ⌊L/4⌋ frames,
        // each held by the stepped network until the next.
        let open: Vec<StageSpec> = [&spec[..2], &spec[3..6]].concat();
        let net = train_net::Network::new(&open, 1, 12, &dev).unwrap();
        let frames: Vec<Vec<f32>> = net
            .forward(&x, Some(&ts))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(frames.len(), len / 4);
        let core = export_network(&net).unwrap();
        assert_eq!(core.output_factor(), 4);
        let mut st = vec![0.0; core.state_len()];
        for (t, (x, dt)) in xs.iter().zip(&dts).enumerate() {
            let mut y = [0.0; 4];
            core.step_event(&mut st, &[*x], *dt, &mut y).unwrap();
            if (t + 1) % 4 == 0 {
                for (a, b) in y.iter().zip(&frames[(t + 1) / 4 - 1]) {
                    assert!((a - b).abs() <= 2e-5 * (1.0 + b.abs()), "t={t}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn corrupt_blobs_are_refused_with_offsets() {
        let net = train_net::Network::new(&spec(), 1, 3, &Device::Cpu).unwrap();
        let blob = network_to_blob(&export_network(&net).unwrap(), 0.0).unwrap();
        for cut in [
            0,
            7,
            12,
            23,
            24,
            30,
            100,
            blob.len() / 2,
            blob.len() - 4,
            blob.len() - 1,
        ] {
            let e = read_network_blob(&blob[..cut])
                .err()
                .expect("truncated blob accepted");
            assert!(
                e.to_string().contains("truncated") || e.to_string().contains("bytes"),
                "{cut}: {e}"
            );
        }
        let mut padded = blob.clone();
        padded.extend_from_slice(&[0; 4]);
        assert!(read_network_blob(&padded).is_err());
        // Every single-word corruption is an error or a valid network; never a panic.
        for at in (8..blob.len()).step_by(4) {
            let mut b = blob.clone();
            b[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
            let _ = read_network_blob(&b);
        }
        let mut nan = blob.clone();
        let w0 = 28 + 4 + 12; // first weight of stage 1 (dense), after stage 0's tag
        nan[w0..w0 + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(read_network_blob(&nan).is_err());
        // The latency word round-trips; a version 1 file (no latency word) reads as latency 0;
        // an unknown version is refused.
        let core = export_network(&net).unwrap();
        let with = network_to_blob_with_latency(&core, 8000.0, 15).unwrap();
        let f = read_network_blob(&with).unwrap();
        assert_eq!((f.latency, f.sample_rate), (15, 8000.0));
        let mut v1 = with.clone();
        v1.drain(20..24);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let f = read_network_blob(&v1).unwrap();
        assert_eq!((f.latency, f.sample_rate), (0, 8000.0));
        assert_eq!(
            network_to_blob(&f.network, 8000.0).unwrap()[28..],
            with[28..]
        );
        // A latency past MAX_LATENCY is refused on both sides, naming it.
        assert!(network_to_blob_with_latency(&core, 8000.0, MAX_LATENCY).is_ok());
        let e = network_to_blob_with_latency(&core, 8000.0, MAX_LATENCY + 1)
            .expect_err("latency past the limit written");
        assert!(e.to_string().contains("latency 16777217"), "{e}");
        let mut huge = with.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = read_network_blob(&huge)
            .err()
            .expect("latency 2^32 - 1 read");
        assert!(e.to_string().contains("latency 4294967295"), "{e}");
        let mut v3 = with;
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        let e = read_network_blob(&v3).err().expect("version 3 accepted");
        assert!(e.to_string().contains("version 3"), "{e}");
    }

    #[test]
    fn rust_source_names_every_stage() {
        let net = train_net::Network::new(&spec(), 1, 3, &Device::Cpu).unwrap();
        let src = network_to_rust_source(&export_network(&net).unwrap(), "DEN", 16000.0).unwrap();
        assert!(src.contains("pub fn den_network()"));
        assert!(src.contains("DEN_S1_WEIGHTS: [f32; 8]"));
        assert!(src.contains("lrnnx_core::Lru::from_weights(DEN_S3_CONFIG"));
        assert!(src.contains("[lrnnx_core::Stage<&'static [f32]>; 12]"));
    }

    /// A bidirectional stage, or a bidirectional layer exported alone, is refused with a
    /// clear error (not causal), naming the stage.
    #[test]
    fn bidirectional_is_refused() {
        let bi = json!({"layer": {"class": "LRU", "kwargs": {"d_model": 4, "d_state": 2}},
                        "merge": "sum", "shared": false});
        let mut stages = spec();
        stages.insert(
            2,
            StageSpec::Bidirectional(
                lrnnx_train::bidirectional::BidirectionalSpec::from_json(&bi).unwrap(),
            ),
        );
        let net = train_net::Network::new(&stages, 1, 3, &Device::Cpu).unwrap();
        let e = export_network(&net).err().unwrap();
        assert!(matches!(e, ExportError::NotCausal(_)), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("stage 2") && msg.contains("not causal"),
            "{msg}"
        );
        let params = net.layer_params(2).unwrap();
        let e = export(lrnnx_train::bidirectional::CLASS, &bi, params)
            .err()
            .unwrap();
        assert!(matches!(e, ExportError::NotCausal(_)), "{e}");
        assert!(e.to_string().contains("(LRU)"), "{e}");
    }
}
