//! Training the UNet to predict noise, in the six steps of the seed article:
//!
//! 1. take an image (its VAE latent, encoded once and cached) and its caption,
//! 2. sample a timestep t and noise eps, and make x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps,
//! 3. predict the noise: eps_hat = UNet(x_t, t, text),
//! 4. measure the gap: loss = mean (eps_hat - eps)^2,
//! 5. update the weights (AdamW),
//! 6. repeat.
//!
//! Plus what real training needs: 10% of captions dropped to the empty prompt (so the same model
//! also predicts unconditional noise, which classifier-free guidance needs), an exponential
//! moving average (EMA) of the weights, warmup + cosine learning rate, gradient clipping, the
//! loss tracked per t bucket, a sample grid now and then, checkpoints and resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::caption_states::CaptionStates;
use super::checkpoint;
use super::grounding::{binding_loss, grounding_targets, latent_grids, token_loss};
use super::optim::{clip_grad_norm, ema_update, lr_at, AdamW, AdamWConfig};
use crate::clip::bundle::ClipBundle;
use crate::clip::images_tensor;
use crate::noising::{add_noise_tensor, randn_tensor, velocity_tensor};
use crate::schedule::NoiseSchedule;
use crate::schedulers::PredictionType;
use crate::shapes::scene::Scene;
use crate::shapes::{render, sample_at, WorldConfig};
use crate::unet::attention::AttentionRecorder;
use crate::unet::sample::ddpm_sample;
use crate::unet::text_encoder::{self, ContextPadding};
use crate::unet::{Parameterization, UNet2DConditionModel, UNetConfig};
use crate::vae::AutoencoderKL;
use crate::{weights, Error, Result};

/// Settings of one UNet training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UNetTrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: usize,
    pub seed: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// `ema = decay * ema + (1 - decay) * weights` after every step.
    pub ema_decay: f64,
    /// Warm the EMA up as diffusers' `EMAModel` does: the decay after step s (from 0) is
    /// `min(ema_decay, (1 + s) / (10 + s))`, 0 after the first, so the average starts from
    /// trained weights. A constant 0.999 from the start keeps the random initial weights in
    /// it: 0.999^3000 = 5% of the average after 3,000 steps, 37% after 1,000. Runs written
    /// before this setting existed used the constant decay (false when absent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ema_warmup: bool,
    /// Share of captions replaced by the empty prompt.
    pub caption_dropout: f64,
    /// Distinct training images (encoded once, then reused every epoch).
    pub dataset_size: usize,
    /// Share of training images with two objects (Shapes World draws half; more of them gives
    /// the model more captions with a relation to learn from).
    #[serde(
        default = "default_p_two_objects",
        skip_serializing_if = "is_default_p_two_objects"
    )]
    pub p_two_objects: f64,
    /// Checkpoint (and sample grid) every this many steps.
    pub checkpoint_every: usize,
    /// Min-SNR loss weighting (Hang et al. 2023): sample i's squared error is weighted by
    /// `min(SNR(t_i), gamma) / SNR(t_i)` (eps), `min(SNR + 1, gamma) / (SNR + 1)` (v; see
    /// [`min_snr_weight`]), so the nearly clean timesteps, whose noise is hardest to see and
    /// matters least for the picture, stop dominating the gradient. None: plain MSE.
    #[serde(default)]
    pub snr_gamma: Option<f64>,
    /// Start from these weights (a finished run's output) instead of random ones: training
    /// continues with a fresh optimizer, learning-rate schedule and EMA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Stop after this many steps (of a run planned for `steps`, whose learning-rate schedule
    /// still spans `steps`) and write the output as if the run had ended there. Not part of the
    /// run's identity, so `--resume` continues either way.
    #[serde(skip)]
    pub stop_after: Option<usize>,
    /// Fine-tune a copy of CLIP's text tower together with the UNet (the denoising loss's
    /// gradient reaches the text), and ship it in the UNet's file ([`text_encoder`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub train_text_encoder: bool,
    /// What the UNet learns to output (eps or v) and on which schedule (zero terminal SNR or
    /// not); left out of the settings at Stable Diffusion v1's default, so older checkpoints
    /// still resume.
    #[serde(default, skip_serializing_if = "is_default_parameterization")]
    pub parameterization: Parameterization,
    /// Weight of the grounding loss on the cross-attention maps (TokenCompose's token loss,
    /// [`super::grounding`]): the words naming an object are asked to attend to where it is.
    /// None: the denoising loss alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grounding_weight: Option<f64>,
    /// Weight of the binding loss ([`super::grounding::binding_loss`]): where an object is
    /// drawn, its cells are asked to read its own words rather than the other object's. None:
    /// off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_weight: Option<f64>,
    /// What the context holds after `<|endoftext|>` ([`ContextPadding`]); stored in the UNet's
    /// file, which is then always read the same way.
    #[serde(default, skip_serializing_if = "is_kept")]
    pub context_padding: ContextPadding,
}

fn is_kept(p: &ContextPadding) -> bool {
    *p == ContextPadding::Kept
}

fn is_default_parameterization(p: &Parameterization) -> bool {
    *p == Parameterization::default()
}

impl Default for UNetTrainConfig {
    fn default() -> Self {
        Self {
            steps: 3000,
            batch_size: 64,
            // 5e-4, then 1e-3, until 2026-12-06; from random weights, 3,000 steps at 1e-3
            // followed prompts better than at 5e-4, and at 2e-3 better again (data/README.md,
            // "The EMA's warm-up").
            lr: 2e-3,
            warmup: 200,
            seed: 0,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            ema_decay: 0.999,
            ema_warmup: true,
            caption_dropout: 0.1,
            dataset_size: 40_000,
            p_two_objects: default_p_two_objects(),
            checkpoint_every: 250,
            snr_gamma: Some(5.0),
            init: None,
            stop_after: None,
            train_text_encoder: false,
            parameterization: Parameterization::default(),
            grounding_weight: None,
            binding_weight: None,
            context_padding: ContextPadding::Kept,
        }
    }
}

fn default_p_two_objects() -> f64 {
    WorldConfig::default().p_two_objects
}

// Left out of a run's settings when it is the default, so checkpoints made before the setting
// existed still resume.
fn is_default_p_two_objects(p: &f64) -> bool {
    *p == default_p_two_objects()
}

/// Mean training loss per tenth of the timestep range (t in 0..100, 100..200, ...), over the
/// last `checkpoint_every` steps.
pub const T_BUCKETS: usize = 10;

/// What a run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UNetTrainReport {
    pub steps: usize,
    pub resumed_from: usize,
    pub seconds: f64,
    pub seconds_per_step: f64,
    pub cache_seconds: f64,
    pub final_loss: f64,
    /// Mean loss per t bucket over the final stretch of training.
    pub loss_by_t: Vec<f64>,
    /// Noise-prediction MSE of the EMA weights on held-out latents (fixed t and noise).
    pub held_out_mse: f64,
}

/// One step's numbers, for progress displays.
pub struct UNetStepStats {
    pub step: usize,
    pub loss: f64,
    /// The grounding loss (before its weight), when it is on.
    pub token_loss: Option<f64>,
    /// The binding loss (before its weight), when it is on.
    pub binding_loss: Option<f64>,
    pub lr: f64,
}

/// The training set: latents of `dataset_size` Shapes World images and their captions.
pub struct LatentDataset {
    /// (N, 4, h, w), already multiplied by the VAE's scaling factor.
    pub latents: Tensor,
    pub captions: Vec<String>,
    /// The scenes the latents were drawn from (where each object is, for the grounding loss).
    pub scenes: Vec<Scene>,
}

/// Encodes samples `0..n` of `seed` with the VAE (the mean of q(z | x), times the scaling
/// factor), in batches of 100, or reads them from `cache` if a file made the same way is there.
pub fn latent_dataset(
    vae: &AutoencoderKL,
    seed: u64,
    n: usize,
    cache: Option<&Path>,
) -> Result<LatentDataset> {
    latent_dataset_of(vae, &WorldConfig::default(), seed, n, cache)
}

/// [`latent_dataset`] for scenes drawn with `world`'s settings (e.g. more two-object scenes).
pub fn latent_dataset_of(
    vae: &AutoencoderKL,
    world: &WorldConfig,
    seed: u64,
    n: usize,
    cache: Option<&Path>,
) -> Result<LatentDataset> {
    // The key names the VAE by its config and by its latents for one probe image, so a
    // retrained VAE never reuses another's cache.
    let probe = images_tensor(
        &[render(
            &sample_at(world, seed, 0).scene,
            vae.config.sample_size as u32,
        )],
        &Device::Cpu,
    )?;
    let probe = vae.encode(&probe)?.mode().flatten_all()?.to_vec1::<f32>()?;
    let key = format!(
        "{}|{seed}|{n}|{probe:?}|two objects {}",
        serde_json::to_string(&vae.config).unwrap_or_default(),
        world.p_two_objects
    );
    if let Some(path) = cache.filter(|p| p.exists()) {
        if let Ok(loaded) = weights::load(path, &Device::Cpu) {
            let same = loaded.metadata.get("key") == Some(&key);
            if let (true, Some(latents), Some(caps)) = (
                same,
                loaded.tensors.get("latents"),
                loaded.metadata.get("captions"),
            ) {
                if let Ok(captions) = serde_json::from_str::<Vec<String>>(caps) {
                    // Scenes are cheap to draw again (no rendering); the captions say whether
                    // they are the same ones.
                    let samples: Vec<_> =
                        (0..n).map(|i| sample_at(world, seed, i as u64)).collect();
                    if samples.iter().zip(&captions).all(|(s, c)| s.caption == *c) {
                        return Ok(LatentDataset {
                            latents: latents.clone(),
                            captions,
                            scenes: samples.into_iter().map(|s| s.scene).collect(),
                        });
                    }
                }
            }
        }
    }
    let size = vae.config.sample_size as u32;
    let mut parts = Vec::new();
    let mut captions = Vec::with_capacity(n);
    let mut scenes = Vec::with_capacity(n);
    for start in (0..n).step_by(100) {
        let samples: Vec<_> = (start..(start + 100).min(n))
            .map(|i| sample_at(world, seed, i as u64))
            .collect();
        let images: Vec<_> = samples.iter().map(|s| render(&s.scene, size)).collect();
        let x = images_tensor(&images, &Device::Cpu)?;
        parts.push((vae.encode(&x)?.mode() * vae.config.scaling_factor)?.detach()); // (100, 4, h, w)
        for s in samples {
            captions.push(s.caption);
            scenes.push(s.scene);
        }
    }
    let latents = Tensor::cat(&parts, 0)?;
    if let Some(path) = cache {
        let meta = HashMap::from([
            ("key".to_string(), key),
            (
                "captions".to_string(),
                serde_json::to_string(&captions).unwrap_or_default(),
            ),
        ]);
        weights::save(path, &[("latents".to_string(), latents.clone())], &meta)?;
    }
    Ok(LatentDataset {
        latents,
        captions,
        scenes,
    })
}

/// The EMA's decay after step `step` (from 0): `decay`, or with warm-up (diffusers'
/// `EMAModel.get_decay` without `use_ema_warmup`) `min(decay, (1 + s) / (10 + s))` and 0 at
/// s = 0, where the average becomes a copy of the weights.
pub fn ema_decay_at(step: usize, decay: f64, warmup: bool) -> f64 {
    match (warmup, step) {
        (false, _) => decay,
        (true, 0) => 0.0,
        (true, s) => decay.min((1 + s) as f64 / (10 + s) as f64),
    }
}

/// The EMA of every variable, in `sorted_vars` order.
struct Ema {
    decay: f64,
    warmup: bool,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    fn new(vars: &[(String, Var)], decay: f64, warmup: bool) -> Result<Self> {
        Ok(Self {
            decay,
            warmup,
            shadow: vars
                .iter()
                // A copy, not `detach()` (which would share the variable's storage):
                // `update` writes the shadow in place.
                .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
                .collect::<Result<_>>()?,
        })
    }

    /// `ema = decay_s * ema + (1 - decay_s) * w`, in place, after step `step` (from 0).
    fn update(&mut self, vars: &[(String, Var)], step: usize) -> Result<()> {
        let decay = ema_decay_at(step, self.decay, self.warmup);
        // The variables in parallel: most are too small to split across threads themselves.
        self.shadow
            .par_iter()
            .zip(vars)
            .try_for_each(|((_, s), (_, v))| ema_update(s, v.as_tensor(), decay))?;
        Ok(())
    }

    fn tensors(&self) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .map(|(n, t)| (format!("ema.{n}"), t.clone()))
            .collect()
    }
}

/// Trains the UNet on `data` with the text encoder of `clip` (frozen, or a copy trained along
/// with the UNet when `cfg.train_text_encoder`); writes the EMA weights to
/// `out` with the config and report, checkpoints (model, optimizer, EMA) to `checkpoint_path`,
/// and a sample grid for a few prompts to `samples_dir` at every checkpoint.
#[expect(
    clippy::too_many_arguments,
    reason = "the inputs of a training run; grouping them would only rename them"
)]
pub fn train_unet(
    model_config: &UNetConfig,
    cfg: &UNetTrainConfig,
    data: &LatentDataset,
    clip: &ClipBundle,
    vae: &AutoencoderKL,
    out: &Path,
    checkpoint_path: &Path,
    samples_dir: Option<PathBuf>,
    resume: bool,
    on_step: &mut dyn FnMut(&UNetStepStats) -> bool,
) -> Result<Option<UNetTrainReport>> {
    let dev = Device::Cpu;
    let param = cfg.parameterization;
    if param.rescale_betas_zero_snr && param.prediction_type == PredictionType::Epsilon {
        return Err(Error::InvalidSetting {
            what: "zero terminal SNR with epsilon prediction".into(),
            reason: "at alpha_bar = 0 the noise is x_t itself and says nothing about the picture; \
                     use --prediction-type v_prediction"
                .into(),
        });
    }
    let schedule = NoiseSchedule::new(param.schedule())?;
    let varmap = VarMap::new();
    let vb = weights::seeded_var_builder(&varmap, cfg.seed, &dev);
    let unet = UNet2DConditionModel::new(model_config, vb.clone())?;
    let own_text = if cfg.train_text_encoder {
        Some(text_encoder::copy_of_clip_text_tower(clip, &varmap, vb)?)
    } else {
        None
    };
    if let Some(init) = &cfg.init {
        // A file without a fine-tuned text tower leaves the copy of CLIP's in place.
        let loaded = weights::load(init, &dev)?;
        let prefix = format!("{}.", text_encoder::PREFIX);
        weights::load_selected(&varmap, &loaded, init, &|n| {
            !n.starts_with(&prefix) || loaded.tensors.contains_key(n)
        })?;
    }
    let encode = |texts: &[String]| {
        text_encoder::encoder_hidden_states(clip, own_text.as_ref(), texts, cfg.context_padding)
    };
    let vars = weights::sorted_vars(&varmap);
    let plain: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = AdamW::new(vars.clone(), adam)?;
    let mut ema = Ema::new(&vars, cfg.ema_decay, cfg.ema_warmup)?;
    let fingerprint =
        serde_json::json!({ "model": model_config, "train": cfg, "data": data.captions.len() })
            .to_string();
    let start_step = if resume && checkpoint_path.exists() {
        let step = checkpoint::load(checkpoint_path, &varmap, &mut opt, &fingerprint)?;
        let loaded = weights::load(checkpoint_path, &dev)?;
        for (name, t) in ema.shadow.iter_mut() {
            *t = loaded
                .tensors
                .get(&format!("ema.{name}"))
                .cloned()
                .ok_or_else(|| Error::Weights {
                    path: checkpoint_path.to_path_buf(),
                    reason: format!("no EMA tensor for {name}; run without --resume to start over"),
                })?;
        }
        step
    } else {
        0
    };
    let n = data.captions.len();
    if n == 0 {
        return Err(Error::InvalidSchedule("the latent dataset is empty".into()));
    }
    let started = Instant::now();
    // A frozen tower gives a caption the same states at every step: encode each distinct one
    // once (counted in the training time).
    let frozen_states = match own_text {
        None => Some(CaptionStates::new(&data.captions, &encode)?),
        Some(_) => None,
    };
    let mut last_loss = f64::NAN;
    let grids = latent_grids(model_config);
    let mut buckets = vec![(0f64, 0usize); T_BUCKETS];
    let mut recent = buckets.clone();
    let end = cfg.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    for step in start_step..end {
        // 1. A batch of latents and captions; every tenth caption becomes the empty prompt.
        let mut rng = crate::support::seeded_rng(
            cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let idx: Vec<u32> = (0..cfg.batch_size)
            .map(|_| rng.random_range(0..n) as u32)
            .collect();
        let x0 = data
            .latents
            .index_select(&Tensor::new(idx.as_slice(), &dev)?, 0)?; // (B, 4, 8, 8)
        let captions: Vec<String> = idx
            .iter()
            .map(|&i| {
                if rng.random_bool(cfg.caption_dropout) {
                    String::new()
                } else {
                    data.captions[i as usize].clone()
                }
            })
            .collect();
        let context = match &frozen_states {
            Some(states) => states.get(&captions)?, // (B, 16, 128), computed once
            None => encode(&captions)?,             // (B, 16, 128), trained with the UNet
        };

        // 2. A timestep per sample and the noise to add.
        let ts: Vec<usize> = (0..cfg.batch_size)
            .map(|_| rng.random_range(0..schedule.num_train_timesteps()))
            .collect();
        let eps = randn_tensor(x0.dims(), &mut rng, &dev)?; // (B, 4, 8, 8)
        let x_t = add_noise_tensor(&schedule, &x0, &eps, &ts)?;
        let t = Tensor::from_vec(
            ts.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            cfg.batch_size,
            &dev,
        )?;
        // 3. Predict the noise (or the velocity v = sqrt(ab) eps - sqrt(1 - ab) x0), keeping
        // the cross-attention maps when the grounding loss needs them.
        let (token_weight, binding_weight) = (
            cfg.grounding_weight.unwrap_or(0.0),
            cfg.binding_weight.unwrap_or(0.0),
        );
        let grounding = if token_weight > 0.0 || binding_weight > 0.0 {
            let scenes: Vec<&Scene> = idx.iter().map(|&i| &data.scenes[i as usize]).collect();
            grounding_targets(
                &clip.tokenizer,
                &captions,
                &scenes,
                &grids,
                context.dim(1)?,
                &dev,
            )?
        } else {
            None
        };
        let rec = grounding
            .as_ref()
            .map(|_| AttentionRecorder::cross_with_graph());
        let out = unet.forward(&x_t, &t, &context, rec.as_ref())?; // (B, 4, 8, 8)
        let target = match param.prediction_type {
            PredictionType::Epsilon => eps.clone(),
            PredictionType::VPrediction => velocity_tensor(&schedule, &x0, &eps, &ts)?,
        };
        // 4. The gap, per sample (for the per-t statistics) and overall.
        let per_sample = (&out - &target)?.sqr()?.flatten_from(1)?.mean(1)?; // (B,)
        let loss = per_sample.mean_all()?;
        let objective = match cfg.snr_gamma {
            Some(gamma) => {
                let w: Vec<f32> = ts
                    .iter()
                    .map(|&t| min_snr_weight(schedule.snr(t), gamma, param.prediction_type) as f32)
                    .collect();
                (&per_sample * Tensor::from_vec(w, cfg.batch_size, &dev)?)?.mean_all()?
            }
            None => loss.clone(),
        };
        let (mut objective, mut grounding_loss, mut bind_loss) = (objective, None, None);
        if let (Some(targets), Some(rec)) = (&grounding, &rec) {
            let maps = rec.take();
            if token_weight > 0.0 {
                let l = token_loss(&maps, targets)?;
                grounding_loss = Some(f64::from(l.to_scalar::<f32>()?));
                objective = (objective + (l * token_weight)?)?;
            }
            if binding_weight > 0.0 {
                let l = binding_loss(&maps, targets)?;
                bind_loss = Some(f64::from(l.to_scalar::<f32>()?));
                objective = (objective + (l * binding_weight)?)?;
            }
        }
        // 5. Update: gradients, clipping, AdamW, then the EMA.
        let mut grads = objective.backward()?;
        clip_grad_norm(&mut grads, &plain, cfg.max_grad_norm)?;
        let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.lr);
        opt.update(&grads, lr)?;
        ema.update(&vars, step)?;
        last_loss = f64::from(loss.to_scalar::<f32>()?);
        for (&t, l) in ts.iter().zip(per_sample.to_vec1::<f32>()?) {
            let b = &mut recent[t * T_BUCKETS / schedule.num_train_timesteps()];
            b.0 += f64::from(l);
            b.1 += 1;
        }
        // 6. Repeat, with checkpoints and a look at what it draws now and then.
        if !on_step(&UNetStepStats {
            step: step + 1,
            loss: last_loss,
            token_loss: grounding_loss,
            binding_loss: bind_loss,
            lr,
        }) {
            save_checkpoint(checkpoint_path, &varmap, &opt, &ema, &fingerprint)?;
            return Ok(None);
        }
        if (step + 1) % cfg.checkpoint_every == 0 || step + 1 == end {
            buckets = std::mem::replace(&mut recent, vec![(0.0, 0); T_BUCKETS]);
            if step + 1 < end {
                save_checkpoint(checkpoint_path, &varmap, &opt, &ema, &fingerprint)?;
                if let Some(dir) = &samples_dir {
                    let grid = sample_grid(&unet, &schedule, param, &encode, vae, cfg.seed)?;
                    crate::support::image_io::save_png(
                        &grid,
                        &dir.join(format!("samples_{:05}.png", step + 1)),
                    )?;
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The checkpoint keeps the raw weights (what --resume continues from), then the shipped
    // weights are the EMA.
    save_checkpoint(checkpoint_path, &varmap, &opt, &ema, &fingerprint)?;
    for ((_, v), (_, e)) in vars.iter().zip(&ema.shadow) {
        v.set(e)?;
    }
    let held_out_mse = held_out_loss(&unet, &schedule, param, &encode, vae, cfg.seed)?;
    let report = UNetTrainReport {
        steps: end,
        resumed_from: start_step,
        seconds,
        seconds_per_step: seconds / end.saturating_sub(start_step).max(1) as f64,
        cache_seconds: 0.0,
        final_loss: last_loss,
        loss_by_t: buckets
            .iter()
            .map(|(s, c)| s / (*c).max(1) as f64)
            .collect(),
        held_out_mse,
    };
    let mut metadata = HashMap::from([
        (
            "config".to_string(),
            serde_json::to_string(model_config).unwrap_or_default(),
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
    if param != Parameterization::default() {
        metadata.insert(
            Parameterization::KEY.to_string(),
            serde_json::to_string(&param).unwrap_or_default(),
        );
    }
    if cfg.context_padding != ContextPadding::Kept {
        metadata.insert(
            text_encoder::PADDING_KEY.to_string(),
            cfg.context_padding.name().to_string(),
        );
    }
    if own_text.is_some() {
        metadata.insert(
            text_encoder::CONFIG_KEY.to_string(),
            serde_json::to_string(&clip.model.config).unwrap_or_default(),
        );
    }
    weights::save_varmap(out, &varmap, &metadata)?;
    Ok(Some(report))
}

fn save_checkpoint(
    path: &Path,
    varmap: &VarMap,
    opt: &AdamW,
    ema: &Ema,
    fingerprint: &str,
) -> Result<()> {
    checkpoint::save_with(path, varmap, opt, &ema.tensors(), fingerprint)
}

/// Min-SNR loss weighting (Hang et al. 2023) in the space the model predicts in. The eps-MSE is
/// SNR times the x0-MSE, so `min(SNR, gamma) / SNR` turns it into min(SNR, gamma) x0-MSE. The
/// v-MSE is (SNR + 1) times the x0-MSE (Salimans & Ho 2022's "SNR + 1" weighting), and
/// `min(SNR + 1, gamma) / (SNR + 1)` keeps that weight where it is below gamma: the noisiest
/// steps, where the layout is decided, count with weight 1 instead of ~SNR, and only the
/// nearly clean steps are capped.
pub fn min_snr_weight(snr: f64, gamma: f64, prediction_type: PredictionType) -> f64 {
    let s = match prediction_type {
        PredictionType::Epsilon => snr,
        PredictionType::VPrediction => snr + 1.0,
    };
    s.min(gamma) / s
}

/// Prompts of the periodic sample grid.
pub const GRID_PROMPTS: [&str; 8] = [
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a green star",
    "a large purple circle",
    "a white square on a black background",
    "a red circle above a blue square",
    "an orange triangle at the top left",
];

/// One sample per grid prompt (DDPM, 50 steps, guidance 4), decoded, in a row.
pub fn sample_grid(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    param: Parameterization,
    encode: &dyn Fn(&[String]) -> Result<Tensor>,
    vae: &AutoencoderKL,
    seed: u64,
) -> Result<image::RgbImage> {
    let prompts: Vec<String> = GRID_PROMPTS.iter().map(|s| s.to_string()).collect();
    let cond = encode(&prompts)?.detach();
    let uncond = encode(&vec![String::new(); prompts.len()])?.detach();
    let mut rng = crate::support::seeded_rng(seed + 77);
    let latents = ddpm_sample(
        unet,
        schedule,
        param.prediction_type,
        &cond,
        &uncond,
        4.0,
        50,
        &mut rng,
    )?;
    let images = super::vae::tensor_images(
        &vae.decode(&(latents / vae.config.scaling_factor)?)?
            .clamp(-1f32, 1f32)?,
    )?;
    Ok(crate::support::grid::image_grid(&images, images.len(), 4))
}

/// Noise-prediction MSE on 256 held-out images, at fixed timesteps and noise.
pub fn held_out_loss(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    param: Parameterization,
    encode: &dyn Fn(&[String]) -> Result<Tensor>,
    vae: &AutoencoderKL,
    seed: u64,
) -> Result<f64> {
    let data = latent_dataset(vae, crate::vae::eval::HELD_OUT_SEED, 256, None)?;
    let mut rng = crate::support::seeded_rng(seed + 4242);
    let (mut total, mut count) = (0f64, 0usize);
    for start in (0..256).step_by(64) {
        let x0 = data.latents.narrow(0, start, 64)?;
        let context = encode(&data.captions[start..start + 64])?.detach();
        let ts: Vec<usize> = (0..64)
            .map(|_| rng.random_range(0..schedule.num_train_timesteps()))
            .collect();
        let eps = randn_tensor(x0.dims(), &mut rng, &Device::Cpu)?;
        let x_t = add_noise_tensor(schedule, &x0, &eps, &ts)?;
        let t = Tensor::from_vec(
            ts.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            64,
            &Device::Cpu,
        )?;
        let out = unet.forward(&x_t, &t, &context, None)?;
        // A v model's noise estimate: eps = sqrt(ab) v + sqrt(1 - ab) x_t.
        let eps_hat = match param.prediction_type {
            PredictionType::Epsilon => out,
            PredictionType::VPrediction => add_noise_tensor(schedule, &out, &x_t, &ts)?,
        };
        total += f64::from((eps_hat - eps)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
        count += x0.elem_count();
    }
    Ok(total / count.max(1) as f64)
}
