//! Where an in-app click's time goes in the worker (exact and fast): `cargo run --release
//! --example click_profile`. Figures, not tests.
use std::time::Instant;

use hubel::hooks::{BlockSite, Capture, HookPoint, Intervention};
use hubel::model::{Model, Precision};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let model = Model::open(hubel::assets::default_model_path(
        &hubel::assets::assets_dir(),
    ))?;
    let ids = hubel::bench::tokens(&model, 32)?;
    let capture = Capture::sites([
        BlockSite::MlpPost,
        BlockSite::Z,
        BlockSite::AttnOut,
        BlockSite::ResidPost,
        BlockSite::Pattern,
    ]);
    for p in [Precision::Exact, Precision::Fast] {
        let m = model.with_precision(p);
        m.prepare_fast();
        let cache = m.prepare(&ids, &capture, None)?;
        let mut rows = vec![];
        let gap: u64 = std::env::var("GAP_MS")
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        for i in 0..12 {
            std::thread::sleep(std::time::Duration::from_millis(gap));
            let iv = [Intervention::zero(
                HookPoint::block(10, BlockSite::MlpPost),
                vec![200 + i],
            )];
            let t = Instant::now();
            let (out, finals) = m.rerun_last(&cache, &capture, &iv, None)?;
            let a = ms(t);
            let t = Instant::now();
            let _ = m.rerun_last(&cache, &Capture::Nothing, &iv, None)?;
            let b = ms(t);
            let t = Instant::now();
            let kl = hubel::analysis::kl_divergence(cache.baseline.last_logits(), &out.logits);
            let top = hubel::analysis::top_k(&out.logits, 10);
            let c = ms(t);
            let t = Instant::now();
            let all = m.finish_logits(&finals)?;
            let d = ms(t);
            let t = Instant::now();
            let nll = hubel::analysis::token_nll(&all, out.vocab, &ids);
            let e = ms(t);
            std::hint::black_box((kl, top, nll));
            rows.push([a, b, c, d, e]);
        }
        rows.sort_by(|x, y| x[0].total_cmp(&y[0]));
        let r = rows[rows.len() / 2];
        println!("{p:?}: rerun_last with the app's capture {:.1} ms, without capture {:.1} ms, KL+top10 {:.1} ms | then all logits {:.1} ms, token NLL {:.1} ms", r[0], r[1], r[2], r[3], r[4]);
    }
    Ok(())
}
