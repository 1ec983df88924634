//! # lrnnx-core
//!
//! Step-wise recurrences of linear-RNN / state-space layers, `#![no_std]` and without
//! allocation: the part of lrnnx for Rust that runs on a microcontroller, in a real-time audio
//! callback, or on an event stream.
//!
//! * Every layer is built from lrnnx's own parameters (state-dict names and layouts, through a
//!   [`ParamSource`]) and discretized **once** at construction into a flat `f32` weight buffer
//!   that the caller provides (owned, borrowed, or `static` in flash).
//! * The recurrent state is a caller-owned `[f32]` of [`Layer::state_len`] zeros.
//! * [`Layer::step`] consumes one sample; it checks lengths and finiteness, then runs the
//!   recurrence. It never panics and never allocates.
//! * [`run_sequence`] steps through a whole sequence.
//!
//! Layers (one module each, with its equations and weight layout):
//!
//! | time-invariant | time-varying / event-driven |
//! |---|---|
//! | [`S4`] (DPLR), [`S4d`], [`S5Lti`], [`Lru`], [`Centaurus`] (4 modes) | [`Mamba`] (with STREAM events), [`S5Ltv`] (with Event-SSM events), [`RgLru`], [`S7`] |
//!
//! Discretizers: [`discretize`]. Scan primitives over whole sequences (lrnnx's op semantics):
//! [`scan`]. Branch-free, vectorizable elementary functions for the step path: [`fastmath`],
//! [`fastmath_trig`].
#![no_std]
#![deny(missing_docs)]

pub mod activation;
pub mod any_layer;
pub mod centaurus;
pub mod diag_ssm;
pub mod discretize;
pub mod error;
pub mod fastmath;
pub mod fastmath_trig;
pub mod layer;
pub mod linalg;
pub mod lm;
pub mod lru;
pub mod mamba;
pub mod network;
pub mod norm;
pub mod params;
pub mod rglru;
pub mod s4;
pub mod s4_block;
pub mod s4d;
pub mod s5_lti;
pub mod s5_ltv;
pub mod s7;
pub mod scan;
#[cfg(test)]
pub(crate) mod test_util;

pub use any_layer::{CoreConfig, CoreLayer};
pub use centaurus::{Centaurus, CentaurusConfig, CentaurusMode};
pub use discretize::Discretization;
pub use error::{Dims, Error, Result};
pub use layer::{run_event_sequence, run_sequence, EventLayer, Layer};
pub use lm::{
    Attention, AttentionConfig, GatedMlp, LanguageModel, LmBlock, LmConfig, Mixer, MlpConfig,
    Sampling, SplitMix64,
};
pub use lru::{Lru, LruConfig};
pub use mamba::{Mamba, MambaConfig};
pub use network::{Activation, Dense, DenseConfig, Network, Pooling, Stage, Unpooling};
pub use norm::{Norm, NormConfig, NormKind};
pub use params::{ParamSource, Prefixed, SliceParams, TensorView};
pub use rglru::{RgLru, RgLruConfig};
pub use s4::{S4Config, S4};
pub use s4_block::{ParamTransform, S4Transforms};
pub use s4d::{S4d, S4dConfig};
pub use s5_lti::{S5Lti, S5LtiConfig};
pub use s5_ltv::{S5Ltv, S5LtvConfig};
pub use s7::{S7Config, S7};
