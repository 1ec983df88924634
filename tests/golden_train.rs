//! Gradients equal lrnnx's: for each case the training crate covers, its parallel forward
//! reproduces `output.y` and back-propagating `loss = Σ y ⊙ input.g` reproduces every
//! `grad.<key>` of the case (parameters and `x`) to 1e-4 relative.

use std::path::Path;

use lrnnx::golden::{check_file, Outcome};

/// Cases covered so far, with the gradients each must report.
const CASES: &[(&str, &[&str])] = &[
    ("s5_lti_zoh", &["A", "B", "C", "D", "log_dt", "x"]),
    ("s5_lti_bilinear", &["A", "B", "C", "D", "log_dt", "x"]),
    ("s5_lti_dirac", &["A", "B", "C", "D", "log_dt", "x"]),
    (
        "s5_lti_no_discretization",
        &["A", "B", "C", "D", "log_dt", "x"],
    ),
];

#[test]
fn training_forward_and_gradients_match_lrnnx() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden");
    for (case, grads) in CASES {
        let lines = check_file(&dir.join(format!("{case}.safetensors")));
        let mut wanted: Vec<String> = vec!["train:y".into()];
        wanted.extend(grads.iter().map(|g| format!("train:grad.{g}")));
        for w in &wanted {
            let line = lines
                .iter()
                .find(|l| &l.implementation == w)
                .unwrap_or_else(|| panic!("{case}: no `{w}` line"));
            match &line.outcome {
                Outcome::Compared(c) => assert!(c.ok, "{line}"),
                other => panic!("{case} {w}: {other:?}"),
            }
        }
    }
}
