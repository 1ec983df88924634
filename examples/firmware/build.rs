//! Picks the board's memory map from the target (thumbv7em: mps2-an386, thumbv8m.main:
//! mps2-an505), links with cortex-m-rt's `link.x` (and `defmt.x` with the `defmt` feature), and
//! checks that the generated model exists.

use std::path::PathBuf;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let memory = if target.starts_with("thumbv7em") {
        "memory-an386.x"
    } else if target.starts_with("thumbv8m.main") {
        "memory-an505.x"
    } else {
        panic!(
            "lrnnx-firmware builds for thumbv7em-none-eabihf (mps2-an386) or \
             thumbv8m.main-none-eabihf (mps2-an505), not `{target}`: pass --target"
        );
    };
    std::fs::copy(manifest.join(memory), out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={memory}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg=-Tlink.x");
    if std::env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
    for f in ["model.rs", "data.rs"] {
        let p = manifest.join("src/generated").join(f);
        if !p.exists() {
            panic!(
                "{} is missing: generate it from the repository root with \
                 `cargo run --release --example firmware_model`",
                p.display()
            );
        }
        println!("cargo:rerun-if-changed=src/generated/{f}");
    }
}
