//! RG-LRU, the Real-Gated Linear Recurrent Unit of Griffin (lrnnx `lrnnx.models.ltv.rglru.RGLRU`,
//! spec §11).
//!
//! ```text
//! g_t = GELU(W_g h_t + b_g)                       (exact erf GELU; b_g only with `bias`)
//! u_t = W_in h_t + b_in                           (b_in only with `bias`)
//! x_t = b_conv + Σ_{w<k} W_conv[:, w] ⊙ u_{t−(k−1)+w}     (depthwise causal conv, no activation)
//! r_t = σ(W_r x_t + b_r),   i_t = σ(W_i x_t + b_i)
//! a   = σ(a_log),   Ā_t = a^{c·r_t} = exp(r_t · c·ln a)
//! s_t = Ā_t ⊙ s_{t−1} + sqrt(1 − Ā_t²) ⊙ (i_t ⊙ x_t)      (s_{−1} = 0, one state per channel)
//! y_t = W_out (g_t ⊙ s_t) + b_out                 (b_out only with `bias`)
//! ```
//!
//! **Decay parameterization (spec §18.4).** lrnnx stores `a_log = ln(U[0.9, 0.999])` at
//! initialization but uses `a = σ(a_log)` (≈ 0.47–0.50 at init) instead of `exp(a_log)`. This
//! layer keeps lrnnx's `σ(a_log)` so that lrnnx checkpoints give lrnnx's numbers; a corrected
//! initialization (Griffin's `a^c ∈ [0.9, 0.999]`) belongs to the training side, which can
//! simply store `a_log = logit(a)`.
//!
//! lrnnx keys: `gate_proj.weight` (D,H) (+ `.bias` (D)), `in_proj.weight` (D,H) (+ `.bias`),
//! `conv1d.weight` (D,1,k) (+ `conv1d.bias` (D) with `conv_bias`), `recurrent_gate_proj.weight`
//! (D,D) + `.bias` (D), `input_gate_proj.weight` (D,D) + `.bias`, `a_log` (D,1),
//! `out_proj.weight` (H,D) (+ `.bias` (H)); D = `d_inner` = `int(expand·d_model)`.
//!
//! Weight layout (`f32`, matrices transposed: one row per input element; absent biases are
//! stored as zeros):
//!
//! | segment  | length | meaning                                  |
//! |----------|--------|------------------------------------------|
//! | `gate_t` | H·D    | `W_gᵀ`                                   |
//! | `gate_b` | D      | `b_g`                                    |
//! | `in_t`   | H·D    | `W_inᵀ`                                  |
//! | `in_b`   | D      | `b_in`                                   |
//! | `conv_w` | k·D    | row w = tap w: `W_conv[d, 0, w]`         |
//! | `conv_b` | D      | `b_conv`                                 |
//! | `rg_t`   | D·D    | `W_rᵀ`                                   |
//! | `rg_b`   | D      | `b_r`                                    |
//! | `ig_t`   | D·D    | `W_iᵀ`                                   |
//! | `ig_b`   | D      | `b_i`                                    |
//! | `c_ln_a` | D      | `c · ln σ(a_log)` (computed in `f64`)    |
//! | `out_t`  | D·H    | `W_outᵀ`                                 |
//! | `out_b`  | H      | `b_out`                                  |
//!
//! State (`(k+5)·D`): the conv window `u_{t−k+1} … u_{t−1}` ((k−1)·D, oldest first, the
//! pre-convolution signal), the recurrent state `s` (D), then a working area that carries
//! nothing between steps: `g`, `u`, `x`, `r`, `i` (D each).

use crate::activation::{gelu, softplus_f64};
use crate::error::{check_finite_weights, check_len, check_nonzero, Error, Result};
use crate::fastmath;
use crate::layer::Layer;
use crate::linalg::{copy_prefix, gemv_t_acc, take, take_mut, transpose_into};
use crate::params::{require, ParamSource};
use crate::scan::rglru::advance;

/// Sizes and options of an RG-LRU layer (lrnnx's constructor arguments; `a_init_range` only
/// shapes the initialization).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RgLruConfig {
    /// H, input and output features.
    pub d_model: usize,
    /// D = `int(expand · d_model)`, inner channels.
    pub d_inner: usize,
    /// k, taps of the causal depthwise convolution (lrnnx `d_conv`, default 4).
    pub d_conv: usize,
    /// The decay exponent scale `c` (default 8).
    pub c: f32,
    /// Whether `gate_proj`, `in_proj` and `out_proj` have biases (lrnnx `bias`, default false).
    pub bias: bool,
    /// Whether the convolution has a bias (lrnnx `conv_bias`, default true).
    pub conv_bias: bool,
}

impl RgLruConfig {
    /// Number of `f32` weights of the stepping layout.
    pub const fn weights_len(&self) -> usize {
        let (h, d, k) = (self.d_model, self.d_inner, self.d_conv);
        crate::error::sum_of_products(&[&[3, h, d], &[2, d, d], &[k, d], &[6, d], &[h]])
    }

    /// Number of `f32` state elements (including the working area).
    pub const fn state_len(&self) -> usize {
        crate::error::sum_of_products(&[&[self.d_conv, self.d_inner], &[5, self.d_inner]])
    }

    fn validate(&self) -> Result<()> {
        check_nonzero("d_model", self.d_model)?;
        check_nonzero("d_inner", self.d_inner)?;
        check_nonzero("d_conv", self.d_conv)?;
        crate::error::check_sizes(self.weights_len(), self.state_len())?;
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(Error::InvalidConfig {
                what: "c",
                reason: "must be a positive finite number",
            });
        }
        Ok(())
    }
}

struct View<'w> {
    gate_t: &'w [f32],
    gate_b: &'w [f32],
    in_t: &'w [f32],
    in_b: &'w [f32],
    conv_w: &'w [f32],
    conv_b: &'w [f32],
    rg_t: &'w [f32],
    rg_b: &'w [f32],
    ig_t: &'w [f32],
    ig_b: &'w [f32],
    c_ln_a: &'w [f32],
    out_t: &'w [f32],
    out_b: &'w [f32],
}

/// An RG-LRU layer ready to step; `W` holds the weights.
#[derive(Debug, Clone)]
pub struct RgLru<W> {
    config: RgLruConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> RgLru<W> {
    /// Builds the layer from lrnnx parameters into `weights` (`config.weights_len()` elements).
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: RgLruConfig,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        let (h, d, k) = (config.d_model, config.d_inner, config.d_conv);
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let gate_w = require(params, "gate_proj.weight", &[d, h])?;
        let in_w = require(params, "in_proj.weight", &[d, h])?;
        let conv_w = require(params, "conv1d.weight", &[d, 1, k])?;
        let rg_w = require(params, "recurrent_gate_proj.weight", &[d, d])?;
        let rg_b = require(params, "recurrent_gate_proj.bias", &[d])?;
        let ig_w = require(params, "input_gate_proj.weight", &[d, d])?;
        let ig_b = require(params, "input_gate_proj.bias", &[d])?;
        let a_log = require(params, "a_log", &[d, 1])?;
        let out_w = require(params, "out_proj.weight", &[h, d])?;
        let (gate_b, in_b, out_b) = if config.bias {
            (
                Some(require(params, "gate_proj.bias", &[d])?),
                Some(require(params, "in_proj.bias", &[d])?),
                Some(require(params, "out_proj.bias", &[h])?),
            )
        } else {
            (None, None, None)
        };
        let conv_b = if config.conv_bias {
            Some(require(params, "conv1d.bias", &[d])?)
        } else {
            None
        };

        let w = weights.as_mut();
        w.fill(0.0);
        let mut rest: &mut [f32] = w;
        let put = |dst: &mut [f32], src: Option<&[f32]>| {
            if let Some(s) = src {
                dst.copy_from_slice(s);
            }
        };
        transpose_into(take_mut(&mut rest, h * d), gate_w, d, h);
        put(take_mut(&mut rest, d), gate_b);
        transpose_into(take_mut(&mut rest, h * d), in_w, d, h);
        put(take_mut(&mut rest, d), in_b);
        transpose_into(take_mut(&mut rest, k * d), conv_w, d, k);
        put(take_mut(&mut rest, d), conv_b);
        transpose_into(take_mut(&mut rest, d * d), rg_w, d, d);
        put(take_mut(&mut rest, d), Some(rg_b));
        transpose_into(take_mut(&mut rest, d * d), ig_w, d, d);
        put(take_mut(&mut rest, d), Some(ig_b));
        for (dst, &al) in take_mut(&mut rest, d).iter_mut().zip(a_log) {
            // ln σ(a) = −softplus(−a)
            *dst = (config.c as f64 * -softplus_f64(-(al as f64))) as f32;
        }
        transpose_into(take_mut(&mut rest, d * h), out_w, h, d);
        put(take_mut(&mut rest, h), out_b);
        check_finite_weights("RG-LRU weights", weights.as_ref())?;
        Ok(RgLru { config, weights })
    }

    fn view(&self) -> View<'_> {
        let (h, d, k) = (self.config.d_model, self.config.d_inner, self.config.d_conv);
        let mut w = self.weights.as_ref();
        View {
            gate_t: take(&mut w, h * d),
            gate_b: take(&mut w, d),
            in_t: take(&mut w, h * d),
            in_b: take(&mut w, d),
            conv_w: take(&mut w, k * d),
            conv_b: take(&mut w, d),
            rg_t: take(&mut w, d * d),
            rg_b: take(&mut w, d),
            ig_t: take(&mut w, d * d),
            ig_b: take(&mut w, d),
            c_ln_a: take(&mut w, d),
            out_t: take(&mut w, d * h),
            out_b: take(&mut w, h),
        }
    }
}

crate::layer::weight_view_methods!(RgLru, RgLruConfig, "RG-LRU weights", check_decay);

/// `c_ln_a = c·ln σ(a) ≤ 0` (so `Ā ≤ 1` and `sqrt(1 − Ā²)` is real): a positive value is not an
/// exported RG-LRU layer, and would make every output NaN from its first step.
fn check_decay<W: AsRef<[f32]>>(layer: &RgLru<W>) -> crate::Result<()> {
    if layer.view().c_ln_a.iter().any(|&c| c > 0.0) {
        return Err(crate::Error::InvalidConfig {
            what: "RG-LRU weights",
            reason: "c·ln σ(a) must be ≤ 0 (a decay Ā = exp(c·ln σ(a)·r) ≤ 1)",
        });
    }
    Ok(())
}

impl<W: AsRef<[f32]>> Layer for RgLru<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.d_model
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// One RG-LRU step (module doc): gate, projection, causal conv over the window, gates,
    /// `s ← Ā⊙s + sqrt(1 − Ā²)⊙(i⊙x)` (the shared [`advance`]), `y = W_out(g⊙s) + b_out`.
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let v = self.view();
        let (d, k) = (self.config.d_inner, self.config.d_conv);
        let mut st: &mut [f32] = state;
        let win = take_mut(&mut st, (k - 1) * d);
        let s = take_mut(&mut st, d);
        let g = take_mut(&mut st, d);
        let u = take_mut(&mut st, d);
        let xc = take_mut(&mut st, d);
        let r = take_mut(&mut st, d);
        let ig = take_mut(&mut st, d);

        // g = GELU(W_g h + b_g)
        copy_prefix(g, v.gate_b);
        gemv_t_acc(g, v.gate_t, x);
        for gi in g.iter_mut() {
            *gi = gelu(*gi);
        }
        // u = W_in h + b_in
        copy_prefix(u, v.in_b);
        gemv_t_acc(u, v.in_t, x);
        // x = b_conv + Σ_w W[w] ⊙ (window ++ u)[w]
        copy_prefix(xc, v.conv_b);
        for (taps, past) in v.conv_w.chunks_exact(d).zip(win.chunks_exact(d)) {
            for (o, (&wt, &p)) in xc.iter_mut().zip(taps.iter().zip(past)) {
                *o += wt * p;
            }
        }
        if let Some(last_tap) = v.conv_w.chunks_exact(d).nth(k - 1) {
            for (o, (&wt, &p)) in xc.iter_mut().zip(last_tap.iter().zip(u.iter())) {
                *o += wt * p;
            }
        }
        // Slide the window: drop the oldest sample, append u.
        if !win.is_empty() {
            let n = win.len();
            win.copy_within(d.min(n).., 0);
            let tail = n.saturating_sub(d);
            for (dst, &src) in win[tail..].iter_mut().zip(u.iter()) {
                *dst = src;
            }
        }
        // Gates.
        copy_prefix(r, v.rg_b);
        gemv_t_acc(r, v.rg_t, xc);
        copy_prefix(ig, v.ig_b);
        gemv_t_acc(ig, v.ig_t, xc);
        // r ← log Ā = σ(r)·c·ln a,  i ← σ(i)⊙x  (a separate pass, so that it vectorizes).
        for ((ri, ii), (&xi, &cl)) in r.iter_mut().zip(ig.iter_mut()).zip(xc.iter().zip(v.c_ln_a)) {
            *ri = fastmath::sigmoid(*ri) * cl;
            *ii = fastmath::sigmoid(*ii) * xi;
        }
        // s ← Ā s + sqrt(1 − Ā²)(i x);  then g ← g ⊙ s.
        for ((si, gi), (&la, &ux)) in s.iter_mut().zip(g.iter_mut()).zip(r.iter().zip(ig.iter())) {
            *si = advance(*si, la, ux);
            *gi *= *si;
        }
        // y = W_out (g ⊙ s) + b_out
        copy_prefix(y, v.out_b);
        gemv_t_acc(y, v.out_t, g);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::error::Error;
    use crate::layer::run_sequence;
    use crate::params::{SliceParams, TensorView};

    fn det(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    struct P {
        names: Vec<&'static str>,
        data: Vec<Vec<f32>>,
        shapes: Vec<Vec<usize>>,
    }

    impl P {
        fn new(cfg: &RgLruConfig, seed: u64) -> P {
            let (h, d, k) = (cfg.d_model, cfg.d_inner, cfg.d_conv);
            let mut s = seed;
            let mut p = P {
                names: vec![],
                data: vec![],
                shapes: vec![],
            };
            let mut add = |n: &'static str, shape: &[usize], scale: f32| {
                let len = shape.iter().product();
                p.names.push(n);
                p.data.push((0..len).map(|_| scale * det(&mut s)).collect());
                p.shapes.push(shape.to_vec());
            };
            add("gate_proj.weight", &[d, h], 0.5);
            add("in_proj.weight", &[d, h], 0.5);
            add("conv1d.weight", &[d, 1, k], 0.5);
            add("recurrent_gate_proj.weight", &[d, d], 0.5);
            add("recurrent_gate_proj.bias", &[d], 0.5);
            add("input_gate_proj.weight", &[d, d], 0.5);
            add("input_gate_proj.bias", &[d], 0.5);
            add("a_log", &[d, 1], 2.0);
            add("out_proj.weight", &[h, d], 0.5);
            add("conv1d.bias", &[d], 0.3);
            add("gate_proj.bias", &[d], 0.3);
            add("in_proj.bias", &[d], 0.3);
            add("out_proj.bias", &[h], 0.3);
            p
        }

        fn get(&self, n: &str) -> &[f32] {
            &self.data[self.names.iter().position(|x| *x == n).unwrap()]
        }

        fn entries(&self) -> Vec<(&'static str, TensorView<'_>)> {
            self.names
                .iter()
                .zip(self.data.iter().zip(&self.shapes))
                .map(|(n, (d, s))| (*n, TensorView { data: d, shape: s }))
                .collect()
        }
    }

    fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / core::f64::consts::SQRT_2))
    }
    fn sig64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Independent f64 reference: the whole-sequence formulation (projections for all t, then
    /// the convolution as a direct sum over past inputs, then the recurrence with powf).
    fn reference(cfg: &RgLruConfig, p: &P, xs: &[f32]) -> Vec<f64> {
        let (h, d, k) = (cfg.d_model, cfg.d_inner, cfg.d_conv);
        let l = xs.len() / h;
        let lin = |w: &[f32], b: Option<&[f32]>, x: &[f64], o: usize, i: usize| -> Vec<f64> {
            (0..o)
                .map(|r| {
                    b.map_or(0.0, |b| b[r] as f64)
                        + (0..i).map(|c| w[r * i + c] as f64 * x[c]).sum::<f64>()
                })
                .collect()
        };
        let opt = |n: &str, on: bool| on.then(|| p.get(n));
        let xs64: Vec<Vec<f64>> = (0..l)
            .map(|t| xs[t * h..(t + 1) * h].iter().map(|&v| v as f64).collect())
            .collect();
        let us: Vec<Vec<f64>> = xs64
            .iter()
            .map(|x| {
                lin(
                    p.get("in_proj.weight"),
                    opt("in_proj.bias", cfg.bias),
                    x,
                    d,
                    h,
                )
            })
            .collect();
        let cw = p.get("conv1d.weight");
        let mut s = vec![0.0f64; d];
        let mut out = vec![];
        for (t, xt) in xs64.iter().enumerate() {
            let g: Vec<f64> = lin(
                p.get("gate_proj.weight"),
                opt("gate_proj.bias", cfg.bias),
                xt,
                d,
                h,
            )
            .into_iter()
            .map(gelu64)
            .collect();
            let xc: Vec<f64> = (0..d)
                .map(|c| {
                    let mut acc = opt("conv1d.bias", cfg.conv_bias).map_or(0.0, |b| b[c] as f64);
                    for w in 0..k {
                        let tt = t as isize - (k as isize - 1) + w as isize;
                        if tt >= 0 {
                            acc += cw[c * k + w] as f64 * us[tt as usize][c];
                        }
                    }
                    acc
                })
                .collect();
            let r = lin(
                p.get("recurrent_gate_proj.weight"),
                Some(p.get("recurrent_gate_proj.bias")),
                &xc,
                d,
                d,
            );
            let i = lin(
                p.get("input_gate_proj.weight"),
                Some(p.get("input_gate_proj.bias")),
                &xc,
                d,
                d,
            );
            let mut gs = vec![0.0; d];
            for c in 0..d {
                let a = sig64(p.get("a_log")[c] as f64);
                let ab = a.powf(cfg.c as f64 * sig64(r[c]));
                s[c] = ab * s[c] + (1.0 - ab * ab).sqrt() * sig64(i[c]) * xc[c];
                gs[c] = g[c] * s[c];
            }
            out.extend(lin(
                p.get("out_proj.weight"),
                opt("out_proj.bias", cfg.bias),
                &gs,
                h,
                d,
            ));
        }
        out
    }

    #[test]
    fn matches_f64_reference() {
        for (bias, conv_bias, k, d) in
            [(false, true, 4, 6), (true, false, 1, 4), (true, true, 3, 5)]
        {
            let cfg = RgLruConfig {
                d_model: 3,
                d_inner: d,
                d_conv: k,
                c: 8.0,
                bias,
                conv_bias,
            };
            let p = P::new(&cfg, 42);
            let e = p.entries();
            let layer = RgLru::from_lrnnx(
                cfg,
                &SliceParams { entries: &e },
                vec![0.0; cfg.weights_len()],
            )
            .unwrap();
            let mut seed = 5;
            let l = 30;
            let xs: Vec<f32> = (0..l * 3).map(|_| det(&mut seed)).collect();
            let mut ys = vec![0.0; l * 3];
            let mut st = vec![0.0; cfg.state_len()];
            run_sequence(&layer, &mut st, &xs, &mut ys).unwrap();
            let want = reference(&cfg, &p, &xs);
            for (i, (&a, &b)) in ys.iter().zip(&want).enumerate() {
                assert!(
                    (a as f64 - b).abs() < 2e-6 * (1.0 + b.abs()),
                    "{i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn errors_and_untouched_state() {
        let cfg = RgLruConfig {
            d_model: 3,
            d_inner: 4,
            d_conv: 4,
            c: 8.0,
            bias: true,
            conv_bias: true,
        };
        let mut p = P::new(&cfg, 1);
        let w = || vec![0.0f32; cfg.weights_len()];
        {
            let e = p.entries();
            let src = SliceParams { entries: &e[..12] };
            assert_eq!(
                RgLru::from_lrnnx(cfg, &src, w()).unwrap_err(),
                Error::MissingTensor {
                    name: "out_proj.bias"
                }
            );
            let src = SliceParams { entries: &e };
            let bad = RgLruConfig { d_conv: 3, ..cfg };
            assert!(matches!(
                RgLru::from_lrnnx(bad, &src, vec![0.0; bad.weights_len()]),
                Err(Error::TensorShape {
                    name: "conv1d.weight",
                    ..
                })
            ));
            assert!(matches!(
                RgLru::from_lrnnx(cfg, &src, vec![0.0; 5]),
                Err(Error::BufferLength { .. })
            ));
            let bad = RgLruConfig { c: -1.0, ..cfg };
            assert!(matches!(
                RgLru::from_lrnnx(bad, &src, w()),
                Err(Error::InvalidConfig { what: "c", .. })
            ));
            let bad = RgLruConfig { d_conv: 0, ..cfg };
            assert!(matches!(
                RgLru::from_weights(bad, vec![0.0; bad.weights_len()]),
                Err(Error::InvalidConfig { .. })
            ));
            // An exported buffer with c·ln σ(a) > 0 (a decay above 1: NaN outputs) is refused.
            let good = RgLru::from_lrnnx(cfg, &src, w()).unwrap();
            let mut wb = good.weights().to_vec();
            assert!(RgLru::from_weights(cfg, wb.clone()).is_ok());
            let (h, d, k) = (cfg.d_model, cfg.d_inner, cfg.d_conv);
            let c_ln_a = 2 * (h * d + d) + (k * d + d) + 2 * (d * d + d);
            wb[c_ln_a + 1] = 0.5;
            assert!(matches!(
                RgLru::from_weights(cfg, wb),
                Err(Error::InvalidConfig {
                    what: "RG-LRU weights",
                    ..
                })
            ));
            let layer = RgLru::from_lrnnx(cfg, &src, w()).unwrap();
            let mut st = vec![0.0; cfg.state_len()];
            let mut y = [0.0f32; 3];
            layer.step(&mut st, &[0.5, -1.0, 2.0], &mut y).unwrap();
            let before = st.clone();
            assert_eq!(
                layer.step(&mut st, &[0.5, f32::INFINITY, 2.0], &mut y),
                Err(Error::NonFiniteInput { index: 1 })
            );
            assert!(matches!(
                layer.step(&mut st[..5], &[0.5, 1.0, 2.0], &mut y),
                Err(Error::BufferLength { .. })
            ));
            assert_eq!(st, before);
            // Wrong lengths through the unchecked path do not panic.
            layer.step_prechecked(&mut st[..7], &[1.0], &mut y[..1]);
        }
        p.data[7][2] = f32::NAN;
        let e = p.entries();
        assert_eq!(
            RgLru::from_lrnnx(cfg, &SliceParams { entries: &e }, w()).unwrap_err(),
            Error::NonFiniteParameter {
                name: "a_log",
                index: 2
            }
        );
    }
}
