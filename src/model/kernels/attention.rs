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
//! - [`attend`] never holds more than one row of scores per thread: memory O(keys), not
//!   O(heads · len · keys). Used when nobody records or edits the scores or the pattern.
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
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }

    /// Keys query `i` may see.
    fn visible(&self, i: usize) -> usize {
        (self.offset + i + 1).min(self.keys)
    }

    fn check(&self, q: &[f32], k: &[f32], v: &[f32]) {
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
        assert_eq!(v.len(), keys * kv_heads * d_head, "v");
    }
}

/// Queries per unit of parallel work.
const QUERY_CHUNK: usize = 16;

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

/// Which way the row kernels run: AVX2 + FMA where the machine has it, else portable; both give
/// the same bits (tested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

fn way() -> Way {
    #[cfg(target_arch = "x86_64")]
    if super::f32::isa() == super::f32::Isa::Avx2Fma {
        return Way::Avx2;
    }
    Way::Portable
}

/// Rows (queries of one head) computed together: each K and V value loaded serves this many.
const ROWS: usize = 4;
/// Keys per step of the score kernel (two vectors of 8).
const KEYS: usize = 16;

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

/// Scores of queries `i0..i0 + rows` (`rows ≤ ROWS`) of head `h` against keys `0..n`, scaled,
/// into `out[r * stride + j]`. Each score is a fused multiply-add chain over the dimensions in
/// order, times the scale: the same bits however the rows and keys are grouped, and on every
/// instruction set. Masked keys are the caller's business.
#[allow(clippy::too_many_arguments)]
fn score_block(
    way: Way,
    d: &Dims,
    q: &[f32],
    kt: &KeysT,
    h: usize,
    i0: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
    stride: usize,
) {
    debug_assert!((1..=ROWS).contains(&rows) && n <= kt.stride);
    let dh = d.d_head;
    let g = d.kv_head(h);
    let qrow = |r: usize| &q[((i0 + r) * d.heads + h) * dh..][..dh];
    #[cfg(target_arch = "x86_64")]
    if way == Way::Avx2 {
        let qs: [&[f32]; ROWS] = std::array::from_fn(|r| qrow(r.min(rows - 1)));
        let mut j0 = 0;
        while j0 < n {
            let mut tile = [[0f32; KEYS]; ROWS];
            // SAFETY: the machine has AVX2 and FMA (`way`); every kt row holds keys
            // j0..j0 + KEYS (padded to a multiple of KEYS).
            unsafe { avx2::score_tile(&qs, kt, g, dh, j0, d.scale, &mut tile) };
            let take = KEYS.min(n - j0);
            for (r, t) in tile.iter().enumerate().take(rows) {
                out[r * stride + j0..][..take].copy_from_slice(&t[..take]);
            }
            j0 += KEYS;
        }
        return;
    }
    let _ = way;
    for r in 0..rows {
        let qi = qrow(r);
        for j in 0..n {
            let mut acc = 0f32;
            for (e, &x) in qi.iter().enumerate() {
                acc = x.mul_add(kt.at(g, j, e), acc);
            }
            out[r * stride + j] = acc * d.scale;
        }
    }
}

/// `softmax` of one row in place: `exp(x − max) / Σ`, the sum in 8 lanes (`j % 8`) then
/// [`reduce8`], so that a row and the same row with masked (`−∞`) keys after it give the same
/// bits.
fn softmax_row_with(way: Way, row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0f32; 8];
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if way == Way::Avx2 {
        // SAFETY: the machine has AVX2 and FMA (`way`).
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
    let _ = way;
    for (j, x) in row.iter_mut().enumerate().skip(done) {
        *x = exp(*x - max);
        lanes[j % 8] += *x;
    }
    let sum = reduce8(lanes);
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// `z[r] = Σ_{j < n} p[r · stride + j] · v[j, g]` for `rows ≤ ROWS` rows of head `h` (a fused
/// multiply-add chain per element, keys in order: the same bits however rows are grouped). Keys
/// past a row's own visible ones must weigh 0 in `p` (0 · v adds nothing).
#[allow(clippy::too_many_arguments)]
fn mix_block(
    way: Way,
    d: &Dims,
    p: &[f32],
    stride: usize,
    rows: usize,
    n: usize,
    v: &[f32],
    h: usize,
    z: &mut [&mut [f32]],
) {
    let dh = d.d_head;
    let g = d.kv_head(h);
    let vstride = d.kv_heads * dh;
    for zr in z.iter_mut() {
        zr.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if way == Way::Avx2 && dh.is_multiple_of(16) {
        let ps: [&[f32]; ROWS] = std::array::from_fn(|r| &p[r.min(rows - 1) * stride..][..n]);
        for c in (0..dh).step_by(16) {
            let mut tile = [[0f32; 16]; ROWS];
            // SAFETY: the machine has AVX2 and FMA (`way`); key j's values lie at
            // j · vstride + g · dh, and c + 16 ≤ dh.
            unsafe { avx2::mix_tile(&ps, &v[g * dh + c..], vstride, n, &mut tile) };
            for (r, zr) in z.iter_mut().enumerate().take(rows) {
                zr[c..c + 16].copy_from_slice(&tile[r]);
            }
        }
        return;
    }
    let _ = way;
    for (r, zr) in z.iter_mut().enumerate().take(rows) {
        for (j, &w) in p[r * stride..][..n].iter().enumerate() {
            let vj = &v[j * vstride + g * dh..][..dh];
            for (zd, &vd) in zr.iter_mut().zip(vj) {
                *zd = w.mul_add(vd, *zd);
            }
        }
    }
}

/// The row kernels in AVX2 + FMA, the same operations in the same order as the portable ones.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// A tile of scores: `ROWS` queries × `KEYS` keys from `j0` (kv head `g`), each a fused
    /// multiply-add chain over the dimensions in order, times `scale`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn score_tile(
        qs: &[&[f32]; super::ROWS],
        kt: &super::KeysT,
        g: usize,
        dh: usize,
        j0: usize,
        scale: f32,
        tile: &mut [[f32; super::KEYS]; super::ROWS],
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; super::ROWS];
        let tile_k = kt.tile(g, j0).as_ptr();
        for e in 0..dh {
            let k = tile_k.add(e * super::KEYS);
            let (k0, k1) = (_mm256_loadu_ps(k), _mm256_loadu_ps(k.add(8)));
            for (a, q) in acc.iter_mut().zip(qs) {
                let qe = _mm256_set1_ps(*q.get_unchecked(e));
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

    /// A tile of the mix: `ROWS` rows × 16 values, `Σ_{j < n} p[r][j] · v[j · stride..][..16]`,
    /// a fused multiply-add chain per value, keys in order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn mix_tile(
        ps: &[&[f32]; super::ROWS],
        v: &[f32],
        stride: usize,
        n: usize,
        tile: &mut [[f32; 16]; super::ROWS],
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; super::ROWS];
        for j in 0..n {
            let vj = v.as_ptr().add(j * stride);
            let (v0, v1) = (_mm256_loadu_ps(vj), _mm256_loadu_ps(vj.add(8)));
            for (a, p) in acc.iter_mut().zip(ps) {
                let w = _mm256_set1_ps(*p.get_unchecked(j));
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

/// Runs `f(head, queries)` over every head and chunk of queries on the pool.
fn for_units(d: &Dims, work: usize, f: impl Fn(usize, std::ops::Range<usize>) + Sync) {
    let chunks = d.len.div_ceil(QUERY_CHUNK);
    let units = d.heads * chunks;
    let unit = |u: usize| {
        let (h, c) = (u / chunks, u % chunks);
        f(h, c * QUERY_CHUNK..d.len.min((c + 1) * QUERY_CHUNK));
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
    /// The element `i` (a method, so closures capture the whole `Out`, which is `Sync`).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The output rows `i0..i0 + rows` of head `h` in `z` `[len, heads, d_head]`.
///
/// # Safety
/// Those rows must be the caller's alone while the slices live, inside `z`'s buffer.
unsafe fn z_rows<'a>(out: Out, d: &Dims, h: usize, i0: usize, rows: usize) -> Vec<&'a mut [f32]> {
    (0..rows)
        .map(|r| {
            std::slice::from_raw_parts_mut(out.at(((i0 + r) * d.heads + h) * d.d_head), d.d_head)
        })
        .collect()
}

/// Fused causal attention: `z` `[len, heads, d_head]` from `q`, `k`, `v` without holding the
/// score matrices (a unit holds [`ROWS`] rows of scores at a time).
pub fn attend(d: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    d.check(q, k, v);
    let way = way();
    let kt = KeysT::new(d, k);
    let mut z = vec![0f32; d.len * d.heads * d.d_head];
    let out = Out(z.as_mut_ptr());
    for_units(d, d.len * d.keys * d.heads * d.d_head, |h, queries| {
        let stride = kt.stride;
        let mut buf = vec![0f32; ROWS * stride];
        let mut i0 = queries.start;
        while i0 < queries.end {
            let rows = ROWS.min(queries.end - i0);
            // The last row sees the most keys.
            let n = d.visible(i0 + rows - 1);
            score_block(way, d, q, &kt, h, i0, rows, n, &mut buf, stride);
            for r in 0..rows {
                let nr = d.visible(i0 + r);
                let row = &mut buf[r * stride..][..n];
                softmax_row_with(way, &mut row[..nr]);
                row[nr..].fill(0.0);
            }
            // SAFETY: rows (i0.., h) belong to this unit alone.
            let mut zs = unsafe { z_rows(out, d, h, i0, rows) };
            mix_block(way, d, &buf, stride, rows, n, v, h, &mut zs);
            i0 += rows;
        }
    });
    z
}

/// The scaled, masked scores `[heads, len, keys]` (`-inf` where a query may not look).
pub fn scores(d: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    d.check(q, k, v);
    let way = way();
    let kt = KeysT::new(d, k);
    let keys = d.keys;
    let mut s = vec![f32::NEG_INFINITY; d.heads * d.len * keys];
    let out = Out(s.as_mut_ptr());
    for_units(d, d.len * keys * d.heads * d.d_head, |h, queries| {
        let mut i0 = queries.start;
        while i0 < queries.end {
            let rows = ROWS.min(queries.end - i0);
            let n = d.visible(i0 + rows - 1);
            // SAFETY: rows (h, i0..i0 + rows) are this unit's alone, consecutive in s.
            let block = unsafe {
                std::slice::from_raw_parts_mut(out.at((h * d.len + i0) * keys), rows * keys)
            };
            score_block(way, d, q, &kt, h, i0, rows, n, block, keys);
            for r in 0..rows {
                block[r * keys + d.visible(i0 + r)..(r + 1) * keys].fill(f32::NEG_INFINITY);
            }
            i0 += rows;
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
    for_units(d, d.len * keys * d.heads * dh, |h, queries| {
        let mut i0 = queries.start;
        while i0 < queries.end {
            let rows = ROWS.min(queries.end - i0);
            let p = &pattern[(h * d.len + i0) * keys..][..rows * keys];
            // SAFETY: rows (i0.., h) belong to this unit alone.
            let mut zs = unsafe { z_rows(out, d, h, i0, rows) };
            mix_block(way, d, p, keys, rows, keys, v, h, &mut zs);
            i0 += rows;
        }
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
        if way() == Way::Avx2 {
            // SAFETY: this machine has AVX2 and FMA.
            let done = unsafe { avx2::exp_sub_sum(&mut got, 0.0, &mut lanes) };
            for x in &mut got[done..] {
                *x = exp(*x);
            }
        }
        for (i, (&x, &g)) in xs.iter().zip(&got).enumerate() {
            let want = exp(x);
            if way() == Way::Portable {
                assert_eq!(g, x, "nothing to compare on this machine");
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
            Way::Avx2,
            Way::Portable,
        ]
        .into_iter()
        .filter(|w| *w == Way::Portable || way() == *w)
        .collect();
        for (c, d) in cases().iter().enumerate() {
            let q = random(d.len * d.heads * d.d_head, 31 + c as u64);
            let k = random(d.keys * d.kv_heads * d.d_head, 41 + c as u64);
            let v = random(d.keys * d.kv_heads * d.d_head, 51 + c as u64);
            let kt = KeysT::new(d, &k);
            // Scores, pattern and z of every (head, query), computed `group` rows at a time.
            let run = |w: Way, group: usize| {
                let mut out = Vec::new();
                for h in 0..d.heads {
                    let mut i0 = 0;
                    while i0 < d.len {
                        let rows = group.min(d.len - i0);
                        let n = d.visible(i0 + rows - 1);
                        let stride = kt.stride;
                        let mut buf = vec![0f32; rows * stride];
                        score_block(w, d, &q, &kt, h, i0, rows, n, &mut buf, stride);
                        let scores: Vec<Vec<f32>> = (0..rows)
                            .map(|r| buf[r * stride..][..d.visible(i0 + r)].to_vec())
                            .collect();
                        for r in 0..rows {
                            let nr = d.visible(i0 + r);
                            softmax_row_with(w, &mut buf[r * stride..][..nr]);
                            buf[r * stride + nr..(r + 1) * stride].fill(0.0);
                        }
                        let mut zs = vec![vec![0f32; d.d_head]; rows];
                        let mut zr: Vec<&mut [f32]> =
                            zs.iter_mut().map(|z| z.as_mut_slice()).collect();
                        mix_block(w, d, &buf, stride, rows, n, &v, h, &mut zr);
                        for r in 0..rows {
                            let nr = d.visible(i0 + r);
                            let p = buf[r * stride..][..nr].to_vec();
                            out.push((scores[r].clone(), p, zs[r].clone()));
                        }
                        i0 += rows;
                    }
                }
                out
            };
            let want = run(Way::Portable, 1);
            for &w in &ways {
                for group in 1..=ROWS {
                    let got = run(w, group);
                    for (r, (a, b)) in got.iter().zip(&want).enumerate() {
                        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let at = format!("case {c} row {r} {w:?} {group} rows at a time");
                        assert_eq!(bits(&a.0), bits(&b.0), "{at}: scores");
                        assert_eq!(bits(&a.1), bits(&b.1), "{at}: pattern");
                        assert_eq!(bits(&a.2), bits(&b.2), "{at}: z");
                    }
                }
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
            let mut p = scores(d, &q, &k, &v);
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
            assert_eq!(
                mix(d, &p, &v),
                fused,
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
        let mut p = scores(&d, &q, &k, &v);
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
