//! Chapter 7: the whole pipeline. A sentence goes in, a picture comes out: tokenizer, CLIP text
//! encoder, the denoising loop with classifier-free guidance, the VAE decoder. This chapter
//! follows one prompt through every stage and then turns the knobs: guidance scale, negative
//! prompt, seed, and img2img's strength.
//!
//! ```text
//! cargo run --release --bin ch07_text_to_image                  # run straight through
//! cargo run --release --bin ch07_text_to_image -- --interactive # pause between cells
//! cargo run --release --bin ch07_text_to_image -- --book        # refresh the book's figures
//! ```
//!
//! Uses the shipped models in `data/` (retrain them with `inkdrop train all`). Cells match the
//! sections of `book/src/ch07_text_to_image.md`. Leaves out: guidance rescale, prompt weighting
//! and long prompts split across several 16-token windows.

use std::path::PathBuf;

use clap::Parser;
use inkdrop::pipeline::eval::{check_image, evaluate, reader_accuracy};
use inkdrop::pipeline::{GenerateRequest, Generation, TextToImage, Trace};
use inkdrop::shapes::caption::{pair_prompt, parse_claim};
use inkdrop::shapes::detect::detect;
use inkdrop::shapes::scene::{Color, Shape};
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::support::files::{chapter_out_dir, write_atomic};
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{enlarge, save_png};
use inkdrop::support::notebook::Notebook;
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, DEFAULT_SEED};

/// Chapter 7 of inkdrop: text to image, as a notebook in the terminal.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Pause between cells (press Enter); ignored when stdout is not a terminal.
    #[arg(long)]
    interactive: bool,
    /// Write figures and tables into the book (`book/src/generated/ch07/`).
    #[arg(long, conflicts_with = "out")]
    book: bool,
    /// Output folder for figures and tables [default: target/inkdrop/ch07].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// The prompt followed through the pipeline.
    #[arg(long, default_value = "a red circle")]
    prompt: String,
    /// Denoising steps of every generation (DDIM).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1000))]
    steps: u64,
    /// Pictures per prompt in the guidance measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    per_prompt: u64,
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

fn pct(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * x)
    }
}

/// Mean |a - b| over every pixel and channel, in 0..255 units.
fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| f64::from((i16::from(x) - i16::from(y)).unsigned_abs()))
        .sum::<f64>()
        / a.as_raw().len() as f64
}

fn run(args: Args) -> anyhow::Result<()> {
    let out = chapter_out_dir("ch07", args.book, args.out.as_deref())?;
    let write_md = |name: &str, text: &str| write_atomic(&out.join(name), text.as_bytes());
    let mut nb = Notebook::new("Chapter 7: text to image", args.interactive);
    let pipe = TextToImage::load_default()?;
    let base = GenerateRequest {
        prompt: args.prompt.clone(),
        seed: args.seed,
        steps: args.steps as usize,
        ..GenerateRequest::default()
    };

    // ---------------------------------------------------------------------------------------
    nb.cell("From a sentence to a picture");
    // ANCHOR: pipeline
    let (ids, eot) = pipe.clip.tokenize(&[String::new(), args.prompt.clone()])?; // (2, 16)
    let context = pipe.encoder_hidden_states(&[String::new(), args.prompt.clone()])?; // (2, 16, 128)
    let generation = pipe.generate(&base)?; // DDIM, guidance 7.5
    let first = &generation.trace.steps[0];
    // ANCHOR_END: pipeline
    let mut table = Table::new(["stage", "what", "shape"]);
    let shape = |t: &candle_core::Tensor| format!("{:?}", t.dims());
    table.row([
        "tokenizer".to_string(),
        "ids of the empty prompt and of the prompt".into(),
        shape(&ids),
    ]);
    table.row([
        "text encoder (CLIP's, tuned with the UNet)".to_string(),
        "one 128-wide vector per token".into(),
        shape(&context),
    ]);
    table.row([
        "starting noise".to_string(),
        "x_T ~ N(0, I), from the seed".into(),
        shape(&first.latents),
    ]);
    table.row([
        "UNet, twice per step".to_string(),
        "eps_uncond and eps_cond".into(),
        shape(&first.eps_cond),
    ]);
    table.row([
        "guidance".to_string(),
        "eps = eps_uncond + s (eps_cond - eps_uncond)".into(),
        shape(&first.eps),
    ]);
    table.row([
        "scheduler (DDIM)".to_string(),
        format!("{} steps, x_t to x_prev", generation.trace.steps.len()),
        shape(&generation.latents),
    ]);
    table.row([
        "VAE decoder".to_string(),
        "latents / scaling_factor to pixels".into(),
        "[1, 3, 32, 32]".into(),
    ]);
    println!("{table}\n");
    write_md("pipeline.md", &table.to_markdown())?;
    let ids_row: Vec<u32> = ids.get(1)?.to_vec1()?;
    write_md(
        "tokens.md",
        &format!(
            "Token ids of {:?}: `{:?}` (end of text at position {}; the rest is padding with the \
             end-of-text token).\n",
            args.prompt, ids_row, eot[1]
        ),
    )?;
    save_png(
        &enlarge(&generation.images[0], 4),
        &out.join("pipeline.png"),
    )?;
    println!(
        "on this machine: text {:.0} ms, {} steps {:.0} ms, decoding {:.0} ms\n",
        generation.trace.text_seconds * 1e3,
        generation.trace.steps.len(),
        generation
            .trace
            .steps
            .iter()
            .map(|s| s.seconds)
            .sum::<f64>()
            * 1e3,
        generation.trace.decode_seconds * 1e3
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Classifier-free guidance, with the actual numbers");
    let norms = generation.trace.guidance_norms();
    let mut table = Table::new([
        "step",
        "t",
        "rms(eps_uncond)",
        "rms(eps_cond)",
        "rms(eps_cond - eps_uncond)",
        "rms(7.5 x difference)",
    ]);
    for (i, (t, u, c, d)) in norms.iter().enumerate() {
        if i % 5 == 0 || i + 1 == norms.len() {
            table.row([
                (i + 1).to_string(),
                format!("{t:.0}"),
                format!("{u:.3}"),
                format!("{c:.3}"),
                format!("{d:.3}"),
                format!("{:.3}", 7.5 * d),
            ]);
        }
    }
    println!("{table}\n");
    write_md("guidance_norms.md", &table.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("A guidance sweep");
    let scales = [0.0, 1.0, 3.0, 7.5, 15.0];
    let sweep_prompts = [
        "a red circle",
        "a blue square",
        "a yellow triangle",
        "a green star",
    ];
    let mut tiles = Vec::new();
    for p in sweep_prompts {
        for &s in &scales {
            // ANCHOR: sweep
            let g = pipe.generate(&GenerateRequest {
                prompt: p.to_string(),
                guidance_scale: s,
                ..base.clone()
            })?;
            // ANCHOR_END: sweep
            tiles.push(tile(
                &g.images[0],
                &[p.to_string(), format!("guidance {s}")],
            ));
        }
    }
    save_png(
        &labelled_grid(
            &tiles,
            scales.len(),
            Some(&format!("one seed ({}), five guidance scales", args.seed)),
        )?,
        &out.join("guidance_sweep.png"),
    )?;
    // Measured on every seen (colour, shape) pair of four colours.
    let prompts: Vec<String> = [Color::Red, Color::Blue, Color::Yellow, Color::Green]
        .iter()
        .flat_map(|&c| Shape::ALL.iter().map(move |&s| pair_prompt(c, s)))
        .collect();
    let mut table = Table::new([
        "guidance scale",
        "colour right",
        "shape right",
        "CLIP cosine",
    ]);
    for &s in &scales {
        let report = evaluate(
            &pipe,
            &prompts,
            &GenerateRequest {
                guidance_scale: s,
                num_images: args.per_prompt as usize,
                ..base.clone()
            },
            &mut |_, _, _| {},
        )?;
        let all = &report.groups.last().expect("the 'all' group").1;
        table.row([
            format!("{s}"),
            pct(all.color),
            pct(all.shape),
            format!("{:.3}", all.clip_similarity),
        ]);
    }
    println!("{table}\n");
    write_md("guidance_sweep.md", &table.to_markdown())?;
    write_md(
        "guidance_sweep_note.md",
        &format!(
            "{} prompts \"a {{colour}} {{shape}}\" (red, blue, yellow, green x the four shapes), {} \
             pictures each (seeds {}..), {} DDIM steps; colour and shape of the largest object read \
             back with the Shapes World palette.\n",
            prompts.len(),
            args.per_prompt,
            args.seed,
            args.steps
        ),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("How far can the check be trusted?");
    // The reader is a ruler: measure it on pictures whose truth is known, as drawn and after a
    // VAE round trip (what a perfect denoiser would hand the decoder).
    // ANCHOR: ruler
    let mut rows = reader_accuracy(None, args.seed, "rendered")?;
    rows.extend(reader_accuracy(
        Some(&pipe.vae.vae),
        args.seed,
        "after the VAE",
    )?);
    // ANCHOR_END: ruler
    let mut table = Table::new(["real pictures", "n", "colour", "shape", "relation"]);
    for (name, g) in &rows {
        table.row([
            name.clone(),
            g.images.to_string(),
            pct(g.color),
            pct(g.shape),
            if g.relation.is_nan() {
                "-".into()
            } else {
                pct(g.relation)
            },
        ]);
    }
    println!("{table}\n");
    write_md("reader.md", &table.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Negative prompts");
    // ANCHOR: negative
    let negatives = ["", "a red circle", "a blue circle"];
    // ANCHOR_END: negative
    let mut tiles = Vec::new();
    let mut table = Table::new([
        "negative prompt",
        "largest object's colour in 8 pictures of \"a circle\"",
    ]);
    for neg in negatives {
        let g = pipe.generate(&GenerateRequest {
            prompt: "a circle".into(),
            negative_prompt: neg.into(),
            num_images: 8,
            ..base.clone()
        })?;
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for img in &g.images {
            let name = detect(img)
                .first()
                .map_or("nothing".to_string(), |d| d.color.word().to_string());
            *counts.entry(name).or_default() += 1;
        }
        table.row([
            if neg.is_empty() {
                "(empty)".to_string()
            } else {
                format!("{neg:?}")
            },
            counts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
        for img in g.images.iter().take(4) {
            tiles.push(tile(
                img,
                &[if neg.is_empty() {
                    "no negative".into()
                } else {
                    format!("not {neg:?}")
                }],
            ));
        }
    }
    println!("{table}\n");
    write_md("negative.md", &table.to_markdown())?;
    save_png(
        &labelled_grid(&tiles, 4, Some("\"a circle\" with three negative prompts"))?,
        &out.join("negative.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Seeds");
    let g = pipe.generate(&GenerateRequest {
        prompt: "a blue square".into(),
        num_images: 8,
        ..base.clone()
    })?;
    let claim = parse_claim("a blue square").expect("a readable prompt");
    let tiles: Vec<Tile> = g
        .images
        .iter()
        .enumerate()
        .map(|(k, img)| {
            let c = check_image(&claim, img);
            let verdict = match (c.color.hits, c.shape.hits) {
                (1, 1) => "right",
                (1, 0) => "colour only",
                (0, 1) => "shape only",
                _ => "wrong",
            };
            tile(
                img,
                &[
                    format!("seed {}", args.seed + k as u64),
                    verdict.to_string(),
                ],
            )
        })
        .collect();
    save_png(
        &labelled_grid(&tiles, 8, Some("\"a blue square\", eight seeds"))?,
        &out.join("seeds.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Where the layout comes from");
    nb.say(
        "Two prompts that differ only in where things go, drawn from the same four seeds, and \
         for scale the same prompt from the next seed. If the words placed the objects, \
         changing them would move the objects; if the starting noise placed them, the pictures \
         of one seed would stay alike.",
    );
    let pairs = [
        (
            "a red circle at the top left",
            "a red circle at the bottom right",
        ),
        (
            "a red circle above a blue square",
            "a red circle below a blue square",
        ),
    ];
    let mut table = Table::new([
        "prompt A",
        "prompt B",
        "A vs B, same seed",
        "A vs A, next seed",
        "relation right, A",
        "relation right, B",
        "first step's x0_hat, |A - B| / |A|",
    ]);
    let (mut tiles, mut first_tiles) = (Vec::new(), Vec::new());
    for (a, b) in pairs {
        let draw = |prompt: &str| {
            pipe.generate(&GenerateRequest {
                prompt: prompt.into(),
                num_images: 4,
                ..base.clone()
            })
        };
        let (ga, gb) = (draw(a)?, draw(b)?);
        let n = ga.images.len();
        let words = (0..n)
            .map(|k| mean_abs_diff(&ga.images[k], &gb.images[k]))
            .sum::<f64>()
            / n as f64;
        let seeds = (0..n)
            .map(|k| mean_abs_diff(&ga.images[k], &ga.images[(k + 1) % n]))
            .sum::<f64>()
            / n as f64;
        let relation = |prompt: &str, g: &Generation| {
            let claim = parse_claim(prompt).expect("a readable prompt");
            let mut tally = inkdrop::pipeline::eval::Tally::default();
            for img in &g.images {
                tally.merge(check_image(&claim, img).relation);
            }
            pct(tally.rate())
        };
        // How much the words change the very first prediction of the picture (RMS ratio).
        let (xa, xb) = (&ga.trace.steps[0].pred_x0, &gb.trace.steps[0].pred_x0);
        let first = Trace::rms(&(xa - xb)?) / Trace::rms(xa);
        table.row([
            a.to_string(),
            b.to_string(),
            format!("{words:.1}"),
            format!("{seeds:.1}"),
            relation(a, &ga),
            relation(b, &gb),
            format!("{first:.2}"),
        ]);
        for (prompt, other, g) in [(a, b, &ga), (b, a, &gb)] {
            // Label each row by the words its prompt has and the other lacks.
            let short = prompt
                .split(' ')
                .filter(|w| !other.split(' ').any(|o| o == *w))
                .collect::<Vec<_>>()
                .join(" ");
            // The first step's guess of the picture, seed 0, decoded.
            let first_x0 = pipe.decode(&g.trace.steps[0].pred_x0.narrow(0, 0, 1)?)?;
            first_tiles.push(tile(
                &first_x0[0],
                &[format!("\"{short}\""), "first step's x0_hat".into()],
            ));
            for (k, img) in g.images.iter().enumerate() {
                tiles.push(tile(
                    img,
                    &[
                        format!("\"{short}\""),
                        format!("seed {}", args.seed + k as u64),
                    ],
                ));
            }
        }
    }
    println!("{table}\n(mean |pixel difference| in 0..255; relation: the reader's check, - where the prompt names none)\n");
    write_md("layout.md", &table.to_markdown())?;
    save_png(
        &labelled_grid(&tiles, 4, Some("same seeds, different position words"))?,
        &out.join("layout.png"),
    )?;
    save_png(
        &labelled_grid(&first_tiles, first_tiles.len(), None)?,
        &out.join("layout_first_x0.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("img2img: where the two processes meet");
    let source = sample_at(&WorldConfig::default(), args.seed, 3);
    let source_img = render(&source.scene, 32);
    let strengths = [0.2, 0.4, 0.6, 0.8, 1.0];
    let mut tiles = vec![tile(
        &source_img,
        &["input".into(), source.caption.chars().take(22).collect()],
    )];
    let mut table = Table::new([
        "strength",
        "steps run",
        "first t",
        "pixels changed (mean |diff| / 255)",
    ]);
    for &strength in &strengths {
        // ANCHOR: img2img
        let g = pipe.generate(&GenerateRequest {
            prompt: "a blue square".into(),
            init_image: Some((source_img.clone(), strength)),
            ..base.clone()
        })?;
        // ANCHOR_END: img2img
        let diff = mean_abs_diff(&g.images[0], &source_img);
        table.row([
            format!("{strength}"),
            g.trace.steps.len().to_string(),
            format!("{:.0}", g.trace.steps[0].t),
            format!("{diff:.1}"),
        ]);
        tiles.push(tile(
            &g.images[0],
            &[format!("strength {strength}"), "\"a blue square\"".into()],
        ));
    }
    println!("{table}\n");
    write_md("img2img.md", &table.to_markdown())?;
    save_png(
        &labelled_grid(&tiles, tiles.len(), None)?,
        &out.join("img2img.png"),
    )?;
    Ok(())
}
