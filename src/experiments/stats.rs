//! The statistics of a two-set experiment over plain matrices: d′, AUROC, a permutation null for
//! the largest |d′| of a layer, a cross-validated logistic probe and the best single unit under
//! nested cross-validation. Rows are stimuli, columns units; `labels[i]` is true for set A.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The largest |d′| reported: two sets with (almost) no spread and different means would give
/// an infinite d′; this cap keeps them first in a ranking and finite in JSON.
pub const DPRIME_CAP: f64 = 1000.0;

/// A `rows × cols` matrix, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "a {rows}×{cols} matrix");
        Matrix { rows, cols, data }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn column(&self, j: usize) -> Vec<f32> {
        (0..self.rows)
            .map(|i| self.data[i * self.cols + j])
            .collect()
    }
}

/// Mean and unbiased variance.
fn mean_var(values: impl Iterator<Item = f64>) -> (f64, f64, usize) {
    let (mut n, mut mean, mut m2) = (0usize, 0.0, 0.0);
    for v in values {
        n += 1;
        let d = v - mean;
        mean += d / n as f64;
        m2 += d * (v - mean);
    }
    let var = if n > 1 { m2 / (n - 1) as f64 } else { 0.0 };
    (mean, var, n)
}

/// d′ = (mean_A − mean_B) / sqrt((var_A + var_B) / 2), unbiased variances. With no spread in
/// either set: 0 when the means are equal, ±[`DPRIME_CAP`] when they differ.
pub fn dprime(a: &[f32], b: &[f32]) -> f64 {
    let (ma, va, _) = mean_var(a.iter().map(|&v| f64::from(v)));
    let (mb, vb, _) = mean_var(b.iter().map(|&v| f64::from(v)));
    from_moments(ma, va, mb, vb)
}

fn from_moments(ma: f64, va: f64, mb: f64, vb: f64) -> f64 {
    let diff = ma - mb;
    let pooled = ((va + vb) / 2.0).sqrt();
    // Below float noise of the means, a spread is no spread.
    let scale = ma.abs().max(mb.abs()).max(1e-30);
    if pooled <= scale * 1e-9 {
        return if diff.abs() <= scale * 1e-9 {
            0.0
        } else {
            DPRIME_CAP.copysign(diff)
        };
    }
    (diff / pooled).clamp(-DPRIME_CAP, DPRIME_CAP)
}

/// AUROC = P(a > b) + ½ P(a = b) over every pair of an A value and a B value (ranks with ties).
pub fn auroc(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.5;
    }
    let mut all: Vec<(f32, bool)> = a
        .iter()
        .map(|&v| (v, true))
        .chain(b.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Mann–Whitney U from midranks.
    let mut rank_sum_a = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let midrank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += midrank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    (rank_sum_a - na * (na + 1.0) / 2.0) / (na * nb)
}

/// Every column's d′ between the rows labelled A and those labelled B.
pub fn dprimes(m: &Matrix, labels: &[bool]) -> Vec<f64> {
    let mut sums = [vec![0f64; m.cols], vec![0f64; m.cols]];
    let mut squares = [vec![0f64; m.cols], vec![0f64; m.cols]];
    let mut counts = [0usize; 2];
    // Centre on the first row for stable sums of squares (SmolLM2 has dimensions near 2e4).
    let origin: Vec<f64> = m.row(0).iter().map(|&v| f64::from(v)).collect();
    for (i, &is_a) in labels.iter().enumerate() {
        let s = usize::from(!is_a);
        counts[s] += 1;
        for (j, &v) in m.row(i).iter().enumerate() {
            let v = f64::from(v) - origin[j];
            sums[s][j] += v;
            squares[s][j] += v * v;
        }
    }
    let moments = |s: usize, j: usize| {
        let n = counts[s] as f64;
        let mean = sums[s][j] / n.max(1.0);
        let var = if counts[s] > 1 {
            ((squares[s][j] - n * mean * mean) / (n - 1.0)).max(0.0)
        } else {
            0.0
        };
        (mean, var)
    };
    (0..m.cols)
        .map(|j| {
            let ((ma, va), (mb, vb)) = (moments(0, j), moments(1, j));
            // The shared origin cancels in the difference; the cap's scale needs the real means.
            let shift = origin[j];
            from_moments(ma + shift, va, mb + shift, vb)
        })
        .collect()
}

/// The largest |d′| over the columns.
pub fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// The 95th percentile of a layer's largest |d′| when the A/B labels are shuffled: `shuffles`
/// permutations (seeded), one null value for each matrix from the same permutation (so that
/// the layers' bands come from the same shuffles).
pub fn permutation_null(mats: &[&Matrix], labels: &[bool], shuffles: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut shuffled = labels.to_vec();
    let orders: Vec<Vec<bool>> = (0..shuffles)
        .map(|_| {
            shuffled.shuffle(&mut rng);
            shuffled.clone()
        })
        .collect();
    // The matrices split among the cores; every matrix sees the same shuffles.
    par_map(mats, |m| {
        let maxima = orders.iter().map(|o| max_abs(&dprimes(m, o))).collect();
        percentile(maxima, 0.95)
    })
}

/// `f` of every item, the items split into one contiguous share per core (scoped threads), in
/// order. The statistics of a layer are independent of the others', so a protocol's 30 layers
/// run on both cores.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let share = items.len().div_ceil(threads);
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(share.max(1))
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The `q` quantile of `values` (the nearest rank at or above it).
pub fn percentile(mut values: Vec<f64>, q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// `k` folds over the rows, stratified by label (each fold gets its share of A and of B),
/// shuffled with `seed`: `fold[i]` is the fold row i is held out in.
///
/// When the rows are two matched sets — the first half labelled A, the second half B, as a
/// protocol's stimuli are — row i and row i + n/2 (pair i) always share a fold. Matched pairs
/// differ only in what the protocol asks about (the same reading token, often the same
/// embedding), so splitting a pair would score a classifier on the twin of a training row with
/// the opposite label: a probe on identical inputs came out at 10% instead of chance.
pub fn stratified_folds(labels: &[bool], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = labels.len();
    let half = n / 2;
    let paired = n.is_multiple_of(2)
        && labels[..half].iter().all(|&l| l)
        && labels[half..].iter().all(|&l| !l);
    let mut fold = vec![0; n];
    if paired {
        let mut pairs: Vec<usize> = (0..half).collect();
        pairs.shuffle(&mut rng);
        for (m, i) in pairs.into_iter().enumerate() {
            fold[i] = m % k;
            fold[i + half] = m % k;
        }
        return fold;
    }
    for side in [true, false] {
        let mut rows: Vec<usize> = (0..n).filter(|&i| labels[i] == side).collect();
        rows.shuffle(&mut rng);
        for (m, i) in rows.into_iter().enumerate() {
            fold[i] = m % k;
        }
    }
    fold
}

/// Each column's mean and standard deviation over the `train` rows; a column without spread
/// gets sd 0 (it is read as 0 after standardising).
fn column_scales(m: &Matrix, train: &[usize]) -> (Vec<f64>, Vec<f64>) {
    (0..m.cols)
        .map(|j| {
            let (mean, var, _) = mean_var(train.iter().map(|&i| f64::from(m.data[i * m.cols + j])));
            let sd = var.sqrt();
            (
                mean,
                if sd > mean.abs().max(1.0) * 1e-9 {
                    sd
                } else {
                    0.0
                },
            )
        })
        .unzip()
}

fn standardised(v: f32, mean: f64, sd: f64) -> f64 {
    if sd > 0.0 {
        (f64::from(v) - mean) / sd
    } else {
        0.0
    }
}

/// Standardises columns with the given scales: `[rows × cols]` as f64.
fn standardise(m: &Matrix, mean: &[f64], sd: &[f64]) -> Vec<f64> {
    let mut out = vec![0f64; m.rows * m.cols];
    for i in 0..m.rows {
        for j in 0..m.cols {
            out[i * m.cols + j] = standardised(m.data[i * m.cols + j], mean[j], sd[j]);
        }
    }
    out
}

/// A fitted logistic probe: columns standardised with the training rows' scales, then
/// `w · x + b`; positive says A.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeFit {
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
    pub weights: Vec<f64>,
    pub bias: f64,
}

impl ProbeFit {
    /// The probe's logit for one row (positive: A).
    pub fn score(&self, row: &[f32]) -> f64 {
        row.iter()
            .zip(self.mean.iter().zip(&self.sd))
            .zip(&self.weights)
            .map(|((&v, (&m, &s)), &w)| standardised(v, m, s) * w)
            .sum::<f64>()
            + self.bias
    }
}

/// Fits the L2 logistic probe ([`PROBE_L2`]) on the `train` rows of `m`.
pub fn fit_probe(m: &Matrix, labels: &[bool], train: &[usize]) -> ProbeFit {
    let (mean, sd) = column_scales(m, train);
    let x = standardise(m, &mean, &sd);
    let (weights, bias) = fit_logistic(&x, m.cols, labels, train, PROBE_L2);
    ProbeFit {
        mean,
        sd,
        weights,
        bias,
    }
}

/// An L2-regularised logistic regression fitted by gradient descent with Nesterov momentum on
/// the `train` rows of `x` (`[rows × cols]`): weights and bias. The loss is the mean
/// log-loss + `l2`/2 ‖w‖² (the bias unpenalised); the step is 1/L with L from the largest
/// eigenvalue of X̃ᵀX̃/n, X̃ = [X 1] (power iteration).
///
/// Computed in the kernel form: starting from 0, every iterate's w lies in the span of the
/// training rows, w = Xᵀα, so the logits are Kα + b with K = XXᵀ (`n × n`, n training rows:
/// 64 for a protocol of 40 + 40 stimuli, against 576 dimensions of the residual stream) and
/// the update of w is one of α: the same iterates as the weights' own, 9× fewer operations.
fn fit_logistic(
    x: &[f64],
    cols: usize,
    labels: &[bool],
    train: &[usize],
    l2: f64,
) -> (Vec<f64>, f64) {
    let m = train.len();
    let n = m as f64;
    let row = |i: usize| &x[i * cols..(i + 1) * cols];
    let mut kernel = vec![0f64; m * m];
    for a in 0..m {
        for b in 0..=a {
            let dot: f64 = row(train[a])
                .iter()
                .zip(row(train[b]))
                .map(|(p, q)| p * q)
                .sum();
            kernel[a * m + b] = dot;
            kernel[b * m + a] = dot;
        }
    }
    // The largest eigenvalue of X̃ᵀX̃/n is that of (K + 11ᵀ)/n.
    let mut v = vec![1.0 / n.sqrt(); m];
    let mut lambda = 1.0;
    for _ in 0..30 {
        let sum_v: f64 = v.iter().sum();
        let next: Vec<f64> = (0..m)
            .map(|a| {
                (kernel[a * m..(a + 1) * m]
                    .iter()
                    .zip(&v)
                    .map(|(k, x)| k * x)
                    .sum::<f64>()
                    + sum_v)
                    / n
            })
            .collect();
        let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm == 0.0 {
            break;
        }
        lambda = norm;
        v = next.into_iter().map(|a| a / norm).collect();
    }
    let step = 1.0 / (lambda / 4.0 + l2).max(1e-12);
    let y: Vec<f64> = train
        .iter()
        .map(|&i| f64::from(u8::from(labels[i])))
        .collect();
    let (mut alpha, mut prev) = (vec![0.0; m], vec![0.0; m]);
    let (mut bias, mut prev_bias) = (0.0, 0.0);
    for t in 0..400 {
        let momentum = t as f64 / (t as f64 + 3.0);
        let look: Vec<f64> = alpha
            .iter()
            .zip(&prev)
            .map(|(a, b)| a + momentum * (a - b))
            .collect();
        let look_bias = bias + momentum * (bias - prev_bias);
        // ∇w = Xᵀ(r/n + l2·α), ∇b = Σr/n with r = σ(Kα + b) − y.
        let mut bias_grad = 0.0;
        let next: Vec<f64> = (0..m)
            .map(|a| {
                let z: f64 = kernel[a * m..(a + 1) * m]
                    .iter()
                    .zip(&look)
                    .map(|(k, x)| k * x)
                    .sum::<f64>()
                    + look_bias;
                let r = 1.0 / (1.0 + (-z).exp()) - y[a];
                bias_grad += r / n;
                look[a] - step * (r / n + l2 * look[a])
            })
            .collect();
        prev = std::mem::replace(&mut alpha, next);
        prev_bias = bias;
        bias = look_bias - step * bias_grad;
    }
    let mut w = vec![0f64; cols];
    for (a, &i) in train.iter().enumerate() {
        for (wj, &xj) in w.iter_mut().zip(row(i)) {
            *wj += alpha[a] * xj;
        }
    }
    (w, bias)
}

/// The L2 penalty of the probes: the mean log-loss + `PROBE_L2`/2 ‖w‖² on standardised
/// features (with more dimensions than stimuli, an unpenalised probe separates anything).
pub const PROBE_L2: f64 = 0.1;

/// k-fold cross-validated accuracy of a logistic probe on the columns of `m` (standardised on
/// each training fold).
pub fn probe_accuracy(m: &Matrix, labels: &[bool], k: usize, seed: u64) -> f64 {
    let folds = stratified_folds(labels, k, seed);
    let mut correct = 0;
    for f in 0..k {
        let train: Vec<usize> = (0..m.rows).filter(|&i| folds[i] != f).collect();
        let test: Vec<usize> = (0..m.rows).filter(|&i| folds[i] == f).collect();
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let probe = fit_probe(m, labels, &train);
        for &i in &test {
            correct += usize::from((probe.score(m.row(i)) > 0.0) == labels[i]);
        }
    }
    correct as f64 / m.rows.max(1) as f64
}

/// A one-unit classifier: "A" when `sign · (x − threshold) > 0`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Threshold {
    pub column: usize,
    pub threshold: f32,
    /// +1 when A is the higher side.
    pub sign: f32,
}

impl Threshold {
    pub fn says_a(&self, value: f32) -> bool {
        self.sign * (value - self.threshold) > 0.0
    }

    /// The unit with the largest |d′| on `rows`, thresholded halfway between the two means.
    pub fn fit(m: &Matrix, labels: &[bool], rows: &[usize]) -> Self {
        let sub = Matrix::new(
            rows.len(),
            m.cols,
            rows.iter()
                .flat_map(|&i| m.row(i).iter().copied())
                .collect(),
        );
        let sub_labels: Vec<bool> = rows.iter().map(|&i| labels[i]).collect();
        let d = dprimes(&sub, &sub_labels);
        let column = (0..m.cols)
            .max_by(|&x, &y| d[x].abs().total_cmp(&d[y].abs()).then(y.cmp(&x)))
            .unwrap_or(0);
        let mean = |want: bool| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|&&i| labels[i] == want)
                .map(|&i| f64::from(m.data[i * m.cols + column]))
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let (ma, mb) = (mean(true), mean(false));
        Threshold {
            column,
            threshold: ((ma + mb) / 2.0) as f32,
            sign: if ma >= mb { 1.0 } else { -1.0 },
        }
    }

    /// The fraction of `rows` it labels right.
    pub fn accuracy(&self, m: &Matrix, labels: &[bool], rows: &[usize]) -> f64 {
        let right = rows
            .iter()
            .filter(|&&i| self.says_a(m.data[i * m.cols + self.column]) == labels[i])
            .count();
        right as f64 / rows.len().max(1) as f64
    }
}

/// Nested cross-validation of the best single unit: on each training fold the unit and its
/// threshold are chosen, then scored on the held-out fold; the pooled accuracy.
pub fn best_unit_accuracy(m: &Matrix, labels: &[bool], k: usize, seed: u64) -> f64 {
    let folds = stratified_folds(labels, k, seed);
    let mut correct = 0.0;
    for f in 0..k {
        let train: Vec<usize> = (0..m.rows).filter(|&i| folds[i] != f).collect();
        let test: Vec<usize> = (0..m.rows).filter(|&i| folds[i] == f).collect();
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let t = Threshold::fit(m, labels, &train);
        correct += t.accuracy(m, labels, &test) * test.len() as f64;
    }
    correct / m.rows.max(1) as f64
}

/// `n` distinct indices below `len`, seeded.
pub fn sample_indices(len: usize, n: usize, rng: &mut impl Rng) -> Vec<usize> {
    rand::seq::index::sample(rng, len, n.min(len)).into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dprime_matches_the_formula_with_unbiased_variances() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [0.0f32, 0.5, 1.0];
        // var_A = 5/3, var_B = 0.25 (unbiased).
        let expected = (2.5 - 0.5) / ((5.0 / 3.0 + 0.25) / 2.0f64).sqrt();
        assert!((dprime(&a, &b) - expected).abs() < 1e-12);
        assert!((dprime(&b, &a) + expected).abs() < 1e-12);
        assert_eq!(dprime(&[2.0, 2.0], &[2.0, 2.0]), 0.0);
        assert_eq!(dprime(&[3.0, 3.0], &[2.0, 2.0]), DPRIME_CAP);
        // The column version agrees, also for large offsets (SmolLM2's big dimensions).
        let m = Matrix::new(
            7,
            2,
            vec![
                1.0,
                2e4 + 1.0,
                2.0,
                2e4 + 2.0,
                3.0,
                2e4 + 3.0,
                4.0,
                2e4 + 4.0,
                0.0,
                2e4,
                0.5,
                2e4 + 0.5,
                1.0,
                2e4 + 1.0,
            ],
        );
        let labels = [true, true, true, true, false, false, false];
        let d = dprimes(&m, &labels);
        assert!((d[0] - expected).abs() < 1e-9, "{d:?}");
        assert!((d[1] - expected).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn auroc_counts_pairs_and_half_ties() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        // Pairs: (2,1) win, (2,2) tie, (2,3) loss, (5,·) three wins: (4 + 0.5) / 6.
        let brute = |a: &[f32], b: &[f32]| {
            let mut s = 0.0;
            for &x in a {
                for &y in b {
                    s += if x > y {
                        1.0
                    } else if x == y {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
            s / (a.len() * b.len()) as f64
        };
        let (a, b) = ([2.0f32, 5.0], [1.0f32, 2.0, 3.0]);
        assert!((auroc(&a, &b) - 4.5 / 6.0).abs() < 1e-12);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a: Vec<f32> = (0..40)
            .map(|_| (rng.random::<f32>() * 5.0).round())
            .collect();
        let b: Vec<f32> = (0..33)
            .map(|_| (rng.random::<f32>() * 4.0).round())
            .collect();
        assert!((auroc(&a, &b) - brute(&a, &b)).abs() < 1e-12);
    }

    fn planted(
        rows_per_side: usize,
        cols: usize,
        planted: usize,
        shift: f32,
        seed: u64,
    ) -> (Matrix, Vec<bool>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..2 * rows_per_side {
            let is_a = i < rows_per_side;
            labels.push(is_a);
            for j in 0..cols {
                let noise: f32 = rng.random::<f32>() * 2.0 - 1.0;
                data.push(noise + if is_a && j == planted { shift } else { 0.0 });
            }
        }
        (Matrix::new(2 * rows_per_side, cols, data), labels)
    }

    #[test]
    fn a_planted_column_beats_the_null_and_shuffled_labels_do_not() {
        let (m, labels) = planted(30, 50, 17, 1.5, 1);
        let d = dprimes(&m, &labels);
        let best = (0..50)
            .max_by(|&a, &b| d[a].abs().total_cmp(&d[b].abs()))
            .unwrap();
        assert_eq!(best, 17);
        let null = permutation_null(&[&m], &labels, 200, 9)[0];
        assert!(d[17] > null, "d′ {} vs null {null}", d[17]);
        // A planted column is found by the best-unit classifier and the probe.
        assert!(best_unit_accuracy(&m, &labels, 5, 2) > 0.85);
        // The probe (50 dimensions, 48 training rows, L2) loses some of the best unit's edge
        // (87.5% at best here); a plant that separates the sets completely it finds better.
        let acc = probe_accuracy(&m, &labels, 5, 2);
        assert!(acc > 0.7, "probe accuracy {acc}");
        let (clear, clear_labels) = planted(30, 50, 17, 2.5, 1);
        let clear_acc = probe_accuracy(&clear, &clear_labels, 5, 2);
        assert!(
            clear_acc > 0.85 && clear_acc > acc,
            "probe accuracy {clear_acc}"
        );
        // Without the plant: the largest |d′| sits within the null, the probes near chance.
        let (m0, labels0) = planted(30, 50, 17, 0.0, 1);
        let null0 = permutation_null(&[&m0], &labels0, 200, 9)[0];
        let max0 = max_abs(&dprimes(&m0, &labels0));
        assert!(max0 < null0 * 1.2, "max {max0} null {null0}");
        assert!(probe_accuracy(&m0, &labels0, 5, 2) < 0.75);
        assert!(best_unit_accuracy(&m0, &labels0, 5, 2) < 0.75);
        // The null of random data is what chance gives 50 columns of 30 vs 30: about 0.6–1.0.
        assert!((0.5..1.2).contains(&null0), "{null0}");
    }

    #[test]
    fn matched_pairs_share_a_fold_and_identical_pairs_probe_at_chance() {
        let labels: Vec<bool> = (0..40).map(|i| i < 20).collect();
        let folds = stratified_folds(&labels, 5, 1);
        for i in 0..20 {
            assert_eq!(folds[i], folds[i + 20], "pair {i}");
        }
        for f in 0..5 {
            assert_eq!(folds.iter().filter(|&&x| x == f).count(), 8);
        }
        // A and B identical row by row: nothing to learn, and no fold sees a twin.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let half: Vec<f32> = (0..20 * 6).map(|_| rng.random::<f32>()).collect();
        let m = Matrix::new(40, 6, [half.clone(), half].concat());
        let acc = probe_accuracy(&m, &labels, 5, 3);
        assert!((0.3..=0.7).contains(&acc), "{acc}");
    }

    #[test]
    fn folds_are_stratified_and_cover_every_row() {
        let labels: Vec<bool> = (0..23).map(|i| i % 3 == 0).collect();
        let folds = stratified_folds(&labels, 5, 4);
        for f in 0..5 {
            let a = (0..23).filter(|&i| folds[i] == f && labels[i]).count();
            let b = (0..23).filter(|&i| folds[i] == f && !labels[i]).count();
            assert!(
                (1..=2).contains(&a) && (3..=4).contains(&b),
                "fold {f}: {a} {b}"
            );
        }
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(v, 0.95), 190.0);
        assert_eq!(percentile(vec![3.0], 0.95), 3.0);
    }
}
