"""Command line: ``kdbench run | list | leaderboard | timing | report | analyze freq``."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .backbones import BACKBONES
from .config import PROFILES, ConfigError, load_config_file, parse_set
from .datasets import DATASETS, DatasetError
from .executors import ExecutorError
from .methods import BUILTIN_METHODS, CORE_METHODS, DISTILLERS
from .registry import import_plugin_module

if TYPE_CHECKING:
    import pandas as pd


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def expand_methods(names: list[str]) -> list[str]:
    """``all`` → every built-in method; a name with ``*`` → the registered names it matches (fnmatch)."""
    out: list[str] = []
    for name in names:
        found = list(BUILTIN_METHODS) if name == "all" else DISTILLERS.list(name) if "*" in name else [name]
        if not found:
            raise ConfigError(f"--methods {name!r} matches no registered method; see `kdbench list methods`")
        out += [m for m in found if m not in out]
    return out


def _seeds(text: str | int | list) -> list[int]:
    vals = text if isinstance(text, list) else _csv(str(text))
    try:
        return [int(v) for v in vals]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def _add_filters(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("filters", "tables of a subset of the records, printed only (OUT's leaderboard.csv "
                             "and timing.csv always hold every record); the teacher and student rows, which gains "
                             "and overheads refer to, are kept whatever --methods says")
    for name in ("datasets", "backbones", "methods"):
        f.add_argument(f"--{name}", type=_csv, metavar="A,B", help=f"only these {name}")
    f.add_argument("--seeds", type=_seed_arg, metavar="0,1",
                   help="only these seeds, e.g. those that every method of a partly run grid has finished")


def _seed_arg(text: str) -> list[int]:
    try:
        return _seeds(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--seeds ")) from None


def _filters(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("datasets", "backbones", "methods", "seeds") if getattr(args, k)}


def _reference(args: argparse.Namespace) -> str:
    """The method that gains and tests refer to: ``--against`` (leaderboard only) or ``student``."""
    return getattr(args, "against", None) or "student"


def _tables(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """(leaderboard, timing, records) of ``args.out``: written to OUT when unfiltered and against ``student``, only
    returned otherwise."""
    from .leaderboard import leaderboard, load_records, ok_records, select_records, timing, write_tables
    from .significance import read_paired_tests

    _need_cells(args.out)
    filters = _filters(args)
    reference = _reference(args)
    recs = load_records(args.out)  # read once: for the tables and for their footnote
    if not filters and reference == "student":
        return (*write_tables(args.out, recs), recs)
    recs = select_records(recs, **filters, reference=reference)
    if not recs:
        shown = ", ".join(f"--{k} {','.join(map(str, v))}" for k, v in filters.items())
        raise ConfigError(f"{args.out}: no record matches {shown}")
    finished = {r["method"] for r in ok_records(recs)}
    if reference not in finished:
        raise ConfigError(f"--against {reference}: no finished {reference} cell among the records shown "
                          f"(methods there: {', '.join(sorted(finished)) or 'none'})")
    return leaderboard(recs, reference, read_paired_tests(args.out)), timing(recs), recs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdbench", description=__doc__)
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run a grid of cells (default: the embedded synthetic dataset, quick profile)")
    r.add_argument("--datasets", help="comma list of dataset names or folders (default: synthetic)")
    r.add_argument("--backbones", help="comma list (default: bprmf)")
    r.add_argument("--methods", help=f"comma list, 'all' (every built-in) or patterns like 'freqd*' "
                   f"(default: {','.join(CORE_METHODS)})")
    r.add_argument("--seeds", help="comma list of ints (default: 0)")
    r.add_argument("--profile", choices=sorted(PROFILES), help="training budget (default: quick)")
    r.add_argument("--out", help="output directory (default: kdbench-out)")
    r.add_argument("--data-root", help="folder holding the real datasets (default: $KDBENCH_DATA)")
    r.add_argument("--cache-dir", help="teacher cache (default: $KDBENCH_CACHE or ~/.cache/kdbench)")
    r.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set freqd.alpha=0.3 --set student.lr=1e-3 (repeatable)")
    r.add_argument("--config", help="TOML file with run options (datasets, methods, workers, ...; underscores "
                   "for dashes) and a [set] table")
    r.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module or .py file that registers extra methods/backbones/datasets")
    r.add_argument("--rerun", action="store_true", help="rerun cells that already have an ok record")
    r.add_argument("--dry-run", action="store_true", help="print the planned cells and their state; train nothing")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-cell log lines")
    r.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                   help="save a running teacher's or cell's training state this often, so that a killed run resumes "
                   "mid-training (default 600; 0: every epoch); kept under the cache dir, removed when done")
    ex = r.add_argument_group("executors")
    ex.add_argument("--executor", choices=["local", "dask", "slurm"], help="where cells run (default: local)")
    ex.add_argument("--workers", type=int, help="parallel cells (local processes or dask workers; default 1); "
                    "each gets cores/workers threads")
    ex.add_argument("--threads", type=int, help="intra-op (torch) threads per cell (default: cores/workers; "
                    "--slurm-cpus on slurm); 1 when other work already keeps the cores busy")
    ex.add_argument("--scheduler", help="dask scheduler address (default: a local cluster of --workers)")
    ex.add_argument("--slurm-partition")
    ex.add_argument("--slurm-time", type=int, help="minutes per job (default 1440)")
    ex.add_argument("--slurm-gpus", type=int, help="GPUs per job (default 0)")
    ex.add_argument("--slurm-cpus", type=int, help="CPUs per job (default 2)")
    ex.add_argument("--slurm-mem-gb", type=int)
    ex.add_argument("--slurm-array-parallelism", type=int, help="jobs of an array running at once")
    ex.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"],
                    help="submitit cluster (default: slurm when available; local/debug run the jobs here)")

    ls = sub.add_parser("list", help="list methods, backbones or datasets with their hyperparameters")
    ls.add_argument("kind", nargs="?", choices=["methods", "backbones", "datasets"], default=None)
    ls.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")

    lb = sub.add_parser("leaderboard", help="re-derive the tables of an output directory from its records")
    lb.add_argument("out", help="a run's output directory (the one holding cells/)")
    lb.add_argument("--format", choices=["csv", "md", "latex"], default="md")
    lb.add_argument("--metric", default="ndcg@20",
                    help="the metric shown first, with its gain over the student (default: ndcg@20)")
    lb.add_argument("--against", metavar="METHOD",
                    help="gains and significance tests against METHOD instead of student, e.g. freqd.nofilter "
                         "(FreqD's control) or the best baseline (spec §3.6); printed only, with the same columns")
    _add_filters(lb)

    tm = sub.add_parser("timing", help="print the training-cost table of an output directory (overhead vs student)")
    tm.add_argument("out", help="a run's output directory (the one holding cells/)")
    tm.add_argument("--format", choices=["csv", "md", "latex"], default="md")
    _add_filters(tm)

    rp = sub.add_parser("report", help="write OUT/report.md and PNG figures (needs the 'plot' extra: matplotlib)")
    rp.add_argument("out")
    rp.add_argument("--metric", default="ndcg@20")

    an = sub.add_parser("analyze", help="analyses of a finished grid")
    an_sub = an.add_subparsers(dest="analysis", required=True)
    fq = an_sub.add_parser("freq", help="embedding energy per frequency band of the normalised graph Laplacian, "
                           "for the teacher and every student of a dataset/backbone (CSV + PNG under OUT/analysis)")
    fq.add_argument("out")
    fq.add_argument("--dataset", required=True)
    fq.add_argument("--backbone", required=True)
    fq.add_argument("--seed", type=int, default=0)
    fq.add_argument("--bands", choices=["equal_width", "equal_count"], default="equal_width")
    fq.add_argument("--mode", choices=["auto", "exact", "chebyshev"], default="auto",
                    help="exact eigendecomposition (small graphs) or a Chebyshev approximation (auto: by size)")
    fq.add_argument("--data-root", help="folder holding the real datasets (default: $KDBENCH_DATA)")
    fq.add_argument("--cache-dir", help="teacher cache (default: $KDBENCH_CACHE or ~/.cache/kdbench)")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .grid import GridRunner  # imports torch-heavy modules only when running
    from .leaderboard import render
    from .runtime import flush_denormals

    flush_denormals()  # before the first parallel op, so that the intra-op threads inherit it (train.fit sets it too)

    file_cfg = load_config_file(args.config) if args.config else {}
    for mod in file_cfg.get("imports", []) + args.imports:
        import_plugin_module(mod)
    pick = lambda name, default: getattr(args, name) if getattr(args, name) is not None else \
        file_cfg.get(name, default)  # noqa: E731
    as_list = lambda v: v if isinstance(v, list) else _csv(v)  # noqa: E731
    datasets = as_list(pick("datasets", ["synthetic"]))
    backbones = as_list(pick("backbones", ["bprmf"]))
    methods = expand_methods(as_list(pick("methods", list(CORE_METHODS))))
    seeds = _seeds(pick("seeds", [0]))
    overrides = {**file_cfg.get("set", {}), **parse_set(args.set)}
    if not args.quiet:
        logging.getLogger("kdbench").setLevel(logging.INFO)
    workers = pick("workers", 1)
    runner = GridRunner(pick("out", "kdbench-out"), pick("data_root", None), pick("cache_dir", None),
                        pick("device", "cpu"), progress=not args.quiet and sys.stderr.isatty() and workers == 1,
                        quiet=args.quiet, rerun=args.rerun, imports=tuple(file_cfg.get("imports", []) + args.imports),
                        check_device=pick("executor", "local") != "slurm",  # a login node may have no GPU
                        checkpoint_every_s=pick("checkpoint_every", 600.0))
    if args.dry_run:
        from tabulate import tabulate
        rows = runner.dry_run(datasets, backbones, methods, seeds, pick("profile", "quick"), overrides)
        print(tabulate(rows, headers="keys", tablefmt="github"))
        return 0
    from .executors import make_executor
    threads = pick("threads", None)
    executor = make_executor(pick("executor", "local"), workers, pick("scheduler", None), runner.out, threads,
                             partition=args.slurm_partition, time_min=args.slurm_time, gpus=args.slurm_gpus,
                             cpus=args.slurm_cpus, mem_gb=args.slurm_mem_gb,
                             array_parallelism=args.slurm_array_parallelism, cluster=args.slurm_cluster)
    threads_before = torch.get_num_threads()
    if executor is None and threads:  # cells run in this process
        torch.set_num_threads(threads)
    try:
        summary = runner.run(datasets, backbones, methods, seeds, pick("profile", "quick"), overrides, executor)
    finally:
        torch.set_num_threads(threads_before)
    from .leaderboard import leaderboard, load_records, table_notes
    from .significance import read_paired_tests
    recs = load_records(runner.out)
    lb = leaderboard(recs, known_tests=read_paired_tests(runner.out))
    print(render(lb, "md", notes=table_notes(recs, lb=lb)))
    print(f"\n{len(summary.ok)} cells run, {len(summary.skipped)} skipped (done before), {len(summary.busy)} "
          f"running elsewhere, {len(summary.failed)} failed; records in {runner.out / 'cells'}", file=sys.stderr)
    return min(len(summary.failed), 100)


def _fields(cls: type) -> str:
    return ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))


def cmd_list(args: argparse.Namespace) -> int:
    for mod in args.imports:
        import_plugin_module(mod)
    registries = {"methods": DISTILLERS, "backbones": BACKBONES, "datasets": DATASETS}
    for kind in [args.kind] if args.kind else list(registries):
        print(f"{kind}:")
        if kind == "methods":
            for name in DISTILLERS.list():
                cls = DISTILLERS.get(name)
                defaults = ", ".join(f"{k}={v!r}" for k, v in cls.default_params("bprmf").items())
                print(f"  {name:16s} {cls.description}\n  {'':16s} defaults: {defaults}")
                for where, over in {**cls.backbone_defaults, **cls.dataset_defaults}.items():
                    print(f"  {'':16s} on {where}: {over}")
        elif kind == "backbones":
            for name in BACKBONES.list():
                cls = BACKBONES.get(name)
                print(f"  {name:16s} {cls.description}\n  {'':16s} defaults: {_fields(cls.Config)}")
        else:
            for name in DATASETS.list():
                print(f"  {name:16s} {DATASETS.get(name).description}")
            print(f"  {'<folder>':16s} any folder with train/test[/valid] or ratings files (README: formats)")
        for name, why in registries[kind].broken_plugins.items():
            print(f"  {name:16s} BROKEN plugin: {why}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import render, table_notes

    lb, _, recs = _tables(args)
    print(render(lb, args.format, args.metric, table_notes(recs, _reference(args), lb), _reference(args)))
    return 0


def _need_cells(out: str) -> None:
    if not (Path(out) / "cells").is_dir():
        raise ConfigError(f"{out}: no cells/ folder; is this a kdbench run output directory?")


def cmd_timing(args: argparse.Namespace) -> int:
    from .leaderboard import render_timing

    _, tm, _ = _tables(args)
    print(render_timing(tm, args.format))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    _need_cells(args.out)
    print(write_report(args.out, args.metric))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .spectrum import analyze_freq

    _need_cells(args.out)
    for path in analyze_freq(args.out, args.dataset, args.backbone, args.seed, bands=args.bands, mode=args.mode,
                             data_root=args.data_root, cache_dir=args.cache_dir):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        rc = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard, "timing": cmd_timing,
              "report": cmd_report, "analyze": cmd_analyze}[args.command](args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return rc
    except (ConfigError, DatasetError, ExecutorError, KeyError, FileNotFoundError, ModuleNotFoundError,
            ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"kdbench: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`kdbench leaderboard OUT | head`): stop without a traceback
        # stdout is flushed again at exit; pointing it at devnull keeps that flush quiet (the `signal` docs recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
