"""``kdbench leaderboard`` / ``kdbench timing`` filters on records written without training."""
import io

import pandas as pd
import pytest
from helpers import make_record, write_cells

from kdbench.cli import main
from kdbench.leaderboard import leaderboard, select_records


@pytest.fixture
def partial_grid(tmp_path):
    """Student and KD with seeds 0-2, DE with seed 0 only (a grid still running), on two backbones."""
    recs = []
    for backbone in ("bprmf", "lightgcn"):
        for seed, (st, kd) in enumerate([(0.10, 0.12), (0.20, 0.21), (0.30, 0.33)]):
            recs += [make_record("teacher", seed, 0.5, backbone=backbone, epoch_s=4.0),
                     make_record("student", seed, st, backbone=backbone, epoch_s=1.0),
                     make_record("kd", seed, kd, backbone=backbone, epoch_s=2.0)]
        recs.append(make_record("de", 0, 0.15, backbone=backbone, epoch_s=10.0))
    write_cells(tmp_path, recs)
    return tmp_path


def test_select_records_keeps_the_reference_rows(partial_grid):
    from kdbench.leaderboard import load_records

    recs = select_records(load_records(partial_grid), backbones=["bprmf"], methods=["de"], seeds=[0])
    assert sorted(r["method"] for r in recs) == ["de", "student", "teacher"]
    assert {(r["backbone"], r["seed"]) for r in recs} == {("bprmf", 0)}
    # the matched-seed gain: DE over seed 0's student, not over the three-seed mean
    lb = leaderboard(recs).set_index("method")
    assert lb.loc["de", "gain_ndcg@20_pct"] == pytest.approx(50.0)
    assert lb.loc["de", "seeds"] == 1


def test_filtered_tables_are_printed_and_leave_the_csvs_whole(partial_grid, capsys):
    assert main(["leaderboard", str(partial_grid)]) == 0
    full = (partial_grid / "leaderboard.csv").read_text()
    capsys.readouterr()
    assert main(["leaderboard", str(partial_grid), "--seeds", "0", "--backbones", "lightgcn",
                 "--format", "csv"]) == 0
    shown = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(shown["backbone"]) == {"lightgcn"} and set(shown["seeds"]) == {1}
    assert shown.set_index("method").loc["kd", "gain_ndcg@20_pct"] == pytest.approx(20.0)
    assert (partial_grid / "leaderboard.csv").read_text() == full  # the committed table is not replaced

    assert main(["timing", str(partial_grid), "--methods", "de", "--format", "csv"]) == 0
    tm = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert sorted(tm["method"].unique()) == ["de", "student", "teacher"]
    assert tm.set_index(["backbone", "method"]).loc[("bprmf", "de"), "overhead_x"] == pytest.approx(10.0)


def test_filters_that_match_nothing_or_are_malformed_are_errors(partial_grid, capsys):
    assert main(["leaderboard", str(partial_grid), "--datasets", "gowalla"]) == 2
    assert "no record matches --datasets gowalla" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["timing", str(partial_grid), "--seeds", "zero"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_timing_rows_are_medians_over_seeds(tmp_path):
    """A cell that shared its cores (epoch_s 5.0) does not move its row: the median of 1.0, 1.2, 5.0 is 1.2."""
    recs = [make_record("student", s, 0.1, epoch_s=0.5) for s in range(3)]
    recs += [make_record("kd", s, 0.1, epoch_s=e) for s, e in enumerate([1.0, 5.0, 1.2])]
    write_cells(tmp_path, recs)
    assert main(["timing", str(tmp_path), "--format", "csv"]) == 0
    tm = pd.read_csv(tmp_path / "timing.csv").set_index("method")
    assert tm.loc["kd", "epoch_s"] == pytest.approx(1.2) and tm.loc["kd", "overhead_x"] == pytest.approx(2.4)
    assert tm.loc["kd", "train_s"] == pytest.approx(3.6)  # make_record: train_s = 3 x epoch_s


def test_against_refers_gains_and_tests_to_another_method(partial_grid, capsys):
    """``--against kd``: every gain and p-value is relative to KD, the student row is tested against it, the
    committed CSV stays relative to student, and a reference that did not run is a clear error."""
    from scipy import stats

    assert main(["leaderboard", str(partial_grid), "--backbones", "bprmf", "--against", "kd", "--format", "csv"]) == 0
    lb = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("method")
    # student 0.1, 0.2, 0.3 against KD 0.12, 0.21, 0.33: means 0.2 / 0.22
    assert lb.loc["student", "gain_ndcg@20_pct"] == pytest.approx((0.2 / 0.22 - 1) * 100)
    assert lb.loc["kd", "gain_ndcg@20_pct"] == 0
    # the student is the only tested row with >= 3 seeds in common with KD (DE has seed 0 only and no npz)
    p = stats.ttest_rel([0.1, 0.2, 0.3], [0.12, 0.21, 0.33]).pvalue
    assert lb.loc["student", "p_test"] == "t" and lb.loc["student", "p_ndcg@20"] == pytest.approx(p)
    assert pd.isna(lb.loc["kd", "p_ndcg@20"]) and pd.isna(lb.loc["teacher", "p_ndcg@20"])
    assert lb.loc["de", "gain_ndcg@20_pct"] == pytest.approx((0.15 / 0.22 - 1) * 100)
    assert not (partial_grid / "leaderboard.csv").exists()  # a table against kd is printed, never written

    assert main(["leaderboard", str(partial_grid), "--against", "kd", "--methods", "de"]) == 0
    md = capsys.readouterr().out
    assert "gain ndcg@20 vs kd" in md and "differs from kd" in md and "| kd " in md  # kept for the comparison

    assert main(["leaderboard", str(partial_grid), "--against", "rrd"]) == 2
    assert "--against rrd: no finished rrd cell" in capsys.readouterr().err


def test_overhead_needs_the_students_machine(tmp_path):
    """Times from another CPU or thread count are shown with their machine, but not divided by the student's."""
    def on(rec, cpu="Test CPU", threads=1):
        rec["environment"] = {**rec["environment"], "cpu": cpu, "threads": threads}
        return rec
    recs = [on(make_record("student", s, 0.1, epoch_s=0.5)) for s in range(2)]
    recs += [on(make_record("kd", s, 0.1, epoch_s=1.0)) for s in range(2)]
    recs += [on(make_record("de", 0, 0.1, epoch_s=9.0), threads=2)]
    recs += [on(make_record("rd", 0, 0.1, epoch_s=1.5)), on(make_record("rd", 1, 0.1, epoch_s=2.5), cpu="Other CPU")]
    write_cells(tmp_path, recs)
    assert main(["timing", str(tmp_path), "--format", "csv"]) == 0
    tm = pd.read_csv(tmp_path / "timing.csv").set_index("method")
    assert tm.loc["kd", "overhead_x"] == pytest.approx(2.0) and tm.loc["kd", "machine"] == "Test CPU, 1 thread"
    assert pd.isna(tm.loc["de", "overhead_x"]) and tm.loc["de", "machine"] == "Test CPU, 2 threads"
    assert pd.isna(tm.loc["rd", "overhead_x"]) and tm.loc["rd", "machine"] == "Other CPU, 1 thread; Test CPU, 1 thread"
    assert tm.loc["de", "epoch_s"] == pytest.approx(9.0)
