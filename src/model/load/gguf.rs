//! GGUF (llama.cpp's format) → config, dequantized f32 weights and tokenizer.
//!
//! llama.cpp's converter permutes the rows of `attn_q` and `attn_k` so that rotary embedding can
//! rotate adjacent pairs; we undo that per head, which gives back HF's weights, and then apply HF's
//! rotate-half rotary embedding. Only `general.architecture = llama` is read.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::model::config::{Arch, Config};
use crate::model::tokenizer::{GgufVocab, Tokenizer};
use crate::model::transformer::build_llama;
use crate::model::{Model, ModelError, Result};

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Explains candle's read errors in the user's terms.
fn explain(path: &Path, e: candle_core::Error) -> ModelError {
    let msg = crate::model::candle_message(&e);
    let reason = if msg.contains("unknown dtype for tensor") {
        format!(
            "it holds a tensor type Hubel cannot read ({msg}); supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K–Q6_K"
        )
    } else if msg.contains("magic") {
        format!("it is not a GGUF file ({msg})")
    } else if msg.contains("remaining")
        || msg.contains("failed to fill whole buffer")
        || msg.contains("UnexpectedEof")
    {
        format!("the file is truncated or corrupt ({msg})")
    } else {
        msg
    };
    bad(path, reason)
}

struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| bad(self.path, format!("metadata has no `{key}`")))?;
        let n = match v {
            Value::U8(v) => *v as u64,
            Value::U16(v) => *v as u64,
            Value::U32(v) => *v as u64,
            Value::U64(v) => *v,
            Value::I32(v) if *v >= 0 => *v as u64,
            Value::I64(v) if *v >= 0 => *v as u64,
            other => {
                return Err(bad(
                    self.path,
                    format!("metadata `{key}` is {other:?}, expected a count"),
                ))
            }
        };
        Ok(n as usize)
    }

    fn f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key)?.to_string().ok().cloned()
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)
            .ok_or_else(|| bad(self.path, format!("metadata has no `{key}`")))?
            .to_vec()
            .map_err(|e| {
                bad(
                    self.path,
                    format!("`{key}`: {}", crate::model::candle_message(&e)),
                )
            })?;
        arr.iter()
            .map(|v| {
                v.to_string().cloned().map_err(|e| {
                    bad(
                        self.path,
                        format!("`{key}`: {}", crate::model::candle_message(&e)),
                    )
                })
            })
            .collect()
    }

    fn u32_opt(&self, key: &str) -> Option<u32> {
        self.get(key)?.to_u32().ok()
    }
}

/// Reads `path`, dequantizes every tensor and rebuilds the tokenizer.
pub fn load(path: &Path) -> Result<Model> {
    let file = File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| explain(path, e))?;
    let meta = Meta {
        path,
        map: &content.metadata,
    };
    let arch = meta.string("general.architecture").unwrap_or_default();
    if arch != "llama" {
        return Err(ModelError::Unsupported(format!(
            "{}: GGUF architecture `{arch}` (Hubel reads `llama` GGUF files; GPT-2 loads from an HF folder)",
            path.display()
        )));
    }
    let p = |k: &str| format!("llama.{k}");
    let d_model = meta.usize(&p("embedding_length"))?;
    let n_heads = meta.usize(&p("attention.head_count"))?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let vocab_size = match meta.usize(&p("vocab_size")) {
        Ok(v) => v,
        Err(_) => tokens.len(),
    };
    let has_output = content.tensor_infos.contains_key("output.weight");
    let cfg = Config {
        arch: Arch::Llama,
        n_layers: meta.usize(&p("block_count"))?,
        d_model,
        d_mlp: meta.usize(&p("feed_forward_length"))?,
        n_heads,
        n_kv_heads: meta.usize(&p("attention.head_count_kv")).unwrap_or(n_heads),
        d_head: meta
            .usize(&p("attention.key_length"))
            .unwrap_or(d_model / n_heads.max(1)),
        vocab_size,
        n_ctx: meta.usize(&p("context_length"))?,
        norm_eps: meta
            .f64(&p("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        rope_theta: meta.f64(&p("rope.freq_base")).unwrap_or(10_000.0),
        tie_embeddings: !has_output,
    };
    cfg.validate().map_err(ModelError::Unsupported)?;

    let vocab = GgufVocab {
        model: meta.string("tokenizer.ggml.model").unwrap_or_default(),
        pre: meta.string("tokenizer.ggml.pre"),
        token_types: match meta.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            Some(Ok(types)) => types.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        },
        tokens,
        merges: meta.strings("tokenizer.ggml.merges")?,
        bos: meta.u32_opt("tokenizer.ggml.bos_token_id"),
        eos: meta.u32_opt("tokenizer.ggml.eos_token_id"),
        add_bos: matches!(
            meta.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        ),
    };
    let tokenizer = Tokenizer::from_gguf(vocab)?;

    let device = Device::Cpu;
    let (dh, nh, nkv) = (cfg.d_head, cfg.n_heads, cfg.n_kv_heads);
    let mut get = |name: &str, _dims: &[usize]| -> Result<Option<Tensor>> {
        let Some((gguf_name, unpermute_heads)) = gguf_name(name, nh, nkv) else {
            return Ok(None);
        };
        if !content.tensor_infos.contains_key(&gguf_name) {
            return Ok(None);
        }
        let t = content
            .tensor(&mut reader, &gguf_name, &device)
            .and_then(|q| q.dequantize(&device))
            .map_err(|e| explain(path, e))?;
        Ok(Some(match unpermute_heads {
            Some(heads) => unpermute(&t, heads, dh)?,
            None => t,
        }))
    };
    let weights = build_llama(&cfg, &mut get, &device)?;
    let name = meta.string("general.name").unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let sha256 = crate::assets::sha256_file(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The storage type most of the weights use (the embedding or norms may differ).
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for info in content.tensor_infos.values() {
        *counts.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
    }
    let dtype = counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| d)
        .unwrap_or_default();
    Ok(
        Model::new(weights, tokenizer, name, sha256, path.to_path_buf())?
            .with_format(format!("{dtype} GGUF")),
    )
}

/// HF name → (GGUF name, heads to un-permute for q/k).
fn gguf_name(hf: &str, n_heads: usize, n_kv_heads: usize) -> Option<(String, Option<usize>)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (name, heads) = match part {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(n_heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(n_kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}"), heads))
}

/// Undoes llama.cpp's `permute`: per head, rows `[d/2, 2]` back to `[2, d/2]`.
fn unpermute(w: &Tensor, heads: usize, d_head: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if rows != heads * d_head {
        return Err(ModelError::Format(format!(
            "q/k weight has {rows} rows, expected {heads}×{d_head}"
        )));
    }
    Ok(w.reshape((heads, d_head / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Inverse of [`unpermute`], for writing GGUF files in tests.
pub fn permute(w: &Tensor, heads: usize, d_head: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, 2, d_head / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}
