//! `inkdrop`: the command-line tool. Run `inkdrop --help` for the commands.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    inkdrop::support::run_main(|| cli::run(args))
}
