//! CUDA scan kernels for lrnnx: the selective scan (lrnnx spec §4.1, real `A`) forward and
//! backward, as CUDA C compiled at run time with NVRTC (through cudarc, behind the `cuda`
//! feature) and launched on plain device buffers.
//!
//! Per channel `e`, state `n`, time `t` (layout `(batch, L, E)` for every per-element tensor):
//!
//! ```text
//! Δ_t  = softplus?(delta_t + delta_bias[e])          ΔA_t = deltaA_t (raw) or Δ_t
//! h_t[n] = Ā(ΔA_t·A[e,n])·h_{t−1}[n] + γ̄(Δ_t, A[e,n])·B_t[n]·u_t      (h_{−1} = 0)
//! y_t  = (Σ_n C_t[n]·h_t[n] + D[e]·u_t) · SiLU(z_t)
//! ```
//!
//! with the discretizations of [`Rule`]. `B`, `C` are time-varying `(batch, L, G, N)` (channel
//! `e` reads group `e / (E/G)`) or time-invariant `(E, N)`. The backward is deterministic: every
//! reduction runs in a fixed order (no floating-point atomics), so two runs give bitwise equal
//! gradients.
//!
//! Without the `cuda` feature the crate holds the kernel source, the configuration and its shape
//! checks ([`ScanSpec::check`]); with it, `cuda::SelectiveScan` compiles and launches.

use std::fmt;

#[cfg(feature = "cuda")]
pub mod cuda;

/// The CUDA C source of the selective scan kernels (`ss_fwd`, `ss_bwd`, `ss_reduce_bc`,
/// `ss_reduce_e`).
pub const SELECTIVE_SCAN_SRC: &str = include_str!("../cuda/selective_scan.cu");

/// The kernels' entry points, in the source [`SELECTIVE_SCAN_SRC`].
pub const SELECTIVE_SCAN_KERNELS: [&str; 4] = ["ss_fwd", "ss_bwd", "ss_reduce_bc", "ss_reduce_e"];

/// Largest state size the kernels are compiled for (all states of a channel live in registers).
pub const MAX_STATE: usize = 64;

/// Discretization of the selective scan (`x = ΔA·A`, `w = Δ·A`):
/// mamba `Ā = eˣ, γ̄ = Δ`; zoh `Ā = eˣ, γ̄ = expm1(w)/A` (`Δ` at `A = 0`);
/// bilinear `Ā = (1 + x/2)/(1 − x/2)` (`x` clamped to ±2e18), `γ̄ = Δ/(1 − w/2)`;
/// dirac `Ā = eˣ, γ̄ = 1`.
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
}

impl Rule {
    /// The rule of an lrnnx `discretization` name.
    pub fn from_name(name: &str) -> Option<Rule> {
        match name {
            "mamba" => Some(Rule::Mamba),
            "zoh" => Some(Rule::Zoh),
            "bilinear" => Some(Rule::Bilinear),
            "dirac" => Some(Rule::Dirac),
            _ => None,
        }
    }

    fn code(self) -> u32 {
        match self {
            Rule::Mamba => 0,
            Rule::Zoh => 1,
            Rule::Bilinear => 2,
            Rule::Dirac => 3,
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
}

/// Launch geometry of the kernels (compile-time in the kernel source).
///
/// A block owns `channels_per_block()` consecutive channels of one batch row and walks the
/// sequence in chunks of `seg·items` steps (the forward in order, the backward in reverse), the
/// chunk's inputs staged in shared memory. A thread owns `channels_per_thread` channels and
/// `items` consecutive steps of the chunk; the `seg` threads of a channel set scan their
/// per-thread affine maps `h ↦ P·h + S` with warp shuffles, one state at a time. The forward
/// stores the state at every chunk start for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Threads (lanes) per channel set along time (power of two, 1..=32).
    pub seg: usize,
    /// Channels per thread (1..=4).
    pub channels_per_thread: usize,
    /// Consecutive steps per thread in a chunk (1..=16).
    pub items: usize,
    /// Warps per block (power of two, 1..=16).
    pub warps: usize,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling {
            seg: 16,
            channels_per_thread: 2,
            items: 4,
            warps: 4,
        }
    }
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
    /// Launch geometry (with time-varying `B`/`C`, `channels_per_block` divides the channels of
    /// a group).
    pub tiling: Tiling,
}

impl Variant {
    /// NVRTC `-D` options selecting this variant in [`SELECTIVE_SCAN_SRC`].
    pub fn defines(&self) -> Vec<String> {
        let b = |x: bool| u32::from(x);
        vec![
            format!("-DNSTATE={}", self.state),
            format!("-DSEG={}", self.tiling.seg),
            format!("-DKCH={}", self.tiling.channels_per_thread),
            format!("-DITEMS={}", self.tiling.items),
            format!("-DNWARP={}", self.tiling.warps),
            format!("-DRULE={}", self.rule.code()),
            format!("-DHAS_Z={}", b(self.has_z)),
            format!("-DHAS_D={}", b(self.has_d)),
            format!("-DHAS_DB={}", b(self.has_delta_bias)),
            format!("-DSOFTPLUS={}", b(self.softplus)),
            format!("-DHAS_DTA={}", b(self.has_delta_a)),
            format!("-DBC_FIXED={}", b(self.bc_fixed)),
        ]
    }

    /// Steps per chunk (`seg·items`; the checkpoint interval of the forward).
    pub fn chunk(&self) -> usize {
        self.tiling.seg * self.tiling.items
    }

    /// Channel sets per block (`32/seg` per warp).
    fn sets(&self) -> usize {
        32 / self.tiling.seg * self.tiling.warps
    }

    /// Channels per block.
    pub fn channels_per_block(&self) -> usize {
        self.sets() * self.tiling.channels_per_thread
    }

    /// Threads per block.
    pub fn threads(&self) -> usize {
        32 * self.tiling.warps
    }

    /// Dynamic shared memory of the forward kernel in bytes.
    pub fn fwd_shared_bytes(&self) -> usize {
        let (cb, ts, n) = (self.channels_per_block(), self.chunk() + 4, self.state);
        let tiles = 2 + usize::from(self.has_delta_a);
        let bc = if self.bc_fixed { 0 } else { 2 * n * ts };
        let per_channel = if self.bc_fixed { 4 } else { 2 } * cb * n;
        4 * (tiles * cb * ts + bc + per_channel)
    }

    /// Dynamic shared memory of the backward kernel in bytes.
    pub fn bwd_shared_bytes(&self) -> usize {
        let (cb, ts, n) = (self.channels_per_block(), self.chunk() + 4, self.state);
        let tiles = 3 + usize::from(self.has_z) + usize::from(self.has_delta_a);
        let bc = if self.bc_fixed {
            0
        } else {
            2 * n * ts + 4 * self.sets() * ts + self.chunk() * 2 * n
        };
        let carries = if self.bc_fixed { 8 } else { 4 } * cb * n;
        4 * (tiles * cb * ts + bc + carries)
    }
}

/// Most dynamic shared memory per block the kernels may use (H100/H200 allow 227 KiB).
pub const MAX_SHARED_BYTES: usize = 160 * 1024;

impl ScanSpec {
    /// Checks the sizes and picks the kernel variant for a tiling. With time-varying `B`/`C` the
    /// block's channels must lie in one group: warps, then channels per thread, are halved (and
    /// the lanes per channel set doubled) until the channels per block divide the group size.
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
        let groups = if self.bc_fixed { 1 } else { self.groups };
        if groups == 0 || !self.channels.is_multiple_of(groups) {
            return err(format!(
                "groups {} must divide the channels {}",
                self.groups, self.channels
            ));
        }
        let pow2 = |x: usize, hi: usize| x.is_power_of_two() && x <= hi;
        if !pow2(tiling.seg, 32)
            || !matches!(tiling.channels_per_thread, 1..=4)
            || !matches!(tiling.items, 1..=16)
            || !pow2(tiling.warps, 16)
        {
            return err(format!("unsupported tiling {tiling:?}"));
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
            tiling,
        };
        if !self.bc_fixed {
            let per_group = self.channels / groups;
            while !per_group.is_multiple_of(v.channels_per_block()) {
                let t = &mut v.tiling;
                if t.warps > 1 {
                    t.warps /= 2;
                } else if t.channels_per_thread > 1 {
                    t.channels_per_thread -= 1;
                } else {
                    t.seg *= 2;
                }
            }
        }
        let bytes = v.fwd_shared_bytes().max(v.bwd_shared_bytes());
        if bytes > MAX_SHARED_BYTES {
            return err(format!(
                "tiling {tiling:?}: {bytes} bytes of shared memory for state {}",
                self.state
            ));
        }
        Ok(v)
    }

    /// Expected element counts of the inputs, by name, for shape checks:
    /// `u`, `delta`, `deltaA`, `z`: `B·L·E`; `A`: `E·N`; `B`, `C`: `B·L·G·N` or `E·N`;
    /// `D`, `delta_bias`: `E`.
    pub fn expected_len(&self, name: &str) -> usize {
        let ble = self.batch * self.len * self.channels;
        let en = self.channels * self.state;
        match name {
            "A" => en,
            "B" | "C" => {
                if self.bc_fixed {
                    en
                } else {
                    self.batch * self.len * self.groups * self.state
                }
            }
            "D" | "delta_bias" => self.channels,
            _ => ble,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScanSpec {
        ScanSpec {
            batch: 2,
            len: 64,
            channels: 8,
            state: 4,
            groups: 2,
            rule: Rule::Zoh,
            bc_fixed: false,
            has_delta_a: false,
            has_delta_bias: true,
            softplus: true,
            has_d: true,
            has_z: true,
        }
    }

    #[test]
    fn blocks_lie_inside_a_group() {
        // 8 channels in 2 groups of 4: 2 channels per thread, 1 lane set -> 4 channels a block
        let v = spec().check(Tiling::default()).unwrap();
        assert_eq!(v.channels_per_block(), 4);
        assert_eq!(v.tiling.warps, 1);
        let mut s = spec();
        s.channels = 2048;
        s.groups = 1;
        s.state = 16;
        let v = s.check(Tiling::default()).unwrap();
        // 16 lanes per channel set, 2 sets a warp, 2 channels a thread, 4 warps: 16 channels
        assert_eq!(
            (v.channels_per_block(), v.threads(), v.chunk()),
            (16, 128, 64)
        );
        // 96 channels in 4 groups of 24: 8 channels a block
        s.channels = 96;
        s.groups = 4;
        assert_eq!(s.check(Tiling::default()).unwrap().channels_per_block(), 8);
        // groups of 5 channels: one channel a block
        s.channels = 20;
        let v = s.check(Tiling::default()).unwrap();
        assert_eq!((v.channels_per_block(), v.tiling.seg), (1, 32));
        s.state = 64;
        assert!(s.check(Tiling::default()).unwrap().bwd_shared_bytes() <= MAX_SHARED_BYTES);
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
