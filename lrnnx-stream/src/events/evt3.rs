//! Prophesee EVT 3.0 decoder (`.raw` recordings of Metavision cameras: IMX636, GenX320, ...).
//!
//! Written from Prophesee's public description of the format. A file is an optional ASCII
//! header (lines starting with `%`, e.g. `% evt 3.0`, `% format EVT3;height=720;width=1280`,
//! `% geometry 1280x720`, ended by `% end`) followed by 16-bit little-endian words. The top 4
//! bits of a word are its type, the low 12 its payload:
//!
//! | type | name          | payload                                  | effect on the decoder state |
//! |------|---------------|------------------------------------------|-----------------------------|
//! | 0x0  | EVT_ADDR_Y    | `[11]` system type, `[10:0]` y           | row ← y                      |
//! | 0x2  | EVT_ADDR_X    | `[11]` polarity, `[10:0]` x              | one event (x, row, polarity, time) |
//! | 0x3  | VECT_BASE_X   | `[11]` polarity, `[10:0]` x              | base x ← x, vector polarity ← polarity |
//! | 0x4  | VECT_12       | `[11:0]` valid mask                      | an event at base x + i for each set bit i; base x += 12 |
//! | 0x5  | VECT_8        | `[7:0]` valid mask                       | as VECT_12 over 8 bits; base x += 8 |
//! | 0x6  | EVT_TIME_LOW  | `[11:0]` low 12 bits of the 24-bit time  | time ← high·2¹² + low        |
//! | 0x7  | CONTINUED_4   | `[3:0]` extra data for the previous word | counted, no event            |
//! | 0x8  | EVT_TIME_HIGH | `[11:0]` high 12 bits of the 24-bit time | time ← high·2¹² (low ← 0)    |
//! | 0xA  | EXT_TRIGGER   | `[11:8]` channel, `[0]` edge             | one [`Trigger`]              |
//! | 0xE  | OTHERS        | `[11:0]` subtype (vendor extensions)     | counted, no event            |
//! | 0xF  | CONTINUED_12  | `[11:0]` extra data for the previous word| counted, no event            |
//!
//! Types 0x1, 0x9, 0xB, 0xC and 0xD are reserved: a reserved word is reported as corrupt data
//! with its byte offset.
//!
//! **Time.** Timestamps are in µs on a 24-bit counter that wraps every 2²⁴ µs ≈ 16.8 s. The
//! decoder unrolls the wraps: when EVT_TIME_HIGH goes *down* by at least half its range
//! (2048 steps of 4096 µs), the counter wrapped and 2²⁴ µs are added from then on. A smaller
//! step down is kept as it is (a non-monotonic timestamp; the event pipeline's
//! [`Backwards`](super::Backwards) policy decides what to do with it).
//!
//! **Incomplete state.** Events that arrive before the first EVT_TIME_HIGH (time unknown),
//! before the first EVT_ADDR_Y (row unknown), or vector words before the first VECT_BASE_X are
//! skipped and counted in [`Evt3Stats`], as a camera stream may start mid-way.
//!
//! **Errors.** An odd number of data bytes (a cut word), a reserved word type, or an event
//! outside the sensor (when its size is known from the header or [`Evt3Options`]) is an error
//! naming the byte offset. Only little-endian streams (the cameras' default) are supported.

use super::{Event, EventError, Format, Recording, Trigger};

/// 2²⁴ µs, the period of the 24-bit time counter.
pub const TIME_LOOP_US: i64 = 1 << 24;

/// The largest sensor the format can address (11-bit coordinates).
pub const MAX_SIZE: u16 = 2048;

/// The `%` header of a `.raw` file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// The header lines (without the leading `% ` and the line end).
    pub lines: Vec<String>,
    /// Byte offset of the first data word.
    pub data_start: usize,
    /// Sensor width, from `format ...;width=W` or `geometry WxH`.
    pub width: Option<u16>,
    /// Sensor height, from `format ...;height=H` or `geometry WxH`.
    pub height: Option<u16>,
}

impl Header {
    /// Reads the header lines at the start of `bytes` (none if it does not start with `%`):
    /// lines starting with `%`, up to and including `% end`.
    pub fn parse(bytes: &[u8]) -> Result<Header, EventError> {
        let mut h = Header::default();
        let mut pos = 0;
        while bytes.get(pos) == Some(&b'%') {
            let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
                return Err(EventError::Truncated {
                    format: Format::Evt3,
                    what: "header line (no line end)".into(),
                    offset: pos as u64,
                    needed: (bytes.len() - pos + 1) as u64,
                    available: (bytes.len() - pos) as u64,
                });
            };
            let raw = &bytes[pos + 1..pos + nl];
            let line = std::str::from_utf8(raw)
                .map_err(|_| EventError::Corrupt {
                    format: Format::Evt3,
                    what: "header line is not text".into(),
                    offset: pos as u64,
                })?
                .trim()
                .to_owned();
            pos += nl + 1;
            let done = line == "end";
            h.read_line(&line, pos)?;
            h.lines.push(line);
            if done {
                break;
            }
        }
        h.data_start = pos;
        Ok(h)
    }

    fn read_line(&mut self, line: &str, pos: usize) -> Result<(), EventError> {
        let bad = |what: String| EventError::Corrupt {
            format: Format::Evt3,
            what,
            offset: pos as u64,
        };
        let size = |v: &str, key: &str| -> Result<u16, EventError> {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|&s| s > 0 && s <= MAX_SIZE)
                .ok_or_else(|| bad(format!("header: {key} = {v:?} (expected 1..=2048)")))
        };
        if let Some(f) = line.strip_prefix("format ") {
            for part in f.split(';').skip(1) {
                match part.split_once('=') {
                    Some(("width", v)) => self.width = Some(size(v, "width")?),
                    Some(("height", v)) => self.height = Some(size(v, "height")?),
                    _ => {}
                }
            }
        } else if let Some(g) = line.strip_prefix("geometry ") {
            let (w, hh) = g
                .split_once('x')
                .ok_or_else(|| bad(format!("header: geometry {g:?} (expected WxH)")))?;
            self.width = Some(size(w, "geometry width")?);
            self.height = Some(size(hh, "geometry height")?);
        }
        Ok(())
    }

    /// The value of the `evt` or `format` line (e.g. `3.0`, `EVT3;height=720;width=1280`).
    pub fn declared_format(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| {
            l.strip_prefix("evt ")
                .or_else(|| l.strip_prefix("format "))
                .map(str::trim)
        })
    }

    /// Whether the header declares EVT 3.0 (`evt 3.0`, or a `format` starting with `EVT3`).
    pub fn is_evt3(&self) -> bool {
        self.lines.iter().any(|l| {
            l.strip_prefix("evt ").map(str::trim) == Some("3.0")
                || l.strip_prefix("format ")
                    .is_some_and(|f| f.trim().to_ascii_uppercase().starts_with("EVT3"))
        })
    }
}

/// Decoding options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evt3Options {
    /// Sensor width, overriding the header's (needed to check coordinates in headerless
    /// streams). Without either, the recording's width is the largest x seen + 1.
    pub width: Option<u16>,
    /// Sensor height, as `width`.
    pub height: Option<u16>,
}

/// Word counts of a decoded stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evt3Stats {
    /// 16-bit data words read.
    pub words: u64,
    /// Events skipped because no EVT_TIME_HIGH had been seen yet.
    pub skipped_no_time: u64,
    /// Events skipped because no EVT_ADDR_Y had been seen yet.
    pub skipped_no_row: u64,
    /// Vector words skipped because no VECT_BASE_X had been seen yet.
    pub skipped_no_base: u64,
    /// Wrap-arounds of the 24-bit time counter.
    pub time_loops: u64,
    /// OTHERS words.
    pub others: u64,
    /// CONTINUED_4 and CONTINUED_12 words.
    pub continued: u64,
}

/// Decodes a whole EVT 3.0 stream (header optional) held in memory.
pub fn decode(bytes: &[u8], options: &Evt3Options) -> Result<Recording, EventError> {
    decode_with_stats(bytes, options).map(|(r, _)| r)
}

/// [`decode`], also returning the word counts.
pub fn decode_with_stats(
    bytes: &[u8],
    options: &Evt3Options,
) -> Result<(Recording, Evt3Stats), EventError> {
    let header = Header::parse(bytes)?;
    let width = options.width.or(header.width);
    let height = options.height.or(header.height);
    let data = &bytes[header.data_start..];
    if data.len() % 2 != 0 {
        let off = bytes.len() - 1;
        return Err(EventError::Truncated {
            format: Format::Evt3,
            what: "16-bit word".into(),
            offset: off as u64,
            needed: 2,
            available: 1,
        });
    }
    let (wmax, hmax) = (width.unwrap_or(MAX_SIZE), height.unwrap_or(MAX_SIZE));
    let mut d = Decoder::default();
    let mut events = Vec::with_capacity(data.len() / 2);
    let mut triggers = Vec::new();
    let (mut seen_w, mut seen_h) = (0u16, 0u16);
    for (i, w) in data.chunks_exact(2).enumerate() {
        let word = u16::from_le_bytes([w[0], w[1]]);
        let offset = header.data_start + 2 * i;
        let before = events.len();
        d.word(word, offset, &mut events, &mut triggers)?;
        for e in &events[before..] {
            if e.x >= wmax || e.y >= hmax {
                return Err(EventError::Corrupt {
                    format: Format::Evt3,
                    what: format!(
                        "event at ({}, {}) lies outside the {wmax}x{hmax} sensor",
                        e.x, e.y
                    ),
                    offset: offset as u64,
                });
            }
            seen_w = seen_w.max(e.x + 1);
            seen_h = seen_h.max(e.y + 1);
        }
    }
    d.stats.words = (data.len() / 2) as u64;
    let rec = Recording {
        format: Format::Evt3,
        width: width.unwrap_or(seen_w.max(1)),
        height: height.unwrap_or(seen_h.max(1)),
        events,
        triggers,
    };
    Ok((rec, d.stats))
}

/// The decoder state carried from word to word.
#[derive(Debug, Default)]
struct Decoder {
    row: Option<u16>,
    base_x: Option<u16>,
    vect_on: bool,
    /// The last EVT_TIME_HIGH value (12 bits), once seen.
    high: Option<u16>,
    low: u16,
    loops: i64,
    stats: Evt3Stats,
}

impl Decoder {
    fn time(&self) -> Option<i64> {
        self.high
            .map(|h| self.loops * TIME_LOOP_US + ((h as i64) << 12) + self.low as i64)
    }

    /// One event at column `x` with the current row and time (skipped and counted when those
    /// are unknown).
    fn emit(&mut self, x: u16, on: bool, events: &mut Vec<Event>) {
        match (self.time(), self.row) {
            (None, _) => self.stats.skipped_no_time += 1,
            (_, None) => self.stats.skipped_no_row += 1,
            (Some(t), Some(y)) => events.push(Event { t, x, y, on }),
        }
    }

    fn vector(&mut self, mask: u16, bits: u16, events: &mut Vec<Event>) {
        let Some(base) = self.base_x else {
            self.stats.skipped_no_base += 1;
            return;
        };
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as u16;
            self.emit(base.saturating_add(i), self.vect_on, events);
            m &= m - 1;
        }
        self.base_x = Some(base.saturating_add(bits));
    }

    fn word(
        &mut self,
        word: u16,
        offset: usize,
        events: &mut Vec<Event>,
        triggers: &mut Vec<Trigger>,
    ) -> Result<(), EventError> {
        let payload = word & 0x0fff;
        match word >> 12 {
            0x0 => self.row = Some(payload & 0x07ff),
            0x2 => self.emit(payload & 0x07ff, payload & 0x0800 != 0, events),
            0x3 => {
                self.base_x = Some(payload & 0x07ff);
                self.vect_on = payload & 0x0800 != 0;
            }
            0x4 => self.vector(payload, 12, events),
            0x5 => self.vector(payload & 0x00ff, 8, events),
            0x6 => self.low = payload,
            0x7 | 0xf => self.stats.continued += 1,
            0x8 => {
                if let Some(prev) = self.high {
                    if prev >= payload && prev - payload >= 2048 {
                        self.loops += 1;
                        self.stats.time_loops += 1;
                    }
                }
                self.high = Some(payload);
                self.low = 0;
            }
            0xa => match self.time() {
                Some(t) => triggers.push(Trigger {
                    t,
                    channel: (payload >> 8) as u8,
                    rising: payload & 1 != 0,
                }),
                None => self.stats.skipped_no_time += 1,
            },
            0xe => self.stats.others += 1,
            ty => {
                return Err(EventError::Corrupt {
                    format: Format::Evt3,
                    what: format!("reserved word type {ty:#x} (word {word:#06x})"),
                    offset: offset as u64,
                })
            }
        }
        Ok(())
    }
}
