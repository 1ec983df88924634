//! Fused pointwise kernels for `lrnnx-train`'s S4 / S4D blocks and GELU activations: each is one
//! pass over memory where candle's own ops take four to ten (an erf GELU is five kernels
//! forward and about ten backward, a permuted copy is a strided gather).
//!
//! ```text
//! gelu(x) = x·(1 + erf(x/√2))/2        act₀ = id, act₁ = gelu, act₂ = gelu∘gelu
//! gelu:       y[i]  = act_d(x[i] + bias[i mod cols])           (bias optional)
//! gelu_grad:  ∂x[i] = g[i]·act_d′(x[i] + bias[i mod cols])
//! swap:       y[b,c,m,r] = act_d(x[b,r,m,c])                  x (B, R, M, C) → y (B, C, M, R)
//! swap_grad:  ∂x[b,r,m,c] = g[b,c,m,r]·act_d′(x[b,r,m,c])
//! ```
//!
//! `swap` with `M = 1` is a batched transpose of the last two axes; S4D uses `M` for its
//! `channels` copies: `(B, H, ch, L) → (B, L, ch, H)`. The swaps go through 32 × 32 tiles in
//! shared memory, so reads and writes are both coalesced. Every output is written by one thread:
//! deterministic.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::cuda::{drv, load_kernels, nvrtc};
use crate::ScanError;

/// The CUDA C source of the pointwise kernels.
pub const POINTWISE_SRC: &str = include_str!("../cuda/pointwise.cu");

/// The kernels' entry points in [`POINTWISE_SRC`].
pub const POINTWISE_KERNELS: [&str; 4] = ["pw_gelu", "pw_gelu_grad", "pw_swap", "pw_swap_grad"];

/// The most GELUs applied in a row (`depth`): S4 / S4D apply two.
pub const MAX_DEPTH: u32 = 2;

/// Compiles [`POINTWISE_SRC`] to PTX for [`ARCH`](crate::cuda::ARCH).
pub fn compile() -> Result<Ptx, ScanError> {
    nvrtc(
        POINTWISE_SRC,
        "pointwise.cu",
        Vec::new(),
        "the pointwise kernels",
    )
}

/// The axes of a swap: `x` is `(batch, rows, mid, cols)`, the result `(batch, cols, mid, rows)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapDims {
    /// B.
    pub batch: usize,
    /// R (axis 1 of the input, axis 3 of the output).
    pub rows: usize,
    /// M (kept in place).
    pub mid: usize,
    /// C (axis 3 of the input, axis 1 of the output).
    pub cols: usize,
}

impl SwapDims {
    /// Elements of the tensor (`None` on overflow).
    pub fn elems(&self) -> Option<usize> {
        self.batch
            .checked_mul(self.rows)?
            .checked_mul(self.mid)?
            .checked_mul(self.cols)
    }

    /// The same tensor seen from the result's side: rows and cols exchanged.
    pub fn swapped(&self) -> Self {
        SwapDims {
            rows: self.cols,
            cols: self.rows,
            ..*self
        }
    }
}

struct Kernels {
    _m: Arc<CudaModule>,
    gelu: CudaFunction,
    gelu_grad: CudaFunction,
    swap: CudaFunction,
    swap_grad: CudaFunction,
}

/// The pointwise kernels on one stream, compiled on first use.
pub struct Pointwise {
    stream: Arc<CudaStream>,
    kernels: OnceLock<Kernels>,
    /// Blocks of an elementwise launch: 8 an SM (a full SM of 256-thread blocks).
    max_blocks: usize,
}

fn check_depth(depth: u32) -> Result<i32, ScanError> {
    if depth > MAX_DEPTH {
        return Err(ScanError(format!(
            "pointwise: at most {MAX_DEPTH} GELUs in a row, got {depth}"
        )));
    }
    Ok(depth as i32)
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), ScanError> {
    if got != want {
        return Err(ScanError(format!(
            "pointwise: `{what}` holds {got} values, expected {want}"
        )));
    }
    Ok(())
}

fn int(what: &str, v: usize) -> Result<i32, ScanError> {
    i32::try_from(v).map_err(|_| ScanError(format!("pointwise: {what} {v} exceeds 2³¹ − 1")))
}

impl Pointwise {
    /// Launches on `stream` (e.g. candle's device stream).
    pub fn with_stream(stream: Arc<CudaStream>) -> Self {
        Pointwise {
            max_blocks: 8 * crate::cuda::sm_count(&stream),
            stream,
            kernels: OnceLock::new(),
        }
    }

    fn kernels(&self) -> Result<&Kernels, ScanError> {
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        let (m, [gelu, gelu_grad, swap, swap_grad]) = load_kernels(
            self.stream.context(),
            compile()?,
            ["pw_gelu", "pw_gelu_grad", "pw_swap", "pw_swap_grad"],
        )?;
        let k = Kernels {
            gelu,
            gelu_grad,
            swap,
            swap_grad,
            _m: m,
        };
        Ok(self.kernels.get_or_init(|| k))
    }

    fn elems(&self, n: usize) -> LaunchConfig {
        crate::cuda::grid_stride(n, self.max_blocks)
    }

    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>, ScanError> {
        // SAFETY: every element is written by the kernel before it is read.
        unsafe { self.stream.alloc::<f32>(n.max(1)) }.map_err(drv)
    }

    /// `y = act_depth(x + bias)` (module doc), `bias` of `cols` values repeated over the rows of
    /// `x`; `cols` is ignored without a bias.
    pub fn gelu(
        &self,
        x: &CudaView<f32>,
        bias: Option<&CudaView<f32>>,
        cols: usize,
        depth: u32,
    ) -> Result<CudaSlice<f32>, ScanError> {
        self.elementwise(x, bias, None, cols, depth)
    }

    /// `∂x = g·act_depth′(x + bias)` (module doc).
    pub fn gelu_grad(
        &self,
        x: &CudaView<f32>,
        bias: Option<&CudaView<f32>>,
        g: &CudaView<f32>,
        cols: usize,
        depth: u32,
    ) -> Result<CudaSlice<f32>, ScanError> {
        self.elementwise(x, bias, Some(g), cols, depth)
    }

    fn elementwise(
        &self,
        x: &CudaView<f32>,
        bias: Option<&CudaView<f32>>,
        g: Option<&CudaView<f32>>,
        cols: usize,
        depth: u32,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let depth = check_depth(depth)?;
        let n = x.len();
        if let Some(g) = g {
            check_len("g", g.len(), n)?;
        }
        let has_bias = match bias {
            Some(b) => {
                check_len("bias", b.len(), cols)?;
                if n > 0 && (cols == 0 || n % cols != 0) {
                    return Err(ScanError(format!(
                        "pointwise: {n} values are not rows of a bias of {cols}"
                    )));
                }
                1i32
            }
            None => 0,
        };
        let cols = int("bias length", cols.max(1))?;
        let mut y = self.alloc(n)?;
        if n == 0 {
            return Ok(y);
        }
        let k = self.kernels()?;
        let bias = bias.unwrap_or(x);
        let n64 = n as i64;
        let mut lb = match g {
            None => {
                let mut lb = self.stream.launch_builder(&k.gelu);
                lb.arg(x).arg(bias).arg(&mut y);
                lb
            }
            Some(g) => {
                let mut lb = self.stream.launch_builder(&k.gelu_grad);
                lb.arg(x).arg(bias).arg(g).arg(&mut y);
                lb
            }
        };
        lb.arg(&n64).arg(&cols).arg(&has_bias).arg(&depth);
        // SAFETY: the arguments match `pw_gelu` / `pw_gelu_grad`: x, g and y hold n values,
        // bias `cols` (read only when has_bias).
        unsafe { lb.launch(self.elems(n)) }.map_err(drv)?;
        Ok(y)
    }

    fn swap_config(d: &SwapDims) -> Result<(LaunchConfig, i64), ScanError> {
        let bm = d
            .batch
            .checked_mul(d.mid)
            .ok_or_else(|| ScanError("pointwise: batch · mid overflows".into()))?;
        // the kernels index rows and columns in `int`, up to a whole tile past the end
        for (what, v) in [("rows", d.rows), ("cols", d.cols)] {
            if v > i32::MAX as usize - 32 {
                return Err(ScanError(format!(
                    "pointwise: {what} {v} exceeds 2³¹ − 33 (swap a smaller tensor)"
                )));
            }
        }
        let grid = (
            d.cols.div_ceil(32),
            d.rows.div_ceil(32).min(65535),
            bm.min(65535),
        );
        Ok((
            LaunchConfig {
                grid_dim: (
                    grid.0.max(1) as u32,
                    grid.1.max(1) as u32,
                    grid.2.max(1) as u32,
                ),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            },
            bm as i64,
        ))
    }

    /// `y (B, C, M, R) = act_depth(x (B, R, M, C))` with the axes 1 and 3 swapped (module doc).
    pub fn swap(
        &self,
        x: &CudaView<f32>,
        dims: SwapDims,
        depth: u32,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let depth = check_depth(depth)?;
        let n = dims
            .elems()
            .ok_or_else(|| ScanError(format!("pointwise: {dims:?} overflows")))?;
        check_len("x", x.len(), n)?;
        let mut y = self.alloc(n)?;
        if n == 0 {
            return Ok(y);
        }
        let (cfg, bm) = Self::swap_config(&dims)?;
        let (r, m, c) = (
            int("rows", dims.rows)?,
            int("mid", dims.mid)?,
            int("cols", dims.cols)?,
        );
        let k = self.kernels()?;
        let mut lb = self.stream.launch_builder(&k.swap);
        lb.arg(x)
            .arg(&mut y)
            .arg(&bm)
            .arg(&r)
            .arg(&m)
            .arg(&c)
            .arg(&depth);
        // SAFETY: the arguments match `pw_swap`; x and y hold B·R·M·C values.
        unsafe { lb.launch(cfg) }.map_err(drv)?;
        Ok(y)
    }

    /// `∂x (B, R, M, C)` of [`Pointwise::swap`] from the upstream `g (B, C, M, R)` and its
    /// input `x` (read only for `depth ≥ 1`).
    pub fn swap_grad(
        &self,
        g: &CudaView<f32>,
        x: &CudaView<f32>,
        dims: SwapDims,
        depth: u32,
    ) -> Result<CudaSlice<f32>, ScanError> {
        if depth == 0 {
            // the transpose back
            return self.swap(g, dims.swapped(), 0);
        }
        let depth = check_depth(depth)?;
        let n = dims
            .elems()
            .ok_or_else(|| ScanError(format!("pointwise: {dims:?} overflows")))?;
        check_len("g", g.len(), n)?;
        check_len("x", x.len(), n)?;
        let mut dx = self.alloc(n)?;
        if n == 0 {
            return Ok(dx);
        }
        let (cfg, bm) = Self::swap_config(&dims)?;
        let (r, m, c) = (
            int("rows", dims.rows)?,
            int("mid", dims.mid)?,
            int("cols", dims.cols)?,
        );
        let k = self.kernels()?;
        let mut lb = self.stream.launch_builder(&k.swap_grad);
        lb.arg(g)
            .arg(x)
            .arg(&mut dx)
            .arg(&bm)
            .arg(&r)
            .arg(&m)
            .arg(&c)
            .arg(&depth);
        // SAFETY: the arguments match `pw_swap_grad`; g, x and dx hold B·R·M·C values.
        unsafe { lb.launch(cfg) }.map_err(drv)?;
        Ok(dx)
    }
}
