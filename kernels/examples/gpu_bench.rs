//! Selective scan fwd+bwd on the GPU at batch 8, length 4096, 2048 channels, state 16, fp32
//! (mamba rule, softplus Δ with bias, D skip), with and without the z gate; prints the time as a
//! fraction of the HBM roofline (compulsory bytes per (batch, position, channel) element:
//! forward 12 B / 20 B with z, backward 20 B / 32 B with z) for a peak bandwidth given in TB/s
//! as the first argument (default 3.35, H100 SXM). Run: `gpu_bench [peak_tb_s] [reps] [tiling]`
//! (`tiling`: time only the tiling of that index, e.g. under a profiler).

use std::time::Instant;

use lrnnx_kernels::cuda::{gpu_available, keep_pool_memory, Inputs, SelectiveScan};
use lrnnx_kernels::{ScanSpec, Tiling, BENCH_TILINGS};

fn main() {
    if !gpu_available() {
        println!("SKIPPED: no CUDA device");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let peak: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3.35);
    let reps: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    // optional: time only the tiling of this index (for profiling one kernel variant)
    let only: Option<usize> = args.get(3).and_then(|a| a.parse().ok());
    let (bs, l, e, n) = (8usize, 4096usize, 2048usize, 16usize);
    let mut ss = SelectiveScan::new(0).expect("context");
    let st = ss.stream().clone();
    println!(
        "memory pool release threshold set to max: {}",
        keep_pool_memory(&st)
    );
    let ble = bs * l * e;
    let mut seed = 7u64;
    let mut rnd = |k: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..k)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                lo + (hi - lo) * ((seed >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    };
    let u = st.clone_htod(&rnd(ble, -1.0, 1.0)).unwrap();
    let dl = st.clone_htod(&rnd(ble, -4.0, 0.0)).unwrap();
    let z = st.clone_htod(&rnd(ble, -2.0, 2.0)).unwrap();
    let dy = st.clone_htod(&rnd(ble, -1.0, 1.0)).unwrap();
    let a = st.clone_htod(&rnd(e * n, -16.0, -1.0)).unwrap();
    let b = st.clone_htod(&rnd(bs * l * n, -1.0, 1.0)).unwrap();
    let c = st.clone_htod(&rnd(bs * l * n, -1.0, 1.0)).unwrap();
    let d = st.clone_htod(&rnd(e, -1.0, 1.0)).unwrap();
    let db = st.clone_htod(&rnd(e, -1.0, 1.0)).unwrap();
    for has_z in [false, true] {
        let spec = ScanSpec {
            has_z,
            ..ScanSpec::mamba(bs, l, e, n)
        };
        let inp = Inputs {
            u: &u,
            delta: &dl,
            delta_a: None,
            a: &a,
            b: &b,
            c: &c,
            d: Some(&d),
            z: has_z.then_some(&z),
            delta_bias: Some(&db),
        };
        let bytes = ble as f64 * if has_z { 20.0 + 32.0 } else { 12.0 + 20.0 };
        let roof_ms = bytes / (peak * 1e12) * 1e3;
        let mut best: Option<(f64, f64, f64, Tiling)> = None;
        for (ti, t) in BENCH_TILINGS.into_iter().enumerate() {
            if only.is_some_and(|o| o != ti) {
                continue;
            }
            ss.tiling = t;
            // warm-up (compiles the variant)
            let f = ss.forward(&spec, &inp).unwrap();
            let _g = ss.backward(&spec, &inp, &f, &dy).unwrap();
            st.synchronize().unwrap();
            drop((f, _g));
            let mut tf = f64::MAX;
            let mut tfb = f64::MAX;
            for _ in 0..reps {
                let t0 = Instant::now();
                let f = ss.forward(&spec, &inp).unwrap();
                st.synchronize().unwrap();
                let t1 = Instant::now();
                let g = ss.backward(&spec, &inp, &f, &dy).unwrap();
                st.synchronize().unwrap();
                let t2 = Instant::now();
                drop((f, g));
                tf = tf.min((t1 - t0).as_secs_f64() * 1e3);
                tfb = tfb.min((t2 - t0).as_secs_f64() * 1e3);
            }
            let (v, [(rf, lf), (rb, lb)]) = ss.kernel_info(&spec).unwrap();
            println!(
                "  {} kernels: fwd {rf} registers/thread ({lf} B spilled), bwd {rb} ({lb} B), \
                 chunk {}, {} channels a block{}",
                if v.seq { "sequential" } else { "chunked" },
                v.chunk(),
                v.channels_per_block(lrnnx_kernels::Pass::Backward),
                if v.seq {
                    let g = &v.tiling;
                    format!(
                        ", {} lanes a channel, sub-chunks of {}, {} backward block(s) an SM",
                        g.seq_split,
                        g.seq_sub,
                        v.seq_bwd_blocks()
                    )
                } else {
                    String::new()
                }
            );
            println!(
                "z={has_z} tiling {t:?}: fwd {tf:.3} ms, fwd+bwd {tfb:.3} ms ({:.1}% of roofline {roof_ms:.3} ms)",
                100.0 * roof_ms / tfb
            );
            if best.is_none_or(|bst| tfb < bst.1) {
                best = Some((tf, tfb, roof_ms, t));
            }
        }
        let (tf, tfb, roof, t) = best.unwrap();
        println!(
            "RESULT lrnnx-kernels z={has_z}: fwd {tf:.3} ms, fwd+bwd {tfb:.3} ms, roofline {roof:.3} ms at {peak} TB/s -> {:.1}% (best tiling {t:?})",
            100.0 * roof / tfb
        );
    }
}
