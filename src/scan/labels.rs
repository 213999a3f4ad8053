//! Offline labels: for every feature of a scan index (every MLP neuron and every head), a short
//! description built from the index's statistics alone (no language model writes it), and search
//! over them.
//!
//! A [`Label`] holds:
//! - **Firing tokens** ([`Label::tokens`]): the tokens of the feature's Space-Saving sketch whose
//!   *guaranteed* firing count (count − overcount) is at least [`LabelConfig::min_count`] and
//!   whose log-odds against the corpus is above 0, best log-odds first. The log-odds is the
//!   index's own ([`super::FiringToken`]): `ln((c+½)/(F−c+½)) − ln((C+½)/(N−C+½))` with `c` the
//!   guaranteed firing count of the token, `F` the positions where the feature fired, `C` the
//!   token's corpus count and `N` the positions counted. The minimum count keeps a token seen
//!   once, on which the feature happened to fire, from winning.
//! - **Context**: the most common (previous token, token) and (token, next token) pairs at the
//!   peak positions of the top examples ([`Label::before`], [`Label::after`]), and the peak
//!   tokens themselves ([`Label::peaks`]).
//! - **WordNet enrichment** ([`Label::enrichment`]): the stimuli of the top examples (those above
//!   the firing threshold) against every scanned stimulus with a WordNet sense as the
//!   background, both counted by synset (a synset's gloss and examples share every category and
//!   are one unit, so a feature that fires on a rare word of one synset does not count it two
//!   or three times). Categories: lexicographer file (`verb.motion`), part of speech,
//!   lemma, and every hypernym reached by following `@`/`@i` pointers up from the stimulus's
//!   synset (only when the WordNet data files are given). A category is *tested* when at least
//!   [`LabelConfig::min_hits`] top-example stimuli are in it (with fewer no p-value could pass
//!   the cut after correction); its p-value is the one-sided hypergeometric tail
//!   `P(X ≥ k)`, `X ~ Hypergeometric(N, K, n)` (Fisher's exact test, greater): `N` scanned
//!   synsets, `K` of them in the category, `n` synsets of the top examples, `k` of them in it.
//!   Bonferroni over the categories tested for that feature: `p·m`, capped at 1; only
//!   categories with corrected p < [`LabelConfig::alpha`] (0.01) are reported.
//! - **Promoted tokens** (neurons only, when a model is given): the tokens with the largest and
//!   smallest direct logit effect per unit of activation ([`crate::model::EffectScale::PerUnit`]:
//!   `W_U · (γ ⊙ d̃)`, `d` the neuron's column of the down projection), computed for a layer's
//!   neurons in row blocks with the model's own packed matmul (the same numbers as
//!   `Model::direct_effect`, bit for bit).
//! - **Text** ([`Label::text`]): e.g. `" left" (after " turn"), verb.motion p=3e-6 → promotes
//!   " behind"`.
//! - **Score** ([`Score`]): how well the label's token set `T` predicts where the feature fires.
//!   `precision = P(fires | token ∈ T) = Σ_T c / Σ_T C` and
//!   `recall = P(token ∈ T | fires) = Σ_T c / F` (with `c`, `C`, `F` as above: `c` guaranteed
//!   counts, so both are lower bounds of the true values, over the counted positions), and
//!   `f1 = 2PR/(P+R)`. `T` is the longest prefix (at most [`LabelConfig::max_tokens`]) of the
//!   firing tokens, in log-odds order, over which F1 keeps rising. For heads (‖z‖ ≥ 0, the
//!   threshold 0) "fires" is nearly every position, so their token scores say little.
//!
//! Labels of an index are saved next to it (`<index>.labels.json`, [`labels_path`]), keyed by the
//! index's model SHA-256, corpus SHA-256 and tokens scanned; a file made from another scan is
//! refused ([`LabelError::Stale`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{ScanError, ScanIndex};
use crate::corpus::wordnet;
use crate::features::{Basis, FeatureId};
use crate::jobs::JobCtx;
use crate::model::transformer::Norm;
use crate::model::{Model, ModelError};

pub const FORMAT: &str = "hubel-labels";
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable label file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path} holds labels of another scan ({what}); recompute them (`hubel label FEATURE --recompute`) or delete the file")]
    Stale { path: PathBuf, what: String },
    #[error("WordNet: {0}")]
    WordNet(String),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("labelling was cancelled")]
    Cancelled,
}

/// How labels are made (saved in the label file).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelConfig {
    /// A sketch token needs at least this guaranteed firing count to be a firing token.
    pub min_count: u32,
    /// Firing tokens kept per feature (for search).
    pub keep_tokens: usize,
    /// At most this many tokens in a label's token set (the score's `T`).
    pub max_tokens: usize,
    /// A category is tested when at least this many synsets of the top examples are in it
    /// (two synsets of a category of two in the background pass p < 0.01 by themselves, and
    /// say little).
    pub min_hits: u32,
    /// Bonferroni-corrected p-value below which an enrichment is reported.
    pub alpha: f64,
    /// Enrichments kept per feature (the most significant).
    pub max_enrichment: usize,
    /// Bigrams and peak tokens kept per feature.
    pub bigrams: usize,
    /// The text names the firing tokens when the first one's log-odds is at least this (a
    /// feature that fires on most positions has no token much likelier where it fires, and
    /// its text names the top examples' peak tokens instead, if some are common among them).
    pub text_log_odds: f64,
    /// Promoted and suppressed tokens kept per neuron.
    pub promoted: usize,
    /// Neurons per matmul in the promoted-token step (memory: rows × vocab × 4 bytes).
    pub promoted_rows: usize,
}

impl Default for LabelConfig {
    fn default() -> Self {
        LabelConfig {
            min_count: 3,
            keep_tokens: 8,
            max_tokens: 3,
            min_hits: 3,
            alpha: 0.01,
            max_enrichment: 5,
            bigrams: 3,
            text_log_odds: 1.0,
            promoted: 5,
            promoted_rows: 512,
        }
    }
}

/// A firing token of a feature (see the module docs for the log-odds).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelToken {
    pub token: String,
    pub id: u32,
    /// Guaranteed firing count (the sketch's count less its overcount bound).
    pub count: u32,
    pub corpus_count: u64,
    pub log_odds: f64,
}

/// A token pair at the top examples' peaks: `first second`, seen `count` times.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bigram {
    pub first: String,
    pub second: String,
    pub count: u32,
}

/// A token and how often it is the peak of a top example.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenCount {
    pub token: String,
    pub count: u32,
}

/// An over-represented WordNet category among the top examples' stimuli.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Enrichment {
    /// `lexname`, `pos`, `lemma` or `hypernym`.
    pub kind: String,
    /// `verb.motion`, `verb`, `leave`, `travel (v01835496)`.
    pub name: String,
    /// `k` of the `n` synsets of the top examples are in the category, `big_k` of the `big_n`
    /// scanned synsets.
    pub k: u32,
    pub n: u32,
    pub big_k: u32,
    pub big_n: u32,
    /// One-sided hypergeometric tail P(X ≥ k), and Bonferroni-corrected (× tested, ≤ 1).
    pub p: f64,
    pub p_corrected: f64,
}

/// A token's direct logit effect per unit of activation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Logit {
    pub token: String,
    pub id: u32,
    pub logit: f32,
}

/// How well the label's token set predicts firing (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// The token set: the first `tokens` of [`Label::tokens`].
    pub tokens: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// One feature's label.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Label {
    /// `L8N1000`, `L5H3`.
    pub feature: String,
    pub text: String,
    pub score: Score,
    /// Firing tokens, best log-odds first.
    pub tokens: Vec<LabelToken>,
    /// (previous token, peak token) and (peak token, next token) pairs, most common first.
    pub before: Vec<Bigram>,
    pub after: Vec<Bigram>,
    pub peaks: Vec<TokenCount>,
    /// Significant enrichments, smallest p first.
    pub enrichment: Vec<Enrichment>,
    /// Categories tested (the Bonferroni factor).
    pub tested: usize,
    /// Top examples above the threshold, and how many distinct WordNet synsets their stimuli
    /// are of (the enrichment's `n`).
    pub examples: usize,
    pub stimuli: usize,
    pub density: f64,
    pub max: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotes: Vec<Logit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppresses: Vec<Logit>,
}

/// Seconds spent in each step of [`label_all`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    pub wordnet: f64,
    pub features: f64,
    pub promoted: f64,
    pub total: f64,
}

/// Every feature's label, with the scan they belong to.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Labels {
    pub format: String,
    pub version: u32,
    pub model_sha256: String,
    pub model_name: String,
    pub corpus: String,
    pub corpus_sha256: String,
    pub tokens_done: u64,
    pub layers: usize,
    pub d_mlp: usize,
    pub heads: usize,
    pub config: LabelConfig,
    /// Whether promoted tokens were computed (a model was given) and hypernyms read (WordNet
    /// data files were given).
    pub promoted: bool,
    pub hypernyms: bool,
    pub timings: Timings,
    /// Neurons (layer by layer), then heads.
    pub labels: Vec<Label>,
}

/// Where the labels of the index at `index` are kept: `<index>.labels.json`.
pub fn labels_path(index: &Path) -> PathBuf {
    let mut s = index.as_os_str().to_os_string();
    s.push(".labels.json");
    PathBuf::from(s)
}

// ---- statistics ----

/// `ln(i!)` for i in 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n + 1);
    let mut acc = 0.0f64;
    v.push(0.0);
    for i in 1..=n {
        acc += (i as f64).ln();
        v.push(acc);
    }
    v
}

fn ln_choose(lf: &[f64], n: usize, k: usize) -> f64 {
    lf[n] - lf[k] - lf[n - k]
}

/// One-sided hypergeometric tail `P(X ≥ k)` for `X` the number in a category among `n` drawn
/// without replacement from `big_n`, `big_k` of which are in it (Fisher's exact test, greater).
pub fn hypergeom_sf(k: u32, big_n: u32, big_k: u32, n: u32) -> f64 {
    hypergeom_sf_with(&ln_factorials(big_n as usize), k, big_n, big_k, n)
}

fn hypergeom_sf_with(lf: &[f64], k: u32, big_n: u32, big_k: u32, n: u32) -> f64 {
    let (k, big_n, big_k, n) = (k as usize, big_n as usize, big_k as usize, n as usize);
    if big_k > big_n || n > big_n {
        return f64::NAN;
    }
    let lo = k.max((n + big_k).saturating_sub(big_n));
    let hi = big_k.min(n);
    if k == 0 {
        return 1.0;
    }
    if lo > hi {
        return 0.0;
    }
    let total = ln_choose(lf, big_n, n);
    let terms: Vec<f64> = (lo..=hi)
        .map(|i| ln_choose(lf, big_k, i) + ln_choose(lf, big_n - big_k, n - i) - total)
        .collect();
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = terms.iter().map(|t| (t - m).exp()).sum();
    (m + s.ln()).exp().min(1.0)
}

/// `x` to 4 decimals (the file's size: statistics, not bits).
fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// `p` to 3 significant digits.
fn sig3(p: f64) -> f64 {
    format!("{p:.2e}").parse().unwrap_or(p)
}

/// The index's log-odds of a firing token (see [`super::FiringToken`]).
fn log_odds(count: u64, fired: u64, corpus: u64, total: u64) -> f64 {
    let lo = |a: f64, b: f64| ((a + 0.5) / (b - a + 0.5)).ln();
    lo(count as f64, fired as f64) - lo(corpus as f64, total as f64)
}

/// Precision, recall and F1 of a token set with guaranteed firing count `c`, corpus count `cc`,
/// for a feature that fired `fired` times.
fn prf(c: u64, cc: u64, fired: u64) -> (f64, f64, f64) {
    let p = if cc == 0 { 0.0 } else { c as f64 / cc as f64 };
    let r = if fired == 0 {
        0.0
    } else {
        c as f64 / fired as f64
    };
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f)
}

// ---- WordNet categories ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Lexname,
    Pos,
    Lemma,
    Hypernym,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lexname => "lexname",
            Kind::Pos => "pos",
            Kind::Lemma => "lemma",
            Kind::Hypernym => "hypernym",
        }
    }
}

/// The scanned synsets' categories, interned, and their background counts. The unit is the
/// synset: a synset's gloss and its examples are one unit (they share every category, and a
/// feature that fires on a rare word of one synset would otherwise count it two or three times).
struct Categories {
    names: Vec<(Kind, String)>,
    /// Per stimulus of the index: its synset's unit, `None` without a sense.
    unit_of: Vec<Option<u32>>,
    /// Per unit: its categories (sorted).
    units: Vec<Vec<u32>>,
    background: Vec<u32>,
    lf: Vec<f64>,
}

type Key = (char, u32);

/// The hypernym graph of WordNet's data files: each synset's first lemma and hypernyms.
struct Graph {
    nodes: HashMap<Key, (String, Vec<Key>)>,
}

impl Graph {
    fn read(dir: &Path) -> Result<Self, LabelError> {
        let synsets = wordnet::read_dir(dir).map_err(|e| LabelError::WordNet(e.to_string()))?;
        let nodes = synsets
            .iter()
            .map(|s| {
                (
                    wordnet::synset_key(s.pos, s.offset),
                    (
                        s.lemmas.first().map(|l| l.0.clone()).unwrap_or_default(),
                        s.hypernyms().collect(),
                    ),
                )
            })
            .collect();
        Ok(Graph { nodes })
    }

    /// Every synset above `key` (hypernyms of hypernyms …), each once, nearest first.
    fn ancestors(&self, key: Key) -> Vec<Key> {
        let mut seen = HashSet::new();
        seen.insert(key);
        let mut out = Vec::new();
        let mut frontier = vec![key];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for k in frontier {
                if let Some((_, ups)) = self.nodes.get(&k) {
                    for &u in ups {
                        if seen.insert(u) {
                            out.push(u);
                            next.push(u);
                        }
                    }
                }
            }
            frontier = next;
        }
        out
    }

    fn name(&self, key: Key) -> String {
        let lemma = self.nodes.get(&key).map_or("?", |n| n.0.as_str());
        format!("{lemma} ({}{:08})", key.0, key.1)
    }
}

impl Categories {
    fn new(index: &ScanIndex, graph: Option<&Graph>) -> Self {
        let mut ids: HashMap<(Kind, String), u32> = HashMap::new();
        let mut names = Vec::new();
        let mut intern = |kind: Kind, name: String| -> u32 {
            *ids.entry((kind, name.clone())).or_insert_with(|| {
                names.push((kind, name));
                (names.len() - 1) as u32
            })
        };
        let mut unit_ids: HashMap<Key, u32> = HashMap::new();
        let mut units: Vec<Vec<u32>> = Vec::new();
        let mut unit_of = Vec::with_capacity(index.stimuli.len());
        for st in &index.stimuli {
            let Some(sense) = &st.sense else {
                unit_of.push(None);
                continue;
            };
            let key = wordnet::synset_key(&sense.pos, sense.offset);
            if let Some(&u) = unit_ids.get(&key) {
                unit_of.push(Some(u));
                continue;
            }
            let mut c = vec![
                intern(Kind::Lexname, sense.lexname.clone()),
                intern(Kind::Pos, sense.pos.clone()),
            ];
            for l in &sense.lemmas {
                c.push(intern(Kind::Lemma, l.to_lowercase()));
            }
            if let Some(g) = graph {
                for k in g.ancestors(key) {
                    c.push(intern(Kind::Hypernym, g.name(k)));
                }
            }
            c.sort_unstable();
            c.dedup();
            let u = units.len() as u32;
            units.push(c);
            unit_ids.insert(key, u);
            unit_of.push(Some(u));
        }
        let mut background = vec![0u32; names.len()];
        for c in &units {
            for &i in c {
                background[i as usize] += 1;
            }
        }
        Categories {
            names,
            lf: ln_factorials(units.len()),
            unit_of,
            units,
            background,
        }
    }

    /// The significant categories of the synsets of `stimuli` (stimulus indices), smallest p
    /// first; how many categories were tested; how many synsets the stimuli have.
    fn enrichment(&self, stimuli: &[usize], cfg: &LabelConfig) -> (Vec<Enrichment>, usize, usize) {
        let mut fg: Vec<u32> = stimuli
            .iter()
            .filter_map(|&s| self.unit_of.get(s).copied().flatten())
            .collect();
        fg.sort_unstable();
        fg.dedup();
        let n = fg.len() as u32;
        let population = self.units.len() as u32;
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &u in &fg {
            for &i in &self.units[u as usize] {
                *counts.entry(i).or_insert(0) += 1;
            }
        }
        let mut tested: Vec<(u32, u32)> = counts
            .into_iter()
            .filter(|&(_, k)| k >= cfg.min_hits)
            .collect();
        tested.sort_unstable();
        let m = tested.len();
        let mut out: Vec<Enrichment> = tested
            .into_iter()
            .filter_map(|(i, k)| {
                let big_k = self.background[i as usize];
                let p = hypergeom_sf_with(&self.lf, k, population, big_k, n);
                let pc = (p * m as f64).min(1.0);
                (pc < cfg.alpha).then(|| Enrichment {
                    kind: self.names[i as usize].0.name().into(),
                    name: self.names[i as usize].1.clone(),
                    k,
                    n,
                    big_k,
                    big_n: population,
                    p: sig3(p),
                    p_corrected: sig3(pc),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            a.p.total_cmp(&b.p)
                .then(b.k.cmp(&a.k))
                .then(a.name.cmp(&b.name))
        });
        out.truncate(cfg.max_enrichment);
        (out, m, n as usize)
    }
}

// ---- one feature ----

fn tok(index: &ScanIndex, id: u32) -> String {
    index
        .vocab
        .get(id as usize)
        .cloned()
        .unwrap_or_else(|| format!("<{id}>"))
}

/// Most common items of `counts` (count ≥ `min`), ties by first appearance order in the key.
fn most_common<K: Ord + Clone>(counts: HashMap<K, u32>, min: u32, n: usize) -> Vec<(K, u32)> {
    let mut v: Vec<(K, u32)> = counts.into_iter().filter(|&(_, c)| c >= min).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

fn label_one(
    index: &ScanIndex,
    cats: &Categories,
    cfg: &LabelConfig,
    f: FeatureId,
    corpus_total: u64,
) -> Label {
    let l = match f.basis {
        Basis::Neurons => &index.neurons[f.layer],
        Basis::Heads => &index.heads[f.layer],
        Basis::Dictionary => unreachable!("the scan labels its own neurons and heads only"),
    };
    let u = f.index;
    let fired = l.fired[u];
    let threshold = index.meta.config.threshold;
    // Firing tokens.
    let mut tokens: Vec<LabelToken> = l
        .firing_tokens(u)
        .into_iter()
        .filter(|&(_, c, e)| c - e >= cfg.min_count)
        .map(|(id, c, e)| {
            let cc = index.token_counts.get(id as usize).copied().unwrap_or(0);
            LabelToken {
                token: tok(index, id),
                id,
                count: c - e,
                corpus_count: cc,
                log_odds: r4(log_odds(u64::from(c - e), fired, cc, corpus_total)),
            }
        })
        .filter(|t| t.log_odds > 0.0)
        .collect();
    tokens.sort_by(|a, b| {
        b.log_odds
            .total_cmp(&a.log_odds)
            .then(b.count.cmp(&a.count))
            .then(a.id.cmp(&b.id))
    });
    tokens.truncate(cfg.keep_tokens);
    // The token set: the prefix over which F1 rises.
    let mut score = Score::default();
    let (mut c, mut cc, mut best) = (0u64, 0u64, 0.0f64);
    for (i, t) in tokens.iter().take(cfg.max_tokens).enumerate() {
        let (p, r, f1) = prf(c + u64::from(t.count), cc + t.corpus_count, fired);
        if i > 0 && f1 <= best {
            break;
        }
        best = f1;
        c += u64::from(t.count);
        cc += t.corpus_count;
        score = Score {
            tokens: i + 1,
            precision: r4(p),
            recall: r4(r),
            f1: r4(f1),
        };
    }
    // Top examples: peaks, bigrams, stimuli.
    let top: Vec<_> = l.top(u).into_iter().filter(|e| e.act > threshold).collect();
    let mut peaks: HashMap<u32, u32> = HashMap::new();
    let mut before: HashMap<(u32, u32), u32> = HashMap::new();
    let mut after: HashMap<(u32, u32), u32> = HashMap::new();
    let mut stimuli = Vec::new();
    for e in &top {
        let w = e.window as usize;
        if w >= index.windows.len() {
            continue;
        }
        let ids = index.windows.get(w);
        let p = e.pos as usize;
        let Some(&t) = ids.get(p) else { continue };
        *peaks.entry(t).or_insert(0) += 1;
        if p > 0 {
            *before.entry((ids[p - 1], t)).or_insert(0) += 1;
        }
        if let Some(&nx) = ids.get(p + 1) {
            *after.entry((t, nx)).or_insert(0) += 1;
        }
        let s = index.windows.stimulus[w] as usize;
        if !stimuli.contains(&s) {
            stimuli.push(s);
        }
    }
    let bigrams = |m: HashMap<(u32, u32), u32>| -> Vec<Bigram> {
        most_common(m, 2, cfg.bigrams)
            .into_iter()
            .map(|((a, b), count)| Bigram {
                first: tok(index, a),
                second: tok(index, b),
                count,
            })
            .collect()
    };
    let (enrichment, tested, n) = cats.enrichment(&stimuli, cfg);
    let positions = l.n[u];
    Label {
        feature: f.label(),
        text: String::new(),
        score,
        tokens,
        before: bigrams(before),
        after: bigrams(after),
        peaks: most_common(peaks, 1, cfg.bigrams)
            .into_iter()
            .map(|(t, count)| TokenCount {
                token: tok(index, t),
                count,
            })
            .collect(),
        enrichment,
        tested,
        examples: top.len(),
        stimuli: n,
        density: if positions == 0 {
            0.0
        } else {
            r4(fired as f64 / positions as f64)
        },
        max: if positions == 0 { 0.0 } else { l.max[u] },
        promotes: Vec::new(),
        suppresses: Vec::new(),
    }
}

/// A p-value as `3e-6` (`0.004` above 1e-3).
fn p_text(p: f64) -> String {
    if p >= 1e-3 {
        format!("{p:.3}")
    } else {
        format!("{p:.0e}")
    }
}

/// The label's one line: its tokens with their context (the firing tokens if the first is
/// selective enough, [`LabelConfig::text_log_odds`], else the top examples' peak tokens: the
/// fewest, up to three, that a quarter of them peak on), the strongest enrichment of at most two
/// kinds, promoted tokens.
pub fn label_text(l: &Label, cfg: &LabelConfig) -> String {
    let mut parts = Vec::new();
    let set = &l.tokens[..l.score.tokens.min(l.tokens.len())];
    let context = |tok: &str| -> String {
        let ctx: Vec<String> = l
            .before
            .iter()
            .filter(|b| b.second == tok)
            .take(1)
            .map(|b| format!("after {:?}", b.first))
            .chain(
                l.after
                    .iter()
                    .filter(|b| b.first == tok)
                    .take(1)
                    .map(|b| format!("before {:?}", b.second)),
            )
            .collect();
        if ctx.is_empty() {
            String::new()
        } else {
            format!(" ({})", ctx.join(", "))
        }
    };
    // The fewest peak tokens (each the peak of at least two top examples, at most three) that
    // together are the peak of a quarter of the top examples.
    let mut peak: Option<(usize, u32)> = None;
    let mut sum = 0;
    for (i, p) in l.peaks.iter().enumerate().take_while(|(_, p)| p.count >= 2) {
        sum += p.count;
        if sum as usize * 4 >= l.examples {
            peak = Some((i + 1, sum));
            break;
        }
    }
    match set.first() {
        Some(first) if first.log_odds >= cfg.text_log_odds => {
            let s = set
                .iter()
                .map(|t| format!("{:?}", t.token))
                .collect::<Vec<_>>()
                .join(" / ");
            parts.push(format!("{s}{}", context(&first.token)));
        }
        _ => {
            if let Some((m, sum)) = peak {
                let toks: Vec<String> = l.peaks[..m]
                    .iter()
                    .map(|p| format!("{:?}", p.token))
                    .collect();
                let ctx = if m == 1 {
                    context(&l.peaks[0].token)
                } else {
                    String::new()
                };
                parts.push(format!(
                    "peaks on {}{ctx} ({sum}/{})",
                    toks.join(" / "),
                    l.examples
                ));
            }
        }
    }
    let mut kinds = HashSet::new();
    for e in &l.enrichment {
        // The strongest of each kind, at most two kinds.
        if kinds.len() == 2 || !kinds.insert(e.kind.as_str()) {
            continue;
        }
        let name = match e.kind.as_str() {
            "lemma" => format!("lemma {:?}", e.name),
            "hypernym" => format!("kind of {}", e.name),
            "pos" => format!("{}s", e.name),
            _ => e.name.clone(),
        };
        parts.push(format!("{name} p={}", p_text(e.p_corrected)));
    }
    let mut text = if parts.is_empty() {
        "no clear pattern".to_string()
    } else {
        parts.join(", ")
    };
    if !l.promotes.is_empty() {
        let p: Vec<String> = l
            .promotes
            .iter()
            .take(3)
            .map(|t| format!("{:?}", t.token))
            .collect();
        text.push_str(&format!(" → promotes {}", p.join(", ")));
    }
    text
}

// ---- promoted tokens ----

/// The `k` largest (or smallest) entries of `row`: (id, value), best first, ties by id.
fn extremes(row: &[f32], k: usize, largest: bool) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let better = |a: f32, b: f32| if largest { a > b } else { a < b };
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        if !v.is_finite() {
            continue;
        }
        if best.len() == k && !better(v, best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| !better(v, b));
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// Fills `promotes`/`suppresses` of the neurons' labels (`labels[l * d_mlp + n]`).
fn promoted(
    model: &Model,
    index: &ScanIndex,
    labels: &mut [Label],
    cfg: &LabelConfig,
    ctx: Option<&JobCtx>,
) -> Result<(), LabelError> {
    let w = model.weights();
    let (d_model, d_mlp) = (model.config().d_model, index.meta.d_mlp);
    let (gamma, centre) = match &w.ln_final {
        Norm::Rms { w, .. } => (w.clone(), false),
        Norm::Layer { w, .. } => (w.to_vec1::<f32>().map_err(ModelError::from)?, true),
    };
    let unembed = &w.unembed;
    let vocab = unembed.out();
    let rows = cfg.promoted_rows.max(1).min(d_mlp.max(1));
    let mut v = vec![0f32; rows * d_model];
    let mut y = vec![0f32; rows * vocab];
    let logit = |(id, x): (u32, f32)| Logit {
        token: tok(index, id),
        id,
        logit: x,
    };
    for (layer, block) in w.blocks.iter().enumerate().take(index.meta.layers) {
        let wo = block.mlp.out_weight().weight(); // [d_model, d_mlp]
        let full = wo.unpack();
        let mut n0 = 0;
        while n0 < d_mlp {
            if let Some(ctx) = ctx {
                ctx.checkpoint().map_err(|_| LabelError::Cancelled)?;
            }
            let r = rows.min(d_mlp - n0);
            for i in 0..r {
                let n = n0 + i;
                // As `Model::direct_effect` with `EffectScale::PerUnit`, value for value.
                let mean = if centre {
                    (0..d_model)
                        .map(|o| full[o * d_mlp + n] as f64)
                        .sum::<f64>()
                        / d_model as f64
                } else {
                    0.0
                };
                let factor = 1.0;
                for o in 0..d_model {
                    let d = full[o * d_mlp + n];
                    v[i * d_model + o] = ((d as f64 - mean) * gamma[o] as f64 * factor) as f32;
                }
            }
            unembed.matmul(&v[..r * d_model], r, &mut y[..r * vocab]);
            for i in 0..r {
                let row = &y[i * vocab..(i + 1) * vocab];
                let lab = &mut labels[layer * d_mlp + n0 + i];
                lab.promotes = extremes(row, cfg.promoted, true)
                    .into_iter()
                    .map(logit)
                    .collect();
                lab.suppresses = extremes(row, cfg.promoted, false)
                    .into_iter()
                    .map(logit)
                    .collect();
            }
            if let Some(ctx) = ctx {
                ctx.advance(r as u64);
            }
            n0 += r;
        }
    }
    Ok(())
}

// ---- all features ----

/// Labels every feature of `index` with the default [`LabelConfig`]: see [`label_all_with`].
pub fn label_all(
    index: &ScanIndex,
    model: Option<&Model>,
    wordnet_dir: Option<&Path>,
    ctx: Option<&JobCtx>,
) -> Result<Labels, LabelError> {
    label_all_with(index, model, wordnet_dir, &LabelConfig::default(), ctx)
}

/// Labels every feature of `index`: firing tokens, context and WordNet enrichment for each
/// (hypernyms only with `wordnet_dir`, WordNet's data files), then the promoted tokens of every
/// neuron when `model` (the index's model: another is refused) is given. Reports through `ctx`:
/// features, then neurons; cancels at its checkpoints.
pub fn label_all_with(
    index: &ScanIndex,
    model: Option<&Model>,
    wordnet_dir: Option<&Path>,
    cfg: &LabelConfig,
    ctx: Option<&JobCtx>,
) -> Result<Labels, LabelError> {
    let started = Instant::now();
    if let Some(m) = model {
        index.check_model(m.info())?;
    }
    let meta = &index.meta;
    let mut timings = Timings::default();
    let graph = match wordnet_dir {
        Some(dir) => {
            if let Some(ctx) = ctx {
                ctx.set_phase("Reading WordNet's hypernyms");
            }
            Some(Graph::read(dir)?)
        }
        None => None,
    };
    let cats = Categories::new(index, graph.as_ref());
    timings.wordnet = started.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let features = meta.layers * (meta.d_mlp + meta.heads);
    if let Some(ctx) = ctx {
        ctx.set_phase("Labelling features");
        ctx.set_total(features as u64, "features");
    }
    let corpus_total: u64 = index.token_counts.iter().sum();
    let mut labels = Vec::with_capacity(features);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    for (basis, units) in [(Basis::Neurons, meta.d_mlp), (Basis::Heads, meta.heads)] {
        for layer in 0..meta.layers {
            if let Some(ctx) = ctx {
                ctx.checkpoint().map_err(|_| LabelError::Cancelled)?;
            }
            let per = units.div_ceil(threads).max(1);
            let parts: Vec<Vec<Label>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..units)
                    .step_by(per)
                    .map(|start| {
                        let (cats, cfg) = (&cats, cfg);
                        s.spawn(move || {
                            (start..(start + per).min(units))
                                .map(|u| {
                                    let f = FeatureId {
                                        basis,
                                        layer,
                                        index: u,
                                    };
                                    label_one(index, cats, cfg, f, corpus_total)
                                })
                                .collect()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a labelling thread panicked"))
                    .collect()
            });
            labels.extend(parts.into_iter().flatten());
            if let Some(ctx) = ctx {
                ctx.advance(units as u64);
            }
        }
    }
    timings.features = t0.elapsed().as_secs_f64();
    if let Some(model) = model {
        let t1 = Instant::now();
        if let Some(ctx) = ctx {
            ctx.set_phase("Promoted tokens of every neuron");
            ctx.set_total((meta.layers * meta.d_mlp) as u64, "neurons");
        }
        promoted(
            model,
            index,
            &mut labels[..meta.layers * meta.d_mlp],
            cfg,
            ctx,
        )?;
        timings.promoted = t1.elapsed().as_secs_f64();
    }
    for l in &mut labels {
        l.text = label_text(l, cfg);
    }
    timings.total = started.elapsed().as_secs_f64();
    for t in [
        &mut timings.wordnet,
        &mut timings.features,
        &mut timings.promoted,
        &mut timings.total,
    ] {
        *t = (*t * 1e3).round() / 1e3;
    }
    Ok(Labels {
        format: FORMAT.into(),
        version: VERSION,
        model_sha256: meta.model_sha256.clone(),
        model_name: meta.model_name.clone(),
        corpus: meta.corpus.clone(),
        corpus_sha256: meta.corpus_sha256.clone(),
        tokens_done: meta.tokens_done,
        layers: meta.layers,
        d_mlp: meta.d_mlp,
        heads: meta.heads,
        config: cfg.clone(),
        promoted: model.is_some(),
        hypernyms: graph.is_some(),
        timings,
        labels,
    })
}

/// [`label_all`] as a job that saves the labels at `out` (see [`labels_path`]).
pub fn job(
    ctx: &JobCtx,
    index: &ScanIndex,
    model: Option<&Model>,
    wordnet_dir: Option<&Path>,
    out: &Path,
) -> Result<Labels, crate::jobs::JobError> {
    let fail = |e: LabelError| match e {
        LabelError::Cancelled => crate::jobs::JobError::Cancelled,
        e => crate::jobs::JobError::Failed(e.to_string()),
    };
    let labels = label_all(index, model, wordnet_dir, Some(ctx)).map_err(fail)?;
    ctx.set_phase("Saving");
    labels.save(out).map_err(fail)?;
    Ok(labels)
}

// ---- the file, lookups, search ----

/// One search result.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SearchHit {
    pub feature: String,
    /// `token` (it fires on the query's token), `peak` (its top examples peak on it) or
    /// `words` (its label mentions the words): see [`Labels::search`].
    pub kind: String,
    /// Token hits: the token's log-odds; peak hits: the share of top examples; word hits:
    /// −log10 of the best matching enrichment's corrected p (0 if none matched).
    pub score: f64,
    pub why: String,
    pub text: String,
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Labels {
    fn io(path: &Path, e: std::io::Error) -> LabelError {
        LabelError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }

    /// Saves as compact JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), LabelError> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Self::io(path, e))?;
        }
        let bytes = serde_json::to_vec(self).map_err(|e| LabelError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        crate::atomic_write(path, &bytes).map_err(|e| Self::io(path, e))
    }

    /// Loads a label file (of any scan: see [`Labels::check`], [`Labels::load_for`]).
    pub fn load(path: &Path) -> Result<Self, LabelError> {
        let bytes = std::fs::read(path).map_err(|e| Self::io(path, e))?;
        let format = |reason: String| LabelError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let labels: Labels = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
        if labels.format != FORMAT || labels.version != VERSION {
            return Err(format(format!(
                "format {} v{} is not {FORMAT} v{VERSION}",
                labels.format, labels.version
            )));
        }
        if labels.labels.len() != labels.layers * (labels.d_mlp + labels.heads) {
            return Err(format(
                "the label count does not match the model's shape".into(),
            ));
        }
        Ok(labels)
    }

    /// What differs between the scan these labels were made from and `index`; `None` if
    /// nothing.
    pub fn stale(&self, index: &ScanIndex) -> Option<String> {
        let m = &index.meta;
        let short = |s: &str| s.chars().take(12).collect::<String>();
        if self.model_sha256 != m.model_sha256 {
            Some(format!(
                "model sha256 {}… vs the index's {}…",
                short(&self.model_sha256),
                short(&m.model_sha256)
            ))
        } else if self.corpus_sha256 != m.corpus_sha256 {
            Some(format!(
                "corpus {} (sha256 {}…) vs the index's {} ({}…)",
                self.corpus,
                short(&self.corpus_sha256),
                m.corpus,
                short(&m.corpus_sha256)
            ))
        } else if self.tokens_done != m.tokens_done {
            Some(format!(
                "made after {} tokens, the index now holds {}",
                self.tokens_done, m.tokens_done
            ))
        } else if (self.layers, self.d_mlp, self.heads) != (m.layers, m.d_mlp, m.heads) {
            Some("another model shape".into())
        } else {
            None
        }
    }

    /// Loads the labels at `path` and refuses them if they were made from another scan than
    /// `index` ([`LabelError::Stale`]).
    pub fn load_for(path: &Path, index: &ScanIndex) -> Result<Self, LabelError> {
        let labels = Self::load(path)?;
        match labels.stale(index) {
            Some(what) => Err(LabelError::Stale {
                path: path.to_path_buf(),
                what,
            }),
            None => Ok(labels),
        }
    }

    /// The label of `f`.
    pub fn get(&self, f: &FeatureId) -> Option<&Label> {
        let i = match f.basis {
            Basis::Neurons if f.layer < self.layers && f.index < self.d_mlp => {
                f.layer * self.d_mlp + f.index
            }
            Basis::Heads if f.layer < self.layers && f.index < self.heads => {
                self.layers * self.d_mlp + f.layer * self.heads + f.index
            }
            _ => return None,
        };
        self.labels.get(i).filter(|l| l.feature == f.label())
    }

    fn basis_of(&self, i: usize) -> Basis {
        if i < self.layers * self.d_mlp {
            Basis::Neurons
        } else {
            Basis::Heads
        }
    }

    /// Features for `query`, best first, at most `n`, of `basis` only if given.
    ///
    /// 1. `token`: features whose firing tokens include the query as a token (exact text; a
    ///    query without a leading space also matches the token with one, as the tokenizer
    ///    writes a word after a space: `left` matches `left` and ` left`), by that token's
    ///    log-odds (then its count);
    /// 2. `peak`: features whose top examples peak on that token at least twice, by the share
    ///    of top examples that do;
    /// 3. `words`: features whose label (text, enrichment names, firing and promoted tokens)
    ///    holds every word of the query (words: runs of letters and digits, any case); those
    ///    whose text holds them first, then by the strongest matching enrichment (smallest
    ///    corrected p), then the label's F1.
    pub fn search(&self, query: &str, basis: Option<Basis>, n: usize) -> Vec<SearchHit> {
        let spaced = format!(" {query}");
        let token_match = |t: &str| {
            !query.is_empty()
                && (t == query || (!query.starts_with(char::is_whitespace) && t == spaced))
        };
        let keep = |i: usize| basis.is_none_or(|b| self.basis_of(i) == b);
        let mut hits: Vec<(f64, u32, usize, SearchHit)> = Vec::new();
        let mut peak_hits: Vec<(f64, u32, usize, SearchHit)> = Vec::new();
        for (i, l) in self.labels.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            if let Some(t) = l
                .tokens
                .iter()
                .filter(|t| token_match(&t.token))
                .max_by(|a, b| a.log_odds.total_cmp(&b.log_odds))
            {
                hits.push((
                    t.log_odds,
                    t.count,
                    i,
                    SearchHit {
                        feature: l.feature.clone(),
                        kind: "token".into(),
                        score: t.log_odds,
                        why: format!(
                            "fires on {:?} {} of its {} times in the corpus (log-odds {:+.2})",
                            t.token, t.count, t.corpus_count, t.log_odds
                        ),
                        text: l.text.clone(),
                    },
                ));
            } else if let Some(p) = l
                .peaks
                .iter()
                .filter(|p| p.count >= 2 && token_match(&p.token))
                .max_by_key(|p| p.count)
            {
                let share = f64::from(p.count) / l.examples.max(1) as f64;
                peak_hits.push((
                    share,
                    p.count,
                    i,
                    SearchHit {
                        feature: l.feature.clone(),
                        kind: "peak".into(),
                        score: share,
                        why: format!(
                            "{} of its {} top examples peak on {:?}",
                            p.count, l.examples, p.token
                        ),
                        text: l.text.clone(),
                    },
                ));
            }
        }
        let order = |a: &(f64, u32, usize, SearchHit), b: &(f64, u32, usize, SearchHit)| {
            b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
        };
        hits.sort_by(order);
        peak_hits.sort_by(order);
        let mut out: Vec<SearchHit> = hits
            .into_iter()
            .chain(peak_hits)
            .map(|h| h.3)
            .take(n)
            .collect();
        let q = words(query);
        if out.len() >= n || q.is_empty() {
            return out;
        }
        let taken: HashSet<String> = out.iter().map(|h| h.feature.clone()).collect();
        let mut word_hits: Vec<(bool, f64, f64, usize, SearchHit)> = Vec::new();
        for (i, l) in self.labels.iter().enumerate() {
            if !keep(i) || taken.contains(&l.feature) {
                continue;
            }
            let mut hay: HashSet<String> = words(&l.text).into_iter().collect();
            for e in &l.enrichment {
                hay.extend(words(&e.name));
                hay.insert(e.kind.clone());
            }
            for t in &l.tokens {
                hay.extend(words(&t.token));
            }
            for t in &l.promotes {
                hay.extend(words(&t.token));
            }
            if !q.iter().all(|w| hay.contains(w)) {
                continue;
            }
            let best = l
                .enrichment
                .iter()
                .filter(|e| {
                    let ew = words(&e.name);
                    q.iter().any(|w| ew.contains(w) || *w == e.kind)
                })
                .map(|e| e.p_corrected)
                .fold(1.0f64, f64::min);
            let s = -best.max(1e-300).log10();
            let text_words = words(&l.text);
            let in_text = q.iter().all(|w| text_words.contains(w));
            let where_ = if in_text {
                "its label"
            } else {
                "its firing or promoted tokens"
            };
            let why = if s > 0.0 {
                format!("{where_} mentions {query:?} (p={})", p_text(best))
            } else {
                format!("{where_} mentions {query:?}")
            };
            word_hits.push((
                in_text,
                s,
                l.score.f1,
                i,
                SearchHit {
                    feature: l.feature.clone(),
                    kind: "words".into(),
                    score: s,
                    why,
                    text: l.text.clone(),
                },
            ));
        }
        word_hits.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.total_cmp(&a.1))
                .then(b.2.total_cmp(&a.2))
                .then(a.3.cmp(&b.3))
        });
        let room = n - out.len();
        out.extend(word_hits.into_iter().take(room).map(|h| h.4));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_keep_the_k_best_ties_by_id() {
        let row = [1.0, 5.0, -2.0, 5.0, f32::NAN, 3.0, -2.0];
        assert_eq!(extremes(&row, 3, true), [(1, 5.0), (3, 5.0), (5, 3.0)]);
        assert_eq!(extremes(&row, 2, false), [(2, -2.0), (6, -2.0)]);
        assert!(extremes(&row, 0, true).is_empty());
    }

    #[test]
    fn prf_and_p_text() {
        assert_eq!(prf(5, 10, 20), (0.5, 0.25, 2.0 * 0.5 * 0.25 / 0.75));
        assert_eq!(prf(0, 0, 0), (0.0, 0.0, 0.0));
        assert_eq!(p_text(3e-6), "3e-6");
        assert_eq!(p_text(0.0042), "0.004");
        assert_eq!(sig3(1.23456e-7), 1.23e-7);
    }
}
