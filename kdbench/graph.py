"""The normalised user–item graph Â = D^{-1/2} A D^{-1/2} of the training pairs, as sparse CSR (never dense N×N).

Nodes are users 0..n_U-1 followed by items n_U..n_U+n_I-1. Shared by LightGCN propagation and FreqD's filters.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .datasets import Dataset


def normalized_adjacency(ds: Dataset) -> sp.csr_matrix:
    """Â of the training graph (no self-loops; degree-0 rows stay 0). Memoised on the dataset."""
    cache = ds.__dict__.setdefault("_adj", {})
    if "norm" not in cache:
        r = ds.csr("train")
        a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float64)
        deg = np.asarray(a.sum(axis=1)).ravel()
        with np.errstate(divide="ignore"):
            dinv = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0)
        norm = sp.diags(dinv) @ a @ sp.diags(dinv)
        cache["norm"] = norm.tocsr().astype(np.float32)
    return cache["norm"]


def to_torch_csr(m: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    m = m.tocsr()
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                   torch.from_numpy(m.indices.astype(np.int64)),
                                   torch.from_numpy(m.data.astype(np.float32)), size=m.shape, device=device)


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A: the backward is the same product, so no transpose is ever built."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a = a
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.a @ grad


def symmetric_spmm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _SymmetricSpMM.apply(a, x)


def csr_rows(a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The sub-matrix A[rows, :] of a torch CSR tensor, built with vectorised index arithmetic."""
    crow, col, val = a.crow_indices(), a.col_indices(), a.values()
    starts, ends = crow[rows], crow[rows + 1]
    lens = ends - starts
    new_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(lens, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    offsets = torch.repeat_interleave(starts - new_crow[:-1], lens, output_size=total)
    idx = offsets + torch.arange(total, device=crow.device)
    return torch.sparse_csr_tensor(new_crow, col[idx], val[idx], size=(len(rows), a.shape[1]))
