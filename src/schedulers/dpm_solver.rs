//! `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"`, `solver_order = 2`:
//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2), "DPM++ 2M" in web UIs.

use candle_core::Tensor;
use rand::RngCore;

use super::{
    add_noise_vp, alpha_bar_at, check_steps, index_of, interp, linspace, sigma_schedule,
    train_sigmas, PredictionType, Scheduler, SchedulerConfig, SchedulerOutput, TimestepSpacing,
};
use crate::schedule::NoiseSchedule;
use crate::Result;

/// DPM-Solver++(2M): solves the diffusion ODE written in log-SNR time lambda = log(alpha /
/// sigma), where its linear part integrates exactly; the model's x0 prediction is extrapolated
/// linearly from the last two steps (second order), so 10-20 steps give clean images.
#[derive(Clone, Debug)]
pub struct DPMSolverMultistepScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// sigma of each step (k-diffusion's, sqrt((1 - ab) / ab)), then 0.
    sigmas: Vec<f64>,
    /// The previous step's x0 prediction, for the second-order update.
    previous_x0: Option<Tensor>,
}

impl DPMSolverMultistepScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = sigma_schedule(config.schedule)?;
        let mut s = DPMSolverMultistepScheduler {
            config,
            schedule,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            previous_x0: None,
        };
        s.set_timesteps(s.schedule.num_train_timesteps())?;
        Ok(s)
    }

    /// The noise level of each step, then 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

/// (alpha_t, sigma_t) of the VP process from k-diffusion's sigma: alpha = 1 / sqrt(sigma^2 + 1),
/// sigma_t = sigma alpha; and lambda = log(alpha_t) - log(sigma_t).
fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl Scheduler for DPMSolverMultistepScheduler {
    fn name(&self) -> &'static str {
        "dpm++2m"
    }

    /// Like the DDPM family's, but spread over n + 1 points with the last (t = 0) dropped:
    /// leading `i * (T div (n + 1)) + offset`, linspace `round(linspace(0, T-1, n+1))`.
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let big_t = self.schedule.num_train_timesteps();
        check_steps(n, big_t)?;
        self.timesteps = match self.config.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = big_t / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + self.config.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Linspace => linspace(0.0, big_t as f64 - 1.0, n + 1)
                .into_iter()
                .rev()
                .take(n)
                .map(f64::round_ties_even)
                .collect(),
            TimestepSpacing::Trailing => {
                super::spaced_timesteps(TimestepSpacing::Trailing, n, big_t, 0)
            }
        };
        let table = train_sigmas(&self.schedule);
        self.sigmas = self
            .timesteps
            .iter()
            .map(|&t| f64::from(interp(&table, t) as f32))
            .collect();
        self.sigmas.push(0.0);
        self.previous_x0 = None;
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
    /// 1. (alpha_s, sigma_s) at this step, (alpha_t, sigma_t) at the next; lambda = log(alpha / sigma)
    /// 2. x0_s = (x - sigma_s eps) / alpha_s                          (data prediction)
    /// 3. h = lambda_t - lambda_s
    ///    first order (first and last step):  D = x0_s
    ///    second order: r = (lambda_s - lambda_prev) / h,  D = x0_s + (x0_s - x0_prev) / (2 r)
    /// 4. x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) D           (Lu et al. 2022, eq. 10)
    /// ```
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        _rng: &mut dyn RngCore,
    ) -> Result<SchedulerOutput> {
        // 1. Noise levels of this step and the next, in the VP parameterisation.
        let i = index_of(&self.timesteps, t)?;
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(self.sigmas[i]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[i + 1]);
        // 2. The model output as a prediction of x0.
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => ((sample - (model_output * sigma_s)?)? / alpha_s)?,
            PredictionType::VPrediction => ((sample * alpha_s)? - (model_output * sigma_s)?)?,
        };
        // 3. First order on the first step (no history) and the last (sigma = 0), else the
        //    second-order correction from the previous x0.
        let h = lambda_t - lambda_s;
        let last = i + 1 == self.timesteps.len();
        let d = match (&self.previous_x0, last || i == 0) {
            (Some(prev), false) => {
                let (_, _, lambda_prev) = alpha_sigma_lambda(self.sigmas[i - 1]);
                let r = (lambda_s - lambda_prev) / h;
                (&x0 + ((&x0 - prev)? * (0.5 / r))?)?
            }
            _ => x0.clone(),
        };
        // 4. The exact solution of the linear part plus the integrated x0 prediction.
        let prev_sample =
            ((sample * (sigma_t / sigma_s))? - (d * (alpha_t * ((-h).exp() - 1.0)))?)?;
        self.previous_x0 = Some(x0.clone());
        Ok(SchedulerOutput {
            prev_sample,
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
