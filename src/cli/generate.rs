//! `inkdrop generate`: a prompt in, pictures out, with the shipped models; optionally one picture
//! per denoising step of x_t and of the predicted x0.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use inkdrop::pipeline::{GenerateRequest, Generation, TextToImage};
use inkdrop::schedulers::{SamplerKind, SchedulerConfig, TimestepSpacing};
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{enlarge, load_image, save_png};
use inkdrop::unet::bundle::default_unet_path;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to draw, e.g. "a red circle above a blue square". Empty: unconditional generation.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// The text guidance pushes away from (the unconditional branch); empty by default.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Classifier-free guidance scale: 0 ignores the prompt, 1 is no guidance, higher follows
    /// the prompt harder.
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub guidance_scale: f64,
    /// Sampler (scheduler).
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    pub sampler: SamplerKind,
    /// How the steps are spread over the 1000 training timesteps (SD v1.5: leading).
    #[arg(long, value_enum, default_value_t = TimestepSpacing::Leading)]
    pub timestep_spacing: TimestepSpacing,
    /// Seed: image k starts from the noise of seed + k.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How many pictures.
    #[arg(long, default_value_t = 4)]
    pub num_images: usize,
    /// img2img: start from this picture instead of pure noise.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// img2img: how far back toward noise the picture goes before denoising, in (0, 1].
    #[arg(
        long,
        default_value_t = 0.6,
        requires = "image",
        allow_negative_numbers = true
    )]
    pub strength: f64,
    /// Where to write the picture (a labelled grid when there are several).
    #[arg(long, default_value = "generated.png")]
    pub out: PathBuf,
    /// Also write x_t and the predicted x0 of every step into this folder.
    #[arg(long)]
    pub save_steps: Option<PathBuf>,
    /// UNet weights [default: data/unet.safetensors].
    #[arg(long)]
    pub unet: Option<PathBuf>,
    /// A folder with all four models (tokenizer.json, clip.safetensors, vae.safetensors,
    /// unet.safetensors), e.g. what `inkdrop train all --data-dir DIR` wrote [default: data/].
    #[arg(long, conflicts_with = "unet")]
    pub models: Option<PathBuf>,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let init_image = match &args.image {
        Some(path) => Some((load_image(path)?, args.strength)),
        None => None,
    };
    let req = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        sampler: args.sampler,
        scheduler: SchedulerConfig {
            timestep_spacing: args.timestep_spacing,
            ..SchedulerConfig::default()
        },
        seed: args.seed,
        step_seed: None,
        num_images: args.num_images,
        init_image,
        ..GenerateRequest::default()
    };
    req.validate()?;
    if args.prompt.trim().is_empty() {
        eprintln!(
            "note: empty prompt, so this is unconditional generation (any Shapes World scene)"
        );
    }
    if let Some((img, _)) = &req.init_image {
        if img.dimensions() != (32, 32) {
            eprintln!(
                "note: the init image is {}x{}; it is centre-cropped and resized to 32x32",
                img.width(),
                img.height()
            );
        }
    }
    let pipe = match &args.models {
        Some(dir) => TextToImage::load_dir(dir)?,
        None => TextToImage::load(&args.unet.clone().unwrap_or_else(default_unet_path))?,
    };
    let generation = pipe.generate(&req)?;
    let grid = result_grid(&req, &generation)?;
    save_png(&grid, &args.out)?;
    let trace = &generation.trace;
    println!(
        "{} picture(s) of {:?} ({} {} steps, guidance {}, seed {}) in {:.2} s \
         (text {:.0} ms, denoising {:.0} ms, decoding {:.0} ms)\nwrote {}",
        generation.images.len(),
        args.prompt,
        args.sampler,
        trace.steps.len(),
        args.guidance_scale,
        args.seed,
        trace.total_seconds,
        trace.text_seconds * 1e3,
        trace.steps.iter().map(|s| s.seconds).sum::<f64>() * 1e3,
        trace.decode_seconds * 1e3,
        args.out.display()
    );
    if let Some(dir) = &args.save_steps {
        let n = save_steps(&pipe, &generation, dir)?;
        println!("wrote {n} step pictures to {}", dir.display());
    }
    if inkdrop::support::terminal::preview(&grid, 60) {
        println!();
    }
    Ok(())
}

/// The pictures, 4x enlarged, each captioned with its seed.
fn result_grid(req: &GenerateRequest, generation: &Generation) -> anyhow::Result<image::RgbImage> {
    if generation.images.len() == 1 {
        return Ok(enlarge(&generation.images[0], 4));
    }
    let tiles: Vec<Tile> = generation
        .images
        .iter()
        .enumerate()
        .map(|(k, img)| Tile {
            image: enlarge(img, 4),
            caption: vec![format!("seed {}", req.seed + k as u64)],
        })
        .collect();
    let title = if req.prompt.is_empty() {
        "(no prompt)".to_string()
    } else {
        format!("\"{}\"", req.prompt)
    };
    Ok(labelled_grid(&tiles, tiles.len().min(8), Some(&title))?)
}

/// Writes `xt_NNN_tT.png` and `x0_NNN_tT.png` (all images of the batch side by side) per step.
fn save_steps(pipe: &TextToImage, generation: &Generation, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}; pick another --save-steps folder",
            dir.display()
        )
    })?;
    let mut written = 0;
    for step in &generation.trace.steps {
        for (kind, latents) in [("xt", &step.latents), ("x0", &step.pred_x0)] {
            let images: Vec<_> = pipe
                .decode(latents)?
                .iter()
                .map(|i| enlarge(i, 4))
                .collect();
            let strip = inkdrop::support::grid::plain_strip(&images);
            let name = format!("{kind}_{:03}_t{:.0}.png", step.index, step.t);
            save_png(&strip, &dir.join(name))?;
            written += 1;
        }
    }
    Ok(written)
}
