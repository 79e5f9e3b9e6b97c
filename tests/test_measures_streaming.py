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
    get_measure,
    minibatch_cka,
)


def _exact(name, opts=None):
    """One-shot options in float64 (the streaming sums are float64; the one-shot CKA default runs float32 GEMMs)."""
    opts = dict(opts or {})
    if "precision" in get_measure(name).options:
        opts["precision"] = "float64"
    return opts


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
    want = compute(name, X, Y, **_exact(name, opts))
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
    torch.testing.assert_close(acc.compute(), compute("debiased_cka", X[0], Y[1], precision="float64"), atol=1e-10, rtol=0)


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
        torch.testing.assert_close(cm.compute(name), compute(name, X, Y, **_exact(name)), atol=1e-10, rtol=0)


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


@pytest.mark.parametrize("syrk", [True, False])
def test_blocked_update_and_reshifted_merge_match_one_shot_with_large_means(monkeypatch, syrk):
    import homoscope.measures.streaming as streaming

    if not syrk:
        monkeypatch.setattr(streaming, "_dsyrk", None)
    X, Y = _data(seed=1, n=97)
    X, Y = X + 100.0, Y - 300.0  # large means: each accumulator sums rows shifted by its first chunk's mean
    names = ("linear_cka", "debiased_cka", "cca_rho", "procrustes")
    want = {m: compute(m, X, Y, **_exact(m)) for m in names}
    whole = CrossMoments(block_rows=5).update(X, Y)  # blocks of 5 rows, the last one partial
    parts = [CrossMoments(block_rows=8).update(X[:, s], Y[:, s]) for s in (slice(0, 10), slice(10, 60), slice(60, 97))]
    merged = parts[2].merge(parts[0]).merge(parts[1])  # other shifts re-expressed at parts[2]'s
    for acc in (whole, merged):
        assert acc.n == 97
        for m in names:
            torch.testing.assert_close(acc.compute(m), want[m], atol=1e-10, rtol=0)


def test_update_reuses_its_buffers():
    X, Y = _data(n=64)
    X, Y = X.float().double(), Y.float().double()  # float32 chunks below hold the same values
    acc = CrossMoments(block_rows=16).update(X[:, :20], Y[:, :20])
    ptrs = {k: v.data_ptr() for k, v in vars(acc).items() if isinstance(v, torch.Tensor)}
    ptrs.update({f"ws.{k}": v.data_ptr() for k, v in acc._ws.items()})
    for s in (slice(20, 40), slice(40, 41), slice(41, 64)):
        acc.update(X[:, s].float(), Y[:, s].float())
    after = {k: v.data_ptr() for k, v in vars(acc).items() if isinstance(v, torch.Tensor)}
    after.update({f"ws.{k}": v.data_ptr() for k, v in acc._ws.items()})
    assert after == ptrs  # every sum accumulated in place, workspace reused, nothing new kept
    one = CrossMoments().update(X.float(), Y.float())
    torch.testing.assert_close(acc.compute("debiased_cka"), one.compute("debiased_cka"), atol=1e-12, rtol=0)


def test_block_rows_is_validated():
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        CrossMoments(block_rows=0)
