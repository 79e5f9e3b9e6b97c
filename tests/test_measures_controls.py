"""Permutation null and bootstrap intervals: fast paths equal the plain definitions."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_measures_reference as ref  # noqa: E402

from homoscope.measures import (
    bootstrap_ci,
    bootstrap_weights,
    compute,
    get_measure,
    list_measures,
    permutation_null,
    permutations,
    with_controls,
)
from homoscope.measures.controls import clear_cache


def _data(seed=0, n=48):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2, n, 5, generator=g, dtype=torch.float64)
    Y = torch.randn(3, n, 4, generator=g, dtype=torch.float64)
    Y[2] += X[1, :, :4]
    return X, Y


def _plain_null(name, X, Y, P, seed):
    vals = torch.stack([compute(name, X, Y[:, p], **_exact(name)) for p in permutations(X.shape[1], P, seed)])
    return vals


def _copy_pairs(rows):
    return (rows[:, None] == rows[None, :]) & ~torch.eye(len(rows), dtype=torch.bool)


def _boot_reference(name, X, Y, rows):
    """The measure on one resample, straight from the definitions (numpy/scipy), copies of one unit
    never compared with each other: zero kernel entry on the originally centered data for CKA, left
    out of the RDM for RSA, not a neighbour for kNN."""
    import scipy.spatial.distance
    import scipy.stats

    same = _copy_pairs(rows).numpy()
    out = np.zeros((X.shape[0], Y.shape[0]))
    for a in range(X.shape[0]):
        for b in range(Y.shape[0]):
            x, y = X[a].numpy(), Y[b].numpy()
            if name in ("linear_cka", "debiased_cka"):
                xc, yc = (x - x.mean(0))[rows], (y - y.mean(0))[rows]
                K, L = xc @ xc.T, yc @ yc.T
                K[same], L[same] = 0.0, 0.0
                f = ref._hc if name == "linear_cka" else ref._uc
                out[a, b] = max(ref._cka_from_grams(f(K), f(L)), 0.0 if name == "linear_cka" else -1.0)
            elif name == "rsa":
                iu = np.triu_indices(len(rows), 1)
                keep = ~same[iu]
                dx = scipy.spatial.distance.pdist(x[rows], "correlation")[keep]
                dy = scipy.spatial.distance.pdist(y[rows], "correlation")[keep]
                out[a, b] = scipy.stats.spearmanr(dx, dy)[0]
            elif name == "mutual_knn":
                out[a, b] = _knn_with_copies(x[rows], y[rows], rows.numpy(), 5)
            else:
                out[a, b] = ref.REFERENCES[name](x[rows], y[rows])
    return out


def _knn_with_copies(x, y, ids, k):
    def sets(z):
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        S = z @ z.T
        return [[j for j in np.argsort(-S[i], kind="stable") if ids[j] != ids[i]][:k] for i in range(len(z))]

    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(sets(x), sets(y))]))


def _exact(name):
    """Options for the float64 mode of measures whose default runs float32 GEMMs (the controls engine is float64)."""
    return {"precision": "float64"} if "precision" in get_measure(name).options else {}


def _plain_boot(name, X, Y, B, groups, seed, level=0.95, **opts):
    base = torch.arange(X.shape[1])
    vals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for w in bootstrap_weights(X.shape[1], B, groups, seed):
            rows = base.repeat_interleave(w.long())
            vals.append(torch.from_numpy(_boot_reference(name, X, Y, rows)))
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    return torch.quantile(torch.stack(vals), q, dim=0)


@pytest.mark.parametrize("name", list_measures())
def test_null_equals_plain_permutation_loop(name):
    X, Y = _data()
    res = permutation_null(name, X, Y, n_permutations=12, seed=3, precision="float64")
    vals = _plain_null(name, X, Y, 12, 3)
    obs = compute(name, X, Y, **_exact(name))
    torch.testing.assert_close(res.observed, obs, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.mean, vals.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(res.std, vals.std(0), atol=1e-12, rtol=0)
    sim = get_measure(name).kind == "similarity"
    hits = (vals >= obs - 1e-12).sum(0) if sim else (vals <= obs + 1e-12).sum(0)
    torch.testing.assert_close(res.p_value, (1.0 + hits.double()) / 13.0, atol=1e-15, rtol=0)


@pytest.mark.parametrize("name", ["linear_cka", "debiased_cka", "rsa", "mutual_knn", "procrustes"])
def test_bootstrap_equals_resampling_reference(name):
    X, Y = _data()
    opts = {"k": 5} if name == "mutual_knn" else {}
    lo, hi = bootstrap_ci(name, X, Y, n_boot=10, seed=5, precision="float64", **opts)
    want = _plain_boot(name, X, Y, 10, None, 5)
    torch.testing.assert_close(lo, want[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(hi, want[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["linear_cka", "debiased_cka"])
def test_group_bootstrap_resamples_whole_documents(name):
    X, Y = _data(n=60)
    docs = [f"doc{i // 5}" for i in range(60)]
    W = bootstrap_weights(60, 6, docs, 1)
    # every unit of a document has the same count, and 12 documents are drawn each time
    assert torch.equal(W.view(6, 12, 5), W.view(6, 12, 5)[:, :, :1].expand(6, 12, 5))
    assert torch.equal(W.sum(1), torch.full((6,), 60.0, dtype=torch.float64))
    lo, hi = bootstrap_ci(name, X, Y, n_boot=8, groups=docs, seed=1, precision="float64")
    want = _plain_boot(name, X, Y, 8, docs, 1)
    torch.testing.assert_close(lo, want[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(hi, want[1], atol=1e-10, rtol=0)


def test_float32_fast_path_error_bound():
    X, Y = _data(n=80)
    for name in ("linear_cka", "debiased_cka", "rbf_cka", "cknna"):
        r32 = with_controls(name, X, Y, n_permutations=10, n_boot=10, precision="float32")[name]
        r64 = with_controls(name, X, Y, n_permutations=10, n_boot=10, precision="float64")[name]
        for a, b in ((r32.null.mean, r64.null.mean), (r32.null.std, r64.null.std)):
            assert (a - b).abs().max() < 1e-5
        for a, b in zip(r32.ci, r64.ci):
            assert (a - b).abs().max() < 1e-5


def test_with_controls_shares_work_and_matches_single_calls():
    X, Y = _data()
    clear_cache()
    both = with_controls(["linear_cka", "debiased_cka"], X, Y, n_permutations=8, n_boot=8, seed=2)
    for name in ("linear_cka", "debiased_cka"):
        clear_cache()
        null = permutation_null(name, X, Y, n_permutations=8, seed=2)
        lo, hi = bootstrap_ci(name, X, Y, n_boot=8, seed=2)
        torch.testing.assert_close(both[name].null.mean, null.mean, atol=1e-12, rtol=0)
        torch.testing.assert_close(both[name].ci.low, lo, atol=1e-12, rtol=0)
        torch.testing.assert_close(both[name].value, compute(name, X, Y, **_exact(name)), atol=1e-12, rtol=0)
        torch.testing.assert_close(both[name].value, compute(name, X, Y), atol=1e-6, rtol=0)


def test_cache_is_invalidated_by_in_place_changes():
    X, Y = _data()
    a = permutation_null("linear_cka", X, Y, n_permutations=6)
    Y[0] = X[0, :, :4]
    b = permutation_null("linear_cka", X, Y, n_permutations=6)
    torch.testing.assert_close(b.observed, compute("linear_cka", X, Y, precision="float64"), atol=1e-12, rtol=0)
    assert (a.observed - b.observed).abs().max() > 0.1


def test_related_pairs_get_small_p_values_and_seeds_reproduce():
    X, Y = _data(n=60)
    res = permutation_null("debiased_cka", X, Y, n_permutations=50, seed=0)
    assert res.p_value[1, 2].item() == pytest.approx(1 / 51)
    assert res.p_value.min() > 0
    again = permutation_null("debiased_cka", X, Y, n_permutations=50, seed=0)
    assert torch.equal(res.p_value, again.p_value)
    lo, hi = bootstrap_ci("debiased_cka", X, Y, n_boot=30)
    assert (lo <= res.observed + 1e-12).all() or (hi >= res.observed).all()
    assert (lo <= hi).all()


def test_distance_p_values_count_smaller_values():
    X, Y = _data(n=60)
    res = permutation_null("procrustes_distance", X, Y, n_permutations=20)
    assert res.p_value[1, 2].item() == pytest.approx(1 / 21)


def test_controls_argument_errors():
    X, Y = _data()
    with pytest.raises(ValueError, match="n_permutations must be an integer >= 2"):
        permutation_null("linear_cka", X, Y, n_permutations=1)
    with pytest.raises(ValueError, match="n_boot must be an integer >= 2"):
        bootstrap_ci("linear_cka", X, Y, n_boot=0)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\); got level=1.5"):
        bootstrap_ci("linear_cka", X, Y, level=1.5)
    with pytest.raises(ValueError, match=r"groups must give one id per row \(length n=48\)"):
        bootstrap_ci("linear_cka", X, Y, groups=[0, 1, 2])
    # a group bootstrap needs MIN_BOOTSTRAP_GROUPS distinct groups, and an id for every row
    for k in (1, 2, 9):
        with pytest.raises(ValueError, match=f"groups has {k} distinct ids?; a group bootstrap needs at least 10"):
            bootstrap_ci("linear_cka", X, Y, groups=[i % k for i in range(48)])
    assert bootstrap_weights(48, 3, [i % 10 for i in range(48)]).shape == (3, 48)
    for bad in ([None] * 48, [float("nan")] + list(range(47))):
        with pytest.raises(ValueError, match=r"groups has \d+ missing ids \(None or NaN\), first at row 0"):
            bootstrap_ci("linear_cka", X, Y, groups=bad)
    with pytest.raises(ValueError, match="groups must be a sequence of one id per row"):
        bootstrap_ci("linear_cka", X, Y, groups=5)
    with pytest.raises(ValueError, match="unknown measure 'cka'"):
        permutation_null("cka", X, Y)
    with pytest.raises(ValueError, match="precision must be one of"):
        with_controls("linear_cka", X, Y, precision="float16")


def test_bootstrap_intervals_are_centred_on_the_estimate():
    """Copies of a unit are not compared with each other, so resampling does not inflate the scores."""
    g = torch.Generator().manual_seed(9)
    n = 120
    Z = torch.randn(n, 10, generator=g, dtype=torch.float64)
    X = torch.stack(
        [
            torch.randn(n, 20, generator=g, dtype=torch.float64),
            Z @ torch.randn(10, 20, generator=g, dtype=torch.float64),
        ]
    )
    Y = torch.stack(
        [
            torch.randn(n, 15, generator=g, dtype=torch.float64),
            Z @ torch.randn(10, 15, generator=g, dtype=torch.float64),
        ]
    )
    Y[1] += torch.randn(n, 15, generator=g, dtype=torch.float64)
    for name in ("linear_cka", "debiased_cka", "rbf_cka", "mutual_knn", "cknna", "rsa"):
        res = with_controls(name, X, Y, n_permutations=None, n_boot=30, seed=1)[name]
        value, (lo, hi) = res.value.diagonal(), (res.ci.low.diagonal(), res.ci.high.diagonal())
        assert ((lo <= value) & (value <= hi)).all(), name
