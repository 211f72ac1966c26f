//! Fused CPU ops with hand-written backward passes, for the two places where composing candle
//! ops is slow on CPU: softmax (exp, max, sum, div: each a pass and each with its own backward)
//! and the bias add of linear layers (whose gradient is a column sum candle computes with a slow
//! strided reduction). Both are checked against candle's composed ops and finite differences in
//! `tests/nn.rs`.

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::fastmath::{self, sigmoid, wide_kernels};

/// The f32 data of a contiguous tensor, or an error naming `op` (every fused op here needs one).
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    // Every custom op reads its inputs here first: the moment to wake the pool for its work.
    crate::support::awake::keep_pool_awake();
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => bail!("{op}: expects a contiguous f32 tensor"),
    }
}

/// [`contiguous_f32`] of a tensor's storage (what a backward pass reads in place).
pub(crate) fn storage_f32<'a>(s: &'a Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(s) => contiguous_f32(s, l, op),
        _ => bail!("{op}: expects CPU tensors"),
    }
}

/// A vector of `len` floats that `fill` writes, returned with what `fill` returns. The memory
/// is not zeroed first: `vec![0f32; len]` costs one more pass over an output of megabytes (a
/// `memset`) for values about to be overwritten, and on these sizes that pass is a fifth of a
/// fused GroupNorm's time.
///
/// # Safety
/// `fill` must write every element of its slice.
pub(crate) unsafe fn written_by<R>(
    len: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]) -> R,
) -> (Vec<f32>, R) {
    let mut out = Vec::with_capacity(len);
    let result = fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialised the first `len` elements.
    unsafe { out.set_len(len) };
    (out, result)
}

/// `dst = src`, element by element, into memory not yet written.
#[inline(always)]
pub(crate) fn write_slice(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Elements per parallel work item of the element-wise and row-wise ops: large enough that
/// rayon's overhead is noise, small enough that both cores get work on a (128, 17, 512)
/// activation.
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// Rows of length `n` per parallel work item: about [`ELEMENTWISE_CHUNK`] elements, at least
/// one row.
fn rows_per_task(n: usize) -> usize {
    (ELEMENTWISE_CHUNK / n).max(1)
}

/// One row's softmax in place, `p_j = exp(s (x_j - max x)) / sum_k exp(s (x_k - max x))` with
/// `s = scale > 0`; masked entries (-inf) give exactly 0, as libm's exp does.
#[inline(always)]
fn softmax_row(row: &mut [f32], scale: f32) {
    let max = fastmath::max(row);
    for v in row.iter_mut() {
        let d = scale * (*v - max);
        *v = if d < -87.0 { 0.0 } else { fastmath::exp(d) };
    }
    let inv = 1.0 / fastmath::sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// One row's softmax Jacobian-vector product in place: `g_j <- s p_j (g_j - sum_k g_k p_k)`
/// (`s = scale`, the factor of the scores before the softmax).
#[inline(always)]
fn softmax_row_backward(p: &[f32], g: &mut [f32], scale: f32) {
    let dot = fastmath::sum_zip(p, g, |a, b| a * b);
    for (gi, &pi) in g.iter_mut().zip(p) {
        *gi = scale * pi * (*gi - dot);
    }
}

wide_kernels! {
    /// [`softmax_row`] on each row of length `n` of `rows`.
    pub(crate) fn softmax_rows(rows: &mut [f32], n: usize, scale: f32) {
        rows.chunks_exact_mut(n).for_each(|row| softmax_row(row, scale));
    }

    /// [`softmax_row_backward`] on each row of length `n` of `p` and `g`.
    pub(crate) fn softmax_rows_backward(p: &[f32], g: &mut [f32], n: usize, scale: f32) {
        for (pr, gr) in p.chunks_exact(n).zip(g.chunks_exact_mut(n)) {
            softmax_row_backward(pr, gr, scale);
        }
    }
}

/// Softmax over the last axis: `p_j = exp(x_j - max x) / sum_k exp(x_k - max x)`.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "inkdrop-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = x.to_vec();
        out.par_chunks_mut(rows_per_task(n) * n)
            .for_each(|o| softmax_rows(o, n, 1.0));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &SoftmaxBackward,
        )?))
    }
}

/// The softmax Jacobian-vector product: `dx_j = p_j (g_j - sum_k g_k p_k)`.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "inkdrop-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let n = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = g.to_vec();
        let rows = rows_per_task(n);
        out.par_chunks_mut(rows * n)
            .zip(p.par_chunks(rows * n))
            .for_each(|(o, p)| softmax_rows_backward(p, o, n, 1.0));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last axis, fused, with a fused backward (f32).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// `y = x + b`, b broadcast along the last axis.
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "inkdrop-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        if l1.dims().last() != Some(&b.len()) {
            bail!("bias of {} for a last axis of {:?}", b.len(), l1.dims());
        }
        let chunk = rows_per_task(b.len()) * b.len();
        // SAFETY: `add_rows` writes every element of each chunk.
        let (out, ()) = unsafe {
            written_by(x.len(), |o| {
                o.par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk))
                    .for_each(|(o, x)| add_rows(o, x, b))
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_b = grad.contiguous()?.apply_op1_no_bwd(&SumRows)?;
        Ok((Some(grad.clone()), Some(grad_b)))
    }
}

/// `sum_k partials[k]`, added in the order of `k`: per-chunk partial sums of a parallel pass
/// come out the same, bit for bit, however the threads took the chunks.
fn sum_in_order(partials: &[Vec<f32>], w: usize) -> Vec<f32> {
    let mut out = vec![0f32; w];
    for p in partials {
        fastmath::add_assign(&mut out, p);
    }
    out
}

/// Column sums of a (..., W) tensor: (W,). The bias gradient.
struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "inkdrop-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let w = l.dims().last().copied().unwrap_or(1).max(1);
        let partials: Vec<Vec<f32>> = x
            .par_chunks(rows_per_task(w) * w)
            .map(|rows| {
                let mut sums = vec![0f32; w];
                for row in rows.chunks_exact(w) {
                    fastmath::add_assign(&mut sums, row);
                }
                sums
            })
            .collect();
        Ok((CpuStorage::F32(sum_in_order(&partials, w)), Shape::from(w)))
    }
}

/// `x + b` with `b` (W,) broadcast over the last axis of `x` (..., W), fused, with a fast bias
/// gradient (f32).
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
}

/// LayerNorm over the last axis: `y = (x - mean) / sqrt(var + eps) * w + b`, fused, with a fused
/// backward: with `xhat = (x - mean) * rstd` and `h = g * w` per row,
/// `dx = rstd * (h - mean(h) - xhat * mean(h * xhat))`, `dw = sum_rows(g * xhat)`, `db = sum_rows(g)`.
struct LayerNormOp {
    eps: f32,
}

/// Mean and 1 / std of one row.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = fastmath::sum(row) / n;
    let var = fastmath::sum_map(row, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl candle_core::CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "inkdrop-layer-norm"
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
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let n = w.len();
        if l1.dims().last() != Some(&n) || b.len() != n {
            bail!("layer norm of width {n} for a last axis of {:?}", l1.dims());
        }
        let chunk = rows_per_task(n) * n;
        // SAFETY: `layer_norm_rows` writes every element of each chunk.
        let (out, ()) = unsafe {
            written_by(x.len(), |o| {
                o.par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk))
                    .for_each(|(o, x)| layer_norm_rows(o, x, w, b, self.eps))
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, w, g) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let name = "inkdrop-layer-norm backward";
        let xs = storage_f32(&sx, lx, name)?;
        let ws = storage_f32(&sw, lw, name)?;
        let gs = storage_f32(&sg, lg, name)?;
        let n = ws.len();
        let chunk = rows_per_task(n) * n;
        // One pass: dx row by row, and per chunk of rows the partial sums of dw and db.
        // SAFETY: `layer_norm_rows_backward` writes every element of each chunk of dx.
        let (dx, partials) = unsafe {
            written_by(xs.len(), |dx| {
                dx.par_chunks_mut(chunk)
                    .zip(xs.par_chunks(chunk).zip(gs.par_chunks(chunk)))
                    .map(|(dx, (x, g))| {
                        let mut dw_db = vec![0f32; 2 * n];
                        layer_norm_rows_backward(dx, x, g, ws, self.eps, &mut dw_db);
                        dw_db
                    })
                    .collect::<Vec<_>>()
            })
        };
        let dw_db = sum_in_order(&partials, 2 * n);
        let dev = x.device();
        let dx = Tensor::from_vec(dx, x.shape(), dev)?;
        let dw = Tensor::from_slice(&dw_db[..n], n, dev)?;
        let db = Tensor::from_slice(&dw_db[n..], n, dev)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// LayerNorm over the last axis of `x` (..., W) with weight and bias (W,), fused (f32).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

/// `quick_gelu(x) = x * sigmoid(1.702 x)`, fused, with its derivative
/// `s + 1.702 x s (1 - s)` in the backward.
struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "inkdrop-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(x.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(o, x)| quick_gelu_chunk(o, x));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &QuickGeluBackward,
        )?))
    }
}

struct QuickGeluBackward;

impl CustomOp2 for QuickGeluBackward {
    fn name(&self) -> &'static str {
        "inkdrop-quick-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(
                x.par_chunks(ELEMENTWISE_CHUNK)
                    .zip(g.par_chunks(ELEMENTWISE_CHUNK)),
            )
            .for_each(|(o, (x, g))| quick_gelu_backward_chunk(o, x, g));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// CLIP's activation, `x * sigmoid(1.702 x)`, fused (f32).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(QuickGelu)
}

/// The standard normal CDF, `Phi(x) = (1 + erf(x / sqrt 2)) / 2`, with erf from Abramowitz &
/// Stegun 7.1.26 (absolute error below 1.5e-7) on the vectorisable exp of [`super::fastmath`].
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    normal_cdf_pdf(x).0
}

/// `(Phi(x), phi(x))` with `phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`, the standard normal density:
/// [`normal_cdf`]'s `exp(-(x / sqrt 2)^2)` is the density's exponential too, so the backward
/// pass takes one exponential per element instead of two.
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_7 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = super::fastmath::exp(-a * a);
    let erf_abs = 1.0 - poly * e;
    (0.5 * (1.0 + erf_abs.copysign(z)), 0.398_942_3 * e)
}

/// GEGLU: `[h, gate] = x` split along the last axis, `y = h * gelu(gate)` with the exact
/// (erf) GELU, `gelu(g) = g Phi(g)`.
struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "inkdrop-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let w = l.dims().last().copied().unwrap_or(0);
        if w % 2 != 0 {
            bail!("geglu: last axis {w} must be even ([h, gate])");
        }
        let half = w / 2;
        // SAFETY: `geglu_row` writes all of each row of `out`.
        let (out, ()) = unsafe {
            written_by(x.len() / 2, |out| {
                out.par_chunks_exact_mut(half.max(1))
                    .zip(x.par_chunks_exact(w.max(1)))
                    .for_each(|(o, row)| geglu_row(o, row))
            })
        };
        let mut dims = l.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = half;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GegluBackward)?,
        ))
    }
}

/// `dh = dy * gelu(g)`, `dg = dy * h * (Phi(g) + g phi(g))`.
struct GegluBackward;

impl CustomOp2 for GegluBackward {
    fn name(&self) -> &'static str {
        "inkdrop-geglu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        let w = l1.dims().last().copied().unwrap_or(0);
        let half = w / 2;
        // SAFETY: `geglu_row_backward` writes all of each row of `out`.
        let (out, ()) = unsafe {
            written_by(x.len(), |out| {
                out.par_chunks_exact_mut(w.max(1))
                    .zip(
                        x.par_chunks_exact(w.max(1))
                            .zip(dy.par_chunks_exact(half.max(1))),
                    )
                    .for_each(|(o, (row, d))| geglu_row_backward(o, row, d))
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// GEGLU (Shazeer 2020), the feed-forward gate of Stable Diffusion's transformer blocks:
/// `x` (..., 2n) = [h, gate] -> `h * gelu(gate)` (..., n), fused, with a fused backward (f32).
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Geglu)
}

wide_kernels! {
    /// [`LayerNormOp`] on each row (of `w.len()`) of `x`, into memory not yet written.
    fn layer_norm_rows(out: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let n = w.len();
        for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let (mean, rstd) = row_stats(row, eps);
            for (((o, &x), &w), &b) in o.iter_mut().zip(row).zip(w).zip(b) {
                o.write((x - mean) * rstd * w + b);
            }
        }
    }

    /// The backward pass of [`LayerNormOp`] on each row (of `w.len()`) of `x` with its gradient
    /// `g`: dx into `dx` (memory not yet written), and `dw` and `db` added into `dw_db`
    /// (`[dw, db]`, 2 * W).
    fn layer_norm_rows_backward(
        dx: &mut [MaybeUninit<f32>],
        x: &[f32],
        g: &[f32],
        w: &[f32],
        eps: f32,
        dw_db: &mut [f32],
    ) {
        let n = w.len();
        let (dw, db) = dw_db.split_at_mut(n);
        let mut h = vec![0f32; n];
        for ((row, gr), dx) in x
            .chunks_exact(n)
            .zip(g.chunks_exact(n))
            .zip(dx.chunks_exact_mut(n))
        {
            let (mean, rstd) = row_stats(row, eps);
            for ((h, &g), &w) in h.iter_mut().zip(gr).zip(w) {
                *h = g * w;
            }
            let mean_h = fastmath::sum(&h) / n as f32;
            let mean_hx = fastmath::sum_zip(&h, row, |h, x| h * (x - mean)) * rstd / n as f32;
            let per_column = dx.iter_mut().zip(dw.iter_mut()).zip(db.iter_mut());
            for (((dx, dw), db), ((&x, &g), &h)) in per_column.zip(row.iter().zip(gr).zip(&h)) {
                let xhat = (x - mean) * rstd;
                dx.write(rstd * (h - mean_h - xhat * mean_hx));
                *dw += g * xhat;
                *db += g;
            }
        }
    }

    /// `out = x + b` row by row (`b` one row), into memory not yet written.
    fn add_rows(out: &mut [MaybeUninit<f32>], x: &[f32], b: &[f32]) {
        for (o, x) in out.chunks_exact_mut(b.len()).zip(x.chunks_exact(b.len())) {
            for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                o.write(x + b);
            }
        }
    }

    /// [`QuickGelu`] on one chunk.
    fn quick_gelu_chunk(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * sigmoid(1.702 * v);
        }
    }

    /// [`QuickGeluBackward`] on one chunk: `out = g * (s + 1.702 x s (1 - s))`.
    fn quick_gelu_backward_chunk(out: &mut [f32], x: &[f32], g: &[f32]) {
        for (o, (&v, &gi)) in out.iter_mut().zip(x.iter().zip(g)) {
            let s = sigmoid(1.702 * v);
            *o = gi * (s + 1.702 * v * s * (1.0 - s));
        }
    }

    /// [`Geglu`] on one row `[h, gate]` into `out` (half its length).
    fn geglu_row(out: &mut [MaybeUninit<f32>], row: &[f32]) {
        let (h, g) = row.split_at(out.len());
        for ((oi, &hi), &gi) in out.iter_mut().zip(h).zip(g) {
            oi.write(hi * gi * normal_cdf(gi));
        }
    }

    /// [`GegluBackward`] on one row: `out = [dh, dgate]` from the row `[h, gate]` and `d = dy`.
    fn geglu_row_backward(out: &mut [MaybeUninit<f32>], row: &[f32], d: &[f32]) {
        let half = d.len();
        let (h, g) = row.split_at(half);
        let (dh, dg) = out.split_at_mut(half);
        let outs = dh.iter_mut().zip(dg.iter_mut());
        for ((dh, dg), ((&h, &g), &d)) in outs.zip(h.iter().zip(g).zip(d)) {
            let (cdf, pdf) = normal_cdf_pdf(g);
            dh.write(d * g * cdf);
            dg.write(d * h * (cdf + g * pdf));
        }
    }
}
