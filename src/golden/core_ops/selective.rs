//! Golden op cases of the selective scan (`selective_scan_ref`): runs
//! [`lrnnx_core::scan::selective::selective_scan`] on the case's raw arguments and compares
//! `out` (`core:out`) and `last_state` (`core:last_state`).
//!
//! Layouts (see the golden README): `u`, `delta`, `z`, `deltaA` `(b, d, L)`; `A` `(d, n)` or
//! complex `(d, n, 2)`; `B`/`C` fixed `(d, n)` (complex `(d, n, 2)`), variable `(b, n, L)` or
//! grouped `(b, G, n, L)` (complex: last axis `2L`, re/im interleaved).

use lrnnx_core::scan::selective::{selective_scan, InputMatrix, SelectiveScanArgs, StateMatrix};
use lrnnx_core::Discretization;

use super::super::{compare, Case, Line, Outcome};
use crate::safetensors_io::Tensor;

/// Report lines for one op case (empty = unsupported).
pub fn check(case: &Case) -> Vec<Line> {
    let line = |implementation: &str, outcome: Outcome| Line {
        case: case.name.clone(),
        implementation: implementation.to_owned(),
        outcome,
    };
    match run(case) {
        Ok((out, state)) => [
            ("core:out", "output.out", out),
            ("core:last_state", "output.last_state", state),
        ]
        .into_iter()
        .map(|(imp, key, ours)| {
            let outcome = match case.tensor(key) {
                Ok(r) => Outcome::Compared(compare(&ours, &r.data)),
                Err(e) => Outcome::Error(e.to_string()),
            };
            line(imp, outcome)
        })
        .collect(),
        Err(e) => vec![line(
            "core",
            Outcome::Error(format!("case {}: {e}", case.name)),
        )],
    }
}

/// `B` or `C` from its stored shape: `(d, n[, 2])` fixed, `(b, n, L')` variable,
/// `(b, G, n, L')` grouped (`L' = L`, or `2L` for complex `A`).
fn input_matrix<'a>(
    t: &'a Tensor,
    name: &str,
    (d, n, complex): (usize, usize, bool),
) -> Result<InputMatrix<'a>, String> {
    let fixed: &[usize] = if complex { &[d, n, 2] } else { &[d, n] };
    match t.shape.as_slice() {
        s if s == fixed => Ok(InputMatrix::Fixed(&t.data)),
        [_, _, _] => Ok(InputMatrix::Varying {
            data: &t.data,
            groups: 1,
        }),
        [_, g, _, _] => Ok(InputMatrix::Varying {
            data: &t.data,
            groups: *g,
        }),
        s => Err(format!("`{name}` has an unexpected shape {s:?}")),
    }
}

fn run(case: &Case) -> Result<(Vec<f32>, Vec<f32>), String> {
    let get = |k: &str| case.tensor(k).map_err(|e| e.to_string());
    let opt = |k: &str| case.file.get(k).map(|t| t.data.as_slice());
    let args = case.config.get("op_args");
    let disc_name = args
        .and_then(|a| a.get("discretization"))
        .and_then(|v| v.as_str())
        .unwrap_or("mamba");
    let discretization = Discretization::from_name(disc_name)
        .ok_or_else(|| format!("unknown discretization `{disc_name}`"))?;
    let delta_softplus = args
        .and_then(|a| a.get("delta_softplus"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let u = get("input.u")?;
    let (b, d, l) = match u.shape.as_slice() {
        [b, d, l] => (*b, *d, *l),
        s => return Err(format!("`input.u` has shape {s:?}, expected (b, d, L)")),
    };
    let a = get("input.A")?;
    let (n, complex) = match a.shape.as_slice() {
        [ad, n] if *ad == d => (*n, false),
        [ad, n, 2] if *ad == d => (*n, true),
        s => return Err(format!("`input.A` has shape {s:?}, expected (d, n[, 2])")),
    };
    let dims = (d, n, complex);
    let b_t = get("input.B")?;
    let c_t = get("input.C")?;
    let scan = SelectiveScanArgs {
        batch: b,
        dim: d,
        d_state: n,
        len: l,
        u: &u.data,
        delta: &get("input.delta")?.data,
        a: if complex {
            StateMatrix::Complex(&a.data)
        } else {
            StateMatrix::Real(&a.data)
        },
        b: input_matrix(b_t, "input.B", dims)?,
        c: input_matrix(c_t, "input.C", dims)?,
        d: opt("input.D"),
        z: opt("input.z"),
        delta_bias: opt("input.delta_bias"),
        delta_a: opt("input.deltaA"),
        delta_softplus,
        discretization,
    };
    let mut out = vec![0.0f32; scan.out_len()];
    let mut state = vec![0.0f32; scan.state_len()];
    selective_scan(&scan, &mut out, &mut state).map_err(|e| e.to_string())?;
    Ok((out, state))
}
