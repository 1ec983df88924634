//! The diagonal linear recurrence of `lrnnx-train`'s `scan` module on the GPU:
//!
//! ```text
//! h_t = a_t ⊙ h_{t−1} + u_t                  (h_{−1} = 0; over axis 1 of (batch, L, N[, 2]))
//! λ_t = g_t + conj(a_{t+1}) ⊙ λ_{t+1}        (λ_{L−1} = g_{L−1})
//! ∂u_t = λ_t        ∂a_t = λ_t ⊙ conj(h_{t−1})   (∂a_0 = 0)
//! ```
//!
//! real or complex (interleaved (re, im) pairs), with `a` full-size or one shared `(N[, 2])`
//! row (its gradient then summed over time, per batch row).
//!
//! Two schedules ([`LinearSchedule`]): `Parallel` (the default) splits time over the 8 (or 16)
//! warps of a block (32 states a block, chunks of 8 steps a warp composed as affine maps and
//! folded in warp order) and, when `batch·⌈N/32⌉` blocks cannot fill the GPU, over segments of the sequence
//! (one more pass that composes each segment into one map); `Sequential` is one thread per
//! (batch row, state) walking time in order, the reference (the S5 / LRU / Centaurus states are
//! few, so it is latency-bound at short batch·N).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::cuda::{drv, load_kernels, nvrtc};
use crate::ScanError;

/// The CUDA C source of the linear scan kernels (`ls_fwd`, `ls_bwd`).
pub const LINEAR_SCAN_SRC: &str = include_str!("../cuda/linear_scan.cu");

/// How the kernels walk time (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearSchedule {
    /// One thread per (batch row, state), in order.
    Sequential,
    /// Chunks over a block's warps, and segments over blocks when the grid is small.
    Parallel,
}

/// Steps of one chunk of the parallel kernels at 8 warps a block: `PW` warps × `PK` steps (the
/// segments are whole numbers of these).
pub const PARALLEL_CHUNK: usize = 64;

/// Blocks of 256 threads the parallel kernels aim for when they split time into segments:
/// with fewer `batch·⌈N/32⌉` blocks than half of this the sequence is split. About two blocks an
/// SM of an H100 / H200 (132 SMs; the kernels' registers allow two): from a sweep on the H100
/// (`examples/linear_bench.rs`), one segment is fastest from 128 blocks up (segments cost one
/// more read of the inputs), 8 to 32 segments below 32 blocks.
pub const PARALLEL_TARGET_BLOCKS: usize = 256;

/// Most segments of the parallel kernels: the segments are the grid's `z` dimension.
pub const MAX_SEGMENTS: usize = 65535;

/// Sizes and options of one linear scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearSpec {
    /// Batch size.
    pub batch: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// States `N` (complex: pairs).
    pub state: usize,
    /// Complex values as interleaved (re, im).
    pub complex: bool,
    /// `a` is one `(N[, 2])` row used at every `(b, t)`.
    pub shared: bool,
}

impl LinearSpec {
    fn floats(&self) -> usize {
        self.state * if self.complex { 2 } else { 1 }
    }

    /// Elements of `u`, `h`, `g`: `batch·L·N` (`·2` complex).
    pub fn full_len(&self) -> usize {
        self.batch * self.len * self.floats()
    }

    /// Elements of `a`: the full size, or one row when shared.
    pub fn a_len(&self) -> usize {
        if self.shared {
            self.floats()
        } else {
            self.full_len()
        }
    }

    /// Elements of `∂a` from [`LinearScan::backward`]: the full size, or `batch` rows when
    /// shared.
    pub fn da_len(&self) -> usize {
        if self.shared {
            self.batch * self.floats()
        } else {
            self.full_len()
        }
    }

    /// The sizes (empty, or past the kernels' 32-bit indices, refused), `a`'s length and the
    /// length of the full-size tensor `(name, len)` (`u` in the forward, `h` in the backward).
    fn check(&self, a: usize, (name, u): (&str, usize)) -> Result<(), ScanError> {
        if self.batch == 0 || self.len == 0 || self.state == 0 {
            return Err(ScanError(format!("linear scan: empty problem {self:?}")));
        }
        let full = self
            .batch
            .checked_mul(self.len)
            .and_then(|x| x.checked_mul(self.floats()));
        if self
            .batch
            .checked_mul(self.floats())
            .is_none_or(|x| x > i32::MAX as usize)
            || self.len > i32::MAX as usize
            || full.is_none()
        {
            return Err(ScanError(format!("linear scan: too large {self:?}")));
        }
        if a != self.a_len() {
            return Err(ScanError(format!(
                "linear scan: tensor `a` has {a} elements, expected {}",
                self.a_len()
            )));
        }
        if u != self.full_len() {
            return Err(ScanError(format!(
                "linear scan: tensor `{name}` has {u} elements, expected {}",
                self.full_len()
            )));
        }
        Ok(())
    }

    fn launch(&self) -> LaunchConfig {
        LaunchConfig::for_num_elems((self.batch * self.state) as u32)
    }

    /// The parallel kernels' split of time into segments at the default target
    /// ([`PARALLEL_TARGET_BLOCKS`]); see [`LinearSpec::segments_for`].
    pub fn segments(&self) -> (usize, usize) {
        self.segments_for(PARALLEL_TARGET_BLOCKS)
    }

    /// The parallel kernels' split of time into segments, `(segments, steps a segment)`, for
    /// a target of `target` blocks: one segment when the `batch·⌈N/32⌉` blocks fill half the
    /// target, else `⌈target / blocks⌉` segments (fewer where a segment would be shorter than
    /// 4 chunks, and at most [`MAX_SEGMENTS`], the grid's `z` limit), each a whole number of
    /// chunks. An empty spec or a zero target gives one segment.
    pub fn segments_for(&self, target: usize) -> (usize, usize) {
        let blocks = self.batch.saturating_mul(self.state.div_ceil(32));
        if blocks == 0 || self.len == 0 || blocks.saturating_mul(2) >= target {
            return (1, self.len);
        }
        let want = target.div_ceil(blocks);
        let most = (self.len / (4 * PARALLEL_CHUNK)).clamp(1, MAX_SEGMENTS);
        let segs = want.min(most);
        let seg_len = self.len.div_ceil(segs).div_ceil(PARALLEL_CHUNK) * PARALLEL_CHUNK;
        (self.len.div_ceil(seg_len), seg_len)
    }

    /// Warps a block of the parallel kernels at a target of `target` blocks: 16 where the
    /// `batch·⌈N/32⌉` blocks need no segments but are fewer than the target (twice the warps in
    /// flight without a second read of the inputs), else 8. From the H100 sweep: B16 × L4096 ×
    /// N256 complex (128 blocks) fwd+bwd 0.64 → 0.51 ms; at 256 blocks and with segments 8
    /// warps measured faster.
    pub fn warps_for(&self, target: usize) -> usize {
        let blocks = self.batch.saturating_mul(self.state.div_ceil(32));
        if self.segments_for(target).0 == 1 && blocks < target {
            16
        } else {
            8
        }
    }

    /// The parallel kernels' grid over `segs` segments, `warps` warps a block.
    fn parallel_launch(&self, segs: usize, warps: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                self.state.div_ceil(32) as u32,
                self.batch as u32,
                segs as u32,
            ),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Compiles the linear scan source (real or complex, full or shared `a`) to PTX for [`ARCH`](crate::cuda::ARCH),
/// the parallel kernels with 8 warps a block.
pub fn compile(complex: bool, shared: bool) -> Result<Ptx, ScanError> {
    compile_with_warps(complex, shared, 8)
}

/// As [`compile`], the parallel kernels with `warps` warps a block (8 or 16, see
/// [`LinearSpec::warps_for`]).
pub fn compile_with_warps(complex: bool, shared: bool, warps: usize) -> Result<Ptx, ScanError> {
    if warps != 8 && warps != 16 {
        return Err(ScanError(format!(
            "linear scan: {warps} warps a block, expected 8 or 16"
        )));
    }
    let defines = vec![
        format!("-DCOMPLEX={}", u32::from(complex)),
        format!("-DSHARED={}", u32::from(shared)),
        format!("-DPW={warps}"),
    ];
    nvrtc(
        LINEAR_SCAN_SRC,
        "linear_scan.cu",
        defines,
        "the linear scan",
    )
}

struct Module {
    _m: Arc<CudaModule>,
    fwd: CudaFunction,
    bwd: CudaFunction,
    par_fwd: CudaFunction,
    par_bwd: CudaFunction,
    reduce_da: CudaFunction,
}

/// The linear scan kernels on one stream; compiled variants cached for its lifetime.
pub struct LinearScan {
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<(bool, bool, usize), Arc<Module>>>,
    /// The schedule of the kernels launched ([`LinearSchedule::Parallel`] by default).
    pub schedule: LinearSchedule,
    /// Blocks the parallel schedule aims for when it splits time into segments
    /// ([`LinearSpec::segments_for`]; [`PARALLEL_TARGET_BLOCKS`] by default).
    pub target_blocks: usize,
}

impl LinearScan {
    /// Launches on `stream` (e.g. candle's device stream).
    pub fn with_stream(stream: Arc<CudaStream>) -> Self {
        LinearScan {
            stream,
            modules: Mutex::new(HashMap::new()),
            schedule: LinearSchedule::Parallel,
            target_blocks: PARALLEL_TARGET_BLOCKS,
        }
    }

    /// The kernels of `spec`'s variant, the parallel ones with `warps` warps a block.
    fn module(&self, spec: &LinearSpec, warps: usize) -> Result<Arc<Module>, ScanError> {
        let key = (spec.complex, spec.shared, warps);
        let mut map = self
            .modules
            .lock()
            .map_err(|_| ScanError("linear scan: module cache poisoned".into()))?;
        if let Some(m) = map.get(&key) {
            return Ok(m.clone());
        }
        let ptx = compile_with_warps(spec.complex, spec.shared, warps)?;
        let (m, [fwd, bwd, par_fwd, par_bwd, reduce_da]) = load_kernels(
            self.stream.context(),
            ptx,
            ["ls_fwd", "ls_bwd", "lp_fwd", "lp_bwd", "lp_reduce_da"],
        )?;
        let module = Arc::new(Module {
            fwd,
            bwd,
            par_fwd,
            par_bwd,
            reduce_da,
            _m: m,
        });
        map.insert(key, module.clone());
        Ok(module)
    }

    /// Whether `spec` runs the parallel kernels: the schedule, and a batch within the grid's
    /// second dimension (65535; larger batches walk time sequentially).
    fn parallel(&self, spec: &LinearSpec) -> bool {
        self.schedule == LinearSchedule::Parallel && spec.batch <= 65535
    }

    /// Warps a block of the parallel kernels for `spec` (8 for the sequential schedule, whose
    /// kernels do not depend on it).
    fn warps(&self, spec: &LinearSpec) -> usize {
        if self.parallel(spec) {
            spec.warps_for(self.target_blocks)
        } else {
            8
        }
    }

    /// `h` (the shape of `u`) from `a` and `u`.
    pub fn forward(
        &self,
        spec: &LinearSpec,
        a: &CudaView<f32>,
        u: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        spec.check(a.len(), ("u", u.len()))?;
        let warps = self.warps(spec);
        let m = self.module(spec, warps)?;
        // SAFETY: any bit pattern is a valid f32; the kernel writes every element.
        let mut h = unsafe { self.stream.alloc::<f32>(spec.full_len()) }.map_err(drv)?;
        let (b, l, n) = (spec.batch as i32, spec.len as i32, spec.state as i32);
        if !self.parallel(spec) {
            let mut lb = self.stream.launch_builder(&m.fwd);
            lb.arg(a).arg(u).arg(&mut h).arg(&b).arg(&l).arg(&n);
            // SAFETY: the arguments match `ls_fwd`; lengths checked above.
            unsafe { lb.launch(spec.launch()) }.map_err(drv)?;
            return Ok(h);
        }
        let (segs, seg_len) = spec.segments_for(self.target_blocks);
        // the segments' maps (batch, segments, N, 2 values)
        // SAFETY: any bit pattern is a valid f32; pass 0 writes every map that pass 1 reads.
        let mut ps = unsafe {
            self.stream
                .alloc::<f32>(spec.batch * segs * spec.floats() * 2)
        }
        .map_err(drv)?;
        let (sl, sn) = (seg_len as i32, segs as i32);
        for pass in if segs > 1 { 0i32..2 } else { 1..2 } {
            let mut lb = self.stream.launch_builder(&m.par_fwd);
            lb.arg(a)
                .arg(u)
                .arg(&mut h)
                .arg(&mut ps)
                .arg(&b)
                .arg(&l)
                .arg(&n)
                .arg(&sl)
                .arg(&pass)
                .arg(&sn);
            // pass 0: the maps of every segment but the last (no segment folds that one)
            let grid_segs = if pass == 0 { segs - 1 } else { segs };
            // SAFETY: the arguments match `lp_fwd`; lengths checked above, `ps` sized for
            // `segs` segments (pass 0 writes every map that pass 1 reads).
            unsafe { lb.launch(spec.parallel_launch(grid_segs, warps)) }.map_err(drv)?;
        }
        Ok(h)
    }

    /// `(∂a, ∂u)` from `a`, the forward's `h` and the upstream gradient `g`; with a shared `a`,
    /// `∂a` is `(batch, N[, 2])` (sum over the batch left to the caller).
    pub fn backward(
        &self,
        spec: &LinearSpec,
        a: &CudaView<f32>,
        h: &CudaView<f32>,
        g: &CudaView<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>), ScanError> {
        spec.check(a.len(), ("h", h.len()))?;
        if g.len() != spec.full_len() {
            return Err(ScanError(format!(
                "linear scan: tensor `g` has {} elements, expected {}",
                g.len(),
                spec.full_len()
            )));
        }
        let warps = self.warps(spec);
        let m = self.module(spec, warps)?;
        // SAFETY: as in `forward`; the kernel writes every element of both.
        let mut du = unsafe { self.stream.alloc::<f32>(spec.full_len()) }.map_err(drv)?;
        // SAFETY: as above.
        let mut da = unsafe { self.stream.alloc::<f32>(spec.da_len()) }.map_err(drv)?;
        let (b, l, n) = (spec.batch as i32, spec.len as i32, spec.state as i32);
        if self.parallel(spec) {
            let (segs, seg_len) = spec.segments_for(self.target_blocks);
            let per_seg = spec.batch * segs * spec.floats();
            // SAFETY: pass 0 writes every map that pass 1 reads; pass 1 writes every partial
            // sum that the reduction reads.
            let mut ps = unsafe { self.stream.alloc::<f32>(per_seg * 2) }.map_err(drv)?;
            // SAFETY: as above.
            let mut pda = unsafe {
                self.stream
                    .alloc::<f32>(if spec.shared { per_seg } else { 1 })
            }
            .map_err(drv)?;
            let (sl, sn) = (seg_len as i32, segs as i32);
            for pass in if segs > 1 { 0i32..2 } else { 1..2 } {
                let mut lb = self.stream.launch_builder(&m.par_bwd);
                lb.arg(a)
                    .arg(h)
                    .arg(g)
                    .arg(&mut du)
                    .arg(&mut da)
                    .arg(&mut ps)
                    .arg(&mut pda)
                    .arg(&b)
                    .arg(&l)
                    .arg(&n)
                    .arg(&sl)
                    .arg(&pass)
                    .arg(&sn);
                // pass 0: the maps of every segment but the first (no segment folds that one)
                let grid_segs = if pass == 0 { segs - 1 } else { segs };
                // SAFETY: the arguments match `lp_bwd`; lengths checked above.
                unsafe { lb.launch(spec.parallel_launch(grid_segs, warps)) }.map_err(drv)?;
            }
            if spec.shared {
                let s = segs as i32;
                let mut lb = self.stream.launch_builder(&m.reduce_da);
                lb.arg(&pda).arg(&mut da).arg(&b).arg(&n).arg(&s);
                // SAFETY: the arguments match `lp_reduce_da`; `da` holds batch·N values.
                unsafe { lb.launch(spec.launch()) }.map_err(drv)?;
            }
            return Ok((da, du));
        }
        let mut lb = self.stream.launch_builder(&m.bwd);
        lb.arg(a)
            .arg(h)
            .arg(g)
            .arg(&mut du)
            .arg(&mut da)
            .arg(&b)
            .arg(&l)
            .arg(&n);
        // SAFETY: the arguments match `ls_bwd`; lengths checked above.
        unsafe { lb.launch(spec.launch()) }.map_err(drv)?;
        Ok((da, du))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(batch: usize, len: usize, state: usize) -> LinearSpec {
        LinearSpec {
            batch,
            len,
            state,
            complex: false,
            shared: false,
        }
    }

    /// The segments cover the sequence exactly, in whole chunks of at least 4 (but a short
    /// sequence's one), and there is one segment when the blocks fill half the target; at the
    /// default target and others.
    #[test]
    fn segments_cover_the_sequence_in_whole_chunks() {
        for target in [PARALLEL_TARGET_BLOCKS, 0, 1, 264, 8448] {
            for &(b, l, n) in &[
                (1, 1, 1),
                (2, 37, 5),
                (3, 1000, 48),
                (2, 600, 32),
                (1, 16384, 64),
                (4, 4096, 200),
                (40, 300, 512),
                (8, 4096, 1024),
                (1, 1_000_000, 32),
            ] {
                let s = spec(b, l, n);
                let (segs, seg_len) = s.segments_for(target);
                assert!(segs >= 1 && seg_len >= 1, "{s:?}");
                assert!(
                    (segs - 1) * seg_len < l && segs * seg_len >= l,
                    "{s:?}: {segs} × {seg_len}"
                );
                if segs > 1 {
                    assert_eq!(seg_len % PARALLEL_CHUNK, 0, "{s:?}");
                    assert!(seg_len >= 4 * PARALLEL_CHUNK, "{s:?}");
                    assert!(segs * b * n.div_ceil(32) <= 2 * target, "{s:?}");
                }
                if 2 * b * n.div_ceil(32) >= target {
                    assert_eq!((segs, seg_len), (1, l), "{s:?}");
                }
            }
        }
        assert_eq!(spec(2, 600, 32).segments(), (2, 320));
        // 16 warps exactly where one segment has fewer blocks than the target
        assert_eq!(spec(16, 4096, 256).warps_for(PARALLEL_TARGET_BLOCKS), 16); // 128 blocks
        assert_eq!(spec(8, 4096, 1024).warps_for(PARALLEL_TARGET_BLOCKS), 8); // 256 blocks
        assert_eq!(spec(16, 2048, 64).warps_for(PARALLEL_TARGET_BLOCKS), 8); // 8 segments
        assert_eq!(spec(4, 4096, 200).warps_for(32), 16); // 28 blocks, one segment
        assert_eq!(spec(4, 4096, 200).segments_for(264), (10, 448));
        assert_eq!(spec(1, 16384, 64).segments(), (64, 256));
        assert_eq!(spec(40, 300, 512).segments(), (1, 300));
    }

    /// Degenerate and oversized specs: one segment (no division by zero), at most
    /// [`MAX_SEGMENTS`] segments, and `check` refuses sizes past the kernels' indices (naming
    /// the full-size tensor it was given).
    #[test]
    fn degenerate_and_oversized_specs() {
        assert_eq!(spec(0, 100, 4).segments(), (1, 100));
        assert_eq!(spec(3, 100, 0).segments(), (1, 100));
        assert_eq!(spec(3, 0, 4).segments_for(usize::MAX), (1, 0));
        assert_eq!(spec(3, 100, 4).warps_for(0), 8);
        let (segs, seg_len) = spec(1, 1 << 40, 1).segments_for(usize::MAX);
        assert_eq!(segs, MAX_SEGMENTS);
        assert!(segs * seg_len >= 1 << 40);
        let big = spec(1 << 20, 1 << 20, 1 << 12);
        let e = big.check(1, ("u", 1)).unwrap_err();
        assert!(e.0.contains("too large"), "{e}");
        let huge = spec(usize::MAX / 2, 3, 5);
        assert!(huge.check(1, ("u", 1)).unwrap_err().0.contains("too large"));
        let ok = spec(2, 10, 3);
        let e = ok.check(ok.a_len(), ("h", 7)).unwrap_err();
        assert!(e.0.contains("`h` has 7 elements, expected 60"), "{e}");
        assert!(ok.check(ok.a_len(), ("u", ok.full_len())).is_ok());
    }
}
