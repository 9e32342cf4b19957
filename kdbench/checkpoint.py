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

import ast
import functools
import hashlib
import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Iterable


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
# training; every other file of the package, a new one included, versions the checkpoints — except the method
# modules, which version only the cells whose method uses them (``training_files``).
NOT_TRAINING_CODE = frozenset({"__main__.py", "cli.py", "leaderboard.py", "significance.py", "report.py",
                               "spectrum.py"})
METHODS_DIR = "methods/"   # one module per distiller, plus their shared pieces
PACKAGE = "kdbench"


def source_version(*objects, package: Path | None = None) -> str:
    """A hash of the code a checkpoint depends on: the kdbench package's Python sources that take part in training
    (``training_files``; for a teacher, ``objects`` is empty and no method module counts), and the code defining
    ``objects`` and their base classes — the method modules they import when they are kdbench's own, the defining
    files when they live outside the package (plugins). A checkpoint written by other code is not resumed. Each
    file is read once per process, so that the version is that of the code running, whatever is edited on disk
    meanwhile."""
    root = (package or Path(__file__).parent).resolve()
    h = hashlib.sha256()
    entries = set()
    for obj in objects:
        for cls in (obj.__mro__ if isinstance(obj, type) else (obj,)):
            path = _source_file(cls)
            if path is not None and path.is_relative_to(root):
                entries.add(path.relative_to(root).as_posix())
            elif cls is obj:  # a plugin: its own file
                h.update(_object_digest(obj, path))
    for rel in training_files(root, entries):
        h.update(rel.encode() + _file_hash(root / rel))
    return h.hexdigest()[:16]


def training_files(root: Path, entries: Iterable[str] = ()) -> list[str]:
    """The package files (relative paths) that version a checkpoint whose code starts at ``entries``: every file
    but ``NOT_TRAINING_CODE`` and the method modules, plus the method modules that ``entries`` import, directly or
    through each other (followed within ``methods/`` only: the rest of the package counts whole anyway, and the
    methods' ``__init__`` imports them all just to register them)."""
    files = frozenset(f.relative_to(root).as_posix() for f in root.rglob("*.py"))
    core = {f for f in files if f not in NOT_TRAINING_CODE and not f.startswith(METHODS_DIR)}
    init = METHODS_DIR + "__init__.py"
    todo = [e for e in entries if e.startswith(METHODS_DIR) and e != init]
    used: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in used or rel not in files:
            continue
        used.add(rel)
        todo += [m for m in _imported_files(root, rel, files) if m.startswith(METHODS_DIR) and m != init]
    return sorted(core | used)


@functools.lru_cache(maxsize=None)
def _imported_files(root: Path, rel: str, files: frozenset[str]) -> tuple[str, ...]:
    """Package files that the module ``rel`` imports (``from .x import y``, ``from ..x import y``, ``from . import
    x``, and the same spelled ``kdbench.x``), by relative path; names that are not files are skipped."""
    tree = ast.parse((root / rel).read_text())
    here = rel.split("/")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1] if node.level > 1 else here
            elif (node.module or "").split(".")[0] == PACKAGE:
                base = []
            else:
                continue
            parts = (node.module or "").split(".") if node.module else []
            if not node.level:
                parts = parts[1:]
            mod = base + parts
            found += ["/".join(mod) + ".py", "/".join(mod + ["__init__.py"])]
            found += ["/".join(mod + [a.name]) + ".py" for a in node.names]  # ``from . import x``: x a module
        elif isinstance(node, ast.Import):
            found += ["/".join(a.name.split(".")[1:]) + ".py" for a in node.names
                      if a.name.split(".")[0] == PACKAGE and "." in a.name]
    return tuple(sorted({f for f in found if f in files}))


def plugin_source_version(obj: object) -> str | None:
    """The hash of the code defining ``obj`` when it lies outside the kdbench package (a backbone or method added
    by a plugin), else None: kdbench's own files are versioned by whoever keys on them."""
    path = _source_file(obj)
    if path is not None and path.is_relative_to(Path(__file__).parent.resolve()):
        return None
    return _object_digest(obj, path).hex()[:16]


def _source_file(obj: object) -> Path | None:
    try:
        name = inspect.getsourcefile(obj)
    except TypeError:  # defined where there is no file (a notebook cell, exec)
        return None
    return Path(name).resolve() if name and Path(name).exists() else None


def _object_digest(obj: object, path: Path | None) -> bytes:
    """``code_digest`` of ``path``, the file defining ``obj``; without a file, of its source text (a notebook keeps
    it), and without either, of its qualified name only (then an edit goes unnoticed: such code cannot be
    versioned)."""
    if path is not None:
        return _file_hash(path)
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        text = f"{obj.__module__}.{obj.__qualname__}"
    return hashlib.sha256(text.encode()).digest()


@functools.lru_cache(maxsize=None)
def _file_hash(path: Path) -> bytes:
    return code_digest(path.read_bytes())


def code_digest(source: bytes) -> bytes:
    """sha256 of what a Python source does: its syntax tree without docstrings, comments, layout, function
    annotations (never evaluated: every module has ``from __future__ import annotations``) and ``if
    TYPE_CHECKING:`` imports (with the import of ``TYPE_CHECKING`` itself), so that documenting or annotating the
    training code keeps the teachers and checkpoints it trained. Class-level annotations stay: they make dataclass
    fields. A source that does not parse is hashed as bytes."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return hashlib.sha256(source).digest()
    for node in ast.walk(tree):
        if hasattr(node, "body") and isinstance(node.body, list):
            node.body = [n for n in node.body if not _type_checking_only(n)]
        if isinstance(node, ast.ImportFrom) and node.module == "typing":
            node.names = [a for a in node.names if a.name != "TYPE_CHECKING"]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            args = node.args
            for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
                if arg is not None:
                    arg.annotation = None
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(first := node.body[0], ast.Expr) and isinstance(first.value, ast.Constant) \
                and isinstance(first.value.value, str):
            node.body = node.body[1:]
    return hashlib.sha256(ast.unparse(tree).encode()).digest()  # unparse: steadier across Pythons than dump


def _type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) with no ``else``, code that never runs, and ``from typing
    import TYPE_CHECKING``, which only serves it."""
    if isinstance(node, ast.ImportFrom):
        return node.module == "typing" and all(a.name == "TYPE_CHECKING" for a in node.names)
    if not isinstance(node, ast.If) or node.orelse:
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


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
