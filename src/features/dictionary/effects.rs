//! A dictionary feature's direct effect on a target's logit, beside the neurons' and heads' of
//! a direct logit attribution: what its code at the position writes along its atom, read along
//! the target's logit direction through the final norm with the attribution's frozen scale,
//! `code_j × (atom_j · dir) / scale` (the same reading as a neuron's `act × W_outᵀ·dir / scale`).

use super::{DictError, Dictionary};
use crate::circuits::dla::DlaReport;
use crate::hooks::{BlockSite, Capture, HookPoint};
use crate::model::Model;

/// Adds `dict`'s features' direct effects to `report` (a plain run's attribution: its text,
/// position, target, versus and frozen scale) at every layer whose residual the dictionary
/// reads. The residual is recomputed (a forward that stops after the last of those layers) and
/// encoded at the position; position 0, the sink, has no code. A dictionary of another model
/// (another width, or layers this model lacks) adds nothing there: the neurons' and heads'
/// effects stay usable.
pub fn add_to(model: &Model, dict: &Dictionary, report: &mut DlaReport) -> Result<(), DictError> {
    let n_layers = model.config().n_layers;
    let layers: Vec<(usize, usize)> = dict
        .resid_layers()
        .into_iter()
        .filter(|&(l, _)| l < n_layers)
        .collect();
    let Some(last) = layers.iter().map(|&(l, _)| l).max() else {
        return Ok(());
    };
    if dict.d() != model.config().d_model {
        return Ok(());
    }
    let ids: Vec<u32> = model.tokenize(&report.text)?.iter().map(|t| t.id).collect();
    let pos = report.position;
    let mut dir = model.logit_direction(report.target.id)?;
    if let Some(v) = &report.versus {
        let other = model.logit_direction(v.id)?;
        dir.iter_mut().zip(&other).for_each(|(a, b)| *a -= b);
    }
    let points = layers
        .iter()
        .map(|&(l, _)| HookPoint::block(l, BlockSite::ResidPost));
    let records = model.run_batch_through(&[&ids], &Capture::points(points), last, None)?;
    let inv_scale = f64::from(report.inv_scale);
    for (layer, h) in layers {
        let point = HookPoint::block(layer, BlockSite::ResidPost);
        let Some(act) = records[0].get(point) else {
            continue;
        };
        let mut effects = vec![0f32; dict.atoms()];
        if pos > 0 && pos < act.shape[0] {
            for &(j, code) in &dict.encode(h, act.row(pos))[0] {
                let read: f64 = dict
                    .atom_direction(h, j as usize)
                    .iter()
                    .zip(&dir)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                effects[j as usize] = (f64::from(code) * read * inv_scale) as f32;
            }
        }
        if let Some(bars) = report.layers.get_mut(layer) {
            bars.dictionary = Some(effects);
        }
    }
    Ok(())
}
