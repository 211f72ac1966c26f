//! Multi-head attention, `O = softmax(scale Q K^T) V`, fused into one op per (batch, head).
//!
//! Written with candle ops, attention is: split the heads (three transposed copies), a batched
//! matrix product into a (B, heads, N, T) score tensor, a softmax into another, a second batched
//! product, and a transposed copy back; the backward pass walks all of it again. At the UNet's
//! 16x16 level (N = T = 256) the two (B, heads, N, T) tensors are tens of megabytes each. Here
//! each (batch, head) pair is one task: its N x T probabilities live in a buffer that stays in
//! cache, the heads are read in place with strides, and the backward pass recomputes the
//! probabilities instead of storing them (as FlashAttention does, for the same reason).
//!
//! Heads of 1, 2, 4, 8 or 16 channels (the UNets' 8 heads over 32 to 128 channels) take
//! `attention_lanes` instead, which works on 16 queries at a time, one per lane of a vector: its
//! forward pass writes nothing of size (N, T), and its backward pass needs matrix products only
//! for dK and dV. Other widths use the products below.
//!
//! Shapes: `q` (B, N, C), `k` and `v` (B, T, C), `C = heads * d`; output (B, N, C).

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention_lanes::{self as lanes, Head, Width};
use super::gemm::{sgemm_serial, MatRef};
use super::ops::{contiguous_f32, softmax_rows, softmax_rows_backward, storage_f32};

/// Query rows per parallel task of the narrow-head forward pass: 4 blocks of 16 lanes.
const ROWS_PER_TASK: usize = 64;

/// `softmax(scale q k^T) v` per head; see the module docs. `scale` is usually `1 / sqrt(d)`
/// and must be positive (the row maximum is taken before scaling).
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    attention_op(q, k, v, heads, scale, false)
}

/// [`fused_attention`] with a causal mask, as in CLIP's text transformer: query i sees keys
/// 0..=i only (`softmax` over the others, which get exactly 0). Queries and keys must be the
/// same sequence length. The same as adding [`super::causal_mask`] to the scores.
pub fn fused_causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    if q.dims().get(1) != k.dims().get(1) {
        bail!(
            "causal attention: queries {:?} and keys {:?} must be one sequence",
            q.dims(),
            k.dims()
        );
    }
    attention_op(q, k, v, heads, scale, true)
}

fn attention_op(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    if !(scale > 0.0 && scale.is_finite()) {
        bail!("attention: scale {scale} must be a positive number (usually 1 / sqrt(head width))");
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        FusedAttention {
            heads,
            scale: scale as f32,
            causal,
        },
    )
}

/// `softmax(scale q k^T) v` per head written with candle's own ops: the heads split by
/// transposed copies, two batched matrix products into and out of a (B, heads, N, T) score
/// tensor, and candle-nn's composed (differentiable) softmax. The reference [`fused_attention`]
/// is tested and benchmarked against.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let split = |x: &Tensor| -> Result<Tensor> {
        let (b, len, c) = x.dims3()?;
        x.reshape((b, len, heads, c / heads))?
            .transpose(1, 2)?
            .contiguous() // (B, h, len, d)
    };
    let (b, n, c) = q.dims3()?;
    let scores = (split(q)?.matmul(&split(k)?.t()?.contiguous()?)? * scale)?; // (B, h, N, T)
    let p = candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?;
    p.matmul(&split(v)?)? // (B, h, N, d)
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, n, c))
}

struct FusedAttention {
    heads: usize,
    scale: f32,
    /// Query i sees keys 0..=i only (the wide path below takes every causal call).
    causal: bool,
}

/// The sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    n: usize,
    t: usize,
    c: usize,
    h: usize,
    d: usize,
}

impl Dims {
    fn of(q: &[usize], k: &[usize], v: &[usize], heads: usize) -> Result<Self> {
        let (&[b, n, c], &[bk, t, ck]) = (q, k) else {
            bail!("attention: q {q:?} and k {k:?} must be (B, N, C) and (B, T, C)");
        };
        if bk != b || ck != c || v != k {
            bail!("attention: q {q:?}, k {k:?}, v {v:?} do not fit together");
        }
        if heads == 0 || c % heads != 0 {
            bail!("attention: width {c} is not divisible by {heads} heads");
        }
        if n == 0 || t == 0 || c == 0 {
            bail!("attention: q {q:?} and k {k:?} must have at least one query, key and channel");
        }
        Ok(Dims {
            b,
            n,
            t,
            c,
            h: heads,
            d: c / heads,
        })
    }

    /// Head `hi` of batch item `bi` of a (B, rows, C) tensor, as a (rows, d) matrix view.
    fn head<'a>(&self, x: &'a [f32], rows: usize, bi: usize, hi: usize) -> MatRef<'a> {
        MatRef {
            data: &x[bi * rows * self.c + hi * self.d..],
            rows,
            cols: self.d,
            rs: self.c,
            cs: 1,
        }
    }

    /// Per-head (rows, d) blocks -> (B, rows, C). The block of (batch `bi`, head `hi`) starts
    /// at `(bi * h + hi) * stride + offset` in `blocks`.
    fn merge_heads(&self, blocks: &[f32], stride: usize, offset: usize, rows: usize) -> Vec<f32> {
        let (c, d, h) = (self.c, self.d, self.h);
        let mut out = vec![0f32; self.b * rows * c];
        out.par_chunks_mut(rows * c)
            .enumerate()
            .for_each(|(bi, ob)| {
                for hi in 0..h {
                    let src = &blocks[(bi * h + hi) * stride + offset..][..rows * d];
                    for (i, s) in src.chunks_exact(d).enumerate() {
                        ob[i * c + hi * d..][..d].copy_from_slice(s);
                    }
                }
            });
        out
    }
}

/// `p = softmax(scale q_bh k_bh^T)` for one (batch, head): p is (N, T), row-major.
/// With `causal`, the scores above the diagonal are -inf first, so their probabilities are 0.
fn probs(
    q: &[f32],
    k: &[f32],
    dm: Dims,
    (bi, hi): (usize, usize),
    a: &FusedAttention,
    p: &mut [f32],
) {
    let qh = dm.head(q, dm.n, bi, hi); // (N, d)
    let kh = dm.head(k, dm.t, bi, hi); // (T, d)
    sgemm_serial(qh, kh.t(), p, false); // (N, T)
    if a.causal {
        for (i, row) in p.chunks_exact_mut(dm.t).enumerate() {
            row[i + 1..].fill(f32::NEG_INFINITY);
        }
    }
    softmax_rows(p, dm.t, a.scale);
}

impl FusedAttention {
    /// The forward pass for heads of [`Width`] (`attention_lanes`), one task per
    /// (batch item, block of query rows), every head in turn. Returns O, (B, N, C).
    fn forward_narrow(&self, w: Width, dm: Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (n, t, c) = (dm.n, dm.t, dm.c);
        let mut out = vec![0f32; dm.b * n * c];
        let items = out.par_chunks_mut(n * c).zip(q.par_chunks(n * c));
        items.enumerate().for_each(|(bi, (ob, qb))| {
            let (kb, vb) = (&k[bi * t * c..][..t * c], &v[bi * t * c..][..t * c]); // (T, C)
            let blocks = ob.par_chunks_mut(ROWS_PER_TASK * c);
            blocks.zip(qb.par_chunks(ROWS_PER_TASK * c)).for_each_init(
                lanes::Scratch::default,
                |scratch, (o, q)| {
                    let rows = q.len() / c;
                    scratch.fit(rows, t, false);
                    let a = lanes::Forward {
                        q, // (rows, C)
                        k: kb,
                        v: vb,
                        n: rows,
                        t,
                    };
                    for hi in 0..dm.h {
                        let head = Head {
                            stride: c,
                            col: hi * dm.d,
                        };
                        lanes::forward(w, a, head, self.scale, o, scratch);
                    }
                },
            );
        });
        out
    }

    /// The backward pass for heads of [`Width`] (`attention_lanes`), one task per batch
    /// item, every head in turn. Returns dQ, dK, dV in the inputs' layouts.
    fn backward_narrow(&self, w: Width, dm: Dims, io: Grads) -> [Vec<f32>; 3] {
        let Grads {
            q: qd,
            k: kd,
            v: vd,
            o: od,
            g: gd,
        } = io;
        let (b, n, t, c) = (dm.b, dm.n, dm.t, dm.c);
        let mut dq = vec![0f32; b * n * c];
        let mut dk = vec![0f32; b * t * c];
        let mut dv = vec![0f32; b * t * c];
        let items = (
            dq.par_chunks_mut(n * c),
            dk.par_chunks_mut(t * c),
            dv.par_chunks_mut(t * c),
        );
        items.into_par_iter().enumerate().for_each_init(
            lanes::Scratch::default,
            |scratch, (bi, (dq, dk, dv))| {
                scratch.fit(n, t, true);
                let a = lanes::Backward {
                    q: &qd[bi * n * c..][..n * c],
                    k: &kd[bi * t * c..][..t * c],
                    v: &vd[bi * t * c..][..t * c],
                    o: &od[bi * n * c..][..n * c],
                    g: &gd[bi * n * c..][..n * c],
                    n,
                    t,
                };
                for hi in 0..dm.h {
                    let head = Head {
                        stride: c,
                        col: hi * dm.d,
                    };
                    lanes::backward(w, a, head, self.scale, dq, (&mut *dk, &mut *dv), scratch);
                }
            },
        );
        [dq, dk, dv]
    }

    /// The backward pass for other head widths: per (batch, head), the probabilities again and
    /// four matrix products. Returns dQ, dK, dV in the inputs' layouts.
    fn backward_wide(&self, dm: Dims, io: Grads) -> [Vec<f32>; 3] {
        let Grads {
            q: qd,
            k: kd,
            v: vd,
            g,
            ..
        } = io;
        let (n, t, d) = (dm.n, dm.t, dm.d);
        // Per (batch, head): [dQ (N, d) | dK (T, d) | dV (T, d)].
        let per = (n + 2 * t) * d;
        let mut out = vec![0f32; dm.b * dm.h * per];
        out.par_chunks_mut(per).enumerate().for_each_init(
            || (vec![0f32; n * t], vec![0f32; n * t]),
            |(p, dp), (bh, o)| {
                let (bi, hi) = (bh / dm.h, bh % dm.h);
                let (dq, rest) = o.split_at_mut(n * d);
                let (dk, dv) = rest.split_at_mut(t * d);
                probs(qd, kd, dm, (bi, hi), self, p); // P (N, T)
                let gh = dm.head(g, n, bi, hi); // G (N, d)
                let p_mat = MatRef::row_major(p, n, t);
                sgemm_serial(p_mat.t(), gh, dv, false); // dV = P^T G: (T, d)
                sgemm_serial(gh, dm.head(vd, t, bi, hi).t(), dp, false); // dP = G V^T: (N, T)
                softmax_rows_backward(p, dp, t, self.scale); // scale * dS
                let ds = MatRef::row_major(dp, n, t);
                sgemm_serial(ds, dm.head(kd, t, bi, hi), dq, false); // dQ: (N, d)
                sgemm_serial(ds.t(), dm.head(qd, n, bi, hi), dk, false); // dK: (T, d)
            },
        );
        // Each gradient's per-head blocks into its (B, rows, C) layout.
        [
            dm.merge_heads(&out, per, 0, n),
            dm.merge_heads(&out, per, n * d, t),
            dm.merge_heads(&out, per, (n + t) * d, t),
        ]
    }
}

/// The backward pass's inputs, read in place: Q, K, V, the forward output O and its gradient G.
#[derive(Clone, Copy)]
struct Grads<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    o: &'a [f32],
    g: &'a [f32],
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "inkdrop-attention"
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
        let dm = Dims::of(l1.dims(), l2.dims(), l3.dims(), self.heads)?;
        let name = self.name();
        let (q, k, v) = (
            contiguous_f32(s1, l1, name)?,
            contiguous_f32(s2, l2, name)?,
            contiguous_f32(s3, l3, name)?,
        );
        if let Some(w) = Width::of(dm.d).filter(|_| !self.causal) {
            let out = self.forward_narrow(w, dm, q, k, v);
            return Ok((CpuStorage::F32(out), Shape::from((dm.b, dm.n, dm.c))));
        }
        let (n, t, d) = (dm.n, dm.t, dm.d);
        let mut heads = vec![0f32; dm.b * dm.h * n * d]; // (B, h, N, d)
        heads.par_chunks_mut(n * d).enumerate().for_each_init(
            || vec![0f32; n * t],
            |p, (bh, o)| {
                let (bi, hi) = (bh / dm.h, bh % dm.h);
                probs(q, k, dm, (bi, hi), self, p); // (N, T)
                let vh = dm.head(v, t, bi, hi); // (T, d)
                sgemm_serial(MatRef::row_major(p, n, t), vh, o, false); // (N, d)
            },
        );
        Ok((
            CpuStorage::F32(dm.merge_heads(&heads, n * d, 0, n)),
            Shape::from((dm.b, n, dm.c)),
        ))
    }

    /// With `P = softmax(S)`, `S = scale Q K^T`, `O = P V` and `G = dL/dO`:
    /// `dV = P^T G`, `dP = G V^T`, `dS = P * (dP - rowsum(dP * P))`,
    /// `dQ = scale dS K`, `dK = scale dS^T Q`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(q.dims(), k.dims(), v.dims(), self.heads)?;
        let (q, k, v, o, g) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            res.contiguous()?,
            grad.contiguous()?,
        );
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (so, lo) = o.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let name = "inkdrop-attention backward";
        let io = Grads {
            q: storage_f32(&sq, lq, name)?,
            k: storage_f32(&sk, lk, name)?,
            v: storage_f32(&sv, lv, name)?,
            o: storage_f32(&so, lo, name)?,
            g: storage_f32(&sg, lg, name)?,
        };
        let [dq, dk, dv] = match Width::of(dm.d).filter(|_| !self.causal) {
            Some(w) => self.backward_narrow(w, dm, io),
            None => self.backward_wide(dm, io),
        };
        let dev = q.device();
        let dq = Tensor::from_vec(dq, (dm.b, dm.n, dm.c), dev)?;
        let dk = Tensor::from_vec(dk, (dm.b, dm.t, dm.c), dev)?;
        let dv = Tensor::from_vec(dv, (dm.b, dm.t, dm.c), dev)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
