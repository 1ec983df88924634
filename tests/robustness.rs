//! Bad input from a user's data never panics: every layer the importer builds from the golden
//! cases is driven with wrong lengths through `step`, `step_prechecked` and the sequence
//! helpers, and the importer is fed absurd sizes and corrupt files.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use lrnnx::core::{run_sequence, Error};
use lrnnx::golden::{case_files, Case};
use lrnnx::import::{build_core, ImportError};
use lrnnx::safetensors_io::TensorFile;
use serde_json::json;

fn golden_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden")
}

#[test]
fn wrong_lengths_are_errors_and_prechecked_steps_do_not_panic() {
    let mut layers = 0;
    for file in case_files(golden_dir()).unwrap() {
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
        layers += 1;
        let layer = model.as_layer();
        let (di, dout, sl) = (layer.d_input(), layer.d_output(), layer.state_len());
        let mut state = vec![0.0f32; sl];
        let mut y = vec![0.0f32; dout];
        assert!(matches!(
            layer.step(&mut state, &vec![0.0; di + 1], &mut y),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            layer.step(&mut state[..sl - 1], &vec![0.0; di], &mut y),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            run_sequence(
                layer,
                &mut state,
                &vec![0.0; 3 * di],
                &mut vec![0.0; 2 * dout]
            ),
            Err(Error::BufferLength { .. })
        ));
        // The unchecked entry point with every combination of short and long buffers.
        for (s_len, x_len, y_len) in [
            (0, 0, 0),
            (1, 1, 1),
            (sl / 2, di / 2, dout / 2),
            (sl + 7, di + 3, dout + 5),
        ] {
            let mut s = vec![0.5f32; s_len];
            let x = vec![0.25f32; x_len];
            let mut yy = vec![0.0f32; y_len];
            let r = catch_unwind(AssertUnwindSafe(|| {
                layer.step_prechecked(&mut s, &x, &mut yy);
                if let Some(ev) = model.as_event_layer() {
                    ev.step_event_prechecked(&mut s, &x, 0.5, &mut yy);
                }
            }));
            assert!(
                r.is_ok(),
                "{}: step_prechecked panicked with lengths {s_len}/{x_len}/{y_len}",
                case.name
            );
        }
    }
    assert!(layers >= 29, "only {layers} layers were built");
}

#[test]
fn absurd_sizes_are_errors_not_aborts() {
    let empty = TensorFile::default();
    let p = empty.params("");
    for (class, kwargs) in [
        (
            "lrnnx.models.lti.s5.S5",
            json!({"d_model": 1, "d_state": 1u64 << 61, "discretization": "zoh"}),
        ),
        (
            "lrnnx.models.lti.s5.S5",
            json!({"d_model": 300000, "d_state": 300000, "discretization": "zoh"}),
        ),
        (
            "lrnnx.models.lti.lru.LRU",
            json!({"d_model": 1u64 << 40, "d_state": 1u64 << 40}),
        ),
        (
            "lrnnx.models.lti.s4.S4",
            json!({"d_model": 1, "d_state": 1 << 20, "transposed": false}),
        ),
        (
            "lrnnx.models.lti.s4d.S4D",
            json!({"d_model": 1u64 << 62, "d_state": 64, "transposed": false}),
        ),
        (
            "lrnnx.models.lti.centaurus.CentaurusFull",
            json!({"d_model": 1u64 << 32, "d_state": 1u64 << 32, "sub_state_dim": 2}),
        ),
        (
            "lrnnx.models.ltv.mamba.Mamba",
            json!({"d_model": 1u64 << 40, "d_state": 16}),
        ),
        (
            "lrnnx.models.ltv.s5.S5",
            json!({"d_model": 1u64 << 40, "d_state": 1u64 << 40}),
        ),
        (
            "lrnnx.models.ltv.rglru.RGLRU",
            json!({"d_model": 1u64 << 40}),
        ),
        (
            "lrnnx.models.ltv.s7.S7",
            json!({"d_model": 1u64 << 40, "d_state": 8}),
        ),
    ] {
        let r = catch_unwind(|| build_core(class, &kwargs, &p).map(|_| ()));
        match r {
            Ok(Err(
                ImportError::Core(_) | ImportError::Allocation { .. } | ImportError::Kwarg { .. },
            )) => {}
            Ok(Ok(())) => panic!("{class} {kwargs} was accepted"),
            Ok(Err(e)) => panic!("{class} {kwargs}: unexpected error {e}"),
            Err(_) => panic!("{class} {kwargs} panicked"),
        }
    }
}

#[test]
fn corrupt_or_truncated_files_are_errors() {
    let bytes = std::fs::read(golden_dir().join("lru.safetensors")).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            TensorFile::from_bytes(&bytes[..cut]).is_err(),
            "truncated at {cut} was accepted"
        );
    }
    let mut garbage = bytes.clone();
    garbage[0] = 0xff;
    garbage[7] = 0x7f;
    assert!(TensorFile::from_bytes(&garbage).is_err());
    // A missing tensor and a mis-shaped one are named.
    let mut file = TensorFile::from_bytes(&bytes).unwrap();
    let kwargs = json!({"d_model": 8, "d_state": 16});
    file.tensors.remove("param.nu_log");
    let e = build_core("lrnnx.models.lti.lru.LRU", &kwargs, &file.params("param."))
        .err()
        .unwrap();
    assert!(e.to_string().contains("nu_log"), "{e}");
    let mut file = TensorFile::from_bytes(&bytes).unwrap();
    file.tensors.get_mut("param.C_re").unwrap().shape = vec![16, 8];
    let e = build_core("lrnnx.models.lti.lru.LRU", &kwargs, &file.params("param."))
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("C_re") && e.to_string().contains("(16, 8)"),
        "{e}"
    );
}

/// Scan primitives called with dimensions whose products overflow: errors, never panics
/// (debug builds check integer overflow; release builds would otherwise wrap and index out of
/// bounds).
#[test]
fn scans_reject_overflowing_dims() {
    use lrnnx::core::scan::rglru::{rglru_scan, RgLruScanDims};
    use lrnnx::core::scan::s7::{s7_scan, S7ScanDims, S7ScanInputs};
    use lrnnx::core::scan::selective::{
        selective_scan, InputMatrix, SelectiveScanArgs, StateMatrix,
    };
    use lrnnx::core::scan::simplified::{
        simplified_scan, SimplifiedScanDims, SimplifiedScanInputs,
    };
    use lrnnx::core::Discretization;
    let huge = 1usize << 63;
    let r = catch_unwind(|| {
        let (a, bc) = ([-1.0f32; 2], [1.0f32; 2]);
        let args = SelectiveScanArgs {
            batch: 1,
            dim: 2,
            d_state: 1,
            len: huge,
            u: &[],
            delta: &[],
            a: StateMatrix::Real(&a),
            b: InputMatrix::Fixed(&bc),
            c: InputMatrix::Fixed(&bc),
            d: None,
            z: None,
            delta_bias: None,
            delta_a: None,
            delta_softplus: true,
            discretization: Discretization::Mamba,
        };
        selective_scan(&args, &mut [], &mut [0.0f32; 2]).is_err()
    });
    assert_eq!(r.ok(), Some(true), "selective_scan");
    let r = catch_unwind(|| {
        let (u, mut out) = ([0.0f32; 2], [0.0f32; 2]);
        let dims = S7ScanDims {
            batch: 2,
            d_model: 1,
            d_state: huge,
            len: 1,
        };
        let inputs = S7ScanInputs {
            u: &u,
            a: &[],
            b: &[],
            c: &[],
            bias: None,
        };
        s7_scan(dims, inputs, &mut out, &mut []).is_err()
    });
    assert_eq!(r.ok(), Some(true), "s7_scan");
    let r = catch_unwind(|| {
        let dims = RgLruScanDims {
            batch: 1,
            d: huge,
            d_state: 2,
            len: 2,
        };
        rglru_scan(dims, &[], &[], &[], &mut [], &mut []).is_err()
    });
    assert_eq!(r.ok(), Some(true), "rglru_scan");
    // a huge state; and L = 0, which makes every buffer empty whatever the other sizes while
    // the row offsets still overflow
    for (what, d_model, d_state, len, io) in [
        ("simplified_scan", 1, huge, 1, 4),
        ("simplified_scan, L = 0", huge, 0, 0, 0),
    ] {
        let r = catch_unwind(|| {
            let dims = SimplifiedScanDims {
                batch: 2,
                d_model,
                d_state,
                len,
            };
            let u = vec![0.0f32; io];
            let inputs = SimplifiedScanInputs {
                u: &u,
                delta: &[],
                a: &[],
                b: &[],
                c: &[],
                delta_a: None,
            };
            let mut out = vec![0.0f32; io];
            simplified_scan(dims, Discretization::Zoh, inputs, &mut out, &mut []).is_err()
        });
        assert_eq!(r.ok(), Some(true), "{what}");
    }
}

/// A huge but finite event time step never produces NaN: the state decays to its limit.
#[test]
fn huge_event_time_steps_stay_finite() {
    for file in case_files(golden_dir()).unwrap() {
        let case = Case::load(&file).unwrap();
        if case.kind() != "module" || !case.event_mode() {
            continue;
        }
        let model = build_core(
            case.class(),
            case.ctor_kwargs(),
            &case.file.params("param."),
        )
        .unwrap();
        let ev = model.as_event_layer().unwrap();
        let x = &case.tensor("input.x").unwrap().data;
        for tau in [1e3f32, 1e10, 1e22, 1e30, f32::MAX] {
            let mut state = vec![0.0f32; ev.state_len()];
            let mut y = vec![0.0f32; ev.d_output()];
            for xt in x.chunks_exact(ev.d_input()).take(4) {
                ev.step_event(&mut state, xt, 0.5, &mut y).unwrap();
                ev.step_event(&mut state, xt, tau, &mut y).unwrap();
                assert!(
                    y.iter().chain(&state).all(|v| v.is_finite()),
                    "{} tau={tau:e}: {y:?}",
                    case.name
                );
            }
        }
    }
}

/// A block's event time steps can sum past `f32::MAX` in a network's downsample: the low-rate
/// layer then gets `f32::MAX` (the largest finite step) rather than +∞, so stepping with two
/// steps of 3e38 gives bit for bit what two steps of `f32::MAX / 2` (exactly `f32::MAX` summed)
/// give, and everything stays finite.
#[test]
fn summed_event_time_steps_saturate_at_f32_max() {
    use lrnnx::core::{EventLayer, Layer};
    use lrnnx::export_network::export_network;
    use lrnnx::train::candle_core::Device;
    use lrnnx::train::network::{Network, Pooling, StageSpec, Unpooling};
    let spec = vec![
        StageSpec::Downsample {
            factor: 2,
            pooling: Pooling::Mean,
        },
        StageSpec::Layer {
            class: "lrnnx.models.ltv.mamba.Mamba".into(),
            kwargs: json!({"d_model": 2, "d_state": 2, "d_conv": 2, "expand": 1}),
        },
        StageSpec::Upsample {
            factor: 2,
            unpooling: Unpooling::Hold,
        },
    ];
    let core = export_network(&Network::new(&spec, 2, 3, &Device::Cpu).unwrap()).unwrap();
    let run = |dt: f32| {
        let mut st = vec![0.0f32; core.state_len()];
        let mut out = Vec::new();
        for t in 0..8 {
            let x = [0.5 - 0.1 * t as f32, 0.25];
            let mut y = [0.0f32; 2];
            core.step_event(&mut st, &x, dt, &mut y).unwrap();
            assert!(
                y.iter().chain(&st).all(|v| v.is_finite()),
                "dt {dt:e}: {y:?}"
            );
            out.extend(y.map(f32::to_bits));
        }
        out
    };
    assert_eq!(run(3e38), run(f32::MAX / 2.0));
}

/// A user's own layer with no outputs: the sequence helpers, the real-time processor and the
/// event pipeline refuse it with an error (their output rows are chunks of `d_output`), and a
/// WAV with a NaN sample is refused before the file is created.
#[test]
fn zero_output_layers_and_nan_audio_are_errors() {
    use lrnnx::core::{run_event_sequence, EventLayer, Layer};
    use lrnnx::stream::events::{EventPipeline, EventTiming};
    use lrnnx::stream::wav::{write, Audio, WavFormat};
    use lrnnx::stream::Processor;

    struct Mute;
    impl Layer for Mute {
        fn d_input(&self) -> usize {
            3
        }
        fn d_output(&self) -> usize {
            0
        }
        fn state_len(&self) -> usize {
            0
        }
        fn step_prechecked(&self, _: &mut [f32], _: &[f32], _: &mut [f32]) {}
    }
    impl EventLayer for Mute {
        fn step_event_prechecked(&self, _: &mut [f32], _: &[f32], _: f32, _: &mut [f32]) {}
    }
    let quiet = |f: &dyn Fn() -> bool| {
        let r = catch_unwind(AssertUnwindSafe(f));
        assert!(matches!(r, Ok(true)), "panicked or accepted");
    };
    quiet(&|| run_sequence(&Mute, &mut [], &[0.0; 6], &mut []).is_err());
    quiet(&|| run_event_sequence(&Mute, &mut [], &[0.0; 6], &[1.0; 2], &mut []).is_err());
    quiet(&|| {
        Processor::new(Mute)
            .process_block(&[0.0; 6], &mut [])
            .is_err()
    });
    quiet(&|| EventPipeline::new(&Mute, 4, 4, EventTiming::default()).is_err());

    let path = std::env::temp_dir().join(format!("lrnnx-nan-{}.wav", std::process::id()));
    for format in [WavFormat::Pcm16, WavFormat::Float32] {
        let audio = Audio {
            sample_rate: 16000,
            channels: vec![vec![0.1, f32::NAN, 0.2]],
        };
        let e = write(&path, &audio, format).unwrap_err();
        assert!(e.to_string().contains("sample 1"), "{e}");
        assert!(!path.exists(), "the file was created");
    }
}
