//! Receptive fields: a corpus run through the model, and for every MLP neuron
//! (`blocks.L.mlp.hook_post[n]`) and every attention head (‖z_h‖ at `blocks.L.attn.hook_z`) what
//! drives it: top and lowest examples, a histogram with firing density, quantile-group examples
//! and the tokens it fires on (see [`stats`] for how each is kept in bounded memory, [`index`]
//! for the file).
//!
//! - Stimuli ([`Corpus`]): WordNet's glosses and examples (shuffled with a fixed seed, so a
//!   `--limit` scan samples every part of speech), or text files (one stimulus per line). A
//!   stimulus is tokenized, then cut into windows of at most 128 tokens (the model's context if
//!   smaller), each run as its own sequence.
//! - Position 0 of every window is left out of the statistics by default (the attention sink:
//!   its activations are outliers that say nothing about the text); contexts still show it.
//! - An example is (window, position, activation); top/lowest examples are one per window, at
//!   the window's best position. The index keeps each window's token ids, so contexts are
//!   rebuilt without the corpus or the model.
//! - The scan runs in batches of windows (one `run_batch` each, no logits); between batches it
//!   takes the job's checkpoint (cancel, pause, yielding to clicks), and every `save_every` it
//!   saves the index, which records how far it got: scanning again into the same file resumes.

pub mod cli;
pub mod index;
pub mod labels;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use index::{IndexMeta, ScanIndex, StoredStimulus, Windows};
pub use stats::LayerStats;

use crate::corpus::wordnet::{self, Sense};
use crate::features::{Basis, FeatureId};
use crate::hooks::{BlockSite, Capture, HookPoint};
use crate::jobs::JobCtx;
use crate::model::{Logits, Model, ModelError};

/// One example: a window, a position in it, the activation there.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub window: u32,
    pub pos: u32,
    pub act: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable scan index: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("this scan index was made with the model {index_model} (sha256 {index_sha}), not the open one, {model} (sha256 {sha}): scan the corpus with this model, or open that model")]
    WrongModel {
        index_model: String,
        index_sha: String,
        model: String,
        sha: String,
    },
    #[error("{path} holds a scan of another corpus or with other settings ({what}); give another --out, or delete it to start over")]
    Mismatch { path: PathBuf, what: String },
    #[error("corpus: {0}")]
    Corpus(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the scan was cancelled")]
    Cancelled,
}

/// The scan's settings (saved in the index; a resumed scan must use the same).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScanConfig {
    /// Top and lowest examples kept per feature.
    pub k: usize,
    /// Examples sampled per quantile group.
    pub per_group: usize,
    /// Counters of the firing-token sketch.
    pub sketch: usize,
    /// Longest window, in tokens (the model's context if smaller).
    pub window: usize,
    /// Tokens per forward pass (at least one window).
    pub batch_tokens: usize,
    /// Leave position 0 of each window out of the statistics.
    pub exclude_first: bool,
    /// A feature "fires" above this (density, firing tokens); head norms are ≥ 0, so for heads
    /// the density is close to 1 and the histogram says more.
    pub threshold: f32,
    pub seed: u64,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            k: 20,
            per_group: 5,
            sketch: 32,
            window: 128,
            batch_tokens: 512,
            exclude_first: true,
            threshold: 0.0,
            seed: 0x4855_4245_4c53_4341,
        }
    }
}

impl ScanConfig {
    pub fn sizes(&self) -> stats::Sizes {
        stats::Sizes {
            k: self.k,
            per_group: self.per_group,
            sketch: self.sketch,
        }
    }

    /// Bytes of statistics kept for `model` (excluding the windows' tokens).
    pub fn state_bytes(&self, info: &crate::model::ModelInfo) -> usize {
        info.layers * (info.d_mlp + info.heads) * self.sizes().bytes_per_unit()
    }
}

/// One stimulus of a corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct Stimulus {
    pub text: String,
    /// Where it comes from, for a person: `notes.txt:12`, or WordNet's sense.
    pub source: String,
    pub sense: Option<Sense>,
}

/// The name of the WordNet corpus ([`Corpus::wordnet`]) in an index.
pub const WORDNET_CORPUS: &str = "wordnet-3.1";

/// A named list of stimuli.
#[derive(Clone, Debug, PartialEq)]
pub struct Corpus {
    pub name: String,
    pub stimuli: Vec<Stimulus>,
}

impl Corpus {
    /// WordNet 3.1's glosses and examples from the data files under `dir`, in an order shuffled
    /// with a fixed seed.
    pub fn wordnet(dir: &Path) -> Result<Self, ScanError> {
        let synsets = wordnet::read_dir(dir).map_err(|e| ScanError::Corpus(e.to_string()))?;
        let mut stimuli: Vec<Stimulus> = wordnet::stimuli(&synsets)
            .into_iter()
            .map(|(text, sense)| Stimulus {
                source: sense.describe(),
                text,
                sense: Some(sense),
            })
            .collect();
        // Fisher–Yates with splitmix64: the same order on every machine.
        let mut state = 0x0057_454e_4554_u64;
        for i in (1..stimuli.len()).rev() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            stimuli.swap(i, (z % (i as u64 + 1)) as usize);
        }
        Ok(Corpus {
            name: WORDNET_CORPUS.into(),
            stimuli,
        })
    }

    /// A text file (one stimulus per line, blank lines skipped) or a folder of `.txt` files (in
    /// name order).
    pub fn text(path: &Path) -> Result<Self, ScanError> {
        let err = |e: std::io::Error| ScanError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "txt") && p.is_file())
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(ScanError::Corpus(format!(
                    "{} holds no .txt files",
                    path.display()
                )));
            }
            v
        } else {
            vec![path.to_path_buf()]
        };
        let mut stimuli = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|e| ScanError::Io {
                path: f.clone(),
                source: e,
            })?;
            let text = String::from_utf8_lossy(&bytes);
            let name = f
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if !line.is_empty() {
                    stimuli.push(Stimulus {
                        text: line.to_string(),
                        source: format!("{name}:{}", i + 1),
                        sense: None,
                    });
                }
            }
        }
        if stimuli.is_empty() {
            return Err(ScanError::Corpus(format!(
                "{} holds no text",
                path.display()
            )));
        }
        let name = path
            .file_name()
            .map_or_else(|| "text".into(), |n| n.to_string_lossy().into_owned());
        Ok(Corpus { name, stimuli })
    }

    /// A corpus from strings (sources `name:1`, `name:2`, …).
    pub fn from_texts(name: &str, texts: &[&str]) -> Self {
        Corpus {
            name: name.into(),
            stimuli: texts
                .iter()
                .enumerate()
                .map(|(i, t)| Stimulus {
                    text: t.to_string(),
                    source: format!("{name}:{}", i + 1),
                    sense: None,
                })
                .collect(),
        }
    }

    /// SHA-256 over every stimulus's text and source (length-prefixed), in order.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for s in &self.stimuli {
            for part in [&s.text, &s.source] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The windows of the first `limit` stimuli: `(stimulus, start in it, tokens)`.
pub fn windows(
    model: &Model,
    corpus: &Corpus,
    limit: usize,
    config: &ScanConfig,
) -> Result<Vec<(u32, u32, Vec<u32>)>, ScanError> {
    let len = config.window.min(model.config().n_ctx).max(1);
    let mut out = Vec::new();
    for (i, s) in corpus.stimuli.iter().take(limit).enumerate() {
        let ids = model.tokenizer().encode_ids(&s.text)?;
        for (j, chunk) in ids.chunks(len).enumerate() {
            out.push((i as u32, (j * len) as u32, chunk.to_vec()));
        }
    }
    Ok(out)
}

/// The end of the batch of `windows` that starts at `i`: as many windows as fit in
/// `batch_tokens` tokens, at least one.
pub fn batch_end(windows: &[(u32, u32, Vec<u32>)], i: usize, batch_tokens: usize) -> usize {
    let (mut j, mut n) = (i, 0);
    while j < windows.len() && (j == i || n + windows[j].2.len() <= batch_tokens) {
        n += windows[j].2.len();
        j += 1;
    }
    j
}

/// What to scan and where to save it.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub config: ScanConfig,
    /// Stimuli to scan (from the start of the corpus); `None`: all.
    pub limit: Option<usize>,
    /// Where the index is saved (and resumed from, if it holds an earlier part of this scan).
    pub out: Option<PathBuf>,
    pub save_every: Duration,
    /// A dictionary whose features are scanned too (its codes of `hook_resid_post` at the
    /// layers it reads, position 0 left out like every feature's).
    pub dictionary: Option<std::sync::Arc<crate::features::dictionary::Dictionary>>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            config: ScanConfig::default(),
            limit: None,
            out: None,
            save_every: Duration::from_secs(60),
            dictionary: None,
        }
    }
}

impl ScanIndex {
    /// An empty index for `model` and `corpus`.
    pub fn new(model: &Model, corpus: &Corpus, config: &ScanConfig, target: usize) -> Self {
        let info = model.info();
        let s = config.sizes();
        let layer = |l: usize, units: usize, salt: u64| {
            LayerStats::new(
                units,
                s,
                config.seed ^ (l as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt,
            )
        };
        let tok = model.tokenizer();
        ScanIndex {
            meta: IndexMeta {
                format: index::FORMAT.into(),
                version: index::VERSION,
                model_sha256: info.sha256.clone(),
                model_name: if info.title.is_empty() {
                    info.name.clone()
                } else {
                    info.title.clone()
                },
                corpus: corpus.name.clone(),
                corpus_sha256: corpus.sha256(),
                corpus_stimuli: corpus.stimuli.len(),
                config: config.clone(),
                layers: info.layers,
                d_mlp: info.d_mlp,
                heads: info.heads,
                vocab: info.vocab,
                stimuli_target: target,
                stimuli_done: 0,
                windows_done: 0,
                tokens_done: 0,
                positions_counted: 0,
                complete: false,
                seconds: 0.0,
                forward_seconds: 0.0,
                stats_seconds: 0.0,
                position0: if config.exclude_first {
                    index::POSITION0_NOTE.into()
                } else {
                    "position 0 is included in the statistics".into()
                },
                dictionary: None,
            },
            neurons: (0..info.layers).map(|l| layer(l, info.d_mlp, 0)).collect(),
            heads: (0..info.layers)
                .map(|l| layer(l, info.heads, 0xA5A5))
                .collect(),
            dictionary: Vec::new(),
            token_counts: vec![0; info.vocab],
            vocab: (0..info.vocab as u32)
                .map(|id| tok.token_text(id))
                .collect(),
            windows: Windows::new(),
            stimuli: Vec::new(),
        }
    }

    /// An empty index that scans `dict`'s features too.
    pub fn with_dictionary(mut self, dict: &crate::features::dictionary::Dictionary) -> Self {
        let layers: Vec<usize> = dict.resid_layers().iter().map(|&(l, _)| l).collect();
        let cfg = &self.meta.config;
        self.dictionary = layers
            .iter()
            .map(|&l| {
                LayerStats::new(
                    dict.atoms(),
                    cfg.sizes(),
                    cfg.seed ^ (l as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1C7,
                )
            })
            .collect();
        self.meta.dictionary = Some(index::DictScan {
            title: dict.title(),
            sha256: dict.sha256(),
            layers,
            atoms: dict.atoms(),
        });
        self
    }

    /// The dictionary features' statistics of one batch: each window's codes of the residual
    /// streams in `outs`, layer by layer.
    fn add_dictionary_batch(
        &mut self,
        batch: &[(u32, u32, Vec<u32>)],
        outs: &[crate::model::RunOutput],
        dict: &crate::features::dictionary::Dictionary,
        w0: u32,
    ) {
        let cfg = self.meta.config.clone();
        let first = usize::from(cfg.exclude_first);
        for (stats, (layer, h)) in self.dictionary.iter_mut().zip(dict.resid_layers()) {
            let point = HookPoint::block(layer, BlockSite::ResidPost);
            let (which, xs): (Vec<usize>, Vec<&[f32]>) = outs
                .iter()
                .enumerate()
                .filter_map(|(b, out)| Some((b, out.record.get(point)?.data.as_slice())))
                .unzip();
            // One encoding for the whole batch.
            let codes: Vec<(usize, Vec<f32>)> = which
                .into_iter()
                .zip(dict.dense_codes_many(h, &xs, cfg.exclude_first))
                .collect();
            let wins: Vec<stats::WindowValues> = codes
                .iter()
                .map(|(b, c)| stats::WindowValues {
                    window: w0 + *b as u32,
                    tokens: &batch[*b].2,
                    acts: c,
                })
                .collect();
            stats.add_windows(&wins, first, cfg.threshold);
        }
    }

    /// Adds one batch's windows (their runs in `outs`, recording `mlp.hook_post` and
    /// `attn.hook_z`) to the statistics, on `threads` threads (layers split between them), each
    /// layer's units one at a time over the whole batch ([`LayerStats::add_windows`]).
    pub fn add_batch(
        &mut self,
        batch: &[(u32, u32, Vec<u32>)],
        outs: &[crate::model::RunOutput],
        corpus: &Corpus,
        threads: usize,
    ) {
        self.add_batch_with(batch, outs, corpus, threads, None)
    }

    /// [`ScanIndex::add_batch`], and the dictionary's features when the index scans them
    /// (`outs` then record its layers' `hook_resid_post` too).
    pub fn add_batch_with(
        &mut self,
        batch: &[(u32, u32, Vec<u32>)],
        outs: &[crate::model::RunOutput],
        corpus: &Corpus,
        threads: usize,
        dict: Option<&crate::features::dictionary::Dictionary>,
    ) {
        let cfg = self.meta.config.clone();
        let first = usize::from(cfg.exclude_first);
        let w0 = self.windows.len() as u32;
        if let Some(d) = dict {
            self.add_dictionary_batch(batch, outs, d, w0);
        }
        let (layers, heads) = (self.meta.layers, self.meta.heads);
        let per = layers.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for (c, (nchunk, hchunk)) in self
                .neurons
                .chunks_mut(per)
                .zip(self.heads.chunks_mut(per))
                .enumerate()
            {
                let cfg = &cfg;
                scope.spawn(move || {
                    let mut norms = Vec::new();
                    for (i, (ns, hs)) in nchunk.iter_mut().zip(hchunk.iter_mut()).enumerate() {
                        let l = c * per + i;
                        let wins: Vec<stats::WindowValues> = batch
                            .iter()
                            .zip(outs)
                            .enumerate()
                            .filter_map(|(b, ((_, _, tokens), out))| {
                                let a = out.record.get(HookPoint::block(l, BlockSite::MlpPost))?;
                                Some(stats::WindowValues {
                                    window: w0 + b as u32,
                                    tokens,
                                    acts: &a.data,
                                })
                            })
                            .collect();
                        ns.add_windows(&wins, first, cfg.threshold);
                        // ‖z_h‖ of every window, then the heads the same way.
                        norms.clear();
                        let mut spans = Vec::with_capacity(batch.len());
                        for (b, ((_, _, tokens), out)) in batch.iter().zip(outs).enumerate() {
                            if let Some(z) = out.record.get(HookPoint::block(l, BlockSite::Z)) {
                                let at = norms.len();
                                head_norms_into(&z.data, tokens.len(), heads, &mut norms);
                                spans.push((b, at, norms.len()));
                            }
                        }
                        let wins: Vec<stats::WindowValues> = spans
                            .iter()
                            .map(|&(b, at, end)| stats::WindowValues {
                                window: w0 + b as u32,
                                tokens: &batch[b].2,
                                acts: &norms[at..end],
                            })
                            .collect();
                        hs.add_windows(&wins, first, cfg.threshold);
                    }
                });
            }
        });
        for (s, start, tokens) in batch {
            for &t in tokens.iter().skip(first) {
                if let Some(c) = self.token_counts.get_mut(t as usize) {
                    *c += 1;
                }
            }
            self.meta.tokens_done += tokens.len() as u64;
            self.meta.positions_counted += tokens.len().saturating_sub(first) as u64;
            while self.stimuli.len() <= *s as usize {
                let st = &corpus.stimuli[self.stimuli.len()];
                self.stimuli.push(StoredStimulus {
                    text: st.text.clone(),
                    source: st.source.clone(),
                    sense: st.sense.clone(),
                });
            }
            self.windows.push(tokens, *s, *start);
        }
        self.meta.windows_done = self.windows.len();
        self.meta.stimuli_done = self.stimuli.len();
    }
}

/// ‖z_h‖ per position: `z` is `[len, heads, d_head]`, `out` becomes `[len, heads]`.
pub fn head_norms(z: &[f32], len: usize, heads: usize, out: &mut Vec<f32>) {
    out.clear();
    head_norms_into(z, len, heads, out);
}

/// [`head_norms`] appended to `out`.
fn head_norms_into(z: &[f32], len: usize, heads: usize, out: &mut Vec<f32>) {
    let d = z.len().checked_div(len * heads).unwrap_or(0);
    for v in z.chunks_exact(d.max(1)).take(len * heads) {
        out.push(v.iter().map(|x| x * x).sum::<f32>().sqrt());
    }
}

/// Scans `corpus` with `model`: resumes from `opts.out` if it holds an earlier part of the same
/// scan, reports through `ctx` (tokens), saves every `opts.save_every`, on cancel and at the end.
pub fn run(
    model: &Model,
    corpus: &Corpus,
    opts: &ScanOptions,
    ctx: Option<&JobCtx>,
) -> Result<ScanIndex, ScanError> {
    let cfg = &opts.config;
    if let Some(d) = &opts.dictionary {
        let d_model = model.config().d_model;
        if d.d() != d_model {
            return Err(ScanError::Model(ModelError::Format(format!(
                "the dictionary {} reads {} dimensions; this model's residual stream has {d_model}",
                d.title(),
                d.d()
            ))));
        }
    }
    let target = opts.limit.unwrap_or(usize::MAX).min(corpus.stimuli.len());
    let mut index = match &opts.out {
        Some(path) if path.is_file() => {
            let old = ScanIndex::load(path)?;
            old.check_model(model.info())?;
            let dict_sha = opts.dictionary.as_ref().map(|d| d.sha256());
            let what = if old.meta.corpus_sha256 != corpus.sha256() {
                Some(format!("corpus {} vs {}", old.meta.corpus, corpus.name))
            } else if old.meta.dictionary.as_ref().map(|d| &d.sha256) != dict_sha.as_ref() {
                Some("the dictionary scanned differs".to_string())
            } else if old.meta.config != *cfg {
                Some("settings differ".to_string())
            } else {
                None
            };
            if let Some(what) = what {
                return Err(ScanError::Mismatch {
                    path: path.clone(),
                    what,
                });
            }
            old
        }
        _ => {
            let index = ScanIndex::new(model, corpus, cfg, target);
            match &opts.dictionary {
                Some(d) => index.with_dictionary(d),
                None => index,
            }
        }
    };
    index.meta.stimuli_target = target.max(index.meta.stimuli_done);
    if let Some(ctx) = ctx {
        ctx.set_phase("Tokenizing");
    }
    let all = windows(model, corpus, target, cfg)?;
    let done = index.meta.windows_done.min(all.len());
    let todo = &all[done..];
    let total: u64 = todo.iter().map(|w| w.2.len() as u64).sum();
    if let Some(ctx) = ctx {
        ctx.set_phase(&format!(
            "Scanning {} stimuli",
            target.saturating_sub(index.meta.stimuli_done)
        ));
        ctx.set_total(total, "tokens");
    }
    let layers = model.config().n_layers;
    let capture = Capture::points((0..layers).flat_map(|l| {
        let resid = opts
            .dictionary
            .as_ref()
            .is_some_and(|d| d.hook_of_layer(l).is_some())
            .then_some(HookPoint::block(l, BlockSite::ResidPost));
        [
            Some(HookPoint::block(l, BlockSite::MlpPost)),
            Some(HookPoint::block(l, BlockSite::Z)),
            resid,
        ]
        .into_iter()
        .flatten()
    }));
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let save = |index: &mut ScanIndex| -> Result<(), ScanError> {
        // Times in whole microseconds: their JSON text then parses back to the same f64, so a
        // loaded index equals the saved one.
        let m = &mut index.meta;
        for t in [&mut m.seconds, &mut m.forward_seconds, &mut m.stats_seconds] {
            *t = (*t * 1e6).round() / 1e6;
        }
        match &opts.out {
            Some(p) => index.save(p),
            None => Ok(()),
        }
    };
    let started = Instant::now();
    let seconds0 = index.meta.seconds;
    let mut last_save = Instant::now();
    let mut i = 0;
    while i < todo.len() {
        if let Some(ctx) = ctx {
            if ctx.checkpoint().is_err() {
                index.meta.seconds = seconds0 + started.elapsed().as_secs_f64();
                save(&mut index)?;
                return Err(ScanError::Cancelled);
            }
        }
        let j = batch_end(todo, i, cfg.batch_tokens);
        let n: usize = todo[i..j].iter().map(|w| w.2.len()).sum();
        let batch = &todo[i..j];
        let seqs: Vec<&[u32]> = batch.iter().map(|w| w.2.as_slice()).collect();
        let t0 = Instant::now();
        let outs = match model.run_batch(
            &seqs,
            &capture,
            &[],
            Logits::None,
            ctx.map(|c| c.cancel_flag().clone()),
        ) {
            Ok(o) => o,
            Err(ModelError::Cancelled) => {
                index.meta.seconds = seconds0 + started.elapsed().as_secs_f64();
                save(&mut index)?;
                return Err(ScanError::Cancelled);
            }
            Err(e) => return Err(e.into()),
        };
        let t1 = Instant::now();
        index.add_batch_with(batch, &outs, corpus, threads, opts.dictionary.as_deref());
        index.meta.forward_seconds += (t1 - t0).as_secs_f64();
        index.meta.stats_seconds += t1.elapsed().as_secs_f64();
        if let Some(ctx) = ctx {
            ctx.advance(n as u64);
        }
        i = j;
        if last_save.elapsed() >= opts.save_every && i < todo.len() {
            index.meta.seconds = seconds0 + started.elapsed().as_secs_f64();
            save(&mut index)?;
            last_save = Instant::now();
        }
    }
    index.meta.complete = index.meta.stimuli_done >= index.meta.corpus_stimuli
        || (index.meta.windows_done >= all.len() && target >= corpus.stimuli.len());
    index.meta.seconds = seconds0 + started.elapsed().as_secs_f64();
    save(&mut index)?;
    Ok(index)
}

/// [`run`] as a job.
pub fn job(
    ctx: &JobCtx,
    model: &Model,
    corpus: &Corpus,
    opts: &ScanOptions,
) -> Result<ScanIndex, crate::jobs::JobError> {
    run(model, corpus, opts, Some(ctx)).map_err(|e| match e {
        ScanError::Cancelled => crate::jobs::JobError::Cancelled,
        e => crate::jobs::JobError::Failed(e.to_string()),
    })
}

// ---- reading an index ----

/// One example as `hubel top --json` prints it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExampleView {
    /// The window's text (the stimulus's, when it is one window).
    pub text: String,
    pub tokens: Vec<String>,
    /// The position in `tokens`.
    pub pos: usize,
    pub activation: f32,
    pub source: String,
    pub stimulus: usize,
    pub window: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sense: Option<Sense>,
}

/// A frequent firing token: its count among firing positions (at most `overcount` too high),
/// its corpus count, and the log-odds of firing on it against the corpus (smoothed by ½), from
/// the guaranteed count (count − overcount), so a sketch's overcount never inflates it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FiringToken {
    pub token: String,
    pub id: u32,
    pub count: u32,
    pub overcount: u32,
    pub corpus_count: u64,
    pub log_odds: f64,
}

impl FiringToken {
    /// How often it surely fired here: the sketch's count less its possible overcount.
    pub fn guaranteed(&self) -> u64 {
        u64::from(self.count.saturating_sub(self.overcount))
    }

    /// The most it can have fired: the sketch's count, and never more than the token occurs.
    pub fn at_most(&self) -> u64 {
        u64::from(self.count).min(self.corpus_count)
    }

    /// Worth showing: at least [`FiringToken::MIN_COUNT`] firings for sure, and the range it
    /// may lie in ([`FiringToken::guaranteed`] to [`FiringToken::at_most`]) no wider than that.
    /// A unit above its threshold at most positions, over many distinct tokens, fills the 32
    /// counters with guesses (seen: "1970 ± 1968" for a token that occurs 13 times); those rows
    /// say nothing.
    pub fn reliable(&self) -> bool {
        let sure = self.guaranteed();
        sure >= Self::MIN_COUNT && self.at_most().saturating_sub(sure) <= sure
    }

    pub const MIN_COUNT: u64 = 3;
}

/// Everything the index knows about one feature.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureSummary {
    pub feature: String,
    pub positions: u64,
    pub fired: u64,
    pub density: f64,
    pub threshold: f32,
    pub mean: f64,
    pub min: f32,
    pub max: f32,
    /// Left edge of bin 0, bin width, counts.
    pub hist_start: f64,
    pub hist_width: f64,
    pub hist: Vec<u32>,
    /// Per group: interval, count, examples.
    pub groups: Vec<((f64, f64), u32, Vec<ExampleView>)>,
    pub top: Vec<ExampleView>,
    pub lowest: Vec<ExampleView>,
    pub firing_tokens: Vec<FiringToken>,
    pub position0: String,
}

impl ScanIndex {
    fn layer(&self, f: &FeatureId) -> Result<&LayerStats, String> {
        let (layers, units, what) = match f.basis {
            Basis::Neurons => (&self.neurons, self.meta.d_mlp, "MLP neurons"),
            Basis::Heads => (&self.heads, self.meta.heads, "attention heads"),
            Basis::Dictionary => {
                let Some(d) = &self.meta.dictionary else {
                    return Err(format!(
                        "{f} is a dictionary feature: this scan holds neurons and heads only; \
                         scan with the dictionary in use"
                    ));
                };
                let Some(i) = d.layers.iter().position(|&l| l == f.layer) else {
                    return Err(format!(
                        "{f}: the scanned dictionary ({}) does not read layer {}",
                        d.title, f.layer
                    ));
                };
                if f.index >= d.atoms {
                    return Err(format!("{f}: the scanned dictionary has {} atoms", d.atoms));
                }
                return Ok(&self.dictionary[i]);
            }
        };
        if f.layer >= layers.len() || f.index >= units {
            return Err(format!(
                "{f}: the scanned model has {} layers of {units} {what}",
                layers.len()
            ));
        }
        Ok(&layers[f.layer])
    }

    /// An example with its window's tokens.
    pub fn view(&self, e: &Example) -> Option<ExampleView> {
        let w = e.window as usize;
        if w >= self.windows.len() {
            return None;
        }
        let ids = self.windows.get(w);
        let tokens: Vec<String> = ids
            .iter()
            .map(|&t| {
                self.vocab
                    .get(t as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("<{t}>"))
            })
            .collect();
        let s = self.windows.stimulus[w] as usize;
        let st = self.stimuli.get(s)?;
        let whole = self.windows.start[w] == 0
            && self
                .windows
                .stimulus
                .get(w + 1)
                .is_none_or(|&n| n as usize != s);
        Some(ExampleView {
            text: if whole {
                st.text.clone()
            } else {
                tokens.concat()
            },
            tokens,
            pos: e.pos as usize,
            activation: e.act,
            source: st.source.clone(),
            stimulus: s,
            window: w,
            sense: st.sense.clone(),
        })
    }

    /// The feature's top (or lowest) `k` examples, best first.
    pub fn examples(
        &self,
        f: &FeatureId,
        lowest: bool,
        k: usize,
    ) -> Result<Vec<ExampleView>, String> {
        let l = self.layer(f)?;
        let v = if lowest {
            l.lowest(f.index)
        } else {
            l.top(f.index)
        };
        Ok(v.iter().take(k).filter_map(|e| self.view(e)).collect())
    }

    /// Everything about a feature.
    pub fn summary(&self, f: &FeatureId, k: usize) -> Result<FeatureSummary, String> {
        let l = self.layer(f)?;
        let u = f.index;
        let (hist_start, hist_width, hist) = l.histogram(u);
        let n = l.n[u];
        let corpus_total: u64 = self.token_counts.iter().sum();
        let fired = l.fired[u];
        let firing_tokens = l
            .firing_tokens(u)
            .into_iter()
            .map(|(id, count, overcount)| {
                let c = self.token_counts.get(id as usize).copied().unwrap_or(0);
                let lo = |a: f64, b: f64| ((a + 0.5) / (b - a + 0.5)).ln();
                FiringToken {
                    token: self.vocab.get(id as usize).cloned().unwrap_or_default(),
                    id,
                    count,
                    overcount,
                    corpus_count: c,
                    log_odds: lo(f64::from(count - overcount), fired as f64)
                        - lo(c as f64, corpus_total as f64),
                }
            })
            .collect();
        Ok(FeatureSummary {
            feature: f.label(),
            positions: n,
            fired,
            density: if n == 0 { 0.0 } else { fired as f64 / n as f64 },
            threshold: self.meta.config.threshold,
            mean: if n == 0 { 0.0 } else { l.sum[u] / n as f64 },
            min: l.min[u],
            max: l.max[u],
            hist_start,
            hist_width,
            hist: hist.to_vec(),
            groups: l
                .groups(u)
                .into_iter()
                .map(|(r, c, ex)| (r, c, ex.iter().filter_map(|e| self.view(e)).collect()))
                .collect(),
            top: self.examples(f, false, k)?,
            lowest: self.examples(f, true, k)?,
            firing_tokens,
            position0: self.meta.position0.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::FiringToken;

    fn token(count: u32, overcount: u32, corpus_count: u64) -> FiringToken {
        FiringToken {
            token: " left".into(),
            id: 1,
            count,
            overcount,
            corpus_count,
            log_odds: 0.0,
        }
    }

    #[test]
    fn a_firing_token_is_shown_only_when_the_sketch_is_sure_of_it() {
        // The case seen on L10N222: a saturated sketch's guess.
        let guess = token(1970, 1968, 13);
        assert_eq!((guess.guaranteed(), guess.at_most()), (2, 13));
        assert!(!guess.reliable());
        // Exact and frequent.
        let exact = token(3502, 0, 3502);
        assert_eq!((exact.guaranteed(), exact.at_most()), (3502, 3502));
        assert!(exact.reliable());
        // Uncertain by less than it surely counts.
        assert!(token(850, 9, 850).reliable());
        // Sure but too rare, or less sure than uncertain.
        assert!(!token(2, 0, 40).reliable());
        assert!(!token(20, 11, 40).reliable());
        assert!(token(20, 10, 40).reliable());
        // The corpus pins it: at most 12 occurrences, so 9 sure of 12 is enough.
        assert!(token(20, 11, 12).reliable());
    }
}
