//! Implementation `core` on op cases (`op_*`): runs the core's scan primitive on the case's
//! raw op arguments and compares `out` (`core:out`) and `last_state` (`core:last_state`).

use super::{Case, Line, Outcome};

mod rglru;
mod s7;
mod selective;
mod simplified;

/// The `core` implementation's report lines for one op case.
pub fn check(case: &Case) -> Vec<Line> {
    let op = case.config.get("op").and_then(|v| v.as_str()).unwrap_or("");
    let lines = match op {
        o if o.ends_with("selective_scan_ref") || o.ends_with("selective_scan_fn") => {
            selective::check(case)
        }
        o if o.ends_with("simplified_scan_ref") || o.ends_with("simplified_scan_fn") => {
            simplified::check(case)
        }
        o if o.ends_with("rglru_scan_ref") || o.ends_with("rglru_scan_fn") => rglru::check(case),
        o if o.ends_with("s7_scan_ref") || o.ends_with("s7_scan_fn") => s7::check(case),
        _ => Vec::new(),
    };
    if lines.is_empty() {
        vec![Line {
            case: case.name.clone(),
            implementation: "core".into(),
            outcome: Outcome::Unsupported(format!("no core scan for op `{op}`")),
        }]
    } else {
        lines
    }
}
