//! Tokenizers: HF's `tokenizer.json`, or a byte-level BPE rebuilt from GGUF metadata.
//!
//! The GGUF path builds what llama.cpp means by `tokenizer.ggml.pre`: for `smollm`, digits split
//! one by one, then the GPT-2 split, with no prefix space (candle's own GGUF helper adds one,
//! which shifts every token of SmolLM2).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use super::{ModelError, Result};

/// One token of a probe: its id and its text (decoded on its own; a token holding part of a
/// multi-byte character shows as U+FFFD, as in HF).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Token {
    pub id: u32,
    pub text: String,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended to every probe (from `add_bos_token`; false for SmolLM2).
    bos: Option<u32>,
    eos: Option<u32>,
}

/// What GGUF metadata says about the tokenizer.
pub struct GgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// From an HF `tokenizer.json`; special tokens (BOS) come from its post-processor.
    pub fn from_hf_file(path: &std::path::Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let eos = ["<|endoftext|>", "</s>", "<|im_end|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t));
        Ok(Tokenizer {
            inner,
            bos: None,
            eos,
        })
    }

    /// Rebuilds a byte-level BPE tokenizer from GGUF metadata.
    pub fn from_gguf(v: GgufVocab) -> Result<Self> {
        if v.model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model `{}` (only byte-level BPE, `gpt2`, is supported)",
                v.model
            )));
        }
        let byte_level = ByteLevel::new(false, true, true);
        let pre: PreTokenizerWrapper = match v.pre.as_deref() {
            Some("smollm") => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            None | Some("default") | Some("gpt2") | Some("gpt-2") => byte_level.into(),
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF pre-tokenizer `{other}` (supported: smollm, gpt2, default)"
                )))
            }
        };
        let vocab: ahash::AHashMap<String, u32> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merges = Vec::with_capacity(v.merges.len());
        for m in &v.merges {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| tok_err(format!("malformed merge `{m}`")))?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (type 3) are special; user-defined ones (type 4) are added tokens.
        let special: Vec<AddedToken> = v
            .tokens
            .iter()
            .zip(&v.token_types)
            .filter(|(_, &t)| t == 3)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        let user: Vec<AddedToken> = v
            .tokens
            .iter()
            .zip(&v.token_types)
            .filter(|(_, &t)| t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), false))
            .collect();
        inner.add_special_tokens(special).map_err(tok_err)?;
        inner.add_tokens(user).map_err(tok_err)?;
        Ok(Tokenizer {
            inner,
            bos: if v.add_bos { v.bos } else { None },
            eos: v.eos,
        })
    }

    /// Token ids and texts of `text` (special-token strings such as `<|im_start|>` map to their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<Token>> {
        let enc = self.inner.encode(text, true).map_err(tok_err)?;
        let ids: Vec<u32> = self
            .bos
            .into_iter()
            .chain(enc.get_ids().iter().copied())
            .collect();
        Ok(ids
            .into_iter()
            .map(|id| Token {
                id,
                text: self.token_text(id),
            })
            .collect())
    }

    pub fn encode_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(text)?.into_iter().map(|t| t.id).collect())
    }

    /// One token's text.
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    /// A sequence's text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
