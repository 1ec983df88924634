//! # lrnnx-train
//!
//! The training side of lrnnx for Rust, on candle: the parallel forward of every layer (a
//! diagonal linear recurrence over the whole sequence, as a custom op with a hand-written
//! backward, surrounded by ordinary candle ops for discretization, projections and gates).
//!
//! * [`complex`]: complex tensors as `(re, im)` pairs (candle has no complex dtype).
//! * [`scan`]: `h_t = a_t ⊙ h_{t−1} + u_t`, real and complex, forward and backward.
//! * [`fftconv`]: causal convolution by FFT (S4's kernel), forward and backward.
//! * [`pointwise`]: fused GELUs (with a bias, twice in a row) and axis swaps, one pass each way.
//! * [`vandermonde`]: S4D's convolution kernel `2·Re Σ_n w·z^t` as one op (used on CUDA).
//! * [`layer`]: the [`TrainLayer`] interface and [`build`] from lrnnx's class name; one module
//!   per layer ([`s5_lti`], ...), parameters under lrnnx's names ([`Params`]).
//! * With the `cuda` feature, every layer trains on candle's CUDA device (f32): the fused
//!   selective scan (Mamba), the linear scan and the causal convolution (S4 / S4D) run
//!   `lrnnx-kernels`' CUDA kernels.
//! * [`bidirectional`]: any layer run forward and backward in time, merged (not causal).
#![deny(missing_docs)]

pub mod bidirectional;
pub mod centaurus;
pub mod checkpoint;
pub mod classifier;
pub mod complex;
pub mod denoiser;
pub mod fftconv;
#[cfg(feature = "cuda")]
mod gpu;
mod host_f64;
pub mod init;
pub mod layer;
pub mod lm;
pub mod lru;
pub mod mamba;
pub mod network;
pub mod ops;
pub mod optim;
pub mod params;
pub mod pointwise;
pub mod rglru;
pub mod s4;
pub mod s4d;
pub mod s5_lti;
pub mod s5_ltv;
pub mod s7;
pub mod scan;
pub mod selective;
pub mod trainer;
pub mod vandermonde;

pub use layer::{build, BuildError, TrainLayer};
pub use params::Params;

pub use candle_core;
