//! Elementwise functions with PyTorch's definitions, as candle ops (autodiff flows through).

use candle_core::{Result, Tensor};

/// `t` laid out contiguously when it lives on a CUDA device (candle's CUDA matmul refuses
/// strided operands such as narrowed columns or the re/im halves of a packed complex tensor);
/// `t` itself elsewhere (the CPU matmul takes any strides, so no copy is made).
pub fn matmul_operand(t: &Tensor) -> Result<Tensor> {
    if t.device().is_cuda() {
        t.contiguous()
    } else {
        Ok(t.clone())
    }
}

/// PyTorch's softplus with threshold 20: `ln(1 + eˣ)` for `x ≤ 20`, `x` above; evaluated as
/// `max(x, 0) + ln(1 + e^{−|x|})` (no overflow).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let stable = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let above = x.gt(20.0)?;
    above.where_cond(x, &stable)
}
