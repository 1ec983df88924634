//! The training crate's parallel forward (and forward + backward) of S5 (LTI, zoh), LRU, Mamba
//! and S4, against a baseline measured in the same process: the lrnnx-core layer stepped
//! sequentially over the same sequence (exact and allocation-free; the two are checked to agree
//! before anything is timed).
//!
//! ```text
//! cargo bench --bench train
//! ```
//!
//! Times are medians of repeated runs (`std::time::Instant`; fewer repetitions for the large
//! sizes). Candle runs on one thread unless `RAYON_NUM_THREADS` is set by the caller (lrnnx's
//! quoted times are one-thread times). Printed per layer:
//!
//! * `B=8 L=2048`: `fwd`, `fwd+bwd` (loss `Σ y ⊙ g`, gradients of every parameter and of `x`),
//!   and `core_seq` (the core stepped over the same 8 sequences), `speedup = core_seq / fwd`;
//! * `B=1 L=2048`: `fwd`, `core_seq`, `speedup`, and `vs_lrnnx` = lrnnx's quoted forward time
//!   for this machine kind (S5 and LRU ≈ 22 ms, Mamba ≈ 150 ms, one thread; not measured here:
//!   lrnnx needs its CUDA extensions) divided by ours;
//! * `B=1 L=1k/16k/128k`: forward time per sample in ns (flat when the cost grows as O(L), as
//!   log L for an O(L log L) cost), and the ratio of the 128k and 1k values.
//!
//! The layers: S5 (LTI, zoh, H=64, P=64), LRU (H=64, N=64), Mamba (d_model=64, N=16, expand 2)
//! and S4 (DPLR, H=64, d_state=64, lrnnx's fresh HiPPO-LegS initialization; FFT convolution).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use lrnnx::import::build_core;
use lrnnx::safetensors_io::{Tensor as FileTensor, TensorFile};
use lrnnx_train::candle_core::{Device, Tensor};
use lrnnx_train::{build, Params, TrainLayer};
use serde_json::json;

/// Deterministic uniform numbers for weights and inputs (as in `benches/step.rs`).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> FileTensor {
        let n = shape.iter().product();
        FileTensor {
            shape: shape.to_vec(),
            data: (0..n).map(|_| lo + (hi - lo) * self.next()).collect(),
        }
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
}

struct Bench {
    name: &'static str,
    class: &'static str,
    kwargs: serde_json::Value,
    params: TensorFile,
    /// lrnnx's quoted forward time at B=1, L=2048 on this machine kind, one thread (ms).
    lrnnx_ms: f64,
}

fn file(entries: Vec<(&str, FileTensor)>) -> TensorFile {
    TensorFile {
        tensors: entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
        metadata: BTreeMap::new(),
    }
}

/// The layers, with random weights under lrnnx's names (the ranges of `benches/step.rs`).
fn benches() -> Vec<Bench> {
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let (h, n) = (64usize, 64usize);
    let mut out = Vec::new();
    out.push(Bench {
        name: "s5_lti_zoh H=64 P=64",
        class: "lrnnx.models.lti.s5.S5",
        kwargs: json!({"d_model": h, "d_state": n, "discretization": "zoh"}),
        params: file(vec![
            ("A", rng.tensor(&[n, 2], -1.0, 1.0)),
            ("B", rng.tensor(&[n, h], -0.1, 0.1)),
            ("log_dt", rng.tensor(&[n], -6.9, -2.3)),
            ("C", rng.tensor(&[h, n, 2], -0.2, 0.2)),
            ("D", rng.tensor(&[h, h], -0.1, 0.1)),
        ]),
        lrnnx_ms: 22.0,
    });
    out.push(Bench {
        name: "lru H=64 N=64",
        class: "lrnnx.models.lti.lru.LRU",
        kwargs: json!({"d_model": h, "d_state": n}),
        params: file(vec![
            ("nu_log", rng.tensor(&[n], -4.5, -0.4)),
            ("theta_log", rng.tensor(&[n], -3.0, 1.8)),
            ("gamma_log", rng.tensor(&[n], -2.0, 0.0)),
            ("B_re", rng.tensor(&[n, h], -0.1, 0.1)),
            ("B_im", rng.tensor(&[n, h], -0.1, 0.1)),
            ("C_re", rng.tensor(&[h, n], -0.1, 0.1)),
            ("C_im", rng.tensor(&[h, n], -0.1, 0.1)),
            ("D", rng.tensor(&[h], -1.0, 1.0)),
        ]),
        lrnnx_ms: 22.0,
    });
    let (dm, ns, di, k, r) = (64usize, 16usize, 128usize, 4usize, 4usize);
    let mut a_log = rng.tensor(&[di, ns], 0.0, 0.0);
    for (i, v) in a_log.data.iter_mut().enumerate() {
        *v = ((i % ns) as f32 + 1.0).ln();
    }
    out.push(Bench {
        name: "mamba D=64 N=16 E=2 K=4",
        class: "lrnnx.models.ltv.mamba.Mamba",
        kwargs: json!({"d_model": dm, "d_state": ns, "expand": 2, "d_conv": k}),
        params: file(vec![
            ("in_proj.weight", rng.tensor(&[2 * di, dm], -0.125, 0.125)),
            ("conv1d.weight", rng.tensor(&[di, 1, k], -0.5, 0.5)),
            ("conv1d.bias", rng.tensor(&[di], -0.5, 0.5)),
            ("x_proj.weight", rng.tensor(&[r + 2 * ns, di], -0.09, 0.09)),
            ("dt_proj.weight", rng.tensor(&[di, r], -0.5, 0.5)),
            ("dt_proj.bias", rng.tensor(&[di], -6.0, -2.5)),
            ("dtA_proj.weight", rng.tensor(&[di, r], -0.5, 0.5)),
            ("dtA_proj.bias", rng.tensor(&[di], -0.5, 0.5)),
            ("A_log", a_log),
            ("D", rng.tensor(&[di], 0.9, 1.1)),
            ("out_proj.weight", rng.tensor(&[dm, di], -0.09, 0.09)),
        ]),
        lrnnx_ms: 150.0,
    });
    // S4 (DPLR) with lrnnx's defaults (d_state 64, rank 1, output linear): the fresh HiPPO-LegS
    // initialization, as a never-run lrnnx module (`l_kernel` = 0).
    let kwargs = json!({"d_model": h, "d_state": 64});
    let params = lrnnx_train::init::init_params(
        "lrnnx.models.lti.s4.S4",
        &kwargs,
        &mut lrnnx_train::init::Rng::new(5),
        lrnnx_train::candle_core::DType::F32,
        &Device::Cpu,
    )
    .expect("S4 init");
    out.push(Bench {
        name: "s4 H=64 N=64",
        class: "lrnnx.models.lti.s4.S4",
        kwargs,
        params: file(
            params
                .vars()
                .iter()
                .map(|(k, v)| {
                    let t = v.as_tensor();
                    let data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    (
                        k.as_str(),
                        FileTensor {
                            shape: t.dims().to_vec(),
                            data,
                        },
                    )
                })
                .collect(),
        ),
        // lrnnx's S4 forward time is not quoted for this machine kind.
        lrnnx_ms: f64::NAN,
    });
    out
}

/// Median wall time (seconds) of `reps` runs of `f`, after one warm-up run when `warm`.
fn median<F: FnMut()>(reps: usize, warm: bool, mut f: F) -> f64 {
    if warm {
        f();
    }
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn ms(s: f64) -> String {
    format!("{:.2}ms", s * 1e3)
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    println!("train bench: candle threads (RAYON_NUM_THREADS) = {threads}");
    let dev = Device::Cpu;
    let mut rng = Rng(7);
    let (len, batch) = (2048usize, 8usize);
    for b in benches() {
        let t0 = Instant::now();
        let core = match build_core(b.class, &b.kwargs, &b.params.params("")) {
            Ok(m) => m,
            Err(e) => {
                println!("train {}: core not built ({e})", b.name);
                continue;
            }
        };
        let core = core.as_layer();
        let mut params = Params::new();
        for (name, t) in &b.params.tensors {
            let t = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &dev).unwrap();
            params.insert(name, &t).unwrap();
        }
        let layer: Box<dyn TrainLayer> = match build(b.class, &b.kwargs, params) {
            Ok(l) => l,
            Err(e) => {
                println!("train {}: train layer not built ({e})", b.name);
                continue;
            }
        };
        let hdim = core.d_input();
        let xs = rng.vec(batch * len * hdim, -0.5, 0.5);
        let x8 = Tensor::from_vec(xs.clone(), (batch, len, hdim), &dev).unwrap();
        let x1 = x8.narrow(0, 0, 1).unwrap().contiguous().unwrap();
        let g8 = Tensor::from_vec(
            rng.vec(batch * len * core.d_output(), -1.0, 1.0),
            (batch, len, core.d_output()),
            &dev,
        )
        .unwrap();

        // The core stepped over `rows` sequences of `xs`, from the zero state each.
        let mut state = vec![0.0f32; core.state_len()];
        let mut ys = vec![0.0f32; batch * len * core.d_output()];
        let mut core_seq = |rows: usize, ys: &mut [f32]| {
            for (row, yrow) in ys
                .chunks_exact_mut(len * core.d_output())
                .take(rows)
                .enumerate()
            {
                state.iter_mut().for_each(|s| *s = 0.0);
                let xrow = &xs[row * len * hdim..][..len * hdim];
                for (x, y) in xrow
                    .chunks_exact(hdim)
                    .zip(yrow.chunks_exact_mut(core.d_output()))
                {
                    core.step(&mut state, black_box(x), y).unwrap();
                }
            }
        };

        // Numerical agreement, once, on the whole batch.
        core_seq(batch, &mut ys);
        let y_train = layer.forward(&x8, None).unwrap();
        let yt = y_train.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = ys.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let max_abs = yt
            .iter()
            .zip(&ys)
            .map(|(a, c)| (a - c).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max_abs <= 1e-4 * scale + 1e-6,
            "{}: train forward and core steps differ by {max_abs} (scale {scale})",
            b.name
        );
        println!(
            "train {} check: train forward == core steps (B={batch}, L={len}): max_abs={max_abs:.2e} rel={:.2e}",
            b.name,
            max_abs / scale
        );

        // B=8, L=2048.
        let fwd8 = median(5, true, || {
            black_box(layer.forward(&x8, None).unwrap());
        });
        let fb8 = median(3, true, || {
            let y = layer.forward(&x8, None).unwrap();
            let grads = (&y * &g8).unwrap().sum_all().unwrap().backward().unwrap();
            black_box(grads);
        });
        let core8 = median(3, false, || core_seq(batch, &mut ys));
        println!(
            "train {} B={batch} L={len}: fwd={} fwd+bwd={} (bwd/fwd={:.1}) core_seq={} speedup={:.2}x",
            b.name,
            ms(fwd8),
            ms(fb8),
            (fb8 - fwd8) / fwd8,
            ms(core8),
            core8 / fwd8
        );

        // B=1, L=2048.
        let fwd1 = median(9, true, || {
            black_box(layer.forward(&x1, None).unwrap());
        });
        let core1 = median(5, false, || core_seq(1, &mut ys));
        let vs = if b.lrnnx_ms.is_nan() {
            String::new()
        } else {
            format!(
                " vs_lrnnx={:.1}x (lrnnx {}ms quoted)",
                b.lrnnx_ms * 1e-3 / fwd1,
                b.lrnnx_ms
            )
        };
        println!(
            "train {} B=1 L={len}: fwd={} core_seq={} speedup={:.2}x{vs}",
            b.name,
            ms(fwd1),
            ms(core1),
            core1 / fwd1,
        );

        // The cost's growth in L: forward time per sample at B=1 (flat for O(L), + log L for
        // the FFT convolution of S4).
        let mut line = format!("train {} B=1 per-sample fwd:", b.name);
        let mut per_sample = Vec::new();
        for (l, reps) in [(1usize << 10, 7usize), (1 << 14, 3), (1 << 17, 1)] {
            let x = Tensor::from_vec(rng.vec(l * hdim, -0.5, 0.5), (1, l, hdim), &dev).unwrap();
            let t = median(reps, l < (1 << 17), || {
                black_box(layer.forward(&x, None).unwrap());
            });
            per_sample.push(t / l as f64);
            line += &format!(" L={}k {:.0}ns", l >> 10, t / l as f64 * 1e9);
        }
        line += &format!(
            " (128k/1k = {:.2}; an O(L) cost predicts 1, O(L log L) {:.2})",
            per_sample[2] / per_sample[0],
            17.0 / 10.0
        );
        println!("{line}");
        println!(
            "train {} bench took {:.1}s",
            b.name,
            t0.elapsed().as_secs_f64()
        );
    }
}
