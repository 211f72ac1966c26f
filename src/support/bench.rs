//! What the benchmark binaries (`examples/bench_*.rs`) share.

use std::time::Instant;

/// Runs `f` once to warm up, then `reps` times, and returns the median wall time in ms.
pub fn median_ms<E>(reps: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    f()?;
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// `y`'s backward pass with a given output gradient `dy` (y's shape), as a layer's gradient
/// arrives in a network: what PyTorch's `y.backward(dy)` does. candle's `y.backward()` would
/// first fill a fresh tensor of ones of y's size on one thread, a pass over memory that no
/// layer of a network pays (its loss is a scalar): for GroupNorm at 128 channels and 8x8 (a
/// 1 MB tensor) a third of the time measured, out of cache between runs.
///
/// `y` is mapped to a scalar 0 by an op whose backward pass returns `dy` itself (no copy).
pub fn backward_with(
    y: &candle_core::Tensor,
    dy: &candle_core::Tensor,
) -> candle_core::Result<candle_core::backprop::GradStore> {
    if y.shape() != dy.shape() {
        candle_core::bail!(
            "backward_with: output gradient {:?} for an output {:?}",
            dy.dims(),
            y.dims()
        );
    }
    y.apply_op1(GivenGradient(dy.contiguous()?))?.backward()
}

/// See [`backward_with`].
struct GivenGradient(candle_core::Tensor);

impl candle_core::CustomOp1 for GivenGradient {
    fn name(&self) -> &'static str {
        "inkdrop-given-gradient"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        Ok((
            candle_core::CpuStorage::F32(vec![0.0]),
            candle_core::Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        _: &candle_core::Tensor,
        _: &candle_core::Tensor,
        _: &candle_core::Tensor,
    ) -> candle_core::Result<Option<candle_core::Tensor>> {
        Ok(Some(self.0.clone()))
    }
}
