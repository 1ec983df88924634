//! Gradients equal lrnnx's: for every module case of the golden set (29: every lrnnx class and
//! discretization, event modes included) the training crate's parallel forward reproduces
//! `output.y` (`train:y`), and back-propagating `loss = Σ y ⊙ input.g` reproduces every
//! `grad.<key>` the case holds (parameters, `x`, event time steps: `train:grad.<key>`) to 1e-4
//! relative; for the language-model case, `train:logits`. A case the training crate does not
//! build, or a gradient it does not report, fails. (The op cases: `tests/golden_train_ops.rs`.)

use std::path::Path;

use lrnnx::golden::{case_files, check_file, Case, Outcome};

#[test]
fn training_forward_and_gradients_match_lrnnx() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden");
    let (mut modules, mut lms, mut grads) = (0, 0, 0);
    for path in case_files(&dir).unwrap() {
        let case = Case::load(&path).unwrap();
        let mut wanted: Vec<String> = match case.kind() {
            "module" => {
                modules += 1;
                vec!["train:y".into()]
            }
            "lm" => {
                lms += 1;
                vec!["train:logits".into()]
            }
            _ => continue,
        };
        let case_grads: Vec<String> = case
            .file
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("grad."))
            .map(|g| format!("train:grad.{g}"))
            .collect();
        if case.kind() == "module" {
            assert!(!case_grads.is_empty(), "{}: no gradients", case.name);
        }
        grads += case_grads.len();
        wanted.extend(case_grads);
        let lines = check_file(&path);
        for w in &wanted {
            let line = lines
                .iter()
                .find(|l| &l.implementation == w)
                .unwrap_or_else(|| panic!("{}: no `{w}` line", case.name));
            match &line.outcome {
                Outcome::Compared(c) => assert!(c.ok, "{line}"),
                other => panic!("{} {w}: {other:?}", case.name),
            }
        }
    }
    assert_eq!(
        (modules, lms),
        (29, 1),
        "the golden set's module and lm cases"
    );
    println!("{modules} module cases and {lms} lm case, {grads} gradients compared");
}
