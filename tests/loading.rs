//! Loading: a tiny random Llama written as GGUF (q/k permuted as llama.cpp does) loads back to
//! the same model; other tensor types load; bad files are clear errors, never panics.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use hubel::hooks::Capture;
use hubel::model::config::Arch;
use hubel::model::load::gguf::permute;
use hubel::model::random::{byte_vocab, random_model, tiny_config};
use hubel::model::{Model, ModelError};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hubel-loading-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the tiny random Llama as a llama.cpp-style GGUF with tensors of type `dtype`.
fn write_gguf(path: &Path, arch: &str, dtype: GgmlDType) -> Model {
    let cfg = tiny_config(Arch::Llama);
    let (model, tensors) = random_model(&cfg, 11).unwrap();
    let mut named: Vec<(String, QTensor)> = Vec::new();
    for (hf, t) in &tensors {
        let (name, t): (String, Tensor) = match hf.as_str() {
            "model.embed_tokens.weight" => ("token_embd.weight".into(), t.clone()),
            "model.norm.weight" => ("output_norm.weight".into(), t.clone()),
            "lm_head.weight" => ("output.weight".into(), t.clone()),
            other => {
                let rest = other.strip_prefix("model.layers.").unwrap();
                let (l, part) = rest.split_once('.').unwrap();
                let (g, t) = match part {
                    "input_layernorm.weight" => ("attn_norm", t.clone()),
                    "self_attn.q_proj.weight" => {
                        ("attn_q", permute(t, cfg.n_heads, cfg.d_head).unwrap())
                    }
                    "self_attn.k_proj.weight" => {
                        ("attn_k", permute(t, cfg.n_kv_heads, cfg.d_head).unwrap())
                    }
                    "self_attn.v_proj.weight" => ("attn_v", t.clone()),
                    "self_attn.o_proj.weight" => ("attn_output", t.clone()),
                    "post_attention_layernorm.weight" => ("ffn_norm", t.clone()),
                    "mlp.gate_proj.weight" => ("ffn_gate", t.clone()),
                    "mlp.up_proj.weight" => ("ffn_up", t.clone()),
                    "mlp.down_proj.weight" => ("ffn_down", t.clone()),
                    p => panic!("unexpected {p}"),
                };
                (format!("blk.{l}.{g}.weight"), t)
            }
        };
        // Norms stay F32, as llama.cpp keeps them.
        let ty = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        named.push((name, QTensor::quantize(&t, ty).unwrap()));
    }
    let v = byte_vocab();
    let strings =
        |xs: &[String]| Value::Array(xs.iter().map(|s| Value::String(s.clone())).collect());
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(arch.into())),
        ("general.name", Value::String("tiny gguf".into())),
        ("llama.block_count", Value::U32(cfg.n_layers as u32)),
        ("llama.context_length", Value::U32(cfg.n_ctx as u32)),
        ("llama.embedding_length", Value::U32(cfg.d_model as u32)),
        ("llama.feed_forward_length", Value::U32(cfg.d_mlp as u32)),
        ("llama.attention.head_count", Value::U32(cfg.n_heads as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(cfg.n_kv_heads as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.norm_eps as f32),
        ),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("llama.vocab_size", Value::U32(cfg.vocab_size as u32)),
        ("tokenizer.ggml.model", Value::String(v.model.clone())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&v.tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(v.token_types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&v.merges)),
        ("tokenizer.ggml.eos_token_id", Value::U32(v.eos.unwrap())),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
    model
}

fn logits(m: &Model) -> Vec<f32> {
    let ids: Vec<u32> = m
        .tokenize("Hello, 世界! 42")
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    m.run(&ids, &Capture::Nothing, &[]).unwrap().logits
}

#[test]
fn gguf_f32_round_trip_gives_bitwise_the_same_model() {
    let dir = scratch("f32");
    let path = dir.join("tiny.gguf");
    let original = write_gguf(&path, "llama", GgmlDType::F32);
    let loaded = Model::open(&path).unwrap();
    assert_eq!(loaded.info().name, "tiny gguf");
    assert_eq!(loaded.config(), original.config());
    assert_eq!(
        logits(&loaded),
        logits(&original),
        "un-permuted q/k and dequantized weights equal the originals"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn gguf_quantized_types_load_close_to_the_original() {
    let dir = scratch("quant");
    // The random model amplifies weight error, so compare by correlation with the original
    // logits, a bound that loosens as bits shrink (Q4_1 of the real model is checked against
    // transformers in tests/reference.rs).
    for (ty, min_corr) in [
        (GgmlDType::F16, 0.9999),
        (GgmlDType::Q8_0, 0.995),
        (GgmlDType::Q4_1, 0.6),
    ] {
        let path = dir.join(format!("tiny-{ty:?}.gguf"));
        let original = write_gguf(&path, "llama", ty);
        let loaded = Model::open(&path).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
        let (a, b) = (logits(&loaded), logits(&original));
        let corr = correlation(&a, &b);
        eprintln!("{ty:?}: correlation with the f32 logits {corr}");
        assert!(corr > min_corr, "{ty:?}: correlation {corr} <= {min_corr}");
        assert_ne!(a, b, "{ty:?} is really quantized");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&x| x as f64).sum::<f64>() / n,
        b.iter().map(|&x| x as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

fn open_err(path: &Path) -> String {
    match Model::open(path) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_files_are_clear_errors() {
    let dir = scratch("bad");
    let good = dir.join("good.gguf");
    write_gguf(&good, "llama", GgmlDType::F32);
    let bytes = std::fs::read(&good).unwrap();

    for keep in [bytes.len() - 100, bytes.len() / 2, 2000, 20, 3] {
        let p = dir.join(format!("truncated-{keep}.gguf"));
        std::fs::write(&p, &bytes[..keep]).unwrap();
        let e = open_err(&p);
        assert!(e.contains("is not a usable model file"), "{keep}: {e}");
    }
    let p = dir.join("truncated-tail.gguf");
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    assert!(open_err(&p).contains("truncated"), "{}", open_err(&p));

    let p = dir.join("text.gguf");
    std::fs::write(&p, "this is not a model").unwrap();
    assert!(open_err(&p).contains("not a GGUF file"), "{}", open_err(&p));

    let p = dir.join("qwen.gguf");
    write_gguf(&p, "qwen2", GgmlDType::F32);
    let e = open_err(&p);
    assert!(
        e.contains("unsupported model") && e.contains("`qwen2`"),
        "{e}"
    );

    let e = open_err(&dir.join("missing.gguf"));
    assert!(e.contains("cannot read"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_hf_folders_are_clear_errors() {
    let dir = scratch("hf");
    let src = common::fixtures().join("tiny_gpt2").join("model");
    let copy = |to: &str, skip: &str| {
        let d = dir.join(to);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != skip {
                std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
            }
        }
        d
    };
    let e = open_err(&copy("no-tokenizer", "tokenizer.json"));
    assert!(e.contains("no tokenizer.json"), "{e}");
    let e = open_err(&copy("no-weights", "model.safetensors"));
    assert!(e.contains("no *.safetensors"), "{e}");
    let d = copy("other-arch", "");
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type": "mamba", "vocab_size": 10}"#,
    )
    .unwrap();
    let e = open_err(&d);
    assert!(e.contains("model_type `mamba` is not supported"), "{e}");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert!(open_err(&d).contains("invalid JSON"));
    let d = copy("bad-weights", "");
    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    assert!(open_err(&d).contains("not a valid safetensors file"));
    std::fs::remove_dir_all(dir).unwrap();
    let _ = ModelError::EmptyText;
}
