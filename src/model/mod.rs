//! The transformer runtime: loading (GGUF, HF folders), tokenizing, the hooked forward pass,
//! incremental re-runs and continuation. Knows nothing of egui; everything it hands out is
//! plain data ([`RunOutput`], [`ActivationRecord`]), so no tensor leaves this module.

pub mod config;
mod effect;
pub mod generate;
mod hooks;
pub mod kernels;
mod lens;
pub mod load;
mod pattern;
mod probe_ops;
pub mod random;
pub mod tokenizer;
pub(crate) mod transformer;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Tensor;

pub use config::{Arch, Config};
pub use effect::EffectScale;
pub use generate::{Generate, Sampling};
pub use hooks::Hooks;
pub use lens::LENS_ROWS;
pub use pattern::HeadPattern;
pub use probe_ops::{Coder, FeatureRow, GluSigns, Occlude, Occlusion};
pub use tokenizer::{Token, Tokenizer};
pub use transformer::KvCache;

use crate::hooks::{
    ActivationRecord, BlockSite, Capture, HookPoint, Intervention, InterventionError, Layout,
};
use transformer::Weights;

/// Everything that can go wrong in the runtime, each with a message a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable model file: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("malformed weights: {0}")]
    Format(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the probe is empty: type some text")]
    EmptyText,
    #[error("the probe has {len} tokens but the model's context holds {n_ctx}; shorten the text")]
    TooLong { len: usize, n_ctx: usize },
    #[error("token id {id} is outside the vocabulary ({vocab} tokens)")]
    BadToken { id: u32, vocab: usize },
    #[error("{what} has {got} values; this model needs {expected}")]
    WrongLength {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error(transparent)]
    Intervention(#[from] InterventionError),
    #[error("the run was cancelled")]
    Cancelled,
    #[error("tensor error: {}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set
/// (a user-facing error is a message, never a stack dump).
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    let msg = match e {
        E::WithBacktrace { inner, .. } => return candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string(),
    };
    // A wrapped error may still carry one (`Wrapped`, `WrappedContext`): cut at its first frame.
    let mut kept = Vec::new();
    for line in msg.lines() {
        let t = line.trim_start();
        let frame = t
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if frame || t.starts_with("stack backtrace:") {
            break;
        }
        kept.push(line);
    }
    kept.join("\n").trim_end().to_string()
}

/// What a user (and `hubel probe --json`) is told about a loaded model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// The name the file gives itself (GGUF `general.name`, or the folder's name).
    pub name: String,
    /// What a user calls the model: family, size and variant (`SmolLM2-135M-Instruct`), from
    /// the file's name when it follows the usual `Family-Size-Variant.QUANT.gguf` pattern.
    #[serde(default)]
    pub title: String,
    /// How the weights are stored (`Q4_1 GGUF`, `safetensors F32`); they are always computed in f32.
    #[serde(default)]
    pub format: String,
    pub arch: String,
    pub layers: usize,
    pub d_model: usize,
    pub d_mlp: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d_head: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub parameters: usize,
    /// SHA-256 of the weights file (of all weight files, in name order, for an HF folder).
    pub sha256: String,
    pub path: PathBuf,
}

impl ModelInfo {
    /// `(units, per_position)` of a hook point in this model for a probe of `len` tokens, or
    /// `None` if the point does not exist here.
    pub fn hook_size(&self, point: HookPoint, len: usize) -> Option<(usize, usize)> {
        let llama = self.arch == Arch::Llama.name();
        let width = |w: usize| Some((w, w));
        match point {
            HookPoint::Embed | HookPoint::LnFinal => width(self.d_model),
            HookPoint::PosEmbed => (!llama).then_some((self.d_model, self.d_model)),
            HookPoint::Block { layer, .. } if layer >= self.layers => None,
            HookPoint::Block { site, .. } => match site {
                BlockSite::MlpPreLinear if !llama => None,
                BlockSite::MlpPre | BlockSite::MlpPreLinear | BlockSite::MlpPost => {
                    width(self.d_mlp)
                }
                BlockSite::Q | BlockSite::Z => Some((self.heads, self.heads * self.d_head)),
                BlockSite::K | BlockSite::V => Some((self.kv_heads, self.kv_heads * self.d_head)),
                BlockSite::AttnScores | BlockSite::Pattern => Some((self.heads, self.heads * len)),
                _ => width(self.d_model),
            },
        }
    }

    /// The bytes a run keeps when it records every layer's attention pattern
    /// (`blocks.{l}.attn.hook_pattern`, `[heads, len, len]` floats per layer) for a probe of
    /// `len` tokens; one head's alone is `4 · len²` ([`Model::head_pattern`]).
    pub fn pattern_bytes(&self, len: usize) -> u64 {
        (self.layers * self.heads) as u64 * (len as u64).pow(2) * 4
    }

    /// Its shape in one line: `llama, 30 layers, d_model 576, d_mlp 1536, 9 heads / 3 kv, 134.5M
    /// params` (the CLI's reports and the viewer's status line).
    pub fn shape(&self) -> String {
        format!(
            "{}, {}, d_model {}, d_mlp {}, {} heads / {} kv, {:.1}M params",
            self.arch,
            crate::count(self.layers, "layer", "layers"),
            self.d_model,
            self.d_mlp,
            self.heads,
            self.kv_heads,
            self.parameters as f64 / 1e6
        )
    }

    /// One line for a status bar: `SmolLM2-135M-Instruct · Q4_1 GGUF, computed in f32`.
    pub fn describe(&self) -> String {
        self.describe_at(Precision::Exact)
    }

    /// [`ModelInfo::describe`] saying how a run at `precision` computes.
    pub fn describe_at(&self, precision: Precision) -> String {
        let title = if self.title.is_empty() {
            &self.name
        } else {
            &self.title
        };
        let how = match precision {
            Precision::Exact => "computed in f32",
            Precision::Fast => "computed on the fast path (4-bit × 8-bit)",
        };
        if self.format.is_empty() {
            format!("{title} · {how}")
        } else {
            format!("{title} · {}, {how}", self.format)
        }
    }
}

/// `SmolLM2-135M-Instruct` from `…/SmolLM2-135M-Instruct.Q4_1.gguf` (the quantization suffix
/// dropped); the folder's name for an HF folder; `None` when the path names nothing.
fn title_from_path(path: &std::path::Path) -> Option<String> {
    let file = path.file_name()?.to_string_lossy().into_owned();
    let stem = file.strip_suffix(".gguf").unwrap_or(&file);
    let stem = match stem.rsplit_once('.') {
        Some((head, quant))
            if quant
                .chars()
                .next()
                .is_some_and(|c| matches!(c.to_ascii_uppercase(), 'Q' | 'F' | 'B' | 'I'))
                && quant.chars().any(|c| c.is_ascii_digit()) =>
        {
            head
        }
        _ => stem,
    };
    (!stem.is_empty()).then(|| stem.to_string())
}

/// How a model computes: exactly in f32 (the default, the numbers that match the reference), or
/// on the opt-in fast path (4-bit weight blocks × 8-bit activations, integer dot products).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    #[default]
    Exact,
    Fast,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact (f32)",
            Precision::Fast => "fast (4-bit weights × 8-bit activations)",
        }
    }
}

/// A loaded model with its tokenizer. Cheap to view at another [`Precision`]
/// ([`Model::with_precision`]): the views share the weights.
pub struct Model {
    weights: Arc<Weights>,
    tokenizer: Arc<Tokenizer>,
    info: ModelInfo,
    precision: Precision,
}

/// Positions unembedded at a time by [`Model::token_nll`] (25 MB of logits for SmolLM2: under
/// glibc's largest mmap threshold, so the blocks reuse one heap allocation).
pub const NLL_ROWS: usize = 128;

/// Which logits a batched run computes ([`Model::run_batch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: the run only records (a scan); `RunOutput::logits` is empty.
    None,
    /// The last position's only: `RunOutput::logits` holds one row.
    Last,
    /// Every position's.
    All,
}

/// The result of one run, as plain data.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// `[pos, vocab]`, row-major.
    pub logits: Vec<f32>,
    pub vocab: usize,
    pub record: ActivationRecord,
    /// How many blocks were computed (all of them for a full run).
    pub layers_computed: usize,
}

impl RunOutput {
    pub fn len(&self) -> usize {
        self.logits.len() / self.vocab.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.logits.is_empty()
    }

    /// Logits at `pos`, `[vocab]`.
    pub fn logits_at(&self, pos: usize) -> &[f32] {
        &self.logits[pos * self.vocab..(pos + 1) * self.vocab]
    }

    pub fn last_logits(&self) -> &[f32] {
        self.logits_at(self.len() - 1)
    }
}

/// A probe's baseline run, kept so that changing only the interventions recomputes from the
/// first block they touch (see [`Model::rerun`]).
pub struct ProbeCache {
    tokens: Vec<u32>,
    /// The input of each block in the baseline (no-intervention) run, before its hooks.
    resid_pre: Vec<Tensor>,
    /// Prepared on the fast path (its block inputs are the fast path's).
    fast: bool,
    /// What the baseline run recorded.
    pub baseline: RunOutput,
}

impl ProbeCache {
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Its baseline's every-position logits, handed over (a holder that shows them keeps the one
    /// copy); `baseline.logits` is empty afterwards, so `last_logits` and `logits_at` on it no
    /// longer answer.
    pub fn take_baseline_logits(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.baseline.logits)
    }

    /// Bytes of the block inputs it keeps (`(layers + 1) · len · d_model` floats), beyond its
    /// baseline's record and logits.
    pub fn input_bytes(&self) -> usize {
        self.resid_pre
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// The output of a run's final norm, kept by [`Model::rerun_last`] for
/// [`Model::finish_logits`].
pub struct Finals {
    x: Tensor,
    fast: bool,
}

/// Where a run has to start for a set of interventions.
fn first_touched_block(interventions: &[Intervention], n_layers: usize) -> usize {
    interventions
        .iter()
        .map(|iv| match iv.hook {
            HookPoint::Embed | HookPoint::PosEmbed => 0,
            HookPoint::Block { layer, .. } => layer,
            HookPoint::LnFinal => n_layers,
        })
        .min()
        .unwrap_or(n_layers)
}

impl Model {
    pub(crate) fn new(
        weights: Weights,
        tokenizer: Tokenizer,
        name: String,
        sha256: String,
        path: PathBuf,
    ) -> Result<Self> {
        let cfg = &weights.cfg;
        cfg.validate().map_err(ModelError::Unsupported)?;
        let info = ModelInfo {
            title: title_from_path(&path).unwrap_or_else(|| name.clone()),
            format: String::new(),
            name,
            arch: cfg.arch.name().to_string(),
            layers: cfg.n_layers,
            d_model: cfg.d_model,
            d_mlp: cfg.d_mlp,
            heads: cfg.n_heads,
            kv_heads: cfg.n_kv_heads,
            d_head: cfg.d_head,
            vocab: cfg.vocab_size,
            context_length: cfg.n_ctx,
            parameters: weights.param_count(),
            sha256,
            path,
        };
        Ok(Model {
            weights: Arc::new(weights),
            tokenizer: Arc::new(tokenizer),
            info,
            precision: Precision::Exact,
        })
    }

    /// Opens a GGUF file or an HF folder (config.json, *.safetensors, tokenizer.json).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        load::open(&path.into())
    }

    /// The same model computing at `precision`; shares the weights. The fast path's 4-bit
    /// weights are made the first time a fast run needs each (or all at once by
    /// [`Model::prepare_fast`]) and then kept.
    pub fn with_precision(&self, precision: Precision) -> Model {
        Model {
            weights: self.weights.clone(),
            tokenizer: self.tokenizer.clone(),
            info: self.info.clone(),
            precision,
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn fast(&self) -> bool {
        self.precision == Precision::Fast
    }

    /// Makes the fast path's 4-bit weights now; returns the bytes they hold.
    pub fn prepare_fast(&self) -> usize {
        self.weights.prepare_fast()
    }

    pub fn config(&self) -> &Config {
        &self.weights.cfg
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenizes a probe, refusing empty text and text longer than the context.
    pub fn tokenize(&self, text: &str) -> Result<Vec<Token>> {
        let tokens = self.tokenizer.encode(text)?;
        self.check_tokens(&tokens.iter().map(|t| t.id).collect::<Vec<_>>())?;
        Ok(tokens)
    }

    /// [`Model::tokenize`] with each token's byte range in `text`
    /// ([`Tokenizer::encode_with_offsets`]).
    pub fn tokenize_with_offsets(&self, text: &str) -> Result<Vec<(Token, (usize, usize))>> {
        let tokens = self.tokenizer.encode_with_offsets(text)?;
        self.check_tokens(&tokens.iter().map(|(t, _)| t.id).collect::<Vec<_>>())?;
        Ok(tokens)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let cfg = self.config();
        if tokens.is_empty() {
            return Err(ModelError::EmptyText);
        }
        if tokens.len() > cfg.n_ctx {
            return Err(ModelError::TooLong {
                len: tokens.len(),
                n_ctx: cfg.n_ctx,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(ModelError::BadToken {
                id,
                vocab: cfg.vocab_size,
            });
        }
        Ok(())
    }

    /// `(units, per_position)` of a hook point in this model for a probe of `len` tokens, or
    /// `None` if the point does not exist here.
    pub fn hook_size(&self, point: HookPoint, len: usize) -> Option<(usize, usize)> {
        self.info.hook_size(point, len)
    }

    /// Every hook point this model has, in execution order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let mut all = vec![HookPoint::Embed, HookPoint::PosEmbed];
        for layer in 0..self.config().n_layers {
            all.extend(
                BlockSite::ALL
                    .iter()
                    .map(|&site| HookPoint::block(layer, site)),
            );
        }
        all.push(HookPoint::LnFinal);
        all.retain(|&p| self.hook_size(p, 1).is_some());
        all
    }

    /// How many units (neurons, dimensions or heads) an index of `point` chooses from; an error
    /// naming the model's layers when the point does not exist here.
    pub fn hook_units(&self, point: HookPoint) -> Result<usize, InterventionError> {
        self.hook_size(point, 1)
            .map(|(units, _)| units)
            .ok_or_else(|| self.no_such_hook(point))
    }

    fn no_such_hook(&self, hook: HookPoint) -> InterventionError {
        let layers = self.config().n_layers;
        match hook.layer() {
            Some(layer) if layer >= layers => InterventionError::NoSuchLayer {
                hook,
                layer,
                layers,
            },
            _ => InterventionError::NoSuchHook { hook },
        }
    }

    /// Checks interventions against this model and a probe of `len` tokens.
    pub fn check_interventions(&self, interventions: &[Intervention], len: usize) -> Result<()> {
        for iv in interventions {
            let (units, per_position) = self
                .hook_size(iv.hook, len)
                .ok_or_else(|| self.no_such_hook(iv.hook))?;
            let unit = if iv.hook.layout() == Layout::PosWidth {
                "neurons or dimensions"
            } else {
                "heads"
            };
            iv.check(units, per_position, unit)?;
            iv.check_positions(len)?;
        }
        Ok(())
    }

    /// A full run: all-position logits, the captured activations, interventions applied.
    pub fn run(
        &self,
        tokens: &[u32],
        capture: &Capture,
        interventions: &[Intervention],
    ) -> Result<RunOutput> {
        self.run_cancellable(tokens, capture, interventions, None)
    }

    pub fn run_cancellable(
        &self,
        tokens: &[u32],
        capture: &Capture,
        interventions: &[Intervention],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<RunOutput> {
        let (last, record) = self.forward(tokens, capture, interventions, cancel)?;
        self.output(last, record, self.config().n_layers)
    }

    /// A full forward pass to the final norm's output `[pos, d_model]`, with what it recorded.
    fn forward(
        &self,
        tokens: &[u32],
        capture: &Capture,
        interventions: &[Intervention],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<(Tensor, ActivationRecord)> {
        self.check_tokens(tokens)?;
        self.check_interventions(interventions, tokens.len())?;
        let mut hooks = Hooks::new(capture, interventions);
        if let Some(flag) = cancel {
            hooks = hooks.with_cancel(flag);
        }
        let x = self.weights.embed(tokens, &mut hooks)?;
        let last = self
            .weights
            .run_from(0, x, &mut hooks, None, None, self.fast())?;
        Ok((last, hooks.record))
    }

    /// Several sequences in one forward pass: their tokens packed along one axis (every matrix
    /// product runs on all of them at once), attention within each sequence. Each sequence gets
    /// the same capture and interventions (positions count from its own start) and its own
    /// [`RunOutput`], equal to what [`Model::run`] gives it alone: the kernels compute each
    /// token's row on its own, so batching changes no bit. `logits` chooses which logits are
    /// computed; a scan that only records asks for none and skips the unembedding.
    pub fn run_batch(
        &self,
        seqs: &[&[u32]],
        capture: &Capture,
        interventions: &[Intervention],
        logits: Logits,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Vec<RunOutput>> {
        let each: Vec<&[Intervention]> = vec![interventions; seqs.len()];
        self.run_batch_each(seqs, capture, &each, logits, cancel)
    }

    /// [`Model::run_batch`] with interventions of each sequence's own (`interventions[i]` for
    /// `seqs[i]`: an ablation at positions 1..len, a resampled value per position): still one
    /// forward pass, and each sequence's output still equal to its run alone.
    pub fn run_batch_each(
        &self,
        seqs: &[&[u32]],
        capture: &Capture,
        interventions: &[&[Intervention]],
        logits: Logits,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Vec<RunOutput>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        if interventions.len() != seqs.len() {
            return Err(ModelError::Format(format!(
                "{} sequences but {} lists of interventions",
                seqs.len(),
                interventions.len()
            )));
        }
        for (tokens, ivs) in seqs.iter().zip(interventions) {
            self.check_tokens(tokens)?;
            self.check_interventions(ivs, tokens.len())?;
        }
        let mut hooks: Vec<Hooks> = interventions
            .iter()
            .map(|ivs| {
                let h = Hooks::new(capture, ivs);
                match &cancel {
                    Some(flag) => h.with_cancel(flag.clone()),
                    None => h,
                }
            })
            .collect();
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let x = self.weights.embed_packed(seqs, &mut hooks)?;
        let mut packed = transformer::Seqs::new(&mut hooks, &lens, self.fast());
        let last = self
            .weights
            .run_packed_from(0, x, &mut packed, None, None)?;
        let vocab = self.config().vocab_size;
        let mut outputs = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for (h, &len) in hooks.into_iter().zip(&lens) {
            let rows = match logits {
                Logits::None => None,
                Logits::Last => Some(last.narrow(0, start + len - 1, 1)?),
                Logits::All => Some(last.narrow(0, start, len)?),
            };
            let logits = match rows {
                Some(rows) => self.weights.unembed_all(&rows, self.fast())?,
                None => Vec::new(),
            };
            outputs.push(RunOutput {
                logits,
                vocab,
                record: h.record,
                layers_computed: self.config().n_layers,
            });
            start += len;
        }
        Ok(outputs)
    }

    /// Many copies of a prepared probe, each with its own interventions, in one forward pass
    /// that starts at the first block any of them touches, from the baseline's cached input of
    /// that block ([`Model::rerun`] for a batch: the copies of a causal trace, each patched at
    /// one cell). Each copy's output equals its [`Model::run`]'s (the blocks before the start are
    /// the baseline's, bitwise); records hold only what the run computed (from the start block
    /// on).
    pub fn rerun_batch_each(
        &self,
        cache: &ProbeCache,
        capture: &Capture,
        interventions: &[&[Intervention]],
        logits: Logits,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Vec<RunOutput>> {
        let n_layers = self.config().n_layers;
        let needs_embedding = interventions
            .iter()
            .flat_map(|ivs| ivs.iter())
            .any(|iv| iv.hook.layer().is_none() && iv.hook != HookPoint::LnFinal);
        let start = interventions
            .iter()
            .map(|ivs| first_touched_block(ivs, n_layers))
            .min()
            .unwrap_or(n_layers);
        if needs_embedding || start == 0 || interventions.is_empty() {
            let seqs: Vec<&[u32]> = vec![cache.tokens.as_slice(); interventions.len()];
            return self.run_batch_each(&seqs, capture, interventions, logits, cancel);
        }
        let len = cache.tokens.len();
        for ivs in interventions {
            self.check_interventions(ivs, len)?;
        }
        let mut hooks: Vec<Hooks> = interventions
            .iter()
            .map(|ivs| {
                let h = Hooks::new(capture, ivs);
                match &cancel {
                    Some(flag) => h.with_cancel(flag.clone()),
                    None => h,
                }
            })
            .collect();
        let lens = vec![len; interventions.len()];
        let x = Tensor::cat(
            &vec![cache.resid_pre[start].clone(); interventions.len()],
            0,
        )?;
        let mut packed = transformer::Seqs::new(&mut hooks, &lens, self.fast());
        let last = self
            .weights
            .run_packed_from(start, x, &mut packed, None, None)?;
        let vocab = self.config().vocab_size;
        let mut outputs = Vec::with_capacity(interventions.len());
        for (i, h) in hooks.into_iter().enumerate() {
            let begin = i * len;
            let rows = match logits {
                Logits::None => None,
                Logits::Last => Some(last.narrow(0, begin + len - 1, 1)?),
                Logits::All => Some(last.narrow(0, begin, len)?),
            };
            let logits = match rows {
                Some(rows) => self.weights.unembed_all(&rows, self.fast())?,
                None => Vec::new(),
            };
            outputs.push(RunOutput {
                logits,
                vocab,
                record: h.record,
                layers_computed: n_layers - start,
            });
        }
        Ok(outputs)
    }

    /// The fidelity meter: this probe run exactly and on the fast path, compared at every
    /// position (with the same interventions on both).
    pub fn fidelity(
        &self,
        tokens: &[u32],
        interventions: &[Intervention],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<crate::analysis::Fidelity> {
        let nothing = Capture::Nothing;
        let exact = self.with_precision(Precision::Exact).run_cancellable(
            tokens,
            &nothing,
            interventions,
            cancel.clone(),
        )?;
        let fast = self.with_precision(Precision::Fast).run_cancellable(
            tokens,
            &nothing,
            interventions,
            cancel,
        )?;
        Ok(crate::analysis::fidelity(
            &exact.logits,
            &fast.logits,
            exact.vocab,
        ))
    }

    /// Runs the baseline (no interventions) and keeps what an incremental re-run needs.
    pub fn prepare(
        &self,
        tokens: &[u32],
        capture: &Capture,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<ProbeCache> {
        self.check_tokens(tokens)?;
        let mut hooks = Hooks::new(capture, &[]);
        if let Some(flag) = cancel {
            hooks = hooks.with_cancel(flag);
        }
        let x = self.weights.embed(tokens, &mut hooks)?;
        let mut resid_pre = Vec::with_capacity(self.config().n_layers + 1);
        let logits =
            self.weights
                .run_from(0, x, &mut hooks, None, Some(&mut resid_pre), self.fast())?;
        let baseline = self.output(logits, hooks.record, self.config().n_layers)?;
        Ok(ProbeCache {
            tokens: tokens.to_vec(),
            resid_pre,
            fast: self.fast(),
            baseline,
        })
    }

    /// Re-runs a prepared probe with new interventions, recomputing only from the first block
    /// they touch and starting from the baseline's cached input of that block. Gives bitwise the
    /// same logits as [`Model::run`]. Activations of the blocks before it are copied from the
    /// baseline's record.
    pub fn rerun(
        &self,
        cache: &ProbeCache,
        capture: &Capture,
        interventions: &[Intervention],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<RunOutput> {
        let (out, finals) = self.rerun_last(cache, capture, interventions, cancel)?;
        Ok(RunOutput {
            logits: self.finish_logits(&finals)?,
            ..out
        })
    }

    /// [`Model::rerun`] in two steps, for a viewer that shows the next token first: this
    /// returns the run with only the last position's logits (`logits` holds one row) and what
    /// [`Model::finish_logits`] needs for every position's (the per-token loss: the unembedding
    /// of all positions is a fifth of a forward).
    pub fn rerun_last(
        &self,
        cache: &ProbeCache,
        capture: &Capture,
        interventions: &[Intervention],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<(RunOutput, Finals)> {
        let n_layers = self.config().n_layers;
        self.check_interventions(interventions, cache.tokens.len())?;
        let start = first_touched_block(interventions, n_layers);
        let needs_embedding = start == 0
            && interventions
                .iter()
                .any(|iv| iv.hook.layer().is_none() && iv.hook != HookPoint::LnFinal);
        let mut hooks = Hooks::new(capture, interventions);
        if let Some(flag) = cancel {
            hooks = hooks.with_cancel(flag);
        }
        let (start, x) = if needs_embedding {
            (0, self.weights.embed(&cache.tokens, &mut hooks)?)
        } else {
            // resid_pre has n_layers + 1 entries: the last is the input of the final norm.
            (start, cache.resid_pre[start].clone())
        };
        let last = self
            .weights
            .run_from(start, x, &mut hooks, None, None, self.fast())?;
        let mut record = hooks.record;
        record.fill_before_layer(&cache.baseline.record, start);
        let len = cache.tokens.len();
        let out = RunOutput {
            logits: self
                .weights
                .unembed_all(&last.narrow(0, len - 1, 1)?, self.fast())?,
            vocab: self.config().vocab_size,
            record,
            layers_computed: n_layers - start,
        };
        Ok((
            out,
            Finals {
                x: last,
                fast: self.fast(),
            },
        ))
    }

    /// Every position's logits `[pos, vocab]` of a run begun by [`Model::rerun_last`].
    pub fn finish_logits(&self, finals: &Finals) -> Result<Vec<f32>> {
        self.weights.unembed_all(&finals.x, finals.fast)
    }

    /// A full run that computes only the last position's logits (`logits` holds one row) and
    /// keeps what [`Model::token_nll`] needs: no per-block cache, no `[pos, vocab]` matrix (at
    /// 4,096 tokens that matrix alone is 0.8 GB for SmolLM2's vocabulary).
    pub fn run_last(
        &self,
        tokens: &[u32],
        capture: &Capture,
        interventions: &[Intervention],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<(RunOutput, Finals)> {
        let (last, record) = self.forward(tokens, capture, interventions, cancel)?;
        let len = tokens.len();
        let out = RunOutput {
            logits: self
                .weights
                .unembed_all(&last.narrow(0, len - 1, 1)?, self.fast())?,
            vocab: self.config().vocab_size,
            record,
            layers_computed: self.config().n_layers,
        };
        Ok((
            out,
            Finals {
                x: last,
                fast: self.fast(),
            },
        ))
    }

    /// The loss of each next token (`tokens[1..]`, nats) of a run begun by
    /// [`Model::run_last`] or [`Model::rerun_last`], unembedding [`NLL_ROWS`] positions at a
    /// time: equal to [`crate::analysis::token_nll`] of [`Model::finish_logits`] (the kernels
    /// compute each row on its own), in bounded memory.
    pub fn token_nll(&self, finals: &Finals, tokens: &[u32]) -> Result<Vec<f32>> {
        self.token_nll_by(finals, tokens, NLL_ROWS)
    }

    /// [`Model::token_nll`], `block` positions at a time.
    pub fn token_nll_by(&self, finals: &Finals, tokens: &[u32], block: usize) -> Result<Vec<f32>> {
        let block = block.max(1);
        let (rows, _) = finals.x.dims2()?;
        // The positions both know of (a caller's own tokens may be fewer).
        let len = rows.min(tokens.len());
        let vocab = self.config().vocab_size;
        let mut nll = Vec::with_capacity(len.saturating_sub(1));
        let mut start = 0;
        while start + 1 < len {
            // Rows start..end predict tokens start + 1..end + 1.
            let end = (start + block).min(len - 1);
            let rows = finals.x.narrow(0, start, end - start)?;
            let logits = self.weights.unembed_all(&rows, finals.fast)?;
            // −log p(next) = log Σ exp − logit(next), in f64, each row on the pool.
            let from = nll.len();
            nll.resize(from + end - start, 0.0);
            let out = nll[from..].as_mut_ptr() as usize;
            let row_nll = |range: std::ops::Range<usize>| {
                for r in range {
                    let row = &logits[r * vocab..][..vocab];
                    let next = tokens[start + r + 1] as usize;
                    let v = (crate::analysis::log_sum_exp(row) - row[next] as f64) as f32;
                    // SAFETY: each row writes its own element of the block, inside `nll`,
                    // which outlives the pool call.
                    unsafe { *(out as *mut f32).add(r) = v };
                }
            };
            candle_core::utils::barrier_pool().execute_chunked(end - start, row_nll);
            start = end;
        }
        Ok(nll)
    }

    fn output(
        &self,
        final_resid: Tensor,
        record: ActivationRecord,
        layers_computed: usize,
    ) -> Result<RunOutput> {
        let vocab = self.config().vocab_size;
        let logits = self.weights.unembed_all(&final_resid, self.fast())?;
        Ok(RunOutput {
            logits,
            vocab,
            record,
            layers_computed,
        })
    }

    /// Names how the weights were stored (set by the loader).
    pub(crate) fn with_format(mut self, format: String) -> Self {
        self.info.format = format;
        self
    }

    pub(crate) fn weights(&self) -> &Weights {
        &self.weights
    }
}

#[cfg(test)]
mod title_tests {
    use super::title_from_path;
    use std::path::Path;

    #[test]
    fn a_model_is_named_by_family_size_and_variant() {
        let t = |p: &str| title_from_path(Path::new(p));
        assert_eq!(
            t("/a/SmolLM2-135M-Instruct.Q4_1.gguf").as_deref(),
            Some("SmolLM2-135M-Instruct")
        );
        assert_eq!(t("/a/llama-7b.F16.gguf").as_deref(), Some("llama-7b"));
        assert_eq!(t("/a/model.gguf").as_deref(), Some("model"));
        assert_eq!(
            t("/a/gpt2-small").as_deref(),
            Some("gpt2-small"),
            "an HF folder"
        );
        assert_eq!(
            t("/a/v1.5-chat.gguf").as_deref(),
            Some("v1.5-chat"),
            "not a quant suffix"
        );
    }
}
