//! Feature bases: what a "feature" is when a user clicks one: an MLP neuron, an attention head,
//! or a dictionary feature (an atom of the sparse dictionary in use: a direction of the residual
//! stream, its activation the atom's code, see `dictionary`).

pub mod dictionary;

use crate::hooks::{BlockSite, HookPoint};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Basis {
    /// MLP neurons: `blocks.{l}.mlp.hook_post[n]`, labelled `L{l}N{n}`.
    Neurons,
    /// Attention heads: `blocks.{l}.attn.hook_z[h]`, labelled `L{l}H{h}`; a head's activation at a
    /// token is the norm of its output `z`.
    Heads,
    /// Atoms of the dictionary in use, read at `blocks.{l}.hook_resid_post`, labelled `L{l}D{j}`:
    /// a direction, not an index of a hook point. Its activation at a token is the atom's code
    /// (the record's [`crate::hooks::ActivationRecord::codes`]); an edit is an
    /// [`crate::hooks::Op::AddScaled`] of its direction.
    Dictionary,
}

impl Basis {
    pub const ALL: [Basis; 3] = [Basis::Neurons, Basis::Heads, Basis::Dictionary];

    pub fn name(self) -> &'static str {
        match self {
            Basis::Neurons => "MLP neurons",
            Basis::Heads => "Attention heads",
            Basis::Dictionary => "Dictionary features",
        }
    }

    /// The hook point a feature of this basis lives at (a dictionary's: the residual it reads).
    pub fn site(self) -> BlockSite {
        match self {
            Basis::Neurons => BlockSite::MlpPost,
            Basis::Heads => BlockSite::Z,
            Basis::Dictionary => BlockSite::ResidPost,
        }
    }

    /// Whether an activation can be negative (a neuron's); a head's norm and a dictionary
    /// code are not.
    pub fn signed(self) -> bool {
        self == Basis::Neurons
    }

    /// The letter in a label: `N`, `H`, `D`.
    fn letter(self) -> char {
        match self {
            Basis::Neurons => 'N',
            Basis::Heads => 'H',
            Basis::Dictionary => 'D',
        }
    }
}

/// One feature: a basis, a layer and an index, shown as TransformerLens labels it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FeatureId {
    pub basis: Basis,
    pub layer: usize,
    pub index: usize,
}

impl FeatureId {
    pub fn neuron(layer: usize, index: usize) -> Self {
        FeatureId {
            basis: Basis::Neurons,
            layer,
            index,
        }
    }

    pub fn head(layer: usize, index: usize) -> Self {
        FeatureId {
            basis: Basis::Heads,
            layer,
            index,
        }
    }

    /// Atom `index` of the dictionary in use, read at layer `layer`'s residual stream.
    pub fn atom(layer: usize, index: usize) -> Self {
        FeatureId {
            basis: Basis::Dictionary,
            layer,
            index,
        }
    }

    /// `L10N123`, `L5H3` or `L6D42`.
    pub fn label(&self) -> String {
        format!("L{}{}{}", self.layer, self.basis.letter(), self.index)
    }

    /// The feature an intervention edits as a whole: one neuron or head at every position, or
    /// a dictionary feature's [`crate::hooks::Op::AddScaled`] (labelled `D{atom} …`, as
    /// `dictionary::edit` makes it). `None` for edits of other hook points, several indices, or
    /// chosen positions.
    pub fn of_intervention(iv: &crate::hooks::Intervention) -> Option<Self> {
        let HookPoint::Block { layer, site } = iv.hook else {
            return None;
        };
        if let crate::hooks::Op::AddScaled { label, .. } = &iv.op {
            let atom = label.strip_prefix('D')?.split(' ').next()?.parse().ok()?;
            return (site == BlockSite::ResidPost).then_some(FeatureId::atom(layer, atom));
        }
        let basis = [Basis::Neurons, Basis::Heads]
            .into_iter()
            .find(|b| b.site() == site)?;
        match (iv.indices.as_deref(), &iv.positions) {
            (Some(&[index]), None) => Some(FeatureId {
                basis,
                layer,
                index,
            }),
            _ => None,
        }
    }

    /// Parses `L10N123` (neuron), `L5H3` (head) or `L6D42` (dictionary feature), any case,
    /// spaces around allowed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_uppercase();
        let bad = || {
            format!("`{}` is not a feature name: write L10N123 (layer 10, neuron 123), L5H3 (layer 5, head 3) or L6D42 (layer 6, dictionary feature 42)", text.trim())
        };
        let rest = t.strip_prefix('L').ok_or_else(bad)?;
        let split = rest.find(['N', 'H', 'D']).ok_or_else(bad)?;
        let (layer, index) = (&rest[..split], &rest[split + 1..]);
        let layer: usize = layer.parse().map_err(|_| bad())?;
        let index: usize = index.parse().map_err(|_| bad())?;
        Ok(match &rest[split..split + 1] {
            "N" => FeatureId::neuron(layer, index),
            "H" => FeatureId::head(layer, index),
            _ => FeatureId::atom(layer, index),
        })
    }

    /// `Err` with a message when this feature does not exist in `info`'s model (a dictionary
    /// feature's atom is checked against the dictionary, not here: only its layer is).
    pub fn check(&self, info: &crate::model::ModelInfo) -> Result<(), String> {
        if self.layer >= info.layers {
            return Err(format!(
                "{self}: the model has {}",
                crate::hooks::intervention::layer_count(info.layers)
            ));
        }
        let (units, what) = match self.basis {
            Basis::Neurons => (info.d_mlp, "MLP neurons"),
            Basis::Heads => (info.heads, "attention heads"),
            Basis::Dictionary => return Ok(()),
        };
        if self.index >= units {
            return Err(format!(
                "{self}: layer {} has {units} {what} (0–{})",
                self.layer,
                units.saturating_sub(1)
            ));
        }
        Ok(())
    }

    /// The hook point an intervention on this feature edits.
    pub fn hook(&self) -> HookPoint {
        HookPoint::block(self.layer, self.basis.site())
    }
}

impl std::fmt::Display for FeatureId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{Intervention, Op};

    #[test]
    fn parses_feature_names() {
        assert_eq!(FeatureId::parse("L10N123"), Ok(FeatureId::neuron(10, 123)));
        assert_eq!(FeatureId::parse(" l5h3 "), Ok(FeatureId::head(5, 3)));
        assert_eq!(FeatureId::parse("L6D42"), Ok(FeatureId::atom(6, 42)));
        assert_eq!(FeatureId::atom(6, 42).label(), "L6D42");
        for bad in [
            "",
            "L",
            "10N3",
            "L10",
            "L10X3",
            "LN3",
            "L1N",
            "L-1N2",
            "L99999999999999999999N1",
        ] {
            let e = FeatureId::parse(bad).unwrap_err();
            assert!(e.contains("not a feature name"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_intervention_names_its_feature_only_when_it_edits_one_whole_feature() {
        let neuron = Intervention::zero(HookPoint::block(10, BlockSite::MlpPost), vec![123]);
        assert_eq!(
            FeatureId::of_intervention(&neuron),
            Some(FeatureId::neuron(10, 123))
        );
        let head = Intervention::zero(HookPoint::block(5, BlockSite::Z), vec![3]);
        assert_eq!(
            FeatureId::of_intervention(&head).map(|f| f.label()),
            Some("L5H3".into())
        );
        let two = Intervention::zero(HookPoint::block(1, BlockSite::MlpPost), vec![1, 2]);
        let placed = Intervention {
            positions: Some(vec![0]),
            op: Op::Zero,
            ..neuron.clone()
        };
        let resid = Intervention::zero(HookPoint::block(1, BlockSite::ResidPost), vec![1]);
        for iv in [two, placed, resid] {
            assert_eq!(FeatureId::of_intervention(&iv), None, "{iv:?}");
        }
        // A dictionary feature's edit names its atom at the residual it edits.
        let atom = Intervention {
            hook: HookPoint::block(6, BlockSite::ResidPost),
            positions: None,
            indices: None,
            op: Op::AddScaled {
                direction: vec![1.0, 0.0],
                alphas: vec![0.0, -2.0],
                label: "D42 ablated (fruit)".into(),
            },
        };
        assert_eq!(
            FeatureId::of_intervention(&atom),
            Some(FeatureId::atom(6, 42))
        );
        let unnamed = Intervention {
            op: Op::AddScaled {
                direction: vec![1.0, 0.0],
                alphas: vec![0.0, -2.0],
                label: "a direction".into(),
            },
            ..atom
        };
        assert_eq!(FeatureId::of_intervention(&unnamed), None);
    }
}
