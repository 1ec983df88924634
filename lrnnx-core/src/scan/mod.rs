//! Scan primitives over whole sequences (the sequential reference semantics of lrnnx's scan
//! ops): selective scan, simplified (S5) scan, RG-LRU scan, S7 scan.

pub mod rglru;
pub mod s7;
pub mod selective;
pub mod simplified;
