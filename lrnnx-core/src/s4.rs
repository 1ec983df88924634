//! S4 with the DPLR (diagonal plus low-rank) state matrix (lrnnx `lrnnx.models.lti.s4.S4`,
//! spec §5.1–5.5, 5.7), stepped with lrnnx's dense recurrence.
//!
//! ## The recurrence (spec §5.4–5.5)
//!
//! Per channel `h` (SSM row `s = h mod n_ssm`), with the N2 = d_state/2 stored conjugate-half
//! parameters and M = d_state:
//!
//! ```text
//! A_h = diag([Λ, conj Λ]) − Σ_r p_r p_rᴴ,     p_r = [P_r, conj P_r],  Λ = −rt(A_real) − i·it(A_imag)
//! 𝒜_h = diag([Δ, Δ])·A_h                      (Δ per channel, or per state when dt is untied)
//! Ā_h = (I − 𝒜_h/2)⁻¹ (I + 𝒜_h/2)             (bilinear)
//! B̄_h = (I − 𝒜_h/2)⁻¹ diag([Δ, Δ]) [B, conj B]
//! s ← Ā_h s + B̄_h x[h]                        s ∈ ℂ^M
//! z[c,h] = Re(C_full[c,h] · s)                 no factor 2: the full state is kept
//! ```
//!
//! then the S4 block tail ([`crate::s4_block`]): `+D⊙x`, GELU twice, optional Linear + GELU.
//!
//! **C̃.** lrnnx converts its parameter `C` in place at the first kernel use (spec §5.4, §18.7):
//! a checkpoint whose buffer `layer.kernel.l_kernel` is `Lk > 0` holds
//! `C̃_full = C_full (I − Ā^{Lk})`. The original output matrix is recovered here exactly as
//! lrnnx's `_setup_step` does: `C_full = C̃_full (I − Ā^{Lk})⁻¹` (Ā^{Lk} by binary powering).
//! With `Lk = 0` the stored `C` is the original.
//!
//! ## Real form
//!
//! Every operator above commutes with the conjugation `σ(s) = [conj s₂, conj s₁]` (the second
//! half of the state mirrors the first), and the state starts at zero, so it always has the form
//! `s = [u, conj u]`. The layer therefore stores and steps the equivalent *real* system on
//! `r = [Re u, Im u] ∈ ℝ^M`: an operator `T = [[T₁₁, T₁₂], [conj T₁₂, conj T₁₁]]` acts on `r` as
//!
//! ```text
//! G(T) = [[Re(T₁₁ + T₁₂), Im(T₁₂ − T₁₁)],
//!         [Im(T₁₁ + T₁₂), Re(T₁₁ − T₁₂)]]
//! ```
//!
//! (a real algebra isomorphism, so products and inverses carry over), a conjugate-symmetric
//! input vector `[b, conj b]` becomes `[Re b, Im b]`, and the output `Re(C_full s)` with
//! `C_full = [C, conj C]` becomes `[2 Re C, −2 Im C] · r`. This is the same recurrence as
//! lrnnx's complex dense step with a quarter of the multiplications and half the state.
//! All construction-time math (the bilinear solve, the power Ā^{Lk}, the C̃ solve) runs in this
//! real form in `f64` with Gauss–Jordan elimination and partial pivoting.
//!
//! ## Construction scratch
//!
//! The core allocates nothing, so [`S4::from_lrnnx`] takes a caller-provided `f64` working area
//! of at least [`S4Config::construction_scratch_len`] elements
//! (`M·max(2M+1, M+ch) + M²`, e.g. 12 352 values ≈ 97 KiB for d_state = 64); it is only used
//! during construction and may be reused or freed afterwards. The weight buffer holds exactly
//! the stepping layout below, so an exported buffer contains no dead space.
//!
//! ## Layout
//!
//! lrnnx keys (top level; the `layer.kernel.*` duplicates alias them, except the buffer
//! `layer.kernel.l_kernel` which exists only there): `inv_dt` (H,1) or (H,N2), `A_real` (S,N2),
//! `A_imag` (S,N2), `B` (1,S,N2,2), `P` (r,S,N2,2), `C` (ch,H,N2,2), `layer.kernel.l_kernel`
//! (scalar, integer), `D` (ch,H), and with the output linear `output_linear.0.weight`
//! (H, ch·H), `output_linear.0.bias` (H,).
//!
//! Weights (f32, channel `h` innermost so that every step loop is elementwise over H values):
//!
//! | segment | length   | meaning (index)                                          |
//! |---------|----------|----------------------------------------------------------|
//! | `g`     | M·M·H    | real-form `Ā_h[i,k]` at `(k·M + i)·H + h` (column-major)  |
//! | `b`     | M·H      | real-form `B̄_h[i]` at `i·H + h`                         |
//! | `c`     | ch·M·H   | real-form output row `[2Re C, −2Im C][c,h,m]` at `(c·M + m)·H + h` |
//! | tail    |          | see [`crate::s4_block`]: D, then Wᵀ and b                |
//!
//! State: `r` (M·H), a working area of M·H (the next state while it is being computed), and a
//! working area of ch·H when the output linear is present. Only `r` carries information
//! between steps.

use num_complex::Complex64;

use crate::error::{check_finite_weights, check_len, Error, Result};
use crate::layer::Layer;
use crate::params::{require, require_any_shape, ParamSource};
use crate::s4_block::{read_dt, validate_sizes, BlockTail, S4Transforms};

/// Configuration of an S4 (DPLR) layer (lrnnx's constructor arguments that matter for stepping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S4Config {
    /// H = `d_model`, input features.
    pub d_model: usize,
    /// N = `d_state` (even; lrnnx stores N/2 conjugate-half parameters, the step keeps N).
    pub d_state: usize,
    /// S = `n_ssm` (lrnnx default: H); must divide H. Channel `h` uses SSM row `h mod S`.
    pub n_ssm: usize,
    /// ch = `channels` (lrnnx default 1).
    pub channels: usize,
    /// r = `rank` of the low-rank term (lrnnx default 1; 0 makes the SSM diagonal and needs no
    /// `P`).
    pub rank: usize,
    /// `dt_tie` (lrnnx default true): `inv_dt` is (H,1); false: (H, N/2).
    pub dt_tied: bool,
    /// The parameter transforms (`dt_transform`, `dt_fast`, `real_transform`, `imag_transform`).
    pub transforms: S4Transforms,
    /// Whether `output_linear` (Linear(ch·H → H) + GELU) is present (lrnnx `final_act` not None).
    pub output_linear: bool,
}

impl S4Config {
    /// lrnnx's defaults for `d_model` H and `d_state` N: `n_ssm = H`, one channel, rank 1, tied
    /// Δ, default transforms, with the output linear.
    pub const fn new(d_model: usize, d_state: usize) -> Self {
        S4Config {
            d_model,
            d_state,
            n_ssm: d_model,
            channels: 1,
            rank: 1,
            dt_tied: true,
            transforms: S4Transforms::LRNNX_DEFAULT,
            output_linear: true,
        }
    }

    const fn tail(&self) -> BlockTail {
        BlockTail {
            h: self.d_model,
            ch: self.channels,
            linear: self.output_linear,
        }
    }

    const fn ssm_len(&self) -> usize {
        let (m, h) = (self.d_state, self.d_model);
        crate::error::sum_of_products(&[&[m, m, h], &[m, h], &[self.channels, m, h]])
    }

    /// Number of `f32` weights of the stepping layout.
    pub const fn weights_len(&self) -> usize {
        self.ssm_len().saturating_add(self.tail().weights_len())
    }

    /// Number of `f32` state elements: `2·d_state·H`, plus `ch·H` with the output linear.
    pub const fn state_len(&self) -> usize {
        crate::error::sum_of_products(&[&[2, self.d_state, self.d_model]])
            .saturating_add(self.tail().scratch_len())
    }

    /// Minimum number of `f64` elements of the construction working area of
    /// [`S4::from_lrnnx`]: `M·max(2M+1, M+ch) + M²` with M = d_state.
    pub const fn construction_scratch_len(&self) -> usize {
        let m = self.d_state;
        let a = crate::error::sum_of_products(&[&[2, m], &[1]]);
        let b = m.saturating_add(self.channels);
        let cols = if a > b { a } else { b };
        crate::error::sum_of_products(&[&[m, cols], &[m, m]])
    }

    fn validate(&self) -> Result<()> {
        validate_sizes(self.d_model, self.d_state, self.n_ssm, self.channels)?;
        crate::error::check_sizes(self.weights_len(), self.state_len())?;
        crate::error::check_sizes(self.construction_scratch_len(), 0)
    }
}

/// An S4 (DPLR) block ready to step; `W` holds the weights (owned or borrowed).
#[derive(Debug, Clone)]
pub struct S4<W> {
    config: S4Config,
    weights: W,
}

impl<W: AsRef<[f32]>> S4<W> {
    /// Builds the layer from lrnnx parameters into `weights` (`config.weights_len()` elements,
    /// overwritten), using `scratch` (at least `config.construction_scratch_len()` `f64`s,
    /// contents irrelevant, overwritten) as the working area. Per channel `h`, in `f64` and in
    /// the real form of the module docs:
    ///
    /// ```text
    /// [I − 𝒜/2 | I + 𝒜/2 | Δ·B]  →(Gauss–Jordan)→  [I | Ā | B̄]
    /// C = C̃ (I − Ā^{Lk})⁻¹      (Lk = layer.kernel.l_kernel > 0; C = stored C when Lk = 0)
    /// ```
    ///
    /// Errors: missing / mis-shaped / non-finite tensors, an `l_kernel` that is not a
    /// non-negative integer, a too short `scratch` ([`Error::BufferLength`]), and a singular
    /// `I − 𝒜/2` or `I − Ā^{Lk}` ([`Error::SingularMatrix`]), or any non-finite result
    /// ([`Error::NonFiniteParameter`]).
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: S4Config,
        params: &P,
        mut weights: W,
        scratch: &mut [f64],
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let need = config.construction_scratch_len();
        if scratch.len() < need {
            return Err(Error::BufferLength {
                what: "S4 construction scratch (at least construction_scratch_len() f64s)",
                expected: need,
                got: scratch.len(),
            });
        }
        let (h, m, s, ch, rank) = (
            config.d_model,
            config.d_state,
            config.n_ssm,
            config.channels,
            config.rank,
        );
        let n2 = m / 2;
        let inv_dt = read_dt(params, h, n2, config.dt_tied)?;
        let a_real = require(params, "A_real", &[s, n2])?;
        let a_imag = require(params, "A_imag", &[s, n2])?;
        let b = require(params, "B", &[1, s, n2, 2])?;
        let p: &[f32] = if rank > 0 {
            require(params, "P", &[rank, s, n2, 2])?
        } else {
            &[]
        };
        let c = require(params, "C", &[ch, h, n2, 2])?;
        let lk = require_any_shape(params, "layer.kernel.l_kernel", &[&[], &[1]])?;
        let lk = lk.first().copied().unwrap_or(0.0);
        if lk < 0.0 || lk != libm::floorf(lk) {
            return Err(Error::InvalidConfig {
                what: "layer.kernel.l_kernel",
                reason: "must be a non-negative integer",
            });
        }
        let lk = lk as u64;

        let w = weights.as_mut();
        let (w_ssm, w_tail) = w.split_at_mut(config.ssm_len());
        let (w_g, w_rest) = w_ssm.split_at_mut(m * m * h);
        let (w_b, w_c) = w_rest.split_at_mut(m * h);
        let cols1 = 2 * m + 1;
        let (region_a, region_r) = scratch[..need].split_at_mut(need - m * m);
        let tr = config.transforms;
        let cplx = |v: &[f32], i: usize| Complex64::new(v[2 * i] as f64, v[2 * i + 1] as f64);

        for hh in 0..h {
            let row = hh % s;
            let dt = |n: usize| tr.dt(inv_dt[if config.dt_tied { hh } else { hh * n2 + n }]);
            // [I − 𝒜/2 | I + 𝒜/2 | Δ·B] in real form.
            let aug = &mut region_a[..m * cols1];
            for i in 0..n2 {
                let dti = dt(i);
                let lam = tr.a(a_real[row * n2 + i], a_imag[row * n2 + i]);
                for k in 0..n2 {
                    // T₁₁ = Δ(δ Λ − Σ_r P_r[i] conj P_r[k]);  T₁₂ = −Δ Σ_r P_r[i] P_r[k].
                    let mut t11 = if i == k {
                        lam
                    } else {
                        Complex64::new(0.0, 0.0)
                    };
                    let mut t12 = Complex64::new(0.0, 0.0);
                    for r in 0..rank {
                        let pi = cplx(p, (r * s + row) * n2 + i);
                        let pk = cplx(p, (r * s + row) * n2 + k);
                        t11 -= pi * pk.conj();
                        t12 -= pi * pk;
                    }
                    let (t11, t12) = (t11 * dti, t12 * dti);
                    let blocks = [
                        (i, k, (t11 + t12).re),
                        (i, n2 + k, (t12 - t11).im),
                        (n2 + i, k, (t11 + t12).im),
                        (n2 + i, n2 + k, (t11 - t12).re),
                    ];
                    for (ri, ci, g) in blocks {
                        let id = if ri == ci { 1.0 } else { 0.0 };
                        aug[ri * cols1 + ci] = id - 0.5 * g;
                        aug[ri * cols1 + m + ci] = id + 0.5 * g;
                    }
                }
                let beta = cplx(b, row * n2 + i) * dti;
                aug[i * cols1 + 2 * m] = beta.re;
                aug[(n2 + i) * cols1 + 2 * m] = beta.im;
            }
            if !gauss_jordan(aug, m, cols1) {
                return Err(Error::SingularMatrix {
                    what: "S4: I − ΔA/2",
                    channel: hh,
                });
            }
            for i in 0..m {
                for k in 0..m {
                    w_g[(k * m + i) * h + hh] = aug[i * cols1 + m + k] as f32;
                }
                w_b[i * h + hh] = aug[i * cols1 + 2 * m] as f32;
            }
            // Stored C (real form [2 Re C, −2 Im C]).
            let c_tilde = |cc: usize, mm: usize| {
                let v = cplx(c, (cc * h + hh) * n2 + mm % n2);
                if mm < n2 {
                    2.0 * v.re
                } else {
                    -2.0 * v.im
                }
            };
            if lk == 0 {
                for cc in 0..ch {
                    for mm in 0..m {
                        w_c[(cc * m + mm) * h + hh] = c_tilde(cc, mm) as f32;
                    }
                }
                continue;
            }
            // Ā (columns m..2m of the augmented rows) → region_a[0..m²] (overlap-safe moves).
            for i in 0..m {
                region_a.copy_within(i * cols1 + m..i * cols1 + 2 * m, i * m);
            }
            // region_r ← Ā^{Lk}, by binary powering.
            let (base, rest) = region_a.split_at_mut(m * m);
            let tmp = &mut rest[..m * m];
            let res = &mut *region_r;
            res.fill(0.0);
            for i in 0..m {
                res[i * m + i] = 1.0;
            }
            let mut e = lk;
            while e > 0 {
                if e & 1 == 1 {
                    mat_mul(tmp, res, base, m);
                    res.copy_from_slice(tmp);
                }
                e >>= 1;
                if e > 0 {
                    mat_mul(tmp, base, base, m);
                    base.copy_from_slice(tmp);
                }
            }
            // [(I − Ā^{Lk})ᵀ | C̃ᵀ] → [I | Cᵀ].
            let cols2 = m + ch;
            let aug2 = &mut region_a[..m * cols2];
            for i in 0..m {
                for k in 0..m {
                    let id = if i == k { 1.0 } else { 0.0 };
                    aug2[i * cols2 + k] = id - region_r[k * m + i];
                }
                for cc in 0..ch {
                    aug2[i * cols2 + m + cc] = c_tilde(cc, i);
                }
            }
            if !gauss_jordan(aug2, m, cols2) {
                return Err(Error::SingularMatrix {
                    what: "S4: I − Ā^l_kernel (C cannot be recovered from C̃)",
                    channel: hh,
                });
            }
            for cc in 0..ch {
                for mm in 0..m {
                    w_c[(cc * m + mm) * h + hh] = aug2[mm * cols2 + m + cc] as f32;
                }
            }
        }
        config.tail().write(params, w_tail)?;
        check_finite_weights("discretized S4 weights", w)?;
        Ok(S4 { config, weights })
    }

    /// The original (pre-`_setup_C`) output matrix entry `C[c, h, n]` (n < d_state/2) as
    /// `(re, im)`, read back from the real-form output row `[2 Re C, −2 Im C]`:
    /// `C = (row[n] − i·row[N2 + n])/2`. This is what lrnnx's `C` held before its first forward
    /// (`extra.C_before_setup` in the golden files). `None` for indices out of range.
    pub fn recovered_c(&self, c: usize, h: usize, n: usize) -> Option<(f32, f32)> {
        let (hd, m) = (self.config.d_model, self.config.d_state);
        if c >= self.config.channels || h >= hd || n >= m / 2 {
            return None;
        }
        let base = m * m * hd + m * hd;
        let w = self.weights.as_ref();
        let re = w.get(base + (c * m + n) * hd + h)?;
        let nim = w.get(base + (c * m + m / 2 + n) * hd + h)?;
        Some((0.5 * re, -0.5 * nim))
    }

    /// `r' = Ā r + B̄ x` (elementwise over channels h), `r ← r'`, `z[c,h] = Σ_m c[c,m]·r[m]`.
    #[inline]
    fn ssm_step(&self, w: &[f32], r: &mut [f32], r_next: &mut [f32], x: &[f32], z: &mut [f32]) {
        let (h, m) = (self.config.d_model, self.config.d_state);
        if h == 0 {
            return;
        }
        let (g, rest) = w.split_at((m * m * h).min(w.len()));
        let (bb, cc) = rest.split_at((m * h).min(rest.len()));
        for (rn, bi) in r_next.chunks_exact_mut(h).zip(bb.chunks_exact(h)) {
            for (o, (&bv, &xv)) in rn.iter_mut().zip(bi.iter().zip(x)) {
                *o = bv * xv;
            }
        }
        for (gk, rk) in g.chunks_exact(m * h).zip(r.chunks_exact(h)) {
            for (rn, gki) in r_next.chunks_exact_mut(h).zip(gk.chunks_exact(h)) {
                for (o, (&gv, &rv)) in rn.iter_mut().zip(gki.iter().zip(rk)) {
                    *o += gv * rv;
                }
            }
        }
        for (dst, &src) in r.iter_mut().zip(r_next.iter()) {
            *dst = src;
        }
        z.fill(0.0);
        for (zc, ccc) in z.chunks_exact_mut(h).zip(cc.chunks_exact(m * h)) {
            for (cm, rm) in ccc.chunks_exact(h).zip(r.chunks_exact(h)) {
                for (o, (&cv, &rv)) in zc.iter_mut().zip(cm.iter().zip(rm)) {
                    *o += cv * rv;
                }
            }
        }
    }
}

/// `out = a·b` for row-major `n×n` matrices.
fn mat_mul(out: &mut [f64], a: &[f64], b: &[f64], n: usize) {
    out.fill(0.0);
    for (orow, arow) in out.chunks_exact_mut(n).zip(a.chunks_exact(n)) {
        for (&aik, brow) in arow.iter().zip(b.chunks_exact(n)) {
            for (o, &bv) in orow.iter_mut().zip(brow) {
                *o += aik * bv;
            }
        }
    }
}

/// Gauss–Jordan elimination with partial pivoting on the row-major `n × cols` augmented matrix
/// `[A | R]` (`cols ≥ n`): on success it holds `[I | A⁻¹R]`. Returns `false` if a pivot is zero
/// or not finite (A singular or the input not finite).
fn gauss_jordan(a: &mut [f64], n: usize, cols: usize) -> bool {
    for col in 0..n {
        // Pivot: the largest |a[row, col]| for row ≥ col.
        let mut piv = col;
        let mut best = 0.0f64;
        for row in col..n {
            let v = libm::fabs(a[row * cols + col]);
            if v > best {
                best = v;
                piv = row;
            }
        }
        if best == 0.0 || !best.is_finite() {
            return false;
        }
        if piv != col {
            for j in 0..cols {
                a.swap(piv * cols + j, col * cols + j);
            }
        }
        let inv = 1.0 / a[col * cols + col];
        for j in 0..cols {
            a[col * cols + j] *= inv;
        }
        for row in 0..n {
            if row == col {
                continue;
            }
            let f = a[row * cols + col];
            if f == 0.0 {
                continue;
            }
            for j in 0..cols {
                let v = a[col * cols + j];
                a[row * cols + j] -= f * v;
            }
        }
    }
    true
}

crate::layer::weight_view_methods!(S4, S4Config, "S4 weights");

impl<W: AsRef<[f32]>> Layer for S4<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.tail().d_output()
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// `r ← Ā r + B̄ x;  z = c·r + D⊙x;  z = GELU(GELU(z));  y = GELU(W z + b)` (or `y = z`
    /// without the output linear), with the real-form `Ā`, `B̄`, `c` of the module docs.
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let w = self.weights.as_ref();
        let (w_ssm, w_tail) = w.split_at(self.config.ssm_len().min(w.len()));
        let mh = self.config.d_state * self.config.d_model;
        let (r, rest) = state.split_at_mut(mh.min(state.len()));
        let (r_next, scratch) = rest.split_at_mut(mh.min(rest.len()));
        let tail = self.config.tail();
        if tail.linear {
            self.ssm_step(w_ssm, r, r_next, x, scratch);
            tail.finish(w_tail, scratch, x, y);
        } else {
            self.ssm_step(w_ssm, r, r_next, x, y);
            tail.finish_in_place(w_tail, y, x);
        }
    }
}

#[cfg(test)]
// The references index matrices explicitly, as the formulas are written.
#[allow(clippy::needless_range_loop)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::layer::run_sequence;
    use crate::s4_block::test_support::{assert_close, conv_ref, tail_ref, OwnedParams, Rng};
    use crate::s4_block::ParamTransform;

    type CMat = Vec<Vec<Complex64>>;

    fn czero() -> Complex64 {
        Complex64::new(0.0, 0.0)
    }

    fn identity(n: usize) -> CMat {
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|k| Complex64::new((i == k) as u8 as f64, 0.0))
                    .collect()
            })
            .collect()
    }

    fn cmul(a: &CMat, b: &CMat) -> CMat {
        let n = a.len();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (0..n).map(|k| a[i][k] * b[k][j]).sum())
                    .collect()
            })
            .collect()
    }

    /// Solves `A X = B` (B with any number of columns) in complex arithmetic: Gaussian
    /// elimination with partial pivoting, then back substitution.
    fn csolve(mut a: CMat, mut b: CMat) -> CMat {
        let n = a.len();
        for col in 0..n {
            let piv = (col..n)
                .max_by(|&i, &j| a[i][col].norm().partial_cmp(&a[j][col].norm()).unwrap())
                .unwrap();
            a.swap(col, piv);
            b.swap(col, piv);
            for row in col + 1..n {
                let f = a[row][col] / a[col][col];
                for k in col..n {
                    let v = a[col][k];
                    a[row][k] -= f * v;
                }
                for k in 0..b[row].len() {
                    let v = b[col][k];
                    b[row][k] -= f * v;
                }
            }
        }
        let cols = b[0].len();
        let mut x = vec![vec![czero(); cols]; n];
        for row in (0..n).rev() {
            for k in 0..cols {
                let mut s = b[row][k];
                for j in row + 1..n {
                    s -= a[row][j] * x[j][k];
                }
                x[row][k] = s / a[row][row];
            }
        }
        x
    }

    struct Case {
        cfg: S4Config,
        l_kernel: usize,
        params: OwnedParams,
        /// The original C (ch, H, N2) that the stored C̃ was made from.
        c_orig: Vec<Complex64>,
        /// Per channel h: (Ā, B̄) in the full complex 2N2 form.
        systems: Vec<(CMat, Vec<Complex64>)>,
    }

    fn get<'a>(p: &'a OwnedParams, name: &str) -> &'a [f32] {
        p.tensor(name).unwrap().data
    }

    /// Random lrnnx parameters, the full complex (Ā, B̄) of every channel built from the
    /// textbook DPLR bilinear formulas, and a stored C̃ = C (I − Ā^{Lk}) computed forwards with
    /// Lk plain matrix products.
    fn make_case(cfg: S4Config, l_kernel: usize, seed: u64) -> Case {
        let mut rng = Rng(seed);
        let (h, m, s, ch, rank) = (cfg.d_model, cfg.d_state, cfg.n_ssm, cfg.channels, cfg.rank);
        let n2 = m / 2;
        let mut p = OwnedParams::default();
        let dt_cols = if cfg.dt_tied { 1 } else { n2 };
        p.put("inv_dt", rng.vec(h * dt_cols, -4.0, -1.5), &[h, dt_cols]);
        p.put("A_real", rng.vec(s * n2, -1.2, -0.2), &[s, n2]);
        p.put("A_imag", rng.vec(s * n2, 0.0, 6.0), &[s, n2]);
        p.put("B", rng.vec(s * n2 * 2, -1.0, 1.0), &[1, s, n2, 2]);
        if rank > 0 {
            p.put(
                "P",
                rng.vec(rank * s * n2 * 2, -0.6, 0.6),
                &[rank, s, n2, 2],
            );
        }
        p.put("D", rng.vec(ch * h, -1.0, 1.0), &[ch, h]);
        p.put(
            "output_linear.0.weight",
            rng.vec(h * ch * h, -0.6, 0.6),
            &[h, ch * h],
        );
        p.put("output_linear.0.bias", rng.vec(h, -0.3, 0.3), &[h]);
        p.put("layer.kernel.l_kernel", vec![l_kernel as f32], &[]);
        let c_raw = rng.vec(ch * h * n2 * 2, -1.0, 1.0);
        let c_orig: Vec<Complex64> = c_raw
            .chunks_exact(2)
            .map(|v| Complex64::new(v[0] as f64, v[1] as f64))
            .collect();

        let t = cfg.transforms;
        let cpx = |v: &[f32], i: usize| Complex64::new(v[2 * i] as f64, v[2 * i + 1] as f64);
        let mut systems = Vec::new();
        let mut c_stored = vec![0.0f32; ch * h * n2 * 2];
        for hh in 0..h {
            let row = hh % s;
            let dt: Vec<f64> = (0..m)
                .map(|i| {
                    let raw = get(&p, "inv_dt")[if cfg.dt_tied { hh } else { hh * n2 + i % n2 }];
                    let raw = raw as f64;
                    t.dt.apply(if t.dt_fast { raw.sinh() } else { raw })
                })
                .collect();
            let lam: Vec<Complex64> = (0..m)
                .map(|i| {
                    let j = row * n2 + i % n2;
                    let l = Complex64::new(
                        -t.real.apply(get(&p, "A_real")[j] as f64),
                        -t.imag.apply(get(&p, "A_imag")[j] as f64),
                    );
                    if i < n2 {
                        l
                    } else {
                        l.conj()
                    }
                })
                .collect();
            let half = |v: Complex64, i: usize| if i < n2 { v } else { v.conj() };
            let pf: Vec<Vec<Complex64>> = (0..rank)
                .map(|r| {
                    (0..m)
                        .map(|i| half(cpx(get(&p, "P"), (r * s + row) * n2 + i % n2), i))
                        .collect()
                })
                .collect();
            let bf: Vec<Complex64> = (0..m)
                .map(|i| half(cpx(get(&p, "B"), row * n2 + i % n2), i))
                .collect();
            // 𝒜 = diag(Δ)(diag(Λ) − Σ p pᴴ)
            let mut x = identity(m);
            let mut y = identity(m);
            for i in 0..m {
                for k in 0..m {
                    let mut a = if i == k { lam[i] } else { czero() };
                    for pr in &pf {
                        a -= pr[i] * pr[k].conj();
                    }
                    x[i][k] -= a * dt[i] / 2.0;
                    y[i][k] += a * dt[i] / 2.0;
                }
            }
            let abar = csolve(x.clone(), y);
            let bbar: Vec<Complex64> = csolve(x, (0..m).map(|i| vec![bf[i] * dt[i]]).collect())
                .into_iter()
                .map(|r| r[0])
                .collect();
            // C̃_full = C_full (I − Ā^Lk), Ā^Lk by Lk plain products.
            let mut pow = identity(m);
            for _ in 0..l_kernel {
                pow = cmul(&pow, &abar);
            }
            for cc in 0..ch {
                let cf: Vec<Complex64> = (0..m)
                    .map(|i| half(c_orig[(cc * h + hh) * n2 + i % n2], i))
                    .collect();
                let ct: Vec<Complex64> = (0..m)
                    .map(|k| {
                        let mut v = cf[k];
                        if l_kernel > 0 {
                            v -= (0..m).map(|i| cf[i] * pow[i][k]).sum::<Complex64>();
                        }
                        v
                    })
                    .collect();
                for n in 0..n2 {
                    // The transformed C stays conjugate-symmetric.
                    assert!((ct[n2 + n] - ct[n].conj()).norm() < 1e-9);
                    let dst = ((cc * h + hh) * n2 + n) * 2;
                    c_stored[dst] = ct[n].re as f32;
                    c_stored[dst + 1] = ct[n].im as f32;
                }
            }
            systems.push((abar, bbar));
        }
        p.put("C", c_stored, &[ch, h, n2, 2]);
        Case {
            cfg,
            l_kernel,
            params: p,
            c_orig,
            systems,
        }
    }

    /// `K[c,h,l] = Re(C_full Ā^l B̄)` by repeated matrix–vector products, convolved directly
    /// with the input, then the block tail in f64.
    fn reference(case: &Case, xs: &[f32], len: usize) -> Vec<f64> {
        let cfg = &case.cfg;
        let (h, m, ch) = (cfg.d_model, cfg.d_state, cfg.channels);
        let n2 = m / 2;
        let mut k = vec![0.0f64; ch * h * len];
        for (hh, (abar, bbar)) in case.systems.iter().enumerate() {
            let mut v = bbar.clone();
            for l in 0..len {
                for cc in 0..ch {
                    let mut acc = czero();
                    for (i, vi) in v.iter().enumerate() {
                        let c = case.c_orig[(cc * h + hh) * n2 + i % n2];
                        acc += if i < n2 { c } else { c.conj() } * vi;
                    }
                    k[(cc * h + hh) * len + l] = acc.re;
                }
                v = (0..m)
                    .map(|i| (0..m).map(|j| abar[i][j] * v[j]).sum())
                    .collect();
            }
        }
        let z = conv_ref(&k, xs, h, ch * h, len);
        let p = &case.params;
        let lin = cfg.output_linear.then(|| {
            (
                get(p, "output_linear.0.weight"),
                get(p, "output_linear.0.bias"),
            )
        });
        let mut out = Vec::new();
        for (t, zt) in z.iter().enumerate() {
            out.extend(tail_ref(zt, &xs[t * h..(t + 1) * h], get(p, "D"), lin));
        }
        out
    }

    fn build(case: &Case) -> Result<S4<Vec<f32>>> {
        let mut scratch = vec![0.0f64; case.cfg.construction_scratch_len()];
        S4::from_lrnnx(
            case.cfg,
            &case.params,
            vec![0.0f32; case.cfg.weights_len()],
            &mut scratch,
        )
    }

    fn check(cfg: S4Config, l_kernel: usize, seed: u64) {
        let case = make_case(cfg, l_kernel, seed);
        let layer = build(&case).unwrap();
        let (h, n2) = (cfg.d_model, cfg.d_state / 2);
        for cc in 0..cfg.channels {
            for hh in 0..h {
                for n in 0..n2 {
                    let (re, im) = layer.recovered_c(cc, hh, n).unwrap();
                    let want = case.c_orig[(cc * h + hh) * n2 + n];
                    assert!(
                        (Complex64::new(re as f64, im as f64) - want).norm() < 2e-5,
                        "recovered C[{cc},{hh},{n}] = {re}+{im}i, want {want} (Lk {})",
                        case.l_kernel
                    );
                }
            }
        }
        assert_eq!(layer.recovered_c(cfg.channels, 0, 0), None);
        let len = 45;
        let xs = Rng(seed + 100).vec(len * h, -1.5, 1.5);
        let mut ys = vec![0.0f32; len * layer.d_output()];
        let mut state = vec![0.0f32; layer.state_len()];
        run_sequence(&layer, &mut state, &xs, &mut ys).unwrap();
        assert_close(&ys, &reference(&case, &xs, len), "S4 vs closed-form kernel");

        let view = S4::from_weights(cfg, layer.weights()).unwrap();
        let mut ys2 = vec![0.0f32; ys.len()];
        let mut state2 = vec![0.0f32; layer.state_len()];
        run_sequence(&view, &mut state2, &xs, &mut ys2).unwrap();
        assert_eq!(ys, ys2);
    }

    #[test]
    fn matches_closed_form_kernel_and_recovers_c() {
        let cfg = S4Config::new(3, 8);
        for (lk, seed) in [(0, 1), (1, 2), (16, 3), (37, 4)] {
            check(cfg, lk, seed);
        }
    }

    #[test]
    fn rank_channels_tiling_untied_dt_and_no_output_linear() {
        let cfg = S4Config {
            d_model: 2,
            d_state: 6,
            n_ssm: 1,
            channels: 2,
            rank: 2,
            dt_tied: false,
            transforms: S4Transforms::LRNNX_DEFAULT,
            output_linear: false,
        };
        check(cfg, 20, 5);
        check(
            S4Config {
                output_linear: true,
                ..cfg
            },
            7,
            6,
        );
        check(S4Config { rank: 0, ..cfg }, 12, 7);
        check(
            S4Config {
                rank: 3,
                n_ssm: 2,
                ..cfg
            },
            0,
            8,
        );
    }

    #[test]
    fn other_transforms() {
        let mut cfg = S4Config::new(2, 4);
        cfg.transforms = S4Transforms {
            dt: ParamTransform::Softplus,
            dt_fast: true,
            real: ParamTransform::Relu,
            imag: ParamTransform::Exp,
        };
        check(cfg, 9, 9);
    }

    #[test]
    fn construction_errors() {
        let cfg = S4Config::new(2, 4);
        let case = make_case(cfg, 8, 21);
        assert!(build(&case).is_ok());
        let try_with = |f: &dyn Fn(&mut OwnedParams)| {
            let mut c = make_case(cfg, 8, 21);
            f(&mut c.params);
            build(&c).map(|_| ())
        };
        assert_eq!(
            try_with(&|p| p.remove("P")).unwrap_err(),
            Error::MissingTensor { name: "P" }
        );
        assert_eq!(
            try_with(&|p| p.remove("layer.kernel.l_kernel")).unwrap_err(),
            Error::MissingTensor {
                name: "layer.kernel.l_kernel"
            }
        );
        assert!(try_with(&|p| p.put("layer.kernel.l_kernel", vec![8.0], &[1])).is_ok());
        for bad in [-1.0f32, 2.5] {
            assert!(matches!(
                try_with(&|p| p.put("layer.kernel.l_kernel", vec![bad], &[])),
                Err(Error::InvalidConfig {
                    what: "layer.kernel.l_kernel",
                    ..
                })
            ));
        }
        assert!(matches!(
            try_with(&|p| p.put("P", vec![0.0; 2 * 2 * 2 * 2], &[2, 2, 2, 2])),
            Err(Error::TensorShape { name: "P", .. })
        ));
        assert_eq!(
            try_with(&|p| p.get_mut("A_imag")[3] = f32::NAN).unwrap_err(),
            Error::NonFiniteParameter {
                name: "A_imag",
                index: 3
            }
        );
        // A zero eigenvalue (A = 0: real transform none, no low-rank term) gives Ā = I, so
        // I − Ā^Lk is singular and C cannot be recovered.
        let zero = S4Config {
            rank: 0,
            transforms: S4Transforms {
                real: ParamTransform::None,
                ..S4Transforms::LRNNX_DEFAULT
            },
            ..cfg
        };
        let mut c = make_case(S4Config { rank: 0, ..cfg }, 8, 22);
        c.cfg = zero;
        c.params.put("A_real", vec![0.0; 4], &[2, 2]);
        c.params.put("A_imag", vec![0.0; 4], &[2, 2]);
        assert!(matches!(
            build(&c),
            Err(Error::SingularMatrix { channel: 0, .. })
        ));
        // ... while with Lk = 0 nothing needs inverting.
        c.params.put("layer.kernel.l_kernel", vec![0.0], &[]);
        assert!(build(&c).is_ok());

        let mut scratch = vec![0.0f64; cfg.construction_scratch_len() - 1];
        assert!(matches!(
            S4::from_lrnnx(
                cfg,
                &case.params,
                vec![0.0f32; cfg.weights_len()],
                &mut scratch
            ),
            Err(Error::BufferLength { .. })
        ));
        let mut scratch = vec![0.0f64; cfg.construction_scratch_len() + 5];
        assert!(S4::from_lrnnx(
            cfg,
            &case.params,
            vec![0.0f32; cfg.weights_len()],
            &mut scratch
        )
        .is_ok());
        assert!(matches!(
            S4::from_lrnnx(cfg, &case.params, vec![0.0f32; 3], &mut scratch),
            Err(Error::BufferLength { .. })
        ));
        for bad in [
            S4Config { d_state: 3, ..cfg },
            S4Config { n_ssm: 3, ..cfg },
            S4Config { channels: 0, ..cfg },
        ] {
            let mut scratch = vec![0.0f64; bad.construction_scratch_len()];
            assert!(matches!(
                S4::from_lrnnx(
                    bad,
                    &case.params,
                    vec![0.0f32; bad.weights_len()],
                    &mut scratch
                ),
                Err(Error::InvalidConfig { .. })
            ));
        }
        let mut w = vec![0.0f32; cfg.weights_len()];
        w[2] = f32::NAN;
        assert!(matches!(
            S4::from_weights(cfg, w),
            Err(Error::NonFiniteParameter { index: 2, .. })
        ));
    }

    #[test]
    fn bad_step_leaves_state_untouched() {
        let cfg = S4Config::new(2, 4);
        let layer = build(&make_case(cfg, 4, 31)).unwrap();
        let mut state = vec![0.0f32; layer.state_len()];
        let mut y = vec![0.0f32; 2];
        layer.step(&mut state, &[1.0, -0.5], &mut y).unwrap();
        let before = state.clone();
        assert!(matches!(
            layer.step(&mut state, &[f32::INFINITY, 0.0], &mut y),
            Err(Error::NonFiniteInput { index: 0 })
        ));
        assert!(layer.step(&mut state, &[1.0], &mut y).is_err());
        assert!(layer.step(&mut state, &[1.0, 0.0], &mut y[..1]).is_err());
        assert_eq!(state, before);
        let mut short = vec![0.0f32; 3];
        assert!(matches!(
            layer.step(&mut short, &[1.0, 0.0], &mut y),
            Err(Error::BufferLength { .. })
        ));
        layer.step_prechecked(&mut short, &[1.0], &mut y[..1]);
        layer.step_prechecked(&mut [], &[], &mut []);
    }
}
