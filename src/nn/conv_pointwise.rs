//! The 1x1 convolutions (stride 1, no padding: the ResNet blocks' shortcuts when the channel
//! count changes) straight on the NCHW layout. A 1x1 convolution mixes channels pixel by pixel,
//! so each image's (C_in, H*W) plane stack is already the matrix its product needs:
//!
//! - forward:      `y[n] = W @ x[n] + b`            W (C_out, C_in), x[n] (C_in, P), P = H*W
//! - weight grad:  `dW^T = sum_n x[n] @ dy[n]^T`    dy[n] (C_out, P), summed transposed
//!   (C_in, C_out) as the column path does: the product runs faster in that orientation
//! - bias grad:    `db = sum over n and P of dy`
//! - input grad:   `dx[n] = W^T @ dy[n]`
//!
//! No copy in or out of another layout: at 8x8 those copies cost the padded-plane path as much
//! as its products.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::{image_runs, input_grad_runs, write_partials, Geometry};
use super::fastmath::sum_wide;
use super::gemm::{sgemm_uninit_with, sgemm_with, MatRef};
use super::ops::written_by;

/// Whether [`forward`] and [`backward`] take this convolution: a 1x1 kernel, stride 1, no
/// padding.
pub(super) fn applies(g: &Geometry) -> bool {
    (g.kh, g.kw, g.stride) == (1, 1, 1)
        && [g.pad.top, g.pad.bottom, g.pad.left, g.pad.right] == [0; 4]
}

/// `y[n] = W @ x[n] + b` for every image, the images split across the threads; returns
/// (N, C_out, H, W).
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let p = g.h * g.w;
    let w_mat = MatRef::row_major(w, g.c_out, g.c_in);
    // Fewer images than threads (a VAE decoding one latent): each product on all of them.
    let inner = g.n < rayon::current_num_threads();
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(g.c_out * p)
            .zip(x.par_chunks(g.c_in * p))
            .for_each(|(y_n, x_n)| {
                // y[n] = W x[n]: (C_out, C_in) @ (C_in, P).
                let x_n = MatRef::row_major(x_n, g.c_in, p);
                sgemm_uninit_with(w_mat, x_n, y_n, inner);
                // SAFETY: written in full by the product just above.
                let y_n = unsafe { assume_written(y_n) };
                for (row, &b) in y_n.chunks_exact_mut(p).zip(bias) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            })
    };
    // SAFETY: every image's (C_out, P) block is written in full by its product.
    let (y, ()) = unsafe { written_by(g.n * g.c_out * p, fill) };
    y
}

/// The gradients (dx if asked for, dW, db) of [`forward`], written into `dx` (N, C_in, H, W),
/// `dw` (C_out, C_in) and `db` (C_out): every element of each, none read. Each thread takes
/// its own run of images, with its own part of dx and partial sums of dW and db, added in
/// order at the end.
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [MaybeUninit<f32>]>,
    dw: &mut [MaybeUninit<f32>],
    db: &mut [MaybeUninit<f32>],
) {
    let p = g.h * g.w;
    let runs = image_runs(g.n);
    let inner = runs.len() == 1; // one run: each product on all the threads
    let w_t = MatRef::row_major(w, g.c_out, g.c_in).t(); // (C_in, C_out)
    let dx_runs = input_grad_runs(dx, &runs, g.c_in * p);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = runs
        .par_iter()
        .zip(dx_runs)
        .map(|(&(b0, nr), dx_run)| {
            let (mut dw_t, mut db_run) = (vec![0f32; g.c_in * g.c_out], vec![0f32; g.c_out]);
            for i in 0..nr {
                let n = b0 + i;
                let dy_n = &dy[n * g.c_out * p..][..g.c_out * p];
                let x_n = MatRef::row_major(&x[n * g.c_in * p..][..g.c_in * p], g.c_in, p);
                let dy_mat = MatRef::row_major(dy_n, g.c_out, p); // (C_out, P)
                sgemm_with(x_n, dy_mat.t(), &mut dw_t, true, inner); // (C_in, C_out)
                for (d, row) in db_run.iter_mut().zip(dy_n.chunks_exact(p)) {
                    *d += sum_wide(row);
                }
                if !dx_run.is_empty() {
                    let dx_n = &mut dx_run[i * g.c_in * p..][..g.c_in * p];
                    sgemm_uninit_with(w_t, dy_mat, dx_n, inner); // (C_in, P)
                }
            }
            (dw_t, db_run)
        })
        .collect();
    write_partials(&partials, dw, db);
}

/// `out` as plain floats once every element has been written.
///
/// # Safety
/// Every element of `out` must have been written.
unsafe fn assume_written(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the caller has written each one.
    unsafe { &mut *(std::ptr::from_mut(out) as *mut [f32]) }
}
