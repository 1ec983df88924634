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
//! ResidualBegin                 remembers x
//! ResidualEnd                   y = x + the x remembered by the matching ResidualBegin
//! GateEnd                       y = r ⊙ σ(x), r the x remembered by the matching ResidualBegin (a mask)
//! ```
//!
//! A bidirectional stage ([`crate::bidirectional`]) is not causal: it trains and evaluates on
//! whole sequences, and the export to the core refuses it.
//!
//! Residual connections nest like brackets. The widths are checked when the network is built:
//! every stage's input width is the previous stage's output width, a layer's `d_model` is the
//! width, a `Glu` input is even, and a `ResidualEnd` closes a bracket of the same width.
//! The spec is plain JSON ([`spec_to_json`], [`spec_from_json`]), so a network can be
//! described in a file and rebuilt from an export.

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use serde_json::{json, Value};

use crate::bidirectional::{BidirectionalSpec, CLASS as BIDIRECTIONAL};
use crate::init::{fresh, linear, Rng};
use crate::layer::{BuildError, TrainLayer};

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
            Activation::Gelu => crate::s4d::gelu(x),
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
    /// Opens a residual connection.
    ResidualBegin,
    /// Closes the innermost open residual connection: adds its input.
    ResidualEnd,
    /// Closes the innermost open residual connection multiplicatively: `r ⊙ σ(x)`.
    GateEnd,
}

/// The spec as JSON: a list of objects such as `{"dense": {"d_in": 1, "d_out": 16, "bias":
/// true}}`, `{"layer": {"class": "LRU", "kwargs": {...}}}`, `{"bidirectional": {"layer":
/// {"class": "LRU", "kwargs": {...}}, "merge": "sum", "shared": false}}`, `{"activation":
/// "gelu"}`, `"glu"`, `"residual_begin"`, `"residual_end"`.
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
                StageSpec::ResidualBegin => json!("residual_begin"),
                StageSpec::ResidualEnd => json!("residual_end"),
                StageSpec::GateEnd => json!("gate_end"),
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

/// Checks the widths through `spec` starting from `d_in` (module doc); returns the output
/// width. `layer_width` gives a layer stage's `d_model`.
pub fn check_widths(spec: &[StageSpec], d_in: usize) -> std::result::Result<usize, BuildError> {
    let bad = |i: usize, what: String| BuildError::Kwarg(format!("network stage {i}: {what}"));
    if d_in == 0 {
        return Err(BuildError::Kwarg("network input width is 0".into()));
    }
    let mut width = d_in;
    let mut open: Vec<usize> = Vec::new();
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
            StageSpec::Glu => {
                if !width.is_multiple_of(2) {
                    return Err(bad(i, format!("glu needs an even width, got {width}")));
                }
                width /= 2;
            }
            StageSpec::ResidualBegin => open.push(width),
            StageSpec::ResidualEnd | StageSpec::GateEnd => match open.pop() {
                None => return Err(bad(i, "residual_end without residual_begin".into())),
                Some(w) if w != width => {
                    return Err(bad(
                        i,
                        format!("residual of width {w} added to width {width}"),
                    ))
                }
                Some(_) => {}
            },
        }
    }
    if !open.is_empty() {
        return Err(BuildError::Kwarg(format!(
            "network: {} residual_begin without residual_end",
            open.len()
        )));
    }
    Ok(width)
}

/// A built stage.
enum Stage {
    Dense { weight: Var, bias: Option<Var> },
    Layer(Box<dyn TrainLayer>),
    Activation(Activation),
    Glu,
    ResidualBegin,
    ResidualEnd,
    GateEnd,
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

    /// Like [`Network::new`], but the layer stages listed in `given` (stage index, lrnnx
    /// parameters) are built from those parameters instead of a fresh initialization (e.g.
    /// imported lrnnx weights, or a class without a fresh initializer).
    pub fn with_layer_params(
        spec: &[StageSpec],
        d_in: usize,
        seed: u64,
        device: &Device,
        mut given: Vec<(usize, crate::Params)>,
    ) -> std::result::Result<Self, BuildError> {
        let d_out = check_widths(spec, d_in)?;
        let mut rng = Rng::new(seed);
        let mut stages = Vec::with_capacity(spec.len());
        for (i, s) in spec.iter().enumerate() {
            stages.push(match s {
                StageSpec::Dense { d_in, d_out, bias } => {
                    let (w, b) = linear(*d_in, *d_out, &mut rng, DType::F32, device)?;
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
                            Stage::Layer(crate::build(class, kwargs, params)?)
                        }
                        None => Stage::Layer(fresh(class, kwargs, &mut rng, DType::F32, device)?),
                    }
                }
                StageSpec::Bidirectional(b) => {
                    let kwargs = b.to_json();
                    match given.iter().position(|(k, _)| *k == i) {
                        Some(at) => {
                            let (_, params) = given.swap_remove(at);
                            Stage::Layer(crate::build(BIDIRECTIONAL, &kwargs, params)?)
                        }
                        None => Stage::Layer(fresh(
                            BIDIRECTIONAL,
                            &kwargs,
                            &mut rng,
                            DType::F32,
                            device,
                        )?),
                    }
                }
                StageSpec::Activation(a) => Stage::Activation(*a),
                StageSpec::Glu => Stage::Glu,
                StageSpec::ResidualBegin => Stage::ResidualBegin,
                StageSpec::ResidualEnd => Stage::ResidualEnd,
                StageSpec::GateEnd => Stage::GateEnd,
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

    /// Every parameter with its name: `stages.{i}.weight`, `stages.{i}.bias`,
    /// `stages.{i}.<lrnnx key>`.
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

    /// The parallel forward over `x` (B, L, d_in) → (B, L, d_out); `time_steps` (B, L) are
    /// passed to every layer (event-driven layers need them, the others ignore them).
    pub fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor> {
        match x.dims() {
            [_, _, d] if *d == self.d_in => {}
            d => bail!(
                "network input has shape {d:?}, expected (batch, length, {})",
                self.d_in
            ),
        }
        let mut h = x.clone();
        let mut open: Vec<Tensor> = Vec::new();
        for s in &self.stages {
            h = match s {
                Stage::Dense { weight, bias } => {
                    let y = h.broadcast_matmul(&weight.as_tensor().t()?)?;
                    match bias {
                        Some(b) => y.broadcast_add(b.as_tensor())?,
                        None => y,
                    }
                }
                Stage::Layer(l) => l.forward(&h, time_steps)?,
                Stage::Activation(a) => a.apply(&h)?,
                Stage::Glu => {
                    let n = h.dim(2)? / 2;
                    let a = h.narrow(2, 0, n)?;
                    let g = h.narrow(2, n, n)?;
                    (a * sigmoid(&g)?)?
                }
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
            };
        }
        Ok(h)
    }
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
}
