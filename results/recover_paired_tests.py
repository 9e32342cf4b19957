"""Recover the raw p-values of per-user (Wilcoxon) tests from a committed leaderboard, for cells whose .npz files
are gone (they were never committed, and the machine that held them was replaced on 2026-12-01).

    python results/recover_paired_tests.py results/citeulike-paper e727b69

Benjamini–Hochberg gives q_(i) = min_{j ≥ i} min(1, n p_(j) / j) over the n tested rows sorted by p. The t-test rows'
raw p-values are recomputed from the records; a Wilcoxon row whose q is shared with no other row and is below 1 has
p = q i / n exactly (to the 6 significant digits of the CSV). Where several rows share one q, only the largest raw
p-value is q k / n (k: the group's last rank) and the others are at most that: they get that upper bound, marked
``recovered-bound`` (conservative: it can only make the row look less significant). The recovered rows go to
OUT/paired_tests.csv with source ``recovered@COMMIT``; the script then re-derives the table from them and fails
unless every p-value matches the committed one. Rows whose .npz files exist are left to ``kdbench leaderboard``.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.leaderboard import TESTED, _ok_frame, leaderboard, load_records
from kdbench.records import atomic_write_text
from kdbench.significance import (
    PAIRED_TEST_COLUMNS,
    PAIRED_TESTS_FILE,
    merge_paired_tests,
    paired_tests,
    read_paired_tests,
)

KEYS = ["dataset", "backbone", "method"]


def committed_table(out: Path, commit: str) -> pd.DataFrame:
    """OUT/leaderboard.csv as committed at ``commit``."""
    return pd.read_csv(io.StringIO(subprocess.run(["git", "show", f"{commit}:{out}/leaderboard.csv"],
                                                  check=True, capture_output=True, text=True).stdout))


def recover(out: Path, committed: pd.DataFrame, commit: str) -> pd.DataFrame:
    records = load_records(out)
    tests = paired_tests(_ok_frame(records), TESTED, "student")
    recovered = []
    for metric in TESTED:
        t = tests[tests["metric"] == metric].merge(committed[[*KEYS, f"p_{metric}"]], on=KEYS, how="left")
        t = t.rename(columns={f"p_{metric}": "q"})
        if t["q"].isna().any():
            raise SystemExit(f"{out}: rows {t.loc[t['q'].isna(), 'method'].tolist()} have no committed p_{metric}")
        n = len(t)
        t = t.sort_values(["q", "p_raw"], na_position="last", ignore_index=True)
        t["rank"] = np.arange(1, n + 1)
        last_rank = t.groupby("q")["rank"].transform("max")
        group_size = t.groupby("q")["rank"].transform("size")
        unknown = (t["test"] == "wilcoxon") & t["p_raw"].isna()
        exact = (group_size == 1) & (t["q"] < 1)
        t.loc[unknown, "p_raw"] = np.where(t["q"] < 1, t["q"] * last_rank / n, 1.0)[unknown]
        t.loc[unknown, "source"] = np.where(exact, f"recovered@{commit}", f"recovered-bound@{commit}")[unknown]
        recovered.append(t[unknown])
    return pd.concat(recovered, ignore_index=True)[PAIRED_TEST_COLUMNS]


def main(out: str, commit: str) -> None:
    path = Path(out)
    committed = committed_table(path, commit)
    rows = recover(path, committed, commit)
    merged = merge_paired_tests(read_paired_tests(path), rows.assign(test="wilcoxon"))
    atomic_write_text(path / PAIRED_TESTS_FILE, merged.to_csv(index=False, float_format="%.10g"))
    again = leaderboard(load_records(path), known_tests=merged).set_index(KEYS)
    committed = committed.set_index(KEYS)
    for metric in TESTED:
        col = f"p_{metric}"
        both = committed[col].notna()
        if not np.allclose(again.loc[committed.index[both], col], committed.loc[both, col], rtol=2e-5, atol=0):
            raise SystemExit(f"{out}: {col} re-derived from the recovered p-values differs from {commit}'s")
    print(f"{out}: {len(rows)} p-values recovered ({(rows['source'].str.startswith('recovered-bound')).sum()} "
          f"upper bounds); the re-derived table matches {commit}'s")


if __name__ == "__main__":
    main(*sys.argv[1:3])
