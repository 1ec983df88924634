//! The S5 simplified scan (lrnnx spec §4.3, `simplified_scan_fn`) on the GPU: the complex
//! diagonal recurrence over `P` channels, forward and backward. The projections around it
//! (`Bu = B·u`, `y = C·x`) are dense matmuls left to the caller, as in lrnnx's CUDA path.
//!
//! Per batch row, channel `p` and step `t` (layout `(batch, L, P[, 2])`, complex values as
//! interleaved (re, im) pairs; `ΔA_t = deltaA_t` when given, else `delta_t`, both raw):
//!
//! ```text
//! zoh      : Ā_t = exp(ΔA_t·A),                   γ̄_t = (exp(delta_t·A) − 1)/A
//! bilinear : Ā_t = (1 + ΔA_t·A/2)/(1 − ΔA_t·A/2), γ̄_t = delta_t/(1 − delta_t·A/2)
//! dirac    : Ā_t = exp(ΔA_t·A),                   γ̄_t = 1
//! x_t = Ā_t ⊙ x_{t−1} + γ̄_t ⊙ Bu_t                 (x_{−1} = 0)
//! ```
//!
//! The backward takes `dx = ∂L/∂Re x + i·∂L/∂Im x` and returns `dBu` (same convention),
//! `ddelta`, `ddeltaA` and `dA` (summed over batch and time) from the reverse scan of the adjoint
//! `λ_t = dx_t + conj(Ā_{t+1})·λ_{t+1}`: `dBu_t = conj(γ̄_t)·λ_t`, `∂L/∂Ā_t = λ_t·conj(x_{t−1})`,
//! `∂L/∂γ̄_t = λ_t·conj(Bu_t)`, chained through the rule. The kernels run a chunked parallel
//! scan (see [`SimplifiedTiling`]); every reduction runs in a fixed order (no atomics), so two
//! backward runs give bitwise equal gradients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::cuda::{load_kernels, nvrtc};
use crate::{Rule, ScanError};

/// The CUDA C source of the simplified scan kernels ([`SIMPLIFIED_SCAN_KERNELS`]).
pub const SIMPLIFIED_SCAN_SRC: &str = include_str!("../cuda/simplified_scan.cu");

/// The kernels' entry points in [`SIMPLIFIED_SCAN_SRC`]: forward, backward, and the batch sum
/// of `dA`.
pub const SIMPLIFIED_SCAN_KERNELS: [&str; 3] = ["sr_fwd", "sr_bwd", "sr_reduce"];

/// The rules lrnnx's simplified scan accepts.
pub const SIMPLIFIED_RULES: [Rule; 3] = [Rule::Zoh, Rule::Bilinear, Rule::Dirac];

/// Channels per block (one per lane of a warp).
const LANES: usize = 32;

fn err(m: String) -> ScanError {
    ScanError(format!("simplified scan: {m}"))
}

/// [`crate::cuda::drv`], named as this op's.
fn drv(e: cudarc::driver::DriverError) -> ScanError {
    err(crate::cuda::drv(e).0)
}

/// Sizes and options of one simplified scan call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimplifiedSpec {
    /// Batch size.
    pub batch: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// Channels `P` (lrnnx's `d_state`).
    pub channels: usize,
    /// Discretization: [`Rule::Zoh`], [`Rule::Bilinear`] or [`Rule::Dirac`].
    pub rule: Rule,
    /// A separate time step `deltaA` `(batch, L, P)` for `Ā` (event mode).
    pub has_delta_a: bool,
}

/// Launch geometry of each pass. A block owns 32 consecutive channels (one per lane) of one
/// batch row and walks the sequence in chunks of `warps·items` steps; warp `w` owns the `items`
/// consecutive steps `w·items..` of a chunk (so each warp access is one contiguous row of
/// channels), composes them into one affine map per channel, the `warps` maps are folded in order
/// through shared memory from the chunk's carried state, and each thread re-walks its steps. With
/// `prefetch` a thread issues the loads of its next chunk before working on the current one. The
/// forward and the backward are independent (the backward reads the forward's states), so each
/// has its own geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimplifiedTiling {
    /// Forward: warps per block = time segments per chunk (1..=32).
    pub warps: usize,
    /// Forward: consecutive steps per thread (1..=16).
    pub items: usize,
    /// Forward: load the next chunk while working on the current one.
    pub prefetch: bool,
    /// Backward: warps per block (1..=32).
    pub bwd_warps: usize,
    /// Backward: consecutive steps per thread (1..=16).
    pub bwd_items: usize,
    /// Backward: load the next chunk while working on the current one.
    pub bwd_prefetch: bool,
}

impl SimplifiedTiling {
    /// The default geometry for a problem: forward 8 steps a thread, backward 4, both
    /// prefetching; warps (a power of two, 2..=16) grown until about 4096 warps are in flight,
    /// but not beyond the length.
    pub fn auto(spec: &SimplifiedSpec) -> SimplifiedTiling {
        let blocks = spec.batch * spec.channels.div_ceil(LANES);
        let warps = |items: usize| {
            let mut w = 2;
            while w < 16 && blocks * w < 4096 && w * items < spec.len {
                w *= 2;
            }
            w
        };
        SimplifiedTiling {
            warps: warps(8),
            items: 8,
            prefetch: true,
            bwd_warps: warps(4),
            bwd_items: 4,
            bwd_prefetch: true,
        }
    }
}

/// Everything that selects one compiled kernel module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimplifiedVariant {
    /// Discretization.
    pub rule: Rule,
    /// See [`SimplifiedSpec::has_delta_a`].
    pub has_delta_a: bool,
    /// Launch geometry.
    pub tiling: SimplifiedTiling,
}

impl SimplifiedVariant {
    /// NVRTC `-D` options selecting this variant in [`SIMPLIFIED_SCAN_SRC`].
    pub fn defines(&self) -> Vec<String> {
        let t = &self.tiling;
        vec![
            format!("-DRULE={}", self.rule.code()),
            format!("-DHAS_DTA={}", u32::from(self.has_delta_a)),
            format!("-DNWARP={}", t.warps),
            format!("-DITEMS={}", t.items),
            format!("-DPREFETCH={}", u32::from(t.prefetch)),
            format!("-DBWD_NWARP={}", t.bwd_warps),
            format!("-DBWD_ITEMS={}", t.bwd_items),
            format!("-DBWD_PREFETCH={}", u32::from(t.bwd_prefetch)),
        ]
    }
}

impl SimplifiedSpec {
    /// Checks the sizes, the rule and the tiling (`None`: [`SimplifiedTiling::auto`]) and
    /// returns the kernel variant.
    pub fn check(&self, tiling: Option<SimplifiedTiling>) -> Result<SimplifiedVariant, ScanError> {
        if self.batch == 0 || self.len == 0 || self.channels == 0 {
            return Err(err(format!(
                "empty problem: batch {}, len {}, channels {}",
                self.batch, self.len, self.channels
            )));
        }
        let complex_floats = self
            .batch
            .checked_mul(self.len)
            .and_then(|x| x.checked_mul(self.channels))
            .and_then(|x| x.checked_mul(2));
        if self.len > (i32::MAX as usize) / 2
            || self.channels > (i32::MAX as usize) / 2
            || self.batch > 65535
            || complex_floats.is_none()
        {
            return Err(err(format!(
                "too large: batch {} (at most 65535), len {} and channels {} (at most 2^30 each)",
                self.batch, self.len, self.channels
            )));
        }
        if !SIMPLIFIED_RULES.contains(&self.rule) {
            return Err(err(format!(
                "rule {:?} not supported (zoh, bilinear or dirac)",
                self.rule
            )));
        }
        let tiling = tiling.unwrap_or_else(|| SimplifiedTiling::auto(self));
        let ok = |w: usize, i: usize| (1..=32).contains(&w) && (1..=16).contains(&i);
        if !ok(tiling.warps, tiling.items) || !ok(tiling.bwd_warps, tiling.bwd_items) {
            return Err(err(format!(
                "unsupported tiling {tiling:?} (warps 1..=32, items 1..=16)"
            )));
        }
        Ok(SimplifiedVariant {
            rule: self.rule,
            has_delta_a: self.has_delta_a,
            tiling,
        })
    }

    /// Floats of a complex `(batch, L, P, 2)` tensor (`Bu`, `x`, `dx`, `dBu`).
    pub fn complex_len(&self) -> usize {
        2 * self.real_len()
    }

    /// Floats of a real `(batch, L, P)` tensor (`delta`, `deltaA` and their gradients).
    pub fn real_len(&self) -> usize {
        self.batch * self.len * self.channels
    }

    /// Floats of `A` and `dA` `(P, 2)`.
    pub fn a_len(&self) -> usize {
        2 * self.channels
    }

    fn launch(&self, warps: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.channels.div_ceil(LANES) as u32, self.batch as u32, 1),
            block_dim: ((LANES * warps) as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Compiles the simplified scan source for `variant` to PTX for [`ARCH`](crate::cuda::ARCH) (all three kernels).
pub fn compile(variant: &SimplifiedVariant) -> Result<Ptx, ScanError> {
    nvrtc(
        SIMPLIFIED_SCAN_SRC,
        "simplified_scan.cu",
        variant.defines(),
        &format!("the simplified scan {variant:?}"),
    )
}

/// Device inputs of one call (views, so they may be sub-ranges of larger buffers; complex
/// tensors must start at an even float offset).
pub struct SimplifiedInputs<'a> {
    /// `Bu` `(batch, L, P, 2)`: the projected input `B·u`.
    pub bu: CudaView<'a, f32>,
    /// `delta` `(batch, L, P)`.
    pub delta: CudaView<'a, f32>,
    /// `deltaA` `(batch, L, P)`, exactly when [`SimplifiedSpec::has_delta_a`].
    pub delta_a: Option<CudaView<'a, f32>>,
    /// `A` `(P, 2)`.
    pub a: CudaView<'a, f32>,
}

/// Gradients from [`SimplifiedScan::backward`] (left on the device).
pub struct SimplifiedGrads {
    /// `∂L/∂Bu` `(batch, L, P, 2)`.
    pub dbu: CudaSlice<f32>,
    /// `∂L/∂delta` `(batch, L, P)`.
    pub ddelta: CudaSlice<f32>,
    /// `∂L/∂deltaA` `(batch, L, P)`, with `has_delta_a`.
    pub ddelta_a: Option<CudaSlice<f32>>,
    /// `∂L/∂A` `(P, 2)`, summed over batch and time.
    pub da: CudaSlice<f32>,
}

struct Module {
    _m: Arc<CudaModule>,
    fwd: CudaFunction,
    bwd: CudaFunction,
    reduce: CudaFunction,
}

/// The simplified scan kernels on one stream; compiled variants are cached for its lifetime.
pub struct SimplifiedScan {
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<SimplifiedVariant, Arc<Module>>>,
    dummy: CudaSlice<f32>,
    /// Launch geometry for new calls (`None`: [`SimplifiedTiling::auto`] per call).
    pub tiling: Option<SimplifiedTiling>,
}

impl SimplifiedScan {
    /// Opens device `ordinal` (check [`crate::cuda::gpu_available`] first) and uses its
    /// default stream.
    pub fn new(ordinal: usize) -> Result<Self, ScanError> {
        let ctx = crate::cuda::open_context(ordinal).map_err(|e| err(e.0))?;
        Self::with_stream(ctx.default_stream())
    }

    /// Launches on `stream` (e.g. candle's device stream), in its context.
    pub fn with_stream(stream: Arc<CudaStream>) -> Result<Self, ScanError> {
        let dummy = stream.alloc_zeros::<f32>(2).map_err(drv)?;
        Ok(SimplifiedScan {
            stream,
            modules: Mutex::new(HashMap::new()),
            dummy,
            tiling: None,
        })
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn module(&self, v: &SimplifiedVariant) -> Result<Arc<Module>, ScanError> {
        let mut map = self
            .modules
            .lock()
            .map_err(|_| err("module cache poisoned".into()))?;
        if let Some(m) = map.get(v) {
            return Ok(m.clone());
        }
        let (m, [fwd, bwd, reduce]) = load_kernels(
            self.stream.context(),
            compile(v)?,
            ["sr_fwd", "sr_bwd", "sr_reduce"],
        )
        .map_err(|e| err(e.0))?;
        let module = Arc::new(Module {
            fwd,
            bwd,
            reduce,
            _m: m,
        });
        map.insert(*v, module.clone());
        Ok(module)
    }

    /// Checks one tensor's length (and, for complex tensors, 8-byte alignment).
    fn need(
        &self,
        name: &str,
        t: &CudaView<f32>,
        want: usize,
        complex: bool,
    ) -> Result<(), ScanError> {
        if t.len() != want {
            return Err(err(format!(
                "tensor `{name}` has {} elements, expected {want}",
                t.len()
            )));
        }
        if complex {
            let (ptr, _sync) = t.device_ptr(&self.stream);
            if ptr % 8 != 0 {
                return Err(err(format!(
                    "tensor `{name}` must start at an even float offset (8-byte aligned)"
                )));
            }
        }
        Ok(())
    }

    fn check_inputs(
        &self,
        spec: &SimplifiedSpec,
        x: &SimplifiedInputs,
    ) -> Result<SimplifiedVariant, ScanError> {
        let v = spec.check(self.tiling)?;
        self.need("Bu", &x.bu, spec.complex_len(), true)?;
        self.need("delta", &x.delta, spec.real_len(), false)?;
        match (&x.delta_a, spec.has_delta_a) {
            (Some(t), true) => self.need("deltaA", t, spec.real_len(), false)?,
            (None, false) => {}
            (Some(_), false) => {
                return Err(err(
                    "tensor `deltaA` given but `has_delta_a` is off in the spec".into(),
                ))
            }
            (None, true) => return Err(err("tensor `deltaA` is missing".into())),
        }
        self.need("A", &x.a, spec.a_len(), false)?;
        Ok(v)
    }

    /// Forward: the state sequence `x` `(batch, L, P, 2)`.
    pub fn forward(
        &self,
        spec: &SimplifiedSpec,
        x: &SimplifiedInputs,
    ) -> Result<CudaSlice<f32>, ScanError> {
        let v = self.check_inputs(spec, x)?;
        let m = self.module(&v)?;
        let s = &self.stream;
        // SAFETY: any bit pattern is a valid f32; `sr_fwd` writes every element.
        let mut out = unsafe { s.alloc::<f32>(spec.complex_len()) }.map_err(drv)?;
        let dm = self.dummy.as_view();
        let (l, p) = (spec.len as i32, spec.channels as i32);
        let mut lb = s.launch_builder(&m.fwd);
        lb.arg(&x.bu)
            .arg(&x.delta)
            .arg(x.delta_a.as_ref().unwrap_or(&dm))
            .arg(&x.a)
            .arg(&mut out)
            .arg(&l)
            .arg(&p);
        // SAFETY: the arguments match `sr_fwd`; every length was checked above.
        unsafe { lb.launch(spec.launch(v.tiling.warps)) }.map_err(drv)?;
        Ok(out)
    }

    /// Backward from the forward's states `x` and the upstream gradient `dx` (both
    /// `(batch, L, P, 2)`); nothing is synchronized.
    pub fn backward(
        &self,
        spec: &SimplifiedSpec,
        x: &SimplifiedInputs,
        states: &CudaView<f32>,
        dx: &CudaView<f32>,
    ) -> Result<SimplifiedGrads, ScanError> {
        let v = self.check_inputs(spec, x)?;
        self.need("x", states, spec.complex_len(), true)?;
        self.need("dx", dx, spec.complex_len(), true)?;
        let m = self.module(&v)?;
        let s = &self.stream;
        // SAFETY (every `alloc` below): any bit pattern is a valid f32, and the next kernel
        // writes every element before anything reads it.
        let mut dbu = unsafe { s.alloc::<f32>(spec.complex_len()) }.map_err(drv)?;
        let mut ddelta = unsafe { s.alloc::<f32>(spec.real_len()) }.map_err(drv)?;
        let mut ddelta_a = if spec.has_delta_a {
            Some(unsafe { s.alloc::<f32>(spec.real_len()) }.map_err(drv)?)
        } else {
            None
        };
        let mut part = unsafe { s.alloc::<f32>(spec.batch * spec.a_len()) }.map_err(drv)?;
        let mut da = unsafe { s.alloc::<f32>(spec.a_len()) }.map_err(drv)?;
        let mut dm_out = s.alloc_zeros::<f32>(2).map_err(drv)?;
        let dm = self.dummy.as_view();
        let (l, p) = (spec.len as i32, spec.channels as i32);
        {
            let mut lb = s.launch_builder(&m.bwd);
            lb.arg(&x.bu)
                .arg(&x.delta)
                .arg(x.delta_a.as_ref().unwrap_or(&dm))
                .arg(&x.a)
                .arg(states)
                .arg(dx)
                .arg(&mut dbu)
                .arg(&mut ddelta)
                .arg(ddelta_a.as_mut().unwrap_or(&mut dm_out))
                .arg(&mut part)
                .arg(&l)
                .arg(&p);
            // SAFETY: the arguments match `sr_bwd`; every length was checked above.
            unsafe { lb.launch(spec.launch(v.tiling.bwd_warps)) }.map_err(drv)?;
        }
        {
            let (bsz, n) = (spec.batch as i32, spec.a_len() as i32);
            let mut lb = s.launch_builder(&m.reduce);
            lb.arg(&part).arg(&mut da).arg(&bsz).arg(&n);
            // SAFETY: the arguments match `sr_reduce`; `part` holds batch·2P floats.
            unsafe { lb.launch(LaunchConfig::for_num_elems(spec.a_len() as u32)) }.map_err(drv)?;
        }
        Ok(SimplifiedGrads {
            dbu,
            ddelta,
            ddelta_a,
            da,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SimplifiedSpec {
        SimplifiedSpec {
            batch: 8,
            len: 4096,
            channels: 1024,
            rule: Rule::Zoh,
            has_delta_a: false,
        }
    }

    #[test]
    fn auto_tiling_fills_the_gpu_within_the_length() {
        // 256 blocks: 16 warps
        let t = SimplifiedTiling::auto(&spec());
        assert_eq!((t.warps, t.items, t.bwd_warps, t.bwd_items), (16, 8, 16, 4));
        // a short sequence keeps the chunk near its length
        let s = SimplifiedSpec { len: 20, ..spec() };
        assert_eq!(SimplifiedTiling::auto(&s).warps, 4);
        // many blocks: 2 warps
        let s = SimplifiedSpec {
            batch: 64,
            channels: 4096,
            ..spec()
        };
        assert_eq!(SimplifiedTiling::auto(&s).warps, 2);
    }

    #[test]
    fn bad_specs_are_errors() {
        let e = SimplifiedSpec {
            rule: Rule::Mamba,
            ..spec()
        }
        .check(None)
        .unwrap_err();
        assert!(e.0.contains("Mamba"), "{e}");
        let e = SimplifiedSpec { len: 0, ..spec() }.check(None).unwrap_err();
        assert!(e.0.contains("empty"), "{e}");
        let t = SimplifiedTiling {
            bwd_warps: 33,
            ..SimplifiedTiling::auto(&spec())
        };
        assert!(spec().check(Some(t)).unwrap_err().0.contains("tiling"));
        let big = SimplifiedSpec {
            batch: 1 << 20,
            ..spec()
        };
        assert!(big.check(None).unwrap_err().0.contains("too large"));
        // each size within its own bound, the product past a usize
        let product = SimplifiedSpec {
            batch: 65535,
            len: 1 << 29,
            channels: 1 << 29,
            ..spec()
        };
        assert!(product.check(None).unwrap_err().0.contains("too large"));
        let v = spec().check(None).unwrap();
        assert!(v.defines().contains(&"-DRULE=1".to_string()));
    }
}
