//! Centaurus (lrnnx `lrnnx.models.lti.centaurus`, spec §8), trainable: the four classes
//! `CentaurusNeck`, `CentaurusPWNeck`, `CentaurusDWS` and `CentaurusFull` in one layer,
//! [`Centaurus`], selected by [`CentaurusMode`].
//!
//! H = `d_model`, N = `d_state`, M = `sub_state_dim`. Every state `n` has M complex sub-states
//! with eigenvalues `A[n,m]` and one time step `Δ_n = exp(log_delta[n])`:
//!
//! ```text
//! Ā[n,m] = exp(Δ_n·A[n,m])            B̄ = Δ ⊙ B (row n scaled by Δ_n)
//!
//! Neck / DWS / Full:
//!   u_t      = B̄ x_t                                   (N real: dense / diagonal / sparse)
//!   S_t[n,m] = Ā[n,m]·S_{t−1}[n,m] + u_t[n]           (parallel: the complex scan over t)
//!   r_t[n]   = Σ_m E[n,m]·Re S_t[n,m]
//!   y_t      = C_eff r_t                               (dense / diagonal / sparse)
//! PWNeck (state s = n·M + m flattened):
//!   s_t = Ā_flat ⊙ s_{t−1} + B̄ x_t,   B̄[s,·] = Δ_n·B[s,·]     (B real (N·M)×H)
//!   y_t = C Re(s_t)                                            (C real H×(N·M))
//! ```
//!
//! Effective maps (spec §8.3): Neck `B̄ = Δ⊙B` (N×H), `C_eff = C` (H×N); DWS (N = H)
//! `B̄ = diag(Δ⊙B)`, `C_eff = diag(C)`; Full (N ≥ H²) state `n < H²` takes input `n mod H`
//! (weight `Δ_n·B[n]`) and feeds output `n div H` (weight `C[n]`); states `n ≥ H²` are
//! unconnected (lrnnx gives them zero gradients; here they are left out of the scan, with the
//! same zero gradients). There is no `D`/skip term. lrnnx evaluates the same map as an FFT
//! convolution with the kernel `K[n,l] = Σ_m E[n,m]·Re exp(l·Δ_n·A[n,m])`; the recurrence is its
//! exact equivalent.
//!
//! lrnnx validates its `discretization` argument (`zoh`, `bilinear`, `dirac`, `async`,
//! `no_discretization`) and then ignores it: every name gives the computation above.
//!
//! Parameters (lrnnx names): `A` (N,M,2) — a complex64 parameter, stored as its real view
//! `(re, im)`, so its gradient is `(∂L/∂Re, ∂L/∂Im)` as in PyTorch; `E` (N,M) (not in PWNeck);
//! `log_delta` (N,); `B`, `C` of shapes Neck (N,H)/(H,N), DWS (H,)/(H,), Full (N,)/(N,),
//! PWNeck (N·M,H)/(H,N·M).

use candle_core::{Result, Tensor};
use serde_json::Value;

use crate::complex::CTensor;
use crate::layer::{usize_arg, BuildError, Cache, TrainLayer};
use crate::lru::check_input;
use crate::params::Params;
use crate::scan::complex_scan;

/// Which of lrnnx's four Centaurus classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CentaurusMode {
    /// `CentaurusNeck`: dense `B` (N×H) and `C` (H×N), sub-states mixed by `E`.
    Neck,
    /// `CentaurusPWNeck`: each of the N·M sub-states is its own state, dense real `B`, `C`;
    /// no `E`.
    PointwiseNeck,
    /// `CentaurusDWS`: N = H, state n connects input n to output n.
    DepthwiseSeparable,
    /// `CentaurusFull`: N ≥ H², state `n < H²` connects input `n mod H` to output `n div H`.
    Full,
}

impl CentaurusMode {
    /// The mode of an lrnnx class name, with or without the module path.
    pub fn from_lrnnx_class(class: &str) -> Option<Self> {
        Some(match class.rsplit('.').next().unwrap_or(class) {
            "CentaurusNeck" => CentaurusMode::Neck,
            "CentaurusPWNeck" => CentaurusMode::PointwiseNeck,
            "CentaurusDWS" => CentaurusMode::DepthwiseSeparable,
            "CentaurusFull" => CentaurusMode::Full,
            _ => return None,
        })
    }
}

/// The names lrnnx's discretization registry accepts (all give the same Centaurus layer).
const LRNNX_DISCRETIZATIONS: [&str; 5] = ["zoh", "bilinear", "dirac", "async", "no_discretization"];

/// A trainable Centaurus layer (any of the four classes).
pub struct Centaurus {
    mode: CentaurusMode,
    d_model: usize,
    d_state: usize,
    sub_state_dim: usize,
    params: Params,
}

impl Centaurus {
    /// From lrnnx's class name, its constructor arguments (`d_model`, `d_state`,
    /// `sub_state_dim`, `discretization` (default "zoh"; validated, no effect)) and its
    /// parameters; checks the mode's size constraints and every parameter's shape.
    pub fn from_lrnnx(
        class: &str,
        kwargs: &Value,
        params: Params,
    ) -> std::result::Result<Self, BuildError> {
        let mode = CentaurusMode::from_lrnnx_class(class)
            .ok_or_else(|| BuildError::UnsupportedClass(class.to_owned()))?;
        let disc = match kwargs.get("discretization") {
            None | Some(Value::Null) => "zoh",
            Some(v) => v.as_str().unwrap_or("?"),
        };
        if !LRNNX_DISCRETIZATIONS.contains(&disc) {
            return Err(BuildError::Kwarg(format!(
                "`discretization`: `{disc}` is not one of {} (all give the same Centaurus layer)",
                LRNNX_DISCRETIZATIONS.join(", ")
            )));
        }
        let (h, n, m) = (
            usize_arg(kwargs, "d_model")?,
            usize_arg(kwargs, "d_state")?,
            usize_arg(kwargs, "sub_state_dim")?,
        );
        if h == 0 || n == 0 || m == 0 {
            return Err(BuildError::Kwarg(
                "`d_model`, `d_state`, `sub_state_dim` must be positive".into(),
            ));
        }
        crate::layer::axes_fit(&[("d_model", h), ("d_state", n), ("sub_state_dim", m)])?;
        match mode {
            CentaurusMode::DepthwiseSeparable if n != h => {
                return Err(BuildError::Kwarg(
                    "`d_state`: CentaurusDWS needs d_state == d_model".into(),
                ))
            }
            CentaurusMode::Full if h.checked_mul(h).is_none_or(|hh| n < hh) => {
                return Err(BuildError::Kwarg(
                    "`d_state`: CentaurusFull needs d_state >= d_model²".into(),
                ))
            }
            _ => {}
        }
        let layer = Centaurus {
            mode,
            d_model: h,
            d_state: n,
            sub_state_dim: m,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// The mode (lrnnx class).
    pub fn mode(&self) -> CentaurusMode {
        self.mode
    }

    /// `[A, log_delta, B, C]` and `E` (absent in PWNeck), shapes checked.
    fn weights(&self) -> Result<([Tensor; 4], Option<Tensor>)> {
        let (h, n, m) = (self.d_model, self.d_state, self.sub_state_dim);
        let (b_shape, c_shape): (&[usize], &[usize]) = match self.mode {
            CentaurusMode::Neck => (&[n, h], &[h, n]),
            CentaurusMode::PointwiseNeck => (&[n * m, h], &[h, n * m]),
            CentaurusMode::DepthwiseSeparable => (&[h], &[h]),
            CentaurusMode::Full => (&[n], &[n]),
        };
        let p = &self.params;
        let main = [
            p.get("A", &[n, m, 2])?,
            p.get("log_delta", &[n])?,
            p.get("B", b_shape)?,
            p.get("C", c_shape)?,
        ];
        let e = match self.mode {
            CentaurusMode::PointwiseNeck => None,
            _ => Some(p.get("E", &[n, m])?),
        };
        Ok((main, e))
    }
}

impl Centaurus {
    /// `Ā` of the scanned states (flattened: (nc·M,) or, in PWNeck, (N·M,)) and `nc`, the
    /// number of connected states (N; H² in Full).
    fn transition(&self, a: &Tensor, dt: &Tensor) -> Result<(CTensor, usize)> {
        let (h, n, m) = (self.d_model, self.d_state, self.sub_state_dim);
        let a_bar = CTensor::unpack(a)?.mul_real(&dt.unsqueeze(1)?)?.exp()?; // (N, M)
        let nc = match self.mode {
            CentaurusMode::Full => h * h,
            _ => n,
        };
        Ok((
            CTensor::new(
                a_bar.re.narrow(0, 0, nc)?.reshape(nc * m)?,
                a_bar.im.narrow(0, 0, nc)?.reshape(nc * m)?,
            ),
            nc,
        ))
    }

    /// The real input of every scanned state, (B, L, S) from `x` (B, L, H): `B̄ x_t` broadcast
    /// over the M sub-states (PWNeck: one per state).
    fn state_input(&self, x: &Tensor, b: &Tensor, dt: &Tensor, nc: usize) -> Result<Tensor> {
        let (h, n, m) = (self.d_model, self.d_state, self.sub_state_dim);
        let (bsz, l, _) = x.dims3()?;
        let u = match self.mode {
            CentaurusMode::PointwiseNeck => {
                // B̄[s,·] = Δ_n·B[s,·] for s = n·M + m.
                let dt_flat = dt.unsqueeze(1)?.broadcast_as((n, m))?.reshape((n * m, 1))?;
                return x.broadcast_matmul(&b.broadcast_mul(&dt_flat)?.t()?); // (B, L, N·M)
            }
            CentaurusMode::Neck => {
                let bd = b.broadcast_mul(&dt.unsqueeze(1)?)?; // (N, H)
                x.broadcast_matmul(&bd.t()?)?
            }
            CentaurusMode::DepthwiseSeparable => x.broadcast_mul(&(b * dt)?)?,
            CentaurusMode::Full => {
                // Full: state n = i·H + j (< H²) reads input j with weight Δ_n·B[n].
                let bd = (b * dt)?.narrow(0, 0, h * h)?;
                x.repeat((1, 1, h))?.broadcast_mul(&bd)?
            }
        };
        u.unsqueeze(3)?
            .broadcast_as((bsz, l, nc, m))?
            .reshape((bsz, l, nc * m))
    }

    /// The output (B, L, H) from the real parts of the scanned states (B, L, S).
    fn output(&self, s_re: &Tensor, c: &Tensor, e: Option<&Tensor>, nc: usize) -> Result<Tensor> {
        let (h, m) = (self.d_model, self.sub_state_dim);
        let (bsz, l, _) = s_re.dims3()?;
        let Some(e) = e else {
            return s_re.broadcast_matmul(&c.t()?); // PWNeck
        };
        // r[n] = Σ_m E[n,m]·Re S[n,m]
        let r = s_re
            .reshape((bsz, l, nc, m))?
            .broadcast_mul(&e.narrow(0, 0, nc)?)?
            .sum(3)?;
        match self.mode {
            CentaurusMode::Neck => r.broadcast_matmul(&c.t()?),
            CentaurusMode::DepthwiseSeparable => r.broadcast_mul(c),
            _ => r
                .broadcast_mul(&c.narrow(0, 0, nc)?)?
                .reshape((bsz, l, h, h))?
                .sum(3),
        }
    }
}

impl TrainLayer for Centaurus {
    fn forward(&self, x: &Tensor, _time_steps: Option<&Tensor>) -> Result<Tensor> {
        check_input(x, self.d_model)?;
        let ([a, log_delta, b, c], e) = self.weights()?;
        let dt = log_delta.exp()?; // (N,)
        let (a_bar, nc) = self.transition(&a, &dt)?;
        let u = self.state_input(x, &b, &dt, nc)?;
        let s = complex_scan(&a_bar, &CTensor::from_real(&u)?)?;
        self.output(&s.re, &c, e.as_ref(), nc)
    }

    /// State: `[Re S, Im S]`, each (B, S) with S = nc·M scanned sub-states (lrnnx's
    /// `lrnn_state` (B, N, M) complex; Full keeps only the H² connected states).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let ([a, log_delta, b, c], e) = self.weights()?;
        let dt = log_delta.exp()?;
        let (a_bar, _) = self.transition(&a, &dt)?;
        let z = Tensor::zeros((batch, a_bar.re.dim(0)?), a.dtype(), a.device())?;
        let mut consts = vec![a_bar.re, a_bar.im, b, c, dt];
        consts.extend(e);
        Ok(Cache::new(
            "Centaurus",
            self.params(),
            batch,
            z.dtype(),
            vec![z.clone(), z],
            consts,
        ))
    }

    /// `S ← Ā ⊙ S + B̄ x_t`, `y_t` from `Re S` (module doc).
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        cache.check_step(
            "Centaurus",
            self.params(),
            x_t,
            self.d_model,
            time_step,
            false,
        )?;
        let (ar, ai, b, c, dt) = match &cache.consts[..] {
            [ar, ai, b, c, dt, ..] => (ar, ai, b, c, dt),
            _ => candle_core::bail!("Centaurus: malformed cache"),
        };
        let e = cache.consts.get(5);
        let nc = match self.mode {
            CentaurusMode::Full => self.d_model * self.d_model,
            _ => self.d_state,
        };
        let u = self
            .state_input(&x_t.unsqueeze(1)?, b, dt, nc)?
            .squeeze(1)?;
        let s = CTensor::new(cache.state[0].clone(), cache.state[1].clone());
        let s = CTensor::new(ar.clone(), ai.clone())
            .mul(&s)?
            .add(&CTensor::from_real(&u)?)?;
        let y = self.output(&s.re.unsqueeze(1)?, c, e, nc)?.squeeze(1)?;
        cache.state = vec![s.re, s.im];
        Ok(y)
    }

    fn params(&self) -> &Params {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lru::testing::{check_finite_differences, check_parity, Named};
    use candle_core::DType;
    use lrnnx_core::{CentaurusConfig, CentaurusMode as CoreMode};
    use serde_json::json;

    const CLASSES: [(&str, CoreMode); 4] = [
        ("lrnnx.models.lti.centaurus.CentaurusNeck", CoreMode::Neck),
        (
            "lrnnx.models.lti.centaurus.CentaurusPWNeck",
            CoreMode::PointwiseNeck,
        ),
        (
            "lrnnx.models.lti.centaurus.CentaurusDWS",
            CoreMode::DepthwiseSeparable,
        ),
        ("lrnnx.models.lti.centaurus.CentaurusFull", CoreMode::Full),
    ];

    fn named(mode: CoreMode, h: usize, n: usize, m: usize, seed: u64) -> Named {
        let mut p = Named::new(seed);
        p.add("A", &[n, m, 2], -1.0, 1.0);
        for v in p.get_mut("A").iter_mut().step_by(2) {
            *v = -0.05 - v.abs(); // stable: Re A < 0
        }
        p.add("log_delta", &[n], -4.0, -0.5);
        if mode != CoreMode::PointwiseNeck {
            p.add("E", &[n, m], -1.5, 1.5);
        }
        let (b, c): (Vec<usize>, Vec<usize>) = match mode {
            CoreMode::Neck => (vec![n, h], vec![h, n]),
            CoreMode::PointwiseNeck => (vec![n * m, h], vec![h, n * m]),
            CoreMode::DepthwiseSeparable => (vec![h], vec![h]),
            CoreMode::Full => (vec![n], vec![n]),
        };
        p.add("B", &b, -1.0, 1.0);
        p.add("C", &c, -1.0, 1.0);
        p
    }

    /// (H, N, M) per mode: Full with one unconnected state.
    fn sizes(mode: CoreMode, small: bool) -> (usize, usize, usize) {
        match (mode, small) {
            (CoreMode::Neck, false) => (4, 6, 3),
            (CoreMode::PointwiseNeck, false) => (4, 3, 2),
            (CoreMode::DepthwiseSeparable, false) => (5, 5, 3),
            (CoreMode::Full, false) => (3, 10, 2),
            (CoreMode::Neck, true) => (2, 3, 2),
            (CoreMode::PointwiseNeck, true) => (2, 2, 2),
            (CoreMode::DepthwiseSeparable, true) => (2, 2, 3),
            (CoreMode::Full, true) => (2, 5, 2),
        }
    }

    fn kwargs(h: usize, n: usize, m: usize) -> Value {
        json!({"d_model": h, "d_state": n, "sub_state_dim": m, "discretization": "zoh"})
    }

    #[test]
    fn forward_matches_core_step() {
        for (i, (class, mode)) in CLASSES.iter().enumerate() {
            let (h, n, m) = sizes(*mode, false);
            let p = named(*mode, h, n, m, 10 * i as u64);
            let layer =
                Centaurus::from_lrnnx(class, &kwargs(h, n, m), p.params(DType::F32)).unwrap();
            let cfg = CentaurusConfig {
                d_model: h,
                d_state: n,
                sub_state_dim: m,
                mode: *mode,
            };
            let core = p.with_core(|src| {
                lrnnx_core::Centaurus::from_lrnnx(cfg, src, vec![0.0; cfg.weights_len()]).unwrap()
            });
            check_parity(&layer, &core, 200 + i as u64);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (i, (class, mode)) in CLASSES.iter().enumerate() {
            let (h, n, m) = sizes(*mode, true);
            let p = named(*mode, h, n, m, 50 + i as u64);
            let mut names = vec!["A", "log_delta", "B", "C"];
            if *mode != CoreMode::PointwiseNeck {
                names.push("E");
            }
            // Every element, so that Full's unconnected state (zero gradients) is covered.
            check_finite_differences(
                &p,
                |ps| Box::new(Centaurus::from_lrnnx(class, &kwargs(h, n, m), ps).unwrap()),
                (2, 6, h),
                &names,
                1000,
            );
        }
    }

    #[test]
    fn argument_and_shape_errors() {
        let (class, mode) = CLASSES[2]; // DWS
        let p = || named(mode, 3, 3, 2, 1).params(DType::F32);
        assert!(Centaurus::from_lrnnx(class, &kwargs(3, 3, 2), p()).is_ok());
        let e = |cls: &str, kw: Value| {
            Centaurus::from_lrnnx(cls, &kw, p())
                .err()
                .unwrap()
                .to_string()
        };
        assert!(e(class, kwargs(3, 4, 2)).contains("d_state"));
        assert!(e(class, kwargs(3, 3, 3)).contains("`A`"));
        assert!(e(
            class,
            json!({"d_model": 3, "d_state": 3, "sub_state_dim": 2,
                                 "discretization": "euler"})
        )
        .contains("discretization"));
        assert!(e("lrnnx.models.lti.centaurus.CentaurusFull", kwargs(3, 3, 2)).contains("d_state"));
        assert!(e("lrnnx.models.lti.centaurus.CentaurusHalf", kwargs(3, 3, 2)).contains("Half"));
        // Neck needs E and 2-D B.
        assert!(e("lrnnx.models.lti.centaurus.CentaurusNeck", kwargs(3, 3, 2)).contains("`B`"));
        let layer = Centaurus::from_lrnnx(class, &kwargs(3, 3, 2), p()).unwrap();
        assert_eq!(layer.mode(), CentaurusMode::DepthwiseSeparable);
        let x = Tensor::zeros((2, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(layer
            .forward(&x, None)
            .unwrap_err()
            .to_string()
            .contains("`x`"));
    }
}
