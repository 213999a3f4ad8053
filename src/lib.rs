//! Hubel: a probe viewer for language models.
//!
//! Type a probe sentence, watch every layer respond, lesion or steer a feature and see the output
//! change. This crate holds the runtime and everything around it:
//! - [`model`]: loading GGUF files and HF folders, tokenizing, the hooked forward pass, incremental
//!   re-runs and continuation (candle tensors live only here);
//! - [`hooks`]: hook points with TransformerLens's names, recording, interventions;
//! - [`analysis`]: distributions, losses and divergences over plain `f32` slices;
//! - [`assets`]: fetching the default model and corpus by package name, with checksums;
//! - [`jobs`]: long work on a thread of its own (progress, pause, cancel, yielding to clicks);
//! - [`probe`]: the `hubel probe` report; [`bench`]: the runtime benchmark;
//! - [`circuits`]: the logit lens, direct logit attribution and activation patching.
//!
//! Failures: library modules return their own `thiserror` enums whose messages say what to do;
//! the binary wraps them with `anyhow` context and prints the whole chain once. Nothing panics on
//! bad input: corrupt or truncated files, unsupported architectures, empty or over-long text and
//! malformed intervention specs are all errors with a message.

/// Gives the allocator's free pages back to the system (glibc keeps them: `main` raises its
/// trim threshold so that a forward pass reuses its freed tensors instead of faulting them in
/// again). Called when a probe's memory is let go, so the process's size follows what it holds.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub mod analysis;
pub mod app;
pub mod assets;
pub mod bench;
pub mod circuits;
pub mod cli;
pub mod corpus;
pub mod effect;
pub mod experiments;
pub mod features;
pub mod hooks;
pub mod jobs;
pub mod model;
pub mod npy;
pub mod probe;
pub mod scan;
pub mod session;

use std::io::Write;
use std::path::Path;

/// `1 token`, `2 tokens`: a count with its noun in the right number.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, not only per process: two threads saving the same path at once (a
    // checkpoint and a result, or two jobs of one spec) must not share a temp file, or one's
    // rename finds it gone.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    /// Threads saving one path at once all succeed; the file holds one whole write; no temp
    /// file is left.
    #[test]
    fn concurrent_atomic_writes_to_one_path() {
        let dir = std::env::temp_dir().join(format!("hubel-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.bin");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|t| vec![t; 4096 + t as usize]).collect();
        std::thread::scope(|s| {
            for c in &contents {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..25 {
                        super::atomic_write(path, c).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&path).unwrap();
        assert!(contents.contains(&got), "a torn or mixed write");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["d.bin"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
