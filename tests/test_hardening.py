"""Hardening: kill -9 at random points then resume; malformed inputs fail early with clear messages; replaced
records are never destroyed (kept under cells/superseded/)."""
import gzip
import json
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import summary_counts

from kdbench import records
from kdbench.cli import main
from kdbench.grid import GridRunner

METHODS = ["student", "fitnet", "kd", "freqd"]
SEEDS = [0, 1]
STEMS = [f"tinyds__bprmf__{m}__seed{s}" for s in SEEDS for m in ["teacher", *METHODS]]
QUICK = ["--set", "train.max_epochs=2", "--set", "teacher.dim=16", "--set", "student.dim=4", "--quiet"]
STUDENT = "tinyds__bprmf__student__seed0"
TEACHER = "tinyds__bprmf__teacher__seed0"


def _ok_records(cells) -> dict:
    """stem -> bytes of every record in ``cells`` that parses and says ok."""
    out = {}
    for p in sorted(cells.glob("*.json")) if cells.is_dir() else []:
        data = p.read_bytes()
        try:
            rec = json.loads(data)
        except ValueError:
            continue
        if rec.get("status") == "ok":
            out[p.stem] = data
    return out


# -- 1. kill -9 at random points, then resume -------------------------------------------------------------------

def _wait(proc, until, timeout=120.0):
    """Poll until ``until()`` is true or the process ended."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not until() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_sigkill_at_random_points_then_rerun_completes_every_cell_once(tmp_path, tiny_folder):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cells = out / "cells"
    cmd = [sys.executable, "-m", "kdbench", "run", "--datasets", str(tiny_folder), "--methods", ",".join(METHODS),
           "--seeds", ",".join(map(str, SEEDS)), "--out", str(out), "--cache-dir", str(cache),
           "--set", "train.max_epochs=3", "--quiet"]
    killed_mid_run = 0
    rng = random.Random(0)
    # round 0 waits for the first record and kills within 0.3 s of it (a kill that surely lands mid-grid, in
    # training or in a write); round 1 kills after a seeded random delay in [0.5, 6] s from the start (4.67 s:
    # start-up, data loading, training or a write, depending on the machine's load)
    for mode in ("after_record", "delay"):
        n_before = len(_ok_records(cells))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        try:
            if mode == "after_record":
                _wait(proc, lambda n=n_before: len(list(cells.glob("*.json"))) > n)
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                _wait(proc, lambda: False, timeout=rng.uniform(0.5, 6.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                if len(_ok_records(cells)) < len(STEMS):
                    killed_mid_run += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert killed_mid_run >= 1, "no kill landed while cells were still to run"
    snapshot = _ok_records(cells)

    res = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    counts = summary_counts(res.stderr)
    # the cells finished before the kills are skipped, not retrained: their records are byte-identical
    assert counts == {"run": len(STEMS) - len(snapshot), "skipped": len(snapshot), "busy": 0, "failed": 0}
    for stem, data in snapshot.items():
        assert (cells / f"{stem}.json").read_bytes() == data, stem

    assert sorted(p.stem for p in cells.glob("*.json")) == sorted(STEMS)
    for stem in STEMS:
        rec = json.loads((cells / f"{stem}.json").read_text())
        assert rec["status"] == "ok" and rec["metrics"] and len(rec["config_hash"]) == 64, stem
        with np.load(cells / f"{stem}.npz") as z:
            assert len(z["users"]) == rec["n_test_users"] and z["topk"].shape[0] == len(z["users"])
    # anything else in cells/ is a temp file that a killed atomic write left behind: hidden, never *.json
    planned = {f"{s}{ext}" for s in STEMS for ext in (".json", ".npz")}
    for p in cells.iterdir():
        if p.name not in planned:
            assert p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"), p.name
    assert not (cells / "superseded").exists()  # no record was replaced: every cell was written once

    # the records carry the current config hash: a dry run of the same request sees every cell done
    runner = GridRunner(out, cache_dir=cache, quiet=True)
    rows = runner.dry_run([str(tiny_folder)], ["bprmf"], METHODS, SEEDS, "quick", {"train.max_epochs": 3})
    assert len(rows) == len(METHODS) * len(SEEDS)
    assert all(r["state"] == "done" and r["teacher"] == "cached" for r in rows), rows

    lb = pd.read_csv(out / "leaderboard.csv")
    assert sorted(lb["method"]) == sorted(["teacher", *METHODS]) and (lb["seeds"] == len(SEEDS)).all()


# -- 2. malformed inputs -> exit 2, a message naming the problem, nothing written ---------------------------------

def _copy(tiny_folder, tmp_path, name="bad"):
    dest = tmp_path / name / "tinyds"
    shutil.copytree(tiny_folder, dest)
    return dest


def _garble_nonint(folder):
    path = folder / "train.txt"
    lines = path.read_text().splitlines()
    lines[3] += " x12"
    path.write_text("\n".join(lines) + "\n")
    return path, [":4:", "'x12' is not an integer id"]


def _truncated_gzip(folder):
    src = folder / "train.txt"
    data = gzip.compress(src.read_bytes())
    src.unlink()
    path = folder / "train.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    return path, ["cannot be read", "EOFError"]


def _binary_garbage(folder):
    path = folder / "test.txt"
    path.write_bytes(bytes(range(128, 256)) * 8)
    return path, ["cannot be read", "UnicodeDecodeError"]


def _empty_valid(folder):
    path = folder / "valid.txt"
    path.write_text("")
    return path, ["the file is empty"]


def _truncated_csv(folder):
    pairs = []
    for split in ("train", "valid", "test"):
        for line in (folder / f"{split}.txt").read_text().splitlines():
            u, *items = line.split()
            pairs += [f"{u},{i},1" for i in items]
        (folder / f"{split}.txt").unlink()
    path = folder / "ratings.csv"
    text = "user,item,rating\n" + "\n".join(pairs) + "\n"
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 3])  # the last line cut after 2 characters
    return path, ["expected 3 columns like the first line, found 1"]


@pytest.mark.parametrize("damage", [_garble_nonint, _truncated_gzip, _binary_garbage, _empty_valid,
                                    _truncated_csv])
def test_malformed_dataset_files_fail_before_training(tmp_path, tiny_folder, capsys, damage):
    folder = _copy(tiny_folder, tmp_path)
    path, expected = damage(folder)
    out = tmp_path / "out"
    code = main(["run", "--datasets", str(folder), "--methods", "student", "--out", str(out), *QUICK])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("kdbench: error: ") and str(path) in err
    for text in expected:
        assert text in err
    assert not (out / "cells").exists()


def test_a_bad_dataset_leaves_an_existing_output_untouched(tmp_path, tiny_folder, capsys):
    out = tmp_path / "out"
    assert main(["run", "--datasets", str(tiny_folder), "--methods", "student", "--out", str(out), *QUICK]) == 0
    before = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    folder = _copy(tiny_folder, tmp_path)
    _garble_nonint(folder)
    capsys.readouterr()
    code = main(["run", "--datasets", f"{tiny_folder},{folder}", "--methods", "student,kd", "--out", str(out),
                 *QUICK])
    assert code == 2 and "is not an integer id" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir()} == before


@pytest.mark.parametrize("args, expected", [
    (["--datasets", "gowala"], ["unknown dataset 'gowala'", "did you mean", "'gowalla'"]),
    (["--datasets", "citeulik"], ["unknown dataset 'citeulik'", "'citeulike'"]),
    (["--methods", "student,fitnett"], ["unknown distiller 'fitnett'", "did you mean", "'fitnet'"]),
    (["--backbones", "bpmf"], ["unknown backbone 'bpmf'", "did you mean", "'bprmf'"]),
    (["--datasets", "{missing}"], ["{missing}", "not a directory"]),
])
def test_unknown_names_list_close_matches(tmp_path, tiny_folder, capsys, args, expected):
    missing = str(tmp_path / "no" / "such_folder")
    args = [a.format(missing=missing) for a in args]
    base = ["--datasets", str(tiny_folder)] if "--datasets" not in args else []
    out = tmp_path / "out"
    code = main(["run", *base, "--out", str(out), *QUICK, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text.format(missing=missing) in err
    assert not (out / "cells").exists()


@pytest.mark.parametrize("item, expected", [
    ("student.lr=abc", ["student.lr", "expected a value of type float"]),
    ("nosuch.key=1", ["nosuch.key", "unknown override section 'nosuch'"]),
    ("student.lr", ["'student.lr'", "expected KEY=VALUE"]),
    ("student.lrr=0.1", ["unknown key 'student.lrr'", "lr"]),
    ("lr=0.1", ["'lr=0.1'", "SECTION.NAME"]),
    ("train.max_epochs=2.5", ["train.max_epochs", "expected a value of type int"]),
])
def test_bad_set_values_name_the_key(tmp_path, tiny_folder, capsys, item, expected):
    out = tmp_path / "out"
    code = main(["run", "--datasets", str(tiny_folder), "--methods", "student", "--out", str(out), *QUICK,
                 "--set", item])
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err
    assert not (out / "cells").exists()


# -- replaced records are kept under cells/superseded/ ------------------------------------------------------------

def _run_student(tiny_folder, out, *extra):
    return main(["run", "--datasets", str(tiny_folder), "--methods", "student", "--out", str(out), *QUICK, *extra])


def _superseded(out, stem):
    sup = out / "cells" / "superseded"
    return sorted(sup.glob(f"{stem}.*.json")) if sup.is_dir() else []


def test_corrupt_record_is_rerun_and_the_garbage_kept(tmp_path, tiny_folder, capsys):
    out = tmp_path / "out"
    assert _run_student(tiny_folder, out) == 0
    path = out / "cells" / f"{STUDENT}.json"
    good = json.loads(path.read_text())
    old_npz = path.with_suffix(".npz").read_bytes()
    teacher = (out / "cells" / f"{TEACHER}.json").read_bytes()
    garbage = path.read_bytes()[:200] + b"\x00\xff<garbled>"
    path.write_bytes(garbage)
    capsys.readouterr()
    assert _run_student(tiny_folder, out) == 0
    assert summary_counts(capsys.readouterr().err) == {"run": 1, "skipped": 1, "busy": 0, "failed": 0}
    [kept] = _superseded(out, STUDENT)
    assert kept.read_bytes() == garbage and kept.with_suffix(".npz").read_bytes() == old_npz
    new = json.loads(path.read_text())
    assert new["status"] == "ok" and new["config_hash"] == good["config_hash"]
    assert new["metrics"] == good["metrics"]  # the same cell retrained on CPU gives the same numbers
    assert (out / "cells" / f"{TEACHER}.json").read_bytes() == teacher
    assert _superseded(out, TEACHER) == []


def test_record_of_another_config_is_kept_when_the_cell_reruns(tmp_path, tiny_folder, capsys):
    out = tmp_path / "out"
    assert _run_student(tiny_folder, out) == 0
    path = out / "cells" / f"{STUDENT}.json"
    old = path.read_bytes()
    teacher = (out / "cells" / f"{TEACHER}.json").read_bytes()
    capsys.readouterr()
    assert _run_student(tiny_folder, out, "--set", "student.lr=0.002") == 0
    assert summary_counts(capsys.readouterr().err) == {"run": 1, "skipped": 1, "busy": 0, "failed": 0}
    [kept] = _superseded(out, STUDENT)
    assert kept.read_bytes() == old
    new = json.loads(path.read_text())
    assert new["status"] == "ok" and new["config"]["student"]["lr"] == 0.002
    assert new["config_hash"] != json.loads(old)["config_hash"]
    # the teacher's configuration does not involve the student's: its record is still valid and untouched
    assert (out / "cells" / f"{TEACHER}.json").read_bytes() == teacher


def test_rerun_keeps_the_old_records(tmp_path, tiny_folder, capsys):
    out = tmp_path / "out"
    assert _run_student(tiny_folder, out) == 0
    old = {s: (out / "cells" / f"{s}.json").read_bytes() for s in (STUDENT, TEACHER)}
    capsys.readouterr()
    assert _run_student(tiny_folder, out, "--rerun") == 0
    assert summary_counts(capsys.readouterr().err) == {"run": 2, "skipped": 0, "busy": 0, "failed": 0}
    for stem, data in old.items():
        [kept] = _superseded(out, stem)
        assert kept.read_bytes() == data
        new = json.loads((out / "cells" / f"{stem}.json").read_text())
        assert new["status"] == "ok" and new["metrics"] == json.loads(data)["metrics"]


def test_two_replacements_in_one_second_keep_both_old_records(tmp_path, tiny_folder, monkeypatch):
    frozen = time.struct_time((2026, 1, 1, 0, 0, 0, 3, 1, 0))
    monkeypatch.setattr(records.time, "gmtime", lambda *a: frozen)  # the runs below fall within one second
    out = tmp_path / "out"
    versions = []
    for extra in ([], ["--set", "student.lr=0.002"], ["--set", "student.lr=0.003"]):
        assert _run_student(tiny_folder, out, *extra) == 0
        versions.append((out / "cells" / f"{STUDENT}.json").read_bytes())
    kept = sorted(p.read_bytes() for p in _superseded(out, STUDENT))
    assert kept == sorted(versions[:2])



def test_a_failing_teacher_is_recorded_and_not_retrained_for_each_cell(tmp_path, tiny_folder, monkeypatch):
    import kdbench.grid as grid
    calls = []

    def broken_fit(model, *a, **k):
        if model.dim == 16:          # the teacher (tiny data: teacher dim 16 below); students train normally
            calls.append(1)
            raise FloatingPointError("non-finite loss at epoch 0")
        return real_fit(model, *a, **k)

    real_fit = grid.fit
    monkeypatch.setattr(grid, "fit", broken_fit)
    runner = GridRunner(tmp_path / "out", cache_dir=tmp_path / "c", quiet=True)
    summary = runner.run([str(tiny_folder)], ["bprmf"], ["student", "fitnet", "kd"], [0], "quick",
                         {"teacher.dim": 16, "train.max_epochs": 2})
    assert len(calls) == 1                                   # tried once, not once per cell
    recs = {p.stem.split("__")[2]: json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*.json")}
    assert recs["teacher"]["status"] == "failed" and "non-finite" in recs["teacher"]["error"]
    assert recs["fitnet"]["status"] == recs["kd"]["status"] == "failed"
    assert "teacher failed" in recs["kd"]["error"]
    assert recs["student"]["status"] == "ok"                 # needs no teacher
    assert sorted(summary.failed) == sorted(f"tinyds__bprmf__{m}__seed0" for m in ("teacher", "fitnet", "kd"))


def test_resuming_a_finished_grid_trains_nothing_even_without_the_teacher_cache(tmp_path, tiny_folder,
                                                                                 monkeypatch):
    import kdbench.grid as grid
    args = ([str(tiny_folder)], ["bprmf"], ["student", "kd"], [0], "quick", {"train.max_epochs": 2})
    GridRunner(tmp_path / "out", cache_dir=tmp_path / "c", quiet=True).run(*args)
    shutil.rmtree(tmp_path / "c")
    monkeypatch.setattr(grid, "fit", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    summary = GridRunner(tmp_path / "out", cache_dir=tmp_path / "c2", quiet=True).run(*args)
    assert len(summary.skipped) == 3 and not summary.ok and not summary.failed


def test_a_done_teacher_missing_from_the_cache_is_trained_by_its_own_task_when_cells_need_it(tmp_path, tiny_folder,
                                                                                              capsys):
    """After a code change (new cache key) or a lost cache, the teacher task trains the teacher before the cells
    run, so that no worker's cell idles on another cell's teacher lock."""
    args = ([str(tiny_folder)], ["bprmf"], ["student", "fitnet", "kd"], [0], "quick", {"train.max_epochs": 2})
    GridRunner(tmp_path / "out", cache_dir=tmp_path / "c", quiet=False).run(*args)
    (tmp_path / "out" / "cells" / "tinyds__bprmf__kd__seed0.json").unlink()
    capsys.readouterr()
    summary = GridRunner(tmp_path / "out", cache_dir=tmp_path / "c2", quiet=False).run(*args)
    assert summary.ok == ["tinyds__bprmf__kd__seed0"] and len(summary.skipped) == 3
    log = capsys.readouterr().err
    first = log.index("tinyds__bprmf__teacher__seed0: done before; training its teacher for 1 cells still to run")
    assert first < log.index("training teacher (d=") < log.index("tinyds__bprmf__kd__seed0: training ...")


def test_a_task_that_fails_outside_its_cell_does_not_stop_the_map(tmp_path, tiny_folder):
    from kdbench.executors import run_task
    runner = GridRunner(tmp_path / "out", cache_dir=tmp_path / "c", quiet=True)
    teachers, cells = runner.tasks([str(tiny_folder)], ["bprmf"], ["student"], [0], "quick", {})
    shutil.rmtree(tiny_folder)                               # the worker cannot load the dataset any more
    assert run_task(runner.settings, "[1/1]", cells[0]) == (cells[0].stem, "failed")


def test_a_plugin_file_imported_twice_registers_once(tmp_path, monkeypatch):
    from kdbench.methods import DISTILLERS
    from kdbench.registry import import_plugin_module
    # the registration and the imported module end with the test
    for attr in ("_entries", "_origin"):
        monkeypatch.setattr(DISTILLERS, attr, dict(getattr(DISTILLERS, attr)))
    monkeypatch.setattr(DISTILLERS, "_plugins_loaded", DISTILLERS._plugins_loaded)
    module = "kdbench_plugin_twice_kd"              # the name import_plugin_module gives twice_kd.py
    monkeypatch.setitem(sys.modules, module, None)  # teardown restores what was there (here: nothing) ...
    monkeypatch.delitem(sys.modules, module)        # ... and the test starts without it
    plugin = tmp_path / "twice_kd.py"
    plugin.write_text("from kdbench.methods import register_distiller\n"
                      "from kdbench.methods.student import StudentOnly\n"
                      "register_distiller('twice_kd')(type('TwiceKD', (StudentOnly,), {}))\n")
    import_plugin_module(str(plugin))
    import_plugin_module(str(plugin))   # e.g. the parent and an in-process task of --workers 2
    assert "twice_kd" in DISTILLERS.list() and module in sys.modules


def test_dotted_method_names_take_overrides():
    from kdbench.config import check_overrides, resolve_cell
    over = {"freqd.nofilter.filter": "quadratic", "freqd.alpha": 0.3}
    check_overrides(over, ["bprmf"], ["freqd", "freqd.nofilter"])
    assert resolve_cell("citeulike", "bprmf", "freqd.nofilter", 0, "quick", over)["method"]["params"]["filter"] \
        == "quadratic"
    assert resolve_cell("citeulike", "bprmf", "freqd", 0, "quick", over)["method"]["params"]["alpha"] == 0.3


def test_teacher_metrics_in_records_follow_the_records_eval_settings(tmp_path, tiny_folder):
    """The cache key leaves evaluation out: a cached teacher's test metrics are quoted only under the settings
    they were computed with, and the teacher cell re-evaluates with its own."""
    args = ([str(tiny_folder)], ["bprmf"], ["kd"], [0], "quick", {"train.max_epochs": 2})
    cache = tmp_path / "c"
    GridRunner(tmp_path / "a", cache_dir=cache, quiet=True).run(*args)
    unmasked = {**args[5], "eval.mask_valid_in_test": False}
    GridRunner(tmp_path / "b", cache_dir=cache, quiet=True).run(*args[:5], unmasked)

    def rec(out, method):
        return json.loads((tmp_path / out / "cells" / f"tinyds__bprmf__{method}__seed0.json").read_text())

    assert rec("a", "kd")["teacher"]["metrics"] == rec("a", "teacher")["metrics"]
    assert rec("b", "kd")["teacher"]["metrics"] is None
    assert rec("b", "teacher")["teacher_cache"]["hit"]
    assert rec("b", "teacher")["metrics"] != rec("a", "teacher")["metrics"]   # valid items now compete at test
