//! The causal convolution (`lrnnx_kernels::conv`, the convolution under lrnnx-train's S4 and S4D
//! layers): the register-windowed direct sums at the automatic outputs a thread against one output
//! a thread (the baseline: the kernels as they were, two shared loads an FMA), and the cuFFT path
//! against the windowed direct sums, in the same process on the same GPU, at S4-like sizes and
//! over a sweep of kernel lengths (where `ConvMethod::Auto` switches).
//!
//! ```text
//! cargo build --release -p lrnnx-kernels --features cuda --example conv_bench
//! ./conv_bench                      # on the GPU machine
//! ```
//!
//! Best of 10 runs after a warm-up, the stream synchronized around each. Printed per size and
//! kernel (`y`, `∂u`, `∂k`): the times of the direct sums at one, at 8 and at the automatic
//! outputs a thread, the speed-up of the automatic choice over one, its rate in TFLOP/s (2 flops
//! a term of the direct sums), the FFT's time and its speed-up over the windowed direct sums.
//! The direct runs split `∂k`'s batch alike (`ConvSpec::batch_groups`).

use lrnnx_kernels::conv::{fft_pays, CausalConv, ConvMethod, ConvSpec};
use lrnnx_kernels::cuda::{gpu_available, keep_pool_memory};
use lrnnx_kernels::fft::cufft_available;

/// Terms of the direct sum of `y` (and of `∂k`, and of `∂u`): `Σ_t min(t + 1, K)` a row.
fn terms(len: usize, taps: usize) -> f64 {
    let k = taps.min(len);
    (k * (k + 1) / 2 + (len - k) * k) as f64
}

fn main() {
    if !gpu_available() {
        println!("no CUDA device; nothing measured");
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).expect("CUDA context");
    let st = ctx.default_stream();
    keep_pool_memory(&st);
    let mut conv = CausalConv::with_stream(st.clone());
    let fft = cufft_available();
    println!(
        "cuFFT {}; `auto` says which way ConvMethod::Auto takes (conv::fft_pays)",
        if fft {
            "loaded"
        } else {
            "not loadable: FFT column empty"
        }
    );
    println!(
        "{:<28} {:>4} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7}",
        "size (B C L K)",
        "op",
        "1/thread",
        "8/thread",
        "windowed",
        "outputs",
        "speedup",
        "TFLOP/s",
        "FFT",
        "FFT x",
        "auto"
    );
    for &(batch, channels, len, taps) in &[
        (16, 256, 4096, 4096),
        (8, 128, 16384, 16384),
        (2, 64, 65536, 65536),
        (32, 64, 1024, 1024),
        (4, 64, 2048, 64),
        (16, 256, 4096, 64),
        (16, 256, 4096, 128),
        (16, 256, 4096, 256),
        (16, 256, 4096, 512),
        (8, 128, 16384, 128),
        (8, 128, 16384, 256),
        (8, 128, 16384, 512),
    ] {
        let spec = ConvSpec {
            batch,
            channels,
            len,
            taps,
        };
        let u = st
            .clone_htod(&vec![0.5f32; spec.signal_len()])
            .expect("upload");
        let k = st
            .clone_htod(&vec![0.25f32; spec.kernel_len()])
            .expect("upload");
        let rows = batch * channels;
        let flops = 2.0 * rows as f64 * terms(len, taps);
        let mut best = [[f64::MAX; 3]; 4];
        let ways = [
            (ConvMethod::Direct, Some(1)),
            (ConvMethod::Direct, Some(8)),
            (ConvMethod::Direct, None),
            (ConvMethod::Fft, None),
        ];
        for (v, (method, forced)) in ways.into_iter().enumerate() {
            if method == ConvMethod::Fft && !fft {
                continue;
            }
            conv.method = method;
            conv.outputs_per_thread = forced;
            for rep in 0..11 {
                let mut t3 = [0.0; 3];
                for (op, slot) in t3.iter_mut().enumerate() {
                    st.synchronize().expect("sync");
                    let t = std::time::Instant::now();
                    let out = match op {
                        0 => conv.forward(&spec, &u.as_view(), &k.as_view()),
                        1 => conv.grad_input(&spec, &u.as_view(), &k.as_view()),
                        _ => conv.grad_kernel(&spec, &u.as_view(), &u.as_view()),
                    }
                    .expect("conv");
                    st.synchronize().expect("sync");
                    *slot = t.elapsed().as_secs_f64() * 1e3;
                    drop(out);
                }
                if rep > 0 {
                    for op in 0..3 {
                        best[v][op] = best[v][op].min(t3[op]);
                    }
                }
            }
        }
        for (op, name) in ["y", "du", "dk"].iter().enumerate() {
            let outputs = if op == 2 {
                CausalConv::outputs_for(spec.batch_groups().0 * channels, taps)
            } else {
                CausalConv::outputs_for(rows, len)
            };
            println!(
                "{:<28} {:>4} {:>10.3} {:>10.3} {:>10.3} {:>8} {:>7.1}x {:>9.1} {:>9} {:>8} {:>7}",
                format!("B{batch} C{channels} L{len} K{taps}"),
                name,
                best[0][op],
                best[1][op],
                best[2][op],
                outputs,
                best[0][op] / best[2][op],
                flops / (best[2][op] * 1e-3) / 1e12,
                if fft {
                    format!("{:.3}", best[3][op])
                } else {
                    "-".into()
                },
                if fft {
                    format!("{:.2}x", best[2][op] / best[3][op])
                } else {
                    "-".into()
                },
                if fft && fft_pays(&spec, op == 2) {
                    "FFT"
                } else {
                    "direct"
                }
            );
        }
    }
}
