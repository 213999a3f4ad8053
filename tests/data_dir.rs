//! The data directory's rule (src/assets.rs `resolve_data_dir`): `--data-dir` > `$HUBEL_ASSETS` >
//! a checkout's `assets/` that already holds the default model > the platform's folder; and where
//! the viewer's settings go for each.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use hubel::assets::{
    default_model_path, resolve_data_dir, settings_file, DataDir, DataSource, SETTINGS_FILE,
};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hubel-datadir-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A checkout's `assets/`, with or without the default model in it.
fn checkout(tag: &str, with_model: bool) -> PathBuf {
    let assets = scratch(tag).join("assets");
    std::fs::create_dir_all(assets.join("models")).unwrap();
    if with_model {
        std::fs::write(default_model_path(&assets), b"a model").unwrap();
    }
    assets
}

#[test]
fn flag_beats_env_checkout_and_platform() {
    let co = checkout("flag", true);
    let got = resolve_data_dir(
        Some(Path::new("/data/flag")),
        Some(OsStr::new("/data/env")),
        Some(&co),
        Some(PathBuf::from("/data/platform")),
    );
    assert_eq!(got.dir, PathBuf::from("/data/flag"));
    assert_eq!(got.source, DataSource::Flag);
}

#[test]
fn env_beats_checkout_and_platform() {
    let co = checkout("env", true);
    let got = resolve_data_dir(
        None,
        Some(OsStr::new("/data/env")),
        Some(&co),
        Some(PathBuf::from("/data/platform")),
    );
    assert_eq!(got.dir, PathBuf::from("/data/env"));
    assert_eq!(got.source, DataSource::Env);
}

#[test]
fn an_empty_env_is_no_override() {
    let got = resolve_data_dir(
        None,
        Some(OsStr::new("")),
        None,
        Some(PathBuf::from("/data/platform")),
    );
    assert_eq!(got.source, DataSource::Platform);
}

#[test]
fn a_checkout_holding_the_default_model_beats_the_platform() {
    let co = checkout("with-model", true);
    let got = resolve_data_dir(None, None, Some(&co), Some(PathBuf::from("/data/platform")));
    assert_eq!(
        got,
        DataDir {
            dir: co,
            source: DataSource::Checkout
        }
    );
}

#[test]
fn a_checkout_without_the_model_or_gone_is_passed_over() {
    let co = checkout("without-model", false);
    let platform = PathBuf::from("/data/platform");
    let got = resolve_data_dir(None, None, Some(&co), Some(platform.clone()));
    assert_eq!(
        (got.dir, got.source),
        (platform.clone(), DataSource::Platform)
    );
    // The source tree a binary was built in need not exist where it runs.
    let gone = co.parent().unwrap().join("no-such-checkout").join("assets");
    let got = resolve_data_dir(None, None, Some(&gone), Some(platform.clone()));
    assert_eq!(
        (got.dir, got.source),
        (platform.clone(), DataSource::Platform)
    );
    // Packaged builds pass no checkout at all.
    let got = resolve_data_dir(None, None, None, Some(platform.clone()));
    assert_eq!((got.dir, got.source), (platform, DataSource::Platform));
}

#[test]
fn without_a_home_the_data_goes_to_a_temporary_folder() {
    let got = resolve_data_dir(None, None, None, None);
    assert_eq!(got.source, DataSource::Temporary);
    assert_eq!(got.dir, std::env::temp_dir().join("hubel"));
}

#[test]
fn relative_overrides_are_made_absolute() {
    let cwd = std::env::current_dir().unwrap();
    let got = resolve_data_dir(Some(Path::new("rel/flag")), None, None, None);
    assert_eq!(got.dir, cwd.join("rel/flag"));
    let got = resolve_data_dir(None, Some(OsStr::new("rel/env")), None, None);
    assert_eq!(got.dir, cwd.join("rel/env"));
}

#[test]
fn settings_follow_an_override_but_not_a_checkout() {
    let platform = PathBuf::from("/data/platform");
    let at = |dir: &str, source| DataDir {
        dir: PathBuf::from(dir),
        source,
    };
    let settings = |d: &DataDir| settings_file(d, Some(&platform));
    assert_eq!(
        settings(&at("/data/flag", DataSource::Flag)),
        Some(PathBuf::from("/data/flag").join(SETTINGS_FILE))
    );
    assert_eq!(
        settings(&at("/data/env", DataSource::Env)),
        Some(PathBuf::from("/data/env").join(SETTINGS_FILE))
    );
    // A checkout's assets/ holds downloads only; settings stay in the platform's folder.
    assert_eq!(
        settings(&at("/src/hubel/assets", DataSource::Checkout)),
        Some(platform.join(SETTINGS_FILE))
    );
    assert_eq!(
        settings(&at("/data/platform", DataSource::Platform)),
        Some(platform.join(SETTINGS_FILE))
    );
}

/// eframe keeps its settings in `$XDG_DATA_HOME/<app id>` on Linux: the same folder as ours, so
/// the settings people already have are found.
#[cfg(target_os = "linux")]
#[test]
fn the_platform_folder_on_linux_is_xdg_data_home_hubel() {
    let platform = hubel::assets::platform_data_dir().expect("a home directory");
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".local/share"));
    assert_eq!(platform, base.join("hubel"));
    assert_eq!(Some(platform), eframe::storage_dir("Hubel"));
}
