#!/usr/bin/env python3
"""Hubel's built-in experiments end to end, and the sense-left selectivity analysis written with
PyTorch + transformers + hooks on the same weights, in the same run, 2 threads.

    cargo build --release
    python tools/bench/experiments.py [--gguf PATH] [--out FILE.json]

1. `hubel experiment run NAME --json` for every built-in protocol: wall time of the command (model
   load included) and peak RSS.
2. The same selectivity analysis as `hubel experiment run sense-left` in PyTorch: the stimuli
   padded into one batch, a forward pre-hook on every layer's mlp.down_proj (the MLP neurons,
   `mlp.hook_post`) and the hidden states (the residual stream), read at the reading position
   (the last token overlapping the [[marked]] span, from the tokenizer's offsets); then, in
   numpy, d' and AUROC of every neuron, each layer's max |d'| with a 200-shuffle null, a 5-fold
   L2 logistic probe (Nesterov, the same step rule) and the nested-CV best neuron.
3. The two analyses' per-layer max |d'| compared (same weights: they should agree to float
   noise; the probes' folds are drawn by different generators, so their accuracies agree only
   roughly), and the time ratio.
Needs torch, transformers, gguf, accelerate, numpy (a scratch venv; never the app or CI).
"""
import argparse
import json
import os
import re
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOCOLS = ["sense-left", "unit-conversion", "induction", "lesion-zh-en"]


def run_hubel(binary, gguf, name):
    t = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", binary, "experiment", "run", name, "--json", "--model", gguf],
        capture_output=True, text=True, check=True,
        env=dict(os.environ, RAYON_NUM_THREADS="2"),
    )
    wall = time.perf_counter() - t
    rss_kb = int(out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout), wall, rss_kb / 1024


def parse_marker(raw):
    m = re.search(r"\[\[(.*?)\]\]", raw)
    if not m:
        return raw, None
    text = raw[:m.start()] + m.group(1) + raw[m.end():]
    return text, (m.start(), m.start() + len(m.group(1)))


def dprimes(x, labels):
    a, b = x[labels], x[~labels]
    pooled = ((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2) ** 0.5
    diff = a.mean(0) - b.mean(0)
    import numpy as np
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 1e-9 * np.maximum(np.abs(a.mean(0)), 1e-30), diff / pooled,
                     np.where(np.abs(diff) > 0, np.sign(diff) * 1000.0, 0.0))
    return np.clip(d, -1000, 1000)


def folds(n_pairs, k, rng):
    import numpy as np
    order = rng.permutation(n_pairs)
    f = np.zeros(2 * n_pairs, dtype=int)
    for m, i in enumerate(order):
        f[i] = f[i + n_pairs] = m % k
    return f


def fit_logistic(x, y, l2=0.1, iters=400):
    import numpy as np
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    v = np.ones(d + 1) / np.sqrt(d + 1)
    lam = 1.0
    for _ in range(30):
        nxt = xb.T @ (xb @ v) / n
        norm = np.linalg.norm(nxt)
        if norm == 0:
            break
        lam, v = norm, nxt / norm
    step = 1.0 / max(lam / 4 + l2, 1e-12)
    w = np.zeros(d + 1)
    prev = w.copy()
    for t in range(iters):
        look = w + t / (t + 3.0) * (w - prev)
        p = 1 / (1 + np.exp(-(xb @ look)))
        g = xb.T @ (p - y) / n
        g[:d] += l2 * look[:d]
        prev, w = w, look - step * g
    return w


def probe_acc(x, labels, k, rng):
    import numpy as np
    f = folds(len(labels) // 2, k, rng)
    right = 0
    for fold in range(k):
        tr, te = f != fold, f == fold
        mean, sd = x[tr].mean(0), x[tr].std(0, ddof=1)
        ok = sd > np.maximum(np.abs(mean), 1.0) * 1e-9
        z = np.where(ok, (x - mean) / np.where(ok, sd, 1), 0.0)
        w = fit_logistic(z[tr], labels[tr].astype(float))
        right += ((z[te] @ w[:-1] + w[-1] > 0) == labels[te]).sum()
    return right / len(labels)


def best_unit_acc(x, labels, k, rng):
    import numpy as np
    f = folds(len(labels) // 2, k, rng)
    right = 0
    for fold in range(k):
        tr, te = f != fold, f == fold
        d = dprimes(x[tr], labels[tr])
        j = int(np.argmax(np.abs(d)))
        ma, mb = x[tr][labels[tr], j].mean(), x[tr][~labels[tr], j].mean()
        sign = 1 if ma >= mb else -1
        right += ((sign * (x[te, j] - (ma + mb) / 2) > 0) == labels[te]).sum()
    return right / len(labels)


def torch_selectivity(gguf, protocol):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(2)
    t_load = time.perf_counter()
    folder, file = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    load = time.perf_counter() - t_load
    t0 = time.perf_counter()
    stimuli = protocol["sets"]["A"]["stimuli"] + protocol["sets"]["B"]["stimuli"]
    labels = np.array([True] * len(protocol["sets"]["A"]["stimuli"]) + [False] * len(protocol["sets"]["B"]["stimuli"]))
    texts, spans = zip(*(parse_marker(s) for s in stimuli))
    enc = tok(list(texts), return_offsets_mapping=True, padding=True, return_tensors="pt")
    read_at = []
    for i, (offs, span) in enumerate(zip(enc["offset_mapping"].tolist(), spans)):
        valid = [j for j, m in enumerate(enc["attention_mask"][i].tolist()) if m]
        if span is None:
            read_at.append(valid[-1])
        else:
            a, b = span
            read_at.append(max(j for j in valid if offs[j][0] < offs[j][1] and offs[j][0] < b and a < offs[j][1]))
    posts = {}
    hooks = []
    for l, layer in enumerate(model.model.layers):
        def grab(mod, args, l=l):
            posts[l] = args[0].detach()
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(grab))
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    output_hidden_states=True, use_cache=False)
    for h in hooks:
        h.remove()
    rows = torch.arange(len(read_at))
    idx = torch.tensor(read_at)
    forward = time.perf_counter() - t0
    neurons = [posts[l][rows, idx].double().numpy() for l in range(len(posts))]
    resid = [out.hidden_states[l + 1][rows, idx].double().numpy() for l in range(len(posts))]
    embed = out.hidden_states[0][rows, idx].double().numpy()
    rng = np.random.default_rng(0)
    mats = neurons + [embed]
    real = [np.abs(dprimes(m, labels)).max() for m in mats]
    null = [[] for _ in mats]
    shuffled = labels.copy()
    for _ in range(200):
        rng.shuffle(shuffled)
        for i, m in enumerate(mats):
            null[i].append(np.abs(dprimes(m, shuffled)).max())
    null95 = [float(np.sort(v)[int(np.ceil(0.95 * len(v))) - 1]) for v in null]
    layers = []
    for l in range(len(neurons)):
        layers.append({
            "layer": l, "max_abs_dprime": float(real[l]), "null95": null95[l],
            "probe_acc": float(probe_acc(resid[l], labels, 5, rng)),
            "neuron_acc": float(best_unit_acc(neurons[l], labels, 5, rng)),
        })
    total = time.perf_counter() - t0
    return {"load_s": load, "forward_s": forward, "analysis_s": total - forward, "total_s": total,
            "embedding": {"max_abs_dprime": float(real[-1]), "probe_acc": float(probe_acc(embed, labels, 5, rng))},
            "layers": layers, "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser("~/.local/share/hubel/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hubel"))
    ap.add_argument("--out")
    args = ap.parse_args()
    results = {"hubel": {}}
    for name in PROTOCOLS:
        report, wall, rss = run_hubel(args.binary, args.gguf, name)
        results["hubel"][name] = {"wall_s": wall, "peak_rss_mb": rss, "report": report}
        print(f"hubel experiment run {name:<16} {wall:7.1f} s  peak RSS {rss:6.0f} MB")
    with open(os.path.join(ROOT, "assets", "protocols", "sense-left.json")) as f:
        protocol = json.load(f)
    t = time.perf_counter()
    torch_res = torch_selectivity(args.gguf, protocol)
    torch_wall = time.perf_counter() - t
    results["torch_sense_left"] = torch_res
    hub = results["hubel"]["sense-left"]
    print(f"PyTorch + hooks, sense-left: {torch_wall:.1f} s in all (load {torch_res['load_s']:.1f} s, "
          f"forward {torch_res['forward_s']:.1f} s, analysis in numpy {torch_res['analysis_s']:.1f} s)")
    print(f"ratio (PyTorch end to end / hubel end to end): {torch_wall / hub['wall_s']:.2f}")
    worst = 0.0
    print(f"{'layer':>5} {'hubel max|d′|':>14} {'torch max|d′|':>14} {'hubel probe':>12} {'torch probe':>12}")
    for h, t in zip(hub["report"]["layers"], torch_res["layers"]):
        rel = abs(h["max_abs_dprime"] - t["max_abs_dprime"]) / max(abs(t["max_abs_dprime"]), 1e-9)
        worst = max(worst, rel)
        print(f"{h['layer']:>5} {h['max_abs_dprime']:>14.4f} {t['max_abs_dprime']:>14.4f} "
              f"{h['probe_acc']:>12.3f} {t['probe_acc']:>12.3f}")
    print(f"largest relative difference of a layer's max |d′|: {worst:.2e}")
    results["max_dprime_rel_diff"] = worst
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
