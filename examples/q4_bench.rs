//! Times the fast path's 4-bit matmul (`model::kernels::q4`) on SmolLM2-135M's shapes, per
//! instruction set available here, against an f32 baseline of the same shape through the `gemm`
//! crate (called as the exact path called it). Weights are cycled through enough copies
//! (≥ 96 MiB) that every call reads them from memory, as a forward pass does.
//!
//! `cargo run --release --example q4_bench` (threads: candle's pool, `CANDLE_NUM_THREADS`;
//! gemm gets the same count; `Q4_BENCH_SECS`: time per measurement, default 0.3). Prints GMAC/s per shape, rows 1 / 32 / 128, and what that makes of
//! a 32-token forward and of a generated token (linear layers only).

use std::time::{Duration, Instant};

use hubel::model::kernels::q4::{Isa, PackedQ4};

/// (k, out, count per token): SmolLM2-135M's linear layers (30 blocks) and the unembedding.
const SHAPES: [(usize, usize, usize, &str); 5] = [
    (576, 1536, 60, "gate/up"),
    (576, 576, 60, "q/o"),
    (576, 192, 60, "k/v"),
    (1536, 576, 30, "down"),
    (576, 49152, 1, "unembed"),
];
const ROWS: [usize; 3] = [1, 32, 128];
const COLD_BYTES: usize = 96 << 20;

fn rand_vec(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Seconds per call of `f(i)` (i cycles over copies), over at least `Q4_BENCH_SECS` (0.3 s):
/// the fastest call, since on a shared machine the slower ones measure other processes.
fn time(mut f: impl FnMut(usize)) -> f64 {
    let budget = std::env::var("Q4_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.3);
    f(0);
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut i = 1;
    while start.elapsed() < Duration::from_secs_f64(budget) || samples.len() < 5 {
        let t = Instant::now();
        f(i);
        samples.push(t.elapsed().as_secs_f64());
        i += 1;
    }
    samples.into_iter().fold(f64::INFINITY, f64::min)
}

fn gemm_f32(w: &[f32], out: usize, k: usize, x: &[f32], rows: usize, y: &mut [f32]) {
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: w is [out, k], x [rows, k], y [rows, out], all row-major and of those sizes;
    // gemm computes yᵀ [out, rows] = W [out, k] · xᵀ [k, rows] (column strides first).
    unsafe {
        gemm::gemm(
            out,
            rows,
            k,
            y.as_mut_ptr(),
            out as isize,
            1,
            false,
            w.as_ptr(),
            1,
            k as isize,
            x.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn main() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    println!(
        "q4 matmul, {} thread(s); default ISA {}; GMAC/s (weights cold, from memory)",
        threads,
        hubel::model::kernels::q4::isa()
    );
    let mut head = format!("{:<8} {:>11} {:>5}", "layer", "k→out", "rows");
    for isa in &isas {
        head += &format!(" {:>12}", isa.name());
    }
    head += &format!(" {:>12} {:>8}", "f32 gemm", "speed-up");
    println!("{head}");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    // Seconds per token-batch of `rows`, per ISA (and gemm last), summed over the model.
    let mut model = vec![vec![0f64; isas.len() + 1]; ROWS.len()];
    let mut quantize_s = 0.0;
    for &(k, out, count, name) in &SHAPES {
        let w = rand_vec(out * k, &mut seed, 0.05);
        let t = Instant::now();
        let p = PackedQ4::quantize(&w, out, k).expect("k is a multiple of 32");
        let t = t.elapsed().as_secs_f64();
        quantize_s += t * count as f64;
        let copies = COLD_BYTES.div_ceil(p.bytes()).max(2);
        let packed: Vec<PackedQ4> = (0..copies).map(|_| p.clone()).collect();
        let f32_copies = COLD_BYTES.div_ceil(out * k * 4).max(2);
        let wf: Vec<Vec<f32>> = (0..f32_copies).map(|_| w.clone()).collect();
        for (ri, &rows) in ROWS.iter().enumerate() {
            let x = rand_vec(rows * k, &mut seed, 1.0);
            let mut y = vec![0f32; rows * out];
            let macs = (rows * out * k) as f64;
            let mut line = format!("{:<8} {:>11} {:>5}", name, format!("{k}→{out}"), rows);
            let mut best = f64::INFINITY;
            for (ii, &isa) in isas.iter().enumerate() {
                let t = time(|i| packed[i % copies].matmul_with(isa, &x, rows, &mut y));
                best = best.min(t);
                model[ri][ii] += t * count as f64;
                line += &format!(" {:>12.1}", macs / t / 1e9);
            }
            let t = time(|i| gemm_f32(&wf[i % f32_copies], out, k, &x, rows, &mut y));
            model[ri][isas.len()] += t * count as f64;
            line += &format!(" {:>12.1} {:>7.1}×", macs / t / 1e9, t / best);
            println!("{line}");
        }
    }
    println!(
        "\nquantize (packing at load), all linear layers of the model: {:.0} ms",
        quantize_s * 1e3
    );
    println!("\nlinear layers of the whole model (30 blocks + unembedding), ms:");
    let mut head = format!("{:>5}", "rows");
    for isa in &isas {
        head += &format!(" {:>12}", isa.name());
    }
    println!("{head} {:>12}", "f32 gemm");
    for (ri, &rows) in ROWS.iter().enumerate() {
        let mut line = format!("{rows:>5}");
        for t in &model[ri] {
            line += &format!(" {:>12.2}", t * 1e3);
        }
        println!("{line}");
    }
}
