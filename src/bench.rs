//! `hubel bench`: the runtime's speed on the loaded model, as medians over repeated runs.
//! Figures are printed, never asserted; `tools/bench/compare.py` runs PyTorch + transformers with
//! forward hooks on the same weights in the same script and prints the ratios.

use std::time::Instant;

use serde::Serialize;

use crate::hooks::{Capture, Intervention};
use crate::model::{Generate, Model, Result};

pub const TEXT: &str =
    "The quick brown fox jumps over the lazy dog while the researchers record every \
neuron of every layer, ablate one of them, and watch the next-token distribution change at once. ";

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub forward_32_ms: f64,
    pub forward_128_ms: f64,
    pub forward_32_record_all_ms: f64,
    pub record_all_overhead_pct: f64,
    pub ablation_round_trip_32_ms: f64,
    pub ablation_full_rerun_32_ms: f64,
    pub generate_20_greedy_ms: f64,
    pub peak_rss_mb: f64,
}

/// Exactly `n` tokens of English text.
pub fn tokens(model: &Model, n: usize) -> Result<Vec<u32>> {
    let mut text = TEXT.repeat(1 + n / 20);
    let mut ids = model.tokenizer().encode_ids(&text)?;
    while ids.len() < n {
        text.push_str(TEXT);
        ids = model.tokenizer().encode_ids(&text)?;
    }
    ids.truncate(n);
    Ok(ids)
}

fn median_ms(reps: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    f(0)?; // warm-up
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps {
        let t = Instant::now();
        f(i + 1)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Peak resident set size of this process, in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn measure(model: &Model, reps: usize) -> Result<BenchReport> {
    let reps = reps.max(1);
    let t32 = tokens(model, 32)?;
    let t128 = tokens(model, 128.min(model.config().n_ctx))?;
    let nothing = Capture::Nothing;
    let forward_32_ms = median_ms(reps, |_| model.run(&t32, &nothing, &[]).map(drop))?;
    let forward_128_ms = median_ms(reps, |_| model.run(&t128, &nothing, &[]).map(drop))?;
    let forward_32_record_all_ms =
        median_ms(reps, |_| model.run(&t32, &Capture::All, &[]).map(drop))?;
    // The viewer's click: an ablation in a middle layer changes; new logits come back.
    let layer = model.config().n_layers / 3;
    let d_mlp = model.config().d_mlp;
    let cache = model.prepare(&t32, &nothing, None)?;
    let ablate = |i: usize| {
        vec![Intervention::zero(
            crate::hooks::HookPoint::block(layer, crate::hooks::BlockSite::MlpPost),
            vec![(123 + i) % d_mlp],
        )]
    };
    let ablation_round_trip_32_ms = median_ms(reps, |i| {
        model.rerun(&cache, &nothing, &ablate(i), None).map(drop)
    })?;
    let ablation_full_rerun_32_ms =
        median_ms(reps, |i| model.run(&t32, &nothing, &ablate(i)).map(drop))?;
    let gen = Generate {
        max_tokens: 20,
        stop_at_eos: false,
        ..Generate::default()
    };
    let prompt = tokens(model, 8)?;
    let generate_20_greedy_ms = median_ms(reps.min(5), |_| {
        model.generate(&prompt, &[], &gen, None).map(drop)
    })?;
    Ok(BenchReport {
        model: model.info().name.clone(),
        threads: candle_core::utils::get_num_threads(),
        forward_32_ms,
        forward_128_ms,
        forward_32_record_all_ms,
        record_all_overhead_pct: (forward_32_record_all_ms / forward_32_ms - 1.0) * 100.0,
        ablation_round_trip_32_ms,
        ablation_full_rerun_32_ms,
        generate_20_greedy_ms,
        peak_rss_mb: peak_rss_mb(),
    })
}

pub fn command(model: &Model, reps: usize, json: bool) -> anyhow::Result<()> {
    let r = measure(model, reps)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "model {} on {} threads, medians of {reps} runs",
            r.model, r.threads
        );
        println!(
            "full forward, 32 tokens              {:8.1} ms",
            r.forward_32_ms
        );
        println!(
            "full forward, 128 tokens             {:8.1} ms",
            r.forward_128_ms
        );
        println!(
            "forward recording every hook, 32     {:8.1} ms ({:+.1}%)",
            r.forward_32_record_all_ms, r.record_all_overhead_pct
        );
        println!(
            "ablation round trip (incremental)    {:8.1} ms",
            r.ablation_round_trip_32_ms
        );
        println!(
            "ablation with a full re-run          {:8.1} ms",
            r.ablation_full_rerun_32_ms
        );
        println!(
            "20 greedy tokens, KV cache           {:8.1} ms",
            r.generate_20_greedy_ms
        );
        println!(
            "peak RSS                             {:8.1} MB",
            r.peak_rss_mb
        );
    }
    Ok(())
}
