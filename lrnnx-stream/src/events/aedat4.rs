//! AEDAT 4.0 reader (iniVation DV: DAVIS, DVXplorer recordings).
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! offset   size  field
//!      0     14  magic "#!AER-DAT4.0\r\n"
//!     14      4  u32 n, size of the IO header
//!     18      n  IO header, a FlatBuffer (identifier "IOHE"): compression (i32: 0 none, 1 LZ4,
//!                2 LZ4 high, 3 Zstd, 4 Zstd high), file_data_position (i64: byte offset of the
//!                packet index, −1 when absent), description (an XML string naming every
//!                stream: id, typeIdentifier "EVTS" / "FRME" / "IMUS" / "TRIG", sizeX, sizeY)
//!   18 + n    ...  packets, each: i32 stream id, i32 size s, then s bytes, one compressed
//!                    size-prefixed FlatBuffer; for "EVTS" an EventPacket whose field 0 is a
//!                    vector of 16-byte structs { i64 t (µs); i16 x; i16 y; bool on; 3 pad }
//!   file_data_position  the packet index to the end of the file, compressed the same way:
//!                a FileDataTable ("FTAB") with one FileDataDefinition per packet
//!                { i64 byte offset of the packet's data, (i32 stream id, i32 size), i64 number of elements,
//!                  i64 first and last timestamp }
//! ```
//!
//! [`decode`] reads the polarity events of the first event stream ("EVTS") and the triggers are
//! not read (the frame, IMU and trigger packets are skipped without decompressing them). When
//! the file has a packet index, every packet is checked against it (position, stream, size,
//! and the number of events of each event packet), so a file truncated at a packet boundary or
//! with a damaged packet index is reported, not silently shortened. Decompression is done with
//! `lz4_flex` (LZ4 frames) and `ruzstd` (Zstd), both pure Rust; the FlatBuffers are read by a
//! small bounds-checked reader.

use std::io::Read;

use super::flatbuf::Buf;
use super::{Event, EventError, Format, Recording};

/// The first line of every AEDAT 4.0 file.
pub const MAGIC: &[u8] = b"#!AER-DAT4.0\r\n";

/// A decompressed packet may not exceed this size (a guard against corrupt size fields and
/// decompression bombs): 1 GiB.
pub const MAX_PACKET_BYTES: u64 = 1 << 30;

/// Bytes of one event in an EventPacket.
const EVENT_BYTES: usize = 16;

/// How the packets are compressed (the IO header's `compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4 frames (DV's "LZ4" and "LZ4 high").
    Lz4,
    /// Zstandard frames (DV's "Zstd" and "Zstd high").
    Zstd,
}

/// One stream declared in the header's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Stream id (the packets' first field).
    pub id: i32,
    /// Type identifier: "EVTS", "FRME", "IMUS", "TRIG", ...
    pub kind: String,
    /// `sizeX` for event and frame streams.
    pub width: Option<u16>,
    /// `sizeY` for event and frame streams.
    pub height: Option<u16>,
}

/// The parsed file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The packets' compression.
    pub compression: Compression,
    /// Byte offset of the packet index, if the file has one.
    pub index_offset: Option<u64>,
    /// The streams, in the description's order.
    pub streams: Vec<StreamInfo>,
    /// Byte offset of the first packet.
    pub data_start: u64,
}

fn truncated(what: impl Into<String>, offset: usize, needed: usize, len: usize) -> EventError {
    EventError::Truncated {
        format: Format::Aedat4,
        what: what.into(),
        offset: offset as u64,
        needed: needed as u64,
        available: len.saturating_sub(offset) as u64,
    }
}

fn corrupt(what: impl Into<String>, offset: usize) -> EventError {
    EventError::Corrupt {
        format: Format::Aedat4,
        what: what.into(),
        offset: offset as u64,
    }
}

/// `n` bytes at `pos`, or a truncation error naming `what`.
fn take<'a>(bytes: &'a [u8], pos: usize, n: usize, what: &str) -> Result<&'a [u8], EventError> {
    pos.checked_add(n)
        .and_then(|end| bytes.get(pos..end))
        .ok_or_else(|| truncated(what, pos, n, bytes.len()))
}

fn u32_at(bytes: &[u8], pos: usize, what: &str) -> Result<u32, EventError> {
    let b = take(bytes, pos, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses the magic line and the IO header.
pub fn parse_header(bytes: &[u8]) -> Result<Header, EventError> {
    let magic = take(bytes, 0, MAGIC.len(), "magic line")?;
    if magic != MAGIC {
        return Err(corrupt(
            format!(
                "not an AEDAT 4.0 file: starts with {:?}, expected \"#!AER-DAT4.0\\r\\n\"",
                String::from_utf8_lossy(magic)
            ),
            0,
        ));
    }
    let hpos = MAGIC.len();
    let n = u32_at(bytes, hpos, "IO header size")? as usize;
    let start = hpos + 4;
    let hbytes = take(bytes, start, n, "IO header")?;
    let buf = Buf {
        bytes: hbytes,
        base: start as u64,
        what: "IO header",
        format: Format::Aedat4,
    };
    let t = buf.root(b"IOHE")?;
    let compression = match buf.field_i32(t, 0, 0)? {
        0 => Compression::None,
        1 | 2 => Compression::Lz4,
        3 | 4 => Compression::Zstd,
        c => {
            return Err(corrupt(
                format!("IO header: unknown compression code {c}"),
                start,
            ))
        }
    };
    let index = buf.field_i64(t, 1, -1)?;
    let data_start = start + n;
    let index_offset = match index {
        -1 => None,
        i if i >= data_start as i64 => Some(i as u64),
        i => {
            return Err(corrupt(
                format!("IO header: packet index position {i} lies before the data ({data_start})"),
                start,
            ))
        }
    };
    let description = buf
        .field_str(t, 2)?
        .ok_or_else(|| corrupt("IO header: no stream description", start))?;
    let streams = parse_description(description).map_err(|m| corrupt(m, start))?;
    Ok(Header {
        compression,
        index_offset,
        streams,
        data_start: data_start as u64,
    })
}

/// The streams of the XML description: `<dv><node name="outInfo"><node name="ID">` with an
/// `<attr key="typeIdentifier">` and, for events and frames, `<node name="info">` holding
/// `sizeX` and `sizeY`.
fn parse_description(xml: &str) -> Result<Vec<StreamInfo>, String> {
    let doc =
        roxmltree::Document::parse(xml).map_err(|e| format!("stream description (XML): {e}"))?;
    let root = doc.root_element();
    let is_node = |n: &roxmltree::Node, name: &str| {
        n.is_element() && n.has_tag_name("node") && n.attribute("name") == Some(name)
    };
    let attr = |n: &roxmltree::Node, key: &str| {
        n.children()
            .find(|c| c.is_element() && c.has_tag_name("attr") && c.attribute("key") == Some(key))
            .and_then(|c| c.text())
            .map(str::trim)
            .map(str::to_owned)
    };
    let out_info = root
        .children()
        .find(|n| is_node(n, "outInfo"))
        .ok_or("stream description: no outInfo node")?;
    let mut streams = Vec::new();
    for node in out_info
        .children()
        .filter(|n| n.is_element() && n.has_tag_name("node"))
    {
        let name = node.attribute("name").unwrap_or("");
        let id: i32 = name
            .parse()
            .map_err(|_| format!("stream description: stream name {name:?} is not an id"))?;
        let kind = attr(&node, "typeIdentifier")
            .ok_or_else(|| format!("stream description: stream {id} has no typeIdentifier"))?;
        let info = node.children().find(|n| is_node(n, "info"));
        let size = |key: &str| -> Result<Option<u16>, String> {
            match info.as_ref().and_then(|i| attr(i, key)) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("stream description: stream {id}: {key} = {v:?}")),
            }
        };
        let (width, height) = (size("sizeX")?, size("sizeY")?);
        if streams.iter().any(|s: &StreamInfo| s.id == id) {
            return Err(format!("stream description: stream id {id} declared twice"));
        }
        streams.push(StreamInfo {
            id,
            kind,
            width,
            height,
        });
    }
    if streams.is_empty() {
        return Err("stream description: no stream".into());
    }
    Ok(streams)
}

/// Checks the framing of one LZ4 frame filling all of `payload` (the LZ4 frame format: magic
/// `04 22 4D 18`, FLG, BD, optional 8-byte content size and 4-byte dictionary id, header
/// checksum byte; then blocks, each a `u32` size (high bit: stored uncompressed) and its data
/// (plus a 4-byte checksum when FLG says so), ended by a zero `u32`; then an optional 4-byte
/// content checksum). A cut or padded frame is reported at the offset where it goes wrong: the
/// decompressor alone may take a frame cut between blocks for a complete one.
fn lz4_frame_framing(payload: &[u8]) -> Result<(), (usize, String)> {
    let u32_at = |p: usize| -> Option<u32> {
        payload
            .get(p..p + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u32_at(0) != Some(0x184D_2204) {
        return Err((0, "not an LZ4 frame (magic)".into()));
    }
    let flg = *payload
        .get(4)
        .ok_or((4, "LZ4 frame header cut".to_string()))?;
    let block_checksum = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let dict = flg & 0x01 != 0;
    let mut pos = 4 + 2 + 8 * content_size as usize + 4 * dict as usize + 1;
    loop {
        let size = u32_at(pos).ok_or((pos, "LZ4 frame cut before its end mark".to_string()))?;
        pos += 4;
        if size == 0 {
            break;
        }
        let start = pos - 4;
        pos += (size & 0x7fff_ffff) as usize + 4 * block_checksum as usize;
        if pos > payload.len() {
            return Err((
                start,
                format!("LZ4 block of {} bytes cut", size & 0x7fff_ffff),
            ));
        }
    }
    pos += 4 * content_checksum as usize;
    match pos.cmp(&payload.len()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err((payload.len(), "LZ4 content checksum cut".into())),
        std::cmp::Ordering::Less => Err((pos, "bytes after the end of the LZ4 frame".into())),
    }
}

/// Decompresses `payload` (starting at file offset `offset`) into `out`: the packet's 4-byte
/// size prefix, then at most the buffer it declares (refused past [`MAX_PACKET_BYTES`]), so a
/// small corrupt packet cannot make the reader hold more than its prefix claims. The rest of
/// the stream is still decoded (into nothing, up to the same limit) so that the codec checks
/// its frame to the end; compressed bytes after the frame are refused.
fn decompress(
    compression: Compression,
    payload: &[u8],
    offset: usize,
    what: &str,
    out: &mut Vec<u8>,
) -> Result<(), EventError> {
    out.clear();
    let fail = |m: String| corrupt(format!("{what}: {m}"), offset);
    match compression {
        Compression::None => {
            out.extend_from_slice(payload);
            Ok(())
        }
        Compression::Lz4 => {
            if let Err((at, m)) = lz4_frame_framing(payload) {
                return Err(corrupt(format!("{what}: {m}"), offset + at));
            }
            let decoder = lz4_flex::frame::FrameDecoder::new(payload);
            read_size_prefixed(decoder, out).map_err(|m| fail(format!("LZ4: {m}")))
        }
        Compression::Zstd => {
            let mut src = payload;
            let decoder = ruzstd::decoding::StreamingDecoder::new(&mut src)
                .map_err(|e| fail(format!("cannot decompress: Zstd: {e}")))?;
            read_size_prefixed(decoder, out).map_err(|m| fail(format!("Zstd: {m}")))?;
            if !src.is_empty() {
                return Err(corrupt(
                    format!(
                        "{what}: {} bytes after the end of the Zstd frame",
                        src.len()
                    ),
                    offset + payload.len() - src.len(),
                ));
            }
            Ok(())
        }
    }
}

/// Reads a size-prefixed buffer from `r` into `out` ([`decompress`]): the prefix, at most the
/// bytes it declares, then the rest of the stream into nothing (at most [`MAX_PACKET_BYTES`]).
fn read_size_prefixed(mut r: impl Read, out: &mut Vec<u8>) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("cannot decompress: {e}");
    (&mut r).take(4).read_to_end(out).map_err(cannot)?;
    if out.len() < 4 {
        return Ok(()); // size_prefixed names the short buffer
    }
    let size = u32::from_le_bytes([out[0], out[1], out[2], out[3]]) as u64;
    if size + 4 > MAX_PACKET_BYTES {
        return Err(format!(
            "size prefix {size} exceeds the {MAX_PACKET_BYTES}-byte packet limit"
        ));
    }
    (&mut r).take(size).read_to_end(out).map_err(cannot)?;
    let rest = std::io::copy(&mut (&mut r).take(MAX_PACKET_BYTES), &mut std::io::sink())
        .map_err(cannot)?;
    if size + 4 + rest > MAX_PACKET_BYTES {
        return Err(format!(
            "decompresses to more than {MAX_PACKET_BYTES} bytes"
        ));
    }
    Ok(())
}

/// A size-prefixed FlatBuffer (as DV writes packets): checks the prefix and returns the buffer
/// after it.
fn size_prefixed<'a>(data: &'a [u8], offset: usize, what: &str) -> Result<&'a [u8], EventError> {
    let size = data
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| {
            corrupt(
                format!("{what}: {} bytes, no size prefix", data.len()),
                offset,
            )
        })?;
    data.get(4..)
        .filter(|rest| rest.len() >= size)
        .map(|rest| &rest[..size])
        .ok_or_else(|| {
            corrupt(
                format!(
                    "{what}: size prefix {size} exceeds its {} decompressed bytes",
                    data.len().saturating_sub(4)
                ),
                offset,
            )
        })
}

/// What the packet index says about one packet, and what was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PacketEntry {
    /// Byte offset of the packet's data (after its 8-byte header), as the index lists it.
    offset: u64,
    stream: i32,
    size: i32,
    /// Number of events (event packets only; `None` for skipped packets).
    elements: Option<u64>,
}

/// Decodes the polarity events of an AEDAT 4.0 file held in memory.
pub fn decode(bytes: &[u8]) -> Result<Recording, EventError> {
    let header = parse_header(bytes)?;
    let stream = header
        .streams
        .iter()
        .find(|s| s.kind == "EVTS")
        .ok_or_else(|| corrupt("the file declares no event stream (EVTS)", MAGIC.len()))?;
    let (width, height) = match (stream.width, stream.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => {
            return Err(corrupt(
                format!(
                    "event stream {} has no positive sizeX / sizeY in the description",
                    stream.id
                ),
                MAGIC.len(),
            ))
        }
    };
    let end = match header.index_offset {
        Some(i) => usize::try_from(i).unwrap_or(usize::MAX),
        None => bytes.len(),
    };
    let mut events = Vec::new();
    let mut found = Vec::new();
    let mut scratch = Vec::new();
    let mut pos = header.data_start as usize;
    while pos < end.min(bytes.len()) {
        let head = take(bytes, pos, 8, "packet header")?;
        let sid = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let size = i32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(info) = header.streams.iter().find(|s| s.id == sid) else {
            return Err(corrupt(
                format!("packet header names stream {sid}, which the description does not declare"),
                pos,
            ));
        };
        if size <= 0 {
            return Err(corrupt(format!("packet size {size}"), pos + 4));
        }
        let body = pos + 8;
        let payload = take(bytes, body, size as usize, "packet")?;
        if body + size as usize > end {
            return Err(corrupt(
                format!("packet of {size} bytes runs into the packet index at byte {end}"),
                pos,
            ));
        }
        let mut elements = None;
        if info.id == stream.id {
            let before = events.len();
            decode_event_packet(
                header.compression,
                payload,
                body,
                (width, height),
                &mut scratch,
                &mut events,
            )?;
            elements = Some((events.len() - before) as u64);
        }
        found.push(PacketEntry {
            offset: body as u64,
            stream: sid,
            size,
            elements,
        });
        pos = body + size as usize;
    }
    if let Some(index) = header.index_offset {
        if (bytes.len() as u64) <= index {
            return Err(truncated(
                format!("file (the packet index should start at byte {index})"),
                bytes.len(),
                (index as usize).saturating_sub(bytes.len()) + 1,
                bytes.len(),
            ));
        }
        check_index(
            bytes,
            index as usize,
            header.compression,
            &found,
            &mut scratch,
        )?;
    }
    Ok(Recording {
        format: Format::Aedat4,
        width,
        height,
        events,
        triggers: Vec::new(),
    })
}

/// Decompresses one event packet and appends its events, checking each against the sensor.
fn decode_event_packet(
    compression: Compression,
    payload: &[u8],
    offset: usize,
    (width, height): (u16, u16),
    scratch: &mut Vec<u8>,
    events: &mut Vec<Event>,
) -> Result<(), EventError> {
    let what = format!("event packet at byte {}", offset - 8);
    decompress(compression, payload, offset, &what, scratch)?;
    let data = size_prefixed(scratch, offset, &what)?;
    let buf = Buf {
        bytes: data,
        base: offset as u64,
        what: &what,
        format: Format::Aedat4,
    };
    let t = buf.root(b"EVTS")?;
    let Some((start, n)) = buf.field_vector(t, 0, EVENT_BYTES)? else {
        return Ok(());
    };
    events.reserve(n);
    for (i, e) in data[start..start + n * EVENT_BYTES]
        .chunks_exact(EVENT_BYTES)
        .enumerate()
    {
        let mut tb = [0u8; 8];
        tb.copy_from_slice(&e[..8]);
        let t = i64::from_le_bytes(tb);
        let x = i16::from_le_bytes([e[8], e[9]]);
        let y = i16::from_le_bytes([e[10], e[11]]);
        let on = e[12];
        if x < 0 || y < 0 || x as u16 >= width || y as u16 >= height || on > 1 {
            return Err(corrupt(
                format!(
                    "{what}: event {i} (x={x}, y={y}, on={on}) is outside the {width}x{height} \
                     sensor or has an invalid polarity (decompressed byte {})",
                    start + i * EVENT_BYTES
                ),
                offset,
            ));
        }
        events.push(Event {
            t,
            x: x as u16,
            y: y as u16,
            on: on == 1,
        });
    }
    Ok(())
}

/// Reads the packet index at `index` and checks that it lists exactly the packets found.
fn check_index(
    bytes: &[u8],
    index: usize,
    compression: Compression,
    found: &[PacketEntry],
    scratch: &mut Vec<u8>,
) -> Result<(), EventError> {
    let what = format!("packet index at byte {index}");
    decompress(compression, &bytes[index..], index, &what, scratch)?;
    let data = size_prefixed(scratch, index, &what)?;
    let buf = Buf {
        bytes: data,
        base: index as u64,
        what: &what,
        format: Format::Aedat4,
    };
    let t = buf.root(b"FTAB")?;
    let (start, n) = buf.field_vector(t, 0, 4)?.unwrap_or((0, 0));
    if n != found.len() {
        return Err(corrupt(
            format!(
                "{what} lists {n} packets, the file holds {} before it",
                found.len()
            ),
            index,
        ));
    }
    for (i, f) in found.iter().enumerate() {
        let def = buf.table_in_vector(start, i)?;
        let offset = buf.field_i64(def, 0, 0)?;
        let (stream, size) = match buf.field(def, 1)? {
            Some(p) => (
                buf.u32(p, "packet header")? as i32,
                buf.u32(p + 4, "packet header")? as i32,
            ),
            None => (0, 0),
        };
        let elements = buf.field_i64(def, 2, 0)?;
        let listed = PacketEntry {
            offset: offset as u64,
            stream,
            size,
            elements: f.elements.map(|_| elements as u64),
        };
        if listed != *f || offset < 0 {
            return Err(corrupt(
                format!(
                    "{what}: entry {i} (offset {offset}, stream {stream}, size {size}, \
                     {elements} elements) does not match the packet whose data starts at byte {} \
                     (stream {}, size {}{})",
                    f.offset,
                    f.stream,
                    f.size,
                    f.elements
                        .map_or(String::new(), |e| format!(", {e} events"))
                ),
                f.offset as usize,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FlatBuffer with one root table, written front to back from the format description
    /// (root offset, identifier, vtable, table, then the out-of-line data). `fields` are the
    /// table's inline bytes per field (`None`: absent); `tail` is appended after the table and
    /// `fixups` are (field index, position in `tail`) pairs whose inline `u32` must point there.
    fn flatbuffer(
        id: &[u8; 4],
        fields: &[Option<Vec<u8>>],
        tail: &[u8],
        fixups: &[(usize, usize)],
    ) -> Vec<u8> {
        let vt_len = 4 + 2 * fields.len();
        let vt_pos = 8;
        let table = (vt_pos + vt_len).next_multiple_of(4);
        let mut inline = Vec::new();
        let mut offsets = Vec::new();
        let mut field_pos = vec![0; fields.len()];
        for (i, f) in fields.iter().enumerate() {
            match f {
                Some(b) => {
                    offsets.push((4 + inline.len()) as u16);
                    field_pos[i] = table + 4 + inline.len();
                    inline.extend_from_slice(b);
                }
                None => offsets.push(0),
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(table as u32).to_le_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&(vt_len as u16).to_le_bytes());
        out.extend_from_slice(&((4 + inline.len()) as u16).to_le_bytes());
        for o in offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.resize(table, 0);
        out.extend_from_slice(&((table - vt_pos) as i32).to_le_bytes());
        out.extend_from_slice(&inline);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let tail_pos = out.len();
        out.extend_from_slice(tail);
        for &(field, at) in fixups {
            let p = field_pos[field];
            let rel = (tail_pos + at - p) as u32;
            out[p..p + 4].copy_from_slice(&rel.to_le_bytes());
        }
        out
    }

    fn description(width: u16, height: u16) -> String {
        format!(
            "<dv version=\"2.0\"><node name=\"outInfo\" path=\"/o/\">\
             <node name=\"0\" path=\"/o/0/\"><attr key=\"typeIdentifier\" type=\"string\">EVTS</attr>\
             <node name=\"info\" path=\"/o/0/info/\"><attr key=\"sizeX\" type=\"int\">{width}</attr>\
             <attr key=\"sizeY\" type=\"int\">{height}</attr></node></node>\
             <node name=\"1\" path=\"/o/1/\"><attr key=\"typeIdentifier\" type=\"string\">FRME</attr>\
             </node></node></dv>"
        )
    }

    /// A whole file: header (compression code, no packet index) and packets
    /// (stream id, uncompressed size-prefixed flatbuffer).
    fn file(code: i32, packets: &[(i32, Vec<u8>)]) -> Vec<u8> {
        let desc = description(40, 30);
        let mut s = (desc.len() as u32).to_le_bytes().to_vec();
        s.extend_from_slice(desc.as_bytes());
        s.push(0);
        let header = flatbuffer(
            b"IOHE",
            &[
                Some(code.to_le_bytes().to_vec()),
                Some((-1i64).to_le_bytes().to_vec()),
                Some(vec![0; 4]),
            ],
            &s,
            &[(2, 0)],
        );
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for (sid, body) in packets {
            let data = match code {
                0 => body.clone(),
                3 => ruzstd::encoding::compress_to_vec(
                    &body[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
                _ => unreachable!(),
            };
            out.extend_from_slice(&sid.to_le_bytes());
            out.extend_from_slice(&(data.len() as i32).to_le_bytes());
            out.extend_from_slice(&data);
        }
        out
    }

    /// A size-prefixed EventPacket: field 0 points at the vector (its `u32` length, then the
    /// 16-byte structs).
    fn event_packet(events: &[(i64, i16, i16, u8)]) -> Vec<u8> {
        let mut v = (events.len() as u32).to_le_bytes().to_vec();
        for &(t, x, y, on) in events {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&x.to_le_bytes());
            v.extend_from_slice(&y.to_le_bytes());
            v.extend_from_slice(&[on, 0, 0, 0]);
        }
        let fb = flatbuffer(b"EVTS", &[Some(vec![0; 4])], &v, &[(0, 0)]);
        let mut out = (fb.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&fb);
        out
    }

    #[test]
    fn hand_built_files_decode_uncompressed_and_zstd() {
        let evs = [(100i64, 0i16, 0i16, 1u8), (100, 39, 29, 0), (250, 7, 3, 1)];
        let more = [(300i64, 1i16, 2i16, 0u8)];
        for code in [0, 3] {
            let f = file(
                code,
                &[
                    (0, event_packet(&evs)),
                    (1, vec![1, 2, 3]),
                    (0, event_packet(&more)),
                ],
            );
            let r = decode(&f).unwrap();
            assert_eq!((r.width, r.height), (40, 30));
            let got: Vec<(i64, u16, u16, bool)> =
                r.events.iter().map(|e| (e.t, e.x, e.y, e.on)).collect();
            assert_eq!(
                got,
                [
                    (100, 0, 0, true),
                    (100, 39, 29, false),
                    (250, 7, 3, true),
                    (300, 1, 2, false)
                ]
            );
            let h = parse_header(&f).unwrap();
            assert_eq!(h.index_offset, None);
            assert_eq!(h.streams[1].kind, "FRME");
        }
        // Damage: an event off the sensor, a bad polarity byte, an unknown compression code,
        // a wrong identifier; each an error, and every truncation an error or a prefix.
        for bad in [(1i64, 40i16, 0i16, 0u8), (1, 0, -1, 0), (1, 0, 0, 2)] {
            let f = file(0, &[(0, event_packet(&[bad]))]);
            assert!(
                matches!(decode(&f), Err(EventError::Corrupt { .. })),
                "{bad:?}"
            );
        }
        let f = file(0, &[(0, event_packet(&evs))]);
        let mut g = f.clone();
        let at = f.windows(4).position(|w| w == b"EVTS").unwrap();
        g[at] = b'X';
        assert!(matches!(decode(&g), Err(EventError::Corrupt { .. })));
        assert_eq!(parse_header(&f).unwrap().compression, Compression::None);
        for cut in 0..f.len() {
            match decode(&f[..cut]) {
                Ok(r) => assert!(r.events.is_empty(), "cut {cut}"),
                Err(EventError::Truncated { .. }) | Err(EventError::Corrupt { .. }) => {}
                Err(e) => panic!("cut {cut}: {e}"),
            }
        }
    }

    /// A compressed packet yields its size prefix and the buffer it declares, no more: the
    /// decompressed bytes after it are decoded into nothing (a small packet that expands to
    /// megabytes of padding does not make the reader hold them), a prefix past the packet
    /// limit is refused, and compressed bytes after a Zstd frame are refused.
    #[test]
    fn compressed_packets_hold_no_more_than_their_prefix() {
        use std::io::Write;
        let packet = event_packet(&[(100, 1, 2, 1)]);
        let mut padded = packet.clone();
        padded.resize(packet.len() + (8 << 20), 0);
        let zstd = |b: &[u8]| {
            ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
        };
        let lz4 = |b: &[u8]| {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(b).unwrap();
            enc.finish().unwrap()
        };
        let mut out = Vec::new();
        for (compression, data) in [
            (Compression::Zstd, zstd(&padded)),
            (Compression::Lz4, lz4(&padded)),
        ] {
            assert!(
                data.len() < 1 << 20,
                "{compression:?}: {} bytes",
                data.len()
            );
            decompress(compression, &data, 0, "packet", &mut out).unwrap();
            assert_eq!(out, packet, "{compression:?}");
            let mut huge = padded[..packet.len()].to_vec();
            huge[..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
            let data = match compression {
                Compression::Zstd => zstd(&huge),
                _ => lz4(&huge),
            };
            let e = decompress(compression, &data, 0, "packet", &mut out).unwrap_err();
            assert!(
                e.to_string().contains("size prefix 1073741824 exceeds"),
                "{e}"
            );
        }
        let mut trailing = zstd(&packet);
        trailing.extend_from_slice(&[1, 2, 3]);
        let e = decompress(Compression::Zstd, &trailing, 10, "packet", &mut out).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 bytes after the end of the Zstd frame"),
            "{e}"
        );
    }
}
