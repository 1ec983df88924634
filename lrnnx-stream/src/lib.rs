//! # lrnnx-stream
//!
//! Sample-by-sample (and block-by-block) processing of audio and event streams on
//! [`lrnnx_core`] layers, under real-time rules: no allocation, locks or I/O on the processing
//! path, denormals kept out of the recurrence, bounded time per sample.

#![deny(missing_docs)]

pub mod events;
