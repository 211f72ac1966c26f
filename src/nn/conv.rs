//! 2-D convolution as one large matrix product, forward and backward, on the CPU.
//!
//! candle's own conv2d runs its backward through `conv_transpose2d` and reaches a tenth of this
//! machine's matrix-product speed; convolutions are most of the work of the VAE and the UNet, so
//! inkdrop owns this one kernel. For a chunk of images it lays the receptive fields out as
//! columns (`im2col`), then
//!
//! - forward:        `y = W @ col + b`            W (C_out, K), col (K, N*P), K = C_in*kh*kw
//! - weight grad:    `dW = dy @ col^T`            dy (C_out, N*P), P = H_out*W_out
//! - bias grad:      `db = sum over N*P of dy`
//! - input grad:     `dx = col2im(W^T @ dy)`      scatter-add the columns back onto the image
//!
//! Each is one `gemm` call per chunk, so all three passes run near the matrix-product peak.
//! Each thread takes its own contiguous run of images (columns, products, bias, and in the
//! backward pass its own part of dx and a partial dW), so the two cores meet once per
//! convolution rather than at every step of it.
//! Checked against candle's conv2d and finite differences in `tests/conv.rs`.
//!
//! Three faster paths take the layers they fit, and this file picks: 3x3 convolutions with
//! stride 1 and padding 1 on even-sided images go through Winograd's F(2x2, 3x3)
//! (`conv_winograd.rs`, 16/36 of the multiplications), 1x1 convolutions through
//! `conv_pointwise.rs` (one product per image, on the NCHW layout as it is), and other stride-1
//! convolutions on large images through `conv_stride1.rs` (no column matrix). The column
//! matrix remains for stride 2, thin inputs (an RGB image) and small batches.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::fastmath::wide_kernels;
use super::ops::{contiguous_f32, write_slice, written_by};

use super::gemm::{sgemm_with, MatRef};

/// Zero padding on each side of the image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// The same padding on all four sides (PyTorch's `padding=p`).
    pub fn same(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }
}

/// Every size a convolution needs, read off the input (N, C_in, H, W) and weight
/// (C_out, C_in, kh, kw).
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c_in: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) pad: Padding,
    pub(super) h_out: usize,
    pub(super) w_out: usize,
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], stride: usize, pad: Padding) -> Result<Self> {
        let (&[n, c_in, h, w], &[c_out, wc, kh, kw]) = (x, weight) else {
            bail!("conv2d: input {x:?} must be (N, C, H, W) and weight {weight:?} (C_out, C_in, kh, kw)")
        };
        if wc != c_in {
            bail!("conv2d: input has {c_in} channels but the weight {weight:?} expects {wc}");
        }
        if x.contains(&0) || weight.contains(&0) {
            bail!("conv2d: input {x:?} and weight {weight:?} must not have a dimension of size 0");
        }
        let (hp, wp) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
        if stride == 0 || hp < kh || wp < kw {
            bail!("conv2d: a {kh}x{kw} kernel with stride {stride} does not fit a padded {hp}x{wp} input");
        }
        Ok(Self {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
            h_out: (hp - kh) / stride + 1,
            w_out: (wp - kw) / stride + 1,
        })
    }

    /// Rows of the column matrix: one per (input channel, ky, kx).
    pub(super) fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Stride 1 with the same padding `p` on every side, `p` smaller than the kernel, and an
    /// image large enough: the fast path of [`super::conv_stride1`], which computes outputs on a
    /// grid of (H+p)(W+p) positions per image. That costs (H+p)(W+p)/(H_out W_out) times the
    /// work, at most 10/9 here (a 3x3 kernel with p = 1 from about 19x19 up): 6% more at 32x32,
    /// but 13% at 16x16 and 27% at 8x8, where the column matrix of [`im2col`] (valid positions
    /// only) measured faster.
    fn fast_path(&self) -> bool {
        let p = self.pad.top;
        let grid = (self.h + p) * (self.w + p);
        self.stride == 1
            && [p, self.pad.left, self.pad.right] == [self.pad.bottom; 3]
            && p < self.kh
            && p < self.kw
            && grid * 9 <= self.p() * 10
    }

    /// Which kernel computes this convolution, forward and backward alike: Winograd where it
    /// applies (3x3, stride 1, padding 1: the UNet's and VAE's convolutions from 4x4 to 32x32),
    /// else the pointwise path (1x1, stride 1, no padding: the shortcuts and the transformers'
    /// projections), else the padded-plane path (the RGB layers at 32x32), else the column
    /// matrix (stride 2, a 4-channel input, sampling at batch 2).
    fn path(&self) -> Path {
        if super::conv_winograd::applies(self) {
            Path::Winograd
        } else if super::conv_pointwise::applies(self) {
            Path::Pointwise
        } else if self.fast_path() {
            Path::PaddedPlane
        } else {
            Path::Columns
        }
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.h_out * self.w_out
    }

    /// Images per chunk, so the column buffer stays near 512 KB, inside a core's L2 cache,
    /// whatever the batch size: written by `im2col` and read back by the matrix product (or
    /// written by the product and read by `col2im`) while still in cache. (At 4 MB, the size
    /// of the whole L3 share, a stride-2 convolution took 12% longer.)
    fn chunk(&self) -> usize {
        ((1 << 17) / (self.k() * self.p()).max(1)).clamp(1, self.n.max(1))
    }
}

/// The four ways [`Conv2d`] computes a convolution; see [`Geometry::path`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Winograd,
    Pointwise,
    PaddedPlane,
    Columns,
}

/// The padded plane of one image channel: (H + pad_top + pad_bottom) rows of
/// Wp = W + pad_left + pad_right, zero around the image, stored as its `stride` column phases
/// one after another (column c of a row in phase c % stride, at c / stride). Kernel tap kx then
/// reads columns s*ox + kx for ox = 0, 1, ...: consecutive floats of phase kx % s, so every row
/// of every tap is one plain copy, at any stride. (With stride 1 there is one phase, the plane
/// itself.)
struct PaddedPlane {
    /// Floats per row of a phase: Wp / stride, rounded up.
    ws: usize,
    /// Floats per phase.
    phase: usize,
    buf: Vec<f32>,
}

impl PaddedPlane {
    /// An all-zero plane for `g`'s padding and stride.
    fn new(g: &Geometry) -> Self {
        let wp = g.w + g.pad.left + g.pad.right;
        let hp = g.h + g.pad.top + g.pad.bottom;
        let ws = wp.div_ceil(g.stride);
        Self {
            ws,
            phase: hp * ws,
            buf: vec![0f32; g.stride * hp * ws],
        }
    }

    /// `f(input pixel ix, where it lives)` for each pixel of input row `iy`, phase by phase.
    #[inline(always)]
    fn each_pixel(&self, g: &Geometry, iy: usize, mut f: impl FnMut(usize, usize)) {
        let (s, pl) = (g.stride, g.pad.left);
        let row = (iy + g.pad.top) * self.ws;
        for ph in 0..s {
            let first = (ph + s - pl % s) % s; // the first ix with (ix + pl) % s == ph
            let (mut ix, mut at) = (first, ph * self.phase + row + (first + pl) / s);
            while ix < g.w {
                f(ix, at);
                (ix, at) = (ix + s, at + 1);
            }
        }
    }

    /// Stride 2: the parts of padded row `r` that image pixels 2x (`.0`) and 2x + 1 (`.1`)
    /// go to, in order. Column c = ix + pad_left is in phase c % 2 at c / 2.
    #[inline(always)]
    fn pairs(&mut self, g: &Geometry, iy: usize) -> (&mut [f32], &mut [f32]) {
        let (row, ws, pl) = ((iy + g.pad.top) * self.ws, self.ws, g.pad.left);
        let (even, odd) = self.buf.split_at_mut(self.phase);
        let (even, odd) = (&mut even[row..row + ws], &mut odd[row..row + ws]);
        if pl % 2 == 0 {
            (&mut even[pl / 2..], &mut odd[pl / 2..])
        } else {
            (&mut odd[pl / 2..], &mut even[pl / 2 + 1..])
        }
    }

    /// Copies image row `iy` into its padded row.
    #[inline(always)]
    fn put_row(&mut self, g: &Geometry, iy: usize, line: &[f32]) {
        if g.stride == 1 {
            let at = (iy + g.pad.top) * self.ws + g.pad.left;
            copy_short(&mut self.buf[at..at + g.w], line);
        } else if g.stride == 2 {
            let (first, second) = self.pairs(g, iy);
            let half = g.w / 2;
            if g.w % 2 == 1 {
                first[half] = line[g.w - 1];
            }
            deinterleave(&mut first[..half], &mut second[..half], &line[..2 * half]);
        } else {
            let mut buf = std::mem::take(&mut self.buf);
            self.each_pixel(g, iy, |ix, at| buf[at] = line[ix]);
            self.buf = buf;
        }
    }

    /// Writes image row `iy` of the plane into `line` (memory not yet written).
    #[inline(always)]
    fn write_row_to(&mut self, g: &Geometry, iy: usize, line: &mut [MaybeUninit<f32>]) {
        if g.stride == 1 {
            let at = (iy + g.pad.top) * self.ws + g.pad.left;
            write_slice(line, &self.buf[at..at + g.w]);
        } else if g.stride == 2 {
            let (w, half) = (g.w, g.w / 2);
            let (first, second) = self.pairs(g, iy);
            if w % 2 == 1 {
                line[w - 1].write(first[half]);
            }
            interleave(
                &mut line[..2 * half],
                &first[..half],
                &second[..half],
                MaybeUninit::new,
            );
        } else {
            self.each_pixel(g, iy, |ix, at| _ = line[ix].write(self.buf[at]));
        }
    }

    /// Where kernel tap (ky, kx) reads (or writes) its `W_out` consecutive floats for output
    /// row 0, and how far apart its output rows are.
    #[inline(always)]
    fn tap(&self, g: &Geometry, ky: usize, kx: usize) -> (usize, usize) {
        let start = (kx % g.stride) * self.phase + ky * self.ws + kx / g.stride;
        (start, g.stride * self.ws)
    }
}

/// `col[(c, ky, kx), (b, oy, ox)] = x[b, c, oy*s + ky - pad_top, ox*s + kx - pad_left]`, zero
/// outside the image. `x` holds `nb` images (nb, C_in, H, W); `col` is (K, nb*P).
///
/// Each task takes one input channel (its `kh*kw` rows of `col`) and, image by image, copies
/// the plane into a zero-bordered padded plane; every row of every tap is then one plain copy,
/// with no bounds to test (at 8x8 a row is 8 floats, so tests and fills would cost more than
/// the copies).
fn im2col(g: &Geometry, x: &[f32], nb: usize, col: &mut [f32], parallel: bool) {
    let kk = g.kh * g.kw;
    let channel = |pad: &mut PaddedPlane, (c, rows): (usize, &mut [f32])| {
        im2col_channel(g, x, nb, pad, c, rows)
    };
    for_each_chunk(
        col,
        kk * nb * g.p(),
        parallel,
        || PaddedPlane::new(g),
        channel,
    );
}

/// The adjoint of [`im2col`]: sums every column entry back onto the input pixel it was read
/// from. `dx` holds `nb` images (nb, C_in, H, W), each element written (not accumulated into).
///
/// Each task takes one image channel and sums its taps into a zeroed padded plane (in the
/// order ky, kx, as a direct sum would), then writes the plane's inside into `dx`.
fn col2im(g: &Geometry, col: &[f32], nb: usize, dx: &mut [MaybeUninit<f32>], parallel: bool) {
    let hw = g.h * g.w;
    let plane = |pad: &mut PaddedPlane, (bc, plane): (usize, &mut [MaybeUninit<f32>])| {
        col2im_plane(g, col, nb, pad, bc, plane)
    };
    let dx = &mut dx[..nb * g.c_in * hw];
    for_each_chunk(dx, hw, parallel, || PaddedPlane::new(g), plane);
}

wide_kernels! {
    /// [`im2col`]'s work for input channel `c`: its `kh*kw` rows of the column matrix, `rows`.
    fn im2col_channel(
        g: &Geometry,
        x: &[f32],
        nb: usize,
        pad: &mut PaddedPlane,
        c: usize,
        rows: &mut [f32],
    ) {
        let (p, hw) = (g.p(), g.h * g.w);
        for b in 0..nb {
            let plane = &x[(b * g.c_in + c) * hw..][..hw];
            for (iy, line) in plane.chunks_exact(g.w).enumerate() {
                pad.put_row(g, iy, line);
            }
            for (tap, row) in rows.chunks_exact_mut(nb * p).enumerate() {
                let (ky, kx) = (tap / g.kw, tap % g.kw);
                let out = &mut row[b * p..][..p];
                let (mut at, step) = pad.tap(g, ky, kx);
                for dst in out.chunks_exact_mut(g.w_out) {
                    copy_short(dst, &pad.buf[at..at + g.w_out]);
                    at += step;
                }
            }
        }
    }

    /// [`col2im`]'s work for plane `bc` = (image, channel) of `dx`, `plane`.
    fn col2im_plane(
        g: &Geometry,
        col: &[f32],
        nb: usize,
        pad: &mut PaddedPlane,
        bc: usize,
        plane: &mut [MaybeUninit<f32>],
    ) {
        let p = g.p();
        let (b, c) = (bc / g.c_in, bc % g.c_in);
        pad.buf.fill(0.0);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let rows = &col[r * nb * p + b * p..][..p];
                let (mut at, step) = pad.tap(g, ky, kx);
                for src in rows.chunks_exact(g.w_out) {
                    add_short(&mut pad.buf[at..at + g.w_out], src);
                    at += step;
                }
            }
        }
        for (iy, line) in plane.chunks_exact_mut(g.w).enumerate() {
            pad.write_row_to(g, iy, line);
        }
    }
}

/// `dst = src` for the short rows of small images: whole groups of 16 floats, then of four,
/// are moved as fixed-size arrays (one vector move each inside a wide kernel), the rest one by
/// one, so an 8-float row costs two moves instead of a call to `memcpy`.
#[inline(always)]
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d16 = dst.chunks_exact_mut(16);
    let mut s16 = src.chunks_exact(16);
    for (d, s) in (&mut d16).zip(&mut s16) {
        d[..16].copy_from_slice(&s[..16]);
    }
    let mut d4 = d16.into_remainder().chunks_exact_mut(4);
    let mut s4 = s16.remainder().chunks_exact(4);
    for (d, s) in (&mut d4).zip(&mut s4) {
        d[..4].copy_from_slice(&s[..4]);
    }
    for (d, s) in d4.into_remainder().iter_mut().zip(s4.remainder()) {
        *d = *s;
    }
}

/// `even[i] = line[2i]`, `odd[i] = line[2i + 1]`: in blocks of 16 pairs (fixed-size arrays,
/// which a wide kernel turns into vector permutes), the rest pair by pair.
#[inline(always)]
pub(super) fn deinterleave(even: &mut [f32], odd: &mut [f32], line: &[f32]) {
    let mut l32 = line.chunks_exact(32);
    let (mut e16, mut o16) = (even.chunks_exact_mut(16), odd.chunks_exact_mut(16));
    for ((l, e), o) in (&mut l32).zip(&mut e16).zip(&mut o16) {
        let l: &[f32; 32] = l.try_into().unwrap();
        let (e, o): (&mut [f32; 16], &mut [f32; 16]) =
            (e.try_into().unwrap(), o.try_into().unwrap());
        *e = std::array::from_fn(|i| l[2 * i]);
        *o = std::array::from_fn(|i| l[2 * i + 1]);
    }
    let rest = l32.remainder().chunks_exact(2);
    for ((pair, e), o) in rest.zip(e16.into_remainder()).zip(o16.into_remainder()) {
        (*e, *o) = (pair[0], pair[1]);
    }
}

/// `line[2i] = put(even[i])`, `line[2i + 1] = put(odd[i])`, the inverse of [`deinterleave`],
/// blocked the same way (`put` = `MaybeUninit::new` for memory not yet written).
#[inline(always)]
pub(super) fn interleave<T>(line: &mut [T], even: &[f32], odd: &[f32], put: impl Fn(f32) -> T) {
    let mut l32 = line.chunks_exact_mut(32);
    let (mut e16, mut o16) = (even.chunks_exact(16), odd.chunks_exact(16));
    for ((l, e), o) in (&mut l32).zip(&mut e16).zip(&mut o16) {
        let (e, o): (&[f32; 16], &[f32; 16]) = (e.try_into().unwrap(), o.try_into().unwrap());
        let mut pairs = [0f32; 32];
        for i in 0..16 {
            pairs[2 * i] = e[i];
            pairs[2 * i + 1] = o[i];
        }
        l.iter_mut().zip(pairs).for_each(|(d, v)| *d = put(v));
    }
    let rest = l32.into_remainder().chunks_exact_mut(2);
    for ((pair, &e), &o) in rest.zip(e16.remainder()).zip(o16.remainder()) {
        pair[0] = put(e);
        pair[1] = put(o);
    }
}

/// `dst += src` for short rows, in groups of 16 and four like [`copy_short`].
#[inline(always)]
fn add_short(dst: &mut [f32], src: &[f32]) {
    let mut d16 = dst.chunks_exact_mut(16);
    let mut s16 = src.chunks_exact(16);
    for (d, s) in (&mut d16).zip(&mut s16) {
        let (d, s): (&mut [f32; 16], &[f32; 16]) = (d.try_into().unwrap(), s.try_into().unwrap());
        // Read both rows whole, then write: element by element, LLVM keeps it scalar.
        *d = std::array::from_fn(|i| d[i] + s[i]);
    }
    let mut d4 = d16.into_remainder().chunks_exact_mut(4);
    let mut s4 = s16.remainder().chunks_exact(4);
    for (d, s) in (&mut d4).zip(&mut s4) {
        let (d, s): (&mut [f32; 4], &[f32; 4]) = (d.try_into().unwrap(), s.try_into().unwrap());
        *d = std::array::from_fn(|i| d[i] + s[i]);
    }
    for (d, s) in d4.into_remainder().iter_mut().zip(s4.remainder()) {
        *d += *s;
    }
}

/// The input gradient `dx` cut into one piece per run of images ([`split_runs`]), or an empty
/// piece per run when no input gradient is asked for.
pub(super) fn input_grad_runs<'a>(
    dx: Option<&'a mut [MaybeUninit<f32>]>,
    runs: &[(usize, usize)],
    per_image: usize,
) -> Vec<&'a mut [MaybeUninit<f32>]> {
    match dx {
        Some(dx) => split_runs(dx, runs, per_image),
        None => runs.iter().map(|_| &mut [][..]).collect(),
    }
}

/// Writes `dw` (C_out, K) and `db` (C_out,) from the runs' partial sums: each run's weight
/// gradient transposed, (K, C_out), and its bias gradient, added in the runs' order.
pub(super) fn write_partials(
    partials: &[(Vec<f32>, Vec<f32>)],
    dw: &mut [MaybeUninit<f32>],
    db: &mut [MaybeUninit<f32>],
) {
    let (c_out, k) = (db.len(), dw.len() / db.len().max(1));
    for (co, row) in dw.chunks_exact_mut(k).enumerate() {
        for (kk, d) in row.iter_mut().enumerate() {
            d.write(partials.iter().map(|(dw_t, _)| dw_t[kk * c_out + co]).sum());
        }
    }
    for (co, d) in db.iter_mut().enumerate() {
        d.write(partials.iter().map(|(_, db_run)| db_run[co]).sum());
    }
}

/// `f(scratch, (i, chunk))` for each `size`-long chunk of `data`, split across rayon's threads
/// when `parallel` (each task's `scratch` made by `init`), else in order on the calling thread.
pub(super) fn for_each_chunk<E: Send, T>(
    data: &mut [E],
    size: usize,
    parallel: bool,
    init: impl Fn() -> T + Send + Sync,
    f: impl Fn(&mut T, (usize, &mut [E])) + Send + Sync,
) {
    if parallel {
        data.par_chunks_mut(size).enumerate().for_each_init(init, f);
    } else {
        let mut scratch = init();
        data.chunks_mut(size)
            .enumerate()
            .for_each(|item| f(&mut scratch, item));
    }
}

/// Splits `0..count` into at most `parts` contiguous runs of equal length (the last may be
/// shorter): (first, length) each.
pub(super) fn contiguous_runs(count: usize, parts: usize) -> Vec<(usize, usize)> {
    let per = count.div_ceil(parts.max(1)).max(1);
    (0..count)
        .step_by(per)
        .map(|b| (b, per.min(count - b)))
        .collect()
}

/// `data` cut into one piece per run of `runs` (as [`contiguous_runs`] gives them: in order,
/// together covering `data`), `len * stride` elements for a run of length `len`.
pub(super) fn split_runs<'a, E>(
    mut data: &'a mut [E],
    runs: &[(usize, usize)],
    stride: usize,
) -> Vec<&'a mut [E]> {
    runs.iter()
        .map(|&(_, len)| {
            let (piece, rest) = std::mem::take(&mut data).split_at_mut(len * stride);
            data = rest;
            piece
        })
        .collect()
}

/// The output of `runs` (as [`contiguous_runs`] gives them, covering every image) with
/// `per_image` floats per image, each run's part written by `run(part, (first, length))` on
/// its own thread, and not zeroed first.
///
/// # Safety
/// `run` must write every element of its part.
pub(super) unsafe fn written_by_runs(
    runs: &[(usize, usize)],
    per_image: usize,
    run: impl Fn(&mut [MaybeUninit<f32>], (usize, usize)) + Sync,
) -> Vec<f32> {
    let images = runs.iter().map(|&(_, len)| len).sum::<usize>();
    // SAFETY: the runs split the output into disjoint parts that together cover it, and the
    // caller's `run` writes all of each.
    let (out, ()) = unsafe {
        written_by(images * per_image, |out| {
            split_runs(out, runs, per_image)
                .into_par_iter()
                .zip(runs.par_iter())
                .for_each(|(part, &r)| run(part, r))
        })
    };
    out
}

/// Contiguous runs of images, one per thread: (first image, number of images). With fewer
/// images than threads, one run, and each step of it parallel inside instead.
pub(super) fn image_runs(n: usize) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads();
    contiguous_runs(n, if n < threads { 1 } else { threads })
}

thread_local! {
    /// Reused working memory for the column matrix and the permuted outputs, so a training step
    /// does not allocate and zero tens of megabytes per convolution.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with two scratch buffers of `a` and `b` floats (contents unspecified: every user
/// overwrites them fully before reading).
pub(super) fn with_scratch<R>(
    a: usize,
    b: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.take();
        if buf.len() < a + b {
            buf.resize(a + b, 0.0);
        }
        let (first, rest) = buf.split_at_mut(a);
        let out = f(first, &mut rest[..b]);
        cell.replace(buf);
        out
    })
}

/// `y = conv2d(x, W) + b`, as a candle op with a fused backward.
struct Conv2d {
    stride: usize,
    pad: Padding,
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "inkdrop-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let bias = contiguous_f32(s3, l3, "conv2d bias")?;
        if bias.len() != g.c_out {
            bail!(
                "conv2d: bias has {} entries for {} output channels",
                bias.len(),
                g.c_out
            );
        }
        let fast = match g.path() {
            Path::Winograd => Some(super::conv_winograd::forward(&g, x, w, bias)),
            Path::Pointwise => Some(super::conv_pointwise::forward(&g, x, w, bias)),
            Path::PaddedPlane => Some(super::conv_stride1::forward(&g, x, w, bias)),
            Path::Columns => None,
        };
        if let Some(y) = fast {
            return Ok((
                CpuStorage::F32(y),
                Shape::from((g.n, g.c_out, g.h_out, g.w_out)),
            ));
        }
        // Each thread takes its own run of images, chunk by chunk: columns, one product, the
        // bias, with nothing shared between the threads until the end.
        let (k, p, nb, hw) = (g.k(), g.p(), g.chunk(), g.h * g.w);
        let runs = image_runs(g.n);
        let inner = runs.len() == 1;
        let run = |y_run: &mut [MaybeUninit<f32>], (b0, nr): (usize, usize)| {
            with_scratch(k * nb * p, g.c_out * nb * p, |col, y_cols| {
                for c0 in (0..nr).step_by(nb) {
                    let nbc = nb.min(nr - c0);
                    let col = &mut col[..k * nbc * p];
                    im2col(&g, &x[(b0 + c0) * g.c_in * hw..], nbc, col, inner);
                    let y_cols = &mut y_cols[..g.c_out * nbc * p];
                    let w_mat = MatRef::row_major(w, g.c_out, k);
                    let col = MatRef::row_major(col, k, nbc * p);
                    sgemm_with(w_mat, col, y_cols, false, inner); // (C_out, nb*P)
                    let y_chunk = &mut y_run[c0 * g.c_out * p..][..nbc * g.c_out * p];
                    let bias_add = |_: &mut (), (i, dst): (usize, &mut [_])| {
                        let (b, co) = (i / g.c_out, i % g.c_out);
                        let src = &y_cols[(co * nbc + b) * p..][..p];
                        super::fastmath::add_scalar(dst, src, bias[co]);
                    }; // (nb, C_out, P)
                    for_each_chunk(y_chunk, p, inner, || (), bias_add);
                }
            })
        };
        // SAFETY: within a run the chunks of `nb` images cover it, `add_scalar` writing every
        // output plane.
        let y = unsafe { written_by_runs(&runs, g.c_out * p, run) };
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.n, g.c_out, g.h_out, g.w_out)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let backward = Conv2dBackward {
            stride: self.stride,
            pad: self.pad,
            input_grad: x.track_op(),
        };
        let flat = x.apply_op3_no_bwd(w, &dy.contiguous()?, &backward)?;
        let (nx, nw) = (
            if backward.input_grad {
                x.elem_count()
            } else {
                0
            },
            w.elem_count(),
        );
        let dx = if backward.input_grad {
            Some(flat.narrow(0, 0, nx)?.reshape(x.shape())?)
        } else {
            None
        };
        let dw = flat.narrow(0, nx, nw)?.reshape(w.shape())?;
        let db = flat
            .narrow(0, nx + nw, b.elem_count())?
            .reshape(b.shape())?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// The three gradients of [`Conv2d`] from (x, W, dy), returned as one flat buffer
/// `[dx (if input_grad), dW, db]`.
struct Conv2dBackward {
    stride: usize,
    pad: Padding,
    input_grad: bool,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "inkdrop-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let dy = contiguous_f32(s3, l3, "conv2d output gradient")?;
        let k = g.k();
        let nx = if self.input_grad { x.len() } else { 0 };
        let len = nx + g.c_out * k + g.c_out;
        let path = g.path();
        if path == Path::PaddedPlane {
            let mut out = vec![0f32; len];
            let (dx, rest) = out.split_at_mut(nx);
            let (dw, db) = rest.split_at_mut(g.c_out * k);
            let dx = self.input_grad.then_some(dx);
            super::conv_stride1::backward(&g, x, w, dy, dx, dw, db);
            return Ok((CpuStorage::F32(out), Shape::from(len)));
        }
        // SAFETY: the other three backward passes write every element of dx (when asked for),
        // dW and db, so the output needs no zeroing pass first.
        let (out, ()) = unsafe {
            written_by(len, |out| {
                let (dx, rest) = out.split_at_mut(nx);
                let (dw, db) = rest.split_at_mut(g.c_out * k);
                let dx = self.input_grad.then_some(dx);
                match path {
                    Path::Winograd => super::conv_winograd::backward(&g, x, w, dy, dx, dw, db),
                    Path::Pointwise => super::conv_pointwise::backward(&g, x, w, dy, dx, dw, db),
                    Path::Columns => columns_backward(&g, x, w, dy, dx, dw, db),
                    Path::PaddedPlane => unreachable!("the padded-plane path returned above"),
                }
            })
        };
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The column-matrix backward pass: writes every element of `dx` (if given), `dW` and `db`.
///
/// Each thread takes its own run of images: its dx is its own, its dW and db are partial sums,
/// added at the end. The weight gradient is accumulated transposed, dW^T = col @ dy^T
/// (K, C_out): the matrix-product kernels run 5x faster in this orientation when the inner
/// dimension (N*P) is long and the output small.
fn columns_backward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [MaybeUninit<f32>]>,
    dw: &mut [MaybeUninit<f32>],
    db: &mut [MaybeUninit<f32>],
) {
    let (k, p, nb) = (g.k(), g.p(), g.chunk());
    let hw = g.h * g.w;
    let runs = image_runs(g.n);
    let inner = runs.len() == 1;
    let input_grad = dx.is_some();
    let dx_runs = input_grad_runs(dx, &runs, g.c_in * hw);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = runs
        .into_par_iter()
        .zip(dx_runs)
        .map(|((b0, nr), dx_run)| {
            let (mut dw_t, mut db_run) = (vec![0f32; k * g.c_out], vec![0f32; g.c_out]);
            with_scratch(k * nb * p, g.c_out * nb * p, |col, dy_cols| {
                for c0 in (0..nr).step_by(nb) {
                    let nbc = nb.min(nr - c0);
                    let dy_chunk = &dy[(b0 + c0) * g.c_out * p..][..nbc * g.c_out * p];
                    let dy_cols = &mut dy_cols[..g.c_out * nbc * p];
                    let gather = |_: &mut (), (i, dst): (usize, &mut [f32])| {
                        let (co, b) = (i / nbc, i % nbc);
                        dst.copy_from_slice(&dy_chunk[(b * g.c_out + co) * p..][..p]);
                    }; // (C_out, nb*P)
                    for_each_chunk(dy_cols, p, inner, || (), gather);
                    for (co, row) in dy_cols.chunks_exact(nbc * p).enumerate() {
                        db_run[co] += super::fastmath::sum_wide(row);
                    }
                    let col = &mut col[..k * nbc * p];
                    im2col(g, &x[(b0 + c0) * g.c_in * hw..], nbc, col, inner);
                    let dy_mat = MatRef::row_major(dy_cols, g.c_out, nbc * p);
                    let col_mat = MatRef::row_major(col, k, nbc * p);
                    sgemm_with(col_mat, dy_mat.t(), &mut dw_t, true, inner); // (K, C_out)
                    if input_grad {
                        let w_t = MatRef::row_major(w, g.c_out, k).t();
                        sgemm_with(w_t, dy_mat, col, false, inner); // (K, nb*P)
                        col2im(g, col, nbc, &mut dx_run[c0 * g.c_in * hw..], inner);
                    }
                }
            });
            (dw_t, db_run)
        })
        .collect();
    write_partials(&partials, dw, db);
}

/// `y[n, o] = b[o] + sum_{c, ky, kx} W[o, c, ky, kx] * x[n, c, s*i + ky - pad, s*j + kx - pad]`:
/// a 2-D convolution (cross-correlation, as in PyTorch) of `x` (N, C_in, H, W) with `weight`
/// (C_out, C_in, kh, kw) and `bias` (C_out,), zero padding, f32, differentiable in all three.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv2d { stride, pad },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_by_one_convolutions_take_the_pointwise_path() {
        for (x, c_out) in [([3, 6, 8, 8], 2), ([1, 7, 5, 5], 3), ([2, 4, 4, 4], 4)] {
            let g = Geometry::new(&x, &[c_out, x[1], 1, 1], 1, Padding::same(0)).unwrap();
            assert!(g.path() == Path::Pointwise, "{x:?} -> {c_out}");
        }
        // With padding or a stride, a 1x1 kernel reads zeros or skips pixels: not pointwise.
        let g = Geometry::new(&[1, 3, 6, 6], &[2, 3, 1, 1], 2, Padding::same(0)).unwrap();
        assert!(g.path() != Path::Pointwise);
        let g = Geometry::new(&[1, 3, 6, 6], &[2, 3, 1, 1], 1, Padding::same(1)).unwrap();
        assert!(g.path() != Path::Pointwise);
    }

    /// The shapes `tests/conv.rs` means to run through the Winograd path take it with 1 to 4
    /// threads (which path a convolution takes depends on its images per thread).
    #[test]
    fn winograd_test_shapes_take_the_winograd_path() {
        let shapes = [
            ([24, 16, 4, 6], 20),
            ([1, 24, 8, 16], 16),
            ([2, 16, 16, 16], 32),
            ([1, 16, 12, 12], 16),
            ([17, 32, 16, 16], 32),
            ([9, 64, 32, 32], 32),
            ([1, 16, 8, 16], 17),
        ];
        for threads in 1..=4 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for (x, c_out) in shapes {
                    let w = [c_out, x[1], 3, 3];
                    let g = Geometry::new(&x, &w, 1, Padding::same(1)).unwrap();
                    let winograd = super::super::conv_winograd::applies(&g);
                    assert!(winograd, "{x:?} -> {c_out} with {threads} threads");
                }
            });
        }
    }
}
