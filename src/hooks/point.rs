//! Hook points: the places in a forward pass where activations can be read or replaced.
//!
//! Names are exactly TransformerLens's (`blocks.10.mlp.hook_post`), because they are the
//! interface researchers already know. A name prints and parses losslessly; an unknown name is
//! an error that lists the accepted forms.

use std::fmt;
use std::str::FromStr;

/// One site inside a transformer block, in execution order (the derived `Ord` relies on it).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum BlockSite {
    /// `[pos, d_model]` the residual stream entering the block.
    ResidPre,
    /// `[pos, d_model]` the output of the first norm.
    Ln1Normalized,
    /// `[pos, head, d_head]` queries, before rotary embedding.
    Q,
    /// `[pos, kv_head, d_head]` keys, before rotary embedding.
    K,
    /// `[pos, kv_head, d_head]` values.
    V,
    /// `[head, query_pos, key_pos]` scaled, masked attention logits (masked entries are -inf).
    AttnScores,
    /// `[head, query_pos, key_pos]` attention probabilities.
    Pattern,
    /// `[pos, head, d_head]` per-head attention outputs, the input of the output projection.
    Z,
    /// `[pos, d_model]` the attention layer's contribution to the residual stream.
    AttnOut,
    /// `[pos, d_model]` the residual stream between attention and MLP.
    ResidMid,
    /// `[pos, d_model]` the output of the second norm.
    Ln2Normalized,
    /// `[pos, d_mlp]` MLP pre-activation (the gate projection for SwiGLU).
    MlpPre,
    /// `[pos, d_mlp]` the up projection of a gated MLP (absent in GPT-2).
    MlpPreLinear,
    /// `[pos, d_mlp]` MLP neurons: the input of the down projection.
    MlpPost,
    /// `[pos, d_model]` the MLP's contribution to the residual stream.
    MlpOut,
    /// `[pos, d_model]` the residual stream leaving the block.
    ResidPost,
}

impl BlockSite {
    pub const ALL: [BlockSite; 16] = [
        BlockSite::ResidPre,
        BlockSite::Ln1Normalized,
        BlockSite::Q,
        BlockSite::K,
        BlockSite::V,
        BlockSite::AttnScores,
        BlockSite::Pattern,
        BlockSite::Z,
        BlockSite::AttnOut,
        BlockSite::ResidMid,
        BlockSite::Ln2Normalized,
        BlockSite::MlpPre,
        BlockSite::MlpPreLinear,
        BlockSite::MlpPost,
        BlockSite::MlpOut,
        BlockSite::ResidPost,
    ];

    /// The part of the name after `blocks.{l}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            BlockSite::ResidPre => "hook_resid_pre",
            BlockSite::Ln1Normalized => "ln1.hook_normalized",
            BlockSite::Q => "attn.hook_q",
            BlockSite::K => "attn.hook_k",
            BlockSite::V => "attn.hook_v",
            BlockSite::AttnScores => "attn.hook_attn_scores",
            BlockSite::Pattern => "attn.hook_pattern",
            BlockSite::Z => "attn.hook_z",
            BlockSite::AttnOut => "hook_attn_out",
            BlockSite::ResidMid => "hook_resid_mid",
            BlockSite::Ln2Normalized => "ln2.hook_normalized",
            BlockSite::MlpPre => "mlp.hook_pre",
            BlockSite::MlpPreLinear => "mlp.hook_pre_linear",
            BlockSite::MlpPost => "mlp.hook_post",
            BlockSite::MlpOut => "hook_mlp_out",
            BlockSite::ResidPost => "hook_resid_post",
        }
    }

    /// How positions and feature indices map onto this site's tensor.
    pub fn layout(self) -> Layout {
        match self {
            BlockSite::Q | BlockSite::K | BlockSite::V | BlockSite::Z => Layout::PosHeadDim,
            BlockSite::AttnScores | BlockSite::Pattern => Layout::HeadQueryKey,
            _ => Layout::PosWidth,
        }
    }
}

/// The shape convention of a hook point's tensor, which decides what "position" and "index" mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[pos, width]`: an index is one neuron or dimension.
    PosWidth,
    /// `[pos, head, d_head]`: an index is one head (all its `d_head` values).
    PosHeadDim,
    /// `[head, query_pos, key_pos]`: an index is one head; positions are query positions.
    HeadQueryKey,
}

/// A hook point. The derived order is execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `[pos, d_model]` token embeddings.
    Embed,
    /// `[pos, d_model]` learned position embeddings (GPT-2 only).
    PosEmbed,
    Block {
        layer: usize,
        site: BlockSite,
    },
    /// `[pos, d_model]` the final norm's output, the input of the unembedding.
    LnFinal,
}

impl HookPoint {
    pub fn block(layer: usize, site: BlockSite) -> Self {
        HookPoint::Block { layer, site }
    }

    /// The block this point lies in, if any.
    pub fn layer(self) -> Option<usize> {
        match self {
            HookPoint::Block { layer, .. } => Some(layer),
            _ => None,
        }
    }

    pub fn layout(self) -> Layout {
        match self {
            HookPoint::Block { site, .. } => site.layout(),
            _ => Layout::PosWidth,
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => f.write_str("hook_embed"),
            HookPoint::PosEmbed => f.write_str("hook_pos_embed"),
            HookPoint::LnFinal => f.write_str("ln_final.hook_normalized"),
            HookPoint::Block { layer, site } => write!(f, "blocks.{layer}.{}", site.suffix()),
        }
    }
}

/// A name that is not a hook point.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown hook point `{0}`; expected hook_embed, hook_pos_embed, ln_final.hook_normalized or \
     blocks.{{layer}}.{{hook_resid_pre|ln1.hook_normalized|attn.hook_q|attn.hook_k|attn.hook_v|\
     attn.hook_attn_scores|attn.hook_pattern|attn.hook_z|hook_attn_out|hook_resid_mid|\
     ln2.hook_normalized|mlp.hook_pre|mlp.hook_pre_linear|mlp.hook_post|hook_mlp_out|hook_resid_post}}"
)]
pub struct UnknownHookPoint(pub String);

impl FromStr for HookPoint {
    type Err = UnknownHookPoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownHookPoint(s.to_string());
        match s {
            "hook_embed" => return Ok(HookPoint::Embed),
            "hook_pos_embed" => return Ok(HookPoint::PosEmbed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinal),
            _ => {}
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unknown());
        }
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let site = BlockSite::ALL
            .into_iter()
            .find(|site| site.suffix() == suffix)
            .ok_or_else(unknown)?;
        Ok(HookPoint::Block { layer, site })
    }
}

impl serde::Serialize for HookPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HookPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        let mut points = vec![HookPoint::Embed, HookPoint::PosEmbed, HookPoint::LnFinal];
        for site in BlockSite::ALL {
            points.push(HookPoint::block(29, site));
        }
        for p in points {
            let name = p.to_string();
            assert_eq!(name.parse::<HookPoint>(), Ok(p), "{name}");
        }
        assert_eq!(
            HookPoint::block(10, BlockSite::MlpPost).to_string(),
            "blocks.10.mlp.hook_post"
        );
        assert_eq!(
            HookPoint::block(5, BlockSite::Z).to_string(),
            "blocks.5.attn.hook_z"
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        for bad in [
            "",
            "blocks",
            "blocks.x.hook_resid_pre",
            "blocks.1.mlp.hook_postt",
            "blocks.-1.hook_resid_pre",
            "hook_embeds",
            "blocks.1",
        ] {
            assert!(bad.parse::<HookPoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn order_is_execution_order() {
        let a = HookPoint::block(3, BlockSite::MlpPost);
        assert!(HookPoint::Embed < a);
        assert!(a < HookPoint::block(3, BlockSite::ResidPost));
        assert!(
            HookPoint::block(3, BlockSite::ResidPost) < HookPoint::block(4, BlockSite::ResidPre)
        );
        assert!(HookPoint::block(40, BlockSite::ResidPost) < HookPoint::LnFinal);
    }
}
