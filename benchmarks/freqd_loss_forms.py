"""FreqD's projector + cosine loss, as kdbench computes it, against a closed form that never builds the
[n, d_t] projector output (a negative result kept so that it can be rerun; see the README's Speed section).

    python benchmarks/freqd_loss_forms.py            # CiteULike batch shapes: 1,220 users + 3,683 items, 20 → 210 → 400
    python benchmarks/freqd_loss_forms.py --compile  # also torch.compile of the plain form (fused element-wise work)

With p = W2·hid + b2 and unit teacher rows t, 1 − cos(p, t) = 1 − (hid·W2ᵀt + b2·t) / ‖p‖ and
‖p‖² = hidᵀ(W2ᵀW2)hid + 2·hid·W2ᵀb2 + ‖b2‖²: everything per row is an [h] vector, at the price of [n × h × h]
products forward and backward. Prints the two forms' loss and gradient agreement and their median step times,
interleaved (compare within one run).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.methods.freqd import projected_cosine_loss

D_S, D_T, ROWS, NODES = 20, 400, (1220, 3683), 30400


class ClosedFormMLPCosine(torch.autograd.Function):
    """Row-wise 1 − cos(W2·hid + b2, t) for unit rows t, with a hand-written backward (G = W2ᵀW2 is symmetric)."""

    @staticmethod
    def forward(ctx, hid, w2, b2, t, eps: float):
        q, c = t @ w2, w2.t() @ b2
        hg = hid @ (w2.t() @ w2)
        a = torch.linalg.vecdot(hid, q) + t @ b2
        norm = (torch.linalg.vecdot(hg + 2 * c, hid) + b2 @ b2).clamp_min(eps * eps).sqrt()
        ctx.save_for_backward(hid, q, hg, c, t, w2, b2, a, norm)
        return 1 - a / norm

    @staticmethod
    def backward(ctx, g):
        hid, q, hg, c, t, w2, b2, a, norm = ctx.saved_tensors
        alpha, beta = -g / norm, g * a / (2 * norm ** 3)  # dL/d⟨p, t⟩ and dL/d‖p‖²
        dhid = (q * alpha[:, None]).addcmul_(hg + c, (2 * beta)[:, None])
        bh = hid * beta[:, None]
        hb = bh.sum(0)
        dw2 = t.t() @ (hid * alpha[:, None]) + 2 * (w2 @ (hid.t() @ bh)) + 2 * torch.outer(b2, hb)
        db2 = t.t() @ alpha + 2 * (w2 @ hb) + 2 * b2 * beta.sum()
        return dhid, dw2, db2, None, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the plain form")
    args = p.parse_args()
    torch.manual_seed(0)
    hidden = (D_S + D_T) // 2
    teacher = F.normalize(torch.randn(NODES, D_T), dim=-1)
    projs = [nn.Sequential(nn.Linear(D_S, hidden), nn.ReLU(), nn.Linear(hidden, D_T)) for _ in ROWS]
    feats = [torch.randn(n, D_S, requires_grad=True) for n in ROWS]
    rows = [torch.randint(NODES, (n,)) for n in ROWS]

    def kdbench_form():
        loss = sum(projected_cosine_loss(p, s, teacher, r) for p, s, r in zip(projs, feats, rows))
        loss.backward()
        return loss

    def closed_form():
        loss = sum(ClosedFormMLPCosine.apply(torch.relu(p[0](s)), p[2].weight, p[2].bias, teacher[r], 1e-12).sum()
                   for p, s, r in zip(projs, feats, rows))
        loss.backward()
        return loss

    def plain_side(proj, s, t):
        x = proj(s)
        return (1 - (x * t).sum(-1) / x.norm(dim=-1).clamp_min(1e-12)).sum()

    def compiled_form():
        loss = sum(compiled_side(p, s, teacher[r]) for p, s, r in zip(projs, feats, rows))
        loss.backward()
        return loss

    def value_and_grads(fn):
        for p in projs:
            p.zero_grad()
        for s in feats:
            s.grad = None
        value = fn().detach()
        return value, [x.grad.clone() for p in projs for x in p.parameters()] + [s.grad.clone() for s in feats]

    forms = [kdbench_form, closed_form]
    if args.compile:
        compiled_side = torch.compile(plain_side, dynamic=True)
        t = time.perf_counter()
        compiled_form()
        print(f"torch.compile: first call {time.perf_counter() - t:.1f} s")
        forms.append(compiled_form)
    va, ga = value_and_grads(kdbench_form)
    for fn in forms[1:]:
        vb, gb = value_and_grads(fn)
        print(f"{fn.__name__}: loss {vb.item():.6f} vs {va.item():.6f}; largest relative gradient difference "
              f"{max(((x - y).norm() / x.norm()).item() for x, y in zip(ga, gb)):.1e}")
    times = {f.__name__: [] for f in forms}
    for _ in range(20):
        for fn in forms:
            t = time.perf_counter()
            fn()
            times[fn.__name__].append(time.perf_counter() - t)
    print(", ".join(f"{k} {1000 * statistics.median(v[2:]):.1f} ms per step" for k, v in times.items()),
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
