//! The opt-in fast path's matmul: `y = x · Wᵀ` with `W` held as 4-bit blocks (GGUF Q4_1's
//! scheme) and `x` quantized per row per block of 32 to 8 bits, multiplied in integers.
//!
//! **Weights.** Each block of 32 inputs of one output row becomes `w ≈ d·q + m` with
//! `m = min`, `d = (max − min)/15`, `q = round((w − m)/d) ∈ 0..=15`; `d` and `m` are kept as
//! f16, as Q4_1 keeps them, and `q` is computed against the rounded `d` and `m`. A weight that
//! was Q4_1 comes back exactly (its block holds both `q = 0` and `q = 15`, so min and max give
//! back its `m` and `d`); any other weight is rounded to the nearest of 16 levels.
//!
//! **Activations.** Per row and block of 32: `dx = max|x|/127`, `xq = round(x/dx) ∈ −127..=127`,
//! and `s = dx·Σxq`. The product is then exactly `dequantize() · x̃` with `x̃ = dx·xq`:
//! `y[r][o] = Σ_blocks (d·dx·Σ q·xq + m·s)`, the sums of `q·xq` in i32, the rest in f32.
//! (Using `dx·Σxq` rather than the exact `Σx` for the min term is also the more accurate choice:
//! the error is then `Σ w·(x̃ − x)` rather than `Σ d·q·(x̃ − x)`, and `|w|` is typically about
//! half of `|d·q|` since `m ≈ −7.5·d`.)
//!
//! **Layout.** Weights are packed once, at [`PackedQ4::quantize`], into panels of [`NR`] = 16
//! output rows, and within a panel block by block, in the order the micro-kernels read them: a
//! block is five 64-byte lines. Lines 0..4 hold the 32 × 16 `q`s nibble-packed: line `c` holds
//! groups `2c` (low nibbles) and `2c + 1` (high nibbles), a group being 4 consecutive inputs of
//! all 16 outputs, byte `4j + e` = output `j`, input `4g + e`. That is exactly one
//! `vpdpbusd` operand (16 lanes of 4 bytes) per group on AVX-512 VNNI, and two `vpmaddubsw`
//! operands (outputs 0–7 and 8–15) on AVX2; unpacking is an `and` and a shift, shared by all the
//! activation rows of a tile. Line 4 holds the 16 `d` (f16) then the 16 `m` (f16). So 5 bits per
//! weight, as Q4_1, read as one sequential stream per panel. Nibbles rather than one `q` per
//! byte because generation (one row) is bound by memory bandwidth: 5 bits instead of 9 per
//! weight, for three extra instructions per 64 bytes that prefill amortizes over its rows.
//!
//! **Kernels.** A tile is up to [`MR`] activation rows × one panel: the weights are unpacked once
//! per tile and each row's 4 input bytes are broadcast against them. AVX-512 VNNI:
//! `vpdpbusd` (u8 × i8 → i32, 4 products a lane) into one i32 vector per row and block.
//! AVX2: `vpmaddubsw` (pairs of u8 × i8 → i16: at most 2·15·127 = 3810), the 8 groups of a block
//! summed in i16 (at most 8·3810 = 30480 < 32767: no saturation), then `vpmaddwd` by ones → i32.
//! Then per block: to f32, `acc += isum·(d·dx)` and `acc += m·s` (fused multiply-adds). Other CPUs
//! get a portable loop over the same layout. Work is split over panels (and chunks of
//! [`ROW_CHUNK`] rows) on candle's thread pool, the one pool the runtime uses.

use std::sync::OnceLock;

use half::f16;

/// Inputs per block.
pub const QK: usize = 32;
/// Outputs per panel.
pub const NR: usize = 16;
/// Activation rows per micro-kernel call.
const MR: usize = 8;
/// Rows per unit of parallel work: a chunk of quantized activations stays in L2 while the
/// panels stream past it.
const ROW_CHUNK: usize = 256;
/// 64-byte lines per (panel, block): 4 of nibble-packed `q`, 1 of `d` and `m`.
const LINES: usize = 5;
/// Below this many multiply-adds a call runs on the calling thread (waking the pool costs more).
const INLINE_MACS: usize = 1 << 18;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A weight `[out, k]` as 4-bit blocks packed for the kernels (see the module documentation).
#[derive(Clone)]
pub struct PackedQ4 {
    out: usize,
    k: usize,
    /// Blocks per row (`k / 32`).
    nb: usize,
    /// Panels of [`NR`] outputs; the last one padded with zero weights.
    panels: usize,
    /// `[panel][block][LINES]`.
    data: Vec<Line>,
}

/// The instruction set the kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F + BW + VNNI: `vpdpbusd` on 512-bit vectors.
    Avx512Vnni,
    /// AVX2 + FMA + F16C: `vpmaddubsw` / `vpmaddwd` on 256-bit vectors.
    Avx2,
    /// Plain Rust over the same layout.
    Portable,
}

impl Isa {
    /// All of them, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this machine can run it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512Vnni | Isa::Avx2 => false,
            Isa::Portable => true,
        }
    }

    /// The fastest one this machine can run (detected once).
    pub fn detect() -> Isa {
        static CHOICE: OnceLock<Isa> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            Isa::ALL
                .into_iter()
                .find(|i| i.available())
                .unwrap_or(Isa::Portable)
        })
    }
}

/// Which instruction set [`PackedQ4::matmul`] uses on this machine: "avx512-vnni", "avx2" or
/// "portable".
pub fn isa() -> &'static str {
    Isa::detect().name()
}

impl PackedQ4 {
    /// Packs a row-major f32 weight `[out, k]` (HF layout, one row per output). `None` when
    /// `k % 32 != 0`, when `k` or `out` is 0, when `w` holds fewer than `out·k` values, or when
    /// a block's minimum or step is not finite in f16 (|value| > 65504, or NaN): the caller
    /// keeps the exact path for such a weight.
    pub fn quantize(w: &[f32], out: usize, k: usize) -> Option<PackedQ4> {
        if k == 0 || out == 0 || !k.is_multiple_of(QK) || w.len() < out.checked_mul(k)? {
            return None;
        }
        let nb = k / QK;
        let panels = out.div_ceil(NR);
        let mut data = vec![Line([0; 64]); panels * nb * LINES];
        let ok = std::sync::atomic::AtomicBool::new(true);
        let dst = SyncPtr(data.as_mut_ptr());
        let pack = |range: std::ops::Range<usize>| {
            for p in range {
                // SAFETY: panel p's lines, inside `data`; each panel is packed by one call.
                let lines = unsafe {
                    std::slice::from_raw_parts_mut(dst.get().add(p * nb * LINES), nb * LINES)
                };
                let rows = p * NR..out.min((p + 1) * NR);
                if !pack_panel(&w[rows.start * k..rows.end * k], k, lines) {
                    ok.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        };
        if out * k < INLINE_MACS {
            pack(0..panels);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(panels, pack);
        }
        if !ok.into_inner() {
            return None;
        }
        Some(PackedQ4 {
            out,
            k,
            nb,
            panels,
            data,
        })
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held (for the memory statement): 5 bits a weight, plus the last panel's padding.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<Line>() + std::mem::size_of::<Self>()
    }

    /// The weight as the kernel sees it, dequantized (`d·q + m` in f32), row-major `[out, k]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out * self.k];
        for o in 0..self.out {
            let (p, j) = (o / NR, o % NR);
            for b in 0..self.nb {
                let lines = &self.data[(p * self.nb + b) * LINES..][..LINES];
                let (d, m) = scales(&lines[4], j);
                for t in 0..QK {
                    let (g, e) = (t / 4, t % 4);
                    let q = (lines[g / 2].0[4 * j + e] >> (4 * (g % 2))) & 15;
                    w[o * self.k + b * QK + t] = d * q as f32 + m;
                }
            }
        }
        w
    }

    /// `y = x · Wᵀ`: `x` row-major `[rows, k]`, `y` row-major `[rows, out]` (overwritten).
    /// Any `rows ≥ 1` (0 does nothing). Uses [`isa()`].
    ///
    /// # Panics
    /// When `x` holds fewer than `rows·k` values or `y` fewer than `rows·out`.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.matmul_with(Isa::detect(), x, rows, y);
    }

    /// [`PackedQ4::matmul`] with a chosen instruction set (tests, benchmarks).
    ///
    /// # Panics
    /// As `matmul`, and when this machine cannot run `isa`.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) {
        assert!(isa.available(), "{} is not available here", isa.name());
        let (k, out, nb) = (self.k, self.out, self.nb);
        assert!(
            x.len() >= rows * k,
            "x holds {} values, not {rows}·{k}",
            x.len()
        );
        assert!(
            y.len() >= rows * out,
            "y holds {} values, not {rows}·{out}",
            y.len()
        );
        if rows == 0 {
            return;
        }
        let acts = QuantActs::new_with(isa, &x[..rows * k], rows, k);
        let chunks = rows.div_ceil(ROW_CHUNK);
        let units = self.panels * chunks;
        let y_ptr = SyncPtr(y.as_mut_ptr());
        let run = |range: std::ops::Range<usize>| {
            for u in range {
                let (c, p) = (u / self.panels, u % self.panels);
                let ncols = NR.min(out - p * NR);
                let r_end = rows.min((c + 1) * ROW_CHUNK);
                let mut r = c * ROW_CHUNK;
                while r < r_end {
                    let tile = MR.min(r_end - r);
                    let t = Tile {
                        w: self.data[p * nb * LINES..(p + 1) * nb * LINES].as_ptr(),
                        nb,
                        k,
                        xq: acts.xq[r * k..].as_ptr(),
                        dx: acts.dx[r * nb..].as_ptr(),
                        s: acts.s[r * nb..].as_ptr(),
                        // SAFETY: r < rows and p·NR < out, so the offset is inside y.
                        y: unsafe { y_ptr.get().add(r * out + p * NR) },
                        ldy: out,
                        ncols,
                    };
                    // SAFETY: the tile's pointers cover `tile` rows of x (k values each, with
                    // nb scales) and of y (`ncols` from its start, stride `out`), and a whole
                    // panel of weights; units write disjoint parts of y; `isa` is available.
                    unsafe { run_tile(isa, &t, tile) };
                    r += tile;
                }
            }
        };
        if rows * out * k < INLINE_MACS || units == 1 {
            run(0..units);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(units, run);
        }
    }
}

/// Packs the rows of one panel (`w`: up to [`NR`] rows of `k`) into its `nb · LINES` lines
/// (zeroed); false when a block cannot be held (non-finite, or beyond f16).
fn pack_panel(w: &[f32], k: usize, lines: &mut [Line]) -> bool {
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer in vector arithmetic.
    const MAGIC: f32 = 12_582_912.0;
    for (j, row) in w.chunks_exact(k).enumerate() {
        for (blk, lines) in row.chunks_exact(QK).zip(lines.chunks_exact_mut(LINES)) {
            // Minimum and maximum in 8 lanes (`<` selects, which vectorizes; `f32::min` does
            // not), after a check that every value is finite.
            let mut finite = true;
            let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
            for c in blk.chunks_exact(8) {
                for l in 0..8 {
                    finite &= c[l].abs() <= f32::MAX;
                    lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
                    hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
                }
            }
            if !finite {
                return false;
            }
            let mn = lo.into_iter().fold(f32::INFINITY, f32::min);
            let mx = hi.into_iter().fold(f32::NEG_INFINITY, f32::max);
            let d16 = f16::from_f32((mx - mn) / 15.0);
            let m16 = f16::from_f32(mn);
            if !d16.is_finite() || !m16.is_finite() {
                return false;
            }
            let (d, m) = (d16.to_f32(), m16.to_f32());
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0u8; QK];
            for (q, &v) in q.iter_mut().zip(blk) {
                *q = ((((v - m) * id).clamp(0.0, 15.0) + MAGIC) - MAGIC) as u8;
            }
            for (t, &q) in q.iter().enumerate() {
                let (g, e) = (t / 4, t % 4);
                lines[g / 2].0[4 * j + e] |= q << (4 * (g % 2));
            }
            lines[4].0[2 * j..2 * j + 2].copy_from_slice(&d16.to_le_bytes());
            lines[4].0[32 + 2 * j..32 + 2 * j + 2].copy_from_slice(&m16.to_le_bytes());
        }
    }
    true
}

/// `d` and `m` of output `j` from a block's scale line.
fn scales(line: &Line, j: usize) -> (f32, f32) {
    let d = f16::from_le_bytes([line.0[2 * j], line.0[2 * j + 1]]).to_f32();
    let m = f16::from_le_bytes([line.0[32 + 2 * j], line.0[33 + 2 * j]]).to_f32();
    (d, m)
}

/// A finite f16 (as bits) to f32 in plain integer and float arithmetic, which the compiler
/// vectorizes (the scales are finite: `quantize` refuses others).
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1F;
    let mant = h & 0x3FF;
    // Normal: rebias the exponent (15 → 127). Subnormal or zero: mant · 2⁻²⁴.
    let normal = f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    let sub = f32::from_bits(sign | (mant as f32 * (1.0 / 16_777_216.0)).to_bits());
    if exp == 0 {
        sub
    } else {
        normal
    }
}

/// Activations quantized per row per block of 32 (Q8_1-like).
pub(crate) struct QuantActs {
    /// `[rows, k]`, each in −127..=127.
    pub(crate) xq: Vec<i8>,
    /// `[rows, k/32]`: `max|x|/127` (NaN when the block holds a non-finite value).
    pub(crate) dx: Vec<f32>,
    /// `[rows, k/32]`: `dx·Σxq`.
    pub(crate) s: Vec<f32>,
}

impl QuantActs {
    /// With a given instruction set; every one gives the same bits.
    pub(crate) fn new_with(isa: Isa, x: &[f32], rows: usize, k: usize) -> QuantActs {
        assert!(k.is_multiple_of(QK) && x.len() >= rows * k && isa.available());
        let nb = k / QK;
        let mut a = QuantActs {
            xq: vec![0i8; rows * k],
            dx: vec![0f32; rows * nb],
            s: vec![0f32; rows * nb],
        };
        let x = &x[..rows * k];
        match isa {
            // SAFETY: the instruction set is available (asserted).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { x86::quantize_acts_avx512(x, &mut a) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::quantize_acts_avx2(x, &mut a) },
            _ => quantize_acts(x, &mut a),
        }
        a
    }
}

/// A block's largest |x| from its bit pattern (|x| as bits: the patterns of non-negative floats
/// order as integers): `None` when the block holds a non-finite value (≥ the pattern of +∞);
/// 0 when it is below 1e-30, where `127/max` would overflow and such a block adds nothing.
#[inline(always)]
fn block_scale(amax_bits: u32) -> Option<f32> {
    match f32::from_bits(amax_bits) {
        _ if amax_bits >= 0x7F80_0000 => None,
        a if a < 1e-30 => Some(0.0),
        a => Some(a),
    }
}

/// Quantizes `x` into `a` block by block, in code the compiler vectorizes (lanes of 8 for the
/// maximum; the instruction set is the caller's, see `x86::quantize_acts_*`).
#[inline(always)]
fn quantize_acts(x: &[f32], a: &mut QuantActs) {
    // Adding and subtracting 1.5·2²³ rounds a value of magnitude < 2²² to the nearest integer
    // (ties to even) in plain vector arithmetic; `round` does not vectorize.
    const MAGIC: f32 = 12_582_912.0;
    for ((xb, qb), (d, s)) in x
        .chunks_exact(QK)
        .zip(a.xq.chunks_exact_mut(QK))
        .zip(a.dx.iter_mut().zip(a.s.iter_mut()))
    {
        let mut lanes = [0u32; 8];
        for c in xb.chunks_exact(8) {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l = (*l).max(v.to_bits() & 0x7FFF_FFFF);
            }
        }
        let Some(amax) = block_scale(lanes.into_iter().fold(0, u32::max)) else {
            (*d, *s) = (f32::NAN, f32::NAN);
            continue;
        };
        if amax == 0.0 {
            continue;
        }
        let id = 127.0 / amax;
        let mut sum = 0i32;
        for (q, &v) in qb.iter_mut().zip(xb) {
            let r = ((v * id + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i32;
            sum += r;
            *q = r as i8;
        }
        *d = amax / 127.0;
        *s = *d * sum as f32;
    }
}

/// A pointer the units of one parallel call share.
struct SyncPtr<T>(*mut T);
// SAFETY: the units of one call write disjoint parts through it, and the call returns only
// after every unit has finished.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// One micro-kernel call: up to `MR` rows × one panel.
struct Tile {
    /// The panel's first line (`nb · LINES` lines).
    w: *const Line,
    nb: usize,
    /// Row stride of `xq`.
    k: usize,
    /// First row's quantized activations.
    xq: *const i8,
    /// First row's `dx` and `s` (row stride `nb`).
    dx: *const f32,
    s: *const f32,
    /// First row's first output (row stride `ldy`), of which `ncols` are written.
    y: *mut f32,
    ldy: usize,
    ncols: usize,
}

/// # Safety
/// `t` describes valid memory for `rows ≤ MR` rows; `isa` is available on this machine.
unsafe fn run_tile(isa: Isa, t: &Tile, rows: usize) {
    macro_rules! by_rows {
        ($f:ident) => {
            match rows {
                1 => $f::<1>(t),
                2 => $f::<2>(t),
                3 => $f::<3>(t),
                4 => $f::<4>(t),
                5 => $f::<5>(t),
                6 => $f::<6>(t),
                7 => $f::<7>(t),
                _ => $f::<8>(t),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            use x86::tile_avx512;
            by_rows!(tile_avx512)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            use x86::tile_avx2;
            by_rows!(tile_avx2)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512Vnni | Isa::Avx2 => unreachable!("checked by matmul_with"),
        Isa::Portable => tile_portable(t, rows),
    }
}

/// The portable micro-kernel: same layout, same order of operations per block. It keeps the
/// packed order: i16 lane `4j + e` of a line accumulates output `j`'s products with input `e`
/// of each group, so the 4 inputs of a group repeat every 4 lanes, and the loop over 8 lanes is
/// one vector operation for the compiler (SSE2, NEON). A lane sums 8 products a block, each at
/// most 15·127 = 1905 in magnitude: 15240 fits in i16. The 4 lanes of an output are summed in
/// i32 at the end of the block.
///
/// # Safety
/// As [`run_tile`].
unsafe fn tile_portable(t: &Tile, rows: usize) {
    let w = std::slice::from_raw_parts(t.w, t.nb * LINES);
    for r in 0..rows {
        let mut acc = [0f32; NR];
        for b in 0..t.nb {
            let lines = &w[b * LINES..(b + 1) * LINES];
            let xq = std::slice::from_raw_parts(t.xq.add(r * t.k + b * QK), QK);
            let mut lanes = [0i16; 64];
            for (c, line) in lines[..4].iter().enumerate() {
                // The group's 4 inputs repeated over the 64 lanes (8 copies of 8 lanes).
                let pat = |o: usize| -> [i16; 64] {
                    let p8: [i16; 8] = std::array::from_fn(|l| xq[o + l % 4] as i16);
                    let mut p = [0i16; 64];
                    for c8 in p.chunks_exact_mut(8) {
                        c8.copy_from_slice(&p8);
                    }
                    p
                };
                let (lo, hi) = (pat(8 * c), pat(8 * c + 4));
                for i in 0..64 {
                    let byte = line.0[i] as i16;
                    lanes[i] += (byte & 15) * lo[i] + (byte >> 4) * hi[i];
                }
            }
            let dx = *t.dx.add(r * t.nb + b);
            let s = *t.s.add(r * t.nb + b);
            let sc = &lines[4].0;
            for (j, acc) in acc.iter_mut().enumerate() {
                let l = &lanes[4 * j..4 * j + 4];
                let isum = l[0] as i32 + l[1] as i32 + l[2] as i32 + l[3] as i32;
                let d = f16_to_f32(u16::from_le_bytes([sc[2 * j], sc[2 * j + 1]]));
                let m = f16_to_f32(u16::from_le_bytes([sc[32 + 2 * j], sc[33 + 2 * j]]));
                *acc += isum as f32 * (d * dx);
                *acc += m * s;
            }
        }
        std::ptr::copy_nonoverlapping(acc.as_ptr(), t.y.add(r * t.ldy), t.ncols);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{block_scale, QuantActs, Tile, LINES, NR, QK};
    use std::arch::x86_64::*;

    /// As `quantize_acts`, with AVX-512 (two vectors a block; `vcvtps2dq` rounds to nearest
    /// even, as the portable code's rounding does).
    ///
    /// # Safety
    /// AVX-512 F + BW available.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_acts_avx512(x: &[f32], a: &mut QuantActs) {
        let abs = _mm512_set1_epi32(0x7FFF_FFFF);
        for (bi, xb) in x.chunks_exact(QK).enumerate() {
            let v0 = _mm512_loadu_ps(xb.as_ptr());
            let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
            let b0 = _mm512_and_si512(_mm512_castps_si512(v0), abs);
            let b1 = _mm512_and_si512(_mm512_castps_si512(v1), abs);
            let amax_bits = _mm512_reduce_max_epu32(_mm512_max_epu32(b0, b1));
            let Some(amax) = block_scale(amax_bits) else {
                (a.dx[bi], a.s[bi]) = (f32::NAN, f32::NAN);
                continue;
            };
            if amax == 0.0 {
                continue;
            }
            let id = _mm512_set1_ps(127.0 / amax);
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
            let dst = a.xq.as_mut_ptr().add(bi * QK) as *mut __m128i;
            _mm_storeu_si128(dst, _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128(dst.add(1), _mm512_cvtsepi32_epi8(q1));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            a.dx[bi] = amax / 127.0;
            a.s[bi] = a.dx[bi] * sum as f32;
        }
    }

    /// As `quantize_acts`, with AVX2 (four vectors a block).
    ///
    /// # Safety
    /// AVX2 available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_acts_avx2(x: &[f32], a: &mut QuantActs) {
        let abs = _mm256_set1_epi32(0x7FFF_FFFF);
        for (bi, xb) in x.chunks_exact(QK).enumerate() {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
            let bits = v.map(|v| _mm256_and_si256(_mm256_castps_si256(v), abs));
            let m = _mm256_max_epu32(
                _mm256_max_epu32(bits[0], bits[1]),
                _mm256_max_epu32(bits[2], bits[3]),
            );
            let m = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
            let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
            let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
            let Some(amax) = block_scale(_mm_cvtsi128_si32(m) as u32) else {
                (a.dx[bi], a.s[bi]) = (f32::NAN, f32::NAN);
                continue;
            };
            if amax == 0.0 {
                continue;
            }
            let id = _mm256_set1_ps(127.0 / amax);
            let q = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, id)));
            // Packing interleaves the 128-bit halves; the permutation puts them back in order.
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(a.xq.as_mut_ptr().add(bi * QK) as *mut __m256i, p);
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            a.dx[bi] = amax / 127.0;
            a.s[bi] = a.dx[bi] * _mm_cvtsi128_si32(s) as f32;
        }
    }

    /// Four input bytes of row `r` at input `i`, broadcast as an i32.
    #[inline(always)]
    unsafe fn x4(t: &Tile, r: usize, i: usize) -> i32 {
        (t.xq.add(r * t.k + i) as *const i32).read_unaligned()
    }

    /// # Safety
    /// As `run_tile`, with AVX-512 F + BW + VNNI available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const R: usize>(t: &Tile) {
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..t.nb {
            let wb = t.w.add(b * LINES) as *const u8;
            let mut isum = [_mm512_setzero_si512(); R];
            for c in 0..4 {
                let v = _mm512_load_si512(wb.add(64 * c) as *const _);
                let lo = _mm512_and_si512(v, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                for (r, isum) in isum.iter_mut().enumerate() {
                    let i = b * 32 + 8 * c;
                    *isum = _mm512_dpbusd_epi32(*isum, lo, _mm512_set1_epi32(x4(t, r, i)));
                    *isum = _mm512_dpbusd_epi32(*isum, hi, _mm512_set1_epi32(x4(t, r, i + 4)));
                }
            }
            let d = _mm512_cvtph_ps(_mm256_load_si256(wb.add(256) as *const _));
            let m = _mm512_cvtph_ps(_mm256_load_si256(wb.add(288) as *const _));
            for (r, (acc, isum)) in acc.iter_mut().zip(isum).enumerate() {
                let dx = _mm512_set1_ps(*t.dx.add(r * t.nb + b));
                let s = _mm512_set1_ps(*t.s.add(r * t.nb + b));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, dx), *acc);
                *acc = _mm512_fmadd_ps(m, s, *acc);
            }
        }
        let k: __mmask16 = if t.ncols >= NR {
            0xFFFF
        } else {
            (1u16 << t.ncols) - 1
        };
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(t.y.add(r * t.ldy), k, *acc);
        }
    }

    /// # Safety
    /// As `run_tile`, with AVX2 + FMA + F16C available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(t: &Tile) {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        // The panel's two halves: outputs 0–7 are bytes 0..32 of each line, 8–15 bytes 32..64.
        for h in 0..2 {
            if 8 * h >= t.ncols {
                break;
            }
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..t.nb {
                let wb = (t.w.add(b * LINES) as *const u8).add(32 * h);
                let mut s16 = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let v = _mm256_load_si256(wb.add(64 * c) as *const _);
                    let lo = _mm256_and_si256(v, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                    for (r, s16) in s16.iter_mut().enumerate() {
                        let i = b * 32 + 8 * c;
                        let p0 = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(x4(t, r, i)));
                        let p1 = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(x4(t, r, i + 4)));
                        *s16 = _mm256_add_epi16(*s16, _mm256_add_epi16(p0, p1));
                    }
                }
                // Scales: d of outputs 8h..8h+8 at byte 256 + 16h, m at 288 + 16h.
                let sc = (t.w.add(b * LINES + 4) as *const u8).add(16 * h);
                let d = _mm256_cvtph_ps(_mm_load_si128(sc as *const _));
                let m = _mm256_cvtph_ps(_mm_load_si128(sc.add(32) as *const _));
                for (r, (acc, s16)) in acc.iter_mut().zip(s16).enumerate() {
                    let isum = _mm256_madd_epi16(s16, ones);
                    let dx = _mm256_set1_ps(*t.dx.add(r * t.nb + b));
                    let s = _mm256_set1_ps(*t.s.add(r * t.nb + b));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, dx), *acc);
                    *acc = _mm256_fmadd_ps(m, s, *acc);
                }
            }
            let n = (t.ncols - 8 * h).min(8);
            for (r, acc) in acc.iter().enumerate() {
                let dst = t.y.add(r * t.ldy + 8 * h);
                if n == 8 {
                    _mm256_storeu_ps(dst, *acc);
                } else {
                    let mut tmp = [0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), *acc);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), values in [−1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        /// Roughly Gaussian (sum of four uniforms), scaled.
        fn gauss(&mut self, scale: f32) -> f32 {
            (self.next() + self.next() + self.next() + self.next()) * 0.866 * scale
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.gauss(scale)).collect()
        }
    }

    fn isas() -> Vec<Isa> {
        let v: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
        assert!(v.contains(&Isa::Portable));
        v
    }

    /// The quantized math in f64: `Σ_b (d·dx·Σ q·xq + m·s)` from `dequantize()` and the
    /// quantized activations, with the magnitude `Σ_b (|d·dx|·Σ q·|xq| + |m·s|)` that bounds
    /// the rounding of an f32 evaluation.
    fn reference(p: &PackedQ4, x: &[f32], rows: usize) -> (Vec<f64>, Vec<f64>) {
        let (k, out, nb) = (p.k(), p.out(), p.k() / QK);
        let a = QuantActs::new_with(Isa::detect(), x, rows, k);
        let w = p.dequantize();
        let mut y = vec![0f64; rows * out];
        let mut mag = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let (mut acc, mut sz) = (0f64, 0f64);
                for b in 0..nb {
                    let dx = a.dx[r * nb + b] as f64;
                    for t in b * QK..(b + 1) * QK {
                        let xv = dx * a.xq[r * k + t] as f64;
                        acc += w[o * k + t] as f64 * xv;
                    }
                    // The magnitudes of the kernel's two terms, |d·dx|·Σ q·|xq| + |m|·|dx|·Σ|xq|.
                    let lines = &p.data[((o / NR) * nb + b) * LINES..][..LINES];
                    let (d, m) = scales(&lines[4], o % NR);
                    let (d, m) = (d.abs() as f64, m.abs() as f64);
                    for tb in 0..QK {
                        let xa = dx.abs() * (a.xq[r * k + b * QK + tb] as f64).abs();
                        let (g, e) = (tb / 4, tb % 4);
                        let q = (lines[g / 2].0[4 * (o % NR) + e] >> (4 * (g % 2))) & 15;
                        sz += d * q as f64 * xa + m * xa;
                    }
                }
                y[r * out + o] = acc;
                mag[r * out + o] = sz;
            }
        }
        (y, mag)
    }

    fn check_against_reference(isa: Isa, rows: usize, out: usize, k: usize, seed: u64) {
        let mut rng = Rng(seed);
        let w = rng.vec(out * k, 0.05);
        let x = rng.vec(rows * k, 1.0);
        let p = PackedQ4::quantize(&w, out, k).unwrap();
        let mut y = vec![f32::NAN; rows * out];
        p.matmul_with(isa, &x, rows, &mut y);
        let (yr, mag) = reference(&p, &x, rows);
        for i in 0..rows * out {
            assert!(
                y[i].is_finite(),
                "{isa:?} {rows}×{k}→{out}: y[{i}] = {}",
                y[i]
            );
            let err = (y[i] as f64 - yr[i]).abs();
            assert!(
                err <= 1e-5 * mag[i] + 1e-30,
                "{isa:?} {rows}×{k}→{out}: y[{i}] = {} vs {} (|err| {err:e}, magnitude {:e})",
                y[i],
                yr[i],
                mag[i]
            );
        }
    }

    #[test]
    fn every_isa_matches_the_quantized_reference_on_odd_shapes() {
        for isa in isas() {
            for &(rows, out, k) in &[
                (1, 8, 32),
                (3, 49, 32),
                (7, 16, 576),
                (33, 49, 576),
                (1, 200, 1536),
                (130, 40, 64),
                (130, 49, 576),
                (9, 17, 1536),
                (300, 33, 96),
            ] {
                check_against_reference(isa, rows, out, k, 7 + rows as u64 * 31 + out as u64);
            }
        }
    }

    #[test]
    fn every_isa_agrees_with_the_others_bit_for_bit_or_nearly() {
        let mut rng = Rng(99);
        let (rows, out, k) = (13, 70, 576);
        let w = rng.vec(out * k, 0.05);
        let x = rng.vec(rows * k, 2.0);
        let p = PackedQ4::quantize(&w, out, k).unwrap();
        let mut first: Option<Vec<f32>> = None;
        for isa in isas() {
            let mut y = vec![0f32; rows * out];
            p.matmul_with(isa, &x, rows, &mut y);
            match &first {
                None => first = Some(y),
                Some(y0) => {
                    for (a, b) in y.iter().zip(y0) {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{isa:?}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// Against the f32 product with the original weights. Per output, the error of the quantized
    /// product is `Σ (ŵ − w)·x̃ + Σ w·(x̃ − x)`, so `|ŷ − y| ≤ Σ |ŵ − w|·|x̃| + Σ |w|·|x̃ − x|`
    /// (plus f32 rounding, ≤ 1e-5 of `Σ|w·x|` at these sizes) — a bound that holds for any
    /// weights and activations; and the rounding itself is bounded:
    /// `|ŵ − w| ≤ d/2` and `|x̃ − x| ≤ dx/2` (up to f16 rounding of `d` and `m`). For Gaussian
    /// weights the relative RMS error is about `d/√12 / σ ≈ 0.08`: it must be below 0.15.
    #[test]
    fn close_to_the_f32_product_with_the_original_weights() {
        let mut rng = Rng(5);
        for &(rows, out, k) in &[(5, 64, 576), (32, 100, 1536)] {
            let w = rng.vec(out * k, 0.05);
            let x = rng.vec(rows * k, 1.0);
            let p = PackedQ4::quantize(&w, out, k).unwrap();
            let wq = p.dequantize();
            // Weight rounding: at most half a step (+ f16 rounding of d and m).
            for (o, (row, rowq)) in w.chunks(k).zip(wq.chunks(k)).enumerate() {
                for (b, (blk, blkq)) in row.chunks(QK).zip(rowq.chunks(QK)).enumerate() {
                    let mn = blk.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                    let mx = blk.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    let step = (mx - mn) / 15.0;
                    for (a, b2) in blk.iter().zip(blkq) {
                        assert!(
                            (a - b2).abs() <= step * 0.5 * (1.0 + 1.0 / 64.0) + 1e-7,
                            "row {o} block {b}: {a} → {b2} (step {step})"
                        );
                    }
                }
            }
            let a = QuantActs::new_with(Isa::detect(), &x, rows, k);
            let nb = k / QK;
            let xt: Vec<f32> = (0..rows * k)
                .map(|i| a.dx[(i / k) * nb + (i % k) / QK] * a.xq[i] as f32)
                .collect();
            for (i, (&xv, &xtv)) in x.iter().zip(&xt).enumerate() {
                let dx = a.dx[(i / k) * nb + (i % k) / QK];
                assert!((xv - xtv).abs() <= dx * 0.5 * (1.0 + 1e-5), "x[{i}]");
            }
            for isa in isas() {
                let mut y = vec![0f32; rows * out];
                p.matmul_with(isa, &x, rows, &mut y);
                let (mut se, mut sy) = (0f64, 0f64);
                for r in 0..rows {
                    for o in 0..out {
                        let (mut exact, mut bound, mut mag) = (0f64, 0f64, 0f64);
                        for t in 0..k {
                            let (wv, wqv) = (w[o * k + t] as f64, wq[o * k + t] as f64);
                            let (xv, xtv) = (x[r * k + t] as f64, xt[r * k + t] as f64);
                            exact += wv * xv;
                            bound += (wqv - wv).abs() * xtv.abs() + wv.abs() * (xtv - xv).abs();
                            mag += (wv * xv).abs();
                        }
                        let got = y[r * out + o] as f64;
                        assert!(
                            (got - exact).abs() <= bound + 1e-5 * mag,
                            "{isa:?} [{r},{o}]: {got} vs {exact}, bound {bound}"
                        );
                        se += (got - exact).powi(2);
                        sy += exact.powi(2);
                    }
                }
                let rel = (se / sy).sqrt();
                assert!(
                    rel < 0.15 && rel > 1e-3,
                    "{isa:?}: relative RMS error {rel}"
                );
            }
        }
    }

    #[test]
    fn every_isa_quantizes_activations_to_the_same_bits() {
        let mut rng = Rng(17);
        let k = 576;
        let mut x = rng.vec(6 * k, 3.0);
        x[k..2 * k].fill(0.0); // row 1: zeros
        x[2 * k + 5] = f32::INFINITY; // row 2, block 0: not finite
        x[2 * k + 40] = f32::NAN; // row 2, block 1
        x[3 * k..3 * k + 32].fill(1e-38); // row 3, block 0: below 1e-30
        for (i, v) in x[4 * k..5 * k].iter_mut().enumerate() {
            *v = if i % 32 == 0 {
                127.0
            } else {
                (i % 7) as f32 - 3.5
            }; // ties
        }
        x[5 * k..5 * k + 32].fill(-2.0); // row 5, block 0: all at −max
        let portable = QuantActs::new_with(Isa::Portable, &x, 6, k);
        assert_eq!(
            portable.dx[2 * 18..2 * 18 + 2]
                .iter()
                .filter(|d| d.is_nan())
                .count(),
            2
        );
        assert!(portable.dx[2 * 18 + 2..]
            .iter()
            .take(16)
            .all(|d| d.is_finite()));
        assert_eq!(portable.dx[3 * 18], 0.0);
        assert!(portable.xq[5 * k..5 * k + 32].iter().all(|&q| q == -127));
        // Ties round to even: 0.5 → 0, 1.5 → 2, 2.5 → 2, −3.5 → −4.
        assert_eq!(
            &portable.xq[4 * k + 1..4 * k + 8],
            &[-2, -2, 0, 0, 2, 2, -4]
        );
        assert!(portable.xq.iter().all(|&q| q >= -127));
        for isa in isas() {
            let a = QuantActs::new_with(isa, &x, 6, k);
            assert_eq!(a.xq, portable.xq, "{isa:?}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.dx), bits(&portable.dx), "{isa:?}");
            assert_eq!(bits(&a.s), bits(&portable.s), "{isa:?}");
        }
    }

    #[test]
    fn f16_conversion_matches_half_for_every_finite_value() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h);
            if want.is_finite() {
                assert_eq!(f16_to_f32(h).to_bits(), want.to_f32().to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn q4_1_weights_come_back_exactly() {
        let mut rng = Rng(11);
        let (out, k) = (37, 96);
        let mut w = vec![0f32; out * k];
        for blk in w.chunks_mut(QK) {
            let d = f16::from_f32(rng.next().abs() * 0.01 + 1e-4).to_f32();
            let m = f16::from_f32(-7.5 * d + rng.next() * 0.002).to_f32();
            for (t, v) in blk.iter_mut().enumerate() {
                // q = 0 and q = 15 present in every block, as in a Q4_1 block.
                let q = match t {
                    3 => 0,
                    17 => 15,
                    _ => ((rng.next() + 1.0) * 8.0) as u32 % 16,
                };
                *v = d * q as f32 + m;
            }
        }
        let p = PackedQ4::quantize(&w, out, k).unwrap();
        let back = p.dequantize();
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            assert!((a - b).abs() <= 1e-6 * a.abs(), "w[{i}]: {a} → {b}");
        }
        // Constant blocks (d = 0) too.
        let c = vec![0.25f32; 2 * 64];
        let back = PackedQ4::quantize(&c, 2, 64).unwrap().dequantize();
        assert_eq!(back, c);
    }

    #[test]
    fn shapes_and_sizes() {
        assert!(PackedQ4::quantize(&[0.0; 33], 1, 33).is_none());
        assert!(PackedQ4::quantize(&[0.0; 48 * 2], 2, 48).is_none());
        assert!(PackedQ4::quantize(&[0.0; 31], 1, 32).is_none());
        assert!(PackedQ4::quantize(&[], 0, 32).is_none());
        let mut w = vec![0.0f32; 64];
        w[5] = f32::NAN;
        assert!(PackedQ4::quantize(&w, 2, 32).is_none());
        w[5] = 1e6;
        assert!(PackedQ4::quantize(&w, 2, 32).is_none());
        let p = PackedQ4::quantize(&vec![0.5; 576 * 1536], 1536, 576).unwrap();
        assert_eq!((p.out(), p.k()), (1536, 576));
        // 5 bits a weight.
        assert!(p.bytes() >= 1536 * 576 * 5 / 8 && p.bytes() < 1536 * 576 * 5 / 8 + 256);
        assert!(["avx512-vnni", "avx2", "portable"].contains(&isa()));
    }

    #[test]
    fn large_shapes_on_the_pool_match_single_rows_on_the_calling_thread() {
        // Rows are independent: a 130-row call on the thread pool equals one-row calls.
        let mut rng = Rng(21);
        let (rows, out, k) = (130, 1000, 576);
        let w = rng.vec(out * k, 0.05);
        let x = rng.vec(rows * k, 1.0);
        let p = PackedQ4::quantize(&w, out, k).unwrap();
        // Packed on the pool, the same weights as one row packed on the calling thread.
        let wq = p.dequantize();
        for o in [0, 15, 16, 500, 999] {
            let one = PackedQ4::quantize(&w[o * k..(o + 1) * k], 1, k).unwrap();
            assert_eq!(&wq[o * k..(o + 1) * k], &one.dequantize()[..], "row {o}");
        }
        for isa in isas() {
            let mut y = vec![0f32; rows * out];
            p.matmul_with(isa, &x, rows, &mut y);
            let mut y1 = vec![0f32; out];
            for r in [0, 1, 7, 8, 63, 129] {
                p.matmul_with(isa, &x[r * k..(r + 1) * k], 1, &mut y1);
                assert_eq!(&y[r * out..(r + 1) * out], &y1[..], "{isa:?} row {r}");
            }
        }
    }

    #[test]
    fn non_finite_activations_give_nan_not_a_quiet_number() {
        let mut rng = Rng(3);
        let (rows, out, k) = (2, 20, 64);
        let p = PackedQ4::quantize(&rng.vec(out * k, 0.05), out, k).unwrap();
        let mut x = rng.vec(rows * k, 1.0);
        x[k + 40] = f32::NAN;
        for isa in isas() {
            let mut y = vec![0f32; rows * out];
            p.matmul_with(isa, &x, rows, &mut y);
            assert!(y[..out].iter().all(|v| v.is_finite()), "{isa:?}");
            assert!(y[out..].iter().all(|v| v.is_nan()), "{isa:?}");
        }
        // Zero activations give zeros.
        let mut y = vec![1f32; out];
        p.matmul(&vec![0.0; k], 1, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
