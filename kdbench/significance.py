"""Is a method's difference from ``student`` (or another reference method) real? Paired tests per leaderboard row,
BH-corrected per table.

- ≥ 3 seeds that both the method and ``student`` ran: a paired t-test across seeds on the per-seed means
  (the seed is the unit of replication: it changes initialisation, sampling and the teacher).
- fewer seeds: a Wilcoxon signed-rank test across test users on the per-user metric vectors of the cell ``.npz``
  files (averaged over the common seeds), pairing each user's value under the method and under ``student``.
The p-values of one metric over all rows of a table are adjusted with Benjamini–Hochberg
(``scipy.stats.false_discovery_control``): the table reports many comparisons at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

MIN_SEEDS_FOR_T = 3
TESTS = {"t": "paired t-test across seeds", "wilcoxon": "Wilcoxon signed-rank test across users"}


def paired_seed_test(method: pd.Series, student: pd.Series) -> float:
    """Two-sided paired t-test of per-seed values (Series indexed by seed, at least MIN_SEEDS_FOR_T in common)."""
    seeds = method.index.intersection(student.index)
    diff = method[seeds].to_numpy(float) - student[seeds].to_numpy(float)
    if np.allclose(diff, diff[0]):  # zero variance: t is undefined; identical runs are not different
        return 1.0 if np.isclose(diff[0], 0.0) else 0.0
    return float(stats.ttest_rel(method[seeds], student[seeds]).pvalue)


def _user_vector(npz_paths: list[str], metric: str) -> pd.Series | None:
    """Per-user metric averaged over the given cells' npz files (indexed by the dataset's user ids)."""
    parts = []
    for path in npz_paths:
        if not path or not Path(path).exists():
            return None
        with np.load(path) as z:
            if metric not in z.files:
                return None
            parts.append(pd.Series(z[metric], index=z["users"]))
    return pd.concat(parts, axis=1).mean(axis=1) if parts else None


def paired_user_test(method_npz: list[str], student_npz: list[str], metric: str) -> float:
    """Two-sided Wilcoxon signed-rank test over users (NaN when a per-user file is missing)."""
    a, b = _user_vector(method_npz, metric), _user_vector(student_npz, metric)
    if a is None or b is None:
        return float("nan")
    users = a.index.intersection(b.index)
    if len(users) == 0:
        return float("nan")
    diff = a[users].to_numpy(float) - b[users].to_numpy(float)
    if not np.any(diff):
        return 1.0
    return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)


def p_values(per_seed: pd.DataFrame, metrics: tuple[str, ...], reference: str = "student") -> pd.DataFrame:
    """BH-adjusted p-values of every (dataset, backbone, method) row against ``reference``.

    ``per_seed`` has one row per ok cell: dataset, backbone, method, seed, the metrics and ``npz`` (path of the
    cell's per-user file). Returns dataset, backbone, method, ``p_test`` and ``p_<metric>`` per metric (empty for
    the reference, ``teacher`` and rows without a reference)."""
    rows = []
    for (d, b), grp in per_seed.groupby(["dataset", "backbone"], sort=False):
        ref = grp[grp["method"] == reference].set_index("seed")
        for method, cells in grp.groupby("method", sort=False):
            row = {"dataset": d, "backbone": b, "method": method, "p_test": ""}
            if method in (reference, "teacher") or ref.empty:
                rows.append(row)
                continue
            cells = cells.set_index("seed")
            common = cells.index.intersection(ref.index)
            if len(common) == 0:
                rows.append(row)
                continue
            use_t = len(common) >= MIN_SEEDS_FOR_T
            row["p_test"] = "t" if use_t else "wilcoxon"
            for m in metrics:
                row[f"p_{m}"] = (paired_seed_test(cells[m], ref[m]) if use_t else
                                 paired_user_test(list(cells.loc[common, "npz"]), list(ref.loc[common, "npz"]), m))
            rows.append(row)
    out = pd.DataFrame(rows, columns=["dataset", "backbone", "method", "p_test", *[f"p_{m}" for m in metrics]])
    for m in metrics:
        col = out[f"p_{m}"].astype(float)
        ok = col.notna()
        if ok.any():
            out.loc[ok, f"p_{m}"] = stats.false_discovery_control(col[ok].to_numpy(), method="bh")
    return out
