//! Loading a trained UNet (the shipped `data/unet.safetensors` or any file `inkdrop train unet`
//! wrote): weights plus the config stored in the file's metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::text_encoder::{self, ContextPadding};
use super::{Parameterization, UNet2DConditionModel, UNetConfig};
use crate::clip::bundle::ClipBundle;
use crate::clip::ClipTextTransformer;
use crate::noising::add_noise_tensor;
use crate::schedule::NoiseSchedule;
use crate::schedulers::PredictionType;
use crate::weights;
use crate::{Error, Result};

/// Where the shipped UNet lives.
pub fn default_unet_path() -> PathBuf {
    crate::support::files::crate_root().join("data/unet.safetensors")
}

/// A loaded UNet and its file's metadata (config, training settings, report).
pub struct UNetBundle {
    pub unet: UNet2DConditionModel,
    pub varmap: VarMap,
    /// The text tower fine-tuned with this UNet (`train unet --train-text-encoder`), if its file
    /// has one; else the UNet reads CLIP's frozen text tower.
    pub text_encoder: Option<ClipTextTransformer>,
    /// What its output means and which schedule it was trained on; samplers must match.
    pub parameterization: Parameterization,
    /// What its context holds after `<|endoftext|>` (as it was trained).
    pub context_padding: ContextPadding,
    pub metadata: HashMap<String, String>,
}

impl UNetBundle {
    /// Loads weights with their config; a file for another config names the first mismatching
    /// tensor and both shapes.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                reason: "not found; train it with `inkdrop train unet` or restore data/ from git"
                    .into(),
            });
        }
        let loaded = weights::load(path, &Device::Cpu)?;
        let config: UNetConfig = weights::config_from_metadata(
            &loaded,
            path,
            "UNet",
            "this a file written by `inkdrop train unet`",
        )?;
        let varmap = VarMap::new();
        let unet = UNet2DConditionModel::new(
            &config,
            weights::seeded_var_builder(&varmap, 0, &Device::Cpu),
        )?;
        weights::load_into(&varmap, &loaded, path)?;
        Ok(Self {
            unet,
            varmap,
            text_encoder: text_encoder::from_file(&loaded, path)?,
            parameterization: match loaded.metadata.get(Parameterization::KEY) {
                None => Parameterization::default(),
                Some(json) => serde_json::from_str(json).map_err(|e| Error::Weights {
                    path: path.to_path_buf(),
                    reason: format!(
                        "its {} metadata is unreadable ({e}); it should read like \
                         {{\"prediction_type\":\"v_prediction\",\"rescale_betas_zero_snr\":true}}: \
                         retrain the UNet with `inkdrop train unet`",
                        Parameterization::KEY
                    ),
                })?,
            },
            context_padding: ContextPadding::from_metadata(&loaded.metadata, path)?,
            metadata: loaded.metadata,
        })
    }

    /// The noise schedule this UNet was trained on.
    pub fn schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self.parameterization.schedule())
    }

    /// The UNet's noise estimate eps_hat (B, 4, h, w) for `x_t` (B, 4, h, w) at timesteps `t`
    /// (one per sample) and text states `context`: its output for an epsilon model; for a
    /// v_prediction model, eps = sqrt(ab_t) v + sqrt(1 - ab_t) x_t. Detached (for inference).
    pub fn predict_noise(&self, x_t: &Tensor, t: &[usize], context: &Tensor) -> Result<Tensor> {
        let tt = Tensor::from_vec(
            t.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            t.len(),
            x_t.device(),
        )?;
        let out = self.unet.forward(x_t, &tt, context, None)?.detach(); // (B, 4, h, w)
        Ok(match self.parameterization.prediction_type {
            PredictionType::Epsilon => out,
            // add_noise_tensor computes sqrt(ab) a + sqrt(1 - ab) b per sample.
            PredictionType::VPrediction => add_noise_tensor(&self.schedule()?, &out, x_t, t)?,
        })
    }

    /// What this UNet cross-attends to for `texts`: (B, context_length, text_width) hidden
    /// states of its own fine-tuned text tower, or of `clip`'s when it has none.
    pub fn encoder_hidden_states(&self, clip: &ClipBundle, texts: &[String]) -> Result<Tensor> {
        Ok(text_encoder::encoder_hidden_states(
            clip,
            self.text_encoder.as_ref(),
            texts,
            self.context_padding,
        )?
        .detach())
    }

    /// The shipped UNet.
    pub fn load_default() -> Result<Self> {
        Self::load(&default_unet_path())
    }
}
