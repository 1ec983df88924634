//! Test helpers: a deterministic PRNG and an owned parameter list (tests only; uses no heap,
//! tensors are fixed-capacity arrays).

use crate::params::{ParamSource, TensorView};

/// xorshift64* generator: deterministic, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Fills `out` with uniform values in [lo, hi).
    pub fn fill(&mut self, out: &mut [f32], lo: f64, hi: f64) {
        for v in out {
            *v = self.range(lo, hi) as f32;
        }
    }
}

/// Up to 16 named tensors of up to 4096 elements each, stored inline.
pub struct TestParams {
    names: [&'static str; 16],
    shapes: [[usize; 4]; 16],
    ranks: [usize; 16],
    data: [[f32; 4096]; 16],
    count: usize,
}

impl TestParams {
    pub fn new() -> Self {
        TestParams {
            names: [""; 16],
            shapes: [[0; 4]; 16],
            ranks: [0; 16],
            data: [[0.0; 4096]; 16],
            count: 0,
        }
    }

    /// Adds a tensor filled uniformly in [lo, hi) and returns its data for adjustment.
    pub fn add(
        &mut self,
        rng: &mut Rng,
        name: &'static str,
        shape: &[usize],
        lo: f64,
        hi: f64,
    ) -> &mut [f32] {
        let i = self.count;
        self.count += 1;
        self.names[i] = name;
        self.ranks[i] = shape.len();
        self.shapes[i][..shape.len()].copy_from_slice(shape);
        let n: usize = shape.iter().product();
        rng.fill(&mut self.data[i][..n], lo, hi);
        &mut self.data[i][..n]
    }

    /// The data of tensor `name` (mutable), for corrupting in error tests.
    pub fn get_mut(&mut self, name: &str) -> &mut [f32] {
        let i = self.names[..self.count]
            .iter()
            .position(|n| *n == name)
            .unwrap();
        let n: usize = self.shapes[i][..self.ranks[i]].iter().product();
        &mut self.data[i][..n]
    }

    /// Changes the recorded shape of `name` (data length follows the new shape's product).
    pub fn reshape(&mut self, name: &str, shape: &[usize]) {
        let i = self.names[..self.count]
            .iter()
            .position(|n| *n == name)
            .unwrap();
        self.ranks[i] = shape.len();
        self.shapes[i] = [0; 4];
        self.shapes[i][..shape.len()].copy_from_slice(shape);
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        if let Some(i) = self.names[..self.count].iter().position(|n| *n == name) {
            self.names[i] = "";
        }
    }
}

impl ParamSource for TestParams {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let i = self.names[..self.count]
            .iter()
            .position(|n| *n == name && !n.is_empty())?;
        let shape = &self.shapes[i][..self.ranks[i]];
        let n: usize = shape.iter().product();
        Some(TensorView {
            data: &self.data[i][..n],
            shape,
        })
    }
}
