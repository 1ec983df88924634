//! Generates the firmware example's model (`examples/firmware/src/generated/model.rs`) and its
//! fixed input with the host's expected outputs (`data.rs`): see `lrnnx::firmware`.
//!
//! ```sh
//! cargo run --release --example firmware_model [-- OUT_DIR]
//! ```

use std::path::PathBuf;

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/firmware/src/generated")
        });
    match lrnnx::firmware::generate(&dir) {
        Ok(g) => {
            let names: Vec<_> = g
                .model
                .stages()
                .iter()
                .map(|s| {
                    format!(
                        "{} ({} weights)",
                        s.config().layer_name(),
                        s.weights().len()
                    )
                })
                .collect();
            println!(
                "wrote {}/{{model.rs,data.rs}}: {}; state {} f32; {} samples of {} -> {} features",
                dir.display(),
                names.join(" -> "),
                g.model.state_len(),
                g.input.len() / g.model.d_input(),
                g.model.d_input(),
                g.model.d_output()
            );
        }
        Err(e) => {
            eprintln!("firmware_model: {e}");
            std::process::exit(1);
        }
    }
}
