//! Tiny random models built in memory, for tests and demos that must not download anything.
//! Same code path as a loaded model from the weight builders on: only the tensors are random.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::config::{Arch, Config};
use super::tokenizer::{GgufVocab, Tokenizer};
use super::transformer::{build_gpt2, build_llama};
use super::{Model, Result};

/// A tiny config of `arch`: 3 layers, d_model 32, 4 heads (2 kv heads for Llama), vocab 260.
pub fn tiny_config(arch: Arch) -> Config {
    Config {
        arch,
        n_layers: 3,
        d_model: 32,
        d_mlp: 64,
        n_heads: 4,
        n_kv_heads: if arch == Arch::Llama { 2 } else { 4 },
        d_head: 8,
        vocab_size: 260,
        n_ctx: 64,
        // The f32 value widened, as GGUF metadata and HF configs carry it.
        norm_eps: f64::from(1e-5f32),
        rope_theta: 10_000.0,
        tie_embeddings: arch == Arch::Gpt2,
    }
}

/// A byte-level tokenizer with one token per byte and `<|endoftext|>` as a control token:
/// GGUF-style metadata, so it goes through the same builder as SmolLM2's.
pub fn byte_vocab() -> GgufVocab {
    let mut tokens: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .map(String::from)
        .collect();
    tokens.sort();
    tokens.push("<|endoftext|>".into());
    let mut token_types = vec![1; tokens.len()];
    let eos = (tokens.len() - 1) as u32;
    token_types[eos as usize] = 3;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types,
        merges: Vec::new(),
        bos: None,
        eos: Some(eos),
        add_bos: false,
    }
}

fn normal(rng: &mut rand::rngs::StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// A random model of `cfg` (seeded), and its tensors by HF name.
pub fn random_model(cfg: &Config, seed: u64) -> Result<(Model, BTreeMap<String, Tensor>)> {
    random_model_with(cfg, seed, false, &mut |_, _, _| {})
}

/// An edit of a random model's tensor: `(HF name, dims, values)`.
pub type TensorEdit<'a> = dyn FnMut(&str, &[usize], &mut [f32]) + 'a;

/// [`random_model`] with `edit(name, dims, values)` applied to each tensor before the model is
/// built (tests plant structure this way: a head that copies, a neuron that reads a direction).
/// The random draws do not depend on the edits, so two calls with the same seed differ only
/// where the edits do.
pub fn random_model_edited(
    cfg: &Config,
    seed: u64,
    edit: &mut TensorEdit,
) -> Result<(Model, BTreeMap<String, Tensor>)> {
    random_model_with(cfg, seed, false, edit)
}

/// [`random_model`] whose matrices are exactly representable in 4-bit blocks of 32 along their
/// input axis (as a Q4_1 GGUF's are), so that the fast path rounds only activations: the tiny
/// stand-in for SmolLM2's file in fast-path tests.
pub fn random_q4_model(cfg: &Config, seed: u64) -> Result<(Model, BTreeMap<String, Tensor>)> {
    random_model_with(cfg, seed, true, &mut |_, _, _| {})
}

/// `w` (`[rows, k]`, one row per output) rounded to the fast path's 4-bit blocks, when `k`
/// allows them.
fn round_q4(w: Vec<f32>, rows: usize, k: usize) -> Vec<f32> {
    match super::kernels::q4::PackedQ4::quantize(&w, rows, k) {
        Some(q) => q.dequantize(),
        None => w,
    }
}

fn random_model_with(
    cfg: &Config,
    seed: u64,
    q4: bool,
    edit: &mut TensorEdit,
) -> Result<(Model, BTreeMap<String, Tensor>)> {
    let device = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut made = BTreeMap::new();
    let mut get = |name: &str, dims: &[usize]| -> Result<Option<Tensor>> {
        let n: usize = dims.iter().product();
        let is_norm = dims.len() == 1 && (name.contains("norm") || name.contains("ln_"));
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let z = normal(&mut rng);
                if is_norm {
                    1.0 + 0.2 * z
                } else if dims.len() == 1 {
                    0.1 * z
                } else {
                    0.3 * z
                }
            })
            .collect();
        let mut data = match dims {
            [a, b] if q4 => {
                // GPT-2's Conv1D weights are stored [in, out]: round along `in`.
                if name.contains(".c_") {
                    let t: Vec<f32> = (0..a * b).map(|i| data[(i % a) * b + i / a]).collect();
                    let r = round_q4(t, *b, *a);
                    (0..a * b).map(|i| r[(i % b) * a + i / b]).collect()
                } else {
                    round_q4(data, *a, *b)
                }
            }
            _ => data,
        };
        edit(name, dims, &mut data);
        let t = Tensor::from_vec(data, dims, &device)?;
        made.insert(name.to_string(), t.clone());
        Ok(Some(t))
    };
    let weights = match cfg.arch {
        Arch::Llama => build_llama(cfg, &mut get, &device)?,
        Arch::Gpt2 => build_gpt2(cfg, &mut get)?,
    };
    let tokenizer = Tokenizer::from_gguf(byte_vocab())?;
    let name = format!("tiny random {} (seed {seed})", cfg.arch.name());
    Ok((
        Model::new(weights, tokenizer, name, String::new(), Default::default())?,
        made,
    ))
}
