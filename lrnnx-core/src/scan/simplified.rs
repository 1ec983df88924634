//! simplified scan — filled in by the LTV work.
