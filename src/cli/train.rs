//! `inkdrop train ...`: train the tokenizer and the models from scratch, with progress bars,
//! checkpoints and `--resume`.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use inkdrop::clip::bundle::{default_clip_path, default_tokenizer_path, ClipBundle};
use inkdrop::clip::ClipConfig;
use inkdrop::schedulers::PredictionType;
use inkdrop::shapes::{sample_at, WorldConfig};
use inkdrop::support::files::default_out_dir;
use inkdrop::text::{ClipTokenizer, CONTEXT_LENGTH};
use inkdrop::train::clip::{train_clip, ClipTrainConfig};
use inkdrop::train::unet::{latent_dataset_of, train_unet, UNetTrainConfig};
use inkdrop::train::vae::{train_vae, VaeTrainConfig};
use inkdrop::unet::text_encoder::ContextPadding;
use inkdrop::unet::UNetConfig;
use inkdrop::vae::bundle::{default_vae_path, VaeBundle};
use inkdrop::vae::VaeConfig;

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    pub what: TrainWhat,
}

#[derive(Debug, Subcommand)]
pub enum TrainWhat {
    /// Train the BPE tokenizer on Shapes World captions (seconds).
    Tokenizer(TokenizerArgs),
    /// Train the tiny CLIP contrastively (minutes); writes data/clip.safetensors.
    Clip(ClipArgs),
    /// Train the VAE (AutoencoderKL) on Shapes World (minutes); writes data/vae.safetensors.
    Vae(VaeArgs),
    /// Train the UNet to predict noise, conditioned on the CLIP text encoder; writes
    /// data/unet.safetensors.
    Unet(UnetArgs),
    /// Rebuild everything in data/ from scratch: tokenizer, CLIP, VAE, latents, UNet.
    All(AllArgs),
}

#[derive(Debug, Args)]
pub struct UnetArgs {
    /// Optimizer steps.
    #[arg(long, default_value_t = UNetTrainConfig::default().steps)]
    pub steps: usize,
    /// Latents per batch.
    #[arg(long, default_value_t = UNetTrainConfig::default().batch_size, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    pub batch_size: usize,
    /// Peak learning rate (after warmup; cosine decay to 0).
    #[arg(long, default_value_t = UNetTrainConfig::default().lr)]
    pub lr: f64,
    /// Distinct training images (VAE-encoded once and cached).
    #[arg(long, default_value_t = UNetTrainConfig::default().dataset_size)]
    pub dataset_size: usize,
    /// Share of training images with two objects, 0 to 1 (Shapes World draws half).
    #[arg(long, default_value_t = UNetTrainConfig::default().p_two_objects, value_parser = probability)]
    pub two_objects: f64,
    /// Min-SNR loss weighting: weight each sample by min(SNR, gamma) / SNR, or for a v model
    /// min(SNR + 1, gamma) / (SNR + 1) (0 = plain MSE).
    #[arg(long, default_value_t = 5.0)]
    pub snr_gamma: f64,
    /// Seed of the initial weights, the data and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the trained model (EMA weights) [default: data/unet.safetensors].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// CLIP weights for the text encoder [default: data/clip.safetensors].
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Tokenizer [default: data/tokenizer.json].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// VAE weights [default: data/vae.safetensors].
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Checkpoint file [default: target/inkdrop/checkpoints/unet.safetensors].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint if there is one (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Start from a trained UNet's weights (e.g. data/unet.safetensors) instead of random ones,
    /// with a fresh optimizer, learning-rate schedule and EMA: training a finished model longer.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Stop after this many of the --steps (the learning-rate schedule still spans --steps) and
    /// write the model as if training had ended there; with --resume, finishes a run that was
    /// interrupted at a checkpoint.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Keep the EMA's decay constant from the first step, as runs before 2026-12-06 did (by
    /// default it warms up as in diffusers: min(0.999, (1 + s) / (10 + s)) after step s).
    #[arg(long)]
    pub no_ema_warmup: bool,
    /// Also fine-tune a copy of CLIP's text tower with the UNet (the denoising loss teaches it
    /// what the UNet needs, e.g. which object a relation word puts on top); the tower is saved
    /// in the UNet's file and used in its place from then on. CLIP itself is not changed.
    #[arg(long)]
    pub train_text_encoder: bool,
    /// What the UNet learns to output: the noise (epsilon, Stable Diffusion 1.x) or the
    /// velocity v = sqrt(ab) eps - sqrt(1 - ab) x0 (v_prediction, SD 2.x).
    #[arg(long, value_enum, default_value_t = PredictionType::Epsilon)]
    pub prediction_type: PredictionType,
    /// Rescale the noise schedule so its last timestep is pure noise (zero terminal SNR, Lin et
    /// al. 2024), as at the start of sampling; needs --prediction-type v_prediction.
    #[arg(long)]
    pub zero_terminal_snr: bool,
    /// Weight of the grounding loss (TokenCompose): the words naming an object are trained to
    /// attend to where Shapes World drew it, added to the denoising loss with this weight
    /// (0 = off).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative, allow_hyphen_values = true)]
    pub grounding_weight: f64,
    /// Weight of the binding loss: where an object is drawn, the attention its cells give to
    /// object words is asked to go to its own words, not the other object's (against one
    /// object's colour leaking into the other); 0 = off.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative, allow_hyphen_values = true)]
    pub binding_weight: f64,
    /// Zero the text states after `<|endoftext|>`, so the picture reads the prompt only through
    /// its own words (each padding state of a causal text tower summarises the whole prompt, a
    /// path for one object's colour to leak into the other). Stored in the UNet's file.
    #[arg(long)]
    pub zero_padding: bool,
    /// Channels of the UNet's two levels (diffusers' `block_out_channels`). The attention
    /// heads are the first level's channels / 8 and the GroupNorm groups half of them (64,128:
    /// 8 heads and 32 groups, the shipped UNet; 32,64: 4 and 16, a quarter of the arithmetic).
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    pub channels: Vec<usize>,
    /// Use a very small UNet (for trying the command in seconds; the same as --channels 16,32).
    #[arg(long, conflicts_with = "channels")]
    pub tiny: bool,
}

/// `train all`'s VAE stage: steps, batch, peak learning rate and initial posterior
/// log-variance. A narrow posterior at the start reconstructs sooner and the higher rate learns
/// faster: at seed 0, 1,500 steps of 32 reached 30.07 dB held out (lr 2e-3 alone: 29.20;
/// log-variance -6 alone: 28.83; `train vae`'s defaults: 28.0 at 1,500 steps, 34.1 at its
/// 3,500). Half the batch for more steps learns more in the same time: 3,000 steps of 16 reach
/// 33.74 dB in about 345 s, where 1,800 of 32 (the stage until 2026-12-07) reached 31.42 in 383
/// s, and the sharper latents raise the shapes a perfect UNet could score (eval's ceiling 96% and
/// 92% against 88% and 81%; data/README.md, "Rebuilding everything").
const ALL_VAE_STEPS: usize = 3000;
const ALL_VAE_BATCH: usize = 16;
const ALL_VAE_LR: f64 = 2e-3;
const ALL_VAE_INIT_LOGVAR: f64 = -6.0;
/// The VAE stage's width: the shipped VAE's. Half of it (16,32,32) steps in less than half the
/// time and reached 30.48 dB in 3,500 steps of 16 (about 215 s); UNets trained on its latents
/// scored as well on single objects but lower on two-object colour and relations in two runs
/// of three, the third even (as `train all`'s stage: 17:29, one object 86/70, two objects
/// 58.3/16.7/6.2 against 72.9/20.8/22.9; data/README.md).
const ALL_VAE_CHANNELS: &str = "32,64,64";

/// `train all`'s UNet stage: half the shipped UNet's width (channels 32 and 64: a quarter of the
/// arithmetic) at half `train unet`'s batch, 6,500 steps. In the same time a smaller model takes
/// more steps and learns more: 7,500 steps of it at batch 64 (1,149 s, seed 0, the shipped
/// tokenizer, CLIP and VAE) scored one object 97/94 and two objects 78.1/41.7/22.9 (`inkdrop
/// eval`), 3,000 steps of the shipped width (1,296 s) 88/87 and 68.8/25.0/12.5. At this size a
/// step of 32 takes under half the time of a step of 64 (0.08 s against 0.165; smaller
/// activations fit the caches better, it seems), and twice the updates learn more from the same
/// pictures: on `train all`'s own models, 8,000 steps of 32 scored one object 91/78 where 4,000
/// of 64 scored 86/66 (data/README.md). 6,500 steps keep the whole chain within 20 minutes.
const ALL_UNET_CHANNELS: &str = "32,64";
const ALL_UNET_BATCH: usize = 32;
const ALL_UNET_STEPS: usize = 6500;
/// The UNet stage also fine-tunes a copy of CLIP's text tower (`train unet
/// --train-text-encoder`, as the shipped UNet does): each step costs about 37% more (0.085 s
/// against 0.062), and over two seeds two-object pictures gained 9 points of colour and 15 of
/// shape (single objects even); 8,000 steps without it, about as long, gained single-object
/// shape but not two objects (data/README.md, "The VAE stage's batch and the UNet stage's text
/// tower").
const ALL_UNET_TEXT_ENCODER: bool = true;
/// The UNet stage adds the grounding loss (`train unet --grounding-weight 0.1`, TokenCompose's
/// token loss: the words naming an object attend to where it lies), as the shipped UNet's last
/// runs did: about 9% more per step (0.086 s against 0.079), and over two seeds (16 pictures
/// per prompt) single objects gained 9 points of colour and 5 of shape (90.4 / 74.4 against
/// 81.2 / 69.5), two objects 4 of colour, 8 of shape and 3 of relation (84.0 / 44.3 / 16.4
/// against 79.5 / 36.7 / 13.6; data/README.md, "The grounding loss from scratch").
const ALL_UNET_GROUNDING: f64 = 0.1;

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Folder to write tokenizer.json, clip.safetensors, vae.safetensors and unet.safetensors.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Tiny models and few steps everywhere (a smoke test of the whole chain in a minute;
    /// use with another --data-dir so the shipped models stay).
    #[arg(long, conflicts_with_all = ["unet_channels", "vae_channels"])]
    pub tiny: bool,
    /// Seed of every stage.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// VAE optimizer steps. The VAE stage trains batches of 16 at twice `train vae`'s learning
    /// rate (2e-3) with the posterior's log-variance starting at -6: 3,000 steps reached 33.7 dB
    /// held out (the bar is 30) in under half the time `train vae`'s defaults take to reach
    /// 34.1 (3,500 steps of 32).
    #[arg(long, default_value_t = ALL_VAE_STEPS, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub vae_steps: usize,
    /// UNet optimizer steps. The UNet stage trains a UNet of half the shipped width
    /// (--unet-channels) at batch 32 for more steps than `train unet`'s 3,000 of 64 (in the same
    /// time it learns more), fine-tunes a copy of CLIP's text tower with it and adds the
    /// grounding loss (`train unet --train-text-encoder --grounding-weight 0.1`).
    #[arg(long, default_value_t = ALL_UNET_STEPS, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub unet_steps: usize,
    /// Channels of the VAE's three levels (`train vae --channels`; the shipped VAE has
    /// 32,64,64).
    #[arg(long, value_delimiter = ',', default_value = ALL_VAE_CHANNELS)]
    pub vae_channels: Vec<usize>,
    /// Channels of the UNet's two levels (`train unet --channels`; the shipped UNet has 64,128).
    #[arg(long, value_delimiter = ',', default_value = ALL_UNET_CHANNELS)]
    pub unet_channels: Vec<usize>,
    /// Continue an interrupted run (same --data-dir, --seed, step counts, channels and
    /// --tiny): stages that finished are skipped, the interrupted one continues from its
    /// checkpoint (target/inkdrop/checkpoints/all_*.safetensors).
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Args)]
pub struct VaeArgs {
    /// Optimizer steps.
    #[arg(long, default_value_t = VaeTrainConfig::default().steps)]
    pub steps: usize,
    /// Images per batch.
    #[arg(long, default_value_t = VaeTrainConfig::default().batch_size, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    pub batch_size: usize,
    /// Peak learning rate (after warmup; cosine decay to 0).
    #[arg(long, default_value_t = VaeTrainConfig::default().lr)]
    pub lr: f64,
    /// Weight of the KL term against the reconstruction MSE.
    #[arg(long, default_value_t = VaeTrainConfig::default().kl_weight)]
    pub kl_weight: f64,
    /// Seed of the initial weights, the data stream and the sampled z.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial log-variance of the posterior (the bias of quant_conv's logvar half): 0 starts
    /// with unit noise on the latents, so the decoder learns to tolerate small changes in them
    /// (what the diffusion model will need); -6 starts narrow and reconstructs sooner.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub init_logvar: f64,
    /// Where to write the trained model [default: data/vae.safetensors].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Checkpoint file [default: target/inkdrop/checkpoints/vae.safetensors].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint if there is one (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Channels of the VAE's three levels (diffusers' `block_out_channels`; 32x32 images to
    /// 8x8 latents). The GroupNorm groups are 32, or the first level's channels if fewer
    /// (32,64,64: 32 groups, the shipped VAE; 16,32,32: 16 groups, a quarter of the arithmetic).
    #[arg(long, value_delimiter = ',', default_value = "32,64,64")]
    pub channels: Vec<usize>,
    /// Use the very small test-size model (for trying the command in seconds).
    #[arg(long, conflicts_with = "channels")]
    pub tiny: bool,
}

#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// Where to write tokenizer.json [default: data/tokenizer.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of captions to learn merges from.
    #[arg(long, default_value_t = 50_000)]
    pub captions: u64,
    /// Seed of the caption corpus.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct ClipArgs {
    /// Optimizer steps.
    #[arg(long, default_value_t = ClipTrainConfig::default().steps)]
    pub steps: usize,
    /// Pairs per batch (each image is scored against every caption in its batch).
    #[arg(long, default_value_t = ClipTrainConfig::default().batch_size, value_parser = clap::value_parser!(u16).range(2..=4096).map(usize::from))]
    pub batch_size: usize,
    /// Peak learning rate (after warmup; cosine decay to 0).
    #[arg(long, default_value_t = ClipTrainConfig::default().lr)]
    pub lr: f64,
    /// Seed of the initial weights and of the data stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the trained model [default: data/clip.safetensors].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tokenizer to train with [default: data/tokenizer.json].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Checkpoint file [default: target/inkdrop/checkpoints/clip.safetensors].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint if there is one (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Use the very small test-size model (for trying the command in seconds).
    #[arg(long)]
    pub tiny: bool,
    /// The image tower: `two-path` (a colour path and a shape path, summed: unseen colour-shape
    /// pairs read right) or `vit` (CLIP's vision transformer with a conv stem).
    #[arg(long, value_enum, default_value = "two-path")]
    pub vision: VisionKind,
    /// Take the text tower from this trained CLIP and keep it frozen; only the image tower,
    /// its projection and the temperature train (a UNet trained on that text tower stays valid).
    #[arg(long, value_name = "CLIP_FILE")]
    pub frozen_text: Option<PathBuf>,
}

/// Image tower choice for `train clip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VisionKind {
    TwoPath,
    Vit,
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    match &args.what {
        TrainWhat::Tokenizer(a) => run_tokenizer(a),
        TrainWhat::Clip(a) => run_clip(a),
        TrainWhat::Vae(a) => run_vae(a),
        TrainWhat::Unet(a) => run_unet(a),
        TrainWhat::All(a) => run_all(a),
    }
}

fn run_tokenizer(args: &TokenizerArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(default_tokenizer_path);
    let world = WorldConfig::default();
    let captions: Vec<String> = (0..args.captions)
        .map(|i| sample_at(&world, args.seed, i).caption)
        .collect();
    let tok = ClipTokenizer::train(captions.iter().map(String::as_str), CONTEXT_LENGTH)?;
    tok.save(&out)?;
    println!(
        "trained on {} captions: vocabulary of {} tokens; wrote {}",
        captions.len(),
        tok.vocab_size(),
        out.display()
    );
    Ok(())
}

fn run_clip(args: &ClipArgs) -> anyhow::Result<()> {
    let tok_path = args
        .tokenizer
        .clone()
        .unwrap_or_else(default_tokenizer_path);
    let tok = ClipTokenizer::from_file(&tok_path, CONTEXT_LENGTH)
        .context("run `inkdrop train tokenizer` first")?;
    let mut model_config = if args.tiny {
        ClipConfig::test(tok.vocab_size(), CONTEXT_LENGTH)
    } else {
        ClipConfig::tiny(tok.vocab_size(), CONTEXT_LENGTH)
    };
    model_config.two_path = args.vision == VisionKind::TwoPath;
    if let Some(path) = &args.frozen_text {
        // The text tower's sizes come from the file, so its weights fit.
        let text = inkdrop::clip::bundle::ClipBundle::load_config(path)?;
        model_config = ClipConfig {
            two_path: model_config.two_path,
            vision_width: model_config.vision_width,
            ..text
        };
    }
    let cfg = ClipTrainConfig {
        frozen_text: args.frozen_text.clone(),
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        warmup: (args.steps / 15).clamp(1, 200),
        ..ClipTrainConfig::default()
    };
    let out = args.out.clone().unwrap_or_else(default_clip_path);
    let ckpt = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_out_dir("checkpoints").join("clip.safetensors"));
    let bar = progress(cfg.steps)?;
    let started = std::time::Instant::now();
    let report = train_clip(
        &tok,
        &model_config,
        &cfg,
        &out,
        &ckpt,
        args.resume,
        &mut |s| {
            bar.set_position(s.step as u64);
            let msg = format!(
                "loss {:.3}  batch acc {:>3.0}%  lr {:.1e}",
                s.loss,
                100.0 * s.accuracy,
                s.lr
            );
            show_step(&bar, s.step, cfg.steps, started, msg);
            true
        },
    )?
    .context("training stopped early")?;
    bar.finish();
    if report.resumed_from > 0 {
        println!("resumed from step {}", report.resumed_from);
    }
    let z = &report.zero_shot;
    println!(
        "trained {} steps in {:.1} s; final loss {:.3}, logit scale {:.1}\n\
         zero-shot \"a {{colour}} {{shape}}\" (28 captions): seen pairs {:.1}% ({} images), held-out pairs {:.1}% ({} images)\n\
         colour right {:.1}%, shape right {:.1}%\nwrote {} (checkpoint {})",
        report.steps,
        report.seconds,
        report.final_loss,
        report.logit_scale,
        100.0 * z.seen_top1,
        z.seen_images,
        100.0 * z.held_out_top1,
        z.held_out_images,
        100.0 * z.color_acc,
        100.0 * z.shape_acc,
        out.display(),
        ckpt.display()
    );
    Ok(())
}

/// A progress bar over `steps`; when stderr is not a terminal (a log file, CI) the bar is
/// hidden, and [`show_step`] prints plain lines instead.
fn progress(steps: usize) -> anyhow::Result<ProgressBar> {
    Ok(ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {elapsed} (eta {eta})")
            .context("progress template")?,
    ))
}

/// Shows one step's message on the bar; when the bar is hidden (a log file, CI), prints it as a
/// plain line every 50 steps and at the last one instead.
fn show_step(
    bar: &ProgressBar,
    step: usize,
    steps: usize,
    started: std::time::Instant,
    msg: String,
) {
    if bar.is_hidden() && (step % 50 == 0 || step == steps) {
        eprintln!(
            "step {step}/{steps}  {msg}  {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    bar.set_message(msg);
}

fn run_vae(args: &VaeArgs) -> anyhow::Result<()> {
    let model_config = if args.tiny {
        VaeConfig::test()
    } else {
        vae_config(&args.channels)?
    };
    let cfg = VaeTrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        kl_weight: args.kl_weight,
        seed: args.seed,
        init_logvar: Some(args.init_logvar),
        warmup: (args.steps / 20).clamp(1, 100),
        eval_images: if args.tiny {
            50
        } else {
            VaeTrainConfig::default().eval_images
        },
        ..VaeTrainConfig::default()
    };
    let out = args.out.clone().unwrap_or_else(default_vae_path);
    let ckpt = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_out_dir("checkpoints").join("vae.safetensors"));
    let recon_dir = default_out_dir("train_vae");
    inkdrop::support::files::prepare_out_dir(&recon_dir)?;
    let bar = progress(cfg.steps)?;
    let started = std::time::Instant::now();
    let report = train_vae(
        &model_config,
        &cfg,
        &out,
        &ckpt,
        Some(recon_dir.clone()),
        args.resume,
        &mut |s| {
            bar.set_position(s.step as u64);
            let msg = format!(
                "loss {:.5}  batch PSNR {:.1} dB  lr {:.1e}",
                s.loss, s.psnr_db, s.lr
            );
            show_step(&bar, s.step, cfg.steps, started, msg);
            true
        },
    )?
    .context("training stopped early")?;
    bar.finish();
    if report.resumed_from > 0 {
        println!("resumed from step {}", report.resumed_from);
    }
    let e = &report.eval;
    println!(
        "trained {} steps in {:.1} s ({:.3} s/step); final loss {:.5}\n\
         held out ({} images): PSNR {:.2} dB, colour error on object pixels {:.2} / 255\n\
         latents: mean {:.3}, std {:.3} -> scaling_factor {:.4}\n\
         wrote {} (checkpoint {}, reconstruction grids in {})",
        report.steps,
        report.seconds,
        report.seconds_per_step,
        report.final_loss,
        e.images,
        e.psnr_db,
        e.object_color_error,
        e.latent_mean,
        e.latent_std,
        report.scaling_factor,
        out.display(),
        ckpt.display(),
        recon_dir.display()
    );
    Ok(())
}

/// The VAE of `--channels`: three levels of `c0`, `c1` and `c2` channels, with 32 GroupNorm
/// groups, or `c0` if fewer.
fn vae_config(channels: &[usize]) -> anyhow::Result<VaeConfig> {
    let &[c0, c1, c2] = channels else {
        anyhow::bail!(
            "--channels takes three numbers, one per level of the VAE (e.g. 32,64,64), not \
             {channels:?}"
        );
    };
    let groups = c0.min(32);
    // c0 = 0 is caught by `c == 0` before any `c % groups` (groups = 0) is computed.
    if channels.iter().any(|&c| c == 0 || c % groups != 0) {
        anyhow::bail!(
            "--channels {c0},{c1},{c2}: every level's channels must be a positive multiple of the \
             GroupNorm groups (32, or the first level's channels if fewer: {groups}), e.g. \
             32,64,64 or 16,32,32"
        );
    }
    Ok(VaeConfig {
        block_out_channels: channels.to_vec(),
        norm_num_groups: groups,
        ..VaeConfig::tiny()
    })
}

/// The UNet of `--channels`: two levels of `c0` and `c1` channels, `c0 / 8` attention heads
/// and `c0 / 2` GroupNorm groups (the text width is set once CLIP is loaded).
fn unet_config(channels: &[usize]) -> anyhow::Result<UNetConfig> {
    let &[c0, c1] = channels else {
        anyhow::bail!(
            "--channels takes two numbers, one per level of the UNet (e.g. 64,128), not {channels:?}"
        );
    };
    if c0 == 0 || c0 % 16 != 0 {
        anyhow::bail!(
            "--channels {c0},{c1}: the first level's channels must be a positive multiple of 16 \
             (divided by 8 they are the attention heads, by 2 the GroupNorm groups)"
        );
    }
    let groups = c0 / 2;
    if c1 == 0 || c1 % groups != 0 {
        anyhow::bail!(
            "--channels {c0},{c1}: the second level's channels must be a positive multiple of the \
             {groups} GroupNorm groups (half the first level's channels), e.g. {}",
            2 * c0
        );
    }
    Ok(UNetConfig {
        block_out_channels: vec![c0, c1],
        attention_heads: c0 / 8,
        norm_num_groups: groups,
        ..UNetConfig::tiny()
    })
}

/// What `--init FILE` was trained as, against this run's flags: dropping the file's fine-tuned
/// text tower is refused (the result would condition on CLIP's frozen tower instead, silently);
/// a change of parameterization is allowed (the shipped UNet went from eps to v that way) and
/// said. Channels other than this run's `channels` are refused, with the `--channels` to add.
fn check_init(init: &std::path::Path, args: &UnetArgs, channels: &[usize]) -> anyhow::Result<()> {
    let bundle = inkdrop::unet::bundle::UNetBundle::load(init)
        .with_context(|| format!("--init {}", init.display()))?;
    let has = &bundle.unet.config.block_out_channels;
    if has != channels {
        anyhow::bail!(
            "--init {} has channels {has:?}; add --channels {} to train it further",
            init.display(),
            has.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if bundle.text_encoder.is_some() && !args.train_text_encoder {
        anyhow::bail!(
            "--init {} carries a text encoder fine-tuned with it; add --train-text-encoder to \
             keep training it (without it the new UNet would read CLIP's frozen text tower)",
            init.display()
        );
    }
    if bundle.context_padding == ContextPadding::Zeroed && !args.zero_padding {
        anyhow::bail!(
            "--init {} was trained with its text states zeroed after <|endoftext|>; add \
             --zero-padding to keep reading them that way",
            init.display()
        );
    }
    let was = bundle.parameterization;
    let now = inkdrop::unet::Parameterization {
        prediction_type: args.prediction_type,
        rescale_betas_zero_snr: args.zero_terminal_snr,
    };
    if was != now {
        let name = inkdrop::support::cli_name::<PredictionType>;
        let schedule = |zero: bool| {
            if zero {
                "zero terminal SNR"
            } else {
                "SD's schedule"
            }
        };
        eprintln!(
            "note: --init {} was trained with {} on {}; this run trains it with {} on {} (to keep \
             its own, pass --prediction-type {}{})",
            init.display(),
            name(was.prediction_type),
            schedule(was.rescale_betas_zero_snr),
            name(now.prediction_type),
            schedule(now.rescale_betas_zero_snr),
            name(was.prediction_type),
            if was.rescale_betas_zero_snr {
                " --zero-terminal-snr"
            } else {
                " and no --zero-terminal-snr"
            },
        );
    }
    Ok(())
}

fn run_unet(args: &UnetArgs) -> anyhow::Result<()> {
    let mut model_config = unet_config(if args.tiny { &[16, 32] } else { &args.channels })?;
    if args.zero_terminal_snr && args.prediction_type == PredictionType::Epsilon {
        anyhow::bail!(
            "--zero-terminal-snr needs --prediction-type v_prediction: at the last timestep x_t is \
             pure noise, so predicting the noise there says nothing about the picture"
        );
    }
    let clip = ClipBundle::load(
        &args.clip.clone().unwrap_or_else(default_clip_path),
        &args
            .tokenizer
            .clone()
            .unwrap_or_else(default_tokenizer_path),
    )
    .context("the UNet needs the text encoder: run `inkdrop train clip` first")?;
    let vae = VaeBundle::load(&args.vae.clone().unwrap_or_else(default_vae_path))
        .context("the UNet trains on VAE latents: run `inkdrop train vae` first")?;
    model_config.cross_attention_dim = clip.model.config.text_width;
    if model_config.sample_size != vae.vae.config.latent_size()
        || model_config.in_channels != vae.vae.config.latent_channels
    {
        anyhow::bail!(
            "the VAE makes {:?} latents but the UNet expects {}x{}x{}; retrain the VAE with the default config",
            vae.vae.config.latent_shape(),
            model_config.in_channels,
            model_config.sample_size,
            model_config.sample_size
        );
    }
    if let Some(init) = &args.init {
        check_init(init, args, &model_config.block_out_channels)?;
    }
    let cfg = UNetTrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        dataset_size: args.dataset_size,
        p_two_objects: args.two_objects,
        snr_gamma: (args.snr_gamma > 0.0).then_some(args.snr_gamma),
        init: args.init.clone(),
        stop_after: args.stop_after,
        train_text_encoder: args.train_text_encoder,
        ema_warmup: !args.no_ema_warmup,
        grounding_weight: (args.grounding_weight > 0.0).then_some(args.grounding_weight),
        binding_weight: (args.binding_weight > 0.0).then_some(args.binding_weight),
        context_padding: if args.zero_padding {
            ContextPadding::Zeroed
        } else {
            ContextPadding::Kept
        },
        parameterization: inkdrop::unet::Parameterization {
            prediction_type: args.prediction_type,
            rescale_betas_zero_snr: args.zero_terminal_snr,
        },
        warmup: (args.steps / 20).clamp(1, UNetTrainConfig::default().warmup),
        checkpoint_every: UNetTrainConfig::default()
            .checkpoint_every
            .min(args.steps.max(1)),
        ..UNetTrainConfig::default()
    };
    let started = std::time::Instant::now();
    let cache = default_out_dir("cache");
    inkdrop::support::files::prepare_out_dir(&cache)?;
    eprintln!(
        "encoding {} training images with the VAE (cached in {})",
        cfg.dataset_size,
        cache.display()
    );
    let world = WorldConfig {
        p_two_objects: cfg.p_two_objects,
        ..WorldConfig::default()
    };
    let cache_name = if world == WorldConfig::default() {
        format!("latents_seed{}_{}.safetensors", cfg.seed, cfg.dataset_size)
    } else {
        format!(
            "latents_seed{}_{}_two{}.safetensors",
            cfg.seed, cfg.dataset_size, cfg.p_two_objects
        )
    };
    let data = latent_dataset_of(
        &vae.vae,
        &world,
        cfg.seed,
        cfg.dataset_size,
        Some(&cache.join(cache_name)),
    )?;
    let cache_seconds = started.elapsed().as_secs_f64();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| inkdrop::support::files::crate_root().join("data/unet.safetensors"));
    let ckpt = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_out_dir("checkpoints").join("unet.safetensors"));
    let samples_dir = default_out_dir("train_unet");
    inkdrop::support::files::prepare_out_dir(&samples_dir)?;
    let bar = progress(cfg.steps)?;
    let t0 = std::time::Instant::now();
    let report = train_unet(
        &model_config,
        &cfg,
        &data,
        &clip,
        &vae.vae,
        &out,
        &ckpt,
        Some(samples_dir.clone()),
        args.resume,
        &mut |s| {
            bar.set_position(s.step as u64);
            let mut msg = format!("loss {:.4}", s.loss);
            if let Some(g) = s.token_loss {
                msg.push_str(&format!("  grounding {g:.4}"));
            }
            if let Some(b) = s.binding_loss {
                msg.push_str(&format!("  binding {b:.4}"));
            }
            msg.push_str(&format!("  lr {:.1e}", s.lr));
            show_step(&bar, s.step, cfg.steps, t0, msg);
            true
        },
    )?
    .context("training stopped early")?;
    bar.finish();
    if report.resumed_from > 0 {
        println!("resumed from step {}", report.resumed_from);
    }
    let trained = inkdrop::unet::bundle::UNetBundle::load(&out)?;
    // The tiny smoke-test model gets a token check (one image per prompt, 10 steps).
    let (per_prompt, sample_steps) = if args.tiny { (1, 10) } else { (4, 50) };
    let (check, images) = inkdrop::unet::eval::check_attributes(
        &trained,
        &clip,
        &vae.vae,
        per_prompt,
        4.0,
        sample_steps,
        cfg.seed + 99,
    )?;
    let grid_path = samples_dir.join("check.png");
    inkdrop::support::image_io::save_png(
        &inkdrop::support::grid::image_grid(&images, 8, 3),
        &grid_path,
    )?;
    let by_t: Vec<String> = report
        .loss_by_t
        .iter()
        .enumerate()
        .map(|(i, l)| format!("t {}-{}: {l:.3}", i * 100, i * 100 + 99))
        .collect();
    println!(
        "encoded the data set in {cache_seconds:.1} s; trained {} steps in {:.1} s ({:.3} s/step); final loss {:.4}\n\
         held-out noise MSE (EMA weights) {:.4}\nloss by timestep: {}\n\
         16 prompts \"a {{colour}} {{shape}}\" x {} images (DDPM {} steps, guidance 4): colour right {:.0}%, shape right {:.0}%, both {:.0}% ({})\n\
         wrote {} (checkpoint {}, sample grids in {})",
        report.steps,
        report.seconds,
        report.seconds_per_step,
        report.final_loss,
        report.held_out_mse,
        by_t.join(", "),
        per_prompt,
        sample_steps,
        100.0 * check.color_accuracy,
        100.0 * check.shape_accuracy,
        100.0 * check.both_accuracy,
        grid_path.display(),
        out.display(),
        ckpt.display(),
        samples_dir.display()
    );
    Ok(())
}

fn run_all(args: &AllArgs) -> anyhow::Result<()> {
    let dir = inkdrop::support::files::prepare_out_dir(&args.data_dir)?;
    let ckpt = |name: &str| default_out_dir("checkpoints").join(format!("all_{name}.safetensors"));
    let inkdrop::pipeline::ModelFiles {
        tokenizer: tok,
        clip,
        vae,
        unet,
    } = inkdrop::pipeline::ModelFiles::in_dir(&dir);
    // Which stages have finished, with their seconds: written after each stage, read by --resume.
    let progress_path = default_out_dir("checkpoints").join("all_progress.json");
    let settings = serde_json::json!({
        "data_dir": dir.display().to_string(),
        "seed": args.seed,
        "tiny": args.tiny,
        "vae_steps": args.vae_steps,
        "unet_steps": args.unet_steps,
        "vae_channels": args.vae_channels,
        "unet_channels": args.unet_channels,
    });
    let mut done = serde_json::Map::new();
    if !args.resume && progress_path.exists() {
        // A fresh run: an older run's record must not let a later --resume skip stages.
        std::fs::remove_file(&progress_path)
            .with_context(|| format!("removing {}", progress_path.display()))?;
    }
    if args.resume && progress_path.exists() {
        let text = std::fs::read_to_string(&progress_path)
            .with_context(|| format!("reading {}", progress_path.display()))?;
        let saved: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", progress_path.display()))?;
        if saved["settings"] != settings {
            anyhow::bail!(
                "--resume: the interrupted run used other settings ({}), this one {settings}; \
                 run with the same --data-dir, --seed, step counts, channels and --tiny, \
                 or without --resume to start over",
                saved["settings"]
            );
        }
        if let Some(map) = saved["done"].as_object() {
            done = map.clone();
        }
    }
    let resume = args.resume;
    let mut times = Vec::new();
    let mut stage = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        if let Some(secs) = done.get(name).and_then(serde_json::Value::as_f64) {
            eprintln!("== {name}: finished in the interrupted run ({secs:.0} s), skipped");
            times.push((format!("{name} *"), secs));
            return Ok(());
        }
        eprintln!("== {name}");
        let t = std::time::Instant::now();
        f().with_context(|| format!("stage '{name}'"))?;
        let secs = t.elapsed().as_secs_f64();
        times.push((name.to_string(), secs));
        done.insert(name.to_string(), secs.into());
        let progress = serde_json::json!({ "settings": settings, "done": done });
        inkdrop::support::files::write_atomic(
            &progress_path,
            serde_json::to_string_pretty(&progress)?.as_bytes(),
        )?;
        Ok(())
    };
    stage("tokenizer", &mut || {
        run_tokenizer(&TokenizerArgs {
            out: Some(tok.clone()),
            captions: if args.tiny { 2000 } else { 50_000 },
            seed: args.seed,
        })
    })?;
    stage("clip", &mut || {
        run_clip(&ClipArgs {
            steps: if args.tiny {
                20
            } else {
                ClipTrainConfig::default().steps
            },
            batch_size: if args.tiny {
                16
            } else {
                ClipTrainConfig::default().batch_size
            },
            lr: ClipTrainConfig::default().lr,
            seed: args.seed,
            out: Some(clip.clone()),
            tokenizer: Some(tok.clone()),
            checkpoint: Some(ckpt("clip")),
            resume,
            tiny: args.tiny,
            vision: VisionKind::TwoPath,
            frozen_text: None,
        })
    })?;
    stage("vae", &mut || {
        run_vae(&VaeArgs {
            steps: if args.tiny { 20 } else { args.vae_steps },
            batch_size: if args.tiny { 8 } else { ALL_VAE_BATCH },
            lr: ALL_VAE_LR,
            kl_weight: VaeTrainConfig::default().kl_weight,
            seed: args.seed,
            init_logvar: ALL_VAE_INIT_LOGVAR,
            out: Some(vae.clone()),
            checkpoint: Some(ckpt("vae")),
            resume,
            channels: args.vae_channels.clone(),
            tiny: args.tiny,
        })
    })?;
    stage("unet", &mut || {
        run_unet(&UnetArgs {
            steps: if args.tiny { 20 } else { args.unet_steps },
            batch_size: if args.tiny { 8 } else { ALL_UNET_BATCH },
            lr: UNetTrainConfig::default().lr,
            snr_gamma: UNetTrainConfig::default().snr_gamma.unwrap_or(0.0),
            dataset_size: if args.tiny {
                200
            } else {
                UNetTrainConfig::default().dataset_size
            },
            two_objects: UNetTrainConfig::default().p_two_objects,
            grounding_weight: ALL_UNET_GROUNDING,
            binding_weight: UNetTrainConfig::default().binding_weight.unwrap_or(0.0),
            train_text_encoder: ALL_UNET_TEXT_ENCODER,
            no_ema_warmup: !UNetTrainConfig::default().ema_warmup,
            zero_padding: UNetTrainConfig::default().context_padding == ContextPadding::Zeroed,
            prediction_type: UNetTrainConfig::default().parameterization.prediction_type,
            zero_terminal_snr: UNetTrainConfig::default()
                .parameterization
                .rescale_betas_zero_snr,
            seed: args.seed,
            out: Some(unet.clone()),
            clip: Some(clip.clone()),
            tokenizer: Some(tok.clone()),
            vae: Some(vae.clone()),
            checkpoint: Some(ckpt("unet")),
            resume,
            init: None,
            stop_after: None,
            channels: args.unet_channels.clone(),
            tiny: args.tiny,
        })
    })?;
    let total: f64 = times.iter().map(|(_, s)| s).sum();
    println!("\nstage       seconds");
    for (name, s) in &times {
        println!("{name:<10} {s:>8.1}");
    }
    println!("{:<10} {total:>8.1}\nwrote {}", "total", dir.display());
    if times.iter().any(|(name, _)| name.ends_with('*')) {
        println!("* finished in the interrupted run; its time is counted");
    }
    Ok(())
}

/// Parses a weight (a finite number, 0 or more) for a command-line option.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number >= 0 (0 turns it off)")),
    }
}

/// Parses a probability (0 to 1) for a command-line option.
fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number; give a share between 0 and 1, e.g. 0.75"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!(
            "{p} is not between 0 and 1; give a share such as 0.75"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Vae {
        #[command(flatten)]
        args: VaeArgs,
    }

    /// `train vae`'s default `--channels` (a literal, so that `--help` shows it as typed) and
    /// its GroupNorm rule rebuild the shipped VAE's architecture.
    #[test]
    fn default_vae_channels_are_the_shipped_vae() {
        let args = Vae::parse_from(["train-vae"]).args;
        assert_eq!(vae_config(&args.channels).unwrap(), VaeConfig::tiny());
    }
}
