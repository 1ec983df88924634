//! Bidirectional layers: a forward and a backward direction of any [`TrainLayer`], merged.
//!
//! ```text
//! f = forward direction,  b = backward direction (independent parameters, or f itself: `shared`)
//! R(x)_t = x_{L−1−t}                                   (time reversal, axis 1 of (B, L, H))
//! y_t = merge( f(x)_t , R(b(R(x)))_t )
//! merge = sum:      y_t = f_t + b_t
//! merge = project:  y_t = [f_t | b_t] Wᵀ + c           (W (H, 2H), c (H,): a learned Linear 2H → H)
//! ```
//!
//! **Event time steps.** An event layer reads `τ_k`, the time from event `k − 1` to event `k`
//! (events at times `t_0 < … < t_{L−1}`, `τ_0` the lead-in gap before the first event). The
//! backward direction sees the events in reversed order, at reversed times `s = T − t`, so the
//! gap before reversed event `j` (original event `k = L−1−j`) is the time from original event
//! `k` to its successor:
//!
//! ```text
//! τ'_j = τ_{L−j}    for j = 1 … L−1        (= t_{k+1} − t_k, k = L−1−j)
//! τ'_0 = τ_0                               (the last event has no successor: the reversed
//!                                           sequence keeps the same lead-in gap, i.e. T = t_{L−1} + τ_0)
//! ```
//!
//! ([`reversed_time_steps`].) In Event-SSM and STREAM the first step's `τ` only multiplies the
//! zero initial state, so `τ'_0` does not change their outputs.
//!
//! **Not causal.** `y_t` depends on every `x_s`, `s ≥ t`: the layer cannot be stepped
//! ([`TrainLayer::init_cache`] and [`TrainLayer::step`] return an error saying so), and
//! `lrnnx::export` refuses it. Train and evaluate it on whole sequences with
//! [`TrainLayer::forward`].
//!
//! **Building.** Through [`crate::build`] with the class [`CLASS`] (`"Bidirectional"`) and the
//! constructor arguments (the same JSON as a network's `{"bidirectional": …}` stage):
//!
//! ```text
//! {"layer": {"class": "LRU", "kwargs": {"d_model": 8, "d_state": 16}},
//!  "merge": "sum" | "project",      (default "sum")
//!  "shared": false}                 (default false)
//! ```
//!
//! Parameters: the forward direction's lrnnx names under `fwd.`, the backward direction's under
//! `bwd.` (absent when `shared`: the one layer's parameters are under `fwd.`), and with
//! `merge = "project"` `proj.weight` (H, 2H) and `proj.bias` (H,). So a checkpoint
//! ([`crate::checkpoint`]) saves and loads it as any layer: a missing, extra or mis-shaped
//! tensor is refused with its prefixed name.

use candle_core::{bail, DType, Device, Result, Tensor};
use serde_json::{json, Value};

use crate::init::{init_params as init_layer, linear, Rng};
use crate::layer::{build, usize_arg, BuildError, Cache, TrainLayer};
use crate::params::Params;

/// The class name under which [`crate::build`] and [`crate::init::fresh`] make a
/// [`Bidirectional`] layer (not an lrnnx class: lrnnx has no bidirectional layers).
pub const CLASS: &str = "Bidirectional";

/// Prefix of the forward direction's parameters.
pub const FWD: &str = "fwd.";
/// Prefix of the backward direction's parameters.
pub const BWD: &str = "bwd.";
/// Name of the projection weight (H, 2H) of [`Merge::Project`].
pub const PROJ_WEIGHT: &str = "proj.weight";
/// Name of the projection bias (H,) of [`Merge::Project`].
pub const PROJ_BIAS: &str = "proj.bias";

/// How the two directions' outputs are combined (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// `y_t = f_t + b_t`.
    Sum,
    /// `y_t = [f_t | b_t] Wᵀ + c`, a learned Linear 2H → H.
    Project,
}

impl Merge {
    /// The name used in the JSON arguments.
    pub fn name(self) -> &'static str {
        match self {
            Merge::Sum => "sum",
            Merge::Project => "project",
        }
    }
}

/// The constructor arguments of a [`Bidirectional`] layer (module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct BidirectionalSpec {
    /// Class of the wrapped layer (as for [`crate::build`]).
    pub class: String,
    /// Constructor arguments of the wrapped layer (both directions).
    pub kwargs: Value,
    /// How the directions are combined.
    pub merge: Merge,
    /// Whether one layer (one parameter set) serves both directions.
    pub shared: bool,
}

impl BidirectionalSpec {
    /// Reads the JSON arguments `{"layer": {"class", "kwargs"}, "merge", "shared"}`; the error
    /// names the field.
    pub fn from_json(v: &Value) -> std::result::Result<Self, BuildError> {
        let bad = |what: &str| BuildError::Kwarg(format!("bidirectional {what}"));
        let layer = v
            .get("layer")
            .ok_or_else(|| bad("`layer`: expected {\"class\": ..., \"kwargs\": {...}}"))?;
        let class = layer
            .get("class")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`layer.class`: expected a string"))?;
        let kwargs = layer.get("kwargs").cloned().unwrap_or_else(|| json!({}));
        let merge = match v.get("merge") {
            None => Merge::Sum,
            Some(m) => match m.as_str() {
                Some("sum") => Merge::Sum,
                Some("project") => Merge::Project,
                _ => return Err(bad(&format!("`merge`: {m} is not \"sum\" or \"project\""))),
            },
        };
        let shared = match v.get("shared") {
            None => false,
            Some(s) => s
                .as_bool()
                .ok_or_else(|| bad(&format!("`shared`: {s} is not true or false")))?,
        };
        Ok(BidirectionalSpec {
            class: class.to_owned(),
            kwargs,
            merge,
            shared,
        })
    }

    /// The JSON arguments ([`BidirectionalSpec::from_json`] reads them back).
    pub fn to_json(&self) -> Value {
        json!({
            "layer": {"class": self.class, "kwargs": self.kwargs},
            "merge": self.merge.name(),
            "shared": self.shared,
        })
    }

    /// The wrapped layer's width `d_model` (input and output width of the bidirectional layer).
    pub fn d_model(&self) -> std::result::Result<usize, BuildError> {
        usize_arg(&self.kwargs, "d_model")
            .map_err(|e| BuildError::Kwarg(format!("bidirectional `layer.kwargs`: {e}")))
    }
}

/// `R(x)_t = x_{L−1−t}`: `x` reversed along axis 1 (time), differentiable.
pub fn reverse_time(x: &Tensor) -> Result<Tensor> {
    let l = x.dim(1)?;
    let idx = (0..index_u32(l)?).rev().collect::<Vec<u32>>();
    x.index_select(&Tensor::new(idx, x.device())?, 1)
}

/// The event time steps `τ'` the backward direction sees, from the forward direction's `τ`
/// (B, L) (module doc): `τ'_0 = τ_0`, `τ'_j = τ_{L−j}` for `j ≥ 1`. Differentiable.
pub fn reversed_time_steps(tau: &Tensor) -> Result<Tensor> {
    let l = index_u32(tau.dim(1)?)?;
    let idx: Vec<u32> = (0..l).map(|j| if j == 0 { 0 } else { l - j }).collect();
    tau.index_select(&Tensor::new(idx, tau.device())?, 1)
}

fn index_u32(l: usize) -> Result<u32> {
    u32::try_from(l).map_err(|_| candle_core::Error::Msg(format!("sequence length {l} > 2^32")))
}

/// A bidirectional layer (module doc).
pub struct Bidirectional {
    spec: BidirectionalSpec,
    d_model: usize,
    fwd: Box<dyn TrainLayer>,
    /// `None` when shared.
    bwd: Option<Box<dyn TrainLayer>>,
    params: Params,
}

/// Rewrites an error of a direction's layer so that it names tensors with their prefix.
fn in_direction(e: BuildError, prefix: &str) -> BuildError {
    let what = if prefix == FWD { "forward" } else { "backward" };
    match e {
        BuildError::UnsupportedClass(c) => BuildError::UnsupportedClass(c),
        BuildError::Kwarg(m) => BuildError::Kwarg(format!("bidirectional `layer.kwargs`: {m}")),
        BuildError::Candle(e) => BuildError::Candle(candle_core::Error::Msg(format!(
            "bidirectional, {what} direction (`{prefix}`): {}",
            e.to_string()
                .replace("tensor `", &format!("tensor `{prefix}"))
        ))),
    }
}

impl Bidirectional {
    /// From the constructor arguments (module doc) and the parameters (`fwd.*`, `bwd.*`,
    /// `proj.*`); builds both directions and checks every shape. Tensors under other names are
    /// not read (a checkpoint refuses them as extra).
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let spec = BidirectionalSpec::from_json(kwargs)?;
        let d_model = spec.d_model()?;
        let split = |prefix: &str| -> Result<Params> {
            let mut p = Params::new();
            for (k, v) in params.vars() {
                if let Some(name) = k.strip_prefix(prefix) {
                    p.insert(name, v.as_tensor())?; // shares the variable
                }
            }
            Ok(p)
        };
        let fwd =
            build(&spec.class, &spec.kwargs, split(FWD)?).map_err(|e| in_direction(e, FWD))?;
        let bwd = if spec.shared {
            None
        } else {
            Some(build(&spec.class, &spec.kwargs, split(BWD)?).map_err(|e| in_direction(e, BWD))?)
        };
        let mut all = Params::new();
        for (prefix, layer) in [(FWD, Some(&fwd)), (BWD, bwd.as_ref())] {
            for (k, v) in layer.map(|l| l.params().vars()).into_iter().flatten() {
                all.insert(&format!("{prefix}{k}"), v.as_tensor())?;
            }
        }
        if spec.merge == Merge::Project {
            all.insert(
                PROJ_WEIGHT,
                &params.get(PROJ_WEIGHT, &[d_model, 2 * d_model])?,
            )?;
            all.insert(PROJ_BIAS, &params.get(PROJ_BIAS, &[d_model])?)?;
        }
        Ok(Bidirectional {
            spec,
            d_model,
            fwd,
            bwd,
            params: all,
        })
    }

    /// The constructor arguments.
    pub fn spec(&self) -> &BidirectionalSpec {
        &self.spec
    }

    /// The forward direction's layer.
    pub fn forward_layer(&self) -> &dyn TrainLayer {
        self.fwd.as_ref()
    }

    /// The backward direction's layer (the forward one when shared).
    pub fn backward_layer(&self) -> &dyn TrainLayer {
        self.bwd.as_deref().unwrap_or(self.fwd.as_ref())
    }

    fn not_causal(&self) -> candle_core::Error {
        candle_core::Error::Msg(format!(
            "Bidirectional ({}) is not causal: its output at time t depends on inputs after t \
             (the backward direction runs from the end of the sequence), so it cannot be \
             stepped one sample at a time; run `forward` over whole sequences",
            self.spec.class
        ))
    }
}

impl TrainLayer for Bidirectional {
    /// `y = merge(f(x), R(b(R(x), τ')))` (module doc); `time_steps` (B, L) go to the forward
    /// direction as they are and to the backward one as [`reversed_time_steps`].
    fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor> {
        let h = self.d_model;
        let (b, l) = match x.dims() {
            [b, l, hh] if *hh == h => (*b, *l),
            d => bail!("Bidirectional: input `x` has shape {d:?}, expected (batch, length, {h})"),
        };
        if let Some(tau) = time_steps {
            if tau.dims() != [b, l] {
                bail!(
                    "Bidirectional: `time_steps` has shape {:?}, expected (B, L) = ({b}, {l})",
                    tau.dims()
                );
            }
        }
        let yf = self.fwd.forward(x, time_steps)?;
        let tau_r = time_steps.map(reversed_time_steps).transpose()?;
        let yb = reverse_time(
            &self
                .backward_layer()
                .forward(&reverse_time(x)?, tau_r.as_ref())?,
        )?;
        if yf.dims() != [b, l, h] || yb.dims() != [b, l, h] {
            bail!(
                "Bidirectional: the directions' outputs have shapes {:?} and {:?}, expected \
                 ({b}, {l}, {h})",
                yf.dims(),
                yb.dims()
            );
        }
        match self.spec.merge {
            Merge::Sum => yf + yb,
            Merge::Project => {
                let w = self.params.get(PROJ_WEIGHT, &[h, 2 * h])?;
                let c = self.params.get(PROJ_BIAS, &[h])?;
                Tensor::cat(&[&yf, &yb], 2)?
                    .broadcast_matmul(&w.t()?)?
                    .broadcast_add(&c)
            }
        }
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// Always an error: the layer is not causal (module doc).
    fn init_cache(&self, _batch: usize) -> Result<Cache> {
        Err(self.not_causal())
    }

    /// Always an error: the layer is not causal (module doc).
    fn step(
        &self,
        _x_t: &Tensor,
        _cache: &mut Cache,
        _time_step: Option<&Tensor>,
    ) -> Result<Tensor> {
        Err(self.not_causal())
    }
}

/// Fresh parameters for [`CLASS`] with `kwargs`: each direction by its layer's lrnnx-default
/// initializer ([`crate::init::init_params`]; the backward direction drawn after the forward
/// one, so the two differ), the projection as PyTorch's `Linear(2H, H)`.
pub fn init_params(
    kwargs: &Value,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> std::result::Result<Params, BuildError> {
    let spec = BidirectionalSpec::from_json(kwargs)?;
    let h = spec.d_model()?;
    let mut p = Params::new();
    let prefixes: &[&str] = if spec.shared { &[FWD] } else { &[FWD, BWD] };
    for prefix in prefixes {
        let layer = init_layer(&spec.class, &spec.kwargs, rng, dtype, device)
            .map_err(|e| in_direction(e, prefix))?;
        for (k, v) in layer.vars() {
            p.insert(&format!("{prefix}{k}"), v.as_tensor())?;
        }
    }
    if spec.merge == Merge::Project {
        let (w, c) = linear(2 * h, h, rng, dtype, device)?;
        p.insert(PROJ_WEIGHT, &w)?;
        p.insert(PROJ_BIAS, &c)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, CheckpointError};
    use crate::init::fresh;
    use crate::network::{spec_from_json, spec_to_json, Network, StageSpec};
    use candle_core::Var;

    const S5_LTI: &str = "lrnnx.models.lti.s5.S5";
    const S5_LTV: &str = "lrnnx.models.ltv.s5.S5";
    const MAMBA: &str = "lrnnx.models.ltv.mamba.Mamba";

    fn kw(class: &str, kwargs: Value, merge: &str, shared: bool) -> Value {
        json!({"layer": {"class": class, "kwargs": kwargs}, "merge": merge, "shared": shared})
    }

    fn make(kwargs: &Value, seed: u64, dtype: DType) -> Bidirectional {
        let p = init_params(kwargs, &mut Rng::new(seed), dtype, &Device::Cpu).unwrap();
        Bidirectional::from_lrnnx(kwargs, p).unwrap()
    }

    fn uniform(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| lo + (hi - lo) * r.uniform()).collect()
    }

    fn to_f32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Steps `layer` with its own `step` over `x` (B, L, H) given as rows, with event time steps
    /// `taus` (B, L) if any; returns y (B, L, H) as rows.
    fn step_all(
        layer: &dyn TrainLayer,
        x: &[Vec<Vec<f32>>],
        taus: Option<&[Vec<f32>]>,
    ) -> Vec<Vec<Vec<f64>>> {
        let (b, l) = (x.len(), x[0].len());
        let h = x[0][0].len();
        let mut cache = layer.init_cache(b).unwrap();
        let mut y = vec![vec![Vec::new(); l]; b];
        for t in 0..l {
            let xt: Vec<f32> = (0..b).flat_map(|r| x[r][t].clone()).collect();
            let xt = Tensor::from_vec(xt, (b, h), &Device::Cpu).unwrap();
            let tau = taus.map(|ts| {
                Tensor::from_vec((0..b).map(|r| ts[r][t]).collect(), b, &Device::Cpu).unwrap()
            });
            let yt = layer.step(&xt, &mut cache, tau.as_ref()).unwrap();
            let yt: Vec<Vec<f32>> = yt.to_vec2().unwrap();
            for r in 0..b {
                y[r][t] = yt[r].iter().map(|&v| v as f64).collect();
            }
        }
        y
    }

    /// The slow reference: the forward direction stepped over `x`; the backward direction
    /// stepped over an explicitly reversed copy, with time steps rebuilt from absolute event
    /// times reversed (`s = T − t`, `T = t_{L−1} + τ_0`), its outputs put back in order; then
    /// the merge in f64.
    fn reference(
        layer: &Bidirectional,
        x: &[Vec<Vec<f32>>],
        taus: Option<&[Vec<f32>]>,
    ) -> Vec<f64> {
        let (b, l) = (x.len(), x[0].len());
        let yf = step_all(layer.forward_layer(), x, taus);
        let xr: Vec<Vec<Vec<f32>>> = x
            .iter()
            .map(|row| (0..l).map(|j| row[l - 1 - j].clone()).collect())
            .collect();
        let taus_r: Option<Vec<Vec<f32>>> = taus.map(|ts| {
            ts.iter()
                .map(|tau| {
                    // Absolute times of the events, then of the reversed events.
                    let mut t = Vec::with_capacity(l);
                    let mut acc = 0.0f64;
                    for &d in tau {
                        acc += d as f64;
                        t.push(acc);
                    }
                    let end = t[l - 1] + tau[0] as f64;
                    let s: Vec<f64> = (0..l).map(|j| end - t[l - 1 - j]).collect();
                    (0..l)
                        .map(|j| (s[j] - if j == 0 { 0.0 } else { s[j - 1] }) as f32)
                        .collect()
                })
                .collect()
        });
        let ybr = step_all(layer.backward_layer(), &xr, taus_r.as_deref());
        let h = yf[0][0].len();
        let proj = (layer.spec.merge == Merge::Project).then(|| {
            (
                flat(layer.params.vars()[PROJ_WEIGHT].as_tensor()),
                flat(layer.params.vars()[PROJ_BIAS].as_tensor()),
            )
        });
        let mut out = Vec::with_capacity(b * l * h);
        for r in 0..b {
            for t in 0..l {
                let f = &yf[r][t];
                let bk = &ybr[r][l - 1 - t];
                match &proj {
                    None => out.extend((0..h).map(|k| f[k] + bk[k])),
                    Some((w, c)) => out.extend((0..h).map(|o| {
                        c[o] + (0..h)
                            .map(|k| w[o * 2 * h + k] * f[k] + w[o * 2 * h + h + k] * bk[k])
                            .sum::<f64>()
                    })),
                }
            }
        }
        out
    }

    /// Random input rows (B, L, H) and irregular event time steps (B, L).
    fn data(b: usize, l: usize, h: usize, seed: u64) -> (Vec<Vec<Vec<f32>>>, Vec<Vec<f32>>) {
        let v = to_f32(&uniform(b * l * h, seed, -1.0, 1.0));
        let x = (0..b)
            .map(|r| {
                (0..l)
                    .map(|t| v[(r * l + t) * h..(r * l + t + 1) * h].to_vec())
                    .collect()
            })
            .collect();
        let taus = (0..b)
            .map(|r| to_f32(&uniform(l, seed + 100 + r as u64, 0.05, 10.0)))
            .collect();
        (x, taus)
    }

    fn tensor3(x: &[Vec<Vec<f32>>]) -> Tensor {
        let (b, l, h) = (x.len(), x[0].len(), x[0][0].len());
        let v: Vec<f32> = x.iter().flatten().flatten().copied().collect();
        Tensor::from_vec(v, (b, l, h), &Device::Cpu).unwrap()
    }

    fn tensor2(t: &[Vec<f32>]) -> Tensor {
        let v: Vec<f32> = t.iter().flatten().copied().collect();
        Tensor::from_vec(v, (t.len(), t[0].len()), &Device::Cpu).unwrap()
    }

    /// The parallel forward equals the slow stepped reference, for several layer kinds (event
    /// modes with irregular time steps included), both merges, shared or not, B ∈ {1, 3},
    /// L ∈ {1, 7}.
    #[test]
    fn forward_equals_stepped_reversed_reference() {
        let cases: Vec<(&str, Value, bool)> = vec![
            (
                S5_LTI,
                json!({"d_model": 3, "d_state": 4, "discretization": "zoh"}),
                false,
            ),
            ("LRU", json!({"d_model": 3, "d_state": 4}), false),
            (
                MAMBA,
                json!({"d_model": 4, "d_state": 3, "d_conv": 3, "expand": 2}),
                false,
            ),
            (
                MAMBA,
                json!({"d_model": 4, "d_state": 3, "d_conv": 3, "expand": 2}),
                true,
            ),
            (
                S5_LTV,
                json!({"d_model": 3, "d_state": 4, "discretization": "zoh"}),
                true,
            ),
            (
                S5_LTV,
                json!({"d_model": 3, "d_state": 4, "discretization": "bilinear"}),
                true,
            ),
        ];
        let mut seed = 1;
        for (class, inner, event) in &cases {
            let h = inner["d_model"].as_u64().unwrap() as usize;
            for (merge, shared) in [("sum", false), ("project", false), ("sum", true)] {
                seed += 1;
                let layer = make(&kw(class, inner.clone(), merge, shared), seed, DType::F32);
                for (b, l) in [(1, 1), (3, 1), (1, 7), (3, 7)] {
                    let (x, taus) = data(b, l, h, seed * 31 + l as u64);
                    let taus = event.then_some(taus);
                    let tt = taus.as_deref().map(tensor2);
                    let y = flat(&layer.forward(&tensor3(&x), tt.as_ref()).unwrap());
                    let want = reference(&layer, &x, taus.as_deref());
                    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
                    for (i, (a, w)) in y.iter().zip(&want).enumerate() {
                        assert!(
                            (a - w).abs() <= 2e-5 * scale,
                            "{class} event={event} {merge} shared={shared} b{b} l{l} [{i}]: \
                             {a} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// The reversal rule on numbers: events at t = 1, 1.5, 4, 4.25 (τ = 1, 0.5, 2.5, 0.25);
    /// reversed, with T = 4.25 + 1: s = 1, 1.25, 3.75, 4.25, gaps 1, 0.25, 2.5, 0.5.
    #[test]
    fn reversed_time_steps_are_the_gaps_to_the_successors() {
        let tau = Tensor::new(
            &[[1.0f32, 0.5, 2.5, 0.25], [3.0, 1.0, 2.0, 4.0]],
            &Device::Cpu,
        )
        .unwrap();
        let r: Vec<Vec<f32>> = reversed_time_steps(&tau).unwrap().to_vec2().unwrap();
        assert_eq!(r, vec![vec![1.0, 0.25, 2.5, 0.5], vec![3.0, 4.0, 2.0, 1.0]]);
        let one = Tensor::new(&[[0.7f32]], &Device::Cpu).unwrap();
        assert_eq!(
            reversed_time_steps(&one).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![0.7]]
        );
        let x = Tensor::new(&[[[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]]], &Device::Cpu).unwrap();
        assert_eq!(
            reverse_time(&x).unwrap().to_vec3::<f32>().unwrap(),
            vec![vec![vec![5.0, 6.0], vec![3.0, 4.0], vec![1.0, 2.0]]]
        );
    }

    /// Gradients (every parameter, `x`, and the event time steps) against central finite
    /// differences in f64, for both merges and the shared flag.
    #[test]
    fn gradients_match_finite_differences() {
        let cases = [
            (
                "LRU",
                json!({"d_model": 2, "d_state": 3}),
                "sum",
                false,
                false,
            ),
            (
                "LRU",
                json!({"d_model": 2, "d_state": 3}),
                "project",
                false,
                false,
            ),
            (
                "LRU",
                json!({"d_model": 2, "d_state": 3}),
                "sum",
                true,
                false,
            ),
            (
                S5_LTV,
                json!({"d_model": 2, "d_state": 2, "discretization": "zoh"}),
                "project",
                false,
                true,
            ),
        ];
        for (i, (class, inner, merge, shared, event)) in cases.into_iter().enumerate() {
            let kwargs = kw(class, inner, merge, shared);
            let base = make(&kwargs, 40 + i as u64, DType::F64);
            let (b, l, h) = (2, 4, 2);
            let dev = &Device::Cpu;
            let xv = uniform(b * l * h, 7 + i as u64, -1.0, 1.0);
            let tv = uniform(b * l, 9 + i as u64, 0.1, 1.5);
            let g = Tensor::from_vec(uniform(b * l * h, 8, -1.0, 1.0), (b, l, h), dev).unwrap();
            let loss = |layer: &Bidirectional, x: &Tensor, tau: &Tensor| -> Tensor {
                let y = layer.forward(x, event.then_some(tau)).unwrap();
                (y * &g).unwrap().sum_all().unwrap()
            };
            let x =
                Var::from_tensor(&Tensor::from_vec(xv.clone(), (b, l, h), dev).unwrap()).unwrap();
            let tau =
                Var::from_tensor(&Tensor::from_vec(tv.clone(), (b, l), dev).unwrap()).unwrap();
            let grads = loss(&base, x.as_tensor(), tau.as_tensor())
                .backward()
                .unwrap();
            let value = |p: &Params, xv: &[f64], tv: &[f64]| -> f64 {
                let layer = Bidirectional::from_lrnnx(&kwargs, p.clone()).unwrap();
                let x = Tensor::from_vec(xv.to_vec(), (b, l, h), dev).unwrap();
                let tau = Tensor::from_vec(tv.to_vec(), (b, l), dev).unwrap();
                loss(&layer, &x, &tau).to_scalar::<f64>().unwrap()
            };
            let copy = |changed: Option<(&str, Vec<f64>)>| -> Params {
                let mut q = Params::new();
                for (name, v) in base.params().vars() {
                    let t = match &changed {
                        Some((c, vals)) if c == name => {
                            Tensor::from_vec(vals.clone(), v.dims(), dev).unwrap()
                        }
                        _ => v.as_tensor().detach().copy().unwrap(),
                    };
                    q.insert(name, &t).unwrap();
                }
                q
            };
            let check = |what: &str, ga: &[f64], fd: &dyn Fn(usize, f64) -> f64| {
                for (k, a) in ga.iter().enumerate() {
                    let d = (fd(k, 1e-6) - fd(k, -1e-6)) / 2e-6;
                    assert!(
                        (a - d).abs() <= 1e-6 * (1.0 + d.abs()),
                        "{class} {merge} shared={shared} {what}[{k}]: {a} vs {d}"
                    );
                }
            };
            let names: Vec<String> = base.params().vars().keys().cloned().collect();
            if shared {
                assert!(names.iter().all(|n| !n.starts_with(BWD)), "{names:?}");
            }
            assert_eq!(
                names.iter().any(|n| n.starts_with("proj.")),
                merge == "project"
            );
            for name in &names {
                let var = &base.params().vars()[name];
                let ga = flat(grads.get(var.as_tensor()).unwrap());
                let v0 = flat(var.as_tensor());
                check(name, &ga, &|k, e| {
                    let mut v = v0.clone();
                    v[k] += e;
                    value(&copy(Some((name, v))), &xv, &tv)
                });
            }
            let p0 = copy(None);
            let gx = flat(grads.get(x.as_tensor()).unwrap());
            check("x", &gx, &|k, e| {
                let mut v = xv.clone();
                v[k] += e;
                value(&p0, &v, &tv)
            });
            if event {
                let gt = flat(grads.get(tau.as_tensor()).unwrap());
                check("time_steps", &gt, &|k, e| {
                    let mut v = tv.clone();
                    v[k] += e;
                    value(&p0, &xv, &v)
                });
            }
        }
    }

    /// Shared: one parameter set (no `bwd.*`), and the same outputs as an unshared layer whose
    /// backward direction holds copies of the forward one's parameters.
    #[test]
    fn shared_uses_one_parameter_set() {
        let inner = json!({"d_model": 3, "d_state": 4});
        let shared = make(&kw("LRU", inner.clone(), "sum", true), 5, DType::F32);
        let n_lru = 8;
        assert_eq!(shared.params().vars().len(), n_lru);
        assert!(shared.params().vars().keys().all(|k| k.starts_with(FWD)));
        let mut p = Params::new();
        for (k, v) in shared.params().vars() {
            p.insert(k, v.as_tensor()).unwrap();
            let copy = v.as_tensor().copy().unwrap();
            p.insert(&format!("{BWD}{}", &k[FWD.len()..]), &copy)
                .unwrap();
        }
        let two = Bidirectional::from_lrnnx(&kw("LRU", inner, "sum", false), p).unwrap();
        assert_eq!(two.params().vars().len(), 2 * n_lru);
        let (x, _) = data(2, 6, 3, 3);
        let x = tensor3(&x);
        let a = flat(&shared.forward(&x, None).unwrap());
        let b = flat(&two.forward(&x, None).unwrap());
        assert_eq!(a, b);
        // The shared layer's variables are the forward layer's own (no copy).
        let fwd_var = &shared.forward_layer().params().vars()["nu_log"];
        assert_eq!(
            shared.params().vars()["fwd.nu_log"].as_tensor().id(),
            fwd_var.as_tensor().id()
        );
    }

    /// The output at t depends on x at t + k for the bidirectional layer, not for its forward
    /// direction alone; also through a network stage.
    #[test]
    fn bidirectional_sees_the_future() {
        let inner = json!({"d_model": 3, "d_state": 4});
        for merge in ["sum", "project"] {
            let bi = make(&kw("LRU", inner.clone(), merge, false), 11, DType::F32);
            let (x, _) = data(2, 9, 3, 4);
            let x0 = tensor3(&x);
            let mut x2 = x.clone();
            x2[1][6][0] += 0.5; // batch row 1, t + k = 6
            let x1 = tensor3(&x2);
            let at = |y: Tensor, r: usize, t: usize| -> Vec<f64> {
                flat(&y.get(r).unwrap().get(t).unwrap())
            };
            let uni = bi.forward_layer();
            for t in 0..6 {
                assert_eq!(
                    at(uni.forward(&x0, None).unwrap(), 1, t),
                    at(uni.forward(&x1, None).unwrap(), 1, t)
                );
                let (a, b) = (
                    at(bi.forward(&x0, None).unwrap(), 1, t),
                    at(bi.forward(&x1, None).unwrap(), 1, t),
                );
                let diff = a
                    .iter()
                    .zip(&b)
                    .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
                assert!(diff > 1e-6, "{merge} t={t}: output unchanged");
            }
            // The other batch row is untouched.
            assert_eq!(
                flat(&bi.forward(&x0, None).unwrap().get(0).unwrap()),
                flat(&bi.forward(&x1, None).unwrap().get(0).unwrap())
            );
        }
        // Through a network.
        let spec = spec_from_json(&json!([
            {"dense": {"d_in": 1, "d_out": 3}},
            {"bidirectional": {"layer": {"class": "LRU", "kwargs": {"d_model": 3, "d_state": 4}}, "merge": "project"}},
            {"dense": {"d_in": 3, "d_out": 1}}
        ]))
        .unwrap();
        let net = Network::new(&spec, 1, 3, &Device::Cpu).unwrap();
        let mut v = to_f32(&uniform(8, 2, -1.0, 1.0));
        let y0 = flat(
            &net.forward(
                &Tensor::from_vec(v.clone(), (1, 8, 1), &Device::Cpu).unwrap(),
                None,
            )
            .unwrap(),
        );
        v[7] += 1.0;
        let y1 = flat(
            &net.forward(&Tensor::from_vec(v, (1, 8, 1), &Device::Cpu).unwrap(), None)
                .unwrap(),
        );
        assert!((y0[0] - y1[0]).abs() > 1e-6);
    }

    /// Network stage: JSON round trip, widths checked, parameters named `stages.{i}.fwd.*`.
    #[test]
    fn network_stage_json_and_widths() {
        let stage = json!({"bidirectional": {
            "layer": {"class": "LRU", "kwargs": {"d_model": 4, "d_state": 2}},
            "merge": "project", "shared": false}});
        let spec = spec_from_json(&json!([stage])).unwrap();
        assert!(matches!(&spec[0], StageSpec::Bidirectional(b) if b.merge == Merge::Project));
        assert_eq!(spec_to_json(&spec), json!([stage]));
        let net = Network::new(&spec, 4, 1, &Device::Cpu).unwrap();
        let names: Vec<String> = net.vars().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), 2 * 8 + 2);
        for n in [
            "stages.0.fwd.nu_log",
            "stages.0.bwd.D",
            "stages.0.proj.weight",
        ] {
            assert!(names.iter().any(|k| k == n), "{n}: {names:?}");
        }
        assert_eq!(net.layer_params(0).unwrap().vars().len(), 18);
        // In f64 too: every parameter of the stage in the network's dtype, the forward in f64
        // equal to the f32 network's (same seed) to f32 rounding.
        let net64 = Network::with_dtype(&spec, 4, 1, &Device::Cpu, DType::F64).unwrap();
        assert!(net64.vars().iter().all(|(_, v)| v.dtype() == DType::F64));
        let xv: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin()).collect();
        let x32 = Tensor::from_vec(xv, (1, 5, 4), &Device::Cpu).unwrap();
        let y32 = flat(&net.forward(&x32, None).unwrap());
        let y64 = net64
            .forward(&x32.to_dtype(DType::F64).unwrap(), None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(y32.len(), y64.len());
        for (a, b) in y32.iter().zip(&y64) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let e = Network::new(&spec, 3, 1, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("stage 0") && e.contains("d_model 4"), "{e}");
        // With a rate change, the input is not padded: its length must be a multiple.
        let rated = spec_from_json(&json!([
            {"downsample": {"factor": 2, "pooling": "mean"}},
            {"bidirectional": {"layer": {"class": "LRU", "kwargs": {"d_model": 1, "d_state": 2}}}}
        ]))
        .unwrap();
        let net = Network::new(&rated, 1, 1, &Device::Cpu).unwrap();
        let x = |l: usize| Tensor::zeros((1, l, 1), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x(6), None).unwrap().dims(), [1, 3, 1]);
        let e = net.forward(&x(5), None).err().unwrap().to_string();
        assert!(
            e.contains("bidirectional") && e.contains("multiple of 2"),
            "{e}"
        );
        for (bad, want) in [
            (json!({"bidirectional": {"merge": "sum"}}), "`layer`"),
            (
                json!({"bidirectional": {"layer": {"class": "LRU"}, "merge": "mean"}}),
                "`merge`",
            ),
            (
                json!({"bidirectional": {"layer": {"class": "LRU"}, "shared": 1}}),
                "`shared`",
            ),
        ] {
            let e = spec_from_json(&json!([bad])).err().unwrap().to_string();
            assert!(e.contains("stage 0") && e.contains(want), "{e}");
        }
    }

    /// Step and init_cache refuse, naming the reason; wrong shapes and parameters are errors
    /// naming the tensor.
    #[test]
    fn errors() {
        let kwargs = kw("LRU", json!({"d_model": 3, "d_state": 4}), "project", false);
        let layer = make(&kwargs, 2, DType::F32);
        let e = layer.init_cache(2).err().unwrap().to_string();
        assert!(e.contains("not causal"), "{e}");
        let mut cache = fresh(
            "LRU",
            &json!({"d_model": 3, "d_state": 4}),
            &mut Rng::new(1),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
        .init_cache(1)
        .unwrap();
        let xt = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
        let e = layer.step(&xt, &mut cache, None).err().unwrap().to_string();
        assert!(e.contains("not causal"), "{e}");
        // Input shapes.
        let x = Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu).unwrap();
        let e = layer.forward(&x, None).err().unwrap().to_string();
        assert!(e.contains("`x`"), "{e}");
        let x = Tensor::zeros((2, 5, 3), DType::F32, &Device::Cpu).unwrap();
        let tau = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let e = layer.forward(&x, Some(&tau)).err().unwrap().to_string();
        assert!(e.contains("`time_steps`"), "{e}");
        // An event layer without time steps still runs (ordinary mode); with them it runs
        // both directions in event mode.
        let ev = make(
            &kw(
                S5_LTV,
                json!({"d_model": 3, "d_state": 2, "discretization": "zoh"}),
                "sum",
                false,
            ),
            3,
            DType::F32,
        );
        let tau = Tensor::ones((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(ev.forward(&x, Some(&tau)).unwrap().dims(), [2, 5, 3]);
        // Parameters: missing, mis-shaped, named with their prefix.
        let full = layer.params().clone();
        let without = |skip: &str| {
            let mut p = Params::new();
            for (k, v) in full.vars() {
                if k != skip {
                    p.insert(k, v.as_tensor()).unwrap();
                }
            }
            p
        };
        for name in ["bwd.B_re", "fwd.D", "proj.weight", "proj.bias"] {
            let e = Bidirectional::from_lrnnx(&kwargs, without(name))
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains(&format!("`{name}`")) && e.contains("missing"),
                "{e}"
            );
        }
        let mut p = without("proj.weight");
        p.insert(
            "proj.weight",
            &Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let e = Bidirectional::from_lrnnx(&kwargs, p)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`proj.weight`") && e.contains("shape"), "{e}");
        let mut p = without("bwd.C_im");
        p.insert(
            "bwd.C_im",
            &Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let e = Bidirectional::from_lrnnx(&kwargs, p)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`bwd.C_im`") && e.contains("shape"), "{e}");
        // Arguments.
        let e = Bidirectional::from_lrnnx(
            &kw("Nope", json!({"d_model": 3}), "sum", false),
            Params::new(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("Nope"), "{e}");
        let e = Bidirectional::from_lrnnx(
            &kw("LRU", json!({"d_state": 3}), "sum", false),
            Params::new(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("d_model"), "{e}");
    }

    /// Checkpoints: a bidirectional layer saves and loads (Mamba's kept-unused key under both
    /// prefixes included); an extra tensor (a `bwd.*` of a shared layer, a `proj.*` of a sum,
    /// an unknown prefix) or a mis-shaped one is refused with its name.
    #[test]
    fn checkpoint_round_trip_and_refusals() {
        let mamba = json!({"d_model": 4, "d_state": 3, "d_conv": 3, "expand": 2});
        for (class, inner, merge, shared) in [
            ("LRU", json!({"d_model": 3, "d_state": 4}), "project", false),
            (MAMBA, mamba.clone(), "sum", false),
            (MAMBA, mamba, "project", true),
        ] {
            let kwargs = kw(class, inner, merge, shared);
            let layer = make(&kwargs, 9, DType::F32);
            let bytes = Checkpoint::new(CLASS, &kwargs, layer.params().clone())
                .unwrap()
                .to_bytes()
                .unwrap();
            let back = Checkpoint::from_bytes(&bytes).unwrap().build().unwrap();
            let h = kwargs["layer"]["kwargs"]["d_model"].as_u64().unwrap() as usize;
            let (x, _) = data(2, 5, h, 1);
            let x = tensor3(&x);
            assert_eq!(
                flat(&back.forward(&x, None).unwrap()),
                flat(&layer.forward(&x, None).unwrap())
            );
            assert_eq!(back.params().vars().len(), layer.params().vars().len());
            let extra = if shared {
                "bwd.D"
            } else if merge == "sum" {
                "proj.bias"
            } else {
                "side.D"
            };
            let mut p = layer.params().clone();
            p.insert(extra, &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())
                .unwrap();
            let e = Checkpoint::new(CLASS, &kwargs, p).err().unwrap();
            assert!(
                matches!(&e, CheckpointError::Extra { name, .. } if name == extra),
                "{e}"
            );
        }
        let kwargs = kw("LRU", json!({"d_model": 3, "d_state": 4}), "sum", false);
        let layer = make(&kwargs, 9, DType::F32);
        let mut p = layer.params().clone();
        p.insert(
            "bwd.nu_log",
            &Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let e = Checkpoint::new(CLASS, &kwargs, p)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`bwd.nu_log`"), "{e}");
    }
}
