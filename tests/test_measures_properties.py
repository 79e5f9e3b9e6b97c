"""Properties every registered measure must have: invariances (driven by the registry metadata),
self-similarity, symmetry, value range, null levels, and what row shuffling does."""

from __future__ import annotations

import math

import pytest
import torch

from homoscope.measures import compute, get_measure, list_measures

ALL = list_measures()
SIMILARITY = [m for m in ALL if get_measure(m).kind == "similarity"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _related(seed=0, n=120, d=6):
    g = _gen(seed)
    X = torch.randn(2, n, d, generator=g, dtype=torch.float64)
    # a nonlinear, noisy function of X so that no measure is trivially at its maximum
    Y = torch.tanh(X @ torch.randn(d, d, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
        2, n, d, generator=g, dtype=torch.float64
    )
    return X, Y


def _orthogonal(d, g):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


TRANSFORMS = {
    "translation": lambda Y, g: Y + 5.0 * torch.randn(Y.shape[-1], generator=g, dtype=torch.float64),
    "isotropic_scaling": lambda Y, g: 3.7 * Y,
    "orthogonal": lambda Y, g: Y @ _orthogonal(Y.shape[-1], g),
    "permutation": lambda Y, g: Y[..., torch.randperm(Y.shape[-1], generator=g)],
    "invertible_linear": lambda Y, g: (
        Y
        @ (
            torch.randn(Y.shape[-1], Y.shape[-1], generator=g, dtype=torch.float64)
            + 2 * torch.eye(Y.shape[-1], dtype=torch.float64)
        )
    ),
}


@pytest.mark.parametrize("name", ALL)
def test_declared_invariances_hold(name):
    info = get_measure(name)
    X, Y = _related()
    # exact to 1e-8 in float64; measures with a float32-GEMM default hold their invariances within 1e-6 there
    modes = [({"precision": "float64"}, 1e-8), ({}, 1e-6)] if "precision" in info.options else [({}, 1e-8)]
    for opts, atol in modes:
        base = compute(name, X, Y, **opts)
        for inv in info.invariances:
            g = _gen(7)
            for side in ("X", "Y"):
                Xt = TRANSFORMS[inv](X, g) if side == "X" else X
                Yt = TRANSFORMS[inv](Y, g) if side == "Y" else Y
                got = compute(name, Xt, Yt, **opts)
                torch.testing.assert_close(got, base, atol=atol, rtol=0, msg=f"{name} {opts}: {inv} of {side}")


def test_every_measure_is_invariant_to_feature_permutation():
    for name in ALL:
        assert "permutation" in get_measure(name).invariances, name


@pytest.mark.parametrize(
    "name", ["linear_cka", "debiased_cka", "rbf_cka", "minibatch_cka", "procrustes", "procrustes_distance"]
)
def test_cka_and_procrustes_change_under_a_random_invertible_map(name):
    X, Y = _related()
    assert "invertible_linear" not in get_measure(name).invariances
    g = _gen(11)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64) ** 3  # far from orthogonal
    assert (compute(name, X, Y @ A) - compute(name, X, Y)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["cca_rho", "cca_r2"])
def test_cca_is_invariant_to_any_invertible_map(name):
    assert "invertible_linear" in get_measure(name).invariances


def test_svcca_full_rank_and_pwcca_other_side_are_invariant_to_invertible_maps():
    X, Y = _related()
    g = _gen(12)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64) ** 3
    torch.testing.assert_close(
        compute("svcca", X @ A, Y, variance_kept=1.0), compute("svcca", X, Y, variance_kept=1.0), atol=1e-8, rtol=0
    )
    torch.testing.assert_close(compute("pwcca", X, Y @ A), compute("pwcca", X, Y), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_self_similarity(name):
    info = get_measure(name)
    X, _ = _related()
    out = compute(name, X, X).diagonal()
    if info.kind == "similarity":
        torch.testing.assert_close(out, torch.ones_like(out), atol=1e-9, rtol=0)
    else:
        assert (out >= 0).all(), "no tiny negatives"
        torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_symmetry_and_range(name):
    info = get_measure(name)
    X, Y = _related()
    xy, yx = compute(name, X, Y), compute(name, Y, X)
    lo, hi = info.value_range
    assert ((xy >= lo) & (xy <= hi)).all()
    if info.symmetric:
        torch.testing.assert_close(xy, yx.T, atol=1e-10, rtol=0)
    else:
        assert (xy - yx.T).abs().max() > 1e-6


@pytest.mark.parametrize("name", ALL)
def test_shuffling_rows_of_one_side_drops_to_the_null_level(name):
    info = get_measure(name)
    X, Y = _related(n=200)
    g = _gen(3)
    Z = torch.randn(2, 200, 6, generator=g, dtype=torch.float64)  # independent of X
    shuffled = compute(name, X, Y[:, torch.randperm(200, generator=g)])
    aligned, independent = compute(name, X, Y), compute(name, X, Z)
    sign = 1.0 if info.kind == "similarity" else -1.0
    assert (sign * (aligned.diagonal() - shuffled.diagonal())).min() > 0.1
    assert (shuffled - independent).abs().max() < 0.12


# ------------------------------------------------------------------------------ null levels
def test_biased_cka_null_level_matches_formula():
    g = _gen(21)
    for n, d1, d2 in [(256, 16, 64), (300, 40, 40)]:
        X = torch.randn(6, n, d1, generator=g, dtype=torch.float64)
        Y = torch.randn(6, n, d2, generator=g, dtype=torch.float64)
        expected = math.sqrt(d1 * d2 / ((n - 1 + d1) * (n - 1 + d2)))
        assert compute("linear_cka", X, Y).mean().item() == pytest.approx(expected, abs=0.01)


def test_debiased_cka_null_level_is_near_zero():
    g = _gen(22)
    X = torch.randn(8, 256, 32, generator=g, dtype=torch.float64)
    Y = torch.randn(8, 256, 48, generator=g, dtype=torch.float64)
    assert compute("debiased_cka", X, Y).abs().mean().item() < 0.02


def test_mutual_knn_null_level_is_k_over_n_minus_1():
    g = _gen(23)
    n, k = 300, 10
    X = torch.randn(6, n, 16, generator=g, dtype=torch.float64)
    Y = torch.randn(6, n, 16, generator=g, dtype=torch.float64)
    assert compute("mutual_knn", X, Y, k=k).mean().item() == pytest.approx(k / (n - 1), abs=0.01)
