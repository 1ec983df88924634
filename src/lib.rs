//! # lrnnx for Rust
//!
//! Linear RNN / state-space-model layers that train in parallel and step sample by sample on
//! anything from a GPU to a microcontroller. This root crate re-exports the workspace crates and
//! hosts what ties them together: the lrnnx importer and the golden-case checker.
//!
//! * [`core`] (`lrnnx-core`): `no_std`, allocation-free step recurrences and discretizers.
//! * [`train`] (`lrnnx-train`): candle layers trained in parallel, gradients by autodiff.
//! * [`stream`] (`lrnnx-stream`): sample-by-sample audio and event pipelines on the core.
//! * [`import`]: builds core layers from lrnnx (PyTorch) state dicts by class name.
//! * [`golden`]: loads lrnnx reference cases and checks implementations against them.
//! * [`export`]: trained layers to the core's stepping layout, as a blob or as Rust source.
//! * [`export_lm`]: the language model in the core (from a trained model or lrnnx weights), as a blob.
//! * [`firmware`]: the model of the Cortex-M firmware example, as generated Rust source.

#![deny(missing_docs)]

pub use lrnnx_core as core;
pub use lrnnx_stream as stream;
pub use lrnnx_train as train;

mod blob;
pub mod export;
pub mod export_lm;
pub mod export_network;
pub mod firmware;
pub mod golden;
pub mod import;
pub mod safetensors_io;
