"""nanoGPT's Shakespeare-char CPU run (its model.py and train.py, restated here) in PyTorch, with torch's own
initialization and batch sampling: what nanoGPT's recipe reaches over seeds, independently of wgoptim's initializer
and data sampler (adamw_jax.py checks the engine step by step; this checks the recipe's distribution).

    pip install torch
    python demos/gpt_shakespeare/reference/nanogpt_torch.py --seeds 1337,1,2

Per seed it prints the val loss at 2000 steps as nanoGPT logs it (20 random batches), on 200 random batches, and on
the whole val split (non-overlapping windows), with the 20-batch log every 250 steps. About 70 s per seed on two
CPU cores. See the README beside the example for what it showed.
"""
import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

# nanoGPT README's CPU command over config/train_shakespeare_char.py.
BATCH, BLOCK, LAYERS, HEADS, WIDTH = 12, 64, 4, 4, 128
MAX_ITERS, DECAY_ITERS, WARMUP, LR, MIN_LR = 2000, 2000, 100, 1e-3, 1e-4
BETAS, WD, CLIP, EVAL_INTERVAL, EVAL_ITERS = (0.9, 0.99), 0.1, 1.0, 250, 20


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH, bias=False)
        self.c_attn = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.attn_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.ln_2 = nn.LayerNorm(WIDTH, bias=False)
        self.c_fc = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.mlp_proj = nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(WIDTH, dim=2)
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, WIDTH)
        self.wpe = nn.Embedding(BLOCK, WIDTH)
        self.h = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.ln_f = nn.LayerNorm(WIDTH, bias=False)
        self.lm_head = nn.Linear(WIDTH, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        # nanoGPT's order: modules in registration order (wte, wpe, blocks, ln_f, lm_head), then the c_proj weights.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * LAYERS))

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def lr_at(it):
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def run(text, seed, big_eval):
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}

    def batch(split, gen=None):
        d = splits[split]
        ix = torch.randint(len(d) - BLOCK, (BATCH,), generator=gen)
        return torch.stack([d[i : i + BLOCK] for i in ix]), torch.stack([d[i + 1 : i + 1 + BLOCK] for i in ix])

    torch.manual_seed(seed)
    model = GPT(len(chars))
    params = [p for p in model.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": other, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS)

    @torch.no_grad()
    def estimate(iters, gen=None):
        model.eval()
        out = {s: float(np.mean([model(*batch(s, gen)).item() for _ in range(iters)])) for s in ("train", "val")}
        model.train()
        return out

    x, y = batch("train")
    log = []
    for it in range(MAX_ITERS + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        if it % EVAL_INTERVAL == 0:
            e = estimate(EVAL_ITERS)
            log.append((it, e["val"]))
            if it == MAX_ITERS:
                break
        loss = model(x, y)
        x, y = batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
    # 200 random batches from a generator of this seed's own (fresh windows per seed, as the example's), and the
    # whole val split in non-overlapping windows (every position in a window weighted alike, as random windows
    # weight them in expectation).
    big = estimate(big_eval, torch.Generator().manual_seed(seed + 777))["val"]
    with torch.no_grad():
        model.eval()
        d = splits["val"]
        w = (len(d) - 1) // BLOCK
        xs, ys = d[: w * BLOCK].view(w, BLOCK), d[1 : w * BLOCK + 1].view(w, BLOCK)
        whole = sum(model(xs[i : i + 256], ys[i : i + 256]).item() * len(xs[i : i + 256]) for i in range(0, w, 256))
    return log, big, whole / w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="tinyshakespeare.txt (default: $WGOPTIM_DATA_DIR's, else the example's cached copy)")
    ap.add_argument("--seeds", default="1337", help="comma-separated torch seeds")
    ap.add_argument("--big-eval", type=int, default=200, help="random val batches of the second estimate")
    a = ap.parse_args()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs = ([os.environ["WGOPTIM_DATA_DIR"]] if "WGOPTIM_DATA_DIR" in os.environ else []) + [os.path.join(cache, "wgoptim")]
    candidates = [a.data] if a.data else [os.path.join(d, "tinyshakespeare.txt") for d in dirs]
    path = next((c for c in candidates if os.path.exists(c)), None)
    if path is None:
        raise SystemExit(f"no tinyshakespeare.txt at {candidates}: pass --data (the example downloads it on first run)")
    text = open(path, encoding="utf-8").read()
    for seed in [int(s) for s in a.seeds.split(",")]:
        t = time.time()
        log, big, whole = run(text, seed, a.big_eval)
        vals = " ".join(f"{it}:{v:.4f}" for it, v in log)
        print(f"seed {seed}: val@2000 {log[-1][1]:.4f} (20 batches), {big:.4f} ({a.big_eval} batches), "
              f"{whole:.4f} (whole split); {vals}; {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
