//! `DDPMScheduler`: ancestral sampling from the DDPM posterior (Ho et al. 2020).

use candle_core::Tensor;
use rand::RngCore;

use super::{
    add_noise_vp, alpha_bar_at, check_steps, index_of, predict_x0_eps, spaced_timesteps, Scheduler,
    SchedulerConfig, SchedulerOutput,
};
use crate::noising::randn_tensor;
use crate::schedule::NoiseSchedule;
use crate::Result;

/// DDPM: at each step, sample x_{t'} from the Gaussian posterior q(x_{t'} | x_t, x0_hat) of the
/// forward process, where t' is the next timestep visited (t - 1 with all 1000 steps).
#[derive(Clone, Debug)]
pub struct DDPMScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    timesteps: Vec<f64>,
}

impl DDPMScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(config.schedule)?;
        let timesteps = (0..schedule.num_train_timesteps())
            .rev()
            .map(|t| t as f64)
            .collect();
        Ok(DDPMScheduler {
            config,
            schedule,
            timesteps,
        })
    }
}

impl Scheduler for DDPMScheduler {
    fn name(&self) -> &'static str {
        "ddpm"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let big_t = self.schedule.num_train_timesteps();
        check_steps(n, big_t)?;
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
    /// 1. ab_t, ab_prev (1 after the last step), a_t = ab_t / ab_prev, b_t = 1 - a_t
    /// 2. x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)                          (eq. 15)
    /// 3. mu = sqrt(ab_prev) b_t / (1 - ab_t) x0_hat + sqrt(a_t) (1 - ab_prev) / (1 - ab_t) x_t  (eq. 7)
    /// 4. x_prev = mu + sigma z,  sigma^2 = (1 - ab_prev) / (1 - ab_t) b_t ("fixed_small"), no z at t = 0
    /// ```
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        rng: &mut dyn RngCore,
    ) -> Result<SchedulerOutput> {
        // 1. The alphas at t and at the next timestep visited.
        let i = index_of(&self.timesteps, t)?;
        let ab_t = self.alpha_bar(t);
        let ab_prev = self
            .timesteps
            .get(i + 1)
            .map_or(1.0, |&p| self.alpha_bar(p));
        let alpha_t = ab_t / ab_prev;
        let beta_t = 1.0 - alpha_t;
        // 2. The clean latent the prediction implies.
        let (x0, _) = predict_x0_eps(self.config.prediction_type, model_output, sample, ab_t)?;
        // 3. The posterior mean.
        let c_x0 = ab_prev.sqrt() * beta_t / (1.0 - ab_t);
        let c_xt = alpha_t.sqrt() * (1.0 - ab_prev) / (1.0 - ab_t);
        let mut prev = ((&x0 * c_x0)? + (sample * c_xt)?)?;
        // 4. Plus the posterior's noise, except on the last step.
        if t > 0.0 {
            let variance = ((1.0 - ab_prev) / (1.0 - ab_t) * beta_t).max(1e-20);
            let mut r = rng;
            let z = randn_tensor(sample.dims(), &mut r, sample.device())?;
            prev = (prev + (z * variance.sqrt())?)?;
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
