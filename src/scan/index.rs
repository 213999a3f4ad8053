//! The scan index on disk: one [safetensors](https://github.com/huggingface/safetensors) file,
//! written by hand (8-byte little-endian header length, a JSON header padded with spaces to a
//! multiple of 8, then the arrays back to back, little-endian), so Python's `safetensors` opens
//! it too. The header's `__metadata__` holds one entry, `hubel_scan`: the [`IndexMeta`] as JSON
//! (format version, model SHA-256, corpus SHA-256, settings, how far the scan got).
//!
//! Arrays (`L` layers, `U` units: d_mlp for `neurons`, heads for `heads`; `K` top examples, `P`
//! examples per quantile group, `M` sketch counters; an example is (window, pos, act)):
//!
//! | name | dtype | shape | |
//! |---|---|---|---|
//! | `{b}.n`, `{b}.fired` | U64 | [L, U] | positions counted; positions above the threshold |
//! | `{b}.sum` | F64 | [L, U] | sum of activations (mean = sum / n) |
//! | `{b}.min`, `{b}.max` | F32 | [L, U] | |
//! | `{b}.hist` | U32 | [L, U, 50] | bin i = [(start+i)·2^exp, (start+i+1)·2^exp) |
//! | `{b}.hist_start` | I64 | [L, U] | global index of bin 0 |
//! | `{b}.hist_exp` | I32 | [L, U] | bin width 2^exp |
//! | `{b}.group_n` | U32 | [L, U, 10] | positions per quantile group (5 bins each) |
//! | `{b}.groups.{window,pos,act}` | U32, U32, F32 | [L, U, 10, P] | reservoir samples; the first min(n, P) are set |
//! | `{b}.top.{window,pos,act}`, `{b}.low.…` | U32, U32, F32 | [L, U, K] | heaps, unordered; `{b}.top_len`, `{b}.low_len` U32 [L, U] |
//! | `{b}.sketch.{id,count,err}`, `{b}.sketch_len` | U32 | [L, U, M], [L, U] | firing tokens (Space-Saving) |
//! | `{b}.skipped`, `{b}.rng` | U64 | [L] | values left out (not finite); the sampler's state (to resume) |
//! | `token_counts` | U64 | [vocab] | corpus token frequencies over counted positions |
//! | `vocab.bytes`, `vocab.offsets` | U8, U64 | [·], [vocab+1] | each token's text (UTF-8) |
//! | `windows.tokens`, `windows.offsets` | U32, U64 | [·], [W+1] | the token ids of each window scanned |
//! | `windows.stimulus`, `windows.start` | U32 | [W] | its stimulus; its first token's index in the stimulus |
//! | `stimuli.{text,source,sense}` + `….offsets` | U8, U64 | | each stimulus scanned: text, source, WordNet sense as JSON ("" if none) |

use std::path::Path;

use super::stats::{LayerStats, Sizes, BINS, GROUPS};
use super::{Example, ScanConfig, ScanError};
use crate::corpus::wordnet::Sense;

pub const FORMAT: &str = "hubel-scan";
pub const VERSION: u32 = 1;
/// What the index says about position 0 (shown on a card).
pub const POSITION0_NOTE: &str =
    "position 0 of each window (the attention sink) is left out of every statistic";

/// The index's header: what was scanned, with what, and how far.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IndexMeta {
    pub format: String,
    pub version: u32,
    pub model_sha256: String,
    pub model_name: String,
    pub corpus: String,
    pub corpus_sha256: String,
    /// Stimuli in the whole corpus.
    pub corpus_stimuli: usize,
    pub config: ScanConfig,
    pub layers: usize,
    pub d_mlp: usize,
    pub heads: usize,
    pub vocab: usize,
    /// Stimuli asked for (`--limit`, or the whole corpus).
    pub stimuli_target: usize,
    /// Stimuli, windows and tokens scanned so far (a resumed scan continues from here).
    pub stimuli_done: usize,
    pub windows_done: usize,
    pub tokens_done: u64,
    /// Positions in the statistics (tokens_done less the left-out positions 0).
    pub positions_counted: u64,
    pub complete: bool,
    pub seconds: f64,
    /// Of `seconds`: in the model's forward passes, and in the statistics.
    #[serde(default)]
    pub forward_seconds: f64,
    #[serde(default)]
    pub stats_seconds: f64,
    pub position0: String,
    /// The dictionary whose features were scanned too (`None`: neurons and heads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dictionary: Option<DictScan>,
}

/// Which dictionary a scan's `dictionary` statistics are of.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DictScan {
    pub title: String,
    /// `Dictionary::sha256`: a scan's features belong to exactly that dictionary.
    pub sha256: String,
    /// The block layers whose `hook_resid_post` it reads, in the order of `ScanIndex::dictionary`.
    pub layers: Vec<usize>,
    pub atoms: usize,
}

/// One stimulus scanned.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredStimulus {
    pub text: String,
    pub source: String,
    pub sense: Option<Sense>,
}

/// The windows scanned, their tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Windows {
    pub tokens: Vec<u32>,
    pub offsets: Vec<u64>,
    pub stimulus: Vec<u32>,
    pub start: Vec<u32>,
}

impl Windows {
    pub fn new() -> Self {
        Windows {
            offsets: vec![0],
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.stimulus.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stimulus.is_empty()
    }

    pub fn get(&self, w: usize) -> &[u32] {
        &self.tokens[self.offsets[w] as usize..self.offsets[w + 1] as usize]
    }

    pub fn push(&mut self, tokens: &[u32], stimulus: u32, start: u32) {
        self.tokens.extend_from_slice(tokens);
        self.offsets.push(self.tokens.len() as u64);
        self.stimulus.push(stimulus);
        self.start.push(start);
    }
}

/// A finished or partial scan: statistics of every neuron and head, and the windows they point
/// into.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanIndex {
    pub meta: IndexMeta,
    pub neurons: Vec<LayerStats>,
    pub heads: Vec<LayerStats>,
    /// The dictionary's features, one entry per layer of `meta.dictionary` (empty without).
    pub dictionary: Vec<LayerStats>,
    pub token_counts: Vec<u64>,
    pub vocab: Vec<String>,
    pub windows: Windows,
    pub stimuli: Vec<StoredStimulus>,
}

// ---- writing ----

struct Writer {
    entries: Vec<(String, &'static str, Vec<usize>, Vec<u8>)>,
}

macro_rules! le {
    ($v:expr) => {
        $v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()
    };
}

impl Writer {
    fn add(&mut self, name: &str, dtype: &'static str, shape: Vec<usize>, bytes: Vec<u8>) {
        self.entries.push((name.to_string(), dtype, shape, bytes));
    }

    fn strings<'a>(&mut self, name: &str, items: impl Iterator<Item = &'a str>) {
        let mut bytes = Vec::new();
        let mut offsets = vec![0u64];
        for s in items {
            bytes.extend_from_slice(s.as_bytes());
            offsets.push(bytes.len() as u64);
        }
        let n = bytes.len();
        self.add(name, "U8", vec![n], bytes);
        let m = offsets.len();
        self.add(&format!("{name}.offsets"), "U64", vec![m], le!(offsets));
    }

    fn finish(self, meta: &str) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut md = serde_json::Map::new();
        md.insert("hubel_scan".into(), meta.into());
        header.insert("__metadata__".into(), md.into());
        let mut at = 0usize;
        for (name, dtype, shape, bytes) in &self.entries {
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + bytes.len()]}),
            );
            at += bytes.len();
        }
        let mut h = serde_json::to_vec(&header).expect("a JSON map serialises");
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + h.len() + at);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        for (_, _, _, bytes) in &self.entries {
            out.extend_from_slice(bytes);
        }
        out
    }
}

fn write_layers(w: &mut Writer, b: &str, layers: &[LayerStats], units: usize, s: Sizes) {
    let l = layers.len();
    let cat_u64 = |f: fn(&LayerStats) -> &Vec<u64>| -> Vec<u8> {
        layers.iter().flat_map(|x| le!(f(x))).collect()
    };
    let cat_u32 = |f: fn(&LayerStats) -> &Vec<u32>| -> Vec<u8> {
        layers.iter().flat_map(|x| le!(f(x))).collect()
    };
    let cat_f32 = |f: fn(&LayerStats) -> &Vec<f32>| -> Vec<u8> {
        layers.iter().flat_map(|x| le!(f(x))).collect()
    };
    let ex = |f: fn(&LayerStats) -> &Vec<Example>, part: usize| -> Vec<u8> {
        layers
            .iter()
            .flat_map(|x| {
                f(x).iter().flat_map(move |e| match part {
                    0 => e.window.to_le_bytes(),
                    1 => e.pos.to_le_bytes(),
                    _ => e.act.to_le_bytes(),
                })
            })
            .collect()
    };
    let lu = vec![l, units];
    w.add(&format!("{b}.n"), "U64", lu.clone(), cat_u64(|x| &x.n));
    w.add(
        &format!("{b}.fired"),
        "U64",
        lu.clone(),
        cat_u64(|x| &x.fired),
    );
    w.add(
        &format!("{b}.sum"),
        "F64",
        lu.clone(),
        layers.iter().flat_map(|x| le!(x.sum)).collect(),
    );
    w.add(&format!("{b}.min"), "F32", lu.clone(), cat_f32(|x| &x.min));
    w.add(&format!("{b}.max"), "F32", lu.clone(), cat_f32(|x| &x.max));
    w.add(
        &format!("{b}.hist"),
        "U32",
        vec![l, units, BINS],
        cat_u32(|x| &x.hist),
    );
    w.add(
        &format!("{b}.hist_start"),
        "I64",
        lu.clone(),
        layers.iter().flat_map(|x| le!(x.hist_start)).collect(),
    );
    w.add(
        &format!("{b}.hist_exp"),
        "I32",
        lu.clone(),
        layers.iter().flat_map(|x| le!(x.hist_exp)).collect(),
    );
    w.add(
        &format!("{b}.group_n"),
        "U32",
        vec![l, units, GROUPS],
        cat_u32(|x| &x.group_n),
    );
    let gshape = vec![l, units, GROUPS, s.per_group];
    let kshape = vec![l, units, s.k];
    for (part, name, dtype) in [(0, "window", "U32"), (1, "pos", "U32"), (2, "act", "F32")] {
        w.add(
            &format!("{b}.groups.{name}"),
            dtype,
            gshape.clone(),
            ex(|x| &x.groups, part),
        );
        w.add(
            &format!("{b}.top.{name}"),
            dtype,
            kshape.clone(),
            ex(|x| &x.top, part),
        );
        w.add(
            &format!("{b}.low.{name}"),
            dtype,
            kshape.clone(),
            ex(|x| &x.low, part),
        );
    }
    w.add(
        &format!("{b}.top_len"),
        "U32",
        lu.clone(),
        cat_u32(|x| &x.top_len),
    );
    w.add(
        &format!("{b}.low_len"),
        "U32",
        lu.clone(),
        cat_u32(|x| &x.low_len),
    );
    let mshape = vec![l, units, s.sketch];
    w.add(
        &format!("{b}.sketch.id"),
        "U32",
        mshape.clone(),
        cat_u32(|x| &x.sk_id),
    );
    w.add(
        &format!("{b}.sketch.count"),
        "U32",
        mshape.clone(),
        cat_u32(|x| &x.sk_count),
    );
    w.add(
        &format!("{b}.sketch.err"),
        "U32",
        mshape,
        cat_u32(|x| &x.sk_err),
    );
    w.add(
        &format!("{b}.sketch_len"),
        "U32",
        lu,
        cat_u32(|x| &x.sk_len),
    );
    w.add(
        &format!("{b}.skipped"),
        "U64",
        vec![l],
        layers
            .iter()
            .flat_map(|x| x.skipped.to_le_bytes())
            .collect(),
    );
    w.add(
        &format!("{b}.rng"),
        "U64",
        vec![l],
        layers.iter().flat_map(|x| x.rng.to_le_bytes()).collect(),
    );
}

impl ScanIndex {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer {
            entries: Vec::new(),
        };
        let s = self.meta.config.sizes();
        write_layers(&mut w, "neurons", &self.neurons, self.meta.d_mlp, s);
        write_layers(&mut w, "heads", &self.heads, self.meta.heads, s);
        if let Some(d) = &self.meta.dictionary {
            write_layers(&mut w, "dictionary", &self.dictionary, d.atoms, s);
        }
        let v = self.token_counts.len();
        w.add("token_counts", "U64", vec![v], le!(self.token_counts));
        w.strings("vocab.bytes", self.vocab.iter().map(String::as_str));
        let win = &self.windows;
        w.add(
            "windows.tokens",
            "U32",
            vec![win.tokens.len()],
            le!(win.tokens),
        );
        w.add(
            "windows.offsets",
            "U64",
            vec![win.offsets.len()],
            le!(win.offsets),
        );
        w.add(
            "windows.stimulus",
            "U32",
            vec![win.stimulus.len()],
            le!(win.stimulus),
        );
        w.add(
            "windows.start",
            "U32",
            vec![win.start.len()],
            le!(win.start),
        );
        w.strings("stimuli.text", self.stimuli.iter().map(|s| s.text.as_str()));
        w.strings(
            "stimuli.source",
            self.stimuli.iter().map(|s| s.source.as_str()),
        );
        let senses: Vec<String> = self
            .stimuli
            .iter()
            .map(|s| {
                s.sense
                    .as_ref()
                    .map(|x| serde_json::to_string(x).unwrap_or_default())
                    .unwrap_or_default()
            })
            .collect();
        w.strings("stimuli.sense", senses.iter().map(String::as_str));
        let meta = serde_json::to_string(&self.meta).expect("meta serialises");
        w.finish(&meta)
    }

    /// Saves atomically (a temp file beside it, then a rename).
    pub fn save(&self, path: &Path) -> Result<(), ScanError> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(path, e))?;
        }
        crate::atomic_write(path, &self.to_bytes()).map_err(|e| io(path, e))
    }

    /// Loads an index (any model's: see [`ScanIndex::check_model`]).
    pub fn load(path: &Path) -> Result<Self, ScanError> {
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        Self::from_bytes(&bytes).map_err(|reason| ScanError::Format {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Reads only an index file's header (what was scanned, with which model, how far): to find
    /// the index of a model among many without loading them.
    pub fn read_meta(path: &Path) -> Result<IndexMeta, ScanError> {
        use std::io::Read;
        let format = |reason: String| ScanError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(|e| io(path, e))?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(format(format!("a header of {len} bytes")));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header).map_err(|e| io(path, e))?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|e| format(format!("bad header: {e}")))?;
        let md = header
            .get("__metadata__")
            .and_then(|m| m.get("hubel_scan"))
            .and_then(|m| m.as_str())
            .ok_or_else(|| format("not a hubel scan index (no `hubel_scan` metadata)".into()))?;
        serde_json::from_str(md).map_err(|e| format(format!("bad scan metadata: {e}")))
    }

    /// Refuses an index made with another model.
    pub fn check_model(&self, info: &crate::model::ModelInfo) -> Result<(), ScanError> {
        if self.meta.model_sha256 != info.sha256 {
            return Err(ScanError::WrongModel {
                index_model: self.meta.model_name.clone(),
                index_sha: self.meta.model_sha256.clone(),
                model: info.name.clone(),
                sha: info.sha256.clone(),
            });
        }
        Ok(())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let r = Reader::new(bytes)?;
        let md = r
            .header
            .get("__metadata__")
            .and_then(|m| m.get("hubel_scan"))
            .and_then(|m| m.as_str())
            .ok_or("not a hubel scan index (no `hubel_scan` metadata)")?;
        let meta: IndexMeta =
            serde_json::from_str(md).map_err(|e| format!("bad scan metadata: {e}"))?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(format!(
                "scan index format {} v{} is not {FORMAT} v{VERSION}: scan again",
                meta.format, meta.version
            ));
        }
        let s = meta.config.sizes();
        let neurons = read_layers(&r, "neurons", meta.layers, meta.d_mlp, s)?;
        let heads = read_layers(&r, "heads", meta.layers, meta.heads, s)?;
        let dictionary = match &meta.dictionary {
            Some(d) => read_layers(&r, "dictionary", d.layers.len(), d.atoms, s)?,
            None => Vec::new(),
        };
        let windows = Windows {
            tokens: r.u32("windows.tokens")?,
            offsets: r.u64("windows.offsets")?,
            stimulus: r.u32("windows.stimulus")?,
            start: r.u32("windows.start")?,
        };
        if windows.offsets.len() != windows.stimulus.len() + 1
            || windows
                .offsets
                .iter()
                .any(|&o| o as usize > windows.tokens.len())
        {
            return Err("inconsistent windows".into());
        }
        let texts = r.strings("stimuli.text")?;
        let sources = r.strings("stimuli.source")?;
        let senses = r.strings("stimuli.sense")?;
        if texts.len() != sources.len() || texts.len() != senses.len() {
            return Err("inconsistent stimuli".into());
        }
        if windows.stimulus.iter().any(|&s| s as usize >= texts.len()) {
            return Err("a window points past the stimuli".into());
        }
        let stimuli = texts
            .into_iter()
            .zip(sources)
            .zip(senses)
            .map(|((text, source), sense)| StoredStimulus {
                text,
                source,
                sense: serde_json::from_str(&sense).ok(),
            })
            .collect();
        Ok(ScanIndex {
            token_counts: r.u64("token_counts")?,
            vocab: r.strings("vocab.bytes")?,
            meta,
            neurons,
            heads,
            dictionary,
            windows,
            stimuli,
        })
    }
}

fn io(path: &Path, source: std::io::Error) -> ScanError {
    ScanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---- reading ----

struct Reader<'a> {
    header: serde_json::Map<String, serde_json::Value>,
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, String> {
        let n = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or("file too short")?;
        let h = bytes
            .get(8..8usize.saturating_add(n))
            .ok_or("truncated header")?;
        let header = serde_json::from_slice(h).map_err(|e| format!("bad header: {e}"))?;
        Ok(Reader {
            header,
            data: &bytes[8 + n..],
        })
    }

    fn raw(&self, name: &str, dtype: &str, size: usize) -> Result<(&'a [u8], Vec<usize>), String> {
        let t = self
            .header
            .get(name)
            .ok_or_else(|| format!("missing array `{name}`"))?;
        if t.get("dtype").and_then(|d| d.as_str()) != Some(dtype) {
            return Err(format!("`{name}` is not {dtype}"));
        }
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone())
            .map_err(|e| format!("`{name}` shape: {e}"))?;
        let off: [usize; 2] = serde_json::from_value(t["data_offsets"].clone())
            .map_err(|e| format!("`{name}` offsets: {e}"))?;
        let count: usize = shape.iter().product();
        if off[1] < off[0] || off[1] - off[0] != count * size {
            return Err(format!("`{name}`: size does not match its shape"));
        }
        let data = self
            .data
            .get(off[0]..off[1])
            .ok_or_else(|| format!("`{name}`: truncated file"))?;
        Ok((data, shape))
    }

    fn u8(&self, name: &str) -> Result<Vec<u8>, String> {
        Ok(self.raw(name, "U8", 1)?.0.to_vec())
    }
}

macro_rules! reader {
    ($f:ident, $t:ty, $d:expr) => {
        impl Reader<'_> {
            fn $f(&self, name: &str) -> Result<Vec<$t>, String> {
                const N: usize = std::mem::size_of::<$t>();
                let (data, _) = self.raw(name, $d, N)?;
                Ok(data
                    .chunks_exact(N)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk")))
                    .collect())
            }
        }
    };
}
reader!(u32, u32, "U32");
reader!(u64, u64, "U64");
reader!(i32, i32, "I32");
reader!(i64, i64, "I64");
reader!(f32, f32, "F32");
reader!(f64, f64, "F64");

impl Reader<'_> {
    fn strings(&self, name: &str) -> Result<Vec<String>, String> {
        let bytes = self.u8(name)?;
        let offsets = self.u64(&format!("{name}.offsets"))?;
        offsets
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0] as usize, w[1] as usize);
                bytes
                    .get(a..b)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .ok_or_else(|| format!("`{name}`: bad offsets"))
            })
            .collect()
    }

    fn examples(&self, name: &str, len: usize) -> Result<Vec<Example>, String> {
        let (w, p, a) = (
            self.u32(&format!("{name}.window"))?,
            self.u32(&format!("{name}.pos"))?,
            self.f32(&format!("{name}.act"))?,
        );
        if w.len() != len || p.len() != len || a.len() != len {
            return Err(format!("`{name}`: wrong size"));
        }
        Ok((0..len)
            .map(|i| Example {
                window: w[i],
                pos: p[i],
                act: a[i],
            })
            .collect())
    }
}

fn read_layers(
    r: &Reader,
    b: &str,
    layers: usize,
    units: usize,
    s: Sizes,
) -> Result<Vec<LayerStats>, String> {
    let lu = layers * units;
    let get = |name: &str, len: usize| -> Result<(), String> {
        if len != lu {
            return Err(format!("`{b}.{name}` has the wrong size"));
        }
        Ok(())
    };
    let n = r.u64(&format!("{b}.n"))?;
    get("n", n.len())?;
    let fired = r.u64(&format!("{b}.fired"))?;
    let sum = r.f64(&format!("{b}.sum"))?;
    let min = r.f32(&format!("{b}.min"))?;
    let max = r.f32(&format!("{b}.max"))?;
    let hist = r.u32(&format!("{b}.hist"))?;
    let hist_start = r.i64(&format!("{b}.hist_start"))?;
    let hist_exp = r.i32(&format!("{b}.hist_exp"))?;
    let group_n = r.u32(&format!("{b}.group_n"))?;
    let groups = r.examples(&format!("{b}.groups"), lu * GROUPS * s.per_group)?;
    let top = r.examples(&format!("{b}.top"), lu * s.k)?;
    let low = r.examples(&format!("{b}.low"), lu * s.k)?;
    let top_len = r.u32(&format!("{b}.top_len"))?;
    let low_len = r.u32(&format!("{b}.low_len"))?;
    let sk_id = r.u32(&format!("{b}.sketch.id"))?;
    let sk_count = r.u32(&format!("{b}.sketch.count"))?;
    let sk_err = r.u32(&format!("{b}.sketch.err"))?;
    let sk_len = r.u32(&format!("{b}.sketch_len"))?;
    let skipped = r.u64(&format!("{b}.skipped"))?;
    let rng = r.u64(&format!("{b}.rng"))?;
    for (name, len, want) in [
        ("fired", fired.len(), lu),
        ("sum", sum.len(), lu),
        ("min", min.len(), lu),
        ("max", max.len(), lu),
        ("hist", hist.len(), lu * BINS),
        ("hist_start", hist_start.len(), lu),
        ("hist_exp", hist_exp.len(), lu),
        ("group_n", group_n.len(), lu * GROUPS),
        ("top_len", top_len.len(), lu),
        ("low_len", low_len.len(), lu),
        ("sketch.id", sk_id.len(), lu * s.sketch),
        ("sketch.count", sk_count.len(), lu * s.sketch),
        ("sketch.err", sk_err.len(), lu * s.sketch),
        ("sketch_len", sk_len.len(), lu),
        ("skipped", skipped.len(), layers),
        ("rng", rng.len(), layers),
    ] {
        if len != want {
            return Err(format!("`{b}.{name}` has the wrong size"));
        }
    }
    if top_len.iter().chain(&low_len).any(|&l| l as usize > s.k)
        || sk_len.iter().any(|&l| l as usize > s.sketch)
    {
        return Err(format!("`{b}`: a length is beyond its capacity"));
    }
    let mut out = Vec::with_capacity(layers);
    for l in 0..layers {
        let sl = |v: &[u32], w: usize| v[l * units * w..(l + 1) * units * w].to_vec();
        let se = |v: &[Example], w: usize| v[l * units * w..(l + 1) * units * w].to_vec();
        let mut x = LayerStats::new(0, s, 1);
        x.units = units;
        x.n = n[l * units..(l + 1) * units].to_vec();
        x.fired = fired[l * units..(l + 1) * units].to_vec();
        x.sum = sum[l * units..(l + 1) * units].to_vec();
        x.min = min[l * units..(l + 1) * units].to_vec();
        x.max = max[l * units..(l + 1) * units].to_vec();
        x.hist = sl(&hist, BINS);
        x.hist_start = hist_start[l * units..(l + 1) * units].to_vec();
        x.hist_exp = hist_exp[l * units..(l + 1) * units].to_vec();
        x.group_n = sl(&group_n, GROUPS);
        x.groups = se(&groups, GROUPS * s.per_group);
        x.top = se(&top, s.k);
        x.low = se(&low, s.k);
        x.top_len = sl(&top_len, 1);
        x.low_len = sl(&low_len, 1);
        x.sk_id = sl(&sk_id, s.sketch);
        x.sk_count = sl(&sk_count, s.sketch);
        x.sk_err = sl(&sk_err, s.sketch);
        x.sk_len = sl(&sk_len, 1);
        x.skipped = skipped[l];
        x.rng = rng[l];
        out.push(x);
    }
    Ok(out)
}

/// Stimuli the default scan takes from the start of the (shuffled) corpus: WordNet's average
/// stimulus is about 10 tokens, so about 80,000 tokens, a few minutes of work. `hubel scan`
/// and the app's "Scan" both use it; `--limit all` (the app's "Scan all of WordNet") extends the
/// same index to the whole corpus.
pub const DEFAULT_STIMULI: usize = 8_000;

/// Where the scan of `corpus` (its name and SHA-256) with the model `model_sha256` is kept in
/// `scans_dir`: the app and `hubel scan` find the same file, and scanning into it again resumes
/// or extends it.
pub fn default_index_path(
    scans_dir: &Path,
    model_sha256: &str,
    corpus_name: &str,
    corpus_sha256: &str,
) -> std::path::PathBuf {
    scans_dir.join(format!(
        "{}-{}-{}.scan.safetensors",
        &model_sha256[..model_sha256.len().min(12)],
        corpus_name.replace(['/', '\\', ' '], "_"),
        &corpus_sha256[..corpus_sha256.len().min(12)]
    ))
}

/// The index path of a scan that also holds a dictionary's features: `path` with
/// `.dict-<its SHA-256's first 12>` before `.scan.safetensors`.
pub fn with_dictionary(path: &Path, dict_sha256: &str) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".scan.safetensors").unwrap_or(&name);
    path.with_file_name(format!(
        "{stem}.dict-{}.scan.safetensors",
        &dict_sha256[..dict_sha256.len().min(12)]
    ))
}

/// Every index in `scans_dir` made with the model `model_sha256`, most tokens first (the newest
/// on a tie). Only headers are read; files that are not scan indexes are passed over.
pub fn list_indexes(scans_dir: &Path, model_sha256: &str) -> Vec<(std::path::PathBuf, IndexMeta)> {
    let Ok(entries) = std::fs::read_dir(scans_dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".safetensors") && p.is_file())
        .filter_map(|p| {
            let meta = ScanIndex::read_meta(&p).ok()?;
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (meta.model_sha256 == model_sha256).then_some((meta.tokens_done, modified, p, meta))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse((f.0, f.1)));
    found.into_iter().map(|(_, _, p, meta)| (p, meta)).collect()
}

/// The index in `scans_dir` made with the model `model_sha256` that scanned the most tokens
/// (the newest on a tie); `None` when there is none.
pub fn find_index(scans_dir: &Path, model_sha256: &str) -> Option<(std::path::PathBuf, IndexMeta)> {
    list_indexes(scans_dir, model_sha256).into_iter().next()
}
