//! WAV files in and out through the `hound` crate: mono or multichannel, integer PCM (8, 16,
//! 24, 32 bit) or 32-bit float in; 16-bit PCM or 32-bit float out. Samples are `f32` in
//! [−1, 1] (integers divided by `2^(bits−1)`), one `Vec` per channel.

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

    /// Duration in seconds.
    pub fn seconds(&self) -> f64 {
        self.len() as f64 / self.sample_rate.max(1) as f64
    }
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

/// Reads a WAV file (module doc). A truncated file, an unsupported format or a sample that is
/// not finite is an error naming the file.
pub fn read(path: impl AsRef<Path>) -> Result<Audio, WavError> {
    let path = path.as_ref();
    let err = |reason: String| WavError {
        path: path.to_owned(),
        reason,
    };
    let reader = hound::WavReader::open(path).map_err(|e| err(e.to_string()))?;
    let spec = reader.spec();
    let nch = spec.channels as usize;
    if nch == 0 {
        return Err(err("the file declares 0 channels".into()));
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?,
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| (v as f64 * scale) as f32))
                .collect::<Result<_, _>>()
                .map_err(|e| err(e.to_string()))?
        }
        (f, b) => {
            return Err(err(format!(
                "unsupported sample format {f:?} with {b} bits"
            )))
        }
    };
    if !interleaved.len().is_multiple_of(nch) {
        return Err(err(format!(
            "{} samples are not a whole number of {nch}-channel frames (truncated?)",
            interleaved.len()
        )));
    }
    if let Some(i) = interleaved.iter().position(|v| !v.is_finite()) {
        return Err(err(format!("sample {i} is not finite")));
    }
    let frames = interleaved.len() / nch;
    let mut channels = vec![Vec::with_capacity(frames); nch];
    for frame in interleaved.chunks_exact(nch) {
        for (c, v) in channels.iter_mut().zip(frame) {
            c.push(*v);
        }
    }
    Ok(Audio {
        sample_rate: spec.sample_rate,
        channels,
    })
}

/// Writes `audio` as a WAV file in `format`.
pub fn write(path: impl AsRef<Path>, audio: &Audio, format: WavFormat) -> Result<(), WavError> {
    let path = path.as_ref();
    let err = |reason: String| WavError {
        path: path.to_owned(),
        reason,
    };
    let nch = audio.channels.len();
    if nch == 0 || nch > u16::MAX as usize {
        return Err(err(format!("cannot write {nch} channels")));
    }
    if audio.channels.iter().any(|c| c.len() != audio.len()) {
        return Err(err("channels have different lengths".into()));
    }
    let (bits, sample_format) = match format {
        WavFormat::Pcm16 => (16, hound::SampleFormat::Int),
        WavFormat::Float32 => (32, hound::SampleFormat::Float),
    };
    let spec = hound::WavSpec {
        channels: nch as u16,
        sample_rate: audio.sample_rate,
        bits_per_sample: bits,
        sample_format,
    };
    // checked before the file is created: a NaN would be written as 0 (PCM) or as a NaN that
    // `read` then refuses (float)
    for (ci, c) in audio.channels.iter().enumerate() {
        if let Some(t) = c.iter().position(|v| !v.is_finite()) {
            return Err(err(format!(
                "sample {t} of channel {ci} is {} (not finite)",
                c[t]
            )));
        }
    }
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| err(e.to_string()))?;
    for t in 0..audio.len() {
        for c in &audio.channels {
            let v = c[t];
            let r = match format {
                WavFormat::Pcm16 => {
                    w.write_sample((v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
                }
                WavFormat::Float32 => w.write_sample(v),
            };
            r.map_err(|e| err(e.to_string()))?;
        }
    }
    w.finalize().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lrnnx-wav-{}-{name}", std::process::id()))
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
                let y = read(&p).unwrap();
                std::fs::remove_file(&p).ok();
                assert_eq!((y.sample_rate, y.channels.len(), y.len()), (8000, nch, 100));
                for (cx, cy) in x.channels.iter().zip(&y.channels) {
                    for (u, v) in cx.iter().zip(cy) {
                        assert!((u - v).abs() <= tol, "{fmt:?}: {u} vs {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_and_missing_files_are_errors() {
        let p = tmp("trunc.wav");
        let a = Audio {
            sample_rate: 16000,
            channels: vec![vec![0.25; 1000]],
        };
        write(&p, &a, WavFormat::Pcm16).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        for cut in [0, 10, 40, 44 + 3, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            match read(&p) {
                Err(e) => assert!(e.to_string().contains("trunc"), "{e}"),
                // hound accepts a data chunk cut at a sample boundary only with the declared
                // length; anything it does accept must not be the full clip.
                Ok(x) => assert!(x.len() < 1000, "cut {cut} read as complete"),
            }
        }
        std::fs::remove_file(&p).ok();
        assert!(read(tmp("does-not-exist.wav")).is_err());
    }
}
