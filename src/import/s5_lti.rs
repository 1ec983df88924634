//! lrnnx `lrnnx.models.lti.s5.S5(d_model, d_state, discretization, conj_sym=False)`.

use lrnnx_core::{Discretization, ParamSource, S5Lti, S5LtiConfig};
use serde_json::Value;

use super::{bool_arg_or, buffer, precheck, str_arg_or, usize_arg, CoreModel, ImportError};

/// lrnnx's LTI S5 was trained with its own (inverted) "bilinear" rule, so importing a checkpoint
/// named "bilinear" selects the explicit compatibility rule; every other name maps directly.
pub(super) fn lrnnx_lti_rule(name: &str) -> Result<Discretization, ImportError> {
    match name {
        "" => Err(ImportError::Kwarg {
            name: "discretization".into(),
            reason:
                "missing (lrnnx's LTI S5 requires it: zoh, bilinear, dirac or no_discretization)"
                    .into(),
        }),
        "bilinear" => Ok(Discretization::LrnnxInvertedBilinear),
        other => Discretization::from_name(other).ok_or_else(|| ImportError::Kwarg {
            name: "discretization".into(),
            reason: format!("unknown discretization `{other}`"),
        }),
    }
}

pub(super) fn build<P: ParamSource + ?Sized>(
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    if bool_arg_or(kwargs, "conj_sym", false)? {
        return Err(ImportError::Kwarg {
            name: "conj_sym".into(),
            reason: "lrnnx's LTI S5 does not implement conjugate symmetry".into(),
        });
    }
    let config = S5LtiConfig {
        d_model: usize_arg(kwargs, "d_model")?,
        d_state: usize_arg(kwargs, "d_state")?,
        discretization: lrnnx_lti_rule(str_arg_or(kwargs, "discretization", "")?)?,
        // lrnnx's LTI S5 has no default discretization: an empty name means it was not given.
    };
    let (h, n) = (config.d_model, config.d_state);
    precheck(params, &[("B", &[n, h]), ("D", &[h, h])])?;
    let layer = S5Lti::from_lrnnx(config, params, buffer(config.weights_len())?)?;
    Ok(CoreModel::Plain(Box::new(layer)))
}
