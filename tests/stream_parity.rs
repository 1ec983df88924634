//! lrnnx-stream's processor = the training crate's parallel forward, for every layer kind.
//!
//! For each golden module case (every lrnnx class and discretization, event modes included),
//! a network `layer → tanh → dense(H → H)` is built in the training crate with the case's own
//! lrnnx-made layer weights and a seeded dense stage, exported to the core
//! (`lrnnx::export_network`), and streamed frame by frame through `lrnnx::stream::Processor`
//! (`process`, or `process_event` with the event time steps) over a long input (L = 4096,
//! N(0, 0.5²) inputs, event time steps uniform in [0.2, 2]). Asserted against the training
//! network's parallel forward on the same input: `max|diff| ≤ 1e-4·max|y| + 1e-6` (float32
//! rounding accumulated over 4096 steps; 256 for lrnnx's unstable LTI-S5 "bilinear"; the per-layer strict bounds at shorter lengths are in
//! `tests/cross_mode.rs`). Blocks give the same result as single frames, bit for bit.

use std::path::Path;

use lrnnx::export_network::export_network;
use lrnnx::golden::Case;
use lrnnx::stream::Processor;
use lrnnx::train::candle_core::{Device, Tensor};
use lrnnx::train::init::Rng;
use lrnnx::train::network::{Activation, Network, StageSpec};
use lrnnx::train::Params;
use serde_json::Value;

#[path = "common/multirate.rs"]
mod multirate;

const LEN: usize = 4096;
const REL_TOL: f64 = 1e-4;

/// `max|a − b|` over the pairs, infinite when any difference is NaN or the lengths differ (so a
/// NaN on either side fails every bound).
fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0f64, |m, (x, y)| {
        let d = (*x as f64 - *y as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    })
}

const CASES: &[&str] = &[
    "s4",
    "s4d_zoh",
    "s4d_bilinear",
    "s5_lti_zoh",
    "s5_lti_bilinear",
    "s5_lti_dirac",
    "s5_lti_no_discretization",
    "lru",
    "centaurus_neck",
    "centaurus_pointwise",
    "centaurus_dws",
    "centaurus_full",
    "s5_ltv_zoh",
    "s5_ltv_bilinear",
    "s5_ltv_dirac_event",
    "s5_ltv_zoh_event",
    "s5_ltv_zoh_conjsym",
    "mamba_mamba",
    "mamba_zoh_event",
    "mamba_mamba_event",
    "mamba_bilinear",
    "rglru",
    "s7",
];

fn case(name: &str) -> Case {
    Case::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/data/lrnnx-golden/{name}.safetensors")),
    )
    .unwrap()
}

fn golden_params(c: &Case) -> Params {
    let mut p = Params::new();
    for (k, t) in &c.file.tensors {
        if let Some(n) = k.strip_prefix("param.") {
            let t = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &Device::Cpu).unwrap();
            p.insert(n, &t).unwrap();
        }
    }
    p
}

#[test]
fn processor_equals_parallel_forward_for_every_layer_kind() {
    let dev = Device::Cpu;
    for name in CASES {
        let c = case(name);
        let kwargs: Value = c.ctor_kwargs().clone();
        let h = kwargs["d_model"].as_u64().unwrap() as usize;
        let spec = vec![
            StageSpec::Layer {
                class: c.class().to_owned(),
                kwargs,
            },
            StageSpec::Activation(Activation::Tanh),
            StageSpec::Dense {
                d_in: h,
                d_out: h,
                bias: true,
            },
        ];
        let net =
            Network::with_layer_params(&spec, h, 5, &dev, vec![(0, golden_params(&c))]).unwrap();

        // lrnnx's LTI-S5 "bilinear" is its inverted rule with |Ā| > 1 (spec §18; the importer
        // reproduces it): the state grows without bound, so only a short input is meaningful.
        let len = if *name == "s5_lti_bilinear" { 256 } else { LEN };
        let mut rng = Rng::new(11);
        let xs: Vec<f32> = (0..len * h).map(|_| 0.5 * rng.normal() as f32).collect();
        let event = c.event_mode();
        let dts: Vec<f32> = (0..len)
            .map(|_| (0.2 + 1.8 * rng.uniform()) as f32)
            .collect();
        let x = Tensor::from_vec(xs.clone(), (1, len, h), &dev).unwrap();
        let ts = Tensor::from_vec(dts.clone(), (1, len), &dev).unwrap();
        let want: Vec<f32> = net
            .forward(&x, event.then_some(&ts))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();

        let core = export_network(&net).unwrap();
        let mut p = Processor::new(&core);
        let mut got = vec![0.0f32; len * h];
        for ((x, y), dt) in xs.chunks(h).zip(got.chunks_mut(h)).zip(&dts) {
            if event {
                p.process_event(x, *dt, y).unwrap();
            } else {
                p.process(x, y).unwrap();
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max((*v as f64).abs()));
        let err = max_diff(&got, &want);
        println!("{name:28} max|y| {scale:9.3e}  max|diff| {err:9.3e}");
        assert!(
            err <= REL_TOL * scale + 1e-6,
            "{name}: streamed differs from parallel by {err} (max|y| {scale})"
        );
        if !event {
            // A block of frames = the same frames one by one, bit for bit.
            let mut pb = Processor::new(&core);
            let mut got_b = vec![0.0f32; len * h];
            for (xb, yb) in xs.chunks(64 * h).zip(got_b.chunks_mut(64 * h)) {
                pb.process_block(xb, yb).unwrap();
            }
            assert_eq!(got_b, got, "{name}: block processing differs");
        }
    }
}

/// The multi-rate denoisers (the quickstart's frame codec and the U-Net, seeded, small sizes)
/// streamed through the processor in irregular blocks (1, 7, 33, 256 samples, so blocks cut
/// frames anywhere) equal the training network's parallel forward, and block processing
/// equals sample-by-sample processing bit for bit.
#[test]
fn multirate_denoisers_stream_like_the_parallel_forward() {
    let len = 1500; // not a multiple of any frame size
    let mut rng = Rng::new(5);
    let xs: Vec<f32> = (0..len).map(|_| (0.5 * rng.normal()) as f32).collect();
    for (name, spec) in multirate::small_multirate_denoisers() {
        let net = Network::new(&spec, 1, 9, &Device::Cpu).unwrap();
        let x = Tensor::from_vec(xs.clone(), (1, len, 1), &Device::Cpu).unwrap();
        let want: Vec<f32> = net
            .forward(&x, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3, "{name}: output is trivially small");
        let core = export_network(&net).unwrap();
        let mut single = Processor::new(core.clone());
        let by_sample: Vec<f32> = xs
            .iter()
            .map(|x| {
                let mut y = [0.0f32];
                single.process(&[*x], &mut y).unwrap();
                y[0]
            })
            .collect();
        let mut blocks = Processor::new(core);
        let mut by_block = vec![0.0f32; len];
        let (mut at, sizes) = (0usize, [1usize, 7, 33, 256]);
        let mut k = 0;
        while at < len {
            let n = sizes[k % sizes.len()].min(len - at);
            blocks
                .process_block(&xs[at..at + n], &mut by_block[at..at + n])
                .unwrap();
            at += n;
            k += 1;
        }
        assert_eq!(by_block, by_sample, "{name}: blocks differ from samples");
        let worst = max_diff(&by_sample, &want);
        println!("{name}: max|y|={scale:.3e} max|diff|={worst:.3e}");
        assert!(
            worst <= 1e-5 * scale as f64 + 1e-6,
            "{name}: {worst} vs {scale}"
        );
    }
}
