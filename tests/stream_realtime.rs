//! lrnnx-stream's real-time rules, beyond allocation (tests/no_alloc.rs): denormals never
//! reach the stored state, a bad block loses nothing, and reset / save / restore put the
//! stream exactly where it was.

use lrnnx::core::{Layer, Lru, LruConfig, SliceParams, TensorView};
use lrnnx::export_network::export_network;
use lrnnx::stream::denormal::has_subnormal;
use lrnnx::stream::{Processor, StreamError};
use lrnnx::train::candle_core::Device;
use lrnnx::train::denoiser::causal_denoiser;
use lrnnx::train::network::{Activation, Network};
use serde_json::json;

/// An LRU with real decays λ = e^{−e^{nu_log}} ≈ 0.6: after an impulse its state falls
/// through the subnormal range within ~200 steps of silence.
fn fast_decay_lru() -> Lru<Vec<f32>> {
    let (h, n) = (2, 4);
    let nu = vec![(-(0.6f32.ln())).ln(); n];
    let theta = vec![-30.0; n]; // e^{−30}: phase ≈ 0
    let gamma = vec![0.0; n];
    let b = vec![1.0; n * h];
    let c = vec![1.0; h * n];
    let d = vec![0.0; h];
    let z = vec![0.0; n * h];
    let v = |data: &'static [f32], shape: &'static [usize]| TensorView { data, shape };
    let leak = |x: Vec<f32>| -> &'static [f32] { Box::leak(x.into_boxed_slice()) };
    let entries = [
        ("nu_log", v(leak(nu), &[4])),
        ("theta_log", v(leak(theta), &[4])),
        ("gamma_log", v(leak(gamma), &[4])),
        ("B_re", v(leak(b), &[4, 2])),
        ("B_im", v(leak(z.clone()), &[4, 2])),
        ("C_re", v(leak(c), &[2, 4])),
        ("C_im", v(leak(z), &[2, 4])),
        ("D", v(leak(d), &[2])),
    ];
    let cfg = LruConfig {
        d_model: h,
        d_state: n,
    };
    Lru::from_lrnnx(
        cfg,
        &SliceParams { entries: &entries },
        vec![0.0; cfg.weights_len()],
    )
    .unwrap()
}

/// Without the processor, plain stepping leaves subnormals in the state (so the check below
/// can fail); through the processor the state never holds one.
#[test]
fn a_long_silence_leaves_no_subnormal_state() {
    let lru = fast_decay_lru();
    let mut raw = vec![0.0f32; lru.state_len()];
    let mut y = [0.0f32; 2];
    lru.step(&mut raw, &[1.0, 1.0], &mut y).unwrap();
    let mut saw_subnormal = false;
    for _ in 0..400 {
        lru.step(&mut raw, &[0.0, 0.0], &mut y).unwrap();
        saw_subnormal |= has_subnormal(&raw);
    }
    assert!(
        saw_subnormal,
        "the reference recurrence never became subnormal"
    );

    let mut p = Processor::new(&lru);
    p.process(&[1.0, 1.0], &mut y).unwrap();
    let silence = vec![0.0f32; 2 * 16];
    let mut out = vec![0.0f32; 2 * 16];
    for _ in 0..25 {
        p.process_block(&silence, &mut out).unwrap();
        assert!(!has_subnormal(p.state()), "subnormal state after a block");
        for _ in 0..16 {
            p.process(&[0.0, 0.0], &mut y).unwrap();
            assert!(!has_subnormal(p.state()), "subnormal state after a sample");
        }
    }
}

#[test]
fn bad_input_loses_nothing_and_save_restore_reset_are_exact() {
    let spec = causal_denoiser(
        "LRU",
        &json!({"d_model": 4, "d_state": 6}),
        4,
        1,
        Activation::Tanh,
    );
    let net = Network::new(&spec, 1, 9, &Device::Cpu).unwrap();
    let core = export_network(&net).unwrap();
    let signal: Vec<f32> = (0..300).map(|t| (t as f32 * 0.05).sin()).collect();
    let mut p = Processor::new(&core);
    let mut out = vec![0.0f32; 300];
    p.process_block(&signal[..100], &mut out[..100]).unwrap();

    // A NaN anywhere in a block, or wrong lengths: refused, state unchanged.
    let before = p.state().to_vec();
    let mut bad = signal[100..200].to_vec();
    bad[57] = f32::NAN;
    let e = p.process_block(&bad, &mut out[100..200]).unwrap_err();
    assert_eq!(
        e,
        StreamError::NonFinite {
            what: "input block",
            index: 57
        }
    );
    assert!(p
        .process_block(&signal[100..200], &mut out[100..199])
        .is_err());
    assert!(p.process(&[1.0, 2.0], &mut [0.0]).is_err());
    assert_eq!(p.state(), &before[..]);

    // Save, continue, restore, continue again: identical outputs.
    let saved = p.state().to_vec();
    let mut first = vec![0.0f32; 200];
    p.process_block(&signal[100..], &mut first).unwrap();
    p.restore(&saved).unwrap();
    let mut second = vec![0.0f32; 200];
    p.process_block(&signal[100..], &mut second).unwrap();
    assert_eq!(first, second);
    assert!(p.restore(&saved[1..]).is_err());
    let mut nan_state = saved.clone();
    nan_state[0] = f32::INFINITY;
    assert!(p.restore(&nan_state).is_err());

    // Reset = a fresh processor.
    p.reset();
    let mut fresh = Processor::new(&core);
    let (mut a, mut b) = (vec![0.0f32; 300], vec![0.0f32; 300]);
    p.process_block(&signal, &mut a).unwrap();
    fresh.process_block(&signal, &mut b).unwrap();
    assert_eq!(a, b);
    // And a zero, negative or NaN event time step is refused, naming the value, and leaves
    // the state as it was.
    let before = p.state().to_vec();
    for dt in [0.0f32, -1.0, f32::NAN] {
        match p.process_event(&[0.0], dt, &mut [0.0]) {
            Err(StreamError::Core(lrnnx::core::Error::InvalidTimeStep { value, .. })) => {
                assert!(value.to_bits() == dt.to_bits(), "{value} vs {dt}")
            }
            other => panic!("dt = {dt}: {other:?}"),
        }
        assert_eq!(p.state(), &before[..], "dt = {dt}: the state changed");
    }
}
