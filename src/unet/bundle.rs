//! Loading a trained UNet (the shipped `data/unet.safetensors` or any file `inkdrop train unet`
//! wrote): weights plus the config stored in the file's metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;

use super::{UNet2DConditionModel, UNetConfig};
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
            metadata: loaded.metadata,
        })
    }

    /// The shipped UNet.
    pub fn load_default() -> Result<Self> {
        Self::load(&default_unet_path())
    }
}
