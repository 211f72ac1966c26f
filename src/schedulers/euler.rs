//! `EulerDiscreteScheduler`: Euler's method on the probability-flow ODE (Karras et al. 2022,
//! algorithm 2 without churn), in k-diffusion's sigma parameterisation.

use candle_core::Tensor;
use rand::RngCore;

use super::{
    alpha_bar_at, check_steps, index_of, interp, linspace, sigma_schedule, spaced_timesteps,
    train_sigmas, PredictionType, Scheduler, SchedulerConfig, SchedulerOutput, TimestepSpacing,
};
use crate::schedule::NoiseSchedule;
use crate::Result;

/// The timesteps and sigmas of the Euler family (diffusers' `set_timesteps` of the Euler
/// schedulers): timesteps as f32 (`linspace` gives fractional ones), sigma read off the
/// training sigmas by linear interpolation, and a final sigma of 0 appended.
#[derive(Clone, Debug)]
pub(crate) struct SigmaSteps {
    pub timesteps: Vec<f64>,
    /// One more than the timesteps: the last is 0, the clean image.
    pub sigmas: Vec<f64>,
}

impl SigmaSteps {
    pub fn new(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Self> {
        let big_t = schedule.num_train_timesteps();
        check_steps(n, big_t)?;
        let timesteps: Vec<f64> = match config.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, big_t as f64 - 1.0, n)
                .into_iter()
                .rev()
                .collect(),
            spacing => spaced_timesteps(spacing, n, big_t, config.steps_offset),
        }
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
        let table = train_sigmas(schedule);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| f64::from(interp(&table, t) as f32))
            .collect();
        sigmas.push(0.0);
        Ok(SigmaSteps { timesteps, sigmas })
    }

    /// sigma_max for `trailing`/`linspace`; sqrt(sigma_max^2 + 1) for `leading`, as diffusers.
    pub fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0, f64::max);
        match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// `x / sqrt(sigma^2 + 1)`: the x = x_0 + sigma eps of k-diffusion back to the UNet's
    /// x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps (since ab = 1 / (sigma^2 + 1)).
    pub fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor> {
        let sigma = self.sigmas[index_of(&self.timesteps, t)?];
        Ok((sample / (sigma * sigma + 1.0).sqrt())?)
    }

    /// x_0 from the model output at noise level sigma (in the sigma parameterisation):
    /// epsilon: `x - sigma out`; v: `out (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`.
    pub fn pred_original(
        prediction_type: PredictionType,
        model_output: &Tensor,
        sample: &Tensor,
        sigma: f64,
    ) -> Result<Tensor> {
        Ok(match prediction_type {
            PredictionType::Epsilon => (sample - (model_output * sigma)?)?,
            PredictionType::VPrediction => {
                ((model_output * (-sigma / (sigma * sigma + 1.0).sqrt()))?
                    + (sample / (sigma * sigma + 1.0))?)?
            }
        })
    }

    /// `x0 + sigma_t noise`: the forward process in the sigma parameterisation, with the
    /// step's own sigma when `t` is one of the timesteps (`fallback` otherwise).
    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        t: f64,
        fallback: f64,
    ) -> Result<Tensor> {
        let sigma = index_of(&self.timesteps, t).map_or(fallback, |i| self.sigmas[i]);
        Ok((original + (noise * sigma)?)?)
    }
}

/// Euler: dx/dsigma = (x - x0_hat) / sigma, one Euler step from sigma_i to sigma_{i+1}.
#[derive(Clone, Debug)]
pub struct EulerDiscreteScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    pub(crate) steps: SigmaSteps,
}

impl EulerDiscreteScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = sigma_schedule(config.schedule)?;
        let steps = SigmaSteps::new(&config, &schedule, schedule.num_train_timesteps())?;
        Ok(EulerDiscreteScheduler {
            config,
            schedule,
            steps,
        })
    }

    /// The noise level of each step, then 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.steps.sigmas
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn name(&self) -> &'static str {
        "euler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.steps = SigmaSteps::new(&self.config, &self.schedule, n)?;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.steps.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.steps.init_noise_sigma(self.config.timestep_spacing)
    }

    fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor> {
        self.steps.scale_model_input(sample, t)
    }

    /// ```text
    /// 1. sigma = sigma_i, sigma_next = sigma_{i+1}
    /// 2. x0_hat = x - sigma eps
    /// 3. d = (x - x0_hat) / sigma                       (the ODE's slope, Karras eq. 4)
    /// 4. x_next = x + d (sigma_next - sigma)            (one Euler step)
    /// ```
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        _rng: &mut dyn RngCore,
    ) -> Result<SchedulerOutput> {
        // 1. The noise levels of this step and the next.
        let i = index_of(&self.steps.timesteps, t)?;
        let (sigma, sigma_next) = (self.steps.sigmas[i], self.steps.sigmas[i + 1]);
        // 2. The clean latent the prediction implies.
        let x0 =
            SigmaSteps::pred_original(self.config.prediction_type, model_output, sample, sigma)?;
        // 3. The slope.
        let derivative = ((sample - &x0)? / sigma)?;
        // 4. One Euler step down to sigma_next.
        let prev = (sample + (derivative * (sigma_next - sigma))?)?;
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        self.steps.add_noise(original, noise, t, self.sigma(t))
    }

    fn alpha_bar(&self, t: f64) -> f64 {
        alpha_bar_at(&self.schedule, t)
    }
}
