//! lrnnx `lrnnx.models.lti.centaurus.{CentaurusNeck, CentaurusPWNeck, CentaurusDWS,
//! CentaurusFull}(d_model, d_state, sub_state_dim, discretization="zoh")`.
//!
//! lrnnx checks `discretization` against its registry (`zoh`, `bilinear`, `dirac`, `async`,
//! `no_discretization`, or `None`) and then ignores it: every accepted name gives the same layer
//! (`Ā = exp(Δ·A)`, `B̄ = Δ·B`, spec §8.1). The import accepts exactly those names, so a
//! checkpoint that lrnnx can build imports to the same computation, and rejects any other.

use lrnnx_core::centaurus::{Centaurus, CentaurusConfig, CentaurusMode};
use lrnnx_core::ParamSource;
use serde_json::Value;

use super::{buffer, precheck, str_arg_or, usize_arg, CoreModel, ImportError};

/// The names lrnnx's discretization registry accepts (all equivalent for Centaurus).
const LRNNX_DISCRETIZATIONS: [&str; 5] = ["zoh", "bilinear", "dirac", "async", "no_discretization"];

pub(super) fn build<P: ParamSource + ?Sized>(
    class: &str,
    kwargs: &Value,
    params: &P,
) -> Result<CoreModel, ImportError> {
    let mode = CentaurusMode::from_lrnnx_class(class)
        .ok_or_else(|| ImportError::UnsupportedClass(class.to_owned()))?;
    let disc = str_arg_or(kwargs, "discretization", "zoh")?;
    if !LRNNX_DISCRETIZATIONS.contains(&disc) {
        return Err(ImportError::Kwarg {
            name: "discretization".into(),
            reason: format!(
                "unknown discretization `{disc}` (lrnnx accepts {}; all give the same Centaurus layer)",
                LRNNX_DISCRETIZATIONS.join(", ")
            ),
        });
    }
    let config = CentaurusConfig {
        d_model: usize_arg(kwargs, "d_model")?,
        d_state: usize_arg(kwargs, "d_state")?,
        sub_state_dim: usize_arg(kwargs, "sub_state_dim")?,
        mode,
    };
    config.validate()?;
    let (h, n, m) = (config.d_model, config.d_state, config.sub_state_dim);
    let b_shape = match config.mode {
        CentaurusMode::Neck => [n, h],
        CentaurusMode::PointwiseNeck => [n.saturating_mul(m), h],
        CentaurusMode::DepthwiseSeparable => [h, 1],
        CentaurusMode::Full => [n, 1],
    };
    let b_rank = if b_shape[1] == 1 { 1 } else { 2 };
    precheck(params, &[("A", &[n, m, 2]), ("B", &b_shape[..b_rank])])?;
    let layer = Centaurus::from_lrnnx(config, params, buffer(config.weights_len())?)?;
    Ok(CoreModel::Plain(Box::new(layer)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::safetensors_io::TensorFile;

    fn golden(case: &str) -> TensorFile {
        let path = format!(
            "{}/tests/data/lrnnx-golden/{case}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        TensorFile::read(path).unwrap()
    }

    #[test]
    fn every_lrnnx_discretization_name_gives_the_same_layer() {
        let file = golden("centaurus_neck");
        let params = file.params("param.");
        let class = "lrnnx.models.lti.centaurus.CentaurusNeck";
        let kw = |d: Value| json!({"d_model": 8, "d_state": 16, "sub_state_dim": 4, "discretization": d});
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
        let run = |d: Value| {
            let model = build(class, &kw(d), &params).unwrap();
            let layer = model.as_layer();
            let mut state = vec![0.0; layer.state_len()];
            let mut y = vec![0.0; 8];
            for _ in 0..3 {
                layer.step(&mut state, &x, &mut y).unwrap();
            }
            y
        };
        let want = run(json!("zoh"));
        for d in ["bilinear", "dirac", "async", "no_discretization"] {
            assert_eq!(run(json!(d)), want, "{d}");
        }
        assert_eq!(run(Value::Null), want);
        for bad in [json!("mamba"), json!("tustin"), json!(3)] {
            assert!(matches!(
                build(class, &kw(bad), &params),
                Err(ImportError::Kwarg { .. })
            ));
        }
        assert!(matches!(
            build("CentaurusHalf", &kw(json!("zoh")), &params),
            Err(ImportError::UnsupportedClass(_))
        ));
        // The kwargs must match the tensors: a DWS view of the Neck weights is rejected.
        assert!(matches!(
            build(
                "CentaurusDWS",
                &json!({"d_model": 8, "d_state": 8, "sub_state_dim": 4}),
                &params
            ),
            Err(ImportError::Core(_))
        ));
    }
}
