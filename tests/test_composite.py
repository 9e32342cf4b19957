"""Composite distillers (``a+b``, e.g. DE-RRD): each part's terms at its own weight, its own modules trained."""
import pytest
import torch
from helpers import make_batch, make_distiller

from kdbench.cli import main
from kdbench.methods import DISTILLERS


def test_composite_terms_are_the_parts_terms_times_their_weights(tiny):
    teacher, student, both = make_distiller(tiny, "bprmf", "fitnet+kd", fitnet_weight=0.3, kd_weight=2.0)
    _, _, fit = make_distiller(tiny, "bprmf", "fitnet")   # same seed: the same projector initialisation
    _, _, kd = make_distiller(tiny, "bprmf", "kd")
    for d in (both, fit, kd):
        d.precompute()
        d.on_epoch_start(0)
    out = student(*make_batch(tiny, student))
    terms = both.loss(out)
    assert set(terms) == {"fitnet:kd_feat", "kd:kd_rank"}
    torch.testing.assert_close(terms["fitnet:kd_feat"], 0.3 * fit.loss(out)["kd_feat"])
    torch.testing.assert_close(terms["kd:kd_rank"], 2.0 * kd.loss(out)["kd_rank"])
    assert both.cfg.weight == 1.0


def test_de_rrd_trains_both_parts_and_never_the_teacher(tiny):
    teacher, student, d = make_distiller(tiny, "lightgcn", "de+rrd", de_num_experts=3)
    d.precompute()
    d.on_epoch_start(0)
    loss = sum(d.loss(student(*make_batch(tiny, student))).values())
    loss.backward()
    experts = [p for p in d.members[0].parameters()]
    assert experts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in experts)
    assert student.user_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_parts_keep_their_backbone_defaults_and_unknown_parts_fail():
    params = DISTILLERS.get("fitnet+kd").default_params("lightgcn")
    assert params["kd_tau"] == DISTILLERS.get("kd").default_params("lightgcn")["tau"] == 10.0
    assert "de+rrd" in DISTILLERS.list()
    with pytest.raises(KeyError, match="unknown distiller 'kd\\+nosuch'"):
        DISTILLERS.get("kd+nosuch")


def test_composite_end_to_end_with_a_part_override(tmp_path, tiny_folder):
    out = tmp_path / "out"
    assert main(["run", "--datasets", str(tiny_folder), "--methods", "student,fitnet+kd", "--out", str(out),
                 "--cache-dir", str(tmp_path / "c"), "--set", "train.max_epochs=2", "--set",
                 "fitnet+kd.kd_weight=0.5", "--quiet"]) == 0
    import json
    rec = json.loads(next((out / "cells").glob("*fitnet+kd*.json")).read_text())
    assert rec["status"] == "ok" and rec["config"]["method"]["params"]["kd_weight"] == 0.5
    assert set(rec["history"][0]["losses"]) == {"base", "fitnet:kd_feat", "kd:kd_rank"}
