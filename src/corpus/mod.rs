//! Stimuli: the built-in probe protocols (kept as data under `assets/probes/`, compiled in so the
//! binary works from anywhere). The WordNet corpus reader arrives with the receptive-field issue.

use serde::Deserialize;

pub mod protocol;
pub mod wordnet;

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Stimulus {
    pub label: String,
    pub text: String,
}

/// A protocol: a named set of probes that asks one question of the model.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Protocol {
    pub name: String,
    pub description: String,
    pub probes: Vec<Stimulus>,
}

const SOURCES: [(&str, &str); 5] = [
    (
        "left_senses.json",
        include_str!("../../assets/probes/left_senses.json"),
    ),
    ("units.json", include_str!("../../assets/probes/units.json")),
    (
        "induction.json",
        include_str!("../../assets/probes/induction.json"),
    ),
    (
        "bilingual.json",
        include_str!("../../assets/probes/bilingual.json"),
    ),
    (
        "numbers_code.json",
        include_str!("../../assets/probes/numbers_code.json"),
    ),
];

/// Every built-in protocol. A malformed file is a build-time mistake, caught by the test below;
/// at run time it is skipped rather than taking the app down.
pub fn protocols() -> Vec<Protocol> {
    SOURCES
        .iter()
        .filter_map(|(_, json)| serde_json::from_str(json).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_protocol_parses_and_has_probes() {
        for (name, json) in super::SOURCES {
            let p: super::Protocol =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!p.probes.is_empty(), "{name}");
            assert!(p.probes.iter().all(|s| !s.text.trim().is_empty()), "{name}");
        }
        assert_eq!(super::protocols().len(), super::SOURCES.len());
    }
}
