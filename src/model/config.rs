//! One plain `Config` for every architecture, and the serde mirrors of the files it comes from.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama family (SmolLM2): RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP.
    Llama,
    /// GPT-2: LayerNorm, learned positions, GELU (tanh) MLP, biases everywhere.
    Gpt2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gpt2 => "gpt2",
        }
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_mlp: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub vocab_size: usize,
    /// Longest sequence the model was trained on.
    pub n_ctx: usize,
    pub norm_eps: f64,
    /// Rotary base (Llama only).
    pub rope_theta: f64,
    pub tie_embeddings: bool,
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return Err(format!("empty dimensions in {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "{} query heads cannot share {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.d_head * self.n_heads != self.d_model {
            return Err(format!(
                "d_head {} × heads {} != d_model {}",
                self.d_head, self.n_heads, self.d_model
            ));
        }
        if self.arch == Arch::Llama && !self.d_head.is_multiple_of(2) {
            return Err(format!(
                "rotary embedding needs an even d_head, got {}",
                self.d_head
            ));
        }
        Ok(())
    }
}

/// The parts of an HF `config.json` Hubel reads (Llama and GPT-2 spell them differently).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    // Llama names
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub vocab_size: Option<usize>,
    // GPT-2 names
    pub n_embd: Option<usize>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_inner: Option<usize>,
    pub n_positions: Option<usize>,
    pub layer_norm_epsilon: Option<f64>,
    pub activation_function: Option<String>,
}

impl HfConfig {
    /// Converts to a [`Config`], or says which field is missing or unsupported.
    pub fn to_config(&self) -> Result<Config, String> {
        let need =
            |v: Option<usize>, name: &str| v.ok_or_else(|| format!("config.json has no `{name}`"));
        match self.model_type.as_deref() {
            Some("llama") => {
                if let Some(scaling) = &self.rope_scaling {
                    if !scaling.is_null() {
                        return Err(format!("rope_scaling {scaling} is not supported"));
                    }
                }
                if let Some(act) = self.hidden_act.as_deref() {
                    if act != "silu" {
                        return Err(format!("hidden_act `{act}` is not supported (only silu)"));
                    }
                }
                let d_model = need(self.hidden_size, "hidden_size")?;
                let n_heads = need(self.num_attention_heads, "num_attention_heads")?;
                Ok(Config {
                    arch: Arch::Llama,
                    n_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
                    d_model,
                    d_mlp: need(self.intermediate_size, "intermediate_size")?,
                    n_heads,
                    n_kv_heads: self.num_key_value_heads.unwrap_or(n_heads),
                    d_head: self.head_dim.unwrap_or(d_model / n_heads.max(1)),
                    vocab_size: need(self.vocab_size, "vocab_size")?,
                    n_ctx: self.max_position_embeddings.unwrap_or(2048),
                    norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
                    rope_theta: self.rope_theta.unwrap_or(10_000.0),
                    tie_embeddings: self.tie_word_embeddings.unwrap_or(false),
                })
            }
            Some("gpt2") => {
                if let Some(act) = self.activation_function.as_deref() {
                    if act != "gelu_new" && act != "gelu_pytorch_tanh" {
                        return Err(format!(
                            "activation_function `{act}` is not supported (only gelu_new)"
                        ));
                    }
                }
                let d_model = need(self.n_embd, "n_embd")?;
                let n_heads = need(self.n_head, "n_head")?;
                Ok(Config {
                    arch: Arch::Gpt2,
                    n_layers: need(self.n_layer, "n_layer")?,
                    d_model,
                    d_mlp: self.n_inner.unwrap_or(4 * d_model),
                    n_heads,
                    n_kv_heads: n_heads,
                    d_head: d_model / n_heads.max(1),
                    vocab_size: need(self.vocab_size, "vocab_size")?,
                    n_ctx: need(self.n_positions, "n_positions")?,
                    norm_eps: self.layer_norm_epsilon.unwrap_or(1e-5),
                    rope_theta: 0.0,
                    tie_embeddings: true,
                })
            }
            Some(other) => Err(format!(
                "model_type `{other}` is not supported (llama and gpt2 are)"
            )),
            None => Err("config.json has no `model_type`".to_string()),
        }
    }
}
