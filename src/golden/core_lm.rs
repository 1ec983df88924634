//! Implementation `core` on language-model cases (`kind = lm`): the core
//! [`lrnnx_core::LanguageModel`] is built from the case's constructor arguments and state dict
//! ([`crate::export_lm::lm_from_lrnnx`]) and stepped token by token over every row of
//! `input.input_ids` from a zero state; its logits are compared with lrnnx's forward
//! (`core:logits`) and lrnnx's own step path (`core:logits_step`).

use lrnnx_train::candle_core::{Device, Tensor};
use lrnnx_train::Params;

use super::{compare, Case, Line, Outcome};
use crate::export_lm::lm_from_lrnnx;

/// The stepped logits `(B, L, V)` of the case's ids.
fn stepped_logits(case: &Case) -> Result<Vec<f32>, String> {
    let mut params = Params::new();
    for (key, t) in &case.file.tensors {
        if let Some(name) = key.strip_prefix("param.") {
            let x = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            params.insert(name, &x).map_err(|e| e.to_string())?;
        }
    }
    let ids = case.tensor("input.input_ids").map_err(|e| e.to_string())?;
    let (b, l) = match ids.shape.as_slice() {
        [b, l] => (*b, *l),
        s => {
            return Err(format!(
                "`input.input_ids` has shape {s:?}, expected (B, L)"
            ))
        }
    };
    let lm = lm_from_lrnnx(case.ctor_kwargs(), &params, l.max(1)).map_err(|e| e.to_string())?;
    let v = lm.config().padded_vocab;
    let mut out = Vec::with_capacity(b * l * v);
    for row in ids.data.chunks_exact(l.max(1)).take(b) {
        let mut state = vec![0.0f32; lm.state_len()];
        for &id in row {
            if !(id >= 0.0 && id.fract() == 0.0) {
                return Err(format!("`input.input_ids` holds {id}, not a token id"));
            }
            let logits = lm
                .step(&mut state, id as usize)
                .map_err(|e| e.to_string())?;
            out.extend_from_slice(logits);
        }
    }
    Ok(out)
}

/// The `core` implementation's report lines for one language-model case.
pub fn check(case: &Case) -> Vec<Line> {
    let line = |implementation: &str, outcome: Outcome| Line {
        case: case.name.clone(),
        implementation: implementation.to_owned(),
        outcome,
    };
    let ours = match stepped_logits(case) {
        Ok(y) => y,
        Err(e) => {
            return vec![line(
                "core",
                Outcome::Error(format!("case {}: {e}", case.name)),
            )]
        }
    };
    let mut lines = Vec::new();
    for (implementation, key) in [
        ("core:logits", "output.logits"),
        ("core:logits_step", "output.logits_step"),
    ] {
        let outcome = match case.tensor(key) {
            Ok(r) => Outcome::Compared(compare(&ours, &r.data)),
            Err(e) => Outcome::Error(e.to_string()),
        };
        lines.push(line(implementation, outcome));
    }
    lines
}
