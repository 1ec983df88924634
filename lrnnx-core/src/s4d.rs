//! S4D, the diagonal S4 block (lrnnx `lrnnx.models.lti.s4d.S4D`, spec §5.1–5.2, 5.6–5.7).
//!
//! Per channel `h` (H of them) a diagonal complex SSM of N2 = d_state/2 states; lrnnx keeps only
//! one state of each conjugate pair, so the output takes twice the real part:
//!
//! ```text
//! Δ[h,n] = dt_transform(inv_dt[h, 0 or n])          A[h,n] = −rt(A_real[s,n]) − i·it(A_imag[s,n])
//! s = h mod n_ssm                                   (lrnnx tiles the n_ssm SSM rows over H)
//! zoh:      Ā = exp(ΔA),                  B̄ = B[s,n]·(exp(ΔA) − 1)/A
//! bilinear: Ā = (1 + ΔA/2)/(1 − ΔA/2),    B̄ = B[s,n]·Δ/(1 − ΔA/2)        (correct Tustin)
//! u[h,n] ← Ā[h,n]·u[h,n] + B̄[h,n]·x[h]
//! z[c,h] = 2·Re Σ_n C[c,h,n]·u[h,n]                 (c < channels)
//! ```
//!
//! then the S4 block tail ([`crate::s4_block`]): `+D⊙x`, GELU twice, optional Linear + GELU.
//!
//! lrnnx keys (read at the top level; the duplicates under `layer.kernel.` are aliases of the
//! same storage and are ignored): `inv_dt` (H,1) or (H,N2), `A_real` (S,N2), `A_imag` (S,N2),
//! `B` (1,S,N2,2), `C` (ch,H,N2,2) (trailing axis = re, im), `D` (ch,H), and with the output
//! linear `output_linear.0.weight` (H, ch·H), `output_linear.0.bias` (H,).
//!
//! Weight layout (f32, state index `n` outer and channel `h` inner, so that every step loop is
//! an elementwise operation over H contiguous values):
//!
//! | segment   | length     | meaning (index)                          |
//! |-----------|------------|------------------------------------------|
//! | `a_re`    | N2·H       | `Re Ā[h,n]` (`n·H + h`)                  |
//! | `a_im`    | N2·H       | `Im Ā[h,n]`                              |
//! | `b_re`    | N2·H       | `Re B̄[h,n]`                              |
//! | `b_im`    | N2·H       | `Im B̄[h,n]`                              |
//! | `c_re`    | ch·N2·H    | `2·Re C[c,h,n]` (`(c·N2 + n)·H + h`)     |
//! | `c_nim`   | ch·N2·H    | `−2·Im C[c,h,n]`                         |
//! | tail      |            | see [`crate::s4_block`]: D, then Wᵀ and b |
//!
//! State: `u_re` (N2·H), `u_im` (N2·H), then a working area of ch·H values when the output
//! linear is present (it holds the SSM output before the linear; it carries nothing between
//! steps).

use num_complex::Complex64;

use crate::discretize::Discretization;
use crate::error::{check_finite_weights, check_len, Error, Result};
use crate::layer::Layer;
use crate::params::{require, ParamSource};
use crate::s4_block::{read_dt, validate_sizes, BlockTail, S4Transforms};

/// Configuration of an S4D layer (lrnnx's constructor arguments that matter for stepping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S4dConfig {
    /// H = `d_model`, input features.
    pub d_model: usize,
    /// N = `d_state` (even; lrnnx stores N/2 conjugate-half states).
    pub d_state: usize,
    /// S = `n_ssm` (lrnnx default: H); must divide H. Channel `h` uses SSM row `h mod S`.
    pub n_ssm: usize,
    /// ch = `channels` (lrnnx default 1): output copies per input channel.
    pub channels: usize,
    /// `dt_tie` (lrnnx default true): `inv_dt` is (H,1); false: (H, N/2).
    pub dt_tied: bool,
    /// The parameter transforms (`dt_transform`, `dt_fast`, `real_transform`, `imag_transform`).
    pub transforms: S4Transforms,
    /// `disc`: [`Discretization::Zoh`] (lrnnx default) or [`Discretization::Bilinear`].
    pub discretization: Discretization,
    /// Whether `output_linear` (Linear(ch·H → H) + GELU) is present, i.e. lrnnx `final_act` is
    /// not None (lrnnx default `"glu"`, which builds Linear + GELU).
    pub output_linear: bool,
}

impl S4dConfig {
    /// lrnnx's defaults for `d_model` H and `d_state` N: `n_ssm = H`, one channel, tied Δ,
    /// default transforms, ZOH, with the output linear.
    pub const fn new(d_model: usize, d_state: usize) -> Self {
        S4dConfig {
            d_model,
            d_state,
            n_ssm: d_model,
            channels: 1,
            dt_tied: true,
            transforms: S4Transforms::LRNNX_DEFAULT,
            discretization: Discretization::Zoh,
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
        let (n2, h) = (self.d_state / 2, self.d_model);
        crate::error::sum_of_products(&[&[4, n2, h], &[2, self.channels, n2, h]])
    }

    /// Number of `f32` weights of the stepping layout.
    pub const fn weights_len(&self) -> usize {
        self.ssm_len().saturating_add(self.tail().weights_len())
    }

    /// Number of `f32` state elements (d_state·H, plus ch·H of working area with the output
    /// linear).
    pub const fn state_len(&self) -> usize {
        crate::error::sum_of_products(&[&[self.d_state / 2, self.d_model, 2]])
            .saturating_add(self.tail().scratch_len())
    }

    fn validate(&self) -> Result<()> {
        validate_sizes(self.d_model, self.d_state, self.n_ssm, self.channels)?;
        crate::error::check_sizes(self.weights_len(), self.state_len())?;
        match self.discretization {
            Discretization::Zoh | Discretization::Bilinear => Ok(()),
            d => Err(Error::UnsupportedDiscretization {
                layer: "S4D",
                discretization: d,
            }),
        }
    }
}

/// An S4D block ready to step; `W` holds the weights (owned or borrowed).
#[derive(Debug, Clone)]
pub struct S4d<W> {
    config: S4dConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> S4d<W> {
    /// Builds the layer from lrnnx parameters, discretizing once (in `f64`) into `weights`
    /// (`config.weights_len()` elements, overwritten): `Ā`, `B̄` by the rule of
    /// `config.discretization` (see the module docs), `2C`, then the block tail.
    pub fn from_lrnnx<P: ParamSource + ?Sized>(
        config: S4dConfig,
        params: &P,
        mut weights: W,
    ) -> Result<Self>
    where
        W: AsMut<[f32]>,
    {
        config.validate()?;
        check_len("weights", config.weights_len(), weights.as_ref().len())?;
        let (h, n2, s, ch) = (
            config.d_model,
            config.d_state / 2,
            config.n_ssm,
            config.channels,
        );
        let inv_dt = read_dt(params, h, n2, config.dt_tied)?;
        let a_real = require(params, "A_real", &[s, n2])?;
        let a_imag = require(params, "A_imag", &[s, n2])?;
        let b = require(params, "B", &[1, s, n2, 2])?;
        let c = require(params, "C", &[ch, h, n2, 2])?;

        let w = weights.as_mut();
        let (w_ssm, w_tail) = w.split_at_mut(config.ssm_len());
        let nh = n2 * h;
        let (w_a, w_rest) = w_ssm.split_at_mut(2 * nh);
        let (w_b, w_c) = w_rest.split_at_mut(2 * nh);
        let tr = config.transforms;
        for hh in 0..h {
            let row = hh % s;
            for n in 0..n2 {
                let dt = tr.dt(inv_dt[if config.dt_tied { hh } else { hh * n2 + n }]);
                let a = tr.a(a_real[row * n2 + n], a_imag[row * n2 + n]);
                let bv = Complex64::new(
                    b[(row * n2 + n) * 2] as f64,
                    b[(row * n2 + n) * 2 + 1] as f64,
                );
                let d = crate::discretize::discretize(config.discretization, a, dt, 1.0);
                let bb = d.gamma * bv;
                let i = n * h + hh;
                w_a[i] = d.a_bar.re as f32;
                w_a[nh + i] = d.a_bar.im as f32;
                w_b[i] = bb.re as f32;
                w_b[nh + i] = bb.im as f32;
                for cc in 0..ch {
                    let src = ((cc * h + hh) * n2 + n) * 2;
                    let dst = cc * nh + i;
                    w_c[dst] = 2.0 * c[src];
                    w_c[ch * nh + dst] = -2.0 * c[src + 1];
                }
            }
        }
        config.tail().write(params, w_tail)?;
        check_finite_weights("discretized S4D weights", w)?;
        Ok(S4d { config, weights })
    }

    /// `u ← Ā⊙u + B̄·x` (broadcast over n), then `z[c,h] = Σ_n (2Re C·Re u − 2Im C·Im u)`.
    #[inline]
    fn ssm_step(&self, w: &[f32], u: &mut [f32], x: &[f32], z: &mut [f32]) {
        let h = self.config.d_model;
        let nh = self.config.d_state / 2 * h;
        let (a, rest) = w.split_at(nh.min(w.len()));
        let (a_im, rest) = rest.split_at(nh.min(rest.len()));
        let (b_re, rest) = rest.split_at(nh.min(rest.len()));
        let (b_im, rest) = rest.split_at(nh.min(rest.len()));
        let cl = self.config.channels * nh;
        let (c_re, rest) = rest.split_at(cl.min(rest.len()));
        let c_nim = &rest[..cl.min(rest.len())];
        let (u_re, u_im) = u.split_at_mut(nh.min(u.len()));
        if h == 0 {
            return;
        }
        for (((ur, ui), (ar, ai)), (br, bi)) in u_re
            .chunks_exact_mut(h)
            .zip(u_im.chunks_exact_mut(h))
            .zip(a.chunks_exact(h).zip(a_im.chunks_exact(h)))
            .zip(b_re.chunks_exact(h).zip(b_im.chunks_exact(h)))
        {
            for (((r, i), (&ar, &ai)), ((&br, &bi), &xv)) in ur
                .iter_mut()
                .zip(ui.iter_mut())
                .zip(ar.iter().zip(ai))
                .zip(br.iter().zip(bi).zip(x))
            {
                let (vr, vi) = (*r, *i);
                *r = ar * vr - ai * vi + br * xv;
                *i = ar * vi + ai * vr + bi * xv;
            }
        }
        z.fill(0.0);
        for ((zc, cr), cn) in z
            .chunks_exact_mut(h)
            .zip(c_re.chunks_exact(nh))
            .zip(c_nim.chunks_exact(nh))
        {
            for ((cr_n, cn_n), (ur, ui)) in cr
                .chunks_exact(h)
                .zip(cn.chunks_exact(h))
                .zip(u_re.chunks_exact(h).zip(u_im.chunks_exact(h)))
            {
                for (o, ((&p, &q), (&r, &i))) in zc
                    .iter_mut()
                    .zip(cr_n.iter().zip(cn_n).zip(ur.iter().zip(ui)))
                {
                    *o += p * r + q * i;
                }
            }
        }
    }
}

crate::layer::weight_view_methods!(S4d, S4dConfig, "S4D weights");

impl<W: AsRef<[f32]>> Layer for S4d<W> {
    fn d_input(&self) -> usize {
        self.config.d_model
    }

    fn d_output(&self) -> usize {
        self.config.tail().d_output()
    }

    fn state_len(&self) -> usize {
        self.config.state_len()
    }

    /// `u ← Ā⊙u + B̄x;  z = 2Re(C u) + D⊙x;  z = GELU(GELU(z));  y = GELU(W z + b)` (or `y = z`
    /// without the output linear).
    #[inline]
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let w = self.weights.as_ref();
        let (w_ssm, w_tail) = w.split_at(self.config.ssm_len().min(w.len()));
        let n_state = self.config.d_state / 2 * self.config.d_model * 2;
        let (u, scratch) = state.split_at_mut(n_state.min(state.len()));
        let tail = self.config.tail();
        if tail.linear {
            self.ssm_step(w_ssm, u, x, scratch);
            tail.finish(w_tail, scratch, x, y);
        } else {
            self.ssm_step(w_ssm, u, x, y);
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

    fn random_params(cfg: &S4dConfig, rng: &mut Rng) -> OwnedParams {
        let (h, n2, s, ch) = (cfg.d_model, cfg.d_state / 2, cfg.n_ssm, cfg.channels);
        let mut p = OwnedParams::default();
        let dt_cols = if cfg.dt_tied { 1 } else { n2 };
        p.put("inv_dt", rng.vec(h * dt_cols, -4.0, -1.5), &[h, dt_cols]);
        p.put("A_real", rng.vec(s * n2, -1.2, -0.2), &[s, n2]);
        p.put("A_imag", rng.vec(s * n2, 0.0, 6.0), &[s, n2]);
        p.put("B", rng.vec(s * n2 * 2, -1.0, 1.0), &[1, s, n2, 2]);
        p.put("C", rng.vec(ch * h * n2 * 2, -1.0, 1.0), &[ch, h, n2, 2]);
        p.put("D", rng.vec(ch * h, -1.0, 1.0), &[ch, h]);
        p.put(
            "output_linear.0.weight",
            rng.vec(h * ch * h, -0.6, 0.6),
            &[h, ch * h],
        );
        p.put("output_linear.0.bias", rng.vec(h, -0.3, 0.3), &[h]);
        p
    }

    fn get<'a>(p: &'a OwnedParams, name: &str) -> &'a [f32] {
        p.tensor(name).unwrap().data
    }

    /// Independent reference: the impulse response
    /// `K[c,h,l] = 2·Re Σ_n C[c,h,n]·B̄[h,n]·Ā[h,n]^l` with Ā, B̄ from the textbook formulas
    /// (num_complex, `powu`), convolved directly with the input, then the block tail in f64.
    fn reference(cfg: &S4dConfig, p: &OwnedParams, xs: &[f32], len: usize) -> Vec<f64> {
        let (h, n2, s, ch) = (cfg.d_model, cfg.d_state / 2, cfg.n_ssm, cfg.channels);
        let t = cfg.transforms;
        let (inv_dt, ar, ai) = (get(p, "inv_dt"), get(p, "A_real"), get(p, "A_imag"));
        let (b, c) = (get(p, "B"), get(p, "C"));
        let zh = ch * h;
        let mut k = vec![0.0f64; zh * len];
        for hh in 0..h {
            let row = hh % s;
            for n in 0..n2 {
                let raw = inv_dt[if cfg.dt_tied { hh } else { hh * n2 + n }] as f64;
                let raw = if t.dt_fast { raw.sinh() } else { raw };
                let dt = t.dt.apply(raw);
                let a = Complex64::new(
                    -t.real.apply(ar[row * n2 + n] as f64),
                    -t.imag.apply(ai[row * n2 + n] as f64),
                );
                let bv = Complex64::new(
                    b[(row * n2 + n) * 2] as f64,
                    b[(row * n2 + n) * 2 + 1] as f64,
                );
                let (abar, bbar) = match cfg.discretization {
                    Discretization::Zoh => {
                        let e = (a * dt).exp();
                        (e, bv * (e - 1.0) / a)
                    }
                    _ => {
                        let den = 1.0 - a * dt / 2.0;
                        ((1.0 + a * dt / 2.0) / den, bv * dt / den)
                    }
                };
                for cc in 0..ch {
                    let ci = ((cc * h + hh) * n2 + n) * 2;
                    let cv = Complex64::new(c[ci] as f64, c[ci + 1] as f64);
                    for l in 0..len {
                        k[(cc * h + hh) * len + l] += 2.0 * (cv * bbar * abar.powu(l as u32)).re;
                    }
                }
            }
        }
        let z = conv_ref(&k, xs, h, zh, len);
        let lin = cfg.output_linear.then(|| {
            (
                get(p, "output_linear.0.weight"),
                get(p, "output_linear.0.bias"),
            )
        });
        let mut out = Vec::new();
        for (tt, zt) in z.iter().enumerate() {
            out.extend(tail_ref(zt, &xs[tt * h..(tt + 1) * h], get(p, "D"), lin));
        }
        out
    }

    fn check_against_reference(cfg: S4dConfig, seed: u64) {
        let mut rng = Rng(seed);
        let p = random_params(&cfg, &mut rng);
        let layer = S4d::from_lrnnx(cfg, &p, vec![0.0f32; cfg.weights_len()]).unwrap();
        let len = 50;
        let xs = rng.vec(len * cfg.d_model, -1.5, 1.5);
        let mut ys = vec![0.0f32; len * layer.d_output()];
        let mut state = vec![0.0f32; layer.state_len()];
        run_sequence(&layer, &mut state, &xs, &mut ys).unwrap();
        assert_close(
            &ys,
            &reference(&cfg, &p, &xs, len),
            "S4D vs impulse response",
        );

        // The exported weights step identically.
        let view = S4d::from_weights(cfg, layer.weights()).unwrap();
        let mut ys2 = vec![0.0f32; ys.len()];
        let mut state2 = vec![0.0f32; layer.state_len()];
        run_sequence(&view, &mut state2, &xs, &mut ys2).unwrap();
        assert_eq!(ys, ys2);
    }

    #[test]
    fn zoh_matches_impulse_response_convolution() {
        let mut cfg = S4dConfig::new(3, 8);
        check_against_reference(cfg, 1);
        cfg.n_ssm = 1;
        cfg.channels = 2;
        cfg.dt_tied = false;
        check_against_reference(cfg, 2);
        cfg.output_linear = false;
        check_against_reference(cfg, 3);
    }

    #[test]
    fn bilinear_matches_impulse_response_convolution() {
        let mut cfg = S4dConfig::new(4, 6);
        cfg.discretization = Discretization::Bilinear;
        check_against_reference(cfg, 4);
        cfg.n_ssm = 2;
        cfg.channels = 3;
        cfg.output_linear = false;
        check_against_reference(cfg, 5);
    }

    #[test]
    fn other_transforms_match_reference() {
        let mut cfg = S4dConfig::new(2, 4);
        cfg.transforms = S4Transforms {
            dt: ParamTransform::Softplus,
            dt_fast: true,
            real: ParamTransform::Relu,
            imag: ParamTransform::Exp,
        };
        check_against_reference(cfg, 6);
        cfg.transforms = S4Transforms {
            dt: ParamTransform::Sigmoid,
            dt_fast: false,
            real: ParamTransform::Softplus,
            imag: ParamTransform::None,
        };
        cfg.discretization = Discretization::Bilinear;
        check_against_reference(cfg, 7);
    }

    #[test]
    fn construction_errors() {
        let cfg = S4dConfig::new(3, 4);
        let mut rng = Rng(9);
        let p = random_params(&cfg, &mut rng);
        let buf = || vec![0.0f32; cfg.weights_len()];
        assert!(S4d::from_lrnnx(cfg, &p, buf()).is_ok());

        let mut q = random_params(&cfg, &mut Rng(9));
        q.put("A_real", vec![0.0; 3 * 3], &[3, 3]);
        assert!(matches!(
            S4d::from_lrnnx(cfg, &q, buf()),
            Err(Error::TensorShape { name: "A_real", .. })
        ));
        let mut q = random_params(&cfg, &mut Rng(9));
        q.remove("B");
        assert_eq!(
            S4d::from_lrnnx(cfg, &q, buf()).unwrap_err(),
            Error::MissingTensor { name: "B" }
        );
        let mut q = random_params(&cfg, &mut Rng(9));
        q.get_mut("C")[5] = f32::NAN;
        assert_eq!(
            S4d::from_lrnnx(cfg, &q, buf()).unwrap_err(),
            Error::NonFiniteParameter {
                name: "C",
                index: 5
            }
        );
        let mut q = random_params(&cfg, &mut Rng(9));
        q.remove("output_linear.0.bias");
        assert_eq!(
            S4d::from_lrnnx(cfg, &q, buf()).unwrap_err(),
            Error::MissingTensor {
                name: "output_linear.0.bias"
            }
        );
        // Untied Δ expects (H, N2).
        let untied = S4dConfig {
            dt_tied: false,
            ..cfg
        };
        assert!(matches!(
            S4d::from_lrnnx(untied, &p, buf()),
            Err(Error::TensorShape { name: "inv_dt", .. })
        ));
        // Δ so large that exp overflows: non-finite discretized weights.
        let mut q = random_params(&cfg, &mut Rng(9));
        q.get_mut("inv_dt")[0] = 800.0;
        assert!(matches!(
            S4d::from_lrnnx(cfg, &q, buf()),
            Err(Error::NonFiniteParameter { .. })
        ));
        assert!(matches!(
            S4d::from_lrnnx(cfg, &p, vec![0.0f32; cfg.weights_len() - 1]),
            Err(Error::BufferLength { .. })
        ));
        for bad in [
            S4dConfig { d_state: 5, ..cfg },
            S4dConfig { n_ssm: 2, ..cfg },
            S4dConfig { channels: 0, ..cfg },
            S4dConfig { d_model: 0, ..cfg },
        ] {
            assert!(matches!(
                S4d::from_lrnnx(bad, &p, vec![0.0f32; bad.weights_len()]),
                Err(Error::InvalidConfig { .. })
            ));
        }
        let dirac = S4dConfig {
            discretization: Discretization::Dirac,
            ..cfg
        };
        assert_eq!(
            S4d::from_lrnnx(dirac, &p, buf()).unwrap_err(),
            Error::UnsupportedDiscretization {
                layer: "S4D",
                discretization: Discretization::Dirac
            }
        );
        let mut w = buf();
        w[7] = f32::INFINITY;
        assert!(matches!(
            S4d::from_weights(cfg, w),
            Err(Error::NonFiniteParameter { index: 7, .. })
        ));
    }

    #[test]
    fn bad_step_leaves_state_untouched() {
        let cfg = S4dConfig::new(3, 4);
        let p = random_params(&cfg, &mut Rng(11));
        let layer = S4d::from_lrnnx(cfg, &p, vec![0.0f32; cfg.weights_len()]).unwrap();
        let mut state = vec![0.0f32; layer.state_len()];
        let mut y = vec![0.0f32; 3];
        layer.step(&mut state, &[1.0, -0.5, 0.25], &mut y).unwrap();
        let before = state.clone();
        assert!(matches!(
            layer.step(&mut state, &[1.0, f32::NAN, 0.0], &mut y),
            Err(Error::NonFiniteInput { index: 1 })
        ));
        assert!(layer.step(&mut state, &[1.0, 0.0], &mut y).is_err());
        assert!(layer
            .step(&mut state, &[1.0, 0.0, 0.0], &mut y[..2])
            .is_err());
        assert_eq!(state, before);
        let mut short = vec![0.0f32; layer.state_len() - 1];
        assert!(matches!(
            layer.step(&mut short, &[1.0, 0.0, 0.0], &mut y),
            Err(Error::BufferLength { .. })
        ));
        // Prechecked stepping with wrong lengths must not panic.
        layer.step_prechecked(&mut short, &[1.0], &mut y[..1]);
        layer.step_prechecked(&mut [], &[], &mut []);
    }
}
