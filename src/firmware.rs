//! The model that the firmware example (`examples/firmware`) runs on a Cortex-M, as generated
//! Rust source, and the same model stepped on the host for the firmware's expected outputs.
//!
//! The firmware is written against a small contract that the generated `model.rs` fulfils
//! ([`FirmwareModel::model_source`]):
//!
//! ```text
//! pub const D_INPUT: usize;            features per input sample
//! pub const D_OUTPUT: usize;           features per output sample
//! pub const STATE_LEN: usize;          f32 elements of the whole model's recurrent state
//! pub const WIDTH: usize;              the widest activation between stages
//! pub const STAGES: usize;             stages, in order (for the per-stage cost)
//! pub const STAGE_NAMES: [&str; STAGES];
//! pub struct Model;                    the layers, viewing `static` weights in flash
//! Model::new() -> lrnnx_core::Result<Model>
//! Model::step(&self, &mut [f32; STATE_LEN], &[f32; D_INPUT], &mut [f32; D_OUTPUT]) -> Result<()>
//! Model::step_stages(&self, k, state, x, &mut [f32; WIDTH]) -> Result<usize>
//!     the first k stages only (k = 0: the input); returns the width written
//! ```
//!
//! and the generated `data.rs` ([`data_source`]) holds the fixed input (`INPUT`) and the
//! host's outputs (`EXPECTED`), `SAMPLES` rows each. Swapping the model (the quickstart
//! denoiser for the demo stack) changes only the generator, not the firmware.
//!
//! Today's model is [`FirmwareModel::demo_stack`]: three core layers exported from freshly
//! initialized (seeded) lrnnx-train layers through [`crate::export`], stepped in sequence.

use std::fmt::Write as _;
use std::path::Path;

use lrnnx_train::candle_core::{DType, Device};
use lrnnx_train::init::{init_params, Rng};
use serde_json::{json, Value};

use crate::export::{export, to_rust_source, CoreLayer, ExportError};

type Result<T> = std::result::Result<T, ExportError>;

/// A chain of core layers, each stage's output the next one's input, stepped sample by sample.
#[derive(Debug, Clone)]
pub struct FirmwareModel {
    stages: Vec<CoreLayer<Vec<f32>>>,
}

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

impl FirmwareModel {
    /// A chain of `stages`; each stage's `d_output` must equal the next one's `d_input`.
    pub fn new(stages: Vec<CoreLayer<Vec<f32>>>) -> Result<Self> {
        if stages.is_empty() {
            return Err(ExportError::Source("a firmware model needs a stage".into()));
        }
        for (i, pair) in stages.windows(2).enumerate() {
            let (out, inp) = (pair[0].as_layer().d_output(), pair[1].as_layer().d_input());
            if out != inp {
                return Err(ExportError::Source(format!(
                    "stage {i} ({}) outputs {out} features but stage {} ({}) takes {inp}",
                    pair[0].config().layer_name(),
                    i + 1,
                    pair[1].config().layer_name()
                )));
            }
        }
        Ok(FirmwareModel { stages })
    }

    /// The demo stack, until the quickstart denoiser replaces it: S5 (LTI, H = 16, P = 16,
    /// zoh) → LRU (H = 16, N = 16) → Mamba (d_model = 16, d_state = 8, expand = 2,
    /// d_conv = 4), each with lrnnx's default initialization drawn from `seed`
    /// ([`lrnnx_train::init::init_params`]) and exported with [`crate::export::export`].
    pub fn demo_stack(seed: u64) -> Result<Self> {
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
            stages.push(export(class, kwargs, &params)?);
        }
        Self::new(stages)
    }

    /// The stages in order.
    pub fn stages(&self) -> &[CoreLayer<Vec<f32>>] {
        &self.stages
    }

    /// Features per input sample (the first stage's `d_input`).
    pub fn d_input(&self) -> usize {
        self.stages[0].as_layer().d_input()
    }

    /// Features per output sample (the last stage's `d_output`).
    pub fn d_output(&self) -> usize {
        self.stages[self.stages.len() - 1].as_layer().d_output()
    }

    /// Elements of the whole model's state: the stages' `state_len`, concatenated.
    pub fn state_len(&self) -> usize {
        self.stages.iter().map(|s| s.as_layer().state_len()).sum()
    }

    /// The widest activation: max over the input and every stage's output.
    fn width(&self) -> usize {
        self.stages
            .iter()
            .map(|s| s.as_layer().d_output())
            .fold(self.d_input(), usize::max)
    }

    /// Steps the model from a zero state over `input` (`L·d_input` values, sample-major),
    /// sample by sample: `y_t = f_S(… f_1(x_t))`, each stage `f_i` advancing its own state.
    /// Returns `L·d_output` values.
    pub fn step_sequence(&self, input: &[f32]) -> Result<Vec<f32>> {
        let (di, dout) = (self.d_input(), self.d_output());
        if !input.len().is_multiple_of(di) {
            return Err(ExportError::Source(format!(
                "input of {} values is not a whole number of {di}-feature samples",
                input.len()
            )));
        }
        let mut states: Vec<Vec<f32>> = self
            .stages
            .iter()
            .map(|s| vec![0.0; s.as_layer().state_len()])
            .collect();
        let mut out = Vec::with_capacity(input.len() / di * dout);
        for x in input.chunks_exact(di) {
            let mut v = x.to_vec();
            for (stage, state) in self.stages.iter().zip(&mut states) {
                let layer = stage.as_layer();
                let mut y = vec![0.0; layer.d_output()];
                layer.step(state, &v, &mut y)?;
                v = y;
            }
            out.extend_from_slice(&v);
        }
        Ok(out)
    }

    /// The generated `model.rs` (the contract in the module doc): every stage's
    /// [`to_rust_source`] as `L<i>_CONFIG` / `L<i>_WEIGHTS`, and `Model` over them.
    pub fn model_source(&self) -> Result<String> {
        let n = self.stages.len();
        let mut s = String::new();
        let names: Vec<String> = self
            .stages
            .iter()
            .map(|st| format!("{:?}", st.config().layer_name()))
            .collect();
        let _ = write!(
            s,
            "// Generated by lrnnx::firmware (cargo run --release --example firmware_model). \
             Do not edit.\n\n\
             use lrnnx_core::Layer as _;\n\n\
             /// Features per input sample.\npub const D_INPUT: usize = {};\n\
             /// Features per output sample.\npub const D_OUTPUT: usize = {};\n\
             /// `f32` elements of the model's recurrent state (zero = start).\n\
             pub const STATE_LEN: usize = {};\n\
             /// The widest activation between stages.\npub const WIDTH: usize = {};\n\
             /// Number of stages.\npub const STAGES: usize = {n};\n\
             /// The stages' layer kinds, in order.\n\
             pub const STAGE_NAMES: [&str; STAGES] = [{}];\n\n",
            self.d_input(),
            self.d_output(),
            self.state_len(),
            self.width(),
            names.join(", ")
        );
        for (i, st) in self.stages.iter().enumerate() {
            s.push_str(&to_rust_source(st, &format!("L{i}"))?);
            s.push('\n');
        }
        s.push_str(
            "/// The model: every stage viewing its weights in flash.\npub struct Model {\n",
        );
        for (i, st) in self.stages.iter().enumerate() {
            let _ = writeln!(
                s,
                "    l{i}: lrnnx_core::{}<&'static [f32]>,",
                st.config().layer_name()
            );
        }
        s.push_str(
            "}\n\nimpl Model {\n    /// Views the weights (checks each layer's config, length and finiteness).\n    \
             pub fn new() -> lrnnx_core::Result<Model> {\n        Ok(Model {\n",
        );
        for (i, st) in self.stages.iter().enumerate() {
            let _ = writeln!(
                s,
                "            l{i}: lrnnx_core::{}::from_weights(L{i}_CONFIG, &L{i}_WEIGHTS[..])?,",
                st.config().layer_name()
            );
        }
        s.push_str("        })\n    }\n\n");
        // The state split, shared by both step functions.
        let mut split = String::new();
        for (i, st) in self.stages.iter().enumerate() {
            let len = st.as_layer().state_len();
            if i + 1 < n {
                let _ = writeln!(
                    split,
                    "        let (s{i}, rest) = rest.split_at_mut({len});"
                );
            } else {
                let _ = writeln!(split, "        let s{i} = rest;");
            }
        }
        // step: stage i reads w[(i+1)%2] (x for i = 0) and writes w[i%2] (y for the last).
        let buf = |i: usize| format!("w{}", i % 2);
        let _ = write!(
            s,
            "    /// One sample through every stage: reads `x`, advances `state`, writes `y`.\n    \
             pub fn step(\n        &self,\n        state: &mut [f32; STATE_LEN],\n        \
             x: &[f32; D_INPUT],\n        y: &mut [f32; D_OUTPUT],\n    ) -> lrnnx_core::Result<()> {{\n        \
             let mut w0 = [0.0f32; WIDTH];\n        let mut w1 = [0.0f32; WIDTH];\n        \
             let _ = (&mut w0, &mut w1);\n        let rest = &mut state[..];\n{split}"
        );
        for (i, st) in self.stages.iter().enumerate() {
            let l = st.as_layer();
            let input = if i == 0 {
                "&x[..]".to_string()
            } else {
                format!("&{}[..{}]", buf(i - 1), l.d_input())
            };
            let output = if i + 1 == n {
                "&mut y[..]".to_string()
            } else {
                format!("&mut {}[..{}]", buf(i), l.d_output())
            };
            let _ = writeln!(s, "        self.l{i}.step(s{i}, {input}, {output})?;");
        }
        s.push_str("        Ok(())\n    }\n\n");
        let _ = write!(
            s,
            "    /// The first `stages` stages only (`0`: the input itself), for the per-stage cost;\n    \
             /// writes the last stage's output to `y[..width]` and returns `width`.\n    \
             pub fn step_stages(\n        &self,\n        stages: usize,\n        \
             state: &mut [f32; STATE_LEN],\n        x: &[f32; D_INPUT],\n        \
             y: &mut [f32; WIDTH],\n    ) -> lrnnx_core::Result<usize> {{\n        \
             let mut w0 = [0.0f32; WIDTH];\n        let mut w1 = [0.0f32; WIDTH];\n        \
             let _ = (&mut w0, &mut w1);\n        let rest = &mut state[..];\n{split}        \
             if stages == 0 {{\n            y[..D_INPUT].copy_from_slice(x);\n            \
             return Ok(D_INPUT);\n        }}\n"
        );
        for (i, st) in self.stages.iter().enumerate() {
            let l = st.as_layer();
            let input = if i == 0 {
                "&x[..]".to_string()
            } else {
                format!("&{}[..{}]", buf(i - 1), l.d_input())
            };
            let (b, w) = (buf(i), l.d_output());
            let _ = writeln!(
                s,
                "        self.l{i}.step(s{i}, {input}, &mut {b}[..{w}])?;"
            );
            if i + 1 < n {
                let _ = writeln!(
                    s,
                    "        if stages == {} {{\n            y[..{w}].copy_from_slice(&{b}[..{w}]);\n            \
                     return Ok({w});\n        }}",
                    i + 1
                );
            } else {
                let _ = writeln!(
                    s,
                    "        y[..{w}].copy_from_slice(&{b}[..{w}]);\n        Ok({w})"
                );
            }
        }
        s.push_str("    }\n}\n");
        Ok(s)
    }
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

/// Appends `pub static NAME: [[f32; d]; rows]` (every value in the shortest form that reads back
/// to the same bits).
fn push_rows(s: &mut String, doc: &str, name: &str, d: usize, values: &[f32]) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ExportError::Source(format!(
            "{name}[{i}] is {}, not finite",
            values[i]
        )));
    }
    let _ = write!(
        s,
        "/// {doc}\n#[allow(clippy::approx_constant, clippy::excessive_precision)]\n\
         pub static {name}: [[f32; {d}]; SAMPLES] = [\n"
    );
    for row in values.chunks_exact(d) {
        s.push_str("    [");
        for (i, v) in row.iter().enumerate() {
            s.push_str(if i == 0 { "" } else { ", " });
            let _ = write!(s, "{v:?}");
        }
        s.push_str("],\n");
    }
    s.push_str("];\n");
    Ok(())
}

/// The generated `data.rs`: `SAMPLES`, the fixed `INPUT` (`d_input` features a row) and the
/// host's `EXPECTED` outputs (`d_output` a row).
pub fn data_source(
    d_input: usize,
    d_output: usize,
    input: &[f32],
    expected: &[f32],
) -> Result<String> {
    let samples = input.len() / d_input.max(1);
    if d_input == 0 || input.len() != samples * d_input || expected.len() != samples * d_output {
        return Err(ExportError::Source(format!(
            "{} input values and {} expected values are not {samples} samples of \
             {d_input} and {d_output} features",
            input.len(),
            expected.len()
        )));
    }
    let mut s = format!(
        "// Generated by lrnnx::firmware (cargo run --release --example firmware_model). \
         Do not edit.\n\n/// Samples in the fixed input.\npub const SAMPLES: usize = {samples};\n\n"
    );
    push_rows(
        &mut s,
        "The fixed input, one row per sample.",
        "INPUT",
        d_input,
        input,
    )?;
    s.push('\n');
    push_rows(
        &mut s,
        "The outputs of lrnnx-core stepped on the host over `INPUT` with the same weights.",
        "EXPECTED",
        d_output,
        expected,
    )?;
    Ok(s)
}

/// Samples in the firmware's fixed input.
pub const DEMO_SAMPLES: usize = 128;
/// Seed of the demo stack's weights.
pub const DEMO_WEIGHT_SEED: u64 = 7;
/// Seed of the fixed input's noise.
pub const DEMO_INPUT_SEED: u64 = 11;

/// What [`generate`] produced: the model, the input and the host's outputs.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The model.
    pub model: FirmwareModel,
    /// The fixed input, `SAMPLES·d_input` values.
    pub input: Vec<f32>,
    /// The host's outputs, `SAMPLES·d_output` values.
    pub expected: Vec<f32>,
}

/// Writes `text` to `path` unless the file already holds exactly that (so that an unchanged
/// model does not make cargo rebuild the firmware).
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(());
    }
    std::fs::write(path, text)
}

/// Builds the firmware's model and input, steps it on the host, and writes `model.rs` and
/// `data.rs` into `dir` (created if missing; files left as they are when unchanged). This is
/// the one place to change to put another model on the firmware.
pub fn generate(dir: &Path) -> std::result::Result<Generated, Box<dyn std::error::Error>> {
    let model = FirmwareModel::demo_stack(DEMO_WEIGHT_SEED)?;
    let input = demo_input(DEMO_SAMPLES, model.d_input(), DEMO_INPUT_SEED);
    let expected = model.step_sequence(&input)?;
    std::fs::create_dir_all(dir)?;
    write_if_changed(&dir.join("model.rs"), &model.model_source()?)?;
    write_if_changed(
        &dir.join("data.rs"),
        &data_source(model.d_input(), model.d_output(), &input, &expected)?,
    )?;
    Ok(Generated {
        model,
        input,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_stack_chains_and_steps() {
        let m = FirmwareModel::demo_stack(DEMO_WEIGHT_SEED).unwrap();
        let names: Vec<_> = m.stages().iter().map(|s| s.config().layer_name()).collect();
        assert_eq!(names, ["S5Lti", "Lru", "Mamba"]);
        assert_eq!((m.d_input(), m.d_output()), (16, 16));
        let x = demo_input(8, 16, 1);
        let y = m.step_sequence(&x).unwrap();
        assert_eq!(y.len(), 8 * 16);
        assert!(y.iter().all(|v| v.is_finite()) && y.iter().any(|v| *v != 0.0));
        assert!(m.step_sequence(&x[..15]).is_err());
        // Same seed, same weights; another seed, others.
        let again = FirmwareModel::demo_stack(DEMO_WEIGHT_SEED).unwrap();
        assert_eq!(again.stages()[2].weights(), m.stages()[2].weights());
        let other = FirmwareModel::demo_stack(DEMO_WEIGHT_SEED + 1).unwrap();
        assert_ne!(other.stages()[2].weights(), m.stages()[2].weights());
    }

    /// The chain equals the stages stepped one after another over whole sequences
    /// (`run_sequence` per stage: a different loop order, same recurrences).
    #[test]
    fn chain_equals_stage_by_stage_sequences() {
        let m = FirmwareModel::demo_stack(3).unwrap();
        let x = demo_input(20, 16, 2);
        let mut v = x.clone();
        for st in m.stages() {
            let l = st.as_layer();
            let mut state = vec![0.0; l.state_len()];
            let mut y = vec![0.0; v.len() / l.d_input() * l.d_output()];
            lrnnx_core::run_sequence(l, &mut state, &v, &mut y).unwrap();
            v = y;
        }
        assert_eq!(m.step_sequence(&x).unwrap(), v);
    }

    #[test]
    fn mismatched_chains_and_bad_data_are_errors() {
        let m = FirmwareModel::demo_stack(1).unwrap();
        let mut stages = m.stages().to_vec();
        assert!(FirmwareModel::new(Vec::new()).is_err());
        let e = export(
            "lrnnx.models.lti.lru.LRU",
            &json!({"d_model": 8, "d_state": 4}),
            &init_params(
                "lrnnx.models.lti.lru.LRU",
                &json!({"d_model": 8, "d_state": 4}),
                &mut Rng::new(1),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        stages.insert(1, e);
        let err = FirmwareModel::new(stages).unwrap_err().to_string();
        assert!(
            err.contains("stage 0 (S5Lti) outputs 16") && err.contains("takes 8"),
            "{err}"
        );
        assert!(data_source(2, 1, &[1.0, 2.0, 3.0], &[0.0]).is_err());
        let e = data_source(1, 1, &[1.0], &[f32::NAN])
            .unwrap_err()
            .to_string();
        assert!(e.contains("EXPECTED[0]"), "{e}");
    }

    #[test]
    fn sources_hold_the_contract() {
        let m = FirmwareModel::demo_stack(2).unwrap();
        let src = m.model_source().unwrap();
        for item in [
            "pub const D_INPUT: usize = 16;",
            "pub const D_OUTPUT: usize = 16;",
            &format!("pub const STATE_LEN: usize = {};", m.state_len()),
            "pub const STAGE_NAMES: [&str; STAGES] = [\"S5Lti\", \"Lru\", \"Mamba\"];",
            "pub static L2_WEIGHTS: [f32; ",
            "l2: lrnnx_core::Mamba<&'static [f32]>,",
            "pub fn step_stages(",
        ] {
            assert!(src.contains(item), "{item} not in\n{src}");
        }
        let d = data_source(2, 1, &[1.0, 0.1, -2.5, 3.0], &[0.5, 1e-8]).unwrap();
        assert!(d.contains("pub const SAMPLES: usize = 2;"), "{d}");
        assert!(d.contains("    [1.0, 0.1],\n    [-2.5, 3.0],\n"), "{d}");
        assert!(d.contains("pub static EXPECTED: [[f32; 1]; SAMPLES] = [\n    [0.5],\n    [1e-8],"));
    }
}
