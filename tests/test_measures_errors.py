"""Every bad-input rule raises a ValueError naming the argument, the value and the rule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from homoscope.measures import compute, get_measure, list_measures

ALL = list_measures()


def _xy(n=20, da=4, db=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, n, da, generator=g, dtype=torch.float64),
        torch.randn(3, n, db, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("name", ALL)
def test_row_counts_that_differ(name):
    X, _ = _xy(n=20)
    _, Y = _xy(n=19)
    with pytest.raises(
        ValueError, match=r"X and Y must have the same number of rows \(units\): X has n=20 rows, Y has n=19 rows"
    ):
        compute(name, X, Y)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("side", ["X", "Y"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_anywhere(name, side, bad):
    X, Y = _xy()
    (X if side == "X" else Y)[1, 5, 2] = bad
    with pytest.raises(
        ValueError,
        match=rf"{side} contains 1 non-finite value\(s\) \(NaN or inf\), the first at layer 1, row 5, column 2",
    ):
        compute(name, X, Y)


def test_non_finite_half_precision_is_caught():
    X = torch.ones(10, 3, dtype=torch.float16)
    X[0, 0] = 70000  # overflows float16 to inf
    with pytest.raises(ValueError, match="X contains 1 non-finite"):
        compute("linear_cka", X, torch.randn(10, 2))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("side", ["X", "Y"])
def test_zero_variance_layer(name, side):
    X, Y = _xy()
    (X if side == "X" else Y)[1] = 3.25  # every row identical
    with pytest.raises(
        ValueError, match=rf"{side} layer 1 has zero variance after centering \(all 20 rows are identical\)"
    ):
        compute(name, X, Y)


@pytest.mark.parametrize("name, opts", [("debiased_cka", {}), ("minibatch_cka", {}), ("rbf_cka", {"debiased": True})])
def test_unbiased_estimators_need_four_rows(name, opts):
    X, Y = _xy(n=3)
    with pytest.raises(ValueError, match=rf"{name} needs n >= 4 rows \(.*\); got n=3"):
        compute(name, X, Y, **opts)
    compute(name, *_xy(n=4), **opts)  # four is enough


def test_registry_min_n_is_the_smallest_accepted_n():
    for name in ALL:
        info = get_measure(name)
        if info.family == "cca":
            continue  # n > d is the binding rule there
        X, Y = _xy(n=info.min_n, da=2, db=2, seed=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opts = {"k": 1} if info.family == "knn" else {}
            compute(name, X, Y, **opts)
        if info.min_n > 2:
            with pytest.raises(ValueError, match=f"needs n >= {info.min_n}"):
                compute(name, *_xy(n=info.min_n - 1, da=2, db=2), **opts)


@pytest.mark.parametrize("name", ["cca_rho", "cca_r2", "pwcca"])
def test_cca_needs_more_rows_than_columns(name):
    X, Y = _xy(n=8, da=8, db=3)
    with pytest.raises(
        ValueError, match=rf"{name} needs more rows than non-constant columns \(n > max\(d_x, d_y\)\): n=8 <= d_x=8"
    ):
        compute(name, X, Y)
    X, Y = _xy(n=8, da=3, db=9)
    with pytest.raises(ValueError, match=r"n=8 <= d_y=9"):
        compute(name, X, Y)


def test_cca_counts_columns_after_dropping_constant_ones():
    X, Y = _xy(n=8, da=6, db=3)
    wide = torch.cat([X, torch.ones(2, 8, 4, dtype=torch.float64)], dim=2)  # d=10 > n but only 6 vary
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # accepted (n=8 > 6 varying columns), and the constant columns change nothing
        torch.testing.assert_close(compute("cca_rho", wide, Y), compute("cca_rho", X, Y), rtol=0, atol=1e-10)


def test_svcca_accepts_wide_layers_but_warns_when_kept_dimensions_reach_n():
    X, Y = _xy(n=8, da=20, db=3)
    with pytest.warns(RuntimeWarning, match=r"svcca: retained dimensions sum to 10 >= n=8"):
        out = compute("svcca", X, Y, variance_kept=1.0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["cca_rho", "cca_r2", "svcca", "pwcca"])
def test_cca_warns_when_retained_dimensions_reach_n(name):
    X, Y = _xy(n=12, da=7, db=6)
    with pytest.warns(
        RuntimeWarning, match=r"retained dimensions sum to 13 >= n=12 .* at least 2 canonical correlation"
    ):
        compute(name, X, Y, **({"variance_kept": 1.0} if name == "svcca" else {}))


@pytest.mark.parametrize("name", ["mutual_knn", "cknna"])
@pytest.mark.parametrize("k", [0, -1, 19, 25])
def test_k_out_of_range(name, k):
    X, Y = _xy(n=20)
    with pytest.raises(ValueError, match=rf"{name}: k out of range \(1 <= k < n - 1 = 19, with n=20 rows\); got k={k}"):
        compute(name, X, Y, k=k)
    compute(name, X, Y, k=18)


@pytest.mark.parametrize("name", ["mutual_knn", "cknna"])
def test_k_must_be_an_integer(name):
    with pytest.raises(ValueError, match=r"k must be an integer .*got k=2.5"):
        compute(name, *_xy(), k=2.5)


def test_knn_zero_row_and_rsa_constant_row():
    X, Y = _xy()
    X[0, 4] = 0.0
    with pytest.raises(
        ValueError,
        match=r"mutual_knn: X layer 0 has 1 row\(s\) with zero norm \(first: row 4\); cosine neighbours are undefined",
    ):
        compute("mutual_knn", X, Y)
    X, Y = _xy()
    Y[2, 7] = 1.5
    with pytest.raises(
        ValueError, match=r"rsa: Y layer 2 has 1 row\(s\) that are constant across features \(first: row 7\)"
    ):
        compute("rsa", X, Y)


def test_bad_shapes_and_types():
    with pytest.raises(
        ValueError, match=r"X must be a \[n, d\] matrix or a \[L, n, d\] stack of layers; got shape \(5,\)"
    ):
        compute("linear_cka", torch.ones(5), torch.ones(5, 2))
    with pytest.raises(ValueError, match=r"Y must be a \[n, d\] matrix .*got shape \(1, 2, 5, 2\)"):
        compute("linear_cka", torch.ones(5, 2), torch.ones(1, 2, 5, 2))
    with pytest.raises(
        ValueError, match=r"X must have at least one layer, row and column; got shape \[L=1, n=5, d=0\]"
    ):
        compute("linear_cka", torch.ones(5, 0), torch.ones(5, 2))
    with pytest.raises(ValueError, match="X must be real-valued"):
        compute("linear_cka", np.ones((5, 2), dtype=complex), torch.ones(5, 2))


@pytest.mark.parametrize(
    "name, opts, pattern",
    [
        ("rbf_cka", {"threshold": 0}, r"rbf_cka: threshold must be a finite number > 0; got threshold=0"),
        ("rbf_cka", {"threshold": float("nan")}, r"threshold must be a finite number > 0; got threshold=nan"),
        ("minibatch_cka", {"batch_size": 3}, r"minibatch_cka: batch_size must be an integer >= 4; got batch_size=3"),
        ("svcca", {"variance_kept": 0.0}, r"svcca: variance_kept must be in \(0, 1\]; got variance_kept=0.0"),
        ("svcca", {"variance_kept": 1.5}, r"variance_kept=1.5"),
        ("pwcca", {"weights_from": "z"}, r"pwcca: weights_from must be 'x' or 'y'; got weights_from='z'"),
        ("linear_cka", {"route": "fast"}, r"route must be one of \('auto', 'gram', 'feature'\); got route='fast'"),
    ],
)
def test_bad_options(name, opts, pattern):
    with pytest.raises(ValueError, match=pattern):
        compute(name, *_xy(n=30), **opts)


def test_unknown_measure_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown measure 'cka'; valid names: linear_cka, debiased_cka, .*rsa"):
        get_measure("cka")


def test_unknown_option_lists_the_measures_options():
    with pytest.raises(ValueError, match=r"linear_cka takes no option 'k'; its options: route, precision"):
        compute("linear_cka", *_xy(), k=3)
