//! How the UNet learns what time it is: a sinusoidal code of the timestep (as in the Transformer's
//! position encoding) and a small MLP on top, diffusers' `Timesteps` + `TimestepEmbedding`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{linear, Linear};

/// `emb = [cos(t * f_k), sin(t * f_k)]` with `f_k = exp(-ln(10000) * k / (dim/2 - freq_shift))`
/// for k in 0..dim/2 (diffusers' `get_timestep_embedding` with `flip_sin_to_cos = true`,
/// Stable Diffusion's choice, and `downscale_freq_shift = freq_shift`). t (B,) -> (B, dim).
pub fn timestep_embedding(t: &Tensor, dim: usize, freq_shift: f64) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f64.ln()) * k as f64 / (half as f64 - freq_shift)).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), &Device::Cpu)?.to_device(t.device())?;
    let args = t
        .to_dtype(candle_core::DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?; // (B, half)
    Tensor::cat(&[args.cos()?, args.sin()?], 1) // (B, dim)
}

/// `linear_2(silu(linear_1(emb)))`: (B, C) -> (B, time_embed_dim).
#[derive(Clone, Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(c_in: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(c_in, dim, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, emb: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(emb)?)?)
    }
}
