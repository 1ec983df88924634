//! The causal convolution where cuFFT does not load (`LRNNX_CUFFT` set to a missing file before
//! first use; this file's only test, so no other test sees the setting): `cufft_available` is
//! false, `ConvMethod::Auto` gives bit for bit the direct sums at sizes where it would take the
//! FFT, and `ConvMethod::Fft` is refused with an error naming the library and the setting.
//! Needs a CUDA device for the last two (prints a skip reason without one).
#![cfg(feature = "cuda")]

mod common;
use common::{f32v, Rng};

use lrnnx_kernels::conv::{fft_pays, CausalConv, ConvMethod, ConvSpec};
use lrnnx_kernels::fft::cufft_available;

#[test]
fn without_cufft_auto_runs_direct_and_fft_is_refused() {
    std::env::set_var("LRNNX_CUFFT", "/nonexistent/libcufft.so");
    assert!(!cufft_available());
    if common::no_gpu() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let st = ctx.new_stream().unwrap();
    let mut conv = CausalConv::with_stream(st.clone());
    let spec = ConvSpec {
        batch: 2,
        channels: 3,
        len: 2048,
        taps: 2048,
    };
    assert!(fft_pays(&spec, false) && fft_pays(&spec, true));
    let mut rng = Rng(5);
    let u = st
        .clone_htod(&f32v(&rng.vec(spec.signal_len(), -1.0, 1.0)))
        .unwrap();
    let k = st
        .clone_htod(&f32v(&rng.vec(spec.kernel_len(), -1.0, 1.0)))
        .unwrap();
    let run = |conv: &CausalConv| {
        let y = conv.forward(&spec, &u.as_view(), &k.as_view())?;
        let du = conv.grad_input(&spec, &u.as_view(), &k.as_view())?;
        let dk = conv.grad_kernel(&spec, &u.as_view(), &u.as_view())?;
        Ok::<_, lrnnx_kernels::ScanError>([
            st.clone_dtoh(&y).unwrap(),
            st.clone_dtoh(&du).unwrap(),
            st.clone_dtoh(&dk).unwrap(),
        ])
    };
    conv.method = ConvMethod::Direct;
    let direct = run(&conv).unwrap();
    conv.method = ConvMethod::Auto;
    assert!(
        run(&conv).unwrap() == direct,
        "Auto without cuFFT is not the direct sums"
    );
    conv.method = ConvMethod::Fft;
    let Err(e) = run(&conv) else {
        panic!("ConvMethod::Fft ran without cuFFT");
    };
    println!("refused: {}", e.0);
    assert!(
        e.0.contains("/nonexistent/libcufft.so") && e.0.contains("LRNNX_CUFFT"),
        "{}",
        e.0
    );
}
