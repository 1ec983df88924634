//! Optimization: AdamW, global gradient-norm clipping and a warmup + cosine learning rate.
//!
//! AdamW as PyTorch's `torch.optim.AdamW` (decoupled weight decay), at step t = 1, 2, …:
//!
//! ```text
//! p ← p·(1 − lr·wd)
//! m ← β₁m + (1 − β₁)g          v ← β₂v + (1 − β₂)g²
//! p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! A parameter without a gradient is left alone (no decay either), as in PyTorch.
//!
//! Clipping as `torch.nn.utils.clip_grad_norm_`: `‖g‖ = √(Σ over all parameters of Σ g²)`
//! (accumulated in f64 on the host in a fixed order, so the same on any thread count);
//! when `‖g‖ > max_norm` every gradient is scaled by `max_norm / (‖g‖ + 1e-6)`.
//!
//! Every update is elementwise: a seed gives bit-identical training on any thread count as
//! far as this module is concerned.

use candle_core::backprop::GradStore;
use candle_core::{bail, Result, Tensor, Var};

/// AdamW's hyper-parameters other than the learning rate (which is given to every step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁ (PyTorch default 0.9).
    pub beta1: f64,
    /// β₂ (PyTorch default 0.999).
    pub beta2: f64,
    /// ε (PyTorch default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay for every parameter unless changed by
    /// [`AdamW::set_weight_decay`] (PyTorch default 0.01).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One optimized parameter and its moments.
struct Slot {
    name: String,
    var: Var,
    weight_decay: f64,
    m: Tensor,
    v: Tensor,
}

/// The AdamW optimizer over a fixed list of named parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    t: u64,
}

impl AdamW {
    /// An optimizer over `vars` (name, variable), moments zero.
    pub fn new(vars: impl IntoIterator<Item = (String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    name,
                    weight_decay: cfg.weight_decay,
                    m: z.clone(),
                    v: z,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { cfg, slots, t: 0 })
    }

    /// Sets the weight decay of parameter `name`; false if there is no such parameter.
    pub fn set_weight_decay(&mut self, name: &str, weight_decay: f64) -> bool {
        match self.slots.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.weight_decay = weight_decay;
                true
            }
            None => false,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The optimized parameters, in order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// One update with learning rate `lr` from the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let AdamWConfig {
            beta1, beta2, eps, ..
        } = self.cfg;
        let t = self.t as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let p = s.var.as_tensor().detach();
            let p = p.affine(1.0 - lr * s.weight_decay, 0.0)?;
            s.m = (s.m.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
            s.v = (s.v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
            let denom = s.v.sqrt()?.affine(1.0 / bias2_sqrt, eps)?;
            let update = s.m.div(&denom)?.affine(lr / bias1, 0.0)?;
            s.var.set(&(p - update)?)?;
        }
        Ok(())
    }
}

/// Scales the gradients of `vars` in `grads` so that their global norm is at most `max_norm`
/// (module doc); returns the norm before clipping. `max_norm = +∞` clips nothing (the norm is
/// still checked). Errors, leaving `grads` unchanged: `max_norm` negative or NaN, and a norm that
/// is not finite (a gradient holding NaN or ∞: stepping on it would ruin every parameter).
pub fn clip_grad_norm<'a>(
    grads: &mut GradStore,
    vars: impl IntoIterator<Item = &'a Var>,
    max_norm: f64,
) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        bail!("max_norm is {max_norm}: the gradient norm limit must be >= 0 (+inf: no clipping)");
    }
    let vars: Vec<&Var> = vars.into_iter().collect();
    // Σ g² in f64 on the gradients' device; one scalar read back
    let mut sum: Option<Tensor> = None;
    for v in &vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?;
            sum = Some(match sum {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
    }
    let sum = match sum {
        Some(s) => s.to_scalar::<f64>()?,
        None => 0.0,
    };
    let norm = sum.sqrt();
    if !norm.is_finite() {
        bail!(
            "the gradient norm is {norm}: a gradient holds NaN or infinite values (or the sum \
             of squares overflows f64)"
        );
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = g.affine(coef, 0.0)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// Linear warmup then cosine decay.
///
/// ```text
/// lr(s) = peak·(s + 1)/warmup                                  s < warmup
/// lr(s) = min + (peak − min)·½(1 + cos(π·min(1, (s − warmup)/(total − warmup))))   otherwise
/// ```
///
/// (steps count from 0; past `total_steps` it stays at `min_lr`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Learning rate at the end of warmup.
    pub peak_lr: f64,
    /// Learning rate at the end of the decay.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Total steps (warmup included).
    pub total_steps: usize,
}

impl WarmupCosine {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr
            + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn var(v: &[f64]) -> Var {
        Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn schedule_values() {
        let s = WarmupCosine {
            peak_lr: 1e-2,
            min_lr: 1e-4,
            warmup_steps: 10,
            total_steps: 110,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(s.lr(0), 1e-3));
        assert!(close(s.lr(4), 5e-3));
        assert!(close(s.lr(9), 1e-2));
        assert!(close(s.lr(10), 1e-2)); // decay starts at the peak
        assert!(close(s.lr(60), 1e-4 + (1e-2 - 1e-4) * 0.5)); // half-way: cos(π/2) = 0
                                                              // a quarter of the way: ½(1 + cos π/4)
        let q = 1e-4 + (1e-2 - 1e-4) * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(close(s.lr(35), q));
        assert!(close(s.lr(110), 1e-4));
        assert!(close(s.lr(1000), 1e-4));
        for i in 10..110 {
            assert!(s.lr(i + 1) <= s.lr(i));
        }
        let no_warmup = WarmupCosine {
            warmup_steps: 0,
            ..s
        };
        assert!(close(no_warmup.lr(0), 1e-2));
    }

    #[test]
    fn clipping_scales_to_max_norm_and_leaves_small_gradients() {
        let a = var(&[1.0, 2.0, 3.0]);
        let b = var(&[-4.0, 0.5]);
        let loss = (a.as_tensor().sqr().unwrap().sum_all().unwrap()
            + b.as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap(); // grads 2a, 2b
        let mut g = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut g, [&a, &b], 1.5).unwrap();
        let expect = 2.0 * (1.0f64 + 4.0 + 9.0 + 16.0 + 0.25).sqrt();
        assert!((norm - expect).abs() < 1e-12);
        let ga = vals(g.get(a.as_tensor()).unwrap());
        let gb = vals(g.get(b.as_tensor()).unwrap());
        let after = ga.iter().chain(&gb).map(|x| x * x).sum::<f64>().sqrt();
        assert!((after - 1.5).abs() < 1e-6, "{after}");
        // direction kept
        assert!((ga[1] / ga[0] - 2.0).abs() < 1e-12 && (gb[0] / ga[0] + 4.0).abs() < 1e-12);
        // below the limit: untouched
        let mut g = loss.backward().unwrap();
        let n = clip_grad_norm(&mut g, [&a, &b], 100.0).unwrap();
        assert!((n - expect).abs() < 1e-12);
        assert_eq!(vals(g.get(a.as_tensor()).unwrap()), vec![2.0, 4.0, 6.0]);
        // +inf: no clipping, the norm still reported
        let mut g = loss.backward().unwrap();
        let n = clip_grad_norm(&mut g, [&a, &b], f64::INFINITY).unwrap();
        assert!((n - expect).abs() < 1e-12);
        assert_eq!(vals(g.get(a.as_tensor()).unwrap()), vec![2.0, 4.0, 6.0]);
        // a negative or NaN limit is refused (a negative coefficient would flip every sign)
        for bad in [-1.0, f64::NAN] {
            let mut g = loss.backward().unwrap();
            let e = clip_grad_norm(&mut g, [&a, &b], bad).unwrap_err();
            assert!(e.to_string().contains("max_norm"), "{e}");
            assert_eq!(vals(g.get(a.as_tensor()).unwrap()), vec![2.0, 4.0, 6.0]);
        }
    }

    /// A NaN or infinite gradient is an error that leaves the gradients as they were.
    #[test]
    fn clipping_refuses_non_finite_gradients() {
        for bad in [f64::NAN, f64::INFINITY] {
            let a = var(&[1.0, 2.0]);
            let w = Tensor::new(&[bad, 1.0], &Device::Cpu).unwrap();
            let loss = (a.as_tensor() * &w).unwrap().sum_all().unwrap();
            let mut g = loss.backward().unwrap();
            let e = clip_grad_norm(&mut g, [&a], 1.0).unwrap_err();
            assert!(e.to_string().contains("gradient norm"), "{e}");
            let ga = vals(g.get(a.as_tensor()).unwrap());
            assert!(ga[0].is_nan() || ga[0].is_infinite());
            assert_eq!(ga[1], 1.0);
        }
    }

    #[test]
    fn adamw_matches_hand_computed_steps() {
        // loss = Σ c ⊙ p, so g = c at every step.
        let p0 = [0.5, -1.0, 2.0];
        let c = Tensor::new(&[0.3f64, -2.0, 1e-3], &Device::Cpu).unwrap();
        let p = var(&p0);
        let cfg = AdamWConfig {
            beta1: 0.8,
            beta2: 0.9,
            eps: 1e-3,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new([("p".to_string(), p.clone())], cfg).unwrap();
        let (lr1, lr2) = (0.05, 0.02);
        let grads = (p.as_tensor() * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads, lr1).unwrap();
        let g = [0.3, -2.0, 1e-3];
        // step 1 by hand: m = 0.2g, v = 0.1g², m̂ = g, v̂ = g²
        let mut expect1 = [0.0; 3];
        for i in 0..3 {
            let decayed = p0[i] * (1.0 - lr1 * 0.1);
            let m = 0.2 * g[i];
            let v = 0.1 * g[i] * g[i];
            expect1[i] = decayed - lr1 / 0.2 * m / (v.sqrt() / 0.1f64.sqrt() + 1e-3);
        }
        let got = vals(p.as_tensor());
        for i in 0..3 {
            assert!(
                (got[i] - expect1[i]).abs() < 1e-14,
                "{i}: {got:?} {expect1:?}"
            );
        }
        // step 2: m = 0.8·0.2g + 0.2g = 0.36g, v = 0.9·0.1g² + 0.1g² = 0.19g²
        let grads = (p.as_tensor() * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads, lr2).unwrap();
        let got = vals(p.as_tensor());
        for i in 0..3 {
            let decayed = expect1[i] * (1.0 - lr2 * 0.1);
            let (m, v) = (0.36 * g[i], 0.19 * g[i] * g[i]);
            let (bc1, bc2) = (1.0 - 0.64, 1.0 - 0.81f64);
            let e = decayed - lr2 / bc1 * m / (v.sqrt() / bc2.sqrt() + 1e-3);
            assert!((got[i] - e).abs() < 1e-14, "{i}: {} {e}", got[i]);
        }
        assert_eq!(opt.steps(), 2);
    }

    #[test]
    fn adamw_skips_parameters_without_gradient_and_per_parameter_decay() {
        let a = var(&[1.0]);
        let b = var(&[1.0]);
        let mut opt = AdamW::new(
            [("a".to_string(), a.clone()), ("b".to_string(), b.clone())],
            AdamWConfig::default(),
        )
        .unwrap();
        assert!(opt.set_weight_decay("a", 0.0));
        assert!(!opt.set_weight_decay("zz", 0.0));
        // gradient exactly zero for a: with no decay it must not move
        let grads = (a.as_tensor() * 0.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads, 0.1).unwrap();
        assert_eq!(vals(a.as_tensor()), vec![1.0]);
        assert_eq!(vals(b.as_tensor()), vec![1.0]); // no gradient: untouched
    }
}
