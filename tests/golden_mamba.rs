//! Mamba against lrnnx's golden cases, and the documented step deviation of lrnnx's
//! `Mamba.step` for the bilinear rule (spec §18.2): lrnnx's step uses `exp(ΔA·A)` while its
//! forward (the selective scan) uses the bilinear ratio. The core steps with the scan's
//! transition, so it reproduces `output.y` (the forward) and not lrnnx's `output.y_step`.

use std::path::PathBuf;

use lrnnx::core::{run_event_sequence, run_sequence};
use lrnnx::golden::{compare, Case, Comparison};
use lrnnx::import::build_core;

fn case(name: &str) -> Case {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/data/lrnnx-golden",
        &format!("{name}.safetensors"),
    ]
    .iter()
    .collect();
    Case::load(path).unwrap()
}

/// Steps the imported core layer over `input.x` (and `input.integration_timesteps` in event
/// cases), batch row by batch row, from a zero state.
fn core_steps(case: &Case) -> Vec<f32> {
    let model = build_core(
        case.class(),
        case.ctor_kwargs(),
        &case.file.params("param."),
    )
    .unwrap();
    let layer = model.as_layer();
    let x = case.tensor("input.x").unwrap();
    let [b, l, h] = x.shape[..] else {
        panic!("input.x is not (B, L, H)")
    };
    let mut y = vec![0.0f32; b * l * h];
    for row in 0..b {
        let mut state = vec![0.0f32; layer.state_len()];
        let xs = &x.data[row * l * h..(row + 1) * l * h];
        let ys = &mut y[row * l * h..(row + 1) * l * h];
        if case.event_mode() {
            let taus = &case.tensor("input.integration_timesteps").unwrap().data;
            let ev = model
                .as_event_layer()
                .expect("Mamba imports as an event layer");
            run_event_sequence(ev, &mut state, xs, &taus[row * l..(row + 1) * l], ys).unwrap();
        } else {
            run_sequence(layer, &mut state, xs, ys).unwrap();
        }
    }
    y
}

fn against(ours: &[f32], case: &Case, key: &str) -> Comparison {
    compare(ours, &case.tensor(key).unwrap().data)
}

#[test]
fn every_mamba_case_matches_lrnnx_forward() {
    for rule in ["mamba", "zoh", "bilinear", "dirac"] {
        for suffix in ["", "_event"] {
            let c = case(&format!("mamba_{rule}{suffix}"));
            let ours = core_steps(&c);
            let fwd = against(&ours, &c, "output.y");
            assert!(fwd.ok, "{}: core vs output.y {fwd:?}", c.name);
            if rule != "bilinear" {
                let step = against(&ours, &c, "output.y_step");
                assert!(step.ok, "{}: core vs output.y_step {step:?}", c.name);
            }
        }
    }
}

/// lrnnx's own `step` (output.y_step) differs from its forward (output.y) for the bilinear
/// rule by more than the golden tolerance, while the core equals the forward.
#[test]
fn lrnnx_bilinear_step_deviates_from_its_forward_and_the_core_follows_the_forward() {
    for name in ["mamba_bilinear", "mamba_bilinear_event"] {
        let c = case(name);
        let y = &c.tensor("output.y").unwrap().data;
        let y_step = &c.tensor("output.y_step").unwrap().data;
        let lrnnx_gap = compare(y_step, y);
        assert!(
            !lrnnx_gap.ok && lrnnx_gap.max_abs > 1e-5,
            "{name}: lrnnx's step vs forward {lrnnx_gap:?}"
        );
        let ours = core_steps(&c);
        let fwd = compare(&ours, y);
        assert!(fwd.ok, "{name}: core vs output.y {fwd:?}");
        // The core is much closer to the forward than lrnnx's own step is.
        assert!(
            fwd.max_abs * 10.0 < lrnnx_gap.max_abs,
            "{fwd:?} vs {lrnnx_gap:?}"
        );
        assert!(!against(&ours, &c, "output.y_step").ok);
    }
    // Control: for the other rules lrnnx's step and forward agree.
    let c = case("mamba_zoh_event");
    let gap = compare(
        &c.tensor("output.y_step").unwrap().data,
        &c.tensor("output.y").unwrap().data,
    );
    assert!(gap.ok, "{gap:?}");
}
