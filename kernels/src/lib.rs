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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Steps per thread within a chunk.
    pub ks: usize,
    /// Time warps per block (a chunk is `ks·nw` steps).
    pub nw: usize,
    /// Channel warps per block (32 channels each).
    pub cw: usize,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling {
            ks: 4,
            nw: 8,
            cw: 1,
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
    /// Channels per `dB`/`dC` partial segment inside a warp (power of two ≤ 32).
    pub seg: usize,
    /// Launch geometry.
    pub tiling: Tiling,
}

impl Variant {
    /// NVRTC `-D` options selecting this variant in [`SELECTIVE_SCAN_SRC`].
    pub fn defines(&self) -> Vec<String> {
        let b = |x: bool| u32::from(x);
        vec![
            format!("-DNSTATE={}", self.state),
            format!("-DKS={}", self.tiling.ks),
            format!("-DNW={}", self.tiling.nw),
            format!("-DCW={}", self.tiling.cw),
            format!("-DRULE={}", self.rule.code()),
            format!("-DHAS_Z={}", b(self.has_z)),
            format!("-DHAS_D={}", b(self.has_d)),
            format!("-DHAS_DB={}", b(self.has_delta_bias)),
            format!("-DSOFTPLUS={}", b(self.softplus)),
            format!("-DHAS_DTA={}", b(self.has_delta_a)),
            format!("-DBC_FIXED={}", b(self.bc_fixed)),
            format!("-DSEG={}", self.seg),
        ]
    }

    /// Steps per chunk (the checkpoint interval of the forward).
    pub fn chunk(&self) -> usize {
        self.tiling.ks * self.tiling.nw
    }

    /// Number of `dB`/`dC` partial segments over `channels` (time-varying `B`/`C`).
    pub fn segments(&self, channels: usize) -> usize {
        if self.tiling.cw > 1 {
            channels / (32 * self.tiling.cw)
        } else {
            channels / self.seg
        }
    }
}

impl ScanSpec {
    /// Checks the sizes and picks the kernel variant for a tiling (falls back to one channel
    /// warp per block when the channels of a group do not fill `32·cw`).
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
        if !matches!(tiling.ks, 1..=8)
            || !matches!(tiling.nw, 1..=16)
            || !matches!(tiling.cw, 1..=4)
        {
            return err(format!("unsupported tiling {tiling:?}"));
        }
        if tiling.nw * tiling.cw * 32 > 1024 {
            return err(format!(
                "tiling {tiling:?}: more than 1024 threads per block"
            ));
        }
        let per_group = self.channels / groups;
        // largest power of two ≤ 32 dividing the channels of a group
        let seg = 1usize << per_group.trailing_zeros().min(5);
        let mut tiling = tiling;
        // static shared memory of the kernels: 2 arrays of cw·nw·N·32 floats and one of cw·N·32
        while tiling.nw > 1 && 4 * 32 * self.state * tiling.cw * (2 * tiling.nw + 2) > 48 * 1024 {
            tiling.nw /= 2;
        }
        if tiling.cw > 1 && (!per_group.is_multiple_of(32 * tiling.cw) || 2 * self.state > 32) {
            tiling.cw = 1;
        }
        Ok(Variant {
            state: self.state,
            rule: self.rule,
            bc_fixed: self.bc_fixed,
            has_delta_a: self.has_delta_a,
            has_delta_bias: self.has_delta_bias,
            softplus: self.softplus,
            has_d: self.has_d,
            has_z: self.has_z,
            seg,
            tiling,
        })
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
        let v = spec().check(Tiling::default()).unwrap();
        assert_eq!(v.seg, 4);
        assert_eq!(v.segments(8), 2);
        let mut s = spec();
        s.channels = 2048;
        s.groups = 1;
        s.state = 16;
        let v = s
            .check(Tiling {
                ks: 4,
                nw: 4,
                cw: 2,
            })
            .unwrap();
        assert_eq!((v.seg, v.tiling.cw, v.segments(2048)), (32, 2, 32));
        s.channels = 96;
        let v = s
            .check(Tiling {
                ks: 4,
                nw: 4,
                cw: 2,
            })
            .unwrap();
        assert_eq!((v.seg, v.tiling.cw), (32, 1));
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
                ks: 4,
                nw: 16,
                cw: 4
            })
            .is_err());
    }
}
