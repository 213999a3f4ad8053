//! Opening model files: a GGUF file or an HF folder becomes a [`Model`](super::Model).

pub mod gguf;
pub mod hf;

use std::path::Path;

use super::{Model, ModelError, Result};

/// Opens `path`: a `.gguf` file, or a folder with config.json, *.safetensors and tokenizer.json.
pub fn open(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        hf::load(path)
    } else {
        gguf::load(path)
    }
}
