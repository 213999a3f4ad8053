//! What a user saves: the model, the probe, the interventions and the selection, as versioned
//! JSON. Saves are atomic; a malformed or newer file is an error that leaves the current state
//! alone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::features::{Basis, FeatureId};
use crate::hooks::Intervention;
use crate::model::ModelInfo;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Session {
    pub version: u32,
    pub model_path: Option<PathBuf>,
    pub probe: String,
    pub interventions: Vec<Intervention>,
    pub selection: Option<FeatureId>,
    pub layer: Option<usize>,
    pub basis: Basis,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            version: VERSION,
            model_path: None,
            probe: String::new(),
            interventions: Vec::new(),
            selection: None,
            layer: None,
            basis: Basis::Neurons,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Hubel session: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path} was saved by a newer Hubel (session version {found}; this one reads up to {VERSION})")]
    Newer { path: PathBuf, found: u32 },
    #[error("cannot save {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Session {
    pub fn load(path: &Path) -> Result<Self, SessionError> {
        let text = std::fs::read_to_string(path).map_err(|source| SessionError::Read {
            path: path.into(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| SessionError::Malformed {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let version = value
            .get("version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| SessionError::Malformed {
                path: path.into(),
                reason: "no `version` field".into(),
            })?;
        if version > u64::from(VERSION) {
            return Err(SessionError::Newer {
                path: path.into(),
                found: version as u32,
            });
        }
        serde_json::from_value(value).map_err(|e| SessionError::Malformed {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// Checks the session against the model it is about to be applied to: every hook point,
    /// layer, index and position must exist there. The message says what does not fit.
    pub fn check(&self, info: &ModelInfo) -> Result<(), String> {
        let layers = crate::hooks::intervention::layer_count;
        for iv in &self.interventions {
            let Some((units, _)) = info.hook_size(iv.hook, info.context_length) else {
                return Err(match iv.hook.layer() {
                    Some(l) if l >= info.layers => format!(
                        "the edit of {} names layer {l}, but the model has {}",
                        iv.hook,
                        layers(info.layers)
                    ),
                    _ => format!("the model has no hook point {}", iv.hook),
                });
            };
            if let Some(bad) = iv.indices.iter().flatten().find(|&&i| i >= units) {
                return Err(format!(
                    "the edit of {} names index {bad}, but that hook point has {units}",
                    iv.hook
                ));
            }
            if let Some(bad) = iv
                .positions
                .iter()
                .flatten()
                .find(|&&p| p >= info.context_length)
            {
                return Err(format!(
                    "the edit of {} names position {bad}, beyond the model's context of {}",
                    iv.hook, info.context_length
                ));
            }
        }
        if let Some(layer) = self.layer {
            if layer >= info.layers {
                return Err(format!(
                    "the session shows layer {layer}, but the model has {}",
                    layers(info.layers)
                ));
            }
        }
        if let Some(f) = self.selection {
            let units = info.hook_size(f.hook(), 1).map(|(u, _)| u);
            if f.layer >= info.layers || units.is_none_or(|u| f.index >= u) {
                return Err(format!(
                    "the selected feature {f} does not exist in this model ({}, {} neurons and {} heads a layer)",
                    layers(info.layers),
                    info.d_mlp,
                    info.heads
                ));
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<(), SessionError> {
        crate::npy::write_json(path, self).map_err(|source| SessionError::Write {
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{BlockSite, HookPoint};

    #[test]
    fn round_trips_and_rejects_bad_files() {
        let dir = std::env::temp_dir().join(format!("hubel-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Session {
            probe: "苹果 🍎".into(),
            interventions: vec![Intervention::zero(
                HookPoint::block(3, BlockSite::MlpPost),
                vec![7],
            )],
            selection: Some(FeatureId::neuron(3, 7)),
            layer: Some(3),
            ..Session::default()
        };
        let path = dir.join("s.json");
        s.save(&path).unwrap();
        assert_eq!(Session::load(&path).unwrap(), s);
        for (name, text, needle) in [
            ("garbage.json", "{ not json", "not a Hubel session"),
            ("noversion.json", "{\"probe\": \"x\"}", "no `version`"),
            ("newer.json", "{\"version\": 99}", "newer Hubel"),
            ("badhook.json", "{\"version\": 1, \"interventions\": [{\"hook\": \"blocks.1.nope\", \"op\": {\"kind\": \"zero\"}}]}", "unknown hook point"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            let e = Session::load(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
