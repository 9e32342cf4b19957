"""The normalised user–item graph Â = D^{-1/2} A D^{-1/2} of the training pairs, as sparse CSR (never dense N×N).

Nodes are users 0..n_U-1 followed by items n_U..n_U+n_I-1. Shared by LightGCN propagation and FreqD's filters.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from .datasets import Dataset


# torch warns once that sparse CSR is "beta"; the products used here are covered by kdbench's own tests
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


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
                                   torch.from_numpy(m.data.astype(np.float32)), size=m.shape, device=device,
                                   check_invariants=False)


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


class _RowBlockSpMM(torch.autograd.Function):
    """y = A[rows, :] x, given the block's nnz as (row, col, val); the backward scatters into x's rows with
    ``index_add_`` instead of transposing a sparse matrix."""

    @staticmethod
    def forward(ctx, block: torch.Tensor, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(row, col, val)
        ctx.n = x.shape[0]
        return block @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        row, col, val = ctx.saved_tensors
        gx = torch.zeros(ctx.n, grad.shape[1], dtype=grad.dtype, device=grad.device)
        gx.index_add_(0, col, grad[row] * val[:, None])
        return None, None, None, None, gx


def row_block_spmm(a: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, full_above: float = 0.25
                   ) -> torch.Tensor:
    """A[rows, :] @ x for a symmetric torch CSR ``a``, built with vectorised index arithmetic (no Python loop).

    When the block holds more than ``full_above`` of A's non-zeros (small graphs, where a batch touches most
    nodes), the full product (A x)[rows] is cheaper than gathering the block and scattering its gradient.
    """
    crow, col, val = a.crow_indices(), a.col_indices(), a.values()
    starts, lens = crow[rows], crow[rows + 1] - crow[rows]
    new_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(lens, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    if total > full_above * len(col):
        return symmetric_spmm(a, x)[rows]
    idx = torch.repeat_interleave(starts - new_crow[:-1], lens, output_size=total) + \
        torch.arange(total, device=crow.device)
    bcol, bval = col[idx], val[idx]
    block = torch.sparse_csr_tensor(new_crow, bcol, bval, size=(len(rows), a.shape[1]), check_invariants=False)
    brow = torch.repeat_interleave(torch.arange(len(rows), device=crow.device), lens, output_size=total)
    return _RowBlockSpMM.apply(block, brow, bcol, bval, x)
