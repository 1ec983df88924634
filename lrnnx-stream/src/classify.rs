//! Streaming sequence classification: events go one at a time through an event-driven model
//! whose output is low-rate (a core [`Network`] with a `Downsample` left open, such as the
//! Event-SSM-style classifier of `lrnnx_train::classifier`), and a running pool of its output
//! frames gives the class logits at any moment.
//!
//! ```text
//! event i (x_i, τ_i):  y_i = model.step_event(state, x_i, τ_i)          (Processor::process_event)
//! every F-th event (i + 1 = F·m):  frame m = y_i                        (F: the model's frames)
//! logits = (1/M) Σ_{m<M} frame m   (Mean)   or   frame M − 1   (Last),  M frames so far
//! ```
//!
//! This is the training classifier's head (`⌊len/F⌋` complete frames, masked mean or last),
//! computed incrementally: after the last event of a sequence the logits equal the parallel
//! forward's. The mean is accumulated in `f64`. [`StreamClassifier::push_event`] allocates
//! nothing (every buffer is made in
//! [`StreamClassifier::with_factor`]) and, like the processor, checks
//! the event before touching the state.

use lrnnx_core::{EventLayer, Network, Stage};

use crate::processor::{Processor, StreamError};

/// How the frames are pooled into logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePooling {
    /// The mean of every frame so far.
    Mean,
    /// The latest frame.
    Last,
}

/// An event model, its state and the running pool of its output frames (module doc).
#[derive(Debug, Clone)]
pub struct StreamClassifier<M> {
    processor: Processor<M>,
    factor: usize,
    pooling: FramePooling,
    events: usize,
    frames: usize,
    sum: Vec<f64>,
    last: Vec<f32>,
    out: Vec<f32>,
}

impl<W: AsRef<[f32]>, S: AsRef<[Stage<W>]>> StreamClassifier<Network<W, S>> {
    /// Over a core network; its [`Network::output_factor`] is the number of events per frame.
    pub fn from_network(net: Network<W, S>, pooling: FramePooling) -> Self {
        let factor = net.output_factor();
        StreamClassifier::with_factor(net, factor, pooling)
    }
}

impl<M: EventLayer> StreamClassifier<M> {
    /// Over any event model whose output is a new frame every `factor` events (a `factor` of 0
    /// counts as 1). Allocates the state and buffers here, once.
    pub fn with_factor(model: M, factor: usize, pooling: FramePooling) -> Self {
        let d = model.d_output();
        StreamClassifier {
            processor: Processor::new(model),
            factor: factor.max(1),
            pooling,
            events: 0,
            frames: 0,
            sum: vec![0.0; d],
            last: vec![0.0; d],
            out: vec![0.0; d],
        }
    }

    /// Events per frame.
    pub fn frame_factor(&self) -> usize {
        self.factor
    }

    /// Number of classes (the model's output width).
    pub fn n_classes(&self) -> usize {
        self.out.len()
    }

    /// Complete frames since the start (or the last [`StreamClassifier::reset`]).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Events since the start.
    pub fn events(&self) -> usize {
        self.events
    }

    /// One event: features `x` and time step `dt` since the previous event (positive,
    /// finite). Returns whether it completed a frame. A bad event is an error that changes
    /// nothing.
    pub fn push_event(&mut self, x: &[f32], dt: f32) -> Result<bool, StreamError> {
        self.processor.process_event(x, dt, &mut self.out)?;
        self.events += 1;
        if !self.events.is_multiple_of(self.factor) {
            return Ok(false);
        }
        self.frames += 1;
        for (s, v) in self.sum.iter_mut().zip(&self.out) {
            *s += *v as f64;
        }
        self.last.copy_from_slice(&self.out);
        Ok(true)
    }

    /// Writes the current logits into `logits` (`n_classes` values) and returns the number of
    /// frames they pool; with no complete frame yet they are zeros (and 0 is returned).
    pub fn logits(&self, logits: &mut [f32]) -> Result<usize, StreamError> {
        if logits.len() != self.out.len() {
            return Err(StreamError::Length {
                what: "logits",
                expected: self.out.len(),
                got: logits.len(),
            });
        }
        if self.frames == 0 {
            logits.iter_mut().for_each(|v| *v = 0.0);
            return Ok(0);
        }
        match self.pooling {
            FramePooling::Mean => {
                let inv = 1.0 / self.frames as f64;
                for (o, s) in logits.iter_mut().zip(&self.sum) {
                    *o = (s * inv) as f32;
                }
            }
            FramePooling::Last => logits.copy_from_slice(&self.last),
        }
        Ok(self.frames)
    }

    /// The class with the largest logit (the first on ties), `None` before the first frame.
    pub fn predict(&self) -> Option<usize> {
        if self.frames == 0 {
            return None;
        }
        let score = |c: usize| match self.pooling {
            FramePooling::Mean => self.sum[c],
            FramePooling::Last => self.last[c] as f64,
        };
        (0..self.out.len()).fold(None, |best: Option<usize>, c| match best {
            Some(b) if score(b) >= score(c) => Some(b),
            _ => Some(c),
        })
    }

    /// Back to the start of a sequence: model state, frames and pool zeroed.
    pub fn reset(&mut self) {
        self.processor.reset();
        self.events = 0;
        self.frames = 0;
        self.sum.iter_mut().for_each(|v| *v = 0.0);
        self.last.iter_mut().for_each(|v| *v = 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrnnx_core::{Dense, DenseConfig, Layer, Pooling};

    /// A model whose output is its input's running sum (a known closed form).
    struct Summer;

    impl Layer for Summer {
        fn d_input(&self) -> usize {
            2
        }
        fn d_output(&self) -> usize {
            2
        }
        fn state_len(&self) -> usize {
            2
        }
        fn step_prechecked(&self, state: &mut [f32], x: &[f32], y: &mut [f32]) {
            for ((s, x), y) in state.iter_mut().zip(x).zip(y.iter_mut()) {
                *s += x;
                *y = *s;
            }
        }
    }

    impl EventLayer for Summer {
        fn step_event_prechecked(&self, state: &mut [f32], x: &[f32], dt: f32, y: &mut [f32]) {
            let scaled = [x[0] * dt, x[1] * dt];
            self.step_prechecked(state, &scaled, y);
        }
    }

    #[test]
    fn pools_every_factor_th_output() {
        let mut c = StreamClassifier::with_factor(Summer, 3, FramePooling::Mean);
        let mut z = [9.0f32; 2];
        assert_eq!(c.logits(&mut z).unwrap(), 0);
        assert_eq!(z, [0.0, 0.0]);
        assert_eq!(c.predict(), None);
        let mut frames = Vec::new();
        let mut sum = [0.0f32; 2];
        for i in 0..10 {
            let x = [i as f32, 1.0 - i as f32];
            let done = c.push_event(&x, 0.5).unwrap();
            sum[0] += 0.5 * x[0];
            sum[1] += 0.5 * x[1];
            assert_eq!(done, (i + 1) % 3 == 0);
            if done {
                frames.push(sum);
            }
        }
        assert_eq!((c.events(), c.frames()), (10, 3));
        assert_eq!(c.logits(&mut z).unwrap(), 3);
        for k in 0..2 {
            let m = frames.iter().map(|f| f[k]).sum::<f32>() / 3.0;
            assert!((z[k] - m).abs() < 1e-6);
        }
        assert_eq!(c.predict(), Some(0));
        // Bad events change nothing.
        assert!(c.push_event(&[1.0], 1.0).is_err());
        assert!(c.push_event(&[1.0, f32::NAN], 1.0).is_err());
        assert!(c.push_event(&[1.0, 1.0], 0.0).is_err());
        assert!(c.logits(&mut [0.0; 3]).is_err());
        assert_eq!(c.events(), 10);
        c.reset();
        assert_eq!((c.events(), c.frames()), (0, 0));
        let mut last = StreamClassifier::with_factor(Summer, 2, FramePooling::Last);
        for x in [[1.0, 0.0], [0.0, 3.0], [1.0, 0.0]] {
            last.push_event(&x, 1.0).unwrap();
        }
        assert_eq!(last.logits(&mut z).unwrap(), 1);
        assert_eq!(z, [1.0, 3.0]);
        assert_eq!(last.predict(), Some(1));
    }

    #[test]
    fn takes_the_frame_factor_from_a_network() {
        let dense = Dense::from_weights(
            DenseConfig {
                d_in: 1,
                d_out: 1,
                bias: false,
            },
            vec![1.0f32],
        )
        .unwrap();
        let net = Network::new(
            1,
            vec![
                Stage::Downsample {
                    factor: 2,
                    pooling: Pooling::Mean,
                },
                Stage::Downsample {
                    factor: 2,
                    pooling: Pooling::Mean,
                },
                Stage::Dense(dense),
            ],
        )
        .unwrap();
        let mut c = StreamClassifier::from_network(net, FramePooling::Mean);
        assert_eq!(c.frame_factor(), 4);
        for i in 0..8 {
            c.push_event(&[i as f32], 1.0).unwrap();
        }
        let mut z = [0.0f32];
        assert_eq!(c.logits(&mut z).unwrap(), 2);
        // Frames: mean(0..4) = 1.5, mean(4..8) = 5.5.
        assert!((z[0] - 3.5).abs() < 1e-6, "{}", z[0]);
    }
}
