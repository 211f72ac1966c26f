//! Checkpoints: model variables, optimizer moments and the step, in one safetensors file written
//! atomically, so an interrupted run resumes where it stopped (data is a function of the step,
//! so the resumed run sees exactly the batches the uninterrupted one would have).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use candle_nn::VarMap;

use super::optim::AdamW;
use crate::weights;
use crate::{Error, Result};

/// Writes model + optimizer state; `fingerprint` identifies the run's settings.
pub fn save(path: &Path, varmap: &VarMap, opt: &AdamW, fingerprint: &str) -> Result<()> {
    save_with(path, varmap, opt, &[], fingerprint)
}

/// [`save`] plus `extra` named tensors (an EMA of the weights, for instance).
pub fn save_with(
    path: &Path,
    varmap: &VarMap,
    opt: &AdamW,
    extra: &[(String, candle_core::Tensor)],
    fingerprint: &str,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::support::files::prepare_out_dir(dir)?;
    }
    let mut tensors: Vec<(String, candle_core::Tensor)> = weights::sorted_vars(varmap)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    tensors.extend(opt.state()?);
    tensors.extend(extra.iter().cloned());
    let meta = HashMap::from([
        ("step".to_string(), opt.step.to_string()),
        ("fingerprint".to_string(), fingerprint.to_string()),
    ]);
    weights::save(path, &tensors, &meta)
}

/// Restores a checkpoint into `varmap` and `opt` and returns its step. Refuses a checkpoint
/// made with other settings (its fingerprint differs).
pub fn load(path: &Path, varmap: &VarMap, opt: &mut AdamW, fingerprint: &str) -> Result<usize> {
    let loaded = weights::load(path, &Device::Cpu)?;
    let theirs = loaded
        .metadata
        .get("fingerprint")
        .map(String::as_str)
        .unwrap_or("");
    if theirs != fingerprint {
        return Err(Error::Weights {
            path: path.to_path_buf(),
            reason: format!(
                "checkpoint was made with other settings ({theirs}); now: {fingerprint}. \
                 Run without --resume to start over, or with the same settings"
            ),
        });
    }
    let step: usize = loaded
        .metadata
        .get("step")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    weights::load_into(varmap, &loaded, path)?;
    opt.load_state(&loaded.tensors, step)?;
    Ok(step)
}
