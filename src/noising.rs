//! The forward process q: destroying an image with Gaussian noise, one step or many at once.
//!
//! Timesteps follow diffusers: `alphas_cumprod[t]` already includes step t, so the clean image
//! x_0 sits *before* timestep 0, and "x_t at timestep t" has been through t + 1 noising steps.
//!
//! Images are `(C, H, W)` `f32` arrays in [-1, 1] (ndarray), or `(B, C, H, W)` candle tensors for
//! training code. Both paths compute the same formula; `tests/noising.rs` checks they agree.

use candle_core::{DType, Tensor};
use ndarray::{Array, Dimension};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::schedule::NoiseSchedule;
use crate::{Error, Result};

/// Draws eps ~ N(0, I) with the given shape from a seeded generator.
pub fn randn<D: Dimension, Sh: ndarray::ShapeBuilder<Dim = D>>(
    shape: Sh,
    rng: &mut impl Rng,
) -> Array<f32, D> {
    use ndarray_rand::RandomExt;
    Array::random_using(shape, StandardNormal, rng)
}

fn check_same_shape<D: Dimension>(a: &Array<f32, D>, b: &Array<f32, D>) -> Result<()> {
    if a.shape() == b.shape() {
        Ok(())
    } else {
        Err(Error::Shape {
            what: "noise vs image",
            expected: a.shape().to_vec(),
            got: b.shape().to_vec(),
        })
    }
}

// ANCHOR: add_noise
/// Closed-form forward process, q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I):
///
/// `x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps`
///
/// This is why training can jump straight to any t without simulating the chain.
pub fn add_noise<D: Dimension>(
    schedule: &NoiseSchedule,
    x0: &Array<f32, D>,
    noise: &Array<f32, D>,
    t: usize,
) -> Result<Array<f32, D>> {
    schedule.check_timestep(t)?;
    check_same_shape(x0, noise)?;
    let a = schedule.sqrt_alpha_bar(t) as f32;
    let b = schedule.sqrt_one_minus_alpha_bar(t) as f32;
    Ok(x0 * a + noise * b) // same shape as x0
}
// ANCHOR_END: add_noise

/// One step of the Markov chain, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I):
///
/// `x_t = sqrt(1 - beta_t) * x_{t-1} + sqrt(beta_t) * eps`
///
/// Shrinking by sqrt(1 - beta_t) before adding variance beta_t keeps a unit-variance input at unit
/// variance, so the chain ends at N(0, I) instead of blowing up.
pub fn markov_step<D: Dimension>(
    schedule: &NoiseSchedule,
    x_prev: &Array<f32, D>,
    noise: &Array<f32, D>,
    t: usize,
) -> Result<Array<f32, D>> {
    schedule.check_timestep(t)?;
    check_same_shape(x_prev, noise)?;
    let beta = schedule.betas[t];
    Ok(x_prev * (1.0 - beta).sqrt() as f32 + noise * beta.sqrt() as f32)
}

/// Runs the chain from x_0 through timesteps 0..=t, drawing fresh noise at every step: the slow
/// way to reach x_t, which must agree in distribution with [`add_noise`].
pub fn markov_chain<D: Dimension>(
    schedule: &NoiseSchedule,
    x0: &Array<f32, D>,
    t: usize,
    rng: &mut impl Rng,
) -> Result<Array<f32, D>> {
    schedule.check_timestep(t)?;
    let mut x = x0.clone();
    for s in 0..=t {
        let eps = randn(x.raw_dim(), rng);
        x = markov_step(schedule, &x, &eps, s)?;
    }
    Ok(x)
}

/// [`add_noise`] on a batch of candle tensors, one timestep per sample (what training uses):
///
/// `x_t[b] = sqrt(alpha_bar_{t[b]}) * x_0[b] + sqrt(1 - alpha_bar_{t[b]}) * eps[b]`
pub fn add_noise_tensor(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: &Tensor,
    timesteps: &[usize],
) -> Result<Tensor> {
    let dims = x0.dims();
    if noise.dims() != dims {
        return Err(Error::Shape {
            what: "noise vs latents",
            expected: dims.to_vec(),
            got: noise.dims().to_vec(),
        });
    }
    if dims.first() != Some(&timesteps.len()) {
        return Err(Error::Shape {
            what: "timesteps vs batch",
            expected: vec![dims.first().copied().unwrap_or(0)],
            got: vec![timesteps.len()],
        });
    }
    for &t in timesteps {
        schedule.check_timestep(t)?;
    }
    // (B, 1, 1, ...) so the coefficients broadcast over every other axis.
    let mut coeff_shape = vec![1usize; dims.len()];
    coeff_shape[0] = timesteps.len();
    let coeff = |f: &dyn Fn(usize) -> f64| -> Result<Tensor> {
        let v: Vec<f32> = timesteps.iter().map(|&t| f(t) as f32).collect();
        Ok(Tensor::from_vec(v, coeff_shape.as_slice(), x0.device())?.to_dtype(x0.dtype())?)
    };
    let a = coeff(&|t| schedule.sqrt_alpha_bar(t))?; // (B, 1, 1, 1)
    let b = coeff(&|t| schedule.sqrt_one_minus_alpha_bar(t))?; // (B, 1, 1, 1)
    let x_t = (x0.broadcast_mul(&a)? + noise.broadcast_mul(&b)?)?; // (B, C, H, W)
    Ok(x_t)
}

/// The velocity v_t = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022),
/// what a `v_prediction` model learns to output; one timestep per sample, like
/// [`add_noise_tensor`]. At the noisiest steps v is nearly -x_0, so the loss there asks for the
/// picture itself, where eps-prediction asks for noise that x_t already almost is.
pub fn velocity_tensor(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: &Tensor,
    timesteps: &[usize],
) -> Result<Tensor> {
    // add_noise_tensor with the roles swapped: sqrt(ab) eps + sqrt(1 - ab) (-x0).
    add_noise_tensor(schedule, noise, &x0.neg()?, timesteps)
}

/// Draws eps ~ N(0, I) as a candle tensor from a seeded generator (candle's own `randn` cannot
/// be seeded per call on CPU).
pub fn randn_tensor(
    shape: &[usize],
    rng: &mut impl Rng,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, shape, device)?.to_dtype(DType::F32)?)
}

/// Pixel statistics of x_t over one image: measured, or predicted by theory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelStats {
    pub mean: f64,
    pub std: f64,
    /// Correlation between x_t and x_0 across pixels.
    pub corr: f64,
}

/// What theory predicts for x_t = a x_0 + b eps (a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t))
/// when x_0 has pixel mean `m0` and standard deviation `s0` and eps is independent N(0, I):
///
/// ```text
/// mean = a m0,   std = sqrt(a^2 s0^2 + b^2),   corr(x_t, x_0) = a s0 / std
/// ```
pub fn expected_stats(schedule: &NoiseSchedule, t: usize, m0: f64, s0: f64) -> Result<PixelStats> {
    schedule.check_timestep(t)?;
    let ab = schedule.alpha_bar(t);
    let a = ab.sqrt();
    let std = (ab * s0 * s0 + (1.0 - ab)).sqrt();
    Ok(PixelStats {
        mean: a * m0,
        std,
        corr: if std > 0.0 { a * s0 / std } else { 0.0 },
    })
}

/// The same statistics measured on an actual x_t.
pub fn measured_stats<D: Dimension>(x_t: &Array<f32, D>, x0: &Array<f32, D>) -> PixelStats {
    let (mean, std) = crate::support::stats::mean_std(x_t);
    PixelStats {
        mean,
        std,
        corr: crate::support::stats::correlation(x_t, x0),
    }
}
