//! A network: a sequence of stages (dense projections, lrnnx layers, pointwise functions, GLU
//! gates and residual connections) trained in parallel mode, and exported stage by stage to
//! `lrnnx_core::network::Network`, which steps it sample by sample.
//!
//! ```text
//! Dense { d_in, d_out, bias }   y = x Wᵀ + b               `stages.{i}.weight` (d_out, d_in), `stages.{i}.bias` (d_out)
//! Layer { class, kwargs }       y = layer(x)  (H → H)      `stages.{i}.<lrnnx key>`
//! Bidirectional(spec)           y = merge(f(x), R(b(R(x))))  (H → H)  `stages.{i}.fwd.<key>`, `.bwd.<key>`, `.proj.*`
//! Activation(f)                 y = f(x) elementwise
//! Glu                           y = a ⊙ σ(g),  x = [a | g] (2n → n)
//! Norm { kind, d, eps }         y = LayerNorm(x)·w + b | RMSNorm(x)·w   `stages.{i}.weight` (d), `stages.{i}.bias` (d, LayerNorm)
//! ResidualBegin                 remembers x
//! ResidualEnd                   y = x + the x remembered by the matching ResidualBegin
//! GateEnd                       y = r ⊙ σ(x), r the x remembered by the matching ResidualBegin (a mask)
//! Downsample { factor: k, pooling }   frame_m = pool(x_{km}, …, x_{km+k−1})  (L → L/k)
//! Upsample { factor: k, unpooling }   y_t = part ((t+1) mod k) of frame ⌊(t+1)/k⌋ − 1, 0 before
//! ```
//!
//! A bidirectional stage ([`crate::bidirectional`]) is not causal: it trains and evaluates on
//! whole sequences, and the export to the core refuses it. A network with a bidirectional
//! stage is never padded (its backward direction would read the padding): its input length
//! must be a multiple of [`frame_multiple`].
//!
//! Rate changes are the parallel form of `lrnnx_core::network`'s (its module doc, "Rates"):
//! `Concat` pooling reshapes `(B, L, w)` to `(B, L/k, k·w)` (with a dense stage after it, a
//! strided convolution, kernel = stride = k), `Mean` averages each block (sum · 1/k), `Last`
//! keeps its last step; `Split` unpooling reshapes `(B, n, k·w)` to `(B, n·k, w)`, `Hold`
//! repeats each frame k times, and both shift the result right by `k − 1` steps (zeros in
//! front), the least delay that keeps the network causal — so stepping the exported network
//! sample by sample gives the same numbers. Event layers in a low-rate part get each block's
//! summed time steps. The forward pads the input at the end to a multiple of
//! [`frame_multiple`] (zeros; time step 1 — causal stages never look at it) and cuts the
//! output back; a `Downsample` left open makes the output low-rate: `⌊L/F⌋` frames, `F` the
//! product of the open factors.
//!
//! Residual connections nest like brackets (rate changes too; a residual cannot span one). The widths are checked when the network is built:
//! every stage's input width is the previous stage's output width, a layer's `d_model` is the
//! width, a `Glu` input is even, and a `ResidualEnd` closes a bracket of the same width.
//! The spec is plain JSON ([`spec_to_json`], [`spec_from_json`]), so a network can be
//! described in a file and rebuilt from an export.

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use serde_json::{json, Value};

use crate::bidirectional::{BidirectionalSpec, CLASS as BIDIRECTIONAL};
use crate::init::{fresh, linear, Rng};
use crate::layer::{BuildError, TrainLayer, MAX_AXIS};

/// The most steps a frame may hold: the product of nested downsample factors, and their least
/// common multiple (every parallel forward pads its length to a multiple of it), at most 2^20.
pub const MAX_RATE: usize = 1 << 20;
pub use lrnnx_core::{NormKind, Pooling, Unpooling};

/// An elementwise function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, `x·(1 + erf(x/√2))/2`.
    Gelu,
    /// `x·σ(x)`.
    Silu,
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `|x|` (rectification: band signals to envelopes).
    Abs,
}

impl Activation {
    /// The name used in the JSON spec.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Abs => "abs",
        }
    }

    /// The activation called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Activation::Gelu,
            Activation::Silu,
            Activation::Tanh,
            Activation::Relu,
            Activation::Abs,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// `f(x)` elementwise.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => crate::pointwise::gelu(x),
            Activation::Silu => x * sigmoid(x)?,
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
            Activation::Abs => x.abs(),
        }
    }
}

/// The logistic sigmoid as `σ(x) = (1 + tanh(x/2))/2` (three cheap ops with simple
/// derivatives; exact in real arithmetic).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    ((x * 0.5)?.tanh()? + 1.0)? * 0.5
}

/// One stage of a network (module doc).
#[derive(Debug, Clone, PartialEq)]
pub enum StageSpec {
    /// `y = x Wᵀ + b`.
    Dense {
        /// Input width.
        d_in: usize,
        /// Output width.
        d_out: usize,
        /// Whether there is a bias `b`.
        bias: bool,
    },
    /// An lrnnx layer (`class` as for [`crate::build`], constructor arguments `kwargs`).
    Layer {
        /// lrnnx class name.
        class: String,
        /// Constructor arguments.
        kwargs: Value,
    },
    /// A layer run forward and backward in time, merged ([`crate::bidirectional`]; not
    /// causal).
    Bidirectional(BidirectionalSpec),
    /// An elementwise function.
    Activation(Activation),
    /// `a ⊙ σ(g)` over the two halves `[a | g]` of the input.
    Glu,
    /// A per-sample normalization over the features (`lrnnx_core::norm`'s equations):
    /// LayerNorm `(x − μ)/√(σ² + ε)·w + b` or RMSNorm `x/√(mean(x²) + ε)·w`; `w` starts at
    /// ones, `b` at zeros (PyTorch's init).
    Norm {
        /// LayerNorm or RMSNorm.
        kind: NormKind,
        /// Width (must equal the incoming width).
        d: usize,
        /// `ε` (PyTorch default 1e-5).
        eps: f64,
    },
    /// Opens a residual connection.
    ResidualBegin,
    /// Closes the innermost open residual connection: adds its input.
    ResidualEnd,
    /// Closes the innermost open residual connection multiplicatively: `r ⊙ σ(x)`.
    GateEnd,
    /// Opens a low-rate part: one frame per `factor` steps.
    Downsample {
        /// Steps per frame (≥ 1).
        factor: usize,
        /// How a frame is made.
        pooling: Pooling,
    },
    /// Closes the innermost low-rate part (same `factor` as its downsample).
    Upsample {
        /// Steps per frame.
        factor: usize,
        /// How a frame is spread over the steps.
        unpooling: Unpooling,
    },
}

/// JSON name of a norm kind.
fn norm_name(k: NormKind) -> &'static str {
    match k {
        NormKind::LayerNorm => "layer_norm",
        NormKind::RmsNorm => "rms_norm",
    }
}

/// JSON name of a pooling.
fn pooling_name(p: Pooling) -> &'static str {
    match p {
        Pooling::Concat => "concat",
        Pooling::Mean => "mean",
        Pooling::Last => "last",
    }
}

/// JSON name of an unpooling.
fn unpooling_name(u: Unpooling) -> &'static str {
    match u {
        Unpooling::Split => "split",
        Unpooling::Hold => "hold",
    }
}

/// The spec as JSON: a list of objects such as `{"dense": {"d_in": 1, "d_out": 16, "bias":
/// true}}`, `{"layer": {"class": "LRU", "kwargs": {...}}}`, `{"bidirectional": {"layer":
/// {"class": "LRU", "kwargs": {...}}, "merge": "sum", "shared": false}}`, `{"activation":
/// "gelu"}`, `"glu"`, `{"norm": {"kind": "layer_norm", "d": 16, "eps": 1e-5}}` (`layer_norm` |
/// `rms_norm`), `"residual_begin"`, `"residual_end"`, `{"downsample": {"factor": 4,
/// "pooling": "concat"}}` (`concat` | `mean` | `last`), `{"upsample": {"factor": 4,
/// "unpooling": "split"}}` (`split` | `hold`).
pub fn spec_to_json(spec: &[StageSpec]) -> Value {
    Value::Array(
        spec.iter()
            .map(|s| match s {
                StageSpec::Dense { d_in, d_out, bias } => {
                    json!({"dense": {"d_in": d_in, "d_out": d_out, "bias": bias}})
                }
                StageSpec::Layer { class, kwargs } => {
                    json!({"layer": {"class": class, "kwargs": kwargs}})
                }
                StageSpec::Bidirectional(b) => json!({ "bidirectional": b.to_json() }),
                StageSpec::Activation(a) => json!({ "activation": a.name() }),
                StageSpec::Glu => json!("glu"),
                StageSpec::Norm { kind, d, eps } => {
                    json!({"norm": {"kind": norm_name(*kind), "d": d, "eps": eps}})
                }
                StageSpec::ResidualBegin => json!("residual_begin"),
                StageSpec::ResidualEnd => json!("residual_end"),
                StageSpec::GateEnd => json!("gate_end"),
                StageSpec::Downsample { factor, pooling } => json!({"downsample": {
                    "factor": factor, "pooling": pooling_name(*pooling)}}),
                StageSpec::Upsample { factor, unpooling } => json!({"upsample": {
                    "factor": factor, "unpooling": unpooling_name(*unpooling)}}),
            })
            .collect(),
    )
}

/// Reads a spec written by [`spec_to_json`]; the error names the stage.
pub fn spec_from_json(v: &Value) -> std::result::Result<Vec<StageSpec>, BuildError> {
    let list = v
        .as_array()
        .ok_or_else(|| BuildError::Kwarg("network spec: expected a JSON list of stages".into()))?;
    let bad = |i: usize, what: &str| BuildError::Kwarg(format!("network stage {i}: {what}"));
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            if let Some(name) = s.as_str() {
                return match name {
                    "glu" => Ok(StageSpec::Glu),
                    "residual_begin" => Ok(StageSpec::ResidualBegin),
                    "residual_end" => Ok(StageSpec::ResidualEnd),
                    "gate_end" => Ok(StageSpec::GateEnd),
                    other => Err(bad(i, &format!("unknown stage `{other}`"))),
                };
            }
            if let Some(d) = s.get("dense") {
                let size = |k: &str| {
                    d.get(k)
                        .and_then(Value::as_u64)
                        .and_then(|v| usize::try_from(v).ok())
                        .ok_or_else(|| bad(i, &format!("dense `{k}`: expected an integer")))
                };
                return Ok(StageSpec::Dense {
                    d_in: size("d_in")?,
                    d_out: size("d_out")?,
                    bias: d.get("bias").and_then(Value::as_bool).unwrap_or(true),
                });
            }
            if let Some(l) = s.get("layer") {
                let class = l
                    .get("class")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(i, "layer `class`: expected a string"))?;
                let kwargs = l.get("kwargs").cloned().unwrap_or_else(|| json!({}));
                return Ok(StageSpec::Layer {
                    class: class.to_owned(),
                    kwargs,
                });
            }
            if let Some(b) = s.get("bidirectional") {
                return BidirectionalSpec::from_json(b)
                    .map(StageSpec::Bidirectional)
                    .map_err(|e| bad(i, &e.to_string()));
            }
            let factor = |d: &Value, what: &str| {
                d.get("factor")
                    .and_then(Value::as_u64)
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| bad(i, &format!("{what} `factor`: expected an integer ≥ 1")))
            };
            if let Some(n) = s.get("norm") {
                let name = n.get("kind").and_then(Value::as_str).unwrap_or("");
                let kind = [NormKind::LayerNorm, NormKind::RmsNorm]
                    .into_iter()
                    .find(|k| norm_name(*k) == name)
                    .ok_or_else(|| bad(i, &format!("unknown norm kind `{name}`")))?;
                let d = n
                    .get("d")
                    .and_then(Value::as_u64)
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| bad(i, "norm `d`: expected an integer"))?;
                let eps = match n.get("eps") {
                    None => 1e-5,
                    Some(e) => e
                        .as_f64()
                        .filter(|e| e.is_finite() && *e >= 0.0)
                        .ok_or_else(|| bad(i, "norm `eps`: expected a finite number ≥ 0"))?,
                };
                return Ok(StageSpec::Norm { kind, d, eps });
            }
            if let Some(d) = s.get("downsample") {
                let name = d.get("pooling").and_then(Value::as_str).unwrap_or("");
                let pooling = [Pooling::Concat, Pooling::Mean, Pooling::Last]
                    .into_iter()
                    .find(|p| pooling_name(*p) == name)
                    .ok_or_else(|| bad(i, &format!("unknown pooling `{name}`")))?;
                return Ok(StageSpec::Downsample {
                    factor: factor(d, "downsample")?,
                    pooling,
                });
            }
            if let Some(d) = s.get("upsample") {
                let name = d.get("unpooling").and_then(Value::as_str).unwrap_or("");
                let unpooling = [Unpooling::Split, Unpooling::Hold]
                    .into_iter()
                    .find(|p| unpooling_name(*p) == name)
                    .ok_or_else(|| bad(i, &format!("unknown unpooling `{name}`")))?;
                return Ok(StageSpec::Upsample {
                    factor: factor(d, "upsample")?,
                    unpooling,
                });
            }
            if let Some(a) = s.get("activation") {
                let name = a.as_str().unwrap_or("");
                return Activation::from_name(name)
                    .map(StageSpec::Activation)
                    .ok_or_else(|| bad(i, &format!("unknown activation {a}")));
            }
            Err(bad(i, &format!("unknown stage {s}")))
        })
        .collect()
}

/// An open bracket while checking a spec.
enum Open {
    Residual(usize),
    Rate(usize),
}

/// Checks the widths through `spec` starting from `d_in` (module doc); returns the output
/// width. A layer's `d_model` must be the incoming width.
pub fn check_widths(spec: &[StageSpec], d_in: usize) -> std::result::Result<usize, BuildError> {
    let bad = |i: usize, what: String| BuildError::Kwarg(format!("network stage {i}: {what}"));
    if d_in == 0 {
        return Err(BuildError::Kwarg("network input width is 0".into()));
    }
    if d_in > MAX_AXIS {
        return Err(BuildError::Kwarg(format!(
            "network input width {d_in} is past the largest axis size {MAX_AXIS}"
        )));
    }
    let mut width = d_in;
    let mut open: Vec<Open> = Vec::new();
    // steps per frame at the current depth (the product of the open downsample factors), and
    // the least common multiple of all of them (`frame_multiple`); both at most MAX_RATE
    let (mut rates, mut lcm) = (vec![1usize], 1usize);
    for (i, s) in spec.iter().enumerate() {
        match s {
            StageSpec::Dense {
                d_in: n_in, d_out, ..
            } => {
                if *n_in != width {
                    return Err(bad(i, format!("dense d_in {n_in} != input width {width}")));
                }
                if *d_out == 0 {
                    return Err(bad(i, "dense d_out is 0".into()));
                }
                if *d_out > MAX_AXIS || n_in.checked_mul(*d_out).is_none_or(|n| n > MAX_AXIS) {
                    return Err(bad(
                        i,
                        format!(
                            "dense {n_in} -> {d_out}: the weight is past the largest tensor \
                             size {MAX_AXIS}"
                        ),
                    ));
                }
                width = *d_out;
            }
            StageSpec::Layer { kwargs, .. } => {
                let h = kwargs.get("d_model").and_then(Value::as_u64);
                if h != Some(width as u64) {
                    return Err(bad(
                        i,
                        format!("layer d_model {h:?} != input width {width}"),
                    ));
                }
            }
            StageSpec::Bidirectional(b) => {
                let h = b.d_model().map_err(|e| bad(i, e.to_string()))?;
                if h != width {
                    return Err(bad(
                        i,
                        format!("bidirectional layer d_model {h} != input width {width}"),
                    ));
                }
            }
            StageSpec::Activation(_) => {}
            StageSpec::Norm { d, eps, .. } => {
                if *d != width {
                    return Err(bad(i, format!("norm d {d} != input width {width}")));
                }
                if !(eps.is_finite() && *eps >= 0.0) {
                    return Err(bad(i, format!("norm eps {eps} is not finite and ≥ 0")));
                }
            }
            StageSpec::Glu => {
                if !width.is_multiple_of(2) {
                    return Err(bad(i, format!("glu needs an even width, got {width}")));
                }
                width /= 2;
            }
            StageSpec::ResidualBegin => open.push(Open::Residual(width)),
            StageSpec::ResidualEnd | StageSpec::GateEnd => match open.pop() {
                None => return Err(bad(i, "residual_end without residual_begin".into())),
                Some(Open::Rate(_)) => {
                    return Err(bad(
                        i,
                        "a residual connection cannot span a rate change".into(),
                    ))
                }
                Some(Open::Residual(w)) if w != width => {
                    return Err(bad(
                        i,
                        format!("residual of width {w} added to width {width}"),
                    ))
                }
                Some(Open::Residual(_)) => {}
            },
            StageSpec::Downsample { factor, pooling } => {
                if *factor == 0 {
                    return Err(bad(i, "downsample factor is 0".into()));
                }
                if *pooling == Pooling::Concat {
                    width = width
                        .checked_mul(*factor)
                        .filter(|&w| w <= MAX_AXIS)
                        .ok_or_else(|| bad(i, "frame width overflows".into()))?;
                }
                let outer = rates.last().copied().unwrap_or(1);
                let rate = outer
                    .checked_mul(*factor)
                    .filter(|&r| r <= MAX_RATE)
                    .ok_or_else(|| {
                        bad(
                            i,
                            format!(
                                "downsample by {factor} inside a rate of {outer}: steps per \
                                 frame past {MAX_RATE}"
                            ),
                        )
                    })?;
                lcm = (lcm / gcd(lcm, rate))
                    .checked_mul(rate)
                    .filter(|&m| m <= MAX_RATE)
                    .ok_or_else(|| {
                        bad(
                            i,
                            format!("the rates' common frame length is past {MAX_RATE} steps"),
                        )
                    })?;
                rates.push(rate);
                open.push(Open::Rate(*factor));
            }
            StageSpec::Upsample { factor, unpooling } => {
                match open.pop() {
                    None => return Err(bad(i, "upsample without downsample".into())),
                    Some(Open::Residual(_)) => {
                        return Err(bad(
                            i,
                            "a residual connection cannot span a rate change".into(),
                        ))
                    }
                    Some(Open::Rate(k)) if k != *factor => {
                        return Err(bad(
                            i,
                            format!("upsample factor {factor} != downsample factor {k}"),
                        ))
                    }
                    Some(Open::Rate(_)) => {
                        rates.pop();
                    }
                }
                if *unpooling == Unpooling::Split {
                    if !width.is_multiple_of(*factor) {
                        return Err(bad(
                            i,
                            format!("split upsample by {factor} of width {width}"),
                        ));
                    }
                    width /= factor;
                }
            }
        }
    }
    let residuals = open
        .iter()
        .filter(|o| matches!(o, Open::Residual(_)))
        .count();
    if residuals > 0 {
        return Err(BuildError::Kwarg(format!(
            "network: {residuals} residual_begin without residual_end"
        )));
    }
    Ok(width)
}

/// Greatest common divisor.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The length every parallel forward is padded to a multiple of: the least common multiple of
/// the products of the nested downsample factors (1 without rate changes; saturating for a spec
/// [`check_widths`] refuses, whose rates are past [`MAX_RATE`]).
pub fn frame_multiple(spec: &[StageSpec]) -> usize {
    let (mut stack, mut lcm) = (vec![1usize], 1usize);
    for s in spec {
        match s {
            StageSpec::Downsample { factor, .. } => {
                let rate = stack.last().copied().unwrap_or(1).saturating_mul(*factor);
                lcm = (lcm / gcd(lcm, rate)).saturating_mul(rate);
                stack.push(rate);
            }
            StageSpec::Upsample { .. } if stack.len() > 1 => {
                stack.pop();
            }
            _ => {}
        }
    }
    lcm
}

/// The product of the downsample factors left open at the end of `spec` (1 when every
/// downsample has its upsample): steps per output frame (saturating, as [`frame_multiple`]).
pub fn output_factor(spec: &[StageSpec]) -> usize {
    let mut stack: Vec<usize> = Vec::new();
    for s in spec {
        match s {
            StageSpec::Downsample { factor, .. } => stack.push(*factor),
            StageSpec::Upsample { .. } => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack.iter().fold(1usize, |p, f| p.saturating_mul(*f))
}

/// A built stage.
enum Stage {
    Dense {
        weight: Var,
        bias: Option<Var>,
    },
    Layer(Box<dyn TrainLayer>),
    Activation(Activation),
    Glu,
    Norm {
        kind: NormKind,
        eps: f64,
        weight: Var,
        bias: Option<Var>,
    },
    ResidualBegin,
    ResidualEnd,
    GateEnd,
    Downsample {
        factor: usize,
        pooling: Pooling,
    },
    Upsample {
        factor: usize,
        unpooling: Unpooling,
    },
}

/// A trainable network (module doc).
pub struct Network {
    spec: Vec<StageSpec>,
    stages: Vec<Stage>,
    d_in: usize,
    d_out: usize,
}

impl Network {
    /// A fresh network of input width `d_in`: dense stages drawn as PyTorch's `Linear`, layers
    /// by their lrnnx-default initializers ([`crate::init`]), everything from `seed`.
    pub fn new(
        spec: &[StageSpec],
        d_in: usize,
        seed: u64,
        device: &Device,
    ) -> std::result::Result<Self, BuildError> {
        Network::with_layer_params(spec, d_in, seed, device, Vec::new())
    }

    /// Like [`Network::new`] with every parameter in `dtype` (e.g. `F64` for finite-difference
    /// checks); the same draws as `new`, rounded to `dtype`.
    pub fn with_dtype(
        spec: &[StageSpec],
        d_in: usize,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, BuildError> {
        Network::build(spec, d_in, seed, device, Vec::new(), dtype)
    }

    /// Like [`Network::new`], but the layer stages listed in `given` (stage index, lrnnx
    /// parameters) are built from those parameters instead of a fresh initialization (e.g.
    /// imported lrnnx weights, or a class without a fresh initializer).
    pub fn with_layer_params(
        spec: &[StageSpec],
        d_in: usize,
        seed: u64,
        device: &Device,
        given: Vec<(usize, crate::Params)>,
    ) -> std::result::Result<Self, BuildError> {
        Network::build(spec, d_in, seed, device, given, DType::F32)
    }

    fn build(
        spec: &[StageSpec],
        d_in: usize,
        seed: u64,
        device: &Device,
        mut given: Vec<(usize, crate::Params)>,
        dtype: DType,
    ) -> std::result::Result<Self, BuildError> {
        let d_out = check_widths(spec, d_in)?;
        for (n, (i, _)) in given.iter().enumerate() {
            if given[..n].iter().any(|(j, _)| j == i) {
                return Err(BuildError::Kwarg(format!(
                    "network stage {i}: parameters given twice"
                )));
            }
        }
        let mut rng = Rng::new(seed);
        let mut stages = Vec::with_capacity(spec.len());
        for (i, s) in spec.iter().enumerate() {
            stages.push(match s {
                StageSpec::Dense { d_in, d_out, bias } => {
                    let (w, b) = linear(*d_in, *d_out, &mut rng, dtype, device)?;
                    Stage::Dense {
                        weight: Var::from_tensor(&w)?,
                        bias: if *bias {
                            Some(Var::from_tensor(&b)?)
                        } else {
                            None
                        },
                    }
                }
                StageSpec::Layer { class, kwargs } => {
                    match given.iter().position(|(k, _)| *k == i) {
                        Some(at) => {
                            let (_, params) = given.swap_remove(at);
                            Stage::Layer(given_layer(i, class, kwargs, params, dtype)?)
                        }
                        None => Stage::Layer(fresh(class, kwargs, &mut rng, dtype, device)?),
                    }
                }
                StageSpec::Bidirectional(b) => {
                    let kwargs = b.to_json();
                    match given.iter().position(|(k, _)| *k == i) {
                        Some(at) => {
                            let (_, params) = given.swap_remove(at);
                            Stage::Layer(given_layer(i, BIDIRECTIONAL, &kwargs, params, dtype)?)
                        }
                        None => {
                            Stage::Layer(fresh(BIDIRECTIONAL, &kwargs, &mut rng, dtype, device)?)
                        }
                    }
                }
                StageSpec::Activation(a) => Stage::Activation(*a),
                StageSpec::Glu => Stage::Glu,
                StageSpec::Norm { kind, d, eps } => Stage::Norm {
                    kind: *kind,
                    eps: *eps,
                    weight: Var::ones(*d, dtype, device)?,
                    bias: match kind {
                        NormKind::LayerNorm => Some(Var::zeros(*d, dtype, device)?),
                        NormKind::RmsNorm => None,
                    },
                },
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
        if let Some((i, _)) = given.first() {
            return Err(BuildError::Kwarg(format!(
                "network stage {i}: parameters given for a stage that is not a layer"
            )));
        }
        Ok(Network {
            spec: spec.to_vec(),
            stages,
            d_in,
            d_out,
        })
    }

    /// The stages as specified.
    pub fn spec(&self) -> &[StageSpec] {
        &self.spec
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Every parameter with its name: `stages.{i}.weight`, `stages.{i}.bias` (dense and norm
    /// stages), `stages.{i}.<lrnnx key>`.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            match s {
                Stage::Dense { weight, bias } => {
                    v.push((format!("stages.{i}.weight"), weight.clone()));
                    if let Some(b) = bias {
                        v.push((format!("stages.{i}.bias"), b.clone()));
                    }
                }
                Stage::Norm { weight, bias, .. } => {
                    v.push((format!("stages.{i}.weight"), weight.clone()));
                    if let Some(b) = bias {
                        v.push((format!("stages.{i}.bias"), b.clone()));
                    }
                }
                Stage::Layer(l) => {
                    for (k, var) in l.params().vars() {
                        v.push((format!("stages.{i}.{k}"), var.clone()));
                    }
                }
                _ => {}
            }
        }
        v
    }

    /// The parameters of layer (or bidirectional) stage `i` (lrnnx names; `fwd.`, `bwd.`,
    /// `proj.` in a bidirectional stage), `None` for other stages.
    pub fn layer_params(&self, i: usize) -> Option<&crate::Params> {
        match self.stages.get(i) {
            Some(Stage::Layer(l)) => Some(l.params()),
            _ => None,
        }
    }

    /// The weight `(d_out, d_in)` and bias of dense stage `i`, `None` for other stages.
    pub fn dense_params(&self, i: usize) -> Option<(Tensor, Option<Tensor>)> {
        match self.stages.get(i) {
            Some(Stage::Dense { weight, bias }) => Some((
                weight.as_tensor().clone(),
                bias.as_ref().map(|b| b.as_tensor().clone()),
            )),
            _ => None,
        }
    }

    /// The weight `(d,)` and bias (LayerNorm) of norm stage `i`, `None` for other stages.
    pub fn norm_params(&self, i: usize) -> Option<(Tensor, Option<Tensor>)> {
        match self.stages.get(i) {
            Some(Stage::Norm { weight, bias, .. }) => Some((
                weight.as_tensor().clone(),
                bias.as_ref().map(|b| b.as_tensor().clone()),
            )),
            _ => None,
        }
    }

    /// The parallel forward over `x` (B, L, d_in) → (B, L, d_out) (`⌊L/F⌋` frames for a
    /// low-rate output, module doc); `time_steps` (B, L) are passed to every layer
    /// (event-driven layers need them, the others ignore them).
    pub fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor> {
        let (b, l) = match x.dims() {
            [b, l, d] if *d == self.d_in => (*b, *l),
            d => bail!(
                "network input has shape {d:?}, expected (batch, length, {})",
                self.d_in
            ),
        };
        if let Some(ts) = time_steps {
            if ts.dims() != [b, l] {
                bail!(
                    "network time steps have shape {:?}, expected ({b}, {l})",
                    ts.dims()
                );
            }
            // every input step's, before rate changes sum them into frames
            crate::layer::check_time_steps(ts, b, l)?;
        }
        let multiple = frame_multiple(&self.spec);
        let pad = (multiple - l % multiple) % multiple;
        if pad > 0
            && self
                .spec
                .iter()
                .any(|s| matches!(s, StageSpec::Bidirectional(_)))
        {
            bail!(
                "network input length {l} is not a multiple of {multiple}, the product of its \
                 rate changes: a network with a bidirectional stage is not padded (the backward \
                 direction would read the padding)"
            );
        }
        let mut h = if pad > 0 {
            x.pad_with_zeros(1, 0, pad)?
        } else {
            x.clone()
        };
        let mut dt = match time_steps {
            Some(ts) if pad > 0 => Some(Tensor::cat(
                &[ts, &Tensor::ones((b, pad), ts.dtype(), ts.device())?],
                1,
            )?),
            Some(ts) => Some(ts.clone()),
            None => None,
        };
        let mut open: Vec<Tensor> = Vec::new();
        let mut outer_dt: Vec<Option<Tensor>> = Vec::new();
        for s in &self.stages {
            h = match s {
                Stage::Dense { weight, bias } => {
                    let y = h.broadcast_matmul(&weight.as_tensor().t()?)?;
                    match bias {
                        Some(b) => y.broadcast_add(b.as_tensor())?,
                        None => y,
                    }
                }
                Stage::Layer(l) => l.forward(&h, dt.as_ref())?,
                Stage::Activation(a) => a.apply(&h)?,
                Stage::Glu => {
                    let n = h.dim(2)? / 2;
                    let a = h.narrow(2, 0, n)?;
                    let g = h.narrow(2, n, n)?;
                    (a * sigmoid(&g)?)?
                }
                Stage::Norm {
                    kind,
                    eps,
                    weight,
                    bias,
                } => norm(&h, *kind, *eps, weight.as_tensor(), bias.as_ref())?,
                Stage::ResidualBegin => {
                    open.push(h.clone());
                    h
                }
                Stage::ResidualEnd => match open.pop() {
                    Some(r) => (h + r)?,
                    None => bail!("network: residual_end without residual_begin"),
                },
                Stage::GateEnd => match open.pop() {
                    Some(r) => (r * sigmoid(&h)?)?,
                    None => bail!("network: gate_end without residual_begin"),
                },
                Stage::Downsample { factor, pooling } => {
                    let (k, (b, n, w)) = (*factor, h.dims3()?);
                    outer_dt.push(dt.clone());
                    if let Some(d) = &dt {
                        dt = Some(d.reshape((b, n / k, k))?.sum(2)?);
                    }
                    downsample(&h, k, *pooling, (b, n, w))?
                }
                Stage::Upsample { factor, unpooling } => {
                    dt = outer_dt.pop().flatten();
                    upsample(&h, *factor, *unpooling)?
                }
            };
        }
        let frames = l / output_factor(&self.spec);
        if h.dim(1)? != frames {
            h = h.narrow(1, 0, frames)?;
        }
        Ok(h)
    }
}

/// LayerNorm / RMSNorm of `h` (B, L, d) over its last axis (the [`StageSpec::Norm`] equations).
fn norm(
    h: &Tensor,
    kind: NormKind,
    eps: f64,
    weight: &Tensor,
    bias: Option<&Var>,
) -> Result<Tensor> {
    let y = match kind {
        NormKind::LayerNorm => {
            let c = h.broadcast_sub(&h.mean_keepdim(2)?)?;
            let inv = (c.sqr()?.mean_keepdim(2)? + eps)?.sqrt()?.recip()?;
            c.broadcast_mul(&inv)?
        }
        NormKind::RmsNorm => {
            let inv = (h.sqr()?.mean_keepdim(2)? + eps)?.sqrt()?.recip()?;
            h.broadcast_mul(&inv)?
        }
    };
    let y = y.broadcast_mul(weight)?;
    match bias {
        Some(b) => y.broadcast_add(b.as_tensor()),
        None => Ok(y),
    }
}

/// `Downsample`'s parallel form on `h` (B, n, w), `n` a multiple of `k` (module doc).
fn downsample(
    h: &Tensor,
    k: usize,
    pooling: Pooling,
    (b, n, w): (usize, usize, usize),
) -> Result<Tensor> {
    let h = h.contiguous()?;
    match pooling {
        Pooling::Concat => h.reshape((b, n / k, k * w)),
        Pooling::Mean => h.reshape((b, n / k, k, w))?.sum(2)? * (1.0 / k as f64),
        Pooling::Last => h.reshape((b, n / k, k, w))?.narrow(2, k - 1, 1)?.squeeze(2),
    }
}

/// `Upsample`'s parallel form on frames `h` (B, n, ·): spread over `n·k` steps, then delayed by
/// `k − 1` steps (zeros in front).
fn upsample(h: &Tensor, k: usize, unpooling: Unpooling) -> Result<Tensor> {
    let (b, n, w) = h.dims3()?;
    let steps = match unpooling {
        Unpooling::Split => h.contiguous()?.reshape((b, n * k, w / k))?,
        Unpooling::Hold => h
            .unsqueeze(2)?
            .broadcast_as((b, n, k, w))?
            .contiguous()?
            .reshape((b, n * k, w))?,
    };
    if k == 1 {
        return Ok(steps);
    }
    steps.pad_with_zeros(1, k - 1, 0)?.narrow(1, 0, n * k)
}

/// A layer stage built from given parameters, checked as a checkpoint's are
/// ([`crate::checkpoint::exact_layer_params`]): a tensor the layer does not read is refused
/// (S4's `layer.kernel.X` aliases, checked equal to `X`, and Mamba's kept `dtA_proj.weight`
/// aside; such errors name the stage), in the network's `dtype` (an f64 checkpoint's
/// parameters in an f32 network are rounded to f32).
fn given_layer(
    stage: usize,
    class: &str,
    kwargs: &serde_json::Value,
    given: crate::Params,
    dtype: DType,
) -> std::result::Result<Box<dyn TrainLayer>, BuildError> {
    use crate::checkpoint::{exact_layer_params, CheckpointError};
    let mut params = crate::Params::new();
    for (name, var) in given.vars() {
        params.insert(name, &var.as_tensor().to_dtype(dtype)?)?;
    }
    let params = exact_layer_params(class, kwargs, params).map_err(|e| match e {
        CheckpointError::Build(b) => b,
        other => BuildError::Candle(candle_core::Error::Msg(format!(
            "network stage {stage}: {other}"
        ))),
    })?;
    crate::build(class, kwargs, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(h: usize) -> Vec<StageSpec> {
        vec![
            StageSpec::ResidualBegin,
            StageSpec::Layer {
                class: "LRU".into(),
                kwargs: json!({"d_model": h, "d_state": 4}),
            },
            StageSpec::Activation(Activation::Gelu),
            StageSpec::Dense {
                d_in: h,
                d_out: 2 * h,
                bias: true,
            },
            StageSpec::Glu,
            StageSpec::ResidualEnd,
        ]
    }

    #[test]
    fn json_round_trip_and_width_errors() {
        let mut spec = vec![StageSpec::Dense {
            d_in: 1,
            d_out: 4,
            bias: true,
        }];
        spec.extend(block(4));
        spec.push(StageSpec::Dense {
            d_in: 4,
            d_out: 1,
            bias: false,
        });
        let back = spec_from_json(&spec_to_json(&spec)).unwrap();
        assert_eq!(back, spec);
        assert_eq!(check_widths(&spec, 1).unwrap(), 1);
        let e = check_widths(&spec, 2).unwrap_err().to_string();
        assert!(e.contains("stage 0"), "{e}");
        let mut unclosed = spec.clone();
        unclosed.insert(0, StageSpec::ResidualBegin);
        assert!(check_widths(&unclosed, 1).is_err());
        let mut odd = spec.clone();
        odd.insert(1, StageSpec::Glu);
        odd.insert(
            1,
            StageSpec::Dense {
                d_in: 4,
                d_out: 3,
                bias: true,
            },
        );
        assert!(check_widths(&odd, 1)
            .unwrap_err()
            .to_string()
            .contains("even"));
        assert!(spec_from_json(&json!([{"activation": "nope"}])).is_err());
        assert!(spec_from_json(&json!(["what"])).is_err());
    }

    /// The forward equals the stages computed by hand from their parameters (a second,
    /// sequential evaluation with plain f64 arithmetic for the pointwise parts).
    #[test]
    fn forward_matches_hand_evaluation() {
        let dev = Device::Cpu;
        let spec = vec![
            StageSpec::Dense {
                d_in: 2,
                d_out: 4,
                bias: true,
            },
            StageSpec::ResidualBegin,
            StageSpec::Activation(Activation::Tanh),
            StageSpec::Dense {
                d_in: 4,
                d_out: 4,
                bias: false,
            },
            StageSpec::Glu,
            StageSpec::Activation(Activation::Silu),
            StageSpec::Dense {
                d_in: 2,
                d_out: 4,
                bias: true,
            },
            StageSpec::ResidualEnd,
        ];
        let net = Network::new(&spec, 2, 7, &dev).unwrap();
        let xs: Vec<f32> = (0..2 * 3 * 2).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::from_vec(xs.clone(), (2, 3, 2), &dev).unwrap();
        let y: Vec<f32> = net
            .forward(&x, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let get = |i: usize| {
            let (w, b) = net.dense_params(i).unwrap();
            let w: Vec<Vec<f32>> = w.to_vec2().unwrap();
            let b: Option<Vec<f32>> = b.map(|b| b.to_vec1().unwrap());
            (w, b)
        };
        let dense = |(w, b): &(Vec<Vec<f32>>, Option<Vec<f32>>), x: &[f64]| -> Vec<f64> {
            w.iter()
                .enumerate()
                .map(|(o, row)| {
                    row.iter().zip(x).map(|(a, b)| *a as f64 * b).sum::<f64>()
                        + b.as_ref().map_or(0.0, |b| b[o] as f64)
                })
                .collect()
        };
        let (d0, d3, d6) = (get(0), get(3), get(6));
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        for t in 0..6 {
            let xin: Vec<f64> = xs[2 * t..2 * t + 2].iter().map(|v| *v as f64).collect();
            let h0 = dense(&d0, &xin);
            let h1: Vec<f64> = h0.iter().map(|v| v.tanh()).collect();
            let h2 = dense(&d3, &h1);
            let g: Vec<f64> = (0..2).map(|k| h2[k] * sig(h2[k + 2])).collect();
            let s: Vec<f64> = g.iter().map(|v| v * sig(*v)).collect();
            let out: Vec<f64> = dense(&d6, &s).iter().zip(&h0).map(|(a, b)| a + b).collect();
            for k in 0..4 {
                let got = y[4 * t + k] as f64;
                assert!(
                    (got - out[k]).abs() < 1e-5,
                    "t={t} k={k}: {got} vs {}",
                    out[k]
                );
            }
        }
    }

    /// Rate brackets: widths through concat/split, factor and nesting errors, the padding
    /// multiple, and that the parallel forward is causal (an input change at step t changes no
    /// output before t, even across the low-rate part and its padding).
    #[test]
    fn rate_stages_check_and_stay_causal() {
        let down = |factor, pooling| StageSpec::Downsample { factor, pooling };
        let up = |factor, unpooling| StageSpec::Upsample { factor, unpooling };
        let spec = vec![
            StageSpec::Dense {
                d_in: 1,
                d_out: 2,
                bias: true,
            },
            StageSpec::ResidualBegin,
            down(2, Pooling::Concat),
            down(3, Pooling::Mean),
            StageSpec::Dense {
                d_in: 4,
                d_out: 4,
                bias: true,
            },
            up(3, Unpooling::Hold),
            up(2, Unpooling::Split),
            StageSpec::ResidualEnd,
        ];
        assert_eq!(check_widths(&spec, 1).unwrap(), 2);
        assert_eq!(frame_multiple(&spec), 6);
        assert_eq!(spec_from_json(&spec_to_json(&spec)).unwrap(), spec);
        let mut wrong = spec.clone();
        wrong[5] = up(2, Unpooling::Hold);
        assert!(check_widths(&wrong, 1)
            .unwrap_err()
            .to_string()
            .contains("stage 5"));
        let spans = vec![
            StageSpec::ResidualBegin,
            down(2, Pooling::Last),
            StageSpec::ResidualEnd,
        ];
        assert!(check_widths(&spans, 1)
            .unwrap_err()
            .to_string()
            .contains("stage 2"));
        assert!(check_widths(&[up(2, Unpooling::Hold)], 1).is_err());
        assert!(
            spec_from_json(&json!([{"downsample": {"factor": 0, "pooling": "mean"}}])).is_err()
        );
        assert!(spec_from_json(&json!([{"upsample": {"factor": 2, "unpooling": "x"}}])).is_err());
        let dev = Device::Cpu;
        let net = Network::new(&spec, 1, 5, &dev).unwrap();
        let len = 17;
        let base: Vec<f32> = (0..len).map(|t| (t as f32 * 0.4).sin()).collect();
        let run = |xs: &[f32]| -> Vec<f32> {
            let x = Tensor::from_vec(xs.to_vec(), (1, len, 1), &dev).unwrap();
            net.forward(&x, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let y0 = run(&base);
        assert_eq!(y0.len(), 2 * len);
        for t in [0usize, 5, 11, 16] {
            let mut xs = base.clone();
            xs[t] += 1.0;
            let y1 = run(&xs);
            assert_eq!(y0[..2 * t], y1[..2 * t], "output before step {t} changed");
            assert_ne!(y0[2 * t..], y1[2 * t..], "step {t} changed nothing");
        }
    }

    /// Norm stages: JSON round trip, width checks, and the forward against LayerNorm / RMSNorm
    /// computed by hand in f64 from the stage's (non-trivial) weights.
    #[test]
    fn norm_stages_match_hand_evaluation() {
        let dev = Device::Cpu;
        let spec = vec![
            StageSpec::Dense {
                d_in: 2,
                d_out: 5,
                bias: true,
            },
            StageSpec::Norm {
                kind: NormKind::LayerNorm,
                d: 5,
                eps: 1e-5,
            },
            StageSpec::Norm {
                kind: NormKind::RmsNorm,
                d: 5,
                eps: 1e-3,
            },
        ];
        assert_eq!(spec_from_json(&spec_to_json(&spec)).unwrap(), spec);
        assert_eq!(check_widths(&spec, 2).unwrap(), 5);
        let mut wrong = spec.clone();
        wrong[2] = StageSpec::Norm {
            kind: NormKind::RmsNorm,
            d: 4,
            eps: 1e-5,
        };
        assert!(check_widths(&wrong, 2)
            .unwrap_err()
            .to_string()
            .contains("stage 2"));
        assert!(spec_from_json(&json!([{"norm": {"kind": "batch", "d": 2}}])).is_err());
        assert!(
            spec_from_json(&json!([{"norm": {"kind": "rms_norm", "d": 2, "eps": -1}}])).is_err()
        );
        let net = Network::new(&spec, 2, 3, &dev).unwrap();
        let names: Vec<String> = net.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "stages.0.weight",
                "stages.0.bias",
                "stages.1.weight",
                "stages.1.bias",
                "stages.2.weight"
            ]
        );
        let vars = net.vars();
        let set = |k: usize, v: Vec<f32>| {
            let n = v.len();
            vars[k]
                .1
                .set(&Tensor::from_vec(v, n, &dev).unwrap())
                .unwrap()
        };
        set(2, vec![0.5, 1.5, -1.0, 2.0, 0.25]);
        set(3, vec![0.1, -0.2, 0.3, 0.0, 1.0]);
        set(4, vec![1.2, 0.8, -0.5, 1.0, 2.0]);
        let xs: Vec<f32> = (0..2 * 4 * 2)
            .map(|i| (i as f32 * 0.61).sin() * 3.0)
            .collect();
        let x = Tensor::from_vec(xs.clone(), (2, 4, 2), &dev).unwrap();
        let y: Vec<f32> = net
            .forward(&x, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (w0, b0) = net.dense_params(0).unwrap();
        let w0: Vec<Vec<f32>> = w0.to_vec2().unwrap();
        let b0: Vec<f32> = b0.unwrap().to_vec1().unwrap();
        let (g1, b1) = net.norm_params(1).unwrap();
        let g1: Vec<f32> = g1.to_vec1().unwrap();
        let b1: Vec<f32> = b1.unwrap().to_vec1().unwrap();
        let (g2, none) = net.norm_params(2).unwrap();
        assert!(none.is_none());
        let g2: Vec<f32> = g2.to_vec1().unwrap();
        for t in 0..8 {
            let h: Vec<f64> = (0..5)
                .map(|o| {
                    b0[o] as f64
                        + (0..2)
                            .map(|i| w0[o][i] as f64 * xs[2 * t + i] as f64)
                            .sum::<f64>()
                })
                .collect();
            let mean = h.iter().sum::<f64>() / 5.0;
            let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
            let ln: Vec<f64> = (0..5)
                .map(|k| (h[k] - mean) / (var + 1e-5).sqrt() * g1[k] as f64 + b1[k] as f64)
                .collect();
            let rms = (ln.iter().map(|v| v * v).sum::<f64>() / 5.0 + 1e-3).sqrt();
            for k in 0..5 {
                let want = ln[k] / rms * g2[k] as f64;
                let got = y[5 * t + k] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "t={t} k={k}: {got} vs {want}"
                );
            }
        }
    }

    /// Given layer parameters are checked as a checkpoint's: a tensor the layer does not read
    /// is refused naming the stage and the tensor, and a stage given twice is named as such.
    #[test]
    fn given_layer_parameters_are_checked_like_a_checkpoint() {
        let dev = Device::Cpu;
        let spec = block(4);
        let net = Network::new(&spec, 4, 1, &dev).unwrap();
        let good = net.layer_params(1).unwrap().clone();
        let net = Network::with_layer_params(&spec, 4, 2, &dev, vec![(1, good.clone())]).unwrap();
        // f64 parameters (an f64 checkpoint's) join the f32 network as f32
        let mut p64 = crate::Params::new();
        for (name, var) in good.vars() {
            p64.insert(name, &var.as_tensor().to_dtype(DType::F64).unwrap())
                .unwrap();
        }
        let net64 = Network::with_layer_params(&spec, 4, 2, &dev, vec![(1, p64)]).unwrap();
        let x = Tensor::ones((1, 3, 4), DType::F32, &dev).unwrap();
        let (y, y64) = (
            net.forward(&x, None).unwrap(),
            net64.forward(&x, None).unwrap(),
        );
        let diff = (y - y64).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let mut extra = good.clone();
        extra
            .insert("nu_logg", &Tensor::zeros(4, DType::F32, &dev).unwrap())
            .unwrap();
        let e = Network::with_layer_params(&spec, 4, 2, &dev, vec![(1, extra)])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("network stage 1") && e.contains("`nu_logg`"),
            "{e}"
        );
        let twice = vec![(1, good.clone()), (1, good)];
        let e = Network::with_layer_params(&spec, 4, 2, &dev, twice)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("network stage 1: parameters given twice"), "{e}");
    }

    #[test]
    fn forward_refuses_wrong_width() {
        let dev = Device::Cpu;
        let spec = block(4);
        let net = Network::new(&spec, 4, 1, &dev).unwrap();
        let x = Tensor::zeros((1, 5, 3), DType::F32, &dev).unwrap();
        assert!(net.forward(&x, None).is_err());
        let lru = net.layer_params(1).unwrap().vars().len();
        assert_eq!(net.vars().len(), 2 + lru);
        assert!(net.vars().iter().any(|(k, _)| k == "stages.3.bias"));
    }

    /// Sizes no network can hold are refused by `check_widths` (so by `Network::new`) with an
    /// error naming the stage, instead of overflowing or padding to an unallocatable length.
    #[test]
    fn oversized_rates_and_widths_are_refused() {
        let down = |factor| StageSpec::Downsample {
            factor,
            pooling: Pooling::Mean,
        };
        let up = |factor| StageSpec::Upsample {
            factor,
            unpooling: Unpooling::Hold,
        };
        let dense = |d_in, d_out| StageSpec::Dense {
            d_in,
            d_out,
            bias: true,
        };
        for (spec, stage, what) in [
            (vec![down(1 << 32)], 0, "steps per frame"),
            (vec![down(1 << 11), down(1 << 11)], 1, "steps per frame"),
            (vec![down(1 << 40), up(1 << 40)], 0, "steps per frame"),
            // nested rates 2^10 and 3^12: their common multiple is past the limit
            (
                vec![down(1 << 10), up(1 << 10), down(531_441), up(531_441)],
                2,
                "common frame length",
            ),
            (vec![dense(1, 1 << 63)], 0, "largest tensor size"),
            (
                vec![dense(1, 1 << 20), dense(1 << 20, 1 << 20)],
                1,
                "largest",
            ),
        ] {
            let e = check_widths(&spec, 1).unwrap_err().to_string();
            assert!(
                e.contains(&format!("stage {stage}")) && e.contains(what),
                "{e}"
            );
            assert!(Network::new(&spec, 1, 1, &Device::Cpu).is_err());
        }
        assert!(check_widths(&[down(1 << 10), down(1 << 10)], 1).is_ok());
        assert_eq!(frame_multiple(&[down(1 << 10), down(1 << 10)]), 1 << 20);
        assert_eq!(output_factor(&[down(1 << 40), down(1 << 40)]), usize::MAX);
    }

    /// Every input step's event time step is checked before a downsample sums them into frames
    /// (`[2, −1]` sums to a valid 1): the error names the input step.
    #[test]
    fn time_steps_are_checked_before_rate_changes() {
        let spec = vec![
            StageSpec::Downsample {
                factor: 2,
                pooling: Pooling::Mean,
            },
            StageSpec::Layer {
                class: "lrnnx.models.ltv.mamba.Mamba".into(),
                kwargs: serde_json::json!({"d_model": 2, "d_state": 2, "d_conv": 2, "expand": 1}),
            },
            StageSpec::Upsample {
                factor: 2,
                unpooling: Unpooling::Hold,
            },
        ];
        let net = Network::new(&spec, 2, 3, &Device::Cpu).unwrap();
        let x = Tensor::ones((1, 4, 2), DType::F32, &Device::Cpu).unwrap();
        let good = Tensor::new(&[[0.5f32, 1.5, 1.0, 1.0]], &Device::Cpu).unwrap();
        net.forward(&x, Some(&good)).unwrap();
        for (bad, at) in [
            ([2.0f32, -1.0, 1.0, 1.0], "[0, 1]"),
            ([1.0, 1.0, 0.0, 1.0], "[0, 2]"),
            ([1.0, 1.0, 1.0, f32::NAN], "[0, 3]"),
        ] {
            let ts = Tensor::new(&[bad], &Device::Cpu).unwrap();
            let e = net.forward(&x, Some(&ts)).unwrap_err().to_string();
            assert!(e.contains(at), "{bad:?}: {e}");
        }
    }
}
