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

/// Nearest-neighbour 2x upsampling, `y[n, c, i, j] = x[n, c, i / 2, j / 2]`, with its backward
/// (each input pixel's gradient is the sum over its 2x2 block).
struct Upsample2x;

impl candle_core::CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "inkdrop-upsample-nearest-2x"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!("upsample: expects (N, C, H, W), got {:?}", l.dims())
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("upsample: expects a contiguous tensor")
        };
        let x = &s.as_slice::<f32>()?[start..end];
        let mut y = vec![0f32; x.len() * 4];
        for (src, dst) in x.chunks_exact(w).zip(y.chunks_exact_mut(4 * w)) {
            let (top, bottom) = dst.split_at_mut(2 * w);
            for (j, &v) in src.iter().enumerate() {
                top[2 * j] = v;
                top[2 * j + 1] = v;
            }
            bottom.copy_from_slice(top);
        }
        Ok((candle_core::CpuStorage::F32(y), (n, c, 2 * h, 2 * w).into()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Downsum2x)?))
    }
}

/// The adjoint of [`Upsample2x`]: sums of 2x2 blocks.
struct Downsum2x;

impl candle_core::CustomOp1 for Downsum2x {
    fn name(&self) -> &'static str {
        "inkdrop-downsum-2x"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let &[n, c, h2, w2] = l.dims() else {
            candle_core::bail!("downsum: expects (N, C, H, W), got {:?}", l.dims())
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("downsum: expects a contiguous tensor")
        };
        let dy = &s.as_slice::<f32>()?[start..end];
        let w = w2 / 2;
        let mut dx = vec![0f32; dy.len() / 4];
        for (src, dst) in dy.chunks_exact(2 * w2).zip(dx.chunks_exact_mut(w)) {
            let (top, bottom) = src.split_at(w2);
            for (j, d) in dst.iter_mut().enumerate() {
                *d = top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1];
            }
        }
        Ok((candle_core::CpuStorage::F32(dx), (n, c, h2 / 2, w).into()))
    }
}

/// Nearest-neighbour 2x upsampling of (N, C, H, W) to (N, C, 2H, 2W), as
/// `F.interpolate(x, scale_factor=2.0, mode="nearest")`, differentiable.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Upsample2x)
}
