//! Plumbing the chapters and examples share, so that they contain only the idea: image files,
//! labelled grids, plots, terminal previews, seeding, output folders and notebook-style cells.

pub mod figures;
pub mod files;
pub mod fonts;
pub mod grid;
pub mod image_io;
pub mod notebook;
pub mod plot;
pub mod stats;
pub mod table;
pub mod terminal;

use rand::rngs::StdRng;
use rand::SeedableRng;

/// The seed every command uses unless told otherwise.
pub const DEFAULT_SEED: u64 = 0;

/// A seeded random number generator: the same seed gives the same numbers on every machine
/// (`StdRng` is ChaCha12, which is portable and stable within a `rand` major version).
pub fn seeded_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Runs a binary's body and turns an error into one line on stderr and exit code 1: no panic
/// message, no backtrace. `{:#}` prints the anyhow context chain as `outer: inner`.
///
/// It also restores the default SIGPIPE action, so `inkdrop schedule --json | head` ends quietly
/// like any Unix tool instead of panicking on a closed pipe.
pub fn run_main(body: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    #[cfg(unix)]
    // SAFETY: called at the start of main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match body() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
