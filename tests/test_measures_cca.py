"""CCA family and Procrustes: batched vs looped references, rank handling, warnings, directions."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_measures_reference as ref  # noqa: E402

from homoscope.measures import (  # noqa: E402
    cca_r2,
    cca_rho,
    compute,
    procrustes,
    procrustes_distance,
    pwcca,
    svcca,
)


def _stacks(seed=0, La=3, Lb=2, n=60, da=6, db=4):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(La, n, da, generator=g, dtype=torch.float64)
    Y = torch.randn(Lb, n, db, generator=g, dtype=torch.float64)
    Y[1] += X[0, :, :db] @ torch.randn(db, db, generator=g, dtype=torch.float64)
    return X, Y


@pytest.mark.parametrize("name", ["cca_rho", "cca_r2", "svcca", "pwcca", "procrustes", "procrustes_distance"])
def test_batched_equals_per_pair_reference(name):
    X, Y = _stacks()
    got = compute(name, X, Y).numpy()
    fn = ref.REFERENCES[name]
    want = np.array([[fn(X[a].numpy(), Y[b].numpy()) for b in range(Y.shape[0])] for a in range(X.shape[0])])
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_svcca_keeps_fewest_directions_reaching_the_variance():
    g = torch.Generator().manual_seed(2)
    # 3 strong directions + weak noise: 99% of the variance needs only the strong ones
    basis = torch.randn(3, 12, generator=g, dtype=torch.float64)
    X = torch.randn(200, 3, generator=g, dtype=torch.float64) @ basis * 10 + 0.01 * torch.randn(
        200, 12, generator=g, dtype=torch.float64
    )
    Y = X[:, :3] + 0.5 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    got = svcca(X, Y).item()
    assert got == pytest.approx(ref.svcca(X.numpy(), Y.numpy()), abs=1e-10)
    # with everything kept it is plain mean CCA
    assert svcca(X, Y, variance_kept=1.0).item() == pytest.approx(cca_rho(X, Y).item(), abs=1e-10)


def test_pwcca_directions():
    X, Y = _stacks()
    xy = pwcca(X, Y)
    yx = pwcca(Y, X)
    torch.testing.assert_close(pwcca(X, Y, weights_from="y"), yx.T, atol=1e-12, rtol=0)
    assert (xy - yx.T).abs().max() > 1e-6  # asymmetric: weights from the stated side
    want = ref.pwcca(Y[1].numpy(), X[0].numpy())
    assert yx[1, 0].item() == pytest.approx(want, abs=1e-10)


def test_constant_columns_are_dropped_by_cca():
    X, Y = _stacks()
    Xc = torch.cat([X, torch.full((3, 60, 2), -2.5, dtype=torch.float64)], dim=2)
    for fn in (cca_rho, cca_r2, svcca, pwcca):
        torch.testing.assert_close(fn(Xc, Y), fn(X, Y), atol=1e-10, rtol=0)


def test_rank_deficient_layer_uses_its_rank():
    g = torch.Generator().manual_seed(4)
    Z = torch.randn(80, 3, generator=g, dtype=torch.float64)
    X = torch.cat([Z, Z @ torch.randn(3, 2, generator=g, dtype=torch.float64)], dim=1)  # rank 3 of 5
    Y = Z + 0.1 * torch.randn(80, 3, generator=g, dtype=torch.float64)
    # the canonical correlations of X and Y are those of Z and Y
    assert cca_rho(X, Y).item() == pytest.approx(ref.cca_rho(Z.numpy(), Y.numpy()), abs=1e-9)
    assert cca_r2(X, Y).item() == pytest.approx(ref.cca_r2(Z.numpy(), Y.numpy()), abs=1e-9)


def test_warning_when_retained_dimensions_reach_n():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(30, 16, generator=g, dtype=torch.float64)
    Y = torch.randn(30, 16, generator=g, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="retained dimensions sum to 32 >= n=30"):
        out = cca_rho(X, Y)
    # 32 - 30 + 1 = 3 correlations are forced to 1 for unrelated data
    assert out.item() > 3 / 16 - 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cca_rho(X[:, :10], Y[:, :10])  # 20 < 30: no warning


def test_procrustes_distance_is_two_minus_two_similarity_and_nonnegative():
    X, Y = _stacks()
    torch.testing.assert_close(procrustes_distance(X, Y), 2 - 2 * procrustes(X, Y), atol=1e-12, rtol=0)
    assert (procrustes_distance(X, X) >= 0).all()


def test_procrustes_wide_layers_use_the_gram_side():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(2, 20, 50, generator=g, dtype=torch.float64)  # d > n
    Y = torch.randn(20, 8, generator=g, dtype=torch.float64)
    want = [ref.procrustes(X[a].numpy(), Y.numpy()) for a in range(2)]
    np.testing.assert_allclose(procrustes(X, Y)[:, 0].numpy(), want, atol=1e-10)
