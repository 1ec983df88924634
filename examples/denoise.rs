//! Denoise a WAV file with an exported model, streamed sample by sample.
//!
//! ```text
//! cargo run --release --example denoise -- MODEL IN.wav OUT.wav
//! ```
//!
//! `MODEL` is a network blob (`denoiser.lrnx` from the quickstart, or any
//! `lrnnx::export_network::network_to_blob` output) with one input and one output. Every
//! channel of `IN.wav` is processed independently (its own state). The file's sample rate must
//! be the model's: a different rate is refused with a clear error (resample first, e.g.
//! `sox in.wav -r 16000 out.wav`). The output has the input's channels and rate, 16-bit PCM
//! when the input was integer PCM, float otherwise; a model whose output lags by `latency`
//! samples (the blob says) is fed `latency` zeros after the input and its first `latency`
//! outputs are dropped, so the output lines up with the input.

use std::time::Instant;

use lrnnx::export_network::read_network_blob;
use lrnnx::stream::wav::{self, Audio, WavFormat};
use lrnnx::stream::Processor;

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, input, output] = args.as_slice() else {
        return Err("usage: denoise MODEL IN.wav OUT.wav".into());
    };
    let bytes = std::fs::read(model).map_err(|e| format!("{model}: {e}"))?;
    let file = read_network_blob(&bytes).map_err(|e| format!("{model}: {e}"))?;
    use lrnnx::core::Layer;
    if file.network.d_input() != 1 || file.network.d_output() != 1 {
        return Err(format!(
            "{model}: the model maps {} inputs to {} outputs; a denoiser maps 1 to 1",
            file.network.d_input(),
            file.network.d_output()
        )
        .into());
    }
    let (audio, encoding) = wav::read_with_encoding(input)?;
    if file.sample_rate > 0.0 && audio.sample_rate as f32 != file.sample_rate {
        return Err(format!(
            "{input} is sampled at {} Hz but the model was trained at {} Hz; \
             resample the file first (e.g. `sox {input} -r {} resampled.wav`)",
            audio.sample_rate, file.sample_rate, file.sample_rate
        )
        .into());
    }
    let start = Instant::now();
    let mut channels = Vec::with_capacity(audio.channels.len());
    for ch in &audio.channels {
        let mut p = Processor::new(&file.network);
        let mut input = ch.clone();
        input.resize(ch.len() + file.latency, 0.0);
        let mut out = vec![0.0f32; input.len()];
        // Blocks of 256 samples, as an audio callback would deliver them.
        for (x, y) in input.chunks(256).zip(out.chunks_mut(256)) {
            p.process_block(x, y)?;
        }
        out.drain(..file.latency);
        channels.push(out);
    }
    let secs = start.elapsed().as_secs_f64();
    let result = Audio {
        sample_rate: audio.sample_rate,
        channels,
    };
    let format = if encoding.float {
        WavFormat::Float32
    } else {
        WavFormat::Pcm16
    };
    wav::write(output, &result, format)?;
    println!(
        "denoise: {input} -> {output}: {} channel(s), {:.2} s of audio in {:.3} s ({:.0}x real time)",
        result.channels.len(),
        audio.seconds(),
        secs,
        audio.seconds() * audio.channels.len() as f64 / secs
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("denoise: error: {e}");
        std::process::exit(1);
    }
}
