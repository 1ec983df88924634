//! Checks implementations against a folder of lrnnx golden cases.
//!
//! ```text
//! cargo run --release --example golden -- tests/data/lrnnx-golden [-v]
//! ```
//!
//! Prints `<case> <implementation> max_abs=<x> rel=<y> ok|FAIL|unsupported` per case and
//! implementation, then `N passed, M failed, K unsupported`; exits 1 when anything failed
//! (`-v` also prints why a line is unsupported or failed).

use std::process::ExitCode;

use lrnnx::golden::{case_files, check_file, tally};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "-v" || a == "--verbose");
    let dirs: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let [dir] = dirs.as_slice() else {
        eprintln!("usage: golden DIR [-v]   (DIR holds lrnnx-golden-v1 *.safetensors cases)");
        return ExitCode::from(2);
    };
    let files = match case_files(dir) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("golden: no *.safetensors cases in {dir}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("golden: cannot read {dir}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut all = Vec::new();
    for file in &files {
        for line in check_file(file) {
            println!("{line}");
            if let (true, Some(reason)) = (verbose || line.failed(), line.reason()) {
                eprintln!("  {}: {reason}", line.case);
            }
            all.push(line);
        }
    }
    let (passed, failed, unsupported) = tally(&all);
    println!("{passed} passed, {failed} failed, {unsupported} unsupported");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
