//! Building the next batch while the current one trains.
//!
//! A training step has a serial part (drawing scenes, rendering them, tokenizing captions) and a
//! parallel part (the matrix products use every core). On two cores the serial part leaves one
//! core idle; a helper thread that builds step `s + 1`'s batch during step `s` fills it. Each
//! batch is a pure function of its step number, so the result is the same bytes as building it
//! in the loop.

use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use crate::Result;

/// Batches for a range of steps, built `depth` steps ahead on a helper thread, in step order.
pub struct Prefetch<T> {
    rx: Option<Receiver<Result<T>>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts building `make(step)` for every step of `steps`, at most `depth` ahead of
    /// [`Prefetch::next_batch`]. The helper stops at the end of the range, after an error, or when
    /// the `Prefetch` is dropped.
    pub fn new(
        steps: Range<usize>,
        depth: usize,
        mut make: impl FnMut(usize) -> Result<T> + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let worker = std::thread::spawn(move || {
            for step in steps {
                let batch = make(step);
                let failed = batch.is_err();
                // A closed channel means the training loop ended early: stop quietly.
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        Prefetch {
            rx: Some(rx),
            worker: Some(worker),
        }
    }

    /// The next step's batch (blocks until it is built).
    pub fn next_batch(&mut self) -> Result<T> {
        self.rx
            .as_ref()
            .and_then(|rx| rx.recv().ok())
            .unwrap_or_else(|| {
                Err(candle_core::Error::Msg(
                    "the batch-building thread stopped before the last step".into(),
                )
                .into())
            })
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Closing the channel first unblocks a helper waiting to send, then it can be joined.
        drop(self.rx.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
