//! `inkdrop attention`: where each word of the prompt looks. Generates one picture with the
//! cross-attention maps recorded and writes heat maps over it: one per token, a strip across the
//! denoising steps for one word, and a grid across the UNet's attention layers. With `--swap-to`
//! or `--reweight`, also a prompt-to-prompt edit of that word from the same seed.

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
    /// Prompt-to-prompt word swap: replace the chosen word by this one and draw the new prompt
    /// twice from the same seed, on its own and with the original prompt's cross-attention maps
    /// (swap.png).
    #[arg(long)]
    pub swap_to: Option<String>,
    /// Steps (from the first) during which the original maps are injected [default: 80% of
    /// --num-steps, prompt-to-prompt's choice].
    #[arg(long)]
    pub swap_steps: Option<usize>,
    /// Prompt-to-prompt re-weighting: multiply the attention every position pays to the chosen
    /// word by this factor (0 silences it, 2 doubles it) and draw again (reweight.png).
    #[arg(long, allow_negative_numbers = true)]
    pub reweight: Option<f64>,
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
    if let Some(scale) = args.reweight {
        anyhow::ensure!(
            scale.is_finite() && scale >= 0.0,
            "--reweight {scale}: use a factor >= 0 (0 silences the word, 2 doubles it)"
        );
    }
    if let Some(k) = args.swap_steps {
        anyhow::ensure!(
            k <= args.num_steps,
            "--swap-steps {k}: at most --num-steps ({})",
            args.num_steps
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
    let mut wrote_edits = String::new();
    if let Some(scale) = args.reweight {
        let edited = pipe.generate(&GenerateRequest {
            record_attention: false,
            attention_reweight: Some((token, scale)),
            ..req.clone()
        })?;
        let tiles = [
            (image, format!("\"{}\"", label(token))),
            (&edited.images[0], format!("\"{}\" x {scale}", label(token))),
        ]
        .map(|(img, caption)| Tile {
            image: inkdrop::support::image_io::enlarge(img, 4),
            caption: vec![caption],
        });
        save_png(
            &labelled_grid(
                &tiles,
                2,
                Some(&format!("\"{}\", seed {}", args.prompt, args.seed)),
            )?,
            &args.out.join("reweight.png"),
        )?;
        wrote_edits.push_str(", reweight.png");
    }
    if let Some(new_word) = &args.swap_to {
        let words: Vec<String> = enc.tokens[1..enc.eot_index]
            .iter()
            .enumerate()
            .map(|(k, t)| {
                if k + 1 == token {
                    new_word.clone()
                } else {
                    t.trim_end_matches("</w>").to_string()
                }
            })
            .collect();
        let new_prompt = words.join(" ");
        let inject = args.swap_steps.unwrap_or((args.num_steps * 4).div_ceil(5));
        let swap = inkdrop::pipeline::attention::word_swap(&pipe, &req, &new_prompt, inject)?;
        let tiles = [
            (
                &swap.source.images[0],
                "the prompt".to_string(),
                label(token),
            ),
            (
                &swap.plain.images[0],
                "new prompt alone".into(),
                new_word.clone(),
            ),
            (
                &swap.injected.images[0],
                "new prompt, old maps".into(),
                format!("{new_word}, {inject} steps"),
            ),
        ]
        .map(|(img, what, word)| Tile {
            image: inkdrop::support::image_io::enlarge(img, 4),
            caption: vec![what, format!("\"{word}\"")],
        });
        save_png(
            &labelled_grid(
                &tiles,
                3,
                Some(&format!(
                    "\"{}\" -> \"{new_prompt}\", seed {}",
                    args.prompt, args.seed
                )),
            )?,
            &args.out.join("swap.png"),
        )?;
        wrote_edits.push_str(", swap.png");
    }
    println!(
        "\"{}\" (seed {}): {} cross-attention layers x {} steps recorded\nattention share per token: {}\nwrote tokens.png, steps.png (token {token}: {:?}), blocks.png, image.png{wrote_edits} to {}",
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
