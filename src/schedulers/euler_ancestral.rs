//! `EulerAncestralDiscreteScheduler`: Euler steps that undershoot, then add fresh noise back
//! (k-diffusion's `sample_euler_ancestral`).

use candle_core::Tensor;
use rand::RngCore;

use super::euler::SigmaSteps;
use super::{index_of, EulerDiscreteScheduler, Scheduler, SchedulerConfig, SchedulerOutput};
use crate::noising::randn_tensor;
use crate::Result;

/// Euler ancestral: the step from sigma to sigma_next is split into a deterministic Euler step
/// down to sigma_down < sigma_next and fresh noise of size sigma_up, with
/// sigma_down^2 + sigma_up^2 = sigma_next^2. Timesteps, sigmas, input scaling and noising are
/// Euler's own; only `step` differs.
#[derive(Clone, Debug)]
pub struct EulerAncestralDiscreteScheduler {
    euler: EulerDiscreteScheduler,
}

impl EulerAncestralDiscreteScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        Ok(EulerAncestralDiscreteScheduler {
            euler: EulerDiscreteScheduler::new(config)?,
        })
    }

    /// The noise level of each step, then 0.
    pub fn sigmas(&self) -> &[f64] {
        self.euler.sigmas()
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn name(&self) -> &'static str {
        "euler-a"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.euler.set_timesteps(n)
    }

    fn timesteps(&self) -> &[f64] {
        self.euler.timesteps()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.euler.init_noise_sigma()
    }

    fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor> {
        self.euler.scale_model_input(sample, t)
    }

    /// ```text
    /// 1. sigma_up   = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)
    ///    sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    /// 2. x0_hat = x - sigma eps
    /// 3. x_next = x + (x - x0_hat) / sigma (sigma_down - sigma) + sigma_up z
    /// ```
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        rng: &mut dyn RngCore,
    ) -> Result<SchedulerOutput> {
        // 1. Split the step into a deterministic part and fresh noise.
        let i = index_of(self.timesteps(), t)?;
        let sigmas = self.sigmas();
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up)
            .max(0.0)
            .sqrt();
        // 2. The clean latent the prediction implies.
        let x0 = SigmaSteps::pred_original(
            self.euler.config.prediction_type,
            model_output,
            sample,
            sigma,
        )?;
        // 3. An Euler step down to sigma_down, then noise back up to sigma_next.
        let derivative = ((sample - &x0)? / sigma)?;
        let mut prev = (sample + (derivative * (sigma_down - sigma))?)?;
        let mut r = rng;
        let z = randn_tensor(sample.dims(), &mut r, sample.device())?;
        prev = (prev + (z * sigma_up)?)?;
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        self.euler.add_noise(original, noise, t)
    }

    fn alpha_bar(&self, t: f64) -> f64 {
        self.euler.alpha_bar(t)
    }
}
