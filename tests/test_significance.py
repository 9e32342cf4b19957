"""Significance against student: the test chosen by the number of seeds, BH correction, and the rendered markers."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdbench.evaluate import METRICS
from kdbench.leaderboard import leaderboard, render, table_notes
from kdbench.significance import p_values, paired_seed_test, paired_user_test


def _cell(method, seed, ndcg, npz=None, dataset="d", backbone="bprmf"):
    return {"status": "ok", "dataset": {"name": dataset}, "backbone": backbone, "method": method, "seed": seed,
            "profile": "quick", "protocol": "quick: test", "metrics": {m: ndcg for m in METRICS},
            "timing": {"epoch_s": 1.0}, "_npz": npz}


def _npz(path, users, values):
    np.savez(path, users=np.asarray(users), **{m: np.asarray(values, dtype=np.float32) for m in METRICS})
    return str(path)


def test_paired_t_test_across_seeds_matches_scipy():
    method = pd.Series([0.30, 0.33, 0.31], index=[0, 1, 2])
    student = pd.Series([0.20, 0.21, 0.25], index=[0, 1, 2])
    expect = stats.ttest_rel([0.30, 0.33, 0.31], [0.20, 0.21, 0.25]).pvalue
    assert paired_seed_test(method, student) == pytest.approx(expect)
    # a constant improvement has zero variance: significant; identical runs are not
    assert paired_seed_test(student + 0.1, student) == 0.0
    assert paired_seed_test(student, student) == 1.0


def test_wilcoxon_across_users_pairs_users_by_id(tmp_path):
    users = np.arange(40)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.5, 40)
    better = base + rng.uniform(0.01, 0.1, 40)
    s = _npz(tmp_path / "s.npz", users, base)
    m = _npz(tmp_path / "m.npz", users[::-1], better[::-1])   # same users, another order
    p = paired_user_test([m], [s], "ndcg@20")
    assert p == pytest.approx(stats.wilcoxon(better - base).pvalue)
    assert p < 1e-6
    assert paired_user_test([s], [s], "ndcg@20") == 1.0
    assert np.isnan(paired_user_test([str(tmp_path / "missing.npz")], [s], "ndcg@20"))


def test_three_seeds_use_t_fewer_use_wilcoxon_and_bh_adjusts(tmp_path):
    users = np.arange(30)
    rng = np.random.default_rng(1)
    recs = []
    for seed, (sv, av, bv) in enumerate([(0.20, 0.30, 0.21), (0.21, 0.33, 0.20), (0.25, 0.31, 0.26)]):
        recs += [_cell("student", seed, sv), _cell("a", seed, av), _cell("b", seed, bv)]
    lb = leaderboard(recs)
    rows = lb.set_index("method")
    assert rows.loc["a", "p_test"] == "t" and rows.loc["b", "p_test"] == "t"
    raw = [stats.ttest_rel([0.30, 0.33, 0.31], [0.20, 0.21, 0.25]).pvalue,
           stats.ttest_rel([0.21, 0.20, 0.26], [0.20, 0.21, 0.25]).pvalue]
    adjusted = stats.false_discovery_control(raw, method="bh")
    assert rows.loc["a", "p_ndcg@20"] == pytest.approx(adjusted[0])
    assert rows.loc["b", "p_ndcg@20"] == pytest.approx(adjusted[1])
    assert pd.isna(rows.loc["student", "p_ndcg@20"])

    # one seed: per-user Wilcoxon from the npz files
    base = rng.uniform(0, 0.4, 30)
    one = [_cell("student", 0, np.float32(base).mean(), _npz(tmp_path / "s0.npz", users, base)),
           _cell("a", 0, np.float32(base + 0.05).mean(), _npz(tmp_path / "a0.npz", users, base + 0.05))]
    row = leaderboard(one).set_index("method").loc["a"]
    assert row["p_test"] == "wilcoxon" and row["p_ndcg@20"] < 1e-5


def test_rendered_table_marks_significant_rows_and_has_a_footnote(tmp_path):
    recs = []
    for seed, (sv, av, bv) in enumerate([(0.20, 0.30, 0.21), (0.21, 0.32, 0.20), (0.25, 0.35, 0.26)]):
        recs += [_cell("student", seed, sv), _cell("a", seed, av), _cell("b", seed, bv)]
    notes = table_notes(recs)
    md = render(leaderboard(recs), "md", notes=notes)
    line = {ln.split("|")[3].strip(): ln for ln in md.splitlines() if ln.startswith("| d ")}
    assert "†" in line["a"] and "**" in line["a"]          # best and significant
    assert "†" not in line["b"] and "†" not in line["student"]
    assert "paired t-test" in md and "Protocol: quick: test" in md
    tex = render(leaderboard(recs), "latex", notes=notes)
    assert "\\toprule" in tex and "$^\\dagger$" in tex and "\\footnotesize" in tex


def test_rows_without_a_student_get_no_p_value():
    lb = leaderboard([_cell("a", s, 0.3) for s in range(3)])
    assert lb["p_test"].fillna("").eq("").all() and lb["p_ndcg@20"].isna().all()
    assert p_values(pd.DataFrame(columns=["dataset", "backbone", "method", "seed", "npz", *METRICS]),
                    ("ndcg@20",)).empty


def _write_cell(out, method, seed, users, per_user, chash=None):
    from kdbench.records import write_json
    rec = _cell(method, seed, float(np.asarray(per_user, dtype=np.float32).mean()))
    del rec["_npz"]
    rec["config_hash"] = chash or f"{method}-{seed}"
    stem = out / "cells" / f"d__bprmf__{method}__seed{seed}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), rec)
    _npz(stem.with_suffix(".npz"), users, per_user)


def test_per_user_p_values_survive_without_the_npz_files(tmp_path):
    """A clone of the results has the records and paired_tests.csv but no .npz: it derives the same table, and a
    rerun cell (another key) does not reuse the stale p-value."""
    from kdbench.leaderboard import load_records, write_tables
    from kdbench.significance import read_paired_tests

    rng = np.random.default_rng(3)
    users = np.arange(50)
    base = rng.uniform(0, 0.4, 50)
    _write_cell(tmp_path, "student", 0, users, base)
    _write_cell(tmp_path, "a", 0, users, base + rng.uniform(0, 0.05, 50))
    _write_cell(tmp_path, "b", 0, users, base + rng.normal(0, 0.05, 50))
    lb, _ = write_tables(tmp_path)
    tests = read_paired_tests(tmp_path)
    assert len(tests) == 4 and set(tests["source"]) == {"npz"}
    raw_a = stats.wilcoxon(np.load(tmp_path / "cells/d__bprmf__a__seed0.npz")["ndcg@20"] - base.astype(np.float32))
    assert tests.set_index(["method", "metric"]).loc[("a", "ndcg@20"), "p_raw"] == pytest.approx(raw_a.pvalue)

    for f in (tmp_path / "cells").glob("*.npz"):
        f.unlink()
    again, _ = write_tables(tmp_path)
    pd.testing.assert_frame_equal(again, lb)
    assert read_paired_tests(tmp_path).equals(tests)

    # b rerun with another result: its old test no longer applies; a's still does (BH now over one row)
    _write_cell(tmp_path, "b", 0, users, base + 0.01, chash="b-0-rerun")
    (tmp_path / "cells/d__bprmf__b__seed0.npz").unlink()
    rows = write_tables(tmp_path)[0].set_index("method")
    assert pd.isna(rows.loc["b", "p_ndcg@20"]) and rows.loc["b", "p_test"] == "wilcoxon"
    assert rows.loc["a", "p_ndcg@20"] == pytest.approx(raw_a.pvalue)
    assert set(read_paired_tests(tmp_path)["method"]) == {"a"}
    assert len(load_records(tmp_path)) == 3
    # the rendered footnote names the row that could not be tested, and only it
    notes = table_notes(load_records(tmp_path), lb=rows.reset_index())
    assert notes.endswith("Not tested (the per-user .npz files of these cells or of their student's are not here; "
                          "rerun them with --rerun, or run 3 seeds for the test across seeds): d/bprmf b.")
    assert "Not tested" not in table_notes(load_records(tmp_path), lb=lb)


def test_unreadable_paired_tests_file_is_a_clear_error(tmp_path):
    from kdbench.leaderboard import write_tables
    (tmp_path / "paired_tests.csv").write_text("dataset,method\nd,a\n")
    _write_cell(tmp_path, "student", 0, np.arange(5), np.zeros(5))
    with pytest.raises(ValueError, match=r"paired_tests.csv: columns .*key.* missing"):
        write_tables(tmp_path)


def test_an_npz_from_another_run_of_the_cell_is_refused(tmp_path):
    """A per-user file whose mean is not its record's (left by another run) is never paired with the record."""
    from kdbench.leaderboard import write_tables
    users = np.arange(20)
    _write_cell(tmp_path, "student", 0, users, np.linspace(0, 0.4, 20))
    _write_cell(tmp_path, "a", 0, users, np.linspace(0.1, 0.5, 20))
    _npz(tmp_path / "cells/d__bprmf__a__seed0.npz", users, np.linspace(0.2, 0.6, 20))  # another run's file
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"d__bprmf__a__seed0.npz: mean ndcg@20 0.4 differs from its record's 0.3"):
        write_tables(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
