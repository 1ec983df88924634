//! Mamba / S6 with STREAM mode (lrnnx `lrnnx.models.ltv.mamba.Mamba`, spec §9), trainable.
//!
//! With `H = d_model`, `E = d_inner`, `N = d_state`, `R = dt_rank`, `k = d_conv`, over the whole
//! sequence at once (x (B, L, H)):
//!
//! ```text
//! [x; z] = x W_inᵀ (+ b_in)                                       (B, L, 2E)
//! x_c[t] = SiLU(b_conv + Σ_{w<k} W_conv[:, 0, w] ⊙ x[t − (k−1) + w])  (causal depthwise conv,
//!                                                                  zeros before t = 0)
//! [δ_r; B_t; C_t] = x_c W_xᵀ                                      (R + N + N)
//! Δ  = softplus(δ_r W_dtᵀ + b_dt)                                 (bias added before softplus)
//! ΔA = Δ                              (ordinary)
//! ΔA[b,t,d] = τ[b,t]·softplus(b_dtA[d])  (STREAM, time steps τ (B, L); B̄ still uses Δ)
//! A  = −exp(A_log)                                                 (E, N)
//! h_t[d,n] = Ā_t[d,n]·h_{t−1}[d,n] + γ̄_t[d,n]·B_t[n]·x_c[t,d]    (the real scan over t)
//! y_in = (Σ_n C_t[n]·h_t[d,n] + D[d]·x_c[t,d]) · SiLU(z[t,d])
//! y = y_in W_outᵀ (+ b_out)
//! ```
//!
//! The rules are those of lrnnx's selective **scan** (its forward; spec §18.2: lrnnx's `step`
//! uses `exp` for bilinear too, its forward does not):
//!
//! | rule       | `Ā` (from `ΔA`)                 | `γ̄` (from `Δ`)              |
//! |------------|---------------------------------|-----------------------------|
//! | `mamba`    | `exp(ΔA·A)`                     | `Δ`                         |
//! | `zoh`      | `exp(ΔA·A)`                     | `expm1(Δ·A)/A`              |
//! | `bilinear` | `(1 + ΔA·A/2)/(1 − ΔA·A/2)`     | `Δ/(1 − Δ·A/2)`             |
//! | `dirac`    | `exp(ΔA·A)`                     | `1`                         |
//!
//! The time step's bias and softplus, the discretization, the recurrence, the read-out
//! `Σ_n C_t[n]·h_t[d,n]`, the `D` skip and the `SiLU(z)` gate run inside one fused op,
//! [`mamba_scan`], which never materializes a `(B, L, E, N)` tensor (its backward recomputes the
//! states from checkpoints; on CUDA one kernel each way).
//!
//! Parameters (lrnnx names): `in_proj.weight` (2E,H) [+ `in_proj.bias` (2E,) with `bias`],
//! `conv1d.weight` (E,1,k) [+ `conv1d.bias` (E,) with `conv_bias`], `x_proj.weight` (R+2N,E),
//! `dt_proj.weight` (E,R), `dt_proj.bias` (E,), `dtA_proj.bias` (E,), `A_log` (E,N), `D` (E,),
//! `out_proj.weight` (H,E) [+ `out_proj.bias` (H,) with `bias`]. `dtA_proj.weight` is never used
//! by lrnnx (so its gradient is zero); `dtA_proj.bias` is used only in STREAM mode.
//!
//! Constructor arguments: `d_model`, `d_state` (16), `d_conv` (4), `expand` (2; `d_inner =
//! int(expand·d_model)`), `dt_rank` (`"auto"` = `ceil(d_model/16)`), `bias` (false),
//! `conv_bias` (true), `discretization` (`"mamba"`); the initialization arguments do not
//! change the numbers. [`TrainLayer::forward`] with `time_steps = Some(τ)` ((B, L), same dtype
//! as `x`) runs STREAM mode; with `None` the ordinary mode, as lrnnx's forward without
//! `integration_timesteps`.

use candle_core::{bail, Result, Tensor};
use serde_json::Value;

use crate::layer::{usize_arg, BuildError, Cache, TrainLayer};
use crate::ops::softplus;
use crate::params::Params;
use crate::selective::{mamba_scan, MambaScanInputs};

/// The selective-scan rules of lrnnx's Mamba.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MambaRule {
    /// `Ā = exp(ΔA·A)`, `γ̄ = Δ` (lrnnx's default).
    Mamba,
    /// `Ā = exp(ΔA·A)`, `γ̄ = expm1(Δ·A)/A`.
    Zoh,
    /// `Ā = (1 + ΔA·A/2)/(1 − ΔA·A/2)`, `γ̄ = Δ/(1 − Δ·A/2)`.
    Bilinear,
    /// `Ā = exp(ΔA·A)`, `γ̄ = 1`.
    Dirac,
}

/// A trainable Mamba layer (ordinary and STREAM mode).
pub struct Mamba {
    d_model: usize,
    d_state: usize,
    d_conv: usize,
    d_inner: usize,
    dt_rank: usize,
    bias: bool,
    conv_bias: bool,
    rule: MambaRule,
    params: Params,
}

/// The parameters used by the forward, shapes checked.
struct Weights {
    in_w: Tensor,
    in_b: Option<Tensor>,
    conv_w: Tensor,
    conv_b: Option<Tensor>,
    x_w: Tensor,
    dt_w: Tensor,
    dt_b: Tensor,
    dta_b: Tensor,
    a_log: Tensor,
    d: Tensor,
    out_w: Tensor,
    out_b: Option<Tensor>,
}

fn arg_or<T>(
    kwargs: &Value,
    name: &str,
    default: T,
    what: &str,
    get: impl Fn(&Value) -> Option<T>,
) -> std::result::Result<T, BuildError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => get(v).ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected {what}"))),
    }
}

impl Mamba {
    /// From lrnnx's constructor arguments (module doc) and its parameters; checks every
    /// parameter's shape.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let d_model = usize_arg(kwargs, "d_model")?;
        let size = |v: &Value| v.as_u64().and_then(|v| usize::try_from(v).ok());
        let d_state = arg_or(kwargs, "d_state", 16, "a non-negative integer", size)?;
        let d_conv = arg_or(kwargs, "d_conv", 4, "a non-negative integer", size)?;
        let expand = arg_or(kwargs, "expand", 2.0, "a number", Value::as_f64)?;
        if !(expand.is_finite() && expand > 0.0) {
            return Err(BuildError::Kwarg(format!(
                "`expand`: expected a positive number, got {expand}"
            )));
        }
        // Python's int(expand * d_model) truncates.
        let d_inner = (expand * d_model as f64) as usize;
        let dt_rank = match kwargs.get("dt_rank") {
            None | Some(Value::Null) => d_model.div_ceil(16),
            Some(Value::String(s)) if s == "auto" => d_model.div_ceil(16),
            Some(_) => usize_arg(kwargs, "dt_rank")?,
        };
        let bias = arg_or(kwargs, "bias", false, "a boolean", Value::as_bool)?;
        let conv_bias = arg_or(kwargs, "conv_bias", true, "a boolean", Value::as_bool)?;
        let disc = match kwargs.get("discretization") {
            None | Some(Value::Null) => "mamba",
            Some(v) => v
                .as_str()
                .ok_or_else(|| BuildError::Kwarg("`discretization`: expected a string".into()))?,
        };
        let rule = match disc {
            "mamba" => MambaRule::Mamba,
            "zoh" => MambaRule::Zoh,
            "bilinear" => MambaRule::Bilinear,
            "dirac" => MambaRule::Dirac,
            other => {
                return Err(BuildError::Kwarg(format!(
                    "`discretization`: `{other}` is not one of mamba, zoh, bilinear, dirac"
                )))
            }
        };
        for (name, v) in [
            ("d_model", d_model),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("d_inner", d_inner),
            ("dt_rank", dt_rank),
        ] {
            if v == 0 {
                return Err(BuildError::Kwarg(format!("`{name}` must be positive")));
            }
        }
        crate::layer::axes_fit(&[
            ("d_model", d_model),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("d_inner (expand · d_model)", d_inner),
            ("dt_rank", dt_rank),
        ])?;
        let layer = Mamba {
            d_model,
            d_state,
            d_conv,
            d_inner,
            dt_rank,
            bias,
            conv_bias,
            rule,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// The discretization rule.
    pub fn rule(&self) -> MambaRule {
        self.rule
    }

    fn weights(&self) -> Result<Weights> {
        let (h, e, n, r, k) = (
            self.d_model,
            self.d_inner,
            self.d_state,
            self.dt_rank,
            self.d_conv,
        );
        let p = &self.params;
        let opt = |on: bool, name: &str, shape: &[usize]| -> Result<Option<Tensor>> {
            if on {
                p.get(name, shape).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Weights {
            in_w: p.get("in_proj.weight", &[2 * e, h])?,
            in_b: opt(self.bias, "in_proj.bias", &[2 * e])?,
            conv_w: p.get("conv1d.weight", &[e, 1, k])?,
            conv_b: opt(self.conv_bias, "conv1d.bias", &[e])?,
            x_w: p.get("x_proj.weight", &[r + 2 * n, e])?,
            dt_w: p.get("dt_proj.weight", &[e, r])?,
            dt_b: p.get("dt_proj.bias", &[e])?,
            dta_b: p.get("dtA_proj.bias", &[e])?,
            a_log: p.get("A_log", &[e, n])?,
            d: p.get("D", &[e])?,
            out_w: p.get("out_proj.weight", &[h, e])?,
            out_b: opt(self.bias, "out_proj.bias", &[h])?,
        })
    }
}

/// The conv window (B, k, E) advanced by one step: the oldest input dropped, `x` (B, E)
/// appended.
pub(crate) fn shift_in(window: &Tensor, x: &Tensor, k: usize) -> Result<Tensor> {
    if k == 1 {
        return x.unsqueeze(1);
    }
    Tensor::cat(&[&window.narrow(1, 1, k - 1)?, &x.unsqueeze(1)?], 1)
}

/// `t + b` when there is a bias (broadcast over the last axis).
fn add_bias(t: Tensor, b: &Option<Tensor>) -> Result<Tensor> {
    match b {
        Some(b) => t.broadcast_add(b),
        None => Ok(t),
    }
}

impl TrainLayer for Mamba {
    fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor> {
        let w = self.weights()?;
        let (h, e, n, r, k) = (
            self.d_model,
            self.d_inner,
            self.d_state,
            self.dt_rank,
            self.d_conv,
        );
        let (bsz, len) = match x.dims() {
            [bsz, len, hh] if *hh == h => (*bsz, *len),
            dims => bail!("input `x` has shape {dims:?}, expected (B, L, {h})"),
        };

        // [x; z] = in_proj(u)
        let xz = add_bias(x.broadcast_matmul(&w.in_w.t()?)?, &w.in_b)?;
        let xs = xz.narrow(2, 0, e)?;
        let z = xz.narrow(2, e, e)?;

        // Causal depthwise conv as a sum of k shifted slices of the left-zero-padded input.
        let xp = xs.pad_with_zeros(1, k - 1, 0)?; // (B, L+k−1, E)
        let taps = w.conv_w.squeeze(1)?; // (E, k)
        let mut acc: Option<Tensor> = None;
        for tap in 0..k {
            let term = xp
                .narrow(1, tap, len)?
                .broadcast_mul(&taps.narrow(1, tap, 1)?.squeeze(1)?)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        let xc = match acc {
            Some(a) => add_bias(a, &w.conv_b)?.silu()?,
            None => bail!("Mamba: `d_conv` must be positive"),
        };

        // [δ_r; B; C] = x_proj(x_c); Δ = softplus(dt_proj(δ_r) + b_dt)
        let x_dbl = xc.broadcast_matmul(&w.x_w.t()?)?; // (B, L, R+2N)
        let dt_raw = crate::ops::matmul_operand(&x_dbl.narrow(2, 0, r)?)?;
        let b_t = x_dbl.narrow(2, r, n)?; // (B, L, N)
        let c_t = x_dbl.narrow(2, r + n, n)?;
        let delta_raw = dt_raw.broadcast_matmul(&w.dt_w.t()?)?; // (B, L, E), bias not yet added
        let delta_a = match time_steps {
            None => None,
            Some(tau) => {
                crate::layer::check_time_steps(tau, bsz, len)?;
                Some(tau.unsqueeze(2)?.broadcast_mul(&softplus(&w.dta_b)?)?)
            }
        };

        // The fused scan block, no (B, L, E, N) tensor (one CUDA kernel per direction):
        // Δ = softplus(δ + b_dt); y_in = (Σ_n C[n]·h[d,n] + D⊙x_c)·SiLU(z)
        let a = w.a_log.exp()?.neg()?; // (E, N)
        let y_in = mamba_scan(
            &MambaScanInputs {
                u: &xc,
                delta_raw: &delta_raw,
                delta_bias: &w.dt_b,
                delta_a: delta_a.as_ref(),
                a: &a,
                b_t: &b_t,
                c_t: &c_t,
                d: &w.d,
                z: Some(&z),
            },
            self.rule,
        )?;

        // y = out_proj(y_in)
        add_bias(y_in.broadcast_matmul(&w.out_w.t()?)?, &w.out_b)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// State: `[window, h]`: the last `k` conv inputs (B, k, E), oldest first (lrnnx's
    /// `conv_state` (B, E, k)), and the SSM state `h` (B, E, N) (lrnnx's `lrnn_state`).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let w = self.weights()?;
        let (dtype, dev) = (w.d.dtype(), w.d.device().clone());
        let window = Tensor::zeros((batch, self.d_conv, self.d_inner), dtype, &dev)?;
        let h = Tensor::zeros((batch, self.d_inner, self.d_state), dtype, &dev)?;
        let a = w.a_log.exp()?.neg()?; // (E, N)
        let sp_dta = softplus(&w.dta_b)?;
        let mut consts = vec![
            w.in_w,
            w.conv_w.squeeze(1)?.t()?, // (k, E)
            w.x_w,
            w.dt_w,
            w.dt_b,
            sp_dta,
            a,
            w.d,
            w.out_w,
        ];
        // Optional biases, as zeros when absent (adding zero is exact).
        let zeros = |n: usize| Tensor::zeros(n, dtype, &dev);
        consts.push(w.in_b.map_or_else(|| zeros(2 * self.d_inner), Ok)?);
        consts.push(w.conv_b.map_or_else(|| zeros(self.d_inner), Ok)?);
        consts.push(w.out_b.map_or_else(|| zeros(self.d_model), Ok)?);
        Ok(Cache::new(
            "Mamba",
            self.params(),
            batch,
            dtype,
            vec![window, h],
            consts,
        ))
    }

    /// One step of the module doc's equations; in STREAM mode `ΔA = τ·softplus(b_dtA)`.
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        let tau = cache.check_step("Mamba", self.params(), x_t, self.d_model, time_step, true)?;
        let [in_w, taps, x_w, dt_w, dt_b, sp_dta, a, d, out_w, in_b, conv_b, out_b] =
            &cache.consts[..]
        else {
            bail!("Mamba: malformed cache");
        };
        let (e, n, r, k) = (self.d_inner, self.d_state, self.dt_rank, self.d_conv);
        let xz = x_t.matmul(&in_w.t()?)?.broadcast_add(in_b)?; // (B, 2E)
        let xs = xz.narrow(1, 0, e)?;
        let z = xz.narrow(1, e, e)?;
        let window = shift_in(&cache.state[0], &xs, k)?;
        let xc = window
            .broadcast_mul(taps)?
            .sum(1)?
            .broadcast_add(conv_b)?
            .silu()?; // (B, E)
        let x_dbl = xc.matmul(&x_w.t()?)?; // (B, R+2N)
        let b_t = x_dbl.narrow(1, r, n)?.unsqueeze(1)?; // (B, 1, N)
        let c_t = x_dbl.narrow(1, r + n, n)?.unsqueeze(2)?; // (B, N, 1)
                                                            // narrowed columns are strided: copied out on CUDA for its matmul
        let delta = softplus(
            &crate::ops::matmul_operand(&x_dbl.narrow(1, 0, r)?)?
                .matmul(&dt_w.t()?)?
                .broadcast_add(dt_b)?,
        )?; // (B, E)
        let delta_a = match tau {
            None => delta.clone(),
            Some(tau) => tau.unsqueeze(1)?.broadcast_mul(sp_dta)?,
        };
        let xa = delta_a.unsqueeze(2)?.broadcast_mul(a)?; // ΔA·A (B, E, N)
        let dt3 = delta.unsqueeze(2)?;
        let (a_bar, gamma) = match self.rule {
            MambaRule::Mamba => (xa.exp()?, dt3.broadcast_as(xa.shape())?.contiguous()?),
            MambaRule::Zoh => (
                xa.exp()?,
                crate::s5_ltv::expm1(&dt3.broadcast_mul(a)?)?.broadcast_div(a)?,
            ),
            MambaRule::Bilinear => (
                {
                    let v = xa.clamp(-2e18, 2e18)?; // as the scan op
                    (v.affine(0.5, 1.0)? / v.affine(-0.5, 1.0)?)?
                },
                dt3.broadcast_div(&dt3.broadcast_mul(a)?.affine(-0.5, 1.0)?)?,
            ),
            MambaRule::Dirac => (xa.exp()?, xa.ones_like()?),
        };
        // h ← Ā ⊙ h + γ̄ ⊙ B_t[n]·x_c[d]
        let h = ((a_bar * &cache.state[1])? + (gamma * xc.unsqueeze(2)?.broadcast_mul(&b_t)?)?)?;
        let yc = h.matmul(&c_t)?.squeeze(2)?; // Σ_n C[n]·h[d,n]
        let y_in = ((yc + xc.broadcast_mul(d)?)? * z.silu()?)?;
        let y = y_in.matmul(&out_w.t()?)?.broadcast_add(out_b)?;
        cache.state = vec![window, h];
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use lrnnx_core::mamba::{Mamba as CoreMamba, MambaConfig};
    use lrnnx_core::{run_event_sequence, run_sequence, Discretization, SliceParams, TensorView};
    use serde_json::json;

    /// Deterministic values in `[lo, hi)`.
    fn rand_vec(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
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

    type Raw = Vec<(&'static str, Vec<usize>, Vec<f64>)>;

    /// lrnnx-like Mamba parameters (all optional biases present), `(name, shape, values)`.
    fn raw_params(h: usize, e: usize, n: usize, r: usize, k: usize, seed: u64) -> Raw {
        let ks = 1.0 / (k as f64).sqrt();
        let mut a_log = Vec::new();
        for d in 0..e {
            for s in 0..n {
                a_log.push(((s + 1) as f64).ln() + 0.05 * ((d * 7 + s) % 5) as f64);
            }
        }
        vec![
            (
                "in_proj.weight",
                vec![2 * e, h],
                rand_vec(2 * e * h, seed, -0.6, 0.6),
            ),
            (
                "in_proj.bias",
                vec![2 * e],
                rand_vec(2 * e, seed + 1, -0.2, 0.2),
            ),
            (
                "conv1d.weight",
                vec![e, 1, k],
                rand_vec(e * k, seed + 2, -ks, ks),
            ),
            ("conv1d.bias", vec![e], rand_vec(e, seed + 3, -ks, ks)),
            (
                "x_proj.weight",
                vec![r + 2 * n, e],
                rand_vec((r + 2 * n) * e, seed + 4, -0.6, 0.6),
            ),
            (
                "dt_proj.weight",
                vec![e, r],
                rand_vec(e * r, seed + 5, -0.5, 0.5),
            ),
            ("dt_proj.bias", vec![e], rand_vec(e, seed + 6, -4.0, -2.0)),
            (
                "dtA_proj.weight",
                vec![e, r],
                rand_vec(e * r, seed + 7, -0.5, 0.5),
            ),
            ("dtA_proj.bias", vec![e], rand_vec(e, seed + 8, -3.0, -1.0)),
            ("A_log", vec![e, n], a_log),
            ("D", vec![e], rand_vec(e, seed + 9, 0.5, 1.5)),
            (
                "out_proj.weight",
                vec![h, e],
                rand_vec(h * e, seed + 10, -0.5, 0.5),
            ),
            ("out_proj.bias", vec![h], rand_vec(h, seed + 11, -0.2, 0.2)),
        ]
    }

    fn params_of(raw: &Raw, dtype: DType, skip: &[&str]) -> Params {
        let mut ps = Params::new();
        for (name, shape, v) in raw {
            if skip.contains(name) {
                continue;
            }
            let t = Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            ps.insert(name, &t).unwrap();
        }
        ps
    }

    const RULES: [(&str, Discretization); 4] = [
        ("mamba", Discretization::Mamba),
        ("zoh", Discretization::Zoh),
        ("bilinear", Discretization::Bilinear),
        ("dirac", Discretization::Dirac),
    ];

    /// Cross-mode parity with the lrnnx-core layer stepped over the same input, ordinary and
    /// STREAM, with and without the optional biases.
    #[test]
    fn forward_matches_core_stepping() {
        let (h, e, n, r, k) = (5, 6, 3, 2, 3);
        let raw = raw_params(h, e, n, r, k, 3);
        for (disc, core_disc) in RULES {
            for bias in [false, true] {
                let skip: &[&str] = if bias {
                    &[]
                } else {
                    &["in_proj.bias", "out_proj.bias", "conv1d.bias"]
                };
                let kw = json!({"d_model": h, "d_state": n, "d_conv": k, "expand": 1.2,
                    "dt_rank": r, "bias": bias, "conv_bias": bias, "discretization": disc});
                let layer = Mamba::from_lrnnx(&kw, params_of(&raw, DType::F32, skip)).unwrap();
                let f32s: Vec<Vec<f32>> = raw
                    .iter()
                    .map(|(_, _, v)| v.iter().map(|&x| x as f32).collect())
                    .collect();
                let entries: Vec<(&str, TensorView<'_>)> = raw
                    .iter()
                    .zip(&f32s)
                    .filter(|((nm, _, _), _)| !skip.contains(nm))
                    .map(|((nm, s, _), d)| (*nm, TensorView { data: d, shape: s }))
                    .collect();
                let cfg = MambaConfig {
                    d_model: h,
                    d_state: n,
                    d_conv: k,
                    d_inner: e,
                    dt_rank: r,
                    bias,
                    conv_bias: bias,
                    discretization: core_disc,
                };
                let core = CoreMamba::from_lrnnx(
                    cfg,
                    &SliceParams { entries: &entries },
                    vec![0.0; cfg.weights_len()],
                )
                .unwrap();
                for (bsz, len) in [(1, 1), (3, 7), (1, 64), (3, 64)] {
                    let xs: Vec<f32> = rand_vec(bsz * len * h, 31 + len as u64, -1.5, 1.5)
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    let taus: Vec<f32> = rand_vec(bsz * len, 37 + len as u64, 0.2, 2.0)
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    let x = Tensor::from_vec(xs.clone(), (bsz, len, h), &Device::Cpu).unwrap();
                    let tau = Tensor::from_vec(taus.clone(), (bsz, len), &Device::Cpu).unwrap();
                    for event in [false, true] {
                        let y = layer
                            .forward(&x, event.then_some(&tau))
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap();
                        let mut want = vec![0.0f32; bsz * len * h];
                        for bi in 0..bsz {
                            let mut st = vec![0.0; cfg.state_len()];
                            let (xr, yr) = (
                                &xs[bi * len * h..(bi + 1) * len * h],
                                &mut want[bi * len * h..(bi + 1) * len * h],
                            );
                            if event {
                                let tr = &taus[bi * len..(bi + 1) * len];
                                run_event_sequence(&core, &mut st, xr, tr, yr).unwrap();
                            } else {
                                run_sequence(&core, &mut st, xr, yr).unwrap();
                            }
                        }
                        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                        for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= 2e-5 * scale,
                                "{disc} bias {bias} event {event} B{bsz} L{len} [{i}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Gradients of `loss = Σ y ⊙ w` in f64 against central finite differences: a few elements
    /// of every parameter, of the input and of the STREAM time steps, for every rule;
    /// `dtA_proj.weight` gets no gradient.
    #[test]
    fn gradients_match_finite_differences() {
        let (h, e, n, r, k, bsz, len) = (3, 4, 2, 1, 3, 2, 5);
        let raw = raw_params(h, e, n, r, k, 41);
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::from_vec(rand_vec(bsz * len * h, 42, -1.5, 1.5), (bsz, len, h), &dev).unwrap(),
        )
        .unwrap();
        let tau = Var::from_tensor(
            &Tensor::from_vec(rand_vec(bsz * len, 43, 0.2, 2.0), (bsz, len), &dev).unwrap(),
        )
        .unwrap();
        let w =
            Tensor::from_vec(rand_vec(bsz * len * h, 44, -1.0, 1.0), (bsz, len, h), &dev).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (disc, _) in RULES {
            for event in [true, false] {
                let kw = json!({"d_model": h, "d_state": n, "d_conv": k, "expand": 4.0 / 3.0,
                    "dt_rank": r, "bias": true, "discretization": disc});
                let loss = |ps: Params, x: &Tensor, tau: &Tensor| -> (Tensor, Params) {
                    let layer = Mamba::from_lrnnx(&kw, ps).unwrap();
                    let y = layer.forward(x, event.then_some(tau)).unwrap();
                    ((y * &w).unwrap().sum_all().unwrap(), layer.params().clone())
                };
                let (l, ps) = loss(
                    params_of(&raw, DType::F64, &[]),
                    x.as_tensor(),
                    tau.as_tensor(),
                );
                let grads = l.backward().unwrap();
                let eps = 1e-6;
                // A few spread-out elements of each tensor.
                let check = |what: &str, g: Vec<f64>, eval: &dyn Fn(usize, f64) -> f64| {
                    let stride = g.len().div_ceil(5).max(1);
                    for kk in (0..g.len()).step_by(stride) {
                        let fd = (eval(kk, eps) - eval(kk, -eps)) / (2.0 * eps);
                        assert!(
                            (g[kk] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                            "{disc} event {event} {what}[{kk}]: {} vs {fd}",
                            g[kk]
                        );
                    }
                };
                for (pi, (name, _, v)) in raw.iter().enumerate() {
                    let got = grads.get(ps.vars()[*name].as_tensor());
                    if *name == "dtA_proj.weight" || (*name == "dtA_proj.bias" && !event) {
                        assert!(got.is_none_or(|g| flat(g).iter().all(|&v| v == 0.0)));
                        continue;
                    }
                    // No gradient = zero (dt_proj in dirac STREAM mode: Δ is unused there); the
                    // finite differences must then be zero too.
                    let g = got.map_or_else(|| vec![0.0; v.len()], flat);
                    assert_eq!(g.len(), v.len());
                    check(name, g, &|kk, d| {
                        let mut rr = raw.clone();
                        rr[pi].2[kk] += d;
                        loss(
                            params_of(&rr, DType::F64, &[]),
                            &x.as_tensor().detach(),
                            &tau.as_tensor().detach(),
                        )
                        .0
                        .to_scalar::<f64>()
                        .unwrap()
                    });
                }
                let xv = flat(x.as_tensor());
                check("x", flat(grads.get(x.as_tensor()).unwrap()), &|kk, d| {
                    let mut v = xv.clone();
                    v[kk] += d;
                    let xt = Tensor::from_vec(v, (bsz, len, h), &dev).unwrap();
                    loss(
                        params_of(&raw, DType::F64, &[]),
                        &xt,
                        &tau.as_tensor().detach(),
                    )
                    .0
                    .to_scalar::<f64>()
                    .unwrap()
                });
                if event {
                    let tv = flat(tau.as_tensor());
                    check(
                        "tau",
                        flat(grads.get(tau.as_tensor()).unwrap()),
                        &|kk, d| {
                            let mut v = tv.clone();
                            v[kk] += d;
                            let tt = Tensor::from_vec(v, (bsz, len), &dev).unwrap();
                            loss(
                                params_of(&raw, DType::F64, &[]),
                                &x.as_tensor().detach(),
                                &tt,
                            )
                            .0
                            .to_scalar::<f64>()
                            .unwrap()
                        },
                    );
                }
            }
        }
    }

    #[test]
    fn errors_name_the_tensor() {
        let (h, e, n, r, k) = (4, 8, 2, 1, 3);
        let raw = raw_params(h, e, n, r, k, 5);
        let kw = json!({"d_model": h, "d_state": n, "d_conv": k, "bias": true});
        let err = Mamba::from_lrnnx(&kw, params_of(&raw, DType::F32, &["out_proj.bias"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("`out_proj.bias`"), "{err}");
        let mut ps = params_of(&raw, DType::F32, &[]);
        ps.insert(
            "A_log",
            &Tensor::zeros((e, n + 1), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let err = Mamba::from_lrnnx(&kw, ps).err().unwrap();
        assert!(err.to_string().contains("`A_log`"), "{err}");
        let bad = json!({"d_model": h, "d_state": n, "d_conv": k, "discretization": "s7"});
        let err = Mamba::from_lrnnx(&bad, params_of(&raw, DType::F32, &[]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("discretization"), "{err}");
        let layer = Mamba::from_lrnnx(&kw, params_of(&raw, DType::F32, &[])).unwrap();
        let x = Tensor::zeros((2, 4, h), DType::F32, &Device::Cpu).unwrap();
        let bad_tau = Tensor::ones((2, 4, 1), DType::F32, &Device::Cpu).unwrap();
        let err = layer.forward(&x, Some(&bad_tau)).err().unwrap();
        assert!(err.to_string().contains("time_steps"), "{err}");
        let bad_x = Tensor::zeros((2, 4, h + 1), DType::F32, &Device::Cpu).unwrap();
        let err = layer.forward(&bad_x, None).err().unwrap();
        assert!(err.to_string().contains("`x`"), "{err}");
    }
}
