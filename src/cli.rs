//! What the headless commands share: flags taken out of the argument list one by one, and the
//! model a command runs on (`--model PATH`, else the fetched default). anyhow lives here, at the
//! edge; the library's modules return their own errors.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::model::Model;

/// Takes `--name VALUE` or `--name=VALUE` out of `args` (the last one given wins).
pub fn value(args: &mut Vec<String>, name: &str) -> anyhow::Result<Option<String>> {
    let mut out = None;
    let mut i = 0;
    while i < args.len() {
        if args[i] == name {
            if i + 1 >= args.len() {
                bail!("{name} needs a value");
            }
            out = Some(args.remove(i + 1));
            args.remove(i);
        } else if let Some(v) = args[i].strip_prefix(&format!("{name}=")) {
            out = Some(v.to_string());
            args.remove(i);
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// `--name N` as a non-negative integer.
pub fn number(args: &mut Vec<String>, name: &str) -> anyhow::Result<Option<usize>> {
    value(args, name)?
        .map(|v| {
            v.parse()
                .with_context(|| format!("{name} expects a non-negative integer, got `{v}`"))
        })
        .transpose()
}

/// Takes every `--name` out of `args`: whether there was one.
pub fn flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

/// The model at `path`, else the fetched default model (a clear error when it is not fetched).
pub fn open_model(path: Option<String>) -> anyhow::Result<Model> {
    let path = match path {
        Some(p) => PathBuf::from(p),
        None => {
            let p = crate::assets::default_model_path(&crate::assets::assets_dir());
            if !p.is_file() {
                bail!("the default model is not fetched yet ({}): run `hubel fetch --model`, or pass --model PATH", p.display());
            }
            p
        }
    };
    Model::open(&path).with_context(|| format!("opening the model {}", path.display()))
}
