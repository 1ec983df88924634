//! Golden op cases of the rglru scan — filled in by the LTV work.

use super::super::{Case, Line};

/// Report lines for one op case (empty = unsupported).
pub fn check(_case: &Case) -> Vec<Line> {
    Vec::new()
}
