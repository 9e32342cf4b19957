"""Mid-training checkpoints: a run stopped after some epochs and resumed ends exactly where an uninterrupted run
ends (weights, history, early stopping), in the training loop and through ``kdbench run`` killed with SIGKILL."""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_distiller

import kdbench
from kdbench.checkpoint import (
    NOT_TRAINING_CODE,
    TrainingCheckpoint,
    code_digest,
    generator_states,
    source_version,
    training_files,
)
from kdbench.train import RoleConfig, TrainConfig, fit

TRAIN = TrainConfig(max_epochs=6, patience=100, eval_every=1)


class _Stopped(Exception):
    pass


def _run(tiny, backbone, method, checkpoint=None, stop_at=None):
    _, student, distiller = make_distiller(tiny, backbone, method)
    if stop_at is not None:  # the process "dies" as epoch ``stop_at`` begins
        start = distiller.on_epoch_start

        def on_epoch_start(epoch):
            if epoch == stop_at:
                raise _Stopped
            start(epoch)
        distiller.on_epoch_start = on_epoch_start
    res = fit(student, tiny, RoleConfig(dim=4, lr=1e-2, batch_size=64), TRAIN, 0, distiller, weight=0.5,
              checkpoint=checkpoint)
    return res, student, distiller


# de+rrd: expert parameters, two sampling generators and an annealed temperature; cd: a per-epoch student ranking;
# SimpleX: dropout draws from the global RNG
@pytest.mark.parametrize("backbone,method", [("bprmf", "de+rrd"), ("simplex", "cd")])
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tiny, tmp_path, backbone, method):
    ref, ref_student, ref_distiller = _run(tiny, backbone, method)

    ckpt = TrainingCheckpoint(tmp_path / "c.pt", "cell-1", every_s=0)
    with pytest.raises(_Stopped):
        _run(tiny, backbone, method, ckpt, stop_at=3)
    assert torch.load(ckpt.path, weights_only=True)["run"]["next_epoch"] == 3

    res, student, distiller = _run(tiny, backbone, method, ckpt)
    assert res.timing["resumed_at_epochs"] == [3] and "resumed_at_epochs" not in ref.timing
    assert (res.best_epoch, res.epochs) == (ref.best_epoch, ref.epochs)
    assert [h["losses"] for h in res.history] == [h["losses"] for h in ref.history]
    assert len(res.history) == TRAIN.max_epochs
    for mine, ref_module in ((student, ref_student), (distiller, ref_distiller)):
        a, b = mine.state_dict(), ref_module.state_dict()
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    if method == "cd":  # no parameters: what it carries across epochs is its per-epoch sample of the ranking
        assert distiller.samples is not None and torch.equal(distiller.samples, ref_distiller.samples)
    gens = generator_states(distiller)
    assert gens and gens.keys() == generator_states(ref_distiller).keys()
    assert all(torch.equal(v, generator_states(ref_distiller)[k]) for k, v in gens.items())


def test_a_checkpoint_of_another_identity_or_a_damaged_one_is_not_resumed(tiny, tmp_path):
    ckpt = TrainingCheckpoint(tmp_path / "c.pt", "cell-1", every_s=0)
    with pytest.raises(_Stopped):
        _run(tiny, "bprmf", "fitnet", ckpt, stop_at=2)
    assert ckpt.load(torch.device("cpu"))["run"]["next_epoch"] == 2 == ckpt.saved_epoch()
    assert TrainingCheckpoint(ckpt.path, "cell-2").load(torch.device("cpu")) is None
    res, *_ = _run(tiny, "bprmf", "fitnet", TrainingCheckpoint(ckpt.path, "cell-2", every_s=10 ** 6))
    assert "resumed_at_epochs" not in res.timing and res.epochs == TRAIN.max_epochs

    ckpt.path.write_bytes(ckpt.path.read_bytes()[:100])  # a write torn by a crash outside os.replace
    assert ckpt.load(torch.device("cpu")) is None


def test_checkpoints_are_versioned_by_the_code_that_trains_not_by_tables_or_cli(tmp_path):
    def package(name, edit=None, entries=()):
        """Copies of the kdbench package (their own paths, so that no file hash is reused), edited by ``edit``:
        the version of a teacher's checkpoint (no entries) and of cells whose method lives in ``entries``."""
        root = tmp_path / name
        shutil.copytree(kdbench.__path__[0], root, ignore=shutil.ignore_patterns("__pycache__"))
        if edit:
            edit(root)
        def version(entry):  # what source_version hashes for a method defined in ``entry`` of this copy
            return hashlib.sha256(b"".join(f.encode() + code_digest((root / f).read_bytes())
                                           for f in training_files(root, {entry}))).hexdigest()
        return {e: version(e) for e in entries}, source_version(package=root)

    def append(rel, text="\n_EDITED = 1\n"):
        return lambda root: (root / rel).write_text((root / rel).read_text() + text)

    methods = ("methods/freqd.py", "methods/de.py", "methods/htd.py")
    base, teacher = package("base", entries=methods)
    for i, rel in enumerate(sorted(NOT_TRAINING_CODE)):  # the CLI and the tables: checkpoints stay resumable
        assert package(f"free{i}", append(rel), methods) == (base, teacher), rel
    for i, rel in enumerate(["train.py", "backbones/lightgcn.py", "grid.py", "checkpoint.py"]):
        assert package(f"train{i}", append(rel))[1] != teacher, rel
        assert package(f"comment{i}", append(rel, "\n# a comment\n"))[1] == teacher, rel  # not code
    # a method module versions the cells of the methods that import it, and nothing else
    for i, (rel, changed) in enumerate([("methods/de.py", {"methods/de.py"}),
                                        ("methods/_experts.py", {"methods/de.py", "methods/htd.py"}),
                                        ("methods/ftd.py", {"methods/htd.py"}),
                                        ("methods/base.py", set(methods)),
                                        ("methods/__init__.py", set())]):
        edited, edited_teacher = package(f"method{i}", append(rel), methods)
        assert edited_teacher == teacher, rel
        assert {e for e in methods if edited[e] != base[e]} == changed, rel
    assert package("new", lambda root: (root / "extra.py").write_text("X = 1\n"))[1] != teacher
    assert package("newm", lambda root: (root / "methods" / "extra.py").write_text("X = 1\n"))[1] == teacher
    assert package("renamed", lambda root: (root / "scoring.py").rename(root / "scores.py"))[1] != teacher


def test_code_digest_ignores_documentation_and_annotations_but_not_code():
    src = b'''"""Module doc."""
from __future__ import annotations
from dataclasses import dataclass
from typing import ClassVar


@dataclass
class Config:
    """Doc."""
    lr: float = 0.1   # a comment


def step(x: float, *rest: int, scale: float = 2.0) -> float:
    """Doc."""
    return x * scale
'''
    same = [src.replace(b'"""Module doc."""', b'"""Other doc."""'),
            src.replace(b"# a comment", b"# another"),
            src.replace(b"(x: float, *rest: int, scale: float = 2.0) -> float", b"(x, *rest, scale=2.0)"),
            src.replace(b"    return x * scale", b"    return (x *\n            scale)"),
            src.replace(b'    """Doc."""\n    return', b"    return"),
            src.replace(b"import ClassVar\n",
                        b"import TYPE_CHECKING, ClassVar\n\nif TYPE_CHECKING:\n    import torch\n"),
            src.replace(b"import ClassVar\n", b"import ClassVar\nfrom typing import TYPE_CHECKING\n")]
    differ = [src.replace(b"x * scale", b"x / scale"), src.replace(b"scale: float = 2.0", b"scale: float = 3.0"),
              src.replace(b"lr: float = 0.1", b"lr = 0.1"),  # no longer a dataclass field
              src + b"X = 1\n", src.replace(b"import ClassVar\n", b"import ClassVar\nimport os\n")]
    assert all(code_digest(s) == code_digest(src) for s in same)
    assert len({code_digest(s) for s in [src, *differ]}) == 1 + len(differ)
    assert code_digest(b"def (:") == hashlib.sha256(b"def (:").digest()  # not Python: hashed as bytes


def test_a_cells_version_covers_its_methods_modules_and_plugins():
    from kdbench.methods import DISTILLERS
    files = lambda m: {f for f in training_files(Path(kdbench.__path__[0]).resolve(),  # noqa: E731
                                                 {f"methods/{m}.py"}) if f.startswith("methods/")}
    assert files("htd") == {"methods/htd.py", "methods/ftd.py", "methods/_experts.py", "methods/_common.py",
                            "methods/base.py"}
    assert files("kd") == {"methods/kd.py", "methods/base.py"}
    de, rrd, composite = (DISTILLERS.get(m) for m in ("de", "rrd", "de+rrd"))
    assert composite.code_classes() == (composite, de, rrd)   # a composition is versioned by its parts' code
    assert source_version(*composite.code_classes()) != source_version(composite)
    assert source_version(DISTILLERS.get("freqd.nofilter")) == source_version(DISTILLERS.get("freqd"))
    assert source_version(de) != source_version(rrd) != source_version()


def _grid(tiny_folder, tmp_path, name, extra=()):
    out, cache = tmp_path / name / "out", tmp_path / name / "cache"
    cmd = [sys.executable, "-m", "kdbench", "run", "--datasets", str(tiny_folder), "--methods", "student",
           "--out", str(out), "--cache-dir", str(cache), "--set", "train.max_epochs=150",
           "--set", "train.patience=1000", "--set", "teacher.dim=16", "--set", "student.dim=4", "--quiet", *extra]
    return cmd, out, cache


def test_sigkill_mid_teacher_then_rerun_resumes_from_the_checkpoint(tmp_path, tiny_folder):
    cmd, out, cache = _grid(tiny_folder, tmp_path, "killed", ["--checkpoint-every", "0"])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 120
    try:  # killed as soon as the first checkpoint exists: the teacher then has ~149 epochs left to run
        while not list((cache / "checkpoints").glob("*teacher*.pt")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the teacher finished before a checkpoint was seen"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (out / "cells" / "tinyds__bprmf__teacher__seed0.json").exists(), "killed too late"
    saved_files = list((cache / "checkpoints").glob("*teacher*.pt"))
    assert len(saved_files) == 1, f"no teacher checkpoint within 120 s: {saved_files}"
    saved = torch.load(saved_files[0], weights_only=True)["run"]["next_epoch"]
    plan = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert f"to train (resumes at epoch {saved})" in plan.stdout, plan.stdout + plan.stderr

    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    ref_cmd, ref_out, _ = _grid(tiny_folder, tmp_path, "reference")
    assert subprocess.run(ref_cmd, capture_output=True, cwd=tmp_path, timeout=300).returncode == 0

    for stem in ("tinyds__bprmf__teacher__seed0", "tinyds__bprmf__student__seed0"):
        rec, ref = (json.loads((o / "cells" / f"{stem}.json").read_text()) for o in (out, ref_out))
        assert rec["metrics"] == ref["metrics"] and rec["best_epoch"] == ref["best_epoch"], stem
        assert [h["losses"] for h in rec["history"]] == [h["losses"] for h in ref["history"]], stem
    teacher = json.loads((out / "cells" / "tinyds__bprmf__teacher__seed0.json").read_text())
    assert teacher["timing"]["resumed_at_epochs"] == [saved] and 0 < saved < 150
    assert not list((cache / "checkpoints").glob("*.pt")), "finished runs leave no checkpoint behind"


def test_dry_run_finds_the_checkpoint_of_a_composite_cell(tmp_path, tiny_folder):
    """A composite method is versioned by its parts' code (``code_classes``): the plan must look for the checkpoint
    where the cell saves it, or it would say "to run" of a cell that resumes."""
    from kdbench.grid import GridRunner, cell_stem, config_hash, teacher_spec
    from kdbench.methods import DISTILLERS

    runner = GridRunner(tmp_path / "out", cache_dir=tmp_path / "cache", quiet=True)
    args = ([str(tiny_folder)], ["bprmf"], ["de+rrd"], [0], "quick", {})
    assert [r["state"] for r in runner.dry_run(*args)] == ["to run"]
    ((_, ds, cfg),) = runner.plan(*args)
    stem = cell_stem(ds.name, "bprmf", "de+rrd", 0)
    runner._cell_checkpoint(stem, config_hash(cfg, ds), runner.cache.key(teacher_spec(cfg, ds, runner.device)),
                            DISTILLERS.get("de+rrd")).save({"run": {"next_epoch": 7}})
    assert [r["state"] for r in runner.dry_run(*args)] == ["to run (resumes at epoch 7)"]
