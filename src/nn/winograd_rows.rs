//! The tile transforms of [`super::conv_winograd`], all the tiles of a chunk at a time, so that
//! each step is one loop over a long run of floats (vectorised, and compiled for AVX-512 and
//! AVX2 as well as the baseline, like the other element-wise kernels).
//!
//! A tile's 4 columns are the padded image's columns 2tx..2tx+4. With each image row split
//! into its even and its odd pixels (W/2 each) and the rows stored even rows first, the same
//! column of every tile of the chunk is one contiguous run: columns 1 and 2 are the even and
//! the odd pixel tx, and columns 0 and 3 are the same runs read one tile back and one tile on,
//! with the tiles at the image's left and right edges (whose column 0 or 3 is padding) set
//! apart. Every step then runs once over all the tiles: on a 32x32 image a row of tiles is
//! 16 floats, and loops of 16 floats ran 4 floats at a time (LLVM unrolls its vector loop to
//! 64 and leaves short rows to a narrow remainder loop).
//!
//! The images of a chunk are interleaved: every pixel becomes `lanes` floats, one per image,
//! and a row of tiles of all the images is one slice of W/2 * lanes floats. (On the UNet's 8x8
//! and 4x4 levels one image's row holds 4 or 2 tiles, too few to pay; a chunk at 32x32 holds a
//! single image, `lanes` = 1.) The tiles are numbered accordingly, `t = (ty * W/2 + tx) * lanes + n` for tile
//! (ty, tx) of the chunk's image n; the products of `conv_winograd` do not mind the order.
//!
//! Every transform applies its 1-D map down the columns first, then along the rows, in the same
//! order as the per-tile `two_d` of `conv_winograd`, so the results are the same bits.

use std::mem::MaybeUninit;

use super::conv::{deinterleave, interleave};
use super::fastmath::{add_assign, wide_kernels};

/// `out[x] = f(r0[x], r1[x], r2[x], r3[x])`
#[inline(always)]
fn map4(out: &mut [f32], r: [&[f32]; 4], f: impl Fn(f32, f32, f32, f32) -> f32) {
    let rows = r[0].iter().zip(r[1]).zip(r[2].iter().zip(r[3]));
    for (o, ((a, b), (c, d))) in out.iter_mut().zip(rows) {
        *o = f(*a, *b, *c, *d);
    }
}

/// `out[x] = f(a[x], b[x])`
#[inline(always)]
fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (o, (a, b)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = f(*a, *b);
    }
}

/// Row k of `B^T d` for the four rows `r` of a band of tiles (one of E or O).
#[inline(always)]
fn bt_rows(k: usize, r: [&[f32]; 4], out: &mut [f32]) {
    match k {
        0 => map4(out, r, |d0, _, d2, _| d0 - d2),
        1 => map4(out, r, |_, d1, d2, _| d1 + d2),
        2 => map4(out, r, |_, d1, d2, _| d2 - d1),
        _ => map4(out, r, |_, d1, _, d3| d1 - d3),
    }
}

/// Row k of `B v`, the adjoint, for the four rows `r`.
#[inline(always)]
fn b_rows(k: usize, r: [&[f32]; 4], out: &mut [f32]) {
    match k {
        0 => map4(out, r, |v0, _, _, _| v0),
        1 => map4(out, r, |_, v1, v2, v3| v1 - v2 + v3),
        2 => map4(out, r, |v0, v1, v2, _| v1 + v2 - v0),
        _ => map4(out, r, |_, _, _, v3| -v3),
    }
}

/// `even[x * lanes] = line[2x]`, `odd[x * lanes] = line[2x + 1]`: a row's even and odd
/// pixels into one image's lanes. (With one image, the column path's [`deinterleave`]:
/// `step_by` costs a 32x32 convolution 5-10%.)
#[inline(always)]
fn split_pairs(line: &[f32], even: &mut [f32], odd: &mut [f32], lanes: usize) {
    if lanes == 1 {
        let half = line.len() / 2;
        deinterleave(&mut even[..half], &mut odd[..half], &line[..2 * half]);
        return;
    }
    let pairs = line.chunks_exact(2);
    let lanes = even
        .iter_mut()
        .step_by(lanes)
        .zip(odd.iter_mut().step_by(lanes));
    for (pair, (e, o)) in pairs.zip(lanes) {
        (*e, *o) = (pair[0], pair[1]);
    }
}

/// `line[2x] = put(even[x * lanes])`, `line[2x + 1] = put(odd[x * lanes])`, the inverse of
/// [`split_pairs`].
#[inline(always)]
fn merge_pairs<T>(line: &mut [T], even: &[f32], odd: &[f32], lanes: usize, put: impl Fn(f32) -> T) {
    if lanes == 1 {
        let half = line.len() / 2;
        interleave(&mut line[..2 * half], &even[..half], &odd[..half], put);
        return;
    }
    let pairs = line.chunks_exact_mut(2);
    let lanes = even.iter().step_by(lanes).zip(odd.iter().step_by(lanes));
    for (pair, (e, o)) in pairs.zip(lanes) {
        pair[0] = put(*e);
        pair[1] = put(*o);
    }
}

/// Splits `lanes` image planes of `h` x `w` (`stride` floats apart in `x`) into their even
/// and odd pixels, interleaved: `ev` and `od` are (H + 2, W/2, lanes) with image row iy at
/// padded row r = iy + 1, stored at row `r / 2` if r is even and `H/2 + 1 + r / 2` if odd
/// (even rows first); the two padding rows are left as they are (zero). With the rows so
/// ordered, rows 2ty + i of every row of tiles ty form one contiguous run (see
/// [`input_channel`]).
#[inline(always)]
fn split_rows(
    x: &[f32],
    stride: usize,
    lanes: usize,
    (h, w): (usize, usize),
    ev: &mut [f32],
    od: &mut [f32],
) {
    let row = (w / 2) * lanes;
    let odd_rows = (h / 2 + 1) * row;
    for n in 0..lanes {
        for (iy, line) in x[n * stride..][..h * w].chunks_exact(w).enumerate() {
            let r = iy + 1;
            let at = if r % 2 == 0 { 0 } else { odd_rows } + r / 2 * row + n;
            split_pairs(line, &mut ev[at..], &mut od[at..], lanes);
        }
    }
}

/// `images` image planes of `h` x `w`, `stride` floats apart (one channel of a chunk of NCHW
/// images).
#[derive(Clone, Copy)]
pub(super) struct Planes {
    pub stride: usize,
    pub images: usize,
    pub h: usize,
    pub w: usize,
}

/// Floats of scratch that [`input_channel`] needs.
pub(super) fn input_scratch(h: usize, w: usize, lanes: usize) -> usize {
    let row = (w / 2) * lanes;
    2 * (h + 2) * row + 8 * (h / 2) * row
}

/// Floats of scratch that [`output_channel`] needs.
pub(super) fn output_scratch(h: usize, w: usize, lanes: usize) -> usize {
    3 * h * w * lanes
}

/// Floats of scratch that [`output_grad_channel`] needs.
pub(super) fn output_grad_scratch(h: usize, w: usize, lanes: usize) -> usize {
    6 * (h / 2) * (w / 2) * lanes
}

/// Floats of scratch that [`input_grad_channel`] needs.
pub(super) fn input_grad_scratch(h: usize, w: usize, lanes: usize) -> usize {
    let row = (w / 2) * lanes;
    2 * (h + 2) * row + 8 * (h / 2) * row
}

wide_kernels! {
    /// `V = B^T d B` for every tile of one channel of a chunk of images (`planes` in `x`):
    /// tile t of row xi goes to `v[xi * ts + t]`. `scratch` holds [`input_scratch`] floats.
    ///
    /// Column j of tile tx is padded column 2tx + j: the odd pixel tx - 1 (zero for tx = 0),
    /// the even pixel tx, the odd pixel tx, the even pixel tx + 1 (zero for the last tile).
    /// Both steps run over all the tiles of the chunk at once, the shifted columns as the same
    /// rows read `lanes` floats on, with the tiles at the image's edges set apart.
    pub(super) fn input_channel(
        x: &[f32],
        planes: Planes,
        v: &mut [f32],
        ts: usize,
        scratch: &mut [f32],
    ) {
        let Planes { stride, images: lanes, h, w } = planes;
        let (th, row) = (h / 2, (w / 2) * lanes);
        let (plane, band) = ((h + 2) * row, th * row);
        let (ev, rest) = scratch.split_at_mut(plane);
        let (od, rest) = rest.split_at_mut(plane);
        let (cev, rest) = rest.split_at_mut(4 * band);
        let cod = &mut rest[..4 * band];
        // Only the padding rows (padded rows 0 and H + 1) need zeros; the rest is overwritten.
        let odd = (th + 1) * row;
        for pad in [0, odd + th * row] {
            ev[pad..][..row].fill(0.0);
            od[pad..][..row].fill(0.0);
        }
        split_rows(x, stride, lanes, (h, w), ev, od);
        // Padded rows 2ty, 2ty + 1, 2ty + 2, 2ty + 3 for every ty at once (even rows first).
        let starts = [0, odd, row, odd + row];
        // Row k of B^T d, down the columns of every tile at once: cev[k] for the even pixels,
        // cod[k] for the odd ones.
        for k in 0..4 {
            let er = starts.map(|s| &ev[s..][..band]);
            let or = starts.map(|s| &od[s..][..band]);
            bt_rows(k, er, &mut cev[k * band..][..band]);
            bt_rows(k, or, &mut cod[k * band..][..band]);
        }
        for k in 0..4 {
            // Columns 1 and 2 of every tile; column 0 is c2 one tile back, column 3 is c1 one
            // tile on.
            let (c1, c2) = (&cev[k * band..][..band], &cod[k * band..][..band]);
            let out = |l: usize| (4 * k + l) * ts;
            let v0 = &mut v[out(0)..][..band];
            map2(&mut v0[lanes..], &c2[..band - lanes], &c2[lanes..], |c0, c2| c0 - c2);
            for r in (0..band).step_by(row) {
                // Tile tx = 0: its column 0 is padding.
                map2(&mut v0[r..][..lanes], &c2[r..], &c2[r..], |_, c2| 0.0 - c2);
            }
            map2(&mut v[out(1)..][..band], c1, c2, |c1, c2| c1 + c2);
            map2(&mut v[out(2)..][..band], c2, c1, |c2, c1| c2 - c1);
            let v3 = &mut v[out(3)..][..band];
            map2(&mut v3[..band - lanes], &c1[..band - lanes], &c1[lanes..], |c1, c3| c1 - c3);
            for r in (row - lanes..band).step_by(row) {
                // The last tile of a row: its column 3 is padding.
                map2(&mut v3[r..][..lanes], &c1[r..], &c1[r..], |c1, _| c1 - 0.0);
            }
        }
    }

    /// `y = A^T M A + bias` for `lanes` image planes of one output channel, image n's at
    /// `y[n * stride..]`: `m` holds that channel's 16 rows of tiles (of the `lanes` images,
    /// interleaved). Both steps run over all the tiles at once, then each row
    /// of tiles is interleaved into its two rows of pixels. `scratch` holds [`output_scratch`]
    /// floats.
    pub(super) fn output_channel(
        m: &[&[f32]; 16],
        (h, w, lanes): (usize, usize, usize),
        bias: f32,
        y: &mut [MaybeUninit<f32>],
        stride: usize,
        scratch: &mut [f32],
    ) {
        let (th, tw) = (h / 2, w / 2);
        let nt = th * tw * lanes;
        let (u, rest) = scratch.split_at_mut(8 * nt);
        let (ye, yo) = rest.split_at_mut(2 * nt);
        let yo = &mut yo[..2 * nt];
        // u[4i + j] = (A^T m)[i] down column j.
        for (ij, uij) in u.chunks_exact_mut(nt).enumerate() {
            let (i, j) = (ij / 4, ij % 4);
            let col = [&m[j][..nt], &m[4 + j][..nt], &m[8 + j][..nt], &m[12 + j][..nt]];
            if i == 0 {
                map4(uij, col, |m0, m1, m2, _| m0 + m1 + m2);
            } else {
                map4(uij, col, |_, m1, m2, m3| m1 - m2 - m3);
            }
        }
        // Row i of (A^T m) A, plus the bias: pixel columns 2tx (ye) and 2tx + 1 (yo).
        for i in 0..2 {
            let ui: [&[f32]; 4] = std::array::from_fn(|j| &u[(4 * i + j) * nt..][..nt]);
            map4(&mut ye[i * nt..][..nt], ui, |u0, u1, u2, _| u0 + u1 + u2 + bias);
            map4(&mut yo[i * nt..][..nt], ui, |_, u1, u2, u3| u1 - u2 - u3 + bias);
        }
        for n in 0..lanes {
            let plane = &mut y[n * stride..][..h * w];
            for (r, line) in plane.chunks_exact_mut(w).enumerate() {
                let at = (r % 2) * nt + (r / 2) * tw * lanes + n;
                merge_pairs(line, &ye[at..], &yo[at..], lanes, MaybeUninit::new);
            }
        }
    }

    /// `dM = A dY A^T` for every tile of one output channel of a chunk of images (`planes` in
    /// `dy`): tile t of row xi goes to `dm[xi * ts + t]`. Both steps run over all the tiles
    /// at once: rows 2ty and 2ty + 1 of every row of tiles are two contiguous runs of the
    /// even and odd pixels, even rows first. `scratch` holds [`output_grad_scratch`] floats.
    pub(super) fn output_grad_channel(
        dy: &[f32],
        planes: Planes,
        dm: &mut [f32],
        ts: usize,
        scratch: &mut [f32],
    ) {
        let Planes { stride, images: lanes, h, w } = planes;
        let (row, band) = ((w / 2) * lanes, (h / 2) * (w / 2) * lanes);
        let (ev, rest) = scratch.split_at_mut(2 * band);
        let (od, rest) = rest.split_at_mut(2 * band);
        let (c0, c1) = rest.split_at_mut(band);
        let c1 = &mut c1[..band];
        for n in 0..lanes {
            for (r, line) in dy[n * stride..][..h * w].chunks_exact(w).enumerate() {
                let at = (r % 2) * band + (r / 2) * row + n;
                split_pairs(line, &mut ev[at..], &mut od[at..], lanes);
            }
        }
        let (e0, e1) = ev.split_at(band);
        let (o0, o1) = od.split_at(band);
        for k in 0..4 {
            // Row k of A d, down column 0 (even) and column 1 (odd); row 0 is row 0 of d.
            for (c, (d0, d1)) in [(&mut *c0, (e0, e1)), (&mut *c1, (o0, o1))] {
                match k {
                    0 => {}
                    1 => map2(c, d0, d1, |a, b| a + b),
                    2 => map2(c, d0, d1, |a, b| a - b),
                    _ => map2(c, d1, d1, |_, b| -b),
                }
            }
            let (c0, c1): (&[f32], &[f32]) = if k == 0 { (e0, o0) } else { (c0, c1) };
            let at = |l: usize| (4 * k + l) * ts;
            dm[at(0)..][..band].copy_from_slice(c0);
            map2(&mut dm[at(1)..][..band], c0, c1, |a, b| a + b);
            map2(&mut dm[at(2)..][..band], c0, c1, |a, b| a - b);
            map2(&mut dm[at(3)..][..band], c1, c1, |_, b| -b);
        }
    }

    /// `dx = B dV B^T` for `lanes` image planes of one input channel, image n's at
    /// `dx[n * stride..]`: `dv` holds that channel's 16 rows of tiles (of the `lanes` images,
    /// interleaved). Neighbouring tiles overlap by two pixels; each padded pixel sums its tiles'
    /// values in the order (ty, tx), as a tile-by-tile sum would. `scratch` holds
    /// [`input_grad_scratch`] floats.
    ///
    /// Both steps run over all the tiles of the chunk at once. Row k of every tile lands on
    /// padded row 2ty + k, kept with the other padded rows of its parity (k = 2 one row of
    /// tiles on from k = 0), and column l on padded column 2tx + l: the odd pixel tx - 1 + l/2
    /// for l = 0, 2, the even pixel tx + (l - 1)/2 for l = 1, 3, so columns 0 and 3 are
    /// added `lanes` floats on or back, with the padding columns they hold at the image's
    /// edges set to zero first.
    pub(super) fn input_grad_channel(
        dv: &[&[f32]; 16],
        (h, w, lanes): (usize, usize, usize),
        dx: &mut [MaybeUninit<f32>],
        stride: usize,
        scratch: &mut [f32],
    ) {
        let (th, row) = (h / 2, (w / 2) * lanes);
        let (band, rows) = (th * row, (th + 1) * row);
        // Padded rows of one parity, (th + 1, W/2, lanes) each: even and odd pixels of the
        // even rows, then of the odd rows.
        let (acc, rest) = scratch.split_at_mut(4 * rows);
        let (c, d) = rest.split_at_mut(4 * band);
        let d = &mut d[..4 * band];
        acc.fill(0.0);
        // Rows k = 2 and 3 first: padded row 2ty + 2 is row 2(ty + 1) + 0, whose tiles come
        // later in the (ty, tx) order.
        for k in [2, 0, 3, 1] {
            let dv = |xi: usize| &dv[xi][..band];
            // c[j] = (B v)[k] down column j, then d[l] = (B c)[l] along the row.
            for (j, cj) in c.chunks_exact_mut(band).enumerate() {
                b_rows(k, [dv(j), dv(4 + j), dv(8 + j), dv(12 + j)], cj);
            }
            let cj: [&[f32]; 4] = std::array::from_fn(|j| &c[j * band..][..band]);
            for (l, dl) in d.chunks_exact_mut(band).enumerate() {
                b_rows(l, cj, dl);
            }
            let (d0, rest) = d.split_at_mut(band);
            let (d1, rest) = rest.split_at_mut(band);
            let (d2, d3) = rest.split_at_mut(band);
            for r in (0..band).step_by(row) {
                // Padded column 0 (tile 0's column 0) and W + 1 (the last tile's column 3).
                d0[r..][..lanes].fill(0.0);
                d3[r + row - lanes..][..lanes].fill(0.0);
            }
            let parity = &mut acc[(k % 2) * 2 * rows..][..2 * rows];
            let (even, odd) = parity.split_at_mut(rows);
            let at = (k / 2) * row;
            let (even, odd) = (&mut even[at..][..band], &mut odd[at..][..band]);
            // Odd pixel i: column 2 of tile i, then column 0 of tile i + 1; even pixel i:
            // column 3 of tile i - 1, then column 1 of tile i.
            add_assign(odd, d2);
            add_assign(&mut odd[..band - lanes], &d0[lanes..]);
            add_assign(&mut even[lanes..], &d3[..band - lanes]);
            add_assign(even, d1);
        }
        // Image row iy is padded row iy + 1.
        for n in 0..lanes {
            let plane = &mut dx[n * stride..][..h * w];
            for (iy, line) in plane.chunks_exact_mut(w).enumerate() {
                let r = iy + 1;
                let at = (r % 2) * 2 * rows + (r / 2) * row + n;
                let (even, odd) = (&acc[at..], &acc[rows + at..]);
                merge_pairs(line, even, odd, lanes, MaybeUninit::new);
            }
        }
    }
}
