#!/usr/bin/env python3
"""Hubel vs PyTorch + transformers on the same weights, same machine, same run, 2 threads.

    cargo build --release
    python tools/bench/compare.py [--gguf assets/models/SmolLM2-135M-Instruct.Q4_1.gguf]

Runs `hubel bench --json` (candle, this repo) and then the same measurements with transformers
(f32, eager attention, forward hooks for recording and ablation), and prints the ratios. The
scan row runs hubel's own scan batches (`scan_batches` in its JSON: the windows of the first
stimuli of WordNet, or of the bench text without the corpus) through PyTorch with hooks on the
same sites, against hubel's whole scan (forward + statistics) and its forward part.
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


def reset_peak_rss():
    """The peak resident set from here on (Linux: VmHWM reset to the current RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_bench(gguf, reps, scan_batches):
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

    # The scan: hubel's own batches (the windows `hubel scan` makes of the same stimuli, batched
    # the same way), each right-padded to its longest window with an attention mask, through the
    # base model (no lm_head), keeping what a scan reads: every layer's MLP activation
    # (blocks.L.mlp.hook_post: the input of down_proj) and attention z (blocks.L.attn.hook_z: the
    # input of o_proj), as forward pre-hooks keeping a detached copy. No statistics.
    batches = []
    for windows in scan_batches:
        width = max(len(w) for w in windows)
        ids = torch.zeros((len(windows), width), dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, :len(w)] = torch.tensor(w)
            mask[i, :len(w)] = 1
        batches.append((ids, mask))
    kept = []
    handles = []
    for layer in model.model.layers:
        for m in (layer.mlp.down_proj, layer.self_attn.o_proj):
            handles.append(m.register_forward_pre_hook(lambda m, a: kept.append(a[0].detach().clone())))

    def scan(i):
        with torch.no_grad():
            for ids, mask in batches:
                kept.clear()
                model.model(input_ids=ids, attention_mask=mask, use_cache=False)
    reset_peak_rss()
    scan_ms = median_ms(min(reps, 3), scan)
    out["scan_peak_rss_mb"] = peak_rss_mb()
    for h in handles:
        h.remove()
    out["scan_tokens"] = sum(len(w) for b in scan_batches for w in b)
    out["scan_padded_tokens"] = sum(int(ids.numel()) for ids, _ in batches)
    out["scan_tokens_per_s"] = out["scan_tokens"] / (scan_ms / 1e3)
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
    theirs = torch_bench(args.gguf, args.reps, ours["scan_batches"])
    print(f"hubel kernels: f32 {ours['f32_isa']}, fast {ours['fast_isa']}; {ours['threads']} threads; "
          f"medians of {args.reps} runs; PyTorch {theirs['torch']} eager attention")
    print(f"{'measure':40} {'hubel':>10} {'pytorch':>10} {'ratio':>8}")
    rows = [
        ("forward_32_ms", "forward, 32 tokens (ms)", True),
        ("forward_128_ms", "forward, 128 tokens (ms)", True),
        ("forward_32_record_all_ms", "forward recording every hook, 32 (ms)", True),
        ("ablation_round_trip_ms", "ablation round trip, 32 tokens (ms)", True),
        ("generate_20_ms", "20 greedy tokens, KV cache (ms)", True),
        ("fast_forward_32_ms", "fast: forward, 32 tokens (ms)", True),
        ("fast_forward_128_ms", "fast: forward, 128 tokens (ms)", True),
        ("generate_20_fast_ms", "fast: 20 greedy tokens (ms)", True),
        ("peak_rss_mb", "peak RSS (MB)", True),
    ]
    for key, label, lower_is_better in rows:
        a, b = ours[key], theirs[key]
        ratio = b / a if lower_is_better else a / b
        print(f"{label:40} {a:10.1f} {b:10.1f} {ratio:7.2f}x")
    scan = f"{ours['scan_stimuli']} stimuli of {ours['scan_corpus']}"
    print(f"{'scan, ' + scan:40}")
    for label, a in (("  hubel whole scan vs PyTorch (tok/s)", ours["scan_tokens_per_s"]),
                     ("  hubel forward part vs PyTorch (tok/s)", ours["scan_forward_tokens_per_s"])):
        b = theirs["scan_tokens_per_s"]
        print(f"{label:40} {a:10.1f} {b:10.1f} {a / b:7.2f}x")
    a, b = ours["scan_peak_rss_mb"], theirs["scan_peak_rss_mb"]
    print(f"{'  peak RSS during the scan (MB)':40} {a:10.1f} {b:10.1f} {b / a:7.2f}x")
    print(f"  ({ours['scan_windows']} windows, {ours['scan_tokens']} tokens in {len(ours['scan_batches'])} batches,"
          f" the same in both; PyTorch pads each batch to its longest window: {theirs['scan_padded_tokens']} token"
          f" slots; its figure is forward + hooks keeping mlp.hook_post and attn.hook_z, no statistics;"
          f" hubel's statistics {ours['scan_stats_ms_per_token']:.3f} ms/token)")
    print(f"{'recording overhead':40} {ours['record_all_overhead'] * 100:9.1f}% {theirs['record_all_overhead'] * 100:9.1f}%")
    print(f"{'fast: max last-position KL (nats)':40} {ours['fast_kl']:10.4f} {theirs['fast_kl']:10.4f}")
    print(f"{'fast: top-1 agreement':40} {ours['fast_top1_agreement']:10.3f} {theirs['fast_top1_agreement']:10.3f}")
    print("(ratio: how many times faster hubel is; PyTorch's fast path is dynamic int8 linear layers;"
          f" hubel's fidelity is over {ours['fidelity_probes']} probes, PyTorch's over the two bench texts;"
          f" hubel fast-path scan {ours['fast_scan_tokens_per_s']:.0f} tok/s, fast weights {ours['fast_weights_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
