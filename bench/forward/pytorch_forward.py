#!/usr/bin/env python3
"""PyTorch reference side of the side-by-side forward benchmark.

A GPT-2-small-shaped decoder (12 layers, d_model 768, 12 heads, d_mlp 3072,
vocab 50257, n_ctx 1024) written directly as plain eager PyTorch modules in the
style of Hugging Face's GPT2 (fused qkv Linear, pre-LN blocks, learned
positional embeddings, gelu_new, tied unembedding).  Weights are random
(normal std 0.02, fixed seed), float32, and every forward runs under
torch.inference_mode().

Prints exactly one JSON line on stdout.  See README.md in this directory.

Run with Debian's interpreter, which is the one that has torch:
    /usr/bin/python3 bench/forward/pytorch_forward.py --batch 8 --seq 128 \
        --threads 2 --logits last --warmup 2 --iters 5
"""

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# GPT-2 small shape.
N_LAYER = 12
D_MODEL = 768
N_HEAD = 12
D_HEAD = D_MODEL // N_HEAD
D_MLP = 3072
VOCAB = 50257
N_CTX = 1024
LN_EPS = 1e-5
INIT_STD = 0.02
SEED = 0

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def _gelu_tanh_supported() -> bool:
    try:
        F.gelu(torch.zeros(1), approximate="tanh")
        return True
    except TypeError:
        return False


# F.gelu(approximate="tanh") (torch >= 1.12) computes exactly GPT-2's gelu_new
# 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))) as one fused kernel.  Older
# torch falls back to the explicit formula that HF's NewGELUActivation uses.
HAS_GELU_TANH = _gelu_tanh_supported()


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    if HAS_GELU_TANH:
        return F.gelu(x, approximate="tanh")
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL)  # fused q, k, v
        self.c_proj = nn.Linear(D_MODEL, D_MODEL)
        self.scale = 1.0 / math.sqrt(D_HEAD)
        if not HAS_SDPA:
            # HF GPT2-style causal mask buffer, sliced per call.
            self.register_buffer(
                "bias",
                torch.tril(torch.ones(N_CTX, N_CTX, dtype=torch.bool)).view(1, 1, N_CTX, N_CTX),
                persistent=False,
            )
            self.register_buffer("masked_bias", torch.tensor(torch.finfo(torch.float32).min), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(D_MODEL, dim=2)
        # [B, T, D] -> [B, H, T, d_head]
        q = q.view(B, T, N_HEAD, D_HEAD).transpose(1, 2)
        k = k.view(B, T, N_HEAD, D_HEAD).transpose(1, 2)
        v = v.view(B, T, N_HEAD, D_HEAD).transpose(1, 2)
        if HAS_SDPA:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Manual masked softmax, as in HF GPT2Attention._attn.
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            mask = self.bias[:, :, :T, :T]
            scores = torch.where(mask, scores, self.masked_bias)
            probs = torch.softmax(scores, dim=-1)
            z = torch.matmul(probs, v)
        z = z.transpose(1, 2).contiguous().view(B, T, D_MODEL)
        return self.c_proj(z)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = nn.Linear(D_MODEL, D_MLP)
        self.c_proj = nn.Linear(D_MLP, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(gelu_new(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D_MODEL, eps=LN_EPS)
        self.attn = Attention()
        self.ln_2 = nn.LayerNorm(D_MODEL, eps=LN_EPS)
        self.mlp = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x  # == hook_resid_post for this block


class GPT2(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, D_MODEL)
        self.wpe = nn.Embedding(N_CTX, D_MODEL)
        self.h = nn.ModuleList([Block() for _ in range(N_LAYER)])
        self.ln_f = nn.LayerNorm(D_MODEL, eps=LN_EPS)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, INIT_STD)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()

    def forward(self, tokens: torch.Tensor, logits: str = "all", resid_hook=None):
        """tokens: int64 [B, T].  logits: 'none' | 'last' | 'all'.

        resid_hook, if given, is called with (layer, resid_post) after every block.
        Returns the logits ([B, V] for 'last', [B, T, V] for 'all') or, for
        'none', the final-LN hidden state [B, T, D].
        """
        B, T = tokens.shape
        pos = torch.arange(T, dtype=torch.long, device=tokens.device)
        x = self.wte(tokens) + self.wpe(pos)  # [B, T, D] (+ broadcast [T, D])
        for i, block in enumerate(self.h):
            x = block(x)
            if resid_hook is not None:
                resid_hook(i, x)
        x = self.ln_f(x)
        if logits == "none":
            return x
        if logits == "last":
            x = x[:, -1, :]  # unembed only the last position
        return F.linear(x, self.wte.weight)  # tied unembedding, no bias


def loaded_blas() -> str:
    """Path of the BLAS shared object actually mapped into this process.

    Debian's torch links libblas.so.3, which resolves through the
    alternatives system (reference Netlib BLAS by default, far slower than
    OpenBLAS/MKL) or through LD_LIBRARY_PATH.  Reported so results can be
    interpreted; see README.md.
    """
    import os
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path)
                if name.startswith(("libblas", "libopenblas", "libmkl")):
                    libs.add(os.path.realpath(path))
    except OSError:
        return "unknown"
    return ";".join(sorted(libs)) or "none"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="GPT-2-small-shaped PyTorch eager forward benchmark")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--logits", choices=("none", "last", "all"), default="last")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--capture-resid", action="store_true",
                   help="copy all 12 hook_resid_post tensors to numpy arrays every iteration")
    a = p.parse_args(argv)
    if not (1 <= a.seq <= N_CTX):
        p.error(f"--seq must be in [1, {N_CTX}]")
    if a.batch < 1 or a.threads < 1 or a.iters < 1 or a.warmup < 0:
        p.error("--batch/--threads/--iters must be >= 1 and --warmup >= 0")
    return a


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # once, before anything else runs

    torch.manual_seed(SEED)
    model = GPT2().eval()
    tokens = torch.randint(0, VOCAB, (args.batch, args.seq), dtype=torch.long)

    captured = [None] * N_LAYER

    def capture(i, t):
        # Real copy out of torch-owned memory, mirroring a capture.
        captured[i] = np.array(t.numpy(), copy=True)

    hook = capture if args.capture_resid else None

    def step():
        out = model(tokens, logits=args.logits, resid_hook=hook)
        return out

    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            step()
        for _ in range(args.iters):
            t0 = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - t0)
            del out

    if args.capture_resid:
        assert all(c is not None and c.shape == (args.batch, args.seq, D_MODEL) for c in captured)

    median = statistics.median(times)
    result = {
        "impl": "pytorch",
        "torch_version": torch.__version__,
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "logits": args.logits,
        "iters": args.iters,
        "seconds_per_iter": median,
        "tokens_per_s": args.batch * args.seq / median,
        "sdpa": HAS_SDPA,
        # Extra context (not required by the comparison harness).
        "warmup": args.warmup,
        "capture_resid": args.capture_resid,
        "blas": loaded_blas(),
        "gelu": "F.gelu(approximate='tanh')" if HAS_GELU_TANH else "formula",
        "seconds_min": min(times),
        "seconds_mean": statistics.fmean(times),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
