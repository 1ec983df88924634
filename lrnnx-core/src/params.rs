//! Parameter sources: how a layer reads lrnnx's state dict (names and layouts unchanged).
//!
//! A layer's `from_lrnnx` constructor asks a [`ParamSource`] for each tensor by its lrnnx
//! state-dict key, checks its shape, and discretizes once into the layer's weight buffer.
//! The source can be anything: a safetensors file (in the std crates), a list of static slices
//! on a microcontroller ([`SliceParams`]), or a prefixed view into a bigger model ([`Prefixed`]).

use crate::error::{Dims, Error, Result};

/// A borrowed float32 tensor: row-major data and its shape.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Row-major elements (`shape.iter().product()` of them).
    pub data: &'a [f32],
    /// Dimensions, outermost first.
    pub shape: &'a [usize],
}

/// Something that yields lrnnx parameter tensors by state-dict key.
pub trait ParamSource {
    /// The tensor stored under `name`, if present.
    fn tensor(&self, name: &str) -> Option<TensorView<'_>>;
}

impl<P: ParamSource + ?Sized> ParamSource for &P {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        (**self).tensor(name)
    }
}

/// A fixed list of `(key, tensor)` pairs; usable without allocation.
#[derive(Debug, Clone, Copy)]
pub struct SliceParams<'a> {
    /// The entries.
    pub entries: &'a [(&'a str, TensorView<'a>)],
}

impl ParamSource for SliceParams<'_> {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, t)| *t)
    }
}

/// Looks keys up under `prefix` (for a layer inside a bigger model, e.g. `backbone.layers.0.mixer.`).
#[derive(Debug, Clone, Copy)]
pub struct Prefixed<'p, P> {
    /// The prefix, including its trailing dot.
    pub prefix: &'p str,
    /// The underlying source.
    pub inner: P,
}

impl<P: ParamSource> ParamSource for Prefixed<'_, P> {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        // Join without allocation: keys are short, so a fixed stack buffer suffices.
        let mut buf = [0u8; 256];
        let (p, n) = (self.prefix.as_bytes(), name.as_bytes());
        if p.len() + n.len() > buf.len() {
            return None;
        }
        buf[..p.len()].copy_from_slice(p);
        buf[p.len()..p.len() + n.len()].copy_from_slice(n);
        let key = core::str::from_utf8(&buf[..p.len() + n.len()]).ok()?;
        self.inner.tensor(key)
    }
}

/// Fetches `name` and checks that its shape is exactly `shape` and its values are finite.
pub fn require<'s, P: ParamSource + ?Sized>(
    src: &'s P,
    name: &'static str,
    shape: &[usize],
) -> Result<&'s [f32]> {
    let t = src.tensor(name).ok_or(Error::MissingTensor { name })?;
    if t.shape != shape {
        return Err(Error::TensorShape {
            name,
            expected: Dims::new(shape),
            got: Dims::new(t.shape),
        });
    }
    // The shape is the expected one, so its product is a size the layer already validated.
    let numel = shape.iter().fold(1usize, |p, &d| p.saturating_mul(d));
    if t.data.len() != numel {
        return Err(Error::BufferLength {
            what: name,
            expected: numel,
            got: t.data.len(),
        });
    }
    if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteParameter { name, index });
    }
    Ok(t.data)
}

/// Like [`require`], but accepts the tensor under any of several equivalent shapes (for example
/// a scalar buffer stored as `()` or `(1,)`), returning its data.
pub fn require_any_shape<'s, P: ParamSource + ?Sized>(
    src: &'s P,
    name: &'static str,
    shapes: &[&[usize]],
) -> Result<&'s [f32]> {
    let t = src.tensor(name).ok_or(Error::MissingTensor { name })?;
    match shapes.iter().find(|s| **s == t.shape) {
        Some(s) => require(src, name, s),
        None => Err(Error::TensorShape {
            name,
            expected: Dims::new(shapes.first().copied().unwrap_or(&[])),
            got: Dims::new(t.shape),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_checks_presence_shape_and_finiteness() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let bad = [1.0f32, f32::NAN];
        let entries = [
            (
                "a",
                TensorView {
                    data: &a,
                    shape: &[2, 2],
                },
            ),
            (
                "bad",
                TensorView {
                    data: &bad,
                    shape: &[2],
                },
            ),
        ];
        let src = SliceParams { entries: &entries };
        assert_eq!(require(&src, "a", &[2, 2]).unwrap(), &a);
        assert_eq!(
            require(&src, "a", &[4]).unwrap_err(),
            Error::TensorShape {
                name: "a",
                expected: Dims::new(&[4]),
                got: Dims::new(&[2, 2])
            }
        );
        assert_eq!(
            require(&src, "b", &[4]).unwrap_err(),
            Error::MissingTensor { name: "b" }
        );
        assert_eq!(
            require(&src, "bad", &[2]).unwrap_err(),
            Error::NonFiniteParameter {
                name: "bad",
                index: 1
            }
        );
    }

    #[test]
    fn prefixed_joins_keys() {
        let a = [5.0f32];
        let entries = [(
            "block.0.a",
            TensorView {
                data: &a,
                shape: &[1],
            },
        )];
        let src = Prefixed {
            prefix: "block.0.",
            inner: SliceParams { entries: &entries },
        };
        assert_eq!(src.tensor("a").unwrap().data, &a);
        assert!(src.tensor("b").is_none());
    }
}
