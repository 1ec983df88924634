//! Implementation `train` on op cases (`op_*`): each lrnnx reference op (selective scan, real
//! and complex, fixed / variable / grouped `B`, `C`, `deltaA`, `delta_softplus`, `z`, `D`;
//! simplified (S5) scan; RG-LRU scan; S7 scan) written with candle ops around the training
//! crate's [`real_scan`] / [`complex_scan`], from the case's raw arguments (`input.*`, as
//! candle variables). Compared: `out` (`train:out`, at [`REL_TOL`](super::REL_TOL)) and, after
//! back-propagating `loss = Σ out ⊙ g` (`out` in its stored real layout: complex outputs as
//! `(..., 2)`), every `grad.<arg>` of the case (`train:grad.<arg>`, at [`GRAD_REL_TOL`]).
//! `last_state` is not part of the loss and is not compared here (the `core` implementation
//! compares it).
//!
//! The equations are those of spec §4.1, §4.3, §4.5 and §4.6 (module docs of
//! `lrnnx_core::scan::*`). All tensors are moved to the layout `(b, L, ...)` so that the scan
//! runs over axis 1; the state axes `(d, n)` are flattened into one.

use std::collections::BTreeMap;

use lrnnx_train::candle_core::{Device, Result as CResult, Tensor, Var};
use lrnnx_train::complex::CTensor;
use lrnnx_train::ops::softplus;
use lrnnx_train::scan::{complex_scan, real_scan};

use super::{compare, compare_with, Case, Line, Outcome, GRAD_REL_TOL};

/// The discretization rules of the scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Mamba,
    Zoh,
    Bilinear,
    Dirac,
}

impl Rule {
    fn from_name(name: &str) -> Option<Rule> {
        match name {
            "mamba" => Some(Rule::Mamba),
            "zoh" => Some(Rule::Zoh),
            "bilinear" => Some(Rule::Bilinear),
            "dirac" => Some(Rule::Dirac),
            _ => None,
        }
    }
}

/// The op's arguments as candle variables, by argument name (`input.<name>` without the
/// prefix; `g` is the cotangent, not an argument).
type Args = BTreeMap<String, Var>;

/// Why an op case cannot be run: the op is not covered, or it failed.
enum Fail {
    Unsupported(String),
    Error(String),
}

impl From<lrnnx_train::candle_core::Error> for Fail {
    fn from(e: lrnnx_train::candle_core::Error) -> Self {
        Fail::Error(e.to_string())
    }
}

fn arg(args: &Args, name: &str) -> Result<Tensor, Fail> {
    args.get(name)
        .map(|v| v.as_tensor().clone())
        .ok_or_else(|| Fail::Error(format!("tensor `input.{name}` is missing")))
}

fn opt(args: &Args, name: &str) -> Option<Tensor> {
    args.get(name).map(|v| v.as_tensor().clone())
}

/// `exp(x) − 1` without cancellation for small `x`: `tanh(x/2)·(eˣ + 1)`.
fn expm1(x: &Tensor) -> CResult<Tensor> {
    (x * 0.5)?.tanh()? * (x.exp()? + 1.0)?
}

/// `exp(z) − 1` for complex `z = x + iy`: `(expm1(x)·cos y − 2 sin²(y/2)) + i·eˣ sin y`.
fn cexpm1(z: &CTensor) -> CResult<CTensor> {
    let s = (&z.im * 0.5)?.sin()?;
    let re = ((expm1(&z.re)? * z.im.cos()?)? - (s.sqr()? * 2.0)?)?;
    let im = (z.re.exp()? * z.im.sin()?)?;
    Ok(CTensor::new(re, im))
}

/// The `train` implementation's report lines for one op case, every tensor on `dev`.
pub fn check_on(case: &Case, dev: &Device) -> Vec<Line> {
    let line = |implementation: String, outcome: Outcome| Line {
        case: case.name.clone(),
        implementation,
        outcome,
    };
    match run(case, dev) {
        Ok(lines) => lines
            .into_iter()
            .map(|(name, outcome)| line(name, outcome))
            .collect(),
        Err(Fail::Unsupported(r)) => vec![line("train".into(), Outcome::Unsupported(r))],
        Err(Fail::Error(e)) => vec![line(
            "train".into(),
            Outcome::Error(format!("case {}: {e}", case.name)),
        )],
    }
}

fn run(case: &Case, dev: &Device) -> Result<Vec<(String, Outcome)>, Fail> {
    let op = case.class().to_owned();
    let op_arg = |k: &str| case.config.get("op_args").and_then(|a| a.get(k));
    let mut args = Args::new();
    for (key, t) in &case.file.tensors {
        if let Some(name) = key.strip_prefix("input.") {
            if name != "g" {
                let v = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), dev)?;
                args.insert(name.to_owned(), Var::from_tensor(&v)?);
            }
        }
    }
    let rule = |default: &str| -> Result<Rule, Fail> {
        let name = op_arg("discretization")
            .and_then(|v| v.as_str())
            .unwrap_or(default);
        Rule::from_name(name)
            .ok_or_else(|| Fail::Unsupported(format!("discretization `{name}` of op `{op}`")))
    };
    let out = if op.ends_with("selective_scan_ref") || op.ends_with("selective_scan_fn") {
        let softplus = op_arg("delta_softplus")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        selective(&args, rule("mamba")?, softplus)?
    } else if op.ends_with("simplified_scan_ref") || op.ends_with("simplified_scan_fn") {
        simplified(&args, rule("bilinear")?)?
    } else if op.ends_with("rglru_scan_ref") || op.ends_with("rglru_scan_fn") {
        rglru(&args)?
    } else if op.ends_with("s7_scan_ref") || op.ends_with("s7_scan_fn") {
        s7(&args)?
    } else {
        return Err(Fail::Unsupported(format!("no train-side op for `{op}`")));
    };
    let flat = |t: &Tensor| -> Result<Vec<f32>, Fail> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
    let reference = |k: &str| case.tensor(k).map_err(|e| Fail::Error(e.to_string()));
    let mut lines = vec![(
        "train:out".to_string(),
        Outcome::Compared(compare(&flat(&out)?, &reference("output.out")?.data)),
    )];
    let g = reference("input.g")?;
    let g = Tensor::from_vec(g.data.clone(), g.shape.as_slice(), dev)?;
    if g.dims() != out.dims() {
        return Err(Fail::Error(format!(
            "out has shape {:?}, input.g {:?}",
            out.dims(),
            g.dims()
        )));
    }
    let grads = (&out * &g)?.sum_all()?.backward()?;
    for (key, reference) in &case.file.tensors {
        let Some(name) = key.strip_prefix("grad.") else {
            continue;
        };
        let ours = match args.get(name) {
            Some(v) => match grads.get(v.as_tensor()) {
                Some(t) => flat(t)?,
                // An argument the loss does not reach has a zero gradient.
                None => vec![0.0; reference.data.len()],
            },
            None => {
                lines.push((
                    format!("train:grad.{name}"),
                    Outcome::Error(format!("no argument `input.{name}` for `grad.{name}`")),
                ));
                continue;
            }
        };
        lines.push((
            format!("train:grad.{name}"),
            Outcome::Compared(compare_with(&ours, &reference.data, GRAD_REL_TOL)),
        ));
    }
    Ok(lines)
}

/// `(b, d, L)` → `(b, L, d)`.
fn time_major(t: &Tensor) -> CResult<Tensor> {
    t.transpose(1, 2)
}

/// `B` or `C` of a selective scan as `(b, L, d, n)` (or `(1, 1, d, n)` when fixed), real or
/// complex, from its stored shape: fixed `(d, n[, 2])`, variable `(b, n, L')`, grouped
/// `(b, G, n, L')` (`L' = L`, or `2L` with re/im interleaved for complex `A`).
fn input_matrix(
    t: &Tensor,
    name: &str,
    (d, n, len): (usize, usize, usize),
    complex: bool,
) -> Result<CTensor, Fail> {
    let fixed: &[usize] = if complex { &[d, n, 2] } else { &[d, n] };
    if t.dims() == fixed {
        let c = if complex {
            CTensor::unpack(t)?
        } else {
            CTensor::from_real(t)?
        };
        return Ok(CTensor::new(
            c.re.reshape((1, 1, d, n))?,
            c.im.reshape((1, 1, d, n))?,
        ));
    }
    let w = if complex { 2 } else { 1 };
    let t4 = match *t.dims() {
        [b, nn, lw] if nn == n && lw == w * len => t.reshape((b, 1, n, lw))?,
        [_, g, nn, lw] if nn == n && lw == w * len && g > 0 && d % g == 0 => t.clone(),
        ref s => {
            return Err(Fail::Error(format!(
                "`input.{name}` has shape {s:?}, expected (d, n), (b, n, L) or (b, G, n, L)"
            )))
        }
    };
    let (b, g) = (t4.dim(0)?, t4.dim(1)?);
    // (b, G, n, L) → (b, L, G, 1, n) → (b, L, G, d/G, n) → (b, L, d, n).
    let expand = |p: &Tensor| -> CResult<Tensor> {
        p.permute((0, 3, 1, 2))?
            .unsqueeze(3)?
            .broadcast_as((b, len, g, d / g, n))?
            .reshape((b, len, d, n))
    };
    if complex {
        let c = CTensor::unpack(&t4.reshape((b, g, n, len, 2))?)?;
        Ok(CTensor::new(expand(&c.re)?, expand(&c.im)?))
    } else {
        Ok(CTensor::from_real(&expand(&t4)?)?)
    }
}

/// lrnnx `selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, deltaA, delta_softplus,
/// discretization)` → `out (b, d, L)` (spec §4.1).
fn selective(args: &Args, rule: Rule, delta_softplus: bool) -> Result<Tensor, Fail> {
    let u = arg(args, "u")?;
    let (b, d, len) = u.dims3()?;
    let a = arg(args, "A")?;
    let (n, complex) = match *a.dims() {
        [ad, n] if ad == d => (n, false),
        [ad, n, 2] if ad == d => (n, true),
        ref s => {
            return Err(Fail::Error(format!(
                "`input.A` has shape {s:?}, expected (d, n[, 2])"
            )))
        }
    };
    let mut dt = time_major(&arg(args, "delta")?)?;
    if let Some(bias) = opt(args, "delta_bias") {
        dt = dt.broadcast_add(&bias)?;
    }
    if delta_softplus {
        dt = softplus(&dt)?;
    }
    let dt_a = match opt(args, "deltaA") {
        Some(t) => time_major(&t)?,
        None => dt.clone(),
    };
    // (b, L, d, 1) steps against (1, 1, d, n) eigenvalues.
    let (dt, dt_a) = (dt.unsqueeze(3)?, dt_a.unsqueeze(3)?);
    let ut = time_major(&u)?.unsqueeze(3)?;
    let bm = input_matrix(&arg(args, "B")?, "B", (d, n, len), complex)?;
    let cm = input_matrix(&arg(args, "C")?, "C", (d, n, len), complex)?;
    let y = if complex {
        let a = CTensor::unpack(&a)?;
        let a = CTensor::new(a.re.reshape((1, 1, d, n))?, a.im.reshape((1, 1, d, n))?);
        let za = a.mul_real(&dt_a)?;
        let a_bar = match rule {
            Rule::Bilinear => za.affine(0.5, 1.0)?.div(&za.affine(-0.5, 1.0)?)?,
            _ => za.exp()?,
        };
        let gamma = match rule {
            Rule::Mamba => Some(CTensor::from_real(&dt)?),
            Rule::Zoh => Some(cexpm1(&a.mul_real(&dt)?)?.div(&a)?),
            Rule::Bilinear => {
                Some(CTensor::from_real(&dt)?.div(&a.mul_real(&dt)?.affine(-0.5, 1.0)?)?)
            }
            Rule::Dirac => None,
        };
        let mut bu = bm.mul_real(&ut)?;
        if let Some(gm) = gamma {
            bu = gm.mul(&bu)?;
        }
        let shape = (b, len, d * n);
        let a_bar = CTensor::new(
            a_bar.re.broadcast_as((b, len, d, n))?.reshape(shape)?,
            a_bar.im.broadcast_as((b, len, d, n))?.reshape(shape)?,
        );
        let bu = CTensor::new(
            bu.re.broadcast_as((b, len, d, n))?.reshape(shape)?,
            bu.im.broadcast_as((b, len, d, n))?.reshape(shape)?,
        );
        let h = complex_scan(&a_bar, &bu)?;
        let h = CTensor::new(h.re.reshape((b, len, d, n))?, h.im.reshape((b, len, d, n))?);
        // 2·Re(Σ_n C h)
        let ch = h.mul(&cm)?;
        (ch.re.sum(3)? * 2.0)?
    } else {
        let a = a.reshape((1, 1, d, n))?;
        let za = dt_a.broadcast_mul(&a)?;
        let a_bar = match rule {
            Rule::Bilinear => za.affine(0.5, 1.0)?.div(&za.affine(-0.5, 1.0)?)?,
            _ => za.exp()?,
        };
        let gamma = match rule {
            Rule::Mamba => Some(dt.clone()),
            Rule::Zoh => Some(expm1(&dt.broadcast_mul(&a)?)?.broadcast_div(&a)?),
            Rule::Bilinear => Some(dt.broadcast_div(&dt.broadcast_mul(&a)?.affine(-0.5, 1.0)?)?),
            Rule::Dirac => None,
        };
        let mut bu = bm.re.broadcast_mul(&ut)?;
        if let Some(gm) = gamma {
            bu = bu.broadcast_mul(&gm)?;
        }
        let shape = (b, len, d * n);
        let h = real_scan(
            &a_bar.broadcast_as((b, len, d, n))?.reshape(shape)?,
            &bu.broadcast_as((b, len, d, n))?.reshape(shape)?,
        )?
        .reshape((b, len, d, n))?;
        h.broadcast_mul(&cm.re)?.sum(3)?
    };
    let ut = ut.squeeze(3)?;
    let mut y = match opt(args, "D") {
        Some(dd) => (y + ut.broadcast_mul(&dd)?)?,
        None => y,
    };
    if let Some(z) = opt(args, "z") {
        y = (y * time_major(&z)?.silu()?)?;
    }
    Ok(time_major(&y)?)
}

/// lrnnx `simplified_scan_ref(u, delta, A, B, C, deltaA, discretization)` (spec §4.3): `u`
/// complex `(b, H, L, 2)`, `delta`/`deltaA` `(b, P, L)`, `A` `(P[, 1], 2)`, `B` `(P, H, 2)`,
/// `C` `(H, P, 2)` → `out (b, H, L, 2)`.
fn simplified(args: &Args, rule: Rule) -> Result<Tensor, Fail> {
    if rule == Rule::Mamba {
        return Err(Fail::Unsupported(
            "the simplified scan has no `mamba` rule".into(),
        ));
    }
    let u = arg(args, "u")?;
    let (b, h, len) = match *u.dims() {
        [b, h, l, 2] => (b, h, l),
        ref s => {
            return Err(Fail::Error(format!(
                "`input.u` has shape {s:?}, expected (b, H, L, 2)"
            )))
        }
    };
    let a = arg(args, "A")?;
    let p = a.dim(0)?;
    let a = CTensor::unpack(&a.reshape((p, 2))?)?;
    let bm = CTensor::unpack(&arg(args, "B")?)?; // (P, H)
    let cm = CTensor::unpack(&arg(args, "C")?)?; // (H, P)
    if bm.re.dims() != [p, h] || cm.re.dims() != [h, p] {
        return Err(Fail::Error(format!(
            "`input.B` {:?} / `input.C` {:?} do not fit P = {p}, H = {h}",
            bm.re.dims(),
            cm.re.dims()
        )));
    }
    let u = CTensor::unpack(&u)?;
    let u = CTensor::new(time_major(&u.re)?, time_major(&u.im)?); // (b, L, H)
    let bt = CTensor::new(bm.re.t()?, bm.im.t()?);
    let bu = u.matmul(&bt)?; // (b, L, P)
    let dt = time_major(&arg(args, "delta")?)?; // (b, L, P)
    let dt_a = match opt(args, "deltaA") {
        Some(t) => time_major(&t)?,
        None => dt.clone(),
    };
    let za = a.mul_real(&dt_a)?;
    let a_bar = match rule {
        Rule::Bilinear => za.affine(0.5, 1.0)?.div(&za.affine(-0.5, 1.0)?)?,
        _ => za.exp()?,
    };
    let bu = match rule {
        Rule::Zoh => cexpm1(&a.mul_real(&dt)?)?.div(&a)?.mul(&bu)?,
        Rule::Bilinear => CTensor::from_real(&dt)?
            .div(&a.mul_real(&dt)?.affine(-0.5, 1.0)?)?
            .mul(&bu)?,
        _ => bu,
    };
    let x = complex_scan(&a_bar, &bu)?; // (b, L, P)
    let ct = CTensor::new(cm.re.t()?, cm.im.t()?);
    let y = x.matmul(&ct)?; // (b, L, H)
    let y = CTensor::new(time_major(&y.re)?, time_major(&y.im)?);
    debug_assert_eq!(y.re.dims(), [b, h, len]);
    Ok(y.pack()?)
}

/// lrnnx `rglru_scan_ref(u, delta, A)` (spec §4.6): `Ā = exp(δ·ln A)`, `h_t = Ā h_{t−1} +
/// sqrt(1 − Ā²)·u_t`, `y_t = Σ_n h_t[n]`; `u`, `delta` `(b, D, L)`, `A` `(D, n)`.
fn rglru(args: &Args) -> Result<Tensor, Fail> {
    let u = arg(args, "u")?;
    let (b, d, len) = u.dims3()?;
    let a = arg(args, "A")?;
    let n = match *a.dims() {
        [ad, n] if ad == d => n,
        ref s => {
            return Err(Fail::Error(format!(
                "`input.A` has shape {s:?}, expected (D, n)"
            )))
        }
    };
    let dt = time_major(&arg(args, "delta")?)?.unsqueeze(3)?;
    let a_bar = dt.broadcast_mul(&a.log()?.reshape((1, 1, d, n))?)?.exp()?;
    let gain = (1.0 - a_bar.sqr()?)?.sqrt()?;
    let bu = gain.broadcast_mul(&time_major(&u)?.unsqueeze(3)?)?;
    let shape = (b, len, d * n);
    let h = real_scan(&a_bar.reshape(shape)?, &bu.reshape(shape)?)?;
    Ok(time_major(&h.reshape((b, len, d, n))?.sum(3)?)?)
}

/// lrnnx `s7_scan_ref(u, A, B, C, bias)` (spec §4.5): `Ā = 1 − 1/(A² + 1/2)`, `x_t = Ā_t x_{t−1}
/// + Σ_h B[:, h, t] u[h, t] + bias_t`, `y[h, t] = Σ_n C[h, n, t] x_t[n]`; `u` `(b, H, L)`, `A`
/// `(b, N, L)`, `B` `(b, N, H, L)`, `C` `(b, H, N, L)`, `bias` `(b, N, L)`.
fn s7(args: &Args) -> Result<Tensor, Fail> {
    let u = arg(args, "u")?;
    let (b, h, len) = u.dims3()?;
    let a = arg(args, "A")?;
    let (_, n, _) = a.dims3()?;
    let (bm, cm) = (arg(args, "B")?, arg(args, "C")?);
    if bm.dims() != [b, n, h, len] || cm.dims() != [b, h, n, len] {
        return Err(Fail::Error(format!(
            "`input.B` {:?} / `input.C` {:?} do not fit (b, N, H, L) / (b, H, N, L)",
            bm.dims(),
            cm.dims()
        )));
    }
    let a_bar = (1.0 - (a.sqr()? + 0.5)?.recip()?)?;
    let mut bu = bm.broadcast_mul(&u.unsqueeze(1)?)?.sum(2)?; // (b, N, L)
    if let Some(bias) = opt(args, "bias") {
        bu = (bu + bias)?;
    }
    let x = time_major(&real_scan(&time_major(&a_bar)?, &time_major(&bu)?)?)?; // (b, N, L)
    Ok(cm.broadcast_mul(&x.unsqueeze(1)?)?.sum(2)?)
}
