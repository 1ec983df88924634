//! A batched dense linear solve on the GPU, for `lrnnx-train`'s S4 layer (its bilinear
//! discretization and its input vectors), so that S4 trains without copying its matrices to the
//! host:
//!
//! ```text
//! X[s] = A[s]⁻¹ B[s]          A (N, M, M), B (N, M, K), X (N, M, K), row-major, f32 or f64
//! ```
//!
//! One block a system runs Gauss–Jordan elimination with partial pivoting on the augmented rows
//! `[A | B]` in f64, held in shared memory where they fit (`M·(M + K)·8` bytes within the
//! device's opt-in limit, 227 KiB on an H100: `M = 64` with 65 right-hand sides takes 64.5 KiB),
//! else in a global scratch buffer (at most 256 MiB a launch; more systems take more launches).
//! The pivot is the first largest `|a|` of its column and, compiled without fused multiply-adds,
//! every value goes through the host solve's operations in its order: for finite systems the
//! result equals `lrnnx-train`'s host solve bit for bit. A zero or non-finite pivot, or a
//! non-finite `X`, makes [`BatchedSolve::solve`] answer the first such system's index; reading
//! that index back synchronizes the stream.

use std::sync::{Arc, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::cuda::{drv, load_kernels, nvrtc};
use crate::ScanError;

/// The CUDA C source.
pub const SOLVE_SRC: &str = include_str!("../cuda/solve.cu");

/// The kernels' entry points in [`SOLVE_SRC`].
pub const SOLVE_KERNELS: [&str; 2] = ["solve_f32", "solve_f64"];

/// Threads a block (`SOLVE_THREADS` in the source).
const THREADS: u32 = 256;

/// Largest `M` the kernel takes (`SOLVE_MAX_M`: its shared row factors).
pub const MAX_M: usize = 1024;

/// The default [`BatchedSolve::scratch_bytes`] (256 MiB).
pub const SCRATCH_BYTES: usize = 256 << 20;

/// Compiles [`SOLVE_SRC`] to PTX for [`ARCH`](crate::cuda::ARCH).
pub fn compile() -> Result<Ptx, ScanError> {
    // no fused multiply-adds: the host's roundings, operation for operation
    nvrtc(
        SOLVE_SRC,
        "solve.cu",
        vec!["--fmad=false".into()],
        "the solve kernels",
    )
}

/// The sizes of a batch of systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolveSpec {
    /// N, the systems.
    pub systems: usize,
    /// M, each system's unknowns (rows and columns of `A`).
    pub size: usize,
    /// K, the right-hand sides (columns of `B` and `X`).
    pub rhs: usize,
}

impl SolveSpec {
    /// Whether the kernel takes these sizes: `M ≤` [`MAX_M`], `M·(M + K)` (plus a block's
    /// threads) and `N` below 2³¹ (the kernel's `int` indices), and the operands addressable.
    pub fn fits(&self) -> bool {
        let (n, m, k) = (self.systems, self.size, self.rhs);
        let row = m.checked_add(k).and_then(|w| w.checked_mul(m));
        m <= MAX_M
            && row.is_some_and(|r| {
                r.checked_add(THREADS as usize)
                    .is_some_and(|t| i32::try_from(t).is_ok())
            })
            && i32::try_from(n).is_ok()
            && row
                .and_then(|r| r.checked_mul(n))
                .and_then(|e| e.checked_mul(8))
                .is_some()
    }

    /// Values of `A`, `B` and of one system's augmented rows.
    fn lens(&self) -> Result<(usize, usize, usize), ScanError> {
        if !self.fits() {
            return Err(ScanError(format!(
                "solve: {self:?} exceeds the kernel's sizes (M ≤ {MAX_M}, M·(M+K) and N < 2³¹)"
            )));
        }
        let (n, m, k) = (self.systems, self.size, self.rhs);
        Ok((n * m * m, n * m * k, m * (m + k)))
    }
}

/// The element types the kernel solves in (f64 inside either way).
pub trait SolveFloat: DeviceRepr + ValidAsZeroBits + Copy + Unpin {
    /// The kernel's entry point for this type.
    const KERNEL: &'static str;
}

impl SolveFloat for f32 {
    const KERNEL: &'static str = "solve_f32";
}

impl SolveFloat for f64 {
    const KERNEL: &'static str = "solve_f64";
}

struct Kernels {
    _m: Arc<CudaModule>,
    f32: CudaFunction,
    f64: CudaFunction,
    /// The most dynamic shared memory a launch may ask for (bytes).
    shared_limit: usize,
}

/// The solve kernels on one stream, compiled on first use.
pub struct BatchedSolve {
    stream: Arc<CudaStream>,
    kernels: OnceLock<Kernels>,
    /// Whether a system's rows go to shared memory where they fit (the default); `false` keeps
    /// them in the global scratch (for tests of that path).
    pub shared_memory: bool,
    /// Bytes of global scratch a launch may use when the rows do not fit shared memory (at
    /// least one system's); a larger batch is solved in several launches.
    pub scratch_bytes: usize,
}

impl BatchedSolve {
    /// Launches on `stream` (e.g. candle's device stream).
    pub fn with_stream(stream: Arc<CudaStream>) -> Self {
        BatchedSolve {
            stream,
            kernels: OnceLock::new(),
            shared_memory: true,
            scratch_bytes: SCRATCH_BYTES,
        }
    }

    fn kernels(&self) -> Result<&Kernels, ScanError> {
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        let ctx = self.stream.context();
        let (m, [f32, f64]) = load_kernels(ctx, compile()?, ["solve_f32", "solve_f64"])?;
        // opt in to the device's largest dynamic shared memory (beside the static factors);
        // where the driver refuses, the default 48 KiB
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(drv)?;
        let mut shared_limit = usize::MAX;
        for f in [&f32, &f64] {
            let fixed = f
                .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .map_err(drv)?;
            let wanted = (optin - fixed).max(0);
            let got = match f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                wanted,
            ) {
                Ok(()) => wanted,
                Err(_) => (48 * 1024 - fixed).max(0),
            };
            shared_limit = shared_limit.min(got as usize);
        }
        let k = Kernels {
            f32,
            f64,
            shared_limit,
            _m: m,
        };
        Ok(self.kernels.get_or_init(|| k))
    }

    /// `X = A⁻¹ B` (module doc), or `Err(i)` inside for the first singular system `i` (a zero
    /// or non-finite pivot, or a non-finite solution); the outer `Err` for sizes the kernel
    /// does not take ([`SolveSpec::fits`]), wrong operand lengths or a driver error. An empty
    /// `X` (no systems, unknowns or right-hand sides) comes back as one unused element (the
    /// driver allocates no zero-byte buffers).
    pub fn solve<T: SolveFloat>(
        &self,
        spec: &SolveSpec,
        a: &CudaView<T>,
        b: &CudaView<T>,
    ) -> Result<Result<CudaSlice<T>, usize>, ScanError> {
        let (al, bl, rows) = spec.lens()?;
        for (what, got, want) in [("A", a.len(), al), ("B", b.len(), bl)] {
            if got != want {
                return Err(ScanError(format!(
                    "solve: `{what}` holds {got} values, expected {want} for {spec:?}"
                )));
            }
        }
        if bl == 0 {
            return self.stream.alloc_zeros::<T>(1).map(Ok).map_err(drv);
        }
        // SAFETY: the kernel writes every element of X (a singular system's X is garbage, but
        // then the call returns `Err` inside and drops it).
        let mut x = unsafe { self.stream.alloc::<T>(bl) }.map_err(drv)?;
        let kernels = self.kernels()?;
        let row_bytes = rows * 8;
        let in_shared = self.shared_memory && row_bytes <= kernels.shared_limit;
        // in global scratch, launches of at most `scratch_bytes` of rows
        let (n, m, k) = (spec.systems, spec.size, spec.rhs);
        let per_launch = if in_shared {
            n
        } else {
            (self.scratch_bytes / row_bytes).clamp(1, n)
        };
        // SAFETY: the kernel writes the scratch before reading it (unused in shared memory).
        let mut aug = unsafe {
            self.stream
                .alloc::<f64>(if in_shared { 1 } else { per_launch * rows })
        }
        .map_err(drv)?;
        let mut singular = self.stream.clone_htod(&[n as i32]).map_err(drv)?;
        let f = if T::KERNEL == "solve_f32" {
            &kernels.f32
        } else {
            &kernels.f64
        };
        let (mi, ki, shared) = (m as i32, k as i32, i32::from(in_shared));
        for first in (0..n).step_by(per_launch) {
            let count = per_launch.min(n - first);
            let cfg = LaunchConfig {
                grid_dim: (count as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: if in_shared { row_bytes as u32 } else { 0 },
            };
            let (a_sys, b_sys) = (first * m * m, first * m * k);
            let av = a.slice(a_sys..a_sys + count * m * m);
            let bv = b.slice(b_sys..b_sys + count * m * k);
            let mut xv = x.slice_mut(b_sys..b_sys + count * m * k);
            let first_i = first as i32;
            let mut lb = self.stream.launch_builder(f);
            lb.arg(&av)
                .arg(&bv)
                .arg(&mut xv)
                .arg(&mut aug)
                .arg(&mut singular)
                .arg(&mi)
                .arg(&ki)
                .arg(&shared)
                .arg(&first_i);
            // SAFETY: the arguments match `solve_f32` / `solve_f64` for `T`; the views hold
            // `count` systems each and the scratch `count` systems' rows.
            unsafe { lb.launch(cfg) }.map_err(drv)?;
        }
        let first = self.stream.clone_dtoh(&singular).map_err(drv)?;
        Ok(match first.first() {
            Some(&i) if (0..n as i32).contains(&i) => Err(i as usize),
            _ => Ok(x),
        })
    }
}
