//! Golden op cases of the S7 scan: `s7_scan_ref(u, A, B, C, bias=None, return_last_state=True)`;
//! `core:out` (b, H, L) and `core:last_state` (b, N) are compared directly.

use lrnnx_core::scan::s7::{s7_scan, S7ScanDims, S7ScanInputs};

use super::super::{compare, Case, Line, Outcome};

/// Report lines for one op case (empty = unsupported).
pub fn check(case: &Case) -> Vec<Line> {
    let line = |imp: &str, outcome: Outcome| Line {
        case: case.name.clone(),
        implementation: imp.into(),
        outcome,
    };
    match run(case) {
        Ok((out, last)) => [
            ("core:out", "output.out", out),
            ("core:last_state", "output.last_state", last),
        ]
        .into_iter()
        .map(|(imp, key, ours)| {
            line(
                imp,
                match case.tensor(key) {
                    Ok(r) => Outcome::Compared(compare(&ours, &r.data)),
                    Err(e) => Outcome::Error(e.to_string()),
                },
            )
        })
        .collect(),
        Err(e) => vec![line("core", Outcome::Error(e))],
    }
}

fn run(case: &Case) -> Result<(Vec<f32>, Vec<f32>), String> {
    let t = |k: &str| case.tensor(k).map_err(|e| e.to_string());
    let (u, a, b, c) = (t("input.u")?, t("input.A")?, t("input.B")?, t("input.C")?);
    let bias = case.file.get("input.bias");
    let (batch, h, len) = match u.shape.as_slice() {
        [b, h, l] => (*b, *h, *l),
        s => return Err(format!("input.u has shape {s:?}, expected (b, H, L)")),
    };
    let n = a.shape.get(1).copied().unwrap_or(0);
    let dims = S7ScanDims {
        batch,
        d_model: h,
        d_state: n,
        len,
    };
    let inputs = S7ScanInputs {
        u: &u.data,
        a: &a.data,
        b: &b.data,
        c: &c.data,
        bias: bias.map(|x| &x.data[..]),
    };
    let mut out = vec![0.0; batch * h * len];
    let mut last = vec![0.0; batch * n];
    s7_scan(dims, inputs, &mut out, &mut last).map_err(|e| e.to_string())?;
    Ok((out, last))
}
