//! Trains a Mamba stack on the GPU (feature `cuda`), exports it to the core and checks core
//! stepping on the CPU against the GPU forward.
//!
//! Task (synthetic, causal): white-noise input `x_t`; target `y_t = tanh(3·(e_fast − e_slow))`,
//! the difference of two exponential moving averages of `x` (decays 0.8 and 0.97), a band-pass
//! envelope the network must learn to filter. Network: Dense(1→32) → 2 × [residual Mamba
//! (d_model 32, d_state 16, expand 2)] → Dense(32→1), AdamW, warmup + cosine, MSE.
//!
//! ```sh
//! cargo run --release --features cuda --example train_gpu [-- STEPS BATCH LEN]
//! ```
//!
//! Prints the loss every 25 steps (it must fall by 5×, else exit 1), the wall time per step on
//! the GPU (after a warm-up step, forward + backward + AdamW, the loss read back every step) and
//! on the CPU for two steps of the same batch, then exports the trained network with
//! `lrnnx::export_network`, steps it sample by sample with lrnnx-core on the CPU over a held-out
//! sequence and prints the largest difference from the GPU's parallel forward (exit 1 above
//! 1e-4 · max|y|).

use std::time::Instant;

use lrnnx::export_network::export_network;
use lrnnx_core::Layer;
use lrnnx_train::candle_core::{Device, Tensor};
use lrnnx_train::network::{Network, StageSpec};
use lrnnx_train::optim::{clip_grad_norm, AdamW, AdamWConfig, WarmupCosine};
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// xorshift64 uniforms in `[-1, 1)`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A batch `(x, y)` of `b` sequences of length `l` (module doc), as flat `(b, l, 1)` data.
fn batch(rng: &mut Rng, b: usize, l: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut xs, mut ys) = (Vec::with_capacity(b * l), Vec::with_capacity(b * l));
    for _ in 0..b {
        let (mut fast, mut slow) = (0f32, 0f32);
        for _ in 0..l {
            let x = rng.next();
            fast = 0.8 * fast + 0.2 * x;
            slow = 0.97 * slow + 0.03 * x;
            xs.push(x);
            ys.push((3.0 * (fast - slow)).tanh());
        }
    }
    (xs, ys)
}

fn spec(width: usize) -> Vec<StageSpec> {
    let mamba = StageSpec::Layer {
        class: "lrnnx.models.ltv.mamba.Mamba".into(),
        kwargs: json!({"d_model": width, "d_state": 16, "expand": 2, "d_conv": 4}),
    };
    let mut s = vec![StageSpec::Dense {
        d_in: 1,
        d_out: width,
        bias: true,
    }];
    for _ in 0..2 {
        s.extend([
            StageSpec::ResidualBegin,
            mamba.clone(),
            StageSpec::ResidualEnd,
        ]);
    }
    s.push(StageSpec::Dense {
        d_in: width,
        d_out: 1,
        bias: true,
    });
    s
}

/// One training step; returns the loss (read back, so the step has finished).
fn step(net: &Network, opt: &mut AdamW, x: &Tensor, y: &Tensor, lr: f64) -> Res<f32> {
    let out = net.forward(x, None)?;
    let loss = (out - y)?.sqr()?.mean_all()?;
    let mut grads = loss.backward()?;
    let vars = net.vars();
    clip_grad_norm(&mut grads, vars.iter().map(|(_, v)| v), 1.0)?;
    opt.step(&grads, lr)?;
    Ok(loss.to_scalar::<f32>()?)
}

fn main() -> Res<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let steps = args.first().copied().unwrap_or(300);
    let b = args.get(1).copied().unwrap_or(16);
    let l = args.get(2).copied().unwrap_or(2048);
    if steps < 20 || b == 0 || l == 0 {
        return Err(format!(
            "usage: train_gpu [STEPS ≥ 20] [BATCH ≥ 1] [LEN ≥ 1] (got {steps} {b} {l}): the loss \
             check compares the first and last 10 steps"
        )
        .into());
    }
    let width = 32;
    let gpu = Device::new_cuda(0)?;
    let net = Network::new(&spec(width), 1, 7, &gpu)?;
    let n_params: usize = net.vars().iter().map(|(_, v)| v.elem_count()).sum();
    println!(
        "Mamba x2 (width {width}, d_state 16, expand 2), {n_params} parameters; \
         {steps} steps of batch {b} x length {l} on {:?}",
        gpu.location()
    );
    let mut opt = AdamW::new(net.vars(), AdamWConfig::default())?;
    let sched = WarmupCosine {
        peak_lr: 3e-3,
        min_lr: 1e-4,
        warmup_steps: 20,
        total_steps: steps,
    };
    let mut rng = Rng(0x5eed);
    let to = |v: Vec<f32>, dev: &Device| Tensor::from_vec(v, (b, l, 1), dev);
    let mut losses = Vec::with_capacity(steps);
    let mut timed = 0f64;
    let mut first_cpu_batch = None;
    for s in 0..steps {
        let (xs, ys) = batch(&mut rng, b, l);
        if s == 0 {
            first_cpu_batch = Some((xs.clone(), ys.clone()));
        }
        let (x, y) = (to(xs, &gpu)?, to(ys, &gpu)?);
        let t0 = Instant::now();
        let loss = step(&net, &mut opt, &x, &y, sched.lr(s))?;
        if s > 0 {
            timed += t0.elapsed().as_secs_f64();
        }
        losses.push(loss);
        if s % 25 == 0 || s + 1 == steps {
            println!("step {s:4}  loss {loss:.5}");
        }
    }
    let per_step = timed / (steps - 1) as f64;
    println!(
        "GPU: {:.2} ms per step (forward + backward + AdamW, batch {b} x {l}, {} steps after \
         a warm-up step)",
        per_step * 1e3,
        steps - 1
    );

    // The same step on the CPU, for scale (a fresh copy of the trained weights).
    let cpu_net = Network::new(&spec(width), 1, 7, &Device::Cpu)?;
    for ((_, dst), (_, src)) in cpu_net.vars().iter().zip(net.vars().iter()) {
        dst.set(&src.as_tensor().to_device(&Device::Cpu)?)?;
    }
    let mut cpu_opt = AdamW::new(cpu_net.vars(), AdamWConfig::default())?;
    if let Some((xs, ys)) = first_cpu_batch {
        let (x, y) = (to(xs, &Device::Cpu)?, to(ys, &Device::Cpu)?);
        // a warm-up step first, as for the GPU
        step(&cpu_net, &mut cpu_opt, &x, &y, 1e-4)?;
        let t0 = Instant::now();
        for _ in 0..2 {
            step(&cpu_net, &mut cpu_opt, &x, &y, 1e-4)?;
        }
        let cpu = t0.elapsed().as_secs_f64() / 2.0;
        println!(
            "CPU: {:.1} ms per step ({} threads): GPU {:.1}x faster",
            cpu * 1e3,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu / per_step
        );
    }

    let head: f32 = losses.iter().take(10).sum::<f32>() / 10f32.min(losses.len() as f32);
    let tail: f32 = losses.iter().rev().take(10).sum::<f32>() / 10f32.min(losses.len() as f32);
    println!("loss: first 10 steps {head:.5}, last 10 steps {tail:.5}");

    // Export and step on the CPU against the GPU forward of a held-out sequence.
    let core = export_network(&net)?;
    let test_len = 4096;
    let (xs, _) = batch(&mut Rng(0xfeed), 1, test_len);
    let want: Vec<f32> = net
        .forward(&Tensor::from_vec(xs.clone(), (1, test_len, 1), &gpu)?, None)?
        .flatten_all()?
        .to_vec1()?;
    let mut state = vec![0f32; core.state_len()];
    // NaN-safe: `f32::max` would drop a NaN, so a non-finite value counts as infinitely far
    let (mut max_diff, mut scale) = (0f32, 0f32);
    let t0 = Instant::now();
    for (x, w) in xs.iter().zip(&want) {
        let mut y = [0f32];
        core.step(&mut state, &[*x], &mut y)?;
        let diff = (y[0] - w).abs();
        max_diff = max_diff.max(if diff.is_finite() {
            diff
        } else {
            f32::INFINITY
        });
        scale = scale.max(w.abs());
    }
    let core_ns = t0.elapsed().as_secs_f64() * 1e9 / test_len as f64;
    println!(
        "core stepping on the CPU vs GPU forward over {test_len} samples: max abs diff {max_diff:.3e} \
         (max |y| {scale:.3}, {:.2e} relative; {core_ns:.0} ns per step)",
        max_diff / scale
    );
    let mut failed = false;
    if !max_diff.is_finite() || !scale.is_finite() || max_diff > 1e-4 * scale {
        eprintln!("FAIL: core stepping differs from the GPU forward by more than 1e-4 * scale");
        failed = true;
    }
    if !tail.is_finite() || !head.is_finite() || tail * 5.0 >= head {
        eprintln!("FAIL: the loss did not fall by 5x ({head} -> {tail})");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    println!("ok");
    Ok(())
}
