//! LRU, the Linear Recurrent Unit (lrnnx `lrnnx.models.lti.lru.LRU`, spec §7), trainable.
//!
//! ```text
//! λ = exp(−exp(nu_log) + i·exp(theta_log))                  (N,)
//! B_norm = (B_re + i·B_im) ⊙ exp(gamma_log)[:, None]        (N,H)
//! h_t = λ ⊙ h_{t−1} + B_norm x_t                            (parallel: the complex scan over t)
//! y_t = Re(C h_t) + D ⊙ x_t                                 (C = C_re + i·C_im, H×N; D (H,))
//! ```
//!
//! lrnnx evaluates the same map as a convolution with the kernel `K[n,l] = λ_n^l`; the
//! recurrence is its exact equivalent (and the gradients are the same functions of the
//! parameters). Parameters (lrnnx names): `nu_log` (N,), `theta_log` (N,), `gamma_log` (N,),
//! `B_re`, `B_im` (N,H), `C_re`, `C_im` (H,N), `D` (H,). The constructor arguments `r_min`,
//! `r_max` and `max_phase` only shape lrnnx's initialization and are not needed.

use candle_core::{bail, Result, Tensor};
use serde_json::Value;

use crate::complex::CTensor;
use crate::layer::{positive_arg, BuildError, Cache, TrainLayer};
use crate::params::Params;
use crate::scan::complex_scan;

/// A trainable LRU layer.
pub struct Lru {
    d_model: usize,
    d_state: usize,
    params: Params,
}

impl Lru {
    /// From lrnnx's constructor arguments (`d_model`, `d_state`) and its parameters; checks
    /// every parameter's shape.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let layer = Lru {
            d_model: positive_arg(kwargs, "d_model")?,
            d_state: positive_arg(kwargs, "d_state")?,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// `[nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D]`, shapes checked.
    fn weights(&self) -> Result<[Tensor; 8]> {
        let (h, n) = (self.d_model, self.d_state);
        let p = &self.params;
        Ok([
            p.get("nu_log", &[n])?,
            p.get("theta_log", &[n])?,
            p.get("gamma_log", &[n])?,
            p.get("B_re", &[n, h])?,
            p.get("B_im", &[n, h])?,
            p.get("C_re", &[h, n])?,
            p.get("C_im", &[h, n])?,
            p.get("D", &[h])?,
        ])
    }
}

/// Checks that `x` is (B, L, `h`) and returns (B, L).
pub(crate) fn check_input(x: &Tensor, h: usize) -> Result<(usize, usize)> {
    match x.dims() {
        [b, l, hh] if *hh == h => Ok((*b, *l)),
        d => bail!("input `x` has shape {d:?}, expected (batch, length, {h})"),
    }
}

impl TrainLayer for Lru {
    fn forward(&self, x: &Tensor, _time_steps: Option<&Tensor>) -> Result<Tensor> {
        check_input(x, self.d_model)?;
        let [nu_log, theta_log, gamma_log, b_re, b_im, c_re, c_im, d] = self.weights()?;
        let lambda = CTensor::new(nu_log.exp()?.neg()?, theta_log.exp()?).exp()?;
        let gamma = gamma_log.exp()?.unsqueeze(1)?;
        // u = x B_normᵀ: (B, L, H) × (H, N) → (B, L, N), complex.
        let u = CTensor::new(
            x.broadcast_matmul(&b_re.broadcast_mul(&gamma)?.t()?)?,
            x.broadcast_matmul(&b_im.broadcast_mul(&gamma)?.t()?)?,
        );
        let h = complex_scan(&lambda, &u)?;
        // y = Re(h Cᵀ) + x ⊙ D
        let y = (h.re.broadcast_matmul(&c_re.t()?)? - h.im.broadcast_matmul(&c_im.t()?)?)?;
        y + x.broadcast_mul(&d)?
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// State: `[Re h, Im h]`, each (B, N).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let [nu_log, theta_log, gamma_log, b_re, b_im, c_re, c_im, d] = self.weights()?;
        let lambda = CTensor::new(nu_log.exp()?.neg()?, theta_log.exp()?).exp()?;
        let gamma = gamma_log.exp()?.unsqueeze(1)?;
        let z = Tensor::zeros((batch, self.d_state), d.dtype(), d.device())?;
        Ok(Cache::new(
            STEP_NAME,
            self.params(),
            batch,
            d.dtype(),
            vec![z.clone(), z],
            vec![
                lambda.re,
                lambda.im,
                b_re.broadcast_mul(&gamma)?,
                b_im.broadcast_mul(&gamma)?,
                c_re,
                c_im,
                d,
            ],
        ))
    }

    /// `h ← λ ⊙ h + B_norm x_t`, `y_t = Re(C h) + D ⊙ x_t` (module doc).
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        cache.check_step(
            STEP_NAME,
            self.params(),
            x_t,
            self.d_model,
            time_step,
            false,
        )?;
        let [lr, li, br, bi, cr, ci, d] = &cache.consts[..] else {
            bail!("LRU: malformed cache");
        };
        let h = CTensor::new(cache.state[0].clone(), cache.state[1].clone());
        let u = CTensor::new(x_t.matmul(&br.t()?)?, x_t.matmul(&bi.t()?)?);
        let h = CTensor::new(lr.clone(), li.clone()).mul(&h)?.add(&u)?;
        let y = ((h.re.matmul(&cr.t()?)? - h.im.matmul(&ci.t()?)?)? + x_t.broadcast_mul(d)?)?;
        cache.state = vec![h.re, h.im];
        Ok(y)
    }
}

const STEP_NAME: &str = "LRU";

/// Test helpers shared by the LTI layer modules ([`crate::lru`], [`crate::s4d`],
/// [`crate::centaurus`]): random parameters, the lrnnx-core reference run, finite differences.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{DType, Device, Tensor};
    use lrnnx_core::{run_sequence, Layer, SliceParams, TensorView};

    use crate::layer::TrainLayer;
    use crate::params::Params;

    /// Deterministic uniform numbers in `[lo, hi)` (xorshift).
    pub fn uniform(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
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

    /// Named parameter tensors (values kept in f32, as lrnnx stores them).
    #[derive(Default)]
    pub struct Named {
        /// `(name, shape, data)`.
        pub entries: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
        seed: u64,
    }

    impl Named {
        /// An empty set whose random draws start from `seed`.
        pub fn new(seed: u64) -> Self {
            Named {
                entries: Vec::new(),
                seed,
            }
        }

        /// Adds `name` with uniform values in `[lo, hi)`.
        pub fn add(&mut self, name: &'static str, shape: &[usize], lo: f64, hi: f64) {
            self.seed += 1;
            let n = shape.iter().product();
            let v = uniform(n, self.seed, lo, hi);
            self.entries
                .push((name, shape.to_vec(), v.iter().map(|&x| x as f32).collect()));
        }

        /// The values of `name`.
        pub fn get_mut(&mut self, name: &str) -> &mut Vec<f32> {
            &mut self.entries.iter_mut().find(|e| e.0 == name).unwrap().2
        }

        /// The set as training parameters of `dtype`.
        pub fn params(&self, dtype: DType) -> Params {
            let mut p = Params::new();
            for (name, shape, data) in &self.entries {
                let t = Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                p.insert(name, &t).unwrap();
            }
            p
        }

        /// Calls `f` with the set as an lrnnx-core parameter source.
        pub fn with_core<R>(&self, f: impl FnOnce(&SliceParams<'_>) -> R) -> R {
            let views: Vec<(&str, TensorView<'_>)> = self
                .entries
                .iter()
                .map(|(n, s, d)| {
                    (
                        *n,
                        TensorView {
                            data: d.as_slice(),
                            shape: s.as_slice(),
                        },
                    )
                })
                .collect();
            f(&SliceParams { entries: &views })
        }
    }

    /// The core layer stepped over each batch element of `x` (B·L·H, row-major) from a zero
    /// state; returns (B·L·d_output).
    pub fn core_run<C: Layer + ?Sized>(core: &C, x: &[f32], b: usize, l: usize) -> Vec<f32> {
        let (h, o) = (core.d_input(), core.d_output());
        let mut y = vec![0.0f32; b * l * o];
        for bi in 0..b {
            let mut state = vec![0.0f32; core.state_len()];
            run_sequence(
                core,
                &mut state,
                &x[bi * l * h..(bi + 1) * l * h],
                &mut y[bi * l * o..(bi + 1) * l * o],
            )
            .unwrap();
        }
        y
    }

    /// The parallel forward (f32) of `layer` equals the core stepped over the same input, for
    /// lengths 1, 7 and 64 and batches 1 and 3 (tolerance relative to max|y|).
    pub fn check_parity<C: Layer + ?Sized>(layer: &dyn TrainLayer, core: &C, seed: u64) {
        let h = core.d_input();
        for &b in &[1usize, 3] {
            for &l in &[1usize, 7, 64] {
                let xs: Vec<f32> = uniform(b * l * h, seed + (b * 100 + l) as u64, -1.5, 1.5)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let x = Tensor::from_vec(xs.clone(), (b, l, h), &Device::Cpu).unwrap();
                let ours = layer
                    .forward(&x, None)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let want = core_run(core, &xs, b, l);
                assert_eq!(ours.len(), want.len(), "B={b} L={l}: output size");
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
                for (i, (a, w)) in ours.iter().zip(&want).enumerate() {
                    assert!(
                        (a - w).abs() <= 2e-5 * scale,
                        "B={b} L={l} elem {i}: {a} vs {w} (scale {scale})"
                    );
                }
            }
        }
    }

    /// Gradients of `loss = Σ y ⊙ g` in f64 (parameters and `x`) against central finite
    /// differences for `picks` elements of each parameter in `names` (and of `x`).
    pub fn check_finite_differences(
        named: &Named,
        build: impl Fn(Params) -> Box<dyn TrainLayer>,
        (b, l, h): (usize, usize, usize),
        names: &[&str],
        picks: usize,
    ) {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(uniform(b * l * h, 900, -1.0, 1.0), (b, l, h), &dev).unwrap();
        let x = candle_core::Var::from_tensor(&x).unwrap();
        let layer = build(named.params(DType::F64));
        let y = layer.forward(x.as_tensor(), None).unwrap();
        let g = Tensor::from_vec(uniform(y.elem_count(), 901, -1.0, 1.0), y.shape(), &dev).unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        // The loss with one element of one parameter (or of x, `name == "x"`) moved by `d`.
        let loss_at = |name: &str, k: usize, d: f64| -> f64 {
            let mut xv = x
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let mut p = Params::new();
            for (n, shape, data) in &named.entries {
                let mut v: Vec<f64> = data.iter().map(|&a| a as f64).collect();
                if *n == name {
                    v[k] += d;
                }
                p.insert(n, &Tensor::from_vec(v, shape.as_slice(), &dev).unwrap())
                    .unwrap();
            }
            if name == "x" {
                xv[k] += d;
            }
            let xt = Tensor::from_vec(xv, (b, l, h), &dev).unwrap();
            let y = build(p).forward(&xt, None).unwrap();
            (y * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let mut all: Vec<&str> = names.to_vec();
        all.push("x");
        for name in all {
            let got = if name == "x" {
                grads.get(x.as_tensor()).unwrap().clone()
            } else {
                let v = &layer.params().vars()[name];
                match grads.get(v.as_tensor()) {
                    Some(t) => t.clone(),
                    None => v.as_tensor().zeros_like().unwrap(),
                }
            };
            let got = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let step = (got.len() / picks).max(1);
            for k in (0..got.len()).step_by(step).take(picks) {
                let eps = 1e-6;
                let fd = (loss_at(name, k, eps) - loss_at(name, k, -eps)) / (2.0 * eps);
                assert!(
                    (got[k] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "d loss / d {name}[{k}]: backward {} vs finite difference {fd}",
                    got[k]
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{check_finite_differences, check_parity, Named};
    use super::*;
    use candle_core::DType;
    use lrnnx_core::{Lru as CoreLru, LruConfig};
    use serde_json::json;

    fn named(h: usize, n: usize, seed: u64) -> Named {
        let mut p = Named::new(seed);
        p.add("nu_log", &[n], -4.5, -0.4);
        p.add("theta_log", &[n], -3.0, 1.8);
        p.add("gamma_log", &[n], -2.0, 0.0);
        p.add("B_re", &[n, h], -0.5, 0.5);
        p.add("B_im", &[n, h], -0.5, 0.5);
        p.add("C_re", &[h, n], -0.5, 0.5);
        p.add("C_im", &[h, n], -0.5, 0.5);
        p.add("D", &[h], -1.0, 1.0);
        p
    }

    fn build(h: usize, n: usize, p: Params) -> Box<dyn TrainLayer> {
        Box::new(Lru::from_lrnnx(&json!({"d_model": h, "d_state": n}), p).unwrap())
    }

    #[test]
    fn forward_matches_core_step() {
        let (h, n) = (5, 9);
        let p = named(h, n, 1);
        let layer = build(h, n, p.params(DType::F32));
        let cfg = LruConfig {
            d_model: h,
            d_state: n,
        };
        let core = p.with_core(|src| CoreLru::from_lrnnx(cfg, src, vec![0.0; cfg.weights_len()]));
        check_parity(layer.as_ref(), &core.unwrap(), 10);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (h, n) = (3, 4);
        let p = named(h, n, 2);
        check_finite_differences(
            &p,
            |ps| build(h, n, ps),
            (2, 6, h),
            &[
                "nu_log",
                "theta_log",
                "gamma_log",
                "B_re",
                "B_im",
                "C_re",
                "C_im",
                "D",
            ],
            3,
        );
    }

    #[test]
    fn shape_errors_name_the_tensor() {
        let (h, n) = (3, 4);
        let mut p = named(h, n, 3);
        p.entries.retain(|e| e.0 != "gamma_log");
        let err = Lru::from_lrnnx(&json!({"d_model": h, "d_state": n}), p.params(DType::F32))
            .err()
            .unwrap();
        assert!(err.to_string().contains("gamma_log"), "{err}");
        let p = named(h, n + 1, 3);
        let err = Lru::from_lrnnx(&json!({"d_model": h, "d_state": n}), p.params(DType::F32))
            .err()
            .unwrap();
        assert!(err.to_string().contains("nu_log"), "{err}");
        assert!(
            Lru::from_lrnnx(&json!({"d_model": h}), named(h, n, 3).params(DType::F32)).is_err()
        );
        let layer = build(h, n, named(h, n, 3).params(DType::F32));
        let x = Tensor::zeros((2, 5, h + 1), DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = layer.forward(&x, None).unwrap_err();
        assert!(err.to_string().contains("`x`"), "{err}");
    }
}
