//! S4 (DPLR) — filled in by the S4 work.
