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

    out = {}
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
    out["record_all_overhead_pct"] = (out["forward_32_record_all_ms"] / out["forward_32_ms"] - 1) * 100

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
    out["ablation_round_trip_32_ms"] = median_ms(reps, ablate)

    prompt = tokens(8)

    def gen(i):
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    out["generate_20_greedy_ms"] = median_ms(min(reps, 5), gen)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
    print(f"{'measure':38} {'hubel':>10} {'pytorch':>10} {'speed-up':>9}")
    for key, label in [
        ("forward_32_ms", "full forward, 32 tokens (ms)"),
        ("forward_128_ms", "full forward, 128 tokens (ms)"),
        ("forward_32_record_all_ms", "forward recording every hook, 32 (ms)"),
        ("ablation_round_trip_32_ms", "ablation round trip, 32 tokens (ms)"),
        ("generate_20_greedy_ms", "20 greedy tokens, KV cache (ms)"),
        ("peak_rss_mb", "peak RSS (MB)"),
    ]:
        print(f"{label:38} {ours[key]:10.1f} {theirs[key]:10.1f} {theirs[key] / ours[key]:8.2f}x")
    print(f"{'recording overhead (%)':38} {ours['record_all_overhead_pct']:10.1f} {theirs['record_all_overhead_pct']:10.1f}")
    print(f"hubel's ablation with a full re-run: {ours['ablation_full_rerun_32_ms']:.1f} ms; "
          f"incremental round trip vs PyTorch's hooked full forward: "
          f"{theirs['ablation_round_trip_32_ms'] / ours['ablation_round_trip_32_ms']:.2f}x")


if __name__ == "__main__":
    main()
