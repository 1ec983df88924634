//! The per-channel causal convolution of `lrnnx-train`'s `fftconv` op (S4 / S4D) on the GPU,
//! and both of its gradients, as direct sums:
//!
//! ```text
//! y[b,c,t]  = Σ_{s ≤ t, s < K} k[c,s]·u[b,c,t−s]                 u, y, g, ∂u: (batch, C, L)
//! ∂u[b,c,s] = Σ_{j < K, s+j < L} k[c,j]·g[b,c,s+j]              k, ∂k: (C, K)
//! ∂k[c,j]   = Σ_b Σ_{j ≤ t < L} g[b,c,t]·u[b,c,t−j]            (0 for j ≥ L)
//! ```
//!
//! A block of [`TILE`] threads owns `TILE` consecutive outputs of one row and walks the sum in
//! chunks of [`CHUNK`] terms staged in shared memory; each thread adds its chunk's products in
//! order into a chunk sum and the chunk sums into its total. Work `O(batch·C·L·min(K, L))`
//! (the FFT of the CPU op is `O(L log L)` per row, but the direct sum is simple, exact in its
//! order and fast enough at the lengths S4 trains on); every output is written by one thread
//! in a fixed order, so results are deterministic (no atomics).

use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::cuda::ARCH;
use crate::ScanError;

/// The CUDA C source of the convolution kernels (`cc_fwd`, `cc_dx`, `cc_dk`).
pub const CAUSAL_CONV_SRC: &str = include_str!("../cuda/causal_conv.cu");

/// The kernels' entry points in [`CAUSAL_CONV_SRC`].
pub const CAUSAL_CONV_KERNELS: [&str; 3] = ["cc_fwd", "cc_dx", "cc_dk"];

/// Outputs per block (threads per block).
pub const TILE: usize = 256;

/// Terms per shared-memory chunk.
pub const CHUNK: usize = 256;

fn drv(e: cudarc::driver::DriverError) -> ScanError {
    ScanError(format!("CUDA driver: {e:?}"))
}

/// Sizes of one convolution: `u` `(batch, channels, len)`, `k` `(channels, taps)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    /// Batch size.
    pub batch: usize,
    /// Channels `C` (one kernel each).
    pub channels: usize,
    /// Signal length `L`.
    pub len: usize,
    /// Kernel taps `K` (≥ 1).
    pub taps: usize,
}

impl ConvSpec {
    /// Elements of a signal `(batch, C, L)`.
    pub fn signal_len(&self) -> usize {
        self.batch * self.channels * self.len
    }

    /// Elements of a kernel `(C, K)`.
    pub fn kernel_len(&self) -> usize {
        self.channels * self.taps
    }

    fn check(&self, named: &[(&str, usize, usize)]) -> Result<(), ScanError> {
        if self.taps == 0 {
            return Err(ScanError(format!(
                "causal conv: the kernel has no taps {self:?}"
            )));
        }
        let tiles = self.len.div_ceil(TILE).max(self.taps.div_ceil(TILE));
        if self.batch * self.channels * tiles > i32::MAX as usize
            || self.len > i32::MAX as usize
            || self.taps > i32::MAX as usize
        {
            return Err(ScanError(format!("causal conv: too large {self:?}")));
        }
        for &(name, got, want) in named {
            if got != want {
                return Err(ScanError(format!(
                    "causal conv: tensor `{name}` has {got} elements, expected {want} for {self:?}"
                )));
            }
        }
        Ok(())
    }

    fn empty(&self) -> bool {
        self.batch == 0 || self.channels == 0 || self.len == 0
    }
}

/// Compiles the convolution source to PTX for [`ARCH`].
pub fn compile() -> Result<Ptx, ScanError> {
    let opts = CompileOptions {
        arch: Some(ARCH),
        options: vec![format!("-DTILE={TILE}"), format!("-DCHUNK={CHUNK}")],
        name: Some("causal_conv.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(CAUSAL_CONV_SRC, opts)
        .map_err(|e| ScanError(format!("NVRTC compile of the causal conv failed: {e:?}")))
}

struct Module {
    _m: Arc<CudaModule>,
    fwd: CudaFunction,
    dx: CudaFunction,
    dk: CudaFunction,
}

/// The convolution kernels on one stream; compiled once, on first use.
pub struct CausalConv {
    stream: Arc<CudaStream>,
    module: Mutex<Option<Arc<Module>>>,
}

fn blocks(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (TILE as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CausalConv {
    /// Launches on `stream` (e.g. candle's device stream).
    pub fn with_stream(stream: Arc<CudaStream>) -> Self {
        CausalConv {
            stream,
            module: Mutex::new(None),
        }
    }

    fn module(&self) -> Result<Arc<Module>, ScanError> {
        let mut slot = self
            .module
            .lock()
            .map_err(|_| ScanError("causal conv: module cache poisoned".into()))?;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = self.stream.context().load_module(compile()?).map_err(drv)?;
        let module = Arc::new(Module {
            fwd: m.load_function("cc_fwd").map_err(drv)?,
            dx: m.load_function("cc_dx").map_err(drv)?,
            dk: m.load_function("cc_dk").map_err(drv)?,
            _m: m,
        });
        *slot = Some(module.clone());
        Ok(module)
    }

    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, ScanError> {
        self.stream.alloc_zeros::<f32>(n.max(1)).map_err(drv)
    }

    /// `y` `(batch, C, L)` from `u` `(batch, C, L)` and `k` `(C, K)` (module doc).
    pub fn forward(
        &self,
        spec: &ConvSpec,
        u: &CudaView<f32>,
        k: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        self.correlate(spec, u, k, false)
    }

    /// `∂u` `(batch, C, L)` from the upstream gradient `g` `(batch, C, L)` and `k` `(C, K)`.
    pub fn grad_input(
        &self,
        spec: &ConvSpec,
        g: &CudaView<f32>,
        k: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        self.correlate(spec, g, k, true)
    }

    /// `y` (`adjoint = false`) or `∂u` (`true`): one block per `TILE` outputs of a row.
    fn correlate(
        &self,
        spec: &ConvSpec,
        x: &CudaView<f32>,
        k: &CudaView<f32>,
        adjoint: bool,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let xname = if adjoint { "g" } else { "u" };
        spec.check(&[
            (xname, x.len(), spec.signal_len()),
            ("k", k.len(), spec.kernel_len()),
        ])?;
        if spec.empty() {
            return self.zeros(spec.signal_len());
        }
        let m = self.module()?;
        // SAFETY: any bit pattern is a valid f32; the kernel writes every element.
        let mut y = unsafe { self.stream.alloc::<f32>(spec.signal_len()) }.map_err(drv)?;
        let tiles = spec.len.div_ceil(TILE);
        let (c, l, kk, t) = (
            spec.channels as i32,
            spec.len as i32,
            spec.taps as i32,
            tiles as i32,
        );
        let f = if adjoint { &m.dx } else { &m.fwd };
        let mut lb = self.stream.launch_builder(f);
        lb.arg(x)
            .arg(k)
            .arg(&mut y)
            .arg(&c)
            .arg(&l)
            .arg(&kk)
            .arg(&t);
        // SAFETY: the arguments match `cc_fwd` / `cc_dx`; lengths checked above.
        unsafe { lb.launch(blocks(spec.batch * spec.channels * tiles)) }.map_err(drv)?;
        Ok(y)
    }

    /// `∂k` `(C, K)` from the upstream gradient `g` and the input `u`, both `(batch, C, L)`.
    pub fn grad_kernel(
        &self,
        spec: &ConvSpec,
        g: &CudaView<f32>,
        u: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        spec.check(&[
            ("g", g.len(), spec.signal_len()),
            ("u", u.len(), spec.signal_len()),
        ])?;
        if spec.empty() {
            return self.zeros(spec.kernel_len());
        }
        let m = self.module()?;
        // SAFETY: as in `correlate`; the kernel writes every element.
        let mut dk = unsafe { self.stream.alloc::<f32>(spec.kernel_len()) }.map_err(drv)?;
        let tiles = spec.taps.div_ceil(TILE);
        let (b, c, l, kk, t) = (
            spec.batch as i32,
            spec.channels as i32,
            spec.len as i32,
            spec.taps as i32,
            tiles as i32,
        );
        let mut lb = self.stream.launch_builder(&m.dk);
        lb.arg(g)
            .arg(u)
            .arg(&mut dk)
            .arg(&b)
            .arg(&c)
            .arg(&l)
            .arg(&kk)
            .arg(&t);
        // SAFETY: the arguments match `cc_dk`; lengths checked above.
        unsafe { lb.launch(blocks(spec.channels * tiles)) }.map_err(drv)?;
        Ok(dk)
    }
}
