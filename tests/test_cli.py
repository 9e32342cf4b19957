"""The CLI end to end on tiny data: the output contract, independent metric checks, resume, errors."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdbench.cli import main
from kdbench.evaluate import METRICS
from kdbench.leaderboard import LEADERBOARD_COLUMNS, TIMING_COLUMNS

QUICK = ["--set", "train.max_epochs=3", "--set", "train.patience=2", "--set", "teacher.dim=16",
         "--set", "student.dim=4", "--quiet"]


def _read_pairs(path):
    pairs = []
    for line in path.read_text().splitlines():
        toks = list(map(int, line.split()))
        pairs += [(toks[0], i) for i in toks[1:]]
    return pairs


@pytest.fixture
def run_dir(tmp_path, tiny_folder):
    out = tmp_path / "out"
    code = main(["run", "--datasets", str(tiny_folder), "--backbones", "bprmf", "--methods",
                 "student,fitnet,freqd,kd", "--seeds", "0", "--out", str(out), *QUICK])
    assert code == 0
    return out


def test_run_writes_the_documented_files(run_dir, tiny_folder):
    cells = sorted(p.name for p in (run_dir / "cells").iterdir())
    stems = [f"tinyds__bprmf__{m}__seed0" for m in ("fitnet", "freqd", "kd", "student", "teacher")]
    assert cells == sorted([s + ext for s in stems for ext in (".json", ".npz")])
    rec = json.loads((run_dir / "cells" / "tinyds__bprmf__freqd__seed0.json").read_text())
    for key in ("dataset", "backbone", "method", "seed", "config", "config_hash", "teacher", "metrics",
                "valid_metrics", "best_epoch", "epochs", "timing", "environment", "status"):
        assert key in rec, key
    assert rec["status"] == "ok" and set(rec["metrics"]) == set(METRICS)
    assert len(rec["dataset"]["fingerprint"]) == 64 and len(rec["config_hash"]) == 64
    assert {"epoch_s", "precompute_s", "eval_s", "train_s", "peak_rss_mb"} <= set(rec["timing"])
    assert rec["config"]["method"]["params"]["alpha"] == 0.2
    teacher = json.loads((run_dir / "cells" / "tinyds__bprmf__teacher__seed0.json").read_text())
    assert rec["teacher"]["metrics"] == teacher["metrics"] and rec["teacher"]["key"] == teacher["teacher_cache"]["key"]
    assert {"torch", "python", "cpu", "threads", "device", "kdbench"} <= set(rec["environment"])
    lb = pd.read_csv(run_dir / "leaderboard.csv")
    assert list(lb.columns) == LEADERBOARD_COLUMNS
    assert lb["method"].tolist() == ["teacher", "student", "fitnet", "freqd", "kd"]
    row = lb.set_index("method")
    assert row.loc["student", "gain_ndcg@20_pct"] == 0
    for m in ("teacher", "fitnet", "freqd", "kd"):
        for metric in ("ndcg@20", "recall@20"):
            expected = (row.loc[m, metric] / row.loc["student", metric] - 1) * 100
            assert row.loc[m, f"gain_{metric}_pct"] == pytest.approx(expected, abs=0.01), (m, metric)  # CSV rounding
    tm = pd.read_csv(run_dir / "timing.csv")
    assert list(tm.columns) == TIMING_COLUMNS
    assert tm.loc[tm.method == "student", "overhead_x"].item() == pytest.approx(1.0)


def test_saved_topk_reproduce_the_metrics_without_kdbench(run_dir, tiny_folder):
    """Recompute Recall/NDCG@20 from the .npz top-50 lists and the raw test file, in the file's own ids."""
    test = _read_pairs(tiny_folder / "test.txt")
    targets = {}
    for u, i in test:
        targets.setdefault(u, set()).add(i)
    for method in ("teacher", "freqd"):
        z = np.load(run_dir / "cells" / f"tinyds__bprmf__{method}__seed0.npz")
        rec = json.loads((run_dir / "cells" / f"tinyds__bprmf__{method}__seed0.json").read_text())
        assert set(z["users"].tolist()) == set(targets)
        rec_, ndcg = [], []
        for u, top in zip(z["users"], z["topk"]):
            g = targets[int(u)]
            hits = [int(i) in g for i in top[:20]]
            rec_.append(sum(hits) / len(g))
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(g), 20)))
            ndcg.append(dcg / idcg)
        assert np.mean(rec_) == pytest.approx(rec["metrics"]["recall@20"], abs=1e-6)
        assert np.mean(ndcg) == pytest.approx(rec["metrics"]["ndcg@20"], abs=1e-6)
        np.testing.assert_allclose(z["ndcg@20"], ndcg, atol=1e-6)


def test_rerun_skips_done_cells_and_leaderboard_command(run_dir, tiny_folder, capsys):
    before = (run_dir / "cells" / "tinyds__bprmf__kd__seed0.json").read_text()
    code = main(["run", "--datasets", str(tiny_folder), "--methods", "student,fitnet,freqd,kd", "--out",
                 str(run_dir), *QUICK])
    assert code == 0
    assert (run_dir / "cells" / "tinyds__bprmf__kd__seed0.json").read_text() == before
    capsys.readouterr()
    assert main(["leaderboard", str(run_dir), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert "\\toprule" in out and "freqd" in out
    assert main(["leaderboard", str(run_dir), "--format", "md", "--metric", "recall@20"]) == 0
    assert "recall@20" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--methods", "freq_d"], "did you mean 'freqd'"),
    (["--set", "freqd.alfa=0.3", "--methods", "freqd"], "unknown key 'freqd.alfa'"),
    (["--set", "freqd.alpha=abc", "--methods", "freqd"], "expected a value of type float"),
    (["--seeds", "a,b"], "expected comma-separated integers"),
    (["--threads", "0"], "--threads 0: expected a positive number of threads"),
])
def test_bad_requests_fail_before_training(tmp_path, tiny_folder, capsys, args, match):
    code = main(["run", "--datasets", str(tiny_folder), "--out", str(tmp_path / "o"), *QUICK, *args])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o" / "cells").exists()


def test_config_file_and_set_precedence(tmp_path, tiny_folder):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'datasets = ["{tiny_folder}"]\nmethods = ["student"]\nthreads = 1\ncheckpoint_every = 0\n'
                   '[set]\n"train.max_epochs" = 2\n"teacher.dim" = 8\n"student.dim" = 4\n')
    out = tmp_path / "o"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--set", "train.max_epochs=1", "--quiet"]) == 0
    rec = json.loads((out / "cells" / "tinyds__bprmf__student__seed0.json").read_text())
    assert rec["epochs"] == 1 and rec["config"]["student"]["dim"] == 4
    assert rec["environment"]["threads"] == 1  # the file's run options apply, not only its [set] table


def test_python_m_kdbench_list():
    out = subprocess.run([sys.executable, "-m", "kdbench", "list", "methods"], capture_output=True, text=True,
                         check=True).stdout
    assert "freqd" in out and "alpha=0.2" in out and "fitnet" in out and "kd " in out


def test_methods_all_and_patterns():
    from kdbench.cli import expand_methods
    from kdbench.methods import BUILTIN_METHODS
    assert expand_methods(["all"]) == list(BUILTIN_METHODS)
    assert expand_methods(["student", "freqd*"]) == ["student", "freqd", "freqd.nofilter"]
    with pytest.raises(ValueError, match="matches no registered method"):
        expand_methods(["nothing*"])


@pytest.mark.parametrize("backbone", ["lightgcn", "simplex"])
def test_other_backbones_end_to_end(tmp_path, tiny_folder, backbone):
    out = tmp_path / "out"
    extra = ["--set", "backbone.num_ns=16"] if backbone == "simplex" else []
    assert main(["run", "--datasets", str(tiny_folder), "--backbones", backbone, "--methods", "student,freqd,kd",
                 "--out", str(out), *QUICK, *extra]) == 0
    lb = pd.read_csv(out / "leaderboard.csv")
    assert lb["method"].tolist() == ["teacher", "student", "freqd", "kd"] and (lb["backbone"] == backbone).all()
    rec = json.loads((out / "cells" / f"tinyds__{backbone}__freqd__seed0.json").read_text())
    assert rec["status"] == "ok" and rec["config"]["student"]["backbone"].get("num_ns", 16) == 16


def test_same_cell_twice_gives_identical_metrics(tmp_path, tiny_folder, monkeypatch):
    """Determinism on CPU: two fresh runs (fresh teacher cache too) give the same numbers, teacher included."""
    runs = []
    for k in range(2):
        monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / f"cache{k}"))
        out = tmp_path / f"out{k}"
        assert main(["run", "--datasets", str(tiny_folder), "--methods", "student,freqd,kd", "--out", str(out),
                     *QUICK]) == 0
        runs.append(pd.read_csv(out / "leaderboard.csv")[["method", *METRICS]])
    pd.testing.assert_frame_equal(runs[0], runs[1])


# FreqD's projector gradients at the grid's shapes (200-d teacher, 20-d student, batch 2048): GEMMs that reduce over
# thousands of rows, which MKL otherwise splits differently for one and for two threads
_THREAD_COUNT_PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from helpers import make_batch, make_distiller
from kdbench.datasets import load_dataset
ds = load_dataset("synthetic")
grads = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    teacher, student, d = make_distiller(ds, "bprmf", "freqd", t_dim=200, s_dim=20)
    d.precompute()
    loss = sum(d.loss(student(*make_batch(ds, student, n=2048))).values())
    grads.append(torch.autograd.grad(loss, [p for p in d.parameters() if p.requires_grad]))
print(all(torch.equal(a, b) for a, b in zip(*grads)))
"""


def test_mkl_strict_mode_makes_gradients_independent_of_the_thread_count():
    """The README's advice for numbers that do not depend on the thread count (``MKL_CBWR=AUTO,STRICT``) holds:
    FreqD's gradients are bit-identical at one and two threads."""
    if not torch.backends.mkl.is_available():
        pytest.skip("torch is not built with MKL")
    def same_gradients(strict: bool) -> bool:
        env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
        res = subprocess.run([sys.executable, "-c", _THREAD_COUNT_PROBE, str(Path(__file__).parent)], text=True,
                             capture_output=True, env={**env, "MKL_CBWR": "AUTO,STRICT"} if strict else env,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip() == "True"
    if same_gradients(strict=False):  # the control: where the thread count changes nothing, there is nothing to fix
        pytest.skip("on this CPU the gradients are bit-identical at 1 and 2 threads even without MKL_CBWR")
    assert same_gradients(strict=True)


def test_records_note_the_mkl_reproducibility_mode(monkeypatch):
    from kdbench.records import environment
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert "mkl_cbwr" not in environment(torch.device("cpu"))
    monkeypatch.setenv("MKL_CBWR", "AUTO,STRICT")
    assert environment(torch.device("cpu"))["mkl_cbwr"] == "AUTO,STRICT"


def test_dry_run_reports_states_and_writes_nothing(run_dir, tiny_folder, capsys):
    before = sorted(p.name for p in (run_dir / "cells").iterdir())
    capsys.readouterr()
    assert main(["run", "--datasets", str(tiny_folder), "--methods", "student,freqd.nofilter", "--out", str(run_dir),
                 "--dry-run", *QUICK]) == 0
    out = capsys.readouterr().out
    lines = {ln.split("|")[1].strip(): ln for ln in out.splitlines() if "tinyds__" in ln}
    assert "done" in lines["tinyds__bprmf__student__seed0"]
    assert "to run" in lines["tinyds__bprmf__freqd.nofilter__seed0"]
    assert all("cached" in ln for ln in lines.values())
    assert sorted(p.name for p in (run_dir / "cells").iterdir()) == before


def test_a_locked_cell_is_left_to_the_process_holding_it(tmp_path, tiny_folder, capsys):
    from filelock import FileLock
    out = tmp_path / "out"
    (out / "locks").mkdir(parents=True)
    lock = FileLock(str(out / "locks" / "tinyds__bprmf__fitnet__seed0.lock"))
    with lock:  # another process is training this cell
        assert main(["run", "--datasets", str(tiny_folder), "--methods", "student,fitnet", "--out", str(out),
                     *QUICK]) == 0
    assert (out / "cells" / "tinyds__bprmf__student__seed0.json").exists()
    assert not (out / "cells" / "tinyds__bprmf__fitnet__seed0.json").exists()
    assert "1 running elsewhere" in capsys.readouterr().err


def test_cpu_profile_caps_the_teacher_and_the_epochs_and_says_so():
    from kdbench.config import CPU_TEACHER_DIM, PROFILE_NOTES, resolve_cell
    paper = resolve_cell("citeulike", "lightgcn", "kd", 0, "paper", {})
    cpu = resolve_cell("citeulike", "lightgcn", "kd", 0, "cpu", {})
    assert paper["teacher"]["dim"] == 2000 and cpu["teacher"]["dim"] == CPU_TEACHER_DIM == 200
    assert cpu["train"]["max_epochs"] == 300 and cpu["train"]["patience"] == paper["train"]["patience"] == 30
    assert {k: v for k, v in cpu["student"].items()} == paper["student"]    # students as the spec says
    # a smaller spec teacher stays as it is; an explicit override still wins
    assert resolve_cell("synthetic", "bprmf", "kd", 0, "cpu", {})["teacher"]["dim"] == 200
    assert resolve_cell("citeulike", "bprmf", "kd", 0, "cpu", {"teacher.dim": 64})["teacher"]["dim"] == 64
    assert "200" in PROFILE_NOTES["cpu"] and "300" in PROFILE_NOTES["cpu"]


def test_records_name_their_protocol(run_dir):
    from kdbench.config import PROFILE_NOTES
    for path in (run_dir / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        # the profile's note, then what QUICK's overrides changed (a footnote must not claim the plain profile)
        assert rec["protocol"].startswith(PROFILE_NOTES[rec["profile"]] + "; overridden: ")
        assert "train.max_epochs=3" in rec["protocol"] and "teacher.dim=16" in rec["protocol"]
        assert "student.lr" not in rec["protocol"]                 # settings left alone are not listed


def test_dataset_defaults_follow_the_spec_per_dataset_and_yield_to_overrides(tiny_folder):
    from kdbench.config import resolve_cell

    def params(dataset, backbone, method, overrides=None):
        return resolve_cell(dataset, backbone, method, 0, "paper", overrides or {})["method"]["params"]

    assert (params("citeulike", "bprmf", "de")["num_experts"], params("gowalla", "bprmf", "de")["num_experts"],
            params("gowalla", "lightgcn", "de")["num_experts"], params("citeulike", "lightgcn", "de")["num_experts"]
            ) == (30, 5, 10, 20)
    assert params("yelp2018", "bprmf", "rrd")["temperature"] == 100
    assert params("citeulike", "bprmf", "rrd")["temperature"] == 10
    assert params("gowalla", "bprmf", "htd")["alpha"] == 0.5 and params("yelp2018", "bprmf", "htd")["alpha"] == 0.9
    assert params("gowalla", "bprmf", "de+rrd")["de_num_experts"] == 5                      # composites too
    assert params(str(tiny_folder), "bprmf", "de")["num_experts"] == 30                   # a folder: generic defaults
    assert params("gowalla", "bprmf", "de", {"de.num_experts": 7})["num_experts"] == 7     # --set still wins


def test_a_reader_that_closes_the_pipe_ends_the_cli_quietly():
    """``kdbench list | head``: the reader goes away before kdbench prints; no traceback, exit code 1."""
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "list", "methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has imported torch, so its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_git_dirty_means_the_package_sources_differ_from_the_commit(tmp_path):
    """A run that rewrites a committed leaderboard in the same checkout is not "dirty"; an edited or new source
    file of the package is."""
    import subprocess

    from kdbench.records import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    pkg, results = tmp_path / "pkg", tmp_path / "results"
    pkg.mkdir(), results.mkdir()
    (pkg / "train.py").write_text("X = 1\n")
    (results / "leaderboard.csv").write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    assert git_commit.__wrapped__(pkg)["dirty"] is False
    (results / "leaderboard.csv").write_text("b\n")
    (tmp_path / "notes.txt").write_text("untracked, outside the package\n")
    assert git_commit.__wrapped__(pkg)["dirty"] is False
    (pkg / "new_method.py").write_text("Y = 2\n")
    assert git_commit.__wrapped__(pkg)["dirty"] is True
    (pkg / "new_method.py").unlink()
    (pkg / "train.py").write_text("X = 2\n")
    info = git_commit.__wrapped__(pkg)
    assert info["dirty"] is True and len(info["commit"]) == 40
