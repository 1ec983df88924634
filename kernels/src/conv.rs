//! The per-channel causal convolution of `lrnnx-train`'s `fftconv` op (S4 / S4D) on the GPU,
//! and both of its gradients, as direct sums or (long kernels) through cuFFT:
//!
//! ```text
//! y[b,c,t]  = Σ_{s ≤ t, s < K} k[c,s]·u[b,c,t−s]                 u, y, g, ∂u: (batch, C, L)
//! ∂u[b,c,s] = Σ_{j < K, s+j < L} k[c,j]·g[b,c,s+j]              k, ∂k: (C, K)
//! ∂k[c,j]   = Σ_b Σ_{j ≤ t < L} g[b,c,t]·u[b,c,t−j]            (0 for j ≥ L)
//! ```
//!
//! Direct sums: a block of [`TILE`] threads owns `TILE·r` consecutive outputs of one row, `r` consecutive
//! ones a thread (`r` of [`CausalConv::outputs_for`]: 8 where that leaves enough blocks), and
//! walks the sum in chunks of [`CHUNK`] terms staged in shared memory; a thread's `r` outputs
//! share a window of signal values that slides through registers, so a term costs `r` FMAs and
//! about one shared load. Each thread adds its chunk's products in order into a chunk sum and
//! the chunk sums into its total — the same sums in the same order for every `r`, so the
//! results do not depend on it. Work `O(batch·C·L·min(K, L))`; every output is written by one
//! thread in a fixed order, so results are deterministic (no atomics).
//!
//! Long kernels go through cuFFT instead ([`crate::fft`], `O(L log L)` a row) where it loads:
//! [`ConvMethod::Auto`] takes it where its cost model ([`fft_pays`]) says it is faster, and
//! falls back to the direct sums where cuFFT is missing or fails (e.g. out of memory for its
//! padded spectra).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::cuda::{drv, load_kernels, nvrtc};
use crate::fft::{fft_len, out_of_memory, FftConv};
use crate::ScanError;

/// Longest signal and kernel: `i32::MAX` less a margin, as the kernels step a tile's or chunk's
/// start (up to 2048 / 256 steps) past `L` in `i32` arithmetic.
pub const MAX_CONV_LEN: usize = i32::MAX as usize - 4096;

/// The CUDA C source of the convolution kernels (`cc_fwd`, `cc_dx`, `cc_dk`, `cc_dk_reduce`).
pub const CAUSAL_CONV_SRC: &str = include_str!("../cuda/causal_conv.cu");

/// The kernels' entry points in [`CAUSAL_CONV_SRC`].
pub const CAUSAL_CONV_KERNELS: [&str; 4] = ["cc_fwd", "cc_dx", "cc_dk", "cc_dk_reduce"];

/// Threads per block.
pub const TILE: usize = 256;

/// The outputs a thread may own, largest first ([`CausalConv::outputs_for`]). 16 measured
/// slower than 8 on the H100 at L 4096 (y 2.99 against 2.61 ms, B16 × C256 × K4096) and at most
/// 4% faster at L 16384.
pub const OUTPUTS_PER_THREAD: [usize; 4] = [8, 4, 2, 1];

/// Blocks a launch should have for the GPU to be busy (about two an SM of an H100 / H200's
/// 132): [`CausalConv::outputs_for`] takes the most outputs a thread that keeps this many.
pub const CONV_TARGET_BLOCKS: usize = 264;

/// Terms per shared-memory chunk.
pub const CHUNK: usize = 256;

/// The cost of one element of the FFT path per `log₂ n` (pad, two real transforms, the
/// spectral product, the copy out) in terms of the direct sums' FMAs: fitted on an H100
/// (`conv_bench`: `y` at B16 × C256 × L4096 takes 0.465 ms direct at K 512 and 0.50 ms as an
/// FFT of 8192; at B8 × C128 × L16384 0.466 against 0.61 ms).
pub const FFT_COST_PER_LOG: usize = 21;

/// The effective taps `min(K, L)` from which [`ConvMethod::Auto`] computes `∂k` by FFT: the
/// direct `∂k` sums `batch·L` terms a thread and is latency-bound at small `K` (H100, B16 ×
/// C256 × L4096: 0.86 ms direct at K 64 to 256 against 0.52 ms as an FFT; B4 × C64 × L2048 × K64
/// 0.045 ms both).
pub const FFT_MIN_TAPS_DK: usize = 64;

/// Whether [`ConvMethod::Auto`] takes the FFT for `y` / `∂u` (`grad_kernel = false`) or `∂k`:
/// `y` / `∂u` where the direct terms `L·min(K, L)` a row cost at least
/// [`FFT_COST_PER_LOG`]`·n·log₂ n` (`n` = [`fft_len`]; about `K ≥ 550` at `L` 4096, `K ≥ 640` at
/// 16384); `∂k` from [`FFT_MIN_TAPS_DK`] effective taps.
pub fn fft_pays(spec: &ConvSpec, grad_kernel: bool) -> bool {
    let taps = spec.taps.min(spec.len);
    if grad_kernel {
        return taps >= FFT_MIN_TAPS_DK;
    }
    let n = fft_len(spec);
    let log = n.trailing_zeros() as usize;
    (spec.len as u128) * (taps as u128) >= (FFT_COST_PER_LOG * log) as u128 * n as u128
}

/// The longest transform the FFT path takes (its pointwise kernels index a row with 32-bit
/// integers); longer ones run direct.
pub const FFT_MAX_LEN: usize = 1 << 30;

/// How [`CausalConv`] computes a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvMethod {
    /// The FFT where cuFFT loads, the transform fits [`FFT_MAX_LEN`] and [`fft_pays`]; else the
    /// direct sums. An FFT that fails falls back to the direct sums: out of GPU memory for that
    /// call only; otherwise (cuFFT missing or unusable) this [`CausalConv`] keeps to them
    /// afterwards ([`CausalConv::fft_error`] says why).
    #[default]
    Auto,
    /// Always the direct sums (exact summation order, independent of `r`).
    Direct,
    /// Always the FFT; an error where cuFFT does not load or fails, or the transform is too
    /// long.
    Fft,
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
    /// Elements of a signal `(batch, C, L)` (`usize::MAX` where that overflows: no tensor
    /// matches it).
    pub fn signal_len(&self) -> usize {
        self.batch
            .saturating_mul(self.channels)
            .saturating_mul(self.len)
    }

    /// Elements of a kernel `(C, K)` (`usize::MAX` where that overflows).
    pub fn kernel_len(&self) -> usize {
        self.channels.saturating_mul(self.taps)
    }

    /// The sizes (no taps, or past the kernels' 32-bit indices, refused) and the named lengths
    /// `(name, got, want)`.
    fn check(&self, named: &[(&str, usize, usize)]) -> Result<(), ScanError> {
        if self.taps == 0 {
            return Err(ScanError(format!(
                "causal conv: the kernel has no taps {self:?}"
            )));
        }
        let tiles = self.len.div_ceil(TILE).max(self.taps.div_ceil(TILE));
        let blocks = self
            .batch
            .checked_mul(self.channels)
            .and_then(|r| r.checked_mul(tiles));
        if blocks.is_none_or(|b| b > i32::MAX as usize)
            || self.signal_len() == usize::MAX
            || self.kernel_len() == usize::MAX
            // the kernels step tile starts past L by up to a tile / chunk in i32
            || self.len > MAX_CONV_LEN
            || self.taps > MAX_CONV_LEN
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

    /// `∂k`'s split of the batch: `(groups, rows a group)`. One group when the channels give
    /// [`CONV_TARGET_BLOCKS`] blocks at 8 outputs a thread; else enough groups of consecutive
    /// batch rows for that (at most one a row), whose sums are added in order. It depends on
    /// the sizes only, so `∂k` does not depend on the outputs a thread.
    pub fn batch_groups(&self) -> (usize, usize) {
        let blocks = self
            .channels
            .saturating_mul(self.taps.div_ceil(TILE * 8))
            .max(1);
        let want = CONV_TARGET_BLOCKS
            .div_ceil(blocks)
            .clamp(1, self.batch.max(1));
        let per = self.batch.max(1).div_ceil(want);
        (self.batch.max(1).div_ceil(per), per)
    }
}

/// Compiles the convolution source to PTX for [`ARCH`](crate::cuda::ARCH), 8 outputs a thread.
pub fn compile() -> Result<Ptx, ScanError> {
    compile_with_outputs(8)
}

/// Compiles the convolution source to PTX for [`ARCH`](crate::cuda::ARCH), `outputs` outputs a thread (one of
/// [`OUTPUTS_PER_THREAD`]).
pub fn compile_with_outputs(outputs: usize) -> Result<Ptx, ScanError> {
    check_outputs(outputs)?;
    let defines = vec![
        format!("-DTILE={TILE}"),
        format!("-DCHUNK={CHUNK}"),
        format!("-DRPT={outputs}"),
    ];
    nvrtc(
        CAUSAL_CONV_SRC,
        "causal_conv.cu",
        defines,
        "the causal conv",
    )
}

fn check_outputs(outputs: usize) -> Result<(), ScanError> {
    if OUTPUTS_PER_THREAD.contains(&outputs) {
        Ok(())
    } else {
        Err(ScanError(format!(
            "causal conv: {outputs} outputs a thread, expected one of {OUTPUTS_PER_THREAD:?}"
        )))
    }
}

struct Module {
    _m: Arc<CudaModule>,
    fwd: CudaFunction,
    dx: CudaFunction,
    dk: CudaFunction,
    dk_reduce: CudaFunction,
}

/// The convolution kernels on one stream; each variant compiled once, on first use.
pub struct CausalConv {
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<usize, Arc<Module>>>,
    /// Outputs a thread for every launch (one of [`OUTPUTS_PER_THREAD`]); `None` (the default)
    /// chooses per launch with [`CausalConv::outputs_for`]. The results are the same either way.
    pub outputs_per_thread: Option<usize>,
    /// Direct sums or FFT ([`ConvMethod::Auto`] by default).
    pub method: ConvMethod,
    fft: OnceLock<Result<FftConv, ScanError>>,
    /// The first failure of the FFT path under [`ConvMethod::Auto`] other than out of memory
    /// (then direct sums only).
    fft_failed: Mutex<Option<ScanError>>,
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
            modules: Mutex::new(HashMap::new()),
            outputs_per_thread: None,
            method: ConvMethod::Auto,
            fft: OnceLock::new(),
            fft_failed: Mutex::new(None),
        }
    }

    /// Why [`ConvMethod::Auto`] stopped taking the FFT on this [`CausalConv`], if it did (a
    /// failure other than running out of memory).
    pub fn fft_error(&self) -> Option<ScanError> {
        self.fft_failed.lock().ok().and_then(|e| e.clone())
    }

    /// Runs `fft` where [`CausalConv::fft_for`] says, else (or, under [`ConvMethod::Auto`],
    /// where it fails) `direct`.
    fn either<T>(
        &self,
        spec: &ConvSpec,
        grad_kernel: bool,
        fft: impl FnOnce(&FftConv) -> Result<T, ScanError>,
        direct: impl FnOnce() -> Result<T, ScanError>,
    ) -> Result<T, ScanError> {
        let Some(f) = self.fft_for(spec, grad_kernel)? else {
            return direct();
        };
        match fft(f) {
            Err(e) if self.method == ConvMethod::Auto => {
                // out of memory: this call only; anything else: cuFFT is unusable here
                if !out_of_memory(&e) {
                    if let Ok(mut failed) = self.fft_failed.lock() {
                        failed.get_or_insert(e);
                    }
                }
                direct()
            }
            done => done,
        }
    }

    /// The FFT path for `spec`'s `y` / `∂u` (`grad_kernel = false`) or `∂k` under
    /// [`CausalConv::method`], `None` for the direct sums.
    fn fft_for(&self, spec: &ConvSpec, grad_kernel: bool) -> Result<Option<&FftConv>, ScanError> {
        let fits = fft_len(spec) <= FFT_MAX_LEN;
        let want = match self.method {
            ConvMethod::Direct => false,
            ConvMethod::Auto => fits && fft_pays(spec, grad_kernel),
            ConvMethod::Fft if !fits => {
                return Err(ScanError(format!(
                    "causal conv: {spec:?} needs an FFT longer than {FFT_MAX_LEN}"
                )))
            }
            ConvMethod::Fft => true,
        };
        if !want {
            return Ok(None);
        }
        if self.method == ConvMethod::Auto
            && self.fft_failed.lock().map(|e| e.is_some()).unwrap_or(true)
        {
            return Ok(None);
        }
        let fft = self
            .fft
            .get_or_init(|| FftConv::with_stream(self.stream.clone()));
        match (fft, self.method) {
            (Ok(f), _) => Ok(Some(f)),
            (Err(e), ConvMethod::Fft) => Err(ScanError(format!(
                "causal conv: {} (set LRNNX_CUFFT to its path or use ConvMethod::Direct)",
                e.0
            ))),
            (Err(_), _) => Ok(None),
        }
    }

    /// Outputs a thread for `rows` rows of `n` outputs: the most of [`OUTPUTS_PER_THREAD`] that
    /// still gives [`CONV_TARGET_BLOCKS`] blocks and leaves no thread of a row's one block idle
    /// (`TILE·r ≤ n`), else 1.
    pub fn outputs_for(rows: usize, n: usize) -> usize {
        OUTPUTS_PER_THREAD
            .into_iter()
            .find(|&r| {
                TILE * r <= n.max(TILE)
                    && rows.saturating_mul(n.div_ceil(TILE * r)) >= CONV_TARGET_BLOCKS
            })
            .unwrap_or(1)
    }

    /// The forced or chosen outputs a thread for `rows` rows of `n` outputs.
    fn outputs(&self, rows: usize, n: usize) -> Result<usize, ScanError> {
        match self.outputs_per_thread {
            Some(r) => check_outputs(r).map(|_| r),
            None => Ok(Self::outputs_for(rows, n)),
        }
    }

    fn module(&self, outputs: usize) -> Result<Arc<Module>, ScanError> {
        let mut map = self
            .modules
            .lock()
            .map_err(|_| ScanError("causal conv: module cache poisoned".into()))?;
        if let Some(m) = map.get(&outputs) {
            return Ok(m.clone());
        }
        let ptx = compile_with_outputs(outputs)?;
        let (m, [fwd, dx, dk, dk_reduce]) =
            load_kernels(self.stream.context(), ptx, CAUSAL_CONV_KERNELS)?;
        let module = Arc::new(Module {
            fwd,
            dx,
            dk,
            dk_reduce,
            _m: m,
        });
        map.insert(outputs, module.clone());
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

    /// `y` (`adjoint = false`) or `∂u` (`true`): one block per `TILE·r` outputs of a row.
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
        self.either(
            spec,
            false,
            |f| f.correlate(spec, x, k, adjoint),
            || self.direct(spec, x, k, adjoint),
        )
    }

    /// `y` or `∂u` as direct sums (lengths checked, not empty).
    fn direct(
        &self,
        spec: &ConvSpec,
        x: &CudaView<f32>,
        k: &CudaView<f32>,
        adjoint: bool,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let rows = spec.batch * spec.channels;
        let r = self.outputs(rows, spec.len)?;
        let m = self.module(r)?;
        // SAFETY: any bit pattern is a valid f32; the kernel writes every element.
        let mut y = unsafe { self.stream.alloc::<f32>(spec.signal_len()) }.map_err(drv)?;
        let tiles = spec.len.div_ceil(TILE * r);
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
        unsafe { lb.launch(blocks(rows * tiles)) }.map_err(drv)?;
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
        self.either(
            spec,
            true,
            |f| f.grad_kernel(spec, g, u),
            || self.direct_grad_kernel(spec, g, u),
        )
    }

    /// `∂k` as direct sums (lengths checked, not empty).
    fn direct_grad_kernel(
        &self,
        spec: &ConvSpec,
        g: &CudaView<f32>,
        u: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let (groups, per) = spec.batch_groups();
        let r = self.outputs(groups * spec.channels, spec.taps)?;
        let m = self.module(r)?;
        // SAFETY: as in `correlate`; the kernel writes every element.
        let mut dk = unsafe { self.stream.alloc::<f32>(spec.kernel_len()) }.map_err(drv)?;
        // the groups' sums (groups, C, K), summed below; one group writes dk itself
        // SAFETY: as above; every group's block writes every element of its part.
        let mut pdk = unsafe {
            self.stream.alloc::<f32>(if groups > 1 {
                groups * spec.kernel_len()
            } else {
                1
            })
        }
        .map_err(drv)?;
        let tiles = spec.taps.div_ceil(TILE * r);
        let (b, c, l, kk, t, bpg) = (
            spec.batch as i32,
            spec.channels as i32,
            spec.len as i32,
            spec.taps as i32,
            tiles as i32,
            per as i32,
        );
        let mut lb = self.stream.launch_builder(&m.dk);
        lb.arg(g).arg(u);
        if groups > 1 {
            lb.arg(&mut pdk);
        } else {
            lb.arg(&mut dk);
        }
        lb.arg(&b).arg(&c).arg(&l).arg(&kk).arg(&t).arg(&bpg);
        // SAFETY: the arguments match `cc_dk`; lengths checked above, the output holds
        // groups·C·K values.
        unsafe { lb.launch(blocks(groups * spec.channels * tiles)) }.map_err(drv)?;
        if groups > 1 {
            let (gn, n) = (groups as i32, spec.kernel_len() as i32);
            let mut lb = self.stream.launch_builder(&m.dk_reduce);
            lb.arg(&pdk).arg(&mut dk).arg(&gn).arg(&n);
            // SAFETY: the arguments match `cc_dk_reduce`; `pdk` holds groups·n values.
            unsafe { lb.launch(LaunchConfig::for_num_elems(n as u32)) }.map_err(drv)?;
        }
        Ok(dk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most outputs a thread that keeps the target's blocks; 1 when none does.
    #[test]
    fn outputs_keep_the_gpu_busy() {
        // 4096 rows of 4096: 2 tiles a row at 8 outputs a thread
        assert_eq!(CausalConv::outputs_for(4096, 4096), 8);
        // 256 channels of 4096 lags (the ∂k grid): 512 blocks at 8
        assert_eq!(CausalConv::outputs_for(256, 4096), 8);
        // 64 rows of 1024: 128 blocks at 4, 256 at 2, 256 at 1 (< 264)
        assert_eq!(CausalConv::outputs_for(64, 1024), 1);
        // 2048 rows of 1024: 8 outputs a thread would idle half the threads
        assert_eq!(CausalConv::outputs_for(2048, 1024), 4);
        assert_eq!(CausalConv::outputs_for(4096, 100), 1);
        // 66 rows of 2048: 66 at 8, 132 at 4, 264 at 2
        assert_eq!(CausalConv::outputs_for(66, 2048), 2);
        assert_eq!(CausalConv::outputs_for(0, 0), 1);
        assert_eq!(CausalConv::outputs_for(usize::MAX, usize::MAX), 8);
        for r in OUTPUTS_PER_THREAD {
            assert!(check_outputs(r).is_ok());
        }
        assert!(check_outputs(3).is_err() && check_outputs(16).is_err());
    }

    /// The batch groups of `∂k` cover the batch in order, one group when the channels suffice.
    #[test]
    fn batch_groups_cover_the_batch() {
        let spec = |batch, channels, taps| ConvSpec {
            batch,
            channels,
            len: 4096,
            taps,
        };
        assert_eq!(spec(16, 256, 4096).batch_groups(), (1, 16)); // 512 blocks at 8
        assert_eq!(spec(32, 64, 1024).batch_groups(), (5, 7)); // 64 blocks: 5 groups
        assert_eq!(spec(2, 1, 64).batch_groups(), (2, 1));
        assert_eq!(spec(0, 0, 1).batch_groups(), (1, 1));
        for (b, c, k) in [(1, 1, 1), (7, 3, 100), (64, 8, 5000), (3, 1000, 16)] {
            let (groups, per) = spec(b, c, k).batch_groups();
            assert!(groups >= 1 && groups <= b && (groups - 1) * per < b && groups * per >= b);
        }
    }

    /// Out-of-memory errors of the FFT path are told apart from an unusable cuFFT.
    #[test]
    fn out_of_memory_is_recognised() {
        let oom = ScanError(
            "CUDA driver: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        assert!(out_of_memory(&oom));
        assert!(out_of_memory(&ScanError(
            "cuFFT plan failed: CUFFT_ALLOC_FAILED (out of memory)".into()
        )));
        assert!(!out_of_memory(&ScanError(
            "cuFFT plan failed with status 5".into()
        )));
        assert!(!out_of_memory(&ScanError(
            "cuFFT (libcufft) did not load (x)".into()
        )));
    }

    /// The cost model's switch points: `y` / `∂u` between the measured K 512 (direct faster)
    /// and 1024 (FFT faster) at L 4096 and 16384; `∂k` from 64 taps; taps past L do not count.
    #[test]
    fn fft_pays_past_the_measured_crossover() {
        let spec = |len, taps| ConvSpec {
            batch: 8,
            channels: 128,
            len,
            taps,
        };
        for len in [4096, 16384] {
            assert!(!fft_pays(&spec(len, 512), false));
            assert!(fft_pays(&spec(len, 1024), false));
            assert!(fft_pays(&spec(len, len), false));
        }
        // the first K that pays at L 4096: 21·8192·13 / 4096 = 546
        assert!(!fft_pays(&spec(4096, 545), false) && fft_pays(&spec(4096, 546), false));
        assert!(!fft_pays(&spec(100, 100), false)); // short rows: 21·256·8 > 100·100
        assert!(!fft_pays(&spec(300, 4096), false) && !fft_pays(&spec(4096, 63), true));
        assert!(fft_pays(&spec(4096, 64), true) && fft_pays(&spec(100, 4096), true));
        assert!(!fft_pays(&spec(63, 4096), true));
    }
}
