//! GPU correctness of the S5 simplified scan kernels (`lrnnx_kernels::simplified`; needs a CUDA
//! device, prints a skip reason and returns without one):
//! - the 4 `op_simplified_scan_*` lrnnx golden cases: `Bu = B·u` and `y = C·x` (and the
//!   gradients of the projections) on the host in f64 around the GPU scan; `out` at 1e-5 and
//!   every `grad.*` at 1e-4 of the reference's largest value;
//! - random cases (every rule, with and without `deltaA`, lengths up to 16384, several tilings)
//!   against a sequential f64 loop written here (states at 1e-5), with central finite
//!   differences of that loop along a random direction per input (gradients at 1e-4);
//! - two backward runs give bitwise identical gradients; bad shapes are errors.
//!
//! The timing at batch 8, L 4096, P 1024 against the sequential linear scan is the example
//! `simplified_bench`.
//!
//! Golden files: `$LRNNX_GOLDEN` or the repository's `tests/data/lrnnx-golden`.
#![cfg(feature = "cuda")]
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

mod common;
use common::{f32v, load, rel, to_bdl, to_bld, Rng, C64};

use cudarc::driver::CudaSlice;
use lrnnx_kernels::simplified::{
    SimplifiedInputs, SimplifiedScan, SimplifiedSpec, SimplifiedTiling, SIMPLIFIED_RULES,
};
use lrnnx_kernels::Rule;

/// Interleaved (re, im) floats -> complex.
fn cplx(v: &[f64]) -> Vec<C64> {
    v.chunks_exact(2).map(|c| C64(c[0], c[1])).collect()
}
fn flat(v: &[C64]) -> Vec<f64> {
    v.iter().flat_map(|c| [c.0, c.1]).collect()
}

/// One problem on the host, kernel layout: `bu` `(b, L, P)` complex, `delta`/`delta_a`
/// `(b, L, P)`, `a` `(P)` complex.
#[derive(Clone)]
struct Host {
    bu: Vec<C64>,
    delta: Vec<f64>,
    delta_a: Option<Vec<f64>>,
    a: Vec<C64>,
}

/// The spec §4.3 recurrence, one step at a time in f64: `x_t = Ā_t x_{t−1} + γ̄_t Bu_t`.
fn reference(s: &SimplifiedSpec, h: &Host) -> Vec<C64> {
    let (l, np) = (s.len, s.channels);
    let mut x = vec![C64::ZERO; h.bu.len()];
    for b in 0..s.batch {
        for p in 0..np {
            let a = h.a[p];
            let mut st = C64::ZERO;
            for t in 0..l {
                let i = (b * l + t) * np + p;
                let dl = h.delta[i];
                let da = h.delta_a.as_ref().map_or(dl, |v| v[i]);
                let (abar, gbar) = match s.rule {
                    Rule::Zoh => {
                        let e = a.scale(dl).exp();
                        let g = if a.0 == 0.0 && a.1 == 0.0 {
                            C64(dl, 0.0)
                        } else {
                            C64(e.0 - 1.0, e.1).div(a)
                        };
                        (a.scale(da).exp(), g)
                    }
                    Rule::Bilinear => {
                        let v = a.scale(0.5 * da);
                        let w = a.scale(0.5 * dl);
                        (
                            C64(1.0 + v.0, v.1).div(C64(1.0 - v.0, -v.1)),
                            C64(dl, 0.0).div(C64(1.0 - w.0, -w.1)),
                        )
                    }
                    Rule::Dirac => (a.scale(da).exp(), C64::ONE),
                    r => unreachable!("rule {r:?}"),
                };
                st = abar.mul(st).add(gbar.mul(h.bu[i]));
                x[i] = st;
            }
        }
    }
    x
}

/// Forward and backward on the GPU: the states `x` (interleaved) and the gradients by input
/// name (`Bu`, `A` interleaved).
fn gpu_run(
    ss: &SimplifiedScan,
    s: &SimplifiedSpec,
    h: &Host,
    dx: &[C64],
) -> (Vec<f64>, BTreeMap<&'static str, Vec<f64>>) {
    let st = ss.stream();
    let up = |v: &[f64]| st.clone_htod(&f32v(v)).unwrap();
    let down = |v: &CudaSlice<f32>| -> Vec<f64> {
        st.clone_dtoh(v)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let (bu, dl, a) = (up(&flat(&h.bu)), up(&h.delta), up(&flat(&h.a)));
    let da = h.delta_a.as_deref().map(up);
    let inp = SimplifiedInputs {
        bu: bu.as_view(),
        delta: dl.as_view(),
        delta_a: da.as_ref().map(|t| t.as_view()),
        a: a.as_view(),
    };
    let x = ss.forward(s, &inp).unwrap();
    let g = up(&flat(dx));
    let gr = ss.backward(s, &inp, &x.as_view(), &g.as_view()).unwrap();
    let mut m = BTreeMap::new();
    m.insert("Bu", down(&gr.dbu));
    m.insert("delta", down(&gr.ddelta));
    if let Some(v) = &gr.ddelta_a {
        m.insert("deltaA", down(v));
    }
    m.insert("A", down(&gr.da));
    (down(&x), m)
}

fn device() -> Option<SimplifiedScan> {
    if common::no_gpu() {
        return None;
    }
    Some(SimplifiedScan::new(0).expect("CUDA context"))
}

// ---------------------------------------------------------------- golden cases

#[test]
fn golden_simplified_scan_cases() {
    let Some(ss) = device() else { return };
    let dir = std::env::var("LRNNX_GOLDEN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/lrnnx-golden").to_string()
    });
    let (mut worst_out, mut worst_grad) = (0.0f64, 0.0f64);
    for case in ["zoh", "bilinear", "dirac", "zoh_deltaA"] {
        let path =
            std::path::Path::new(&dir).join(format!("op_simplified_scan_{case}.safetensors"));
        let gc = load(&path);
        let get = |k: &str| -> &(Vec<usize>, Vec<f64>) {
            gc.t.get(k).unwrap_or_else(|| panic!("{case}: {k} missing"))
        };
        let rule = Rule::from_name(gc.cfg["op_args"]["discretization"].as_str().unwrap()).unwrap();
        let (ushape, u) = get("input.u");
        let (bs, nh, l) = (ushape[0], ushape[1], ushape[2]);
        let a = cplx(&get("input.A").1);
        let np = a.len();
        let bm = cplx(&get("input.B").1); // (P, H)
        let cm = cplx(&get("input.C").1); // (H, P)
        let u = cplx(u); // (b, H, L)
        let has_da = gc.t.contains_key("input.deltaA");
        let s = SimplifiedSpec {
            batch: bs,
            len: l,
            channels: np,
            rule,
            has_delta_a: has_da,
        };
        // Bu[b, t, p] = Σ_h B[p, h]·u[b, h, t]
        let mut bu = vec![C64::ZERO; bs * l * np];
        for b in 0..bs {
            for t in 0..l {
                for p in 0..np {
                    let mut acc = C64::ZERO;
                    for hh in 0..nh {
                        acc = acc.add(bm[p * nh + hh].mul(u[(b * nh + hh) * l + t]));
                    }
                    bu[(b * l + t) * np + p] = acc;
                }
            }
        }
        let host = Host {
            bu,
            delta: to_bld(&get("input.delta").1, bs, np, l),
            delta_a: has_da.then(|| to_bld(&get("input.deltaA").1, bs, np, l)),
            a,
        };
        let g = cplx(&get("input.g").1); // (b, H, L)
                                         // dx[b, t, p] = Σ_h conj(C[h, p])·g[b, h, t]
        let mut dx = vec![C64::ZERO; bs * l * np];
        for b in 0..bs {
            for t in 0..l {
                for p in 0..np {
                    let mut acc = C64::ZERO;
                    for hh in 0..nh {
                        acc = acc.add(cm[hh * np + p].conj().mul(g[(b * nh + hh) * l + t]));
                    }
                    dx[(b * l + t) * np + p] = acc;
                }
            }
        }
        let (xf, grads) = gpu_run(&ss, &s, &host, &dx);
        let x = cplx(&xf);
        // y[b, h, t] = Σ_p C[h, p]·x[b, t, p]; last_state = x[b, L − 1]
        let mut y = vec![C64::ZERO; bs * nh * l];
        for b in 0..bs {
            for hh in 0..nh {
                for t in 0..l {
                    let mut acc = C64::ZERO;
                    for p in 0..np {
                        acc = acc.add(cm[hh * np + p].mul(x[(b * l + t) * np + p]));
                    }
                    y[(b * nh + hh) * l + t] = acc;
                }
            }
        }
        let last: Vec<C64> = (0..bs * np)
            .map(|i| x[((i / np) * l + l - 1) * np + i % np])
            .collect();
        let ro = rel(&flat(&y), &get("output.out").1);
        let rl = rel(&flat(&last), &get("output.last_state").1);
        println!("op_simplified_scan_{case}: out rel {ro:.2e}, last_state rel {rl:.2e}");
        assert!(
            ro <= 1e-5 && rl <= 1e-5,
            "{case}: out {ro:e} last_state {rl:e}"
        );
        worst_out = worst_out.max(ro).max(rl);
        // gradients of the projections from dBu and x
        let dbu = cplx(&grads["Bu"]);
        let mut gu = vec![C64::ZERO; bs * nh * l];
        let mut gb = vec![C64::ZERO; np * nh];
        let mut gcm = vec![C64::ZERO; nh * np];
        for b in 0..bs {
            for t in 0..l {
                for hh in 0..nh {
                    let iu = (b * nh + hh) * l + t;
                    for p in 0..np {
                        let ix = (b * l + t) * np + p;
                        gu[iu] = gu[iu].add(bm[p * nh + hh].conj().mul(dbu[ix]));
                        gb[p * nh + hh] = gb[p * nh + hh].add(dbu[ix].mul(u[iu].conj()));
                        gcm[hh * np + p] = gcm[hh * np + p].add(g[iu].mul(x[ix].conj()));
                    }
                }
            }
        }
        let mut got: Vec<(&str, Vec<f64>)> = vec![
            ("grad.u", flat(&gu)),
            ("grad.B", flat(&gb)),
            ("grad.C", flat(&gcm)),
            ("grad.A", grads["A"].clone()),
            ("grad.delta", to_bdl(&grads["delta"], bs, np, l)),
        ];
        if has_da {
            got.push(("grad.deltaA", to_bdl(&grads["deltaA"], bs, np, l)));
        }
        let want_keys = gc.t.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(want_keys, got.len(), "{case}: gradient keys");
        for (k, v) in got {
            let r = rel(&v, &get(k).1);
            println!("  {k}: rel {r:.2e}");
            assert!(r <= 1e-4, "{case}: {k} rel {r:e}");
            worst_grad = worst_grad.max(r);
        }
    }
    println!("golden simplified scan: worst out {worst_out:.2e}, worst gradient {worst_grad:.2e}");
}

// ---------------------------------------------------------------- random cases

fn random_host(s: &SimplifiedSpec, rng: &mut Rng) -> Host {
    let n = s.batch * s.len * s.channels;
    let mut a: Vec<C64> = (0..s.channels)
        .map(|_| C64(-0.05 - 2.95 * rng.next(), 20.0 * rng.next() - 10.0))
        .collect();
    // a channel with a small A (the series branch of zoh's ∂γ̄/∂A) and a real one
    a[0] = C64(-0.02, 0.03);
    if s.channels > 1 {
        a[1].1 = 0.0;
    }
    Host {
        bu: (0..n).map(|_| C64(rng.normal(), rng.normal())).collect(),
        delta: rng.vec(n, 0.001, 0.1),
        delta_a: s.has_delta_a.then(|| rng.vec(n, 0.001, 0.5)),
        a,
    }
}

fn parts(v: &mut [C64]) -> Vec<&mut f64> {
    v.iter_mut().flat_map(|z| [&mut z.0, &mut z.1]).collect()
}

fn field<'a>(h: &'a mut Host, k: &str) -> Vec<&'a mut f64> {
    match k {
        "Bu" => parts(&mut h.bu),
        "A" => parts(&mut h.a),
        "delta" => h.delta.iter_mut().collect(),
        _ => h.delta_a.as_mut().unwrap().iter_mut().collect(),
    }
}

/// Forward against the f64 loop, every gradient against central finite differences of it;
/// returns (forward rel, worst gradient rel).
fn check_random(ss: &SimplifiedScan, s: SimplifiedSpec, seed: u64) -> (f64, f64) {
    let mut rng = Rng(seed);
    let h = random_host(&s, &mut rng);
    let n = s.batch * s.len * s.channels;
    let gx: Vec<C64> = (0..n).map(|_| C64(rng.normal(), rng.normal())).collect();
    let (x, grads) = gpu_run(ss, &s, &h, &gx);
    let want = flat(&reference(&s, &h));
    let rx = rel(&x, &want);
    assert!(rx <= 1e-5, "{s:?}: forward rel {rx:e}");
    // L = Σ Re(conj(gx)·x)
    let loss = |h: &Host| -> f64 {
        reference(&s, h)
            .iter()
            .zip(&gx)
            .map(|(x, g)| x.0 * g.0 + x.1 * g.1)
            .sum()
    };
    let mut worst = 0.0f64;
    let mut line = String::new();
    for (k, gv) in &grads {
        let base: Vec<f64> = field(&mut h.clone(), k).iter().map(|v| **v).collect();
        let mut v: Vec<f64> = (0..gv.len()).map(|_| rng.normal()).collect();
        if *k == "delta" || *k == "deltaA" {
            // keep the time steps positive under the perturbation
            for (vi, xi) in v.iter_mut().zip(&base) {
                *vi *= xi.abs();
            }
        }
        let step = |x: &mut Host, t: f64| {
            for (p, vi) in field(x, k).into_iter().zip(&v) {
                *p += t * vi;
            }
        };
        let (dot, fd, r) = common::directional(&h, gv, &v, step, loss);
        line += &format!(" {k} {r:.1e}");
        assert!(
            r <= 1e-4,
            "{s:?}: grad.{k} {dot:e} vs finite difference {fd:e}, rel {r:e}"
        );
        worst = worst.max(r);
    }
    println!(
        "{:?} deltaA={} b{} L{} P{}: x rel {rx:.2e}; finite differences:{line}",
        s.rule, s.has_delta_a, s.batch, s.len, s.channels
    );
    (rx, worst)
}

#[test]
fn random_cases_against_sequential_f64() {
    let Some(mut ss) = device() else { return };
    let (mut wf, mut wg, mut n) = (0.0f64, 0.0f64, 0);
    let shapes = [(2, 300, 40), (1, 16384, 33), (3, 1000, 70), (1, 7, 5)];
    let t = |warps, items, prefetch, bwd_warps, bwd_items, bwd_prefetch| {
        Some(SimplifiedTiling {
            warps,
            items,
            prefetch,
            bwd_warps,
            bwd_items,
            bwd_prefetch,
        })
    };
    let tilings = [
        None,
        t(3, 5, true, 5, 3, false),
        t(16, 16, false, 32, 8, true),
    ];
    let mut seed = 1;
    for rule in SIMPLIFIED_RULES {
        for has_delta_a in [false, true] {
            for (i, &(batch, len, channels)) in shapes.iter().enumerate() {
                ss.tiling = tilings[(i + seed as usize) % tilings.len()];
                let s = SimplifiedSpec {
                    batch,
                    len,
                    channels,
                    rule,
                    has_delta_a,
                };
                let (f, g) = check_random(&ss, s, seed);
                wf = wf.max(f);
                wg = wg.max(g);
                n += 1;
                seed += 1;
            }
        }
    }
    println!(
        "{n} random simplified scans: worst forward rel {wf:.2e}, worst finite-difference rel {wg:.2e}"
    );
}

#[test]
fn backward_is_bitwise_deterministic() {
    let Some(ss) = device() else { return };
    let s = SimplifiedSpec {
        batch: 4,
        len: 3000,
        channels: 256,
        rule: Rule::Zoh,
        has_delta_a: true,
    };
    let mut rng = Rng(77);
    let h = random_host(&s, &mut rng);
    let gx: Vec<C64> = (0..s.real_len())
        .map(|_| C64(rng.normal(), rng.normal()))
        .collect();
    let (_, g1) = gpu_run(&ss, &s, &h, &gx);
    let (_, g2) = gpu_run(&ss, &s, &h, &gx);
    for (k, v) in &g1 {
        assert!(
            v.iter()
                .zip(&g2[k])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "grad.{k} differs between two runs"
        );
    }
    println!(
        "two simplified backward runs: bitwise identical ({} gradients)",
        g1.len()
    );
}

#[test]
fn shape_errors_are_reported() {
    let Some(ss) = device() else { return };
    let s = SimplifiedSpec {
        batch: 2,
        len: 10,
        channels: 3,
        rule: Rule::Bilinear,
        has_delta_a: false,
    };
    let st = ss.stream();
    let z = |n: usize| st.alloc_zeros::<f32>(n).unwrap();
    let (bu, dl, a, dta) = (
        z(s.complex_len() + 2),
        z(s.real_len()),
        z(s.a_len()),
        z(s.real_len()),
    );
    let mk = |bu, delta_a| SimplifiedInputs {
        bu,
        delta: dl.as_view(),
        delta_a,
        a: a.as_view(),
    };
    let msg = |r: Result<CudaSlice<f32>, lrnnx_kernels::ScanError>| r.err().unwrap().to_string();
    let e = msg(ss.forward(&s, &mk(bu.as_view(), None)));
    assert!(e.contains("`Bu`"), "{e}");
    let e = msg(ss.forward(&s, &mk(bu.slice(1..s.complex_len() + 1), None)));
    assert!(e.contains("even float offset"), "{e}");
    let e = msg(ss.forward(&s, &mk(bu.slice(0..s.complex_len()), Some(dta.as_view()))));
    assert!(e.contains("deltaA"), "{e}");
    let s2 = SimplifiedSpec {
        has_delta_a: true,
        ..s
    };
    let e = msg(ss.forward(&s2, &mk(bu.slice(0..s.complex_len()), None)));
    assert!(e.contains("missing"), "{e}");
    let x = ss
        .forward(&s, &mk(bu.slice(0..s.complex_len()), None))
        .unwrap();
    let e = ss
        .backward(
            &s,
            &mk(bu.slice(0..s.complex_len()), None),
            &x.as_view(),
            &dl.as_view(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`dx`"), "{e}");
    println!("simplified scan shape errors: {e}");
}
