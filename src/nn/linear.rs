//! The fully connected layer, `y = x W^T + b`, as one matrix product each way.
//!
//! Composed as `x.matmul(&w.t())`, candle's backward forms the weight's gradient as
//! `x^T dy`, shaped (in, out) like the transposed view it multiplied by, and then copies its
//! transpose into a fresh (out, in) tensor for W: a pass over every weight of every layer, 2% of
//! a UNet training step. [`MatmulWt`] forms `dW = dy^T x` in W's own layout instead.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::gemm::{sgemm_uninit, MatRef};
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
/// `dx = dy W` (rows, in) and `dW = dy^T x` (out, in), each one matrix product.
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
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let ((rows, din), (dout, win)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if win != din {
            bail!("linear: an input of width {din} for a weight of shape ({dout}, {win})");
        }
        let x = MatRef::row_major(x, rows, din);
        let w_t = MatRef::row_major(w, dout, din).t(); // (in, out)

        // SAFETY: `sgemm_uninit` writes every element of the (rows, out) output.
        let (y, ()) = unsafe { written_by(rows * dout, |y| sgemm_uninit(x, w_t, y)) };
        Ok((CpuStorage::F32(y), Shape::from((rows, dout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = dy.matmul(w)?; // (rows, out) @ (out, in) = (rows, in)
        let dw = dy.t()?.matmul(x)?; // (out, rows) @ (rows, in) = (out, in)
        Ok((Some(dx), Some(dw)))
    }
}
