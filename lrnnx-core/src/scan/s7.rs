//! s7 scan — filled in by the LTV work.
