//! CUDA paths of the training crate's fused ops (feature `cuda`): the `lrnnx-kernels` kernels
//! launched on candle's own stream, reading and writing candle's device buffers in place.
//!
//! [`crate::selective`]'s op packs its operands for CUDA as `[u; Δ; ΔA?; z?]` stacked on a
//! leading axis `(rows, B, L, E)` (`ΔA` only when it is not the very tensor `Δ`, `z` only for
//! [`crate::selective::mamba_scan`]), `A` `(E, N)` or, for `mamba_scan`, `[A; D; bias]`
//! flattened, and `[B_t; C_t]` as `(2, B, L, N)`, so that each input of the kernel is a
//! contiguous sub-range of one candle buffer. The backward's kernel writes straight into the
//! rows of the packed gradients (`lrnnx_kernels::cuda::SelectiveScan::backward_into`). The
//! forward keeps the kernel's chunk checkpoints for the backward; without them the backward
//! recomputes them by one more forward. The kernel's `ScanMode::Auto` picks the chunked or the
//! sequential kernels from the shape (the sequential ones need `ΔA` to be `Δ`).
//!
//! Before its first kernel on a device this module lets the device's memory pool keep freed
//! memory (see `keep_device_pool`).
//!
//! [`crate::scan`]'s linear recurrence runs `lrnnx_kernels::linear` on the operands as they are
//! (`a`, `u` `(B, L, N[, 2])`, or a shared `a` row).
//!
//! [`crate::fftconv`]'s causal convolution (S4 / S4D) runs `lrnnx_kernels::conv` for its
//! forward and both gradients: direct, shared-memory tiled sums for short kernels, cuFFT
//! (loaded at run time) for long ones (`ConvMethod::Auto`; the direct sums where cuFFT is
//! missing).
//!
//! [`crate::pointwise`]'s fused GELUs and axis swaps run `lrnnx_kernels::pointwise`, and
//! [`crate::vandermonde`]'s S4D kernel `lrnnx_kernels::vandermonde`; S4's batched linear solve
//! `lrnnx_kernels::solve` (f32 or f64).
//!
//! The kernels compute in f32 only (but for the solve). The scans, the convolution and the
//! Vandermonde kernel refuse other dtypes on a CUDA device with an error naming the op; the
//! pointwise ops run candle's own ops for them instead (same values, unfused).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda::DeviceId;
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use lrnnx_kernels::conv::{CausalConv, ConvMethod, ConvSpec};
use lrnnx_kernels::cuda::{GradViews, InputViews, SelectiveScan as Kernel};
use lrnnx_kernels::linear::{LinearScan as LinearKernel, LinearSpec};
use lrnnx_kernels::pointwise::{Pointwise, SwapDims};
use lrnnx_kernels::solve::{BatchedSolve, SolveSpec};
use lrnnx_kernels::vandermonde::{Vandermonde, VandermondeSpec};
use lrnnx_kernels::{Rule, ScanError, ScanSpec};

use crate::mamba::MambaRule;
use crate::selective::CudaPacking;

fn err(e: ScanError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn drv(e: candle_core::cuda::cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA driver: {e:?}"))
}

/// Once per device, before its first kernel: lets the device's default memory pool keep the
/// memory that freed tensors return (`lrnnx_kernels::cuda::keep_pool_memory`, as PyTorch's
/// caching allocator does). candle allocates from that pool on its stream; with the driver's
/// default threshold every synchronize (reading a loss back) hands the freed memory to the
/// driver and the next step maps it again, which at batch 8 × L 4096 × E 2048 costs more than
/// the scan itself.
fn keep_device_pool(dev: &CudaDevice) {
    static DONE: OnceLock<Mutex<Vec<DeviceId>>> = OnceLock::new();
    let Ok(mut done) = DONE.get_or_init(|| Mutex::new(Vec::new())).lock() else {
        return;
    };
    if !done.contains(&dev.id()) {
        // a driver that refuses the attribute leaves the default: slower, still correct
        let _ = lrnnx_kernels::cuda::keep_pool_memory(dev.cuda_stream().as_ref());
        done.push(dev.id());
    }
}

/// Kernels kept per device (and per setting) for the process's life.
type Cache<Key, K> = OnceLock<Mutex<HashMap<Key, Arc<K>>>>;

/// The kernels in `cache` under `key` (for `dev`), made by `make` on their first use, after
/// `keep_device_pool`.
fn cached<Key: std::hash::Hash + Eq, K>(
    cache: &'static Cache<Key, K>,
    key: Key,
    dev: &CudaDevice,
    what: &str,
    make: impl FnOnce() -> Result<K>,
) -> Result<Arc<K>> {
    let mut map = cache
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{what}: kernel cache poisoned")))?;
    if let Some(k) = map.get(&key) {
        return Ok(k.clone());
    }
    keep_device_pool(dev);
    let k = Arc::new(make()?);
    map.insert(key, k.clone());
    Ok(k)
}

/// The selective-scan kernels of one candle CUDA device (compiled variants cached for the
/// process's life), launching on that device's stream.
pub(crate) fn selective_kernel(dev: &CudaDevice) -> Result<Arc<Kernel>> {
    static KERNELS: Cache<DeviceId, Kernel> = OnceLock::new();
    cached(&KERNELS, dev.id(), dev, "selective scan", || {
        Kernel::with_stream(dev.cuda_stream()).map_err(err)
    })
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

/// The kernel's spec for the op's `(B, L, E, N)` and packing: time-varying ungrouped
/// `B_t`/`C_t`; `ΔA` where packed; for [`crate::selective::mamba_scan`] the bias, softplus and
/// `D` (and `z` where packed) inside the kernel.
fn spec(r: MambaRule, pack: CudaPacking, (b, l, e, n): (usize, usize, usize, usize)) -> ScanSpec {
    ScanSpec {
        batch: b,
        len: l,
        channels: e,
        state: n,
        groups: 1,
        rule: rule(r),
        bc_fixed: false,
        has_delta_a: pack.delta_a,
        has_delta_bias: pack.mamba,
        softplus: pack.mamba,
        has_d: pack.mamba,
        has_z: pack.z,
        complex: false,
    }
}

/// The kernel's inputs as sub-ranges of the stacked operands: `ch` `[u; Δ; ΔA?; z?]`
/// `(rows, B, L, E)`, `p` `A` `(E, N)` or `[A; D; bias]` `(E·(N + 2))`, `bc` `(2, B, L, N)`.
fn inputs<'a>(
    pack: CudaPacking,
    ch: &'a CudaView<'a, f32>,
    p: &'a CudaView<'a, f32>,
    bc: &'a CudaView<'a, f32>,
    (b, l, e, n): (usize, usize, usize, usize),
) -> InputViews<'a> {
    let (ble, bln, en) = (b * l * e, b * l * n, e * n);
    let row = |i: usize| ch.slice(i * ble..(i + 1) * ble);
    let z_row = 2 + usize::from(pack.delta_a);
    InputViews {
        u: row(0),
        delta: row(1),
        delta_a: pack.delta_a.then(|| row(2)),
        a: p.slice(0..en),
        b: bc.slice(0..bln),
        c: bc.slice(bln..2 * bln),
        d: pack.mamba.then(|| p.slice(en..en + e)),
        z: pack.z.then(|| row(z_row)),
        delta_bias: pack.mamba.then(|| p.slice(en + e..en + 2 * e)),
    }
}

/// Forward of the stacked op on its three CUDA storages (`[u; Δ; ΔA?; z?]`, `A` or
/// `[A; D; bias]`, `[B_t; C_t]`): `y` `(B, L, E)` as a CUDA storage, and the chunk checkpoints.
pub(crate) fn selective_forward(
    r: MambaRule,
    pack: CudaPacking,
    [(s1, l1), (s2, l2), (s3, l3)]: [(&CudaStorage, &Layout); 3],
    dims: (usize, usize, usize, usize),
) -> Result<(CudaStorage, CudaSlice<f32>)> {
    let dev = &s1.device;
    let k = selective_kernel(dev)?;
    let (ch, p, bc) = (
        view("selective scan", s1, l1, "[u; Δ; ΔA; z]")?,
        view("selective scan", s2, l2, "A")?,
        view("selective scan", s3, l3, "[B_t; C_t]")?,
    );
    let f = k
        .forward_views(&spec(r, pack, dims), &inputs(pack, &ch, &p, &bc, dims))
        .map_err(err)?;
    Ok((
        CudaStorage::wrap_cuda_slice(f.y, dev.clone()),
        f.checkpoints,
    ))
}

/// The contiguous f32 inputs (one shape) copied one after another into a new buffer:
/// `(rows, …shape)`.
pub(crate) fn stack_rows(parts: &[(&CudaStorage, &Layout)]) -> Result<(CudaStorage, Shape)> {
    let shape = parts[0].1.shape().clone();
    if parts.iter().any(|(_, l)| l.shape() != &shape) {
        bail!("stack: the rows differ in shape");
    }
    let dev = &parts[0].0.device;
    let n = shape.elem_count();
    let stream = dev.cuda_stream();
    // SAFETY: every element is written by the copies below before the buffer is read.
    let mut out = unsafe { stream.alloc::<f32>(parts.len() * n) }.map_err(drv)?;
    for (i, (s, l)) in parts.iter().enumerate() {
        let v = view("stack", s, l, "row")?;
        stream
            .memcpy_dtod(&v, &mut out.slice_mut(i * n..(i + 1) * n))
            .map_err(drv)?;
    }
    let mut dims = vec![parts.len()];
    dims.extend_from_slice(shape.dims());
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(dims),
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

/// Backward of the stacked op: the gradients of its three operands in their packed shapes
/// (`(rows, B, L, E)`; `(E, N)` or `(E·(N + 2))`; `(2, B, L, N)`) from the operands, the
/// upstream gradient `gy` `(B, L, E)` and the forward's checkpoints (recomputed when `ckpt` is
/// `None`).
pub(crate) fn selective_backward(
    r: MambaRule,
    pack: CudaPacking,
    ops: [&Tensor; 4],
    dims: (usize, usize, usize, usize),
    ckpt: Option<&CudaSlice<f32>>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [ch, p, bc, gy] = ops.map(|t| t.contiguous());
    let (ch, p, bc, gy) = (ch?, p?, bc?, gy?);
    let (s1, l1) = ch.storage_and_layout();
    let (s2, l2) = p.storage_and_layout();
    let (s3, l3) = bc.storage_and_layout();
    let (s4, l4) = gy.storage_and_layout();
    let (c1, c2, c3, c4) = (
        cuda_storage(&s1, "[u; Δ; ΔA; z]")?,
        cuda_storage(&s2, "A")?,
        cuda_storage(&s3, "[B_t; C_t]")?,
        cuda_storage(&s4, "∂y")?,
    );
    let dev = &c1.device;
    let k = selective_kernel(dev)?;
    let (vch, vp, vbc, vgy) = (
        view("selective scan", c1, l1, "[u; Δ; ΔA; z]")?,
        view("selective scan", c2, l2, "A")?,
        view("selective scan", c3, l3, "[B_t; C_t]")?,
        view("selective scan", c4, l4, "∂y")?,
    );
    let sp = spec(r, pack, dims);
    let x = inputs(pack, &vch, &vp, &vbc, dims);
    let recomputed;
    let ck = match ckpt {
        Some(c) => c.as_view(),
        None => {
            recomputed = k.forward_views(&sp, &x).map_err(err)?.checkpoints;
            recomputed.as_view()
        }
    };
    let (b, l, e, n) = dims;
    let (ble, bln) = (b * l * e, b * l * n);
    let rows = pack.rows();
    let stream = dev.cuda_stream();
    // The kernel writes the rows of the packed gradients in place: ∂[u; Δ; ΔA?; z?], ∂[B; C].
    // SAFETY: the kernels write every element (lengths checked by `backward_into`).
    let mut dch = unsafe { stream.alloc::<f32>(rows * ble) }.map_err(drv)?;
    // SAFETY: as above.
    let mut dbc = unsafe { stream.alloc::<f32>(2 * bln) }.map_err(drv)?;
    let pc = {
        let (du, mut rest) = dch.split_at_mut(ble);
        let (ddelta, mut tail) = rest.split_at_mut(ble);
        let (ddelta_a, dz) = match (pack.delta_a, pack.z) {
            (true, true) => {
                let (a, z) = tail.split_at_mut(ble);
                (Some(a), Some(z))
            }
            (true, false) => (Some(tail.slice_mut(..)), None),
            (false, true) => (None, Some(tail.slice_mut(..))),
            (false, false) => (None, None),
        };
        let (db, dc) = dbc.split_at_mut(bln);
        let out = GradViews {
            du,
            ddelta,
            ddelta_a,
            dz,
            db: Some(db),
            dc: Some(dc),
        };
        k.backward_into(&sp, &x, &ck, &vgy, out).map_err(err)?
    };
    // per-channel sums (E, 3N + 2): [∂A (N) | ∂B, ∂C fixed (2N) | ∂D | ∂bias]
    let pc = wrap(pc, dev, &[e, 3 * n + 2]);
    let da = pc.narrow(1, 0, n)?;
    let dp = if pack.mamba {
        Tensor::cat(
            &[
                da.flatten_all()?,
                pc.narrow(1, 3 * n, 1)?.flatten_all()?,
                pc.narrow(1, 3 * n + 1, 1)?.flatten_all()?,
            ],
            0,
        )?
    } else {
        da.contiguous()?
    };
    Ok((
        wrap(dch, dev, &[rows, b, l, e]),
        dp,
        wrap(dbc, dev, &[2, b, l, n]),
    ))
}

/// The linear-scan kernels of one candle CUDA device, launching on its stream.
fn linear_kernel(dev: &CudaDevice) -> Result<Arc<LinearKernel>> {
    static KERNELS: Cache<DeviceId, LinearKernel> = OnceLock::new();
    cached(&KERNELS, dev.id(), dev, "linear scan", || {
        Ok(LinearKernel::with_stream(dev.cuda_stream()))
    })
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

/// The method of every later causal convolution on CUDA (`fftconv::set_cuda_conv_method`):
/// 0 `Auto`, 1 `Direct`, 2 `Fft`.
static CONV_METHOD: AtomicU8 = AtomicU8::new(0);

pub(crate) fn set_conv_method(method: ConvMethod) {
    let code = match method {
        ConvMethod::Auto => 0,
        ConvMethod::Direct => 1,
        ConvMethod::Fft => 2,
    };
    CONV_METHOD.store(code, Ordering::Relaxed);
}

/// The causal-convolution kernels of one candle CUDA device, launching on its stream, with the
/// method set by `set_conv_method` (one instance per device and method).
fn conv_kernel(dev: &CudaDevice) -> Result<Arc<CausalConv>> {
    static KERNELS: Cache<(DeviceId, u8), CausalConv> = OnceLock::new();
    let code = CONV_METHOD.load(Ordering::Relaxed);
    cached(&KERNELS, (dev.id(), code), dev, "causal_conv", || {
        let mut conv = CausalConv::with_stream(dev.cuda_stream());
        conv.method = match code {
            1 => ConvMethod::Direct,
            2 => ConvMethod::Fft,
            _ => ConvMethod::Auto,
        };
        Ok(conv)
    })
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

/// The pointwise kernels (`lrnnx_kernels::pointwise`) of one candle CUDA device.
fn pointwise_kernel(dev: &CudaDevice) -> Result<Arc<Pointwise>> {
    static KERNELS: Cache<DeviceId, Pointwise> = OnceLock::new();
    cached(&KERNELS, dev.id(), dev, "pointwise", || {
        Ok(Pointwise::with_stream(dev.cuda_stream()))
    })
}

/// `act_n(x + bias)` or, with `g`, `g·act_n′(x + bias)` (`crate::pointwise`), `bias` (storage,
/// layout, length) over the last axis.
pub(crate) fn gelu(
    s: &CudaStorage,
    l: &Layout,
    bias: Option<(&CudaStorage, &Layout, usize)>,
    g: Option<(&CudaStorage, &Layout)>,
    gelus: u32,
) -> Result<CudaStorage> {
    let dev = &s.device;
    let x = view("gelu", s, l, "x")?;
    let b = match bias {
        Some((sb, lb, cols)) => Some((view("gelu", sb, lb, "bias")?, cols)),
        None => None,
    };
    let k = pointwise_kernel(dev)?;
    let bv = b.as_ref().map(|(v, _)| v);
    let cols = b.as_ref().map_or(1, |(_, c)| *c);
    let y = match g {
        None => k.gelu(&x, bv, cols, gelus),
        Some((sg, lg)) => k.gelu_grad(&x, bv, &view("gelu", sg, lg, "∂y")?, cols, gelus),
    }
    .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// The swap of axes 1 and 3 of `x` `(B, R, M, C)` with `gelus` GELUs after it or, with `g`
/// `(B, C, M, R)`, its input gradient (`crate::pointwise`).
pub(crate) fn swap(
    s: &CudaStorage,
    l: &Layout,
    g: Option<(&CudaStorage, &Layout)>,
    [batch, rows, mid, cols]: [usize; 4],
    gelus: u32,
) -> Result<CudaStorage> {
    let dev = &s.device;
    let dims = SwapDims {
        batch,
        rows,
        mid,
        cols,
    };
    let x = view("swap_axes_gelu", s, l, "x")?;
    let k = pointwise_kernel(dev)?;
    let y = match g {
        None => k.swap(&x, dims, gelus),
        Some((sg, lg)) => k.swap_grad(&view("swap_axes_gelu", sg, lg, "∂y")?, &x, dims, gelus),
    }
    .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// S4D's kernel `K` `(H·ch, len)` from `z` `(H, N, 2)` and `w` `(ch, H, N, 2)` or, with `g`
/// (`∂K`), `[∂z; ∂w]` flattened (`crate::vandermonde`).
pub(crate) fn vandermonde(
    sz: &CudaStorage,
    lz: &Layout,
    sw: &CudaStorage,
    lw: &Layout,
    g: Option<(&CudaStorage, &Layout)>,
    (channels, state, copies): (usize, usize, usize),
    len: usize,
) -> Result<CudaStorage> {
    static KERNELS: Cache<DeviceId, Vandermonde> = OnceLock::new();
    let dev = &sz.device;
    let k = cached(&KERNELS, dev.id(), dev, "vandermonde", || {
        Ok(Vandermonde::with_stream(dev.cuda_stream()))
    })?;
    let spec = VandermondeSpec {
        channels,
        state,
        copies,
        len,
    };
    let (z, w) = (
        view("vandermonde_kernel", sz, lz, "z")?,
        view("vandermonde_kernel", sw, lw, "w")?,
    );
    let out = match g {
        None => k.kernel(&spec, &z, &w),
        Some((sg, lg)) => k.grad(&spec, &z, &w, &view("vandermonde_kernel", sg, lg, "∂K")?),
    }
    .map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// `A⁻¹B` on the device for `a` (N, M, M) and `b` (N, M, K), both f32 or both f64
/// (`lrnnx_kernels::solve`): `Ok(None)` when the sizes exceed the kernel's or `X` is empty (the
/// caller solves on the host), `Ok(Some(Err(i)))` when system `i` is singular.
pub(crate) fn solve(
    sa: &CudaStorage,
    la: &Layout,
    sb: &CudaStorage,
    lb: &Layout,
    (systems, size, rhs): (usize, usize, usize),
) -> Result<Option<std::result::Result<CudaStorage, usize>>> {
    static KERNELS: Cache<DeviceId, BatchedSolve> = OnceLock::new();
    let spec = SolveSpec { systems, size, rhs };
    if !spec.fits() || systems * size * rhs == 0 {
        return Ok(None);
    }
    let dev = &sa.device;
    let k = cached(&KERNELS, dev.id(), dev, "solve", || {
        Ok(BatchedSolve::with_stream(dev.cuda_stream()))
    })?;
    fn typed<'a, T: candle_core::cuda::CudaDType>(
        s: &'a CudaStorage,
        l: &Layout,
        name: &str,
    ) -> Result<CudaView<'a, T>> {
        let slice = s.as_cuda_slice::<T>()?;
        match l.contiguous_offsets() {
            Some((start, end)) => Ok(slice.slice(start..end)),
            None => bail!("S4 solve: `{name}` must be contiguous"),
        }
    }
    Ok(Some(match (sa.dtype(), sb.dtype()) {
        (DType::F32, DType::F32) => k
            .solve::<f32>(&spec, &typed(sa, la, "A")?, &typed(sb, lb, "B")?)
            .map_err(err)?
            .map(|x| CudaStorage::wrap_cuda_slice(x, dev.clone())),
        (DType::F64, DType::F64) => k
            .solve::<f64>(&spec, &typed(sa, la, "A")?, &typed(sb, lb, "B")?)
            .map_err(err)?
            .map(|x| CudaStorage::wrap_cuda_slice(x, dev.clone())),
        (a, b) => bail!("S4 solve: A and B must both be f32 or both f64, got {a:?} and {b:?}"),
    }))
}
