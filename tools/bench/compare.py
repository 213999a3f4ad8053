#!/usr/bin/env python3
"""Hubel vs PyTorch + transformers on the same weights, same machine, same run, 2 threads.

    cargo build --release
    python tools/bench/compare.py [--gguf assets/models/SmolLM2-135M-Instruct.Q4_1.gguf]

Runs `hubel bench --json` (candle, this repo) and then the same measurements with transformers
(f32, eager attention, forward hooks for recording and ablation), and prints the ratios.
Needs torch, transformers, gguf, accelerate (a scratch venv; never used by the app or CI).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = ("The quick brown fox jumps over the lazy dog while the researchers record every "
        "neuron of every layer, ablate one of them, and watch the next-token distribution change at once. ")


def median_ms(reps, f):
    f(0)
    times = []
    for i in range(reps):
        t = time.perf_counter()
        f(i + 1)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_bench(gguf, reps):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(2)
    folder, file = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                                 attn_implementation="eager").eval()

    def tokens(n):
        ids = tok(TEXT * (1 + n // 20))["input_ids"]
        return torch.tensor([ids[:n]])

    t32, t128 = tokens(32), tokens(128)
    layer = model.config.num_hidden_layers // 3
    d_mlp = model.config.intermediate_size

    def fwd(ids):
        with torch.no_grad():
            return model(ids, use_cache=False).logits

    out = {"torch": torch.__version__}
    out["forward_32_ms"] = median_ms(reps, lambda i: fwd(t32))
    out["forward_128_ms"] = median_ms(reps, lambda i: fwd(t128))

    # Record every hook point the way a TransformerLens-style tool would: a forward hook on every
    # submodule, keeping a detached copy of its output.
    store = {}

    def keep(name, o):
        o = o[0] if isinstance(o, tuple) else o
        if torch.is_tensor(o):
            store[name] = o.detach().clone()
    handles = [m.register_forward_hook(lambda m, a, o, n=n: keep(n, o)) for n, m in model.named_modules() if n]
    out["forward_32_record_all_ms"] = median_ms(reps, lambda i: fwd(t32))
    for h in handles:
        h.remove()
    out["record_all_overhead"] = out["forward_32_record_all_ms"] / out["forward_32_ms"] - 1

    # The ablation round trip in PyTorch: a hook zeroes one MLP neuron, a full forward gives new logits.
    def ablate(i):
        neuron = (123 + i) % d_mlp

        def pre(m, a):
            x = a[0].clone()
            x[..., neuron] = 0
            return (x,)
        h = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(pre)
        try:
            fwd(t32).numpy()
        finally:
            h.remove()
    out["ablation_round_trip_ms"] = median_ms(reps, ablate)

    prompt = tokens(8)

    def gen(i):
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    out["generate_20_ms"] = median_ms(min(reps, 5), gen)

    # A scan's batched forward: 16 probes of 32 tokens (from different offsets) in one batch, every layer's
    # MLP activation (the input of down_proj) kept, no logits (the base model, no lm_head).
    probes = [tokens(32 + i)[0, i:] for i in range(16)]
    width = max(len(p) for p in probes)
    ids = torch.zeros((16, width), dtype=torch.long)
    mask = torch.zeros((16, width), dtype=torch.long)
    for i, p in enumerate(probes):
        ids[i, :len(p)] = p
        mask[i, :len(p)] = 1
    kept = []
    handles = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: kept.append(a[0].detach().clone()))
               for layer in model.model.layers]

    def scan(i):
        kept.clear()
        with torch.no_grad():
            model.model(input_ids=ids, attention_mask=mask, use_cache=False)
    scan_ms = median_ms(min(reps, 5), scan)
    for h in handles:
        h.remove()
    out["scan_tokens_per_s"] = sum(len(p) for p in probes) / (scan_ms / 1e3)
    exact_logits = {n: fwd(t).numpy() for n, t in (("t32", t32), ("t128", t128))}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # PyTorch's own fast path: dynamic int8 linear layers (weights int8 per channel, activations
    # quantized per call), and its fidelity against its f32 logits.
    qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def qfwd(ids):
        with torch.no_grad():
            return qmodel(ids, use_cache=False).logits

    out["fast_forward_32_ms"] = median_ms(reps, lambda i: qfwd(t32))
    out["fast_forward_128_ms"] = median_ms(reps, lambda i: qfwd(t128))

    def qgen(i):
        with torch.no_grad():
            qmodel.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    out["generate_20_fast_ms"] = median_ms(min(reps, 5), qgen)
    kls, agree, n = [], 0, 0
    for name, t in (("t32", t32), ("t128", t128)):
        e = torch.log_softmax(torch.tensor(exact_logits[name][0]).double(), -1)
        q = torch.log_softmax(qfwd(t)[0].double(), -1)
        kls.append(float((e.exp() * (e - q)).sum(-1)[-1]))
        agree += int((e.argmax(-1) == q.argmax(-1)).sum())
        n += e.shape[0]
    out["fast_kl"] = max(kls)
    out["fast_top1_agreement"] = agree / n
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(ROOT, "assets", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--hubel", default=os.path.join(ROOT, "target", "release", "hubel"))
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    ours = json.loads(subprocess.run([args.hubel, "bench", "--json", "--reps", str(args.reps), "--model", args.gguf],
                                     check=True, capture_output=True, text=True, env=env).stdout)
    theirs = torch_bench(args.gguf, args.reps)
    print(f"hubel kernels: f32 {ours['f32_isa']}, fast {ours['fast_isa']}; {ours['threads']} threads; "
          f"medians of {args.reps} runs; PyTorch {theirs['torch']} eager attention")
    print(f"{'measure':40} {'hubel':>10} {'pytorch':>10} {'ratio':>8}")
    rows = [
        ("forward_32_ms", "forward, 32 tokens (ms)", True),
        ("forward_128_ms", "forward, 128 tokens (ms)", True),
        ("forward_32_record_all_ms", "forward recording every hook, 32 (ms)", True),
        ("ablation_round_trip_ms", "ablation round trip, 32 tokens (ms)", True),
        ("generate_20_ms", "20 greedy tokens, KV cache (ms)", True),
        ("scan_tokens_per_s", "batched scan, 16 x 32 tok (tok/s)", False),
        ("fast_forward_32_ms", "fast: forward, 32 tokens (ms)", True),
        ("fast_forward_128_ms", "fast: forward, 128 tokens (ms)", True),
        ("generate_20_fast_ms", "fast: 20 greedy tokens (ms)", True),
        ("peak_rss_mb", "peak RSS (MB)", True),
    ]
    for key, label, lower_is_better in rows:
        a, b = ours[key], theirs[key]
        ratio = b / a if lower_is_better else a / b
        print(f"{label:40} {a:10.1f} {b:10.1f} {ratio:7.2f}x")
    print(f"{'recording overhead':40} {ours['record_all_overhead'] * 100:9.1f}% {theirs['record_all_overhead'] * 100:9.1f}%")
    print(f"{'fast: max last-position KL (nats)':40} {ours['fast_kl']:10.4f} {theirs['fast_kl']:10.4f}")
    print(f"{'fast: top-1 agreement':40} {ours['fast_top1_agreement']:10.3f} {theirs['fast_top1_agreement']:10.3f}")
    print("(ratio: how many times faster hubel is; PyTorch's fast path is dynamic int8 linear layers;"
          f" hubel's fidelity is over {ours['fidelity_probes']} probes, PyTorch's over the two bench texts;"
          f" hubel fast scan {ours['fast_scan_tokens_per_s']:.0f} tok/s, fast weights {ours['fast_weights_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
