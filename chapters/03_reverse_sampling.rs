//! Chapter 3: reverse sampling. Start from pure noise, ask the trained UNet which noise it
//! sees, remove a little of it, repeat: the film of chapter 1 run backwards. This chapter runs
//! that loop by hand, then compares the five samplers (schedulers) diffusers ships.
//!
//! ```text
//! cargo run --release --bin ch03_reverse_sampling                  # run straight through
//! cargo run --release --bin ch03_reverse_sampling -- --interactive # pause between cells
//! cargo run --release --bin ch03_reverse_sampling -- --book        # refresh the book's figures
//! ```
//!
//! Uses the shipped `data/clip.safetensors`, `data/vae.safetensors` and `data/unet.safetensors`
//! (retrain them with `inkdrop train all`). Cells match the sections of
//! `book/src/ch03_reverse_sampling.md`. Leaves out: Karras sigmas, SDE variants of DPM-Solver,
//! PNDM/PLMS and LCM; all would fit the same `Scheduler` trait.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clap::builder::TypedValueParser;
use clap::Parser;
use inkdrop::noising::randn_tensor;
use inkdrop::pipeline::{GenerateRequest, Generation, TextToImage, Trace};
use inkdrop::schedulers::{PredictionType, SamplerKind, SchedulerConfig, TimestepSpacing};
use inkdrop::support::cli_name;
use inkdrop::support::files::{chapter_out_dir, write_atomic};
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{enlarge, save_png};
use inkdrop::support::notebook::Notebook;
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, seeded_rng, DEFAULT_SEED};

/// Chapter 3 of inkdrop: reverse sampling, as a notebook in the terminal.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Pause between cells (press Enter); ignored when stdout is not a terminal.
    #[arg(long)]
    interactive: bool,
    /// Write figures and tables into the book (`book/src/generated/ch03/`).
    #[arg(long, conflicts_with = "out")]
    book: bool,
    /// Output folder for figures and tables [default: target/inkdrop/ch03].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// The prompt every cell draws.
    #[arg(long, default_value = "a yellow circle")]
    prompt: String,
    /// Step counts every sampler is run at (the largest also sets the DDPM/DDIM comparison).
    #[arg(long, value_delimiter = ',', default_value = "5,10,25,50")]
    steps: Vec<usize>,
    /// Steps of the reference solution the samplers are measured against.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u16).range(50..=1000).map(usize::from))]
    reference_steps: usize,
}

fn main() -> std::process::ExitCode {
    run_main(|| run(Args::parse()))
}

fn tile(img: &image::RgbImage, caption: &[String]) -> Tile {
    Tile {
        image: enlarge(img, 4),
        caption: caption.to_vec(),
    }
}

/// RMS of the difference of two latents.
fn rms_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    Ok(Trace::rms(&(a - b)?))
}

/// Pictures in the sampler table: each distance is the median over them, so one picture whose
/// layout tipped the other way at a coarse step does not decide the row.
const SAMPLER_PICTURES: usize = 8;

/// Median over pictures of the RMS difference of two batches of latents (N, 4, h, w).
fn median_rms_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let mut d = (0..a.dim(0)?)
        .map(|i| rms_diff(&a.get(i)?, &b.get(i)?))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    d.sort_by(f64::total_cmp);
    let n = d.len();
    Ok((d[(n - 1) / 2] + d[n / 2]) / 2.0)
}

fn run(args: Args) -> anyhow::Result<()> {
    let out = chapter_out_dir("ch03", args.book, args.out.as_deref())?;
    let write_md = |name: &str, text: &str| write_atomic(&out.join(name), text.as_bytes());
    let mut nb = Notebook::new("Chapter 3: reverse sampling", args.interactive);
    let pipe = TextToImage::load_default()?;
    let dev = Device::Cpu;
    let request = |sampler: SamplerKind, steps: usize| GenerateRequest {
        prompt: args.prompt.clone(),
        sampler,
        steps,
        seed: args.seed,
        ..GenerateRequest::default()
    };

    // ---------------------------------------------------------------------------------------
    nb.cell("Six steps back");
    nb.say(&format!(
        "The prompt is {:?}. Guidance runs the UNet twice per step, once with the prompt and \
         once with the empty prompt, and extrapolates from the second toward the first \
         (chapter 7 takes that apart); here we look at the loop itself, DDIM with 10 steps.",
        args.prompt
    ));
    let context = pipe.encoder_hidden_states(&[String::new(), args.prompt.clone()])?; // (2, 16, 128)
    let mut rng = seeded_rng(args.seed);
    let [c, h, w] = pipe.latent_shape();
    // ANCHOR: six_steps
    // 1. Choose the timesteps to visit.
    let config = SchedulerConfig {
        prediction_type: PredictionType::Epsilon, // we hand it noise estimates
        ..pipe.scheduler_config()                 // the schedule the UNet was trained on
    };
    let mut scheduler = SamplerKind::Ddim.build(config, 10)?;
    // 2. Start from pure noise.
    let mut x = (randn_tensor(&[1, c, h, w], &mut rng, &dev)? * scheduler.init_noise_sigma())?; // (1, 4, 8, 8)
    let mut log = Vec::new();
    for t in scheduler.timesteps().to_vec() {
        // 3. Ask the UNet which noise it sees (with and without the prompt).
        let input = scheduler.scale_model_input(&x, t)?;
        let both = Tensor::cat(&[&input, &input], 0)?; // (2, 4, 8, 8)
        let eps = pipe.unet.predict_noise(&both, &[t as usize; 2], &context)?; // (2, 4, 8, 8)

        // 4. Guidance: push from the unconditional prediction toward the conditional one.
        let (eps_uncond, eps_cond) = (eps.narrow(0, 0, 1)?, eps.narrow(0, 1, 1)?);
        let eps = (&eps_uncond + ((&eps_cond - &eps_uncond)? * 7.5)?)?; // (1, 4, 8, 8)

        // 5. Remove a little of it: the scheduler's step to the next, less noisy, timestep.
        let step = scheduler.step(&eps, t, &x, &mut rng)?;
        log.push((
            t,
            Trace::rms(&x),
            Trace::rms(&eps),
            Trace::rms(&step.pred_original_sample),
        ));
        x = step.prev_sample;
    } // 6. Repeat until t reaches 1, then decode x with the VAE.
    let image = &pipe.decode(&x)?[0]; // (3, 32, 32) as an image
                                      // ANCHOR_END: six_steps
    let mut table = Table::new([
        "step",
        "t",
        "alpha_bar_t",
        "rms(x_t)",
        "rms(eps)",
        "rms(x0_hat)",
    ]);
    for (i, (t, xr, er, x0r)) in log.iter().enumerate() {
        table.row([
            (i + 1).to_string(),
            format!("{t:.0}"),
            format!("{:.4}", scheduler.alpha_bar(*t)),
            format!("{xr:.3}"),
            format!("{er:.3}"),
            format!("{x0r:.3}"),
        ]);
    }
    println!("{table}\n");
    write_md("six_steps.md", &table.to_markdown())?;
    save_png(&enlarge(image, 4), &out.join("six_steps.png"))?;
    let check = pipe.generate(&request(SamplerKind::Ddim, 10))?;
    let same = rms_diff(&check.latents, &x)?;
    println!("the pipeline's `generate` with the same settings lands {same:.2e} away (RMS)\n");
    write_md(
        "six_steps_check.md",
        &format!(
            "`TextToImage::generate` with the same prompt, seed, sampler and steps ends {} away \
             (RMS over the latent), so the pipeline is this loop (up to float rounding: the \
             pipeline hands DDIM the UNet's own output, this loop the noise it implies).\n",
            if same == 0.0 {
                "0.0".to_string()
            } else {
                format!("{same:.1e}")
            }
        ),
    )?;
    nb.say(
        "rms(x_t) stays near 1 (the schedule keeps the variance), so does the noise estimate \
         (the network always predicts unit-size noise; what changes is its weight \
         sqrt(1 - alpha_bar_t)), and x0_hat, the clean latent each step believes in, settles \
         long before the last step.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Dice or no dice: DDPM and DDIM");
    let most = args
        .steps
        .iter()
        .copied()
        .max()
        .unwrap_or(50)
        .clamp(1, 1000);
    // ANCHOR: ddpm_vs_ddim
    let run_with = |sampler: SamplerKind, step_seed: u64| -> anyhow::Result<Generation> {
        Ok(pipe.generate(&GenerateRequest {
            step_seed: Some(step_seed),
            num_images: 4,
            ..request(sampler, most)
        })?)
    };
    let ddpm = [
        run_with(SamplerKind::Ddpm, 1)?,
        run_with(SamplerKind::Ddpm, 2)?,
    ];
    let ddim = [
        run_with(SamplerKind::Ddim, 1)?,
        run_with(SamplerKind::Ddim, 2)?,
    ];
    // ANCHOR_END: ddpm_vs_ddim
    let mut tiles = Vec::new();
    for (name, runs) in [("DDPM", &ddpm), ("DDIM", &ddim)] {
        for (r, g) in runs.iter().enumerate() {
            for (k, img) in g.images.iter().enumerate() {
                tiles.push(tile(
                    img,
                    &[
                        format!("{name}, dice {}", r + 1),
                        format!("seed {}", args.seed + k as u64),
                    ],
                ));
            }
        }
    }
    save_png(
        &labelled_grid(
            &tiles,
            8,
            Some("same starting noise; DDPM draws fresh noise every step, DDIM does not"),
        )?,
        &out.join("ddpm_vs_ddim.png"),
    )?;
    let mut table = Table::new(["sampler", "RMS difference between the two runs (latents)"]);
    for (name, runs) in [("DDPM (eta = 1)", &ddpm), ("DDIM (eta = 0)", &ddim)] {
        table.row([
            name.to_string(),
            format!("{:.4}", rms_diff(&runs[0].latents, &runs[1].latents)?),
        ]);
    }
    println!("{table}\n");
    write_md("ddpm_vs_ddim.md", &table.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Where the steps go");
    let mut table = Table::new(["sampler", "spacing", "timesteps visited (10 steps)"]);
    for kind in SamplerKind::ALL {
        let s = kind.build(SchedulerConfig::default(), 10)?;
        table.row([
            kind.name().to_string(),
            cli_name(SchedulerConfig::default().timestep_spacing),
            fmt_ts(s.timesteps()),
        ]);
    }
    for spacing in [TimestepSpacing::Trailing, TimestepSpacing::Linspace] {
        let cfg = SchedulerConfig {
            timestep_spacing: spacing,
            ..SchedulerConfig::default()
        };
        let s = SamplerKind::Ddim.build(cfg, 10)?;
        table.row(["ddim".to_string(), cli_name(spacing), fmt_ts(s.timesteps())]);
    }
    println!("{table}\n");
    write_md("timesteps.md", &table.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Five samplers, 5 to 50 steps");
    let trailing = SchedulerConfig {
        timestep_spacing: TimestepSpacing::Trailing,
        ..SchedulerConfig::default()
    };
    let reference = pipe.generate(&GenerateRequest {
        steps: args.reference_steps,
        scheduler: trailing,
        num_images: SAMPLER_PICTURES,
        ..request(SamplerKind::Ddim, 0)
    })?;
    let counts = args.steps.clone();
    let mut tiles = Vec::new();
    let mut table = Table::new(
        std::iter::once("sampler".to_string())
            .chain(counts.iter().map(|n| format!("{n} steps")))
            .collect::<Vec<_>>(),
    );
    for kind in SamplerKind::ALL {
        let mut row = vec![kind.name().to_string()];
        let mut ms = Vec::new();
        for &n in &counts {
            let g = pipe.generate(&GenerateRequest {
                scheduler: trailing,
                num_images: SAMPLER_PICTURES,
                ..request(kind, n)
            })?;
            row.push(format!(
                "{:.3}",
                median_rms_diff(&g.latents, &reference.latents)?
            ));
            ms.push(1e3 * g.trace.steps.iter().map(|s| s.seconds).sum::<f64>() / n as f64);
            tiles.push(tile(&g.images[0], &[format!("{kind}, {n} steps")]));
        }
        println!(
            "{kind:>8}: {:.0} ms per step on this machine ({SAMPLER_PICTURES} pictures: a UNet batch of {} with guidance)",
            ms.iter().sum::<f64>() / ms.len() as f64,
            2 * SAMPLER_PICTURES
        );
        table.row(row);
    }
    println!(
        "\nRMS distance of the final latents from a {}-step DDIM solution (median over {SAMPLER_PICTURES} pictures):\n{table}\n",
        args.reference_steps
    );
    write_md("samplers.md", &table.to_markdown())?;
    save_png(
        &labelled_grid(
            &tiles,
            counts.len(),
            Some(&format!("\"{}\", seed {}", args.prompt, args.seed)),
        )?,
        &out.join("samplers.png"),
    )?;
    write_md(
        "samplers_note.md",
        &format!(
            "Each distance is the RMS over one picture's 4 x 8 x 8 latent, the median over {} \
             pictures (seeds {}..{}; the figure shows the first), all with trailing spacing so \
             every sampler starts at t = 999, against DDIM with {} steps. Every step costs the \
             same, two UNet evaluations (guidance), whatever the sampler.\n",
            SAMPLER_PICTURES,
            args.seed,
            args.seed + SAMPLER_PICTURES as u64 - 1,
            args.reference_steps
        ),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Coarse to fine");
    // ANCHOR: trajectory
    let n = 25.min(most);
    let g = pipe.generate(&request(SamplerKind::Ddim, n))?;
    let mut shown: Vec<usize> = (0..9).map(|k| k * (n - 1) / 8).collect(); // 0, 3, ..., 24
    shown.dedup();
    let mut tiles = Vec::new();
    for row in ["x_t", "x0_hat"] {
        for &i in &shown {
            let step = &g.trace.steps[i];
            let latents = if row == "x_t" {
                &step.latents
            } else {
                &step.pred_x0
            }; // (1, 4, 8, 8)
            let img = &pipe.decode(latents)?[0];
            tiles.push(tile(img, &[format!("{row}, t={:.0}", step.t)]));
        }
    }
    // ANCHOR_END: trajectory
    save_png(
        &labelled_grid(&tiles, shown.len(), None)?,
        &out.join("trajectory.png"),
    )?;
    let final_x0 = &g.trace.steps[n - 1].pred_x0;
    let mut table = Table::new(["step", "t", "RMS(x0_hat - final x0_hat)"]);
    for &i in &shown {
        let s = &g.trace.steps[i];
        table.row([
            (i + 1).to_string(),
            format!("{:.0}", s.t),
            format!("{:.3}", rms_diff(&s.pred_x0, final_x0)?),
        ]);
    }
    println!("{table}\n");
    write_md("trajectory.md", &table.to_markdown())?;
    nb.say(
        "The decoded x_t is mostly noise until the last third; the predicted x0 shows the \
         layout (background, where the object is) within the first few steps and then only \
         refines edges and colour: coarse to fine.",
    );
    Ok(())
}

/// "901, 801, ..., 1".
fn fmt_ts(ts: &[f64]) -> String {
    ts.iter()
        .map(|t| {
            if t.fract() == 0.0 {
                format!("{t:.0}")
            } else {
                format!("{t:.1}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
