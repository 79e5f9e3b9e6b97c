"""The default (float32-GEMM) mode keeps its 1e-6 promise on the inputs that break naive float32 CKA,
and the inputs around it fail cleanly."""

from __future__ import annotations

import pytest
import torch

from homoscope.measures import CrossMoments, MinibatchCKA, debiased_cka, linear_cka, minibatch_cka


def _outlier_pair(n=500, big=1e4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 64, generator=g, dtype=torch.float64)
    Y = X[:, :32] + torch.randn(n, 32, generator=g, dtype=torch.float64)
    X[0, :2] = big  # one row with massive activations (a BOS-like token), in both models
    Y[0, :2] = big
    return X, Y


@pytest.mark.parametrize("big", [1e2, 1e3, 1e4, 1e6])
def test_massive_activation_row_keeps_the_bound(big, monkeypatch):
    """The row's huge diagonal Gram entries nearly cancel in the unbiased estimator; float32 terms would
    be off by up to 0.06, so the amplification check recomputes them with float64 GEMMs."""
    import homoscope.measures._hsic as hsic

    monkeypatch.setattr(hsic, "FLOAT32_MIN_FLOPS", 0)  # float32 GEMMs at this size, as for wide layers
    X, Y = _outlier_pair(big=big)
    if big >= 1e4:  # the check is what keeps the bound: without it the error is far above 1e-6
        with monkeypatch.context() as m:
            m.setattr(hsic, "MAX_AMPLIFICATION", float("inf"))
            try:
                err = (debiased_cka(X, Y, route="gram") - debiased_cka(X, Y, precision="float64")).abs().max()
            except ValueError:  # float32 terms can even make a self HSIC negative
                err = float("inf")
        assert err > 1e-4
    for fn in (linear_cka, debiased_cka):
        for route in ("gram", "feature"):
            exact = fn(X, Y, route=route, precision="float64")
            torch.testing.assert_close(fn(X, Y, route=route), exact, atol=1e-6, rtol=0)
    X2 = torch.stack([X, X * 2]).contiguous()
    Y2 = torch.stack([Y, Y + 1]).contiguous()
    got = minibatch_cka(X2, Y2, batch_size=250)
    torch.testing.assert_close(got, minibatch_cka(X2, Y2, batch_size=250, precision="float64"), atol=1e-6, rtol=0)


def test_inputs_that_require_grad_are_measured():
    W = torch.randn(16, 16, requires_grad=True)
    H = torch.randn(100, 16) @ W
    Y = torch.randn(100, 8)
    want = linear_cka(H.detach(), Y)
    torch.testing.assert_close(linear_cka(H, Y), want)
    assert debiased_cka(H, Y).shape == (1, 1) and minibatch_cka(H, Y, batch_size=50).shape == (1, 1)
    assert torch.isfinite(CrossMoments().update(H, Y).compute("linear_cka")).all()


def test_subnormal_values_are_measured_and_rounding_only_variation_is_refused():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64)
    Y = torch.randn(60, 3, generator=g, dtype=torch.float64)
    # lifted into the normal range by an exact power of two: the value of X itself, to its own rounding
    torch.testing.assert_close(linear_cka(X * 1e-310, Y), linear_cka(X, Y), atol=1e-10, rtol=0)
    steps = torch.randint(-8, 8, (60, 5), generator=g).double() * 2.0**-1074  # a few subnormal steps apart
    with pytest.raises(ValueError, match="no variance above float64 precision"):
        linear_cka(steps, Y)


def test_streaming_large_offset_is_not_a_constant_layer():
    g = torch.Generator().manual_seed(1)
    X = 1e6 + torch.randn(1000, 4, generator=g, dtype=torch.float64)
    Y = 1e6 + torch.randn(1000, 2, generator=g, dtype=torch.float64)
    got = CrossMoments().update(X, Y).compute("linear_cka")
    torch.testing.assert_close(got, linear_cka(X, Y, precision="float64"), atol=1e-8, rtol=0)


def test_minibatch_accumulators_of_different_kinds_do_not_merge():
    X, Y = torch.randn(2, 50, 4), torch.randn(2, 50, 3)
    a = MinibatchCKA().update(X, Y)
    with pytest.raises(ValueError, match="layer pairs"):
        a.merge(MinibatchCKA().update(X[:1], Y))
    with pytest.raises(ValueError, match="debiased"):
        a.merge(MinibatchCKA(debiased=False).update(X, Y))
