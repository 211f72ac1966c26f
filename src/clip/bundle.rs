//! A trained CLIP together with its tokenizer: loading the shipped `data/clip.safetensors`,
//! and encoding texts and images in one call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;

use super::{images_tensor, l2_normalize, Clip, ClipConfig};
use crate::text::ClipTokenizer;
use crate::weights;
use crate::{Error, Result};

/// Where the shipped files live.
pub fn default_clip_path() -> PathBuf {
    crate::support::files::crate_root().join("data/clip.safetensors")
}

/// The shipped tokenizer.
pub fn default_tokenizer_path() -> PathBuf {
    crate::support::files::crate_root().join("data/tokenizer.json")
}

/// A model, its variables and its tokenizer.
pub struct ClipBundle {
    pub model: Clip,
    pub varmap: VarMap,
    pub tokenizer: ClipTokenizer,
    pub metadata: HashMap<String, String>,
    pub device: Device,
}

impl ClipBundle {
    /// Loads weights (with their config from the file's metadata) and a tokenizer.
    pub fn load(weights_path: &Path, tokenizer_path: &Path) -> Result<Self> {
        if !weights_path.exists() {
            return Err(Error::Weights {
                path: weights_path.to_path_buf(),
                reason: "not found; train it with `inkdrop train clip` or restore data/ from git"
                    .into(),
            });
        }
        let device = Device::Cpu;
        let loaded = weights::load(weights_path, &device)?;
        let config = config_of(&loaded, weights_path)?;
        let tokenizer = ClipTokenizer::from_file(tokenizer_path, config.context_length)?;
        if tokenizer.vocab_size() != config.vocab_size {
            return Err(Error::Weights {
                path: weights_path.to_path_buf(),
                reason: format!(
                    "made for a vocabulary of {} tokens, but {} has {}; use the tokenizer it was trained with",
                    config.vocab_size,
                    tokenizer_path.display(),
                    tokenizer.vocab_size()
                ),
            });
        }
        let varmap = VarMap::new();
        let model = Clip::new(&config, weights::seeded_var_builder(&varmap, 0, &device))?;
        weights::load_into(&varmap, &loaded, weights_path)?;
        Ok(ClipBundle {
            model,
            varmap,
            tokenizer,
            metadata: loaded.metadata,
            device,
        })
    }

    /// The config stored in a CLIP file's metadata, without building the model.
    pub fn load_config(weights_path: &Path) -> Result<ClipConfig> {
        config_of(&weights::load(weights_path, &Device::Cpu)?, weights_path)
    }

    /// The shipped model and tokenizer from `data/`.
    pub fn load_default() -> Result<Self> {
        Self::load(&default_clip_path(), &default_tokenizer_path())
    }

    /// Token ids (B, T) and end-of-text positions for `texts`; warns on stderr when one is cut.
    pub fn tokenize(&self, texts: &[String]) -> Result<(Tensor, Vec<usize>)> {
        tokenize(&self.tokenizer, texts, &self.device)
    }

    /// The text transformer's last hidden states, one vector per token, padding included:
    /// (B, context_length, text_width), detached from the graph. This is what Stable
    /// Diffusion's UNet cross-attends to (`encoder_hidden_states`).
    pub fn encoder_hidden_states(&self, texts: &[String]) -> Result<Tensor> {
        let (ids, eot) = self.tokenize(texts)?;
        Ok(self.model.text_model.forward(&ids, &eot)?.0.detach())
    }

    /// L2-normalised text embeddings (B, E).
    pub fn embed_texts(&self, texts: &[String]) -> Result<Tensor> {
        let (ids, eot) = self.tokenize(texts)?;
        Ok(l2_normalize(&self.model.text_features(&ids, &eot)?)?)
    }

    /// L2-normalised image embeddings (B, E), in batches of 256; images must be
    /// `image_size` square (see [`fit_image`]).
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Tensor> {
        let parts = images
            .chunks(256)
            .map(|chunk| {
                Ok(l2_normalize(
                    &self
                        .model
                        .image_features(&images_tensor(chunk, &self.device)?)?,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// Tokenizes a batch: ids (B, T) and end-of-text positions. Texts that do not fit are cut and
/// reported on stderr (CLIP truncates silently; we say so).
pub fn tokenize(
    tokenizer: &ClipTokenizer,
    texts: &[String],
    device: &Device,
) -> Result<(Tensor, Vec<usize>)> {
    let mut ids = Vec::with_capacity(texts.len() * tokenizer.context_length);
    let mut eot = Vec::with_capacity(texts.len());
    for text in texts {
        let enc = tokenizer.encode(text)?;
        if enc.truncated > 0 {
            eprintln!(
                "warning: {:?} is {} tokens too long for the context of {}; the end was cut off",
                text, enc.truncated, tokenizer.context_length
            );
        }
        ids.extend(enc.ids);
        eot.push(enc.eot_index);
    }
    Ok((
        Tensor::from_vec(ids, (texts.len(), tokenizer.context_length), device)?,
        eot,
    ))
}

/// Makes any image the model's input size: centre square crop and resize. Returns the image and
/// whether it had to be changed (callers tell the user).
pub fn fit_image(img: &RgbImage, size: u32) -> (RgbImage, bool) {
    if img.dimensions() == (size, size) {
        (img.clone(), false)
    } else {
        (crate::support::image_io::center_square(img, size), true)
    }
}

fn config_of(loaded: &weights::Loaded, path: &Path) -> Result<ClipConfig> {
    weights::config_from_metadata(
        loaded,
        path,
        "CLIP",
        "it a CLIP file made by `inkdrop train clip`",
    )
}
