//! `inkdrop schedule`: the tables of one noise schedule, as a readable table or as JSON.

use anyhow::Context;
use clap::Args;
use inkdrop::support::figures::fmt_db;
use inkdrop::support::table::Table;
use inkdrop::{BetaSchedule, NoiseSchedule, ScheduleConfig};

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Beta schedule family, named as in diffusers.
    #[arg(long, value_enum, default_value_t = BetaSchedule::ScaledLinear)]
    pub beta_schedule: BetaSchedule,
    /// First beta [default: 0.0001 for linear (DDPM), 0.00085 for scaled_linear (Stable
    /// Diffusion); unused by squaredcos_cap_v2].
    #[arg(long)]
    pub beta_start: Option<f64>,
    /// Last beta [default: 0.02 for linear, 0.012 for scaled_linear].
    #[arg(long)]
    pub beta_end: Option<f64>,
    /// Number of training timesteps T.
    #[arg(long, default_value_t = 1000)]
    pub num_train_timesteps: usize,
    /// Rescale to zero terminal SNR (Lin et al. 2024): alpha_bar ends at exactly 0.
    #[arg(long)]
    pub rescale_zero_snr: bool,
    /// Print JSON with the full arrays (betas, alphas_cumprod, snr) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ScheduleArgs) -> anyhow::Result<()> {
    let (usual_start, usual_end) = args.beta_schedule.usual_beta_range();
    let config = ScheduleConfig {
        beta_schedule: args.beta_schedule,
        num_train_timesteps: args.num_train_timesteps,
        beta_start: args.beta_start.unwrap_or(usual_start),
        beta_end: args.beta_end.unwrap_or(usual_end),
        rescale_betas_zero_snr: args.rescale_zero_snr,
    };
    let schedule = NoiseSchedule::new(config)
        .context("check --beta-start, --beta-end and --num-train-timesteps")?;
    if args.json {
        println!("{}", to_json(&schedule));
    } else {
        print!("{}", to_text(&schedule));
    }
    Ok(())
}

fn to_json(s: &NoiseSchedule) -> serde_json::Value {
    let c = &s.config;
    serde_json::json!({
        "config": {
            "beta_schedule": c.beta_schedule.name(),
            "num_train_timesteps": c.num_train_timesteps,
            "beta_start": c.beta_start,
            "beta_end": c.beta_end,
            "rescale_betas_zero_snr": c.rescale_betas_zero_snr,
        },
        "betas": s.betas,
        "alphas_cumprod": s.alphas_cumprod,
        "snr": s.snrs(),
    })
}

fn to_text(s: &NoiseSchedule) -> String {
    let c = &s.config;
    let n = s.num_train_timesteps();
    let mut ts: Vec<usize> = [
        0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    ]
    .iter()
    .map(|f| ((f * n as f64).round() as usize).min(n - 1))
    .collect();
    ts.dedup();
    let mut table = Table::new([
        "t",
        "beta_t",
        "alpha_bar_t",
        "sqrt(ab)",
        "sqrt(1-ab)",
        "SNR",
        "SNR (dB)",
        "sigma",
    ]);
    for t in ts {
        table.row([
            t.to_string(),
            format!("{:.6}", s.betas[t]),
            format!("{:.6}", s.alpha_bar(t)),
            format!("{:.4}", s.sqrt_alpha_bar(t)),
            format!("{:.4}", s.sqrt_one_minus_alpha_bar(t)),
            format!("{:.4e}", s.snr(t)),
            fmt_db(s.snr_db(t)),
            format!("{:.4}", s.sigma(t)),
        ]);
    }
    let range = if c.beta_schedule == BetaSchedule::SquaredcosCapV2 {
        "alpha_bar(t) = cos^2(((t/T + 0.008) / 1.008) pi/2), beta capped at 0.999".to_string()
    } else {
        format!("beta_start = {}, beta_end = {}", c.beta_start, c.beta_end)
    };
    format!(
        "Noise schedule {} ({range}), T = {n}\n\
         x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps;  SNR = alpha_bar / (1 - alpha_bar);  \
         sigma = 1 / sqrt(SNR)\n\n{table}\n\n(--json prints every timestep)\n",
        c.label()
    )
}
