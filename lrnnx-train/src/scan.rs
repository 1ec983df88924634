//! Diagonal linear recurrences over a whole sequence, as candle custom ops with a hand-written
//! backward: the parallel-training core of every layer (their discretizations, projections and
//! gates are ordinary candle ops around it).
//!
//! ```text
//! h_t = a_t ⊙ h_{t−1} + u_t        (h_{−1} = 0, over the length axis of (B, L, N) tensors)
//! ```
//!
//! Backward, for a real loss with upstream gradient `g_t = ∂L/∂h_t` (complex values as
//! `∂L/∂re + i·∂L/∂im`):
//!
//! ```text
//! λ_t = g_t + conj(a_{t+1}) ⊙ λ_{t+1}          (λ_L = 0; a reverse scan)
//! ∂L/∂u_t = λ_t
//! ∂L/∂a_t = λ_t ⊙ conj(h_{t−1})                (h_{−1} = 0)
//! ```
//!
//! The work is O(B·L·N) each way, sequential over L and vectorized over N. The forward and
//! backward run on the CPU in the tensor's dtype (f32 or f64), and on a CUDA device (feature
//! `cuda`, f32) through `lrnnx_kernels::linear` on candle's stream (one thread per (batch row,
//! state), sequential in time).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

use crate::complex::CTensor;

/// The arithmetic the scans need, for `f32` and `f64`.
trait Real:
    Copy
    + Default
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
{
}
impl Real for f32 {}
impl Real for f64 {}

/// Contiguous data of a CPU storage, from its layout's start offset.
fn data<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("scan: input must be contiguous"),
    }
}

/// `(B, L, N)` (real) or `(B, L, N, 2)` (complex) dims of a scan operand.
fn dims(shape: &Shape, complex: bool) -> Result<(usize, usize, usize)> {
    match (shape.dims(), complex) {
        ([b, l, n], false) => Ok((*b, *l, *n)),
        ([b, l, n, 2], true) => Ok((*b, *l, *n)),
        (d, _) => bail!(
            "scan: operand of shape {d:?} is not (B, L, N{})",
            if complex { ", 2" } else { "" }
        ),
    }
}

/// Forward recurrence over contiguous `(B, L, N[, 2])` slices; a `shared` decay `a` is one
/// `(N[, 2])` row used at every `(b, t)`.
fn scan_forward<T: Real>(
    a: &[T],
    u: &[T],
    (b, l, n): (usize, usize, usize),
    complex: bool,
    shared: bool,
) -> Vec<T> {
    let w = if complex { 2 } else { 1 };
    let row = n * w;
    let mut h = vec![T::default(); b * l * row];
    for bi in 0..b {
        let base = bi * l * row;
        for t in 0..l {
            let cur = base + t * row;
            let (done, rest) = h.split_at_mut(cur);
            let out = &mut rest[..row];
            let at = if shared {
                &a[..row]
            } else {
                &a[cur..cur + row]
            };
            let ut = &u[cur..cur + row];
            if t == 0 {
                out.copy_from_slice(ut);
                continue;
            }
            let prev = &done[cur - row..cur];
            if complex {
                for k in 0..n {
                    let (ar, ai, pr, pi) = (at[2 * k], at[2 * k + 1], prev[2 * k], prev[2 * k + 1]);
                    out[2 * k] = ar * pr - ai * pi + ut[2 * k];
                    out[2 * k + 1] = ar * pi + ai * pr + ut[2 * k + 1];
                }
            } else {
                for k in 0..n {
                    out[k] = at[k] * prev[k] + ut[k];
                }
            }
        }
    }
    h
}

/// Backward of [`scan_forward`]: returns `(∂L/∂a, ∂L/∂u)` from `a`, the forward result `h` and
/// the upstream gradient `g` (module doc). With a `shared` decay, `∂L/∂a` is the one `(N[, 2])`
/// row summed over every `(b, t)` (no full-size buffer).
///
/// `λ_t` is kept in the `∂L/∂u` buffer itself (`gu[t] = g_t + conj(a_{t+1})·gu[t+1]`), so the
/// only buffers are the two results.
fn scan_backward<T: Real>(
    a: &[T],
    h: &[T],
    g: &[T],
    (b, l, n): (usize, usize, usize),
    complex: bool,
    shared: bool,
) -> (Vec<T>, Vec<T>) {
    let w = if complex { 2 } else { 1 };
    let row = n * w;
    let mut ga = vec![T::default(); if shared { row } else { b * l * row }];
    let mut gu = vec![T::default(); b * l * row];
    for bi in 0..b {
        let base = bi * l * row;
        for t in (0..l).rev() {
            let cur = base + t * row;
            let (lam, later) = gu[cur..].split_at_mut(row);
            // λ_t = g_t + conj(a_{t+1}) λ_{t+1}
            if t + 1 < l {
                let next = &later[..row];
                let an = if shared {
                    &a[..row]
                } else {
                    &a[cur + row..cur + 2 * row]
                };
                let gt = &g[cur..cur + row];
                if complex {
                    for k in 0..n {
                        let (ar, ai, lr, li) =
                            (an[2 * k], an[2 * k + 1], next[2 * k], next[2 * k + 1]);
                        lam[2 * k] = ar * lr + ai * li + gt[2 * k];
                        lam[2 * k + 1] = ar * li - ai * lr + gt[2 * k + 1];
                    }
                } else {
                    for k in 0..n {
                        lam[k] = an[k] * next[k] + gt[k];
                    }
                }
            } else {
                lam.copy_from_slice(&g[cur..cur + row]);
            }
            // ∂L/∂a_t = λ_t conj(h_{t−1}) (summed over (b, t) for a shared decay)
            if t > 0 {
                let hp = &h[cur - row..cur];
                let lam = &*lam;
                match (complex, shared) {
                    (true, true) => {
                        for k in 0..n {
                            let (lr, li, hr, hi) =
                                (lam[2 * k], lam[2 * k + 1], hp[2 * k], hp[2 * k + 1]);
                            ga[2 * k] = ga[2 * k] + (lr * hr + li * hi);
                            ga[2 * k + 1] = ga[2 * k + 1] + (li * hr - lr * hi);
                        }
                    }
                    (true, false) => {
                        let out = &mut ga[cur..cur + row];
                        for k in 0..n {
                            let (lr, li, hr, hi) =
                                (lam[2 * k], lam[2 * k + 1], hp[2 * k], hp[2 * k + 1]);
                            out[2 * k] = lr * hr + li * hi;
                            out[2 * k + 1] = li * hr - lr * hi;
                        }
                    }
                    (false, true) => {
                        for k in 0..n {
                            ga[k] = ga[k] + lam[k] * hp[k];
                        }
                    }
                    (false, false) => {
                        let out = &mut ga[cur..cur + row];
                        for k in 0..n {
                            out[k] = lam[k] * hp[k];
                        }
                    }
                }
            }
        }
    }
    (ga, gu)
}

/// The recurrence as a candle op on `(a, u)`; `complex` selects packed `(B, L, N, 2)` operands;
/// `shared` takes a time-invariant decay `a` of shape `(N[, 2])` (used at every `(b, t)`
/// without being broadcast to the full shape, and with its gradient summed in the scan).
struct LinearScan {
    complex: bool,
    shared: bool,
}

impl LinearScan {
    /// Checks `a` against `u` and returns the `(B, L, N)` dims.
    fn check(&self, a: &Shape, u: &Shape) -> Result<(usize, usize, usize)> {
        let d = dims(u, self.complex)?;
        let ok = if self.shared {
            let row: &[usize] = if self.complex { &[d.2, 2] } else { &[d.2] };
            a.dims() == row
        } else {
            a == u
        };
        if !ok {
            bail!("scan: a {a:?} does not fit u {u:?}");
        }
        Ok(d)
    }
}

impl CustomOp2 for LinearScan {
    fn name(&self) -> &'static str {
        if self.complex {
            "complex-linear-scan"
        } else {
            "linear-scan"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.check(l1.shape(), l2.shape())?;
        let (c, sh) = (self.complex, self.shared);
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(u)) => {
                CpuStorage::F32(scan_forward(data(a, l1)?, data(u, l2)?, d, c, sh))
            }
            (CpuStorage::F64(a), CpuStorage::F64(u)) => {
                CpuStorage::F64(scan_forward(data(a, l1)?, data(u, l2)?, d, c, sh))
            }
            _ => bail!("scan: a and u must both be f32 or both f64"),
        };
        Ok((out, l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = self.check(l1.shape(), l2.shape())?;
        let h = crate::gpu::linear_forward((self.complex, self.shared), s1, l1, s2, l2, d)?;
        Ok((h, l2.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        _u: &Tensor,
        h: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.check(a.shape(), h.shape())?;
        #[cfg(feature = "cuda")]
        if a.device().is_cuda() {
            let (ga, gu) = crate::gpu::linear_backward((self.complex, self.shared), [a, h, g], d)?;
            return Ok((Some(ga), Some(gu)));
        }
        let (ga, gu) = match a.dtype() {
            candle_core::DType::F32 => {
                let (ga, gu) = self.backward::<f32>(a, h, g, d)?;
                (
                    Tensor::from_vec(ga, a.shape(), a.device())?,
                    Tensor::from_vec(gu, h.shape(), a.device())?,
                )
            }
            candle_core::DType::F64 => {
                let (ga, gu) = self.backward::<f64>(a, h, g, d)?;
                (
                    Tensor::from_vec(ga, a.shape(), a.device())?,
                    Tensor::from_vec(gu, h.shape(), a.device())?,
                )
            }
            dt => bail!("scan: unsupported dtype {dt:?}"),
        };
        Ok((Some(ga), Some(gu)))
    }
}

impl LinearScan {
    /// [`scan_backward`] straight on the tensors' CPU storage (no copies of `a`, `h`, or of a
    /// contiguous `g`).
    fn backward<T: Real + candle_core::WithDType>(
        &self,
        a: &Tensor,
        h: &Tensor,
        g: &Tensor,
        d: (usize, usize, usize),
    ) -> Result<(Vec<T>, Vec<T>)> {
        let (a, h, g) = (a.contiguous()?, h.contiguous()?, g.contiguous()?);
        let (sa, la) = a.storage_and_layout();
        let (sh, lh) = h.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        match (&*sa, &*sh, &*sg) {
            (Storage::Cpu(sa), Storage::Cpu(sh), Storage::Cpu(sg)) => Ok(scan_backward(
                data(sa.as_slice::<T>()?, la)?,
                data(sh.as_slice::<T>()?, lh)?,
                data(sg.as_slice::<T>()?, lg)?,
                d,
                self.complex,
                self.shared,
            )),
            _ => bail!("scan: the backward runs on CPU tensors only"),
        }
    }
}

/// Whether a decay of shape `a` is one row of `n` values (time-invariant: `(N,)`, `(1, 1, N)`,
/// ...), for the shared-decay path.
fn is_row(a: &Shape, n: usize) -> bool {
    a.elem_count() == n && a.dims().last() == Some(&n)
}

/// `h_t = a_t·h_{t−1} + u_t` over axis 1 of real `(B, L, N)` tensors; `a` is broadcast to the
/// shape of `u` (so a time-invariant `(N,)` decay works too; it is then used in place, and its
/// gradient summed inside the scan).
pub fn real_scan(a: &Tensor, u: &Tensor) -> Result<Tensor> {
    let n = u.dims().last().copied().unwrap_or(0);
    if u.rank() == 3 && is_row(a.shape(), n) {
        let a = a.reshape(n)?.contiguous()?;
        return a.apply_op2(
            &u.contiguous()?,
            LinearScan {
                complex: false,
                shared: true,
            },
        );
    }
    let a = a.broadcast_as(u.shape())?.contiguous()?;
    a.apply_op2(
        &u.contiguous()?,
        LinearScan {
            complex: false,
            shared: false,
        },
    )
}

/// `h_t = a_t ⊙ h_{t−1} + u_t` over axis 1 of complex `(B, L, N)` tensors; `a` is broadcast to
/// the shape of `u` (a time-invariant `(N,)` decay is used in place, as in [`real_scan`]).
pub fn complex_scan(a: &CTensor, u: &CTensor) -> Result<CTensor> {
    let shape = u.re.shape();
    let n = shape.dims().last().copied().unwrap_or(0);
    let (a, shared) = if u.re.rank() == 3 && is_row(a.re.shape(), n) && is_row(a.im.shape(), n) {
        (
            CTensor::new(a.re.reshape(n)?, a.im.reshape(n)?).pack()?,
            true,
        )
    } else {
        (
            CTensor::new(a.re.broadcast_as(shape)?, a.im.broadcast_as(shape)?)
                .pack()?
                .contiguous()?,
            false,
        )
    };
    let h = a.apply_op2(
        &u.pack()?.contiguous()?,
        LinearScan {
            complex: true,
            shared,
        },
    )?;
    CTensor::unpack(&h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn rand(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Reference: the recurrence with num-free plain f64 complex arithmetic.
    fn naive(
        ar: &[f64],
        ai: &[f64],
        ur: &[f64],
        ui: &[f64],
        b: usize,
        l: usize,
        n: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut hr, mut hi) = (vec![0.0; b * l * n], vec![0.0; b * l * n]);
        for bi in 0..b {
            for k in 0..n {
                let (mut pr, mut pi) = (0.0, 0.0);
                for t in 0..l {
                    let i = (bi * l + t) * n + k;
                    let nr = ar[i] * pr - ai[i] * pi + ur[i];
                    let ni = ar[i] * pi + ai[i] * pr + ui[i];
                    (pr, pi) = (nr, ni);
                    hr[i] = nr;
                    hi[i] = ni;
                }
            }
        }
        (hr, hi)
    }

    #[test]
    fn complex_forward_matches_naive() {
        let (b, l, n) = (2, 9, 3);
        let a = CTensor::new(
            rand(&[b, l, n], 1, -0.9, 0.9),
            rand(&[b, l, n], 2, -0.4, 0.4),
        );
        let u = CTensor::new(
            rand(&[b, l, n], 3, -1.0, 1.0),
            rand(&[b, l, n], 4, -1.0, 1.0),
        );
        let h = complex_scan(&a, &u).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let (hr, hi) = naive(&v(&a.re), &v(&a.im), &v(&u.re), &v(&u.im), b, l, n);
        for (x, y) in v(&h.re).iter().zip(&hr).chain(v(&h.im).iter().zip(&hi)) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    /// Gradients of L = Σ (h_re·w_re + h_im·w_im) against central finite differences in f64.
    #[test]
    fn complex_gradients_match_finite_differences() {
        let (b, l, n) = (2, 6, 2);
        let vars: Vec<Var> = (0..4)
            .map(|i| Var::from_tensor(&rand(&[b, l, n], 10 + i, -0.8, 0.8)).unwrap())
            .collect();
        let (wr, wi) = (
            rand(&[b, l, n], 20, -1.0, 1.0),
            rand(&[b, l, n], 21, -1.0, 1.0),
        );
        let loss = |v: &[Tensor]| -> Tensor {
            let a = CTensor::new(v[0].clone(), v[1].clone());
            let u = CTensor::new(v[2].clone(), v[3].clone());
            let h = complex_scan(&a, &u).unwrap();
            ((h.re * &wr).unwrap().sum_all().unwrap() + (h.im * &wi).unwrap().sum_all().unwrap())
                .unwrap()
        };
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = loss(&ts).backward().unwrap();
        let eps = 1e-6;
        for (vi, var) in vars.iter().enumerate() {
            let g = grads
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
                    let mut p = base.clone();
                    p[k] += d;
                    let mut vs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().detach()).collect();
                    vs[vi] = Tensor::from_vec(p, &[b, l, n], &Device::Cpu).unwrap();
                    loss(&vs).to_scalar::<f64>().unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                assert!(
                    (g[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                    "operand {vi} elem {k}: {} vs {fd}",
                    g[k]
                );
            }
        }
    }

    /// The time-invariant (shared, `(N,)`) real decay: the forward against the naive
    /// recurrence, the gradients of `a` and of every element of `u` against central finite
    /// differences in f64.
    #[test]
    fn real_scan_gradients_match_finite_differences_with_broadcast_decay() {
        let (b, l, n) = (2, 7, 3);
        let a = Var::from_tensor(&rand(&[n], 30, -0.9, 0.9)).unwrap();
        let u = Var::from_tensor(&rand(&[b, l, n], 31, -1.0, 1.0)).unwrap();
        let w = rand(&[b, l, n], 32, -1.0, 1.0);
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let a_full = v(&a
            .as_tensor()
            .broadcast_as((b, l, n))
            .unwrap()
            .contiguous()
            .unwrap());
        let zeros = vec![0.0; b * l * n];
        let (want, want_im) = naive(&a_full, &zeros, &v(u.as_tensor()), &zeros, b, l, n);
        assert!(want_im.iter().all(|&x| x == 0.0));
        let got = v(&real_scan(a.as_tensor(), u.as_tensor()).unwrap());
        assert_eq!(got.len(), want.len());
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12, "forward {x} vs naive {y}");
        }
        let loss =
            |a: &Tensor, u: &Tensor| (real_scan(a, u).unwrap() * &w).unwrap().sum_all().unwrap();
        let grads = loss(a.as_tensor(), u.as_tensor()).backward().unwrap();
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        let av = a.as_tensor().to_vec1::<f64>().unwrap();
        for k in 0..n {
            let eval = |d: f64| {
                let mut p = av.clone();
                p[k] += d;
                let t = Tensor::from_vec(p, n, &Device::Cpu).unwrap();
                loss(&t, &u.as_tensor().detach())
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (eval(1e-6) - eval(-1e-6)) / 2e-6;
            assert!(
                (ga[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                "a[{k}]: {} vs {fd}",
                ga[k]
            );
        }
        let gu = v(grads.get(u.as_tensor()).unwrap());
        let uv = v(u.as_tensor());
        assert_eq!(gu.len(), uv.len());
        for k in 0..uv.len() {
            let eval = |d: f64| {
                let mut p = uv.clone();
                p[k] += d;
                let t = Tensor::from_vec(p, (b, l, n), &Device::Cpu).unwrap();
                loss(&a.as_tensor().detach(), &t)
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (eval(1e-6) - eval(-1e-6)) / 2e-6;
            assert!(
                (gu[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                "u[{k}]: {} vs {fd}",
                gu[k]
            );
        }
    }

    /// The time-invariant (shared, `(N,)`) complex decay: gradients of both parts against
    /// central finite differences in f64, and the forward against the naive recurrence.
    #[test]
    fn complex_shared_decay_gradients_match_finite_differences() {
        let (b, l, n) = (2, 7, 3);
        let (ar, ai) = (rand(&[n], 40, -0.9, 0.9), rand(&[n], 41, -0.4, 0.4));
        let vars = [
            Var::from_tensor(&ar).unwrap(),
            Var::from_tensor(&ai).unwrap(),
        ];
        let u = CTensor::new(
            rand(&[b, l, n], 42, -1.0, 1.0),
            rand(&[b, l, n], 43, -1.0, 1.0),
        );
        let (wr, wi) = (
            rand(&[b, l, n], 44, -1.0, 1.0),
            rand(&[b, l, n], 45, -1.0, 1.0),
        );
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let full = |t: &Tensor| v(&t.broadcast_as((b, l, n)).unwrap().contiguous().unwrap());
        let h = complex_scan(&CTensor::new(ar.clone(), ai.clone()), &u).unwrap();
        let (hr, hi) = naive(&full(&ar), &full(&ai), &v(&u.re), &v(&u.im), b, l, n);
        for (x, y) in v(&h.re).iter().zip(&hr).chain(v(&h.im).iter().zip(&hi)) {
            assert!((x - y).abs() < 1e-12);
        }
        let loss = |a_re: &Tensor, a_im: &Tensor| -> Tensor {
            let h = complex_scan(&CTensor::new(a_re.clone(), a_im.clone()), &u).unwrap();
            ((h.re * &wr).unwrap().sum_all().unwrap() + (h.im * &wi).unwrap().sum_all().unwrap())
                .unwrap()
        };
        let grads = loss(vars[0].as_tensor(), vars[1].as_tensor())
            .backward()
            .unwrap();
        for (vi, var) in vars.iter().enumerate() {
            let g = v(grads.get(var.as_tensor()).unwrap());
            let base = v(var.as_tensor());
            for k in 0..n {
                let eval = |d: f64| {
                    let mut p = base.clone();
                    p[k] += d;
                    let t = Tensor::from_vec(p, n, &Device::Cpu).unwrap();
                    let (a_re, a_im) = if vi == 0 {
                        (t, vars[1].as_tensor().detach())
                    } else {
                        (vars[0].as_tensor().detach(), t)
                    };
                    loss(&a_re, &a_im).to_scalar::<f64>().unwrap()
                };
                let fd = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                assert!(
                    (g[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                    "part {vi} elem {k}: {} vs {fd}",
                    g[k]
                );
            }
        }
    }

    #[test]
    fn f32_and_shape_errors() {
        let a = Tensor::ones((1, 4, 2), DType::F32, &Device::Cpu).unwrap();
        let u = Tensor::ones((1, 4, 2), DType::F32, &Device::Cpu).unwrap();
        let h = real_scan(&(a * 0.5).unwrap(), &u).unwrap();
        // 1, 1.5, 1.75, 1.875
        assert_eq!(h.flatten_all().unwrap().to_vec1::<f32>().unwrap()[6], 1.875);
        let bad = Tensor::ones((4, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(real_scan(&bad, &bad).is_err());
    }
}
