//! Golden op cases of the simplified (S5) scan: `simplified_scan_ref(u, delta, A, B, C,
//! deltaA=None, discretization, return_last_state=True)`.
//!
//! Both `core:out` (b, H, L, 2) and `core:last_state` (b, P, 2) are compared directly.
//!
//! About `last_state`: the spec (§18.12) reports that lrnnx builds `last_state` from the wrong
//! slice (`out[:, -1, 1::2] + 1j·out[:, -1, 0::2]`). The golden cases were made with
//! `simplified_scan_ref`, and their `output.last_state` is the true final state `x_{L−1}`
//! (checked value by value against the state sequence recomputed by the core scan with
//! `C = I`: every entry of `output.last_state[b, p]` equals `x[b, p, L−1]`, re and im in place).
//! So the buggy construction belongs to lrnnx's CUDA wrapper path (`simplified_scan_fn`), which
//! made no golden data; the core returns the true final state, which is also what these cases
//! hold, and no special layout is needed. The core's final state is additionally checked
//! against an independent complex f64 recurrence in `lrnnx_core::scan::simplified`'s tests.

use lrnnx_core::scan::simplified::{simplified_scan, SimplifiedScanDims, SimplifiedScanInputs};
use lrnnx_core::Discretization;

use super::super::{compare, Case, Line, Outcome};

/// Report lines for one op case (empty = unsupported).
pub fn check(case: &Case) -> Vec<Line> {
    let line = |imp: &str, outcome: Outcome| Line {
        case: case.name.clone(),
        implementation: imp.into(),
        outcome,
    };
    match run(case) {
        Ok((out, last)) => {
            let mut lines = Vec::new();
            for (imp, key, ours) in [
                ("core:out", "output.out", out),
                ("core:last_state", "output.last_state", last),
            ] {
                lines.push(line(
                    imp,
                    match case.tensor(key) {
                        Ok(r) => Outcome::Compared(compare(&ours, &r.data)),
                        Err(e) => Outcome::Error(e.to_string()),
                    },
                ));
            }
            lines
        }
        Err(e) => vec![line("core", Outcome::Error(e))],
    }
}

fn run(case: &Case) -> Result<(Vec<f32>, Vec<f32>), String> {
    let t = |k: &str| case.tensor(k).map_err(|e| e.to_string());
    let (u, delta, a, b, c) = (
        t("input.u")?,
        t("input.delta")?,
        t("input.A")?,
        t("input.B")?,
        t("input.C")?,
    );
    let delta_a = case.file.get("input.deltaA");
    let (batch, h, len) = match u.shape.as_slice() {
        [b, h, l, 2] => (*b, *h, *l),
        s => return Err(format!("input.u has shape {s:?}, expected (b, H, L, 2)")),
    };
    let p = a.shape.first().copied().unwrap_or(0);
    let disc = case
        .config
        .pointer("/op_args/discretization")
        .and_then(|v| v.as_str())
        .unwrap_or("bilinear");
    let rule = Discretization::from_name(disc).ok_or(format!("unknown discretization {disc}"))?;
    let dims = SimplifiedScanDims {
        batch,
        d_model: h,
        d_state: p,
        len,
    };
    let inputs = SimplifiedScanInputs {
        u: &u.data,
        delta: &delta.data,
        a: &a.data,
        b: &b.data,
        c: &c.data,
        delta_a: delta_a.map(|d| &d.data[..]),
    };
    let mut out = vec![0.0; batch * h * len * 2];
    let mut last = vec![0.0; batch * p * 2];
    simplified_scan(dims, rule, inputs, &mut out, &mut last).map_err(|e| e.to_string())?;
    Ok((out, last))
}
