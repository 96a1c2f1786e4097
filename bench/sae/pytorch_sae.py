"""Reference for `interpmesh-bench sae`: the same TopK SAE training step in PyTorch eager.

Same shapes and algorithm as the SAE plugin's trainer (encoder/decoder, TopK, MSE / Var(x), AuxK
on dead latents, Adam with the same schedule, decoder rows renormalised every step), on synthetic
superposition data generated up front. Prints JSON with activations per second.
"""
import json
import math
import sys
import time

import torch

d_in, d_sae, k, steps, batch, threads = (int(a) for a in sys.argv[1:7])
torch.set_num_threads(threads)
torch.manual_seed(0)
features = torch.randn(2 * d_sae, d_in)
features /= features.norm(dim=1, keepdim=True)


def sample(n):
    coefficients = torch.zeros(n, 2 * d_sae)
    idx = torch.rand(n, 2 * d_sae).argsort(dim=1)[:, :k]
    coefficients.scatter_(1, idx, torch.rand(n, k) + 0.5)
    return coefficients @ features


data = [sample(batch) for _ in range(steps)]
dec = torch.randn(d_sae, d_in)
dec /= dec.norm(dim=1, keepdim=True)
w_dec = dec.clone().requires_grad_()
w_enc = dec.t().contiguous().requires_grad_()
b_enc = torch.zeros(d_sae, requires_grad=True)
b_dec = data[0].mean(0).clone().requires_grad_()
params = [w_enc, b_enc, w_dec, b_dec]
optimizer = torch.optim.Adam(params, lr=3e-3, betas=(0.9, 0.999), eps=1e-8)
last_fired = torch.zeros(d_sae, dtype=torch.long)
aux_k, dead_after = min(d_sae // 2, 4 * k), max(50, steps // 5)
start = time.perf_counter()
for step, x in enumerate(data):
    warm = min(50, steps // 10)
    lr = 3e-3 * (step + 1) / warm if step < warm else 3e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1, (step - warm) / max(1, steps - warm)))))
    for group in optimizer.param_groups:
        group["lr"] = lr
    pre = (x - b_dec) @ w_enc + b_enc
    values, indices = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    x_hat = f @ w_dec + b_dec
    variance = (x - x.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12)
    loss = (x_hat - x).pow(2).sum(1).mean() / variance
    last_fired[(f > 0).any(0)] = step
    dead = (step - last_fired) >= dead_after
    if dead.any():
        kk = min(aux_k, int(dead.sum()))
        aux_values, aux_idx = pre.masked_fill(~dead, float("-inf")).topk(kk, dim=-1)
        aux = torch.zeros_like(pre).scatter(-1, aux_idx, torch.relu(aux_values))
        residual = (x - x_hat).detach()
        loss = loss + (aux @ w_dec - residual).pow(2).sum(1).mean() / (residual - residual.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12) / 32
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
seconds = time.perf_counter() - start
print(json.dumps({"activations_per_second": steps * batch / seconds, "seconds": seconds, "final_loss": float(loss)}))
