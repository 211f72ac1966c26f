//! Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016): the path of [`super::conv`] for 3x3, stride-1,
//! padding-1 convolutions on small images with even sides (the UNet's 8x8 and 4x4 levels, the
//! VAE's 16x16 and 8x8 ones), where the column matrix of `im2col` cost a third of the time.
//!
//! Each 2x2 tile of output pixels is computed from the 4x4 tile of the padded input around it,
//! d, and the 3x3 kernel g of each (output, input) channel pair as
//!
//! ```text
//! Y = A^T [ (G g G^T) * (B^T d B) ] A          (* element by element)
//!
//!       | 1  0 -1  0 |        | 1    0    0  |         | 1  1  1  0 |
//! B^T = | 0  1  1  0 |    G = | 1/2  1/2  1/2 |   A^T = | 0  1 -1 -1 |
//!       | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//!       | 0  1  0 -1 |        | 0    0    1  |
//! ```
//!
//! 16 multiplications per tile and channel pair where the direct sum needs 36. Summed over the
//! input channels, the 16 element-wise products become 16 independent matrix products, one per
//! position `xi` of the 4x4 transformed tile, over all T tiles of the batch at once:
//!
//! - forward:      `M[xi] = U[xi] @ V[xi]`      U = G g G^T (C_out, C_in), V = B^T d B (C_in, T);
//!   then `y = A^T M A + b` per tile
//! - input grad:   `dV[xi] = U[xi]^T @ dM[xi]`  with dM = A dY A^T; then `B dV B^T` per tile,
//!   added onto the padded image (neighbouring tiles overlap by two pixels)
//! - weight grad:  `dU[xi]^T = V[xi] @ dM[xi]^T`, summed over the tiles by the product itself;
//!   then `dW = G^T dU G`
//!
//! The backward formulas are the forward's linear maps transposed. The transformed tiles take 4x
//! the memory of the images (the column matrix took 9x), and the products do 16/36 of the
//! multiply-adds: what the benchmarks call this path's GFLOP/s counts the direct convolution's
//! 2 * C_out * C_in * 9 per pixel, as cuDNN's and oneDNN's do. The rounding differs from the
//! direct sum (the transforms add and subtract before multiplying) by a few units in the last
//! place; `tests/conv.rs` checks values and gradients against candle and finite differences.

use std::array::from_fn;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::{
    for_each_chunk, image_runs, input_grad_runs, with_scratch, written_by_runs, Geometry, Padding,
};
use super::fastmath::{add_assign, sum_wide};
use super::gemm::{sgemm_serial, MatRef};
use super::ops::{write_slice, written_by};
use super::winograd_rows::{
    input_channel, input_grad_channel, input_grad_scratch, input_scratch, output_channel,
    output_grad_channel, output_grad_scratch, output_scratch, Planes,
};

/// Positions in a transformed 4x4 tile.
const XI: usize = 16;

/// Floats added to the distance between the 16 rows (or matrices) of transformed tiles. A tile
/// is read or written at all 16 positions at once; with T a multiple of 1024 floats the 16 would
/// sit 4 KiB apart, all in the same set of the 8-way L1 cache, evicting each other.
const SKEW: usize = 16;

/// Below this many channels on either side, the 16 products are too thin to beat one product
/// over the column matrix (an RGB or 4-channel latent `conv_in`).
const MIN_CHANNELS: usize = 16;

/// Below this many tiles in a thread's run of images the 16 products are too short (a sampling
/// step at batch 2 has 4 tiles per image at 4x4) and the column matrix is faster: measured at
/// 4x4 with 128 channels, 16 tiles per run took 1.4x the column path's time, 32 tiles 0.9x.
const MIN_TILES: usize = 32;

/// Whether this path computes `g`: a 3x3 kernel, stride 1, padding 1 on every side, even image
/// sides (whole 2x2 output tiles), at least [`MIN_CHANNELS`] channels in and out, and at least
/// [`MIN_TILES`] tiles in a thread's run of images (the first, longest run).
pub(super) fn applies(g: &Geometry) -> bool {
    let run = image_runs(g.n).first().map_or(0, |&(_, len)| len);
    (g.kh, g.kw, g.stride) == (3, 3, 1)
        && g.pad == Padding::same(1)
        && g.h % 2 == 0
        && g.w % 2 == 0
        && g.c_in.min(g.c_out) >= MIN_CHANNELS
        && run * (g.h / 2) * (g.w / 2) >= MIN_TILES
}

#[cfg(test)] // the tile-by-tile reference only (tests below)
/// `B^T d = [d0 - d2, d1 + d2, d2 - d1, d1 - d3]`
#[inline(always)]
fn bt(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

#[cfg(test)] // the tile-by-tile reference only (tests below)
/// `B v = [v0, v1 - v2 + v3, v1 + v2 - v0, -v3]`, the adjoint of [`bt`].
#[inline(always)]
fn b(v: [f32; 4]) -> [f32; 4] {
    [v[0], v[1] - v[2] + v[3], v[1] + v[2] - v[0], -v[3]]
}

/// `G g = [g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2]`
#[inline(always)]
fn g_(k: [f32; 3]) -> [f32; 4] {
    [
        k[0],
        (k[0] + k[1] + k[2]) * 0.5,
        (k[0] - k[1] + k[2]) * 0.5,
        k[2],
    ]
}

/// `G^T u = [u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3]`, the adjoint of [`g_`].
#[inline(always)]
fn gt(u: [f32; 4]) -> [f32; 3] {
    let s = (u[1] + u[2]) * 0.5;
    [u[0] + s, (u[1] - u[2]) * 0.5, s + u[3]]
}

#[cfg(test)] // the tile-by-tile reference only (tests below)
/// `A^T m = [m0 + m1 + m2, m1 - m2 - m3]`
#[inline(always)]
fn at(m: [f32; 4]) -> [f32; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

#[cfg(test)] // the tile-by-tile reference only (tests below)
/// `A y = [y0, y0 + y1, y0 - y1, -y1]`, the adjoint of [`at`].
#[inline(always)]
fn a(y: [f32; 2]) -> [f32; 4] {
    [y[0], y[0] + y[1], y[0] - y[1], -y[1]]
}

/// `F d F^T` for the 1-D transform `f` (d -> F d): `f` down every column, then along every row.
#[inline(always)]
fn two_d<const I: usize, const O: usize>(
    d: [[f32; I]; I],
    f: impl Fn([f32; I]) -> [f32; O],
) -> [[f32; O]; O] {
    let cols: [[f32; O]; I] = from_fn(|j| f(from_fn(|i| d[i][j]))); // cols[j][k] = (F d)[k][j]
    from_fn(|k| f(from_fn(|j| cols[j][k])))
}

/// The output tiles of a chunk of images: `t = (ty * tw + tx) * images + n` covers output
/// pixels (2ty..2ty+2, 2tx..2tx+2) of the chunk's image n and reads padded pixels
/// (2ty..2ty+4, 2tx..2tx+4). The images are interleaved so that the transforms of
/// [`super::winograd_rows`] run over a row of tiles of all of them at once (at 8x8 a row of
/// one image holds only 4 tiles).
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    tw: usize,
    /// All tiles of the chunk.
    t: usize,
    /// Distance between two positions' rows of tiles in a (C, 16, T) buffer: T + SKEW.
    ts: usize,
}

impl Tiles {
    /// The tiles of `images` images of `h` x `w`.
    fn new(h: usize, w: usize, images: usize) -> Self {
        let (th, tw) = (h / 2, w / 2);
        Self {
            th,
            tw,
            t: images * th * tw,
            ts: images * th * tw + SKEW,
        }
    }

    /// Images in the chunk.
    fn images(&self) -> usize {
        self.t / (self.th * self.tw)
    }

    /// Distance between the 16 (rows, T) matrices of a (16, rows, T) buffer.
    fn block(&self, rows: usize) -> usize {
        rows * self.t + SKEW
    }
}

/// Images per chunk, so that a chunk's transformed tiles (input and output side) take about
/// 1 MB, the size of a core's L2 cache: each is written by one step and read by the next while
/// still in cache. (Tiles of the whole batch at once took tens of megabytes, and the transforms
/// waited on memory.)
fn chunk(g: &Geometry) -> usize {
    let per_image = (g.h / 2) * (g.w / 2) * XI * (g.c_in + g.c_out);
    let run = image_runs(g.n).first().map_or(1, |&(_, len)| len);
    ((1 << 18) / per_image).clamp(1, run.max(1))
}

/// Row `r` of each of the 16 (rows, T) matrices of a (16, rows, T) buffer whose matrices are
/// `block` floats apart: one channel's 16 rows of tiles.
fn rows_of(tl: Tiles, data: &[f32], block: usize, r: usize) -> [&[f32]; XI] {
    from_fn(|xi| &data[xi * block + r * tl.t..][..tl.t])
}

/// `V = B^T d B` for every input tile of the chunk `x` (images, C_in, H, W): `v` is
/// (C_in, 16, T), rows `ts` apart (the `SKEW` floats between rows are never read), the tiles
/// numbered as [`Tiles`] says.
fn input_tiles(g: &Geometry, tl: Tiles, x: &[f32], v: &mut [f32], parallel: bool) {
    let hw = g.h * g.w;
    let images = tl.images();
    let planes = Planes {
        stride: g.c_in * hw,
        images,
        h: g.h,
        w: g.w,
    };
    let channel = |scratch: &mut Vec<f32>, (c, vc): (usize, &mut [f32])| {
        input_channel(&x[c * hw..], planes, vc, tl.ts, scratch);
    };
    let scratch = input_scratch(g.h, g.w, images);
    let v = &mut v[..g.c_in * XI * tl.ts];
    for_each_chunk(v, XI * tl.ts, parallel, || vec![0f32; scratch], channel);
}

/// `U = G g G^T` for every (output, input) channel pair: (C_out, C_in, 16).
fn weight_tiles(g: &Geometry, w: &[f32]) -> Vec<f32> {
    // SAFETY: the (C_out, C_in) chunks of 16 and of 9 pair up one to one, and each is written.
    let (u, ()) = unsafe {
        written_by(g.c_out * g.c_in * XI, |u| {
            u.par_chunks_mut(g.c_in * XI)
                .zip(w.par_chunks(g.c_in * 9))
                .for_each(|(u, w)| {
                    for (u, k) in u.chunks_exact_mut(XI).zip(w.chunks_exact(9)) {
                        let k = from_fn(|i| from_fn(|j| k[i * 3 + j])); // (3, 3)
                        write_slice(u, two_d(k, g_).as_flattened());
                    }
                })
        })
    };
    u
}

/// `U[xi]` as a (C_out, C_in) view of [`weight_tiles`].
fn u_at<'a>(g: &Geometry, u: &'a [f32], xi: usize) -> MatRef<'a> {
    MatRef {
        data: &u[xi..],
        rows: g.c_out,
        cols: g.c_in,
        rs: g.c_in * XI,
        cs: XI,
    }
}

/// Position `xi` of a (C, 16, T) buffer of transformed tiles, as a (C, T) view.
fn tiles_at(tl: Tiles, data: &[f32], channels: usize, xi: usize) -> MatRef<'_> {
    MatRef {
        data: &data[xi * tl.ts..],
        rows: channels,
        cols: tl.t,
        rs: XI * tl.ts,
        cs: 1,
    }
}

/// `out[xi] = f(xi)` for the 16 matrices of a (16, rows, cols) buffer `block` floats apart,
/// each an `sgemm_serial`, on all threads when `parallel`.
fn per_position(
    out: &mut [f32],
    block: usize,
    len: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Send + Sync,
) {
    let out = &mut out[..XI * block];
    for_each_chunk(
        out,
        block,
        parallel,
        || (),
        |_, (xi, m)| f(xi, &mut m[..len]),
    );
}

/// `f(scratch, c, planes)` for every channel c of a chunk `out` (images, C, H, W) that the
/// transforms write: `planes` starts at channel c's plane of the first image, the next
/// image's lying C H W floats on. With one image each channel's plane is a chunk of its own,
/// written in parallel when `parallel`; with several, the channels' planes interleave, so one
/// channel after another. Each task has `scratch` floats of working memory.
fn for_each_channel(
    out: &mut [MaybeUninit<f32>],
    (channels, hw, images): (usize, usize, usize),
    parallel: bool,
    scratch: usize,
    f: impl Fn(&mut Vec<f32>, usize, &mut [MaybeUninit<f32>]) + Send + Sync,
) {
    if images == 1 {
        let init = || vec![0f32; scratch];
        for_each_chunk(out, hw, parallel, init, |s, (c, plane)| f(s, c, plane));
        return;
    }
    let mut s = vec![0f32; scratch];
    for c in 0..channels {
        f(&mut s, c, &mut out[c * hw..]);
    }
}

/// `y = conv2d(x, W) + b` for a 3x3 kernel, stride 1, padding 1; returns (N, C_out, H, W).
///
/// Each thread takes its own run of images, chunk by chunk: input tiles, the 16 products, the
/// output tiles, with nothing shared but U.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let u = weight_tiles(g, w);
    let (hw, nb) = (g.h * g.w, chunk(g));
    let full = Tiles::new(g.h, g.w, nb);
    let runs = image_runs(g.n);
    let inner = runs.len() == 1;
    let run = |y_run: &mut [MaybeUninit<f32>], (b0, nr): (usize, usize)| {
        with_scratch(g.c_in * XI * full.ts, XI * full.block(g.c_out), |v, m| {
            for c0 in (0..nr).step_by(nb) {
                let nbc = nb.min(nr - c0);
                let tl = Tiles::new(g.h, g.w, nbc);
                input_tiles(g, tl, &x[(b0 + c0) * g.c_in * hw..], v, inner);
                // M[xi] = U[xi] @ V[xi]: (16, C_out, T), matrices mb apart.
                let (mb, v) = (tl.block(g.c_out), &*v);
                per_position(m, mb, g.c_out * tl.t, inner, |xi, m| {
                    sgemm_serial(u_at(g, &u, xi), tiles_at(tl, v, g.c_in, xi), m, false);
                });
                // y = A^T M A + b per tile.
                let y_chunk = &mut y_run[c0 * g.c_out * hw..][..nbc * g.c_out * hw];
                let (m, images) = (&*m, tl.images());
                let scratch = output_scratch(g.h, g.w, images);
                for_each_channel(
                    y_chunk,
                    (g.c_out, hw, images),
                    inner,
                    scratch,
                    |s, co, y| {
                        let (rows, shape) = (rows_of(tl, m, mb, co), (g.h, g.w, images));
                        output_channel(&rows, shape, bias[co], y, g.c_out * hw, s);
                    },
                );
            }
        })
    };
    // SAFETY: the chunks cover a run, and in each (n, c_out) plane the 2x2 tiles cover every
    // pixel (H and W are even).
    unsafe { written_by_runs(&runs, g.c_out * hw, run) }
}

/// `dM = A dY A^T` for every output tile of the chunk `dy` (images, C_out, H, W): `dm` is
/// (C_out, 16, T), rows `ts` apart, the tiles numbered as [`Tiles`] says; adds each channel's
/// sum of dy to `db`.
fn output_grad_tiles(
    g: &Geometry,
    tl: Tiles,
    dy: &[f32],
    dm: &mut [f32],
    db: &mut [f32],
    parallel: bool,
) {
    let hw = g.h * g.w;
    let images = tl.images();
    let planes = Planes {
        stride: g.c_out * hw,
        images,
        h: g.h,
        w: g.w,
    };
    let channel = |scratch: &mut Vec<f32>, (co, dmc): (usize, &mut [f32])| {
        output_grad_channel(&dy[co * hw..], planes, dmc, tl.ts, scratch);
    };
    let dm = &mut dm[..g.c_out * XI * tl.ts];
    let scratch = output_grad_scratch(g.h, g.w, images);
    for_each_chunk(dm, XI * tl.ts, parallel, || vec![0f32; scratch], channel);
    for (co, db) in db.iter_mut().enumerate() {
        for n in 0..images {
            *db += sum_wide(&dy[(n * g.c_out + co) * hw..][..hw]);
        }
    }
}

/// What one thread accumulates over its run of images: `dU^T` (16, C_in, C_out), matrices
/// `ub` apart, and db.
struct Partial {
    du_t: Vec<f32>,
    db: Vec<f32>,
}

/// The gradients (dx if asked for, dW, db) of [`forward`], written into `dx` (N, C_in, H, W),
/// `dw` (C_out, C_in, 3, 3) and `db` (C_out): every element of each, none read.
///
/// Each thread takes its own run of images, chunk by chunk, with its own dx and partial sums
/// of dU and db, added at the end.
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [MaybeUninit<f32>]>,
    dw: &mut [MaybeUninit<f32>],
    db: &mut [MaybeUninit<f32>],
) {
    let u = weight_tiles(g, w);
    let (hw, nb) = (g.h * g.w, chunk(g));
    let full = Tiles::new(g.h, g.w, nb);
    let ub = g.c_in * g.c_out + SKEW;
    let runs = image_runs(g.n);
    let inner = runs.len() == 1;
    let input_grad = dx.is_some();
    let dx_runs = input_grad_runs(dx, &runs, g.c_in * hw);
    let (v_len, dm_len) = (g.c_in * XI * full.ts, g.c_out * XI * full.ts);
    let dv_len = if input_grad {
        XI * full.block(g.c_in)
    } else {
        0
    };
    let run = |((b0, nr), dx_run): ((usize, usize), &mut [MaybeUninit<f32>])| {
        let mut part = Partial {
            du_t: vec![0f32; XI * ub],
            db: vec![0f32; g.c_out],
        };
        with_scratch(v_len + dm_len, dv_len, |vdm, dv| {
            let (v, dm) = vdm.split_at_mut(v_len);
            for c0 in (0..nr).step_by(nb) {
                let nbc = nb.min(nr - c0);
                let tl = Tiles::new(g.h, g.w, nbc);
                let dy_chunk = &dy[(b0 + c0) * g.c_out * hw..];
                output_grad_tiles(g, tl, dy_chunk, dm, &mut part.db, inner);
                input_tiles(g, tl, &x[(b0 + c0) * g.c_in * hw..], v, inner);
                let (v, dm) = (&*v, &*dm);
                // dU^T[xi] += V[xi] @ dM[xi]^T: (C_in, C_out), summed over the tiles by the
                // product itself.
                per_position(&mut part.du_t, ub, g.c_in * g.c_out, inner, |xi, du| {
                    let dm_xi = tiles_at(tl, dm, g.c_out, xi); // (C_out, T)
                    sgemm_serial(tiles_at(tl, v, g.c_in, xi), dm_xi.t(), du, true);
                });
                if !input_grad {
                    continue;
                }
                // dV[xi] = U[xi]^T @ dM[xi]: (16, C_in, T), matrices vb apart.
                let vb = tl.block(g.c_in);
                per_position(dv, vb, g.c_in * tl.t, inner, |xi, dv| {
                    let dm_xi = tiles_at(tl, dm, g.c_out, xi); // (C_out, T)
                    sgemm_serial(u_at(g, &u, xi).t(), dm_xi, dv, false);
                });
                // dx = B dV B^T per tile, added onto a padded plane whose inside is the image's
                // gradient (neighbouring tiles overlap by two pixels).
                let dx_chunk = &mut dx_run[c0 * g.c_in * hw..][..nbc * g.c_in * hw];
                let (dv, images) = (&*dv, tl.images());
                let scratch = input_grad_scratch(g.h, g.w, images);
                for_each_channel(
                    dx_chunk,
                    (g.c_in, hw, images),
                    inner,
                    scratch,
                    |s, c, dx| {
                        let (rows, shape) = (rows_of(tl, dv, vb, c), (g.h, g.w, images));
                        input_grad_channel(&rows, shape, dx, g.c_in * hw, s);
                    },
                );
            }
        });
        part
    };
    let mut partials: Vec<Partial> = runs.into_par_iter().zip(dx_runs).map(run).collect();
    // dU and db summed over the threads, in thread order.
    let Some((sum, rest)) = partials.split_first_mut() else {
        // No images.
        dw.iter_mut().chain(db).for_each(|v| _ = v.write(0.0));
        return;
    };
    for part in rest {
        add_assign(&mut sum.du_t, &part.du_t);
        add_assign(&mut sum.db, &part.db);
    }
    write_slice(db, &sum.db);
    // dW = G^T dU G for every channel pair, a block of output channels per task: dU^T is
    // (16, C_in, C_out), so the block's entries for one input channel are a run of each of
    // the 16 rows (read down the output channels one at a time, each read took its own cache
    // line).
    const BLOCK: usize = 16;
    let du_t = &sum.du_t;
    dw.par_chunks_mut(BLOCK * g.c_in * 9)
        .enumerate()
        .for_each(|(block, dw)| {
            let outputs = dw.len() / (g.c_in * 9);
            for ci in 0..g.c_in {
                for o in 0..outputs {
                    let at = ci * g.c_out + block * BLOCK + o;
                    let du = from_fn(|i| from_fn(|j| du_t[(i * 4 + j) * ub + at])); // (4, 4)
                    let k = &mut dw[(o * g.c_in + ci) * 9..][..9];
                    write_slice(k, two_d(du, gt).as_flattened()); // (3, 3)
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as f32 / u32::MAX as f32 - 0.5
            })
            .collect()
    }

    fn bits(xs: &[f32]) -> Vec<u32> {
        xs.iter().map(|x| x.to_bits()).collect()
    }

    use super::super::conv::copy_short;

    impl Tiles {
        /// Row length of a padded plane: W + 2.
        fn wp(&self) -> usize {
            2 * self.tw + 2
        }

        /// Floats in a padded plane: (H + 2) rows of W + 2.
        fn padded(&self) -> usize {
            (2 * self.th + 2) * self.wp()
        }

        /// Tile (ty, tx) of image n, as (t, ty, tx).
        fn each(&self, n: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
            (0..self.th).flat_map(move |ty| {
                (0..self.tw).map(move |tx| ((n * self.th + ty) * self.tw + tx, ty, tx))
            })
        }

        /// Where the 4x4 input tile of output tile (ty, tx) starts in a padded plane.
        fn corner(&self, ty: usize, tx: usize) -> usize {
            2 * ty * self.wp() + 2 * tx
        }
    }

    /// [`input_channel`] tile by tile, with `two_d` as the module's formulas write it, image by
    /// image (the reference the row kernels are held to): `pad` is a zero-bordered padded plane
    /// (its border is never written).
    fn input_channel_by_tile(x: &[f32], planes: Planes, v: &mut [f32], ts: usize, pad: &mut [f32]) {
        let Planes {
            stride,
            images,
            h,
            w,
        } = planes;
        let wp = w + 2;
        let tl = Tiles::new(h, w, images);
        let mut block = vec![[0f32; XI]; tl.th * tl.tw]; // one image's tiles, tile-major
        for n in 0..images {
            let plane = &x[n * stride..][..h * w];
            for (iy, line) in plane.chunks_exact(w).enumerate() {
                copy_short(&mut pad[(iy + 1) * wp + 1..][..w], line);
            }
            for ((_, ty, tx), out) in tl.each(n).zip(block.iter_mut()) {
                let corner = &pad[tl.corner(ty, tx)..][..3 * wp + 4];
                let d = from_fn(|i| {
                    let r = &corner[i * wp..][..4];
                    [r[0], r[1], r[2], r[3]]
                }); // (4, 4)
                out.copy_from_slice(two_d(d, bt).as_flattened());
            }
            write_tiles(&block, v, ts, n);
        }
    }

    /// One image's transformed tiles (tile-major, `block[tile][xi]`) into the 16 rows of a
    /// (16, T) buffer whose rows are `ts` apart: row xi, tiles `n * tiles..(n + 1) * tiles`.
    fn write_tiles(block: &[[f32; XI]], v: &mut [f32], ts: usize, n: usize) {
        let tiles = block.len();
        for (xi, row) in v.chunks_mut(ts).take(XI).enumerate() {
            for (dst, tile) in row[n * tiles..][..tiles].iter_mut().zip(block) {
                *dst = tile[xi];
            }
        }
    }

    /// [`output_channel`] tile by tile, for one image.
    fn output_plane_by_tile(
        m: &[&[f32]; 16],
        h: usize,
        w: usize,
        bias: f32,
        plane: &mut [MaybeUninit<f32>],
    ) {
        let tl = Tiles::new(h, w, 1);
        for (t, ty, tx) in tl.each(0) {
            let y = two_d(from_fn(|i| from_fn(|j| m[i * 4 + j][t])), at); // (2, 2)
            for (i, y) in y.iter().enumerate() {
                let out = &mut plane[(2 * ty + i) * w + 2 * tx..][..2];
                out[0] = MaybeUninit::new(y[0] + bias);
                out[1] = MaybeUninit::new(y[1] + bias);
            }
        }
    }

    /// [`output_grad_channel`] tile by tile, image by image.
    fn output_grad_channel_by_tile(dy: &[f32], planes: Planes, dm: &mut [f32], ts: usize) {
        let Planes {
            stride,
            images,
            h,
            w,
        } = planes;
        let tl = Tiles::new(h, w, images);
        let mut block = vec![[0f32; XI]; tl.th * tl.tw]; // one image's tiles, tile-major
        for n in 0..images {
            let plane = &dy[n * stride..][..h * w];
            for ((_, ty, tx), out) in tl.each(n).zip(block.iter_mut()) {
                let top = &plane[2 * ty * w + 2 * tx..][..w + 2];
                let d = [[top[0], top[1]], [top[w], top[w + 1]]]; // (2, 2)
                out.copy_from_slice(two_d(d, a).as_flattened());
            }
            write_tiles(&block, dm, ts, n);
        }
    }

    /// [`input_grad_channel`] tile by tile, for one image.
    fn input_grad_plane_by_tile(
        dv: &[&[f32]; 16],
        h: usize,
        w: usize,
        plane: &mut [f32],
        pad: &mut [f32],
    ) {
        let tl = Tiles::new(h, w, 1);
        let (pad, wp) = (&mut pad[..tl.padded()], tl.wp());
        pad.fill(0.0);
        for (t, ty, tx) in tl.each(0) {
            let d = two_d(from_fn(|i| from_fn(|j| dv[i * 4 + j][t])), b); // (4, 4)
            let corner = &mut pad[tl.corner(ty, tx)..][..3 * wp + 4];
            for (i, d) in d.iter().enumerate() {
                let dst = &mut corner[i * wp..][..4];
                for j in 0..4 {
                    dst[j] += d[j];
                }
            }
        }
        for (iy, line) in plane.chunks_exact_mut(w).enumerate() {
            copy_short(line, &pad[(iy + 1) * wp + 1..][..w]);
        }
    }

    /// The row kernels of `winograd_rows` give the same bits as the tile-by-tile transforms,
    /// on narrow and wide images, one image and several interleaved.
    #[test]
    fn row_kernels_match_tile_by_tile_bit_for_bit() {
        for (h, w, images) in [
            (4, 4, 3),
            (6, 8, 2),
            (8, 8, 1),
            (4, 16, 2),
            (8, 18, 1),
            (2, 2, 3),
            (2, 4, 1),
        ] {
            row_kernels_match(h, w, images);
        }
    }

    fn row_kernels_match(h: usize, w: usize, images: usize) {
        let tl = Tiles::new(h, w, images);
        let (hw, per_image) = (h * w, tl.th * tl.tw);
        let planes = Planes {
            stride: hw,
            images,
            h,
            w,
        };
        // Where tile t of image n sits among the interleaved images, for t = n * per_image + tile.
        let at = |t: usize| (t % per_image) * images + t / per_image;
        let same = |rows: &[f32], tiles: &[f32], what: &str| {
            for xi in 0..XI {
                for t in 0..tl.t {
                    let (r, b) = (rows[xi * tl.ts + at(t)], tiles[xi * tl.ts + t]);
                    assert_eq!(r.to_bits(), b.to_bits(), "{what}, {h}x{w}, {images} images");
                }
            }
        };
        let x = noise(images * hw, 1);
        let mut rows = vec![0f32; XI * tl.ts];
        let mut tiles = vec![0f32; XI * tl.ts];
        let mut scratch = vec![0f32; input_scratch(h, w, images)];
        input_channel(&x, planes, &mut rows, tl.ts, &mut scratch);
        let mut pad = vec![0f32; tl.padded()];
        input_channel_by_tile(&x, planes, &mut tiles, tl.ts, &mut pad);
        same(&rows, &tiles, "V = B^T d B");

        let mut scratch = vec![0f32; output_grad_scratch(h, w, images)];
        output_grad_channel(&x, planes, &mut rows, tl.ts, &mut scratch);
        output_grad_channel_by_tile(&x, planes, &mut tiles, tl.ts);
        same(&rows, &tiles, "dM = A dY A^T");

        // 16 rows of interleaved tiles, and the same values image by image.
        let m = noise(XI * tl.ts, 2);
        let m_rows: [&[f32]; XI] = from_fn(|xi| &m[xi * tl.ts..][..tl.t]);
        let m_ref: Vec<Vec<f32>> = (0..XI)
            .map(|xi| (0..tl.t).map(|t| m_rows[xi][at(t)]).collect())
            .collect();
        let mut y_rows = vec![MaybeUninit::new(0f32); images * hw];
        let mut scratch = vec![0f32; output_scratch(h, w, images)];
        output_channel(&m_rows, (h, w, images), 0.25, &mut y_rows, hw, &mut scratch);
        let mut dx_rows = vec![MaybeUninit::new(0f32); images * hw];
        let mut scratch = vec![0f32; input_grad_scratch(h, w, images)];
        input_grad_channel(&m_rows, (h, w, images), &mut dx_rows, hw, &mut scratch);
        let mut y_tiles = vec![MaybeUninit::new(0f32); images * hw];
        let mut dx_tiles = vec![0f32; images * hw];
        for n in 0..images {
            let rows: [&[f32]; XI] = from_fn(|xi| &m_ref[xi][n * per_image..]);
            output_plane_by_tile(&rows, h, w, 0.25, &mut y_tiles[n * hw..][..hw]);
            input_grad_plane_by_tile(&rows, h, w, &mut dx_tiles[n * hw..][..hw], &mut pad);
        }
        // SAFETY: both outputs were initialised above.
        let read = |p: Vec<MaybeUninit<f32>>| -> Vec<f32> {
            p.into_iter().map(|v| unsafe { v.assume_init() }).collect()
        };
        let (y_rows, y_tiles, dx_rows) = (read(y_rows), read(y_tiles), read(dx_rows));
        assert_eq!(
            bits(&y_rows),
            bits(&y_tiles),
            "y = A^T M A + b, {h}x{w}, {images} images"
        );
        assert_eq!(
            bits(&dx_rows),
            bits(&dx_tiles),
            "dx = B dV B^T, {h}x{w}, {images} images"
        );
    }
}
