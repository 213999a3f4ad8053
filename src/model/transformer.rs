//! The forward pass, written out so that every hook point is ours.
//!
//! One decoder-only transformer with two variants, chosen by [`Arch`]:
//! - Llama (SmolLM2): pre-RMSNorm, rotary positions (HF's rotate-half convention), grouped-query
//!   attention, SwiGLU MLP; as in HF transformers' `modeling_llama.py`.
//! - GPT-2: pre-LayerNorm, learned positions, GELU (tanh) MLP, biases; as in `modeling_gpt2.py`.
//!
//! The two share the block structure, so the hook calls (and their order) are written once.
//! The residual stream is explicit in [`Weights::block`]: resid_pre → attn → resid_mid → mlp →
//! resid_post.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, D};

use super::config::Config;
use super::kernels::f32::PackedF32;
use super::kernels::q4::PackedQ4;
use super::kernels::{attention, rows};
use super::{Hooks, Result};
use crate::hooks::{BlockSite, HookPoint};

/// `y = x · Wᵀ + b`, with `W` packed once at load for the kernel ([`PackedF32`]), and its
/// 4-bit form for the fast path made the first time the fast path asks ([`PackedQ4`]; `None`
/// when the input width is not a multiple of its block: that layer stays exact).
pub(crate) struct Linear {
    w: PackedF32,
    b: Option<Tensor>,
    fast: OnceLock<Option<PackedQ4>>,
}

/// Runs `f` on a tensor's values as one row-major slice.
pub(crate) fn with_values<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        return Err(super::ModelError::Format(
            "the runtime computes on the CPU".into(),
        ));
    };
    let values = &storage.as_slice::<f32>()?[layout.start_offset()..][..x.elem_count()];
    Ok(f(values))
}

/// `x · Wᵀ` for `x: [pos, in]` → `[pos, out]`, on the fast path's 4-bit weight when given.
fn matmul_packed(x: &Tensor, w: &PackedF32, fast: Option<&PackedQ4>) -> Result<Tensor> {
    let (pos, k) = x.dims2()?;
    if k != w.k() {
        return Err(super::ModelError::Format(format!(
            "matmul of [{pos}, {k}] by [{}, {}]ᵀ",
            w.out(),
            w.k()
        )));
    }
    let mut y = vec![0f32; pos * w.out()];
    with_values(x, |xs| match fast {
        Some(q) => q.matmul(xs, pos, &mut y),
        None => w.matmul(xs, pos, &mut y),
    })?;
    Ok(Tensor::from_vec(y, (pos, w.out()), x.device())?)
}

/// The unembedding's 4-bit form only where 4 bits hold it exactly (a Q4_1 file's); otherwise it
/// stays f32 on the fast path too. It is 21% of a forward's multiply-adds but sets every
/// probability: SmolLM2's GGUF stores it as Q8_0, and rounding that to 4 bits raised the fast
/// path's worst last-position KL on the built-in probes from 0.008 to 0.14 nats (top-1 agreement
/// 0.99 → 0.88).
fn exact_q4(w: &PackedF32) -> Option<PackedQ4> {
    let original = w.unpack();
    let q = PackedQ4::quantize(&original, w.out(), w.k())?;
    let scale = original.iter().fold(0f32, |m, v| m.max(v.abs()));
    let exact = q
        .dequantize()
        .iter()
        .zip(&original)
        .all(|(a, b)| (a - b).abs() <= 1e-6 * scale);
    exact.then_some(q)
}

/// The 4-bit form of a packed weight, made once.
fn fast_form<'a>(slot: &'a OnceLock<Option<PackedQ4>>, w: &PackedF32) -> Option<&'a PackedQ4> {
    slot.get_or_init(|| PackedQ4::quantize(&w.unpack(), w.out(), w.k()))
        .as_ref()
}

/// Packs a 2-D weight tensor `[out, in]`.
pub(crate) fn pack(w: &Tensor) -> Result<PackedF32> {
    let (out, k) = w.dims2()?;
    with_values(w, |values| PackedF32::pack(values, out, k))
}

impl Linear {
    /// From an HF-layout weight `[out, in]`.
    pub(crate) fn from_out_in(w: Tensor, b: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            w: pack(&w)?,
            b,
            fast: OnceLock::new(),
        })
    }

    /// From a GPT-2 Conv1D weight, stored `[in, out]`.
    pub(crate) fn from_in_out(w: Tensor, b: Option<Tensor>) -> Result<Self> {
        Self::from_out_in(w.t()?.contiguous()?, b)
    }

    /// `[pos, in] → [pos, out]`, exact or on the fast path.
    fn forward(&self, x: &Tensor, fast: bool) -> Result<Tensor> {
        let q = if fast { self.fast_form() } else { None };
        let y = matmul_packed(x, &self.w, q)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The weight, `[out, in]` (row o: what output o reads; column i: what input i writes).
    pub(crate) fn weight(&self) -> &PackedF32 {
        &self.w
    }

    fn fast_form(&self) -> Option<&PackedQ4> {
        fast_form(&self.fast, &self.w)
    }

    fn elem_count(&self) -> usize {
        self.w.elem_count() + self.b.as_ref().map_or(0, |b| b.elem_count())
    }
}

pub(crate) enum Norm {
    /// `w` as plain values: the kernel reads them on every call.
    Rms {
        w: Vec<f32>,
        eps: f64,
    },
    Layer {
        w: Tensor,
        b: Tensor,
        eps: f64,
    },
}

impl Norm {
    /// `[pos, d] → [pos, d]`
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms { w, eps } => {
                let shape = x.dims().to_vec();
                let y = with_values(x, |xs| rows::rms_norm(xs, w, *eps as f32))?;
                Ok(Tensor::from_vec(y, shape, x.device())?)
            }
            Norm::Layer { w, b, eps } => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                let x = centered.broadcast_div(&(var + *eps)?.sqrt()?)?;
                Ok(x.broadcast_mul(w)?.broadcast_add(b)?)
            }
        }
    }

    fn elem_count(&self) -> usize {
        match self {
            Norm::Rms { w, .. } => w.len(),
            Norm::Layer { w, b, .. } => w.elem_count() + b.elem_count(),
        }
    }
}

pub(crate) enum Mlp {
    /// `down(silu(gate(x)) · up(x))`
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// `proj(gelu_tanh(fc(x)))`
    Gelu { fc: Linear, proj: Linear },
}

impl Mlp {
    /// The output projection as `[d_mlp, d_model]`: row n is what neuron n writes.
    pub(crate) fn out_weight(&self) -> &Linear {
        match self {
            Mlp::Gated { down, .. } => down,
            Mlp::Gelu { proj, .. } => proj,
        }
    }
}

pub(crate) struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
}

pub(crate) struct Block {
    pub(crate) ln1: Norm,
    pub(crate) attn: Attention,
    pub(crate) ln2: Norm,
    pub(crate) mlp: Mlp,
}

impl Block {
    /// Every linear layer of the block.
    fn linears(&self) -> Vec<&Linear> {
        let a = &self.attn;
        let mut all = vec![&a.q, &a.k, &a.v, &a.o];
        match &self.mlp {
            Mlp::Gated { gate, up, down } => all.extend([gate, up, down]),
            Mlp::Gelu { fc, proj } => all.extend([fc, proj]),
        }
        all
    }
}

/// Rotary tables `[n_ctx, d_head]` (the half-frequencies repeated twice, as HF builds them).
pub(crate) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    d_head: usize,
}

impl Rope {
    pub(crate) fn new(cfg: &Config) -> Self {
        let half = cfg.d_head / 2;
        // f32 throughout, like HF: inv_freq = 1 / base^(2i/d), angle = pos · inv_freq.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.d_head as f32))
            .collect();
        let mut cos = Vec::with_capacity(cfg.n_ctx * cfg.d_head);
        let mut sin = Vec::with_capacity(cfg.n_ctx * cfg.d_head);
        for p in 0..cfg.n_ctx {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Rope {
            cos,
            sin,
            d_head: cfg.d_head,
        }
    }

    /// `x · cos + rotate_half(x) · sin` in place, for `x: [pos, heads, d_head]` whose first row
    /// sits at position `offset`.
    fn apply(&self, x: &mut [f32], heads: usize, offset: usize) {
        let d = self.d_head;
        let half = d / 2;
        for (p, row) in x.chunks_mut(heads * d).enumerate() {
            let cos = &self.cos[(offset + p) * d..][..d];
            let sin = &self.sin[(offset + p) * d..][..d];
            for head in row.chunks_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] + -b * sin[i];
                    x2[i] = b * cos[half + i] + a * sin[half + i];
                }
            }
        }
    }
}

/// Keys (after rotary embedding) and values of earlier positions, per layer, for continuation:
/// `[pos, kv_heads, d_head]` each, grown by appending.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

#[derive(Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    /// Keys held.
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor's values, row-major.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

pub(crate) struct Weights {
    pub(crate) cfg: Config,
    /// `[vocab, d_model]`; `None` when tied: rows are read from `unembed`.
    pub(crate) embed: Option<Tensor>,
    /// `[n_ctx, d_model]` (GPT-2)
    pub(crate) pos_embed: Option<Tensor>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_final: Norm,
    /// `[vocab, d_model]`, packed (row t is token t's embedding when tied).
    pub(crate) unembed: PackedF32,
    /// The unembedding's 4-bit form for the fast path, made on first use.
    pub(crate) unembed_fast: OnceLock<Option<PackedQ4>>,
    pub(crate) rope: Option<Rope>,
    pub(crate) device: Device,
}

fn block_point(layer: usize, site: BlockSite) -> HookPoint {
    HookPoint::block(layer, site)
}

impl Weights {
    pub(crate) fn param_count(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.ln1.elem_count()
                    + b.ln2.elem_count()
                    + b.linears().iter().map(|l| l.elem_count()).sum::<usize>()
            })
            .sum();
        self.unembed.elem_count()
            + self.embed.as_ref().map_or(0, |e| e.elem_count())
            + self.pos_embed.as_ref().map_or(0, |p| p.elem_count())
            + blocks
            + self.ln_final.elem_count()
    }

    /// Token (and position) embeddings: the residual stream entering block 0, `[pos, d_model]`.
    pub(crate) fn embed(&self, tokens: &[u32], hooks: &mut Hooks) -> Result<Tensor> {
        self.embed_packed(&[tokens], std::slice::from_mut(hooks))
    }

    /// [`Weights::embed`] of several sequences packed one after another along the token axis,
    /// each seen by its own hooks.
    pub(crate) fn embed_packed(&self, seqs: &[&[u32]], hooks: &mut [Hooks]) -> Result<Tensor> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let tokens: Vec<u32> = seqs.concat();
        let rows = match &self.embed {
            Some(embed) => {
                embed.index_select(&Tensor::new(tokens.as_slice(), embed.device())?, 0)?
            }
            None => {
                let d = self.unembed.k();
                let mut rows = Vec::with_capacity(tokens.len() * d);
                for &t in &tokens {
                    rows.extend(self.unembed.row(t as usize));
                }
                Tensor::from_vec(rows, (tokens.len(), d), &self.device)?
            }
        };
        let mut seqs = Seqs::new(hooks, &lens, false);
        let x = seqs.hook(HookPoint::Embed, rows)?;
        match &self.pos_embed {
            Some(pos_embed) => {
                let mut parts = Vec::with_capacity(lens.len());
                for (h, &len) in seqs.hooks.iter().zip(&lens) {
                    parts.push(pos_embed.narrow(0, h.pos_offset, len)?);
                }
                let pos = seqs.hook(HookPoint::PosEmbed, Tensor::cat(&parts, 0)?)?;
                Ok((x + pos)?)
            }
            None => Ok(x),
        }
    }

    /// Runs blocks `start..` and the final norm, returning its output `[pos, d_model]` (see
    /// [`Weights::unembed_all`]). `resid_pre`, when given, receives each block's
    /// input (before its hooks) and finally the input of the final norm: the cache that makes
    /// an incremental re-run possible.
    pub(crate) fn run_from(
        &self,
        start: usize,
        x: Tensor,
        hooks: &mut Hooks,
        cache: Option<&mut KvCache>,
        resid_pre: Option<&mut Vec<Tensor>>,
        fast: bool,
    ) -> Result<Tensor> {
        let lens = [x.dims2()?.0];
        let mut seqs = Seqs::new(std::slice::from_mut(hooks), &lens, fast);
        self.run_packed_from(start, x, &mut seqs, cache, resid_pre)
    }

    /// [`Weights::run_from`] for sequences packed along the token axis: every matrix product
    /// runs on all their tokens at once, attention within each sequence. A KV cache needs a
    /// single sequence.
    pub(crate) fn run_packed_from(
        &self,
        start: usize,
        mut x: Tensor,
        seqs: &mut Seqs,
        mut cache: Option<&mut KvCache>,
        mut resid_pre: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        if cache.is_some() && seqs.lens.len() != 1 {
            return Err(super::ModelError::Format(
                "a KV cache holds one sequence".into(),
            ));
        }
        if let Some(cache) = cache.as_deref_mut() {
            cache
                .layers
                .resize_with(self.blocks.len(), LayerKv::default);
        }
        for layer in start..self.blocks.len() {
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[layer]);
            x = self.next_block(layer, x, seqs, kv, resid_pre.as_deref_mut())?;
        }
        if let Some(saved) = resid_pre {
            saved.push(x.clone());
        }
        seqs.hook(HookPoint::LnFinal, self.ln_final.forward(&x)?)
    }

    /// The early-stopped forward: blocks `start..=last` of sequences packed along the token axis,
    /// returning block `last`'s output (`resid_post`, `[tokens, d_model]`). No later block, no
    /// final norm, no unembedding: a query about layer `last` costs `(last + 1) / n_layers` of a
    /// forward, and every hook point up to block `last` sees bitwise what a full run gives it
    /// (the same blocks on the same rows).
    pub(crate) fn run_packed_through(
        &self,
        start: usize,
        last: usize,
        mut x: Tensor,
        seqs: &mut Seqs,
    ) -> Result<Tensor> {
        if last >= self.blocks.len() {
            return Err(super::ModelError::Format(format!(
                "block {last} does not exist (the model has {} blocks)",
                self.blocks.len()
            )));
        }
        for layer in start..=last {
            x = self.next_block(layer, x, seqs, None, None)?;
        }
        Ok(x)
    }

    /// One step of a forward: stops if cancelled, keeps the block's input when asked, runs it.
    fn next_block(
        &self,
        layer: usize,
        x: Tensor,
        seqs: &mut Seqs,
        kv: Option<&mut LayerKv>,
        resid_pre: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        if seqs.is_cancelled() {
            return Err(super::ModelError::Cancelled);
        }
        if let Some(saved) = resid_pre {
            saved.push(x.clone());
        }
        self.block(layer, x, seqs, kv)
    }

    /// Logits at every position, `[pos, vocab]` row-major.
    pub(crate) fn unembed_all(&self, x: &Tensor, fast: bool) -> Result<Vec<f32>> {
        let q = if fast {
            self.unembed_fast
                .get_or_init(|| exact_q4(&self.unembed))
                .as_ref()
        } else {
            None
        };
        Ok(matmul_packed(x, &self.unembed, q)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Logits at the last position, `[vocab]`.
    pub(crate) fn unembed_last(&self, x: &Tensor, fast: bool) -> Result<Vec<f32>> {
        let (pos, _) = x.dims2()?;
        self.unembed_all(&x.narrow(0, pos - 1, 1)?, fast)
    }

    /// Makes every weight's 4-bit form now (otherwise each is made on first use); returns the
    /// bytes they hold.
    pub(crate) fn prepare_fast(&self) -> usize {
        let mut bytes = self
            .unembed_fast
            .get_or_init(|| exact_q4(&self.unembed))
            .as_ref()
            .map_or(0, |q| q.bytes());
        for b in &self.blocks {
            bytes += b
                .linears()
                .iter()
                .filter_map(|l| l.fast_form())
                .map(|q| q.bytes())
                .sum::<usize>();
        }
        bytes
    }

    fn block(
        &self,
        layer: usize,
        x: Tensor,
        seqs: &mut Seqs,
        kv: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let b = &self.blocks[layer];
        let x = seqs.hook(block_point(layer, BlockSite::ResidPre), x)?;
        let h = seqs.hook(
            block_point(layer, BlockSite::Ln1Normalized),
            b.ln1.forward(&x)?,
        )?;
        let attn_out = self.attention(layer, &h, seqs, kv)?;
        let x = seqs.hook(block_point(layer, BlockSite::ResidMid), (x + attn_out)?)?;
        let h = seqs.hook(
            block_point(layer, BlockSite::Ln2Normalized),
            b.ln2.forward(&x)?,
        )?;
        let mlp_out = self.mlp(layer, &h, seqs)?;
        seqs.hook(block_point(layer, BlockSite::ResidPost), (x + mlp_out)?)
    }

    /// Head `head`'s attention pattern `[len, len]` (row-major, query × key) in block `layer`,
    /// from that block's input `x` (`resid_pre`, `[len, d_model]`: one sequence from position 0),
    /// with no hooks: the block's first norm, its q and k projections, rotary embedding, then
    /// [`attention::scores`] and [`attention::softmax_rows`] on this head's q and its kv head's k
    /// gathered into a single-head layout. Each score is the same fused multiply-add chain over
    /// the dimensions in order as in [`Weights::attention`]'s materialised path, so the pattern
    /// has the bits a run recording `hook_pattern` gets (with no edit before it). No other head's
    /// or layer's scores are made: it holds `len²` floats (and the q and k rows of the layer).
    pub(crate) fn head_pattern(
        &self,
        layer: usize,
        head: usize,
        x: &Tensor,
        fast: bool,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (nh, nkv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let (Some(b), true) = (self.blocks.get(layer), head < nh) else {
            return Err(super::ModelError::Format(format!(
                "head {head} of block {layer} does not exist ({} blocks of {nh} heads)",
                self.blocks.len()
            )));
        };
        let (len, _) = x.dims2()?;
        let h = b.ln1.forward(x)?;
        let q = values(&b.attn.q.forward(&h, fast)?)?;
        let k = values(&b.attn.k.forward(&h, fast)?)?;
        // Query head `head` reads kv head `head / (nh / nkv)` (grouped-query attention).
        let g = head / (nh / nkv);
        let gather = |all: &[f32], heads: usize, at: usize| -> Vec<f32> {
            all.chunks(heads * dh)
                .flat_map(|row| &row[at * dh..(at + 1) * dh])
                .copied()
                .collect()
        };
        let (mut qh, mut kh) = (gather(&q, nh, head), gather(&k, nkv, g));
        if let Some(rope) = &self.rope {
            // Element by element, so one head alone gets the bits it gets among all of them.
            rope.apply(&mut qh, 1, 0);
            rope.apply(&mut kh, 1, 0);
        }
        let dims = attention::Dims {
            len,
            keys: len,
            heads: 1,
            kv_heads: 1,
            d_head: dh,
            offset: 0,
            scale: 1.0 / (dh as f32).sqrt(),
        };
        let mut pattern = attention::scores(&dims, &qh, &kh);
        attention::softmax_rows(&mut pattern, len);
        Ok(pattern)
    }

    fn mlp(&self, layer: usize, x: &Tensor, seqs: &mut Seqs) -> Result<Tensor> {
        let p = |site| block_point(layer, site);
        let post = match &self.blocks[layer].mlp {
            Mlp::Gated { gate, up, .. } => {
                let pre = seqs.hook(p(BlockSite::MlpPre), gate.forward(x, seqs.fast)?)?;
                let pre_linear =
                    seqs.hook(p(BlockSite::MlpPreLinear), up.forward(x, seqs.fast)?)?;
                let shape = pre.dims().to_vec();
                let post = rows::silu_mul(&values(&pre)?, &values(&pre_linear)?);
                Tensor::from_vec(post, shape, x.device())?
            }
            Mlp::Gelu { fc, .. } => {
                let pre = seqs.hook(p(BlockSite::MlpPre), fc.forward(x, seqs.fast)?)?;
                pre.gelu()?
            }
        };
        let post = seqs.hook(p(BlockSite::MlpPost), post)?;
        let out = self.blocks[layer]
            .mlp
            .out_weight()
            .forward(&post, seqs.fast)?;
        seqs.hook(p(BlockSite::MlpOut), out)
    }

    fn attention(
        &self,
        layer: usize,
        x: &Tensor,
        seqs: &mut Seqs,
        mut kv: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let p = |site| block_point(layer, site);
        let a = &self.blocks[layer].attn;
        let (total, _) = x.dims2()?;
        let (nh, nkv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let q = seqs.hook(
            p(BlockSite::Q),
            a.q.forward(x, seqs.fast)?.reshape((total, nh, dh))?,
        )?;
        let k = seqs.hook(
            p(BlockSite::K),
            a.k.forward(x, seqs.fast)?.reshape((total, nkv, dh))?,
        )?;
        let v = seqs.hook(
            p(BlockSite::V),
            a.v.forward(x, seqs.fast)?.reshape((total, nkv, dh))?,
        )?;
        let (mut q, mut k, v) = (values(&q)?, values(&k)?, values(&v)?);
        let device = x.device();
        let mut z = Vec::with_capacity(total * nh * dh);
        let mut start = 0;
        for (i, &len) in seqs.lens.iter().enumerate() {
            let hooks = &mut seqs.hooks[i];
            let offset = hooks.pos_offset;
            let qs = &mut q[start * nh * dh..(start + len) * nh * dh];
            let ks = &mut k[start * nkv * dh..(start + len) * nkv * dh];
            let vs = &v[start * nkv * dh..(start + len) * nkv * dh];
            if let Some(rope) = &self.rope {
                rope.apply(qs, nh, offset);
                rope.apply(ks, nkv, offset);
            }
            let (qs, ks) = (&*qs, &*ks);
            let (keys, ks, vs): (usize, &[f32], &[f32]) = match kv.as_deref_mut() {
                Some(slot) => {
                    slot.k.extend_from_slice(ks);
                    slot.v.extend_from_slice(vs);
                    slot.len += len;
                    (slot.len, &slot.k, &slot.v)
                }
                None => (len, ks, vs),
            };
            let dims = attention::Dims {
                len,
                keys,
                heads: nh,
                kv_heads: nkv,
                d_head: dh,
                offset,
                scale: 1.0 / (dh as f32).sqrt(),
            };
            let (scores_at, pattern_at) = (p(BlockSite::AttnScores), p(BlockSite::Pattern));
            let zi = if hooks.touches(scores_at) || hooks.touches(pattern_at) {
                // Someone records or edits them: materialise both, hooks in between.
                let s = attention::scores(&dims, qs, ks);
                let s = hooks.hook(scores_at, Tensor::from_vec(s, (nh, len, keys), device)?)?;
                let mut pattern = values(&s)?;
                attention::softmax_rows(&mut pattern, keys);
                let pattern = hooks.hook(
                    pattern_at,
                    Tensor::from_vec(pattern, (nh, len, keys), device)?,
                )?;
                attention::mix(&dims, &values(&pattern)?, vs)
            } else {
                attention::attend(&dims, qs, ks, vs)
            };
            let zi = hooks.hook(
                p(BlockSite::Z),
                Tensor::from_vec(zi, (len, nh, dh), device)?,
            )?;
            if seqs.lens.len() == 1 {
                let out = a.o.forward(&zi.reshape((total, nh * dh))?, seqs.fast)?;
                return seqs.hook(p(BlockSite::AttnOut), out);
            }
            z.extend(values(&zi)?);
            start += len;
        }
        let z = Tensor::from_vec(z, (total, nh * dh), device)?;
        let out = a.o.forward(&z, seqs.fast)?;
        seqs.hook(p(BlockSite::AttnOut), out)
    }
}

/// The sequences of one forward pass, packed one after another along the token axis, each
/// with its own hooks (its own capture, interventions, positions and record).
pub(crate) struct Seqs<'s, 'a> {
    pub(crate) hooks: &'s mut [Hooks<'a>],
    lens: &'s [usize],
    /// On the fast path's 4-bit weights.
    fast: bool,
}

impl<'s, 'a> Seqs<'s, 'a> {
    pub(crate) fn new(hooks: &'s mut [Hooks<'a>], lens: &'s [usize], fast: bool) -> Self {
        assert_eq!(hooks.len(), lens.len(), "one Hooks per sequence");
        Seqs { hooks, lens, fast }
    }

    fn is_cancelled(&self) -> bool {
        self.hooks.iter().any(|h| h.is_cancelled())
    }

    /// Hands each sequence's rows of `t` (`[tokens, …]`) to its hooks; untouched when no hook
    /// wants this point.
    fn hook(&mut self, point: HookPoint, t: Tensor) -> Result<Tensor> {
        if let [hooks] = self.hooks {
            return hooks.hook(point, t);
        }
        if !self.hooks.iter().any(|h| h.touches(point)) {
            return Ok(t);
        }
        let mut parts = Vec::with_capacity(self.lens.len());
        let mut start = 0;
        for (hooks, &len) in self.hooks.iter_mut().zip(self.lens) {
            parts.push(hooks.hook(point, t.narrow(0, start, len)?)?);
            start += len;
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// Checks that a weight has the expected shape, naming it when it does not.
pub(crate) fn expect_shape(name: &str, t: Tensor, dims: &[usize]) -> Result<Tensor> {
    if t.dims() != dims {
        return Err(super::ModelError::Format(format!(
            "tensor `{name}` has shape {:?}, expected {dims:?}",
            t.dims()
        )));
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// Where a builder gets a weight: by HF name and expected shape, `None` when the file lacks it.
pub(crate) type TensorSource<'a> = dyn FnMut(&str, &[usize]) -> Result<Option<Tensor>> + 'a;

/// Builds a Llama model's weights from HF-named tensors (`model.layers.{l}.self_attn.q_proj.weight`).
pub(crate) fn build_llama(
    cfg: &Config,
    get: &mut TensorSource,
    device: &Device,
) -> Result<Weights> {
    let (d, dm, dh) = (cfg.d_model, cfg.d_mlp, cfg.d_head);
    let mut need = |name: &str, dims: &[usize]| -> Result<Tensor> {
        let t = get(name, dims)?
            .ok_or_else(|| super::ModelError::Format(format!("missing tensor `{name}`")))?;
        expect_shape(name, t, dims)
    };
    let embed = need("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let pre = format!("model.layers.{l}");
        let lin =
            |need: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, name: &str, dims: &[usize]| {
                Linear::from_out_in(need(&format!("{pre}.{name}"), dims)?, None)
            };
        blocks.push(Block {
            ln1: Norm::Rms {
                w: values(&need(&format!("{pre}.input_layernorm.weight"), &[d])?)?,
                eps: cfg.norm_eps,
            },
            attn: Attention {
                q: lin(&mut need, "self_attn.q_proj.weight", &[cfg.n_heads * dh, d])?,
                k: lin(
                    &mut need,
                    "self_attn.k_proj.weight",
                    &[cfg.n_kv_heads * dh, d],
                )?,
                v: lin(
                    &mut need,
                    "self_attn.v_proj.weight",
                    &[cfg.n_kv_heads * dh, d],
                )?,
                o: lin(&mut need, "self_attn.o_proj.weight", &[d, cfg.n_heads * dh])?,
            },
            ln2: Norm::Rms {
                w: values(&need(
                    &format!("{pre}.post_attention_layernorm.weight"),
                    &[d],
                )?)?,
                eps: cfg.norm_eps,
            },
            mlp: Mlp::Gated {
                gate: lin(&mut need, "mlp.gate_proj.weight", &[dm, d])?,
                up: lin(&mut need, "mlp.up_proj.weight", &[dm, d])?,
                down: lin(&mut need, "mlp.down_proj.weight", &[d, dm])?,
            },
        });
    }
    let ln_final = Norm::Rms {
        w: values(&need("model.norm.weight", &[d])?)?,
        eps: cfg.norm_eps,
    };
    let lm_head = if cfg.tie_embeddings {
        None
    } else {
        get("lm_head.weight", &[cfg.vocab_size, d])?
            .map(|t| expect_shape("lm_head.weight", t, &[cfg.vocab_size, d]))
            .transpose()?
    };
    let (embed, unembed) = match lm_head {
        Some(head) => (Some(embed), pack(&head)?),
        None => (None, pack(&embed)?),
    };
    Ok(Weights {
        cfg: cfg.clone(),
        embed,
        pos_embed: None,
        blocks,
        ln_final,
        unembed,
        rope: Some(Rope::new(cfg)),
        device: device.clone(),
        unembed_fast: OnceLock::new(),
    })
}

/// Builds a GPT-2 model's weights from HF-named tensors (`h.{l}.attn.c_attn.weight`, with or
/// without the `transformer.` prefix). Conv1D weights are stored `[in, out]`.
pub(crate) fn build_gpt2(cfg: &Config, get: &mut TensorSource) -> Result<Weights> {
    let (d, dm) = (cfg.d_model, cfg.d_mlp);
    let mut need = |name: &str, dims: &[usize]| -> Result<Tensor> {
        let t = match get(name, dims)? {
            Some(t) => t,
            None => get(&format!("transformer.{name}"), dims)?
                .ok_or_else(|| super::ModelError::Format(format!("missing tensor `{name}`")))?,
        };
        expect_shape(name, t, dims)
    };
    let embed = need("wte.weight", &[cfg.vocab_size, d])?;
    let pos_embed = need("wpe.weight", &[cfg.n_ctx, d])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let pre = format!("h.{l}");
        let mut ln = |name: &str| -> Result<Norm> {
            Ok(Norm::Layer {
                w: need(&format!("{pre}.{name}.weight"), &[d])?,
                b: need(&format!("{pre}.{name}.bias"), &[d])?,
                eps: cfg.norm_eps,
            })
        };
        let ln1 = ln("ln_1")?;
        let ln2 = ln("ln_2")?;
        let c_attn = need(&format!("{pre}.attn.c_attn.weight"), &[d, 3 * d])?;
        let c_attn_b = need(&format!("{pre}.attn.c_attn.bias"), &[3 * d])?;
        let split = |i: usize| -> Result<Linear> {
            Linear::from_in_out(
                c_attn.narrow(1, i * d, d)?,
                Some(c_attn_b.narrow(0, i * d, d)?.contiguous()?),
            )
        };
        let attn = Attention {
            q: split(0)?,
            k: split(1)?,
            v: split(2)?,
            o: Linear::from_in_out(
                need(&format!("{pre}.attn.c_proj.weight"), &[d, d])?,
                Some(need(&format!("{pre}.attn.c_proj.bias"), &[d])?),
            )?,
        };
        let mlp = Mlp::Gelu {
            fc: Linear::from_in_out(
                need(&format!("{pre}.mlp.c_fc.weight"), &[d, dm])?,
                Some(need(&format!("{pre}.mlp.c_fc.bias"), &[dm])?),
            )?,
            proj: Linear::from_in_out(
                need(&format!("{pre}.mlp.c_proj.weight"), &[dm, d])?,
                Some(need(&format!("{pre}.mlp.c_proj.bias"), &[d])?),
            )?,
        };
        blocks.push(Block {
            ln1,
            attn,
            ln2,
            mlp,
        });
    }
    let ln_final = Norm::Layer {
        w: need("ln_f.weight", &[d])?,
        b: need("ln_f.bias", &[d])?,
        eps: cfg.norm_eps,
    };
    Ok(Weights {
        cfg: cfg.clone(),
        unembed: pack(&embed)?,
        embed: None,
        pos_embed: Some(pos_embed),
        blocks,
        ln_final,
        rope: None,
        device: Device::Cpu,
        unembed_fast: OnceLock::new(),
    })
}
