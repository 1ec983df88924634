//! Dense kernels of the step path, written so that the compiler vectorizes them: every inner
//! loop is an elementwise `axpy` over contiguous memory (no reductions whose order would have to
//! be preserved), and every loop is a `zip`, so mismatched lengths truncate instead of panicking.
//! Matrices are row-major; a matrix "stored transposed" has one row per *input* element.

/// `out[j] += Σ_i x[i] · mt[i·cols + j]` with `cols = out.len()`, i.e. `out += Mᵀ x` for a
/// matrix `M` stored as `mt` with one row of `cols` entries per element of `x`.
///
/// Every output is summed in the same order whatever the target: four partial sums over the
/// rows `i ≡ 0, 1, 2, 3 (mod 4)` (rows past the last whole group of four go to the first),
/// then `out[j] += (s₀ + s₁) + (s₂ + s₃)`. So results are bit-identical across targets
/// (the firmware example checks a Cortex-M against the host bit for bit), while the blocking
/// is chosen per target: a block of `BW` outputs stays in registers while every row streams
/// past, each output loaded and stored once. On x86/aarch64 the blocks are 64, 32, 16, 8 then
/// 4 outputs wide (wide vector registers, and the four independent sums hide the add
/// latency); on 32-bit Arm (Cortex-M4F/M33: 32 scalar single-precision registers, no SIMD) 4
/// outputs × 4 partial sums = 16 accumulators are what fits, so blocks are 4 wide. Columns left
/// over go one at a time. Mismatched lengths truncate, never panic. On 32-bit Arm it is
/// never inlined (one copy keeps microcontroller flash small; the call costs a few
/// instructions against the loop's hundreds).
#[cfg_attr(not(target_arch = "arm"), inline)]
#[cfg_attr(target_arch = "arm", inline(never))]
pub fn gemv_t_acc(out: &mut [f32], mt: &[f32], x: &[f32]) {
    if out.is_empty() {
        return;
    }
    let mut c0 = 0;
    #[cfg(not(target_arch = "arm"))]
    {
        c0 = gemv_t_block::<64>(out, mt, x, c0);
        c0 = gemv_t_block::<32>(out, mt, x, c0);
        c0 = gemv_t_block::<16>(out, mt, x, c0);
        c0 = gemv_t_block::<8>(out, mt, x, c0);
    }
    c0 = gemv_t_block::<4>(out, mt, x, c0);
    gemv_t_block::<1>(out, mt, x, c0);
}

/// Columns `c0..` of [`gemv_t_acc`] in whole blocks of `BW`; returns the first column left.
#[inline(always)]
fn gemv_t_block<const BW: usize>(out: &mut [f32], mt: &[f32], x: &[f32], mut c0: usize) -> usize {
    let cols = out.len();
    while c0 + BW <= cols {
        let (mut a0, mut a1, mut a2, mut a3) =
            ([0.0f32; BW], [0.0f32; BW], [0.0f32; BW], [0.0f32; BW]);
        for (r4, x4) in mt.chunks_exact(4 * cols).zip(x.chunks_exact(4)) {
            let blocks = (
                block::<BW>(r4, c0),
                block::<BW>(r4, cols + c0),
                block::<BW>(r4, 2 * cols + c0),
                block::<BW>(r4, 3 * cols + c0),
            );
            if let (Some(r0), Some(r1), Some(r2), Some(r3)) = blocks {
                let (x0, x1, x2, x3) = (x4[0], x4[1], x4[2], x4[3]);
                for j in 0..BW {
                    a0[j] += x0 * r0[j];
                    a1[j] += x1 * r1[j];
                    a2[j] += x2 * r2[j];
                    a3[j] += x3 * r3[j];
                }
            }
        }
        let done = x.len() / 4 * 4;
        for (r, &xi) in mt.chunks_exact(cols).zip(x).skip(done) {
            if let Some(r0) = block::<BW>(r, c0) {
                for j in 0..BW {
                    a0[j] += xi * r0[j];
                }
            }
        }
        for (j, o) in out[c0..c0 + BW].iter_mut().enumerate() {
            *o += (a0[j] + a1[j]) + (a2[j] + a3[j]);
        }
        c0 += BW;
    }
    c0
}

/// `r[s..s + BW]` as an array reference (`None` if out of range).
#[inline(always)]
fn block<const BW: usize>(r: &[f32], s: usize) -> Option<&[f32; BW]> {
    r.get(s..s + BW).and_then(|v| v.try_into().ok())
}

/// `out += Σ_k M_kᵀ v_k` for segments `(m_k, v_k)`, each `m_k` stored with one row of
/// `out.len()` entries per element of `v_k`: [`gemv_t_acc`] over the row-wise concatenation of
/// the matrices and vectors, without concatenating them.
#[inline]
pub fn gemv_t_segments(out: &mut [f32], segments: &[(&[f32], &[f32])]) {
    for (m, v) in segments {
        gemv_t_acc(out, m, v);
    }
}

/// Splits the next `n` elements off the front of `rest` (fewer if it is short: never panics).
/// Used to walk a weight buffer segment by segment.
#[inline(always)]
pub(crate) fn take<'w>(rest: &mut &'w [f32], n: usize) -> &'w [f32] {
    let (a, b) = rest.split_at(n.min(rest.len()));
    *rest = b;
    a
}

/// Mutable version of [`take`], for walking a state buffer.
#[inline(always)]
pub(crate) fn take_mut<'s>(rest: &mut &'s mut [f32], n: usize) -> &'s mut [f32] {
    let r = core::mem::take(rest);
    let (a, b) = r.split_at_mut(n.min(r.len()));
    *rest = b;
    a
}

/// Copies the first `min(dst.len(), src.len())` elements of `src` into `dst` (a
/// `copy_from_slice` that cannot panic).
#[inline(always)]
pub(crate) fn copy_prefix(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    dst[..n].copy_from_slice(&src[..n]);
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
}
