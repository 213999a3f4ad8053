//! Causal attention of one sequence on plain slices, on candle's one thread pool (candle's own
//! matmul would bring in a second pool, rayon's, and on two cores the two pools' spinning
//! threads starve each other: 20 greedy tokens took 0.3 to 5.6 s from run to run).
//!
//! Layouts are the hook points' own: `q` `[len, heads, d_head]`, `k` and `v`
//! `[keys, kv_heads, d_head]` (keys after rotary embedding), `z` `[len, heads, d_head]`; query
//! `i` sits at absolute position `offset + i` and sees keys `j ≤ offset + i`. Query head `h`
//! reads kv head `h / (heads / kv_heads)` (grouped-query attention).
//!
//! Two ways, with the same arithmetic (so the same bits):
//! - [`attend`] holds one block's rows of scores per thread (at most 12 rows, or one per query
//!   head of a kv head when there are more): memory O(keys), not O(heads · len · keys). Used when nobody records or edits the scores or the pattern.
//! - [`scores`], then the caller's hooks, [`softmax_rows`], hooks again, then [`mix`]: the
//!   `[heads, len, keys]` matrices materialised for the hooks.
//!
//! A masked score is `-inf`; its weight is exactly 0, so the fused way skipping masked keys and
//! the materialised way adding their zeros give identical sums.

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub len: usize,
    pub keys: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d_head: usize,
    /// Absolute position of query 0.
    pub offset: usize,
    /// Multiplies every score (1/√d_head).
    pub scale: f32,
}

impl Dims {
    /// Keys query `i` may see.
    fn visible(&self, i: usize) -> usize {
        (self.offset + i + 1).min(self.keys)
    }

    /// Panics unless `q` and `k` (and `v`, when given) have these shapes.
    fn check(&self, q: &[f32], k: &[f32], v: Option<&[f32]>) {
        let Dims {
            len,
            keys,
            heads,
            kv_heads,
            d_head,
            ..
        } = *self;
        assert!(
            kv_heads > 0 && heads.is_multiple_of(kv_heads),
            "{heads} heads over {kv_heads} kv heads"
        );
        assert_eq!(q.len(), len * heads * d_head, "q");
        assert_eq!(k.len(), keys * kv_heads * d_head, "k");
        if let Some(v) = v {
            assert_eq!(v.len(), keys * kv_heads * d_head, "v");
        }
    }
}

/// Lane sums in one fixed order, `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`: the order the AVX2
/// kernels' horizontal adds take, so every instruction set gives the same bits.
#[inline]
fn reduce8(l: [f32; 8]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` to about 1 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial in `r`, times
/// `2^n`), written so the AVX2 version computes the same bits; `0` below −87.34 (so `e^−∞ = 0`
/// exactly: a masked key weighs nothing), NaN stays NaN.
#[inline]
fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let x = x.min(EXP_HI);
    let n = x.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let z = r * r;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(z, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Which way the row kernels run: AVX-512 where the machine has it, else AVX2 + FMA, else
/// portable; all give the same bits (tested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

fn way() -> Way {
    #[cfg(target_arch = "x86_64")]
    {
        use super::f32::Isa;
        if Isa::Avx512.available() && Isa::Avx2Fma.available() {
            return Way::Avx512;
        }
        if Isa::Avx2Fma.available() {
            return Way::Avx2;
        }
    }
    Way::Portable
}

/// Query rows computed together, at most (when one kv head serves more query heads than this,
/// a block is one position of each). A block is a few positions of every query head that reads
/// the same kv head (grouped-query attention), so each key and value loaded serves them all.
const BLOCK_ROWS: usize = 12;
/// Rows per call of the AVX2 kernels (their 16 registers hold 4 × 2 accumulators).
const ROWS_AVX2: usize = 4;
/// Keys per step of the score kernels (one AVX-512 vector, two AVX2 ones).
const KEYS: usize = 16;
/// Blocks per unit of parallel work.
const UNIT_BLOCKS: usize = 4;

/// `k` `[keys, kv_heads, d_head]` laid out in tiles of [`KEYS`] keys, each tile's dimensions one
/// after another: `[kv_heads][keys' / KEYS][d_head][KEYS]`, `keys'` rounded up to a multiple of
/// `KEYS` with zeros. The score kernel reads one tile (4 KB at d_head 64) front to back; a
/// dimension-major layout put the 64 rows it reads 16 KB apart, in the same few cache sets.
struct KeysT {
    data: Vec<f32>,
    /// `keys'`.
    stride: usize,
    d_head: usize,
}

impl KeysT {
    fn new(d: &Dims, k: &[f32]) -> Self {
        let (dh, kv) = (d.d_head, d.kv_heads);
        let stride = d.keys.div_ceil(KEYS) * KEYS;
        let mut data = vec![0f32; kv * dh * stride];
        for j in 0..d.keys {
            let (t, lane) = (j / KEYS, j % KEYS);
            for g in 0..kv {
                let src = &k[(j * kv + g) * dh..][..dh];
                let tile = (g * (stride / KEYS) + t) * dh * KEYS;
                for (e, &x) in src.iter().enumerate() {
                    data[tile + e * KEYS + lane] = x;
                }
            }
        }
        KeysT {
            data,
            stride,
            d_head: dh,
        }
    }

    /// The tile of kv head `g` holding keys `j0..j0 + KEYS` (`j0` a multiple of `KEYS`):
    /// `[d_head][KEYS]`.
    fn tile(&self, g: usize, j0: usize) -> &[f32] {
        let n = self.d_head * KEYS;
        &self.data[(g * (self.stride / KEYS) + j0 / KEYS) * n..][..n]
    }

    /// Dimension `e` of key `j` of kv head `g`.
    fn at(&self, g: usize, j: usize, e: usize) -> f32 {
        self.tile(g, j - j % KEYS)[e * KEYS + j % KEYS]
    }
}

/// The query rows of one block: `(head, query)` pairs, every head reading kv head `g`.
#[derive(Clone, Debug)]
struct Block {
    g: usize,
    rows: Vec<(usize, usize)>,
}

impl Block {
    /// Queries `queries` of every head of kv head `g`, head-major.
    fn new(d: &Dims, g: usize, queries: std::ops::Range<usize>) -> Self {
        let per = d.heads / d.kv_heads;
        let rows = (g * per..(g + 1) * per)
            .flat_map(|h| queries.clone().map(move |i| (h, i)))
            .collect();
        Block { g, rows }
    }

    /// Keys the block's rows may see, at most.
    fn keys(&self, d: &Dims) -> usize {
        self.rows
            .iter()
            .map(|&(_, i)| d.visible(i))
            .max()
            .unwrap_or(0)
    }
}

/// Positions per block for these dims (so a block has at most [`BLOCK_ROWS`] rows, or one
/// position when a kv head serves more heads than that).
fn positions(d: &Dims) -> usize {
    (BLOCK_ROWS / (d.heads / d.kv_heads)).max(1)
}

/// Row `i` of query head `h`.
fn q_row<'q>(d: &Dims, q: &'q [f32], (h, i): (usize, usize)) -> &'q [f32] {
    &q[(i * d.heads + h) * d.d_head..][..d.d_head]
}

/// Scores of `rows` (of kv head `g`) against keys `0..n`, scaled, into `out[r][..n]`. Each score
/// is a fused multiply-add chain over the dimensions in order, times the scale: the same bits
/// however rows and keys are grouped, and on every instruction set. Masked keys are the
/// caller's business.
#[allow(clippy::too_many_arguments)]
fn score_rows(
    way: Way,
    d: &Dims,
    q: &[f32],
    kt: &KeysT,
    g: usize,
    rows: &[(usize, usize)],
    n: usize,
    out: &mut [&mut [f32]],
) {
    debug_assert!(n <= kt.stride && out.len() == rows.len());
    let dh = d.d_head;
    let qs: Vec<&[f32]> = rows.iter().map(|&r| q_row(d, q, r)).collect();
    let mut j0 = 0;
    #[cfg(target_arch = "x86_64")]
    if way != Way::Portable {
        let step = if way == Way::Avx512 {
            BLOCK_ROWS
        } else {
            ROWS_AVX2
        };
        while j0 < n {
            let take = KEYS.min(n - j0);
            let tile_k = kt.tile(g, j0);
            for (qs, out) in qs.chunks(step).zip(out.chunks_mut(step)) {
                let mut tile = [[0f32; KEYS]; BLOCK_ROWS];
                // SAFETY: the machine has the way's instructions; every q row holds d_head
                // values and the key tile d_head · KEYS.
                unsafe {
                    if way == Way::Avx512 {
                        avx512::score_tile(qs, tile_k, dh, d.scale, &mut tile)
                    } else {
                        avx2::score_tile(qs, tile_k, dh, d.scale, &mut tile)
                    }
                }
                for (o, t) in out.iter_mut().zip(&tile) {
                    o[j0..j0 + take].copy_from_slice(&t[..take]);
                }
            }
            j0 += KEYS;
        }
        return;
    }
    let _ = (way, &mut j0);
    for (qi, o) in qs.iter().zip(out.iter_mut()) {
        for (j, o) in o[..n].iter_mut().enumerate() {
            let mut acc = 0f32;
            for (e, &x) in qi.iter().enumerate() {
                acc = x.mul_add(kt.at(g, j, e), acc);
            }
            *o = acc * d.scale;
        }
    }
}

/// `softmax` of one row in place: `exp(x − max) / Σ`, the sum in 8 lanes (`j % 8`) then
/// [`reduce8`], so that a row and the same row with masked (`−∞`) keys after it give the same
/// bits.
fn softmax_row_with(way: Way, row: &mut [f32]) {
    let mut lanes = [0f32; 8];
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if way != Way::Portable {
        // SAFETY: the machine has AVX2 and FMA (every way but the portable one).
        let max = unsafe { avx2::max(row) };
        // SAFETY: as above.
        done = unsafe { avx2::exp_sub_sum(row, max, &mut lanes) };
        if done < row.len() {
            // The last few in one more group, padded with −∞ (weighing exactly 0).
            let mut tail = [f32::NEG_INFINITY; 8];
            let rest = row.len() - done;
            tail[..rest].copy_from_slice(&row[done..]);
            // SAFETY: as above.
            unsafe { avx2::exp_sub_sum(&mut tail, max, &mut lanes) };
            row[done..].copy_from_slice(&tail[..rest]);
            done = row.len();
        }
    }
    if done < row.len() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (j, x) in row.iter_mut().enumerate().skip(done) {
            *x = exp(*x - max);
            lanes[j % 8] += *x;
        }
    }
    let _ = way;
    let sum = reduce8(lanes);
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// `z[r] = Σ_{j < n} ps[r][j] · v[j, g]` for the rows of kv head `g` (a fused multiply-add chain
/// per element, keys in order: the same bits however rows are grouped). Keys past a row's own
/// visible ones must weigh 0 in `ps` (0 · v adds nothing).
fn mix_rows(
    way: Way,
    d: &Dims,
    ps: &[&[f32]],
    n: usize,
    v: &[f32],
    g: usize,
    z: &mut [&mut [f32]],
) {
    let dh = d.d_head;
    let vstride = d.kv_heads * dh;
    let v = &v[g * dh..];
    #[cfg(target_arch = "x86_64")]
    if way != Way::Portable && dh.is_multiple_of(16) {
        // AVX-512: 6 rows × 64 values (24 accumulators) where d_head allows, else 12 × 16.
        let (rows, cols) = match way {
            Way::Avx512 if dh.is_multiple_of(64) => (6, 64),
            Way::Avx512 => (BLOCK_ROWS, 16),
            _ => (ROWS_AVX2, 16),
        };
        for (ps, z) in ps.chunks(rows).zip(z.chunks_mut(rows)) {
            for c in (0..dh).step_by(cols) {
                let mut tile = [[0f32; 64]; BLOCK_ROWS];
                // SAFETY: the machine has the way's instructions; key j's values lie at
                // j · vstride (from kv head g), c + cols ≤ d_head, every p row holds n values.
                unsafe {
                    match (way, cols) {
                        (Way::Avx512, 64) => {
                            avx512::mix_tile::<4>(ps, &v[c..], vstride, n, &mut tile)
                        }
                        (Way::Avx512, _) => {
                            avx512::mix_tile::<1>(ps, &v[c..], vstride, n, &mut tile)
                        }
                        _ => avx2::mix_tile(ps, &v[c..], vstride, n, &mut tile),
                    }
                }
                for (zr, t) in z.iter_mut().zip(&tile) {
                    zr[c..c + cols].copy_from_slice(&t[..cols]);
                }
            }
        }
        return;
    }
    let _ = way;
    for (p, zr) in ps.iter().zip(z.iter_mut()) {
        zr.fill(0.0);
        for (j, &w) in p[..n].iter().enumerate() {
            let vj = &v[j * vstride..][..dh];
            for (zd, &vd) in zr.iter_mut().zip(vj) {
                *zd = w.mul_add(vd, *zd);
            }
        }
    }
}

/// The row kernels in AVX-512, the same operations in the same order as the portable ones.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK_ROWS, KEYS};
    use std::arch::x86_64::*;

    /// Scores of up to [`BLOCK_ROWS`] query rows × [`KEYS`] keys (`k`: one key tile,
    /// `[d_head][KEYS]`), each a fused multiply-add chain over the dimensions in order, times
    /// `scale`, into `tile[r]`.
    ///
    /// # Safety
    /// AVX-512F; every row of `qs` holds `dh` values, `k` holds `dh · KEYS`.
    pub unsafe fn score_tile(
        qs: &[&[f32]],
        k: &[f32],
        dh: usize,
        scale: f32,
        tile: &mut [[f32; KEYS]; BLOCK_ROWS],
    ) {
        debug_assert!(qs.len() <= BLOCK_ROWS && k.len() >= dh * KEYS);
        unsafe {
            match qs.len() {
                9.. => score::<12>(qs, k.as_ptr(), dh, scale, tile),
                5..=8 => score::<8>(qs, k.as_ptr(), dh, scale, tile),
                _ => score::<4>(qs, k.as_ptr(), dh, scale, tile),
            }
        }
    }

    /// `R` rows, the missing ones repeating the last (their results are not read).
    #[target_feature(enable = "avx512f")]
    unsafe fn score<const R: usize>(
        qs: &[&[f32]],
        k: *const f32,
        dh: usize,
        scale: f32,
        tile: &mut [[f32; KEYS]; BLOCK_ROWS],
    ) {
        unsafe {
            let q: [*const f32; R] = std::array::from_fn(|r| qs[r.min(qs.len() - 1)].as_ptr());
            let mut acc = [_mm512_setzero_ps(); R];
            for e in 0..dh {
                let ke = _mm512_loadu_ps(k.add(e * KEYS));
                for (a, q) in acc.iter_mut().zip(&q) {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(e)), ke, *a);
                }
            }
            let scale = _mm512_set1_ps(scale);
            for (t, a) in tile.iter_mut().zip(&acc) {
                _mm512_storeu_ps(t.as_mut_ptr(), _mm512_mul_ps(*a, scale));
            }
        }
    }

    /// The mix of up to 12 rows (6 when `C` is 4) × `16 · C` values:
    /// `Σ_{j < n} ps[r][j] · v[j · stride..][..16 · C]`, a fused multiply-add chain per value,
    /// keys in order, into `tile[r]`.
    ///
    /// # Safety
    /// AVX-512F; every row of `ps` holds `n` values, `v` holds key `j`'s `16 · C` values at
    /// `j · stride`.
    pub unsafe fn mix_tile<const C: usize>(
        ps: &[&[f32]],
        v: &[f32],
        stride: usize,
        n: usize,
        tile: &mut [[f32; 64]; BLOCK_ROWS],
    ) {
        debug_assert!(C == 1 || C == 4);
        debug_assert!(!ps.is_empty() && ps.len() <= if C == 4 { 6 } else { BLOCK_ROWS });
        debug_assert!(n == 0 || v.len() >= (n - 1) * stride + 16 * C);
        unsafe {
            match (C, ps.len()) {
                (4, 5..) => mix::<6, C>(ps, v.as_ptr(), stride, n, tile),
                (4, 3..=4) => mix::<4, C>(ps, v.as_ptr(), stride, n, tile),
                (4, _) => mix::<2, C>(ps, v.as_ptr(), stride, n, tile),
                (_, 9..) => mix::<12, C>(ps, v.as_ptr(), stride, n, tile),
                (_, 5..=8) => mix::<8, C>(ps, v.as_ptr(), stride, n, tile),
                _ => mix::<4, C>(ps, v.as_ptr(), stride, n, tile),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn mix<const R: usize, const C: usize>(
        ps: &[&[f32]],
        v: *const f32,
        stride: usize,
        n: usize,
        tile: &mut [[f32; 64]; BLOCK_ROWS],
    ) {
        unsafe {
            let p: [*const f32; R] = std::array::from_fn(|r| ps[r.min(ps.len() - 1)].as_ptr());
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            for j in 0..n {
                let vj = v.add(j * stride);
                let vs: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(vj.add(16 * c)));
                for (a, p) in acc.iter_mut().zip(&p) {
                    let w = _mm512_set1_ps(*p.add(j));
                    for (a, v) in a.iter_mut().zip(&vs) {
                        *a = _mm512_fmadd_ps(w, *v, *a);
                    }
                }
            }
            for (t, a) in tile.iter_mut().zip(&acc) {
                for (c, a) in a.iter().enumerate() {
                    _mm512_storeu_ps(t.as_mut_ptr().add(16 * c), *a);
                }
            }
        }
    }
}

/// The row kernels in AVX2 + FMA, the same operations in the same order as the portable ones.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK_ROWS, KEYS, ROWS_AVX2};
    use std::arch::x86_64::*;

    /// Scores of up to [`ROWS_AVX2`] query rows × [`KEYS`] keys (`k`: one key tile,
    /// `[d_head][KEYS]`), each a fused multiply-add chain over the dimensions in order, times
    /// `scale`, into `tile[r]`.
    ///
    /// # Safety
    /// AVX2 and FMA; every row of `qs` holds `dh` values, `k` holds `dh · KEYS`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn score_tile(
        qs: &[&[f32]],
        k: &[f32],
        dh: usize,
        scale: f32,
        tile: &mut [[f32; KEYS]; BLOCK_ROWS],
    ) {
        debug_assert!(!qs.is_empty() && qs.len() <= ROWS_AVX2 && k.len() >= dh * KEYS);
        unsafe {
            let q: [*const f32; ROWS_AVX2] =
                std::array::from_fn(|r| qs[r.min(qs.len() - 1)].as_ptr());
            let mut acc = [[_mm256_setzero_ps(); 2]; ROWS_AVX2];
            let k = k.as_ptr();
            for e in 0..dh {
                let ke = k.add(e * KEYS);
                let (k0, k1) = (_mm256_loadu_ps(ke), _mm256_loadu_ps(ke.add(8)));
                for (a, q) in acc.iter_mut().zip(&q) {
                    let qe = _mm256_set1_ps(*q.add(e));
                    a[0] = _mm256_fmadd_ps(qe, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qe, k1, a[1]);
                }
            }
            let scale = _mm256_set1_ps(scale);
            for (t, a) in tile.iter_mut().zip(&acc) {
                _mm256_storeu_ps(t.as_mut_ptr(), _mm256_mul_ps(a[0], scale));
                _mm256_storeu_ps(t.as_mut_ptr().add(8), _mm256_mul_ps(a[1], scale));
            }
        }
    }

    /// The largest value of `row` (NaNs ignored, as `f32::max` does; `−∞` when empty).
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max(row: &[f32]) -> f32 {
        unsafe {
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                // `max_ps(x, m)` is `m` where `x` is NaN: NaNs never enter.
                m = _mm256_max_ps(_mm256_loadu_ps(c.as_ptr()), m);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            lanes
                .into_iter()
                .chain(chunks.remainder().iter().copied())
                .fold(f32::NEG_INFINITY, f32::max)
        }
    }

    /// [`super::exp`] of 8 values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
        let under = _mm256_cmp_ps(x, _mm256_set1_ps(super::EXP_LO), _CMP_LT_OQ);
        let x = _mm256_min_ps(_mm256_set1_ps(super::EXP_HI), x);
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(super::LOG2E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-super::LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-super::LN2_LO), r);
        let z = _mm256_mul_ps(r, r);
        let mut p = _mm256_set1_ps(super::EXP_P[0]);
        for &c in &super::EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, z, r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
        let e = _mm256_andnot_ps(under, e);
        _mm256_blendv_ps(e, x, nan)
    }

    /// `x = exp(x − max)` over whole groups of 8, each added into its lane; returns how many
    /// it did.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum(row: &mut [f32], max: f32, lanes: &mut [f32; 8]) -> usize {
        let groups = row.len() / 8;
        let m = _mm256_set1_ps(max);
        let mut sum = _mm256_loadu_ps(lanes.as_ptr());
        for gi in 0..groups {
            let at = row.as_mut_ptr().add(gi * 8);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(at), m));
            _mm256_storeu_ps(at, e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        groups * 8
    }

    /// The mix of up to [`ROWS_AVX2`] rows × 16 values: `Σ_{j < n} ps[r][j] · v[j · stride..][..16]`,
    /// a fused multiply-add chain per value, keys in order, into `tile[r]`.
    ///
    /// # Safety
    /// AVX2 and FMA; every row of `ps` holds `n` values, `v` holds key `j`'s 16 values at
    /// `j · stride`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn mix_tile(
        ps: &[&[f32]],
        v: &[f32],
        stride: usize,
        n: usize,
        tile: &mut [[f32; 64]; BLOCK_ROWS],
    ) {
        debug_assert!(!ps.is_empty() && ps.len() <= ROWS_AVX2);
        debug_assert!(n == 0 || v.len() >= (n - 1) * stride + 16);
        unsafe {
            let p: [*const f32; ROWS_AVX2] =
                std::array::from_fn(|r| ps[r.min(ps.len() - 1)].as_ptr());
            let mut acc = [[_mm256_setzero_ps(); 2]; ROWS_AVX2];
            for j in 0..n {
                let vj = v.as_ptr().add(j * stride);
                let (v0, v1) = (_mm256_loadu_ps(vj), _mm256_loadu_ps(vj.add(8)));
                for (a, p) in acc.iter_mut().zip(&p) {
                    let w = _mm256_set1_ps(*p.add(j));
                    a[0] = _mm256_fmadd_ps(w, v0, a[0]);
                    a[1] = _mm256_fmadd_ps(w, v1, a[1]);
                }
            }
            for (t, a) in tile.iter_mut().zip(&acc) {
                _mm256_storeu_ps(t.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), a[1]);
            }
        }
    }
}

/// Runs `f(block)` over every block of query rows on the pool, [`UNIT_BLOCKS`] blocks of one kv
/// head per unit of work.
fn for_blocks(d: &Dims, work: usize, f: impl Fn(&Block) + Sync) {
    let pos = positions(d);
    let blocks = d.len.div_ceil(pos);
    let chunks = blocks.div_ceil(UNIT_BLOCKS);
    let units = d.kv_heads * chunks;
    let unit = |u: usize| {
        let (g, c) = (u / chunks, u % chunks);
        for b in c * UNIT_BLOCKS..blocks.min((c + 1) * UNIT_BLOCKS) {
            f(&Block::new(d, g, b * pos..d.len.min((b + 1) * pos)));
        }
    };
    if work < 1 << 15 {
        (0..units).for_each(unit);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(units, |r| r.for_each(unit));
    }
}

/// A raw pointer that units write disjoint parts of.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every unit writes a disjoint set of elements, and the buffer outlives the pool call.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// `n` elements from `i`.
    ///
    /// # Safety
    /// They lie inside the buffer and are the caller's alone while the slice lives.
    unsafe fn slice<'a>(&self, i: usize, n: usize) -> &'a mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(i), n) }
    }
}

/// The output rows of a block's `(head, query)` rows in `z` `[len, heads, d_head]`.
///
/// # Safety
/// Those rows must be the caller's alone while the slices live, inside `z`'s buffer.
unsafe fn z_rows<'a>(out: Out, d: &Dims, rows: &[(usize, usize)]) -> Vec<&'a mut [f32]> {
    rows.iter()
        .map(|&(h, i)| unsafe { out.slice((i * d.heads + h) * d.d_head, d.d_head) })
        .collect()
}

thread_local! {
    /// A pool thread's rows of scores for [`attend`], kept between blocks and calls (a fresh
    /// buffer per block cost page faults and zeroing).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Fused causal attention: `z` `[len, heads, d_head]` from `q`, `k`, `v` without holding the
/// score matrices (a unit holds one block's rows of scores at a time: O(keys), not O(len · keys)).
pub fn attend(d: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    d.check(q, k, Some(v));
    let way = way();
    let kt = KeysT::new(d, k);
    let mut z = vec![0f32; d.len * d.heads * d.d_head];
    let out = Out(z.as_mut_ptr());
    let stride = kt.stride;
    for_blocks(d, d.len * d.keys * d.heads * d.d_head, |b| {
        let n = b.keys(d);
        SCRATCH.with_borrow_mut(|buf| {
            let need = b.rows.len() * stride;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            let mut rows: Vec<&mut [f32]> = buf[..need].chunks_mut(stride).collect();
            score_rows(way, d, q, &kt, b.g, &b.rows, n, &mut rows);
            for (row, &(_, i)) in rows.iter_mut().zip(&b.rows) {
                let nr = d.visible(i);
                softmax_row_with(way, &mut row[..nr]);
                row[nr..n].fill(0.0);
            }
            let ps: Vec<&[f32]> = rows.iter().map(|r| &r[..n]).collect();
            // SAFETY: the block's rows of z are its own.
            let mut zs = unsafe { z_rows(out, d, &b.rows) };
            mix_rows(way, d, &ps, n, v, b.g, &mut zs);
        });
    });
    z
}

/// The scaled, masked scores `[heads, len, keys]` (`-inf` where a query may not look).
pub fn scores(d: &Dims, q: &[f32], k: &[f32]) -> Vec<f32> {
    d.check(q, k, None);
    let way = way();
    let kt = KeysT::new(d, k);
    let keys = d.keys;
    let mut s = vec![f32::NEG_INFINITY; d.heads * d.len * keys];
    let out = Out(s.as_mut_ptr());
    for_blocks(d, d.len * keys * d.heads * d.d_head, |b| {
        let n = b.keys(d);
        // SAFETY: rows (h, i) of the block are its own.
        let mut rows: Vec<&mut [f32]> = b
            .rows
            .iter()
            .map(|&(h, i)| unsafe { out.slice((h * d.len + i) * keys, keys) })
            .collect();
        score_rows(way, d, q, &kt, b.g, &b.rows, n, &mut rows);
        for (row, &(_, i)) in rows.iter_mut().zip(&b.rows) {
            row[d.visible(i)..].fill(f32::NEG_INFINITY);
        }
    });
    s
}

/// Softmax over the last axis of `[rows, keys]`, in place.
pub fn softmax_rows(x: &mut [f32], keys: usize) {
    if keys == 0 {
        return;
    }
    let way = way();
    for row in x.chunks_mut(keys) {
        softmax_row_with(way, row);
    }
}

/// `z` `[len, heads, d_head]` from a pattern `[heads, len, keys]` (every key, as the hooks left
/// it) and `v`.
pub fn mix(d: &Dims, pattern: &[f32], v: &[f32]) -> Vec<f32> {
    let (dh, keys) = (d.d_head, d.keys);
    assert_eq!(pattern.len(), d.heads * d.len * keys, "pattern");
    assert_eq!(v.len(), keys * d.kv_heads * dh, "v");
    let way = way();
    let mut z = vec![0f32; d.len * d.heads * dh];
    let out = Out(z.as_mut_ptr());
    for_blocks(d, d.len * keys * d.heads * dh, |b| {
        let ps: Vec<&[f32]> = b
            .rows
            .iter()
            .map(|&(h, i)| &pattern[(h * d.len + i) * keys..][..keys])
            .collect();
        // SAFETY: the block's rows of z are its own.
        let mut zs = unsafe { z_rows(out, d, &b.rows) };
        mix_rows(way, d, &ps, keys, v, b.g, &mut zs);
    });
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-2, 2).
    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::model::kernels::test_values(n, seed)
            .into_iter()
            .map(|v| 2.0 * v)
            .collect()
    }

    /// Attention written the plain way in f64: scores, mask, softmax, weighted sum.
    fn reference(d: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let dh = d.d_head;
        let mut z = vec![0f64; d.len * d.heads * dh];
        for h in 0..d.heads {
            let g = h / (d.heads / d.kv_heads);
            for i in 0..d.len {
                let s: Vec<f64> = (0..d.keys)
                    .map(|j| {
                        if j > d.offset + i {
                            return f64::NEG_INFINITY;
                        }
                        (0..dh)
                            .map(|e| {
                                q[(i * d.heads + h) * dh + e] as f64
                                    * k[(j * d.kv_heads + g) * dh + e] as f64
                            })
                            .sum::<f64>()
                            * d.scale as f64
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for j in 0..d.keys {
                    for x in 0..dh {
                        z[(i * d.heads + h) * dh + x] +=
                            e[j] / sum * v[(j * d.kv_heads + g) * dh + x] as f64;
                    }
                }
            }
        }
        z
    }

    fn cases() -> Vec<Dims> {
        let d = |len, keys, heads, kv_heads, d_head, offset| Dims {
            len,
            keys,
            heads,
            kv_heads,
            d_head,
            offset,
            scale: 1.0 / (d_head as f32).sqrt(),
        };
        vec![
            d(1, 1, 1, 1, 4, 0),
            d(7, 7, 4, 2, 16, 0),
            d(40, 40, 9, 3, 64, 0),
            // A cached continuation step: one query after 29 earlier keys.
            d(1, 30, 9, 3, 64, 29),
            // A chunk of queries after a prefix.
            d(5, 12, 2, 1, 10, 7),
            // Longer than a group of 8 keys with a tail, on the pool (work past 2^15).
            d(77, 77, 9, 3, 64, 0),
            // d_head not a multiple of 16: the portable mix on every machine.
            d(19, 19, 2, 2, 24, 0),
            // One head per kv head (GPT-2): 12 queries per block.
            d(30, 30, 4, 4, 64, 0),
            // More heads per kv head than a block has rows: one query of each per block.
            d(9, 9, 16, 1, 16, 0),
            // d_head a multiple of 16 but not of 64: AVX-512's 12 × 16 mix.
            d(20, 20, 6, 2, 32, 3),
        ]
    }

    #[test]
    fn the_vector_exp_gives_the_scalar_bits_down_to_underflow() {
        // Every value from −100 to 90 in steps of about 1e-3, the edges exactly, −∞ and NaN.
        let mut xs: Vec<f32> = (0..190_000).map(|i| -100.0 + i as f32 * 1e-3).collect();
        xs.extend([EXP_LO, EXP_LO - 1e-5, EXP_LO + 1e-5, EXP_HI, 0.0, -0.0]);
        xs.extend([f32::NEG_INFINITY, f32::INFINITY, f32::NAN]);
        let mut lanes = [0f32; 8];
        let mut got = xs.clone();
        #[cfg(target_arch = "x86_64")]
        if way() != Way::Portable {
            // SAFETY: this machine has AVX2 and FMA.
            let done = unsafe { avx2::exp_sub_sum(&mut got, 0.0, &mut lanes) };
            for x in &mut got[done..] {
                *x = exp(*x);
            }
        }
        for (i, (&x, &g)) in xs.iter().zip(&got).enumerate() {
            let want = exp(x);
            if way() == Way::Portable {
                assert_eq!(
                    g.to_bits(),
                    x.to_bits(),
                    "nothing to compare on this machine"
                );
            } else {
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{i}: exp({x}) = {g} (vector) vs {want} (scalar)"
                );
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_and_exact_at_the_edges() {
        let mut x = -90.0f32;
        let mut worst = 0f64;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if want > 1.2e-38 {
                worst = worst.max((got - want).abs() / want);
            } else {
                assert!(got <= 1.2e-38, "{x}: {got}");
            }
            x += 0.001_7;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn every_instruction_set_and_every_grouping_of_rows_gives_the_same_bits() {
        let ways: Vec<Way> = [
            #[cfg(target_arch = "x86_64")]
            Way::Avx512,
            #[cfg(target_arch = "x86_64")]
            Way::Avx2,
            Way::Portable,
        ]
        .into_iter()
        .filter(|&w| match w {
            #[cfg(target_arch = "x86_64")]
            Way::Avx512 => way() == Way::Avx512,
            #[cfg(target_arch = "x86_64")]
            Way::Avx2 => way() != Way::Portable,
            Way::Portable => true,
        })
        .collect();
        assert!(ways.contains(&way()), "the machine's own way is tested");
        for (c, d) in cases().iter().enumerate() {
            let q = random(d.len * d.heads * d.d_head, 31 + c as u64);
            let k = random(d.keys * d.kv_heads * d.d_head, 41 + c as u64);
            let v = random(d.keys * d.kv_heads * d.d_head, 51 + c as u64);
            let kt = KeysT::new(d, &k);
            let per = d.heads / d.kv_heads;
            // Scores, pattern and z of every (head, query), computed `group` rows at a time,
            // the rows of a kv head taken head-major or query-major.
            let run = |w: Way, group: usize, query_major: bool| {
                let mut out = std::collections::BTreeMap::new();
                for g in 0..d.kv_heads {
                    let mut all: Vec<(usize, usize)> = (g * per..(g + 1) * per)
                        .flat_map(|h| (0..d.len).map(move |i| (h, i)))
                        .collect();
                    if query_major {
                        all.sort_by_key(|&(h, i)| (i, h));
                    }
                    for rows in all.chunks(group) {
                        let n = rows.iter().map(|&(_, i)| d.visible(i)).max().unwrap();
                        let mut buf = vec![vec![0f32; kt.stride]; rows.len()];
                        let mut outs: Vec<&mut [f32]> =
                            buf.iter_mut().map(|b| b.as_mut_slice()).collect();
                        score_rows(w, d, &q, &kt, g, rows, n, &mut outs);
                        let scores: Vec<Vec<f32>> = rows
                            .iter()
                            .zip(&buf)
                            .map(|(&(_, i), b)| b[..d.visible(i)].to_vec())
                            .collect();
                        for (b, &(_, i)) in buf.iter_mut().zip(rows) {
                            let nr = d.visible(i);
                            softmax_row_with(w, &mut b[..nr]);
                            b[nr..].fill(0.0);
                        }
                        let mut zs = vec![vec![f32::NAN; d.d_head]; rows.len()];
                        let mut zr: Vec<&mut [f32]> =
                            zs.iter_mut().map(|z| z.as_mut_slice()).collect();
                        let ps: Vec<&[f32]> = buf.iter().map(|b| &b[..n]).collect();
                        mix_rows(w, d, &ps, n, &v, g, &mut zr);
                        for (r, &(h, i)) in rows.iter().enumerate() {
                            let p = buf[r][..d.visible(i)].to_vec();
                            out.insert((h, i), (scores[r].clone(), p, zs[r].clone()));
                        }
                    }
                }
                assert_eq!(out.len(), d.heads * d.len);
                out
            };
            let want = run(Way::Portable, 1, false);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for &w in &ways {
                for group in 1..=BLOCK_ROWS + 2 {
                    for query_major in [false, true] {
                        let got = run(w, group, query_major);
                        for ((at, a), b) in got.iter().zip(want.values()) {
                            let at = format!("case {c} {at:?} {w:?} {group} rows at a time");
                            assert!(a.2.iter().all(|x| x.is_finite()), "{at}: z");
                            assert_eq!(bits(&a.0), bits(&b.0), "{at}: scores");
                            assert_eq!(bits(&a.1), bits(&b.1), "{at}: pattern");
                            assert_eq!(bits(&a.2), bits(&b.2), "{at}: z");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_vector_max_ignores_nans_like_f32_max() {
        #[cfg(target_arch = "x86_64")]
        if way() != Way::Portable {
            for len in [0, 1, 7, 8, 9, 33] {
                let mut row = random(len, len as u64);
                if len > 3 {
                    row[2] = f32::NAN;
                }
                let want = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // SAFETY: this machine has AVX2.
                let got = unsafe { avx2::max(&row) };
                assert_eq!(got.to_bits(), want.to_bits(), "length {len}");
            }
        }
    }

    #[test]
    fn fused_attention_matches_f64_and_the_materialised_path_bit_for_bit() {
        for (c, d) in cases().iter().enumerate() {
            let q = random(d.len * d.heads * d.d_head, 1 + c as u64);
            let k = random(d.keys * d.kv_heads * d.d_head, 11 + c as u64);
            let v = random(d.keys * d.kv_heads * d.d_head, 21 + c as u64);
            let fused = attend(d, &q, &k, &v);
            let want = reference(d, &q, &k, &v);
            for (i, (&got, &want)) in fused.iter().zip(&want).enumerate() {
                assert!(got.is_finite(), "case {c} at {i}: {got}");
                assert!(
                    (got as f64 - want).abs() <= 2e-6 + 2e-6 * want.abs(),
                    "case {c} at {i}: {got} vs {want}"
                );
            }
            let mut p = scores(d, &q, &k);
            // Masked scores are -inf, visible ones finite.
            for h in 0..d.heads {
                for i in 0..d.len {
                    for j in 0..d.keys {
                        let s = p[(h * d.len + i) * d.keys + j];
                        assert_eq!(
                            s.is_finite(),
                            j <= d.offset + i,
                            "case {c} mask at {h},{i},{j}"
                        );
                    }
                }
            }
            softmax_rows(&mut p, d.keys);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&mix(d, &p, &v)),
                bits(&fused),
                "case {c}: both ways give the same bits"
            );
        }
    }

    #[test]
    fn an_edited_pattern_is_what_the_mix_uses() {
        // Zeroing head 0's pattern zeroes its output; other heads are untouched.
        let d = cases()[2];
        let q = random(d.len * d.heads * d.d_head, 5);
        let k = random(d.keys * d.kv_heads * d.d_head, 6);
        let v = random(d.keys * d.kv_heads * d.d_head, 7);
        let mut p = scores(&d, &q, &k);
        softmax_rows(&mut p, d.keys);
        let before = mix(&d, &p, &v);
        p[..d.len * d.keys].fill(0.0);
        let after = mix(&d, &p, &v);
        for i in 0..d.len {
            for h in 0..d.heads {
                let at = (i * d.heads + h) * d.d_head;
                let (a, b) = (&after[at..at + d.d_head], &before[at..at + d.d_head]);
                if h == 0 {
                    assert!(a.iter().all(|&x| x == 0.0));
                } else {
                    assert_eq!(a, b);
                }
            }
        }
    }
}
