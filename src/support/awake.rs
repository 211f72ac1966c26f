//! Keeping the pool's other threads awake between parallel ops, as OpenMP does.
//!
//! A training step is about a thousand parallel ops of tens of microseconds each, with a little
//! serial work between them (candle's bookkeeping, its element-wise ops, which run on one
//! thread). A rayon worker that finds no work yields 32 times and then sleeps on a futex; the
//! next op must wake it with a system call, and on a virtual machine the wake-up (an interrupt
//! sent to another virtual CPU) takes longer than many of our ops. So between most ops the
//! second core slept, and each op began on one core while the other was being woken.
//!
//! PyTorch's OpenMP threads spin instead: after a parallel region they keep polling for the
//! next one for a while (`KMP_BLOCKTIME`, 200 ms by default with Intel's runtime) before they
//! sleep. [`keep_pool_awake`] does the same for rayon. Every custom op calls it as it reads its
//! inputs; called on the thread that runs the program's body ([`super::on_pool`]) with no
//! spinner running, it starts one on each of the pool's other threads (rayon's
//! `spawn_broadcast`). A spinner runs whatever work appears (`rayon::yield_now`: its own queue,
//! other threads' queues, then jobs injected from outside the pool) and polls in between; after
//! [`BLOCKTIME`] without work it returns, and the thread goes back to rayon's own yielding and
//! sleeping. So an idle program (the terminal UI waiting for a key) spins for 50 ms at most.
//!
//! Who runs which piece of work changes, not how the work is split or summed: the bytes are
//! the same. Measured on the 2-core Intel Xeon (builds before and after, in alternation): the
//! reference UNet's forward at batch 2 8.2-9.7 -> 5.6-6.4 ms, its training step at batch 32
//! 242-266 -> 235-253 ms; `inkdrop generate` (4 pictures) 0.57 -> 0.47 s; `train all`'s UNet
//! stage 0.073 -> 0.060 s a step.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a spinner polls without finding work before it stops.
pub const BLOCKTIME: Duration = Duration::from_millis(50);

/// Whether spinners are running (set by the call that starts them, cleared by the last to stop).
static SPINNING: AtomicBool = AtomicBool::new(false);
/// Spinners started and not yet stopped.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The pool thread running the program's body ([`super::on_pool`]); `usize::MAX` for none.
static BODY: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Marks the calling pool thread as the one running the program's body: the only thread whose
/// ops start spinners, and the only one that never runs one. (A spinner is a job that returns
/// only after 50 ms without work; a thread that picked it up while waiting inside a parallel
/// op of its own would not notice that op finishing until then. The body thread waits inside
/// its ops all the time; the other threads, when the body starts spinners between its ops, are
/// idle.)
pub(crate) fn mark_body_thread() {
    if let Some(index) = rayon::current_thread_index() {
        BODY.store(index, Ordering::Relaxed);
    }
}

/// Makes sure the pool's other threads are spinning, ready for the next parallel op. Costs one
/// atomic load when they already are; starts them only when called on the thread that runs
/// the program's body ([`super::on_pool`]) of a pool of two or more threads, and otherwise does
/// nothing.
#[inline]
pub fn keep_pool_awake() {
    if SPINNING.load(Ordering::Relaxed) {
        return;
    }
    start_spinners();
}

#[cold]
fn start_spinners() {
    // Only the body thread starts them (see `mark_body_thread`): ops called from elsewhere
    // (tests, helper threads) keep rayon's own waiting.
    let body = BODY.load(Ordering::Relaxed);
    let spinners = rayon::current_num_threads() - 1;
    if rayon::current_thread_index() != Some(body)
        || spinners == 0
        || SPINNING.swap(true, Ordering::AcqRel)
    {
        return;
    }
    LIVE.store(spinners, Ordering::Release);
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() != body {
            spin();
            if LIVE.fetch_sub(1, Ordering::AcqRel) == 1 {
                SPINNING.store(false, Ordering::Release);
            }
        }
    });
}

/// Runs the pool's work as it appears until [`BLOCKTIME`] passes without any.
fn spin() {
    let mut last_work = Instant::now();
    let mut idle: u32 = 0;
    loop {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => {
                last_work = Instant::now();
                idle = 0;
            }
            _ => {
                idle = idle.wrapping_add(1);
                if idle % 64 == 0 {
                    // Give the core to any other runnable thread (another program, or more
                    // threads than cores); with none, this returns at once.
                    std::thread::yield_now();
                    // Reading the clock costs more than a poll: look only now and then.
                    if last_work.elapsed() > BLOCKTIME {
                        return;
                    }
                } else {
                    for _ in 0..16 {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }
}

/// Whether spinners are running now (for tests and benchmarks).
pub fn spinning() -> bool {
    SPINNING.load(Ordering::Relaxed)
}
