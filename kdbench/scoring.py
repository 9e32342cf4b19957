"""Scores of given (user, item) pairs without gathering item rows.

``⟨U[users_b], I[items_bk]⟩`` for a [B, K] item list is, done naively, a gather of B·K item rows (B·K·d floats
through memory: 417 MB for CiteULike's 5,219 users × 50 candidates of a 400-d teacher) and a broadcast product.
As a sampled dense–dense product (SDDMM) at the sparsity pattern of the list, each score is read straight from
the two tables: on CiteULike's KD candidates it is ~10x faster. Used for frozen-teacher scores (no autograd).
"""
from __future__ import annotations

import warnings

import torch

# the pattern is built here and valid by construction
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def pair_scores(user_repr: torch.Tensor, item_repr: torch.Tensor, users: torch.Tensor, items: torch.Tensor
                ) -> torch.Tensor:
    """[B, K] scores ⟨user_repr[users_b], item_repr[items_bk]⟩ for ``users`` [B] and ``items`` [B, K] (no grad)."""
    b, k = items.shape
    if b == 0 or k == 0:
        return torch.zeros((b, k), dtype=user_repr.dtype, device=user_repr.device)
    crow = torch.arange(0, b * k + 1, k, device=items.device)
    pattern = torch.sparse_csr_tensor(crow, items.reshape(-1), torch.zeros(b * k, dtype=user_repr.dtype,
                                                                             device=user_repr.device),
                                      size=(b, item_repr.shape[0]), check_invariants=False)
    with torch.no_grad():
        out = torch.sparse.sampled_addmm(pattern, user_repr[users], item_repr.t(), beta=0.0)
    return out.values().reshape(b, k)
