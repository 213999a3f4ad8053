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
//! - **density**: positions above the firing threshold; **mean**; min and max.
//! - **firing tokens**: a Space-Saving sketch of 32 counters over the tokens at firing
//!   positions (a count is at most `err` too high; any token firing more than
//!   fired/32 times is in it).

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
    pub rng: u64,
    // Per window scratch: best and worst per unit.
    wbest: Vec<Example>,
    wworst: Vec<Example>,
}

fn higher(a: &Example, b: &Example) -> bool {
    a.act > b.act || (a.act == b.act && a.window < b.window)
}

fn lower(a: &Example, b: &Example) -> bool {
    a.act < b.act || (a.act == b.act && a.window < b.window)
}

/// Pushes `e` into the heap `h` (worst at 0) of length `*len` and capacity `h.len()`, where
/// `better(a, b)` says `a` ranks above `b`.
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

fn next(rng: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The global bin of `x` at width 2^exp.
#[inline]
fn bin(x: f32, exp: i32) -> i64 {
    // 2^-exp built from its exponent bits (exp stays well inside f64's range).
    let scale = f64::from_bits(((1023 - exp as i64) as u64) << 52);
    (f64::from(x) * scale).floor() as i64
}

/// A uniform integer below `n` (Lemire's multiply-shift; bias ≤ n / 2^64).
#[inline]
fn below(rng: &mut u64, n: u64) -> u64 {
    ((u128::from(next(rng)) * u128::from(n)) >> 64) as u64
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
        }
    }

    /// Adds one window: `acts` is `[tokens.len(), units]`; positions before `first` are left out.
    pub fn add_window(
        &mut self,
        window: u32,
        tokens: &[u32],
        acts: &[f32],
        first: usize,
        threshold: f32,
    ) {
        let units = self.units;
        debug_assert_eq!(acts.len(), tokens.len() * units);
        let none = Example {
            window,
            pos: u32::MAX,
            act: 0.0,
        };
        self.wbest.clear();
        self.wbest.resize(units, none);
        self.wworst.clear();
        self.wworst.resize(units, none);
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
        let mut b = bin(x, self.hist_exp[u]) - self.hist_start[u];
        if b < 0 || b >= BINS as i64 {
            self.regrid(u);
            b = bin(x, self.hist_exp[u]) - self.hist_start[u];
        }
        let b = b as usize;
        self.hist[u * BINS + b] += 1;
        // The group's reservoir.
        let g = u * GROUPS + b / GROUP_BINS;
        self.group_n[g] += 1;
        let n = self.group_n[g] as u64;
        let cap = self.sizes.per_group;
        if n <= cap as u64 {
            self.groups[g * cap + n as usize - 1] = e;
        } else {
            let j = below(&mut self.rng, n);
            if (j as usize) < cap {
                self.groups[g * cap + j as usize] = e;
            }
        }
        if x > threshold {
            self.fired[u] += 1;
            self.sketch(u, tok);
        }
    }

    /// Space-Saving update of unit `u`'s token sketch.
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

    /// Re-bins unit `u` at the width and window that hold its current [min, max] (which already
    /// include the new value): bins merge, groups merge pairwise with their reservoirs.
    fn regrid(&mut self, u: usize) {
        let (old_e, old_a) = (self.hist_exp[u], self.hist_start[u]);
        let (e, a) = layout(self.min[u], self.max[u], old_e);
        let d = (e - old_e) as u32;
        let mut hist = [0u32; BINS];
        for i in 0..BINS {
            let c = self.hist[u * BINS + i];
            if c > 0 {
                let j = ((old_a + i as i64) >> d) - a;
                hist[j as usize] += c;
            }
        }
        let cap = self.sizes.per_group;
        let mut gn = [0u32; GROUPS];
        let mut gs: Vec<Vec<Example>> = vec![Vec::new(); GROUPS];
        let old_g0 = old_a / GROUP_BINS as i64;
        let new_g0 = a / GROUP_BINS as i64;
        for g in 0..GROUPS {
            let n = self.group_n[u * GROUPS + g];
            if n == 0 {
                continue;
            }
            let j = (((old_g0 + g as i64) >> d) - new_g0) as usize;
            let base = (u * GROUPS + g) * cap;
            let sample = &self.groups[base..base + cap.min(n as usize)];
            gs[j] = merge_reservoirs(&gs[j], gn[j], sample, n, cap, &mut self.rng);
            gn[j] += n;
        }
        self.hist[u * BINS..(u + 1) * BINS].copy_from_slice(&hist);
        self.group_n[u * GROUPS..(u + 1) * GROUPS].copy_from_slice(&gn);
        for (g, s) in gs.iter().enumerate() {
            let base = (u * GROUPS + g) * cap;
            self.groups[base..base + cap].fill(Example::default());
            self.groups[base..base + s.len()].copy_from_slice(s);
        }
        self.hist_exp[u] = e;
        self.hist_start[u] = a;
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
