//! Compiling (NVRTC) and launching the selective scan kernels through cudarc.
//!
//! cudarc loads `libnvrtc` and `libcuda` at run time and panics when they are missing, so
//! [`nvrtc_available`] and [`gpu_available`] check first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::{Pass, ScanError, ScanSpec, Tiling, Variant};

/// The GPU architecture the kernels are compiled for (H100/H200).
pub const ARCH: &str = "sm_90";

/// Whether `libnvrtc` can be loaded (cudarc panics on first use otherwise). With the `linked`
/// feature the libraries are linked at build time (a binary without them does not start), so
/// this is `true`.
pub fn nvrtc_available() -> bool {
    #[cfg(feature = "linked")]
    {
        true
    }
    // SAFETY: only tries to dlopen the library by its usual names.
    #[cfg(not(feature = "linked"))]
    unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    }
}

/// Whether `libcuda` loads and reports at least one device.
pub fn gpu_available() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    #[cfg(not(feature = "linked"))]
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    matches!(CudaContext::device_count(), Ok(n) if n > 0)
}

/// Lets the default memory pool of `stream`'s device keep freed memory (release threshold =
/// max), as PyTorch's and JAX's caching allocators do: otherwise every synchronize hands the
/// freed outputs' memory back to the driver and the next call pays for mapping it again
/// (about 0.5 ms of a 1 ms forward at batch 8 × L 4096 × E 2048). Returns whether the driver
/// took the setting.
pub fn keep_pool_memory(stream: &CudaStream) -> bool {
    use cudarc::driver::sys;
    let dev = stream.context().cu_device();
    let mut pool = std::ptr::null_mut();
    let mut max = u64::MAX;
    // SAFETY: plain driver calls on the stream's device with valid out-pointers; the attribute
    // value is a u64 as CU_MEMPOOL_ATTR_RELEASE_THRESHOLD requires.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev) == sys::CUresult::CUDA_SUCCESS
            && sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut max as *mut u64 as *mut std::ffi::c_void,
            ) == sys::CUresult::CUDA_SUCCESS
    }
}

/// Compiles the selective scan source of `variant` ([`Variant::source`]) for its kernel `pass`
/// to PTX for [`ARCH`] (the PTX holds every kernel of the source, compiled with that pass's
/// geometry).
pub fn compile(variant: &Variant, pass: Pass) -> Result<Ptx, ScanError> {
    nvrtc(
        &variant.source(),
        "selective_scan.cu",
        variant.defines(pass),
        &format!("{variant:?}"),
    )
}

/// Compiles `src` (the file `file`) with the `-D` options `defines` to PTX for [`ARCH`]; an
/// error names `what` was compiled.
pub(crate) fn nvrtc(
    src: &str,
    file: &str,
    defines: Vec<String>,
    what: &str,
) -> Result<Ptx, ScanError> {
    if !nvrtc_available() {
        return Err(ScanError(format!(
            "NVRTC compile of {what} ({file}): libnvrtc not found (install the CUDA toolkit's \
             NVRTC, or the nvidia-cuda-nvrtc wheel, and put it on the library path)"
        )));
    }
    let opts = CompileOptions {
        arch: Some(ARCH),
        options: defines,
        name: Some(file.into()),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts)
        .map_err(|e| ScanError(format!("NVRTC compile of {what} ({file}) failed: {e:?}")))
}

/// An uninitialised device buffer of `n` floats, for outputs that the next kernel writes in
/// full (every element) before anything reads them.
fn out_buf(s: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<f32>, ScanError> {
    // SAFETY: any bit pattern is a valid f32, and each caller's kernel writes all `n` elements.
    unsafe { s.alloc::<f32>(n) }.map_err(drv)
}

/// A driver error as the crate's error.
pub(crate) fn drv(e: cudarc::driver::DriverError) -> ScanError {
    ScanError(format!("CUDA driver: {e:?}"))
}

/// Loads `ptx` into `ctx` and looks up its entry points `names`, in that order (the module is
/// returned too: the functions live as long as it).
pub(crate) fn load_kernels<const K: usize>(
    ctx: &Arc<CudaContext>,
    ptx: Ptx,
    names: [&str; K],
) -> Result<(Arc<CudaModule>, [CudaFunction; K]), ScanError> {
    let m = ctx.load_module(ptx).map_err(drv)?;
    let mut fs = Vec::with_capacity(K);
    for n in names {
        fs.push(m.load_function(n).map_err(drv)?);
    }
    let fs: [CudaFunction; K] = fs
        .try_into()
        .map_err(|_| ScanError("kernel lookup: count mismatch".into()))?;
    Ok((m, fs))
}

/// Streaming multiprocessors of `stream`'s device (132 where the driver does not say).
pub(crate) fn sm_count(stream: &CudaStream) -> usize {
    stream
        .context()
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_or(132, |n| n.max(1) as usize)
}

/// A grid-stride launch over `n` elements: blocks of 256 threads, at least 1 and at most
/// `max_blocks` (the element-wise kernels loop over the rest).
pub(crate) fn grid_stride(n: usize, max_blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, max_blocks.max(1)) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Opens device `ordinal`'s primary context; an error (not cudarc's panic) where the driver
/// library does not load.
pub(crate) fn open_context(ordinal: usize) -> Result<Arc<CudaContext>, ScanError> {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    #[cfg(not(feature = "linked"))]
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(ScanError(
            "CUDA driver library (libcuda) not found: no NVIDIA driver on this machine".into(),
        ));
    }
    CudaContext::new(ordinal).map_err(drv)
}

/// Device inputs of one call; optional tensors must be `Some` exactly when the [`ScanSpec`]
/// flag says so.
pub struct Inputs<'a> {
    /// `(batch, L, E)`.
    pub u: &'a CudaSlice<f32>,
    /// `(batch, L, E)` (before bias and softplus).
    pub delta: &'a CudaSlice<f32>,
    /// `(batch, L, E)`, with `has_delta_a`.
    pub delta_a: Option<&'a CudaSlice<f32>>,
    /// `(E, N)`.
    pub a: &'a CudaSlice<f32>,
    /// `(batch, L, G, N)` or `(E, N)`.
    pub b: &'a CudaSlice<f32>,
    /// `(batch, L, G, N)` or `(E, N)`.
    pub c: &'a CudaSlice<f32>,
    /// `(E)`, with `has_d`.
    pub d: Option<&'a CudaSlice<f32>>,
    /// `(batch, L, E)`, with `has_z`.
    pub z: Option<&'a CudaSlice<f32>>,
    /// `(E)`, with `has_delta_bias`.
    pub delta_bias: Option<&'a CudaSlice<f32>>,
}

impl<'a> Inputs<'a> {
    /// The same inputs as views.
    pub fn views(&self) -> InputViews<'a> {
        InputViews {
            u: self.u.as_view(),
            delta: self.delta.as_view(),
            delta_a: self.delta_a.map(|t| t.as_view()),
            a: self.a.as_view(),
            b: self.b.as_view(),
            c: self.c.as_view(),
            d: self.d.map(|t| t.as_view()),
            z: self.z.map(|t| t.as_view()),
            delta_bias: self.delta_bias.map(|t| t.as_view()),
        }
    }
}

/// Device inputs as views: like [`Inputs`], but each tensor may be a sub-range of a larger
/// buffer (e.g. `u`, `delta`, `deltaA` stacked in one allocation by a caller such as candle).
pub struct InputViews<'a> {
    /// `(batch, L, E)`.
    pub u: CudaView<'a, f32>,
    /// `(batch, L, E)` (before bias and softplus).
    pub delta: CudaView<'a, f32>,
    /// `(batch, L, E)`, with `has_delta_a`.
    pub delta_a: Option<CudaView<'a, f32>>,
    /// `(E, N)`.
    pub a: CudaView<'a, f32>,
    /// `(batch, L, G, N)` or `(E, N)`.
    pub b: CudaView<'a, f32>,
    /// `(batch, L, G, N)` or `(E, N)`.
    pub c: CudaView<'a, f32>,
    /// `(E)`, with `has_d`.
    pub d: Option<CudaView<'a, f32>>,
    /// `(batch, L, E)`, with `has_z`.
    pub z: Option<CudaView<'a, f32>>,
    /// `(E)`, with `has_delta_bias`.
    pub delta_bias: Option<CudaView<'a, f32>>,
}

/// Results of the forward.
pub struct Forward {
    /// `y` `(batch, L, E)`.
    pub y: CudaSlice<f32>,
    /// Last state `(batch, E, N')`, N' = [`ScanSpec::state_floats`] (`N`, or `2N` as
    /// (re, im) pairs with complex `A`).
    pub last_state: CudaSlice<f32>,
    /// State at every chunk start `(batch, ⌈L/chunk⌉, N', E)`, for the backward.
    pub checkpoints: CudaSlice<f32>,
}

/// Gradients from the backward (`None` where the input is absent).
pub struct Grads {
    /// `∂/∂u` `(batch, L, E)`.
    pub du: CudaSlice<f32>,
    /// `∂/∂delta` (raw, before bias/softplus) `(batch, L, E)`.
    pub ddelta: CudaSlice<f32>,
    /// `∂/∂deltaA` `(batch, L, E)`.
    pub ddelta_a: Option<CudaSlice<f32>>,
    /// `∂/∂z` `(batch, L, E)`.
    pub dz: Option<CudaSlice<f32>>,
    /// `∂/∂B`, `∂/∂C`, shaped like `B`, `C`.
    pub db: CudaSlice<f32>,
    /// See `db`.
    pub dc: CudaSlice<f32>,
    /// Per-channel sums `(E, 3N + 2)`: `[∂A (N) | ∂B fixed (N) | ∂C fixed (N) | ∂D | ∂delta_bias]`
    /// (the fixed-`B`/`C` columns are copied into `db`/`dc` when `bc_fixed`).
    pub per_channel: Vec<f32>,
}

/// Gradients from [`SelectiveScan::backward_device`], all left on the device (no host copy,
/// no synchronization): as [`Grads`], with `per_channel` a device buffer `(E, 3N + 2)`.
pub struct DeviceGrads {
    /// `∂/∂u` `(batch, L, E)`.
    pub du: CudaSlice<f32>,
    /// `∂/∂delta` (raw, before bias/softplus) `(batch, L, E)`.
    pub ddelta: CudaSlice<f32>,
    /// `∂/∂deltaA` `(batch, L, E)`.
    pub ddelta_a: Option<CudaSlice<f32>>,
    /// `∂/∂z` `(batch, L, E)`.
    pub dz: Option<CudaSlice<f32>>,
    /// `∂/∂B` `(batch, L, G, N)` (time-varying `B` only).
    pub db: CudaSlice<f32>,
    /// `∂/∂C` `(batch, L, G, N)`.
    pub dc: CudaSlice<f32>,
    /// Per-channel sums `(E, 3N + 2)`: `[∂A (N) | ∂B fixed (N) | ∂C fixed (N) | ∂D | ∂delta_bias]`.
    pub per_channel: CudaSlice<f32>,
}

/// Caller-owned device ranges that [`SelectiveScan::backward_into`] writes the element-wise
/// gradients into (for instance the rows of one stacked gradient buffer), each of the length
/// of its tensor: `du`, `ddelta`, `ddelta_a`, `dz` `batch·L·E`; `db`, `dc` `batch·L·G·N`.
pub struct GradViews<'a> {
    /// `∂/∂u`.
    pub du: CudaViewMut<'a, f32>,
    /// `∂/∂delta` (raw, before bias/softplus).
    pub ddelta: CudaViewMut<'a, f32>,
    /// `∂/∂deltaA`: required with `has_delta_a`, ignored without.
    pub ddelta_a: Option<CudaViewMut<'a, f32>>,
    /// `∂/∂z`: required with `has_z`, ignored without.
    pub dz: Option<CudaViewMut<'a, f32>>,
    /// `∂/∂B` (time-varying `B`; `None` with `bc_fixed`, whose gradient is a per-channel column).
    pub db: Option<CudaViewMut<'a, f32>>,
    /// `∂/∂C`, as `db`.
    pub dc: Option<CudaViewMut<'a, f32>>,
}

struct Module {
    _m: [Arc<CudaModule>; 2],
    fwd: CudaFunction,
    bwd: CudaFunction,
    red_bc: CudaFunction,
    red_e: CudaFunction,
}

/// The selective scan on one CUDA device: compiled variants are cached for its lifetime.
pub struct SelectiveScan {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<Variant, Arc<Module>>>,
    dummy: CudaSlice<f32>,
    /// Launch geometry requested for new calls.
    pub tiling: Tiling,
}

impl SelectiveScan {
    /// Opens device `ordinal` (an error without a driver or device; [`gpu_available`] tells
    /// beforehand).
    pub fn new(ordinal: usize) -> Result<Self, ScanError> {
        let ctx = open_context(ordinal)?;
        let stream = ctx.default_stream();
        let dummy = stream.alloc_zeros::<f32>(1).map_err(drv)?;
        Ok(SelectiveScan {
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            dummy,
            tiling: Tiling::default(),
        })
    }

    /// Launches on `stream` (e.g. candle's `CudaDevice::cuda_stream()`), in its context, so the
    /// kernels are ordered with the other work of that stream and allocate from it.
    pub fn with_stream(stream: Arc<CudaStream>) -> Result<Self, ScanError> {
        let ctx = stream.context().clone();
        let dummy = stream.alloc_zeros::<f32>(1).map_err(drv)?;
        Ok(SelectiveScan {
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            dummy,
            tiling: Tiling::default(),
        })
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn module(&self, v: &Variant) -> Result<Arc<Module>, ScanError> {
        let mut map = self
            .modules
            .lock()
            .map_err(|_| ScanError("module cache poisoned".into()))?;
        if let Some(m) = map.get(v) {
            return Ok(m.clone());
        }
        let load = |pass| -> Result<Arc<CudaModule>, ScanError> {
            self.ctx.load_module(compile(v, pass)?).map_err(drv)
        };
        let (mf, mb) = (load(Pass::Forward)?, load(Pass::Backward)?);
        let f = |m: &Arc<CudaModule>, n: &str| m.load_function(n).map_err(drv);
        let module = Module {
            fwd: f(&mf, "ss_fwd")?,
            bwd: f(&mb, "ss_bwd")?,
            red_bc: f(&mb, "ss_reduce_bc")?,
            red_e: f(&mb, "ss_reduce_e")?,
            _m: [mf, mb],
        };
        // opt in to more than 48 KiB of dynamic shared memory where a variant needs it
        let attr = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        for (func, bytes) in [
            (&module.fwd, v.shared_bytes(Pass::Forward)),
            (&module.bwd, v.shared_bytes(Pass::Backward)),
        ] {
            if bytes > 48 * 1024 {
                func.set_attribute(attr, bytes as i32).map_err(drv)?;
            }
        }
        let module = Arc::new(module);
        map.insert(*v, module.clone());
        Ok(module)
    }

    /// The variant `spec` selects with the current tiling, and its compiled kernels' registers
    /// per thread and local (spilled) bytes per thread, forward then backward (for benchmarks
    /// and profiling).
    pub fn kernel_info(&self, spec: &ScanSpec) -> Result<(Variant, [(i32, i32); 2]), ScanError> {
        let v = spec.check(self.tiling)?;
        let m = self.module(&v)?;
        let info = |f: &CudaFunction| -> Result<(i32, i32), ScanError> {
            use CUfunction_attribute::{
                CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, CU_FUNC_ATTRIBUTE_NUM_REGS,
            };
            Ok((
                f.get_attribute(CU_FUNC_ATTRIBUTE_NUM_REGS).map_err(drv)?,
                f.get_attribute(CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)
                    .map_err(drv)?,
            ))
        };
        Ok((v, [info(&m.fwd)?, info(&m.bwd)?]))
    }

    fn check_inputs(&self, spec: &ScanSpec, x: &InputViews) -> Result<Variant, ScanError> {
        let v = spec.check(self.tiling)?;
        let need = |name: &str, t: Option<&CudaView<f32>>, flag: bool| -> Result<(), ScanError> {
            match (t, flag) {
                (Some(t), true) if Some(t.len()) == spec.expected_len(name) => Ok(()),
                (Some(t), true) => Err(ScanError(format!(
                    "tensor `{name}` has {} elements, expected {:?}",
                    t.len(),
                    spec.expected_len(name)
                ))),
                (None, false) => Ok(()),
                (Some(_), false) => Err(ScanError(format!(
                    "tensor `{name}` given but its flag in the spec is off"
                ))),
                (None, true) => Err(ScanError(format!("tensor `{name}` is missing"))),
            }
        };
        need("u", Some(&x.u), true)?;
        need("delta", Some(&x.delta), true)?;
        need("deltaA", x.delta_a.as_ref(), spec.has_delta_a)?;
        need("A", Some(&x.a), true)?;
        need("B", Some(&x.b), true)?;
        need("C", Some(&x.c), true)?;
        need("D", x.d.as_ref(), spec.has_d)?;
        need("z", x.z.as_ref(), spec.has_z)?;
        need("delta_bias", x.delta_bias.as_ref(), spec.has_delta_bias)?;
        Ok(v)
    }

    fn geometry(spec: &ScanSpec, v: &Variant, pass: Pass) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                spec.channels.div_ceil(v.channels_per_block(pass)) as u32,
                spec.batch as u32,
                1,
            ),
            block_dim: (v.threads(pass) as u32, 1, 1),
            shared_mem_bytes: v.shared_bytes(pass) as u32,
        }
    }

    /// Forward (the crate doc's equations): `h_t = Ā_t ⊙ h_{t−1} + γ̄_t·B_t·u_t` from `h_{−1} = 0`
    /// per channel, `y_t = Σ_n C_t[n]·h_t[n] + D·u_t` (`2·Re` of the sum with complex `A`),
    /// gated by `silu(z_t)` where given; returns `y`, the last state and the chunk
    /// checkpoints.
    pub fn forward(&self, spec: &ScanSpec, x: &Inputs) -> Result<Forward, ScanError> {
        self.forward_views(spec, &x.views())
    }

    /// [`forward`](Self::forward) on views.
    pub fn forward_views(&self, spec: &ScanSpec, x: &InputViews) -> Result<Forward, ScanError> {
        let v = self.check_inputs(spec, x)?;
        let m = self.module(&v)?;
        let s = &self.stream;
        let nch = spec.len.div_ceil(v.chunk());
        let mut y = out_buf(s, spec.batch * spec.len * spec.channels)?;
        let mut last = out_buf(s, spec.batch * spec.channels * spec.state_floats())?;
        let mut hs = out_buf(s, spec.batch * nch * spec.state_floats() * spec.channels)?;
        let dm = self.dummy.as_view();
        let (xda, xd, xz, xdb) = (
            x.delta_a.as_ref().unwrap_or(&dm),
            x.d.as_ref().unwrap_or(&dm),
            x.z.as_ref().unwrap_or(&dm),
            x.delta_bias.as_ref().unwrap_or(&dm),
        );
        let (l, e, g) = (
            spec.len as i32,
            spec.channels as i32,
            spec.groups.max(1) as i32,
        );
        let mut lb = s.launch_builder(&m.fwd);
        lb.arg(&x.u)
            .arg(&x.delta)
            .arg(xda)
            .arg(&x.a)
            .arg(&x.b)
            .arg(&x.c)
            .arg(xd)
            .arg(xz)
            .arg(xdb)
            .arg(&mut y)
            .arg(&mut hs)
            .arg(&mut last)
            .arg(&l)
            .arg(&e)
            .arg(&g);
        // SAFETY: argument list matches `ss_fwd`; every buffer has the length checked above.
        unsafe { lb.launch(Self::geometry(spec, &v, Pass::Forward)) }.map_err(drv)?;
        Ok(Forward {
            y,
            last_state: last,
            checkpoints: hs,
        })
    }

    /// Backward from the upstream gradient `dy` `(batch, L, E)` and the forward's checkpoints.
    pub fn backward(
        &self,
        spec: &ScanSpec,
        x: &Inputs,
        fwd: &Forward,
        dy: &CudaSlice<f32>,
    ) -> Result<Grads, ScanError> {
        let g =
            self.backward_device(spec, &x.views(), &fwd.checkpoints.as_view(), &dy.as_view())?;
        let s = &self.stream;
        let n = spec.state_floats();
        let ne = 3 * n + 2;
        let per_channel = s.clone_dtoh(&g.per_channel).map_err(drv)?;
        let (mut db, mut dc) = (g.db, g.dc);
        if spec.bc_fixed {
            let mut hb = vec![0f32; spec.channels * n];
            let mut hc = vec![0f32; spec.channels * n];
            for ch in 0..spec.channels {
                for k in 0..n {
                    hb[ch * n + k] = per_channel[ch * ne + n + k];
                    hc[ch * n + k] = per_channel[ch * ne + 2 * n + k];
                }
            }
            db = s.clone_htod(&hb).map_err(drv)?;
            dc = s.clone_htod(&hc).map_err(drv)?;
        }
        Ok(Grads {
            du: g.du,
            ddelta: g.ddelta,
            ddelta_a: g.ddelta_a,
            dz: g.dz,
            db,
            dc,
            per_channel,
        })
    }

    /// The backward on views, every result left on the device and nothing synchronized:
    /// `checkpoints` are [`Forward::checkpoints`] of a forward with the same spec and tiling.
    /// With `bc_fixed`, `db`/`dc` are zero and the gradients of `B`/`C` are the per-channel
    /// columns `N..2N` and `2N..3N`.
    pub fn backward_device(
        &self,
        spec: &ScanSpec,
        x: &InputViews,
        checkpoints: &CudaView<f32>,
        dy: &CudaView<f32>,
    ) -> Result<DeviceGrads, ScanError> {
        // sizes first (an empty or oversized spec is refused before anything is allocated);
        // backward_into checks the rest
        spec.check(self.tiling)?;
        let s = &self.stream;
        let ble = spec.batch * spec.len * spec.channels;
        let n = spec.state_floats();
        let mut du = out_buf(s, ble)?;
        let mut ddelta = out_buf(s, ble)?;
        let mut ddelta_a = if spec.has_delta_a {
            Some(out_buf(s, ble)?)
        } else {
            None
        };
        let mut dz = if spec.has_z {
            Some(out_buf(s, ble)?)
        } else {
            None
        };
        let (mut db, mut dc) = if spec.bc_fixed {
            (
                s.alloc_zeros::<f32>(spec.channels * n).map_err(drv)?,
                s.alloc_zeros::<f32>(spec.channels * n).map_err(drv)?,
            )
        } else {
            let total = spec.batch * spec.len * spec.groups * n;
            (out_buf(s, total)?, out_buf(s, total)?)
        };
        let per_channel = self.backward_into(
            spec,
            x,
            checkpoints,
            dy,
            GradViews {
                du: du.as_view_mut(),
                ddelta: ddelta.as_view_mut(),
                ddelta_a: ddelta_a.as_mut().map(|b| b.as_view_mut()),
                dz: dz.as_mut().map(|b| b.as_view_mut()),
                db: (!spec.bc_fixed).then(|| db.as_view_mut()),
                dc: (!spec.bc_fixed).then(|| dc.as_view_mut()),
            },
        )?;
        Ok(DeviceGrads {
            du,
            ddelta,
            ddelta_a,
            dz,
            db,
            dc,
            per_channel,
        })
    }

    /// [`Self::backward_device`] writing the element-wise gradients into caller-owned ranges
    /// (`out`; each checked for its length) instead of new buffers; returns the per-channel sums
    /// `(E, 3N + 2)`. Nothing synchronized.
    pub fn backward_into(
        &self,
        spec: &ScanSpec,
        x: &InputViews,
        checkpoints: &CudaView<f32>,
        dy: &CudaView<f32>,
        mut out: GradViews,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let v = self.check_inputs(spec, x)?;
        let ble = spec.batch * spec.len * spec.channels;
        if dy.len() != ble {
            return Err(ScanError(format!(
                "tensor `dy` has {} elements, expected {ble}",
                dy.len()
            )));
        }
        let nch = spec.len.div_ceil(v.chunk());
        if checkpoints.len() != spec.batch * nch * spec.state_floats() * spec.channels {
            return Err(ScanError(
                "checkpoints do not match the spec (forward run with another spec or tiling)"
                    .into(),
            ));
        }
        // floats per state vector (re, im interleaved for complex A)
        let n = spec.state_floats();
        let bc_len = spec.batch * spec.len * spec.groups * n;
        let lens = [
            ("du", Some(out.du.len()), true, ble),
            ("ddelta", Some(out.ddelta.len()), true, ble),
            (
                "ddelta_a",
                out.ddelta_a.as_ref().map(|b| b.len()),
                spec.has_delta_a,
                ble,
            ),
            ("dz", out.dz.as_ref().map(|b| b.len()), spec.has_z, ble),
            (
                "db",
                out.db.as_ref().map(|b| b.len()),
                !spec.bc_fixed,
                bc_len,
            ),
            (
                "dc",
                out.dc.as_ref().map(|b| b.len()),
                !spec.bc_fixed,
                bc_len,
            ),
        ];
        for (name, got, needed, want) in lens {
            match (needed, got) {
                (true, Some(g)) if g == want => {}
                (true, Some(g)) => {
                    return Err(ScanError(format!(
                        "output `{name}` has {g} elements, expected {want}"
                    )))
                }
                (true, None) => {
                    return Err(ScanError(format!("output `{name}` is missing")));
                }
                (false, _) => {}
            }
        }
        let m = self.module(&v)?;
        let s = &self.stream;
        let ne = 3 * n + 2;
        let nblk = spec.channels.div_ceil(v.channels_per_block(Pass::Backward));
        let mut pbc = if spec.bc_fixed {
            s.alloc_zeros::<f32>(1).map_err(drv)?
        } else {
            out_buf(s, spec.batch * nblk * spec.len * 2 * n)?
        };
        let mut pe = out_buf(s, spec.batch * spec.channels * ne)?;
        let dm = self.dummy.as_view();
        let (xda, xd, xz, xdb) = (
            x.delta_a.as_ref().unwrap_or(&dm),
            x.d.as_ref().unwrap_or(&dm),
            x.z.as_ref().unwrap_or(&dm),
            x.delta_bias.as_ref().unwrap_or(&dm),
        );
        let (l, e, g) = (
            spec.len as i32,
            spec.channels as i32,
            spec.groups.max(1) as i32,
        );
        let mut d1 = s.alloc_zeros::<f32>(1).map_err(drv)?;
        let mut d2 = s.alloc_zeros::<f32>(1).map_err(drv)?;
        {
            let mut lb = s.launch_builder(&m.bwd);
            lb.arg(&x.u)
                .arg(&x.delta)
                .arg(xda)
                .arg(&x.a)
                .arg(&x.b)
                .arg(&x.c)
                .arg(xd)
                .arg(xz)
                .arg(xdb)
                .arg(dy)
                .arg(checkpoints)
                .arg(&mut out.du)
                .arg(&mut out.ddelta);
            match (spec.has_delta_a, out.ddelta_a.as_mut()) {
                (true, Some(b)) => lb.arg(b),
                _ => lb.arg(&mut d1),
            };
            match (spec.has_z, out.dz.as_mut()) {
                (true, Some(b)) => lb.arg(b),
                _ => lb.arg(&mut d2),
            };
            lb.arg(&mut pbc).arg(&mut pe).arg(&l).arg(&e).arg(&g);
            // SAFETY: argument list matches `ss_bwd`; buffer lengths checked above.
            unsafe { lb.launch(Self::geometry(spec, &v, Pass::Backward)) }.map_err(drv)?;
        }
        if let (false, Some(db), Some(dc)) = (spec.bc_fixed, out.db.as_mut(), out.dc.as_mut()) {
            let (bsz, nblk_i) = (spec.batch as i32, nblk as i32);
            let mut lb = s.launch_builder(&m.red_bc);
            lb.arg(&pbc)
                .arg(db)
                .arg(dc)
                .arg(&bsz)
                .arg(&l)
                .arg(&g)
                .arg(&nblk_i);
            // SAFETY: argument list matches `ss_reduce_bc`; lengths checked above.
            unsafe { lb.launch(LaunchConfig::for_num_elems(bc_len as u32)) }.map_err(drv)?;
        }
        let mut pc = out_buf(s, spec.channels * ne)?;
        {
            let bsz = spec.batch as i32;
            let mut lb = s.launch_builder(&m.red_e);
            lb.arg(&pe).arg(&mut pc).arg(&bsz).arg(&e);
            // SAFETY: argument list matches `ss_reduce_e`.
            unsafe { lb.launch(LaunchConfig::for_num_elems((spec.channels * ne) as u32)) }
                .map_err(drv)?;
        }
        Ok(pc)
    }
}
