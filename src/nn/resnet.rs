//! The convolutional building blocks Stable Diffusion's VAE and UNet share, with diffusers'
//! names: `ResnetBlock2D`, `Downsample2D`, `Upsample2D`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers2d::{upsample_nearest2x, Conv2d, GroupNorm};
use super::{linear, Linear, Padding};

/// diffusers' `ResnetBlock2D` (pre-activation, `output_scale_factor = 1`):
///
/// ```text
/// h = conv1(silu(norm1(x)))            (+ time_emb_proj(silu(temb)) per channel, in the UNet)
/// h = conv2(silu(norm2(h)))
/// y = shortcut(x) + h                  shortcut = 1x1 conv_shortcut when channels change
/// ```
#[derive(Clone, Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels` = Some(d) adds the UNet's timestep projection; the VAE has none.
    pub fn new(
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let same = Padding::same(1);
        Ok(Self {
            norm1: GroupNorm::new(groups, c_in, eps, vb.pp("norm1"))?,
            conv1: Conv2d::new(c_in, c_out, 3, 1, same, vb.pp("conv1"))?,
            time_emb_proj: temb_channels
                .map(|d| linear(d, c_out, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: GroupNorm::new(groups, c_out, eps, vb.pp("norm2"))?,
            conv2: Conv2d::new(c_out, c_out, 3, 1, same, vb.pp("conv2"))?,
            conv_shortcut: (c_in != c_out)
                .then(|| Conv2d::new(c_in, c_out, 1, 1, Padding::same(0), vb.pp("conv_shortcut")))
                .transpose()?,
        })
    }

    /// x (N, C_in, H, W), temb (N, temb_channels) or None -> (N, C_out, H, W)
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?; // (N, C_out, H, W)
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&candle_nn::ops::silu(temb)?)?; // (N, C_out)
            h = h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        shortcut + h
    }
}

/// diffusers' `Downsample2D` with a conv: a 3x3 stride-2 convolution halving H and W. The VAE
/// pads only bottom and right (`padding=0` plus `F.pad(x, (0, 1, 0, 1))`), the UNet pads 1 all
/// round; both give H/2 x W/2 for even sizes.
#[derive(Clone, Debug)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, vae_padding: bool, vb: VarBuilder) -> Result<Self> {
        let pad = if vae_padding {
            Padding {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1,
            }
        } else {
            Padding::same(1)
        };
        Ok(Self {
            conv: Conv2d::new(channels, channels, 3, 2, pad, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample2D {
    /// (N, C, H, W) -> (N, C, H/2, W/2)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

/// diffusers' `Upsample2D` with a conv: nearest 2x upsampling, then a 3x3 convolution.
#[derive(Clone, Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(channels, channels, 3, 1, Padding::same(1), vb.pp("conv"))?,
        })
    }
}

impl Module for Upsample2D {
    /// (N, C, H, W) -> (N, C, 2H, 2W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest2x(x)?)
    }
}
