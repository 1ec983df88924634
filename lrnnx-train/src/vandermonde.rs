//! S4D's convolution kernel as one op with a hand-written backward:
//!
//! ```text
//! K[(h,c), t] = 2·Re Σ_n w[c,h,n]·z[h,n]^t          z (H, N, 2), w (ch, H, N, 2): (re, im)
//! ∂w[c,h,n]   = 2·conj(Σ_t G[(h,c),t]·z^t)          K, G = ∂L/∂K: (H·ch, L), rows (h, c)
//! ∂z[h,n]     = 2·Σ_c conj(w[c,h,n]·Σ_t G[(h,c),t]·t·z^{t−1})
//! ```
//!
//! (`∂` of a complex value is `∂L/∂re + i·∂L/∂im`.) S4D builds `K` this way on CUDA devices
//! (`lrnnx_kernels::vandermonde`: one launch each way, powers and sums in f64), where its
//! block-matmul construction from candle ops costs hundreds of small launches; on the CPU the
//! layer keeps the block matmuls, and this op's CPU path (f64, powers by repeated
//! multiplication) is the reference both are tested against.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::host_f64::{same_dtype, storage, values};

/// The op's name in errors.
const OP: &str = "vandermonde_kernel";

/// `(H, N, ch)` from the layouts of `z` `(H, N, 2)` and `w` `(ch, H, N, 2)`, checked.
fn dims(z: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    match (z.shape().dims(), w.shape().dims()) {
        (&[h, n, 2], &[ch, h2, n2, 2]) if h == h2 && n == n2 => Ok((h, n, ch)),
        (a, b) => bail!(
            "vandermonde_kernel: expected z (H, N, 2) and w (ch, H, N, 2), got {a:?} and {b:?}"
        ),
    }
}

/// `(re, im)` product.
fn cmul(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

/// `K` `(H·ch, L)` (module doc), in f64.
fn kernel_cpu(z: &[f64], w: &[f64], (h, n, ch): (usize, usize, usize), l: usize) -> Vec<f64> {
    let mut k = vec![0.0; h * ch * l];
    for hi in 0..h {
        for c in 0..ch {
            let row = &mut k[(hi * ch + c) * l..(hi * ch + c + 1) * l];
            for ni in 0..n {
                let zn = (z[2 * (hi * n + ni)], z[2 * (hi * n + ni) + 1]);
                let at = 2 * ((c * h + hi) * n + ni);
                let mut p = (w[at], w[at + 1]); // w·z^t
                for kt in row.iter_mut() {
                    *kt += 2.0 * p.0;
                    p = cmul(p, zn);
                }
            }
        }
    }
    k
}

/// `[∂z; ∂w]` flattened (module doc), in f64.
fn grad_cpu(
    z: &[f64],
    w: &[f64],
    g: &[f64],
    (h, n, ch): (usize, usize, usize),
    l: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; 2 * h * n * (1 + ch)];
    let (dz, dw) = out.split_at_mut(2 * h * n);
    for hi in 0..h {
        for ni in 0..n {
            let zn = (z[2 * (hi * n + ni)], z[2 * (hi * n + ni) + 1]);
            let mut dz_sum = (0.0, 0.0);
            for c in 0..ch {
                let row = &g[(hi * ch + c) * l..(hi * ch + c + 1) * l];
                // a = Σ_t g_t z^t, b = Σ_{t ≥ 1} g_t·t·z^{t−1}
                let (mut a, mut b) = ((0.0, 0.0), (0.0, 0.0));
                let mut cur = (1.0, 0.0);
                for t in 0..l {
                    a = (a.0 + row[t] * cur.0, a.1 + row[t] * cur.1);
                    if t + 1 < l {
                        let s = row[t + 1] * (t + 1) as f64;
                        b = (b.0 + s * cur.0, b.1 + s * cur.1);
                    }
                    cur = cmul(cur, zn);
                }
                let at = 2 * ((c * h + hi) * n + ni);
                dw[at] = 2.0 * a.0;
                dw[at + 1] = -2.0 * a.1;
                let wb = cmul((w[at], w[at + 1]), b);
                dz_sum = (dz_sum.0 + 2.0 * wb.0, dz_sum.1 - 2.0 * wb.1);
            }
            dz[2 * (hi * n + ni)] = dz_sum.0;
            dz[2 * (hi * n + ni) + 1] = dz_sum.1;
        }
    }
    out
}

/// `(z, w) → K` with `len` taps.
struct Kernel {
    len: usize,
}

impl CustomOp2 for Kernel {
    fn name(&self) -> &'static str {
        "s4d-vandermonde-kernel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_dtype(OP, &[s1, s2])?;
        let d = dims(l1, l2)?;
        let (z, w) = (values(OP, s1, l1, "z")?, values(OP, s2, l2, "w")?);
        Ok((
            storage(kernel_cpu(&z, &w, d, self.len), s1),
            Shape::from((d.0 * d.2, self.len)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = dims(l1, l2)?;
        let k = crate::gpu::vandermonde(s1, l1, s2, l2, None, d, self.len)?;
        Ok((k, Shape::from((d.0 * d.2, self.len))))
    }

    fn bwd(
        &self,
        z: &Tensor,
        w: &Tensor,
        _k: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let both = z.apply_op3_no_bwd(w, &g, &KernelGrad { len: self.len })?;
        let zl = z.elem_count();
        let dz = both.narrow(0, 0, zl)?.reshape(z.shape())?;
        let dw = both.narrow(0, zl, w.elem_count())?.reshape(w.shape())?;
        Ok((Some(dz), Some(dw)))
    }
}

/// `(z, w, G) → [∂z; ∂w]` flattened.
struct KernelGrad {
    len: usize,
}

impl KernelGrad {
    fn check(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<(usize, usize, usize)> {
        let d = dims(l1, l2)?;
        if l3.shape().dims() != [d.0 * d.2, self.len] {
            bail!(
                "vandermonde_kernel backward: gradient {:?} for a kernel ({}, {})",
                l3.shape(),
                d.0 * d.2,
                self.len
            );
        }
        Ok(d)
    }
}

impl CustomOp3 for KernelGrad {
    fn name(&self) -> &'static str {
        "s4d-vandermonde-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_dtype(OP, &[s1, s2, s3])?;
        let d = self.check(l1, l2, l3)?;
        let (z, w, g) = (
            values(OP, s1, l1, "z")?,
            values(OP, s2, l2, "w")?,
            values(OP, s3, l3, "∂K")?,
        );
        let out = grad_cpu(&z, &w, &g, d, self.len);
        let len = out.len();
        Ok((storage(out, s1), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = self.check(l1, l2, l3)?;
        let out = crate::gpu::vandermonde(s1, l1, s2, l2, Some((s3, l3)), d, self.len)?;
        Ok((out, Shape::from(2 * d.0 * d.1 * (1 + d.2))))
    }
}

/// `K[(h,c), t] = 2·Re Σ_n w[c,h,n]·z[h,n]^t` for `t < len`, `(H·ch, len)` (module doc), from
/// `z` `(H, N, 2)` and `w` `(ch, H, N, 2)` (last axis `(re, im)`), differentiable in both; f32
/// or f64 on the CPU, f32 on a CUDA device (feature `cuda`). `len` and the kernel's size
/// `H·ch·len` must fit an axis (2^31 elements); wrong shapes are errors.
pub fn vandermonde_kernel(z: &Tensor, w: &Tensor, len: usize) -> Result<Tensor> {
    let (h, _, ch) = dims(z.layout(), w.layout())?;
    let max = crate::layer::MAX_AXIS;
    if h.checked_mul(ch)
        .and_then(|r| r.checked_mul(len))
        .is_none_or(|n| n > max)
    {
        bail!("vandermonde_kernel: a kernel of ({h}·{ch}, {len}) is past the largest size {max}");
    }
    z.contiguous()?.apply_op2(&w.contiguous()?, Kernel { len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn rand(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
            })
            .collect()
    }

    /// `z` inside the unit disk (|z| in [0.5, 0.999]), `w` anywhere.
    fn operands(h: usize, n: usize, ch: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let r = rand(h * n, seed, 0.5, 0.999);
        let th = rand(h * n, seed + 1, -3.0, 3.0);
        let z = r
            .iter()
            .zip(&th)
            .flat_map(|(r, t)| [r * t.cos(), r * t.sin()])
            .collect();
        (z, rand(2 * ch * h * n, seed + 2, -1.0, 1.0))
    }

    /// The kernel against the direct sum with powers by `powi`-style polar form, and both
    /// gradients against central finite differences of a weighted sum.
    #[test]
    fn kernel_and_gradients_match_direct_sums_and_finite_differences() {
        let dev = Device::Cpu;
        for (h, n, ch, l) in [
            (2usize, 3usize, 1usize, 17usize),
            (3, 2, 2, 40),
            (1, 1, 3, 1),
        ] {
            let (zv, wv) = operands(h, n, ch, (h * 100 + l) as u64);
            let z =
                Var::from_tensor(&Tensor::from_vec(zv.clone(), (h, n, 2), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::from_vec(wv.clone(), (ch, h, n, 2), &dev).unwrap())
                .unwrap();
            let k = vandermonde_kernel(z.as_tensor(), w.as_tensor(), l).unwrap();
            assert_eq!(k.dims(), [h * ch, l]);
            let kv = k.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            // direct: z^t = |z|^t·(cos tθ + i sin tθ)
            for hi in 0..h {
                for c in 0..ch {
                    for t in 0..l {
                        let mut want = 0.0;
                        for ni in 0..n {
                            let (zr, zi) = (zv[2 * (hi * n + ni)], zv[2 * (hi * n + ni) + 1]);
                            let (m, th) = ((zr * zr + zi * zi).sqrt(), zi.atan2(zr));
                            let p = m.powi(t as i32);
                            let at = 2 * ((c * h + hi) * n + ni);
                            want += 2.0
                                * (wv[at] * p * (t as f64 * th).cos()
                                    - wv[at + 1] * p * (t as f64 * th).sin());
                        }
                        let got = kv[(hi * ch + c) * l + t];
                        assert!(
                            (got - want).abs() < 1e-12,
                            "K[{hi},{c},{t}] {got} vs {want}"
                        );
                    }
                }
            }
            let gw = Tensor::from_vec(rand(h * ch * l, 9, -1.0, 1.0), (h * ch, l), &dev).unwrap();
            let loss = |z: &[f64], w: &[f64]| -> f64 {
                let zt = Tensor::from_vec(z.to_vec(), (h, n, 2), &dev).unwrap();
                let wt = Tensor::from_vec(w.to_vec(), (ch, h, n, 2), &dev).unwrap();
                (vandermonde_kernel(&zt, &wt, l).unwrap() * &gw)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let grads = (k * &gw).unwrap().sum_all().unwrap().backward().unwrap();
            let dz = grads.get(z.as_tensor()).unwrap().flatten_all().unwrap();
            let dw = grads.get(w.as_tensor()).unwrap().flatten_all().unwrap();
            let (dz, dw) = (dz.to_vec1::<f64>().unwrap(), dw.to_vec1::<f64>().unwrap());
            let eps = 1e-6;
            for i in 0..zv.len() {
                let (mut hi, mut lo) = (zv.clone(), zv.clone());
                hi[i] += eps;
                lo[i] -= eps;
                let fd = (loss(&hi, &wv) - loss(&lo, &wv)) / (2.0 * eps);
                assert!(
                    (fd - dz[i]).abs() < 1e-6 * fd.abs().max(1.0),
                    "∂z[{i}] {fd} {}",
                    dz[i]
                );
            }
            for i in 0..wv.len() {
                let (mut hi, mut lo) = (wv.clone(), wv.clone());
                hi[i] += eps;
                lo[i] -= eps;
                let fd = (loss(&zv, &hi) - loss(&zv, &lo)) / (2.0 * eps);
                assert!(
                    (fd - dw[i]).abs() < 1e-6 * fd.abs().max(1.0),
                    "∂w[{i}] {fd} {}",
                    dw[i]
                );
            }
        }
    }

    /// Mismatched shapes and dtypes are errors.
    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let z = Tensor::zeros((2, 3, 2), DType::F32, &dev).unwrap();
        for w in [
            Tensor::zeros((1, 2, 4, 2), DType::F32, &dev).unwrap(),
            Tensor::zeros((1, 3, 3, 2), DType::F32, &dev).unwrap(),
            Tensor::zeros((1, 2, 3, 2), DType::F64, &dev).unwrap(),
            Tensor::zeros((2, 3, 2), DType::F32, &dev).unwrap(),
        ] {
            assert!(vandermonde_kernel(&z, &w, 5).is_err());
        }
        let w = Tensor::zeros((1, 2, 3, 2), DType::F32, &dev).unwrap();
        assert_eq!(vandermonde_kernel(&z, &w, 0).unwrap().dims(), [2, 0]);
        // a length no kernel can hold: an error, not an allocation
        for len in [usize::MAX, 1 << 31] {
            let e = vandermonde_kernel(&z, &w, len).unwrap_err().to_string();
            assert!(e.contains("largest size"), "{e}");
        }
        // a complex tensor must end in (re, im)
        assert!(
            crate::complex::CTensor::unpack(&Tensor::zeros(3, DType::F32, &dev).unwrap()).is_err()
        );
        assert!(crate::complex::CTensor::unpack(&Tensor::new(1f32, &dev).unwrap()).is_err());
        assert!(
            crate::complex::CTensor::unpack(&Tensor::zeros((2, 2), DType::F32, &dev).unwrap())
                .is_ok()
        );
    }
}
