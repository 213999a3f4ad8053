#!/usr/bin/env python3
"""Long probes: `hubel probe --json` vs PyTorch + transformers (sdpa and eager attention) on the
same weights and text, 2 threads, at several lengths; wall time and peak RSS of each, one process
per measurement (issue 14).

    cargo build --release
    python tools/bench/long_probe.py [--lengths 128,512,1024,2048,4096] [--repeat 3]
        [--plot screenshots/long_probe.png]

Both sides compute what `hubel probe` reports: every position's logits (the per-token loss) and
the next-token distribution. Needs torch, transformers, gguf, accelerate (a scratch venv; never
used by the app or CI); matplotlib only for --plot.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENTENCES = ("The quick brown fox jumps over the lazy dog. Researchers record every neuron of every layer. "
             "A probe viewer shows which features fire on which tokens. She left the party early. ")

TORCH_CHILD = r'''
import sys, time, json, os, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
gguf, impl, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
folder, file = os.path.split(os.path.abspath(gguf))
tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                             attn_implementation=impl).eval()
ids = tok(sys.stdin.read(), return_tensors="pt").input_ids[:, :n]
t = time.perf_counter()
with torch.no_grad():
    logits = model(ids).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
    top = torch.topk(torch.softmax(logits[-1], -1), 10)
ms = (time.perf_counter() - t) * 1e3
print(json.dumps({"tokens": int(ids.shape[1]), "ms": ms, "mean_nll": float(nll.mean())}))
'''


def run(cmd, stdin, env):
    t = time.perf_counter()
    # A fresh `time`-like measure per process: run it under /usr/bin/time when present.
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, input=stdin, capture_output=True,
                       text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {p.stderr[-2000:]}")
    peak_kb = int(p.stderr.strip().splitlines()[-1])
    return p.stdout, wall, peak_kb / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser(
        "~/.local/share/hubel/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--hubel", default=os.path.join(ROOT, "target", "release", "hubel"))
    ap.add_argument("--lengths", default="128,512,1024,2048,4096")
    ap.add_argument("--impls", default="sdpa,eager")
    ap.add_argument("--plot")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each measurement; the fastest is kept (this machine's neighbours "
                         "come and go, and they slow a run, never speed it up)")
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS="2", OMP_NUM_THREADS="2")
    text = SENTENCES * 200
    impls = [i for i in args.impls.split(",") if i]
    # hubel's fixed cost (start, load the model, tokenizer): one probe of a few tokens.
    probe = [args.hubel, "probe", "--model", args.gguf, "--json", "--top", "10", "--text"]
    _, load_s, load_mb = run(probe + ["Hello there."], None, env)
    print(json.dumps({"hubel_start_and_load_s": load_s, "hubel_rss_mb": load_mb}), flush=True)
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        # hubel: the text cut to n tokens (its tokenizer: the probe's own token list).
        out, _, _ = run(probe + [text[: n * 8]], None, env)
        toks = json.loads(out)["tokens"]
        cut = "".join(t["text"] for t in toks[:n]) if "text" in toks[0] else None
        if cut is None:
            sys.exit("hubel's token list has no text field")
        best = None
        for _ in range(max(1, args.repeat)):
            out, wall, peak = run(probe + [cut], None, env)
            if best is None or wall < best[1]:
                best = (out, wall, peak)
        out, wall, peak = best
        report = json.loads(out)
        row = {"n": len(report["tokens"]), "hubel_s": wall - load_s, "hubel_rss_mb": peak,
               "hubel_nll": report["baseline"]["mean_nll"]}
        for impl in impls:
            runs = []
            for _ in range(max(1, args.repeat)):
                out, wall, peak = run([sys.executable, "-c", TORCH_CHILD, args.gguf, impl, str(n)],
                                      cut, env)
                runs.append((json.loads(out.strip().splitlines()[-1]), peak))
            r, peak = min(runs, key=lambda x: x[0]["ms"])
            row[f"{impl}_ms"] = r["ms"]
            row[f"{impl}_rss_mb"] = peak
            row[f"{impl}_nll"] = r["mean_nll"]
            row[f"{impl}_tokens"] = r["tokens"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"{'tokens':>7} {'hubel s':>8} {'sdpa s':>8} {'eager s':>8} {'hubel/sdpa':>10} "
          f"{'hubel MB':>9} {'sdpa MB':>8} {'eager MB':>9}  (hubel: `hubel probe` less its start"
          f" and load; PyTorch: the forward alone; peak RSS of each process)")
    for r in rows:
        ratio = f"{r['hubel_s'] / (r['sdpa_ms'] / 1e3):>10.2f}" if "sdpa_ms" in r else f"{'-':>10}"
        print(f"{r['n']:>7} {r['hubel_s']:>8.2f} {r.get('sdpa_ms', 0) / 1e3:>8.2f} "
              f"{r.get('eager_ms', 0) / 1e3:>8.2f} {ratio} "
              f"{r['hubel_rss_mb']:>9.0f} {r.get('sdpa_rss_mb', 0):>8.0f} {r.get('eager_rss_mb', 0):>9.0f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import math
        n = [r["n"] for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series = [("hubel probe (less start and load)", [r["hubel_s"] for r in rows])]
        series += [(f"PyTorch {impl} (forward)", [r[f"{impl}_ms"] / 1e3 for r in rows])
                   for impl in impls]
        for label, t in series:
            # The local slope of log time against log length: 1 while the per-token matmuls
            # dominate, towards 2 where attention (quadratic in length) takes over.
            slope = (math.log(t[-1]) - math.log(t[-2])) / (math.log(n[-1]) - math.log(n[-2])) \
                if len(n) > 1 else float("nan")
            ax.plot(n, t, "o-", label=f"{label}; slope {slope:.2f} at the end")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(n, [str(x) for x in n])
        ax.set_xlabel("tokens in the probe")
        ax.set_ylabel("seconds (log)")
        ax.set_title("One forward pass with every position's loss, 2 threads")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
