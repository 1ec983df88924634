//! GPU correctness of the causal convolution (`lrnnx_kernels::conv`; needs a CUDA device, prints
//! a skip reason and returns without one): `y`, `∂u` and `∂k` at every outputs-a-thread choice
//! (each of `OUTPUTS_PER_THREAD` and the automatic one) against direct f64 sums written here (1e-5 of the
//! reference's largest value), on shapes with kernels shorter than, as long as and longer than
//! the signal, lengths that end mid tile, and several tiles a row; and every choice gives
//! bitwise the results of one output a thread (the same sums in the same order). The FFT path
//! (cuFFT) against the same f64 sums, up to L = K = 16384, two runs bit-identical, and
//! `ConvMethod::Auto` taking it exactly where `fft_pays` says.
#![cfg(feature = "cuda")]

mod common;
use common::{f32v, rel, Rng};

use cudarc::driver::{CudaSlice, CudaStream};
use lrnnx_kernels::conv::{fft_pays, CausalConv, ConvMethod, ConvSpec, OUTPUTS_PER_THREAD};
use lrnnx_kernels::fft::cufft_available;
use std::sync::Arc;

/// `y`, `∂u`, `∂k` of the module doc of `conv`, in f64.
fn reference(s: &ConvSpec, u: &[f64], k: &[f64], g: &[f64]) -> [Vec<f64>; 3] {
    let (l, kk) = (s.len, s.taps);
    let mut y = vec![0.0; u.len()];
    let mut du = vec![0.0; u.len()];
    let mut dk = vec![0.0; k.len()];
    for row in 0..s.batch * s.channels {
        let c = row % s.channels;
        let (ur, gr, kr) = (
            &u[row * l..(row + 1) * l],
            &g[row * l..(row + 1) * l],
            &k[c * kk..(c + 1) * kk],
        );
        for t in 0..l {
            for (j, &kv) in kr.iter().enumerate().take(t + 1) {
                y[row * l + t] += kv * ur[t - j];
                dk[c * kk + j] += gr[t] * ur[t - j];
            }
            for (j, &kv) in kr.iter().enumerate().take(l - t) {
                du[row * l + t] += kv * gr[t + j];
            }
        }
    }
    [y, du, dk]
}

#[test]
fn every_tiling_matches_f64_and_one_output_a_thread() {
    if common::no_gpu() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let st = ctx.default_stream();
    let mut conv = CausalConv::with_stream(st.clone());
    conv.method = ConvMethod::Direct;
    // (batch, C, L, K)
    let shapes = [
        (1, 1, 1, 1),
        (2, 3, 37, 5),
        (2, 3, 37, 100),
        (1, 2, 1000, 1000),
        (3, 4, 2049, 300),
        (2, 2, 5000, 5000),
        (1, 1, 300, 4096),
    ];
    let mut rng = Rng(29);
    let mut worst = [0.0f64; 3];
    for &(batch, channels, len, taps) in &shapes {
        let spec = ConvSpec {
            batch,
            channels,
            len,
            taps,
        };
        let u = rng.vec(spec.signal_len(), -1.0, 1.0);
        let k = rng.vec(spec.kernel_len(), -1.0, 1.0);
        let g = rng.vec(spec.signal_len(), -1.0, 1.0);
        let want = reference(&spec, &u, &k, &g);
        let (du_, dk_, dg_) = (
            st.clone_htod(&f32v(&u)).unwrap(),
            st.clone_htod(&f32v(&k)).unwrap(),
            st.clone_htod(&f32v(&g)).unwrap(),
        );
        let mut one: Option<[Vec<f32>; 3]> = None;
        // one output a thread first (the bitwise reference), then the others and the automatic
        let mut forced = OUTPUTS_PER_THREAD.to_vec();
        forced.sort_unstable();
        let choices = forced.into_iter().map(Some).chain([None]);
        for choice in choices {
            conv.outputs_per_thread = choice;
            let y = conv.forward(&spec, &du_.as_view(), &dk_.as_view()).unwrap();
            let gu = conv
                .grad_input(&spec, &dg_.as_view(), &dk_.as_view())
                .unwrap();
            let gk = conv
                .grad_kernel(&spec, &dg_.as_view(), &du_.as_view())
                .unwrap();
            let got = [
                st.clone_dtoh(&y).unwrap(),
                st.clone_dtoh(&gu).unwrap(),
                st.clone_dtoh(&gk).unwrap(),
            ];
            let what = format!("B{batch} C{channels} L{len} K{taps} outputs {choice:?}");
            for (i, name) in ["y", "du", "dk"].iter().enumerate() {
                let r = rel(&got[i], &want[i]);
                assert!(r <= 1e-5, "{what} {name}: {r:.3e}");
                worst[i] = worst[i].max(r);
            }
            match &one {
                None => one = Some(got),
                Some(base) => {
                    for (i, name) in ["y", "du", "dk"].iter().enumerate() {
                        assert!(
                            base[i] == got[i],
                            "{what} {name}: differs from one output a thread"
                        );
                    }
                }
            }
        }
    }
    conv.outputs_per_thread = Some(3);
    let spec = ConvSpec {
        batch: 1,
        channels: 1,
        len: 4,
        taps: 2,
    };
    let (x, kx) = (
        st.clone_htod(&[0f32; 4]).unwrap(),
        st.clone_htod(&[0f32; 2]).unwrap(),
    );
    let Err(err) = conv.forward(&spec, &x.as_view(), &kx.as_view()) else {
        panic!("3 outputs a thread is accepted");
    };
    assert!(err.0.contains("outputs a thread"), "{}", err.0);
    println!(
        "worst relative error over {} shapes × every tiling: y {:.2e}, du {:.2e}, dk {:.2e}; \
         outputs a thread {OUTPUTS_PER_THREAD:?}",
        shapes.len(),
        worst[0],
        worst[1],
        worst[2]
    );
}

/// `[y, ∂u, ∂k]` of `conv` on device copies of `u`, `k`, `g` (`k` a view at `k_at` of its
/// buffer), left on the device.
fn launch_all(
    conv: &CausalConv,
    spec: &ConvSpec,
    dev: &[CudaSlice<f32>; 3],
    k_at: usize,
) -> [CudaSlice<f32>; 3] {
    let [u, k, g] = dev;
    let kv = k.slice(k_at..k_at + spec.kernel_len());
    [
        conv.forward(spec, &u.as_view(), &kv).unwrap(),
        conv.grad_input(spec, &g.as_view(), &kv).unwrap(),
        conv.grad_kernel(spec, &g.as_view(), &u.as_view()).unwrap(),
    ]
}

fn read_all(st: &Arc<CudaStream>, out: &[CudaSlice<f32>; 3]) -> [Vec<f32>; 3] {
    [
        st.clone_dtoh(&out[0]).unwrap(),
        st.clone_dtoh(&out[1]).unwrap(),
        st.clone_dtoh(&out[2]).unwrap(),
    ]
}

/// The FFT path on a non-blocking stream (as candle's), every shape queued before anything is
/// read back (so plans are made and evicted while transforms are in flight), `k` a view at an
/// offset; then each shape against f64, a second run bit-identical, and `Auto` against both.
#[test]
fn fft_matches_f64_and_auto_switches_at_the_threshold() {
    if common::no_gpu() {
        return;
    }
    if !cufft_available() {
        if std::env::var("LRNNX_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("LRNNX_REQUIRE_CUDA=1 but cuFFT (libcufft) does not load");
        }
        println!("SKIPPED: cuFFT (libcufft) not loadable; set LRNNX_CUFFT to its path");
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let st = ctx.new_stream().unwrap();
    let mut conv = CausalConv::with_stream(st.clone());
    // (batch, C, L, K): short and long kernels, K > L, odd lengths, one and many rows
    let mut shapes = vec![
        (1, 1, 1, 1),
        (2, 3, 37, 5),
        (2, 3, 37, 100),
        (1, 2, 1000, 1000),
        (3, 4, 2049, 300),
        (2, 2, 5000, 5000),
        (1, 1, 300, 4096),
        (4, 5, 777, 63),
        (4, 5, 777, 64),
        (2, 3, 4096, 545),
        (2, 3, 4096, 546),
        (1, 2, 16384, 16384),
    ];
    // more shapes than the plan cache holds (4 plans a shape): evictions while queued
    let extra = (lrnnx_kernels::fft::MAX_PLANS / 4).saturating_sub(shapes.len()) + 2;
    shapes.extend((0..extra).map(|i| (2, 2, 600 + 40 * i, 300 + 20 * i)));
    let mut rng = Rng(31);
    let k_at = 7;
    let mut cases = Vec::new();
    conv.method = ConvMethod::Fft;
    for &(batch, channels, len, taps) in &shapes {
        let spec = ConvSpec {
            batch,
            channels,
            len,
            taps,
        };
        let u = rng.vec(spec.signal_len(), -1.0, 1.0);
        let k = rng.vec(spec.kernel_len() + k_at, -1.0, 1.0);
        let g = rng.vec(spec.signal_len(), -1.0, 1.0);
        let dev = [
            st.clone_htod(&f32v(&u)).unwrap(),
            st.clone_htod(&f32v(&k)).unwrap(),
            st.clone_htod(&f32v(&g)).unwrap(),
        ];
        let out = launch_all(&conv, &spec, &dev, k_at);
        cases.push((spec, u, k[k_at..].to_vec(), g, dev, out));
    }
    let mut worst = [0.0f64; 3];
    for (spec, u, k, g, dev, out) in &cases {
        let what = format!(
            "B{} C{} L{} K{}",
            spec.batch, spec.channels, spec.len, spec.taps
        );
        let want = reference(spec, u, k, g);
        let fft = read_all(&st, out);
        for (i, name) in ["y", "du", "dk"].iter().enumerate() {
            let r = rel(&fft[i], &want[i]);
            assert!(r <= 1e-5, "{what} FFT {name}: {r:.3e}");
            worst[i] = worst[i].max(r);
        }
        conv.method = ConvMethod::Fft;
        let again = read_all(&st, &launch_all(&conv, spec, dev, k_at));
        assert!(again == fft, "{what}: two FFT runs differ");
        conv.method = ConvMethod::Direct;
        let direct = read_all(&st, &launch_all(&conv, spec, dev, k_at));
        conv.method = ConvMethod::Auto;
        let auto = read_all(&st, &launch_all(&conv, spec, dev, k_at));
        for (i, name) in ["y", "du", "dk"].iter().enumerate() {
            let expect = if fft_pays(spec, i == 2) {
                &fft[i]
            } else {
                &direct[i]
            };
            assert!(
                &auto[i] == expect,
                "{what} {name}: Auto did not take the expected path"
            );
        }
    }
    assert!(conv.fft_error().is_none(), "{:?}", conv.fft_error());
    println!(
        "FFT: worst relative error over {} shapes: y {:.2e}, du {:.2e}, dk {:.2e}",
        shapes.len(),
        worst[0],
        worst[1],
        worst[2]
    );
}
