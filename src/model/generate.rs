//! Continuation: greedy or seeded temperature / top-p sampling with a KV cache, with the
//! interventions active at every step (a lesion stays a lesion while the model writes).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::transformer::KvCache;
use super::{Hooks, Model, Result};
use crate::hooks::{Capture, Intervention};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Sampling {
    Greedy,
    /// Softmax at `temperature`, keep the smallest set of tokens whose mass reaches `top_p`,
    /// draw with a generator seeded by `seed` (the same seed gives the same text).
    Temperature {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generate {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop after the end-of-sequence token.
    pub stop_at_eos: bool,
}

impl Default for Generate {
    fn default() -> Self {
        Generate {
            max_tokens: 20,
            sampling: Sampling::Greedy,
            stop_at_eos: true,
        }
    }
}

impl Model {
    /// Continues `prompt` by up to `opts.max_tokens` tokens; returns the new tokens only.
    ///
    /// `Op::Mean` is resolved once over the prompt's positions (the mean a probe run would use)
    /// and then held fixed, so each cached step sees the same replacement value.
    pub fn generate(
        &self,
        prompt: &[u32],
        interventions: &[Intervention],
        opts: &Generate,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Vec<u32>> {
        self.check_tokens(prompt)?;
        self.check_interventions(interventions, prompt.len())?;
        let w = self.weights();
        let fast = self.precision() == super::Precision::Fast;
        let n_ctx = self.config().n_ctx;
        let mut cache = KvCache::default();
        // `Op::Mean` is resolved over the prompt and then held fixed for the cached steps.
        let nothing = Capture::Nothing;
        let mut hooks = Hooks::new(&nothing, interventions).resolving_means();
        if let Some(flag) = &cancel {
            hooks = hooks.with_cancel(flag.clone());
        }
        let x = w.embed(prompt, &mut hooks)?;
        let mut logits = w.unembed_last(
            &w.run_from(0, x, &mut hooks, Some(&mut cache), None, fast)?,
            fast,
        )?;
        let resolved = hooks.resolved();

        let mut rng = match opts.sampling {
            Sampling::Temperature { seed, .. } => rand::rngs::StdRng::seed_from_u64(seed),
            Sampling::Greedy => rand::rngs::StdRng::seed_from_u64(0),
        };
        let mut out = Vec::with_capacity(opts.max_tokens);
        for step in 0..opts.max_tokens {
            let next = match opts.sampling {
                Sampling::Greedy => argmax(&logits),
                Sampling::Temperature {
                    temperature, top_p, ..
                } => sample(&logits, temperature, top_p, &mut rng),
            };
            out.push(next);
            let len = prompt.len() + out.len();
            let done = step + 1 == opts.max_tokens
                || len >= n_ctx
                || (opts.stop_at_eos && Some(next) == self.tokenizer().eos());
            if done {
                break;
            }
            let mut hooks = Hooks::new(&nothing, &resolved);
            if let Some(flag) = &cancel {
                hooks = hooks.with_cancel(flag.clone());
            }
            hooks.pos_offset = len - 1;
            let x = w.embed(&[next], &mut hooks)?;
            logits = w.unembed_last(
                &w.run_from(0, x, &mut hooks, Some(&mut cache), None, fast)?,
                fast,
            )?;
        }
        Ok(out)
    }
}

/// Index of the largest logit (the first one on ties, like torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut impl Rng) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| (i, f64::from((l - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= f64::from(top_p.clamp(0.0, 1.0)) {
            cut = i + 1;
            break;
        }
    }
    probs.truncate(cut.max(1));
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * mass;
    for (i, p) in &probs {
        r -= p;
        if r <= 0.0 {
            return *i as u32;
        }
    }
    probs.last().map_or(0, |p| p.0 as u32)
}
