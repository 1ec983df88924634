//! The training crate's scans reproduce lrnnx's reference ops: for every golden op case
//! (`op_*`), the op written with candle ops around `real_scan` / `complex_scan`
//! (`lrnnx::golden`'s `train` implementation) reproduces `output.out` (`train:out`) and every
//! `grad.<arg>` of the case (`train:grad.<arg>`, 1e-4 relative).

use std::path::Path;

use lrnnx::golden::{case_files, check_file, Case, Outcome};

#[test]
fn training_ops_match_lrnnx_forward_and_gradients() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden");
    let mut checked = 0;
    for path in case_files(&dir).unwrap() {
        let case = Case::load(&path).unwrap();
        if case.kind() != "op" {
            continue;
        }
        let lines = check_file(&path);
        let mut wanted: Vec<String> = vec!["train:out".into()];
        wanted.extend(
            case.file
                .tensors
                .keys()
                .filter_map(|k| k.strip_prefix("grad."))
                .map(|g| format!("train:grad.{g}")),
        );
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
        checked += 1;
    }
    assert_eq!(checked, 18, "expected the 18 op cases");
}
