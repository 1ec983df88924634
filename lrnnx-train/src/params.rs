//! Trainable parameters by lrnnx state-dict name.

use std::collections::BTreeMap;

use candle_core::{bail, Result, Tensor, Var};

/// A layer's parameters: candle [`Var`]s under lrnnx's state-dict names (the names a checkpoint
/// uses, and the names gradients are reported under).
#[derive(Debug, Clone, Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    /// An empty set.
    pub fn new() -> Self {
        Params::default()
    }

    /// Adds (or replaces) `name` with the values of `t`.
    pub fn insert(&mut self, name: &str, t: &Tensor) -> Result<()> {
        self.vars.insert(name.to_owned(), Var::from_tensor(t)?);
        Ok(())
    }

    /// The parameter `name`, which must have exactly `shape`; the error names both.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.vars.get(name) {
            None => bail!("missing parameter tensor `{name}`"),
            Some(v) if v.dims() != shape => {
                bail!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    v.dims()
                )
            }
            Some(v) => Ok(v.as_tensor().clone()),
        }
    }

    /// Every parameter, by name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }
}
