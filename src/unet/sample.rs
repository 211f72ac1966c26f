//! A plain DDPM ancestral sampler with classifier-free guidance: enough to look at what the UNet
//! has learned. (The scheduler family, DDIM, Euler and DPM-Solver, comes with chapter 3.)

use candle_core::{Device, Tensor};
use rand::Rng;

use super::UNet2DConditionModel;
use crate::noising::randn_tensor;
use crate::schedule::NoiseSchedule;
use crate::schedulers::{predict_x0_eps, PredictionType};
use crate::Result;

/// The timesteps a strided DDPM visits, from high noise to low: `steps` of them, evenly
/// spaced and starting at 0 ("leading" spacing: t = (i * T / steps) for i = steps-1 .. 0).
pub fn strided_timesteps(num_train_timesteps: usize, steps: usize) -> Vec<usize> {
    let steps = steps.clamp(1, num_train_timesteps);
    let ratio = num_train_timesteps / steps;
    (0..steps).rev().map(|i| i * ratio).collect()
}

/// Denoises `latents` (B, 4, h, w), drawn from N(0, I), with guidance:
///
/// ```text
/// eps = eps_uncond + s * (eps_cond - eps_uncond)
/// x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
/// x_prev = sqrt(ab_prev) b / (1 - ab_t) * x0_hat + sqrt(a) (1 - ab_prev) / (1 - ab_t) * x_t + sigma z
/// ```
///
/// with `a = ab_t / ab_prev`, `b = 1 - a`, `sigma^2 = (1 - ab_prev) / (1 - ab_t) * b` (the
/// DDPM posterior q(x_prev | x_t, x0), Ho et al. 2020, eq. 6-7, across a stride). `cond` and
/// `uncond` are text states (B, T, D); with `guidance_scale` = 1 only `cond` is used. A
/// `v_prediction` model's guided output gives x0_hat = sqrt(ab) x_t - sqrt(1 - ab) v directly.
#[expect(
    clippy::too_many_arguments,
    reason = "the model, what it predicts, the texts and the sampler settings"
)]
pub fn ddpm_sample(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    prediction_type: PredictionType,
    cond: &Tensor,
    uncond: &Tensor,
    guidance_scale: f64,
    steps: usize,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    let (b, s) = (cond.dim(0)?, unet.config.sample_size);
    let dev = Device::Cpu;
    let mut x = randn_tensor(&[b, unet.config.in_channels, s, s], rng, &dev)?;
    let ts = strided_timesteps(schedule.num_train_timesteps(), steps);
    let both = Tensor::cat(&[uncond, cond], 0)?; // (2B, T, D)
    for (i, &t) in ts.iter().enumerate() {
        let eps = if (guidance_scale - 1.0).abs() < 1e-12 {
            let tt = Tensor::from_vec(vec![t as f32; b], b, &dev)?;
            unet.forward(&x, &tt, cond, None)?
        } else {
            let tt = Tensor::from_vec(vec![t as f32; 2 * b], 2 * b, &dev)?;
            let out = unet.forward(&Tensor::cat(&[&x, &x], 0)?, &tt, &both, None)?; // (2B, 4, h, w)
            let (eps_u, eps_c) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
            (&eps_u + ((eps_c - &eps_u)? * guidance_scale)?)?
        };
        let ab_t = schedule.alpha_bar(t);
        // x0_hat from the (guided) output; for v straight from v, which stays finite at
        // alpha_bar = 0, where going through eps would divide by zero.
        let (x0, _) = predict_x0_eps(prediction_type, &eps, &x, ab_t)?;
        let ab_prev = ts.get(i + 1).map_or(1.0, |&p| schedule.alpha_bar(p));
        let z = if i + 1 < ts.len() {
            Some(randn_tensor(x.dims(), rng, &dev)?)
        } else {
            None
        };
        // Detached: sampling needs no gradients, and without this every step's graph (all of
        // the UNet's activations) would stay alive through the next one.
        x = ddpm_step_x0(&x, &x0.detach(), ab_t, ab_prev, z.as_ref())?.detach();
    }
    Ok(x)
}

/// One step of the DDPM posterior q(x_prev | x_t, x0_hat) from alpha_bar at t and at the previous
/// (smaller) timestep, with `x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)`:
/// `x_prev = sqrt(ab_prev) b / (1 - ab_t) x0_hat + sqrt(a) (1 - ab_prev) / (1 - ab_t) x_t + sigma z`,
/// `a = ab_t / ab_prev`, `b = 1 - a`, `sigma^2 = (1 - ab_prev) / (1 - ab_t) b`; no noise when `z`
/// is None (the last step).
pub fn ddpm_step(
    x_t: &Tensor,
    eps: &Tensor,
    ab_t: f64,
    ab_prev: f64,
    z: Option<&Tensor>,
) -> Result<Tensor> {
    let x0 = ((x_t - (eps * (1.0 - ab_t).sqrt())?)? / ab_t.sqrt())?;
    ddpm_step_x0(x_t, &x0, ab_t, ab_prev, z)
}

/// [`ddpm_step`] given x0_hat itself instead of the noise estimate.
pub fn ddpm_step_x0(
    x_t: &Tensor,
    x0: &Tensor,
    ab_t: f64,
    ab_prev: f64,
    z: Option<&Tensor>,
) -> Result<Tensor> {
    let a = ab_t / ab_prev;
    let beta = 1.0 - a;
    let c0 = ab_prev.sqrt() * beta / (1.0 - ab_t);
    let ct = a.sqrt() * (1.0 - ab_prev) / (1.0 - ab_t);
    let mean = ((x0 * c0)? + (x_t * ct)?)?;
    Ok(match z {
        Some(z) => (mean + (z * ((1.0 - ab_prev) / (1.0 - ab_t) * beta).max(0.0).sqrt())?)?,
        None => mean,
    })
}
