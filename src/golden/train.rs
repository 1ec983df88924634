//! Implementation `train`: builds the training crate's layer from the case's lrnnx weights,
//! runs its parallel forward on `input.x` (and `input.integration_timesteps` in event cases),
//! and compares with `output.y` (`train:y`); then back-propagates `loss = Σ y ⊙ input.g` and
//! compares every gradient the case holds (`train:grad.<key>`, at [`GRAD_REL_TOL`]).
//! Parameters lrnnx never uses get zero gradients there; a parameter the layer does not have
//! counts as a zero gradient. Aliased keys (`layer.kernel.*` of S4/S4D) share their
//! parameter's gradient.
//!
//! Language-model cases (`kind = lm`): the model is built with
//! [`LanguageModel::from_lrnnx`] from `ctor_kwargs` and the `param.*` state dict; its forward on
//! `input.input_ids` is compared with `output.logits` (`train:logits`), stepping it token by token
//! from a fresh cache with `output.logits_step` (`train:logits_step`), and the gradients of
//! `loss = Σ logits ⊙ input.g` with every `grad.<key>` (tied `lm_head.weight` and
//! `backbone.embedding.weight` both hold the shared parameter's gradient).

use lrnnx_train::candle_core::{DType, Device, Tensor, Var};
use lrnnx_train::lm::LanguageModel;
use lrnnx_train::{build, BuildError, Params};

use super::{compare, compare_with, Case, Line, Outcome, GRAD_REL_TOL};
use crate::safetensors_io::Tensor as FileTensor;

fn to_candle(t: &FileTensor, dev: &Device) -> Result<Tensor, String> {
    Tensor::from_vec(t.data.clone(), t.shape.as_slice(), dev).map_err(|e| e.to_string())
}

/// The `train` implementation's report lines for one case (on the CPU).
pub fn check(case: &Case) -> Vec<Line> {
    check_on(case, &Device::Cpu)
}

/// The `train` implementation's report lines for one case, every tensor on `dev` (the GPU tests
/// run it on a CUDA device).
pub fn check_on(case: &Case, dev: &Device) -> Vec<Line> {
    let line = |implementation: String, outcome: Outcome| Line {
        case: case.name.clone(),
        implementation,
        outcome,
    };
    if case.kind() == "op" {
        return super::train_ops::check_on(case, dev);
    }
    if case.kind() == "lm" {
        return match run_lm(case, dev) {
            Ok(lines) => lines
                .into_iter()
                .map(|(name, outcome)| line(name, outcome))
                .collect(),
            Err(outcome) => vec![line("train".into(), outcome)],
        };
    }
    if case.kind() != "module" {
        return vec![line(
            "train".into(),
            Outcome::Unsupported(format!(
                "{} cases are not checked through the training crate yet",
                case.kind()
            )),
        )];
    }
    match run(case, dev) {
        Ok(lines) => lines
            .into_iter()
            .map(|(name, outcome)| line(name, outcome))
            .collect(),
        Err(outcome) => vec![line("train".into(), outcome)],
    }
}

fn run(case: &Case, dev: &Device) -> Result<Vec<(String, Outcome)>, Outcome> {
    let err = |e: String| Outcome::Error(format!("case {}: {e}", case.name));
    let mut params = Params::new();
    for (key, t) in &case.file.tensors {
        if let Some(name) = key.strip_prefix("param.") {
            params
                .insert(name, &to_candle(t, dev).map_err(err)?)
                .map_err(|e| err(e.to_string()))?;
        }
    }
    let layer = match build(case.class(), case.ctor_kwargs(), params) {
        Ok(l) => l,
        Err(BuildError::UnsupportedClass(c)) => {
            return Err(Outcome::Unsupported(format!("no trainable layer for {c}")))
        }
        Err(e) => return Err(err(e.to_string())),
    };
    let tensor = |k: &str| case.tensor(k).map_err(|e| err(e.to_string()));
    let x = Var::from_tensor(&to_candle(tensor("input.x")?, dev).map_err(err)?)
        .map_err(|e| err(e.to_string()))?;
    let taus = if case.event_mode() {
        Some(
            Var::from_tensor(&to_candle(tensor("input.integration_timesteps")?, dev).map_err(err)?)
                .map_err(|e| err(e.to_string()))?,
        )
    } else {
        None
    };
    let y = layer
        .forward(x.as_tensor(), taus.as_ref().map(|t| t.as_tensor()))
        .map_err(|e| err(e.to_string()))?;
    let flat = |t: &Tensor| -> Result<Vec<f32>, Outcome> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| err(e.to_string()))
    };
    let mut lines = vec![(
        "train:y".to_string(),
        Outcome::Compared(compare(&flat(&y)?, &tensor("output.y")?.data)),
    )];
    let g = to_candle(tensor("input.g")?, dev).map_err(err)?;
    let grads = (&y * &g)
        .and_then(|p| p.sum_all())
        .and_then(|l| l.backward())
        .map_err(|e| err(e.to_string()))?;
    for (key, reference) in &case.file.tensors {
        let Some(name) = key.strip_prefix("grad.") else {
            continue;
        };
        let ours: Option<Tensor> =
            match name {
                "x" => grads.get(x.as_tensor()).cloned(),
                "integration_timesteps" => taus
                    .as_ref()
                    .and_then(|t| grads.get(t.as_tensor()).cloned()),
                _ => {
                    let base = name.strip_prefix("layer.kernel.").unwrap_or(name);
                    match layer.params().vars().get(base) {
                        Some(v) => Some(grads.get(v.as_tensor()).cloned().unwrap_or(
                            v.as_tensor().zeros_like().map_err(|e| err(e.to_string()))?,
                        )),
                        None => None,
                    }
                }
            };
        let ours = match ours {
            Some(t) => flat(&t)?,
            // A parameter the layer does not have (or an input the loss does not reach) has a
            // zero gradient.
            None => vec![0.0; reference.data.len()],
        };
        lines.push((
            format!("train:grad.{name}"),
            Outcome::Compared(compare_with(&ours, &reference.data, GRAD_REL_TOL)),
        ));
    }
    Ok(lines)
}

fn run_lm(case: &Case, dev: &Device) -> Result<Vec<(String, Outcome)>, Outcome> {
    let err = |e: String| Outcome::Error(format!("case {}: {e}", case.name));
    let mut params = Params::new();
    for (key, t) in &case.file.tensors {
        if let Some(name) = key.strip_prefix("param.") {
            params
                .insert(name, &to_candle(t, dev).map_err(err)?)
                .map_err(|e| err(e.to_string()))?;
        }
    }
    let model = match LanguageModel::from_lrnnx(case.ctor_kwargs(), params) {
        Ok(m) => m,
        Err(BuildError::UnsupportedClass(c)) => {
            return Err(Outcome::Unsupported(format!("no trainable layer for {c}")))
        }
        Err(e) => return Err(err(e.to_string())),
    };
    let tensor = |k: &str| case.tensor(k).map_err(|e| err(e.to_string()));
    let ids_t = tensor("input.input_ids")?;
    let (b, l) = match ids_t.shape.as_slice() {
        [b, l] => (*b, *l),
        s => {
            return Err(err(format!(
                "`input.input_ids` has shape {s:?}, expected (B, L)"
            )))
        }
    };
    let ids: Vec<u32> = ids_t
        .data
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f32 {
                Ok(v as u32)
            } else {
                Err(err(format!("`input.input_ids` holds {v}, not a token id")))
            }
        })
        .collect::<Result<_, _>>()?;
    let ids = Tensor::from_vec(ids, (b, l), dev).map_err(|e| err(e.to_string()))?;
    let flat = |t: &Tensor| -> Result<Vec<f32>, Outcome> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| err(e.to_string()))
    };
    let logits = model.forward(&ids, None).map_err(|e| err(e.to_string()))?;
    let mut lines = vec![(
        "train:logits".to_string(),
        Outcome::Compared(compare(&flat(&logits)?, &tensor("output.logits")?.data)),
    )];
    if let Ok(reference) = case.tensor("output.logits_step") {
        let stepped = (|| {
            let mut cache = model.init_cache(b)?;
            let mut cols = Vec::with_capacity(l);
            for t in 0..l {
                let tok = ids.narrow(1, t, 1)?.squeeze(1)?;
                cols.push(model.step(&tok, &mut cache, None)?);
            }
            Tensor::stack(&cols, 1)
        })()
        .map_err(|e| err(e.to_string()))?;
        lines.push((
            "train:logits_step".to_string(),
            Outcome::Compared(compare(&flat(&stepped)?, &reference.data)),
        ));
    }
    let g = to_candle(tensor("input.g")?, dev).map_err(err)?;
    let grads = (&logits * &g)
        .and_then(|p| p.sum_all())
        .and_then(|l| l.backward())
        .map_err(|e| err(e.to_string()))?;
    let vars = model.vars();
    for (key, reference) in &case.file.tensors {
        let Some(name) = key.strip_prefix("grad.") else {
            continue;
        };
        let ours = match vars.iter().find(|(k, _)| k == name) {
            Some((_, v)) => match grads.get(v.as_tensor()) {
                Some(g) => flat(g)?,
                None => vec![0.0; reference.data.len()],
            },
            // A parameter the model does not have has a zero gradient.
            None => vec![0.0; reference.data.len()],
        };
        lines.push((
            format!("train:grad.{name}"),
            Outcome::Compared(compare_with(&ours, &reference.data, GRAD_REL_TOL)),
        ));
    }
    Ok(lines)
}
