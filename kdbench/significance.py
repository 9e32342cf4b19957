"""Is a method's difference from ``student`` (or another reference method) real? Paired tests per leaderboard row,
BH-corrected per table.

- ≥ 3 seeds that both the method and ``student`` ran: a paired t-test across seeds on the per-seed means
  (the seed is the unit of replication: it changes initialisation, sampling and the teacher).
- fewer seeds: a Wilcoxon signed-rank test across test users on the per-user metric vectors of the cell ``.npz``
  files (averaged over the common seeds), pairing each user's value under the method and under ``student``.
The p-values of one metric over all rows of a table are adjusted with Benjamini–Hochberg
(``scipy.stats.false_discovery_control``): the table reports many comparisons at once.

The per-user files stay on the machine that ran the cells (they are not committed), so each Wilcoxon test's raw
p-value is kept in ``OUT/paired_tests.csv`` (committed beside the leaderboard), keyed by a digest of the cells on
both sides (config hash, seed and test metric of each). A clone of the results without the ``.npz`` files, on
another machine, re-derives the same table from it and can still add cells to the grid; a rerun cell changes its
key, so a stale p-value is never reused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

MIN_SEEDS_FOR_T = 3
TESTS = {"t": "paired t-test across seeds", "wilcoxon": "Wilcoxon signed-rank test across users"}
PAIRED_TESTS_FILE = "paired_tests.csv"
PAIRED_TEST_COLUMNS = ["dataset", "backbone", "method", "reference", "metric", "p_raw", "source", "key"]


def paired_seed_test(method: pd.Series, student: pd.Series) -> float:
    """Two-sided paired t-test of per-seed values (Series indexed by seed, at least MIN_SEEDS_FOR_T in common)."""
    seeds = method.index.intersection(student.index)
    diff = method[seeds].to_numpy(float) - student[seeds].to_numpy(float)
    if np.allclose(diff, diff[0]):  # zero variance: t is undefined; identical runs are not different
        return 1.0 if np.isclose(diff[0], 0.0) else 0.0
    return float(stats.ttest_rel(method[seeds], student[seeds]).pvalue)


def _user_vector(npz_paths: list[str], metric: str, expected: list[float] | None = None) -> pd.Series | None:
    """Per-user metric averaged over the given cells' npz files (indexed by the dataset's user ids). ``expected``:
    each cell's recorded mean, which its file must reproduce (a file left by another run of the cell must not be
    paired with this record)."""
    parts = []
    for k, path in enumerate(npz_paths):
        if not path or not Path(path).exists():
            return None
        with np.load(path) as z:
            if metric not in z.files:
                return None
            values = pd.Series(z[metric], index=z["users"])
        if expected is not None and not np.isclose(values.mean(), expected[k], rtol=1e-5, atol=1e-7):
            raise ValueError(f"{path}: mean {metric} {values.mean():.6g} differs from its record's "
                             f"{expected[k]:.6g}: the file is from another run of the cell; delete it (the "
                             f"p-value then comes from {PAIRED_TESTS_FILE}) or rerun the cell")
        parts.append(values)
    return pd.concat(parts, axis=1).mean(axis=1) if parts else None


def paired_user_test(method_npz: list[str], student_npz: list[str], metric: str,
                     expected: tuple[list[float], list[float]] | None = None) -> float:
    """Two-sided Wilcoxon signed-rank test over users (NaN when a per-user file is missing). ``expected``: the
    recorded means of the two sides' cells, checked against their files."""
    a = _user_vector(method_npz, metric, None if expected is None else expected[0])
    b = _user_vector(student_npz, metric, None if expected is None else expected[1])
    if a is None or b is None:
        return float("nan")
    users = a.index.intersection(b.index)
    if len(users) == 0:
        return float("nan")
    diff = a[users].to_numpy(float) - b[users].to_numpy(float)
    if not np.any(diff):
        return 1.0
    return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)


def cells_key(method_cells: pd.DataFrame, reference_cells: pd.DataFrame, metric: str) -> str:
    """Digest of what a per-user test compares: each side's cells (seed, config hash, value of ``metric``)."""
    side = lambda cells: sorted([int(seed), str(c.get("config_hash")), repr(float(c[metric]))]  # noqa: E731
                                for seed, c in cells.iterrows())
    blob = json.dumps({"metric": metric, "method": side(method_cells), "reference": side(reference_cells)})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def read_paired_tests(out: str | Path) -> pd.DataFrame:
    """``OUT/paired_tests.csv`` (empty when absent): the raw p-values of earlier per-user tests."""
    path = Path(out) / PAIRED_TESTS_FILE
    if not path.exists():
        return pd.DataFrame(columns=PAIRED_TEST_COLUMNS)
    try:
        known = pd.read_csv(path, dtype={"key": str, "source": str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e}); restore it from git or delete it (its p-values are "
                         f"then recomputed from the cells' .npz files where they exist)") from e
    missing = set(PAIRED_TEST_COLUMNS) - set(known.columns)
    if missing:
        raise ValueError(f"{path}: columns {', '.join(sorted(missing))} missing; expected "
                         f"{','.join(PAIRED_TEST_COLUMNS)}")
    return known[PAIRED_TEST_COLUMNS]


def merge_paired_tests(known: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """``tests`` (this table's per-user tests with a p-value) plus the rows of ``known`` about other comparisons
    (cells not in this table); a comparison in both keeps this table's, so a rerun cell's old p-value goes."""
    ident = ["dataset", "backbone", "method", "reference", "metric"]
    done = tests[tests["p_raw"].notna()]
    current = pd.MultiIndex.from_frame(tests[ident].astype(str))
    others = known[~pd.MultiIndex.from_frame(known[ident].astype(str)).isin(current)]
    merged = pd.concat([others, done[PAIRED_TEST_COLUMNS]], ignore_index=True) if len(others) else done
    return merged[PAIRED_TEST_COLUMNS].sort_values(ident, ignore_index=True)


def paired_tests(per_seed: pd.DataFrame, metrics: tuple[str, ...], reference: str = "student",
                 known: pd.DataFrame | None = None) -> pd.DataFrame:
    """Raw p-value of every (dataset, backbone, method) row against ``reference``, one row per metric.

    ``per_seed`` has one row per ok cell: dataset, backbone, method, seed, the metrics, ``config_hash`` and ``npz``
    (path of the cell's per-user file). Columns: ``PAIRED_TEST_COLUMNS`` plus ``test`` (``t`` or ``wilcoxon``).
    A per-user test whose files are missing takes its p-value from ``known`` (see ``read_paired_tests``) when the
    key matches, else NaN."""
    if per_seed.empty:
        return pd.DataFrame(columns=[*PAIRED_TEST_COLUMNS, "test"])
    cached = {} if known is None else dict(zip(known["key"], zip(known["p_raw"], known["source"])))
    rows = []
    for (d, b), grp in per_seed.groupby(["dataset", "backbone"], sort=False):
        ref = grp[grp["method"] == reference].set_index("seed")
        for method, cells in grp.groupby("method", sort=False):
            if method in (reference, "teacher") or ref.empty:
                continue
            cells = cells.set_index("seed")
            common = cells.index.intersection(ref.index)
            if len(common) == 0:
                continue
            use_t = len(common) >= MIN_SEEDS_FOR_T
            for m in metrics:
                row = {"dataset": d, "backbone": b, "method": method, "reference": reference, "metric": m,
                       "test": "t" if use_t else "wilcoxon", "key": "", "source": "seeds"}
                if use_t:
                    row["p_raw"] = paired_seed_test(cells[m], ref[m])
                else:
                    row["key"] = cells_key(cells.loc[common], ref.loc[common], m)
                    row["p_raw"] = paired_user_test(list(cells.loc[common, "npz"]), list(ref.loc[common, "npz"]), m,
                                                    (list(cells.loc[common, m]), list(ref.loc[common, m])))
                    row["source"] = "npz"
                    if np.isnan(row["p_raw"]) and row["key"] in cached:
                        row["p_raw"], row["source"] = cached[row["key"]]
                rows.append(row)
    return pd.DataFrame(rows, columns=[*PAIRED_TEST_COLUMNS, "test"])


def p_values(per_seed: pd.DataFrame, metrics: tuple[str, ...], reference: str = "student",
             tests: pd.DataFrame | None = None) -> pd.DataFrame:
    """BH-adjusted p-values of every (dataset, backbone, method) row against ``reference``.

    ``tests`` are the rows' raw p-values (``paired_tests``; computed from ``per_seed`` when not given). Returns
    dataset, backbone, method, ``p_test`` and ``p_<metric>`` per metric (empty for the reference, ``teacher`` and
    rows without a reference)."""
    tests = paired_tests(per_seed, metrics, reference) if tests is None else tests
    keys = ["dataset", "backbone", "method"]
    out = per_seed[keys].drop_duplicates().reset_index(drop=True)
    if tests.empty:
        return out.assign(p_test="", **{f"p_{m}": np.nan for m in metrics})
    wide = tests.pivot_table(index=keys, columns="metric", values="p_raw", aggfunc="first", dropna=False)
    kind = tests.drop_duplicates(keys).set_index(keys)["test"]
    idx = pd.MultiIndex.from_frame(out[keys])
    out["p_test"] = kind.reindex(idx).fillna("").to_numpy()
    for m in metrics:
        col = (wide[m].reindex(idx) if m in wide.columns else pd.Series(np.nan, index=idx)).astype(float)
        ok = col.notna().to_numpy()
        adjusted = col.to_numpy(copy=True)
        if ok.any():
            adjusted[ok] = stats.false_discovery_control(adjusted[ok], method="bh")
        out[f"p_{m}"] = adjusted
    return out[[*keys, "p_test", *[f"p_{m}" for m in metrics]]]
