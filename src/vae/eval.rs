//! How good a VAE is: PSNR of reconstructions on held-out Shapes World images, the colour error
//! on the objects' own pixels, and the spread of the latents (which sets `scaling_factor`).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::AutoencoderKL;
use crate::clip::images_tensor;
use crate::shapes::{render, sample_at, Sample, WorldConfig};
use crate::Result;

/// Held-out measurements of a VAE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaeEval {
    pub images: usize,
    /// `10 log10(1 / MSE)` with pixels in [0, 1], MSE over all pixels of all images.
    pub psnr_db: f64,
    /// Mean absolute error (0-255 scale, averaged over R, G, B) on pixels inside objects.
    pub object_color_error: f64,
    /// Standard deviation of sampled latents z over all images and positions.
    pub latent_std: f64,
    /// Mean of sampled latents z.
    pub latent_mean: f64,
}

/// Seed of the held-out images: far from any training seed's index range.
pub const HELD_OUT_SEED: u64 = 0x5EED_0F4E_1D00;

/// Pixels in [-1, 1] to bytes.
pub fn to_u8(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// The held-out images: samples `0..n` of [`HELD_OUT_SEED`].
pub fn held_out(n: usize) -> Vec<Sample> {
    let world = WorldConfig::default();
    (0..n as u64)
        .map(|i| sample_at(&world, HELD_OUT_SEED, i))
        .collect()
}

/// Evaluates `vae` on `n` held-out images, in batches of 50. Reconstructions use the mean of
/// q(z | x); the latent statistics use samples of it (what the UNet trains on).
pub fn evaluate(vae: &AutoencoderKL, n: usize) -> Result<VaeEval> {
    let size = vae.config.sample_size as u32;
    let samples = held_out(n);
    let mut rng = crate::support::seeded_rng(HELD_OUT_SEED);
    let (mut sq, mut count) = (0f64, 0usize);
    let (mut color_err, mut color_count) = (0f64, 0usize);
    let (mut z_sum, mut z_sq, mut z_count) = (0f64, 0f64, 0usize);
    for chunk in samples.chunks(50) {
        let images: Vec<_> = chunk.iter().map(|s| render(&s.scene, size)).collect();
        let x = images_tensor(&images, &Device::Cpu)?; // (B, 3, H, W)
        let dist = vae.encode(&x)?;
        let recon = vae.decode(&dist.mode())?.clamp(-1f32, 1f32)?;
        let diff = ((&recon - &x)? * 0.5)?; // [0, 1] scale
        sq += f64::from(diff.sqr()?.sum_all()?.to_scalar::<f32>()?);
        count += diff.elem_count();
        let eps = crate::noising::randn_tensor(dist.mean.dims(), &mut rng, &Device::Cpu)?;
        let z: Vec<f32> = dist.sample(&eps)?.flatten_all()?.to_vec1()?;
        z_sum += z.iter().map(|&v| f64::from(v)).sum::<f64>();
        z_sq += z.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        z_count += z.len();
        let recon: Vec<f32> = recon.flatten_all()?.to_vec1()?;
        let plane = (size * size) as usize;
        for (i, (s, img)) in chunk.iter().zip(&images).enumerate() {
            let colors: Vec<[u8; 3]> = s.scene.objects.iter().map(|o| o.color.rgb()).collect();
            for (p, px) in img.pixels().enumerate() {
                let inside = colors
                    .iter()
                    .any(|c| (0..3).all(|k| px.0[k].abs_diff(c[k]) <= 2));
                if !inside {
                    continue;
                }
                for k in 0..3 {
                    let r = to_u8(recon[(i * 3 + k) * plane + p]);
                    color_err += f64::from(r.abs_diff(px.0[k]));
                }
                color_count += 3;
            }
        }
    }
    let mse = sq / count.max(1) as f64;
    let mean = z_sum / z_count.max(1) as f64;
    Ok(VaeEval {
        images: n,
        psnr_db: 10.0 * (1.0 / mse.max(1e-12)).log10(),
        object_color_error: color_err / color_count.max(1) as f64,
        latent_std: (z_sq / z_count.max(1) as f64 - mean * mean).max(0.0).sqrt(),
        latent_mean: mean,
    })
}

/// Reconstructions as images (for grids): decode the mean of q(z | x).
pub fn reconstruct(vae: &AutoencoderKL, x: &Tensor) -> Result<Tensor> {
    Ok(vae.decode(&vae.encode(x)?.mode())?.clamp(-1f32, 1f32)?)
}
