//! The pool's spinners (`inkdrop::support::awake`): alone in this test binary, so no other
//! test's kernels keep them running.

use std::time::{Duration, Instant};

use inkdrop::support::awake::{keep_pool_awake, spinning, BLOCKTIME};
use inkdrop::support::on_pool;
use rayon::prelude::*;

/// Only the program body's thread starts spinners; they run the pool's work while they spin (a
/// parallel sum still adds up) and stop after `BLOCKTIME` without work.
#[test]
fn spinners_start_from_the_body_run_work_and_stop_when_idle() {
    keep_pool_awake();
    assert!(!spinning(), "a thread outside the pool started spinners");
    let total: u64 = on_pool(|| {
        keep_pool_awake();
        assert!(spinning(), "the body's thread started no spinner");
        (0..1_000_000u64).into_par_iter().map(|v| v % 7).sum()
    });
    assert_eq!(total, (0..1_000_000u64).map(|v| v % 7).sum::<u64>());
    let deadline = Instant::now() + BLOCKTIME * 20;
    while spinning() {
        assert!(
            Instant::now() < deadline,
            "spinners still running long after BLOCKTIME"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
