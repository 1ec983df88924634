//! S4D — filled in by the S4 work.
