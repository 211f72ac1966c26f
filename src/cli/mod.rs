//! The commands of the `inkdrop` binary, one file each.

mod schedule;

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
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schedule(args) => schedule::run(&args),
    }
}
