//! SysTick as an instruction counter under QEMU `-icount shift=0`.
//!
//! With `-icount shift=0` QEMU advances virtual time by exactly 1 ns per executed guest
//! instruction, and SysTick (core clock) counts virtual time at the board's clock (25 MHz on
//! mps2-an386), so one tick is a fixed number of instructions. The program measures that
//! number with a loop of known length ([`spin`]) instead of assuming the board's clock.

use cortex_m::peripheral::{syst::SystClkSource, SYST};

/// SysTick's counter is 24 bits wide.
const MASK: u32 = 0x00FF_FFFF;

/// A free-running SysTick.
pub struct Timer {
    _syst: SYST,
}

impl Timer {
    /// Starts SysTick on the core clock, counting down from 2^24 - 1, without interrupts.
    pub fn new(mut syst: SYST) -> Self {
        syst.disable_interrupt();
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(MASK);
        syst.clear_current();
        syst.enable_counter();
        Timer { _syst: syst }
    }

    /// Ticks elapsed while running `f` (`f` must take fewer than 2^24 ticks: about 670 M
    /// instructions at 40 instructions a tick).
    pub fn time(&self, f: impl FnOnce()) -> u32 {
        let start = now();
        f();
        elapsed(start, now())
    }
}

/// SysTick's current value (counts down).
#[inline(always)]
pub fn now() -> u32 {
    SYST::get_current()
}

/// Ticks from the reading `start` to the later reading `end` (one wrap at most).
#[inline(always)]
pub fn elapsed(start: u32, end: u32) -> u32 {
    start.wrapping_sub(end) & MASK
}

/// Runs exactly `2·n` instructions (`subs` + `bne` per iteration; `n ≥ 1`) plus the call.
#[inline(never)]
pub fn spin(n: u32) {
    // SAFETY: a register-only countdown loop; touches no memory.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {0}, {0}, #1",
            "bne 2b",
            inout(reg) n => _,
            options(nomem, nostack),
        );
    }
}
