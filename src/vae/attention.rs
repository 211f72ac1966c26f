//! The VAE's spatial self-attention (diffusers' `Attention` as built for the VAE mid block: one
//! head as wide as the channels, GroupNorm in front, a residual connection around it).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{linear, softmax_last_dim, GroupNorm, Linear};

/// `y = x + to_out(softmax(q k^T / sqrt(C)) v)`, q, k, v = to_q/to_k/to_v of `group_norm(x)`
/// with every pixel a token.
#[derive(Clone, Debug)]
pub struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    pub fn new(channels: usize, groups: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, eps, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out.0"))?,
        })
    }
}

impl Module for VaeAttention {
    /// (N, C, H, W) -> (N, C, H, W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((n, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?; // (N, HW, C)
        let q = (self.to_q.forward(&tokens)? * (c as f64).powf(-0.5))?; // (N, HW, C)
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let probs = softmax_last_dim(&q.matmul(&k.t()?.contiguous()?)?)?; // (N, HW, HW)
        let out = self.to_out.forward(&probs.matmul(&v)?)?; // (N, HW, C)
        let out = out.transpose(1, 2)?.contiguous()?.reshape((n, c, h, w))?;
        x + out
    }
}
