//! The few layers inkdrop owns instead of taking from candle-nn, because candle's versions cut
//! gradients silently (see `../shared/CANDLE_NOTES.md`): LayerNorm, attention that uses the
//! differentiable softmax, and the pre-LayerNorm transformer block CLIP is built from.
//!
//! Parameter names follow Hugging Face's CLIP checkpoints (`self_attn.q_proj`, `layer_norm1`,
//! `mlp.fc1`, ...) so the same code could load real weights.

pub mod attention;
mod attention_lanes;
pub mod conv;
mod conv_pointwise;
mod conv_stride1;
mod conv_winograd;
pub mod fastmath;
pub mod gemm;
pub mod group_norm;
pub mod layers2d;
pub mod linear;
pub mod ops;
pub mod resnet;
pub mod transpose;
mod winograd_rows;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

pub use attention::{attention_reference, fused_attention, fused_causal_attention};
pub use conv::{conv2d, Padding};
pub use group_norm::group_norm;
pub use layers2d::{upsample_nearest2x, Conv2d, GroupNorm};
pub use linear::{linear, linear_no_bias, Linear};
pub use ops::{bias_add, geglu, layer_norm, quick_gelu, softmax_last_dim};
pub use resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
pub use transpose::transpose_copy;

/// LayerNorm over the last axis, written with differentiable ops:
/// `y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// The same LayerNorm written with candle's differentiable ops (the reference the fused
/// [`layer_norm`] is tested against).
pub fn layer_norm_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?; // (..., 1)
    let centered = x.broadcast_sub(&mean)?; // (..., W)
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// CLIP's activation written with candle ops (the reference for the fused [`quick_gelu`]).
pub fn quick_gelu_reference(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// Multi-head self-attention, `softmax(Q K^T / sqrt(d_head) + mask) V`, with CLIP's names.
#[derive(Clone, Debug)]
pub struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    pub fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        if width % heads != 0 {
            candle_core::bail!("width {width} is not divisible by {heads} heads");
        }
        Ok(SelfAttention {
            q_proj: linear(width, width, vb.pp("q_proj"))?,
            k_proj: linear(width, width, vb.pp("k_proj"))?,
            v_proj: linear(width, width, vb.pp("v_proj"))?,
            out_proj: linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `x`: (B, T, W) -> (B, T, W); with `causal`, token i attends to tokens 0..=i only (CLIP's
    /// text transformer). One fused op per call ([`fused_attention`], [`fused_causal_attention`]):
    /// `softmax(q k^T / sqrt(d)) v` per head, never storing the (B, H, T, T) scores.
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let d = x.dim(2)? / self.heads;
        let scale = (d as f64).powf(-0.5);
        let (q, k, v) = (
            self.q_proj.forward(x)?, // (B, T, W)
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        );
        let out = if causal {
            fused_causal_attention(&q, &k, &v, self.heads, scale)?
        } else {
            fused_attention(&q, &k, &v, self.heads, scale)?
        }; // (B, T, W)
        self.out_proj.forward(&out)
    }
}

/// The causal mask: position i may attend to positions 0..=i only. (T, T), 0 or -inf.
pub fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..t * t)
        .map(|k| {
            if k % t > k / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, (t, t), device)?.to_dtype(DType::F32)
}

/// One pre-LayerNorm transformer block, as in CLIP:
/// `x = x + attn(ln1(x)); x = x + fc2(quick_gelu(fc1(ln2(x))))`.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    self_attn: SelfAttention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    pub fn new(width: usize, heads: usize, mlp_ratio: usize, vb: VarBuilder) -> Result<Self> {
        Ok(EncoderLayer {
            self_attn: SelfAttention::new(width, heads, vb.pp("self_attn"))?,
            layer_norm1: LayerNorm::new(width, vb.pp("layer_norm1"))?,
            fc1: linear(width, width * mlp_ratio, vb.pp("mlp.fc1"))?,
            fc2: linear(width * mlp_ratio, width, vb.pp("mlp.fc2"))?,
            layer_norm2: LayerNorm::new(width, vb.pp("layer_norm2"))?,
        })
    }

    /// (B, T, W) -> (B, T, W).
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, causal)?)?;
        let m = self.fc2.forward(&quick_gelu(
            &self.fc1.forward(&self.layer_norm2.forward(&h)?)?,
        )?)?;
        h + m
    }
}

/// A stack of [`EncoderLayer`]s (`encoder.layers.N`).
#[derive(Clone, Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(width: usize, heads: usize, layers: usize, vb: VarBuilder) -> Result<Self> {
        let layers = (0..layers)
            .map(|i| EncoderLayer::new(width, heads, 4, vb.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    /// (B, T, W) -> (B, T, W); `causal` as in [`SelfAttention::forward`].
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        self.layers
            .iter()
            .try_fold(x.clone(), |h, layer| layer.forward(&h, causal))
    }
}
