//! Weights on disk and in memory: safetensors files with the config and training metadata inside,
//! written atomically and checked tensor by tensor when loaded; and reproducible initialisation
//! (candle's CPU random generator cannot be seeded, so we draw initial values ourselves).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::support::files::write_atomic;
use crate::{Error, Result};

/// A VarBuilder backend that creates missing variables from a seeded generator, in the order the
/// model asks for them, so the same seed gives the same initial weights.
struct SeededBackend {
    varmap: VarMap,
    rng: Mutex<StdRng>,
}

fn sample_init(init: Init, shape: &Shape, rng: &mut StdRng) -> Vec<f32> {
    let n = shape.elem_count();
    let normal = |rng: &mut StdRng, mean: f64, std: f64| {
        (0..n)
            .map(|_| (mean + std * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect()
    };
    let uniform = |rng: &mut StdRng, lo: f64, hi: f64| {
        (0..n).map(|_| rng.random_range(lo..hi) as f32).collect()
    };
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = match fan {
                FanInOut::FanIn | FanInOut::FanOut => fan.for_shape(shape).max(1),
            };
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(rng, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(rng, -bound, bound)
                }
            }
        }
    }
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
        if let Some(var) = data.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable {name}: shape {:?} requested, {:?} exists",
                    shape.dims(),
                    var.shape().dims()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("rng lock poisoned".into()))?;
        let values = sample_init(init, &shape, &mut rng);
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// A VarBuilder whose new variables go into `varmap`, initialised from `seed`.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    let backend = SeededBackend {
        varmap: varmap.clone(),
        rng: Mutex::new(crate::support::seeded_rng(seed)),
    };
    VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
}

/// The variables of a VarMap sorted by name (a stable order for optimizers and files).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Writes named tensors and string metadata as one safetensors file, atomically.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let werr = |e: String| Error::Write {
        path: path.to_path_buf(),
        reason: e,
    };
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bytes = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        owned.push((name.clone(), bytes, t.dims().to_vec()));
    }
    let views = owned
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| werr(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::serialize(views, Some(metadata.clone())).map_err(|e| werr(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Saves every variable of `varmap` with `metadata`.
pub fn save_varmap(path: &Path, varmap: &VarMap, metadata: &HashMap<String, String>) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = sorted_vars(varmap)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    save(path, &tensors, metadata)
}

/// A loaded safetensors file: tensors by name and the metadata.
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads a safetensors file, with errors that name the file and what to do.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let bad = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("{e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("corrupt safetensors file ({e})")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        tensors.insert(name, t.to_dtype(DType::F32)?);
    }
    Ok(Loaded {
        tensors,
        metadata: meta.metadata().clone().unwrap_or_default(),
    })
}

/// The model config stored as JSON under `config` in a file's metadata; `hint` says what made
/// such files (e.g. "it a CLIP file made by `inkdrop train clip`") for the error when it is absent.
pub fn config_from_metadata<C: serde::de::DeserializeOwned>(
    loaded: &Loaded,
    path: &Path,
    what: &str,
    hint: &str,
) -> Result<C> {
    loaded
        .metadata
        .get("config")
        .and_then(|c| serde_json::from_str(c).ok())
        .ok_or_else(|| Error::Weights {
            path: path.to_path_buf(),
            reason: format!("no {what} config in its metadata; is {hint}?"),
        })
}

/// Copies loaded tensors into the variables of `varmap`, checking that every variable is present
/// with the right shape; the first problem is named with both shapes.
pub fn load_into(varmap: &VarMap, loaded: &Loaded, path: &Path) -> Result<()> {
    load_selected(varmap, loaded, path, &|_| true).map(|_| ())
}

/// Copies into the variables of `varmap` whose names `select` picks the tensors of the same name
/// from `loaded` (each must be present with the right shape); the others keep their values.
/// Returns how many were copied.
pub fn load_selected(
    varmap: &VarMap,
    loaded: &Loaded,
    path: &Path,
    select: &dyn Fn(&str) -> bool,
) -> Result<usize> {
    let mut copied = 0;
    for (name, var) in sorted_vars(varmap) {
        if !select(&name) {
            continue;
        }
        let t = loaded.tensors.get(&name).ok_or_else(|| Error::Weights {
            path: path.to_path_buf(),
            reason: format!("tensor {name} is missing (expected shape {:?}); the file was made for another model", var.dims()),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                reason: format!("tensor {name} has shape {:?}, the model expects {:?}; the file was made for another config", t.dims(), var.dims()),
            });
        }
        var.set(t)?;
        copied += 1;
    }
    Ok(copied)
}
