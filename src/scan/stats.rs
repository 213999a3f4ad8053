//! Streaming statistics of one layer's units (MLP neurons or heads) over a corpus, bounded in
//! memory whatever the corpus's length.
//!
//! Per unit:
//! - **top / lowest examples**: the K windows with the highest (lowest) activation, one example
//!   per window at its best position (earliest on a tie); ties between windows go to the earlier
//!   window. A size-K heap each.
//! - **histogram**: 50 bins of width 2^e anchored at 0 (bin b holds [b·2^e, (b+1)·2^e)); the
//!   window of 50 bins starts at a multiple of 5. It starts at e = −20 and doubles the width
//!   (merging bins) only when a value would fall outside, so the result is the histogram at the
//!   smallest such width that holds every value: exact, and independent of the order of the data.
//! - **quantile groups**: the 10 groups of 5 consecutive bins (equal-width activation intervals,
//!   as sae_vis's groups), each with a uniform reservoir sample of 5 positions; when bins merge,
//!   groups merge pairwise and their reservoirs are merged by drawing without replacement
//!   (weighted by the groups' counts), so each stays a uniform sample of its group. One pass.
//!   The draws come from a generator seeded per (unit, window) from the layer's seed, so the
//!   samples do not depend on how windows are batched or in which order units are visited.
//! - **density**: positions above the firing threshold; **mean**; min and max.
//! - **firing tokens**: a Space-Saving sketch of 32 counters over the tokens at firing
//!   positions (a count is at most `err` too high; any token firing more than
//!   fired/32 times is in it).
//!
//! Two ways in, with the same result: [`LayerStats::add_windows`] (the scan's: a batch of
//! windows, unit by unit, so each unit's state is loaded once per batch rather than once per
//! token) and [`LayerStats::add_window`] (one window, position by position: the plain reference
//! the other is tested against).

use super::Example;

pub const BINS: usize = 50;
pub const GROUPS: usize = 10;
pub const GROUP_BINS: usize = BINS / GROUPS;
/// The histogram's first bin width is 2^EXP0.
pub const EXP0: i32 = -20;
/// Values beyond this magnitude (or not finite) are left out of every statistic and counted.
pub const MAX_ABS: f32 = 1e12;

/// How big the per-unit state is.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sizes {
    pub k: usize,
    pub per_group: usize,
    pub sketch: usize,
}

impl Sizes {
    /// Bytes of state per unit.
    pub fn bytes_per_unit(&self) -> usize {
        let ex = std::mem::size_of::<Example>();
        2 * self.k * ex
            + BINS * 4
            + GROUPS * 4
            + GROUPS * self.per_group * ex
            + self.sketch * 12
            + 8 * 3
            + 4 * 3
            + 12
    }
}

/// One layer's units.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    pub units: usize,
    pub sizes: Sizes,
    /// Positions counted, per unit (values left out are not counted).
    pub n: Vec<u64>,
    pub fired: Vec<u64>,
    pub sum: Vec<f64>,
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// `[units][BINS]`.
    pub hist: Vec<u32>,
    /// The global index of each unit's first bin.
    pub hist_start: Vec<i64>,
    /// Each unit's bin width is 2^hist_exp.
    pub hist_exp: Vec<i32>,
    /// `[units][GROUPS]`: positions in each group.
    pub group_n: Vec<u32>,
    /// `[units][GROUPS][per_group]`.
    pub groups: Vec<Example>,
    /// `[units][k]` heaps (worst at 0) and their lengths.
    pub top: Vec<Example>,
    pub top_len: Vec<u32>,
    pub low: Vec<Example>,
    pub low_len: Vec<u32>,
    /// `[units][sketch]`: token id, count, overcount bound; and lengths.
    pub sk_id: Vec<u32>,
    pub sk_count: Vec<u32>,
    pub sk_err: Vec<u32>,
    pub sk_len: Vec<u32>,
    /// Values left out (not finite or beyond [`MAX_ABS`]).
    pub skipped: u64,
    /// The layer's sampling seed (each (unit, window) draws from its own stream of it).
    pub rng: u64,
    // Per window scratch of the reference path: best, worst and sampler per unit.
    wbest: Vec<Example>,
    wworst: Vec<Example>,
    wrng: Vec<u64>,
}

/// One window's values for [`LayerStats::add_windows`].
#[derive(Clone, Copy, Debug)]
pub struct WindowValues<'a> {
    /// The window's number in the scan.
    pub window: u32,
    pub tokens: &'a [u32],
    /// `[tokens.len(), units]`.
    pub acts: &'a [f32],
}

/// Units gathered together from a batch's rows (one cache line of f32 per row).
const BLOCK: usize = 16;

/// Units side by side in [`LayerStats::block_pass`]'s inner loop.
const HALF: usize = 8;

/// Running sums and ranges of [`HALF`] units, and their histograms' layouts.
struct HalfState {
    sum: [f64; HALF],
    mn: [f32; HALF],
    mx: [f32; HALF],
    fired: [u32; HALF],
    valid: [bool; HALF],
    /// 2^-exp, and the first bin's index.
    scale: [f64; HALF],
    start: [f64; HALF],
}

/// [`LayerStats::block_pass`] for half `h` of the block: every position of the batch, the
/// [`HALF`] units side by side.
#[inline(always)]
fn half_pass(st: &mut HalfState, h: usize, batch: &Batch, scratch: &mut Scratch) {
    let mut j0 = 0;
    for (wi, &j1) in batch.ends.iter().enumerate() {
        let mut bact = [f32::NEG_INFINITY; HALF];
        let mut bpos = [u32::MAX; HALF];
        let mut wact = [f32::INFINITY; HALF];
        let mut wpos = [u32::MAX; HALF];
        for j in j0..j1 {
            let at = j * BLOCK + h * HALF;
            let row: [f32; HALF] = scratch.block[at..at + HALF].try_into().expect("row");
            let p = batch.poss[j];
            let mut bins = [0u8; HALF];
            for l in 0..HALF {
                let x = row[l];
                st.valid[l] &= x.abs() <= MAX_ABS;
                st.sum[l] += f64::from(x);
                st.mn[l] = if x < st.mn[l] { x } else { st.mn[l] };
                st.mx[l] = if x > st.mx[l] { x } else { st.mx[l] };
                st.fired[l] += u32::from(x > batch.threshold);
                let better = x > bact[l];
                bact[l] = if better { x } else { bact[l] };
                bpos[l] = if better { p } else { bpos[l] };
                let worse = x < wact[l];
                wact[l] = if worse { x } else { wact[l] };
                wpos[l] = if worse { p } else { wpos[l] };
                let y = (f64::from(x) * st.scale[l]).floor() - st.start[l];
                bins[l] = if (0.0..BINS as f64).contains(&y) {
                    y as u8
                } else {
                    OUTSIDE
                };
            }
            scratch.bins[at..at + HALF].copy_from_slice(&bins);
        }
        window_ends(wi, h, batch, scratch, (bact, bpos), (wact, wpos));
        j0 = j1;
    }
}

/// Keeps window `wi`'s best and worst of half `h` of the block.
#[inline(always)]
fn window_ends(
    wi: usize,
    h: usize,
    batch: &Batch,
    scratch: &mut Scratch,
    (bact, bpos): ([f32; HALF], [u32; HALF]),
    (wact, wpos): ([f32; HALF], [u32; HALF]),
) {
    let window = batch.windows[wi].window;
    for l in 0..HALF {
        scratch.best[wi * BLOCK + h * HALF + l] = Example {
            window,
            pos: bpos[l],
            act: bact[l],
        };
        scratch.worst[wi * BLOCK + h * HALF + l] = Example {
            window,
            pos: wpos[l],
            act: wact[l],
        };
    }
}

/// [`half_pass`] in AVX2 (the same operations, in the same order per unit: the same bits).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn half_pass_avx2(st: &mut HalfState, h: usize, batch: &Batch, scratch: &mut Scratch) {
    use std::arch::x86_64::*;
    let total = batch.toks.len();
    assert!(
        scratch.block.len() >= total * BLOCK
            && scratch.bins.len() >= total * BLOCK
            && batch.poss.len() >= total
            && batch.ends.last().is_none_or(|&e| e <= total)
            && h < BLOCK / HALF
    );
    let (block, bins) = (scratch.block.as_ptr(), scratch.bins.as_mut_ptr());
    let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let maxabs = _mm256_set1_ps(MAX_ABS);
    let thr = _mm256_set1_ps(batch.threshold);
    let zero = _mm256_setzero_pd();
    let nbins = _mm256_set1_pd(BINS as f64);
    let outside = _mm256_set1_pd(f64::from(OUTSIDE));
    let scale = [
        _mm256_loadu_pd(st.scale.as_ptr()),
        _mm256_loadu_pd(st.scale.as_ptr().add(4)),
    ];
    let start = [
        _mm256_loadu_pd(st.start.as_ptr()),
        _mm256_loadu_pd(st.start.as_ptr().add(4)),
    ];
    let mut sum = [
        _mm256_loadu_pd(st.sum.as_ptr()),
        _mm256_loadu_pd(st.sum.as_ptr().add(4)),
    ];
    let mut mn = _mm256_loadu_ps(st.mn.as_ptr());
    let mut mx = _mm256_loadu_ps(st.mx.as_ptr());
    let mut fired = _mm256_loadu_si256(st.fired.as_ptr().cast());
    let mut valid = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    let mut j0 = 0;
    for (wi, &j1) in batch.ends.iter().enumerate() {
        let mut bact = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut bpos = _mm256_set1_epi32(-1);
        let mut wact = _mm256_set1_ps(f32::INFINITY);
        let mut wpos = _mm256_set1_epi32(-1);
        for j in j0..j1 {
            let at = j * BLOCK + h * HALF;
            let x = _mm256_loadu_ps(block.add(at));
            let p = _mm256_castsi256_ps(_mm256_set1_epi32(*batch.poss.get_unchecked(j) as i32));
            let ok = _mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_and_ps(x, absmask), maxabs);
            valid = _mm256_and_ps(valid, ok);
            let xs = [
                _mm256_cvtps_pd(_mm256_castps256_ps128(x)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)),
            ];
            sum = [_mm256_add_pd(sum[0], xs[0]), _mm256_add_pd(sum[1], xs[1])];
            // min_ps(x, m) is `x < m ? x : m`, max_ps(x, m) `x > m ? x : m`: the plain way's.
            mn = _mm256_min_ps(x, mn);
            mx = _mm256_max_ps(x, mx);
            let fire = _mm256_cmp_ps::<_CMP_GT_OQ>(x, thr);
            fired = _mm256_sub_epi32(fired, _mm256_castps_si256(fire));
            let better = _mm256_cmp_ps::<_CMP_GT_OQ>(x, bact);
            bact = _mm256_blendv_ps(bact, x, better);
            bpos = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bpos), p, better));
            let worse = _mm256_cmp_ps::<_CMP_LT_OQ>(x, wact);
            wact = _mm256_blendv_ps(wact, x, worse);
            wpos = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(wpos), p, worse));
            let b = [0, 1].map(|i| {
                let y = _mm256_sub_pd(_mm256_floor_pd(_mm256_mul_pd(xs[i], scale[i])), start[i]);
                let inside = _mm256_and_pd(
                    _mm256_cmp_pd::<_CMP_GE_OQ>(y, zero),
                    _mm256_cmp_pd::<_CMP_LT_OQ>(y, nbins),
                );
                let clamped = _mm256_min_pd(_mm256_max_pd(y, zero), nbins);
                _mm256_cvttpd_epi32(_mm256_blendv_pd(outside, clamped, inside))
            });
            let b16 = _mm_packus_epi32(b[0], b[1]);
            _mm_storel_epi64(bins.add(at).cast(), _mm_packus_epi16(b16, b16));
        }
        let (mut ba, mut bp, mut wa, mut wp) =
            ([0f32; HALF], [0u32; HALF], [0f32; HALF], [0u32; HALF]);
        _mm256_storeu_ps(ba.as_mut_ptr(), bact);
        _mm256_storeu_si256(bp.as_mut_ptr().cast(), bpos);
        _mm256_storeu_ps(wa.as_mut_ptr(), wact);
        _mm256_storeu_si256(wp.as_mut_ptr().cast(), wpos);
        window_ends(wi, h, batch, scratch, (ba, bp), (wa, wp));
        j0 = j1;
    }
    _mm256_storeu_pd(st.sum.as_mut_ptr(), sum[0]);
    _mm256_storeu_pd(st.sum.as_mut_ptr().add(4), sum[1]);
    _mm256_storeu_ps(st.mn.as_mut_ptr(), mn);
    _mm256_storeu_ps(st.mx.as_mut_ptr(), mx);
    _mm256_storeu_si256(st.fired.as_mut_ptr().cast(), fired);
    let bits = _mm256_movemask_ps(valid);
    for (l, v) in st.valid.iter_mut().enumerate() {
        *v = bits >> l & 1 == 1;
    }
}

/// A batch of windows, flattened to the positions counted.
struct Batch<'a> {
    windows: &'a [WindowValues<'a>],
    /// Per counted position: token, position in its window.
    toks: &'a [u32],
    poss: &'a [u32],
    /// Where each window's positions end.
    ends: &'a [usize],
    /// Per counted position: its token's number among the batch's distinct tokens; and each
    /// token's number (`NO_SLOT`: not in the batch), by id.
    dense: &'a [u16],
    dense_of: &'a [u16],
    threshold: f32,
    /// The CPU has AVX2.
    avx2: bool,
}

/// Not there: a token not in the batch, a token not in the sketch.
const NO_SLOT: u16 = u16::MAX;
/// A value outside the histogram (in [`Scratch::bins`]).
const OUTSIDE: u8 = u8::MAX;

/// Buffers for one block of units.
struct Scratch {
    /// `[position][BLOCK]`: the block's values.
    block: Vec<f32>,
    /// `[position][BLOCK]`: each value's bin (for units that keep their layout).
    bins: Vec<u8>,
    /// `[window][BLOCK]`: each window's best and worst.
    best: Vec<Example>,
    worst: Vec<Example>,
    /// Each unit's range before the batch, and whether it had no values yet.
    pre: [(f32, f32, bool); BLOCK],
    /// One unit's values.
    lane: Vec<f32>,
    /// Firing positions of one unit.
    fire: Vec<u32>,
    /// Per distinct token of the batch: its entry in the sketch of the unit at hand
    /// (`NO_SLOT` between units).
    slot: Vec<u16>,
}

#[inline(always)]
fn higher(a: &Example, b: &Example) -> bool {
    a.act > b.act || (a.act == b.act && a.window < b.window)
}

#[inline(always)]
fn lower(a: &Example, b: &Example) -> bool {
    a.act < b.act || (a.act == b.act && a.window < b.window)
}

/// Pushes `e` into the heap `h` (worst at 0) of length `*len` and capacity `h.len()`, where
/// `better(a, b)` says `a` ranks above `b`.
#[inline(always)]
fn heap_push(h: &mut [Example], len: &mut u32, e: Example, better: fn(&Example, &Example) -> bool) {
    let k = h.len();
    if k == 0 {
        return;
    }
    let mut i;
    if (*len as usize) < k {
        i = *len as usize;
        h[i] = e;
        *len += 1;
        // Sift up: the worst rises to the root.
        while i > 0 {
            let p = (i - 1) / 2;
            if better(&h[p], &h[i]) {
                h.swap(p, i);
                i = p;
            } else {
                break;
            }
        }
    } else if better(&e, &h[0]) {
        h[0] = e;
        i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut w = i;
            if l < k && better(&h[w], &h[l]) {
                w = l;
            }
            if r < k && better(&h[w], &h[r]) {
                w = r;
            }
            if w == i {
                break;
            }
            h.swap(w, i);
            i = w;
        }
    }
}

/// SplitMix64: the state steps by a constant (one add from a draw to the next, so draws
/// pipeline), the output is the mixed state.
#[inline(always)]
fn next(rng: &mut u64) -> u64 {
    *rng = rng.wrapping_add(GAMMA);
    mix(*rng)
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The global bin of `x` at width 2^exp.
#[inline(always)]
fn bin(x: f32, exp: i32) -> i64 {
    // 2^-exp built from its exponent bits (exp stays well inside f64's range).
    let scale = f64::from_bits(((1023 - exp as i64) as u64) << 52);
    (f64::from(x) * scale).floor() as i64
}

/// A uniform integer below `n` (Lemire's multiply-shift; bias ≤ n / 2^64).
#[inline(always)]
fn below(rng: &mut u64, n: u64) -> u64 {
    ((u128::from(next(rng)) * u128::from(n)) >> 64) as u64
}

/// The sampler's state for unit `u` in window `window` of a layer seeded `seed`.
#[inline(always)]
fn stream(seed: u64, u: usize, window: u32) -> u64 {
    mix(seed ^ mix(((u as u64) << 32 | u64::from(window)).wrapping_add(GAMMA)))
}

/// The aligned window start that holds `lo`.
fn aligned(lo: i64) -> i64 {
    lo.div_euclid(GROUP_BINS as i64) * GROUP_BINS as i64
}

/// The smallest width exponent ≥ `from` at which [min, max] fits one aligned window of 50 bins,
/// and that window's start.
pub fn layout(min: f32, max: f32, from: i32) -> (i32, i64) {
    let mut e = from;
    loop {
        let (lo, hi) = (bin(min, e), bin(max, e));
        let a = aligned(lo);
        if hi < a + BINS as i64 {
            return (e, a);
        }
        e += 1;
    }
}

/// Merges two uniform reservoirs (of groups with `n1`, `n2` members) into one of capacity
/// `cap`: draws without replacement from the union, weighted by the groups' remaining counts.
fn merge_reservoirs(
    a: &[Example],
    n1: u32,
    b: &[Example],
    n2: u32,
    cap: usize,
    rng: &mut u64,
) -> Vec<Example> {
    let (mut s1, mut s2) = (a.to_vec(), b.to_vec());
    let (mut r1, mut r2) = (u64::from(n1), u64::from(n2));
    let want = cap.min((r1 + r2) as usize);
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let from_first = below(rng, r1 + r2) < r1;
        let s = if from_first { &mut s1 } else { &mut s2 };
        let j = below(rng, s.len() as u64) as usize;
        out.push(s.swap_remove(j));
        if from_first {
            r1 -= 1;
        } else {
            r2 -= 1;
        }
    }
    out
}

/// One unit's Space-Saving sketch while a batch is added, with the smallest count and the
/// entries that hold it cached (`mask`, 0 = not known), so that a replacement needs no scan.
struct Sketch<'a> {
    ids: &'a mut [u32],
    counts: &'a mut [u32],
    errs: &'a mut [u32],
    len: usize,
    min: u32,
    mask: u64,
}

impl Sketch<'_> {
    /// The same update as [`LayerStats::sketch`].
    #[inline(always)]
    fn add(&mut self, tok: u32) {
        let m = self.ids.len();
        if m == 0 {
            return;
        }
        if m > 64 {
            return self.add_plain(tok);
        }
        let len = self.len;
        let mut hit = 0u64;
        for (i, &t) in self.ids[..len].iter().enumerate() {
            hit |= u64::from(t == tok) << i;
        }
        if hit != 0 {
            // Ids are distinct: one bit.
            let i = hit.trailing_zeros() as usize;
            self.counts[i] += 1;
            self.mask &= !(1u64 << i);
        } else if len < m {
            self.ids[len] = tok;
            self.counts[len] = 1;
            self.errs[len] = 0;
            self.len += 1;
        } else {
            let (i, c) = self.first_min();
            self.ids[i] = tok;
            self.errs[i] = c;
            self.counts[i] = c + 1;
        }
    }

    /// [`Self::add`] for the tokens at the batch's positions `at`, found through the tokens'
    /// numbers in the batch (`slot`: all `NO_SLOT`, and left so).
    #[inline(never)]
    fn add_dense(&mut self, at: &[u32], batch: &Batch, slot: &mut [u16]) {
        let m = self.ids.len();
        let number = |id: u32| batch.dense_of.get(id as usize).copied().unwrap_or(NO_SLOT);
        for (i, &id) in self.ids[..self.len].iter().enumerate() {
            let d = number(id);
            if d != NO_SLOT {
                slot[usize::from(d)] = i as u16;
            }
        }
        for &j in at {
            let d = usize::from(batch.dense[j as usize]);
            let s = slot[d];
            if s != NO_SLOT {
                let i = usize::from(s);
                self.counts[i] += 1;
                if i < 64 {
                    self.mask &= !(1u64 << i);
                }
                continue;
            }
            let tok = batch.toks[j as usize];
            let i = if self.len < m {
                let i = self.len;
                self.ids[i] = tok;
                self.counts[i] = 1;
                self.errs[i] = 0;
                self.len += 1;
                i
            } else {
                let (i, c) = self.first_min();
                let old = number(self.ids[i]);
                if old != NO_SLOT {
                    slot[usize::from(old)] = NO_SLOT;
                }
                self.ids[i] = tok;
                self.errs[i] = c;
                self.counts[i] = c + 1;
                i
            };
            slot[d] = i as u16;
        }
        for &id in &self.ids[..self.len] {
            let d = number(id);
            if d != NO_SLOT {
                slot[usize::from(d)] = NO_SLOT;
            }
        }
    }

    /// The first entry with the smallest count, and that count; for a full sketch (with up to
    /// 64 entries the answer is cached, and the entry taken out of the cache: its count is about
    /// to grow).
    #[inline(always)]
    fn first_min(&mut self) -> (usize, u32) {
        if self.ids.len() > 64 {
            let (i, &c) = self
                .counts
                .iter()
                .enumerate()
                .min_by_key(|(_, &c)| c)
                .expect("m > 0");
            return (i, c);
        }
        if self.mask == 0 {
            self.find_min();
        }
        let i = self.mask.trailing_zeros() as usize;
        self.mask &= !(1u64 << i);
        (i, self.min)
    }

    fn find_min(&mut self) {
        let min = self.counts.iter().copied().min().unwrap_or(0);
        let mut mask = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            mask |= u64::from(c == min) << i;
        }
        self.min = min;
        self.mask = mask;
    }

    fn add_plain(&mut self, tok: u32) {
        let (m, len) = (self.ids.len(), self.len);
        if let Some(i) = self.ids[..len].iter().position(|&t| t == tok) {
            self.counts[i] += 1;
        } else if len < m {
            self.ids[len] = tok;
            self.counts[len] = 1;
            self.errs[len] = 0;
            self.len += 1;
        } else {
            let (i, &c) = self
                .counts
                .iter()
                .enumerate()
                .min_by_key(|(_, &c)| c)
                .expect("m > 0");
            self.ids[i] = tok;
            self.errs[i] = c;
            self.counts[i] = c + 1;
        }
    }
}

/// Counts a value in bin `b` (`< BINS`) of a unit's histogram and its group, and offers its
/// example to the group's sample (drawing from `rng` once the group is full).
#[inline(always)]
fn count(
    hist: &mut [u32; BINS],
    gn: &mut [u32; GROUPS],
    groups: &mut [Example],
    cap: usize,
    b: usize,
    e: Example,
    rng: &mut u64,
) {
    let b = b.min(BINS - 1);
    hist[b] += 1;
    let g = b / GROUP_BINS;
    gn[g] += 1;
    let c = u64::from(gn[g]);
    let slot = if c <= cap as u64 {
        c as usize - 1
    } else {
        below(rng, c) as usize
    };
    if slot < cap {
        groups[g * cap + slot] = e;
    }
}

/// [`count`] for lane `l` of a block (`block`, `bins`: `[position][BLOCK]`) over a batch, for
/// unit `u` of a layer seeded `seed`, while its bins are in the histogram as it is; returns the
/// window, position and sampler state at the first value outside it, if any.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn fill_in(
    hist: &mut [u32; BINS],
    gn: &mut [u32; GROUPS],
    groups: &mut [Example],
    cap: usize,
    batch: &Batch,
    block: &[f32],
    bins: &[u8],
    l: usize,
    (seed, u): (u64, usize),
) -> Option<(usize, usize, u64)> {
    let mut j0 = 0;
    for (wi, (w, &j1)) in batch.windows.iter().zip(batch.ends).enumerate() {
        let mut rng = stream(seed, u, w.window);
        for j in j0..j1 {
            let b = usize::from(bins[j * BLOCK + l]);
            if b >= BINS {
                return Some((wi, j, rng));
            }
            let e = Example {
                window: w.window,
                pos: batch.poss[j],
                act: block[j * BLOCK + l],
            };
            count(hist, gn, groups, cap, b, e, &mut rng);
        }
        j0 = j1;
    }
    None
}

/// Re-bins one unit (its `hist`, `group_n`, `groups` of `cap` each) from the layout `(exp,
/// start)` to the one that holds its current `(min, max)` (which already include the new
/// value): bins merge, groups merge pairwise with their reservoirs. Returns the new layout.
fn regrid(
    hist: &mut [u32],
    group_n: &mut [u32],
    groups: &mut [Example],
    cap: usize,
    (old_e, old_a): (i32, i64),
    (min, max): (f32, f32),
    rng: &mut u64,
) -> (i32, i64) {
    let (e, a) = layout(min, max, old_e);
    let d = (e - old_e) as u32;
    let mut h = [0u32; BINS];
    for (i, &c) in hist.iter().enumerate() {
        if c > 0 {
            let j = ((old_a + i as i64) >> d) - a;
            h[j as usize] += c;
        }
    }
    let mut gn = [0u32; GROUPS];
    let mut gs: Vec<Vec<Example>> = vec![Vec::new(); GROUPS];
    let old_g0 = old_a / GROUP_BINS as i64;
    let new_g0 = a / GROUP_BINS as i64;
    for (g, &n) in group_n.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let j = (((old_g0 + g as i64) >> d) - new_g0) as usize;
        let sample = &groups[g * cap..g * cap + cap.min(n as usize)];
        gs[j] = merge_reservoirs(&gs[j], gn[j], sample, n, cap, rng);
        gn[j] += n;
    }
    hist.copy_from_slice(&h);
    group_n.copy_from_slice(&gn);
    for (g, s) in gs.iter().enumerate() {
        groups[g * cap..(g + 1) * cap].fill(Example::default());
        groups[g * cap..g * cap + s.len()].copy_from_slice(s);
    }
    (e, a)
}

impl LayerStats {
    pub fn new(units: usize, sizes: Sizes, seed: u64) -> Self {
        let z = Example::default();
        LayerStats {
            units,
            sizes,
            n: vec![0; units],
            fired: vec![0; units],
            sum: vec![0.0; units],
            min: vec![f32::INFINITY; units],
            max: vec![f32::NEG_INFINITY; units],
            hist: vec![0; units * BINS],
            hist_start: vec![0; units],
            hist_exp: vec![EXP0; units],
            group_n: vec![0; units * GROUPS],
            groups: vec![z; units * GROUPS * sizes.per_group],
            top: vec![z; units * sizes.k],
            top_len: vec![0; units],
            low: vec![z; units * sizes.k],
            low_len: vec![0; units],
            sk_id: vec![0; units * sizes.sketch],
            sk_count: vec![0; units * sizes.sketch],
            sk_err: vec![0; units * sizes.sketch],
            sk_len: vec![0; units],
            skipped: 0,
            rng: seed | 1,
            wbest: Vec::new(),
            wworst: Vec::new(),
            wrng: Vec::new(),
        }
    }

    /// Adds a batch of windows, in order: the same result as [`Self::add_window`] on each in
    /// turn. Unit by unit (16 units' values gathered from the rows at a time), so each unit's
    /// state stays in cache for the whole batch; positions before `first` are left out.
    pub fn add_windows(&mut self, windows: &[WindowValues], first: usize, threshold: f32) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (the same arithmetic, with `floor` as one instruction).
            unsafe { self.add_windows_avx2(windows, first, threshold) };
            return;
        }
        self.add_windows_any(windows, first, threshold, false);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn add_windows_avx2(&mut self, windows: &[WindowValues], first: usize, threshold: f32) {
        self.add_windows_any(windows, first, threshold, true);
    }

    /// `avx2`: the CPU has it (and this is compiled for it).
    #[inline(always)]
    fn add_windows_any(
        &mut self,
        windows: &[WindowValues],
        first: usize,
        threshold: f32,
        avx2: bool,
    ) {
        let units = self.units;
        let mut toks = Vec::new();
        let mut poss = Vec::new();
        let mut ends = Vec::with_capacity(windows.len());
        for w in windows {
            assert_eq!(w.acts.len(), w.tokens.len() * units, "window {}", w.window);
            for (p, &t) in w.tokens.iter().enumerate().skip(first) {
                toks.push(t);
                poss.push(p as u32);
            }
            ends.push(toks.len());
        }
        let total = toks.len();
        if total == 0 {
            return;
        }
        // The batch's distinct tokens, numbered: the sketches look their tokens up by number
        // (unless a batch holds 65,535 distinct tokens or more: then by search).
        let mut dense_of: Vec<u16> = Vec::new();
        let mut dense = Vec::with_capacity(total);
        let mut distinct = 0u16;
        for &t in &toks {
            let t = t as usize;
            if t >= dense_of.len() {
                dense_of.resize(t + 1, NO_SLOT);
            }
            if dense_of[t] == NO_SLOT {
                if distinct == NO_SLOT {
                    dense.clear();
                    break;
                }
                dense_of[t] = distinct;
                distinct += 1;
            }
            dense.push(dense_of[t]);
        }
        let mut scratch = Scratch {
            block: vec![0f32; BLOCK * total],
            bins: vec![0u8; BLOCK * total],
            best: vec![Example::default(); BLOCK * windows.len()],
            worst: vec![Example::default(); BLOCK * windows.len()],
            pre: [(0.0, 0.0, false); BLOCK],
            lane: vec![0f32; total],
            fire: vec![0u32; total],
            slot: vec![NO_SLOT; usize::from(distinct)],
        };
        let batch = Batch {
            windows,
            toks: &toks,
            poss: &poss,
            ends: &ends,
            dense: &dense,
            dense_of: &dense_of,
            threshold,
            avx2,
        };
        for u0 in (0..units).step_by(BLOCK) {
            let lanes = BLOCK.min(units - u0);
            let mut j = 0;
            for w in windows {
                for p in first..w.tokens.len() {
                    scratch.block[j * BLOCK..j * BLOCK + lanes]
                        .copy_from_slice(&w.acts[p * units + u0..p * units + u0 + lanes]);
                    j += 1;
                }
            }
            let counted = self.block_pass(u0, lanes, &batch, &mut scratch);
            for (l, &counted) in counted.iter().enumerate().take(lanes) {
                if counted {
                    self.add_unit_rest(u0 + l, l, &batch, &mut scratch);
                } else {
                    for (j, x) in scratch.lane.iter_mut().enumerate() {
                        *x = scratch.block[j * BLOCK + l];
                    }
                    self.add_unit(u0 + l, &scratch.lane, &batch);
                }
            }
        }
    }

    /// The block's units `u0..u0 + lanes` over the batch, position by position with the units
    /// side by side (vectorised): count, sum, range, firing count, each window's best and worst,
    /// every value's bin in the histogram as it is (255: outside it). For the units whose values
    /// all count (all but those with values left out) these are added and `true` returned, the
    /// rest being for [`Self::add_unit_rest`]; the others are left untouched, for
    /// [`Self::add_unit`].
    #[inline(always)]
    fn block_pass(
        &mut self,
        u0: usize,
        lanes: usize,
        batch: &Batch,
        scratch: &mut Scratch,
    ) -> [bool; BLOCK] {
        let mut sum = [0f64; BLOCK];
        let mut mn = [f32::INFINITY; BLOCK];
        let mut mx = [f32::NEG_INFINITY; BLOCK];
        let mut scale = [1f64; BLOCK];
        let mut startf = [0f64; BLOCK];
        let mut fired = [0u32; BLOCK];
        let mut valid = [true; BLOCK];
        for l in 0..lanes {
            let u = u0 + l;
            sum[l] = self.sum[u];
            mn[l] = self.min[u];
            mx[l] = self.max[u];
            scale[l] = f64::from_bits(((1023 - self.hist_exp[u] as i64) as u64) << 52);
            startf[l] = self.hist_start[u] as f64;
        }
        // Half a block at a time (8 units: a vector of f32), its state in registers.
        for h in 0..BLOCK / HALF {
            let r = h * HALF..(h + 1) * HALF;
            let mut st = HalfState {
                sum: sum[r.clone()].try_into().expect("half"),
                mn: mn[r.clone()].try_into().expect("half"),
                mx: mx[r.clone()].try_into().expect("half"),
                fired: [0; HALF],
                valid: [true; HALF],
                scale: scale[r.clone()].try_into().expect("half"),
                start: startf[r.clone()].try_into().expect("half"),
            };
            #[cfg(target_arch = "x86_64")]
            if batch.avx2 {
                // SAFETY: `batch.avx2` says the CPU has AVX2.
                unsafe { half_pass_avx2(&mut st, h, batch, scratch) };
            } else {
                half_pass(&mut st, h, batch, scratch);
            }
            #[cfg(not(target_arch = "x86_64"))]
            half_pass(&mut st, h, batch, scratch);
            sum[r.clone()].copy_from_slice(&st.sum);
            mn[r.clone()].copy_from_slice(&st.mn);
            mx[r.clone()].copy_from_slice(&st.mx);
            fired[r.clone()].copy_from_slice(&st.fired);
            valid[r].copy_from_slice(&st.valid);
        }
        let total = batch.toks.len();
        let k = self.sizes.k;
        let mut counted = [false; BLOCK];
        for l in 0..lanes {
            let u = u0 + l;
            // Bins are exact while the histogram's start is (as an f64).
            counted[l] = valid[l] && self.hist_start[u].unsigned_abs() < 1 << 52;
            #[cfg(test)]
            tests::LANES.with(|c| c.borrow_mut()[usize::from(counted[l])] += 1);
            if !counted[l] {
                continue;
            }
            scratch.pre[l] = (self.min[u], self.max[u], self.n[u] == 0);
            self.n[u] += total as u64;
            self.sum[u] = sum[l];
            self.min[u] = mn[l];
            self.max[u] = mx[l];
            self.fired[u] += u64::from(fired[l]);
            let (top, low) = (
                &mut self.top[u * k..(u + 1) * k],
                &mut self.low[u * k..(u + 1) * k],
            );
            for wi in 0..batch.ends.len() {
                let e = scratch.best[wi * BLOCK + l];
                if e.pos != u32::MAX {
                    heap_push(top, &mut self.top_len[u], e, higher);
                    heap_push(
                        low,
                        &mut self.low_len[u],
                        scratch.worst[wi * BLOCK + l],
                        lower,
                    );
                }
            }
        }
        counted
    }

    /// The rest of [`Self::block_pass`] for unit `u` (lane `l` of the block): histogram (re-binned
    /// from the first value outside it on, value by value), quantile groups' samples, firing
    /// tokens.
    #[inline(always)]
    fn add_unit_rest(&mut self, u: usize, l: usize, batch: &Batch, scratch: &mut Scratch) {
        let cap = self.sizes.per_group;
        let m = self.sizes.sketch;
        let seed = self.rng;
        let hist: &mut [u32; BINS] = (&mut self.hist[u * BINS..(u + 1) * BINS])
            .try_into()
            .expect("bins");
        let gn: &mut [u32; GROUPS] = (&mut self.group_n[u * GROUPS..(u + 1) * GROUPS])
            .try_into()
            .expect("groups");
        let groups = &mut self.groups[u * GROUPS * cap..(u + 1) * GROUPS * cap];
        let total = batch.toks.len();
        let (block, bins) = (
            &scratch.block[..total * BLOCK],
            &scratch.bins[..total * BLOCK],
        );
        let (mut exp, mut start) = (self.hist_exp[u], self.hist_start[u]);
        let (mn0, mx0, fresh) = scratch.pre[l];
        // A unit's first values have no histogram yet: all the plain way.
        let stop = if fresh {
            Some((0, 0, stream(seed, u, batch.windows[0].window)))
        } else {
            fill_in(hist, gn, groups, cap, batch, block, bins, l, (seed, u))
        };
        // From the first value outside the histogram on, value by value as the plain way (the
        // range so far, re-binning).
        if let Some((wi0, at, mut rng)) = stop {
            #[cfg(test)]
            tests::LANES.with(|c| c.borrow_mut()[2] += 1);
            let (mut mn, mut mx) = (mn0, mx0);
            for i in 0..at {
                let x = block[i * BLOCK + l];
                if x < mn {
                    mn = x;
                }
                if x > mx {
                    mx = x;
                }
            }
            let mut j0 = at;
            for (wi, w) in batch.windows.iter().enumerate().skip(wi0) {
                if wi > wi0 {
                    rng = stream(seed, u, w.window);
                }
                for j in j0..batch.ends[wi] {
                    let x = block[j * BLOCK + l];
                    if x < mn {
                        mn = x;
                    }
                    if x > mx {
                        mx = x;
                    }
                    if fresh && j == 0 {
                        (exp, start) = layout(x, x, EXP0);
                    }
                    let mut b = bin(x, exp) - start;
                    if !(0..BINS as i64).contains(&b) {
                        (exp, start) =
                            regrid(hist, gn, groups, cap, (exp, start), (mn, mx), &mut rng);
                        b = bin(x, exp) - start;
                    }
                    let e = Example {
                        window: w.window,
                        pos: batch.poss[j],
                        act: x,
                    };
                    count(hist, gn, groups, cap, b as usize, e, &mut rng);
                }
                j0 = batch.ends[wi];
            }
        }
        self.hist_exp[u] = exp;
        self.hist_start[u] = start;
        if m == 0 {
            return;
        }
        // The firing positions, then the sketch over their tokens.
        let fire = &mut scratch.fire[..total];
        let mut n = 0;
        for j in 0..total {
            fire[n] = j as u32;
            n += usize::from(block[j * BLOCK + l] > batch.threshold);
        }
        let mut sk = Sketch {
            ids: &mut self.sk_id[u * m..(u + 1) * m],
            counts: &mut self.sk_count[u * m..(u + 1) * m],
            errs: &mut self.sk_err[u * m..(u + 1) * m],
            len: self.sk_len[u] as usize,
            min: 0,
            mask: 0,
        };
        if m < usize::from(NO_SLOT) && batch.dense.len() == total {
            sk.add_dense(&fire[..n], batch, &mut scratch.slot);
        } else {
            for &j in &fire[..n] {
                sk.add(batch.toks[j as usize]);
            }
        }
        self.sk_len[u] = sk.len as u32;
    }

    /// Unit `u`'s values `xs` over a batch, value by value (any value, any re-binning).
    #[inline(always)]
    fn add_unit(&mut self, u: usize, xs: &[f32], batch: &Batch) {
        let (toks, poss, windows, ends, threshold) = (
            batch.toks,
            batch.poss,
            batch.windows,
            batch.ends,
            batch.threshold,
        );
        let Sizes {
            k,
            per_group: cap,
            sketch: m,
        } = self.sizes;
        let seed = self.rng;
        let (mut n, mut sum, mut mn, mut mx) = (self.n[u], self.sum[u], self.min[u], self.max[u]);
        let mut fired = self.fired[u];
        let (mut exp, mut start) = (self.hist_exp[u], self.hist_start[u]);
        let mut skipped = 0u64;
        let hist = &mut self.hist[u * BINS..(u + 1) * BINS];
        let gn = &mut self.group_n[u * GROUPS..(u + 1) * GROUPS];
        let groups = &mut self.groups[u * GROUPS * cap..(u + 1) * GROUPS * cap];
        let top = &mut self.top[u * k..(u + 1) * k];
        let low = &mut self.low[u * k..(u + 1) * k];
        let mut sk = Sketch {
            ids: &mut self.sk_id[u * m..(u + 1) * m],
            counts: &mut self.sk_count[u * m..(u + 1) * m],
            errs: &mut self.sk_err[u * m..(u + 1) * m],
            len: self.sk_len[u] as usize,
            min: 0,
            mask: 0,
        };
        let (xs, toks) = (&xs[..toks.len()], &toks[..poss.len()]);
        let mut j0 = 0;
        for (w, &j1) in windows.iter().zip(ends) {
            let mut rng = stream(seed, u, w.window);
            let none = Example {
                window: w.window,
                pos: u32::MAX,
                act: 0.0,
            };
            let (mut best, mut worst) = (none, none);
            for j in j0..j1 {
                let x = xs[j];
                // Not finite, or beyond MAX_ABS: left out.
                if !x.is_finite() || x.abs() > MAX_ABS {
                    skipped += 1;
                    continue;
                }
                let e = Example {
                    window: w.window,
                    pos: poss[j],
                    act: x,
                };
                if n == 0 {
                    (exp, start) = layout(x, x, EXP0);
                }
                n += 1;
                sum += f64::from(x);
                if x < mn {
                    mn = x;
                }
                if x > mx {
                    mx = x;
                }
                let mut b = bin(x, exp) - start;
                if !(0..BINS as i64).contains(&b) {
                    (exp, start) = regrid(hist, gn, groups, cap, (exp, start), (mn, mx), &mut rng);
                    b = bin(x, exp) - start;
                }
                let b = b as usize;
                hist[b] += 1;
                let g = b / GROUP_BINS;
                gn[g] += 1;
                let c = u64::from(gn[g]);
                if c <= cap as u64 {
                    groups[g * cap + c as usize - 1] = e;
                } else {
                    let r = below(&mut rng, c) as usize;
                    if r < cap {
                        groups[g * cap + r] = e;
                    }
                }
                if x > threshold {
                    fired += 1;
                    sk.add(toks[j]);
                }
                if best.pos == u32::MAX || x > best.act {
                    best = e;
                }
                if worst.pos == u32::MAX || x < worst.act {
                    worst = e;
                }
            }
            if best.pos != u32::MAX {
                heap_push(top, &mut self.top_len[u], best, higher);
                heap_push(low, &mut self.low_len[u], worst, lower);
            }
            j0 = j1;
        }
        self.sk_len[u] = sk.len as u32;
        self.n[u] = n;
        self.sum[u] = sum;
        self.min[u] = mn;
        self.max[u] = mx;
        self.fired[u] = fired;
        self.hist_exp[u] = exp;
        self.hist_start[u] = start;
        self.skipped += skipped;
    }

    /// Adds one window: `acts` is `[tokens.len(), units]`; positions before `first` are left out.
    /// Position by position over every unit: the reference for [`Self::add_windows`].
    pub fn add_window(
        &mut self,
        window: u32,
        tokens: &[u32],
        acts: &[f32],
        first: usize,
        threshold: f32,
    ) {
        let units = self.units;
        assert_eq!(acts.len(), tokens.len() * units);
        let none = Example {
            window,
            pos: u32::MAX,
            act: 0.0,
        };
        self.wbest.clear();
        self.wbest.resize(units, none);
        self.wworst.clear();
        self.wworst.resize(units, none);
        let seed = self.rng;
        self.wrng.clear();
        self.wrng
            .extend((0..units).map(|u| stream(seed, u, window)));
        for (pos, &tok) in tokens.iter().enumerate().skip(first) {
            let row = &acts[pos * units..(pos + 1) * units];
            for (u, &x) in row.iter().enumerate() {
                if !x.is_finite() || x.abs() > MAX_ABS {
                    self.skipped += 1;
                    continue;
                }
                let e = Example {
                    window,
                    pos: pos as u32,
                    act: x,
                };
                self.add_value(u, e, tok, threshold);
                let b = &mut self.wbest[u];
                if b.pos == u32::MAX || x > b.act {
                    *b = e;
                }
                let w = &mut self.wworst[u];
                if w.pos == u32::MAX || x < w.act {
                    *w = e;
                }
            }
        }
        let k = self.sizes.k;
        for u in 0..units {
            if self.wbest[u].pos != u32::MAX {
                let e = self.wbest[u];
                heap_push(
                    &mut self.top[u * k..(u + 1) * k],
                    &mut self.top_len[u],
                    e,
                    higher,
                );
                let e = self.wworst[u];
                heap_push(
                    &mut self.low[u * k..(u + 1) * k],
                    &mut self.low_len[u],
                    e,
                    lower,
                );
            }
        }
        // Scratch emptied (capacity kept), so a loaded index equals the one that was saved.
        self.wbest.clear();
        self.wworst.clear();
        self.wrng.clear();
    }

    fn add_value(&mut self, u: usize, e: Example, tok: u32, threshold: f32) {
        let x = e.act;
        if self.n[u] == 0 {
            let (exp, start) = layout(x, x, EXP0);
            self.hist_exp[u] = exp;
            self.hist_start[u] = start;
        }
        self.n[u] += 1;
        self.sum[u] += f64::from(x);
        if x < self.min[u] {
            self.min[u] = x;
        }
        if x > self.max[u] {
            self.max[u] = x;
        }
        let cap = self.sizes.per_group;
        let mut b = bin(x, self.hist_exp[u]) - self.hist_start[u];
        if b < 0 || b >= BINS as i64 {
            (self.hist_exp[u], self.hist_start[u]) = regrid(
                &mut self.hist[u * BINS..(u + 1) * BINS],
                &mut self.group_n[u * GROUPS..(u + 1) * GROUPS],
                &mut self.groups[u * GROUPS * cap..(u + 1) * GROUPS * cap],
                cap,
                (self.hist_exp[u], self.hist_start[u]),
                (self.min[u], self.max[u]),
                &mut self.wrng[u],
            );
            b = bin(x, self.hist_exp[u]) - self.hist_start[u];
        }
        let b = b as usize;
        self.hist[u * BINS + b] += 1;
        // The group's reservoir.
        let g = u * GROUPS + b / GROUP_BINS;
        self.group_n[g] += 1;
        let n = self.group_n[g] as u64;
        if n <= cap as u64 {
            self.groups[g * cap + n as usize - 1] = e;
        } else {
            let j = below(&mut self.wrng[u], n);
            if (j as usize) < cap {
                self.groups[g * cap + j as usize] = e;
            }
        }
        if x > threshold {
            self.fired[u] += 1;
            self.sketch(u, tok);
        }
    }

    /// Space-Saving update of unit `u`'s token sketch (the plain way: a search, and the first
    /// smallest count replaced).
    fn sketch(&mut self, u: usize, tok: u32) {
        let m = self.sizes.sketch;
        if m == 0 {
            return;
        }
        let len = self.sk_len[u] as usize;
        let ids = &self.sk_id[u * m..u * m + len];
        if let Some(i) = ids.iter().position(|&t| t == tok) {
            self.sk_count[u * m + i] += 1;
        } else if len < m {
            self.sk_id[u * m + len] = tok;
            self.sk_count[u * m + len] = 1;
            self.sk_err[u * m + len] = 0;
            self.sk_len[u] += 1;
        } else {
            let counts = &self.sk_count[u * m..(u + 1) * m];
            let (i, &c) = counts
                .iter()
                .enumerate()
                .min_by_key(|(_, &c)| c)
                .expect("m > 0");
            self.sk_id[u * m + i] = tok;
            self.sk_err[u * m + i] = c;
            self.sk_count[u * m + i] = c + 1;
        }
    }

    /// Unit `u`'s top examples, best first.
    pub fn top(&self, u: usize) -> Vec<Example> {
        let k = self.sizes.k;
        let mut v = self.top[u * k..u * k + self.top_len[u] as usize].to_vec();
        v.sort_by(|a, b| {
            if higher(a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        v
    }

    /// Unit `u`'s lowest examples, lowest first.
    pub fn lowest(&self, u: usize) -> Vec<Example> {
        let k = self.sizes.k;
        let mut v = self.low[u * k..u * k + self.low_len[u] as usize].to_vec();
        v.sort_by(|a, b| {
            if lower(a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        v
    }

    /// Unit `u`'s histogram: the left edge of bin 0, the bin width, the counts.
    pub fn histogram(&self, u: usize) -> (f64, f64, &[u32]) {
        let w = (2f64).powi(self.hist_exp[u]);
        (
            self.hist_start[u] as f64 * w,
            w,
            &self.hist[u * BINS..(u + 1) * BINS],
        )
    }

    /// Unit `u`'s quantile groups, lowest interval first: (interval, count, sampled examples).
    pub fn groups(&self, u: usize) -> Vec<((f64, f64), u32, Vec<Example>)> {
        let (lo, w, _) = self.histogram(u);
        let cap = self.sizes.per_group;
        (0..GROUPS)
            .map(|g| {
                let n = self.group_n[u * GROUPS + g];
                let base = (u * GROUPS + g) * cap;
                let s = self.groups[base..base + cap.min(n as usize)].to_vec();
                let left = lo + (g * GROUP_BINS) as f64 * w;
                ((left, left + GROUP_BINS as f64 * w), n, s)
            })
            .collect()
    }

    /// Unit `u`'s sketch: (token, count, overcount bound), by guaranteed count (count − bound)
    /// first.
    pub fn firing_tokens(&self, u: usize) -> Vec<(u32, u32, u32)> {
        let m = self.sizes.sketch;
        let len = self.sk_len[u] as usize;
        let mut v: Vec<(u32, u32, u32)> = (0..len)
            .map(|i| {
                (
                    self.sk_id[u * m + i],
                    self.sk_count[u * m + i],
                    self.sk_err[u * m + i],
                )
            })
            .collect();
        v.sort_by(|a, b| {
            (b.1 - b.2)
                .cmp(&(a.1 - a.2))
                .then(b.1.cmp(&a.1))
                .then(a.0.cmp(&b.0))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_smallest_width_that_holds_the_range() {
        let (e, a) = layout(-1.0, 3.0, EXP0);
        let w = (2f64).powi(e);
        assert!(a as f64 * w <= -1.0 && 3.0 < (a + BINS as i64) as f64 * w);
        let (e2, a2) = layout(-1.0, 3.0, e - 1);
        assert_eq!((e2, a2), (e, a));
        let w = (2f64).powi(e - 1);
        let lo = (-1.0 / w).floor() as i64;
        let hi = (3.0 / w).floor() as i64;
        assert!(hi >= aligned(lo) + BINS as i64);
    }

    thread_local! {
        /// Lanes of [`LayerStats::block_pass`]: left for the plain way (0), counted (1), of
        /// which re-binned (2).
        pub static LANES: std::cell::RefCell<[usize; 3]> = const { std::cell::RefCell::new([0; 3]) };
    }

    /// Values that exercise every branch: ties (within and across windows), signed zeros, a
    /// range that grows (regrids) for the first windows, values left out in some, firing and
    /// not, few tokens (sketch hits) and many (replacements).
    fn values(rng: &mut u64, n: usize, w: usize) -> Vec<f32> {
        let grow = (1.0 + w.min(6) as f32).powi(2);
        (0..n)
            .map(|i| {
                let r = next(rng);
                let x = ((r >> 40) as f32 / (1u64 << 24) as f32 - 0.4) * grow;
                match r % 23 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => 1.5,
                    3 if w == 4 => f32::NAN,
                    4 if w == 7 => f32::INFINITY,
                    5 if w == 9 => 2e12,
                    6 => 1e-40,
                    7 => x * 1e-9,
                    8 if w == 20 => 1e6,
                    _ => x + (i % 3) as f32,
                }
            })
            .collect()
    }

    #[test]
    fn batches_unit_by_unit_equal_windows_position_by_position() {
        for (units, sizes, first, threshold) in [
            (
                37,
                Sizes {
                    k: 4,
                    per_group: 3,
                    sketch: 8,
                },
                1,
                0.0,
            ),
            (
                16,
                Sizes {
                    k: 20,
                    per_group: 5,
                    sketch: 32,
                },
                0,
                0.5,
            ),
            (
                5,
                Sizes {
                    k: 2,
                    per_group: 1,
                    sketch: 70,
                },
                1,
                -1.0,
            ),
        ] {
            let mut rng = 0x1234_5678_9abc_def1u64;
            let mut windows = Vec::new();
            for w in 0..40u32 {
                let len = 1 + (next(&mut rng) % 40) as usize;
                let vocab = if w % 2 == 0 { 5 } else { 300 };
                let tokens: Vec<u32> = (0..len).map(|_| (next(&mut rng) % vocab) as u32).collect();
                let acts = values(&mut rng, len * units, w as usize);
                windows.push((w, tokens, acts));
            }
            let mut plain = LayerStats::new(units, sizes, 99);
            for (w, t, a) in &windows {
                plain.add_window(*w, t, a, first, threshold);
            }
            let wins: Vec<WindowValues> = windows
                .iter()
                .map(|(w, t, a)| WindowValues {
                    window: *w,
                    tokens: t,
                    acts: a,
                })
                .collect();
            // The same windows in batches of 1, 5, 6, ….
            LANES.with(|c| *c.borrow_mut() = [0; 3]);
            let mut batched = LayerStats::new(units, sizes, 99);
            for range in [0..1, 1..6, 6..12, 12..13, 13..19, 19..25, 25..32, 32..40] {
                batched.add_windows(&wins[range], first, threshold);
            }
            let [plain_lanes, counted, rebinned] = LANES.with(|c| *c.borrow());
            assert!(
                plain_lanes > 0 && counted > units && rebinned > units,
                "{plain_lanes} {counted} {rebinned}"
            );
            assert!(plain.skipped > 0);
            assert!(plain.hist_exp.iter().any(|&e| e > EXP0 + 10));
            assert!(plain.sk_len.iter().any(|&l| l as usize == sizes.sketch));
            assert_eq!(batched, plain, "{units} units, {sizes:?}");
            // Without AVX2 too, in one batch.
            let mut any = LayerStats::new(units, sizes, 99);
            any.add_windows_any(&wins, first, threshold, false);
            assert_eq!(any, plain);
        }
    }

    #[test]
    fn heaps_keep_the_k_best() {
        let mut h = vec![Example::default(); 3];
        let mut len = 0;
        for (i, a) in [5.0, 1.0, 7.0, 3.0, 9.0, 2.0].into_iter().enumerate() {
            let e = Example {
                window: i as u32,
                pos: 0,
                act: a,
            };
            heap_push(&mut h, &mut len, e, higher);
        }
        let mut acts: Vec<f32> = h.iter().map(|e| e.act).collect();
        acts.sort_by(|a, b| b.partial_cmp(a).unwrap());
        assert_eq!(acts, [9.0, 7.0, 5.0]);
    }
}
