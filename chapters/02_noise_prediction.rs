//! Chapter 2: noise prediction. The one thing a diffusion model learns: look at a noisy sample
//! and say which noise was added. This chapter trains such a noise predictor on 2-D points,
//! where every step can be drawn and training takes seconds.
//!
//! ```text
//! cargo run --release --bin ch02_noise_prediction                  # run straight through
//! cargo run --release --bin ch02_noise_prediction -- --interactive # pause between cells
//! cargo run --release --bin ch02_noise_prediction -- --book        # refresh the book's figures
//! ```
//!
//! The first cells train a denoiser on 2-D points in seconds; the last ones run the same loop on
//! Shapes World latents with the shipped `data/clip.safetensors`, `data/vae.safetensors` and
//! `data/unet.safetensors` (retrain them with `inkdrop train all`). Cells match the sections of
//! `book/src/ch02_noise_prediction.md`. Leaves out: the training run of the UNet itself (minutes;
//! `inkdrop train unet` shows its progress and sample grids).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clap::Parser;
use inkdrop::clip::bundle::ClipBundle;
use inkdrop::clip::images_tensor;
use inkdrop::noising::{add_noise_tensor, randn_tensor};
use inkdrop::schedule::{BetaSchedule, NoiseSchedule, ScheduleConfig};
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::support::cloud::{save_clouds, CloudPanel};
use inkdrop::support::files::default_out_dir;
use inkdrop::support::files::{chapter_out_dir, write_atomic};
use inkdrop::support::grid::{labelled_grid, Tile};
use inkdrop::support::image_io::{enlarge, save_png};
use inkdrop::support::notebook::Notebook;
use inkdrop::support::plot::{save_panels, Panel, Series};
use inkdrop::support::table::Table;
use inkdrop::support::{run_main, seeded_rng, DEFAULT_SEED};
use inkdrop::toy2d::{
    parameter_count, points_tensor, sample_toy, spiral, tensor_points, train_toy, vector_field,
    ToyDenoiser,
};
use inkdrop::train::unet::{latent_dataset, train_unet, UNetTrainConfig};
use inkdrop::train::vae::tensor_images;
use inkdrop::unet::bundle::UNetBundle;
use inkdrop::unet::UNetConfig;
use inkdrop::vae::bundle::VaeBundle;
use inkdrop::vae::io::latent_channel_images;
use inkdrop::vae::AutoencoderKL;

/// Chapter 2 of inkdrop: noise prediction, as a notebook in the terminal.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Pause between cells (press Enter); ignored when stdout is not a terminal.
    #[arg(long)]
    interactive: bool,
    /// Write figures and tables into the book (`book/src/generated/ch02/`).
    #[arg(long, conflicts_with = "out")]
    book: bool,
    /// Output folder for figures and tables [default: target/inkdrop/ch02].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the data, the initial weights and the noise.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Training steps of the 2-D denoiser (batches of 256 points).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    steps: u64,
    /// Steps of the live training run of a tiny UNet on real latents (batches of 32).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    live_steps: u64,
}

fn main() -> std::process::ExitCode {
    run_main(|| run(Args::parse()))
}

/// Half-width of the square the figures show.
const EXTENT: f64 = 3.2;

fn run(args: Args) -> anyhow::Result<()> {
    let out = chapter_out_dir("ch02", args.book, args.out.as_deref())?;
    let write_md = |name: &str, text: &str| write_atomic(&out.join(name), text.as_bytes());
    let mut nb = Notebook::new("Chapter 2: noise prediction", args.interactive);
    let dev = Device::Cpu;
    let mut rng = seeded_rng(args.seed);
    let data = spiral(4096, &mut rng);
    let schedule = NoiseSchedule::new(ScheduleConfig::for_schedule(BetaSchedule::Linear))?;

    // ---------------------------------------------------------------------------------------
    nb.cell("A cloud of ink");
    nb.say(
        "Our data for this chapter: 4,096 points on a spiral. Each point plays the part of a \
         whole image (an image is a point too, in a space of 3,072 dimensions instead of 2). \
         The forward process of chapter 1 applies unchanged: x_t = sqrt(alpha_bar_t) x_0 + \
         sqrt(1 - alpha_bar_t) eps, here with DDPM's linear schedule.",
    );
    let x0_all = points_tensor(&data)?; // (4096, 2)
    let ts = [0usize, 50, 150, 300, 600, 999];
    let mut panels = Vec::new();
    for &t in &ts {
        let eps = randn_tensor(&[data.len(), 2], &mut rng, &dev)?;
        let x_t = add_noise_tensor(&schedule, &x0_all, &eps, &vec![t; data.len()])?; // (4096, 2)
        panels.push(CloudPanel {
            title: format!("t = {t}, alpha_bar = {:.3}", schedule.alpha_bar(t)),
            points: tensor_points(&x_t)?,
            ..CloudPanel::default()
        });
    }
    save_clouds(&out.join("forward.png"), &panels, EXTENT, 260)?;

    // ---------------------------------------------------------------------------------------
    nb.cell("The six steps");
    let (model, varmap, _) = train_toy(&data, &schedule, 1, 256, args.seed)?; // an untrained model
                                                                              // ANCHOR: six_steps
    let idx: Vec<u32> = (0..256).map(|i| (i * 16) as u32).collect();
    let x0 = x0_all.index_select(&Tensor::new(idx.as_slice(), &dev)?, 0)?; // 1. data: (256, 2)
    let t: Vec<usize> = (0..256).map(|i| (i * 997) % 1000).collect(); // 2. a timestep per point
    let eps = randn_tensor(&[256, 2], &mut rng, &dev)?; //                  2. and the noise: (256, 2)
    let x_t = add_noise_tensor(&schedule, &x0, &eps, &t)?; //               2. x_t: (256, 2)
    let t_in = Tensor::from_vec(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), 256, &dev)?;
    let eps_hat = model.forward(&x_t, &t_in)?; //                           3. predicted noise: (256, 2)
    let loss = (&eps_hat - &eps)?.sqr()?.mean_all()?; //                    4. MSE: a scalar
                                                      // 5. loss.backward() and an AdamW step; 6. repeat (train_toy in src/toy2d.rs)
                                                      // ANCHOR_END: six_steps
    let stat = |x: &Tensor| -> anyhow::Result<String> {
        let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let n = v.len() as f64;
        let mean = v.iter().map(|&a| f64::from(a)).sum::<f64>() / n;
        let std = (v
            .iter()
            .map(|&a| (f64::from(a) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        Ok(format!("{:?}", x.dims()) + &format!(" | mean {mean:+.3}, std {std:.3}"))
    };
    let mut steps = Table::new(["step", "tensor", "shape | statistics"]);
    steps.row(["1", "x_0 (data)", &stat(&x0)?]);
    steps.row(["2", "eps ~ N(0, I)", &stat(&eps)?]);
    steps.row(["2", "x_t", &stat(&x_t)?]);
    steps.row(["3", "eps_hat (untrained)", &stat(&eps_hat)?]);
    steps.row(["4", "loss", &format!("{:.4}", loss.to_scalar::<f32>()?)]);
    println!("{steps}\n");
    write_md("six_steps.md", &steps.to_markdown())?;
    nb.say(&format!(
        "The denoiser is a small MLP ({} parameters): it reads the 2 coordinates of x_t and a \
         32-number sinusoidal code of t, and outputs 2 numbers, its guess of eps. Untrained, \
         its guesses are near zero and the loss is about 1, the variance of the noise.",
        parameter_count(&varmap)
    ));

    // ---------------------------------------------------------------------------------------
    nb.cell("Training");
    let started = std::time::Instant::now();
    // ANCHOR: train
    let (model, _varmap, losses) =
        train_toy(&data, &schedule, args.steps as usize, 256, args.seed)?;
    // ANCHOR_END: train
    let seconds = started.elapsed().as_secs_f64();
    let window = (losses.len() / 30).max(1);
    let smooth: Vec<(f64, f64)> = losses
        .chunks(window)
        .enumerate()
        .map(|(i, c)| {
            (
                ((i + 1) * window) as f64,
                c.iter().sum::<f64>() / c.len() as f64,
            )
        })
        .collect();
    let raw: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .step_by(window.max(1) / 4 + 1)
        .map(|(i, &l)| ((i + 1) as f64, l))
        .collect();
    save_panels(
        &out.join("loss.png"),
        &[Panel {
            title: "training loss (MSE between eps_hat and eps)".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![
                Series::new("each batch", raw, 5),
                Series::new(format!("mean of {window} steps"), smooth.clone(), 0),
            ],
            y_range: Some((0.0, 1.2)),
            ..Panel::default()
        }],
        (720, 360),
    )?;
    // The book gets the numbers that do not depend on the machine; the terminal also the time.
    let trained = format!(
        "{} steps of 256 points; the loss fell from {:.3} to {:.3} (mean of the last {window} steps). \
         It cannot reach 0, and the table below says where the remaining error sits.",
        args.steps,
        losses.first().copied().unwrap_or(f64::NAN),
        smooth.last().map_or(f64::NAN, |p| p.1)
    );
    nb.say(&format!("{trained} (This run took {seconds:.1} s.)"));
    write_md("training.md", &format!("{trained}\n"))?;
    let by_t = loss_by_t(&model, &schedule, &x0_all, args.seed)?;
    println!("{by_t}\n");
    write_md("loss_by_t.md", &by_t.to_markdown())?;
    nb.say(
        "Predicting the noise is hardest at small t and easy at large t. At t = 999, x_t is \
         almost all noise, so eps is nearly x_t itself. At t = 10 the noise is a tiny nudge, and \
         telling the nudge from the point needs the exact position of the spiral, down to its \
         own jitter, which looks just like noise. (A small error in eps at small t is also a \
         small error in x_0, since sqrt(1 - alpha_bar_t) is tiny there.)",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("What the network learned");
    let mut panels = Vec::new();
    for t in [20usize, 100, 300, 700] {
        // ANCHOR: field
        let steps = vector_field(&model, &schedule, t, 15, EXTENT as f32 * 0.85)?; // (x, x0_hat - x)
                                                                                   // ANCHOR_END: field
        let longest = steps
            .iter()
            .map(|(_, d)| d[0].hypot(d[1]))
            .fold(0f32, f32::max)
            .max(1e-6);
        let arrows = steps
            .iter()
            .map(|&(p, d)| (p, [0.35 * d[0] / longest, 0.35 * d[1] / longest]))
            .collect();
        let title = format!("t = {t} (longest arrow = {longest:.2})");
        panels.push(CloudPanel {
            title,
            points: data.iter().step_by(4).copied().collect(),
            arrows,
            ..CloudPanel::default()
        });
    }
    save_clouds(&out.join("field.png"), &panels, EXTENT, 300)?;
    nb.say(
        "Each arrow starts at a point x and points to the model's estimate of the clean point, \
         x0_hat = (x - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), drawn shortened (the \
         title gives the true length of the longest). This is the score, the direction in which \
         the data gets more likely, scaled. At t = 700 every arrow points to the middle: from \
         that much noise the best guess of x_0 is near the mean of the data. At t = 20 points \
         away from the spiral are pulled onto its nearest arm.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Running the film backwards");
    let paths = sample_toy(&model, &schedule, 2000, 100, args.seed + 1)?;
    let starts: Vec<[f32; 2]> = paths.iter().map(|p| p[0]).collect();
    let ends: Vec<[f32; 2]> = paths.iter().filter_map(|p| p.last().copied()).collect();
    let few: Vec<Vec<[f32; 2]>> = paths.iter().take(8).cloned().collect();
    save_clouds(
        &out.join("reverse.png"),
        &[
            CloudPanel {
                title: "start: x_T ~ N(0, I)".into(),
                points: starts.clone(),
                ..CloudPanel::default()
            },
            CloudPanel {
                title: "8 trajectories".into(),
                points: data.iter().step_by(4).copied().collect(),
                paths: few,
                ..CloudPanel::default()
            },
            CloudPanel {
                title: "after 100 DDPM steps".into(),
                points: ends.clone(),
                ..CloudPanel::default()
            },
            CloudPanel {
                title: "the data".into(),
                points: data.iter().take(2000).copied().collect(),
                ..CloudPanel::default()
            },
        ],
        EXTENT,
        260,
    )?;
    let (d_noise, d_samples) = (mean_distance(&starts, &data), mean_distance(&ends, &data));
    let verdict = format!(
        "Mean distance from a point to the nearest data point: {d_noise:.3} for the starting noise, \
         {d_samples:.3} after denoising (the spiral's own jitter is 0.04 per axis)."
    );
    nb.say(&verdict);
    write_md("reverse.md", &format!("{verdict}\n"))?;
    image_cells(&mut nb, &out, &args)?;
    println!("figures and tables in {}", out.display());
    Ok(())
}

/// The same loop on Shapes World latents, with the shipped CLIP text encoder, VAE and UNet.
fn image_cells(nb: &mut Notebook, out: &std::path::Path, args: &Args) -> anyhow::Result<()> {
    let write_md = |name: &str, text: &str| write_atomic(&out.join(name), text.as_bytes());
    let dev = Device::Cpu;
    let clip = ClipBundle::load_default()?;
    let vae = VaeBundle::load_default()?.vae;
    let unet = UNetBundle::load_default()?;
    let schedule = unet.schedule()?; // Stable Diffusion's (as the shipped UNet was trained)
    let mut rng = seeded_rng(args.seed + 20);

    // ---------------------------------------------------------------------------------------
    nb.cell("The same six steps on pictures");
    let samples: Vec<_> = (0..4)
        .map(|i| sample_at(&WorldConfig::default(), args.seed + 21, i))
        .collect();
    let images: Vec<_> = samples.iter().map(|s| render(&s.scene, 32)).collect();
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    // ANCHOR: six_steps_images
    let pixels = images_tensor(&images, &dev)?; //                          (4, 3, 32, 32)
    let x0 = (vae.encode(&pixels)?.mode() * vae.config.scaling_factor)?; // 1. latents: (4, 4, 8, 8)
    let context = unet.encoder_hidden_states(&clip, &captions)?; //         1. the captions: (4, 16, 128)
    let t = [100usize, 400, 700, 950]; //                                   2. a timestep per image
    let eps = randn_tensor(x0.dims(), &mut rng, &dev)?; //                  2. noise: (4, 4, 8, 8)
    let x_t = add_noise_tensor(&schedule, &x0, &eps, &t)?; //               2. x_t: (4, 4, 8, 8)
    let eps_hat = unet.predict_noise(&x_t, &t, &context)?; //               3. predicted noise: (4, 4, 8, 8)
    let loss = (&eps_hat - &eps)?.sqr()?.mean_all()?; //                    4. MSE
                                                      // ANCHOR_END: six_steps_images
    let mut steps = Table::new(["step", "tensor", "shape | statistics"]);
    steps.row(["1", "x_0: latents of 4 images", &stat(&x0)?]);
    steps.row([
        "1",
        "text: the text encoder's last hidden states",
        &stat(&context)?,
    ]);
    steps.row(["2", "eps", &stat(&eps)?]);
    steps.row(["2", "x_t", &stat(&x_t)?]);
    steps.row(["3", "eps_hat (shipped UNet)", &stat(&eps_hat)?]);
    steps.row(["4", "loss", &format!("{:.4}", loss.to_scalar::<f32>()?)]);
    println!("{steps}\n");
    write_md("six_steps_images.md", &steps.to_markdown())?;

    // ---------------------------------------------------------------------------------------
    nb.cell("A live training run");
    nb.say(
        "The shipped UNet took several runs of 23 to 81 minutes to train. The same loop on a UNet a \
         quarter of its width, 2,048 pictures and batches of 32 runs in under a minute: enough \
         to watch the loss fall.",
    );
    // ANCHOR: live
    let live_config = UNetConfig {
        block_out_channels: vec![16, 32],
        attention_heads: 2,
        norm_num_groups: 8,
        ..UNetConfig::tiny()
    };
    let live_data = latent_dataset(&vae, args.seed, 2048, None)?; // 2,048 latents (4, 8, 8) + captions
    let live_train = UNetTrainConfig {
        steps: args.live_steps as usize,
        batch_size: 32,
        lr: 2e-3,
        warmup: 20.min(args.live_steps as usize / 2),
        checkpoint_every: usize::MAX,
        ..UNetTrainConfig::default()
    };
    let mut live_losses = Vec::new();
    let live_dir = inkdrop::support::files::prepare_out_dir(&default_out_dir("ch02_live_unet"))?;
    let started = std::time::Instant::now();
    train_unet(
        &live_config,
        &live_train,
        &live_data,
        &clip,
        &vae,
        &live_dir.join("unet.safetensors"),
        &live_dir.join("checkpoint.safetensors"),
        None,
        false,
        &mut |s| {
            live_losses.push(s.loss);
            true
        },
    )?;
    // ANCHOR_END: live
    let live_seconds = started.elapsed().as_secs_f64();
    let window = (live_losses.len() / 20).max(1);
    let live_smooth: Vec<(f64, f64)> = live_losses
        .chunks(window)
        .enumerate()
        .map(|(i, c)| {
            (
                ((i + 1) * window) as f64,
                c.iter().sum::<f64>() / c.len() as f64,
            )
        })
        .collect();
    save_panels(
        &out.join("live_loss.png"),
        &[Panel {
            title: "a tiny UNet learning to predict noise on Shapes World latents".into(),
            x_label: "step".into(),
            y_label: "MSE(eps_hat, eps)".into(),
            series: vec![
                Series::new(
                    "each batch",
                    live_losses
                        .iter()
                        .enumerate()
                        .map(|(i, &l)| ((i + 1) as f64, l))
                        .collect(),
                    5,
                ),
                Series::new(format!("mean of {window} steps"), live_smooth.clone(), 0),
            ],
            y_range: Some((0.0, 1.2)),
            ..Panel::default()
        }],
        (720, 360),
    )?;
    let count = |path: &std::path::Path| -> anyhow::Result<usize> {
        let vars = UNetBundle::load(path)?.varmap.all_vars();
        Ok(vars.iter().map(|v| v.elem_count()).sum())
    };
    let live_text = format!(
        "A UNet with {} parameters (the shipped one has {}), {} steps of 32 latents: the loss \
         fell from {:.3} to {:.3} (mean of the last {window} steps).",
        count(&live_dir.join("unet.safetensors"))?,
        count(&inkdrop::unet::bundle::default_unet_path())?,
        args.live_steps,
        live_losses.first().copied().unwrap_or(f64::NAN),
        live_smooth.last().map_or(f64::NAN, |p| p.1)
    );
    nb.say(&format!("{live_text} (This run took {live_seconds:.1} s.)"));
    write_md("live_training.md", &format!("{live_text}\n"))?;

    // ---------------------------------------------------------------------------------------
    nb.cell("True noise and predicted noise");
    let ab: Vec<f64> = t.iter().map(|&v| schedule.alpha_bar(v)).collect();
    let x0_hat = Tensor::cat(
        &(0..4)
            .map(|i| {
                ((x_t.get(i)? - (eps_hat.get(i)? * (1.0 - ab[i]).sqrt())?)? / ab[i].sqrt())
                    .map_err(anyhow::Error::from)
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .iter()
            .map(|x| x.unsqueeze(0))
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?; // (4, 4, 8, 8): x0_hat = (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab)
    let decode = |l: &Tensor| -> anyhow::Result<Vec<image::RgbImage>> {
        Ok(tensor_images(
            &vae.decode(&(l / vae.config.scaling_factor)?)?
                .clamp(-1f32, 1f32)?,
        )?)
    };
    let (seen_t, seen_x0) = (decode(&x_t)?, decode(&x0_hat)?);
    let mut tiles = Vec::new();
    for i in 0..4 {
        let err = f64::from(
            (eps_hat.get(i)? - eps.get(i)?)?
                .sqr()?
                .mean_all()?
                .to_scalar::<f32>()?,
        );
        let noise = latent_channel_images(&eps.get(i)?)?.remove(0);
        let guess = latent_channel_images(&eps_hat.get(i)?)?.remove(0);
        tiles.push(Tile {
            image: enlarge(&images[i], 4),
            caption: vec![format!("t = {}", t[i]), "the image".into()],
        });
        tiles.push(Tile {
            image: enlarge(&seen_t[i], 4),
            caption: vec!["x_t, decoded".into(), String::new()],
        });
        tiles.push(Tile {
            image: enlarge(&noise, 16),
            caption: vec!["eps (channel 0)".into(), String::new()],
        });
        tiles.push(Tile {
            image: enlarge(&guess, 16),
            caption: vec!["eps_hat (channel 0)".into(), format!("MSE {err:.3}")],
        });
        tiles.push(Tile {
            image: enlarge(&seen_x0[i], 4),
            caption: vec!["x0_hat, decoded".into(), String::new()],
        });
    }
    save_png(
        &labelled_grid(
            &tiles,
            5,
            Some("the noise the UNet sees, and what that implies about the picture"),
        )?,
        &out.join("noise_vs_prediction.png"),
    )?;
    nb.say(
        "Knowing the noise means knowing the picture: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) \
         / sqrt(alpha_bar_t). At small t the implied picture is nearly the original; at large t it \
         is a vague, blotchy guess, which is all a first denoising step needs: later steps, with \
         less noise, refine it.",
    );

    // ---------------------------------------------------------------------------------------
    nb.cell("Which noise levels are hard, and what the caption is worth");
    let held = held_out_batch(&vae, &unet, &clip, 128)?;
    let empty = unet.encoder_hidden_states(&clip, &vec![String::new(); 128])?;
    let shuffled = held.2.roll(1, 0)?; // every image gets another image's caption
    let mut table = Table::new([
        "t",
        "alpha_bar_t",
        "MSE, true caption",
        "MSE, empty prompt",
        "MSE, another image's caption",
    ]);
    for t in [50usize, 200, 400, 600, 800, 950] {
        let eps = randn_tensor(held.0.dims(), &mut rng, &dev)?;
        let x_t = add_noise_tensor(&schedule, &held.0, &eps, &vec![t; 128])?;
        let mse = |ctx: &Tensor| -> anyhow::Result<String> {
            let e = unet.predict_noise(&x_t, &vec![t; 128], ctx)?;
            Ok(format!(
                "{:.4}",
                (e - &eps)?.sqr()?.mean_all()?.to_scalar::<f32>()?
            ))
        };
        table.row([
            t.to_string(),
            format!("{:.4}", schedule.alpha_bar(t)),
            mse(&held.2)?,
            mse(&empty)?,
            mse(&shuffled)?,
        ]);
    }
    println!("{table}\n");
    write_md("caption_value.md", &table.to_markdown())?;
    nb.say(
        "Ten percent of the training captions were replaced by the empty prompt, so the same \
         UNet also learned to predict noise with no text at all (the middle column). The gap \
         between the first two columns is what the words tell the model; classifier-free \
         guidance (chapter 7) works by exaggerating exactly that gap. A wrong caption is worse \
         than none: the model trusts the text.",
    );
    Ok(())
}

/// `n` held-out images as (latents (n, 4, 8, 8), captions, text states (n, 16, 128)).
fn held_out_batch(
    vae: &AutoencoderKL,
    unet: &UNetBundle,
    clip: &ClipBundle,
    n: usize,
) -> anyhow::Result<(Tensor, Vec<String>, Tensor)> {
    let data =
        inkdrop::train::unet::latent_dataset(vae, inkdrop::vae::eval::HELD_OUT_SEED, n, None)?;
    let context = unet.encoder_hidden_states(clip, &data.captions)?;
    Ok((data.latents, data.captions, context))
}

/// Shape and mean/std of a tensor, for the step tables.
fn stat(x: &Tensor) -> anyhow::Result<String> {
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let n = v.len() as f64;
    let mean = v.iter().map(|&a| f64::from(a)).sum::<f64>() / n;
    let std = (v
        .iter()
        .map(|&a| (f64::from(a) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    Ok(format!("{:?} | mean {mean:+.3}, std {std:.3}", x.dims()))
}

/// The trained model's MSE at fixed timesteps, on fresh noise over all the data.
fn loss_by_t(
    model: &ToyDenoiser,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    seed: u64,
) -> anyhow::Result<Table> {
    let mut rng = seeded_rng(seed + 2);
    let n = x0.dim(0)?;
    let mut table = Table::new([
        "t",
        "alpha_bar_t",
        "noise share sqrt(1 - alpha_bar_t)",
        "MSE of eps_hat",
    ]);
    for t in [10usize, 100, 300, 600, 999] {
        let eps = randn_tensor(&[n, 2], &mut rng, &Device::Cpu)?;
        let x_t = add_noise_tensor(schedule, x0, &eps, &vec![t; n])?;
        let eps_hat =
            model.forward(&x_t, &Tensor::from_vec(vec![t as f32; n], n, &Device::Cpu)?)?;
        let mse = (eps_hat - eps)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
        let share = (1.0 - schedule.alpha_bar(t)).sqrt();
        table.row([
            t.to_string(),
            format!("{:.4}", schedule.alpha_bar(t)),
            format!("{share:.3}"),
            format!("{mse:.3}"),
        ]);
    }
    Ok(table)
}

/// Mean over `points` of the distance to the nearest point of `data`.
fn mean_distance(points: &[[f32; 2]], data: &[[f32; 2]]) -> f32 {
    let nearest = |p: &[f32; 2]| {
        data.iter()
            .map(|q| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
            .fold(f32::INFINITY, f32::min)
    };
    points.iter().map(nearest).sum::<f32>() / points.len().max(1) as f32
}
