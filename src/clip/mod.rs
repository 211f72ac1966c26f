//! A tiny CLIP (Radford et al. 2021): a text transformer and an image tower trained so that
//! matching captions and images land close together on the unit sphere.
//!
//! ```text
//! text  (B, T) ids  -> text transformer -> hidden (B, T, W) -> pool at <|endoftext|> -> proj -> (B, E)
//! image (B, 3, H, W) -> colour path | shape path (two_path.rs) -> (B, W) -> proj -----------> (B, E)
//!                 or patches (B, N, 3 p p) -> ViT -> [CLS] -> proj (CLIP's own, `two_path: false`)
//! similarity = cos(text, image) = <t / |t|, i / |i|>;  logits = exp(logit_scale) * similarity
//! ```
//!
//! The text transformer's per-token hidden states (not just the pooled vector) are what Stable
//! Diffusion's UNet attends to; [`ClipTextTransformer::forward`] returns both. Names follow
//! Hugging Face's `CLIPModel` checkpoints. Left out: CLIP's attention pooling for ResNets.

pub mod bundle;
pub mod eval;
pub mod loss;
pub mod two_path;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::nn::{linear_no_bias, Encoder, LayerNorm, Linear};

pub use loss::{contrastive_loss, match_targets, truth_targets, ContrastiveOutput};

/// Sizes of both towers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub text_width: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_width: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    /// Width of the shared embedding space.
    pub embed_dim: usize,
    /// How images become tokens: `false` = CLIP's linear patch embedding (one p x p patch per
    /// token); `true` = three stride-2 3x3 convolutions first (a "conv stem", Xiao et al. 2021),
    /// which sees shapes across patch borders and trains faster on small images.
    #[serde(default)]
    pub conv_stem: bool,
    /// Pool the image tokens by their mean instead of reading CLIP's `[CLS]` token. With
    /// `vision_layers = 0` the image tower is a plain CNN with global average pooling, which
    /// composes colour and shape better on unseen pairs (see chapter 4).
    #[serde(default)]
    pub mean_pool: bool,
    /// Replace the ViT by [`two_path::TwoPathVision`]: a colour path and a shape path whose
    /// features are projected and summed, so colour and shape compose on unseen pairs.
    #[serde(default)]
    pub two_path: bool,
}

impl ClipConfig {
    /// inkdrop's default: a 128-wide text transformer of 3 layers and the two-path image tower
    /// ([`two_path::TwoPathVision`], 128 features). The ViT fields (conv stem, 3 layers read at
    /// `[CLS]`) apply when `two_path` is switched off.
    pub fn tiny(vocab_size: usize, context_length: usize) -> Self {
        ClipConfig {
            vocab_size,
            context_length,
            text_width: 128,
            text_layers: 3,
            text_heads: 4,
            image_size: 32,
            patch_size: 8,
            vision_width: 128,
            vision_layers: 3,
            vision_heads: 4,
            embed_dim: 64,
            conv_stem: true,
            mean_pool: false,
            two_path: true,
        }
    }

    /// A very small config for tests (seconds, not minutes).
    pub fn test(vocab_size: usize, context_length: usize) -> Self {
        ClipConfig {
            text_width: 32,
            text_layers: 1,
            text_heads: 2,
            vision_width: 32,
            vision_layers: 1,
            vision_heads: 2,
            embed_dim: 16,
            ..Self::tiny(vocab_size, context_length)
        }
    }

    pub fn num_patches(&self) -> usize {
        if self.conv_stem {
            (self.image_size / 8).pow(2)
        } else {
            (self.image_size / self.patch_size).pow(2)
        }
    }
}

/// CLIP's text tower: token + position embeddings, causal pre-LN transformer, final LayerNorm.
#[derive(Clone, Debug)]
pub struct ClipTextTransformer {
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
}

impl ClipTextTransformer {
    pub fn new(c: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let e = vb.pp("embeddings");
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        Ok(ClipTextTransformer {
            token_embedding: embedding(c.vocab_size, c.text_width, e.pp("token_embedding"))?,
            position_embedding: e.get_with_hints(
                (c.context_length, c.text_width),
                "position_embedding.weight",
                init,
            )?,
            encoder: Encoder::new(c.text_width, c.text_heads, c.text_layers, vb.pp("encoder"))?,
            final_layer_norm: LayerNorm::new(c.text_width, vb.pp("final_layer_norm"))?,
        })
    }

    /// `ids`: (B, T) u32; `eot_index[b]`: where sequence b's `<|endoftext|>` sits.
    /// Returns (last hidden states (B, T, W), pooled (B, W) taken at the end-of-text token).
    pub fn forward(&self, ids: &Tensor, eot_index: &[usize]) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?; // (B, T, W)

        // Causal: each token sees only its past.
        let hidden = self
            .final_layer_norm
            .forward(&self.encoder.forward(&x, true)?)?; // (B, T, W)
        let rows: Vec<u32> = eot_index
            .iter()
            .enumerate()
            .map(|(i, &e)| (i * t + e.min(t - 1)) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, b, ids.device())?;
        let w = hidden.dim(2)?;
        let pooled = hidden.reshape((b * t, w))?.index_select(&rows, 0)?; // (B, W)
        Ok((hidden, pooled))
    }
}

/// CLIP's vision tower (a ViT): patches -> linear embedding, a learned [CLS] token, position
/// embeddings, pre-LayerNorm, transformer, post-LayerNorm of [CLS].
/// Four 3x3 convolutions, 3 -> W/8 (stride 1, full resolution for small shapes) -> W/4 -> W/2
/// -> W channels (stride 2 each), quick-GELU between: a 32x32 image becomes a 4x4 grid of
/// W-wide tokens.
#[derive(Clone, Debug)]
struct ConvStem {
    convs: Vec<(Tensor, Tensor)>,
}

impl ConvStem {
    fn new(width: usize, vb: VarBuilder) -> Result<Self> {
        let chans = [3, width / 8, width / 4, width / 2, width];
        let convs = (0..4)
            .map(|i| {
                let (cin, cout) = (chans[i], chans[i + 1]);
                let fan_in = (cin * 9) as f64;
                let w = vb.get_with_hints(
                    (cout, cin, 3, 3),
                    &format!("{i}.weight"),
                    candle_nn::Init::Randn {
                        mean: 0.0,
                        stdev: (2.0 / fan_in).sqrt(),
                    },
                )?;
                let b =
                    vb.get_with_hints(cout, &format!("{i}.bias"), candle_nn::Init::Const(0.0))?;
                Ok((w, b))
            })
            .collect::<Result<_>>()?;
        Ok(ConvStem { convs })
    }

    /// (B, 3, H, W) -> (B, H/8 * W/8, width)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (w, b)) in self.convs.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            h = h
                .conv2d(w, 1, stride, 1, 1)?
                .broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?; // (B, C, H', W')
            if i < last {
                h = crate::nn::quick_gelu(&h)?;
            }
        }
        let (b, c, gh, gw) = h.dims4()?;
        h.reshape((b, c, gh * gw))?.transpose(1, 2)?.contiguous() // (B, N, C)
    }
}

#[derive(Clone, Debug)]
pub struct ClipVisionTransformer {
    stem: Option<ConvStem>,
    patch_embedding: Option<Tensor>,
    class_embedding: Option<Tensor>,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    patch_size: usize,
}

impl ClipVisionTransformer {
    pub fn new(c: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let e = vb.pp("embeddings");
        let p = c.patch_size;
        let fan_in = 3 * p * p;
        let init = |s: f64| candle_nn::Init::Randn {
            mean: 0.0,
            stdev: s,
        };
        Ok(ClipVisionTransformer {
            stem: if c.conv_stem {
                Some(ConvStem::new(c.vision_width, e.pp("stem"))?)
            } else {
                None
            },
            // A conv with kernel = stride = p, stored as diffusers/HF store it: (W, 3, p, p).
            patch_embedding: if c.conv_stem {
                None
            } else {
                Some(e.get_with_hints(
                    (c.vision_width, 3, p, p),
                    "patch_embedding.weight",
                    init((fan_in as f64).powf(-0.5)),
                )?)
            },
            class_embedding: if c.mean_pool {
                None
            } else {
                Some(e.get_with_hints(c.vision_width, "class_embedding", init(0.02))?)
            },
            position_embedding: e.get_with_hints(
                (c.num_patches() + usize::from(!c.mean_pool), c.vision_width),
                "position_embedding.weight",
                init(0.01),
            )?,
            pre_layrnorm: LayerNorm::new(c.vision_width, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(
                c.vision_width,
                c.vision_heads,
                c.vision_layers,
                vb.pp("encoder"),
            )?,
            post_layernorm: LayerNorm::new(c.vision_width, vb.pp("post_layernorm"))?,
            patch_size: p,
        })
    }

    /// `images`: (B, 3, H, W) in [-1, 1]. Returns the pooled [CLS] state (B, W).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let tokens = match (&self.stem, &self.patch_embedding) {
            (Some(stem), _) => stem.forward(images)?, // (B, N, W)
            (None, Some(kernel)) => self.patchify(images, kernel)?, // (B, N, W)
            (None, None) => {
                candle_core::bail!("vision tower has neither a conv stem nor a patch embedding")
            }
        };
        let (b, _, width) = tokens.dims3()?;
        let Some(class_embedding) = &self.class_embedding else {
            let x = tokens.broadcast_add(&self.position_embedding)?; // (B, N, W)
            let x = self
                .encoder
                .forward(&self.pre_layrnorm.forward(&x)?, false)?; // (B, N, W)
            return self.post_layernorm.forward(&x.mean(1)?); // (B, W): average over the grid
        };
        let cls = class_embedding
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?; // (B, 1, W)
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_embedding)?; // (B, N+1, W)
        let x = self
            .encoder
            .forward(&self.pre_layrnorm.forward(&x)?, false)?; // (B, N+1, W)
        self.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?) // (B, W)
    }

    /// CLIP's patch embedding: (B, 3, H, W) -> (B, N, W).
    fn patchify(&self, images: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // Cut into p x p patches and flatten each as (c, ky, kx), the order of a conv kernel.
        let patches = images
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))? // (B, gh, gw, C, p, p)
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?; // (B, N, 3 p p)
        let width = kernel.dim(0)?;
        let kernel = kernel.reshape((width, c * p * p))?; // (W, 3 p p)
        patches.broadcast_matmul(&kernel.t()?) // (B, N, W)
    }
}

/// The image tower: CLIP's ViT, or the two-path tower (colour and shape apart).
#[derive(Clone, Debug)]
pub enum VisionTower {
    Vit(ClipVisionTransformer),
    TwoPath(two_path::TwoPathVision),
}

impl VisionTower {
    /// (B, 3, H, W) in [-1, 1] -> (B, W)
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        match self {
            VisionTower::Vit(v) => v.forward(images),
            VisionTower::TwoPath(v) => v.forward(images),
        }
    }
}

/// Both towers, their projections into the shared space, and the learned temperature.
#[derive(Clone, Debug)]
pub struct Clip {
    pub config: ClipConfig,
    pub text_model: ClipTextTransformer,
    pub vision_model: VisionTower,
    text_projection: Linear,
    visual_projection: Linear,
    /// log of the logit scale; CLIP initialises it to ln(1 / 0.07) and clamps exp() at 100.
    pub logit_scale: Tensor,
}

/// The largest logit scale CLIP allows (a temperature of 0.01).
pub const MAX_LOGIT_SCALE: f64 = 100.0;

impl Clip {
    pub fn new(config: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::Init::Const((1.0f64 / 0.07).ln());
        Ok(Clip {
            text_model: ClipTextTransformer::new(config, vb.pp("text_model"))?,
            vision_model: if config.two_path {
                VisionTower::TwoPath(two_path::TwoPathVision::new(
                    config.vision_width,
                    vb.pp("vision_model").pp("two_path"),
                )?)
            } else {
                VisionTower::Vit(ClipVisionTransformer::new(config, vb.pp("vision_model"))?)
            },
            text_projection: linear_no_bias(
                config.text_width,
                config.embed_dim,
                vb.pp("text_projection"),
            )?,
            visual_projection: linear_no_bias(
                config.vision_width,
                config.embed_dim,
                vb.pp("visual_projection"),
            )?,
            logit_scale: vb.get_with_hints((), "logit_scale", init)?,
            config: config.clone(),
        })
    }

    /// Text embeddings before normalisation, (B, E).
    pub fn text_features(&self, ids: &Tensor, eot_index: &[usize]) -> Result<Tensor> {
        let (_, pooled) = self.text_model.forward(ids, eot_index)?;
        self.text_projection.forward(&pooled)
    }

    /// Image embeddings before normalisation, (B, E).
    pub fn image_features(&self, images: &Tensor) -> Result<Tensor> {
        self.visual_projection
            .forward(&self.vision_model.forward(images)?)
    }

    /// exp(logit_scale), clamped at 100, as a scalar tensor (differentiable below the clamp).
    pub fn scale(&self) -> Result<Tensor> {
        self.logit_scale.exp()?.clamp(0.0, MAX_LOGIT_SCALE)
    }
}

/// L2-normalises the rows of (B, E): `x / |x|`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?; // (B, 1)
    x.broadcast_div(&(norm + 1e-8)?)
}

/// Cosine similarity matrix between (N, E) and (M, E): (N, M).
pub fn cosine_matrix(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    l2_normalize(a)?.matmul(&l2_normalize(b)?.t()?)
}

/// Images as a (B, 3, H, W) tensor in [-1, 1].
pub fn images_tensor(images: &[image::RgbImage], device: &candle_core::Device) -> Result<Tensor> {
    let (w, h) = images.first().map_or((0, 0), |i| i.dimensions());
    let mut data = Vec::with_capacity(images.len() * 3 * (w * h) as usize);
    for img in images {
        data.extend(crate::support::image_io::to_chw(img).iter().copied());
    }
    Tensor::from_vec(data, (images.len(), 3, h as usize, w as usize), device)?.to_dtype(DType::F32)
}
