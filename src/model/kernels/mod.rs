//! Matrix kernels of our own, on plain slices (no candle): weights packed once at load in the
//! layout the kernel wants, instruction sets detected at run time, work spread over candle's one
//! thread pool (`candle_core::utils::barrier_pool`) so that no second pool competes with it.
//!
//! - [`f32`]: the exact path: f32 weights packed into panels once, an AVX2 + FMA micro-kernel.
//! - [`attention`]: causal attention on slices; fused (no score matrices) unless hooks need them.
//! - [`rows`]: RMSNorm and SwiGLU's `silu(gate) · up` in one pass each.
//! - [`q4`]: the opt-in fast path: 4-bit weight blocks (GGUF Q4_1's layout) times
//!   activations quantized per block to 8 bits, integer dot products.

pub mod attention;
pub mod f32;
pub mod q4;
pub mod rows;

/// Reproducible test values in `[-1, 1)` (xorshift: no dependency).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
