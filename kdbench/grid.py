"""The grid runner: datasets × backbones × methods × seeds, teachers first, one record per cell.

Everything that can be wrong with the request (names, overrides, dataset files) is checked before any training.
A cell whose record exists with status ``ok`` and the same config hash is skipped; a cell that raises is recorded
as ``failed`` and the grid goes on.
"""
from __future__ import annotations

import os
import random
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock, Timeout

from . import __version__
from .backbones import BACKBONES
from .checkpoint import TrainingCheckpoint, plugin_source_version, source_version
from .config import check_overrides, protocol_text, resolve_cell, resolve_data
from .datasets import Dataset, load_dataset
from .evaluate import EvalResult, evaluate, evaluate_model
from .leaderboard import write_tables
from .methods import DISTILLERS
from .records import cell_stem, environment, git_commit, read_record, set_aside, write_eval_npz, write_json
from .runtime import reset_peak_memory
from .teacher import Teacher, TeacherCache, sha256_json
from .train import RoleConfig, TrainConfig, fit

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .backbones import Backbone
    from .executors import Executor

SCHEMA = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class GridSummary:
    ok: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    busy: list = field(default_factory=list)   # locked by another process running the same grid


def _role(cfg: dict) -> RoleConfig:
    return RoleConfig(**{k: v for k, v in cfg.items() if k != "backbone"})


def _train_cfg(cfg: dict) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in cfg["train"].items() if k != "profile"})


def _build(ds: Dataset, backbone: str, role_cfg: dict, seed: int, device: torch.device) -> Backbone:
    cls = BACKBONES.get(backbone)
    seed_everything(seed)  # init independent of any RNG use before it (spec §6)
    return cls(ds, role_cfg["dim"], cls.Config(**role_cfg["backbone"])).to(device)


def teacher_spec(cfg: dict, ds: Dataset, device: torch.device) -> dict:
    """Everything that determines a trained teacher (the cache key's inputs; the device type too, since CPU and
    CUDA generators draw different streams). A plugin backbone's own file is part of it: the cache versions only
    kdbench's training code, and an edited plugin must not reuse the teacher its old code trained."""
    spec = {"dataset": ds.fingerprint, "data": cfg["data"], "backbone": cfg["backbone"], "teacher": cfg["teacher"],
            "train": {k: v for k, v in cfg["train"].items() if k != "profile"}, "seed": cfg["seed"],
            "device": device.type}
    plugin = plugin_source_version(BACKBONES.get(cfg["backbone"]))
    return spec if plugin is None else {**spec, "backbone_code": plugin}


def _teacher_info(key: str, manifest: dict, eval_cfg: dict) -> dict:
    """What a record says of its teacher, from the cache manifest. The cache key leaves the evaluation settings
    out (they do not change a trained teacher), so the manifest's test metrics are quoted only when they were
    computed with the record's own settings; the teacher cell's record always evaluates with them."""
    same = manifest.get("eval") == eval_cfg
    return {"key": key, "metrics": manifest["metrics"] if same else None, "valid_metrics": manifest["valid_metrics"],
            "best_epoch": manifest["best_epoch"]}


def config_hash(cfg: dict, ds: Dataset) -> str:
    return sha256_json({"config": cfg, "dataset": ds.fingerprint, "kdbench": __version__})


@dataclass(frozen=True)
class CellTask:
    """One cell to run, in plain data (picklable for any executor)."""
    kind: str                 # "teacher" or "method"
    dataset: str
    data_overrides: dict      # the ``data.*`` overrides the dataset is loaded with
    config: dict              # the resolved cell configuration
    stem: str                 # the cell's record name
    dependents: tuple = ()    # a teacher's: (stem, config hash) of the cells of its group that need a teacher


@dataclass(frozen=True)
class RunnerSettings:
    """What a worker process needs to rebuild the runner (plugin modules are imported again there)."""
    out: str
    data_root: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    rerun: bool = False
    quiet: bool = False
    imports: tuple = ()
    checkpoint_every_s: float = 600.0


class GridRunner:
    def __init__(self, out: str | Path, data_root: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu",
                 progress: bool = False, quiet: bool = False, rerun: bool = False, imports: tuple = (),
                 check_device: bool = True, checkpoint_every_s: float = 600.0) -> None:
        self.out = Path(out)
        self.data_root = data_root or os.environ.get("KDBENCH_DATA")
        self.cache = TeacherCache(cache_dir)
        # what a worker elsewhere needs, resolved here: absolute paths, no environment of its own
        self.settings = RunnerSettings(
            str(self.out.resolve()), str(Path(self.data_root).resolve()) if self.data_root else None,
            str(self.cache.root.resolve()), device, rerun, quiet,
            tuple(str(Path(m).resolve()) if m.endswith(".py") or os.sep in m else m for m in imports),
            checkpoint_every_s)
        self.device = torch.device(device)
        if check_device and self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        self.progress = progress
        self.log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.rerun = rerun
        self.checkpoint_every_s = checkpoint_every_s
        git_commit()  # read once now: the code that runs is the code at start, whatever is committed meanwhile
        self._datasets: dict[tuple, Dataset] = {}
        self._teachers: dict[str, tuple] = {}
        self._failed_teachers: dict[str, str] = {}   # key → error: a teacher that failed is not retried per cell

    # -- planning -------------------------------------------------------------------------------------------
    def plan(self, datasets: list[str], backbones: list[str], methods: list[str], seeds: list[int], profile: str,
             overrides: dict) -> list[tuple[str, Dataset, dict]]:
        """Validate the whole request and return (dataset as requested, dataset, resolved cell config) triples,
        teachers' groups in order; raises before any training on a bad name, override or dataset file."""
        for b in backbones:
            BACKBONES.get(b)
        for m in methods:
            DISTILLERS.get(m)
        check_overrides(overrides, backbones, methods)
        loaded = [(d, self.dataset(d, overrides)) for d in datasets]
        return [(d, ds, resolve_cell(ds.name, b, m, s, profile, overrides))
                for d, ds in loaded for b in backbones for s in seeds for m in methods]

    def dataset(self, name: str, overrides: dict) -> Dataset:
        cfg = resolve_data(overrides)
        key = (name, cfg)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(name, self.data_root, cfg)
        return self._datasets[key]

    def dry_run(self, datasets: list[str], backbones: list[str], methods: list[str], seeds: list[int],
                profile: str = "quick", overrides: dict | None = None) -> list[dict]:
        """The plan without training: every cell with its state (done / to run / failed before) and whether its
        teacher is cached."""
        overrides = overrides or {}
        rows = []
        for _, ds, cfg in self.plan(datasets, backbones, methods, seeds, profile, overrides):
            stem = cell_stem(ds.name, cfg["backbone"], cfg["method"]["name"], cfg["seed"])
            rec = read_record(self.out / "cells" / f"{stem}.json")
            chash = config_hash(cfg, ds)
            key = self.cache.key(teacher_spec(cfg, ds, self.device))
            if rec is None:
                state = "to run"
            elif rec.get("config_hash") != chash:
                state = "to run (config changed)"
            else:
                state = "done" if rec.get("status") == "ok" else "failed before"
            if state != "done":
                epoch = self._cell_checkpoint(stem, chash, key, DISTILLERS.get(cfg["method"]["name"])).saved_epoch()
                state += f" (resumes at epoch {epoch})" if epoch is not None else ""
            if self.cache.has(key):
                teacher = "cached"
            else:
                epoch = self._checkpoint(cell_stem(ds.name, cfg["backbone"], "teacher", cfg["seed"]),
                                         {"teacher": key}).saved_epoch()
                teacher = "to train" + (f" (resumes at epoch {epoch})" if epoch is not None else "")
            rows.append({"cell": stem, "state": state, "teacher": teacher})
        return rows

    # -- running --------------------------------------------------------------------------------------------
    def tasks(self, datasets: list[str], backbones: list[str], methods: list[str], seeds: list[int],
              profile: str = "quick", overrides: dict | None = None) -> tuple[list[CellTask], list[CellTask]]:
        """The teacher cells (one per dataset × backbone × seed) and the method cells, as self-contained tasks
        that any process can run."""
        overrides = overrides or {}
        data_over = {k: v for k, v in overrides.items() if k.startswith("data.")}
        groups: dict[tuple, tuple] = {}   # (dataset, backbone, seed) → (name, cfg, dependents)
        cells = []
        for name, ds, cfg in self.plan(datasets, backbones, methods, seeds, profile, overrides):
            _, _, dependents = groups.setdefault((ds.name, cfg["backbone"], cfg["seed"]), (name, cfg, []))
            stem = cell_stem(ds.name, cfg["backbone"], cfg["method"]["name"], cfg["seed"])
            if DISTILLERS.get(cfg["method"]["name"]).needs_teacher:
                dependents.append((stem, config_hash(cfg, ds)))
            cells.append(CellTask("method", name, data_over, cfg, stem))
        teachers = [CellTask("teacher", name, data_over, cfg, cell_stem(ds_name, backbone, "teacher", seed),
                             tuple(dependents))
                    for (ds_name, backbone, seed), (name, cfg, dependents) in groups.items()]
        return teachers, cells

    def run(self, datasets: list[str], backbones: list[str], methods: list[str], seeds: list[int],
            profile: str = "quick", overrides: dict | None = None, executor: Executor | None = None) -> GridSummary:
        """Run the grid: all teachers first, then every method cell (seed by seed), through ``executor`` (a
        ``kdbench.executors.Executor``; None = in this process, one cell after another): in one map when its
        workers take tasks in order, else in two phases."""
        teachers, cells = self.tasks(datasets, backbones, methods, seeds, profile, overrides)
        summary = GridSummary()
        n = len(teachers) + len(cells)
        numbered = [(f"[{i}/{n}]", t) for i, t in enumerate(teachers + cells, 1)]
        # One map only when the teachers alone keep every worker busy: with fewer, a worker with no teacher left
        # would take a cell of a teacher still in training and wait on its lock while that teacher trains on a
        # share of the cores; two phases give a lone teacher all of them (LocalExecutor.map).
        one_map = executor is not None and executor.pulls_in_order and len(teachers) >= executor.workers
        phases = (numbered,) if one_map else (numbered[:len(teachers)], numbered[len(teachers):])
        try:
            for phase in phases:
                if executor is None:
                    outcomes = [self.execute(task, tag) for tag, task in phase]
                else:
                    outcomes = executor.map(self.settings, phase)
                for stem, outcome in outcomes:
                    getattr(summary, outcome).append(stem)
        finally:
            if executor is not None:
                executor.close()
        write_tables(self.out)
        return summary

    def execute(self, task: CellTask, tag: str = "") -> tuple[str, str]:
        """Run one task here; returns (cell stem, outcome) with outcome one of ok/skipped/failed/busy."""
        ds = self.dataset(task.dataset, task.data_overrides)
        if task.kind == "teacher":
            return task.stem, self._teacher_cell(ds, task.config, tag, task.dependents)
        return self._method_cell(ds, task.config, tag)

    def _skip(self, path: Path, chash: str) -> bool:
        rec = read_record(path)
        return not self.rerun and rec is not None and rec.get("status") == "ok" and rec.get("config_hash") == chash

    def _write(self, path: Path, record: dict, test: EvalResult | None, ds: Dataset,
               reprs: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Write a cell's npz and record; an existing record that would be replaced is kept under superseded/."""
        old = read_record(path)
        if path.exists() and (old is None or old.get("status") == "ok"):
            why = "is unreadable" if old is None else "has another config" \
                if old.get("config_hash") != record["config_hash"] else "is rerun"
            self.log(f"{path.name} {why}: the old record is kept as {set_aside(path)}")
        if test is not None:
            write_eval_npz(path.with_suffix(".npz"), test, ds, reprs)
        write_json(path, record)

    def teacher(self, ds: Dataset, cfg: dict, tag: str = "") -> tuple[Teacher, dict]:
        """The cell's frozen teacher and its info for records: from this process's memory, else the cache, else
        trained (under a lock, so a concurrent process waits and then loads what this one saved)."""
        spec = teacher_spec(cfg, ds, self.device)
        key = self.cache.key(spec)
        if key in self._failed_teachers:
            raise RuntimeError(self._failed_teachers[key])
        if key not in self._teachers:
            model = _build(ds, cfg["backbone"], cfg["teacher"], cfg["seed"], self.device)
            with self._teacher_lock(key):
                manifest, test = self.cache.load(key, model), None
                cached = manifest is not None
                if not cached:
                    stem = cell_stem(ds.name, cfg["backbone"], "teacher", cfg["seed"])
                    try:
                        manifest, test = self._train_teacher(ds, cfg, model, key, spec, tag, stem)
                    except Exception as exc:
                        self._failed_teachers[key] = f"teacher failed: {type(exc).__name__}: {exc}"
                        raise
            self._teachers = {key: (Teacher(model, ds), manifest, test, cached)}  # one at a time: memory
        teacher, manifest, *_ = self._teachers[key]
        return teacher, _teacher_info(key, manifest, cfg["eval"])

    def _teacher_lock(self, key: str) -> FileLock:
        locks = self.cache.root / "locks"  # beside the cache, which several output directories may share
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key}.lock"))

    def teacher_info(self, ds: Dataset, cfg: dict) -> dict:
        """The teacher's info for a record that does not use the teacher (``student``): from the cache's manifest
        when it is there, never trained for it. A teacher that another worker is training is waited for (its lock),
        so that the record still names its metrics."""
        key = self.cache.key(teacher_spec(cfg, ds, self.device))
        try:
            with self._teacher_lock(key):
                manifest = self.cache.manifest(key)
            return _teacher_info(key, manifest, cfg["eval"])
        except (OSError, ValueError):
            return {"key": key}

    def _teacher_cell(self, ds: Dataset, cfg: dict, tag: str, dependents: tuple = ()) -> str:
        tcfg = {**{k: cfg[k] for k in ("dataset", "data", "backbone", "teacher", "train", "eval", "seed")},
                "method": {"name": "teacher", "params": {}}}
        stem = cell_stem(ds.name, cfg["backbone"], "teacher", cfg["seed"])
        path = self.out / "cells" / f"{stem}.json"
        chash = config_hash(tcfg, ds)
        if self._skip(path, chash):  # before loading anything: resuming a finished grid trains nothing
            key = self.cache.key(teacher_spec(cfg, ds, self.device))
            todo = [s for s, h in dependents if not self._skip(self.out / "cells" / f"{s}.json", h)]
            if todo and not self.cache.has(key):
                # its record is done but the cache lost the teacher (or the training code changed): train it in
                # this task, so that the cells after it find it, instead of one cell training it while the other
                # workers' cells wait for its lock
                self.log(f"{tag} {stem}: done before; training its teacher for {len(todo)} cells still to run")
                try:
                    self.teacher(ds, cfg, tag)
                except Exception as exc:  # each cell that needs it records the failure too
                    self.log(f"{tag} {stem}: its teacher FAILED: {type(exc).__name__}: {exc}")
            else:
                self.log(f"{tag} {stem}: done before, skipped")
            return "skipped"
        started = _now()
        try:
            teacher, t_info = self.teacher(ds, cfg, tag)
        except Exception as exc:
            with self._cell_lock(path) as held:
                if held:
                    record = self._record(ds, tcfg, chash, {}, None, None, status="failed")
                    record.update(error=f"{type(exc).__name__}: {exc}", started_at=started,
                                  traceback=traceback.format_exc(limit=8).splitlines()[-12:])
                    self._write(path, record, None, ds)
            self.log(f"{tag} {stem}: FAILED {type(exc).__name__}: {exc}")
            return "failed"
        _, manifest, test, cached = self._teachers[t_info["key"]]
        with self._cell_lock(path) as held:  # the record, like a method cell's, is written by one process only
            if not held:
                self.log(f"{tag} {stem}: written by another process, skipped")
                return "busy"
            if self._skip(path, chash):
                self.log(f"{tag} {stem}: done before, skipped")
                return "skipped"
            if test is None or manifest.get("eval") != cfg["eval"]:  # cached, or trained under other settings
                test = evaluate_model(teacher.model, ds, "test",
                                      mask_valid_in_test=cfg["eval"]["mask_valid_in_test"])
            record = self._record(ds, tcfg, chash, t_info, test, manifest, status="ok")
            record["teacher_cache"] = {"key": t_info["key"], "hit": cached}
            self._write(path, record, test, ds)
        self.log(f"{tag} {stem}: ok ndcg@20={test.means['ndcg@20']:.4f} recall@20={test.means['recall@20']:.4f}"
                 f" ({'cached' if cached else 'trained'})")
        return "ok"

    def _train_teacher(self, ds: Dataset, cfg: dict, model: Backbone, key: str, spec: dict, tag: str, stem: str
                       ) -> tuple[dict, EvalResult]:
        self.log(f"{tag} {stem}: training teacher (d={cfg['teacher']['dim']}) ...")
        reset_peak_memory(self.device)
        started = _now()
        ckpt = self._checkpoint(stem, {"teacher": key})
        res = fit(model, ds, _role(cfg["teacher"]), _train_cfg(cfg), cfg["seed"], progress=self.progress,
                  desc=f"teacher {ds.name}/{cfg['backbone']}", checkpoint=ckpt)
        test = evaluate_model(model, ds, "test", mask_valid_in_test=cfg["eval"]["mask_valid_in_test"])
        manifest = {"key": key, "spec": spec, "metrics": test.means, "eval": cfg["eval"],
                    "valid_metrics": res.best_valid,
                    "best_epoch": res.best_epoch, "epochs": res.epochs, "timing": res.timing,
                    "history": res.history, "started_at": started, "finished_at": _now(),
                    "environment": environment(self.device)}
        self.cache.save(key, model, manifest)
        ckpt.remove()
        return manifest, test

    def _checkpoint(self, stem: str, identity: dict, *code) -> TrainingCheckpoint:
        """Where a teacher or cell saves its training state: in the cache (never beside the records), named by the
        cell and by everything its training depends on, so that a changed cell never resumes a stale state."""
        ident = sha256_json({**identity, "device": self.device.type, "code": source_version(*code)})
        return TrainingCheckpoint.under(self.cache.root, stem, ident, self.checkpoint_every_s)

    def _cell_checkpoint(self, stem: str, chash: str, teacher_key: str | None, cls: type) -> TrainingCheckpoint:
        """A method cell's checkpoint: its config, its teacher and the code of every class its method runs."""
        return self._checkpoint(stem, {"cell": chash, "teacher": teacher_key}, *cls.code_classes())

    def _method_cell(self, ds: Dataset, cfg: dict, tag: str) -> tuple[str, str]:
        method = cfg["method"]["name"]
        stem = cell_stem(ds.name, cfg["backbone"], method, cfg["seed"])
        path = self.out / "cells" / f"{stem}.json"
        chash = config_hash(cfg, ds)
        if self._skip(path, chash):
            self.log(f"{tag} {stem}: done before, skipped")
            return stem, "skipped"
        with self._cell_lock(path) as held:
            if not held:
                self.log(f"{tag} {stem}: running in another process, skipped")
                return stem, "busy"
            if self._skip(path, chash):  # the other process finished it while we waited for the lock
                self.log(f"{tag} {stem}: done before, skipped")
                return stem, "skipped"
            if DISTILLERS.get(method).needs_teacher:
                try:
                    teacher, t_info = self.teacher(ds, cfg, tag)
                except Exception as exc:  # the cell's record says why it could not run
                    teacher, t_info = None, {"error": f"teacher failed: {type(exc).__name__}: {exc}"}
            else:
                teacher, t_info = None, self.teacher_info(ds, cfg)
            return stem, self._train_cell(ds, cfg, teacher, t_info, tag, stem, path, chash)

    @contextmanager
    def _cell_lock(self, path: Path) -> Iterator[bool]:
        """A per-cell lock file, so that two runs on one output directory never train the same cell."""
        locks = self.out / "locks"  # beside cells/, which holds only records
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(locks / f"{path.stem}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def _train_cell(self, ds: Dataset, cfg: dict, teacher: Teacher | None, t_info: dict, tag: str, stem: str,
                    path: Path, chash: str) -> str:
        method = cfg["method"]["name"]
        started = _now()
        try:
            cls = DISTILLERS.get(method)
            if teacher is None and cls.needs_teacher:
                raise RuntimeError(t_info.get("error", "no teacher"))
            reset_peak_memory(self.device)  # peak_rss_mb is this cell's, even in a worker that ran other cells before
            student = _build(ds, cfg["backbone"], cfg["student"], cfg["seed"], self.device)
            distiller = cls(teacher, student, ds, cls.Config(**cfg["method"]["params"])).to(self.device)
            self.log(f"{tag} {stem}: training ...")
            ckpt = self._cell_checkpoint(stem, chash, t_info.get("key"), cls)
            res = fit(student, ds, _role(cfg["student"]), _train_cfg(cfg), cfg["seed"], distiller,
                      weight=cfg["method"]["params"]["weight"], progress=self.progress,
                      desc=f"{method} {ds.name}/{cfg['backbone']}", checkpoint=ckpt)
            student.eval()
            with torch.inference_mode():  # once, for the test metrics and the npz (`kdbench analyze freq`)
                user_repr, item_repr = student.representations()
            test = evaluate(user_repr, item_repr, ds, "test", mask_valid_in_test=cfg["eval"]["mask_valid_in_test"])
        except Exception as exc:
            record = self._record(ds, cfg, chash, t_info, None, None, status="failed")
            record.update(error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=8).splitlines()[-12:], started_at=started)
            self._write(path, record, None, ds)
            self.log(f"{tag} {stem}: FAILED {type(exc).__name__}: {exc}")
            return "failed"
        info = {"best_epoch": res.best_epoch, "epochs": res.epochs, "valid_metrics": res.best_valid,
                "timing": res.timing, "history": res.history, "started_at": started, "finished_at": _now()}
        record = self._record(ds, cfg, chash, t_info, test, info, status="ok")
        record["method_origin"] = DISTILLERS.origin(method)
        reprs = tuple(r.detach().cpu().numpy() for r in (user_repr, item_repr))
        self._write(path, record, test, ds, reprs)
        ckpt.remove()
        self.log(f"{tag} {stem}: ok ndcg@20={test.means['ndcg@20']:.4f} recall@20={test.means['recall@20']:.4f} "
                 f"epochs={res.epochs} epoch_s={res.timing['epoch_s']:.3f}")
        return "ok"

    def _record(self, ds: Dataset, cfg: dict, chash: str, t_info: dict, test: EvalResult | None,
                info: dict | None, status: str) -> dict:
        info = info or {}
        return {"schema": SCHEMA, "dataset": ds.describe(), "backbone": cfg["backbone"],
                "method": cfg["method"]["name"], "seed": cfg["seed"], "profile": cfg["train"]["profile"],
                "protocol": protocol_text(cfg),
                "config": cfg, "config_hash": chash,
                "teacher": {k: v for k, v in t_info.items() if k != "error"},
                "metrics": test.means if test is not None else None,
                "valid_metrics": info.get("valid_metrics"), "n_test_users": len(test.users) if test else None,
                "best_epoch": info.get("best_epoch"), "epochs": info.get("epochs"),
                "timing": info.get("timing"), "history": info.get("history"),
                "started_at": info.get("started_at"), "finished_at": info.get("finished_at"),
                "environment": environment(self.device), "status": status, "error": None}
