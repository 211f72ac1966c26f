//! The fast path of [`super::conv`] for stride-1 convolutions with the same padding `p` on all
//! sides, `p` smaller than the kernel, on images large enough that the padding costs little:
//! the 3x3 ones at 32x32 that [`super::conv_winograd`] does not take, the VAE's RGB `conv_in`
//! and `conv_out` (see `Geometry::fast_path`; 1x1 convolutions have their own path,
//! [`super::conv_pointwise`]).
//!
//! The input is copied once into a zero-padded, channel-major buffer `x_pad` (C_in, L): every
//! image's planes laid end to end, each row followed by `p` zeros and each image preceded by `p`
//! zero rows. Neighbouring rows and images share their padding (the zeros right of one row are
//! also the zeros left of the next), so a row is `Wp = W + p` floats and an image `Hp = H + p`
//! rows. In that layout the pixel that kernel tap (ky, kx) reads for output position `j` is
//! simply `x_pad[c, j + ky*Wp + kx]`: for each tap, the inputs of a block of consecutive
//! positions are a (C_in, cw) window of `x_pad`, shifted by `ky*Wp + kx`, that the matrix
//! product reads in place. Outputs are computed on that grid too, and the positions in the
//! padding thrown away (6% extra work for a 3x3 kernel at 32x32).
//!
//! The positions are cut into blocks small enough that a block's products stay in cache, and
//! each thread takes a contiguous run of blocks with its own buffers:
//!
//! - forward:      `y[:, block] = sum_tap W_tap @ x_pad[:, block + shift_tap]`
//!   with W_tap = W[:, :, ky, kx] (C_out, C_in), a strided view of the weight
//! - weight grad:  `dW^T += col(block) @ dy[:, block]^T`, (K, cw) x (cw, C_out), with the
//!   column matrix `col` (K, cw) of the block's taps copied out (one long product runs faster
//!   than nine short ones here)
//! - input grad:   `dx_pad[:, block + shift_tap] += W_tap^T @ dy[:, block]`, straight into the
//!   thread's own share of `dx_pad` (the columns its blocks reach); the shares are summed.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::{contiguous_runs, with_scratch, Geometry};
use super::fastmath::{add_assign, add_scalar, sum_wide};
use super::gemm::{sgemm_serial, sgemm_serial_into, MatRef};
use super::ops::written_by;

/// Below this many input channels the forward pass builds the column matrix instead of
/// multiplying each tap's window in place.
const MIN_TAP_DEPTH: usize = 16;

/// The padded, channel-major layout and its blocking.
struct Ext {
    /// Padding on each side (the same on all four).
    p: usize,
    /// Row length: the image row and the `p` zeros it shares with the next row.
    wp: usize,
    /// Floats per image: `H + p` rows of `wp`.
    plane: usize,
    /// Columns per block (a multiple of `wp`, so an output row never straddles two blocks).
    cw: usize,
    blocks: usize,
    /// Row length of `x_pad` / `dx_pad`: all blocks plus the reach of the last kernel tap.
    lbuf: usize,
}

impl Ext {
    fn new(g: &Geometry) -> Self {
        let p = g.pad.top;
        let wp = g.w + p;
        let plane = (g.h + p) * wp;
        let l = g.n * plane;
        // About 256K floats (1 MB) of column matrix and output block together (K + C_out rows),
        // so both stay in a core's 2 MB L2 while the block is multiplied and copied out, and at
        // least two blocks so both cores have work. (K rows alone, 2.2 MB for the RGB conv_in
        // at 27 + 32 rows, took 1.2x as long forward.)
        let target = ((1 << 18) / (g.k() + g.c_out)).max(256);
        let rows = (target / wp).clamp(1, l.div_ceil(wp).div_ceil(2).max(1));
        let cw = rows * wp;
        let blocks = l.div_ceil(cw);
        let reach = (g.kh - 1) * wp + (g.kw - 1);
        Self {
            p,
            wp,
            plane,
            cw,
            blocks,
            lbuf: blocks * cw + reach,
        }
    }

    /// How far past a block's last column its kernel taps read: `(kh-1)*Wp + kw-1`.
    fn reach(&self) -> usize {
        self.lbuf - self.blocks * self.cw
    }

    /// Contiguous runs of blocks, one per thread: (first block, number of blocks).
    fn runs(&self) -> Vec<(usize, usize)> {
        contiguous_runs(self.blocks, rayon::current_num_threads())
    }

    /// Where input pixel (n, iy, 0) lives in a row of `x_pad`: image `n`'s plane starts after
    /// its `p` rows of top padding, which are the previous image's bottom padding.
    fn input_row(&self, n: usize, iy: usize) -> usize {
        n * self.plane + (iy + self.p) * self.wp + self.p
    }

    /// Kernel tap `t` = (ky, kx) reads `ky*Wp + kx` past the output position.
    fn shift(&self, g: &Geometry, t: usize) -> usize {
        (t / g.kw) * self.wp + t % g.kw
    }
}

/// Copies `x` (N, C_in, H, W) into the zero-padded, channel-major `x_pad` (C_in, lbuf).
fn padded_planes(g: &Geometry, e: &Ext, x: &[f32]) -> Vec<f32> {
    let hw = g.h * g.w;
    // SAFETY: `write_rows` writes every element of each channel's row.
    let (x_pad, ()) = unsafe {
        written_by(g.c_in * e.lbuf, |x_pad| {
            x_pad
                .par_chunks_mut(e.lbuf)
                .enumerate()
                .for_each(|(c, row)| {
                    let lines = (0..g.n).flat_map(|n| {
                        let plane = &x[(n * g.c_in + c) * hw..][..hw];
                        let lines = plane.chunks_exact(g.w).enumerate();
                        lines.map(move |(iy, line)| (e.input_row(n, iy), line))
                    });
                    write_rows(row, lines, MaybeUninit::new);
                })
        })
    };
    x_pad
}

/// Writes every element of `dst` as `put(value)`: each `(start, src)` of `rows` at
/// `dst[start..]`, zero everywhere else. The rows must come in increasing order of `start` and
/// not overlap (a row out of order panics on its slice). `put` is `MaybeUninit::new` for memory
/// not yet written, the identity for a buffer that is.
fn write_rows<'a, T: Copy>(
    dst: &mut [T],
    rows: impl Iterator<Item = (usize, &'a [f32])>,
    put: impl Fn(f32) -> T,
) {
    let mut at = 0;
    for (start, src) in rows {
        dst[at..start].fill(put(0.0));
        let row = &mut dst[start..start + src.len()];
        row.iter_mut().zip(src).for_each(|(d, &v)| *d = put(v));
        at = start + src.len();
    }
    dst[at..].fill(put(0.0));
}

/// `col[(c, ky, kx), jj] = x_pad[c, j0 + jj + ky*Wp + kx]` for one block: (K, cw).
fn block_columns(g: &Geometry, e: &Ext, x_pad: &[f32], j0: usize, col: &mut [f32]) {
    let kk = g.kh * g.kw;
    for (r, dst) in col.chunks_exact_mut(e.cw).enumerate() {
        let at = (r / kk) * e.lbuf + j0 + e.shift(g, r % kk);
        dst.copy_from_slice(&x_pad[at..at + e.cw]);
    }
}

/// Kernel tap `t` of the weight, W[:, :, ky, kx], as a (C_out, C_in) view.
fn weight_tap<'a>(g: &Geometry, w: &'a [f32], t: usize) -> MatRef<'a> {
    let kk = g.kh * g.kw;
    MatRef {
        data: &w[t..],
        rows: g.c_out,
        cols: g.c_in,
        rs: g.c_in * kk,
        cs: kk,
    }
}

/// The (C_in, cw) window of `x_pad` that starts at column `j`.
fn window<'a>(g: &Geometry, e: &Ext, x_pad: &'a [f32], j: usize) -> MatRef<'a> {
    MatRef {
        data: &x_pad[j..],
        rows: g.c_in,
        cols: e.cw,
        rs: e.lbuf,
        cs: 1,
    }
}

/// Output rows inside one block: (n, oy, column of the row's start within the block).
fn rows_in_block(g: &Geometry, e: &Ext, block: usize) -> Vec<(usize, usize, usize)> {
    let j0 = block * e.cw;
    (0..e.cw / e.wp)
        .filter_map(|r| {
            let j = j0 + r * e.wp;
            let (n, oy) = (j / e.plane, (j % e.plane) / e.wp);
            (n < g.n && oy < g.h_out).then_some((n, oy, r * e.wp))
        })
        .collect()
}

/// `y = conv2d(x, W) + b` for stride 1 and equal padding `p` < kernel; returns
/// (N, C_out, H_out, W_out).
///
/// Each thread computes its blocks one at a time into a (C_out, cw) buffer that stays in
/// cache, and copies the block's valid output rows (plus the bias) straight into `y`.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let e = Ext::new(g);
    let k = g.k();
    let x_pad = padded_planes(g, &e, x);
    let p = g.h_out * g.w_out;
    // With few input channels (an RGB image) nine products of depth C_in would be too thin:
    // copy the block's columns out and run one of depth K instead.
    let columns = g.c_in < MIN_TAP_DEPTH;
    let fill = |y: &mut [MaybeUninit<f32>]| {
        let y = DisjointRows::new(y);
        e.runs().into_par_iter().for_each(|(b0, nb)| {
            let col_len = if columns { k * e.cw } else { 0 };
            // (K, cw) and (C_out, cw), the thread's buffers from the last call.
            with_scratch(col_len, g.c_out * e.cw, |col, y_block| {
                for block in b0..b0 + nb {
                    let j0 = block * e.cw;
                    if columns {
                        block_columns(g, &e, &x_pad, j0, col);
                        let col = MatRef::row_major(col, k, e.cw); // (K, cw)
                        sgemm_serial(MatRef::row_major(w, g.c_out, k), col, y_block, false);
                    } else {
                        for t in 0..g.kh * g.kw {
                            let x_t = window(g, &e, &x_pad, j0 + e.shift(g, t)); // (C_in, cw)
                            let w_t = weight_tap(g, w, t); // (C_out, C_in)
                            sgemm_serial(w_t, x_t, y_block, t > 0); // (C_out, cw)
                        }
                    }
                    for (n, oy, jj) in rows_in_block(g, &e, block) {
                        for (co, &b) in bias.iter().enumerate() {
                            let at = ((n * g.c_out + co) * g.h_out + oy) * g.w_out;
                            // SAFETY: output row (n, co, oy) belongs to this block alone.
                            let dst = unsafe { y.rows(at, g.w_out) };
                            add_scalar(dst, &y_block[co * e.cw + jj..][..g.w_out], b);
                        }
                    }
                }
            });
        });
    };
    // SAFETY: the blocks cover every output position (n, oy) once, and each block writes its
    // rows in full for every output channel, so every element of y is written, each once.
    let (y, ()) = unsafe { written_by(g.n * g.c_out * p, fill) };
    y
}

/// An output that several threads write at once, each its own rows: a raw pointer, because
/// the rows of one block of positions lie in every output channel's plane, not in one
/// contiguous piece that `split_at_mut` could hand out.
#[derive(Clone, Copy)]
struct DisjointRows {
    ptr: *mut MaybeUninit<f32>,
    len: usize,
}

// SAFETY: `rows` is the only access, and its callers write disjoint ranges.
unsafe impl Send for DisjointRows {}
unsafe impl Sync for DisjointRows {}

impl DisjointRows {
    fn new(out: &mut [MaybeUninit<f32>]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// `out[start..start + len]`.
    ///
    /// # Safety
    /// No other thread may hold a range overlapping this one while it is in use.
    #[expect(clippy::mut_from_ref, reason = "disjoint ranges, the caller's promise")]
    unsafe fn rows(&self, start: usize, len: usize) -> &mut [MaybeUninit<f32>] {
        assert!(start + len <= self.len, "conv2d: output row out of bounds");
        // SAFETY: in bounds (checked above); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// What one thread accumulates over its blocks.
struct Partial {
    dw_t: Vec<f32>,
    db: Vec<f32>,
    /// The thread's share of `dx_pad`: (C_in, span), the columns `base..base + span` that its
    /// blocks' taps reach (its own blocks and the reach of the last tap).
    dx_pad: Vec<f32>,
    base: usize,
    span: usize,
}

/// The gradients (dx if `input_grad`, dW, db) for stride 1 and equal padding `p` < kernel,
/// written into `dx` (N, C_in, H, W), `dw` (C_out, K) and `db` (C_out).
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let e = Ext::new(g);
    let k = g.k();
    let input_grad = dx.is_some();
    let x_pad = padded_planes(g, &e, x);
    let p = g.h_out * g.w_out;
    // As in the forward pass: with few input channels, one product of depth C_out for all K
    // rows of the block's column gradient, then nine shifted row additions, instead of nine
    // products each C_in rows tall.
    let columns = g.c_in < MIN_TAP_DEPTH;
    let partials: Vec<Partial> = e
        .runs()
        .into_par_iter()
        .map(|(b0, nb)| {
            let (base, span) = (b0 * e.cw, nb * e.cw + e.reach());
            let mut part = Partial {
                dw_t: vec![0f32; k * g.c_out],
                db: vec![0f32; g.c_out],
                dx_pad: vec![0f32; if input_grad { g.c_in * span } else { 0 }],
                base,
                span,
            };
            // (K, cw) columns (reused for their gradient) and the block's dy, (C_out, cw).
            with_scratch(k * e.cw, g.c_out * e.cw, |col, dy_block| {
                for block in b0..b0 + nb {
                    let j0 = block * e.cw;
                    // dy on the block's stretch of the padded grid, zero at the positions
                    // that are not outputs.
                    let rows = rows_in_block(g, &e, block); // in increasing order
                    for (co, dst) in dy_block.chunks_exact_mut(e.cw).enumerate() {
                        let lines = rows.iter().map(|&(n, oy, start)| {
                            let src = &dy[(n * g.c_out + co) * p + oy * g.w_out..][..g.w_out];
                            (start, src)
                        });
                        write_rows(dst, lines, |v| v);
                        part.db[co] += sum_wide(dst);
                    }
                    let dy_mat = MatRef::row_major(dy_block, g.c_out, e.cw);
                    block_columns(g, &e, &x_pad, j0, col);
                    let col_mat = MatRef::row_major(col, k, e.cw);
                    sgemm_serial(col_mat, dy_mat.t(), &mut part.dw_t, true); // (K, C_out)
                    if !input_grad {
                        continue;
                    }
                    if columns {
                        let w_mat = MatRef::row_major(w, g.c_out, k).t(); // (K, C_out)
                        sgemm_serial(w_mat, dy_mat, col, false); // (K, cw)
                        let kk = g.kh * g.kw;
                        for (r, src) in col.chunks_exact(e.cw).enumerate() {
                            let at = (r / kk) * span + j0 - base + e.shift(g, r % kk);
                            add_assign(&mut part.dx_pad[at..at + e.cw], src);
                        }
                    } else {
                        for t in 0..g.kh * g.kw {
                            let w_t = weight_tap(g, w, t).t(); // (C_in, C_out)
                            let dst = &mut part.dx_pad[j0 - base + e.shift(g, t)..];
                            sgemm_serial_into(w_t, dy_mat, dst, span, true); // (C_in, cw)
                        }
                    }
                }
            });
            part
        })
        .collect();
    for part in &partials {
        db.iter_mut().zip(&part.db).for_each(|(d, s)| *d += s);
    }
    for (co, row) in dw.chunks_exact_mut(k).enumerate() {
        for (kk, d) in row.iter_mut().enumerate() {
            *d = partials.iter().map(|p| p.dw_t[kk * g.c_out + co]).sum();
        }
    }
    if let Some(dx) = dx {
        let hw = g.h * g.w;
        dx.par_chunks_mut(hw).enumerate().for_each(|(nc, plane)| {
            let (n, c) = (nc / g.c_in, nc % g.c_in);
            for (iy, dst) in plane.chunks_exact_mut(g.w).enumerate() {
                let at = e.input_row(n, iy);
                for part in &partials {
                    // The part of this row inside the thread's columns (outside them its
                    // share is zero).
                    let lo = at.max(part.base);
                    let hi = (at + g.w).min(part.base + part.span);
                    if lo < hi {
                        let src = &part.dx_pad[c * part.span + lo - part.base..][..hi - lo];
                        add_assign(&mut dst[lo - at..hi - at], src);
                    }
                }
            }
        });
    }
}
