//! Fresh parameters with lrnnx's default initialization, from one seeded generator.
//!
//! lrnnx draws its random parameters from PyTorch's generator; this module draws the same
//! distributions from [`Rng`] (SplitMix64), so a seed gives the same model on every machine
//! and thread count, though not the same numbers as a PyTorch run. The deterministic parts
//! (S5's `A`, `B`, `log_dt`; LRU's `gamma_log` as a function of `nu_log`) are lrnnx's exactly.
//!
//! * S5 LTI (`lrnnx.models.lti.s5.S5`, spec §6.2), H = `d_model`, N = `d_state`:
//!   `A[:,0] = ln(e^{0.5} − 1)`, `A[n,1] = π·n`; `B = 1/√H` (N,H); `log_dt =
//!   linspace(ln 0.001, ln 0.1, N)`; `C = randn·√(2/N)` (H,N,2); `D = randn·√(2/H)` (H,H).
//! * LRU (`lrnnx.models.lti.lru.LRU`, spec §7.2), ring initialization, draws in lrnnx's order
//!   u1, u2, B_re, B_im, C_re, C_im, D: `nu_log = ln(−½·ln(u1·(r_max² − r_min²) + r_min²))`,
//!   `theta_log = ln(max_phase·u2)` (u ~ U(0,1)); `B_re, B_im = randn/√(2H)` (N,H);
//!   `C_re, C_im = randn/√N` (H,N); `D = randn` (H,); `gamma_log = ln √(1 − |λ|²)` with
//!   `|λ| = exp(−exp(nu_log))`. Defaults `r_min = 0`, `r_max = 1`, `max_phase = 2π`.
//! * `Linear(in, out)` (PyTorch's default): weight (out,in) and bias (out,) ~ U(−1/√in, 1/√in).

use std::f64::consts::PI;

use candle_core::{DType, Device, Result, Tensor};
use serde_json::Value;

use crate::layer::{build, usize_arg, BuildError, TrainLayer};
use crate::params::Params;

/// SplitMix64: a small, fast generator whose whole state is one `u64` (no platform or
/// thread dependence). Normal variates by Box–Muller.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// An independent generator for sub-stream `stream` of this seed (e.g. one for
    /// initialization and one for shuffling), without advancing `self`.
    pub fn fork(&self, stream: u64) -> Rng {
        let mut r = Rng::new(self.state ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Rng::new(r.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1) (never 0, so logarithms stay finite).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    /// Uniform integer in `0..n` (`n > 0`), by rejection (unbiased).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Shuffles `v` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }

    /// `n` values `scale·randn`.
    fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.normal()).collect()
    }
}

/// A tensor of `shape` from f64 values, cast to `dtype`.
fn tensor(data: Vec<f64>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
}

/// Reads an optional float argument.
fn f64_arg(kwargs: &Value, name: &str, default: f64) -> std::result::Result<f64, BuildError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected a number"))),
    }
}

/// lrnnx's default initialization of S5 LTI (module doc) for `d_model` H and `d_state` N.
pub fn s5_lti(h: usize, n: usize, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Params> {
    let inv_softplus_half = (0.5f64.exp() - 1.0).ln();
    let a: Vec<f64> = (0..n)
        .flat_map(|i| [inv_softplus_half, PI * i as f64])
        .collect();
    let (lo, hi) = (0.001f64.ln(), 0.1f64.ln());
    let log_dt: Vec<f64> = (0..n)
        .map(|i| match n {
            1 => lo,
            _ => lo + (hi - lo) * i as f64 / (n - 1) as f64,
        })
        .collect();
    let c = rng.normals(h * n * 2, (2.0 / n as f64).sqrt());
    let d = rng.normals(h * h, (2.0 / h as f64).sqrt());
    let mut p = Params::new();
    p.insert("A", &tensor(a, &[n, 2], dtype, device)?)?;
    p.insert(
        "B",
        &tensor(vec![1.0 / (h as f64).sqrt(); n * h], &[n, h], dtype, device)?,
    )?;
    p.insert("log_dt", &tensor(log_dt, &[n], dtype, device)?)?;
    p.insert("C", &tensor(c, &[h, n, 2], dtype, device)?)?;
    p.insert("D", &tensor(d, &[h, h], dtype, device)?)?;
    Ok(p)
}

/// lrnnx's default (ring) initialization of LRU (module doc): `d_model` H, `d_state` N,
/// eigenvalue moduli in `[r_min, r_max]`, phases in `[0, max_phase]`.
#[allow(clippy::too_many_arguments)]
pub fn lru(
    h: usize,
    n: usize,
    r_min: f64,
    r_max: f64,
    max_phase: f64,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<Params> {
    let u1: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
    let u2: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
    let nu_log: Vec<f64> = u1
        .iter()
        .map(|u| (-0.5 * (u * (r_max * r_max - r_min * r_min) + r_min * r_min).ln()).ln())
        .collect();
    let theta_log: Vec<f64> = u2.iter().map(|u| (max_phase * u).ln()).collect();
    let gamma_log: Vec<f64> = nu_log
        .iter()
        .map(|nu| {
            let modulus = (-nu.exp()).exp();
            (1.0 - modulus * modulus).sqrt().ln()
        })
        .collect();
    let b_scale = 1.0 / (2.0 * h as f64).sqrt();
    let c_scale = 1.0 / (n as f64).sqrt();
    let b_re = rng.normals(n * h, b_scale);
    let b_im = rng.normals(n * h, b_scale);
    let c_re = rng.normals(h * n, c_scale);
    let c_im = rng.normals(h * n, c_scale);
    let d = rng.normals(h, 1.0);
    let mut p = Params::new();
    p.insert("nu_log", &tensor(nu_log, &[n], dtype, device)?)?;
    p.insert("theta_log", &tensor(theta_log, &[n], dtype, device)?)?;
    p.insert("gamma_log", &tensor(gamma_log, &[n], dtype, device)?)?;
    p.insert("B_re", &tensor(b_re, &[n, h], dtype, device)?)?;
    p.insert("B_im", &tensor(b_im, &[n, h], dtype, device)?)?;
    p.insert("C_re", &tensor(c_re, &[h, n], dtype, device)?)?;
    p.insert("C_im", &tensor(c_im, &[h, n], dtype, device)?)?;
    p.insert("D", &tensor(d, &[h], dtype, device)?)?;
    Ok(p)
}

/// PyTorch's default `Linear(n_in, n_out)` initialization: `(weight (out,in), bias (out,))`,
/// both U(−1/√in, 1/√in).
pub fn linear(
    n_in: usize,
    n_out: usize,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (n_in as f64).sqrt();
    let mut draw = |k: usize| -> Vec<f64> {
        (0..k)
            .map(|_| bound * (2.0 * rng.uniform() - 1.0))
            .collect()
    };
    let w = draw(n_out * n_in);
    let b = draw(n_out);
    Ok((
        tensor(w, &[n_out, n_in], dtype, device)?,
        tensor(b, &[n_out], dtype, device)?,
    ))
}

/// Fresh lrnnx-default parameters for lrnnx class `class` with constructor arguments
/// `kwargs` (as for [`build`]). Supported: S5 LTI and LRU.
pub fn init_params(
    class: &str,
    kwargs: &Value,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> std::result::Result<Params, BuildError> {
    let h = usize_arg(kwargs, "d_model")?;
    let n = usize_arg(kwargs, "d_state")?;
    if h == 0 || n == 0 {
        return Err(BuildError::Kwarg(
            "`d_model` and `d_state` must be positive".into(),
        ));
    }
    match class {
        "lrnnx.models.lti.s5.S5" => Ok(s5_lti(h, n, rng, dtype, device)?),
        "lrnnx.models.lti.lru.LRU" | "LRU" => {
            let r_min = f64_arg(kwargs, "r_min", 0.0)?;
            let r_max = f64_arg(kwargs, "r_max", 1.0)?;
            let max_phase = f64_arg(kwargs, "max_phase", 2.0 * PI)?;
            if !(0.0 <= r_min && r_min < r_max && r_max <= 1.0) || max_phase <= 0.0 {
                return Err(BuildError::Kwarg(format!(
                    "LRU needs 0 ≤ r_min < r_max ≤ 1 and max_phase > 0 \
                     (got r_min={r_min}, r_max={r_max}, max_phase={max_phase})"
                )));
            }
            Ok(lru(h, n, r_min, r_max, max_phase, rng, dtype, device)?)
        }
        other => Err(BuildError::UnsupportedClass(format!(
            "{other} (no fresh initializer; S5 LTI and LRU have one)"
        ))),
    }
}

/// A fresh trainable layer of lrnnx class `class`: [`init_params`] then [`build`].
pub fn fresh(
    class: &str,
    kwargs: &Value,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> std::result::Result<Box<dyn TrainLayer>, BuildError> {
    let params = init_params(class, kwargs, rng, dtype, device)?;
    build(class, kwargs, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vals(p: &Params, name: &str) -> Vec<f64> {
        p.vars()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn mean_std(v: &[f64]) -> (f64, f64) {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
        (m, var.sqrt())
    }

    #[test]
    fn s5_deterministic_parts_and_random_scales() {
        let (h, n) = (64, 128);
        let p = s5_lti(h, n, &mut Rng::new(3), DType::F64, &Device::Cpu).unwrap();
        let a = vals(&p, "A");
        for i in 0..n {
            // softplus(A[:,0]) = 0.5 exactly
            assert!(((1.0 + a[2 * i].exp()).ln() - 0.5).abs() < 1e-12);
            assert!((a[2 * i + 1] - PI * i as f64).abs() < 1e-9);
        }
        assert!(vals(&p, "B").iter().all(|&b| (b - 0.125).abs() < 1e-12));
        let log_dt = vals(&p, "log_dt");
        assert!((log_dt[0].exp() - 0.001).abs() < 1e-12);
        assert!((log_dt[n - 1].exp() - 0.1).abs() < 1e-12);
        let (m, s) = mean_std(&vals(&p, "C"));
        assert!(
            m.abs() < 0.02 && (s - (2.0 / n as f64).sqrt()).abs() < 0.01,
            "{m} {s}"
        );
        let (m, s) = mean_std(&vals(&p, "D"));
        assert!(
            m.abs() < 0.02 && (s - (2.0 / h as f64).sqrt()).abs() < 0.01,
            "{m} {s}"
        );
    }

    #[test]
    fn lru_ring_init() {
        let (h, n) = (32, 2000);
        let (r_min, r_max, max_phase) = (0.4, 0.9, 1.0);
        let p = lru(
            h,
            n,
            r_min,
            r_max,
            max_phase,
            &mut Rng::new(5),
            DType::F64,
            &Device::Cpu,
        )
        .unwrap();
        let nu = vals(&p, "nu_log");
        let theta = vals(&p, "theta_log");
        let gamma = vals(&p, "gamma_log");
        let mut r2 = Vec::new();
        for i in 0..n {
            let r = (-nu[i].exp()).exp();
            assert!(r >= r_min - 1e-12 && r <= r_max + 1e-12);
            // |λ|² is uniform on [r_min², r_max²] (ring init)
            r2.push(r * r);
            let phase = theta[i].exp();
            assert!(phase > 0.0 && phase < max_phase);
            assert!((gamma[i] - (1.0 - r * r).sqrt().ln()).abs() < 1e-12);
        }
        let (m, _) = mean_std(&r2);
        assert!(
            (m - 0.5 * (r_min * r_min + r_max * r_max)).abs() < 0.01,
            "{m}"
        );
        let (_, s) = mean_std(&vals(&p, "B_re"));
        assert!((s - 1.0 / (2.0 * h as f64).sqrt()).abs() < 0.005, "{s}");
        let (_, s) = mean_std(&vals(&p, "C_im"));
        assert!((s - 1.0 / (n as f64).sqrt()).abs() < 0.001, "{s}");
        assert_eq!(vals(&p, "D").len(), h);
    }

    #[test]
    fn fresh_builds_and_is_seeded() {
        let kw = json!({"d_model": 4, "d_state": 6, "discretization": "zoh"});
        for class in ["lrnnx.models.lti.s5.S5", "lrnnx.models.lti.lru.LRU"] {
            let a = fresh(class, &kw, &mut Rng::new(9), DType::F32, &Device::Cpu).unwrap();
            let b = fresh(class, &kw, &mut Rng::new(9), DType::F32, &Device::Cpu).unwrap();
            for (k, v) in a.params().vars() {
                let w = &b.params().vars()[k];
                let d = (v.as_tensor() - w.as_tensor()).unwrap().abs().unwrap();
                let d: f32 = d
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert_eq!(d, 0.0, "{class} {k}");
            }
            let x = Tensor::ones((2, 5, 4), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(a.forward(&x, None).unwrap().dims(), &[2, 5, 4]);
        }
        assert!(matches!(
            fresh(
                "lrnnx.models.ltv.s7.S7",
                &kw,
                &mut Rng::new(1),
                DType::F32,
                &Device::Cpu
            ),
            Err(BuildError::UnsupportedClass(_))
        ));
        let bad = json!({"d_model": 4, "d_state": 6, "r_min": 0.9, "r_max": 0.5});
        assert!(matches!(
            fresh("LRU", &bad, &mut Rng::new(1), DType::F32, &Device::Cpu),
            Err(BuildError::Kwarg(_))
        ));
    }

    #[test]
    fn rng_is_uniform_and_shuffles() {
        let mut r = Rng::new(1);
        let mut v: Vec<usize> = (0..100).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
        let u: Vec<f64> = (0..20000).map(|_| r.uniform()).collect();
        let (m, _) = mean_std(&u);
        assert!((m - 0.5).abs() < 0.01);
        let z: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let (m, s) = mean_std(&z);
        assert!(m.abs() < 0.03 && (s - 1.0).abs() < 0.03);
    }
}
