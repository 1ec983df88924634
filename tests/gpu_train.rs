//! The training crate on CUDA (feature `cuda`): the fused selective scan (`lrnnx-kernels`
//! launched on candle's stream) against lrnnx's golden cases and against the CPU path.
//!
//! * the real, ungrouped `op_selective_scan_*` cases (every rule, with and without `deltaA`),
//!   written with candle ops around `selective_scan` on the GPU, and through `mamba_scan`
//!   (bias, softplus, `D` and `z` in the kernel) where the case takes the softplus: `out` at
//!   1e-5 and every `grad.<arg>` at 1e-4 relative to the reference's largest value;
//! * the 8 Mamba module cases (ordinary and STREAM mode) and the module cases of the layers on
//!   the linear scan (S5 time-varying, LRU, RG-LRU, S7, Centaurus) built on the GPU: `y`,
//!   every parameter gradient, `x` and the event time steps, at the same tolerances;
//! * every module case of the golden set built on the GPU (`MODULE_CASES`: Mamba, S5
//!   time-varying and LTI, LRU, RG-LRU, S7, Centaurus, S4, S4D), the language-model case and
//!   every op case (grouped / fixed-`B`,`C` / complex selective scans, simplified, RG-LRU and
//!   S7 scans) through the golden checker's `train` implementation on the GPU;
//! * random linear scans (real / complex, full / shared decay), CUDA against the CPU op;
//! * random causal convolutions (S4 / S4D) and S4 / S4D layers at L = 2048, CUDA against the
//!   CPU;
//! * random `mamba_scan` cases, the fused CUDA op against the same function on the CPU;
//! * S4's batched solve on the device against the host's (forward, both gradients, the
//!   singular-system error);
//! * random cases, CUDA against the CPU op (itself checked against f64 loops and finite
//!   differences in `lrnnx-train`): forward 1e-5, gradients 1e-4 relative, lengths up to 16384.
//!
//! Without a CUDA device every test prints why and returns, unless `LRNNX_REQUIRE_CUDA=1`
//! (as on the GPU machine), where that is a failure. Comparisons against the golden cases use
//! the golden set's tolerance (relative to the reference's largest value, plus 1e-6 absolute);
//! comparisons against the CPU path are purely relative.
#![cfg(feature = "cuda")]

use std::path::Path;

use lrnnx::golden::{compare, compare_with, Case, GRAD_REL_TOL};
use lrnnx_train::candle_core::{DType, Device, Tensor, Var};
use lrnnx_train::mamba::MambaRule;
use lrnnx_train::ops::softplus;
use lrnnx_train::selective::{mamba_scan, selective_scan, MambaScanInputs};
use lrnnx_train::{build, Params};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("LRNNX_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("LRNNX_REQUIRE_CUDA=1 but there is no CUDA device ({e})");
            }
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Serializes the tests that depend on the process-wide `set_cuda_conv_method` (the convolution
/// tests force each method in turn) and puts `Auto` back when dropped, even after a panic.
struct ConvMethodGuard(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

fn conv_method_lock() -> ConvMethodGuard {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ConvMethodGuard(LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

impl Drop for ConvMethodGuard {
    fn drop(&mut self) {
        lrnnx_train::fftconv::set_cuda_conv_method(lrnnx_train::fftconv::CudaConvMethod::Auto);
    }
}

fn golden_dir() -> std::path::PathBuf {
    match std::env::var("LRNNX_GOLDEN") {
        Ok(d) => d.into(),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden"),
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn rule_of(name: &str) -> MambaRule {
    match name {
        "mamba" => MambaRule::Mamba,
        "zoh" => MambaRule::Zoh,
        "bilinear" => MambaRule::Bilinear,
        "dirac" => MambaRule::Dirac,
        o => panic!("unknown rule {o}"),
    }
}

/// Whether `ours` is within the golden set's tolerance of a golden `reference`
/// (`max|ours − ref| ≤ tol · max|ref| + 1e-6`); prints the line.
fn check(what: &str, ours: &[f32], reference: &[f32], tol: f64) -> bool {
    let c = compare_with(ours, reference, tol);
    println!(
        "{what}: max_abs {:.3e} rel {:.3e} {}",
        c.max_abs,
        c.rel,
        if c.ok { "ok" } else { "FAIL" }
    );
    c.ok
}

/// Whether `ours` is within `tol` of the CPU path's `reference`, purely relative
/// (`max|ours − ref| ≤ tol · max|ref|`, no absolute floor; an identically zero reference, a
/// gradient that vanishes, takes `max|ours| ≤ 1e-12`); prints the line.
fn check_rel(what: &str, ours: &[f32], reference: &[f32], tol: f64) -> bool {
    let c = compare_with(ours, reference, tol);
    let scale = reference.iter().fold(0f64, |m, &r| m.max((r as f64).abs()));
    let bound = if scale > 0.0 { tol * scale } else { 1e-12 };
    let ok = c.max_abs.is_finite() && c.max_abs <= bound;
    println!(
        "{what}: max_abs {:.3e} rel {:.3e} {}",
        c.max_abs,
        c.rel,
        if ok { "ok" } else { "FAIL" }
    );
    ok
}

#[test]
fn golden_selective_scan_ops_on_cuda() {
    let Some(dev) = gpu() else { return };
    let mut failed = Vec::new();
    for case in [
        "mamba",
        "zoh",
        "bilinear",
        "dirac",
        "mamba_deltaA",
        "zoh_deltaA",
    ] {
        let case =
            Case::load(golden_dir().join(format!("op_selective_scan_{case}.safetensors"))).unwrap();
        let op_args = case.config.get("op_args");
        let arg = |k: &str| op_args.and_then(|a| a.get(k));
        let rule = rule_of(
            arg("discretization")
                .and_then(|v| v.as_str())
                .unwrap_or("mamba"),
        );
        let sp = arg("delta_softplus")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mut vars = std::collections::BTreeMap::new();
        for (key, t) in &case.file.tensors {
            if let Some(name) = key.strip_prefix("input.") {
                let v = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &dev).unwrap();
                vars.insert(name.to_owned(), Var::from_tensor(&v).unwrap());
            }
        }
        let get = |k: &str| vars.get(k).map(|v| v.as_tensor().clone());
        // (b, d, L) -> (b, L, d); B, C (b, n, L) -> (b, L, n)
        let tm = |t: Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap();
        let u = tm(get("u").unwrap());
        let (bt, ct) = (tm(get("B").unwrap()), tm(get("C").unwrap()));
        let a = get("A").unwrap();
        let dta = get("deltaA").map(tm);
        let z = get("z").map(tm);
        // composed: candle ops around `selective_scan`; fused: `mamba_scan` (softplus cases)
        for fused in [false, true] {
            let y = if fused {
                if !sp {
                    continue;
                }
                let e = a.dims()[0];
                let zeros = Tensor::zeros(e, DType::F32, &dev).unwrap();
                let (bias, d) = (get("delta_bias"), get("D"));
                let x = MambaScanInputs {
                    u: &u,
                    delta_raw: &tm(get("delta").unwrap()),
                    delta_bias: bias.as_ref().unwrap_or(&zeros),
                    delta_a: dta.as_ref(),
                    a: &a,
                    b_t: &bt,
                    c_t: &ct,
                    d: d.as_ref().unwrap_or(&zeros),
                    z: z.as_ref(),
                };
                mamba_scan(&x, rule).unwrap()
            } else {
                let mut dt = tm(get("delta").unwrap());
                if let Some(bias) = get("delta_bias") {
                    dt = dt.broadcast_add(&bias).unwrap();
                }
                if sp {
                    dt = softplus(&dt).unwrap();
                }
                let dta = dta.clone().unwrap_or_else(|| dt.clone());
                let mut y = selective_scan(&u, &dt, &dta, &a, &bt, &ct, rule).unwrap();
                if let Some(d) = get("D") {
                    y = (y + u.broadcast_mul(&d).unwrap()).unwrap();
                }
                if let Some(z) = &z {
                    y = (y * z.silu().unwrap()).unwrap();
                }
                y
            };
            let out = y.transpose(1, 2).unwrap();
            let name = format!("{}{}", case.name, if fused { " (mamba_scan)" } else { "" });
            let c = compare(&flat(&out), &case.tensor("output.out").unwrap().data);
            println!(
                "{name} cuda:out max_abs {:.3e} rel {:.3e}",
                c.max_abs, c.rel
            );
            if !c.ok {
                failed.push(format!("{name}:out"));
            }
            let g = get("g").unwrap();
            let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
            for (key, reference) in &case.file.tensors {
                let Some(arg) = key.strip_prefix("grad.") else {
                    continue;
                };
                let ours = flat(grads.get(vars[arg].as_tensor()).unwrap());
                if !check(
                    &format!("{name} cuda:grad.{arg}"),
                    &ours,
                    &reference.data,
                    GRAD_REL_TOL,
                ) {
                    failed.push(format!("{name}:grad.{arg}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// Every module case of the golden set (the `kind = module` cases the CPU golden tests check;
/// `every_module_case_is_listed` keeps this list complete), built on the GPU: Mamba (the
/// selective scan), the layers on the linear scan (S5 time-varying incl. event mode, LRU,
/// RG-LRU, S7, Centaurus in every mode), S5 LTI, and S4 / S4D (the causal convolution kernel;
/// S4's small solves on the host).
const MODULE_CASES: &[&str] = &[
    "s4",
    "s4d_zoh",
    "s4d_bilinear",
    "s5_lti_zoh",
    "s5_lti_bilinear",
    "s5_lti_dirac",
    "s5_lti_no_discretization",
    "lru",
    "centaurus_neck",
    "centaurus_pointwise",
    "centaurus_dws",
    "centaurus_full",
    "s5_ltv_zoh",
    "s5_ltv_bilinear",
    "s5_ltv_dirac",
    "s5_ltv_zoh_event",
    "s5_ltv_bilinear_event",
    "s5_ltv_dirac_event",
    "s5_ltv_zoh_conjsym",
    "mamba_mamba",
    "mamba_zoh",
    "mamba_bilinear",
    "mamba_dirac",
    "mamba_mamba_event",
    "mamba_zoh_event",
    "mamba_bilinear_event",
    "mamba_dirac_event",
    "rglru",
    "s7",
];

/// The golden set's cases of one kind (`module`, `lm`, `op`), by file stem.
fn cases_of_kind(kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in lrnnx::golden::case_files(golden_dir()).unwrap() {
        let case = Case::load(&f).unwrap();
        if case.kind() == kind {
            out.push(f.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

/// `MODULE_CASES` is every module case of the golden set (runs without a GPU too).
#[test]
fn every_module_case_is_listed() {
    let mut want = cases_of_kind("module");
    let mut have: Vec<String> = MODULE_CASES.iter().map(|s| s.to_string()).collect();
    want.sort();
    have.sort();
    assert_eq!(have, want);
}

/// The language-model case and every op case (`op_selective_scan_*` incl. grouped, fixed
/// `B`/`C` and complex `A`; `op_simplified_scan_*`, `op_rglru_scan_*`, `op_s7_scan_*`) through
/// the golden checker's `train` implementation with every tensor on the GPU: the ops written
/// with candle ops around the training crate's linear scan (on CUDA: `linear_scan.cu`), the LM
/// (embedding, Mamba and LRU mixers, MLP, head) forward, token-by-token step and every
/// gradient. Each line at 1e-5 (outputs) / 1e-4 (gradients) of the reference's largest value.
#[test]
fn golden_lm_and_op_cases_on_cuda() {
    let Some(dev) = gpu() else { return };
    let mut failed = Vec::new();
    let mut cases = cases_of_kind("lm");
    cases.extend(cases_of_kind("op"));
    assert!(cases.len() >= 19, "{cases:?}");
    for file in cases {
        let case = Case::load(golden_dir().join(format!("{file}.safetensors"))).unwrap();
        let lines = lrnnx::golden::check_train_on(&case, &dev);
        let mut compared = 0;
        for line in &lines {
            match line.reason() {
                Some(r) => println!("{line} (cuda): {r}"),
                None => println!("{line} (cuda)"),
            }
            if line.failed() {
                failed.push(format!("{line}"));
            }
            if matches!(line.outcome, lrnnx::golden::Outcome::Compared(_)) {
                compared += 1;
            }
        }
        if compared < 2 {
            failed.push(format!("{file}: only {compared} comparisons"));
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[test]
fn golden_modules_on_cuda() {
    let Some(dev) = gpu() else { return };
    let _conv = conv_method_lock();
    let mut failed = Vec::new();
    for file in MODULE_CASES {
        let case = Case::load(golden_dir().join(format!("{file}.safetensors"))).unwrap();
        let name = case.name.clone();
        let on_gpu = |k: &str| {
            let t = case.tensor(k).unwrap();
            Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &dev).unwrap()
        };
        let mut params = Params::new();
        for key in case.file.tensors.keys() {
            if let Some(p) = key.strip_prefix("param.") {
                params.insert(p, &on_gpu(key)).unwrap();
            }
        }
        let layer = build(case.class(), case.ctor_kwargs(), params).unwrap();
        let x = Var::from_tensor(&on_gpu("input.x")).unwrap();
        let taus = case
            .event_mode()
            .then(|| Var::from_tensor(&on_gpu("input.integration_timesteps")).unwrap());
        let y = match layer.forward(x.as_tensor(), taus.as_ref().map(|t| t.as_tensor())) {
            Ok(y) => y,
            Err(e) => {
                println!("{name} cuda: ERROR {e}");
                failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert!(y.device().is_cuda());
        let c = compare(&flat(&y), &case.tensor("output.y").unwrap().data);
        println!(
            "{name} cuda:y max_abs {:.3e} rel {:.3e} {}",
            c.max_abs,
            c.rel,
            if c.ok { "ok" } else { "FAIL" }
        );
        if !c.ok {
            failed.push(format!("{name}:y"));
        }
        let grads = match (&y * &on_gpu("input.g"))
            .and_then(|p| p.sum_all())
            .and_then(|l| l.backward())
        {
            Ok(g) => g,
            Err(e) => {
                println!("{name} cuda: backward ERROR {e}");
                failed.push(format!("{name} backward: {e}"));
                continue;
            }
        };
        for (key, reference) in &case.file.tensors {
            let Some(g) = key.strip_prefix("grad.") else {
                continue;
            };
            let ours = match g {
                "x" => grads.get(x.as_tensor()).cloned(),
                "integration_timesteps" => taus
                    .as_ref()
                    .and_then(|t| grads.get(t.as_tensor()).cloned()),
                p => {
                    let base = p.strip_prefix("layer.kernel.").unwrap_or(p);
                    layer
                        .params()
                        .vars()
                        .get(base)
                        .and_then(|v| grads.get(v.as_tensor()).cloned())
                }
            };
            // a parameter the forward never reads (Mamba's dtA_proj outside STREAM mode, S5's
            // log_dt without a discretization) gets no gradient: right only where lrnnx's is
            // zero too
            let ours = match ours {
                Some(t) => flat(&t),
                None if reference.data.iter().all(|&v| v == 0.0) => {
                    vec![0.0; reference.data.len()]
                }
                None => {
                    println!("{name} cuda:grad.{g}: no gradient FAIL");
                    failed.push(format!("{name}:grad.{g} (no gradient)"));
                    continue;
                }
            };
            if !check(
                &format!("{name} cuda:grad.{g}"),
                &ours,
                &reference.data,
                GRAD_REL_TOL,
            ) {
                failed.push(format!("{name}:grad.{g}"));
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[test]
fn random_linear_scans_cuda_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut failed = Vec::new();
    // (B, L, N)
    for (ci, &(b, l, n)) in [(1, 1, 1), (2, 37, 5), (3, 1000, 64), (2, 16384, 48)]
        .iter()
        .enumerate()
    {
        for complex in [false, true] {
            for shared in [false, true] {
                let seed = ci as u64 * 4 + 2 * u64::from(complex) + u64::from(shared) + 1;
                let w = if complex { 2 } else { 1 };
                let full = b * l * n * w;
                let a_len = if shared { n * w } else { full };
                // |a| < 1 so long sequences stay bounded
                let a = rand(a_len, seed, -0.7, 0.7);
                let u = rand(full, seed + 1, -1.0, 1.0);
                let gw = rand(full, seed + 2, -1.0, 1.0);
                let run = |dev: &Device| {
                    let sh: Vec<usize> = if complex {
                        vec![b, l, n, 2]
                    } else {
                        vec![b, l, n]
                    };
                    let a_sh: Vec<usize> = if shared { sh[2..].to_vec() } else { sh.clone() };
                    let av =
                        Var::from_tensor(&Tensor::from_vec(a.clone(), a_sh, dev).unwrap()).unwrap();
                    let uv =
                        Var::from_tensor(&Tensor::from_vec(u.clone(), sh.as_slice(), dev).unwrap())
                            .unwrap();
                    let wt = Tensor::from_vec(gw.clone(), sh.as_slice(), dev).unwrap();
                    let h = if complex {
                        use lrnnx_train::complex::CTensor;
                        let (at, ut) = (
                            CTensor::unpack(av.as_tensor()).unwrap(),
                            CTensor::unpack(uv.as_tensor()).unwrap(),
                        );
                        let at = if shared {
                            CTensor::new(
                                at.re.reshape((1, 1, n)).unwrap(),
                                at.im.reshape((1, 1, n)).unwrap(),
                            )
                        } else {
                            at
                        };
                        lrnnx_train::scan::complex_scan(&at, &ut)
                            .unwrap()
                            .pack()
                            .unwrap()
                    } else {
                        lrnnx_train::scan::real_scan(av.as_tensor(), uv.as_tensor()).unwrap()
                    };
                    let grads = (&h * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                    vec![
                        flat(&h),
                        flat(grads.get(av.as_tensor()).unwrap()),
                        flat(grads.get(uv.as_tensor()).unwrap()),
                    ]
                };
                let (got, want) = (run(&gpu), run(&Device::Cpu));
                for ((g, wv), nm) in got.iter().zip(&want).zip(["h", "∂a", "∂u"]) {
                    let tol = if nm == "h" { 1e-5 } else { 1e-4 };
                    let what =
                        format!("linear B{b} L{l} N{n} complex {complex} shared {shared} {nm}");
                    if !check_rel(&what, g, wv, tol) {
                        failed.push(what);
                    }
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// `op(x1, x2)` on `dev` in `dtype` (from f32 data and shapes) and the gradients of
/// `Σ op(x1, x2) ⊙ g` in both inputs: `[y, ∂x1, ∂x2]`, flattened to f64.
fn value_and_grads2(
    dev: &Device,
    dtype: DType,
    (x1, s1): (&[f32], &[usize]),
    (x2, s2): (&[f32], &[usize]),
    g: &[f32],
    op: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Vec<Vec<f64>> {
    let t = |v: &[f32], s: &[usize]| {
        Tensor::from_vec(v.to_vec(), s, dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let (v1, v2) = (
        Var::from_tensor(&t(x1, s1)).unwrap(),
        Var::from_tensor(&t(x2, s2)).unwrap(),
    );
    let y = op(v1.as_tensor(), v2.as_tensor());
    let grads = (&y * t(g, y.dims()))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let f = |x: &Tensor| {
        x.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    vec![
        f(&y),
        f(grads.get(v1.as_tensor()).unwrap()),
        f(grads.get(v2.as_tensor()).unwrap()),
    ]
}

/// f64 values rounded to f32 (for [`check`]).
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// [`check`] in f64: the largest difference over the reference's largest value, no absolute
/// floor; a NaN anywhere fails.
fn check64(what: &str, ours: &[f64], reference: &[f64], tol: f64) -> bool {
    let scale = reference
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(1e-300);
    let worst = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    let ok = ours.len() == reference.len() && worst / scale <= tol;
    println!(
        "{what}: max_abs {worst:.3e} rel {:.3e} {}",
        worst / scale,
        if ok { "ok" } else { "FAIL" }
    );
    ok
}

/// xorshift uniforms in `[lo, hi)`.
fn rand(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

#[test]
fn random_selective_scans_cuda_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::Cpu;
    // (B, L, E, N, separate ΔA)
    let cases = [
        (1, 1, 1, 1, false),
        (2, 37, 5, 3, true),
        (3, 100, 24, 16, false),
        (2, 1000, 48, 8, true),
        (1, 4097, 64, 16, true),
        (2, 16384, 32, 16, false),
        (1, 16384, 96, 16, true),
        // B·E = 16384, channels a multiple of 128: Auto's sequential kernels (mamba rule, ΔA
        // the same tensor as Δ); the chunked ones for the other rules and with a separate ΔA
        (8, 70, 2048, 16, false),
        (8, 70, 2048, 16, true),
    ];
    let rules = [
        MambaRule::Mamba,
        MambaRule::Zoh,
        MambaRule::Bilinear,
        MambaRule::Dirac,
    ];
    let mut failed = Vec::new();
    for (ci, &(b, l, e, n, sep)) in cases.iter().enumerate() {
        for (ri, &rule) in rules.iter().enumerate() {
            let seed = (ci * 10 + ri) as u64 * 7 + 1;
            let data = [
                (rand(b * l * e, seed, -1.5, 1.5), vec![b, l, e]),
                (rand(b * l * e, seed + 1, 0.001, 0.3), vec![b, l, e]),
                (rand(b * l * e, seed + 2, 0.001, 0.3), vec![b, l, e]),
                (rand(e * n, seed + 3, -4.0, -0.1), vec![e, n]),
                (rand(b * l * n, seed + 4, -1.0, 1.0), vec![b, l, n]),
                (rand(b * l * n, seed + 5, -1.0, 1.0), vec![b, l, n]),
            ];
            let w = rand(b * l * e, seed + 6, -1.0, 1.0);
            let run = |dev: &Device| {
                let vars: Vec<Var> = data
                    .iter()
                    .map(|(v, s)| {
                        Var::from_tensor(&Tensor::from_vec(v.clone(), s.as_slice(), dev).unwrap())
                            .unwrap()
                    })
                    .collect();
                let t: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
                let dta = if sep { t[2] } else { t[1] };
                let y = selective_scan(t[0], t[1], dta, t[3], t[4], t[5], rule).unwrap();
                let wt = Tensor::from_vec(w.clone(), (b, l, e), dev).unwrap();
                let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![flat(&y)];
                for (i, v) in vars.iter().enumerate() {
                    if i == 2 && !sep {
                        continue;
                    }
                    out.push(flat(grads.get(v.as_tensor()).unwrap()));
                }
                out
            };
            let (got, want) = (run(&gpu), run(&cpu));
            let names = ["y", "∂u", "∂Δ", "∂ΔA", "∂A", "∂B", "∂C"];
            let names: Vec<&str> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| sep || *i != 3)
                .map(|(_, n)| *n)
                .collect();
            for ((g, w), nm) in got.iter().zip(&want).zip(&names) {
                let tol = if *nm == "y" { 1e-5 } else { 1e-4 };
                let what = format!("B{b} L{l} E{e} N{n} {rule:?} deltaA {sep} {nm}");
                if !check_rel(&what, g, w, tol) {
                    failed.push(what);
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// `mamba_scan` (bias, softplus, `D` and the `z` gate fused into the kernel on CUDA) against
/// the same function on the CPU (candle ops around the CPU selective scan): every rule, with
/// and without `z` and a separate `ΔA`, `Δ_raw + b` on both sides of the softplus cut (20);
/// forward 1e-5, the gradients of all nine operands 1e-4 relative.
#[test]
fn random_mamba_scans_cuda_match_cpu() {
    let Some(gpu) = gpu() else { return };
    // (B, L, E, N, separate ΔA, z)
    let cases = [
        (1, 1, 1, 1, false, true),
        (2, 37, 5, 3, true, true),
        (3, 100, 24, 16, false, false),
        (1, 4097, 64, 16, true, true),
        (2, 16384, 32, 16, false, true),
        // Auto's sequential kernels for the mamba rule without ΔA (B·E = 16384)
        (8, 70, 2048, 16, false, true),
        (8, 70, 2048, 16, false, false),
    ];
    let rules = [
        MambaRule::Mamba,
        MambaRule::Zoh,
        MambaRule::Bilinear,
        MambaRule::Dirac,
    ];
    let mut failed = Vec::new();
    for (ci, &(b, l, e, n, sep, gate)) in cases.iter().enumerate() {
        for (ri, &rule) in rules.iter().enumerate() {
            let seed = (ci * 10 + ri) as u64 * 11 + 3;
            let (ble, bln) = (b * l * e, b * l * n);
            // u, Δ_raw, ΔA, z, A, B_t, C_t, D, bias
            let mut raw = rand(ble, seed + 1, -4.0, 1.0);
            raw[0] = 25.0; // past the softplus cut
            let data = [
                (rand(ble, seed, -1.5, 1.5), vec![b, l, e]),
                (raw, vec![b, l, e]),
                (rand(ble, seed + 2, 0.001, 0.3), vec![b, l, e]),
                (rand(ble, seed + 3, -3.0, 3.0), vec![b, l, e]),
                (rand(e * n, seed + 4, -4.0, -0.1), vec![e, n]),
                (rand(bln, seed + 5, -1.0, 1.0), vec![b, l, n]),
                (rand(bln, seed + 6, -1.0, 1.0), vec![b, l, n]),
                (rand(e, seed + 7, -1.0, 1.0), vec![e]),
                (rand(e, seed + 8, -1.0, 0.5), vec![e]),
            ];
            let used = [true, true, sep, gate, true, true, true, true, true];
            let w = rand(ble, seed + 9, -1.0, 1.0);
            let run = |dev: &Device| {
                let vars: Vec<Var> = data
                    .iter()
                    .map(|(v, s)| {
                        Var::from_tensor(&Tensor::from_vec(v.clone(), s.as_slice(), dev).unwrap())
                            .unwrap()
                    })
                    .collect();
                let t: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
                let x = MambaScanInputs {
                    u: t[0],
                    delta_raw: t[1],
                    delta_a: sep.then_some(t[2]),
                    z: gate.then_some(t[3]),
                    a: t[4],
                    b_t: t[5],
                    c_t: t[6],
                    d: t[7],
                    delta_bias: t[8],
                };
                let y = mamba_scan(&x, rule).unwrap();
                let wt = Tensor::from_vec(w.clone(), (b, l, e), dev).unwrap();
                let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![flat(&y)];
                for (v, _) in vars.iter().zip(used).filter(|(_, u)| *u) {
                    out.push(flat(grads.get(v.as_tensor()).unwrap()));
                }
                out
            };
            let (got, want) = (run(&gpu), run(&Device::Cpu));
            let names = ["∂u", "∂Δ_raw", "∂ΔA", "∂z", "∂A", "∂B", "∂C", "∂D", "∂bias"];
            let names = std::iter::once("y")
                .chain(names.iter().zip(used).filter(|(_, u)| *u).map(|(n, _)| *n));
            for ((g, w), nm) in got.iter().zip(&want).zip(names) {
                let tol = if nm == "y" { 1e-5 } else { 1e-4 };
                let what = format!("B{b} L{l} E{e} N{n} {rule:?} deltaA {sep} z {gate} {nm}");
                if !check_rel(&what, g, w, tol) {
                    failed.push(what);
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[test]
fn mamba_layer_cuda_matches_cpu_at_length_4096() {
    let Some(gpu) = gpu() else { return };
    let (h, l, b) = (32usize, 4096usize, 2usize);
    let kwargs = serde_json::json!({"d_model": h, "d_state": 16, "expand": 2});
    // lrnnx's default initialization on the CPU, copied to the device
    let init = lrnnx_train::init::init_params(
        "lrnnx.models.ltv.mamba.Mamba",
        &kwargs,
        &mut lrnnx_train::init::Rng::new(5),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let params_on = |dev: &Device| {
        let mut p = Params::new();
        for (k, v) in init.vars() {
            p.insert(k, &v.as_tensor().to_device(dev).unwrap()).unwrap();
        }
        p
    };
    let x = rand(b * l * h, 99, -1.0, 1.0);
    let g = rand(b * l * h, 98, -1.0, 1.0);
    let run = |dev: &Device| {
        let layer = build("lrnnx.models.ltv.mamba.Mamba", &kwargs, params_on(dev)).unwrap();
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (b, l, h), dev).unwrap()).unwrap();
        let y = layer.forward(xv.as_tensor(), None).unwrap();
        let gt = Tensor::from_vec(g.clone(), (b, l, h), dev).unwrap();
        let grads = (&y * &gt).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![("y".to_string(), flat(&y))];
        out.push(("x".into(), flat(grads.get(xv.as_tensor()).unwrap())));
        for (k, v) in layer.params().vars() {
            if let Some(gr) = grads.get(v.as_tensor()) {
                out.push((k.clone(), flat(gr)));
            }
        }
        out
    };
    let (got, want) = (run(&gpu), run(&Device::Cpu));
    assert_eq!(got.len(), want.len());
    let mut failed = Vec::new();
    for ((k, g), (kw, w)) in got.iter().zip(&want) {
        assert_eq!(k, kw, "the CUDA and CPU runs give different gradients");
        let tol = if k == "y" { 1e-5 } else { 1e-4 };
        if !check_rel(&format!("Mamba L{l} {k}"), g, w, tol) {
            failed.push(k.clone());
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// The causal convolution of S4 / S4D (`lrnnx-kernels`' direct sums or cuFFT, as
/// `ConvMethod::Auto` picks: the cases take both ways, e.g. L 1000 × K 1000 and L 16384 ×
/// K 16384 by FFT, L 5000 × K 257 `y` direct and `∂k` by FFT, the short ones direct) against
/// the CPU op in f64 (FFTs; itself checked against the direct sum and finite differences in
/// `fftconv`): `y` within 1e-5, `∂u` and `∂k` within 1e-4 of the reference's largest value;
/// lengths up to 16384, kernels shorter than, equal to and longer than the signal. Run under
/// each `set_cuda_conv_method` (`Auto`, then forced `Direct` and `Fft`, the latter skipped with
/// a printed reason where cuFFT does not load), then `Auto` again.
#[test]
fn random_causal_convs_cuda_match_cpu() {
    use lrnnx_train::fftconv::{
        causal_conv, cuda_fft_available, set_cuda_conv_method, CudaConvMethod,
    };
    let Some(gpu) = gpu() else { return };
    let _conv = conv_method_lock();
    let mut methods = vec![CudaConvMethod::Auto, CudaConvMethod::Direct];
    if cuda_fft_available() {
        methods.push(CudaConvMethod::Fft);
    } else {
        if std::env::var("LRNNX_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("LRNNX_REQUIRE_CUDA=1 but cuFFT does not load");
        }
        println!("skipped the forced FFT: cuFFT does not load");
    }
    // (B, C, L, K)
    let cases = [
        (1, 1, 1, 1),
        (2, 3, 7, 7),
        (3, 2, 50, 9),
        (2, 4, 13, 30),
        (1, 2, 300, 300),
        (2, 3, 1000, 1000),
        (1, 3, 5000, 257),
        (1, 4, 4097, 4097),
        (2, 2, 16384, 100),
        (2, 8, 16384, 16384),
    ];
    let mut failed = Vec::new();
    for (method, (ci, &(b, c, l, k))) in methods
        .iter()
        .flat_map(|m| cases.iter().enumerate().map(move |case| (*m, case)))
    {
        set_cuda_conv_method(method);
        let seed = 1000 + ci as u64 * 3;
        let u = rand(b * c * l, seed, -1.0, 1.0);
        let kk = rand(c * k, seed + 1, -1.0, 1.0);
        let w = rand(b * c * l, seed + 2, -1.0, 1.0);
        let run = |dev: &Device, dtype: DType| {
            value_and_grads2(dev, dtype, (&u, &[b, c, l]), (&kk, &[c, k]), &w, |u, k| {
                causal_conv(u, k).unwrap()
            })
        };
        let (got, want) = (run(&gpu, DType::F32), run(&Device::Cpu, DType::F64));
        for ((g, wv), nm) in got.iter().zip(&want).zip(["y", "∂u", "∂k"]) {
            let tol = if nm == "y" { 1e-5 } else { 1e-4 };
            let what = format!("conv {method:?} B{b} C{c} L{l} K{k} {nm}");
            if !check_rel(&what, &f32s(g), &f32s(wv), tol) {
                failed.push(what);
            }
        }
    }
    set_cuda_conv_method(CudaConvMethod::Auto);
    // f64 is refused on CUDA with a clear error
    let u = Tensor::zeros((1, 2, 8), DType::F64, &gpu).unwrap();
    let k = Tensor::zeros((2, 3), DType::F64, &gpu).unwrap();
    let e = causal_conv(&u, &k).expect_err("f64 on CUDA must be refused");
    println!("f64 on CUDA: {e}");
    assert!(e.to_string().contains("f32"), "{e}");
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// S4 and S4D layers (the golden cases' weights) at longer sequences, CUDA against the CPU:
/// `y` within 1e-5, every gradient within 1e-4 relative.
#[test]
fn s4_layers_cuda_match_cpu_at_length_2048() {
    let Some(gpu) = gpu() else { return };
    let _conv = conv_method_lock();
    let mut failed = Vec::new();
    for file in ["s4", "s4d_zoh", "s4d_bilinear"] {
        let case = Case::load(golden_dir().join(format!("{file}.safetensors"))).unwrap();
        let h = *case.tensor("input.x").unwrap().shape.last().unwrap();
        let (b, l) = (2usize, 2048usize);
        let x = rand(b * l * h, 77, -1.0, 1.0);
        let g = rand(b * l * h, 78, -1.0, 1.0);
        let run = |dev: &Device| {
            let mut params = Params::new();
            for (key, t) in &case.file.tensors {
                if let Some(p) = key.strip_prefix("param.") {
                    let v = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), dev).unwrap();
                    params.insert(p, &v).unwrap();
                }
            }
            let layer = build(case.class(), case.ctor_kwargs(), params).unwrap();
            let xv =
                Var::from_tensor(&Tensor::from_vec(x.clone(), (b, l, h), dev).unwrap()).unwrap();
            let y = layer.forward(xv.as_tensor(), None).unwrap();
            let gt = Tensor::from_vec(g.clone(), (b, l, h), dev).unwrap();
            let grads = (&y * &gt).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![("y".to_string(), flat(&y))];
            out.push(("x".into(), flat(grads.get(xv.as_tensor()).unwrap())));
            for (k, v) in layer.params().vars() {
                if let Some(gr) = grads.get(v.as_tensor()) {
                    out.push((k.clone(), flat(gr)));
                }
            }
            out
        };
        let (got, want) = (run(&gpu), run(&Device::Cpu));
        assert_eq!(got.len(), want.len());
        for ((k, gv), (kw, wv)) in got.iter().zip(&want) {
            assert_eq!(k, kw, "the CUDA and CPU runs give different gradients");
            let tol = if k == "y" { 1e-5 } else { 1e-4 };
            let what = format!("{file} L{l} {k}");
            if !check_rel(&what, gv, wv, tol) {
                failed.push(what);
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// The fused pointwise ops (GELU once and twice, bias GELU, axis swaps with 0–2 GELUs) on
/// CUDA against the CPU op in f64 (which its unit tests check against candle's own ops and
/// finite differences): `y` within 1e-5, gradients within 1e-4 relative. The shapes cut tiles
/// on every side and run past one grid in each strided dimension of the swap (B·M > 65535
/// blocks, R > 65535 tiles).
#[test]
fn pointwise_ops_cuda_match_cpu() {
    use lrnnx_train::pointwise::{bias_gelu, gelu, gelu_gelu, swap_axes_gelu, swap_grouped_gelu};
    let Some(gpu) = gpu() else { return };
    let mut failed = Vec::new();
    let mut run_case = |what: String,
                        shape: &[usize],
                        out_shape: &[usize],
                        bias: Option<usize>,
                        f: &dyn Fn(&Tensor, Option<&Tensor>) -> Tensor,
                        seed: u64| {
        let n: usize = shape.iter().product();
        let x = rand(n, seed, -5.0, 5.0);
        let w = rand(n, seed + 1, -1.0, 1.0);
        let bv = bias.map(|c| rand(c, seed + 2, -2.0, 2.0));
        let run = |dev: &Device, dtype: DType| {
            let t = |v: &[f32], s: &[usize]| {
                Tensor::from_vec(v.to_vec(), s, dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let xv = Var::from_tensor(&t(&x, shape)).unwrap();
            let b = bv
                .as_ref()
                .map(|b| Var::from_tensor(&t(b, &[b.len()])).unwrap());
            let y = f(xv.as_tensor(), b.as_ref().map(|b| b.as_tensor()));
            assert_eq!(y.dims(), out_shape);
            let grads = (&y * t(&w, out_shape))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let f = |x: &Tensor| flat(&x.to_dtype(DType::F32).unwrap());
            let mut out = vec![f(&y), f(grads.get(xv.as_tensor()).unwrap())];
            if let Some(b) = &b {
                out.push(f(grads.get(b.as_tensor()).unwrap()));
            }
            out
        };
        let (got, want) = (run(&gpu, DType::F32), run(&Device::Cpu, DType::F64));
        for ((g, wv), nm) in got.iter().zip(&want).zip(["y", "∂x", "∂bias"]) {
            let tol = if nm == "y" { 1e-5 } else { 1e-4 };
            let what = format!("{what} {nm}");
            if !check_rel(&what, g, wv, tol) {
                failed.push(what);
            }
        }
    };
    for (i, shape) in [vec![3, 1000, 37], vec![1, (1 << 20) + 3]]
        .iter()
        .enumerate()
    {
        run_case(
            format!("gelu {shape:?}"),
            shape,
            shape,
            None,
            &|x, _| gelu(x).unwrap(),
            10 + i as u64,
        );
        run_case(
            format!("gelu_gelu {shape:?}"),
            shape,
            shape,
            None,
            &|x, _| gelu_gelu(x).unwrap(),
            20 + i as u64,
        );
    }
    run_case(
        "bias_gelu [5, 300, 37]".into(),
        &[5, 300, 37],
        &[5, 300, 37],
        Some(37),
        &|x, b| bias_gelu(x, b.unwrap()).unwrap(),
        30,
    );
    let swaps = [
        [2, 37, 1, 45],
        [1, 33, 3, 70],
        [2, 1000, 2, 300],
        [70_000, 2, 1, 3],
        [1, 65_535 * 32 + 40, 1, 1],
    ];
    for (i, d) in swaps.iter().enumerate() {
        for gelus in 0..=2u32 {
            run_case(
                format!("swap_axes_gelu {d:?} gelus {gelus}"),
                d,
                &[d[0], d[3], d[2], d[1]],
                None,
                &|x, _| swap_axes_gelu(x, gelus).unwrap(),
                40 + 3 * i as u64 + gelus as u64,
            );
        }
    }
    for gelus in 0..=2u32 {
        run_case(
            format!("swap_grouped_gelu [3, 12·4, 300] gelus {gelus}"),
            &[3, 48, 300],
            &[3, 300, 48],
            None,
            &|x, _| swap_grouped_gelu(x, 4, gelus).unwrap(),
            60 + gelus as u64,
        );
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// S4D's one-op kernel `K = 2·Re Σ_n w·z^t` on CUDA against the CPU op in f64 (itself checked
/// against direct sums and finite differences), `K` within 1e-5 and `∂z`, `∂w` within 1e-4
/// relative: long kernels (|z| up to 0.9999, so terms live for thousands of taps), lengths not
/// a multiple of a tile, several output copies.
#[test]
fn vandermonde_kernels_cuda_match_cpu() {
    use lrnnx_train::vandermonde::vandermonde_kernel;
    let Some(gpu) = gpu() else { return };
    let mut failed = Vec::new();
    for (i, &(h, n, ch, l)) in [
        (1usize, 1usize, 1usize, 1usize),
        (3, 5, 2, 2049),
        (4, 32, 1, 16384),
        (2, 16, 3, 5000),
        (3, 4, 2, 100),
    ]
    .iter()
    .enumerate()
    {
        let seed = 500 + 10 * i as u64;
        let r = rand(h * n, seed, 0.3, 0.9999);
        let th = rand(h * n, seed + 1, -3.1, 3.1);
        let z: Vec<f32> = r
            .iter()
            .zip(&th)
            .flat_map(|(r, t)| [r * t.cos(), r * t.sin()])
            .collect();
        let w = rand(2 * ch * h * n, seed + 2, -1.0, 1.0);
        let g = rand(h * ch * l, seed + 3, -1.0, 1.0);
        let run = |dev: &Device, dtype: DType| {
            value_and_grads2(
                dev,
                dtype,
                (&z, &[h, n, 2]),
                (&w, &[ch, h, n, 2]),
                &g,
                |z, w| vandermonde_kernel(z, w, l).unwrap(),
            )
        };
        let (got, want) = (run(&gpu, DType::F32), run(&Device::Cpu, DType::F64));
        for ((gv, wv), nm) in got.iter().zip(&want).zip(["K", "∂z", "∂w"]) {
            let tol = if nm == "K" { 1e-5 } else { 1e-4 };
            let what = format!("vandermonde H{h} N{n} ch{ch} L{l} {nm}");
            if !check_rel(&what, &f32s(gv), &f32s(wv), tol) {
                failed.push(what);
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// S4's batched solve on the device (`lrnnx_kernels::solve`) against the host's f64 solve of
/// the same f32 systems, forward and both gradients, f32 (1e-5 / 1e-4) and f64 (1e-12) on the
/// device; a zero, a NaN and a non-finite-solution system named by index; a size beyond the
/// kernel's (M > 1024) solved on the host. (`kernels/tests/gpu_solve.rs` checks the kernel's
/// shared-memory and global-scratch paths and empty batches directly; candle makes no empty
/// tensors on CUDA.)
#[test]
fn s4_solve_cuda_matches_cpu() {
    use lrnnx_train::s4::solve;
    let Some(gpu) = gpu() else { return };
    let mut failed = Vec::new();
    for (i, &(n, m, k)) in [
        (1usize, 1usize, 1usize),
        (7, 64, 65),
        (5, 64, 1),
        (3, 130, 3),
        (2, 300, 2),
        (1, 1030, 1),
    ]
    .iter()
    .enumerate()
    {
        let seed = 700 + 10 * i as u64;
        // random dense matrices: partial pivoting swaps rows on nearly every column
        let a = rand(n * m * m, seed, -1.0, 1.0);
        let b = rand(n * m * k, seed + 1, -1.0, 1.0);
        let g = rand(n * m * k, seed + 2, -1.0, 1.0);
        let run = |dev: &Device, dtype: DType| {
            value_and_grads2(
                dev,
                dtype,
                (&a, &[n, m, m]),
                (&b, &[n, m, k]),
                &g,
                |a, b| solve(a, b).unwrap(),
            )
        };
        let want = run(&Device::Cpu, DType::F64);
        // f32 on the device against the f64 host solve; f64 on the device in f64 (the same
        // elimination, so X agrees to rounding; the gradients' products differ in summation
        // order only)
        for dtype in [DType::F32, DType::F64] {
            let got = run(&gpu, dtype);
            for ((gv, wv), nm) in got.iter().zip(&want).zip(["X", "∂A", "∂B"]) {
                let what = format!("solve {dtype:?} N{n} M{m} K{k} {nm}");
                let ok = match (dtype, nm) {
                    (DType::F64, _) => check64(&what, gv, wv, 1e-12),
                    (_, "X") => check_rel(&what, &f32s(gv), &f32s(wv), 1e-5),
                    _ => check_rel(&what, &f32s(gv), &f32s(wv), 1e-4),
                };
                if !ok {
                    failed.push(what);
                }
            }
        }
    }
    // 6 systems of 5 unknowns, one bad (a zero matrix, a NaN in A, an infinity in B: a
    // non-finite X) or two: the first bad system is named
    let (n, m) = (6usize, 5usize);
    for (dtype, zero, nan, inf, first) in [
        (DType::F32, Some(3), Some(4), None, 3),
        (DType::F64, Some(3), Some(1), None, 1),
        (DType::F32, None, Some(2), None, 2),
        (DType::F32, None, None, Some(4), 4),
        (DType::F64, Some(5), None, Some(0), 0),
    ] {
        let mut a = rand(n * m * m, 9, -1.0, 1.0);
        let mut b = vec![1f32; n * m * 2];
        if let Some(i) = zero {
            a[i * m * m..(i + 1) * m * m].fill(0.0);
        }
        if let Some(i) = nan {
            a[i * m * m + 7] = f32::NAN;
        }
        if let Some(i) = inf {
            b[i * m * 2 + 3] = f32::INFINITY;
        }
        let t = |v: Vec<f32>, s: (usize, usize, usize)| {
            Tensor::from_vec(v, s, &gpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        match solve(&t(a, (n, m, m)), &t(b, (n, m, 2))) {
            Ok(_) => failed.push(format!("{dtype:?}: bad system {first} not reported")),
            Err(e) => {
                let msg = e.to_string();
                println!("{dtype:?}: {msg}");
                if !msg.contains(&format!("channel {first}")) {
                    failed.push(format!("{dtype:?}: {msg:?} does not name {first}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}
