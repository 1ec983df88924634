//! Mamba / S6 — filled in by the Mamba work.
