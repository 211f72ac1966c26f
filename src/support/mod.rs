//! Plumbing the chapters and examples share, so that they contain only the idea: image files,
//! labelled grids, plots, terminal previews, seeding, output folders and notebook-style cells.

pub mod awake;
pub mod bench;
pub mod cloud;
pub mod figures;
pub mod files;
pub mod fonts;
pub mod grid;
pub mod heatmap;
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

/// The name a `clap::ValueEnum` value has on the command line (`v_prediction`, `leading`), so
/// messages and tables spell it the way the user types it.
pub fn cli_name<T: clap::ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

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
///
/// The body runs on one of rayon's threads ([`on_pool`]). Programs that wait for the keyboard
/// on one thread while generating on another (the terminal UI) use [`run_main_off_pool`].
pub fn run_main(body: impl FnOnce() -> anyhow::Result<()> + Send) -> std::process::ExitCode {
    run_main_on(true, body)
}

/// [`run_main`] with the body on the calling thread, for programs that block on input while
/// other threads compute: a rayon thread blocked on the keyboard would leave the pool one core
/// short.
pub fn run_main_off_pool(
    body: impl FnOnce() -> anyhow::Result<()> + Send,
) -> std::process::ExitCode {
    run_main_on(false, body)
}

fn run_main_on(
    pooled: bool,
    body: impl FnOnce() -> anyhow::Result<()> + Send,
) -> std::process::ExitCode {
    #[cfg(unix)]
    // SAFETY: called at the start of main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tune_allocator();
    single_threaded_candle_elementwise();
    let result = if pooled { on_pool(body) } else { body() };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs `f` on one of rayon's worker threads (the calling thread waits) and returns its result.
///
/// Every parallel tensor op (matrix products, our kernels) hands its pieces to rayon. Called
/// from a thread outside the pool, each op is a round trip: queue the job, wake a worker, sleep
/// on a latch until it is done, be woken again. From inside the pool the calling thread does the
/// first piece itself and the other core steals the rest, with no sleeping. At our tensor sizes
/// an op takes tens of microseconds, so the round trips were most of the time. Measured on the
/// 2-core machine, shipped UNet: forward at batch 2 21.8 ms -> 9.0 ms, forward + backward 54.1
/// -> 27.7 ms, training step at batch 64 524 -> 463 ms; 30-step generation 418 -> 266 ms. The
/// work is split the same way (same bytes); only who waits, and how, changes.
///
/// The thread that runs `f` is the one whose ops keep the pool's other threads awake
/// ([`awake`]).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| {
        awake::mark_body_thread();
        f()
    })
}

/// Keeps freed memory in the process instead of returning every large buffer to the kernel.
/// Training allocates and frees the same tensor-sized buffers every step; with glibc's defaults
/// each one is a fresh `mmap`, paid for in page faults and zeroing. Measured on the CLIP training
/// step: backward 1.15 s -> 0.60 s. (glibc only; elsewhere a no-op.)
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Runs candle's element-wise ops on the calling thread (`CANDLE_NUM_THREADS=1`, unless the user
/// set it). candle 0.11 parallelises them with its own pool of worker threads that spin while
/// waiting; next to the rayon threads of the convolution and matrix-product kernels, on two
/// cores, that spinning took a third of the CPU. Measured on the UNet's forward + backward at
/// batch 64: 2.85 s -> 1.3 s. Matrix products still use every core. Call at the start of main,
/// before any tensor op.
///
/// It also sets `RAYON_NUM_THREADS` (unless set) to the cores this process may use: candle asks
/// for the thread count on every matrix product, and without the variable it works it out from
/// `/proc/cpuinfo`, read anew each time (3,270 reads for one 30-step generation, about a fifth
/// of its time).
pub fn single_threaded_candle_elementwise() {
    // SAFETY (edition 2021: set_var is safe to call; the caveat is threads reading the
    // environment concurrently): called first thing in main, before any thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
}
