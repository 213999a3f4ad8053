//! An attention pattern made small enough to draw: a long probe's `[len, len]` pattern has more
//! cells than a card has pixels, so it is max-pooled over square blocks of queries × keys (the
//! strongest weight in a block shows, so a sharp attention to one token is never averaged away).
//! Plain data in and out: the card picks a grid and only draws it.

/// At most this many cells a side in the finest grid of a long pattern.
pub const MAX_CELLS: usize = 256;

/// Grids coarser than this many cells a side are not made.
const MIN_CELLS: usize = 8;

/// A square pattern `[n, n]` max-pooled over blocks of `block` queries × `block` keys (the last
/// block of each axis may be shorter).
#[derive(Clone, Debug, PartialEq)]
pub struct PooledGrid {
    /// The pattern's side (tokens).
    pub n: usize,
    /// Tokens a cell covers along each axis (1: not pooled).
    pub block: usize,
    /// Cells a side: `⌈n / block⌉`.
    pub cells: usize,
    /// `[cells, cells]`, row-major: cell `(r, c)` is the largest value of queries
    /// `r·block..` × keys `c·block..` ([`PooledGrid::span`]).
    pub values: Vec<f32>,
}

impl PooledGrid {
    /// Cell `(r, c)`.
    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.values[r * self.cells + c]
    }

    /// The tokens cell row (or column) `i` covers.
    pub fn span(&self, i: usize) -> std::ops::Range<usize> {
        (i * self.block).min(self.n)..((i + 1) * self.block).min(self.n)
    }
}

/// `values` (`[n, n]`, row-major) max-pooled over blocks of `block × block` (`block` ≥ 1).
pub fn pool_max(values: &[f32], n: usize, block: usize) -> PooledGrid {
    assert_eq!(values.len(), n * n, "a square pattern of side {n}");
    let block = block.max(1);
    let cells = n.div_ceil(block);
    let mut out = vec![f32::NEG_INFINITY; cells * cells];
    for (q, row) in values.chunks(n.max(1)).enumerate() {
        let cell_row = &mut out[(q / block) * cells..][..cells];
        for (c, keys) in row.chunks(block).enumerate() {
            let m = keys.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            cell_row[c] = cell_row[c].max(m);
        }
    }
    PooledGrid {
        n,
        block,
        cells,
        values: out,
    }
}

/// A grid pooled again by `factor` (≥ 1): the same as [`pool_max`] of the original pattern with
/// blocks `factor` times as large (a maximum of maxima over blocks that tile it).
fn coarsen(grid: &PooledGrid, factor: usize) -> PooledGrid {
    let (cells, f) = (grid.cells, factor.max(1));
    let coarse = cells.div_ceil(f);
    let mut out = vec![f32::NEG_INFINITY; coarse * coarse];
    for r in 0..cells {
        for c in 0..cells {
            let o = &mut out[(r / f) * coarse + c / f];
            *o = o.max(grid.at(r, c));
        }
    }
    PooledGrid {
        n: grid.n,
        block: grid.block * f,
        cells: coarse,
        values: out,
    }
}

/// A pattern's grids, finest first: the pattern itself when it has at most [`MAX_CELLS`]
/// tokens a side (else pooled to at most that many cells), then each grid pooled by 2 again,
/// down to about [`MIN_CELLS`] cells a side. A view draws the finest one whose cells are large
/// enough ([`PatternGrids::finest_within`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PatternGrids {
    pub levels: Vec<PooledGrid>,
}

impl PatternGrids {
    /// The grids of `values` (`[n, n]`, row-major).
    pub fn new(values: &[f32], n: usize) -> Self {
        let first = pool_max(values, n, n.div_ceil(MAX_CELLS).max(1));
        let mut levels = vec![first];
        while let Some(last) = levels.last().filter(|g| g.cells > MIN_CELLS) {
            let next = coarsen(last, 2);
            levels.push(next);
        }
        PatternGrids { levels }
    }

    /// The pattern's side (tokens).
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, |g| g.n)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The finest grid with at most `cells` cells a side (the coarsest when none is).
    pub fn finest_within(&self, cells: usize) -> &PooledGrid {
        self.levels
            .iter()
            .find(|g| g.cells <= cells)
            .or(self.levels.last())
            .expect("a pattern has at least one grid")
    }
}
