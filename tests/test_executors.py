"""Executors: local worker processes (joblib/loky), a dask LocalCluster, submitit's local/debug slurm clusters, clear
errors for missing extras, and two concurrent runs on one output directory."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import summary_counts, write_lightgcn_folder

from kdbench import executors
from kdbench.cli import main
from kdbench.executors import ExecutorError, make_executor, threads_per_worker

SETTINGS = ["--set", "train.max_epochs=2", "--set", "teacher.dim=16", "--set", "student.dim=4", "--quiet"]
FULL = ["--methods", "student,kd", "--seeds", "0,1"]     # 2 teachers + 4 method cells
SMALL = ["--methods", "student,kd", "--seeds", "0"]      # 1 teacher + 2 method cells
FULL_STEMS = [f"tinyds__bprmf__{m}__seed{s}" for s in (0, 1) for m in ("teacher", "student", "kd")]
SMALL_STEMS = [s for s in FULL_STEMS if s.endswith("seed0")]
# what a cell computes; the rest of a record (timing, environment, timestamps) legitimately differs between runs
COMPARED = ("metrics", "valid_metrics", "best_epoch", "epochs", "config_hash", "n_test_users")


def _records(out, stems) -> dict:
    recs = {}
    for stem in stems:
        rec = json.loads((out / "cells" / f"{stem}.json").read_text())
        assert rec["status"] == "ok", (stem, rec.get("error"))
        recs[stem] = rec
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == sorted(stems)
    return recs


def _assert_same_cells(recs, reference):
    """Records equal to the sequential run's: every compared field exactly equal (CPU determinism)."""
    for stem, rec in recs.items():
        for key in COMPARED:
            assert rec[key] == reference[stem][key], (stem, key)


@pytest.fixture(scope="module")
def tinyds(tmp_path_factory, tiny):
    """The tiny data as a LightGCN folder like conftest's ``tiny_folder`` (module-scoped, so that one sequential
    reference run serves every test)."""
    return write_lightgcn_folder(tmp_path_factory.mktemp("data") / "tinyds", tiny)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tinyds):
    """The FULL grid run sequentially in this process (fresh teacher cache): stem -> record."""
    root = tmp_path_factory.mktemp("reference")
    assert main(["run", "--datasets", str(tinyds), "--out", str(root / "out"), "--cache-dir", str(root / "cache"),
                 *FULL, *SETTINGS]) == 0
    return _records(root / "out", FULL_STEMS)


def _run(tinyds, tmp_path, grid, *extra):
    return main(["run", "--datasets", str(tinyds), "--out", str(tmp_path / "out"), "--cache-dir",
                 str(tmp_path / "cache"), *grid, *SETTINGS, *extra])


# -- local worker processes -------------------------------------------------------------------------------------

@pytest.fixture
def loky_shutdown():
    """Stop the reusable loky workers that joblib started for a test (they would otherwise idle until timeout)."""
    yield
    from joblib.externals.loky import reusable_executor
    ex = getattr(reusable_executor, "_executor", None)
    if ex is not None:
        ex.shutdown(wait=True)


def test_threads_per_worker():
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(1, cores=8) == 8
    assert threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(0, cores=4) == 4  # never a division by zero; make_executor rejects 0 itself


def test_local_workers_match_the_sequential_run(tinyds, tmp_path, reference, capsys, loky_shutdown):
    capsys.readouterr()
    assert _run(tinyds, tmp_path, FULL, "--workers", "2") == 0
    assert summary_counts(capsys.readouterr().err) == {"run": 6, "skipped": 0, "busy": 0, "failed": 0}
    recs = _records(tmp_path / "out", FULL_STEMS)
    _assert_same_cells(recs, reference)
    # each worker ran with cores // workers intra-op threads (records note the count they trained with)
    assert {r["environment"]["threads"] for r in recs.values()} == {threads_per_worker(2)}
    # a second parallel run finds every cell done (the outcomes come back from the workers)
    assert _run(tinyds, tmp_path, FULL, "--workers", "2") == 0
    assert summary_counts(capsys.readouterr().err) == {"run": 0, "skipped": 6, "busy": 0, "failed": 0}


def test_threads_option_sets_each_cells_threads_and_changes_no_metric(tinyds, tmp_path, reference):
    before = torch.get_num_threads()
    assert _run(tinyds, tmp_path, SMALL, "--threads", "1") == 0
    assert torch.get_num_threads() == before  # the in-process run restores the caller's setting
    recs = _records(tmp_path / "out", SMALL_STEMS)
    assert {r["environment"]["threads"] for r in recs.values()} == {1}
    _assert_same_cells(recs, reference)
    assert make_executor("local", workers=2, threads=1).threads == 1
    assert make_executor("local", workers=2).threads == threads_per_worker(2)


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_non_positive_workers_is_a_clear_error(tinyds, tmp_path, capsys, workers):
    assert _run(tinyds, tmp_path, SMALL, "--workers", workers) == 2
    err = capsys.readouterr().err
    assert f"kdbench: error: --workers {workers}: expected a positive number of worker processes" in err
    assert not (tmp_path / "out" / "cells").exists()


def test_non_positive_workers_is_an_error_for_dask_too():
    pytest.importorskip("dask.distributed")
    with pytest.raises(ExecutorError, match="--workers 0"):
        make_executor("dask", workers=0)


# -- dask and submitit ---------------------------------------------------------------------------------------------

def test_dask_local_cluster_matches_the_sequential_run(tinyds, tmp_path, reference, capsys):
    pytest.importorskip("dask.distributed")
    capsys.readouterr()
    assert _run(tinyds, tmp_path, SMALL, "--executor", "dask", "--workers", "2") == 0
    assert summary_counts(capsys.readouterr().err) == {"run": 3, "skipped": 0, "busy": 0, "failed": 0}
    recs = _records(tmp_path / "out", SMALL_STEMS)
    _assert_same_cells(recs, reference)
    assert {r["environment"]["threads"] for r in recs.values()} == {threads_per_worker(2)}


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_submitit_clusters_match_the_sequential_run(tinyds, tmp_path, reference, capsys, cluster):
    pytest.importorskip("submitit")
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        assert _run(tinyds, tmp_path, SMALL, "--executor", "slurm", "--slurm-cluster", cluster) == 0
    finally:
        torch.set_num_threads(threads)  # the debug cluster runs the jobs in this process, with --slurm-cpus threads
    assert summary_counts(capsys.readouterr().err) == {"run": 3, "skipped": 0, "busy": 0, "failed": 0}
    _assert_same_cells(_records(tmp_path / "out", SMALL_STEMS), reference)
    logs = tmp_path / "out" / "slurm"
    assert logs.is_dir() and any(logs.iterdir())  # submitit's job folder: pickled jobs, logs, results


def test_missing_extras_say_how_to_install(monkeypatch, tmp_path, tinyds, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    with pytest.raises(ExecutorError, match=r"pip install 'kdbench\[slurm\]'"):
        make_executor("slurm", out=tmp_path)
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(ExecutorError, match=r"pip install 'kdbench\[dask\]'"):
        make_executor("dask", workers=2)
    # the same through the CLI: exit 2, one clear line, nothing run
    for name in ("slurm", "dask"):
        assert _run(tinyds, tmp_path, SMALL, "--executor", name) == 2
        err = capsys.readouterr().err
        assert err.startswith("kdbench: error: ") and "pip install" in err
    assert not (tmp_path / "out" / "cells").exists()


def test_unknown_executor_name():
    with pytest.raises(ExecutorError, match="choose one of local, dask, slurm"):
        make_executor("mpi")
    assert make_executor("local", workers=1) is None
    assert isinstance(make_executor("local", workers=2), executors.LocalExecutor)


# -- two runs on one output directory ------------------------------------------------------------------------------

def test_two_concurrent_runs_train_every_cell_once(tmp_path, tinyds):
    methods = ["student", "fitnet", "kd", "freqd"]
    stems = [f"tinyds__bprmf__{m}__seed{s}" for s in (0, 1) for m in ("teacher", *methods)]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "kdbench", "run", "--datasets", str(tinyds), "--methods", ",".join(methods),
           "--seeds", "0,1", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--set",
           "train.max_epochs=3"]  # not --quiet: the per-cell log lines say which process trained what
    procs, logs = [], []
    for k in range(2):
        log = tmp_path / f"run{k}.err"
        with open(log, "w") as fh:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, cwd=tmp_path))
        logs.append(log)
    for proc in procs:
        proc.wait(timeout=300)
    errs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], errs
    _records(out, stems)  # every planned cell has one ok record in cells/, nothing else is there
    both = "\n".join(errs)
    for stem in stems:  # trained by exactly one of the two processes
        kind = "training teacher" if "__teacher__" in stem else "training ..."
        assert len(re.findall(rf"{re.escape(stem)}: {re.escape(kind)}", both)) == 1, stem
    counts = [summary_counts(e) for e in errs]
    assert all(c["failed"] == 0 and c["run"] + c["skipped"] + c["busy"] == len(stems) for c in counts), counts
    assert not (out / "cells" / "superseded").exists()   # no record, teacher or method, was written twice
    assert sum(c["run"] for c in counts) == len(stems), counts


def test_a_teacher_record_is_written_once_when_two_runs_reach_it_together(tmp_path, tinyds):
    """Deterministic replay of the race: run B has decided to write the teacher record when run A reaches the
    same cell (with the teacher in the cache by then); A must leave the cell to B."""
    from kdbench.grid import GridRunner
    out = tmp_path / "out"
    a, b = (GridRunner(out, cache_dir=tmp_path / "cache", quiet=True) for _ in range(2))
    overrides = {"train.max_epochs": 2, "teacher.dim": 16, "student.dim": 4}
    [task], _ = a.tasks([str(tinyds)], ["bprmf"], ["student"], [0], "quick", overrides)
    seen = {}
    write = b._write

    def b_writes_after_a_arrives(*args, **kwargs):
        seen["a"] = a.execute(task)[1]
        return write(*args, **kwargs)

    b._write = b_writes_after_a_arrives
    assert b.execute(task) == (task.stem, "ok")
    assert seen["a"] in ("busy", "skipped")
    assert not (out / "cells" / "superseded").exists()


def test_peak_memory_is_reset_between_cells():
    """A worker reused across cells must report each cell's own peak RSS."""
    import numpy as np

    from kdbench.runtime import reset_peak_memory
    from kdbench.train import peak_rss_mb

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    big = np.ones(400 * 2**20 // 8)       # ~400 MB touched
    big += 1
    del big
    before = peak_rss_mb()
    reset_peak_memory()
    assert peak_rss_mb() < before - 300


@pytest.mark.parametrize("in_order, workers, seeds, one_map", [
    (True, 2, [0, 1], True),     # two teachers keep both workers busy
    (True, 3, [0, 1], False),    # a third worker would only wait on a teacher in training
    (True, 2, [0], False),       # a lone teacher gets the cores of a phase of its own
    (False, 1, [0, 1], False),   # executors that start everything at once keep two phases
])
def test_teachers_and_cells_share_one_map_only_when_the_teachers_fill_every_worker(tmp_path, tinyds, in_order,
                                                                                     workers, seeds, one_map):
    """One map (teachers first, then cells seed by seed) lets a free worker start cells of trained teachers while
    another teacher trains; with fewer teachers than workers, or executors that start everything at once, the
    teachers run as a phase of their own."""
    from kdbench.executors import Executor, run_task
    from kdbench.grid import GridRunner

    class Recording(Executor):
        pulls_in_order = in_order
        calls = []

        def map(self, settings, tasks):
            self.calls.append([task.kind for _, task in tasks])
            return [run_task(settings, tag, task) for tag, task in tasks]

    ex = Recording()
    ex.workers = workers
    summary = GridRunner(tmp_path / "o", cache_dir=tmp_path / "c", quiet=True).run(
        [str(tinyds)], ["bprmf"], ["student", "kd"], seeds, "quick", {"train.max_epochs": 2}, executor=ex)
    assert not summary.failed and len(summary.ok) == 3 * len(seeds)
    kinds = ["teacher"] * len(seeds) + ["method"] * (2 * len(seeds))
    assert ex.calls == ([kinds] if one_map else [kinds[:len(seeds)], kinds[len(seeds):]])


@pytest.mark.parametrize("fixed, expected", [(None, threads_per_worker(1)), (1, 1)])
def test_a_lone_task_of_a_multi_worker_executor_takes_every_core(monkeypatch, fixed, expected):
    """A phase with fewer tasks than workers (one teacher, two workers) runs here with the idle workers' cores,
    unless --threads fixes the count."""
    seen = []
    monkeypatch.setattr(executors, "run_task", lambda settings, tag, task, threads=None: seen.append(threads) or
                        (task, "ok"))
    ex = executors.LocalExecutor(workers=2, threads=fixed)
    assert ex.map(None, [("[1/1]", "teacher-task")]) == [("teacher-task", "ok")]
    assert seen == [expected]
