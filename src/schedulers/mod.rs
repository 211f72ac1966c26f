//! Schedulers: how a sampler walks from pure noise back to a clean latent, one step at a time.
//!
//! Every scheduler answers the same questions, in diffusers' vocabulary:
//!
//! 1. `set_timesteps(n)`: which of the T = 1000 training timesteps will the n inference steps
//!    visit ([`TimestepSpacing`] decides how they are spread)?
//! 2. `init_noise_sigma()`: how large is the starting noise? 1 for the DDPM family, which works
//!    with x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; sigma_max for the Euler
//!    family, which works with x = x_0 + sigma eps (k-diffusion's variance-exploding view).
//! 3. `scale_model_input(x, t)`: what to feed the UNet, which was trained on the first kind.
//! 4. `step(model_output, t, x, rng)`: given the predicted noise, where does the sample go next,
//!    and what clean latent x_0 does the prediction imply?
//!
//! Their outputs equal diffusers 0.42's for the same config (timesteps exactly, samples to
//! 1e-5 relative): `tests/schedulers.rs` replays loops recorded from diffusers itself.

mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;

use std::fmt;

use candle_core::Tensor;
use rand::RngCore;

pub use ddim::DDIMScheduler;
pub use ddpm::DDPMScheduler;
pub use dpm_solver::DPMSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;

use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::{Error, Result};

/// How the inference timesteps are spread over the training ones (diffusers'
/// `timestep_spacing`; Lin et al. 2024, table 2, compares them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Multiples of T / n, counting up from 0, plus `steps_offset`: 901, 801, ..., 1 for 10
    /// steps. Stable Diffusion v1.5's choice; it never visits the noisiest timestep 999.
    Leading,
    /// Multiples of T / n counting down from T, minus 1: 999, 899, ..., 99. Starts at pure noise.
    Trailing,
    /// n evenly spaced values from 0 to T-1, rounded: 999, 888, ..., 0.
    Linspace,
}

/// What the UNet was trained to predict.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise eps (DDPM, Stable Diffusion v1): x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab).
    #[default]
    Epsilon,
    /// v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022, SD 2 at 768 px):
    /// x_0 = sqrt(ab) x_t - sqrt(1 - ab) v.
    #[value(name = "v_prediction")]
    #[serde(rename = "v_prediction")]
    VPrediction,
}

/// The config shared by every scheduler (the fields of diffusers' scheduler_config.json that
/// these schedulers read). The default is Stable Diffusion v1.5's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The training noise schedule (betas, alpha_bar).
    pub schedule: ScheduleConfig,
    pub timestep_spacing: TimestepSpacing,
    /// Added to every `leading` timestep (SD: 1, so 10 steps visit 901..1 instead of 900..0).
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            schedule: ScheduleConfig::default(),
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 1,
            prediction_type: PredictionType::Epsilon,
        }
    }
}

/// What one scheduler step returns (diffusers' `SchedulerOutput`).
#[derive(Clone, Debug)]
pub struct SchedulerOutput {
    /// The sample at the next (less noisy) timestep.
    pub prev_sample: Tensor,
    /// The clean latent x_0 implied by this step's model output.
    pub pred_original_sample: Tensor,
}

/// The interface every sampler shares, so the pipeline loop is the same for all of them.
pub trait Scheduler {
    /// The sampler's short name (`ddim`, `euler-a`, ...).
    fn name(&self) -> &'static str;
    /// Chooses the `num_inference_steps` timesteps to visit (and whatever tables go with them).
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;
    /// The timesteps to visit, from the noisiest; what the UNet receives as `t`.
    fn timesteps(&self) -> &[f64];
    /// The standard deviation of the initial noise: initial latents are N(0, I) times this.
    fn init_noise_sigma(&self) -> f64;
    /// The UNet input for timestep `t` (the identity for the DDPM family).
    fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor>;
    /// One denoising step from timestep `t`. Stochastic samplers draw their noise from `rng`.
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        rng: &mut dyn RngCore,
    ) -> Result<SchedulerOutput>;
    /// The forward process in this scheduler's parameterisation: noises `original` to timestep
    /// `t` (used by img2img to start the reverse process part of the way down).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor>;
    /// alpha_bar at timestep `t` (interpolated for fractional t), for traces and figures.
    fn alpha_bar(&self, t: f64) -> f64;
    /// sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) at timestep `t`.
    fn sigma(&self, t: f64) -> f64 {
        let a = self.alpha_bar(t);
        ((1.0 - a) / a).sqrt()
    }
}

/// The samplers `inkdrop generate --sampler` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
pub enum SamplerKind {
    /// DDPM ancestral sampling (Ho et al. 2020): stochastic, needs many steps.
    #[value(name = "ddpm")]
    #[serde(rename = "ddpm")]
    Ddpm,
    /// DDIM (Song et al. 2021) with eta = 0: deterministic, good in 20-50 steps.
    #[value(name = "ddim")]
    #[serde(rename = "ddim")]
    Ddim,
    /// Euler's method on the probability-flow ODE (Karras et al. 2022): deterministic.
    #[value(name = "euler")]
    #[serde(rename = "euler")]
    Euler,
    /// Euler ancestral: each step goes a little too far down, then adds fresh noise back.
    #[value(name = "euler-a")]
    #[serde(rename = "euler-a")]
    EulerAncestral,
    /// DPM-Solver++ 2M (Lu et al. 2022): second order, multistep; good in 10-25 steps.
    #[value(name = "dpm++2m")]
    #[serde(rename = "dpm++2m")]
    DpmSolverPP2M,
}

impl SamplerKind {
    /// Every sampler, in the order tables list them.
    pub const ALL: [SamplerKind; 5] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmSolverPP2M,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::DpmSolverPP2M => "dpm++2m",
        }
    }

    /// The diffusers class this sampler reproduces.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "DDPMScheduler",
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SamplerKind::DpmSolverPP2M => "DPMSolverMultistepScheduler",
        }
    }

    /// A scheduler of this kind with `config`, timesteps set for `steps` inference steps.
    pub fn build(self, config: SchedulerConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
        let mut s: Box<dyn Scheduler> = match self {
            SamplerKind::Ddpm => Box::new(DDPMScheduler::new(config)?),
            SamplerKind::Ddim => Box::new(DDIMScheduler::new(config)?),
            SamplerKind::Euler => Box::new(EulerDiscreteScheduler::new(config)?),
            SamplerKind::EulerAncestral => Box::new(EulerAncestralDiscreteScheduler::new(config)?),
            SamplerKind::DpmSolverPP2M => Box::new(DPMSolverMultistepScheduler::new(config)?),
        };
        s.set_timesteps(steps)?;
        Ok(s)
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::InvalidSetting {
                what: format!("unknown sampler '{s}'"),
                reason: format!(
                    "use one of {}",
                    SamplerKind::ALL.map(SamplerKind::name).join(", ")
                ),
            })
    }
}

/// Checks `1 <= n <= T`, the range every scheduler accepts.
fn check_steps(n: usize, num_train_timesteps: usize) -> Result<()> {
    if n == 0 || n > num_train_timesteps {
        return Err(Error::InvalidSetting {
            what: format!("{n} inference steps"),
            reason: format!(
                "use between 1 and {num_train_timesteps} (the training timesteps); 20-50 is usual"
            ),
        });
    }
    Ok(())
}

/// The integer timesteps of the DDPM family for `n` steps (diffusers' `set_timesteps` of
/// `DDPMScheduler` / `DDIMScheduler`), noisiest first:
///
/// ```text
/// leading:  t_i = i * (T div n) + steps_offset            i = n-1 .. 0
/// trailing: t_i = round(T - i * T / n) - 1                i = 0 .. n-1
/// linspace: t_i = round(i * (T - 1) / (n - 1))            i = n-1 .. 0
/// ```
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    num_train_timesteps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let big_t = num_train_timesteps as f64;
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = num_train_timesteps / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = big_t / n as f64;
            arange_down(big_t, ratio)
                .into_iter()
                .map(|v| v.round_ties_even() - 1.0)
                .collect()
        }
        TimestepSpacing::Linspace => linspace(0.0, big_t - 1.0, n)
            .into_iter()
            .rev()
            .map(f64::round_ties_even)
            .collect(),
    }
}

/// `np.arange(start, 0, -step)`: start, start - step, ... while > 0.
fn arange_down(start: f64, step: f64) -> Vec<f64> {
    let count = (start / step).ceil() as usize;
    (0..count).map(|i| start + i as f64 * -step).collect()
}

/// `np.linspace(start, end, n)` in f64 (numpy's formula: start + i * step, the end exact).
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i + 1 == n {
                end
            } else {
                start + i as f64 * step
            }
        })
        .collect()
}

/// The schedule of a sampler that works with sigma = sqrt((1 - ab) / ab) (Euler, DPM-Solver).
/// With zero terminal SNR, alpha_bar at the last timestep is 0 and its sigma infinite; as
/// diffusers does, it becomes 2^-24 there (sigma about 4096): close to 0 without being 0.
fn sigma_schedule(config: crate::schedule::ScheduleConfig) -> Result<NoiseSchedule> {
    let mut schedule = NoiseSchedule::new(config)?;
    if config.rescale_betas_zero_snr {
        if let Some(last) = schedule.alphas_cumprod.last_mut() {
            *last = 2f64.powi(-24);
        }
    }
    Ok(schedule)
}

/// The schedule's sigmas sqrt((1 - ab) / ab), computed in f32 as diffusers does from its f32
/// `alphas_cumprod`.
fn train_sigmas(schedule: &NoiseSchedule) -> Vec<f64> {
    schedule
        .alphas_cumprod
        .iter()
        .map(|&a| {
            let a = a as f32;
            f64::from(((1.0 - a) / a).sqrt())
        })
        .collect()
}

/// `np.interp(t, arange(len), table)`: the table read at a fractional index, clamped at the ends.
fn interp(table: &[f64], t: f64) -> f64 {
    if t <= 0.0 {
        return table[0];
    }
    let last = table.len() - 1;
    if t >= last as f64 {
        return table[last];
    }
    let i = t.floor() as usize;
    let f = t - i as f64;
    table[i] + f * (table[i + 1] - table[i])
}

/// The position of `t` in `timesteps` (diffusers' `index_for_timestep`), or an error naming it.
fn index_of(timesteps: &[f64], t: f64) -> Result<usize> {
    timesteps
        .iter()
        .position(|&x| x == t)
        .ok_or_else(|| Error::InvalidSetting {
            what: format!("timestep {t}"),
            reason: "is not one of this scheduler's timesteps; call set_timesteps and use the \
                     values from timesteps()"
                .into(),
        })
}

/// x_0 and eps from the model output at alpha_bar `ab` (DDPM family, VP parameterisation):
///
/// ```text
/// epsilon:      x0 = (x_t - sqrt(1 - ab) out) / sqrt(ab)        eps = out
/// v_prediction: x0 = sqrt(ab) x_t - sqrt(1 - ab) out            eps = sqrt(ab) out + sqrt(1 - ab) x_t
/// ```
pub fn predict_x0_eps(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    ab: f64,
) -> Result<(Tensor, Tensor)> {
    let (a, b) = (ab.sqrt(), (1.0 - ab).sqrt());
    Ok(match prediction_type {
        PredictionType::Epsilon => (((sample - (model_output * b)?)? / a)?, model_output.clone()),
        PredictionType::VPrediction => (
            ((sample * a)? - (model_output * b)?)?,
            predict_eps(prediction_type, model_output, sample, ab)?,
        ),
    })
}

/// The eps half of [`predict_x0_eps`], without computing x0: the model output itself for
/// epsilon, `sqrt(ab) out + sqrt(1 - ab) x_t` for v_prediction.
pub fn predict_eps(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    ab: f64,
) -> Result<Tensor> {
    Ok(match prediction_type {
        PredictionType::Epsilon => model_output.clone(),
        PredictionType::VPrediction => {
            ((model_output * ab.sqrt())? + (sample * (1.0 - ab).sqrt())?)?
        }
    })
}

/// `sqrt(ab) x0 + sqrt(1 - ab) noise`: the forward process in the VP parameterisation.
fn add_noise_vp(original: &Tensor, noise: &Tensor, ab: f64) -> Result<Tensor> {
    Ok(((original * ab.sqrt())? + (noise * (1.0 - ab).sqrt())?)?)
}

/// alpha_bar of the schedule at an integer timestep, with a clear error outside [0, T).
fn alpha_bar_at(schedule: &NoiseSchedule, t: f64) -> f64 {
    let last = schedule.num_train_timesteps() - 1;
    interp(&schedule.alphas_cumprod, t.clamp(0.0, last as f64))
}
