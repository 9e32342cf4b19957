"""Backbones against their formulas, the negative sampler, and the teacher cache."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.backbones import BACKBONES
from kdbench.graph import normalized_adjacency
from kdbench.sampling import PairMembership, sample_excluding
from kdbench.teacher import TeacherCache
from kdbench.train import RoleConfig, TrainConfig, fit


def test_lightgcn_matches_dense_propagation(tiny):
    torch.manual_seed(0)  # model init and the random weights/negatives below
    B = BACKBONES.get("lightgcn")
    m = B(tiny, 6, B.Config(n_layers=3))
    a = torch.tensor(normalized_adjacency(tiny).toarray())
    x = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach()
    layers = [x]
    for _ in range(3):
        layers.append(a @ layers[-1])
    expect = torch.stack(layers).mean(0)
    u, i = m.representations()
    torch.testing.assert_close(torch.cat([u, i]).detach(), expect, atol=1e-5, rtol=1e-4)
    # the fused backward (the same propagation applied to the gradient) against autograd through the dense layers
    wu, wi = torch.randn_like(u), torch.randn_like(i)
    g_user, g_item = torch.autograd.grad((u * wu).sum() + (i * wi).sum(), [m.user_emb.weight, m.item_emb.weight])
    xd = x.clone().requires_grad_(True)
    layers = [xd]
    for _ in range(3):
        layers.append(a @ layers[-1])
    g_dense, = torch.autograd.grad((torch.stack(layers).mean(0) * torch.cat([wu, wi])).sum(), xd)
    torch.testing.assert_close(torch.cat([g_user, g_item]), g_dense, atol=1e-5, rtol=1e-4)


def test_simplex_user_is_gated_history_mean(tiny):
    torch.manual_seed(0)  # model init and the random weights/negatives below
    B = BACKBONES.get("simplex")
    cfg = dataclasses.replace(B.Config(), max_len=3, gamma=0.3, num_ns=4)
    m = B(tiny, 5, cfg).eval()
    u_all, i_all = m.representations()
    r = tiny.csr("train")
    for u in (0, 7):
        hist = r.indices[r.indptr[u]:r.indptr[u + 1]][-3:]  # the last max_len training items
        h = m.item_emb.weight[torch.from_numpy(hist.astype(np.int64))].mean(0)
        p = 0.3 * m.user_emb.weight[u] + 0.7 * m.w_v(h)
        torch.testing.assert_close(u_all[u], F.normalize(p, dim=0), atol=1e-5, rtol=1e-4)
    out = m(torch.tensor([0, 7]), torch.tensor([1, 2]), torch.randint(tiny.n_items, (2, 4)))
    torch.testing.assert_close(out.user_repr, u_all[[0, 7]])
    assert torch.allclose(i_all.norm(dim=1), torch.ones(tiny.n_items))


def test_bpr_loss_value():
    from kdbench.backbones.base import BackboneOutput
    B = BACKBONES.get("bprmf")
    out = BackboneOutput(*(torch.zeros(2),) * 4, pos_scores=torch.tensor([2.0, 0.0]),
                         neg_scores=torch.tensor([[0.0], [1.0]]))
    m = B.__new__(B)
    m.cfg = B.Config()
    expect = -np.log(1 / (1 + np.exp(-2.0))) - np.log(1 / (1 + np.exp(1.0)))
    assert float(m.loss(out)) == pytest.approx(expect, rel=1e-6)


def test_negative_sampler_excludes_training_items(tiny):
    pairs = torch.from_numpy(tiny.train)
    seen = PairMembership(pairs, tiny.n_items)
    users = pairs[:, 0].repeat(5)
    neg = sample_excluding(users, 3, tiny.n_items, seen, torch.Generator().manual_seed(0))
    assert not seen.contains(users[:, None].expand_as(neg), neg).any()
    assert seen.contains(pairs[:, 0], pairs[:, 1]).all()
    # roughly uniform over the allowed items
    counts = np.bincount(neg.flatten().numpy(), minlength=tiny.n_items)
    assert (counts > 0).mean() > 0.95


def test_teacher_cache_hit_and_miss(tiny, tmp_path):
    cache = TeacherCache(tmp_path)
    B = BACKBONES.get("bprmf")
    spec = {"dataset": tiny.fingerprint, "dim": 8, "seed": 0}
    key = cache.key(spec)
    assert key == cache.key(dict(reversed(list(spec.items()))))  # order independent
    assert key != cache.key({**spec, "dim": 16}) and key != cache.key({**spec, "seed": 1})
    m = B(tiny, 8, B.Config())
    assert cache.load(key, m) is None
    fit(m, tiny, RoleConfig(dim=8, lr=1e-2, wd=0, batch_size=128), TrainConfig(max_epochs=2, patience=2), seed=0)
    cache.save(key, m, {"metrics": {"ndcg@20": 0.5}})
    fresh = B(tiny, 8, B.Config())
    assert cache.load(key, fresh) == {"metrics": {"ndcg@20": 0.5}}
    torch.testing.assert_close(fresh.user_emb.weight, m.user_emb.weight)
    assert not list(cache.path(key).parent.glob(".*"))  # no temp directories left behind


def test_plugin_backbone_source_is_part_of_the_teacher_key(tiny, tmp_path, monkeypatch):
    """kdbench's own training code is versioned by the cache; a plugin backbone's file must be too, or an edited
    plugin would reuse the teacher its old code trained. Built-in backbones keep their keys (no extra field)."""
    from kdbench import checkpoint
    from kdbench.config import resolve_cell
    from kdbench.grid import teacher_spec

    src = tmp_path / "kdbench_test_plugin_bb.py"
    src.write_text("from kdbench.backbones import BACKBONES\nfrom kdbench.backbones.bprmf import BPRMF\n\n"
                   "@BACKBONES.register('plugin_bb_key_test')\nclass PluginBB(BPRMF):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))  # the registration ends with the test
    __import__("kdbench_test_plugin_bb")
    cpu = torch.device("cpu")

    def spec(backbone):
        return teacher_spec(resolve_cell(tiny.name, backbone, "student", 0, "quick", {}), tiny, cpu)

    assert "backbone_code" not in spec("bprmf")
    before = spec("plugin_bb_key_test")
    assert before["backbone_code"] == checkpoint.code_digest(src.read_bytes()).hex()[:16]
    src.write_text(src.read_text() + "# a comment\n")
    checkpoint._file_hash.cache_clear()  # as a new process would read it
    assert spec("plugin_bb_key_test") == before  # documentation is not code
    src.write_text(src.read_text() + "X = 1\n")
    checkpoint._file_hash.cache_clear()
    after = spec("plugin_bb_key_test")
    assert after["backbone_code"] != before["backbone_code"]
    assert TeacherCache.key(after) != TeacherCache.key(before)
    # a backbone defined where there is no file (a notebook cell, exec) still gets a key, not a crash
    exec("from kdbench.backbones import BACKBONES\nfrom kdbench.backbones.bprmf import BPRMF\n"
         "@BACKBONES.register('fileless_bb_key_test')\nclass FilelessBB(BPRMF):\n    pass\n", {})
    assert len(spec("fileless_bb_key_test")["backbone_code"]) == 16


def test_dense_and_gathered_scores_agree_with_gradients():
    """scores_at's GEMM-then-gather path (long lists) must equal the row-gather path, gradients included."""
    from kdbench.backbones.base import batch_scores, scores_at
    g = torch.Generator().manual_seed(0)
    u = torch.randn(5, 4, generator=g, requires_grad=True)
    items = torch.randn(40, 4, generator=g, requires_grad=True)
    idx = torch.randint(40, (5, 30), generator=g)   # 30·32 ≥ 40: the dense path
    dense = scores_at(u, items, idx)
    gathered = batch_scores(u, items[idx])
    torch.testing.assert_close(dense, gathered)
    w = torch.randn(5, 30, generator=g)
    gd = torch.autograd.grad((dense * w).sum(), (u, items))
    gg = torch.autograd.grad((gathered * w).sum(), (u, items))
    for a, b in zip(gd, gg):
        torch.testing.assert_close(a, b)


def test_rows_of_equals_indexing_with_repeated_ids():
    from kdbench.backbones.base import rows_of
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 4, generator=g, requires_grad=True)
    idx = torch.tensor([[3, 3, 0], [8, 3, 1]])   # repeated ids: their gradients must add up
    w = torch.randn(2, 3, 4, generator=g)
    got = rows_of(table, idx)
    torch.testing.assert_close(got, table[idx])
    g_got, = torch.autograd.grad((got * w).sum(), table)
    g_want, = torch.autograd.grad((table[idx] * w).sum(), table)
    torch.testing.assert_close(g_got, g_want)
    assert g_got[[2, 4, 5, 6, 7]].abs().sum() == 0 and g_got[3].abs().sum() > 0
