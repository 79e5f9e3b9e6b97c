"""CKA family: known values, batched vs looped references, routes, dtypes, minibatch CKA."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_measures_reference as ref  # noqa: E402

from homoscope.measures import (  # noqa: E402
    compute,
    debiased_cka,
    linear_cka,
    minibatch_cka,
    rbf_cka,
)
from homoscope.measures.cka import batch_slices, choose_route  # noqa: E402


def _stacks(seed=0, La=3, Lb=2, n=50, da=7, db=5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(La, n, da, generator=g, dtype=torch.float64)
    Y = torch.randn(Lb, n, db, generator=g, dtype=torch.float64)
    Y[0] += X[1, :, :db]  # one related pair
    return X, Y


# ------------------------------------------------------------------------------ known values
def test_known_values_to_1e5():
    X, Y = ref.known_data()
    assert linear_cka(X, Y).item() == pytest.approx(0.55761, abs=1e-5)
    assert debiased_cka(X, Y).item() == pytest.approx(0.51346, abs=1e-5)
    assert rbf_cka(X, Y, threshold=0.5).item() == pytest.approx(0.65483, abs=1e-5)
    assert compute("cca_r2", X, Y).item() == pytest.approx(0.5454, abs=1e-5)
    assert compute("cca_r2", X, Y).item() == pytest.approx(ref.cca_r2(X, Y), abs=1e-10)


def test_output_shape_dtype_device_and_stack_of_one():
    X, Y = ref.known_data()
    out = linear_cka(X, Y)
    assert out.shape == (1, 1) and out.dtype == torch.float64 and out.device == torch.device("cpu")
    Xs, Ys = _stacks()
    assert debiased_cka(Xs, Ys[0]).shape == (3, 1)
    assert debiased_cka(Xs[0], Ys).shape == (1, 2)


# ------------------------------------------------------------------------------ batched == looped reference
@pytest.mark.parametrize(
    "name, fn, kwargs",
    [
        ("linear_cka", ref.linear_cka, {}),
        ("debiased_cka", ref.debiased_cka, {}),
        ("rbf_cka", ref.rbf_cka, {}),
        ("rbf_cka", lambda X, Y: ref.rbf_cka(X, Y, threshold=0.7, debiased=True), {"threshold": 0.7, "debiased": True}),
    ],
)
def test_batched_equals_per_pair_reference(name, fn, kwargs):
    X, Y = _stacks()
    want = np.array([[fn(X[a].numpy(), Y[b].numpy()) for b in range(Y.shape[0])] for a in range(X.shape[0])])
    if name == "rbf_cka":
        np.testing.assert_allclose(compute(name, X, Y, **kwargs).numpy(), want, atol=1e-10, rtol=0)
        return
    # linear-kernel CKA: float64 mode to float64 rounding, the float32-GEMM default within 1e-6
    np.testing.assert_allclose(compute(name, X, Y, precision="float64").numpy(), want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(compute(name, X, Y).numpy(), want, atol=1e-6, rtol=0)


PRECISION_ATOL = {"float64": 1e-12, "float32": 1e-6}


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("fn", [linear_cka, debiased_cka])
@pytest.mark.parametrize("n, d", [(20, 60), (80, 6)])
def test_gram_and_feature_routes_agree(fn, n, d, precision):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, n, d, generator=g, dtype=torch.float64) + 5.0
    Y = torch.randn(3, n, d + 3, generator=g, dtype=torch.float64)
    gram, feat = fn(X, Y, route="gram", precision=precision), fn(X, Y, route="feature", precision=precision)
    atol = PRECISION_ATOL[precision]
    torch.testing.assert_close(gram, feat, atol=atol, rtol=0)
    torch.testing.assert_close(fn(X, Y, precision=precision), gram, atol=atol, rtol=0)


@pytest.mark.parametrize("fn", [linear_cka, debiased_cka])
@pytest.mark.parametrize("route", ["gram", "feature"])
def test_blocked_routes_equal_one_shot_float64_formula(fn, route, monkeypatch):
    """Several Gram blocks (unequal sizes, weight 2 off the diagonal) and several feature row chunks
    give the float64 one-shot value; the float32 default stays within 1e-6 of it."""
    import homoscope.measures._hsic as hsic

    g = torch.Generator().manual_seed(5)
    X = torch.randn(3, 103, 9, generator=g, dtype=torch.float64) * 3 + 40.0
    Y = torch.randn(2, 103, 4, generator=g, dtype=torch.float64)
    Y[1] += X[2, :, :4]
    want = fn(X, Y, route=route, precision="float64")
    monkeypatch.setattr(hsic, "FLOAT32_MIN_ROWS", 2)  # exercise the float32 GEMMs at this small n
    monkeypatch.setattr(hsic, "GRAM_BLOCK", 25)
    monkeypatch.setattr(hsic, "FEATURE_ROWS", 30)
    monkeypatch.setattr(hsic, "F32_PARTIAL", 100)
    monkeypatch.setattr(hsic, "FEATURE_ACC_BYTES", 9 * 2 * 4 * 8)  # X layers one group at a time
    torch.testing.assert_close(fn(X, Y, route=route, precision="float64"), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(fn(X, Y, route=route), want, atol=1e-6, rtol=0)
    ref_lin = np.array([[ref.linear_cka(X[a].numpy(), Y[b].numpy()) for b in range(2)] for a in range(3)])
    if fn is linear_cka:
        np.testing.assert_allclose(want.numpy(), ref_lin, atol=1e-12, rtol=0)


@pytest.mark.parametrize("fn", [linear_cka, debiased_cka])
@pytest.mark.parametrize("offset, scale", [(0.0, 1.0), (1e4, 1.0), (0.0, 1e-30), (0.0, 1e30), (1e3, 1e-20)])
def test_float32_default_within_1e6_of_float64_for_any_offset_and_scale(fn, offset, scale):
    """Means are removed in float64 and layers scaled by powers of two before the float32 GEMMs, so a
    common offset or an extreme scale never costs accuracy (float32 Grams of raw data would lose it all)."""
    g = torch.Generator().manual_seed(11)
    Z = torch.randn(600, 40, generator=g, dtype=torch.float64) * torch.linspace(1, 0.05, 40, dtype=torch.float64)
    X = torch.stack([Z + 0.3 * torch.randn(600, 40, generator=g, dtype=torch.float64) for _ in range(3)])
    Y = torch.stack([Z[:, :30] * 2 + torch.randn(600, 30, generator=g, dtype=torch.float64) for _ in range(2)])
    X, Y = X * scale + offset * scale, Y * scale - offset * scale
    for route in ("gram", "feature"):
        exact = fn(X, Y, route=route, precision="float64")
        assert torch.isfinite(exact).all()
        torch.testing.assert_close(fn(X, Y, route=route), exact, atol=1e-6, rtol=0)


def test_small_or_wide_problems_run_float64_gemms():
    """Below 256 rows, or with fewer rows than half the width, the unbiased estimator's bias correction
    would amplify float32 rounding to ~1e-5; the default mode then runs float64 GEMMs (cheap there)."""
    from homoscope.measures._hsic import gemm_dtype

    assert gemm_dtype("float32", 255, 10, 10) == torch.float64
    assert gemm_dtype("float32", 300, 768, 10) == torch.float64
    assert gemm_dtype("float32", 384, 768, 768) == torch.float32
    assert gemm_dtype("float64", 10_000, 8, 8) == torch.float64
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randn(2, 60, 300, generator=g), torch.randn(3, 60, 200, generator=g)  # independent: CKA near 0
    torch.testing.assert_close(debiased_cka(X, Y), debiased_cka(X, Y, precision="float64"), atol=1e-12, rtol=0)


def test_bad_precision_is_rejected():
    X, Y = _stacks()
    for fn in (linear_cka, debiased_cka, minibatch_cka):
        with pytest.raises(ValueError, match="precision must be one of"):
            fn(X, Y, precision="float16")


def test_route_choice_follows_n_vs_d():
    assert choose_route(n=100, La=3, da=1000, Lb=3, db=1000) == "gram"
    assert choose_route(n=100_000, La=3, da=64, Lb=3, db=64) == "feature"
    with pytest.raises(ValueError, match="route must be one of"):
        choose_route(10, 1, 1, 1, 1, "fast")


# ------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fn", [linear_cka, debiased_cka, rbf_cka, minibatch_cka])
def test_half_precision_self_similarity_is_one(dtype, fn):
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(64, 300, generator=g) * 30).to(dtype)  # large values: float16 Grams would overflow
    out = fn(X, X)
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(1.0, abs=1e-12)


def test_half_input_equals_its_float64_upcast():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2, 40, 9, generator=g).to(torch.float16)
    Y = torch.randn(40, 5, generator=g).to(torch.bfloat16)
    torch.testing.assert_close(linear_cka(X, Y), linear_cka(X.double(), Y.double()), atol=1e-14, rtol=0)


def test_constant_columns_are_harmless():
    X, Y = _stacks()
    Xc = torch.cat([X, torch.full((3, 50, 2), 4.0, dtype=torch.float64)], dim=2)
    for fn in (linear_cka, debiased_cka):
        torch.testing.assert_close(fn(Xc, Y, precision="float64"), fn(X, Y, precision="float64"), atol=1e-12, rtol=0)
        torch.testing.assert_close(fn(Xc, Y), fn(X, Y), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ minibatch CKA
def test_minibatch_cka_is_a_ratio_of_sums_matching_reference():
    X, Y = _stacks(n=90)
    slices = batch_slices(90, 30)
    assert [s.stop - s.start for s in slices] == [30, 30, 30]
    got = minibatch_cka(X, Y, batch_size=30).numpy()
    batches = [np.arange(s.start, s.stop) for s in slices]
    want = np.array([[ref.minibatch_cka(X[a].numpy(), Y[b].numpy(), batches) for b in range(2)] for a in range(3)])
    np.testing.assert_allclose(minibatch_cka(X, Y, batch_size=30, precision="float64").numpy(), want, atol=1e-12)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # not the mean of per-batch CKA values
    per_batch = np.mean([debiased_cka(X[:, b], Y[:, b]).numpy() for b in batches], axis=0)
    assert np.abs(got - per_batch).max() > 1e-4


def test_minibatch_cka_does_not_depend_on_batch_order():
    X, Y = _stacks(n=120)
    order = torch.cat([torch.arange(80, 120), torch.arange(0, 40), torch.arange(40, 80)])
    a = minibatch_cka(X, Y, batch_size=40)
    b = minibatch_cka(X[:, order], Y[:, order], batch_size=40)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_minibatch_single_batch_equals_debiased_cka():
    X, Y = _stacks()
    torch.testing.assert_close(minibatch_cka(X, Y, batch_size=50), debiased_cka(X, Y), atol=1e-12, rtol=0)


def test_batch_sizes_differ_by_at_most_one():
    sizes = [s.stop - s.start for s in batch_slices(103, 25)]
    assert sum(sizes) == 103 and max(sizes) - min(sizes) <= 1 and len(sizes) == 5
