//! Images and latent files in and out of the VAE: what `inkdrop vae` and chapter 6 call.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{Rgb, RgbImage};

use super::eval::to_u8;
use super::AutoencoderKL;
use crate::clip::images_tensor;
use crate::train::vae::tensor_images;
use crate::{weights, Error, Result};

/// The name of the tensor in a latent file.
pub const LATENTS_KEY: &str = "latents";

/// `latents = mode(q(z | x)) * scaling_factor` for one image: (1, 4, h, w), the space the UNet
/// works in.
pub fn encode_image(vae: &AutoencoderKL, img: &RgbImage) -> Result<Tensor> {
    let x = images_tensor(std::slice::from_ref(img), &Device::Cpu)?; // (1, 3, H, W)
    Ok((vae.encode(&x)?.mode() * vae.config.scaling_factor)?)
}

/// `decode(latents / scaling_factor)` for (N, 4, h, w) latents, as images.
pub fn decode_latents(vae: &AutoencoderKL, latents: &Tensor) -> Result<Vec<RgbImage>> {
    let x = vae.decode(&(latents / vae.config.scaling_factor)?)?; // (N, 3, H, W)
    tensor_images(&x)
}

/// `10 log10(255^2 / MSE)` between two same-size images.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let n = (a.len()).max(1) as f64;
    let se: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
        .sum();
    10.0 * (255.0f64.powi(2) / (se / n).max(1e-12)).log10()
}

/// Per-pixel error, `gain` x the mean absolute difference over R, G, B, black (none) to white.
pub fn error_map(a: &RgbImage, b: &RgbImage, gain: f32) -> RgbImage {
    RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
        let e: f32 = (0..3).map(|k| f32::from(p[k].abs_diff(q[k]))).sum::<f32>() / 3.0;
        let v = (e * gain).min(255.0) as u8;
        Rgb([v, v, v])
    })
}

/// Writes latents (N, 4, h, w) or (4, h, w) to a safetensors file with the scaling factor.
pub fn save_latents(
    path: &Path,
    latents: &Tensor,
    scaling_factor: f64,
    source: &str,
) -> Result<()> {
    let meta = HashMap::from([
        ("scaling_factor".to_string(), scaling_factor.to_string()),
        ("source".to_string(), source.to_string()),
        (
            "note".to_string(),
            "latents = mode(q(z|x)) * scaling_factor, written by inkdrop vae encode".to_string(),
        ),
    ]);
    weights::save(path, &[(LATENTS_KEY.to_string(), latents.clone())], &meta)
}

/// Reads a latent file and checks it against the VAE: (N, 4, h, w) or (4, h, w), returned as
/// (N, 4, h, w).
pub fn load_latents(path: &Path, vae: &AutoencoderKL) -> Result<Tensor> {
    let loaded = weights::load(path, &Device::Cpu)?;
    let t = loaded
        .tensors
        .get(LATENTS_KEY)
        .ok_or_else(|| Error::Weights {
            path: path.to_path_buf(),
            reason: format!(
                "no tensor named '{LATENTS_KEY}'; write latent files with `inkdrop vae encode`"
            ),
        })?;
    let t = if t.rank() == 3 {
        t.unsqueeze(0)?
    } else {
        t.clone()
    };
    let want = vae.config.latent_shape();
    if t.rank() != 4 || t.dims()[1..] != want {
        return Err(Error::Weights {
            path: path.to_path_buf(),
            reason: format!(
                "latents have shape {:?}, this VAE decodes (N, {}, {}, {}); encode with the same VAE (`inkdrop vae encode`)",
                t.dims(),
                want[0],
                want[1],
                want[2]
            ),
        });
    }
    Ok(t)
}

/// A latent (4, h, w) as 4 grey images, each channel stretched over its own min..max.
pub fn latent_channel_images(latent: &Tensor) -> Result<Vec<RgbImage>> {
    let (c, h, w) = latent.dims3()?;
    let v: Vec<f32> = latent.flatten_all()?.to_vec1()?;
    Ok((0..c)
        .map(|ch| {
            let plane = &v[ch * h * w..(ch + 1) * h * w];
            let lo = plane.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = plane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let t = (plane[y as usize * w + x as usize] - lo) / (hi - lo).max(1e-6);
                let g = to_u8(2.0 * t - 1.0);
                Rgb([g, g, g])
            })
        })
        .collect())
}
