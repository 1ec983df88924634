//! Causal convolution by FFT as a candle custom op with a hand-written backward: O(L log L)
//! work and O(L) memory per channel, where a Toeplitz product costs O(L²) of both.
//!
//! ```text
//! u (B, C, L)   k (C, K)   →   y (B, C, L)
//! y[b,c,t] = Σ_{j=0}^{min(t, K−1)} k[c,j]·u[b,c,t−j]                        (causal, zero history)
//! ```
//!
//! Backward (upstream `g = ∂L/∂y`, both correlations):
//!
//! ```text
//! ∂u[b,c,s] = Σ_{t ≥ s} g[b,c,t]·k[c,t−s]        ∂k[c,j] = Σ_b Σ_{t ≥ j} g[b,c,t]·u[b,c,t−j]
//! ```
//!
//! All three are products of spectra over a zero-padded length `n ≥ L + K − 1` (a power of
//! two), which makes the circular convolution/correlation equal to the linear one:
//! `y = IFFT(Û·K̂)`, `∂u = IFFT(Ĝ·conj K̂)`, `∂k = IFFT(Σ_b Ĝ·conj Û)`, each truncated.
//! Two real signals share one complex FFT (`z = a + i·b`, `Â[f] = (Z[f] + conj Z[−f])/2`,
//! `B̂[f] = (Z[f] − conj Z[−f])/(2i)`), and two real results one inverse FFT (the spectra of
//! real signals are Hermitian, so `IFFT(P + i·Q) = p + i·q`): channels go through in pairs.
//! FFTs by `rustfft`, in the precision of the tensors (f32 or f64), on one thread.
//!
//! On a CUDA device (feature `cuda`) the same op runs `lrnnx-kernels`' causal convolution
//! (module `gpu`): the three sums above either term by term in shared-memory tiles
//! (O(B·C·L·min(K, L)) work) or, for long kernels, through cuFFT (O(L log L) a row), as
//! `CudaConvMethod::Auto` picks per op (`set_cuda_conv_method` forces one); deterministic;
//! f32 only (f64 is refused with an error).

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};

/// The FFTs of one padded length `n`.
struct Plan<T: FftNum> {
    n: usize,
    fwd: Arc<dyn Fft<T>>,
    inv: Arc<dyn Fft<T>>,
    scratch: Vec<Complex<T>>,
    buf: Vec<Complex<T>>,
}

impl<T: FftNum> Plan<T> {
    /// For signals of length `l` convolved with kernels of length `k`.
    fn new(l: usize, k: usize) -> Self {
        let n = (l + k - 1).next_power_of_two().max(2);
        let mut planner = FftPlanner::new();
        let fwd = planner.plan_fft_forward(n);
        let inv = planner.plan_fft_inverse(n);
        let len = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len());
        Plan {
            n,
            fwd,
            inv,
            scratch: vec![Complex::new(T::zero(), T::zero()); len],
            buf: vec![Complex::new(T::zero(), T::zero()); n],
        }
    }

    /// The spectra of the real signals `a` and `b` (zero-padded to `n`; `b = None` is zero)
    /// from one complex FFT, written to `sa`, `sb` (length `n`).
    fn pair_fft(&mut self, a: &[T], b: Option<&[T]>, sa: &mut [Complex<T>], sb: &mut [Complex<T>]) {
        let zero = T::zero();
        for (i, z) in self.buf.iter_mut().enumerate() {
            let re = a.get(i).copied().unwrap_or(zero);
            let im = b.and_then(|b| b.get(i)).copied().unwrap_or(zero);
            *z = Complex::new(re, im);
        }
        self.fwd
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        let half = T::from_f64(0.5).unwrap_or(zero);
        let n = self.n;
        for f in 0..n {
            let z = self.buf[f];
            let zc = self.buf[(n - f) % n].conj();
            sa[f] = (z + zc) * half;
            // (z − zc)/(2i) = −i·(z − zc)/2
            let d = (z - zc) * half;
            sb[f] = Complex::new(d.im, -d.re);
        }
    }

    /// `IFFT(spec)` into `self.buf` (unscaled: the caller multiplies by `1/n`).
    fn ifft_buf(&mut self) {
        self.inv
            .process_with_scratch(&mut self.buf, &mut self.scratch);
    }
}

/// `y[c] = IFFT(Û[c]·K̂[c])` (`conj_k`: `conj K̂`), truncated to `l`, for `u` (B, C, L) and `k`
/// (C, K), both row-major: the forward (`conj_k = false`) and `∂u` (`conj_k = true`, with `u`
/// the upstream gradient).
fn conv<T: FftNum>(
    u: &[T],
    k: &[T],
    (b, c, l, kl): (usize, usize, usize, usize),
    conj_k: bool,
) -> Vec<T> {
    let mut y = vec![T::zero(); b * c * l];
    if l == 0 || c == 0 || b == 0 {
        return y;
    }
    let mut plan = Plan::<T>::new(l, kl);
    let n = plan.n;
    let zero = Complex::new(T::zero(), T::zero());
    let (mut k1, mut k2, mut u1, mut u2) =
        (vec![zero; n], vec![zero; n], vec![zero; n], vec![zero; n]);
    let scale = T::one() / T::from_usize(n).unwrap_or(T::one());
    for c1 in (0..c).step_by(2) {
        let c2 = (c1 + 1 < c).then_some(c1 + 1);
        let krow = |ci: usize| &k[ci * kl..(ci + 1) * kl];
        plan.pair_fft(krow(c1), c2.map(krow), &mut k1, &mut k2);
        if conj_k {
            k1.iter_mut()
                .chain(k2.iter_mut())
                .for_each(|v| *v = v.conj());
        }
        for bi in 0..b {
            let urow = |ci: usize| &u[(bi * c + ci) * l..(bi * c + ci + 1) * l];
            plan.pair_fft(urow(c1), c2.map(urow), &mut u1, &mut u2);
            for f in 0..n {
                let p = u1[f] * k1[f];
                let q = u2[f] * k2[f];
                // p + i·q
                plan.buf[f] = Complex::new(p.re - q.im, p.im + q.re);
            }
            plan.ifft_buf();
            let o1 = (bi * c + c1) * l;
            for t in 0..l {
                y[o1 + t] = plan.buf[t].re * scale;
            }
            if let Some(c2) = c2 {
                let o2 = (bi * c + c2) * l;
                for t in 0..l {
                    y[o2 + t] = plan.buf[t].im * scale;
                }
            }
        }
    }
    y
}

/// `∂k[c] = IFFT(Σ_b Ĝ[b,c]·conj Û[b,c])` truncated to `kl`, for `g`, `u` (B, C, L).
fn kernel_grad<T: FftNum>(g: &[T], u: &[T], (b, c, l, kl): (usize, usize, usize, usize)) -> Vec<T> {
    let mut dk = vec![T::zero(); c * kl];
    if l == 0 || c == 0 || b == 0 {
        return dk;
    }
    let mut plan = Plan::<T>::new(l, kl);
    let n = plan.n;
    let zero = Complex::new(T::zero(), T::zero());
    let (mut g1, mut g2, mut u1, mut u2) =
        (vec![zero; n], vec![zero; n], vec![zero; n], vec![zero; n]);
    let (mut s1, mut s2) = (vec![zero; n], vec![zero; n]);
    let scale = T::one() / T::from_usize(n).unwrap_or(T::one());
    let kept = kl.min(n);
    for c1 in (0..c).step_by(2) {
        let c2 = (c1 + 1 < c).then_some(c1 + 1);
        s1.iter_mut().chain(s2.iter_mut()).for_each(|x| *x = zero);
        for bi in 0..b {
            let row = |ci: usize| (bi * c + ci) * l..(bi * c + ci + 1) * l;
            plan.pair_fft(&g[row(c1)], c2.map(|c2| &g[row(c2)]), &mut g1, &mut g2);
            plan.pair_fft(&u[row(c1)], c2.map(|c2| &u[row(c2)]), &mut u1, &mut u2);
            for f in 0..n {
                s1[f] = s1[f] + g1[f] * u1[f].conj();
                s2[f] = s2[f] + g2[f] * u2[f].conj();
            }
        }
        for f in 0..n {
            let (p, q) = (s1[f], s2[f]);
            plan.buf[f] = Complex::new(p.re - q.im, p.im + q.re);
        }
        plan.ifft_buf();
        for j in 0..kept {
            dk[c1 * kl + j] = plan.buf[j].re * scale;
        }
        if let Some(c2) = c2 {
            for j in 0..kept {
                dk[c2 * kl + j] = plan.buf[j].im * scale;
            }
        }
    }
    dk
}

/// `(B, C, L)` and `(C, K)` from the layouts, checked.
fn dims(a: &Layout, k: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match (a.shape().dims(), k.shape().dims()) {
        ([b, c, l], [c2, kl]) if c == c2 && *kl > 0 => Ok((*b, *c, *l, *kl)),
        (x, y) => bail!(
            "causal_conv{what}: expected a signal (B, C, L) and a kernel (C, K ≥ 1), got {x:?} and {y:?}"
        ),
    }
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("causal_conv: operands must be contiguous"),
    }
}

/// The op: `conj_k = false` is the forward `(u, k) → y`; `true` is `(g, k) → ∂u`.
struct Conv {
    conj_k: bool,
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        if self.conj_k {
            "causal-conv-grad-input"
        } else {
            "causal-conv"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(l1, l2, "")?;
        let out = match (s1, s2) {
            (CpuStorage::F32(u), CpuStorage::F32(k)) => {
                CpuStorage::F32(conv(slice(u, l1)?, slice(k, l2)?, d, self.conj_k))
            }
            (CpuStorage::F64(u), CpuStorage::F64(k)) => {
                CpuStorage::F64(conv(slice(u, l1)?, slice(k, l2)?, d, self.conj_k))
            }
            _ => bail!("causal_conv: signal and kernel must both be f32 or both f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = dims(l1, l2, "")?;
        let y = crate::gpu::conv_correlate(self.conj_k, s1, l1, s2, l2, d)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        u: &Tensor,
        k: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.conj_k {
            bail!("causal_conv: no second derivative");
        }
        let g = g.contiguous()?;
        let gu = g.apply_op2_no_bwd(k, &Conv { conj_k: true })?;
        let gk = g.apply_op2_no_bwd(u, &KernelGrad { kl: k.dim(1)? })?;
        Ok((Some(gu), Some(gk)))
    }
}

/// `(g, u) → ∂k` (C, K).
struct KernelGrad {
    kl: usize,
}

impl CustomOp2 for KernelGrad {
    fn name(&self) -> &'static str {
        "causal-conv-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, l) = l1.shape().dims3()?;
        if l2.shape().dims() != [b, c, l] {
            bail!(
                "causal_conv backward: gradient {:?} vs input {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let d = (b, c, l, self.kl);
        let out = match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => {
                CpuStorage::F32(kernel_grad(slice(g, l1)?, slice(u, l2)?, d))
            }
            (CpuStorage::F64(g), CpuStorage::F64(u)) => {
                CpuStorage::F64(kernel_grad(slice(g, l1)?, slice(u, l2)?, d))
            }
            _ => bail!("causal_conv backward: mixed dtypes"),
        };
        Ok((out, Shape::from((c, self.kl))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, l) = l1.shape().dims3()?;
        if l2.shape().dims() != [b, c, l] {
            bail!(
                "causal_conv backward: gradient {:?} vs input {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let dk = crate::gpu::conv_kernel_grad(s1, l1, s2, l2, (b, c, l, self.kl))?;
        Ok((dk, Shape::from((c, self.kl))))
    }
}

/// How the CUDA path computes the convolution (`lrnnx_kernels::conv::ConvMethod`).
#[cfg(feature = "cuda")]
pub use lrnnx_kernels::conv::ConvMethod as CudaConvMethod;

/// Sets how [`causal_conv`] computes on CUDA devices from now on, for every device and thread:
/// [`CudaConvMethod::Auto`] (the default: cuFFT for long kernels where it loads and pays, the
/// direct sums otherwise), [`CudaConvMethod::Direct`] (always the direct sums: a fixed
/// summation order that does not depend on cuFFT's plans) or [`CudaConvMethod::Fft`] (always
/// cuFFT; an error where it does not load).
#[cfg(feature = "cuda")]
pub fn set_cuda_conv_method(method: CudaConvMethod) {
    crate::gpu::set_conv_method(method)
}

/// Whether cuFFT loads (`LRNNX_CUFFT`, else `libcufft.so.12`, `libcufft.so`, `libcufft.so.11`),
/// so that [`CudaConvMethod::Auto`] can take the FFT.
#[cfg(feature = "cuda")]
pub fn cuda_fft_available() -> bool {
    lrnnx_kernels::fft::cufft_available()
}

/// The causal convolution `y[b,c,t] = Σ_{j ≤ t, j < K} k[c,j]·u[b,c,t−j]` of `u` (B, C, L) with
/// per-channel kernels `k` (C, K) (module doc), differentiable in both; f32 or f64 on the CPU,
/// f32 on a CUDA device (feature `cuda`).
pub fn causal_conv(u: &Tensor, k: &Tensor) -> Result<Tensor> {
    u.contiguous()?
        .apply_op2(&k.contiguous()?, Conv { conj_k: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn rand(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// The O(L²) direct sum of the module doc.
    fn direct(u: &[f64], k: &[f64], (b, c, l, kl): (usize, usize, usize, usize)) -> Vec<f64> {
        let mut y = vec![0.0; b * c * l];
        for bi in 0..b {
            for ci in 0..c {
                for t in 0..l {
                    let mut acc = 0.0;
                    for j in 0..kl.min(t + 1) {
                        acc += k[ci * kl + j] * u[(bi * c + ci) * l + t - j];
                    }
                    y[(bi * c + ci) * l + t] = acc;
                }
            }
        }
        y
    }

    fn tensor(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn vec64(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    const SHAPES: [(usize, usize, usize, usize); 6] = [
        (1, 1, 1, 1),
        (2, 3, 7, 7),
        (1, 5, 64, 64),
        (3, 2, 50, 9),
        (2, 4, 13, 30),
        (1, 2, 300, 300),
    ];

    #[test]
    fn forward_equals_the_direct_sum() {
        for (i, &d) in SHAPES.iter().enumerate() {
            let (b, c, l, kl) = d;
            let u = rand(b * c * l, 1 + i as u64);
            let k = rand(c * kl, 100 + i as u64);
            let want = direct(&u, &k, d);
            for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-6)] {
                let y = causal_conv(&tensor(&u, &[b, c, l], dtype), &tensor(&k, &[c, kl], dtype))
                    .unwrap();
                assert_eq!(y.dims(), [b, c, l]);
                let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (a, w) in vec64(&y).iter().zip(&want) {
                    assert!((a - w).abs() <= tol * scale, "{d:?} {dtype:?}: {a} vs {w}");
                }
            }
        }
    }

    /// Gradients of `Σ y ⊙ w` against central finite differences of the direct sum (f64), and
    /// against the direct correlations.
    #[test]
    fn gradients_match_finite_differences_and_direct_correlations() {
        for (i, &d) in SHAPES.iter().enumerate() {
            let (b, c, l, kl) = d;
            let u = rand(b * c * l, 11 + i as u64);
            let k = rand(c * kl, 200 + i as u64);
            let w = rand(b * c * l, 300 + i as u64);
            let ut = candle_core::Var::from_tensor(&tensor(&u, &[b, c, l], DType::F64)).unwrap();
            let kt = candle_core::Var::from_tensor(&tensor(&k, &[c, kl], DType::F64)).unwrap();
            let wt = tensor(&w, &[b, c, l], DType::F64);
            let loss = (causal_conv(ut.as_tensor(), kt.as_tensor()).unwrap() * &wt)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let gu = vec64(grads.get(ut.as_tensor()).unwrap());
            let gk = vec64(grads.get(kt.as_tensor()).unwrap());
            let f = |u: &[f64], k: &[f64]| -> f64 {
                direct(u, k, d).iter().zip(&w).map(|(a, b)| a * b).sum()
            };
            let h = 1e-6;
            // Finite differences on a few entries (all for the small shapes).
            let pick = |n: usize| -> Vec<usize> {
                if n <= 40 {
                    (0..n).collect()
                } else {
                    (0..n).step_by(n / 17).collect()
                }
            };
            for j in pick(u.len()) {
                let (mut a, mut bb) = (u.clone(), u.clone());
                a[j] += h;
                bb[j] -= h;
                let fd = (f(&a, &k) - f(&bb, &k)) / (2.0 * h);
                assert!(
                    (gu[j] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{d:?} u[{j}]"
                );
            }
            for j in pick(k.len()) {
                let (mut a, mut bb) = (k.clone(), k.clone());
                a[j] += h;
                bb[j] -= h;
                let fd = (f(&u, &a) - f(&u, &bb)) / (2.0 * h);
                assert!(
                    (gk[j] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{d:?} k[{j}]"
                );
            }
            // Direct correlations on every entry.
            for bi in 0..b {
                for ci in 0..c {
                    for s in 0..l {
                        let want: f64 = (s..l.min(s + kl))
                            .map(|t| w[(bi * c + ci) * l + t] * k[ci * kl + t - s])
                            .sum();
                        let got = gu[(bi * c + ci) * l + s];
                        assert!((got - want).abs() < 1e-10 * (1.0 + want.abs()), "{d:?}");
                    }
                }
            }
            for ci in 0..c {
                for j in 0..kl {
                    let want: f64 = (0..b)
                        .flat_map(|bi| (j..l).map(move |t| (bi, t)))
                        .map(|(bi, t)| w[(bi * c + ci) * l + t] * u[(bi * c + ci) * l + t - j])
                        .sum();
                    let got = gk[ci * kl + j];
                    assert!(
                        (got - want).abs() < 1e-10 * (1.0 + want.abs()),
                        "{d:?} k[{ci},{j}]"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_dtypes_are_errors() {
        let u = Tensor::zeros((2, 3, 5), DType::F32, &Device::Cpu).unwrap();
        for k in [
            Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        ] {
            let e = causal_conv(&u, &k).err().unwrap();
            assert!(e.to_string().contains("causal_conv"), "{e}");
        }
        let k = Tensor::zeros((3, 5), DType::F64, &Device::Cpu).unwrap();
        let e = causal_conv(&u, &k).err().unwrap();
        assert!(e.to_string().contains("f32"), "{e}");
    }
}
