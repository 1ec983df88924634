//! # lrnnx-stream
//!
//! Sample-by-sample (and block-by-block) processing of audio and event streams on
//! [`lrnnx_core`] layers, under real-time rules: no allocation, locks or I/O on the processing
//! path, denormals kept out of the recurrence, bounded time per sample.
//!
//! * [`processor`]: a model and its state; samples or blocks in, samples out; reset, save and
//!   restore.
//! * [`denormal`]: flush-to-zero around processing, and a state floor.
//! * [`wav`]: WAV files in and out (mono or multichannel; 8- to 32-bit integer or float in, 16-bit
//!   or float out).
//! * [`events`]: event-camera files (AEDAT 4.0, EVT 3.0) and the event pipeline.
//! * [`classify`]: streaming classification of event sequences (a running pool of a low-rate
//!   model's output frames).

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod classify;
pub mod denormal;
pub mod events;
pub mod processor;
pub mod wav;

pub use classify::{FramePooling, StreamClassifier};
pub use processor::{Processor, StreamError};
