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
/// outputs × 4 partial sums = 16 accumulators are what fits, so blocks are 4 wide, with the
/// row length a compile-time constant for 8, 12, 16, 24, 32, 48 and 64 outputs (the four rows
/// of a group then sit at immediate offsets: ~2.4 instructions per multiply-add on a
/// Cortex-M4 instead of ~7). Columns left over go one at a time; a single output is a 4-way dot product.
/// Mismatched lengths truncate, never panic. On 32-bit Arm it is never inlined (one copy keeps
/// microcontroller flash small; the call costs a few instructions against the loop's
/// hundreds).
#[cfg_attr(not(target_arch = "arm"), inline)]
#[cfg_attr(target_arch = "arm", inline(never))]
pub fn gemv_t_acc(out: &mut [f32], mt: &[f32], x: &[f32]) {
    if let [o] = out {
        *o += dot(mt, x);
        return;
    }
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
    #[cfg(not(target_arch = "arm"))]
    {
        c0 = gemv_t_block::<4>(out, mt, x, c0);
    }
    #[cfg(target_arch = "arm")]
    {
        c0 = match out.len() {
            8 => gemv_t_fixed::<8>(out, mt, x),
            12 => gemv_t_fixed::<12>(out, mt, x),
            16 => gemv_t_fixed::<16>(out, mt, x),
            24 => gemv_t_fixed::<24>(out, mt, x),
            32 => gemv_t_fixed::<32>(out, mt, x),
            48 => gemv_t_fixed::<48>(out, mt, x),
            64 => gemv_t_fixed::<64>(out, mt, x),
            _ => gemv_t_block::<4>(out, mt, x, c0),
        };
    }
    gemv_t_block::<1>(out, mt, x, c0);
}

/// [`gemv_t_block`]`::<4>` for a row length `C` known at compile time, so that the four rows
/// of a group sit at constant offsets (immediate addressing on 32-bit Arm).
#[cfg(target_arch = "arm")]
#[inline(never)]
fn gemv_t_fixed<const C: usize>(out: &mut [f32], mt: &[f32], x: &[f32]) -> usize {
    let mut c0 = 0;
    while c0 + 4 <= C && c0 + 4 <= out.len() {
        let mut a = [[0.0f32; 4]; 4];
        for (r4, x4) in mt.chunks_exact(4 * C).zip(x.chunks_exact(4)) {
            let row = |k: usize| -> [f32; 4] {
                match r4.get(k * C + c0..k * C + c0 + 4) {
                    Some(&[p, q, r, s]) => [p, q, r, s],
                    _ => [0.0; 4],
                }
            };
            let w = [row(0), row(1), row(2), row(3)];
            for k in 0..4 {
                for j in 0..4 {
                    a[k][j] += x4[k] * w[k][j];
                }
            }
        }
        let done = x.len() / 4 * 4;
        if let (true, Some(rows), Some(xs)) = (done < x.len(), mt.get(done * C..), x.get(done..)) {
            for (r, &xi) in rows.chunks_exact(C).zip(xs) {
                if let Some(&[p, q, r2, s]) = r.get(c0..c0 + 4) {
                    for (acc, w) in a[0].iter_mut().zip([p, q, r2, s]) {
                        *acc += xi * w;
                    }
                }
            }
        }
        for (j, o) in out[c0..c0 + 4].iter_mut().enumerate() {
            *o += (a[0][j] + a[1][j]) + (a[2][j] + a[3][j]);
        }
        c0 += 4;
    }
    c0
}

/// `(s₀ + s₁) + (s₂ + s₃)` with `s_k = Σ_{i ≡ k (mod 4)} m[i]·x[i]` (the rows past the last
/// whole group of four added to `s₀`): [`gemv_t_acc`] for a single output, in its order.
#[inline]
fn dot(m: &[f32], x: &[f32]) -> f32 {
    let n = m.len().min(x.len());
    let (m4, x4) = (m[..n].chunks_exact(4), x[..n].chunks_exact(4));
    let (m_rest, x_rest) = (m4.remainder(), x4.remainder());
    let mut s = [0.0f32; 4];
    for (m4, x4) in m4.zip(x4) {
        for k in 0..4 {
            s[k] += x4[k] * m4[k];
        }
    }
    for (&mi, &xi) in m_rest.iter().zip(x_rest) {
        s[0] += xi * mi;
    }
    (s[0] + s[1]) + (s[2] + s[3])
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
/// the matrices and vectors, without concatenating them. Equal to that up to rounding, not
/// bit for bit: each segment's sum is added to `out` on its own (the partial sums restart at
/// every segment).
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
    extern crate std;
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

    /// Every output is summed in the documented order, bit for bit, whatever the width (so
    /// that targets with other blockings, e.g. the Cortex-M firmware, agree with the host).
    #[test]
    fn summation_order_is_the_documented_one() {
        for cols in [1usize, 2, 3, 4, 5, 8, 12, 16, 17, 32, 64, 65, 72, 130] {
            for rows in [1usize, 2, 3, 4, 5, 7, 8, 16, 19] {
                let m: std::vec::Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 7919 % 1013) as f32 / 97.0 - 5.0) * 1.37)
                    .collect();
                let x: std::vec::Vec<f32> = (0..rows)
                    .map(|i| ((i * 31 % 17) as f32 - 8.3) / 3.1)
                    .collect();
                let out0: std::vec::Vec<f32> = (0..cols).map(|j| j as f32 * 0.25 - 1.0).collect();
                let mut got = out0.clone();
                gemv_t_acc(&mut got, &m, &x);
                let whole = rows / 4 * 4;
                for j in 0..cols {
                    let mut s = [0.0f32; 4];
                    for i in 0..whole {
                        s[i % 4] += x[i] * m[i * cols + j];
                    }
                    for i in whole..rows {
                        s[0] += x[i] * m[i * cols + j];
                    }
                    let want = out0[j] + ((s[0] + s[1]) + (s[2] + s[3]));
                    assert_eq!(
                        got[j].to_bits(),
                        want.to_bits(),
                        "cols {cols} rows {rows} j {j}"
                    );
                }
            }
        }
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
