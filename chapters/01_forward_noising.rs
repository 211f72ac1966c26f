//! Chapter 1: forward noising. How training destroys an image, one small step at a time, and
//! why it never has to take those steps one by one.
//!
//! ```text
//! cargo run --release --bin ch01_forward_noising                  # run straight through
//! cargo run --release --bin ch01_forward_noising -- --interactive # pause between cells
//! cargo run --release --bin ch01_forward_noising -- --book        # refresh the book's figures
//! ```
//!
//! Cells match the sections of `book/src/ch01_forward_noising.md`. Figures and tables go to
//! `target/inkdrop/ch01/` (or `book/src/generated/ch01/` with `--book`).
//! Leaves out: learning to undo the noise (chapter 2) and sampling (chapter 3).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use inkdrop::noising::{add_noise, markov_step, randn};
use inkdrop::support::figures::{
    fmt_db, histogram_panel, noising_tiles, schedule_panels, stats_cells,
};
use inkdrop::support::files::{chapter_out_dir, write_atomic};
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{astronaut, center_square, from_chw, save_png, to_chw};
use inkdrop::support::notebook::Notebook;
use inkdrop::support::plot::{save_panels, Panel, Series};
use inkdrop::support::stats::{density, mean_std};
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, seeded_rng, terminal, DEFAULT_SEED};
use inkdrop::{BetaSchedule, NoiseSchedule, ScheduleConfig};
use ndarray::Array1;

/// Chapter 1 of inkdrop: forward noising, as a notebook in the terminal.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Pause between cells (press Enter); ignored when stdout is not a terminal.
    #[arg(long)]
    interactive: bool,
    /// Write figures and tables into the book (`book/src/generated/ch01/`).
    #[arg(long, conflicts_with = "out")]
    book: bool,
    /// Output folder for figures and tables [default: target/inkdrop/ch01].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of all the noise in the chapter.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Chains per starting value in the chain-versus-closed-form experiment.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..))]
    chains: u64,
}

/// The timesteps every figure of this chapter shows.
const TIMESTEPS: [usize; 6] = [0, 100, 250, 500, 750, 999];

fn main() -> std::process::ExitCode {
    run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let out = chapter_out_dir("ch01", args.book, args.out.as_deref())?;
    let mut nb = Notebook::new("Chapter 1: forward noising", args.interactive);
    let schedule = NoiseSchedule::default(); // Stable Diffusion's: scaled_linear, T = 1000
    let x0 = to_chw(&center_square(&astronaut()?, 128)); // (3, 128, 128) in [-1, 1]

    // ---------------------------------------------------------------------------------------
    nb.cell("The ink drop");
    nb.say(
        "Drop ink into clear water and it spreads until the glass is evenly tinted; nobody can \
         point to where the drop fell. Diffusion models do this to images: add a little Gaussian \
         noise, then a little more, a thousand times, until only noise is left. Training a model \
         to run this film backwards is what lets it paint. Here is the film, forwards, on a \
         photograph, with Stable Diffusion's noise schedule.",
    );
    // ANCHOR: ink_drop
    let eps = randn(x0.raw_dim(), &mut seeded_rng(args.seed)); // (3, 128, 128) ~ N(0, I)
    let tiles = noising_tiles(&schedule, &x0, &eps, &TIMESTEPS)?; // x_0, then x_t per t
                                                                  // ANCHOR_END: ink_drop
    let grid = labelled_grid(
        &tiles,
        tiles.len(),
        Some("The forward process: x_0 dissolves into noise"),
    )?;
    save_png(&grid, &out.join("ink_drop.png"))?;
    terminal::preview(&grid, 110);
    nb.say(&format!(
        "Wrote {}. Every tile uses the same noise eps; only how much of it is mixed in changes.",
        out.join("ink_drop.png").display()
    ));

    // ---------------------------------------------------------------------------------------
    nb.cell("One step at a time: the Markov chain");
    nb.say(
        "The forward process is a Markov chain: each step looks only at the previous image, \
         shrinks it a little and adds fresh noise of variance beta_t:\n\n\
         q(x_t | x_(t-1)) = N(sqrt(1 - beta_t) x_(t-1), beta_t I)\n\n\
         The shrinking matters: a pixel of variance 1 stays at variance (1 - beta_t) + beta_t = 1, \
         so the chain settles at N(0, I) instead of blowing up. The betas are tiny and grow \
         slowly (Stable Diffusion's schedule):",
    );
    let mut betas = Table::new(["t", "beta_t", "sqrt(1 - beta_t)", "sqrt(beta_t)"]);
    for t in [0, 1, 500, 998, 999] {
        let b = schedule.betas[t];
        betas.row([
            t.to_string(),
            format!("{b:.6}"),
            format!("{:.6}", (1.0 - b).sqrt()),
            format!("{:.6}", b.sqrt()),
        ]);
    }
    println!("{betas}\n");
    // ANCHOR: markov_chain
    let mut rng = seeded_rng(args.seed + 1);
    let mut x = x0.clone(); // x_0, before timestep 0
    let mut frames = Vec::new();
    for t in 0..schedule.num_train_timesteps() {
        let eps_t = randn(x.raw_dim(), &mut rng); // fresh noise at every step
        x = markov_step(&schedule, &x, &eps_t, t)?; // x_t from x_(t-1)
        if TIMESTEPS.contains(&t) {
            frames.push((t, x.clone()));
        }
    }
    // ANCHOR_END: markov_chain
    let chain_tiles = frames
        .iter()
        .map(|(t, x_t)| {
            Ok(Tile {
                image: from_chw(x_t)?,
                caption: vec![format!("t = {t}"), format!("{} steps", t + 1)],
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let chain_grid = labelled_grid(
        &chain_tiles,
        chain_tiles.len(),
        Some("The same film made step by step (1000 steps)"),
    )?;
    save_png(&chain_grid, &out.join("markov_chain.png"))?;
    nb.say(
        "Timestep t counts from 0 as in diffusers: x_t has been through t + 1 steps, and the \
         clean image sits just before t = 0. The chain's frames (markov_chain.png) look like the \
         ink-drop strip, but each step drew its own noise, so no two runs agree pixel for pixel.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Jumping to any t: the closed form");
    nb.say(
        "Training needs x_t at a random t for every image in every batch. Walking t steps each \
         time would be slow. It is also unnecessary: a sum of independent Gaussians is Gaussian, \
         so the t steps collapse into one. With alpha_t = 1 - beta_t and alpha_bar_t = alpha_0 \
         alpha_1 ... alpha_t:\n\n\
         q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), that is\n\
         x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I).\n\n\
         By induction: if x_(t-1) = a x_0 + b eps' with a^2 + b^2 = 1, one step gives \
         sqrt(alpha_t) a x_0 + (sqrt(alpha_t) b eps' + sqrt(beta_t) eps''), and the noise terms \
         add up to variance alpha_t b^2 + beta_t = 1 - alpha_t a^2. One multiply-add replaces \
         a thousand steps:",
    );
    // ANCHOR: closed_form
    let t = 999;
    let started = Instant::now();
    let x_t = add_noise(&schedule, &x0, &eps, t)?; // one step, any t
    let closed_ms = started.elapsed().as_secs_f64() * 1e3;
    // ANCHOR_END: closed_form
    let started = Instant::now();
    let mut x = x0.clone();
    for s in 0..=t {
        x = markov_step(&schedule, &x, &randn(x.raw_dim(), &mut rng), s)?;
    }
    let chain_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "x_{t} of a 3x128x128 image: closed form {closed_ms:.2} ms, chain of {} steps {chain_ms:.0} ms \
         ({:.0}x slower; pixel std {:.3} vs {:.3})\n",
        t + 1,
        chain_ms / closed_ms.max(1e-6),
        mean_std(&x_t).1,
        mean_std(&x).1
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Evidence: t chained steps match the closed form");
    nb.say(&format!(
        "A derivation is a claim; here is a measurement. Start {} independent chains at each of \
         five pixel values x_0, run all 1000 steps, and compare the mean and variance of x_t \
         with sqrt(alpha_bar_t) x_0 and 1 - alpha_bar_t. Deviations are in standard errors: \
         if the closed form is right they should look like draws from N(0, 1).",
        args.chains
    ));
    // ANCHOR: chain_experiment
    let starts = [-1.0f32, -0.5, 0.0, 0.5, 1.0];
    let n = args.chains as usize;
    let checkpoints = [0usize, 9, 99, 499, 999];
    let mut x = Array1::from_iter(starts.iter().flat_map(|&v| std::iter::repeat_n(v, n))); // (5 n,)
    let mut rng = seeded_rng(args.seed + 2);
    let mut moments = Vec::new(); // (t, start index, mean, variance)
    for t in 0..=*checkpoints.last().unwrap_or(&0) {
        x = markov_step(&schedule, &x, &randn(x.raw_dim(), &mut rng), t)?;
        if checkpoints.contains(&t) {
            for (i, chunk) in x.exact_chunks(n).into_iter().enumerate() {
                let (m, sd) = mean_std(&chunk.to_owned());
                moments.push((t, i, m, sd * sd));
            }
        }
    }
    // ANCHOR_END: chain_experiment
    let mut table = Table::new(["t", "x_0", "mean", "theory", "z", "variance", "theory", "z"]);
    let mut worst = (0.0f64, String::new());
    for &(t, i, m, v) in &moments {
        let ab = schedule.alpha_bar(t);
        let (m_th, v_th) = (ab.sqrt() * f64::from(starts[i]), 1.0 - ab);
        let z_m = (m - m_th) / (v_th / n as f64).sqrt();
        let z_v = (v - v_th) / (v_th * (2.0 / (n as f64 - 1.0)).sqrt());
        for (z, what) in [(z_m, "mean"), (z_v, "variance")] {
            if z.abs() > worst.0 {
                worst = (
                    z.abs(),
                    format!("the {what} at t = {t}, x_0 = {}", starts[i]),
                );
            }
        }
        table.row([
            t.to_string(),
            format!("{:+.1}", starts[i]),
            format!("{m:+.5}"),
            format!("{m_th:+.5}"),
            format!("{z_m:+.2}"),
            format!("{v:.5}"),
            format!("{v_th:.5}"),
            format!("{z_v:+.2}"),
        ]);
    }
    println!("{table}\n");
    let verdict = format!(
        "Largest deviation over {} comparisons: {:.2} standard errors ({}). With this many \
         comparisons, up to about 3 is what chance alone gives.",
        2 * moments.len(),
        worst.0,
        worst.1
    );
    nb.say(&verdict);
    write_md(
        &out,
        "chain_vs_closed_form.md",
        &format!("{}\n{verdict}\n", table.to_markdown()),
    )?;
    chain_histograms(&schedule, &out, args.seed, n)?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Where it ends: every image becomes N(0, 1)");
    nb.say(
        "Whatever the picture, its pixel histogram is dragged onto the standard normal. The \
         closed form predicts the whole path: mean sqrt(alpha_bar) m_0, standard deviation \
         sqrt(alpha_bar s_0^2 + 1 - alpha_bar), correlation with the original \
         sqrt(alpha_bar) s_0 / std. Measured on the photograph:",
    );
    let mut stats = Table::new([
        "t",
        "SNR",
        "mean",
        "theory",
        "std",
        "theory",
        "corr(x_t, x_0)",
        "theory",
    ]);
    for &t in &TIMESTEPS {
        let mut row = vec![t.to_string(), fmt_db(schedule.snr_db(t))];
        row.extend(stats_cells(&schedule, &x0, &eps, t)?);
        stats.row(row);
    }
    println!("{stats}\n");
    write_md(&out, "forward_stats.md", &stats.to_markdown())?;
    save_panels(
        &out.join("pixel_histograms.png"),
        &[histogram_panel(&schedule, &x0, &eps, &TIMESTEPS)?],
        (760, 460),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Linear vs cosine: how fast information is destroyed");
    nb.say(
        "The schedule decides how quickly the signal fades. DDPM's linear betas wipe the image \
         out early and then spend hundreds of steps on near-pure noise; Nichol and Dhariwal's \
         cosine schedule keeps the image longer; Stable Diffusion's scaled_linear sits between. \
         None of them quite reaches zero signal at t = 999; the zero-terminal-SNR rescale \
         (Lin et al. 2024) forces alpha_bar_999 = 0 so that training sees pure noise, as \
         sampling does.",
    );
    // ANCHOR: compare_schedules
    let mut configs: Vec<ScheduleConfig> = BetaSchedule::ALL
        .into_iter()
        .map(ScheduleConfig::for_schedule)
        .collect();
    configs.push(ScheduleConfig {
        rescale_betas_zero_snr: true,
        ..ScheduleConfig::default()
    });
    let schedules = configs
        .iter()
        .map(|&c| NoiseSchedule::new(c))
        .collect::<Result<Vec<_>, _>>()?;
    // ANCHOR_END: compare_schedules
    let mut summary = Table::new([
        "schedule",
        "alpha_bar_500",
        "SNR = 1 at t",
        "t with SNR > +20 dB",
        "t with SNR < -20 dB",
        "alpha_bar_999",
    ]);
    let mut rows = Vec::new();
    for s in &schedules {
        let crossing = (0..1000)
            .find(|&t| s.snr(t) < 1.0)
            .map_or("-".into(), |t| t.to_string());
        let clean = (0..1000).filter(|&t| s.snr_db(t) > 20.0).count();
        let noise = (0..1000).filter(|&t| s.snr_db(t) < -20.0).count();
        summary.row([
            s.config.label(),
            format!("{:.3}", s.alpha_bar(500)),
            crossing,
            clean.to_string(),
            noise.to_string(),
            format!("{:.2e}", s.alpha_bar(999)),
        ]);
        rows.extend(noising_tiles(s, &x0, &eps, &TIMESTEPS)?.into_iter().skip(1));
    }
    println!("{summary}\n");
    write_md(&out, "schedules.md", &summary.to_markdown())?;
    save_panels(
        &out.join("schedules.png"),
        &schedule_panels(&configs)?,
        (640, 440),
    )?;
    let cmp = labelled_grid(
        &rows,
        TIMESTEPS.len(),
        Some("Rows: linear | scaled_linear | squaredcos_cap_v2 | scaled_linear + zero SNR"),
    )?;
    save_png(&cmp, &out.join("schedule_comparison.png"))?;
    let linear = &schedules[0];
    let linear_noise = (0..1000).filter(|&t| linear.snr_db(t) < -20.0).count();
    let verdict = format!(
        "Under the linear schedule only {:.0}% of x_0's variance is left at t = 500, and \
         {linear_noise} of the 1000 timesteps are below -20 dB: nearly pure noise, from which \
         the model can learn little. That waste is why later models moved to cosine-like \
         schedules, or rescaled the ones they had.",
        100.0 * linear.alpha_bar(500)
    );
    nb.say(&format!(
        "Read the table with the figure (schedule_comparison.png). {verdict}"
    ));
    write_md(&out, "schedules_verdict.md", &format!("{verdict}\n"))?;

    nb.cell("What we have, and what comes next");
    nb.say(&format!(
        "We can now take any image to any t in one step, which is exactly what training needs: \
         pick an image, pick a t, add known noise, and ask a network to say what noise was added. \
         That network is chapter 2. Figures and tables are in {}.",
        out.display()
    ));
    Ok(())
}

/// Histograms of 1000-step chains started at x_0 = 1 against the closed-form density
/// N(sqrt(alpha_bar_t), 1 - alpha_bar_t), at three timesteps.
fn chain_histograms(
    schedule: &NoiseSchedule,
    out: &Path,
    seed: u64,
    n: usize,
) -> anyhow::Result<()> {
    let shown = [49usize, 249, 999];
    let mut x = Array1::<f32>::ones(n); // (n,): n chains, all starting at x_0 = 1
    let mut rng = seeded_rng(seed + 3);
    let mut panel = Panel {
        title: format!("{n} chains from x_0 = 1 (solid) vs closed form (dashed)"),
        x_label: "x_t".into(),
        y_label: "density".into(),
        x_range: Some((-3.5, 3.5)),
        ..Panel::default()
    };
    for t in 0..=999 {
        x = markov_step(schedule, &x, &randn(x.raw_dim(), &mut rng), t)?;
        if let Some(i) = shown.iter().position(|&s| s == t) {
            panel.series.push(Series::new(
                format!("chain, t = {t}"),
                density(x.iter(), -3.5, 3.5, 70),
                i,
            ));
            let (m, v) = (schedule.sqrt_alpha_bar(t), 1.0 - schedule.alpha_bar(t));
            let pdf = (0..=200)
                .map(|k| -3.5 + 7.0 * f64::from(k) / 200.0)
                .map(|z| {
                    (
                        z,
                        (-(z - m).powi(2) / (2.0 * v)).exp()
                            / (2.0 * std::f64::consts::PI * v).sqrt(),
                    )
                });
            panel
                .series
                .push(Series::new(format!("closed form, t = {t}"), pdf.collect(), i).dashed());
        }
    }
    save_panels(&out.join("chain_vs_closed_form.png"), &[panel], (760, 460))?;
    Ok(())
}

fn write_md(out: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    write_atomic(&out.join(name), text.as_bytes())?;
    Ok(())
}
