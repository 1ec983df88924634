//! The S5 simplified scan (`lrnnx_kernels::simplified`) at batch 8 × L 4096 × P 1024 (zoh):
//! the automatic tiling and a sweep of the others, every rule with and without `deltaA`, and
//! the baseline in the same process on the same GPU: the sequential complex linear scan
//! (`lrnnx_kernels::linear`, one thread per (batch row, state)) given `Ā` and `γ̄·Bu`
//! precomputed.
//!
//! ```text
//! cargo build --release -p lrnnx-kernels --features cuda --example simplified_bench
//! ./simplified_bench                      # on the GPU machine
//! ```
//!
//! Best of 10 runs after a warm-up, the stream synchronized around each. Compulsory traffic:
//! forward `Bu`, `delta` in, `x` out (20 B an element); backward `Bu`, `delta`, `x`, `dx` in,
//! `dBu`, `ddelta` out (40 B).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use lrnnx_kernels::cuda::{gpu_available, keep_pool_memory};
use lrnnx_kernels::linear::{LinearScan, LinearSchedule, LinearSpec};
use lrnnx_kernels::simplified::{
    SimplifiedInputs, SimplifiedScan, SimplifiedSpec, SimplifiedTiling, SIMPLIFIED_RULES,
};
use lrnnx_kernels::Rule;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{f32v, Rng};

/// Best of 10 timed runs of `f` (ms) after one warm-up, synchronized around each.
fn best(st: &Arc<CudaStream>, f: &mut dyn FnMut()) -> f64 {
    f();
    st.synchronize().expect("synchronize");
    let mut b = f64::INFINITY;
    for _ in 0..10 {
        let t = std::time::Instant::now();
        f();
        st.synchronize().expect("synchronize");
        b = b.min(t.elapsed().as_secs_f64() * 1e3);
    }
    b
}

fn main() {
    if !gpu_available() {
        println!("no CUDA device; nothing measured");
        return;
    }
    let mut ss = SimplifiedScan::new(0).expect("CUDA context");
    let st = ss.stream().clone();
    println!(
        "memory pool release threshold set to max: {}",
        keep_pool_memory(&st)
    );
    let s = SimplifiedSpec {
        batch: 8,
        len: 4096,
        channels: 1024,
        rule: Rule::Zoh,
        has_delta_a: false,
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let up = |v: &[f64]| -> CudaSlice<f32> { st.clone_htod(&f32v(v)).expect("upload") };
    // A: stable (Re < 0) with imaginary parts in ±10; positive time steps
    let a_host: Vec<f64> = (0..s.channels)
        .flat_map(|_| [-0.05 - 2.95 * rng.next(), 20.0 * rng.next() - 10.0])
        .collect();
    let (bu, dl, a) = (
        up(&rng.vec(s.complex_len(), -1.0, 1.0)),
        up(&rng.vec(s.real_len(), 0.001, 0.1)),
        up(&a_host),
    );
    let g = up(&rng.vec(s.complex_len(), -1.0, 1.0));
    let inp = SimplifiedInputs {
        bu: bu.as_view(),
        delta: dl.as_view(),
        delta_a: None,
        a: a.as_view(),
    };
    let gb = 60.0 * s.real_len() as f64 / 1e9;
    let auto = SimplifiedTiling::auto(&s);
    ss.tiling = None;
    let af = best(&st, &mut || {
        ss.forward(&s, &inp).expect("forward");
    });
    let afb = best(&st, &mut || {
        let x = ss.forward(&s, &inp).expect("forward");
        ss.backward(&s, &inp, &x.as_view(), &g.as_view())
            .expect("backward");
    });
    println!(
        "auto tiling {auto:?}: fwd {af:.3} ms, fwd+bwd {afb:.3} ms ({:.0} GB/s over {gb:.2} GB)",
        gb / (afb * 1e-3)
    );
    // each pass's geometries (forward alone; backward alone on the auto forward's states)
    let x = ss.forward(&s, &inp).expect("forward");
    for warps in [4, 8, 16, 32] {
        for items in [2, 4, 8] {
            for prefetch in [false, true] {
                ss.tiling = Some(SimplifiedTiling {
                    warps,
                    items,
                    prefetch,
                    bwd_warps: warps,
                    bwd_items: items,
                    bwd_prefetch: prefetch,
                });
                let tf = best(&st, &mut || {
                    ss.forward(&s, &inp).expect("forward");
                });
                let tb = best(&st, &mut || {
                    ss.backward(&s, &inp, &x.as_view(), &g.as_view())
                        .expect("backward");
                });
                println!(
                    "  warps {warps:2} items {items} prefetch {prefetch:5}: fwd {tf:.3} ms, \
                     bwd {tb:.3} ms"
                );
            }
        }
    }
    ss.tiling = None;
    // every rule, with and without deltaA, at the automatic tiling
    for rule in SIMPLIFIED_RULES {
        for has_delta_a in [false, true] {
            let s = SimplifiedSpec {
                rule,
                has_delta_a,
                ..s
            };
            let inp = SimplifiedInputs {
                bu: bu.as_view(),
                delta: dl.as_view(),
                delta_a: has_delta_a.then(|| dl.as_view()),
                a: a.as_view(),
            };
            let tf = best(&st, &mut || {
                ss.forward(&s, &inp).expect("forward");
            });
            let tfb = best(&st, &mut || {
                let x = ss.forward(&s, &inp).expect("forward");
                ss.backward(&s, &inp, &x.as_view(), &g.as_view())
                    .expect("backward");
            });
            println!("  {rule:?} deltaA={has_delta_a}: fwd {tf:.3} ms, fwd+bwd {tfb:.3} ms");
        }
    }
    // the baseline
    let mut lin = LinearScan::with_stream(st.clone());
    lin.schedule = LinearSchedule::Sequential;
    let ls = LinearSpec {
        batch: s.batch,
        len: s.len,
        state: s.channels,
        complex: true,
        shared: false,
    };
    let la = up(&rng.vec(ls.full_len(), -0.7, 0.7));
    let lf = best(&st, &mut || {
        lin.forward(&ls, &la.as_view(), &bu.as_view())
            .expect("linear forward");
    });
    let lfb = best(&st, &mut || {
        let hh = lin
            .forward(&ls, &la.as_view(), &bu.as_view())
            .expect("linear forward");
        lin.backward(&ls, &la.as_view(), &hh.as_view(), &g.as_view())
            .expect("linear backward");
    });
    println!(
        "RESULT simplified scan b8 L4096 P1024 zoh (auto tiling): fwd {af:.3} ms, fwd+bwd \
         {afb:.3} ms; sequential linear scan (baseline) fwd {lf:.3} ms, fwd+bwd {lfb:.3} ms \
         ({:.1}x, {:.1}x)",
        lf / af,
        lfb / afb
    );
}
