//! Chapter 6: the latent space. Stable Diffusion does not denoise pixels: a VAE first squeezes
//! each image into a small grid of latents, the diffusion model works there, and the VAE's
//! decoder turns the result back into pixels. This chapter opens that box.
//!
//! ```text
//! cargo run --release --bin ch06_latent_space                  # run straight through
//! cargo run --release --bin ch06_latent_space -- --interactive # pause between cells
//! cargo run --release --bin ch06_latent_space -- --book        # refresh the book's figures
//! ```
//!
//! Uses the shipped `data/vae.safetensors` (retrain it with `inkdrop train vae`). Cells match the
//! sections of `book/src/ch06_latent_space.md`. Leaves out: the adversarial (GAN) and perceptual
//! (LPIPS) losses SD's VAE was trained with, which sharpen natural photographs; on flat-coloured
//! shapes plain MSE already reaches the quality bar.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clap::Parser;
use image::RgbImage;
use inkdrop::clip::images_tensor;
use inkdrop::noising::{add_noise_tensor, randn_tensor};
use inkdrop::schedule::{NoiseSchedule, ScheduleConfig};
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::support::files::{chapter_out_dir, write_atomic};
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{enlarge, save_png};
use inkdrop::support::notebook::Notebook;
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, seeded_rng, DEFAULT_SEED};
use inkdrop::train::vae::tensor_images;
use inkdrop::vae::bundle::{default_vae_path, VaeBundle};
use inkdrop::vae::eval::{evaluate, held_out};
use inkdrop::vae::io::{error_map, latent_channel_images, psnr};
use inkdrop::weights;

/// Chapter 6 of inkdrop: the latent space, as a notebook in the terminal.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Pause between cells (press Enter); ignored when stdout is not a terminal.
    #[arg(long)]
    interactive: bool,
    /// Write figures and tables into the book (`book/src/generated/ch06/`).
    #[arg(long, conflicts_with = "out")]
    book: bool,
    /// Output folder for figures and tables [default: target/inkdrop/ch06].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the example images and of the noise.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Held-out images in the quality measurement.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    eval_images: u64,
    /// VAE weights [default: data/vae.safetensors].
    #[arg(long)]
    weights: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    run_main(|| run(Args::parse()))
}

fn tile(img: &RgbImage, k: u32, caption: &[&str]) -> Tile {
    Tile {
        image: enlarge(img, k),
        caption: caption.iter().map(|s| s.to_string()).collect(),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let out = chapter_out_dir("ch06", args.book, args.out.as_deref())?;
    let write_md = |name: &str, text: &str| write_atomic(&out.join(name), text.as_bytes());
    let mut nb = Notebook::new("Chapter 6: the latent space", args.interactive);
    let bundle = VaeBundle::load(&args.weights.clone().unwrap_or_else(default_vae_path))?;
    let vae = &bundle.vae;
    let cfg = &vae.config;
    let dev = Device::Cpu;
    let world = WorldConfig::default();
    let size = cfg.sample_size;

    // ---------------------------------------------------------------------------------------
    nb.cell("Why not denoise pixels?");
    // ANCHOR: compression
    let pixels = |side: usize| side * side * 3;
    let latents = |side: usize, factor: usize| 4 * (side / factor) * (side / factor);
    let ours = pixels(32) as f64 / latents(32, 4) as f64; // 3072 / 256
    let sd = pixels(512) as f64 / latents(512, 8) as f64; // 786,432 / 16,384
                                                          // ANCHOR_END: compression
    let mut table = Table::new(["", "image", "numbers", "latent", "numbers", "compression"]);
    table.row([
        "inkdrop",
        "32 x 32 x 3",
        &pixels(32).to_string(),
        "4 x 8 x 8",
        &latents(32, 4).to_string(),
        &format!("{ours:.0}x"),
    ]);
    table.row([
        "Stable Diffusion 1.5",
        "512 x 512 x 3",
        &pixels(512).to_string(),
        "4 x 64 x 64",
        &latents(512, 8).to_string(),
        &format!("{sd:.0}x"),
    ]);
    println!("{table}\n");
    write_md("compression.md", &table.to_markdown())?;
    nb.say(
        "The UNet runs once per denoising step, tens of times per image, and its cost grows \
         with the number of positions it looks at: a 3x3 convolution with C channels in and out \
         costs 2 * 9 * C^2 multiply-adds per position, and self-attention over N positions \
         costs about 4 * N^2 * C, quadratic in N.",
    );
    // ANCHOR: compute
    let conv_flops = |side: usize, c: usize| 2.0 * 9.0 * (c * c * side * side) as f64;
    let attention_flops = |side: usize, c: usize| 4.0 * ((side * side).pow(2) * c) as f64;
    // ANCHOR_END: compute
    let mut compute = Table::new(["one layer", "in pixel space", "in latent space", "saved"]);
    for (name, px, lat) in [
        (
            "inkdrop: 3x3 conv, 64 channels",
            conv_flops(32, 64),
            conv_flops(8, 64),
        ),
        (
            "inkdrop: self-attention, 64 channels",
            attention_flops(32, 64),
            attention_flops(8, 64),
        ),
        (
            "SD: 3x3 conv, 320 channels",
            conv_flops(512, 320),
            conv_flops(64, 320),
        ),
        (
            "SD: self-attention, 320 channels",
            attention_flops(512, 320),
            attention_flops(64, 320),
        ),
    ] {
        compute.row([
            name.to_string(),
            flops(px),
            flops(lat),
            format!("{:.0}x", px / lat),
        ]);
    }
    println!("{compute}\n");
    write_md("compute.md", &compute.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Encoder, decoder and a distribution in between");
    let samples: Vec<_> = (0..8)
        .map(|i| sample_at(&world, args.seed + 60, i))
        .collect();
    let images: Vec<RgbImage> = samples
        .iter()
        .map(|s| render(&s.scene, size as u32))
        .collect();
    // ANCHOR: encode
    let x = images_tensor(&images, &dev)?; // (8, 3, 32, 32) in [-1, 1]
    let dist = vae.encode(&x)?; // q(z | x): mean and logvar, each (8, 4, 8, 8)
    let z = dist.mode(); // (8, 4, 8, 8): the most likely latent
    let latents = (&z * cfg.scaling_factor)?; // (8, 4, 8, 8): what the UNet will see
    let recon = vae.decode(&z)?; // (8, 3, 32, 32)
                                 // ANCHOR_END: encode
    let posterior_std = f64::from(
        dist.logvar
            .affine(0.5, 0.0)?
            .exp()?
            .mean_all()?
            .to_scalar::<f32>()?,
    );
    let count = |prefix: &str| -> usize {
        weights::sorted_vars(&bundle.varmap)
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| v.elem_count())
            .sum()
    };
    let mut shapes = Table::new(["stage", "shape", "parameters"]);
    shapes.row([
        "image x".to_string(),
        format!("{:?}", x.dims()),
        String::new(),
    ]);
    shapes.row([
        "encoder + quant_conv: mean, logvar".to_string(),
        format!("{:?} each", dist.mean.dims()),
        (count("encoder") + count("quant_conv")).to_string(),
    ]);
    shapes.row([
        "latents = z * scaling_factor".to_string(),
        format!("{:?}", latents.dims()),
        String::new(),
    ]);
    shapes.row([
        "post_quant_conv + decoder: image".to_string(),
        format!("{:?}", recon.dims()),
        (count("decoder") + count("post_quant_conv")).to_string(),
    ]);
    println!("{shapes}\n");
    write_md("shapes.md", &shapes.to_markdown())?;
    // Decode a sampled z too, and compare the two pictures.
    let mut noise_rng = seeded_rng(args.seed + 60);
    let sampled = vae.decode(&dist.sample(&randn_tensor(z.dims(), &mut noise_rng, &dev)?)?)?;
    let from_mean = tensor_images(&recon.clamp(-1f32, 1f32)?)?;
    let from_sample = tensor_images(&sampled.clamp(-1f32, 1f32)?)?;
    let sample_psnr = from_mean
        .iter()
        .zip(&from_sample)
        .map(|(a, b)| psnr(a, b))
        .sum::<f64>()
        / from_mean.len() as f64;
    let verdict = if sample_psnr >= 30.0 {
        "nearly the same picture"
    } else {
        "a visibly different picture"
    };
    let posterior = format!(
        "Channels per level {:?}, {} ResnetBlock2D per encoder level, {} per decoder level, \
         self-attention in the middle at {}x{}. The posterior's standard deviation \
         exp(logvar / 2) averages {posterior_std:.2}: a sampled z sits a little off the mean, \
         and decoding it gives {verdict} ({sample_psnr:.1} dB PSNR between the decodings of the \
         mean and of a sample, averaged over these 8 images).",
        cfg.block_out_channels,
        cfg.layers_per_block,
        cfg.layers_per_block + 1,
        cfg.latent_size(),
        cfg.latent_size()
    );
    nb.say(&posterior);
    write_md("posterior.md", &format!("{posterior}\n"))?;

    // ---------------------------------------------------------------------------------------
    nb.cell("The round trip, measured");
    let recon_images = tensor_images(&recon.clamp(-1f32, 1f32)?)?;
    let mut tiles = Vec::new();
    for (orig, rec) in images.iter().zip(&recon_images) {
        tiles.push(tile(orig, 4, &["original"]));
        tiles.push(tile(
            rec,
            4,
            &["decoded", &format!("{:.1} dB", psnr(orig, rec))],
        ));
        tiles.push(tile(&error_map(orig, rec, 8.0), 4, &["|error| x 8"]));
    }
    save_png(
        &labelled_grid(&tiles, 6, Some("original | through 4x8x8 and back | error"))?,
        &out.join("roundtrip.png"),
    )?;
    let worst = images
        .iter()
        .zip(&recon_images)
        .map(|(o, r)| psnr(o, r))
        .fold(f64::INFINITY, f64::min);
    let eval = evaluate(vae, args.eval_images as usize)?;
    let mut quality = Table::new([
        "held-out images",
        "PSNR",
        "colour error on object pixels",
        "bar",
    ]);
    quality.row([
        eval.images.to_string(),
        format!("{:.2} dB", eval.psnr_db),
        format!("{:.2} / 255", eval.object_color_error),
        format!(
            "PSNR >= 30 dB: {}",
            if eval.psnr_db >= 30.0 {
                "met"
            } else {
                "not met"
            }
        ),
    ]);
    println!("{quality}\n");
    write_md("quality.md", &quality.to_markdown())?;
    nb.say(&format!(
        "PSNR (peak signal-to-noise ratio) is 10 log10(1 / MSE) with pixels in [0, 1]: 30 dB \
             means a root-mean-square error of about 8 levels out of 255. The errors sit on the \
             edges; flat areas come back almost exactly. The worst of these eight pictures \
             scores {worst:.1} dB."
    ));

    // ---------------------------------------------------------------------------------------
    nb.cell("What the four latent channels hold");
    let mut tiles = Vec::new();
    for (i, img) in images.iter().take(4).enumerate() {
        tiles.push(tile(img, 4, &["image"]));
        let lat = latents.get(i)?; // (4, 8, 8)
        for (c, ch) in latent_channel_images(&lat)?.iter().enumerate() {
            tiles.push(tile(ch, 16, &[&format!("channel {c}")]));
        }
    }
    save_png(
        &labelled_grid(
            &tiles,
            5,
            Some("each latent channel, stretched to black..white"),
        )?,
        &out.join("channels.png"),
    )?;
    nb.say(
        "Each latent position covers a 4x4 patch of pixels. The channels are not red, green, \
         blue and alpha: the encoder invented its own code, but it is still a picture, laid \
         out like the image, which is why a UNet (built for images) can work on it.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("The scaling factor");
    let scaling = format!(
        "Over {} held-out images the sampled z have mean {:.3} and standard deviation {:.3}, so \
         scaling_factor = 1 / {:.3} = {:.4} (stored in the weights' config). The diffusion \
         model's noise has standard deviation 1, so the latents should too: otherwise the \
         schedule's signal-to-noise ratios would be off by the square of this factor. Stable \
         Diffusion's VAE gave 0.18215 the same way.",
        eval.images, eval.latent_mean, eval.latent_std, eval.latent_std, cfg.scaling_factor
    );
    nb.say(&scaling);
    write_md("scaling.md", &format!("{scaling}\n"))?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Walking from one image to another");
    let pair = held_out(40);
    let (a, b) = (
        render(&pair[3].scene, size as u32),
        render(&pair[17].scene, size as u32),
    );
    let ends = images_tensor(&[a.clone(), b.clone()], &dev)?;
    let z_ends = vae.encode(&ends)?.mode(); // (2, 4, 8, 8)
    let steps = 7;
    let mut lat_row = Vec::new();
    let mut pix_row = Vec::new();
    for k in 0..steps {
        let w = k as f64 / (steps - 1) as f64;
        // ANCHOR: interpolate
        let z_w = ((z_ends.get(0)? * (1.0 - w))? + (z_ends.get(1)? * w)?)?; // (4, 8, 8)
        let decoded = vae.decode(&z_w.unsqueeze(0)?)?; // (1, 3, 32, 32)
                                                       // ANCHOR_END: interpolate
        let x_w = ((ends.get(0)? * (1.0 - w))? + (ends.get(1)? * w)?)?.unsqueeze(0)?;
        lat_row.push(tile(
            &tensor_images(&decoded.clamp(-1f32, 1f32)?)?[0],
            4,
            &[&format!("latent {w:.2}")],
        ));
        pix_row.push(tile(
            &tensor_images(&x_w)?[0],
            4,
            &[&format!("pixels {w:.2}")],
        ));
    }
    lat_row.extend(pix_row);
    save_png(
        &labelled_grid(
            &lat_row,
            steps,
            Some("mixing latents (top) vs mixing pixels (bottom)"),
        )?,
        &out.join("interpolation.png"),
    )?;
    nb.say(
        "Mixing pixels gives a double exposure: two half-transparent pictures. Mixing latents \
         is not a clean morph either: near each end the decoded picture stays close to that \
         image, but halfway it breaks into smudges and colours the palette never had. The \
         decoder only learned to draw the latents of real pictures, and the average of two \
         real latents is not one.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Noise in latent space and in pixel space");
    let schedule = NoiseSchedule::new(ScheduleConfig::default())?;
    let mut rng = seeded_rng(args.seed);
    let x0 = images_tensor(std::slice::from_ref(&images[0]), &dev)?; // (1, 3, 32, 32)
    let l0 = (vae.encode(&x0)?.mode() * cfg.scaling_factor)?; // (1, 4, 8, 8)
    let ts = [0usize, 100, 200, 300, 500, 700, 999];
    let (mut top, mut bottom) = (Vec::new(), Vec::new());
    for &t in &ts {
        // ANCHOR: noise_both
        let eps_x = randn_tensor(x0.dims(), &mut rng, &dev)?;
        let x_t = add_noise_tensor(&schedule, &x0, &eps_x, &[t])?; // pixels, (1, 3, 32, 32)
        let eps_l = randn_tensor(l0.dims(), &mut rng, &dev)?;
        let l_t = add_noise_tensor(&schedule, &l0, &eps_l, &[t])?; // latents, (1, 4, 8, 8)
        let seen = vae.decode(&(l_t / cfg.scaling_factor)?)?; // what the noisy latent "looks like"
                                                              // ANCHOR_END: noise_both
        top.push(tile(
            &tensor_images(&x_t.clamp(-1f32, 1f32)?)?[0],
            4,
            &[&format!("pixels, t = {t}")],
        ));
        bottom.push(tile(
            &tensor_images(&seen.clamp(-1f32, 1f32)?)?[0],
            4,
            &[&format!("latents, t = {t}")],
        ));
    }
    top.extend(bottom);
    save_png(
        &labelled_grid(
            &top,
            ts.len(),
            Some("noised pixels (top) vs decoded noised latents (bottom)"),
        )?,
        &out.join("noise_latent_vs_pixel.png"),
    )?;
    nb.say(
        "The same schedule, the same t, very different looks. In pixel space the noise is \
         fine-grained static laid over the picture. The decoder never turns latent noise into \
         static: up to a few hundred steps it still draws a clean picture (it maps the noisy \
         latent back to something it knows how to draw), and later the picture dissolves into \
         coloured blotches of the decoder's own making. What the UNet sees, though, are the \
         noisy latents themselves, not their decoding.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Can the VAE alone make pictures?");
    let mut rng = seeded_rng(args.seed + 6);
    // ANCHOR: prior
    let latents = randn_tensor(&[8, 4, 8, 8], &mut rng, &dev)?; // latents ~ N(0, I)
    let dreams = vae.decode(&(latents / cfg.scaling_factor)?)?; // (8, 3, 32, 32)
                                                                // ANCHOR_END: prior
    let tiles: Vec<Tile> = tensor_images(&dreams.clamp(-1f32, 1f32)?)?
        .iter()
        .map(|i| tile(i, 4, &["N(0, I)"]))
        .collect();
    save_png(
        &labelled_grid(&tiles, 8, Some("decoding random latents"))?,
        &out.join("prior_samples.png"),
    )?;
    let typical = prior_gap(vae, &x)?;
    nb.say(&typical);
    write_md("prior.md", &format!("{typical}\n"))?;
    println!("figures and tables in {}", out.display());
    Ok(())
}

/// Multiply-adds as a readable count.
fn flops(v: f64) -> String {
    match v {
        v if v >= 1e12 => format!("{:.1} TFLOP", v / 1e12),
        v if v >= 1e9 => format!("{:.1} GFLOP", v / 1e9),
        v if v >= 1e6 => format!("{:.1} MFLOP", v / 1e6),
        v => format!("{v:.0} FLOP"),
    }
}

/// How far real latents are from N(0, I): the share of latent values of real images beyond 2
/// standard deviations, and the correlation of neighbouring latent positions.
fn prior_gap(vae: &inkdrop::vae::AutoencoderKL, x: &Tensor) -> anyhow::Result<String> {
    let l = (vae.encode(x)?.mode() * vae.config.scaling_factor)?; // (8, 4, 8, 8)
    let v: Vec<f32> = l.flatten_all()?.to_vec1()?;
    let s = l.dim(3)?;
    let right: Vec<(f32, f32)> = v
        .chunks(s)
        .flat_map(|row| row.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>())
        .collect();
    let (a, b): (Vec<f32>, Vec<f32>) = right.into_iter().unzip();
    let corr =
        inkdrop::support::stats::correlation(&ndarray::Array1::from(a), &ndarray::Array1::from(b));
    Ok(format!(
        "Decoded random latents are smears of colour, not shapes. Real latents are not N(0, I): \
         neighbouring latent positions of real images correlate at {corr:.2} (independent noise: \
         0), because an object spans several positions. The KL term that would pull q(z | x) \
         towards N(0, I) has a weight of only 1e-6 so that reconstructions stay sharp, so the \
         region of latent space that decodes to real pictures is a thin, structured subset. \
         Finding it is the diffusion model's job: start from N(0, I) and denoise step by step \
         into that subset."
    ))
}
