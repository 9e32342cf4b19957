"""``kdbench report`` on synthetic cell records (no training): paired gains, report.md, figures, CLI."""
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import make_record, write_cells

from kdbench.cli import main
from kdbench.report import history_key, per_seed_gains, summarize_gains, write_report

pytest.importorskip("matplotlib")


def _gain(gains, method, seed):
    return gains[(gains["method"] == method) & (gains["seed"] == seed)]["gain_pct"].item()


def test_per_seed_gains_paired_by_seed():
    recs = [make_record("student", 0, 0.10), make_record("student", 1, 0.20),
            make_record("kd", 0, 0.11), make_record("kd", 1, 0.22),
            make_record("kd", 2, 0.50)]  # seed 2 has no student: no reference, must be ignored
    gains = per_seed_gains(recs, "ndcg@20")
    assert set(gains["method"]) == {"kd"}
    assert sorted(gains["seed"]) == [0, 1]
    assert _gain(gains, "kd", 0) == pytest.approx(10.0)
    assert _gain(gains, "kd", 1) == pytest.approx(10.0)
    s = summarize_gains(gains).set_index("method").loc["kd"]
    assert s["seeds"] == 2
    assert s["gain_mean_pct"] == pytest.approx(10.0)
    assert s["gain_std_pct"] == pytest.approx(0.0, abs=1e-9)


def test_per_seed_gains_std_three_seeds_and_single_seed():
    student = [0.10, 0.20, 0.40]
    kd = [0.12, 0.19, 0.50]
    recs = [make_record("student", s, v) for s, v in enumerate(student)]
    recs += [make_record("kd", s, v) for s, v in enumerate(kd)]
    recs += [make_record("fitnet", 0, 0.09)]  # one seed: a mean but no std
    recs += [make_record("kd", 0, 0.9, dataset="other")]  # another dataset, no student there
    expected = (np.array(kd) / np.array(student) - 1) * 100  # +20, -5, +25
    s = summarize_gains(per_seed_gains(recs, "ndcg@20")).set_index(["dataset", "method"])
    assert s.loc[("toy", "kd"), "gain_mean_pct"] == pytest.approx(expected.mean())
    assert s.loc[("toy", "kd"), "gain_std_pct"] == pytest.approx(np.std(expected, ddof=1))
    assert s.loc[("toy", "fitnet"), "gain_mean_pct"] == pytest.approx(-10.0)
    assert pd.isna(s.loc[("toy", "fitnet"), "gain_std_pct"])
    assert ("other", "kd") not in s.index


def test_failed_records_are_not_gains():
    recs = [make_record("student", 0, 0.10), make_record("kd", 0, 0.0, status="failed", error="boom")]
    assert per_seed_gains(recs, "ndcg@20").empty


@pytest.fixture
def run_dir(tmp_path):
    recs = []
    for seed, (st, kd, fit) in enumerate([(0.10, 0.11, 0.095), (0.20, 0.22, 0.21)]):
        recs += [make_record("teacher", seed, 0.30, epoch_s=4.0), make_record("student", seed, st, epoch_s=1.0),
                 make_record("kd", seed, kd, epoch_s=1.5), make_record("fitnet", seed, fit, epoch_s=2.0)]
    recs.append(make_record("rrd", 0, 0.12))  # one seed: a gain without a std
    recs.append(make_record("hetcomp", 0, 0.0, status="failed", error="RuntimeError: out of memory"))
    write_cells(tmp_path, recs)
    return tmp_path


def test_write_report(run_dir):
    path = write_report(run_dir, "ndcg@20")
    assert path == run_dir / "report.md"
    text = path.read_text()
    rows = [line.split("|")[1:4] for line in text.splitlines() if line.startswith("| toy")]
    methods = [m.strip() for d, b, m in rows if d.strip() == "toy" and b.strip() == "bprmf"]
    assert methods[:5] == ["teacher", "student", "fitnet", "kd", "rrd"]  # the leaderboard rows, in its order
    assert "| kd " in text and "+10.00 ± 0.00" in text  # the gain table
    assert "| rrd      | 1       | +20.00 " in text
    assert "abcdef012345" in text and "Test CPU, 1 thread(s)" in text
    assert "2026-01-01T10:00:00+00:00 → 2026-01-02T11:00:00+00:00" in text
    assert "hetcomp" in text and "RuntimeError: out of memory" in text

    figures = ["gain__toy__bprmf.png", "gain_vs_cost__toy__bprmf.png",
               "curves__toy__bprmf__seed0.png", "curves__toy__bprmf__seed1.png"]
    assert sorted(p.name for p in (run_dir / "figures").glob("*.png")) == sorted(figures)
    for name in figures:
        assert f"(figures/{name})" in text
        assert (run_dir / "figures" / name).read_bytes().startswith(b"\x89PNG")
    assert not list((run_dir / "figures").glob(".*tmp"))  # atomic writes leave no temp files


def test_write_report_rejects_unknown_metric(run_dir):
    with pytest.raises(ValueError, match="metric"):
        write_report(run_dir, "mrr@5")


def test_cli_report(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.md")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2


def test_history_key_follows_early_stop():
    rec = make_record("kd", 0, 0.1)
    assert history_key(rec) == "valid_ndcg@20"
    for h in rec["history"]:
        h["valid_recall@20"] = h.pop("valid_ndcg@20")
    assert history_key(rec) == "valid_recall@20"  # the configured key is absent: take the one present
    rec["history"] = None
    assert history_key(rec) is None


def test_missing_matplotlib(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'kdbench\[plot\]'"):
        write_report(run_dir)
    assert not (run_dir / "report.md").exists()


def test_gain_vs_cost_axis_turns_logarithmic_for_a_wide_range_of_overheads():
    from kdbench.report import overhead_axis_scale

    assert overhead_axis_scale([1.5, 2.0, 4.3]) == "linear"
    assert overhead_axis_scale([2.1, 8.0, 117.0]) == "log"  # BPRMF's response methods beside DE/HTD
    assert overhead_axis_scale([0.5, 4.9]) == "linear"      # the axis starts at the student's 1× or below it
