//! A network of stages stepped sample by sample: dense projections, any core layer, pointwise
//! functions, GLU gates, (nested) residual connections and rate changes (down/up-sampling) —
//! the stepping twin of `lrnnx_train::network::Network`, which trains the same stages in
//! parallel.
//!
//! ```text
//! Dense         y = W x + b                  weights: Wᵀ (d_in rows of d_out), then b
//! Layer         y = layer.step(x)            any [`CoreLayer`]; event layers get the time step
//! Activation    y = f(x) elementwise         f ∈ {GELU (erf), SiLU, tanh, ReLU, |x|}
//! Glu           y = a ⊙ σ(g),  x = [a | g]   (2n → n)
//! Norm          y = LayerNorm(x) or RMSNorm(x) over the features ([`crate::norm`])
//! ResidualBegin remembers x (nesting ≤ MAX_RESIDUAL_DEPTH)
//! ResidualEnd   y = x + the x remembered by the matching ResidualBegin
//! GateEnd       y = r ⊙ σ(x), r the x remembered by the matching ResidualBegin (a mask)
//! Downsample k  frame_m = pool(x_{km}, …, x_{km+k−1}), emitted at step t = km + k − 1
//! Upsample k    y_t = part ((t + 1) mod k) of the newest frame (zeros before the first)
//! ```
//!
//! ## Rates
//!
//! `Downsample { factor: k, pooling }` collects its inputs; at every k-th step (t = km + k − 1,
//! counting from 0 at the start of the sequence) the frame of block m goes on to the following
//! stages, which therefore run once per block: the "low rate". At the other steps those stages
//! are skipped up to the matching `Upsample` (rate brackets nest like residual ones, at most
//! [`MAX_RATE_DEPTH`] deep). [`Pooling`] says how a frame is made (concatenation, mean, last
//! sample); with `Concat` and a dense stage after it this is a strided convolution with
//! kernel = stride = k (k ≤ [`MAX_FACTOR`]). Event layers in the low-rate part get the sum of the
//! block's time steps (at most `f32::MAX`, should the sum of finite steps overflow).
//!
//! `Upsample { factor: k, unpooling }` turns each low-rate frame back into k steps:
//! `Split` emits the frame's k parts `[f_0 | … | f_{k−1}]` one per step (with a dense stage before
//! it: a transposed convolution, kernel = stride = k), `Hold` repeats the frame. The frame of
//! block m is used from the step that completes it on:
//!
//! ```text
//! y_t = part j of frame m   for t = km + k − 1 + j,  j = 0 … k − 1     (y_t = 0 for t < k − 1)
//! ```
//!
//! a delay of k − 1 steps, the least that keeps the network causal (lrnnx's U-Net shifts by one
//! step only, which lets an output see up to k − 2 future samples, spec §14.3). The training
//! network computes exactly this in parallel. A `Downsample` without a matching `Upsample`
//! makes the network's output low-rate: between frames the output holds the last frame's
//! value ([`Network::output_factor`] says how many steps make one output frame).
//!
//! State layout (`f32`, zeros = start of a sequence):
//!
//! ```text
//! [ each stage's state, in stage order | held output (low-rate networks only) | work A | work B ]
//! layer: its state · ResidualBegin: the saved vector · Downsample: pool buffer, fill count,
//! summed time step · Upsample: the newest frame
//! ```
//!
//! The two work vectors (the widest stage's width each) carry nothing between steps. The
//! stages are checked once, by [`Network::new`]: widths chain, a GLU input is even, residual and
//! rate brackets match, nest and close (a residual connection cannot span a rate change). After
//! that a step cannot fail, allocate or panic (a corrupted fill count is clamped).

use core::marker::PhantomData;

use crate::error::{check_finite_weights, check_len, check_sizes, sum_of_products, Error, Result};
use crate::layer::{EventLayer, Layer};
use crate::linalg::{copy_prefix, gemv_t_acc};
use crate::norm::Norm;
use crate::{activation, fastmath, CoreLayer};

/// Deepest nesting of residual connections a network may have.
pub const MAX_RESIDUAL_DEPTH: usize = 8;

/// Deepest nesting of rate changes (downsamples inside downsamples) a network may have.
pub const MAX_RATE_DEPTH: usize = 8;

/// Largest rate-change factor: a downsample counts its steps in the `f32` state, exact up to
/// 2^24.
pub const MAX_FACTOR: usize = 1 << 24;

/// Most downsample stages a network may have (each keeps a precomputed skip, so that the
/// steps between frames jump straight to the matching upsample).
pub const MAX_DOWNSAMPLES: usize = 16;

/// Where the steps between frames of a downsample go: the matching upsample's index, input
/// width and state offset (`up == usize::MAX`: none, the output is held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Skip {
    down: usize,
    up: usize,
    up_width: usize,
    up_off: usize,
}

const NO_SKIP: Skip = Skip {
    down: usize::MAX,
    up: usize::MAX,
    up_width: 0,
    up_off: 0,
};

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
    /// Number of weights: `d_in·d_out` (+ `d_out` with a bias); `usize::MAX` where that
    /// overflows (refused by the constructors).
    pub const fn weights_len(&self) -> usize {
        sum_of_products(&[
            &[self.d_in, self.d_out],
            &[if self.bias { self.d_out } else { 0 }],
        ])
    }

    /// Positive widths whose weight count fits a `usize`.
    fn check(&self) -> Result<()> {
        if self.d_in == 0 || self.d_out == 0 {
            return Err(Error::InvalidConfig {
                what: "dense stage",
                reason: "d_in and d_out must be positive",
            });
        }
        check_sizes(self.weights_len(), 0)
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
        config.check()?;
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
        config.check()?;
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

/// How a [`Stage::Downsample`] makes one frame of `k` consecutive inputs `x_1 … x_k` (width `w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// `[x_1 | x_2 | … | x_k]` (width `k·w`).
    Concat,
    /// `(x_1 + … + x_k)/k` (width `w`), summed in order.
    Mean,
    /// `x_k` (width `w`): plain decimation.
    Last,
}

/// How a [`Stage::Upsample`] turns one frame into `k` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpooling {
    /// Frame `[f_0 | … | f_{k−1}]` (width `k·w`) → `f_j` at its `j`-th step (width `w`).
    Split,
    /// Frame `f` → `f` at each of the `k` steps (zero-order hold).
    Hold,
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
    /// A per-sample LayerNorm / RMSNorm over the features.
    Norm(Norm<W>),
    /// Opens a residual connection.
    ResidualBegin,
    /// Closes the innermost open residual connection.
    ResidualEnd,
    /// Closes the innermost open residual connection multiplicatively: `r ⊙ σ(x)`.
    GateEnd,
    /// Opens a low-rate part: one frame per `factor` steps (module doc, "Rates").
    Downsample {
        /// Steps per frame (≥ 1).
        factor: usize,
        /// How a frame is made.
        pooling: Pooling,
    },
    /// Closes the innermost low-rate part: `factor` steps per frame, delayed by `factor − 1`.
    Upsample {
        /// Steps per frame (≥ 1; equal to the matching downsample's).
        factor: usize,
        /// How a frame is spread over the steps.
        unpooling: Unpooling,
    },
}

/// The output width and state length of `stage` given its input width `width`, or why the
/// stage cannot take that width. Brackets are checked by [`Network::new`].
fn stage_io<W: AsRef<[f32]>>(
    stage: &Stage<W>,
    width: usize,
) -> core::result::Result<(usize, usize), &'static str> {
    const OVERFLOW: &str = "frame size overflows";
    Ok(match stage {
        Stage::Dense(d) => {
            if d.config.d_in != width {
                return Err("dense input width differs from the incoming width");
            }
            (d.config.d_out, 0)
        }
        Stage::Layer(l) => {
            let l = l.as_layer();
            if l.d_input() != width {
                return Err("layer input width differs from the incoming width");
            }
            (l.d_output(), l.state_len())
        }
        Stage::Activation(_) | Stage::ResidualEnd | Stage::GateEnd => (width, 0),
        Stage::Norm(n) => {
            if n.config().d != width {
                return Err("norm width differs from the incoming width");
            }
            (width, 0)
        }
        Stage::Glu => {
            if !width.is_multiple_of(2) {
                return Err("a GLU needs an even input width");
            }
            (width / 2, 0)
        }
        Stage::ResidualBegin => (width, width),
        Stage::Downsample { factor, pooling } => {
            if *factor == 0 {
                return Err("a downsample factor must be at least 1");
            }
            if *factor > MAX_FACTOR {
                return Err("a downsample factor may be at most MAX_FACTOR (2^24)");
            }
            match pooling {
                Pooling::Concat => {
                    let w = factor.checked_mul(width).ok_or(OVERFLOW)?;
                    (w, w.checked_add(2).ok_or(OVERFLOW)?)
                }
                Pooling::Mean => (width, width.checked_add(2).ok_or(OVERFLOW)?),
                Pooling::Last => (width, 2),
            }
        }
        Stage::Upsample { factor, unpooling } => {
            if *factor == 0 {
                return Err("an upsample factor must be at least 1");
            }
            if *factor > MAX_FACTOR {
                return Err("an upsample factor may be at most MAX_FACTOR (2^24)");
            }
            match unpooling {
                Unpooling::Split => {
                    if !width.is_multiple_of(*factor) {
                        return Err(
                            "a split upsample needs a width that is a multiple of its factor",
                        );
                    }
                    (width / factor, width)
                }
                Unpooling::Hold => (width, width),
            }
        }
    })
}

/// An open bracket while checking a network.
#[derive(Clone, Copy)]
enum Bracket {
    /// A residual connection of this width.
    Residual(usize),
    /// A rate change of this factor.
    Rate(usize),
}

/// A network of [`Stage`]s held in `S` (an array, a `Vec`, a slice) over weight buffers `W`.
#[derive(Debug, Clone)]
pub struct Network<W, S> {
    stages: S,
    d_in: usize,
    d_out: usize,
    max_width: usize,
    /// Total state of the stages (before the held output and the work vectors).
    stage_state_len: usize,
    /// Length of the held output: `d_out` for a low-rate network, else 0.
    held_len: usize,
    /// Steps per output frame (product of the unmatched downsample factors).
    output_factor: usize,
    /// Each downsample's skip, in stage order.
    skips: [Skip; MAX_DOWNSAMPLES],
    _weights: PhantomData<W>,
}

impl<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>> Network<W, S> {
    /// A network taking `d_in` inputs through `stages`; checks the widths, the GLU inputs and
    /// the residual and rate brackets ([`Error::NetworkStage`] names the stage).
    pub fn new(d_in: usize, stages: S) -> Result<Self> {
        let bad = |index, reason| Err(Error::NetworkStage { index, reason });
        if d_in == 0 {
            return Err(Error::InvalidConfig {
                what: "network",
                reason: "the input width must be positive",
            });
        }
        let (mut width, mut max_width) = (d_in, d_in);
        let mut stage_state_len = 0usize;
        let mut open = [Bracket::Rate(0); MAX_RESIDUAL_DEPTH + MAX_RATE_DEPTH];
        let (mut depth, mut residuals, mut rates) = (0usize, 0usize, 0usize);
        let mut downsamples = 0usize;
        for (i, stage) in stages.as_ref().iter().enumerate() {
            let (out, state) = match stage_io(stage, width) {
                Ok(io) => io,
                Err(reason) => return bad(i, reason),
            };
            match stage {
                Stage::ResidualBegin => {
                    if residuals == MAX_RESIDUAL_DEPTH {
                        return bad(i, "residual connections nested too deeply");
                    }
                    residuals += 1;
                    open[depth] = Bracket::Residual(width);
                    depth += 1;
                }
                Stage::ResidualEnd | Stage::GateEnd => {
                    match depth.checked_sub(1).map(|d| open[d]) {
                        None => return bad(i, "residual end without a residual begin"),
                        Some(Bracket::Rate(_)) => {
                            return bad(i, "a residual connection cannot span a rate change")
                        }
                        Some(Bracket::Residual(w)) if w != width => {
                            return bad(i, "residual end adds a vector of another width")
                        }
                        Some(Bracket::Residual(_)) => {}
                    }
                    depth -= 1;
                    residuals -= 1;
                }
                Stage::Downsample { factor, .. } => {
                    if rates == MAX_RATE_DEPTH {
                        return bad(i, "rate changes nested too deeply");
                    }
                    if downsamples == MAX_DOWNSAMPLES {
                        return bad(i, "too many downsample stages");
                    }
                    downsamples += 1;
                    rates += 1;
                    open[depth] = Bracket::Rate(*factor);
                    depth += 1;
                }
                Stage::Upsample { factor, .. } => {
                    match depth.checked_sub(1).map(|d| open[d]) {
                        None => return bad(i, "upsample without a downsample"),
                        Some(Bracket::Residual(_)) => {
                            return bad(i, "a residual connection cannot span a rate change")
                        }
                        Some(Bracket::Rate(k)) if k != *factor => {
                            return bad(i, "upsample factor differs from its downsample's")
                        }
                        Some(Bracket::Rate(_)) => {}
                    }
                    depth -= 1;
                    rates -= 1;
                }
                _ => {}
            }
            width = out;
            if width == 0 {
                return bad(i, "stage output width is 0");
            }
            max_width = max_width.max(width);
            stage_state_len = stage_state_len.saturating_add(state);
        }
        if residuals != 0 {
            return bad(
                stages.as_ref().len(),
                "residual begin without a residual end",
            );
        }
        // Only rate brackets are left open: the output is low-rate.
        let output_factor = open[..depth].iter().fold(1usize, |f, b| match b {
            Bracket::Rate(k) => f.saturating_mul(*k),
            Bracket::Residual(_) => f,
        });
        let mut net = Network {
            stages,
            d_in,
            d_out: width,
            max_width,
            stage_state_len,
            held_len: if depth > 0 { width } else { 0 },
            output_factor,
            skips: [NO_SKIP; MAX_DOWNSAMPLES],
            _weights: PhantomData,
        };
        net.skips = net.find_skips();
        crate::error::check_sizes(0, net.total_state_len())?;
        Ok(net)
    }

    /// The stages.
    pub fn stages(&self) -> &[Stage<W>] {
        self.stages.as_ref()
    }

    /// Steps per output frame: 1 for a network whose every downsample has a matching upsample;
    /// else the output is new at steps `t` with `(t + 1)` a multiple of this and held between.
    pub fn output_factor(&self) -> usize {
        self.output_factor
    }

    fn total_state_len(&self) -> usize {
        self.stage_state_len
            .saturating_add(self.held_len)
            .saturating_add(self.max_width.saturating_mul(2))
    }

    /// [`Layer::step`] that also calls `observe(i)` just before stage `i` runs and
    /// `observe(stages().len())` after the last one: a hook for measuring the cost of each
    /// stage (the firmware example reads a cycle counter in it). Stages skipped at this step
    /// (low-rate parts between frames) are not observed. Same checks and errors as
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

    /// Every downsample's skip (stages already checked): for the downsample at `from` (output
    /// width `width`, state ending at `off`), a walk over the low-rate stages to the matching
    /// upsample, which gives that upsample's index, input width and state offset.
    fn find_skips(&self) -> [Skip; MAX_DOWNSAMPLES] {
        let stages = self.stages.as_ref();
        let mut skips = [NO_SKIP; MAX_DOWNSAMPLES];
        let (mut n, mut width, mut off) = (0usize, self.d_in, 0usize);
        for (from, stage) in stages.iter().enumerate() {
            let Ok((out, len)) = stage_io(stage, width) else {
                break;
            };
            (width, off) = (out, off + len);
            if !matches!(stage, Stage::Downsample { .. }) || n == MAX_DOWNSAMPLES {
                continue;
            }
            let mut skip = Skip {
                down: from,
                ..NO_SKIP
            };
            let (mut w, mut o, mut depth) = (width, off, 0usize);
            for (i, s) in stages.iter().enumerate().skip(from + 1) {
                match s {
                    Stage::Downsample { .. } => depth += 1,
                    Stage::Upsample { .. } if depth == 0 => {
                        (skip.up, skip.up_width, skip.up_off) = (i, w, o);
                        break;
                    }
                    Stage::Upsample { .. } => depth -= 1,
                    _ => {}
                }
                let Ok((out, len)) = stage_io(s, w) else {
                    break;
                };
                (w, o) = (out, o + len);
            }
            skips[n] = skip;
            n += 1;
        }
        skips
    }

    /// One sample through every stage that runs at this step; `dt` goes to event layers when
    /// given; `observe(i)` before stage `i` and after the last.
    #[inline(always)]
    fn run(
        &self,
        state: &mut [f32],
        x: &[f32],
        mut dt: Option<f32>,
        y: &mut [f32],
        mut observe: impl FnMut(usize),
    ) {
        if state.len() != self.total_state_len() || x.len() != self.d_in || y.len() != self.d_out {
            return; // unreachable through `step`; never index out of range
        }
        let (per_stage, rest) = state.split_at_mut(self.stage_state_len);
        let (held, work) = rest.split_at_mut(self.held_len);
        let (a, b) = work.split_at_mut(self.max_width);
        let (mut cur, mut nxt) = (a, b);
        cur[..self.d_in].copy_from_slice(x);
        let mut width = self.d_in;
        let mut off = 0usize;
        let mut open = [(0usize, 0usize); MAX_RESIDUAL_DEPTH];
        let mut depth = 0usize;
        let mut outer_dt = [None; MAX_RATE_DEPTH];
        let mut rate_depth = 0usize;
        let stages = self.stages.as_ref();
        let mut index = 0usize;
        while let Some(stage) = stages.get(index) {
            observe(index);
            let Ok((out, len)) = stage_io(stage, width) else {
                return; // checked by `new`
            };
            let st = &mut per_stage[off..off + len];
            off += len;
            index += 1;
            match stage {
                Stage::Dense(d) => {
                    d.apply(&cur[..width], &mut nxt[..out]);
                    core::mem::swap(&mut cur, &mut nxt);
                }
                Stage::Layer(l) => {
                    match (dt, l.as_event_layer()) {
                        (Some(dt), Some(e)) => {
                            e.step_event_prechecked(st, &cur[..width], dt, &mut nxt[..out])
                        }
                        _ => l
                            .as_layer()
                            .step_prechecked(st, &cur[..width], &mut nxt[..out]),
                    }
                    core::mem::swap(&mut cur, &mut nxt);
                }
                Stage::Activation(f) => {
                    let f = *f;
                    cur[..width].iter_mut().for_each(|v| *v = f.apply(*v));
                }
                Stage::Norm(n) => {
                    n.apply(&cur[..width], &mut nxt[..out]);
                    core::mem::swap(&mut cur, &mut nxt);
                }
                Stage::Glu => {
                    let (lin, gate) = cur[..width].split_at(out);
                    for ((o, a), g) in nxt[..out].iter_mut().zip(lin).zip(gate) {
                        *o = a * fastmath::sigmoid(*g);
                    }
                    core::mem::swap(&mut cur, &mut nxt);
                }
                Stage::ResidualBegin => {
                    st.copy_from_slice(&cur[..width]);
                    open[depth] = (off - len, width);
                    depth += 1;
                }
                Stage::ResidualEnd | Stage::GateEnd => {
                    depth -= 1;
                    let (at, w) = open[depth];
                    let saved = &per_stage[at..at + w];
                    if matches!(stage, Stage::ResidualEnd) {
                        for (c, s) in cur[..w].iter_mut().zip(saved) {
                            *c += s;
                        }
                    } else {
                        for (c, s) in cur[..w].iter_mut().zip(saved) {
                            *c = s * fastmath::sigmoid(*c);
                        }
                    }
                }
                Stage::Downsample { factor, pooling } => {
                    let k = *factor;
                    let (buf, meta) = st.split_at_mut(len - 2);
                    // The fill count is an integer below k stored as f32 (clamped if corrupted).
                    let fill = (meta[0] as usize).min(k - 1);
                    match pooling {
                        Pooling::Concat => {
                            buf[fill * width..(fill + 1) * width].copy_from_slice(&cur[..width])
                        }
                        Pooling::Mean => {
                            for (s, v) in buf.iter_mut().zip(&cur[..width]) {
                                *s += v;
                            }
                        }
                        Pooling::Last => {}
                    }
                    // a sum of finite steps may overflow: the largest finite step instead (as
                    // for the fill count, a corrupt state's NaN is clamped too)
                    let dt_sum = (meta[1] + dt.unwrap_or(0.0)).min(f32::MAX);
                    if fill + 1 == k {
                        match pooling {
                            Pooling::Concat => nxt[..out].copy_from_slice(buf),
                            Pooling::Mean => {
                                let inv = 1.0 / k as f32;
                                for (o, s) in nxt[..out].iter_mut().zip(buf.iter_mut()) {
                                    *o = *s * inv;
                                    *s = 0.0;
                                }
                            }
                            Pooling::Last => nxt[..out].copy_from_slice(&cur[..width]),
                        }
                        if matches!(pooling, Pooling::Concat) {
                            buf.iter_mut().for_each(|s| *s = 0.0);
                        }
                        meta[0] = 0.0;
                        meta[1] = 0.0;
                        core::mem::swap(&mut cur, &mut nxt);
                        outer_dt[rate_depth] = dt;
                        rate_depth += 1;
                        dt = dt.map(|_| dt_sum);
                    } else {
                        meta[0] = (fill + 1) as f32;
                        meta[1] = dt_sum;
                        // Skip the low-rate part: the matching upsample emits from its frame.
                        let skip = self
                            .skips
                            .iter()
                            .find(|s| s.down == index - 1)
                            .copied()
                            .unwrap_or(NO_SKIP);
                        match stages.get(skip.up) {
                            Some(Stage::Upsample { unpooling, .. }) => {
                                let (up, up_width, up_off) = (skip.up, skip.up_width, skip.up_off);
                                let Some(frame) = per_stage.get(up_off..up_off + up_width) else {
                                    return;
                                };
                                let part = emit_part(*unpooling, k, fill + 1, frame);
                                let w = part.len();
                                nxt[..w].copy_from_slice(part);
                                core::mem::swap(&mut cur, &mut nxt);
                                width = w;
                                off = up_off + up_width;
                                index = up + 1;
                                continue;
                            }
                            _ => {
                                y.copy_from_slice(held);
                                return;
                            }
                        }
                    }
                }
                Stage::Upsample { factor, unpooling } => {
                    // Reached in order: a new frame from the low-rate part.
                    st.copy_from_slice(&cur[..width]);
                    let part = emit_part(*unpooling, *factor, 0, st);
                    nxt[..out].copy_from_slice(part);
                    core::mem::swap(&mut cur, &mut nxt);
                    rate_depth -= 1;
                    dt = outer_dt[rate_depth];
                }
            }
            width = out;
        }
        observe(stages.len());
        y.copy_from_slice(&cur[..self.d_out]);
        if self.held_len == self.d_out {
            held.copy_from_slice(&cur[..self.d_out]);
        }
    }
}

/// The part of `frame` an upsample emits at phase `j` (`0 ≤ j < k`; `j = k` counts as 0):
/// `Split` → the `j`-th of `k` equal parts, `Hold` → the whole frame.
#[inline(always)]
fn emit_part(unpooling: Unpooling, k: usize, j: usize, frame: &[f32]) -> &[f32] {
    match unpooling {
        Unpooling::Split => {
            let w = frame.len() / k;
            let j = j % k;
            &frame[j * w..(j + 1) * w]
        }
        Unpooling::Hold => frame,
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

    /// Widths whose weight count overflows are refused by both constructors (no overflow
    /// panic, no index past an empty buffer).
    #[test]
    fn oversized_dense_configs_are_refused() {
        let big = DenseConfig {
            d_in: 1 << 63,
            d_out: 2,
            bias: false,
        };
        assert_eq!(big.weights_len(), usize::MAX);
        assert!(Dense::from_torch(big, &[], None, Vec::<f32>::new()).is_err());
        assert!(Dense::from_weights(big, Vec::<f32>::new()).is_err());
        let zero = DenseConfig { d_in: 0, ..big };
        assert!(Dense::from_torch(zero, &[], None, Vec::<f32>::new()).is_err());
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

    /// The network evaluated sequence-wise ("parallel form") in f64: every stage maps a whole
    /// sequence; a downsample keeps the complete blocks' frames, an upsample flattens the parts,
    /// prepends `k − 1` zero steps and cuts to the outer length; layers step their own state.
    fn sequence_reference(
        stages: &[Stage<Vec<f32>>],
        xs: &[Vec<f64>],
        dts: Option<&[f64]>,
    ) -> Vec<Vec<f64>> {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut seq: Vec<Vec<f64>> = xs.to_vec();
        let mut dt: Option<Vec<f64>> = dts.map(|d| d.to_vec());
        let mut saved: Vec<Vec<Vec<f64>>> = Vec::new();
        let mut outer: Vec<(usize, Option<Vec<f64>>)> = Vec::new();
        let mut width = xs[0].len();
        for stage in stages {
            let out_width = stage_io(stage, width).unwrap().0;
            width = out_width;
            seq = match stage {
                Stage::Dense(d) => seq.iter().map(|x| dense_ref(d, x)).collect(),
                Stage::Layer(l) => {
                    let mut st = vec![0.0f32; l.as_layer().state_len()];
                    let mut out = Vec::new();
                    for (t, x) in seq.iter().enumerate() {
                        let xf: Vec<f32> = x.iter().map(|v| *v as f32).collect();
                        let mut y = vec![0.0f32; l.as_layer().d_output()];
                        match (&dt, l.as_event_layer()) {
                            (Some(d), Some(e)) => {
                                e.step_event(&mut st, &xf, d[t] as f32, &mut y).unwrap()
                            }
                            _ => l.as_layer().step(&mut st, &xf, &mut y).unwrap(),
                        }
                        out.push(y.iter().map(|v| *v as f64).collect());
                    }
                    out
                }
                Stage::Activation(f) => seq
                    .iter()
                    .map(|x| x.iter().map(|v| f.apply(*v as f32) as f64).collect())
                    .collect(),
                Stage::Norm(n) => {
                    // f64, by the definitions (E[x²] − μ² is exact enough in f64 here).
                    let c = n.config();
                    let w = n.weights();
                    seq.iter()
                        .map(|x| {
                            let d = x.len() as f64;
                            let mean = x.iter().sum::<f64>() / d;
                            let ms = x.iter().map(|v| v * v).sum::<f64>() / d;
                            (0..x.len())
                                .map(|k| match c.kind {
                                    crate::NormKind::LayerNorm => {
                                        (x[k] - mean) / (ms - mean * mean + c.eps as f64).sqrt()
                                            * w[k] as f64
                                            + w[x.len() + k] as f64
                                    }
                                    crate::NormKind::RmsNorm => {
                                        x[k] / (ms + c.eps as f64).sqrt() * w[k] as f64
                                    }
                                })
                                .collect()
                        })
                        .collect()
                }
                Stage::Glu => seq
                    .iter()
                    .map(|x| {
                        let n = x.len() / 2;
                        (0..n).map(|k| x[k] * sig(x[n + k])).collect()
                    })
                    .collect(),
                Stage::ResidualBegin => {
                    saved.push(seq.clone());
                    seq
                }
                Stage::ResidualEnd => {
                    let r = saved.pop().unwrap();
                    seq.iter()
                        .zip(&r)
                        .map(|(a, b)| a.iter().zip(b).map(|(a, b)| a + b).collect())
                        .collect()
                }
                Stage::GateEnd => {
                    let r = saved.pop().unwrap();
                    seq.iter()
                        .zip(&r)
                        .map(|(a, b)| a.iter().zip(b).map(|(a, b)| b * sig(*a)).collect())
                        .collect()
                }
                Stage::Downsample { factor: k, pooling } => {
                    let blocks: Vec<&[Vec<f64>]> = seq.chunks_exact(*k).collect();
                    outer.push((seq.len(), dt.clone()));
                    dt = dt.map(|d| d.chunks_exact(*k).map(|c| c.iter().sum()).collect());
                    blocks
                        .iter()
                        .map(|b| match pooling {
                            Pooling::Concat => b.concat(),
                            Pooling::Mean => (0..b[0].len())
                                .map(|c| b.iter().map(|x| x[c]).sum::<f64>() / *k as f64)
                                .collect(),
                            Pooling::Last => b[*k - 1].clone(),
                        })
                        .collect()
                }
                Stage::Upsample {
                    factor: k,
                    unpooling,
                } => {
                    let (n, d) = outer.pop().unwrap();
                    dt = d;
                    let width = out_width;
                    let mut flat = vec![vec![0.0; width]; k - 1];
                    for f in &seq {
                        for j in 0..*k {
                            flat.push(match unpooling {
                                Unpooling::Split => f[j * width..(j + 1) * width].to_vec(),
                                Unpooling::Hold => f.clone(),
                            });
                        }
                    }
                    flat.resize(n, vec![0.0; width]);
                    flat.truncate(n);
                    flat
                }
            };
        }
        seq
    }

    fn lru(d: usize, n: usize, seed: usize) -> Lru<Vec<f32>> {
        let cfg = LruConfig {
            d_model: d,
            d_state: n,
        };
        let mut w = vec![0.0f32; cfg.weights_len()];
        for (k, v) in w.iter_mut().enumerate() {
            *v = (((k + seed) * 37 % 17) as f32 - 8.0) / 20.0;
        }
        for v in w.iter_mut().take(2 * n) {
            *v *= 0.9;
        }
        Lru::from_weights(cfg, w).unwrap()
    }

    fn norm(kind: crate::NormKind, d: usize, seed: u32) -> crate::Norm<Vec<f32>> {
        let c = crate::NormConfig { kind, d, eps: 1e-5 };
        let w: Vec<f32> = (0..c.weights_len())
            .map(|k| 0.5 + (((k as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0)
            .collect();
        crate::Norm::from_weights(c, w).unwrap()
    }

    fn run_steps(net: &Network<Vec<f32>, Vec<Stage<Vec<f32>>>>, xs: &[Vec<f64>]) -> Vec<Vec<f32>> {
        let mut state = vec![0.0f32; net.state_len()];
        xs.iter()
            .map(|x| {
                let xf: Vec<f32> = x.iter().map(|v| *v as f32).collect();
                let mut y = vec![0.0f32; net.d_output()];
                net.step(&mut state, &xf, &mut y).unwrap();
                y
            })
            .collect()
    }

    /// A U-Net-like network with nested rate changes (concat/split outside, mean/hold inside),
    /// a strided-convolution encoder and a residual skip across the low-rate part, stepped
    /// sample by sample, equals its sequence-wise parallel form, for lengths that are and are
    /// not multiples of the frame sizes.
    #[test]
    fn multirate_step_equals_sequence_form() {
        let stages = vec![
            Stage::Dense(dense(1, 2, 1)),
            Stage::ResidualBegin,
            Stage::Downsample {
                factor: 3,
                pooling: Pooling::Concat,
            },
            Stage::Dense(dense(6, 4, 2)),
            Stage::Layer(CoreLayer::Lru(lru(4, 3, 1))),
            Stage::ResidualBegin,
            Stage::Downsample {
                factor: 2,
                pooling: Pooling::Mean,
            },
            Stage::Layer(CoreLayer::Lru(lru(4, 2, 5))),
            Stage::Norm(norm(crate::NormKind::LayerNorm, 4, 6)),
            Stage::Activation(Activation::Silu),
            Stage::Upsample {
                factor: 2,
                unpooling: Unpooling::Hold,
            },
            Stage::GateEnd,
            Stage::Dense(dense(4, 6, 3)),
            Stage::Norm(norm(crate::NormKind::RmsNorm, 6, 7)),
            Stage::Upsample {
                factor: 3,
                unpooling: Unpooling::Split,
            },
            Stage::ResidualEnd,
            Stage::Dense(dense(2, 1, 4)),
        ];
        let net = Network::new(1, stages.clone()).unwrap();
        assert_eq!(net.output_factor(), 1);
        for n in [1usize, 5, 6, 23, 60] {
            let xs: Vec<Vec<f64>> = (0..n)
                .map(|t| vec![((t as f64) * 0.7).sin() + 0.3 * ((t * t) as f64 * 0.01).cos()])
                .collect();
            let got = run_steps(&net, &xs);
            let want = sequence_reference(&stages, &xs, None);
            assert_eq!(want.len(), n);
            for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = (g[0] as f64 - w[0]).abs();
                assert!(
                    err < 2e-5 * (1.0 + w[0].abs()),
                    "n={n} t={t}: {} vs {}",
                    g[0],
                    w[0]
                );
            }
        }
    }

    /// A low-rate output (a downsample never closed) holds each frame's value until the next;
    /// `Last` pooling decimates; zeros before the first frame.
    #[test]
    fn open_downsample_holds_frames() {
        let stages = vec![
            Stage::Dense(dense(2, 3, 7)),
            Stage::Downsample {
                factor: 4,
                pooling: Pooling::Last,
            },
            Stage::Layer(CoreLayer::Lru(lru(3, 2, 3))),
            Stage::Downsample {
                factor: 2,
                pooling: Pooling::Mean,
            },
            Stage::Dense(dense(3, 2, 8)),
        ];
        let net = Network::new(2, stages.clone()).unwrap();
        assert_eq!(net.output_factor(), 8);
        let n = 37;
        let xs: Vec<Vec<f64>> = (0..n)
            .map(|t| vec![(t as f64 * 0.3).sin(), (t as f64 * 0.17).cos()])
            .collect();
        let got = run_steps(&net, &xs);
        let frames = sequence_reference(&stages, &xs, None);
        assert_eq!(frames.len(), n / 8);
        for (t, g) in got.iter().enumerate() {
            let want = match (t + 1) / 8 {
                0 => vec![0.0; 2],
                m => frames[m - 1].clone(),
            };
            for (a, b) in g.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 2e-5 * (1.0 + b.abs()), "t={t}");
            }
        }
    }

    /// Bracket errors name the stage; a corrupted fill count neither panics nor leaves the range.
    #[test]
    fn rate_brackets_are_checked() {
        let down = |factor| Stage::<Vec<f32>>::Downsample {
            factor,
            pooling: Pooling::Concat,
        };
        let up = |factor| Stage::<Vec<f32>>::Upsample {
            factor,
            unpooling: Unpooling::Split,
        };
        let e = Network::new(2, vec![up(2)]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 0, .. }), "{e:?}");
        let e = Network::new(2, vec![down(2), up(3)]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 1, .. }), "{e:?}");
        let e = Network::new(2, vec![down(0)]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 0, .. }), "{e:?}");
        let e =
            Network::new(2, vec![Stage::ResidualBegin, down(2), Stage::ResidualEnd]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 2, .. }), "{e:?}");
        let e = Network::new(2, vec![down(2), Stage::ResidualBegin, up(2)]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 2, .. }), "{e:?}");
        // Split needs a width that the factor divides: 3 = 1·3 split by 2.
        let e = Network::new(
            1,
            vec![
                Stage::Downsample {
                    factor: 2,
                    pooling: Pooling::Mean,
                },
                Stage::Dense(dense(1, 3, 1)),
                up(2),
            ],
        )
        .unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 2, .. }), "{e:?}");
        // Factors past MAX_FACTOR (the fill count is an f32 in the state) are refused.
        let last = |factor| Stage::<Vec<f32>>::Downsample {
            factor,
            pooling: Pooling::Last,
        };
        let hold = |factor| Stage::<Vec<f32>>::Upsample {
            factor,
            unpooling: Unpooling::Hold,
        };
        Network::new(1, vec![last(MAX_FACTOR), hold(MAX_FACTOR)]).unwrap();
        let e = Network::new(1, vec![last(MAX_FACTOR + 1)]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 0, .. }), "{e:?}");
        let e = Network::new(1, vec![last(2), hold(MAX_FACTOR + 1)]).unwrap_err();
        assert!(matches!(e, Error::NetworkStage { index: 1, .. }), "{e:?}");
        let deep: Vec<Stage<Vec<f32>>> = (0..MAX_RATE_DEPTH + 1).map(|_| down(1)).collect();
        assert!(Network::new(1, deep).is_err());
        // A garbage state (fill count NaN / huge) is clamped, never out of range.
        let net = Network::new(1, vec![Stage::Dense(dense(1, 2, 1)), down(3), up(3)]).unwrap();
        for garbage in [f32::NAN, 1e30, -5.0, 2.5] {
            let mut st = vec![garbage; net.state_len()];
            let mut y = [0.0f32; 2];
            net.step(&mut st, &[1.0], &mut y).unwrap();
        }
    }
}
