//! Helpers the test files share (each test file is its own crate and uses what it needs).
#![allow(dead_code)]

use candle_core::{Device, Tensor};

/// A (seeded) standard normal tensor.
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = inkdrop::support::seeded_rng(seed);
    inkdrop::noising::randn_tensor(shape, &mut rng, &Device::Cpu).unwrap()
}

/// max |a - b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A fixed random weighting so the loss depends on every output differently.
pub fn weighted_sum(y: &Tensor, w: &Tensor) -> Tensor {
    (y * w).unwrap().sum_all().unwrap()
}
