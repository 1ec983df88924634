//! A network of stages stepped sample by sample: dense projections, any core layer, pointwise
//! functions, GLU gates and (nested) residual connections — the stepping twin of
//! `lrnnx_train::network::Network`, which trains the same stages in parallel.
//!
//! ```text
//! Dense         y = W x + b                  weights: Wᵀ (d_in rows of d_out), then b
//! Layer         y = layer.step(x)            any [`CoreLayer`]; event layers get the time step
//! Activation    y = f(x) elementwise         f ∈ {GELU (erf), SiLU, tanh, ReLU, |x|}
//! Glu           y = a ⊙ σ(g),  x = [a | g]   (2n → n)
//! ResidualBegin remembers x (nesting ≤ MAX_RESIDUAL_DEPTH)
//! ResidualEnd   y = x + the x remembered by the matching ResidualBegin
//! GateEnd       y = r ⊙ σ(x), r the x remembered by the matching ResidualBegin (a mask)
//! ```
//!
//! State layout (`f32`, zeros = start of a sequence):
//!
//! ```text
//! [ each layer's state, in stage order | each ResidualBegin's saved vector | work A | work B ]
//! ```
//!
//! The two work vectors (the widest stage's width each) carry nothing between steps. The
//! stages are checked once, by [`Network::new`]: widths chain, a GLU input is even, residual
//! brackets match and close. After that a step cannot fail, allocate or panic.

use core::marker::PhantomData;

use crate::error::{check_finite_weights, check_len, Error, Result};
use crate::layer::{EventLayer, Layer};
use crate::linalg::{copy_prefix, gemv_t_acc};
use crate::{activation, fastmath, CoreLayer};

/// Deepest nesting of residual connections a network may have.
pub const MAX_RESIDUAL_DEPTH: usize = 8;

/// Sizes of a dense stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseConfig {
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Whether a bias follows the matrix.
    pub bias: bool,
}

impl DenseConfig {
    /// Number of weights: `d_in·d_out` (+ `d_out` with a bias).
    pub const fn weights_len(&self) -> usize {
        self.d_in * self.d_out + if self.bias { self.d_out } else { 0 }
    }
}

/// `y = W x + b` over a weight buffer holding `Wᵀ` (one row of `d_out` per input) then `b`.
#[derive(Debug, Clone)]
pub struct Dense<W> {
    config: DenseConfig,
    weights: W,
}

impl<W: AsRef<[f32]>> Dense<W> {
    /// Views a weight buffer in the layout above (zero-copy); checks sizes and finiteness.
    pub fn from_weights(config: DenseConfig, weights: W) -> Result<Self> {
        if config.d_in == 0 || config.d_out == 0 {
            return Err(Error::InvalidConfig {
                what: "dense stage",
                reason: "d_in and d_out must be positive",
            });
        }
        check_len(
            "dense weights",
            config.weights_len(),
            weights.as_ref().len(),
        )?;
        check_finite_weights("dense weights", weights.as_ref())?;
        Ok(Dense { config, weights })
    }

    /// The sizes.
    pub fn config(&self) -> &DenseConfig {
        &self.config
    }

    /// The weights (`Wᵀ`, then `b`).
    pub fn weights(&self) -> &[f32] {
        self.weights.as_ref()
    }

    /// `y = W x + b` (`x`: `d_in` values, `y`: `d_out`); mismatched lengths truncate.
    #[inline]
    pub fn apply(&self, x: &[f32], y: &mut [f32]) {
        let c = self.config;
        let (wt, b) = self
            .weights
            .as_ref()
            .split_at((c.d_in * c.d_out).min(self.weights.as_ref().len()));
        if c.bias {
            copy_prefix(y, b);
        } else {
            y.iter_mut().for_each(|v| *v = 0.0);
        }
        gemv_t_acc(y, wt, x);
    }
}

impl<W: AsRef<[f32]> + AsMut<[f32]>> Dense<W> {
    /// Fills `weights` from PyTorch's `Linear` layout: `weight` (d_out, d_in) row-major and an
    /// optional `bias` (d_out), which must be given exactly when `config.bias`.
    pub fn from_torch(
        config: DenseConfig,
        weight: &[f32],
        bias: Option<&[f32]>,
        mut weights: W,
    ) -> Result<Self> {
        check_len("dense weight", config.d_in * config.d_out, weight.len())?;
        check_len(
            "dense weights",
            config.weights_len(),
            weights.as_ref().len(),
        )?;
        let out = weights.as_mut();
        for o in 0..config.d_out {
            for i in 0..config.d_in {
                out[i * config.d_out + o] = weight[o * config.d_in + i];
            }
        }
        match (config.bias, bias) {
            (true, Some(b)) => {
                check_len("dense bias", config.d_out, b.len())?;
                out[config.d_in * config.d_out..].copy_from_slice(b);
            }
            (false, None) => {}
            _ => {
                return Err(Error::InvalidConfig {
                    what: "dense stage",
                    reason: "a bias must be given exactly when the config has one",
                })
            }
        }
        Dense::from_weights(config, weights)
    }
}

/// An elementwise function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, `x·(1 + erf(x/√2))/2`.
    Gelu,
    /// `x·σ(x)`.
    Silu,
    /// `tanh x`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `|x|`.
    Abs,
}

impl Activation {
    /// `f(x)`. Tanh is computed as `expm1(2x)/(expm1(2x) + 2)` with `x` clamped to ±9 (where
    /// tanh is 1 in `f32`), accurate to a few ulp including near 0.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => activation::gelu(x),
            Activation::Silu => fastmath::silu(x),
            Activation::Tanh => {
                let e = fastmath::expm1(2.0 * x.clamp(-9.0, 9.0));
                e / (e + 2.0)
            }
            Activation::Relu => x.max(0.0),
            Activation::Abs => x.abs(),
        }
    }
}

/// One stage of a [`Network`] (module doc).
#[derive(Debug, Clone)]
pub enum Stage<W> {
    /// A dense projection.
    Dense(Dense<W>),
    /// A sequence layer.
    Layer(CoreLayer<W>),
    /// An elementwise function.
    Activation(Activation),
    /// `a ⊙ σ(g)` over the halves `[a | g]`.
    Glu,
    /// Opens a residual connection.
    ResidualBegin,
    /// Closes the innermost open residual connection.
    ResidualEnd,
    /// Closes the innermost open residual connection multiplicatively: `r ⊙ σ(x)`.
    GateEnd,
}

/// A network of [`Stage`]s held in `S` (an array, a `Vec`, a slice) over weight buffers `W`.
#[derive(Debug, Clone)]
pub struct Network<W, S> {
    stages: S,
    d_in: usize,
    d_out: usize,
    max_width: usize,
    layer_state_len: usize,
    saved_len: usize,
    _weights: PhantomData<W>,
}

impl<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>> Network<W, S> {
    /// A network taking `d_in` inputs through `stages`; checks the widths, the GLU inputs and
    /// the residual brackets ([`Error::NetworkStage`] names the stage).
    pub fn new(d_in: usize, stages: S) -> Result<Self> {
        let bad = |index, reason| Err(Error::NetworkStage { index, reason });
        if d_in == 0 {
            return Err(Error::InvalidConfig {
                what: "network",
                reason: "the input width must be positive",
            });
        }
        let (mut width, mut max_width) = (d_in, d_in);
        let (mut layer_state_len, mut saved_len) = (0usize, 0usize);
        let mut open = [0usize; MAX_RESIDUAL_DEPTH];
        let mut depth = 0;
        for (i, stage) in stages.as_ref().iter().enumerate() {
            match stage {
                Stage::Dense(d) => {
                    if d.config.d_in != width {
                        return bad(i, "dense input width differs from the incoming width");
                    }
                    width = d.config.d_out;
                }
                Stage::Layer(l) => {
                    let l = l.as_layer();
                    if l.d_input() != width {
                        return bad(i, "layer input width differs from the incoming width");
                    }
                    width = l.d_output();
                    layer_state_len = layer_state_len.saturating_add(l.state_len());
                }
                Stage::Activation(_) => {}
                Stage::Glu => {
                    if !width.is_multiple_of(2) {
                        return bad(i, "a GLU needs an even input width");
                    }
                    width /= 2;
                }
                Stage::ResidualBegin => {
                    if depth == MAX_RESIDUAL_DEPTH {
                        return bad(i, "residual connections nested too deeply");
                    }
                    open[depth] = width;
                    depth += 1;
                    saved_len = saved_len.saturating_add(width);
                }
                Stage::ResidualEnd | Stage::GateEnd => {
                    if depth == 0 {
                        return bad(i, "residual end without a residual begin");
                    }
                    depth -= 1;
                    if open[depth] != width {
                        return bad(i, "residual end adds a vector of another width");
                    }
                }
            }
            if width == 0 {
                return bad(i, "stage output width is 0");
            }
            max_width = max_width.max(width);
        }
        if depth != 0 {
            return bad(
                stages.as_ref().len(),
                "residual begin without a residual end",
            );
        }
        let net = Network {
            stages,
            d_in,
            d_out: width,
            max_width,
            layer_state_len,
            saved_len,
            _weights: PhantomData,
        };
        crate::error::check_sizes(0, net.total_state_len())?;
        Ok(net)
    }

    /// The stages.
    pub fn stages(&self) -> &[Stage<W>] {
        self.stages.as_ref()
    }

    fn total_state_len(&self) -> usize {
        self.layer_state_len
            .saturating_add(self.saved_len)
            .saturating_add(self.max_width.saturating_mul(2))
    }

    /// [`Layer::step`] that also calls `observe(i)` just before stage `i` runs and
    /// `observe(stages().len())` after the last one: a hook for measuring the cost of each
    /// stage (the firmware example reads a cycle counter in it). Same checks and errors as
    /// [`Layer::step`] (the state is left untouched on error); `observe` is not called then.
    pub fn step_observed(
        &self,
        state: &mut [f32],
        x: &[f32],
        y: &mut [f32],
        observe: impl FnMut(usize),
    ) -> Result<()> {
        check_len("state", self.total_state_len(), state.len())?;
        check_len("input x", self.d_in, x.len())?;
        check_len("output y", self.d_out, y.len())?;
        crate::error::check_finite_input(x)?;
        self.run(state, x, None, y, observe);
        Ok(())
    }

    /// One sample through every stage; `dt` goes to event layers when given; `observe(i)`
    /// before stage `i` and after the last.
    #[inline(always)]
    fn run(
        &self,
        state: &mut [f32],
        x: &[f32],
        dt: Option<f32>,
        y: &mut [f32],
        mut observe: impl FnMut(usize),
    ) {
        if state.len() != self.total_state_len() || x.len() != self.d_in || y.len() != self.d_out {
            return; // unreachable through `step`; never index out of range
        }
        let (layers, rest) = state.split_at_mut(self.layer_state_len);
        let (saved, work) = rest.split_at_mut(self.saved_len);
        let (a, b) = work.split_at_mut(self.max_width);
        let (mut cur, mut nxt) = (a, b);
        cur[..self.d_in].copy_from_slice(x);
        let mut width = self.d_in;
        let (mut layer_off, mut saved_off) = (0usize, 0usize);
        let mut open = [(0usize, 0usize); MAX_RESIDUAL_DEPTH];
        let mut depth = 0usize;
        for (index, stage) in self.stages.as_ref().iter().enumerate() {
            observe(index);
            match stage {
                Stage::Dense(d) => {
                    let out = d.config.d_out;
                    d.apply(&cur[..width], &mut nxt[..out]);
                    core::mem::swap(&mut cur, &mut nxt);
                    width = out;
                }
                Stage::Layer(l) => {
                    let n = l.state_len();
                    let st = &mut layers[layer_off..layer_off + n];
                    layer_off += n;
                    let out = l.as_layer().d_output();
                    match (dt, l.as_event_layer()) {
                        (Some(dt), Some(e)) => {
                            e.step_event_prechecked(st, &cur[..width], dt, &mut nxt[..out])
                        }
                        _ => l
                            .as_layer()
                            .step_prechecked(st, &cur[..width], &mut nxt[..out]),
                    }
                    core::mem::swap(&mut cur, &mut nxt);
                    width = out;
                }
                Stage::Activation(f) => {
                    let f = *f;
                    cur[..width].iter_mut().for_each(|v| *v = f.apply(*v));
                }
                Stage::Glu => {
                    let n = width / 2;
                    let (lin, gate) = cur[..width].split_at(n);
                    for ((o, a), g) in nxt[..n].iter_mut().zip(lin).zip(gate) {
                        *o = a * fastmath::sigmoid(*g);
                    }
                    core::mem::swap(&mut cur, &mut nxt);
                    width = n;
                }
                Stage::ResidualBegin => {
                    saved[saved_off..saved_off + width].copy_from_slice(&cur[..width]);
                    open[depth] = (saved_off, width);
                    depth += 1;
                    saved_off += width;
                }
                Stage::ResidualEnd => {
                    depth -= 1;
                    let (off, w) = open[depth];
                    for (c, s) in cur[..w].iter_mut().zip(&saved[off..off + w]) {
                        *c += s;
                    }
                }
                Stage::GateEnd => {
                    depth -= 1;
                    let (off, w) = open[depth];
                    for (c, s) in cur[..w].iter_mut().zip(&saved[off..off + w]) {
                        *c = s * fastmath::sigmoid(*c);
                    }
                }
            }
        }
        observe(self.stages.as_ref().len());
        y.copy_from_slice(&cur[..self.d_out]);
    }
}

impl<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>> Layer for Network<W, S> {
    fn d_input(&self) -> usize {
        self.d_in
    }

    fn d_output(&self) -> usize {
        self.d_out
    }

    fn state_len(&self) -> usize {
        self.total_state_len()
    }

    /// Every stage in order; event layers step with a unit time step's meaning of their
    /// discretization (their plain `step`).
    fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
        self.run(state, x, None, y, |_| {});
    }
}

impl<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>> EventLayer for Network<W, S> {
    /// Every stage in order; event layers (S5 time-varying, Mamba) step with time step `dt`,
    /// the others ignore it.
    fn step_event_prechecked(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]) {
        self.run(state, x, Some(dt), y, |_| {});
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::{Lru, LruConfig};

    fn dense(d_in: usize, d_out: usize, seed: u32) -> Dense<Vec<f32>> {
        let c = DenseConfig {
            d_in,
            d_out,
            bias: true,
        };
        let w: Vec<f32> = (0..c.weights_len())
            .map(|k| (((k as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        Dense::from_weights(c, w).unwrap()
    }

    /// `y = W x + b` in f64 from the stored layout, written as a plain double loop.
    fn dense_ref(d: &Dense<Vec<f32>>, x: &[f64]) -> Vec<f64> {
        let c = d.config;
        (0..c.d_out)
            .map(|o| {
                let mut s = d.weights[c.d_in * c.d_out + o] as f64;
                for (i, xi) in x.iter().enumerate() {
                    s += d.weights[i * c.d_out + o] as f64 * xi;
                }
                s
            })
            .collect()
    }

    #[test]
    fn torch_layout_is_transposed() {
        let c = DenseConfig {
            d_in: 3,
            d_out: 2,
            bias: true,
        };
        // PyTorch weight rows are outputs.
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let d = Dense::from_torch(c, &w, Some(&[0.5, -1.0]), vec![0.0; 8]).unwrap();
        let mut y = [0.0; 2];
        d.apply(&[1.0, 0.0, -1.0], &mut y);
        assert_eq!(y, [1.0 - 3.0 + 0.5, 4.0 - 6.0 - 1.0]);
        assert!(Dense::from_torch(c, &w, None, vec![0.0; 8]).is_err());
        assert!(Dense::from_weights(c, vec![f32::NAN; 8]).is_err());
        assert!(Dense::from_weights(c, vec![0.0; 7]).is_err());
    }

    #[test]
    fn activations_match_their_formulas() {
        for i in -400..=400 {
            let x = i as f32 * 0.03;
            let xd = x as f64;
            let tanh = Activation::Tanh.apply(x) as f64;
            assert!(
                (tanh - xd.tanh()).abs() <= 2e-7 * xd.tanh().abs().max(1e-3),
                "{x}"
            );
            let silu = Activation::Silu.apply(x) as f64;
            let r = xd / (1.0 + (-xd).exp());
            assert!((silu - r).abs() < 1e-6 * r.abs().max(1.0), "{x}");
            assert_eq!(Activation::Relu.apply(x), x.max(0.0));
        }
        assert_eq!(Activation::Tanh.apply(1e30), 1.0);
        assert_eq!(Activation::Tanh.apply(-1e30), -1.0);
    }

    /// A network with every stage kind against the same stages evaluated independently in
    /// f64 (dense by its definition, the LRU by its own step on a separate state).
    #[test]
    fn step_equals_stagewise_reference() {
        let lru_cfg = LruConfig {
            d_model: 4,
            d_state: 3,
        };
        let mut lw = vec![0.0f32; lru_cfg.weights_len()];
        for (k, v) in lw.iter_mut().enumerate() {
            *v = ((k * 37 % 17) as f32 - 8.0) / 20.0;
        }
        // Decays inside the unit disc: the first 2·N weights are Ā's (re, im) in the LRU layout.
        for v in lw.iter_mut().take(2 * lru_cfg.d_state) {
            *v *= 0.9;
        }
        let lru = Lru::from_weights(lru_cfg, lw).unwrap();
        let (d0, d1, d2) = (dense(2, 4, 1), dense(4, 8, 2), dense(4, 1, 3));
        let stages = vec![
            Stage::ResidualBegin,
            Stage::Dense(d0.clone()),
            Stage::ResidualBegin,
            Stage::Layer(CoreLayer::Lru(lru.clone())),
            Stage::Activation(Activation::Tanh),
            Stage::Dense(d1.clone()),
            Stage::Glu,
            Stage::Activation(Activation::Silu),
            Stage::ResidualEnd,
            Stage::Dense(d2.clone()),
            Stage::Dense(dense(1, 2, 4)),
            Stage::ResidualEnd,
        ];
        let d3 = match &stages[10] {
            Stage::Dense(d) => d.clone(),
            _ => unreachable!(),
        };
        let net = Network::new(2, stages).unwrap();
        assert_eq!((net.d_input(), net.d_output()), (2, 2));
        let mut state = vec![0.0f32; net.state_len()];
        let mut observed_state = state.clone();
        let mut lru_state = vec![0.0f32; lru.state_len()];
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        for t in 0..50 {
            let x = [(t as f32 * 0.3).sin(), (t as f32 * 0.11).cos()];
            let mut y = [0.0f32; 2];
            net.step(&mut state, &x, &mut y).unwrap();
            // The hook sees stages 0..=12 in order and changes nothing.
            let (mut seen, mut y_obs) = (Vec::new(), [0.0f32; 2]);
            net.step_observed(&mut observed_state, &x, &mut y_obs, |i| seen.push(i))
                .unwrap();
            assert_eq!(seen, (0..=12).collect::<Vec<_>>());
            assert_eq!(y_obs, y);
            // Reference.
            let xd: Vec<f64> = x.iter().map(|v| *v as f64).collect();
            let h0 = dense_ref(&d0, &xd);
            let h0f: Vec<f32> = h0.iter().map(|v| *v as f32).collect();
            let mut l = [0.0f32; 4];
            lru.step(&mut lru_state, &h0f, &mut l).unwrap();
            let h1: Vec<f64> = l.iter().map(|v| (*v as f64).tanh()).collect();
            let h2 = dense_ref(&d1, &h1);
            let g: Vec<f64> = (0..4).map(|k| h2[k] * sig(h2[k + 4])).collect();
            let h3: Vec<f64> = g.iter().zip(&h0).map(|(v, r)| v * sig(*v) + r).collect();
            let h4 = dense_ref(&d2, &h3);
            let out: Vec<f64> = dense_ref(&d3, &h4)
                .iter()
                .zip(&xd)
                .map(|(a, b)| a + b)
                .collect();
            for k in 0..2 {
                let err = (y[k] as f64 - out[k]).abs();
                assert!(
                    err < 2e-5 * (1.0 + out[k].abs()),
                    "t={t}: {} vs {}",
                    y[k],
                    out[k]
                );
            }
        }
    }

    #[test]
    fn step_observed_checks_like_step() {
        let net = Network::new(2, vec![Stage::Dense(dense(2, 3, 1)), Stage::Glu]);
        assert!(net.is_err(), "odd GLU input accepted");
        let net = Network::new(2, vec![Stage::Dense(dense(2, 4, 1)), Stage::Glu]).unwrap();
        let mut state = vec![0.0f32; net.state_len()];
        let mut calls = 0;
        let mut y = [0.0f32; 2];
        for (x, st_len) in [
            ([1.0, f32::NAN], state.len()),
            ([1.0, 2.0], state.len() - 1),
        ] {
            let r = net.step_observed(&mut state[..st_len], &x, &mut y, |_| calls += 1);
            assert!(r.is_err());
        }
        assert!(net
            .step_observed(&mut state, &[1.0, 2.0], &mut [0.0; 3], |_| calls += 1)
            .is_err());
        assert_eq!(calls, 0);
        net.step_observed(&mut state, &[1.0, 2.0], &mut y, |_| calls += 1)
            .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn construction_errors_name_the_stage() {
        let e = Network::new(3, vec![Stage::Dense(dense(2, 4, 1))]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 0, .. }), "{e:?}");
        let e = Network::new(2, vec![Stage::Dense(dense(2, 3, 1)), Stage::Glu]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 1, .. }));
        let e = Network::<Vec<f32>, _>::new(2, vec![Stage::ResidualBegin]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 1, .. }));
        let e = Network::<Vec<f32>, _>::new(2, vec![Stage::ResidualEnd]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 0, .. }));
        let e = Network::new(
            2,
            vec![
                Stage::ResidualBegin,
                Stage::Dense(dense(2, 4, 1)),
                Stage::ResidualEnd,
            ],
        )
        .unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 2, .. }));
        let deep: Vec<Stage<Vec<f32>>> = (0..2 * (MAX_RESIDUAL_DEPTH + 1))
            .map(|i| {
                if i <= MAX_RESIDUAL_DEPTH {
                    Stage::ResidualBegin
                } else {
                    Stage::ResidualEnd
                }
            })
            .collect();
        assert!(Network::new(1, deep).is_err());
        // Wrong buffer lengths and NaN input: errors, state untouched.
        let net = Network::new(2, vec![Stage::Dense(dense(2, 4, 1))]).unwrap();
        let mut st = vec![0.0; net.state_len()];
        assert!(net.step(&mut st, &[1.0], &mut [0.0; 4]).is_err());
        assert!(net.step(&mut st, &[f32::NAN, 1.0], &mut [0.0; 4]).is_err());
        assert!(net.step(&mut st[1..], &[1.0, 1.0], &mut [0.0; 4]).is_err());
    }
}
