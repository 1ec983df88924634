//! The CPU paths of the custom ops that compute in f64 whatever their operands' dtype (S4's
//! solve, S4D's Vandermonde kernel): f32 or f64 storages read as f64 and results written back
//! in the operands' dtype.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

/// The contiguous values of operand `name` of `op` (f32 or f64) as f64.
pub(crate) fn values(op: &str, s: &CpuStorage, l: &Layout, name: &str) -> Result<Vec<f64>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: `{name}` must be contiguous");
    };
    Ok(match s {
        CpuStorage::F32(v) => v[start..end].iter().map(|&x| f64::from(x)).collect(),
        CpuStorage::F64(v) => v[start..end].to_vec(),
        _ => bail!("{op}: `{name}` must be f32 or f64, got {:?}", s.dtype()),
    })
}

/// `out` in the dtype of `like` (rounded to f32 for an f32 operand).
pub(crate) fn storage(out: Vec<f64>, like: &CpuStorage) -> CpuStorage {
    match like {
        CpuStorage::F32(_) => CpuStorage::F32(out.into_iter().map(|x| x as f32).collect()),
        _ => CpuStorage::F64(out),
    }
}

/// An error unless every operand of `op` has the first one's dtype.
pub(crate) fn same_dtype(op: &str, operands: &[&CpuStorage]) -> Result<()> {
    if let Some((first, rest)) = operands.split_first() {
        if let Some(other) = rest.iter().find(|s| s.dtype() != first.dtype()) {
            bail!(
                "{op}: operands must have one dtype, got {:?} and {:?}",
                first.dtype(),
                other.dtype()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Shape;

    #[test]
    fn reads_the_layouts_range_and_writes_back_in_the_operands_dtype() {
        let l = Layout::contiguous_with_offset(Shape::from(2), 1);
        let s = CpuStorage::F32(vec![9.0, 1.5, -2.0, 7.0]);
        assert_eq!(values("op", &s, &l, "x").unwrap(), vec![1.5, -2.0]);
        match storage(vec![0.1, 2.0], &s) {
            CpuStorage::F32(v) => assert_eq!(v, vec![0.1f32, 2.0]),
            o => panic!("{:?}", o.dtype()),
        }
        let d = CpuStorage::F64(vec![0.25]);
        assert!(same_dtype("op", &[&s, &d]).is_err());
        assert!(same_dtype("op", &[&d, &d]).is_ok());
        let strided = Layout::contiguous(Shape::from((2, 2)))
            .transpose(0, 1)
            .unwrap();
        let e = values("op", &s, &strided, "x").unwrap_err().to_string();
        assert!(e.contains("contiguous"), "{e}");
        let e = values("op", &CpuStorage::U8(vec![1]), &Layout::contiguous(1), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f32 or f64"), "{e}");
    }
}
