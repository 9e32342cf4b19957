"""Distillers: gradients go to the student and the method's modules, never the teacher; the registry."""
from types import SimpleNamespace

import pytest
import torch
from helpers import make_batch, make_distiller

import kdbench
from kdbench.backbones import BACKBONES
from kdbench.methods import CORE_METHODS, DISTILLERS
from kdbench.teacher import Teacher
from kdbench.train import RoleConfig, TrainConfig, fit


@pytest.mark.parametrize("backbone", ["bprmf", "lightgcn", "simplex"])
@pytest.mark.parametrize("method", ["fitnet", "freqd", "kd", "de", "ftd", "htd"])
def test_kd_gradients_reach_student_and_own_modules_not_teacher(tiny, backbone, method):
    teacher, student, d = make_distiller(tiny, backbone, method)
    d.precompute()
    d.on_epoch_start(0)
    out = student(*make_batch(tiny, student))
    terms = d.loss(out)
    assert terms and all(t.ndim == 0 and torch.isfinite(t) and t.grad_fn is not None for t in terms.values())
    sum(terms.values()).backward()
    assert student.user_emb.weight.grad is not None and student.user_emb.weight.grad.abs().sum() > 0
    assert student.item_emb.weight.grad.abs().sum() > 0
    own = list(d.parameters())
    # projectors (fitnet, freqd); per side w1, b1, w2, b2 of the expert bank + gate weight and bias (de, htd)
    expected = {"fitnet": 2, "freqd": 8, "de": 12, "htd": 12}.get(method, 0)
    assert len(own) == expected
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own), \
        [n for n, p in d.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in own}
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.user_repr.requires_grad and teacher.user_repr.grad is None


def test_freqd_loss_is_smaller_for_a_student_aligned_with_the_teacher(tiny):
    """With an identity-like projector, a student equal to the teacher has near-zero loss; a shuffled one not."""
    B = BACKBONES.get("bprmf")
    teacher = Teacher(B(tiny, 8, B.Config(init_std=1.0)), tiny)
    losses = {}
    shuffle = torch.randperm(tiny.n_items, generator=torch.Generator().manual_seed(0))
    for name, perm in (("aligned", None), ("shuffled", shuffle)):
        student = B(tiny, 8, B.Config())
        with torch.no_grad():
            student.user_emb.weight.copy_(teacher.user_repr)
            student.item_emb.weight.copy_(teacher.item_repr if perm is None else teacher.item_repr[perm])
        cls = DISTILLERS.get("freqd")
        d = cls(teacher, student, tiny, cls.Config(projector="linear"))
        with torch.no_grad():
            d.proj_user.weight.copy_(torch.eye(8))
            d.proj_item.weight.copy_(torch.eye(8))
        d.precompute()
        losses[name] = d.loss(student(*make_batch(tiny, student, 64)))["kd_feat"].item()
    assert losses["aligned"] < 1e-5 < 0.1 < losses["shuffled"]


def test_fit_trains_and_restores_best(tiny, monkeypatch):
    """Validation scores scripted as 0.1, 0.3, 0.2: fit reports epoch 2 as the best and hands back the weights it
    had then, not the last epoch's."""
    import kdbench.train as train_mod
    real, scores, snapshots = train_mod.evaluate_model, iter([0.1, 0.3, 0.2]), []

    def scripted(model, ds, split="valid", **kw):
        res = real(model, ds, split, **kw)
        if split != "valid":
            return res
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return SimpleNamespace(means={**res.means, "ndcg@20": next(scores)})
    monkeypatch.setattr(train_mod, "evaluate_model", scripted)

    teacher, student, d = make_distiller(tiny, "bprmf", "freqd")
    before = teacher.user_repr.clone()
    res = fit(student, tiny, RoleConfig(dim=4, lr=1e-2, wd=0.0, batch_size=64), TrainConfig(max_epochs=3, patience=3),
              seed=0, distiller=d, weight=0.5)
    assert (res.epochs, res.best_epoch, len(res.history)) == (3, 2, 3)
    assert [h["valid_ndcg@20"] for h in res.history] == [0.1, 0.3, 0.2] and res.best_valid["ndcg@20"] == 0.3
    assert set(res.history[0]["losses"]) == {"base", "kd_feat"}
    restored = student.state_dict()
    assert all(torch.equal(restored[k], snapshots[1][k]) for k in restored)
    assert not all(torch.equal(restored[k], snapshots[2][k]) for k in restored)
    assert torch.equal(teacher.user_repr, before)
    assert res.timing["precompute_s"] >= 0 and res.timing["epoch_s"] > 0


def test_training_flushes_denormals_to_zero(tiny):
    """Denormal floats (the decayed weights of unselected DE/HTD experts) are ~100x slower per operation on x86;
    fit turns on flush-to-zero, so a product below 1.2e-38 comes out as 0 afterwards."""
    tiny_product = lambda: (torch.tensor([1e-30]) * torch.tensor([1e-10])).item()  # noqa: E731
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert tiny_product() > 0  # a denormal, computed the slow way
        m = BACKBONES.get("bprmf")(tiny, 4, BACKBONES.get("bprmf").Config())
        fit(m, tiny, RoleConfig(dim=4, lr=1e-2, wd=0.0, batch_size=64), TrainConfig(max_epochs=1, patience=1),
            seed=0)
        assert tiny_product() == 0.0
    finally:  # later tests see the process as they would without this one
        torch.set_flush_denormal(False)


def test_registry_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match=r"did you mean 'freqd'.*available: .*fitnet"):
        DISTILLERS.get("freq_d")


def test_registry_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        @kdbench.register_distiller("fitnet")
        class Again(kdbench.Distiller):
            pass


def test_list_distillers_pattern():
    assert kdbench.list_distillers("freqd*") == ["freqd", "freqd.nofilter"]
    assert set(CORE_METHODS) <= set(kdbench.list_distillers())


def test_variant_defaults():
    assert DISTILLERS.get("freqd.nofilter").default_params("bprmf")["alpha"] == 0.0
    assert DISTILLERS.get("kd").default_params("lightgcn")["tau"] == 10.0


@pytest.mark.parametrize("teacher_std", [None, 1.0])
def test_fitnet_closed_form_equals_the_projected_mse_with_gradients(tiny, teacher_std):
    """FitNet's linear-MSE closed form must give the value and gradients of Σ w_e ‖W s_e − t_e‖² computed
    directly (which the mlp/cos path still uses)."""
    from helpers import make_batch, make_distiller

    from kdbench.methods._common import batch_entities, template_sum

    teacher, student, d = make_distiller(tiny, "bprmf", "fitnet", teacher_std=teacher_std)
    d.precompute()
    out = student(*make_batch(tiny, student))
    fast = d.loss(out)["kd_feat"]
    users, pos, neg = batch_entities(out)
    su, si = out.all_repr()
    tu, ti = teacher.repr()

    def ell(proj, s, t):
        return ((proj(s) - t) ** 2).sum(-1)

    direct = template_sum(ell(d.proj_user, su[users], tu[users]), ell(d.proj_item, si[pos], ti[pos]),
                          ell(d.proj_item, si[neg], ti[neg]))
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-4)
    params = [student.user_emb.weight, student.item_emb.weight, d.proj_user.weight, d.proj_item.weight]
    for a, b in zip(torch.autograd.grad(fast, params, retain_graph=True), torch.autograd.grad(direct, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fitnet_closed_form_keeps_precision_near_convergence():
    """Near convergence the expansion subtracts numbers of the size of ‖t‖²: still exact to float32 rounding."""
    from kdbench.methods.fitnet import linear_mse_sum
    g = torch.Generator().manual_seed(0)
    W = torch.randn(200, 20, generator=g)
    s = torch.randn(2000, 20, generator=g)
    t = s @ W.t() + 0.01 * torch.randn(2000, 200, generator=g)
    w = torch.rand(2000, generator=g)
    ref = (w.double() * ((s.double() @ W.double().t() - t.double()) ** 2).sum(-1)).sum()
    got = linear_mse_sum(W, s, t, (t.double() ** 2).sum(-1), w)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(ref)) / float(ref) < 1e-5


def test_fitnet_closed_form_is_precise_where_training_runs():
    """With half of ‖t‖² unexplained (as in the trained CiteULike students), Tᵀ D S stays float32: value and
    gradients still agree with the float64 direct sum."""
    from kdbench.methods.fitnet import linear_mse_sum
    g = torch.Generator().manual_seed(1)
    W = torch.randn(400, 20, generator=g, requires_grad=True)
    s = torch.randn(5000, 20, generator=g, requires_grad=True)
    t = s.detach() @ W.detach().t() + 4.5 * torch.randn(5000, 400, generator=g)
    w = torch.full((5000,), 0.5)
    w[:2000] = 1.0
    ref = (w.double() * ((s.double() @ W.double().t() - t.double()) ** 2).sum(-1)).sum()
    assert 0.3 < ref.item() / (w.double() * (t.double() ** 2).sum(-1)).sum().item() < 0.7
    got = linear_mse_sum(W, s, t, (t.double() ** 2).sum(-1), w)
    assert abs(got.item() - ref.item()) / ref.item() < 1e-6
    for a, b in zip(torch.autograd.grad(got, [W, s]), torch.autograd.grad(ref, [W, s])):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-3 * float(b.abs().mean()))
