//! The training crate's Mamba scan block on CUDA (feature `cuda`): the fused `mamba_scan`
//! against the candle-op compositions it replaces, all measured in this process on one GPU.
//!
//! ```text
//! cargo bench --features cuda --bench train_gpu [-- BATCH LEN CHANNELS STATE]   # 8 4096 2048 16
//! ```
//!
//! The block is `y = (selective_scan(u, Δ, Δ, A, B_t, C_t) + D⊙u)⊙SiLU(z)` with
//! `Δ = softplus(Δ_raw + b)` (Mamba's layer without its projections), timed three ways:
//!
//! * `composed, ΔA copy` (the baseline): softplus, `D` skip and gate as candle ops around
//!   `selective_scan`, whose `ΔA` is a copy of `Δ`, so the kernel reads it as a separate operand
//!   (chunked kernels; how the layer ran before `mamba_scan`);
//! * `composed, shared Δ`: the same with `ΔA` the very tensor `Δ` (one operand fewer; `Auto` may
//!   take the sequential kernels);
//! * `fused`: `mamba_scan`, bias, softplus, `D` and gate inside the kernel.
//!
//! Each is timed forward and forward + backward (loss `Σ y ⊙ g` summed per channel row first, gradients of all nine
//! operands), as the median of 10 runs after 3 warm-ups, the device synchronized around each;
//! printed with its speed-up over the baseline. The three are checked to agree (output 1e-5,
//! gradients 1e-4 of the largest value) before anything is timed.
//!
//! Then an S4D layer and an S4 (DPLR) layer (lrnnx's default init, d_model 256, d_state 64:
//! a causal convolution with a kernel as long as the sequence) at batch 8 and lengths 4096 and
//! 16384, forward and forward + backward (every parameter's gradient), with the convolution
//! forced to the direct sums (the baseline) and chosen by `CudaConvMethod::Auto` (cuFFT for
//! these kernels), checked to agree first.
//!
//! Then S4's batched linear solve on the device against the host round trip it replaced
//! (`s4_solve`).
//!
//! Last, the fused pointwise ops of `lrnnx_train::pointwise` that the S4 / S4D blocks run,
//! against the candle ops they replace (the baseline), at the S4D layer's size (batch 8 ×
//! L 16384 × 256 channels): GELU twice, the swap of axes `(B, H, L) → (B, L, H)` with GELU
//! twice, the bias GELU of the output linear, and the transpose of the input; forward and
//! forward + backward, checked to agree first.
//!
//! For a profiler: `LRNNX_PROFILE_ONCE=0|1|2` runs one way of the Mamba block (after a warm-up)
//! and `LRNNX_PROFILE_S4D=<length>` (or `LRNNX_PROFILE_S4`) two passes of that layer, and
//! nothing else.

use std::time::Instant;

use lrnnx_train::candle_core::{bail, DType, Device, Result, Tensor, Var};
use lrnnx_train::fftconv::{cuda_fft_available, set_cuda_conv_method, CudaConvMethod};
use lrnnx_train::init::{fresh, Rng as InitRng};
use lrnnx_train::layer::TrainLayer;
use lrnnx_train::mamba::MambaRule;
use lrnnx_train::ops::softplus;
use lrnnx_train::pointwise::{bias_gelu, gelu_gelu, swap_grouped_gelu, transpose_last2};
use lrnnx_train::selective::{mamba_scan, selective_scan, MambaScanInputs};

/// Deterministic uniform numbers (as in `benches/train.rs`).
struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    ComposedCopy,
    ComposedShared,
    Fused,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::ComposedCopy => "composed, ΔA copy (baseline)",
            Way::ComposedShared => "composed, shared Δ",
            Way::Fused => "fused mamba_scan",
        }
    }
}

/// The operands as variables: u, Δ_raw, z (B, L, E), A (E, N), B_t, C_t (B, L, N), D, bias (E).
struct Operands {
    vars: Vec<Var>,
    g: Tensor,
}

fn block(x: &Operands, way: Way) -> Result<Tensor> {
    let t: Vec<&Tensor> = x.vars.iter().map(|v| v.as_tensor()).collect();
    let (u, raw, z, a, b, c, d, bias) = (t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
    if way == Way::Fused {
        let inputs = MambaScanInputs {
            u,
            delta_raw: raw,
            delta_bias: bias,
            delta_a: None,
            a,
            b_t: b,
            c_t: c,
            d,
            z: Some(z),
        };
        return mamba_scan(&inputs, MambaRule::Mamba);
    }
    let delta = softplus(&raw.broadcast_add(bias)?)?;
    let delta_a = if way == Way::ComposedCopy {
        delta.copy()?
    } else {
        delta.clone()
    };
    let yc = selective_scan(u, &delta, &delta_a, a, b, c, MambaRule::Mamba)?;
    (yc + u.broadcast_mul(d)?)? * z.silu()?
}

/// The loss `Σ y ⊙ g`, summed over channels first: candle sums a whole tensor to a scalar in one
/// thread block (6.9 ms at 67 M elements on an H100, more than the scan), which would swamp
/// every figure below.
fn loss(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    (y * g)?.sum_keepdim(2)?.sum_all()
}

/// Output and every gradient, flattened (for the agreement check).
fn outputs(x: &Operands, way: Way) -> Result<Vec<Vec<f32>>> {
    let y = block(x, way)?;
    let grads = loss(&y, &x.g)?.backward()?;
    let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
    for v in &x.vars {
        match grads.get(v.as_tensor()) {
            Some(g) => out.push(g.flatten_all()?.to_vec1::<f32>()?),
            None => bail!("a gradient is missing"),
        }
    }
    Ok(out)
}

/// The largest `|got − want|` over the largest `|want|`; infinite where either holds a NaN or an
/// infinity (`f32::max` would drop a NaN difference) or the lengths differ.
fn worst_rel(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() || got.iter().chain(want).any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Median seconds of `f` (3 warm-ups, 10 timed runs, the device synchronized around each).
fn time(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    dev.synchronize()?;
    let mut v = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        f()?;
        dev.synchronize()?;
        v.push(t0.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench` (and libtest-style flags): only the positional sizes count.
    let args = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| {
            a.parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(|| {
                lrnnx_train::candle_core::Error::Msg(format!(
                    "usage: train_gpu [BATCH LEN CHANNELS STATE] (positive integers), got {a:?}"
                ))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (b, l, e, n) = (arg(0, 8), arg(1, 4096), arg(2, 2048), arg(3, 16));
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(err) => {
            println!("no CUDA device ({err}); nothing measured");
            return Ok(());
        }
    };
    for class in ["S4D", "S4"] {
        if std::env::var(format!("LRNNX_PROFILE_{class}")).is_ok() {
            return conv_layer(&dev, class);
        }
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (ble, bln) = (b * l * e, b * l * n);
    let shapes: [(Vec<usize>, f32, f32); 8] = [
        (vec![b, l, e], -1.5, 1.5),  // u
        (vec![b, l, e], -5.0, -1.0), // Δ_raw (Δ ≈ 0.007 … 0.3 with the bias)
        (vec![b, l, e], -3.0, 3.0),  // z
        (vec![e, n], -4.0, -0.1),    // A
        (vec![b, l, n], -1.0, 1.0),  // B_t
        (vec![b, l, n], -1.0, 1.0),  // C_t
        (vec![e], -1.0, 1.0),        // D
        (vec![e], -1.0, 0.5),        // bias
    ];
    let mut vars = Vec::new();
    for (shape, lo, hi) in shapes {
        let count = shape.iter().product();
        vars.push(Var::from_tensor(&Tensor::from_vec(
            rng.vec(count, lo, hi),
            shape,
            &dev,
        )?)?);
    }
    let g = Tensor::from_vec(rng.vec(ble, -1.0, 1.0), (b, l, e), &dev)?;
    let x = Operands { vars, g };
    println!(
        "Mamba scan block on {:?}: batch {b}, length {l}, channels {e}, state {n}, f32 ({} + {} floats)",
        dev.location(),
        ble,
        bln
    );

    let ways = [Way::ComposedCopy, Way::ComposedShared, Way::Fused];
    if let Ok(which) = std::env::var("LRNNX_PROFILE_ONCE") {
        // one forward + backward of one way after a warm-up, for a profiler (ncu) to list
        let way = ways[which.parse::<usize>().unwrap_or(2).min(2)];
        for _ in 0..2 {
            let y = block(&x, way)?;
            loss(&y, &x.g)?.backward()?;
            dev.synchronize()?;
        }
        println!("profiled: {}", way.name());
        return Ok(());
    }
    let reference = outputs(&x, Way::ComposedCopy)?;
    for way in &ways[1..] {
        let got = outputs(&x, *way)?;
        for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
            let worst = worst_rel(g, r);
            let tol = if i == 0 { 1e-5 } else { 1e-4 };
            if worst > tol {
                bail!(
                    "{}: output {i} differs from the baseline by {worst:.2e} of its largest value",
                    way.name()
                );
            }
        }
    }
    println!("the three agree (output ≤ 1e-5, gradients ≤ 1e-4 of the largest value)");
    drop(reference);

    let mut base = (0.0, 0.0);
    println!(
        "{:<30} {:>9} {:>8} {:>12} {:>8}",
        "", "fwd ms", "speedup", "fwd+bwd ms", "speedup"
    );
    for way in ways {
        let fwd = time(&dev, || block(&x, way).map(|_| ()))?;
        let both = time(&dev, || {
            let y = block(&x, way)?;
            loss(&y, &x.g)?.backward().map(|_| ())
        })?;
        if way == Way::ComposedCopy {
            base = (fwd, both);
        }
        println!(
            "{:<30} {:>9.3} {:>7.2}x {:>12.3} {:>7.2}x",
            way.name(),
            fwd * 1e3,
            base.0 / fwd,
            both * 1e3,
            base.1 / both
        );
    }
    drop(x);
    conv_layer(&dev, "S4D")?;
    conv_layer(&dev, "S4")?;
    s4_solve(&dev)?;
    pointwise_ops(&dev)
}

/// S4's batched solve `X = A⁻¹B` at the S4 layer's sizes (256 systems of 64 unknowns; 65
/// right-hand sides for the discretization, 1 for the input vectors) on the device against the
/// way it ran before `lrnnx_kernels::solve` (the baseline): operands copied to the host, solved
/// there, the solution copied back. Forward, and forward + backward (`∂B = A⁻ᵀG`, two more
/// solves' worth with the transposed systems); checked to agree first.
fn s4_solve(dev: &Device) -> Result<()> {
    use lrnnx_train::s4::solve;
    println!("\nS4 batched solve (f32 operands, f64 elimination)");
    println!(
        "{:<30} {:>9} {:>8} {:>12} {:>8}",
        "", "fwd ms", "speedup", "fwd+bwd ms", "speedup"
    );
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    for (n, m, k) in [(256usize, 64usize, 65usize), (256, 64, 1)] {
        // I − ΔA/2-like systems: the identity plus a small random part
        let eye = Tensor::eye(m, DType::F32, dev)?.unsqueeze(0)?;
        let a =
            (Tensor::from_vec(rng.vec(n * m * m, -0.2, 0.2), (n, m, m), dev)?.broadcast_add(&eye))?;
        let a = Var::from_tensor(&a)?;
        let b = Var::from_tensor(&Tensor::from_vec(
            rng.vec(n * m * k, -1.0, 1.0),
            (n, m, k),
            dev,
        )?)?;
        let g = Tensor::from_vec(rng.vec(n * m * k, -1.0, 1.0), (n, m, k), dev)?;
        let on_host = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            solve(&a.to_device(&Device::Cpu)?, &b.to_device(&Device::Cpu)?)?.to_device(dev)
        };
        let run = |host: bool| -> Result<Tensor> {
            if host {
                on_host(a.as_tensor(), b.as_tensor())
            } else {
                solve(a.as_tensor(), b.as_tensor())
            }
        };
        // the forward and its backward, either way: X, ∂B = A⁻ᵀG, ∂A = −∂B Xᵀ
        let both = |host: bool| -> Result<[Tensor; 3]> {
            let x = run(host)?;
            let at = a.as_tensor().transpose(1, 2)?.contiguous()?;
            let gb = if host {
                on_host(&at, &g)?
            } else {
                solve(&at, &g)?
            };
            let ga = gb.matmul(&x.transpose(1, 2)?)?.neg()?;
            Ok([x, gb, ga])
        };
        let (want, got) = (both(true)?, both(false)?);
        for ((w, gt), (what, tol)) in
            want.iter()
                .zip(&got)
                .zip([("X", 1e-5), ("∂B", 1e-4), ("∂A", 1e-4)])
        {
            let worst = worst_rel(&flat(gt)?, &flat(w)?);
            if worst > tol {
                bail!(
                    "solve ({n}, {m}, {k}) {what}: device differs from host by {worst:.2e} of \
                     the largest"
                );
            }
        }
        let mut base = (0.0, 0.0);
        for host in [true, false] {
            let fwd = time(dev, || run(host).map(|_| ()))?;
            let fb = time(dev, || both(host).map(|_| ()))?;
            if host {
                base = (fwd, fb);
            }
            let name = if host {
                format!("({n}, {m}, {k}) host (baseline)")
            } else {
                format!("({n}, {m}, {k}) device")
            };
            println!(
                "{:<30} {:>9.3} {:>7.2}x {:>12.3} {:>7.2}x",
                name,
                fwd * 1e3,
                base.0 / fwd,
                fb * 1e3,
                base.1 / fb
            );
        }
    }
    Ok(())
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// The erf GELU as candle ops (how the S4 / S4D blocks computed it before `pointwise`).
fn gelu_ops(x: &Tensor) -> Result<Tensor> {
    let e = (x * std::f64::consts::FRAC_1_SQRT_2)?.erf()?;
    (x * 0.5)? * (e + 1.0)?
}

/// The fused pointwise ops against candle-op compositions (module doc).
fn pointwise_ops(dev: &Device) -> Result<()> {
    let (b, l, h) = (8, 16384, 256);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let x = Var::from_tensor(&Tensor::from_vec(
        rng.vec(b * l * h, -3.0, 3.0),
        (b, l, h),
        dev,
    )?)?;
    let bias = Var::from_tensor(&Tensor::from_vec(rng.vec(h, -1.0, 1.0), h, dev)?)?;
    let g = Tensor::from_vec(rng.vec(b * l * h, -1.0, 1.0), (b, l, h), dev)?;
    let (xt, bt) = (x.as_tensor(), bias.as_tensor());
    type Op<'a> = Box<dyn Fn() -> Result<Tensor> + 'a>;
    // (name, candle ops, fused); every result (B, L, H) except the transpose's (B, H, L)
    let ops: Vec<(&str, Op, Op)> = vec![
        (
            "GELU twice",
            Box::new(|| gelu_ops(&gelu_ops(xt)?)),
            Box::new(|| gelu_gelu(xt)),
        ),
        (
            "swap (B,H,L)→(B,L,H) + GELU twice",
            Box::new(|| {
                let y = xt.reshape((b, h, 1, l))?.permute((0, 3, 2, 1))?;
                gelu_ops(&gelu_ops(&y.reshape((b, l, h))?)?)
            }),
            Box::new(|| swap_grouped_gelu(&xt.reshape((b, h, l))?, 1, 2)),
        ),
        (
            "bias + GELU",
            Box::new(|| gelu_ops(&xt.broadcast_add(bt)?)),
            Box::new(|| bias_gelu(xt, bt)),
        ),
        (
            "transpose (B,L,H)→(B,H,L)",
            Box::new(|| xt.transpose(1, 2)?.contiguous()),
            Box::new(|| transpose_last2(xt)),
        ),
    ];
    println!("\nfused pointwise ops, batch {b} × L {l} × {h}, f32 (baseline: candle ops)");
    println!(
        "{:<36} {:>9} {:>9} {:>8} {:>11} {:>11} {:>8}",
        "", "ops fwd", "fused", "speedup", "ops f+b", "fused f+b", "speedup"
    );
    for (name, reference, fused) in &ops {
        let gr = |y: &Tensor| g.reshape(y.dims());
        let both = |f: &Op| -> Result<Vec<Vec<f32>>> {
            let y = f()?;
            let grads = loss(
                &y.reshape((b, y.elem_count() / (b * h), h))?,
                &gr(&y)?.reshape((b, y.elem_count() / (b * h), h))?,
            )?
            .backward()?;
            let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
            for v in [xt, bt] {
                if let Some(gv) = grads.get(v) {
                    out.push(gv.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            Ok(out)
        };
        let (want, got) = (both(reference)?, both(fused)?);
        if want.len() != got.len() {
            bail!(
                "{name}: the fused op gives {} gradients, the ops {}",
                got.len(),
                want.len()
            );
        }
        for (i, (gv, r)) in got.iter().zip(&want).enumerate() {
            let worst = worst_rel(gv, r);
            let tol = if i == 0 { 1e-5 } else { 1e-4 };
            if worst > tol {
                bail!("{name}: output {i} differs by {worst:.2e} of its largest value");
            }
        }
        let mut t = [0.0; 4];
        for (k, f) in [reference, fused].into_iter().enumerate() {
            t[k] = time(dev, || f().map(|_| ()))?;
            t[2 + k] = time(dev, || {
                let y = f()?;
                let n = y.elem_count() / (b * h);
                loss(&y.reshape((b, n, h))?, &gr(&y)?.reshape((b, n, h))?)?
                    .backward()
                    .map(|_| ())
            })?;
        }
        println!(
            "{:<36} {:>9.3} {:>9.3} {:>7.2}x {:>11.3} {:>11.3} {:>7.2}x",
            name,
            t[0] * 1e3,
            t[1] * 1e3,
            t[0] / t[1],
            t[2] * 1e3,
            t[3] * 1e3,
            t[2] / t[3]
        );
    }
    println!("(fused and ops agree: output ≤ 1e-5, gradients ≤ 1e-4 of the largest value)");
    Ok(())
}

/// `y` and every gradient of `layer` on `x` with the loss `Σ y ⊙ g`, flattened.
fn layer_outputs(layer: &dyn TrainLayer, x: &Tensor, g: &Tensor) -> Result<Vec<Vec<f32>>> {
    let y = layer.forward(x, None)?;
    let grads = loss(&y, g)?.backward()?;
    let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
    for (name, v) in layer.params().vars() {
        match grads.get(v.as_tensor()) {
            Some(gr) => out.push(gr.flatten_all()?.to_vec1::<f32>()?),
            // S4's kernel-length buffer is not a parameter
            None if name.ends_with("l_kernel") => {}
            None => bail!("no gradient for {name}"),
        }
    }
    Ok(out)
}

/// An S4D or S4 layer (`class`), direct sums against `Auto` (module doc).
fn conv_layer(dev: &Device, class: &str) -> Result<()> {
    if !cuda_fft_available() {
        println!(
            "{class}: cuFFT does not load; Auto would run the direct sums too, nothing to compare"
        );
        return Ok(());
    }
    let (b, h) = (8, 256);
    let kwargs = serde_json::json!({"d_model": h, "d_state": 64});
    let layer = fresh(class, &kwargs, &mut InitRng::new(7), DType::F32, dev)
        .map_err(|e| lrnnx_train::candle_core::Error::Msg(e.to_string()))?;
    println!(
        "\n{class} layer (d_model {h}, d_state 64, kernel as long as the sequence), batch {b}, f32"
    );
    println!(
        "{:<30} {:>9} {:>8} {:>12} {:>8}",
        "", "fwd ms", "speedup", "fwd+bwd ms", "speedup"
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let profile = std::env::var(format!("LRNNX_PROFILE_{class}"))
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(l) = profile {
        // two forward + backward passes under Auto at length `l`, for a profiler (nsys, ncu)
        let x = Tensor::from_vec(rng.vec(b * l * h, -1.0, 1.0), (b, l, h), dev)?;
        let g = Tensor::from_vec(rng.vec(b * l * h, -1.0, 1.0), (b, l, h), dev)?;
        let x = Var::from_tensor(&x)?;
        for _ in 0..2 {
            let y = layer.forward(x.as_tensor(), None)?;
            loss(&y, &g)?.backward()?;
            dev.synchronize()?;
        }
        println!("profiled: {class} at L {l}");
        return Ok(());
    }
    for l in [4096, 16384] {
        let x = Var::from_tensor(&Tensor::from_vec(
            rng.vec(b * l * h, -1.0, 1.0),
            (b, l, h),
            dev,
        )?)?;
        let g = Tensor::from_vec(rng.vec(b * l * h, -1.0, 1.0), (b, l, h), dev)?;
        set_cuda_conv_method(CudaConvMethod::Direct);
        let reference = layer_outputs(layer.as_ref(), x.as_tensor(), &g)?;
        set_cuda_conv_method(CudaConvMethod::Auto);
        let got = layer_outputs(layer.as_ref(), x.as_tensor(), &g)?;
        for (i, (gv, r)) in got.iter().zip(&reference).enumerate() {
            let worst = worst_rel(gv, r);
            let tol = if i == 0 { 1e-5 } else { 1e-4 };
            if worst > tol {
                bail!("{class} L{l}: output {i} differs by {worst:.2e} of its largest value");
            }
        }
        let mut base = (0.0, 0.0);
        for method in [CudaConvMethod::Direct, CudaConvMethod::Auto] {
            set_cuda_conv_method(method);
            let fwd = time(dev, || layer.forward(x.as_tensor(), None).map(|_| ()))?;
            let both = time(dev, || {
                let y = layer.forward(x.as_tensor(), None)?;
                loss(&y, &g)?.backward().map(|_| ())
            })?;
            if method == CudaConvMethod::Direct {
                base = (fwd, both);
            }
            let name = match method {
                CudaConvMethod::Direct => format!("L {l}, direct sums (baseline)"),
                _ => format!("L {l}, Auto (cuFFT)"),
            };
            println!(
                "{:<30} {:>9.3} {:>7.2}x {:>12.3} {:>7.2}x",
                name,
                fwd * 1e3,
                base.0 / fwd,
                both * 1e3,
                base.1 / both
            );
        }
    }
    set_cuda_conv_method(CudaConvMethod::Auto);
    println!("(direct and Auto agree: output ≤ 1e-5, gradients ≤ 1e-4 of the largest value)");
    Ok(())
}
