//! HF folders: `config.json` + `*.safetensors` + `tokenizer.json`, for `model_type` llama or gpt2.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::model::config::{Arch, HfConfig};
use crate::model::tokenizer::Tokenizer;
use crate::model::transformer::{build_gpt2, build_llama};
use crate::model::{Model, ModelError, Result};

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub fn load(dir: &Path) -> Result<Model> {
    let config_path = dir.join("config.json");
    let tokenizer_path = dir.join("tokenizer.json");
    if !config_path.is_file() {
        return Err(bad(dir, "the folder has no config.json (an HF model folder needs config.json, *.safetensors and tokenizer.json)"));
    }
    if !tokenizer_path.is_file() {
        return Err(bad(dir, "the folder has no tokenizer.json (an HF model folder needs config.json, *.safetensors and tokenizer.json)"));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
        path: config_path.clone(),
        source,
    })?;
    let hf: HfConfig =
        serde_json::from_str(&text).map_err(|e| bad(&config_path, format!("invalid JSON: {e}")))?;
    let cfg = hf
        .to_config()
        .map_err(|e| ModelError::Unsupported(format!("{}: {e}", config_path.display())))?;
    cfg.validate().map_err(ModelError::Unsupported)?;

    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(dir, "the folder has no *.safetensors weights"));
    }
    let device = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut hasher = Sha256::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|source| ModelError::Io {
            path: file.clone(),
            source,
        })?;
        hasher.update(&bytes);
        let loaded = candle_core::safetensors::load_buffer(&bytes, &device).map_err(|e| {
            let e = crate::model::candle_message(&e);
            bad(file, format!("not a valid safetensors file ({e})"))
        })?;
        tensors.extend(loaded);
    }
    let tokenizer = Tokenizer::from_hf_file(&tokenizer_path)?;
    let mut get =
        |name: &str, _dims: &[usize]| -> Result<Option<Tensor>> { Ok(tensors.get(name).cloned()) };
    let weights = match cfg.arch {
        Arch::Llama => build_llama(&cfg, &mut get, &device)?,
        Arch::Gpt2 => build_gpt2(&cfg, &mut get)?,
    };
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Model::new(
        weights,
        tokenizer,
        name,
        format!("{:x}", hasher.finalize()),
        dir.to_path_buf(),
    )?
    .with_format("HF safetensors".into()))
}
