//! One `step` of each core layer at batch 1 on one thread, against a baseline measured in the
//! same process: a direct port of lrnnx's step (row-major complex matrices, `Complex32`
//! arithmetic, no layout work), which is what the core's split, transposed layout is for.
//!
//! ```text
//! cargo bench --bench step
//! ```
//!
//! After criterion's own report, prints one line per layer:
//! `step <layer> core=<ns> baseline=<ns> speedup=<x> vs_lrnnx=<x>` where `vs_lrnnx` divides the
//! Python lrnnx step time quoted in the issue for this machine kind (not measured here: lrnnx
//! cannot run without its CUDA extensions) by the core's time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::Criterion;
use lrnnx::import::build_core;
use lrnnx::safetensors_io::{Tensor, TensorFile};
use num_complex::Complex32;
use serde_json::json;

/// Deterministic uniform numbers for weights and inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: (0..n).map(|_| lo + (hi - lo) * self.next()).collect(),
        }
    }
}

struct Bench {
    name: &'static str,
    class: &'static str,
    kwargs: serde_json::Value,
    params: TensorFile,
    /// lrnnx's Python step time quoted in the issues (µs), where one is given.
    lrnnx_us: Option<f64>,
    /// A direct port of lrnnx's step, owning its state: `(x, dt, y)`.
    baseline: Option<Baseline>,
    /// Also benchmark the event step (time step 0.7) of an event layer.
    event: bool,
}

type Baseline = Box<dyn FnMut(&[f32], f32, &mut [f32])>;

fn file(entries: Vec<(&str, Tensor)>) -> TensorFile {
    TensorFile {
        tensors: entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
        metadata: BTreeMap::new(),
    }
}

/// Direct port of a complex diagonal MIMO step: `h ← λ⊙h + B x; y = Re(C h) + skip(x)`,
/// with `B` (N×H) and `C` (H×N) complex, row-major.
fn diag_baseline(
    lambda: Vec<Complex32>,
    b: Vec<Complex32>,
    c: Vec<Complex32>,
    d: Vec<f32>,
    d_is_matrix: bool,
) -> Baseline {
    let mut h = vec![Complex32::new(0.0, 0.0); lambda.len()];
    Box::new(move |x, _dt, y| {
        let (n, hh) = (lambda.len(), x.len());
        for s in 0..n {
            let mut acc = Complex32::new(0.0, 0.0);
            for i in 0..hh {
                acc += b[s * hh + i] * x[i];
            }
            h[s] = lambda[s] * h[s] + acc;
        }
        for o in 0..hh {
            let mut acc = 0.0f32;
            for s in 0..n {
                acc += (c[o * n + s] * h[s]).re;
            }
            if d_is_matrix {
                for i in 0..hh {
                    acc += x[i] * d[i * hh + o];
                }
            } else {
                acc += d[o] * x[o];
            }
            y[o] = acc;
        }
    })
}

fn benches() -> Vec<Bench> {
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let (h, n) = (64usize, 64usize);
    let mut out = Vec::new();

    // S5 (LTI), zoh.
    let a = rng.tensor(&[n, 2], -1.0, 1.0);
    let b = rng.tensor(&[n, h], -0.1, 0.1);
    let log_dt = rng.tensor(&[n], -6.9, -2.3);
    let c = rng.tensor(&[h, n, 2], -0.2, 0.2);
    let d = rng.tensor(&[h, h], -0.1, 0.1);
    let lam: Vec<Complex32> = (0..n)
        .map(|s| {
            let ac = Complex32::new(-(1.0 + a.data[2 * s].exp()).ln(), a.data[2 * s + 1]);
            (ac * log_dt.data[s].exp()).exp()
        })
        .collect();
    let gam: Vec<Complex32> = (0..n)
        .map(|s| {
            let ac = Complex32::new(-(1.0 + a.data[2 * s].exp()).ln(), a.data[2 * s + 1]);
            (lam[s] - 1.0) / ac
        })
        .collect();
    let bb = (0..n * h).map(|k| gam[k / h] * b.data[k]).collect();
    let cc = (0..h * n)
        .map(|k| Complex32::new(c.data[2 * k], c.data[2 * k + 1]))
        .collect();
    let base = diag_baseline(lam, bb, cc, d.data.clone(), true);
    out.push(Bench {
        name: "s5_lti_zoh H=64 P=64",
        class: "lrnnx.models.lti.s5.S5",
        kwargs: json!({"d_model": h, "d_state": n, "discretization": "zoh"}),
        params: file(vec![
            ("A", a),
            ("B", b),
            ("log_dt", log_dt),
            ("C", c),
            ("D", d),
        ]),
        lrnnx_us: Some(60.0),
        baseline: Some(base),
        event: false,
    });

    // LRU.
    let nu_log = rng.tensor(&[n], -4.5, -0.4);
    let theta_log = rng.tensor(&[n], -3.0, 1.8);
    let gamma_log = rng.tensor(&[n], -2.0, 0.0);
    let b_re = rng.tensor(&[n, h], -0.1, 0.1);
    let b_im = rng.tensor(&[n, h], -0.1, 0.1);
    let c_re = rng.tensor(&[h, n], -0.1, 0.1);
    let c_im = rng.tensor(&[h, n], -0.1, 0.1);
    let dd = rng.tensor(&[h], -1.0, 1.0);
    let lam = (0..n)
        .map(|s| Complex32::new(-nu_log.data[s].exp(), theta_log.data[s].exp()).exp())
        .collect();
    let bb = (0..n * h)
        .map(|k| Complex32::new(b_re.data[k], b_im.data[k]) * gamma_log.data[k / h].exp())
        .collect();
    let cc = (0..h * n)
        .map(|k| Complex32::new(c_re.data[k], c_im.data[k]))
        .collect();
    let base = diag_baseline(lam, bb, cc, dd.data.clone(), false);
    out.push(Bench {
        name: "lru H=64 N=64",
        class: "lrnnx.models.lti.lru.LRU",
        kwargs: json!({"d_model": h, "d_state": n}),
        params: file(vec![
            ("nu_log", nu_log),
            ("theta_log", theta_log),
            ("gamma_log", gamma_log),
            ("B_re", b_re),
            ("B_im", b_im),
            ("C_re", c_re),
            ("C_im", c_im),
            ("D", dd),
        ]),
        lrnnx_us: Some(47.0),
        baseline: Some(base),
        event: false,
    });

    // S4D, zoh (d_state 64 = 32 conjugate pairs per channel), with lrnnx's block tail.
    let n2 = n / 2;
    out.push(Bench {
        name: "s4d_zoh H=64 N=64",
        class: "lrnnx.models.lti.s4d.S4D",
        kwargs: json!({"d_model": h, "d_state": n, "disc": "zoh", "transposed": false}),
        params: file(vec![
            ("inv_dt", rng.tensor(&[h, 1], -6.9, -2.3)),
            ("A_real", rng.tensor(&[h, n2], -1.0, 0.0)),
            ("A_imag", rng.tensor(&[h, n2], 0.0, 30.0)),
            ("B", rng.tensor(&[1, h, n2, 2], -1.0, 1.0)),
            ("C", rng.tensor(&[1, h, n2, 2], -1.0, 1.0)),
            ("D", rng.tensor(&[1, h], -1.0, 1.0)),
            ("output_linear.0.weight", rng.tensor(&[h, h], -0.1, 0.1)),
            ("output_linear.0.bias", rng.tensor(&[h], -0.1, 0.1)),
        ]),
        lrnnx_us: None,
        baseline: None,
        event: false,
    });

    // S5 time-varying (Event-SSM capable), zoh, H=64, P=64.
    let a = {
        let mut t = rng.tensor(&[n, 2], -1.0, 1.0);
        for s in 0..n {
            t.data[2 * s] = -0.5;
        }
        t
    };
    let b = rng.tensor(&[n, h, 2], -0.1, 0.1);
    let c = rng.tensor(&[h, n, 2], -0.1, 0.1);
    let d = rng.tensor(&[h], -0.1, 0.1);
    let log_dt = rng.tensor(&[n], -6.9, -2.3);
    let lam: Vec<Complex32> = (0..n)
        .map(|s| Complex32::new(a.data[2 * s], a.data[2 * s + 1]))
        .collect();
    let dt: Vec<f32> = log_dt.data.iter().map(|v| v.exp()).collect();
    let bt: Vec<Complex32> = (0..n * h)
        .map(|k| Complex32::new(b.data[2 * k], b.data[2 * k + 1]))
        .collect();
    let ct: Vec<Complex32> = (0..h * n)
        .map(|k| Complex32::new(c.data[2 * k], c.data[2 * k + 1]))
        .collect();
    let base = {
        let (lam, dt, bt, ct, dd) = (
            lam.clone(),
            dt.clone(),
            bt.clone(),
            ct.clone(),
            d.data.clone(),
        );
        let mut st = vec![Complex32::new(0.0, 0.0); n];
        Box::new(move |x: &[f32], tau: f32, y: &mut [f32]| {
            // Event-SSM step as lrnnx writes it: Ā = exp(τΔΛ), γ̄ = (exp(ΔΛ) − 1)/Λ.
            for s in 0..n {
                let abar = (lam[s] * (dt[s] * tau)).exp();
                let gamma = ((lam[s] * dt[s]).exp() - 1.0) / lam[s];
                let mut bu = Complex32::new(0.0, 0.0);
                for i in 0..h {
                    bu += bt[s * h + i] * x[i];
                }
                st[s] = abar * st[s] + gamma * bu;
            }
            for o in 0..h {
                let mut acc = dd[o] * x[o];
                for s in 0..n {
                    acc += (ct[o * n + s] * st[s]).re;
                }
                y[o] = acc;
            }
        }) as Baseline
    };
    out.push(Bench {
        name: "s5_ltv_zoh H=64 P=64",
        class: "lrnnx.models.ltv.s5.S5",
        kwargs: json!({"d_model": h, "d_state": n, "discretization": "zoh"}),
        params: file(vec![
            ("A", a),
            ("B", b),
            ("C", c),
            ("D", d),
            ("log_dt", log_dt),
        ]),
        lrnnx_us: None,
        baseline: Some(base),
        event: true,
    });

    // Mamba: d_model 64, d_state 16, expand 2, d_conv 4 (dt_rank 4).
    let (dm, ns, di, k, r) = (64usize, 16usize, 128usize, 4usize, 4usize);
    let in_w = rng.tensor(&[2 * di, dm], -0.125, 0.125);
    let conv_w = rng.tensor(&[di, 1, k], -0.5, 0.5);
    let conv_b = rng.tensor(&[di], -0.5, 0.5);
    let xp_w = rng.tensor(&[r + 2 * ns, di], -0.09, 0.09);
    let dt_w = rng.tensor(&[di, r], -0.5, 0.5);
    let dt_b = rng.tensor(&[di], -6.0, -2.5);
    let dta_w = rng.tensor(&[di, r], -0.5, 0.5);
    let dta_b = rng.tensor(&[di], -0.5, 0.5);
    let a_log = {
        let mut t = rng.tensor(&[di, ns], 0.0, 0.0);
        for (i, v) in t.data.iter_mut().enumerate() {
            *v = ((i % ns) as f32 + 1.0).ln();
        }
        t
    };
    let dd = rng.tensor(&[di], 0.9, 1.1);
    let out_w = rng.tensor(&[dm, di], -0.09, 0.09);
    let base = {
        let (in_w, conv_w, conv_b, xp_w, dt_w, dt_b, dta_b, a_log, dd, out_w) = (
            in_w.data.clone(),
            conv_w.data.clone(),
            conv_b.data.clone(),
            xp_w.data.clone(),
            dt_w.data.clone(),
            dt_b.data.clone(),
            dta_b.data.clone(),
            a_log.data.clone(),
            dd.data.clone(),
            out_w.data.clone(),
        );
        let mut conv = vec![0.0f32; di * k];
        let mut hs = vec![0.0f32; di * ns];
        let silu = |v: f32| v / (1.0 + (-v).exp());
        let softplus = |v: f32| if v > 20.0 { v } else { v.exp().ln_1p() };
        Box::new(move |x: &[f32], tau: f32, y: &mut [f32]| {
            // lrnnx's Mamba.step in STREAM mode (spec §9.4), written directly with row-major
            // weights: ΔA = τ·softplus(dtA_proj.bias), B̄ = Δ·B.
            let xz: Vec<f32> = (0..2 * di)
                .map(|o| (0..dm).map(|i| in_w[o * dm + i] * x[i]).sum())
                .collect();
            let mut xc = vec![0.0f32; di];
            for d in 0..di {
                conv.copy_within(d * k + 1..(d + 1) * k, d * k);
                conv[(d + 1) * k - 1] = xz[d];
                let v: f32 = (0..k)
                    .map(|w| conv[d * k + w] * conv_w[d * k + w])
                    .sum::<f32>()
                    + conv_b[d];
                xc[d] = silu(v);
            }
            let xdb: Vec<f32> = (0..r + 2 * ns)
                .map(|o| (0..di).map(|i| xp_w[o * di + i] * xc[i]).sum())
                .collect();
            let mut yin = vec![0.0f32; di];
            for d in 0..di {
                let delta =
                    softplus((0..r).map(|j| dt_w[d * r + j] * xdb[j]).sum::<f32>() + dt_b[d]);
                let mut acc = 0.0;
                for s in 0..ns {
                    let a = -a_log[d * ns + s].exp();
                    let h = &mut hs[d * ns + s];
                    let delta_a = tau * softplus(dta_b[d]);
                    *h = *h * (delta_a * a).exp() + delta * xdb[r + s] * xc[d];
                    acc += *h * xdb[r + ns + s];
                }
                yin[d] = (acc + dd[d] * xc[d]) * silu(xz[di + d]);
            }
            for o in 0..dm {
                y[o] = (0..di).map(|i| out_w[o * di + i] * yin[i]).sum();
            }
        }) as Baseline
    };
    out.push(Bench {
        name: "mamba D=64 N=16 E=2 K=4",
        class: "lrnnx.models.ltv.mamba.Mamba",
        kwargs: json!({"d_model": dm, "d_state": ns, "expand": 2, "d_conv": k}),
        params: file(vec![
            ("in_proj.weight", in_w),
            ("conv1d.weight", conv_w),
            ("conv1d.bias", conv_b),
            ("x_proj.weight", xp_w),
            ("dt_proj.weight", dt_w),
            ("dt_proj.bias", dt_b),
            ("dtA_proj.weight", dta_w),
            ("dtA_proj.bias", dta_b),
            ("A_log", a_log),
            ("D", dd),
            ("out_proj.weight", out_w),
        ]),
        lrnnx_us: Some(180.0),
        baseline: Some(base),
        event: true,
    });
    out
}

fn median_ns(home: &std::path::Path, id: &str) -> Option<f64> {
    let path = home.join(id.replace('/', "_")).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    // Criterion's output folder: next to the build's `target` folder, unless set by the caller.
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("bench executable path");
            exe.ancestors()
                .nth(3)
                .map(|t| t.join("criterion"))
                .unwrap_or_else(|| "criterion".into())
        });
    std::env::set_var("CRITERION_HOME", &home);
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    let mut rows = Vec::new();
    for mut b in benches() {
        let model = match build_core(b.class, &b.kwargs, &b.params.params("")) {
            Ok(m) => m,
            Err(e) => {
                println!("step {}: not built ({e})", b.name);
                continue;
            }
        };
        let layer = model.as_layer();
        let mut rng = Rng(7);
        let xs: Vec<f32> = (0..layer.d_input() * 256)
            .map(|_| rng.next() - 0.5)
            .collect();
        let mut state = vec![0.0f32; layer.state_len()];
        let mut y = vec![0.0f32; layer.d_output()];
        let core_id = format!("core {}", b.name);
        let mut t = 0usize;
        c.bench_function(&core_id, |bench| {
            bench.iter(|| {
                let x = &xs[(t % 256) * layer.d_input()..][..layer.d_input()];
                t += 1;
                layer
                    .step(black_box(&mut state), black_box(x), black_box(&mut y))
                    .unwrap();
            })
        });
        let event_id = format!("core-event {}", b.name);
        if let (true, Some(ev)) = (b.event, model.as_event_layer()) {
            let mut t = 0usize;
            c.bench_function(&event_id, |bench| {
                bench.iter(|| {
                    let x = &xs[(t % 256) * layer.d_input()..][..layer.d_input()];
                    t += 1;
                    ev.step_event(
                        black_box(&mut state),
                        black_box(x),
                        black_box(0.7),
                        black_box(&mut y),
                    )
                    .unwrap();
                })
            });
        }
        let base_id = format!("baseline {}", b.name);
        if let Some(base) = b.baseline.as_mut() {
            // The baseline must compute what the core computes: 64 steps (events with time
            // step 0.7 where the layer has them) from the zero state agree to float rounding.
            let mut s = vec![0.0f32; layer.state_len()];
            let (mut y_core, mut y_base) = (
                vec![0.0f32; layer.d_output()],
                vec![0.0f32; layer.d_output()],
            );
            for x in xs.chunks_exact(layer.d_input()).take(64) {
                match (b.event, model.as_event_layer()) {
                    (true, Some(ev)) => ev.step_event(&mut s, x, 0.7, &mut y_core).unwrap(),
                    _ => layer.step(&mut s, x, &mut y_core).unwrap(),
                }
                base(x, 0.7, &mut y_base);
                let scale = y_core.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (a, c) in y_core.iter().zip(&y_base) {
                    assert!(
                        (a - c).abs() <= 1e-4 * scale,
                        "{}: core {a} vs baseline {c}",
                        b.name
                    );
                }
            }
        }
        if let Some(mut base) = b.baseline {
            let mut t = 0usize;
            c.bench_function(&base_id, |bench| {
                bench.iter(|| {
                    let x = &xs[(t % 256) * layer.d_input()..][..layer.d_input()];
                    t += 1;
                    base(black_box(x), black_box(0.7), black_box(&mut y));
                })
            });
        }
        rows.push((b.name, core_id, event_id, base_id, b.lrnnx_us));
    }
    c.final_summary();
    println!();
    for (name, core_id, event_id, base_id, lrnnx_us) in rows {
        let Some(core) = median_ns(&home, &core_id) else {
            continue;
        };
        let mut line = format!("step {name} core={core:.0}ns");
        if let Some(ev) = median_ns(&home, &event_id) {
            line += &format!(" core_event={ev:.0}ns");
        }
        if let Some(base) = median_ns(&home, &base_id) {
            line += &format!(" baseline={base:.0}ns speedup={:.1}x", base / core);
        }
        if let Some(us) = lrnnx_us {
            line += &format!(" vs_lrnnx={:.0}x", us * 1e3 / core);
        }
        println!("{line}");
    }
}
