//! The S7 scan (lrnnx spec §4.5, `s7_scan_fn`) on the GPU: the input projection, the s7-rule
//! selective scan with one state per channel, and the output projection, forward and backward
//! (layout time-major, rows `r = batch·L + t`):
//!
//! ```text
//! Bu_t[n] = Σ_h B_t[n, h]·u_t[h] + bias_t[n]
//! x_t[n]  = Ā_t[n]·x_{t−1}[n] + Bu_t[n],   Ā_t = 1 − 1/(A_t² + 1/2)      (x_{−1} = 0)
//! y_t[h]  = Σ_n C_t[h, n]·x_t[n]
//! ```
//!
//! Every sum runs in a fixed order, so the backward is deterministic.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, LaunchConfig, PushKernelArg};

use crate::cuda::{drv, load_kernels, nvrtc, Forward, Inputs, SelectiveScan};
use crate::{Rule, ScanError, ScanSpec, S7_PROJ_KERNELS, S7_PROJ_SRC};

/// Sizes of one S7 call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S7Spec {
    /// Batch size.
    pub batch: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// Model width `H`.
    pub heads: usize,
    /// State size `N`.
    pub state: usize,
    /// `bias` `(batch, L, N)` added to `Bu`.
    pub has_bias: bool,
}

impl S7Spec {
    /// The selective scan this S7 call runs: `N` channels of one state, the s7 rule.
    pub fn scan_spec(&self) -> ScanSpec {
        ScanSpec {
            batch: self.batch,
            len: self.len,
            channels: self.state,
            state: 1,
            groups: 1,
            rule: Rule::S7,
            bc_fixed: true,
            has_delta_a: false,
            has_delta_bias: false,
            softplus: false,
            has_d: false,
            has_z: false,
            complex: false,
        }
    }
}

/// Device inputs of one S7 call.
pub struct S7Inputs<'a> {
    /// `(batch, L, H)`.
    pub u: &'a CudaSlice<f32>,
    /// `(batch, L, N)`: the time-varying `A_t` of `Ā_t`.
    pub a: &'a CudaSlice<f32>,
    /// `(batch, L, N, H)`.
    pub b: &'a CudaSlice<f32>,
    /// `(batch, L, H, N)`.
    pub c: &'a CudaSlice<f32>,
    /// `(batch, L, N)`, with `has_bias`.
    pub bias: Option<&'a CudaSlice<f32>>,
}

/// Results of the S7 forward.
pub struct S7Forward {
    /// `y` `(batch, L, H)`.
    pub y: CudaSlice<f32>,
    /// `x_{L−1}` `(batch, N)`.
    pub last_state: CudaSlice<f32>,
    /// `Bu` `(batch, L, N)` (the scan's input, kept for the backward).
    pub bu: CudaSlice<f32>,
    /// The scan's forward (`y` = the states `x` `(batch, L, N)`).
    pub scan: Forward,
}

/// Gradients of the S7 backward.
pub struct S7Grads {
    /// `∂/∂u` `(batch, L, H)`.
    pub du: CudaSlice<f32>,
    /// `∂/∂A` `(batch, L, N)`.
    pub da: CudaSlice<f32>,
    /// `∂/∂B` `(batch, L, N, H)`.
    pub db: CudaSlice<f32>,
    /// `∂/∂C` `(batch, L, H, N)`.
    pub dc: CudaSlice<f32>,
    /// `∂/∂bias` `(batch, L, N)` (with `has_bias`).
    pub dbias: Option<CudaSlice<f32>>,
}

/// The S7 scan on one CUDA device (a [`SelectiveScan`] plus the projection kernels).
pub struct S7Scan {
    /// The selective scan that runs the recurrence.
    pub scan: SelectiveScan,
    _m: Arc<CudaModule>,
    f_in: CudaFunction,
    f_out: CudaFunction,
    f_out_bwd_x: CudaFunction,
    f_in_bwd_u: CudaFunction,
    f_outer: CudaFunction,
}

/// One thread per element of an `n`-element output (`n` checked by [`S7Scan::check`] to fit a
/// `u32`).
fn grid(n: usize) -> Result<LaunchConfig, ScanError> {
    u32::try_from(n)
        .map(LaunchConfig::for_num_elems)
        .map_err(|_| ScanError(format!("s7: {n} elements exceed one launch")))
}

impl S7Scan {
    /// Opens device `ordinal` and compiles the projection kernels.
    pub fn new(ordinal: usize) -> Result<Self, ScanError> {
        let scan = SelectiveScan::new(ordinal)?;
        let ptx = nvrtc(S7_PROJ_SRC, "s7_proj.cu", Vec::new(), "the S7 projections")?;
        let (m, [f_in, f_out, f_out_bwd_x, f_in_bwd_u, f_outer]) =
            load_kernels(scan.stream().context(), ptx, S7_PROJ_KERNELS)?;
        Ok(S7Scan {
            f_in,
            f_out,
            f_out_bwd_x,
            f_in_bwd_u,
            f_outer,
            _m: m,
            scan,
        })
    }

    /// The sizes (empty or past the kernels' 32-bit indices and launch counts refused) and the
    /// inputs' lengths; returns `batch · L`.
    fn check(&self, spec: &S7Spec, x: &S7Inputs) -> Result<usize, ScanError> {
        let (h, n) = (spec.heads, spec.state);
        if spec.batch == 0 || spec.len == 0 || h == 0 || n == 0 {
            return Err(ScanError(format!("s7: empty problem {spec:?}")));
        }
        // the largest launch covers rows·N·H elements; rows, N and H go to the kernels as i32
        let rows = spec.batch.checked_mul(spec.len);
        let rows = match rows {
            Some(r)
                if r <= i32::MAX as usize
                    && h <= i32::MAX as usize
                    && r.checked_mul(n)
                        .and_then(|x| x.checked_mul(h))
                        .is_some_and(|x| x <= u32::MAX as usize) =>
            {
                r
            }
            _ => return Err(ScanError(format!("s7: too large {spec:?}"))),
        };
        spec.scan_spec().check(self.scan.tiling)?;
        for (name, t, want) in [
            ("u", Some(x.u), rows * h),
            ("A", Some(x.a), rows * n),
            ("B", Some(x.b), rows * n * h),
            ("C", Some(x.c), rows * h * n),
            ("bias", x.bias, rows * n),
        ] {
            match t {
                Some(t) if t.len() != want => {
                    return Err(ScanError(format!(
                        "s7: tensor `{name}` has {} elements, expected {want}",
                        t.len()
                    )))
                }
                None if spec.has_bias => {
                    return Err(ScanError("s7: tensor `bias` is missing".into()))
                }
                Some(_) if name == "bias" && !spec.has_bias => {
                    return Err(ScanError(
                        "s7: tensor `bias` given but has_bias is off".into(),
                    ))
                }
                _ => {}
            }
        }
        Ok(rows)
    }

    fn ones(&self, n: usize) -> Result<CudaSlice<f32>, ScanError> {
        self.scan.stream().clone_htod(&vec![1f32; n]).map_err(drv)
    }

    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>, ScanError> {
        self.scan.stream().alloc_zeros::<f32>(n).map_err(drv)
    }

    /// Forward (the module doc's equations: `Bu_t = B_t·u_t + bias_t`, `x_t = Ā_t ⊙ x_{t−1} +
    /// Bu_t`, `y_t = C_t·x_t`): `y`, the last state `x_{L−1}`, and what the backward needs.
    pub fn forward(&self, spec: &S7Spec, x: &S7Inputs) -> Result<S7Forward, ScanError> {
        let rows = self.check(spec, x)?;
        let s = self.scan.stream();
        let (h, n) = (spec.heads as i32, spec.state as i32);
        let ri = rows as i32;
        let mut bu = self.alloc(rows * spec.state)?;
        let dummy = self.alloc(1)?;
        let hb = i32::from(spec.has_bias);
        {
            let mut lb = s.launch_builder(&self.f_in);
            lb.arg(x.u)
                .arg(x.b)
                .arg(x.bias.unwrap_or(&dummy))
                .arg(&mut bu)
                .arg(&ri)
                .arg(&n)
                .arg(&h)
                .arg(&hb);
            // SAFETY: argument list matches `s7_in`; lengths checked above.
            unsafe { lb.launch(grid(rows * spec.state)?) }.map_err(drv)?;
        }
        let ones = self.ones(spec.state)?;
        let scan = self.scan.forward(
            &spec.scan_spec(),
            &Inputs {
                u: &bu,
                delta: x.a,
                delta_a: None,
                a: &ones,
                b: &ones,
                c: &ones,
                d: None,
                z: None,
                delta_bias: None,
            },
        )?;
        let mut y = self.alloc(rows * spec.heads)?;
        {
            let mut lb = s.launch_builder(&self.f_out);
            lb.arg(x.c)
                .arg(&scan.y)
                .arg(&mut y)
                .arg(&ri)
                .arg(&n)
                .arg(&h);
            // SAFETY: argument list matches `s7_out`.
            unsafe { lb.launch(grid(rows * spec.heads)?) }.map_err(drv)?;
        }
        let last_state = s.clone_dtod(&scan.last_state).map_err(drv)?;
        Ok(S7Forward {
            y,
            last_state,
            bu,
            scan,
        })
    }

    /// Backward from `dy` `(batch, L, H)` and the forward's results.
    pub fn backward(
        &self,
        spec: &S7Spec,
        x: &S7Inputs,
        fwd: &S7Forward,
        dy: &CudaSlice<f32>,
    ) -> Result<S7Grads, ScanError> {
        let rows = self.check(spec, x)?;
        for (name, got, want) in [
            ("dy", dy.len(), rows * spec.heads),
            ("forward's states", fwd.scan.y.len(), rows * spec.state),
            ("forward's Bu", fwd.bu.len(), rows * spec.state),
        ] {
            if got != want {
                return Err(ScanError(format!(
                    "s7: {name} has {got} elements, expected {want} (a forward of another spec?)"
                )));
            }
        }
        let s = self.scan.stream();
        let (h, n, ri) = (spec.heads as i32, spec.state as i32, rows as i32);
        // through the output projection
        let mut dx = self.alloc(rows * spec.state)?;
        let mut dc = self.alloc(rows * spec.heads * spec.state)?;
        {
            let mut lb = s.launch_builder(&self.f_out_bwd_x);
            lb.arg(x.c).arg(dy).arg(&mut dx).arg(&ri).arg(&n).arg(&h);
            // SAFETY: argument list matches `s7_out_bwd_x`.
            unsafe { lb.launch(grid(rows * spec.state)?) }.map_err(drv)?;
            let mut lb = s.launch_builder(&self.f_outer);
            lb.arg(dy)
                .arg(&fwd.scan.y)
                .arg(&mut dc)
                .arg(&ri)
                .arg(&h)
                .arg(&n);
            // SAFETY: argument list matches `s7_outer` (dC = dy ⊗ x).
            unsafe { lb.launch(grid(rows * spec.heads * spec.state)?) }.map_err(drv)?;
        }
        // through the scan
        let ones = self.ones(spec.state)?;
        // on the device only: the per-channel sums (∂ of the all-ones A, B, C) are not needed
        let g = self.scan.backward_device(
            &spec.scan_spec(),
            &Inputs {
                u: &fwd.bu,
                delta: x.a,
                delta_a: None,
                a: &ones,
                b: &ones,
                c: &ones,
                d: None,
                z: None,
                delta_bias: None,
            }
            .views(),
            &fwd.scan.checkpoints.as_view(),
            &dx.as_view(),
        )?;
        // through the input projection
        let mut du = self.alloc(rows * spec.heads)?;
        let mut db = self.alloc(rows * spec.state * spec.heads)?;
        {
            let mut lb = s.launch_builder(&self.f_in_bwd_u);
            lb.arg(x.b).arg(&g.du).arg(&mut du).arg(&ri).arg(&n).arg(&h);
            // SAFETY: argument list matches `s7_in_bwd_u`.
            unsafe { lb.launch(grid(rows * spec.heads)?) }.map_err(drv)?;
            let mut lb = s.launch_builder(&self.f_outer);
            lb.arg(&g.du).arg(x.u).arg(&mut db).arg(&ri).arg(&n).arg(&h);
            // SAFETY: argument list matches `s7_outer` (dB = dBu ⊗ u).
            unsafe { lb.launch(grid(rows * spec.state * spec.heads)?) }.map_err(drv)?;
        }
        let dbias = if spec.has_bias {
            Some(s.clone_dtod(&g.du).map_err(drv)?)
        } else {
            None
        };
        Ok(S7Grads {
            du,
            da: g.ddelta,
            db,
            dc,
            dbias,
        })
    }
}
