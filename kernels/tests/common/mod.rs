//! Helpers shared by the GPU test files: a seeded generator, complex f64 arithmetic for the
//! sequential references, lrnnx golden-case loading, layout transposes and the error measure.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;

/// xorshift64 generator of uniform and normal f64 values (fixed seeds: reproducible cases).
pub struct Rng(pub u64);
impl Rng {
    /// Uniform in [0, 1).
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.next().max(1e-300), self.next());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
}

/// Complex f64 `(re, im)`.
#[derive(Clone, Copy, Debug)]
pub struct C64(pub f64, pub f64);
impl C64 {
    pub const ZERO: C64 = C64(0.0, 0.0);
    pub const ONE: C64 = C64(1.0, 0.0);
    pub fn add(self, o: C64) -> C64 {
        C64(self.0 + o.0, self.1 + o.1)
    }
    pub fn mul(self, o: C64) -> C64 {
        C64(self.0 * o.0 - self.1 * o.1, self.0 * o.1 + self.1 * o.0)
    }
    pub fn conj(self) -> C64 {
        C64(self.0, -self.1)
    }
    /// `self / o = self · conj(o) / |o|²`.
    pub fn div(self, o: C64) -> C64 {
        let d = o.0 * o.0 + o.1 * o.1;
        self.mul(o.conj()).scale(1.0 / d)
    }
    /// `e^re · (cos im, sin im)`.
    pub fn exp(self) -> C64 {
        let m = self.0.exp();
        C64(m * self.1.cos(), m * self.1.sin())
    }
    pub fn scale(self, s: f64) -> C64 {
        C64(self.0 * s, self.1 * s)
    }
}

/// f64 -> f32 (the kernels' inputs).
pub fn f32v(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `max |got − want| / max |want|`; infinite where a difference is not finite (a NaN or an
/// infinity in either), so a NaN result fails every tolerance (`f64::max` would drop it).
pub fn rel<T: Copy + Into<f64>>(got: &[T], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mx = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter().zip(want).fold(0.0f64, |m, (&g, w)| {
        let d = (g.into() - w).abs();
        if d.is_finite() {
            m.max(d)
        } else {
            f64::INFINITY
        }
    }) / mx
}

/// `(b, m, n)` -> `(b, n, m)`.
fn swap_last_two<T: Copy + Default>(v: &[T], b: usize, m: usize, n: usize) -> Vec<T> {
    assert_eq!(v.len(), b * m * n);
    let mut o = vec![T::default(); v.len()];
    for bi in 0..b {
        for i in 0..m {
            for j in 0..n {
                o[(bi * n + j) * m + i] = v[(bi * m + i) * n + j];
            }
        }
    }
    o
}

/// lrnnx's `(b, d, L)` -> the kernels' `(b, L, d)`.
pub fn to_bld<T: Copy + Default>(v: &[T], b: usize, d: usize, l: usize) -> Vec<T> {
    swap_last_two(v, b, d, l)
}

/// The kernels' `(b, L, d)` -> lrnnx's `(b, d, L)`.
pub fn to_bdl<T: Copy + Default>(v: &[T], b: usize, d: usize, l: usize) -> Vec<T> {
    swap_last_two(v, b, l, d)
}

/// One lrnnx golden case: its tensors (shape, values as f64) by name and its `config`.
pub struct Golden {
    pub t: HashMap<String, (Vec<usize>, Vec<f64>)>,
    pub cfg: serde_json::Value,
}

/// Loads a golden safetensors file (f32 tensors, `config` JSON in the metadata).
pub fn load(path: &std::path::Path) -> Golden {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut t = HashMap::new();
    for (k, v) in st.tensors() {
        let data: Vec<f64> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        t.insert(k.to_string(), (v.shape().to_vec(), data));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cfg = serde_json::from_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
    Golden { t, cfg }
}

/// Whether there is no usable CUDA device, printing the skip reason; with
/// `LRNNX_REQUIRE_CUDA=1` (as on the GPU machine) the absence is a failure instead.
pub fn no_gpu() -> bool {
    if lrnnx_kernels::cuda::gpu_available() {
        return false;
    }
    if std::env::var("LRNNX_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("LRNNX_REQUIRE_CUDA=1 but there is no CUDA device (libcuda missing or no GPU)");
    }
    println!("SKIPPED: no CUDA device (libcuda missing or no GPU)");
    true
}

/// A directional check of a gradient `grad` of `loss` at `x`: the central difference
/// `(loss(x + εv) − loss(x − εv)) / 2ε` (ε = 1e-5; `step(h, t)` adds `t·v` to the input's field
/// of `h`) against `grad·v`. Returns `(grad·v, difference, |grad·v − difference| / Σ|grad_i v_i|)`.
pub fn directional<H: Clone, G: Copy + Into<f64>>(
    x: &H,
    grad: &[G],
    v: &[f64],
    step: impl Fn(&mut H, f64),
    loss: impl Fn(&H) -> f64,
) -> (f64, f64, f64) {
    let eps = 1e-5;
    let (mut xp, mut xm) = (x.clone(), x.clone());
    step(&mut xp, eps);
    step(&mut xm, -eps);
    let fd = (loss(&xp) - loss(&xm)) / (2.0 * eps);
    let dot: f64 = grad.iter().zip(v).map(|(&a, b)| a.into() * b).sum();
    let scale: f64 = grad.iter().zip(v).map(|(&a, b)| (a.into() * b).abs()).sum();
    (dot, fd, (dot - fd).abs() / scale.max(1e-30))
}
