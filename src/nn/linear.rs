//! The fully connected layer, `y = x W^T + b`, as one matrix product each way.
//!
//! Composed as `x.matmul(&w.t())`, candle's backward forms the weight's gradient as
//! `x^T dy`, shaped (in, out) like the transposed view it multiplied by, and then copies its
//! transpose into a fresh (out, in) tensor for W: a pass over every weight of every layer, 2% of
//! a UNet training step. [`MatmulWt`] forms `dW = dy^T x` in W's own layout instead.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use rayon::prelude::*;

use super::conv::{contiguous_runs, split_runs};
use super::fastmath::add_assign;
use super::gemm::{sgemm_uninit_with, MatRef};
use super::ops::{bias_add, contiguous_f32, written_by};

/// A fully connected layer, `y = x W^T + b`, with candle-nn's initialisation and names
/// (`weight` (out, in), `bias` (out)), one fused product ([`MatmulWt`]) and a fused bias add.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    /// (..., in) -> (..., out)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, din) = (
            dims[..dims.len() - 1].iter().product::<usize>(),
            dims[dims.len() - 1],
        );
        let x = x.reshape((rows, din))?.contiguous()?; // (rows, in)
        let y = x.apply_op2(&self.weight, MatmulWt)?; // (rows, out)
        let y = match &self.bias {
            Some(b) => bias_add(&y, b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap_or(&mut 0) = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// A [`Linear`] layer with bias (`prefix.weight`, `prefix.bias`).
pub fn linear(din: usize, dout: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear(din, dout, vb)?;
    Ok(Linear {
        weight: l.weight().clone(),
        bias: l.bias().cloned(),
    })
}

/// A [`Linear`] layer without bias.
pub fn linear_no_bias(din: usize, dout: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear_no_bias(din, dout, vb)?;
    Ok(Linear {
        weight: l.weight().clone(),
        bias: None,
    })
}

/// `y = x W^T` for x (rows, in) and W (out, in), both contiguous; backward
/// `dx = dy W` (rows, in) and `dW = dy^T x` (out, in), each one matrix product
/// ([`LinearProduct`]).
pub struct MatmulWt;

impl CustomOp2 for MatmulWt {
    fn name(&self) -> &'static str {
        "inkdrop-matmul-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        LinearProduct::XWt.cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?; // (rows, out)
        let dx = dy.apply_op2_no_bwd(w, &LinearProduct::DyW)?; // (rows, in)
        let dw = dy.apply_op2_no_bwd(x, &LinearProduct::DytX)?; // (out, in)
        Ok((Some(dx), Some(dw)))
    }
}

/// The three matrix products of a linear layer, each of two contiguous row-major operands
/// `a`, `b`, split across the threads by inkdrop rather than by `gemm`: `gemm` splits a product
/// only when one block of it holds about 48*48*256 multiply-adds, and a layer's are thin (32 or
/// 64 wide, thousands of rows), so their weight gradients, and at times their other products,
/// ran on one core while the other waited.
#[derive(Clone, Copy, Debug)]
pub enum LinearProduct {
    /// `y = x W^T`: x (rows, in), W (out, in) -> (rows, out). Rows split across threads.
    XWt,
    /// `dx = dy W`: dy (rows, out), W (out, in) -> (rows, in). Rows split across threads.
    DyW,
    /// `dW = dy^T x`: dy (rows, out), x (rows, in) -> (out, in), a sum over rows: cut into
    /// [`sum_pieces`] runs of rows, one partial product each, added in order.
    DytX,
}

/// Multiply-adds below which a product stays on the calling thread (about 64^3).
const PARALLEL_WORK: usize = 64 * 64 * 64;

/// Runs of rows per thread in [`split_rows`], and rows per run at the least.
const RUNS_PER_THREAD: usize = 4;
const MIN_RUN_ROWS: usize = 64;

/// Rows per partial product of [`LinearProduct::DytX`] at the least, and partial products at
/// the most: enough of them that both cores (or eight) have work, few enough that adding them
/// up costs little beside the product (`pieces - 1` adds per weight against `rows` multiply-adds).
const MIN_PIECE_ROWS: usize = 128;
const MAX_PIECES: usize = 8;

/// How many runs of rows `dW = dy^T x` is cut into: a function of `rows` alone, so the sum is
/// added up in the same order, and gives the same bits, on any number of threads.
pub fn sum_pieces(rows: usize, work: usize) -> usize {
    if work < PARALLEL_WORK {
        1
    } else {
        (rows / MIN_PIECE_ROWS).clamp(1, MAX_PIECES)
    }
}

impl CustomOp2 for LinearProduct {
    fn name(&self) -> &'static str {
        match self {
            Self::XWt => "inkdrop-linear-x-wt",
            Self::DyW => "inkdrop-linear-dy-w",
            Self::DytX => "inkdrop-linear-dyt-x",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        let ((ar, ac), (br, bc)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let (out, rows, cols) = match self {
            Self::XWt if ac == bc => {
                let w_t = MatRef::row_major(b, br, bc).t(); // (in, out)
                (split_rows(a, ar, ac, w_t), ar, br)
            }
            Self::DyW if ac == br => (split_rows(a, ar, ac, MatRef::row_major(b, br, bc)), ar, bc),
            Self::DytX if ar == br => (sum_over_rows(a, b, ar, ac, bc), ac, bc),
            Self::XWt => {
                bail!("linear: an input of width {ac} for a weight of shape ({br}, {bc})")
            }
            _ => bail!(
                "{}: operands ({ar}, {ac}) and ({br}, {bc}) do not fit",
                self.name()
            ),
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }
}

/// `a @ b` for a (rows, k) row-major and b (k, n): each thread multiplies its own run of rows.
fn split_rows(a: &[f32], rows: usize, k: usize, b: MatRef) -> Vec<f32> {
    let n = b.cols;
    let runs = if rows * k * n < PARALLEL_WORK {
        vec![(0, rows)]
    } else {
        // A few runs per thread, so that a thread that starts late or runs slow is caught up
        // by the others instead of being waited for.
        let runs =
            (rayon::current_num_threads() * RUNS_PER_THREAD).min(rows.div_ceil(MIN_RUN_ROWS));
        contiguous_runs(rows, runs)
    };
    // SAFETY: the runs cover every row, and `sgemm_uninit_with` writes every element of each
    // run's (len, n) part.
    let (y, ()) = unsafe {
        written_by(rows * n, |y| {
            split_runs(y, &runs, n)
                .into_par_iter()
                .zip(&runs)
                .for_each(|(part, &(r0, len))| {
                    let a_run = MatRef::row_major(&a[r0 * k..(r0 + len) * k], len, k);
                    sgemm_uninit_with(a_run, b, part, false);
                })
        })
    };
    y
}

/// `a^T @ b` for a (rows, m) and b (rows, n), both row-major: (m, n), the sum over rows of
/// `a[r]^T b[r]`, as [`sum_pieces`] partial products (in parallel) added in order.
fn sum_over_rows(a: &[f32], b: &[f32], rows: usize, m: usize, n: usize) -> Vec<f32> {
    if rows == 0 {
        return vec![0f32; m * n]; // an empty sum
    }
    let pieces = sum_pieces(rows, rows * m * n);
    let runs = contiguous_runs(rows, pieces);
    let partial = |&(r0, len): &(usize, usize)| {
        let a_t = MatRef::row_major(&a[r0 * m..(r0 + len) * m], len, m).t(); // (m, len)
        let b_run = MatRef::row_major(&b[r0 * n..(r0 + len) * n], len, n); // (len, n)

        // One piece (few rows): `gemm` may still split the product by columns.
        let split = pieces == 1;
        // SAFETY: `sgemm_uninit_with` writes every element of the (m, n) product.
        let (p, ()) = unsafe { written_by(m * n, |p| sgemm_uninit_with(a_t, b_run, p, split)) };
        p
    };
    let mut partials: Vec<Vec<f32>> = runs.par_iter().map(partial).collect();
    let mut sum = partials.remove(0);
    if !partials.is_empty() {
        sum.par_chunks_mut(SUM_CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| {
                for p in &partials {
                    add_assign(chunk, &p[i * SUM_CHUNK..][..chunk.len()]);
                }
            });
    }
    sum
}

/// Weights per parallel task when adding the partial products up.
const SUM_CHUNK: usize = 1 << 13;
