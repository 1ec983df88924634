//! rglru scan — filled in by the LTV work.
