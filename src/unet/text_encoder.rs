//! The text encoder the UNet reads. Stable Diffusion keeps CLIP's text tower frozen; a UNet file
//! may instead carry its own copy of that tower, fine-tuned together with the UNet (diffusers'
//! `train_text_encoder` option in its DreamBooth and text-to-image scripts), stored under
//! `text_encoder.*` next to the UNet's tensors.
//!
//! Why: CLIP's text tower learned from a contrastive loss against an image tower that averages
//! over the picture, so nothing ever asked it to tell "a red circle above a blue square" from
//! "... below ...": its hidden states for the two differ at the relation word and hardly after
//! it. The denoising loss does ask, and its gradient can teach the tower to say so.

use candle_core::{Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::clip::bundle::ClipBundle;
use crate::clip::{ClipConfig, ClipTextTransformer};
use crate::{weights, Error, Result};

/// Name prefix of the fine-tuned tower's tensors in a UNet file.
pub const PREFIX: &str = "text_encoder";

/// Metadata key of the fine-tuned tower's config in a UNet file.
pub const CONFIG_KEY: &str = "text_encoder_config";

/// A text tower for `clip`'s config, made in `varmap` under [`PREFIX`] with `vb`, starting as a
/// copy of `clip`'s own (`text_model.*` -> `text_encoder.*`).
pub fn copy_of_clip_text_tower(
    clip: &ClipBundle,
    varmap: &VarMap,
    vb: VarBuilder,
) -> Result<ClipTextTransformer> {
    let tower = ClipTextTransformer::new(&clip.model.config, vb.pp(PREFIX))?;
    let source = clip
        .varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidSetting {
            what: "CLIP's variables".into(),
            reason: "another thread panicked while holding them".into(),
        })?
        .clone();
    let own: Vec<(String, Var)> = weights::sorted_vars(varmap)
        .into_iter()
        .filter(|(n, _)| n.starts_with(&format!("{PREFIX}.")))
        .collect();
    for (name, var) in own {
        let clip_name = format!("text_model.{}", &name[PREFIX.len() + 1..]);
        let t = source
            .get(&clip_name)
            .ok_or_else(|| Error::InvalidSetting {
                what: "--train-text-encoder".into(),
                reason: format!(
                "the CLIP model has no tensor {clip_name} to start {name} from; give a CLIP file \
                 written by `inkdrop train clip`"
            ),
            })?;
        var.set(t.as_tensor())?;
    }
    Ok(tower)
}

/// The UNet's conditioning `encoder_hidden_states` (B, context_length, text_width) for
/// `texts`: from `own` (a fine-tuned tower) when there is one, else from CLIP's frozen text
/// tower. `clip` tokenizes either way. The result keeps its graph when `own` is trained.
pub fn encoder_hidden_states(
    clip: &ClipBundle,
    own: Option<&ClipTextTransformer>,
    texts: &[String],
) -> Result<Tensor> {
    match own {
        Some(tower) => {
            let (ids, eot) = clip.tokenize(texts)?; // (B, T)
            Ok(tower.forward(&ids, &eot)?.0) // (B, T, W)
        }
        None => clip.encoder_hidden_states(texts),
    }
}

/// The fine-tuned tower a UNet file carries, if it carries one (its config under
/// [`CONFIG_KEY`], its tensors under [`PREFIX`]).
pub fn from_file(
    loaded: &weights::Loaded,
    path: &std::path::Path,
) -> Result<Option<ClipTextTransformer>> {
    let Some(config) = loaded.metadata.get(CONFIG_KEY) else {
        return Ok(None);
    };
    let config: ClipConfig = serde_json::from_str(config).map_err(|e| Error::Weights {
        path: path.to_path_buf(),
        reason: format!("its {CONFIG_KEY} metadata is not a CLIP config ({e}); retrain the UNet"),
    })?;
    let varmap = VarMap::new();
    let vb = weights::seeded_var_builder(&varmap, 0, &candle_core::Device::Cpu);
    let tower = ClipTextTransformer::new(&config, vb.pp(PREFIX))?;
    weights::load_into(&varmap, loaded, path)?;
    Ok(Some(tower))
}
