//! `inkdrop eval`: generate for a prompt set and report prompt adherence (colour, shape,
//! relation, read back with the Shapes World palette) and CLIP similarity, seen and held-out
//! (colour, shape) pairs apart.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use inkdrop::pipeline::eval::{default_prompts, evaluate, EvalReport};
use inkdrop::pipeline::{GenerateRequest, TextToImage};
use inkdrop::schedulers::{SamplerKind, SchedulerConfig, TimestepSpacing};
use inkdrop::support::grid::{labelled_grid, spread_words, Tile};
use inkdrop::support::image_io::{enlarge, save_png};
use inkdrop::support::table::Table;
use inkdrop::unet::bundle::default_unet_path;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A text file with one prompt per line [default: 28 one-object and 16 two-object prompts].
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Pictures per prompt (seeds seed, seed + 1, ...).
    #[arg(long, default_value_t = 4)]
    pub per_prompt: usize,
    /// Sampler.
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    pub sampler: SamplerKind,
    /// Denoising steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// How the steps are spread over the 1000 training timesteps (SD v1.5: leading; Lin et al.
    /// recommend trailing for a UNet trained with zero terminal SNR).
    #[arg(long, value_enum, default_value_t = TimestepSpacing::Leading)]
    pub timestep_spacing: TimestepSpacing,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub guidance_scale: f64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write every picture, one row per prompt, to this PNG.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// UNet weights [default: data/unet.safetensors].
    #[arg(long)]
    pub unet: Option<PathBuf>,
    /// A folder with all four models (tokenizer.json, clip.safetensors, vae.safetensors,
    /// unet.safetensors), e.g. what `inkdrop train all --data-dir DIR` wrote [default: data/].
    #[arg(long, conflicts_with = "unet")]
    pub models: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let prompts: Vec<String> = match &args.prompts {
        None => default_prompts(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| {
                format!(
                    "cannot read the prompt file {}; give a text file with one prompt per line",
                    path.display()
                )
            })?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
    };
    anyhow::ensure!(
        !prompts.is_empty(),
        "the prompt file has no prompts; write one per line"
    );
    let base = GenerateRequest {
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        sampler: args.sampler,
        scheduler: SchedulerConfig {
            timestep_spacing: args.timestep_spacing,
            ..SchedulerConfig::default()
        },
        seed: args.seed,
        num_images: args.per_prompt,
        ..GenerateRequest::default()
    };
    base.validate()?;
    inkdrop::pipeline::eval::parse_prompts(&prompts)?;
    let pipe = match &args.models {
        Some(dir) => TextToImage::load_dir(dir)?,
        None => TextToImage::load(&args.unet.clone().unwrap_or_else(default_unet_path))?,
    };
    let bar = ProgressBar::new(prompts.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} prompts  {msg}  {elapsed} (eta {eta})")
            .context("progress template")?,
    );
    let mut rows: Vec<Tile> = Vec::new();
    let started = std::time::Instant::now();
    let report = evaluate(&pipe, &prompts, &base, &mut |_, score, images| {
        bar.set_message(score.prompt.clone());
        bar.inc(1);
        if args.out.is_some() {
            // The prompt reads left to right under its pictures, a few words under each, on a
            // second line across them when one is not enough.
            let n = images.len();
            let words = spread_words(&score.prompt, 2 * n, 9);
            let two_lines = words[n..].iter().any(|w| !w.is_empty());
            for (k, img) in images.iter().enumerate() {
                let mut caption = vec![words[k].clone()];
                if two_lines {
                    caption.push(words[n + k].clone());
                }
                rows.push(Tile {
                    image: enlarge(img, 2),
                    caption,
                });
            }
        }
    })?;
    bar.finish_and_clear();
    if let Some(out) = &args.out {
        save_png(
            &labelled_grid(&rows, args.per_prompt.max(1) * 2, None)?,
            out,
        )?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(
            &report,
            started.elapsed().as_secs_f64(),
            args.timestep_spacing,
        );
        if let Some(out) = &args.out {
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn pct(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * x)
    }
}

fn print_report(r: &EvalReport, seconds: f64, spacing: TimestepSpacing) {
    println!(
        "{} prompts x {} pictures ({} {} steps, {} spacing, guidance {}, seeds {}..{}) in {:.0} s\n",
        r.prompts.len(),
        r.per_prompt_images,
        r.sampler,
        r.steps,
        inkdrop::support::cli_name(spacing),
        r.guidance_scale,
        r.seed,
        r.seed + r.per_prompt_images as u64 - 1,
        seconds
    );
    let mut t = Table::new([
        "prompts",
        "n",
        "pictures",
        "colour",
        "shape",
        "relation",
        "CLIP cosine",
    ]);
    for (name, g) in &r.groups {
        t.row([
            name.clone(),
            g.prompts.to_string(),
            g.images.to_string(),
            pct(g.color),
            pct(g.shape),
            pct(g.relation),
            format!("{:.3}", g.clip_similarity),
        ]);
    }
    for (name, g) in &r.ceiling {
        t.row([
            name.clone(),
            "-".into(),
            g.images.to_string(),
            pct(g.color),
            pct(g.shape),
            pct(g.relation),
            "-".into(),
        ]);
    }
    println!("{t}");
    println!(
        "colour: each named colour is in the picture (one object: the largest object has it); \
         shape: that object has the named shape;\nrelation: the two objects' centres stand as \
         the prompt says. Read back with the Shapes World palette, no model involved.\n\
         ceiling: the same checks on real Shapes World pictures after a VAE round trip, the most \
         a perfect denoiser could score."
    );
}
