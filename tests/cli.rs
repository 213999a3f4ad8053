//! `hubel probe` end to end, as a user runs it: JSON shape, both runs, saved logits, and bad
//! input as a message with a non-zero exit code, never a panic.

mod common;

use std::process::{Command, Output};

fn hubel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hubel"))
        .args(args)
        .output()
        .expect("hubel runs")
}

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
}

#[test]
fn probe_table_on_an_hf_gpt2_folder() {
    let out = hubel(&[
        "probe",
        "--text",
        "hello world",
        "--model",
        &tiny_gpt2(),
        "--steer",
        "blocks.1.hook_resid_post[3]+=8",
        "--top",
        "3",
    ]);
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
        &[
            "probe", "--text", "hi", "--model", &m, "--ablate", "L1N3@40",
        ],
        "position 40 is out of range",
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
    let out = hubel(&[
        "probe",
        "--text",
        "苹果是一种水果 🍎",
        "--model",
        &tiny_gpt2(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["tokens"].as_array().unwrap().len() > 4);
}
