//! The tile transforms of [`super::conv_winograd`], many tiles at a time, so that each step is
//! one loop over a row of tiles (vectorised, and compiled for AVX-512 and AVX2 as well as the
//! baseline, like the other element-wise kernels).
//!
//! A tile's 4 columns are the padded image's columns 2tx..2tx+4: with the padded rows split
//! into their even columns `E` and odd columns `O` (W/2 + 1 each), column j of every tile in a
//! row is one contiguous slice, `E[tx]`, `O[tx]`, `E[tx + 1]`, `O[tx + 1]` for j = 0..4.
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
use super::fastmath::wide_kernels;

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

/// Splits `lanes` image planes of `h` x `w` (`stride` floats apart in `x`) into their padded
/// even and odd columns, interleaved, each stored with its even rows first: `e` and `o` are
/// (H + 2, W/2 + 1, lanes) with padded row `r` at row `r / 2` if r is even and
/// `H/2 + 1 + r / 2` if odd, their borders zero; image row iy becomes padded row iy + 1, whose
/// column 2x + 1 is pixel 2x (odd, `o[x]`) and column 2x + 2 is pixel 2x + 1 (even,
/// `e[x + 1]`). With the rows so ordered, rows 2ty + i of every row of tiles ty form one
/// contiguous run (see [`input_channel`]).
#[inline(always)]
fn split_columns(
    x: &[f32],
    stride: usize,
    lanes: usize,
    (h, w): (usize, usize),
    e: &mut [f32],
    o: &mut [f32],
) {
    let half = (w / 2 + 1) * lanes;
    let odd_rows = (h / 2 + 1) * half;
    for n in 0..lanes {
        for (iy, line) in x[n * stride..][..h * w].chunks_exact(w).enumerate() {
            let r = iy + 1;
            let at = if r % 2 == 0 { 0 } else { odd_rows } + r / 2 * half + n;
            let (er, or) = (
                &mut e[at + lanes..][..half - lanes],
                &mut o[at..][..half - lanes],
            );
            split_pairs(line, or, er, lanes);
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
    let half = (w / 2 + 1) * lanes;
    2 * (h + 2) * half + 8 * (h / 2) * half
}

/// Floats of scratch that [`output_channel`] needs.
pub(super) fn output_scratch(h: usize, w: usize, lanes: usize) -> usize {
    3 * h * w * lanes
}

/// Floats of scratch that [`output_grad_channel`] needs.
pub(super) fn output_grad_scratch(w: usize, lanes: usize) -> usize {
    3 * w * lanes
}

/// Floats of scratch that [`input_grad_channel`] needs.
pub(super) fn input_grad_scratch(h: usize, w: usize, lanes: usize) -> usize {
    2 * (h + 2) * (w / 2 + 1) * lanes + 4 * w * lanes
}

wide_kernels! {
    /// `V = B^T d B` for every tile of one channel of a chunk of images (`planes` in `x`):
    /// tile t of row xi goes to `v[xi * ts + t]`. `scratch` holds [`input_scratch`] floats.
    pub(super) fn input_channel(
        x: &[f32],
        planes: Planes,
        v: &mut [f32],
        ts: usize,
        scratch: &mut [f32],
    ) {
        let Planes { stride, images: lanes, h, w } = planes;
        let (th, half, row) = (h / 2, (w / 2 + 1) * lanes, (w / 2) * lanes);
        let (plane, band) = ((h + 2) * half, th * half);
        let (e, rest) = scratch.split_at_mut(plane);
        let (o, rest) = rest.split_at_mut(plane);
        let (ce, rest) = rest.split_at_mut(4 * band);
        let co = &mut rest[..4 * band];
        e.fill(0.0);
        o.fill(0.0);
        // Padded rows 2ty, 2ty + 1, 2ty + 2, 2ty + 3 for every ty at once (even rows first).
        let odd = (th + 1) * half;
        let starts = [0, odd, half, odd + half];
        split_columns(x, stride, lanes, (h, w), e, o);
        // Row k of B^T d, down the columns of every tile at once: column j = 0, 2 of tile
        // (ty, tx) is ce[k][ty][tx], ce[k][ty][tx + 1]; j = 1, 3 likewise in co (each entry
        // `lanes` floats).
        for k in 0..4 {
            let er = starts.map(|s| &e[s..][..band]);
            let or = starts.map(|s| &o[s..][..band]);
            bt_rows(k, er, &mut ce[k * band..][..band]);
            bt_rows(k, or, &mut co[k * band..][..band]);
        }
        for ty in 0..th {
            let t0 = ty * row;
            for k in 0..4 {
                let (ce, co) = (&ce[k * band + ty * half..], &co[k * band + ty * half..]);
                let (c0, c2) = (&ce[..row], &ce[lanes..half]);
                let (c1, c3) = (&co[..row], &co[lanes..half]);
                let out = |l: usize| (4 * k + l) * ts + t0;
                map2(&mut v[out(0)..][..row], c0, c2, |c0, c2| c0 - c2);
                map2(&mut v[out(1)..][..row], c1, c2, |c1, c2| c1 + c2);
                map2(&mut v[out(2)..][..row], c2, c1, |c2, c1| c2 - c1);
                map2(&mut v[out(3)..][..row], c1, c3, |c1, c3| c1 - c3);
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
    /// `dy`): tile t of row xi goes to `dm[xi * ts + t]`. `scratch` holds
    /// [`output_grad_scratch`] floats.
    pub(super) fn output_grad_channel(
        dy: &[f32],
        planes: Planes,
        dm: &mut [f32],
        ts: usize,
        scratch: &mut [f32],
    ) {
        let Planes { stride, images: lanes, h, w } = planes;
        let (th, row) = (h / 2, (w / 2) * lanes);
        let (ye, rest) = scratch.split_at_mut(2 * row);
        let (yo, rest) = rest.split_at_mut(2 * row);
        let (c0, c1) = rest.split_at_mut(row);
        let c1 = &mut c1[..row];
        for ty in 0..th {
            let t0 = ty * row;
            // Even and odd columns of the tile rows 2ty and 2ty + 1, images interleaved.
            for n in 0..lanes {
                let lines = &dy[n * stride + 2 * ty * w..][..2 * w];
                for (i, line) in lines.chunks_exact(w).enumerate() {
                    let at = i * row + n;
                    split_pairs(line, &mut ye[at..], &mut yo[at..], lanes);
                }
            }
            let (e0, e1) = ye.split_at(row);
            let (o0, o1) = yo.split_at(row);
            for k in 0..4 {
                // Row k of A d, down column 0 (even) and column 1 (odd).
                for (c, (d0, d1)) in [(&mut *c0, (e0, e1)), (&mut *c1, (o0, o1))] {
                    match k {
                        0 => c.copy_from_slice(d0),
                        1 => map2(c, d0, d1, |a, b| a + b),
                        2 => map2(c, d0, d1, |a, b| a - b),
                        _ => map2(c, d1, d1, |_, b| -b),
                    }
                }
                let at = |l: usize| (4 * k + l) * ts + t0;
                dm[at(0)..][..row].copy_from_slice(c0);
                map2(&mut dm[at(1)..][..row], c0, c1, |a, b| a + b);
                map2(&mut dm[at(2)..][..row], c0, c1, |a, b| a - b);
                map2(&mut dm[at(3)..][..row], c1, c1, |_, b| -b);
            }
        }
    }

    /// `dx = B dV B^T` for `lanes` image planes of one input channel, image n's at
    /// `dx[n * stride..]`: the tiles are added onto padded planes in the order (ty, tx)
    /// (neighbours overlap by two pixels), whose insides are written to dx. `dv` holds that
    /// channel's 16 rows of tiles (of the `lanes` images, interleaved). `scratch` holds
    /// [`input_grad_scratch`] floats.
    pub(super) fn input_grad_channel(
        dv: &[&[f32]; 16],
        (h, w, lanes): (usize, usize, usize),
        dx: &mut [MaybeUninit<f32>],
        stride: usize,
        scratch: &mut [f32],
    ) {
        let (th, half, row) = (h / 2, (w / 2 + 1) * lanes, (w / 2) * lanes);
        let padded = (h + 2) * half;
        let (e, rest) = scratch.split_at_mut(padded);
        let (o, rest) = rest.split_at_mut(padded);
        let (c, d) = rest.split_at_mut(4 * row);
        let d = &mut d[..4 * row];
        e.fill(0.0);
        o.fill(0.0);
        for ty in 0..th {
            let rows: [&[f32]; 16] = std::array::from_fn(|xi| &dv[xi][ty * row..][..row]);
            for k in 0..4 {
                // c[j] = (B v)[k] down column j, then d[l] = (B c)[l] along the row.
                for (j, cj) in c.chunks_exact_mut(row).enumerate() {
                    b_rows(k, [rows[j], rows[4 + j], rows[8 + j], rows[12 + j]], cj);
                }
                let cj: [&[f32]; 4] = std::array::from_fn(|j| &c[j * row..][..row]);
                for (l, dl) in d.chunks_exact_mut(row).enumerate() {
                    b_rows(l, cj, dl);
                }
                // Padded row 2ty + k: columns 2tx + 2, 2tx + 3 of tile tx are columns 2tx',
                // 2tx' + 1 of tile tx' = tx + 1, which a tile-by-tile sum adds first.
                let r = (2 * ty + k) * half;
                let (er, or) = (&mut e[r..r + half], &mut o[r..r + half]);
                let dl = |l: usize| &d[l * row..][..row];
                er[lanes..].iter_mut().zip(dl(2)).for_each(|(p, v)| *p += v);
                or[lanes..].iter_mut().zip(dl(3)).for_each(|(p, v)| *p += v);
                er[..row].iter_mut().zip(dl(0)).for_each(|(p, v)| *p += v);
                or[..row].iter_mut().zip(dl(1)).for_each(|(p, v)| *p += v);
            }
        }
        // Pixel (iy, 2x) is padded (iy + 1, 2x + 1), an odd column; (iy, 2x + 1) an even one.
        for n in 0..lanes {
            let plane = &mut dx[n * stride..][..h * w];
            for (iy, line) in plane.chunks_exact_mut(w).enumerate() {
                let at = (iy + 1) * half + n;
                merge_pairs(line, &o[at..], &e[at + lanes..], lanes, MaybeUninit::new);
            }
        }
    }
}
