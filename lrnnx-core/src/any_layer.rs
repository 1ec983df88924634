//! Any core layer behind one type: [`CoreConfig`] (the configuration of whichever layer) and
//! [`CoreLayer`] (that layer over a weight buffer), so that heterogeneous stacks
//! ([`crate::network`]), exports and importers can hold "a layer" without generics per kind.

use crate::{
    Centaurus, CentaurusConfig, EventLayer, Layer, Lru, LruConfig, Mamba, MambaConfig, RgLru,
    RgLruConfig, S4Config, S4d, S4dConfig, S5Lti, S5LtiConfig, S5Ltv, S5LtvConfig, S7Config, S4,
    S7,
};

/// The configuration of any core layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CoreConfig {
    /// [`S5Lti`].
    S5Lti(S5LtiConfig),
    /// [`S5Ltv`].
    S5Ltv(S5LtvConfig),
    /// [`Lru`].
    Lru(LruConfig),
    /// [`Mamba`].
    Mamba(MambaConfig),
    /// [`RgLru`].
    RgLru(RgLruConfig),
    /// [`S7`].
    S7(S7Config),
    /// [`Centaurus`].
    Centaurus(CentaurusConfig),
    /// [`S4d`].
    S4d(S4dConfig),
    /// [`S4`].
    S4(S4Config),
}

/// A core layer of any kind over a weight buffer `W` (owned `Vec<f32>`, borrowed `&[f32]`).
#[derive(Debug, Clone)]
pub enum CoreLayer<W> {
    /// [`S5Lti`].
    S5Lti(S5Lti<W>),
    /// [`S5Ltv`].
    S5Ltv(S5Ltv<W>),
    /// [`Lru`].
    Lru(Lru<W>),
    /// [`Mamba`].
    Mamba(Mamba<W>),
    /// [`RgLru`].
    RgLru(RgLru<W>),
    /// [`S7`].
    S7(S7<W>),
    /// [`Centaurus`].
    Centaurus(Centaurus<W>),
    /// [`S4d`].
    S4d(S4d<W>),
    /// [`S4`].
    S4(S4<W>),
}

/// `$body` with `$l` bound to the layer of whichever variant `$layer` is.
macro_rules! each_layer {
    ($layer:expr, $l:ident => $body:expr) => {
        match $layer {
            CoreLayer::S5Lti($l) => $body,
            CoreLayer::S5Ltv($l) => $body,
            CoreLayer::Lru($l) => $body,
            CoreLayer::Mamba($l) => $body,
            CoreLayer::RgLru($l) => $body,
            CoreLayer::S7($l) => $body,
            CoreLayer::Centaurus($l) => $body,
            CoreLayer::S4d($l) => $body,
            CoreLayer::S4($l) => $body,
        }
    };
}

impl<W: AsRef<[f32]>> CoreLayer<W> {
    /// Views an exported weight buffer as the layer `config` describes (zero-copy for a
    /// borrowed `W`); the core checks the length and that every weight is finite.
    pub fn from_weights(config: CoreConfig, weights: W) -> crate::Result<Self> {
        Ok(match config {
            CoreConfig::S5Lti(c) => CoreLayer::S5Lti(S5Lti::from_weights(c, weights)?),
            CoreConfig::S5Ltv(c) => CoreLayer::S5Ltv(S5Ltv::from_weights(c, weights)?),
            CoreConfig::Lru(c) => CoreLayer::Lru(Lru::from_weights(c, weights)?),
            CoreConfig::Mamba(c) => CoreLayer::Mamba(Mamba::from_weights(c, weights)?),
            CoreConfig::RgLru(c) => CoreLayer::RgLru(RgLru::from_weights(c, weights)?),
            CoreConfig::S7(c) => CoreLayer::S7(S7::from_weights(c, weights)?),
            CoreConfig::Centaurus(c) => CoreLayer::Centaurus(Centaurus::from_weights(c, weights)?),
            CoreConfig::S4d(c) => CoreLayer::S4d(S4d::from_weights(c, weights)?),
            CoreConfig::S4(c) => CoreLayer::S4(S4::from_weights(c, weights)?),
        })
    }

    /// The configuration.
    pub fn config(&self) -> CoreConfig {
        match self {
            CoreLayer::S5Lti(l) => CoreConfig::S5Lti(*l.config()),
            CoreLayer::S5Ltv(l) => CoreConfig::S5Ltv(*l.config()),
            CoreLayer::Lru(l) => CoreConfig::Lru(*l.config()),
            CoreLayer::Mamba(l) => CoreConfig::Mamba(*l.config()),
            CoreLayer::RgLru(l) => CoreConfig::RgLru(*l.config()),
            CoreLayer::S7(l) => CoreConfig::S7(*l.config()),
            CoreLayer::Centaurus(l) => CoreConfig::Centaurus(*l.config()),
            CoreLayer::S4d(l) => CoreConfig::S4d(*l.config()),
            CoreLayer::S4(l) => CoreConfig::S4(*l.config()),
        }
    }

    /// The weights in the stepping layout.
    pub fn weights(&self) -> &[f32] {
        each_layer!(self, l => l.weights())
    }

    /// Number of `f32` elements of the layer's state.
    pub fn state_len(&self) -> usize {
        each_layer!(self, l => l.state_len())
    }

    /// The sample-step interface.
    pub fn as_layer(&self) -> &dyn Layer {
        each_layer!(self, l => l as &dyn Layer)
    }

    /// The event-step interface (S5 time-varying, Mamba), `None` for other layers.
    pub fn as_event_layer(&self) -> Option<&dyn EventLayer> {
        match self {
            CoreLayer::S5Ltv(l) => Some(l),
            CoreLayer::Mamba(l) => Some(l),
            _ => None,
        }
    }
}

impl CoreConfig {
    /// The blob's layer-kind code.
    pub fn kind(&self) -> u32 {
        match self {
            CoreConfig::S5Lti(_) => 1,
            CoreConfig::S5Ltv(_) => 2,
            CoreConfig::Lru(_) => 3,
            CoreConfig::Mamba(_) => 4,
            CoreConfig::RgLru(_) => 5,
            CoreConfig::S7(_) => 6,
            CoreConfig::Centaurus(_) => 7,
            CoreConfig::S4d(_) => 8,
            CoreConfig::S4(_) => 9,
        }
    }

    /// The core layer type's name (`S5Lti`, ...); its config type is this plus `Config`.
    pub fn layer_name(&self) -> &'static str {
        match self {
            CoreConfig::S5Lti(_) => "S5Lti",
            CoreConfig::S5Ltv(_) => "S5Ltv",
            CoreConfig::Lru(_) => "Lru",
            CoreConfig::Mamba(_) => "Mamba",
            CoreConfig::RgLru(_) => "RgLru",
            CoreConfig::S7(_) => "S7",
            CoreConfig::Centaurus(_) => "Centaurus",
            CoreConfig::S4d(_) => "S4d",
            CoreConfig::S4(_) => "S4",
        }
    }

    /// Number of weights of the layer.
    pub fn weights_len(&self) -> usize {
        match self {
            CoreConfig::S5Lti(c) => c.weights_len(),
            CoreConfig::S5Ltv(c) => c.weights_len(),
            CoreConfig::Lru(c) => c.weights_len(),
            CoreConfig::Mamba(c) => c.weights_len(),
            CoreConfig::RgLru(c) => c.weights_len(),
            CoreConfig::S7(c) => c.weights_len(),
            CoreConfig::Centaurus(c) => c.weights_len(),
            CoreConfig::S4d(c) => c.weights_len(),
            CoreConfig::S4(c) => c.weights_len(),
        }
    }
}
