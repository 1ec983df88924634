//! Dense kernels of the step path, written so that the compiler vectorizes them: every inner
//! loop is an elementwise `axpy` over contiguous memory (no reductions whose order would have to
//! be preserved), and every loop is a `zip`, so mismatched lengths truncate instead of panicking.
//! Matrices are row-major; a matrix "stored transposed" has one row per *input* element.

/// Width of the register-resident output block of [`gemv_t_segments`]: 64 `f32` are four
/// AVX-512 or eight AVX2 registers, or 16 Cortex-M4 FPU registers' worth of scalar work.
pub const BLOCK: usize = 64;

/// `out[j] += Σ_i x[i] · mt[i·cols + j]` with `cols = out.len()`, i.e. `out += Mᵀ x` for a
/// matrix `M` stored as `mt` with one row of `cols` entries per element of `x`.
#[inline]
pub fn gemv_t_acc(out: &mut [f32], mt: &[f32], x: &[f32]) {
    gemv_t_segments(out, &[(mt, x)]);
}

/// `out += Σ_k M_kᵀ v_k` for segments `(m_k, v_k)`, each `m_k` stored with one row of
/// `out.len()` entries per element of `v_k`: the same as [`gemv_t_acc`] over the row-wise
/// concatenation of the matrices and vectors, without concatenating them.
///
/// The output is processed in blocks of [`BLOCK`] entries held in registers while every row of
/// every segment streams past, so each output is loaded and stored once per call, and each
/// output's sum is accumulated in row order (the result does not depend on the block width).
#[inline]
pub fn gemv_t_segments(out: &mut [f32], segments: &[(&[f32], &[f32])]) {
    let cols = out.len();
    if cols == 0 {
        return;
    }
    let mut start = 0;
    while start + BLOCK <= cols {
        let mut acc = [0.0f32; BLOCK];
        acc.copy_from_slice(&out[start..start + BLOCK]);
        for (m, v) in segments {
            for (row, &xi) in m.chunks_exact(cols).zip(v.iter()) {
                if let Some(Ok(r)) = row.get(start..start + BLOCK).map(<&[f32; BLOCK]>::try_from) {
                    for k in 0..BLOCK {
                        acc[k] += xi * r[k];
                    }
                }
            }
        }
        out[start..start + BLOCK].copy_from_slice(&acc);
        start += BLOCK;
    }
    if start < cols {
        let tail = &mut out[start..];
        for (m, v) in segments {
            for (row, &xi) in m.chunks_exact(cols).zip(v.iter()) {
                for (o, &w) in tail.iter_mut().zip(&row[start..]) {
                    *o += xi * w;
                }
            }
        }
    }
}

/// Two outputs from one pass over `x`: `out_a += Maᵀ x` and `out_b += Mbᵀ x` (used for the real
/// and imaginary parts of a complex input matrix).
#[inline]
pub fn gemv_t_acc2(out_a: &mut [f32], out_b: &mut [f32], ma_t: &[f32], mb_t: &[f32], x: &[f32]) {
    let cols = out_a.len();
    if cols == 0 || out_b.len() != cols {
        return;
    }
    for ((ra, rb), &xi) in ma_t.chunks_exact(cols).zip(mb_t.chunks_exact(cols)).zip(x) {
        for ((oa, ob), (&a, &b)) in out_a
            .iter_mut()
            .zip(out_b.iter_mut())
            .zip(ra.iter().zip(rb))
        {
            *oa += xi * a;
            *ob += xi * b;
        }
    }
}

/// `out[j] += Σ_i (xa[i]·ma_t[i, j] + xb[i]·mb_t[i, j])`: the real part of `C h` for complex `C`
/// and `h` when `ma_t = Re Cᵀ`, `mb_t = −Im Cᵀ`, `xa = Re h`, `xb = Im h`.
#[inline]
pub fn gemv_t_acc_pair(out: &mut [f32], ma_t: &[f32], mb_t: &[f32], xa: &[f32], xb: &[f32]) {
    let cols = out.len();
    if cols == 0 {
        return;
    }
    for ((ra, rb), (&a, &b)) in ma_t
        .chunks_exact(cols)
        .zip(mb_t.chunks_exact(cols))
        .zip(xa.iter().zip(xb))
    {
        for (o, (&p, &q)) in out.iter_mut().zip(ra.iter().zip(rb)) {
            *o += a * p + b * q;
        }
    }
}

/// Complex elementwise product in place, split layout: `(re, im) ← (a_re, a_im) ⊙ (re, im)`.
#[inline]
pub fn cmul_diag(re: &mut [f32], im: &mut [f32], a_re: &[f32], a_im: &[f32]) {
    for ((r, i), (&ar, &ai)) in re.iter_mut().zip(im.iter_mut()).zip(a_re.iter().zip(a_im)) {
        let (hr, hi) = (*r, *i);
        *r = ar * hr - ai * hi;
        *i = ar * hi + ai * hr;
    }
}

/// `out[i] += d[i] · x[i]`.
#[inline]
pub fn diag_acc(out: &mut [f32], d: &[f32], x: &[f32]) {
    for (o, (&di, &xi)) in out.iter_mut().zip(d.iter().zip(x)) {
        *o += di * xi;
    }
}

/// Writes `mᵀ` (a `cols × rows` matrix) from the row-major `rows × cols` matrix `m`.
pub fn transpose_into(dst: &mut [f32], m: &[f32], rows: usize, cols: usize) {
    for (r, row) in m.chunks_exact(cols).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            if let Some(d) = dst.get_mut(c * rows + r) {
                *d = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_t_matches_naive() {
        let (rows, cols) = (5, 3);
        let m: [f32; 15] = core::array::from_fn(|i| (i as f32 * 0.37).sin());
        let x = [0.5f32, -1.0, 2.0, 0.25, 3.0];
        let mut out = [1.0f32; 3];
        gemv_t_acc(&mut out, &m, &x);
        for j in 0..cols {
            let want: f32 = 1.0 + (0..rows).map(|i| x[i] * m[i * cols + j]).sum::<f32>();
            assert!((out[j] - want).abs() < 1e-6);
        }
        let mut t = [0.0f32; 15];
        transpose_into(&mut t, &m, rows, cols);
        assert_eq!(t[2 * rows + 4], m[4 * cols + 2]);
    }

    #[test]
    fn blocked_segments_match_naive_for_all_widths() {
        // Widths below, at and above the block (with a tail), two segments.
        for cols in [1usize, 7, 64, 65, 130] {
            let (r1, r2) = (3usize, 5usize);
            let m1: [f32; 3 * 130] = core::array::from_fn(|i| (i as f32 * 0.11).cos());
            let m2: [f32; 5 * 130] = core::array::from_fn(|i| (i as f32 * 0.07).sin());
            let (v1, v2) = ([0.5f32, -1.5, 2.0], [1.0f32, 0.25, -0.75, 3.0, -2.0]);
            let mut out = [0.0f32; 130];
            for (j, o) in out.iter_mut().enumerate() {
                *o = j as f32 * 0.01;
            }
            let mut got = out;
            gemv_t_segments(
                &mut got[..cols],
                &[(&m1[..r1 * cols], &v1), (&m2[..r2 * cols], &v2)],
            );
            for j in 0..cols {
                let mut want = out[j] as f64;
                for i in 0..r1 {
                    want += v1[i] as f64 * m1[i * cols + j] as f64;
                }
                for i in 0..r2 {
                    want += v2[i] as f64 * m2[i * cols + j] as f64;
                }
                assert!((got[j] as f64 - want).abs() < 1e-5, "cols {cols} j {j}");
            }
        }
    }

    #[test]
    fn pair_is_real_part_of_complex_product() {
        // C (2×2 complex) times h (2 complex), real part.
        let c = [(1.0f32, 2.0f32), (-0.5, 0.25), (3.0, -1.0), (0.0, 1.0)]; // row-major (o, n)
        let h = [(0.3f32, -0.7f32), (1.1, 0.4)];
        let mut re_t = [0.0f32; 4];
        let mut nim_t = [0.0f32; 4];
        for o in 0..2 {
            for n in 0..2 {
                re_t[n * 2 + o] = c[o * 2 + n].0;
                nim_t[n * 2 + o] = -c[o * 2 + n].1;
            }
        }
        let mut out = [0.0f32; 2];
        gemv_t_acc_pair(
            &mut out,
            &re_t,
            &nim_t,
            &[h[0].0, h[1].0],
            &[h[0].1, h[1].1],
        );
        for o in 0..2 {
            let want: f32 = (0..2)
                .map(|n| c[o * 2 + n].0 * h[n].0 - c[o * 2 + n].1 * h[n].1)
                .sum();
            assert!((out[o] - want).abs() < 1e-6);
        }
    }
}
