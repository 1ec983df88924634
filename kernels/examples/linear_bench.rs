//! The diagonal linear scan (`lrnnx_kernels::linear`, the recurrence under lrnnx-train's S5,
//! LRU, Centaurus, RG-LRU and S7 layers): the parallel schedule against the sequential one (the
//! baseline, one thread per (batch row, state)) in the same process on the same GPU, forward
//! and forward + backward, at S5 / LRU-like sizes.
//!
//! ```text
//! cargo build --release -p lrnnx-kernels --features cuda --example linear_bench
//! ./linear_bench [PEAK_TB_S [TARGET_BLOCKS...]]   # on the GPU machine; peak HBM bandwidth,
//!                                                 # 3.35 (H100); segment targets (default 256)
//! ```
//!
//! Best of 10 runs after a warm-up, the stream synchronized around each. Printed per size: the
//! times, the speed-up, and the parallel fwd+bwd's share of the HBM roofline (compulsory traffic:
//! forward reads `a`, `u` and writes `h`; backward reads `a`, `h`, `g` and writes `∂u`, `∂a`;
//! 8 full-size tensors, `a` one row when shared).

use lrnnx_kernels::cuda::{gpu_available, keep_pool_memory};
use lrnnx_kernels::linear::{LinearScan, LinearSchedule, LinearSpec, PARALLEL_TARGET_BLOCKS};

fn main() {
    if !gpu_available() {
        println!("no CUDA device; nothing measured");
        return;
    }
    let peak: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3.35);
    // segment targets of the parallel schedule (blocks; the default first), from the
    // remaining arguments
    let mut targets: Vec<usize> = std::env::args()
        .skip(2)
        .filter_map(|a| a.parse().ok())
        .collect();
    if targets.is_empty() {
        targets.push(PARALLEL_TARGET_BLOCKS);
    }
    let ctx = cudarc::driver::CudaContext::new(0).expect("CUDA context");
    let st = ctx.default_stream();
    keep_pool_memory(&st);
    let mut scan = LinearScan::with_stream(st.clone());
    println!(
        "{:<44} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8} {:>9}",
        "size",
        "seq fwd",
        "par fwd",
        "speedup",
        "seq fwd+bwd",
        "par fwd+bwd",
        "speedup",
        "roofline"
    );
    for &(batch, len, state, complex) in &[
        (16, 4096, 256, true),
        (8, 4096, 1024, true),
        (16, 2048, 64, false),
        (64, 1024, 512, false),
        (2, 16384, 128, true),
    ] {
        let spec = LinearSpec {
            batch,
            len,
            state,
            complex,
            shared: false,
        };
        let a = st.clone_htod(&vec![0.9f32; spec.a_len()]).expect("upload");
        let u = st
            .clone_htod(&vec![0.1f32; spec.full_len()])
            .expect("upload");
        // the baseline, then the parallel schedule at the default segment target and others
        let runs = [(LinearSchedule::Sequential, PARALLEL_TARGET_BLOCKS)]
            .into_iter()
            .chain(targets.iter().map(|&t| (LinearSchedule::Parallel, t)));
        let mut baseline = [0.0; 2];
        for (i, (schedule, target)) in runs.enumerate() {
            scan.schedule = schedule;
            scan.target_blocks = target;
            let mut best = [f64::MAX; 2];
            for rep in 0..11 {
                st.synchronize().expect("sync");
                let t = std::time::Instant::now();
                let h = scan
                    .forward(&spec, &a.as_view(), &u.as_view())
                    .expect("forward");
                st.synchronize().expect("sync");
                let tf = t.elapsed().as_secs_f64() * 1e3;
                let g = scan
                    .backward(&spec, &a.as_view(), &h.as_view(), &u.as_view())
                    .expect("backward");
                st.synchronize().expect("sync");
                let tb = t.elapsed().as_secs_f64() * 1e3;
                drop(g);
                if rep > 0 {
                    best = [best[0].min(tf), best[1].min(tb)];
                }
            }
            if i == 0 {
                baseline = best;
                continue;
            }
            let bytes = 8.0 * spec.full_len() as f64 * 4.0;
            let roof_ms = bytes / (peak * 1e12) * 1e3;
            println!(
                "{:<44} {:>10.3} {:>10.3} {:>7.1}x {:>12.3} {:>12.3} {:>7.1}x {:>8.0}%",
                format!(
                    "B{batch} L{len} N{state}{} target {target} seg {} w{}",
                    if complex { " complex" } else { "" },
                    spec.segments_for(target).0,
                    spec.warps_for(target)
                ),
                baseline[0],
                best[0],
                baseline[0] / best[0],
                baseline[1],
                best[1],
                baseline[1] / best[1],
                100.0 * roof_ms / best[1]
            );
        }
    }
}
