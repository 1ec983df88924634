//! The complex diagonal MIMO state-space recurrence shared by S5 (LTI) and LRU:
//!
//! ```text
//! h_t = Ā ⊙ h_{t−1} + B̄ x_t        h ∈ ℂ^N, Ā ∈ ℂ^N, B̄ ∈ ℂ^{N×H_in}
//! y_t = Re(C h_t)                   C ∈ ℂ^{H_out×N}
//! ```
//!
//! Weight layout (all `f32`, split real/imaginary parts, matrices stored transposed so that the
//! step is two register-blocked `Mᵀv` products, see [`gemv_t_segments`]):
//!
//! | segment | shape       | meaning                                                        |
//! |---------|-------------|----------------------------------------------------------------|
//! | `a_re`  | N           | `Re Ā`                                                         |
//! | `a_im`  | N           | `Im Ā`                                                         |
//! | `bt`    | H_in × 2N   | row i = `[Re B̄[:, i], Im B̄[:, i]]`: `h += bt_ᵀ x` updates the whole state |
//! | `ct`    | 2N × H_out  | rows `0..N` = `Re Cᵀ`, rows `N..2N` = `−Im Cᵀ`: `y = ctᵀ h` = `Re(C h)` |
//!
//! State: `h_re` (N) then `h_im` (N).

use num_complex::Complex64;

use crate::linalg::{cmul_diag, gemv_t_acc, gemv_t_segments};

/// Sizes of a diagonal SSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiagSsmDims {
    pub n: usize,
    pub d_in: usize,
    pub d_out: usize,
}

impl DiagSsmDims {
    /// Number of weight elements.
    pub const fn weights_len(&self) -> usize {
        crate::error::sum_of_products(&[
            &[2, self.n],
            &[2, self.n, self.d_in],
            &[2, self.n, self.d_out],
        ])
    }

    /// Splits a weight buffer of `weights_len()` elements into its segments.
    pub fn split<'w>(&self, w: &'w [f32]) -> DiagSsmView<'w> {
        let n = self.n;
        let (a_re, rest) = w.split_at(n.min(w.len()));
        let (a_im, rest) = rest.split_at(n.min(rest.len()));
        let (bt, rest) = rest.split_at((2 * n * self.d_in).min(rest.len()));
        let ct = &rest[..(2 * n * self.d_out).min(rest.len())];
        DiagSsmView {
            d_out: self.d_out,
            a_re,
            a_im,
            bt,
            ct,
        }
    }

    /// Writes the weights from complex `Ā` (N), `B̄` (N×H_in, row-major) and `C` (H_out×N,
    /// row-major), given as functions of their indices.
    pub fn write(
        &self,
        w: &mut [f32],
        a_bar: impl Fn(usize) -> Complex64,
        b_bar: impl Fn(usize, usize) -> Complex64,
        c: impl Fn(usize, usize) -> Complex64,
    ) {
        let (n, di, dout) = (self.n, self.d_in, self.d_out);
        let mut put = |idx: usize, v: f64| {
            if let Some(slot) = w.get_mut(idx) {
                *slot = v as f32;
            }
        };
        for s in 0..n {
            let a = a_bar(s);
            put(s, a.re);
            put(n + s, a.im);
        }
        let base_b = 2 * n;
        for s in 0..n {
            for i in 0..di {
                let b = b_bar(s, i);
                put(base_b + i * 2 * n + s, b.re);
                put(base_b + i * 2 * n + n + s, b.im);
            }
        }
        let base_c = base_b + 2 * n * di;
        for o in 0..dout {
            for s in 0..n {
                let cv = c(o, s);
                put(base_c + s * dout + o, cv.re);
                put(base_c + (n + s) * dout + o, -cv.im);
            }
        }
    }
}

/// Borrowed segments of a diagonal SSM's weights.
pub(crate) struct DiagSsmView<'w> {
    d_out: usize,
    a_re: &'w [f32],
    a_im: &'w [f32],
    bt: &'w [f32],
    ct: &'w [f32],
}

impl DiagSsmView<'_> {
    /// `h ← Ā ⊙ h + B̄ x`, then `y = Re(C h) + skipᵀ x` (overwrites `y`); `skip` is an optional
    /// H_in × H_out matrix stored with one row per input (lrnnx S5's `x @ D`).
    #[inline]
    pub fn step(&self, state: &mut [f32], x: &[f32], y: &mut [f32], skip: Option<&[f32]>) {
        let n = self.a_re.len();
        let len = (2 * n).min(state.len());
        let h = &mut state[..len];
        {
            let (h_re, h_im) = h.split_at_mut(n.min(len));
            cmul_diag(h_re, h_im, self.a_re, self.a_im);
        }
        gemv_t_acc(h, self.bt, x);
        let len = self.d_out.min(y.len());
        let y = &mut y[..len];
        y.fill(0.0);
        match skip {
            Some(d) => gemv_t_segments(y, &[(self.ct, h), (d, x)]),
            None => gemv_t_segments(y, &[(self.ct, h)]),
        }
    }
}
