//! Where a scan's time goes, on the default model and WordNet: `cargo run --release --example
//! scan_profile [-- STIMULI [BATCHES]]` (default 500 stimuli, the first 4 batches of them).
//!
//! The batches `hubel scan` would run (same windows, same batching), each forward timed with and
//! without recording; then the statistics of those batches (`ScanIndex::add_batch`, what a scan
//! adds after each forward) timed alone on 2 threads and on 1, and the plain position-by-position
//! reference (`LayerStats::add_window`) on 2 threads for comparison. Figures, not tests.
use std::time::Instant;

use hubel::hooks::{BlockSite, Capture, HookPoint};
use hubel::model::{Logits, Model, RunOutput};
use hubel::scan::{self, Corpus, ScanConfig, ScanIndex};

/// This process's CPU time (user + system, all threads) in seconds, from /proc (Linux; 0
/// elsewhere): work done, whatever else the machine runs.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let stimuli = args.first().copied().unwrap_or(500);
    let nbatches = args.get(1).copied().unwrap_or(4);
    let assets = hubel::assets::assets_dir();
    let model = Model::open(hubel::assets::default_model_path(&assets))?;
    let corpus = Corpus::wordnet(&hubel::assets::corpus_dir(&assets))?;
    let cfg = ScanConfig::default();
    let windows = scan::windows(&model, &corpus, stimuli, &cfg)?;
    let mut batches = Vec::new();
    let mut i = 0;
    while i < windows.len() {
        let j = scan::batch_end(&windows, i, cfg.batch_tokens);
        batches.push(&windows[i..j]);
        i = j;
    }
    let all_tokens: usize = windows.iter().map(|w| w.2.len()).sum();
    println!(
        "{stimuli} stimuli: {} windows, {all_tokens} tokens, {} batches of ≤ {} tokens",
        windows.len(),
        batches.len(),
        cfg.batch_tokens
    );
    batches.truncate(nbatches);
    let tokens: usize = batches
        .iter()
        .flat_map(|b| b.iter())
        .map(|w| w.2.len())
        .sum();
    let capture = Capture::sites([BlockSite::MlpPost, BlockSite::Z]);
    let (mut bare, mut rec) = (0.0, 0.0);
    let mut outs: Vec<Vec<RunOutput>> = Vec::new();
    for b in &batches {
        let seqs: Vec<&[u32]> = b.iter().map(|w| w.2.as_slice()).collect();
        let s = Instant::now();
        model.run_batch(&seqs, &Capture::Nothing, &[], Logits::None, None)?;
        bare += s.elapsed().as_secs_f64();
        let s = Instant::now();
        outs.push(model.run_batch(&seqs, &capture, &[], Logits::None, None)?);
        rec += s.elapsed().as_secs_f64();
    }
    println!(
        "forward of {} batches, {tokens} tokens: {:.0} ms bare, {:.0} ms recording mlp.hook_post + attn.hook_z ({:.0} tok/s)",
        batches.len(),
        bare * 1e3,
        rec * 1e3,
        tokens as f64 / rec
    );
    let per_token = |s: f64| s * 1e3 / tokens as f64;
    for threads in [2, 1] {
        let runs: Vec<(f64, f64)> = (0..3)
            .map(|_| {
                let mut index = ScanIndex::new(&model, &corpus, &cfg, stimuli);
                let (s, c) = (Instant::now(), cpu_seconds());
                for (b, o) in batches.iter().zip(&outs) {
                    index.add_batch(b, o, &corpus, threads);
                }
                (s.elapsed().as_secs_f64(), cpu_seconds() - c)
            })
            .collect();
        let t = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        println!(
            "statistics (add_batch), {threads} thread(s): {:.0} ms = {:.3} ms per token; CPU {:.3} ms per token",
            t * 1e3,
            per_token(t),
            per_token(cpu)
        );
    }
    // Per batch (2 threads): the first ones re-bin most units, later ones few.
    let mut index = ScanIndex::new(&model, &corpus, &cfg, stimuli);
    let per_batch: Vec<String> = batches
        .iter()
        .zip(&outs)
        .map(|(b, o)| {
            let c = cpu_seconds();
            index.add_batch(b, o, &corpus, 2);
            let n: usize = b.iter().map(|w| w.2.len()).sum();
            format!("{:.3}", (cpu_seconds() - c) * 1e3 / n as f64)
        })
        .collect();
    println!("CPU ms per token, batch by batch: {}", per_batch.join(" "));
    // The reference: every window position by position over all units, layers on 2 threads.
    let mut index = ScanIndex::new(&model, &corpus, &cfg, stimuli);
    let (layers, heads) = (index.meta.layers, index.meta.heads);
    let first = usize::from(cfg.exclude_first);
    let per = layers.div_ceil(2);
    let (s, c) = (Instant::now(), cpu_seconds());
    let mut w0 = 0u32;
    for (b, o) in batches.iter().zip(&outs) {
        std::thread::scope(|scope| {
            for (c, (nchunk, hchunk)) in index
                .neurons
                .chunks_mut(per)
                .zip(index.heads.chunks_mut(per))
                .enumerate()
            {
                scope.spawn(move || {
                    let mut norms = Vec::new();
                    for (i, (ns, hs)) in nchunk.iter_mut().zip(hchunk.iter_mut()).enumerate() {
                        let l = c * per + i;
                        for (k, ((_, _, t), out)) in b.iter().zip(o).enumerate() {
                            let w = w0 + k as u32;
                            let a = out.record.get(HookPoint::block(l, BlockSite::MlpPost));
                            ns.add_window(w, t, &a.unwrap().data, first, cfg.threshold);
                            let z = out.record.get(HookPoint::block(l, BlockSite::Z));
                            scan::head_norms(&z.unwrap().data, t.len(), heads, &mut norms);
                            hs.add_window(w, t, &norms, first, cfg.threshold);
                        }
                    }
                });
            }
        });
        w0 += b.len() as u32;
    }
    let (t, cpu) = (s.elapsed().as_secs_f64(), cpu_seconds() - c);
    println!(
        "statistics, reference (add_window per window, position by position), 2 threads: {:.0} ms = {:.3} ms per token; CPU {:.3} ms per token",
        t * 1e3,
        per_token(t),
        per_token(cpu)
    );
    Ok(())
}
