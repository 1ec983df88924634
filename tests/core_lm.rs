//! The core language model (`lrnnx_core::LanguageModel`, stepped token by token in f32) against
//! the training crate's `LanguageModel` (parallel forward in f64, itself checked against lrnnx's
//! golden case `lm_mamba_lru`), on random models covering every mixer kind, attention with
//! grouped key/value heads, both norms, tied and untied heads, with and without the gated MLP.
//! Also: the blob round trip, truncated and corrupt blobs, the key/value cache's capacity, bad
//! token ids, and greedy generation against the forward's argmax.

use lrnnx::core::lm::{Mixer, Sampling, SplitMix64};
use lrnnx::core::Error;
use lrnnx::export_lm::{export_lm, lm_to_blob, read_lm_blob, OwnedLm};
use lrnnx::train::candle_core::{DType, Device, Tensor};
use lrnnx::train::init::Rng;
use lrnnx::train::lm::{init_params, LanguageModel};
use lrnnx::train::Params;
use serde_json::{json, Value};

const D: usize = 8;
const VOCAB: usize = 11; // padded to 16

/// `LRNNLMHeadModel` arguments for two blocks of the given mixer types.
fn kwargs(mixers: [&str; 2], rms: bool, tied: bool, d_intermediate: usize) -> Value {
    json!({
        "d_model": D, "d_state": 4, "n_layer": 2, "vocab_size": VOCAB,
        "mixer_types": mixers, "d_intermediate": d_intermediate,
        "rms_norm": rms, "tie_embeddings": tied, "fused_add_norm": false,
        "mixer_kwargs": {
            "S5": {"discretization": "zoh"},
            "S4": {"transposed": false, "l_max": 64},
            "S4D": {"transposed": false, "l_max": 64},
            "Centaurus": {"sub_state_dim": 2},
            "attn": {"num_heads": 4, "num_heads_kv": 2, "causal": true},
        },
    })
}

/// A random model: lrnnx's initialization, then norms, embedding and head redrawn with larger
/// spreads so that every part of the block shows in the logits.
fn random_model(kw: &Value, seed: u64) -> LanguageModel {
    let mut rng = Rng::new(seed);
    let p = init_params(kw, &mut rng, DType::F64, &Device::Cpu).unwrap();
    let mut q = Params::new();
    for (name, var) in p.vars() {
        let t = var.as_tensor();
        let n = t.elem_count();
        let redraw = |scale: f64, offset: f64, rng: &mut Rng| {
            let v: Vec<f64> = (0..n).map(|_| offset + scale * rng.normal()).collect();
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        };
        let is_norm = name.contains("norm");
        let t = if is_norm && name.ends_with(".weight") {
            redraw(0.3, 1.0, &mut rng)
        } else if is_norm || name.ends_with("proj.bias") {
            redraw(0.1, 0.0, &mut rng)
        } else if name == "backbone.embedding.weight" || name == "lm_head.weight" {
            redraw(0.5, 0.0, &mut rng)
        } else {
            t.clone()
        };
        q.insert(name, &t).unwrap();
    }
    LanguageModel::from_lrnnx(kw, q).unwrap()
}

/// Steps the core model over `ids` from a zero state; the logits of every step.
fn core_logits(lm: &OwnedLm, ids: &[usize]) -> Vec<Vec<f32>> {
    let mut state = vec![0.0f32; lm.state_len()];
    ids.iter()
        .map(|&t| lm.step(&mut state, t).unwrap().to_vec())
        .collect()
}

/// The candle model's parallel forward logits over `ids` (one sequence), per position.
fn forward_logits(m: &LanguageModel, ids: &[usize]) -> Vec<Vec<f64>> {
    let ids32: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let x = Tensor::from_vec(ids32, (1, ids.len()), &Device::Cpu).unwrap();
    let y = m.forward(&x, None).unwrap();
    y.get(0).unwrap().to_vec2::<f64>().unwrap()
}

const IDS: [usize; 12] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 15, 0];

#[test]
fn every_mixer_kind_matches_the_training_crates_forward() {
    let configs: &[([&str; 2], bool, bool, usize)] = &[
        (["LRU", "attn"], true, true, 0),
        (["S4", "S4D"], false, false, 20),
        (["S5", "Centaurus"], true, false, 0),
        (["Mamba", "RGLRU"], false, true, 20),
        (["S7", "attn"], false, false, 20),
        (["attn", "Mamba"], true, true, 0),
    ];
    for (i, &(mixers, rms, tied, d_int)) in configs.iter().enumerate() {
        let kw = kwargs(mixers, rms, tied, d_int);
        let m = random_model(&kw, 100 + i as u64);
        let lm = export_lm(&m, 32).unwrap();
        let want = forward_logits(&m, &IDS);
        let got = core_logits(&lm, &IDS);
        let mut worst = 0.0f64;
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), 16);
            let scale = w.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (a, b) in g.iter().zip(w) {
                let err = (*a as f64 - b).abs();
                worst = worst.max(err / scale);
                assert!(
                    err <= 1e-5 * scale + 1e-6,
                    "{mixers:?} rms {rms} tied {tied} mlp {d_int} step {t}: {a} vs {b}"
                );
            }
        }
        println!("{mixers:?} rms={rms} tied={tied} d_intermediate={d_int}: worst rel {worst:.2e}");
        // Round trip through the blob: the same weights, so the same logits bit for bit.
        let back = read_lm_blob(&lm_to_blob(&lm).unwrap()).unwrap();
        let again = core_logits(&back, &IDS);
        for (a, b) in again.iter().flatten().zip(got.iter().flatten()) {
            assert_eq!(a.to_bits(), b.to_bits(), "{mixers:?}: blob round trip");
        }
    }
}

#[test]
fn attention_cache_capacity_is_an_error_and_leaves_the_state() {
    let m = random_model(&kwargs(["LRU", "attn"], true, true, 0), 5);
    let lm = export_lm(&m, 3).unwrap();
    let mut state = vec![0.0f32; lm.state_len()];
    for t in [1, 2, 3] {
        lm.step(&mut state, t).unwrap();
    }
    let before = state.clone();
    let e = lm.step(&mut state, 4).unwrap_err();
    assert_eq!(e, Error::ContextFull { max_context: 3 });
    assert!(e.to_string().contains("max_context"), "{e}");
    assert_eq!(state, before);
    // generate checks the room for the whole run before it starts.
    let mut fresh = vec![0.0f32; lm.state_len()];
    let mut out = [0usize; 3];
    let e = lm
        .generate(
            &mut fresh,
            &[1, 2],
            Sampling::Greedy,
            &mut SplitMix64::new(0),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e, Error::ContextFull { max_context: 3 });
    assert!(fresh.iter().all(|&v| v == 0.0));
    // A corrupt position counter is refused, not indexed with.
    let Mixer::Attention(_) = &lm.blocks()[1].mixer else {
        panic!("block 1 is attention")
    };
    let off = lm.blocks()[0].mixer.state_len();
    let mut bad = vec![0.0f32; lm.state_len()];
    bad[off] = 1.5;
    assert!(lm.step(&mut bad, 1).is_err());
    bad[off] = f32::NAN;
    assert!(lm.step(&mut bad, 1).is_err());
}

#[test]
fn bad_token_ids_and_state_lengths_are_errors() {
    let m = random_model(&kwargs(["Mamba", "attn"], false, false, 0), 6);
    let lm = export_lm(&m, 8).unwrap();
    let mut state = vec![0.0f32; lm.state_len()];
    lm.step(&mut state, 2).unwrap();
    let before = state.clone();
    let e = lm.step(&mut state, 16).unwrap_err();
    assert_eq!(
        e,
        Error::InvalidToken {
            token: 16,
            vocab: 16
        }
    );
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    assert_eq!(state, before);
    let mut short = vec![0.0f32; lm.state_len() - 1];
    assert!(matches!(
        lm.step(&mut short, 1),
        Err(Error::BufferLength { .. })
    ));
    let mut out = [0usize; 2];
    assert!(lm
        .generate(
            &mut state,
            &[1, 99],
            Sampling::Greedy,
            &mut SplitMix64::new(0),
            &mut out
        )
        .is_err());
    assert!(lm
        .generate(
            &mut state,
            &[],
            Sampling::Greedy,
            &mut SplitMix64::new(0),
            &mut out
        )
        .is_err());
    let hot = Sampling::Temperature {
        temperature: 0.0,
        top_k: None,
    };
    assert!(lm
        .generate(&mut state, &[1], hot, &mut SplitMix64::new(0), &mut out)
        .is_err());
    assert_eq!(state, before);
}

#[test]
fn truncated_and_corrupt_blobs_are_refused() {
    let m = random_model(&kwargs(["S5", "attn"], false, false, 20), 7);
    let blob = lm_to_blob(&export_lm(&m, 4).unwrap()).unwrap();
    for cut in (0..blob.len()).step_by(7).chain([blob.len() - 1]) {
        let e = read_lm_blob(&blob[..cut]).expect_err("a truncated blob is refused");
        assert!(e.to_string().contains("offset"), "cut {cut}: {e}");
    }
    let mut padded = blob.clone();
    padded.extend_from_slice(&[0; 4]);
    assert!(read_lm_blob(&padded)
        .unwrap_err()
        .to_string()
        .contains("after the last block"));
    let mut magic = blob.clone();
    magic[0] = b'X';
    assert!(read_lm_blob(&magic)
        .unwrap_err()
        .to_string()
        .contains("magic"));
    let mut version = blob.clone();
    version[8] = 9;
    assert!(read_lm_blob(&version)
        .unwrap_err()
        .to_string()
        .contains("version 9"));
    let mut flag = blob.clone();
    flag[24] = 7; // the tied flag
    let e = read_lm_blob(&flag).unwrap_err().to_string();
    assert!(e.contains("tied flag at offset 24"), "{e}");
    let mut nan = blob.clone();
    nan[40..44].copy_from_slice(&f32::NAN.to_le_bytes()); // the first embedding weight
    let e = read_lm_blob(&nan).unwrap_err().to_string();
    assert!(e.contains("not finite"), "{e}");
    let mut blocks = blob.clone();
    blocks[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(read_lm_blob(&blocks).is_err());
    // The first block's mixer tag (after the header, the model weights and norm_f).
    let tag_at = 40 + 4 * (2 * 16 * D + 2 * D);
    let mut tag = blob.clone();
    tag[tag_at] = 9;
    let e = read_lm_blob(&tag).unwrap_err().to_string();
    assert!(e.contains("mixer tag 9"), "{e}");
}

/// Greedy generation picks, at every step, the argmax of the training crate's forward over the
/// prompt plus the tokens generated so far; top-k = 1 sampling is greedy at any temperature.
#[test]
fn greedy_generation_follows_the_forward() {
    let m = random_model(&kwargs(["Mamba", "attn"], true, true, 20), 8);
    let lm = export_lm(&m, 16).unwrap();
    let prompt = [3usize, 1, 4];
    let mut out = [0usize; 6];
    let mut state = vec![0.0f32; lm.state_len()];
    lm.generate(
        &mut state,
        &prompt,
        Sampling::Greedy,
        &mut SplitMix64::new(0),
        &mut out,
    )
    .unwrap();
    let mut seq = prompt.to_vec();
    for &tok in &out {
        let last = forward_logits(&m, &seq).pop().unwrap();
        let best = (0..VOCAB).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        assert_eq!(tok, best, "position {}", seq.len());
        seq.push(tok);
    }
    let top1 = Sampling::Temperature {
        temperature: 3.0,
        top_k: Some(1),
    };
    let mut again = [0usize; 6];
    let mut state = vec![0.0f32; lm.state_len()];
    lm.generate(
        &mut state,
        &prompt,
        top1,
        &mut SplitMix64::new(9),
        &mut again,
    )
    .unwrap();
    assert_eq!(again, out);
}

/// Building from lrnnx's arguments and state dict names what is wrong: a missing or mis-shaped
/// tensor, a non-causal attention, a tied head that differs from the embedding.
#[test]
fn import_errors_name_the_problem() {
    use lrnnx::export_lm::lm_from_lrnnx;
    let kw = kwargs(["Mamba", "attn"], true, true, 20);
    let m = random_model(&kw, 9);
    let mut full = Params::new();
    for (k, v) in m.vars() {
        full.insert(&k, v.as_tensor()).unwrap();
    }
    assert!(lm_from_lrnnx(&kw, &full, 8).is_ok());
    for (drop, want) in [
        ("backbone.layers.1.mixer.in_proj.weight", "in_proj.weight"),
        ("backbone.layers.0.mlp.fc2.weight", "fc2.weight"),
        ("backbone.norm_f.weight", "norm_f.weight"),
        ("backbone.layers.0.mixer.A_log", "A_log"),
    ] {
        let mut p = Params::new();
        for (k, v) in full.vars() {
            if k != drop {
                p.insert(k, v.as_tensor()).unwrap();
            }
        }
        let e = lm_from_lrnnx(&kw, &p, 8).unwrap_err().to_string();
        assert!(e.contains(want), "{drop}: {e}");
    }
    let mut bad_head = full.clone();
    let emb = full.vars()["backbone.embedding.weight"].as_tensor().clone();
    bad_head
        .insert("lm_head.weight", &(emb * 2.0).unwrap())
        .unwrap();
    let e = lm_from_lrnnx(&kw, &bad_head, 8).unwrap_err().to_string();
    assert!(e.contains("lm_head.weight"), "{e}");
    let mut acausal = kw.clone();
    acausal["mixer_kwargs"]["attn"]["causal"] = json!(false);
    let e = lm_from_lrnnx(&acausal, &full, 8).unwrap_err().to_string();
    assert!(e.contains("causal"), "{e}");
}
