//! Forward noising: watch an image dissolve into Gaussian noise, like a drop of ink in water.
//!
//! ```text
//! cargo run --release --example forward_noise
//! cargo run --release --example forward_noise -- --image my.png --beta-schedule linear --seed 7
//! ```
//!
//! Writes `forward_noise_grid.png`, `schedules.png` and `pixel_histograms.png` (default folder
//! `target/inkdrop/forward_noise/`), previews the strip in the terminal, and prints measured pixel
//! statistics of every x_t next to what the closed form predicts. Chapter 1 tells the story
//! behind each picture; this example is the quick look. Leaves out: the reverse process.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use inkdrop::noising::randn;
use inkdrop::support::figures::{
    fmt_db, histogram_panel, noising_tiles, schedule_panels, stats_cells,
};
use inkdrop::support::files::{default_out_dir, prepare_out_dir};
use inkdrop::support::grid::labelled_grid;
use inkdrop::support::image_io::{astronaut, center_square, load_image, save_png, to_chw};
use inkdrop::support::plot::save_panels;
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, seeded_rng, terminal, DEFAULT_SEED};
use inkdrop::{BetaSchedule, NoiseSchedule, ScheduleConfig};

/// Add noise to an image at several timesteps and see what is left.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Image to noise (PNG or JPEG) [default: the bundled astronaut photograph].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Beta schedule, named as in diffusers.
    #[arg(long, value_enum, default_value_t = BetaSchedule::ScaledLinear)]
    beta_schedule: BetaSchedule,
    /// Timesteps to show, comma separated, each in [0, 1000).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,50,100,200,400,700,999"
    )]
    timesteps: Vec<usize>,
    /// Seed of the noise eps (same seed, same pictures).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Side of each square tile in pixels.
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u32).range(16..=1024))]
    size: u32,
    /// Output folder [default: target/inkdrop/forward_noise].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let schedule = NoiseSchedule::for_schedule(args.beta_schedule);
    for &t in &args.timesteps {
        schedule.check_timestep(t).context("check --timesteps")?;
    }
    let out = prepare_out_dir(&args.out.unwrap_or_else(|| default_out_dir("forward_noise")))?;
    let photo = match &args.image {
        Some(path) => load_image(path)?,
        None => astronaut()?,
    };
    let x0 = to_chw(&center_square(&photo, args.size)); // (3, H, W) in [-1, 1]
    let eps = randn(x0.raw_dim(), &mut seeded_rng(args.seed)); // (3, H, W) ~ N(0, I)

    // The strip: the same eps at every t, so only the amount of noise changes.
    let tiles = noising_tiles(&schedule, &x0, &eps, &args.timesteps)?;
    let title = format!(
        "x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps   ({} schedule, seed {})",
        schedule.config.label(),
        args.seed
    );
    let grid = labelled_grid(&tiles, tiles.len(), Some(&title))?;
    let grid_path = out.join("forward_noise_grid.png");
    save_png(&grid, &grid_path)?;

    let configs: Vec<ScheduleConfig> = BetaSchedule::ALL
        .into_iter()
        .map(ScheduleConfig::for_schedule)
        .collect();
    let schedules_path = out.join("schedules.png");
    save_panels(&schedules_path, &schedule_panels(&configs)?, (640, 440))?;
    let hist_path = out.join("pixel_histograms.png");
    save_panels(
        &hist_path,
        &[histogram_panel(&schedule, &x0, &eps, &args.timesteps)?],
        (760, 480),
    )?;

    println!(
        "Forward noising, {} schedule, seed {}:\n",
        schedule.config.label(),
        args.seed
    );
    let strip: Vec<_> = tiles.iter().map(|t| t.image.clone()).collect();
    terminal::preview(&inkdrop::support::grid::plain_strip(&strip), 120);

    let (m0, s0) = inkdrop::support::stats::mean_std(&x0);
    let mut table = Table::new([
        "t",
        "alpha_bar",
        "SNR",
        "mean",
        "(theory)",
        "std",
        "(theory)",
        "corr(x_t, x_0)",
        "(theory)",
    ]);
    for &t in &args.timesteps {
        let mut row = vec![
            t.to_string(),
            format!("{:.4}", schedule.alpha_bar(t)),
            fmt_db(schedule.snr_db(t)),
        ];
        row.extend(stats_cells(&schedule, &x0, &eps, t)?);
        table.row(row);
    }
    println!("Pixel statistics of x_t, measured on this image and predicted by the closed form");
    println!("(x_0: mean {m0:+.3}, std {s0:.3}; eps ~ N(0, 1)):\n\n{table}\n");
    println!("The noise wins once SNR falls below 0 dB; by t = 999 only a faint ghost is left.\n");
    for p in [&grid_path, &schedules_path, &hist_path] {
        println!("wrote {}", p.display());
    }
    println!("done in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
