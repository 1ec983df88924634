//! The step path allocates nothing: a counting global allocator watches every layer that the
//! importer can build from the golden cases while it steps through the case's input.

use std::path::Path;

use lrnnx::golden::{case_files, Case};
use lrnnx::import::build_core;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "common/multirate.rs"]
mod multirate;
use counting_alloc::allocations;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 10]);
    drop(v);
    assert!(allocations() > before);
}

#[test]
fn stepping_every_core_layer_allocates_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden");
    let mut checked = Vec::new();
    for file in case_files(&dir).unwrap() {
        let case = Case::load(&file).unwrap();
        if case.kind() != "module" {
            continue;
        }
        let Ok(model) = build_core(
            case.class(),
            case.ctor_kwargs(),
            &case.file.params("param."),
        ) else {
            continue;
        };
        let layer = model.as_layer();
        let x = &case.tensor("input.x").unwrap().data;
        let mut state = vec![0.0f32; layer.state_len()];
        let mut y = vec![0.0f32; layer.d_output()];
        let before = allocations();
        for xt in x.chunks_exact(layer.d_input()) {
            layer.step(&mut state, xt, &mut y).unwrap();
            if let Some(ev) = model.as_event_layer() {
                ev.step_event(&mut state, xt, 0.7, &mut y).unwrap();
            }
        }
        assert_eq!(
            allocations(),
            before,
            "{} allocated while stepping",
            case.name
        );
        checked.push(case.name.clone());
    }
    println!("stepped without allocation: {checked:?}");
    // Every module case of the golden set (all layer kinds and discretizations).
    assert_eq!(checked.len(), 29, "{checked:?}");
}

/// lrnnx-stream's `process`, `process_block` and `process_event` allocate nothing, on an
/// exported network holding an LTI layer (LRU), an event layer (Mamba) and every single-rate
/// stage kind (dense, activation, GLU, LayerNorm, RMSNorm, residual, gate); the rate changes
/// are in `multi_rate_denoisers_stream_without_allocating` below.
#[test]
fn stream_processing_allocates_nothing() {
    use lrnnx::export_network::export_network;
    use lrnnx::stream::Processor;
    use lrnnx::train::candle_core::Device;
    use lrnnx::train::denoiser::causal_denoiser;
    use lrnnx::train::network::{Activation, Network, NormKind, StageSpec};
    use serde_json::json;

    let mut spec = causal_denoiser(
        "LRU",
        &json!({"d_model": 8, "d_state": 8}),
        8,
        2,
        Activation::Gelu,
    );
    let last = spec.len() - 2;
    spec.insert(
        last,
        StageSpec::Layer {
            class: "lrnnx.models.ltv.mamba.Mamba".into(),
            kwargs: json!({"d_model": 8, "d_state": 4, "d_conv": 4, "expand": 2}),
        },
    );
    let last = spec.len() - 2;
    spec.splice(
        last..last,
        [
            StageSpec::ResidualBegin,
            StageSpec::Norm {
                kind: NormKind::LayerNorm,
                d: 8,
                eps: 1e-5,
            },
            StageSpec::Norm {
                kind: NormKind::RmsNorm,
                d: 8,
                eps: 1e-5,
            },
            StageSpec::GateEnd,
        ],
    );
    let net = Network::new(&spec, 1, 3, &Device::Cpu).unwrap();
    let core = export_network(&net).unwrap();
    let mut p = Processor::new(&core);
    let input: Vec<f32> = (0..512).map(|t| (t as f32 * 0.1).sin()).collect();
    let mut output = vec![0.0f32; 512];
    let before = allocations();
    for (x, y) in input.iter().zip(output.iter_mut()) {
        p.process(std::slice::from_ref(x), std::slice::from_mut(y))
            .unwrap();
    }
    for (x, y) in input.chunks(64).zip(output.chunks_mut(64)) {
        p.process_block(x, y).unwrap();
    }
    for (x, y) in input.iter().zip(output.iter_mut()) {
        p.process_event(std::slice::from_ref(x), 0.5, std::slice::from_mut(y))
            .unwrap();
    }
    p.reset();
    assert_eq!(allocations(), before, "stream processing allocated");
}

/// The multi-rate denoisers (the quickstart's frame codec and the U-Net: downsample and
/// upsample stages, frames cut anywhere by the blocks) stream without allocating.
#[test]
fn multi_rate_denoisers_stream_without_allocating() {
    use lrnnx::export_network::export_network;
    use lrnnx::stream::Processor;
    use lrnnx::train::candle_core::Device;
    use lrnnx::train::network::Network;

    let input: Vec<f32> = (0..700).map(|t| (t as f32 * 0.07).sin()).collect();
    for (name, spec) in multirate::small_multirate_denoisers() {
        let net = Network::new(&spec, 1, 4, &Device::Cpu).unwrap();
        let core = export_network(&net).unwrap();
        let mut p = Processor::new(&core);
        let mut output = vec![0.0f32; input.len()];
        let before = allocations();
        for (x, y) in input.iter().zip(output.iter_mut()) {
            p.process(std::slice::from_ref(x), std::slice::from_mut(y))
                .unwrap();
        }
        for (x, y) in input.chunks(33).zip(output.chunks_mut(33)) {
            p.process_block(x, y).unwrap();
        }
        p.reset();
        assert_eq!(allocations(), before, "{name}: stream processing allocated");
        assert!(output.iter().any(|v| *v != 0.0), "{name}: no output");
    }
}

/// The core language model's `step` and `generate` (greedy and top-k sampling) allocate
/// nothing, on a model with a Mamba block, an attention block (key/value cache), gated MLPs and
/// LayerNorm; the refused steps (full cache, bad token) allocate nothing either.
#[test]
fn language_model_stepping_allocates_nothing() {
    use lrnnx::core::lm::{Sampling, SplitMix64};
    use lrnnx::export_lm::export_lm;
    use lrnnx::train::candle_core::{DType, Device};
    use lrnnx::train::init::Rng;
    use lrnnx::train::lm::{init_params, LanguageModel};
    use serde_json::json;

    let kw = json!({
        "d_model": 16, "d_state": 4, "n_layer": 2, "vocab_size": 30, "d_intermediate": 40,
        "mixer_types": ["Mamba", "attn"], "rms_norm": false, "tie_embeddings": false,
        "fused_add_norm": false,
        "mixer_kwargs": {"attn": {"num_heads": 4, "num_heads_kv": 2, "causal": true}},
    });
    let params = init_params(&kw, &mut Rng::new(3), DType::F32, &Device::Cpu).unwrap();
    let lm = export_lm(&LanguageModel::from_lrnnx(&kw, params).unwrap(), 64).unwrap();
    let mut state = vec![0.0f32; lm.state_len()];
    let mut out = [0usize; 20];
    let mut rng = SplitMix64::new(1);
    let before = allocations();
    for t in 0..10 {
        lm.step(&mut state, t).unwrap();
    }
    lm.generate(&mut state, &[1, 2], Sampling::Greedy, &mut rng, &mut out)
        .unwrap();
    let s = Sampling::Temperature {
        temperature: 0.9,
        top_k: Some(5),
    };
    lm.generate(&mut state, &[3], s, &mut rng, &mut out)
        .unwrap();
    assert!(lm.step(&mut state, 99).is_err());
    assert!(lm
        .generate(&mut state, &[3], s, &mut rng, &mut [0usize; 40])
        .is_err());
    assert_eq!(allocations(), before, "language model stepping allocated");
}
