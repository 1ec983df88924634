//! Elementwise functions with PyTorch's definitions, as candle ops (autodiff flows through).

use candle_core::{Result, Tensor};

/// PyTorch's softplus with threshold 20: `ln(1 + eˣ)` for `x ≤ 20`, `x` above; evaluated as
/// `max(x, 0) + ln(1 + e^{−|x|})` (no overflow).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let stable = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let above = x.gt(20.0)?;
    above.where_cond(x, &stable)
}
