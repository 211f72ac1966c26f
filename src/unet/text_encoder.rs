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
use serde::{Deserialize, Serialize};

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

/// Metadata key in a UNet file: what its context holds after `<|endoftext|>` (absent: CLIP's
/// padding states, as in Stable Diffusion).
pub const PADDING_KEY: &str = "context_padding";

/// What the UNet's context holds at the padding positions after `<|endoftext|>`.
///
/// CLIP pads with `<|endoftext|>` and Stable Diffusion cross-attends to all 77 positions. In a
/// causal text tower every padding state has read the whole prompt, so each is a summary of
/// every word at once: a picture's pixels that attend to one read every colour the prompt
/// names, and a colour can leak from one object to the other ("a white square above a purple
/// circle" drawn with a lilac square). Zeroed padding carries no words (zero keys give a
/// logit of 0, zero values add nothing): the prompt reaches the picture only through its own
/// tokens and the one `<|endoftext|>` state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextPadding {
    /// The text tower's states at every position (Stable Diffusion's choice).
    #[default]
    Kept,
    /// Zeros after the first `<|endoftext|>`.
    Zeroed,
}

impl ContextPadding {
    /// The policy a UNet file's metadata names (absent: [`ContextPadding::Kept`]).
    pub fn from_metadata(
        metadata: &std::collections::HashMap<String, String>,
        path: &std::path::Path,
    ) -> Result<Self> {
        let Some(stored) = metadata.get(PADDING_KEY) else {
            return Ok(Self::Kept);
        };
        [Self::Kept, Self::Zeroed]
            .into_iter()
            .find(|p| p.name() == stored)
            .ok_or_else(|| Error::Weights {
                path: path.to_path_buf(),
                reason: format!(
                    "its {PADDING_KEY} metadata is {stored:?}, expected \"kept\" or \"zeroed\"; \
                     retrain the UNet with `inkdrop train unet`"
                ),
            })
    }

    /// The name stored under [`PADDING_KEY`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Kept => "kept",
            Self::Zeroed => "zeroed",
        }
    }
}

/// The UNet's conditioning `encoder_hidden_states` (B, context_length, text_width) for
/// `texts`: from `own` (a fine-tuned tower) when there is one, else from CLIP's frozen text
/// tower. `clip` tokenizes either way. With [`ContextPadding::Zeroed`] the positions after each
/// text's `<|endoftext|>` are zero:
///
/// ```text
/// context[b, p] = hidden[b, p] * [p <= eot_b]
/// ```
///
/// The result keeps its graph when `own` is trained.
pub fn encoder_hidden_states(
    clip: &ClipBundle,
    own: Option<&ClipTextTransformer>,
    texts: &[String],
    padding: ContextPadding,
) -> Result<Tensor> {
    let (ids, eot) = clip.tokenize(texts)?; // (B, T)
    let hidden = match own {
        Some(tower) => tower.forward(&ids, &eot)?.0, // (B, T, W)
        None => clip.model.text_model.forward(&ids, &eot)?.0.detach(), // (B, T, W)
    };
    match padding {
        ContextPadding::Kept => Ok(hidden),
        ContextPadding::Zeroed => {
            let t = hidden.dim(1)?;
            let keep: Vec<f32> = eot
                .iter()
                .flat_map(|&e| (0..t).map(move |p| if p <= e { 1.0 } else { 0.0 }))
                .collect();
            let keep = Tensor::from_vec(keep, (texts.len(), t, 1), hidden.device())?; // (B, T, 1)
            Ok(hidden.broadcast_mul(&keep)?) // (B, T, W)
        }
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
