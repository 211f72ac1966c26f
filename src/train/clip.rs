//! Training the tiny CLIP contrastively on Shapes World.
//!
//! Each step draws a fresh batch of (image, caption) pairs from the training split (no held-out
//! colour-shape pair ever appears), embeds both, and minimises the symmetric cross-entropy of
//! the scaled cosine similarities, identical captions counting as matches.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::Serialize;

use super::checkpoint;
use super::optim::{clip_grad_norm, lr_at, AdamW, AdamWConfig};
use super::prefetch::Prefetch;
use crate::clip::bundle::{tokenize, ClipBundle};
use crate::clip::eval::{zero_shot, ZeroShot};
use crate::clip::{
    contrastive_loss, images_tensor, truth_targets, Clip, ClipConfig, MAX_LOGIT_SCALE,
};
use crate::shapes::{render, sample_at, WorldConfig};
use crate::text::ClipTokenizer;
use crate::{weights, Result};

/// Settings of one training run.
#[derive(Clone, Debug, Serialize)]
pub struct ClipTrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: usize,
    pub seed: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub p_two_objects: f64,
    /// Save a checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// L2-normalise embeddings before the dot product (CLIP does; turning it off is one of the
    /// classic mistakes chapter 4 demonstrates).
    pub l2_normalize: bool,
    /// Replace the match targets by uniform ones (1/B everywhere): the other classic mistake,
    /// which removes any reason to tell pairs apart.
    pub soft_targets: bool,
    /// Take the text tower and its projection from this trained CLIP and keep them frozen:
    /// only the image side (tower, projection) and the temperature learn. A UNet trained on
    /// that text tower's hidden states stays valid (the mirror of LiT, Zhai et al. 2022, which
    /// locks the image tower).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen_text: Option<std::path::PathBuf>,
}

impl Default for ClipTrainConfig {
    fn default() -> Self {
        ClipTrainConfig {
            // Enough for the quality bar from scratch with a margin (zero-shot seen 96.5%,
            // held-out 100%; 600 steps reach 95.3%): 261 s on two cores.
            steps: 700,
            batch_size: 128,
            lr: 1e-3,
            warmup: 100,
            seed: 0,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            p_two_objects: 0.5,
            checkpoint_every: 100,
            l2_normalize: true,
            soft_targets: false,
            frozen_text: None,
        }
    }
}

/// One step's training data.
struct Batch {
    samples: Vec<crate::shapes::Sample>,
    /// Images (B, 3, H, W).
    x: Tensor,
    /// Caption token ids (B, T) and each caption's end-of-text position.
    ids: Tensor,
    eot: Vec<usize>,
    /// Which captions match which images (B, B).
    targets: Tensor,
}

/// What a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct ClipTrainReport {
    pub steps: usize,
    pub resumed_from: usize,
    pub seconds: f64,
    pub final_loss: f64,
    pub final_batch_accuracy: f64,
    pub logit_scale: f64,
    pub zero_shot: ZeroShot,
}

/// One step's numbers, for progress displays.
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub lr: f64,
}

/// Trains from scratch (or from `checkpoint` when `resume`), writes the model to `out` with its
/// config and training metadata, and evaluates zero-shot accuracy. `on_step` sees every step;
/// returning `false` stops the run early (a checkpoint is written and `Ok(None)` returned).
pub fn train_clip(
    tokenizer: &ClipTokenizer,
    model_config: &ClipConfig,
    cfg: &ClipTrainConfig,
    out: &Path,
    checkpoint_path: &Path,
    resume: bool,
    on_step: &mut dyn FnMut(&StepStats) -> bool,
) -> Result<Option<ClipTrainReport>> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Clip::new(
        model_config,
        weights::seeded_var_builder(&varmap, cfg.seed, &device),
    )?;
    if let Some(path) = &cfg.frozen_text {
        let loaded = weights::load(path, &device)?;
        weights::load_selected(&varmap, &loaded, path, &|n| is_text_var(n))?;
    }
    let frozen = cfg.frozen_text.is_some();
    let vars: Vec<_> = weights::sorted_vars(&varmap)
        .into_iter()
        .filter(|(n, _)| !(frozen && is_text_var(n)))
        .collect();
    let plain_vars: Vec<candle_core::Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let fingerprint = serde_json::json!({ "model": model_config, "train": cfg }).to_string();
    let start_step = if resume && checkpoint_path.exists() {
        checkpoint::load(checkpoint_path, &varmap, &mut opt, &fingerprint)?
    } else {
        0
    };
    // 1. Fresh batches, each a pure function of (seed, step), built one step ahead.
    let mut batches = {
        let (world, size) = (
            WorldConfig {
                p_two_objects: cfg.p_two_objects,
                ..WorldConfig::default()
            },
            model_config.image_size as u32,
        );
        let (tokenizer, cfg, device) = (tokenizer.clone(), cfg.clone(), device.clone());
        Prefetch::new(start_step..cfg.steps, 2, move |step| {
            let samples: Vec<_> = (0..cfg.batch_size as u64)
                .map(|i| sample_at(&world, cfg.seed, (step * cfg.batch_size) as u64 + i))
                .collect();
            let images: Vec<_> = samples.iter().map(|s| render(&s.scene, size)).collect();
            let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
            let x = images_tensor(&images, &device)?; // (B, 3, 32, 32)
            let (ids, eot) = tokenize(&tokenizer, &captions, &device)?; // (B, T)
            let targets = if cfg.soft_targets {
                // everything "matches"
                Tensor::ones((samples.len(), samples.len()), DType::F32, &device)?
            } else {
                truth_targets(&samples, &device)? // every true caption in the batch is a match
            };
            Ok(Batch {
                samples,
                x,
                ids,
                eot,
                targets,
            })
        })
    };
    let started = Instant::now();
    let (mut last_loss, mut last_acc) = (f64::NAN, f64::NAN);
    for step in start_step..cfg.steps {
        let Batch {
            samples,
            x,
            ids,
            eot,
            targets,
        } = batches.next_batch()?;
        // 2. Embed both sides and score every image against every caption.
        let text = model.text_features(&ids, &eot)?; // (B, E)
        let text = if frozen { text.detach() } else { text };
        let out = contrastive_loss(
            &model.image_features(&x)?,
            &text,
            &model.scale()?,
            &targets,
            cfg.l2_normalize,
        )?;
        // 3. Backpropagate, clip, update; keep the temperature in CLIP's range.
        let mut grads = out.loss.backward()?;
        clip_grad_norm(&mut grads, &plain_vars, cfg.max_grad_norm)?;
        let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.lr);
        opt.update(&grads, lr)?;
        let clamped = model.logit_scale.clamp(0.0, MAX_LOGIT_SCALE.ln())?;
        if let Some((_, v)) = weights::sorted_vars(&varmap)
            .into_iter()
            .find(|(n, _)| n == "logit_scale")
        {
            v.set(&clamped)?;
        }
        last_loss = f64::from(out.loss.to_scalar::<f32>()?);
        last_acc = batch_accuracy(&out.logits, &samples)?;
        let go_on = on_step(&StepStats {
            step: step + 1,
            loss: last_loss,
            accuracy: last_acc,
            lr,
        });
        if !go_on {
            checkpoint::save(checkpoint_path, &varmap, &opt, &fingerprint)?;
            return Ok(None);
        }
        if (step + 1) % cfg.checkpoint_every == 0 && step + 1 < cfg.steps {
            checkpoint::save(checkpoint_path, &varmap, &opt, &fingerprint)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let logit_scale = f64::from(model.logit_scale.exp()?.to_scalar::<f32>()?);
    let bundle = ClipBundle {
        model,
        varmap,
        tokenizer: tokenizer.clone(),
        metadata: HashMap::new(),
        device,
    };
    let zero_shot = zero_shot(&bundle, 40, cfg.seed + 1_000_003)?;
    let report = ClipTrainReport {
        steps: cfg.steps,
        resumed_from: start_step,
        seconds,
        final_loss: last_loss,
        final_batch_accuracy: last_acc,
        logit_scale,
        zero_shot,
    };
    let metadata = HashMap::from([
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
    weights::save_varmap(out, &bundle.varmap, &metadata)?;
    checkpoint::save(checkpoint_path, &bundle.varmap, &opt, &fingerprint)?;
    Ok(Some(report))
}

/// The text tower and its projection (what `frozen_text` keeps).
pub fn is_text_var(name: &str) -> bool {
    name.starts_with("text_model.") || name.starts_with("text_projection.")
}

/// Share of images whose best-scoring caption is a true description of them.
fn batch_accuracy(logits: &candle_core::Tensor, samples: &[crate::shapes::Sample]) -> Result<f64> {
    let best: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    let ok = best
        .iter()
        .enumerate()
        .filter(|(i, &j)| samples[j as usize].claim.is_true_of(&samples[*i].scene))
        .count();
    Ok(ok as f64 / samples.len().max(1) as f64)
}
