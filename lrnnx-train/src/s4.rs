//! S4, the DPLR (diagonal plus low-rank) S4 block (lrnnx `lrnnx.models.lti.s4.S4`, spec
//! §5.1–5.5, 5.7), trainable.
//!
//! ## Equations
//!
//! Per channel `h` (H of them; SSM row `s = h mod n_ssm`), M = d_state, N2 = M/2 stored
//! conjugate-half parameters, everything in the *real form* of lrnnx-core's S4 (the complex state
//! `[u, conj u]` kept as `r = [Re u, Im u] ∈ ℝ^M`; see `lrnnx_core::S4`):
//!
//! ```text
//! Δ[h,·] = dt_transform(sinh?(inv_dt[h,·]))        (H,1) tied, or (H,N2) per state; Δ_M = [Δ, Δ]
//! Λ[s,n] = −real_transform(A_real) − i·imag_transform(A_imag)
//! A_h    = [[diag Re Λ, −diag Im Λ], [diag Im Λ, diag Re Λ]] − 2 Σ_r q_r q_rᵀ,  q_r = [Re P_r, Im P_r]
//!          (the real form of diag([Λ, conj Λ]) − Σ_r p_r p_rᴴ, p_r = [P_r, conj P_r])
//! 𝒜_h    = diag(Δ_M)·A_h
//! [Ā_h | B̄_h] = (I − 𝒜_h/2)⁻¹ [I + 𝒜_h/2 | Δ_M ⊙ [Re B, Im B]]      (bilinear)
//! c̃[c,h] = [2 Re C̃[c,h], −2 Im C̃[c,h]]                              (C̃ = the stored `C`)
//! w_h    = (I − Ā_h^{Lk})⁻¹ B̄_h    (Lk = layer.kernel.l_kernel > 0);   w_h = B̄_h (Lk = 0)
//! K[c,h,l] = c̃[c,h] · Ā_h^l · w_h                                    (l = 0 … L−1)
//! z[b,t,c,h] = Σ_{l ≤ t} K[c,h,l]·x[b,t−l,h] + D[c,h]·x[b,t,h]
//! z = GELU(GELU(z))                    (flattened (c,h); exact erf GELU, twice)
//! y = GELU(z Wᵀ + b)                   (output_linear.0, when final_act ≠ None)
//! ```
//!
//! **Why this is lrnnx's forward, C̃ included (spec §5.4).** lrnnx converts its `C` in place at
//! the first kernel use: a checkpoint with `l_kernel = Lk > 0` stores
//! `C̃_full = C_full (I − Ā^{Lk})`, and its forward evaluates the Cauchy/Woodbury kernel *from C̃
//! directly*: the transfer function `C̃_full (I − Āω)⁻¹ B̄` at the Lk roots of unity, which is
//! the DFT of the truncated impulse response `K_l = Re(C_full Ā^l B̄)`, l < Lk. Since Ā^l commutes
//! with `(I − Ā^{Lk})⁻¹`, that is `K_l = Re(C̃_full Ā^l (I − Ā^{Lk})⁻¹ B̄)`: the formula above,
//! a function of lrnnx's own parameters (C̃ as stored), so autodiff gives lrnnx's gradients, the
//! dependence of `(I − Ā^{Lk})⁻¹` on A, P and Δ included. With `Lk = 0` (a module lrnnx never
//! ran) the stored `C` is the original one and `K_l = Re(C Ā^l B̄)`; lrnnx's first forward would
//! convert it to C̃ in place, so lrnnx's gradient would then be taken w.r.t. C̃, this layer's
//! w.r.t. the original C (the outputs agree).
//!
//! Sequence length: the kernel above is the untruncated impulse response for every `l` (it is
//! what lrnnx's recurrent step computes). lrnnx's forward agrees for `L ≤ Lk` (`Lk` = `l_max`
//! after lrnnx's setup); for `L > l_max` lrnnx truncates its kernel to `l_max` taps, and for
//! `l_max = None` and `L > Lk` it doubles C̃ in place; neither is reproduced (as for S4D).
//!
//! ## Computation and cost
//!
//! Dense M×M real matrices per channel, with candle ops (autodiff) around one custom op, the
//! batched linear solve [`solve`] (Gauss–Jordan with partial pivoting in f64, hand-written
//! backward `∂B = A⁻ᵀ G`, `∂A = −∂B·Xᵀ`). Ā^{Lk} by binary powering (⌈log₂ Lk⌉ batched
//! products). The kernel in blocks of `T ≈ √(ch·L)` taps, `K[c,h,iT + j] = (c̃ Ā^{iT})·(Ā^j w)`:
//! the T vectors `Ā^j w` and the ⌈L/T⌉ row vectors `c̃ Ā^{iT}` each by doubling
//! (`[V, Ā^{2^k} V]`, O(log L) products), then one batched product: work
//! O(H·M²·√(ch·L) + H·ch·M·L), memory O(H·M·√(ch·L) + H·ch·L). The convolution is the FFT op
//! [`causal_conv`](crate::fftconv::causal_conv) (hand-written backward): O(B·ch·H·L log L)
//! work, O(B·ch·H·L) memory, with `D·x` folded in as the kernel's tap 0; the transposes and
//! the GELUs around it are the fused ops of [`crate::pointwise`] (one pass each way). The
//! number of candle ops is O(log L), not O(L).
//!
//! On a CUDA device (feature `cuda`, f32): the convolution and the fused ops run
//! `lrnnx-kernels`' CUDA kernels, the small solves run on the host (copied there and back),
//! everything else is candle's CUDA ops.
//!
//! ## Parameters and arguments
//!
//! Parameters (lrnnx names): `inv_dt` (H,1) or (H,N2), `A_real` (S,N2), `A_imag` (S,N2),
//! `B` (1,S,N2,2), `P` (r,S,N2,2) (absent for rank 0), `C` (ch,H,N2,2) (C̃; trailing axis = re,
//! im), `D` (ch,H), the buffer `layer.kernel.l_kernel` (scalar or (1,), a non-negative integer;
//! read once at construction, not trained), and with the output linear
//! `output_linear.0.weight` (H, ch·H), `output_linear.0.bias` (H,). lrnnx's state dict repeats
//! the SSM parameters under `layer.kernel.` (the same storage); those keys are not read, and
//! their gradients are the top-level parameters' gradients.
//!
//! Constructor arguments: `d_model`, `d_state` (64), `n_ssm` (None → d_model), `channels` (1),
//! `rank` (1), `dt_tie` (True), `dt_transform` ("exp"), `dt_fast` (False), `real_transform`
//! ("exp"), `imag_transform` ("none"), `final_act` ("glu": any non-None value gives Linear +
//! GELU) and its deprecated alias `postact`. Rejected: `gate`, `bottleneck`, `is_real`,
//! `swap_channels` (as in the core's importer) and a non-zero `dropout` (not applied here).
//! `l_max` and `transposed` are ignored (see above; the forward takes (B, L, H) like every
//! [`TrainLayer`]). Initializer arguments have no effect.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use lrnnx_core::ParamTransform;
use serde_json::Value;

use crate::complex::CTensor;
use crate::host_f64::{same_dtype, storage, values};
use crate::layer::{BuildError, Cache, TrainLayer};
use crate::lru::check_input;
use crate::ops::matmul_operand;
use crate::params::Params;
use crate::pointwise::{bias_gelu, gelu_gelu};
use crate::s4d::{
    block_args, bool_or, conv_block, output_linear, transform, transform_or, usize_or, BlockArgs,
};

/// A trainable S4 (DPLR) block.
pub struct S4 {
    d_model: usize,
    n2: usize,
    n_ssm: usize,
    channels: usize,
    rank: usize,
    dt_tied: bool,
    dt_transform: ParamTransform,
    dt_fast: bool,
    real_transform: ParamTransform,
    imag_transform: ParamTransform,
    output_linear: bool,
    l_kernel: usize,
    params: Params,
}

/// Tiles the `n_ssm` entries of axis `dim` of `t` to `h`: entry `k` is entry `k mod S`.
fn tile(t: &Tensor, dim: usize, h: usize) -> Result<Tensor> {
    let s = t.dim(dim)?;
    if s == h {
        return Ok(t.clone());
    }
    let mut reps = vec![1usize; t.rank()];
    reps[dim] = h / s;
    t.repeat(reps.as_slice())
}

/// `diag(v)` for each row of `v` (H, n): (H, n, n).
fn diag(v: &Tensor) -> Result<Tensor> {
    let n = v.dim(1)?;
    let eye = Tensor::eye(n, v.dtype(), v.device())?;
    v.unsqueeze(2)?.broadcast_mul(&eye.unsqueeze(0)?)
}

/// `A^e` for a batch of square matrices (H, M, M), by binary powering (e ≥ 1).
fn mat_pow(a: &Tensor, mut e: usize) -> Result<Tensor> {
    let mut base = a.clone();
    let mut acc: Option<Tensor> = None;
    loop {
        if e & 1 == 1 {
            acc = Some(match acc {
                None => base.clone(),
                Some(r) => r.matmul(&base)?,
            });
        }
        e >>= 1;
        if e == 0 {
            break;
        }
        base = base.matmul(&base)?;
    }
    match acc {
        Some(r) => Ok(r),
        None => bail!("S4: matrix power with exponent 0"),
    }
}

// ---- the batched linear solve ----

/// Solves `A X = B` for `a` (M×M) and `b` (M×K), both row-major, by Gauss–Jordan elimination
/// with partial pivoting on the augmented rows `[A | B]`; `b` ends as X (`a` is left as it
/// was). False when singular. Each elimination step is `row ← row − f·pivot_row` over the columns from the
/// pivot's on (those before it are already zero in the pivot row), a contiguous loop the
/// compiler vectorizes.
fn gauss_jordan(a: &[f64], b: &mut [f64], m: usize, k: usize) -> bool {
    let w = m + k;
    let mut aug = vec![0.0; m * w];
    for r in 0..m {
        aug[r * w..r * w + m].copy_from_slice(&a[r * m..(r + 1) * m]);
        aug[r * w + m..(r + 1) * w].copy_from_slice(&b[r * k..(r + 1) * k]);
    }
    let mut pivot_row = vec![0.0; w];
    for col in 0..m {
        let mut piv = col;
        for r in col + 1..m {
            if aug[r * w + col].abs() > aug[piv * w + col].abs() {
                piv = r;
            }
        }
        let p = aug[piv * w + col];
        if p == 0.0 || !p.is_finite() {
            return false;
        }
        if piv != col {
            for j in 0..w {
                aug.swap(col * w + j, piv * w + j);
            }
        }
        let inv = 1.0 / p;
        for (dst, v) in pivot_row[col..]
            .iter_mut()
            .zip(&mut aug[col * w + col..(col + 1) * w])
        {
            *v *= inv;
            *dst = *v;
        }
        for (r, row) in aug.chunks_exact_mut(w).enumerate() {
            let f = row[col];
            if r == col || f == 0.0 {
                continue;
            }
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
        }
    }
    for r in 0..m {
        b[r * k..(r + 1) * k].copy_from_slice(&aug[r * w + m..(r + 1) * w]);
    }
    b.iter().all(|v| v.is_finite())
}

/// [`gauss_jordan`] on each of the `n` systems of `a` (N, M, M) and `b` (N, M, K), the systems
/// split over the machine's threads in contiguous runs (each system is solved alone, so the
/// result does not depend on the split); the first singular system's index, if any.
fn solve_all(a: &[f64], b: &mut [f64], (n, m, k): (usize, usize, usize)) -> Option<usize> {
    // below about 4 M flops a system batch is not worth a thread
    let work = n.saturating_mul(m * m).saturating_mul(m + k);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1))
        .min(work / (1 << 22) + 1);
    let per = n.div_ceil(threads.max(1)).max(1);
    let run = |start: usize, a: &[f64], b: &mut [f64]| -> Option<usize> {
        let systems = a.chunks(m * m).zip(b.chunks_mut(m * k));
        for (i, (ai, bi)) in systems.enumerate() {
            if !gauss_jordan(ai, bi, m, k) {
                return Some(start + i);
            }
        }
        None
    };
    if m == 0 || k == 0 {
        return None; // nothing to solve (and no chunks to split)
    }
    if threads <= 1 {
        return run(0, a, b);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = a
            .chunks(per * m * m)
            .zip(b.chunks_mut(per * m * k))
            .enumerate()
            .map(|(t, (ac, bc))| scope.spawn(move || run(t * per, ac, bc)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap_or(Some(usize::MAX)))
            .min()
    })
}

/// `X = A⁻¹ B` for `A` (N, M, M) and `B` (N, M, K) as a candle op.
struct Solve;

/// `(N, M, K)` from the layouts of `A` (N, M, M) and `B` (N, M, K).
fn system_sizes(a: &Layout, b: &Layout) -> Result<(usize, usize, usize)> {
    match (a.shape().dims(), b.shape().dims()) {
        ([n, m, m2], [n2, m3, k]) if m == m2 && m == m3 && n == n2 => Ok((*n, *m, *k)),
        (a, b) => bail!("S4 solve: A {a:?} is not (N, M, M) or B {b:?} is not (N, M, K)"),
    }
}

/// The error for a singular system `i`.
fn singular(i: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "S4: singular matrix in the linear solve of channel {i} (I − ΔA/2 or I − Ā^l_kernel)"
    ))
}

impl CustomOp2 for Solve {
    fn name(&self) -> &'static str {
        "s4-batched-solve"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, m, k) = system_sizes(l1, l2)?;
        same_dtype("S4 solve", &[s1, s2])?;
        let a = values("S4 solve", s1, l1, "A")?;
        let mut b = values("S4 solve", s2, l2, "B")?;
        if let Some(i) = solve_all(&a, &mut b, (n, m, k)) {
            return Err(singular(i));
        }
        let out = storage(b, s2);
        Ok((out, l2.shape().clone()))
    }

    /// On CUDA the systems are solved on the device (`lrnnx_kernels::solve`: the same f64
    /// Gauss–Jordan, one block a system; reading its singular flag back synchronizes the
    /// stream). Sizes beyond the kernel's (`lrnnx_kernels::solve::SolveSpec::fits`: M > 1024,
    /// or M·(M + K) or N past 2³¹) and empty solutions are copied to the host, solved by
    /// `cpu_fwd` and copied back.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let sizes = system_sizes(l1, l2)?;
        match crate::gpu::solve(s1, l1, s2, l2, sizes)? {
            Some(Ok(x)) => Ok((x, l2.shape().clone())),
            Some(Err(i)) => Err(singular(i)),
            None => {
                let (c1, c2) = (s1.to_cpu_storage()?, s2.to_cpu_storage()?);
                let (x, shape) = self.cpu_fwd(&c1, l1, &c2, l2)?;
                Ok((s1.device().storage_from_cpu_storage(&x)?, shape))
            }
        }
    }

    fn bwd(
        &self,
        a: &Tensor,
        _b: &Tensor,
        x: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // X = A⁻¹B: ∂B = A⁻ᵀ G, ∂A = −∂B Xᵀ.
        let gb = solve(&a.transpose(1, 2)?, g)?;
        let ga = gb.matmul(&x.transpose(1, 2)?)?.neg()?;
        Ok((Some(ga), Some(gb)))
    }
}

/// `A⁻¹ B` for a batch of square `A` (N, M, M) and `B` (N, M, K) (f32 or f64; solved in f64 with
/// partial pivoting), differentiable in both. Errors on a singular `A`. On a CUDA device
/// (feature `cuda`) the solve runs there (`lrnnx_kernels::solve`; see `cuda_fwd`).
pub fn solve(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Solve)
}

impl S4 {
    /// From lrnnx's constructor arguments (module doc) and its parameters; checks every
    /// parameter's shape and reads `layer.kernel.l_kernel`.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let BlockArgs {
            d_model,
            d_state,
            n_ssm,
            channels,
        } = block_args(kwargs)?;
        let rank = usize_or(kwargs, "rank", 1)?;
        let l_kernel = read_l_kernel(&params)?;
        let layer = S4 {
            d_model,
            n2: d_state / 2,
            n_ssm,
            channels,
            rank,
            dt_tied: bool_or(kwargs, "dt_tie", true)?,
            dt_transform: transform_or(kwargs, "dt_transform", "exp")?,
            dt_fast: bool_or(kwargs, "dt_fast", false)?,
            real_transform: transform_or(kwargs, "real_transform", "exp")?,
            imag_transform: transform_or(kwargs, "imag_transform", "none")?,
            output_linear: output_linear(kwargs)?,
            l_kernel,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// `layer.kernel.l_kernel` (Lk) as read at construction.
    pub fn l_kernel(&self) -> usize {
        self.l_kernel
    }

    /// `[inv_dt, A_real, A_imag, B, C, D]`, `P` (None for rank 0) and the output linear
    /// `(W, b)`, shapes checked.
    #[allow(clippy::type_complexity)]
    fn weights(&self) -> Result<([Tensor; 6], Option<Tensor>, Option<(Tensor, Tensor)>)> {
        let (h, n2, s, ch) = (self.d_model, self.n2, self.n_ssm, self.channels);
        let p = &self.params;
        let ssm = [
            p.get("inv_dt", &[h, if self.dt_tied { 1 } else { n2 }])?,
            p.get("A_real", &[s, n2])?,
            p.get("A_imag", &[s, n2])?,
            p.get("B", &[1, s, n2, 2])?,
            p.get("C", &[ch, h, n2, 2])?,
            p.get("D", &[ch, h])?,
        ];
        let pp = if self.rank > 0 {
            Some(p.get("P", &[self.rank, s, n2, 2])?)
        } else {
            None
        };
        let lin = if self.output_linear {
            Some((
                p.get("output_linear.0.weight", &[h, ch * h])?,
                p.get("output_linear.0.bias", &[h])?,
            ))
        } else {
            None
        };
        Ok((ssm, pp, lin))
    }

    /// Real-form `(Ā, B̄)`: (H, M, M) and (H, M, 1) (module doc).
    fn discretized(
        &self,
        inv_dt: &Tensor,
        a_real: &Tensor,
        a_imag: &Tensor,
        b: &Tensor,
        p: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (h, m) = (self.d_model, 2 * self.n2);
        let raw = if self.dt_fast {
            // sinh(x) = (eˣ − e⁻ˣ)/2
            ((inv_dt.exp()? - inv_dt.neg()?.exp()?)? * 0.5)?
        } else {
            inv_dt.clone()
        };
        let dt = transform(self.dt_transform, &raw)?; // (H, 1) or (H, N2)
        let dt = if self.dt_tied {
            dt.broadcast_as((h, m))?.contiguous()?
        } else {
            Tensor::cat(&[&dt, &dt], 1)?
        }; // (H, M)
        let lr = tile(&transform(self.real_transform, a_real)?.neg()?, 0, h)?;
        let li = tile(&transform(self.imag_transform, a_imag)?.neg()?, 0, h)?;
        let (dr, di) = (diag(&lr)?, diag(&li)?);
        let top = Tensor::cat(&[&dr, &di.neg()?], 2)?;
        let bottom = Tensor::cat(&[&di, &dr], 2)?;
        let mut a = Tensor::cat(&[&top, &bottom], 1)?; // (H, M, M)
        if let Some(p) = p {
            let p = CTensor::unpack(p)?; // (r, S, N2)
            let q = Tensor::cat(&[&p.re, &p.im], 2)?; // (r, S, M)
            let q = tile(&q, 1, h)?.transpose(0, 1)?.contiguous()?; // (H, r, M)
            a = (a - (q.transpose(1, 2)?.matmul(&q)? * 2.0)?)?;
        }
        let dta = a.broadcast_mul(&dt.unsqueeze(2)?)?; // diag(Δ_M)·A
        let eye = Tensor::eye(m, dta.dtype(), dta.device())?.unsqueeze(0)?;
        let lhs = (dta.affine(-0.5, 0.0)?.broadcast_add(&eye))?;
        let rhs_a = (dta.affine(0.5, 0.0)?.broadcast_add(&eye))?;
        let b = CTensor::unpack(&b.squeeze(0)?)?; // (S, N2)
        let bv = tile(&Tensor::cat(&[&b.re, &b.im], 1)?, 0, h)?; // (H, M)
        let rhs_b = (bv * &dt)?.unsqueeze(2)?;
        let sol = solve(&lhs, &Tensor::cat(&[&rhs_a, &rhs_b], 2)?)?;
        // narrowed columns are strided: copied out on CUDA for its matmul
        Ok((
            matmul_operand(&sol.narrow(2, 0, m)?)?,
            matmul_operand(&sol.narrow(2, m, 1)?)?,
        ))
    }

    /// The input vectors `w_h` (H, M, 1): `(I − Ā^{Lk})⁻¹ B̄` when `Lk > 0`, else `B̄`
    /// (module doc).
    fn input_vectors(&self, a_bar: &Tensor, b_bar: &Tensor) -> Result<Tensor> {
        let m = 2 * self.n2;
        if self.l_kernel > 0 {
            let eye = Tensor::eye(m, a_bar.dtype(), a_bar.device())?.unsqueeze(0)?;
            let pw = mat_pow(a_bar, self.l_kernel)?;
            solve(&eye.broadcast_sub(&pw)?, b_bar)
        } else {
            Ok(b_bar.clone())
        }
    }

    /// The real-form read-out `c̃` (H, ch, M): `[2 Re C̃, −2 Im C̃]` (module doc).
    fn readout(c: &Tensor) -> Result<Tensor> {
        let c = CTensor::unpack(c)?; // (ch, H, N2)
        let ct = Tensor::cat(&[&(c.re * 2.0)?, &(c.im * -2.0)?], 2)?; // (ch, H, M)
        ct.transpose(0, 1)?.contiguous()
    }

    /// The convolution kernel `K` (H, ch, L) (module doc), in blocks of `T` taps:
    /// `K[c,h,iT + j] = (c̃ Ā^{iT}) · (Ā^j w)`: the `T` vectors `Ā^j w` (H, M, T) and the
    /// `⌈L/T⌉·ch` row vectors `c̃ Ā^{iT}` (H, ch·⌈L/T⌉, M), each by doubling, then one batched
    /// product. With `T ≈ √(ch·L)` that is O(H·M²·√(ch·L) + H·ch·M·L) work and
    /// O(H·M·√(ch·L) + H·ch·L) memory (no (H, M, L) tensor).
    fn kernel(&self, a_bar: &Tensor, b_bar: &Tensor, c: &Tensor, l: usize) -> Result<Tensor> {
        let (h, ch) = (self.d_model, self.channels);
        let w = self.input_vectors(a_bar, b_bar)?;
        let block = (((ch * l) as f64).sqrt().ceil() as usize).clamp(1, l.max(1));
        let blocks = l.div_ceil(block).max(1);
        // V = [w, Āw, …, Ā^{T−1}w] by doubling.
        let mut v = w;
        let mut pw = a_bar.clone();
        while v.dim(2)? < block {
            let next = pw.matmul(&v)?;
            v = Tensor::cat(&[&v, &next], 2)?;
            if v.dim(2)? < block {
                pw = pw.matmul(&pw)?;
            }
        }
        let v = matmul_operand(&v.narrow(2, 0, block)?)?; // (H, M, T)
                                                          // R = [c̃; c̃Ā^T; c̃Ā^{2T}; …] (rows ordered (block, channel)) by doubling.
        let mut r = Self::readout(c)?; // (H, ch, M)
        if blocks > 1 {
            let mut step = mat_pow(a_bar, block)?; // Ā^{T·2^k}
            while r.dim(1)? < blocks * ch {
                let next = r.matmul(&step)?;
                r = Tensor::cat(&[&r, &next], 1)?;
                if r.dim(1)? < blocks * ch {
                    step = step.matmul(&step)?;
                }
            }
            r = r.narrow(1, 0, blocks * ch)?;
        }
        r.matmul(&v)? // (H, blocks·ch, T)
            .reshape((h, blocks, ch, block))?
            .permute((0, 2, 1, 3))?
            .reshape((h, ch, blocks * block))?
            .narrow(2, 0, l)
    }
}

/// Reads the buffer `layer.kernel.l_kernel` (scalar or (1,), a non-negative integer).
fn read_l_kernel(params: &Params) -> std::result::Result<usize, BuildError> {
    const NAME: &str = "layer.kernel.l_kernel";
    let Some(v) = params.vars().get(NAME) else {
        return Err(BuildError::Candle(candle_core::Error::Msg(format!(
            "missing parameter tensor `{NAME}` (lrnnx's S4 kernel buffer; 0 for a module never run)"
        ))));
    };
    let t = v.as_tensor();
    if t.elem_count() != 1 || t.rank() > 1 {
        return Err(BuildError::Candle(candle_core::Error::Msg(format!(
            "tensor `{NAME}` has shape {:?}, expected [] or [1]",
            t.dims()
        ))));
    }
    let val = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
    if !(val >= 0.0 && val == val.floor() && val <= u32::MAX as f64) {
        return Err(BuildError::Candle(candle_core::Error::Msg(format!(
            "tensor `{NAME}` = {val}: must be a non-negative integer"
        ))));
    }
    Ok(val as usize)
}

impl TrainLayer for S4 {
    fn forward(&self, x: &Tensor, _time_steps: Option<&Tensor>) -> Result<Tensor> {
        let (h, ch) = (self.d_model, self.channels);
        let (_, l) = check_input(x, h)?;
        let ([inv_dt, a_real, a_imag, b, c, d], p, lin) = self.weights()?;
        let (a_bar, b_bar) = self.discretized(&inv_dt, &a_real, &a_imag, &b, p.as_ref())?;
        let k = self.kernel(&a_bar, &b_bar, &c, l)?; // (H, ch, L)
        conv_block(x, &k.reshape((h * ch, l))?, &d, lin, ch)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// State: `[r]`, the real-form state `r = [Re u, Im u]` laid out (H, M, B) (lrnnx's
    /// `lrnn_state` (B, H, M) complex holds `[u, conj u]`). With `Lk > 0` the state is fed
    /// through `w = (I − Ā^{Lk})⁻¹ B̄` and read by `c̃` (the stored C̃), which gives the same
    /// outputs as lrnnx's recovered `C` with `B̄`, since `(I − Ā^{Lk})⁻¹` commutes with `Ā`.
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let ([inv_dt, a_real, a_imag, b, c, d], p, lin) = self.weights()?;
        let (a_bar, b_bar) = self.discretized(&inv_dt, &a_real, &a_imag, &b, p.as_ref())?;
        let w = self.input_vectors(&a_bar, &b_bar)?;
        let z = Tensor::zeros((self.d_model, 2 * self.n2, batch), d.dtype(), d.device())?;
        let mut consts = vec![a_bar, w, Self::readout(&c)?, d];
        if let Some((wl, bias)) = lin {
            consts.extend([wl, bias]);
        }
        Ok(Cache::new(
            "S4",
            self.params(),
            batch,
            z.dtype(),
            vec![z],
            consts,
        ))
    }

    /// `r ← Ā r + w x_t`, `z = c̃ r + D x_t`, then the block tail (module doc).
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        cache.check_step("S4", self.params(), x_t, self.d_model, time_step, false)?;
        let (a_bar, w, ct, d) = match &cache.consts[..] {
            [a, w, ct, d, ..] => (a, w, ct, d),
            _ => bail!("S4: malformed cache"),
        };
        let lin = cache.consts.get(4..6);
        let bsz = x_t.dim(0)?;
        let xh = x_t.t()?.unsqueeze(1)?; // (H, 1, B)
        let r = (a_bar.matmul(&cache.state[0])? + w.broadcast_mul(&xh)?)?; // (H, M, B)
        let z = ct.matmul(&r)?.permute((2, 1, 0))?; // (B, ch, H)
        let z = (z + x_t.unsqueeze(1)?.broadcast_mul(d)?)?;
        let z = gelu_gelu(&z.reshape((bsz, self.channels * self.d_model))?)?;
        let y = match lin {
            Some([wl, bias]) => bias_gelu(&z.matmul(&wl.t()?)?, bias)?,
            _ => z,
        };
        cache.state = vec![r];
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lru::testing::{check_finite_differences, check_parity, Named};
    use lrnnx_core::{S4Config, S4Transforms};
    use serde_json::json;

    #[allow(clippy::too_many_arguments)]
    fn named(
        h: usize,
        n2: usize,
        s: usize,
        ch: usize,
        rank: usize,
        dt_cols: usize,
        l_kernel: usize,
        seed: u64,
    ) -> Named {
        let mut p = Named::new(seed);
        p.add("inv_dt", &[h, dt_cols], -4.0, -1.5);
        p.add("A_real", &[s, n2], -1.2, -0.2);
        p.add("A_imag", &[s, n2], 0.0, 6.0);
        p.add("B", &[1, s, n2, 2], -1.0, 1.0);
        if rank > 0 {
            p.add("P", &[rank, s, n2, 2], -0.6, 0.6);
        }
        p.add("C", &[ch, h, n2, 2], -1.0, 1.0);
        p.add("D", &[ch, h], -1.0, 1.0);
        p.add("output_linear.0.weight", &[h, ch * h], -0.6, 0.6);
        p.add("output_linear.0.bias", &[h], -0.3, 0.3);
        p.entries
            .push(("layer.kernel.l_kernel", vec![], vec![l_kernel as f32]));
        p
    }

    fn core_config(kw: &Value) -> S4Config {
        let get = |n: &str| kw.get(n).and_then(Value::as_u64).map(|v| v as usize);
        let tr = |n: &str, d: ParamTransform| {
            kw.get(n)
                .and_then(Value::as_str)
                .map_or(d, |v| ParamTransform::from_name(v).unwrap())
        };
        let h = get("d_model").unwrap();
        S4Config {
            d_model: h,
            d_state: get("d_state").unwrap(),
            n_ssm: get("n_ssm").unwrap_or(h),
            channels: get("channels").unwrap_or(1),
            rank: get("rank").unwrap_or(1),
            dt_tied: kw.get("dt_tie").and_then(Value::as_bool).unwrap_or(true),
            transforms: S4Transforms {
                dt: tr("dt_transform", ParamTransform::Exp),
                dt_fast: kw.get("dt_fast").and_then(Value::as_bool).unwrap_or(false),
                real: tr("real_transform", ParamTransform::Exp),
                imag: tr("imag_transform", ParamTransform::None),
            },
            output_linear: !matches!(kw.get("final_act"), Some(Value::Null)),
        }
    }

    fn named_for(kw: &Value, l_kernel: usize, seed: u64) -> Named {
        let cfg = core_config(kw);
        let n2 = cfg.d_state / 2;
        let dt_cols = if cfg.dt_tied { 1 } else { n2 };
        let mut p = named(
            cfg.d_model,
            n2,
            cfg.n_ssm,
            cfg.channels,
            cfg.rank,
            dt_cols,
            l_kernel,
            seed,
        );
        let fast = cfg.transforms.dt_fast;
        if cfg.transforms.dt != ParamTransform::Exp || fast {
            // Keep Δ = transform(sinh?(inv_dt)) small but not vanishing, as lrnnx's inits do.
            for v in p.get_mut("inv_dt") {
                if cfg.transforms.dt != ParamTransform::Exp {
                    *v -= 1.0;
                }
                if fast {
                    *v = v.asinh();
                }
            }
        }
        p
    }

    /// Cross-mode parity with the lrnnx-core S4 (which recovers C from C̃ with its own f64
    /// Gauss–Jordan and steps the dense recurrence), for several configurations and l_kernel
    /// values (below, equal to and above the test lengths 1, 7, 64, and 0).
    #[test]
    fn forward_matches_core_step() {
        let configs = [
            (
                json!({"d_model": 4, "d_state": 8, "l_max": 64, "transposed": false}),
                64,
            ),
            (json!({"d_model": 3, "d_state": 8}), 16),
            (json!({"d_model": 3, "d_state": 6}), 0),
            (
                json!({"d_model": 4, "d_state": 6, "rank": 2, "n_ssm": 2, "channels": 2,
                       "dt_tie": false}),
                20,
            ),
            (
                json!({"d_model": 2, "d_state": 4, "rank": 0, "n_ssm": 1, "channels": 2,
                       "final_act": null}),
                12,
            ),
            (
                json!({"d_model": 2, "d_state": 4, "rank": 3, "dt_fast": true,
                       "dt_transform": "softplus", "real_transform": "relu",
                       "imag_transform": "exp"}),
                9,
            ),
            (
                json!({"d_model": 3, "d_state": 4, "dt_transform": "sigmoid",
                       "real_transform": "softplus"}),
                100,
            ),
        ];
        for (i, (kw, lk)) in configs.iter().enumerate() {
            let cfg = core_config(kw);
            let p = named_for(kw, *lk, 10 * i as u64);

            let layer = S4::from_lrnnx(kw, p.params(DType::F32)).unwrap();
            assert_eq!(layer.l_kernel(), *lk);
            let core = p.with_core(|src| {
                let mut scratch = vec![0.0f64; cfg.construction_scratch_len()];
                lrnnx_core::S4::from_lrnnx(cfg, src, vec![0.0; cfg.weights_len()], &mut scratch)
                    .unwrap()
            });
            check_parity(&layer, &core, 200 + i as u64);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let names = [
            "inv_dt",
            "A_real",
            "A_imag",
            "B",
            "P",
            "C",
            "D",
            "output_linear.0.weight",
            "output_linear.0.bias",
        ];
        for (kw, lk) in [
            (json!({"d_model": 2, "d_state": 4, "channels": 2}), 3),
            (json!({"d_model": 2, "d_state": 4}), 0),
            (
                json!({"d_model": 2, "d_state": 4, "rank": 2, "n_ssm": 1, "dt_tie": false,
                       "dt_fast": true, "real_transform": "softplus",
                       "imag_transform": "relu"}),
                7,
            ),
        ] {
            let p = named_for(&kw, lk, 7);
            check_finite_differences(
                &p,
                |ps| Box::new(S4::from_lrnnx(&kw, ps).unwrap()),
                (2, 6, 2),
                &names,
                3,
            );
        }
    }

    /// The threaded batch solve equals the systems solved one by one, and names the first
    /// singular system.
    #[test]
    fn threaded_solve_matches_sequential_and_finds_singular() {
        let (n, m, k) = (37usize, 64usize, 64usize);
        let mut seed = 11u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut a: Vec<f64> = (0..n * m * m).map(|_| next()).collect();
        let b: Vec<f64> = (0..n * m * k).map(|_| next()).collect();
        for i in 0..n {
            for d in 0..m {
                a[i * m * m + d * m + d] += 4.0; // well conditioned
            }
        }
        let (a1, mut b1) = (a.clone(), b.clone());
        assert_eq!(solve_all(&a1, &mut b1, (n, m, k)), None);
        let (a2, mut b2) = (a.clone(), b.clone());
        for i in 0..n {
            assert!(gauss_jordan(
                &a2[i * m * m..(i + 1) * m * m],
                &mut b2[i * m * k..(i + 1) * m * k],
                m,
                k
            ));
        }
        assert_eq!(b1, b2);
        // zero the matrices of systems 23 and 30: the first is reported
        for i in [23, 30] {
            a[i * m * m..(i + 1) * m * m].fill(0.0);
        }
        let mut b3 = b.clone();
        assert_eq!(solve_all(&a, &mut b3, (n, m, k)), Some(23));
    }

    /// Systems without unknowns or right-hand sides, and no systems at all: empty solutions,
    /// no error (through the op, on tensors).
    #[test]
    fn empty_systems_solve_to_empty() {
        let dev = candle_core::Device::Cpu;
        for (n, m, k) in [(3usize, 0usize, 2usize), (3, 4, 0), (0, 4, 2)] {
            let a = Tensor::ones((n, m, m), DType::F64, &dev).unwrap();
            let b = Tensor::ones((n, m, k), DType::F64, &dev).unwrap();
            let x = solve(&a, &b).unwrap();
            assert_eq!(x.dims(), &[n, m, k]);
            assert_eq!(x.elem_count(), 0);
        }
    }

    /// The solve op against a product check, and its backward against finite differences.
    #[test]
    fn solve_op() {
        use crate::lru::testing::uniform;
        let dev = candle_core::Device::Cpu;
        let a = Tensor::from_vec(uniform(2 * 9, 1, -1.0, 1.0), (2, 3, 3), &dev).unwrap();
        let eye = Tensor::eye(3, DType::F64, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let a = a.broadcast_add(&(eye * 2.0).unwrap()).unwrap();
        let b = Tensor::from_vec(uniform(2 * 6, 2, -1.0, 1.0), (2, 3, 2), &dev).unwrap();
        let (av, bv) = (
            candle_core::Var::from_tensor(&a).unwrap(),
            candle_core::Var::from_tensor(&b).unwrap(),
        );
        let x = solve(av.as_tensor(), bv.as_tensor()).unwrap();
        let back = a.matmul(&x).unwrap();
        let diff = (back - &b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        let g = Tensor::from_vec(uniform(12, 3, -1.0, 1.0), (2, 3, 2), &dev).unwrap();
        let grads = (&x * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let loss = |a: &Tensor, b: &Tensor| -> f64 {
            (solve(a, b).unwrap() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let bump = |t: &Tensor, k: usize, d: f64| -> Tensor {
            let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            v[k] += d;
            Tensor::from_vec(v, t.shape(), &dev).unwrap()
        };
        for (which, t) in [(0, &a), (1, &b)] {
            let got = grads
                .get(if which == 0 {
                    av.as_tensor()
                } else {
                    bv.as_tensor()
                })
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for (k, gk) in got.iter().enumerate() {
                let eps = 1e-6;
                let (p, m) = if which == 0 {
                    (loss(&bump(t, k, eps), &b), loss(&bump(t, k, -eps), &b))
                } else {
                    (loss(&a, &bump(t, k, eps)), loss(&a, &bump(t, k, -eps)))
                };
                let fd = (p - m) / (2.0 * eps);
                assert!((gk - fd).abs() < 1e-7 * (1.0 + fd.abs()), "{which}[{k}]");
            }
        }
        // Singular: an error, not a panic.
        let z = Tensor::zeros((1, 2, 2), DType::F32, &dev).unwrap();
        let r = Tensor::ones((1, 2, 1), DType::F32, &dev).unwrap();
        assert!(solve(&z, &r).unwrap_err().to_string().contains("singular"));
    }

    #[test]
    fn argument_and_shape_errors() {
        let kw = json!({"d_model": 4, "d_state": 6});
        let p = || named(4, 3, 4, 1, 1, 1, 8, 3);
        assert!(S4::from_lrnnx(&kw, p().params(DType::F32)).is_ok());
        for (bad, word) in [
            (json!({"d_model": 4, "d_state": 6, "gate": 2}), "gate"),
            (json!({"d_model": 4, "d_state": 5}), "d_state"),
            (json!({"d_model": 4, "d_state": 6, "n_ssm": 3}), "n_ssm"),
            (
                json!({"d_model": 4, "d_state": 6, "dropout": 0.1}),
                "dropout",
            ),
            (
                json!({"d_model": 4, "d_state": 6, "dt_transform": "tanh"}),
                "dt_transform",
            ),
            (json!({"d_model": 4, "d_state": 8}), "A_real"),
            (json!({"d_model": 4, "d_state": 6, "rank": 2}), "P"),
            (json!({"d_model": 4, "d_state": 6, "channels": 2}), "C"),
            (
                json!({"d_model": 4, "d_state": 6, "dt_tie": false}),
                "inv_dt",
            ),
        ] {
            let err = S4::from_lrnnx(&bad, p().params(DType::F32))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(word), "{bad}: {err}");
        }
        for (lk, shape) in [(2.5f32, vec![]), (-1.0, vec![]), (3.0, vec![2])] {
            let mut q = p();
            let e = q
                .entries
                .iter_mut()
                .find(|e| e.0 == "layer.kernel.l_kernel")
                .unwrap();
            e.1 = shape.clone();
            e.2 = vec![lk; shape.iter().product()];
            let err = S4::from_lrnnx(&kw, q.params(DType::F32))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("l_kernel"), "{err}");
        }
        let mut q = p();
        q.entries.retain(|e| e.0 != "layer.kernel.l_kernel");
        assert!(S4::from_lrnnx(&kw, q.params(DType::F32))
            .err()
            .unwrap()
            .to_string()
            .contains("l_kernel"));
        // Rank 0 needs no P.
        let mut q = p();
        q.entries.retain(|e| e.0 != "P");
        assert!(S4::from_lrnnx(
            &json!({"d_model": 4, "d_state": 6, "rank": 0}),
            q.params(DType::F32)
        )
        .is_ok());
        let layer = S4::from_lrnnx(&kw, p().params(DType::F32)).unwrap();
        let x = Tensor::zeros((1, 3, 5), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(layer
            .forward(&x, None)
            .unwrap_err()
            .to_string()
            .contains("`x`"));
    }
}
