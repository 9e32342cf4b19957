"""Full-ranking metrics on hand-computed cases, and masking."""
import math

import numpy as np
import pytest
import torch

from kdbench.datasets import Dataset
from kdbench.evaluate import evaluate, full_rank_topk


def _ds(train, valid, test, n_users, n_items):
    arr = lambda p: np.asarray(p, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return Dataset("hand", n_users, n_items, arr(train), arr(valid), arr(test), np.arange(n_users),
                   np.arange(n_items))


def test_recall_ndcg_hand_computed():
    # one user, 60 items; scores rank item i at position i (item 0 best) once the user vector is 1-d
    n = 60
    item = torch.tensor([[float(n - i)] for i in range(n)])
    user = torch.tensor([[1.0]])
    # train item 1 is masked, so the ranking is 0, 2, 3, 4, ...; targets: items 0 (rank 1) and 4 (rank 4)
    ds = _ds([[0, 1]], [], [[0, 0], [0, 4]], 1, n)
    res = evaluate(user, item, ds, "test")
    m = res.means
    assert res.topk[0, :4].tolist() == [0, 2, 3, 4]
    assert m["recall@10"] == pytest.approx(1.0)
    dcg = 1 / math.log2(2) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["ndcg@50"] == pytest.approx(dcg / idcg)


def test_idcg_uses_min_of_targets_and_k():
    # 30 targets, all ranked at the top: NDCG@10 = NDCG@20 = 1 and Recall@10 = 10/30 (denominator |G|)
    n = 100
    item = torch.tensor([[float(n - i)] for i in range(n)])
    ds = _ds([[0, 99]], [], [[0, i] for i in range(30)], 1, n)
    m = evaluate(torch.ones(1, 1), item, ds, "test").means
    assert m["ndcg@10"] == pytest.approx(1.0) and m["ndcg@20"] == pytest.approx(1.0)
    assert m["recall@10"] == pytest.approx(10 / 30) and m["recall@50"] == pytest.approx(1.0)
    # a target at rank 50 exactly counts for @50 but not @20
    ds2 = _ds([[0, 99]], [], [[0, 49]], 1, n)
    m2 = evaluate(torch.ones(1, 1), item, ds2, "test").means
    assert m2["recall@20"] == 0 and m2["recall@50"] == 1 and m2["ndcg@50"] == pytest.approx(1 / math.log2(51))


def test_users_without_targets_are_not_averaged():
    n = 10
    item = torch.tensor([[float(n - i)] for i in range(n)])
    ds = _ds([[0, 5], [1, 5]], [], [[0, 0]], 2, n)
    res = evaluate(torch.ones(2, 1), item, ds, "test")
    assert res.users.tolist() == [0]
    assert res.means["recall@10"] == 1.0


def test_masking_never_returns_train_or_valid_items(tiny):
    g = torch.Generator().manual_seed(0)
    u, i = torch.randn(tiny.n_users, 8, generator=g), torch.randn(tiny.n_items, 8, generator=g)
    # (a user with fewer than 50 unmasked items gets masked ones at the tail: only the unmasked head is checked)
    for split, mask in (("test", "train+valid"), ("valid", "train")):
        res = evaluate(u, i, tiny, split)
        m = tiny.csr(mask)
        for row, user in enumerate(res.users):
            masked = set(m.indices[m.indptr[user]:m.indptr[user + 1]].tolist())
            head = res.topk[row][: tiny.n_items - len(masked)]
            assert not set(head.tolist()) & masked


def test_chunking_does_not_change_topk(tiny):
    g = torch.Generator().manual_seed(1)
    u, i = torch.randn(tiny.n_users, 4, generator=g), torch.randn(tiny.n_items, 4, generator=g)
    users = torch.arange(tiny.n_users)
    a = full_rank_topk(u, i, users, tiny.csr("train"), 20, chunk_bytes=1 << 30)
    b = full_rank_topk(u, i, users, tiny.csr("train"), 20, chunk_bytes=4 * tiny.n_items * 7)  # 7 users a chunk
    assert torch.equal(a, b)
