//! Compiles every kernel variant the launch API can select with NVRTC for sm_90, on a machine
//! without a GPU: a kernel that does not compile is caught here. Skips (with the reason printed)
//! when `libnvrtc` cannot be loaded, or fails with `LRNNX_REQUIRE_NVRTC=1` (set by `.ci/run`, which
//! installs it).
#![cfg(feature = "cuda")]

use lrnnx_kernels::cuda::{compile, nvrtc_available};
use lrnnx_kernels::{
    Pass, Rule, ScanMode, ScanSpec, Tiling, BENCH_TILINGS, SELECTIVE_SCAN_KERNELS,
};

/// True (after printing why) when libnvrtc cannot be loaded, so the test skips; with
/// `LRNNX_REQUIRE_NVRTC=1` (as in CI, which installs it) a missing libnvrtc fails instead.
fn no_nvrtc() -> bool {
    if nvrtc_available() {
        return false;
    }
    let why = "libnvrtc not found (set LD_LIBRARY_PATH to a CUDA 13 lib folder, see \
               scripts/cuda-toolchain.sh)";
    assert!(
        std::env::var("LRNNX_REQUIRE_NVRTC").as_deref() != Ok("1"),
        "LRNNX_REQUIRE_NVRTC=1 but {why}"
    );
    println!("SKIPPED: {why}");
    true
}

#[test]
fn every_variant_compiles_for_sm90() {
    if no_nvrtc() {
        return;
    }
    let mut n = 0;
    // every rule with every flag on and with every flag off (small state), then the
    // launch geometries and state sizes used on large problems
    let mut cases = Vec::new();
    for rule in [Rule::Mamba, Rule::Zoh, Rule::Bilinear, Rule::Dirac] {
        for flags in [0u32, 7] {
            cases.push((rule, flags, 4, 8, 2, Tiling::default()));
        }
    }
    // complex A: every rule, all flags but time-invariant B/C (unsupported)
    for rule in [Rule::Mamba, Rule::Zoh, Rule::Bilinear, Rule::Dirac] {
        for flags in [8u32, 14] {
            cases.push((rule, flags, 4, 8, 2, Tiling::default()));
        }
    }
    // the rglru and s7 rules (real, fixed or time-varying B/C)
    for rule in [Rule::Rglru, Rule::S7] {
        for flags in [1u32, 4] {
            cases.push((rule, flags, 2, 8, 2, Tiling::default()));
        }
    }
    // the GPU tests' shapes (odd state, groups of 24 channels) and the bench's tilings
    cases.push((Rule::Zoh, 3, 5, 40, 1, Tiling::default()));
    cases.push((Rule::Bilinear, 4, 8, 96, 4, Tiling::default()));
    for t in BENCH_TILINGS {
        cases.push((Rule::Mamba, 0, 16, 2048, 1, t));
    }
    cases.push((Rule::Zoh, 2, 64, 64, 1, Tiling::default()));
    // the sequential mode: every rule, with and without the optional inputs, sub-chunks of 4
    // and 8, 2 and 4 lanes a channel, and the shapes that change its geometry (odd state: one
    // thread a channel, padded butterfly; groups)
    let seq = Tiling {
        mode: ScanMode::Sequential,
        ..Tiling::default()
    };
    for rule in [
        Rule::Mamba,
        Rule::Zoh,
        Rule::Bilinear,
        Rule::Dirac,
        Rule::Rglru,
        Rule::S7,
    ] {
        cases.push((rule, 0, 16, 256, 1, seq));
        cases.push((rule, 4, 16, 256, 1, Tiling { seq_sub: 8, ..seq }));
        cases.push((
            rule,
            0,
            16,
            256,
            1,
            Tiling {
                seq_split: 4,
                ..seq
            },
        ));
        if !matches!(rule, Rule::Rglru | Rule::S7) {
            cases.push((rule, 2, 16, 256, 1, seq));
        }
    }
    cases.push((Rule::Mamba, 0, 5, 64, 2, seq));
    cases.push((Rule::Zoh, 2, 8, 96, 3, seq));
    // the backward's per-step outputs spread over a channel's lanes: 2 (du, ddt: no ΔA, no
    // z; flag 16 flips z) and 4 (ΔA and z) of them, at 1, 2 and 4 lanes a channel
    for split in [1, 2, 4] {
        let t = Tiling {
            seq_split: split,
            ..seq
        };
        cases.push((Rule::Mamba, 16, 16, 256, 1, t));
        cases.push((Rule::Zoh, 2 | 16, 16, 256, 1, t));
    }
    for (rule, flags, state, channels, groups, tiling) in cases {
        let spec = ScanSpec {
            batch: 8, // the bench's batch: ScanMode::Auto resolves as there
            len: 100,
            channels,
            state,
            groups,
            rule,
            bc_fixed: flags & 1 != 0,
            has_delta_a: flags & 2 != 0,
            has_delta_bias: flags & 4 == 0,
            softplus: flags & 4 == 0,
            has_d: flags & 4 == 0,
            has_z: (flags & 2 == 0) != (flags & 16 != 0),
            complex: flags & 8 != 0,
        };
        let v = spec.check(tiling).expect("valid spec");
        let t = std::time::Instant::now();
        for pass in [Pass::Forward, Pass::Backward] {
            let ptx = compile(&v, pass).unwrap_or_else(|e| panic!("{e}"));
            let src = ptx.to_src();
            for k in SELECTIVE_SCAN_KERNELS {
                assert!(
                    src.contains(&format!(".entry {k}")),
                    "{k} missing in PTX of {v:?}"
                );
            }
        }
        println!("compiled {v:?} in {:.1} s", t.elapsed().as_secs_f64());
        n += 1;
    }
    println!("compiled {n} variants for sm_90");
}

#[test]
fn s7_projections_compile_for_sm90() {
    if no_nvrtc() {
        return;
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(lrnnx_kernels::cuda::ARCH),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(lrnnx_kernels::S7_PROJ_SRC, opts)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let src = ptx.to_src();
    for k in lrnnx_kernels::S7_PROJ_KERNELS {
        assert!(src.contains(&format!(".entry {k}")), "{k} missing in PTX");
    }
    println!("compiled the S7 projections for sm_90");
}

#[test]
fn linear_scan_variants_compile_for_sm90() {
    if no_nvrtc() {
        return;
    }
    for complex in [false, true] {
        for shared in [false, true] {
            for warps in [8, 16] {
                let ptx = lrnnx_kernels::linear::compile_with_warps(complex, shared, warps)
                    .unwrap()
                    .to_src();
                for k in ["ls_fwd", "ls_bwd", "lp_fwd", "lp_bwd", "lp_reduce_da"] {
                    assert!(ptx.contains(&format!(".entry {k}")), "{k} missing");
                }
            }
        }
    }
    assert!(lrnnx_kernels::linear::compile_with_warps(false, false, 12).is_err());
}

#[test]
fn simplified_scan_variants_compile_for_sm90() {
    use lrnnx_kernels::simplified::{
        compile, SimplifiedSpec, SimplifiedTiling, SIMPLIFIED_RULES, SIMPLIFIED_SCAN_KERNELS,
    };
    if no_nvrtc() {
        return;
    }
    // every rule with and without deltaA (one module holds the forward, the backward and the
    // dA reduction), at the automatic tiling of a large problem; then the other tilings the GPU
    // test times, and odd ones
    let mut cases = Vec::new();
    for rule in SIMPLIFIED_RULES {
        for has_delta_a in [false, true] {
            cases.push((rule, has_delta_a, None));
        }
    }
    for (warps, items, prefetch) in [(4, 8, false), (32, 4, true), (8, 16, true), (3, 5, true)] {
        for rule in [Rule::Zoh, Rule::Bilinear] {
            let t = SimplifiedTiling {
                warps,
                items,
                prefetch,
                bwd_warps: warps,
                bwd_items: items.min(8),
                bwd_prefetch: !prefetch,
            };
            cases.push((rule, true, Some(t)));
        }
    }
    let mut n = 0;
    for (rule, has_delta_a, tiling) in cases {
        let spec = SimplifiedSpec {
            batch: 8,
            len: 4096,
            channels: 1024,
            rule,
            has_delta_a,
        };
        let v = spec.check(tiling).expect("valid spec");
        let src = compile(&v).unwrap_or_else(|e| panic!("{e}")).to_src();
        for k in SIMPLIFIED_SCAN_KERNELS {
            assert!(
                src.contains(&format!(".entry {k}")),
                "{k} missing in PTX of {v:?}"
            );
        }
        n += 1;
    }
    println!("compiled {n} simplified scan variants for sm_90");
}

#[test]
fn causal_conv_compiles_for_sm90() {
    if no_nvrtc() {
        return;
    }
    for outputs in lrnnx_kernels::conv::OUTPUTS_PER_THREAD {
        let ptx = lrnnx_kernels::conv::compile_with_outputs(outputs)
            .unwrap()
            .to_src();
        for k in lrnnx_kernels::conv::CAUSAL_CONV_KERNELS {
            assert!(ptx.contains(&format!(".entry {k}")), "{k} missing");
        }
    }
    assert!(lrnnx_kernels::conv::compile_with_outputs(3).is_err());
    let ptx = lrnnx_kernels::fft::compile().unwrap().to_src();
    for k in lrnnx_kernels::fft::FFT_CONV_KERNELS {
        assert!(ptx.contains(&format!(".entry {k}")), "{k} missing");
    }
}

#[test]
fn pointwise_and_vandermonde_kernels_compile_for_sm90() {
    if no_nvrtc() {
        return;
    }
    let ptx = lrnnx_kernels::pointwise::compile().unwrap().to_src();
    for k in lrnnx_kernels::pointwise::POINTWISE_KERNELS {
        assert!(ptx.contains(&format!(".entry {k}")), "{k} missing");
    }
    let ptx = lrnnx_kernels::vandermonde::compile().unwrap().to_src();
    for k in lrnnx_kernels::vandermonde::VANDERMONDE_KERNELS {
        assert!(ptx.contains(&format!(".entry {k}")), "{k} missing");
    }
}

#[test]
fn solve_kernels_compile_for_sm90() {
    if no_nvrtc() {
        return;
    }
    let ptx = lrnnx_kernels::solve::compile().unwrap().to_src();
    for k in lrnnx_kernels::solve::SOLVE_KERNELS {
        assert!(ptx.contains(&format!(".entry {k}")), "{k} missing");
    }
}
