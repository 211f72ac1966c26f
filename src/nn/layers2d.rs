//! The two image layers every conv net here is made of, with PyTorch's names (`weight`, `bias`)
//! and initialisation, running on the fused kernels of [`super::conv`] and
//! [`super::group_norm`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::conv::{conv2d, Padding};
use super::group_norm::group_norm;

/// `nn.Conv2d(c_in, c_out, k, stride, padding)` with bias.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: Padding,
}

impl Conv2d {
    /// Weights `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` as PyTorch's default (kaiming uniform with
    /// a = sqrt(5)); `prefix.weight` (c_out, c_in, k, k), `prefix.bias` (c_out).
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: Padding,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let uniform = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((c_out, c_in, k, k), "weight", uniform)?;
        let bias = vb.get_with_hints(c_out, "bias", uniform)?;
        Ok(Self {
            weight,
            bias,
            stride,
            pad,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv2d {
    /// (N, C_in, H, W) -> (N, C_out, H_out, W_out)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, &self.bias, self.stride, self.pad)
    }
}

/// `nn.GroupNorm(groups, channels, eps)`, with the SiLU that usually follows it fused in on
/// request ([`GroupNorm::forward_silu`]).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `prefix.weight` = 1 and `prefix.bias` = 0, both (channels,).
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// `silu(group_norm(x))`, one fused pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }
}

impl Module for GroupNorm {
    /// (N, C, ...) -> (N, C, ...)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }
}
