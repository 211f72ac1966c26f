//! Chapter 4: CLIP similarity. How a model learns what a caption and a picture have in common,
//! so that later the caption can steer the picture.
//!
//! ```text
//! cargo run --release --bin ch04_clip_similarity                  # run straight through
//! cargo run --release --bin ch04_clip_similarity -- --interactive # pause between cells
//! cargo run --release --bin ch04_clip_similarity -- --book        # refresh the book's figures
//! ```
//!
//! Uses the shipped `data/tokenizer.json` and `data/clip.safetensors` (retrain them with
//! `inkdrop train tokenizer` and `inkdrop train clip`). Cells match the sections of
//! `book/src/ch04_clip_similarity.md`. Leaves out: CLIP's ResNet image tower, and prompt
//! ensembling for zero-shot classification.

use std::path::PathBuf;

use candle_core::Device;
use candle_nn::VarMap;
use clap::Parser;
use inkdrop::clip::bundle::{default_clip_path, tokenize, ClipBundle};
use inkdrop::clip::eval::{all_pairs, zero_shot};
use inkdrop::clip::{images_tensor, l2_normalize, Clip, ClipConfig};
use inkdrop::shapes::scene::{Color, Shape};
use inkdrop::shapes::{is_held_out, render, sample_at, WorldConfig};
use inkdrop::support::files::{chapter_out_dir, default_out_dir, prepare_out_dir, write_atomic};
use inkdrop::support::heatmap::{render_heatmap, Heatmap};
use inkdrop::support::image_io::save_png;
use inkdrop::support::notebook::Notebook;
use inkdrop::support::plot::{save_panels, save_scatter, Panel, Point, Series};
use inkdrop::support::stats::pca_2d;
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, DEFAULT_SEED};
use inkdrop::train::clip::{train_clip, ClipTrainConfig};
use inkdrop::weights;

/// Chapter 4 of inkdrop: CLIP similarity, as a notebook in the terminal.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Pause between cells (press Enter); ignored when stdout is not a terminal.
    #[arg(long)]
    interactive: bool,
    /// Write figures and tables into the book (`book/src/generated/ch04/`).
    #[arg(long, conflicts_with = "out")]
    book: bool,
    /// Output folder for figures and tables [default: target/inkdrop/ch04].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the example batch and the demonstration runs.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Steps of each demonstration training run (seconds each).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    demo_steps: u64,
    /// Steps of each image-tower comparison run (seconds each).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    tower_steps: u64,
    /// Images per (colour, shape) pair in the zero-shot test.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=1000))]
    per_pair: u64,
}

fn main() -> std::process::ExitCode {
    run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let out = chapter_out_dir("ch04", args.book, args.out.as_deref())?;
    let write_md = |name: &str, text: &str| write_atomic(&out.join(name), text.as_bytes());
    let mut nb = Notebook::new("Chapter 4: CLIP similarity", args.interactive);
    let clip = ClipBundle::load_default()?;
    let dev = Device::Cpu;

    // ---------------------------------------------------------------------------------------
    nb.cell("Words become numbers: tokenization");
    nb.say(
        "A network cannot read letters; it reads integers. The tokenizer cuts a caption into \
         pieces from a fixed vocabulary and replaces each piece by its id. Ours is CLIP's kind: \
         lower-case, byte-level BPE, with `</w>` marking the end of a word, framed by \
         <|startoftext|> and <|endoftext|> and padded with <|endoftext|> to a fixed length.",
    );
    // ANCHOR: tokenize
    let texts = [
        "a red circle above a blue square",
        "a purple star",
        "a girl with a dog",
    ];
    let mut table = Table::new(["text", "tokens (id)"]);
    for text in texts {
        let enc = clip.tokenizer.encode(text)?; // ids: exactly context_length of them
        let shown: Vec<String> = enc
            .ids
            .iter()
            .zip(&enc.tokens)
            .take(enc.eot_index + 2)
            .map(|(id, t)| format!("{t} ({id})"))
            .collect();
        table.row([text.to_string(), format!("{} ...", shown.join(" "))]);
    }
    // ANCHOR_END: tokenize
    println!("{table}\n");
    write_md("tokens.md", &table.to_markdown())?;
    let world = WorldConfig::default();
    let longest = (0..20_000u64)
        .map(|i| {
            clip.tokenizer
                .pieces(&sample_at(&world, args.seed + 99, i).caption)
                .map(|p| p.len() + 2)
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let context = format!(
        "Our vocabulary has {} entries (CLIP's has 49,408) and our context is {} tokens: the \
         longest of 20,000 sampled captions needs {longest}, start and end tokens included.",
        clip.tokenizer.vocab_size(),
        clip.tokenizer.context_length
    );
    nb.say(&format!(
        "Every Shapes World word is a single token; \"girl\" and \"dog\" never occur in our \
         captions, so they are spelled out from smaller pieces. {context} Stable Diffusion \
         inherits 77 from CLIP, whose training captions were cut at 76 pieces plus the start \
         token."
    ));
    write_md("context.md", &format!("{context}\n"))?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Two encoders, one space");
    let batch: Vec<_> = (0..8)
        .map(|i| sample_at(&world, args.seed + 40, i))
        .collect();
    let captions: Vec<String> = batch.iter().map(|s| s.caption.clone()).collect();
    let images: Vec<_> = batch.iter().map(|s| render(&s.scene, 32)).collect();
    // ANCHOR: encoders
    let (ids, eot) = tokenize(&clip.tokenizer, &captions, &dev)?; // (8, 16) token ids
    let (hidden, pooled) = clip.model.text_model.forward(&ids, &eot)?; // (8, 16, 128), (8, 128)
    let text_emb = l2_normalize(&clip.model.text_features(&ids, &eot)?)?; // (8, 64), unit length
    let pixels = images_tensor(&images, &dev)?; // (8, 3, 32, 32) in [-1, 1]
    let image_emb = l2_normalize(&clip.model.image_features(&pixels)?)?; // (8, 64), unit length
    let cosine = image_emb.matmul(&text_emb.t()?)?; // (8, 8): image i vs caption j
                                                    // ANCHOR_END: encoders
    let c = &clip.model.config;
    let count = |prefix: &str| -> usize {
        weights::sorted_vars(&clip.varmap)
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| v.elem_count())
            .sum()
    };
    let mut shapes = Table::new(["stage", "shape"]);
    for (stage, dims) in [
        ("token ids", ids.dims().to_vec()),
        (
            "text hidden states (what the UNet will attend to)",
            hidden.dims().to_vec(),
        ),
        ("pooled at <|endoftext|>", pooled.dims().to_vec()),
        ("text embedding", text_emb.dims().to_vec()),
        ("images", pixels.dims().to_vec()),
        ("image embedding", image_emb.dims().to_vec()),
        ("cosine similarities", cosine.dims().to_vec()),
    ] {
        shapes.row([stage.to_string(), format!("{dims:?}")]);
    }
    println!("{shapes}\n");
    write_md("shapes.md", &shapes.to_markdown())?;
    let image_tower = if c.two_path {
        format!(
            "two paths side by side, colour ({} features: object and background) and shape \
             (four 3x3 convolutions, {} features)",
            c.vision_width / 2,
            c.vision_width - c.vision_width / 2
        )
    } else {
        format!(
            "a conv stem and {} transformer layers of width {}",
            c.vision_layers, c.vision_width
        )
    };
    let params = format!(
        "Text tower: {} layers of width {}, {} parameters. Image tower: {image_tower}, {} \
         parameters. Both end in a projection to a {}-dimensional space.",
        c.text_layers,
        c.text_width,
        count("text_model") + count("text_projection"),
        count("vision_model") + count("visual_projection"),
        c.embed_dim
    );
    nb.say(&params);
    write_md("params.md", &format!("{params}\n"))?;

    // ---------------------------------------------------------------------------------------
    nb.cell("The similarity matrix, before and after training");
    let untrained_vm = VarMap::new();
    let untrained = Clip::new(
        c,
        weights::seeded_var_builder(&untrained_vm, args.seed, &dev),
    )?;
    let before = l2_normalize(&untrained.image_features(&pixels)?)?
        .matmul(&l2_normalize(&untrained.text_features(&ids, &eot)?)?.t()?)?;
    let mut summary = Table::new([
        "model",
        "mean cosine, matching pairs",
        "mean cosine, other pairs",
        "images whose best caption is theirs",
    ]);
    for (name, m, file) in [
        ("untrained", &before, "similarity_before.png"),
        ("trained", &cosine, "similarity_after.png"),
    ] {
        let v: Vec<Vec<f32>> = m.to_vec2()?;
        let diag = (0..8).map(|i| v[i][i]).sum::<f32>() / 8.0;
        let off = (0..8)
            .flat_map(|i| (0..8).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| v[i][j])
            .sum::<f32>()
            / 56.0;
        let right = (0..8)
            .filter(|&i| captions[argmax(&v[i])] == captions[i])
            .count();
        summary.row([
            name.to_string(),
            format!("{diag:+.3}"),
            format!("{off:+.3}"),
            format!("{right} of 8"),
        ]);
        let title = format!("Cosine similarity, {name} model (rows: images, columns: captions)");
        let heat = render_heatmap(&Heatmap {
            title: &title,
            values: &v,
            range: (-0.2, 1.0),
            row_images: Some(&images),
            row_labels: &[],
            col_labels: &captions,
            decimals: Some(2),
        })?;
        save_png(&heat, &out.join(file))?;
    }
    println!("{summary}\n");
    write_md("similarity.md", &summary.to_markdown())?;
    nb.say("Before training every cosine is about the same; after, the diagonal (each image with its own caption) stands out. Figures: similarity_before.png, similarity_after.png.");

    // ---------------------------------------------------------------------------------------
    nb.cell("What the temperature does");
    let learned = f64::from(clip.model.scale()?.to_scalar::<f32>()?);
    let row: Vec<f32> = cosine.to_vec2::<f32>()?[0].clone();
    let mut temps = Table::new([
        "logit scale (1 / temperature)",
        "p(own caption)",
        "largest other p",
    ]);
    for (label, s) in [
        ("1".to_string(), 1.0),
        ("14.3 (CLIP's initial 1 / 0.07)".to_string(), 1.0 / 0.07),
        (format!("{learned:.1} (learned)"), learned),
        ("100 (CLIP's cap)".to_string(), 100.0),
    ] {
        let p = softmax_scaled(&row, s);
        let own = (0..8)
            .filter(|&j| captions[j] == captions[0])
            .map(|j| p[j])
            .sum::<f64>();
        let other = (0..8)
            .filter(|&j| captions[j] != captions[0])
            .map(|j| p[j])
            .fold(0.0, f64::max);
        temps.row([
            label,
            format!("{:.1}%", 100.0 * own),
            format!("{:.1}%", 100.0 * other),
        ]);
    }
    println!("{temps}\n");
    write_md("temperature.md", &temps.to_markdown())?;
    nb.say(
        "Cosines live in [-1, 1]; a softmax over numbers that close is nearly uniform. The \
         logit scale stretches them before the softmax. CLIP learns it (starting at 1/0.07, \
         capped at 100): too small and the loss cannot become confident, too large and \
         training becomes unstable.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Zero-shot classification");
    // ANCHOR: zero_shot
    let z = zero_shot(&clip, args.per_pair as usize, args.seed + 7)?; // 28 captions "a {colour} {shape}"
                                                                      // ANCHOR_END: zero_shot
    let mut zt = Table::new(["images", "count", "top-1 (28 captions)"]);
    zt.row([
        "seen colour-shape pairs".to_string(),
        z.seen_images.to_string(),
        format!("{:.1}%", 100.0 * z.seen_top1),
    ]);
    zt.row([
        "held-out pairs (never in training)".to_string(),
        z.held_out_images.to_string(),
        format!("{:.1}%", 100.0 * z.held_out_top1),
    ]);
    zt.row([
        "colour right (all)".to_string(),
        (z.seen_images + z.held_out_images).to_string(),
        format!("{:.1}%", 100.0 * z.color_acc),
    ]);
    zt.row([
        "shape right (all)".to_string(),
        (z.seen_images + z.held_out_images).to_string(),
        format!("{:.1}%", 100.0 * z.shape_acc),
    ]);
    println!("{zt}\n");
    write_md("zero_shot.md", &zt.to_markdown())?;
    let why = if z.color_acc == 1.0 {
        "The colour is always right, so every miss is a shape (the last section shows which)."
    } else {
        "The last section shows which attributes the misses get wrong."
    };
    let verdict = format!(
        "The shipped model names {:.1}% of the seen pairs and {:.1}% of the held-out pairs \
         correctly (chance is {:.1}%). {why} Composing attributes never seen together is the \
         hard part of CLIP's job; the next section shows why, and what our image tower does \
         about it.",
        100.0 * z.seen_top1,
        100.0 * z.held_out_top1,
        100.0 / 28.0
    );
    write_md("zero_shot_verdict.md", &format!("{verdict}\n"))?;
    nb.say(
        "No classifier was trained: we write the 28 possible captions, embed them, and give \
         each image the caption with the highest cosine. The held-out pairs (a purple star, an \
         orange circle, a white triangle) never appeared in any training image or caption, so \
         getting them right means the model composed \"purple\" and \"star\" from separate \
         experience.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Unseen pairs: one tower learns conjunctions, two paths compose");
    // Three image towers, each trained against the shipped text tower, frozen, so that only
    // the image side differs.
    let towers = [
        (
            "ViT: conv stem, 1 transformer layer, [CLS]",
            ClipConfig {
                two_path: false,
                vision_width: 64,
                vision_layers: 1,
                mean_pool: false,
                conv_stem: true,
                ..c.clone()
            },
        ),
        (
            "CNN: conv stem, mean over the grid",
            ClipConfig {
                two_path: false,
                vision_width: 64,
                vision_layers: 0,
                mean_pool: true,
                conv_stem: true,
                ..c.clone()
            },
        ),
        (
            "two paths: colour | shape",
            ClipConfig {
                two_path: true,
                vision_width: 64,
                ..c.clone()
            },
        ),
    ];
    let mut tower_table = Table::new([
        "image tower",
        "parameters",
        "seen pairs top-1",
        "held-out pairs top-1",
        "gap",
        "held-out read as",
    ]);
    let tower_dir = prepare_out_dir(&default_out_dir("ch04_towers"))?;
    for (i, (name, config)) in towers.iter().enumerate() {
        // ANCHOR: towers
        let cfg = ClipTrainConfig {
            steps: args.tower_steps as usize,
            batch_size: 64,
            lr: 2e-3,
            warmup: 20,
            seed: args.seed,
            frozen_text: Some(default_clip_path()), // the shipped text tower, kept fixed
            checkpoint_every: usize::MAX,
            ..ClipTrainConfig::default()
        };
        let file = tower_dir.join(format!("tower{i}.safetensors"));
        let ckpt = tower_dir.join(format!("tower{i}.ckpt"));
        let report = train_clip(
            &clip.tokenizer,
            config,
            &cfg,
            &file,
            &ckpt,
            false,
            &mut |_| true,
        )?
        .ok_or_else(|| anyhow::anyhow!("tower run stopped early"))?;
        // ANCHOR_END: towers
        let params: usize = weights::load(&file, &dev)?
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with("vision_model") || n.starts_with("visual_projection"))
            .map(|(_, t)| t.elem_count())
            .sum();
        let held_out_miss = report
            .zero_shot
            .confusions
            .iter()
            .find(|(truth, _, _)| {
                all_pairs()
                    .iter()
                    .any(|(col, sh, p)| p == truth && is_held_out(*col, *sh))
            })
            .map_or("-".to_string(), |(t, p, n)| format!("{t} -> {p} ({n}x)"));
        tower_table.row([
            name.to_string(),
            params.to_string(),
            format!("{:.1}%", 100.0 * report.zero_shot.seen_top1),
            format!("{:.1}%", 100.0 * report.zero_shot.held_out_top1),
            format!(
                "{:.1} points",
                100.0 * (report.zero_shot.seen_top1 - report.zero_shot.held_out_top1)
            ),
            held_out_miss,
        ]);
    }
    println!("{tower_table}\n");
    write_md("towers.md", &tower_table.to_markdown())?;
    let tower_size = format!(
        "Each image tower trained {} steps of 64 pairs against the shipped text tower, frozen \
         (short runs: none of them is finished); gap = seen minus held-out accuracy; the last \
         column is the most frequent misreading of a held-out pair, out of 40 images.",
        args.tower_steps
    );
    nb.say(&tower_size);
    write_md("tower_size.md", &format!("{tower_size}\n"))?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Training in seconds, and two classic mistakes");
    // A small model: 64 wide, one transformer layer per tower, CLIP's own (ViT) image tower.
    let tiny = ClipConfig {
        text_width: 64,
        text_layers: 1,
        vision_width: 64,
        vision_layers: 1,
        embed_dim: 32,
        two_path: false,
        mean_pool: false,
        conv_stem: true,
        ..c.clone()
    };
    let variants = [
        ("CLIP's loss", true, false),
        ("no L2 normalisation", false, false),
        ("soft (uniform) targets", true, true),
    ];
    let mut loss_panel = Panel {
        title: "Training loss (cut at 6)".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        y_range: Some((0.0, 6.0)),
        ..Panel::default()
    };
    let mut acc_panel = Panel {
        title: "In-batch accuracy".into(),
        x_label: "step".into(),
        y_label: "accuracy".into(),
        y_range: Some((0.0, 1.0)),
        ..Panel::default()
    };
    let mut mistakes = Table::new([
        "variant",
        "final in-batch accuracy",
        "zero-shot top-1 (seen)",
        "mean cosine between different images",
    ]);
    let demo_dir = prepare_out_dir(&default_out_dir("ch04_demo"))?;
    for (i, (name, l2, soft)) in variants.iter().enumerate() {
        // ANCHOR: demo_run
        let cfg = ClipTrainConfig {
            steps: args.demo_steps as usize,
            batch_size: 32,
            lr: 3e-3,
            warmup: 20,
            seed: args.seed,
            l2_normalize: *l2,
            soft_targets: *soft,
            checkpoint_every: usize::MAX,
            ..ClipTrainConfig::default()
        };
        let mut curve = Vec::new();
        let file = demo_dir.join(format!("variant{i}.safetensors"));
        let report = train_clip(
            &clip.tokenizer,
            &tiny,
            &cfg,
            &file,
            &demo_dir.join(format!("variant{i}.ckpt")),
            false,
            &mut |s| {
                curve.push((s.step as f64, s.loss, s.accuracy));
                true
            },
        )?;
        // ANCHOR_END: demo_run
        let report = report.ok_or_else(|| anyhow::anyhow!("demonstration run stopped early"))?;
        let smooth = |k: usize| -> Vec<(f64, f64)> {
            curve
                .iter()
                .enumerate()
                .map(|(j, _)| {
                    let lo = j.saturating_sub(9);
                    let v = curve[lo..=j]
                        .iter()
                        .map(|c| if k == 1 { c.1 } else { c.2 })
                        .sum::<f64>()
                        / (j - lo + 1) as f64;
                    (curve[j].0, v)
                })
                .collect()
        };
        loss_panel.series.push(Series::new(*name, smooth(1), i));
        acc_panel.series.push(Series::new(*name, smooth(2), i));
        let demo = ClipBundle::load(&file, &inkdrop::clip::bundle::default_tokenizer_path())?;
        let e: Vec<Vec<f32>> = demo
            .embed_images(&images)?
            .matmul(&demo.embed_images(&images)?.t()?)?
            .to_vec2()?;
        let off = (0..8)
            .flat_map(|a| (0..8).filter(move |&b| b != a).map(move |b| (a, b)))
            .map(|(a, b)| e[a][b])
            .sum::<f32>()
            / 56.0;
        mistakes.row([
            name.to_string(),
            format!("{:.0}%", 100.0 * curve.last().map_or(0.0, |c| c.2)),
            format!("{:.1}%", 100.0 * report.zero_shot.seen_top1),
            format!("{off:+.3}"),
        ]);
    }
    save_panels(
        &out.join("mistakes.png"),
        &[loss_panel, acc_panel],
        (560, 400),
    )?;
    let tiny_vm = VarMap::new();
    Clip::new(&tiny, weights::seeded_var_builder(&tiny_vm, 0, &dev))?;
    let tiny_params: usize = weights::sorted_vars(&tiny_vm)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let full_params: usize = weights::sorted_vars(&clip.varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let demo_size = format!(
        "Each run trains a {tiny_params}-parameter model with CLIP's own image tower, a ViT \
         ({:.0} times smaller than the shipped {full_params}), for {} steps of 32 pairs.",
        full_params as f64 / tiny_params as f64,
        args.demo_steps
    );
    write_md("demo_size.md", &format!("{demo_size}\n"))?;
    println!("{mistakes}\n");
    write_md("mistakes.md", &mistakes.to_markdown())?;
    nb.say(&format!(
        "{demo_size} With CLIP's loss it learns something within seconds. Without L2 normalisation the dot product rewards long vectors instead of \
         well-aimed ones. With uniform targets every caption counts as a match for every \
         image, so nothing pushes pairs apart: the image embeddings collapse towards one \
         point (mean cosine between different images near 1) and accuracy stays at chance."
    ));

    // ---------------------------------------------------------------------------------------
    nb.cell("The text embedding space");
    let pairs = all_pairs();
    let prompts: Vec<String> = pairs.iter().map(|p| p.2.clone()).collect();
    let emb: Vec<Vec<f32>> = clip.embed_texts(&prompts)?.to_vec2()?;
    let (xy, explained) = pca_2d(&emb);
    let points: Vec<Point> = pairs
        .iter()
        .zip(&xy)
        .map(|((col, shape, _), &(x, y))| Point {
            x,
            y,
            label: if is_held_out(*col, *shape) {
                format!("{} {} (held out)", col.word(), shape.word())
            } else {
                format!("{} {}", col.word(), shape.word())
            },
            color: {
                let [r, g, b] = col.rgb();
                plotters::style::RGBColor(r, g, b)
            },
            marker: Shape::ALL.iter().position(|s| s == shape).unwrap_or(0),
        })
        .collect();
    save_scatter(
        &out.join("text_space.png"),
        &format!(
            "28 caption embeddings, first two principal components ({:.0}% + {:.0}% of variance)",
            100.0 * explained[0],
            100.0 * explained[1]
        ),
        ("PC 1", "PC 2"),
        &points,
        (900, 640),
    )?;
    nb.say(&format!(
        "Projected to two dimensions (PCA keeps {:.0}% of the variance), the 28 captions \
         arrange themselves by attribute: text_space.png colours each point with its colour \
         and draws it with its shape.",
        100.0 * (explained[0] + explained[1])
    ));

    // ---------------------------------------------------------------------------------------
    nb.cell("Which words the model confuses");
    let shape_names: Vec<String> = Shape::ALL.iter().map(|s| s.word().to_string()).collect();
    let color_names: Vec<String> = Color::ALL.iter().map(|c| c.word().to_string()).collect();
    for (name, m, labels) in [
        ("shape_confusion.png", &z.shape_confusion, &shape_names),
        ("color_confusion.png", &z.color_confusion, &color_names),
    ] {
        let rows: Vec<Vec<f32>> = m
            .iter()
            .map(|r| {
                let n = r.iter().sum::<usize>().max(1) as f32;
                r.iter().map(|&v| v as f32 / n).collect()
            })
            .collect();
        let title = format!(
            "Zero-shot {}: share of images (rows: truth, columns: prediction)",
            if name.starts_with("shape") {
                "shapes"
            } else {
                "colours"
            }
        );
        let heat = render_heatmap(&Heatmap {
            title: &title,
            values: &rows,
            range: (0.0, 1.0),
            row_images: None,
            row_labels: labels,
            col_labels: labels,
            decimals: Some(2),
        })?;
        save_png(&heat, &out.join(name))?;
    }
    let errors = format!(
        "Over all {} test images the colour is right {:.1}% of the time and the shape {:.1}%.",
        z.seen_images + z.held_out_images,
        100.0 * z.color_acc,
        100.0 * z.shape_acc
    );
    nb.say(&errors);
    write_md("errors.md", &format!("{errors}\n"))?;
    let mut conf = Table::new(["true caption", "model's choice", "images"]);
    for (t, p, n) in z.confusions.iter().take(6) {
        conf.row([t.clone(), p.clone(), n.to_string()]);
    }
    println!("{conf}\n");
    write_md("confusions.md", &conf.to_markdown())?;
    nb.say(&format!("Figures and tables are in {}.", out.display()));
    Ok(())
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |m, (i, &x)| if x > m.1 { (i, x) } else { m },
        )
        .0
}

/// softmax(scale * cosine) over one row.
fn softmax_scaled(row: &[f32], scale: f64) -> Vec<f64> {
    let l: Vec<f64> = row.iter().map(|&c| scale * f64::from(c)).collect();
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}
