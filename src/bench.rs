//! `hubel bench`: the runtime's speed on the loaded model, as medians over repeated runs.
//! Figures are printed, never asserted; `tools/bench/compare.py` runs PyTorch + transformers with
//! forward hooks on the same weights in the same script and prints the ratios.

use std::time::Instant;

use serde::Serialize;

use crate::hooks::{BlockSite, Capture, HookPoint, Intervention};
use crate::model::{Generate, Model, Precision, Result};

pub const TEXT: &str =
    "The quick brown fox jumps over the lazy dog while the researchers record every \
neuron of every layer, ablate one of them, and watch the next-token distribution change at once. ";

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    /// The instruction sets the kernels chose on this machine.
    pub f32_isa: String,
    pub fast_isa: String,
    /// Exact path (f32), every position's logits, nothing recorded.
    pub forward_32_ms: f64,
    pub forward_128_ms: f64,
    pub forward_32_record_all_ms: f64,
    /// Recording every hook point over a bare forward, as a fraction (0.08 = 8%).
    pub record_all_overhead: f64,
    /// The viewer's click: a layer-10 ablation changes, new logits come back (incremental).
    pub ablation_round_trip_ms: f64,
    pub ablation_full_rerun_32_ms: f64,
    /// A scan as `hubel scan` runs it ([`crate::scan::run`]: the same windows, batches and
    /// statistics, nothing saved) of the first [`SCAN_STIMULI`] stimuli of `scan_corpus`
    /// (WordNet when the data directory has it, else sentences of the bench text); medians of
    /// up to 3 scans. The whole scan, forward and statistics: what a user waits for.
    pub scan_tokens_per_s: f64,
    /// Its forward passes alone (recording `mlp.hook_post` and `attn.hook_z`, no logits).
    pub scan_forward_tokens_per_s: f64,
    /// Its statistics (every neuron's and head's), wall time per token on the scan's threads.
    pub scan_stats_ms_per_token: f64,
    pub scan_corpus: String,
    pub scan_stimuli: usize,
    pub scan_windows: usize,
    pub scan_tokens: usize,
    /// Peak resident set during the scan (the exact model, the statistics, a batch's
    /// recordings; measured first, before the fast path's weights exist).
    pub scan_peak_rss_mb: f64,
    /// The scan's forward passes: per batch, its windows' token ids (`tools/bench/compare.py`
    /// runs the same batches through PyTorch).
    pub scan_batches: Vec<Vec<Vec<u32>>>,
    /// 20 greedy tokens after an 8-token prompt, KV cache.
    pub generate_20_ms: f64,
    /// The fast path (4-bit weights × 8-bit activations).
    pub fast_forward_32_ms: f64,
    pub fast_forward_128_ms: f64,
    pub generate_20_fast_ms: f64,
    /// The same scan on the fast path (whole scan).
    pub fast_scan_tokens_per_s: f64,
    /// Fidelity of the fast path on the built-in probes and the bench text: the largest
    /// last-position KL(exact ‖ fast), top-1 agreement over every position, largest |Δ logit|.
    pub fast_kl: f64,
    pub fast_top1_agreement: f64,
    pub fast_max_abs_dlogit: f64,
    pub fidelity_probes: usize,
    /// What the fast path's weights hold, MB.
    pub fast_weights_mb: f64,
    /// Peak resident set of this process with both weight sets loaded.
    pub peak_rss_mb: f64,
}

/// Stimuli of the bench's scan.
pub const SCAN_STIMULI: usize = 300;

/// The bench scan's corpus: WordNet from the data directory, else `SCAN_STIMULI` sentences cut
/// from the bench text (5 to 34 words).
pub fn scan_corpus() -> crate::scan::Corpus {
    let dir = crate::assets::corpus_dir(&crate::assets::assets_dir());
    crate::scan::Corpus::wordnet(&dir).unwrap_or_else(|_| {
        let words: Vec<&str> = TEXT.split_whitespace().collect();
        let texts: Vec<String> = (0..SCAN_STIMULI)
            .map(|i| {
                let n = 5 + (i * 7) % 30;
                (0..n)
                    .map(|k| words[(i + k) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        crate::scan::Corpus::from_texts("bench-text", &refs)
    })
}

/// One scan's figures: (whole s, forward s, statistics s, tokens).
fn scan_once(
    model: &Model,
    corpus: &crate::scan::Corpus,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    let opts = crate::scan::ScanOptions {
        limit: Some(SCAN_STIMULI),
        ..Default::default()
    };
    let index = crate::scan::run(model, corpus, &opts, None)?;
    let m = &index.meta;
    Ok((
        m.seconds,
        m.forward_seconds,
        m.stats_seconds,
        m.tokens_done as usize,
    ))
}

/// Resets this process's peak resident set to the current one (Linux; elsewhere nothing).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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

pub fn measure(model: &Model, reps: usize) -> anyhow::Result<BenchReport> {
    let reps = reps.max(1);
    let exact = model.with_precision(Precision::Exact);
    // The scan first, while only the exact weights exist (as in `hubel scan`).
    let corpus = scan_corpus();
    let scan_windows = crate::scan::windows(
        model,
        &corpus,
        SCAN_STIMULI,
        &crate::scan::ScanConfig::default(),
    )?;
    let mut scan_batches = Vec::new();
    let mut i = 0;
    while i < scan_windows.len() {
        let j = crate::scan::batch_end(
            &scan_windows,
            i,
            crate::scan::ScanConfig::default().batch_tokens,
        );
        scan_batches.push(
            scan_windows[i..j]
                .iter()
                .map(|w| w.2.clone())
                .collect::<Vec<_>>(),
        );
        i = j;
    }
    reset_peak_rss();
    let scans = |m: &Model| -> anyhow::Result<(f64, f64, f64, usize)> {
        let mut runs = (0..reps.min(3))
            .map(|_| scan_once(m, &corpus))
            .collect::<anyhow::Result<Vec<_>>>()?;
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(runs[runs.len() / 2])
    };
    let (scan_s, scan_fwd_s, scan_stats_s, scan_tokens) = scans(&exact)?;
    let scan_peak_rss_mb = peak_rss_mb();
    let fast = model.with_precision(Precision::Fast);
    let fast_bytes = fast.prepare_fast();
    let t32 = tokens(model, 32)?;
    let t128 = tokens(model, 128.min(model.config().n_ctx))?;
    let nothing = Capture::Nothing;
    let forward = |m: &Model, t: &[u32]| median_ms(reps, |_| m.run(t, &nothing, &[]).map(drop));
    let forward_32_ms = forward(&exact, &t32)?;
    let forward_128_ms = forward(&exact, &t128)?;
    let fast_forward_32_ms = forward(&fast, &t32)?;
    let fast_forward_128_ms = forward(&fast, &t128)?;
    let forward_32_record_all_ms =
        median_ms(reps, |_| exact.run(&t32, &Capture::All, &[]).map(drop))?;
    // The viewer's click: an ablation in layer 10 changes; new logits come back.
    let layer = 10.min(model.config().n_layers - 1);
    let d_mlp = model.config().d_mlp;
    let cache = exact.prepare(&t32, &nothing, None)?;
    let ablate = |i: usize| {
        vec![Intervention::zero(
            HookPoint::block(layer, BlockSite::MlpPost),
            vec![(123 + i) % d_mlp],
        )]
    };
    let ablation_round_trip_ms = median_ms(reps, |i| {
        exact.rerun(&cache, &nothing, &ablate(i), None).map(drop)
    })?;
    let ablation_full_rerun_32_ms =
        median_ms(reps, |i| exact.run(&t32, &nothing, &ablate(i)).map(drop))?;
    let fast_scan_tokens_per_s = {
        let (s, _, _, n) = scans(&fast)?;
        n as f64 / s
    };
    let gen = Generate {
        max_tokens: 20,
        stop_at_eos: false,
        ..Generate::default()
    };
    let prompt = tokens(model, 8)?;
    let generate = |m: &Model| {
        median_ms(reps.min(5), |_| {
            m.generate(&prompt, &[], &gen, None).map(drop)
        })
    };
    let generate_20_ms = generate(&exact)?;
    let generate_20_fast_ms = generate(&fast)?;
    // Fidelity on every built-in probe and the bench text.
    let mut texts: Vec<Vec<u32>> = vec![t32.clone(), t128.clone()];
    for p in crate::corpus::protocols() {
        for s in p.probes {
            if let Ok(t) = model.tokenize(&s.text) {
                texts.push(t.iter().map(|t| t.id).collect());
            }
        }
    }
    let (mut fast_kl, mut agree, mut positions, mut max_abs) = (0f64, 0f64, 0usize, 0f32);
    for t in &texts {
        let f = model.fidelity(t, &[], None)?;
        fast_kl = fast_kl.max(f.kl_last);
        agree += f.top1_agreement * f.positions as f64;
        positions += f.positions;
        max_abs = max_abs.max(f.max_abs_dlogit);
    }
    Ok(BenchReport {
        model: model.info().name.clone(),
        threads: candle_core::utils::get_num_threads(),
        f32_isa: crate::model::kernels::f32::isa().name().to_string(),
        fast_isa: crate::model::kernels::q4::isa().to_string(),
        forward_32_ms,
        forward_128_ms,
        forward_32_record_all_ms,
        record_all_overhead: forward_32_record_all_ms / forward_32_ms - 1.0,
        ablation_round_trip_ms,
        ablation_full_rerun_32_ms,
        scan_tokens_per_s: scan_tokens as f64 / scan_s,
        scan_forward_tokens_per_s: scan_tokens as f64 / scan_fwd_s,
        scan_stats_ms_per_token: scan_stats_s * 1e3 / scan_tokens.max(1) as f64,
        scan_corpus: corpus.name.clone(),
        scan_stimuli: SCAN_STIMULI.min(corpus.stimuli.len()),
        scan_windows: scan_windows.len(),
        scan_tokens,
        scan_peak_rss_mb,
        scan_batches,
        generate_20_ms,
        fast_forward_32_ms,
        fast_forward_128_ms,
        generate_20_fast_ms,
        fast_scan_tokens_per_s,
        fast_kl,
        fast_top1_agreement: agree / positions.max(1) as f64,
        fast_max_abs_dlogit: max_abs as f64,
        fidelity_probes: texts.len(),
        fast_weights_mb: fast_bytes as f64 / 1e6,
        peak_rss_mb: peak_rss_mb(),
    })
}

pub fn command(model: &Model, reps: usize, json: bool) -> anyhow::Result<()> {
    let r = measure(model, reps)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "model {} on {} threads (f32 kernel: {}, fast kernel: {}), medians of {reps} runs",
            r.model, r.threads, r.f32_isa, r.fast_isa
        );
        let ms = |label: &str, exact: f64, fast: Option<f64>| match fast {
            Some(f) => println!("{label:38} {exact:8.1} ms   fast {f:8.1} ms"),
            None => println!("{label:38} {exact:8.1} ms"),
        };
        ms(
            "full forward, 32 tokens",
            r.forward_32_ms,
            Some(r.fast_forward_32_ms),
        );
        ms(
            "full forward, 128 tokens",
            r.forward_128_ms,
            Some(r.fast_forward_128_ms),
        );
        println!(
            "{:38} {:8.1} ms ({:+.1}%)",
            "forward recording every hook, 32",
            r.forward_32_record_all_ms,
            r.record_all_overhead * 100.0
        );
        ms(
            "ablation round trip (incremental)",
            r.ablation_round_trip_ms,
            None,
        );
        ms(
            "ablation with a full re-run",
            r.ablation_full_rerun_32_ms,
            None,
        );
        ms(
            "20 greedy tokens, KV cache",
            r.generate_20_ms,
            Some(r.generate_20_fast_ms),
        );
        println!(
            "{:38} {:8.0} tok/s fast {:8.0} tok/s",
            format!("scan, {} stimuli of {}", r.scan_stimuli, r.scan_corpus),
            r.scan_tokens_per_s,
            r.fast_scan_tokens_per_s
        );
        println!(
            "{:38} {:8.0} tok/s, statistics {:.3} ms/token; {} windows, {} tokens, {} batches",
            "  its forward part",
            r.scan_forward_tokens_per_s,
            r.scan_stats_ms_per_token,
            r.scan_windows,
            r.scan_tokens,
            r.scan_batches.len()
        );
        println!(
            "{:38} {:8.1} MB",
            "  peak RSS during the scan", r.scan_peak_rss_mb
        );
        println!(
            "fast path fidelity on {} probes: max KL {:.4} nats, top-1 agreement {:.3}, max |Δlogit| {:.3}; its weights {:.0} MB",
            r.fidelity_probes, r.fast_kl, r.fast_top1_agreement, r.fast_max_abs_dlogit, r.fast_weights_mb
        );
        println!("{:38} {:8.1} MB", "peak RSS", r.peak_rss_mb);
    }
    Ok(())
}
