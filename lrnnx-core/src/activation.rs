//! Elementwise functions with PyTorch's exact definitions (spec §0).

/// Exact (erf) GELU: `x · ½ · (1 + erf(x/√2))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// Logistic sigmoid `σ(x) = 1/(1 + e^{−x})`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// SiLU: `x · σ(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// PyTorch's softplus with threshold 20: `ln(1 + e^x)` for `x ≤ 20`, `x` above.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        libm::log1pf(libm::expf(x))
    }
}

/// softplus in `f64` (for construction-time parameter transforms).
#[inline]
pub fn softplus_f64(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        libm::log1p(libm::exp(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Values from the defining formulas evaluated in f64.
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-2.0) - (-0.045_500_26)).abs() < 1e-6);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((softplus(0.0) - core::f32::consts::LN_2).abs() < 1e-7);
        assert_eq!(softplus(30.0), 30.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
