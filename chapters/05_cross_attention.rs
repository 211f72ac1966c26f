//! Chapter 5: cross-attention. The prompt reaches the picture through one mechanism: at several
//! layers of the UNet, every latent position asks every text token how relevant it is, and
//! mixes in what the relevant ones carry. This chapter computes attention by hand, then records
//! it inside the shipped UNet and draws, word by word, where the picture looks.
//!
//! ```text
//! cargo run --release --bin ch05_cross_attention                  # run straight through
//! cargo run --release --bin ch05_cross_attention -- --interactive # pause between cells
//! cargo run --release --bin ch05_cross_attention -- --book        # refresh the book's figures
//! ```
//!
//! Uses the shipped models in `data/`. Cells match the sections of
//! `book/src/ch05_cross_attention.md`. Shows prompt-to-prompt's two edits, re-weighting one word
//! and swapping one word while keeping the old maps; leaves out its refinement edit (adding
//! words) and its local blending.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Parser;
use inkdrop::noising::{add_noise_tensor, randn_tensor};
use inkdrop::pipeline::attention::{
    overlay, peak_on_color, token_heatmaps, word_swap, MapSelection,
};
use inkdrop::pipeline::eval::default_prompts;
use inkdrop::pipeline::{GenerateRequest, Generation, TextToImage};
use inkdrop::shapes::caption::parse_claim;
use inkdrop::shapes::render::object_coverage;
use inkdrop::shapes::scene::Scene;
use inkdrop::shapes::{render, WorldConfig};
use inkdrop::support::files::{chapter_out_dir, write_atomic};
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{enlarge, save_png};
use inkdrop::support::notebook::Notebook;
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, DEFAULT_SEED};
use inkdrop::train::grounding::{
    bound_shares, even_bound_share, grounding_targets, inside_shares, latent_grids, object_tokens,
    uniform_share,
};
use inkdrop::train::unet::latent_dataset_of;
use inkdrop::unet::attention::AttentionRecorder;
use inkdrop::vae::eval::HELD_OUT_SEED;
use ndarray::{array, Array2, Axis};

/// Chapter 5 of inkdrop: cross-attention, as a notebook in the terminal.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Pause between cells (press Enter); ignored when stdout is not a terminal.
    #[arg(long)]
    interactive: bool,
    /// Write figures and tables into the book (`book/src/generated/ch05/`).
    #[arg(long, conflicts_with = "out")]
    book: bool,
    /// Output folder for figures and tables [default: target/inkdrop/ch05].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// The prompt whose words are followed.
    #[arg(long, default_value = "a red circle above a blue square")]
    prompt: String,
    /// Denoising steps (DDIM).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=1000))]
    steps: u64,
    /// Seeds per two-object prompt in the localisation measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    seeds: u64,
}

fn main() -> std::process::ExitCode {
    run_main(|| run(Args::parse()))
}

/// A matrix as a Markdown table with row and column names.
fn matrix_table(m: &Array2<f32>, rows: &[&str], cols: &[&str]) -> Table {
    let mut t =
        Table::new(std::iter::once(String::new()).chain(cols.iter().map(|c| c.to_string())));
    for (r, name) in rows.iter().enumerate() {
        t.row(std::iter::once(name.to_string()).chain(m.row(r).iter().map(|v| format!("{v:.3}"))));
    }
    t
}

fn run(args: Args) -> anyhow::Result<()> {
    let out = chapter_out_dir("ch05", args.book, args.out.as_deref())?;
    let write_md = |name: &str, text: &str| write_atomic(&out.join(name), text.as_bytes());
    let mut nb = Notebook::new("Chapter 5: cross-attention", args.interactive);

    // ---------------------------------------------------------------------------------------
    nb.cell("Attention by hand");
    // ANCHOR: by_hand
    // Three image positions ask (queries), four tokens answer (keys) and carry content (values).
    let q: Array2<f32> = array![[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]; //       (3 positions, d = 2)
    let k: Array2<f32> = array![[0.1, 0.1], [2.0, 0.0], [0.0, 2.0], [0.2, 0.1]]; // (4 tokens, d)
    let v: Array2<f32> = array![
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.1, 0.1, 0.1]
    ]; // (4, 3)
    let scores = q.dot(&k.t()) / (2f32).sqrt(); //                                (3, 4): Q K^T / sqrt(d)
    let probs = scores.map_axis(Axis(1), |row| {
        let max = row.fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let e = row.mapv(|x| (x - max).exp());
        let sum = e.sum();
        e / sum
    }); //                                                                        softmax over each row
    let probs = ndarray::stack(Axis(0), &probs.iter().map(|r| r.view()).collect::<Vec<_>>())?; // (3, 4)
    let output = probs.dot(&v); //                                                 (3, 3): each row mixes the values
                                // ANCHOR_END: by_hand
    let positions = ["position A", "position B", "position C"];
    let tokens = ["start", "red", "blue", "pad"];
    for (name, m, cols) in [
        ("scores", &scores, &tokens[..]),
        ("probs", &probs, &tokens[..]),
        ("output", &output, &["R", "G", "B"][..]),
    ] {
        let t = matrix_table(m, &positions, cols);
        println!("{name}:\n{t}\n");
        write_md(&format!("by_hand_{name}.md"), &t.to_markdown())?;
    }
    nb.say(
        "Position A's query points the way 'red' points, so its attention row puts most weight \
         on 'red' and its output is mostly red's value; B goes to 'blue'; C is between the two \
         and mixes both. Nothing here is learned: Q, K and V come from three learned linear maps \
         in the real model, and that is all the training changes.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Queries from the picture, keys and values from the words");
    let pipe = TextToImage::load_default()?;
    let base = GenerateRequest {
        prompt: args.prompt.clone(),
        seed: args.seed,
        steps: args.steps as usize,
        record_attention: true,
        ..GenerateRequest::default()
    };
    let g = pipe.generate(&base)?;
    let enc = pipe.clip.tokenizer.encode(&args.prompt)?;
    let label = |i: usize| enc.tokens[i].trim_end_matches("</w>").to_string();
    let cfg = &pipe.unet.unet.config;
    let mut table = Table::new([
        "cross-attention layer",
        "queries (latent grid)",
        "heads x head width",
        "keys and values",
        "probabilities",
    ]);
    for map in &g.trace.steps[0].attention {
        let (b, heads, hw, t) = map.probs.dims4()?;
        let width = channels_of(&map.name, &cfg.block_out_channels);
        table.row([
            map.name.replace(".transformer_blocks.0.attn2", ""),
            format!("{} x {} = {hw}", map.height, map.width),
            format!("{heads} x {}", width / heads),
            format!("{t} tokens x {}", cfg.cross_attention_dim),
            format!("({b}, {heads}, {hw}, {t})"),
        ]);
    }
    println!("{table}\n");
    write_md("layers.md", &table.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Word by word");
    // ANCHOR: word_maps
    let maps = token_heatmaps(&g.trace, 0, 1, &MapSelection::default(), 32)?; // every step, layer, head
                                                                              // ANCHOR_END: word_maps
    let image = &g.images[0];
    let shown: Vec<usize> = (0..=(enc.eot_index + 1).min(enc.tokens.len() - 1)).collect();
    let mut tiles = vec![Tile {
        image: enlarge(image, 4),
        caption: vec!["the picture".into(), String::new()],
    }];
    tiles.extend(shown.iter().map(|&i| Tile {
        image: overlay(image, &maps.maps[i], 32, 4),
        caption: vec![
            format!("{i}: {}", label(i)),
            format!("{:.1}%", 100.0 * maps.mass[i]),
        ],
    }));
    save_png(
        &labelled_grid(
            &tiles,
            6,
            Some(&format!("\"{}\", seed {}", args.prompt, args.seed)),
        )?,
        &out.join("tokens.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("When each word finds its place");
    let word = (1..enc.eot_index)
        .find(|&i| {
            inkdrop::shapes::scene::Color::ALL
                .iter()
                .any(|c| c.word() == label(i))
        })
        .unwrap_or(1);
    let n = g.trace.steps.len();
    let picked: Vec<usize> = (0..6).map(|k| k * (n - 1) / 5).collect();
    let mut tiles = Vec::new();
    for &s in &picked {
        let m = token_heatmaps(
            &g.trace,
            0,
            1,
            &MapSelection {
                steps: Some((s, s)),
                ..MapSelection::default()
            },
            32,
        )?;
        tiles.push(Tile {
            image: overlay(image, &m.maps[word], 32, 4),
            caption: vec![format!("step {}, t={:.0}", s + 1, g.trace.steps[s].t)],
        });
    }
    save_png(
        &labelled_grid(
            &tiles,
            tiles.len(),
            Some(&format!("\"{}\" across the steps", label(word))),
        )?,
        &out.join("steps.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Coarse and fine layers");
    let mut tiles = Vec::new();
    for module in &maps.modules {
        let m = token_heatmaps(
            &g.trace,
            0,
            1,
            &MapSelection {
                block: Some(module.clone()),
                ..MapSelection::default()
            },
            32,
        )?;
        let grid = g.trace.steps[0]
            .attention
            .iter()
            .find(|a| &a.name == module)
            .map_or(0, |a| a.height);
        tiles.push(Tile {
            image: overlay(image, &m.maps[word], 32, 4),
            caption: vec![
                module
                    .replace(".transformer_blocks.0.attn2", "")
                    .replace("attentions.", "attn "),
                format!("{grid} x {grid} queries"),
            ],
        });
    }
    save_png(
        &labelled_grid(
            &tiles,
            tiles.len(),
            Some(&format!(
                "\"{}\" in each cross-attention layer",
                label(word)
            )),
        )?,
        &out.join("layers.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("The start token soaks up attention");
    let prompts = default_prompts();
    let two: Vec<String> = prompts
        .iter()
        .filter(|p| parse_claim(p).is_some_and(|c| c.objects.len() == 2))
        .cloned()
        .collect();
    let (mut start, mut first, mut words, mut end) = (0f64, 0f64, 0f64, 0f64);
    let mut runs: Vec<(String, Generation)> = Vec::new();
    for p in &two {
        let g = pipe.generate(&GenerateRequest {
            prompt: p.clone(),
            num_images: args.seeds as usize,
            ..base.clone()
        })?;
        let e = pipe.clip.tokenizer.encode(p)?;
        for k in 0..args.seeds as usize {
            let m = token_heatmaps(
                &g.trace,
                k,
                args.seeds as usize,
                &MapSelection::default(),
                32,
            )?;
            start += m.mass[0];
            first += m.mass[1];
            words += m.mass[2..e.eot_index].iter().sum::<f64>();
            end += m.mass[e.eot_index..].iter().sum::<f64>();
        }
        runs.push((p.clone(), g));
    }
    let total = start + first + words + end;
    let mut table = Table::new(["tokens", "share of cross-attention"]);
    for (name, v) in [
        ("start token <|startoftext|>", start),
        ("the first word (\"a\" or \"an\")", first),
        ("the other words", words),
        ("<|endoftext|> and its padding copies", end),
    ] {
        table.row([name.to_string(), format!("{:.1}%", 100.0 * v / total)]);
    }
    println!("{table}\n");
    write_md("start_token.md", &table.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Does \"red\" land on the red object?");
    // ANCHOR: localisation
    let (mut hits, mut checked) = (0usize, 0usize);
    for (p, g) in &runs {
        let e = pipe.clip.tokenizer.encode(p)?;
        for k in 0..args.seeds as usize {
            let m = token_heatmaps(
                &g.trace,
                k,
                args.seeds as usize,
                &MapSelection::default(),
                32,
            )?;
            for obj in parse_claim(p).map(|c| c.objects).unwrap_or_default() {
                let Some(color) = obj.color else { continue };
                let Some(i) = e
                    .tokens
                    .iter()
                    .position(|t| *t == format!("{}</w>", color.word()))
                else {
                    continue;
                };
                // Only when the picture has that colour at all: a missing object is the UNet's
                // failure (chapter 7 counts it), not the attention map's.
                if inkdrop::shapes::detect::detect(&g.images[k])
                    .iter()
                    .any(|d| d.color == color)
                {
                    checked += 1;
                    hits += usize::from(peak_on_color(&m.maps[i], &g.images[k], color));
                }
            }
        }
    }
    // ANCHOR_END: localisation
    let text = format!(
        "{} two-object prompts x {} seeds: in {hits} of {checked} cases where the colour was drawn \
         ({:.0}%), the colour word's aggregated map peaks on a pixel of that colour (or next to one).\n",
        two.len(),
        args.seeds,
        100.0 * hits as f64 / checked.max(1) as f64
    );
    println!("{text}");
    write_md("localisation.md", &text)?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Where each word should look, and where it does");
    // 64 two-object pictures the UNet never trained on, their captions, and their scenes.
    let world = WorldConfig {
        p_two_objects: 1.0,
        ..WorldConfig::default()
    };
    let data = latent_dataset_of(&pipe.vae.vae, &world, HELD_OUT_SEED, 64, None)?;
    let scenes: Vec<&Scene> = data.scenes.iter().collect();
    // ANCHOR: grounding
    let grids = latent_grids(cfg); //                                        [8, 4]
    let targets = grounding_targets(
        &pipe.clip.tokenizer,
        &data.captions,
        &scenes,
        &grids,
        pipe.clip.tokenizer.context_length, //                                 16 tokens
        &Device::Cpu,
    )?
    .context("the held-out captions name no object")?; // masks[g]: (64, g*g, 16)
    let context = pipe
        .unet
        .encoder_hidden_states(&pipe.clip, &data.captions)?; // (64, 16, W)
    let schedule = pipe.unet.schedule()?;
    let mut rng = inkdrop::support::seeded_rng(args.seed);
    let noise = randn_tensor(data.latents.dims(), &mut rng, &Device::Cpu)?; // (64, 4, 8, 8)
    let (mut shares, mut bound) = (Vec::new(), Vec::new());
    for t in [100usize, 500, 900] {
        let x_t = add_noise_tensor(&schedule, &data.latents, &noise, &[t; 64])?; // (64, 4, 8, 8)
        let rec = AttentionRecorder::cross();
        let tt = Tensor::from_vec(vec![t as f32; 64], 64, &Device::Cpu)?;
        pipe.unet.unet.forward(&x_t, &tt, &context, Some(&rec))?;
        let maps = rec.take();
        shares.push(inside_shares(&maps, &targets)?); // per layer: mean share inside
        bound.push(bound_shares(&maps, &targets)?); // per layer: own words' share where objects lie
    }
    // ANCHOR_END: grounding
    let table = per_layer_table(&shares, "spread evenly", &|g| {
        Ok(uniform_share(&targets, g)?)
    })?;
    println!("{table}\n");
    write_md("grounding.md", &table.to_markdown())?;
    // The pixels' side: where an object lies, how much of the attention to object words goes
    // to that object's own words; "words alike" spreads each cell's attention evenly.
    let table = per_layer_table(&bound, "words alike", &|g| {
        Ok(even_bound_share(&targets, g)?)
    })?;
    println!("{table}\n");
    write_md("binding.md", &table.to_markdown())?;
    // The targets of the first picture's words, drawn over it.
    let first = &render(scenes[0], 32);
    let e0 = pipe.clip.tokenizer.encode(&data.captions[0])?;
    let mut tiles = Vec::new();
    for (obj, tok) in object_tokens(&pipe.clip.tokenizer, &data.captions[0])? {
        let word = e0.tokens[tok].trim_end_matches("</w>").to_string();
        for &g in &grids {
            let cover = object_coverage(scenes[0], obj, g, 64 / g); // (g * g)
            tiles.push(Tile {
                image: overlay(first, &cover, g, 4), // each cell drawn as a block
                caption: vec![format!("\"{word}\", {g}x{g}")],
            });
        }
    }
    save_png(
        &labelled_grid(
            &tiles,
            2 * grids.len(),
            Some(&format!("\"{}\"", data.captions[0])),
        )?,
        &out.join("grounding.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Turning one word down and up");
    let prompt = "a red circle";
    let e = pipe.clip.tokenizer.encode(prompt)?;
    let red = e.tokens.iter().position(|t| t == "red</w>").unwrap_or(2);
    let scales = [0.0, 0.5, 1.0, 2.0, 4.0];
    let mut tiles = Vec::new();
    let mut table = Table::new([
        "attention to \"red\" x",
        "largest object red (of 8)",
        "colours of the largest objects",
    ]);
    for &scale in &scales {
        // ANCHOR: reweight
        let g = pipe.generate(&GenerateRequest {
            prompt: prompt.into(),
            num_images: 8,
            attention_reweight: Some((red, scale)), // P[:, :, :, red] *= scale, prompt branch only
            record_attention: false,
            ..base.clone()
        })?;
        // ANCHOR_END: reweight
        let colours: Vec<String> = g
            .images
            .iter()
            .map(|img| {
                inkdrop::shapes::detect::detect(img)
                    .first()
                    .map_or("none".into(), |d| d.color.word().to_string())
            })
            .collect();
        let reds = colours.iter().filter(|c| *c == "red").count();
        table.row([format!("{scale}"), reds.to_string(), colours.join(", ")]);
        for img in g.images.iter().take(4) {
            tiles.push(Tile {
                image: enlarge(img, 4),
                caption: vec![format!("\"red\" x {scale}")],
            });
        }
    }
    println!("{table}\n");
    write_md("reweight.md", &table.to_markdown())?;
    save_png(
        &labelled_grid(
            &tiles,
            4,
            Some("\"a red circle\", the same four seeds, attention to \"red\" scaled"),
        )?,
        &out.join("reweight.png"),
    )?;

    // ---------------------------------------------------------------------------------------
    nb.cell("Swapping one word, keeping the maps");
    let inject_steps = (args.steps as usize * 4).div_ceil(5);
    // ANCHOR: word_swap
    let swap = word_swap(
        &pipe,
        &GenerateRequest {
            prompt: "a red circle".into(),
            num_images: 8,
            record_attention: false,
            ..base.clone()
        },
        "a blue circle", // same tokens but one
        inject_steps,    // P from "a red circle" for the first 80% of the steps
    )?;
    // ANCHOR_END: word_swap
    let largest = |img: &image::RgbImage| inkdrop::shapes::detect::detect(img).into_iter().next();
    let mut table = Table::new([
        "seed",
        "\"a red circle\"",
        "\"a blue circle\" alone",
        "with the old maps",
    ]);
    let describe = |d: &Option<inkdrop::shapes::detect::Detected>| {
        d.as_ref().map_or("nothing".into(), |d| {
            format!(
                "{} at ({:.2}, {:.2})",
                d.color.word(),
                d.center[0],
                d.center[1]
            )
        })
    };
    let (mut moved_plain, mut moved_injected, mut counted, mut blue) = (0f32, 0f32, 0usize, 0usize);
    let mut tiles = Vec::new();
    for k in 0..8 {
        let [s, p, i] = [&swap.source, &swap.plain, &swap.injected].map(|g| largest(&g.images[k]));
        blue += usize::from(i.as_ref().is_some_and(|d| d.color.word() == "blue"));
        if let (Some(s), Some(p), Some(i)) = (&s, &p, &i) {
            let dist =
                |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
            moved_plain += dist(s.center, p.center);
            moved_injected += dist(s.center, i.center);
            counted += 1;
        }
        table.row([
            (args.seed + k as u64).to_string(),
            describe(&s),
            describe(&p),
            describe(&i),
        ]);
        if k < 4 {
            for (g, what) in [
                (&swap.source, "red"),
                (&swap.plain, "blue alone"),
                (&swap.injected, "blue, red's maps"),
            ] {
                tiles.push(Tile {
                    image: enlarge(&g.images[k], 4),
                    caption: vec![format!("seed {}", args.seed + k as u64), what.to_string()],
                });
            }
        }
    }
    let n = counted.max(1) as f32;
    let summary = format!(
        "With the old maps the picture is blue in {blue} of 8. Where all three pictures have an \
         object ({counted} of 8), the largest object's centre moved {:.2} of the canvas from the \
         red picture's on average without the old maps, and {:.2} with them.",
        moved_plain / n,
        moved_injected / n,
    );
    println!("{table}\n\n{summary}\n");
    write_md(
        "word_swap.md",
        &format!("{}\n{summary}\n", table.to_markdown()),
    )?;
    save_png(
        &labelled_grid(&tiles, 3, Some("\"red\" -> \"blue\", same noise"))?,
        &out.join("word_swap.png"),
    )?;
    Ok(())
}

/// The width of the level a module sits at (`down_blocks.1...` -> block_out_channels[1]).
fn channels_of(name: &str, channels: &[usize]) -> usize {
    let level = |prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse::<usize>().ok())
    };
    if let Some(i) = level("down_blocks.") {
        channels[i]
    } else if let Some(i) = level("up_blocks.") {
        channels[channels.len() - 1 - i]
    } else {
        channels[channels.len() - 1]
    }
}

/// One row per cross-attention layer: its grid, the share measured at each timestep of
/// `per_t` (per layer: name, grid side, share), and `baseline(grid side)` in a last column.
fn per_layer_table(
    per_t: &[Vec<(String, usize, f64)>],
    baseline_name: &str,
    baseline: &dyn Fn(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<Table> {
    let mut table = Table::new([
        "cross-attention layer",
        "grid",
        "t = 100",
        "t = 500",
        "t = 900",
        baseline_name,
    ]);
    for (i, (name, g, _)) in per_t[0].iter().enumerate() {
        let mut row = vec![
            name.trim_end_matches(".transformer_blocks.0.attn2")
                .to_string(),
            format!("{g}x{g}"),
        ];
        row.extend(per_t.iter().map(|s| format!("{:.0}%", 100.0 * s[i].2)));
        row.push(format!("{:.0}%", 100.0 * baseline(*g)?));
        table.row(row);
    }
    Ok(table)
}
