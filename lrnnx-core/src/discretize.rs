//! Discretizers for a diagonal state matrix `A` (one eigenvalue at a time, real or complex).
//!
//! A continuous-time diagonal SSM `h' = A h + B u` sampled with step `δ` becomes
//! `h_t = Ā h_{t-1} + γ̄ B u_t`. Each rule below returns the pair `(Ā, γ̄)`; the layer then
//! scales its input matrix row-wise by `γ̄` (`B̄ = γ̄ ⊙ B`).
//!
//! The LTI layers discretize once at construction, in `f64`, so the stored `f32` weights are
//! correctly rounded. The time-varying layers discretize on every step and use the `f32`
//! functions of their own modules.

use num_complex::Complex64;

/// How a continuous-time diagonal SSM is turned into a recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Discretization {
    /// Zero-order hold: `Ā = exp(δA)`, `γ̄ = (exp(δA) − 1)/A`.
    Zoh,
    /// Bilinear (Tustin): `Ā = (1 + δA/2)/(1 − δA/2)`, `γ̄ = δ/(1 − δA/2)`.
    Bilinear,
    /// Dirac (impulse) input: `Ā = exp(δA)`, `γ̄ = 1`.
    Dirac,
    /// Event-driven zero-order hold with a per-step time scale `τ` (the time since the previous
    /// event): `Ā = exp(δτA)`, `γ̄ = (exp(δτA) − 1)/A`.
    Async,
    /// No discretization: `Ā = A`, `γ̄ = 1` (A is already a discrete-time eigenvalue).
    None,
    /// Mamba's simplified rule: `Ā = exp(δA)`, `γ̄ = δ` (Euler input scaling).
    Mamba,
    /// **Compatibility only.** lrnnx's LTI "bilinear" as coded (spec §2.2, §18.1), with the signs
    /// inverted: `Ā = (1 − δA/2)/(1 + δA/2)`, `γ̄ = δ/(1 + δA/2)`. For `Re A < 0` this gives
    /// `|Ā| > 1` (an unstable filter). Use it only to reproduce an lrnnx S5-LTI checkpoint that
    /// was trained with `discretization="bilinear"`.
    LrnnxInvertedBilinear,
}

impl Discretization {
    /// The lrnnx name of the rule (`"zoh"`, `"bilinear"`, `"dirac"`, `"async"`,
    /// `"no_discretization"`, `"mamba"`), or `"lrnnx_inverted_bilinear"` for the compatibility rule.
    pub const fn name(self) -> &'static str {
        match self {
            Discretization::Zoh => "zoh",
            Discretization::Bilinear => "bilinear",
            Discretization::Dirac => "dirac",
            Discretization::Async => "async",
            Discretization::None => "no_discretization",
            Discretization::Mamba => "mamba",
            Discretization::LrnnxInvertedBilinear => "lrnnx_inverted_bilinear",
        }
    }

    /// Parses an lrnnx discretization name. `"bilinear"` is always the correct Tustin rule; the
    /// inverted lrnnx rule is only reachable by its explicit name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "zoh" => Discretization::Zoh,
            "bilinear" => Discretization::Bilinear,
            "dirac" => Discretization::Dirac,
            "async" => Discretization::Async,
            "no_discretization" | "none" => Discretization::None,
            "mamba" => Discretization::Mamba,
            "lrnnx_inverted_bilinear" => Discretization::LrnnxInvertedBilinear,
            _ => return Option::None,
        })
    }
}

/// `(Ā, γ̄)` of one eigenvalue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Discretized {
    /// Discrete-time eigenvalue `Ā`.
    pub a_bar: Complex64,
    /// Input scale `γ̄` (multiplies the row of `B` that feeds this state).
    pub gamma: Complex64,
}

/// `(exp(z) − 1)/a` computed without cancellation for small `z = δA`: `δ·(exp(z) − 1)/z`.
fn expm1_over(z: Complex64, dt: f64) -> Complex64 {
    if z.norm() < 1e-4 {
        // Taylor series of (e^z − 1)/z = 1 + z/2 + z²/6 + z³/24; error below 1e-17 here.
        dt * (1.0 + z * (0.5 + z * (1.0 / 6.0 + z / 24.0)))
    } else {
        dt * (z.exp() - 1.0) / z
    }
}

/// Zero-order hold: `Ā = exp(δA)`, `γ̄ = (exp(δA) − 1)/A` (`= δ` in the limit `A → 0`).
pub fn zoh(a: Complex64, dt: f64) -> Discretized {
    let z = a * dt;
    Discretized {
        a_bar: z.exp(),
        gamma: expm1_over(z, dt),
    }
}

/// Bilinear (Tustin): `Ā = (1 + δA/2)/(1 − δA/2)`, `γ̄ = δ/(1 − δA/2)`.
pub fn bilinear(a: Complex64, dt: f64) -> Discretized {
    let half = a * (dt / 2.0);
    let den = Complex64::new(1.0, 0.0) - half;
    Discretized {
        a_bar: (1.0 + half) / den,
        gamma: dt / den,
    }
}

/// lrnnx's inverted LTI "bilinear" (compatibility only, see
/// [`Discretization::LrnnxInvertedBilinear`]): `Ā = (1 − δA/2)/(1 + δA/2)`, `γ̄ = δ/(1 + δA/2)`.
pub fn lrnnx_inverted_bilinear(a: Complex64, dt: f64) -> Discretized {
    let half = a * (dt / 2.0);
    let den = 1.0 + half;
    Discretized {
        a_bar: (Complex64::new(1.0, 0.0) - half) / den,
        gamma: dt / den,
    }
}

/// Dirac: `Ā = exp(δA)`, `γ̄ = 1`.
pub fn dirac(a: Complex64, dt: f64) -> Discretized {
    Discretized {
        a_bar: (a * dt).exp(),
        gamma: Complex64::new(1.0, 0.0),
    }
}

/// Event-driven zero-order hold over the interval `δτ`: `Ā = exp(δτA)`, `γ̄ = (exp(δτA) − 1)/A`.
pub fn async_zoh(a: Complex64, dt: f64, tau: f64) -> Discretized {
    zoh(a, dt * tau)
}

/// No discretization: `Ā = A`, `γ̄ = 1`.
pub fn none(a: Complex64) -> Discretized {
    Discretized {
        a_bar: a,
        gamma: Complex64::new(1.0, 0.0),
    }
}

/// Mamba's rule: `Ā = exp(δA)`, `γ̄ = δ`.
pub fn mamba(a: Complex64, dt: f64) -> Discretized {
    Discretized {
        a_bar: (a * dt).exp(),
        gamma: Complex64::new(dt, 0.0),
    }
}

/// Applies `rule` with step `dt` (and `tau` for [`Discretization::Async`]) to eigenvalue `a`.
pub fn discretize(rule: Discretization, a: Complex64, dt: f64, tau: f64) -> Discretized {
    match rule {
        Discretization::Zoh => zoh(a, dt),
        Discretization::Bilinear => bilinear(a, dt),
        Discretization::Dirac => dirac(a, dt),
        Discretization::Async => async_zoh(a, dt, tau),
        Discretization::None => none(a),
        Discretization::Mamba => mamba(a, dt),
        Discretization::LrnnxInvertedBilinear => lrnnx_inverted_bilinear(a, dt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Complex64, b: Complex64, tol: f64) -> bool {
        (a - b).norm() <= tol * (1.0 + b.norm())
    }

    /// Reference: integrate h' = a h + 1 over [0, dt] from h = 0 with many small Euler-midpoint
    /// steps; the ZOH input gain is h(dt), and Ā is the homogeneous solution at dt.
    #[test]
    fn zoh_matches_numerical_integration() {
        let a = Complex64::new(-0.7, 3.0);
        let dt = 0.05;
        let n = 200_000;
        let h = dt / n as f64;
        let (mut x, mut g) = (Complex64::new(1.0, 0.0), Complex64::new(0.0, 0.0));
        for _ in 0..n {
            let kx = a * (x + 0.5 * h * a * x);
            let kg = a * (g + 0.5 * h * (a * g + 1.0)) + 1.0;
            x += h * kx;
            g += h * kg;
        }
        let d = zoh(a, dt);
        assert!(close(d.a_bar, x, 1e-9), "{} vs {}", d.a_bar, x);
        assert!(close(d.gamma, g, 1e-9), "{} vs {}", d.gamma, g);
    }

    #[test]
    fn zoh_small_step_has_no_cancellation() {
        let a = Complex64::new(-0.5, 0.0);
        let dt = 1e-7;
        // (e^{aδ} − 1)/a = δ(1 + aδ/2 + ...)
        let want = dt * (1.0 + a.re * dt / 2.0);
        assert!((zoh(a, dt).gamma.re - want).abs() < 1e-20);
    }

    #[test]
    fn tustin_is_stable_and_inverted_rule_is_not() {
        let a = Complex64::new(-0.5, 2.0);
        let dt = 0.1;
        let t = bilinear(a, dt);
        let inv = lrnnx_inverted_bilinear(a, dt);
        assert!(t.a_bar.norm() < 1.0);
        assert!(inv.a_bar.norm() > 1.0);
        // Tustin is the (1,1) Padé approximant of exp: error O((δa)^3).
        assert!((t.a_bar - (a * dt).exp()).norm() < (a * dt).norm().powi(3));
        // The inverted rule is the Tustin rule applied to −A.
        let back = bilinear(-a, dt);
        assert!(close(inv.a_bar, back.a_bar, 1e-12));
    }

    #[test]
    fn async_is_zoh_over_scaled_interval() {
        let a = Complex64::new(-1.0, 0.5);
        assert_eq!(async_zoh(a, 0.1, 3.0), zoh(a, 0.1 * 3.0));
    }

    #[test]
    fn names_round_trip() {
        for d in [
            Discretization::Zoh,
            Discretization::Bilinear,
            Discretization::Dirac,
            Discretization::Async,
            Discretization::None,
            Discretization::Mamba,
            Discretization::LrnnxInvertedBilinear,
        ] {
            assert_eq!(Discretization::from_name(d.name()), Some(d));
        }
        assert_eq!(Discretization::from_name("tustin"), Option::None);
    }
}
