//! What S4 ([`crate::s4`]) and S4D ([`crate::s4d`]) share: lrnnx's parameter transforms
//! (spec §5.1, §5.3) and the block tail that follows the SSM (spec §5.7).
//!
//! ## Parameter transforms
//!
//! lrnnx stores the SSM parameters through invertible transforms and reads them back as
//!
//! ```text
//! Δ = dt_transform(sinh?(inv_dt))                 (sinh only with dt_fast)
//! A = −real_transform(A_real) − i·imag_transform(A_imag)
//! ```
//!
//! with each transform one of [`ParamTransform`] (defaults: `exp`, `exp`, `none`).
//!
//! ## Block tail
//!
//! lrnnx's S4 / S4D modules are the "S4 block" of the state-spaces repository, and their step
//! runs this tail on the SSM output `z (ch, H)`:
//!
//! ```text
//! z[c,h] += D[c,h]·x[h]
//! z = GELU(GELU(z))                     lrnnx applies conv_activation and then mult_activation,
//!                                       two exact GELUs in a row (spec §18.6); kept as shipped
//! y = GELU(W z + b)                     only when final_act is not None: output_linear.0
//!                                       (W (H, ch·H)), followed by GELU — never a GLU (§18.6)
//! y = z                                 otherwise (ch·H outputs, flattened (c, h))
//! ```
//!
//! Dropout is the identity at inference. The `gate` and `bottleneck` options are not supported
//! (lrnnx's own shapes are inconsistent there, spec §18.31).
//!
//! Weight layout of the tail: `D` (ch·H, index `c·H + h`), then, with the output linear,
//! `Wᵀ` (ch·H rows of H: row `c·H + h` = column `c·H + h` of `W`) and `b` (H).
//! It needs a working area of ch·H values (only with the output linear), which the layers put
//! at the end of their state.

use num_complex::Complex64;

use crate::activation::{gelu, softplus_f64};
use crate::error::{Error, Result};
use crate::linalg::{diag_acc, gemv_t_acc, transpose_into};
use crate::params::{require, ParamSource};

/// One of lrnnx's parameter transforms (`param_transform` in `s4_utils`, spec §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamTransform {
    /// `p = x`.
    None,
    /// `p = eˣ`.
    Exp,
    /// `p = max(x, 0) + 10⁻⁴`.
    Relu,
    /// `p = 1/(1 + e⁻ˣ)`.
    Sigmoid,
    /// `p = softplus(x)` (PyTorch's, threshold 20).
    Softplus,
}

impl ParamTransform {
    /// lrnnx's name: `"none"`, `"exp"`, `"relu"`, `"sigmoid"`, `"softplus"`.
    pub const fn name(self) -> &'static str {
        match self {
            ParamTransform::None => "none",
            ParamTransform::Exp => "exp",
            ParamTransform::Relu => "relu",
            ParamTransform::Sigmoid => "sigmoid",
            ParamTransform::Softplus => "softplus",
        }
    }

    /// Parses lrnnx's name (see [`ParamTransform::name`]; `None` for anything else).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => ParamTransform::None,
            "exp" => ParamTransform::Exp,
            "relu" => ParamTransform::Relu,
            "sigmoid" => ParamTransform::Sigmoid,
            "softplus" => ParamTransform::Softplus,
            _ => return Option::None,
        })
    }

    /// The transform in `f64`: `x`, `eˣ`, `max(x,0) + 10⁻⁴`, `1/(1+e⁻ˣ)` or `softplus(x)`.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            ParamTransform::None => x,
            ParamTransform::Exp => libm::exp(x),
            ParamTransform::Relu => x.max(0.0) + 1e-4,
            ParamTransform::Sigmoid => 1.0 / (1.0 + libm::exp(-x)),
            ParamTransform::Softplus => softplus_f64(x),
        }
    }
}

/// How lrnnx reads Δ and A back from its stored parameters (constructor arguments
/// `dt_transform`, `dt_fast`, `real_transform`, `imag_transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct S4Transforms {
    /// `dt_transform` (lrnnx default `exp`).
    pub dt: ParamTransform,
    /// `dt_fast`: `inv_dt` holds `asinh` of the value, read back through `sinh` (default false).
    pub dt_fast: bool,
    /// `real_transform` (default `exp`).
    pub real: ParamTransform,
    /// `imag_transform` (default `none`).
    pub imag: ParamTransform,
}

impl S4Transforms {
    /// lrnnx's defaults: `dt_transform="exp"`, `dt_fast=False`, `real_transform="exp"`,
    /// `imag_transform="none"`.
    pub const LRNNX_DEFAULT: S4Transforms = S4Transforms {
        dt: ParamTransform::Exp,
        dt_fast: false,
        real: ParamTransform::Exp,
        imag: ParamTransform::None,
    };

    /// `Δ = dt_transform(inv_dt)` (or `dt_transform(sinh(inv_dt))` with `dt_fast`).
    pub fn dt(&self, inv_dt: f32) -> f64 {
        let v = inv_dt as f64;
        self.dt.apply(if self.dt_fast { libm::sinh(v) } else { v })
    }

    /// `A = −real_transform(A_real) − i·imag_transform(A_imag)`.
    pub fn a(&self, a_real: f32, a_imag: f32) -> Complex64 {
        Complex64::new(
            -self.real.apply(a_real as f64),
            -self.imag.apply(a_imag as f64),
        )
    }
}

impl Default for S4Transforms {
    fn default() -> Self {
        Self::LRNNX_DEFAULT
    }
}

/// Validates the sizes shared by S4 and S4D.
pub(crate) fn validate_sizes(
    d_model: usize,
    d_state: usize,
    n_ssm: usize,
    ch: usize,
) -> Result<()> {
    crate::error::check_nonzero("d_model", d_model)?;
    crate::error::check_nonzero("channels", ch)?;
    crate::error::check_nonzero("n_ssm", n_ssm)?;
    if d_state < 2 || d_state & 1 == 1 {
        return Err(Error::InvalidConfig {
            what: "d_state",
            reason: "must be a positive even number (lrnnx stores d_state/2 conjugate pairs)",
        });
    }
    if (d_model / n_ssm) * n_ssm != d_model {
        return Err(Error::InvalidConfig {
            what: "n_ssm",
            reason: "must divide d_model (lrnnx tiles the n_ssm SSMs over the d_model channels)",
        });
    }
    Ok(())
}

/// Reads `inv_dt` ((H, 1) when `dt_tied`, else (H, N2)) and returns Δ for channel `h`, state
/// `n` through `dt(h, n)`.
pub(crate) fn read_dt<P: ParamSource + ?Sized>(
    params: &P,
    h: usize,
    n2: usize,
    dt_tied: bool,
) -> Result<&[f32]> {
    require(params, "inv_dt", &[h, if dt_tied { 1 } else { n2 }])
}

/// Sizes of the block tail (spec §5.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockTail {
    /// H.
    pub h: usize,
    /// ch.
    pub ch: usize,
    /// Whether `output_linear` (Linear + GELU) is present (lrnnx `final_act` not None).
    pub linear: bool,
}

impl BlockTail {
    /// Number of weight elements: `ch·H` (D) plus `ch·H·H + H` with the output linear.
    pub const fn weights_len(&self) -> usize {
        let (ch, h) = (self.ch, self.h);
        if self.linear {
            crate::error::sum_of_products(&[&[ch, h], &[ch, h, h], &[h]])
        } else {
            crate::error::sum_of_products(&[&[ch, h]])
        }
    }

    /// Working area (in the state): `ch·H` with the output linear, else 0.
    pub const fn scratch_len(&self) -> usize {
        if self.linear {
            self.ch.saturating_mul(self.h)
        } else {
            0
        }
    }

    /// Output features: H with the output linear, else `ch·H`.
    pub const fn d_output(&self) -> usize {
        if self.linear {
            self.h
        } else {
            self.ch * self.h
        }
    }

    /// Reads `D` (ch, H) and, with the output linear, `output_linear.0.weight` (H, ch·H) and
    /// `output_linear.0.bias` (H,) into `w` (`weights_len()` elements).
    pub fn write<P: ParamSource + ?Sized>(&self, params: &P, w: &mut [f32]) -> Result<()> {
        let (h, ch) = (self.h, self.ch);
        let zh = ch * h;
        let d = require(params, "D", &[ch, h])?;
        let (w_d, rest) = w.split_at_mut(zh.min(w.len()));
        w_d.copy_from_slice(d);
        if self.linear {
            let lw = require(params, "output_linear.0.weight", &[h, zh])?;
            let lb = require(params, "output_linear.0.bias", &[h])?;
            let (w_t, w_b) = rest.split_at_mut((zh * h).min(rest.len()));
            transpose_into(w_t, lw, h, zh);
            w_b.copy_from_slice(lb);
        }
        Ok(())
    }

    /// The tail on the SSM output `z` (ch·H values, overwritten):
    /// `z ← GELU(GELU(z + D⊙x))` per channel copy `c`, then `y = GELU(W z + b)` when the
    /// output linear is present (with it, `y` has H values; without it, call
    /// [`BlockTail::finish_in_place`] instead).
    #[inline]
    pub fn finish(&self, w: &[f32], z: &mut [f32], x: &[f32], y: &mut [f32]) {
        let zh = self.ch * self.h;
        let (w_d, rest) = w.split_at(zh.min(w.len()));
        self.activate(w_d, z, x);
        let (w_t, w_b) = rest.split_at((zh * self.h).min(rest.len()));
        for (o, &b) in y.iter_mut().zip(w_b) {
            *o = b;
        }
        gemv_t_acc(y, w_t, z);
        for o in y.iter_mut() {
            *o = gelu(*o);
        }
    }

    /// The tail without output linear, in place on `z` (ch·H values, which are the outputs):
    /// `z ← GELU(GELU(z + D⊙x))`.
    #[inline]
    pub fn finish_in_place(&self, w: &[f32], z: &mut [f32], x: &[f32]) {
        let zh = self.ch * self.h;
        self.activate(&w[..zh.min(w.len())], z, x);
    }

    /// `z[c·H + h] ← GELU(GELU(z[c·H + h] + D[c,h]·x[h]))`.
    #[inline]
    fn activate(&self, w_d: &[f32], z: &mut [f32], x: &[f32]) {
        if self.h == 0 {
            return;
        }
        for (zc, dc) in z.chunks_exact_mut(self.h).zip(w_d.chunks_exact(self.h)) {
            diag_acc(zc, dc, x);
        }
        for v in z.iter_mut() {
            *v = gelu(gelu(*v));
        }
    }
}

/// Test helpers shared by the S4 and S4D tests: owned parameters, a random generator, and an
/// `f64` reference of the block tail written independently of [`BlockTail`].
#[cfg(test)]
pub(crate) mod test_support {
    extern crate std;
    use std::vec::Vec;

    use crate::params::{ParamSource, TensorView};

    /// Owned `(name, data, shape)` parameters.
    #[derive(Default)]
    pub struct OwnedParams {
        pub entries: Vec<(&'static str, Vec<f32>, Vec<usize>)>,
    }

    impl OwnedParams {
        pub fn put(&mut self, name: &'static str, data: Vec<f32>, shape: &[usize]) {
            self.entries.retain(|(n, _, _)| *n != name);
            self.entries.push((name, data, shape.to_vec()));
        }

        pub fn remove(&mut self, name: &str) {
            self.entries.retain(|(n, _, _)| *n != name);
        }

        pub fn get_mut(&mut self, name: &str) -> &mut Vec<f32> {
            &mut self
                .entries
                .iter_mut()
                .find(|(n, _, _)| *n == name)
                .expect("test parameter present")
                .1
        }
    }

    impl ParamSource for OwnedParams {
        fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
            self.entries
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, d, s)| TensorView { data: d, shape: s })
        }
    }

    /// xorshift64* uniform numbers.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            lo + (hi - lo) * u
        }

        pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
            (0..n).map(|_| self.uniform(lo, hi) as f32).collect()
        }
    }

    /// Exact GELU in `f64`: `x·Φ(x)`.
    pub fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / core::f64::consts::SQRT_2))
    }

    /// Block tail reference for one time step: `z` (ch·H, flattened (c,h)) is the SSM output.
    /// Returns `GELU(W·GELU(GELU(z + D⊙x)) + b)` or, without `lin`, `GELU(GELU(z + D⊙x))`.
    pub fn tail_ref(z: &[f64], x: &[f32], d: &[f32], lin: Option<(&[f32], &[f32])>) -> Vec<f64> {
        let h = x.len();
        let act: Vec<f64> = (0..z.len())
            .map(|i| gelu64(gelu64(z[i] + d[i] as f64 * x[i % h] as f64)))
            .collect();
        match lin {
            None => act,
            Some((w, b)) => (0..h)
                .map(|o| {
                    let s: f64 = (0..act.len())
                        .map(|i| w[o * act.len() + i] as f64 * act[i])
                        .sum();
                    gelu64(s + b[o] as f64)
                })
                .collect(),
        }
    }

    /// Direct causal convolution: `z[t][c·H + h] = Σ_{l ≤ t} k[(c·H + h)·L + l]·x[t − l][h]`.
    pub fn conv_ref(k: &[f64], xs: &[f32], h: usize, zh: usize, len: usize) -> Vec<Vec<f64>> {
        (0..len)
            .map(|t| {
                (0..zh)
                    .map(|j| {
                        (0..=t)
                            .map(|l| k[j * len + l] * xs[(t - l) * h + j % h] as f64)
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    /// Asserts `|got − want| ≤ 1e-5·max|want| + 1e-6` elementwise.
    pub fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale + 1e-6,
                "{what}: index {i}: got {g}, want {w} (scale {scale})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_match_their_definitions() {
        let x = 0.7f64;
        assert_eq!(ParamTransform::None.apply(x), x);
        assert!((ParamTransform::Exp.apply(x) - 2.013_752_707_470_477).abs() < 1e-15);
        assert_eq!(ParamTransform::Relu.apply(-3.0), 1e-4);
        assert!((ParamTransform::Relu.apply(x) - 0.7001).abs() < 1e-15);
        assert!((ParamTransform::Sigmoid.apply(0.0) - 0.5).abs() < 1e-15);
        assert!((ParamTransform::Softplus.apply(0.0) - core::f64::consts::LN_2).abs() < 1e-15);
        for t in [
            ParamTransform::None,
            ParamTransform::Exp,
            ParamTransform::Relu,
            ParamTransform::Sigmoid,
            ParamTransform::Softplus,
        ] {
            assert_eq!(ParamTransform::from_name(t.name()), Some(t));
        }
        assert_eq!(ParamTransform::from_name("tanh"), None);
        let mut t = S4Transforms::default();
        assert!((t.dt(-2.0) - libm::exp(-2.0)).abs() < 1e-15);
        t.dt_fast = true;
        assert!((t.dt(0.5) - libm::exp(libm::sinh(0.5))).abs() < 1e-15);
        let a = S4Transforms::LRNNX_DEFAULT.a(0.0, 3.0);
        assert_eq!(a, Complex64::new(-1.0, -3.0));
    }

    #[test]
    fn sizes_are_validated() {
        assert!(validate_sizes(4, 8, 2, 1).is_ok());
        assert!(matches!(
            validate_sizes(4, 7, 2, 1),
            Err(Error::InvalidConfig {
                what: "d_state",
                ..
            })
        ));
        assert!(matches!(
            validate_sizes(4, 8, 3, 1),
            Err(Error::InvalidConfig { what: "n_ssm", .. })
        ));
        assert!(matches!(
            validate_sizes(4, 8, 2, 0),
            Err(Error::InvalidConfig {
                what: "channels",
                ..
            })
        ));
    }
}
