//! Dictionaries on disk.
//!
//! Our own file: one safetensors file (the `safetensors` crate, the format's reference
//! implementation, already in the build through candle) holding `W_dec [atoms, d]`, `b_dec`,
//! `W_enc [d, atoms]` and `b_enc` when there is an encoder, `threshold` for JumpReLU, and each
//! hook's normaliser (`norm.{h}.shift`, `norm.{h}.scale`); the JSON config and the atoms' labels
//! and examples are in its header's metadata (`hubel_dictionary`, `hubel_atoms`). Written
//! atomically.
//!
//! SAELens: a folder with `cfg.json` and `sae_weights.safetensors` (`W_enc [d_in, d_sae]`,
//! `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`, `threshold` for JumpReLU). Export folds our
//! normalisation into the weights, so SAELens computes exactly our codes on raw activations.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{linalg, AtomInfo, DictConfig, DictError, Dictionary, Method, Normaliser};
use crate::hooks::HookPoint;

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn format_err(path: &Path, reason: impl std::fmt::Display) -> DictError {
    DictError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DictError + '_ {
    move |source| DictError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_tensors(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), DictError> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, bytes(&v)))
        .collect();
    let views = raw
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| format_err(path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = safetensors::serialize(views, metadata).map_err(|e| format_err(path, e))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    crate::atomic_write(path, &out).map_err(io_err(path))
}

/// A tensor's shape and values.
type Shaped = (Vec<usize>, Vec<f32>);

/// A tensor as f32 (F32, F16 or BF16 on disk), with its shape.
fn read_f32(st: &SafeTensors, name: &str, path: &Path) -> Result<Option<Shaped>, DictError> {
    let t = match st.tensor(name) {
        Ok(t) => t,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => return Err(format_err(path, e)),
    };
    let data = t.data();
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format_err(
                path,
                format!("{name} is stored as {other:?}; F32, F16 or BF16 are read"),
            ))
        }
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format_err(
            path,
            format!("{name} holds NaN or infinite values"),
        ));
    }
    Ok(Some((t.shape().to_vec(), values)))
}

fn need(st: &SafeTensors, name: &str, shape: &[usize], path: &Path) -> Result<Vec<f32>, DictError> {
    let (s, v) = read_f32(st, name, path)?
        .ok_or_else(|| format_err(path, format!("it has no tensor {name}")))?;
    if s != shape {
        return Err(format_err(
            path,
            format!("{name} has shape {s:?}, {shape:?} was expected"),
        ));
    }
    Ok(v)
}

/// Saves `dict` as one safetensors file (atomically).
pub fn save(dict: &Dictionary, path: &Path) -> Result<(), DictError> {
    let (m, d) = (dict.atoms(), dict.d());
    let mut tensors = vec![
        ("W_dec".to_string(), vec![m, d], dict.w_dec.clone()),
        ("b_dec".to_string(), vec![d], dict.b_dec.clone()),
    ];
    if dict.config.method.has_encoder() {
        tensors.push((
            "W_enc".into(),
            vec![d, m],
            linalg::transpose(&dict.w_enc, m, d),
        ));
        tensors.push(("b_enc".into(), vec![m], dict.b_enc.clone()));
    }
    if !dict.threshold.is_empty() {
        tensors.push(("threshold".into(), vec![m], dict.threshold.clone()));
    }
    for (h, n) in dict.norms.iter().enumerate() {
        tensors.push((format!("norm.{h}.shift"), vec![d], n.shift.clone()));
        tensors.push((format!("norm.{h}.scale"), vec![d], n.scale.clone()));
    }
    let json = |e: serde_json::Error| format_err(path, e);
    let mut meta = HashMap::new();
    meta.insert(
        "hubel_dictionary".to_string(),
        serde_json::to_string(&dict.config).map_err(json)?,
    );
    meta.insert(
        "hubel_atoms".to_string(),
        serde_json::to_string(&dict.info).map_err(json)?,
    );
    write_tensors(path, tensors, Some(meta))
}

/// Loads a dictionary saved by [`save`]; a SAELens folder (or its `cfg.json`) is imported.
pub fn load(path: &Path) -> Result<Dictionary, DictError> {
    if path.is_dir() || path.file_name().is_some_and(|n| n == "cfg.json") {
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        return import_saelens(dir);
    }
    let raw = std::fs::read(path).map_err(io_err(path))?;
    let (_, header) = SafeTensors::read_metadata(&raw).map_err(|e| format_err(path, e))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let Some(config) = meta.get("hubel_dictionary") else {
        return Err(format_err(
            path,
            "it is a safetensors file without a hubel_dictionary header (a SAELens SAE is \
             opened as its folder, with cfg.json)",
        ));
    };
    let config: DictConfig =
        serde_json::from_str(config).map_err(|e| format_err(path, format!("its config: {e}")))?;
    let info: Vec<AtomInfo> = match meta.get("hubel_atoms") {
        Some(s) => {
            serde_json::from_str(s).map_err(|e| format_err(path, format!("its atoms: {e}")))?
        }
        None => Vec::new(),
    };
    let st = SafeTensors::deserialize(&raw).map_err(|e| format_err(path, e))?;
    let (m, d) = (config.atoms, config.d_in);
    if m == 0 || d == 0 || config.hooks.is_empty() {
        return Err(format_err(
            path,
            "it has no atoms, no dimensions or no hook",
        ));
    }
    let w_dec = need(&st, "W_dec", &[m, d], path)?;
    let b_dec = need(&st, "b_dec", &[d], path)?;
    let (w_enc, b_enc) = if config.method.has_encoder() {
        let w = need(&st, "W_enc", &[d, m], path)?;
        (linalg::transpose(&w, d, m), need(&st, "b_enc", &[m], path)?)
    } else {
        (Vec::new(), Vec::new())
    };
    let threshold = if config.method == Method::Jumprelu {
        need(&st, "threshold", &[m], path)?
    } else {
        Vec::new()
    };
    let norms = (0..config.hooks.len())
        .map(|h| {
            Ok(Normaliser {
                shift: need(&st, &format!("norm.{h}.shift"), &[d], path)?,
                scale: need(&st, &format!("norm.{h}.scale"), &[d], path)?,
            })
        })
        .collect::<Result<Vec<_>, DictError>>()?;
    if let Some(bad) = info
        .iter()
        .position(|i| !i.importance.is_empty() && i.importance.len() != config.hooks.len())
    {
        return Err(format_err(
            path,
            format!("atom {bad}'s importance does not have one value per hook"),
        ));
    }
    if !info.is_empty() && info.len() != m {
        return Err(format_err(
            path,
            format!("it describes {} atoms but has {m}", info.len()),
        ));
    }
    let encoding = config.encoding;
    Dictionary {
        config,
        norms,
        w_dec,
        b_dec,
        w_enc,
        b_enc,
        threshold,
        info,
        sources: Vec::new(),
        gram: Default::default(),
    }
    .with_encoding(encoding)
    .map_err(|e| format_err(path, e.to_string()))
}

/// Writes `dict` as a SAELens folder: `cfg.json` + `sae_weights.safetensors`, the normalisation
/// folded into the weights (codes on raw activations equal ours).
pub fn export_saelens(dict: &Dictionary, dir: &Path) -> Result<(), DictError> {
    if !dict.config.method.has_encoder() {
        return Err(DictError::Invalid(format!(
            "a {} dictionary has no encoder (its codes are found by {}), and SAELens's format \
             needs one: export a topk dictionary",
            dict.config.method.name(),
            if dict.config.method == Method::Fista {
                "FISTA"
            } else {
                "matching pursuit"
            }
        )));
    }
    if dict.config.hooks.len() != 1 {
        return Err(DictError::Invalid(
            "a SAELens SAE reads one hook; this dictionary reads several".into(),
        ));
    }
    let (m, d) = (dict.atoms(), dict.d());
    let norm = &dict.norms[0];
    // Our codes: pre = ((x − s)/c − b_dec) · W_encᵀ + b_enc and x̂ = c ⊙ (b_dec + Σ z W_dec) + s.
    let mut w_enc = dict.w_enc.clone();
    for row in w_enc.chunks_exact_mut(d) {
        for (w, c) in row.iter_mut().zip(&norm.scale) {
            *w /= c;
        }
    }
    let mut w_dec = dict.w_dec.clone();
    for row in w_dec.chunks_exact_mut(d) {
        for (w, c) in row.iter_mut().zip(&norm.scale) {
            *w *= c;
        }
    }
    let b_dec: Vec<f32> = dict
        .b_dec
        .iter()
        .zip(&norm.shift)
        .zip(&norm.scale)
        .map(|((b, s), c)| s + c * b)
        .collect();
    let mut b_enc = dict.b_enc.clone();
    if !dict.config.apply_b_dec_to_input {
        // pre = x·W'ᵀ + b_enc − W'·s
        let shifted = linalg::matmul_t(&norm.shift, 1, &w_enc, m, d);
        for (b, s) in b_enc.iter_mut().zip(shifted) {
            *b -= s;
        }
    }
    let mut tensors = vec![
        (
            "W_enc".to_string(),
            vec![d, m],
            linalg::transpose(&w_enc, m, d),
        ),
        ("W_dec".to_string(), vec![m, d], w_dec),
        ("b_enc".to_string(), vec![m], b_enc),
        ("b_dec".to_string(), vec![d], b_dec),
    ];
    if !dict.threshold.is_empty() {
        tensors.push(("threshold".into(), vec![m], dict.threshold.clone()));
    }
    let architecture = match dict.config.method {
        Method::Topk => "topk",
        Method::Jumprelu => "jumprelu",
        _ => "standard",
    };
    let hook = dict.config.hooks[0];
    let mut cfg = serde_json::json!({
        "architecture": architecture,
        "d_in": d,
        "d_sae": m,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": dict.config.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "hook_name": hook.to_string(),
        "hook_layer": hook.layer().map_or(-1, |l| l as i64),
        "model_name": dict.config.model,
        "metadata": {
            "model_name": dict.config.model,
            "hook_name": hook.to_string(),
            "hubel_method": dict.config.method.name(),
            "hubel_tokens": dict.config.tokens,
        },
    });
    if dict.config.method == Method::Topk {
        cfg["k"] = serde_json::json!(dict.config.k);
        cfg["activation_fn_kwargs"] = serde_json::json!({ "k": dict.config.k });
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_tensors(&dir.join("sae_weights.safetensors"), tensors, None)?;
    let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    let cfg_path = dir.join("cfg.json");
    crate::atomic_write(&cfg_path, text.as_bytes()).map_err(io_err(&cfg_path))
}

/// Reads a SAELens folder (`cfg.json` + `sae_weights.safetensors`): standard (ReLU), topk and
/// jumprelu SAEs on activations without normalisation.
pub fn import_saelens(dir: &Path) -> Result<Dictionary, DictError> {
    let cfg_path = dir.join("cfg.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format_err(&cfg_path, e))?;
    let field = |name: &str| {
        cfg.get(name)
            .or_else(|| cfg.get("metadata").and_then(|m| m.get(name)))
    };
    let usize_field = |name: &str| -> Result<usize, DictError> {
        field(name)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| format_err(&cfg_path, format!("it has no whole number `{name}`")))
    };
    let (d, m) = (usize_field("d_in")?, usize_field("d_sae")?);
    if d == 0 || m == 0 {
        return Err(format_err(&cfg_path, "d_in and d_sae must be at least 1"));
    }
    let hook_name = field("hook_name")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format_err(&cfg_path, "it has no `hook_name`"))?;
    let hook: HookPoint = hook_name.parse().map_err(|e| format_err(&cfg_path, e))?;
    let architecture = field("architecture")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("standard");
    let method = match architecture {
        "standard" | "relu" => Method::Relu,
        "topk" => Method::Topk,
        "jumprelu" => Method::Jumprelu,
        other => {
            return Err(format_err(
                &cfg_path,
                format!("architecture `{other}` is not read: standard, topk or jumprelu"),
            ))
        }
    };
    let k = if method == Method::Topk {
        field("k")
            .or_else(|| cfg.get("activation_fn_kwargs").and_then(|a| a.get("k")))
            .and_then(serde_json::Value::as_f64)
            .map(|k| k as usize)
            .filter(|&k| k > 0)
            .ok_or_else(|| format_err(&cfg_path, "a topk SAE without `k`"))?
    } else {
        0
    };
    match field("normalize_activations").and_then(serde_json::Value::as_str) {
        None | Some("none") => {}
        Some(other) => {
            return Err(format_err(
                &cfg_path,
                format!(
                    "normalize_activations is `{other}`: its scale depends on data not in the \
                     folder; only `none` is read"
                ),
            ))
        }
    }
    let apply = field("apply_b_dec_to_input")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    let weights = dir.join("sae_weights.safetensors");
    let raw = std::fs::read(&weights).map_err(io_err(&weights))?;
    let st = SafeTensors::deserialize(&raw).map_err(|e| format_err(&weights, e))?;
    let w_enc = need(&st, "W_enc", &[d, m], &weights)?;
    let w_dec = need(&st, "W_dec", &[m, d], &weights)?;
    let b_enc = need(&st, "b_enc", &[m], &weights)?;
    let b_dec = need(&st, "b_dec", &[d], &weights)?;
    let threshold = if method == Method::Jumprelu {
        need(&st, "threshold", &[m], &weights)?
    } else {
        Vec::new()
    };
    let model = field("model_name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(Dictionary {
        config: DictConfig {
            k,
            apply_b_dec_to_input: apply,
            model,
            ..DictConfig::new(method, vec![hook], d, m)
        },
        norms: vec![Normaliser::identity(d)],
        w_dec,
        b_dec,
        w_enc: linalg::transpose(&w_enc, d, m),
        b_enc,
        threshold,
        info: Vec::new(),
        sources: Vec::new(),
        gram: Default::default(),
    })
}
