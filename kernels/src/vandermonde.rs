//! S4D's convolution kernel (a Vandermonde product) and its gradients on the GPU, for
//! `lrnnx-train`'s S4D layer, one launch each way where candle ops take hundreds of small ones:
//!
//! ```text
//! K[(h,c), t] = 2·Re Σ_n w[c,h,n]·z[h,n]^t                        z (H, N), w (ch, H, N) complex
//! ∂w[c,h,n]   = 2·conj(Σ_t G[(h,c),t]·z^t)                        K, G (H·ch, L)
//! ∂z[h,n]     = 2·Σ_c conj(w[c,h,n]·Σ_t G[(h,c),t]·t·z^{t−1})
//! ```
//!
//! Complex values are interleaved `(re, im)` f32; powers and sums run in f64, a thread forming
//! `z^t₀` by binary powering and stepping by `z^256`. The gradient sums over `t` run per thread in
//! order, then over the block in a fixed tree: deterministic.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::cuda::{drv, load_kernels, nvrtc};
use crate::ScanError;

/// The CUDA C source.
pub const VANDERMONDE_SRC: &str = include_str!("../cuda/vandermonde.cu");

/// The kernels' entry points in [`VANDERMONDE_SRC`].
pub const VANDERMONDE_KERNELS: [&str; 2] = ["vd_kernel", "vd_grad"];

/// Threads a block (`VD_THREADS` in the source).
const THREADS: usize = 256;
/// Outputs a thread of the forward (`VD_STEPS`).
const STEPS: usize = 8;

/// Compiles [`VANDERMONDE_SRC`] to PTX for [`ARCH`](crate::cuda::ARCH).
pub fn compile() -> Result<Ptx, ScanError> {
    nvrtc(
        VANDERMONDE_SRC,
        "vandermonde.cu",
        Vec::new(),
        "the Vandermonde kernels",
    )
}

/// Sizes: `z` `(channels, state)`, `w` `(copies, channels, state)`, the kernel `(channels ·
/// copies, len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VandermondeSpec {
    /// H.
    pub channels: usize,
    /// N (complex states a channel).
    pub state: usize,
    /// ch (output copies a channel).
    pub copies: usize,
    /// L (taps).
    pub len: usize,
}

impl VandermondeSpec {
    /// Floats of `z` (H·N complex).
    pub fn z_len(&self) -> Option<usize> {
        self.channels.checked_mul(self.state)?.checked_mul(2)
    }

    /// Floats of `w` (ch·H·N complex).
    pub fn w_len(&self) -> Option<usize> {
        self.z_len()?.checked_mul(self.copies)
    }

    /// Floats of the kernel (H·ch·L).
    pub fn kernel_len(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.copies)?
            .checked_mul(self.len)
    }

    fn check(&self) -> Result<(usize, usize, usize), ScanError> {
        let bad = || ScanError(format!("vandermonde: {self:?} overflows"));
        let sizes = (
            self.z_len().ok_or_else(bad)?,
            self.w_len().ok_or_else(bad)?,
            self.kernel_len().ok_or_else(bad)?,
        );
        if self.channels > 65_535 {
            return Err(ScanError(format!(
                "vandermonde: at most 65535 channels on the GPU, got {}",
                self.channels
            )));
        }
        for (what, v) in [("state", self.state), ("copies", self.copies)] {
            if i32::try_from(v).is_err() {
                return Err(ScanError(format!(
                    "vandermonde: {what} {v} exceeds 2³¹ − 1"
                )));
            }
        }
        Ok(sizes)
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), ScanError> {
    if got != want {
        return Err(ScanError(format!(
            "vandermonde: `{what}` holds {got} values, expected {want}"
        )));
    }
    Ok(())
}

struct Kernels {
    _m: Arc<CudaModule>,
    kernel: CudaFunction,
    grad: CudaFunction,
}

/// The kernels on one stream, compiled on first use.
pub struct Vandermonde {
    stream: Arc<CudaStream>,
    kernels: OnceLock<Kernels>,
}

impl Vandermonde {
    /// Launches on `stream` (e.g. candle's device stream).
    pub fn with_stream(stream: Arc<CudaStream>) -> Self {
        Vandermonde {
            stream,
            kernels: OnceLock::new(),
        }
    }

    fn kernels(&self) -> Result<&Kernels, ScanError> {
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        let (m, [kernel, grad]) =
            load_kernels(self.stream.context(), compile()?, ["vd_kernel", "vd_grad"])?;
        let k = Kernels {
            kernel,
            grad,
            _m: m,
        };
        Ok(self.kernels.get_or_init(|| k))
    }

    /// `K` `(H·ch, L)` (module doc).
    pub fn kernel(
        &self,
        spec: &VandermondeSpec,
        z: &CudaView<f32>,
        w: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let (zl, wl, kl) = spec.check()?;
        check_len("z", z.len(), zl)?;
        check_len("w", w.len(), wl)?;
        // SAFETY: every element is written by the kernel before it is read.
        let mut k = unsafe { self.stream.alloc::<f32>(kl.max(1)) }.map_err(drv)?;
        if kl == 0 {
            return Ok(k);
        }
        let tiles = spec.len.div_ceil(THREADS * STEPS);
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(tiles)
                    .map_err(|_| ScanError(format!("vandermonde: length {} too long", spec.len)))?,
                spec.channels as u32,
                1,
            ),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h, n, ch, l) = (
            spec.channels as i32,
            spec.state as i32,
            spec.copies as i32,
            spec.len as i64,
        );
        let f = &self.kernels()?.kernel;
        let mut lb = self.stream.launch_builder(f);
        lb.arg(z)
            .arg(w)
            .arg(&mut k)
            .arg(&h)
            .arg(&n)
            .arg(&ch)
            .arg(&l);
        // SAFETY: the arguments match `vd_kernel`; the lengths are checked above.
        unsafe { lb.launch(cfg) }.map_err(drv)?;
        Ok(k)
    }

    /// `[∂z; ∂w]` (the `H·N·2` floats of `∂z`, then the `ch·H·N·2` of `∂w`) from the upstream
    /// `g` `(H·ch, L)` (module doc).
    pub fn grad(
        &self,
        spec: &VandermondeSpec,
        z: &CudaView<f32>,
        w: &CudaView<f32>,
        g: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let (zl, wl, kl) = spec.check()?;
        check_len("z", z.len(), zl)?;
        check_len("w", w.len(), wl)?;
        check_len("g", g.len(), kl)?;
        let mut dzw = self
            .stream
            .alloc_zeros::<f32>((zl + wl).max(1))
            .map_err(drv)?;
        if zl == 0 {
            return Ok(dzw);
        }
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(spec.state)
                    .map_err(|_| ScanError(format!("vandermonde: state {}", spec.state)))?,
                spec.channels as u32,
                1,
            ),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h, n, ch, l) = (
            spec.channels as i32,
            spec.state as i32,
            spec.copies as i32,
            spec.len as i64,
        );
        let f = &self.kernels()?.grad;
        let mut lb = self.stream.launch_builder(f);
        lb.arg(z)
            .arg(w)
            .arg(g)
            .arg(&mut dzw)
            .arg(&h)
            .arg(&n)
            .arg(&ch)
            .arg(&l);
        // SAFETY: the arguments match `vd_grad`; the lengths are checked above.
        unsafe { lb.launch(cfg) }.map_err(drv)?;
        Ok(dzw)
    }
}
