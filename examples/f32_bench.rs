//! GFLOP/s of the exact path's packed f32 kernel on SmolLM2's shapes (every instruction set
//! this machine has), next to the `gemm` crate
//! called as the runtime called it before (weights repacked on every call). Figures, not tests:
//! `cargo run --release --example f32_bench`.
use std::time::Instant;

use hubel::model::kernels::f32::{isa, Isa, PackedF32};

fn median_s(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..15)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn gemm_wt(x: &[f32], rows: usize, w: &[f32], out: usize, k: usize, y: &mut [f32]) {
    let threads = candle_core::utils::get_num_threads();
    // SAFETY: sizes as in the old `matmul_wt`: x [rows, k], W [out, k] read as Wᵀ, y [rows, out].
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
            gemm::Parallelism::Rayon(threads),
        )
    }
}

fn main() {
    println!(
        "isa {}, {} threads",
        isa().name(),
        candle_core::utils::get_num_threads()
    );
    // Every instruction set this machine has, measured in turn on each shape (a load that
    // comes and goes then touches all of them alike).
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
        .into_iter()
        .filter(|i| i.available())
        .collect();
    print!("{:>6} {:>6} {:>6}", "rows", "k", "out");
    for i in &isas {
        print!(" {:>11}", i.name());
    }
    println!(" {:>10}", "gemm");
    for &(k, out) in &[
        (576, 1536),
        (1536, 576),
        (576, 576),
        (576, 192),
        (576, 49152),
    ] {
        for &rows in &[1usize, 32, 128, 512] {
            let w: Vec<f32> = (0..out * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let p = PackedF32::pack(&w, out, k);
            let mut y = vec![0f32; rows * out];
            let flops = 2.0 * (rows * out * k) as f64;
            print!("{rows:>6} {k:>6} {out:>6}");
            for &i in &isas {
                let a = median_s(|| p.matmul_with(i, &x, rows, &mut y));
                print!(" {:>8.1} GF", flops / a / 1e9);
            }
            let b = median_s(|| gemm_wt(&x, rows, &w, out, k, &mut y));
            println!(" {:>7.1} GF", flops / b / 1e9);
        }
    }
}
