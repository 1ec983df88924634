//! Golden op cases of the RG-LRU scan: `rglru_scan_ref(u, delta, A, return_last_state=True)`;
//! `core:out` (b, D, L) and `core:last_state` (b, D, n) are compared directly.

use lrnnx_core::scan::rglru::{rglru_scan, RgLruScanDims};

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
    let (u, delta, a) = (t("input.u")?, t("input.delta")?, t("input.A")?);
    let (batch, d, len) = match u.shape.as_slice() {
        [b, d, l] => (*b, *d, *l),
        s => return Err(format!("input.u has shape {s:?}, expected (b, D, L)")),
    };
    let n = a.shape.get(1).copied().unwrap_or(1);
    let dims = RgLruScanDims {
        batch,
        d,
        d_state: n,
        len,
    };
    let mut out = vec![0.0; batch * d * len];
    let mut last = vec![0.0; batch * d * n];
    rglru_scan(dims, &u.data, &delta.data, &a.data, &mut out, &mut last)
        .map_err(|e| e.to_string())?;
    Ok((out, last))
}
