//! Generates the firmware example's models (`examples/firmware/src/generated/model.rs`) and
//! their fixed inputs with the host's expected outputs (`data.rs`): see `lrnnx::firmware`.
//!
//! ```sh
//! cargo run --release --example firmware_model                  # untrained quickstart denoiser
//! cargo run --release --example quickstart -- --out quickstart-out   # trains one (~25 s)
//! cargo run --release --example firmware_model -- --model quickstart-out/denoiser.lrnx
//! ```
//!
//! `--out DIR` writes elsewhere (default: the firmware's `src/generated`).

use std::path::PathBuf;

fn main() {
    let mut model = None;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/firmware/src/generated");
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--model") => model = args.next().map(PathBuf::from),
            Some("--out") => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            Some("-h" | "--help") => {
                println!("usage: firmware_model [--model NETWORK.lrnx] [--out DIR]");
                return;
            }
            _ => {
                eprintln!("firmware_model: unknown argument {a:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    match lrnnx::firmware::generate(&dir, model.as_deref()) {
        Ok(models) => {
            println!("wrote {}/{{model.rs,data.rs}}", dir.display());
            if model.is_none() {
                println!(
                    "DENOISER: the quickstart's architecture, untrained (seed {}); pass \
                     --model quickstart-out/denoiser.lrnx for a trained one",
                    lrnnx::firmware::DENOISER_SEED
                );
            }
            for m in &models {
                use lrnnx::core::Layer as _;
                let kinds: Vec<_> = m
                    .network
                    .stages()
                    .iter()
                    .map(lrnnx::firmware::stage_kind)
                    .collect();
                println!(
                    "{}: {}; state {} f32; {} samples of {} -> {} features",
                    m.name,
                    kinds.join(" "),
                    m.network.state_len(),
                    m.samples(),
                    m.network.d_input(),
                    m.network.d_output()
                );
            }
        }
        Err(e) => {
            eprintln!("firmware_model: {e}");
            std::process::exit(1);
        }
    }
}
