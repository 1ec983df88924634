//! S7 — filled in by the LTV work.
