//! Experiment protocols: two stimulus sets (and held-out text for lesions) that ask the model one
//! question, kept as JSON (`assets/protocols/*.json` built in; users open their own).
//!
//! ```json
//! {"name": "sense-left", "kind": "selectivity", "description": "…",
//!  "sets": {"A": {"label": "direction", "stimuli": ["Turn [[left]] at the corner."]},
//!           "B": {"label": "departed",  "stimuli": ["She [[left]] the house early."]}},
//!  "heldout": {"A": ["…"], "B": ["…"]}}
//! ```
//! A stimulus marks its target with `[[…]]`; the model is read at the last token that overlaps
//! the marked span, or at the last token when there is no marker. `heldout` is required for
//! lesions (they are scored on it); an induction protocol's set B holds one control per
//! stimulus of A.

use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelError};

/// What a protocol measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Which units (and at what depth) tell set A from set B.
    Selectivity,
    /// Set A's sequences repeated, against set B's controls at the same positions.
    Induction,
    /// What ablating groups of units does to the held-out text of each set.
    Lesion,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Selectivity => "selectivity",
            Kind::Induction => "induction",
            Kind::Lesion => "lesion",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StimulusSet {
    pub label: String,
    pub stimuli: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sets {
    #[serde(rename = "A")]
    pub a: StimulusSet,
    #[serde(rename = "B")]
    pub b: StimulusSet,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Heldout {
    #[serde(rename = "A", default)]
    pub a: Vec<String>,
    #[serde(rename = "B", default)]
    pub b: Vec<String>,
}

/// A protocol as its file holds it (markers still in the text); [`Protocol::parse`] validates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    pub name: String,
    pub kind: Kind,
    #[serde(default)]
    pub description: String,
    pub sets: Sets,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<Heldout>,
}

/// Which of the two sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    pub fn name(self) -> &'static str {
        match self {
            Side::A => "A",
            Side::B => "B",
        }
    }
}

/// Where a protocol goes wrong, with the stimulus it is about.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{file}: not a protocol: {message}")]
    Json { file: String, message: String },
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol `{name}`: set {set} has no stimuli")]
    EmptySet { name: String, set: &'static str },
    #[error("protocol `{name}`: {place} is empty")]
    EmptyStimulus { name: String, place: String },
    #[error("protocol `{name}`: {place} has two [[…]] markers (one target a stimulus): {text:?}")]
    TwoMarkers {
        name: String,
        place: String,
        text: String,
    },
    #[error(
        "protocol `{name}`: {place} has an unclosed or stray marker (write [[target]]): {text:?}"
    )]
    BadMarker {
        name: String,
        place: String,
        text: String,
    },
    #[error("protocol `{name}`: {place} has an empty marker [[]]: {text:?}")]
    EmptyMarker {
        name: String,
        place: String,
        text: String,
    },
    #[error("protocol `{name}`: {place}: no token overlaps the marked {target:?} in {text:?}")]
    MarkerMissesTokens {
        name: String,
        place: String,
        target: String,
        text: String,
    },
    #[error("protocol `{name}`: a lesion is scored on held-out text: give \"heldout\": {{\"A\": […], \"B\": […]}} with sentences in both")]
    NoHeldout { name: String },
    #[error("protocol `{name}`: an induction protocol needs one control in B for each sequence in A (A has {a}, B has {b})")]
    UnpairedControls { name: String, a: usize, b: usize },
    #[error("protocol `{name}`: {place}: {source}")]
    Tokenize {
        name: String,
        place: String,
        #[source]
        source: Box<ModelError>,
    },
}

/// A stimulus with its marker taken out: the text the model reads and the marked byte range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stimulus {
    pub text: String,
    /// The marked span in `text`, `None` for a stimulus read at its last token.
    pub target: Option<(usize, usize)>,
}

/// A stimulus tokenized for one model, with the position it is read at.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    pub text: String,
    pub tokens: Vec<crate::model::Token>,
    /// The last token overlapping the marked span (the last token without a marker).
    pub read_at: usize,
}

impl Tokenized {
    pub fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

/// Takes the `[[…]]` marker out of `raw`: `Ok(None)` target when there is none.
pub fn parse_marker(raw: &str) -> Result<Stimulus, MarkerError> {
    let opens: Vec<usize> = raw.match_indices("[[").map(|(i, _)| i).collect();
    let closes: Vec<usize> = raw.match_indices("]]").map(|(i, _)| i).collect();
    match (opens.as_slice(), closes.as_slice()) {
        ([], []) => Ok(Stimulus {
            text: raw.to_string(),
            target: None,
        }),
        ([open], [close]) if open + 2 <= *close => {
            let (open, close) = (*open, *close);
            if raw[open + 2..close].trim().is_empty() {
                return Err(MarkerError::Empty);
            }
            let text = format!(
                "{}{}{}",
                &raw[..open],
                &raw[open + 2..close],
                &raw[close + 2..]
            );
            Ok(Stimulus {
                text,
                target: Some((open, close - 2)),
            })
        }
        (o, c) if o.len() > 1 && o.len() == c.len() => Err(MarkerError::Two),
        _ => Err(MarkerError::Unbalanced),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerError {
    Two,
    Unbalanced,
    Empty,
}

/// The position a stimulus is read at: the last token whose byte range overlaps `target`, the
/// last token without one; `None` when no token overlaps it.
pub fn reading_position(
    offsets: &[(usize, usize)],
    target: Option<(usize, usize)>,
) -> Option<usize> {
    let Some((a, b)) = target else {
        return offsets.len().checked_sub(1);
    };
    offsets.iter().rposition(|&(s, e)| s < e && s < b && a < e)
}

impl Protocol {
    /// Reads and validates a protocol from JSON.
    pub fn parse(file: &str, json: &str) -> Result<Self, ProtocolError> {
        let p: Protocol = serde_json::from_str(json).map_err(|e| ProtocolError::Json {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Reads and validates a protocol file.
    pub fn open(path: &std::path::Path) -> Result<Self, ProtocolError> {
        let file = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|source| ProtocolError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &json)
    }

    /// A set's stimuli as written (markers in place).
    pub fn stimuli(&self, side: Side) -> &[String] {
        match side {
            Side::A => &self.sets.a.stimuli,
            Side::B => &self.sets.b.stimuli,
        }
    }

    pub fn label(&self, side: Side) -> &str {
        match side {
            Side::A => &self.sets.a.label,
            Side::B => &self.sets.b.label,
        }
    }

    /// A set's held-out sentences (empty without a `heldout`).
    pub fn heldout(&self, side: Side) -> &[String] {
        match (&self.heldout, side) {
            (Some(h), Side::A) => &h.a,
            (Some(h), Side::B) => &h.b,
            (None, _) => &[],
        }
    }

    /// Everything that can be checked without a tokenizer.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let name = self.name.clone();
        for side in Side::BOTH {
            if self.stimuli(side).is_empty() {
                return Err(ProtocolError::EmptySet {
                    name,
                    set: side.name(),
                });
            }
            for (i, raw) in self.stimuli(side).iter().enumerate() {
                let place = format!("stimulus {} of set {}", i + 1, side.name());
                self.parsed(raw, &place)?;
            }
            for (i, text) in self.heldout(side).iter().enumerate() {
                if text.trim().is_empty() {
                    return Err(ProtocolError::EmptyStimulus {
                        name,
                        place: format!("held-out sentence {} of set {}", i + 1, side.name()),
                    });
                }
            }
        }
        if self.kind == Kind::Lesion
            && (self.heldout(Side::A).is_empty() || self.heldout(Side::B).is_empty())
        {
            return Err(ProtocolError::NoHeldout { name });
        }
        let (a, b) = (self.sets.a.stimuli.len(), self.sets.b.stimuli.len());
        if self.kind == Kind::Induction && a != b {
            return Err(ProtocolError::UnpairedControls { name, a, b });
        }
        Ok(())
    }

    fn parsed(&self, raw: &str, place: &str) -> Result<Stimulus, ProtocolError> {
        let (name, place, text) = (self.name.clone(), place.to_string(), raw.to_string());
        if raw.trim().is_empty() {
            return Err(ProtocolError::EmptyStimulus { name, place });
        }
        parse_marker(raw).map_err(|e| match e {
            MarkerError::Two => ProtocolError::TwoMarkers { name, place, text },
            MarkerError::Unbalanced => ProtocolError::BadMarker { name, place, text },
            MarkerError::Empty => ProtocolError::EmptyMarker { name, place, text },
        })
    }

    /// A set's stimuli tokenized for `model`, each with its reading position: an error names a
    /// stimulus whose marker no token overlaps, or one too long for the model.
    pub fn tokenize(&self, model: &Model, side: Side) -> Result<Vec<Tokenized>, ProtocolError> {
        self.stimuli(side)
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let place = format!("stimulus {} of set {}", i + 1, side.name());
                let s = self.parsed(raw, &place)?;
                let encoded = model.tokenize_with_offsets(&s.text).map_err(|source| {
                    ProtocolError::Tokenize {
                        name: self.name.clone(),
                        place: place.clone(),
                        source: Box::new(source),
                    }
                })?;
                let offsets: Vec<(usize, usize)> = encoded.iter().map(|(_, o)| *o).collect();
                let read_at = reading_position(&offsets, s.target).ok_or_else(|| {
                    let (a, b) = s.target.unwrap_or((0, 0));
                    ProtocolError::MarkerMissesTokens {
                        name: self.name.clone(),
                        place,
                        target: s.text[a..b].to_string(),
                        text: s.text.clone(),
                    }
                })?;
                Ok(Tokenized {
                    text: s.text,
                    tokens: encoded.into_iter().map(|(t, _)| t).collect(),
                    read_at,
                })
            })
            .collect()
    }

    /// A set's held-out sentences tokenized for `model`.
    pub fn tokenize_heldout(
        &self,
        model: &Model,
        side: Side,
    ) -> Result<Vec<Vec<u32>>, ProtocolError> {
        self.heldout(side)
            .iter()
            .enumerate()
            .map(|(i, text)| {
                model
                    .tokenize(text)
                    .map(|t| t.into_iter().map(|t| t.id).collect())
                    .map_err(|source| ProtocolError::Tokenize {
                        name: self.name.clone(),
                        place: format!("held-out sentence {} of set {}", i + 1, side.name()),
                        source: Box::new(source),
                    })
            })
            .collect()
    }
}

const BUILT_IN: [(&str, &str); 4] = [
    (
        "sense-left",
        include_str!("../../assets/protocols/sense-left.json"),
    ),
    (
        "unit-conversion",
        include_str!("../../assets/protocols/unit-conversion.json"),
    ),
    (
        "induction",
        include_str!("../../assets/protocols/induction.json"),
    ),
    (
        "lesion-zh-en",
        include_str!("../../assets/protocols/lesion-zh-en.json"),
    ),
];

/// The built-in protocols' names, in the order the app lists them.
pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

/// A built-in protocol by name (compiled in, so the binary works from anywhere).
pub fn built_in(name: &str) -> Option<Result<Protocol, ProtocolError>> {
    BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, json)| Protocol::parse(&format!("built-in {n}"), json))
}

/// Every built-in protocol, parsed once (they are compiled in and valid: a test says so).
pub fn built_ins() -> &'static [Protocol] {
    static ALL: std::sync::OnceLock<Vec<Protocol>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        built_in_names()
            .into_iter()
            .filter_map(|n| built_in(n).and_then(Result::ok))
            .collect()
    })
}

/// A built-in protocol's name or a protocol file's path.
pub fn resolve(name_or_path: &str) -> Result<Protocol, ProtocolError> {
    if let Some(p) = built_in(name_or_path) {
        return p;
    }
    let path = std::path::Path::new(name_or_path);
    if !path.exists() && !name_or_path.ends_with(".json") {
        return Err(ProtocolError::Json {
            file: name_or_path.to_string(),
            message: format!(
                "no built-in protocol has this name (built in: {}) and no such file",
                built_in_names().join(", ")
            ),
        });
    }
    Protocol::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol(kind: Kind, a: &[&str], b: &[&str]) -> String {
        serde_json::json!({
            "name": "t", "kind": kind, "description": "",
            "sets": {"A": {"label": "a", "stimuli": a}, "B": {"label": "b", "stimuli": b}},
        })
        .to_string()
    }

    #[test]
    fn markers_come_out_and_give_the_span() {
        let s = parse_marker("Turn [[left]] here").unwrap();
        assert_eq!(s.text, "Turn left here");
        assert_eq!(s.target, Some((5, 9)));
        assert_eq!(&s.text[5..9], "left");
        assert_eq!(parse_marker("plain").unwrap().target, None);
        assert_eq!(parse_marker("a [[b]] [[c]]"), Err(MarkerError::Two));
        assert_eq!(parse_marker("a [[b c"), Err(MarkerError::Unbalanced));
        assert_eq!(parse_marker("a b]] c"), Err(MarkerError::Unbalanced));
        assert_eq!(parse_marker("a ]]b[[ c"), Err(MarkerError::Unbalanced));
        assert_eq!(parse_marker("a [[ ]] c"), Err(MarkerError::Empty));
        // Multi-byte text before the marker: the span is in bytes of the cleaned text.
        let s = parse_marker("左转 [[left]]").unwrap();
        assert_eq!(&s.text[s.target.unwrap().0..s.target.unwrap().1], "left");
    }

    #[test]
    fn reading_position_is_the_last_overlapping_token() {
        // "Turn left here": "Turn", " left", " here" (byte ranges with their spaces).
        let offsets = [(0, 0), (0, 4), (4, 9), (9, 14)];
        assert_eq!(reading_position(&offsets, Some((5, 9))), Some(2));
        assert_eq!(reading_position(&offsets, None), Some(3));
        // A span over two tokens is read at the later one.
        assert_eq!(reading_position(&offsets, Some((2, 7))), Some(2));
        // The BOS's empty range never overlaps; a span past the text overlaps nothing.
        assert_eq!(reading_position(&offsets, Some((0, 0))), None);
        assert_eq!(reading_position(&offsets, Some((20, 22))), None);
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let err = |json: &str| Protocol::parse("t.json", json).unwrap_err().to_string();
        assert!(err(&protocol(Kind::Selectivity, &[], &["x"])).contains("set A has no stimuli"));
        assert!(err(&protocol(Kind::Selectivity, &["x"], &["  "]))
            .contains("stimulus 1 of set B is empty"));
        assert!(err(&protocol(Kind::Selectivity, &["[[a]] [[b]]"], &["x"]))
            .contains("two [[…]] markers"));
        assert!(err(&protocol(Kind::Selectivity, &["x", "[[a"], &["x"]))
            .contains("stimulus 2 of set A has an unclosed"));
        assert!(err(&protocol(Kind::Selectivity, &["[[]]x"], &["x"])).contains("empty marker"));
        assert!(err(&protocol(Kind::Lesion, &["x"], &["y"])).contains("held-out"));
        assert!(err(&protocol(Kind::Induction, &["x", "y"], &["z"])).contains("A has 2, B has 1"));
        assert!(err("{\"name\": 1}").starts_with("t.json: not a protocol"));
        assert!(
            err(&protocol(Kind::Selectivity, &["x"], &["y"]).replace("\"kind\"", "\"kinds\""))
                .contains("not a protocol")
        );
        assert!(Protocol::parse("t", &protocol(Kind::Selectivity, &["x [[y]]"], &["z"])).is_ok());
    }

    #[test]
    fn every_built_in_protocol_is_valid_and_big_enough() {
        for name in built_in_names() {
            let p = built_in(name)
                .unwrap()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name, name);
            for side in Side::BOTH {
                assert!(p.stimuli(side).len() >= 20, "{name} {side:?}");
            }
            if p.kind == Kind::Lesion {
                assert!(p.heldout(Side::A).len() >= 10 && p.heldout(Side::B).len() >= 10);
            }
        }
        assert!(resolve("no-such-protocol")
            .unwrap_err()
            .to_string()
            .contains("built in: sense-left"));
    }

    #[test]
    fn stimuli_tokenize_to_their_reading_position_and_too_long_ones_are_named() {
        use crate::model::config::Arch;
        use crate::model::random::{random_model, tiny_config};
        let model = random_model(&tiny_config(Arch::Llama), 1).unwrap().0;
        let p =
            Protocol::parse("t", &protocol(Kind::Selectivity, &["ab [[c]] d"], &["x y"])).unwrap();
        let a = p.tokenize(&model, Side::A).unwrap();
        // One token per byte: "ab c d" is read at "c", byte 3.
        assert_eq!(a[0].read_at, 3);
        assert_eq!(a[0].tokens[3].text, "c");
        let b = p.tokenize(&model, Side::B).unwrap();
        assert_eq!(b[0].read_at, 2);
        let long = "x".repeat(100);
        let p = Protocol::parse("t", &protocol(Kind::Selectivity, &[&long], &["y"])).unwrap();
        let e = p.tokenize(&model, Side::A).unwrap_err().to_string();
        assert!(e.contains("stimulus 1 of set A"), "{e}");
    }
}
