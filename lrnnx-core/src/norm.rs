//! Per-sample normalizations over the feature axis (spec §13.2): PyTorch's `nn.LayerNorm` and
//! `RMSNorm`, as plain slice functions (no allocation, no panic) and as a [`Norm`] stage over
//! a flat weight buffer.
//!
//! ```text
//! LayerNorm  μ = (1/d) Σᵢ xᵢ     σ² = (1/d) Σᵢ (xᵢ − μ)²      yᵢ = (xᵢ − μ)/√(σ² + ε) · wᵢ + bᵢ
//! RMSNorm    r² = (1/d) Σᵢ xᵢ²                               yᵢ = xᵢ/√(r² + ε) · wᵢ
//! ```
//!
//! The variance is the biased one (divided by `d`), as PyTorch; it is computed in two passes
//! (mean first, then the squared deviations) around the first feature (`xᵢ − μ =
//! (xᵢ − x₀) − mean(x − x₀)`), which loses no precision to cancellation or to rounding `μ`
//! when `|μ| ≫ σ`. Weight layout of a [`Norm`]: `[w (d) | b (d)]` for LayerNorm, `[w (d)]` for
//! RMSNorm (lrnnx keys `norm.weight`, `norm.bias`).

use crate::error::{check_finite_weights, check_len, check_sizes, Error, Result};

/// Which normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `nn.LayerNorm`: centred and scaled, weight and bias.
    LayerNorm,
    /// `RMSNorm`: scaled by the root mean square, weight only.
    RmsNorm,
}

/// Sizes of a normalization stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormConfig {
    /// LayerNorm or RMSNorm.
    pub kind: NormKind,
    /// Number of features normalized together (the width).
    pub d: usize,
    /// `ε` added to the variance (PyTorch default 1e-5); finite and ≥ 0.
    pub eps: f32,
}

impl NormConfig {
    /// Number of weights: `2d` for LayerNorm (weight, bias), `d` for RMSNorm (`usize::MAX`
    /// where `2d` overflows: refused by the constructor).
    pub const fn weights_len(&self) -> usize {
        match self.kind {
            NormKind::LayerNorm => self.d.saturating_mul(2),
            NormKind::RmsNorm => self.d,
        }
    }
}

/// `y = LayerNorm(x)·w + b` (module doc) over `min(len)` features of the four slices; `y` may
/// not alias `x`. Mismatched lengths truncate to the shortest (never a panic).
#[inline]
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, y: &mut [f32]) {
    let n = x.len().min(weight.len()).min(bias.len()).min(y.len());
    if n == 0 {
        return;
    }
    let x = &x[..n];
    let inv_n = 1.0 / n as f32;
    // Centred on x₀ first: xᵢ − μ = (xᵢ − x₀) − mean(x − x₀), never rounding μ itself.
    let x0 = x[0];
    let m = x.iter().map(|v| v - x0).sum::<f32>() * inv_n;
    let var = x.iter().map(|v| (v - x0 - m) * (v - x0 - m)).sum::<f32>() * inv_n;
    let inv = inv_sqrt_or_zero(var + eps);
    for (((o, v), w), b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - x0 - m) * inv * w + b;
    }
}

/// `1/√s`, or 0 where `√s` is 0 (ε = 0 on a constant frame such as digital silence, or a
/// subnormal flushed to zero): the centred (or raw) values are then all zero, and `0·∞` would
/// turn the whole output, and every recurrent state after it, into NaN.
#[inline(always)]
fn inv_sqrt_or_zero(s: f32) -> f32 {
    let r = libm::sqrtf(s);
    if r > 0.0 {
        1.0 / r
    } else {
        0.0
    }
}

/// `y = x/√(mean(x²) + ε) · w` (module doc) over `min(len)` features; mismatched lengths
/// truncate to the shortest (never a panic).
#[inline]
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let n = x.len().min(weight.len()).min(y.len());
    if n == 0 {
        return;
    }
    let x = &x[..n];
    let ms = x.iter().map(|v| v * v).sum::<f32>() * (1.0 / n as f32);
    let inv = inv_sqrt_or_zero(ms + eps);
    for ((o, v), w) in y.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}

/// A normalization over a weight buffer in the layout of the module doc.
#[derive(Debug, Clone)]
pub struct Norm<W> {
    config: NormConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> Norm<W> {
    /// Views a weight buffer (zero-copy); checks `d > 0`, `ε` finite and ≥ 0, the length and
    /// finiteness of the weights.
    pub fn from_weights(config: NormConfig, weights: W) -> Result<Self> {
        if config.d == 0 {
            return Err(Error::InvalidConfig {
                what: "norm stage",
                reason: "the width d must be positive",
            });
        }
        if !(config.eps.is_finite() && config.eps >= 0.0) {
            return Err(Error::InvalidConfig {
                what: "norm stage",
                reason: "eps must be finite and non-negative",
            });
        }
        check_sizes(config.weights_len(), 0)?;
        check_len("norm weights", config.weights_len(), weights.as_ref().len())?;
        check_finite_weights("norm weights", weights.as_ref())?;
        Ok(Norm { config, weights })
    }

    /// The configuration.
    pub fn config(&self) -> &NormConfig {
        &self.config
    }

    /// The weights (`w`, then `b` for LayerNorm).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }

    /// `y = norm(x)` ([`layer_norm`] or [`rms_norm`] with this stage's weights); `x` and `y`
    /// hold `d` values (mismatched lengths truncate).
    #[inline]
    pub fn apply(&self, x: &[f32], y: &mut [f32]) {
        let d = self.config.d;
        let w = self.weights.as_ref();
        let (weight, bias) = w.split_at(d.min(w.len()));
        match self.config.kind {
            NormKind::LayerNorm => layer_norm(x, weight, bias, self.config.eps, y),
            NormKind::RmsNorm => rms_norm(x, weight, self.config.eps, y),
        }
    }
}

impl<W: AsRef<[f32]> + AsMut<[f32]>> Norm<W> {
    /// Fills `weights` from PyTorch's `weight` (d) and `bias` (d, LayerNorm only; must be `None`
    /// for RMSNorm).
    pub fn from_torch(
        config: NormConfig,
        weight: &[f32],
        bias: Option<&[f32]>,
        mut weights: W,
    ) -> Result<Self> {
        check_len("norm weight", config.d, weight.len())?;
        check_len("norm weights", config.weights_len(), weights.as_ref().len())?;
        let out = weights.as_mut();
        out[..config.d].copy_from_slice(weight);
        match (config.kind, bias) {
            (NormKind::LayerNorm, Some(b)) => {
                check_len("norm bias", config.d, b.len())?;
                out[config.d..].copy_from_slice(b);
            }
            (NormKind::RmsNorm, None) => {}
            _ => {
                return Err(Error::InvalidConfig {
                    what: "norm stage",
                    reason: "a bias must be given exactly for LayerNorm",
                })
            }
        }
        Norm::from_weights(config, weights)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// LayerNorm in f64 by its definition (one pass for the sums of x and x², then the
    /// variance as E[x²] − μ², which is exact enough in f64 for these inputs).
    fn layer_norm_ref(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
        let n = x.len() as f64;
        let (s, s2) = x.iter().fold((0.0, 0.0), |(s, s2), v| (s + v, s2 + v * v));
        let mean = s / n;
        let var = s2 / n - mean * mean;
        x.iter()
            .zip(w)
            .zip(b)
            .map(|((v, w), b)| (v - mean) / (var + eps).sqrt() * w + b)
            .collect()
    }

    fn rms_norm_ref(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        x.iter()
            .zip(w)
            .map(|(v, w)| v / (ms + eps).sqrt() * w)
            .collect()
    }

    fn data(n: usize, seed: u32, offset: f32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|k| {
                let h = (k as u32 ^ seed).wrapping_mul(2654435761) % 10007;
                offset + scale * (h as f32 / 10007.0 - 0.5)
            })
            .collect()
    }

    #[test]
    fn layer_norm_matches_f64_reference() {
        for (d, offset, scale) in [
            (1, 0.0, 1.0),
            (3, 0.5, 2.0),
            (16, 0.0, 1.0),
            (64, 100.0, 0.01), // |μ| ≫ σ: the two-pass variance keeps its precision
            (33, -3.0, 1e3),
        ] {
            let x = data(d, 1, offset, scale);
            let w = data(d, 2, 1.0, 0.5);
            let b = data(d, 3, 0.0, 0.2);
            let mut y = vec![0.0f32; d];
            layer_norm(&x, &w, &b, 1e-5, &mut y);
            let f = |v: &[f32]| v.iter().map(|v| *v as f64).collect::<Vec<_>>();
            let want = layer_norm_ref(&f(&x), &f(&w), &f(&b), 1e-5);
            for (k, (g, r)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - r).abs() < 2e-6 * (1.0 + r.abs()) * (d as f64).sqrt(),
                    "d={d} k={k}: {g} vs {r}"
                );
            }
            let norm = Norm::from_torch(
                NormConfig {
                    kind: NormKind::LayerNorm,
                    d,
                    eps: 1e-5,
                },
                &w,
                Some(&b),
                vec![0.0; 2 * d],
            )
            .unwrap();
            let mut y2 = vec![0.0f32; d];
            norm.apply(&x, &mut y2);
            assert_eq!(y, y2);
        }
        // A constant input: σ² = 0, so y = b exactly (ε keeps it finite).
        let mut y = [9.0f32; 4];
        layer_norm(&[2.5; 4], &[3.0; 4], &[0.25; 4], 1e-5, &mut y);
        assert_eq!(y, [0.25; 4]);
    }

    #[test]
    fn rms_norm_matches_f64_reference() {
        for (d, offset, scale) in [(1, 0.3, 1.0), (8, 0.0, 1.0), (48, 5.0, 3.0)] {
            let x = data(d, 4, offset, scale);
            let w = data(d, 5, 1.0, 0.5);
            let mut y = vec![0.0f32; d];
            rms_norm(&x, &w, 1e-6, &mut y);
            let f = |v: &[f32]| v.iter().map(|v| *v as f64).collect::<Vec<_>>();
            let want = rms_norm_ref(&f(&x), &f(&w), 1e-6);
            for (g, r) in y.iter().zip(&want) {
                assert!((*g as f64 - r).abs() < 2e-6 * (1.0 + r.abs()), "{g} vs {r}");
            }
            let norm = Norm::from_weights(
                NormConfig {
                    kind: NormKind::RmsNorm,
                    d,
                    eps: 1e-6,
                },
                w.clone(),
            )
            .unwrap();
            let mut y2 = vec![0.0f32; d];
            norm.apply(&x, &mut y2);
            assert_eq!(y, y2);
        }
        let mut y = [1.0f32; 3];
        rms_norm(&[0.0; 3], &[1.0; 3], 1e-5, &mut y);
        assert_eq!(y, [0.0; 3]);
    }

    #[test]
    fn bad_configs_and_lengths() {
        let c = |kind, d, eps| NormConfig { kind, d, eps };
        assert!(Norm::from_weights(c(NormKind::LayerNorm, 0, 1e-5), vec![]).is_err());
        assert!(Norm::from_weights(c(NormKind::LayerNorm, 2, f32::NAN), vec![0.0; 4]).is_err());
        assert!(Norm::from_weights(c(NormKind::LayerNorm, 2, -1.0), vec![0.0; 4]).is_err());
        assert!(Norm::from_weights(c(NormKind::LayerNorm, 2, 1e-5), vec![0.0; 3]).is_err());
        assert!(Norm::from_weights(c(NormKind::RmsNorm, 2, 1e-5), vec![0.0; 4]).is_err());
        assert!(
            Norm::from_weights(c(NormKind::RmsNorm, 2, 1e-5), vec![1.0, f32::INFINITY]).is_err()
        );
        let lc = c(NormKind::LayerNorm, 2, 1e-5);
        assert!(Norm::from_torch(lc, &[1.0, 1.0], None, vec![0.0; 4]).is_err());
        let rc = c(NormKind::RmsNorm, 2, 1e-5);
        assert!(Norm::from_torch(rc, &[1.0, 1.0], Some(&[0.0, 0.0]), vec![0.0; 2]).is_err());
        assert!(Norm::from_torch(rc, &[1.0], None, vec![0.0; 2]).is_err());
        // Mismatched slice lengths truncate instead of panicking.
        let mut y = [0.0f32; 2];
        layer_norm(&[1.0, 2.0, 3.0], &[1.0], &[0.0, 0.0], 1e-5, &mut y);
        rms_norm(&[], &[1.0], 1e-5, &mut y);
        let n = Norm::from_weights(rc, vec![1.0, 1.0]).unwrap();
        n.apply(&[1.0], &mut y);
        // A width whose 2d overflows is refused, not a panic (nor an unwritten output).
        assert!(
            Norm::from_weights(c(NormKind::LayerNorm, usize::MAX / 2 + 1, 1e-5), vec![]).is_err()
        );
    }

    /// ε = 0 (PyTorch allows it) on a constant frame, e.g. digital silence: the centred values
    /// are all zero, so the output is the bias (LayerNorm) or zero (RMSNorm), not NaN.
    #[test]
    fn zero_eps_on_a_constant_frame_is_finite() {
        let mut y = [9.0f32; 3];
        layer_norm(&[0.3; 3], &[2.0; 3], &[0.5, -1.0, 0.0], 0.0, &mut y);
        assert_eq!(y, [0.5, -1.0, 0.0]);
        rms_norm(&[0.0; 3], &[2.0; 3], 0.0, &mut y);
        assert_eq!(y, [0.0; 3]);
        // a non-constant frame is unchanged by the guard
        layer_norm(&[1.0, 3.0], &[1.0; 2], &[0.0; 2], 0.0, &mut y[..2]);
        assert_eq!(&y[..2], &[-1.0, 1.0]);
    }
}
