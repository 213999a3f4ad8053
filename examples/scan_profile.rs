//! A scan's batched forward, timed with and without recording: `cargo run --release --example
//! scan_profile`. Figures, not tests.
use std::time::Instant;

use hubel::hooks::{BlockSite, Capture};
use hubel::model::{Logits, Model};

fn main() -> anyhow::Result<()> {
    let model = Model::open(hubel::assets::default_model_path(
        &hubel::assets::assets_dir(),
    ))?;
    let probes: Vec<Vec<u32>> = (0..16)
        .map(|i| hubel::bench::tokens(&model, 32 + i).map(|mut t| t.split_off(i)))
        .collect::<Result<_, _>>()?;
    let seqs: Vec<&[u32]> = probes.iter().map(|p| p.as_slice()).collect();
    let n: usize = seqs.iter().map(|s| s.len()).sum();
    let one: Vec<u32> = probes.concat();
    for (name, capture) in [
        ("nothing", Capture::Nothing),
        ("mlp.hook_post", Capture::sites([BlockSite::MlpPost])),
    ] {
        let mut t = vec![];
        for _ in 0..5 {
            let s = Instant::now();
            model.run_batch(&seqs, &capture, &[], Logits::None, None)?;
            t.push(s.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        println!(
            "16 probes, {n} tokens, recording {name}: {:.0} ms = {:.0} tok/s",
            t[2] * 1e3,
            n as f64 / t[2]
        );
    }
    // The same tokens as one sequence (attention over all of them): the matmuls alone.
    let s = Instant::now();
    model.run_batch(&[&one], &Capture::Nothing, &[], Logits::None, None)?;
    println!(
        "one sequence of {n} tokens: {:.0} ms",
        s.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
