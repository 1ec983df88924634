//! S5, time-invariant (lrnnx `lrnnx.models.lti.s5.S5`, spec §6), trainable.
//!
//! ```text
//! A_c = −softplus(A[:,0]) + i·A[:,1]        Δ = exp(log_dt)            (per state n)
//! (Ā, γ̄) = discretize(A_c, Δ)              B̄ = γ̄ ⊙ B                  (B real, N×H)
//! h_t = Ā ⊙ h_{t−1} + B̄ x_t                (parallel: the complex scan over t)
//! y_t = Re(C h_t) + x_t @ D
//! ```
//!
//! Parameters (lrnnx names): `A` (N,2), `B` (N,H), `log_dt` (N,), `C` (H,N,2), `D` (H,H). An lrnnx
//! checkpoint whose `discretization` is `"bilinear"` was trained with lrnnx's inverted rule,
//! so it loads as [`Discretization::LrnnxInvertedBilinear`], as in the core's importer.

use candle_core::{bail, Result, Tensor};
use lrnnx_core::Discretization;
use serde_json::Value;

use crate::complex::CTensor;
use crate::layer::{positive_arg, str_arg, BuildError, Cache, TrainLayer};
use crate::ops::{matmul_operand, softplus};
use crate::params::Params;
use crate::scan::complex_scan;

/// A trainable LTI S5 layer.
pub struct S5Lti {
    d_model: usize,
    d_state: usize,
    discretization: Discretization,
    params: Params,
}

impl S5Lti {
    /// From lrnnx's constructor arguments (`d_model`, `d_state`, `discretization`) and its
    /// parameters; checks every parameter's shape.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let d_model = positive_arg(kwargs, "d_model")?;
        let d_state = positive_arg(kwargs, "d_state")?;
        let discretization = match str_arg(kwargs, "discretization") {
            "bilinear" => Discretization::LrnnxInvertedBilinear,
            "zoh" => Discretization::Zoh,
            "dirac" => Discretization::Dirac,
            "no_discretization" => Discretization::None,
            other => {
                return Err(BuildError::Kwarg(format!(
                "`discretization`: `{other}` is not one of zoh, bilinear, dirac, no_discretization"
            )))
            }
        };
        let layer = S5Lti {
            d_model,
            d_state,
            discretization,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// The parameters with their shapes checked.
    fn weights(&self) -> Result<[Tensor; 5]> {
        let (h, n) = (self.d_model, self.d_state);
        let p = &self.params;
        Ok([
            p.get("A", &[n, 2])?,
            p.get("B", &[n, h])?,
            p.get("log_dt", &[n])?,
            p.get("C", &[h, n, 2])?,
            p.get("D", &[h, h])?,
        ])
    }

    /// `(Ā, B̄)` from the parameters (module doc).
    fn discretized(&self) -> Result<(CTensor, CTensor)> {
        let [a, b, log_dt, _, _] = self.weights()?;
        let a_c = CTensor::new(
            softplus(&a.narrow(1, 0, 1)?.squeeze(1)?)?.neg()?,
            a.narrow(1, 1, 1)?.squeeze(1)?,
        );
        let dt = log_dt.exp()?;
        let z = a_c.mul_real(&dt)?;
        let one = CTensor::from_real(&z.re.ones_like()?)?;
        let (a_bar, gamma) = match self.discretization {
            Discretization::Zoh => {
                let a_bar = z.exp()?;
                let gamma = a_bar.affine(1.0, -1.0)?.div(&a_c)?; // (Ā − 1)/A
                (a_bar, gamma)
            }
            Discretization::LrnnxInvertedBilinear => {
                let den = z.affine(0.5, 1.0)?; // 1 + ΔA/2
                let num = z.affine(-0.5, 1.0)?; // 1 − ΔA/2
                let gamma = CTensor::from_real(&dt)?.div(&den)?;
                (num.div(&den)?, gamma)
            }
            Discretization::Dirac => (z.exp()?, one),
            _ => (a_c.clone(), one),
        };
        let b_bar = CTensor::from_real(&b)?.mul(&CTensor::new(
            gamma.re.unsqueeze(1)?,
            gamma.im.unsqueeze(1)?,
        ))?;
        Ok((a_bar, b_bar))
    }
}

impl TrainLayer for S5Lti {
    fn forward(&self, x: &Tensor, _time_steps: Option<&Tensor>) -> Result<Tensor> {
        let [_, _, _, c, d] = self.weights()?;
        let (a_bar, b_bar) = self.discretized()?;
        // u = x B̄ᵀ: (B, L, H) × (H, N) → (B, L, N), complex.
        let u = CTensor::new(
            x.broadcast_matmul(&b_bar.re.t()?)?,
            x.broadcast_matmul(&b_bar.im.t()?)?,
        );
        let h = complex_scan(&a_bar, &u)?;
        // y = Re(h Cᵀ) + x D
        // the halves of the packed C are stride-2 views: copied out on CUDA for its matmul
        let c_re = matmul_operand(&c.narrow(2, 0, 1)?.squeeze(2)?)?;
        let c_im = matmul_operand(&c.narrow(2, 1, 1)?.squeeze(2)?)?;
        let y = (h.re.broadcast_matmul(&c_re.t()?)? - h.im.broadcast_matmul(&c_im.t()?)?)?;
        y + x.broadcast_matmul(&d)?
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// State: `[Re h, Im h]`, each (B, N).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let [_, _, _, c, d] = self.weights()?;
        let (a_bar, b_bar) = self.discretized()?;
        let c = CTensor::unpack(&c)?;
        let z = Tensor::zeros((batch, self.d_state), d.dtype(), d.device())?;
        Ok(Cache::new(
            STEP_NAME,
            self.params(),
            batch,
            d.dtype(),
            vec![z.clone(), z],
            vec![a_bar.re, a_bar.im, b_bar.re, b_bar.im, c.re, c.im, d],
        ))
    }

    /// `h ← Ā ⊙ h + B̄ x_t`, `y_t = Re(C h) + x_t D` (module doc).
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        cache.check_step(
            STEP_NAME,
            self.params(),
            x_t,
            self.d_model,
            time_step,
            false,
        )?;
        let [ar, ai, br, bi, cr, ci, d] = &cache.consts[..] else {
            bail!("S5 (LTI): malformed cache");
        };
        let h = CTensor::new(cache.state[0].clone(), cache.state[1].clone());
        let u = CTensor::new(x_t.matmul(&br.t()?)?, x_t.matmul(&bi.t()?)?);
        let h = CTensor::new(ar.clone(), ai.clone()).mul(&h)?.add(&u)?;
        let y = ((h.re.matmul(&cr.t()?)? - h.im.matmul(&ci.t()?)?)? + x_t.matmul(d)?)?;
        cache.state = vec![h.re, h.im];
        Ok(y)
    }
}

const STEP_NAME: &str = "S5 (LTI)";

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use lrnnx_core::{run_sequence, Layer, SliceParams, TensorView};
    use serde_json::json;

    struct Rng(u64);
    impl Rng {
        fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
                })
                .collect()
        }
    }

    /// lrnnx-shaped random weights: (name, shape, data).
    fn weights(h: usize, n: usize, seed: u64) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
        let mut r = Rng(seed | 1);
        vec![
            ("A", vec![n, 2], r.vec(2 * n, -1.0, 1.0)),
            ("B", vec![n, h], r.vec(n * h, -0.5, 0.5)),
            ("log_dt", vec![n], r.vec(n, -6.9, -2.3)),
            ("C", vec![h, n, 2], r.vec(2 * h * n, -0.5, 0.5)),
            ("D", vec![h, h], r.vec(h * h, -0.5, 0.5)),
        ]
    }

    fn params(w: &[(&'static str, Vec<usize>, Vec<f32>)], dtype: DType) -> Params {
        let mut p = Params::new();
        for (name, shape, data) in w {
            let t = Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).unwrap();
            p.insert(name, &t.to_dtype(dtype).unwrap()).unwrap();
        }
        p
    }

    /// Cross-mode parity: the parallel forward equals the lrnnx-core step (independently
    /// proven against lrnnx) for every discretization, several lengths, batches and widths.
    #[test]
    fn parallel_forward_equals_core_step() {
        for (rule, name) in [
            (Discretization::Zoh, "zoh"),
            (Discretization::LrnnxInvertedBilinear, "bilinear"),
            (Discretization::Dirac, "dirac"),
        ] {
            for &(h, n) in &[(3usize, 5usize), (8, 4)] {
                let w = weights(h, n, 7 + h as u64);
                let layer = S5Lti::from_lrnnx(
                    &json!({"d_model": h, "d_state": n, "discretization": name}),
                    params(&w, DType::F32),
                )
                .unwrap();
                let views: Vec<(&str, TensorView)> = w
                    .iter()
                    .map(|(k, s, d)| (*k, TensorView { data: d, shape: s }))
                    .collect();
                let cfg = lrnnx_core::S5LtiConfig {
                    d_model: h,
                    d_state: n,
                    discretization: rule,
                };
                let core = lrnnx_core::S5Lti::from_lrnnx(
                    cfg,
                    &SliceParams { entries: &views },
                    vec![0.0; cfg.weights_len()],
                )
                .unwrap();
                for &(b, l) in &[(1usize, 1usize), (3, 7), (1, 64), (3, 64), (1, 2048)] {
                    // lrnnx's inverted "bilinear" has |Ā| > 1: over 2048 steps both modes
                    // overflow alike, so the drift check is for the stable rules.
                    if l == 2048 && rule == Discretization::LrnnxInvertedBilinear {
                        continue;
                    }
                    let x = Rng(99 + l as u64).vec(b * l * h, -1.0, 1.0);
                    let xt = Tensor::from_vec(x.clone(), (b, l, h), &Device::Cpu).unwrap();
                    let y = layer
                        .forward(&xt, None)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let mut want = vec![0.0f32; b * l * h];
                    for r in 0..b {
                        let mut s = vec![0.0; core.state_len()];
                        run_sequence(
                            &core,
                            &mut s,
                            &x[r * l * h..(r + 1) * l * h],
                            &mut want[r * l * h..(r + 1) * l * h],
                        )
                        .unwrap();
                    }
                    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                    for (a, c) in y.iter().zip(&want) {
                        assert!(
                            (a - c).abs() <= 2e-5 * scale,
                            "{name} h{h} n{n} b{b} l{l}: {a} vs {c}"
                        );
                    }
                }
            }
        }
    }

    /// Gradients of every parameter against central finite differences, in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let (h, n, b, l) = (2, 3, 2, 5);
        let w = weights(h, n, 5);
        let x = Tensor::from_vec(Rng(3).vec(b * l * h, -1.0, 1.0), (b, l, h), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let g = Tensor::from_vec(Rng(4).vec(b * l * h, -1.0, 1.0), (b, l, h), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let kwargs = json!({"d_model": h, "d_state": n, "discretization": "zoh"});
        let loss = |p: Params| -> (f64, Option<candle_core::backprop::GradStore>, Params) {
            let layer = S5Lti::from_lrnnx(&kwargs, p).unwrap();
            let l = (layer.forward(&x, None).unwrap() * &g)
                .unwrap()
                .sum_all()
                .unwrap();
            let v = l.to_scalar::<f64>().unwrap();
            let grads = l.backward().ok();
            (v, grads, layer.params)
        };
        let (_, grads, p) = loss(params(&w, DType::F64));
        let grads = grads.unwrap();
        for (name, var) in p.vars() {
            let ga = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for k in 0..base.len() {
                let eval = |d: f64| {
                    let mut q = Params::new();
                    for (m, v) in p.vars() {
                        let mut t = v.as_tensor().detach();
                        if m == name {
                            let mut e = base.clone();
                            e[k] += d;
                            t = Tensor::from_vec(e, v.dims(), &Device::Cpu).unwrap();
                        }
                        q.insert(m, &t).unwrap();
                    }
                    loss(q).0
                };
                let fd = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                assert!(
                    (ga[k] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{name}[{k}]: {} vs {fd}",
                    ga[k]
                );
            }
        }
    }

    #[test]
    fn wrong_shapes_and_names_are_errors() {
        let mut w = weights(2, 3, 1);
        w[1].1 = vec![2, 3];
        w[1].2 = vec![0.0; 6];
        let e = S5Lti::from_lrnnx(
            &json!({"d_model": 2, "d_state": 3, "discretization": "zoh"}),
            params(&w, DType::F32),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("`B`"), "{e}");
        let e = S5Lti::from_lrnnx(
            &json!({"d_model": 2, "d_state": 3, "discretization": "async"}),
            params(&weights(2, 3, 1), DType::F32),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("discretization"), "{e}");
    }
}
