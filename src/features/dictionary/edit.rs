//! A dictionary feature as an intervention: a direction op, not a neuron index. Ablating atom j
//! at a position adds −a_j · atom_j there (its coefficient in the clean residual times its
//! direction in the original space), so the reconstruction error and every other atom's share
//! stay as they were: only that feature changes. Scaling by f adds (f − 1) · a_j · atom_j;
//! steering adds v · atom_j at every position, whether the atom was active or not.

use crate::hooks::{Intervention, Op};

use super::{DictError, Dictionary};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Edit {
    Ablate,
    Scale(f32),
    Add(f32),
}

/// The intervention that applies `edit` to atom `atom` of `dict` at hook `h`, for a probe whose
/// residual at that hook is `x` (`[len, d]`, the run the edit is computed from), at positions
/// 1.. (position 0 is the attention sink, which no dictionary was trained on): one
/// [`Op::AddScaled`] holding the atom's direction and each position's change. `None` when it
/// changes nothing (an ablation or scaling of an atom silent at every token).
pub fn intervention(
    dict: &Dictionary,
    h: usize,
    atom: usize,
    x: &[f32],
    edit: Edit,
) -> Result<Option<Intervention>, DictError> {
    if atom >= dict.atoms() {
        return Err(DictError::Invalid(format!(
            "D{atom}: the dictionary has {} atoms (D0–D{})",
            dict.atoms(),
            dict.atoms().saturating_sub(1)
        )));
    }
    if h >= dict.config.hooks.len() {
        return Err(DictError::Invalid(format!(
            "the dictionary reads {} hooks, not {}",
            dict.config.hooks.len(),
            h + 1
        )));
    }
    let d = dict.d();
    if d == 0 || !x.len().is_multiple_of(d) {
        return Err(DictError::Invalid(format!(
            "{} has {} values here, not a multiple of the dictionary's {d} dimensions",
            dict.config.hooks[h],
            x.len()
        )));
    }
    let len = x.len() / d;
    let codes = if len > 1 {
        dict.encode(h, &x[d..len * d])
    } else {
        Vec::new()
    };
    let mut alphas = vec![0f32; len];
    for (i, code) in codes.iter().enumerate() {
        let a = code
            .iter()
            .find(|(j, _)| *j as usize == atom)
            .map_or(0.0, |c| c.1);
        alphas[i + 1] = match edit {
            Edit::Add(v) => v,
            _ if a == 0.0 => 0.0,
            Edit::Ablate => -a,
            Edit::Scale(f) => (f - 1.0) * a,
        };
    }
    if alphas.iter().all(|&a| a == 0.0) {
        return Ok(None);
    }
    let what = match edit {
        Edit::Ablate => "ablated".to_string(),
        Edit::Scale(f) => format!("×{f}"),
        Edit::Add(v) => format!("{v:+}·atom"),
    };
    Ok(Some(Intervention {
        hook: dict.config.hooks[h],
        positions: None,
        indices: None,
        op: Op::AddScaled {
            direction: dict.atom_direction(h, atom),
            alphas,
            label: format!("D{atom} {what} ({})", dict.label(atom)),
        },
    }))
}
