//! `hubel`: with no arguments opens the viewer; `hubel probe|fetch|bench …` run headless.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use hubel::assets::{self, Clients};
use hubel::cli::open_model;
use hubel::jobs::{self, progress::run_reporting, JobError};
use hubel::probe::{self, ProbeRequest};

const USAGE: &str = "\
hubel: a probe viewer for language models

USAGE:
  hubel                                 open the viewer
  hubel paths [--json]                  where the data directory, model, corpus and settings are
  hubel --help | --version              this text, or the version (also `hubel COMMAND --help`)
  hubel --screenshots DIR [--model PATH] [--size WxH]  walk through the viewer (default 1280x720)
                                        and save screenshots into DIR
  hubel --bench-ui [--model PATH]         measure the viewer (click to output, frame times, idle CPU)
  hubel fetch [--model] [--corpus]      fetch the default model (SmolLM2-135M) and corpus (WordNet 3.1)
  hubel probe --text TEXT [--model PATH] [--ablate SPEC]... [--steer SPEC]...
              [--top K] [--generate N] [--fast] [--json] [--save-logits FILE.npy]
  hubel bench [--model PATH] [--json] [--reps N]
  hubel effect --feature L10N222 [--model PATH] [--text TEXT [--pos P]] [--top K] [--json]
  hubel scan [--model PATH] [--corpus wordnet|FILE|DIR] [--limit N] [--out FILE] [--k K]
  hubel top FEATURE [--index FILE] [--k K] [--lowest] [--json]
  hubel label FEATURE [--index FILE] [--model PATH] [--recompute] [--json]
  hubel search QUERY [--index FILE] [--n 20] [--basis neurons|heads] [--json]
  hubel experiment list | run NAME|FILE [--model PATH] [--json] [--out DIR] [--shuffles N] [--folds K]
  hubel lesion --units L1N971,L9N448 --ablation zero|mean|resample --sets NAME|FILE [--json]
  hubel dict train --method fista|topk|itda --layers 6[,8] --atoms N [--k K] [--tokens N] --out D
  hubel dict eval D [--tokens N] [--json] | info D | export D --saelens DIR | import DIR --out D
  hubel decompose --word WORD --dict D [--context TEXT] [--layer L] [--json]
  hubel lens --text TEXT [--target TOKEN] [--ablate SPEC]... [--top K] [--json]
  hubel dla --text TEXT --target TOKEN [--versus TOKEN] [--position P] [--neurons N] [--json]
  hubel patch --clean TEXT --corrupt TEXT --target TOKEN [--versus TOKEN] [--site resid|attn|mlp] [--json]

SPEC: HOOK[INDICES][@POSITIONS][=zero|=mean|=VALUE|+=VALUE|*=FACTOR], e.g.
  blocks.10.mlp.hook_post[123]   L10N123=mean   L5H3@4   blocks.6.hook_resid_post[17]+=8

--model takes a .gguf file or an HF folder (config.json, *.safetensors, tokenizer.json);
the default is the fetched SmolLM2 under the data directory's models/.
--data-dir DIR (before or after any command) puts downloads and settings in DIR. Without it:
$HUBEL_ASSETS, else a source checkout's assets/ that already holds the default model, else the
platform's data directory (~/.local/share/hubel on Linux); `hubel paths` says which.
--fast computes on the opt-in fast path (4-bit weights × 8-bit activations, about twice as
fast; `hubel bench` prints its fidelity); numbers to compare with a reference need the default,
exact f32 path.";

/// Keeps freed memory in the process for the next allocation. A forward pass allocates and frees
/// tensors of tens of megabytes per block; glibc's defaults give the large ones back to the
/// system (`munmap`, heap trimming) and the next pass takes page faults to get them again: 13% of
/// a 4,050-token probe's time was the kernel zeroing pages. With these thresholds (and the
/// per-token loss unembedding 128 positions at a time, under 32 MB) that probe took 11.8 s
/// instead of 14.2 s (same peak RSS within 1%). Allocations over 32 MB (glibc's upper limit for
/// the threshold) still come from `mmap`; the viewer gives freed pages back when a probe's
/// memory goes (`hubel::release_freed_memory`).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // The one place the thread count is decided: candle's pool (which runs our kernels and
    // candle's element-wise ops) reads it once; without the variable candle would also read /proc
    // and cgroup files on every call that asks.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `1280x720` → `[1280.0, 720.0]`, within what a window can be.
fn parse_size(s: &str) -> anyhow::Result<[f32; 2]> {
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if (640..=7680).contains(&w) && (480..=4320).contains(&h) => {
            Ok([w as f32, h as f32])
        }
        _ => bail!(
            "--size takes WIDTHxHEIGHT between 640x480 and 7680x4320, e.g. 1280x720 (got `{s}`)"
        ),
    }
}

/// Command-line words, consumed flag by flag.
struct Args(Vec<String>);

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|a| a != name);
        self.0.len() != before
    }

    fn values(&mut self, name: &str) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i] == name {
                if i + 1 >= self.0.len() {
                    bail!("{name} needs a value\n\n{USAGE}");
                }
                out.push(self.0.remove(i + 1));
                self.0.remove(i);
            } else if let Some(v) = self.0[i].strip_prefix(&format!("{name}=")) {
                out.push(v.to_string());
                self.0.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(out)
    }

    fn value(&mut self, name: &str) -> anyhow::Result<Option<String>> {
        let mut v = self.values(name)?;
        if v.len() > 1 {
            bail!("{name} was given {} times", v.len());
        }
        Ok(v.pop())
    }

    fn number(&mut self, name: &str, default: usize) -> anyhow::Result<usize> {
        match self.value(name)? {
            Some(v) => v
                .parse()
                .with_context(|| format!("{name} expects a non-negative integer, got `{v}`")),
            None => Ok(default),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        if let Some(extra) = self.0.first() {
            bail!("unexpected argument `{extra}`\n\n{USAGE}");
        }
        Ok(())
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let mut args = Args(std::env::args().skip(1).collect());
    // `--data-dir DIR` applies to every command, so it is taken out first.
    if let Some(dir) = args.value("--data-dir")? {
        assets::set_data_dir_flag(PathBuf::from(dir));
    }
    if args.0.is_empty() {
        hubel::app::run_native()?;
        return Ok(ExitCode::SUCCESS);
    }
    let command = args.0.remove(0);
    if matches!(command.as_str(), "--version" | "-V") || args.flag("--version") || args.flag("-V") {
        println!("hubel {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    if matches!(command.as_str(), "--help" | "-h" | "help")
        || args.flag("--help")
        || args.flag("-h")
    {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    match command.as_str() {
        "--screenshots" | "--bench-ui" => {
            let dir = if command == "--screenshots" {
                let dir = args
                    .0
                    .first()
                    .cloned()
                    .context("--screenshots needs a folder")?;
                args.0.remove(0);
                PathBuf::from(dir)
            } else {
                PathBuf::new()
            };
            let model = match args.value("--model")? {
                Some(p) => PathBuf::from(p),
                None => assets::default_model_path(&assets::assets_dir()),
            };
            let size = match args.value("--size")? {
                Some(s) => parse_size(&s)?,
                None => [1280.0, 720.0],
            };
            args.finish()?;
            let mode = if command == "--bench-ui" {
                hubel::app::tour::Mode::BenchUi
            } else {
                hubel::app::tour::Mode::Screenshots
            };
            hubel::app::tour::run(mode, model, dir, size)?;
            Ok(ExitCode::SUCCESS)
        }
        "fetch" => fetch(args),
        "paths" => paths_command(args),
        "probe" => probe_command(args),
        "effect" => effect_command(args),
        "scan" | "top" | "label" | "search" => {
            hubel::scan::cli::command(&command, std::mem::take(&mut args.0))
                .map(|_| ExitCode::SUCCESS)
        }
        "dict" | "decompose" => {
            hubel::features::dictionary::cli::command(&command, std::mem::take(&mut args.0))
                .map(|_| ExitCode::SUCCESS)
        }
        "experiment" | "lesion" => {
            hubel::experiments::cli::command(&command, std::mem::take(&mut args.0))
                .map(|_| ExitCode::SUCCESS)
        }
        "lens" | "dla" | "patch" => {
            hubel::circuits::cli::command(&command, std::mem::take(&mut args.0))
                .map(|_| ExitCode::SUCCESS)
        }
        "bench" => hubel::bench::command(
            &open_model(args.value("--model")?)?,
            args.number("--reps", 20)?,
            args.flag("--json"),
        )
        .map(|_| ExitCode::SUCCESS),
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn fetch(mut args: Args) -> anyhow::Result<ExitCode> {
    let (model, corpus) = (args.flag("--model"), args.flag("--corpus"));
    args.finish()?;
    let (model, corpus) = if !model && !corpus {
        (true, true)
    } else {
        (model, corpus)
    };
    let dir = assets::assets_dir();
    let clients = Clients::default();
    // Progress on stderr: a bar on a terminal, a line every few seconds in a log.
    let job_error = |e: JobError| anyhow::Error::msg(e.to_string());
    if model {
        let (d, c) = (dir.clone(), clients.clone());
        let path = run_reporting("Fetch the default model", move |ctx| {
            jobs::fetch::fetch_model(ctx, &d, &c)
        })
        .map_err(job_error)
        .context("fetching the default model")?;
        println!(
            "model  {} (sha256 {} verified)",
            path.display(),
            assets::MODEL_SHA256
        );
    }
    if corpus {
        let path = run_reporting("Fetch the WordNet corpus", move |ctx| {
            jobs::fetch::fetch_corpus(ctx, &dir, &clients)
        })
        .map_err(job_error)
        .context("fetching the WordNet corpus")?;
        println!("corpus {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn paths_command(mut args: Args) -> anyhow::Result<ExitCode> {
    let json = args.flag("--json");
    args.finish()?;
    let paths = assets::Paths::current();
    if json {
        println!("{}", serde_json::to_string_pretty(&paths)?);
        return Ok(ExitCode::SUCCESS);
    }
    let why = match paths.source {
        assets::DataSource::Flag => "--data-dir",
        assets::DataSource::Env => "$HUBEL_ASSETS",
        assets::DataSource::Checkout => "the source checkout's, which holds the default model",
        assets::DataSource::Platform => "the platform's data directory",
        assets::DataSource::Temporary => "no home directory: a temporary folder",
    };
    let show = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("(none)".into(), |p| p.display().to_string())
    };
    println!("data dir  {} ({why})", paths.data_dir.display());
    println!(
        "model     {} ({})",
        paths.model.display(),
        if paths.model_present {
            "present"
        } else {
            "not fetched: `hubel fetch`"
        }
    );
    println!("corpus    {}", paths.corpus.display());
    println!("settings  {}", show(&paths.settings));
    println!("platform  {}", show(&paths.platform_dir));
    Ok(ExitCode::SUCCESS)
}

fn probe_command(mut args: Args) -> anyhow::Result<ExitCode> {
    let text = args.value("--text")?.context("probe needs --text TEXT")?;
    let (ablate, steer) = (args.values("--ablate")?, args.values("--steer")?);
    let (top, generate) = (args.number("--top", 10)?, args.number("--generate", 0)?);
    let json = args.flag("--json");
    let fast = args.flag("--fast");
    let save = args.value("--save-logits")?;
    let model_path = args.value("--model")?;
    args.finish()?;
    let model = open_model(model_path)?;
    let model = if fast {
        model.with_precision(hubel::model::Precision::Fast)
    } else {
        model
    };
    // Specs are read against the model, so a position or index beyond it is an error that
    // names the model's limit before any list is expanded.
    let units = |hook| model.hook_units(hook).map_err(|e| e.to_string());
    let bounds = hubel::hooks::spec::Bounds {
        n_ctx: Some(model.config().n_ctx),
        units: Some(&units),
    };
    let mut interventions = Vec::new();
    for spec in ablate {
        interventions.push(hubel::hooks::spec::parse_bounded(&spec, &bounds)?);
    }
    for spec in steer {
        let iv = hubel::hooks::spec::parse_bounded(&spec, &bounds)?;
        if iv.op == hubel::hooks::Op::Zero {
            bail!("--steer `{spec}` needs a value, e.g. `{spec}+=8` (use --ablate to zero)");
        }
        interventions.push(iv);
    }
    let req = ProbeRequest {
        text,
        interventions,
        top,
        generate,
    };
    let report = probe::run(&model, &req)?;
    if let Some(path) = save {
        let path = PathBuf::from(path);
        hubel::npy::write_f32(&path, &[report.last_logits.len()], &report.last_logits)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", probe::render_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn effect_command(mut args: Args) -> anyhow::Result<ExitCode> {
    let feature = args
        .value("--feature")?
        .context("effect needs --feature, e.g. L10N222")?;
    let feature = hubel::effect::parse_feature(&feature).map_err(anyhow::Error::msg)?;
    let text = args.value("--text")?;
    let pos = match args.value("--pos")? {
        Some(p) => Some(
            p.parse::<usize>()
                .with_context(|| format!("--pos expects a token position (0, 1, …), got `{p}`"))?,
        ),
        None => None,
    };
    if pos.is_some() && text.is_none() {
        bail!("--pos needs a probe: give --text TEXT too");
    }
    let req = hubel::effect::EffectRequest {
        feature,
        probe: text.map(|text| hubel::effect::ProbeAt { text, pos }),
        top: args.number("--top", 10)?,
    };
    let json = args.flag("--json");
    let model_path = args.value("--model")?;
    args.finish()?;
    let report = hubel::effect::run(&open_model(model_path)?, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", hubel::effect::render_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}
