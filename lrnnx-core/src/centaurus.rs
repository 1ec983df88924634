//! Centaurus — filled in by the Centaurus work.
