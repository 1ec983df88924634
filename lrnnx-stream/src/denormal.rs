//! Flush-to-zero for the duration of a processing call, so that a recurrence decaying through
//! the subnormal range (a long silence) costs no more than one on signal.
//!
//! Subnormal floats (|x| < 2⁻¹²⁶ ≈ 1.2e−38) take a slow microcode path on most x86 CPUs,
//! often 10–100× slower per operation. A linear recurrence `h ← λh` on silence decays into
//! that range and stays there for hundreds of steps. [`FlushToZero`] sets the CPU's
//! flush-to-zero and denormals-are-zero modes (x86_64 MXCSR bits FTZ 15 and DAZ 6; AArch64
//! FPCR bit FZ 24) and restores the previous mode when dropped. On other targets it does
//! nothing, and [`flush_subnormals`] (a state floor) keeps the stored state clean instead.

/// Restores the floating-point control register on drop.
#[must_use = "flush-to-zero lasts only while the guard lives"]
pub struct FlushToZero {
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    saved: u64,
}

impl FlushToZero {
    /// Whether this target has a hardware flush-to-zero mode that [`FlushToZero::enable`] sets.
    pub const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

    /// Turns flush-to-zero (and denormals-are-zero where the CPU has it) on until the guard is
    /// dropped.
    #[inline]
    pub fn enable() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut csr: u32 = 0;
            // SAFETY: stmxcsr/ldmxcsr only read/write the SSE control register (always present
            // on x86_64); setting FTZ/DAZ changes rounding of subnormals only, no UB.
            #[allow(unsafe_code)]
            unsafe {
                core::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
                let new = csr | (1 << 15) | (1 << 6);
                core::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, readonly));
            }
            FlushToZero { saved: csr as u64 }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let fpcr: u64;
            // SAFETY: reading and writing FPCR (the floating-point control register); FZ only
            // changes how subnormals are handled.
            #[allow(unsafe_code)]
            unsafe {
                core::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
                core::arch::asm!("msr fpcr, {}", in(reg) fpcr | (1 << 24), options(nomem, nostack));
            }
            FlushToZero { saved: fpcr }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            FlushToZero { saved: 0 }
        }
    }
}

impl Drop for FlushToZero {
    #[inline]
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        {
            let csr = self.saved as u32;
            // SAFETY: restores the value read in `enable`.
            #[allow(unsafe_code)]
            unsafe {
                core::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            // SAFETY: restores the value read in `enable`.
            #[allow(unsafe_code)]
            unsafe {
                core::arch::asm!("msr fpcr, {}", in(reg) self.saved, options(nomem, nostack));
            }
        }
    }
}

/// Sets every subnormal value of `state` to zero: `x ← 0` where `0 < |x| < 2⁻¹²⁶`.
#[inline]
pub fn flush_subnormals(state: &mut [f32]) {
    for v in state {
        if v.abs() < f32::MIN_POSITIVE {
            *v = 0.0;
        }
    }
}

/// Whether any value of `v` is subnormal.
pub fn has_subnormal(v: &[f32]) -> bool {
    v.iter().any(|x| x.is_subnormal())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x·0.5` of the smallest normal is subnormal without the guard and 0 with it; the mode
    /// is restored after the guard.
    #[test]
    fn guard_flushes_and_restores() {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        let half = std::hint::black_box(0.5f32);
        assert!((tiny * half).is_subnormal());
        if FlushToZero::SUPPORTED {
            let g = FlushToZero::enable();
            assert_eq!(std::hint::black_box(tiny) * std::hint::black_box(half), 0.0);
            drop(g);
        }
        assert!((std::hint::black_box(tiny) * std::hint::black_box(half)).is_subnormal());
        let mut s = [1.0, 1e-40, -1e-41, 0.0, f32::MIN_POSITIVE];
        assert!(has_subnormal(&s));
        flush_subnormals(&mut s);
        assert_eq!(s, [1.0, 0.0, 0.0, 0.0, f32::MIN_POSITIVE]);
    }
}
