//! The commands of the `inkdrop` binary, one file each.

mod attention;
mod check_unet;
mod dataset;
mod eval;
mod explore;
mod generate;
mod schedule;
mod similarity;
mod timesteps;
mod tokenize;
mod train;
mod vae;

use clap::{Parser, Subcommand};

/// inkdrop: see how Stable Diffusion turns a sentence into a picture, one piece at a time.
///
/// Start with `cargo run --release --example forward_noise`, then read the book (`book/`).
#[derive(Debug, Parser)]
#[command(name = "inkdrop", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a noise schedule: betas, alpha_bar, SNR and sigmas per timestep (diffusers' tables).
    Schedule(schedule::ScheduleArgs),
    /// Write Shapes World images and their captions (captions.jsonl with the ground truth).
    Dataset(dataset::DatasetArgs),
    /// Show how a text becomes token ids (specials and padding visible).
    Tokenize(tokenize::TokenizeArgs),
    /// Score texts against an image with the trained CLIP (cosine and softmax probability).
    Similarity(similarity::SimilarityArgs),
    /// Train the tokenizer or a model from scratch.
    Train(train::TrainArgs),
    /// Push an image through the VAE and back, or convert between images and latent files.
    Vae(vae::VaeArgs),
    /// Generate pictures for 16 "a {colour} {shape}" prompts and check them with the palette.
    CheckUnet(check_unet::CheckArgs),
    /// Turn a prompt into pictures: text encoder, denoising loop with guidance, VAE decoder.
    Generate(generate::GenerateArgs),
    /// Where each word of the prompt looks: cross-attention heat maps over the generated picture.
    Attention(attention::AttentionArgs),
    /// Generate for a prompt set and score colour, shape and relation against the prompts.
    Eval(eval::EvalArgs),
    /// Show which timesteps a sampler visits, with alpha_bar_t and sigma_t.
    Timesteps(timesteps::TimestepsArgs),
    /// Terminal UI: scrub a generation step by step (x_t, predicted x0, noise, attention), or
    /// with --forward the noising of a picture.
    Explore(explore::ExploreArgs),
}

impl Cli {
    /// Whether the command is the terminal UI (which runs off rayon's pool).
    pub fn is_explore(&self) -> bool {
        matches!(self.command, Command::Explore(_))
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schedule(args) => schedule::run(&args),
        Command::Dataset(args) => dataset::run(&args),
        Command::Tokenize(args) => tokenize::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Similarity(args) => similarity::run(&args),
        Command::Vae(args) => vae::run(&args),
        Command::CheckUnet(args) => check_unet::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Timesteps(args) => timesteps::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Attention(args) => attention::run(&args),
        Command::Explore(args) => explore::run(&args),
    }
}
