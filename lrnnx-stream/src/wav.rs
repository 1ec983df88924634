//! WAV (RIFF `WAVE`) files in and out, parsed and written here (no codec dependency).
//!
//! **Read**: mono or multichannel; integer PCM in 8-bit (unsigned), 16-, 24- or 32-bit
//! containers, IEEE float in 32 or 64 bits; the plain (`fmt ` tag 1 or 3) and the extensible
//! (tag `0xFFFE`, its sub-format 1 or 3) headers, including fewer valid bits than the container
//! holds (e.g. 24 valid bits in 32, 12 in 16: the valid bits are the container's top bits, so
//! dividing the whole container by `2^(container bits − 1)` gives the sample). Samples come back
//! as `f32` in [−1, 1] (integers `v / 2^(bits−1)`, 8-bit `(v − 128) / 128`), one `Vec` per
//! channel. Chunks may come in any order and are read to the end of the file (the RIFF size,
//! often left 0 or unpatched, is not trusted); odd-sized chunks are followed by their pad byte
//! (a missing pad byte, as some writers leave, is recognised); chunks other than `fmt ` and
//! `data` are skipped; a `data` size of 0xFFFFFFFF (a streaming writer that could not seek
//! back) means the samples run to the end of the file.
//!
//! **Refused, with an error naming the file and the problem**: a file cut short (a header, the
//! `fmt ` chunk or the `data` chunk shorter than declared, a partial frame), a missing `fmt ` or
//! `data` chunk, 0 channels, a sample rate of 0, a block alignment that does not match the
//! channels and sample size, compressed formats (ADPCM, µ-law, ...), big-endian `RIFX` and
//! 64-bit `RF64` files, and a float sample that is not finite.
//!
//! **Write**: 16-bit PCM or 32-bit float ([`WavFormat`]), every check (rate, sizes, finite
//! samples) made before the file is touched; the bytes go to a temporary file beside the target
//! (the file a symbolic link names), synced, given the old file's permissions and then renamed
//! over it, so a failed write leaves an existing file as it was.

use std::fmt;
use std::path::{Path, PathBuf};

/// Sample format of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit integer PCM: `round(32768·x)` clamped to [−32768, 32767].
    Pcm16,
    /// 32-bit IEEE float.
    Float32,
}

/// Audio in memory: one buffer per channel, all the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// One buffer per channel.
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    /// Frames (samples per channel).
    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Whether there are no frames.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Duration in seconds (`len / sample_rate`; 0 Hz is taken as 1 Hz).
    pub fn seconds(&self) -> f64 {
        self.len() as f64 / self.sample_rate.max(1) as f64
    }
}

/// How the samples of a read file were stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// IEEE float rather than integer PCM.
    pub float: bool,
    /// Bits one sample occupies in the file: 8, 16, 24, 32 or 64.
    pub container_bits: u16,
    /// Bits of the container that carry the signal (its top bits; `container_bits` unless the
    /// header says fewer).
    pub valid_bits: u16,
}

/// Why a WAV file could not be read or written.
#[derive(Debug)]
pub struct WavError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for WavError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for WavError {}

/// `fmt ` format tags.
const TAG_PCM: u16 = 1;
const TAG_FLOAT: u16 = 3;
const TAG_EXTENSIBLE: u16 = 0xFFFE;
/// Bytes 2..16 of every `KSDATAFORMAT_SUBTYPE_*` GUID of the extensible header (bytes 0..2 are
/// the format tag).
const SUBTYPE_GUID_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether the 4 bytes at `at` can be a chunk ID (printable ASCII, as every FOURCC is).
fn is_chunk_id(b: &[u8], at: usize) -> bool {
    b.get(at..at.saturating_add(4))
        .is_some_and(|id| id.len() == 4 && id.iter().all(|c| (0x20..0x7f).contains(c)))
}

/// The parsed `fmt ` chunk.
struct FmtChunk {
    channels: u16,
    sample_rate: u32,
    block_align: u16,
    encoding: Encoding,
}

/// Parses a `fmt ` chunk body (`body` is exactly the declared size) and checks it describes a
/// supported, self-consistent layout.
fn parse_fmt(body: &[u8]) -> Result<FmtChunk, String> {
    if body.len() < 16 {
        return Err(format!(
            "`fmt ` chunk of {} bytes (at least 16 needed)",
            body.len()
        ));
    }
    let mut tag = u16_at(body, 0);
    let channels = u16_at(body, 2);
    let sample_rate = u32_at(body, 4);
    let block_align = u16_at(body, 12);
    let bits = u16_at(body, 14);
    let mut valid_bits = bits;
    let container_bits;
    if tag == TAG_EXTENSIBLE {
        if body.len() < 40 {
            return Err(format!(
                "extensible `fmt ` chunk of {} bytes (40 needed)",
                body.len()
            ));
        }
        let declared_valid = u16_at(body, 18);
        if body[26..40] != SUBTYPE_GUID_TAIL {
            return Err("extensible format with an unknown sub-format GUID".into());
        }
        tag = u16_at(body, 24);
        if !bits.is_multiple_of(8) {
            return Err(format!(
                "extensible format with {bits}-bit samples (a whole number of bytes needed)"
            ));
        }
        container_bits = bits;
        if declared_valid != 0 {
            valid_bits = declared_valid;
        }
    } else {
        // plain PCM: `bits` valid bits in the smallest whole number of bytes
        container_bits = bits.div_ceil(8) * 8;
    }
    let float = match tag {
        TAG_PCM => false,
        TAG_FLOAT => true,
        t => {
            return Err(format!(
                "format tag {t:#06x} is not integer PCM (1) or IEEE float (3): a compressed \
                 format (ADPCM, µ-law, ...); convert the file to PCM first"
            ))
        }
    };
    if channels == 0 {
        return Err("the file declares 0 channels".into());
    }
    if sample_rate == 0 {
        return Err("the file declares a sample rate of 0 Hz".into());
    }
    let supported = if float {
        matches!(container_bits, 32 | 64) && valid_bits == container_bits
    } else {
        matches!(container_bits, 8 | 16 | 24 | 32) && (1..=container_bits).contains(&valid_bits)
    };
    if !supported {
        return Err(format!(
            "{} samples of {valid_bits} valid bits in {container_bits}-bit containers are not \
             supported (integer: 8, 16, 24 or 32-bit containers; float: 32 or 64 bits)",
            if float { "float" } else { "integer" }
        ));
    }
    let frame_bytes = channels as u32 * (container_bits / 8) as u32;
    if block_align as u32 != frame_bytes {
        return Err(format!(
            "block alignment {block_align} does not match {channels} channel(s) of \
             {}-byte samples ({frame_bytes})",
            container_bits / 8
        ));
    }
    Ok(FmtChunk {
        channels,
        sample_rate,
        block_align,
        encoding: Encoding {
            float,
            container_bits,
            valid_bits,
        },
    })
}

/// Decodes the bytes of a WAV file (module doc): the audio and how it was stored, or why not.
pub fn decode(bytes: &[u8]) -> Result<(Audio, Encoding), String> {
    if bytes.len() < 12 {
        return Err(format!(
            "{} bytes: truncated (a WAV file starts with a 12-byte RIFF header)",
            bytes.len()
        ));
    }
    match &bytes[0..4] {
        b"RIFF" => {}
        b"RIFX" => return Err("big-endian RIFX files are not supported".into()),
        b"RF64" => return Err("RF64 (64-bit RIFF) files are not supported".into()),
        _ => return Err("not a WAV file (no RIFF header)".into()),
    }
    if &bytes[8..12] != b"WAVE" {
        return Err("a RIFF file, but not of type WAVE".into());
    }
    // The RIFF size is advisory (writers leave it 0 or unpatched, or leave chunks out of it):
    // the chunks are read up to the end of the file, each checked against what follows it.
    let end = bytes.len();
    let mut fmt_chunk = None;
    let mut data: Option<&[u8]> = None;
    let mut pos: usize = 12;
    while fmt_chunk.is_none() || data.is_none() {
        if pos.saturating_add(8) > end {
            if pos < end {
                return Err(format!("chunk header at byte {pos} cut (truncated file)"));
            }
            return Err(format!(
                "no `{}` chunk (truncated file?)",
                if fmt_chunk.is_none() { "fmt " } else { "data" }
            ));
        }
        let id = &bytes[pos..pos + 4];
        let declared = u32_at(bytes, pos + 4);
        let body_start = pos + 8;
        let available = end - body_start;
        // a streaming writer that cannot seek back leaves the `data` size at 0xFFFFFFFF: the
        // samples run to the end of the file
        let size = if id == b"data" && declared == u32::MAX {
            available
        } else {
            declared as usize
        };
        if id == b"fmt " || id == b"data" {
            if size > available {
                return Err(format!(
                    "`{}` chunk declares {size} bytes but {available} follow (truncated file)",
                    String::from_utf8_lossy(id)
                ));
            }
            let body = &bytes[body_start..body_start + size];
            if id == b"fmt " {
                fmt_chunk = Some(parse_fmt(body)?);
            } else {
                data = Some(body);
            }
        }
        // The next chunk, after the pad byte of an odd-sized one; some writers leave the pad
        // byte out, which shows as no chunk ID (four printable characters) after it but one
        // a byte earlier, or `fmt `/`data` a byte earlier.
        let unpadded = body_start.saturating_add(size);
        pos = unpadded.saturating_add(size & 1);
        let known =
            |at: usize| matches!(bytes.get(at..at.saturating_add(4)), Some(b"fmt " | b"data"));
        if size & 1 == 1
            && ((!is_chunk_id(bytes, pos) && is_chunk_id(bytes, unpadded))
                || (known(unpadded) && !known(pos)))
        {
            pos = unpadded;
        }
    }
    let (Some(f), Some(data)) = (fmt_chunk, data) else {
        unreachable!("the loop runs until both chunks are found")
    };
    let frame_bytes = f.block_align as usize;
    if !data.len().is_multiple_of(frame_bytes) {
        return Err(format!(
            "`data` holds {} bytes, not a whole number of {frame_bytes}-byte frames (truncated?)",
            data.len()
        ));
    }
    let nch = f.channels as usize;
    let frames = data.len() / frame_bytes;
    let sample_bytes = (f.encoding.container_bits / 8) as usize;
    let mut channels = vec![Vec::with_capacity(frames); nch];
    for (s, raw) in data.chunks_exact(sample_bytes).enumerate() {
        let v = sample_value(raw, f.encoding.float);
        if !v.is_finite() {
            return Err(format!(
                "sample {} of channel {} is not finite",
                s / nch,
                s % nch
            ));
        }
        channels[s % nch].push(v);
    }
    let audio = Audio {
        sample_rate: f.sample_rate,
        channels,
    };
    Ok((audio, f.encoding))
}

/// One sample from its little-endian container bytes (1, 2, 3, 4 or 8 of them): an integer
/// `v / 2^(8·bytes − 1)` (8-bit: unsigned, `(v − 128) / 128`), or the float itself.
fn sample_value(raw: &[u8], float: bool) -> f32 {
    match (raw.len(), float) {
        (4, true) => f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
        (8, true) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(raw);
            f64::from_le_bytes(b) as f32
        }
        (1, false) => (raw[0] as f32 - 128.0) / 128.0,
        (n, false) => {
            // the container's bytes at the top of an i32 (sign included), then scaled
            let mut b = [0u8; 4];
            b[4 - n..].copy_from_slice(raw);
            (i32::from_le_bytes(b) as f64 / 2f64.powi(31)) as f32
        }
        _ => unreachable!("parse_fmt admits 8/16/24/32-bit integers and 32/64-bit floats"),
    }
}

/// Reads a WAV file (module doc). Any problem is an error naming the file.
pub fn read(path: impl AsRef<Path>) -> Result<Audio, WavError> {
    read_with_encoding(path).map(|(audio, _)| audio)
}

/// [`read`], also returning how the samples were stored.
pub fn read_with_encoding(path: impl AsRef<Path>) -> Result<(Audio, Encoding), WavError> {
    let path = path.as_ref();
    let err = |reason: String| WavError {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    decode(&bytes).map_err(err)
}

/// The bytes of a WAV file holding `audio` in `format`: a RIFF header, a `fmt ` chunk (16
/// bytes for PCM, 18 for float; for more than two channels the 40-byte extensible header with
/// the sub-format, as the format asks for them), for float a `fact` chunk with the frame count,
/// and the interleaved samples. Refuses 0 channels or more than fit a 16-bit block alignment (32767 for PCM,
/// 16383 for float), channels of different lengths, a sample
/// rate of 0 or one whose byte rate overflows 32 bits, more data than a RIFF size can hold, and
/// a sample that is not finite (PCM would write it as 0, float as a value [`read`] refuses).
pub fn encode(audio: &Audio, format: WavFormat) -> Result<Vec<u8>, String> {
    let nch = audio.channels.len();
    let (tag, sample_bytes) = match format {
        WavFormat::Pcm16 => (TAG_PCM, 2usize),
        WavFormat::Float32 => (TAG_FLOAT, 4usize),
    };
    let block_align = nch * sample_bytes;
    if nch == 0 || block_align > u16::MAX as usize {
        return Err(format!(
            "cannot write {nch} channels of {sample_bytes}-byte samples (1 to {} allowed)",
            u16::MAX as usize / sample_bytes
        ));
    }
    let frames = audio.len();
    if audio.channels.iter().any(|c| c.len() != frames) {
        return Err("channels have different lengths".into());
    }
    if audio.sample_rate == 0 {
        return Err("cannot write a sample rate of 0 Hz".into());
    }
    let byte_rate = (audio.sample_rate as u64 * block_align as u64)
        .try_into()
        .map_err(|_| {
            format!(
                "{} Hz × {block_align} bytes a frame overflows the header's 32-bit byte rate",
                audio.sample_rate
            )
        })?;
    // more than two channels: the extensible header (the format says so for them), with no
    // speaker positions assigned (channel mask 0)
    let extensible = nch > 2;
    let fmt_len: u32 = match (extensible, format) {
        (true, _) => 40,
        (false, WavFormat::Pcm16) => 16,
        (false, WavFormat::Float32) => 18,
    };
    let fact_len: usize = if format == WavFormat::Pcm16 { 0 } else { 12 };
    let data_len = frames as u64 * block_align as u64;
    let riff_len = 4 + (8 + fmt_len as u64) + fact_len as u64 + 8 + data_len;
    if riff_len > u32::MAX as u64 {
        return Err(format!(
            "{frames} frames of {block_align} bytes exceed the 4 GiB a WAV file can hold"
        ));
    }
    for (ci, c) in audio.channels.iter().enumerate() {
        if let Some(t) = c.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "sample {t} of channel {ci} is {} (not finite)",
                c[t]
            ));
        }
    }
    let mut out = Vec::with_capacity(8 + riff_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(riff_len as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&fmt_len.to_le_bytes());
    out.extend_from_slice(&(if extensible { TAG_EXTENSIBLE } else { tag }).to_le_bytes());
    out.extend_from_slice(&(nch as u16).to_le_bytes());
    out.extend_from_slice(&audio.sample_rate.to_le_bytes());
    out.extend_from_slice(&u32::to_le_bytes(byte_rate));
    out.extend_from_slice(&(block_align as u16).to_le_bytes());
    let bits = 8 * sample_bytes as u16;
    out.extend_from_slice(&bits.to_le_bytes());
    if extensible {
        out.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        out.extend_from_slice(&bits.to_le_bytes()); // valid bits
        out.extend_from_slice(&0u32.to_le_bytes()); // channel mask
        out.extend_from_slice(&tag.to_le_bytes()); // sub-format GUID
        out.extend_from_slice(&SUBTYPE_GUID_TAIL);
    } else if format == WavFormat::Float32 {
        out.extend_from_slice(&0u16.to_le_bytes()); // cbSize
    }
    if format == WavFormat::Float32 {
        out.extend_from_slice(b"fact");
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(frames as u32).to_le_bytes());
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for t in 0..frames {
        for c in &audio.channels {
            let v = c[t];
            match format {
                WavFormat::Pcm16 => out.extend_from_slice(
                    &((v * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes(),
                ),
                WavFormat::Float32 => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
    }
    Ok(out)
}

/// Writes `audio` as a WAV file in `format` ([`encode`]; module doc: nothing is touched when a
/// check fails, and the file is replaced only once the new bytes are written).
pub fn write(path: impl AsRef<Path>, audio: &Audio, format: WavFormat) -> Result<(), WavError> {
    let path = path.as_ref();
    let err = |reason: String| WavError {
        path: path.to_owned(),
        reason,
    };
    let bytes = encode(audio, format).map_err(err)?;
    // through a symbolic link to the file it names; the new file gets the old one's permissions
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut tmp_name = target.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = target.with_file_name(tmp_name);
    let written = (|| {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        if let Ok(old) = std::fs::metadata(&target) {
            std::fs::set_permissions(&tmp, old.permissions())?;
        }
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        std::fs::remove_file(&tmp).ok();
        return Err(err(e.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lrnnx-wav-{}-{name}", std::process::id()))
    }

    /// A RIFF/WAVE file of the given chunks (id, body), each odd-sized body followed by its pad
    /// byte, written byte by byte from the format's description.
    fn riff(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        for (id, b) in chunks {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(b.len() as u32).to_le_bytes());
            body.extend_from_slice(b);
            if b.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// A plain `fmt ` body: tag, channels, rate, bits per sample (block alignment and byte rate
    /// from whole bytes).
    fn fmt16(tag: u16, nch: u16, rate: u32, bits: u16) -> Vec<u8> {
        let align = nch * bits.div_ceil(8);
        let mut f = Vec::new();
        for v in [tag, nch] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * align as u32).to_le_bytes());
        f.extend_from_slice(&align.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        f
    }

    /// An extensible `fmt ` body: container bits, valid bits, sub-format tag.
    fn fmt_ext(nch: u16, rate: u32, bits: u16, valid: u16, sub: u16) -> Vec<u8> {
        let mut f = fmt16(TAG_EXTENSIBLE, nch, rate, bits);
        f.extend_from_slice(&22u16.to_le_bytes());
        f.extend_from_slice(&valid.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes()); // channel mask: front centre
        f.extend_from_slice(&sub.to_le_bytes());
        f.extend_from_slice(&SUBTYPE_GUID_TAIL);
        f
    }

    fn read_bytes(bytes: &[u8]) -> Result<(Audio, Encoding), String> {
        decode(bytes)
    }

    #[test]
    fn round_trips_mono_and_stereo_in_both_formats() {
        let a = Audio {
            sample_rate: 8000,
            channels: vec![
                (0..100).map(|t| (t as f32 * 0.1).sin() * 0.9).collect(),
                (0..100).map(|t| (t as f32 * 0.07).cos() * 0.5).collect(),
            ],
        };
        for (fmt, tol) in [(WavFormat::Float32, 0.0), (WavFormat::Pcm16, 0.5 / 32768.0)] {
            for nch in [1, 2] {
                let x = Audio {
                    sample_rate: a.sample_rate,
                    channels: a.channels[..nch].to_vec(),
                };
                let p = tmp(&format!("{fmt:?}{nch}.wav"));
                write(&p, &x, fmt).unwrap();
                let (y, enc) = read_with_encoding(&p).unwrap();
                std::fs::remove_file(&p).ok();
                assert_eq!((y.sample_rate, y.channels.len(), y.len()), (8000, nch, 100));
                assert_eq!(enc.float, fmt == WavFormat::Float32);
                for (cx, cy) in x.channels.iter().zip(&y.channels) {
                    for (u, v) in cx.iter().zip(cy) {
                        assert!((u - v).abs() <= tol, "{fmt:?}: {u} vs {v}");
                    }
                }
            }
        }
    }

    /// Every supported encoding, built by hand, decodes to the values it stores: integers over
    /// 2^(bits − 1) (8-bit unsigned around 128), floats as they are, fewer valid bits than the
    /// container at the container's top.
    #[test]
    fn every_encoding_decodes_to_its_values() {
        let want = [0.5f32, -0.5, 0.25, -1.0];
        // (name, fmt body, data bytes, container bits, valid bits, float)
        type Case = (&'static str, Vec<u8>, Vec<u8>, u16, u16, bool);
        let mut cases: Vec<Case> = Vec::new();
        cases.push((
            "u8",
            fmt16(TAG_PCM, 1, 8000, 8),
            vec![192, 64, 160, 0],
            8,
            8,
            false,
        ));
        let i16s: Vec<u8> = [16384i16, -16384, 8192, -32768]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        cases.push((
            "i16",
            fmt16(TAG_PCM, 1, 8000, 16),
            i16s.clone(),
            16,
            16,
            false,
        ));
        // 12 valid bits in 16 (plain PCM, left-justified): the same container values
        cases.push((
            "i12 in 16",
            fmt16(TAG_PCM, 1, 8000, 12),
            i16s,
            16,
            12,
            false,
        ));
        let i24s: Vec<u8> = [0x40_0000i32, -0x40_0000, 0x20_0000, -0x80_0000]
            .iter()
            .flat_map(|v| v.to_le_bytes()[..3].to_vec())
            .collect();
        cases.push(("i24", fmt16(TAG_PCM, 1, 8000, 24), i24s, 24, 24, false));
        let i32s: Vec<u8> = [0x4000_0000i32, -0x4000_0000, 0x2000_0000, i32::MIN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        cases.push((
            "i32",
            fmt16(TAG_PCM, 1, 8000, 32),
            i32s.clone(),
            32,
            32,
            false,
        ));
        // extensible, 24 valid bits in a 32-bit container (the low byte zero)
        cases.push((
            "ext 24 in 32",
            fmt_ext(1, 8000, 32, 24, TAG_PCM),
            i32s,
            32,
            24,
            false,
        ));
        let f32s: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
        cases.push((
            "f32",
            fmt16(TAG_FLOAT, 1, 8000, 32),
            f32s.clone(),
            32,
            32,
            true,
        ));
        cases.push((
            "ext f32",
            fmt_ext(1, 8000, 32, 32, TAG_FLOAT),
            f32s,
            32,
            32,
            true,
        ));
        let f64s: Vec<u8> = want
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect();
        cases.push(("f64", fmt16(TAG_FLOAT, 1, 8000, 64), f64s, 64, 64, true));
        for (name, fmt, data, container_bits, valid_bits, float) in cases {
            let bytes = riff(&[(b"fmt ", fmt), (b"data", data)]);
            let (a, enc) = read_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(a.channels, vec![want.to_vec()], "{name}");
            assert_eq!(a.sample_rate, 8000, "{name}");
            let expected = Encoding {
                float,
                container_bits,
                valid_bits,
            };
            assert_eq!(enc, expected, "{name}");
        }
    }

    /// Stereo frames are split into channels in order; odd-sized chunks (with their pad byte)
    /// before `data`, `data` before `fmt `, and chunks after `data` are all read.
    #[test]
    fn chunk_layouts_and_interleaving() {
        let data: Vec<u8> = [1000i16, -1000, 2000, -2000, 3000, -3000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let want = vec![
            vec![1000.0 / 32768.0, 2000.0 / 32768.0, 3000.0 / 32768.0],
            vec![-1000.0 / 32768.0, -2000.0 / 32768.0, -3000.0 / 32768.0],
        ];
        let fmt = fmt16(TAG_PCM, 2, 16000, 16);
        let layouts = [
            riff(&[(b"fmt ", fmt.clone()), (b"data", data.clone())]),
            riff(&[
                (b"LIST", b"INFOx".to_vec()),
                (b"fmt ", fmt.clone()),
                (b"junk", vec![7; 3]),
                (b"data", data.clone()),
                (b"id3 ", vec![1; 9]),
            ]),
            riff(&[(b"data", data.clone()), (b"fmt ", fmt.clone())]),
        ];
        for (i, bytes) in layouts.iter().enumerate() {
            let (a, _) = read_bytes(bytes).unwrap_or_else(|e| panic!("layout {i}: {e}"));
            assert_eq!(a.channels, want, "layout {i}");
        }
        // an odd-sized data chunk needs no pad byte at the very end of the file
        let mono = fmt16(TAG_PCM, 1, 8000, 8);
        let (a, _) = read_bytes(&riff(&[(b"fmt ", mono), (b"data", vec![128, 255, 0])])).unwrap();
        assert_eq!(a.channels, vec![vec![0.0, 127.0 / 128.0, -1.0]]);
    }

    /// What writers get wrong and readers accept: a RIFF size of 0 or one that leaves chunks
    /// out, an odd-sized chunk without its pad byte, and a streaming writer's `data` size of
    /// 0xFFFFFFFF (to the end of the file).
    #[test]
    fn sloppy_writers_are_read() {
        let fmt = fmt16(TAG_PCM, 1, 8000, 16);
        let data: Vec<u8> = [100i16, -200, 300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let want = vec![vec![100.0 / 32768.0, -200.0 / 32768.0, 300.0 / 32768.0]];
        let good = riff(&[
            (b"LIST", b"INFOx".to_vec()),
            (b"fmt ", fmt.clone()),
            (b"data", data.clone()),
        ]);
        let mut riff0 = good.clone();
        riff0[4..8].copy_from_slice(&0u32.to_le_bytes());
        let mut riff_short = good.clone();
        riff_short[4..8].copy_from_slice(&36u32.to_le_bytes()); // as if without the LIST chunk
                                                                // the LIST chunk's pad byte left out
        let pad_at = 12 + 8 + 5;
        assert_eq!(&good[pad_at + 1..pad_at + 5], b"fmt ");
        let mut no_pad = good.clone();
        no_pad.remove(pad_at);
        let mut streamed = good.clone();
        let len_at = streamed.len() - data.len() - 4;
        streamed[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        for (name, bytes) in [
            ("riff 0", riff0),
            ("riff short", riff_short),
            ("no pad", no_pad),
            ("streamed", streamed),
        ] {
            let (a, _) = read_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(a.channels, want, "{name}");
        }
    }

    /// Every malformed or unsupported file is an error that says what is wrong.
    #[test]
    fn bad_files_are_errors_that_say_why() {
        let pcm = fmt16(TAG_PCM, 1, 8000, 16);
        let two = vec![0u8, 1, 2, 3];
        let with = |fmt: Vec<u8>, data: Vec<u8>| riff(&[(b"fmt ", fmt), (b"data", data)]);
        let mut rifx = with(pcm.clone(), two.clone());
        rifx[3] = b'X';
        let mut not_wave = with(pcm.clone(), two.clone());
        not_wave[8..12].copy_from_slice(b"AVI ");
        let mut ext_bad_guid = fmt_ext(1, 8000, 16, 16, TAG_PCM);
        ext_bad_guid[30] ^= 1;
        let mut bad_align = pcm.clone();
        bad_align[12] = 4;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "truncated"),
            (
                "not riff",
                b"OggS and some more bytes".to_vec(),
                "no RIFF header",
            ),
            ("rifx", rifx, "RIFX"),
            ("not wave", not_wave, "not of type WAVE"),
            (
                "no data",
                riff(&[(b"fmt ", pcm.clone())]),
                "no `data` chunk",
            ),
            ("no fmt", riff(&[(b"data", two.clone())]), "no `fmt ` chunk"),
            (
                "short fmt",
                with(pcm[..14].to_vec(), two.clone()),
                "at least 16",
            ),
            (
                "0 channels",
                with(fmt16(TAG_PCM, 0, 8000, 16), two.clone()),
                "0 channels",
            ),
            ("0 Hz", with(fmt16(TAG_PCM, 1, 0, 16), two.clone()), "0 Hz"),
            ("µ-law", with(fmt16(7, 1, 8000, 8), two.clone()), "0x0007"),
            (
                "ext guid",
                with(ext_bad_guid, two.clone()),
                "sub-format GUID",
            ),
            (
                "f16",
                with(fmt16(TAG_FLOAT, 1, 8000, 16), two.clone()),
                "not supported",
            ),
            (
                "i64",
                with(fmt16(TAG_PCM, 1, 8000, 64), two.clone()),
                "not supported",
            ),
            (
                "ext valid > container",
                with(fmt_ext(1, 8000, 16, 20, TAG_PCM), two.clone()),
                "not supported",
            ),
            (
                "block align",
                with(bad_align, two.clone()),
                "block alignment 4",
            ),
            (
                "partial frame",
                with(pcm.clone(), vec![0, 1, 2]),
                "whole number",
            ),
            (
                "nan",
                with(
                    fmt16(TAG_FLOAT, 1, 8000, 32),
                    f32::NAN.to_le_bytes().to_vec(),
                ),
                "sample 0 of channel 0 is not finite",
            ),
        ];
        for (name, bytes, needle) in cases {
            match read_bytes(&bytes) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => assert!(e.contains(needle), "{name}: {e}"),
            }
        }
    }

    /// A file cut anywhere is refused as truncated (none of its prefixes reads as audio).
    #[test]
    fn every_cut_of_a_file_is_refused_as_truncated() {
        let a = Audio {
            sample_rate: 16000,
            channels: vec![vec![0.25; 100], vec![-0.25; 100]],
        };
        for format in [WavFormat::Pcm16, WavFormat::Float32] {
            let bytes = encode(&a, format).unwrap();
            assert_eq!(decode(&bytes).unwrap().0.len(), 100);
            for cut in 0..bytes.len() {
                match decode(&bytes[..cut]) {
                    Ok(x) => panic!("{format:?}: cut at {cut} read as {} frames", x.0.len()),
                    Err(e) => assert!(e.contains("truncated"), "{format:?} cut {cut}: {e}"),
                }
            }
        }
        let p = tmp("cut.wav");
        std::fs::write(&p, &encode(&a, WavFormat::Pcm16).unwrap()[..50]).unwrap();
        let e = read(&p).unwrap_err();
        std::fs::remove_file(&p).ok();
        assert!(
            e.to_string()
                .contains("`data` chunk declares 400 bytes but 6 follow"),
            "{e}"
        );
        assert!(read(tmp("does-not-exist.wav")).is_err());
    }

    /// What `write` refuses, it refuses before touching the file: an existing file keeps its
    /// bytes.
    #[test]
    fn refused_writes_leave_the_target_alone() {
        let p = tmp("keep.wav");
        std::fs::write(&p, b"precious").unwrap();
        let ok = |rate: u32, channels: Vec<Vec<f32>>| Audio {
            sample_rate: rate,
            channels,
        };
        let cases = [
            (ok(0, vec![vec![0.1]]), WavFormat::Pcm16, "0 Hz"),
            (
                ok(3_000_000_000, vec![vec![0.1], vec![0.2]]),
                WavFormat::Float32,
                "32-bit byte rate",
            ),
            (
                ok(8000, vec![]),
                WavFormat::Pcm16,
                "cannot write 0 channels",
            ),
            (
                ok(8000, vec![vec![0.0]; 20000]),
                WavFormat::Float32,
                "cannot write 20000 channels",
            ),
            (
                ok(8000, vec![vec![0.0; 3], vec![0.0; 2]]),
                WavFormat::Pcm16,
                "different lengths",
            ),
            (
                ok(8000, vec![vec![0.0, f32::INFINITY]]),
                WavFormat::Float32,
                "sample 1 of channel 0 is inf",
            ),
        ];
        for (audio, format, needle) in cases {
            let e = write(&p, &audio, format).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            assert_eq!(std::fs::read(&p).unwrap(), b"precious");
        }
        // a good write replaces it and leaves no temporary file behind
        write(&p, &ok(8000, vec![vec![0.5]]), WavFormat::Pcm16).unwrap();
        assert_eq!(read(&p).unwrap().channels, vec![vec![0.5]]);
        let dir = p.parent().unwrap();
        let stem = p.file_name().unwrap().to_string_lossy().to_string();
        let leftovers = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.starts_with(&stem) && n != stem
            })
            .count();
        std::fs::remove_file(&p).ok();
        assert_eq!(leftovers, 0);
    }

    /// The float header is the standard one other readers expect: tag 3, an 18-byte `fmt `
    /// with `cbSize` 0, and a `fact` chunk with the frame count.
    #[test]
    fn written_headers_have_the_standard_fields() {
        let a = Audio {
            sample_rate: 44100,
            channels: vec![vec![0.0; 5], vec![0.0; 5]],
        };
        let pcm = encode(&a, WavFormat::Pcm16).unwrap();
        assert_eq!(pcm.len(), 44 + 20);
        assert_eq!(u32_at(&pcm, 4) as usize, pcm.len() - 8);
        assert_eq!(&pcm[12..16], b"fmt ");
        assert_eq!(
            (u32_at(&pcm, 16), u16_at(&pcm, 20), u16_at(&pcm, 22)),
            (16, 1, 2)
        );
        assert_eq!(
            (
                u32_at(&pcm, 24),
                u32_at(&pcm, 28),
                u16_at(&pcm, 32),
                u16_at(&pcm, 34)
            ),
            (44100, 44100 * 4, 4, 16)
        );
        assert_eq!((&pcm[36..40], u32_at(&pcm, 40)), (&b"data"[..], 20));
        let f = encode(&a, WavFormat::Float32).unwrap();
        assert_eq!(f.len(), 8 + 4 + 26 + 12 + 8 + 40);
        assert_eq!((u32_at(&f, 16), u16_at(&f, 20), u16_at(&f, 36)), (18, 3, 0));
        assert_eq!(
            (&f[38..42], u32_at(&f, 42), u32_at(&f, 46)),
            (&b"fact"[..], 4, 5)
        );
        assert_eq!((&f[50..54], u32_at(&f, 54)), (&b"data"[..], 40));
        // three channels: the 40-byte extensible header, sub-format PCM or float
        let three = Audio {
            sample_rate: 8000,
            channels: vec![vec![0.5, -0.25]; 3],
        };
        for (format, sub, bits) in [
            (WavFormat::Pcm16, TAG_PCM, 16),
            (WavFormat::Float32, TAG_FLOAT, 32),
        ] {
            let b = encode(&three, format).unwrap();
            assert_eq!(
                (u32_at(&b, 16), u16_at(&b, 20), u16_at(&b, 22)),
                (40, TAG_EXTENSIBLE, 3)
            );
            assert_eq!(
                (u16_at(&b, 34), u16_at(&b, 36), u16_at(&b, 38)),
                (bits, 22, bits)
            );
            assert_eq!((u32_at(&b, 40), u16_at(&b, 44)), (0, sub));
            assert_eq!(b[46..60], SUBTYPE_GUID_TAIL);
            let (a, enc) = decode(&b).unwrap();
            assert_eq!(
                (a.channels, enc.float),
                (three.channels.clone(), format == WavFormat::Float32)
            );
        }
    }

    /// Writing through a symbolic link replaces the file it names (the link stays a link), and
    /// the new file keeps the old one's permissions.
    #[cfg(unix)]
    #[test]
    fn writes_follow_links_and_keep_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let target = tmp("linked-target.wav");
        let link = tmp("link.wav");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::remove_file(&link).ok();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let a = Audio {
            sample_rate: 8000,
            channels: vec![vec![0.25]],
        };
        write(&link, &a, WavFormat::Pcm16).unwrap();
        let is_link = std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        let back = read(&target).unwrap();
        std::fs::remove_file(&link).ok();
        std::fs::remove_file(&target).ok();
        assert!(is_link, "the link was replaced by a file");
        assert_eq!(mode, 0o640);
        assert_eq!(back.channels, a.channels);
    }
}
