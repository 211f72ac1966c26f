//! `inkdrop attention`: where each word of the prompt looks. Generates one picture with the
//! cross-attention maps recorded and writes heat maps over it: one per token, a strip across the
//! denoising steps for one word, and a grid across the UNet's attention layers.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use inkdrop::pipeline::attention::{overlay, token_heatmaps, MapSelection};
use inkdrop::pipeline::{GenerateRequest, TextToImage};
use inkdrop::schedulers::SamplerKind;
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::save_png;
use inkdrop::unet::bundle::default_unet_path;

#[derive(Debug, Args)]
pub struct AttentionArgs {
    /// The prompt.
    #[arg(long, default_value = "a red circle above a blue square")]
    pub prompt: String,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The word for the strip across steps and the grid across layers [default: the first
    /// colour or shape word].
    #[arg(long, conflicts_with = "token")]
    pub word: Option<String>,
    /// Or a token position (0 is the start token).
    #[arg(long)]
    pub token: Option<usize>,
    /// Step range to aggregate, A..B (0-based, inclusive) [default: every step].
    #[arg(long)]
    pub steps: Option<String>,
    /// Only attention layers whose diffusers path contains this (`down_blocks.0`, `mid_block`,
    /// `up_blocks.1`, ...).
    #[arg(long)]
    pub block: Option<String>,
    /// Denoising steps (DDIM).
    #[arg(long, default_value_t = 30)]
    pub num_steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub guidance_scale: f64,
    /// Output folder.
    #[arg(long, default_value = "attention")]
    pub out: PathBuf,
    /// UNet weights [default: data/unet.safetensors].
    #[arg(long)]
    pub unet: Option<PathBuf>,
}

/// "3..10" -> (3, 10).
fn parse_range(text: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--steps {text:?}: write a range like 0..9"))?;
    let a: usize = a
        .trim()
        .parse()
        .with_context(|| format!("--steps {text:?}: {a:?} is not a step number"))?;
    let b: usize = b
        .trim()
        .parse()
        .with_context(|| format!("--steps {text:?}: {b:?} is not a step number"))?;
    anyhow::ensure!(
        a <= b,
        "--steps {text:?}: the first step must not come after the last"
    );
    Ok((a, b))
}

pub fn run(args: &AttentionArgs) -> anyhow::Result<()> {
    let steps = args.steps.as_deref().map(parse_range).transpose()?;
    let req = GenerateRequest {
        prompt: args.prompt.clone(),
        seed: args.seed,
        steps: args.num_steps,
        guidance_scale: args.guidance_scale,
        sampler: SamplerKind::Ddim,
        record_attention: true,
        ..GenerateRequest::default()
    };
    req.validate()?;
    if let Some((_, b)) = steps {
        anyhow::ensure!(
            b < args.num_steps,
            "--steps goes to step {b}, but there are only {} steps (0..{})",
            args.num_steps,
            args.num_steps - 1
        );
    }
    let pipe = TextToImage::load(&args.unet.clone().unwrap_or_else(default_unet_path))?;
    let enc = pipe.clip.tokenizer.encode(&args.prompt)?;
    let token = match (&args.word, args.token) {
        (_, Some(t)) => {
            anyhow::ensure!(
                t < enc.tokens.len(),
                "--token {t}: the context has {} tokens (0..{})",
                enc.tokens.len(),
                enc.tokens.len() - 1
            );
            t
        }
        (Some(w), None) => {
            let want = format!("{}</w>", w.to_lowercase());
            enc.tokens
                .iter()
                .position(|t| *t == want)
                .with_context(|| {
                    format!(
                        "--word {w:?} is not one token of the prompt; its tokens are {:?}",
                        &enc.tokens[..=enc.eot_index]
                    )
                })?
        }
        (None, None) => (1..enc.eot_index)
            .find(|&i| {
                let t = enc.tokens[i].trim_end_matches("</w>");
                inkdrop::shapes::scene::Color::ALL
                    .iter()
                    .any(|c| c.word() == t)
                    || inkdrop::shapes::scene::Shape::ALL
                        .iter()
                        .any(|s| s.word() == t)
            })
            .unwrap_or(1.min(enc.eot_index)),
    };
    let generation = pipe.generate(&req)?;
    let image = &generation.images[0];
    let size = image.width() as usize;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}; pick another --out", args.out.display()))?;
    let label = |i: usize| enc.tokens[i].trim_end_matches("</w>").to_string();
    let selection = MapSelection {
        steps,
        block: args.block.clone(),
        head: None,
    };

    // 1. One map per token: the words, the start token and the first padding token.
    let maps = token_heatmaps(&generation.trace, 0, 1, &selection, size)?;
    let shown: Vec<usize> = (0..=(enc.eot_index + 1).min(enc.tokens.len() - 1)).collect();
    let tiles: Vec<Tile> = shown
        .iter()
        .map(|&i| Tile {
            image: overlay(image, &maps.maps[i], size, 4),
            caption: vec![
                format!("{i}: {}", label(i)),
                format!("{:.1}% of attention", 100.0 * maps.mass[i]),
            ],
        })
        .collect();
    save_png(
        &labelled_grid(
            &tiles,
            tiles.len(),
            Some(&format!("\"{}\", seed {}", args.prompt, args.seed)),
        )?,
        &args.out.join("tokens.png"),
    )?;

    // 2. The chosen token, one step at a time.
    let n = generation.trace.steps.len();
    let picked: Vec<usize> = (0..8).map(|k| k * (n - 1) / 7).collect();
    let mut tiles = Vec::new();
    for &s in &picked {
        let m = token_heatmaps(
            &generation.trace,
            0,
            1,
            &MapSelection {
                steps: Some((s, s)),
                ..selection.clone()
            },
            size,
        )?;
        tiles.push(Tile {
            image: overlay(image, &m.maps[token], size, 4),
            caption: vec![format!("step {s}, t={:.0}", generation.trace.steps[s].t)],
        });
    }
    save_png(
        &labelled_grid(
            &tiles,
            tiles.len(),
            Some(&format!("\"{}\" across the steps", label(token))),
        )?,
        &args.out.join("steps.png"),
    )?;

    // 3. The chosen token, one attention layer at a time.
    let mut tiles = Vec::new();
    for module in &maps.modules {
        let m = token_heatmaps(
            &generation.trace,
            0,
            1,
            &MapSelection {
                block: Some(module.clone()),
                ..selection.clone()
            },
            size,
        )?;
        let short = module
            .replace(".transformer_blocks.0.attn2", "")
            .replace("attentions.", "attn ");
        tiles.push(Tile {
            image: overlay(image, &m.maps[token], size, 4),
            caption: vec![short],
        });
    }
    save_png(
        &labelled_grid(
            &tiles,
            tiles.len(),
            Some(&format!("\"{}\" in each attention layer", label(token))),
        )?,
        &args.out.join("blocks.png"),
    )?;
    save_png(
        &inkdrop::support::image_io::enlarge(image, 4),
        &args.out.join("image.png"),
    )?;
    println!(
        "\"{}\" (seed {}): {} cross-attention layers x {} steps recorded\nattention share per token: {}\nwrote tokens.png, steps.png (token {token}: {:?}), blocks.png and image.png to {}",
        args.prompt,
        args.seed,
        maps.modules.len(),
        n,
        shown.iter().map(|&i| format!("{} {:.1}%", label(i), 100.0 * maps.mass[i])).collect::<Vec<_>>().join(", "),
        label(token),
        args.out.display()
    );
    Ok(())
}
