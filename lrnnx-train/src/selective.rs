//! Mamba's selective scan fused into one candle custom op with a hand-written backward: the
//! discretization, the recurrence and the read-out by `C_t` happen inside the op, so the
//! `(B, L, E, N)` decay, input term and state are never materialized as tensors.
//!
//! Inputs (time-varying per channel `e < E` or per state `n < N`; `A` is fixed):
//!
//! ```text
//! u, Δ, ΔA : (B, L, E)      A : (E, N)      B_t, C_t : (B, L, N)
//! h_t[e,n] = Ā(ΔA_t[e], A[e,n])·h_{t−1}[e,n] + γ̄(Δ_t[e], A[e,n])·B_t[n]·u_t[e]   (h_{−1} = 0)
//! y_t[e]   = Σ_n C_t[n]·h_t[e,n]                                                   (B, L, E)
//! ```
//!
//! with the rules of [`MambaRule`] (those of lrnnx's selective-scan forward; `x = ΔA·A`,
//! `w = Δ·A`):
//!
//! | rule       | `Ā`                                   | `γ̄`                      |
//! |------------|---------------------------------------|--------------------------|
//! | `mamba`    | `exp(x)`                              | `Δ`                      |
//! | `zoh`      | `exp(x)`                              | `expm1(w)/A` (`Δ` at `A = 0`) |
//! | `bilinear` | `(1 + x'/2)/(1 − x'/2)`, `x' = clamp(x, ±2e18)` | `Δ/(1 − w/2)`  |
//! | `dirac`    | `exp(x)`                              | `1`                      |
//!
//! **Packing.** A candle custom op has at most three operands and one result, so the six inputs
//! travel as three tensors of compatible shapes: `[u | Δ | ΔA]` concatenated on the last axis
//! `(B, L, 3E)`, `A` `(E, N)`, and `[B_t | C_t]` `(B, L, 2N)` (in Mamba a slice of `x_proj`'s
//! output). The backward returns the gradient of each packed operand in the same layout; the
//! concatenations' own backward splits it (and adds the two halves when `ΔA` is `Δ` itself).
//!
//! **Backward** (upstream `G_t[e] = ∂L/∂y_t[e]`; `λ_t = ∂L/∂h_t`, a reverse scan):
//!
//! ```text
//! λ_t[e,n]   = G_t[e]·C_t[n] + Ā_{t+1}[e,n]·λ_{t+1}[e,n]          (λ_L = 0)
//! ∂C_t[n]    = Σ_e G_t[e]·h_t[e,n]
//! ∂u_t[e]    = Σ_n λ·γ̄·B_t[n]            ∂B_t[n] = Σ_e λ·γ̄·u_t[e]
//! ∂Ā = λ·h_{t−1},  ∂γ̄ = λ·B_t[n]·u_t[e]
//! ∂ΔA_t[e]   = Σ_n ∂Ā·Ā'(x)·A             ∂Δ_t[e] = Σ_n ∂γ̄·∂γ̄/∂Δ
//! ∂A[e,n]    = Σ_{b,t} ∂Ā·Ā'(x)·ΔA + ∂γ̄·∂γ̄/∂A
//! ```
//!
//! The states are not kept by the forward. The backward runs, per batch row, one forward pass
//! that stores the state every `K = ⌈√L⌉` steps (`⌈L/K⌉·E·N` values), then walks the segments
//! from the last to the first: it recomputes the segment's `K` states from its checkpoint
//! (`(K+1)·E·N` values) and runs the reverse recursion over them. Work O(B·L·E·N) both ways
//! (the backward ≈ 3 forwards), extra memory O(√L·E·N), independent of `B`.
//!
//! On the CPU: f32 (with the core's branch-free `exp`/`expm1`, which vectorize) or f64 (std).
//! On a CUDA device (feature `cuda`): f32, through `lrnnx-kernels`' selective scan on candle's
//! stream (module `gpu`, feature `cuda`); the operands are then stacked instead of concatenated,
//! `[u; Δ; ΔA]` `(3, B, L, E)` (or `[u; Δ]` when `ΔA` is the very tensor `Δ`) and `[B_t; C_t]`
//! `(2, B, L, N)`, so each kernel input is a contiguous range, and the backward reuses the
//! forward's chunk checkpoints instead of the `√L` segments above.
//!
//! [`mamba_scan`] is Mamba's whole scan block: the time step's bias and softplus before the scan
//! and the `D` skip and `SiLU(z)` gate after it. On CUDA they run inside the kernel (one op, one
//! kernel each way); elsewhere they are candle ops around [`selective_scan`].

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

use crate::mamba::MambaRule;

/// The arithmetic of the op, for `f32` and `f64`.
trait Float:
    Copy
    + Default
    + PartialEq
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + candle_core::WithDType
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    /// The bilinear clamp bound on `ΔA·A` (as in `mamba.rs` and the core).
    const CLAMP: Self;
    fn exp(self) -> Self;
    fn expm1(self) -> Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    const CLAMP: Self = 2e18;
    #[inline(always)]
    fn exp(self) -> Self {
        lrnnx_core::fastmath::exp(self)
    }
    #[inline(always)]
    fn expm1(self) -> Self {
        lrnnx_core::fastmath::expm1(self)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    const CLAMP: Self = 2e18;
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn expm1(self) -> Self {
        f64::exp_m1(self)
    }
}

/// Rule codes, for monomorphized inner loops.
const MAMBA: u8 = 0;
const ZOH: u8 = 1;
const BILINEAR: u8 = 2;
const DIRAC: u8 = 3;

fn code(rule: MambaRule) -> u8 {
    match rule {
        MambaRule::Mamba => MAMBA,
        MambaRule::Zoh => ZOH,
        MambaRule::Bilinear => BILINEAR,
        MambaRule::Dirac => DIRAC,
    }
}

/// `(Ā, γ̄)` of one `(e, n)` pair from `A[e,n]`, `Δ` and `ΔA` (module table).
#[inline(always)]
fn disc<T: Float, const R: u8>(a: T, dt: T, dta: T) -> (T, T) {
    let x = dta * a;
    match R {
        MAMBA => (x.exp(), dt),
        ZOH => {
            let g = if a == T::ZERO {
                dt
            } else {
                (dt * a).expm1() / a
            };
            (x.exp(), g)
        }
        BILINEAR => {
            let v = clamp(x);
            let ab = (T::ONE + T::HALF * v) / (T::ONE - T::HALF * v);
            (ab, dt / (T::ONE - T::HALF * dt * a))
        }
        _ => (x.exp(), T::ONE),
    }
}

#[inline(always)]
fn clamp<T: Float>(x: T) -> T {
    let lo = T::ZERO - T::CLAMP;
    if x < lo {
        lo
    } else if x > T::CLAMP {
        T::CLAMP
    } else {
        x
    }
}

/// Everything the backward needs of one `(e, n)` pair: `(Ā, dĀ/dx, γ̄, ∂γ̄/∂Δ, ∂γ̄/∂A)` with
/// `x = ΔA·A` (so `∂Ā/∂ΔA = dĀ/dx·A`, `∂Ā/∂A = dĀ/dx·ΔA`).
#[inline(always)]
fn disc_grad<T: Float, const R: u8>(a: T, dt: T, dta: T) -> (T, T, T, T, T) {
    let x = dta * a;
    match R {
        MAMBA => {
            let ab = x.exp();
            (ab, ab, dt, T::ONE, T::ZERO)
        }
        ZOH => {
            let ab = x.exp();
            if a == T::ZERO {
                (ab, ab, dt, T::ONE, T::HALF * dt * dt)
            } else {
                let em = (dt * a).expm1();
                let g = em / a;
                (ab, ab, g, em + T::ONE, (dt * (em + T::ONE) - g) / a)
            }
        }
        BILINEAR => {
            let v = clamp(x);
            let den = T::ONE - T::HALF * v;
            let ab = (T::ONE + T::HALF * v) / den;
            let dab = if v == x {
                T::ONE / (den * den)
            } else {
                T::ZERO
            };
            let dg = T::ONE - T::HALF * dt * a;
            let g = dt / dg;
            let ggd = T::ONE / (dg * dg);
            (ab, dab, g, ggd, T::HALF * dt * dt * ggd)
        }
        _ => {
            let ab = x.exp();
            (ab, ab, T::ONE, T::ZERO, T::ZERO)
        }
    }
}

/// `(B, L, E, N)` of the op.
type Dims = (usize, usize, usize, usize);

/// `Σ_k x[k]·y[k]` with 8 independent partial sums (a reduction the compiler vectorizes).
#[inline(always)]
fn dot<T: Float>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for j in 0..8 {
            acc[j] += xs[j] * ys[j];
        }
    }
    let mut s = T::ZERO;
    for (a, b) in xr.iter().zip(yr) {
        s += *a * *b;
    }
    let (a4, b4) = acc.split_at(4);
    let mut p = [T::ZERO; 4];
    for j in 0..4 {
        p[j] = a4[j] + b4[j];
    }
    s + (p[0] + p[2]) + (p[1] + p[3])
}

/// `Σ_k x[k]` (as [`dot`]).
#[inline(always)]
fn sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let xc = x.chunks_exact(8);
    let mut s = T::ZERO;
    for v in xc.remainder() {
        s += *v;
    }
    for xs in xc {
        for j in 0..8 {
            acc[j] += xs[j];
        }
    }
    let mut p = [T::ZERO; 4];
    for j in 0..4 {
        p[j] = acc[j] + acc[j + 4];
    }
    s + (p[0] + p[2]) + (p[1] + p[3])
}

/// One step of the recurrence for every `(e, n)` at one `(b, t)`: `h ← Ā·h + γ̄·B·u`, and
/// `y[e] = Σ_n C[n]·h[e,n]` when `y` is given. `ch` is the `[u | Δ | ΔA]` row, `bc` the
/// `[B | C]` row. The loop over `n` is elementwise (it vectorizes); the read-out is a separate
/// [`dot`].
#[inline(always)]
fn step<T: Float, const R: u8>(
    h: &mut [T],
    a: &[T],
    ch: &[T],
    bc: &[T],
    (e, n): (usize, usize),
    mut y: Option<&mut [T]>,
) {
    let (u, rest) = ch.split_at(e);
    let (dt, dta) = rest.split_at(e);
    let (bt, ct) = bc.split_at(n);
    for ei in 0..e {
        let (ue, de, dae) = (u[ei], dt[ei], dta[ei]);
        let hrow = &mut h[ei * n..(ei + 1) * n];
        let arow = &a[ei * n..(ei + 1) * n];
        for ((hk, &ak), &bk) in hrow.iter_mut().zip(arow).zip(bt) {
            let (ab, g) = disc::<T, R>(ak, de, dae);
            *hk = ab * *hk + g * bk * ue;
        }
        if let Some(y) = y.as_deref_mut() {
            y[ei] = dot(ct, hrow);
        }
    }
}

/// The forward: `y` `(B, L, E)` from the packed operands.
fn forward<T: Float, const R: u8>(ch: &[T], a: &[T], bc: &[T], (b, l, e, n): Dims) -> Vec<T> {
    let mut y = vec![T::ZERO; b * l * e];
    let mut h = vec![T::ZERO; e * n];
    for bi in 0..b {
        h.fill(T::ZERO);
        for t in 0..l {
            let row = bi * l + t;
            step::<T, R>(
                &mut h,
                a,
                &ch[row * 3 * e..(row + 1) * 3 * e],
                &bc[row * 2 * n..(row + 1) * 2 * n],
                (e, n),
                Some(&mut y[row * e..(row + 1) * e]),
            );
        }
    }
    y
}

/// The backward (module doc): `(∂ch (B, L, 3E), ∂A (E, N), ∂bc (B, L, 2N))` from the packed
/// operands and the upstream gradient `gy` `(B, L, E)`.
fn backward<T: Float, const R: u8>(
    ch: &[T],
    a: &[T],
    bc: &[T],
    gy: &[T],
    (b, l, e, n): Dims,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let en = e * n;
    let mut dch = vec![T::ZERO; b * l * 3 * e];
    let mut da = vec![T::ZERO; en];
    let mut dbc = vec![T::ZERO; b * l * 2 * n];
    if l == 0 || en == 0 {
        return (dch, da, dbc);
    }
    let k = ((l as f64).sqrt().ceil() as usize).max(1);
    let segs = l.div_ceil(k);
    // ckpt[s] = h_{s·K − 1} (the state entering segment s).
    let mut ckpt = vec![T::ZERO; segs * en];
    // hs[i] = h_{t0 + i − 1} for the current segment [t0, t1): i = 0 is the checkpoint.
    let mut hs = vec![T::ZERO; (k + 1) * en];
    // carry = Ā_{t+1} ⊙ λ_{t+1}.
    let mut carry = vec![T::ZERO; en];
    // Per-(e) scratch of the terms summed over n.
    let (mut t_du, mut t_dd, mut t_dda) = (vec![T::ZERO; n], vec![T::ZERO; n], vec![T::ZERO; n]);
    for bi in 0..b {
        let chrow = |t: usize| &ch[(bi * l + t) * 3 * e..(bi * l + t + 1) * 3 * e];
        let bcrow = |t: usize| &bc[(bi * l + t) * 2 * n..(bi * l + t + 1) * 2 * n];
        // Checkpoint pass.
        let mut h = vec![T::ZERO; en];
        for s in 0..segs {
            ckpt[s * en..(s + 1) * en].copy_from_slice(&h);
            if s + 1 < segs {
                for t in s * k..(s + 1) * k {
                    step::<T, R>(&mut h, a, chrow(t), bcrow(t), (e, n), None);
                }
            }
        }
        carry.fill(T::ZERO);
        for s in (0..segs).rev() {
            let (t0, t1) = (s * k, ((s + 1) * k).min(l));
            // Recompute the segment's states.
            hs[..en].copy_from_slice(&ckpt[s * en..(s + 1) * en]);
            for t in t0..t1 {
                let i = t - t0;
                let (done, rest) = hs.split_at_mut((i + 1) * en);
                let cur = &mut rest[..en];
                cur.copy_from_slice(&done[i * en..]);
                step::<T, R>(cur, a, chrow(t), bcrow(t), (e, n), None);
            }
            // Reverse recursion.
            for t in (t0..t1).rev() {
                let i = t - t0;
                let row = bi * l + t;
                let hprev = &hs[i * en..(i + 1) * en];
                let hcur = &hs[(i + 1) * en..(i + 2) * en];
                let c = chrow(t);
                let (u, rest) = c.split_at(e);
                let (dt, dta) = rest.split_at(e);
                let (bt, ct) = bcrow(t).split_at(n);
                let g_row = &gy[row * e..(row + 1) * e];
                let (dbt, dct) = dbc[row * 2 * n..(row + 1) * 2 * n].split_at_mut(n);
                let dch_row = &mut dch[row * 3 * e..(row + 1) * 3 * e];
                for ei in 0..e {
                    let (ue, de, dae, ge) = (u[ei], dt[ei], dta[ei], g_row[ei]);
                    let r = ei * n..(ei + 1) * n;
                    let (arow, hp, hc) = (&a[r.clone()], &hprev[r.clone()], &hcur[r.clone()]);
                    let crow = &mut carry[r.clone()];
                    let darow = &mut da[r];
                    // Elementwise over n (vectorizes); the sums over n come after.
                    for kk in 0..n {
                        let ak = arow[kk];
                        let (ab, dabx, g, ggd, gga) = disc_grad::<T, R>(ak, de, dae);
                        let lam = ge * ct[kk] + crow[kk];
                        dct[kk] += ge * hc[kk];
                        let dab = lam * hp[kk] * dabx;
                        let dg = lam * bt[kk] * ue;
                        let lg = lam * g;
                        dbt[kk] += lg * ue;
                        darow[kk] += dab * dae + dg * gga;
                        crow[kk] = ab * lam;
                        t_du[kk] = lg;
                        t_dd[kk] = dg * ggd;
                        t_dda[kk] = dab;
                    }
                    dch_row[ei] = dot(&t_du, bt);
                    dch_row[e + ei] = sum(&t_dd);
                    dch_row[2 * e + ei] = dot(&t_dda, arow);
                }
            }
        }
    }
    (dch, da, dbc)
}

/// Contiguous data of a CPU storage, from its layout's start offset.
fn data<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("selective scan: operand must be contiguous"),
    }
}

/// What the stacked CUDA operands of the fused op hold (module doc, CUDA): the first operand
/// `(rows, B, L, E)` is `[u; Δ; ΔA?; z?]`, the second `A` `(E, N)` or, for [`mamba_scan`],
/// `[A; D; bias]` flattened `(E·(N + 2))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CudaPacking {
    /// A separate `ΔA` row (else `ΔA` is `Δ` and the kernel returns their summed gradient).
    pub delta_a: bool,
    /// [`mamba_scan`]'s operands: raw `Δ` (the kernel adds the bias and takes the softplus),
    /// the `D` skip, and the second operand `[A; D; bias]`.
    pub mamba: bool,
    /// A `z` row: the output gated by `SiLU(z)` (with `mamba` only).
    pub z: bool,
}

impl CudaPacking {
    /// Rows of the first operand: `u`, `Δ`, then `ΔA` and `z` where present.
    pub(crate) fn rows(&self) -> usize {
        2 + usize::from(self.delta_a) + usize::from(self.z)
    }
}

/// The fused op on `([u | Δ | ΔA] (B, L, 3E), A (E, N), [B_t | C_t] (B, L, 2N))`, or with
/// `stacked` (CUDA) on the operands that [`CudaPacking`] describes and `[B_t; C_t]`
/// `(2, B, L, N)`.
struct SelectiveScan {
    rule: MambaRule,
    stacked: Option<CudaPacking>,
    /// The CUDA forward's chunk checkpoints, for the backward.
    #[cfg(feature = "cuda")]
    ckpt: std::sync::Mutex<Option<candle_core::cuda::cudarc::driver::CudaSlice<f32>>>,
}

impl SelectiveScan {
    fn new(rule: MambaRule, stacked: Option<CudaPacking>) -> Self {
        SelectiveScan {
            rule,
            stacked,
            #[cfg(feature = "cuda")]
            ckpt: std::sync::Mutex::new(None),
        }
    }

    fn dims(&self, ch: &Shape, a: &Shape, bc: &Shape) -> Result<Dims> {
        if let Some(pack) = self.stacked {
            let rows = pack.rows();
            let (b, l, e) = match ch.dims() {
                [r, b, l, e] if *r == rows => (*b, *l, *e),
                d => bail!(
                    "selective scan: the stacked operands have shape {d:?}, expected \
                     ({rows}, B, L, E)"
                ),
            };
            let n = match bc.dims() {
                [2, bb, ll, n] if (*bb, *ll) == (b, l) => *n,
                d => bail!("selective scan: `[B; C]` has shape {d:?}, expected (2, {b}, {l}, N)"),
            };
            let a_ok = if pack.mamba {
                a.dims() == [e * (n + 2)]
            } else {
                a.dims() == [e, n]
            };
            if !a_ok {
                bail!(
                    "selective scan: `A` has shape {:?}, expected {}",
                    a.dims(),
                    if pack.mamba {
                        format!("({}) = [A; D; bias] flattened", e * (n + 2))
                    } else {
                        format!("({e}, {n})")
                    }
                );
            }
            return Ok((b, l, e, n));
        }
        let (e, n) = match a.dims() {
            [e, n] => (*e, *n),
            d => bail!("selective scan: `A` has shape {d:?}, expected (E, N)"),
        };
        let (b, l) = match ch.dims() {
            [b, l, c] if *c == 3 * e => (*b, *l),
            d => bail!("selective scan: `[u | Δ | ΔA]` has shape {d:?}, expected (B, L, 3·{e})"),
        };
        if bc.dims() != [b, l, 2 * n] {
            bail!(
                "selective scan: `[B | C]` has shape {:?}, expected ({b}, {l}, 2·{n})",
                bc.dims()
            );
        }
        Ok((b, l, e, n))
    }

    fn run_fwd<T: Float>(&self, ch: &[T], a: &[T], bc: &[T], d: Dims) -> Vec<T> {
        match code(self.rule) {
            MAMBA => forward::<T, MAMBA>(ch, a, bc, d),
            ZOH => forward::<T, ZOH>(ch, a, bc, d),
            BILINEAR => forward::<T, BILINEAR>(ch, a, bc, d),
            _ => forward::<T, DIRAC>(ch, a, bc, d),
        }
    }

    /// The backward straight on the tensors' CPU storage.
    fn run_bwd<T: Float>(
        &self,
        ch: &Tensor,
        a: &Tensor,
        bc: &Tensor,
        gy: &Tensor,
        d: Dims,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (ch, a, bc, gy) = (
            ch.contiguous()?,
            a.contiguous()?,
            bc.contiguous()?,
            gy.contiguous()?,
        );
        let (dch, da, dbc) = {
            let (s1, l1) = ch.storage_and_layout();
            let (s2, l2) = a.storage_and_layout();
            let (s3, l3) = bc.storage_and_layout();
            let (s4, l4) = gy.storage_and_layout();
            match (&*s1, &*s2, &*s3, &*s4) {
                (Storage::Cpu(s1), Storage::Cpu(s2), Storage::Cpu(s3), Storage::Cpu(s4)) => {
                    let (x1, x2, x3, x4) = (
                        data(s1.as_slice::<T>()?, l1)?,
                        data(s2.as_slice::<T>()?, l2)?,
                        data(s3.as_slice::<T>()?, l3)?,
                        data(s4.as_slice::<T>()?, l4)?,
                    );
                    match code(self.rule) {
                        MAMBA => backward::<T, MAMBA>(x1, x2, x3, x4, d),
                        ZOH => backward::<T, ZOH>(x1, x2, x3, x4, d),
                        BILINEAR => backward::<T, BILINEAR>(x1, x2, x3, x4, d),
                        _ => backward::<T, DIRAC>(x1, x2, x3, x4, d),
                    }
                }
                _ => bail!("selective scan: the backward runs on CPU tensors only"),
            }
        };
        let dev = ch.device();
        Ok((
            Tensor::from_vec(dch, ch.shape(), dev)?,
            Tensor::from_vec(da, a.shape(), dev)?,
            Tensor::from_vec(dbc, bc.shape(), dev)?,
        ))
    }
}

impl CustomOp3 for SelectiveScan {
    fn name(&self) -> &'static str {
        "selective-scan"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if self.stacked.is_some() {
            bail!("selective scan: stacked operands are for the CUDA path");
        }
        let d = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x1), CpuStorage::F32(x2), CpuStorage::F32(x3)) => {
                CpuStorage::F32(self.run_fwd(data(x1, l1)?, data(x2, l2)?, data(x3, l3)?, d))
            }
            (CpuStorage::F64(x1), CpuStorage::F64(x2), CpuStorage::F64(x3)) => {
                CpuStorage::F64(self.run_fwd(data(x1, l1)?, data(x2, l2)?, data(x3, l3)?, d))
            }
            _ => bail!("selective scan: operands must all be f32 or all f64"),
        };
        Ok((out, Shape::from((d.0, d.1, d.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Some(pack) = self.stacked else {
            bail!("selective scan: the CUDA path takes stacked operands");
        };
        let d = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let (y, ckpt) =
            crate::gpu::selective_forward(self.rule, pack, [(s1, l1), (s2, l2), (s3, l3)], d)?;
        if let Ok(mut c) = self.ckpt.lock() {
            *c = Some(ckpt);
        }
        Ok((y, Shape::from((d.0, d.1, d.2))))
    }

    fn bwd(
        &self,
        ch: &Tensor,
        a: &Tensor,
        bc: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(ch.shape(), a.shape(), bc.shape())?;
        if let Some(_pack) = self.stacked {
            #[cfg(feature = "cuda")]
            {
                let ckpt = self
                    .ckpt
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("selective scan: lock poisoned".into()))?;
                let (dch, da, dbc) = crate::gpu::selective_backward(
                    self.rule,
                    _pack,
                    [ch, a, bc, gy],
                    d,
                    ckpt.as_ref(),
                )?;
                return Ok((Some(dch), Some(da), Some(dbc)));
            }
            #[cfg(not(feature = "cuda"))]
            bail!("selective scan: stacked operands need the `cuda` feature");
        }
        let (dch, da, dbc) = match ch.dtype() {
            DType::F32 => self.run_bwd::<f32>(ch, a, bc, gy, d)?,
            DType::F64 => self.run_bwd::<f64>(ch, a, bc, gy, d)?,
            dt => bail!("selective scan: unsupported dtype {dt:?}"),
        };
        Ok((Some(dch), Some(da), Some(dbc)))
    }
}

/// `[x_0; x_1; x_2?]` stacked on a new leading axis, for the CUDA operands: a custom op so that
/// the backward hands each input its row of the gradient directly (candle's `stack` goes
/// through one more node per input, each accumulating a full-size zero tensor).
struct StackRows;

impl StackRows {
    /// The inputs of one dtype and shape, stacked (`(rows, …shape)`).
    fn cpu(parts: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let shape = parts[0].1.shape().clone();
        if parts.iter().any(|(_, l)| l.shape() != &shape) {
            bail!("stack: the rows differ in shape");
        }
        let mut dims = vec![parts.len()];
        dims.extend_from_slice(shape.dims());
        fn cat<T: Copy>(xs: &[(&[T], &Layout)]) -> Result<Vec<T>> {
            let mut out = Vec::new();
            for (x, l) in xs {
                out.extend_from_slice(data(x, l)?);
            }
            Ok(out)
        }
        let out = match parts[0].0 {
            CpuStorage::F32(_) => {
                let xs: Result<Vec<_>> = parts
                    .iter()
                    .map(|(s, l)| Ok((s.as_slice::<f32>()?, *l)))
                    .collect();
                CpuStorage::F32(cat(&xs?)?)
            }
            CpuStorage::F64(_) => {
                let xs: Result<Vec<_>> = parts
                    .iter()
                    .map(|(s, l)| Ok((s.as_slice::<f64>()?, *l)))
                    .collect();
                CpuStorage::F64(cat(&xs?)?)
            }
            s => bail!(
                "stack: unsupported dtype {:?}",
                candle_core::backend::BackendStorage::dtype(s)
            ),
        };
        Ok((out, Shape::from(dims)))
    }

    /// Row `i` of the gradient of the stack.
    fn row(grad: &Tensor, i: usize) -> Result<Option<Tensor>> {
        Ok(Some(grad.get(i)?))
    }
}

impl candle_core::CustomOp2 for StackRows {
    fn name(&self) -> &'static str {
        "stack-rows"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        StackRows::cpu(&[(s1, l1), (s2, l2)])
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::gpu::stack_rows(&[(s1, l1), (s2, l2)])
    }
    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((StackRows::row(grad, 0)?, StackRows::row(grad, 1)?))
    }
}

impl CustomOp3 for StackRows {
    fn name(&self) -> &'static str {
        "stack-rows"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        StackRows::cpu(&[(s1, l1), (s2, l2), (s3, l3)])
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::gpu::stack_rows(&[(s1, l1), (s2, l2), (s3, l3)])
    }
    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((
            StackRows::row(grad, 0)?,
            StackRows::row(grad, 1)?,
            StackRows::row(grad, 2)?,
        ))
    }
}

/// Refuses, naming the operand, any operand of a CUDA scan that is not f32 (the scan kernels
/// compute in f32; an f64 or bf16 operand would otherwise fail deep inside the stacking op).
fn cuda_f32_only(op: &str, operands: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in operands {
        if t.dtype() != DType::F32 {
            bail!(
                "{op}: `{name}` is {:?} on CUDA; the CUDA kernels take f32 tensors only",
                t.dtype()
            );
        }
    }
    Ok(())
}

/// `rows` (one shape) stacked on a new leading axis: [`StackRows`] for 2 or 3 rows, candle's
/// `stack` otherwise.
fn stack_rows(rows: &[&Tensor]) -> Result<Tensor> {
    let c: Vec<Tensor> = rows.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    match c.as_slice() {
        [a, b] => a.apply_op2(b, StackRows),
        [a, b, d] => a.apply_op3(b, d, StackRows),
        _ => Tensor::stack(&c, 0),
    }
}

/// Mamba's selective scan, fused (module doc): `y (B, L, E)` with `y_t[e] = Σ_n C_t[n]·h_t[e,n]`
/// from `u`, `Δ`, `ΔA` `(B, L, E)`, `A` `(E, N)`, `B_t`, `C_t` `(B, L, N)` under `rule`; all of
/// one dtype (f32 or f64) on the CPU, f32 on a CUDA device (feature `cuda`). Gradients flow to
/// all six (through the packing concatenations; pass the same tensor as `delta` and `delta_a`
/// and its gradient is the sum).
pub fn selective_scan(
    u: &Tensor,
    delta: &Tensor,
    delta_a: &Tensor,
    a: &Tensor,
    b_t: &Tensor,
    c_t: &Tensor,
    rule: MambaRule,
) -> Result<Tensor> {
    if a.rank() != 2 || a.dims()[0] != u.dims().last().copied().unwrap_or(0) {
        bail!(
            "selective scan: `A` has shape {:?}, expected (E, N) with E of `u` {:?}",
            a.dims(),
            u.dims()
        );
    }
    for (name, t) in [("u", u), ("Δ", delta), ("ΔA", delta_a)] {
        if t.rank() != 3 || t.dims() != u.dims() {
            bail!(
                "selective scan: `{name}` has shape {:?}, expected (B, L, E) = {:?}",
                t.dims(),
                u.dims()
            );
        }
    }
    for (name, t) in [("B_t", b_t), ("C_t", c_t)] {
        if t.rank() != 3 || t.dims()[..2] != u.dims()[..2] || t.dims()[2] != a.dims()[1] {
            bail!(
                "selective scan: `{name}` has shape {:?}, expected (B, L, N) with (B, L) of `u` \
                 and N of `A`",
                t.dims()
            );
        }
    }
    if u.device().is_cuda() {
        cuda_f32_only(
            "selective scan",
            &[
                ("u", u),
                ("delta", delta),
                ("delta_a", delta_a),
                ("A", a),
                ("B_t", b_t),
                ("C_t", c_t),
            ],
        )?;
        // `ΔA` the very tensor `Δ` (Mamba without event time steps): one row fewer, and the
        // kernel may take its sequential mode, which needs Ā and γ̄ from the same time step.
        let shared = delta.id() == delta_a.id();
        let ch = if shared {
            stack_rows(&[u, delta])?
        } else {
            stack_rows(&[u, delta, delta_a])?
        };
        let bc = Tensor::stack(&[b_t, c_t], 0)?;
        let pack = CudaPacking {
            delta_a: !shared,
            mamba: false,
            z: false,
        };
        return ch.apply_op3(&a.contiguous()?, &bc, SelectiveScan::new(rule, Some(pack)));
    }
    let ch = Tensor::cat(&[u, delta, delta_a], 2)?;
    let bc = Tensor::cat(&[b_t, c_t], 2)?;
    ch.apply_op3(&a.contiguous()?, &bc, SelectiveScan::new(rule, None))
}

/// The operands of [`mamba_scan`]: `u`, `delta_raw`, `delta_a`, `z` `(B, L, E)`, `a` `(E, N)`,
/// `d`, `delta_bias` `(E)`, `b_t`, `c_t` `(B, L, N)`.
#[derive(Clone, Copy, Debug)]
pub struct MambaScanInputs<'a> {
    /// The scan input `u` (Mamba's `x` after the convolution and SiLU).
    pub u: &'a Tensor,
    /// The time step before its bias and softplus (`dt_proj(δ)` without its bias).
    pub delta_raw: &'a Tensor,
    /// The time step's bias `b_Δ` (`dt_proj.bias`).
    pub delta_bias: &'a Tensor,
    /// A separate time step for `Ā` (STREAM / event mode), taken as it is; `None`: `ΔA = Δ`.
    pub delta_a: Option<&'a Tensor>,
    /// `A` (negative reals, `−exp(A_log)`).
    pub a: &'a Tensor,
    /// `B_t`.
    pub b_t: &'a Tensor,
    /// `C_t`.
    pub c_t: &'a Tensor,
    /// The skip weights `D`.
    pub d: &'a Tensor,
    /// The gate `z`; `None`: no gate.
    pub z: Option<&'a Tensor>,
}

/// Mamba's scan block, one op on CUDA:
///
/// ```text
/// Δ = softplus(Δ_raw + b_Δ)        ΔA = delta_a or Δ
/// y = (selective_scan(u, Δ, ΔA, A, B_t, C_t) + D⊙u) ⊙ SiLU(z)        (B, L, E)
/// ```
///
/// On a CUDA device (feature `cuda`) the bias, softplus, `D` skip and gate run inside
/// `lrnnx-kernels`' selective scan, forward and backward (no `(B, L, E)` intermediates besides
/// the packed operands); elsewhere they are the candle ops written above around
/// [`selective_scan`], the same arithmetic. Gradients flow to every operand.
pub fn mamba_scan(x: &MambaScanInputs, rule: MambaRule) -> Result<Tensor> {
    let (u, a) = (x.u, x.a);
    let dims = u.dims();
    let (e, n) = match (dims, a.dims()) {
        ([_, _, e], [ea, n]) if ea == e => (*e, *n),
        _ => bail!(
            "mamba scan: `u` {:?} and `A` {:?}, expected (B, L, E) and (E, N)",
            dims,
            a.dims()
        ),
    };
    let rows = [
        Some(("Δ_raw", x.delta_raw)),
        x.delta_a.map(|t| ("ΔA", t)),
        x.z.map(|t| ("z", t)),
    ];
    for (name, t) in rows.into_iter().flatten() {
        if t.dims() != dims {
            bail!(
                "mamba scan: `{name}` has shape {:?}, expected (B, L, E) = {dims:?}",
                t.dims()
            );
        }
    }
    for (name, t) in [("D", x.d), ("delta_bias", x.delta_bias)] {
        if t.dims() != [e] {
            bail!(
                "mamba scan: `{name}` has shape {:?}, expected ({e})",
                t.dims()
            );
        }
    }
    for (name, t) in [("B_t", x.b_t), ("C_t", x.c_t)] {
        if t.dims() != [dims[0], dims[1], n] {
            bail!(
                "mamba scan: `{name}` has shape {:?}, expected ({}, {}, {n})",
                t.dims(),
                dims[0],
                dims[1]
            );
        }
    }
    if u.device().is_cuda() {
        let mut named = vec![
            ("u", u),
            ("delta_raw", x.delta_raw),
            ("A", a),
            ("D", x.d),
            ("delta_bias", x.delta_bias),
            ("B_t", x.b_t),
            ("C_t", x.c_t),
        ];
        named.extend(x.delta_a.map(|t| ("delta_a", t)));
        named.extend(x.z.map(|t| ("z", t)));
        cuda_f32_only("mamba_scan", &named)?;
        let mut rows = vec![u, x.delta_raw];
        rows.extend(x.delta_a);
        rows.extend(x.z);
        let ch = stack_rows(&rows)?;
        let p = Tensor::cat(&[&a.flatten_all()?, x.d, x.delta_bias], 0)?;
        let bc = Tensor::stack(&[x.b_t, x.c_t], 0)?;
        let pack = CudaPacking {
            delta_a: x.delta_a.is_some(),
            mamba: true,
            z: x.z.is_some(),
        };
        return ch.apply_op3(&p, &bc, SelectiveScan::new(rule, Some(pack)));
    }
    let delta = crate::ops::softplus(&x.delta_raw.broadcast_add(x.delta_bias)?)?;
    let yc = selective_scan(
        u,
        &delta,
        x.delta_a.unwrap_or(&delta),
        a,
        x.b_t,
        x.c_t,
        rule,
    )?;
    let y = (yc + u.broadcast_mul(x.d)?)?;
    match x.z {
        Some(z) => y * z.silu()?,
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    const RULES: [MambaRule; 4] = [
        MambaRule::Mamba,
        MambaRule::Zoh,
        MambaRule::Bilinear,
        MambaRule::Dirac,
    ];

    /// Reference: the recurrence per `(b, e, n)` with plain f64 scalars, each rule written out
    /// from its definition (zoh as `(exp(Δ·A) − 1)/A`).
    fn naive(v: &[Vec<f64>], (b, l, e, n): Dims, rule: MambaRule) -> Vec<f64> {
        let (u, dt, dta, a, bt, ct) = (&v[0], &v[1], &v[2], &v[3], &v[4], &v[5]);
        let mut y = vec![0.0; b * l * e];
        for bi in 0..b {
            for ei in 0..e {
                for k in 0..n {
                    let mut h = 0.0;
                    for t in 0..l {
                        let (i, j) = ((bi * l + t) * e + ei, (bi * l + t) * n + k);
                        let ak = a[ei * n + k];
                        let (ab, g) = match rule {
                            MambaRule::Mamba => ((dta[i] * ak).exp(), dt[i]),
                            MambaRule::Zoh => {
                                ((dta[i] * ak).exp(), ((dt[i] * ak).exp() - 1.0) / ak)
                            }
                            MambaRule::Bilinear => (
                                (1.0 + dta[i] * ak / 2.0) / (1.0 - dta[i] * ak / 2.0),
                                dt[i] / (1.0 - dt[i] * ak / 2.0),
                            ),
                            MambaRule::Dirac => ((dta[i] * ak).exp(), 1.0),
                        };
                        h = ab * h + g * bt[j] * u[i];
                        y[i] += ct[j] * h;
                    }
                }
            }
        }
        y
    }

    /// The six inputs of a small case, f64: `u, Δ, ΔA (B, L, E), A (E, N), B_t, C_t (B, L, N)`.
    fn inputs(d: Dims, seed: u64) -> Vec<Tensor> {
        let (b, l, e, n) = d;
        vec![
            rand(&[b, l, e], seed, -1.5, 1.5),
            rand(&[b, l, e], seed + 1, 0.05, 1.2),
            rand(&[b, l, e], seed + 2, 0.05, 1.2),
            rand(&[e, n], seed + 3, -2.0, -0.2),
            rand(&[b, l, n], seed + 4, -1.0, 1.0),
            rand(&[b, l, n], seed + 5, -1.0, 1.0),
        ]
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    #[test]
    fn forward_matches_naive_in_f64_and_f32() {
        // L = 40 spans several checkpoint segments in the backward tests' sizes too.
        let d = (2, 40, 3, 4);
        for rule in RULES {
            let ins = inputs(d, 7);
            let want = naive(&ins.iter().map(flat).collect::<Vec<_>>(), d, rule);
            let y =
                selective_scan(&ins[0], &ins[1], &ins[2], &ins[3], &ins[4], &ins[5], rule).unwrap();
            assert_eq!(y.dims(), &[2, 40, 3]);
            for (g, w) in flat(&y).iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "{rule:?}: {g} vs {w}"
                );
            }
            let f: Vec<Tensor> = ins
                .iter()
                .map(|t| t.to_dtype(DType::F32).unwrap())
                .collect();
            let y = selective_scan(&f[0], &f[1], &f[2], &f[3], &f[4], &f[5], rule).unwrap();
            let y = y.to_dtype(DType::F64).unwrap();
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (g, w) in flat(&y).iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * scale, "{rule:?} f32: {g} vs {w}");
            }
        }
    }

    /// `mamba_scan` against the f64 loop with its extras written out per element:
    /// `Δ = ln(1 + e^(raw + b))`, `y = (naive + D·u)·z·σ(z)`, with and without `z` and `ΔA`.
    #[test]
    fn mamba_scan_matches_naive_with_bias_softplus_skip_and_gate() {
        let (b, l, e, n) = (2, 13, 3, 4);
        for rule in RULES {
            for (sep, gate) in [(false, true), (true, false), (false, false), (true, true)] {
                let ins = inputs((b, l, e, n), 31);
                let raw = rand(&[b, l, e], 40, -3.0, 1.0);
                let bias = rand(&[e], 41, -1.0, 0.5);
                let dd = rand(&[e], 42, -1.0, 1.0);
                let z = rand(&[b, l, e], 43, -3.0, 3.0);
                let (rawv, biasv, dv, zv, uv) =
                    (flat(&raw), flat(&bias), flat(&dd), flat(&z), flat(&ins[0]));
                let delta: Vec<f64> = rawv
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (1.0 + (r + biasv[i % e]).exp()).ln())
                    .collect();
                let mut v: Vec<Vec<f64>> = ins.iter().map(flat).collect();
                v[1] = delta.clone();
                if !sep {
                    v[2] = delta;
                }
                let base = naive(&v, (b, l, e, n), rule);
                let want: Vec<f64> = base
                    .iter()
                    .enumerate()
                    .map(|(i, y)| {
                        let pre = y + dv[i % e] * uv[i];
                        if gate {
                            pre * zv[i] / (1.0 + (-zv[i]).exp())
                        } else {
                            pre
                        }
                    })
                    .collect();
                let x = MambaScanInputs {
                    u: &ins[0],
                    delta_raw: &raw,
                    delta_bias: &bias,
                    delta_a: sep.then_some(&ins[2]),
                    a: &ins[3],
                    b_t: &ins[4],
                    c_t: &ins[5],
                    d: &dd,
                    z: gate.then_some(&z),
                };
                let y = mamba_scan(&x, rule).unwrap();
                for (g, w) in flat(&y).iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                        "{rule:?} ΔA {sep} z {gate}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// Wrong shapes reach `mamba_scan`'s caller as errors naming the operand, not panics.
    #[test]
    fn mamba_scan_rejects_bad_shapes() {
        let (b, l, e, n) = (2, 5, 3, 4);
        let ins = inputs((b, l, e, n), 1);
        let (raw, e_vec, bad_e) = (
            rand(&[b, l, e], 2, -1.0, 1.0),
            rand(&[e], 3, -1.0, 1.0),
            rand(&[e + 1], 4, -1.0, 1.0),
        );
        let short = rand(&[b, l - 1, e], 5, -1.0, 1.0);
        let bad_bt = rand(&[b, l, n + 1], 6, -1.0, 1.0);
        let ok = MambaScanInputs {
            u: &ins[0],
            delta_raw: &raw,
            delta_bias: &e_vec,
            delta_a: None,
            a: &ins[3],
            b_t: &ins[4],
            c_t: &ins[5],
            d: &e_vec,
            z: None,
        };
        assert!(mamba_scan(&ok, MambaRule::Mamba).is_ok());
        let cases: [(MambaScanInputs, &str); 5] = [
            (MambaScanInputs { d: &bad_e, ..ok }, "`D`"),
            (
                MambaScanInputs {
                    delta_bias: &bad_e,
                    ..ok
                },
                "`delta_bias`",
            ),
            (
                MambaScanInputs {
                    z: Some(&short),
                    ..ok
                },
                "`z`",
            ),
            (
                MambaScanInputs {
                    delta_a: Some(&short),
                    ..ok
                },
                "`ΔA`",
            ),
            (MambaScanInputs { b_t: &bad_bt, ..ok }, "`B_t`"),
        ];
        for (x, name) in cases {
            let msg = mamba_scan(&x, MambaRule::Mamba).unwrap_err().to_string();
            assert!(msg.contains(name), "{name}: {msg}");
        }
    }

    /// The stacking op for the CUDA operands, on the CPU: the stack of candle's `stack`, and
    /// each input's gradient its own row of the upstream gradient.
    #[test]
    fn stack_rows_matches_stack_and_routes_gradients() {
        for k in [2usize, 3, 4] {
            let vars: Vec<Var> = (0..k)
                .map(|i| Var::from_tensor(&rand(&[2, 3, 5], 60 + i as u64, -1.0, 1.0)).unwrap())
                .collect();
            let ts: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
            let got = stack_rows(&ts).unwrap();
            let want = Tensor::stack(&ts, 0).unwrap();
            assert_eq!(got.dims(), &[k, 2, 3, 5]);
            assert_eq!(flat(&got), flat(&want));
            let w = rand(&[k, 2, 3, 5], 70, -1.0, 1.0);
            let grads = (&got * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for (i, v) in vars.iter().enumerate() {
                let g = grads.get(v.as_tensor()).unwrap();
                assert_eq!(flat(g), flat(&w.get(i).unwrap()), "row {i} of {k}");
            }
        }
    }

    /// Gradients of `Σ y ⊙ w` with respect to every element of all six inputs against central
    /// finite differences in f64, for every rule; `L = 11` gives checkpoint segments of 4, 4
    /// and 3 steps. A last pass feeds the same tensor as `Δ` and `ΔA`.
    #[test]
    fn gradients_match_finite_differences() {
        let d = (2, 11, 3, 2);
        let w = rand(&[2, 11, 3], 50, -1.0, 1.0);
        for rule in RULES {
            for shared in [false, true] {
                let vars: Vec<Var> = inputs(d, 20)
                    .iter()
                    .map(|t| Var::from_tensor(t).unwrap())
                    .collect();
                let loss = |v: &[Tensor]| -> Tensor {
                    let dta = if shared { &v[1] } else { &v[2] };
                    let y = selective_scan(&v[0], &v[1], dta, &v[3], &v[4], &v[5], rule).unwrap();
                    (y * &w).unwrap().sum_all().unwrap()
                };
                let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                let grads = loss(&ts).backward().unwrap();
                for (vi, var) in vars.iter().enumerate() {
                    if shared && vi == 2 {
                        assert!(grads.get(var.as_tensor()).is_none());
                        continue;
                    }
                    let g = flat(grads.get(var.as_tensor()).unwrap());
                    let base = flat(var.as_tensor());
                    for k in 0..base.len() {
                        let eval = |dx: f64| {
                            let mut p = base.clone();
                            p[k] += dx;
                            let mut vs: Vec<Tensor> =
                                vars.iter().map(|v| v.as_tensor().detach()).collect();
                            vs[vi] =
                                Tensor::from_vec(p, var.as_tensor().dims(), &Device::Cpu).unwrap();
                            loss(&vs).to_scalar::<f64>().unwrap()
                        };
                        let fd = (eval(1e-6) - eval(-1e-6)) / 2e-6;
                        assert!(
                            (g[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                            "{rule:?} shared {shared} input {vi} elem {k}: {} vs {fd}",
                            g[k]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shape_errors_name_the_operand() {
        let ins = inputs((1, 4, 3, 2), 1);
        let bad = rand(&[1, 4, 5], 2, -1.0, 1.0);
        let run = |i: usize| {
            let mut v = ins.clone();
            v[i] = bad.clone();
            selective_scan(&v[0], &v[1], &v[2], &v[3], &v[4], &v[5], MambaRule::Mamba)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(run(1).contains("`Δ`"), "{}", run(1));
        assert!(run(3).contains("`A`"), "{}", run(3));
        assert!(run(5).contains("`C_t`"), "{}", run(5));
    }
}
