//! The causal convolution of [`crate::conv`] through cuFFT, `O(L log L)` a row instead of the
//! direct sum's `O(L·min(K, L))`:
//!
//! ```text
//! n = the power of two ≥ L + K′ − 1,  K′ = min(K, L)        (no circular wrap reaches an output)
//! y  = IFFT_n( FFT_n(u) · FFT_n(k) )[0..L]
//! ∂u = IFFT_n( FFT_n(g) · conj FFT_n(k) )[0..L]                          (a correlation)
//! ∂k = IFFT_n( Σ_b FFT_n(g_b) · conj FFT_n(u_b) )[0..K′], 0 for taps ≥ L  (batch summed in order)
//! ```
//!
//! cuFFT (`libcufft`, part of every CUDA toolkit and of the `nvidia-cufft` wheel) is loaded at
//! run time, so a machine without it still runs the direct sums: [`cufft_available`] says
//! whether it loaded, `LRNNX_CUFFT` may name the library's path. The transforms are real,
//! in place, batched over rows of `n + 2` floats ([`FFT_CONV_SRC`]'s pointwise kernels pad,
//! multiply and take the outputs). cuFFT's plans are fixed algorithms, so two runs give the same
//! bits for the same shapes; the results differ from the direct sums by the FFT's rounding (below 5e-7 of the
//! largest value in `kernels/tests/gpu_conv.rs`, lengths up to 16384).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_int, c_longlong, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::conv::ConvSpec;
use crate::cuda::{drv, load_kernels, nvrtc};
use crate::ScanError;

/// The CUDA C source of the pointwise kernels around the transforms.
pub const FFT_CONV_SRC: &str = include_str!("../cuda/fft_conv.cu");

/// The entry points of [`FFT_CONV_SRC`].
pub const FFT_CONV_KERNELS: [&str; 4] = ["fc_pad", "fc_mul", "fc_xcorr_sum", "fc_take"];

/// The library names tried in order where `LRNNX_CUFFT` is not set: CUDA 13 ships cuFFT 12,
/// CUDA 12 cuFFT 11.
const CUFFT_NAMES: [&str; 3] = ["libcufft.so.12", "libcufft.so", "libcufft.so.11"];

/// Plans kept per [`FftConv`] (four a convolution shape) before the cache is emptied (after a
/// synchronize of the stream).
pub const MAX_PLANS: usize = 32;

const CUFFT_R2C: c_int = 0x2a;
const CUFFT_C2R: c_int = 0x2c;

type CreateFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type DestroyFn = unsafe extern "C" fn(c_int) -> c_int;
type SetStreamFn = unsafe extern "C" fn(c_int, *mut c_void) -> c_int;
#[allow(clippy::type_complexity)]
type MakePlanMany64Fn = unsafe extern "C" fn(
    c_int,
    c_int,
    *mut c_longlong,
    *mut c_longlong,
    c_longlong,
    c_longlong,
    *mut c_longlong,
    c_longlong,
    c_longlong,
    c_int,
    c_longlong,
    *mut usize,
) -> c_int;
type ExecFn = unsafe extern "C" fn(c_int, *mut c_void, *mut c_void) -> c_int;
type SetAutoAllocationFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type SetWorkAreaFn = unsafe extern "C" fn(c_int, *mut c_void) -> c_int;

/// The cuFFT entry points this module calls.
struct Cufft {
    _lib: libloading::Library,
    create: CreateFn,
    destroy: DestroyFn,
    set_stream: SetStreamFn,
    set_auto_allocation: SetAutoAllocationFn,
    set_work_area: SetWorkAreaFn,
    make_plan_many64: MakePlanMany64Fn,
    exec_r2c: ExecFn,
    exec_c2r: ExecFn,
}

impl Cufft {
    /// `LRNNX_CUFFT` alone where it is set, else the first of [`CUFFT_NAMES`] that loads with
    /// every entry point.
    fn load() -> Result<Cufft, String> {
        let names: Vec<String> = match std::env::var("LRNNX_CUFFT") {
            Ok(path) => vec![path],
            Err(_) => CUFFT_NAMES.iter().map(|s| s.to_string()).collect(),
        };
        let mut why = Vec::new();
        for name in &names {
            // SAFETY: loading cuFFT runs its initialisers only, which have no preconditions.
            let lib = match unsafe { libloading::Library::new(name) } {
                Ok(lib) => lib,
                Err(e) => {
                    why.push(format!("{name}: {e}"));
                    continue;
                }
            };
            // SAFETY: the symbols are cuFFT's C API with these signatures (cufft.h).
            let loaded = unsafe {
                (|| -> Result<Cufft, libloading::Error> {
                    Ok(Cufft {
                        create: *lib.get::<CreateFn>(b"cufftCreate\0")?,
                        destroy: *lib.get::<DestroyFn>(b"cufftDestroy\0")?,
                        set_stream: *lib.get::<SetStreamFn>(b"cufftSetStream\0")?,
                        set_auto_allocation: *lib
                            .get::<SetAutoAllocationFn>(b"cufftSetAutoAllocation\0")?,
                        set_work_area: *lib.get::<SetWorkAreaFn>(b"cufftSetWorkArea\0")?,
                        make_plan_many64: *lib.get::<MakePlanMany64Fn>(b"cufftMakePlanMany64\0")?,
                        exec_r2c: *lib.get::<ExecFn>(b"cufftExecR2C\0")?,
                        exec_c2r: *lib.get::<ExecFn>(b"cufftExecC2R\0")?,
                        _lib: lib,
                    })
                })()
            };
            match loaded {
                Ok(c) => return Ok(c),
                Err(e) => why.push(format!("{name}: {e}")),
            }
        }
        Err(why.join("; "))
    }
}

fn cufft() -> Result<&'static Cufft, ScanError> {
    static LIB: OnceLock<Result<Cufft, String>> = OnceLock::new();
    LIB.get_or_init(Cufft::load)
        .as_ref()
        .map_err(|why| ScanError(format!("cuFFT (libcufft) did not load ({why})")))
}

/// Whether cuFFT loaded: the library `LRNNX_CUFFT` names where it is set, else
/// `libcufft.so.12`, `libcufft.so` or `libcufft.so.11`.
pub fn cufft_available() -> bool {
    cufft().is_ok()
}

/// cuFFT's status for a failed allocation (`CUFFT_ALLOC_FAILED`).
const CUFFT_ALLOC_FAILED: c_int = 2;

fn check(what: &str, code: c_int) -> Result<(), ScanError> {
    match code {
        0 => Ok(()),
        CUFFT_ALLOC_FAILED => Err(ScanError(format!(
            "cuFFT {what} failed: CUFFT_ALLOC_FAILED (out of memory)"
        ))),
        _ => Err(ScanError(format!("cuFFT {what} failed with status {code}"))),
    }
}

/// Whether `e` (from this module) reports a lack of GPU memory, which a smaller problem or a
/// later call may not meet, rather than an unusable cuFFT.
pub fn out_of_memory(e: &ScanError) -> bool {
    e.0.contains("OUT_OF_MEMORY") || e.0.contains("CUFFT_ALLOC_FAILED")
}

/// The transform length for a convolution: the power of two ≥ `L + min(K, L) − 1` (≥ 2;
/// `usize::MAX` where that does not fit).
pub fn fft_len(spec: &ConvSpec) -> usize {
    spec.len
        .checked_add(spec.taps.min(spec.len))
        .and_then(|n| n.saturating_sub(1).max(2).checked_next_power_of_two())
        .unwrap_or(usize::MAX)
}

/// One batched in-place plan: `rows` real transforms of length `n` (rows of `n + 2` floats),
/// its work area allocated on the stream (from the stream's memory pool, not by cuFFT).
struct Plan {
    handle: c_int,
    lib: &'static Cufft,
    // dropped after `Drop::drop` destroyed the handle
    _work: Option<CudaSlice<u8>>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the handle came from cufftCreate and is destroyed once.
        unsafe { (self.lib.destroy)(self.handle) };
    }
}

/// Compiles [`FFT_CONV_SRC`] to PTX for [`ARCH`](crate::cuda::ARCH).
pub fn compile() -> Result<Ptx, ScanError> {
    nvrtc(
        FFT_CONV_SRC,
        "fft_conv.cu",
        Vec::new(),
        "the FFT conv kernels",
    )
}

struct Kernels {
    _m: Arc<CudaModule>,
    pad: CudaFunction,
    mul: CudaFunction,
    xcorr_sum: CudaFunction,
    take: CudaFunction,
}

/// The FFT convolution on one stream: pointwise kernels compiled on first use, plans cached by
/// (length, rows, direction), at most [`MAX_PLANS`], and used under a lock. A plan's work area
/// is allocated on the stream (the memory pool) and given to cuFFT; the stream is synchronized
/// before plans and their work areas are dropped.
pub struct FftConv {
    // declared before `stream`: dropped first (see `Drop`), while the context is alive
    plans: Mutex<HashMap<(usize, usize, bool), Plan>>,
    kernels: OnceLock<Kernels>,
    stream: Arc<CudaStream>,
    lib: &'static Cufft,
    /// Blocks of a pointwise launch: 16 an SM.
    max_blocks: usize,
}

impl Drop for FftConv {
    fn drop(&mut self) {
        // queued transforms finish before their plans go; errors here have no one to go to
        let _ = self.stream.context().bind_to_thread();
        let _ = self.stream.synchronize();
        if let Ok(mut plans) = self.plans.lock() {
            plans.clear();
        }
    }
}

/// A grid-stride launch over `n` elements, at most `max_blocks` blocks of 256 threads (16 an SM:
/// on the H100 the pointwise kernels took 0.50 ms at B16 × C256 × L4096 × K4096 with 16 blocks
/// an SM against 0.56 with 65536 blocks (two elements a thread) and 0.55 with 4 an SM).
fn elems(n: usize, max_blocks: usize) -> LaunchConfig {
    crate::cuda::grid_stride(n, max_blocks)
}

impl FftConv {
    /// On `stream`; an error naming the reason when cuFFT does not load.
    pub fn with_stream(stream: Arc<CudaStream>) -> Result<Self, ScanError> {
        Ok(FftConv {
            max_blocks: 16 * crate::cuda::sm_count(&stream),
            plans: Mutex::new(HashMap::new()),
            kernels: OnceLock::new(),
            stream,
            lib: cufft()?,
        })
    }

    fn kernels(&self) -> Result<&Kernels, ScanError> {
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        let (m, [pad, mul, xcorr_sum, take]) = load_kernels(
            self.stream.context(),
            compile()?,
            ["fc_pad", "fc_mul", "fc_xcorr_sum", "fc_take"],
        )?;
        let k = Kernels {
            pad,
            mul,
            xcorr_sum,
            take,
            _m: m,
        };
        Ok(self.kernels.get_or_init(|| k))
    }

    /// A plan for `rows` in-place real transforms of length `n` (rows of `n + 2` floats: `n/2 + 1`
    /// complex bins), R2C or (`inverse`) C2R, on the stream.
    fn plan(&self, n: usize, rows: usize, inverse: bool) -> Result<Plan, ScanError> {
        let mut handle: c_int = 0;
        // SAFETY: cuFFT C API with valid out-pointers and arrays of one length each (rank 1).
        unsafe {
            check("cufftCreate", (self.lib.create)(&mut handle))?;
            let mut plan = Plan {
                handle,
                lib: self.lib,
                _work: None,
            };
            check(
                "cufftSetAutoAllocation",
                (self.lib.set_auto_allocation)(handle, 0),
            )?;
            let (w, nf) = ((n + 2) as c_longlong, (n / 2 + 1) as c_longlong);
            let mut len = [n as c_longlong];
            let (mut real, mut cplx) = ([w], [nf]);
            let (ie, id, oe, od, ty) = if inverse {
                (&mut cplx, nf, &mut real, w, CUFFT_C2R)
            } else {
                (&mut real, w, &mut cplx, nf, CUFFT_R2C)
            };
            let mut work = 0usize;
            check(
                "plan",
                (self.lib.make_plan_many64)(
                    handle,
                    1,
                    len.as_mut_ptr(),
                    ie.as_mut_ptr(),
                    1,
                    id,
                    oe.as_mut_ptr(),
                    1,
                    od,
                    ty,
                    rows as c_longlong,
                    &mut work,
                ),
            )?;
            // SAFETY: bytes of scratch, written by cuFFT before it reads them
            let mut area = self.stream.alloc::<u8>(work.max(1)).map_err(drv)?;
            {
                let (wp, _sync) = area.device_ptr_mut(&self.stream);
                check(
                    "cufftSetWorkArea",
                    (self.lib.set_work_area)(handle, wp as *mut c_void),
                )?;
            }
            plan._work = Some(area);
            check(
                "cufftSetStream",
                (self.lib.set_stream)(handle, self.stream.cu_stream() as *mut c_void),
            )?;
            Ok(plan)
        }
    }

    /// Runs the forward (`inverse = false`: R2C) or inverse (C2R) transform of `rows` rows of
    /// `n + 2` floats in `x`, in place, on the stream.
    fn transform(
        &self,
        x: &mut CudaSlice<f32>,
        n: usize,
        rows: usize,
        inverse: bool,
    ) -> Result<(), ScanError> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| ScanError("FFT conv: plan cache poisoned".into()))?;
        self.stream.context().bind_to_thread().map_err(drv)?;
        if plans.len() >= MAX_PLANS && !plans.contains_key(&(n, rows, inverse)) {
            // cuFFT frees a plan's own device data at once: let queued runs finish first
            self.stream.synchronize().map_err(drv)?;
            plans.clear();
        }
        let plan = match plans.entry((n, rows, inverse)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.plan(n, rows, inverse)?),
        };
        let (ptr, _sync) = x.device_ptr_mut(&self.stream);
        let p = ptr as *mut c_void;
        // SAFETY: `x` holds rows·(n + 2) floats (the callers' allocations); the plan and its
        // work area are used on `self.stream` only, under the plan lock.
        let code = unsafe {
            if inverse {
                (self.lib.exec_c2r)(plan.handle, p, p)
            } else {
                (self.lib.exec_r2c)(plan.handle, p, p)
            }
        };
        check(if inverse { "C2R" } else { "R2C" }, code)
    }

    /// `rows` rows of `x` (row stride `src_stride`, the first `take` values of each) zero-padded
    /// to rows of `n + 2` floats and transformed.
    fn spectrum(
        &self,
        x: &CudaView<f32>,
        rows: usize,
        n: usize,
        take: usize,
        src_stride: usize,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let w = n + 2;
        let total = rows
            .checked_mul(w)
            .ok_or_else(|| ScanError("FFT conv: too large".into()))?;
        // SAFETY: any bit pattern is a valid f32; fc_pad writes every element.
        let mut out = unsafe { self.stream.alloc::<f32>(total) }.map_err(drv)?;
        let k = self.kernels()?;
        let (r, wi, t, s) = (rows as i64, w as i32, take as i32, src_stride as i32);
        let mut lb = self.stream.launch_builder(&k.pad);
        lb.arg(x).arg(&mut out).arg(&r).arg(&wi).arg(&t).arg(&s);
        // SAFETY: arguments match fc_pad; `x` holds rows·src_stride ≥ rows·take values.
        unsafe { lb.launch(elems(total, self.max_blocks)) }.map_err(drv)?;
        self.transform(&mut out, n, rows, false)?;
        Ok(out)
    }

    /// The inverse transform of `x` (`rows` spectra), then the first `valid` of `len` outputs a
    /// row (zeros after).
    fn outputs(
        &self,
        mut x: CudaSlice<f32>,
        rows: usize,
        n: usize,
        len: usize,
        valid: usize,
    ) -> Result<CudaSlice<f32>, ScanError> {
        self.transform(&mut x, n, rows, true)?;
        let total = rows * len;
        // SAFETY: as in `spectrum`; fc_take writes every element.
        let mut out = unsafe { self.stream.alloc::<f32>(total.max(1)) }.map_err(drv)?;
        let k = self.kernels()?;
        let (r, w, l, v) = (rows as i64, (n + 2) as i32, len as i32, valid as i32);
        let mut lb = self.stream.launch_builder(&k.take);
        lb.arg(&x).arg(&mut out).arg(&r).arg(&w).arg(&l).arg(&v);
        // SAFETY: arguments match fc_take; `x` holds rows·(n + 2) values, `out` rows·len.
        unsafe { lb.launch(elems(total, self.max_blocks)) }.map_err(drv)?;
        Ok(out)
    }

    /// `y` (`adjoint = false`) or `∂u` (`true`) of `x` `(batch, C, L)` and `k` `(C, K)`; the
    /// caller checked the lengths and that nothing is empty.
    pub(crate) fn correlate(
        &self,
        spec: &ConvSpec,
        x: &CudaView<f32>,
        k: &CudaView<f32>,
        adjoint: bool,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let n = fft_len(spec);
        let rows = spec.batch * spec.channels;
        let taps = spec.taps.min(spec.len);
        let kf = self.spectrum(k, spec.channels, n, taps, spec.taps)?;
        let mut xf = self.spectrum(x, rows, n, spec.len, spec.len)?;
        let kern = self.kernels()?;
        let nf = n / 2 + 1;
        let (r, c, w, nfi, cj, scale) = (
            rows as i64,
            spec.channels as i32,
            (n + 2) as i32,
            nf as i32,
            adjoint as i32,
            1.0f32 / n as f32,
        );
        let mut lb = self.stream.launch_builder(&kern.mul);
        lb.arg(&mut xf)
            .arg(&kf)
            .arg(&r)
            .arg(&c)
            .arg(&w)
            .arg(&nfi)
            .arg(&cj)
            .arg(&scale);
        // SAFETY: arguments match fc_mul; `xf` rows and `kf` C rows of n + 2 floats.
        unsafe { lb.launch(elems(rows * nf, self.max_blocks)) }.map_err(drv)?;
        self.outputs(xf, rows, n, spec.len, spec.len)
    }

    /// `∂k` `(C, K)` of `g` and `u` `(batch, C, L)`; the caller checked the lengths and that
    /// nothing is empty.
    pub(crate) fn grad_kernel(
        &self,
        spec: &ConvSpec,
        g: &CudaView<f32>,
        u: &CudaView<f32>,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let n = fft_len(spec);
        let rows = spec.batch * spec.channels;
        let gf = self.spectrum(g, rows, n, spec.len, spec.len)?;
        let uf = self.spectrum(u, rows, n, spec.len, spec.len)?;
        let w = n + 2;
        // SAFETY: any bit pattern is a valid f32; fc_xcorr_sum writes every bin (all n + 2
        // floats of a row).
        let mut sf = unsafe { self.stream.alloc::<f32>(spec.channels * w) }.map_err(drv)?;
        let kern = self.kernels()?;
        let nf = n / 2 + 1;
        let (b, c, wi, nfi, scale) = (
            spec.batch as i32,
            spec.channels as i32,
            w as i32,
            nf as i32,
            1.0f32 / n as f32,
        );
        let mut lb = self.stream.launch_builder(&kern.xcorr_sum);
        lb.arg(&gf)
            .arg(&uf)
            .arg(&mut sf)
            .arg(&b)
            .arg(&c)
            .arg(&wi)
            .arg(&nfi)
            .arg(&scale);
        // SAFETY: arguments match fc_xcorr_sum; `gf`, `uf` batch·C rows, `sf` C rows of w.
        unsafe { lb.launch(elems(spec.channels * nf, self.max_blocks)) }.map_err(drv)?;
        self.outputs(sf, spec.channels, n, spec.taps, spec.taps.min(spec.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transform is the smallest power of two that keeps every output clear of the
    /// circular wrap: n ≥ L + min(K, L) − 1.
    #[test]
    fn fft_len_avoids_the_wrap() {
        let spec = |len, taps| ConvSpec {
            batch: 1,
            channels: 1,
            len,
            taps,
        };
        assert_eq!(fft_len(&spec(4096, 4096)), 8192);
        assert_eq!(fft_len(&spec(4096, 4097)), 8192); // taps past L do not count
        assert_eq!(fft_len(&spec(4096, 1)), 4096);
        assert_eq!(fft_len(&spec(4097, 2)), 8192);
        assert_eq!(fft_len(&spec(1, 1)), 2);
        // past a usize: MAX (refused by the plan's size checks), no overflow panic
        assert_eq!(fft_len(&spec(usize::MAX, 3)), usize::MAX);
        assert_eq!(fft_len(&spec(usize::MAX / 2 + 2, 2)), usize::MAX);
        for (l, k) in [(37, 5), (1000, 1000), (2049, 300), (300, 4096), (5, 100)] {
            let n = fft_len(&spec(l, k));
            assert!(n.is_power_of_two() && n >= l + k.min(l) - 1 && n / 2 < l + k.min(l) - 1);
        }
    }
}
