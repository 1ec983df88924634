//! RG-LRU — filled in by the LTV work.
