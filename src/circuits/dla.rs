//! Direct logit attribution: at one position, what each component writes into the residual
//! stream, read along a target token's logit direction (or target − versus: "why A and not B")
//! through the final norm with its scale frozen at its value on this run.
//!
//! The final residual at a position is the sum of what was written into it: the embedding
//! (`hook_embed`, plus `hook_pos_embed` for GPT-2), each layer's attention output and each
//! layer's MLP output. The attention output is the sum of the heads' `W_O[:, h] · z_h` (plus the
//! output projection's bias, GPT-2); the MLP output is the sum of the neurons' `act_n · W_out[:, n]`
//! (plus its bias, part of the MLP's component). With the final norm's `1/scale` frozen, the
//! logit is linear in these parts: `logit = Σ_c (c · dir) / s + β · W_U[t]`, where `dir` is
//! [`Model::logit_direction`]. The sum of the components therefore equals the logit except for
//! the final norm's bias (LayerNorm) and the attention output biases, which belong to no
//! component; `residual` reports that remainder (rounding only, for RMSNorm models without
//! biases such as SmolLM2).

use serde::Serialize;

use super::{single_token, tokenize, CircuitError, Result, TokenRef};
use crate::features::Basis;
use crate::hooks::{ActivationRecord, BlockSite, Capture, HookPoint, Intervention};
use crate::model::{Model, ModelError};

/// Neurons listed by default.
pub const DEFAULT_NEURONS: usize = 20;

/// What the embedding, a head or an MLP layer adds to the logit (difference).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Component {
    /// `embed`, `L17H4`, `L10.mlp`.
    pub name: String,
    pub value: f32,
    /// `None` for the embedding.
    #[serde(skip)]
    pub layer: Option<usize>,
    /// The head's index, for a head.
    #[serde(skip)]
    pub head: Option<usize>,
}

/// What one MLP neuron adds: its activation × its output weights · the logit direction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NeuronValue {
    /// `L10N123`.
    pub feature: String,
    pub value: f32,
    /// The neuron's activation (`mlp.hook_post`) at the position.
    pub activation: f32,
    #[serde(skip)]
    pub layer: usize,
    #[serde(skip)]
    pub neuron: usize,
}

/// One layer's bars.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerBars {
    pub layer: usize,
    /// The sum of the heads.
    pub attn: f32,
    pub mlp: f32,
    /// Head by head.
    pub heads: Vec<f32>,
    /// The layer's neuron with the largest |value| (where its MLP's card leads).
    pub strongest_neuron: Option<NeuronValue>,
    /// Neuron by neuron (`act × W_outᵀ·dir × 1/scale`), every one of the layer's: what the
    /// heatmap ranks its rows by. Not in `hubel dla --json` (`neurons` lists the largest).
    #[serde(skip)]
    pub neurons: Vec<f32>,
    /// With a dictionary of this layer's residual stream: each of its features' direct effect
    /// (`code × atomᵀ·dir × 1/scale`), added by `dictionary::effects::add_to`.
    #[serde(skip)]
    pub dictionary: Option<Vec<f32>>,
}

impl LayerBars {
    /// The direct effect of each unit of `basis` in this layer: the neurons', the heads', or
    /// the dictionary features' (`None` when no dictionary's were added).
    pub fn effects(&self, basis: Basis) -> Option<&[f32]> {
        match basis {
            Basis::Neurons => Some(&self.neurons),
            Basis::Heads => Some(&self.heads),
            Basis::Dictionary => self.dictionary.as_deref(),
        }
    }
}

/// `hubel dla --json`.
#[derive(Clone, Debug, Serialize)]
pub struct DlaReport {
    pub model: String,
    pub text: String,
    pub tokens: Vec<String>,
    pub position: usize,
    pub target: TokenRef,
    pub versus: Option<TokenRef>,
    /// `logit( Paris)` or `logit( Paris) − logit( Rome)` at the position.
    pub metric: String,
    /// The metric as the model computes it.
    pub total: f32,
    /// The sum of every component (embedding, heads, MLPs).
    pub sum: f32,
    /// `total − sum`: the final norm's bias and the attention biases (GPT-2), and rounding.
    pub residual: f32,
    /// The final norm's `1/scale` at the position, held fixed.
    pub inv_scale: f32,
    /// Every component, largest |value| first.
    pub components: Vec<Component>,
    /// The neurons with the largest |value|, largest first.
    pub neurons: Vec<NeuronValue>,
    /// Per layer, in order: heads and MLP for the bar chart (and every neuron's value, not
    /// serialised).
    pub layers: Vec<LayerBars>,
    /// The edits of the run attributed, as specs (empty: the plain run).
    pub interventions: Vec<String>,
}

/// What `hubel dla` asks for.
#[derive(Clone, Debug)]
pub struct DlaRequest {
    pub text: String,
    pub target: String,
    pub versus: Option<String>,
    /// `None`: the last token.
    pub position: Option<usize>,
    /// How many neurons to list.
    pub neurons: usize,
    /// Edits of the run attributed (`--ablate`): every component is read from the intervened
    /// run, so the parts sum to the intervened logit (an edit at a point the attribution does
    /// not read lands in the residual only through what it changes downstream).
    pub interventions: Vec<Intervention>,
}

/// The hook points a DLA reads from a run.
pub fn capture(model: &Model) -> Capture {
    let n = model.config().n_layers;
    let mut points = vec![
        HookPoint::Embed,
        HookPoint::PosEmbed,
        HookPoint::block(n - 1, BlockSite::ResidPost),
    ];
    for l in 0..n {
        points.extend([
            HookPoint::block(l, BlockSite::Z),
            HookPoint::block(l, BlockSite::MlpOut),
            HookPoint::block(l, BlockSite::MlpPost),
        ]);
    }
    Capture::points(points)
}

fn row(record: &ActivationRecord, point: HookPoint, pos: usize) -> Result<&[f32]> {
    let act = record
        .get(point)
        .ok_or_else(|| ModelError::Format(format!("{point} was not recorded")))?;
    if pos >= act.shape[0] {
        return Err(CircuitError::PositionOutOfRange {
            pos,
            len: act.shape[0],
        });
    }
    Ok(act.row(pos))
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The attribution at `pos` of a run whose record holds [`capture`]'s points, for `target`
/// (minus `versus`): every component sorted by |value|, the `neurons` largest neurons, the
/// per-layer bars, the components' sum and the final norm's frozen `1/scale`.
pub fn attribute(
    model: &Model,
    record: &ActivationRecord,
    pos: usize,
    target: u32,
    versus: Option<u32>,
    neurons: usize,
) -> Result<Attribution> {
    let cfg = model.config();
    let (n_layers, n_heads, d_head) = (cfg.n_layers, cfg.n_heads, cfg.d_head);
    let inv_scale = model.final_norm_inv_scale(row(
        record,
        HookPoint::block(n_layers - 1, BlockSite::ResidPost),
        pos,
    )?)? as f64;
    let mut dir = model.logit_direction(target)?;
    if let Some(v) = versus {
        let other = model.logit_direction(v)?;
        dir.iter_mut().zip(&other).for_each(|(a, b)| *a -= b);
    }
    let mut components = Vec::with_capacity(1 + n_layers * (n_heads + 1));
    let mut embed = dot(row(record, HookPoint::Embed, pos)?, &dir);
    if record.get(HookPoint::PosEmbed).is_some() {
        embed += dot(row(record, HookPoint::PosEmbed, pos)?, &dir);
    }
    components.push(Component {
        name: "embed".into(),
        value: (embed * inv_scale) as f32,
        layer: None,
        head: None,
    });
    let mut all_neurons = Vec::new();
    let mut layers = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        let reads = model.head_reads(l, &dir)?;
        let z = row(record, HookPoint::block(l, BlockSite::Z), pos)?;
        let heads: Vec<f32> = (0..n_heads)
            .map(|h| {
                let s = h * d_head..(h + 1) * d_head;
                (dot(&z[s.clone()], &reads[s]) * inv_scale) as f32
            })
            .collect();
        for (h, &value) in heads.iter().enumerate() {
            components.push(Component {
                name: format!("L{l}H{h}"),
                value,
                layer: Some(l),
                head: Some(h),
            });
        }
        let mlp = (dot(
            row(record, HookPoint::block(l, BlockSite::MlpOut), pos)?,
            &dir,
        ) * inv_scale) as f32;
        components.push(Component {
            name: format!("L{l}.mlp"),
            value: mlp,
            layer: Some(l),
            head: None,
        });
        let acts = row(record, HookPoint::block(l, BlockSite::MlpPost), pos)?;
        let reads = model.neuron_reads(l, &dir)?;
        let first = all_neurons.len();
        all_neurons.extend(
            acts.iter()
                .zip(&reads)
                .enumerate()
                .map(|(n, (&a, &r))| NeuronValue {
                    feature: format!("L{l}N{n}"),
                    value: (a as f64 * r as f64 * inv_scale) as f32,
                    activation: a,
                    layer: l,
                    neuron: n,
                }),
        );
        let strongest_neuron = all_neurons[first..]
            .iter()
            .max_by(|a, b| a.value.abs().total_cmp(&b.value.abs()))
            .cloned();
        let neurons = all_neurons[first..].iter().map(|n| n.value).collect();
        layers.push(LayerBars {
            layer: l,
            attn: heads.iter().map(|&v| v as f64).sum::<f64>() as f32,
            mlp,
            heads,
            strongest_neuron,
            neurons,
            dictionary: None,
        });
    }
    let sum = components.iter().map(|c| c.value as f64).sum::<f64>() as f32;
    components.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    all_neurons.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    all_neurons.truncate(neurons);
    Ok(Attribution {
        components,
        neurons: all_neurons,
        layers,
        sum,
        inv_scale: inv_scale as f32,
    })
}

/// What [`attribute`] finds.
#[derive(Clone, Debug)]
pub struct Attribution {
    pub components: Vec<Component>,
    pub neurons: Vec<NeuronValue>,
    pub layers: Vec<LayerBars>,
    pub sum: f32,
    pub inv_scale: f32,
}

/// The report.
pub fn run(model: &Model, req: &DlaRequest) -> Result<DlaReport> {
    let target = single_token(model, &req.target, "target")?;
    let versus = req
        .versus
        .as_deref()
        .map(|v| single_token(model, v, "versus token"))
        .transpose()?;
    if versus.as_ref().is_some_and(|v| v.id == target.id) {
        return Err(CircuitError::SameTokens(target.token));
    }
    let (ids, texts) = tokenize(model, &req.text)?;
    let pos = req.position.unwrap_or(ids.len() - 1);
    if pos >= ids.len() {
        return Err(CircuitError::PositionOutOfRange {
            pos,
            len: ids.len(),
        });
    }
    model.check_interventions(&req.interventions, ids.len())?;
    let out = model.run(&ids, &capture(model), &req.interventions)?;
    let logits = out.logits_at(pos);
    let total = logits[target.id as usize] - versus.as_ref().map_or(0.0, |v| logits[v.id as usize]);
    let a = attribute(
        model,
        &out.record,
        pos,
        target.id,
        versus.as_ref().map(|v| v.id),
        req.neurons,
    )?;
    Ok(DlaReport {
        model: model.info().describe_at(model.precision()),
        text: req.text.clone(),
        tokens: texts,
        position: pos,
        metric: metric_name(&target, versus.as_ref()),
        target,
        versus,
        total,
        sum: a.sum,
        residual: total - a.sum,
        inv_scale: a.inv_scale,
        components: a.components,
        neurons: a.neurons,
        layers: a.layers,
        interventions: req
            .interventions
            .iter()
            .map(crate::probe::describe)
            .collect(),
    })
}

/// `logit(" Paris")` or `logit(" Paris") − logit(" Rome")`.
pub fn metric_name(target: &TokenRef, versus: Option<&TokenRef>) -> String {
    match versus {
        Some(v) => format!("logit({:?}) − logit({:?})", target.token, v.token),
        None => format!("logit({:?})", target.token),
    }
}

/// The report as text: the totals, the top components and the top neurons.
pub fn render(r: &DlaReport, rows: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "model  {}", r.model);
    let _ = writeln!(
        s,
        "text   {:?}, position {} = {:?}",
        r.text, r.position, r.tokens[r.position]
    );
    if !r.interventions.is_empty() {
        let _ = writeln!(s, "edits  {}", r.interventions.join("; "));
    }
    let _ = writeln!(
        s,
        "{} = {:.4}; components sum to {:.4} (final-norm scale frozen at 1/{:.4}); residual {:+.4} (norm bias, attention biases, rounding)",
        r.metric,
        r.total,
        r.sum,
        1.0 / r.inv_scale,
        r.residual
    );
    let _ = writeln!(s, "components (largest |value| first)");
    for c in r.components.iter().take(rows) {
        let _ = writeln!(s, "  {:<10} {:>+9.4}", c.name, c.value);
    }
    let _ = writeln!(s, "neurons (largest |value| first)");
    for n in r.neurons.iter().take(rows) {
        let _ = writeln!(
            s,
            "  {:<10} {:>+9.4}  (activation {:+.3})",
            n.feature, n.value, n.activation
        );
    }
    s
}
