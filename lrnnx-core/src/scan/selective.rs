//! The selective scan of Mamba / S6 (lrnnx `selective_scan_ref` / `selective_scan_fn`,
//! spec §4.1), sequentially over whole sequences.
//!
//! Per batch row `b`, channel `d`, state `n` and time `t` (with `B_t`, `C_t` the time-varying
//! values of the channel's group, or the fixed `(d, n)` values):
//!
//! ```text
//! Δ_t  = delta[t] + delta_bias[d]              (bias 0 if absent)
//! Δ_t  = softplus(Δ_t) if delta_softplus        (PyTorch threshold 20)
//! ΔA_t = deltaA[t] if given, else Δ_t           (deltaA is used raw)
//! h_t[n] = Ā_t[n]·h_{t−1}[n] + γ̄_t[n]·B_t[n]·u_t
//! y_t  = Σ_n C_t[n]·h_t[n] + D_d·u_t            (complex A: 2·Re(Σ_n C_t[n]·h_t[n]) + D_d·u_t)
//! y_t ← y_t·SiLU(z_t) if z given
//! ```
//!
//! | rule       | `Ā_t` (from `ΔA_t`)             | `γ̄_t` (from `Δ_t`)          |
//! |------------|---------------------------------|-----------------------------|
//! | `Mamba`    | `exp(ΔA_t·A)`                   | `Δ_t`                       |
//! | `Zoh`      | `exp(ΔA_t·A)`                   | `(exp(Δ_t·A) − 1)/A`        |
//! | `Bilinear` | `(1 + ΔA_t·A/2)/(1 − ΔA_t·A/2)` | `Δ_t/(1 − Δ_t·A/2)`         |
//! | `Dirac`    | `exp(ΔA_t·A)`                   | `1`                         |
//!
//! The per-(channel, state) update of a real eigenvalue, `s6_update`, is the one the
//! [`Mamba`](crate::mamba::Mamba) step uses as well, so the layer's recurrence and this scan
//! cannot drift apart. Real eigenvalues use the branch-free [`crate::fastmath`]
//! functions; complex eigenvalues (an op-level feature that no lrnnx layer uses) use `libm`.
//!
//! Layouts (row-major, lrnnx's): `u`, `delta`, `z`, `deltaA`, `out`: `(b, d, L)`; `A`: `(d, n)`
//! real or `(d, n, 2)` complex (re, im); `B`/`C`: fixed `(d, n)` (complex `(d, n, 2)`) or
//! time-varying `(b, G, n, L)` (`G = 1` is lrnnx's `(b, n, L)`; complex: `(b, G, n, 2L)` with
//! re/im interleaved along time); channel `d` reads group `d / (dim/G)`; `D`, `delta_bias`:
//! `(d,)`; state: `(b, d, n)` (complex `(b, d, n, 2)`).
//!
//! Values are not checked: NaN or infinity propagate as they do in lrnnx.

use num_complex::Complex32;

use crate::discretize::Discretization;
use crate::error::sum_of_products;
use crate::error::{check_len, check_nonzero, Error, Result};
use crate::fastmath;

/// Compile-time codes of the discretization rules, for [`s6_update`].
pub(crate) mod rule {
    /// `Ā = exp(ΔA·A)`, `γ̄ = Δ`.
    pub const MAMBA: u8 = 0;
    /// `Ā = exp(ΔA·A)`, `γ̄ = (exp(Δ·A) − 1)/A`.
    pub const ZOH: u8 = 1;
    /// `Ā = (1 + ΔA·A/2)/(1 − ΔA·A/2)`, `γ̄ = Δ/(1 − Δ·A/2)`.
    pub const BILINEAR: u8 = 2;
    /// `Ā = exp(ΔA·A)`, `γ̄ = 1`.
    pub const DIRAC: u8 = 3;
}

/// The rule code of a discretization the selective scan supports.
pub(crate) fn rule_code(layer: &'static str, d: Discretization) -> Result<u8> {
    match d {
        Discretization::Mamba => Ok(rule::MAMBA),
        Discretization::Zoh => Ok(rule::ZOH),
        Discretization::Bilinear => Ok(rule::BILINEAR),
        Discretization::Dirac => Ok(rule::DIRAC),
        discretization => Err(Error::UnsupportedDiscretization {
            layer,
            discretization,
        }),
    }
}

/// Bound on `|ΔA·A/2|` in the bilinear ratio, so that an enormous (event) time step gives the
/// limit `Ā = −1` instead of `∞/∞ = NaN`.
const BILINEAR_CLAMP: f32 = 1e18;

/// One selective-SSM update of one (channel, state) pair with a real eigenvalue `a`:
/// `h' = Ā·h + γ̄·bu`, with `Ā` from `dt_a` (`ΔA`) and `γ̄` from `dt` (`Δ`) by rule `R` (see the
/// module table; `bu = B·u`). The zoh gain is `(exp(Δ·a) − 1)/a`, computed with `expm1` (and
/// `= Δ` for `a = 0`). Branch-free: loops over it vectorize.
///
/// `DECAYING` promises `ΔA·a ≤ 0` (a Mamba layer: `a = −exp(A_log) ≤ 0`, `ΔA ≥ 0`), which lets
/// the transition use [`fastmath::exp_nonpositive`]; the scan, whose `A` is the caller's, passes
/// `false` and uses the general [`fastmath::exp`]. Both give the same bits where both apply.
#[inline(always)]
pub(crate) fn s6_update<const R: u8, const DECAYING: bool>(
    h: f32,
    a: f32,
    dt: f32,
    dt_a: f32,
    bu: f32,
) -> f32 {
    let decay = |x: f32| {
        if DECAYING {
            fastmath::exp_nonpositive(x)
        } else {
            fastmath::exp(x)
        }
    };
    match R {
        rule::MAMBA => decay(dt_a * a) * h + dt * bu,
        rule::ZOH => {
            let g = fastmath::expm1(dt * a) / a;
            let g = if a == 0.0 { dt } else { g };
            decay(dt_a * a) * h + g * bu
        }
        rule::BILINEAR => {
            let v = (0.5 * dt_a * a).clamp(-BILINEAR_CLAMP, BILINEAR_CLAMP);
            let w = 0.5 * dt * a;
            (1.0 + v) / (1.0 - v) * h + dt / (1.0 - w) * bu
        }
        _ => decay(dt_a * a) * h + bu,
    }
}

/// `(Ā, γ̄)` of a complex eigenvalue `a` (see the module table): `Ā` from `dt_a`, `γ̄` from `dt`.
/// The zoh numerator is `exp(Δa) − 1 = (expm1(x)·cos y − 2 sin²(y/2)) + i·eˣ sin y` (`x + iy =
/// Δa`), free of cancellation; `γ̄ = Δ` for `a = 0`.
fn discretize_complex(rule_code: u8, a: Complex32, dt: f32, dt_a: f32) -> (Complex32, Complex32) {
    let one = Complex32::new(1.0, 0.0);
    match rule_code {
        rule::BILINEAR => {
            let v = a * (0.5 * dt_a);
            let w = a * (0.5 * dt);
            ((one + v) / (one - v), Complex32::new(dt, 0.0) / (one - w))
        }
        r => {
            let a_bar = (a * dt_a).exp();
            let gamma = match r {
                rule::MAMBA => Complex32::new(dt, 0.0),
                rule::ZOH => {
                    if a == Complex32::new(0.0, 0.0) {
                        Complex32::new(dt, 0.0)
                    } else {
                        let z = a * dt;
                        let s = libm::sinf(0.5 * z.im);
                        let num = Complex32::new(
                            libm::expm1f(z.re) * libm::cosf(z.im) - 2.0 * s * s,
                            libm::expf(z.re) * libm::sinf(z.im),
                        );
                        num / a
                    }
                }
                _ => one,
            };
            (a_bar, gamma)
        }
    }
}

/// The state matrix `A` of a selective scan.
#[derive(Debug, Clone, Copy)]
pub enum StateMatrix<'a> {
    /// Real `(d, n)`.
    Real(&'a [f32]),
    /// Complex `(d, n, 2)` (re, im); the output is `2·Re(C h)`.
    Complex(&'a [f32]),
}

/// `B` or `C` of a selective scan.
#[derive(Debug, Clone, Copy)]
pub enum InputMatrix<'a> {
    /// Time-invariant `(d, n)` (complex `A`: `(d, n, 2)`).
    Fixed(&'a [f32]),
    /// Time-varying `(b, groups, n, L)` (complex `A`: `(b, groups, n, 2L)`, re/im interleaved
    /// along time); channel `d` reads group `d / (dim/groups)`. `groups = 1` is lrnnx's
    /// `(b, n, L)` layout.
    Varying {
        /// The values.
        data: &'a [f32],
        /// Number of groups `G` (must divide `dim`).
        groups: usize,
    },
}

/// The arguments of [`selective_scan`] (lrnnx's `selective_scan_ref` arguments plus the sizes).
#[derive(Debug, Clone, Copy)]
pub struct SelectiveScanArgs<'a> {
    /// Batch size `b`.
    pub batch: usize,
    /// Channels `d`.
    pub dim: usize,
    /// States per channel `n`.
    pub d_state: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// Input `u`, `(b, d, L)`.
    pub u: &'a [f32],
    /// Time steps `delta`, `(b, d, L)`.
    pub delta: &'a [f32],
    /// `A`, real or complex.
    pub a: StateMatrix<'a>,
    /// `B`, fixed or time-varying.
    pub b: InputMatrix<'a>,
    /// `C`, fixed or time-varying.
    pub c: InputMatrix<'a>,
    /// Skip `D`, `(d,)`.
    pub d: Option<&'a [f32]>,
    /// Gate `z`, `(b, d, L)`: `y ← y·SiLU(z)`.
    pub z: Option<&'a [f32]>,
    /// `delta_bias`, `(d,)`, added to `delta` before the softplus.
    pub delta_bias: Option<&'a [f32]>,
    /// `deltaA`, `(b, d, L)`: the time step of `Ā` (used raw), instead of `Δ`.
    pub delta_a: Option<&'a [f32]>,
    /// Apply softplus (threshold 20) to `delta + delta_bias`.
    pub delta_softplus: bool,
    /// `Mamba`, `Zoh`, `Bilinear` or `Dirac`.
    pub discretization: Discretization,
}

impl SelectiveScanArgs<'_> {
    /// Whether `A` is complex.
    pub fn is_complex(&self) -> bool {
        matches!(self.a, StateMatrix::Complex(_))
    }

    /// Number of `f32` elements of `out`: `b·d·L`.
    pub fn out_len(&self) -> usize {
        sum_of_products(&[&[self.batch, self.dim, self.len]])
    }

    /// Number of `f32` elements of the state: `b·d·n`, twice that for complex `A`.
    pub fn state_len(&self) -> usize {
        let w = if self.is_complex() { 2 } else { 1 };
        sum_of_products(&[&[self.batch, self.dim, self.d_state, w]])
    }

    fn validate(&self, out: &[f32], state: &[f32]) -> Result<u8> {
        let code = rule_code("selective scan", self.discretization)?;
        check_nonzero("dim", self.dim)?;
        check_nonzero("d_state", self.d_state)?;
        let w = if self.is_complex() { 2 } else { 1 };
        let (b, d, n, l) = (self.batch, self.dim, self.d_state, self.len);
        let seq = sum_of_products(&[&[b, d, l]]);
        check_len("u", seq, self.u.len())?;
        check_len("delta", seq, self.delta.len())?;
        let a = match self.a {
            StateMatrix::Real(a) | StateMatrix::Complex(a) => a,
        };
        check_len("A", sum_of_products(&[&[d, n, w]]), a.len())?;
        for (what, m) in [("B", self.b), ("C", self.c)] {
            match m {
                InputMatrix::Fixed(v) => check_len(what, sum_of_products(&[&[d, n, w]]), v.len())?,
                InputMatrix::Varying { data, groups } => {
                    if groups == 0 || d % groups != 0 {
                        return Err(Error::InvalidConfig {
                            what: "groups of B/C",
                            reason: "must be at least 1 and divide dim",
                        });
                    }
                    check_len(what, sum_of_products(&[&[b, groups, n, l, w]]), data.len())?;
                }
            }
        }
        if let Some(v) = self.d {
            check_len("D", d, v.len())?;
        }
        if let Some(v) = self.z {
            check_len("z", seq, v.len())?;
        }
        if let Some(v) = self.delta_bias {
            check_len("delta_bias", d, v.len())?;
        }
        if let Some(v) = self.delta_a {
            check_len("deltaA", seq, v.len())?;
        }
        check_len("out", seq, out.len())?;
        check_len("state", self.state_len(), state.len())?;
        Ok(code)
    }

    /// `Δ` and `ΔA` at flat index `idx` of channel `ch`.
    #[inline(always)]
    fn deltas(&self, ch: usize, idx: usize) -> (f32, f32) {
        let mut dt = self.delta[idx] + self.delta_bias.map_or(0.0, |v| v[ch]);
        if self.delta_softplus {
            dt = fastmath::softplus(dt);
        }
        (dt, self.delta_a.map_or(dt, |v| v[idx]))
    }

    /// `y + D·u`, gated by `SiLU(z)`.
    #[inline(always)]
    fn finish(&self, y: f32, ch: usize, idx: usize, u: f32) -> f32 {
        let y = y + self.d.map_or(0.0, |v| v[ch]) * u;
        match self.z {
            Some(z) => y * fastmath::silu(z[idx]),
            None => y,
        }
    }
}

/// Offset and stride (per state `n`) of the `B`/`C` values for batch row `bi`, channel `ch`,
/// in units of values (a complex value counts once); plus the per-time stride.
#[inline(always)]
fn bc_index(
    m: &InputMatrix<'_>,
    a: &SelectiveScanArgs<'_>,
    bi: usize,
    ch: usize,
) -> (usize, usize, usize) {
    match *m {
        InputMatrix::Fixed(_) => (ch * a.d_state, 1, 0),
        InputMatrix::Varying { groups, .. } => {
            let g = ch / (a.dim / groups);
            ((bi * groups + g) * a.d_state * a.len, a.len, 1)
        }
    }
}

fn bc_data<'a>(m: &InputMatrix<'a>) -> &'a [f32] {
    match *m {
        InputMatrix::Fixed(v) | InputMatrix::Varying { data: v, .. } => v,
    }
}

/// Runs the selective scan (module docs) over whole sequences: writes `out` (`b·d·L` values)
/// and advances `state` (`b·d·n` values, `2·b·d·n` for complex `A`), which holds `h_{−1}` on
/// entry (zeros reproduce lrnnx's op) and the last state `h_{L−1}` (lrnnx's `last_state`) on
/// return. No allocation.
///
/// Errors (nothing written): a buffer of the wrong length ([`Error::BufferLength`]), zero
/// `dim`/`d_state` or groups that do not divide `dim` ([`Error::InvalidConfig`]), a
/// discretization other than mamba/zoh/bilinear/dirac ([`Error::UnsupportedDiscretization`]).
pub fn selective_scan(
    args: &SelectiveScanArgs<'_>,
    out: &mut [f32],
    state: &mut [f32],
) -> Result<()> {
    let code = args.validate(out, state)?;
    match (args.a, code) {
        (StateMatrix::Complex(a), _) => scan_complex(args, a, code, out, state),
        (StateMatrix::Real(a), rule::MAMBA) => scan_real::<{ rule::MAMBA }>(args, a, out, state),
        (StateMatrix::Real(a), rule::ZOH) => scan_real::<{ rule::ZOH }>(args, a, out, state),
        (StateMatrix::Real(a), rule::BILINEAR) => {
            scan_real::<{ rule::BILINEAR }>(args, a, out, state)
        }
        (StateMatrix::Real(a), _) => scan_real::<{ rule::DIRAC }>(args, a, out, state),
    }
    Ok(())
}

/// Real `A`; lengths already validated.
fn scan_real<const R: u8>(
    args: &SelectiveScanArgs<'_>,
    a: &[f32],
    out: &mut [f32],
    state: &mut [f32],
) {
    let (dim, n, len) = (args.dim, args.d_state, args.len);
    let (bd, cd) = (bc_data(&args.b), bc_data(&args.c));
    for (row, h) in state.chunks_exact_mut(n).enumerate() {
        let (bi, ch) = (row / dim, row % dim);
        let a_row = &a[ch * n..(ch + 1) * n];
        let (b0, bs, bt) = bc_index(&args.b, args, bi, ch);
        let (c0, cs, ct) = bc_index(&args.c, args, bi, ch);
        for t in 0..len {
            let idx = row * len + t;
            let (dt, dt_a) = args.deltas(ch, idx);
            let u = args.u[idx];
            let mut y = 0.0f32;
            for (k, (hk, &ak)) in h.iter_mut().zip(a_row).enumerate() {
                let bk = bd[b0 + k * bs + t * bt];
                let ck = cd[c0 + k * cs + t * ct];
                *hk = s6_update::<R, false>(*hk, ak, dt, dt_a, bk * u);
                y += ck * *hk;
            }
            out[idx] = args.finish(y, ch, idx, u);
        }
    }
}

/// Complex `A` (interleaved re/im everywhere); lengths already validated.
fn scan_complex(
    args: &SelectiveScanArgs<'_>,
    a: &[f32],
    code: u8,
    out: &mut [f32],
    state: &mut [f32],
) {
    let (dim, n, len) = (args.dim, args.d_state, args.len);
    let (bd, cd) = (bc_data(&args.b), bc_data(&args.c));
    let cplx = |v: &[f32], i: usize| Complex32::new(v[2 * i], v[2 * i + 1]);
    for (row, h) in state.chunks_exact_mut(2 * n).enumerate() {
        let (bi, ch) = (row / dim, row % dim);
        let (b0, bs, bt) = bc_index(&args.b, args, bi, ch);
        let (c0, cs, ct) = bc_index(&args.c, args, bi, ch);
        for t in 0..len {
            let idx = row * len + t;
            let (dt, dt_a) = args.deltas(ch, idx);
            let u = args.u[idx];
            let mut y = Complex32::new(0.0, 0.0);
            for k in 0..n {
                // Time-varying values: index k·L + t of complex numbers = (k·2L + 2t) in f32s.
                let bk = cplx(bd, b0 + k * bs + t * bt);
                let ck = cplx(cd, c0 + k * cs + t * ct);
                let (a_bar, gamma) = discretize_complex(code, cplx(a, ch * n + k), dt, dt_a);
                let hk = a_bar * Complex32::new(h[2 * k], h[2 * k + 1]) + gamma * bk * u;
                h[2 * k] = hk.re;
                h[2 * k + 1] = hk.im;
                y += ck * hk;
            }
            out[idx] = args.finish(2.0 * y.re, ch, idx, u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_complex::Complex64;

    /// Deterministic pseudo-random numbers (xorshift), uniform in `[lo, hi)`.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
        }
        fn fill<const K: usize>(&mut self, lo: f64, hi: f64) -> [f32; K] {
            core::array::from_fn(|_| self.uniform(lo, hi) as f32)
        }
    }

    const B: usize = 2;
    const D: usize = 4;
    const N: usize = 3;
    const L: usize = 9;
    const G: usize = 2;

    /// Independent reference: the recurrence written directly in f64 complex arithmetic, with
    /// lrnnx's indexing spelled out (a real A is a complex number with zero imaginary part).
    #[allow(clippy::too_many_arguments)]
    fn naive(
        disc: Discretization,
        a: &[Complex64],                                      // (D, N)
        bm: &dyn Fn(usize, usize, usize, usize) -> Complex64, // (b, d, n, t)
        cm: &dyn Fn(usize, usize, usize, usize) -> Complex64,
        u: &[f32],
        delta: &[f32],
        dvec: &[f32],
        z: &[f32],
        bias: &[f32],
        delta_a: Option<&[f32]>,
        softplus: bool,
        complex_out: bool,
    ) -> ([f64; B * D * L], [Complex64; B * D * N]) {
        let mut out = [0.0; B * D * L];
        let mut last = [Complex64::new(0.0, 0.0); B * D * N];
        for b in 0..B {
            for d in 0..D {
                let mut h = [Complex64::new(0.0, 0.0); N];
                for t in 0..L {
                    let i = (b * D + d) * L + t;
                    let mut dt = delta[i] as f64 + bias[d] as f64;
                    if softplus {
                        dt = if dt > 20.0 { dt } else { (1.0 + dt.exp()).ln() };
                    }
                    let dta = delta_a.map_or(dt, |v| v[i] as f64);
                    let mut y = Complex64::new(0.0, 0.0);
                    for n in 0..N {
                        let an = a[d * N + n];
                        let (abar, gamma) = match disc {
                            Discretization::Mamba => ((an * dta).exp(), Complex64::new(dt, 0.0)),
                            Discretization::Zoh => ((an * dta).exp(), ((an * dt).exp() - 1.0) / an),
                            Discretization::Bilinear => (
                                (1.0 + an * dta / 2.0) / (1.0 - an * dta / 2.0),
                                dt / (1.0 - an * dt / 2.0),
                            ),
                            _ => ((an * dta).exp(), Complex64::new(1.0, 0.0)),
                        };
                        h[n] = abar * h[n] + gamma * bm(b, d, n, t) * u[i] as f64;
                        y += cm(b, d, n, t) * h[n];
                    }
                    let yv = if complex_out { 2.0 * y.re } else { y.re };
                    let yv = yv + dvec[d] as f64 * u[i] as f64;
                    let zi = z[i] as f64;
                    out[i] = yv * zi / (1.0 + (-zi).exp());
                }
                for n in 0..N {
                    last[(b * D + d) * N + n] = h[n];
                }
            }
        }
        (out, last)
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 2e-5 * scale + 1e-6,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
        assert_eq!(got.len(), want.len());
    }

    const RULES: [Discretization; 4] = [
        Discretization::Mamba,
        Discretization::Zoh,
        Discretization::Bilinear,
        Discretization::Dirac,
    ];

    #[test]
    fn real_scan_matches_naive_for_all_rules_and_layouts() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (case, &disc) in RULES.iter().cycle().take(24).enumerate() {
            let u: [f32; B * D * L] = rng.fill(-1.0, 1.0);
            let delta: [f32; B * D * L] = rng.fill(-3.0, 1.0);
            let a: [f32; D * N] = rng.fill(-4.0, -0.1);
            let bv: [f32; B * G * N * L] = rng.fill(-1.0, 1.0);
            let cv: [f32; B * G * N * L] = rng.fill(-1.0, 1.0);
            let bf: [f32; D * N] = rng.fill(-1.0, 1.0);
            let cf: [f32; D * N] = rng.fill(-1.0, 1.0);
            let dvec: [f32; D] = rng.fill(-1.0, 1.0);
            let z: [f32; B * D * L] = rng.fill(-2.0, 2.0);
            let bias: [f32; D] = rng.fill(-1.0, 1.0);
            let dta: [f32; B * D * L] = rng.fill(0.05, 2.0);
            // every rule × layout × deltaA: the rule is case % 4; the layout (case / 4) % 3:
            // 0 = variable (G = 1 view of group 0 rows), 1 = grouped, 2 = fixed B/C; deltaA in
            // the second 12 cases.
            let layout = (case / 4) % 3;
            let use_dta = case >= 12;
            let groups = if layout == 1 { G } else { 1 };
            let bvar = &bv[..B * groups * N * L];
            let cvar = &cv[..B * groups * N * L];
            let bm = |b: usize, d: usize, n: usize, t: usize| {
                let v = if layout == 2 {
                    bf[d * N + n]
                } else {
                    let g = d / (D / groups);
                    bvar[((b * groups + g) * N + n) * L + t]
                };
                Complex64::new(v as f64, 0.0)
            };
            let cm = |b: usize, d: usize, n: usize, t: usize| {
                let v = if layout == 2 {
                    cf[d * N + n]
                } else {
                    let g = d / (D / groups);
                    cvar[((b * groups + g) * N + n) * L + t]
                };
                Complex64::new(v as f64, 0.0)
            };
            let a64: [Complex64; D * N] =
                core::array::from_fn(|i| Complex64::new(a[i] as f64, 0.0));
            let (want, want_last) = naive(
                disc,
                &a64,
                &bm,
                &cm,
                &u,
                &delta,
                &dvec,
                &z,
                &bias,
                use_dta.then_some(&dta[..]),
                true,
                false,
            );
            let (b_in, c_in) = if layout == 2 {
                (InputMatrix::Fixed(&bf), InputMatrix::Fixed(&cf))
            } else {
                (
                    InputMatrix::Varying { data: bvar, groups },
                    InputMatrix::Varying { data: cvar, groups },
                )
            };
            let args = SelectiveScanArgs {
                batch: B,
                dim: D,
                d_state: N,
                len: L,
                u: &u,
                delta: &delta,
                a: StateMatrix::Real(&a),
                b: b_in,
                c: c_in,
                d: Some(&dvec),
                z: Some(&z),
                delta_bias: Some(&bias),
                delta_a: use_dta.then_some(&dta[..]),
                delta_softplus: true,
                discretization: disc,
            };
            let mut out = [0.0f32; B * D * L];
            let mut state = [0.0f32; B * D * N];
            selective_scan(&args, &mut out, &mut state).unwrap();
            assert_close(&out, &want, "out");
            let last: [f64; B * D * N] = core::array::from_fn(|i| want_last[i].re);
            assert_close(&state, &last, "last_state");
        }
    }

    #[test]
    fn complex_scan_matches_naive_for_all_rules() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for (case, &disc) in RULES.iter().cycle().take(16).enumerate() {
            let u: [f32; B * D * L] = rng.fill(-1.0, 1.0);
            let delta: [f32; B * D * L] = rng.fill(-3.0, 1.0);
            let a_re: [f32; D * N] = rng.fill(-2.0, -0.1);
            let a_im: [f32; D * N] = rng.fill(-5.0, 5.0);
            let mut a = [0.0f32; 2 * D * N];
            for i in 0..D * N {
                a[2 * i] = a_re[i];
                a[2 * i + 1] = a_im[i];
            }
            let bv: [f32; B * N * 2 * L] = rng.fill(-1.0, 1.0);
            let cv: [f32; B * N * 2 * L] = rng.fill(-1.0, 1.0);
            let bf: [f32; 2 * D * N] = rng.fill(-1.0, 1.0);
            let cf: [f32; 2 * D * N] = rng.fill(-1.0, 1.0);
            let dvec: [f32; D] = rng.fill(-1.0, 1.0);
            let z: [f32; B * D * L] = rng.fill(-2.0, 2.0);
            let bias: [f32; D] = rng.fill(-1.0, 1.0);
            let dta: [f32; B * D * L] = rng.fill(0.05, 2.0);
            // every rule × (time-varying, fixed B/C) × deltaA
            let fixed = (case / 4) % 2 == 1;
            let use_dta = case >= 8;
            let pick = |var: &[f32], fix: &[f32], b: usize, d: usize, n: usize, t: usize| {
                if fixed {
                    Complex64::new(fix[2 * (d * N + n)] as f64, fix[2 * (d * N + n) + 1] as f64)
                } else {
                    let base = (b * N + n) * 2 * L + 2 * t;
                    Complex64::new(var[base] as f64, var[base + 1] as f64)
                }
            };
            let bm = |b: usize, d: usize, n: usize, t: usize| pick(&bv, &bf, b, d, n, t);
            let cm = |b: usize, d: usize, n: usize, t: usize| pick(&cv, &cf, b, d, n, t);
            let a64: [Complex64; D * N] =
                core::array::from_fn(|i| Complex64::new(a_re[i] as f64, a_im[i] as f64));
            let (want, want_last) = naive(
                disc,
                &a64,
                &bm,
                &cm,
                &u,
                &delta,
                &dvec,
                &z,
                &bias,
                use_dta.then_some(&dta[..]),
                true,
                true,
            );
            let (b_in, c_in) = if fixed {
                (InputMatrix::Fixed(&bf), InputMatrix::Fixed(&cf))
            } else {
                (
                    InputMatrix::Varying {
                        data: &bv,
                        groups: 1,
                    },
                    InputMatrix::Varying {
                        data: &cv,
                        groups: 1,
                    },
                )
            };
            let args = SelectiveScanArgs {
                batch: B,
                dim: D,
                d_state: N,
                len: L,
                u: &u,
                delta: &delta,
                a: StateMatrix::Complex(&a),
                b: b_in,
                c: c_in,
                d: Some(&dvec),
                z: Some(&z),
                delta_bias: Some(&bias),
                delta_a: use_dta.then_some(&dta[..]),
                delta_softplus: true,
                discretization: disc,
            };
            let mut out = [0.0f32; B * D * L];
            let mut state = [0.0f32; 2 * B * D * N];
            selective_scan(&args, &mut out, &mut state).unwrap();
            assert_close(&out, &want, "out");
            let last: [f64; 2 * B * D * N] = core::array::from_fn(|i| {
                let c = want_last[i / 2];
                if i % 2 == 0 {
                    c.re
                } else {
                    c.im
                }
            });
            assert_close(&state, &last, "last_state");
        }
    }

    /// Without D, z, bias and softplus, `out` is exactly `Σ C h`; and a scan split in two
    /// halves (the state carried through) equals the whole scan.
    #[test]
    fn optional_arguments_and_state_carry_over() {
        const H: usize = 4; // first half length
        let mut rng = Rng(77);
        let u: [f32; D * L] = rng.fill(-1.0, 1.0);
        let delta: [f32; D * L] = rng.fill(0.01, 0.5);
        let a: [f32; D * N] = rng.fill(-3.0, -0.5);
        let bv: [f32; N * L] = rng.fill(-1.0, 1.0);
        let cv: [f32; N * L] = rng.fill(-1.0, 1.0);
        let base = SelectiveScanArgs {
            batch: 1,
            dim: D,
            d_state: N,
            len: L,
            u: &u,
            delta: &delta,
            a: StateMatrix::Real(&a),
            b: InputMatrix::Varying {
                data: &bv,
                groups: 1,
            },
            c: InputMatrix::Varying {
                data: &cv,
                groups: 1,
            },
            d: None,
            z: None,
            delta_bias: None,
            delta_a: None,
            delta_softplus: false,
            discretization: Discretization::Zoh,
        };
        let mut out = [0.0f32; D * L];
        let mut state = [0.0f32; D * N];
        selective_scan(&base, &mut out, &mut state).unwrap();
        // Reference: plain sums, real arithmetic in f64.
        for d in 0..D {
            let mut h = [0.0f64; N];
            for t in 0..L {
                let dt = delta[d * L + t] as f64;
                let mut y = 0.0;
                for n in 0..N {
                    let an = a[d * N + n] as f64;
                    h[n] = (an * dt).exp() * h[n]
                        + ((an * dt).exp() - 1.0) / an * bv[n * L + t] as f64 * u[d * L + t] as f64;
                    y += cv[n * L + t] as f64 * h[n];
                }
                assert!(
                    (out[d * L + t] as f64 - y).abs() < 1e-5,
                    "{} vs {y}",
                    out[d * L + t]
                );
            }
        }
        // Two halves: slice every (d, L) and (n, L) row at H.
        let split = |v: &[f32], rows: usize, first: bool| -> [f32; D * L] {
            let mut r = [0.0f32; D * L];
            let (lo, hi) = if first { (0, H) } else { (H, L) };
            for i in 0..rows {
                for t in lo..hi {
                    r[i * (hi - lo) + t - lo] = v[i * L + t];
                }
            }
            r
        };
        let mut state2 = [0.0f32; D * N];
        let mut out2 = [0.0f32; D * L];
        for first in [true, false] {
            let len = if first { H } else { L - H };
            let (u_h, dl_h) = (split(&u, D, first), split(&delta, D, first));
            let (b_h, c_h) = (split(&bv, N, first), split(&cv, N, first));
            let args = SelectiveScanArgs {
                len,
                u: &u_h[..D * len],
                delta: &dl_h[..D * len],
                b: InputMatrix::Varying {
                    data: &b_h[..N * len],
                    groups: 1,
                },
                c: InputMatrix::Varying {
                    data: &c_h[..N * len],
                    groups: 1,
                },
                ..base
            };
            let mut o = [0.0f32; D * L];
            selective_scan(&args, &mut o[..D * len], &mut state2).unwrap();
            for d in 0..D {
                for t in 0..len {
                    out2[d * L + t + if first { 0 } else { H }] = o[d * len + t];
                }
            }
        }
        assert_eq!(state, state2);
        assert_eq!(out, out2);
    }

    #[test]
    fn wrong_sizes_and_rules_are_rejected_without_writing() {
        let u = [0.5f32; D * L];
        let a = [-1.0f32; D * N];
        let bc = [1.0f32; N * L];
        let good = SelectiveScanArgs {
            batch: 1,
            dim: D,
            d_state: N,
            len: L,
            u: &u,
            delta: &u,
            a: StateMatrix::Real(&a),
            b: InputMatrix::Varying {
                data: &bc,
                groups: 1,
            },
            c: InputMatrix::Varying {
                data: &bc,
                groups: 1,
            },
            d: None,
            z: None,
            delta_bias: None,
            delta_a: None,
            delta_softplus: true,
            discretization: Discretization::Mamba,
        };
        let mut out = [7.0f32; D * L];
        let mut state = [3.0f32; D * N];
        let check = |args: SelectiveScanArgs<'_>, out: &mut [f32], state: &mut [f32]| {
            let e = selective_scan(&args, out, state).unwrap_err();
            assert!(out.iter().all(|&v| v == 7.0 || out.len() != D * L));
            assert!(state.iter().all(|&v| v == 3.0));
            e
        };
        assert!(matches!(
            check(
                SelectiveScanArgs { u: &u[1..], ..good },
                &mut out,
                &mut state
            ),
            Error::BufferLength { what: "u", .. }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    a: StateMatrix::Complex(&a),
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::BufferLength { what: "A", .. }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    b: InputMatrix::Varying {
                        data: &bc,
                        groups: 3
                    },
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::InvalidConfig { .. }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    c: InputMatrix::Fixed(&bc),
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::BufferLength { what: "C", .. }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    d: Some(&u),
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::BufferLength { what: "D", .. }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    z: Some(&a),
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::BufferLength { what: "z", .. }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    delta_a: Some(&a),
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::BufferLength { what: "deltaA", .. }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    delta_bias: Some(&u),
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::BufferLength {
                what: "delta_bias",
                ..
            }
        ));
        assert!(matches!(
            check(
                SelectiveScanArgs {
                    discretization: Discretization::Async,
                    ..good
                },
                &mut out,
                &mut state
            ),
            Error::UnsupportedDiscretization { .. }
        ));
        assert!(matches!(
            check(good, &mut out[1..], &mut state),
            Error::BufferLength { what: "out", .. }
        ));
        let mut big_state = [3.0f32; 2 * D * N];
        assert!(matches!(
            check(good, &mut out, &mut big_state),
            Error::BufferLength { what: "state", .. }
        ));
        selective_scan(&good, &mut out, &mut state).unwrap();
    }
}
