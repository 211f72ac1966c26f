//! `inkdrop`: the command-line tool. Run `inkdrop --help` for the commands.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    if args.is_explore() {
        // The terminal UI waits for keys on this thread and generates on another, which goes
        // onto rayon's pool itself.
        inkdrop::support::run_main_off_pool(|| cli::run(args))
    } else {
        inkdrop::support::run_main(|| cli::run(args))
    }
}
