//! S5 time-varying — filled in by the LTV work.
