//! The factor atlas (Yun et al. 2021): each atom's importance at each layer the dictionary reads
//! (its mean coefficient over that layer's rows), the layer where it peaks, and the group that
//! peak puts it in — low (word level), mid (sentence patterns) or high (long range) — by thirds
//! of the model's depth.

use super::Dictionary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Group {
    Low,
    Mid,
    High,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Low => "low",
            Group::Mid => "mid",
            Group::High => "high",
        }
    }

    /// The group of a peak at `layer` in a model of `layers` blocks (the embedding is low).
    pub fn of(layer: Option<usize>, layers: usize) -> Self {
        match layer {
            None => Group::Low,
            Some(l) if 3 * l < layers.max(1) => Group::Low,
            Some(l) if 3 * l < 2 * layers.max(1) => Group::Mid,
            Some(_) => Group::High,
        }
    }
}

/// One atom in the atlas.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    pub atom: usize,
    /// Index into the dictionary's hooks of the peak, and its layer (`None`: the embedding).
    pub peak: usize,
    pub peak_layer: Option<usize>,
    pub group: Group,
    /// Importance per hook, divided by its largest (the profile's shape).
    pub profile: Vec<f32>,
    pub density: f32,
}

/// Every atom that fired on the training rows, sorted by peak layer (then by importance at the
/// peak, largest first).
pub fn atlas(dict: &Dictionary, layers: usize) -> Vec<Row> {
    let hooks = &dict.config.hooks;
    let mut rows: Vec<(f32, Row)> = dict
        .info
        .iter()
        .enumerate()
        .filter_map(|(atom, info)| {
            let (peak, &top) = info
                .importance
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))?;
            if top <= 0.0 {
                return None;
            }
            let peak_layer = hooks.get(peak).and_then(|h| h.layer());
            Some((
                top,
                Row {
                    atom,
                    peak,
                    peak_layer,
                    group: Group::of(peak_layer, layers),
                    profile: info.importance.iter().map(|v| v / top).collect(),
                    density: info.density,
                },
            ))
        })
        .collect();
    rows.sort_by(|a, b| {
        a.1.peak
            .cmp(&b.1.peak)
            .then(b.0.total_cmp(&a.0))
            .then(a.1.atom.cmp(&b.1.atom))
    });
    rows.into_iter().map(|(_, r)| r).collect()
}

/// How many atoms peak in each group.
pub fn group_counts(rows: &[Row]) -> [usize; 3] {
    let mut c = [0; 3];
    for r in rows {
        c[r.group as usize] += 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_thirds_of_the_depth() {
        assert_eq!(Group::of(None, 30), Group::Low);
        assert_eq!(Group::of(Some(9), 30), Group::Low);
        assert_eq!(Group::of(Some(10), 30), Group::Mid);
        assert_eq!(Group::of(Some(19), 30), Group::Mid);
        assert_eq!(Group::of(Some(20), 30), Group::High);
    }
}
