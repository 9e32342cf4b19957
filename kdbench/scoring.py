"""Scores of listed (user, item) pairs without gathering item rows: ``⟨U[users_b], I[items_bk]⟩`` for [B, K] lists.

Done naively this is a gather of B·K item rows (B·K·d floats through memory: 417 MB for CiteULike's 5,219 users ×
50 candidates of a 400-d teacher), a broadcast product, and in training a scatter of B·K gradient rows back into
the table. As a sampled dense–dense product (SDDMM) at the sparsity pattern of the lists, each score is read
straight from the two tables; the backward is one sparse × dense product per side (the item side through the
pattern's CSR transpose, built with a stable int32 sort, instead of scattering row by row). The same numbers,
2–10x faster on CPU for the candidate lists of KD, RD, CD and RRD (see benchmarks/).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .backbones.base import batch_scores, rows_of
from .graph import spmm

# the patterns are built here and valid by construction
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def _pattern(items: torch.Tensor, n_items: int, values: torch.Tensor) -> torch.Tensor:
    b, k = items.shape
    crow = torch.arange(0, b * k + 1, k, device=items.device)
    return torch.sparse_csr_tensor(crow, items.reshape(-1), values, size=(b, n_items), check_invariants=False)


class _ListScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, u: torch.Tensor, item_repr: torch.Tensor, items: torch.Tensor
                ) -> torch.Tensor:
        b, k = items.shape
        zeros = torch.zeros(b * k, dtype=u.dtype, device=u.device)
        out = torch.sparse.sampled_addmm(_pattern(items, item_repr.shape[0], zeros), u, item_repr.t(), beta=0.0)
        ctx.save_for_backward(u, item_repr, items)
        return out.values().reshape(b, k)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        u, item_repr, items = ctx.saved_tensors
        b, k = items.shape
        g = grad.contiguous().reshape(-1)
        gu = gi = None
        if ctx.needs_input_grad[0]:
            gu = spmm(_pattern(items, item_repr.shape[0], g), item_repr)
        if ctx.needs_input_grad[1]:
            gi = spmm(_transposed_pattern(items, item_repr.shape[0], g), u)
        return gu, gi, None


def _stable_item_order(flat: torch.Tensor, n_items: int) -> torch.Tensor:
    """The permutation that sorts ``flat`` (item ids) stably. Catalogues of up to 65,536 items fit 16-bit keys,
    which NumPy sorts stably by radix sort, linear in the length: 4.4x faster than torch's stable sort on int32
    keys for RRD's 1,700 x 300 lists on CPU (one thread). The permutation is the same."""
    if flat.device.type == "cpu" and n_items <= 1 << 16:
        return torch.from_numpy(np.argsort(flat.numpy().astype(np.uint16), kind="stable"))
    return torch.sort(flat.to(torch.int32), stable=True).indices


def _transposed_pattern(items: torch.Tensor, n_items: int, values: torch.Tensor) -> torch.Tensor:
    """The [n_items, B] CSR transpose of ``_pattern``: entries grouped by item with a stable sort, rows ascending
    within each item. The product with it is 2x faster than torch's COO ``sparse.mm``, which coalesces by sorting
    int64 pairs."""
    b, k = items.shape
    flat = items.reshape(-1)
    order = _stable_item_order(flat, n_items)
    crow = torch.zeros(n_items + 1, dtype=torch.int64, device=items.device)
    torch.cumsum(torch.bincount(flat, minlength=n_items), 0, out=crow[1:])
    return torch.sparse_csr_tensor(crow, torch.div(order, k, rounding_mode="floor"), values[order],
                                   size=(n_items, b), check_invariants=False)


def pair_scores(user_repr: torch.Tensor, item_repr: torch.Tensor, users: torch.Tensor, items: torch.Tensor
                ) -> torch.Tensor:
    """[B, K] scores ⟨user_repr[users_b], item_repr[items_bk]⟩ for ``users`` [B] and ``items`` [B, K];
    differentiable in both tables."""
    b, k = items.shape
    if b == 0 or k == 0:
        return torch.zeros((b, k), dtype=user_repr.dtype, device=user_repr.device)
    # torch's SDDMM rejects rows with more entries than columns (repeated items); on GPUs cuSPARSE expects sorted,
    # duplicate-free rows, which ranked and sampled lists are not, and the gather is cheap there anyway
    if k > item_repr.shape[0] or items.device.type != "cpu":
        return batch_scores(rows_of(user_repr, users), rows_of(item_repr, items))
    return _ListScores.apply(rows_of(user_repr, users), item_repr, items)
