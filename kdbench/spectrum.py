"""Frequency-band analysis of learned representations: ``kdbench analyze freq`` (spec §4.5.4).

Which frequencies of the user–item graph has a student learned? With L = I − Â (Â = D^{-1/2} A D^{-1/2} of the
training graph, §4.5.2; eigenvalues 0 ≤ λ ≤ 2, small λ = smooth over neighbours) and features X = [X_U; X_I], the
energy of X in a band [a, b) is E_[a,b](X) = Σ_{k: λ_k ∈ [a,b)} ‖u_kᵀX‖². Two ways to get it:

* **exact** (§4.5.4 item 1): the SVD of R̃ = D_U^{-1/2} R D_I^{-1/2} gives every eigenpair of Â — (±σ_k,
  [p_k; ±q_k]/√2), so λ = 1 ∓ σ_k with energy ½‖p_kᵀX_U ± q_kᵀX_I‖² — and the rest of ‖X‖_F² lies in the null
  space of Â (λ = 1: the |n_I − n_U| extra dimensions, zero singular values, isolated nodes). The triplets come
  from the eigendecomposition of the smaller Gram matrix R̃R̃ᵀ (or R̃ᵀR̃), much faster than a dense SVD; modes
  with σ ≤ 1e-4 (λ within 1e-4 of 1) are counted with the null space (see ``NULL_SIGMA``).
* **chebyshev** (§4.5.4 item 2, kernel polynomial method): moments μ_j = tr(Xᵀ T_j(−Â) X) from m sparse products,
  combined with the Jackson-damped Chebyshev coefficients of each band's indicator. Energy within about π/m of a
  band edge is split between the two neighbouring bands. In particular the null-space block at λ = 1, which sits
  on the edge between the two middle ``equal_width`` bands, is shared about half and half by [.5, 1) and [1, 1.5)
  in this mode, while exact mode puts all of it in [1, 1.5); the outer bands and the sum of the two middle ones are
  unaffected.

Per band b the analysis reports the energy fraction e_b(X) = E_b(X)/‖X‖_F² of the teacher and of every student,
and for students the relative distillation error r_b = E_b(S W* − T)/E_b(T) (item 4). Simplification: the spec
uses a method's own projector P(S) when it has one; here every method gets the closed-form ridge map W* (§4.5.4
item 4), so that methods with and without projectors are compared on the same footing. Both are computed on the
final representations, raw and row-L2-normalised (the latter matches cosine losses).
"""
from __future__ import annotations

import csv
import functools
import io
import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .datasets import DATASETS, DataConfig, Dataset, load_dataset, load_folder
from .records import atomic_write_bytes, atomic_write_text, read_record, safe_name

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

log = logging.getLogger(__name__)

BANDS = ("equal_width", "equal_count")
MODES = ("auto", "exact", "chebyshev")
CSV_COLUMNS = ["method", "normalized", "band", "lambda_lo", "lambda_hi", "energy_frac", "rel_error"]
EQUAL_WIDTH_EDGES = (0.0, 0.5, 1.0, 1.5, 2.0)
# auto mode's limits for the exact mode (the Gram eigendecomposition is O(min(n_U, n_I)³) time)
EXACT_MAX_SIDE = 6000
EXACT_MAX_CELLS = 2e8
DEFAULT_MOMENTS = 200
# Singular values at or below this count as 0, i.e. their modes join the null space at λ = 1 (within 1e-4 of
# it anyway). The Gram eigenvalues σ² carry an absolute rounding error of about n·eps, which the large-side vector
# Mᵀv/σ amplifies by 1/σ², so smaller σ are not resolved; exact zeros (isolated nodes, rank deficiency) then sit
# at exactly λ = 1 instead of being scattered to either side of the band edge there.
NULL_SIGMA = 1e-4


# -- the graph ---------------------------------------------------------------------------------------------------
def normalized_rating(r: sp.spmatrix) -> sp.csr_matrix:
    """R̃ = D_U^{-1/2} R D_I^{-1/2} in float64: the off-diagonal block of ``graph.normalized_adjacency`` (degree-0
    rows and columns stay 0), kept in float64 so that eigenvalues at λ = 1 are not moved by float32 rounding."""
    r = sp.csr_matrix(r, dtype=np.float64)
    du, di = (_inv_sqrt(np.asarray(r.sum(axis=ax)).ravel()) for ax in (1, 0))
    return sp.csr_matrix(sp.diags(du) @ r @ sp.diags(di))


def _inv_sqrt(deg: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0)


def bipartite_adjacency(rn: sp.spmatrix) -> sp.csr_matrix:
    """Â = [[0, R̃], [R̃ᵀ, 0]] as sparse CSR (users first, then items)."""
    return sp.bmat([[None, rn], [rn.T, None]], format="csr", dtype=np.float64)


# -- bands ------------------------------------------------------------------------------------------------------
def band_edges(bands: str, eigenvalues: np.ndarray | None = None) -> np.ndarray:
    """The 5 edges of the four bands [e0, e1), [e1, e2), [e2, e3), [e3, e4] (the last one closed).

    ``equal_count`` puts each edge midway between the eigenvalues on either side of a quarter of the sorted
    spectrum, so that rounding noise cannot move an eigenvalue across it. A block of equal eigenvalues (the null
    space at λ = 1) is never split — the energy of a degenerate eigenspace has no per-vector attribution — so with
    ties the counts are only roughly equal and a band may even be empty.
    """
    if bands == "equal_width":
        return np.array(EQUAL_WIDTH_EDGES)
    if bands != "equal_count":
        raise ValueError(f"bands {bands!r}: choose one of {', '.join(BANDS)}")
    if eigenvalues is None:
        raise ValueError("equal_count bands need the full spectrum, which only the exact mode computes; "
                         "use --mode exact or --bands equal_width")
    lam = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, 2.0))
    if len(lam) < 4:
        raise ValueError(f"equal_count bands need at least 4 eigenvalues, got {len(lam)}")
    cuts = [round(j * len(lam) / 4) for j in (1, 2, 3)]
    return np.array([0.0, *((lam[k - 1] + lam[k]) / 2 for k in cuts), 2.0])


def band_index(lam: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The band of each eigenvalue: [e_b, e_{b+1}) with the top band closed at λ = 2."""
    lam = np.clip(np.asarray(lam, dtype=np.float64), edges[0], edges[-1])
    return np.minimum(np.searchsorted(edges, lam, side="right") - 1, len(edges) - 2)


# -- exact mode -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BipartiteSpectrum:
    """The singular values σ_k > NULL_SIGMA of R̃ and their singular vectors on the smaller side: with M = R̃
    oriented small side × large side, v_k = the small-side vector and w_k = Mᵀv_k/σ_k the large-side one, which
    is never stored (w_kᵀX = v_kᵀ(M X)/σ_k costs one sparse product per model)."""
    n_users: int
    n_items: int
    sigma: np.ndarray         # [r]
    v: np.ndarray             # [n_small, r]
    m: sp.csr_matrix          # [n_small, n_large]: R̃ if n_users <= n_items, else R̃ᵀ

    @property
    def n(self) -> int:
        return self.n_users + self.n_items

    @property
    def users_small(self) -> bool:
        return self.n_users <= self.n_items

    def eigenvalues(self) -> np.ndarray:
        """All N eigenvalues of L, sorted (the null space of Â contributes λ = 1 with its multiplicity)."""
        ones = np.ones(self.n - 2 * len(self.sigma))
        return np.sort(np.concatenate([1.0 - self.sigma, ones, 1.0 + self.sigma]))


def bipartite_spectrum(rn: sp.spmatrix | np.ndarray) -> BipartiteSpectrum:
    """The singular triplets of R̃ (``normalized_rating``) from the eigendecomposition of the smaller Gram matrix
    M Mᵀ: O(min(n_U, n_I)³) time and min(n_U, n_I)² float64 memory (CiteULike, 5,219 × 25,181: ~220 MB); with
    OpenBLAS this is about 10× faster than a dense SVD of R̃, and needs no n_U × n_I dense copy."""
    rn = sp.csr_matrix(rn, dtype=np.float64)
    users_small = rn.shape[0] <= rn.shape[1]
    m = rn if users_small else sp.csr_matrix(rn.T)
    s2, v = np.linalg.eigh((m @ m.T).toarray())
    keep = s2 > NULL_SIGMA ** 2
    return BipartiteSpectrum(rn.shape[0], rn.shape[1], np.sqrt(s2[keep]), np.ascontiguousarray(v[:, keep]), m)


def spectrum_of(ds: Dataset) -> BipartiteSpectrum:
    return bipartite_spectrum(normalized_rating(ds.csr("train")))


def _as_features(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.shape[0] != n:
        raise ValueError(f"features have {x.shape[0]} rows, the graph has {n} nodes (users then items)")
    return x


def exact_band_energy(spec: BipartiteSpectrum | Dataset, x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """E_b(X) per band, exactly (``spec``: a spectrum to reuse across models, or a dataset to compute it for)."""
    if isinstance(spec, Dataset):
        spec = spectrum_of(spec)
    x = _as_features(x, spec.n)
    xu, xi = x[: spec.n_users], x[spec.n_users:]
    x_small, x_large = (xu, xi) if spec.users_small else (xi, xu)
    # the pair (±σ, [p; ±q]/√2) is symmetric in the two sides, so the small side can play p
    a = spec.v.T @ x_small
    b = (spec.v.T @ (spec.m @ x_large)) / spec.sigma[:, None]
    lam = np.concatenate([1.0 - spec.sigma, 1.0 + spec.sigma])
    mode_energy = 0.5 * np.concatenate([((a + b) ** 2).sum(1), ((a - b) ** 2).sum(1)])
    energy = np.bincount(band_index(lam, edges), weights=mode_energy, minlength=len(edges) - 1)
    # the null space (incl. isolated nodes) has no basis here, only its total; a negative rest is rounding error
    rest = max(float((x ** 2).sum()) - float(mode_energy.sum()), 0.0)
    energy[band_index(np.array([1.0]), edges)[0]] += rest
    return energy


# -- chebyshev mode ---------------------------------------------------------------------------------------------
def jackson_damping(m: int) -> np.ndarray:
    """Jackson kernel factors g_0..g_{m-1} (g_0 = 1): they suppress the Gibbs oscillations of a truncated
    expansion of a step, at a resolution of about π/m."""
    j = np.arange(m)
    q = np.pi / (m + 1)
    return ((m - j + 1) * np.cos(q * j) + np.sin(q * j) / np.tan(q)) / (m + 1)


def indicator_coefficients(lo: float, hi: float, m: int) -> np.ndarray:
    """Chebyshev coefficients c_0..c_{m-1} of the indicator of [lo, hi] ⊂ [−1, 1]."""
    t_lo, t_hi = np.arccos(np.clip([lo, hi], -1.0, 1.0))
    j = np.arange(1, m)
    c = np.empty(m)
    c[0] = (t_lo - t_hi) / np.pi
    c[1:] = 2.0 / np.pi * (np.sin(j * t_lo) - np.sin(j * t_hi)) / j
    return c


def chebyshev_moments(adj: sp.spmatrix, x: np.ndarray, m: int) -> np.ndarray:
    """μ_j = tr(Xᵀ T_j(−Â) X), j < m: m − 1 sparse products, never a dense N × N matrix."""
    mu = np.empty(m)
    y_prev, y = x, -(adj @ x)
    mu[0] = (x * x).sum()
    if m > 1:
        mu[1] = (x * y).sum()
    for j in range(2, m):
        y_prev, y = y, -2.0 * (adj @ y) - y_prev
        mu[j] = (x * y).sum()
    return mu


def chebyshev_band_energy(adj: sp.spmatrix, x: np.ndarray, edges: np.ndarray, m: int = DEFAULT_MOMENTS
                          ) -> np.ndarray:
    """E_b(X) per band, approximately, for any symmetric ``adj`` with spectrum in [−1, 1] (x = λ − 1 is an
    eigenvalue of −Â). The bands' coefficients add up to those of 1, so the energies sum to ‖X‖_F² exactly."""
    if m < 2:
        raise ValueError(f"chebyshev mode needs at least 2 moments, got {m}")
    x = _as_features(x, adj.shape[0])
    weighted = jackson_damping(m) * chebyshev_moments(adj, x, m)
    xe = np.asarray(edges, dtype=np.float64) - 1.0
    return np.array([indicator_coefficients(lo, hi, m) @ weighted for lo, hi in itertools.pairwise(xe)])


def resolve_mode(mode: str, n_users: int, n_items: int) -> str:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    small = min(n_users, n_items) <= EXACT_MAX_SIDE and n_users * n_items <= EXACT_MAX_CELLS
    return "exact" if small else "chebyshev"


# -- per-model quantities ---------------------------------------------------------------------------------------
def ridge_map(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """W* = argmin ‖S W − T‖² + ρ‖W‖², ρ = 1e-3 · tr(SᵀS)/d_s (scale-free, so raw and normalised features get
    the same relative regularisation)."""
    s, t = np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64)
    gram = s.T @ s
    rho = 1e-3 * np.trace(gram) / s.shape[1]
    if rho <= 0:  # an all-zero student: nothing maps to anything
        return np.zeros((s.shape[1], t.shape[1]))
    return np.linalg.solve(gram + rho * np.eye(s.shape[1]), s.T @ t)


def row_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def band_rows(teacher: np.ndarray, students: dict[str, np.ndarray], energy: Callable[[np.ndarray], np.ndarray],
              edges: np.ndarray) -> list[dict]:
    """CSV rows for the teacher and every student, raw then row-normalised; ``energy(X)`` gives E_b(X) per band."""
    rows = []
    for normalized in (False, True):
        t = row_normalize(teacher) if normalized else teacher
        e_t = energy(t)
        models = [("teacher", t)] + [(name, row_normalize(s) if normalized else s) for name, s in students.items()]
        for name, x in models:
            e_x = e_t if name == "teacher" else energy(x)
            total = float((x ** 2).sum())
            frac = e_x / total if total > 0 else np.full(len(e_x), np.nan)
            if name == "teacher":
                rel = [None] * len(e_x)
            else:
                e_r = energy(x @ ridge_map(x, t) - t)
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = list(np.where(e_t > 0, e_r / e_t, np.nan))
            for b in range(len(edges) - 1):
                rows.append({"method": name, "normalized": normalized, "band": b, "lambda_lo": float(edges[b]),
                             "lambda_hi": float(edges[b + 1]), "energy_frac": float(frac[b]),
                             "rel_error": None if rel[b] is None else float(rel[b])})
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([_csv_cell(r[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def _csv_cell(v: str | int | float | bool | None) -> str:
    if v is None:  # the teacher's rel_error: nothing to compare with
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return format(v, ".10g") if isinstance(v, float) else str(v)


# -- inputs from a grid's output directory ----------------------------------------------------------------------
def matching_records(out: Path, dataset: str, backbone: str, seed: int) -> list[tuple[Path, dict]]:
    """The ok method records (not the teacher cell) of one dataset/backbone/seed, ``student`` first."""
    found, available = [], set()
    for path in sorted((out / "cells").glob("*.json")):
        rec = read_record(path)
        if not rec or rec.get("status") != "ok" or rec.get("method") in (None, "teacher"):
            continue
        name = (rec.get("dataset") or {}).get("name")
        available.add(f"{name}/{rec.get('backbone')}/seed{rec.get('seed')}")
        if name == dataset and rec.get("backbone") == backbone and rec.get("seed") == seed:
            found.append((path, rec))
    if not found:
        have = ", ".join(sorted(available)) or "none"
        raise ValueError(f"no ok student records for dataset {dataset!r}, backbone {backbone!r}, seed {seed} in "
                         f"{out / 'cells'}; available (dataset/backbone/seed): {have}")
    return sorted(found, key=lambda pr: (pr[1]["method"] != "student", pr[1]["method"]))


def load_record_dataset(rec: dict, data_root: str | os.PathLike | None = None) -> Dataset:
    """The dataset a record was run on, checked by fingerprint. A folder dataset is recorded under the folder's
    name, which ``load_dataset`` cannot resolve from another working directory, so its recorded path is used."""
    info, cfg = rec["dataset"], DataConfig(**rec["config"]["data"])
    folder = (info.get("source") or {}).get("folder")
    if info["name"] in DATASETS or folder is None:
        ds = load_dataset(info["name"], data_root, cfg)
    elif Path(folder).is_dir():
        ds = load_folder(folder, cfg)
    else:
        raise ValueError(f"dataset {info['name']!r} was loaded from the folder {folder}, which no longer exists")
    if ds.fingerprint != info["fingerprint"]:
        raise ValueError(f"dataset {info['name']!r} as loaded now (fingerprint {ds.fingerprint[:12]}) is not the "
                         f"data the records were run on ({info['fingerprint'][:12]}); point --data-root at the "
                         "original files")
    return ds


def _teacher_key(rec: dict) -> str | None:
    return (rec.get("teacher") or {}).get("key")


def _distils(rec: dict) -> bool:
    """Whether the record's method learns from the teacher (``student`` does not; unknown plugins are assumed to)."""
    from .methods import DISTILLERS

    try:
        return DISTILLERS.get(rec["method"]).needs_teacher
    except KeyError:
        return True


def teacher_identities(records: list[tuple[Path, dict]], cache_dir: str | os.PathLike | None = None
                       ) -> dict[str, str]:
    """Teacher key → the sha256 of that teacher's cached weights, or the key itself when it is not in the cache.

    The cache key includes the training code's version, so a code change that trains the very same weights (a
    faster sparse product, say) gives the same teacher a new key: by weights, the students of both keys learned
    from one teacher and are compared against it."""
    from .teacher import TeacherCache

    cache = TeacherCache(cache_dir)
    keys = sorted({k for _, rec in records if (k := _teacher_key(rec))})
    return {key: f"weights:{digest}" if (digest := cache.weights_digest(key)) else key for key in keys}


def student_representations(records: list[tuple[Path, dict]], ds: Dataset, identities: dict[str, str] | None = None
                            ) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(teacher key, a record with that key, {method: [S_U; S_I]}) for the students whose npz holds their final
    representations; students distilled from another teacher than the majority's are left out. Teachers are told
    apart by ``identities`` (key → identity, see :func:`teacher_identities`), by key when it is not given."""
    identities = identities or {}

    def ident(rec: dict) -> str | None:
        key = _teacher_key(rec)
        return identities.get(key, key)

    counts = Counter(ident(rec) for _, rec in records if _distils(rec)) or \
        Counter(ident(rec) for _, rec in records)   # only teacher-free students: compare with their teacher
    counts.pop(None, None)
    if not counts:
        raise ValueError("the records name no teacher (teacher.key); was the grid run with a teacher?")
    best = counts.most_common(1)[0][0]
    key_rec = next(rec for _, rec in records if ident(rec) == best)
    key = _teacher_key(key_rec)
    students = {}
    for path, rec in records:
        if _distils(rec) and ident(rec) not in (None, best):  # None: its teacher failed; still comparable
            log.warning("%s: distilled from another teacher (%s) than the others (%s); skipped", path.name,
                        _teacher_key(rec), key)
            continue
        if rec["dataset"]["fingerprint"] != ds.fingerprint:
            raise ValueError(f"{path.name}: was run on other data (fingerprint {rec['dataset']['fingerprint'][:12]})"
                             f" than the other records ({ds.fingerprint[:12]})")
        npz = path.with_suffix(".npz")
        try:
            with np.load(npz) as z:
                reps = (z["user_repr"], z["item_repr"]) if "user_repr" in z.files else None
        except OSError:
            reps = None
        if reps is None:
            log.warning("%s: no user_repr/item_repr (run before representations were saved); skipped", npz.name)
            continue
        if reps[0].shape[0] != ds.n_users or reps[1].shape[0] != ds.n_items:
            log.warning("%s: representations of %d users and %d items, the dataset has %d and %d; skipped",
                        npz.name, reps[0].shape[0], reps[1].shape[0], ds.n_users, ds.n_items)
            continue
        students[rec["method"]] = np.concatenate(reps).astype(np.float64)
    if not students:
        raise ValueError(f"none of the {len(records)} matching student records has final representations in its "
                         ".npz (user_repr/item_repr); rerun the grid with this version of kdbench")
    return key, key_rec, students


def teacher_representations(ds: Dataset, rec: dict, key: str, cache_dir: str | os.PathLike | None = None
                            ) -> np.ndarray:
    """[T_U; T_I] of the cached teacher ``key``, rebuilt from the record's teacher config."""
    # torch and the model code only here: the spectral functions above work on plain arrays
    import torch

    from .grid import _build
    from .teacher import TeacherCache

    cache = TeacherCache(cache_dir)
    model = _build(ds, rec["backbone"], rec["config"]["teacher"], rec["config"]["seed"], torch.device("cpu"))
    if cache.load(key, model) is None:
        raise ValueError(f"teacher {key} is not in the teacher cache {cache.root}; pass the --cache-dir the grid "
                         "was run with (or set KDBENCH_CACHE)")
    model.eval()
    with torch.inference_mode():
        u, i = model.representations()
        # detach: BPR-MF's representations are its parameters themselves
        return torch.cat([u, i]).detach().double().numpy()



# -- the command ------------------------------------------------------------------------------------------------
def analyze_freq(out: str | Path, dataset: str, backbone: str, seed: int = 0, bands: str = "equal_width",
                 mode: str = "auto", data_root: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, moments: int = DEFAULT_MOMENTS) -> list[Path]:
    """Write ``OUT/analysis/freq__<dataset>__<backbone>__seed<k>.csv`` (and ``.png`` when matplotlib is
    installed) for the teacher and every student of one dataset/backbone/seed; returns the written paths."""
    if bands not in BANDS:
        raise ValueError(f"bands {bands!r}: choose one of {', '.join(BANDS)}")
    if mode == "chebyshev" and bands == "equal_count":
        band_edges(bands)  # raises the explanatory error before any loading
    out = Path(out)
    records = matching_records(out, dataset, backbone, seed)
    ds = load_record_dataset(records[0][1], data_root)
    key, key_rec, students = student_representations(records, ds, teacher_identities(records, cache_dir))
    teacher = teacher_representations(ds, key_rec, key, cache_dir)
    mode = resolve_mode(mode, ds.n_users, ds.n_items)
    if mode == "exact":
        spec = spectrum_of(ds)  # once per call: every model and both normalisations reuse it
        edges = band_edges(bands, spec.eigenvalues() if bands == "equal_count" else None)
        energy = functools.partial(exact_band_energy, spec, edges=edges)
    else:
        edges = band_edges(bands)
        adj = bipartite_adjacency(normalized_rating(ds.csr("train")))
        energy = functools.partial(chebyshev_band_energy, adj, edges=edges, m=moments)
    rows = band_rows(teacher, students, energy, edges)
    csv_path = out / "analysis" / f"freq__{safe_name(ds.name)}__{safe_name(backbone)}__seed{seed}.csv"
    atomic_write_text(csv_path, rows_to_csv(rows))
    written = [csv_path]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed: %s written without its figure (pip install 'kdbench[plot]')",
                    csv_path.name)
        return written
    png_path = csv_path.with_suffix(".png")
    plot_freq(rows, png_path, f"{ds.name} / {backbone} / seed {seed} — {bands} bands, {mode} mode")
    written.append(png_path)
    return written


def plot_freq(rows: list[dict], path: Path, title: str) -> None:
    """Two panels from the raw (unnormalised) rows: energy fraction per band of every model (grouped bars), and
    the students' relative distillation error per band."""
    import matplotlib
    matplotlib.use("Agg")  # files only: never open a window, work on headless machines
    import matplotlib.pyplot as plt

    raw = [r for r in rows if not r["normalized"]]
    methods = list(dict.fromkeys(r["method"] for r in raw))
    n_bands = max(r["band"] for r in raw) + 1
    labels = [f"[{r['lambda_lo']:.3g}, {r['lambda_hi']:.3g}" + (")" if r["band"] < n_bands - 1 else "]")
              for r in raw if r["method"] == methods[0]]
    value = {(r["method"], r["band"]): r for r in raw}
    # matplotlib's default cycle has 10 colours: a full grid has more methods, and repeats would be ambiguous
    palette = plt.get_cmap("tab20").colors if len(methods) > 10 else [f"C{k}" for k in range(10)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, col, shown, ylabel in ((axes[0], "energy_frac", methods, "energy fraction"),
                                   (axes[1], "rel_error", [m for m in methods if m != "teacher"],
                                    "relative error E_b(SW*−T)/E_b(T)")):
        width = 0.8 / max(len(shown), 1)
        for k, m in enumerate(shown):
            ys = [value[(m, b)][col] for b in range(n_bands)]
            ys = [np.nan if y is None else y for y in ys]
            ax.bar(np.arange(n_bands) + (k - (len(shown) - 1) / 2) * width, ys, width, label=m,
                   color=palette[methods.index(m)])
        ax.set_xticks(np.arange(n_bands), labels)
        ax.set_xlabel("band of λ (Laplacian eigenvalue; low = smooth)")
        ax.set_ylabel(ylabel)
    # one colour per method in both panels, so one legend; the left panel's high bands leave room for it
    axes[0].legend(fontsize="small", ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, lambda fh: fh.write(buf.getvalue()))
