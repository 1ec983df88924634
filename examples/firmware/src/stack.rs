//! Stack painting: fill the unused stack with a pattern at boot, find the deepest word that
//! changed after the run.
//!
//! cortex-m-rt places the stack at the top of RAM (`_stack_start`, growing down) and the
//! statics below it (ending at `__euninit`), so the stack may use `[__euninit, _stack_start)`.

use core::ptr::{addr_of, read_volatile, write_volatile};

/// The paint: a word the program is unlikely to leave on the stack.
const PAINT: u32 = 0xC5AC_CE55;
/// Bytes below the current stack pointer left unpainted (this function's own calls).
const MARGIN: usize = 64;

extern "C" {
    static __euninit: u32;
    static _stack_start: u32;
}

/// The lowest and the one-past-highest address the stack may use.
fn region() -> (usize, usize) {
    // Only the symbols' addresses are taken; cortex-m-rt's linker script defines both.
    let (lo, hi) = (
        addr_of!(__euninit) as usize,
        addr_of!(_stack_start) as usize,
    );
    ((lo + 3) & !3, hi)
}

/// Paints the free stack below the current stack pointer (minus [`MARGIN`]).
#[inline(never)]
pub fn paint() {
    let (lo, _) = region();
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = lo;
    while p + 4 <= sp - MARGIN {
        // SAFETY: [lo, sp - MARGIN) is the unused part of the stack region: no live data.
        unsafe { write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// The stack's size (the whole region the linker left for it).
pub fn size_bytes() -> usize {
    let (lo, hi) = region();
    hi - lo
}

/// The deepest stack use since [`paint`]: from the top down to the lowest changed word.
pub fn peak_bytes() -> usize {
    let (lo, hi) = region();
    let mut p = lo;
    // SAFETY: reads of the stack region, word-aligned, below the live frames.
    while p < hi && unsafe { read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    hi - p
}
