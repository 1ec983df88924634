//! RG-LRU, the Real-Gated Linear Recurrent Unit of Griffin (lrnnx
//! `lrnnx.models.ltv.rglru.RGLRU`, spec §11), trainable.
//!
//! ```text
//! g_t = GELU(W_g h_t + b_g)                     (exact erf GELU; b_g only with `bias`)
//! u_t = W_in h_t + b_in                         (b_in only with `bias`)
//! x_t = b_conv + Σ_{w<k} W_conv[:, 0, w] ⊙ u_{t−(k−1)+w}   (depthwise causal conv, u_{<0} = 0,
//!                                                           no activation; b_conv with `conv_bias`)
//! r_t = σ(W_r x_t + b_r),   i_t = σ(W_i x_t + b_i)
//! a   = σ(a_log),   Ā_t = a^{c·r_t} = exp(c·r_t · ln σ(a_log))
//! s_t = Ā_t ⊙ s_{t−1} + sqrt(1 − Ā_t²) ⊙ (i_t ⊙ x_t)        (s_{−1} = 0; the real scan over t)
//! y_t = W_out (g_t ⊙ s_t) + b_out               (b_out only with `bias`)
//! ```
//!
//! Parameters (lrnnx names, D = `int(expand · d_model)`, k = `d_conv`): `gate_proj.weight`
//! (D,H), `in_proj.weight` (D,H), `conv1d.weight` (D,1,k), `recurrent_gate_proj.weight` (D,D) +
//! `.bias` (D), `input_gate_proj.weight` (D,D) + `.bias` (D), `a_log` (D,1), `out_proj.weight`
//! (H,D); with `bias`: `gate_proj.bias` (D), `in_proj.bias` (D), `out_proj.bias` (H); with
//! `conv_bias` (default): `conv1d.bias` (D). Constructor arguments: `d_model`, `d_conv` (4),
//! `expand` (1), `c` (8.0), `bias` (false), `conv_bias` (true); `a_init_range`, `use_fast_path`
//! and `layer_idx` do not change the numbers.
//!
//! **Decay.** lrnnx uses `a = σ(a_log)` (spec §18.4), kept here so that lrnnx checkpoints give
//! lrnnx's numbers; `ln σ(a_log)` is evaluated stably as `min(a_log, 0) − ln(1 + e^{−|a_log|})`.
//!
//! **Input gain.** `sqrt(1 − Ā²)` is evaluated as `sqrt(−expm1(2e))`, `e = ln Ā = c·r·ln a`
//! (as lrnnx-core does), with `expm1` written through the exact identity
//! `−expm1(2e) = −2·tanh(e)/(1 − tanh(e))` (candle has no `expm1`): free of the cancellation of
//! `1 − Ā²` when `Ā` is close to 1 (lrnnx's f32 formula loses up to 1% there), and equal to it
//! in exact arithmetic, so gradients are lrnnx's.

use candle_core::{bail, Result, Tensor};
use serde_json::Value;

use crate::layer::{usize_arg, BuildError, Cache, TrainLayer};
use crate::params::Params;
use crate::scan::real_scan;

/// `ln σ(x) = min(x, 0) − ln(1 + e^{−|x|})`, elementwise, without overflow; `min(x, 0)` is
/// written as `(x − |x|)/2` so that the gradient at `x = 0` is the exact `½`.
pub(crate) fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    let min0 = ((x - &abs)? * 0.5)?;
    min0 - (abs.neg()?.exp()? + 1.0)?.log()?
}

/// `ln(1 + z)` for `z ∈ [0, 1]` to full precision (candle has no `log1p`): the alternating series
/// `z·Σ_{k=1}^{9} (−z)^{k−1}/k` below `0.1` (truncation `< z¹⁰/10 ≤ 10⁻¹¹`), `ln(1 + z)` above.
/// Both branches are finite on `[0, 1]`, so the gradient through the selection is too.
fn log1p_unit(z: &Tensor) -> Result<Tensor> {
    let mut acc = (z.ones_like()? / 9.0)?;
    for k in (1..9).rev() {
        acc = (z * acc)?.affine(-1.0, 1.0 / k as f64)?;
    }
    let series = (z * acc)?;
    z.lt(0.1)?.where_cond(&series, &(z + 1.0)?.log()?)
}

/// [`log_sigmoid`] to full relative precision also for large `x` (where `ln σ(x) ≈ −e^{−x}` and
/// `ln(1 + e^{−x})` would round away): used for the decay `ln σ(a_log)`, whose precision sets
/// that of `Ā` close to 1.
fn log_sigmoid_precise(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    let min0 = ((x - &abs)? * 0.5)?;
    min0 - log1p_unit(&abs.neg()?.exp()?)?
}

/// The logistic sigmoid `σ(x) = exp(ln σ(x))` (candle-core has none; see [`log_sigmoid`]).
pub(crate) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    log_sigmoid(x)?.exp()
}

/// `x Wᵀ (+ b)` over the last axis of `x`.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Checks that `x` is `(B, L, h)` with the layer's feature count; the error names `x`.
pub(crate) fn check_input(x: &Tensor, h: usize) -> Result<(usize, usize)> {
    match x.dims() {
        [b, l, hx] if *hx == h => Ok((*b, *l)),
        d => bail!("tensor `x` has shape {d:?}, expected (B, L, {h})"),
    }
}

/// Reads an optional number (default when absent).
fn f64_arg_or(kwargs: &Value, name: &str, default: f64) -> std::result::Result<f64, BuildError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected a number"))),
    }
}

/// Reads an optional boolean (default when absent).
fn bool_arg_or(kwargs: &Value, name: &str, default: bool) -> std::result::Result<bool, BuildError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected a boolean"))),
    }
}

/// A trainable RG-LRU layer.
pub struct RgLru {
    d_model: usize,
    d_inner: usize,
    d_conv: usize,
    c: f64,
    bias: bool,
    conv_bias: bool,
    params: Params,
}

/// The parameters, shapes checked; absent biases are `None`.
struct Weights {
    gate_w: Tensor,
    gate_b: Option<Tensor>,
    in_w: Tensor,
    in_b: Option<Tensor>,
    conv_w: Tensor,
    conv_b: Option<Tensor>,
    rg_w: Tensor,
    rg_b: Tensor,
    ig_w: Tensor,
    ig_b: Tensor,
    a_log: Tensor,
    out_w: Tensor,
    out_b: Option<Tensor>,
}

impl RgLru {
    /// From lrnnx's constructor arguments (module doc) and its parameters; checks every
    /// parameter's shape.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let d_model = usize_arg(kwargs, "d_model")?;
        let expand = f64_arg_or(kwargs, "expand", 1.0)?;
        if !(expand.is_finite() && expand > 0.0) {
            return Err(BuildError::Kwarg(format!(
                "`expand`: must be a positive number, got {expand}"
            )));
        }
        let d_conv = match kwargs.get("d_conv") {
            None | Some(Value::Null) => 4,
            Some(_) => usize_arg(kwargs, "d_conv")?,
        };
        let c = f64_arg_or(kwargs, "c", 8.0)?;
        if !(c.is_finite() && c > 0.0) {
            return Err(BuildError::Kwarg(format!(
                "`c`: must be a positive finite number, got {c}"
            )));
        }
        // lrnnx: d_inner = int(expand · d_model)
        let d_inner = (expand * d_model as f64) as usize;
        if d_model == 0 || d_inner == 0 || d_conv == 0 {
            return Err(BuildError::Kwarg(
                "`d_model`, `int(expand·d_model)` and `d_conv` must be positive".into(),
            ));
        }
        let layer = RgLru {
            d_model,
            d_inner,
            d_conv,
            c,
            bias: bool_arg_or(kwargs, "bias", false)?,
            conv_bias: bool_arg_or(kwargs, "conv_bias", true)?,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// The parameters with their shapes checked.
    fn weights(&self) -> Result<Weights> {
        let (h, d, k) = (self.d_model, self.d_inner, self.d_conv);
        let p = &self.params;
        let opt = |on: bool, name: &str, shape: &[usize]| -> Result<Option<Tensor>> {
            if on {
                p.get(name, shape).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Weights {
            gate_w: p.get("gate_proj.weight", &[d, h])?,
            gate_b: opt(self.bias, "gate_proj.bias", &[d])?,
            in_w: p.get("in_proj.weight", &[d, h])?,
            in_b: opt(self.bias, "in_proj.bias", &[d])?,
            conv_w: p.get("conv1d.weight", &[d, 1, k])?,
            conv_b: opt(self.conv_bias, "conv1d.bias", &[d])?,
            rg_w: p.get("recurrent_gate_proj.weight", &[d, d])?,
            rg_b: p.get("recurrent_gate_proj.bias", &[d])?,
            ig_w: p.get("input_gate_proj.weight", &[d, d])?,
            ig_b: p.get("input_gate_proj.bias", &[d])?,
            a_log: p.get("a_log", &[d, 1])?,
            out_w: p.get("out_proj.weight", &[h, d])?,
            out_b: opt(self.bias, "out_proj.bias", &[h])?,
        })
    }
}

/// `(Ā, sqrt(1 − Ā²) ⊙ i ⊙ x)` from the conv output `x` (any leading axes, D last) and
/// `c·ln σ(a_log)` (D,): the decay and the input term of the recurrence (module doc).
fn gates(xc: &Tensor, w: &Weights, c_ln_a: &Tensor) -> Result<(Tensor, Tensor)> {
    let r = sigmoid(&linear(xc, &w.rg_w, Some(&w.rg_b))?)?;
    let i = sigmoid(&linear(xc, &w.ig_w, Some(&w.ig_b))?)?;
    // e = ln Ā = c·r·ln σ(a_log)
    let e = r.broadcast_mul(c_ln_a)?;
    let a_bar = e.exp()?;
    // sqrt(1 − Ā²) = sqrt(−expm1(2e)) = sqrt(−2 tanh(e) / (1 − tanh(e)))
    let t = e.tanh()?;
    let gain = ((t.affine(-2.0, 0.0)? / t.affine(-1.0, 1.0)?)?).sqrt()?;
    Ok((a_bar, ((gain * i)? * xc)?))
}

impl TrainLayer for RgLru {
    /// The parallel forward (module doc); `time_steps` is ignored, as lrnnx ignores
    /// `integration_timesteps`.
    fn forward(&self, x: &Tensor, _time_steps: Option<&Tensor>) -> Result<Tensor> {
        let (_, l) = check_input(x, self.d_model)?;
        let w = self.weights()?;
        let (d, k) = (self.d_inner, self.d_conv);
        let g = linear(x, &w.gate_w, w.gate_b.as_ref())?.gelu_erf()?;
        let u = linear(x, &w.in_w, w.in_b.as_ref())?;
        // Causal depthwise conv: one shifted view per tap over u padded with k−1 leading zeros.
        let up = u.pad_with_zeros(1, k - 1, 0)?;
        let taps = w.conv_w.reshape((d, k))?;
        let mut xc = up
            .narrow(1, 0, l)?
            .broadcast_mul(&taps.narrow(1, 0, 1)?.squeeze(1)?)?;
        for tap in 1..k {
            xc = (xc
                + up.narrow(1, tap, l)?
                    .broadcast_mul(&taps.narrow(1, tap, 1)?.squeeze(1)?)?)?;
        }
        if let Some(b) = &w.conv_b {
            xc = xc.broadcast_add(b)?;
        }
        let c_ln_a = (log_sigmoid_precise(&w.a_log.reshape(d)?)? * self.c)?;
        let (a_bar, u) = gates(&xc, &w, &c_ln_a)?;
        let s = real_scan(&a_bar, &u)?;
        linear(&(g * s)?, &w.out_w, w.out_b.as_ref())
    }

    /// State: `[window, s]`: the last `k` conv inputs (B, k, D), oldest first (lrnnx's
    /// `conv_state` (B, D, k)), and the recurrent state `s` (B, D) (lrnnx's `lrnn_state`).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let w = self.weights()?;
        let (dtype, dev) = (w.a_log.dtype(), w.a_log.device().clone());
        let window = Tensor::zeros((batch, self.d_conv, self.d_inner), dtype, &dev)?;
        let s = Tensor::zeros((batch, self.d_inner), dtype, &dev)?;
        let c_ln_a = (log_sigmoid_precise(&w.a_log.reshape(self.d_inner)?)? * self.c)?;
        Ok(Cache::new(
            "RG-LRU",
            self.params(),
            batch,
            dtype,
            vec![window, s],
            vec![c_ln_a],
        ))
    }

    /// One step of the module doc's equations.
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        cache.check_step("RG-LRU", self.params(), x_t, self.d_model, time_step, false)?;
        let w = self.weights()?;
        let (d, k) = (self.d_inner, self.d_conv);
        let g = linear(x_t, &w.gate_w, w.gate_b.as_ref())?.gelu_erf()?;
        let u = linear(x_t, &w.in_w, w.in_b.as_ref())?;
        let window = crate::mamba::shift_in(&cache.state[0], &u, k)?; // (B, k, D)
        let mut xc = window
            .broadcast_mul(&w.conv_w.reshape((d, k))?.t()?)?
            .sum(1)?;
        if let Some(b) = &w.conv_b {
            xc = xc.broadcast_add(b)?;
        }
        let (a_bar, u) = gates(&xc, &w, &cache.consts[0])?;
        let s = ((a_bar * &cache.state[1])? + u)?;
        let y = linear(&(g * &s)?, &w.out_w, w.out_b.as_ref())?;
        cache.state = vec![window, s];
        Ok(y)
    }

    fn params(&self) -> &Params {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use lrnnx_core::{run_sequence, Layer, RgLruConfig, SliceParams, TensorView};
    use serde_json::json;

    /// Uniform values in `[lo, hi)` from a seeded xorshift.
    fn rand(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
            })
            .collect()
    }

    /// lrnnx parameters of one configuration, as named flat f64 arrays with shapes.
    struct Case {
        cfg: RgLruConfig,
        kwargs: Value,
        tensors: Vec<(&'static str, Vec<usize>, Vec<f64>)>,
    }

    impl Case {
        fn new(
            h: usize,
            expand: f64,
            k: usize,
            bias: bool,
            conv_bias: bool,
            a_log: (f64, f64),
            seed: u64,
        ) -> Case {
            let d = (expand * h as f64) as usize;
            let cfg = RgLruConfig {
                d_model: h,
                d_inner: d,
                d_conv: k,
                c: 8.0,
                bias,
                conv_bias,
            };
            let kwargs = json!({"d_model": h, "expand": expand, "d_conv": k, "bias": bias,
                                "conv_bias": conv_bias});
            let mut tensors = vec![];
            let mut add = |name, shape: &[usize], lo, hi| {
                let n = shape.iter().product();
                let s = seed * 100 + tensors.len() as u64;
                tensors.push((name, shape.to_vec(), rand(n, s, lo, hi)));
            };
            add("gate_proj.weight", &[d, h], -0.6, 0.6);
            add("in_proj.weight", &[d, h], -0.6, 0.6);
            add("conv1d.weight", &[d, 1, k], -0.6, 0.6);
            add("recurrent_gate_proj.weight", &[d, d], -0.6, 0.6);
            add("recurrent_gate_proj.bias", &[d], -0.5, 0.5);
            add("input_gate_proj.weight", &[d, d], -0.6, 0.6);
            add("input_gate_proj.bias", &[d], -0.5, 0.5);
            add("a_log", &[d, 1], a_log.0, a_log.1);
            add("out_proj.weight", &[h, d], -0.6, 0.6);
            if conv_bias {
                add("conv1d.bias", &[d], -0.3, 0.3);
            }
            if bias {
                add("gate_proj.bias", &[d], -0.3, 0.3);
                add("in_proj.bias", &[d], -0.3, 0.3);
                add("out_proj.bias", &[h], -0.3, 0.3);
            }
            Case {
                cfg,
                kwargs,
                tensors,
            }
        }

        fn params(&self, dtype: DType) -> Params {
            let mut p = Params::new();
            for (name, shape, v) in &self.tensors {
                let t = Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu).unwrap();
                p.insert(name, &t.to_dtype(dtype).unwrap()).unwrap();
            }
            p
        }

        fn layer(&self, dtype: DType) -> RgLru {
            RgLru::from_lrnnx(&self.kwargs, self.params(dtype)).unwrap()
        }

        /// The lrnnx-core layer stepped over each batch row of `x` (B, L, H).
        fn core_outputs(&self, x: &[f32], b: usize) -> Vec<f32> {
            let data: Vec<Vec<f32>> = self
                .tensors
                .iter()
                .map(|(_, _, v)| v.iter().map(|&x| x as f32).collect())
                .collect();
            let entries: Vec<(&str, TensorView<'_>)> = self
                .tensors
                .iter()
                .zip(&data)
                .map(|((n, s, _), d)| (*n, TensorView { data: d, shape: s }))
                .collect();
            let core = lrnnx_core::RgLru::from_lrnnx(
                self.cfg,
                &SliceParams { entries: &entries },
                vec![0.0; self.cfg.weights_len()],
            )
            .unwrap();
            let row = x.len() / b;
            let mut ys = vec![0.0; x.len()];
            for (xr, yr) in x.chunks(row).zip(ys.chunks_mut(row)) {
                let mut st = vec![0.0; core.state_len()];
                run_sequence(&core, &mut st, xr, yr).unwrap();
            }
            ys
        }
    }

    /// Cross-mode parity: the parallel forward equals lrnnx-core's step-by-step layer.
    #[test]
    fn forward_matches_core_stepping() {
        let cases = [
            Case::new(3, 1.0, 4, false, true, (-0.5, 3.0), 1),
            Case::new(3, 2.0, 1, true, false, (-2.0, 2.0), 2),
            Case::new(4, 1.5, 3, true, true, (-1.0, 1.0), 3),
            // Decays close to 1 (a^c ≈ 0.9999): the regime of the precise input gain.
            Case::new(3, 1.0, 2, false, true, (9.0, 12.0), 4),
        ];
        for (ci, case) in cases.iter().enumerate() {
            let layer = case.layer(DType::F32);
            for b in [1, 3] {
                for l in [1, 7, 64] {
                    let h = case.cfg.d_model;
                    let xv: Vec<f32> = rand(b * l * h, 7 + l as u64, -2.0, 2.0)
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    let x = Tensor::from_vec(xv.clone(), (b, l, h), &Device::Cpu).unwrap();
                    let y = layer.forward(&x, None).unwrap();
                    let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let want = case.core_outputs(&xv, b);
                    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                    for (i, (p, q)) in y.iter().zip(&want).enumerate() {
                        assert!(
                            (p - q).abs() <= 2e-6 * scale,
                            "case {ci} b={b} l={l} [{i}]: {p} vs {q} (scale {scale})"
                        );
                    }
                }
            }
        }
    }

    /// Gradients of `L = Σ y ⊙ w` against central finite differences, in f64.
    #[test]
    fn gradients_match_finite_differences() {
        for case in [
            Case::new(2, 1.5, 2, true, true, (-1.0, 2.0), 5),
            Case::new(2, 1.0, 3, false, false, (8.0, 11.0), 6),
        ] {
            let (b, l, h) = (2, 5, case.cfg.d_model);
            let xv = rand(b * l * h, 50, -1.5, 1.5);
            let w =
                Tensor::from_vec(rand(b * l * h, 51, -1.0, 1.0), (b, l, h), &Device::Cpu).unwrap();
            let loss = |layer: &RgLru, x: &Tensor| -> Tensor {
                (layer.forward(x, None).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let x =
                Var::from_tensor(&Tensor::from_vec(xv.clone(), (b, l, h), &Device::Cpu).unwrap())
                    .unwrap();
            let layer = case.layer(DType::F64);
            let grads = loss(&layer, x.as_tensor()).backward().unwrap();
            let grad_of = |name: &str| -> Vec<f64> {
                let t = if name == "x" {
                    x.as_tensor()
                } else {
                    layer.params().vars()[name].as_tensor()
                };
                grads
                    .get(t)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let x0 = x.as_tensor().detach();
            // Every parameter of the case (the layer must hold each, with a gradient).
            let names: Vec<String> = case.tensors.iter().map(|t| t.0.to_string()).collect();
            assert_eq!(names.len(), layer.params().vars().len());
            let eps = 1e-6;
            for name in names.iter().map(String::as_str) {
                let g = grad_of(name);
                let ti = case.tensors.iter().position(|t| t.0 == name).unwrap();
                for (k, &gk) in g.iter().enumerate() {
                    let eval = |dlt: f64| {
                        let mut c = Case {
                            cfg: case.cfg,
                            kwargs: case.kwargs.clone(),
                            tensors: case.tensors.clone(),
                        };
                        c.tensors[ti].2[k] += dlt;
                        loss(&c.layer(DType::F64), &x0).to_scalar::<f64>().unwrap()
                    };
                    let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                    assert!(
                        (gk - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{name}[{k}]: {} vs {fd}",
                        gk
                    );
                }
            }
            let g = grad_of("x");
            for (k, &gk) in g.iter().enumerate() {
                let eval = |dlt: f64| {
                    let mut v = xv.clone();
                    v[k] += dlt;
                    let xt = Tensor::from_vec(v, (b, l, h), &Device::Cpu).unwrap();
                    loss(&layer, &xt).to_scalar::<f64>().unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                assert!(
                    (gk - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                    "x[{k}]: {} vs {fd}",
                    gk
                );
            }
        }
    }

    /// The stable helpers against plain f64 formulas, including their gradient at 0.
    #[test]
    fn log_sigmoid_helpers() {
        let xs: [f64; 9] = [-40.0, -3.0, -1e-3, 0.0, 0.5, 2.3, 9.0, 20.0, 40.0];
        let t = Var::from_tensor(&Tensor::new(&xs, &Device::Cpu).unwrap()).unwrap();
        for precise in [false, true] {
            let y = if precise {
                log_sigmoid_precise(t.as_tensor()).unwrap()
            } else {
                log_sigmoid(t.as_tensor()).unwrap()
            };
            let g = y.sum_all().unwrap().backward().unwrap();
            let g = g.get(t.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
            let y = y.to_vec1::<f64>().unwrap();
            for (i, &x) in xs.iter().enumerate() {
                // ln σ(x) = −ln(1 + e^{−x}), computed with std's ln_1p.
                let want = if x >= 0.0 {
                    -(-x).exp().ln_1p()
                } else {
                    x - x.exp().ln_1p()
                };
                let dwant = 1.0 / (1.0 + x.exp()); // 1 − σ(x)
                let tol = if precise {
                    1e-13 * want.abs()
                } else {
                    1e-15 * (1.0 + want.abs())
                };
                assert!(
                    (y[i] - want).abs() <= tol,
                    "precise={precise} x={x}: {} vs {want}",
                    y[i]
                );
                assert!((g[i] - dwant).abs() < 1e-12, "x={x}: d {} vs {dwant}", g[i]);
            }
        }
        // Precise for large x in f32 too, where ln(1 + e^{−x}) rounds to 0.
        let big = Tensor::new(&[17.0f32], &Device::Cpu).unwrap();
        let v = log_sigmoid_precise(&big).unwrap().to_vec1::<f32>().unwrap()[0];
        let want = -(-17.0f64).exp();
        assert!(((v as f64 - want) / want).abs() < 1e-6, "{v} vs {want}");
    }

    #[test]
    fn errors() {
        let case = Case::new(3, 1.0, 4, true, true, (0.0, 1.0), 9);
        let err = |kwargs: &Value, p: Params| match RgLru::from_lrnnx(kwargs, p) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        let mut p = case.params(DType::F32);
        p.insert(
            "a_log",
            &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!(err(&case.kwargs, p).contains("a_log"));
        let mut k = case.kwargs.clone();
        k["d_conv"] = json!(3);
        assert!(err(&k, case.params(DType::F32)).contains("conv1d.weight"));
        let mut k = case.kwargs.clone();
        k["bias"] = json!("yes");
        assert!(err(&k, case.params(DType::F32)).contains("bias"));
        let mut k = case.kwargs.clone();
        k["c"] = json!(-1.0);
        assert!(err(&k, case.params(DType::F32)).contains("`c`"));
        let mut p = Params::new();
        for (name, shape, v) in &case.tensors {
            if *name != "out_proj.bias" {
                let t = Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu).unwrap();
                p.insert(name, &t).unwrap();
            }
        }
        assert!(err(&case.kwargs, p).contains("out_proj.bias"));
        let layer = case.layer(DType::F32);
        let x = Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu).unwrap();
        let e = layer.forward(&x, None).err().unwrap().to_string();
        assert!(e.contains("`x`"), "{e}");
        assert!(layer
            .forward(
                &Tensor::zeros((5, 3), DType::F32, &Device::Cpu).unwrap(),
                None
            )
            .is_err());
        // Built through `build` by the bare class name too.
        let built = crate::build("RGLRU", &case.kwargs, case.params(DType::F32)).unwrap();
        assert_eq!(built.params().vars().len(), case.tensors.len());
    }
}
