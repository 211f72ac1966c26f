//! Training the VAE on Shapes World: reconstruct each image through the 4x8x8 bottleneck, with
//! a small KL term that keeps q(z | x) close to N(0, I).
//!
//! ```text
//! loss = mean (decode(z) - x)^2  +  kl_weight * mean_batch KL(q(z | x) || N(0, I)),
//! z = mean + exp(logvar / 2) * eps
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::optim::{clip_grad_norm, lr_at, AdamW, AdamWConfig};
use super::prefetch::Prefetch;
use crate::clip::images_tensor;
use crate::shapes::{render, sample_at, WorldConfig};
use crate::vae::eval::{evaluate, reconstruct, to_u8, VaeEval};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::{weights, Result};

/// Settings of one VAE training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaeTrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: usize,
    pub seed: u64,
    pub kl_weight: f64,
    pub max_grad_norm: f64,
    /// Save a checkpoint (and a reconstruction grid) every this many steps.
    pub checkpoint_every: usize,
    /// Held-out images for the final evaluation.
    pub eval_images: usize,
    /// Start the posterior's log-variance here (the logvar half of `quant_conv.bias`). 0 (unit
    /// noise on the latents at first, like diffusers' initialisation) reconstructed slightly
    /// better than -6 (a narrow posterior from step one), and the UNet trained on its latents
    /// followed prompts slightly better; see data/README.md.
    pub init_logvar: Option<f64>,
}

impl Default for VaeTrainConfig {
    fn default() -> Self {
        Self {
            steps: 3500,
            batch_size: 32,
            lr: 1e-3,
            warmup: 50,
            seed: 0,
            kl_weight: 1e-6,
            max_grad_norm: 1.0,
            checkpoint_every: 100,
            eval_images: 500,
            init_logvar: Some(0.0),
        }
    }
}

/// What a run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaeTrainReport {
    pub steps: usize,
    pub resumed_from: usize,
    pub seconds: f64,
    pub seconds_per_step: f64,
    pub final_loss: f64,
    pub eval: VaeEval,
    pub scaling_factor: f64,
}

/// One step's numbers, for progress displays.
pub struct VaeStepStats {
    pub step: usize,
    pub loss: f64,
    /// PSNR of this batch's reconstructions (dB, pixels in [0, 1]).
    pub psnr_db: f64,
    pub lr: f64,
}

/// `10 log10(1 / mse)` for an MSE measured on [-1, 1] pixels (divide by 4 for [0, 1]).
pub fn psnr_from_mse(mse_pm1: f64) -> f64 {
    10.0 * (4.0 / mse_pm1.max(1e-12)).log10()
}

/// Trains from scratch (or from `checkpoint_path` when `resume`), writes the model to `out` with
/// its config (including the measured `scaling_factor`) and report. Every `checkpoint_every`
/// steps a checkpoint and `recon_dir/recon_STEP.png` (originals above, reconstructions below)
/// are written. `on_step` returning `false` stops early (checkpoint written, `Ok(None)`).
pub fn train_vae(
    model_config: &VaeConfig,
    cfg: &VaeTrainConfig,
    out: &Path,
    checkpoint_path: &Path,
    recon_dir: Option<PathBuf>,
    resume: bool,
    on_step: &mut dyn FnMut(&VaeStepStats) -> bool,
) -> Result<Option<VaeTrainReport>> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vae = AutoencoderKL::new(
        model_config,
        weights::seeded_var_builder(&varmap, cfg.seed, &device),
    )?;
    if let Some(logvar) = cfg.init_logvar {
        set_logvar_bias(&varmap, model_config.latent_channels, logvar)?;
    }
    let vars = weights::sorted_vars(&varmap);
    let plain_vars: Vec<candle_core::Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(vars, adam)?;
    let fingerprint = serde_json::json!({ "model": model_config, "train": cfg }).to_string();
    let start_step = if resume && checkpoint_path.exists() {
        checkpoint::load(checkpoint_path, &varmap, &mut opt, &fingerprint)?
    } else {
        0
    };
    let world = WorldConfig::default();
    let size = model_config.sample_size as u32;
    let started = Instant::now();
    let mut last_loss = f64::NAN;
    // 1. A fresh batch of images for every step, a pure function of (seed, step), rendered one
    // step ahead on a helper thread while this one trains.
    let mut batches = {
        let (batch_size, seed) = (cfg.batch_size as u64, cfg.seed);
        let device = device.clone();
        Prefetch::new(start_step..cfg.steps, 2, move |step| {
            let first = step as u64 * batch_size;
            let images: Vec<_> = (first..first + batch_size)
                .map(|i| render(&sample_at(&world, seed, i).scene, size))
                .collect();
            Ok(images_tensor(&images, &device)?) // (B, 3, H, W)
        })
    };
    for step in start_step..cfg.steps {
        let x = batches.next_batch()?; // (B, 3, H, W)
        let mut rng = crate::support::seeded_rng(
            cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        // 2. Encode to q(z | x), sample z, decode.
        let dist = vae.encode(&x)?; // mean, logvar: (B, 4, h, w)
        let eps = crate::noising::randn_tensor(dist.mean.dims(), &mut rng, &device)?;
        let recon = vae.decode(&dist.sample(&eps)?)?; // (B, 3, H, W)

        // 3. Reconstruction error plus the small KL pull towards N(0, I).
        let mse = (&recon - &x)?.sqr()?.mean_all()?;
        let kl = dist.kl()?.mean_all()?;
        let loss = (&mse + (kl * cfg.kl_weight)?)?;
        // 4. Backpropagate, clip, update.
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &plain_vars, cfg.max_grad_norm)?;
        let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.lr);
        opt.update(&grads, lr)?;
        last_loss = f64::from(loss.to_scalar::<f32>()?);
        let stats = VaeStepStats {
            step: step + 1,
            loss: last_loss,
            psnr_db: psnr_from_mse(f64::from(mse.to_scalar::<f32>()?)),
            lr,
        };
        if !on_step(&stats) {
            checkpoint::save(checkpoint_path, &varmap, &opt, &fingerprint)?;
            return Ok(None);
        }
        if (step + 1) % cfg.checkpoint_every == 0 && step + 1 < cfg.steps {
            checkpoint::save(checkpoint_path, &varmap, &opt, &fingerprint)?;
            if let Some(dir) = &recon_dir {
                write_recon_grid(&vae, &x, &dir.join(format!("recon_{:05}.png", step + 1)))?;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let eval = evaluate(&vae, cfg.eval_images)?;
    let scaling_factor = 1.0 / eval.latent_std.max(1e-6);
    let final_config = VaeConfig {
        scaling_factor,
        ..model_config.clone()
    };
    let done = cfg.steps.saturating_sub(start_step).max(1);
    let report = VaeTrainReport {
        steps: cfg.steps,
        resumed_from: start_step,
        seconds,
        seconds_per_step: seconds / done as f64,
        final_loss: last_loss,
        eval,
        scaling_factor,
    };
    let metadata = HashMap::from([
        (
            "config".to_string(),
            serde_json::to_string(&final_config).unwrap_or_default(),
        ),
        (
            "training".to_string(),
            serde_json::to_string(cfg).unwrap_or_default(),
        ),
        (
            "report".to_string(),
            serde_json::to_string(&report).unwrap_or_default(),
        ),
    ]);
    weights::save_varmap(out, &varmap, &metadata)?;
    checkpoint::save(checkpoint_path, &varmap, &opt, &fingerprint)?;
    Ok(Some(report))
}

/// Sets the log-variance half of `quant_conv.bias` (moments = [mean; logvar]) to `logvar`.
fn set_logvar_bias(varmap: &VarMap, latent_channels: usize, logvar: f64) -> Result<()> {
    let (_, bias) = weights::sorted_vars(varmap)
        .into_iter()
        .find(|(n, _)| n == "quant_conv.bias")
        .ok_or_else(|| candle_core::Error::Msg("the VAE has no quant_conv.bias".into()))?;
    let mut v: Vec<f32> = bias.as_tensor().to_vec1()?;
    v[latent_channels..]
        .iter_mut()
        .for_each(|b| *b = logvar as f32);
    bias.set(&candle_core::Tensor::new(v, &Device::Cpu)?)?;
    Ok(())
}

/// Up to 8 originals in the top row and their reconstructions below, 4x enlarged.
fn write_recon_grid(vae: &AutoencoderKL, x: &candle_core::Tensor, path: &Path) -> Result<()> {
    let n = x.dim(0)?.min(8);
    let x = x.narrow(0, 0, n)?;
    let recon = reconstruct(vae, &x)?;
    let rows = [x, recon].map(|t| tensor_images(&t));
    let images: Vec<image::RgbImage> = rows.into_iter().collect::<Result<Vec<_>>>()?.concat();
    let grid = crate::support::grid::image_grid(&images, n, 4);
    crate::support::image_io::save_png(&grid, path)
}

/// (B, 3, H, W) in [-1, 1] to RGB images.
pub fn tensor_images(t: &candle_core::Tensor) -> Result<Vec<image::RgbImage>> {
    let (b, _, h, w) = t.dims4()?;
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let plane = h * w;
    Ok((0..b)
        .map(|i| {
            image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                image::Rgb([0, 1, 2].map(|k| to_u8(v[(i * 3 + k) * plane + p])))
            })
        })
        .collect())
}
