//! The tile transforms of [`super::conv_winograd`], a whole row of tiles at a time, so that
//! each step is one loop over the tiles of the row (vectorised, and compiled for AVX-512 and
//! AVX2 as well as the baseline, like the other element-wise kernels).
//!
//! A tile's 4 columns are the padded image's columns 2tx..2tx+4: with the padded rows split
//! into their even columns `E` and odd columns `O` (W/2 + 1 each), column j of every tile in a
//! row is one contiguous slice, `E[tx]`, `O[tx]`, `E[tx + 1]`, `O[tx + 1]` for j = 0..4. Every
//! transform applies its 1-D map down the columns first, then along the rows, in the same order
//! as the per-tile `two_d` it replaces, so the results are the same bits.

use std::mem::MaybeUninit;

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

/// Splits a padded plane's even and odd columns, each stored with its even rows first:
/// `e` and `o` are (H + 2, W/2 + 1) with padded row `r` at row `r / 2` if r is even and
/// `H/2 + 1 + r / 2` if odd, their borders zero; image row iy (W floats) becomes padded row
/// iy + 1, whose column 2x + 1 is pixel 2x (odd, `o[x]`) and column 2x + 2 is pixel 2x + 1
/// (even, `e[x + 1]`). With the rows so ordered, rows 2ty + i of every row of tiles ty form one
/// contiguous run (see [`input_channel`]).
#[inline(always)]
fn split_columns(plane: &[f32], w: usize, e: &mut [f32], o: &mut [f32]) {
    let half = w / 2 + 1;
    let odd_rows = (plane.len() / w / 2 + 1) * half;
    for (iy, line) in plane.chunks_exact(w).enumerate() {
        let r = iy + 1;
        let at = if r % 2 == 0 { 0 } else { odd_rows } + r / 2 * half;
        let (er, or) = (&mut e[at..][1..half], &mut o[at..][..half - 1]);
        for (pair, (ov, ev)) in line.chunks_exact(2).zip(or.iter_mut().zip(er)) {
            *ov = pair[0];
            *ev = pair[1];
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

wide_kernels! {
    /// `V = B^T d B` for every tile of one channel of a chunk of images (`planes` in `x`): tile t = (n * H/2 + ty) * W/2 + tx of row xi goes to `v[xi * ts + t]`.
    /// `scratch` holds at least 2 (H + 2)(W/2 + 1) + 8 (H/2)(W/2 + 1) floats.
    pub(super) fn input_channel(
        x: &[f32],
        planes: Planes,
        v: &mut [f32],
        ts: usize,
        scratch: &mut [f32],
    ) {
        let Planes { stride, images, h, w } = planes;
        let (th, tw, half) = (h / 2, w / 2, w / 2 + 1);
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
        for n in 0..images {
            split_columns(&x[n * stride..][..h * w], w, e, o);
            // Row k of B^T d, down the columns of every tile of the image at once: column
            // j = 0, 2 of tile (ty, tx) is ce[k][ty][tx], ce[k][ty][tx + 1]; j = 1, 3 likewise
            // in co.
            for k in 0..4 {
                let er = starts.map(|s| &e[s..][..band]);
                let or = starts.map(|s| &o[s..][..band]);
                bt_rows(k, er, &mut ce[k * band..][..band]);
                bt_rows(k, or, &mut co[k * band..][..band]);
            }
            for ty in 0..th {
                let t0 = (n * th + ty) * tw;
                for k in 0..4 {
                    let (ce, co) = (&ce[k * band + ty * half..], &co[k * band + ty * half..]);
                    let (c0, c2) = (&ce[..tw], &ce[1..half]);
                    let (c1, c3) = (&co[..tw], &co[1..half]);
                    let row = |l: usize| 4 * k + l;
                    let out = |l: usize| (row(l) * ts + t0, tw);
                    let (a, len) = out(0);
                    map2(&mut v[a..a + len], c0, c2, |c0, c2| c0 - c2);
                    let (a, len) = out(1);
                    map2(&mut v[a..a + len], c1, c2, |c1, c2| c1 + c2);
                    let (a, len) = out(2);
                    map2(&mut v[a..a + len], c2, c1, |c2, c1| c2 - c1);
                    let (a, len) = out(3);
                    map2(&mut v[a..a + len], c1, c3, |c1, c3| c1 - c3);
                }
            }
        }
    }

    /// `y = A^T M A + bias` for the tiles of image n's plane of one output channel: `m` holds
    /// that channel's 16 rows of tiles, each starting at its image's first tile. Both steps run
    /// over all of the plane's tiles at once (one loop of H/2 * W/2 each), then each row of
    /// tiles is interleaved into its two rows of pixels. `scratch` holds at least 3 H W floats.
    pub(super) fn output_plane(
        m: &[&[f32]; 16],
        h: usize,
        w: usize,
        bias: f32,
        plane: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        let (th, tw) = (h / 2, w / 2);
        let nt = th * tw;
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
        for ty in 0..th {
            for i in 0..2 {
                let (e, o) = (&ye[i * nt + ty * tw..][..tw], &yo[i * nt + ty * tw..][..tw]);
                let line = &mut plane[(2 * ty + i) * w..][..w];
                for (pair, (e, o)) in line.chunks_exact_mut(2).zip(e.iter().zip(o)) {
                    pair[0] = MaybeUninit::new(*e);
                    pair[1] = MaybeUninit::new(*o);
                }
            }
        }
    }

    /// `dM = A dY A^T` for every tile of one output channel of a chunk of images (`planes` in
    /// `dy`): tile t of row xi goes to `dm[xi * ts + t]`. `scratch` holds
    /// at least 6 W/2 floats.
    pub(super) fn output_grad_channel(
        dy: &[f32],
        planes: Planes,
        dm: &mut [f32],
        ts: usize,
        scratch: &mut [f32],
    ) {
        let Planes { stride, images, h, w } = planes;
        let (th, tw) = (h / 2, w / 2);
        let (ye, rest) = scratch.split_at_mut(2 * tw);
        let (yo, rest) = rest.split_at_mut(2 * tw);
        let (c0, c1) = rest.split_at_mut(tw);
        let c1 = &mut c1[..tw];
        for n in 0..images {
            let plane = &dy[n * stride..][..h * w];
            for ty in 0..th {
                let t0 = (n * th + ty) * tw;
                // Even and odd columns of the tile rows 2ty and 2ty + 1.
                for (i, line) in plane[2 * ty * w..][..2 * w].chunks_exact(w).enumerate() {
                    let (e, o) = (&mut ye[i * tw..][..tw], &mut yo[i * tw..][..tw]);
                    for (pair, (e, o)) in line.chunks_exact(2).zip(e.iter_mut().zip(o)) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                }
                let (e0, e1) = ye.split_at(tw);
                let (o0, o1) = yo.split_at(tw);
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
                    dm[at(0)..at(0) + tw].copy_from_slice(c0);
                    map2(&mut dm[at(1)..at(1) + tw], c0, c1, |a, b| a + b);
                    map2(&mut dm[at(2)..at(2) + tw], c0, c1, |a, b| a - b);
                    map2(&mut dm[at(3)..at(3) + tw], c1, c1, |_, b| -b);
                }
            }
        }
    }

    /// `dx = B dV B^T` for the tiles of image n's plane of one input channel, the tiles added
    /// onto a padded plane in the order (ty, tx) (neighbours overlap by two pixels), whose
    /// inside is written to `plane`: `dv` holds that channel's 16 rows of tiles, each starting
    /// at its image's first tile. `scratch` holds at least 2 (H + 2)(W/2 + 1) + 8 W/2 floats.
    pub(super) fn input_grad_plane(
        dv: &[&[f32]; 16],
        h: usize,
        w: usize,
        plane: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (th, tw, half) = (h / 2, w / 2, w / 2 + 1);
        let padded = (h + 2) * half;
        let (e, rest) = scratch.split_at_mut(padded);
        let (o, rest) = rest.split_at_mut(padded);
        let (c, d) = rest.split_at_mut(4 * tw);
        let d = &mut d[..4 * tw];
        e.fill(0.0);
        o.fill(0.0);
        for ty in 0..th {
            let rows: [&[f32]; 16] = std::array::from_fn(|xi| &dv[xi][ty * tw..][..tw]);
            for k in 0..4 {
                // c[j] = (B v)[k] down column j, then d[l] = (B c)[l] along the row.
                for (j, cj) in c.chunks_exact_mut(tw).enumerate() {
                    b_rows(k, [rows[j], rows[4 + j], rows[8 + j], rows[12 + j]], cj);
                }
                let cj: [&[f32]; 4] = std::array::from_fn(|j| &c[j * tw..][..tw]);
                for (l, dl) in d.chunks_exact_mut(tw).enumerate() {
                    b_rows(l, cj, dl);
                }
                // Padded row 2ty + k: columns 2tx + 2, 2tx + 3 of tile tx are columns 2tx',
                // 2tx' + 1 of tile tx' = tx + 1, which a tile-by-tile sum adds first.
                let r = (2 * ty + k) * half;
                let (er, or) = (&mut e[r..r + half], &mut o[r..r + half]);
                let dl = |l: usize| &d[l * tw..][..tw];
                er[1..].iter_mut().zip(dl(2)).for_each(|(p, v)| *p += v);
                or[1..].iter_mut().zip(dl(3)).for_each(|(p, v)| *p += v);
                er[..tw].iter_mut().zip(dl(0)).for_each(|(p, v)| *p += v);
                or[..tw].iter_mut().zip(dl(1)).for_each(|(p, v)| *p += v);
            }
        }
        // Pixel (iy, 2x) is padded (iy + 1, 2x + 1), an odd column; (iy, 2x + 1) an even one.
        for (iy, line) in plane.chunks_exact_mut(w).enumerate() {
            let (er, or) = (&e[(iy + 1) * half..][1..half], &o[(iy + 1) * half..][..half - 1]);
            for (pair, (ov, ev)) in line.chunks_exact_mut(2).zip(or.iter().zip(er)) {
                pair[0] = *ov;
                pair[1] = *ev;
            }
        }
    }
}
