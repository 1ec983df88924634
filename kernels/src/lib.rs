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
/// Each (batch, channel) is walked by `tpc` threads holding `N/tpc` states each (`tpc` the
/// smallest power of two dividing `N` with `N/tpc ≤ states_per_thread`); a block is `warps`
/// warps of `32/tpc` channels each. The forward keeps the state every `sub·nsub` steps; the
/// backward re-runs a chunk keeping the state every `sub` steps and walks `sub` steps at a time
/// backward with their states in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Most states held by one thread (1..=16).
    pub states_per_thread: usize,
    /// Warps per block (power of two, 1..=16).
    pub warps: usize,
    /// Steps per backward sub-chunk (power of two, 1..=32; raised to `tpc`).
    pub sub: usize,
    /// Sub-chunks per checkpoint chunk (1..=64).
    pub nsub: usize,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling {
            states_per_thread: 4,
            warps: 4,
            sub: 4,
            nsub: 16,
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
    /// Threads per (batch, channel) (power of two dividing `N`).
    pub tpc: usize,
    /// Channels per `dB`/`dC` partial segment (power of two dividing the channels of a group;
    /// at most the channels of a block).
    pub segc: usize,
    /// Launch geometry (with `sub ≥ tpc`).
    pub tiling: Tiling,
}

impl Variant {
    /// NVRTC `-D` options selecting this variant in [`SELECTIVE_SCAN_SRC`].
    pub fn defines(&self) -> Vec<String> {
        let b = |x: bool| u32::from(x);
        vec![
            format!("-DNSTATE={}", self.state),
            format!("-DTPC={}", self.tpc),
            format!("-DNWARP={}", self.tiling.warps),
            format!("-DSUB={}", self.tiling.sub),
            format!("-DNSUB={}", self.tiling.nsub),
            format!("-DRULE={}", self.rule.code()),
            format!("-DHAS_Z={}", b(self.has_z)),
            format!("-DHAS_D={}", b(self.has_d)),
            format!("-DHAS_DB={}", b(self.has_delta_bias)),
            format!("-DSOFTPLUS={}", b(self.softplus)),
            format!("-DHAS_DTA={}", b(self.has_delta_a)),
            format!("-DBC_FIXED={}", b(self.bc_fixed)),
            format!("-DSEGC={}", self.segc),
        ]
    }

    /// Steps per chunk (the checkpoint interval of the forward).
    pub fn chunk(&self) -> usize {
        self.tiling.sub * self.tiling.nsub
    }

    /// Channels per block.
    pub fn channels_per_block(&self) -> usize {
        32 / self.tpc * self.tiling.warps
    }

    /// Threads per block.
    pub fn threads(&self) -> usize {
        32 * self.tiling.warps
    }

    /// Number of `dB`/`dC` partial segments over `channels` (time-varying `B`/`C`).
    pub fn segments(&self, channels: usize) -> usize {
        channels / self.segc
    }

    /// Static shared memory of the backward kernel in bytes.
    pub fn shared_bytes(&self) -> usize {
        let spt = self.state / self.tpc;
        let t = self.tiling;
        let ck = 4 * t.nsub * spt * 32 * t.warps;
        let cpw = 32 / self.tpc;
        let r = if !self.bc_fixed && self.segc > cpw {
            let vp = (2 * spt).div_ceil(cpw) * cpw;
            4 * t.warps * t.sub * 32 * (vp / cpw)
        } else {
            0
        };
        ck + r
    }
}

impl ScanSpec {
    /// Checks the sizes and picks the kernel variant for a tiling (halves `nsub` while the
    /// backward's shared memory exceeds 40 KiB).
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
        if !matches!(tiling.states_per_thread, 1..=16)
            || !pow2(tiling.warps, 16)
            || !pow2(tiling.sub, 32)
            || !matches!(tiling.nsub, 1..=64)
        {
            return err(format!("unsupported tiling {tiling:?}"));
        }
        let n = self.state;
        let tpc = [1usize, 2, 4, 8, 16, 32]
            .into_iter()
            .find(|&t| n.is_multiple_of(t) && n / t <= tiling.states_per_thread)
            .unwrap_or(1 << n.trailing_zeros().min(5));
        let mut tiling = tiling;
        tiling.sub = tiling.sub.max(tpc);
        let per_group = self.channels / groups;
        let cpb = 32 / tpc * tiling.warps;
        let segc = if self.bc_fixed {
            1
        } else {
            (1usize << per_group.trailing_zeros().min(10)).min(cpb)
        };
        let mut v = Variant {
            state: self.state,
            rule: self.rule,
            bc_fixed: self.bc_fixed,
            has_delta_a: self.has_delta_a,
            has_delta_bias: self.has_delta_bias,
            softplus: self.softplus,
            has_d: self.has_d,
            has_z: self.has_z,
            tpc,
            segc,
            tiling,
        };
        while v.tiling.nsub > 1 && v.shared_bytes() > 40 * 1024 {
            v.tiling.nsub /= 2;
        }
        if v.shared_bytes() > 48 * 1024 {
            return err(format!(
                "tiling {tiling:?}: {} bytes of shared memory for state {n}",
                v.shared_bytes()
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
    fn segments_follow_the_groups() {
        // 8 channels in 2 groups, state 4: one thread per channel, segments of 4 channels
        let v = spec().check(Tiling::default()).unwrap();
        assert_eq!((v.tpc, v.segc, v.segments(8)), (1, 4, 2));
        let mut s = spec();
        s.channels = 2048;
        s.groups = 1;
        s.state = 16;
        let v = s.check(Tiling::default()).unwrap();
        // 4 threads of 4 states per channel, 8 channels a warp, 32 a block
        assert_eq!((v.tpc, v.segc, v.segments(2048)), (4, 32, 64));
        assert_eq!(
            (v.channels_per_block(), v.threads(), v.chunk()),
            (32, 128, 64)
        );
        s.channels = 96;
        s.groups = 4;
        let v = s.check(Tiling::default()).unwrap();
        assert_eq!((v.segc, v.segments(96)), (8, 12));
        s.state = 64;
        let v = s.check(Tiling::default()).unwrap();
        assert_eq!((v.tpc, v.tiling.sub), (16, 16));
        assert!(v.shared_bytes() <= 40 * 1024);
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
    }
}
