//! Circuits: which layers, heads and neurons produce a prediction (issue 11).
//!
//! - [`lens`]: the logit lens, each layer's residual stream (`hook_resid_post`) read through the
//!   final norm and the unembedding at every position: the top tokens, or a target token's
//!   probability and rank, and the layer from which each position's final top-1 stays top-1;
//! - [`dla`]: direct logit attribution, what the embedding, every head, every MLP and every
//!   neuron writes along a target token's logit direction (or target − versus) at one position,
//!   through the final norm with its scale frozen at its value on this run;
//! - [`patch`]: activation patching (causal tracing), a corrupted prompt run with one cell
//!   (layer × position) of the clean prompt's residual stream, attention output or MLP output
//!   patched in, many cells in one batched forward, as a job with progress and cancel.
//!
//! Plain data in and out: the model only through [`Model`]'s public API. Position 0 is not
//! special here (the lens and the trace show it like any other).

pub mod cli;
pub mod dla;
pub mod lens;
pub mod patch;

use serde::Serialize;

use crate::model::{Model, ModelError};

/// Why a circuit report could not be made; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum CircuitError {
    #[error("the {what} token is empty: give one token, e.g. \" Paris\" (with its leading space)")]
    EmptyToken { what: &'static str },
    #[error(
        "the {what} {text:?} is {n} tokens ({pieces}), not one: give a single token (a word \
         usually needs its leading space, e.g. \" Paris\")"
    )]
    NotOneToken {
        what: &'static str,
        text: String,
        n: usize,
        pieces: String,
    },
    #[error(
        "the target and the versus token are the same token ({0:?}): the difference is always 0"
    )]
    SameTokens(String),
    #[error("position {pos} is out of range (the probe has {len} tokens: 0..{})", .len - 1)]
    PositionOutOfRange { pos: usize, len: usize },
    #[error(
        "the clean prompt is {clean} tokens and the corrupted prompt {corrupt}: patching needs \
         the same number of tokens (clean: {clean_tokens}; corrupted: {corrupt_tokens})"
    )]
    LengthMismatch {
        clean: usize,
        corrupt: usize,
        clean_tokens: String,
        corrupt_tokens: String,
    },
    /// Why two prompts cannot be padded or trimmed to the same length.
    #[error("{0}")]
    CannotFit(String),
    #[error("the run was cancelled")]
    Cancelled,
    #[error(transparent)]
    Model(Box<ModelError>),
}

impl From<ModelError> for CircuitError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Cancelled => CircuitError::Cancelled,
            e => CircuitError::Model(Box::new(e)),
        }
    }
}

impl From<crate::hooks::InterventionError> for CircuitError {
    fn from(e: crate::hooks::InterventionError) -> Self {
        ModelError::from(e).into()
    }
}

impl From<crate::jobs::Cancelled> for CircuitError {
    fn from(_: crate::jobs::Cancelled) -> Self {
        CircuitError::Cancelled
    }
}

impl From<CircuitError> for crate::jobs::JobError {
    fn from(e: CircuitError) -> Self {
        match e {
            CircuitError::Cancelled => crate::jobs::JobError::Cancelled,
            e => crate::jobs::JobError::Failed(e.to_string()),
        }
    }
}

pub type Result<T, E = CircuitError> = std::result::Result<T, E>;

/// A token named in a report: its id and its text.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct TokenRef {
    pub id: u32,
    pub token: String,
}

/// `text` as exactly one token of `model` (the tokenizer's own prefix, a BOS, left out);
/// `what` names the argument in the error ("target", "versus").
pub fn single_token(model: &Model, text: &str, what: &'static str) -> Result<TokenRef> {
    if text.is_empty() {
        return Err(CircuitError::EmptyToken { what });
    }
    let prefix = crate::experiments::special_prefix(model);
    let ids = model.tokenizer().encode_ids(text)?;
    let ids = ids.strip_prefix(prefix.as_slice()).unwrap_or(&ids);
    match ids {
        [id] => Ok(TokenRef {
            id: *id,
            token: token_text(model, *id),
        }),
        _ => Err(CircuitError::NotOneToken {
            what,
            text: text.to_string(),
            n: ids.len(),
            pieces: ids
                .iter()
                .map(|&id| format!("{:?}", token_text(model, id)))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A token's text for a report (bytes of a partial character as `<E8>`).
pub fn token_text(model: &Model, id: u32) -> String {
    crate::experiments::token_display(model, id)
}

/// The probe's token ids and texts (empty and over-long text refused by the model).
pub fn tokenize(model: &Model, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
    let tokens = model.tokenize(text)?;
    let ids = tokens.iter().map(|t| t.id).collect::<Vec<_>>();
    let texts = ids.iter().map(|&id| token_text(model, id)).collect();
    Ok((ids, texts))
}
