//! CUDA scan kernels for lrnnx: the selective scan (lrnnx spec §4.1; real or complex `A`; the
//! mamba, zoh, bilinear, dirac rules and lrnnx's kernel-only rglru and s7 rules) forward and
//! backward, and the S7 scan with its projections (spec §4.5, module `s7` with the `cuda` feature), as CUDA C compiled at
//! run time with NVRTC (through cudarc, behind the `cuda` feature) and launched on plain device
//! buffers.
//!
//! Per channel `e`, state `n`, time `t` (layout `(batch, L, E)` for every per-element tensor):
//!
//! ```text
//! Δ_t  = softplus?(delta_t + delta_bias[e])          ΔA_t = deltaA_t (raw) or Δ_t
//! h_t[n] = Ā(ΔA_t·A[e,n])·h_{t−1}[n] + γ̄(Δ_t, A[e,n])·B_t[n]·u_t      (h_{−1} = 0)
//! y_t  = (Σ_n C_t[n]·h_t[n] + D[e]·u_t) · SiLU(z_t)        (complex A: 2·Re(Σ_n C_t[n]·h_t[n]))
//! ```
//!
//! with the discretizations of [`Rule`]. `B`, `C` are time-varying `(batch, L, G, N)` (channel
//! `e` reads group `e / (E/G)`) or time-invariant `(E, N)`. The kernels run a chunked scan (see
//! [`Tiling`]); the backward is deterministic: every reduction runs in a fixed order (no
//! floating-point atomics), so two runs give bitwise equal gradients.
//!
//! The `linear` module (feature `cuda`) runs the diagonal linear recurrence
//! `h_t = a_t ⊙ h_{t−1} + u_t` (real or complex) and its backward; the `conv` module (feature
//! `cuda`) the per-channel causal convolution of S4 / S4D and its two gradients; the
//! `pointwise` module (feature `cuda`) fused GELUs and axis swaps around it, and the
//! `vandermonde` module (feature `cuda`) S4D's kernel `K = 2·Re Σ_n w·z^t` and its gradients;
//! the `solve` module (feature `cuda`) the batched linear solve `X = A⁻¹B` of S4's
//! discretization.
//!
//! The `simplified` module (feature `cuda`) runs the S5 simplified scan (spec §4.3: complex
//! `x_t = Ā_t ⊙ x_{t−1} + γ̄_t ⊙ Bu_t` over `P` channels) forward and backward.
//!
//! Without the `cuda` feature the crate holds the kernel sources, the configuration and its shape
//! checks ([`ScanSpec::check`]); with it, `cuda::SelectiveScan` and `s7::S7Scan` compile and
//! launch.

use std::fmt;

#[cfg(feature = "cuda")]
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod fft;
#[cfg(feature = "cuda")]
pub mod linear;
#[cfg(feature = "cuda")]
pub mod pointwise;
#[cfg(feature = "cuda")]
pub mod s7;
#[cfg(feature = "cuda")]
pub mod simplified;
#[cfg(feature = "cuda")]
pub mod solve;
#[cfg(feature = "cuda")]
pub mod vandermonde;

/// The CUDA C source of the selective scan kernels (`ss_fwd`, `ss_bwd`, `ss_reduce_bc`,
/// `ss_reduce_e`).
pub const SELECTIVE_SCAN_SRC: &str = include_str!("../cuda/selective_scan.cu");

/// The CUDA C source of the sequential-mode `ss_fwd` / `ss_bwd` (see [`ScanMode`]), compiled
/// appended to [`SELECTIVE_SCAN_SRC`] with `SEQ=1`.
pub const SELECTIVE_SEQ_SRC: &str = include_str!("../cuda/selective_seq.cu");

/// The CUDA C source of the S7 projection kernels (spec §4.5) used around the s7-rule scan.
pub const S7_PROJ_SRC: &str = include_str!("../cuda/s7_proj.cu");

/// The S7 projection kernels' entry points, in [`S7_PROJ_SRC`].
pub const S7_PROJ_KERNELS: [&str; 5] =
    ["s7_in", "s7_out", "s7_out_bwd_x", "s7_in_bwd_u", "s7_outer"];

/// The kernels' entry points, in the source [`SELECTIVE_SCAN_SRC`].
pub const SELECTIVE_SCAN_KERNELS: [&str; 4] = ["ss_fwd", "ss_bwd", "ss_reduce_bc", "ss_reduce_e"];

/// Largest state size the kernels accept (the states are walked one at a time; `N` sets the
/// shared memory of `B_t`/`C_t` tiles).
pub const MAX_STATE: usize = 64;

/// Discretization of the selective scan (`x = ΔA·A`, `w = Δ·A`):
/// mamba `Ā = eˣ, γ̄ = Δ`; zoh `Ā = eˣ, γ̄ = expm1(w)/A` (`Δ` at `A = 0`);
/// bilinear `Ā = (1 + x/2)/(1 − x/2)` (`x` clamped to ±2e18), `γ̄ = Δ/(1 − w/2)`;
/// dirac `Ā = eˣ, γ̄ = 1`; rglru `Ā = A^ΔA, γ̄ = sqrt(1 − Ā²)`; s7 `Ā = 1 − 1/(ΔA² + ½), γ̄ = 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `Ā = exp(ΔA·A)`, `γ̄ = Δ` (lrnnx's default).
    Mamba,
    /// `Ā = exp(ΔA·A)`, `γ̄ = (exp(Δ·A) − 1)/A`.
    Zoh,
    /// `Ā = (1 + ΔA·A/2)/(1 − ΔA·A/2)`, `γ̄ = Δ/(1 − Δ·A/2)`.
    Bilinear,
    /// `Ā = exp(ΔA·A)`, `γ̄ = 1`.
    Dirac,
    /// lrnnx's kernel-only RG-LRU rule: `Ā = A^ΔA` (`A` the base in (0, 1)), `γ̄ = sqrt(1 − Ā²)`
    /// (spec §4.6 with `B = C = 1`). Real `A` only, no `deltaA`.
    Rglru,
    /// lrnnx's kernel-only S7 rule: `Ā = 1 − 1/(ΔA² + 1/2)` (`A` ignored), `γ̄ = 1` (spec §4.5).
    /// Real `A` only, no `deltaA`.
    S7,
}

impl Rule {
    /// The rule of an lrnnx `discretization` name.
    pub fn from_name(name: &str) -> Option<Rule> {
        match name {
            "mamba" => Some(Rule::Mamba),
            "zoh" => Some(Rule::Zoh),
            "bilinear" => Some(Rule::Bilinear),
            "dirac" => Some(Rule::Dirac),
            "rglru" => Some(Rule::Rglru),
            "s7" => Some(Rule::S7),
            _ => None,
        }
    }

    fn code(self) -> u32 {
        match self {
            Rule::Mamba => 0,
            Rule::Zoh => 1,
            Rule::Bilinear => 2,
            Rule::Dirac => 3,
            Rule::Rglru => 4,
            Rule::S7 => 5,
        }
    }
}

/// A shape or configuration error, naming the tensor or field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError(pub String);

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "selective scan: {}", self.0)
    }
}

impl std::error::Error for ScanError {}

/// Sizes and options of one selective scan call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanSpec {
    /// Batch size.
    pub batch: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// Channels `E` (lrnnx's `d`).
    pub channels: usize,
    /// State size `N` per channel.
    pub state: usize,
    /// Groups `G` of time-varying `B`/`C` (1 when ungrouped; ignored when `bc_fixed`).
    pub groups: usize,
    /// Discretization.
    pub rule: Rule,
    /// `B`, `C` time-invariant `(E, N)` instead of `(batch, L, G, N)`.
    pub bc_fixed: bool,
    /// A separate time step `deltaA` for `Ā` (STREAM / event mode; used raw).
    pub has_delta_a: bool,
    /// `delta_bias` `(E)` added to `delta`.
    pub has_delta_bias: bool,
    /// `Δ = softplus(delta + bias)` (threshold 20).
    pub softplus: bool,
    /// `D` skip `(E)`.
    pub has_d: bool,
    /// `z` gate `(batch, L, E)`: `y ← y·SiLU(z)`.
    pub has_z: bool,
    /// Complex `A` (lrnnx's complex64 `A`): `A`, `B_t`, `C_t` and the state hold (re, im)
    /// pairs interleaved (`A` `(E, N, 2)`, `B`/`C` `(batch, L, G, N, 2)`), and
    /// `y = 2·Re(Σ_n C_t[n]·h_t[n]) + D·u`. Needs time-varying `B`/`C`.
    pub complex: bool,
}

/// Launch geometry of the kernels (compile-time in the kernel source).
///
/// A block owns `channels_per_block` consecutive channels of one batch row and walks the
/// sequence in chunks of `seg·items` steps (the forward in order, the backward in reverse), the
/// chunk's inputs staged in shared memory. A thread owns `channels_per_thread` channels and
/// `items` consecutive steps of the chunk; the `seg` threads of a channel set scan their
/// per-thread affine maps `h ↦ P·h + S` with warp shuffles, one state at a time. The forward
/// stores the state at every chunk start for the backward. The forward and the backward share
/// `seg` and `items` (hence the chunk) and may differ in channels per thread and warps.
///
/// The sequential mode ([`ScanMode`]) has its own geometry: `seq_split` threads per channel
/// (each holding `N / seq_split` states in registers), `seq_warps` warps per block, chunks of
/// `seq_chunk` steps (the checkpoint interval) re-walked by the backward in sub-chunks of
/// `seq_sub` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Threads (lanes) per channel set along time (power of two, 1..=32).
    pub seg: usize,
    /// Consecutive steps per thread in a chunk (1..=16).
    pub items: usize,
    /// Channels per thread in the forward (1..=4).
    pub channels_per_thread: usize,
    /// Warps per block in the forward (power of two, 1..=16).
    pub warps: usize,
    /// Channels per thread in the backward (1..=4).
    pub bwd_channels_per_thread: usize,
    /// Warps per block in the backward (power of two, 1..=16).
    pub bwd_warps: usize,
    /// Which kernels run ([`ScanMode::Auto`] by default).
    pub mode: ScanMode,
    /// Sequential mode: threads per channel (1, 2 or 4).
    pub seq_split: usize,
    /// Sequential mode: warps per block (power of two, 1..=8).
    pub seq_warps: usize,
    /// Sequential mode: steps per chunk (a multiple of `seq_sub`, 8..=64).
    pub seq_chunk: usize,
    /// Sequential mode: steps per backward sub-chunk (2, 4 or 8).
    pub seq_sub: usize,
}

/// Which selective-scan kernels run.
///
/// * `Auto` (the default): `Sequential` where it applies and was measured faster — the mamba
///   rule without `deltaA`, even `N ≤ 16`, groups of a multiple of 128 channels (as measured)
///   and at least [`AUTO_SEQUENTIAL_CHANNELS`] channels over the batch (`batch · E`) — with the
///   measured geometry [`Tiling::auto_sequential`] (the `seq_*` fields are for `Sequential`);
///   else `Chunked`.
/// * `Chunked`: a block walks chunks of steps with several lanes per channel scanning affine
///   maps over time (parallel in time within a chunk): any problem.
/// * `Sequential`: a few threads per channel walk time in order with the channel's states
///   in registers (no scan operators); needs real `A`, time-varying `B`/`C`, `N ≤ 16`, groups of
///   a multiple of `32 / seq_split` channels (`seq_split` halved until it divides `N`), and
///   `batch · E` in the thousands to fill the GPU. At batch 8 × L 4096 × E 2048 × N 16 on an
///   H100, with Auto's geometry (4 warps a block, sub-chunks of 8), it is 1.64× (no `z`) and
///   1.65× (`z`) faster than the chunked kernels in fwd+bwd; with 8 warps and sub-chunks of 4,
///   1.59× and 1.56× (README, GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanMode {
    /// Sequential where it applies and pays off, else chunked.
    Auto,
    /// The chunked kernels.
    Chunked,
    /// The sequential kernels (an error where they do not apply).
    Sequential,
}

/// [`ScanMode::Auto`] picks the sequential kernels from this many channels over the batch
/// (`batch · E`) on: with fewer, the sequential mode's grid (one block per 64 channels with
/// Auto's geometry; the threshold was measured with blocks of 128) leaves an H100's 132 SMs
/// partly idle while the chunked kernels also spread time over lanes.
pub const AUTO_SEQUENTIAL_CHANNELS: usize = 16384;

/// Largest grid `y` (and `z`) dimension of a launch: the scans put the batch there.
pub const MAX_GRID_Y: usize = 65535;

/// Largest dynamic shared memory of the sequential kernels (H100/H200 allow 227 KiB a block).
pub const SEQ_MAX_SHARED_BYTES: usize = 224 * 1024;

/// Shared memory of one SM of an H100/H200 (of which 1 KiB per resident block is reserved):
/// whether two sequential backward blocks fit one SM.
pub const SM_SHARED_BYTES: usize = 228 * 1024;

impl Tiling {
    /// The default geometry: [`ScanMode::Auto`]; chunked: 4 lanes × 8 steps per channel set,
    /// forward 2 channels a thread and 4 warps, backward 1 and 4; sequential (when asked for):
    /// 2 threads a channel, 8 warps, chunks of 32 steps, backward sub-chunks of 4 (no register
    /// spills for any rule).
    pub const DEFAULT: Tiling = Tiling {
        seg: 4,
        items: 8,
        channels_per_thread: 2,
        warps: 4,
        bwd_channels_per_thread: 1,
        bwd_warps: 4,
        mode: ScanMode::Auto,
        seq_split: 2,
        seq_warps: 8,
        seq_chunk: 32,
        seq_sub: 4,
    };

    /// The sequential geometry [`ScanMode::Auto`] runs (the fastest measured at batch 8 ×
    /// L 4096 × E 2048 × N 16, mamba rule, on an H100): 2 threads a channel, 4 warps (64
    /// channels a block), chunks of 32 steps, backward sub-chunks of 8.
    pub const fn auto_sequential(self) -> Tiling {
        Tiling {
            seq_split: 2,
            seq_warps: 4,
            seq_chunk: 32,
            seq_sub: 8,
            ..self
        }
    }
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling::DEFAULT
    }
}

/// The tilings `examples/gpu_bench.rs` times (and `tests/nvrtc_compile.rs` compiles), the
/// default first.
pub const BENCH_TILINGS: [Tiling; 7] = {
    const fn t(seg: usize, items: usize, kf: usize, wf: usize, kb: usize, wb: usize) -> Tiling {
        Tiling {
            seg,
            items,
            channels_per_thread: kf,
            warps: wf,
            bwd_channels_per_thread: kb,
            bwd_warps: wb,
            mode: ScanMode::Chunked,
            ..Tiling::DEFAULT
        }
    }
    const fn q(split: usize, warps: usize, chunk: usize, sub: usize) -> Tiling {
        Tiling {
            mode: ScanMode::Sequential,
            seq_split: split,
            seq_warps: warps,
            seq_chunk: chunk,
            seq_sub: sub,
            ..Tiling::DEFAULT
        }
    }
    [
        Tiling::DEFAULT,
        q(2, 8, 32, 4),
        q(4, 8, 16, 4),
        q(4, 8, 32, 4),
        q(1, 4, 32, 4),
        t(4, 8, 2, 4, 1, 4),
        t(8, 8, 2, 4, 1, 8),
    ]
};

/// The kernel a geometry question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// `ss_fwd`.
    Forward,
    /// `ss_bwd` (and the reductions after it).
    Backward,
}

/// Everything that selects one compiled kernel variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// `N`.
    pub state: usize,
    /// Discretization.
    pub rule: Rule,
    /// Flags of [`ScanSpec`].
    pub bc_fixed: bool,
    /// See [`ScanSpec::has_delta_a`].
    pub has_delta_a: bool,
    /// See [`ScanSpec::has_delta_bias`].
    pub has_delta_bias: bool,
    /// See [`ScanSpec::softplus`].
    pub softplus: bool,
    /// See [`ScanSpec::has_d`].
    pub has_d: bool,
    /// See [`ScanSpec::has_z`].
    pub has_z: bool,
    /// See [`ScanSpec::complex`].
    pub complex: bool,
    /// Launch geometry (with time-varying `B`/`C`, `channels_per_block` divides the channels of
    /// a group).
    pub tiling: Tiling,
    /// The sequential kernels ([`ScanMode::Sequential`], resolved by [`ScanSpec::check`]).
    pub seq: bool,
}

impl Variant {
    /// NVRTC `-D` options selecting this variant's kernel `pass` in [`SELECTIVE_SCAN_SRC`].
    pub fn defines(&self, pass: Pass) -> Vec<String> {
        let b = |x: bool| u32::from(x);
        let (k, w) = self.per_pass(pass);
        vec![
            format!("-DNSTATE={}", self.state),
            format!("-DSEG={}", self.tiling.seg),
            format!("-DKCH={k}"),
            format!("-DITEMS={}", self.tiling.items),
            format!("-DNWARP={w}"),
            format!("-DRULE={}", self.rule.code()),
            format!("-DHAS_Z={}", b(self.has_z)),
            format!("-DHAS_D={}", b(self.has_d)),
            format!("-DHAS_DB={}", b(self.has_delta_bias)),
            format!("-DSOFTPLUS={}", b(self.softplus)),
            format!("-DHAS_DTA={}", b(self.has_delta_a)),
            format!("-DBC_FIXED={}", b(self.bc_fixed)),
            format!("-DCOMPLEX={}", b(self.complex)),
            format!("-DSEQ={}", b(self.seq)),
            format!("-DSPLIT={}", self.tiling.seq_split),
            format!("-DSWARP={}", self.tiling.seq_warps),
            format!("-DST={}", self.tiling.seq_chunk),
            format!("-DSS={}", self.tiling.seq_sub),
            format!("-DSEQ_BWD_BLOCKS={}", self.seq_bwd_blocks()),
        ]
    }

    /// Sequential backward blocks an SM should hold (the registers are capped to allow them):
    /// 2 with 4 threads a channel where two blocks' shared memory fits an SM, else 1.
    pub fn seq_bwd_blocks(&self) -> usize {
        let two_fit = 2 * (self.shared_bytes(Pass::Backward) + 1024) <= SM_SHARED_BYTES;
        if self.seq && self.tiling.seq_split == 4 && two_fit {
            2
        } else {
            1
        }
    }

    /// The CUDA source of this variant: [`SELECTIVE_SCAN_SRC`], followed by
    /// [`SELECTIVE_SEQ_SRC`] in the sequential mode.
    pub fn source(&self) -> String {
        if self.seq {
            format!("{SELECTIVE_SCAN_SRC}\n{SELECTIVE_SEQ_SRC}")
        } else {
            SELECTIVE_SCAN_SRC.to_string()
        }
    }

    /// (channels per thread, warps per block) of a pass.
    fn per_pass(&self, pass: Pass) -> (usize, usize) {
        let t = &self.tiling;
        match pass {
            Pass::Forward => (t.channels_per_thread, t.warps),
            Pass::Backward => (t.bwd_channels_per_thread, t.bwd_warps),
        }
    }

    /// Steps per chunk (`seg·items`; the checkpoint interval of the forward).
    pub fn chunk(&self) -> usize {
        if self.seq {
            self.tiling.seq_chunk
        } else {
            self.tiling.seg * self.tiling.items
        }
    }

    /// Channel sets per block (`32/seg` per warp).
    fn sets(&self, pass: Pass) -> usize {
        32 / self.tiling.seg * self.per_pass(pass).1
    }

    /// Channels per block.
    pub fn channels_per_block(&self, pass: Pass) -> usize {
        if self.seq {
            32 * self.tiling.seq_warps / self.tiling.seq_split
        } else {
            self.sets(pass) * self.per_pass(pass).0
        }
    }

    /// Threads per block.
    pub fn threads(&self, pass: Pass) -> usize {
        if self.seq {
            32 * self.tiling.seq_warps
        } else {
            32 * self.per_pass(pass).1
        }
    }

    /// Dynamic shared memory of a pass's kernel in bytes (the layout of the kernel source).
    pub fn shared_bytes(&self, pass: Pass) -> usize {
        if self.seq {
            // double-buffered [chunk][channels] tiles and B/C rows; the backward adds the
            // sub-chunk start states [chunk / sub][N / split][threads], with four threads a
            // channel a park area [chunk][warps][32], with a softplus its derivatives
            // [chunk][channels]
            let (st, cb) = (self.tiling.seq_chunk, self.channels_per_block(pass));
            let extra = usize::from(self.has_delta_a) + usize::from(self.has_z);
            let tiles = match pass {
                Pass::Forward => 2 + extra,
                Pass::Backward => 3 + extra,
            };
            // the backward stages 2 copies of each B/C row at N = 16 (xor-permuted state slots,
            // `XPERM` in selective_seq.cu)
            let bc_copies = match pass {
                Pass::Backward if self.state == 16 => 2,
                _ => 1,
            };
            let buf = tiles * st * cb + 2 * st * self.state * bc_copies;
            let sub = match pass {
                Pass::Forward => 0,
                Pass::Backward => {
                    let park = if self.tiling.seq_split == 4 {
                        st * self.tiling.seq_warps * 32
                    } else {
                        0
                    };
                    let sigma = if self.softplus { st * cb } else { 0 };
                    st / self.tiling.seq_sub
                        * (self.state / self.tiling.seq_split)
                        * self.threads(pass)
                        + park
                        + sigma
                }
            };
            return 4 * (2 * buf + sub);
        }
        let (cb, ts) = (self.channels_per_block(pass), self.chunk() + 4);
        let nv = if self.complex { 2 } else { 1 };
        let n = self.state * nv;
        let floats = match pass {
            Pass::Forward => {
                let tiles = 2 + usize::from(self.has_delta_a) + usize::from(self.has_z);
                let bc = if self.bc_fixed { 0 } else { 2 * n * ts };
                let per_channel = if self.bc_fixed { 4 } else { 2 } * cb * n;
                tiles * cb * ts + bc + per_channel
            }
            Pass::Backward => {
                let tiles = 3 + usize::from(self.has_z) + usize::from(self.has_delta_a);
                let bc = if self.bc_fixed {
                    0
                } else {
                    2 * n * ts + 4 * nv * self.sets(pass) * ts + self.chunk() * 2 * n
                };
                let carries = if self.bc_fixed { 8 } else { 4 } * cb * n;
                tiles * cb * ts + bc + carries
            }
        };
        4 * floats
    }
}

/// Most dynamic shared memory per block the kernels may use (H100/H200 allow 227 KiB).
pub const MAX_SHARED_BYTES: usize = 160 * 1024;

impl ScanSpec {
    /// The scan of a Mamba block (lrnnx's `selective_scan_fn` as `Mamba` calls it): mamba rule,
    /// real `A`, ungrouped time-varying `B`/`C`, `Δ = softplus(delta + bias)`, `D` skip and `z`
    /// gate; change fields with struct update syntax (`ScanSpec { has_z: false, ..spec }`).
    pub const fn mamba(batch: usize, len: usize, channels: usize, state: usize) -> ScanSpec {
        ScanSpec {
            batch,
            len,
            channels,
            state,
            groups: 1,
            rule: Rule::Mamba,
            bc_fixed: false,
            has_delta_a: false,
            has_delta_bias: true,
            softplus: true,
            has_d: true,
            has_z: true,
            complex: false,
        }
    }

    /// Checks the sizes and picks the kernel variant for a tiling. With time-varying `B`/`C` the
    /// block's channels must lie in one group: warps, then channels per thread, are halved (and
    /// the lanes per channel set doubled) until the channels per block divide the group size;
    /// then the steps per thread are halved while the shared memory exceeds
    /// [`MAX_SHARED_BYTES`].
    pub fn check(&self, tiling: Tiling) -> Result<Variant, ScanError> {
        let err = |m: String| Err(ScanError(m));
        if self.batch == 0 || self.len == 0 || self.channels == 0 {
            return err(format!(
                "empty problem: batch {}, len {}, channels {}",
                self.batch, self.len, self.channels
            ));
        }
        if self.state == 0 || self.state > MAX_STATE {
            return err(format!("state size {} not in 1..={MAX_STATE}", self.state));
        }
        self.check_size()?;
        let groups = if self.bc_fixed { 1 } else { self.groups };
        if groups == 0 || !self.channels.is_multiple_of(groups) {
            return err(format!(
                "groups {} must divide the channels {}",
                self.groups, self.channels
            ));
        }
        let pow2 = |x: usize, hi: usize| x.is_power_of_two() && x <= hi;
        if !pow2(tiling.seg, 32)
            || !matches!(tiling.items, 1..=16)
            || !matches!(tiling.channels_per_thread, 1..=4)
            || !pow2(tiling.warps, 16)
            || !matches!(tiling.bwd_channels_per_thread, 1..=4)
            || !pow2(tiling.bwd_warps, 16)
        {
            return err(format!("unsupported tiling {tiling:?}"));
        }
        if self.complex && self.bc_fixed {
            return err("complex A needs time-varying B/C (bc_fixed is not supported)".into());
        }
        if matches!(self.rule, Rule::Rglru | Rule::S7) && (self.complex || self.has_delta_a) {
            return err(format!(
                "rule {:?} takes real A and no deltaA (complex {}, deltaA {})",
                self.rule, self.complex, self.has_delta_a
            ));
        }
        let mut v = Variant {
            state: self.state,
            rule: self.rule,
            bc_fixed: self.bc_fixed,
            has_delta_a: self.has_delta_a,
            has_delta_bias: self.has_delta_bias,
            softplus: self.softplus,
            has_d: self.has_d,
            has_z: self.has_z,
            complex: self.complex,
            tiling,
            seq: false,
        };
        match tiling.mode {
            ScanMode::Sequential => return self.sequential(v),
            ScanMode::Auto if self.auto_sequential() => {
                let auto = Variant {
                    tiling: tiling.auto_sequential(),
                    ..v
                };
                if let Ok(seq) = self.sequential(auto) {
                    return Ok(seq);
                }
            }
            _ => {}
        }
        if !self.bc_fixed {
            let per_group = self.channels / groups;
            for pass in [Pass::Forward, Pass::Backward] {
                while !per_group.is_multiple_of(v.channels_per_block(pass)) {
                    let t = &mut v.tiling;
                    let (k, w) = match pass {
                        Pass::Forward => (&mut t.channels_per_thread, &mut t.warps),
                        Pass::Backward => (&mut t.bwd_channels_per_thread, &mut t.bwd_warps),
                    };
                    if *w > 1 {
                        *w /= 2;
                    } else if *k > 1 {
                        *k -= 1;
                    } else {
                        t.seg *= 2;
                    }
                }
            }
        }
        // shorter chunks while the shared memory does not fit
        loop {
            let bytes = v
                .shared_bytes(Pass::Forward)
                .max(v.shared_bytes(Pass::Backward));
            if bytes <= MAX_SHARED_BYTES {
                return Ok(v);
            }
            if v.tiling.items == 1 {
                return err(format!(
                    "tiling {tiling:?}: {bytes} bytes of shared memory for state {}",
                    self.state
                ));
            }
            v.tiling.items /= 2;
        }
    }

    /// Refuses sizes past what the launches and the kernels' 32-bit indices take: the batch is the
    /// grid's `y` (≤ 65535); `L` (plus a chunk) and `E·(3N' + 2)` (N' = [`state_floats`]) fit an
    /// `i32`; every buffer's element count, up to the backward's `B·L·E·2N'` bound on its block
    /// partials, fits a `usize`, and the reductions' `B·L·G·N'` a `u32` launch count.
    ///
    /// [`state_floats`]: Self::state_floats
    fn check_size(&self) -> Result<(), ScanError> {
        let too_large = || {
            ScanError(format!(
                "too large: batch {} (at most {MAX_GRID_Y}), len {}, channels {}, groups {}, \
                 state {} (every buffer's elements must fit the kernels' indices)",
                self.batch, self.len, self.channels, self.groups, self.state
            ))
        };
        let nf = self.state_floats();
        let i32_max = i32::MAX as usize;
        let ble = self
            .batch
            .checked_mul(self.len)
            .and_then(|x| x.checked_mul(self.channels));
        let partials = ble.and_then(|x| x.checked_mul(2 * nf));
        let bc = self
            .batch
            .checked_mul(self.len)
            .and_then(|x| x.checked_mul(self.groups.max(1)))
            .and_then(|x| x.checked_mul(nf));
        let per_channel = self.channels.checked_mul(3 * nf + 2);
        if self.batch > MAX_GRID_Y
            || self.len > i32_max - 4096
            || partials.is_none()
            || bc.is_none_or(|x| x > u32::MAX as usize)
            || per_channel.is_none_or(|x| x > i32_max)
        {
            return Err(too_large());
        }
        Ok(())
    }

    /// Whether [`ScanMode::Auto`] takes the sequential kernels (the measured case: see there).
    fn auto_sequential(&self) -> bool {
        self.rule == Rule::Mamba
            && !self.has_delta_a
            && !self.complex
            && !self.bc_fixed
            && self.state <= 16
            && self.state.is_multiple_of(2)
            && (self.channels / self.groups.max(1)).is_multiple_of(128)
            && self.batch.saturating_mul(self.channels) >= AUTO_SEQUENTIAL_CHANNELS
    }

    /// The sequential-mode variant of `v` (see [`ScanMode`]), or why it does not apply.
    fn sequential(&self, mut v: Variant) -> Result<Variant, ScanError> {
        let t = &mut v.tiling;
        let err = |m: String| Err(ScanError(format!("sequential mode: {m}")));
        if self.complex || self.bc_fixed {
            return err("needs real A and time-varying B/C".into());
        }
        if self.state > 16 {
            return err(format!("needs N <= 16 (N = {})", self.state));
        }
        let supported = matches!(t.seq_split, 1 | 2 | 4)
            && t.seq_warps.is_power_of_two()
            && t.seq_warps <= 8
            && matches!(t.seq_sub, 2 | 4 | 8)
            && (8..=64).contains(&t.seq_chunk)
            && t.seq_chunk.is_multiple_of(t.seq_sub);
        if !supported {
            return err(format!("unsupported tiling {t:?}"));
        }
        while !self.state.is_multiple_of(t.seq_split) {
            t.seq_split /= 2;
        }
        let per_group = self.channels / self.groups;
        let warp_channels = 32 / t.seq_split;
        if !per_group.is_multiple_of(warp_channels) {
            return err(format!(
                "the channels of a group ({per_group}) must be a multiple of {warp_channels}"
            ));
        }
        while !per_group.is_multiple_of(warp_channels * t.seq_warps) {
            t.seq_warps /= 2;
        }
        v.seq = true;
        while v.shared_bytes(Pass::Backward) > SEQ_MAX_SHARED_BYTES {
            if !v.tiling.seq_chunk.is_multiple_of(2 * v.tiling.seq_sub) {
                return err(format!(
                    "{} bytes of shared memory",
                    v.shared_bytes(Pass::Backward)
                ));
            }
            v.tiling.seq_chunk /= 2;
        }
        Ok(v)
    }

    /// Floats per state vector: `N`, or `2N` with complex `A`.
    pub fn state_floats(&self) -> usize {
        self.state * if self.complex { 2 } else { 1 }
    }

    /// Expected element counts of the inputs, by name, for shape checks:
    /// `u`, `delta`, `deltaA`, `z`: `B·L·E`; `A`: `E·N` (`E·N·2` complex); `B`, `C`: `B·L·G·N`
    /// (`·2` complex) or `E·N`; `D`, `delta_bias`: `E`. `None` for another name, or where the
    /// count overflows a `usize`.
    pub fn expected_len(&self, name: &str) -> Option<usize> {
        let ble = || self.batch.checked_mul(self.len)?.checked_mul(self.channels);
        let en = || self.channels.checked_mul(self.state_floats());
        match name {
            "u" | "delta" | "deltaA" | "z" => ble(),
            "A" => en(),
            "B" | "C" if self.bc_fixed => en(),
            "B" | "C" => self
                .batch
                .checked_mul(self.len)?
                .checked_mul(self.groups)?
                .checked_mul(self.state_floats()),
            "D" | "delta_bias" => Some(self.channels),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScanSpec {
        ScanSpec {
            groups: 2,
            rule: Rule::Zoh,
            ..ScanSpec::mamba(2, 64, 8, 4)
        }
    }

    /// Sizes past the launches' grid and the kernels' 32-bit indices are refused with an
    /// error (no overflow panic), and `expected_len` knows only the inputs' names.
    #[test]
    fn oversized_specs_are_refused() {
        let t = Tiling::DEFAULT;
        let too_large = |s: ScanSpec| match s.check(t) {
            Err(e) => assert!(e.0.contains("too large"), "{s:?}: {e}"),
            Ok(_) => panic!("{s:?} accepted"),
        };
        too_large(ScanSpec::mamba(MAX_GRID_Y + 1, 8, 8, 4));
        too_large(ScanSpec::mamba(1 << 40, 1 << 20, 1024, 16));
        too_large(ScanSpec::mamba(1, i32::MAX as usize, 8, 4));
        too_large(ScanSpec::mamba(1, 8, 1 << 28, 16));
        // B·L·G·N past a u32 (the dB/dC reduction's launch count)
        too_large(ScanSpec {
            groups: 64,
            ..ScanSpec::mamba(17, 65536, 64, 64)
        });
        assert!(ScanSpec::mamba(MAX_GRID_Y, 8, 8, 4).check(t).is_ok());
        let s = spec();
        assert_eq!(s.expected_len("u"), Some(2 * 64 * 8));
        assert_eq!(s.expected_len("B"), Some(2 * 64 * 2 * 4));
        assert_eq!(s.expected_len("A"), Some(8 * 4));
        assert_eq!(s.expected_len("delta_bias"), Some(8));
        assert_eq!(s.expected_len("dleta"), None);
        assert_eq!(ScanSpec::mamba(usize::MAX, 2, 2, 2).expected_len("u"), None);
    }

    #[test]
    fn blocks_lie_inside_a_group() {
        const CHUNKED: Tiling = Tiling {
            mode: ScanMode::Chunked,
            ..Tiling::DEFAULT
        };
        let f = Pass::Forward;
        let bw = Pass::Backward;
        // 8 channels in 2 groups of 4: 4 sets a warp (8 lanes each), 1 channel a thread
        let v = spec().check(CHUNKED).unwrap();
        assert_eq!((v.channels_per_block(f), v.channels_per_block(bw)), (4, 4));
        assert_eq!((v.tiling.warps, v.tiling.channels_per_thread), (1, 1));
        let mut s = spec();
        s.channels = 2048;
        s.groups = 1;
        s.state = 16;
        let v = s.check(CHUNKED).unwrap();
        // 4 lanes a set, 8 sets a warp, 4 warps: forward 2 channels a thread, backward 1
        assert_eq!(
            (
                v.channels_per_block(f),
                v.channels_per_block(bw),
                v.threads(f),
                v.chunk()
            ),
            (64, 32, 128, 32)
        );
        // 96 channels in 4 groups of 24: 8 channels a block
        s.channels = 96;
        s.groups = 4;
        let v = s.check(CHUNKED).unwrap();
        assert_eq!((v.channels_per_block(f), v.channels_per_block(bw)), (8, 8));
        // groups of 5 channels: one channel a block, 32 lanes a set
        s.channels = 20;
        let v = s.check(CHUNKED).unwrap();
        assert_eq!((v.channels_per_block(bw), v.tiling.seg), (1, 32));
        s.state = 64;
        let v = s.check(CHUNKED).unwrap();
        assert!(v.shared_bytes(bw) <= MAX_SHARED_BYTES);
    }

    #[test]
    fn sequential_mode_geometry_and_refusals() {
        let seq = Tiling {
            mode: ScanMode::Sequential,
            ..Tiling::default()
        };
        let mut s = spec();
        s.channels = 2048;
        s.groups = 1;
        s.state = 16;
        s.batch = 8;
        let v = s.check(seq).unwrap();
        let bw = Pass::Backward;
        // 2 lanes a channel, 8 warps: 128 channels a block; chunks of 32 steps
        assert!(v.seq);
        assert_eq!(
            (v.channels_per_block(bw), v.threads(bw), v.chunk()),
            (128, 256, 32)
        );
        assert!(v.shared_bytes(bw) <= SEQ_MAX_SHARED_BYTES);
        assert_eq!((v.tiling.seq_sub, v.seq_bwd_blocks()), (4, 1));
        // ΔA and z together: with sub-chunks of 4 (8 start states a thread) 256 KiB at chunk
        // 32, so the chunk halves to fit; with sub-chunks of 8 (4 start states) 224 KiB (with
        // the backward's two copies of each B/C row at N = 16)
        s.has_delta_a = true;
        let v = s.check(seq).unwrap();
        assert_eq!(v.chunk(), 16);
        assert!(v.shared_bytes(bw) <= SEQ_MAX_SHARED_BYTES);
        let sub8 = Tiling { seq_sub: 8, ..seq };
        let v = s.check(sub8).unwrap();
        assert_eq!((v.chunk(), v.shared_bytes(bw)), (32, 224 * 1024));
        // 4 lanes a channel (64 channels a block): two backward blocks an SM where their
        // shared memory fits (76 KiB at chunks of 16), one where it does not (136 KiB at 32)
        s.has_delta_a = false;
        let split4 = |chunk, sub| Tiling {
            seq_split: 4,
            seq_chunk: chunk,
            seq_sub: sub,
            ..seq
        };
        let v = s.check(split4(16, 4)).unwrap();
        assert_eq!((v.shared_bytes(bw), v.seq_bwd_blocks()), (76 * 1024, 2));
        let v = s.check(split4(32, 8)).unwrap();
        assert_eq!((v.shared_bytes(bw), v.seq_bwd_blocks()), (136 * 1024, 1));
        // odd state: one thread a channel; 64 channels in 2 groups: blocks of 32 channels
        let mut s = spec();
        s.channels = 64;
        s.groups = 2;
        s.state = 5;
        let v = s.check(seq).unwrap();
        assert_eq!((v.tiling.seq_split, v.channels_per_block(bw)), (1, 32));
        // N = 6 with 4 lanes asked for: 2 lanes a channel (16 channels a warp)
        let v = ScanSpec { state: 6, ..s }
            .check(Tiling {
                seq_split: 4,
                ..seq
            })
            .unwrap();
        assert_eq!((v.tiling.seq_split, v.channels_per_block(bw)), (2, 32));
        // Auto keeps this small problem on the chunked kernels
        assert!(!s.check(Tiling::default()).unwrap().seq);
        // refusals name the reason
        let mut c = s;
        c.complex = true;
        assert!(c.check(seq).unwrap_err().0.contains("real A"));
        let mut c = s;
        c.state = 32;
        assert!(c.check(seq).unwrap_err().0.contains("N <= 16"));
        let mut c = s;
        c.channels = 96;
        c.groups = 4;
        assert!(c.check(seq).unwrap_err().0.contains("multiple of"));
        let mut c = s;
        c.bc_fixed = true;
        assert!(c.check(seq).is_err());
    }

    #[test]
    fn auto_mode_takes_the_sequential_kernels_only_where_measured_faster() {
        assert_eq!(Tiling::default().mode, ScanMode::Auto);
        let bw = Pass::Backward;
        // the bench's problem: batch 8 × E 2048, mamba, N 16 -> sequential, 2 lanes, 4 warps
        // (64 channels a block), sub 8
        let mut s = ScanSpec::mamba(8, 64, 2048, 16);
        let v = s.check(Tiling::default()).unwrap();
        assert!(v.seq);
        assert_eq!(
            (
                v.tiling.seq_split,
                v.tiling.seq_sub,
                v.channels_per_block(bw)
            ),
            (2, 8, 64)
        );
        // Sequential asked for with Auto's geometry resolves the same way
        let explicit = Tiling {
            mode: ScanMode::Sequential,
            ..Tiling::default().auto_sequential()
        };
        let e = s.check(explicit).unwrap();
        assert!(e.seq);
        assert_eq!(
            Tiling {
                mode: ScanMode::Auto,
                ..e.tiling
            },
            v.tiling
        );
        assert_eq!(e.shared_bytes(bw), v.shared_bytes(bw));
        // at the threshold and just below it
        s.batch = AUTO_SEQUENTIAL_CHANNELS / s.channels;
        assert!(s.check(Tiling::default()).unwrap().seq);
        s.batch -= 1;
        assert!(!s.check(Tiling::default()).unwrap().seq);
        s.batch = 8;
        // unmeasured or unsupported cases stay chunked
        for change in 0..7 {
            let mut c = s;
            match change {
                0 => c.rule = Rule::Zoh,
                1 => c.has_delta_a = true,
                2 => c.state = 15,
                3 => c.state = 32,
                4 => (c.batch, c.channels, c.groups) = (16, 2040, 85), // 24 channels a group
                5 => (c.channels, c.groups) = (2048, 32), // 64 channels a group: unmeasured
                _ => c.complex = true,
            }
            let v = c.check(Tiling::default()).unwrap();
            assert!(!v.seq, "case {change}: {c:?}");
        }
        // an explicit Chunked never turns sequential
        let chunked = Tiling {
            mode: ScanMode::Chunked,
            ..Tiling::default()
        };
        assert!(!s.check(chunked).unwrap().seq);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut s = spec();
        s.groups = 3;
        assert!(s
            .check(Tiling::default())
            .unwrap_err()
            .0
            .contains("groups 3"));
        let mut s = spec();
        s.state = 0;
        assert!(s.check(Tiling::default()).is_err());
        assert!(spec()
            .check(Tiling {
                warps: 3,
                ..Tiling::default()
            })
            .is_err());
        assert!(spec()
            .check(Tiling {
                items: 0,
                ..Tiling::default()
            })
            .is_err());
    }
}
