//! Mamba / S6 (lrnnx `lrnnx.models.ltv.mamba.Mamba`, spec §9), with STREAM event stepping.
//!
//! Per step, with `H = d_model`, `E = d_inner`, `N = d_state`, `R = dt_rank`, `k = d_conv`:
//!
//! ```text
//! [x; z] = W_in u + b_in                                      (2E)
//! x_c = SiLU(b_conv + Σ_{w<k} W_conv[:, w] ⊙ x_{t−(k−1)+w})    (depthwise causal conv, E)
//! [δ_r; B; C] = W_x x_c                                       (R + N + N)
//! Δ = softplus(W_dt δ_r + b_dt)                               (E)
//! ΔA = Δ            (ordinary step)
//! ΔA = τ·softplus(b_dtA)   (STREAM event step with time step τ; B̄ still uses Δ)
//! h[d,n] ← Ā·h[d,n] + γ̄·B[n]·x_c[d]     (Ā from ΔA[d]·A[d,n], γ̄ from Δ[d], rule below)
//! y_in[d] = (Σ_n C[n]·h[d,n] + D[d]·x_c[d]) · SiLU(z[d])
//! y = W_out y_in + b_out                                      (H)
//! ```
//!
//! `A = −exp(A_log)` is computed once at construction. The rules (mamba, zoh, bilinear, dirac)
//! are those of the selective scan, see [`scan::selective`](crate::scan::selective); the
//! per-(channel, state) update is the scan's own function, so the step equals lrnnx's
//! full-sequence forward.
//!
//! **Deviation from lrnnx's `step` (spec §18.2):** lrnnx's `Mamba.step` uses `Ā = exp(ΔA·A)`
//! for every rule, while its forward (the selective scan) uses the bilinear ratio
//! `(1 + ΔA·A/2)/(1 − ΔA·A/2)` for `bilinear`. This layer uses the scan's transition in every
//! step, so its outputs equal lrnnx's forward output (`output.y`) for all rules; for `bilinear`
//! they differ from lrnnx's own step (`output.y_step`) by O((ΔA·A)³) per step.
//!
//! **Event steps** ([`EventLayer::step_event`]): `τ` must be positive and finite; zero, a
//! negative value, NaN or ±∞ is rejected with [`Error::InvalidTimeStep`](crate::Error) and the
//! state is left untouched. A very large `τ` saturates: `Ā → 0` for mamba/zoh/dirac (the state
//! is forgotten) and `Ā → −1` for bilinear (the Tustin limit); `ΔA` is capped at `f32::MAX`.
//!
//! lrnnx keys: `in_proj.weight` (2E,H) [+ `in_proj.bias` (2E,) if `bias`], `conv1d.weight`
//! (E,1,k) [+ `conv1d.bias` (E,) if `conv_bias`], `x_proj.weight` (R+2N,E), `dt_proj.weight`
//! (E,R), `dt_proj.bias` (E,), `dtA_proj.bias` (E,), `A_log` (E,N), `D` (E,), `out_proj.weight`
//! (H,E) [+ `out_proj.bias` (H,) if `bias`]. `dtA_proj.weight` is never used by lrnnx and is
//! not read (it may be present or absent).
//!
//! Weight layout (matrices transposed so that every product is an `axpy` over contiguous rows;
//! `P = R + 2N` rounded up to a multiple of 8):
//!
//! | segment   | length     | meaning                                          |
//! |-----------|------------|--------------------------------------------------|
//! | `in_t`    | H·2E       | `W_inᵀ` (row i = input i; x part then z part)     |
//! | `in_b`    | 2E         | `b_in` (zeros without `bias`)                    |
//! | `conv_t`  | k·E        | `W_convᵀ` (row w = tap w, oldest first)          |
//! | `conv_b`  | E          | `b_conv` (zeros without `conv_bias`)             |
//! | `xproj_t` | E·P        | `W_xᵀ` (row d = channel d), zero-padded to P cols |
//! | `dt_t`    | R·E        | `W_dtᵀ` (row r)                                  |
//! | `dt_b`    | E          | `b_dt`                                           |
//! | `a_t`     | N·E        | `A = −exp(A_log)`, transposed (row n)            |
//! | `d`       | E          | `D`                                              |
//! | `dta`     | E          | `softplus(b_dtA)` (STREAM)                       |
//! | `out_t`   | E·H        | `W_outᵀ` (row d)                                 |
//! | `out_b`   | H          | `b_out` (zeros without `bias`)                   |
//!
//! State layout: `conv` ((k−1)·E: the last k−1 pre-conv `x` vectors, oldest first), `h` (N·E:
//! `h[d,n]` at `n·E + d`), then a **scratch area** of `6E + P` values that carries nothing
//! between steps (`xz` 2E, `x_c` E, `x_dbl` P, `Δ` E, `ΔA` E, `y_in` E). A saved and
//! restored state therefore only needs its first `(k−1+N)·E` values, but the whole slice must
//! be passed to `step`.

use crate::activation::softplus_f64;
use crate::discretize::Discretization;
use crate::error::{check_finite_weights, check_len, check_nonzero, Error, Result};
use crate::fastmath;
use crate::layer::{EventLayer, Layer};
use crate::linalg::{copy_prefix, gemv_t_acc, take, take_mut, transpose_into};
use crate::params::{require, ParamSource};
use crate::scan::selective::{rule, rule_code, s6_update};

/// Sizes and options of a Mamba layer (lrnnx's constructor arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MambaConfig {
    /// H, input and output features (`d_model`).
    pub d_model: usize,
    /// N, states per inner channel (`d_state`, lrnnx default 16).
    pub d_state: usize,
    /// k, width of the causal depthwise convolution (`d_conv`, default 4).
    pub d_conv: usize,
    /// E, inner channels: `int(expand·d_model)` (default expand 2).
    pub d_inner: usize,
    /// R, rank of the Δ projection (`dt_rank`, "auto" = `ceil(d_model/16)`).
    pub dt_rank: usize,
    /// Whether `in_proj` and `out_proj` have biases (`bias`, default false).
    pub bias: bool,
    /// Whether the convolution has a bias (`conv_bias`, default true).
    pub conv_bias: bool,
    /// `Mamba` (default), `Zoh`, `Bilinear` or `Dirac`.
    pub discretization: Discretization,
}

impl MambaConfig {
    /// lrnnx's defaults for `d_model`: `d_state = 16`, `d_conv = 4`, `expand = 2`,
    /// `dt_rank = ceil(d_model/16)`, no projection biases, conv bias, `mamba` rule.
    pub const fn new(d_model: usize) -> Self {
        MambaConfig {
            d_model,
            d_state: 16,
            d_conv: 4,
            d_inner: d_model.saturating_mul(2),
            dt_rank: d_model.div_ceil(16),
            bias: false,
            conv_bias: true,
            discretization: Discretization::Mamba,
        }
    }

    /// Number of `f32` weights of the stepping layout (see the module docs).
    pub const fn weights_len(&self) -> usize {
        let (h, e, n, r, k) = self.sizes();
        let p = Self::padded(r, n);
        crate::error::sum_of_products(&[
            &[h, 2, e],
            &[2, e],
            &[k, e],
            &[e],
            &[e, p],
            &[r, e],
            &[e],
            &[n, e],
            &[e],
            &[e],
            &[e, h],
            &[h],
        ])
    }

    /// Number of `f32` state elements: conv window, SSM state, and the scratch area.
    pub const fn state_len(&self) -> usize {
        let (_, e, n, r, k) = self.sizes();
        let k1 = if k == 0 { 0 } else { k - 1 };
        crate::error::sum_of_products(&[&[k1, e], &[n, e], &[Self::scratch_len(e, n, r)]])
    }

    const fn scratch_len(e: usize, n: usize, r: usize) -> usize {
        crate::error::sum_of_products(&[&[6, e], &[Self::padded(r, n)]])
    }

    /// `P`: the `R + 2N` outputs of `x_proj` rounded up to a multiple of 8 (whole vector
    /// blocks).
    const fn padded(r: usize, n: usize) -> usize {
        r.saturating_add(n.saturating_mul(2))
            .div_ceil(8)
            .saturating_mul(8)
    }

    const fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.d_model,
            self.d_inner,
            self.d_state,
            self.dt_rank,
            self.d_conv,
        )
    }

    fn validate(&self) -> Result<u8> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_state", self.d_state)?;
        check_nonzero("d_conv", self.d_conv)?;
        check_nonzero("d_inner", self.d_inner)?;
        check_nonzero("dt_rank", self.dt_rank)?;
        crate::error::check_sizes(self.weights_len(), self.state_len())?;
        rule_code("Mamba", self.discretization)
    }
}

/// Borrowed segments of the weights.
struct Weights<'w> {
    in_t: &'w [f32],
    in_b: &'w [f32],
    conv_t: &'w [f32],
    conv_b: &'w [f32],
    xproj_t: &'w [f32],
    dt_t: &'w [f32],
    dt_b: &'w [f32],
    a_t: &'w [f32],
    d: &'w [f32],
    dta: &'w [f32],
    out_t: &'w [f32],
    out_b: &'w [f32],
}

impl<'w> Weights<'w> {
    fn split(c: &MambaConfig, mut w: &'w [f32]) -> Self {
        let (h, e, n, r, k) = c.sizes();
        let w = &mut w;
        Weights {
            in_t: take(w, h * 2 * e),
            in_b: take(w, 2 * e),
            conv_t: take(w, k * e),
            conv_b: take(w, e),
            xproj_t: take(w, e * MambaConfig::padded(r, n)),
            dt_t: take(w, r * e),
            dt_b: take(w, e),
            a_t: take(w, n * e),
            d: take(w, e),
            dta: take(w, e),
            out_t: take(w, e * h),
            out_b: take(w, h),
        }
    }
}

/// A Mamba layer ready to step; `W` holds the weights (owned or borrowed).
#[derive(Debug, Clone)]
pub struct Mamba<W> {
    config: MambaConfig,
    rule: u8,
    weights: W,
}

impl<W: AsRef<[f32]>> Mamba<W> {
    /// Builds the layer from lrnnx parameters into `weights` (`config.weights_len()` elements):
    /// transposes the matrices, computes `A = −exp(A_log)` and `softplus(dtA_proj.bias)` in
    /// `f64`, and rejects non-finite results.
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: MambaConfig,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        let rule = config.validate()?;
        let (h, e, n, r, k) = config.sizes();
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let in_w = require(params, "in_proj.weight", &[2 * e, h])?;
        let in_b = if config.bias {
            Some(require(params, "in_proj.bias", &[2 * e])?)
        } else {
            None
        };
        let conv_w = require(params, "conv1d.weight", &[e, 1, k])?;
        let conv_b = if config.conv_bias {
            Some(require(params, "conv1d.bias", &[e])?)
        } else {
            None
        };
        let x_w = require(params, "x_proj.weight", &[r + 2 * n, e])?;
        let dt_w = require(params, "dt_proj.weight", &[e, r])?;
        let dt_b = require(params, "dt_proj.bias", &[e])?;
        let dta_b = require(params, "dtA_proj.bias", &[e])?;
        let a_log = require(params, "A_log", &[e, n])?;
        let d = require(params, "D", &[e])?;
        let out_w = require(params, "out_proj.weight", &[h, e])?;
        let out_b = if config.bias {
            Some(require(params, "out_proj.bias", &[h])?)
        } else {
            None
        };

        let w = weights.as_mut();
        {
            let mut rest: &mut [f32] = w;
            let rest = &mut rest;
            transpose_into(take_mut(rest, h * 2 * e), in_w, 2 * e, h);
            fill_or_zero(take_mut(rest, 2 * e), in_b);
            transpose_into(take_mut(rest, k * e), conv_w, e, k);
            fill_or_zero(take_mut(rest, e), conv_b);
            let p = MambaConfig::padded(r, n);
            let xproj_t = take_mut(rest, e * p);
            for (ch, row) in xproj_t.chunks_exact_mut(p).enumerate() {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = if j < r + 2 * n { x_w[j * e + ch] } else { 0.0 };
                }
            }
            transpose_into(take_mut(rest, r * e), dt_w, e, r);
            take_mut(rest, e).copy_from_slice(dt_b);
            let a_t = take_mut(rest, n * e);
            for (ch, row) in a_log.chunks_exact(n).enumerate() {
                for (s, &v) in row.iter().enumerate() {
                    a_t[s * e + ch] = -libm::exp(v as f64) as f32;
                }
            }
            take_mut(rest, e).copy_from_slice(d);
            for (o, &b) in take_mut(rest, e).iter_mut().zip(dta_b) {
                *o = softplus_f64(b as f64) as f32;
            }
            transpose_into(take_mut(rest, e * h), out_w, h, e);
            fill_or_zero(take_mut(rest, h), out_b);
        }
        check_finite_weights("Mamba weights", w)?;
        Ok(Mamba {
            config,
            rule,
            weights,
        })
    }

    /// Views an already built weight buffer (zero-copy); checks length and finiteness.
    pub fn from_weights(config: MambaConfig, weights: W) -> Result<Self> {
        let rule = config.validate()?;
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        check_finite_weights("Mamba weights", weights.as_ref())?;
        // The layout stores A = −exp(A_log) ≤ 0 and softplus(dtA_proj.bias) ≥ 0; anything else
        // is not an exported Mamba layer (and could grow without bound on a long time step).
        let w = Weights::split(&config, weights.as_ref());
        if w.a_t.iter().any(|&a| a > 0.0) || w.dta.iter().any(|&d| d < 0.0) {
            return Err(Error::InvalidConfig {
                what: "Mamba weights",
                reason: "A must be ≤ 0 and the STREAM scale softplus(dtA_proj.bias) ≥ 0",
            });
        }
        Ok(Mamba {
            config,
            rule,
            weights,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MambaConfig {
        &self.config
    }

    /// The weights in the stepping layout (for export).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }

    /// One step; `tau` is the STREAM event time step (`None`: ordinary step, `ΔA = Δ`).
    #[inline]
    fn step_inner(&self, state: &mut [f32], u: &[f32], tau: Option<f32>, y: &mut [f32]) {
        match self.rule {
            rule::MAMBA => self.step_rule::<{ rule::MAMBA }>(state, u, tau, y),
            rule::ZOH => self.step_rule::<{ rule::ZOH }>(state, u, tau, y),
            rule::BILINEAR => self.step_rule::<{ rule::BILINEAR }>(state, u, tau, y),
            _ => self.step_rule::<{ rule::DIRAC }>(state, u, tau, y),
        }
    }

    /// The step equations of the module docs for rule `R`. Never panics (short buffers
    /// truncate the loops).
    #[inline(always)]
    fn step_rule<const R: u8>(
        &self,
        state: &mut [f32],
        u: &[f32],
        tau: Option<f32>,
        y: &mut [f32],
    ) {
        let c = &self.config;
        let (_, e, n, r, k) = c.sizes();
        let w = Weights::split(c, self.weights.as_ref());
        let mut rest: &mut [f32] = state;
        let rest = &mut rest;
        let conv = take_mut(rest, k.saturating_sub(1) * e);
        let h = take_mut(rest, n * e);
        let xz = take_mut(rest, 2 * e);
        let xc = take_mut(rest, e);
        let xdbl = take_mut(rest, MambaConfig::padded(r, n));
        let dt = take_mut(rest, e);
        let dta = take_mut(rest, e);
        let yin = take_mut(rest, e);

        // [x; z] = W_in u + b_in
        copy_prefix(xz, w.in_b);
        gemv_t_acc(xz, w.in_t, u);
        let (x, z) = xz.split_at(e.min(xz.len()));

        // Causal depthwise conv over (window, x), then the window shifts by one.
        copy_prefix(xc, w.conv_b);
        let mut taps = w.conv_t.chunks_exact(e);
        for past in conv.chunks_exact(e) {
            if let Some(tap) = taps.next() {
                fma_acc(xc, tap, past);
            }
        }
        if let Some(tap) = taps.next() {
            fma_acc(xc, tap, x);
        }
        if conv.len() >= e {
            conv.copy_within(e.., 0);
            let last = conv.len() - e;
            copy_prefix(&mut conv[last..], x);
        }
        for v in xc.iter_mut() {
            *v = fastmath::silu(*v);
        }

        // [δ_r; B; C] = W_x x_c;  Δ = softplus(W_dt δ_r + b_dt);  ΔA.
        xdbl.fill(0.0);
        gemv_t_acc(xdbl, w.xproj_t, xc);
        let (dt_raw, bc) = xdbl.split_at(r.min(xdbl.len()));
        let (bn, cn) = bc.split_at(n.min(bc.len()));
        copy_prefix(dt, w.dt_b);
        gemv_t_acc(dt, w.dt_t, dt_raw);
        for v in dt.iter_mut() {
            *v = fastmath::softplus(*v);
        }
        match tau {
            None => copy_prefix(dta, dt),
            Some(t) => {
                for (o, &s) in dta.iter_mut().zip(w.dta) {
                    *o = (t * s).min(f32::MAX);
                }
            }
        }

        // The selective SSM, state by state (rows of E channels), and the C readout.
        for (v, (&dd, &xv)) in yin.iter_mut().zip(w.d.iter().zip(xc.iter())) {
            *v = dd * xv;
        }
        for ((h_row, a_row), (&b, &cc)) in h
            .chunks_exact_mut(e)
            .zip(w.a_t.chunks_exact(e))
            .zip(bn.iter().zip(cn))
        {
            for ((hv, yv), ((&av, &xv), (&dv, &dav))) in h_row
                .iter_mut()
                .zip(yin.iter_mut())
                .zip(a_row.iter().zip(xc.iter()).zip(dt.iter().zip(dta.iter())))
            {
                // A ≤ 0 (checked at construction) and ΔA ≥ 0: the decaying form applies.
                *hv = s6_update::<R, true>(*hv, av, dv, dav, b * xv);
                *yv += cc * *hv;
            }
        }
        for (v, &zv) in yin.iter_mut().zip(z) {
            *v *= fastmath::silu(zv);
        }

        // y = W_out y_in + b_out
        copy_prefix(y, w.out_b);
        gemv_t_acc(y, w.out_t, yin);
    }
}

/// `out[i] += a[i]·b[i]`.
#[inline(always)]
fn fma_acc(out: &mut [f32], a: &[f32], b: &[f32]) {
    for (o, (&p, &q)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o += p * q;
    }
}

/// Copies `src` into `dst` (zeros when `src` is `None`).
fn fill_or_zero(dst: &mut [f32], src: Option<&[f32]>) {
    match src {
        Some(s) => copy_prefix(dst, s),
        None => dst.fill(0.0),
    }
}

impl<W: AsRef<[f32]>> Layer for Mamba<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.d_model
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// The ordinary step (`ΔA = Δ`), module docs.
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        self.step_inner(state, x, None, y);
    }
}

impl<W: AsRef<[f32]>> EventLayer for Mamba<W> {
    /// The STREAM step: `ΔA = dt·softplus(dtA_proj.bias)`, `B̄` from the ordinary `Δ`.
    #[inline]
    fn step_event_prechecked(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]) {
        self.step_inner(state, x, Some(dt), y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::layer::{run_event_sequence, run_sequence};
    use crate::params::{SliceParams, TensorView};

    const H: usize = 5;
    const E: usize = 7;
    const N: usize = 3;
    const R: usize = 2;
    const K: usize = 3;
    const L: usize = 12;
    const RULES: [Discretization; 4] = [
        Discretization::Mamba,
        Discretization::Zoh,
        Discretization::Bilinear,
        Discretization::Dirac,
    ];

    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
        }
        fn fill<const M: usize>(&mut self, lo: f64, hi: f64) -> [f32; M] {
            core::array::from_fn(|_| self.uniform(lo, hi) as f32)
        }
    }

    /// lrnnx parameters in lrnnx's layouts.
    struct Params {
        in_w: [f32; 2 * E * H],
        in_b: [f32; 2 * E],
        conv_w: [f32; E * K],
        conv_b: [f32; E],
        x_w: [f32; (R + 2 * N) * E],
        dt_w: [f32; E * R],
        dt_b: [f32; E],
        dta_w: [f32; E * R],
        dta_b: [f32; E],
        a_log: [f32; E * N],
        d: [f32; E],
        out_w: [f32; H * E],
        out_b: [f32; H],
    }

    impl Params {
        fn random(seed: u64) -> Self {
            let mut g = Rng(seed);
            Params {
                in_w: g.fill(-0.6, 0.6),
                in_b: g.fill(-0.3, 0.3),
                conv_w: g.fill(-0.7, 0.7),
                conv_b: g.fill(-0.3, 0.3),
                x_w: g.fill(-0.5, 0.5),
                dt_w: g.fill(-0.8, 0.8),
                dt_b: g.fill(-4.0, -1.0),
                dta_w: g.fill(-1.0, 1.0),
                dta_b: g.fill(-1.0, 1.0),
                a_log: g.fill(-0.5, 2.5),
                d: g.fill(0.5, 1.5),
                out_w: g.fill(-0.5, 0.5),
                out_b: g.fill(-0.2, 0.2),
            }
        }

        /// The state-dict entries; `skip` leaves one key out; `with_bias` adds the projection
        /// biases; `with_dta_w` adds the unused `dtA_proj.weight`.
        fn entries(
            &self,
            skip: &str,
            with_bias: bool,
            with_dta_w: bool,
        ) -> [(&str, TensorView<'_>); 13] {
            let t = |data: &'static [usize]| data;
            let all: [(&str, &[f32], &'static [usize], bool); 13] = [
                ("in_proj.weight", &self.in_w, t(&[2 * E, H]), true),
                ("in_proj.bias", &self.in_b, t(&[2 * E]), with_bias),
                ("conv1d.weight", &self.conv_w, t(&[E, 1, K]), true),
                ("conv1d.bias", &self.conv_b, t(&[E]), true),
                ("x_proj.weight", &self.x_w, t(&[R + 2 * N, E]), true),
                ("dt_proj.weight", &self.dt_w, t(&[E, R]), true),
                ("dt_proj.bias", &self.dt_b, t(&[E]), true),
                ("dtA_proj.weight", &self.dta_w, t(&[E, R]), with_dta_w),
                ("dtA_proj.bias", &self.dta_b, t(&[E]), true),
                ("A_log", &self.a_log, t(&[E, N]), true),
                ("D", &self.d, t(&[E]), true),
                ("out_proj.weight", &self.out_w, t(&[H, E]), true),
                ("out_proj.bias", &self.out_b, t(&[H]), with_bias),
            ];
            all.map(|(k, data, shape, present)| {
                let name = if present && k != skip { k } else { "-absent-" };
                (name, TensorView { data, shape })
            })
        }
    }

    const fn config(disc: Discretization, bias: bool, conv_bias: bool) -> MambaConfig {
        MambaConfig {
            d_model: H,
            d_state: N,
            d_conv: K,
            d_inner: E,
            dt_rank: R,
            bias,
            conv_bias,
            discretization: disc,
        }
    }

    const WLEN: usize = config(Discretization::Mamba, false, true).weights_len();
    const SLEN: usize = config(Discretization::Mamba, false, true).state_len();

    fn sp(v: f64) -> f64 {
        if v > 20.0 {
            v
        } else {
            (1.0 + v.exp()).ln()
        }
    }

    fn silu(v: f64) -> f64 {
        v / (1.0 + (-v).exp())
    }

    /// Independent reference: lrnnx's full-sequence forward (spec §9.3) in f64 with the
    /// parameters in lrnnx's row-major layouts, the convolution as a direct causal sum over the
    /// whole sequence, and the scan written out per (channel, state).
    fn reference(
        p: &Params,
        cfg: &MambaConfig,
        xs: &[f32; L * H],
        taus: Option<&[f32; L]>,
    ) -> [f64; L * H] {
        let mut xpre = [[0.0f64; E]; L];
        let mut z = [[0.0f64; E]; L];
        for t in 0..L {
            for j in 0..2 * E {
                let mut v = if cfg.bias { p.in_b[j] as f64 } else { 0.0 };
                for i in 0..H {
                    v += p.in_w[j * H + i] as f64 * xs[t * H + i] as f64;
                }
                if j < E {
                    xpre[t][j] = v;
                } else {
                    z[t][j - E] = v;
                }
            }
        }
        let mut h = [[0.0f64; N]; E];
        let mut out = [0.0f64; L * H];
        for t in 0..L {
            let mut xc = [0.0f64; E];
            for d in 0..E {
                let mut v = if cfg.conv_bias {
                    p.conv_b[d] as f64
                } else {
                    0.0
                };
                for w in 0..K {
                    let src = t as isize - (K as isize - 1) + w as isize;
                    if src >= 0 {
                        v += p.conv_w[d * K + w] as f64 * xpre[src as usize][d];
                    }
                }
                xc[d] = silu(v);
            }
            let mut xdbl = [0.0f64; R + 2 * N];
            for (j, o) in xdbl.iter_mut().enumerate() {
                *o = (0..E).map(|d| p.x_w[j * E + d] as f64 * xc[d]).sum();
            }
            let mut yin = [0.0f64; E];
            for d in 0..E {
                let raw: f64 = (0..R).map(|r| p.dt_w[d * R + r] as f64 * xdbl[r]).sum();
                let delta = sp(raw + p.dt_b[d] as f64);
                let delta_a = match taus {
                    Some(tau) => tau[t] as f64 * sp(p.dta_b[d] as f64),
                    None => delta,
                };
                let mut acc = 0.0;
                for n in 0..N {
                    let a = -(p.a_log[d * N + n] as f64).exp();
                    let (abar, gamma) = match cfg.discretization {
                        Discretization::Mamba => ((delta_a * a).exp(), delta),
                        Discretization::Zoh => ((delta_a * a).exp(), ((delta * a).exp() - 1.0) / a),
                        Discretization::Bilinear => (
                            (1.0 + delta_a * a / 2.0) / (1.0 - delta_a * a / 2.0),
                            delta / (1.0 - delta * a / 2.0),
                        ),
                        _ => ((delta_a * a).exp(), 1.0),
                    };
                    h[d][n] = abar * h[d][n] + gamma * xdbl[R + n] * xc[d];
                    acc += xdbl[R + N + n] * h[d][n];
                }
                yin[d] = (acc + p.d[d] as f64 * xc[d]) * silu(z[t][d]);
            }
            for o in 0..H {
                let bias = if cfg.bias { p.out_b[o] as f64 } else { 0.0 };
                let row = &p.out_w[o * E..(o + 1) * E];
                out[t * H + o] = bias
                    + row
                        .iter()
                        .zip(&yin)
                        .map(|(&w, &v)| w as f64 * v)
                        .sum::<f64>();
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale + 1e-7,
                "y[{i}] = {g}, reference {w} (scale {scale})"
            );
        }
    }

    #[test]
    fn steps_match_f64_forward_for_every_rule_bias_and_event_mode() {
        let xs: [f32; L * H] = Rng(5).fill(-1.5, 1.5);
        let taus: [f32; L] = Rng(6).fill(0.2, 2.0);
        for (i, &disc) in RULES.iter().enumerate() {
            for variant in 0..3 {
                let (bias, conv_bias) = [(false, true), (true, false), (true, true)][variant];
                let p = Params::random(100 + (i * 3 + variant) as u64);
                let cfg = config(disc, bias, conv_bias);
                let entries = p.entries("", bias, variant == 0);
                let src = SliceParams { entries: &entries };
                let layer = Mamba::from_lrnnx(cfg, &src, [0.0f32; WLEN]).unwrap();
                for event in [false, true] {
                    let mut state = [0.0f32; SLEN];
                    let mut ys = [0.0f32; L * H];
                    if event {
                        run_event_sequence(&layer, &mut state, &xs, &taus, &mut ys).unwrap();
                    } else {
                        run_sequence(&layer, &mut state, &xs, &mut ys).unwrap();
                    }
                    let want = reference(&p, &cfg, &xs, event.then_some(&taus));
                    assert_close(&ys, &want);
                }
            }
        }
    }

    #[test]
    fn defaults_and_from_weights() {
        let c = MambaConfig::new(64);
        assert_eq!((c.d_inner, c.dt_rank, c.d_state, c.d_conv), (128, 4, 16, 4));
        assert_eq!(MambaConfig::new(17).dt_rank, 2);
        assert_eq!(c.state_len(), 3 * 128 + 16 * 128 + 6 * 128 + 40);

        let p = Params::random(1);
        let entries = p.entries("", false, false);
        let src = SliceParams { entries: &entries };
        let cfg = config(Discretization::Zoh, false, true);
        let built = Mamba::from_lrnnx(cfg, &src, [0.0f32; WLEN]).unwrap();
        let view = Mamba::from_weights(cfg, built.weights()).unwrap();
        assert_eq!(view.config(), &cfg);
        assert_eq!(
            (view.d_input(), view.d_output(), view.state_len()),
            (H, H, SLEN)
        );
        // The stored A is −exp(A_log), transposed.
        let a_off = H * 2 * E + 2 * E + K * E + E + E * 8 + R * E + E; // P = 8
        let a01 = built.weights()[a_off + E]; // n = 1, d = 0
        assert!((a01 as f64 + (p.a_log[1] as f64).exp()).abs() < 1e-6);

        let mut bad = [0.0f32; WLEN];
        bad.copy_from_slice(built.weights());
        bad[3] = f32::NAN;
        assert_eq!(
            Mamba::from_weights(cfg, &bad[..]).unwrap_err(),
            Error::NonFiniteParameter {
                name: "Mamba weights",
                index: 3
            }
        );
        assert!(matches!(
            Mamba::from_weights(cfg, &bad[1..]).unwrap_err(),
            Error::BufferLength {
                what: "weights",
                ..
            }
        ));
        // A positive eigenvalue is not an exported Mamba layout.
        bad.copy_from_slice(built.weights());
        bad[a_off + E] = 0.5;
        assert!(matches!(
            Mamba::from_weights(cfg, &bad[..]).unwrap_err(),
            Error::InvalidConfig {
                what: "Mamba weights",
                ..
            }
        ));
    }

    #[test]
    fn construction_errors() {
        let p = Params::random(2);
        let cfg = config(Discretization::Mamba, false, true);
        let build = |entries: &[(&str, TensorView<'_>)], cfg: MambaConfig| {
            Mamba::from_lrnnx(cfg, &SliceParams { entries }, [0.0f32; WLEN]).map(|_| ())
        };
        for key in [
            "in_proj.weight",
            "conv1d.weight",
            "dt_proj.bias",
            "dtA_proj.bias",
            "A_log",
            "D",
        ] {
            assert_eq!(
                build(&p.entries(key, false, true), cfg).unwrap_err(),
                Error::MissingTensor { name: key }
            );
        }
        // Projection biases are required when `bias` is set, the conv bias is optional.
        assert_eq!(
            build(
                &p.entries("", false, true),
                config(Discretization::Mamba, true, true)
            )
            .unwrap_err(),
            Error::MissingTensor {
                name: "in_proj.bias"
            }
        );
        build(
            &p.entries("conv1d.bias", false, false),
            config(Discretization::Mamba, false, false),
        )
        .unwrap();
        // Wrong shapes: a config that disagrees with the tensors.
        let wider = MambaConfig {
            d_state: N + 1,
            ..cfg
        };
        let mut buf = [0.0f32; 2 * WLEN];
        let e = Mamba::from_lrnnx(
            wider,
            &SliceParams {
                entries: &p.entries("", false, true),
            },
            &mut buf[..wider.weights_len()],
        );
        assert!(matches!(
            e.unwrap_err(),
            Error::TensorShape {
                name: "x_proj.weight",
                ..
            }
        ));
        // NaN parameter, and a derived value that overflows (A = −exp(100) in f32).
        let mut q = Params::random(2);
        q.d[4] = f32::NAN;
        assert_eq!(
            build(&q.entries("", false, true), cfg).unwrap_err(),
            Error::NonFiniteParameter {
                name: "D",
                index: 4
            }
        );
        let mut q = Params::random(2);
        q.a_log[0] = 100.0;
        assert!(matches!(
            build(&q.entries("", false, true), cfg).unwrap_err(),
            Error::NonFiniteParameter {
                name: "Mamba weights",
                ..
            }
        ));
        // Bad configurations and rules.
        for bad in [
            MambaConfig { d_conv: 0, ..cfg },
            MambaConfig { dt_rank: 0, ..cfg },
            MambaConfig { d_inner: 0, ..cfg },
        ] {
            assert!(matches!(
                Mamba::from_weights(bad, [0.0f32; WLEN]).unwrap_err(),
                Error::InvalidConfig { .. }
            ));
        }
        for disc in [
            Discretization::Async,
            Discretization::None,
            Discretization::LrnnxInvertedBilinear,
        ] {
            assert_eq!(
                build(&p.entries("", false, true), config(disc, false, true)).unwrap_err(),
                Error::UnsupportedDiscretization {
                    layer: "Mamba",
                    discretization: disc
                }
            );
        }
        assert!(matches!(
            Mamba::from_lrnnx(
                cfg,
                &SliceParams {
                    entries: &p.entries("", false, true)
                },
                [0.0f32; 3]
            )
            .unwrap_err(),
            Error::BufferLength {
                what: "weights",
                ..
            }
        ));
    }

    #[test]
    fn bad_steps_leave_the_state_untouched() {
        let p = Params::random(3);
        let entries = p.entries("", false, true);
        for disc in RULES {
            let layer = Mamba::from_lrnnx(
                config(disc, false, true),
                &SliceParams { entries: &entries },
                [0.0f32; WLEN],
            )
            .unwrap();
            let mut state = [0.0f32; SLEN];
            let mut y = [0.0f32; H];
            let x = [0.3f32, -0.2, 0.9, 0.1, -0.5];
            layer.step(&mut state, &x, &mut y).unwrap();
            layer.step_event(&mut state, &x, 0.7, &mut y).unwrap();
            let saved = state;
            for dt in [
                0.0f32,
                -1.0,
                -0.0,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ] {
                let e = layer.step_event(&mut state, &x, dt, &mut y).unwrap_err();
                assert!(
                    matches!(e, Error::InvalidTimeStep { index: 0, .. }),
                    "{e:?}"
                );
                assert_eq!(state.map(f32::to_bits), saved.map(f32::to_bits));
            }
            let bad_x = [0.3f32, f32::NAN, 0.9, 0.1, -0.5];
            assert_eq!(
                layer.step(&mut state, &bad_x, &mut y).unwrap_err(),
                Error::NonFiniteInput { index: 1 }
            );
            assert!(layer.step(&mut state, &x[1..], &mut y).is_err());
            assert!(layer.step(&mut state, &x, &mut y[1..]).is_err());
            assert!(layer.step(&mut state[1..], &x, &mut y).is_err());
            assert_eq!(state.map(f32::to_bits), saved.map(f32::to_bits));
            // step_prechecked with wrong lengths must not panic.
            layer.step_prechecked(&mut state[..5], &x[..2], &mut y);
            layer.step_prechecked(&mut state, &x, &mut y[..1]);
            // Huge event gaps saturate instead of producing NaN.
            let mut s2 = saved;
            for _ in 0..3 {
                layer.step_event(&mut s2, &x, 3e38, &mut y).unwrap();
                assert!(y.iter().chain(s2.iter()).all(|v| v.is_finite()), "{disc:?}");
            }
        }
    }

    /// The state carries everything: stepping from a copy of a state continues identically.
    #[test]
    fn state_copy_resumes_the_sequence() {
        let p = Params::random(4);
        let entries = p.entries("", false, true);
        let layer = Mamba::from_lrnnx(
            config(Discretization::Zoh, false, true),
            &SliceParams { entries: &entries },
            [0.0f32; WLEN],
        )
        .unwrap();
        let xs: [f32; L * H] = Rng(9).fill(-1.0, 1.0);
        let mut full = [0.0f32; L * H];
        let mut s = [0.0f32; SLEN];
        run_sequence(&layer, &mut s, &xs, &mut full).unwrap();
        let mut s1 = [0.0f32; SLEN];
        let mut part = [0.0f32; L * H];
        run_sequence(&layer, &mut s1, &xs[..5 * H], &mut part[..5 * H]).unwrap();
        let mut s2 = [f32::NAN; SLEN]; // scratch may hold garbage
        let keep = (K - 1) * E + N * E;
        s2[..keep].copy_from_slice(&s1[..keep]);
        run_sequence(&layer, &mut s2, &xs[5 * H..], &mut part[5 * H..]).unwrap();
        assert_eq!(full, part);
    }
}
