//! Shared test harness: fixtures, the real default model (fetched by the program's own code),
//! and tolerance checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

use hubel::model::Model;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub struct Fixture {
    pub dir: PathBuf,
    pub meta: serde_json::Value,
}

impl Fixture {
    pub fn open(dir: PathBuf) -> Self {
        let text = std::fs::read_to_string(dir.join("meta.json")).expect("meta.json");
        Fixture {
            meta: serde_json::from_str(&text).expect("valid meta.json"),
            dir,
        }
    }

    pub fn array(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        hubel::npy::read_f32(&self.dir.join(format!("{name}.npy")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn usizes(&self, key: &str) -> Vec<usize> {
        self.meta[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    }

    pub fn ids(&self, key: &str) -> Vec<Vec<usize>> {
        self.meta[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect()
            })
            .collect()
    }
}

/// The default model, fetched through `hubel::assets` (idempotent: a verified copy is reused).
pub fn default_model_path() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = hubel::assets::assets_dir();
    hubel::assets::fetch_model(
        &dir,
        &hubel::assets::Clients::default(),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_or_else(|e| panic!("fetching the default model: {e}"))
}

pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::open(default_model_path()).unwrap_or_else(|e| panic!("{e}")))
}

fn show_diffs() -> bool {
    std::env::var_os("HUBEL_SHOW_DIFFS").is_some()
}

/// Panics on the first non-finite value of `got` or `want`: NaN never compares greater than a
/// tolerance, so without this an all-NaN array would pass every check below.
pub fn assert_finite(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (name, v) in [("got", got), ("want", want)] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            panic!("{what}: {name}[{i}] is {} (not finite)", v[i]);
        }
    }
}

/// `max |got - want| ≤ tol` over finite values, with the worst index in the message.
pub fn assert_max_abs(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_finite(what, got, want);
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    if show_diffs() {
        eprintln!("{what}: max abs diff {d:.3e} (tolerance {tol:.3e})");
    }
    assert!(
        d <= tol,
        "{what}: max abs diff {d} at {i} (got {}, want {}) > {tol}",
        got.get(i).copied().unwrap_or(f32::NAN),
        want.get(i).copied().unwrap_or(f32::NAN)
    );
}

/// Element by element, `|got - want| ≤ atol_frac · max |want| + rtol · |want|`: an absolute
/// floor scaled to the array (values near zero carry the rounding of the large ones) plus a
/// relative part, so a small element cannot be far off just because a large one sets the scale.
/// With `HUBEL_SHOW_DIFFS` set, prints the worst ratio of error to allowance (1 = at the limit).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol_frac: f32, rtol: f32) {
    assert_finite(what, got, want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let allowed = |w: f32| atol_frac * scale + rtol * w.abs();
    let (i, ratio) = got
        .iter()
        .zip(want)
        .map(|(a, b)| {
            let d = (a - b).abs();
            let allow = allowed(*b);
            if allow > 0.0 {
                d / allow
            } else if d == 0.0 {
                0.0
            } else {
                f32::INFINITY
            }
        })
        .enumerate()
        .fold((0, 0f32), |m, (i, r)| if r > m.1 { (i, r) } else { m });
    if show_diffs() {
        eprintln!(
            "{what}: worst error {ratio:.3} of its allowance at {i} (atol {atol_frac:.0e}·max {scale:.3e}, rtol {rtol:.0e})"
        );
    }
    assert!(
        ratio <= 1.0,
        "{what}: at {i} got {}, want {}: error {:.3e} > allowed {:.3e} (atol {atol_frac:.0e}·max {scale:.3e} + rtol {rtol:.0e}·|want|)",
        got[i],
        want[i],
        (got[i] - want[i]).abs(),
        allowed(want[i])
    );
}

/// `max |got - want| ≤ rel · max |want|` (coarse: prefer [`assert_close`] for activations).
pub fn assert_rel(what: &str, got: &[f32], want: &[f32], rel: f32) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_max_abs(what, got, want, rel * scale);
}

/// A top-k dictionary of `atoms` pseudo-random unit atoms (seeded) reading `hook`, its encoder
/// the decoder (tied), biases zero, normalised by `norm`: a dictionary whose codes a test can
/// recompute with `Dictionary::encode` alone.
pub fn tied_topk(
    hook: hubel::hooks::HookPoint,
    d: usize,
    atoms: usize,
    k: usize,
    seed: u64,
    norm: hubel::features::dictionary::Normaliser,
) -> hubel::features::dictionary::Dictionary {
    use hubel::features::dictionary::{self as dict, DictConfig, Dictionary, Method};
    let mut w = dict::random_atoms(atoms, d, seed);
    dict::normalise_rows(&mut w, d);
    let config = DictConfig {
        k,
        apply_b_dec_to_input: false,
        ..DictConfig::new(Method::Topk, vec![hook], d, atoms)
    };
    Dictionary {
        w_enc: w.clone(),
        b_enc: vec![0.0; atoms],
        ..Dictionary::decoder_only(config, vec![norm], w)
    }
}
