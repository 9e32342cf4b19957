"""The frequency-band analysis (spec §4.5.4): exact and Chebyshev band energies against a dense
eigendecomposition of L = I − Â on tiny graphs, the ridge map, and ``analyze_freq`` on a tiny grid."""
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from kdbench.cli import main
from kdbench.graph import normalized_adjacency
from kdbench.grid import GridRunner
from kdbench.spectrum import (
    BANDS,
    CSV_COLUMNS,
    NULL_SIGMA,
    analyze_freq,
    band_edges,
    band_index,
    bipartite_adjacency,
    bipartite_spectrum,
    chebyshev_band_energy,
    exact_band_energy,
    load_record_dataset,
    normalized_rating,
    ridge_map,
    spectrum_of,
)


def _graph(n_users, n_items, p, seed, isolated=()):
    """R̃ of a random bipartite graph; ``isolated`` lists (side, index) nodes whose edges are removed."""
    rng = np.random.default_rng(seed)
    r = (rng.random((n_users, n_items)) < p).astype(float)
    for side, k in isolated:
        if side == "user":
            r[k] = 0
        else:
            r[:, k] = 0
    return normalized_rating(sp.csr_matrix(r))


def _brute_force(rn):
    """Eigenpairs of the dense L = I − Â; eigenvalues within NULL_SIGMA of 1 are set to 1, the convention of the
    exact mode for the null space of Â (none of the test graphs has any but rounding noise there)."""
    adj = bipartite_adjacency(rn).toarray()
    lam, vecs = np.linalg.eigh(np.eye(len(adj)) - adj)
    lam[np.abs(lam - 1) <= NULL_SIGMA] = 1.0
    return lam, vecs


def _brute_energy(lam, vecs, x, edges):
    return np.bincount(band_index(lam, edges), weights=((vecs.T @ x) ** 2).sum(1), minlength=len(edges) - 1)


@pytest.fixture(scope="module")
def isolated_graph():
    """12 users × 9 items with an isolated item and an isolated user: R̃ is rank-deficient and Â has a null space
    beyond the |n_I − n_U| extra dimensions."""
    return _graph(12, 9, 0.35, 0, isolated=[("item", 4), ("user", 3)])


@pytest.mark.parametrize("bands", BANDS)
@pytest.mark.parametrize("more_users", [True, False])
def test_exact_energies_match_dense_eigendecomposition(isolated_graph, bands, more_users):
    rn = isolated_graph if more_users else sp.csr_matrix(isolated_graph.T)
    lam, vecs = _brute_force(rn)
    spec = bipartite_spectrum(rn)
    assert spec.users_small is not more_users
    np.testing.assert_allclose(spec.eigenvalues(), np.sort(lam), atol=1e-10)
    edges = band_edges(bands, spec.eigenvalues())
    np.testing.assert_allclose(edges, band_edges(bands, lam), atol=1e-10)
    x = np.random.default_rng(1).normal(size=(21, 5))
    got = exact_band_energy(spec, x, edges)
    np.testing.assert_allclose(got, _brute_energy(lam, vecs, x, edges), rtol=1e-9, atol=1e-9)
    assert got.sum() == pytest.approx((x ** 2).sum(), rel=1e-12)
    assert (got > 0).all()


def test_equal_count_bands_hold_a_quarter_of_the_eigenvalues_each():
    lam = np.linspace(0.01, 1.99, 40) ** 1.3 / 1.99 ** 0.3  # distinct, uneven
    edges = band_edges("equal_count", lam)
    assert np.bincount(band_index(lam, edges), minlength=4).tolist() == [10, 10, 10, 10]
    with pytest.raises(ValueError, match="exact"):
        band_edges("equal_count")


def test_null_space_and_isolated_nodes_sit_at_lambda_one(isolated_graph):
    """A feature that lives only on an isolated item (Â row 0) and a vector in the extra item dimensions both
    have all their energy at λ = 1, i.e. in [1, 1.5)."""
    spec = bipartite_spectrum(isolated_graph)
    assert spec.n - 2 * len(spec.sigma) >= 12 - 9 + 2  # extra dimensions + one zero σ per isolated node
    x = np.zeros((21, 1))
    x[12 + 4] = 3.0
    np.testing.assert_allclose(exact_band_energy(spec, x, band_edges("equal_width")), [0, 0, 9, 0], atol=1e-12)


def test_chebyshev_matches_exact_when_no_eigenvalue_is_near_a_band_edge():
    rn = _graph(8, 8, 0.45, 0)
    spec = bipartite_spectrum(rn)
    edges = band_edges("equal_width")
    gap = np.abs(spec.eigenvalues()[:, None] - edges[1:-1]).min()
    assert gap > 0.05, "the test graph must keep its eigenvalues away from the inner band edges"
    x = np.random.default_rng(2).normal(size=(16, 6))
    exact = exact_band_energy(spec, x, edges)
    approx = chebyshev_band_energy(bipartite_adjacency(rn), x, edges, m=200)
    assert approx.sum() == pytest.approx((x ** 2).sum(), rel=1e-9)
    np.testing.assert_allclose(approx, exact, atol=0.01 * (x ** 2).sum())


def test_smooth_signal_is_in_the_lowest_band(isolated_graph):
    """√degree is the eigenvector of Â with eigenvalue 1 (λ = 0): all its energy is in [0, 0.5)."""
    adj = bipartite_adjacency(isolated_graph)
    deg = np.asarray((bipartite_adjacency((isolated_graph > 0).astype(float))).sum(axis=1)).ravel()
    x = np.sqrt(deg)[:, None]
    edges = band_edges("equal_width")
    exact = exact_band_energy(bipartite_spectrum(isolated_graph), x, edges) / (x ** 2).sum()
    np.testing.assert_allclose(exact, [1, 0, 0, 0], atol=1e-10)
    approx = chebyshev_band_energy(adj, x, edges) / (x ** 2).sum()
    assert approx[0] > 0.99


def test_ridge_map_recovers_an_exact_linear_map():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(21, 4))
    t = s @ rng.normal(size=(4, 7))
    resid = s @ ridge_map(s, t) - t
    assert (resid ** 2).sum() < 1e-4 * (t ** 2).sum()
    spec = bipartite_spectrum(_graph(12, 9, 0.35, 0))
    edges = band_edges("equal_width")
    rel = exact_band_energy(spec, resid, edges) / exact_band_energy(spec, t, edges)
    assert (rel < 1e-3).all()
    assert not ridge_map(np.zeros((5, 3)), t[:5]).any()


def test_dataset_graph_is_the_one_of_graph_module(tiny):
    """The float64 R̃ here and ``graph.normalized_adjacency`` (float32) describe the same Â."""
    ref = normalized_adjacency(tiny).toarray()
    np.testing.assert_allclose(bipartite_adjacency(normalized_rating(tiny.csr("train"))).toarray(), ref, atol=1e-6)
    spec = spectrum_of(tiny)
    assert spec.n == tiny.n_users + tiny.n_items and spec.sigma.max() == pytest.approx(1.0)


def test_analyze_freq_on_a_tiny_grid(tmp_path, tiny_folder, caplog):
    out, cache = tmp_path / "out", tmp_path / "tcache"
    GridRunner(out, cache_dir=cache, quiet=True).run([str(tiny_folder)], ["bprmf"], ["student", "fitnet"], [0],
                                                     "quick", {"train.max_epochs": 2})
    name = json.loads((out / "cells" / "tinyds__bprmf__student__seed0.json").read_text())["dataset"]["name"]
    paths = analyze_freq(out, name, "bprmf", 0, cache_dir=cache)
    assert [p.name for p in paths] == [f"freq__{name}__bprmf__seed0.csv", f"freq__{name}__bprmf__seed0.png"]
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = pd.read_csv(paths[0])
    assert list(df.columns) == CSV_COLUMNS
    assert len(df) == 3 * 2 * 4 and set(df.method) == {"teacher", "student", "fitnet"}
    assert df.energy_frac.between(0, 1).all()
    np.testing.assert_allclose(df.groupby(["method", "normalized"]).energy_frac.sum(), 1.0, atol=1e-6)
    assert df[df.method == "teacher"].rel_error.isna().all()
    assert (df[df.method != "teacher"].rel_error >= 0).all()
    assert df.lambda_lo.iloc[:4].tolist() == [0, 0.5, 1, 1.5]

    cheb = pd.read_csv(analyze_freq(out, name, "bprmf", 0, mode="chebyshev", cache_dir=cache)[0])
    np.testing.assert_allclose(cheb.groupby(["method", "normalized"]).energy_frac.sum(), 1.0, atol=1e-6)
    # the outer bands are the ones the Chebyshev mode gets right (the null space sits on the middle edge)
    outer = df.band.isin([0, 3])
    np.testing.assert_allclose(cheb.energy_frac[outer], df.energy_frac[outer], atol=0.02)
    assert main(["analyze", "freq", str(out), "--dataset", name, "--backbone", "bprmf", "--bands", "equal_count",
                 "--mode", "exact", "--cache-dir", str(cache)]) == 0
    counted = pd.read_csv(paths[0])
    edges = np.append(counted.lambda_lo.iloc[:4], counted.lambda_hi.iloc[3])
    ds = load_record_dataset(json.loads((out / "cells" / f"{name}__bprmf__student__seed0.json").read_text()))
    lam = np.linalg.eigvalsh(np.eye(ds.n_users + ds.n_items) - normalized_adjacency(ds).toarray())  # dense L
    # the edges are those of the graph's own spectrum (a dense eigendecomposition here, not the code's SVD path) ...
    np.testing.assert_allclose(edges, band_edges("equal_count", lam), atol=1e-8)   # the CSV keeps 10 digits
    # ... and split it into quarters: the outer bands hold exactly N/4 eigenvalues; the middle edge falls in the
    # null space (λ = 1), which no band splits, so only the two middle bands together are counted
    counts = np.bincount(band_index(lam, edges), minlength=4)
    assert len(lam) % 4 == 0 and counts[0] == counts[3] == len(lam) // 4 and counts[1] + counts[2] == len(lam) // 2
    assert edges[2] == pytest.approx(1.0) and np.isclose(lam, 1.0).sum() > 1
    with pytest.raises(ValueError, match="exact"):
        analyze_freq(out, name, "bprmf", 0, bands="equal_count", mode="chebyshev", cache_dir=cache)
    with pytest.raises(ValueError, match="teacher cache"):
        analyze_freq(out, name, "bprmf", 0, cache_dir=tmp_path / "empty")

    npz = out / "cells" / f"{name}__bprmf__fitnet__seed0.npz"  # as written before representations were kept
    with np.load(npz) as z:
        kept = {k: z[k] for k in z.files if not k.endswith("_repr")}
    np.savez(npz, **kept)
    with caplog.at_level(logging.WARNING, logger="kdbench.spectrum"):
        df = pd.read_csv(analyze_freq(out, name, "bprmf", 0, cache_dir=cache)[0])
    assert set(df.method) == {"teacher", "student"} and "fitnet__seed0.npz: no user_repr" in caplog.text


def test_analyze_freq_tells_teachers_apart_by_weights_not_by_key(tmp_path, tiny_folder, caplog):
    """A code change gives an identical teacher a new cache key: its students still count as distilled from the
    same teacher. A teacher with other weights does not; the teacher-free student is compared either way."""
    out, cache = tmp_path / "out", tmp_path / "tcache"
    methods = ["student", "fitnet", "kd", "freqd"]
    GridRunner(out, cache_dir=cache, quiet=True).run([str(tiny_folder)], ["bprmf"], methods, [0], "quick",
                                                     {"train.max_epochs": 2})
    name = json.loads((out / "cells" / "tinyds__bprmf__student__seed0.json").read_text())["dataset"]["name"]
    key = json.loads((out / "cells" / f"{name}__bprmf__kd__seed0.json").read_text())["teacher"]["key"]

    def move(method, new_key):  # the cell as if run by code whose cache key for this teacher is new_key
        path = out / "cells" / f"{name}__bprmf__{method}__seed0.json"
        rec = json.loads(path.read_text())
        rec["teacher"]["key"] = new_key
        path.write_text(json.dumps(rec))

    shutil.copytree(cache / "teachers" / key, cache / "teachers" / ("b" * 64))    # the same weights
    move("fitnet", "b" * 64)
    move("student", "c" * 64)                                                     # not even in the cache
    with caplog.at_level(logging.WARNING, logger="kdbench.spectrum"):
        df = pd.read_csv(analyze_freq(out, name, "bprmf", 0, cache_dir=cache)[0])
    assert set(df.method) == {"teacher", "student", "fitnet", "kd", "freqd"} and "another teacher" not in caplog.text

    state = torch.load(cache / "teachers" / ("b" * 64) / "state.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, cache / "teachers" / ("b" * 64) / "state.pt")
    with caplog.at_level(logging.WARNING, logger="kdbench.spectrum"):
        df = pd.read_csv(analyze_freq(out, name, "bprmf", 0, cache_dir=cache)[0])
    assert set(df.method) == {"teacher", "student", "kd", "freqd"}
    assert "fitnet__seed0.json: distilled from another" in caplog.text


def test_analyze_freq_names_what_is_missing(tmp_path):
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    rec = {"method": "student", "backbone": "bprmf", "seed": 0, "status": "ok", "dataset": {"name": "tinyds"}}
    (cells / "tinyds__bprmf__student__seed0.json").write_text(json.dumps(rec))
    for dataset, backbone in (("citeulike", "bprmf"), ("tinyds", "lightgcn")):
        with pytest.raises(ValueError, match=r"no ok student records.*available.*tinyds/bprmf/seed0"):
            analyze_freq(tmp_path / "out", dataset, backbone, 0)
