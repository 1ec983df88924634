//! Centaurus (lrnnx `lrnnx.models.lti.centaurus`, spec §8): the four classes `CentaurusNeck`,
//! `CentaurusPWNeck`, `CentaurusDWS` and `CentaurusFull` in one layer, [`Centaurus`], selected by
//! [`CentaurusMode`].
//!
//! H = `d_model`, N = `d_state`, M = `sub_state_dim`. Every state `n` has M complex sub-states
//! with eigenvalues `A[n, m]` and one time step `Δ_n = exp(log_delta[n])`:
//!
//! ```text
//! Ā[n,m] = exp(Δ_n·A[n,m])        B̄ = Δ ⊙ B (row n scaled by Δ_n)         (discretized once)
//!
//! Neck / DWS / Full:
//!   u_t      = B̄ x_t                                   (N real: dense / diagonal / sparse)
//!   S_t[n,m] = Ā[n,m]·S_{t−1}[n,m] + u_t[n]           (complex)
//!   r_t[n]   = Σ_m E[n,m]·Re S_t[n,m]
//!   y_t      = C_eff r_t                               (dense / diagonal / sparse)
//! PointwiseNeck (state s = n·M + m flattened):
//!   s_t = Ā_flat ⊙ s_{t−1} + B̄ x_t                     (B̄ real (N·M)×H)
//!   y_t = C Re(s_t)                                    (C real H×(N·M))
//! ```
//!
//! The effective matrices (spec §8.3): Neck `B̄ = Δ⊙B` (N×H), `C_eff = C` (H×N); DWS (N = H)
//! `B̄ = diag(Δ⊙B)`, `C_eff = diag(C)`; Full (N ≥ H²) `B̄[n, n mod H] = Δ_n·B[n]` and
//! `C_eff[n div H, n] = C[n]` for `n < H²`, zero elsewhere. There is no `D`/skip term.
//!
//! **Discretization.** lrnnx validates its `discretization` argument and then ignores it: every
//! name gives `Ā = exp(Δ·A)` with the Euler-style input scaling `B̄ = Δ·B` (the
//! [`mamba`] rule), not the zero-order hold its docstrings claim
//! (spec §8.4, §18 item 32). This layer therefore has no discretization setting.
//!
//! lrnnx keys: `A` (N, M, 2) — a complex64 parameter stored as its real view `(re, im)`;
//! `E` (N, M) (not in PointwiseNeck); `log_delta` (N,); `B` and `C` of shape
//! Neck `(N, H)` / `(H, N)`, DWS `(H,)` / `(H,)`, Full `(N,)` / `(N,)`,
//! PointwiseNeck `(N·M, H)` / `(H, N·M)`.
//!
//! # Stepping layout
//!
//! K = number of complex modes: `N·M`, except Full: `H²·M` (states `n ≥ H²` of Full receive no
//! input and reach no output, so they stay zero forever and are dropped). Modes of
//! Neck/DWS/Full are stored **sub-state-major** (`m·N_c + n`, `N_c` = N or H²) so that every
//! inner loop runs over contiguous states. Full additionally permutes its H² states to
//! `p = j·H + i` for lrnnx state `n = i·H + j` (input `j = n mod H`, output `i = n div H`), so
//! both its input and output maps become contiguous `axpy`s over the output index `i`. For DWS
//! and Full the output weights are folded into `E`: `ce[m, n] = C_eff·E[n, m]`.
//!
//! | mode  | weights (in order)                                                                   |
//! |-------|--------------------------------------------------------------------------------------|
//! | Neck  | `a_re` K, `a_im` K, `bt` H·N (`B̄ᵀ`, row i = input i), `e` K, `ct` N·H (`Cᵀ`)       |
//! | DWS   | `a_re` K, `a_im` K, `b` N (`Δ⊙B`), `ce` K (`C[n]·E[n,m]`)                           |
//! | Full  | `a_re` K, `a_im` K, `b` H² (`Δ_n·B[n]`, permuted), `ce` K (`C[n]·E[n,m]`, permuted) |
//! | PW    | `a_re` K, `a_im` K, `bt` H·K (`B̄ᵀ`), `ct` K·H (`Cᵀ`), flattened `s = n·M + m`       |
//!
//! State: `s_re` (K), `s_im` (K); Neck adds a working area of 2N (`u`, `r`) at the end, which
//! carries no information between steps.

use num_complex::Complex64;

use crate::discretize::mamba;
use crate::error::{check_finite_weights, check_len, check_nonzero, Error, Result};
use crate::layer::Layer;
use crate::linalg::{cmul_diag, gemv_t_acc};
use crate::params::{require, ParamSource};

/// Which of lrnnx's four Centaurus classes (how the input reaches the states and the states
/// reach the output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CentaurusMode {
    /// `CentaurusNeck`: dense `B` (N×H) and `C` (H×N), states mixed by `E`.
    Neck,
    /// `CentaurusPWNeck` (lrnnx factory modes `pointwise`/`pw`/`s5`): every one of the N·M
    /// sub-states is its own state with dense real `B` ((N·M)×H) and `C` (H×(N·M)); no `E`.
    PointwiseNeck,
    /// `CentaurusDWS` (depthwise-separable): N = H, state n connects input n to output n.
    DepthwiseSeparable,
    /// `CentaurusFull`: N ≥ H², state `n < H²` connects input `n mod H` to output `n div H`.
    Full,
}

impl CentaurusMode {
    /// lrnnx's class name for this mode (without the module path).
    pub const fn lrnnx_class(self) -> &'static str {
        match self {
            CentaurusMode::Neck => "CentaurusNeck",
            CentaurusMode::PointwiseNeck => "CentaurusPWNeck",
            CentaurusMode::DepthwiseSeparable => "CentaurusDWS",
            CentaurusMode::Full => "CentaurusFull",
        }
    }

    /// The mode of an lrnnx class name, with or without the module path
    /// (`"lrnnx.models.lti.centaurus.CentaurusNeck"` or `"CentaurusNeck"`).
    pub fn from_lrnnx_class(class: &str) -> Option<Self> {
        let bare = class.rsplit('.').next().unwrap_or(class);
        Some(match bare {
            "CentaurusNeck" => CentaurusMode::Neck,
            "CentaurusPWNeck" => CentaurusMode::PointwiseNeck,
            "CentaurusDWS" => CentaurusMode::DepthwiseSeparable,
            "CentaurusFull" => CentaurusMode::Full,
            _ => return None,
        })
    }
}

/// Sizes and mode of a Centaurus layer (lrnnx's constructor arguments; its `discretization`
/// argument has no effect, see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CentaurusConfig {
    /// H, input and output features.
    pub d_model: usize,
    /// N, states (DWS: must equal H; Full: at least H²).
    pub d_state: usize,
    /// M, complex sub-states per state.
    pub sub_state_dim: usize,
    /// Which lrnnx class.
    pub mode: CentaurusMode,
}

impl CentaurusConfig {
    /// States that carry signal: N, or H² for Full (its states `n ≥ H²` are unconnected).
    const fn connected_states(&self) -> usize {
        match self.mode {
            CentaurusMode::Full => self.d_model.saturating_mul(self.d_model),
            _ => self.d_state,
        }
    }

    /// K, the number of complex modes the step carries: `connected_states · M`.
    pub const fn modes(&self) -> usize {
        self.connected_states().saturating_mul(self.sub_state_dim)
    }

    /// Number of `f32` weights of the stepping layout.
    pub const fn weights_len(&self) -> usize {
        let (h, n, k) = (self.d_model, self.d_state, self.modes());
        let sop = crate::error::sum_of_products;
        match self.mode {
            CentaurusMode::Neck => sop(&[&[3, k], &[2, h, n]]),
            CentaurusMode::PointwiseNeck => sop(&[&[2, k], &[2, h, k]]),
            CentaurusMode::DepthwiseSeparable => sop(&[&[3, k], &[n]]),
            CentaurusMode::Full => sop(&[&[3, k], &[h, h]]),
        }
    }

    /// Number of `f32` state elements (Neck includes a working area of `2·d_state`).
    pub const fn state_len(&self) -> usize {
        let extra = match self.mode {
            CentaurusMode::Neck => self.d_state,
            _ => 0,
        };
        crate::error::sum_of_products(&[&[2, self.modes()], &[2, extra]])
    }

    /// Checks sizes and mode constraints (DWS: `d_state = d_model`; Full: `d_state ≥ d_model²`)
    /// and that every buffer size fits in `usize`.
    pub fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)?;
        check_nonzero("sub_state_dim", self.sub_state_dim)?;
        let (h, n, m) = (self.d_model, self.d_state, self.sub_state_dim);
        // Every buffer size must be representable (so that `weights_len` cannot overflow):
        // both lengths are at most 8·max(H², N)·M·(H + 1).
        let hh = h.checked_mul(h);
        let fits = hh
            .and_then(|hh| hh.max(n).checked_mul(m))
            .and_then(|k| k.checked_mul(h + 1))
            .and_then(|x| x.checked_mul(8));
        if fits.is_none() {
            return Err(Error::InvalidConfig {
                what: "d_model, d_state, sub_state_dim",
                reason: "buffer sizes overflow usize",
            });
        }
        match self.mode {
            CentaurusMode::DepthwiseSeparable if n != h => Err(Error::InvalidConfig {
                what: "d_state",
                reason: "CentaurusDWS needs d_state == d_model",
            }),
            CentaurusMode::Full if hh.is_some_and(|hh| n < hh) => Err(Error::InvalidConfig {
                what: "d_state",
                reason: "CentaurusFull needs d_state >= d_model²",
            }),
            _ => Ok(()),
        }
    }
}

/// A Centaurus layer ready to step; `W` holds the weights (owned or borrowed, e.g. from flash).
#[derive(Debug, Clone)]
pub struct Centaurus<W> {
    config: CentaurusConfig,
    weights: W,
}

/// Splits `len` elements off the front of `s` (fewer if `s` is shorter; never panics).
#[inline(always)]
fn take(s: &[f32], len: usize) -> (&[f32], &[f32]) {
    s.split_at(len.min(s.len()))
}

/// Mutable [`take`].
#[inline(always)]
fn take_mut(s: &mut [f32], len: usize) -> (&mut [f32], &mut [f32]) {
    let len = len.min(s.len());
    s.split_at_mut(len)
}

impl<W: AsRef<[f32]>> Centaurus<W> {
    /// Builds the layer from lrnnx parameters (keys `A` (N,M,2), `E` (N,M) except
    /// PointwiseNeck, `log_delta` (N,), `B`, `C` with the mode's shapes), discretizing once in
    /// f64 into `weights` (`config.weights_len()` elements, overwritten):
    /// `Δ_n = exp(log_delta[n])`, `Ā[n,m] = exp(Δ_n·A[n,m])`, `B̄[n,·] = Δ_n·B[n,·]`.
    ///
    /// Errors: invalid sizes (zero, DWS with `d_state ≠ d_model`, Full with
    /// `d_state < d_model²`), a missing or mis-shaped tensor, a non-finite parameter or
    /// discretized weight, or a `weights` buffer of the wrong length.
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: CentaurusConfig,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let (h, n, m) = (config.d_model, config.d_state, config.sub_state_dim);
        let nm = n * m;
        let a = require(params, "A", &[n, m, 2])?;
        let log_delta = require(params, "log_delta", &[n])?;
        let (b_shape, c_shape): (&[usize], &[usize]) = match config.mode {
            CentaurusMode::Neck => (&[n, h], &[h, n]),
            CentaurusMode::PointwiseNeck => (&[nm, h], &[h, nm]),
            CentaurusMode::DepthwiseSeparable => (&[h], &[h]),
            CentaurusMode::Full => (&[n], &[n]),
        };
        let e = match config.mode {
            CentaurusMode::PointwiseNeck => &[][..],
            _ => require(params, "E", &[n, m])?,
        };
        let b = require(params, "B", b_shape)?;
        let c = require(params, "C", c_shape)?;

        // (Ā[n,m], Δ_n): lrnnx's rule for every `discretization` name.
        let disc = |s: usize, j: usize| {
            let a_c = Complex64::new(a[(s * m + j) * 2] as f64, a[(s * m + j) * 2 + 1] as f64);
            let dt = libm::exp(log_delta[s] as f64);
            (mamba(a_c, dt).a_bar, dt)
        };
        let w = weights.as_mut();
        let k = config.modes();
        let mut put = |idx: usize, v: f64| {
            if let Some(slot) = w.get_mut(idx) {
                *slot = v as f32;
            }
        };
        match config.mode {
            CentaurusMode::Neck => {
                // a_re, a_im (m·N + n) | bt (i·N + n) | e (m·N + n) | ct (n·H + o)
                let (base_b, base_e, base_c) = (2 * k, 2 * k + h * n, 3 * k + h * n);
                for s in 0..n {
                    for j in 0..m {
                        let (ab, _) = disc(s, j);
                        put(j * n + s, ab.re);
                        put(k + j * n + s, ab.im);
                        put(base_e + j * n + s, e[s * m + j] as f64);
                    }
                    let dt = disc(s, 0).1;
                    for i in 0..h {
                        put(base_b + i * n + s, dt * b[s * h + i] as f64);
                    }
                    for o in 0..h {
                        put(base_c + s * h + o, c[o * n + s] as f64);
                    }
                }
            }
            CentaurusMode::DepthwiseSeparable => {
                // a_re, a_im (m·N + n) | b (n) | ce (m·N + n)
                let (base_b, base_ce) = (2 * k, 2 * k + n);
                for s in 0..n {
                    for j in 0..m {
                        let (ab, _) = disc(s, j);
                        put(j * n + s, ab.re);
                        put(k + j * n + s, ab.im);
                        put(base_ce + j * n + s, c[s] as f64 * e[s * m + j] as f64);
                    }
                    put(base_b + s, disc(s, 0).1 * b[s] as f64);
                }
            }
            CentaurusMode::Full => {
                // State n = i·H + j (output i, input j) is stored at p = j·H + i.
                let hh = h * h;
                let (base_b, base_ce) = (2 * k, 2 * k + hh);
                for i in 0..h {
                    for jin in 0..h {
                        let (s, p) = (i * h + jin, jin * h + i);
                        for j in 0..m {
                            let (ab, _) = disc(s, j);
                            put(j * hh + p, ab.re);
                            put(k + j * hh + p, ab.im);
                            put(base_ce + j * hh + p, c[s] as f64 * e[s * m + j] as f64);
                        }
                        put(base_b + p, disc(s, 0).1 * b[s] as f64);
                    }
                }
            }
            CentaurusMode::PointwiseNeck => {
                // a_re, a_im (s = n·M + m) | bt (i·K + s) | ct (s·H + o)
                let (base_b, base_c) = (2 * k, 2 * k + h * k);
                for s in 0..n {
                    for j in 0..m {
                        let f = s * m + j;
                        let (ab, dt) = disc(s, j);
                        put(f, ab.re);
                        put(k + f, ab.im);
                        for i in 0..h {
                            put(base_b + i * k + f, dt * b[f * h + i] as f64);
                        }
                        for o in 0..h {
                            put(base_c + f * h + o, c[o * k + f] as f64);
                        }
                    }
                }
            }
        }
        check_finite_weights("discretized Centaurus weights", weights.as_ref())?;
        Ok(Centaurus { config, weights })
    }
}

/// One sub-state block of `len` contiguous states, updated in place and read out:
/// `(re, im) ← Ā ⊙ (re, im) + (u, 0)` with `u[q] = b[q]·xs[q]`, then `acc[q] += w[q]·re[q]`.
#[inline(always)]
fn block_update(
    re: &mut [f32],
    im: &mut [f32],
    (a_re, a_im): (&[f32], &[f32]),
    (b, xs): (&[f32], &[f32]),
    w: &[f32],
    acc: &mut [f32],
) {
    let ab = a_re.iter().zip(a_im);
    let bx = b.iter().zip(xs);
    for ((((r, i), (&ar, &ai)), (&bq, &xq)), (&wq, o)) in re
        .iter_mut()
        .zip(im.iter_mut())
        .zip(ab)
        .zip(bx)
        .zip(w.iter().zip(acc.iter_mut()))
    {
        let (hr, hi) = (*r, *i);
        let nr = ar * hr - ai * hi + bq * xq;
        *i = ar * hi + ai * hr;
        *r = nr;
        *o += wq * nr;
    }
}

/// Like [`block_update`] with one input value for the whole block:
/// `u[q] = b[q]·x`.
#[inline(always)]
fn block_update_scalar(
    re: &mut [f32],
    im: &mut [f32],
    (a_re, a_im): (&[f32], &[f32]),
    (b, x): (&[f32], f32),
    w: &[f32],
    acc: &mut [f32],
) {
    let ab = a_re.iter().zip(a_im);
    for ((((r, i), (&ar, &ai)), &bq), (&wq, o)) in re
        .iter_mut()
        .zip(im.iter_mut())
        .zip(ab)
        .zip(b)
        .zip(w.iter().zip(acc.iter_mut()))
    {
        let (hr, hi) = (*r, *i);
        let nr = ar * hr - ai * hi + bq * x;
        *i = ar * hi + ai * hr;
        *r = nr;
        *o += wq * nr;
    }
}

impl<W: AsRef<[f32]>> Centaurus<W> {
    /// Neck: `u = B̄x`; per sub-state m: `S_m ← Ā_m ⊙ S_m + u`, `r += E_m ⊙ Re S_m`;
    /// `y = C r`.
    #[inline]
    fn step_neck(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let (h, n) = (self.config.d_model, self.config.d_state);
        let k = self.config.modes();
        let w = self.weights.as_ref();
        let (a_re, w) = take(w, k);
        let (a_im, w) = take(w, k);
        let (bt, w) = take(w, h * n);
        let (e, w) = take(w, k);
        let ct = take(w, n * h).0;
        let (s_re, st) = take_mut(state, k);
        let (s_im, st) = take_mut(st, k);
        let (u, st) = take_mut(st, n);
        let r = take_mut(st, n).0;
        u.fill(0.0);
        gemv_t_acc(u, bt, x);
        r.fill(0.0);
        let blocks = s_re
            .chunks_exact_mut(n)
            .zip(s_im.chunks_exact_mut(n))
            .zip(a_re.chunks_exact(n).zip(a_im.chunks_exact(n)))
            .zip(e.chunks_exact(n));
        for (((re, im), ab), e_m) in blocks {
            // u enters as b = u, xs = 1: expressed through `block_update_scalar`.
            block_update_scalar(re, im, ab, (u, 1.0), e_m, r);
        }
        y.fill(0.0);
        gemv_t_acc(y, ct, r);
    }

    /// DWS: per sub-state m: `S_m ← Ā_m ⊙ S_m + b ⊙ x`, `y += ce_m ⊙ Re S_m`.
    #[inline]
    fn step_dws(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let n = self.config.d_state;
        let k = self.config.modes();
        let w = self.weights.as_ref();
        let (a_re, w) = take(w, k);
        let (a_im, w) = take(w, k);
        let (b, w) = take(w, n);
        let ce = take(w, k).0;
        let (s_re, st) = take_mut(state, k);
        let s_im = take_mut(st, k).0;
        y.fill(0.0);
        let blocks = s_re
            .chunks_exact_mut(n)
            .zip(s_im.chunks_exact_mut(n))
            .zip(a_re.chunks_exact(n).zip(a_im.chunks_exact(n)))
            .zip(ce.chunks_exact(n));
        for (((re, im), ab), ce_m) in blocks {
            block_update(re, im, ab, (b, x), ce_m, y);
        }
    }

    /// Full (permuted states `p = j·H + i`): per sub-state m and input j:
    /// `S_{m,j} ← Ā_{m,j} ⊙ S_{m,j} + b_j·x[j]`, `y += ce_{m,j} ⊙ Re S_{m,j}` (blocks of H
    /// over the output index i).
    #[inline]
    fn step_full(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let h = self.config.d_model;
        let hh = h * h;
        let k = self.config.modes();
        let w = self.weights.as_ref();
        let (a_re, w) = take(w, k);
        let (a_im, w) = take(w, k);
        let (b, w) = take(w, hh);
        let ce = take(w, k).0;
        let (s_re, st) = take_mut(state, k);
        let s_im = take_mut(st, k).0;
        y.fill(0.0);
        let subs = s_re
            .chunks_exact_mut(hh)
            .zip(s_im.chunks_exact_mut(hh))
            .zip(a_re.chunks_exact(hh).zip(a_im.chunks_exact(hh)))
            .zip(ce.chunks_exact(hh));
        for (((re_m, im_m), (ar_m, ai_m)), ce_m) in subs {
            let blocks = re_m
                .chunks_exact_mut(h)
                .zip(im_m.chunks_exact_mut(h))
                .zip(ar_m.chunks_exact(h).zip(ai_m.chunks_exact(h)))
                .zip(ce_m.chunks_exact(h).zip(b.chunks_exact(h)))
                .zip(x);
            for ((((re, im), ab), (ce_j, b_j)), &xj) in blocks {
                block_update_scalar(re, im, ab, (b_j, xj), ce_j, y);
            }
        }
    }

    /// PointwiseNeck: `s ← Ā ⊙ s + B̄x` (B̄ real, so only `Re s` receives input);
    /// `y = C Re s`.
    #[inline]
    fn step_pw(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let h = self.config.d_model;
        let k = self.config.modes();
        let w = self.weights.as_ref();
        let (a_re, w) = take(w, k);
        let (a_im, w) = take(w, k);
        let (bt, w) = take(w, h * k);
        let ct = take(w, k * h).0;
        let (s_re, st) = take_mut(state, k);
        let s_im = take_mut(st, k).0;
        cmul_diag(s_re, s_im, a_re, a_im);
        gemv_t_acc(s_re, bt, x);
        y.fill(0.0);
        gemv_t_acc(y, ct, s_re);
    }
}

crate::layer::weight_view_methods!(Centaurus, CentaurusConfig, "Centaurus weights");

impl<W: AsRef<[f32]>> Layer for Centaurus<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.d_model
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// `S ← Ā ⊙ S + B̄x` (per sub-state), `y = C_eff Σ_m E_m ⊙ Re S_m`; PointwiseNeck:
    /// `s ← Ā ⊙ s + B̄x`, `y = C Re s`.
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        match self.config.mode {
            CentaurusMode::Neck => self.step_neck(state, x, y),
            CentaurusMode::PointwiseNeck => self.step_pw(state, x, y),
            CentaurusMode::DepthwiseSeparable => self.step_dws(state, x, y),
            CentaurusMode::Full => self.step_full(state, x, y),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::layer::run_sequence;
    use crate::params::{SliceParams, TensorView};

    /// xorshift64* generator of uniform numbers in [lo, hi).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self, lo: f32, hi: f32) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        }

        fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
            (0..len).map(|_| self.next(lo, hi)).collect()
        }
    }

    /// lrnnx parameters of one layer, as named tensors.
    struct Params {
        names: Vec<&'static str>,
        data: Vec<Vec<f32>>,
        shapes: Vec<Vec<usize>>,
    }

    impl Params {
        fn get(&self, name: &str) -> &[f32] {
            let i = self.names.iter().position(|n| *n == name).unwrap();
            &self.data[i]
        }

        fn set(&mut self, name: &'static str, data: Vec<f32>, shape: Vec<usize>) {
            match self.names.iter().position(|n| *n == name) {
                Some(i) => {
                    self.data[i] = data;
                    self.shapes[i] = shape;
                }
                None => {
                    self.names.push(name);
                    self.data.push(data);
                    self.shapes.push(shape);
                }
            }
        }

        fn remove(&mut self, name: &str) {
            let i = self.names.iter().position(|n| *n == name).unwrap();
            self.names.remove(i);
            self.data.remove(i);
            self.shapes.remove(i);
        }

        fn with<R>(&self, f: impl FnOnce(&SliceParams<'_>) -> R) -> R {
            let entries: Vec<(&str, TensorView<'_>)> = self
                .names
                .iter()
                .zip(self.data.iter().zip(&self.shapes))
                .map(|(n, (d, s))| (*n, TensorView { data: d, shape: s }))
                .collect();
            f(&SliceParams { entries: &entries })
        }
    }

    fn random_params(cfg: &CentaurusConfig, seed: u64) -> Params {
        let (h, n, m) = (cfg.d_model, cfg.d_state, cfg.sub_state_dim);
        let mut rng = Rng(seed);
        let mut p = Params {
            names: Vec::new(),
            data: Vec::new(),
            shapes: Vec::new(),
        };
        let mut a = Vec::new();
        for _ in 0..n * m {
            a.push(rng.next(-0.8, -0.05));
            a.push(rng.next(-3.0, 3.0));
        }
        p.set("A", a, vec![n, m, 2]);
        p.set("log_delta", rng.vec(n, -3.0, -0.7), vec![n]);
        if cfg.mode != CentaurusMode::PointwiseNeck {
            p.set("E", rng.vec(n * m, -1.0, 1.0), vec![n, m]);
        }
        let (bs, cs) = match cfg.mode {
            CentaurusMode::Neck => (vec![n, h], vec![h, n]),
            CentaurusMode::PointwiseNeck => (vec![n * m, h], vec![h, n * m]),
            CentaurusMode::DepthwiseSeparable => (vec![h], vec![h]),
            CentaurusMode::Full => (vec![n], vec![n]),
        };
        p.set("B", rng.vec(bs.iter().product(), -1.0, 1.0), bs);
        p.set("C", rng.vec(cs.iter().product(), -1.0, 1.0), cs);
        p
    }

    /// Independent reference (spec §3.2, §8.3-8.4), in f64: the convolution kernel
    /// `K[n,l] = Σ_m E[n,m]·Re exp(l·Δ_n·A[n,m])` (PointwiseNeck: one kernel per flattened
    /// sub-state, no E), dense `B̄` (states × H) and `C_eff` (H × states) built from lrnnx's
    /// definitions, and `y[t] = Σ_n C_eff[·,n] Σ_{s≤t} K[n,s]·(B̄ x[t−s])_n`.
    fn reference(cfg: &CentaurusConfig, p: &Params, xs: &[f32]) -> Vec<f64> {
        let (h, n, m) = (cfg.d_model, cfg.d_state, cfg.sub_state_dim);
        let len = xs.len() / h;
        let (a, ld) = (p.get("A"), p.get("log_delta"));
        let (b, c) = (p.get("B"), p.get("C"));
        let pw = cfg.mode == CentaurusMode::PointwiseNeck;
        let ns = if pw { n * m } else { n };
        let delta = |s: usize| (ld[s] as f64).exp();
        // Re exp(l·Δ_s·A[s,j]) = exp(l·Δ·Re A)·cos(l·Δ·Im A).
        let mode_kernel = |s: usize, j: usize, l: usize| {
            let (re, im) = (a[(s * m + j) * 2] as f64, a[(s * m + j) * 2 + 1] as f64);
            let z = l as f64 * delta(s);
            (z * re).exp() * (z * im).cos()
        };
        let mut kern = vec![0.0f64; ns * len];
        let mut bbar = vec![0.0f64; ns * h];
        let mut ceff = vec![0.0f64; h * ns];
        for st in 0..ns {
            for l in 0..len {
                kern[st * len + l] = if pw {
                    mode_kernel(st / m, st % m, l)
                } else {
                    let e = p.get("E");
                    (0..m)
                        .map(|j| e[st * m + j] as f64 * mode_kernel(st, j, l))
                        .sum()
                };
            }
        }
        for st in 0..ns {
            let d = delta(if pw { st / m } else { st });
            match cfg.mode {
                CentaurusMode::Neck | CentaurusMode::PointwiseNeck => {
                    for i in 0..h {
                        bbar[st * h + i] = d * b[st * h + i] as f64;
                        ceff[i * ns + st] = c[i * ns + st] as f64;
                    }
                }
                CentaurusMode::DepthwiseSeparable => {
                    bbar[st * h + st] = d * b[st] as f64;
                    ceff[st * ns + st] = c[st] as f64;
                }
                CentaurusMode::Full => {
                    if st < h * h {
                        bbar[st * h + st % h] = d * b[st] as f64;
                        ceff[(st / h) * ns + st] = c[st] as f64;
                    }
                }
            }
        }
        // u[t, s] = (B̄ x_t)_s
        let mut u = vec![0.0f64; len * ns];
        for t in 0..len {
            for st in 0..ns {
                u[t * ns + st] = (0..h)
                    .map(|i| bbar[st * h + i] * xs[t * h + i] as f64)
                    .sum();
            }
        }
        let mut y = vec![0.0f64; len * h];
        for t in 0..len {
            for st in 0..ns {
                let conv: f64 = (0..=t)
                    .map(|s| kern[st * len + s] * u[(t - s) * ns + st])
                    .sum();
                for o in 0..h {
                    y[t * h + o] += ceff[o * ns + st] * conv;
                }
            }
        }
        y
    }

    fn build(cfg: CentaurusConfig, p: &Params) -> Result<Centaurus<Vec<f32>>> {
        p.with(|src| Centaurus::from_lrnnx(cfg, src, vec![0.0; cfg.weights_len()]))
    }

    fn cfg(mode: CentaurusMode, h: usize, n: usize, m: usize) -> CentaurusConfig {
        CentaurusConfig {
            d_model: h,
            d_state: n,
            sub_state_dim: m,
            mode,
        }
    }

    fn check_against_reference(cfg: CentaurusConfig, seed: u64) {
        let p = random_params(&cfg, seed);
        let layer = build(cfg, &p).unwrap();
        let len = 48;
        let h = cfg.d_model;
        let xs = Rng(seed ^ 0x9E37_79B9).vec(len * h, -1.0, 1.0);
        let want = reference(&cfg, &p, &xs);
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(scale > 1e-3, "degenerate test signal ({scale})");

        // One step at a time.
        let mut state = vec![0.0f32; layer.state_len()];
        let mut y = vec![0.0f32; h];
        let mut worst = 0.0f64;
        for t in 0..len {
            layer
                .step(&mut state, &xs[t * h..(t + 1) * h], &mut y)
                .unwrap();
            for o in 0..h {
                let d = (y[o] as f64 - want[t * h + o]).abs();
                worst = if d.is_nan() {
                    f64::INFINITY
                } else {
                    worst.max(d)
                };
            }
        }
        assert!(
            worst <= 2e-5 * scale + 1e-6,
            "{:?}: max error {worst} vs scale {scale}",
            cfg.mode
        );

        // Whole sequence, in two halves (the state carries over), and from exported weights.
        let view = Centaurus::from_weights(cfg, layer.weights()).unwrap();
        let mut state = vec![0.0f32; view.state_len()];
        let mut ys = vec![0.0f32; len * h];
        let half = len / 2 * h;
        let (y0, y1) = ys.split_at_mut(half);
        run_sequence(&view, &mut state, &xs[..half], y0).unwrap();
        run_sequence(&view, &mut state, &xs[half..], y1).unwrap();
        let worst = ys
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(
                0.0f64,
                |a, d| if d.is_nan() { f64::INFINITY } else { a.max(d) },
            );
        assert!(
            worst <= 2e-5 * scale + 1e-6,
            "{:?}: sequence error {worst}",
            cfg.mode
        );
    }

    #[test]
    fn neck_matches_convolution_reference() {
        check_against_reference(cfg(CentaurusMode::Neck, 3, 5, 3), 1);
        check_against_reference(cfg(CentaurusMode::Neck, 4, 2, 1), 2);
    }

    #[test]
    fn pointwise_matches_convolution_reference() {
        check_against_reference(cfg(CentaurusMode::PointwiseNeck, 3, 4, 2), 3);
        check_against_reference(cfg(CentaurusMode::PointwiseNeck, 2, 3, 3), 4);
    }

    #[test]
    fn dws_matches_convolution_reference() {
        check_against_reference(cfg(CentaurusMode::DepthwiseSeparable, 4, 4, 3), 5);
        check_against_reference(cfg(CentaurusMode::DepthwiseSeparable, 1, 1, 2), 21);
    }

    #[test]
    fn full_matches_convolution_reference() {
        check_against_reference(cfg(CentaurusMode::Full, 3, 9, 2), 7);
        // States n ≥ H² are unconnected: they are dropped from the step.
        check_against_reference(cfg(CentaurusMode::Full, 3, 11, 2), 8);
        check_against_reference(cfg(CentaurusMode::Full, 2, 4, 3), 9);
        assert_eq!(cfg(CentaurusMode::Full, 3, 11, 2).modes(), 18);
    }

    #[test]
    fn layout_sizes() {
        let c = cfg(CentaurusMode::Neck, 8, 16, 4);
        assert_eq!(c.weights_len(), 2 * 64 + 2 * 8 * 16 + 64);
        assert_eq!(c.state_len(), 2 * 64 + 2 * 16);
        let c = cfg(CentaurusMode::PointwiseNeck, 8, 8, 4);
        assert_eq!(c.weights_len(), 2 * 32 + 2 * 8 * 32);
        assert_eq!(c.state_len(), 64);
        let c = cfg(CentaurusMode::DepthwiseSeparable, 8, 8, 4);
        assert_eq!(c.weights_len(), 2 * 32 + 8 + 32);
        let c = cfg(CentaurusMode::Full, 8, 70, 2);
        assert_eq!(c.weights_len(), 2 * 128 + 64 + 128);
        assert_eq!(c.state_len(), 256);
    }

    #[test]
    fn class_names_round_trip() {
        for mode in [
            CentaurusMode::Neck,
            CentaurusMode::PointwiseNeck,
            CentaurusMode::DepthwiseSeparable,
            CentaurusMode::Full,
        ] {
            assert_eq!(
                CentaurusMode::from_lrnnx_class(mode.lrnnx_class()),
                Some(mode)
            );
        }
        assert_eq!(
            CentaurusMode::from_lrnnx_class("lrnnx.models.lti.centaurus.CentaurusDWS"),
            Some(CentaurusMode::DepthwiseSeparable)
        );
        assert_eq!(CentaurusMode::from_lrnnx_class("Centaurus"), None);
    }

    #[test]
    fn wrong_shapes_are_rejected_per_mode() {
        // (mode, key, wrong shape)
        let cases: [(CentaurusMode, &'static str, Vec<usize>); 8] = [
            (CentaurusMode::Neck, "B", vec![3, 4]),
            (CentaurusMode::Neck, "C", vec![4, 3]),
            (CentaurusMode::PointwiseNeck, "B", vec![4, 3]),
            (CentaurusMode::PointwiseNeck, "C", vec![12, 3]),
            (CentaurusMode::DepthwiseSeparable, "B", vec![3, 3]),
            (CentaurusMode::Full, "C", vec![3, 3]),
            (CentaurusMode::Full, "E", vec![9]),
            (CentaurusMode::Neck, "A", vec![4, 3]),
        ];
        for (mode, key, shape) in cases {
            let n = match mode {
                CentaurusMode::Full => 9,
                CentaurusMode::DepthwiseSeparable => 3,
                _ => 4,
            };
            let c = cfg(mode, 3, n, 3);
            let mut p = random_params(&c, 11);
            let numel = shape.iter().product();
            p.set(key, vec![0.5; numel], shape.clone());
            match build(c, &p) {
                Err(Error::TensorShape { name, got, .. }) => {
                    assert_eq!(name, key);
                    assert_eq!(got.as_slice(), &shape[..]);
                }
                other => panic!("{mode:?} {key}: expected a shape error, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_tensors_are_named() {
        let c = cfg(CentaurusMode::Neck, 2, 3, 2);
        let mut p = random_params(&c, 12);
        p.remove("E");
        assert_eq!(
            build(c, &p).unwrap_err(),
            Error::MissingTensor { name: "E" }
        );
        let c = cfg(CentaurusMode::PointwiseNeck, 2, 3, 2);
        let mut p = random_params(&c, 13);
        p.remove("log_delta");
        assert_eq!(
            build(c, &p).unwrap_err(),
            Error::MissingTensor { name: "log_delta" }
        );
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            cfg(CentaurusMode::DepthwiseSeparable, 3, 4, 2),
            cfg(CentaurusMode::Full, 3, 8, 2),
            cfg(CentaurusMode::Neck, 0, 4, 2),
            cfg(CentaurusMode::Neck, 3, 0, 2),
            cfg(CentaurusMode::PointwiseNeck, 3, 4, 0),
            cfg(CentaurusMode::Full, usize::MAX / 2, usize::MAX, 1),
            cfg(CentaurusMode::PointwiseNeck, 1 << 20, 1 << 30, 1 << 20),
        ];
        let p = random_params(&cfg(CentaurusMode::Neck, 3, 4, 2), 14);
        for c in bad {
            match build_with_len(c, &p, 0) {
                Err(Error::InvalidConfig { .. }) => {}
                other => panic!("{c:?}: expected InvalidConfig, got {other:?}"),
            }
            match Centaurus::from_weights(c, &[][..]) {
                Err(Error::InvalidConfig { .. }) => {}
                other => panic!("{c:?}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    fn build_with_len(cfg: CentaurusConfig, p: &Params, len: usize) -> Result<Centaurus<Vec<f32>>> {
        p.with(|src| Centaurus::from_lrnnx(cfg, src, vec![0.0; len]))
    }

    #[test]
    fn non_finite_parameters_are_rejected() {
        let c = cfg(CentaurusMode::Full, 2, 5, 2);
        let mut p = random_params(&c, 15);
        let mut a = p.get("A").to_vec();
        a[7] = f32::NAN;
        p.set("A", a, vec![5, 2, 2]);
        assert_eq!(
            build(c, &p).unwrap_err(),
            Error::NonFiniteParameter {
                name: "A",
                index: 7
            }
        );

        // Finite parameters whose discretization overflows: Δ = e^80, Re A > 0.
        let c = cfg(CentaurusMode::Neck, 2, 3, 2);
        let mut p = random_params(&c, 16);
        p.set("log_delta", vec![80.0, -1.0, -1.0], vec![3]);
        p.set("A", vec![0.1; 12], vec![3, 2, 2]);
        assert!(matches!(
            build(c, &p).unwrap_err(),
            Error::NonFiniteParameter {
                name: "discretized Centaurus weights",
                ..
            }
        ));
    }

    #[test]
    fn weight_buffers_are_checked() {
        let c = cfg(CentaurusMode::DepthwiseSeparable, 3, 3, 2);
        let p = random_params(&c, 17);
        assert_eq!(
            build_with_len(c, &p, c.weights_len() + 1).unwrap_err(),
            Error::BufferLength {
                what: "weights",
                expected: c.weights_len(),
                got: c.weights_len() + 1
            }
        );
        let mut w = build(c, &p).unwrap().weights().to_vec();
        assert!(Centaurus::from_weights(c, &w[..1]).is_err());
        w[4] = f32::INFINITY;
        assert_eq!(
            Centaurus::from_weights(c, &w[..]).unwrap_err(),
            Error::NonFiniteParameter {
                name: "Centaurus weights",
                index: 4
            }
        );
    }

    #[test]
    fn bad_step_input_leaves_state_untouched() {
        for mode in [
            CentaurusMode::Neck,
            CentaurusMode::PointwiseNeck,
            CentaurusMode::DepthwiseSeparable,
            CentaurusMode::Full,
        ] {
            let n = if mode == CentaurusMode::Full { 4 } else { 2 };
            let c = cfg(mode, 2, n, 2);
            let layer = build(c, &random_params(&c, 18)).unwrap();
            let mut state = vec![0.0f32; layer.state_len()];
            let mut y = [0.0f32; 2];
            layer.step(&mut state, &[0.3, -0.7], &mut y).unwrap();
            let before = state.clone();
            assert_eq!(
                layer
                    .step(&mut state, &[0.1, f32::NAN], &mut y)
                    .unwrap_err(),
                Error::NonFiniteInput { index: 1 }
            );
            assert_eq!(state, before);
            assert!(layer.step(&mut state, &[0.1], &mut y).is_err());
            assert!(layer.step(&mut state[1..], &[0.1, 0.2], &mut y).is_err());
            assert!(layer.step(&mut state, &[0.1, 0.2], &mut y[..1]).is_err());
            assert_eq!(state, before);
            // The unchecked step tolerates wrong lengths without panicking.
            layer.step_prechecked(&mut state[..3], &[0.1], &mut y);
            layer.step_prechecked(&mut [], &[], &mut []);
        }
    }
}
