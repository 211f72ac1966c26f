//! Noise schedules: how much noise the forward process adds at each training timestep.
//!
//! A schedule is a list of variances `beta_t`, t = 0..T-1. Everything else follows from it:
//!
//! ```text
//! alpha_t     = 1 - beta_t
//! alpha_bar_t = alpha_0 * alpha_1 * ... * alpha_t           (diffusers: alphas_cumprod)
//! x_t         = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
//! SNR(t)      = alpha_bar_t / (1 - alpha_bar_t)
//! sigma_t     = sqrt((1 - alpha_bar_t) / alpha_bar_t)       (k-diffusion / Karras sigmas)
//! ```
//!
//! The values reproduce diffusers' `DDPMScheduler` bit for bit where we can: diffusers builds its
//! tables in float32 with `torch.linspace` and `torch.cumprod`, so we do the same arithmetic in
//! `f32` and keep the results as `f64` for convenient maths. `tests/schedule.rs` checks every
//! branch against values dumped from diffusers 0.42.1.
//!
//! Left out: the `exp` and `laplace` schedules of newer diffusers versions.

use std::fmt;
use std::str::FromStr;

/// The beta schedule families of diffusers (`beta_schedule` in a scheduler config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// DDPM (Ho et al. 2020): beta_t evenly spaced from beta_start to beta_end.
    Linear,
    /// Stable Diffusion: sqrt(beta_t) evenly spaced, then squared.
    ScaledLinear,
    /// Improved DDPM (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2),
    /// s = 0.008, betas capped at 0.999. Ignores beta_start and beta_end.
    #[value(name = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

impl BetaSchedule {
    /// Every schedule, in the order figures and tables list them.
    pub const ALL: [BetaSchedule; 3] = [
        BetaSchedule::Linear,
        BetaSchedule::ScaledLinear,
        BetaSchedule::SquaredcosCapV2,
    ];

    /// The name diffusers uses in scheduler configs.
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
        }
    }

    /// The (beta_start, beta_end) this family is usually run with: DDPM's 1e-4..0.02 for
    /// `linear`, Stable Diffusion's 0.00085..0.012 for `scaled_linear` (unused by the cosine).
    pub fn usual_beta_range(self) -> (f64, f64) {
        match self {
            BetaSchedule::Linear => (1e-4, 0.02),
            BetaSchedule::ScaledLinear | BetaSchedule::SquaredcosCapV2 => (0.00085, 0.012),
        }
    }
}

impl fmt::Display for BetaSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BetaSchedule {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BetaSchedule::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| crate::Error::UnknownSchedule(s.to_string()))
    }
}

/// What a [`NoiseSchedule`] is built from (the fields of diffusers' scheduler config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleConfig {
    pub beta_schedule: BetaSchedule,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Rescale to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and
    /// Sample Steps are Flawed").
    pub rescale_betas_zero_snr: bool,
}

impl Default for ScheduleConfig {
    /// Stable Diffusion v1.5: scaled_linear, 0.00085..0.012, 1000 steps.
    fn default() -> Self {
        ScheduleConfig {
            beta_schedule: BetaSchedule::ScaledLinear,
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            rescale_betas_zero_snr: false,
        }
    }
}

impl ScheduleConfig {
    /// The config of one family with its usual beta range and 1000 steps.
    pub fn for_schedule(beta_schedule: BetaSchedule) -> Self {
        let (beta_start, beta_end) = beta_schedule.usual_beta_range();
        ScheduleConfig {
            beta_schedule,
            beta_start,
            beta_end,
            ..ScheduleConfig::default()
        }
    }

    /// A short label for legends: `scaled_linear`, `linear (1e-4..0.02)`, `... + zero SNR`.
    pub fn label(&self) -> String {
        let mut s = self.beta_schedule.name().to_string();
        if self.rescale_betas_zero_snr {
            s.push_str(" + zero SNR");
        }
        s
    }
}

/// The tables of one noise schedule, indexed by the training timestep t = 0..T-1.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    pub config: ScheduleConfig,
    /// beta_t: the variance of the noise added by step t.
    pub betas: Vec<f64>,
    /// alpha_t = 1 - beta_t.
    pub alphas: Vec<f64>,
    /// alpha_bar_t = prod_{s <= t} alpha_s: how much of x_0's variance survives at t.
    pub alphas_cumprod: Vec<f64>,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        // The default config is valid by construction.
        Self::build(ScheduleConfig::default())
    }
}

impl NoiseSchedule {
    /// Builds the tables, checking the config first.
    pub fn new(config: ScheduleConfig) -> Result<Self, crate::Error> {
        let ScheduleConfig {
            num_train_timesteps: n,
            beta_start,
            beta_end,
            beta_schedule,
            ..
        } = config;
        if n < 2 {
            return Err(crate::Error::InvalidSchedule(format!(
                "num_train_timesteps is {n}; use at least 2 (Stable Diffusion uses 1000)"
            )));
        }
        if beta_schedule != BetaSchedule::SquaredcosCapV2
            && !(0.0 < beta_start && beta_start <= beta_end && beta_end < 1.0)
        {
            return Err(crate::Error::InvalidSchedule(format!(
                "beta_start {beta_start} and beta_end {beta_end} must satisfy \
                 0 < beta_start <= beta_end < 1 (Stable Diffusion uses 0.00085 and 0.012)"
            )));
        }
        Ok(Self::build(config))
    }

    /// The schedule of one family with its usual beta range and 1000 steps.
    pub fn for_schedule(beta_schedule: BetaSchedule) -> Self {
        Self::build(ScheduleConfig::for_schedule(beta_schedule))
    }

    fn build(config: ScheduleConfig) -> Self {
        let n = config.num_train_timesteps;
        let mut betas: Vec<f32> = match config.beta_schedule {
            BetaSchedule::Linear => {
                linspace_f32(config.beta_start as f32, config.beta_end as f32, n)
            }
            BetaSchedule::ScaledLinear => linspace_f32(
                config.beta_start.sqrt() as f32,
                config.beta_end.sqrt() as f32,
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            BetaSchedule::SquaredcosCapV2 => betas_for_cosine_alpha_bar(n, 0.999),
        };
        if config.rescale_betas_zero_snr {
            betas = rescale_betas_zero_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = cumprod(&alphas);
        NoiseSchedule {
            config,
            betas: betas.iter().map(|&b| f64::from(b)).collect(),
            alphas: alphas.iter().map(|&a| f64::from(a)).collect(),
            alphas_cumprod: alphas_cumprod.iter().map(|&a| f64::from(a)).collect(),
        }
    }

    /// T, the number of training timesteps.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// Checks that `t` is a valid training timestep, 0 <= t < T.
    pub fn check_timestep(&self, t: usize) -> Result<(), crate::Error> {
        let n = self.num_train_timesteps();
        if t < n {
            Ok(())
        } else {
            Err(crate::Error::TimestepOutOfRange { t, n })
        }
    }

    /// alpha_bar_t.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }

    /// sqrt(alpha_bar_t): the weight of x_0 in x_t.
    pub fn sqrt_alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t].sqrt()
    }

    /// sqrt(1 - alpha_bar_t): the weight of eps in x_t.
    pub fn sqrt_one_minus_alpha_bar(&self, t: usize) -> f64 {
        (1.0 - self.alphas_cumprod[t]).sqrt()
    }

    /// SNR(t) = alpha_bar_t / (1 - alpha_bar_t): signal power over noise power in x_t.
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        a / (1.0 - a)
    }

    /// log SNR(t) (natural log), the quantity continuous-time diffusion papers call lambda_t.
    pub fn log_snr(&self, t: usize) -> f64 {
        self.snr(t).ln()
    }

    /// SNR(t) in decibels, 10 log10 SNR(t).
    pub fn snr_db(&self, t: usize) -> f64 {
        10.0 * self.snr(t).log10()
    }

    /// sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) = 1 / sqrt(SNR(t)): the noise level of the
    /// variance-exploding view x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps used by k-diffusion.
    pub fn sigma(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        ((1.0 - a) / a).sqrt()
    }

    /// SNR(t) for every t.
    pub fn snrs(&self) -> Vec<f64> {
        (0..self.num_train_timesteps())
            .map(|t| self.snr(t))
            .collect()
    }

    /// log SNR(t) for every t.
    pub fn log_snrs(&self) -> Vec<f64> {
        (0..self.num_train_timesteps())
            .map(|t| self.log_snr(t))
            .collect()
    }

    /// sigma_t for every t.
    pub fn sigmas(&self) -> Vec<f64> {
        (0..self.num_train_timesteps())
            .map(|t| self.sigma(t))
            .collect()
    }
}

/// `torch.linspace(start, end, steps)` in float32, computed the way PyTorch's CPU kernel does,
/// so that our betas equal diffusers' to the last bit: the first half counts up from `start`,
/// the second half counts down from `end` (both endpoints exact), each value one fused
/// multiply-add (`start + step * i` rounded once, as the compiled kernel does).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform:
/// beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta),
/// alpha_bar(s) = cos^2(((s + 0.008) / 1.008) pi / 2). Computed in f64 like Python, stored as f32.
fn betas_for_cosine_alpha_bar(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |s: f64| {
        ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// Zero-terminal-SNR rescale (Lin et al. 2024, Algorithm 1): shift and scale sqrt(alpha_bar) so
/// that it keeps its first value and ends at exactly 0, then recover the betas:
///
/// ```text
/// s_t  = sqrt(alpha_bar_t)
/// s'_t = (s_t - s_{T-1}) * s_0 / (s_0 - s_{T-1})
/// beta'_t = 1 - s'_t^2 / s'_{t-1}^2     (beta'_0 = 1 - s'_0^2)
/// ```
pub fn rescale_betas_zero_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let sqrt_ab: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let first = sqrt_ab[0];
    let last = sqrt_ab[sqrt_ab.len() - 1];
    let scale = first / (first - last);
    let ab: Vec<f32> = sqrt_ab
        .iter()
        .map(|s| {
            let r = (s - last) * scale;
            r * r
        })
        .collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    out.extend(ab.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// `torch.cumprod` on float32 (CPU): the running product is accumulated in double precision and
/// each output rounded to float32.
fn cumprod(xs: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    xs.iter()
        .map(|&x| {
            acc *= f64::from(x);
            acc as f32
        })
        .collect()
}
