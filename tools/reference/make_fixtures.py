#!/usr/bin/env python3
"""Reference fixtures for Hubel's runtime, made with HF transformers (never used at run time).

    python tools/reference/make_fixtures.py --gguf assets/models/SmolLM2-135M-Instruct.Q4_1.gguf

Needs torch, transformers, gguf, accelerate, tokenizers, safetensors and numpy (a scratch venv; CI
never runs this). Writes tests/fixtures/:
  smollm2/<probe>/   the real default model, loaded by transformers from the same GGUF
  tiny_gpt2/, tiny_llama/   tiny random HF folders (fixed seed) with their own fixtures
  smollm2/direct_effect.json   a few neurons' direct logit effects, W_U · (γ ⊙ down_proj[:, n])
                         with γ the final norm's weight, in float64 (`--only direct-effect` writes
                         just this file, leaving the others as they are)

Each probe folder has meta.json (text, token ids, stored positions, vocab ids) and float32 .npy
arrays named by TransformerLens hook point. Hooks are attached as TransformerLens defines them:
resid_pre = a decoder layer's input, mlp.hook_post = the input of down_proj (act(gate)·up),
attn.hook_z = the input of o_proj as [pos, head, d_head], attn.hook_pattern = eager attention
probabilities [head, query, key], hook_attn_out = o_proj's output, resid_post = the layer output.

Tokenizer: transformers builds a GGUF tokenizer with a plain GPT-2 byte-level split; SmolLM2's own
tokenizer (and llama.cpp's `tokenizer.ggml.pre = smollm`) first splits digits one by one. We set
that pre-tokenizer so the reference tokens are SmolLM2's, and record whether the two differ.
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from tokenizers import pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures")

LONG = " ".join(
    [
        "Hubel and Wiesel recorded single neurons in the visual cortex of the cat.",
        "They showed the animal bars of light at many angles and listened to the cell fire.",
        "Some cells answered only to an edge at one orientation, others to motion in one direction.",
        "A language model can be studied the same way: show it sentences, record every unit,",
        "then silence one unit and watch what the model stops being able to do.",
    ]
    * 5
)

PROBES = {
    "left_party": "She left the party early.",
    "repeat": "The cat sat on the mat. The cat sat on the mat. The cat sat on the",
    "unicode": "苹果是一种水果 🍎, and 東京 is a city. 😀👍 Ünïcödé!",
    "code": "def add(a, b):\n    return a + b  # sum\n\nprint(add(3, 1234))",
    "digits": "In 1984, 12 km was 7.456 miles; 98.6°F = 37°C. Call 555-0199.",
    "long": LONG,
}
LAYERS = [0, 10, 29]
N_RANDOM = 64
N_TOP = 5
ABLATE = (10, 123)  # blocks.10.mlp.hook_post[123], i.e. L10N123


def save(folder, name, array):
    np.save(os.path.join(folder, name + ".npy"), np.ascontiguousarray(array, dtype=np.float32))


def attach(model, layers, store, ablate=None):
    """Registers TransformerLens-style hooks; returns the handles."""
    handles = []
    inner = model.model if hasattr(model, "model") else model.transformer
    blocks = inner.layers if hasattr(inner, "layers") else inner.h

    def first(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    def out0(o):
        return o[0] if isinstance(o, tuple) else o

    for l in range(len(blocks)):
        b = blocks[l]
        keep = l in layers
        if keep:
            handles.append(b.register_forward_pre_hook(
                lambda m, a, k, l=l: store.__setitem__(f"blocks.{l}.hook_resid_pre", first(a, k)[0].detach().clone()),
                with_kwargs=True))
            handles.append(b.register_forward_hook(
                lambda m, a, o, l=l: store.__setitem__(f"blocks.{l}.hook_resid_post", out0(o)[0].detach().clone())))
        if hasattr(b, "mlp") and hasattr(b.mlp, "down_proj"):
            down, o_proj = b.mlp.down_proj, b.self_attn.o_proj
        else:
            down, o_proj = b.mlp.c_proj, b.attn.c_proj

        def mlp_post(m, a, l=l, keep=keep):
            x = a[0]
            if keep:
                store[f"blocks.{l}.mlp.hook_post"] = x[0].detach().clone()
            if ablate is not None and ablate[0] == l:
                x = x.clone()
                x[..., ablate[1]] = 0.0
                return (x,)
        handles.append(down.register_forward_pre_hook(mlp_post))
        if keep:
            handles.append(o_proj.register_forward_pre_hook(
                lambda m, a, l=l: store.__setitem__(f"blocks.{l}.attn.hook_z", a[0][0].detach().clone())))
            handles.append(o_proj.register_forward_hook(
                lambda m, a, o, l=l: store.__setitem__(f"blocks.{l}.hook_attn_out", o[0].detach().clone())))
    return handles


def run(model, ids, layers, ablate=None):
    store = {}
    handles = attach(model, layers, store, ablate)
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    for h in handles:
        h.remove()
    for l in layers:
        store[f"blocks.{l}.attn.hook_pattern"] = out.attentions[l][0].detach().clone()
    return out.logits[0].detach().float().numpy(), {k: v.float().numpy() for k, v in store.items()}


def positions_for(n):
    if n <= 24:
        return list(range(n))
    picks = np.linspace(0, n - 1, 8).round().astype(int).tolist()
    return sorted(set(picks))


def write_probe(folder, name, text, ids, model, layers, n_heads, d_head, ablate, rng_ids, extra=None):
    d = os.path.join(folder, name)
    os.makedirs(d, exist_ok=True)
    logits, acts = run(model, ids, layers)
    ab_logits, _ = run(model, ids, [], ablate)
    pos = positions_for(len(ids))
    meta = {"text": text, "tokens": ids, "positions": pos, "layers": layers, "random_ids": rng_ids,
            "ablate": {"layer": ablate[0], "neuron": ablate[1]}, "vocab": int(logits.shape[1])}
    meta.update(extra or {})
    top = np.argsort(-logits, axis=1, kind="stable")[:, :N_TOP]
    ab_top = np.argsort(-ab_logits, axis=1, kind="stable")[:, :N_TOP]
    meta["top_ids"] = top.tolist()
    meta["ablated_top_ids"] = ab_top.tolist()
    save(d, "logits_top", np.take_along_axis(logits, top, 1))
    save(d, "logits_random", logits[:, rng_ids])
    save(d, "ablated_logits_top", np.take_along_axis(ab_logits, ab_top, 1))
    save(d, "ablated_logits_random", ab_logits[:, rng_ids])
    save(d, "last_logits", logits[-1])
    for key, a in acts.items():
        if key.endswith("hook_pattern"):
            save(d, key, a[:, pos, :])  # [head, stored queries, key]
        elif key.endswith("hook_z"):
            save(d, key, a[pos].reshape(len(pos), n_heads, d_head))
        else:
            save(d, key, a[pos])
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)


def load_smollm2(gguf):
    """The default model and its tokenizer (SmolLM2's digit split) plus transformers' plain one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, file = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    plain = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    return tok, plain, model


def smollm2(gguf):
    tok, plain, model = load_smollm2(gguf)
    cfg = model.config
    d_head = cfg.hidden_size // cfg.num_attention_heads
    rng = np.random.default_rng(0)
    rng_ids = sorted(rng.choice(cfg.vocab_size, N_RANDOM, replace=False).tolist())
    out = os.path.join(OUT, "smollm2")
    shutil.rmtree(out, ignore_errors=True)
    for name, text in PROBES.items():
        ids = tok(text)["input_ids"]
        plain_ids = plain(text)["input_ids"]
        print(f"{name}: {len(ids)} tokens" + ("" if ids == plain_ids else " (transformers' plain GGUF split differs)"))
        write_probe(out, name, text, ids, model, LAYERS, cfg.num_attention_heads, d_head, ABLATE, rng_ids,
                    {"plain_gguf_split_differs": ids != plain_ids})


# (layer, neuron): L10N222 from issue 13, the others with gaps of at least 1e-4 between consecutive
# top-11 values, so a float32 computation ranks them the same way.
EFFECT_NEURONS = [(0, 100), (10, 222), (15, 1000), (29, 1535)]
EFFECT_K = 10


def direct_effect(gguf):
    """smollm2/direct_effect.json: for each neuron, W_U · (γ ⊙ d) with d its column of down_proj and
    γ the final RMSNorm's weight (TransformerLens folds ln_final.w into W_U the same way), in float64;
    the top EFFECT_K promoted (highest first) and suppressed (lowest first) token ids and values."""
    tok, _, model = load_smollm2(gguf)
    with torch.no_grad():
        w_u = model.get_output_embeddings().weight.double()  # [vocab, d_model] (tied to the embedding)
        gamma = model.model.norm.weight.double()
        neurons = []
        for layer, n in EFFECT_NEURONS:
            d = model.model.layers[layer].mlp.down_proj.weight[:, n].double()
            effect = (w_u @ (gamma * d)).numpy()
            up = np.argsort(-effect, kind="stable")[:EFFECT_K]
            down = np.argsort(effect, kind="stable")[:EFFECT_K]
            neurons.append({
                "layer": layer, "neuron": n, "label": f"L{layer}N{n}",
                "promoted_ids": up.tolist(), "promoted_values": [float(effect[i]) for i in up],
                "promoted_tokens": [tok.decode([int(i)]) for i in up],
                "suppressed_ids": down.tolist(), "suppressed_values": [float(effect[i]) for i in down],
                "suppressed_tokens": [tok.decode([int(i)]) for i in down],
            })
            print(f"L{layer}N{n}: promotes " + ", ".join(f"{tok.decode([int(i)])!r} {effect[i]:+.3f}" for i in up[:5])
                  + "; suppresses " + ", ".join(f"{tok.decode([int(i)])!r} {effect[i]:+.3f}" for i in down[:5]))
    out = os.path.join(OUT, "smollm2")
    os.makedirs(out, exist_ok=True)
    meta = {"model": os.path.basename(gguf), "formula": "W_U · (γ ⊙ down_proj[:, n]), float64",
            "k": EFFECT_K, "neurons": neurons}
    with open(os.path.join(out, "direct_effect.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)


def tiny(kind):
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    out = os.path.join(OUT, f"tiny_{kind}")
    shutil.rmtree(out, ignore_errors=True)
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    tk.train_from_iterator(list(PROBES.values()) * 3, trainer)
    tk.save(os.path.join(model_dir, "tokenizer.json"))
    vocab = tk.get_vocab_size()
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=96, n_embd=32, n_layer=2, n_head=4,
                         activation_function="gelu_new", initializer_range=0.2)
        model = GPT2LMHeadModel(cfg)
        n_heads, d_head, ablate = 4, 8, (1, 5)
    else:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
                          rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                          initializer_range=0.2)
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():  # give the norms non-trivial weights
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))
        n_heads, d_head, ablate = 4, 8, (1, 5)
    model.eval()
    model.config._attn_implementation = "eager"
    model.save_pretrained(model_dir, safe_serialization=True)
    for extra in ["generation_config.json"]:
        p = os.path.join(model_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    text = "hello world 123 苹果 🍎 The cat sat."
    ids = tk.encode(text).ids
    rng_ids = list(range(vocab))
    write_probe(out, "probe", text, ids, model, [0, 1], n_heads, d_head, ablate, rng_ids)
    print(f"tiny {kind}: {len(ids)} tokens, vocab {vocab}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="the default model's GGUF file")
    ap.add_argument("--only", choices=["direct-effect"],
                    help="write only this fixture (needs --gguf), leaving the others untouched")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.only == "direct-effect":
        if not args.gguf:
            ap.error("--only direct-effect needs --gguf")
        direct_effect(args.gguf)
    else:
        tiny("gpt2")
        tiny("llama")
        if args.gguf:
            smollm2(args.gguf)
            direct_effect(args.gguf)
