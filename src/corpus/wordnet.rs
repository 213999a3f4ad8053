//! WordNet 3.1's data files (`data.noun`, `data.verb`, `data.adj`, `data.adv`, fetched by
//! `hubel fetch --corpus`) read into stimuli: each synset's gloss (its definition) and each of its
//! quoted example sentences, one stimulus each, with the synset kept as metadata ([`Sense`]) so a
//! card can say "fires on the verb sense of *leave*".
//!
//! A data line (wndb(5WN)): `offset lex_filenum ss_type w_cnt (word lex_id)… p_cnt (ptr)…
//! [f_cnt (frame)…] | gloss`, where `w_cnt` and `lex_id` are hexadecimal and the gloss is the
//! definition followed by `; "example"` parts. Lines starting with a space are the licence header.

use std::path::Path;

/// The lexicographer files, by number (WordNet's `lexnames`).
pub const LEXNAMES: [&str; 45] = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
];

/// The data files, in the order their stimuli are read.
pub const FILES: [&str; 4] = ["data.noun", "data.verb", "data.adj", "data.adv"];

/// One synset as its data line gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Synset {
    /// Byte offset of the line in its file: with the part of speech, WordNet's synset id.
    pub offset: u32,
    /// `noun`, `verb`, `adjective` (satellites too) or `adverb`.
    pub pos: &'static str,
    /// `verb.motion`, … (the lexicographer file).
    pub lexname: String,
    /// Lemmas with spaces for underscores and adjective markers (`(a)`, `(p)`, `(ip)`) removed,
    /// each with its lex_id (which tells senses of one lemma in one lexicographer file apart).
    pub lemmas: Vec<(String, u8)>,
    /// The definition: the gloss without its examples.
    pub definition: String,
    /// The quoted example sentences, quotes removed.
    pub examples: Vec<String>,
    /// The synset's pointers (relations to other synsets or words), in the line's order.
    pub pointers: Vec<Pointer>,
}

/// One pointer of a data line: `@ 00001740 v 0000` (wndb(5WN)).
#[derive(Clone, Debug, PartialEq)]
pub struct Pointer {
    /// `@` hypernym, `@i` instance hypernym, `~` hyponym, `!` antonym, …
    pub symbol: String,
    /// The target synset's offset in the data file of `pos`.
    pub offset: u32,
    /// The target's part of speech as the file writes it: `n`, `v`, `a`, `s` or `r`.
    pub pos: char,
    /// `0000` for a relation between synsets; else source and target word numbers (hex).
    pub source_target: u16,
}

impl Pointer {
    /// A hypernym pointer (`@`, or `@i` for an instance's class).
    pub fn is_hypernym(&self) -> bool {
        self.symbol == "@" || self.symbol == "@i"
    }

    /// The target's synset key (see [`synset_key`]).
    pub fn key(&self) -> (char, u32) {
        (file_letter(self.pos), self.offset)
    }
}

/// The data file a part-of-speech letter's synsets live in, as a letter: `n`, `v`, `a` (for
/// `a` and satellites `s`, both in `data.adj`), `r`. With an offset, a synset's unique key.
pub fn file_letter(pos: char) -> char {
    match pos {
        's' => 'a',
        c => c,
    }
}

/// A synset's unique key from a [`Sense`]'s or [`Synset`]'s part of speech (`noun`, `verb`,
/// `adjective`, `adverb`) and offset.
pub fn synset_key(pos: &str, offset: u32) -> (char, u32) {
    (pos_letter(pos), offset)
}

impl Synset {
    /// Keys of the synsets this one's hypernym pointers (`@`, `@i`) name.
    pub fn hypernyms(&self) -> impl Iterator<Item = (char, u32)> + '_ {
        self.pointers
            .iter()
            .filter(|p| p.is_hypernym())
            .map(Pointer::key)
    }
}

/// What a stimulus from WordNet was: kept in the scan index, shown on a feature's card.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sense {
    pub pos: String,
    pub offset: u32,
    pub lexname: String,
    pub lemmas: Vec<String>,
    pub lex_ids: Vec<u8>,
    /// `gloss`, or `example` with its number (1, 2, …) in `example`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<u32>,
}

impl Sense {
    /// `verb sense of "leave, go forth" (verb.motion, synset v00001740), example 1`.
    pub fn describe(&self) -> String {
        let what = match self.example {
            Some(n) => format!("example {n}"),
            None => "gloss".to_string(),
        };
        format!(
            "WordNet {} sense of \"{}\" ({}, synset {}{:08}), {what}",
            self.pos,
            self.lemmas.join(", "),
            self.lexname,
            pos_letter(&self.pos),
            self.offset
        )
    }
}

fn pos_letter(pos: &str) -> char {
    match pos {
        "noun" => 'n',
        "verb" => 'v',
        "adjective" => 'a',
        _ => 'r',
    }
}

/// Parses one data line; `None` for header lines and lines that do not follow the format.
pub fn parse_line(line: &str) -> Option<Synset> {
    if line.starts_with(' ') || line.trim().is_empty() {
        return None;
    }
    let (fields, gloss) = line.split_once('|')?;
    let f: Vec<&str> = fields.split_whitespace().collect();
    let offset: u32 = f.first()?.parse().ok()?;
    let lexnum: usize = f.get(1)?.parse().ok()?;
    let pos = match *f.get(2)? {
        "n" => "noun",
        "v" => "verb",
        "a" | "s" => "adjective",
        "r" => "adverb",
        _ => return None,
    };
    let w_cnt = usize::from_str_radix(f.get(3)?, 16).ok()?;
    let mut lemmas = Vec::with_capacity(w_cnt);
    for i in 0..w_cnt {
        let word = *f.get(4 + 2 * i)?;
        let lex_id = u8::from_str_radix(f.get(5 + 2 * i)?, 16).ok()?;
        let word = word.split('(').next().unwrap_or(word).replace('_', " ");
        lemmas.push((word, lex_id));
    }
    // Pointers: p_cnt (3 decimal digits), then `symbol offset pos source/target` each; a line
    // whose pointers do not parse keeps none rather than being dropped.
    let at = 4 + 2 * w_cnt;
    let pointers = f
        .get(at)
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|p_cnt| {
            (0..p_cnt)
                .map(|i| {
                    let p = f.get(at + 1 + 4 * i..at + 5 + 4 * i)?;
                    Some(Pointer {
                        symbol: p[0].to_string(),
                        offset: p[1].parse().ok()?,
                        pos: p[2].chars().next()?,
                        source_target: u16::from_str_radix(p[3], 16).ok()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or_default();
    let (definition, examples) = split_gloss(gloss.trim());
    Some(Synset {
        offset,
        pos,
        lexname: LEXNAMES.get(lexnum).unwrap_or(&"unknown").to_string(),
        lemmas,
        definition,
        examples,
        pointers,
    })
}

/// `draw air into the lungs; "I can breathe"; "she breathed"` → the definition and the examples.
fn split_gloss(gloss: &str) -> (String, Vec<String>) {
    let (definition, rest) = match gloss.find('"') {
        Some(i) => (&gloss[..i], &gloss[i..]),
        None => (gloss, ""),
    };
    let definition = definition.trim().trim_end_matches(';').trim().to_string();
    let examples = rest
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect();
    (definition, examples)
}

/// Every synset of the four data files under `dir` (a missing file is an error).
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<Synset>> {
    let mut out = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (fetch the corpus with `hubel fetch --corpus`)",
                    path.display()
                ),
            )
        })?;
        out.extend(text.lines().filter_map(parse_line));
    }
    Ok(out)
}

/// The stimuli of `synsets`: the gloss, then each example, of each synset in order, with its
/// [`Sense`].
pub fn stimuli(synsets: &[Synset]) -> Vec<(String, Sense)> {
    let mut out = Vec::new();
    for s in synsets {
        let sense = |kind: &str, example: Option<u32>| Sense {
            pos: s.pos.to_string(),
            offset: s.offset,
            lexname: s.lexname.clone(),
            lemmas: s.lemmas.iter().map(|(w, _)| w.clone()).collect(),
            lex_ids: s.lemmas.iter().map(|(_, id)| *id).collect(),
            kind: kind.to_string(),
            example,
        };
        if !s.definition.is_empty() {
            out.push((s.definition.clone(), sense("gloss", None)));
        }
        for (i, e) in s.examples.iter().enumerate() {
            out.push((e.clone(), sense("example", Some(i as u32 + 1))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_verb_line_with_frames() {
        let line = "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 002 * 00005041 v 0000 + 03121972 a 0301 02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; \"I can breathe better when the air is clean\"; \"The patient is respiring\"  ";
        let s = parse_line(line).unwrap();
        assert_eq!(s.offset, 1740);
        assert_eq!(s.pos, "verb");
        assert_eq!(s.lexname, "verb.body");
        assert_eq!(s.lemmas[1], ("take a breath".to_string(), 0));
        assert_eq!(s.lemmas[3], ("suspire".to_string(), 3));
        assert_eq!(s.definition, "draw air into, and expel out of, the lungs");
        assert_eq!(
            s.examples,
            [
                "I can breathe better when the air is clean",
                "The patient is respiring"
            ]
        );
        assert!(parse_line("  1 This software and database is being provided").is_none());
        assert_eq!(s.pointers.len(), 2);
        assert_eq!(
            s.pointers[1],
            Pointer {
                symbol: "+".into(),
                offset: 3121972,
                pos: 'a',
                source_target: 0x0301
            }
        );
        assert_eq!(s.hypernyms().count(), 0);
    }

    #[test]
    fn keeps_hypernym_pointers() {
        let line = "00002573 29 v 01 respire 2 003 $ 00001740 v 0000 @ 00001740 v 0000 + 03121972 a 0101 01 + 02 00 | breathe easily again, as after exertion or anxiety  ";
        let s = parse_line(line).unwrap();
        assert_eq!(s.pointers.len(), 3);
        assert_eq!(s.hypernyms().collect::<Vec<_>>(), [('v', 1740)]);
        let inst = "09044862 15 n 01 Alabama 0 002 @i 08654360 n 0000 #p 09044862 n 0000 | a state in the southeastern United States";
        let s = parse_line(inst).unwrap();
        assert_eq!(s.hypernyms().collect::<Vec<_>>(), [('n', 8654360)]);
        // A satellite's pointer to its head adjective keys into data.adj.
        let sat =
            "00002312 00 s 02 left(a) 0 far_left 1 001 & 00002098 a 0000 | being on the left side";
        let s = parse_line(sat).unwrap();
        assert_eq!(s.pointers[0].key(), ('a', 2098));
        assert_eq!(synset_key(s.pos, s.offset), ('a', 2312));
    }
}
