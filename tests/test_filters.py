"""FreqD's graph filter against a dense eigendecomposition, and the sparse products behind it."""
import numpy as np
import pytest
import torch

from kdbench.graph import normalized_adjacency, row_block_spmm, symmetric_spmm, to_torch_csr
from kdbench.methods.freqd import apply_filter, filter_coefficients


@pytest.fixture(scope="module")
def graph(tiny_module):
    a = normalized_adjacency(tiny_module)
    return tiny_module, a, to_torch_csr(a)


@pytest.fixture(scope="module")
def tiny_module():
    from kdbench.datasets.synthetic import make_synthetic
    return make_synthetic(n_users=30, n_items=40, rank=4, mean_items=8, seed=2)


def _spectral(a_dense, h):
    lap = np.eye(len(a_dense)) - a_dense
    lam, u = np.linalg.eigh(lap)
    return lam, u @ np.diag(h(lam)) @ u.T


def test_adjacency_is_symmetric_normalised(graph):
    ds, a, _ = graph
    d = a.toarray()
    assert np.allclose(d, d.T)
    lam = np.linalg.eigvalsh(np.eye(len(d)) - d)
    assert lam.min() > -1e-5 and lam.max() < 2 + 1e-5
    assert lam.max() == pytest.approx(2.0, abs=1e-4)  # bipartite: λ = 2 is present


@pytest.mark.parametrize("kind, h", [("linear", lambda lam, a: 1 - a * lam),
                                     ("quadratic", lambda lam, a: (1 - a * lam) ** 2)])
@pytest.mark.parametrize("alpha", [0.2, 0.5])
def test_filter_equals_spectral_definition(graph, kind, h, alpha):
    ds, a, at = graph
    lam, hmat = _spectral(a.toarray().astype(np.float64), lambda l: h(l, alpha))
    x = np.random.default_rng(0).standard_normal((a.shape[0], 5))
    got = apply_filter(at, torch.tensor(x, dtype=torch.float32), filter_coefficients(kind, alpha)).numpy()
    np.testing.assert_allclose(got, hmat @ x, atol=1e-4)
    # on an eigenvector of L the filter scales by h(λ): low frequencies pass, the top one is damped
    lam_all, u = np.linalg.eigh(np.eye(a.shape[0]) - a.toarray().astype(np.float64))
    top = torch.tensor(u[:, [-1]], dtype=torch.float32)
    out = apply_filter(at, top, filter_coefficients(kind, alpha)).numpy()
    np.testing.assert_allclose(out, h(lam_all[-1], alpha) * u[:, [-1]], atol=1e-4)


def test_filter_rows_match_full_and_gradients(graph):
    torch.manual_seed(0)
    ds, a, at = graph
    n = a.shape[0]
    rows = torch.tensor([0, 3, 3, 35, n - 1])  # duplicates allowed (an item both positive and negative)
    coeffs = filter_coefficients("quadratic", 0.3)
    x = torch.randn(n, 4, dtype=torch.float32, requires_grad=True)
    full = apply_filter(at, x, coeffs)[rows]
    part = apply_filter(at, x, coeffs, rows)
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(full)
    g_full, = torch.autograd.grad((full * w).sum(), x)
    g_part, = torch.autograd.grad((part * w).sum(), x)
    torch.testing.assert_close(g_part, g_full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("full_above", [0.0, 1.0])  # both code paths: full product and gathered block
def test_row_block_spmm_matches_dense(graph, full_above):
    torch.manual_seed(0)
    ds, a, at = graph
    dense = torch.tensor(a.toarray())
    rows = torch.tensor([1, 2, 40, 2])
    x = torch.randn(a.shape[0], 3, requires_grad=True)
    y = row_block_spmm(at, rows, x, full_above=full_above)
    torch.testing.assert_close(y, dense[rows] @ x.detach(), atol=1e-5, rtol=1e-5)
    g, = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, dense[rows].t() @ torch.ones(len(rows), 3), atol=1e-5, rtol=1e-5)


def test_symmetric_spmm_gradient(graph):
    torch.manual_seed(0)
    ds, a, at = graph
    x = torch.randn(a.shape[0], 2, requires_grad=True)
    g, = torch.autograd.grad(symmetric_spmm(at, x).pow(2).sum(), x)
    dense = torch.tensor(a.toarray())
    torch.testing.assert_close(g, 2 * dense @ (dense @ x.detach()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_projected_cosine_loss_matches_autograd_in_chunks(kind, monkeypatch):
    """FreqD's fused loss (gradients computed chunk by chunk in the forward) against autograd through the plain
    ``1 − (F.normalize(proj(s)) * t).sum(-1)``: value and gradients of the student rows and the projector."""
    from kdbench.methods import freqd
    from kdbench.methods._common import make_projector
    monkeypatch.setattr(freqd, "FUSED_CHUNK_BYTES", 4 * 6 * 3)  # 3 rows per chunk: 11 rows -> 4 chunks
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    proj = make_projector(kind, 5, 6).double()
    s = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.nn.functional.normalize(torch.randn(20, 6, generator=g, dtype=torch.float64), dim=-1)
    rows = torch.randint(20, (11,), generator=g)

    def reference():
        return 0.5 * (1 - (torch.nn.functional.normalize(proj(s), dim=-1) * table[rows]).sum(-1)).sum()

    params = [s, *proj.parameters()]
    fused = freqd.projected_cosine_loss(proj, s, table, rows, 0.5)
    torch.testing.assert_close(fused, reference())
    for a, b in zip(torch.autograd.grad(3 * fused, params), torch.autograd.grad(3 * reference(), params)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x, *p: freqd.projected_cosine_loss(proj, x, table, rows), params)
    with torch.no_grad():  # value only
        torch.testing.assert_close(freqd.projected_cosine_loss(proj, s, table, rows, 0.5), reference())
    assert table.grad is None


def test_projected_cosine_loss_at_a_zero_output_uses_eps_as_normalize_does():
    from kdbench.methods.freqd import projected_cosine_loss
    proj = torch.nn.Linear(3, 4, bias=False).double()
    s = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)   # y = 0: the eps branch
    t = torch.nn.functional.normalize(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    ga = torch.autograd.grad(projected_cosine_loss(proj, s, t, torch.arange(2)), [s, proj.weight])
    gb = torch.autograd.grad((1 - (torch.nn.functional.normalize(proj(s), dim=-1) * t).sum(-1)).sum(),
                             [s, proj.weight])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="Linear-ReLU-Linear"):
        projected_cosine_loss(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()), s, t, torch.arange(2))
