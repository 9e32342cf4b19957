"""Tables derived from the cell records: ``leaderboard.csv`` and ``timing.csv`` (never hand-edited).

``leaderboard.csv`` carries, per row, BH-adjusted p-values of the difference from ``student`` (``p_ndcg@20``,
``p_recall@20``) and the test used (``p_test``: ``t`` across seeds, ``wilcoxon`` across users); see
``significance.py``; ``paired_tests.csv`` keeps the raw p-values of the per-user tests for machines without the
cells' ``.npz`` files. A printed leaderboard may refer its gains and tests to another method instead
(``kdbench leaderboard OUT --against freqd.nofilter``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .evaluate import METRICS
from .records import atomic_write_text
from .significance import (
    MIN_SEEDS_FOR_T,
    PAIRED_TESTS_FILE,
    TESTS,
    merge_paired_tests,
    p_values,
    paired_tests,
    read_paired_tests,
)

TESTED = ("ndcg@20", "recall@20")   # the metrics that get a significance test against the reference
ALPHA = 0.05
LEADERBOARD_COLUMNS = (["dataset", "backbone", "method", "seeds", *METRICS, *[f"{m}_std" for m in METRICS],
                        "gain_ndcg@20_pct", "gain_recall@20_pct", *[f"p_{m}" for m in TESTED], "p_test"])
TIMING_COLUMNS = ["dataset", "backbone", "method", "epoch_s", "overhead_x", "precompute_s", "eval_s", "train_s",
                  "peak_rss_mb", "machine"]


def load_records(out: str | Path) -> list[dict]:
    recs = []
    for p in sorted((Path(out) / "cells").glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # a corrupt record is reported by the grid, not fatal to the tables
        rec["_npz"] = str(p.with_suffix(".npz"))  # per-user metrics, for the significance tests
        recs.append(rec)
    return recs


def select_records(records: list[dict], datasets: list[str] | None = None, backbones: list[str] | None = None,
                   methods: list[str] | None = None, seeds: list[int] | None = None,
                   reference: str = "student") -> list[dict]:
    """The records of the given datasets, backbones, methods and seeds (``None``: all). ``teacher``, ``student`` and
    ``reference`` are kept whatever ``methods`` says: gains, p-values and overheads refer to them. With the seeds
    that every method has finished, a partly run grid compares methods over the same seeds."""
    methods = None if methods is None else {*methods, "teacher", "student", reference}
    keep = lambda value, allowed: allowed is None or value in allowed  # noqa: E731
    return [r for r in records if keep(r.get("dataset", {}).get("name"), datasets)
            and keep(r.get("backbone"), backbones) and keep(r.get("method"), methods) and keep(r.get("seed"), seeds)]


def _method_order(methods: np.ndarray) -> list[str]:
    first = [m for m in ("teacher", "student") if m in methods]
    return first + sorted(m for m in methods if m not in first)


def ok_records(records: list[dict]) -> list[dict]:
    """The records of finished cells (status ok, with test metrics)."""
    return [r for r in records if r.get("status") == "ok" and r.get("metrics")]


def machine(record: dict) -> str:
    """What a cell's times were measured on: CPU model, threads and device (e.g. ``AMD EPYC, 1 thread``)."""
    env = record.get("environment") or {}
    threads = env.get("threads")
    text = f"{env.get('cpu') or 'unknown CPU'}, {threads} thread{'' if threads == 1 else 's'}"
    device = env.get("device", "cpu")
    return text if str(device).startswith("cpu") else f"{text}, {device}"


def _ok_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in ok_records(records):
        t = r.get("timing") or {}
        rows.append({"dataset": r["dataset"]["name"], "backbone": r["backbone"], "method": r["method"],
                     "seed": r["seed"], **{m: r["metrics"][m] for m in METRICS}, "npz": r.get("_npz"),
                     "config_hash": r.get("config_hash"), "machine": machine(r),
                     "epoch_s": t.get("epoch_s"), "precompute_s": t.get("precompute_s", 0.0),
                     "eval_s": t.get("eval_s"), "train_s": t.get("train_s"), "peak_rss_mb": t.get("peak_rss_mb")})
    return pd.DataFrame(rows)


def leaderboard(records: list[dict], reference: str = "student", known_tests: pd.DataFrame | None = None
                ) -> pd.DataFrame:
    """One row per (dataset, backbone, method): seeds, mean and std of every metric, and the gain over
    ``reference`` with its BH-adjusted p-values (the CSV contract's columns; ``student`` unless asked otherwise).
    ``known_tests`` (``read_paired_tests(OUT)``) supplies per-user tests whose ``.npz`` files are not here."""
    return _leaderboard_and_tests(records, reference, known_tests)[0]


def _leaderboard_and_tests(records: list[dict], reference: str, known_tests: pd.DataFrame | None
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = _ok_frame(records)
    if df.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS), paired_tests(df, TESTED)
    g = df.groupby(["dataset", "backbone", "method"], sort=False)
    mean = g[list(METRICS)].mean()
    std = g[list(METRICS)].std(ddof=1).add_suffix("_std")  # NaN (empty) with a single seed
    out = pd.concat([g["seed"].count().rename("seeds"), mean, std], axis=1).reset_index()
    for metric in ("ndcg@20", "recall@20"):
        ref = out[out["method"] == reference].set_index(["dataset", "backbone"])[metric]
        base = out.set_index(["dataset", "backbone"]).index.map(lambda k, ref=ref: ref.get(k, np.nan))
        out[f"gain_{metric}_pct"] = (out[metric].to_numpy() / np.asarray(base, dtype=float) - 1) * 100
    tests = paired_tests(df, TESTED, reference, known_tests)
    out = out.merge(p_values(df, TESTED, reference, tests), on=["dataset", "backbone", "method"], how="left")
    out["_order"] = out["method"].map({m: i for i, m in enumerate(_method_order(out["method"].unique()))})
    out = out.sort_values(["dataset", "backbone", "_order"]).drop(columns="_order")
    return out[LEADERBOARD_COLUMNS].reset_index(drop=True), tests


def untested_rows(lb: pd.DataFrame, reference: str = "student") -> list[str]:
    """``dataset/backbone method`` of the rows compared with ``reference`` but without a p-value: their per-user
    test needs the ``.npz`` files of the row's cells and of the reference's, and one of them is missing (they
    stay out of git) with no recorded p-value for the same cells in ``paired_tests.csv``."""
    compared = ~lb["method"].isin([reference, "teacher"]) & lb["gain_ndcg@20_pct"].notna()
    rows = lb[compared & lb["p_ndcg@20"].isna()]
    return [f"{d}/{b} {m}" for d, b, m in zip(rows["dataset"], rows["backbone"], rows["method"])]


def table_notes(records: list[dict], reference: str = "student", lb: pd.DataFrame | None = None) -> str:
    """The footnote of a rendered leaderboard: protocol(s), seeds, what bold and the markers mean, and (given the
    leaderboard ``lb``) which rows could not be tested."""
    ok = [r for r in records if r.get("status") == "ok"]
    protocols = sorted({r.get("protocol") or r.get("profile", "?") for r in ok})
    seeds = sorted({r["seed"] for r in ok})
    untested = [] if lb is None else untested_rows(lb, reference)
    return (f"Mean ± std over seeds {', '.join(map(str, seeds))} (std shown with ≥ 2 seeds). Bold: best student "
            f"per dataset/backbone. † : differs from {reference} at BH-adjusted p < {ALPHA} "
            f"({TESTS['t']} with ≥ {MIN_SEEDS_FOR_T} seeds, else {TESTS['wilcoxon']}, which over thousands of "
            f"users flags small differences and says nothing of seed variance; Benjamini–Hochberg over the "
            f"table's rows). Protocol: {'; '.join(protocols)}."
            + ("" if reference == "student" else f" Gains and tests against {reference}, not student.")
            + (f" Not tested (the per-user .npz files of these cells or of their {reference}'s are not here; "
               f"rerun them with --rerun, or run {MIN_SEEDS_FOR_T} seeds for the test across seeds): "
               f"{', '.join(untested)}." if untested else ""))


def timing(records: list[dict]) -> pd.DataFrame:
    """Per (dataset, backbone, method), the median over seeds of each cell's timing: one cell that shared its cores
    with other work (a benchmark, a third process) does not move the row, as it would move a mean.

    ``machine`` lists what the row's cells ran on; ``overhead_x`` is left empty unless they all ran on the one
    machine (CPU model, threads, device) that the student's cells ran on: a ratio of times taken on different
    CPUs or thread counts measures the machines, not the method."""
    df = _ok_frame(records)
    if df.empty:
        return pd.DataFrame(columns=TIMING_COLUMNS)
    cols = ["epoch_s", "precompute_s", "eval_s", "train_s", "peak_rss_mb"]
    g = df.groupby(["dataset", "backbone", "method"], sort=False)
    out = pd.concat([g[cols].median(), g["machine"].agg(lambda m: "; ".join(sorted(set(m))))], axis=1).reset_index()
    ref = out[out["method"] == "student"].set_index(["dataset", "backbone"])
    keys = out.set_index(["dataset", "backbone"]).index
    base = np.asarray(keys.map(lambda k: ref["epoch_s"].get(k, np.nan)), dtype=float)
    same = (np.asarray(keys.map(lambda k: ref["machine"].get(k)), dtype=object) == out["machine"].to_numpy()) \
        & ~out["machine"].str.contains(";").to_numpy()
    out["overhead_x"] = np.where(same, out["epoch_s"].to_numpy() / base, np.nan)
    out["_order"] = out["method"].map({m: i for i, m in enumerate(_method_order(out["method"].unique()))})
    out = out.sort_values(["dataset", "backbone", "_order"]).drop(columns="_order")
    return out[TIMING_COLUMNS].reset_index(drop=True)


def write_tables(out: str | Path, records: list[dict] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Derive and write OUT's two tables from ``records`` (default: all of OUT's records), and the per-user tests'
    raw p-values to ``paired_tests.csv``."""
    recs = load_records(out) if records is None else records
    known = read_paired_tests(out)
    (lb, tests), tm = _leaderboard_and_tests(recs, "student", known), timing(recs)
    merged = merge_paired_tests(known, tests[tests["test"] == "wilcoxon"])
    if len(merged) or len(known):
        atomic_write_text(Path(out) / PAIRED_TESTS_FILE, merged.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(Path(out) / "leaderboard.csv", lb.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(Path(out) / "timing.csv", tm.to_csv(index=False, float_format="%.6g"))
    return lb, tm


def _latex(table: pd.DataFrame, notes: str = "") -> str:
    """A booktabs tabular: text columns left, numbers right, ``notes`` in a full-width last row."""
    cols = list(table.columns)
    esc = lambda s: str(s).replace("_", "\\_").replace("%", "\\%").replace("±", "$\\pm$").replace("×", "$\\times$") \
        .replace("†", "$^\\dagger$").replace("≥", "$\\geq$")  # noqa: E731
    align = "".join("l" if c in ("dataset", "backbone", "method") else "r" for c in cols)
    lines = ["\\begin{tabular}{" + align + "}", "\\toprule", " & ".join(esc(c) for c in cols) + " \\\\",
             "\\midrule"]
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines.append("\\bottomrule")
    if notes:
        lines.append(f"\\multicolumn{{{len(cols)}}}{{p{{0.95\\linewidth}}}}{{\\footnotesize {esc(notes)}}} \\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines)


def render(lb: pd.DataFrame, fmt: str = "md", metric: str = "ndcg@20", notes: str = "",
           reference: str = "student") -> str:
    """A human table of the leaderboard: mean ± std per metric, best student per (dataset, backbone) in bold,
    † where the difference from ``reference`` (that of ``lb``) is significant, ``notes`` as a footnote."""
    if fmt == "csv":
        return lb.to_csv(index=False, float_format="%.6g")
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    shown = [metric] + [m for m in ("recall@20", "ndcg@20") if m != metric]
    gain_col = f"gain {metric}" + ("" if reference == "student" else f" vs {reference}")
    rows = []
    for (d, b), grp in lb.groupby(["dataset", "backbone"], sort=False):
        students = grp[grp["method"] != "teacher"]
        best = {m: students[m].max() for m in shown}
        for _, r in grp.iterrows():
            row = {"dataset": d, "backbone": b, "method": r["method"], "seeds": int(r["seeds"])}
            for m in shown:
                cell = f"{r[m]:.4f}" + (f" ± {r[m + '_std']:.4f}" if pd.notna(r[m + "_std"]) else "")
                if r["method"] != "teacher" and np.isclose(r[m], best[m]):
                    cell = f"**{cell}**" if fmt == "md" else f"\\textbf{{{cell}}}"
                p = r.get(f"p_{m}")
                row[m] = cell + (" †" if p is not None and pd.notna(p) and float(p) < ALPHA else "")
            gain = r.get(f"gain_{metric}_pct")
            row[gain_col] = "" if pd.isna(gain) or r["method"] == reference else f"{gain:+.1f}%"
            rows.append(row)
    table = pd.DataFrame(rows)
    if fmt == "md":
        return table.to_markdown(index=False) + (f"\n\n{notes}" if notes else "")
    if fmt == "latex":
        return _latex(table, notes)
    raise ValueError(f"--format {fmt!r}: choose csv, md or latex")


def render_timing(tm: pd.DataFrame, fmt: str = "md") -> str:
    """The training-cost table: median epoch seconds, overhead over ``student``, precompute, evaluation, memory."""
    if fmt == "csv":
        return tm.to_csv(index=False, float_format="%.6g")
    table = tm.copy()
    for col, spec in (("epoch_s", "{:.3f}"), ("overhead_x", "{:.2f}×"), ("precompute_s", "{:.2f}"),
                      ("eval_s", "{:.1f}"), ("train_s", "{:.1f}"), ("peak_rss_mb", "{:.0f}")):
        table[col] = [("" if pd.isna(v) else spec.format(v)) for v in table[col]]
    if fmt == "md":
        return table.to_markdown(index=False)
    if fmt == "latex":
        return _latex(table)
    raise ValueError(f"--format {fmt!r}: choose csv, md or latex")
