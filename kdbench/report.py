"""``kdbench report OUT``: ``OUT/report.md`` and PNG figures from the cell records.

Figures (under ``OUT/figures``), one set per dataset/backbone:

* ``gain__<dataset>__<backbone>.png``: the gain in the chosen metric over ``student`` per method, mean ± std over
  the seeds (gains are paired per seed, so the error bars show the spread of the gain itself, not of the metric);
* ``gain_vs_cost__<dataset>__<backbone>.png``: mean gain against ``overhead_x`` (epoch time over the student's);
* ``curves__<dataset>__<backbone>__seed<k>.png``: the validation metric per epoch of every method.

Everything is derived from ``OUT/cells/*.json``; matplotlib (the ``plot`` extra) is imported only here.
"""
from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .evaluate import METRICS
from .leaderboard import leaderboard, load_records, ok_records, render, render_timing, table_notes, timing
from .records import atomic_write_bytes, atomic_write_text, safe_name
from .significance import read_paired_tests

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import ModuleType

    from matplotlib.figure import Figure

GAIN_COLUMNS = ["dataset", "backbone", "method", "seed", "gain_pct"]
SUMMARY_COLUMNS = ["dataset", "backbone", "method", "seeds", "gain_mean_pct", "gain_std_pct"]
NOT_DISTILLERS = ("teacher", "student")


def _pyplot() -> ModuleType:
    try:
        import matplotlib
    except ImportError as exc:
        # ModuleNotFoundError is an ImportError that the CLI already turns into a clean exit code 2
        raise ModuleNotFoundError("kdbench report needs matplotlib: pip install 'kdbench[plot]'") from exc
    matplotlib.use("Agg")  # files only: never open a window, work on headless machines
    import matplotlib.pyplot as plt
    return plt



def _name(r: dict) -> str:
    ds = r.get("dataset")
    return ds.get("name", "?") if isinstance(ds, dict) else str(ds)


def per_seed_gains(records: list[dict], metric: str = "ndcg@20") -> pd.DataFrame:
    """Gain in % of every non-student cell over the student of the same dataset, backbone and seed.

    Pairing per seed removes the seed-to-seed variation that method and student share; a seed without a student
    record has no reference and is left out. The teacher is kept (callers decide whether to show it).
    """
    rows = [{"dataset": _name(r), "backbone": r["backbone"], "method": r["method"], "seed": r["seed"],
             "value": r["metrics"][metric]} for r in ok_records(records) if metric in r["metrics"]]
    if not rows:
        return pd.DataFrame(columns=GAIN_COLUMNS)
    df = pd.DataFrame(rows).drop_duplicates(["dataset", "backbone", "method", "seed"], keep="last")
    ref = df[df["method"] == "student"][["dataset", "backbone", "seed", "value"]].rename(columns={"value": "ref"})
    out = df[df["method"] != "student"].merge(ref, on=["dataset", "backbone", "seed"], how="inner")
    out["gain_pct"] = (out["value"] / out["ref"] - 1.0) * 100.0
    return out.sort_values(["dataset", "backbone", "method", "seed"])[GAIN_COLUMNS].reset_index(drop=True)


def summarize_gains(gains: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1, NaN with one seed) of the per-seed gains per dataset/backbone/method."""
    if gains.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    g = gains.groupby(["dataset", "backbone", "method"], sort=True)["gain_pct"]
    out = pd.concat([g.count().rename("seeds"), g.mean().rename("gain_mean_pct"),
                     g.std(ddof=1).rename("gain_std_pct")], axis=1).reset_index()
    return out[SUMMARY_COLUMNS]


def _save(plt: ModuleType, fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)  # a long report opens many figures; pyplot keeps every unclosed one alive
    atomic_write_bytes(path, lambda fh: fh.write(buf.getvalue()))
    return path


def plot_gain_bars(summary: pd.DataFrame, dataset: str, backbone: str, metric: str, path: Path) -> Path | None:
    """Bars of the mean gain per distillation method with ±std error bars (only where there are ≥ 2 seeds)."""
    s = summary[(summary["dataset"] == dataset) & (summary["backbone"] == backbone)
                & ~summary["method"].isin(NOT_DISTILLERS)]
    if s.empty:
        return None
    plt = _pyplot()
    x = np.arange(len(s))
    mean = s["gain_mean_pct"].to_numpy(dtype=float)
    std = s["gain_std_pct"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(s) + 2), 3.5))
    ax.bar(x, mean, color=np.where(mean >= 0, "tab:blue", "tab:red"))
    has = np.isfinite(std)
    if has.any():  # a NaN yerr draws nothing on some matplotlib versions and warns on others
        ax.errorbar(x[has], mean[has], yerr=std[has], fmt="none", ecolor="black", capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, s["method"].tolist(), rotation=45, ha="right")
    ax.set_ylabel(f"{metric} gain over student (%)")
    ax.set_title(f"{dataset} / {backbone} (n seeds: {', '.join(map(str, sorted(set(s['seeds']))))})")
    return _save(plt, fig, path)


def overhead_axis_scale(overheads: pd.Series | np.ndarray | Sequence[float]) -> str:
    """``log`` when the overheads span more than a factor of 10 (expert methods at ~100× beside response methods at
    2–4× would otherwise crowd into one corner), else ``linear``."""
    lo, hi = min(1.0, float(np.min(overheads))), float(np.max(overheads))
    return "log" if lo > 0 and hi / lo > 10 else "linear"


def plot_gain_vs_cost(summary: pd.DataFrame, tm: pd.DataFrame, dataset: str, backbone: str, metric: str,
                      path: Path) -> Path | None:
    """Mean gain against training overhead (epoch time / student's epoch time), one labelled point per method."""
    s = summary[(summary["dataset"] == dataset) & (summary["backbone"] == backbone)
                & ~summary["method"].isin(NOT_DISTILLERS)]
    t = tm[(tm["dataset"] == dataset) & (tm["backbone"] == backbone)][["method", "overhead_x"]]
    pts = s.merge(t, on="method", how="inner")
    pts = pts[np.isfinite(pts["overhead_x"].astype(float)) & np.isfinite(pts["gain_mean_pct"].astype(float))]
    if pts.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(pts["overhead_x"], pts["gain_mean_pct"], color="tab:blue")
    for _, r in pts.iterrows():
        ax.annotate(r["method"], (r["overhead_x"], r["gain_mean_pct"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(1, color="grey", linewidth=0.8, linestyle=":")  # the student's own cost
    scale = overhead_axis_scale(pts["overhead_x"].astype(float))
    ax.set_xscale(scale)
    ax.set_xlabel("epoch time overhead over student (×" + (", log scale)" if scale == "log" else ")"))
    ax.set_ylabel(f"mean {metric} gain over student (%)")
    ax.set_title(f"{dataset} / {backbone}")
    return _save(plt, fig, path)


def history_key(record: dict) -> str | None:
    """The validation key of a record's history: ``valid_<early-stop metric>``, else any ``valid_*`` present
    (older records or a changed early-stop metric)."""
    hist = record.get("history") or []
    keys = {k for h in hist for k in h if k.startswith("valid_")}
    early = ((record.get("config") or {}).get("train") or {}).get("early_stop", "ndcg@20")
    if f"valid_{early}" in keys:
        return f"valid_{early}"
    return min(keys) if keys else None


def plot_curves(records: list[dict], dataset: str, backbone: str, seed: int, path: Path) -> Path | None:
    """Validation metric per epoch of every method for one seed; the teacher dashed, as a reference ceiling."""
    cells = sorted((r for r in ok_records(records) if _name(r) == dataset and r["backbone"] == backbone
                    and r["seed"] == seed and history_key(r)), key=lambda r: r["method"])
    if not cells:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = set()
    for r in cells:
        key = history_key(r)
        keys.add(key)
        pts = [(h["epoch"], h[key]) for h in r["history"] if key in h and h[key] is not None]
        if not pts:
            continue
        ep, val = zip(*pts)
        style = {"linestyle": "--", "color": "black"} if r["method"] == "teacher" else {}
        ax.plot(ep, val, label=r["method"], linewidth=1.2, **style)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # short runs otherwise get ticks like 0.25
    ax.set_ylabel(" / ".join(sorted(keys)))
    ax.set_title(f"{dataset} / {backbone}, seed {seed}")
    ax.legend(fontsize=7, ncol=2)
    return _save(plt, fig, path)


def _uniq(values: Iterable) -> list:
    vals = {v for v in values if v is not None}
    try:
        return sorted(vals)
    except TypeError:  # mixed types in hand-edited records: any stable order will do
        return sorted(vals, key=str)


def _date_range(records: list[dict]) -> str:
    def parse(s: str | None) -> datetime | None:
        try:
            return datetime.fromisoformat(s)
        except (TypeError, ValueError):
            return None
    starts = [d for d in (parse(r.get("started_at")) for r in records) if d is not None]
    ends = [d for d in (parse(r.get("finished_at")) for r in records) if d is not None]
    try:
        lo = min(starts).isoformat() if starts else "?"
        hi = max(ends).isoformat() if ends else "?"
    except TypeError:  # naive and aware timestamps mixed: fall back to the raw text
        lo, hi = (min(r.get("started_at") or "?" for r in records), max(r.get("finished_at") or "?" for r in records))
    return f"{lo} → {hi}"


def compute_hours(records: list[dict]) -> dict[str, float]:
    """Hours of cell time per backbone: training epochs, evaluation and precomputation summed over the ok records
    (a resumed cell counts its epochs before the resume too; time paused or waiting for a teacher is not counted)."""
    hours: dict[str, float] = {}
    for r in ok_records(records):
        t, backbone = r.get("timing") or {}, str(r.get("backbone"))
        secs = sum(float(t.get(k) or 0.0) for k in ("train_s", "eval_s", "precompute_s"))
        hours[backbone] = hours.get(backbone, 0.0) + secs / 3600
    return hours


def run_summary(records: list[dict]) -> list[str]:
    """Provenance lines: protocol, datasets, seeds, commits, machine, dates and compute time of the records."""
    envs = [r.get("environment") or {} for r in records]
    commits = _uniq(f"{e['git_commit'][:12]}{'+dirty' if e.get('git_dirty') else ''}"
                    for e in envs if e.get("git_commit"))
    machines = _uniq(f"{e.get('cpu', '?')}, {e.get('threads', '?')} thread(s)" for e in envs if e)
    protocols = _uniq(r.get("protocol") or r.get("profile") for r in records)
    n_ok = len(ok_records(records))
    hours = compute_hours(records)
    return [f"- protocol: {'; '.join(map(str, protocols)) or '?'}",
            (f"- datasets: {', '.join(_uniq(_name(r) for r in records)) or '?'}; "
             f"backbones: {', '.join(_uniq(r.get('backbone') for r in records)) or '?'}"),
            f"- seeds: {', '.join(map(str, _uniq(r.get('seed') for r in records))) or '?'}",
            f"- commit(s): {', '.join(commits) or 'unknown'}",
            f"- machine: {'; '.join(machines) or 'unknown'}",
            f"- dates: {_date_range(records)}",
            f"- cells: {n_ok} ok, {len(records) - n_ok} not ok",
            f"- compute: {sum(hours.values()):.1f} h of cell time (training, evaluation, precomputation; "
            f"{', '.join(f'{b} {h:.1f} h' for b, h in sorted(hours.items())) or 'none'})"]


def gain_table(summary: pd.DataFrame, dataset: str, backbone: str) -> str:
    s = summary[(summary["dataset"] == dataset) & (summary["backbone"] == backbone)
                & ~summary["method"].isin(NOT_DISTILLERS)]
    rows = [{"method": r["method"], "seeds": int(r["seeds"]),
             "gain %": f"{r['gain_mean_pct']:+.2f}" + (f" ± {r['gain_std_pct']:.2f}"
                                                       if pd.notna(r["gain_std_pct"]) else "")}
            for _, r in s.iterrows()]
    # numparse would turn "+30.32" into 30.32 and drop the sign that the column is about
    if not rows:
        return "_no method paired with a student seed_"
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def failed_lines(records: list[dict]) -> list[str]:
    return [f"- `{_name(r)} / {r.get('backbone')} / {r.get('method')} / seed {r.get('seed')}`: "
            f"{r.get('status')}: {r.get('error') or 'no error recorded'}"
            for r in records if r.get("status") != "ok"]


def write_report(out: str | Path, metric: str = "ndcg@20") -> Path:
    """Write ``OUT/report.md`` and its figures under ``OUT/figures``; returns the report's path."""
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    _pyplot()  # fail before writing anything when the plot extra is missing
    out = Path(out)
    figdir = out / "figures"
    records = load_records(out)
    ok = ok_records(records)
    lb, tm = leaderboard(records, known_tests=read_paired_tests(out)), timing(records)
    summary = summarize_gains(per_seed_gains(records, metric))

    lines = [f"<!-- generated by `kdbench report` from {len(records)} records; do not edit -->",
             f"# kdbench report: {out.resolve().name}", "", *run_summary(records), "",
             f"## Leaderboard ({metric})", "",
             render(lb, "md", metric, table_notes(records, lb=lb)) if not lb.empty else "_no finished cells_",
             "", "## Training cost", "", render_timing(tm, "md") if not tm.empty else "_no finished cells_", ""]

    pairs = sorted({(_name(r), r["backbone"]) for r in ok})
    lines += [f"## Gain in {metric} over the student (paired per seed, mean ± std over seeds)", ""]
    for d, b in pairs:
        lines += [f"### {d} / {b}", "", gain_table(summary, d, b), ""]
        stem = f"{safe_name(d)}__{safe_name(b)}"
        for kind, path in (("gain", plot_gain_bars(summary, d, b, metric, figdir / f"gain__{stem}.png")),
                           ("gain vs cost", plot_gain_vs_cost(summary, tm, d, b, metric,
                                                               figdir / f"gain_vs_cost__{stem}.png"))):
            if path is not None:
                lines += [f"![{kind} {d}/{b}](figures/{path.name})", ""]

    lines += ["## Training curves (validation, per epoch)", ""]
    for d, b in pairs:
        for seed in _uniq(r["seed"] for r in ok if _name(r) == d and r["backbone"] == b):
            path = plot_curves(records, d, b, seed, figdir / f"curves__{safe_name(d)}__{safe_name(b)}__seed{seed}.png")
            if path is not None:
                lines += [f"![curves {d}/{b} seed {seed}](figures/{path.name})", ""]

    failed = failed_lines(records)
    lines += ["## Failed cells", "", *(failed or ["none"]), ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report
