"""An independent reference for the demo's AdamW run: nanoGPT's model and recipe written from their equations in
JAX (not from wgoptim's code), fed the same initial weights, training batches and evaluation batches as
`gpt_shakespeare` (it reproduces wgoptim's SplitMix64 streams), so the two runs can be compared step by step.

    pip install jax
    python demos/gpt_shakespeare/reference/adamw_jax.py --preset small --seed 1337 --compare out/gpt_shakespeare/loss.csv

Presets without dropout only (tiny, small): dropout masks come from wgoptim's own hash, which this script does not
reproduce. See the README beside the example for what the comparison showed.
"""
import argparse
import csv
import math
import os
import time

import numpy as np
import jax
import jax.numpy as jnp

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
# (layers, heads, width, block, batch, iters, warmup, eval_interval, eval_iters), as src/nn/preset.rs
PRESETS = {"tiny": (2, 2, 64, 32, 8, 300, 30, 100, 10), "small": (4, 4, 128, 64, 12, 2000, 100, 250, 20)}


class Rng:
    """SplitMix64, as src/nn/rng.rs."""

    def __init__(self, seed):
        self.state = seed & M64

    def next_u64(self):
        self.state = (self.state + GAMMA) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        zone = M64 - M64 % n
        while True:
            v = self.next_u64()
            if v < zone:
                return v % n

    def normals(self, n):
        """n Box–Muller normals from 2n consecutive draws (vectorized next_u64)."""
        with np.errstate(over="ignore"):
            z = np.uint64(self.state) + np.arange(1, 2 * n + 1, dtype=np.uint64) * np.uint64(GAMMA)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        self.state = (self.state + 2 * n * GAMMA) & M64
        u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return np.sqrt(-2.0 * np.log(1.0 - u[0::2])) * np.cos(2 * math.pi * u[1::2])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default="small")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--iters", type=int, help="steps (default: the preset's; the schedule ends there)")
    ap.add_argument("--data", help="tinyshakespeare.txt (default: $WGOPTIM_DATA_DIR's, else the example's cached copy)")
    ap.add_argument("--final-eval-iters", type=int, help="batches for the last validation estimate (default: the preset's)")
    ap.add_argument("--whole-val", action="store_true", help="at the end, also the loss over the whole val split")
    ap.add_argument("--csv", help="write step,train_loss,val_loss here (the example's loss.csv format)")
    ap.add_argument("--compare", help="a loss.csv of gpt_shakespeare with the same preset, seed and iters")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest |Δ| --compare accepts (default 1e-3)")
    a = ap.parse_args()
    L, H, C, T, B, iters, warmup, eval_interval, eval_iters = PRESETS[a.preset]
    if a.iters:
        iters, warmup = max(a.iters, 1), min(warmup, max(a.iters, 1) // 10)  # Preset::with_iters
    lr0, min_ratio, wd, b1, b2, eps, clip = 1e-3, 0.1, 0.1, 0.9, 0.99, 1e-8, 1.0

    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [a.data] if a.data else [os.path.join(d, "tinyshakespeare.txt") for d in
                                          ([os.environ["WGOPTIM_DATA_DIR"]] if "WGOPTIM_DATA_DIR" in os.environ else [])
                                          + [os.path.join(cache, "wgoptim")]]
    path = next((c for c in candidates if os.path.exists(c)), None)
    if path is None:
        raise SystemExit(f"no tinyshakespeare.txt at {candidates}: pass --data (the example downloads it on first run)")
    text = open(path, encoding="utf-8").read()
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.array([lookup[c] for c in text], dtype=np.int32)
    n = len(ids) * 9 // 10
    splits = {"train": ids[:n], "val": ids[n:]}
    V = len(vocab)

    # Parameters in wgoptim's order (GptConfig::param_specs, no biases), initialized in that order from one stream.
    specs = [("wte", (V, C)), ("wpe", (T, C))]
    for l in range(L):
        specs += [(f"h.{l}.ln_1.weight", (C,)), (f"h.{l}.attn.c_attn.weight", (3 * C, C)),
                  (f"h.{l}.attn.c_proj.weight", (C, C)), (f"h.{l}.ln_2.weight", (C,)),
                  (f"h.{l}.mlp.c_fc.weight", (4 * C, C)), (f"h.{l}.mlp.c_proj.weight", (C, 4 * C))]
    specs += [("ln_f.weight", (C,))]
    rng, params = Rng(a.seed), {}
    for name, shape in specs:
        if "ln_" in name:
            params[name] = jnp.ones(shape, jnp.float32)
        else:
            std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
            params[name] = jnp.asarray((rng.normals(int(np.prod(shape))) * std).astype(np.float32).reshape(shape))

    def batch(split, r):
        data = splits[split]
        starts = [r.below(len(data) - T) for _ in range(B)]
        return (jnp.asarray(np.stack([data[i:i + T] for i in starts])),
                jnp.asarray(np.stack([data[i + 1:i + T + 1] for i in starts])))

    def layer_norm(x, w):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w

    def loss_fn(p, x, y):
        h = p["wte"][x] + p["wpe"][None, :T]
        causal = jnp.tril(jnp.ones((T, T), bool))
        heads = lambda t: t.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)
        for l in range(L):
            q, k, v = map(heads, jnp.split(layer_norm(h, p[f"h.{l}.ln_1.weight"]) @ p[f"h.{l}.attn.c_attn.weight"].T, 3, -1))
            att = jax.nn.softmax(jnp.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(C // H), -jnp.inf), -1)
            h = h + (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C) @ p[f"h.{l}.attn.c_proj.weight"].T
            f = jax.nn.gelu(layer_norm(h, p[f"h.{l}.ln_2.weight"]) @ p[f"h.{l}.mlp.c_fc.weight"].T, approximate=False)
            h = h + f @ p[f"h.{l}.mlp.c_proj.weight"].T
        logp = jax.nn.log_softmax(layer_norm(h, p["ln_f.weight"]) @ p["wte"].T, -1)
        return -jnp.take_along_axis(logp, y[..., None], -1).mean()

    def lr_at(k):  # nanoGPT's get_lr: linear warmup, cosine to min_lr
        if k < warmup:
            return lr0 * (k + 1) / (warmup + 1)
        progress = min(max((k - warmup) / max(iters - warmup, 1), 0.0), 1.0)
        return lr0 * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    @jax.jit
    def train_step(p, m, v, t, lr, x, y):
        # clip_grad_norm_(1.0), then torch.optim.AdamW with weight decay on the 2-D parameters only
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        coef = jnp.minimum(1.0, clip / (jnp.sqrt(sum(jnp.sum(gi * gi) for gi in g.values())) + 1e-6))
        out = {}
        for k in p:
            gk = g[k] * coef
            mk, vk = b1 * m[k] + (1 - b1) * gk, b2 * v[k] + (1 - b2) * gk * gk
            pk = p[k] * (1 - lr * wd) if p[k].ndim == 2 else p[k]
            out[k] = (pk - (lr / (1 - b1 ** t)) * mk / (jnp.sqrt(vk) / jnp.sqrt(1 - b2 ** t) + eps), mk, vk)
        return {k: o[0] for k, o in out.items()}, {k: o[1] for k, o in out.items()}, {k: o[2] for k, o in out.items()}, loss

    eval_loss = jax.jit(loss_fn)

    def estimate(split, done, batches):  # Trainer::evaluate's batch stream
        r = Rng(a.seed ^ ((done * 0x9E37) & M64) ^ (split == "val"))
        return float(np.mean([float(eval_loss(params, *batch(split, r))) for _ in range(batches)]))

    m = {k: jnp.zeros_like(x) for k, x in params.items()}
    v = {k: jnp.zeros_like(x) for k, x in params.items()}
    data_rng, rows, t0 = Rng(a.seed ^ 0x5EEDDA7A), [], time.time()
    for k in range(iters):
        x, y = batch("train", data_rng)
        params, m, v, loss = train_step(params, m, v, jnp.float32(k + 1), jnp.float32(lr_at(k)), x, y)
        done, val = k + 1, ""
        if done % eval_interval == 0 or done == iters:
            val = estimate("val", done, eval_iters)
            print(f"step {done}: batch loss {float(loss):.4f}, val loss {val:.4f} ({time.time() - t0:.0f} s)", flush=True)
            if done == iters and a.final_eval_iters:
                print(f"val loss on {a.final_eval_iters} batches: {estimate('val', done, a.final_eval_iters):.4f}")
        rows.append((k, float(loss), val))
    if a.whole_val:  # non-overlapping windows, in batches of B (a last partial batch left out)
        d, w = splits["val"], (len(splits["val"]) - 1) // T
        windows = lambda j, s: jnp.asarray(np.stack([d[i * T + s:(i + 1) * T + s] for i in range(j, j + B)]))
        losses = [float(eval_loss(params, windows(j, 0), windows(j, 1))) for j in range(0, w - B + 1, B)]
        print(f"val loss over the whole split ({len(losses) * B} windows): {np.mean(losses):.4f}")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            csv.writer(f).writerows([("step", "train_loss", "val_loss"), *rows])
    if a.compare:
        theirs = list(csv.DictReader(open(a.compare)))
        if len(theirs) != len(rows):
            raise SystemExit(f"{a.compare} has {len(theirs)} steps, this run {len(rows)}: use the same --iters")
        d_train = max(abs(float(r["train_loss"]) - mine[1]) for r, mine in zip(theirs, rows))
        d_val = max((abs(float(r["val_loss"]) - mine[2]) for r, mine in zip(theirs, rows) if mine[2] != ""), default=0)
        verdict = "agree" if max(d_train, d_val) <= a.tolerance else "DIFFER"
        print(f"max |Δ| against {a.compare}: train loss {d_train:.2e}, val loss {d_val:.2e} — {verdict} at {a.tolerance:g}")
        if verdict == "DIFFER":
            raise SystemExit(1)


if __name__ == "__main__":
    main()
