//! `inkdrop timesteps`: which training timesteps a sampler visits, with alpha_bar_t and sigma_t.

use clap::Args;
use inkdrop::schedulers::{SamplerKind, SchedulerConfig, TimestepSpacing};
use inkdrop::support::table::Table;

#[derive(Debug, Args)]
pub struct TimestepsArgs {
    /// Sampler (scheduler).
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    pub sampler: SamplerKind,
    /// Inference steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// How the steps are spread over the training timesteps.
    #[arg(long, value_enum, default_value_t = TimestepSpacing::Leading)]
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps (Stable Diffusion v1.5: 1).
    #[arg(long, default_value_t = 1)]
    pub steps_offset: usize,
    /// Print JSON: {"timesteps": [...], "sigmas": [...], "alphas_cumprod": [...], "init_noise_sigma": x}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &TimestepsArgs) -> anyhow::Result<()> {
    let config = SchedulerConfig {
        timestep_spacing: args.timestep_spacing,
        steps_offset: args.steps_offset,
        ..SchedulerConfig::default()
    };
    let s = args.sampler.build(config, args.steps)?;
    let ts = s.timesteps().to_vec();
    let alpha_bars: Vec<f64> = ts.iter().map(|&t| s.alpha_bar(t)).collect();
    let sigmas: Vec<f64> = ts.iter().map(|&t| s.sigma(t)).collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "sampler": args.sampler.name(),
                "timestep_spacing": args.timestep_spacing,
                "timesteps": ts,
                "sigmas": sigmas,
                "alphas_cumprod": alpha_bars,
                "init_noise_sigma": s.init_noise_sigma(),
            })
        );
        return Ok(());
    }
    println!(
        "{} ({}), {} steps, {} spacing; initial noise sigma {:.4}",
        args.sampler,
        args.sampler.diffusers_class(),
        ts.len(),
        inkdrop::support::cli_name(args.timestep_spacing),
        s.init_noise_sigma()
    );
    let mut table = Table::new(["step", "t", "alpha_bar_t", "sigma_t", "SNR (dB)"]);
    for (i, ((t, a), sg)) in ts.iter().zip(&alpha_bars).zip(&sigmas).enumerate() {
        table.row([
            (i + 1).to_string(),
            if t.fract() == 0.0 {
                format!("{t:.0}")
            } else {
                format!("{t:.2}")
            },
            format!("{a:.5}"),
            format!("{sg:.4}"),
            format!("{:.1}", 10.0 * (a / (1.0 - a)).log10()),
        ]);
    }
    println!("{table}");
    Ok(())
}
