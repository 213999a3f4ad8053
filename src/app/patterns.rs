//! Heads' attention patterns computed on demand (plain data, no egui): a probe longer than
//! [`super::worker::PATTERN_TOKENS`] keeps no pattern in its record (every layer's would take
//! `layers · heads · 4 · len²` bytes), so a head's card offers to compute that head's alone
//! ([`CardQuery::Pattern`]). The answers are kept for the probe shown (its tokens at its
//! precision) and dropped when it changes; at most [`KEPT`] of them and [`KEPT_BYTES`] (but
//! always the last one asked for), oldest dropped first.

use super::receptive::Pending;
use super::worker::{CardQuery, Computed};
use crate::features::FeatureId;
use crate::model::Precision;

/// Patterns kept for one probe (each `4 · len²` bytes while it is computed and pooled: 6 MB at
/// 1,234 tokens, 67 MB at 4,096; kept as its grids, at most 256 cells a side)…
pub const KEPT: usize = 4;
/// …and bytes they may hold together (one is kept whatever its size).
pub const KEPT_BYTES: usize = 256 << 20;

/// How many patterns of a probe of `len` tokens are kept.
pub fn capacity(len: usize) -> usize {
    (KEPT_BYTES / (4 * len * len).max(1)).clamp(1, KEPT)
}

/// One head's pattern: asked for, computed, or why not.
#[derive(Clone, Debug)]
pub struct Entry {
    pub feature: FeatureId,
    /// The serial of the query that asked for it (a changed serial makes the views redraw).
    pub serial: u64,
    pub state: Pending<Computed>,
}

/// The on-demand patterns of the probe shown.
#[derive(Default)]
pub struct Patterns {
    /// The probe they belong to: its tokens and precision.
    key: Option<(Vec<u32>, Precision)>,
    /// Oldest first.
    entries: Vec<Entry>,
}

impl Patterns {
    /// Keeps the patterns of the probe shown (`None`: no probe); any other probe's are dropped.
    pub fn sync(&mut self, tokens: Option<&[u32]>, precision: Precision) {
        let same = match (&self.key, tokens) {
            (Some((t, p)), Some(now)) => t.as_slice() == now && *p == precision,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.entries.clear();
            self.key = tokens.map(|t| (t.to_vec(), precision));
        }
    }

    /// The pattern of `feature` for the probe shown: asked for, computed, or failed.
    pub fn get(&self, feature: FeatureId) -> Option<&Entry> {
        self.entries.iter().find(|e| e.feature == feature)
    }

    /// Asks for `feature`'s pattern with query serial `serial` (again, when it failed); `None`
    /// when it is already here or coming, or there is no probe.
    pub fn ask(&mut self, feature: FeatureId, serial: u64) -> Option<CardQuery> {
        let (tokens, precision) = self.key.clone()?;
        if self
            .get(feature)
            .is_some_and(|e| !matches!(e.state, Pending::Failed(_)))
        {
            return None;
        }
        self.entries.retain(|e| e.feature != feature);
        while !self.entries.is_empty() && self.entries.len() >= capacity(tokens.len()) {
            // The oldest that is not still coming (an answer on its way is kept).
            let old = self
                .entries
                .iter()
                .position(|e| !matches!(e.state, Pending::Waiting(_)))
                .unwrap_or(0);
            self.entries.remove(old);
        }
        self.entries.push(Entry {
            feature,
            serial,
            state: Pending::Waiting(serial),
        });
        Some(CardQuery::Pattern {
            serial,
            feature,
            tokens,
            precision,
        })
    }

    /// The worker's answer to query `serial` (ignored when nothing waits for it: the probe
    /// changed).
    pub fn answer(&mut self, serial: u64, answer: Result<Computed, String>) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.state.serial() == Some(serial))
        {
            e.state = match answer {
                Ok(p) => Pending::Ready(p),
                Err(m) => Pending::Failed(m),
            };
        }
    }

    /// Whether no pattern is still coming.
    pub fn settled(&self) -> bool {
        self.entries
            .iter()
            .all(|e| !matches!(e.state, Pending::Waiting(_)))
    }
}
