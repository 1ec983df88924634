//! Complex tensors for candle, which has no complex dtype: a pair of real tensors `(re, im)`
//! of the same shape, with the few operations the layers need. Autodiff flows through the real
//! parts; the gradient of a real loss with respect to a complex tensor is reported as the pair
//! `(∂L/∂re, ∂L/∂im)` (PyTorch's convention for `.grad` of complex tensors).

use candle_core::{Result, Tensor};

/// `re + i·im`, elementwise.
#[derive(Debug, Clone)]
pub struct CTensor {
    /// Real part.
    pub re: Tensor,
    /// Imaginary part.
    pub im: Tensor,
}

impl CTensor {
    /// From real and imaginary parts.
    pub fn new(re: Tensor, im: Tensor) -> Self {
        CTensor { re, im }
    }

    /// A real tensor seen as complex (`im = 0`).
    pub fn from_real(re: &Tensor) -> Result<Self> {
        Ok(CTensor {
            im: re.zeros_like()?,
            re: re.clone(),
        })
    }

    /// `self + other` (broadcasting).
    pub fn add(&self, other: &CTensor) -> Result<CTensor> {
        Ok(CTensor {
            re: self.re.broadcast_add(&other.re)?,
            im: self.im.broadcast_add(&other.im)?,
        })
    }

    /// `self · other` (broadcasting): `(ac − bd) + i(ad + bc)`.
    pub fn mul(&self, other: &CTensor) -> Result<CTensor> {
        let re = (self.re.broadcast_mul(&other.re)? - self.im.broadcast_mul(&other.im)?)?;
        let im = (self.re.broadcast_mul(&other.im)? + self.im.broadcast_mul(&other.re)?)?;
        Ok(CTensor { re, im })
    }

    /// `self · r` for a real tensor `r` (broadcasting).
    pub fn mul_real(&self, r: &Tensor) -> Result<CTensor> {
        Ok(CTensor {
            re: self.re.broadcast_mul(r)?,
            im: self.im.broadcast_mul(r)?,
        })
    }

    /// `self / other` (broadcasting): `self · conj(other) / |other|²`.
    pub fn div(&self, other: &CTensor) -> Result<CTensor> {
        let den = (other.re.sqr()? + other.im.sqr()?)?;
        let num = self.mul(&other.conj()?)?;
        Ok(CTensor {
            re: num.re.broadcast_div(&den)?,
            im: num.im.broadcast_div(&den)?,
        })
    }

    /// Complex conjugate.
    pub fn conj(&self) -> Result<CTensor> {
        Ok(CTensor {
            re: self.re.clone(),
            im: self.im.neg()?,
        })
    }

    /// `exp(re + i·im) = e^re·(cos im + i·sin im)`.
    pub fn exp(&self) -> Result<CTensor> {
        let m = self.re.exp()?;
        Ok(CTensor {
            re: (&m * self.im.cos()?)?,
            im: (&m * self.im.sin()?)?,
        })
    }

    /// `self·r + c` elementwise for real scalars: used for `1 ± z/2` forms.
    pub fn affine(&self, mul: f64, add: f64) -> Result<CTensor> {
        Ok(CTensor {
            re: self.re.affine(mul, add)?,
            im: self.im.affine(mul, 0.0)?,
        })
    }

    /// Matrix product with a real matrix on the right: `(re·m) + i(im·m)`.
    pub fn matmul_real(&self, m: &Tensor) -> Result<CTensor> {
        let mo = |t: &Tensor| crate::ops::matmul_operand(t);
        Ok(CTensor {
            re: mo(&self.re)?.broadcast_matmul(m)?,
            im: mo(&self.im)?.broadcast_matmul(m)?,
        })
    }

    /// Matrix product of two complex tensors.
    pub fn matmul(&self, m: &CTensor) -> Result<CTensor> {
        let mo = |t: &Tensor| crate::ops::matmul_operand(t);
        let (sr, si, mr, mi) = (mo(&self.re)?, mo(&self.im)?, mo(&m.re)?, mo(&m.im)?);
        let re = (sr.broadcast_matmul(&mr)? - si.broadcast_matmul(&mi)?)?;
        let im = (sr.broadcast_matmul(&mi)? + si.broadcast_matmul(&mr)?)?;
        Ok(CTensor { re, im })
    }

    /// Packs into one real tensor with a trailing dimension of 2 (`[..., 0]` = re).
    pub fn pack(&self) -> Result<Tensor> {
        Tensor::stack(&[&self.re, &self.im], self.re.rank())
    }

    /// Unpacks a real tensor with a trailing dimension of 2 (any other shape is an error).
    pub fn unpack(t: &Tensor) -> Result<CTensor> {
        if t.dims().last() != Some(&2) {
            candle_core::bail!(
                "a complex tensor packs (re, im) in a trailing axis of 2, got shape {:?}",
                t.dims()
            );
        }
        let last = t.rank() - 1;
        // on CUDA the halves are copied out (candle's CUDA matmul refuses stride-2 operands)
        let half = |i| crate::ops::matmul_operand(&t.narrow(last, i, 1)?.squeeze(last)?);
        Ok(CTensor {
            re: half(0)?,
            im: half(1)?,
        })
    }
}
