#!/usr/bin/env python3
"""A full causal trace (every layer x position of the residual stream) by `hubel patch`, and the
same trace written with PyTorch forward pre-hooks on the same GGUF weights, in the same run,
2 threads each.

    cargo build --release
    python tools/bench/circuits.py [--gguf PATH] [--binary target/release/hubel] [--out FILE.json]

1. `hubel patch --clean C --corrupt X --target " Paris" --versus " Rome" --site resid --json`:
   the trace's own time (`seconds` in the report: the clean and corrupted runs and every patched
   run, batched; model load excluded) and the command's wall time.
2. PyTorch + transformers (f32, eager attention): the clean run records each decoder layer's
   input (a forward pre-hook: blocks.L.hook_resid_pre); then per layer one batch of n copies of
   the corrupted prompt, copy p with position p of that layer's input replaced by the clean value
   (a forward pre-hook returning the edited hidden states), only the last position's logits
   (`logits_to_keep=1`, as hubel computes); the metric logit(target) - logit(versus) at the last
   position; the same fraction restored.
3. The two grids compared (max |difference|; same weights, f32 both) and the time ratio.
Needs torch, transformers, gguf, numpy (a scratch venv; never the app or CI).
"""
import argparse
import json
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 12 tokens each in SmolLM2 (the benchmark: 30 layers x 12 positions).
CLEAN = "The famous Eiffel Tower is located in the old city of"
CORRUPT = "The famous Colosseum is located in the old city of"


def run_hubel(binary, gguf, clean, corrupt, target, versus):
    t = time.perf_counter()
    out = subprocess.run(
        [binary, "patch", "--clean", clean, "--corrupt", corrupt, "--target", target,
         "--versus", versus, "--site", "resid", "--json", "--model", gguf],
        capture_output=True, text=True, check=True,
        env=dict(os.environ, RAYON_NUM_THREADS="2"),
    )
    return json.loads(out.stdout), time.perf_counter() - t


def torch_trace(gguf, clean, corrupt, target, versus):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    folder, file = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    layers = model.model.layers
    c_ids = tok(clean, return_tensors="pt").input_ids
    x_ids = tok(corrupt, return_tensors="pt").input_ids
    assert c_ids.shape == x_ids.shape, (c_ids.shape, x_ids.shape)
    t_id = tok(target, add_special_tokens=False).input_ids
    v_id = tok(versus, add_special_tokens=False).input_ids
    assert len(t_id) == 1 and len(v_id) == 1, (t_id, v_id)
    t_id, v_id = t_id[0], v_id[0]
    n = c_ids.shape[1]

    def metric(logits):
        last = logits[:, -1, :]
        return (last[:, t_id] - last[:, v_id]).numpy()

    t0 = time.perf_counter()
    with torch.no_grad():
        clean_resid = {}
        handles = []
        for l, layer in enumerate(layers):
            def save(mod, args, kwargs, l=l):
                h = args[0] if args else kwargs["hidden_states"]
                clean_resid[l] = h[0].clone()
            handles.append(layer.register_forward_pre_hook(save, with_kwargs=True))
        m_clean = metric(model(c_ids).logits)[0]
        for h in handles:
            h.remove()
        m_corrupt = metric(model(x_ids).logits)[0]
        batch = x_ids.repeat(n, 1)
        patched = np.zeros((len(layers), n), dtype=np.float32)
        for l, layer in enumerate(layers):
            def patch(mod, args, kwargs, l=l):
                if args:
                    h = args[0].clone()
                else:
                    h = kwargs["hidden_states"].clone()
                for p in range(n):
                    h[p, p, :] = clean_resid[l][p]
                if args:
                    return (h,) + tuple(args[1:]), kwargs
                kwargs = dict(kwargs, hidden_states=h)
                return args, kwargs
            handle = layer.register_forward_pre_hook(patch, with_kwargs=True)
            patched[l] = metric(model(batch, logits_to_keep=1).logits)
            handle.remove()
    seconds = time.perf_counter() - t0
    span = m_clean - m_corrupt
    grid = np.zeros_like(patched) if abs(span) <= 1e-6 else (patched - m_corrupt) / span
    return {"clean": float(m_clean), "corrupt": float(m_corrupt), "grid": grid.tolist(),
            "seconds": seconds, "runs": int(len(layers) * n)}


def main():
    import numpy as np
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser(
        "~/.local/share/hubel/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hubel"))
    ap.add_argument("--clean", default=CLEAN)
    ap.add_argument("--corrupt", default=CORRUPT)
    ap.add_argument("--target", default=" Paris")
    ap.add_argument("--versus", default=" Rome")
    ap.add_argument("--out")
    args = ap.parse_args()
    ours, wall = run_hubel(args.binary, args.gguf, args.clean, args.corrupt, args.target,
                           args.versus)
    ref = torch_trace(args.gguf, args.clean, args.corrupt, args.target, args.versus)
    a, b = np.array(ours["grid"]), np.array(ref["grid"])
    result = {
        "cells": f"{a.shape[0]} layers x {a.shape[1]} positions",
        "hubel_trace_seconds": ours["seconds"],
        "hubel_command_seconds": wall,
        "torch_trace_seconds": ref["seconds"],
        "ratio_torch_over_hubel": ref["seconds"] / ours["seconds"],
        "metric_clean": [ours["clean"], ref["clean"]],
        "metric_corrupt": [ours["corrupt"], ref["corrupt"]],
        "grid_max_abs_diff": float(np.abs(a - b).max()),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
