"""Streaming accumulators equal the one-shot measures for any chunking and merge order."""

from __future__ import annotations

import random

import pytest
import torch

from homoscope.measures import (
    STREAMING_MEASURES,
    CrossMoments,
    MinibatchCKA,
    StreamingMeasure,
    compute,
    minibatch_cka,
)


def _data(seed=0, n=150):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3, n, 7, generator=g, dtype=torch.float64) * 2 + 4  # nonzero means exercise centering
    Y = torch.randn(2, n, 5, generator=g, dtype=torch.float64) - 1
    Y[1] += X[0, :, :5] @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    X[2, :, 3] = 7.0  # a constant column
    return X, Y


def _random_cuts(n, rng):
    cuts = sorted(rng.sample(range(1, n), 6))
    return [slice(a, b) for a, b in zip([0] + cuts, cuts + [n])]


@pytest.mark.parametrize(
    "name, opts",
    [(m, {}) for m in STREAMING_MEASURES] + [("pwcca", {"weights_from": "y"}), ("svcca", {"variance_kept": 0.9})],
)
def test_streaming_equals_one_shot_for_any_chunking_and_merge_order(name, opts):
    X, Y = _data()
    n = X.shape[1]
    want = compute(name, X, Y, **opts)
    rng = random.Random(0)
    for trial in range(3):
        slices = _random_cuts(n, rng)
        shards = [StreamingMeasure(name, **opts).update(X[:, s], Y[:, s]) for s in slices]
        rng.shuffle(shards)
        acc = shards[0]
        # merge as an unbalanced tree in shuffled order
        for other in shards[1:]:
            if rng.random() < 0.5:
                acc = acc.merge(other)
            else:
                acc = other.merge(acc)
        assert acc.n == n
        torch.testing.assert_close(acc.compute(), want, atol=1e-10, rtol=0)


def test_single_row_chunks_and_2d_inputs():
    X, Y = _data(n=40)
    acc = StreamingMeasure("debiased_cka")
    for i in range(40):
        acc.update(X[0, i : i + 1], Y[1, i : i + 1])
    torch.testing.assert_close(acc.compute(), compute("debiased_cka", X[0], Y[1]), atol=1e-10, rtol=0)


def test_half_precision_chunks_are_upcast():
    X, Y = _data(n=64)
    acc = StreamingMeasure("linear_cka")
    acc.update(X[:, :30].half(), X[:, :30].half()).update(X[:, 30:].half(), X[:, 30:].half())
    out = acc.compute()
    torch.testing.assert_close(out.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_cross_moments_computes_several_measures_from_one_state():
    X, Y = _data()
    cm = CrossMoments()
    cm.update(X[:, :70], Y[:, :70]).update(X[:, 70:], Y[:, 70:])
    for name in ("linear_cka", "debiased_cka", "cca_r2", "procrustes"):
        torch.testing.assert_close(cm.compute(name), compute(name, X, Y), atol=1e-10, rtol=0)


def test_minibatch_accumulator_is_order_independent_and_matches_function():
    X, Y = _data(n=120)
    batches = [slice(0, 40), slice(40, 80), slice(80, 120)]
    a = MinibatchCKA()
    for s in batches:
        a.update(X[:, s], Y[:, s])
    b = MinibatchCKA().update(X[:, batches[2]], Y[:, batches[2]])
    c = MinibatchCKA().update(X[:, batches[0]], Y[:, batches[0]]).update(X[:, batches[1]], Y[:, batches[1]])
    b.merge(c)
    torch.testing.assert_close(a.compute(), b.compute(), atol=1e-12, rtol=0)
    torch.testing.assert_close(a.compute(), minibatch_cka(X, Y, batch_size=40), atol=1e-12, rtol=0)


def test_streaming_errors():
    X, Y = _data(n=20)
    with pytest.raises(ValueError, match="no streaming form for measure 'rsa'"):
        StreamingMeasure("rsa")
    acc = StreamingMeasure("linear_cka")
    with pytest.raises(ValueError, match="accumulator is empty"):
        acc.compute()
    acc.update(X, Y)
    with pytest.raises(
        ValueError, match=r"chunk shape disagrees.*\(La, da, Lb, db\)=\(3, 6, 2, 5\), expected \(3, 7, 2, 5\)"
    ):
        acc.update(X[:, :, :6], Y)
    small = StreamingMeasure("debiased_cka").update(X[:, :3], Y[:, :3])
    with pytest.raises(ValueError, match=r"debiased_cka needs n >= 4 rows .*got n=3"):
        small.compute()
    const = StreamingMeasure("linear_cka").update(torch.ones(10, 3), Y[0, :10])
    with pytest.raises(ValueError, match="X layer 0 has zero variance after centering"):
        const.compute()
    wide = StreamingMeasure("cca_rho").update(X[:, :6], Y[:, :6])
    with pytest.raises(ValueError, match=r"cca_rho needs more rows than non-constant columns .*n=6 <= d_x=7"):
        wide.compute()
    with pytest.raises(ValueError, match="non-finite"):
        StreamingMeasure("linear_cka").update(torch.full((4, 2), float("nan")), torch.ones(4, 2))
