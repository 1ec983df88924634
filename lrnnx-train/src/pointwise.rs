//! Fused pointwise ops with hand-written backward: the exact (erf) GELU, once or twice in a row,
//! with an optional bias, and the swap of the axes 1 and 3 of a 4-D tensor with the same
//! activation on the way. Each is one pass over memory forward and one backward, where the same
//! functions written as candle ops take about five kernels forward and ten backward (an erf
//! GELU) or a strided gather (a permuted copy); S4 / S4D run their whole activation chain
//! through these.
//!
//! ```text
//! gelu(x)  = x·(1 + erf(x/√2))/2,      gelu′(x) = (1 + erf(x/√2))/2 + x·exp(−x²/2)/√(2π)
//! act₀ = id,  act₁ = gelu,  act₂ = gelu∘gelu,  act₂′(x) = gelu′(gelu(x))·gelu′(x)
//! bias_gelu:       y[…, j] = gelu(x[…, j] + bias[j])
//! swap_axes_gelu:  y[b, c, m, r] = act_n(x[b, r, m, c])        (B, R, M, C) → (B, C, M, R)
//! ```
//!
//! On the CPU f32 and f64 (each in its own precision); on a CUDA device (feature `cuda`) f32 through
//! `lrnnx_kernels::pointwise`.

use candle_core::backend::BackendStorage;
use candle_core::cpu::erf::{erf_f32, erf_f64};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape};
use candle_core::{DType, Tensor};

/// The most GELUs in a row ([`swap_axes_gelu`]'s `gelus`).
pub const MAX_GELUS: u32 = 2;

/// `act_n(x)` and `act_n′(x)` (module doc) for one float type, with that type's `erf`.
macro_rules! gelu_fns {
    ($t:ty, $erf:path, $gelu:ident, $gelu_d:ident, $act:ident, $act_d:ident) => {
        /// `gelu(x)`.
        fn $gelu(x: $t) -> $t {
            0.5 * x * (1.0 + $erf(x * (std::f64::consts::FRAC_1_SQRT_2 as $t)))
        }

        /// `gelu′(x)`.
        fn $gelu_d(x: $t) -> $t {
            const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
            0.5 * (1.0 + $erf(x * (std::f64::consts::FRAC_1_SQRT_2 as $t)))
                + x * (INV_SQRT_2PI as $t) * (-0.5 * x * x).exp()
        }

        /// `act_n(x)`: `n` GELUs in a row.
        fn $act(mut x: $t, gelus: u32) -> $t {
            for _ in 0..gelus {
                x = $gelu(x);
            }
            x
        }

        /// `act_n′(x)` for `n ≤ 2`.
        fn $act_d(x: $t, gelus: u32) -> $t {
            match gelus {
                0 => 1.0,
                1 => $gelu_d(x),
                _ => $gelu_d($gelu(x)) * $gelu_d(x),
            }
        }
    };
}

gelu_fns!(f32, erf_f32, gelu_f32, gelu_d_f32, act_f32, act_d_f32);
gelu_fns!(f64, erf_f64, gelu_f64, gelu_d_f64, act_f64, act_d_f64);

fn check_gelus(gelus: u32) -> Result<()> {
    if gelus > MAX_GELUS {
        bail!("pointwise: at most {MAX_GELUS} GELUs in a row, got {gelus}");
    }
    Ok(())
}

/// The dtypes the CPU ops take, each computed in its own precision (f32 with `erff`, as
/// candle's own CPU ops and the CUDA kernels).
trait Real: Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    const DTYPE: DType;
    fn act(self, gelus: u32) -> Self;
    fn act_d(self, gelus: u32) -> Self;
    fn values(s: &CpuStorage) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
}

/// `Real` for `$t`, stored as `CpuStorage::$v` (dtype `DType::$v`), with its GELU functions.
macro_rules! real_impl {
    ($t:ty, $v:ident, $act:ident, $act_d:ident) => {
        impl Real for $t {
            const DTYPE: DType = DType::$v;
            fn act(self, gelus: u32) -> Self {
                $act(self, gelus)
            }
            fn act_d(self, gelus: u32) -> Self {
                $act_d(self, gelus)
            }
            fn values(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
        }
    };
}

real_impl!(f32, F32, act_f32, act_d_f32);
real_impl!(f64, F64, act_f64, act_d_f64);

/// The contiguous values of `s` under `l` as `T`: an error for another dtype or a strided
/// layout.
fn typed<'a, T: Real>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [T]> {
    let Some(v) = T::values(s) else {
        bail!(
            "pointwise: `{name}` is {:?} where {:?} is expected (f32 or f64, one dtype for all)",
            s.dtype(),
            T::DTYPE
        );
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("pointwise: `{name}` must be contiguous"),
    }
}

/// Calls `$f::<T>(args)` with `T` the element type of the storage `$s` (f32 or f64).
macro_rules! by_dtype {
    ($s:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $s.dtype() {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            d => bail!("pointwise: f32 or f64 only, got {d:?}"),
        }
    };
}

/// The bias length of `x`'s layout (its last axis), checked against the bias's.
fn bias_cols(x: &Layout, bias: &Layout) -> Result<usize> {
    let cols = x.shape().dims().last().copied().unwrap_or(1);
    if bias.shape().dims() != [cols] {
        bail!(
            "bias_gelu: bias {:?} does not match the last axis of {:?}",
            bias.shape(),
            x.shape()
        );
    }
    Ok(cols)
}

type Operand<'a> = (&'a CpuStorage, &'a Layout);

/// `act_n(x + bias)` (bias over the last axis, optional) or, with `g`, `g·act_n′(x + bias)`,
/// elementwise on CPU storages of one dtype.
fn elementwise_cpu<T: Real>(
    x: Operand,
    bias: Option<Operand>,
    g: Option<Operand>,
    gelus: u32,
) -> Result<CpuStorage> {
    let xv = typed::<T>(x.0, x.1, "x")?;
    let b = bias.map(|(s, l)| typed::<T>(s, l, "bias")).transpose()?;
    let gv = g.map(|(s, l)| typed::<T>(s, l, "∂y")).transpose()?;
    let cols = b.map_or(1, |b| b.len().max(1));
    let out = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = match b {
                Some(b) => v + b[i % cols],
                None => v,
            };
            match gv {
                None => v.act(gelus),
                Some(g) => g[i] * v.act_d(gelus),
            }
        })
        .collect();
    Ok(T::storage(out))
}

/// `act_n(x)` elementwise.
struct Act {
    gelus: u32,
}

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = by_dtype!(s, elementwise_cpu((s, l), None, None, self.gelus))?;
        Ok((y, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::gpu::gelu(s, l, None, None, self.gelus)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(
            x.apply_op2_no_bwd(&g, &ActGrad { gelus: self.gelus })?,
        ))
    }
}

/// `(x, g) → g·act_n′(x)`.
struct ActGrad {
    gelus: u32,
}

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("gelu backward: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let dx = by_dtype!(
            s1,
            elementwise_cpu((s1, l1), None, Some((s2, l2)), self.gelus)
        )?;
        Ok((dx, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("gelu backward: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let dx = crate::gpu::gelu(s1, l1, None, Some((s2, l2)), self.gelus)?;
        Ok((dx, l1.shape().clone()))
    }
}

/// `gelu(x + bias)`, bias over the last axis.
struct BiasAct;

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bias_cols(l1, l2)?;
        let y = by_dtype!(s1, elementwise_cpu((s1, l1), Some((s2, l2)), None, 1))?;
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let cols = bias_cols(l1, l2)?;
        let y = crate::gpu::gelu(s1, l1, Some((s2, l2, cols)), None, 1)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(bias, &g, &BiasActGrad)?;
        let cols = bias.elem_count();
        let db = dx.reshape((dx.elem_count() / cols.max(1), cols))?.sum(0)?;
        Ok((Some(dx), Some(db)))
    }
}

/// `(x, bias, g) → g·gelu′(x + bias)`.
struct BiasActGrad;

impl CustomOp3 for BiasActGrad {
    fn name(&self) -> &'static str {
        "bias-gelu-grad"
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
        bias_cols(l1, l2)?;
        if l1.shape() != l3.shape() {
            bail!("bias_gelu backward: {:?} vs {:?}", l1.shape(), l3.shape());
        }
        let dx = by_dtype!(
            s1,
            elementwise_cpu((s1, l1), Some((s2, l2)), Some((s3, l3)), 1)
        )?;
        Ok((dx, l1.shape().clone()))
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
        let cols = bias_cols(l1, l2)?;
        if l1.shape() != l3.shape() {
            bail!("bias_gelu backward: {:?} vs {:?}", l1.shape(), l3.shape());
        }
        let dx = crate::gpu::gelu(s1, l1, Some((s2, l2, cols)), Some((s3, l3)), 1)?;
        Ok((dx, l1.shape().clone()))
    }
}

/// `(B, R, M, C)` and the result's shape of a swap's input layout: a 4-D `(B, R, M, C)` (result
/// `(B, C, M, R)`) or a 3-D `(B, R·M, C)` with `M = mid` (result `(B, C, M·R)`), checked.
fn swap_dims(l: &Layout, mid: usize, what: &str) -> Result<([usize; 4], Shape)> {
    match *l.shape().dims() {
        [b, r, m, c] => Ok(([b, r, m, c], Shape::from((b, c, m, r)))),
        [b, rm, c] if mid > 0 && rm % mid == 0 => {
            Ok(([b, rm / mid, mid, c], Shape::from((b, c, rm))))
        }
        ref d => bail!(
            "swap_axes_gelu{what}: expected (B, R, M, C) or (B, R·M, C) with M = {mid}, got {d:?}"
        ),
    }
}

/// Side of the square tiles the CPU swap walks (both sides then stay in cache).
const CPU_TILE: usize = 32;

/// `y[b,c,m,r] = act_n(x[b,r,m,c])` (`g = None`) or, with `g (B, C, M, R)`,
/// `∂x[b,r,m,c] = g[b,c,m,r]·act_n′(x[b,r,m,c])`, for `x` `(B, R, M, C)`, tile by tile.
fn swap_cpu<T: Real>(
    x: Operand,
    g: Option<Operand>,
    [bs, rs, ms, cs]: [usize; 4],
    gelus: u32,
) -> Result<CpuStorage> {
    let xv = typed::<T>(x.0, x.1, "x")?;
    let gv = g.map(|(s, l)| typed::<T>(s, l, "∂y")).transpose()?;
    let mut out = vec![T::default(); xv.len()];
    for b in 0..bs {
        for m in 0..ms {
            for r0 in (0..rs).step_by(CPU_TILE) {
                for c0 in (0..cs).step_by(CPU_TILE) {
                    for r in r0..(r0 + CPU_TILE).min(rs) {
                        for c in c0..(c0 + CPU_TILE).min(cs) {
                            let i = ((b * rs + r) * ms + m) * cs + c;
                            let o = ((b * cs + c) * ms + m) * rs + r;
                            match gv {
                                None => out[o] = xv[i].act(gelus),
                                Some(g) => out[i] = g[o] * xv[i].act_d(gelus),
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(T::storage(out))
}

/// The swap of axes 1 and 3 with `gelus` GELUs after it; a 3-D input is `(B, R·M, C)` with
/// `M = mid` and gives `(B, C, M·R)` (no reshape nodes, whose gradients candle would add up in
/// one more pass each).
struct Swap {
    gelus: u32,
    mid: usize,
}

impl CustomOp1 for Swap {
    fn name(&self) -> &'static str {
        "swap-axes-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (d, out) = swap_dims(l, self.mid, "")?;
        let y = by_dtype!(s, swap_cpu((s, l), None, d, self.gelus))?;
        Ok((y, out))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (d, out) = swap_dims(l, self.mid, "")?;
        let y = crate::gpu::swap(s, l, None, d, self.gelus)?;
        Ok((y, out))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        if self.gelus == 0 {
            // the swap back: (B, C, M, R) → (B, R, M, C), in x's shape
            let (d, _) = swap_dims(x.layout(), self.mid, " backward")?;
            let back = g
                .reshape((d[0], d[3], d[2], d[1]))?
                .apply_op1_no_bwd(&Swap { gelus: 0, mid: 1 })?;
            return Ok(Some(back.reshape(x.shape())?));
        }
        Ok(Some(x.apply_op2_no_bwd(
            &g,
            &SwapGrad {
                gelus: self.gelus,
                mid: self.mid,
            },
        )?))
    }
}

/// `(x, g) → ∂x`: `x` as [`Swap`]'s input, `g` of its result's shape.
struct SwapGrad {
    gelus: u32,
    mid: usize,
}

impl SwapGrad {
    fn dims(&self, l1: &Layout, l2: &Layout) -> Result<[usize; 4]> {
        let (d, out) = swap_dims(l1, self.mid, " backward")?;
        if l2.shape() != &out {
            bail!(
                "swap_axes_gelu backward: gradient {:?} for an input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        Ok(d)
    }
}

impl CustomOp2 for SwapGrad {
    fn name(&self) -> &'static str {
        "swap-axes-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(l1, l2)?;
        let dx = by_dtype!(s1, swap_cpu((s1, l1), Some((s2, l2)), d, self.gelus))?;
        Ok((dx, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = self.dims(l1, l2)?;
        let dx = crate::gpu::swap(s1, l1, Some((s2, l2)), d, self.gelus)?;
        Ok((dx, l1.shape().clone()))
    }
}

/// Whether the fused ops take `x`: f32 or f64 on the CPU, f32 on CUDA. Anything else (another
/// dtype or device) runs the same functions as candle ops.
fn fused(x: &Tensor) -> bool {
    match x.device() {
        candle_core::Device::Cpu => matches!(x.dtype(), DType::F32 | DType::F64),
        candle_core::Device::Cuda(_) => x.dtype() == DType::F32,
        _ => false,
    }
}

/// The erf GELU as candle ops (for what [`fused`] refuses).
fn gelu_ops(x: &Tensor) -> Result<Tensor> {
    let e = (x * std::f64::consts::FRAC_1_SQRT_2)?.erf()?;
    (x * 0.5)? * (e + 1.0)?
}

/// `gelus` erf GELUs as candle ops.
fn act_ops(mut x: Tensor, gelus: u32) -> Result<Tensor> {
    for _ in 0..gelus {
        x = gelu_ops(&x)?;
    }
    Ok(x)
}

/// The exact (erf) GELU `x·(1 + erf(x/√2))/2` (module doc), one fused op each way.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return gelu_ops(x);
    }
    x.contiguous()?.apply_op1(Act { gelus: 1 })
}

/// `gelu(gelu(x))` (S4 / S4D's activation and gate in a row), one fused op each way.
pub fn gelu_gelu(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return act_ops(x.clone(), 2);
    }
    x.contiguous()?.apply_op1(Act { gelus: 2 })
}

/// `gelu(x + bias)` with `bias` over the last axis of `x` (a linear layer's bias and its GELU),
/// one fused op each way; the bias's gradient is summed over the other axes.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return gelu_ops(&x.broadcast_add(bias)?);
    }
    x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAct)
}

/// `y[b,c,m,r] = act_n(x[b,r,m,c])`: `x` `(B, R, M, C)` with its axes 1 and 3 swapped and `gelus`
/// (0, 1 or 2) GELUs applied, one fused op each way (module doc).
pub fn swap_axes_gelu(x: &Tensor, gelus: u32) -> Result<Tensor> {
    check_gelus(gelus)?;
    if x.rank() != 4 {
        bail!(
            "swap_axes_gelu: expected a 4-D tensor (B, R, M, C), got {:?}",
            x.dims()
        );
    }
    if !fused(x) {
        return act_ops(x.permute((0, 3, 2, 1))?.contiguous()?, gelus);
    }
    x.contiguous()?.apply_op1(Swap { gelus, mid: 1 })
}

/// [`swap_axes_gelu`] on `x` `(B, R·M, C)` seen as `(B, R, M, C)` with `M = mid`, giving
/// `(B, C, M·R)` directly: S4 / S4D's convolution output `(B, H·ch, L)` (rows `(h, c)`) to
/// `(B, L, ch·H)` with both GELUs.
pub fn swap_grouped_gelu(x: &Tensor, mid: usize, gelus: u32) -> Result<Tensor> {
    check_gelus(gelus)?;
    if x.rank() != 3 || mid == 0 || x.dim(1)? % mid != 0 {
        bail!(
            "swap_grouped_gelu: expected (B, R·M, C) with M = {mid}, got {:?}",
            x.dims()
        );
    }
    if !fused(x) {
        let (b, rm, c) = x.dims3()?;
        let y = x
            .reshape((b, rm / mid, mid, c))?
            .permute((0, 3, 2, 1))?
            .reshape((b, c, rm))?;
        return act_ops(y, gelus);
    }
    x.contiguous()?.apply_op1(Swap { gelus, mid })
}

/// `x` `(B, R, C)` transposed to `(B, C, R)` in one tiled pass (its backward the same).
pub fn transpose_last2(x: &Tensor) -> Result<Tensor> {
    swap_grouped_gelu(x, 1, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    // the reference: `super::gelu_ops`, the same functions as plain candle ops (autodiff
    // through erf)

    fn rand(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// `max|a − b|`, infinite when any difference is NaN.
    fn worst(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).fold(0.0, |m: f64, (x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                m.max(d)
            }
        })
    }

    /// `f(x)` and `∂(Σ f(x)·w)/∂x` of `f` at `x`.
    fn value_and_grad(
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Var,
        w: &Tensor,
    ) -> (Tensor, Tensor) {
        let y = f(x.as_tensor()).unwrap();
        let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, grads.get(x.as_tensor()).unwrap().clone())
    }

    /// The fused GELUs match the candle-op composition (f64) and finite differences, including
    /// the tails (|x| up to 8) where erf saturates.
    #[test]
    fn gelus_match_candle_ops_and_finite_differences() {
        let dev = Device::Cpu;
        let n = 3 * 7 * 5;
        let x =
            Var::from_tensor(&Tensor::from_vec(rand(n, 1, 8.0), (3, 7, 5), &dev).unwrap()).unwrap();
        let w = Tensor::from_vec(rand(n, 2, 1.0), (3, 7, 5), &dev).unwrap();
        let bias = Var::from_tensor(&Tensor::from_vec(rand(5, 3, 2.0), 5, &dev).unwrap()).unwrap();
        type F = Box<dyn Fn(&Tensor) -> Result<Tensor>>;
        let cases: Vec<(F, F)> = vec![
            (Box::new(gelu), Box::new(gelu_ops)),
            (Box::new(gelu_gelu), Box::new(|x| gelu_ops(&gelu_ops(x)?))),
        ];
        for (fused, ops) in &cases {
            let (y, g) = value_and_grad(fused.as_ref(), &x, &w);
            let (y_ref, g_ref) = value_and_grad(ops.as_ref(), &x, &w);
            assert!(worst(&y, &y_ref) < 1e-13, "{}", worst(&y, &y_ref));
            assert!(worst(&g, &g_ref) < 1e-12, "{}", worst(&g, &g_ref));
        }
        // bias: both gradients against finite differences of the composed ops
        let b = bias.as_tensor().clone();
        let y = bias_gelu(x.as_tensor(), &b).unwrap();
        let y_ref = gelu_ops(&x.as_tensor().broadcast_add(&b).unwrap()).unwrap();
        assert!(worst(&y, &y_ref) < 1e-13);
        let loss = |xv: &Tensor, bv: &Tensor| -> f64 {
            let y = gelu_ops(&xv.broadcast_add(bv).unwrap()).unwrap();
            (y * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (bias_gelu(x.as_tensor(), bias.as_tensor()).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let db = grads
            .get(bias.as_tensor())
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let dx = grads.get(x.as_tensor()).unwrap();
        let dx = dx.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let eps = 1e-6;
        let bv = b.to_vec1::<f64>().unwrap();
        for j in 0..5 {
            let mut hi = bv.clone();
            let mut lo = bv.clone();
            hi[j] += eps;
            lo[j] -= eps;
            let t = |v: Vec<f64>| Tensor::from_vec(v, 5, &dev).unwrap();
            let fd = (loss(x.as_tensor(), &t(hi)) - loss(x.as_tensor(), &t(lo))) / (2.0 * eps);
            assert!((fd - db[j]).abs() < 1e-6 * fd.abs().max(1.0), "∂bias[{j}]");
        }
        let xv = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for i in [0, 17, 50, n - 1] {
            let mut hi = xv.clone();
            let mut lo = xv.clone();
            hi[i] += eps;
            lo[i] -= eps;
            let t = |v: Vec<f64>| Tensor::from_vec(v, (3, 7, 5), &dev).unwrap();
            let fd = (loss(&t(hi), &b) - loss(&t(lo), &b)) / (2.0 * eps);
            assert!((fd - dx[i]).abs() < 1e-6 * fd.abs().max(1.0), "∂x[{i}]");
        }
    }

    /// The swap against candle's permute (+ the composed GELUs), forward and backward, f32 and
    /// f64, with tiles cut off on every side (sizes not multiples of 32).
    #[test]
    fn swaps_match_permute_and_gelu_ops() {
        let dev = Device::Cpu;
        for (dims, gelus) in [
            ((2, 37, 1, 45), 0),
            ((2, 37, 1, 45), 2),
            ((1, 33, 3, 7), 1),
            ((3, 5, 2, 70), 2),
        ] {
            let n = dims.0 * dims.1 * dims.2 * dims.3;
            let x =
                Var::from_tensor(&Tensor::from_vec(rand(n, 5, 4.0), dims, &dev).unwrap()).unwrap();
            let w =
                Tensor::from_vec(rand(n, 6, 1.0), (dims.0, dims.3, dims.2, dims.1), &dev).unwrap();
            let ops = |x: &Tensor| -> Result<Tensor> {
                let mut y = x.permute((0, 3, 2, 1))?;
                for _ in 0..gelus {
                    y = gelu_ops(&y)?;
                }
                Ok(y)
            };
            let fused = |x: &Tensor| swap_axes_gelu(x, gelus);
            let (y, g) = value_and_grad(&fused, &x, &w);
            let (y_ref, g_ref) = value_and_grad(&ops, &x, &w);
            assert_eq!(y.dims(), y_ref.dims());
            assert!(worst(&y, &y_ref) < 1e-13 && worst(&g, &g_ref) < 1e-12);
            // f32 (computed in f32) agrees with f64 to f32 precision, forward and backward
            let x32 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
            let w32 = w.to_dtype(DType::F32).unwrap();
            let (y32, g32) = value_and_grad(&fused, &x32, &w32);
            let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let (dy, dg) = (worst(&to64(&y32), &y_ref), worst(&to64(&g32), &g_ref));
            assert!(dy < 1e-6 && dg < 1e-6, "f32 {dy} {dg}");
        }
        // the grouped form: (B, R·M, C) → (B, C, M·R), forward and backward
        for gelus in 0..=2 {
            let x = Var::from_tensor(
                &Tensor::from_vec(rand(2 * 12 * 5, 8, 4.0), (2, 12, 5), &dev).unwrap(),
            )
            .unwrap();
            let w = Tensor::from_vec(rand(2 * 12 * 5, 9, 1.0), (2, 5, 12), &dev).unwrap();
            let ops = |x: &Tensor| -> Result<Tensor> {
                let mut y = x
                    .reshape((2, 3, 4, 5))?
                    .permute((0, 3, 2, 1))?
                    .reshape((2, 5, 12))?;
                for _ in 0..gelus {
                    y = gelu_ops(&y)?;
                }
                Ok(y)
            };
            let fused = |x: &Tensor| swap_grouped_gelu(x, 4, gelus);
            let (y, g) = value_and_grad(&fused, &x, &w);
            let (y_ref, g_ref) = value_and_grad(&ops, &x, &w);
            assert_eq!((y.dims(), g.dims()), (y_ref.dims(), x.dims()));
            assert!(worst(&y, &y_ref) < 1e-13 && worst(&g, &g_ref) < 1e-12);
        }
        let t = Tensor::from_vec(rand(6, 7, 1.0), (2, 3), &dev).unwrap();
        let x3 = t.reshape((1, 2, 3)).unwrap();
        assert_eq!(
            transpose_last2(&x3).unwrap().to_vec3::<f64>().unwrap(),
            x3.transpose(1, 2).unwrap().to_vec3::<f64>().unwrap()
        );
    }

    /// Bad shapes, dtypes and depths are errors, not panics.
    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
        assert!(swap_axes_gelu(&x, 0).is_err()); // 3-D
        assert!(swap_grouped_gelu(&x, 2, 0).is_err()); // 3 rows are not groups of 2
        assert!(swap_grouped_gelu(&x, 0, 0).is_err());
        assert!(transpose_last2(&Tensor::zeros(4, DType::F32, &dev).unwrap()).is_err());
        let x4 = Tensor::zeros((2, 3, 4, 5), DType::F32, &dev).unwrap();
        assert!(swap_axes_gelu(&x4, 3).is_err());
        assert!(bias_gelu(&x, &Tensor::zeros(3, DType::F32, &dev).unwrap()).is_err());
        assert!(bias_gelu(&x, &Tensor::zeros(4, DType::F64, &dev).unwrap()).is_err());
        // what the fused ops do not take runs as candle ops
        let h = Tensor::new(&[-1.5f32, 0.25, 3.0], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let want = gelu_ops(&h.to_dtype(DType::F32).unwrap()).unwrap();
        let got = gelu(&h).unwrap().to_dtype(DType::F32).unwrap();
        assert!(
            (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 2e-2
        );
        // empty tensors go through
        let e = Tensor::zeros((0, 3, 1, 2), DType::F32, &dev).unwrap();
        assert_eq!(swap_axes_gelu(&e, 1).unwrap().dims(), [0, 2, 1, 3]);
    }
}
