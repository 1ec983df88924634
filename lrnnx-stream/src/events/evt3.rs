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
    /// lines starting with `%`, up to and including `% end`. A header line is printable ASCII
    /// (tabs and `\r` allowed) up to its `\n`: a `%` followed by other bytes before a line end
    /// is a data word whose low byte happens to be `0x25` (e.g. an EVT_TIME_HIGH `0x8025` of a
    /// headerless stream), where the data starts. Printable text running to the end of the
    /// bytes is a header cut off (an error).
    ///
    /// A headerless stream whose first bytes happen to form such a line (`%`, printable
    /// bytes, `\n`) cannot be told from a header and is read as one. Those words all precede
    /// the stream's first EVT_TIME_HIGH (no byte of that type is printable), so their events
    /// would be skipped anyway; what is lost is the row of an EVT_ADDR_Y among them, so events
    /// up to the next EVT_ADDR_Y are skipped (counted in [`Evt3Stats::skipped_no_row`]). A
    /// line ending in the middle of a word leaves an odd number of data bytes: an error.
    pub fn parse(bytes: &[u8]) -> Result<Header, EventError> {
        let mut h = Header::default();
        let mut pos = 0;
        while bytes.get(pos) == Some(&b'%') {
            let rest = &bytes[pos..];
            let text = rest
                .iter()
                .position(|&b| !(b == b'\t' || b == b'\r' || (0x20..0x7f).contains(&b)))
                .unwrap_or(rest.len());
            let nl = match rest.get(text) {
                Some(b'\n') => text,
                Some(_) => break,
                None => {
                    return Err(EventError::Truncated {
                        format: Format::Evt3,
                        what: "header line (no line end)".into(),
                        offset: pos as u64,
                        needed: (bytes.len() - pos + 1) as u64,
                        available: (bytes.len() - pos) as u64,
                    })
                }
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
    if !data.len().is_multiple_of(2) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Word builders, straight from the format table (type in the top 4 bits).
    fn w(ty: u16, payload: u16) -> u16 {
        (ty << 12) | (payload & 0x0fff)
    }

    /// An independent EVT 3.0 *encoder*: time-sorted events and triggers to words, choosing
    /// between single events (EVT_ADDR_X) and vectors (VECT_BASE_X + VECT_12 / VECT_8) at
    /// random, emitting every EVT_TIME_HIGH step of at most 1024 (as a camera does, so that
    /// wrap-arounds are recognisable), and sprinkling OTHERS / CONTINUED words that carry no
    /// events.
    fn encode(events: &[Event], triggers: &[Trigger], rng: &mut Lcg) -> Vec<u16> {
        let mut out = Vec::new();
        let mut high: Option<i64> = None; // absolute (unwrapped) high counter, t >> 12
        let mut low: Option<i64> = None;
        let mut row: Option<u16> = None;
        let set_time =
            |out: &mut Vec<u16>, t: i64, high: &mut Option<i64>, low: &mut Option<i64>| {
                let h = t >> 12;
                if *high != Some(h) {
                    let mut cur = high.unwrap_or(h);
                    while cur + 1024 < h {
                        cur += 1024;
                        out.push(w(0x8, (cur & 0xfff) as u16));
                    }
                    out.push(w(0x8, (h & 0xfff) as u16));
                    *high = Some(h);
                    *low = Some(0);
                }
                if *low != Some(t & 0xfff) {
                    out.push(w(0x6, (t & 0xfff) as u16));
                    *low = Some(t & 0xfff);
                }
            };
        let mut ti = 0;
        let mut i = 0;
        while i < events.len() || ti < triggers.len() {
            if ti < triggers.len() && (i == events.len() || triggers[ti].t <= events[i].t) {
                let tr = triggers[ti];
                set_time(&mut out, tr.t, &mut high, &mut low);
                out.push(w(0xa, ((tr.channel as u16) << 8) | tr.rising as u16));
                ti += 1;
                continue;
            }
            let e = events[i];
            set_time(&mut out, e.t, &mut high, &mut low);
            if row != Some(e.y) {
                out.push(w(0x0, e.y | (rng.below(2) as u16) << 11));
                row = Some(e.y);
            }
            // The run of events sharing t, y and polarity with increasing x.
            let mut j = i + 1;
            while j < events.len()
                && (events[j].t, events[j].y, events[j].on) == (e.t, e.y, e.on)
                && events[j].x > events[j - 1].x
            {
                j += 1;
            }
            if j - i == 1 && rng.below(2) == 0 {
                out.push(w(0x2, e.x | (e.on as u16) << 11));
            } else {
                out.push(w(0x3, e.x | (e.on as u16) << 11));
                let mut base = e.x;
                let mut k = i;
                while k < j {
                    let n = if rng.below(2) == 0 { 12 } else { 8 };
                    let mut mask = 0u16;
                    while k < j && events[k].x < base + n {
                        mask |= 1 << (events[k].x - base);
                        k += 1;
                    }
                    out.push(w(if n == 12 { 0x4 } else { 0x5 }, mask));
                    base += n;
                }
            }
            match rng.below(8) {
                0 => out.push(w(0xe, rng.below(4096) as u16)),
                1 => {
                    out.push(w(0xe, 0x123));
                    out.push(w(0xf, rng.below(4096) as u16));
                    out.push(w(0x7, rng.below(16) as u16));
                }
                _ => {}
            }
            i = j;
        }
        out
    }

    /// Random events on a `width × height` sensor over ~40 s (two wraps of the 24-bit clock),
    /// with bursts sharing a timestamp and a row (vectors), and a few triggers.
    fn sample(rng: &mut Lcg, width: u16, height: u16) -> (Vec<Event>, Vec<Trigger>) {
        let mut events = Vec::new();
        let mut t = 1_000_000i64 + rng.below(5000) as i64;
        while t < 41_000_000 {
            let y = rng.below(height as u64) as u16;
            let on = rng.below(2) == 1;
            let mut x = rng.below(width as u64 / 2) as u16;
            for _ in 0..1 + rng.below(30) {
                events.push(Event { t, x, y, on });
                x += 1 + rng.below(4) as u16;
                if x >= width {
                    break;
                }
            }
            t += match rng.below(1000) {
                0 => 3_000_000 + rng.below(5_000_000) as i64, // a long gap
                1..=300 => 0,                                 // same timestamp, other row
                _ => rng.below(3000) as i64,
            };
        }
        let triggers = (0..20)
            .map(|k| Trigger {
                t: 1_000_000 + k * 2_000_000 + rng.below(1000) as i64,
                channel: rng.below(16) as u8,
                rising: k % 2 == 0,
            })
            .collect();
        (events, triggers)
    }

    fn bytes(header: &str, words: &[u16]) -> Vec<u8> {
        let mut b = header.as_bytes().to_vec();
        for &x in words {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b
    }

    const HEADER: &str = "% evt 3.0\n% format EVT3;height=480;width=640\n% end\n";

    #[test]
    fn encoded_streams_decode_to_the_events_with_every_word_type() {
        let mut rng = Lcg(7);
        let (events, triggers) = sample(&mut rng, 640, 480);
        assert!(events.len() > 10_000);
        let words = encode(&events, &triggers, &mut rng);
        for ty in [0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xa, 0xe, 0xf] {
            assert!(words.iter().any(|&x| x >> 12 == ty), "type {ty:#x} unused");
        }
        let (rec, stats) = decode_with_stats(&bytes(HEADER, &words), &Default::default()).unwrap();
        assert_eq!((rec.width, rec.height), (640, 480));
        assert_eq!(rec.events.len(), events.len());
        assert_eq!(rec.events, events);
        assert_eq!(rec.triggers, triggers);
        assert_eq!(stats.time_loops, 2, "41 s is two wraps of 16.8 s");
        assert_eq!(stats.words, words.len() as u64);
        assert!(stats.others > 0 && stats.continued > 0);
        assert_eq!(
            (
                stats.skipped_no_time,
                stats.skipped_no_row,
                stats.skipped_no_base
            ),
            (0, 0, 0)
        );
        // Without a header: the size comes from the options, or from the events.
        let raw = bytes("", &words);
        let r = decode(
            &raw,
            &Evt3Options {
                width: Some(640),
                height: Some(480),
            },
        )
        .unwrap();
        assert_eq!(r.events, events);
        let r = decode(&raw, &Evt3Options::default()).unwrap();
        let max_x = events.iter().map(|e| e.x).max().unwrap();
        assert_eq!(r.width, max_x + 1);
    }

    #[test]
    fn time_wraps_and_small_steps_back() {
        // high 4095 then 0: a wrap (+2^24); high 100 then 90: a small step back, kept.
        let words = [
            w(0x8, 4095),
            w(0x6, 5),
            w(0x0, 3),
            w(0x2, 1),
            w(0x8, 0),
            w(0x2, 2),
            w(0x8, 100),
            w(0x2, 3),
            w(0x8, 90),
            w(0x6, 7),
            w(0x2, 4),
        ];
        let r = decode(&bytes(HEADER, &words), &Default::default()).unwrap();
        let ts: Vec<i64> = r.events.iter().map(|e| e.t).collect();
        let l = TIME_LOOP_US;
        assert_eq!(ts, [4095 * 4096 + 5, l, l + 100 * 4096, l + 90 * 4096 + 7]);
    }

    #[test]
    fn incomplete_state_is_skipped_and_counted() {
        let words = [
            w(0x0, 3),
            w(0x2, 1), // no time yet
            w(0x8, 1),
            w(0x4, 0xfff), // no base x yet
            w(0x3, 10),
            w(0x5, 0b101), // x = 10, 12
            w(0xa, 0x301), // trigger channel 3 rising
        ];
        let (r, s) = decode_with_stats(&bytes(HEADER, &words), &Default::default()).unwrap();
        assert_eq!(s.skipped_no_time, 1);
        assert_eq!(s.skipped_no_base, 1);
        let xs: Vec<u16> = r.events.iter().map(|e| e.x).collect();
        assert_eq!(xs, [10, 12]);
        assert_eq!(
            r.triggers,
            [Trigger {
                t: 4096,
                channel: 3,
                rising: true
            }]
        );
        let words = [w(0x8, 1), w(0x2, 1)];
        let (r, s) = decode_with_stats(&bytes(HEADER, &words), &Default::default()).unwrap();
        assert!(r.events.is_empty());
        assert_eq!(s.skipped_no_row, 1);
    }

    #[test]
    fn bad_streams_are_errors_with_offsets() {
        let hl = HEADER.len() as u64;
        let good = [w(0x8, 1), w(0x0, 2), w(0x2, 5)];
        // A cut word.
        let mut b = bytes(HEADER, &good);
        b.push(0x12);
        match decode(&b, &Default::default()) {
            Err(EventError::Truncated { offset, .. }) => assert_eq!(offset, hl + 6),
            other => panic!("{other:?}"),
        }
        // Every reserved type.
        for ty in [0x1u16, 0x9, 0xb, 0xc, 0xd] {
            let b = bytes(HEADER, &[good[0], good[1], w(ty, 0), good[2]]);
            match decode(&b, &Default::default()) {
                Err(EventError::Corrupt { offset, what, .. }) => {
                    assert_eq!(offset, hl + 4);
                    assert!(what.contains("reserved"), "{what}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Outside the declared sensor (640 wide): a single event and a vector.
        let b = bytes(HEADER, &[good[0], good[1], w(0x2, 700)]);
        assert!(matches!(
            decode(&b, &Default::default()),
            Err(EventError::Corrupt { offset, .. }) if offset == hl + 4
        ));
        let b = bytes(HEADER, &[good[0], good[1], w(0x3, 635), w(0x4, 0x800)]);
        assert!(matches!(
            decode(&b, &Default::default()),
            Err(EventError::Corrupt { offset, .. }) if offset == hl + 6
        ));
        let b = bytes(
            HEADER,
            &[good[0], w(0x0, 479), good[2], w(0x0, 480), good[2]],
        );
        assert!(matches!(
            decode(&b, &Default::default()),
            Err(EventError::Corrupt { offset, .. }) if offset == hl + 8
        ));
        // Many vectors in a row saturate, never overflow.
        let mut words = vec![good[0], good[1], w(0x3, 2000)];
        words.extend(std::iter::repeat_n(w(0x4, 0), 10_000));
        words.push(w(0x4, 1));
        let r = decode(&bytes("", &words), &Default::default());
        assert!(r.is_err());
        // Bad header lines.
        assert!(matches!(
            decode(b"% evt 3.0\n% end", &Default::default()),
            Err(EventError::Truncated { offset: 10, .. })
        ));
        assert!(matches!(
            decode(b"% format EVT3;width=0\n% end\n", &Default::default()),
            Err(EventError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(b"% geometry 12\n", &Default::default()),
            Err(EventError::Corrupt { .. })
        ));
    }

    #[test]
    fn truncated_and_damaged_streams_never_panic() {
        let mut rng = Lcg(11);
        let (events, triggers) = sample(&mut rng, 320, 240);
        let events = &events[..3000];
        let triggers: Vec<Trigger> = triggers
            .into_iter()
            .filter(|t| t.t <= events[events.len() - 1].t)
            .collect();
        let header = "% evt 3.0\n% geometry 320x240\n% end\n";
        let b = bytes(header, &encode(events, &triggers, &mut rng));
        let full = decode(&b, &Default::default()).unwrap();
        assert_eq!(full.events, events);
        for k in 0..200 {
            let cut = (b.len() * k) / 200 + (k % 3);
            let cut = cut.min(b.len());
            match decode(&b[..cut], &Default::default()) {
                // A whole-word prefix decodes to a prefix of the events.
                Ok(r) => {
                    assert!(cut < header.len() || (cut - header.len()).is_multiple_of(2));
                    assert_eq!(r.events[..], full.events[..r.events.len()]);
                }
                Err(EventError::Truncated { .. }) | Err(EventError::Corrupt { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        for _ in 0..300 {
            let mut d = b.clone();
            let i = rng.below(d.len() as u64) as usize;
            d[i] ^= 1 << rng.below(8);
            let _ = decode(&d, &Default::default());
        }
    }

    #[test]
    fn header_detection() {
        let h = Header::parse(HEADER.as_bytes()).unwrap();
        assert!(h.is_evt3());
        assert_eq!((h.width, h.height), (Some(640), Some(480)));
        assert_eq!(h.data_start, HEADER.len());
        let h = Header::parse(b"% evt 2.0\n% end\n").unwrap();
        assert!(!h.is_evt3());
        assert_eq!(h.declared_format(), Some("2.0"));
        assert!(matches!(
            super::super::detect(b"% evt 2.0\n% end\n", "x.raw"),
            Err(EventError::UnknownFormat(_))
        ));
        assert_eq!(
            super::super::detect(b"\x00\x80", "rec.RAW").unwrap(),
            Format::Evt3
        );
        assert!(super::super::detect(b"\x00\x80", "rec.bin").is_err());
        // A headerless stream whose first word's low byte is '%' (EVT_TIME_HIGH 0x8025): no
        // header, the same events as the stream starting 0x8024.
        for first in [0x25u8, 0x24] {
            let words = [first, 0x80, 0, 0, 0x01, 0x20];
            let h = Header::parse(&words).unwrap();
            assert_eq!((h.data_start, h.lines.len()), (0, 0));
            assert_eq!(
                super::super::detect(&words, "rec.raw").unwrap(),
                Format::Evt3
            );
            let events = decode(&words, &Evt3Options::default()).unwrap().events;
            assert_eq!(events.len(), 1, "{first:#x}");
        }
        // printable text to the end: a header cut off
        assert!(matches!(
            Header::parse(b"% evt 3.0\n% format EVT3"),
            Err(EventError::Truncated { .. })
        ));
    }
}
