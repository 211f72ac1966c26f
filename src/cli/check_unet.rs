//! `inkdrop check-unet`: does the trained UNet draw what the prompt says? Generates pictures for
//! 16 prompts "a {colour} {shape}" and reads colour and shape back with the palette detector.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::Args;
use inkdrop::clip::bundle::{default_clip_path, default_tokenizer_path, ClipBundle};
use inkdrop::unet::bundle::{default_unet_path, UNetBundle};
use inkdrop::unet::eval::{check_attributes, check_prompts};
use inkdrop::vae::bundle::{default_vae_path, VaeBundle};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Images per prompt.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    pub per_prompt: usize,
    /// DDPM steps (strided from 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    pub steps: usize,
    /// Classifier-free guidance scale (1 = no guidance).
    #[arg(long, default_value_t = 4.0)]
    pub guidance_scale: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the grid of generated pictures (one row of `per_prompt` per prompt pair).
    #[arg(long, default_value = "check.png")]
    pub out: PathBuf,
    /// UNet weights [default: data/unet.safetensors].
    #[arg(long)]
    pub unet: Option<PathBuf>,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let clip = ClipBundle::load(&default_clip_path(), &default_tokenizer_path())?;
    let vae = VaeBundle::load(&default_vae_path())?;
    let unet = UNetBundle::load(&args.unet.clone().unwrap_or_else(default_unet_path))?;
    let started = std::time::Instant::now();
    let (check, images) = check_attributes(
        &unet,
        &clip,
        &vae.vae,
        args.per_prompt,
        args.guidance_scale,
        args.steps,
        args.seed,
    )?;
    let cols = (2 * args.per_prompt).clamp(1, 16);
    inkdrop::support::image_io::save_png(
        &inkdrop::support::grid::image_grid(&images, cols, 3),
        &args.out,
    )?;
    let prompts: Vec<String> = check_prompts()
        .iter()
        .map(|(c, s)| format!("a {} {}", c.word(), s.word()))
        .collect();
    println!(
        "{} pictures ({} per prompt; DDPM {} steps, guidance {}) in {:.1} s\n\
         largest object has the prompt's colour: {:.1}%, shape: {:.1}%, both: {:.1}%\n\
         prompts, in grid order: {}\nwrote {}",
        check.images,
        args.per_prompt,
        args.steps,
        args.guidance_scale,
        started.elapsed().as_secs_f64(),
        100.0 * check.color_accuracy,
        100.0 * check.shape_accuracy,
        100.0 * check.both_accuracy,
        prompts.join(", "),
        args.out.display()
    );
    Ok(())
}
