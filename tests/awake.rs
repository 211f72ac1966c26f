//! The pool's spinners (`inkdrop::support::awake`): alone in this test binary, so no other
//! test's kernels keep them running.

use std::time::{Duration, Instant};

use inkdrop::support::awake::{keep_pool_awake, spinning, BLOCKTIME};
use rayon::prelude::*;

/// Spinners start, run the pool's work while they spin (a parallel sum still adds up, from
/// inside the pool and from outside it), and stop after `BLOCKTIME` without work.
#[test]
fn spinners_run_work_and_stop_when_idle() {
    keep_pool_awake();
    assert!(spinning(), "keep_pool_awake started no spinner");
    let total: u64 = (0..1_000_000u64).into_par_iter().sum();
    assert_eq!(total, 999_999 * 1_000_000 / 2);
    let inside: u64 = rayon::scope(|_| {
        keep_pool_awake();
        (0..1_000_000u64).into_par_iter().map(|v| v % 7).sum()
    });
    assert_eq!(inside, (0..1_000_000u64).map(|v| v % 7).sum::<u64>());
    let deadline = Instant::now() + BLOCKTIME * 20;
    while spinning() {
        assert!(
            Instant::now() < deadline,
            "spinners still running long after BLOCKTIME"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
