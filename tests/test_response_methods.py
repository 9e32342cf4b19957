"""RD, CD and RRD (spec §4.2): gradients, sampler distributions, loss sanity, determinism, registration."""
import math

import numpy as np
import pytest
import torch
from helpers import make_batch, make_distiller
from scipy.stats import chisquare

from kdbench.backbones import BACKBONES
from kdbench.cli import main
from kdbench.evaluate import full_rank_topk
from kdbench.methods import BUILTIN_METHODS, DISTILLERS
from kdbench.methods._ranking import (
    first_distinct,
    rank_log_weights,
    rank_probs,
    relaxed_ranking_loss,
    sample_ranks,
    sample_uniform_distinct,
)
from kdbench.methods.rrd import clamp_sizes
from kdbench.sampling import PairMembership
from kdbench.teacher import Teacher
from kdbench.train import RoleConfig, TrainConfig, fit

METHODS = ["rd", "cd", "rrd", "rrd.nosample"]


def _train_membership(tiny):
    return PairMembership(torch.from_numpy(tiny.train), tiny.n_items)


def _positions(lists, items):
    """Position of each of ``items`` [n, k] in the row of ``lists`` [n, N] (−1 when absent)."""
    eq = lists[:, None, :] == items[:, :, None]
    return torch.where(eq.any(-1), eq.float().argmax(-1), torch.full_like(items, -1))


def _no_row_duplicates(x):
    s = x.sort(1).values
    return bool((s[:, 1:] != s[:, :-1]).all())


# --- (1) gradients ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["bprmf", "lightgcn", "simplex"])
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_student_not_teacher(tiny, backbone, method):
    extra = {"start_epoch": 0} if method == "rd" else {}          # exercise RD's dynamic weights
    teacher, student, d = make_distiller(tiny, backbone, method, **extra)
    assert list(d.parameters()) == []
    d.precompute()
    d.on_epoch_start(0)
    terms = d.loss(student(*make_batch(tiny, student)))
    assert set(terms) == {"kd_rank"}
    t = terms["kd_rank"]
    assert t.ndim == 0 and torch.isfinite(t) and t.grad_fn is not None
    t.backward()
    assert student.user_emb.weight.grad.abs().sum() > 0
    assert student.item_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.user_repr.requires_grad and not teacher.item_repr.requires_grad


# --- (2) samplers ---------------------------------------------------------------------------------------------------

def _chi2_ok(counts, probs, min_expected=5.0):
    """Chi-square goodness of fit with the tail merged into one cell of expected count ≥ ``min_expected``."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    exp = probs * counts.sum()
    keep = np.flatnonzero(exp >= min_expected)
    cut = keep.max() + 1
    f_obs = np.append(counts[:cut], counts[cut:].sum())
    f_exp = np.append(exp[:cut], exp[cut:].sum())
    if f_exp[-1] < min_expected:
        f_obs, f_exp = np.append(f_obs[:-2], f_obs[-2:].sum()), np.append(f_exp[:-2], f_exp[-2:].sum())
    return chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue


def test_rank_probs_follow_exp_decay():
    p = rank_probs(50, 5.0)
    assert p.dtype == torch.float64 and abs(float(p.sum()) - 1) < 1e-12
    assert math.isclose(float(p[0] / p[10]), math.exp(10 / 5.0), rel_tol=1e-9)
    # exp(−r/T) underflows to 0 for most ranks, the log-weights do not: Gumbel-top-k still draws in rank order
    assert (rank_probs(800, 0.01) == 0).sum() > 700
    r = sample_ranks(rank_log_weights(800, 0.01), 3, 800, torch.Generator().manual_seed(0), replacement=False)
    assert torch.equal(r, torch.arange(800).expand(3, 800))


def test_sample_ranks_with_replacement_matches_distribution():
    p = rank_probs(40, 5.0)
    g = torch.Generator().manual_seed(123)
    r = sample_ranks(p.log(), 4000, 10, g, replacement=True)
    assert r.shape == (4000, 10) and r.min() >= 0 and r.max() < 40
    counts = torch.bincount(r.reshape(-1), minlength=40).numpy()
    assert _chi2_ok(counts, p.numpy()) > 1e-3
    assert counts[0] / counts[10] == pytest.approx(math.exp(2.0), rel=0.1)
    assert _chi2_ok(counts, np.full(40, 1 / 40)) < 1e-6          # the test can tell a flat distribution apart


def test_sample_ranks_without_replacement_is_sequential_sampling():
    p = rank_probs(30, 4.0)
    g = torch.Generator().manual_seed(7)
    r = sample_ranks(p.log(), 20000, 8, g, replacement=False)
    assert r.shape == (20000, 8) and r.min() >= 0 and r.max() < 30
    assert _no_row_duplicates(r)
    first = torch.bincount(r[:, 0], minlength=30).numpy()        # the first draw follows p exactly
    assert _chi2_ok(first, p.numpy()) > 1e-3
    assert first[0] / first[10] == pytest.approx(math.exp(10 / 4.0), rel=0.15)
    # inclusion probabilities of a 2-of-4 draw without replacement, by enumeration
    q = rank_probs(4, 1.0)
    s = sample_ranks(q.log(), 40000, 2, g, replacement=False)
    inc = np.array([[(q[j] + sum(q[i] * q[j] / (1 - q[i]) for i in range(4) if i != j)).item()] for j in range(4)])
    freq = torch.stack([(s == j).any(1).float().mean() for j in range(4)]).numpy()
    assert np.allclose(freq, inc[:, 0], atol=0.01)
    with pytest.raises(ValueError):
        sample_ranks(q.log(), 2, 5, g, replacement=False)


def test_first_distinct_keeps_stream_order():
    stream = torch.tensor([[3, 3, 1, 3, 2, 1], [5, 5, 5, 5, 5, 4], [7, 7, 7, 7, 7, 7]])
    vals, ok = first_distinct(stream, 2)
    assert vals[:2].tolist() == [[3, 1], [5, 4]] and ok.tolist() == [True, True, False]


def test_sample_uniform_distinct_excludes_and_is_uniform(tiny):
    seen = _train_membership(tiny)
    users = torch.arange(tiny.n_users).repeat(50)
    g = torch.Generator().manual_seed(3)
    x = sample_uniform_distinct(users, 20, tiny.n_items, seen, g)
    assert x.shape == (len(users), 20) and _no_row_duplicates(x)
    assert not seen.contains(users[:, None].expand_as(x), x).any()
    u0 = x[users == 0].reshape(-1)                                 # user 0: uniform over its free items
    free = ~seen.contains(torch.zeros(tiny.n_items, dtype=torch.long), torch.arange(tiny.n_items))
    counts = torch.bincount(u0, minlength=tiny.n_items)[free].numpy()
    assert _chi2_ok(counts, np.full(int(free.sum()), 1 / int(free.sum()))) > 1e-3


def test_rrd_samples_come_from_the_right_sets(tiny):
    _, _, d = make_distiller(tiny, "bprmf", "rrd", k=5, l=10, mxk=30, temperature=5.0)
    assert (d.n_top, d.k, d.l) == (30, 5, 10)
    d.precompute()
    seen = _train_membership(tiny)
    users = torch.arange(tiny.n_users)
    assert not seen.contains(users[:, None].expand_as(d.top), d.top).any()      # train masked in the top-N
    inc = torch.zeros(30)
    for epoch in range(40):
        d.on_epoch_start(epoch)
        pos = _positions(d.top, d.interesting)
        assert (pos >= 0).all() and (pos[:, 1:] > pos[:, :-1]).all()          # in the list, teacher order
        un = d.uninteresting
        assert un.shape == (tiny.n_users, 10) and _no_row_duplicates(un)
        assert not seen.contains(users[:, None].expand_as(un), un).any()
        assert (_positions(d.top, un) == -1).all()
        inc += torch.bincount(pos.reshape(-1), minlength=30)
    assert inc[0] > inc[5] > inc[15]                                          # rank-weighted towards the top


def test_rrd_nosample_takes_the_top_k_in_order(tiny):
    _, _, d = make_distiller(tiny, "bprmf", "rrd.nosample", k=5, l=10, mxk=30)
    d.precompute()
    d.on_epoch_start(0)
    assert torch.equal(d.interesting, d.top[:, :5])


def test_rrd_clamps_sizes_to_the_catalogue():
    assert clamp_sizes(10_000, 500, 100, 200) == (500, 100, 200)
    n, k, l = clamp_sizes(48, 500, 100, 200)
    assert n + l <= 48 and k <= n and n >= 1 and l >= 1


def test_cd_positions_follow_min_of_two_draws(tiny):
    _, _, d = make_distiller(tiny, "bprmf", "cd", guide="teacher", n_distill=1, temperature=0.1)
    d.precompute()
    n = d.pool_size
    pos = torch.cat([d.sample_positions() for _ in range(80)]).reshape(-1)
    p = rank_probs(n, n * 0.1).numpy()
    tail = np.cumsum(p[::-1])[::-1]                                # P(X ≥ c)
    expected = tail ** 2 - np.append(tail[1:], 0.0) ** 2           # P(min of two = c)
    counts = np.bincount(pos.numpy(), minlength=n)
    assert _chi2_ok(counts, expected) > 1e-3
    assert _chi2_ok(counts, p) < 1e-6                              # not a single draw


@pytest.mark.parametrize("guide", ["teacher", "student"])
def test_cd_samples_are_distinct_and_from_the_guide_list(tiny, guide):
    teacher, student, d = make_distiller(tiny, "bprmf", "cd", guide=guide, pool_size=20, n_distill=5)
    d.precompute()
    d.on_epoch_start(0)
    if guide == "teacher":
        pool = teacher.topk(20)
    else:
        u, i = student.representations()
        pool = full_rank_topk(u.detach(), i.detach(), torch.arange(tiny.n_users), tiny.csr("train"), 20)
    assert d.samples.shape == (tiny.n_users, 5) and _no_row_duplicates(d.samples)
    assert (_positions(pool, d.samples) >= 0).all()


def test_rd_dynamic_samples_and_weights(tiny):
    _, _, d = make_distiller(tiny, "bprmf", "rd", start_epoch=1, n_dynamic=50)
    d.precompute()
    d.on_epoch_start(0)
    assert not d.dynamic_on
    d.on_epoch_start(1)
    users = torch.arange(tiny.n_users)
    assert d.dynamic.shape == (tiny.n_users, 50)
    assert not _train_membership(tiny).contains(users[:, None].expand_as(d.dynamic), d.dynamic).any()
    assert not _train_membership(tiny).contains(users[:, None].expand_as(d.topk), d.topk).any()
    # weights by hand: n_I = 80, K = 3, n_dyn = 4, μ = 0.1, T = 1
    s_top = torch.tensor([[1.0, 0.0, -1.0]])
    s_dyn = torch.tensor([[2.0, 0.5, -0.5, -2.0]])
    ws = torch.exp(-torch.arange(1, 4.0))
    ws = ws / ws.sum()
    r_hat = torch.floor(79 * torch.tensor([1, 2, 3]) / 4) + 1
    wd = torch.tanh(0.1 * (r_hat - torch.arange(3.0))).clamp(min=0)
    want = ws * wd / (ws * wd).sum()
    d.k = 3
    d.static_w = ws
    assert torch.allclose(d.weights(s_top, s_dyn), want[None])
    assert torch.allclose(d.weights(s_top, None), ws[None])


# --- (3) loss sanity -----------------------------------------------------------------------------------------------

def test_relaxed_ranking_loss_formula_and_order():
    g = torch.Generator().manual_seed(0)
    s, s2 = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    brute = 0.0
    for b in range(3):
        for k in range(5):
            brute -= s[b, k] - torch.log(s[b, k:].exp().sum() + s2[b].exp().sum())
    assert torch.allclose(relaxed_ranking_loss(s, s2), brute)
    ordered = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    unint = torch.tensor([[0.0, -1.0]])
    assert relaxed_ranking_loss(ordered, unint) < relaxed_ranking_loss(ordered.flip(-1), unint)
    assert relaxed_ranking_loss(ordered, unint) < relaxed_ranking_loss(ordered - 6, unint)   # below uninteresting
    big = relaxed_ranking_loss(ordered * 1000, unint * 1000)
    assert torch.isfinite(big)                                     # no exp overflow
    # scores 2000 apart underflow even float64's e^{x − m}: the logcumsumexp fallback gives the exact suffix terms
    far = torch.tensor([[0.0, -2000.0]], requires_grad=True)
    below = torch.tensor([[-3000.0]])
    loss = relaxed_ranking_loss(far, below)
    # suffix terms: log(e^0 + e^-2000 + e^-3000) − 0 ≈ 0 and log(e^-2000 + e^-3000) + 2000 ≈ 0
    assert torch.isfinite(loss) and abs(loss.item()) < 1e-3
    grad, = torch.autograd.grad(loss, far)
    assert torch.isfinite(grad).all()


def _aligned_vs(tiny, method, make_other, **params):
    """Loss of a student equal to the teacher (scaled) vs one transformed by ``make_other``."""
    B = BACKBONES.get("bprmf")
    torch.manual_seed(0)
    teacher = Teacher(B(tiny, 8, B.Config(init_std=1.0)), tiny)
    cls = DISTILLERS.get(method)
    losses = {}
    for name in ("aligned", "other"):
        student = B(tiny, 8, B.Config())
        u, i = teacher.user_repr.clone(), teacher.item_repr.clone()
        if name == "other":
            u, i = make_other(u, i)
        with torch.no_grad():
            student.user_emb.weight.copy_(u)
            student.item_emb.weight.copy_(i)
        torch.manual_seed(1)
        d = cls(teacher, student, tiny, cls.Config(**{**cls.default_params("bprmf"), **params}))
        d.precompute()
        d.on_epoch_start(0)
        users = torch.arange(tiny.n_users)
        out = student(users, torch.zeros_like(users), torch.zeros(tiny.n_users, 1, dtype=torch.long))
        losses[name] = d.loss(out)["kd_rank"].item()
    return losses


def _shuffle_items(u, i):
    return u, i[torch.randperm(len(i), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("method", ["rrd", "rrd.nosample"])
def test_rrd_loss_prefers_the_teacher_order(tiny, method):
    params = dict(k=10, l=10, mxk=30)
    shuffled = _aligned_vs(tiny, method, _shuffle_items, **params)
    assert shuffled["aligned"] < shuffled["other"]
    reversed_ = _aligned_vs(tiny, method, lambda u, i: (-u, i), **params)     # every ranking reversed
    assert reversed_["aligned"] < 0.5 * reversed_["other"]


def test_rd_loss_prefers_high_scores_on_the_teacher_top_k(tiny):
    losses = _aligned_vs(tiny, "rd", lambda u, i: (-u, i), start_epoch=0)
    assert losses["aligned"] < losses["other"]


def test_cd_loss_is_minimal_at_the_teacher_soft_labels(tiny):
    # y = σ(ŷ^T / t1), t1 = 2: the BCE is minimal when ŷ^S = ŷ^T / 2 (student users = teacher users / 2)
    halved = _aligned_vs(tiny, "cd", lambda u, i: (u / 2, i), guide="teacher", n_distill=5)
    shuffled = _aligned_vs(tiny, "cd", lambda u, i: _shuffle_items(u / 2, i), guide="teacher", n_distill=5)
    assert halved["other"] < halved["aligned"]          # the teacher itself is too confident
    assert halved["other"] < shuffled["other"]


# --- (4) determinism -----------------------------------------------------------------------------------------------

def _samples(tiny, method, seed):
    _, _, d = make_distiller(tiny, "bprmf", method, seed=seed, **({"start_epoch": 0} if method == "rd" else {}))
    d.precompute()
    d.on_epoch_start(0)
    d.on_epoch_start(1)
    return {"rd": lambda: [d.dynamic], "cd": lambda: [d.samples],
            "rrd": lambda: [d.interesting, d.uninteresting]}[method]()


@pytest.mark.parametrize("method", ["rd", "cd", "rrd"])
def test_same_seed_same_samples(tiny, method):
    a, b, c = _samples(tiny, method, 0), _samples(tiny, method, 0), _samples(tiny, method, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


# --- (5) registration and the harness ---------------------------------------------------------------------------

def test_registered_and_listed(capsys):
    assert {"rd", "cd", "rrd"} <= set(BUILTIN_METHODS)
    assert main(["list", "methods"]) == 0                       # what `python -m kdbench list methods` runs
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert {"rd", "cd", "rrd", "rrd.nosample"} <= names
    assert DISTILLERS.get("rrd").default_params("lightgcn")["k"] == 50
    assert DISTILLERS.get("cd").default_params("simplex")["pool_size"] == 300
    assert DISTILLERS.get("rrd.nosample").default_params("bprmf")["sample_interesting"] is False


@pytest.mark.parametrize("method", ["rd", "cd", "rrd"])
def test_fit_runs_with_the_harness(tiny, method):
    extra = {"start_epoch": 1} if method == "rd" else {}
    _, student, d = make_distiller(tiny, "bprmf", method, **extra)
    res = fit(student, tiny, RoleConfig(dim=4, lr=1e-2, wd=0.0, batch_size=128), TrainConfig(max_epochs=2, patience=2),
              seed=0, distiller=d, weight=d.cfg.weight)
    assert res.epochs == 2 and set(res.history[0]["losses"]) == {"base", "kd_rank"}


def test_pair_scores_equal_the_gathered_dot_products_with_gradients():
    """The SDDMM used for teacher scores returns ⟨u, i⟩ per listed pair, in list order, duplicates included."""
    from kdbench.scoring import pair_scores
    g = torch.Generator().manual_seed(0)
    u, it = torch.randn(6, 8, generator=g), torch.randn(30, 8, generator=g)
    users = torch.tensor([0, 5, 5, 2])
    items = torch.tensor([[3, 1, 29], [0, 0, 7], [12, 3, 3], [29, 28, 1]])
    expect = (u[users][:, None, :] * it[items]).sum(-1)
    torch.testing.assert_close(pair_scores(u, it, users, items), expect)
    assert pair_scores(u, it, users[:0], items[:0]).shape == (0, 3)
    u.requires_grad_(True)
    it.requires_grad_(True)
    long = torch.randint(30, (4, 40), generator=g)      # more entries per row than items: the gather path
    for lists in (items, long):
        got = pair_scores(u, it, users, lists)
        ref = (u[users][:, None, :] * it[lists]).sum(-1)
        torch.testing.assert_close(got, ref)
        wl = torch.randn(lists.shape, generator=g)
        for a, b in zip(torch.autograd.grad((got * wl).sum(), (u, it)), torch.autograd.grad((ref * wl).sum(), (u, it))):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n_items", [30, 70_000])  # 16-bit radix-sort keys, and a catalogue too large for them
def test_pair_scores_item_gradient_on_small_and_large_catalogues(n_items):
    from kdbench.scoring import _stable_item_order, pair_scores
    g = torch.Generator().manual_seed(1)
    flat = torch.randint(n_items, (500,), generator=g)
    flat[:50] = n_items - 1  # the largest id, repeated: ties keep their original order
    torch.testing.assert_close(_stable_item_order(flat, n_items), torch.sort(flat, stable=True).indices,
                               check_dtype=False)
    u = torch.randn(6, 4, generator=g, requires_grad=True)
    it = torch.randn(n_items, 4, generator=g, requires_grad=True)
    users, items = torch.tensor([0, 5, 2]), flat[:60].reshape(3, 20)
    got, ref = pair_scores(u, it, users, items), (u[users][:, None, :] * it[items]).sum(-1)
    w = torch.randn(items.shape, generator=g)
    for a, b in zip(torch.autograd.grad((got * w).sum(), (u, it)), torch.autograd.grad((ref * w).sum(), (u, it))):
        torch.testing.assert_close(a, b)
