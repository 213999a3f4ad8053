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

/// One token of a probe: its id, its text (decoded on its own; a token holding part of a
/// multi-byte character shows as U+FFFD, as in HF) and the bytes it stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Token {
    pub id: u32,
    pub text: String,
    /// The raw bytes of the token's text, before UTF-8 decoding: `E8 8B` for the first two
    /// bytes of 苹 in a byte-level BPE. Empty when unknown (tokens read back from JSON); not
    /// serialized, so the JSON shape stays `{"id", "text"}`.
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

impl Token {
    /// A token whose bytes are its text's UTF-8.
    pub fn from_text(id: u32, text: impl Into<String>) -> Self {
        let text = text.into();
        Token {
            id,
            bytes: text.as_bytes().to_vec(),
            text,
        }
    }

    /// The bytes the token stands for: [`Token::bytes`], or its text's UTF-8 when those are unknown.
    pub fn raw(&self) -> &[u8] {
        if self.bytes.is_empty() {
            self.text.as_bytes()
        } else {
            &self.bytes
        }
    }
}

/// GPT-2's byte-level alphabet reversed: the character a byte-level BPE vocabulary writes for
/// each byte (printable Latin-1 as itself, the rest shifted to U+0100..) back to the byte.
fn byte_of_char(c: char) -> Option<u8> {
    let c = c as u32;
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if c < 0x100 {
        return printable(c).then_some(c as u8);
    }
    // The other 68 bytes, in order, map to U+0100 + n.
    let n = c.checked_sub(0x100)?;
    (0u32..=255)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}

/// `<0xE8>`: SentencePiece's byte-fallback token for one byte.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The vocabulary spells bytes in GPT-2's byte-level alphabet (its decoder is `ByteLevel`).
    byte_level: bool,
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
        let byte_level = matches!(
            inner.get_decoder(),
            Some(tokenizers::decoders::DecoderWrapper::ByteLevel(_))
        );
        Ok(Tokenizer {
            inner,
            byte_level,
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
            byte_level: true,
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
                bytes: self.token_bytes(id),
            })
            .collect())
    }

    /// [`Tokenizer::encode`] with each token's byte range in `text` (a prepended BOS gets the
    /// empty range `(0, 0)`; a token holding part of a character covers that whole character).
    pub fn encode_with_offsets(&self, text: &str) -> Result<Vec<(Token, (usize, usize))>> {
        let enc = self.inner.encode(text, true).map_err(tok_err)?;
        let bos = self.bos.map(|id| (id, (0, 0)));
        Ok(bos
            .into_iter()
            .chain(
                enc.get_ids()
                    .iter()
                    .copied()
                    .zip(enc.get_offsets().iter().copied()),
            )
            .map(|(id, offsets)| {
                let token = Token {
                    id,
                    text: self.token_text(id),
                    bytes: self.token_bytes(id),
                };
                (token, offsets)
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

    /// The bytes one token stands for: a token holding part of a multi-byte character gives
    /// those bytes (`E8 8B`), where its text has U+FFFD.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let added = self.inner.get_added_vocabulary().simple_id_to_token(id);
        let piece = match (&added, self.inner.id_to_token(id)) {
            (None, Some(piece)) => piece,
            // Added tokens (`<|im_start|>`) are written as themselves.
            _ => return self.token_text(id).into_bytes(),
        };
        if self.byte_level {
            // As the ByteLevel decoder does: a piece outside the alphabet is its own UTF-8.
            return piece
                .chars()
                .map(byte_of_char)
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| piece.into_bytes());
        }
        match byte_fallback(&piece) {
            Some(b) => vec![b],
            None => self.token_text(id).into_bytes(),
        }
    }

    /// Several tokens shown as one (a character split over byte tokens): the first id, the
    /// text of the sequence, and all their bytes.
    pub fn token_group(&self, ids: &[u32]) -> Token {
        Token {
            id: ids.first().copied().unwrap_or_default(),
            text: self.decode(ids).unwrap_or_default(),
            bytes: ids.iter().flat_map(|&id| self.token_bytes(id)).collect(),
        }
    }

    /// A sequence's text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// The token prepended to every probe, if any (none for SmolLM2).
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-level character for each byte, from the tokenizers crate's own alphabet.
    fn char_of_byte() -> Vec<char> {
        let mut chars: Vec<(u8, char)> = ByteLevel::alphabet()
            .into_iter()
            .map(|c| (byte_of_char(c).expect("in the alphabet"), c))
            .collect();
        chars.sort();
        chars.dedup_by_key(|(b, _)| *b);
        assert_eq!(chars.len(), 256, "one character per byte");
        chars.into_iter().map(|(_, c)| c).collect()
    }

    #[test]
    fn byte_level_alphabet() {
        let chars = char_of_byte();
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[0xE8], 'è');
        assert_eq!(byte_of_char('苹'), None);
        assert_eq!(byte_fallback("<0xE8>"), Some(0xE8));
        assert_eq!(byte_fallback("<0xE8"), None);
    }

    /// 苹 is E8 8B B9: with one merge (E8 8B) it is two tokens, neither a whole character.
    #[test]
    fn byte_tokens_keep_their_bytes() {
        let chars = char_of_byte();
        let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        let merged = format!("{}{}", chars[0xE8], chars[0x8B]);
        tokens.push(merged.clone());
        tokens.push("<|im_start|>".into());
        let n = tokens.len();
        let mut token_types = vec![1; n];
        token_types[n - 1] = 3;
        let tok = Tokenizer::from_gguf(GgufVocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            token_types,
            merges: vec![format!("{} {}", chars[0xE8], chars[0x8B])],
            bos: None,
            eos: None,
            add_bos: false,
        })
        .unwrap();
        let got = tok.encode("苹 <|im_start|>").unwrap();
        let bytes: Vec<&[u8]> = got.iter().map(|t| t.bytes.as_slice()).collect();
        assert_eq!(
            bytes,
            [&[0xE8, 0x8B][..], &[0xB9], b" ", b"<|im_start|>"],
            "{got:?}"
        );
        assert_eq!(got[0].text, "\u{FFFD}");
        assert_eq!(got[3].text, "<|im_start|>");
        let group = tok.token_group(&[got[0].id, got[1].id]);
        assert_eq!(
            (group.id, group.text.as_str(), group.bytes.as_slice()),
            (got[0].id, "苹", "苹".as_bytes())
        );
        // The JSON shape is unchanged: {"id", "text"}.
        assert_eq!(
            serde_json::to_string(&got[0]).unwrap(),
            format!("{{\"id\":{},\"text\":\"\u{FFFD}\"}}", got[0].id)
        );
    }
}
