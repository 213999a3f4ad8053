//! Dictionary features: sparse codes of the residual stream (Yun, Chen, Olshausen & LeCun 2021).
//!
//! A [`Dictionary`] holds atoms (unit directions, in a normalised space) and a way to encode a
//! residual row into a few non-negative coefficients:
//! - `fista`: one dictionary shared by several layers, codes by FISTA with an L1 penalty λ
//!   (Yun et al.); atoms updated by Adam steps and renormalised to unit length;
//! - `topk`: a top-k sparse autoencoder per layer (encoder, decoder, k active), Adam, dead
//!   latents revived by the auxiliary loss of Gao et al. 2024;
//! - `itda`: the dictionary is made of real activations, added by matching pursuit whenever the
//!   current atoms explain a row poorly (Leask et al. 2025): each atom is a token in its context;
//! - `relu` / `jumprelu`: SAEs imported from SAELens.
//!
//! Normalisation: each hook's rows are centred by their mean (a few SmolLM2 dimensions carry
//! large constant offsets) and divided by the median dimension's spread, except that a dimension
//! whose spread exceeds OUTLIER × the median is divided by spread / OUTLIER: it still counts
//! more than a typical dimension, but at most OUTLIER² times as much in the squared loss. At
//! layer 6 (positions ≥ 1) one dimension's spread is ~50× the median and would otherwise be most
//! of what the loss sees (position 0, where values near 2e4 live, is never collected). Weighting
//! every dimension equally instead (full standardisation) gave worse figures in the original
//! space (1,024-atom top-k SAE, layer 6, 20k WordNet tokens, held-out: FVU 0.147 and
//! ce_recovered 0.872, against 0.118 and 0.908 with this scaling). Reconstructions are mapped
//! back, and every figure (FVU, ce_recovered) is measured in the original space.

pub mod atlas;
pub mod cli;
pub mod collect;
pub mod decompose;
pub mod edit;
pub mod effects;
pub mod eval;
pub mod fista;
pub mod io;
pub mod itda;
pub mod linalg;
pub mod pursuit;
pub mod topk;

use crate::hooks::HookPoint;
use crate::model::ModelError;

pub use collect::{collect, Activations};
use linalg::{axpy, Code};

#[derive(Debug, thiserror::Error)]
pub enum DictError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable dictionary: {reason}")]
    Format {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error("the dictionary job was cancelled")]
    Cancelled,
}

impl From<ModelError> for DictError {
    fn from(e: ModelError) -> Self {
        DictError::Model(Box::new(e))
    }
}

impl From<crate::jobs::Cancelled> for DictError {
    fn from(_: crate::jobs::Cancelled) -> Self {
        DictError::Cancelled
    }
}

impl From<DictError> for crate::jobs::JobError {
    fn from(e: DictError) -> Self {
        match e {
            DictError::Cancelled => crate::jobs::JobError::Cancelled,
            e => crate::jobs::JobError::Failed(e.to_string()),
        }
    }
}

/// How codes are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Fista,
    Topk,
    Itda,
    /// A ReLU SAE (SAELens "standard").
    Relu,
    /// A JumpReLU SAE (SAELens "jumprelu"): a code is kept where it exceeds its threshold.
    Jumprelu,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self, DictError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fista" => Ok(Method::Fista),
            "topk" | "top-k" => Ok(Method::Topk),
            "itda" => Ok(Method::Itda),
            other => Err(DictError::Invalid(format!(
                "unknown method `{other}`: fista, topk or itda"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Fista => "fista",
            Method::Topk => "topk",
            Method::Itda => "itda",
            Method::Relu => "relu",
            Method::Jumprelu => "jumprelu",
        }
    }

    /// Whether codes come from an encoder (`W_enc`, `b_enc`).
    pub fn has_encoder(self) -> bool {
        matches!(self, Method::Topk | Method::Relu | Method::Jumprelu)
    }
}

/// A dimension whose spread exceeds this multiple of the median's is scaled down to it.
pub const OUTLIER: f32 = 8.0;

/// Centring and per-dimension scaling of one hook's rows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normaliser {
    pub shift: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Normaliser {
    pub fn identity(d: usize) -> Self {
        Normaliser {
            shift: vec![0.0; d],
            scale: vec![1.0; d],
        }
    }

    /// The mean of `rows` (`[n, d]`) and the scales described in the module's notes.
    pub fn fit(rows: &[f32], d: usize) -> Self {
        let n = (rows.len() / d.max(1)).max(1) as f64;
        let mut mean = vec![0f64; d];
        for r in rows.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; d];
        for r in rows.chunks_exact(d) {
            for ((s, &v), m) in var.iter_mut().zip(r).zip(&mean) {
                let c = f64::from(v) - m;
                *s += c * c;
            }
        }
        let std: Vec<f32> = var.iter().map(|v| (v / n).sqrt() as f32).collect();
        let mut sorted = std.clone();
        sorted.sort_by(f32::total_cmp);
        let median = sorted.get(d / 2).copied().unwrap_or(1.0).max(1e-6);
        Normaliser {
            shift: mean.iter().map(|&m| m as f32).collect(),
            scale: std.iter().map(|&s| median.max(s / OUTLIER)).collect(),
        }
    }

    pub fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend(
            x.iter()
                .zip(&self.shift)
                .zip(&self.scale)
                .map(|((v, s), c)| (v - s) / c),
        );
    }

    pub fn apply_rows(&self, x: &[f32]) -> Vec<f32> {
        let d = self.shift.len();
        let mut out = Vec::with_capacity(x.len());
        for r in x.chunks_exact(d) {
            out.extend(
                r.iter()
                    .zip(&self.shift)
                    .zip(&self.scale)
                    .map(|((v, s), c)| (v - s) / c),
            );
        }
        out
    }

    /// Back to the original space.
    pub fn invert(&self, xn: &mut [f32]) {
        for ((v, s), c) in xn.iter_mut().zip(&self.shift).zip(&self.scale) {
            *v = *v * c + s;
        }
    }
}

/// What a dictionary is and how it was made (the JSON beside its weights).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DictConfig {
    pub method: Method,
    /// The residual streams it reads (one per layer; several for a shared FISTA dictionary).
    pub hooks: Vec<HookPoint>,
    pub d_in: usize,
    pub atoms: usize,
    /// Active atoms per token (top-k SAE; at most this many for ITDA's matching pursuit).
    #[serde(default)]
    pub k: usize,
    /// FISTA's L1 penalty (in the normalised space).
    #[serde(default)]
    pub lambda: f32,
    /// SAELens's `apply_b_dec_to_input`: the encoder reads `x − b_dec`.
    #[serde(default = "yes")]
    pub apply_b_dec_to_input: bool,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub model_sha256: String,
    #[serde(default)]
    pub corpus: String,
    /// Training rows (tokens at positions ≥ 1) and the number of stimuli they came from.
    #[serde(default)]
    pub tokens: usize,
    #[serde(default)]
    pub stimuli: usize,
    /// How rows are coded: the method's own way, or pursuit over its atoms.
    #[serde(default, skip_serializing_if = "Encoding::is_native")]
    pub encoding: Encoding,
    /// Which stimuli it was trained on and which are its held-out text. Files without it were
    /// trained on the corpus's first `stimuli` ([`Split::Head`]).
    #[serde(default = "head")]
    pub split: Split,
    #[serde(default)]
    pub seconds: f32,
    /// The last training figures.
    #[serde(default)]
    pub trained: Option<TrainPoint>,
}

fn yes() -> bool {
    true
}

fn head() -> Split {
    Split::Head
}

/// How a dictionary turns a row into a code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The method's own: an SAE's encoder, FISTA's solver, ITDA's matching pursuit.
    #[default]
    Native,
    /// Non-negative orthogonal matching pursuit over the atoms, at most `k` of them
    /// ([`pursuit`]): better reconstructions than an SAE's encoder on unseen text, at the same L0.
    Pursuit,
}

impl Encoding {
    pub fn is_native(&self) -> bool {
        *self == Encoding::Native
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Native => "native",
            Encoding::Pursuit => "pursuit",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DictError> {
        match s {
            "native" | "encoder" => Ok(Encoding::Native),
            "pursuit" | "omp" => Ok(Encoding::Pursuit),
            other => Err(DictError::Invalid(format!(
                "unknown encoding {other:?}: native (the method's own) or pursuit"
            ))),
        }
    }
}

/// How a corpus is split into training and held-out text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training stimuli drawn from the whole corpus in a fixed shuffled order; every 20th
    /// stimulus held out ([`collect::spread_order`], [`collect::is_heldout`]).
    Spread,
    /// Trained on the corpus's first `stimuli`, held-out text read from its end (dictionaries
    /// saved before the spread split; for WordNet that trained on nouns and held out adverbs).
    Head,
}

impl DictConfig {
    /// A dictionary of `atoms` atoms of width `d_in` reading `hooks`, nothing else known yet
    /// (no k or λ, no model, corpus or training figures; the encoder reads `x − b_dec`).
    pub fn new(method: Method, hooks: Vec<HookPoint>, d_in: usize, atoms: usize) -> Self {
        DictConfig {
            method,
            hooks,
            d_in,
            atoms,
            k: 0,
            lambda: 0.0,
            apply_b_dec_to_input: true,
            model: String::new(),
            model_sha256: String::new(),
            corpus: String::new(),
            tokens: 0,
            stimuli: 0,
            split: Split::Spread,
            encoding: Encoding::Native,
            seconds: 0.0,
            trained: None,
        }
    }
}

/// One point of a training curve.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainPoint {
    /// Epochs done (fractional while an epoch runs).
    pub epoch: f32,
    /// The objective on the last batches (normalised space).
    pub loss: f32,
    /// Fraction of variance unexplained, normalised space, training rows.
    pub fvu: f32,
    pub l0: f32,
    /// Atoms that did not fire in the last epoch.
    pub dead_frac: f32,
    pub seconds: f32,
}

/// One example of an atom: a token in its context.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AtomExample {
    pub before: String,
    pub token: String,
    pub after: String,
    pub value: f32,
}

/// What a person reads about an atom.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AtomInfo {
    pub label: String,
    pub top_tokens: Vec<String>,
    pub examples: Vec<AtomExample>,
    /// ITDA: the activation this atom is.
    #[serde(default)]
    pub source: Option<AtomExample>,
    /// Fraction of training rows where it is active.
    #[serde(default)]
    pub density: f32,
    /// Per hook: the mean coefficient over that hook's rows (Yun et al.'s importance).
    #[serde(default)]
    pub importance: Vec<f32>,
}

/// A learnt dictionary. Atoms and biases live in the normalised space of each hook's
/// [`Normaliser`]; [`Dictionary::atom_direction`] gives an atom in the original space.
#[derive(Clone, Debug, PartialEq)]
pub struct Dictionary {
    pub config: DictConfig,
    pub norms: Vec<Normaliser>,
    /// `[atoms, d_in]`, unit rows for trained dictionaries.
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// `[atoms, d_in]` (one row per atom; SAELens stores its transpose), empty without encoder.
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// JumpReLU thresholds (empty otherwise).
    pub threshold: Vec<f32>,
    pub info: Vec<AtomInfo>,
    /// ITDA: the training row each atom was taken from (until [`decompose::describe`] turns them
    /// into examples); empty otherwise.
    pub sources: Vec<u32>,
    /// The atoms' Gram matrix `[atoms, atoms]` for pursuit's codes, made by the first encode
    /// (on whichever thread codes rows: the worker's, not the UI's) and shared by clones.
    /// [`Dictionary::with_encoding`] starts an empty one; other encodings leave it unused.
    pub gram: GramCache,
}

/// A lazily made Gram matrix. Derived data: it compares equal to any other, and a dictionary
/// whose atoms change must get a new one ([`Dictionary::with_encoding`] gives one).
#[derive(Clone, Default)]
pub struct GramCache(std::sync::Arc<std::sync::OnceLock<Vec<f32>>>);

impl GramCache {
    /// The Gram matrix of these `[m, d]` atoms, made on first use.
    pub fn get(&self, w: &[f32], m: usize, d: usize) -> &[f32] {
        self.0.get_or_init(|| linalg::matmul_t(w, m, w, m, d))
    }

    pub fn is_made(&self) -> bool {
        self.0.get().is_some()
    }
}

impl PartialEq for GramCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for GramCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GramCache({})",
            if self.is_made() { "made" } else { "empty" }
        )
    }
}

/// The most atoms of a FISTA or ITDA dictionary (their Gram matrix is atoms² floats: 256 MB).
pub const MAX_GRAM_ATOMS: usize = 8192;

/// The most rows collected (tokens × hooks): each row is d_model floats, kept twice (original and
/// normalised) while training; 1M rows of SmolLM2 are 4.6 GB.
pub const MAX_ROWS: usize = 1_000_000;

/// FISTA iterations per code.
pub const FISTA_ITERS: usize = 60;

impl Dictionary {
    /// A dictionary of these atoms with no encoder (codes found by a solver), b_dec zero.
    pub fn decoder_only(config: DictConfig, norms: Vec<Normaliser>, w_dec: Vec<f32>) -> Self {
        let d = config.d_in;
        Dictionary {
            config,
            norms,
            w_dec,
            b_dec: vec![0.0; d],
            w_enc: Vec::new(),
            b_enc: Vec::new(),
            threshold: Vec::new(),
            info: Vec::new(),
            sources: Vec::new(),
            gram: GramCache::default(),
        }
    }

    pub fn d(&self) -> usize {
        self.config.d_in
    }

    pub fn atoms(&self) -> usize {
        self.config.atoms
    }

    pub fn atom(&self, j: usize) -> &[f32] {
        &self.w_dec[j * self.d()..(j + 1) * self.d()]
    }

    /// Which of this dictionary's hooks `hook` is.
    pub fn hook_index(&self, hook: HookPoint) -> Result<usize, DictError> {
        self.config
            .hooks
            .iter()
            .position(|&h| h == hook)
            .ok_or_else(|| {
                DictError::Invalid(format!(
                    "this dictionary reads {}, not {hook}",
                    self.hooks_text()
                ))
            })
    }

    pub fn hooks_text(&self) -> String {
        let names: Vec<String> = self.config.hooks.iter().map(|h| h.to_string()).collect();
        names.join(", ")
    }

    /// Atom `j` in the original space of hook `h`: what its coefficient multiplies.
    pub fn atom_direction(&self, h: usize, j: usize) -> Vec<f32> {
        self.atom(j)
            .iter()
            .zip(&self.norms[h].scale)
            .map(|(a, s)| a * s)
            .collect()
    }

    /// Codes of `rows` rows of hook `h` (original space, `[rows, d]`).
    pub fn encode(&self, h: usize, x: &[f32]) -> Vec<Code> {
        let xn = self.norms[h].apply_rows(x);
        self.encode_normalised(&xn)
    }

    /// Codes of rows already in the normalised space.
    pub fn encode_normalised(&self, xn: &[f32]) -> Vec<Code> {
        let d = self.d();
        let rows = xn.len() / d.max(1);
        if self.config.encoding == Encoding::Pursuit {
            let centred = self.minus_b_dec(xn);
            let m = self.atoms();
            if m == 0 || rows == 0 || self.config.k == 0 {
                return vec![Vec::new(); rows];
            }
            let g = self.gram.get(&self.w_dec, m, d);
            let c = linalg::matmul_t(&centred, rows, &self.w_dec, m, d);
            return pursuit::solve(g, &c, m, rows, self.config.k);
        }
        match self.config.method {
            Method::Topk | Method::Relu | Method::Jumprelu => {
                let input: Vec<f32> = if self.config.apply_b_dec_to_input {
                    xn.chunks_exact(d)
                        .flat_map(|r| r.iter().zip(&self.b_dec).map(|(v, b)| v - b))
                        .collect()
                } else {
                    xn.to_vec()
                };
                let m = self.atoms();
                let mut pre = linalg::matmul_t(&input, rows, &self.w_enc, m, d);
                pre.chunks_exact_mut(m)
                    .for_each(|r| axpy(1.0, &self.b_enc, r));
                pre.chunks_exact(m)
                    .map(|r| match self.config.method {
                        Method::Topk => linalg::top_k_positive(r, self.config.k),
                        Method::Relu => positive(r, |_, v| v > 0.0),
                        _ => positive(r, |j, v| v > self.threshold[j]),
                    })
                    .collect()
            }
            Method::Fista => {
                let centred = self.minus_b_dec(xn);
                fista::codes(&self.w_dec, d, &centred, self.config.lambda, FISTA_ITERS)
            }
            Method::Itda => {
                let centred = self.minus_b_dec(xn);
                itda::pursue(&self.w_dec, d, &centred, self.config.k)
            }
        }
    }

    fn minus_b_dec(&self, xn: &[f32]) -> Vec<f32> {
        xn.chunks_exact(self.d())
            .flat_map(|r| r.iter().zip(&self.b_dec).map(|(v, b)| v - b))
            .collect()
    }

    /// The reconstruction of one code, normalised space.
    pub fn decode_normalised(&self, code: &Code) -> Vec<f32> {
        let mut x = self.b_dec.clone();
        for &(j, v) in code {
            axpy(v, self.atom(j as usize), &mut x);
        }
        x
    }

    /// The reconstruction of one code in hook `h`'s original space.
    pub fn decode(&self, h: usize, code: &Code) -> Vec<f32> {
        let mut x = self.decode_normalised(code);
        self.norms[h].invert(&mut x);
        x
    }

    /// A short name: `topk 1024 @ blocks.6.hook_resid_post`.
    pub fn title(&self) -> String {
        format!(
            "{} {} @ {}{}",
            self.config.method.name(),
            self.atoms(),
            self.hooks_text(),
            match self.config.encoding {
                Encoding::Native => "",
                Encoding::Pursuit => ", codes by pursuit",
            }
        )
    }

    /// The same dictionary coding its rows with `encoding`. Pursuit keeps an atoms × atoms Gram
    /// matrix (at most [`MAX_GRAM_ATOMS`] atoms; made by the first encode after this call, so
    /// atoms changed later need this call again) and needs `k`, the most atoms a code uses.
    pub fn with_encoding(mut self, encoding: Encoding) -> Result<Self, DictError> {
        if encoding == Encoding::Pursuit {
            pursuit_suits(self.config.method, self.atoms(), self.config.k)?;
        }
        self.config.encoding = encoding;
        self.gram = GramCache::default();
        Ok(self)
    }

    /// SHA-256 of everything its codes depend on (method, hooks, k, λ, the encoding, the
    /// normalisers and the weights), in hex: what a scan of its features is keyed by.
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let c = &self.config;
        h.update(
            format!(
                "{}|{}|{}|{}|{}|{}|{}",
                c.method.name(),
                self.hooks_text(),
                c.d_in,
                c.atoms,
                c.k,
                c.lambda,
                c.apply_b_dec_to_input
            )
            .as_bytes(),
        );
        // Natively coded dictionaries keep the hash they had before encodings existed.
        if !c.encoding.is_native() {
            h.update(format!("|{}", c.encoding.name()).as_bytes());
        }
        let mut floats = |v: &[f32]| {
            h.update((v.len() as u64).to_le_bytes());
            // In chunks: no copy of the whole array.
            let mut bytes = Vec::with_capacity(4 * 4096);
            for chunk in v.chunks(4096) {
                bytes.clear();
                bytes.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                h.update(&bytes);
            }
        };
        for n in &self.norms {
            floats(&n.shift);
            floats(&n.scale);
        }
        for v in [
            &self.w_dec,
            &self.b_dec,
            &self.w_enc,
            &self.b_enc,
            &self.threshold,
        ] {
            floats(v);
        }
        format!("{:x}", h.finalize())
    }

    /// The block layers whose residual stream (`hook_resid_post`) this dictionary reads, with
    /// each one's hook index: where its features are a basis of the layer map.
    pub fn resid_layers(&self) -> Vec<(usize, usize)> {
        self.config
            .hooks
            .iter()
            .enumerate()
            .filter_map(|(h, p)| match *p {
                HookPoint::Block {
                    layer,
                    site: crate::hooks::BlockSite::ResidPost,
                } => Some((layer, h)),
                _ => None,
            })
            .collect()
    }

    /// The hook index of layer `layer`'s residual stream, if this dictionary reads it.
    pub fn hook_of_layer(&self, layer: usize) -> Option<usize> {
        self.resid_layers()
            .into_iter()
            .find(|&(l, _)| l == layer)
            .map(|(_, h)| h)
    }

    /// Dense codes `[len, atoms]` of rows `[len, d]` of hook `h`; row 0 is left at zero when
    /// `skip_first` (position 0, the attention sink, on which no dictionary was trained: its
    /// residual is thousands of times larger than the rest, and its "codes" mean nothing).
    pub fn dense_codes(&self, h: usize, x: &[f32], skip_first: bool) -> Vec<f32> {
        self.dense_codes_many(h, &[x], skip_first).remove(0)
    }

    /// [`Dictionary::dense_codes`] of several sequences in one encoding (FISTA and ITDA build
    /// their atoms' Gram matrix once per encoding, not once per sequence).
    pub fn dense_codes_many(&self, h: usize, xs: &[&[f32]], skip_first: bool) -> Vec<Vec<f32>> {
        let (d, m) = (self.d(), self.atoms());
        let from = usize::from(skip_first);
        let mut rows = Vec::new();
        for x in xs {
            let len = x.len() / d.max(1);
            if len > from {
                rows.extend_from_slice(&x[from * d..len * d]);
            }
        }
        let codes = if rows.is_empty() {
            Vec::new()
        } else {
            self.encode(h, &rows)
        };
        let mut codes = codes.into_iter();
        xs.iter()
            .map(|x| {
                let len = x.len() / d.max(1);
                let mut out = vec![0f32; len * m];
                for p in from.min(len)..len {
                    let row = &mut out[p * m..(p + 1) * m];
                    for &(j, v) in &codes.next().unwrap_or_default() {
                        row[j as usize] = v;
                    }
                }
                out
            })
            .collect()
    }

    /// Adds this dictionary's codes to `record` for every residual stream it reads that the
    /// record holds (`[pos, d]`), position 0 left at zero: what makes its atoms a basis of the
    /// layer map, the feature card and the occlusion map ([`crate::analysis::maps`] reads them).
    /// The record's earlier codes are dropped first. A residual of another width than the
    /// dictionary's is skipped (a dictionary of another model).
    pub fn add_codes(&self, record: &mut crate::hooks::ActivationRecord) {
        self.add_codes_all(std::slice::from_mut(record))
    }

    /// [`Dictionary::add_codes`] for several records, each layer encoded once for all of them.
    pub fn add_codes_all(&self, records: &mut [crate::hooks::ActivationRecord]) {
        records.iter_mut().for_each(|r| r.clear_codes());
        for (layer, h) in self.resid_layers() {
            let point = HookPoint::block(layer, crate::hooks::BlockSite::ResidPost);
            let d = self.d();
            let (which, xs): (Vec<usize>, Vec<&[f32]>) = records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let a = r.get(point)?;
                    (a.shape.len() == 2 && a.shape[1] == d).then_some((i, a.data.as_slice()))
                })
                .unzip();
            let codes = self.dense_codes_many(h, &xs, true);
            for (i, data) in which.into_iter().zip(codes) {
                let len = data.len() / self.atoms().max(1);
                records[i].set_codes(
                    layer,
                    crate::hooks::Activation::new(vec![len, self.atoms()], data),
                );
            }
        }
    }

    /// Atom `j`'s label, or `D{j}` when it has none.
    pub fn label(&self, j: usize) -> String {
        match self.info.get(j) {
            Some(i) if !i.label.is_empty() => i.label.clone(),
            _ => format!("D{j}"),
        }
    }
}

fn positive(row: &[f32], keep: impl Fn(usize, f32) -> bool) -> Code {
    let mut code: Code = row
        .iter()
        .enumerate()
        .filter(|&(j, &v)| v > 0.0 && keep(j, v))
        .map(|(j, &v)| (j as u32, v))
        .collect();
    code.sort_by(|a, b| b.1.total_cmp(&a.1));
    code
}

/// Unit-norm random atoms (normal entries, normalised), reproducible from `seed`.
pub fn random_atoms(atoms: usize, d: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = vec![0f32; atoms * d];
    for row in w.chunks_exact_mut(d) {
        for v in row.iter_mut() {
            // Box–Muller.
            let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
            *v = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
        }
        linalg::normalise(row);
    }
    w
}

/// Adam on one flat parameter vector.
#[derive(Clone, Debug)]
pub struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    pub lr: f32,
}

impl Adam {
    pub fn new(n: usize, lr: f32) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr,
        }
    }

    /// One step of `p` along `g` (β = 0.9, 0.999).
    pub fn step(&mut self, p: &mut [f32], g: &[f32]) {
        self.t += 1;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        let lr = self.lr;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
        }
    }

    /// Forgets the moments of the slice `range` (a revived atom starts afresh).
    pub fn reset(&mut self, range: std::ops::Range<usize>) {
        self.m[range.clone()].fill(0.0);
        self.v[range].fill(0.0);
    }
}

/// Removes from each atom's gradient its component along the atom (unit rows stay unit to
/// first order), as Gao et al. do before the step that is followed by renormalising.
pub fn project_out_radial(w: &[f32], g: &mut [f32], d: usize) {
    for (row, grow) in w.chunks_exact(d).zip(g.chunks_exact_mut(d)) {
        let c = linalg::dot(row, grow);
        axpy(-c, row, grow);
    }
}

pub fn normalise_rows(w: &mut [f32], d: usize) {
    for row in w.chunks_exact_mut(d) {
        linalg::normalise(row);
    }
}

/// The running figures of an optimisation loop between two reported points, reported at most
/// every half second and after the last step (or once the time limit is reached).
pub(crate) struct Reporter {
    started: std::time::Instant,
    last: std::time::Instant,
    /// Mean ‖x‖² of the (centred) rows: FVU's denominator.
    tot: f64,
    err: f64,
    rows: usize,
    active: usize,
}

impl Reporter {
    pub(crate) fn new(tot: f64) -> Self {
        let now = std::time::Instant::now();
        Reporter {
            started: now,
            last: now,
            tot,
            err: 0.0,
            rows: 0,
            active: 0,
        }
    }

    pub(crate) fn add(&mut self, err: f64, rows: usize, active: usize) {
        self.err += err;
        self.rows += rows;
        self.active += active;
    }

    pub(crate) fn seconds(&self) -> f32 {
        self.started.elapsed().as_secs_f32()
    }

    /// Whether `opts`' time limit is reached.
    pub(crate) fn over(&self, opts: &TrainOptions) -> bool {
        opts.max_seconds.is_some_and(|s| self.seconds() >= s)
    }

    /// The steps the optimisation will take: `steps`, or fewer when a time limit will stop it
    /// first (projected from the rate so far, once `done` steps give one), so that a schedule
    /// that ends with a decay reaches its end inside the limit.
    pub(crate) fn horizon(&self, opts: &TrainOptions, steps: f32, done: f32) -> f32 {
        let elapsed = self.seconds();
        match opts.max_seconds {
            Some(limit) if done >= 20.0 && elapsed > 0.0 => {
                steps.min((done / elapsed * limit).max(done + 1.0))
            }
            _ => steps,
        }
    }

    /// After batch `bi` of `batches` in `epoch`: reports a point (to `dict`'s config and
    /// `on_point`) when one is due; `dead` gives the dead fraction then.
    pub(crate) fn step(
        &mut self,
        (epoch, bi, batches): (usize, usize, usize),
        last: bool,
        dead: impl FnOnce() -> f32,
        dict: &mut Dictionary,
        on_point: &mut OnPoint<'_>,
    ) -> Result<(), DictError> {
        if !last && self.last.elapsed().as_secs_f32() < 0.5 {
            return Ok(());
        }
        let rows = self.rows.max(1) as f64;
        let point = TrainPoint {
            epoch: epoch as f32 + (bi + 1) as f32 / batches as f32,
            loss: (self.err / rows) as f32,
            fvu: (self.err / rows / self.tot.max(1e-30)) as f32,
            l0: (self.active as f64 / rows) as f32,
            dead_frac: dead(),
            seconds: self.seconds(),
        };
        dict.config.trained = Some(point);
        dict.config.seconds = point.seconds;
        (self.err, self.rows, self.active) = (0.0, 0, 0);
        self.last = std::time::Instant::now();
        on_point(&point, dict)
    }
}

/// Progress of a training run: each point as it is measured; `Err` stops the run (cancel).
pub type OnPoint<'a> = dyn FnMut(&TrainPoint, &Dictionary) -> Result<(), DictError> + 'a;

/// What to train.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub method: Method,
    pub atoms: usize,
    pub k: usize,
    pub lambda: f32,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
    /// Wall-clock limit for the optimisation (after collection); `None`: all epochs.
    pub max_seconds: Option<f32>,
    /// How the trained dictionary codes rows (its labels and examples are found with it).
    pub encoding: Encoding,
}

impl TrainOptions {
    pub fn new(method: Method, atoms: usize) -> Self {
        TrainOptions {
            method,
            atoms,
            k: 32,
            lambda: 2.0,
            epochs: match method {
                Method::Fista => 8,
                _ => 30,
            },
            batch: 1024,
            lr: match method {
                Method::Fista => 2e-3,
                _ => 3e-3,
            },
            seed: 0x5EED,
            max_seconds: None,
            encoding: Encoding::Native,
        }
    }
}

/// Whether `opts.encoding` suits its method and size: refused before anything is collected.
pub fn check_encoding(opts: &TrainOptions) -> Result<(), DictError> {
    match opts.encoding {
        Encoding::Pursuit => pursuit_suits(opts.method, opts.atoms, opts.k),
        Encoding::Native => Ok(()),
    }
}

/// Pursuit needs a k (top-k SAEs and ITDA have one; FISTA's sparsity comes from λ, an imported
/// ReLU/JumpReLU SAE's from its encoder) and an atoms × atoms Gram matrix it can hold.
fn pursuit_suits(method: Method, atoms: usize, k: usize) -> Result<(), DictError> {
    if !matches!(method, Method::Topk | Method::Itda) {
        let why = match method {
            Method::Fista => "a FISTA dictionary's sparsity comes from λ".to_string(),
            m => format!(
                "a {} dictionary's sparsity comes from its encoder",
                m.name()
            ),
        };
        return Err(DictError::Invalid(format!(
            "pursuit codes at most k atoms a row, and {why}: pursuit is for top-k SAEs and ITDA \
             (--method topk or itda)"
        )));
    }
    if k == 0 {
        return Err(DictError::Invalid(
            "pursuit codes at most k atoms a row, and this dictionary's k is 0".into(),
        ));
    }
    if atoms > MAX_GRAM_ATOMS {
        return Err(DictError::Invalid(format!(
            "pursuit keeps an atoms × atoms Gram matrix: at most {MAX_GRAM_ATOMS} atoms, this \
             dictionary has {atoms}"
        )));
    }
    Ok(())
}

/// Trains a dictionary on collected rows (normalisers fitted per hook), calling `on_point`
/// with the running figures; then labels every atom from its top training examples.
pub fn train(
    acts: &Activations,
    opts: &TrainOptions,
    on_point: &mut OnPoint<'_>,
) -> Result<Dictionary, DictError> {
    if acts.is_empty() {
        return Err(DictError::Invalid("no rows to train on".into()));
    }
    if opts.atoms == 0 {
        return Err(DictError::Invalid("--atoms must be at least 1".into()));
    }
    if acts.hooks.len() > 1 && opts.method != Method::Fista {
        return Err(DictError::Invalid(format!(
            "a {} dictionary reads one layer; a dictionary shared by several layers is learnt \
             with --method fista",
            opts.method.name()
        )));
    }
    if matches!(opts.method, Method::Fista | Method::Itda) && opts.atoms > MAX_GRAM_ATOMS {
        return Err(DictError::Invalid(format!(
            "a {} dictionary keeps an atoms × atoms Gram matrix: at most {MAX_GRAM_ATOMS} atoms \
             (a top-k SAE takes more)",
            opts.method.name()
        )));
    }
    if matches!(opts.method, Method::Topk | Method::Itda) && opts.k == 0 {
        return Err(DictError::Invalid("--k must be at least 1".into()));
    }
    check_encoding(opts)?;
    let d = acts.d;
    let norms: Vec<Normaliser> = acts.data.iter().map(|x| Normaliser::fit(x, d)).collect();
    let xn: Vec<Vec<f32>> = acts
        .data
        .iter()
        .zip(&norms)
        .map(|(x, n)| n.apply_rows(x))
        .collect();
    let config = DictConfig {
        k: opts.k,
        lambda: opts.lambda,
        tokens: acts.len(),
        stimuli: acts.stimuli(),
        ..DictConfig::new(opts.method, acts.hooks.clone(), d, opts.atoms)
    };
    let mut dict = match opts.method {
        Method::Topk => topk::train(&xn[0], d, config, norms, opts, on_point)?,
        Method::Fista => fista::train(&xn, d, config, norms, opts, on_point)?,
        Method::Itda => itda::train(&xn[0], d, config, norms, opts, on_point)?,
        m => {
            return Err(DictError::Invalid(format!(
                "{} dictionaries are imported, not trained",
                m.name()
            )))
        }
    };
    dict.config.atoms = dict.w_dec.len() / d;
    dict.with_encoding(opts.encoding)
}

/// Σ‖x − x̂‖² and Σ‖x − mean‖² of rows (any space), for FVU.
pub fn fvu_parts(x: &[f32], xhat: &[f32], d: usize) -> (f64, f64) {
    let n = x.len() / d.max(1);
    let mut mean = vec![0f64; d];
    for r in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += f64::from(v) / n.max(1) as f64;
        }
    }
    let (mut err, mut tot) = (0f64, 0f64);
    for (r, rh) in x.chunks_exact(d).zip(xhat.chunks_exact(d)) {
        for ((&v, &vh), m) in r.iter().zip(rh).zip(&mean) {
            err += f64::from(v - vh).powi(2);
            tot += (f64::from(v) - m).powi(2);
        }
    }
    (err, tot)
}

/// Everything a training job needs.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    pub hooks: Vec<HookPoint>,
    pub tokens: usize,
    pub opts: TrainOptions,
}

/// `--layers 6,8` / `embed` / hook names → hook points (layer numbers mean `hook_resid_post`).
pub fn parse_layers(list: &str, layers: usize) -> Result<Vec<HookPoint>, DictError> {
    let mut out = Vec::new();
    for part in list
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let hook = if part.eq_ignore_ascii_case("embed") {
            HookPoint::Embed
        } else if let Ok(l) = part.parse::<usize>() {
            HookPoint::block(l, crate::hooks::BlockSite::ResidPost)
        } else {
            part.parse::<HookPoint>()
                .map_err(|e| DictError::Invalid(e.to_string()))?
        };
        if let Some(l) = hook.layer() {
            if l >= layers {
                return Err(DictError::Invalid(format!(
                    "layer {l} does not exist: the model has {}",
                    crate::hooks::intervention::layer_count(layers)
                )));
            }
        }
        if !out.contains(&hook) {
            out.push(hook);
        }
    }
    if out.is_empty() {
        return Err(DictError::Invalid(
            "no layers: give --layers 6 (or 4,8,12; `embed` for the embedding)".into(),
        ));
    }
    Ok(out)
}

/// Collects the rows, trains, describes the atoms: the whole job, reporting on `ctx` (phases,
/// tokens collected, then epochs in thousandths) and each training point to `on_point`.
pub fn train_job(
    ctx: Option<&crate::jobs::JobCtx>,
    model: &crate::model::Model,
    corpus: &crate::scan::Corpus,
    spec: &TrainSpec,
    on_point: &mut OnPoint<'_>,
) -> Result<Dictionary, DictError> {
    check_encoding(&spec.opts)?;
    let started = std::time::Instant::now();
    let acts = collect(model, corpus, &spec.hooks, spec.tokens, ctx)?;
    let collected = started.elapsed().as_secs_f32();
    if let Some(ctx) = ctx {
        ctx.set_phase(&format!(
            "training ({} rows collected in {collected:.0} s)",
            acts.len()
        ));
        ctx.set_total((spec.opts.epochs.max(1) * 1000) as u64, "‰ epochs");
        ctx.set_done(0);
    }
    let mut relay = |p: &TrainPoint, d: &Dictionary| -> Result<(), DictError> {
        if let Some(ctx) = ctx {
            ctx.checkpoint()?;
            ctx.set_done((p.epoch * 1000.0) as u64);
        }
        on_point(p, d)
    };
    let mut dict = train(&acts, &spec.opts, &mut relay)?;
    if let Some(ctx) = ctx {
        ctx.set_phase("labelling atoms");
        ctx.clear_total();
    }
    decompose::describe(&mut dict, &acts, model);
    dict.config.model = model.info().name.clone();
    dict.config.model_sha256 = model.info().sha256.clone();
    dict.config.corpus = corpus.name.clone();
    Ok(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_limit_brings_the_schedule_s_end_inside_it() {
        let mut opts = TrainOptions::new(Method::Topk, 8);
        let mut r = Reporter::new(1.0);
        // 100 steps in 10 s: 200 fit in a 20 s limit.
        let Some(earlier) = r.started.checked_sub(std::time::Duration::from_secs(10)) else {
            return; // a clock too young to go back 10 s
        };
        r.started = earlier;
        assert_eq!(r.horizon(&opts, 1000.0, 100.0), 1000.0, "no limit");
        opts.max_seconds = Some(20.0);
        let h = r.horizon(&opts, 1000.0, 100.0);
        assert!((h - 200.0).abs() < 1.0, "{h}");
        // Never fewer than the steps done, never more than planned, no guess from few steps.
        assert_eq!(r.horizon(&opts, 150.0, 100.0), 150.0);
        assert_eq!(r.horizon(&opts, 1000.0, 5.0), 1000.0);
        opts.max_seconds = Some(1.0);
        assert_eq!(r.horizon(&opts, 1000.0, 100.0), 101.0);
    }
}
