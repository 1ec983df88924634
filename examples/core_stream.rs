//! Streams lrnnx-trained layers sample by sample through `lrnnx-core`.
//!
//! ```text
//! cargo run --release --example core_stream [-- DIR]
//! ```
//!
//! For every lrnnx module case in DIR (default: the golden cases shipped in
//! `tests/data/lrnnx-golden`), this loads lrnnx's weights unchanged, builds the core layer
//! (discretized once), feeds the case's input one sample at a time, and prints how far the
//! streamed output is from lrnnx's own full-sequence forward, and the time per step.

use std::path::PathBuf;
use std::time::Instant;

use lrnnx::golden::{case_files, compare, Case};
use lrnnx::import::build_core;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden")
        });
    println!(
        "{:<28} {:>6} {:>6} {:>10} {:>12}",
        "layer (lrnnx weights)", "d_in", "state", "max |err|", "ns/step"
    );
    for file in case_files(&dir)? {
        let case = Case::load(&file)?;
        if case.kind() != "module" {
            continue;
        }
        let model = match build_core(
            case.class(),
            case.ctor_kwargs(),
            &case.file.params("param."),
        ) {
            Ok(m) => m,
            Err(e) => {
                println!("{:<28} skipped: {e}", case.name);
                continue;
            }
        };
        let layer = model.as_layer();
        let (d_in, d_out) = (layer.d_input(), layer.d_output());
        let x_t = case.tensor("input.x")?;
        let (x, x_shape) = (&x_t.data, &x_t.shape);
        let y_lrnnx = &case.tensor("output.y")?.data;
        let taus = case
            .tensor("input.integration_timesteps")
            .ok()
            .map(|t| &t.data);
        // A case from another directory may not fit the layer it names: say so and go on.
        let (rows, per_row) = match x_shape.as_slice() {
            &[rows, len, d] if d == d_in && rows > 0 && len > 0 => (rows, len),
            _ => {
                println!(
                    "{:<28} skipped: input.x has shape {x_shape:?}, the layer takes \
                     (batch, length, {d_in})",
                    case.name
                );
                continue;
            }
        };
        let steps = rows * per_row;
        if y_lrnnx.len() != steps * d_out || taus.is_some_and(|t| t.len() != steps) {
            println!(
                "{:<28} skipped: output.y ({} values) or the time steps do not match {steps} \
                 steps of {d_out} outputs",
                case.name,
                y_lrnnx.len()
            );
            continue;
        }
        let mut y = vec![0.0f32; steps * d_out];
        let mut state = vec![0.0f32; layer.state_len()];
        let start = Instant::now();
        for t in 0..steps {
            if t % per_row == 0 {
                state.fill(0.0); // a new sequence starts from the zero state
            }
            let (xt, yt) = (
                &x[t * d_in..(t + 1) * d_in],
                &mut y[t * d_out..(t + 1) * d_out],
            );
            match (taus, model.as_event_layer()) {
                (Some(tau), Some(ev)) => ev.step_event(&mut state, xt, tau[t], yt)?,
                _ => layer.step(&mut state, xt, yt)?,
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / steps as f64;
        let c = compare(&y, y_lrnnx);
        println!(
            "{:<28} {:>6} {:>6} {:>10.2e} {:>12.0}",
            case.name,
            d_in,
            layer.state_len(),
            c.max_abs,
            ns
        );
    }
    Ok(())
}
