//! `DDIMScheduler`: denoising diffusion implicit models (Song et al. 2021).

use candle_core::Tensor;
use rand::RngCore;

use super::{
    add_noise_vp, alpha_bar_at, check_steps, predict_x0_eps, spaced_timesteps, Scheduler,
    SchedulerConfig, SchedulerOutput,
};
use crate::noising::randn_tensor;
use crate::schedule::NoiseSchedule;
use crate::Result;

/// DDIM: the same marginals as DDPM, but a non-Markovian reverse process that, with eta = 0,
/// is deterministic: the noise direction the model predicted is reused instead of redrawn.
#[derive(Clone, Debug)]
pub struct DDIMScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    /// 0: deterministic DDIM; 1: DDPM's amount of fresh noise.
    pub eta: f64,
    /// alpha_bar after the last step: 1 (a clean image) or, as in Stable Diffusion's config
    /// (`set_alpha_to_one = false`), alpha_bar_0.
    pub set_alpha_to_one: bool,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
}

impl DDIMScheduler {
    /// DDIM with eta = 0 and Stable Diffusion's `set_alpha_to_one = false`.
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config.schedule)?;
        let n = schedule.num_train_timesteps();
        Ok(DDIMScheduler {
            config,
            schedule,
            eta: 0.0,
            set_alpha_to_one: false,
            num_inference_steps: n,
            timesteps: (0..n).rev().map(|t| t as f64).collect(),
        })
    }

    /// alpha_bar at the timestep this step lands on: t - T/n, or the final value below 0.
    fn alpha_bar_prev(&self, t: f64) -> f64 {
        let prev = t - (self.schedule.num_train_timesteps() / self.num_inference_steps) as f64;
        if prev >= 0.0 {
            self.alpha_bar(prev)
        } else if self.set_alpha_to_one {
            1.0
        } else {
            self.schedule.alphas_cumprod[0]
        }
    }
}

impl Scheduler for DDIMScheduler {
    fn name(&self) -> &'static str {
        "ddim"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let big_t = self.schedule.num_train_timesteps();
        check_steps(n, big_t)?;
        self.num_inference_steps = n;
        self.timesteps = spaced_timesteps(
            self.config.timestep_spacing,
            n,
            big_t,
            self.config.steps_offset,
        );
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }

    /// ```text
    /// 1. t_prev = t - T/n; ab_t, ab_prev
    /// 2. x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)                         (eq. 12)
    /// 3. sigma_t = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)   (eq. 16)
    /// 4. x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma_t^2) eps + sigma_t z   (eq. 12)
    /// ```
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        rng: &mut dyn RngCore,
    ) -> Result<SchedulerOutput> {
        // 1. Where this step lands.
        let ab_t = self.alpha_bar(t);
        let ab_prev = self.alpha_bar_prev(t);
        // 2. The predicted clean latent and noise.
        let (x0, eps) = predict_x0_eps(self.config.prediction_type, model_output, sample, ab_t)?;
        // 3. How much fresh noise eta asks for.
        let variance = (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev);
        let std_dev = self.eta * variance.sqrt();
        // 4. Back to the previous timestep along the predicted noise direction.
        let direction = (eps * (1.0 - ab_prev - std_dev * std_dev).max(0.0).sqrt())?;
        let mut prev = ((&x0 * ab_prev.sqrt())? + direction)?;
        if self.eta > 0.0 {
            let mut r = rng;
            let z = randn_tensor(sample.dims(), &mut r, sample.device())?;
            prev = (prev + (z * std_dev)?)?;
        }
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        add_noise_vp(original, noise, self.alpha_bar(t))
    }

    fn alpha_bar(&self, t: f64) -> f64 {
        alpha_bar_at(&self.schedule, t)
    }
}
