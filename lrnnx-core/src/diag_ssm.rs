//! The complex diagonal MIMO state-space recurrence shared by S5 (LTI) and LRU:
//!
//! ```text
//! h_t = Ā ⊙ h_{t−1} + B̄ x_t        h ∈ ℂ^N, Ā ∈ ℂ^N, B̄ ∈ ℂ^{N×H_in}
//! y_t = Re(C h_t)                   C ∈ ℂ^{H_out×N}
//! ```
//!
//! Weight layout (all `f32`, split real/imaginary parts, matrices stored transposed so that the
//! step is a sequence of vectorizable `axpy`s):
//!
//! | segment  | length       | meaning                      |
//! |----------|--------------|------------------------------|
//! | `a_re`   | N            | `Re Ā`                       |
//! | `a_im`   | N            | `Im Ā`                       |
//! | `bt_re`  | H_in·N       | `Re B̄ᵀ` (row i = input i)   |
//! | `bt_im`  | H_in·N       | `Im B̄ᵀ`                     |
//! | `ct_re`  | N·H_out      | `Re Cᵀ` (row n = state n)    |
//! | `ct_nim` | N·H_out      | `−Im Cᵀ`                     |
//!
//! State: `h_re` (N) then `h_im` (N).

use num_complex::Complex64;

use crate::linalg::{cmul_diag, gemv_t_acc2, gemv_t_acc_pair};

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
        2 * self.n + 2 * self.n * self.d_in + 2 * self.n * self.d_out
    }

    /// Splits a weight buffer of `weights_len()` elements into its segments.
    pub fn split<'w>(&self, w: &'w [f32]) -> DiagSsmView<'w> {
        let n = self.n;
        let (a_re, rest) = w.split_at(n.min(w.len()));
        let (a_im, rest) = rest.split_at(n.min(rest.len()));
        let nb = n * self.d_in;
        let (bt_re, rest) = rest.split_at(nb.min(rest.len()));
        let (bt_im, rest) = rest.split_at(nb.min(rest.len()));
        let nc = n * self.d_out;
        let (ct_re, rest) = rest.split_at(nc.min(rest.len()));
        let ct_nim = &rest[..nc.min(rest.len())];
        DiagSsmView {
            d_out: self.d_out,
            a_re,
            a_im,
            bt_re,
            bt_im,
            ct_re,
            ct_nim,
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
                put(base_b + i * n + s, b.re);
                put(base_b + n * di + i * n + s, b.im);
            }
        }
        let base_c = base_b + 2 * n * di;
        for o in 0..dout {
            for s in 0..n {
                let cv = c(o, s);
                put(base_c + s * dout + o, cv.re);
                put(base_c + n * dout + s * dout + o, -cv.im);
            }
        }
    }
}

/// Borrowed segments of a diagonal SSM's weights.
pub(crate) struct DiagSsmView<'w> {
    d_out: usize,
    a_re: &'w [f32],
    a_im: &'w [f32],
    bt_re: &'w [f32],
    bt_im: &'w [f32],
    ct_re: &'w [f32],
    ct_nim: &'w [f32],
}

impl DiagSsmView<'_> {
    /// `h ← Ā ⊙ h + B̄ x`, then `y = Re(C h)` (overwrites `y`).
    #[inline]
    pub fn step(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        let n = self.a_re.len();
        let (h_re, h_im) = state.split_at_mut(n.min(state.len()));
        cmul_diag(h_re, h_im, self.a_re, self.a_im);
        gemv_t_acc2(h_re, h_im, self.bt_re, self.bt_im, x);
        let len = self.d_out.min(y.len());
        let y = &mut y[..len];
        y.fill(0.0);
        gemv_t_acc_pair(y, self.ct_re, self.ct_nim, h_re, h_im);
    }
}
