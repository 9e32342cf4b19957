"""Trained teachers: an on-disk cache keyed by everything that determines them, and the frozen view distillers see."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__
from .backbones import Backbone
from .checkpoint import code_digest
from .datasets import Dataset
from .evaluate import full_rank_topk
from .scoring import pair_scores

if TYPE_CHECKING:
    from collections.abc import Iterator

# Source files whose behaviour determines a trained teacher: editing their code (not their documentation or
# annotations: ``code_digest``) invalidates the cache.
_TRAINING_CODE = ("train.py", "sampling.py", "graph.py", "evaluate.py", "backbones/base.py", "backbones/bprmf.py",
                  "backbones/lightgcn.py", "backbones/simplex.py")


@functools.lru_cache(maxsize=1)
def training_code_version() -> str:
    """Read once per process: the version of the code that runs, whatever is edited on disk meanwhile."""
    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent
    for rel in _TRAINING_CODE:
        h.update(code_digest((root / rel).read_bytes()))
    return h.hexdigest()[:16]


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_json(obj: object) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("KDBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdbench"


class TeacherCache:
    """``<root>/teachers/<key>/{state.pt, manifest.json}``, written to a temp dir then renamed into place."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    @staticmethod
    def key(spec: dict) -> str:
        torch_minor = ".".join(torch.__version__.split(".")[:2])
        return sha256_json({**spec, "code": training_code_version(), "torch": torch_minor})

    def path(self, key: str) -> Path:
        return self.root / "teachers" / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "manifest.json").exists()

    def manifest(self, key: str) -> dict:
        """The cached teacher's manifest (raises OSError when it is not cached)."""
        return json.loads((self.path(key) / "manifest.json").read_text())

    def weights_digest(self, key: str) -> str | None:
        """sha256 of the cached weights (names and bytes), or None when the teacher is not cached: two keys (from
        code versions that train the same teacher) with one digest are one teacher."""
        try:
            state = torch.load(self.path(key) / "state.pt", map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError):
            return None
        h = hashlib.sha256()
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].contiguous().numpy().tobytes())
        return h.hexdigest()

    def load(self, key: str, model: Backbone) -> dict | None:
        """Load the cached weights into ``model`` and return the manifest, or None on a miss."""
        d = self.path(key)
        try:
            manifest = self.manifest(key)
            state = torch.load(d / "state.pt", map_location=model.user_emb.weight.device, weights_only=True)
        except (OSError, ValueError, RuntimeError):
            return None
        model.load_state_dict(state)
        return manifest

    def save(self, key: str, model: Backbone, manifest: dict) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "state.pt")
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
            if final.exists():  # another process finished first: keep its (identical-key) teacher
                shutil.rmtree(tmp)
                return
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class Teacher:
    """A frozen teacher as distillers see it: precomputed representations, scores and top-K lists, no parameters.

    Representations are computed once under ``no_grad`` (not ``inference_mode``: the tensors are then used in the
    student's autograd graph as constants).
    """

    def __init__(self, model: Backbone, ds: Dataset) -> None:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model, self.ds, self.dim = model, ds, model.dim
        with torch.no_grad():
            self.user_repr, self.item_repr = (t.detach().clone() for t in model.representations())
            self.raw_user, self.raw_item = (t.detach().clone() for t in model.raw_embeddings())
        self._topk: dict[int, torch.Tensor] = {}

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def repr(self, source: str = "final") -> tuple[torch.Tensor, torch.Tensor]:
        if source not in ("final", "raw"):
            raise ValueError(f"feature_source must be 'final' or 'raw', not {source!r}")
        return (self.user_repr, self.item_repr) if source == "final" else (self.raw_user, self.raw_item)

    def scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Teacher scores for ``users`` [B] against ``items`` [B, K]."""
        return pair_scores(self.user_repr, self.item_repr, users, items)

    def topk(self, k: int) -> torch.Tensor:
        """[n_users, k] teacher top-k items per user with training items masked (computed once per k)."""
        if k not in self._topk:
            users = torch.arange(self.ds.n_users, device=self.user_repr.device)
            self._topk[k] = full_rank_topk(self.user_repr, self.item_repr, users, self.ds.csr("train"), k).clone()
        return self._topk[k]
