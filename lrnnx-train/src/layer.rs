//! The interface every trainable layer has, and building one from lrnnx's class name.

use candle_core::{bail, DType, Result, Tensor, TensorId};
use serde_json::Value;

use crate::params::Params;

/// A layer trained in parallel mode, which can also be run one time step at a time.
pub trait TrainLayer: Send + Sync {
    /// The parallel forward over `x` (B, L, H); `time_steps` (B, L) are the event time steps of
    /// event-driven layers (Event-SSM, STREAM), `None` otherwise.
    fn forward(&self, x: &Tensor, time_steps: Option<&Tensor>) -> Result<Tensor>;

    /// The parameters, by lrnnx state-dict name.
    fn params(&self) -> &Params;

    /// A zero state for [`TrainLayer::step`] over `batch` sequences. The cache also holds the
    /// discretized weights, computed once here (as lrnnx's `allocate_inference_cache` does):
    /// after the parameters change, make a new cache. Gradients flow through the cache's
    /// tensors to the parameters, so a stepped sequence can be back-propagated.
    fn init_cache(&self, batch: usize) -> Result<Cache>;

    /// One time step: `x_t` (B, H) → `y_t` (B, H_out), advancing `cache` (from
    /// [`TrainLayer::init_cache`] of this layer). Stepping a sequence from a fresh cache gives
    /// [`TrainLayer::forward`]'s outputs, one at a time. `time_step` (B,) is the event time
    /// step of event-driven layers (Event-SSM, STREAM): a cache's first step fixes its mode
    /// (with time steps = event mode, without = ordinary mode), and a later step in the other
    /// mode is an error; layers without an event mode refuse a time step. A wrong-shaped or
    /// wrong-dtype `x_t`, a time step that is not positive and finite, or a cache of another
    /// layer or batch size is an error; the cache is then left as it was.
    fn step(&self, x_t: &Tensor, cache: &mut Cache, time_step: Option<&Tensor>) -> Result<Tensor>;
}

/// The recurrent state of one layer for [`TrainLayer::step`], with the weights the layer
/// precomputed for stepping. The state tensors' layout is each layer's own (documented on its
/// `init_cache`); all start at zero.
#[derive(Debug, Clone)]
pub struct Cache {
    layer: &'static str,
    /// The making layer's identity: the id of its first parameter tensor (ids are unique per
    /// tensor and kept when a parameter `Var` is set), so a cache of another layer of the same
    /// kind and sizes is refused instead of stepping with that layer's weights.
    owner: Option<TensorId>,
    batch: usize,
    dtype: DType,
    event: Option<bool>,
    /// The state tensors (layer-specific layout).
    pub(crate) state: Vec<Tensor>,
    /// Weights precomputed at [`TrainLayer::init_cache`] (layer-specific).
    pub(crate) consts: Vec<Tensor>,
}

impl Cache {
    /// A cache of `layer` (whose parameters are `owner`) for `batch` sequences of `dtype`.
    pub(crate) fn new(
        layer: &'static str,
        owner: &Params,
        batch: usize,
        dtype: DType,
        state: Vec<Tensor>,
        consts: Vec<Tensor>,
    ) -> Self {
        Cache {
            layer,
            owner: owner_id(owner),
            batch,
            dtype,
            event: None,
            state,
            consts,
        }
    }

    /// The batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The layer that made the cache.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// `Some(true)` once stepped in event mode, `Some(false)` once stepped in ordinary mode,
    /// `None` before the first step.
    pub fn event_mode(&self) -> Option<bool> {
        self.event
    }

    /// The state tensors (layer-specific layout, see the layer's `init_cache`).
    pub fn state(&self) -> &[Tensor] {
        &self.state
    }

    /// Checks a step's arguments for `layer` with input width `h` (module rules of
    /// [`TrainLayer::step`]); `event_capable` says whether the layer has an event mode. Returns
    /// the time step, checked, and fixes the cache's mode.
    pub(crate) fn check_step<'t>(
        &mut self,
        layer: &'static str,
        owner: &Params,
        x_t: &Tensor,
        h: usize,
        time_step: Option<&'t Tensor>,
        event_capable: bool,
    ) -> Result<Option<&'t Tensor>> {
        if self.layer != layer {
            bail!("the cache was made by layer {}, not {layer}", self.layer);
        }
        if self.owner != owner_id(owner) {
            bail!("the cache was made by another {layer} layer: make one with this layer's init_cache");
        }
        if x_t.dims() != [self.batch, h] {
            bail!(
                "step input `x_t` has shape {:?}, expected (batch, d_model) = ({}, {h})",
                x_t.dims(),
                self.batch
            );
        }
        if x_t.dtype() != self.dtype {
            bail!(
                "step input `x_t` has dtype {:?}, the layer's parameters {:?}",
                x_t.dtype(),
                self.dtype
            );
        }
        let event = time_step.is_some();
        if let Some(tau) = time_step {
            if !event_capable {
                bail!("{layer} has no event mode: it takes no `time_step`");
            }
            if tau.dims() != [self.batch] || tau.dtype() != self.dtype {
                bail!(
                    "`time_step` has shape {:?} and dtype {:?}, expected ({},) of {:?}",
                    tau.dims(),
                    tau.dtype(),
                    self.batch,
                    self.dtype
                );
            }
            let v = tau.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            if let Some((i, t)) = v
                .iter()
                .enumerate()
                .find(|(_, t)| !(t.is_finite() && **t > 0.0))
            {
                bail!("`time_step`[{i}] = {t}: event time steps must be positive and finite");
            }
        }
        match self.event {
            Some(true) if !event => {
                bail!("{layer}: this cache is stepping in event mode: a `time_step` is required")
            }
            Some(false) if event => bail!(
                "{layer}: this cache is stepping in ordinary mode: no `time_step` may be given"
            ),
            _ => self.event = Some(event),
        }
        Ok(time_step)
    }
}

/// Why a layer could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// No trainable layer for this lrnnx class (yet).
    UnsupportedClass(String),
    /// A constructor argument is missing or invalid.
    Kwarg(String),
    /// The parameters are wrong (missing, mis-shaped).
    Candle(candle_core::Error),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::UnsupportedClass(c) => {
                write!(f, "no trainable layer for lrnnx class `{c}`")
            }
            BuildError::Kwarg(m) => write!(f, "constructor argument: {m}"),
            BuildError::Candle(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BuildError {}

impl From<candle_core::Error> for BuildError {
    fn from(e: candle_core::Error) -> Self {
        BuildError::Candle(e)
    }
}

/// Reads a required non-negative integer argument.
pub(crate) fn usize_arg(kwargs: &Value, name: &str) -> std::result::Result<usize, BuildError> {
    kwargs
        .get(name)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| BuildError::Kwarg(format!("`{name}`: expected a non-negative integer")))
}

/// Reads a size argument that must be at least 1 (a layer with no channels or no state).
pub(crate) fn positive_arg(kwargs: &Value, name: &str) -> std::result::Result<usize, BuildError> {
    match usize_arg(kwargs, name)? {
        0 => Err(BuildError::Kwarg(format!("`{name}` must be positive"))),
        v => Ok(v),
    }
}

/// Largest size a constructor argument may give one axis (2^31): products of two axes and sums
/// of a few then fit a `usize`, whatever a checkpoint's metadata says.
pub(crate) const MAX_AXIS: usize = 1 << 31;

/// Refuses sizes past [`MAX_AXIS`], naming the argument.
pub(crate) fn axes_fit(sizes: &[(&str, usize)]) -> std::result::Result<(), BuildError> {
    match sizes.iter().find(|(_, v)| *v > MAX_AXIS) {
        Some((name, v)) => Err(BuildError::Kwarg(format!(
            "`{name}` = {v} is past the largest axis size {MAX_AXIS}"
        ))),
        None => Ok(()),
    }
}

/// Reads a string argument (empty when absent).
pub(crate) fn str_arg<'v>(kwargs: &'v Value, name: &str) -> &'v str {
    kwargs.get(name).and_then(Value::as_str).unwrap_or("")
}

/// Builds the trainable layer of lrnnx class `class` (full import path or bare name) with
/// constructor arguments `kwargs` and the given parameters.
pub fn build(
    class: &str,
    kwargs: &Value,
    params: Params,
) -> std::result::Result<Box<dyn TrainLayer>, BuildError> {
    match class {
        "lrnnx.models.lti.s5.S5" => Ok(Box::new(crate::s5_lti::S5Lti::from_lrnnx(kwargs, params)?)),
        "lrnnx.models.lti.lru.LRU" | "LRU" => {
            Ok(Box::new(crate::lru::Lru::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.lti.s4.S4" | "S4" => Ok(Box::new(crate::s4::S4::from_lrnnx(kwargs, params)?)),
        "lrnnx.models.lti.s4d.S4D" | "S4D" => {
            Ok(Box::new(crate::s4d::S4d::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.lti.centaurus.CentaurusNeck"
        | "lrnnx.models.lti.centaurus.CentaurusPWNeck"
        | "lrnnx.models.lti.centaurus.CentaurusDWS"
        | "lrnnx.models.lti.centaurus.CentaurusFull"
        | "CentaurusNeck"
        | "CentaurusPWNeck"
        | "CentaurusDWS"
        | "CentaurusFull" => Ok(Box::new(crate::centaurus::Centaurus::from_lrnnx(
            class, kwargs, params,
        )?)),
        "lrnnx.models.ltv.s5.S5" => Ok(Box::new(crate::s5_ltv::S5Ltv::from_lrnnx(kwargs, params)?)),
        "lrnnx.models.ltv.mamba.Mamba" => {
            Ok(Box::new(crate::mamba::Mamba::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.ltv.rglru.RGLRU" | "RGLRU" => {
            Ok(Box::new(crate::rglru::RgLru::from_lrnnx(kwargs, params)?))
        }
        "lrnnx.models.ltv.s7.S7" | "S7" => Ok(Box::new(crate::s7::S7::from_lrnnx(kwargs, params)?)),
        crate::bidirectional::CLASS => Ok(Box::new(
            crate::bidirectional::Bidirectional::from_lrnnx(kwargs, params)?,
        )),
        other => Err(BuildError::UnsupportedClass(other.to_owned())),
    }
}

/// A layer's identity for its caches: the id of its first parameter tensor (by name).
fn owner_id(params: &Params) -> Option<TensorId> {
    params.vars().values().next().map(|v| v.as_tensor().id())
}

/// Checks the event time steps `tau` of a parallel forward over (`bsz`, `len`): shape (B, L),
/// every value positive and finite (as the step path requires of each `time_step`). One
/// reduction (`Σ ln τ` is finite exactly when every τ is positive and finite) and one scalar
/// read back; only a failure reads the values, to name the first bad one `[b, t]`.
pub(crate) fn check_time_steps(tau: &Tensor, bsz: usize, len: usize) -> Result<()> {
    if tau.dims() != [bsz, len] {
        bail!(
            "`time_steps` has shape {:?}, expected (B, L) = ({bsz}, {len})",
            tau.dims()
        );
    }
    let wide = tau.to_dtype(DType::F64)?;
    if wide.log()?.sum_all()?.to_scalar::<f64>()?.is_finite() {
        return Ok(());
    }
    let v = wide.flatten_all()?.to_vec1::<f64>()?;
    match v.iter().position(|t| !(t.is_finite() && *t > 0.0)) {
        Some(i) => bail!(
            "`time_steps`[{}, {}] = {}: event time steps must be positive and finite",
            i / len.max(1),
            i % len.max(1),
            v[i]
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use serde_json::json;

    use crate::init::{fresh, Rng};

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A layer with no channels or no state is refused by every class, naming the argument,
    /// before its parameters are looked at.
    #[test]
    fn zero_sizes_are_refused() {
        let cases = [
            ("LRU", json!({"d_model": 3, "d_state": 0}), "d_state"),
            ("LRU", json!({"d_model": 0, "d_state": 4}), "d_model"),
            (
                "lrnnx.models.lti.s5.S5",
                json!({"d_model": 3, "d_state": 0, "discretization": "zoh"}),
                "d_state",
            ),
            (
                "lrnnx.models.lti.s5.S5",
                json!({"d_model": 0, "d_state": 4, "discretization": "zoh"}),
                "d_model",
            ),
            (
                "lrnnx.models.ltv.s5.S5",
                json!({"d_model": 3, "d_state": 0}),
                "d_state",
            ),
            (
                "lrnnx.models.ltv.s5.S5",
                json!({"d_model": 0, "d_state": 4}),
                "d_model",
            ),
            (
                "lrnnx.models.ltv.mamba.Mamba",
                json!({"d_model": 0}),
                "d_model",
            ),
            ("S7", json!({"d_model": 3, "d_state": 0}), "d_state"),
        ];
        for (class, kw, name) in cases {
            let e = super::build(class, &kw, crate::params::Params::new())
                .err()
                .unwrap_or_else(|| panic!("{class} {kw} built"));
            assert!(
                e.to_string().contains(&format!("`{name}`"))
                    && e.to_string().contains("must be positive"),
                "{class} {kw}: {e}"
            );
        }
    }

    fn state(c: &super::Cache) -> Vec<Vec<f32>> {
        c.state()
            .iter()
            .map(|s| s.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    /// Constructor arguments (a checkpoint's metadata) whose sizes would overflow the shape
    /// arithmetic are refused with an error naming the argument, before any parameter is read.
    #[test]
    fn oversized_constructor_arguments_are_refused() {
        let refused = |class: &str, kw: serde_json::Value, name: &str| {
            let e = super::build(class, &kw, crate::Params::new())
                .err()
                .unwrap_or_else(|| panic!("{class} {kw} was accepted"));
            let msg = e.to_string();
            assert!(
                msg.contains(name) && msg.contains("largest axis"),
                "{class}: {msg}"
            );
        };
        let mamba = "lrnnx.models.ltv.mamba.Mamba";
        refused(mamba, json!({"d_model": 4, "expand": 1e300}), "d_inner");
        refused(
            mamba,
            json!({"d_model": 4, "d_state": 1u64 << 62}),
            "d_state",
        );
        refused(
            "lrnnx.models.lti.centaurus.CentaurusPWNeck",
            json!({"d_model": 4, "d_state": 1u64 << 32, "sub_state_dim": 1u64 << 32}),
            "d_state",
        );
    }

    /// Every refusal of `step` is an error naming the problem, and leaves the cache as it was.
    #[test]
    fn step_refuses_bad_arguments_and_keeps_the_cache() {
        let mut rng = Rng::new(3);
        let kw = json!({"d_model": 4, "d_state": 3, "d_conv": 3, "expand": 2});
        let mamba = fresh(
            "lrnnx.models.ltv.mamba.Mamba",
            &kw,
            &mut rng,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let kw = json!({"d_model": 4, "d_state": 3, "discretization": "zoh"});
        let s5 = fresh(
            "lrnnx.models.lti.s5.S5",
            &kw,
            &mut rng,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let x = t(vec![0.5; 8], &[2, 4]);
        let tau = t(vec![0.7, 1.3], &[2]);

        // Event mode fixed by the first step: a later step without a time step is refused.
        let mut c = mamba.init_cache(2).unwrap();
        mamba.step(&x, &mut c, Some(&tau)).unwrap();
        assert_eq!(c.event_mode(), Some(true));
        let before = state(&c);
        let bad: Vec<(Tensor, Option<Tensor>, &str)> = vec![
            (x.clone(), None, "time_step` is required"),
            (t(vec![0.5; 12], &[3, 4]), Some(tau.clone()), "`x_t`"),
            (t(vec![0.5; 10], &[2, 5]), Some(tau.clone()), "`x_t`"),
            (t(vec![0.5; 8], &[2, 1, 4]), Some(tau.clone()), "`x_t`"),
            (x.to_dtype(DType::F64).unwrap(), Some(tau.clone()), "dtype"),
            (x.clone(), Some(t(vec![0.7], &[1])), "`time_step`"),
            (x.clone(), Some(t(vec![0.7, 0.0], &[2])), "`time_step`[1]"),
            (x.clone(), Some(t(vec![-1.0, 1.0], &[2])), "`time_step`[0]"),
            (
                x.clone(),
                Some(t(vec![f32::NAN, 1.0], &[2])),
                "`time_step`[0]",
            ),
            (
                x.clone(),
                Some(t(vec![1.0, f32::INFINITY], &[2])),
                "`time_step`[1]",
            ),
        ];
        for (xi, ti, want) in bad {
            let e = mamba.step(&xi, &mut c, ti.as_ref()).expect_err(want);
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert_eq!(state(&c), before, "{want}: cache changed");
        }
        // Ordinary mode fixed by the first step: a later time step is refused.
        let mut c = mamba.init_cache(2).unwrap();
        mamba.step(&x, &mut c, None).unwrap();
        let e = mamba.step(&x, &mut c, Some(&tau)).err().unwrap();
        assert!(e.to_string().contains("ordinary mode"), "{e}");

        // A layer without an event mode refuses a time step; a cache of another layer or
        // batch size is refused.
        let mut c = s5.init_cache(2).unwrap();
        let e = s5.step(&x, &mut c, Some(&tau)).err().unwrap();
        assert!(e.to_string().contains("no event mode"), "{e}");
        let mut other = mamba.init_cache(2).unwrap();
        let e = s5.step(&x, &mut other, None).err().unwrap();
        assert!(e.to_string().contains("made by layer Mamba"), "{e}");
        let mut c3 = s5.init_cache(3).unwrap();
        let e = s5.step(&x, &mut c3, None).err().unwrap();
        assert!(e.to_string().contains("`x_t`"), "{e}");
        // A cache of another layer of the same kind and sizes (its own weights precomputed in
        // it) is refused too, and left as it was.
        let kw = json!({"d_model": 4, "d_state": 3, "discretization": "zoh"});
        let other_s5 = fresh(
            "lrnnx.models.lti.s5.S5",
            &kw,
            &mut rng,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let mut theirs = other_s5.init_cache(2).unwrap();
        let before = state(&theirs);
        let e = s5.step(&x, &mut theirs, None).err().unwrap();
        assert!(e.to_string().contains("another S5"), "{e}");
        assert_eq!(state(&theirs), before);
        assert_eq!(s5.step(&x, &mut c, None).unwrap().dims(), [2, 4]);
    }

    /// The parallel forward of every event-capable layer refuses what the step refuses: event
    /// time steps that are zero, negative, NaN or infinite (naming `[b, t]`), or mis-shaped.
    #[test]
    fn forward_refuses_bad_event_time_steps() {
        let mut rng = Rng::new(4);
        let layers = [
            (
                "lrnnx.models.ltv.mamba.Mamba",
                json!({"d_model": 4, "d_state": 3, "d_conv": 3, "expand": 2}),
            ),
            (
                "lrnnx.models.ltv.s5.S5",
                json!({"d_model": 4, "d_state": 3, "discretization": "zoh"}),
            ),
        ];
        let x = t(vec![0.5; 2 * 3 * 4], &[2, 3, 4]);
        for (class, kw) in layers {
            let layer = fresh(class, &kw, &mut rng, DType::F32, &Device::Cpu).unwrap();
            let good = t(vec![0.7; 6], &[2, 3]);
            assert_eq!(layer.forward(&x, Some(&good)).unwrap().dims(), [2, 3, 4]);
            for (i, bad) in [0.0, -1.0, f32::NAN, f32::INFINITY].into_iter().enumerate() {
                let mut v = vec![0.7; 6];
                v[4 - i] = bad;
                let e = layer
                    .forward(&x, Some(&t(v, &[2, 3])))
                    .expect_err(class)
                    .to_string();
                let at = format!("`time_steps`[{}, {}]", (4 - i) / 3, (4 - i) % 3);
                assert!(e.contains(&at) && e.contains("positive"), "{class}: {e}");
            }
            let e = layer
                .forward(&x, Some(&t(vec![0.7; 3], &[1, 3])))
                .expect_err(class)
                .to_string();
            assert!(e.contains("`time_steps` has shape"), "{class}: {e}");
        }
    }
}
