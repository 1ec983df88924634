//! The models that the firmware example (`examples/firmware`) runs on a Cortex-M, as generated
//! Rust source, and the same models stepped on the host for the firmware's expected outputs.
//!
//! Every model is a core [`Network`] (the quickstart denoiser is one; the demo stack is a
//! network of three layer stages). The generated `model.rs` holds, for each model `NAME`,
//! [`network_to_rust_source`]'s output (the weights as `static` arrays in flash and
//! `pub fn <name>_network()`) followed by:
//!
//! ```text
//! pub const NAME_STATE_LEN: usize;               f32 elements of the network's state
//! pub const NAME_D_OUT: usize;                   features per output sample
//! pub const NAME_STAGES: usize;                  number of stages
//! pub const NAME_STAGE_KINDS: [&str; NAME_STAGES] what each stage is (for the cost lines)
//! ```
//!
//! and `MAX_STAGES` (the most stages of any model); the generated `data.rs` holds
//! `NAME_SAMPLES`, the fixed input `NAME_INPUT: [[f32; d_in]; NAME_SAMPLES]` and the host's
//! outputs `NAME_EXPECTED: [[f32; d_out]; NAME_SAMPLES]`. Nothing is hand-copied: change the
//! model file, rerun the generator, rebuild the firmware.
//!
//! The models ([`generate`]):
//!
//! * `DENOISER`: the quickstart's denoiser. With `--model FILE` (a network blob written by
//!   `cargo run --release --example quickstart`, e.g. `quickstart-out/denoiser.lrnx`) the
//!   trained one; without it, the quickstart's default architecture ([`quickstart_denoiser`]:
//!   a frame codec of 32 samples, 64 channels, an LRU with d_state 32, 1 block) with its seeded initialization, untrained. The
//!   two have the same stages, sizes, footprint and cost; the untrained one needs no training
//!   run, so CI stays fast and reproducible. Its input: 256 samples of a held-out speech clip
//!   (`tests/data/speech/clean_11.wav`) with mixed noise at 0 dB ([`noisy_speech`]).
//! * `DEMO`: S5 → LRU → Mamba ([`demo_stack`]), to show the S5 and Mamba steps on the
//!   Cortex-M too (the denoiser has only LRU layers); 64 samples of a multi-channel test
//!   signal ([`demo_input`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lrnnx_core::{Layer, Network, Stage};
use lrnnx_train::candle_core::{DType, Device};
use lrnnx_train::init::{init_params, Rng};
use serde_json::{json, Value};

use crate::export::{export, ExportError};
use crate::export_network::{
    export_network, network_to_blob, network_to_rust_source, read_network_blob, OwnedNetwork,
};

type Result<T> = std::result::Result<T, ExportError>;

/// The demo stack's layers: lrnnx class and constructor arguments.
fn demo_layers() -> [(&'static str, Value); 3] {
    [
        (
            "lrnnx.models.lti.s5.S5",
            json!({"d_model": 16, "d_state": 16, "discretization": "zoh"}),
        ),
        (
            "lrnnx.models.lti.lru.LRU",
            json!({"d_model": 16, "d_state": 16}),
        ),
        (
            "lrnnx.models.ltv.mamba.Mamba",
            json!({"d_model": 16, "d_state": 8, "expand": 2, "d_conv": 4}),
        ),
    ]
}

/// The demo stack: S5 (LTI, H = 16, P = 16, zoh) → LRU (H = 16, N = 16) → Mamba
/// (d_model = 16, d_state = 8, expand = 2, d_conv = 4) as a network of three layer stages,
/// each with lrnnx's default initialization drawn from `seed`
/// ([`lrnnx_train::init::init_params`]) and exported with [`crate::export::export`].
pub fn demo_stack(seed: u64) -> Result<OwnedNetwork> {
    let root = Rng::new(seed);
    let mut stages = Vec::new();
    for (i, (class, kwargs)) in demo_layers().iter().enumerate() {
        let params = init_params(
            class,
            kwargs,
            &mut root.fork(i as u64),
            DType::F32,
            &Device::Cpu,
        )
        .map_err(|e| ExportError::Param {
            name: (*class).into(),
            reason: e.to_string(),
        })?;
        stages.push(Stage::Layer(export(class, kwargs, &params)?));
    }
    Ok(Network::new(16, stages)?)
}

/// The quickstart's default denoiser architecture
/// ([`lrnnx_train::denoiser::quickstart_denoiser`]: the frame-codec denoiser with LRU layers;
/// [`lrnnx_train::denoiser::QUICKSTART_SIZES`] in the quickstart), initialized from `seed`
/// (untrained) and exported to the core.
pub fn quickstart_denoiser(
    sizes: &lrnnx_train::denoiser::QuickstartSizes,
    seed: u64,
) -> std::result::Result<OwnedNetwork, Box<dyn std::error::Error>> {
    use lrnnx_train::network::Network as TrainNetwork;
    let (spec, _latency) = lrnnx_train::denoiser::quickstart_denoiser(sizes);
    let net = TrainNetwork::new(&spec, 1, seed, &Device::Cpu)?;
    Ok(export_network(&net)?)
}

/// A fixed multi-channel test signal of `samples` samples × `d` features (sample-major):
/// `x[t][c] = 0.5·sin(2π·f_c·t) + 0.1·n[t][c]`, `f_c = (c + 1)/67`, `n` standard normal
/// drawn from `seed`.
pub fn demo_input(samples: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(samples * d);
    for t in 0..samples {
        for c in 0..d {
            let f = (c + 1) as f64 / 67.0;
            let v = 0.5 * (2.0 * std::f64::consts::PI * f * t as f64).sin() + 0.1 * rng.normal();
            x.push(v as f32);
        }
    }
    x
}

/// `samples` samples from `offset` of the held-out clip `tests/data/speech/clean_11.wav`
/// mixed with the quickstart's evaluation noise (mixture noise, seed 1234) at 0 dB SNR over
/// the whole clip.
pub fn noisy_speech(
    samples: usize,
    offset: usize,
) -> std::result::Result<Vec<f32>, Box<dyn std::error::Error>> {
    use lrnnx_train::denoiser::{mix_at_snr, noise, NoiseKind};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech/clean_11.wav");
    let audio = crate::stream::wav::read(&path)?;
    let clean = audio.channels.into_iter().next().unwrap_or_default();
    if clean.len() < offset + samples {
        return Err(format!(
            "{} has {} samples, fewer than {}",
            path.display(),
            clean.len(),
            offset + samples
        )
        .into());
    }
    let n = noise(
        NoiseKind::Mixture,
        clean.len(),
        audio.sample_rate as f64,
        &mut Rng::new(1234),
    )?;
    let noisy = mix_at_snr(&clean, &n, 0.0)?;
    Ok(noisy[offset..offset + samples].to_vec())
}

/// What a stage is, for the cost lines: `Dense<in>x<out>`, the layer's name (`Lru`, `S5Lti`,
/// `Mamba`, ...), the activation (`Silu`, `Abs`, ...), `Glu`, `LayerNorm<d>` / `RmsNorm<d>`,
/// `ResidualBegin`, `ResidualEnd`, `GateEnd`, `Down<k><pooling>`, `Up<k><unpooling>`.
pub fn stage_kind<W: AsRef<[f32]>>(stage: &Stage<W>) -> String {
    match stage {
        Stage::Dense(d) => format!("Dense{}x{}", d.config().d_in, d.config().d_out),
        Stage::Layer(l) => l.config().layer_name().to_string(),
        Stage::Activation(a) => format!("{a:?}"),
        Stage::Glu => "Glu".into(),
        Stage::Norm(n) => format!("{:?}{}", n.config().kind, n.config().d),
        Stage::ResidualBegin => "ResidualBegin".into(),
        Stage::ResidualEnd => "ResidualEnd".into(),
        Stage::GateEnd => "GateEnd".into(),
        Stage::Downsample { factor, pooling } => format!("Down{factor}{pooling:?}"),
        Stage::Upsample { factor, unpooling } => format!("Up{factor}{unpooling:?}"),
    }
}

/// One model of the firmware: its name (an upper-case identifier), network, sample rate, fixed
/// input and the host's outputs.
#[derive(Debug, Clone)]
pub struct FirmwareModel {
    /// Upper-case identifier (`DENOISER`, `DEMO`): the prefix of its generated items.
    pub name: String,
    /// The network.
    pub network: OwnedNetwork,
    /// Sample rate in Hz (0: not given).
    pub sample_rate: f32,
    /// The fixed input, `samples·d_input` values, sample-major.
    pub input: Vec<f32>,
    /// The host's outputs over `input` from a zero state, `samples·d_output` values.
    pub expected: Vec<f32>,
}

impl FirmwareModel {
    /// Steps `network` from a zero state over `input` sample by sample (lrnnx-core's
    /// [`Layer::step`], as the firmware does) for the expected outputs.
    pub fn new(
        name: &str,
        network: OwnedNetwork,
        sample_rate: f32,
        input: Vec<f32>,
    ) -> Result<Self> {
        let ok_name = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_uppercase())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !ok_name {
            return Err(ExportError::Source(format!(
                "model name `{name}` is not an upper-case identifier"
            )));
        }
        let (di, dout) = (network.d_input(), network.d_output());
        if input.is_empty() || !input.len().is_multiple_of(di) {
            return Err(ExportError::Source(format!(
                "{name}: input of {} values is not a whole, positive number of {di}-feature samples",
                input.len()
            )));
        }
        let mut state = vec![0.0; network.state_len()];
        let mut expected = vec![0.0; input.len() / di * dout];
        for (x, y) in input.chunks_exact(di).zip(expected.chunks_exact_mut(dout)) {
            network.step(&mut state, x, y)?;
        }
        Ok(FirmwareModel {
            name: name.into(),
            network,
            sample_rate,
            input,
            expected,
        })
    }

    /// Samples in the fixed input.
    pub fn samples(&self) -> usize {
        self.input.len() / self.network.d_input()
    }
}

/// The generated `model.rs` (contract in the module doc).
pub fn model_source(models: &[FirmwareModel]) -> Result<String> {
    let mut s = String::from(
        "// Generated by lrnnx::firmware (cargo run --release --example firmware_model). \
         Do not edit.\n\n",
    );
    let max_stages = models
        .iter()
        .map(|m| m.network.stages().len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        s,
        "/// The most stages of any model.\npub const MAX_STAGES: usize = {max_stages};\n"
    );
    for m in models {
        let n = &m.name;
        s.push_str(&network_to_rust_source(&m.network, n, m.sample_rate)?);
        let kinds: Vec<String> = m
            .network
            .stages()
            .iter()
            .map(|st| format!("{:?}", stage_kind(st)))
            .collect();
        let _ = write!(
            s,
            "\n/// `f32` elements of `{n}`'s state (zeros = start).\n\
             pub const {n}_STATE_LEN: usize = {};\n\
             /// Features per output sample of `{n}`.\npub const {n}_D_OUT: usize = {};\n\
             /// Stages of `{n}`.\npub const {n}_STAGES: usize = {};\n\
             /// What each stage of `{n}` is.\n\
             pub const {n}_STAGE_KINDS: [&str; {n}_STAGES] = [{}];\n\n",
            m.network.state_len(),
            m.network.d_output(),
            kinds.len(),
            kinds.join(", ")
        );
    }
    Ok(s)
}

/// Appends `pub static NAME: [[f32; d]; ROWS]` (every value in the shortest form that reads
/// back to the same bits).
fn push_rows(
    s: &mut String,
    doc: &str,
    name: &str,
    rows: &str,
    d: usize,
    values: &[f32],
) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ExportError::Source(format!(
            "{name}[{i}] is {}, not finite",
            values[i]
        )));
    }
    let _ = write!(
        s,
        "/// {doc}\n#[allow(clippy::approx_constant, clippy::excessive_precision)]\n\
         pub static {name}: [[f32; {d}]; {rows}] = [\n"
    );
    for row in values.chunks_exact(d) {
        s.push_str("    [");
        for (i, v) in row.iter().enumerate() {
            s.push_str(if i == 0 { "" } else { ", " });
            let _ = write!(s, "{v:?}");
        }
        s.push_str("],\n");
    }
    s.push_str("];\n\n");
    Ok(())
}

/// The generated `data.rs`: for each model `NAME_SAMPLES`, `NAME_INPUT` and `NAME_EXPECTED`.
pub fn data_source(models: &[FirmwareModel]) -> Result<String> {
    let mut s = String::from(
        "// Generated by lrnnx::firmware (cargo run --release --example firmware_model). \
         Do not edit.\n\n",
    );
    for m in models {
        let (n, di, dout) = (&m.name, m.network.d_input(), m.network.d_output());
        if m.expected.len() != m.samples() * dout {
            return Err(ExportError::Source(format!(
                "{n}: {} expected values are not {} samples of {dout} features",
                m.expected.len(),
                m.samples()
            )));
        }
        let rows = format!("{n}_SAMPLES");
        let _ = writeln!(
            s,
            "/// Samples in `{n}`'s fixed input.\npub const {rows}: usize = {};\n",
            m.samples()
        );
        push_rows(
            &mut s,
            &format!("The fixed input of `{n}`, one row per sample."),
            &format!("{n}_INPUT"),
            &rows,
            di,
            &m.input,
        )?;
        push_rows(
            &mut s,
            &format!("`{n}` stepped by lrnnx-core on the host over its input."),
            &format!("{n}_EXPECTED"),
            &rows,
            dout,
            &m.expected,
        )?;
    }
    Ok(s)
}

/// Samples of noisy speech the denoiser runs over.
pub const DENOISER_SAMPLES: usize = 256;
/// Where in the clip they start (inside the first sentence).
pub const DENOISER_OFFSET: usize = 8000;
/// Seed of the untrained denoiser's initialization.
pub const DENOISER_SEED: u64 = 0;
/// Samples of the demo stack's input.
pub const DEMO_SAMPLES: usize = 64;
/// Seed of the demo stack's weights.
pub const DEMO_WEIGHT_SEED: u64 = 7;
/// Seed of the demo input's noise.
pub const DEMO_INPUT_SEED: u64 = 11;

/// Writes `text` to `path` unless the file already holds exactly that (so that an unchanged
/// model does not make cargo rebuild the firmware).
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(());
    }
    std::fs::write(path, text)
}

/// Builds the firmware's models (module doc) — the denoiser read from the network blob
/// `model` when given, else the quickstart's architecture untrained — steps them on the host,
/// and writes `model.rs` and `data.rs` into `dir` (created if missing; files left as they are
/// when unchanged).
pub fn generate(
    dir: &Path,
    model: Option<&Path>,
) -> std::result::Result<Vec<FirmwareModel>, Box<dyn std::error::Error>> {
    let (denoiser, sample_rate) = match model {
        Some(path) => {
            let blob = std::fs::read(path)
                .map_err(|e| format!("cannot read the model {}: {e}", path.display()))?;
            let f = read_network_blob(&blob)
                .map_err(|e| format!("the model {}: {e}", path.display()))?;
            (f.network, f.sample_rate)
        }
        None => {
            // Through the blob, as a trained model would come.
            let net = quickstart_denoiser(&lrnnx_train::denoiser::QUICKSTART_SIZES, DENOISER_SEED)?;
            let f = read_network_blob(&network_to_blob(&net, 16_000.0)?)?;
            (f.network, f.sample_rate)
        }
    };
    if (denoiser.d_input(), denoiser.d_output()) != (1, 1) {
        return Err(format!(
            "the denoiser takes {} and gives {} features a sample; the firmware's speech input \
             needs 1 → 1",
            denoiser.d_input(),
            denoiser.d_output()
        )
        .into());
    }
    let models = vec![
        FirmwareModel::new(
            "DENOISER",
            denoiser,
            sample_rate,
            noisy_speech(DENOISER_SAMPLES, DENOISER_OFFSET)?,
        )?,
        FirmwareModel::new(
            "DEMO",
            demo_stack(DEMO_WEIGHT_SEED)?,
            0.0,
            demo_input(DEMO_SAMPLES, 16, DEMO_INPUT_SEED),
        )?,
    ];
    std::fs::create_dir_all(dir)?;
    write_if_changed(&dir.join("model.rs"), &model_source(&models)?)?;
    write_if_changed(&dir.join("data.rs"), &data_source(&models)?)?;
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo network equals its layers stepped one after another over whole sequences
    /// (`run_sequence` per layer: a different loop order, same recurrences).
    #[test]
    fn demo_network_equals_layer_by_layer_sequences() {
        let net = demo_stack(3).unwrap();
        let kinds: Vec<_> = net.stages().iter().map(stage_kind).collect();
        assert_eq!(kinds, ["S5Lti", "Lru", "Mamba"]);
        let x = demo_input(20, 16, 2);
        let mut v = x.clone();
        for st in net.stages() {
            let Stage::Layer(l) = st else { panic!() };
            let l = l.as_layer();
            let mut state = vec![0.0; l.state_len()];
            let mut y = vec![0.0; v.len() / l.d_input() * l.d_output()];
            lrnnx_core::run_sequence(l, &mut state, &v, &mut y).unwrap();
            v = y;
        }
        let m = FirmwareModel::new("DEMO", net, 0.0, x).unwrap();
        assert_eq!(m.expected, v);
        // Same seed, same weights; another seed, others.
        let w = |n: &OwnedNetwork| match &n.stages()[2] {
            Stage::Layer(l) => l.weights().to_vec(),
            _ => unreachable!(),
        };
        assert_eq!(w(&demo_stack(3).unwrap()), w(&m.network));
        assert_ne!(w(&demo_stack(4).unwrap()), w(&m.network));
    }

    /// Small quickstart-shaped sizes for fast tests.
    fn small(
        frame: usize,
        channels: usize,
        state: usize,
    ) -> lrnnx_train::denoiser::QuickstartSizes {
        lrnnx_train::denoiser::QuickstartSizes {
            frame,
            channels,
            state,
            blocks: 1,
        }
    }

    #[test]
    fn denoiser_has_the_quickstart_stages_and_speech_is_noisy() {
        let net = quickstart_denoiser(&small(8, 8, 4), 0).unwrap();
        let kinds: Vec<_> = net.stages().iter().map(stage_kind).collect();
        assert_eq!(
            kinds,
            [
                "Down8Concat",
                "Dense8x8",
                "ResidualBegin",
                "Abs",
                "Lru",
                "Silu",
                "Dense8x8",
                "GateEnd",
                "Dense8x8",
                "Up8Split"
            ]
        );
        let x = noisy_speech(64, DENOISER_OFFSET).unwrap();
        assert_eq!(x.len(), 64);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
        assert!(rms > 1e-3 && x.iter().all(|v| v.is_finite()), "rms {rms}");
        assert!(noisy_speech(10, 1 << 30).is_err());
    }

    #[test]
    fn bad_models_and_data_are_errors() {
        let net = quickstart_denoiser(&small(4, 4, 2), 0).unwrap();
        for name in ["", "lower", "1X", "A-B"] {
            assert!(FirmwareModel::new(name, net.clone(), 0.0, vec![0.5]).is_err());
        }
        assert!(FirmwareModel::new("D", net.clone(), 0.0, vec![]).is_err());
        let e = FirmwareModel::new("D", net.clone(), 0.0, vec![f32::NAN]);
        assert!(e.is_err());
        let mut m = FirmwareModel::new("D", net, 0.0, vec![0.5, -0.25]).unwrap();
        m.expected[1] = f32::INFINITY;
        let e = data_source(&[m.clone()]).unwrap_err().to_string();
        assert!(e.contains("D_EXPECTED[1]"), "{e}");
        m.expected.pop();
        assert!(data_source(&[m]).is_err());
    }

    #[test]
    fn sources_hold_the_contract() {
        let net = quickstart_denoiser(&small(4, 4, 2), 0).unwrap();
        let m = FirmwareModel::new("DEN", net, 16000.0, vec![1.0, 0.1, -2.5]).unwrap();
        let src = model_source(std::slice::from_ref(&m)).unwrap();
        for item in [
            "pub const MAX_STAGES: usize = 10;",
            "pub fn den_network()",
            &format!(
                "pub const DEN_STATE_LEN: usize = {};",
                m.network.state_len()
            ),
            "pub const DEN_D_OUT: usize = 1;",
            "pub const DEN_STAGES: usize = 10;",
            "pub const DEN_STAGE_KINDS: [&str; DEN_STAGES] = [\"Down4Concat\", \"Dense4x4\",",
        ] {
            assert!(src.contains(item), "{item} not in\n{src}");
        }
        let d = data_source(std::slice::from_ref(&m)).unwrap();
        assert!(d.contains("pub const DEN_SAMPLES: usize = 3;"), "{d}");
        assert!(d.contains("pub static DEN_INPUT: [[f32; 1]; DEN_SAMPLES] = [\n    [1.0],\n    [0.1],\n    [-2.5],\n"), "{d}");
        let first = format!(
            "pub static DEN_EXPECTED: [[f32; 1]; DEN_SAMPLES] = [\n    [{:?}],",
            m.expected[0]
        );
        assert!(d.contains(&first), "{d}");
    }
}
