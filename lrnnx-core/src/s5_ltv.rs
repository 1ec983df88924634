//! S5, time-varying, with Event-SSM mode (lrnnx `lrnnx.models.ltv.s5.S5`, spec §10).
//!
//! ```text
//! Λ = A[:,0] + i·A[:,1]      B̃ = B[..,0] + i·B[..,1] (P×H)      C̃ = C[..,0] + i·C[..,1] (H×P)
//! Δ_p = exp(log_dt_p)·step_rescale
//! ordinary step : Ā = disc(Λ, Δ)                 event step (time step τ): Ā = disc(Λ, τ·Δ)
//! zoh      : Ā = exp(ΔA·Λ),                 γ̄ = (exp(ΔΛ) − 1)/Λ
//! bilinear : Ā = (1 + ΔA·Λ/2)/(1 − ΔA·Λ/2), γ̄ = Δ/(1 − ΔΛ/2)        (correct Tustin)
//! dirac    : Ā = exp(ΔA·Λ),                 γ̄ = 1
//! s_t = Ā ⊙ s_{t−1} + γ̄ ⊙ (B̃ x_t)
//! y_t = k·Re(C̃ s_t) + D ⊙ x_t              (k = 2 with conj_sym, else 1; D a vector (H,))
//! ```
//!
//! As in lrnnx, the input gain `γ̄` always uses the ordinary `Δ`, also in event mode; only the
//! transition `Ā` sees the event time step τ (Event-SSM). This layer uses the correct Tustin
//! rule for `bilinear`, which is what lrnnx's time-varying kernels use (spec §18.1 concerns
//! only the LTI S5).
//!
//! lrnnx keys: `A` (P,2) = (Re Λ, Im Λ) raw (no softplus), `B` (P,H,2), `C` (H,P,2), `D` (H,),
//! `log_dt` (P,).
//!
//! **Event mode** ([`EventLayer::step_event`]): `dt` is lrnnx's `integration_timesteps` value τ
//! for this sample. A time step that is zero, negative, NaN or infinite is rejected by
//! [`EventLayer::step_event`] (and [`run_event_sequence`](crate::run_event_sequence)) with
//! [`Error::InvalidTimeStep`] before the state is touched.
//!
//! Weight layout (all `f32`, split re/im, matrices transposed so that the step is a sequence of
//! `axpy`s; discretized in `f64` at construction):
//!
//! | segment  | length | meaning                                              |
//! |----------|--------|------------------------------------------------------|
//! | `a_re`   | P      | `Re Ā` for the ordinary step `Δ`                     |
//! | `a_im`   | P      | `Im Ā`                                               |
//! | `dl_re`  | P      | `Re(Δ·Λ)` (event mode: `z = τ·Δ·Λ`)                  |
//! | `dl_im`  | P      | `Im(Δ·Λ)`                                            |
//! | `bt_re`  | H·P    | `Re B̄ᵀ`, `B̄ = γ̄ ⊙ B̃` (row i = input i)            |
//! | `bt_im`  | H·P    | `Im B̄ᵀ`                                             |
//! | `ct_re`  | P·H    | `k·Re C̃ᵀ` (row p = state p)                         |
//! | `ct_nim` | P·H    | `−k·Im C̃ᵀ`                                          |
//! | `d`      | H      | `D`                                                  |
//!
//! State (`6P`): `s_re` (P), `s_im` (P), then a working area that carries nothing between steps:
//! `v_re`, `v_im` (P each, the input term `B̄x`) and `ab_re`, `ab_im` (P each, the event-mode `Ā`).

use num_complex::Complex64;

use crate::discretize::{discretize, Discretization};
use crate::error::{check_finite_weights, check_len, check_nonzero, Error, Result};
use crate::layer::{EventLayer, Layer};
use crate::linalg::{diag_acc, gemv_t_acc, gemv_t_segments, take};
use crate::params::{require, ParamSource};
use crate::scan::simplified::{advance, bilinear_transition, exp_transition};

/// Sizes and options of a time-varying S5 layer (lrnnx's constructor arguments; `dt_min`,
/// `dt_max` only shape the initialization).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct S5LtvConfig {
    /// H, input and output features.
    pub d_model: usize,
    /// P, complex states.
    pub d_state: usize,
    /// zoh, bilinear (Tustin) or dirac.
    pub discretization: Discretization,
    /// Conjugate symmetry: the output is `2·Re(C̃ s)`.
    pub conj_sym: bool,
    /// Multiplies every `Δ_p` (lrnnx `step_rescale`, default 1).
    pub step_rescale: f32,
}

impl S5LtvConfig {
    /// Number of `f32` weights of the stepping layout.
    pub const fn weights_len(&self) -> usize {
        let (p, h) = (self.d_state, self.d_model);
        crate::error::sum_of_products(&[&[4, p], &[4, h, p], &[h]])
    }

    /// Number of `f32` state elements (including the working area).
    pub const fn state_len(&self) -> usize {
        self.d_state.saturating_mul(6)
    }

    fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)?;
        crate::error::check_sizes(self.weights_len(), self.state_len())?;
        if !(self.step_rescale.is_finite() && self.step_rescale > 0.0) {
            return Err(Error::InvalidConfig {
                what: "step_rescale",
                reason: "must be a positive finite number",
            });
        }
        match self.discretization {
            Discretization::Zoh | Discretization::Bilinear | Discretization::Dirac => Ok(()),
            d => Err(Error::UnsupportedDiscretization {
                layer: "S5 (LTV)",
                discretization: d,
            }),
        }
    }
}

/// Borrowed segments of the weights.
struct View<'w> {
    a_re: &'w [f32],
    a_im: &'w [f32],
    dl_re: &'w [f32],
    dl_im: &'w [f32],
    bt_re: &'w [f32],
    bt_im: &'w [f32],
    ct_re: &'w [f32],
    ct_nim: &'w [f32],
    d: &'w [f32],
}

/// A time-varying S5 layer ready to step (ordinary or event mode); `W` holds the weights.
#[derive(Debug, Clone)]
pub struct S5Ltv<W> {
    config: S5LtvConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> S5Ltv<W> {
    /// Builds the layer from lrnnx parameters, discretizing once (in `f64`) into `weights`
    /// (`config.weights_len()` elements, overwritten).
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: S5LtvConfig,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        let (h, p) = (config.d_model, config.d_state);
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let a = require(params, "A", &[p, 2])?;
        let b = require(params, "B", &[p, h, 2])?;
        let c = require(params, "C", &[h, p, 2])?;
        let d = require(params, "D", &[h])?;
        let log_dt = require(params, "log_dt", &[p])?;

        let k = if config.conj_sym { 2.0 } else { 1.0 };
        let w = weights.as_mut();
        w.fill(0.0);
        let (hp, ph) = (h * p, p * h);
        for s in 0..p {
            let lam = Complex64::new(a[2 * s] as f64, a[2 * s + 1] as f64);
            let dt = libm::exp(log_dt[s] as f64) * config.step_rescale as f64;
            let disc = discretize(config.discretization, lam, dt, 1.0);
            let dl = lam * dt;
            w[s] = disc.a_bar.re as f32;
            w[p + s] = disc.a_bar.im as f32;
            w[2 * p + s] = dl.re as f32;
            w[3 * p + s] = dl.im as f32;
            for i in 0..h {
                let bv = Complex64::new(b[(s * h + i) * 2] as f64, b[(s * h + i) * 2 + 1] as f64);
                let bb = disc.gamma * bv;
                w[4 * p + i * p + s] = bb.re as f32;
                w[4 * p + hp + i * p + s] = bb.im as f32;
            }
            for o in 0..h {
                let (cr, ci) = (c[(o * p + s) * 2] as f64, c[(o * p + s) * 2 + 1] as f64);
                w[4 * p + 2 * hp + s * h + o] = (k * cr) as f32;
                w[4 * p + 2 * hp + ph + s * h + o] = (-k * ci) as f32;
            }
        }
        w[4 * p + 2 * hp + 2 * ph..].copy_from_slice(d);
        check_finite_weights("discretized S5 (LTV) weights", w)?;
        Ok(S5Ltv { config, weights })
    }

    fn view(&self) -> View<'_> {
        let (p, h) = (self.config.d_state, self.config.d_model);
        let mut w = self.weights.as_ref();
        View {
            a_re: take(&mut w, p),
            a_im: take(&mut w, p),
            dl_re: take(&mut w, p),
            dl_im: take(&mut w, p),
            bt_re: take(&mut w, h * p),
            bt_im: take(&mut w, h * p),
            ct_re: take(&mut w, p * h),
            ct_nim: take(&mut w, p * h),
            d: take(&mut w, h),
        }
    }

    /// The rest of a step once `Ā` is known: `v = B̄x`, `s ← Ā⊙s + v` (the shared
    /// [`advance`]), `y = k·Re(C̃ s) + D⊙x`.
    #[inline(always)]
    fn finish(
        v: &View<'_>,
        s: (&mut [f32], &mut [f32]),
        vb: (&mut [f32], &mut [f32]),
        a_bar: (&[f32], &[f32]),
        x: &[f32],
        y: &mut [f32],
    ) {
        let (s_re, s_im) = s;
        let (v_re, v_im) = vb;
        v_re.fill(0.0);
        v_im.fill(0.0);
        gemv_t_acc(v_re, v.bt_re, x);
        gemv_t_acc(v_im, v.bt_im, x);
        for ((sr, si), ((&ar, &ai), (&vr, &vi))) in s_re.iter_mut().zip(s_im.iter_mut()).zip(
            a_bar
                .0
                .iter()
                .zip(a_bar.1)
                .zip(v_re.iter().zip(v_im.iter())),
        ) {
            let n = advance((*sr, *si), (ar, ai), (vr, vi));
            *sr = n.0;
            *si = n.1;
        }
        y.fill(0.0);
        gemv_t_segments(y, &[(v.ct_re, s_re), (v.ct_nim, s_im)]);
        diag_acc(y, v.d, x);
    }
}

/// `r[s..s + N]` as an array reference (`None` when out of range).
#[inline(always)]
fn arr<const N: usize>(r: &[f32], s: usize) -> Option<&[f32; N]> {
    r.get(s..s.checked_add(N)?).and_then(|v| v.try_into().ok())
}

/// `acc += c · row` over a block.
#[inline(always)]
fn axpy<const N: usize>(acc: &mut [f32; N], c: f32, row: &[f32; N]) {
    for j in 0..N {
        acc[j] += c * row[j];
    }
}

/// Where `Ā` comes from in the fused step: precomputed (ordinary step), or from `z = τ·ΔΛ`
/// by the exp or the Tustin rule (event step).
#[derive(Clone, Copy, PartialEq)]
enum Transition {
    Stored,
    Exp(f32),
    Bilinear(f32),
}

/// The whole step in one pass when `P` and `H` are multiples of the block `B` (16 or 8), with
/// every accumulator in registers. Per block of `B` states: `v = B̄x` (two interleaved partial
/// sums over the inputs), `Ā` (stored, or from `τ·ΔΛ`), `s ← Ā⊙s + v`. Then per block of `B`
/// outputs: `y = D⊙x + Σ_k c_k s_k` over the `2P` rows `c_k` of `[k·Re C̃ᵀ; −k·Im C̃ᵀ]` (stored
/// one after the other) and `s = [s_re; s_im]` (likewise), in four interleaved partial sums.
/// The same equations as [`S5Ltv::finish`]; only the order of the additions differs. `w` is
/// the whole weight buffer and `st` the state's first `2P` values. Returns `false` (nothing
/// written) when the sizes do not fit.
#[inline(always)]
fn fused_step<const B: usize>(
    w: &[f32],
    st: &mut [f32],
    (p, h): (usize, usize),
    tr: Transition,
    x: &[f32],
    y: &mut [f32],
) -> bool {
    if p % B != 0 || h % B != 0 || st.len() != 2 * p || x.len() != h || y.len() != h {
        return false;
    }
    let Some(w) = w.get(..4 * p + 4 * h * p + h) else {
        return false;
    };
    let (head, rest) = w.split_at(4 * p);
    let (bt, rest) = rest.split_at(2 * h * p);
    let (ct, d) = rest.split_at(2 * p * h);
    let (bt_re, bt_im) = bt.split_at(h * p);
    let (s_re, s_im) = st.split_at_mut(p);
    for c0 in (0..p).step_by(B) {
        // The transitions first: their polynomial chains then overlap the independent
        // multiply-adds of `v = B̄x` below.
        let (Some(a_re), Some(a_im), Some(z_re), Some(z_im)) = (
            arr::<B>(head, c0),
            arr::<B>(head, p + c0),
            arr::<B>(head, 2 * p + c0),
            arr::<B>(head, 3 * p + c0),
        ) else {
            return false;
        };
        let (mut ar, mut ai) = (*a_re, *a_im);
        match tr {
            Transition::Stored => {}
            Transition::Exp(dt) => {
                for j in 0..B {
                    (ar[j], ai[j]) = exp_transition(dt * z_re[j], dt * z_im[j]);
                }
            }
            Transition::Bilinear(dt) => {
                for j in 0..B {
                    (ar[j], ai[j]) = bilinear_transition(dt * z_re[j], dt * z_im[j]);
                }
            }
        }
        let (mut vr0, mut vi0, mut vr1, mut vi1) =
            ([0.0f32; B], [0.0f32; B], [0.0f32; B], [0.0f32; B]);
        for (i2, x2) in x.chunks_exact(2).enumerate() {
            let (r0, r1) = (2 * i2 * p + c0, (2 * i2 + 1) * p + c0);
            if let (Some(a), Some(b), Some(c), Some(e)) = (
                arr::<B>(bt_re, r0),
                arr::<B>(bt_im, r0),
                arr::<B>(bt_re, r1),
                arr::<B>(bt_im, r1),
            ) {
                axpy(&mut vr0, x2[0], a);
                axpy(&mut vi0, x2[0], b);
                axpy(&mut vr1, x2[1], c);
                axpy(&mut vi1, x2[1], e);
            }
        }
        let (Some(sr), Some(si)) = (s_re.get_mut(c0..c0 + B), s_im.get_mut(c0..c0 + B)) else {
            return false;
        };
        for j in 0..B {
            let n = advance(
                (sr[j], si[j]),
                (ar[j], ai[j]),
                (vr0[j] + vr1[j], vi0[j] + vi1[j]),
            );
            sr[j] = n.0;
            si[j] = n.1;
        }
    }
    let s: &[f32] = st;
    for o0 in (0..h).step_by(B) {
        let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; B], [0.0f32; B], [0.0f32; B], [0.0f32; B]);
        if let (Some(db), Some(xb)) = (arr::<B>(d, o0), arr::<B>(x, o0)) {
            for j in 0..B {
                a0[j] = db[j] * xb[j];
            }
        }
        for (k4, s4) in s.chunks_exact(4).enumerate() {
            let k = 4 * k4;
            if let (Some(r0), Some(r1), Some(r2), Some(r3)) = (
                arr::<B>(ct, k * h + o0),
                arr::<B>(ct, (k + 1) * h + o0),
                arr::<B>(ct, (k + 2) * h + o0),
                arr::<B>(ct, (k + 3) * h + o0),
            ) {
                axpy(&mut a0, s4[0], r0);
                axpy(&mut a1, s4[1], r1);
                axpy(&mut a2, s4[2], r2);
                axpy(&mut a3, s4[3], r3);
            }
        }
        if let Some(out) = y.get_mut(o0..o0 + B) {
            for j in 0..B {
                out[j] = (a0[j] + a1[j]) + (a2[j] + a3[j]);
            }
        }
    }
    true
}

/// [`fused_step`] with block 16 or 8, whichever divides both `P` and `H` (`false` when neither
/// does: the caller then takes the general path).
#[inline(always)]
fn fused_dispatch(
    w: &[f32],
    state: &mut [f32],
    (p, h): (usize, usize),
    tr: Transition,
    x: &[f32],
    y: &mut [f32],
) -> bool {
    let Some(st) = state.get_mut(..2 * p) else {
        return false;
    };
    if p % 16 == 0 && h % 16 == 0 {
        fused_step::<16>(w, st, (p, h), tr, x, y)
    } else if p % 8 == 0 && h % 8 == 0 {
        fused_step::<8>(w, st, (p, h), tr, x, y)
    } else {
        false
    }
}

/// Splits the state into `(s_re, s_im)`, `(v_re, v_im)`, `(ab_re, ab_im)` (never panics).
fn split_state(state: &mut [f32], p: usize) -> [&mut [f32]; 6] {
    let (s_re, rest) = state.split_at_mut(p.min(state.len()));
    let (s_im, rest) = rest.split_at_mut(p.min(rest.len()));
    let (v_re, rest) = rest.split_at_mut(p.min(rest.len()));
    let (v_im, rest) = rest.split_at_mut(p.min(rest.len()));
    let (ab_re, rest) = rest.split_at_mut(p.min(rest.len()));
    let n = p.min(rest.len());
    let ab_im = &mut rest[..n];
    [s_re, s_im, v_re, v_im, ab_re, ab_im]
}

crate::layer::weight_view_methods!(S5Ltv, S5LtvConfig, "S5 (LTV) weights");

impl<W: AsRef<[f32]>> Layer for S5Ltv<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.d_model
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// `s ← Ā⊙s + B̄x;  y = k·Re(C̃ s) + D⊙x` with the precomputed `Ā`, `B̄ = γ̄⊙B̃`.
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let (p, h) = (self.config.d_state, self.config.d_model);
        if fused_dispatch(
            self.weights.as_ref(),
            state,
            (p, h),
            Transition::Stored,
            x,
            y,
        ) {
            return;
        }
        let v = self.view();
        let [s_re, s_im, v_re, v_im, _, _] = split_state(state, self.config.d_state);
        Self::finish(&v, (s_re, s_im), (v_re, v_im), (v.a_re, v.a_im), x, y);
    }
}

impl<W: AsRef<[f32]>> EventLayer for S5Ltv<W> {
    /// Event-SSM step with time step τ = `dt`: `Ā = disc(τ·Δ·Λ)` per state (zoh, dirac:
    /// `exp(τΔΛ) = e^{τ Re(ΔΛ)}(cos τ Im(ΔΛ) + i sin τ Im(ΔΛ))`; bilinear:
    /// `(1 + τΔΛ/2)/(1 − τΔΛ/2)`), then as the ordinary step with `B̄ = γ̄(Δ)⊙B̃`.
    #[inline]
    fn step_event_prechecked(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]) {
        let (p, h) = (self.config.d_state, self.config.d_model);
        let tr = if self.config.discretization == Discretization::Bilinear {
            Transition::Bilinear(dt)
        } else {
            Transition::Exp(dt)
        };
        if fused_dispatch(self.weights.as_ref(), state, (p, h), tr, x, y) {
            return;
        }
        let v = self.view();
        let [s_re, s_im, v_re, v_im, ab_re, ab_im] = split_state(state, self.config.d_state);
        let lanes = ab_re
            .iter_mut()
            .zip(ab_im.iter_mut())
            .zip(v.dl_re.iter().zip(v.dl_im));
        if self.config.discretization == Discretization::Bilinear {
            for ((ar, ai), (&zr, &zi)) in lanes {
                (*ar, *ai) = bilinear_transition(dt * zr, dt * zi);
            }
        } else {
            for ((ar, ai), (&zr, &zi)) in lanes {
                (*ar, *ai) = exp_transition(dt * zr, dt * zi);
            }
        }
        Self::finish(&v, (s_re, s_im), (v_re, v_im), (ab_re, ab_im), x, y);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use num_complex::Complex64;

    use super::*;
    use crate::error::Error;
    use crate::layer::{run_event_sequence, run_sequence};
    use crate::params::{SliceParams, TensorView};

    fn det(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    struct Params {
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
        d: Vec<f32>,
        log_dt: Vec<f32>,
        shapes: [[usize; 3]; 5],
    }

    impl Params {
        fn new(h: usize, p: usize, seed: u64) -> Self {
            let mut s = seed;
            Params {
                a: (0..p)
                    .flat_map(|i| [-0.5 - 0.1 * i as f32, 4.0 * det(&mut s)])
                    .collect(),
                b: (0..p * h * 2).map(|_| det(&mut s)).collect(),
                c: (0..h * p * 2).map(|_| det(&mut s)).collect(),
                d: (0..h).map(|_| det(&mut s)).collect(),
                log_dt: (0..p).map(|_| -3.0 + det(&mut s)).collect(),
                shapes: [[p, 2, 0], [p, h, 2], [h, p, 2], [h, 0, 0], [p, 0, 0]],
            }
        }

        fn entries(&self) -> [(&'static str, TensorView<'_>); 5] {
            let sh = &self.shapes;
            [
                (
                    "A",
                    TensorView {
                        data: &self.a,
                        shape: &sh[0][..2],
                    },
                ),
                (
                    "B",
                    TensorView {
                        data: &self.b,
                        shape: &sh[1],
                    },
                ),
                (
                    "C",
                    TensorView {
                        data: &self.c,
                        shape: &sh[2],
                    },
                ),
                (
                    "D",
                    TensorView {
                        data: &self.d,
                        shape: &sh[3][..1],
                    },
                ),
                (
                    "log_dt",
                    TensorView {
                        data: &self.log_dt,
                        shape: &sh[4][..1],
                    },
                ),
            ]
        }
    }

    /// Independent reference: complex f64 with the discretization written out per rule, the
    /// transition computed for time step `dta` and the input gain for `dt`.
    fn reference(pr: &Params, cfg: S5LtvConfig, xs: &[f32], taus: Option<&[f32]>) -> Vec<f64> {
        let (h, p) = (cfg.d_model, cfg.d_state);
        let l = xs.len() / h;
        let mut s = vec![Complex64::new(0.0, 0.0); p];
        let mut ys = vec![0.0; l * h];
        let k = if cfg.conj_sym { 2.0 } else { 1.0 };
        for t in 0..l {
            let x = &xs[t * h..(t + 1) * h];
            for (n, sn) in s.iter_mut().enumerate() {
                let lam = Complex64::new(pr.a[2 * n] as f64, pr.a[2 * n + 1] as f64);
                let dt = (pr.log_dt[n] as f64).exp() * cfg.step_rescale as f64;
                let dta = taus.map_or(dt, |tt| tt[t] as f64 * dt);
                let (abar, g) = match cfg.discretization {
                    Discretization::Zoh => ((dta * lam).exp(), ((dt * lam).exp() - 1.0) / lam),
                    Discretization::Bilinear => (
                        (1.0 + dta * lam / 2.0) / (1.0 - dta * lam / 2.0),
                        dt / (1.0 - dt * lam / 2.0),
                    ),
                    _ => ((dta * lam).exp(), Complex64::new(1.0, 0.0)),
                };
                let bx: Complex64 = (0..h)
                    .map(|i| {
                        Complex64::new(
                            pr.b[(n * h + i) * 2] as f64,
                            pr.b[(n * h + i) * 2 + 1] as f64,
                        ) * x[i] as f64
                    })
                    .sum();
                *sn = abar * *sn + g * bx;
            }
            for o in 0..h {
                let cs: Complex64 = (0..p)
                    .map(|n| {
                        Complex64::new(
                            pr.c[(o * p + n) * 2] as f64,
                            pr.c[(o * p + n) * 2 + 1] as f64,
                        ) * s[n]
                    })
                    .sum();
                ys[t * h + o] = k * cs.re + pr.d[o] as f64 * x[o] as f64;
            }
        }
        ys
    }

    fn cfg(disc: Discretization, conj_sym: bool) -> S5LtvConfig {
        S5LtvConfig {
            d_model: 3,
            d_state: 5,
            discretization: disc,
            conj_sym,
            step_rescale: 1.5,
        }
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale + 1e-6,
                "{i}: {g} vs {w}"
            );
        }
    }

    /// Every rule, with and without conjugate symmetry, at sizes that take the general path
    /// (H = 3, P = 5) and the fused one (blocks of 16: H = P = 16; blocks of 8: H = 8, P = 24
    /// and H = 16, P = 8).
    #[test]
    fn ordinary_and_event_match_reference() {
        let l = 40;
        let mut seed = 99;
        for disc in [
            Discretization::Zoh,
            Discretization::Bilinear,
            Discretization::Dirac,
        ] {
            for conj in [false, true] {
                for (h, p) in [(3, 5), (16, 16), (8, 24), (16, 8)] {
                    let c = S5LtvConfig {
                        d_model: h,
                        d_state: p,
                        ..cfg(disc, conj)
                    };
                    let pr = Params::new(h, p, 11);
                    let src = SliceParams {
                        entries: &pr.entries(),
                    };
                    let layer = S5Ltv::from_lrnnx(c, &src, vec![0.0; c.weights_len()]).unwrap();
                    let xs: Vec<f32> = (0..l * h).map(|_| det(&mut seed)).collect();
                    let taus: Vec<f32> = (0..l).map(|_| 0.2 + 1.8 * det(&mut seed).abs()).collect();
                    let mut ys = vec![0.0; l * h];
                    let mut st = vec![0.0; c.state_len()];
                    run_sequence(&layer, &mut st, &xs, &mut ys).unwrap();
                    assert_close(&ys, &reference(&pr, c, &xs, None));
                    let mut st = vec![0.0; c.state_len()];
                    run_event_sequence(&layer, &mut st, &xs, &taus, &mut ys).unwrap();
                    assert_close(&ys, &reference(&pr, c, &xs, Some(&taus)));
                }
            }
        }
    }

    #[test]
    fn event_step_with_unit_time_equals_ordinary_step() {
        for disc in [
            Discretization::Zoh,
            Discretization::Bilinear,
            Discretization::Dirac,
        ] {
            let c = cfg(disc, false);
            let pr = Params::new(3, 5, 5);
            let src = SliceParams {
                entries: &pr.entries(),
            };
            let layer = S5Ltv::from_lrnnx(c, &src, vec![0.0; c.weights_len()]).unwrap();
            let (mut s1, mut s2) = (vec![0.0; c.state_len()], vec![0.0; c.state_len()]);
            let (mut y1, mut y2) = ([0.0f32; 3], [0.0f32; 3]);
            for t in 0..30 {
                let x = [(t as f32 * 0.3).sin(), 0.5, -(t as f32 * 0.1).cos()];
                layer.step(&mut s1, &x, &mut y1).unwrap();
                layer.step_event(&mut s2, &x, 1.0, &mut y2).unwrap();
                // Same math; only the f32 (event) vs f64-precomputed (ordinary) Ā differ.
                let scale = s1[..10].iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (a, b) in y1.iter().zip(&y2) {
                    assert!((a - b).abs() < 3e-6 * scale, "{disc:?} t={t}: {a} vs {b}");
                }
            }
        }
    }

    /// One state, H = 1, zoh: after an impulse, a free decay over event time steps τ_1..τ_n
    /// multiplies the state by exp(Δ Λ Σ τ) (closed form).
    #[test]
    fn event_time_scaling_matches_closed_form() {
        let lam = Complex64::new(-0.7, 2.3);
        let log_dt = -1.2f32;
        let (a, b, c, d) = (
            [lam.re as f32, lam.im as f32],
            [1.0f32, 0.0],
            [1.0f32, 0.0],
            [0.0f32],
        );
        let ld = [log_dt];
        let entries = [
            (
                "A",
                TensorView {
                    data: &a,
                    shape: &[1, 2],
                },
            ),
            (
                "B",
                TensorView {
                    data: &b,
                    shape: &[1, 1, 2],
                },
            ),
            (
                "C",
                TensorView {
                    data: &c,
                    shape: &[1, 1, 2],
                },
            ),
            (
                "D",
                TensorView {
                    data: &d,
                    shape: &[1],
                },
            ),
            (
                "log_dt",
                TensorView {
                    data: &ld,
                    shape: &[1],
                },
            ),
        ];
        let c = S5LtvConfig {
            d_model: 1,
            d_state: 1,
            discretization: Discretization::Zoh,
            conj_sym: false,
            step_rescale: 1.0,
        };
        let layer = S5Ltv::from_lrnnx(
            c,
            &SliceParams { entries: &entries },
            vec![0.0; c.weights_len()],
        )
        .unwrap();
        let mut st = vec![0.0; c.state_len()];
        let mut y = [0.0f32];
        layer.step_event(&mut st, &[1.0], 0.5, &mut y).unwrap();
        let dt = (log_dt as f64).exp();
        let s0 = ((0.5 * dt * lam).exp() * 0.0) + ((dt * lam).exp() - 1.0) / lam;
        assert!((y[0] as f64 - s0.re).abs() < 1e-6);
        let mut total = 0.0;
        for &tau in &[0.3f32, 1.7, 0.9, 2.5] {
            layer.step_event(&mut st, &[0.0], tau, &mut y).unwrap();
            total += tau as f64;
            let want = (dt * total * lam).exp() * s0;
            assert!((y[0] as f64 - want.re).abs() < 2e-6, "tau {tau}");
            assert!((st[1] as f64 - want.im).abs() < 2e-6);
        }
    }

    #[test]
    fn bad_time_steps_and_inputs_leave_state_untouched() {
        let c = cfg(Discretization::Zoh, false);
        let pr = Params::new(3, 5, 3);
        let src = SliceParams {
            entries: &pr.entries(),
        };
        let layer = S5Ltv::from_lrnnx(c, &src, vec![0.0; c.weights_len()]).unwrap();
        let mut st = vec![0.0; c.state_len()];
        let mut y = [0.0f32; 3];
        layer.step(&mut st, &[1.0, 2.0, 3.0], &mut y).unwrap();
        let before = st.clone();
        for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(matches!(
                layer.step_event(&mut st, &[1.0, 2.0, 3.0], bad, &mut y),
                Err(Error::InvalidTimeStep { .. })
            ));
            assert_eq!(st[..10], before[..10]);
        }
        assert!(matches!(
            layer.step(&mut st, &[1.0, f32::NAN, 3.0], &mut y),
            Err(Error::NonFiniteInput { index: 1 })
        ));
        assert!(matches!(
            layer.step(&mut st, &[1.0, 2.0], &mut y),
            Err(Error::BufferLength { .. })
        ));
        let mut ys = [0.0f32; 6];
        assert!(matches!(
            run_event_sequence(&layer, &mut st, &[1.0; 6], &[1.0, -0.5], &mut ys),
            Err(Error::InvalidTimeStep { index: 1, .. })
        ));
        assert_eq!(st[..10], before[..10]);
        // Wrong-length state through the unchecked path does not panic.
        layer.step_prechecked(&mut st[..7], &[1.0, 2.0, 3.0], &mut y);
        layer.step_event_prechecked(&mut st[..3], &[1.0], 1.0, &mut y);
    }

    #[test]
    fn construction_errors() {
        let c = cfg(Discretization::Zoh, false);
        let mut pr = Params::new(3, 5, 3);
        let w = || vec![0.0f32; c.weights_len()];
        {
            let e = pr.entries();
            let src = SliceParams { entries: &e[..4] };
            assert_eq!(
                S5Ltv::from_lrnnx(c, &src, w()).unwrap_err(),
                Error::MissingTensor { name: "log_dt" }
            );
            let src = SliceParams { entries: &e };
            assert!(matches!(
                S5Ltv::from_lrnnx(c, &src, vec![0.0; 3]),
                Err(Error::BufferLength { .. })
            ));
            let bad = S5LtvConfig { d_state: 4, ..c };
            assert!(matches!(
                S5Ltv::from_lrnnx(bad, &src, vec![0.0; bad.weights_len()]),
                Err(Error::TensorShape { name: "A", .. })
            ));
            let bad = S5LtvConfig {
                discretization: Discretization::Mamba,
                ..c
            };
            assert!(matches!(
                S5Ltv::from_lrnnx(bad, &src, w()),
                Err(Error::UnsupportedDiscretization { .. })
            ));
            let bad = S5LtvConfig {
                step_rescale: 0.0,
                ..c
            };
            assert!(matches!(
                S5Ltv::from_lrnnx(bad, &src, w()),
                Err(Error::InvalidConfig { .. })
            ));
        }
        pr.b[3] = f32::NAN;
        let e = pr.entries();
        assert_eq!(
            S5Ltv::from_lrnnx(c, &SliceParams { entries: &e }, w()).unwrap_err(),
            Error::NonFiniteParameter {
                name: "B",
                index: 3
            }
        );
        // A huge log_dt overflows exp(ΔΛ) → rejected after discretization.
        pr.b[3] = 0.0;
        pr.log_dt[0] = 100.0;
        let e = pr.entries();
        assert!(matches!(
            S5Ltv::from_lrnnx(c, &SliceParams { entries: &e }, w()),
            Err(Error::NonFiniteParameter { .. })
        ));
        let mut ww = w();
        ww[0] = f32::INFINITY;
        assert!(matches!(
            S5Ltv::from_weights(c, ww),
            Err(Error::NonFiniteParameter { index: 0, .. })
        ));
        assert!(S5Ltv::from_weights(c, w()).is_ok());
    }
}
