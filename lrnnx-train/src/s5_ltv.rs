//! S5, time-varying, with Event-SSM mode (lrnnx `lrnnx.models.ltv.s5.S5`, spec §10), trainable.
//!
//! ```text
//! Λ = A[:,0] + i·A[:,1]      B̃ = B[..,0] + i·B[..,1] (P×H)      C̃ = C[..,0] + i·C[..,1] (H×P)
//! Δ_p = exp(log_dt_p)·step_rescale
//! ordinary: ΔA = Δ            event (time steps τ (B, L)): ΔA[b,t,p] = τ[b,t]·Δ_p
//! zoh     : Ā = exp(ΔA·Λ),                  γ̄ = (exp(ΔΛ) − 1)/Λ
//! bilinear: Ā = (1 + ΔA·Λ/2)/(1 − ΔA·Λ/2),  γ̄ = Δ/(1 − ΔΛ/2)        (correct Tustin)
//! dirac   : Ā = exp(ΔA·Λ),                  γ̄ = 1
//! s_t = Ā_t ⊙ s_{t−1} + γ̄ ⊙ (B̃ x_t)        (parallel: the complex scan over t)
//! y_t = k·Re(C̃ s_t) + D ⊙ x_t               (k = 2 with conj_sym, else 1; D a vector (H,))
//! ```
//!
//! As in lrnnx, the input gain `γ̄` always uses the ordinary `Δ`, also in event mode; only the
//! transition `Ā` sees the event time step τ, so the gradient with respect to τ flows through
//! `Ā` alone. The zoh numerator `exp(z) − 1` is evaluated without cancellation
//! (`(expm1(x)·cos y − 2 sin²(y/2)) + i·eˣ sin y`, `z = x + iy`), as in the core.
//!
//! Parameters (lrnnx names): `A` (P,2) = (Re Λ, Im Λ) raw, `B` (P,H,2), `C` (H,P,2) (re, im),
//! `D` (H,), `log_dt` (P,). Constructor arguments: `d_model`, `d_state`, `discretization`
//! (default zoh), `conj_sym` (default false), `step_rescale` (default 1); `dt_min`, `dt_max`
//! and `use_fast_path` do not change the numbers.
//!
//! [`TrainLayer::forward`] with `time_steps = Some(τ)` runs Event-SSM mode (`τ` of shape
//! (B, L), same dtype as `x`); with `None` it runs the ordinary mode, as lrnnx's forward without
//! `integration_timesteps`.

use candle_core::{bail, DType, Result, Tensor};
use serde_json::Value;

use crate::complex::CTensor;
use crate::layer::{positive_arg, BuildError, Cache, TrainLayer};
use crate::params::Params;
use crate::scan::complex_scan;

/// The discretization rules of the time-varying S5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S5LtvRule {
    /// Zero-order hold.
    Zoh,
    /// Tustin (the correct bilinear rule).
    Bilinear,
    /// Dirac: `γ̄ = 1`.
    Dirac,
}

/// A trainable time-varying S5 layer (ordinary and Event-SSM mode).
pub struct S5Ltv {
    d_model: usize,
    d_state: usize,
    rule: S5LtvRule,
    conj_sym: bool,
    step_rescale: f64,
    params: Params,
}

/// `expm1(x) = tanh(x/2)·(1 + eˣ)`: free of the cancellation of `eˣ − 1` near 0, and made of
/// candle ops (autodiff flows through).
pub(crate) fn expm1(x: &Tensor) -> Result<Tensor> {
    (x * 0.5)?.tanh()? * (x.exp()? + 1.0)?
}

/// `exp(z) − 1` for complex `z = x + iy`: `(expm1(x)·cos y − 2 sin²(y/2)) + i·eˣ sin y`.
fn cexpm1(z: &CTensor) -> Result<CTensor> {
    let s = (&z.im * 0.5)?.sin()?;
    let re = ((expm1(&z.re)? * z.im.cos()?)? - (s.sqr()? * 2.0)?)?;
    let im = (z.re.exp()? * z.im.sin()?)?;
    Ok(CTensor::new(re, im))
}

fn bool_arg(kwargs: &Value, name: &str, default: bool) -> std::result::Result<bool, BuildError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected a boolean"))),
    }
}

fn f64_arg(kwargs: &Value, name: &str, default: f64) -> std::result::Result<f64, BuildError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected a number"))),
    }
}

impl S5Ltv {
    /// From lrnnx's constructor arguments (`d_model`, `d_state`, `discretization`, `conj_sym`,
    /// `step_rescale`) and its parameters; checks every parameter's shape.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let d_model = positive_arg(kwargs, "d_model")?;
        let d_state = positive_arg(kwargs, "d_state")?;
        let rule = match kwargs.get("discretization") {
            None | Some(Value::Null) => S5LtvRule::Zoh,
            Some(v) => match v.as_str() {
                Some("zoh") => S5LtvRule::Zoh,
                Some("bilinear") => S5LtvRule::Bilinear,
                Some("dirac") => S5LtvRule::Dirac,
                _ => {
                    return Err(BuildError::Kwarg(format!(
                        "`discretization`: {v} is not one of zoh, bilinear, dirac"
                    )))
                }
            },
        };
        let conj_sym = bool_arg(kwargs, "conj_sym", false)?;
        let step_rescale = f64_arg(kwargs, "step_rescale", 1.0)?;
        if !(step_rescale.is_finite() && step_rescale > 0.0) {
            return Err(BuildError::Kwarg(format!(
                "`step_rescale`: expected a positive finite number, got {step_rescale}"
            )));
        }
        let layer = S5Ltv {
            d_model,
            d_state,
            rule,
            conj_sym,
            step_rescale,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// The discretization rule.
    pub fn rule(&self) -> S5LtvRule {
        self.rule
    }

    /// The parameters `[A, B, C, D, log_dt]` with their shapes checked.
    fn weights(&self) -> Result<[Tensor; 5]> {
        let (h, p) = (self.d_model, self.d_state);
        let ps = &self.params;
        Ok([
            ps.get("A", &[p, 2])?,
            ps.get("B", &[p, h, 2])?,
            ps.get("C", &[h, p, 2])?,
            ps.get("D", &[h])?,
            ps.get("log_dt", &[p])?,
        ])
    }

    /// `Ā` of the rule for `z = ΔA·Λ` (any shape).
    fn transition(&self, z: &CTensor) -> Result<CTensor> {
        match self.rule {
            S5LtvRule::Bilinear => z.affine(0.5, 1.0)?.div(&z.affine(-0.5, 1.0)?),
            S5LtvRule::Zoh | S5LtvRule::Dirac => z.exp(),
        }
    }
}

/// `z` rounded to `dtype`.
fn narrow(dtype: DType, z: CTensor) -> Result<CTensor> {
    Ok(CTensor::new(z.re.to_dtype(dtype)?, z.im.to_dtype(dtype)?))
}

impl S5Ltv {
    /// `(ΔΛ, B̄)`: `ΔΛ` (P,) in f64, `B̄ = γ̄ ⊙ B̃` (P, H) rounded to `dtype`. The
    /// discretization is computed in f64 and rounded once, as the core does: in f32 its rounding
    /// would compound over long sequences through `Ā^t`.
    fn discretized(
        &self,
        a: &Tensor,
        b: &Tensor,
        log_dt: &Tensor,
        dtype: DType,
    ) -> Result<(CTensor, CTensor)> {
        let wide = |t: &Tensor| t.to_dtype(DType::F64);
        let lam = CTensor::unpack(&wide(a)?)?; // (P)
        let dt = (wide(log_dt)?.exp()? * self.step_rescale)?; // (P)
        let dl = lam.mul_real(&dt)?; // ΔΛ (P)
        let gamma = match self.rule {
            S5LtvRule::Zoh => cexpm1(&dl)?.div(&lam)?,
            S5LtvRule::Bilinear => CTensor::from_real(&dt)?.div(&dl.affine(-0.5, 1.0)?)?,
            S5LtvRule::Dirac => CTensor::from_real(&dt.ones_like()?)?,
        };
        let gamma = narrow(dtype, gamma)?;
        let b_t = CTensor::unpack(b)?;
        let b_bar = b_t.mul(&CTensor::new(
            gamma.re.unsqueeze(1)?,
            gamma.im.unsqueeze(1)?,
        ))?;
        Ok((dl, b_bar))
    }
}

impl TrainLayer for S5Ltv {
    fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor> {
        let [a, b, c, d, log_dt] = self.weights()?;
        let h = self.d_model;
        let (bsz, len) = match x.dims() {
            [bsz, len, hh] if *hh == h => (*bsz, *len),
            dims => bail!("input `x` has shape {dims:?}, expected (B, L, {h})"),
        };
        let dtype = x.dtype();
        let (dl, b_bar) = self.discretized(&a, &b, &log_dt, dtype)?;
        let u = CTensor::new(
            x.broadcast_matmul(&b_bar.re.t()?)?,
            x.broadcast_matmul(&b_bar.im.t()?)?,
        );
        let wide = |t: &Tensor| t.to_dtype(DType::F64);
        let a_bar = narrow(
            dtype,
            match time_steps {
                None => self.transition(&dl)?,
                Some(tau) => {
                    crate::layer::check_time_steps(tau, bsz, len)?;
                    // ΔA·Λ = τ[b,t]·(ΔΛ)_p: (B, L, P).
                    let tau = wide(&tau.unsqueeze(2)?)?;
                    self.transition(&dl.mul_real(&tau)?)?
                }
            },
        )?;
        let s = complex_scan(&a_bar, &u)?;
        // y = k·Re(s C̃ᵀ) + x ⊙ D
        let c_t = CTensor::unpack(&c)?; // (H, P)
        let mut y =
            (s.re.broadcast_matmul(&c_t.re.t()?)? - s.im.broadcast_matmul(&c_t.im.t()?)?)?;
        if self.conj_sym {
            y = (y * 2.0)?;
        }
        y + x.broadcast_mul(&d)?
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// State: `[Re s, Im s]`, each (B, P) (lrnnx's `ssm_state` (B, P) complex).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let [a, b, c, d, log_dt] = self.weights()?;
        let dtype = d.dtype();
        let (dl, b_bar) = self.discretized(&a, &b, &log_dt, dtype)?;
        let a_bar = narrow(dtype, self.transition(&dl)?)?;
        let c = CTensor::unpack(&c)?;
        let z = Tensor::zeros((batch, self.d_state), dtype, d.device())?;
        Ok(Cache::new(
            "S5 (time-varying)",
            self.params(),
            batch,
            dtype,
            vec![z.clone(), z],
            vec![
                a_bar.re, a_bar.im, b_bar.re, b_bar.im, c.re, c.im, d, dl.re, dl.im,
            ],
        ))
    }

    /// `s ← Ā ⊙ s + B̄ x_t`, `y_t = k·Re(C̃ s) + D ⊙ x_t`; in event mode `Ā` from `τ·ΔΛ`
    /// (module doc).
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        let tau = cache.check_step(
            "S5 (time-varying)",
            self.params(),
            x_t,
            self.d_model,
            time_step,
            true,
        )?;
        let [ar, ai, br, bi, cr, ci, d, dlr, dli] = &cache.consts[..] else {
            bail!("S5 (time-varying): malformed cache");
        };
        let a_bar = match tau {
            None => CTensor::new(ar.clone(), ai.clone()),
            Some(tau) => {
                let dl = CTensor::new(dlr.clone(), dli.clone()); // (P,) f64
                let tau = tau.to_dtype(DType::F64)?.unsqueeze(1)?; // (B, 1)
                narrow(x_t.dtype(), self.transition(&dl.mul_real(&tau)?)?)?
            }
        };
        let s = CTensor::new(cache.state[0].clone(), cache.state[1].clone());
        let u = CTensor::new(x_t.matmul(&br.t()?)?, x_t.matmul(&bi.t()?)?);
        let s = a_bar.mul(&s)?.add(&u)?;
        let mut y = (s.re.matmul(&cr.t()?)? - s.im.matmul(&ci.t()?)?)?;
        if self.conj_sym {
            y = (y * 2.0)?;
        }
        let y = (y + x_t.broadcast_mul(d)?)?;
        cache.state = vec![s.re, s.im];
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use lrnnx_core::s5_ltv::{S5Ltv as CoreS5Ltv, S5LtvConfig};
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

    /// lrnnx-like S5 (LTV) parameters: `(name, shape, values)`.
    fn raw_params(h: usize, p: usize, seed: u64) -> Vec<(&'static str, Vec<usize>, Vec<f64>)> {
        let mut a = Vec::with_capacity(2 * p);
        let im = rand_vec(p, seed, -6.0, 6.0);
        for (i, v) in im.iter().enumerate() {
            a.push(-0.3 - 0.15 * i as f64);
            a.push(*v);
        }
        vec![
            ("A", vec![p, 2], a),
            ("B", vec![p, h, 2], rand_vec(p * h * 2, seed + 1, -0.8, 0.8)),
            ("C", vec![h, p, 2], rand_vec(h * p * 2, seed + 2, -0.8, 0.8)),
            ("D", vec![h], rand_vec(h, seed + 3, -0.5, 0.5)),
            ("log_dt", vec![p], rand_vec(p, seed + 4, -4.0, -1.0)),
        ]
    }

    fn params_of(raw: &[(&'static str, Vec<usize>, Vec<f64>)], dtype: DType) -> Params {
        let mut ps = Params::new();
        for (name, shape, v) in raw {
            let t = Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            ps.insert(name, &t).unwrap();
        }
        ps
    }

    fn kwargs(h: usize, p: usize, disc: &str, conj_sym: bool) -> Value {
        json!({"d_model": h, "d_state": p, "discretization": disc, "conj_sym": conj_sym,
               "step_rescale": 1.3})
    }

    /// Cross-mode parity: the parallel forward equals the lrnnx-core layer stepped over the
    /// same input with the same weights, in ordinary and event mode.
    #[test]
    fn forward_matches_core_stepping() {
        let (h, p) = (3, 5);
        for (disc, core_disc) in [
            ("zoh", Discretization::Zoh),
            ("bilinear", Discretization::Bilinear),
            ("dirac", Discretization::Dirac),
        ] {
            for conj_sym in [false, true] {
                let raw = raw_params(h, p, 7);
                let layer =
                    S5Ltv::from_lrnnx(&kwargs(h, p, disc, conj_sym), params_of(&raw, DType::F32))
                        .unwrap();
                let f32s: Vec<Vec<f32>> = raw
                    .iter()
                    .map(|(_, _, v)| v.iter().map(|&x| x as f32).collect())
                    .collect();
                let entries: Vec<(&str, TensorView<'_>)> = raw
                    .iter()
                    .zip(&f32s)
                    .map(|((n, s, _), d)| (*n, TensorView { data: d, shape: s }))
                    .collect();
                let cfg = S5LtvConfig {
                    d_model: h,
                    d_state: p,
                    discretization: core_disc,
                    conj_sym,
                    step_rescale: 1.3,
                };
                let core = CoreS5Ltv::from_lrnnx(
                    cfg,
                    &SliceParams { entries: &entries },
                    vec![0.0; cfg.weights_len()],
                )
                .unwrap();
                for (bsz, len) in [(1, 1), (3, 7), (1, 64), (3, 64)] {
                    let xs: Vec<f32> = rand_vec(bsz * len * h, 11 + len as u64, -1.0, 1.0)
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    let taus: Vec<f32> = rand_vec(bsz * len, 13 + len as u64, 0.2, 2.0)
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
                                "{disc} conj {conj_sym} event {event} B{bsz} L{len} [{i}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Gradients of `loss = Σ y ⊙ w` in f64 against central finite differences, for every
    /// parameter, the input and the event time steps.
    #[test]
    fn gradients_match_finite_differences() {
        let (h, p, bsz, len) = (2, 3, 2, 5);
        for disc in ["zoh", "bilinear", "dirac"] {
            let raw = raw_params(h, p, 21);
            let x = Var::from_tensor(
                &Tensor::from_vec(
                    rand_vec(bsz * len * h, 22, -1.0, 1.0),
                    (bsz, len, h),
                    &Device::Cpu,
                )
                .unwrap(),
            )
            .unwrap();
            let tau = Var::from_tensor(
                &Tensor::from_vec(rand_vec(bsz * len, 23, 0.2, 2.0), (bsz, len), &Device::Cpu)
                    .unwrap(),
            )
            .unwrap();
            let w = Tensor::from_vec(
                rand_vec(bsz * len * h, 24, -1.0, 1.0),
                (bsz, len, h),
                &Device::Cpu,
            )
            .unwrap();
            let kw = kwargs(h, p, disc, true);
            let loss = |ps: Params, x: &Tensor, tau: &Tensor| -> (Tensor, Params) {
                let layer = S5Ltv::from_lrnnx(&kw, ps).unwrap();
                let y = layer.forward(x, Some(tau)).unwrap();
                let l = (y * &w).unwrap().sum_all().unwrap();
                (l, layer.params().clone())
            };
            let (l, ps) = loss(params_of(&raw, DType::F64), x.as_tensor(), tau.as_tensor());
            let grads = l.backward().unwrap();
            let eps = 1e-6;
            let check = |what: &str, g: Vec<f64>, eval: &dyn Fn(usize, f64) -> f64| {
                for (k, gk) in g.iter().enumerate() {
                    let fd = (eval(k, eps) - eval(k, -eps)) / (2.0 * eps);
                    assert!(
                        (gk - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                        "{disc} {what}[{k}]: {gk} vs {fd}"
                    );
                }
            };
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for (pi, (name, _, _)) in raw.iter().enumerate() {
                let g = flat(grads.get(ps.vars()[*name].as_tensor()).unwrap());
                check(name, g, &|k, d| {
                    let mut r = raw.clone();
                    r[pi].2[k] += d;
                    loss(
                        params_of(&r, DType::F64),
                        &x.as_tensor().detach(),
                        &tau.as_tensor().detach(),
                    )
                    .0
                    .to_scalar::<f64>()
                    .unwrap()
                });
            }
            let xv = flat(x.as_tensor());
            check("x", flat(grads.get(x.as_tensor()).unwrap()), &|k, d| {
                let mut v = xv.clone();
                v[k] += d;
                let xt = Tensor::from_vec(v, (bsz, len, h), &Device::Cpu).unwrap();
                loss(params_of(&raw, DType::F64), &xt, &tau.as_tensor().detach())
                    .0
                    .to_scalar::<f64>()
                    .unwrap()
            });
            let tv = flat(tau.as_tensor());
            check("tau", flat(grads.get(tau.as_tensor()).unwrap()), &|k, d| {
                let mut v = tv.clone();
                v[k] += d;
                let tt = Tensor::from_vec(v, (bsz, len), &Device::Cpu).unwrap();
                loss(params_of(&raw, DType::F64), &x.as_tensor().detach(), &tt)
                    .0
                    .to_scalar::<f64>()
                    .unwrap()
            });
        }
    }

    #[test]
    fn errors_name_the_tensor() {
        let raw = raw_params(3, 5, 1);
        let mut ps = params_of(&raw, DType::F32);
        ps.insert(
            "B",
            &Tensor::zeros((5, 3), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let e = S5Ltv::from_lrnnx(&kwargs(3, 5, "zoh", false), ps)
            .err()
            .unwrap();
        assert!(e.to_string().contains("`B`"), "{e}");
        let e = S5Ltv::from_lrnnx(&kwargs(3, 5, "async", false), params_of(&raw, DType::F32))
            .err()
            .unwrap();
        assert!(e.to_string().contains("discretization"), "{e}");
        let layer =
            S5Ltv::from_lrnnx(&kwargs(3, 5, "zoh", false), params_of(&raw, DType::F32)).unwrap();
        let x = Tensor::zeros((2, 4, 3), DType::F32, &Device::Cpu).unwrap();
        let bad_tau = Tensor::ones((2, 5), DType::F32, &Device::Cpu).unwrap();
        let e = layer.forward(&x, Some(&bad_tau)).err().unwrap();
        assert!(e.to_string().contains("time_steps"), "{e}");
        let bad_x = Tensor::zeros((2, 4, 2), DType::F32, &Device::Cpu).unwrap();
        let e = layer.forward(&bad_x, None).err().unwrap();
        assert!(e.to_string().contains("`x`"), "{e}");
    }
}
