//! `UNet2DConditionModel`, Stable Diffusion's noise predictor, with diffusers' architecture and
//! checkpoint names: given noisy latents x_t, the timestep t and the text's hidden states, it
//! predicts the noise eps that was added.
//!
//! ```text
//! t -> sinusoidal code -> time_embedding MLP -> temb (B, 4*C0), added inside every ResnetBlock2D
//! x_t (B, 4, 8, 8) -> conv_in -> down blocks (ResnetBlock2D + Transformer2DModel, downsample)
//!                             -> mid block (resnet, transformer, resnet)
//!                             -> up blocks (concatenate the skip, resnet + transformer, upsample)
//!                             -> GroupNorm, SiLU, conv_out -> eps_hat (B, 4, 8, 8)
//! every Transformer2DModel cross-attends to the text: context (B, 16, 128)
//! ```

pub mod attention;
pub mod bundle;
pub mod embeddings;
pub mod eval;
pub mod sample;
pub mod text_encoder;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::nn::{Conv2d, Downsample2D, GroupNorm, Padding, ResnetBlock2D, Upsample2D};
use attention::{AttentionRecorder, Transformer2DModel};
use embeddings::{timestep_embedding, TimestepEmbedding};

/// The architecture, diffusers' `UNet2DConditionModel` config in our words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels per resolution level; every level but the last halves H and W.
    pub block_out_channels: Vec<usize>,
    /// Whether each level has cross-attention (`CrossAttnDownBlock2D`) or not (`DownBlock2D`);
    /// the up path mirrors it.
    pub cross_attention: Vec<bool>,
    pub layers_per_block: usize,
    /// Width of the text encoder's hidden states.
    pub cross_attention_dim: usize,
    /// Heads per attention layer (what diffusers' SD configs call `attention_head_dim`).
    pub attention_heads: usize,
    pub norm_num_groups: usize,
    pub freq_shift: f64,
}

/// What a UNet's output means and which noise schedule it was trained on: the two fields of
/// diffusers' `scheduler_config.json` that belong to the model rather than to the sampler, so
/// every sampler that drives it must use the same. Stored in the UNet's file (metadata
/// `parameterization`); files without it are Stable Diffusion v1's choice, the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameterization {
    /// eps (the noise) or v = sqrt(ab) eps - sqrt(1 - ab) x_0.
    pub prediction_type: crate::schedulers::PredictionType,
    /// Whether the betas were rescaled so that alpha_bar at the last timestep is exactly 0 (Lin
    /// et al. 2024): the noisiest training input then holds nothing of the picture, as at the
    /// start of sampling, and the layout must come from the text.
    pub rescale_betas_zero_snr: bool,
}

impl Parameterization {
    /// Metadata key in a UNet file.
    pub const KEY: &'static str = "parameterization";

    /// Stable Diffusion v1.5's schedule, rescaled to zero terminal SNR when the model was.
    pub fn schedule(&self) -> crate::schedule::ScheduleConfig {
        crate::schedule::ScheduleConfig {
            rescale_betas_zero_snr: self.rescale_betas_zero_snr,
            ..crate::schedule::ScheduleConfig::default()
        }
    }
}

impl UNetConfig {
    /// The shipped model: 4x8x8 latents, text states of width 128.
    pub fn tiny() -> Self {
        Self {
            sample_size: 8,
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![64, 128],
            cross_attention: vec![true, true],
            layers_per_block: 1,
            cross_attention_dim: 128,
            attention_heads: 8,
            norm_num_groups: 32,
            freq_shift: 0.0,
        }
    }

    /// Small enough for tests.
    pub fn test() -> Self {
        Self {
            block_out_channels: vec![16, 32],
            cross_attention_dim: 24,
            attention_heads: 2,
            norm_num_groups: 8,
            ..Self::tiny()
        }
    }

    fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }
}

const EPS: f64 = 1e-5;

/// One layer of a block: a ResnetBlock2D, then a Transformer2DModel if the level has attention.
#[derive(Clone, Debug)]
struct Layer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2DModel>,
}

impl Layer {
    /// Layer `j` of block `name` (`resnets.{j}`, `attentions.{j}`).
    fn new(
        c: &UNetConfig,
        c_in: usize,
        c_out: usize,
        attn: bool,
        name: &str,
        j: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let g = c.norm_num_groups;
        Ok(Self {
            resnet: ResnetBlock2D::new(
                c_in,
                c_out,
                Some(c.time_embed_dim()),
                g,
                EPS,
                vb.pp(format!("resnets.{j}")),
            )?,
            attention: attn
                .then(|| {
                    let path = format!("{name}.attentions.{j}");
                    Transformer2DModel::new(
                        c_out,
                        c.attention_heads,
                        c.cross_attention_dim,
                        g,
                        &path,
                        vb.pp(format!("attentions.{j}")),
                    )
                })
                .transpose()?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        rec: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let h = self.resnet.forward(x, Some(temb))?;
        match &self.attention {
            Some(a) => a.forward(&h, context, rec),
            None => Ok(h),
        }
    }
}

/// `CrossAttnDownBlock2D` / `DownBlock2D`: layers, then an optional stride-2 downsampler.
#[derive(Clone, Debug)]
struct DownBlock {
    layers: Vec<Layer>,
    downsampler: Option<Downsample2D>,
}

/// `CrossAttnUpBlock2D` / `UpBlock2D`: layers that each take a skip connection, then an optional
/// upsampler.
#[derive(Clone, Debug)]
struct UpBlock {
    layers: Vec<Layer>,
    upsampler: Option<Upsample2D>,
}

/// diffusers' `UNet2DConditionModel`.
#[derive(Clone, Debug)]
pub struct UNet2DConditionModel {
    pub config: UNetConfig,
    time_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: (ResnetBlock2D, Transformer2DModel, ResnetBlock2D),
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    pub fn new(c: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &c.block_out_channels;
        if ch.is_empty() || ch.len() != c.cross_attention.len() {
            candle_core::bail!(
                "UNet config: {} channel levels but {} cross_attention flags",
                ch.len(),
                c.cross_attention.len()
            );
        }
        let (g, same, levels) = (c.norm_num_groups, Padding::same(1), ch.len());
        let mut down_blocks = Vec::new();
        let mut output = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let input = output;
            output = out;
            let name = format!("down_blocks.{i}");
            let vb = vb.pp(&name);
            let layers = (0..c.layers_per_block)
                .map(|j| {
                    Layer::new(
                        c,
                        if j == 0 { input } else { out },
                        out,
                        c.cross_attention[i],
                        &name,
                        j,
                        &vb,
                    )
                })
                .collect::<Result<_>>()?;
            let downsampler = (i + 1 < levels)
                .then(|| Downsample2D::new(out, false, vb.pp("downsamplers.0")))
                .transpose()?;
            down_blocks.push(DownBlock {
                layers,
                downsampler,
            });
        }
        let last = ch[levels - 1];
        let mid = vb.pp("mid_block");
        let temb = Some(c.time_embed_dim());
        let mid_block = (
            ResnetBlock2D::new(last, last, temb, g, EPS, mid.pp("resnets.0"))?,
            Transformer2DModel::new(
                last,
                c.attention_heads,
                c.cross_attention_dim,
                g,
                "mid_block.attentions.0",
                mid.pp("attentions.0"),
            )?,
            ResnetBlock2D::new(last, last, temb, g, EPS, mid.pp("resnets.1"))?,
        );
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let attn_rev: Vec<bool> = c.cross_attention.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        let mut output = reversed[0];
        for i in 0..levels {
            let prev_output = output;
            output = reversed[i];
            let input = reversed[(i + 1).min(levels - 1)];
            let name = format!("up_blocks.{i}");
            let vb = vb.pp(&name);
            let n = c.layers_per_block + 1;
            let layers = (0..n)
                .map(|j| {
                    let skip = if j == n - 1 { input } else { output };
                    let res_in = if j == 0 { prev_output } else { output };
                    Layer::new(c, res_in + skip, output, attn_rev[i], &name, j, &vb)
                })
                .collect::<Result<_>>()?;
            let upsampler = (i + 1 < levels)
                .then(|| Upsample2D::new(output, vb.pp("upsamplers.0")))
                .transpose()?;
            up_blocks.push(UpBlock { layers, upsampler });
        }
        Ok(Self {
            config: c.clone(),
            time_embedding: TimestepEmbedding::new(
                ch[0],
                c.time_embed_dim(),
                vb.pp("time_embedding"),
            )?,
            conv_in: Conv2d::new(c.in_channels, ch[0], 3, 1, same, vb.pp("conv_in"))?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(g, ch[0], EPS, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(ch[0], c.out_channels, 3, 1, same, vb.pp("conv_out"))?,
        })
    }

    /// eps_hat = UNet(x_t, t, context): sample (B, 4, h, w), timesteps (B,) (one per sample, any
    /// float dtype), context (B, T, cross_attention_dim) -> (B, 4, h, w). With a recorder,
    /// attention maps are kept as they are computed.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        rec: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let c0 = self.config.block_out_channels[0];
        // 1. Time: sinusoidal code, then the MLP.
        let t_emb = timestep_embedding(timesteps, c0, self.config.freq_shift)?; // (B, C0)
        let temb = self.time_embedding.forward(&t_emb)?; // (B, 4*C0)

        // 2. Down: keep every layer's output for the skip connections.
        let mut h = self.conv_in.forward(sample)?; // (B, C0, h, w)
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            for layer in &block.layers {
                h = layer.forward(&h, &temb, context, rec)?;
                skips.push(h.clone());
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(&h)?;
                skips.push(h.clone());
            }
        }
        // 3. Middle, at the lowest resolution.
        let (r0, attn, r1) = &self.mid_block;
        h = r1.forward(
            &attn.forward(&r0.forward(&h, Some(&temb))?, context, rec)?,
            Some(&temb),
        )?;
        // 4. Up: concatenate the matching skip before each layer.
        for block in &self.up_blocks {
            for layer in &block.layers {
                let skip = skips.pop().ok_or_else(|| {
                    candle_core::Error::Msg("UNet: skip connections ran out".into())
                })?;
                h = layer.forward(&Tensor::cat(&[&h, &skip], 1)?, &temb, context, rec)?;
            }
            if let Some(up) = &block.upsampler {
                h = up.forward(&h)?;
            }
        }
        // 5. Back to 4 channels: the predicted noise.
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}
