//! Loading a trained VAE (the shipped `data/vae.safetensors` or any file `inkdrop train vae`
//! wrote): weights plus the config stored in the file's metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;

use super::{AutoencoderKL, VaeConfig};
use crate::weights;
use crate::{Error, Result};

/// Where the shipped VAE lives.
pub fn default_vae_path() -> PathBuf {
    crate::support::files::crate_root().join("data/vae.safetensors")
}

/// A loaded VAE and its file's metadata (config, training settings, report).
pub struct VaeBundle {
    pub vae: AutoencoderKL,
    pub varmap: VarMap,
    pub metadata: HashMap<String, String>,
}

impl VaeBundle {
    /// Loads weights with their config; a file for another config names the first mismatching
    /// tensor and both shapes.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                reason: "not found; train it with `inkdrop train vae` or restore data/ from git"
                    .into(),
            });
        }
        let device = Device::Cpu;
        let loaded = weights::load(path, &device)?;
        let config: VaeConfig = weights::config_from_metadata(
            &loaded,
            path,
            "VAE",
            "this a file written by `inkdrop train vae`",
        )?;
        Self::load_with_config(path, &config, loaded)
    }

    /// Loads `path` into a model built from `config` (which may differ from the file's own).
    pub fn load_with_config(
        path: &Path,
        config: &VaeConfig,
        loaded: weights::Loaded,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vae = AutoencoderKL::new(
            config,
            weights::seeded_var_builder(&varmap, 0, &Device::Cpu),
        )?;
        weights::load_into(&varmap, &loaded, path)?;
        Ok(Self {
            vae,
            varmap,
            metadata: loaded.metadata,
        })
    }

    /// The shipped VAE.
    pub fn load_default() -> Result<Self> {
        Self::load(&default_vae_path())
    }
}
