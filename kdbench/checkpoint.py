"""Mid-training checkpoints: a teacher or cell that is killed resumes from its last saved epoch, not from epoch 0.

A cell's record is written only when it finishes, so without these a session that ends while a 2000-d teacher is
in its fifth hour starts it over. :func:`kdbench.train.fit` saves everything the rest of the run depends on (weights,
Adam's moments, the sampling generators, the global RNG, the early-stopping state, the history and timing) at the
end of an epoch, at most every ``every_s`` seconds, and a rerun with the same identity continues bit for bit as if
it had never stopped (on CPU; tested).

Files live under the cache directory (``<cache>/checkpoints/<name>-<identity>.pt``, written to a temp name then
``os.replace``d) because a 2000-d teacher's state is ~1 GB: they never belong next to the committed records. A
checkpoint is removed when its teacher or cell finishes; one whose identity (the cell's config, its teacher and the
code that trains it) no longer matches is ignored and overwritten.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class TrainingCheckpoint:
    path: Path
    identity: str                 # the run the state belongs to; a file saved under another identity is ignored
    every_s: float = 600.0        # seconds between saves (0: after every epoch)

    @classmethod
    def under(cls, root: str | os.PathLike, name: str, identity: str, every_s: float) -> "TrainingCheckpoint":
        return cls(Path(root) / "checkpoints" / f"{name}-{identity[:16]}.pt", identity, every_s)

    def load(self, device: torch.device | str, mmap: bool = False) -> dict | None:
        """The saved state, or None when there is none for this identity (or the file is unreadable). With
        ``mmap`` the tensors are mapped, not read: cheap for a look at the epoch."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True, mmap=mmap)
        except (OSError, RuntimeError, EOFError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("identity") == self.identity else None

    def saved_epoch(self) -> int | None:
        """The epoch a rerun would resume at (from the ``run`` state that :func:`kdbench.train.fit` saves), or None."""
        state = self.load("cpu", mmap=True)
        return None if state is None else int(state["run"]["next_epoch"])

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.close(fd)
        try:
            torch.save({**state, "identity": self.identity}, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# Modules that never run while a teacher or cell trains: the command line, the tables, the report and the
# analyses. Editing them leaves every checkpoint resumable, so that a fix to a table does not throw away hours of
# training; every other file of the package, a new one included, versions the checkpoints.
NOT_TRAINING_CODE = frozenset({"__main__.py", "cli.py", "leaderboard.py", "significance.py", "report.py",
                               "spectrum.py"})


def source_version(*objects, package: Path | None = None) -> str:
    """A hash of the kdbench package's Python sources that take part in training (all but ``NOT_TRAINING_CODE``)
    and of the code defining ``objects`` (plugin methods live outside the package): a checkpoint written by other
    code is not resumed. Each file is read once per process, so that the version is that of the code running,
    whatever is edited on disk meanwhile."""
    root = package or Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if f.relative_to(root).as_posix() not in NOT_TRAINING_CODE:
            h.update(f.relative_to(root).as_posix().encode() + _file_hash(f.resolve()))
    for o in objects:
        h.update(_object_digest(o, _source_file(o)))
    return h.hexdigest()[:16]


def plugin_source_version(obj) -> str | None:
    """The hash of the code defining ``obj`` when it lies outside the kdbench package (a backbone or method added
    by a plugin), else None: kdbench's own files are versioned by whoever keys on them."""
    path = _source_file(obj)
    if path is not None and path.is_relative_to(Path(__file__).parent.resolve()):
        return None
    return _object_digest(obj, path).hex()[:16]


def _source_file(obj) -> Path | None:
    try:
        name = inspect.getsourcefile(obj)
    except TypeError:  # defined where there is no file (a notebook cell, exec)
        return None
    return Path(name).resolve() if name and Path(name).exists() else None


def _object_digest(obj, path: Path | None) -> bytes:
    """sha256 of ``path``, the file defining ``obj``; without a file, of its source text (a notebook keeps it), and
    without either, of its qualified name only (then an edit goes unnoticed: such code cannot be versioned)."""
    if path is not None:
        return _file_hash(path)
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        text = f"{obj.__module__}.{obj.__qualname__}"
    return hashlib.sha256(text.encode()).digest()


@functools.lru_cache(maxsize=None)
def _file_hash(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def generator_states(module: nn.Module | None) -> dict[str, torch.Tensor]:
    """The state of every ``torch.Generator`` held as an attribute of ``module`` or of its submodules (the sampling
    streams of RRD, CD, DE, …), by dotted name."""
    if module is None:
        return {}
    return {f"{name}.{attr}" if name else attr: value.get_state()
            for name, sub in module.named_modules() for attr, value in vars(sub).items()
            if isinstance(value, torch.Generator)}


def restore_generators(module: nn.Module | None, states: dict[str, torch.Tensor]) -> None:
    if module is None:
        return
    subs = dict(module.named_modules())
    for dotted, state in states.items():
        name, _, attr = dotted.rpartition(".")
        getattr(subs[name], attr).set_state(state.cpu())
