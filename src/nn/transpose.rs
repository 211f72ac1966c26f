//! A transposed copy of two neighbouring axes, in parallel, with the same copy back as its
//! gradient: the "make it contiguous" step after `transpose(1, 2)` in every attention block
//! (feature map to tokens and back, heads split and merged).
//!
//! candle's `contiguous()` on a transposed view copies on one core, one strided element at a
//! time, and the gradient of its `transpose` arrives as a view that the backward pass copies the
//! same way. In a `train all` UNet step those copies were 4% of the time with the other core
//! waiting. Here each task copies whole rows of `D` floats.
//!
//! ```text
//! y[a, n, m, :] = x[a, m, n, :]      x (A, M, N, D) -> y (A, N, M, D)
//! dx[a, m, n, :] = dy[a, n, m, :]    the same copy on the gradient
//! ```

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{contiguous_f32, write_slice, written_by};

/// `x.transpose(dim, dim + 1)?.contiguous()`, computed as one parallel copy (and its gradient
/// likewise).
pub fn transpose_copy(x: &Tensor, dim: usize) -> Result<Tensor> {
    if dim + 1 >= x.rank() {
        bail!(
            "transpose_copy: axes {dim} and {} of a tensor of shape {:?}",
            dim + 1,
            x.dims()
        );
    }
    x.contiguous()?.apply_op1(TransposeCopy { dim })
}

struct TransposeCopy {
    dim: usize,
}

/// Floats per parallel task, about: whole output rows of `M * D` floats.
const TASK: usize = 1 << 14;

impl CustomOp1 for TransposeCopy {
    fn name(&self) -> &'static str {
        "inkdrop-transpose-copy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let dims = l.dims();
        let (m, n) = (dims[self.dim], dims[self.dim + 1]);
        let d: usize = dims[self.dim + 2..].iter().product();
        let row = m * d; // one output row: (m, d) for a fixed (a, n)
        let mut out_dims = dims.to_vec();
        out_dims.swap(self.dim, self.dim + 1);
        if x.is_empty() {
            return Ok((CpuStorage::F32(vec![]), Shape::from(out_dims)));
        }
        let rows_per_task = (TASK / row.max(1)).max(1);
        // SAFETY: every output row (a, n) is written whole, M pieces of D floats.
        let (y, ()) = unsafe {
            written_by(x.len(), |y| {
                y.par_chunks_mut(rows_per_task * row)
                    .enumerate()
                    .for_each(|(task, chunk)| {
                        for (i, out) in chunk.chunks_exact_mut(row).enumerate() {
                            let r = task * rows_per_task + i; // = a * n + n_index
                            let (a, j) = (r / n, r % n);
                            let src = &x[a * m * n * d..][..m * n * d];
                            if d == 1 {
                                // A feature map to tokens: one float per step of N.
                                for (k, o) in out.iter_mut().enumerate() {
                                    o.write(src[k * n + j]);
                                }
                            } else {
                                for (k, piece) in out.chunks_exact_mut(d).enumerate() {
                                    write_slice(piece, &src[(k * n + j) * d..][..d]);
                                }
                            }
                        }
                    })
            })
        };
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(transpose_copy(dy, self.dim)?))
    }
}
