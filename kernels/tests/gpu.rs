//! GPU correctness of the selective scan kernels (needs a CUDA device; prints a skip reason and
//! returns without one):
//! - every `op_selective_scan_*` lrnnx golden case (real and complex `A`): `out` at 1e-5 and every `grad.*`
//!   at 1e-4 (max |diff| / max |ref|); the other `op_*` cases are listed as not covered;
//! - random cases against a sequential f64 loop written here (forward at 1e-5) and central
//!   finite differences of it along a random direction per input (gradients at 1e-4), lengths
//!   up to 16384;
//! - the same with complex `A` (every rule; golden `op_selective_scan_complex_*` cases too);
//! - the rglru and s7 rules against the f64 loop and finite differences, and lrnnx's
//!   `op_rglru_scan_*` golden cases;
//! - the S7 scan with its projections (`lrnnx_kernels::s7`): the `op_s7_scan_*` golden cases
//!   and random cases against an f64 loop with finite differences;
//! - the sequential mode (`ScanMode::Sequential`): every rule against the f64 loop with finite
//!   differences (tails, odd state sizes, groups, lengths up to 16384), and against the chunked
//!   kernels at a large size;
//! - two backward runs give bitwise identical gradients (both modes);
//! - the time step's softplus and its derivative alone against f64 (both modes).
//!
//! Golden files: `$LRNNX_GOLDEN` or the repository's `tests/data/lrnnx-golden`.
#![cfg(feature = "cuda")]
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;

mod common;
use common::{f32v, load, rel, to_bdl, to_bld, Rng, C64};

use lrnnx_kernels::cuda::{Grads, Inputs, SelectiveScan};
use lrnnx_kernels::s7::{S7Inputs, S7Scan, S7Spec};
use lrnnx_kernels::{Rule, ScanMode, ScanSpec};

/// Host tensors of one problem (f64, kernel layout).
#[derive(Clone)]
struct Host {
    u: Vec<f64>,
    delta: Vec<f64>,
    delta_a: Option<Vec<f64>>,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    d: Option<Vec<f64>>,
    z: Option<Vec<f64>>,
    delta_bias: Option<Vec<f64>>,
}

/// Sequential reference forward with complex `A` (f64), from spec §4.1: `h_t = Ā h_{t−1} +
/// γ̄·B_t·u_t` in ℂ, `y = 2·Re(Σ_n C_t[n] h_t[n]) + D·u`, then the gate.
/// Also the last state `(B, E, N)` as (re, im) pairs.
fn reference_complex(s: &ScanSpec, x: &Host) -> (Vec<f64>, Vec<f64>) {
    let (bs, l, e, n, g) = (s.batch, s.len, s.channels, s.state, s.groups);
    let mut y = vec![0.0; bs * l * e];
    let mut last = vec![0.0; bs * e * n * 2];
    for bi in 0..bs {
        for ch in 0..e {
            let grp = ch / (e / g);
            let mut h = vec![C64(0.0, 0.0); n];
            for t in 0..l {
                let i = (bi * l + t) * e + ch;
                let mut dl = x.delta[i] + x.delta_bias.as_ref().map_or(0.0, |v| v[ch]);
                if s.softplus && dl <= 20.0 {
                    dl = dl.exp().ln_1p();
                }
                let da = x.delta_a.as_ref().map_or(dl, |v| v[i]);
                let mut acc = 0.0;
                for k in 0..n {
                    let a = C64(x.a[(ch * n + k) * 2], x.a[(ch * n + k) * 2 + 1]);
                    let j = (((bi * l + t) * g + grp) * n + k) * 2;
                    let (bv, cv) = (C64(x.b[j], x.b[j + 1]), C64(x.c[j], x.c[j + 1]));
                    let one = C64(1.0, 0.0);
                    let (abar, gbar) = match s.rule {
                        Rule::Mamba => (a.scale(da).exp(), C64(dl, 0.0)),
                        Rule::Zoh => {
                            let em = a.scale(dl).exp();
                            (a.scale(da).exp(), C64(em.0 - 1.0, em.1).div(a))
                        }
                        Rule::Bilinear => {
                            let v = a.scale(da * 0.5);
                            let w = a.scale(dl * 0.5);
                            (
                                C64(1.0 + v.0, v.1).div(C64(1.0 - v.0, -v.1)),
                                C64(dl, 0.0).div(C64(1.0 - w.0, -w.1)),
                            )
                        }
                        Rule::Dirac => (a.scale(da).exp(), one),
                        Rule::Rglru | Rule::S7 => unreachable!("real rules"),
                    };
                    let bu = gbar.mul(bv).scale(x.u[i]);
                    let hn = abar.mul(h[k]);
                    h[k] = C64(hn.0 + bu.0, hn.1 + bu.1);
                    acc += 2.0 * cv.mul(h[k]).0;
                }
                let mut out = acc + x.d.as_ref().map_or(0.0, |v| v[ch]) * x.u[i];
                if let Some(z) = &x.z {
                    out *= z[i] / (1.0 + (-z[i]).exp());
                }
                y[i] = out;
            }
            for (k, hk) in h.iter().enumerate() {
                let j = ((bi * e + ch) * n + k) * 2;
                (last[j], last[j + 1]) = (hk.0, hk.1);
            }
        }
    }
    (y, last)
}

/// Sequential reference forward (f64), written directly from the equations of spec §4.1.
fn reference(s: &ScanSpec, x: &Host) -> Vec<f64> {
    reference_with_last(s, x).0
}

/// `y` and the last state `(B, E, N')` (N' = N, or 2N as (re, im) pairs with complex `A`).
fn reference_with_last(s: &ScanSpec, x: &Host) -> (Vec<f64>, Vec<f64>) {
    if s.complex {
        return reference_complex(s, x);
    }
    let (bs, l, e, n) = (s.batch, s.len, s.channels, s.state);
    let g = if s.bc_fixed { 1 } else { s.groups };
    let mut y = vec![0.0; bs * l * e];
    let mut last = vec![0.0; bs * e * n];
    for bi in 0..bs {
        for ch in 0..e {
            let grp = ch / (e / g);
            let mut h = vec![0.0f64; n];
            for t in 0..l {
                let i = (bi * l + t) * e + ch;
                let mut dl = x.delta[i] + x.delta_bias.as_ref().map_or(0.0, |v| v[ch]);
                if s.softplus && dl <= 20.0 {
                    dl = dl.exp().ln_1p();
                }
                let da = x.delta_a.as_ref().map_or(dl, |v| v[i]);
                let mut acc = 0.0;
                for k in 0..n {
                    let a = x.a[ch * n + k];
                    let (bv, cv) = if s.bc_fixed {
                        (x.b[ch * n + k], x.c[ch * n + k])
                    } else {
                        let j = ((bi * l + t) * g + grp) * n + k;
                        (x.b[j], x.c[j])
                    };
                    let xa = da * a;
                    let (abar, gbar) = match s.rule {
                        Rule::Mamba => (xa.exp(), dl),
                        Rule::Zoh => (xa.exp(), if a == 0.0 { dl } else { (dl * a).exp_m1() / a }),
                        Rule::Bilinear => {
                            let v = xa.clamp(-2e18, 2e18);
                            ((1.0 + v / 2.0) / (1.0 - v / 2.0), dl / (1.0 - dl * a / 2.0))
                        }
                        Rule::Dirac => (xa.exp(), 1.0),
                        Rule::Rglru => {
                            let ab = a.powf(da);
                            (ab, (1.0 - ab * ab).sqrt())
                        }
                        Rule::S7 => (1.0 - 1.0 / (da * da + 0.5), 1.0),
                    };
                    h[k] = abar * h[k] + gbar * bv * x.u[i];
                    acc += cv * h[k];
                }
                let mut out = acc + x.d.as_ref().map_or(0.0, |v| v[ch]) * x.u[i];
                if let Some(z) = &x.z {
                    out *= z[i] / (1.0 + (-z[i]).exp());
                }
                y[i] = out;
            }
            last[(bi * e + ch) * n..(bi * e + ch + 1) * n].copy_from_slice(&h);
        }
    }
    (y, last)
}

/// Gradients by input name.
type NamedGrads = HashMap<&'static str, Vec<f32>>;

/// Runs forward + backward on the GPU; returns (y, the last state, grads by input name, the
/// raw gradients).
fn gpu_run(
    ss: &SelectiveScan,
    s: &ScanSpec,
    x: &Host,
    g: &[f64],
) -> (Vec<f32>, Vec<f32>, NamedGrads, Grads) {
    let st = ss.stream();
    let up = |v: &[f64]| st.clone_htod(&f32v(v)).unwrap();
    let (u, dl, a, b, c) = (up(&x.u), up(&x.delta), up(&x.a), up(&x.b), up(&x.c));
    let da = x.delta_a.as_deref().map(up);
    let d = x.d.as_deref().map(up);
    let z = x.z.as_deref().map(up);
    let db = x.delta_bias.as_deref().map(up);
    let inp = Inputs {
        u: &u,
        delta: &dl,
        delta_a: da.as_ref(),
        a: &a,
        b: &b,
        c: &c,
        d: d.as_ref(),
        z: z.as_ref(),
        delta_bias: db.as_ref(),
    };
    let f = ss.forward(s, &inp).unwrap();
    let gy = up(g);
    let gr = ss.backward(s, &inp, &f, &gy).unwrap();
    let y = st.clone_dtoh(&f.y).unwrap();
    let last = st.clone_dtoh(&f.last_state).unwrap();
    let down = |v: &cudarc::driver::CudaSlice<f32>| st.clone_dtoh(v).unwrap();
    let n = s.state_floats();
    let ne = 3 * n + 2;
    let pc = &gr.per_channel;
    let col = |q: usize| {
        (0..s.channels)
            .map(|ch| pc[ch * ne + q])
            .collect::<Vec<f32>>()
    };
    let mut m = HashMap::new();
    m.insert("u", down(&gr.du));
    m.insert("delta", down(&gr.ddelta));
    if let Some(v) = &gr.ddelta_a {
        m.insert("deltaA", down(v));
    }
    if let Some(v) = &gr.dz {
        m.insert("z", down(v));
    }
    m.insert("B", down(&gr.db));
    m.insert("C", down(&gr.dc));
    m.insert(
        "A",
        (0..s.channels * n)
            .map(|i| pc[(i / n) * ne + i % n])
            .collect(),
    );
    if s.has_d {
        m.insert("D", col(3 * n));
    }
    if s.has_delta_bias {
        m.insert("delta_bias", col(3 * n + 1));
    }
    (y, last, m, gr)
}

fn device() -> Option<SelectiveScan> {
    if common::no_gpu() {
        return None;
    }
    Some(SelectiveScan::new(0).expect("CUDA context"))
}

// ---------------------------------------------------------------- golden cases

#[test]
fn golden_op_cases() {
    let Some(ss) = device() else { return };
    let dir = std::env::var("LRNNX_GOLDEN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/lrnnx-golden").to_string()
    });
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden dir {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("op_"))
        .collect();
    files.sort();
    let mut checked = 0;
    for p in files {
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        let gd = load(&p);
        let complex = gd.cfg["complex_keys"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if !name.starts_with("op_selective_scan") {
            // op_rglru_scan_*: golden_rglru_cases; op_s7_scan_*: s7_golden_and_random
            if !name.starts_with("op_rglru") && !name.starts_with("op_s7") {
                println!("{name}: not covered by the GPU kernels yet");
            }
            continue;
        }
        let call = gd.cfg["call"].as_str().unwrap().to_string();
        let rule = ["mamba", "zoh", "bilinear", "dirac"]
            .into_iter()
            .find(|r| call.contains(&format!("discretization='{r}'")))
            .map(|r| Rule::from_name(r).unwrap())
            .unwrap_or(Rule::Mamba);
        let get = |k: &str| gd.t.get(&format!("input.{k}")).cloned();
        let (ush, u) = get("u").unwrap();
        let (bsz, d, l) = (ush[0], ush[1], ush[2]);
        let (ash, a) = get("A").unwrap();
        let n = ash[1];
        let nv = if complex { 2 } else { 1 };
        let (bsh, bm) = get("B").unwrap();
        let (_, cm) = get("C").unwrap();
        let (bc_fixed, groups) = match bsh.len() {
            2 => (true, 1),
            3 => (false, 1),
            _ => (false, bsh[1]),
        };
        // B, C: (b, [G,] n, L·nv) -> (b, L, G, n, nv) (complex: (re, im) interleaved along L)
        let bc = |v: &[f64]| -> Vec<f64> {
            if bc_fixed {
                return v.to_vec();
            }
            let mut o = vec![0.0; v.len()];
            for bi in 0..bsz {
                for gi in 0..groups {
                    for k in 0..n {
                        for t in 0..l {
                            for r in 0..nv {
                                o[(((bi * l + t) * groups + gi) * n + k) * nv + r] =
                                    v[((bi * groups + gi) * n + k) * l * nv + t * nv + r];
                            }
                        }
                    }
                }
            }
            o
        };
        let t3 = |k: &str| get(k).map(|(_, v)| to_bld(&v, bsz, d, l));
        let x = Host {
            u: to_bld(&u, bsz, d, l),
            delta: t3("delta").unwrap(),
            delta_a: t3("deltaA"),
            a,
            b: bc(&bm),
            c: bc(&cm),
            d: get("D").map(|v| v.1),
            z: t3("z"),
            delta_bias: get("delta_bias").map(|v| v.1),
        };
        let spec = ScanSpec {
            batch: bsz,
            len: l,
            channels: d,
            state: n,
            groups,
            rule,
            bc_fixed,
            has_delta_a: x.delta_a.is_some(),
            has_delta_bias: x.delta_bias.is_some(),
            softplus: call.contains("delta_softplus=True"),
            has_d: x.d.is_some(),
            has_z: x.z.is_some(),
            complex,
        };
        let g = t3("g").unwrap();
        let (y, _, grads, _) = gpu_run(&ss, &spec, &x, &g);
        let want = &gd.t["output.out"].1;
        let ry = rel(&to_bdl(&y, bsz, d, l), want);
        println!("{name}: out rel {ry:.2e}");
        assert!(ry <= 1e-5, "{name}: out rel {ry:e}");
        for (k, v) in &grads {
            let Some((_, want)) = gd.t.get(&format!("grad.{k}")) else {
                panic!("{name}: no grad.{k}")
            };
            let got: Vec<f32> = match *k {
                "u" | "delta" | "deltaA" | "z" => to_bdl(v, bsz, d, l),
                "B" | "C" if !bc_fixed => {
                    let mut o = vec![0.0; v.len()];
                    for bi in 0..bsz {
                        for gi in 0..groups {
                            for s in 0..n {
                                for t in 0..l {
                                    for r in 0..nv {
                                        o[((bi * groups + gi) * n + s) * l * nv + t * nv + r] =
                                            v[(((bi * l + t) * groups + gi) * n + s) * nv + r];
                                    }
                                }
                            }
                        }
                    }
                    o
                }
                _ => v.clone(),
            };
            let r = rel(&got, want);
            println!("{name}: grad.{k} rel {r:.2e}");
            assert!(r <= 1e-4, "{name}: grad.{k} rel {r:e}");
        }
        checked += 1;
    }
    assert_eq!(
        checked, 10,
        "expected the 8 real and 2 complex selective-scan golden cases"
    );
}

// ---------------------------------------------------------------- random cases

fn random_host(s: &ScanSpec, rng: &mut Rng) -> Host {
    let ble = s.batch * s.len * s.channels;
    let bcn = s.expected_len("B").unwrap();
    let en = s.expected_len("A").unwrap();
    Host {
        u: (0..ble).map(|_| rng.normal()).collect(),
        delta: if s.softplus {
            rng.vec(ble, -4.0, 0.0)
        } else if s.rule == Rule::S7 {
            (0..ble).map(|_| rng.normal()).collect()
        } else if s.rule == Rule::Rglru {
            rng.vec(ble, 0.01, 2.0)
        } else {
            rng.vec(ble, 0.001, 0.1)
        },
        delta_a: s.has_delta_a.then(|| rng.vec(ble, 0.001, 0.2)),
        a: if s.complex {
            // (re, im) pairs: decaying real part, any imaginary part
            (0..en)
                .map(|i| {
                    if i % 2 == 0 {
                        -0.05 - 2.95 * rng.next()
                    } else {
                        6.0 * rng.next() - 3.0
                    }
                })
                .collect()
        } else if s.rule == Rule::Rglru {
            rng.vec(en, 0.3, 0.99)
        } else {
            rng.vec(en, -3.0, -0.05)
        },
        b: (0..bcn).map(|_| rng.normal()).collect(),
        c: (0..bcn).map(|_| rng.normal()).collect(),
        d: s.has_d
            .then(|| (0..s.channels).map(|_| rng.normal()).collect()),
        z: s.has_z.then(|| (0..ble).map(|_| rng.normal()).collect()),
        delta_bias: s.has_delta_bias.then(|| rng.vec(s.channels, -1.0, 1.0)),
    }
}

fn field<'a>(x: &'a mut Host, k: &str) -> &'a mut Vec<f64> {
    match k {
        "u" => &mut x.u,
        "delta" => &mut x.delta,
        "deltaA" => x.delta_a.as_mut().unwrap(),
        "A" => &mut x.a,
        "B" => &mut x.b,
        "C" => &mut x.c,
        "D" => x.d.as_mut().unwrap(),
        "z" => x.z.as_mut().unwrap(),
        _ => x.delta_bias.as_mut().unwrap(),
    }
}

fn check_random(ss: &SelectiveScan, s: ScanSpec, seed: u64) {
    let mut rng = Rng(seed);
    let x = random_host(&s, &mut rng);
    let g: Vec<f64> = (0..s.batch * s.len * s.channels)
        .map(|_| rng.normal())
        .collect();
    let (y, last, grads, _) = gpu_run(ss, &s, &x, &g);
    let (want, want_last) = reference_with_last(&s, &x);
    let ry = rel(&y, &want);
    let rl = rel(&last, &want_last);
    println!("{s:?}\n  forward rel {ry:.2e}, last state rel {rl:.2e}");
    assert!(ry <= 1e-5, "forward rel {ry:e}");
    assert!(rl <= 1e-5, "last state rel {rl:e}");
    let loss = |x: &Host| -> f64 { reference(&s, x).iter().zip(&g).map(|(a, b)| a * b).sum() };
    for (k, gv) in &grads {
        let mut v: Vec<f64> = (0..gv.len()).map(|_| rng.normal()).collect();
        if *k == "delta" || *k == "deltaA" {
            // keep the time steps positive under the perturbation
            for (vi, xi) in v.iter_mut().zip(field(&mut x.clone(), k).iter()) {
                *vi *= xi.abs().min(1.0);
            }
        }
        let step = |h: &mut Host, t: f64| {
            for (p, vi) in field(h, k).iter_mut().zip(&v) {
                *p += t * vi;
            }
        };
        let (dot, fd, r) = common::directional(&x, gv, &v, step, loss);
        println!("  grad.{k}: directional {dot:.6e} vs finite difference {fd:.6e}, rel {r:.2e}");
        assert!(r <= 1e-4, "grad.{k} rel {r:e}");
    }
}

#[test]
fn random_cases_against_sequential_f64() {
    let Some(ss) = device() else { return };
    let base = ScanSpec::mamba(2, 300, 64, 16);
    let mut seed = 1;
    for rule in [Rule::Mamba, Rule::Zoh, Rule::Bilinear, Rule::Dirac] {
        for variant in 0..3 {
            let mut s = base;
            s.rule = rule;
            match variant {
                1 => {
                    s.has_delta_a = true;
                    s.bc_fixed = true;
                    s.has_z = false;
                    s.channels = 40;
                    s.state = 5;
                }
                2 => {
                    s.groups = 4;
                    s.softplus = false;
                    s.has_delta_bias = false;
                    s.has_d = false;
                    s.channels = 96;
                    s.state = 8;
                    s.len = 1000;
                }
                _ => {}
            }
            check_random(&ss, s, seed);
            seed += 1;
        }
    }
    // long sequences
    for len in [4097, 16384] {
        let mut s = base;
        s.batch = 1;
        s.len = len;
        s.channels = 32;
        check_random(&ss, s, seed);
        seed += 1;
    }
}

#[test]
fn sequential_mode_against_sequential_f64() {
    let Some(mut ss) = device() else { return };
    ss.tiling.mode = ScanMode::Sequential;
    let base = ScanSpec::mamba(2, 301, 64, 16);
    let mut seed = 500;
    // two and four threads a channel (the butterfly sums parked in the staged tiles or in
    // their own area); odd N falls back to one
    for (split, rule) in [2, 4].into_iter().flat_map(|split| {
        [
            Rule::Mamba,
            Rule::Zoh,
            Rule::Bilinear,
            Rule::Dirac,
            Rule::Rglru,
            Rule::S7,
        ]
        .map(|rule| (split, rule))
    }) {
        ss.tiling.seq_split = split;
        for variant in 0..4 {
            let mut s = base;
            s.rule = rule;
            // sub-chunks of 8 (Auto's) and of 4 (the default of an explicit Sequential);
            // chunks of 8 steps in variant 3 (with 4 lanes a channel the tiles then stage
            // 4 bytes at a time)
            ss.tiling.seq_sub = if variant == 1 { 4 } else { 8 };
            ss.tiling.seq_chunk = if variant == 3 { 8 } else { 32 };
            match variant {
                // ΔA (not for rglru / s7), no z; two groups of 32 channels; a length that ends
                // mid sub-chunk; odd state (one thread a channel, padded butterfly) with two
                // lanes a channel asked for, N = 6 (two lanes of 3 states) with four
                1 => {
                    s.has_delta_a = !matches!(rule, Rule::Rglru | Rule::S7);
                    s.has_z = false;
                    s.state = if split == 4 { 6 } else { 5 };
                    s.groups = 2;
                    s.len = 77;
                }
                // short chunks, a length that ends mid chunk; no z (the backward's per-step
                // outputs are then du and ddt alone)
                3 => {
                    s.len = 203;
                    s.has_z = false;
                }
                // three groups, no softplus / bias / D (rglru keeps softplus: Ā < 1), N = 8;
                // ΔA and z (not for rglru / s7: four per-step outputs)
                2 => {
                    s.has_delta_a = !matches!(rule, Rule::Rglru | Rule::S7);
                    s.groups = 3;
                    s.channels = 96;
                    s.softplus = rule == Rule::Rglru;
                    s.has_delta_bias = false;
                    s.has_d = false;
                    s.state = 8;
                    s.len = 1000;
                }
                _ => {}
            }
            let v = s.check(ss.tiling).expect("sequential mode applies");
            assert!(v.seq, "{s:?} did not select the sequential kernels");
            if s.state.is_multiple_of(split) {
                assert_eq!(v.tiling.seq_split, split, "{s:?}");
            }
            check_random(&ss, s, seed);
            seed += 1;
        }
    }
    // one thread a channel at N = 16: three of the four state levels' bits xor-permute a
    // lane's slots (its B/C float4s picked by the two high bits); the thread stores all the
    // backward's per-step outputs (three with z, two without, four with ΔA and z)
    (ss.tiling.seq_split, ss.tiling.seq_sub, ss.tiling.seq_chunk) = (1, 4, 32);
    for rule in [Rule::Mamba, Rule::Bilinear, Rule::Zoh] {
        let mut s = base;
        s.rule = rule;
        s.len = 203;
        s.has_z = rule != Rule::Bilinear;
        s.has_delta_a = rule == Rule::Zoh;
        let v = s.check(ss.tiling).expect("sequential mode applies");
        assert!(v.seq && v.tiling.seq_split == 1, "{s:?}");
        check_random(&ss, s, seed);
        seed += 1;
    }
    (ss.tiling.seq_split, ss.tiling.seq_sub, ss.tiling.seq_chunk) = (2, 8, 32);
    for len in [4097, 16384] {
        let mut s = base;
        s.batch = 1;
        s.len = len;
        s.channels = 32;
        check_random(&ss, s, seed);
        seed += 1;
    }
}

/// The sequential and chunked kernels on one large problem (the chunked ones are checked
/// against the f64 loop above): outputs and gradients agree to float rounding. 16 × 1024
/// channels (× 2048 steps): `ScanMode::Auto` takes the sequential kernels with its own
/// geometry.
#[test]
fn sequential_mode_matches_chunked_mode_at_scale() {
    let Some(mut ss) = device() else { return };
    let s = ScanSpec::mamba(16, 2048, 1024, 16);
    let mut rng = Rng(77);
    let x = random_host(&s, &mut rng);
    let g: Vec<f64> = (0..s.batch * s.len * s.channels)
        .map(|_| rng.normal())
        .collect();
    ss.tiling.mode = ScanMode::Chunked;
    let (y1, _, g1, _) = gpu_run(&ss, &s, &x, &g);
    // NaN-aware (common::rel): the chunked result is the reference
    let r = |a: &[f32], b: &[f32]| {
        let want: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        common::rel(b, &want)
    };
    for (mode, split) in [
        (ScanMode::Sequential, 2),
        (ScanMode::Sequential, 4),
        (ScanMode::Auto, 2),
    ] {
        (ss.tiling.mode, ss.tiling.seq_split) = (mode, split);
        let v = s.check(ss.tiling).unwrap();
        assert!(v.seq);
        let (y2, _, g2, _) = gpu_run(&ss, &s, &x, &g);
        let ry = r(&y1, &y2);
        let t = &v.tiling;
        println!(
            "{mode:?}: sequential ({} lanes a channel, sub-chunks of {}) vs chunked at {s:?}: \
             y rel {ry:.2e}",
            t.seq_split, t.seq_sub
        );
        assert!(ry <= 1e-5);
        for (k, v) in &g1 {
            let rg = r(v, &g2[k]);
            println!("  grad.{k} rel {rg:.2e}");
            assert!(rg <= 1e-4, "grad.{k} rel {rg:e}");
        }
    }
}

#[test]
fn random_complex_cases_against_sequential_f64() {
    let Some(ss) = device() else { return };
    let base = ScanSpec {
        complex: true,
        ..ScanSpec::mamba(2, 300, 64, 8)
    };
    let mut seed = 100;
    for rule in [Rule::Mamba, Rule::Zoh, Rule::Bilinear, Rule::Dirac] {
        for variant in 0..2 {
            let mut s = base;
            s.rule = rule;
            if variant == 1 {
                s.has_delta_a = true;
                s.has_z = false;
                s.groups = 4;
                s.channels = 96;
                s.state = 5;
                s.len = 1000;
                s.softplus = false;
                s.has_delta_bias = false;
            }
            check_random(&ss, s, seed);
            seed += 1;
        }
    }
    let mut s = base;
    s.batch = 1;
    s.len = 4097;
    s.channels = 32;
    check_random(&ss, s, seed);
}

#[test]
fn random_rglru_and_s7_against_sequential_f64() {
    let Some(ss) = device() else { return };
    // an odd length: the last chunk's padded steps must leave the last state alone (S7's
    // Ā(Δ = 0) is −1)
    let base = ScanSpec {
        batch: 2,
        len: 499,
        channels: 48,
        state: 2,
        groups: 1,
        rule: Rule::Rglru,
        bc_fixed: true,
        has_delta_a: false,
        has_delta_bias: false,
        softplus: false,
        has_d: false,
        has_z: false,
        complex: false,
    };
    let mut seed = 200;
    for rule in [Rule::Rglru, Rule::S7] {
        for variant in 0..2 {
            let mut s = base;
            s.rule = rule;
            if variant == 1 {
                // time-varying B/C, every optional input (rglru: softplus keeps Δ > 0, so that
                // Ā < 1 and sqrt(1 − Ā²) is real)
                s.bc_fixed = false;
                s.softplus = rule == Rule::Rglru;
                s.state = if rule == Rule::S7 { 1 } else { 4 };
                s.has_d = true;
                s.has_z = true;
                s.has_delta_bias = true;
                s.len = 2000;
            }
            check_random(&ss, s, seed);
            seed += 1;
        }
    }
}

/// lrnnx's `rglru_scan_ref` golden cases (spec §4.6) through the selective scan with the rglru
/// rule and `B = C = 1`: `out` at 1e-5, `grad.{u, delta, A}` at 1e-4.
#[test]
fn golden_rglru_cases() {
    let Some(ss) = device() else { return };
    let dir = std::env::var("LRNNX_GOLDEN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/lrnnx-golden").to_string()
    });
    let mut checked = 0;
    for name in ["op_rglru_scan_dstate1", "op_rglru_scan_dstate2"] {
        let gd = load(&std::path::Path::new(&dir).join(format!("{name}.safetensors")));
        let get = |k: &str| gd.t[k].clone();
        let (ush, u) = get("input.u");
        let (bsz, d, l) = (ush[0], ush[1], ush[2]);
        let (ash, a) = get("input.A");
        let n = ash[1];
        let x = Host {
            u: to_bld(&u, bsz, d, l),
            delta: to_bld(&get("input.delta").1, bsz, d, l),
            delta_a: None,
            a,
            b: vec![1.0; d * n],
            c: vec![1.0; d * n],
            d: None,
            z: None,
            delta_bias: None,
        };
        let spec = ScanSpec {
            batch: bsz,
            len: l,
            channels: d,
            state: n,
            groups: 1,
            rule: Rule::Rglru,
            bc_fixed: true,
            has_delta_a: false,
            has_delta_bias: false,
            softplus: false,
            has_d: false,
            has_z: false,
            complex: false,
        };
        let g = to_bld(&get("input.g").1, bsz, d, l);
        let (y, _, grads, _) = gpu_run(&ss, &spec, &x, &g);
        let ry = rel(&to_bdl(&y, bsz, d, l), &gd.t["output.out"].1);
        println!("{name}: out rel {ry:.2e}");
        assert!(ry <= 1e-5, "{name}: out rel {ry:e}");
        for k in ["u", "delta", "A"] {
            let got = match k {
                "A" => grads[k].clone(),
                _ => to_bdl(&grads[k], bsz, d, l),
            };
            let r = rel(&got, &gd.t[&format!("grad.{k}")].1);
            println!("{name}: grad.{k} rel {r:.2e}");
            assert!(r <= 1e-4, "{name}: grad.{k} rel {r:e}");
        }
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn backward_is_bitwise_deterministic() {
    let Some(ss) = device() else { return };
    // 16 × 1024 channels: Auto takes the sequential kernels (sub-chunks of 8)
    let s = ScanSpec::mamba(16, 1024, 1024, 16);
    let mut rng = Rng(99);
    let x = random_host(&s, &mut rng);
    let g: Vec<f64> = (0..s.batch * s.len * s.channels)
        .map(|_| rng.normal())
        .collect();
    let mut ss = ss;
    for (mode, split) in [
        (ScanMode::Chunked, 2),
        (ScanMode::Sequential, 2),
        (ScanMode::Sequential, 4),
        (ScanMode::Auto, 2),
    ] {
        ss.tiling.mode = mode;
        ss.tiling.seq_split = split;
        assert_eq!(s.check(ss.tiling).unwrap().seq, mode != ScanMode::Chunked);
        let (_, _, g1, _) = gpu_run(&ss, &s, &x, &g);
        let (_, _, g2, _) = gpu_run(&ss, &s, &x, &g);
        for (k, v) in &g1 {
            let w = &g2[k];
            assert!(
                v.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{mode:?} (split {split}): grad.{k} differs between two runs"
            );
        }
        println!(
            "{mode:?} (split {split}): two backward runs bitwise identical ({} gradients)",
            g1.len()
        );
    }
}

/// The time step's softplus and its derivative alone. At L = 1 the state starts at zero, so with
/// u = B = C = 1 and N = 2, y = 2·softplus(raw) and ∂L/∂raw = 2·σ(raw) for ∂L/∂y = 1 (A drops
/// out, and the doublings are exact in f32). Both kernels (the chunked kernels' per-item Δ and
/// the sequential mode's staged tile) against f64 over a sweep of raw in [−85, 40] (softplus
/// stays a normal f32) and chosen points: each value within 6e-7 relative (5 to 10 ulp; the
/// kernels' softplus and σ emulated in f32 are within 3.0 and 4.8 ulp), and past the cut (20) y
/// exactly 2·raw and the derivative exactly 2.
#[test]
fn softplus_time_step_against_f64() {
    let Some(mut ss) = device() else { return };
    let e = 4096;
    let mut s = ScanSpec::mamba(1, 1, e, 2);
    s.has_d = false;
    s.has_z = false;
    s.has_delta_bias = false;
    s.softplus = true;
    let picks = [
        -20.0, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 0.5, -0.69, 1.0, -2.0, 2.0, 19.99, 20.0, 20.01, 25.0,
        40.0,
    ];
    let sweep = e - picks.len();
    let raw: Vec<f64> = (0..sweep)
        .map(|i| -85.0 + 125.0 * i as f64 / (sweep - 1) as f64)
        .chain(picks)
        .map(|r| r as f32 as f64) // the f32 the kernels see
        .collect();
    let x = Host {
        u: vec![1.0; e],
        delta: raw.clone(),
        delta_a: None,
        a: vec![-1.0; e * 2],
        b: vec![1.0; 2],
        c: vec![1.0; 2],
        d: None,
        z: None,
        delta_bias: None,
    };
    let g = vec![1.0; e];
    for mode in [ScanMode::Chunked, ScanMode::Sequential] {
        ss.tiling.mode = mode;
        assert_eq!(
            s.check(ss.tiling).unwrap().seq,
            mode == ScanMode::Sequential
        );
        let (y, _, gr, _) = gpu_run(&ss, &s, &x, &g);
        let dd = &gr["delta"];
        let (mut worst_y, mut worst_g) = (0f64, 0f64);
        for (i, &r) in raw.iter().enumerate() {
            let (got_y, got_g) = (y[i] as f64 / 2.0, dd[i] as f64 / 2.0);
            if r > 20.0 {
                assert_eq!((got_y, got_g), (r, 1.0), "{mode:?}: raw {r} past the cut");
                continue;
            }
            let sp = r.exp().ln_1p();
            let sg = 1.0 / (1.0 + (-r).exp());
            let (ey, eg) = ((got_y - sp).abs() / sp, (got_g - sg).abs() / sg);
            assert!(
                ey <= 6e-7 && eg <= 6e-7,
                "{mode:?}: raw {r}: softplus {got_y} (f64 {sp}), σ {got_g} (f64 {sg})"
            );
            worst_y = worst_y.max(ey);
            worst_g = worst_g.max(eg);
        }
        println!(
            "{mode:?}: softplus worst {worst_y:.2e}, σ worst {worst_g:.2e} relative over {e} values"
        );
    }
}

#[test]
fn shape_errors_are_reported() {
    let Some(ss) = device() else { return };
    let s = ScanSpec {
        batch: 1,
        len: 10,
        channels: 4,
        state: 2,
        groups: 1,
        rule: Rule::Mamba,
        bc_fixed: false,
        has_delta_a: false,
        has_delta_bias: false,
        softplus: false,
        has_d: false,
        has_z: false,
        complex: false,
    };
    let st = ss.stream();
    let t = |n: usize| st.alloc_zeros::<f32>(n).unwrap();
    let (u, dl, a, b, c) = (t(40), t(39), t(8), t(20), t(20));
    let inp = Inputs {
        u: &u,
        delta: &dl,
        delta_a: None,
        a: &a,
        b: &b,
        c: &c,
        d: None,
        z: None,
        delta_bias: None,
    };
    let e = ss.forward(&s, &inp).err().expect("shape error");
    assert!(e.0.contains("`delta`"), "{e}");
}

// ---------------------------------------------------------------- S7 (spec §4.5)

/// Host tensors of one S7 problem (f64, time-major layout of `lrnnx_kernels::s7`).
#[derive(Clone)]
struct S7Host {
    u: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    bias: Option<Vec<f64>>,
}

fn s7_field<'a>(x: &'a mut S7Host, k: &str) -> &'a mut Vec<f64> {
    match k {
        "u" => &mut x.u,
        "A" => &mut x.a,
        "B" => &mut x.b,
        "C" => &mut x.c,
        _ => x.bias.as_mut().unwrap(),
    }
}

/// Sequential S7 reference (f64) written from spec §4.5.
/// The S7 scan in f64, one step at a time: `y` `(batch, L, H)` and the last state `(batch, N)`.
fn s7_reference(sp: &S7Spec, x: &S7Host) -> (Vec<f64>, Vec<f64>) {
    let (bs, l, hh, n) = (sp.batch, sp.len, sp.heads, sp.state);
    let mut y = vec![0.0; bs * l * hh];
    let mut last = vec![0.0; bs * n];
    for bi in 0..bs {
        let mut st = vec![0.0f64; n];
        for t in 0..l {
            let r = bi * l + t;
            for k in 0..n {
                let mut bu = x.bias.as_ref().map_or(0.0, |v| v[r * n + k]);
                for h in 0..hh {
                    bu += x.b[(r * n + k) * hh + h] * x.u[r * hh + h];
                }
                let at = x.a[r * n + k];
                st[k] = (1.0 - 1.0 / (at * at + 0.5)) * st[k] + bu;
            }
            for h in 0..hh {
                y[r * hh + h] = (0..n).map(|k| x.c[(r * hh + h) * n + k] * st[k]).sum();
            }
        }
        last[bi * n..(bi + 1) * n].copy_from_slice(&st);
    }
    (y, last)
}

/// `y`, the last state and the gradients of `Σ g·y`, from the GPU.
fn s7_gpu(
    s7: &S7Scan,
    sp: &S7Spec,
    x: &S7Host,
    g: &[f64],
) -> (Vec<f32>, Vec<f32>, HashMap<&'static str, Vec<f32>>) {
    let st = s7.scan.stream();
    let up = |v: &[f64]| st.clone_htod(&f32v(v)).unwrap();
    let (u, a, b, c) = (up(&x.u), up(&x.a), up(&x.b), up(&x.c));
    let bias = x.bias.as_deref().map(up);
    let inp = S7Inputs {
        u: &u,
        a: &a,
        b: &b,
        c: &c,
        bias: bias.as_ref(),
    };
    let f = s7.forward(sp, &inp).unwrap();
    let gr = s7.backward(sp, &inp, &f, &up(g)).unwrap();
    let down = |v: &cudarc::driver::CudaSlice<f32>| st.clone_dtoh(v).unwrap();
    let mut m = HashMap::new();
    m.insert("u", down(&gr.du));
    m.insert("A", down(&gr.da));
    m.insert("B", down(&gr.db));
    m.insert("C", down(&gr.dc));
    if let Some(v) = &gr.dbias {
        m.insert("bias", down(v));
    }
    (down(&f.y), down(&f.last_state), m)
}

/// lrnnx's `op_s7_scan_*` golden cases (out at 1e-5, gradients at 1e-4), then random cases
/// against the f64 loop with finite differences of every gradient.
#[test]
fn s7_golden_and_random() {
    if common::no_gpu() {
        return;
    }
    let s7 = S7Scan::new(0).expect("CUDA context");
    let dir = std::env::var("LRNNX_GOLDEN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/lrnnx-golden").to_string()
    });
    for name in ["op_s7_scan_bias", "op_s7_scan_nobias"] {
        let gd = load(&std::path::Path::new(&dir).join(format!("{name}.safetensors")));
        let (ush, u) = gd.t["input.u"].clone();
        let (bsz, hh, l) = (ush[0], ush[1], ush[2]);
        let n = gd.t["input.A"].0[1];
        // (b, X, L) -> (b, L, X) with X the product of the middle axes
        let tm = |k: &str, xdim: usize| gd.t.get(k).map(|v| to_bld(&v.1, bsz, xdim, l));
        let x = S7Host {
            u: to_bld(&u, bsz, hh, l),
            a: tm("input.A", n).unwrap(),
            b: tm("input.B", n * hh).unwrap(),
            c: tm("input.C", hh * n).unwrap(),
            bias: tm("input.bias", n),
        };
        let sp = S7Spec {
            batch: bsz,
            len: l,
            heads: hh,
            state: n,
            has_bias: x.bias.is_some(),
        };
        let g = tm("input.g", hh).unwrap();
        let (y, _, grads) = s7_gpu(&s7, &sp, &x, &g);
        let ry = rel(&to_bdl(&y, bsz, hh, l), &gd.t["output.out"].1);
        println!("{name}: out rel {ry:.2e}");
        assert!(ry <= 1e-5, "{name}: out rel {ry:e}");
        for (k, v) in &grads {
            let xdim = match *k {
                "u" => hh,
                "A" | "bias" => n,
                _ => n * hh,
            };
            let r = rel(&to_bdl(v, bsz, xdim, l), &gd.t[&format!("grad.{k}")].1);
            println!("{name}: grad.{k} rel {r:.2e}");
            assert!(r <= 1e-4, "{name}: grad.{k} rel {r:e}");
        }
    }
    // random cases
    let mut rng = Rng(300);
    // odd lengths pad the last chunk: the padded steps must leave the last state alone
    for (len, heads, state, has_bias) in [
        (200, 6, 4, true),
        (1500, 3, 5, false),
        (33, 2, 4, true),
        (77, 3, 3, false),
    ] {
        let sp = S7Spec {
            batch: 2,
            len,
            heads,
            state,
            has_bias,
        };
        let rows = sp.batch * len;
        let mut nv = |k: usize| (0..k).map(|_| rng.normal()).collect::<Vec<f64>>();
        let x = S7Host {
            u: nv(rows * heads),
            a: nv(rows * state),
            b: nv(rows * state * heads).iter().map(|v| 0.3 * v).collect(),
            c: nv(rows * heads * state),
            bias: has_bias.then(|| nv(rows * state)),
        };
        let g = nv(rows * heads);
        let (y, last, grads) = s7_gpu(&s7, &sp, &x, &g);
        let (want_y, want_last) = s7_reference(&sp, &x);
        let ry = rel(&y, &want_y);
        let rl = rel(&last, &want_last);
        println!("{sp:?}\n  forward rel {ry:.2e}, last state rel {rl:.2e}");
        assert!(ry <= 1e-5, "forward rel {ry:e}");
        assert!(rl <= 1e-5, "last state rel {rl:e}");
        let loss = |x: &S7Host| -> f64 {
            s7_reference(&sp, x)
                .0
                .iter()
                .zip(&g)
                .map(|(a, b)| a * b)
                .sum()
        };
        for (k, gv) in &grads {
            let v: Vec<f64> = (0..gv.len()).map(|_| rng.normal()).collect();
            let step = |h: &mut S7Host, t: f64| {
                for (p, vi) in s7_field(h, k).iter_mut().zip(&v) {
                    *p += t * vi;
                }
            };
            let (dot, fd, r) = common::directional(&x, gv, &v, step, loss);
            println!(
                "  grad.{k}: directional {dot:.6e} vs finite difference {fd:.6e}, rel {r:.2e}"
            );
            assert!(r <= 1e-4, "grad.{k} rel {r:e}");
        }
    }
}
