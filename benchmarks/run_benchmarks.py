"""Speed benchmarks that print ratios measured in one run (machines are noisy: compare within a run).

    python benchmarks/run_benchmarks.py eval      # full ranking, Gowalla-sized, vs matmul+topk floor
    python benchmarks/run_benchmarks.py epochs    # epoch times: Gowalla students/teacher, CiteULike methods
    python benchmarks/run_benchmarks.py checkpoint  # save/load time of a 2000-d teacher's training state
    python benchmarks/run_benchmarks.py floors    # lower bounds on KD's, FitNet's, FreqD's, RD's, CD's, RRD's epochs
    python benchmarks/run_benchmarks.py all
    python benchmarks/run_benchmarks.py epochs --methods all --no-gowalla --cells citeulike/bprmf,citeulike/lightgcn

Each method's epoch is timed in its own subprocess so that its peak RSS is its own. FLOPs per epoch are counted
from the shapes of the dense products a method adds (projectors, candidate scores, per-epoch rankings; the
sparse filter is counted as 2·nnz·d) and compared with a dense fp32 matmul timed in the same run.
Needs the real data under $KDBENCH_DATA (default ../shared/datasets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", message="Sparse")
DATA = os.environ.get("KDBENCH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def matmul_gflops(n: int = 2048, reps: int = 5, trials: int = 5) -> float:
    """The machine's dense fp32 peak: the best of ``trials`` timings of ``reps`` products (a shared VM's speed
    varies from second to second; the best trial is the peak the methods' throughputs are compared with, so a slow
    trial cannot flatter them)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 * reps / best / 1e9


def ranking_floor(users: torch.Tensor, items: torch.Tensor, k: int = 50):
    """The bare cost of a full ranking: scores of every user against every item and their top-``k``, in the
    evaluator's cache-sized chunks (no masking, no metrics)."""
    from kdbench.evaluate import CHUNK_BYTES

    chunk, it = CHUNK_BYTES // (4 * len(items)), items.t().contiguous()

    def run():
        with torch.inference_mode():
            for s in range(0, len(users), chunk):
                torch.topk(users[s:s + chunk] @ it, k, dim=1)
    return run


def bench_eval() -> dict:
    """Full ranking of Gowalla's shape (29,858 users × 40,981 items, d = 20, train masked) vs the floor."""
    from kdbench.datasets import load_dataset
    from kdbench.evaluate import evaluate
    from kdbench.runtime import keep_freed_memory

    keep_freed_memory()  # as in every kdbench process, where evaluation follows training (train.fit sets it)

    ds = load_dataset("gowalla", DATA)
    g = torch.Generator().manual_seed(0)
    u, i = torch.randn(ds.n_users, 20, generator=g), torch.randn(ds.n_items, 20, generator=g)
    floor = ranking_floor(u, i)

    def ours():
        evaluate(u, i, ds, "test")

    times = {"floor": [], "kdbench": []}
    for _ in range(6):  # interleaved, so drifts in machine load hit both; the best of each (see README: Speed)
        for name, fn in (("floor", floor), ("kdbench", ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    f, o = min(times["floor"]), min(times["kdbench"])
    return {"users": ds.n_users, "items": ds.n_items, "masked_train_valid": len(ds.train) + len(ds.valid),
            "floor_s": f, "eval_s": o, "ratio": o / f}


def bench_checkpoint(dataset: str = "citeulike", backbone: str = "lightgcn", reps: int = 3) -> dict:
    """What ``--checkpoint-every`` costs: one save and one load of a teacher's whole training state (weights, Adam's
    two moments, the best-epoch weights) at the ``paper`` size, through the same code as ``fit``."""
    import tempfile

    from kdbench.backbones import BACKBONES
    from kdbench.checkpoint import TrainingCheckpoint
    from kdbench.config import resolve_cell
    from kdbench.datasets import load_dataset
    from kdbench.train import RoleConfig, _RunState, _save, make_adam

    ds = load_dataset(dataset, DATA)
    t = resolve_cell(dataset, backbone, "student", 0, "paper", {})["teacher"]
    bb = BACKBONES.get(backbone)
    model = bb(ds, t["dim"], bb.Config(**t["backbone"]))
    opt = make_adam(list(model.parameters()), RoleConfig(lr=1e-3))
    users = torch.arange(64)
    model.loss(model(users, users % ds.n_items, users[:, None] % ds.n_items)).backward()
    opt.step()  # Adam's moments exist, as in any checkpoint after the first epoch
    run = _RunState(timing={}, best_state={k: v.clone() for k, v in model.state_dict().items()})
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = TrainingCheckpoint(Path(tmp) / "c.pt", "bench", 0)
        saves, loads = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            _save(ckpt, run, model, opt, None, gen, torch.device("cpu"))
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ckpt.load(torch.device("cpu"))
            loads.append(time.perf_counter() - t0)
        size = ckpt.path.stat().st_size
    return {"cell": f"{dataset}/{backbone}", "teacher_dim": t["dim"], "size_mb": size / 2 ** 20,
            "save_s": min(saves), "load_s": min(loads)}


def untrained_distiller(ds, cfg: dict, backbone: str, method: str, student):
    """The method's distiller for ``student`` with an untrained teacher of the cell's size (timing only)."""
    from kdbench.backbones import BACKBONES
    from kdbench.methods import DISTILLERS
    from kdbench.teacher import Teacher

    bb, t = BACKBONES.get(backbone), cfg["teacher"]
    teacher = Teacher(bb(ds, t["dim"], bb.Config(**t["backbone"])), ds)
    cls = DISTILLERS.get(method)
    return cls(teacher, student, ds, cls.Config(**cfg["method"]["params"]))


def denormal_steps(method: str, flush: bool, fraction: float, steps: int = 6) -> dict:
    """ms per training step (student BPR + the method's loss, forward and backward) of DE or HTD on CiteULike/BPRMF
    (``cpu`` preset), with ``fraction`` of the expert weights moved into the denormal range, as the experts that
    the annealed selection stops choosing end up after some 30 epochs of the grid; runs in its own process."""
    from kdbench.backbones import BACKBONES
    from kdbench.config import resolve_cell
    from kdbench.datasets import load_dataset
    from kdbench.runtime import keep_freed_memory
    from kdbench.sampling import PairMembership, sample_excluding

    keep_freed_memory()
    torch.set_flush_denormal(flush)
    ds = load_dataset("citeulike", DATA)
    cfg = resolve_cell("citeulike", "bprmf", method, 0, "cpu", {})
    bb, s = BACKBONES.get("bprmf"), cfg["student"]
    student = bb(ds, s["dim"], bb.Config(**s["backbone"]))
    distiller = untrained_distiller(ds, cfg, "bprmf", method, student)
    distiller.precompute()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bank in (distiller.experts.user_experts, distiller.experts.item_experts):
            for w in (bank.w1, bank.w2):
                hit = torch.rand(w.shape, generator=g) < fraction  # magnitudes spread over 1e-44 .. 1e-39
                w[hit] = torch.sign(w[hit]) * 10.0 ** -(39 + 5 * torch.rand(int(hit.sum()), generator=g))
    pairs = torch.from_numpy(ds.train)
    seen = PairMembership(pairs, ds.n_items)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        batch = pairs[torch.randint(0, len(pairs), (cfg["student"]["batch_size"],), generator=g)]
        out = student(batch[:, 0], batch[:, 1], sample_excluding(batch[:, 0], 1, ds.n_items, seen, g))
        loss = student.loss(out) + cfg["method"]["params"]["weight"] * sum(distiller.loss(out).values())
        loss.backward()
        times.append(time.perf_counter() - t0)
    return {"method": method, "flush": flush, "fraction": fraction, "ms_per_step": 1000 * statistics.median(times[1:])}


def bench_denormals(fraction: float) -> list[dict]:
    out = []
    for method in ("de", "htd"):
        for flush in (False, True):
            res = subprocess.run([sys.executable, __file__, "_denormal", method, str(int(flush)), str(fraction)],
                                 capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(res.stderr[-2000:])
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def count_entities(ds, batch_size: int, seed: int = 0) -> dict:
    """Mean unique users / positives / negatives per step and steps per epoch (one simulated epoch)."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.from_numpy(ds.train)
    perm = torch.randperm(len(pairs), generator=g)
    nu = npos = nneg = steps = 0
    for s in range(0, len(pairs), batch_size):
        b = pairs[perm[s:s + batch_size]]
        nu += len(torch.unique(b[:, 0]))
        npos += len(torch.unique(b[:, 1]))
        nneg += len(torch.unique(torch.randint(ds.n_items, (len(b),), generator=g)))
        steps += 1
    return {"steps": steps, "users": nu / steps, "pos": npos / steps, "neg": nneg / steps}


def method_flops(method: str, ds, ent: dict, d_s: int, d_t: int, params: dict) -> float:
    """Dense FLOPs per epoch that the method adds to the student (forward + backward ≈ 3× forward)."""
    if "+" in method:  # a composite: its parts' FLOPs, each with its own (prefixed) hyperparameters
        parts = method.split("+")
        return sum(method_flops(p, ds, ent, d_s, d_t, {k[len(p) + 1:]: v for k, v in params.items()
                                                        if k.startswith(p.replace(".", "_") + "_")}) for p in parts)
    n_e = ent["users"] + ent["pos"] + ent["neg"]
    steps = ent["steps"]
    if method == "fitnet":
        return steps * 3 * 2 * n_e * d_s * d_t
    if method.startswith("freqd"):
        h = (d_s + d_t) // 2
        proj = steps * 3 * 2 * n_e * (d_s * h + h * d_t)
        if params.get("alpha", 0.2) == 0:
            return proj
        avg_deg = 2 * len(ds.train) / (ds.n_users + ds.n_items)
        return proj + steps * 2 * 2 * n_e * avg_deg * d_s  # row-block SpMM forward + backward
    if method in ("de", "htd"):  # M expert MLPs per side on every batch entity (all experts, batched)
        m = params.get("num_experts", params.get("num_groups", 30))
        h = (d_s + d_t) // 2
        flops = steps * 3 * 2 * n_e * m * (d_s * h + h * d_t)
        if method == "htd":  # entity Grams (teacher no-grad, student fwd+bwd) over the batch's users and items
            flops += steps * 2 * (ent["users"] + ent["pos"] + ent["neg"]) ** 2 * (d_t + 3 * d_s) / (2 * m)
        return flops
    if method == "ftd":
        n = ent["users"] + ent["pos"] + ent["neg"]
        return steps * 2 * n * (d_t * d_t + 3 * d_s * d_t + 3 * d_s * d_s)  # Gram-free form ‖TᵀT‖² − 2‖TᵀS‖² + ‖SᵀS‖²
    if method in ("rd", "cd", "rrd", "rrd.nosample"):
        k = {"rd": params.get("k", 30) + params.get("n_dynamic", 100), "cd": params.get("n_distill", 2)}.get(
            method, params.get("k", 100) + params.get("l", 200))
        return steps * 3 * 2 * ent["users"] * k * d_s
    if method == "kd":
        k = params.get("k", 50)
        per_epoch = 2 * ds.n_users * ds.n_items * d_s + 2 * ds.n_users * k * d_t  # student ranking, T scores
        return per_epoch + steps * 3 * 2 * ent["users"] * k * d_s
    return 0.0


def one_epoch_run(dataset: str, backbone: str, method: str, role: str, epochs: int, profile: str,
                  set_: list[str]) -> dict:
    """Time ``epochs`` epochs of one method (no evaluation); runs inside its own process."""
    from kdbench.backbones import BACKBONES
    from kdbench.config import parse_set, resolve_cell
    from kdbench.datasets import load_dataset
    from kdbench.train import RoleConfig, TrainConfig, fit, peak_rss_mb

    ds = load_dataset(dataset, DATA)
    cfg = resolve_cell(dataset, backbone, method, 0, profile, parse_set(set_))
    bb = BACKBONES.get(backbone)
    rss_data = peak_rss_mb()
    train = TrainConfig(max_epochs=epochs, patience=epochs, eval_every=10 ** 9)
    rc = cfg[role]
    model = bb(ds, rc["dim"], bb.Config(**rc["backbone"]))
    distiller = None
    if role == "student" and method != "student":
        distiller = untrained_distiller(ds, cfg, backbone, method, model)
    role_cfg = RoleConfig(**{k: v for k, v in rc.items() if k != "backbone"})
    res = fit(model, ds, role_cfg, train, 0, distiller, cfg["method"]["params"]["weight"])
    out = {"epoch_s": res.timing["epoch_s"], "precompute_s": res.timing["precompute_s"],
           "peak_rss_mb": res.timing["peak_rss_mb"], "rss_after_data_mb": rss_data,
           "d_s": cfg["student"]["dim"], "d_t": cfg["teacher"]["dim"], "params": cfg["method"]["params"],
           "batch_size": rc["batch_size"]}
    if distiller is not None:
        ent = count_entities(ds, rc["batch_size"])
        out["flops_per_epoch"] = method_flops(method, ds, ent, cfg["student"]["dim"], cfg["teacher"]["dim"],
                                              cfg["method"]["params"])
    return out


def _best_of(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_floors(student_epoch_s: float) -> list[dict]:
    """Lower bounds on six methods' epochs (CiteULike, BPRMF, the spec's 400-d teacher and 20-d student): the
    student's own epoch plus only the bare kernels that the method cannot do without, timed here on random data of
    its shapes — no autograd, no loss, no optimiser, no gathers but FitNet's and the list scores'. If even such a
    floor misses a speed target, no implementation of the same computation meets it on this machine.

    - kd: the per-epoch ranking of all items for every user that the student guide needs (one matmul + top-50 in
      the evaluator's cache-sized chunks: ``ranking_floor``, as in ``bench_eval``);
    - fitnet: per step, the gather of the batch's teacher rows and the two [n_e × d_t] × [d_t × d_s] products of
      its closed form (the loss and the projector's gradient);
    - freqd: per step, the projector MLP's six GEMMs (forward, input and weight gradients of d_s → h → d_t) on the
      batch's entities, split per side as the two projectors are (the report divides the method's FLOPs by the
      floor epoch and compares with the dense matmul of the same run);
    - rd, cd, rrd (the list methods, at their defaults): per step, the scores of each batch user's list of items
      (RD: the teacher's top-K; CD: its sampled items; RRD: K interesting + L uninteresting) — the gather of the
      listed item rows and their dot products with the user rows, and for the items' gradient, which scatter-adds
      as many rows back, a second gather of the same rows (a scatter moves at least those bytes; ``index_add_``
      itself takes 2.7–4.4× a gather here) (``list_step``); per epoch, CD's ranking of all items for its
      top-``pool_size`` guide list and RRD's draws, counted as bare random item ids for its K + L items per user
      (its Gumbel top-K over each user's teacher list costs more)."""
    from kdbench.datasets import load_dataset

    ds = load_dataset("citeulike", DATA)
    d_s, d_t, k = 20, 400, 50
    ent = count_entities(ds, 2048)
    steps, n_u, n_i = ent["steps"], round(ent["users"]), round(ent["pos"] + ent["neg"])
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    out = []

    rank_s = _best_of(ranking_floor(rnd(ds.n_users, d_s), rnd(ds.n_items, d_s), k))
    out.append({"method": "kd", "floor_added_s": rank_s, "what": f"ranking {ds.n_users}×{ds.n_items}, top-{k}",
                "target_x": 2.0})

    teacher, n_e = rnd(ds.n_users + ds.n_items, d_t), n_u + n_i
    rows = torch.randint(len(teacher), (n_e,), generator=g)
    s_e, p_w = rnd(n_e, d_s), rnd(d_t, d_s)

    def fitnet_step():
        t = teacher[rows]
        t @ p_w        # Pᵀt per entity: the loss's cross term and the students' gradient
        t.t() @ s_e    # Σ t sᵀ: the projector's gradient
    out.append({"method": "fitnet", "floor_added_s": steps * _best_of(fitnet_step, 20),
                "what": f"{steps} × (gather {n_e}×{d_t} + 2 GEMMs)", "target_x": 2.0})

    h = (d_s + d_t) // 2
    w1, w2 = rnd(h, d_s), rnd(d_t, h)
    sides = [(rnd(n, d_s), rnd(n, h), rnd(n, d_t)) for n in (n_u, n_i)]

    def freqd_step():
        for x, hid, gout in sides:
            x @ w1.t(), hid @ w2.t()        # forward
            gout @ w2, gout.t() @ hid       # layer 2: input and weight gradients
            hid @ w1, hid.t() @ x           # layer 1
    flops = steps * 3 * 2 * n_e * (d_s * h + h * d_t)
    out.append({"method": "freqd", "floor_added_s": steps * _best_of(freqd_step, 20), "flops": flops,
                "what": f"{steps} × projector GEMMs ({n_u} + {n_i} rows, {d_s}→{h}→{d_t})", "target_pct": 50.0})
    from kdbench.config import resolve_cell

    params = {m: resolve_cell("citeulike", "bprmf", m, 0, PROFILE, {})["method"]["params"] for m in ("rd", "cd", "rrd")}
    users_t, items_t = rnd(ds.n_users, d_s), rnd(ds.n_items, d_s)

    def list_step(m: int):
        idx = torch.randint(ds.n_items, (n_u * m,), generator=g)
        u = users_t[:n_u, :, None]

        def run():
            rows = items_t.index_select(0, idx)
            torch.bmm(rows.view(n_u, m, d_s), u)     # the scores
            items_t.index_select(0, idx)             # stands for the items' gradient (see above)
        return run

    k_rd, k_cd = params["rd"]["k"], params["cd"]["n_distill"]
    out.append({"method": "rd", "floor_added_s": steps * _best_of(list_step(k_rd), 20),
                "what": f"{steps} × list scores {n_u}×{k_rd}", "target_x": 2.0})
    pool = params["cd"]["pool_size"]
    out.append({"method": "cd", "floor_added_s": _best_of(ranking_floor(users_t, items_t, pool))
                + steps * _best_of(list_step(k_cd), 20),
                "what": f"ranking {ds.n_users}×{ds.n_items}, top-{pool}; {steps} × list scores {n_u}×{k_cd}",
                "target_x": 2.0})
    p = params["rrd"]
    rrd_s = _best_of(lambda: torch.randint(ds.n_items, (ds.n_users, p["k"] + p["l"]), generator=g)) \
        + steps * _best_of(list_step(p["k"] + p["l"]), 20)
    out.append({"method": "rrd", "floor_added_s": rrd_s,
                "what": f"draws {ds.n_users}×{p['k'] + p['l']}; {steps} × list scores {n_u}×{p['k'] + p['l']}",
                "target_x": 2.0})
    for r in out:
        r["floor_epoch_s"] = student_epoch_s + r["floor_added_s"]
        r["floor_x"] = r["floor_epoch_s"] / student_epoch_s
    return out


PROFILE = "paper"   # the settings (teacher size) the method timings use; --profile cpu for the grid's


def run_child(dataset: str, backbone: str, method: str, role: str, epochs: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "_one", dataset, backbone, method, role, epochs, PROFILE],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


FOUNDATION = ("student", "kd", "fitnet", "freqd", "freqd.nofilter")


def bench_epochs(epochs: int, methods: tuple[str, ...] = FOUNDATION, gowalla: bool = True,
                 cells: tuple[str, ...] = ("citeulike/bprmf",)) -> dict:
    """Gowalla students and teacher (unless ``gowalla`` is False), then every method on every dataset/backbone of
    ``cells``; each timing in its own process."""
    out = {"gowalla": {}}
    if gowalla:
        for backbone, role in (("bprmf", "student"), ("lightgcn", "student"), ("bprmf", "teacher")):
            out["gowalla"][f"{backbone}/{role}"] = run_child("gowalla", backbone, "student", role, str(epochs))
    for cell in cells:
        dataset, backbone = cell.split("/")
        out[cell] = {m: run_child(dataset, backbone, m, "student", str(epochs))
                     for m in ("student", *[m for m in methods if m != "student"])}
    if gowalla and "citeulike/bprmf" in out:
        out["citeulike/bprmf"]["teacher"] = run_child("citeulike", "bprmf", "student", "teacher", str(epochs))
    return out


def report(results: dict, gflops: float) -> str:
    lines = [f"dense fp32 matmul (2048³, {torch.get_num_threads()} threads): {gflops:.1f} GFLOP/s", ""]
    if "eval" in results:
        e = results["eval"]
        lines += [f"full ranking {e['users']}×{e['items']} d=20 (train+valid masked): {e['eval_s']:.2f} s; "
                  f"floor (matmul + top-50) {e['floor_s']:.2f} s; ratio {e['ratio']:.2f}× (target ≤ 1.5×)", ""]
    if "checkpoint" in results:
        c = results["checkpoint"]
        lines += [f"training checkpoint of the {c['cell']} {c['teacher_dim']}-d teacher (weights, Adam moments, best "
                  f"weights): {c['size_mb']:.0f} MB, save {c['save_s']:.2f} s, load {c['load_s']:.2f} s", ""]
    if "denormals" in results:
        d = {(r["method"], r["flush"]): r for r in results["denormals"]}
        frac = results["denormals"][0]["fraction"]
        for method in ("de", "htd"):
            off, on = d[(method, False)]["ms_per_step"], d[(method, True)]["ms_per_step"]
            lines.append(f"{method} step with {100 * frac:g}% of the expert weights denormal: {off:.0f} ms as is, "
                         f"{on:.0f} ms flushed to zero ({off / on:.1f}×)")
        lines.append("")
    if "floors" in results:
        lines += [f"lower bounds, CiteULike BPRMF (teacher 400-d, student 20-d): the student's epoch "
                  f"({results['floors_student_epoch_s']:.3f} s, timed in this run) + the method's bare kernels",
                  "", "| method | bare kernels | target | measured epoch_s | measured overhead_x | measured % of "
                  "matmul | floor epoch_s | floor overhead_x | floor % of matmul |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        base = results["floors_student_epoch_s"]
        for r in results["floors"]:
            target = f"≥ {r['target_pct']:.0f} % of matmul" if "target_pct" in r else f"≤ {r['target_x']:.0f}×"
            m, fl = r["measured_epoch_s"], r.get("flops")
            pct = [f"{100 * fl / t / 1e9 / gflops:.0f} %" if fl else "" for t in (m, r["floor_epoch_s"])]
            lines.append(f"| {r['method']} | {r['what']} | {target} | {m:.3f} | {m / base:.2f} | {pct[0]} | "
                         f"{r['floor_epoch_s']:.3f} | {r['floor_x']:.2f} | {pct[1]} |")
        lines.append("")
    if "epochs" in results:
        # throughput over the whole epoch (the student's own training included) and over the time the method adds
        lines.append("| dataset | run | epoch_s | overhead_x | precompute_s | peak_rss_mb | GFLOP/epoch | GFLOP/s | "
                     "% of matmul | % of matmul, added time |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for ds, runs in results["epochs"].items():
            base = runs.get("student", {}).get("epoch_s")
            for name, r in runs.items():
                fl = r.get("flops_per_epoch")
                rate = fl / r["epoch_s"] / 1e9 if fl else None
                is_method = base and ds != "gowalla" and name != "teacher"
                ov = f"{r['epoch_s'] / base:.2f}" if is_method else ""
                added = fl / (r["epoch_s"] - base) / 1e9 if fl and is_method and r["epoch_s"] > base else None
                lines.append(f"| {ds} | {name} | {r['epoch_s']:.3f} | {ov} | {r['precompute_s']:.2f} | "
                             f"{r['peak_rss_mb']:.0f} | {fl / 1e9 if fl else 0:.1f} | "
                             f"{rate or 0:.1f} | {100 * rate / gflops if rate else 0:.0f}% | "
                             f"{f'{100 * added / gflops:.0f}%' if added else ''} |")
        c = results["epochs"].get("citeulike/bprmf", {})
        if "freqd.nofilter" not in c or "teacher" not in c:
            return "\n".join(lines)
        ratio = c['freqd']['epoch_s'] / c['freqd.nofilter']['epoch_s']
        lines += ["", f"freqd / freqd.nofilter epoch ratio: {ratio:.2f} (target ≤ 1.3)",
                  "official code on this kind of machine (issue #3): student 2.45 s, KD 7.8 s, 400-d teacher 6.65 s; "
                  f"speed-ups here: student {2.45 / c['student']['epoch_s']:.1f}×, KD {7.8 / c['kd']['epoch_s']:.1f}×,"
                  f" teacher {6.65 / c['teacher']['epoch_s']:.1f}× (targets 10×, 10×, 5×)"]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        dataset, backbone, method, role, epochs, profile, *set_ = sys.argv[2:]
        print(json.dumps(one_epoch_run(dataset, backbone, method, role, int(epochs), profile, set_)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_denormal":
        print(json.dumps(denormal_steps(sys.argv[2], bool(int(sys.argv[3])), float(sys.argv[4]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["eval", "epochs", "checkpoint", "denormals", "floors", "all"])
    p.add_argument("--epochs", type=int, default=4, help="epochs per timing run (the first is warm-up)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--denormal-fraction", type=float, default=0.01,
                   help="denormals: share of the expert weights moved into the denormal range")
    p.add_argument("--methods", default=",".join(FOUNDATION),
                   help="CiteULike methods to time (comma list; 'baselines' = rd,cd,rrd,de,ftd,htd)")
    p.add_argument("--no-gowalla", action="store_true", help="skip the Gowalla student/teacher epochs")
    p.add_argument("--cells", default="citeulike/bprmf",
                   help="dataset/backbone pairs to time the methods on, e.g. citeulike/bprmf,gowalla/lightgcn")
    p.add_argument("--profile", default="paper", help="settings of the timed runs (paper: the spec's teacher "
                   "sizes; cpu: teachers of at most 200-d, as in the committed grid)")
    args = p.parse_args()
    global PROFILE
    PROFILE = args.profile
    results = {"profile": args.profile}
    gflops = matmul_gflops()
    if args.what in ("checkpoint", "all"):
        results["checkpoint"] = bench_checkpoint()
    if args.what in ("eval", "all"):
        results["eval"] = bench_eval()
    if args.what in ("denormals", "all"):
        results["denormals"] = bench_denormals(args.denormal_fraction)
    if args.what == "floors":  # the methods' measured epochs and their floors, from the same run
        measured = {m: run_child("citeulike", "bprmf", m, "student", str(args.epochs))["epoch_s"]
                    for m in ("student", "kd", "fitnet", "freqd", "rd", "cd", "rrd")}
        results["floors_student_epoch_s"] = measured["student"]
        results["floors"] = bench_floors(measured["student"])
        for r in results["floors"]:
            r["measured_epoch_s"] = measured[r["method"]]
    if args.what in ("epochs", "all"):
        methods = {"baselines": "rd,cd,rrd,de,ftd,htd",
                   "all": "kd,fitnet,freqd,freqd.nofilter,rd,cd,rrd,de,ftd,htd,de+rrd"}.get(args.methods, args.methods)
        results["epochs"] = bench_epochs(args.epochs, tuple(methods.split(",")), not args.no_gowalla,
                                         tuple(args.cells.split(",")))
    results["matmul_gflops"] = gflops
    print(report(results, gflops))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
