"""Neighbour measures (mutual k-NN, CKNNA) and RSA against looped scipy/numpy references."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_measures_reference as ref  # noqa: E402

from homoscope.measures import cknna, mutual_knn, rsa  # noqa: E402
from homoscope.measures import knn as knn_module  # noqa: E402
from homoscope.measures.rsa import average_ranks  # noqa: E402


def _stacks(seed=0, La=3, Lb=2, n=40, da=6, db=5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(La, n, da, generator=g, dtype=torch.float64)
    Y = torch.randn(Lb, n, db, generator=g, dtype=torch.float64)
    Y[1] += 2 * X[2, :, :db]
    return X, Y


def _loop(fn, X, Y):
    return np.array([[fn(X[a].numpy(), Y[b].numpy()) for b in range(Y.shape[0])] for a in range(X.shape[0])])


@pytest.mark.parametrize("k", [1, 5])
def test_mutual_knn_matches_reference(k):
    X, Y = _stacks()
    np.testing.assert_allclose(
        mutual_knn(X, Y, k=k).numpy(), _loop(lambda a, b: ref.mutual_knn(a, b, k), X, Y), atol=1e-12
    )


@pytest.mark.parametrize("k", [2, 7])
def test_cknna_matches_reference(k):
    X, Y = _stacks()
    np.testing.assert_allclose(cknna(X, Y, k=k).numpy(), _loop(lambda a, b: ref.cknna(a, b, k), X, Y), atol=1e-10)


@pytest.mark.parametrize("fn", [mutual_knn, cknna])
def test_dense_and_list_routes_agree(fn, monkeypatch):
    X, Y = _stacks()
    sparse = fn(X, Y, k=4)
    monkeypatch.setattr(knn_module, "_use_dense", lambda n, k: True)
    dense = fn(X, Y, k=4)
    torch.testing.assert_close(sparse, dense, atol=1e-12, rtol=0)


def test_ties_are_broken_by_lower_index_deterministically():
    # rows 1..4 are identical, so row 0 has four tied neighbours; the lower indices win
    X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    Z = knn_module.unit_rows(X[None], "X", "mutual_knn", center=False)
    idx, _ = knn_module.neighbours(Z, 2)
    assert idx[0, 0].tolist() == [1, 2]
    assert idx[0, 2].tolist() == [1, 3]  # self (2) excluded
    a = mutual_knn(X, X.flip(1), k=2)
    b = mutual_knn(X, X.flip(1), k=2)
    assert torch.equal(a, b)


def test_rsa_matches_scipy():
    X, Y = _stacks()
    np.testing.assert_allclose(rsa(X, Y).numpy(), _loop(ref.rsa, X, Y), atol=1e-10)


def test_rsa_average_ranks_match_scipy_with_ties():
    import scipy.stats

    v = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.5, 0.5, 0.5, 0.5, 0.1, 0.9]], dtype=torch.float64)
    want = np.stack([scipy.stats.rankdata(r) for r in v.numpy()])
    np.testing.assert_allclose(average_ranks(v).numpy(), want)


def test_rsa_with_tied_distances_matches_scipy():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 4, generator=g, dtype=torch.float64)
    X[7] = X[2]  # a repeated pattern: many tied dissimilarities
    X[9] = X[2]
    Y = torch.randn(12, 6, generator=g, dtype=torch.float64)
    assert rsa(X, Y).item() == pytest.approx(ref.rsa(X.numpy(), Y.numpy()), abs=1e-10)
