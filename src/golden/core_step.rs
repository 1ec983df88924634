//! Implementation `core`: builds the `lrnnx-core` layer from the case's lrnnx weights and steps it
//! over `input.x` one sample at a time (with `input.integration_timesteps` as the event time
//! step in event cases), then compares with `output.y` (`core:y`) and `output.y_step`
//! (`core:y_step`).

use lrnnx_core::{run_event_sequence, run_sequence};

use super::{compare, dims3, Case, Line, Outcome};
use crate::import::{build_core, ImportError};

/// Cases where lrnnx's own step path deviates from its forward on purpose-less grounds (its
/// bugs, spec §18); the core follows the forward, so `output.y_step` is not a target there.
/// Returns the reason.
pub fn documented_step_deviation(case: &Case) -> Option<&'static str> {
    let disc = case
        .ctor_kwargs()
        .get("discretization")
        .and_then(|v| v.as_str());
    (case.class() == "lrnnx.models.ltv.mamba.Mamba" && disc == Some("bilinear")).then_some(
        "lrnnx's Mamba step uses exp(ΔA) for bilinear while its scan uses the bilinear ratio \
         (spec §18.2); the core steps with the scan's transition",
    )
}

/// Steps the core layer of a module case over its input, batch row by batch row.
pub fn step_outputs(case: &Case) -> Result<Vec<f32>, Outcome> {
    let err = |e: String| Outcome::Error(e);
    let model = match build_core(
        case.class(),
        case.ctor_kwargs(),
        &case.file.params("param."),
    ) {
        Ok(m) => m,
        Err(ImportError::UnsupportedClass(c)) => {
            return Err(Outcome::Unsupported(format!("no core layer for {c}")))
        }
        Err(e) => return Err(err(format!("case {}: {e}", case.name))),
    };
    let x = case.tensor("input.x").map_err(|e| err(e.to_string()))?;
    let (b, l, h) = dims3(x, &case.name, "input.x").map_err(err)?;
    let layer = model.as_layer();
    if layer.d_input() != h {
        return Err(err(format!(
            "case {}: layer takes {} features, input.x has {h}",
            case.name,
            layer.d_input()
        )));
    }
    let d_out = layer.d_output();
    let mut y = vec![0.0f32; b * l * d_out];
    let taus = if case.event_mode() {
        let t = case
            .tensor("input.integration_timesteps")
            .map_err(|e| err(e.to_string()))?;
        if t.data.len() != b * l {
            return Err(err(format!(
                "case {}: integration_timesteps has {} values, expected {}",
                case.name,
                t.data.len(),
                b * l
            )));
        }
        Some(&t.data)
    } else {
        None
    };
    for row in 0..b {
        let mut state = vec![0.0f32; layer.state_len()];
        let xs = &x.data[row * l * h..(row + 1) * l * h];
        let ys = &mut y[row * l * d_out..(row + 1) * l * d_out];
        let result = match (taus, model.as_event_layer()) {
            (Some(t), Some(ev)) => {
                run_event_sequence(ev, &mut state, xs, &t[row * l..(row + 1) * l], ys)
            }
            (Some(_), None) => {
                return Err(err(format!(
                    "case {} is an event case but the core layer has no event step",
                    case.name
                )))
            }
            (None, _) => run_sequence(layer, &mut state, xs, ys),
        };
        result.map_err(|e| err(format!("case {}: {e}", case.name)))?;
    }
    Ok(y)
}

/// The `core` implementation's report lines for one case.
pub fn check(case: &Case) -> Vec<Line> {
    let line = |implementation: &str, outcome: Outcome| Line {
        case: case.name.clone(),
        implementation: implementation.to_owned(),
        outcome,
    };
    if case.kind() == "op" {
        return super::core_ops::check(case);
    }
    if case.kind() == "lm" {
        return super::core_lm::check(case);
    }
    if case.kind() != "module" {
        return vec![line(
            "core",
            Outcome::Unsupported(format!(
                "{} cases are checked by other implementations",
                case.kind()
            )),
        )];
    }
    let y = match step_outputs(case) {
        Ok(y) => y,
        Err(outcome) => return vec![line("core", outcome)],
    };
    let mut lines = Vec::new();
    for (implementation, key) in [("core:y", "output.y"), ("core:y_step", "output.y_step")] {
        if key == "output.y_step" && documented_step_deviation(case).is_some() {
            continue;
        }
        let outcome = match case.tensor(key) {
            Ok(r) => Outcome::Compared(compare(&y, &r.data)),
            Err(e) => Outcome::Error(e.to_string()),
        };
        lines.push(line(implementation, outcome));
    }
    lines
}
