//! Fresh parameters with lrnnx's default initialization, from one seeded generator.
//!
//! lrnnx draws its random parameters from PyTorch's generator; this module draws the same
//! distributions from [`Rng`] (SplitMix64), so a seed gives the same model on every machine
//! and thread count, though not the same numbers as a PyTorch run. The deterministic parts
//! (S5's `A`, `B`, `log_dt`; LRU's `gamma_log` as a function of `nu_log`; S4D's `A_real`,
//! `A_imag`; Centaurus' `A`, `log_delta` and DWS/PWNeck `B`; LTV S5's `A`; Mamba's `A_log`, `D`;
//! S7's `base_params`) are lrnnx's exactly (eigenvalues to solver precision).
//!
//! * S5 LTI (`lrnnx.models.lti.s5.S5`, spec §6.2), H = `d_model`, N = `d_state`:
//!   `A[:,0] = ln(e^{0.5} − 1)`, `A[n,1] = π·n`; `B = 1/√H` (N,H); `log_dt =
//!   linspace(ln 0.001, ln 0.1, N)`; `C = randn·√(2/N)` (H,N,2); `D = randn·√(2/H)` (H,H).
//! * LRU (`lrnnx.models.lti.lru.LRU`, spec §7.2), ring initialization, draws in lrnnx's order
//!   u1, u2, B_re, B_im, C_re, C_im, D: `nu_log = ln(−½·ln(u1·(r_max² − r_min²) + r_min²))`,
//!   `theta_log = ln(max_phase·u2)` (u ~ U(0,1)); `B_re, B_im = randn/√(2H)` (N,H);
//!   `C_re, C_im = randn/√N` (H,N); `D = randn` (H,); `gamma_log = ln √(1 − |λ|²)` with
//!   `|λ| = exp(−exp(nu_log))`. Defaults `r_min = 0`, `r_max = 1`, `max_phase = 2π`.
//! * S4D (spec §5.2–5.3, [`s4d`]): log-uniform Δ, `A_real = ln ½`, `A_imag` and `B` from
//!   HiPPO-LegS (`init="legs"`, lrnnx's default: the eigenvalues of [`legs_nplr`]; or
//!   `"diag-lin"`, `π·n`), complex normal `C`, `D = randn`, default output linear.
//! * Centaurus, all four classes (spec §8.2, [`centaurus`]): `A = −½ + iπm/M`,
//!   `log_delta = linspace(ln 10⁻³, ln 10⁻¹, N)`, random `E`, `B`, `C` per class.
//! * S5 time-varying (spec §10.2, [`s5_ltv`]): `Λ` from HiPPO-LegS ([`legs_nplr`]), `B`, `C`
//!   through its eigenvectors, `D = 0.1·randn`, log-uniform Δ.
//! * Mamba (spec §9.2, [`mamba`]): `A_log = ln n`, `D = 1`, `dt_proj` from log-uniform Δ0,
//!   default Linear and Conv1d elsewhere.
//! * RG-LRU (spec §11.2, [`rglru`]): default Linear/Conv1d; `a_log` by Griffin's published
//!   rule (`σ(a_log)^c` uniform in `a_init_range`), not lrnnx's `ln U` (spec §18.4), which is
//!   kept as the constructor argument `lrnnx_compat_a_init: true`.
//! * S7 (spec §12.2, [`s7`]): `base_params = −½`, `x_proj.weight ~ N(0, 0.02²)`, default Linear.
//! * `Linear(in, out)` (PyTorch's default): weight (out,in) and bias (out,) ~ U(−1/√in, 1/√in);
//!   depthwise `Conv1d` (weight (E,1,k), bias (E,)) ~ U(−1/√k, 1/√k).
//!
//! [`init_params`] reads lrnnx's constructor arguments (the same JSON as for [`build`]) and
//! produces exactly lrnnx's parameter names and shapes (S4D without the `layer.kernel.`
//! aliases, which the layers and checkpoints do not keep; Mamba with the unused
//! `dtA_proj.weight`, as in lrnnx's state dict); [`fresh`] builds the layer. Eigenvector
//! phases (hence S4D's `B` and S5's `B`, `C` element by element) are not lrnnx's, whose
//! depend on LAPACK; the eigenvalues are.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use candle_core::{DType, Device, Result, Tensor};
use lrnnx_core::ParamTransform;
use serde_json::Value;

use crate::centaurus::CentaurusMode;
use crate::layer::{build, usize_arg, BuildError, TrainLayer};
use crate::params::Params;
use crate::s4d::{bool_or, kwarg, opt, output_linear, transform_or, usize_or};

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

/// Eigen-decomposition of a real symmetric `n`×`n` matrix `a` (row-major) by cyclic Jacobi
/// rotations: `(eigenvalues, eigenvectors)`, eigenvector `j` in column `j` of the row-major
/// `n`×`n` result; unsorted.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i] * a[i * n + i]).sum();
        if off <= 1e-30 * diag || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The normal-plus-low-rank eigenproblem of HiPPO-LegS of size `n`, as lrnnx solves it
/// (S4's `nplr("legs")`, spec §5.3, and LTV S5's `make_DPLR_HiPPO`, §10.2): with
/// `A + PPᵀ = −½·I + S`, `S[i,j] = −½√((2i+1)(2j+1))` below the diagonal (skew-symmetric),
/// the Hermitian `−i·S` (lrnnx's `eigh` reads its lower triangle, so the −½ diagonal drops
/// out). Returns its eigenvalues in ascending order (the imaginary parts of Λ; Re Λ = −½) and
/// the matching orthonormal eigenvectors `V` as columns, `(re, im)` per entry, row-major.
///
/// The eigenvalues are `±ω_k` (and 0 when `n` is odd), `ω_k²` the eigenvalues of `SᵀS`; for a
/// unit `q₁` in the eigenspace of `ω²`, `q₂ = −S q₁/ω` gives `S(q₁ + iq₂) = iω(q₁ + iq₂)`. An
/// eigenvector's phase is arbitrary (lrnnx's depends on LAPACK): only the eigenvalues are
/// portable.
pub fn legs_nplr(n: usize) -> (Vec<f64>, Vec<(f64, f64)>) {
    let mut s = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..i {
            let v = -0.5 * (((2 * i + 1) * (2 * j + 1)) as f64).sqrt();
            s[i * n + j] = v;
            s[j * n + i] = -v;
        }
    }
    // SᵀS
    let mut sts = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            sts[i * n + j] = (0..n).map(|k| s[k * n + i] * s[k * n + j]).sum();
        }
    }
    let (vals, vecs) = symmetric_eigen(sts, n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| vals[y].total_cmp(&vals[x]));
    let col = |j: usize| -> Vec<f64> { (0..n).map(|i| vecs[i * n + j]).collect() };
    let unit = |v: Vec<f64>| -> Vec<f64> {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    };
    // (ω, q₁, q₂) from the largest ω down
    let mut pairs = Vec::new();
    for k in 0..n / 2 {
        let omega = (0.5 * (vals[order[2 * k]] + vals[order[2 * k + 1]]))
            .max(0.0)
            .sqrt();
        let q1 = unit(col(order[2 * k]));
        let sq1: Vec<f64> = (0..n)
            .map(|i| -(0..n).map(|j| s[i * n + j] * q1[j]).sum::<f64>())
            .collect();
        pairs.push((omega, q1, unit(sq1)));
    }
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let mut eig = Vec::with_capacity(n);
    let mut columns: Vec<Vec<(f64, f64)>> = Vec::with_capacity(n);
    for (omega, q1, q2) in &pairs {
        // −ω: conj(q₁ + iq₂)/√2
        eig.push(-omega);
        columns.push(q1.iter().zip(q2).map(|(a, b)| (h * a, -h * b)).collect());
    }
    if n % 2 == 1 {
        eig.push(0.0);
        columns.push(
            unit(col(order[n - 1]))
                .into_iter()
                .map(|a| (a, 0.0))
                .collect(),
        );
    }
    for (omega, q1, q2) in pairs.iter().rev() {
        eig.push(*omega);
        columns.push(q1.iter().zip(q2).map(|(a, b)| (h * a, h * b)).collect());
    }
    let v = (0..n)
        .flat_map(|i| columns.iter().map(move |c| c[i]).collect::<Vec<_>>())
        .collect();
    (eig, v)
}

/// lrnnx's `inv_transform` (spec §5.3): the stored value whose transform is `x`, after
/// clamping `x` to at least 10⁻⁴.
fn inv_transform(t: ParamTransform, x: f64) -> f64 {
    let x = x.max(1e-4);
    match t {
        ParamTransform::None | ParamTransform::Relu => x,
        ParamTransform::Exp => x.ln(),
        ParamTransform::Sigmoid => (x / (1.0 - x)).ln(),
        ParamTransform::Softplus => x.exp_m1().ln(),
    }
}

/// The diagonal of S4D's A at initialization (`init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S4dDiagInit {
    /// lrnnx's default `"legs"`: the first N/2 eigenvalues of HiPPO-LegS's normal part
    /// ([`legs_nplr`], −½ − i·ω), `B = Vᴴ·B_LegS` with Im clipped to ±2.
    Legs,
    /// `"diag-lin"`: `−½ − i·π·n`, `B = 1`.
    DiagLin,
}

/// S4D's constructor arguments that shape its initialization (spec §5.1).
#[derive(Debug, Clone)]
pub struct S4dInit {
    /// H.
    pub d_model: usize,
    /// N (N/2 states are stored).
    pub d_state: usize,
    /// Number of distinct SSMs S (divides H).
    pub n_ssm: usize,
    /// Output copies per channel.
    pub channels: usize,
    /// Range of the log-uniform Δ.
    pub dt_min: f64,
    /// Range of the log-uniform Δ.
    pub dt_max: f64,
    /// `inv_dt` (H,1) when tied, else (H,N/2).
    pub dt_tie: bool,
    /// Δ = dt_transform(inv_dt).
    pub dt_transform: ParamTransform,
    /// Store `asinh(inv_dt)`.
    pub dt_fast: bool,
    /// Re A = −real_transform(A_real).
    pub real_transform: ParamTransform,
    /// Im A = −imag_transform(A_imag).
    pub imag_transform: ParamTransform,
    /// The diagonal init.
    pub init: S4dDiagInit,
    /// Whether there is an `output_linear` (final_act not None).
    pub output_linear: bool,
}

/// lrnnx's default initialization of S4D (spec §5.2–5.3), draws in the order `inv_dt`, `C`,
/// `D`, output linear: `inv_dt = U·(ln dt_max − ln dt_min) + ln dt_min` (then
/// `inv_transform(exp(·))` for a dt_transform other than exp, `asinh` with dt_fast);
/// `A_real = inv_transform(½)` (ln ½), `A_imag = inv_transform(ω)` and `B` (1,S,N/2,2) from
/// `init` (the same for every SSM); `C` (ch,H,N/2,2) complex normal (re, im each N(0,½));
/// `D = randn` (ch,H); `output_linear.0` the default `Linear(ch·H, H)`.
pub fn s4d(cfg: &S4dInit, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Params> {
    let (h, n2, s, ch) = (cfg.d_model, cfg.d_state / 2, cfg.n_ssm, cfg.channels);
    let (lo, hi) = (cfg.dt_min.ln(), cfg.dt_max.ln());
    let dt_cols = if cfg.dt_tie { 1 } else { n2 };
    let inv_dt: Vec<f64> = (0..h * dt_cols)
        .map(|_| {
            let log_dt = rng.uniform() * (hi - lo) + lo;
            let v = match cfg.dt_transform {
                ParamTransform::Exp => log_dt,
                t => inv_transform(t, log_dt.exp()),
            };
            if cfg.dt_fast {
                v.asinh()
            } else {
                v
            }
        })
        .collect();
    // (ω, B) per state
    let (omega, b): (Vec<f64>, Vec<(f64, f64)>) = match cfg.init {
        S4dDiagInit::DiagLin => (0..n2).map(|k| (PI * k as f64, (1.0, 0.0))).unzip(),
        S4dDiagInit::Legs => {
            let (eig, v) = legs_nplr(2 * n2);
            let nn = 2 * n2;
            (0..n2)
                .map(|k| {
                    // (Vᴴ b)_k = Σ_j conj(V[j,k])·√(2j+1)
                    let (mut re, mut im) = (0.0, 0.0);
                    for j in 0..nn {
                        let (vr, vi) = v[j * nn + k];
                        let bj = ((2 * j + 1) as f64).sqrt();
                        re += vr * bj;
                        im -= vi * bj;
                    }
                    (-eig[k], (re, im.clamp(-2.0, 2.0)))
                })
                .unzip()
        }
    };
    let a_real = vec![inv_transform(cfg.real_transform, 0.5); s * n2];
    let a_imag: Vec<f64> = (0..s)
        .flat_map(|_| omega.iter().map(|&w| inv_transform(cfg.imag_transform, w)))
        .collect();
    let b: Vec<f64> = (0..s)
        .flat_map(|_| b.iter().flat_map(|&(r, i)| [r, i]))
        .collect();
    let c = rng.normals(ch * h * n2 * 2, FRAC_1_SQRT_2);
    let d = rng.normals(ch * h, 1.0);
    let mut p = Params::new();
    p.insert("inv_dt", &tensor(inv_dt, &[h, dt_cols], dtype, device)?)?;
    p.insert("A_real", &tensor(a_real, &[s, n2], dtype, device)?)?;
    p.insert("A_imag", &tensor(a_imag, &[s, n2], dtype, device)?)?;
    p.insert("B", &tensor(b, &[1, s, n2, 2], dtype, device)?)?;
    p.insert("C", &tensor(c, &[ch, h, n2, 2], dtype, device)?)?;
    p.insert("D", &tensor(d, &[ch, h], dtype, device)?)?;
    if cfg.output_linear {
        let (w, bias) = linear(ch * h, h, rng, dtype, device)?;
        p.insert("output_linear.0.weight", &w)?;
        p.insert("output_linear.0.bias", &bias)?;
    }
    Ok(p)
}

/// lrnnx's default initialization of S4 (spec §5.2–5.3, `init = "legs"`): S4D's ([`s4d`]
/// with [`S4dDiagInit::Legs`], the same draws in the same order: `Λ = −½ − i·ω` from
/// [`legs_nplr`], `B = Vᴴ·B_LegS` with Im clipped to ±2, random `C`, `D`, output linear), plus
/// the low-rank term `P` (r,S,N/2,2) `= Vᴴ·P_LegS`, `P_LegS[i] = √(i + ½)` (lrnnx's
/// `rank_correction("legs")`; rows past the first are zero, as lrnnx pads them), and the
/// buffer `layer.kernel.l_kernel = 0` (a module never run: `C` is the original `C`, not C̃).
/// With `V` the eigenvectors of `A_LegS + P_LegS P_LegSᵀ` this is the DPLR form
/// `A_LegS = V diag(Λ) Vᴴ − (V P̃)(V P̃)ᴴ` over both conjugate halves.
pub fn s4(
    cfg: &S4dInit,
    rank: usize,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<Params> {
    if cfg.init != S4dDiagInit::Legs {
        candle_core::bail!("S4's initializer supports only init = \"legs\"");
    }
    let mut p = s4d(cfg, rng, dtype, device)?;
    let (n2, s) = (cfg.d_state / 2, cfg.n_ssm);
    let nn = 2 * n2;
    let (_, v) = legs_nplr(nn);
    // (Vᴴ P_LegS)_k = Σ_j conj(V[j,k])·√(j + ½)
    let pt: Vec<f64> = (0..n2)
        .flat_map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for j in 0..nn {
                let (vr, vi) = v[j * nn + k];
                let pj = (j as f64 + 0.5).sqrt();
                re += vr * pj;
                im -= vi * pj;
            }
            [re, im]
        })
        .collect();
    let mut data = Vec::with_capacity(rank * s * n2 * 2);
    for r in 0..rank {
        for _ in 0..s {
            if r == 0 {
                data.extend_from_slice(&pt);
            } else {
                data.extend(std::iter::repeat_n(0.0, n2 * 2));
            }
        }
    }
    p.insert("P", &tensor(data, &[rank, s, n2, 2], dtype, device)?)?;
    p.insert(
        "layer.kernel.l_kernel",
        &tensor(vec![0.0], &[], dtype, device)?,
    )?;
    Ok(p)
}

/// lrnnx's default initialization of Centaurus (spec §8.2) in mode `mode` (H = `d_model`,
/// N = `d_state`, M = `sub_state_dim`; shapes already validated), draws in lrnnx's order E,
/// then B, C: `A[n,m] = −½ + i·π·m/M` (stored (N,M,2)); `E = randn·√2` (not PWNeck);
/// `log_delta = linspace(ln 10⁻³, ln 10⁻¹, N)`; B, C: Neck U(±1/√H), U(±1/√N); DWS ones;
/// Full `randn·√(2/H)`, `randn·√(2/N)`; PWNeck `1/√H`, `randn·√(2/(N·M))`.
pub fn centaurus(
    mode: CentaurusMode,
    h: usize,
    n: usize,
    m: usize,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<Params> {
    let a: Vec<f64> = (0..n)
        .flat_map(|_| (0..m).flat_map(|j| [-0.5, PI * j as f64 / m as f64]))
        .collect();
    let (lo, hi) = (1e-3f64.ln(), 1e-1f64.ln());
    let log_delta: Vec<f64> = (0..n)
        .map(|i| match n {
            1 => lo,
            _ => lo + (hi - lo) * i as f64 / (n - 1) as f64,
        })
        .collect();
    let mut p = Params::new();
    if mode != CentaurusMode::PointwiseNeck {
        let e = rng.normals(n * m, 2f64.sqrt());
        p.insert("E", &tensor(e, &[n, m], dtype, device)?)?;
    }
    let mut unif = |k: usize, bound: f64| -> Vec<f64> {
        (0..k)
            .map(|_| bound * (2.0 * rng.uniform() - 1.0))
            .collect()
    };
    let (b, b_shape, c, c_shape) = match mode {
        CentaurusMode::Neck => {
            let b = unif(n * h, 1.0 / (h as f64).sqrt());
            let c = unif(h * n, 1.0 / (n as f64).sqrt());
            (b, vec![n, h], c, vec![h, n])
        }
        CentaurusMode::DepthwiseSeparable => (vec![1.0; h], vec![h], vec![1.0; h], vec![h]),
        CentaurusMode::Full => {
            let b = rng.normals(n, (2.0 / h as f64).sqrt());
            let c = rng.normals(n, (2.0 / n as f64).sqrt());
            (b, vec![n], c, vec![n])
        }
        CentaurusMode::PointwiseNeck => {
            let b = vec![1.0 / (h as f64).sqrt(); n * m * h];
            let c = rng.normals(h * n * m, (2.0 / (n * m) as f64).sqrt());
            (b, vec![n * m, h], c, vec![h, n * m])
        }
    };
    p.insert("A", &tensor(a, &[n, m, 2], dtype, device)?)?;
    p.insert("log_delta", &tensor(log_delta, &[n], dtype, device)?)?;
    p.insert("B", &tensor(b, &b_shape, dtype, device)?)?;
    p.insert("C", &tensor(c, &c_shape, dtype, device)?)?;
    Ok(p)
}

/// lrnnx's default initialization of time-varying S5 (spec §10.2), H = `d_model`,
/// P = `d_state`: `Λ = −½ + i·ω` from [`legs_nplr`] (size P, or the first P of size 2P with
/// `conj_sym`), `A = (Re Λ, Im Λ)`; with `V` those eigenvectors and local_P = P (2P with
/// conj_sym), `B = Vᴴ·(randn(local_P, H)/√local_P)`, `C = ((randn + i·randn)(H, local_P)/
/// √local_P)·V`; `D = randn·0.1`; `log_dt = U[ln dt_min, ln dt_max)`. Draws in that order
/// (lrnnx draws B and C from numpy's generator, D and log_dt from PyTorch's).
#[allow(clippy::too_many_arguments)]
pub fn s5_ltv(
    h: usize,
    p: usize,
    conj_sym: bool,
    dt_min: f64,
    dt_max: f64,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<Params> {
    let lp = if conj_sym { 2 * p } else { p };
    let (eig, v) = legs_nplr(lp);
    let a: Vec<f64> = eig[..p].iter().flat_map(|&w| [-0.5, w]).collect();
    let scale = 1.0 / (lp as f64).sqrt();
    let g = rng.normals(lp * h, scale);
    let mut b = vec![0.0; p * h * 2];
    for k in 0..p {
        for hh in 0..h {
            let (mut re, mut im) = (0.0, 0.0);
            for j in 0..lp {
                let (vr, vi) = v[j * lp + k];
                re += vr * g[j * h + hh];
                im -= vi * g[j * h + hh];
            }
            b[(k * h + hh) * 2] = re;
            b[(k * h + hh) * 2 + 1] = im;
        }
    }
    let g_re = rng.normals(h * lp, scale);
    let g_im = rng.normals(h * lp, scale);
    let mut c = vec![0.0; h * p * 2];
    for hh in 0..h {
        for k in 0..p {
            let (mut re, mut im) = (0.0, 0.0);
            for j in 0..lp {
                let (gr, gi) = (g_re[hh * lp + j], g_im[hh * lp + j]);
                let (vr, vi) = v[j * lp + k];
                re += gr * vr - gi * vi;
                im += gr * vi + gi * vr;
            }
            c[(hh * p + k) * 2] = re;
            c[(hh * p + k) * 2 + 1] = im;
        }
    }
    let d = rng.normals(h, 0.1);
    let (lo, hi) = (dt_min.ln(), dt_max.ln());
    let log_dt: Vec<f64> = (0..p).map(|_| lo + (hi - lo) * rng.uniform()).collect();
    let mut ps = Params::new();
    ps.insert("A", &tensor(a, &[p, 2], dtype, device)?)?;
    ps.insert("B", &tensor(b, &[p, h, 2], dtype, device)?)?;
    ps.insert("C", &tensor(c, &[h, p, 2], dtype, device)?)?;
    ps.insert("D", &tensor(d, &[h], dtype, device)?)?;
    ps.insert("log_dt", &tensor(log_dt, &[p], dtype, device)?)?;
    Ok(ps)
}

/// Mamba's constructor arguments that shape its initialization (spec §9.1).
#[derive(Debug, Clone)]
pub struct MambaInit {
    /// H.
    pub d_model: usize,
    /// N.
    pub d_state: usize,
    /// Conv width k.
    pub d_conv: usize,
    /// E = int(expand·d_model).
    pub d_inner: usize,
    /// R.
    pub dt_rank: usize,
    /// Range of the initial Δ.
    pub dt_min: f64,
    /// Range of the initial Δ.
    pub dt_max: f64,
    /// Floor of the initial Δ.
    pub dt_init_floor: f64,
    /// Scale of `dt_proj.weight`.
    pub dt_scale: f64,
    /// `dt_proj.weight` constant `R^{-½}·dt_scale` (`dt_init="constant"`) instead of uniform.
    pub dt_init_constant: bool,
    /// Biases on `in_proj` and `out_proj`.
    pub bias: bool,
    /// Bias on `conv1d`.
    pub conv_bias: bool,
}

/// Default `Conv1d(E, E, k, groups=E)` (depthwise): weight (E,1,k) and bias (E,) ~ U(±1/√k).
fn depthwise_conv(e: usize, k: usize, rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
    let bound = 1.0 / (k as f64).sqrt();
    let mut draw = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| bound * (2.0 * rng.uniform() - 1.0))
            .collect()
    };
    let w = draw(e * k);
    (w, draw(e))
}

/// Inserts `{name}.weight` (and `{name}.bias` when `bias`) of a default `Linear(n_in, n_out)`.
#[allow(clippy::too_many_arguments)]
fn insert_linear(
    p: &mut Params,
    name: &str,
    n_in: usize,
    n_out: usize,
    bias: bool,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<()> {
    let (w, b) = linear(n_in, n_out, rng, dtype, device)?;
    p.insert(&format!("{name}.weight"), &w)?;
    if bias {
        p.insert(&format!("{name}.bias"), &b)?;
    }
    Ok(())
}

/// lrnnx's default initialization of Mamba (spec §9.2), in lrnnx's order: `in_proj`, `conv1d`
/// (default Conv1d, U(±1/√k)), `x_proj` (no bias) default Linear; `dt_proj.weight` U(±R^{-½}·
/// dt_scale) (or that constant); `dt_proj.bias = Δ0 + ln(−expm1(−Δ0))` (softplus⁻¹) with
/// `Δ0 = max(exp(U·(ln dt_max − ln dt_min) + ln dt_min), dt_init_floor)`; `dtA_proj` default
/// Linear(R, E) (its weight is never used by lrnnx, but is in its state dict); `A_log[d,n] =
/// ln(n+1)`; `D = 1`; `out_proj` default Linear.
pub fn mamba(cfg: &MambaInit, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Params> {
    let (h, n, k, e, r) = (
        cfg.d_model,
        cfg.d_state,
        cfg.d_conv,
        cfg.d_inner,
        cfg.dt_rank,
    );
    let mut p = Params::new();
    insert_linear(&mut p, "in_proj", h, 2 * e, cfg.bias, rng, dtype, device)?;
    let (cw, cb) = depthwise_conv(e, k, rng);
    p.insert("conv1d.weight", &tensor(cw, &[e, 1, k], dtype, device)?)?;
    if cfg.conv_bias {
        p.insert("conv1d.bias", &tensor(cb, &[e], dtype, device)?)?;
    }
    insert_linear(&mut p, "x_proj", e, r + 2 * n, false, rng, dtype, device)?;
    let std = cfg.dt_scale / (r as f64).sqrt();
    let dt_w: Vec<f64> = (0..e * r)
        .map(|_| match cfg.dt_init_constant {
            true => std,
            false => std * (2.0 * rng.uniform() - 1.0),
        })
        .collect();
    let (lo, hi) = (cfg.dt_min.ln(), cfg.dt_max.ln());
    let dt_b: Vec<f64> = (0..e)
        .map(|_| {
            let dt = (rng.uniform() * (hi - lo) + lo)
                .exp()
                .max(cfg.dt_init_floor);
            dt + (-(-dt).exp_m1()).ln()
        })
        .collect();
    p.insert("dt_proj.weight", &tensor(dt_w, &[e, r], dtype, device)?)?;
    p.insert("dt_proj.bias", &tensor(dt_b, &[e], dtype, device)?)?;
    insert_linear(&mut p, "dtA_proj", r, e, true, rng, dtype, device)?;
    let a_log: Vec<f64> = (0..e)
        .flat_map(|_| (1..=n).map(|i| (i as f64).ln()))
        .collect();
    p.insert("A_log", &tensor(a_log, &[e, n], dtype, device)?)?;
    p.insert("D", &tensor(vec![1.0; e], &[e], dtype, device)?)?;
    insert_linear(&mut p, "out_proj", e, h, cfg.bias, rng, dtype, device)?;
    Ok(p)
}

/// RG-LRU's constructor arguments that shape its initialization (spec §11.1).
#[derive(Debug, Clone)]
pub struct RgLruInit {
    /// H.
    pub d_model: usize,
    /// D = int(expand·d_model).
    pub d_inner: usize,
    /// Conv width k.
    pub d_conv: usize,
    /// The gate exponent c.
    pub c: f64,
    /// `a_init_range` (lo, hi), 0 < lo ≤ hi < 1.
    pub a_init_range: (f64, f64),
    /// Biases on `gate_proj`, `in_proj`, `out_proj`.
    pub bias: bool,
    /// Bias on `conv1d`.
    pub conv_bias: bool,
    /// lrnnx's own (buggy, spec §18.4) `a_log = ln(U[lo, hi])` instead of the published init.
    pub lrnnx_compat_a_init: bool,
}

/// RG-LRU's initialization (spec §11.2), in lrnnx's order: default Linear `gate_proj`,
/// `in_proj`, default Conv1d, `recurrent_gate_proj` and `input_gate_proj` (with biases),
/// `a_log` (D,1), default Linear `out_proj`.
///
/// **`a_log` (deliberate deviation, spec §18.4).** The layer uses `a = σ(a_log)` and
/// `Ā = a^{c·r}`; by default `a_log` is drawn as Griffin publishes it: `a^c ~ U[lo, hi]`
/// (`a_init_range`), `a_log = logit(a)`, so the decay at a fully open gate starts in
/// `[lo, hi]` = [0.9, 0.999]. lrnnx itself stores `ln(U[lo, hi])`, which through the sigmoid
/// gives `a ∈ (0.474, 0.499)` (Ā ≈ 0.003 at r = 1): that is `lrnnx_compat_a_init`.
pub fn rglru(cfg: &RgLruInit, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Params> {
    let (h, d, k) = (cfg.d_model, cfg.d_inner, cfg.d_conv);
    let mut p = Params::new();
    insert_linear(&mut p, "gate_proj", h, d, cfg.bias, rng, dtype, device)?;
    insert_linear(&mut p, "in_proj", h, d, cfg.bias, rng, dtype, device)?;
    let (cw, cb) = depthwise_conv(d, k, rng);
    p.insert("conv1d.weight", &tensor(cw, &[d, 1, k], dtype, device)?)?;
    if cfg.conv_bias {
        p.insert("conv1d.bias", &tensor(cb, &[d], dtype, device)?)?;
    }
    insert_linear(
        &mut p,
        "recurrent_gate_proj",
        d,
        d,
        true,
        rng,
        dtype,
        device,
    )?;
    insert_linear(&mut p, "input_gate_proj", d, d, true, rng, dtype, device)?;
    let (lo, hi) = cfg.a_init_range;
    let a_log: Vec<f64> = (0..d)
        .map(|_| {
            let u = lo + (hi - lo) * rng.uniform();
            if cfg.lrnnx_compat_a_init {
                u.ln()
            } else {
                // a = u^{1/c}; logit(a) = ln a − ln(1 − a), 1 − a = −expm1(ln u / c)
                let ln_a = u.ln() / cfg.c;
                ln_a - (-ln_a.exp_m1()).ln()
            }
        })
        .collect();
    p.insert("a_log", &tensor(a_log, &[d, 1], dtype, device)?)?;
    insert_linear(&mut p, "out_proj", d, h, cfg.bias, rng, dtype, device)?;
    Ok(p)
}

/// lrnnx's default initialization of S7 (spec §12.2), H = `d_model`, N = `d_state`:
/// `in_proj.weight` default Linear (no bias); `base_params = −½` (N,) (the real part of the
/// LegS eigenvalues, which is all lrnnx keeps); `x_proj.weight` (2N+2HN+H, H) ~ N(0, 0.02²);
/// `gate_proj.weight` default Linear (no bias).
pub fn s7(h: usize, n: usize, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Params> {
    let mut p = Params::new();
    insert_linear(&mut p, "in_proj", h, h, false, rng, dtype, device)?;
    p.insert("base_params", &tensor(vec![-0.5; n], &[n], dtype, device)?)?;
    let rows = 2 * n + 2 * h * n + h;
    let x = rng.normals(rows * h, 0.02);
    p.insert("x_proj.weight", &tensor(x, &[rows, h], dtype, device)?)?;
    insert_linear(&mut p, "gate_proj", h, h, false, rng, dtype, device)?;
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

/// Reads an optional string argument.
fn str_or<'v>(
    kwargs: &'v Value,
    name: &str,
    default: &'v str,
) -> std::result::Result<&'v str, BuildError> {
    match opt(kwargs, name) {
        None => Ok(default),
        Some(v) => v
            .as_str()
            .ok_or_else(|| kwarg(name, format!("expected a string, got {v}"))),
    }
}

/// Checks that every `(name, value)` is positive.
fn positive(sizes: &[(&str, usize)]) -> std::result::Result<(), BuildError> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(kwarg(name, "must be positive")),
        None => Ok(()),
    }
}

/// Reads `(dt_min, dt_max)` (defaults 0.001, 0.1), requiring 0 < dt_min ≤ dt_max.
fn dt_range(kwargs: &Value) -> std::result::Result<(f64, f64), BuildError> {
    let dt_min = f64_arg(kwargs, "dt_min", 0.001)?;
    let dt_max = f64_arg(kwargs, "dt_max", 0.1)?;
    if !(dt_min > 0.0 && dt_min <= dt_max && dt_max.is_finite()) {
        return Err(kwarg(
            "dt_min",
            format!("need 0 < dt_min ≤ dt_max (got dt_min={dt_min}, dt_max={dt_max})"),
        ));
    }
    Ok((dt_min, dt_max))
}

/// The S4D initialization arguments in `kwargs` (defaults as lrnnx's).
fn s4d_init(kwargs: &Value) -> std::result::Result<S4dInit, BuildError> {
    let d_model = usize_arg(kwargs, "d_model")?;
    let d_state = usize_or(kwargs, "d_state", 64)?;
    let n_ssm = usize_or(kwargs, "n_ssm", d_model)?;
    let channels = usize_or(kwargs, "channels", 1)?;
    positive(&[
        ("d_model", d_model),
        ("n_ssm", n_ssm),
        ("channels", channels),
    ])?;
    if d_state < 2 || d_state % 2 == 1 {
        return Err(kwarg("d_state", "must be a positive even number"));
    }
    if d_model % n_ssm != 0 {
        return Err(kwarg("n_ssm", "must divide d_model"));
    }
    if bool_or(kwargs, "deterministic", false)? {
        return Err(kwarg(
            "deterministic",
            "lrnnx's deterministic initialization is not provided (spec §18)",
        ));
    }
    let init = match str_or(kwargs, "init", "legs")? {
        "legs" => S4dDiagInit::Legs,
        "diag-lin" => S4dDiagInit::DiagLin,
        other => {
            return Err(kwarg(
                "init",
                format!("`{other}`: only `legs` (lrnnx's default) and `diag-lin` are provided"),
            ))
        }
    };
    let (dt_min, dt_max) = dt_range(kwargs)?;
    Ok(S4dInit {
        d_model,
        d_state,
        n_ssm,
        channels,
        dt_min,
        dt_max,
        dt_tie: bool_or(kwargs, "dt_tie", true)?,
        dt_transform: transform_or(kwargs, "dt_transform", "exp")?,
        dt_fast: bool_or(kwargs, "dt_fast", false)?,
        real_transform: transform_or(kwargs, "real_transform", "exp")?,
        imag_transform: transform_or(kwargs, "imag_transform", "none")?,
        init,
        output_linear: output_linear(kwargs)?,
    })
}

/// The Mamba initialization arguments in `kwargs` (defaults as lrnnx's).
fn mamba_init(kwargs: &Value) -> std::result::Result<MambaInit, BuildError> {
    let d_model = usize_arg(kwargs, "d_model")?;
    let expand = f64_arg(kwargs, "expand", 2.0)?;
    if !(expand > 0.0 && expand.is_finite()) {
        return Err(kwarg(
            "expand",
            format!("expected a positive number, got {expand}"),
        ));
    }
    let d_inner = (expand * d_model as f64) as usize;
    let dt_rank = match opt(kwargs, "dt_rank") {
        None => d_model.div_ceil(16),
        Some(Value::String(s)) if s == "auto" => d_model.div_ceil(16),
        Some(_) => usize_arg(kwargs, "dt_rank")?,
    };
    let (dt_min, dt_max) = dt_range(kwargs)?;
    let cfg = MambaInit {
        d_model,
        d_state: usize_or(kwargs, "d_state", 16)?,
        d_conv: usize_or(kwargs, "d_conv", 4)?,
        d_inner,
        dt_rank,
        dt_min,
        dt_max,
        dt_init_floor: f64_arg(kwargs, "dt_init_floor", 1e-4)?,
        dt_scale: f64_arg(kwargs, "dt_scale", 1.0)?,
        dt_init_constant: match str_or(kwargs, "dt_init", "random")? {
            "random" => false,
            "constant" => true,
            other => {
                return Err(kwarg(
                    "dt_init",
                    format!("`{other}`: expected `random` or `constant`"),
                ))
            }
        },
        bias: bool_or(kwargs, "bias", false)?,
        conv_bias: bool_or(kwargs, "conv_bias", true)?,
    };
    positive(&[
        ("d_model", d_model),
        ("d_state", cfg.d_state),
        ("d_conv", cfg.d_conv),
        ("d_inner", d_inner),
        ("dt_rank", dt_rank),
    ])?;
    Ok(cfg)
}

/// The RG-LRU initialization arguments in `kwargs` (defaults as lrnnx's, plus
/// `lrnnx_compat_a_init` = false).
fn rglru_init(kwargs: &Value) -> std::result::Result<RgLruInit, BuildError> {
    let d_model = usize_arg(kwargs, "d_model")?;
    let expand = f64_arg(kwargs, "expand", 1.0)?;
    if !(expand > 0.0 && expand.is_finite()) {
        return Err(kwarg(
            "expand",
            format!("expected a positive number, got {expand}"),
        ));
    }
    let d_inner = (expand * d_model as f64) as usize;
    let d_conv = usize_or(kwargs, "d_conv", 4)?;
    positive(&[
        ("d_model", d_model),
        ("d_inner", d_inner),
        ("d_conv", d_conv),
    ])?;
    let c = f64_arg(kwargs, "c", 8.0)?;
    if !(c > 0.0 && c.is_finite()) {
        return Err(kwarg("c", format!("expected a positive number, got {c}")));
    }
    let a_init_range = match opt(kwargs, "a_init_range") {
        None => (0.9, 0.999),
        Some(v) => match v.as_array().map(|a| a.as_slice()) {
            Some([lo, hi]) => match (lo.as_f64(), hi.as_f64()) {
                (Some(lo), Some(hi)) if 0.0 < lo && lo <= hi && hi < 1.0 => (lo, hi),
                _ => {
                    return Err(kwarg(
                        "a_init_range",
                        format!("need 0 < lo ≤ hi < 1, got {v}"),
                    ))
                }
            },
            _ => return Err(kwarg("a_init_range", format!("expected [lo, hi], got {v}"))),
        },
    };
    Ok(RgLruInit {
        d_model,
        d_inner,
        d_conv,
        c,
        a_init_range,
        bias: bool_or(kwargs, "bias", false)?,
        conv_bias: bool_or(kwargs, "conv_bias", true)?,
        lrnnx_compat_a_init: bool_or(kwargs, "lrnnx_compat_a_init", false)?,
    })
}

/// Fresh lrnnx-default parameters for lrnnx class `class` with constructor arguments
/// `kwargs` (as for [`build`]): lrnnx's parameter names and shapes, so that [`build`] accepts
/// them. Supported: every layer: S4, S4D, S5 LTI, LRU, the four Centaurus classes, S5 LTV,
/// Mamba, RG-LRU (extra argument `lrnnx_compat_a_init`, see [`rglru`]) and S7.
pub fn init_params(
    class: &str,
    kwargs: &Value,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> std::result::Result<Params, BuildError> {
    let h_n = || -> std::result::Result<(usize, usize), BuildError> {
        let h = usize_arg(kwargs, "d_model")?;
        let n = usize_arg(kwargs, "d_state")?;
        positive(&[("d_model", h), ("d_state", n)])?;
        Ok((h, n))
    };
    if let Some(mode) = CentaurusMode::from_lrnnx_class(class) {
        let (h, n) = h_n()?;
        let m = usize_arg(kwargs, "sub_state_dim")?;
        positive(&[("sub_state_dim", m)])?;
        match mode {
            CentaurusMode::DepthwiseSeparable if n != h => {
                return Err(kwarg("d_state", "CentaurusDWS needs d_state == d_model"))
            }
            CentaurusMode::Full if n < h * h => {
                return Err(kwarg("d_state", "CentaurusFull needs d_state >= d_model²"))
            }
            _ => {}
        }
        return Ok(centaurus(mode, h, n, m, rng, dtype, device)?);
    }
    match class {
        "lrnnx.models.lti.s5.S5" => {
            let (h, n) = h_n()?;
            Ok(s5_lti(h, n, rng, dtype, device)?)
        }
        "lrnnx.models.lti.lru.LRU" | "LRU" => {
            let (h, n) = h_n()?;
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
        "lrnnx.models.lti.s4d.S4D" | "S4D" => Ok(s4d(&s4d_init(kwargs)?, rng, dtype, device)?),
        "lrnnx.models.lti.s4.S4" | "S4" => {
            let cfg = s4d_init(kwargs)?;
            if cfg.init != S4dDiagInit::Legs {
                return Err(kwarg("init", "S4's initializer supports only `legs`"));
            }
            let rank = usize_or(kwargs, "rank", 1)?;
            Ok(s4(&cfg, rank, rng, dtype, device)?)
        }
        "lrnnx.models.ltv.s5.S5" => {
            let (h, p) = h_n()?;
            let conj_sym = bool_or(kwargs, "conj_sym", false)?;
            let (dt_min, dt_max) = dt_range(kwargs)?;
            Ok(s5_ltv(h, p, conj_sym, dt_min, dt_max, rng, dtype, device)?)
        }
        "lrnnx.models.ltv.mamba.Mamba" => Ok(mamba(&mamba_init(kwargs)?, rng, dtype, device)?),
        "lrnnx.models.ltv.rglru.RGLRU" | "RGLRU" => {
            Ok(rglru(&rglru_init(kwargs)?, rng, dtype, device)?)
        }
        "lrnnx.models.ltv.s7.S7" | "S7" => {
            let (h, n) = h_n()?;
            let j = usize_or(kwargs, "J", 1)?;
            if j == 0 || n % j != 0 {
                return Err(kwarg(
                    "J",
                    format!("d_state = {n} must be a multiple of J = {j}"),
                ));
            }
            Ok(s7(h, n, rng, dtype, device)?)
        }
        crate::bidirectional::CLASS => {
            crate::bidirectional::init_params(kwargs, rng, dtype, device)
        }
        other => Err(BuildError::UnsupportedClass(format!(
            "{other} (no fresh initializer)"
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
                "lrnnx.models.lti.s4.S4Q",
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

    /// The HiPPO-LegS transition and rank correction written out from spec §5.3 (independent
    /// of `legs_nplr`): the Hermitian matrix lrnnx's `eigh` sees, from the lower triangle of
    /// `−i·(A + PPᵀ)` (the real diagonal of `A + PPᵀ` drops out), as (re, im) row-major.
    fn legs_hermitian(n: usize) -> Vec<(f64, f64)> {
        let a = |i: usize, j: usize| -> f64 {
            if i > j {
                -(((2 * i + 1) * (2 * j + 1)) as f64).sqrt()
            } else if i == j {
                -((i + 1) as f64)
            } else {
                0.0
            }
        };
        let p = |i: usize| (i as f64 + 0.5).sqrt();
        let ap = |i: usize, j: usize| a(i, j) + p(i) * p(j);
        let mut m = vec![(0.0, 0.0); n * n];
        for i in 0..n {
            for j in 0..i {
                // −i·x for real x = (0, −x); upper = conjugate
                m[i * n + j] = (0.0, -ap(i, j));
                m[j * n + i] = (0.0, ap(i, j));
            }
        }
        m
    }

    #[test]
    fn legs_eigenvalues_match_lrnnx_and_solve_the_eigenproblem() {
        // spec §5.3 (N = 8, first half) and §10.2 (P = 6)
        let (w8, _) = legs_nplr(8);
        for (got, want) in w8[..4]
            .iter()
            .zip([-19.85741, -5.35421, -1.95779, -0.42749])
        {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        let (w6, _) = legs_nplr(6);
        let want6 = [-10.9515, -2.4682, -0.4715, 0.4715, 2.4682, 10.9515];
        for (got, want) in w6.iter().zip(want6) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        for n in [1, 2, 5, 8, 17, 64] {
            let (w, v) = legs_nplr(n);
            assert!(w.windows(2).all(|p| p[0] <= p[1]), "ascending");
            let m = legs_hermitian(n);
            let mul = |x: (f64, f64), y: (f64, f64)| (x.0 * y.0 - x.1 * y.1, x.0 * y.1 + x.1 * y.0);
            let scale = w.iter().fold(1f64, |a, b| a.max(b.abs()));
            for k in 0..n {
                for i in 0..n {
                    // (M V)[i,k] − w_k V[i,k]
                    let mut acc = (0.0, 0.0);
                    for j in 0..n {
                        let t = mul(m[i * n + j], v[j * n + k]);
                        acc = (acc.0 + t.0, acc.1 + t.1);
                    }
                    let r = (acc.0 - w[k] * v[i * n + k].0, acc.1 - w[k] * v[i * n + k].1);
                    assert!(r.0.hypot(r.1) < 1e-9 * scale, "n={n} k={k}: {r:?}");
                }
                for l in 0..n {
                    // (Vᴴ V)[k,l] = δ
                    let mut acc = (0.0, 0.0);
                    for j in 0..n {
                        let (a, b) = (v[j * n + k], v[j * n + l]);
                        let t = mul((a.0, -a.1), b);
                        acc = (acc.0 + t.0, acc.1 + t.1);
                    }
                    let want = if k == l { 1.0 } else { 0.0 };
                    assert!((acc.0 - want).abs() < 1e-9 && acc.1.abs() < 1e-9, "n={n}");
                }
            }
        }
    }

    fn cfg_s4d(init: S4dDiagInit) -> S4dInit {
        S4dInit {
            d_model: 256,
            d_state: 16,
            n_ssm: 2,
            channels: 2,
            dt_min: 0.001,
            dt_max: 0.1,
            dt_tie: false,
            dt_transform: ParamTransform::Exp,
            dt_fast: false,
            real_transform: ParamTransform::Exp,
            imag_transform: ParamTransform::None,
            init,
            output_linear: true,
        }
    }

    /// S4's DPLR initialization reconstructs HiPPO-LegS (written out here from spec §5.3,
    /// independently of the initializer): with `V` the eigenvectors of the normal part, over both
    /// conjugate halves (`[V_h, conj V_h]`, `[Λ, conj Λ]`, `[P̃, conj P̃]`, the second half being
    /// the conjugate pairs lrnnx drops), `A_LegS = V (diag Λ − P̃ P̃ᴴ) Vᴴ` and `P_LegS = V P̃`, to
    /// 1e-5 relative, from the stored f32 `A_real`, `A_imag`, `P`.
    #[test]
    fn s4_init_reconstructs_legs() {
        for nn in [4usize, 8, 16] {
            let n2 = nn / 2;
            let mut cfg = cfg_s4d(S4dDiagInit::Legs);
            cfg.d_model = 3;
            cfg.n_ssm = 1;
            cfg.channels = 1;
            cfg.d_state = nn;
            let p = s4(&cfg, 2, &mut Rng::new(4), DType::F32, &Device::Cpu).unwrap();
            let (a_real, a_imag, pp) = (vals(&p, "A_real"), vals(&p, "A_imag"), vals(&p, "P"));
            assert_eq!(pp.len(), 2 * n2 * 2);
            assert!(pp[2 * n2..].iter().all(|&v| v == 0.0), "rank row 2 is zero");
            assert_eq!(vals(&p, "layer.kernel.l_kernel"), vec![0.0]);
            let (_, v) = legs_nplr(nn);
            type C = (f64, f64);
            let mul = |a: C, b: C| (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0);
            let conj = |a: C| (a.0, -a.1);
            // Full (conjugate-completed) V columns, Λ and P̃.
            let vf = |i: usize, k: usize| -> C {
                if k < n2 {
                    v[i * nn + k]
                } else {
                    conj(v[i * nn + k - n2])
                }
            };
            let lam = |k: usize| -> C {
                let l = (-a_real[k % n2].exp(), -a_imag[k % n2]);
                if k < n2 {
                    l
                } else {
                    conj(l)
                }
            };
            let pt = |k: usize| -> C {
                let q = (pp[2 * (k % n2)], pp[2 * (k % n2) + 1]);
                if k < n2 {
                    q
                } else {
                    conj(q)
                }
            };
            let legs = |i: usize, j: usize| -> f64 {
                if i > j {
                    -(((2 * i + 1) * (2 * j + 1)) as f64).sqrt()
                } else if i == j {
                    -((i + 1) as f64)
                } else {
                    0.0
                }
            };
            let mut worst: f64 = 0.0;
            for i in 0..nn {
                // P_LegS[i] = Σ_k V[i,k] P̃_k
                let pi = (0..nn).fold((0.0, 0.0), |acc, k| {
                    let t = mul(vf(i, k), pt(k));
                    (acc.0 + t.0, acc.1 + t.1)
                });
                assert!(
                    (pi.0 - (i as f64 + 0.5).sqrt()).abs() < 1e-5 * nn as f64,
                    "P {i}"
                );
                assert!(pi.1.abs() < 1e-5 * nn as f64, "P {i} imaginary");
                for j in 0..nn {
                    let mut acc = (0.0, 0.0);
                    for k in 0..nn {
                        for l in 0..nn {
                            // M[k,l] = δ_kl Λ_k − P̃_k conj(P̃_l)
                            let mut m = mul(pt(k), conj(pt(l)));
                            m = (-m.0, -m.1);
                            if k == l {
                                m = (m.0 + lam(k).0, m.1 + lam(k).1);
                            }
                            let t = mul(mul(vf(i, k), m), conj(vf(j, l)));
                            acc = (acc.0 + t.0, acc.1 + t.1);
                        }
                    }
                    let d = (acc.0 - legs(i, j)).abs().max(acc.1.abs());
                    worst = if d.is_nan() || acc.1.is_nan() {
                        f64::INFINITY
                    } else {
                        worst.max(d)
                    };
                }
            }
            assert!(worst < 1e-5 * nn as f64, "N={nn}: max error {worst}");
        }
    }

    /// A freshly initialized S4 (lrnnx's defaults, d_state 64) runs forward and backward with
    /// finite outputs and gradients, and its step matches its forward.
    #[test]
    fn fresh_s4_trains_and_steps_finite() {
        let kw = json!({"d_model": 4, "d_state": 64, "transposed": false});
        let layer = fresh(
            "lrnnx.models.lti.s4.S4",
            &kw,
            &mut Rng::new(2),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let (b, l, h) = (2, 64, 4);
        let mut rng = Rng::new(8);
        let xv: Vec<f32> = (0..b * l * h).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(xv, (b, l, h), &Device::Cpu).unwrap();
        let y = layer.forward(&x, None).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in layer.params().vars() {
            if name == "layer.kernel.l_kernel" {
                continue;
            }
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no grad for {name}"));
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "{name}");
            assert!(g.iter().any(|&v| v != 0.0), "{name}: zero gradient");
        }
        let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(yv.iter().all(|v| v.is_finite()));
        let mut cache = layer.init_cache(b).unwrap();
        let scale = yv.iter().fold(0f32, |m, v| m.max(v.abs()));
        for t in 0..l {
            let yt = layer
                .step(
                    &x.narrow(1, t, 1).unwrap().squeeze(1).unwrap(),
                    &mut cache,
                    None,
                )
                .unwrap();
            let want = y.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            let d: f32 = (yt - want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d <= 2e-5 * scale + 1e-6, "t={t}: {d}");
        }
    }

    #[test]
    fn s4d_init() {
        let cfg = cfg_s4d(S4dDiagInit::Legs);
        let p = s4d(&cfg, &mut Rng::new(11), DType::F64, &Device::Cpu).unwrap();
        let (lo, hi) = (0.001f64.ln(), 0.1f64.ln());
        let inv_dt = vals(&p, "inv_dt");
        assert_eq!(inv_dt.len(), 256 * 8);
        assert!(inv_dt.iter().all(|&v| v >= lo && v <= hi));
        let (m, s) = mean_std(&inv_dt);
        let width = hi - lo;
        assert!((m - 0.5 * (lo + hi)).abs() < 0.03 * width, "{m}");
        assert!((s - width / 12f64.sqrt()).abs() < 0.03 * width, "{s}");
        assert!(vals(&p, "A_real")
            .iter()
            .all(|&v| (v - 0.5f64.ln()).abs() < 1e-15));
        let a_imag = vals(&p, "A_imag");
        let (w16, _) = legs_nplr(16);
        for row in 0..2 {
            for k in 0..8 {
                assert!((a_imag[row * 8 + k] + w16[k]).abs() < 1e-12);
            }
        }
        let b = vals(&p, "B");
        assert!(b.chunks(2).all(|c| c[1].abs() <= 2.0));
        assert_eq!(&b[..16], &b[16..]); // the same for every SSM
        let (m, s) = mean_std(&vals(&p, "C"));
        assert!(
            m.abs() < 0.035 && (s - FRAC_1_SQRT_2).abs() < 0.02,
            "{m} {s}"
        );
        let (m, s) = mean_std(&vals(&p, "D"));
        assert!(m.abs() < 0.2 && (s - 1.0).abs() < 0.12, "{m} {s}");
        let w = vals(&p, "output_linear.0.weight");
        let bound = 1.0 / 512f64.sqrt();
        assert!(w.iter().all(|x| x.abs() <= bound));
        let (_, s) = mean_std(&w);
        assert!((s - bound / 3f64.sqrt()).abs() < 0.02 * bound, "{s}");

        let mut cfg = cfg_s4d(S4dDiagInit::DiagLin);
        cfg.dt_transform = ParamTransform::Softplus;
        cfg.dt_fast = true;
        let p = s4d(&cfg, &mut Rng::new(11), DType::F64, &Device::Cpu).unwrap();
        let a_imag = vals(&p, "A_imag");
        assert_eq!(a_imag[0], 1e-4); // lrnnx's clamp of π·0
        for (k, v) in a_imag.iter().enumerate().take(8).skip(1) {
            assert!((v - PI * k as f64).abs() < 1e-12);
        }
        assert!(vals(&p, "B").chunks(2).all(|c| c[0] == 1.0 && c[1] == 0.0));
        // Δ = softplus(sinh(inv_dt)) is in [dt_min, dt_max]
        for v in vals(&p, "inv_dt") {
            let dt = v.sinh().exp().ln_1p();
            assert!((0.001 - 1e-12..=0.1 + 1e-12).contains(&dt), "{dt}");
        }
    }

    #[test]
    fn centaurus_init() {
        let dev = Device::Cpu;
        let (h, n, m) = (16, 300, 20);
        let p = centaurus(
            CentaurusMode::Neck,
            h,
            n,
            m,
            &mut Rng::new(2),
            DType::F64,
            &dev,
        )
        .unwrap();
        let a = vals(&p, "A");
        for i in 0..n {
            for j in 0..m {
                assert_eq!(a[(i * m + j) * 2], -0.5);
                assert!((a[(i * m + j) * 2 + 1] - PI * j as f64 / m as f64).abs() < 1e-15);
            }
        }
        let ld = vals(&p, "log_delta");
        assert!((ld[0] - 1e-3f64.ln()).abs() < 1e-12 && (ld[n - 1] - 0.1f64.ln()).abs() < 1e-12);
        let step = (ld[1] - ld[0], ld[n - 1] - ld[n - 2]);
        assert!((step.0 - step.1).abs() < 1e-12);
        let (me, se) = mean_std(&vals(&p, "E"));
        assert!(
            me.abs() < 0.07 && (se - 2f64.sqrt()).abs() < 0.05,
            "{me} {se}"
        );
        let b = vals(&p, "B");
        assert!(b.iter().all(|x| x.abs() <= 0.25));
        let (_, sb) = mean_std(&b);
        assert!((sb - 0.25 / 3f64.sqrt()).abs() < 0.005, "{sb}");
        let bound_c = 1.0 / (n as f64).sqrt();
        assert!(vals(&p, "C").iter().all(|x| x.abs() <= bound_c));

        let p = centaurus(
            CentaurusMode::DepthwiseSeparable,
            8,
            8,
            3,
            &mut Rng::new(2),
            DType::F64,
            &dev,
        )
        .unwrap();
        assert!(vals(&p, "B")
            .iter()
            .chain(&vals(&p, "C"))
            .all(|&x| x == 1.0));
        let p = centaurus(
            CentaurusMode::Full,
            16,
            4000,
            2,
            &mut Rng::new(2),
            DType::F64,
            &dev,
        )
        .unwrap();
        let (_, s) = mean_std(&vals(&p, "B"));
        assert!((s - (2.0 / 16f64).sqrt()).abs() < 0.02, "{s}");
        let (_, s) = mean_std(&vals(&p, "C"));
        assert!((s - (2.0 / 4000f64).sqrt()).abs() < 0.002, "{s}");
        let p = centaurus(
            CentaurusMode::PointwiseNeck,
            16,
            200,
            4,
            &mut Rng::new(2),
            DType::F64,
            &dev,
        )
        .unwrap();
        assert!(!p.vars().contains_key("E"));
        assert!(vals(&p, "B").iter().all(|&x| x == 0.25));
        let (_, s) = mean_std(&vals(&p, "C"));
        assert!((s - (2.0 / 800f64).sqrt()).abs() < 0.003, "{s}");
    }

    #[test]
    fn s5_ltv_init() {
        let dev = Device::Cpu;
        let (h, p) = (2000, 6);
        let ps = s5_ltv(h, p, false, 0.001, 0.1, &mut Rng::new(4), DType::F64, &dev).unwrap();
        let a = vals(&ps, "A");
        let want = [-10.9515, -2.4682, -0.4715, 0.4715, 2.4682, 10.9515];
        for k in 0..p {
            assert_eq!(a[2 * k], -0.5);
            assert!((a[2 * k + 1] - want[k]).abs() < 1e-4);
        }
        // B = Vᴴ G with G ~ N(0, 1/P): E|B|² = 1/P; C = G_c V: E|C|² = 2/P
        let sq = |v: &[f64]| v.chunks(2).map(|c| c[0] * c[0] + c[1] * c[1]).sum::<f64>();
        let b = vals(&ps, "B");
        let mb = sq(&b) / (p * h) as f64;
        assert!((mb - 1.0 / p as f64).abs() < 0.01, "{mb}");
        let c = vals(&ps, "C");
        let mc = sq(&c) / (p * h) as f64;
        assert!((mc - 2.0 / p as f64).abs() < 0.02, "{mc}");
        let (m, s) = mean_std(&vals(&ps, "D"));
        assert!(m.abs() < 0.02 && (s - 0.1).abs() < 0.01, "{m} {s}");
        let (lo, hi) = (0.001f64.ln(), 0.1f64.ln());
        assert!(vals(&ps, "log_dt").iter().all(|&v| v >= lo && v < hi));

        let ps = s5_ltv(h, 3, true, 0.001, 0.1, &mut Rng::new(4), DType::F64, &dev).unwrap();
        let a = vals(&ps, "A");
        for k in 0..3 {
            assert!((a[2 * k + 1] - want[k]).abs() < 1e-4);
        }
        let mc = sq(&vals(&ps, "C")) / (3 * h) as f64;
        assert!((mc - 2.0 / 6.0).abs() < 0.02, "{mc}");
    }

    #[test]
    fn mamba_init() {
        let cfg = MambaInit {
            d_model: 64,
            d_state: 16,
            d_conv: 4,
            d_inner: 2000,
            dt_rank: 4,
            dt_min: 0.001,
            dt_max: 0.1,
            dt_init_floor: 0.005,
            dt_scale: 2.0,
            dt_init_constant: false,
            bias: true,
            conv_bias: true,
        };
        let p = mamba(&cfg, &mut Rng::new(8), DType::F64, &Device::Cpu).unwrap();
        let a_log = vals(&p, "A_log");
        for (i, v) in a_log.iter().enumerate() {
            assert_eq!(*v, ((i % 16 + 1) as f64).ln());
        }
        assert!(vals(&p, "D").iter().all(|&d| d == 1.0));
        let w = vals(&p, "dt_proj.weight");
        assert!(w.iter().all(|x| x.abs() <= 1.0)); // 2/√4
        let (m, s) = mean_std(&w);
        assert!(
            m.abs() < 0.03 && (s - 1.0 / 3f64.sqrt()).abs() < 0.02,
            "{m} {s}"
        );
        // softplus(bias) = Δ0 = max(log-uniform, floor)
        let dt: Vec<f64> = vals(&p, "dt_proj.bias")
            .iter()
            .map(|b| b.exp().ln_1p())
            .collect();
        assert!(dt
            .iter()
            .all(|&d| (0.005 - 1e-12..=0.1 + 1e-12).contains(&d)));
        let floored = dt.iter().filter(|&&d| (d - 0.005).abs() < 1e-12).count() as f64;
        // P(U·ln100 + ln 0.001 < ln 0.005) = ln 5 / ln 100 ≈ 0.349
        let frac = floored / dt.len() as f64;
        assert!((frac - 5f64.ln() / 100f64.ln()).abs() < 0.04, "{frac}");
        let k_bound = 0.5;
        assert!(vals(&p, "conv1d.weight").iter().all(|x| x.abs() <= k_bound));
        let xw = vals(&p, "x_proj.weight");
        let bound = 1.0 / 2000f64.sqrt();
        assert!(xw.iter().all(|x| x.abs() <= bound));
        let (_, s) = mean_std(&xw);
        assert!((s - bound / 3f64.sqrt()).abs() < 0.02 * bound);
        assert!(vals(&p, "dtA_proj.bias").iter().all(|x| x.abs() <= 0.5));

        let mut cfg = cfg;
        cfg.dt_init_constant = true;
        cfg.bias = false;
        cfg.conv_bias = false;
        let p = mamba(&cfg, &mut Rng::new(8), DType::F64, &Device::Cpu).unwrap();
        assert!(vals(&p, "dt_proj.weight").iter().all(|&x| x == 1.0));
        for k in ["in_proj.bias", "out_proj.bias", "conv1d.bias"] {
            assert!(!p.vars().contains_key(k), "{k}");
        }
    }

    #[test]
    fn rglru_decay_init() {
        let mut cfg = RgLruInit {
            d_model: 8,
            d_inner: 4000,
            d_conv: 4,
            c: 8.0,
            a_init_range: (0.9, 0.999),
            bias: false,
            conv_bias: true,
            lrnnx_compat_a_init: false,
        };
        let p = rglru(&cfg, &mut Rng::new(6), DType::F64, &Device::Cpu).unwrap();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        // published: σ(a_log)^c uniform in [0.9, 0.999]
        let ac: Vec<f64> = vals(&p, "a_log")
            .iter()
            .map(|&x| sig(x).powf(8.0))
            .collect();
        assert!(ac
            .iter()
            .all(|&v| (0.9 - 1e-12..=0.999 + 1e-12).contains(&v)));
        let (m, s) = mean_std(&ac);
        assert!((m - 0.9495).abs() < 0.003, "{m}");
        assert!((s - 0.099 / 12f64.sqrt()).abs() < 0.002, "{s}");
        // lrnnx's own: a_log = ln U[0.9, 0.999], so σ(a_log) ∈ (0.474, 0.5)
        cfg.lrnnx_compat_a_init = true;
        let p = rglru(&cfg, &mut Rng::new(6), DType::F64, &Device::Cpu).unwrap();
        let a_log = vals(&p, "a_log");
        assert!(a_log
            .iter()
            .all(|&x| x >= 0.9f64.ln() && x <= 0.999f64.ln()));
        assert!(a_log.iter().all(|&x| sig(x) > 0.4736 && sig(x) < 0.5));
        let (m, _) = mean_std(&a_log.iter().map(|x| x.exp()).collect::<Vec<_>>());
        assert!((m - 0.9495).abs() < 0.003, "{m}");
    }

    #[test]
    fn s7_init() {
        let (h, n) = (20, 8);
        let p = s7(h, n, &mut Rng::new(12), DType::F64, &Device::Cpu).unwrap();
        assert!(vals(&p, "base_params").iter().all(|&v| v == -0.5));
        let x = vals(&p, "x_proj.weight");
        assert_eq!(x.len(), (2 * n + 2 * h * n + h) * h);
        let (m, s) = mean_std(&x);
        assert!(m.abs() < 0.001 && (s - 0.02).abs() < 0.001, "{m} {s}");
        let bound = 1.0 / (h as f64).sqrt();
        assert!(vals(&p, "in_proj.weight").iter().all(|x| x.abs() <= bound));
        assert!(!p.vars().contains_key("in_proj.bias"));
    }

    /// The golden case's lrnnx state dict (names and shapes, without S4D's `layer.kernel.`
    /// aliases), class and constructor arguments.
    fn golden_layout(case: &str) -> (String, Value, Vec<(String, Vec<usize>)>) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/lrnnx-golden")
            .join(format!("{case}.safetensors"));
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let config: Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut layout: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .filter_map(|(k, v)| {
                let k = k.strip_prefix("param.")?;
                (!k.starts_with("layer.kernel.") || k == "layer.kernel.l_kernel")
                    .then(|| (k.to_owned(), v.shape().to_vec()))
            })
            .collect();
        layout.sort();
        (
            config["class"].as_str().unwrap().to_owned(),
            config["ctor_kwargs"].clone(),
            layout,
        )
    }

    const CASES: [&str; 11] = [
        "s5_lti_zoh",
        "lru",
        "s4d_zoh",
        "centaurus_neck",
        "centaurus_pointwise",
        "centaurus_dws",
        "centaurus_full",
        "s5_ltv_zoh_conjsym",
        "mamba_mamba",
        "rglru",
        "s7",
    ];

    /// Every initializer gives exactly the names and shapes of lrnnx's own state dict for the
    /// golden cases' constructor arguments; the layer builds, is seeded, and runs a finite forward.
    #[test]
    fn every_fresh_layer_has_lrnnx_layout_builds_and_runs() {
        let dev = Device::Cpu;
        for case in CASES
            .into_iter()
            .chain(["s5_ltv_zoh", "s4d_bilinear", "mamba_zoh_event", "s4"])
        {
            let (class, kwargs, want) = golden_layout(case);
            let p = init_params(&class, &kwargs, &mut Rng::new(21), DType::F32, &dev).unwrap();
            let got: Vec<(String, Vec<usize>)> = p
                .vars()
                .iter()
                .map(|(k, v)| (k.clone(), v.dims().to_vec()))
                .collect();
            assert_eq!(got, want, "{case}");
            crate::checkpoint::Checkpoint::new(&class, &kwargs, p.clone()).unwrap();
            let again = init_params(&class, &kwargs, &mut Rng::new(21), DType::F32, &dev).unwrap();
            let other = init_params(&class, &kwargs, &mut Rng::new(22), DType::F32, &dev).unwrap();
            let mut differs = false;
            for (k, v) in p.vars() {
                let (a, b, c) = (
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                    again.vars()[k]
                        .as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                    other.vars()[k]
                        .as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                );
                assert_eq!(a, b, "{case} {k}: same seed, same tensor");
                assert!(a.iter().all(|x| x.is_finite()), "{case} {k}");
                differs |= a != c;
            }
            assert!(differs, "{case}: another seed changes something");
            let layer = build(&class, &kwargs, p).unwrap();
            let h = usize_arg(&kwargs, "d_model").unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 9, h), &dev).unwrap();
            let taus =
                (case.ends_with("_event")).then(|| Tensor::ones((2, 9), DType::F32, &dev).unwrap());
            let y = layer.forward(&x, taus.as_ref()).unwrap();
            assert_eq!(y.dims(), &[2, 9, h], "{case}");
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(y.iter().all(|v| v.is_finite()), "{case}");
            assert!(y.iter().any(|v| *v != 0.0), "{case}");
        }
    }

    #[test]
    fn fresh_rejects_bad_arguments() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(1);
        for (class, kw) in [
            ("S4D", json!({"d_model": 4, "d_state": 5})),
            ("S4D", json!({"d_model": 4, "n_ssm": 3})),
            ("S4D", json!({"d_model": 4, "init": "fourier"})),
            ("S4D", json!({"d_model": 4, "deterministic": true})),
            (
                "CentaurusDWS",
                json!({"d_model": 4, "d_state": 5, "sub_state_dim": 2}),
            ),
            (
                "CentaurusFull",
                json!({"d_model": 4, "d_state": 15, "sub_state_dim": 2}),
            ),
            (
                "CentaurusNeck",
                json!({"d_model": 4, "d_state": 5, "sub_state_dim": 0}),
            ),
            (
                "lrnnx.models.ltv.s5.S5",
                json!({"d_model": 4, "d_state": 0}),
            ),
            (
                "lrnnx.models.ltv.mamba.Mamba",
                json!({"d_model": 4, "expand": 0.1}),
            ),
            (
                "lrnnx.models.ltv.mamba.Mamba",
                json!({"d_model": 4, "dt_init": "x"}),
            ),
            ("RGLRU", json!({"d_model": 4, "a_init_range": [0.9, 1.0]})),
            ("RGLRU", json!({"d_model": 4, "a_init_range": 0.9})),
            ("S7", json!({"d_model": 4, "d_state": 6, "J": 4})),
        ] {
            assert!(
                matches!(
                    init_params(class, &kw, &mut rng, DType::F32, &dev),
                    Err(BuildError::Kwarg(_))
                ),
                "{class} {kw}"
            );
        }
    }
}
