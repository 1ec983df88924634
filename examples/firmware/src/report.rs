//! The program's output lines: plain semihosting text, or defmt with the `defmt` feature.
//!
//! Text lines (parsed by the host test and the footprint script):
//!
//! ```text
//! calibration instructions=<n> ticks=<n>
//! y <model> <t> <hex f32 bits> ...                       one output sample
//! cost model=<m> stage=<i> kind=<kind> instructions_per_sample=<x.y>
//! cost model=<m> total instructions_per_sample=<x.y> hook=<x.y>
//! stack peak_bytes=<n> region_bytes=<n>
//! ok outputs=<n> (bit-identical to the host)
//! ```

#[cfg(not(feature = "defmt"))]
mod imp {
    use core::fmt::{self, Write};

    /// A line assembled in a fixed buffer, written with one semihosting call.
    struct Line {
        buf: [u8; 256],
        len: usize,
    }

    impl Write for Line {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    fn emit(args: fmt::Arguments) {
        let mut line = Line {
            buf: [0; 256],
            len: 0,
        };
        let _ = line.write_fmt(args);
        let _ = line.write_str("\n");
        if let Ok(mut out) = cortex_m_semihosting::hio::hstdout() {
            let _ = out.write_all(&line.buf[..line.len]);
        }
    }

    /// A value in tenths as `x.y`.
    struct Tenths(i64);

    impl fmt::Display for Tenths {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            let sign = if self.0 < 0 { "-" } else { "" };
            let a = self.0.unsigned_abs();
            write!(f, "{}{}.{}", sign, a / 10, a % 10)
        }
    }

    pub fn output(model: &str, t: usize, y: &[f32]) {
        let mut line = Line {
            buf: [0; 256],
            len: 0,
        };
        let _ = write!(line, "y {} {}", model, t);
        for v in y {
            if write!(line, " {:08x}", v.to_bits()).is_err() {
                break;
            }
        }
        emit(format_args!(
            "{}",
            core::str::from_utf8(&line.buf[..line.len]).unwrap_or("")
        ));
    }

    pub fn calibration(instructions: u64, ticks: u32) {
        emit(format_args!(
            "calibration instructions={} ticks={}",
            instructions, ticks
        ));
    }

    pub fn stage_cost(model: &str, i: usize, kind: &str, tenths: i64) {
        emit(format_args!(
            "cost model={} stage={} kind={} instructions_per_sample={}",
            model,
            i,
            kind,
            Tenths(tenths)
        ));
    }

    pub fn model_cost(model: &str, tenths: i64, hook_tenths: i64) {
        emit(format_args!(
            "cost model={} total instructions_per_sample={} hook={}",
            model,
            Tenths(tenths),
            Tenths(hook_tenths)
        ));
    }

    pub fn stack(peak: usize, region: usize) {
        emit(format_args!(
            "stack peak_bytes={} region_bytes={}",
            peak, region
        ));
    }

    pub fn done(outputs: usize) {
        emit(format_args!(
            "ok outputs={} (bit-identical to the host)",
            outputs
        ));
    }
}

#[cfg(feature = "defmt")]
mod imp {
    pub fn output(model: &str, t: usize, y: &[f32]) {
        let mut bits = [0u32; 64];
        let n = y.len().min(bits.len());
        for (b, v) in bits.iter_mut().zip(y) {
            *b = v.to_bits();
        }
        defmt::println!("y {=str} {=usize} {=[?]:x}", model, t, &bits[..n]);
    }

    pub fn calibration(instructions: u64, ticks: u32) {
        defmt::println!(
            "calibration instructions={=u64} ticks={=u32}",
            instructions,
            ticks
        );
    }

    pub fn stage_cost(model: &str, i: usize, kind: &str, tenths: i64) {
        defmt::println!(
            "cost model={=str} stage={=usize} kind={=str} instructions_per_sample={=i64} tenths",
            model,
            i,
            kind,
            tenths
        );
    }

    pub fn model_cost(model: &str, tenths: i64, hook_tenths: i64) {
        defmt::println!(
            "cost model={=str} total instructions_per_sample={=i64} tenths, hook={=i64} tenths",
            model,
            tenths,
            hook_tenths
        );
    }

    pub fn stack(peak: usize, region: usize) {
        defmt::println!(
            "stack peak_bytes={=usize} region_bytes={=usize}",
            peak,
            region
        );
    }

    pub fn done(outputs: usize) {
        defmt::println!("ok outputs={=usize} (bit-identical to the host)", outputs);
    }
}

pub use imp::*;
