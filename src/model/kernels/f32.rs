//! The exact path's matmul: `y = x · Wᵀ` in f32 with `W` packed once, at load, into panels of
//! [`NR`] output rows laid out `[panel][k][NR]` — the order the micro-kernel reads them, so no
//! call repacks a weight (the `gemm` crate repacked every weight on every call: 36% of a forward).
//!
//! The micro-kernel keeps a block of outputs in registers (6 × 16 on AVX2 + FMA: 12 accumulators,
//! 2 weight loads and 6 broadcasts per step of k; 12 × 16 on AVX-512: 12 accumulators, one weight
//! load and 12 broadcasts folded into the multiply-adds) and sums each output over k in order, in
//! one f32 accumulator with fused multiply-adds, so every instruction set gives the same bits. Work is split over output panels
//! (and chunks of rows when there are many) on candle's thread pool, the one pool the runtime
//! uses. Instruction sets are detected at run time; other CPUs get a portable loop over the same
//! layout.

use std::sync::OnceLock;

/// Outputs per panel.
pub const NR: usize = 16;
/// Rows of `x` per micro-kernel call, at most (the AVX2 kernel takes up to [`MR_AVX2`]).
const MR: usize = 12;
/// Rows per call of the AVX2 kernel (its 16 registers hold 6 × 2 accumulators).
const MR_AVX2: usize = 6;
/// Rows of `x` per unit of parallel work (keeps a chunk of `x` in L2 while a panel streams).
const ROW_CHUNK: usize = 96;

/// The instruction set the f32 kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Portable => "portable",
        }
    }

    /// Whether this machine can run it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2Fma => false,
            Isa::Portable => true,
        }
    }
}

/// The best instruction set this machine has (detected once).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        [Isa::Avx512, Isa::Avx2Fma]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Portable)
    })
}

/// A weight `[out, k]` packed for [`PackedF32::matmul`].
#[derive(Clone)]
pub struct PackedF32 {
    out: usize,
    k: usize,
    /// `[out.div_ceil(NR)][k][NR]`, the last panel padded with zeros.
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32 [{}, {}]", self.out, self.k)
    }
}

impl PackedF32 {
    /// Packs a row-major weight `[out, k]` (HF's layout: one row per output).
    pub fn pack(w: &[f32], out: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            out * k,
            "weight of {out}×{k} has {} values",
            w.len()
        );
        let panels = out.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for o in 0..out {
            let (p, j) = (o / NR, o % NR);
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            for (i, &v) in w[o * k..(o + 1) * k].iter().enumerate() {
                panel[i * NR + j] = v;
            }
        }
        PackedF32 { out, k, data }
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn elem_count(&self) -> usize {
        self.out * self.k
    }

    /// `W[o, i]`.
    #[inline]
    pub fn get(&self, o: usize, i: usize) -> f32 {
        self.data[(o / NR) * self.k * NR + i * NR + o % NR]
    }

    /// Row `o` of `W` (`[k]`): what output `o` reads.
    pub fn row(&self, o: usize) -> Vec<f32> {
        (0..self.k).map(|i| self.get(o, i)).collect()
    }

    /// Column `i` of `W` (`[out]`): what input `i` writes to every output.
    pub fn column(&self, i: usize) -> Vec<f32> {
        (0..self.out).map(|o| self.get(o, i)).collect()
    }

    /// The weight back in row-major `[out, k]`.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = Vec::with_capacity(self.out * self.k);
        for o in 0..self.out {
            w.extend((0..self.k).map(|i| self.get(o, i)));
        }
        w
    }

    /// `y = x · Wᵀ` for `x: [rows, k]` row-major; `y: [rows, out]` is overwritten.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.matmul_with(isa(), x, rows, y)
    }

    /// [`PackedF32::matmul`] on a chosen instruction set (tests run every one this machine has).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) {
        let isa = if isa.available() { isa } else { Isa::Portable };
        let (out, k) = (self.out, self.k);
        assert!(
            x.len() >= rows * k,
            "x has {} values, not {rows}×{k}",
            x.len()
        );
        assert!(
            y.len() >= rows * out,
            "y has {} values, not {rows}×{out}",
            y.len()
        );
        if rows == 0 || out == 0 {
            return;
        }
        if k == 0 {
            y[..rows * out].fill(0.0);
            return;
        }
        let panels = out.div_ceil(NR);
        let row_chunks = rows.div_ceil(ROW_CHUNK);
        let units = panels * row_chunks;
        let y_addr = y.as_mut_ptr() as usize;
        let work = |range: std::ops::Range<usize>| {
            for unit in range {
                let (chunk, panel) = (unit / panels, unit % panels);
                let r0 = chunk * ROW_CHUNK;
                let r1 = rows.min(r0 + ROW_CHUNK);
                // SAFETY: units write disjoint blocks of y (rows r0..r1 × the panel's columns),
                // and y outlives the pool call.
                unsafe { self.panel_block(isa, x, r0..r1, panel, y_addr as *mut f32) };
            }
        };
        // Small products are not worth waking the pool.
        if rows * out * k < 1 << 16 {
            work(0..units)
        } else {
            candle_core::utils::barrier_pool().execute_chunked(units, work)
        }
    }

    /// Rows `rows` of `y` for one panel of outputs.
    ///
    /// # Safety
    /// `y` points at a `[rows, out]` buffer no other thread writes this block of.
    unsafe fn panel_block(
        &self,
        isa: Isa,
        x: &[f32],
        rows: std::ops::Range<usize>,
        panel: usize,
        y: *mut f32,
    ) {
        let (out, k) = (self.out, self.k);
        let b = &self.data[panel * k * NR..(panel + 1) * k * NR];
        let cols = NR.min(out - panel * NR);
        // Rows in calls of nearly equal size (32 = 6+6+5+5+5+5, not 6·5+2): a call with few
        // rows spends its time loading weights, not multiplying.
        let n = rows.end - rows.start;
        let most = if isa == Isa::Avx512 { MR } else { MR_AVX2 };
        let calls = n.div_ceil(most);
        let mut r = rows.start;
        for call in 0..calls {
            let mr = n / calls + usize::from(call < n % calls);
            let a = &x[r * k..(r + mr) * k];
            let mut tile = [0f32; MR * NR];
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::tile(mr, k, a, b, &mut tile) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { avx2::tile(mr, k, a, b, &mut tile) },
                _ => portable_tile(mr, k, a, b, &mut tile),
            }
            for i in 0..mr {
                // SAFETY: row r + i < rows.end ≤ the rows of y; the columns lie in this panel.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        tile.as_ptr().add(i * NR),
                        y.add((r + i) * out + panel * NR),
                        cols,
                    )
                };
            }
            r += mr;
        }
        debug_assert_eq!(r, rows.end);
    }
}

/// `tile[i][j] = Σ_p a[i][p] · b[p][j]` for `mr ≤ MR` rows of `a` (`[mr, k]`) and one panel `b`
/// (`[k, NR]`), each sum in order over p with fused multiply-adds, as the SIMD kernel does.
fn portable_tile(mr: usize, k: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    for i in 0..mr {
        let mut acc = [0f32; NR];
        let row = &a[i * k..(i + 1) * k];
        for (p, &av) in row.iter().enumerate() {
            let bp = &b[p * NR..(p + 1) * NR];
            for j in 0..NR {
                acc[j] = av.mul_add(bp[j], acc[j]);
            }
        }
        tile[i * NR..(i + 1) * NR].copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// See [`super::portable_tile`], for up to [`MR`] rows.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` holds `mr · k` values and `b` holds `k · NR`.
    pub(super) unsafe fn tile(
        mr: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        tile: &mut [f32; MR * NR],
    ) {
        debug_assert!(a.len() >= mr * k && b.len() >= k * NR);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        unsafe {
            match mr {
                12 => kernel::<12>(k, a, b, tile),
                11 => kernel::<11>(k, a, b, tile),
                10 => kernel::<10>(k, a, b, tile),
                9 => kernel::<9>(k, a, b, tile),
                8 => kernel::<8>(k, a, b, tile),
                7 => kernel::<7>(k, a, b, tile),
                6 => kernel::<6>(k, a, b, tile),
                5 => kernel::<5>(k, a, b, tile),
                4 => kernel::<4>(k, a, b, tile),
                3 => kernel::<3>(k, a, b, tile),
                2 => kernel::<2>(k, a, b, tile),
                _ => kernel::<1>(k, a, b, tile),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        tile: &mut [f32; MR * NR],
    ) {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for p in 0..k {
                let bp = _mm512_loadu_ps(b.add(p * NR));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(i * k + p));
                    *acc = _mm512_fmadd_ps(av, bp, *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), *acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// See [`super::portable_tile`]; `mr` rows dispatched to a kernel with the row count fixed
    /// at compile time so that every accumulator lives in a register.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds `mr · k` values and `b` holds `k · NR`.
    pub(super) unsafe fn tile(
        mr: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        tile: &mut [f32; MR * NR],
    ) {
        debug_assert!(a.len() >= mr * k && b.len() >= k * NR);
        unsafe {
            match mr {
                6 => kernel::<6>(k, a.as_ptr(), b.as_ptr(), tile),
                5 => kernel::<5>(k, a.as_ptr(), b.as_ptr(), tile),
                4 => kernel::<4>(k, a.as_ptr(), b.as_ptr(), tile),
                3 => kernel::<3>(k, a.as_ptr(), b.as_ptr(), tile),
                2 => kernel::<2>(k, a.as_ptr(), b.as_ptr(), tile),
                _ => kernel::<1>(k, a.as_ptr(), b.as_ptr(), tile),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const R: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        tile: &mut [f32; MR * NR],
    ) {
        unsafe {
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            for p in 0..k {
                let b0 = _mm256_loadu_ps(b.add(p * NR));
                let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
                for i in 0..R {
                    let av = _mm256_broadcast_ss(&*a.add(i * k + p));
                    lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
                    hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
                }
            }
            for i in 0..R {
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR), lo[i]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8), hi[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::kernels::test_values as random;

    fn reference(w: &[f32], out: usize, k: usize, x: &[f32], rows: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    fn isas() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    #[test]
    fn packed_products_match_f64_on_every_shape_and_isa() {
        for &(rows, out, k) in &[
            (1, 16, 8),
            (1, 49, 576),
            (3, 8, 32),
            (7, 33, 17),
            (32, 576, 576),
            (33, 192, 576),
            (130, 40, 64),
            (200, 17, 3),
        ] {
            let w = random(out * k, (rows * 1000 + out) as u64);
            let x = random(rows * k, k as u64);
            let packed = PackedF32::pack(&w, out, k);
            let expect = reference(&w, out, k, &x, rows);
            for isa in isas() {
                let mut y = vec![f32::NAN; rows * out];
                packed.matmul_with(isa, &x, rows, &mut y);
                for (i, (&got, &want)) in y.iter().zip(&expect).enumerate() {
                    // Sums of k products of values in [-1, 1]: f32 rounding grows like √k·ε.
                    let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6 * want.abs();
                    assert!(
                        (got as f64 - want).abs() <= tol,
                        "{} [{rows}×{k}]·[{out}×{k}]ᵀ at {i}: {got} vs {want}",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn every_isa_gives_the_same_bits() {
        // Same order of fused multiply-adds per output: the results are identical, so the exact
        // path does not depend on which machine it runs on.
        // Every row count of a kernel call (1 to 12), and chunks of many rows.
        for rows in (1..=13).chain([37, 200]) {
            let (out, k) = (70, 100);
            let w = random(out * k, 1);
            let x = random(rows * k, 2);
            let packed = PackedF32::pack(&w, out, k);
            let mut first: Option<Vec<u32>> = None;
            for isa in isas() {
                let mut y = vec![0f32; rows * out];
                packed.matmul_with(isa, &x, rows, &mut y);
                let bits: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                match &first {
                    None => first = Some(bits),
                    Some(f) => assert_eq!(f, &bits, "{} differs at {rows} rows", isa.name()),
                }
            }
        }
    }

    #[test]
    fn rows_columns_and_unpack_read_the_original_weight() {
        let (out, k) = (37, 5);
        let w = random(out * k, 3);
        let p = PackedF32::pack(&w, out, k);
        assert_eq!(p.unpack(), w);
        assert_eq!(p.row(20), w[20 * k..21 * k].to_vec());
        let col: Vec<f32> = (0..out).map(|o| w[o * k + 4]).collect();
        assert_eq!(p.column(4), col);
    }

    #[test]
    fn a_zero_width_input_gives_zeros() {
        let p = PackedF32::pack(&[], 3, 0);
        let mut y = vec![1f32; 6];
        p.matmul(&[], 2, &mut y);
        assert_eq!(y, vec![0.0; 6]);
    }
}
