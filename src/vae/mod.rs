//! `AutoencoderKL`, the variational autoencoder that gives Stable Diffusion its latent space,
//! with diffusers' architecture and checkpoint names (`encoder.down_blocks.0.resnets.0.conv1`,
//! `quant_conv`, `decoder.up_blocks.1.upsamplers.0.conv`, ...).
//!
//! ```text
//! image (N, 3, 32, 32) --encoder--> moments (N, 8, 8, 8) --quant_conv--> mean, logvar (N, 4, 8, 8)
//! z = mean + exp(logvar / 2) * eps               (the reparameterisation trick)
//! z (N, 4, 8, 8) --post_quant_conv--> --decoder--> image (N, 3, 32, 32)
//! ```
//!
//! The diffusion model works on `latents = z * scaling_factor`, scaled to unit variance.

pub mod attention;
pub mod bundle;
pub mod eval;
pub mod io;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::nn::{Conv2d, Downsample2D, GroupNorm, Padding, ResnetBlock2D, Upsample2D};
use attention::VaeAttention;

/// The architecture, diffusers' `AutoencoderKL` config in our words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels of each resolution level; every level but the last halves H and W.
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Image size in pixels (square).
    pub sample_size: usize,
    /// `latents = z * scaling_factor`: 1 / std of z over the data set, measured after training
    /// (Stable Diffusion's is 0.18215).
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// The shipped model: 32x32x3 images to 4x8x8 latents.
    pub fn tiny() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![32, 64, 64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 1.0,
        }
    }

    /// A model small enough for tests (16x16 images to 4x8x8).
    pub fn test() -> Self {
        Self {
            block_out_channels: vec![8, 16],
            norm_num_groups: 4,
            sample_size: 16,
            ..Self::tiny()
        }
    }

    /// Latent height and width: the image size halved once per level but the last.
    pub fn latent_size(&self) -> usize {
        self.sample_size >> self.block_out_channels.len().saturating_sub(1)
    }

    /// (latent_channels, latent_size, latent_size)
    pub fn latent_shape(&self) -> [usize; 3] {
        let s = self.latent_size();
        [self.latent_channels, s, s]
    }
}

const EPS: f64 = 1e-6;

/// diffusers' `UNetMidBlock2D` as the VAE uses it: resnet, attention, resnet.
#[derive(Clone, Debug)]
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: VaeAttention,
}

impl MidBlock {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let resnet =
            |i: usize| ResnetBlock2D::new(c, c, None, groups, EPS, vb.pp(format!("resnets.{i}")));
        Ok(Self {
            resnets: [resnet(0)?, resnet(1)?],
            attention: VaeAttention::new(c, groups, EPS, vb.pp("attentions.0"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.resnets[0].forward(x, None)?;
        let h = self.attention.forward(&h)?;
        self.resnets[1].forward(&h, None)
    }
}

/// One resolution level: resnets, then an optional down- or upsampler.
#[derive(Clone, Debug)]
struct Level<S> {
    resnets: Vec<ResnetBlock2D>,
    sampler: Option<S>,
}

impl<S: Module> Level<S> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.sampler {
            Some(s) => s.forward(&h),
            None => Ok(h),
        }
    }
}

/// diffusers' `Encoder`: image to the moments (mean and log-variance) of q(z | x).
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<Level<Downsample2D>>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(c: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let (ch, g, same) = (&c.block_out_channels, c.norm_num_groups, Padding::same(1));
        let mut down_blocks = Vec::new();
        let mut prev = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    let c_in = if j == 0 { prev } else { out };
                    ResnetBlock2D::new(c_in, out, None, g, EPS, vb.pp(format!("resnets.{j}")))
                })
                .collect::<Result<_>>()?;
            let sampler = (i + 1 < ch.len())
                .then(|| Downsample2D::new(out, true, vb.pp("downsamplers.0")))
                .transpose()?;
            down_blocks.push(Level { resnets, sampler });
            prev = out;
        }
        let last = *ch.last().unwrap_or(&ch[0]);
        Ok(Self {
            conv_in: Conv2d::new(c.in_channels, ch[0], 3, 1, same, vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(last, g, vb.pp("mid_block"))?,
            conv_norm_out: GroupNorm::new(g, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(last, 2 * c.latent_channels, 3, 1, same, vb.pp("conv_out"))?,
        })
    }

    /// (N, 3, H, W) -> (N, 2 * latent_channels, H / f, W / f)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down_blocks {
            h = level.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}

/// diffusers' `Decoder`: a latent back to an image.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<Level<Upsample2D>>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(c: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let (g, same) = (c.norm_num_groups, Padding::same(1));
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        let mut prev = reversed[0];
        for (i, &out) in reversed.iter().enumerate() {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    let c_in = if j == 0 { prev } else { out };
                    ResnetBlock2D::new(c_in, out, None, g, EPS, vb.pp(format!("resnets.{j}")))
                })
                .collect::<Result<_>>()?;
            let sampler = (i + 1 < reversed.len())
                .then(|| Upsample2D::new(out, vb.pp("upsamplers.0")))
                .transpose()?;
            up_blocks.push(Level { resnets, sampler });
            prev = out;
        }
        let first = c.block_out_channels[0];
        Ok(Self {
            conv_in: Conv2d::new(c.latent_channels, reversed[0], 3, 1, same, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(reversed[0], g, vb.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: GroupNorm::new(g, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(first, c.out_channels, 3, 1, same, vb.pp("conv_out"))?,
        })
    }

    /// (N, latent_channels, h, w) -> (N, 3, h * f, w * f)
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for level in &self.up_blocks {
            h = level.forward(&h)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}

/// q(z | x) = N(mean, exp(logvar)), diffusers' `DiagonalGaussianDistribution`.
#[derive(Clone, Debug)]
pub struct DiagonalGaussian {
    /// (N, latent_channels, h, w)
    pub mean: Tensor,
    /// (N, latent_channels, h, w), clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// `z = mean + exp(logvar / 2) * eps`, eps ~ N(0, I) given (the reparameterisation trick:
    /// z stays differentiable in mean and logvar).
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        &self.mean + (self.logvar.affine(0.5, 0.0)?.exp()? * eps)?
    }

    /// The most likely z: the mean.
    pub fn mode(&self) -> Tensor {
        self.mean.clone()
    }

    /// `KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar)` per sample: (N,).
    pub fn kl(&self) -> Result<Tensor> {
        let terms = ((self.mean.sqr()? + self.logvar.exp()?)? - 1.0)?.sub(&self.logvar)?;
        terms.flatten_from(1)?.sum(1)? * 0.5
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Clone, Debug)]
pub struct AutoencoderKL {
    pub config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
}

impl AutoencoderKL {
    pub fn new(config: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let (l, none) = (config.latent_channels, Padding::same(0));
        Ok(Self {
            config: config.clone(),
            encoder: Encoder::new(config, vb.pp("encoder"))?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
            quant_conv: Conv2d::new(2 * l, 2 * l, 1, 1, none, vb.pp("quant_conv"))?,
            post_quant_conv: Conv2d::new(l, l, 1, 1, none, vb.pp("post_quant_conv"))?,
        })
    }

    /// Images (N, 3, H, W) in [-1, 1] to the distribution q(z | x) over (N, 4, H/f, W/f).
    pub fn encode(&self, images: &Tensor) -> Result<DiagonalGaussian> {
        let moments = self.quant_conv.forward(&self.encoder.forward(images)?)?; // (N, 2L, h, w)
        let l = self.config.latent_channels;
        Ok(DiagonalGaussian {
            mean: moments.narrow(1, 0, l)?,
            logvar: moments.narrow(1, l, l)?.clamp(-30f32, 20f32)?,
        })
    }

    /// z (N, 4, h, w) (unscaled) to images (N, 3, h*f, w*f), roughly in [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.post_quant_conv.forward(z)?)
    }
}
