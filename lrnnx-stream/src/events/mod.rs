//! Event cameras: reading recordings ([`aedat4`], [`evt3`]) and stepping them, event by event,
//! through an event-driven core layer ([`pipeline`]).
//!
//! An event camera reports, per pixel and asynchronously, that the log brightness went up (ON)
//! or down (OFF) by a threshold. A recording is a time-ordered list of [`Event`]s
//! `(t, x, y, polarity)`; [`read_file`] / [`decode`] load one from either supported container:
//!
//! * **AEDAT 4.0** (iniVation DV; DAVIS / DVXplorer cameras), detected by its first line
//!   `#!AER-DAT4.0`;
//! * **Prophesee EVT 3.0** (`.raw` files of Metavision / IMX636 / GenX320 cameras), detected by a
//!   `% evt 3.0` or `% format EVT3` header line, or, for headerless streams, by the extension
//!   `.raw` / `.evt3`.
//!
//! Bad input never panics: a truncated or corrupt file gives an [`EventError`] that names the
//! format, what was being read and the byte offset.

use std::fmt;
use std::path::Path;

pub mod aedat4;
pub mod evt3;
mod flatbuf;
pub mod pipeline;

pub use pipeline::{Backwards, EventEncoder, EventPipeline, EventTiming};

/// One change-detection event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Event {
    /// Timestamp in microseconds (AEDAT 4: absolute, as recorded; EVT 3.0: since the camera's
    /// time base started, wrap-arounds of the 24-bit counter unrolled).
    pub t: i64,
    /// Column, `0 ≤ x < width`.
    pub x: u16,
    /// Row, `0 ≤ y < height`.
    pub y: u16,
    /// `true` for ON (brightness increase), `false` for OFF.
    pub on: bool,
}

/// An external trigger (an edge on one of the camera's trigger inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// Timestamp in microseconds (same clock as the events).
    pub t: i64,
    /// Trigger channel.
    pub channel: u8,
    /// The edge: `true` rising, `false` falling.
    pub rising: bool,
}

/// The container a recording came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// iniVation AEDAT 4.0.
    Aedat4,
    /// Prophesee EVT 3.0.
    Evt3,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Aedat4 => "AEDAT 4.0",
            Format::Evt3 => "EVT 3.0",
        })
    }
}

/// A decoded recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// The container.
    pub format: Format,
    /// Sensor width in pixels (every event has `x < width`).
    pub width: u16,
    /// Sensor height in pixels (every event has `y < height`).
    pub height: u16,
    /// The polarity events, in file order (not necessarily sorted by time; see
    /// [`EventTiming`] for how the pipeline treats out-of-order timestamps).
    pub events: Vec<Event>,
    /// External triggers, in file order.
    pub triggers: Vec<Trigger>,
}

impl Recording {
    /// `t_last − t_first` in microseconds (0 with fewer than two events).
    pub fn duration_us(&self) -> i64 {
        match (self.events.first(), self.events.last()) {
            (Some(a), Some(b)) => b.t.saturating_sub(a.t),
            _ => 0,
        }
    }
}

/// Why a recording could not be read, or an event stream not processed.
#[derive(Debug)]
pub enum EventError {
    /// The file could not be read.
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Neither an AEDAT 4.0 nor an EVT 3.0 stream.
    UnknownFormat(String),
    /// The input ends in the middle of something.
    Truncated {
        /// The container.
        format: Format,
        /// What was being read.
        what: String,
        /// Byte offset (in the file) where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the input from `offset`.
        available: u64,
    },
    /// The input is not valid for its format.
    Corrupt {
        /// The container.
        format: Format,
        /// What is wrong.
        what: String,
        /// Byte offset (in the file) of the offending data.
        offset: u64,
    },
    /// An event's timestamp is earlier than the previous event's while the pipeline is
    /// configured to reject that ([`Backwards::Error`]).
    TimeWentBackwards {
        /// Index of the event in the stream given to the pipeline (0-based, counted since the
        /// pipeline's last reset).
        index: u64,
        /// The previous event's timestamp (µs).
        previous: i64,
        /// This event's timestamp (µs).
        got: i64,
    },
    /// An event lies outside the sensor the pipeline was built for.
    OutOfSensor {
        /// Index of the event (as for [`EventError::TimeWentBackwards`]).
        index: u64,
        /// The event's column.
        x: u16,
        /// The event's row.
        y: u16,
    },
    /// A pipeline setting is invalid.
    Config(String),
    /// The core layer refused a step.
    Layer(lrnnx_core::Error),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Io { path, source } => write!(f, "{path}: {source}"),
            EventError::UnknownFormat(m) => write!(f, "unknown event format: {m}"),
            EventError::Truncated {
                format,
                what,
                offset,
                needed,
                available,
            } => write!(
                f,
                "{format}: truncated {what} at byte {offset}: needs {needed} bytes, \
                 {available} left"
            ),
            EventError::Corrupt {
                format,
                what,
                offset,
            } => write!(f, "{format}: corrupt data at byte {offset}: {what}"),
            EventError::TimeWentBackwards {
                index,
                previous,
                got,
            } => write!(
                f,
                "event {index}: timestamp {got} µs is earlier than the previous event's \
                 {previous} µs"
            ),
            EventError::OutOfSensor { index, x, y } => {
                write!(f, "event {index}: pixel ({x}, {y}) lies outside the sensor")
            }
            EventError::Config(m) => write!(f, "event pipeline: {m}"),
            EventError::Layer(e) => write!(f, "event pipeline: core layer: {e}"),
        }
    }
}

impl std::error::Error for EventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EventError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<lrnnx_core::Error> for EventError {
    fn from(e: lrnnx_core::Error) -> Self {
        EventError::Layer(e)
    }
}

/// The container of `bytes`: AEDAT 4.0 by its magic line, EVT 3.0 by its `%` header (a line
/// `% evt 3.0` or `% format EVT3...`), else by `name`'s extension (`.raw`, `.evt3` → EVT 3.0;
/// `.aedat4` → AEDAT 4.0, which then fails on its magic line with a clear error).
pub fn detect(bytes: &[u8], name: &str) -> Result<Format, EventError> {
    if bytes.starts_with(aedat4::MAGIC) {
        return Ok(Format::Aedat4);
    }
    if bytes.first() == Some(&b'%') {
        let header = evt3::Header::parse(bytes)?;
        if header.is_evt3() {
            return Ok(Format::Evt3);
        }
        if let Some(v) = header.declared_format() {
            return Err(EventError::UnknownFormat(format!(
                "{name}: the header declares `{v}`, only EVT 3.0 is supported"
            )));
        }
    }
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("raw") | Some("evt3") => Ok(Format::Evt3),
        Some("aedat4") => Ok(Format::Aedat4),
        _ => Err(EventError::UnknownFormat(format!(
            "{name}: no AEDAT 4.0 magic line, no EVT 3.0 header, and the extension is not \
             .aedat4, .raw or .evt3"
        ))),
    }
}

/// Decodes a whole recording held in memory; `name` (a file name) only serves format
/// detection by extension and error messages. See [`detect`].
pub fn decode(bytes: &[u8], name: &str) -> Result<Recording, EventError> {
    match detect(bytes, name)? {
        Format::Aedat4 => aedat4::decode(bytes),
        Format::Evt3 => evt3::decode(bytes, &evt3::Evt3Options::default()),
    }
}

/// Reads and decodes a recording file (AEDAT 4.0 or EVT 3.0, see [`detect`]).
pub fn read_file(path: impl AsRef<Path>) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| EventError::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode(&bytes, &path.display().to_string())
}
