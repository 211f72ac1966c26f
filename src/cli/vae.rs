//! `inkdrop vae ...`: push an image through the VAE and back, or move between images and latent
//! files.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use inkdrop::clip::bundle::fit_image;
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{enlarge, load_image, save_png};
use inkdrop::vae::bundle::{default_vae_path, VaeBundle};
use inkdrop::vae::io::{decode_latents, encode_image, error_map, load_latents, psnr, save_latents};

#[derive(Debug, Args)]
pub struct VaeArgs {
    #[command(subcommand)]
    pub what: VaeWhat,
    /// VAE weights [default: data/vae.safetensors].
    #[arg(long, global = true)]
    pub weights: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum VaeWhat {
    /// Encode and decode an image; write original | reconstruction | error map with the PSNR.
    Roundtrip {
        /// The image (PNG or JPEG; cropped to a square and resized to 32x32 if needed).
        #[arg(long)]
        image: PathBuf,
        /// Where to write the comparison PNG.
        #[arg(long, default_value = "roundtrip.png")]
        out: PathBuf,
    },
    /// Encode an image to its latents (x scaling_factor, the UNet's space) in a safetensors file.
    Encode {
        /// The image (PNG or JPEG; cropped to a square and resized to 32x32 if needed).
        #[arg(long)]
        image: PathBuf,
        /// Where to write the latents.
        #[arg(long, default_value = "latents.safetensors")]
        out: PathBuf,
    },
    /// Decode a latent file written by `inkdrop vae encode` (or a pipeline) to a PNG.
    Decode {
        /// The latent file (a tensor named "latents", (4, 8, 8) or (N, 4, 8, 8)).
        #[arg(long)]
        latent: PathBuf,
        /// Where to write the image (with N latents, images side by side).
        #[arg(long, default_value = "decoded.png")]
        out: PathBuf,
    },
}

/// Loads the image and fits it to the model's size, saying so when it had to.
fn model_image(path: &std::path::Path, size: u32) -> anyhow::Result<image::RgbImage> {
    let img = load_image(path)?;
    let (img, resized) = fit_image(&img, size);
    if resized {
        eprintln!(
            "note: {} was cropped to a square and resized to {size}x{size}, the VAE's input size",
            path.display()
        );
    }
    Ok(img)
}

pub fn run(args: &VaeArgs) -> anyhow::Result<()> {
    let path = args.weights.clone().unwrap_or_else(default_vae_path);
    let bundle = VaeBundle::load(&path)?;
    let vae = &bundle.vae;
    let size = vae.config.sample_size as u32;
    match &args.what {
        VaeWhat::Roundtrip { image, out } => {
            let img = model_image(image, size)?;
            let latents = encode_image(vae, &img)?;
            let recon = decode_latents(vae, &latents)?.remove(0);
            let db = psnr(&img, &recon);
            let big = |i: &image::RgbImage| enlarge(i, (256 / size).max(1));
            let tiles = [
                Tile {
                    image: big(&img),
                    caption: vec!["original".into(), format!("{size}x{size}x3")],
                },
                Tile {
                    image: big(&recon),
                    caption: vec!["reconstruction".into(), format!("PSNR {db:.1} dB")],
                },
                Tile {
                    image: big(&error_map(&img, &recon, 8.0)),
                    caption: vec!["|error| x 8".into(), "black = exact".into()],
                },
            ];
            let shape = latents.dims().to_vec();
            let grid = labelled_grid(
                &tiles,
                3,
                Some(&format!("through a {:?} latent and back", &shape[1..])),
            )?;
            save_png(&grid, out).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "PSNR {db:.2} dB through latents of shape {:?}; wrote {}",
                &shape[1..],
                out.display()
            );
        }
        VaeWhat::Encode { image, out } => {
            let img = model_image(image, size)?;
            let latents = encode_image(vae, &img)?;
            save_latents(
                out,
                &latents,
                vae.config.scaling_factor,
                &image.display().to_string(),
            )?;
            let v: Vec<f32> = latents.flatten_all()?.to_vec1()?;
            let (lo, hi) = v
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            println!(
                "latents {:?} (scaled by {:.4}), values in [{lo:.2}, {hi:.2}]; wrote {}",
                latents.dims(),
                vae.config.scaling_factor,
                out.display()
            );
        }
        VaeWhat::Decode { latent, out } => {
            let latents = load_latents(latent, vae)?;
            let images = decode_latents(vae, &latents)?;
            let strip = inkdrop::support::grid::image_grid(&images, images.len(), 4);
            save_png(&strip, out).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "decoded {} latent(s) {:?} to {}x{size} pixels; wrote {}",
                images.len(),
                &latents.dims()[1..],
                size,
                out.display()
            );
        }
    }
    Ok(())
}
