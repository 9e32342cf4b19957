"""Where grid cells run: this process, local worker processes (joblib), a dask cluster, or slurm jobs (submitit).

Every executor runs the same picklable task function, ``run_task``, which rebuilds the runner in the worker (plugin
modules imported again), loads the dataset and the cached teacher once per process and runs one cell. Resume and
the per-cell file locks live in the runner, so any mix of executors and processes on one ``--out`` is safe.
dask/distributed and submitit are optional extras, imported only when their executor is asked for.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from .grid import CellTask, GridRunner, RunnerSettings
from .registry import import_plugin_module
from .runtime import flush_denormals

EXECUTORS = ("local", "dask", "slurm")


class ExecutorError(RuntimeError):
    """An executor that cannot run here (a missing optional extra, a bad option); the message says the fix."""


_RUNNER: dict[RunnerSettings, GridRunner] = {}
# one cell at a time per process: a multi-threaded dask worker would otherwise share the runner, the global RNG
# that seeds initialisation, and torch's thread setting between cells
_ONE_AT_A_TIME = threading.Lock()


def run_task(settings: RunnerSettings, tag: str, task: CellTask, threads: int | None = None) -> tuple[str, str]:
    """Run one cell in this process (a worker's entry point); returns (cell stem, outcome). Never raises: an
    error outside the cell's own handling (loading the dataset, writing a record) is this cell's failure, not
    the end of the whole parallel map."""
    with _ONE_AT_A_TIME:
        try:
            return _run_task(settings, tag, task, threads)
        except Exception as exc:
            print(f"{tag} {task.stem}: FAILED outside the cell: {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)
            return task.stem, "failed"


def _run_task(settings: RunnerSettings, tag: str, task: CellTask, threads: int | None) -> tuple[str, str]:
    flush_denormals()  # before this worker's first parallel op, so that its intra-op threads inherit it
    if threads:
        torch.set_num_threads(threads)
    if settings not in _RUNNER:  # one runner per worker process: its dataset and teacher stay loaded
        if not settings.quiet:  # the training loop's periodic progress lines, as in the parent process
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
            logging.getLogger("kdbench").setLevel(logging.INFO)
        for mod in settings.imports:
            import_plugin_module(mod)
        _RUNNER.clear()
        _RUNNER[settings] = GridRunner(settings.out, settings.data_root, settings.cache_dir, settings.device,
                                       quiet=settings.quiet, rerun=settings.rerun, imports=settings.imports,
                                       checkpoint_every_s=settings.checkpoint_every_s)
    return _RUNNER[settings].execute(task, tag)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Intra-op threads per worker so that workers × threads ≤ cores (oversubscription slows every worker)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ExecutorError(f"--workers {workers}: expected a positive number of worker processes")


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ExecutorError(f"--threads {threads}: expected a positive number of threads per cell (or leave it out "
                            "for cores/workers)")


class Executor(ABC):
    #: True when workers take tasks strictly in the order given, one at a time: then teachers and method cells go
    #: in one map (teachers first), and a worker that finds no teacher left to train starts on method cells of
    #: teachers already trained instead of idling until the last teacher is done. Executors that start many tasks
    #: at once (cluster job arrays) keep two phases, so that no job holds a slot while waiting on a teacher.
    pulls_in_order: bool = False
    #: tasks it runs at once (``--workers``): with fewer teachers than that, the grid keeps two phases (below)
    workers: int = 1

    @abstractmethod
    def map(self, settings: RunnerSettings, tasks: list[tuple[str, CellTask]]) -> list[tuple[str, str]]:
        """Run (tag, task) pairs; return one (stem, outcome) per task, in order."""

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release what ``map`` set up (called once, after the last phase)."""


class LocalExecutor(Executor):
    """``--workers N`` processes on this machine (joblib's loky backend); N = 1 runs in this process."""

    pulls_in_order = True

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        _check_workers(workers)
        check_threads(threads)
        self.workers, self.fixed_threads = workers, threads

    @property
    def threads(self) -> int:
        """Intra-op threads per task when every worker has one."""
        return self.fixed_threads or threads_per_worker(self.workers)

    def map(self, settings: RunnerSettings, tasks: list[tuple[str, CellTask]]) -> list[tuple[str, str]]:
        # Fewer tasks than workers (a phase of one or two teachers): each task takes the cores of the workers it
        # leaves idle, so that a lone teacher does not train on one thread of two.
        jobs = min(self.workers, len(tasks))
        threads = self.fixed_threads or threads_per_worker(jobs)
        if jobs <= 1:  # here, in this process
            return [run_task(settings, tag, task, threads) for tag, task in tasks]
        from joblib import Parallel, delayed
        return Parallel(n_jobs=jobs, backend="loky", batch_size=1)(
            delayed(run_task)(settings, tag, task, threads) for tag, task in tasks)


class DaskExecutor(Executor):
    """joblib's dask backend on a ``dask.distributed`` cluster: ``--scheduler ADDRESS``, or a local cluster of
    ``--workers`` single-threaded worker processes."""

    def __init__(self, scheduler: str | None = None, workers: int = 1, threads: int | None = None) -> None:
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise ExecutorError("--executor dask needs dask.distributed: pip install 'kdbench[dask]'") from None
        if not scheduler:
            _check_workers(workers)
        check_threads(threads)
        self.scheduler, self.workers = scheduler, workers
        self.threads = threads or (None if scheduler else threads_per_worker(self.workers))
        self.client = self.cluster = None

    def map(self, settings: RunnerSettings, tasks: list[tuple[str, CellTask]]) -> list[tuple[str, str]]:
        from dask.distributed import Client, LocalCluster
        from joblib import Parallel, delayed, parallel_config

        if self.client is None:  # one cluster for both phases: its workers keep the dataset loaded
            if self.scheduler:
                self.client = Client(self.scheduler)
            else:
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
                self.client = Client(self.cluster)
        with parallel_config(backend="dask"):
            return Parallel()(delayed(run_task)(settings, tag, task, self.threads) for tag, task in tasks)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None


class SlurmExecutor(Executor):
    """One slurm job array per phase (teachers, then methods) through submitit. ``cluster="local"`` or ``"debug"``
    runs the same jobs on this machine (submitit's executors for testing)."""

    def __init__(self, folder: str | Path, partition: str | None = None, time_min: int = 24 * 60, gpus: int = 0,
                 cpus: int = 2, mem_gb: int | None = None, array_parallelism: int | None = None,
                 cluster: str | None = None, threads: int | None = None) -> None:
        check_threads(threads)
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ExecutorError("--executor slurm needs submitit: pip install 'kdbench[slurm]'") from None
        self.folder, self.cluster = Path(folder), cluster
        self.params = {"timeout_min": time_min, "cpus_per_task": cpus, "gpus_per_node": gpus,
                       "slurm_partition": partition, "mem_gb": mem_gb,
                       "slurm_array_parallelism": array_parallelism}
        self.threads = threads or cpus

    def map(self, settings: RunnerSettings, tasks: list[tuple[str, CellTask]]) -> list[tuple[str, str]]:
        import submitit

        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        ex.update_parameters(**{k: v for k, v in self.params.items() if v is not None})
        jobs = ex.map_array(run_task, [settings] * len(tasks), [t for t, _ in tasks], [c for _, c in tasks],
                            [self.threads] * len(tasks))
        out = []
        for job, (tag, task) in zip(jobs, tasks):
            try:
                out.append(job.result())
            except Exception as exc:  # a job killed by slurm (time, memory): the cell is rerun next time
                print(f"{tag} {task.stem}: slurm job {job.job_id} failed: {exc}", flush=True)
                out.append((task.stem, "failed"))
        return out


def make_executor(name: str, workers: int = 1, scheduler: str | None = None, out: str | Path = ".",
                  threads: int | None = None, **slurm) -> Executor | None:
    """The executor for ``--executor NAME``; None = this process, one cell after another (with the threads the
    caller set). ``threads``: intra-op threads per cell, default cores/workers (``--slurm-cpus`` for slurm)."""
    check_threads(threads)
    if name == "local":
        return None if workers == 1 else LocalExecutor(workers, threads)
    if name == "dask":
        return DaskExecutor(scheduler, workers, threads)
    if name == "slurm":
        return SlurmExecutor(Path(out) / "slurm", threads=threads,
                             **{k: v for k, v in slurm.items() if v is not None})
    raise ExecutorError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")
