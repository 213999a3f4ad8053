#!/usr/bin/env python3
"""A top-k SAE trained by hubel against one trained by PyTorch on the very same rows.

Issue 10's target compares hubel's 1,024-atom top-k SAE of layer 6 with a PyTorch SAE trained
by whoever filed the issue on held-out text of its own. This script removes that difference:

1. `hubel dict train ... --save-rows train.npy` trains hubel's SAE (timed by hubel) and writes
   the training rows it collected (layer 6 `hook_resid_post`, positions >= 1, original space);
2. `hubel dict eval D --save-rows heldout.npy --json` evaluates it on held-out text (the
   held-out stimuli: every 20th of the corpus, never trained on) and writes those rows;
3. PyTorch trains a top-k SAE (Gao et al. 2024: tied initialisation, b_dec at the mean, unit
   decoder rows, AuxK for dead latents, Adam) on train.npy with the same k, atoms and epochs, at
   a few learning rates, and its FVU is computed on heldout.npy exactly as hubel's is:
   sum ||x - x_hat||^2 / sum ||x - mean||^2 over the held-out rows;
4. both SAEs' atoms also code the held-out rows by non-negative orthogonal matching pursuit
   written here (torch, batched), beside `hubel dict eval --encode pursuit`.

Run from the repository root with a venv that has torch and numpy (no model hub access needed):
    python tools/bench/dictionary.py [--hubel target/release/hubel] [--threads 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def run(cmd):
    print("$", " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out.stdout


def fvu(x, x_hat):
    mean = x.mean(0, keepdims=True)
    return float(((x - x_hat) ** 2).sum() / ((x - mean) ** 2).sum())


def pursuit(r, w_dec, k, iters=300):
    """Non-negative orthogonal matching pursuit, batched over rows (torch), written here from its
    definition: k times, add the unchosen atom whose direction correlates most positively with
    the residual, then refit every chosen atom's coefficient by non-negative least squares
    (accelerated projected gradient, warm-started, a fixed 300 iterations; hubel refits by
    coordinate descent). It stops early, as hubel does, once the best correlation is under 1e-4
    of the first. r: [n, d] rows with b_dec taken off; w_dec: [m, d] atoms. Returns dense codes
    [n, m]."""
    import torch

    r = torch.as_tensor(np.array(r), dtype=torch.float64)
    w = torch.as_tensor(np.array(w_dec), dtype=torch.float64)
    n, m = r.shape[0], w.shape[0]
    alpha = r @ w.T  # [n, m]
    gram = w @ w.T
    # Atoms are chosen by direction: correlation over length (SAELens atoms need not be unit).
    inv_len = torch.where(gram.diagonal() > 0, gram.diagonal().rsqrt(), torch.zeros(m, dtype=torch.float64))
    rows = torch.arange(n)
    chosen = torch.zeros(n, m, dtype=torch.bool)
    support = torch.zeros(n, 0, dtype=torch.long)
    coef = torch.zeros(n, 0, dtype=torch.float64)
    active = torch.ones(n, dtype=torch.bool)
    floor = None
    prev_frozen = None
    for step in range(k):
        # The residual's correlations: alpha - z G, with z the dense code so far.
        z = torch.zeros(n, m, dtype=torch.float64)
        if support.shape[1]:
            z.scatter_add_(1, support, coef)
        rho = (alpha - z @ gram) * inv_len
        rho = rho.masked_fill(chosen, -float("inf"))
        best, j = rho.max(1)
        if floor is None:
            floor = best * 1e-4
        active &= best > floor
        if not active.any():
            break
        # Rows that stopped get a dummy atom with coefficient 0 (kept at 0 below).
        chosen[rows[active], j[active]] = True
        support = torch.cat([support, j[:, None]], 1)
        coef = torch.cat([coef, torch.zeros(n, 1, dtype=torch.float64)], 1)
        frozen = torch.zeros_like(coef, dtype=torch.bool)
        frozen[:, -1] = ~active
        if prev_frozen is not None:
            frozen[:, :-1] |= prev_frozen
        prev_frozen = frozen.clone()
        g_ss = gram[support[:, :, None], support[:, None, :]]  # [n, t, t]
        a_s = torch.gather(alpha, 1, support)
        lip = g_ss.abs().sum(2).max(1).values[:, None]
        c, y, t = coef.clone(), coef.clone(), 1.0
        for _ in range(iters):
            grad = torch.einsum("nab,nb->na", g_ss, y) - a_s
            c_new = torch.clamp(y - grad / lip, min=0).masked_fill(frozen, 0)
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            y = c_new + (t - 1) / t_new * (c_new - c)
            c, t = c_new, t_new
        coef = c
    z = torch.zeros(n, m, dtype=torch.float64)
    if support.shape[1]:
        z.scatter_add_(1, support, coef)
    return z.numpy().astype(np.float32)


def train_torch(x, atoms, k, epochs, lr, batch, seed):
    import torch

    torch.manual_seed(seed)
    n, d = x.shape
    xt = torch.from_numpy(x)
    w_dec = torch.randn(atoms, d)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    w_dec = torch.nn.Parameter(w_dec)
    w_enc = torch.nn.Parameter(w_dec.detach().clone().T.contiguous())
    b_enc = torch.nn.Parameter(torch.zeros(atoms))
    b_dec = torch.nn.Parameter(xt.mean(0).clone())
    params = [w_enc, w_dec, b_enc, b_dec]
    opt = torch.optim.Adam(params, lr=lr)
    var = ((xt - xt.mean(0)) ** 2).sum(1).mean()
    k_aux = d // 2
    last_fired = torch.zeros(atoms, dtype=torch.long)
    seen = 0
    steps = epochs * ((n + batch - 1) // batch)
    step = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, batch):
            xb = xt[order[i : i + batch]]
            pre = (xb - b_dec) @ w_enc + b_enc
            vals, idx = torch.topk(torch.relu(pre), k, dim=1)
            z = torch.zeros_like(pre).scatter(1, idx, vals)
            x_hat = z @ w_dec + b_dec
            err = xb - x_hat
            loss = (err**2).sum(1).mean() / var
            seen += xb.shape[0]
            fired = (z > 0).any(0)
            last_fired[fired] = seen
            dead = (seen - last_fired) > n
            if dead.any():
                # AuxK: the top k_aux dead latents reconstruct the error.
                aux_pre = torch.where(dead, torch.relu(pre), torch.zeros_like(pre))
                ka = min(k_aux, int(dead.sum()))
                av, ai = torch.topk(aux_pre, ka, dim=1)
                za = torch.zeros_like(pre).scatter(1, ai, av)
                aux = ((err.detach() - za @ w_dec) ** 2).sum(1).mean() / var
                loss = loss + aux / 32
            opt.zero_grad()
            loss.backward()
            with torch.no_grad():
                # Unit decoder rows: no gradient along them.
                w = w_dec
                w.grad -= (w.grad * w).sum(1, keepdim=True) * w
            # The rate decays to zero over the last 20% of the steps.
            frac = step / steps
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (1.0 - frac) / 0.2)
            opt.step()
            with torch.no_grad():
                w_dec /= w_dec.norm(dim=1, keepdim=True)
            step += 1
    seconds = time.perf_counter() - t0

    def encode_decode(rows, by_pursuit=False):
        with torch.no_grad():
            r = torch.from_numpy(rows)
            if by_pursuit:
                z = torch.from_numpy(pursuit((r - b_dec).numpy(), w_dec.detach().numpy(), k))
            else:
                pre = (r - b_dec) @ w_enc + b_enc
                vals, idx = torch.topk(torch.relu(pre), k, dim=1)
                z = torch.zeros_like(pre).scatter(1, idx, vals)
            return (z @ w_dec + b_dec).numpy(), float((z > 0).sum(1).float().mean())

    return encode_decode, seconds


def load_safetensors(path):
    import struct

    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=np.float32).reshape(v["shape"])
    return out


def hubel_pursuit_fvu(dpath, h, k):
    """hubel's dictionary (its atoms and normaliser read from the file) coded by this script's
    pursuit: an independent check of `hubel dict eval --encode pursuit`."""
    t = load_safetensors(dpath)
    shift, scale = t["norm.0.shift"].reshape(-1), t["norm.0.scale"].reshape(-1)
    xn = (h - shift) / scale
    z = pursuit(xn - t["b_dec"], t["W_dec"], k)
    x_hat = (z @ t["W_dec"] + t["b_dec"]) * scale + shift
    return fvu(h, x_hat), float((z > 0).sum(1).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hubel", default="target/release/hubel")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--atoms", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--heldout", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--corpus", default="wordnet-examples")
    ap.add_argument("--lrs", default="1e-3,4e-4")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="hubel-dict-bench-")
    dpath = os.path.join(tmp, "d.safetensors")
    train_rows = os.path.join(tmp, "train.npy")
    held_rows = os.path.join(tmp, "heldout.npy")
    t0 = time.perf_counter()
    out = run(
        [args.hubel, "dict", "train", "--method", "topk", "--layers", str(args.layer),
         "--atoms", str(args.atoms), "--k", str(args.k), "--tokens", str(args.tokens),
         "--epochs", str(args.epochs), "--corpus", args.corpus, "--out", dpath,
         "--save-rows", train_rows, "--json"]
    )
    wall = time.perf_counter() - t0
    hubel_seconds = json.loads(out)["config"]["seconds"]
    report = json.loads(
        run([args.hubel, "dict", "eval", dpath, "--tokens", str(args.heldout), "--corpus",
             args.corpus, "--save-rows", held_rows, "--json"])
    )
    x = np.load(train_rows).astype(np.float32)
    h = np.load(held_rows).astype(np.float32)
    print(f"rows: {x.shape[0]} training, {h.shape[0]} held out, d {x.shape[1]}; "
          f"{args.threads} threads", file=sys.stderr)
    pursued = json.loads(
        run([args.hubel, "dict", "eval", dpath, "--tokens", str(args.heldout), "--corpus",
             args.corpus, "--encode", "pursuit", "--json"])
    )
    rows = [("hubel top-k SAE (its default recipe)", hubel_seconds, report["fvu"], report["l0"],
             report["ce_recovered"]),
            ("the same, codes by hubel's pursuit (`--encode pursuit`)", hubel_seconds,
             pursued["fvu"], pursued["l0"], pursued["ce_recovered"])]
    fv, l0 = hubel_pursuit_fvu(dpath, h, args.k)
    rows.append(("the same atoms, codes by this script's pursuit", hubel_seconds, fv, l0, None))
    for lr in [float(v) for v in args.lrs.split(",")]:
        f, seconds = train_torch(x, args.atoms, args.k, args.epochs, lr, args.batch, 0)
        x_hat, l0 = f(h)
        rows.append((f"PyTorch top-k SAE, Adam lr {lr:g}, batch {args.batch}", seconds,
                     fvu(h, x_hat), l0, None))
        x_hat, l0 = f(h, by_pursuit=True)
        rows.append((f"the same, codes by this script's pursuit", seconds, fvu(h, x_hat), l0,
                     None))
    print(f"| SAE ({args.atoms} atoms, k {args.k}, {args.epochs} epochs over {x.shape[0]} rows) "
          f"| train | held-out FVU | L0 | ce_recovered |")
    print("|---|---|---|---|---|")
    for name, s, fv, l0, ce in rows:
        ce_text = f"{ce:.3f}" if ce is not None else "–"
        print(f"| {name} | {s:.1f} s | {fv:.4f} | {l0:.1f} | {ce_text} |")
    print(f"(hubel's command took {wall:.1f} s with collection; held-out FVU of both on the same "
          f"{h.shape[0]} rows)")


if __name__ == "__main__":
    main()
