//! The firmware example (`examples/firmware`) under QEMU on a Cortex-M4F (mps2-an386) and a
//! Cortex-M33 (mps2-an505): its printed outputs must equal lrnnx-core stepped on the host with
//! the same weights and input, bit for bit.
//!
//! Why bit for bit (not merely within 1e-6): the firmware runs the same lrnnx-core code on the
//! same `f32` weights and input. Every operation on the step path is an IEEE-754 single
//! precision `+ − × ÷ sqrt` (correctly rounded on both the host's SSE/AVX and the Cortex-M
//! FPU, no flush-to-zero on either), or a function built only from them (lrnnx-core's
//! `fastmath`, the `libm` crate's portable code); Rust never fuses `a·b + c` into an FMA on its
//! own, so both compilers evaluate the same expressions in the same order.
//!
//! Needs `qemu-system-arm` and the rustup targets `thumbv7em-none-eabihf` and
//! `thumbv8m.main-none-eabihf`; without them the test prints why and passes, unless
//! `LRNNX_REQUIRE_QEMU=1` (as in CI), where their absence is a failure.

use std::path::{Path, PathBuf};

use lrnnx::core::Layer as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A QEMU board: rustup target, QEMU CPU and machine.
struct Board {
    target: &'static str,
    cpu: &'static str,
    machine: &'static str,
}

const BOARDS: [Board; 2] = [
    Board {
        target: "thumbv7em-none-eabihf",
        cpu: "cortex-m4",
        machine: "mps2-an386",
    },
    Board {
        target: "thumbv8m.main-none-eabihf",
        cpu: "cortex-m33",
        machine: "mps2-an505",
    },
];

fn firmware_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/firmware")
}

/// Why the firmware cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let qemu = Command::new("qemu-system-arm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !qemu.is_ok_and(|s| s.success()) {
        return Some(
            "qemu-system-arm is not installed (apt-get install -y qemu-system-arm)".into(),
        );
    }
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    for b in &BOARDS {
        if !Path::new(&sysroot)
            .join("lib/rustlib")
            .join(b.target)
            .exists()
        {
            return Some(format!(
                "the rustup target {} is not installed (rustup target add {})",
                b.target, b.target
            ));
        }
    }
    None
}

/// Builds the firmware for `target` (with `features`) and returns the ELF's path.
fn build(target: &str, features: &str) -> PathBuf {
    let dir = firmware_dir();
    let target_dir = dir.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&dir)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "firmware build for {target} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join(target).join("release/lrnnx-firmware")
}

/// Runs `elf` on `board` under QEMU (60 s at most): exit status and stdout.
fn run(board: &Board, elf: &Path) -> (Option<i32>, String) {
    let mut child = Command::new("qemu-system-arm")
        .args(["-cpu", board.cpu, "-machine", board.machine, "-nographic"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .args(["-icount", "shift=0", "-kernel"])
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-arm starts");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("qemu status").is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{}: the firmware did not finish in 60 s", board.machine);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("qemu output");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The `y <model> <t> <hex bits>...` lines of `model`: sample index and values.
fn outputs(text: &str, model: &str) -> Vec<(usize, Vec<f32>)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("y "))
        .filter_map(|l| l.strip_prefix(model)?.strip_prefix(' '))
        .map(|l| {
            let mut it = l.split_whitespace();
            let t = it.next().unwrap().parse().unwrap();
            let v = it
                .map(|h| f32::from_bits(u32::from_str_radix(h, 16).unwrap()))
                .collect();
            (t, v)
        })
        .collect()
}

#[test]
fn firmware_on_cortex_m4_and_m33_equals_the_host() {
    if let Some(why) = missing_tools() {
        if std::env::var("LRNNX_REQUIRE_QEMU").is_ok_and(|v| v == "1") {
            panic!("LRNNX_REQUIRE_QEMU=1 but {why}");
        }
        println!("skipped: {why}");
        return;
    }
    // The models, inputs and host outputs, written where the firmware includes them.
    let models = lrnnx::firmware::generate(&firmware_dir().join("src/generated"), None).unwrap();
    // One image per model: the default feature set holds DENOISER, `demo` holds DEMO.
    let image_of = |name: &str| if name == "DEMO" { "demo" } else { "" };
    let total: usize = models
        .iter()
        .filter(|m| image_of(&m.name).is_empty())
        .map(|m| m.expected.len())
        .sum();
    for (board, features) in BOARDS
        .iter()
        .flat_map(|b| ["", "demo"].map(move |f| (b, f)))
    {
        let (code, text) = run(board, &build(board.target, features));
        assert_eq!(code, Some(0), "{}: exit status\n{text}", board.machine);
        assert!(text.contains("ok outputs="), "{}:\n{text}", board.machine);
        for m in models.iter().filter(|m| image_of(&m.name) == features) {
            let (samples, d) = (m.samples(), m.network.d_output());
            let ys = outputs(&text, &m.name);
            assert_eq!(
                ys.len(),
                samples,
                "{} {}: output lines",
                board.machine,
                m.name
            );
            let (mut differ, mut max_abs) = (0, 0f32);
            for (i, (t, y)) in ys.iter().enumerate() {
                assert_eq!(
                    (*t, y.len()),
                    (i, d),
                    "{} {}: line {i}",
                    board.machine,
                    m.name
                );
                for (a, b) in y.iter().zip(&m.expected[i * d..(i + 1) * d]) {
                    differ += (a.to_bits() != b.to_bits()) as usize;
                    max_abs = max_abs.max((a - b).abs());
                }
            }
            println!(
                "{} ({}) {}: {samples}x{d} outputs, {differ} differ from the host (max |diff| {max_abs:e})",
                board.machine, board.cpu, m.name
            );
            assert_eq!(
                differ, 0,
                "{} {}: not bit-identical to the host",
                board.machine, m.name
            );
        }
        for line in text
            .lines()
            .filter(|l| l.starts_with("cost") || l.starts_with("stack"))
        {
            println!("  {line}");
        }
    }
    // A wrong output is reported and fails the run (exit status 1 from panic-semihosting).
    let b = &BOARDS[0];
    let (code, text) = run(b, &build(b.target, "inject-mismatch"));
    assert_eq!(code, Some(1), "injected mismatch: exit status\n{text}");
    assert!(
        text.contains(&format!("1 of {total} outputs differ from the host's")),
        "{text}"
    );
}
