//! Attention for narrow heads (1, 2, 4, 8 or 16 channels: our UNets run 8 heads over 32 to 128
//! channels) with 16 queries side by side in the lanes of a vector.
//!
//! With 4 channels per head, `Q K^T` is a matrix product whose inner dimension is 4: a gemm
//! kernel, built for long inner loops, spends its time packing operands and storing the (N, T)
//! scores, which the softmax then reads back, and so on through the backward pass. Here the
//! work is arranged so that every operation is element-wise across 16 lanes, one lane per query:
//!
//! - **Forward.** Take 16 query rows (d vectors of 16), scaled by `scale log2(e)`. For each key
//!   j, `x_j = sum_c q_c k_jc` (k_jc one number, broadcast) is a vector of 16 scores in base 2;
//!   keep them (a (T, 16) buffer, in L1) and their maximum `m`. Then `e_j = 2^(x_j - m)` (which
//!   is `exp(scale (s_j - max s))` for the unscaled scores s) in place, their sum, and for each
//!   channel `o_c = sum_j e_j v_jc / sum_j e_j`. Nothing of size (N, T) is written.
//! - **Backward.** The same scores and exponentials again (recomputed, as FlashAttention does,
//!   rather than stored by the forward pass), then with `G = dL/dO`, `D = sum_c g_c o_c`
//!   (which equals `sum_j p_j dp_j`), `p_j = e_j / sum e`, `dp_j = sum_c g_c v_jc` and
//!   `ds_j = scale p_j (dp_j - D)`: `dq_c = sum_j ds_j k_jc`, lane by lane. dK and dV sum over
//!   queries, that is across lanes; for them P^T and dS^T are stored (T, N) and two matrix
//!   products with a long inner dimension give `dV = P^T G` and `dK = dS^T Q`. (Recomputing
//!   the probabilities with keys in lanes instead, as FlashAttention-2 does, measured slower:
//!   the second exponential costs more than the products.)
//!
//! All arithmetic is lane-wise in a fixed order, so the AVX-512, AVX2 and baseline builds
//! (`fastmath::wide_kernels`) give the same bits.

use super::fastmath::wide_kernels;
use super::gemm::{sgemm_serial_into, MatRef};

/// Queries handled together, one per lane.
const L: usize = 16;
type Lanes = [f32; L];

/// The head widths with a kernel here; other widths take the matrix-product path.
#[derive(Clone, Copy, Debug)]
pub(super) enum Width {
    D1,
    D2,
    D4,
    D8,
    D16,
}

impl Width {
    /// Channels per head.
    fn d(self) -> usize {
        match self {
            Width::D1 => 1,
            Width::D2 => 2,
            Width::D4 => 4,
            Width::D8 => 8,
            Width::D16 => 16,
        }
    }

    pub(super) fn of(d: usize) -> Option<Self> {
        Some(match d {
            1 => Width::D1,
            2 => Width::D2,
            4 => Width::D4,
            8 => Width::D8,
            16 => Width::D16,
            _ => return None,
        })
    }
}

/// Where a head sits in a (rows, C) block: channel `c` of row `i` is
/// `data[i * stride + col + c]`.
#[derive(Clone, Copy)]
pub(super) struct Head {
    pub stride: usize,
    pub col: usize,
}

/// The head's `D` channels of row `i`.
#[inline(always)]
fn row<const D: usize>(x: &[f32], h: Head, i: usize) -> [f32; D] {
    let mut r = [0f32; D];
    r.copy_from_slice(&x[i * h.stride + h.col..][..D]);
    r
}

/// Rows `start..start + 16` of a head as D vectors of lanes, `out[c][l]` = channel c of row
/// `start + l`; 0 for rows at or past `rows`.
#[inline(always)]
fn gather<const D: usize>(x: &[f32], h: Head, start: usize, rows: usize) -> [Lanes; D] {
    let mut out = [[0f32; L]; D];
    for (i, l) in (start..rows).zip(0..L) {
        for (oc, &v) in out.iter_mut().zip(&row::<D>(x, h, i)) {
            oc[l] = v;
        }
    }
    out
}

/// The inverse of [`gather`], for the rows before `rows`.
#[inline(always)]
fn scatter<const D: usize>(lanes: &[Lanes; D], x: &mut [f32], h: Head, start: usize, rows: usize) {
    for (i, l) in (start..rows).zip(0..L) {
        let r = &mut x[i * h.stride + h.col..][..D];
        for (v, lc) in r.iter_mut().zip(lanes) {
            *v = lc[l];
        }
    }
}

/// `2^d` for `d <= 0` (scores minus their maximum, in base 2): `d = n + f` with `n` an
/// integer and `|f| <= 1/2`, `2^f` by its Taylor polynomial of degree 6 (`(ln 2)^k / k!`,
/// relative error below 1.3e-7), `2^n` from the exponent bits; exactly 0 below 2^-126.
/// Cheaper than `fastmath::exp`: no multiplication into base 2 and no two-part reduction.
#[inline(always)]
fn exp2_nonpositive(d: f32) -> f32 {
    /// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let shifted = if d > -126.0 { d } else { -126.0 } + ROUND;
    let n = shifted - ROUND;
    let f = d - n;
    let p: f32 = 1.540_353e-4;
    let p = p.mul_add(f, 1.333_355_8e-3);
    let p = p.mul_add(f, 9.618_129e-3);
    let p = p.mul_add(f, 5.550_411e-2);
    let p = p.mul_add(f, 0.240_226_5);
    let p = p.mul_add(f, std::f32::consts::LN_2);
    let p = p.mul_add(f, 1.0);
    // n in [-126, 0]: n + 127 is a normal float's biased exponent.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_int.wrapping_add(127) << 23);
    if d < -126.0 {
        0.0
    } else {
        p * two_n
    }
}

/// `2^(x - m)` on each lane.
#[inline(always)]
fn exp2_lanes(x: &Lanes, m: &Lanes) -> Lanes {
    let mut e = [0f32; L];
    for ((e, &x), &m) in e.iter_mut().zip(x).zip(m) {
        *e = exp2_nonpositive(x - m);
    }
    e
}

/// Rows `start..start + 16` of Q in a head as in [`gather`], times `scale log2(e)`: scores
/// against them come out in base 2, `log2(e) * scale * q.k`, so that the softmax's
/// `exp(scale (s - max s))` is `2^(x - max x)`.
#[inline(always)]
fn gather_queries<const D: usize>(
    q: &[f32],
    h: Head,
    start: usize,
    rows: usize,
    scale: f32,
) -> [Lanes; D] {
    let mut qt = gather::<D>(q, h, start, rows);
    let to_base_2 = scale * std::f32::consts::LOG2_E;
    qt.iter_mut().flatten().for_each(|q| *q *= to_base_2);
    qt
}

/// `x_j = sum_c q_c k_jc` for 16 queries (`qt`, D vectors) and each key j < t, into
/// `scores[j]`; returns each query's maximum.
#[inline(always)]
fn scores<const D: usize>(qt: &[Lanes; D], k: &[f32], h: Head, scores: &mut [Lanes]) -> Lanes {
    let mut max = [f32::NEG_INFINITY; L];
    for (j, x) in scores.iter_mut().enumerate() {
        let kj = row::<D>(k, h, j);
        let mut s = [0f32; L];
        for (qc, &kc) in qt.iter().zip(&kj) {
            for (s, &q) in s.iter_mut().zip(qc) {
                *s = q.mul_add(kc, *s);
            }
        }
        for (m, &s) in max.iter_mut().zip(&s) {
            // One `maxps` (f32::max adds a NaN test); a NaN score leaves the maximum alone.
            *m = if s > *m { s } else { *m };
        }
        *x = s;
    }
    max
}

/// `e_j = 2^(x_j - max)` in place of each `x_j`; returns `1 / sum_j e_j`.
#[inline(always)]
fn exp_in_place(x: &mut [Lanes], max: &Lanes) -> Lanes {
    let mut sum = [0f32; L];
    for xj in x.iter_mut() {
        *xj = exp2_lanes(xj, max);
        for (s, &e) in sum.iter_mut().zip(xj.iter()) {
            *s += e;
        }
    }
    sum.map(|s| 1.0 / s)
}

/// `sum_j w_j y_jc` for lanes `w_j` and channel `c` of row j of a head of `y`. (One
/// accumulator per loop: with all D channels at once the compiler vectorises across channels,
/// with gathers and scatters, instead of across lanes.)
#[inline(always)]
fn weighted_sum(w: &[Lanes], y: &[f32], h: Head, c: usize) -> Lanes {
    let mut acc = [0f32; L];
    for (j, wj) in w.iter().enumerate() {
        let y_jc = y[j * h.stride + h.col + c];
        for (a, &w) in acc.iter_mut().zip(wj) {
            *a = w.mul_add(y_jc, *a);
        }
    }
    acc
}

/// `sum_j w_j y_jc * f` for each channel c of a head, as D vectors of lanes.
#[inline(always)]
fn weighted_sums<const D: usize>(w: &[Lanes], y: &[f32], h: Head, f: &Lanes) -> [Lanes; D] {
    let mut out = [[0f32; L]; D];
    for (c, oc) in out.iter_mut().enumerate() {
        *oc = weighted_sum(w, y, h, c);
        for (o, &f) in oc.iter_mut().zip(f) {
            *o *= f;
        }
    }
    out
}

/// The forward pass for the `n` rows of `q` (a (n, C) block) in head `h`, against K and V
/// ((t, C) blocks), into the head's columns of `o`.
#[inline(always)]
fn forward_head<const D: usize>(a: Forward, h: Head, scale: f32, o: &mut [f32], x: &mut [Lanes]) {
    let (n, x) = (a.n, &mut x[..a.t]);
    for i0 in (0..n).step_by(L) {
        let qt = gather_queries::<D>(a.q, h, i0, n, scale); // (d, 16)
        let max = scores(&qt, a.k, h, x); // x: (T, 16)
        let inv = exp_in_place(x, &max);
        let out = weighted_sums::<D>(x, a.v, h, &inv); // o_c = sum_j e_j v_jc / sum_j e_j
        scatter(&out, o, h, i0, n);
    }
}

/// The backward pass of one head up to dK and dV: dQ into the head's columns of `dq`, and
/// P^T and dS^T, (T, np) with np = N rounded up to 16, into `pt` and `dst` (for the products
/// that give dV and dK).
#[inline(always)]
fn backward_queries<const D: usize>(
    a: Backward,
    h: Head,
    scale: f32,
    dq: &mut [f32],
    x: &mut [Lanes],
    (pt, dst): (&mut [f32], &mut [f32]),
) {
    let (n, x) = (a.n, &mut x[..a.t]);
    let np = pt.len() / a.t;
    for i0 in (0..n).step_by(L) {
        let qt = gather_queries::<D>(a.q, h, i0, n, scale); // (d, 16)
        let gt = gather::<D>(a.g, h, i0, n);
        let ot = gather::<D>(a.o, h, i0, n);
        let mut big_d = [0f32; L];
        for (gc, oc) in gt.iter().zip(&ot) {
            for ((d, &g), &o) in big_d.iter_mut().zip(gc).zip(oc) {
                *d += g * o;
            }
        }
        let max = scores(&qt, a.k, h, x); // x: (T, 16)
        let inv = exp_in_place(x, &max);
        for (j, xj) in x.iter_mut().enumerate() {
            let vj = row::<D>(a.v, h, j);
            let mut dp = [0f32; L];
            for (gc, &vc) in gt.iter().zip(&vj) {
                for (dp, &g) in dp.iter_mut().zip(gc) {
                    *dp = g.mul_add(vc, *dp);
                }
            }
            let mut p = [0f32; L];
            let mut ds = [0f32; L];
            for ((((p, ds), &e), &inv), (&dp, &d)) in p
                .iter_mut()
                .zip(ds.iter_mut())
                .zip(xj.iter())
                .zip(&inv)
                .zip(dp.iter().zip(&big_d))
            {
                *p = e * inv;
                *ds = scale * *p * (dp - d);
            }
            pt[j * np + i0..][..L].copy_from_slice(&p);
            dst[j * np + i0..][..L].copy_from_slice(&ds);
            *xj = ds;
        }
        let out = weighted_sums::<D>(x, a.k, h, &[1.0; L]); // dq_c = sum_j ds_j k_jc
        scatter(&out, dq, h, i0, n);
    }
}

/// One batch item's forward inputs: `n` query rows (n, C), `t` keys and values (t, C).
#[derive(Clone, Copy)]
pub(super) struct Forward<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub n: usize,
    pub t: usize,
}

/// One batch item's backward inputs: Q, and the forward output O and its gradient G, (n, C);
/// K and V, (t, C).
#[derive(Clone, Copy)]
pub(super) struct Backward<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub o: &'a [f32],
    pub g: &'a [f32],
    pub n: usize,
    pub t: usize,
}

/// Scratch space for one head: a (T, 16) score buffer, and P^T and dS^T as (T, np).
#[derive(Default)]
pub(super) struct Scratch {
    scores: Vec<Lanes>,
    pt: Vec<f32>,
    dst: Vec<f32>,
}

impl Scratch {
    /// Room for `n` queries and `t` keys (the forward pass needs only the scores).
    pub(super) fn fit(&mut self, n: usize, t: usize, backward: bool) {
        self.scores.resize(t, [0.0; L]);
        if backward {
            let np = n.div_ceil(L) * L;
            self.pt.resize(t * np, 0.0);
            self.dst.resize(t * np, 0.0);
        }
    }
}

/// dV = P^T G and dK = dS^T Q for one head, into the head's columns of `dk` and `dv`.
fn key_gradients(a: Backward, h: Head, d: usize, s: &Scratch, (dk, dv): (&mut [f32], &mut [f32])) {
    let (n, t) = (a.n, a.t);
    let np = s.pt.len() / t;
    // The head's (N, d) columns of Q or G, and P^T or dS^T without the padding queries.
    let head = |x| MatRef {
        data: x,
        rows: n,
        cols: d,
        rs: h.stride,
        cs: 1,
    };
    let by_keys = |x| MatRef {
        data: x,
        rows: t,
        cols: n,
        rs: np,
        cs: 1,
    };
    sgemm_serial_into(
        by_keys(&s.pt),
        head(&a.g[h.col..]),
        &mut dv[h.col..],
        h.stride,
        false,
    ); // (T, d)
    sgemm_serial_into(
        by_keys(&s.dst),
        head(&a.q[h.col..]),
        &mut dk[h.col..],
        h.stride,
        false,
    ); // (T, d)
}

wide_kernels! {
    /// `o = softmax(scale q K^T) V` in head `h` (see the module docs); `scratch` fitted to the
    /// sizes of `a`.
    pub(super) fn forward(w: Width, a: Forward, h: Head, scale: f32, o: &mut [f32], scratch: &mut Scratch) {
        let x = &mut scratch.scores;
        match w {
            Width::D1 => forward_head::<1>(a, h, scale, o, x),
            Width::D2 => forward_head::<2>(a, h, scale, o, x),
            Width::D4 => forward_head::<4>(a, h, scale, o, x),
            Width::D8 => forward_head::<8>(a, h, scale, o, x),
            Width::D16 => forward_head::<16>(a, h, scale, o, x),
        }
    }

    /// The gradients of [`forward`] for head `h`: dQ, dK and dV into the head's columns of
    /// `dq` (n, C), `dk` and `dv` (t, C).
    pub(super) fn backward(
        w: Width,
        a: Backward,
        h: Head,
        scale: f32,
        dq: &mut [f32],
        dkv: (&mut [f32], &mut [f32]),
        scratch: &mut Scratch,
    ) {
        let x = &mut scratch.scores;
        let pds = (&mut scratch.pt[..], &mut scratch.dst[..]);
        match w {
            Width::D1 => backward_queries::<1>(a, h, scale, dq, x, pds),
            Width::D2 => backward_queries::<2>(a, h, scale, dq, x, pds),
            Width::D4 => backward_queries::<4>(a, h, scale, dq, x, pds),
            Width::D8 => backward_queries::<8>(a, h, scale, dq, x, pds),
            Width::D16 => backward_queries::<16>(a, h, scale, dq, x, pds),
        }
        key_gradients(a, h, w.d(), scratch, dkv);
    }
}
