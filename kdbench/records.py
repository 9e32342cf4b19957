"""Output-directory contract: atomic writes of per-cell JSON records and per-user ``.npz`` files.

``OUT/cells/<dataset>__<backbone>__<method>__seed<k>.json`` and ``.npz`` (ids as in the dataset's files).
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import __version__
from .datasets import Dataset
from .evaluate import EvalResult

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO


def safe_name(name: object) -> str:
    """A name as it may appear in a file name of the output directory."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(name))


def cell_stem(dataset: str, backbone: str, method: str, seed: int) -> str:
    return f"{safe_name(dataset)}__{safe_name(backbone)}__{safe_name(method)}__seed{seed}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fh)`` on a temp file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            try:  # mkstemp's 0600 would make shared result folders unreadable to others
                os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            except OSError:  # some network/FUSE mounts refuse it; the write matters more
                pass
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: object) -> int | float | list | str:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    return str(o)


def write_eval_npz(path: Path, res: EvalResult, ds: Dataset,
                   representations: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Per-user test metrics and top-50 lists in the dataset's own ids, checkable without kdbench; optionally
    the model's final user/item representations (rows in kdbench's internal id order: ``ds.user_ids[row]`` is
    the row's id in the files) for the frequency analysis."""
    arrays = {"users": ds.user_ids[res.users], "topk": ds.item_ids[res.topk]}
    arrays.update(res.per_user)
    if representations is not None:
        arrays["user_repr"], arrays["item_repr"] = (np.asarray(r, dtype=np.float32) for r in representations)
    atomic_write_bytes(Path(path), lambda fh: np.savez_compressed(fh, **arrays))


def read_record(path: Path) -> dict | None:
    """A record, or None when it is missing or unreadable (a corrupt file counts as not done)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def set_aside(path: Path) -> Path | None:
    """Move an existing record (and its ``.npz``) that is about to be replaced into ``cells/superseded/`` with a
    timestamp, so that a rerun, a config change or a corrupt file never destroys earlier results."""
    path = Path(path)
    if not path.exists():
        return None
    dest_dir = path.parent / "superseded"
    dest_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    dest, n = dest_dir / f"{path.stem}.{stamp}.json", 0
    while dest.exists() or dest.with_suffix(".npz").exists():  # twice in one second: never overwrite a kept one
        n += 1
        dest = dest_dir / f"{path.stem}.{stamp}-{n}.json"
    npz = path.with_suffix(".npz")
    if npz.exists():
        os.replace(npz, dest.with_suffix(".npz"))
    os.replace(path, dest)
    return dest


@lru_cache(maxsize=None)
def git_commit(here: Path | None = None) -> dict:
    """The commit of the checkout holding the package (``here``: its directory), and whether the package's sources
    differ from it; None for both outside a git checkout."""
    here = here or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        # the package's own sources only: an output directory inside the checkout (a committed leaderboard that
        # the run rewrites) does not make the code that ran differ from the commit
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    env = {"kdbench": __version__, **{f"git_{k}": v for k, v in git_commit().items()},
           "python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
           "threads": torch.get_num_threads(), "device": str(device)}
    if os.environ.get("MKL_CBWR"):  # MKL's reproducibility mode: with STRICT, results do not depend on `threads`
        env["mkl_cbwr"] = os.environ["MKL_CBWR"]
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
