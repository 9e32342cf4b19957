"""The one training loop for teachers and students (spec §1 "Generic KD step", §3.4 early stopping).

Each epoch visits every training pair once in a fresh permutation; negatives are drawn per batch on device. The
loss is ``base + weight · Σ distiller terms``; the loop knows nothing about any particular method. Validation
NDCG@20 is checked every ``eval_every`` epochs, training stops after ``patience`` checks without improvement, and
the best-epoch weights are restored.
"""
from __future__ import annotations

import copy
import logging
import math
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .backbones import Backbone
from .checkpoint import TrainingCheckpoint, generator_states, restore_generators
from .datasets import Dataset
from .evaluate import evaluate_model
from .runtime import flush_denormals, keep_freed_memory
from .sampling import PairMembership, sample_excluding

if TYPE_CHECKING:
    from .methods import Distiller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleConfig:
    """What a teacher or a student is trained with (spec §2.5)."""
    dim: int = 20
    lr: float = 1e-3
    wd: float = 1e-3              # Adam's coupled L2, as KDs
    batch_size: int = 2048


@dataclass(frozen=True)
class TrainConfig:
    max_epochs: int = 1000
    patience: int = 30            # evaluations without improvement
    eval_every: int = 1
    early_stop: str = "ndcg@20"   # validation metric monitored


@dataclass
class TrainResult:
    best_epoch: int
    epochs: int
    best_valid: dict
    history: list = field(default_factory=list)   # per evaluated epoch: epoch, losses, valid metric, epoch_s
    timing: dict = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux VmHWM: unlike ru_maxrss, not inherited from a parent that
    forked it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_adam(params: list, role: RoleConfig) -> torch.optim.Adam:
    """Adam with coupled L2 (``weight_decay``), as KDs. The fused kernel is ~10x faster on CPU for the large
    embedding tables, whose every row is updated every step through the decay term."""
    try:
        return torch.optim.Adam(params, lr=role.lr, weight_decay=role.wd, fused=True)
    except (RuntimeError, TypeError):  # old torch or a device without a fused kernel
        return torch.optim.Adam(params, lr=role.lr, weight_decay=role.wd)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _RunState:
    """What a run has done so far, beyond the weights, the optimiser and the generators (a checkpoint's rest)."""
    timing: dict
    next_epoch: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    best_valid: dict = field(default_factory=dict)
    bad: int = 0                                        # evaluations since the best
    epoch_times: list = field(default_factory=list)
    history: list = field(default_factory=list)
    resumed_at: list = field(default_factory=list)      # epochs at which earlier processes' work was resumed
    peak_rss_mb: float = 0.0                            # of the earlier processes


def _save(ckpt: TrainingCheckpoint, run: _RunState, model: Backbone, opt: torch.optim.Optimizer,
          distiller: Distiller | None, gen: torch.Generator, device: torch.device) -> None:
    ckpt.save({"run": {**vars(run), "peak_rss_mb": max(run.peak_rss_mb, peak_rss_mb())},
               "model": model.state_dict(), "optimizer": opt.state_dict(),
               "distiller": distiller.state_dict() if distiller is not None else {},
               "distiller_generators": generator_states(distiller), "generator": gen.get_state(),
               "torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})


def _resume(saved: dict, model: Backbone, opt: torch.optim.Optimizer, distiller: Distiller | None,
            gen: torch.Generator, device: torch.device) -> _RunState:
    model.load_state_dict(saved["model"])
    if distiller is not None:
        distiller.load_state_dict(saved["distiller"])
        restore_generators(distiller, saved["distiller_generators"])
    opt.load_state_dict(saved["optimizer"])
    gen.set_state(saved["generator"].cpu())
    torch.set_rng_state(saved["torch_rng"].cpu())
    if device.type == "cuda" and saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
    run = _RunState(**saved["run"])
    run.resumed_at = run.resumed_at + [run.next_epoch]
    return run


def fit(model: Backbone, ds: Dataset, role: RoleConfig, train: TrainConfig, seed: int,
        distiller: Distiller | None = None, weight: float = 0.0, progress: bool = False, desc: str = "",
        checkpoint: TrainingCheckpoint | None = None) -> TrainResult:
    """Train ``model`` (and the distiller's own modules) in place; restore the best-validation weights.

    With ``checkpoint``, the state at the end of an epoch is saved every ``checkpoint.every_s`` seconds, and a
    saved state of the same identity is resumed: the run continues as if it had not stopped."""
    keep_freed_memory()
    flush_denormals()
    device = model.user_emb.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    pairs = torch.from_numpy(ds.train).to(device)
    seen = PairMembership(pairs, ds.n_items) if model.negatives_exclude_positives else None
    params = list(model.parameters())
    if distiller is not None:
        own = [p for p in distiller.parameters() if p.requires_grad]
        teacher_ids = {id(p) for p in distiller.teacher_parameters()}
        if any(id(p) in teacher_ids for p in own):  # a frozen teacher must never reach the optimiser
            raise RuntimeError(f"distiller {distiller.name!r} exposes teacher parameters as trainable")
        params += own
    opt = make_adam(params, role)

    run = _RunState(timing={"precompute_s": 0.0, "eval_s": 0.0, "n_evals": 0})
    if distiller is not None:
        _sync(device)
        t0 = time.perf_counter()
        distiller.precompute()
        _sync(device)
        run.timing["precompute_s"] = time.perf_counter() - t0
    saved = checkpoint.load(device) if checkpoint is not None else None
    if saved is not None:  # precompute ran again above: it is deterministic, the generators are restored after it
        run = _resume(saved, model, opt, distiller, gen, device)
        log.info("%s: resuming from the checkpoint at epoch %d", desc or "training", run.next_epoch)
    timing, last_save = run.timing, time.monotonic()
    bar = tqdm(range(run.next_epoch, train.max_epochs), desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True, initial=run.next_epoch, total=train.max_epochs)
    epoch = run.next_epoch - 1
    for epoch in bar:
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        if distiller is not None:
            distiller.on_epoch_start(epoch)
        perm = torch.randperm(len(pairs), device=device, generator=gen)
        sums: dict[str, torch.Tensor] = {}
        for s in range(0, len(pairs), role.batch_size):
            batch = pairs[perm[s:s + role.batch_size]]
            users, pos = batch[:, 0], batch[:, 1]
            if seen is not None:
                neg = sample_excluding(users, model.n_neg, ds.n_items, seen, gen)
            else:
                neg = torch.randint(ds.n_items, (len(users), model.n_neg), device=device, generator=gen)
            out = model(users, pos, neg)
            terms = {"base": model.loss(out)}
            loss = terms["base"]
            if distiller is not None:
                kd_terms = distiller.loss(out)
                if kd_terms:
                    loss = loss + weight * sum(kd_terms.values())
                terms.update(kd_terms)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
        _sync(device)
        run.epoch_times.append(time.perf_counter() - t0)
        losses = {k: float(v) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}: {losses}")
        if (epoch + 1) % train.eval_every == 0:
            t0 = time.perf_counter()
            valid = evaluate_model(model, ds, "valid").means
            timing["eval_s"] += time.perf_counter() - t0
            timing["n_evals"] += 1
            score = valid[train.early_stop]
            run.history.append({"epoch": epoch, "losses": losses, "valid_" + train.early_stop: score,
                                "epoch_s": run.epoch_times[-1]})
            bar.set_postfix({train.early_stop: f"{score:.4f}", "best": f"{max(run.best, score):.4f}"})
            if not progress and timing["n_evals"] % 10 == 0:  # long runs in the background still report progress
                log.info("%s epoch %d: valid %s %.4f (best %.4f at epoch %d), %.2f s/epoch", desc, epoch + 1,
                         train.early_stop, score, max(run.best, score),
                         (epoch if score > run.best else run.best_epoch) + 1, run.epoch_times[-1])
            if score > run.best:
                run.best, run.best_epoch, run.best_valid, run.bad = score, epoch, valid, 0
                run.best_state = copy.deepcopy(model.state_dict())
            else:
                run.bad += 1
                if run.bad >= train.patience:
                    break
        run.next_epoch = epoch + 1
        if checkpoint is not None and run.next_epoch < train.max_epochs and \
                time.monotonic() - last_save >= checkpoint.every_s:
            _save(checkpoint, run, model, opt, distiller, gen, device)
            last_save = time.monotonic()
    bar.close()
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    timed = run.epoch_times[1:] if len(run.epoch_times) > 1 else run.epoch_times  # the first epoch is warm-up
    timing.update(epoch_s=statistics.median(timed) if timed else 0.0, train_s=sum(run.epoch_times),
                  eval_s_per_pass=timing["eval_s"] / max(timing["n_evals"], 1),
                  peak_rss_mb=max(run.peak_rss_mb, peak_rss_mb()))
    if run.resumed_at:  # the run was split over processes: say where (precompute_s is the first process's)
        timing["resumed_at_epochs"] = run.resumed_at
    if device.type == "cuda":
        timing["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return TrainResult(run.best_epoch + 1, epoch + 1, run.best_valid, run.history, timing)
