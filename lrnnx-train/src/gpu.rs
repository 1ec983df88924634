//! CUDA paths of the training crate's fused ops (feature `cuda`): the `lrnnx-kernels` kernels
//! launched on candle's own stream, reading and writing candle's device buffers in place.
//!
//! [`crate::selective`]'s op packs its operands for CUDA as `[u; Δ; ΔA]` stacked on a leading
//! axis `(3, B, L, E)` and `[B_t; C_t]` as `(2, B, L, N)`, so that each input of the kernel is a
//! contiguous sub-range of one candle buffer (no copies). The forward keeps the kernel's chunk
//! checkpoints (the state every 32 steps, `(B, ⌈L/32⌉, N, E)`) for the backward; without them
//! the backward recomputes them by one more forward.
//!
//! [`crate::scan`]'s linear recurrence runs `lrnnx_kernels::linear` on the operands as they are
//! (`a`, `u` `(B, L, N[, 2])`, or a shared `a` row).
//!
//! [`crate::fftconv`]'s causal convolution (S4 / S4D) runs `lrnnx_kernels::conv` (direct,
//! shared-memory tiled sums) for its forward and both gradients.
//!
//! The kernels compute in f32 only: f64 tensors on a CUDA device are refused with an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda::DeviceId;
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Storage, Tensor};
use lrnnx_kernels::conv::{CausalConv, ConvSpec};
use lrnnx_kernels::cuda::{InputViews, SelectiveScan as Kernel};
use lrnnx_kernels::linear::{LinearScan as LinearKernel, LinearSpec};
use lrnnx_kernels::{Rule, ScanError, ScanSpec};

use crate::mamba::MambaRule;

fn err(e: ScanError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn drv(e: candle_core::cuda::cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA driver: {e:?}"))
}

/// The selective-scan kernels of one candle CUDA device (compiled variants cached for the
/// process's life), launching on that device's stream.
pub(crate) fn selective_kernel(dev: &CudaDevice) -> Result<Arc<Kernel>> {
    static KERNELS: OnceLock<Mutex<HashMap<DeviceId, Arc<Kernel>>>> = OnceLock::new();
    let map = KERNELS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map
        .lock()
        .map_err(|_| candle_core::Error::Msg("selective scan: kernel cache poisoned".into()))?;
    if let Some(k) = map.get(&dev.id()) {
        return Ok(k.clone());
    }
    let k = Arc::new(Kernel::with_stream(dev.cuda_stream()).map_err(err)?);
    map.insert(dev.id(), k.clone());
    Ok(k)
}

/// The contiguous f32 range of a CUDA storage that a layout covers (input `name` of `op`; f64
/// and strided inputs are refused with an error naming both).
fn view<'a>(op: &str, s: &'a CudaStorage, l: &Layout, name: &str) -> Result<CudaView<'a, f32>> {
    let slice = match s.as_cuda_slice::<f32>() {
        Ok(x) => x,
        Err(_) => bail!(
            "{op}: `{name}` is {:?} on CUDA; the CUDA kernels take f32 only",
            s.dtype()
        ),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => bail!("{op}: `{name}` must be contiguous"),
    }
}

fn rule(r: MambaRule) -> Rule {
    match r {
        MambaRule::Mamba => Rule::Mamba,
        MambaRule::Zoh => Rule::Zoh,
        MambaRule::Bilinear => Rule::Bilinear,
        MambaRule::Dirac => Rule::Dirac,
    }
}

/// The kernel's spec for the op's `(B, L, E, N)`: time-varying ungrouped `B_t`/`C_t`, a
/// separate `ΔA`, no bias, softplus, `D` or `z` (those are candle ops around the op).
fn spec(r: MambaRule, (b, l, e, n): (usize, usize, usize, usize)) -> ScanSpec {
    ScanSpec {
        batch: b,
        len: l,
        channels: e,
        state: n,
        groups: 1,
        rule: rule(r),
        bc_fixed: false,
        has_delta_a: true,
        has_delta_bias: false,
        softplus: false,
        has_d: false,
        has_z: false,
        complex: false,
    }
}

/// The kernel's inputs as sub-ranges of the stacked operands `ch` `(3, B, L, E)` and `bc`
/// `(2, B, L, N)`.
fn inputs<'a>(
    ch: &'a CudaView<'a, f32>,
    a: &'a CudaView<'a, f32>,
    bc: &'a CudaView<'a, f32>,
    (b, l, e, n): (usize, usize, usize, usize),
) -> InputViews<'a> {
    let (ble, bln) = (b * l * e, b * l * n);
    InputViews {
        u: ch.slice(0..ble),
        delta: ch.slice(ble..2 * ble),
        delta_a: Some(ch.slice(2 * ble..3 * ble)),
        a: a.slice(..),
        b: bc.slice(0..bln),
        c: bc.slice(bln..2 * bln),
        d: None,
        z: None,
        delta_bias: None,
    }
}

/// Forward of the stacked op: `y` `(B, L, E)` as a CUDA storage, and the chunk checkpoints.
#[allow(clippy::too_many_arguments)]
pub(crate) fn selective_forward(
    r: MambaRule,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    dims: (usize, usize, usize, usize),
) -> Result<(CudaStorage, CudaSlice<f32>)> {
    let dev = &s1.device;
    let k = selective_kernel(dev)?;
    let (ch, a, bc) = (
        view("selective scan", s1, l1, "[u; Δ; ΔA]")?,
        view("selective scan", s2, l2, "A")?,
        view("selective scan", s3, l3, "[B_t; C_t]")?,
    );
    let f = k
        .forward_views(&spec(r, dims), &inputs(&ch, &a, &bc, dims))
        .map_err(err)?;
    Ok((
        CudaStorage::wrap_cuda_slice(f.y, dev.clone()),
        f.checkpoints,
    ))
}

fn cuda_storage<'a>(s: &'a Storage, name: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("selective scan: `{name}` is not on the CUDA device"),
    }
}

fn wrap(buf: CudaSlice<f32>, dev: &CudaDevice, shape: &[usize]) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(buf, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}

/// Backward of the stacked op: `(∂ch (3, B, L, E), ∂A (E, N), ∂bc (2, B, L, N))` from the
/// operands, the upstream gradient `gy` `(B, L, E)` and the forward's checkpoints (recomputed
/// when `ckpt` is `None`).
pub(crate) fn selective_backward(
    r: MambaRule,
    ops: [&Tensor; 4],
    dims: (usize, usize, usize, usize),
    ckpt: Option<&CudaSlice<f32>>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [ch, a, bc, gy] = ops.map(|t| t.contiguous());
    let (ch, a, bc, gy) = (ch?, a?, bc?, gy?);
    let (s1, l1) = ch.storage_and_layout();
    let (s2, l2) = a.storage_and_layout();
    let (s3, l3) = bc.storage_and_layout();
    let (s4, l4) = gy.storage_and_layout();
    let (c1, c2, c3, c4) = (
        cuda_storage(&s1, "[u; Δ; ΔA]")?,
        cuda_storage(&s2, "A")?,
        cuda_storage(&s3, "[B_t; C_t]")?,
        cuda_storage(&s4, "∂y")?,
    );
    let dev = &c1.device;
    let k = selective_kernel(dev)?;
    let (vch, va, vbc, vgy) = (
        view("selective scan", c1, l1, "[u; Δ; ΔA]")?,
        view("selective scan", c2, l2, "A")?,
        view("selective scan", c3, l3, "[B_t; C_t]")?,
        view("selective scan", c4, l4, "∂y")?,
    );
    let sp = spec(r, dims);
    let x = inputs(&vch, &va, &vbc, dims);
    let recomputed;
    let ck = match ckpt {
        Some(c) => c.as_view(),
        None => {
            recomputed = k.forward_views(&sp, &x).map_err(err)?.checkpoints;
            recomputed.as_view()
        }
    };
    let g = k.backward_device(&sp, &x, &ck, &vgy).map_err(err)?;
    let (b, l, e, n) = dims;
    let (ble, bln) = (b * l * e, b * l * n);
    let stream = dev.cuda_stream();
    // SAFETY: every element is written by the copies below before the buffer is read.
    let mut dch = unsafe { stream.alloc::<f32>(3 * ble) }.map_err(drv)?;
    let dda = match g.ddelta_a {
        Some(d) => d,
        None => bail!("selective scan: the kernel returned no ∂ΔA"),
    };
    for (i, src) in [&g.du, &g.ddelta, &dda].into_iter().enumerate() {
        stream
            .memcpy_dtod(src, &mut dch.slice_mut(i * ble..(i + 1) * ble))
            .map_err(drv)?;
    }
    // SAFETY: as above.
    let mut dbc = unsafe { stream.alloc::<f32>(2 * bln) }.map_err(drv)?;
    for (i, src) in [&g.db, &g.dc].into_iter().enumerate() {
        stream
            .memcpy_dtod(src, &mut dbc.slice_mut(i * bln..(i + 1) * bln))
            .map_err(drv)?;
    }
    // per-channel sums (E, 3N + 2): ∂A is the first N columns
    let pc = wrap(g.per_channel, dev, &[e, 3 * n + 2]);
    Ok((
        wrap(dch, dev, &[3, b, l, e]),
        pc.narrow(1, 0, n)?.contiguous()?,
        wrap(dbc, dev, &[2, b, l, n]),
    ))
}

/// The linear-scan kernels of one candle CUDA device, launching on its stream.
fn linear_kernel(dev: &CudaDevice) -> Result<Arc<LinearKernel>> {
    static KERNELS: OnceLock<Mutex<HashMap<DeviceId, Arc<LinearKernel>>>> = OnceLock::new();
    let map = KERNELS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map
        .lock()
        .map_err(|_| candle_core::Error::Msg("linear scan: kernel cache poisoned".into()))?;
    Ok(map
        .entry(dev.id())
        .or_insert_with(|| Arc::new(LinearKernel::with_stream(dev.cuda_stream())))
        .clone())
}

/// Forward of the linear scan on CUDA storages: `h` (the shape of `u`).
pub(crate) fn linear_forward(
    (complex, shared): (bool, bool),
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    (batch, len, state): (usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = &s1.device;
    let spec = LinearSpec {
        batch,
        len,
        state,
        complex,
        shared,
    };
    let h = linear_kernel(dev)?
        .forward(
            &spec,
            &view("linear scan", s1, l1, "a")?,
            &view("linear scan", s2, l2, "u")?,
        )
        .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(h, dev.clone()))
}

/// Backward of the linear scan on CUDA tensors: `(∂a, ∂u)` shaped like `a` and `h`.
pub(crate) fn linear_backward(
    (complex, shared): (bool, bool),
    [a, h, g]: [&Tensor; 3],
    (batch, len, state): (usize, usize, usize),
) -> Result<(Tensor, Tensor)> {
    let (ac, hc, gc) = (a.contiguous()?, h.contiguous()?, g.contiguous()?);
    let (s1, l1) = ac.storage_and_layout();
    let (s2, l2) = hc.storage_and_layout();
    let (s3, l3) = gc.storage_and_layout();
    let (c1, c2, c3) = (
        cuda_storage(&s1, "a")?,
        cuda_storage(&s2, "h")?,
        cuda_storage(&s3, "∂h")?,
    );
    let dev = &c1.device;
    let spec = LinearSpec {
        batch,
        len,
        state,
        complex,
        shared,
    };
    let (da, du) = linear_kernel(dev)?
        .backward(
            &spec,
            &view("linear scan", c1, l1, "a")?,
            &view("linear scan", c2, l2, "h")?,
            &view("linear scan", c3, l3, "∂h")?,
        )
        .map_err(err)?;
    let row = state * if complex { 2 } else { 1 };
    let da = if shared {
        // per-batch-row sums (B, row) -> the shared row
        wrap(da, dev, &[batch, row]).sum(0)?.reshape(a.shape())?
    } else {
        wrap(da, dev, a.dims())
    };
    Ok((da, wrap(du, dev, h.dims())))
}

/// The causal-convolution kernels of one candle CUDA device, launching on its stream.
fn conv_kernel(dev: &CudaDevice) -> Result<Arc<CausalConv>> {
    static KERNELS: OnceLock<Mutex<HashMap<DeviceId, Arc<CausalConv>>>> = OnceLock::new();
    let map = KERNELS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map
        .lock()
        .map_err(|_| candle_core::Error::Msg("causal_conv: kernel cache poisoned".into()))?;
    Ok(map
        .entry(dev.id())
        .or_insert_with(|| Arc::new(CausalConv::with_stream(dev.cuda_stream())))
        .clone())
}

fn conv_spec((batch, channels, len, taps): (usize, usize, usize, usize)) -> ConvSpec {
    ConvSpec {
        batch,
        channels,
        len,
        taps,
    }
}

/// The causal convolution `y = u ∗ k` (`adjoint = false`, `s1` = `u`) or its input gradient
/// `∂u` (`adjoint = true`, `s1` = the upstream gradient), `(B, C, L)`, with `k` `(C, K)`.
pub(crate) fn conv_correlate(
    adjoint: bool,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    dims: (usize, usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = &s1.device;
    let spec = conv_spec(dims);
    let name = if adjoint { "∂y" } else { "u" };
    let (x, k) = (
        view("causal_conv", s1, l1, name)?,
        view("causal_conv", s2, l2, "k")?,
    );
    let k_op = conv_kernel(dev)?;
    let y = if adjoint {
        k_op.grad_input(&spec, &x, &k)
    } else {
        k_op.forward(&spec, &x, &k)
    }
    .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// The kernel gradient `∂k` `(C, K)` of the causal convolution from the upstream gradient
/// (`s1`) and the input `u` (`s2`), both `(B, C, L)`.
pub(crate) fn conv_kernel_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    dims: (usize, usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = &s1.device;
    let (g, u) = (
        view("causal_conv", s1, l1, "∂y")?,
        view("causal_conv", s2, l2, "u")?,
    );
    let dk = conv_kernel(dev)?
        .grad_kernel(&conv_spec(dims), &g, &u)
        .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(dk, dev.clone()))
}
