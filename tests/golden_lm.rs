//! The language model equals lrnnx's `LRNNLMHeadModel` on the golden case `lm_mamba_lru`
//! (Mamba and LRU blocks with gated MLPs, RMSNorm, tied embeddings): its parallel forward
//! reproduces `output.logits`, stepping token by token reproduces `output.logits_step`, and
//! back-propagating `loss = Σ logits ⊙ input.g` reproduces every `grad.<key>`. Greedy generation
//! from a prefix of the case's ids starts with the argmax of lrnnx's own logits.

use std::path::{Path, PathBuf};

use lrnnx::golden::{check_file, Outcome};
use lrnnx::safetensors_io::TensorFile;
use lrnnx::train::candle_core::{Device, Tensor};
use lrnnx::train::init::Rng;
use lrnnx::train::lm::{LanguageModel, Sampling};
use lrnnx::train::Params;

fn case_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden/lm_mamba_lru.safetensors")
}

#[test]
fn logits_step_logits_and_gradients_match_lrnnx() {
    let lines = check_file(&case_path());
    let mut wanted = vec!["train:logits".to_string(), "train:logits_step".to_string()];
    let file = TensorFile::read(case_path()).unwrap();
    let grads: Vec<String> = file
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("grad.").map(|g| format!("train:grad.{g}")))
        .collect();
    assert_eq!(grads.len(), 30, "the case's gradient keys");
    wanted.extend(grads);
    for w in &wanted {
        let line = lines
            .iter()
            .find(|l| &l.implementation == w)
            .unwrap_or_else(|| panic!("no `{w}` line"));
        match &line.outcome {
            Outcome::Compared(c) => assert!(c.ok, "{line}"),
            other => panic!("{w}: {other:?}"),
        }
    }
}

#[test]
fn greedy_generation_starts_with_lrnnx_argmax() {
    let file = TensorFile::read(case_path()).unwrap();
    let config: serde_json::Value = serde_json::from_str(&file.metadata["config"]).unwrap();
    let mut params = Params::new();
    for (k, t) in &file.tensors {
        if let Some(name) = k.strip_prefix("param.") {
            let x = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &Device::Cpu).unwrap();
            params.insert(name, &x).unwrap();
        }
    }
    let model = LanguageModel::from_lrnnx(&config["ctor_kwargs"], params).unwrap();
    let ids = &file.tensors["input.input_ids"];
    let logits = &file.tensors["output.logits"];
    let (b, l, v) = (2, 32, 32);
    assert_eq!(ids.shape, [b, l]);
    for lp in [1, 5, 17] {
        let prompt: Vec<u32> = (0..b)
            .flat_map(|s| (0..lp).map(move |t| (s, t)))
            .map(|(s, t)| ids.data[s * l + t] as u32)
            .collect();
        let prompt = Tensor::from_vec(prompt, (b, lp), &Device::Cpu).unwrap();
        let gen = model
            .generate(&prompt, 3, Sampling::Greedy, &mut Rng::new(0))
            .unwrap();
        for (s, g) in gen.iter().enumerate() {
            let row = &logits.data[(s * l + lp - 1) * v..(s * l + lp) * v];
            let best = (0..v).fold(0, |m, i| if row[i] > row[m] { i } else { m });
            assert_eq!(g[0] as usize, best, "sequence {s}, prompt length {lp}");
        }
        // top-k = 1 sampling is greedy whatever the temperature.
        let top1 = model
            .generate(
                &prompt,
                3,
                Sampling::Temperature {
                    temperature: 2.0,
                    top_k: Some(1),
                },
                &mut Rng::new(9),
            )
            .unwrap();
        assert_eq!(top1, gen);
    }
}
