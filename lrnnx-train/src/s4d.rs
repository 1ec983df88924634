//! S4D, the diagonal S4 block (lrnnx `lrnnx.models.lti.s4d.S4D`, spec §5.1–5.3, 5.6, 5.7),
//! trainable.
//!
//! Per channel `h` (H of them) a diagonal complex SSM of N2 = d_state/2 states (lrnnx keeps one
//! state of each conjugate pair, hence the factor 2 on the real part):
//!
//! ```text
//! Δ[h,·] = dt_transform(sinh?(inv_dt[h,·]))            (inv_dt (H,1) tied, or (H,N2))
//! A[h,n] = −real_transform(A_real[s,n]) − i·imag_transform(A_imag[s,n]),  s = h mod n_ssm
//! zoh:      Ā = exp(ΔA),                 B̄ = B[s,n]·(exp(ΔA) − 1)/A
//! bilinear: Ā = (1 + ΔA/2)/(1 − ΔA/2),   B̄ = B[s,n]·Δ/(1 − ΔA/2)
//! u_t[h,n] = Ā[h,n]·u_{t−1}[h,n] + B̄[h,n]·x_t[h]       (parallel: the complex scan over t)
//! z_t[c,h] = 2·Re Σ_n C[c,h,n]·u_t[h,n] + D[c,h]·x_t[h]        (c < channels)
//! z = GELU(GELU(z))                                    (flattened (c,h); exact erf GELU, twice)
//! y = GELU(z Wᵀ + b)                                   (output_linear.0, when final_act ≠ None)
//! ```
//!
//! lrnnx computes the SSM part as an FFT convolution with the kernel
//! `K[c,h,l] = 2·Re Σ_n C·B̄·Ā^l` (bilinear: `exp(l·log Ā)`); the recurrence is its exact
//! equivalent. The two GELUs in a row (conv_activation, then mult_activation) and the GELU after
//! the output linear (never a GLU) are lrnnx's, as in the core's importer.
//!
//! Here too the forward is that convolution (`conv_block`): the kernel is built from block
//! matmuls on the CPU and by one op on CUDA ([`crate::vandermonde`]), `D·x` is its tap 0, and
//! the transposes and GELUs around the convolution are the fused ops of [`crate::pointwise`].
//!
//! Parameters (lrnnx names): `inv_dt` (H,1) or (H,N2), `A_real` (S,N2), `A_imag` (S,N2),
//! `B` (1,S,N2,2) and `C` (ch,H,N2,2) (trailing axis = re, im), `D` (ch,H), and with the output
//! linear `output_linear.0.weight` (H, ch·H), `output_linear.0.bias` (H,). lrnnx's state dict
//! repeats the SSM parameters under `layer.kernel.` (the same storage); those keys are not read,
//! and their gradients are the top-level parameters' gradients.
//!
//! Constructor arguments: `d_model`, `d_state` (64), `n_ssm` (None → d_model), `channels` (1),
//! `dt_tie` (True), `dt_transform` ("exp"), `dt_fast` (False), `real_transform` ("exp"),
//! `imag_transform` ("none"), `disc` ("zoh" or "bilinear"), `final_act` ("glu": any non-None
//! value gives Linear + GELU) and its deprecated alias `postact`. Rejected: `gate`,
//! `bottleneck`, `is_real`, `swap_channels` (as in the core's importer) and a non-zero `dropout`
//! (not applied here). `l_max` is ignored: lrnnx's forward truncates its kernel to `l_max`
//! taps, so for sequences longer than `l_max` lrnnx's forward differs from its own step; this
//! layer is the untruncated recurrence (lrnnx's step). `transposed` is ignored: the forward
//! takes (B, L, H) like every [`TrainLayer`]. Initializer arguments have no effect.

use candle_core::{Result, Tensor};
use lrnnx_core::ParamTransform;
use serde_json::Value;

use crate::complex::CTensor;
use crate::fftconv::causal_conv;
use crate::layer::{usize_arg, BuildError, Cache, TrainLayer};
use crate::lru::check_input;
use crate::ops::softplus;
use crate::params::Params;
#[cfg(test)]
use crate::pointwise::swap_axes_gelu;
use crate::pointwise::{bias_gelu, gelu_gelu, swap_grouped_gelu, transpose_last2};
#[cfg(test)]
use crate::scan::complex_scan;
use crate::vandermonde::vandermonde_kernel;

/// S4D's discretization rule (`disc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S4dDisc {
    /// `Ā = exp(ΔA)`, `B̄ = B(exp(ΔA) − 1)/A` (lrnnx default).
    Zoh,
    /// `Ā = (1 + ΔA/2)/(1 − ΔA/2)`, `B̄ = BΔ/(1 − ΔA/2)` (the correct Tustin rule).
    Bilinear,
}

/// A trainable S4D block.
pub struct S4d {
    d_model: usize,
    n2: usize,
    n_ssm: usize,
    channels: usize,
    dt_tied: bool,
    dt_transform: ParamTransform,
    dt_fast: bool,
    real_transform: ParamTransform,
    imag_transform: ParamTransform,
    disc: S4dDisc,
    output_linear: bool,
    params: Params,
}

pub(crate) fn kwarg(name: &str, reason: impl std::fmt::Display) -> BuildError {
    BuildError::Kwarg(format!("`{name}`: {reason}"))
}

/// An optional argument: `None` when absent or null.
pub(crate) fn opt<'v>(kwargs: &'v Value, name: &str) -> Option<&'v Value> {
    kwargs.get(name).filter(|v| !v.is_null())
}

pub(crate) fn usize_or(
    kwargs: &Value,
    name: &str,
    default: usize,
) -> std::result::Result<usize, BuildError> {
    match opt(kwargs, name) {
        None => Ok(default),
        Some(_) => usize_arg(kwargs, name),
    }
}

pub(crate) fn bool_or(
    kwargs: &Value,
    name: &str,
    default: bool,
) -> std::result::Result<bool, BuildError> {
    match opt(kwargs, name) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| kwarg(name, format!("expected true or false, got {v}"))),
    }
}

fn str_or<'v>(
    kwargs: &'v Value,
    name: &str,
    default: &'v str,
) -> std::result::Result<&'v str, BuildError> {
    match opt(kwargs, name) {
        None => Ok(default),
        Some(v) => v
            .as_str()
            .ok_or_else(|| kwarg(name, format!("expected a string, got {v}"))),
    }
}

pub(crate) fn transform_or(
    kwargs: &Value,
    name: &str,
    default: &str,
) -> std::result::Result<ParamTransform, BuildError> {
    let v = str_or(kwargs, name, default)?;
    ParamTransform::from_name(v).ok_or_else(|| {
        kwarg(
            name,
            format!("unknown transform `{v}` (expected none, exp, relu, sigmoid or softplus)"),
        )
    })
}

fn reject_if_set(kwargs: &Value, name: &str, reason: &str) -> std::result::Result<(), BuildError> {
    match kwargs.get(name) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(_) => Err(kwarg(name, reason)),
    }
}

/// Whether `final_act` (or its deprecated alias `postact`) asks for the output linear.
pub(crate) fn output_linear(kwargs: &Value) -> std::result::Result<bool, BuildError> {
    if opt(kwargs, "postact").is_some() {
        if opt(kwargs, "final_act").is_some() {
            return Err(kwarg(
                "postact",
                "lrnnx requires final_act=None when the deprecated postact is given",
            ));
        }
        return Ok(true);
    }
    Ok(!matches!(kwargs.get("final_act"), Some(Value::Null)))
}

/// lrnnx's parameter transform `t` as candle ops.
pub(crate) fn transform(t: ParamTransform, x: &Tensor) -> Result<Tensor> {
    match t {
        ParamTransform::None => Ok(x.clone()),
        ParamTransform::Exp => x.exp(),
        ParamTransform::Relu => x.relu()? + 1e-4,
        ParamTransform::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip(),
        ParamTransform::Softplus => softplus(x),
    }
}

/// Tiles the `n_ssm` rows of `t` (S, ·) to H rows: row `h` is row `h mod S`.
fn tile_rows(t: &Tensor, h: usize) -> Result<Tensor> {
    let s = t.dim(0)?;
    if s == h {
        Ok(t.clone())
    } else {
        t.repeat((h / s, 1))
    }
}

/// The constructor arguments S4 and S4D share (lrnnx's S4 block, spec §5.1), checked.
pub(crate) struct BlockArgs {
    /// H.
    pub d_model: usize,
    /// N (d_state/2 conjugate pairs are stored).
    pub d_state: usize,
    /// Number of distinct SSMs, tiled over the H channels.
    pub n_ssm: usize,
    /// Output copies per channel.
    pub channels: usize,
}

/// Reads and checks the shared S4/S4D block arguments; rejects the options whose lrnnx shapes
/// are broken (`gate`, `bottleneck`, spec §18.31), the unsupported variants (`is_real`,
/// `swap_channels`) and a non-zero `dropout` (not applied here).
pub(crate) fn block_args(kwargs: &Value) -> std::result::Result<BlockArgs, BuildError> {
    reject_if_set(
        kwargs,
        "gate",
        "the gated (GSS) variant is not supported: lrnnx's own output_gate shapes are \
         inconsistent (spec §18.31)",
    )?;
    reject_if_set(
        kwargs,
        "bottleneck",
        "the bottleneck variant is not supported: lrnnx's own input_linear shapes are \
         inconsistent (spec §18.31)",
    )?;
    reject_if_set(
        kwargs,
        "is_real",
        "the real-valued SSM variant is not supported",
    )?;
    reject_if_set(
        kwargs,
        "swap_channels",
        "only lrnnx's default (channel, feature) output order is supported",
    )?;
    if let Some(v) = opt(kwargs, "dropout") {
        if v.as_f64() != Some(0.0) {
            return Err(kwarg(
                "dropout",
                format!("{v}: dropout is not applied by this layer (only 0 is supported)"),
            ));
        }
    }
    let d_model = usize_arg(kwargs, "d_model")?;
    let d_state = usize_or(kwargs, "d_state", 64)?;
    let n_ssm = usize_or(kwargs, "n_ssm", d_model)?;
    let channels = usize_or(kwargs, "channels", 1)?;
    if d_model == 0 {
        return Err(kwarg("d_model", "must be positive"));
    }
    if d_state < 2 || d_state % 2 == 1 {
        return Err(kwarg(
            "d_state",
            "must be a positive even number (lrnnx stores d_state/2 conjugate pairs)",
        ));
    }
    if n_ssm == 0 || d_model % n_ssm != 0 {
        return Err(kwarg("n_ssm", "must divide d_model"));
    }
    if channels == 0 {
        return Err(kwarg("channels", "must be positive"));
    }
    Ok(BlockArgs {
        d_model,
        d_state,
        n_ssm,
        channels,
    })
}

impl S4d {
    /// From lrnnx's constructor arguments (module doc) and its parameters; checks every
    /// parameter's shape.
    pub fn from_lrnnx(kwargs: &Value, params: Params) -> std::result::Result<Self, BuildError> {
        let BlockArgs {
            d_model,
            d_state,
            n_ssm,
            channels,
        } = block_args(kwargs)?;
        let disc = match str_or(kwargs, "disc", "zoh")? {
            "zoh" => S4dDisc::Zoh,
            "bilinear" => S4dDisc::Bilinear,
            other => {
                return Err(kwarg(
                    "disc",
                    format!("unknown discretization `{other}` (lrnnx S4D knows zoh, bilinear)"),
                ))
            }
        };
        let layer = S4d {
            d_model,
            n2: d_state / 2,
            n_ssm,
            channels,
            dt_tied: bool_or(kwargs, "dt_tie", true)?,
            dt_transform: transform_or(kwargs, "dt_transform", "exp")?,
            dt_fast: bool_or(kwargs, "dt_fast", false)?,
            real_transform: transform_or(kwargs, "real_transform", "exp")?,
            imag_transform: transform_or(kwargs, "imag_transform", "none")?,
            disc,
            output_linear: output_linear(kwargs)?,
            params,
        };
        layer.weights()?; // shape checks now rather than at the first forward
        Ok(layer)
    }

    /// `[inv_dt, A_real, A_imag, B, C, D]` and the output linear `(W, b)`, shapes checked.
    #[allow(clippy::type_complexity)]
    fn weights(&self) -> Result<([Tensor; 6], Option<(Tensor, Tensor)>)> {
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
        let lin = if self.output_linear {
            Some((
                p.get("output_linear.0.weight", &[h, ch * h])?,
                p.get("output_linear.0.bias", &[h])?,
            ))
        } else {
            None
        };
        Ok((ssm, lin))
    }

    /// `(Ā, B̄)`, each (H, N2), from the parameters (module doc).
    fn discretized(
        &self,
        inv_dt: &Tensor,
        a_real: &Tensor,
        a_imag: &Tensor,
        b: &Tensor,
    ) -> Result<(CTensor, CTensor)> {
        let h = self.d_model;
        let raw = if self.dt_fast {
            // sinh(x) = (eˣ − e⁻ˣ)/2
            ((inv_dt.exp()? - inv_dt.neg()?.exp()?)? * 0.5)?
        } else {
            inv_dt.clone()
        };
        let dt = transform(self.dt_transform, &raw)?; // (H, 1) or (H, N2)
        let a = CTensor::new(
            tile_rows(&transform(self.real_transform, a_real)?.neg()?, h)?,
            tile_rows(&transform(self.imag_transform, a_imag)?.neg()?, h)?,
        );
        let b = CTensor::unpack(&b.squeeze(0)?)?;
        let b = CTensor::new(tile_rows(&b.re, h)?, tile_rows(&b.im, h)?);
        let dta = a.mul_real(&dt)?;
        let (a_bar, gamma) = match self.disc {
            S4dDisc::Zoh => {
                let a_bar = dta.exp()?;
                let gamma = a_bar.affine(1.0, -1.0)?.div(&a)?; // (Ā − 1)/A
                (a_bar, gamma)
            }
            S4dDisc::Bilinear => {
                let den = dta.affine(-0.5, 1.0)?; // 1 − ΔA/2
                let a_bar = dta.affine(0.5, 1.0)?.div(&den)?;
                let gamma = CTensor::from_real(&dt)?.div(&den)?; // Δ/(1 − ΔA/2)
                (a_bar, gamma)
            }
        };
        Ok((a_bar, b.mul(&gamma)?))
    }
}

/// Elementwise complex power `a^e` (e ≥ 1) by binary powering.
fn cpow(a: &CTensor, mut e: usize) -> Result<CTensor> {
    let mut base = a.clone();
    let mut acc: Option<CTensor> = None;
    loop {
        if e & 1 == 1 {
            acc = Some(match acc {
                None => base.clone(),
                Some(r) => r.mul(&base)?,
            });
        }
        e >>= 1;
        if e == 0 {
            break;
        }
        base = base.mul(&base)?;
    }
    match acc {
        Some(r) => Ok(r),
        None => candle_core::bail!("S4D: power with exponent 0"),
    }
}

impl S4d {
    /// The SSM part `Σ_n 2·Re(C·u_t)` (B, L, ch, H) by the complex scan over the H·N2 states:
    /// the test reference for [`S4d::ssm_fft`] (which is 10× faster forward, 16× forward +
    /// backward at H = 64, N = 64, L = 2048).
    #[cfg(test)]
    fn ssm_scan(
        &self,
        x: &Tensor,
        a_bar: &CTensor,
        b_bar: &CTensor,
        c: &CTensor,
    ) -> Result<Tensor> {
        let (h, n2) = (self.d_model, self.n2);
        let (bsz, l, _) = x.dims3()?;
        // u[b,t,h,n] = B̄[h,n]·x[b,t,h], flattened to (B, L, H·N2) for the scan.
        let xe = x.unsqueeze(3)?;
        let flat = |t: Tensor| t.reshape((bsz, l, h * n2));
        let u = CTensor::new(
            flat(xe.broadcast_mul(&b_bar.re)?)?,
            flat(xe.broadcast_mul(&b_bar.im)?)?,
        );
        let a_bar = CTensor::new(a_bar.re.reshape(h * n2)?, a_bar.im.reshape(h * n2)?);
        let s = complex_scan(&a_bar, &u)?;
        let (s_re, s_im) = (
            s.re.reshape((bsz, l, 1, h, n2))?,
            s.im.reshape((bsz, l, 1, h, n2))?,
        );
        // 2·Σ_n (Re C·Re s − Im C·Im s)
        (s_re.broadcast_mul(&c.re)? - s_im.broadcast_mul(&c.im)?)?.sum(4)? * 2.0
    }

    /// The convolution kernel `K[c,h,l] = 2·Re Σ_n C[c,h,n]·B̄[h,n]·Ā[h,n]^l` of `l` taps,
    /// `(H·ch, l)` with rows ordered `(h, c)`, built in blocks of `T ≈ √(ch·l)` taps as
    /// `K[c,h,iT + j] = 2·Re Σ_n (C·B̄·Ā^{iT})[c,h,n]·Ā[h,n]^j` (one batched complex product of
    /// the ⌈l/T⌉·ch row vectors and the T columns `Ā^j`, each made by doubling).
    /// On a CUDA device [`S4d::kernel_fused`] builds it instead (up to 65535 channels, its
    /// grid's limit).
    fn kernel(&self, a_bar: &CTensor, b_bar: &CTensor, c: &CTensor, l: usize) -> Result<Tensor> {
        if a_bar.re.device().is_cuda() && self.d_model <= 65_535 {
            return Self::kernel_fused(a_bar, b_bar, c, l);
        }
        let (h, ch) = (self.d_model, self.channels);
        let block = (((ch * l) as f64).sqrt().ceil() as usize).clamp(1, l.max(1));
        let blocks = l.div_ceil(block).max(1);
        // V[h,n,j] = Ā^j, j < T.
        let ones = CTensor::from_real(&a_bar.re.ones_like()?)?;
        let mut v = CTensor::new(ones.re.unsqueeze(2)?, ones.im.unsqueeze(2)?);
        let mut pw = CTensor::new(a_bar.re.unsqueeze(2)?, a_bar.im.unsqueeze(2)?);
        while v.re.dim(2)? < block {
            let next = v.mul(&pw)?;
            v = CTensor::new(
                Tensor::cat(&[&v.re, &next.re], 2)?,
                Tensor::cat(&[&v.im, &next.im], 2)?,
            );
            if v.re.dim(2)? < block {
                pw = pw.mul(&pw)?;
            }
        }
        // narrowed columns are strided: copied out on CUDA for its matmul
        let v = CTensor::new(
            crate::ops::matmul_operand(&v.re.narrow(2, 0, block)?)?,
            crate::ops::matmul_operand(&v.im.narrow(2, 0, block)?)?,
        );
        // R[h,(i,c),n] = C[c,h,n]·B̄[h,n]·Ā^{iT}
        let cb = c.mul(b_bar)?; // (ch, H, N2)
        let mut r = CTensor::new(
            cb.re.transpose(0, 1)?.contiguous()?,
            cb.im.transpose(0, 1)?.contiguous()?,
        );
        if blocks > 1 {
            let p = cpow(a_bar, block)?;
            let mut step = CTensor::new(p.re.unsqueeze(1)?, p.im.unsqueeze(1)?); // (H, 1, N2)
            while r.re.dim(1)? < blocks * ch {
                let next = r.mul(&step)?;
                r = CTensor::new(
                    Tensor::cat(&[&r.re, &next.re], 1)?,
                    Tensor::cat(&[&r.im, &next.im], 1)?,
                );
                if r.re.dim(1)? < blocks * ch {
                    step = step.mul(&step)?;
                }
            }
            r = CTensor::new(
                r.re.narrow(1, 0, blocks * ch)?,
                r.im.narrow(1, 0, blocks * ch)?,
            );
        }
        ((r.re.matmul(&v.re)? - r.im.matmul(&v.im)?)? * 2.0)? // (H, blocks·ch, T)
            .reshape((h, blocks, ch, block))?
            .permute((0, 2, 1, 3))?
            .reshape((h * ch, blocks * block))?
            .narrow(1, 0, l)
    }

    /// The same kernel as one op, [`vandermonde_kernel`] with `z = Ā` and `w = C·B̄` (one launch
    /// each way on CUDA, where the block matmuls above take hundreds of small candle ops).
    fn kernel_fused(a_bar: &CTensor, b_bar: &CTensor, c: &CTensor, l: usize) -> Result<Tensor> {
        let w = c.mul(b_bar)?; // (ch, H, N2)
        vandermonde_kernel(
            &Tensor::stack(&[&a_bar.re, &a_bar.im], 2)?,
            &Tensor::stack(&[&w.re, &w.im], 3)?,
            l,
        )
    }

    /// The SSM part `(B, L, ch, H)` as the causal convolution of `x` with [`S4d::kernel`]: the
    /// test reference's counterpart (the layer runs [`conv_block`], which adds `D` and the
    /// activations).
    #[cfg(test)]
    fn ssm_fft(&self, x: &Tensor, a_bar: &CTensor, b_bar: &CTensor, c: &CTensor) -> Result<Tensor> {
        let (h, ch) = (self.d_model, self.channels);
        let (bsz, l, _) = x.dims3()?;
        let k = self.kernel(a_bar, b_bar, c, l)?;
        let u = conv_input(x, ch)?;
        swap_axes_gelu(&causal_conv(&u, &k)?.reshape((bsz, h, ch, l))?, 0)
    }
}

/// The signals of the block's convolution: `x` `(B, L, H)` as rows `(B, H·ch, L)`, each channel
/// `h` repeated for its `ch` outputs.
fn conv_input(x: &Tensor, ch: usize) -> Result<Tensor> {
    let (bsz, l, h) = x.dims3()?;
    let xh = transpose_last2(x)?; // (B, H, L)
    if ch == 1 {
        Ok(xh)
    } else {
        xh.unsqueeze(2)?
            .broadcast_as((bsz, h, ch, l))?
            .reshape((bsz, h * ch, l))
    }
}

/// The S4 / S4D block from its convolution kernel `k` `(H·ch, L)` (rows ordered `(h, c)`) on
/// `x` `(B, L, H)`:
///
/// ```text
/// z[b,t,c,h] = Σ_{s ≤ t} K[h,c,t−s]·x[b,s,h] + D[c,h]·x[b,t,h]      (D·x is K's tap 0: folded in)
/// z = GELU(GELU(z))  (B, L, ch·H);   y = GELU(z Wᵀ + b) with the output linear `(W, b)`
/// ```
///
/// as the causal convolution, one swap of axes with both GELUs, and a matmul with the fused
/// bias GELU (`crate::pointwise`).
pub(crate) fn conv_block(
    x: &Tensor,
    k: &Tensor,
    d: &Tensor,
    lin: Option<(Tensor, Tensor)>,
    ch: usize,
) -> Result<Tensor> {
    let (_, l, h) = x.dims3()?;
    let d_col = d.t()?.reshape((h * ch, 1))?; // rows (h, c), as k's
    let k = if l > 1 {
        Tensor::cat(
            &[&k.narrow(1, 0, 1)?.add(&d_col)?, &k.narrow(1, 1, l - 1)?],
            1,
        )?
    } else {
        k.add(&d_col)?
    };
    let z = causal_conv(&conv_input(x, ch)?, &k)?; // (B, H·ch, L)
    let z = swap_grouped_gelu(&z, ch, 2)?; // (B, L, ch·H)
    match lin {
        None => Ok(z),
        Some((w, bias)) => bias_gelu(&z.broadcast_matmul(&w.t()?)?, &bias),
    }
}

impl TrainLayer for S4d {
    fn forward(&self, x: &Tensor, _time_steps: Option<&Tensor>) -> Result<Tensor> {
        let (h, ch) = (self.d_model, self.channels);
        let (_, l) = check_input(x, h)?;
        let ([inv_dt, a_real, a_imag, b, c, d], lin) = self.weights()?;
        let (a_bar, b_bar) = self.discretized(&inv_dt, &a_real, &a_imag, &b)?;
        let c = CTensor::unpack(&c)?; // (ch, H, N2)
        let k = self.kernel(&a_bar, &b_bar, &c, l)?;
        conv_block(x, &k, &d, lin, ch)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// State: `[Re u, Im u]`, each (B, H, N2) (lrnnx's `lrnn_state` (B, H, N2) complex).
    fn init_cache(&self, batch: usize) -> Result<Cache> {
        let ([inv_dt, a_real, a_imag, b, c, d], lin) = self.weights()?;
        let (a_bar, b_bar) = self.discretized(&inv_dt, &a_real, &a_imag, &b)?;
        let c = CTensor::unpack(&c)?;
        let z = Tensor::zeros((batch, self.d_model, self.n2), d.dtype(), d.device())?;
        let mut consts = vec![a_bar.re, a_bar.im, b_bar.re, b_bar.im, c.re, c.im, d];
        if let Some((w, bias)) = lin {
            consts.extend([w, bias]);
        }
        Ok(Cache::new(
            "S4D",
            self.params(),
            batch,
            z.dtype(),
            vec![z.clone(), z],
            consts,
        ))
    }

    /// `u ← Ā ⊙ u + B̄ x_t`, then the read-out and the block tail (module doc).
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor> {
        cache.check_step("S4D", self.params(), x_t, self.d_model, time_step, false)?;
        let (ar, ai, br, bi, cr, ci, d) = match &cache.consts[..] {
            [ar, ai, br, bi, cr, ci, d, ..] => (ar, ai, br, bi, cr, ci, d),
            _ => candle_core::bail!("S4D: malformed cache"),
        };
        let lin = cache.consts.get(7..9);
        let bsz = x_t.dim(0)?;
        let xe = x_t.unsqueeze(2)?; // (B, H, 1)
        let u = CTensor::new(cache.state[0].clone(), cache.state[1].clone());
        let u = CTensor::new(ar.clone(), ai.clone())
            .mul(&u)?
            .add(&CTensor::new(xe.broadcast_mul(br)?, xe.broadcast_mul(bi)?))?;
        // z[b,c,h] = 2·Σ_n Re(C[c,h,n]·u[b,h,n]) + D[c,h]·x[b,h]
        let z = (u.re.unsqueeze(1)?.broadcast_mul(cr)? - u.im.unsqueeze(1)?.broadcast_mul(ci)?)?
            .sum(3)?;
        let z = ((z * 2.0)? + x_t.unsqueeze(1)?.broadcast_mul(d)?)?;
        let z = gelu_gelu(&z.reshape((bsz, self.channels * self.d_model))?)?;
        let y = match lin {
            Some([w, bias]) => bias_gelu(&z.matmul(&w.t()?)?, bias)?,
            _ => z,
        };
        cache.state = vec![u.re, u.im];
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lru::testing::{check_finite_differences, check_parity, Named};
    use candle_core::{DType, Device};
    use lrnnx_core::{Discretization, S4Transforms, S4dConfig};
    use serde_json::json;

    fn named(h: usize, n2: usize, s: usize, ch: usize, dt_cols: usize, seed: u64) -> Named {
        let mut p = Named::new(seed);
        p.add("inv_dt", &[h, dt_cols], -4.0, -1.5);
        p.add("A_real", &[s, n2], -1.2, -0.2);
        p.add("A_imag", &[s, n2], 0.0, 6.0);
        p.add("B", &[1, s, n2, 2], -1.0, 1.0);
        p.add("C", &[ch, h, n2, 2], -1.0, 1.0);
        p.add("D", &[ch, h], -1.0, 1.0);
        p.add("output_linear.0.weight", &[h, ch * h], -0.6, 0.6);
        p.add("output_linear.0.bias", &[h], -0.3, 0.3);
        p
    }

    fn core_config(kw: &Value) -> S4dConfig {
        let get = |n: &str| kw.get(n).and_then(Value::as_u64).map(|v| v as usize);
        let tr = |n: &str, d: ParamTransform| {
            kw.get(n)
                .and_then(Value::as_str)
                .map_or(d, |v| ParamTransform::from_name(v).unwrap())
        };
        let h = get("d_model").unwrap();
        S4dConfig {
            d_model: h,
            d_state: get("d_state").unwrap(),
            n_ssm: get("n_ssm").unwrap_or(h),
            channels: get("channels").unwrap_or(1),
            dt_tied: kw.get("dt_tie").and_then(Value::as_bool).unwrap_or(true),
            transforms: S4Transforms {
                dt: tr("dt_transform", ParamTransform::Exp),
                dt_fast: kw.get("dt_fast").and_then(Value::as_bool).unwrap_or(false),
                real: tr("real_transform", ParamTransform::Exp),
                imag: tr("imag_transform", ParamTransform::None),
            },
            discretization: match kw.get("disc").and_then(Value::as_str) {
                Some("bilinear") => Discretization::Bilinear,
                _ => Discretization::Zoh,
            },
            output_linear: !matches!(kw.get("final_act"), Some(Value::Null)),
        }
    }

    /// The FFT-convolution SSM part equals the scan over the states (forward and gradients of
    /// every parameter), several channels and lengths that are not multiples of the block.
    #[test]
    fn fft_convolution_equals_the_scan() {
        for (disc, l, ch) in [
            ("zoh", 300usize, 2usize),
            ("bilinear", 77, 1),
            ("zoh", 1, 3),
        ] {
            let (h, n) = (3usize, 8usize);
            let kw = json!({"d_model": h, "d_state": n, "disc": disc, "channels": ch});
            let layer = crate::init::fresh(
                "S4D",
                &kw,
                &mut crate::init::Rng::new(l as u64),
                DType::F64,
                &Device::Cpu,
            )
            .unwrap();
            let layer = S4d::from_lrnnx(&kw, layer.params().clone()).unwrap();
            let x = Tensor::randn(0f64, 1.0, (2, l, h), &Device::Cpu).unwrap();
            let g = Tensor::randn(0f64, 1.0, (2, l, ch, h), &Device::Cpu).unwrap();
            let ([inv_dt, a_real, a_imag, b, c, _], _) = layer.weights().unwrap();
            let (a_bar, b_bar) = layer.discretized(&inv_dt, &a_real, &a_imag, &b).unwrap();
            let c = CTensor::unpack(&c).unwrap();
            let run = |fft: bool| {
                let z = if fft {
                    layer.ssm_fft(&x, &a_bar, &b_bar, &c)
                } else {
                    layer.ssm_scan(&x, &a_bar, &b_bar, &c)
                }
                .unwrap();
                let loss = (&z * &g).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let mut out = vec![z.flatten_all().unwrap().to_vec1::<f64>().unwrap()];
                for v in layer.params().vars().values() {
                    if let Some(gr) = grads.get(v.as_tensor()) {
                        out.push(gr.flatten_all().unwrap().to_vec1::<f64>().unwrap());
                    }
                }
                out
            };
            let (fft, scan) = (run(true), run(false));
            assert_eq!(fft.len(), scan.len());
            for (a, b) in fft.iter().zip(&scan) {
                let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
                for (p, q) in a.iter().zip(b) {
                    assert!((p - q).abs() <= 1e-9 * scale, "{disc} L={l}: {p} vs {q}");
                }
            }
        }
    }

    /// The one-op kernel (what CUDA runs) equals the block-matmul kernel (what the CPU runs):
    /// values and the gradients of every parameter, f64, lengths past one block and channels.
    #[test]
    fn fused_kernel_equals_block_matmuls() {
        for (disc, l, ch) in [
            ("zoh", 300usize, 2usize),
            ("bilinear", 77, 1),
            ("zoh", 1, 1),
        ] {
            let (h, n) = (3usize, 8usize);
            let kw = json!({"d_model": h, "d_state": n, "disc": disc, "channels": ch});
            let fresh = crate::init::fresh(
                "S4D",
                &kw,
                &mut crate::init::Rng::new(l as u64 + 5),
                DType::F64,
                &Device::Cpu,
            )
            .unwrap();
            let layer = S4d::from_lrnnx(&kw, fresh.params().clone()).unwrap();
            let g = Tensor::randn(0f64, 1.0, (h * ch, l), &Device::Cpu).unwrap();
            let run = |fused: bool| {
                let ([inv_dt, a_real, a_imag, b, c, _], _) = layer.weights().unwrap();
                let (a_bar, b_bar) = layer.discretized(&inv_dt, &a_real, &a_imag, &b).unwrap();
                let c = CTensor::unpack(&c).unwrap();
                let k = if fused {
                    S4d::kernel_fused(&a_bar, &b_bar, &c, l)
                } else {
                    layer.kernel(&a_bar, &b_bar, &c, l)
                }
                .unwrap();
                let grads = (&k * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![k.flatten_all().unwrap().to_vec1::<f64>().unwrap()];
                for v in layer.params().vars().values() {
                    if let Some(gr) = grads.get(v.as_tensor()) {
                        out.push(gr.flatten_all().unwrap().to_vec1::<f64>().unwrap());
                    }
                }
                out
            };
            let (fused, blocks) = (run(true), run(false));
            assert_eq!(fused.len(), blocks.len());
            assert!(fused.len() >= 5, "kernel + inv_dt, A_real, B, C gradients");
            for (a, b) in fused.iter().zip(&blocks) {
                let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
                for (p, q) in a.iter().zip(b) {
                    assert!((p - q).abs() <= 1e-10 * scale, "{disc} L={l}: {p} vs {q}");
                }
            }
        }
    }

    /// Cross-mode parity with the lrnnx-core S4D for several configurations.
    #[test]
    fn forward_matches_core_step() {
        let configs = [
            json!({"d_model": 4, "d_state": 6, "disc": "zoh"}),
            json!({"d_model": 4, "d_state": 6, "disc": "bilinear", "transposed": false}),
            json!({"d_model": 4, "d_state": 4, "disc": "bilinear", "n_ssm": 2, "channels": 2,
                   "dt_tie": false}),
            json!({"d_model": 4, "d_state": 4, "n_ssm": 1, "channels": 2, "final_act": null,
                   "dt_fast": true, "dt_transform": "softplus", "real_transform": "softplus",
                   "imag_transform": "relu"}),
            json!({"d_model": 3, "d_state": 2, "dt_transform": "sigmoid",
                   "real_transform": "relu"}),
        ];
        for (i, kw) in configs.iter().enumerate() {
            let cfg = core_config(kw);
            let (h, n2) = (cfg.d_model, cfg.d_state / 2);
            let dt_cols = if cfg.dt_tied { 1 } else { n2 };
            let mut p = named(h, n2, cfg.n_ssm, cfg.channels, dt_cols, 10 * i as u64);
            if cfg.transforms.dt != ParamTransform::Exp {
                // Δ from softplus / sigmoid: keep it small, as lrnnx's inits do.
                for v in p.get_mut("inv_dt") {
                    *v -= 1.0;
                }
            }
            let layer = S4d::from_lrnnx(kw, p.params(DType::F32)).unwrap();
            let core = p.with_core(|src| {
                lrnnx_core::S4d::from_lrnnx(cfg, src, vec![0.0; cfg.weights_len()]).unwrap()
            });
            check_parity(&layer, &core, 100 + i as u64);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let names = [
            "inv_dt",
            "A_real",
            "A_imag",
            "B",
            "C",
            "D",
            "output_linear.0.weight",
            "output_linear.0.bias",
        ];
        for (kw, dt_cols) in [
            (
                json!({"d_model": 2, "d_state": 4, "n_ssm": 1, "channels": 2}),
                1,
            ),
            (
                json!({"d_model": 2, "d_state": 4, "disc": "bilinear", "channels": 2,
                       "dt_tie": false}),
                2,
            ),
            (
                json!({"d_model": 2, "d_state": 4, "channels": 2, "dt_fast": true,
                       "dt_transform": "softplus", "real_transform": "softplus",
                       "imag_transform": "relu"}),
                1,
            ),
            (
                json!({"d_model": 2, "d_state": 4, "channels": 2, "disc": "bilinear",
                       "dt_transform": "sigmoid", "real_transform": "none",
                       "imag_transform": "exp"}),
                1,
            ),
        ] {
            let s = kw.get("n_ssm").map_or(2, |_| 1);
            let p = named(2, 2, s, 2, dt_cols, 7);
            check_finite_differences(
                &p,
                |ps| Box::new(S4d::from_lrnnx(&kw, ps).unwrap()),
                (2, 5, 2),
                &names,
                3,
            );
        }
    }

    #[test]
    fn argument_and_shape_errors() {
        let p = || named(4, 3, 4, 1, 1, 3).params(DType::F32);
        let ok = json!({"d_model": 4, "d_state": 6});
        assert!(S4d::from_lrnnx(&ok, p()).is_ok());
        for (bad, word) in [
            (json!({"d_model": 4, "d_state": 6, "gate": 2}), "gate"),
            (json!({"d_model": 4, "d_state": 6, "disc": "dirac"}), "disc"),
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
            (json!({"d_model": 4, "d_state": 6, "channels": 2}), "C"),
            (
                json!({"d_model": 4, "d_state": 6, "dt_tie": false}),
                "inv_dt",
            ),
        ] {
            let err = S4d::from_lrnnx(&bad, p()).err().unwrap().to_string();
            assert!(err.contains(word), "{bad}: {err}");
        }
        // Without the output linear its parameters are not needed.
        let mut q = named(4, 3, 4, 1, 1, 3);
        q.entries.retain(|e| !e.0.starts_with("output_linear"));
        assert!(
            S4d::from_lrnnx(&json!({"d_model": 4, "d_state": 6}), q.params(DType::F32)).is_err()
        );
        let layer = S4d::from_lrnnx(
            &json!({"d_model": 4, "d_state": 6, "final_act": null}),
            q.params(DType::F32),
        )
        .unwrap();
        let x = Tensor::zeros((1, 3, 5), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(layer
            .forward(&x, None)
            .unwrap_err()
            .to_string()
            .contains("`x`"));
    }
}
