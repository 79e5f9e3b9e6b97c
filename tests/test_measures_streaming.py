"""Streaming accumulators equal the one-shot measures for any chunking and merge order."""

from __future__ import annotations

import math
import random

import pytest
import torch

import homoscope.measures.streaming as streaming
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


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_blocked_update_and_reshifted_merge_match_one_shot_with_large_means(precision):
    X, Y = _data(seed=1, n=97)
    X, Y = X + 100.0, Y - 300.0  # large means: each accumulator sums rows shifted by its first chunk's mean
    names = ("linear_cka", "debiased_cka", "cca_rho", "procrustes")
    want = {m: compute(m, X, Y, **_exact(m)) for m in names}
    whole = CrossMoments(block_rows=5, precision=precision).update(X, Y)  # blocks of 5 rows, the last one partial
    parts = [CrossMoments(block_rows=8, precision=precision).update(X[:, s], Y[:, s])
             for s in (slice(0, 10), slice(10, 60), slice(60, 97))]
    merged = parts[2].merge(parts[0]).merge(parts[1])  # parts[2]'s sums re-expressed at the others' shifts
    for acc in (whole, merged):
        assert acc.n == 97 and acc.f32_rows == 0  # too narrow for float32 products (FLOAT32_MIN_WORK)
        for m in names:
            torch.testing.assert_close(acc.compute(m), want[m], atol=1e-10, rtol=0)


def test_block_rows_and_precision_are_validated():
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        CrossMoments(block_rows=0)
    with pytest.raises(ValueError, match=r"precision must be one of .*got precision='float16'"):
        CrossMoments(precision="float16")
    with pytest.raises(ValueError, match="precision="):
        StreamingMeasure("linear_cka", precision="half")


# ---------------------------------------------------------------------------------------------- precision
# Layers wide enough for float32 products (La da x Lb db = 2^20, FLOAT32_MIN_WORK); the first max(d) rows
# and every massive row run float64, the rest float32.
CASES = ("plain", "offset", "massive", "heavy_tail", "drift", "small_first_chunk")
WIDE_N = 4096
_REFS: dict = {}


def _wide(case: str, n: int = WIDE_N, seed: int = 0):
    """float32 stacks X [2, n, 512], Y [2, n, 512] sharing a 64-dim signal, with the case's difficulty."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 64, generator=g)
    X = torch.stack([Z @ torch.randn(64, 512, generator=g) / 8 + torch.randn(n, 512, generator=g) for _ in range(2)])
    Y = torch.stack(
        [Z @ torch.randn(64, 512, generator=g) / 8 + (1 + i) * torch.randn(n, 512, generator=g) for i in range(2)]
    )
    if case == "offset":  # a large common offset: float32 products of unshifted rows would cancel
        X, Y = X + 100.0, Y - 300.0
    elif case == "massive":  # a few rows with massive activations (1e3 x), in both models
        rows = [7, 1500, 2900]
        X[:, rows] *= 1e3
        Y[:, rows] *= 1e3
    elif case == "heavy_tail":  # row norms spread over e^{+-3}: some rows massive, most not
        s = torch.exp(torch.randn(n, generator=g))[None, :, None]
        X, Y = X * s, Y * s
    elif case == "drift":  # the second half's means move by several standard deviations
        X[:, n // 2 :] += 5.0
        Y[:, n // 2 :] -= 5.0
    return X, Y


def _cuts(case: str, n: int = WIDE_N) -> list[slice]:
    stops = [1, 1500, 2600, n] if case == "small_first_chunk" else [1300, 2100, n]
    return [slice(a, b) for a, b in zip([0] + stops[:-1], stops)]


def _reference(case: str, name: str) -> torch.Tensor:
    """The in-memory float64 measure on all rows."""
    if (case, name) not in _REFS:
        X, Y = _wide(case)
        _REFS[case, name] = compute(name, X.double(), Y.double(), **_exact(name))
    return _REFS[case, name]


def _streamed(case: str, precision: str) -> CrossMoments:
    X, Y = _wide(case)
    acc = CrossMoments(precision=precision)
    for s in _cuts(case):
        acc.update(X[:, s], Y[:, s])
    return acc


@pytest.mark.parametrize("case", CASES)
def test_float32_mode_is_within_1e7_of_the_in_memory_float64_measures(case):
    acc = _streamed(case, "float32")
    assert acc.f32_rows >= WIDE_N // 2  # float32 products did run
    assert acc.n - acc.f32_rows >= 512  # the first max(d) rows did not
    for name in ("linear_cka", "debiased_cka", "procrustes"):
        err = float((acc.compute(name) - _reference(case, name)).abs().max())
        assert err <= 1e-7, (case, name, err)
    if acc.float32_error("cca_rho") > streaming.CCA_FLOAT32_RTOL:
        with pytest.raises(ValueError, match="accumulate with precision='float64'"):
            acc.compute("cca_rho")
    else:
        assert float((acc.compute("cca_rho") - _reference(case, "cca_rho")).abs().max()) <= 1e-7


@pytest.mark.parametrize("case", CASES)
def test_float64_mode_is_within_1e10_of_the_in_memory_float64_measures(case):
    acc = _streamed(case, "float64")
    assert acc.f32_rows == 0
    for name in ("linear_cka", "debiased_cka", "procrustes", "cca_rho"):
        err = float((acc.compute(name) - _reference(case, name)).abs().max())
        assert err <= 1e-10, (case, name, err)
    assert acc.float32_error("cca_rho") == 0.0


def test_drift_moves_the_shift_to_the_new_rows():
    acc = _streamed("drift", "float32")
    X, _ = _wide("drift")
    later = X[:, WIDE_N // 2 :].double().mean(1)
    assert float((acc._cx - later).abs().max()) < 1.0  # the shift followed the drift (not the first chunk's means)


def test_massive_rows_need_float64_and_get_it(monkeypatch):
    X, Y = _wide("plain")
    X[:, [1500, 2900]] *= 1e4
    Y[:, [1500, 2900]] *= 1e4
    want = compute("debiased_cka", X.double(), Y.double(), precision="float64")
    acc = CrossMoments().update(X, Y)
    assert acc.n - acc.f32_rows == 1024 + 2  # the first block (n < max(d)) and the two massive rows
    assert float((acc.compute("debiased_cka") - want).abs().max()) <= 1e-7
    monkeypatch.setattr(streaming, "MASSIVE_ROW_RATIO", math.inf)  # all in float32: the bound is lost
    bad = CrossMoments().update(X, Y)
    assert float((bad.compute("debiased_cka") - want).abs().max()) > 1e-6


@pytest.mark.parametrize("precision, tol", [("float64", 1e-10), ("float32", 1e-7)])
@pytest.mark.parametrize("case", ["offset", "drift"])
def test_any_chunking_and_merge_order_agree(precision, tol, case):
    X, Y = _wide(case)
    one = _streamed(case, precision)
    rng = random.Random(1)
    for _ in range(2):
        cuts = sorted(rng.sample(range(1300, WIDE_N - 1300), 1)) + [WIDE_N]
        slices = [slice(a, b) for a, b in zip([0] + cuts[:-1], cuts)]
        shards = []
        for s in slices:  # each shard in chunks of random size
            acc, r = CrossMoments(precision=precision), s.start
            while r < s.stop:
                m = rng.randint(300, 1500)
                acc.update(X[:, r : min(r + m, s.stop)], Y[:, r : min(r + m, s.stop)])
                r += m
            shards.append(acc)
        rng.shuffle(shards)
        merged = shards[0]
        for other in shards[1:]:
            merged = merged.merge(other) if rng.random() < 0.5 else other.merge(merged)
        assert merged.n == WIDE_N and merged.precision == precision
        for name in ("linear_cka", "debiased_cka", "procrustes"):
            torch.testing.assert_close(merged.compute(name), one.compute(name), atol=tol, rtol=0)
            torch.testing.assert_close(merged.compute(name), _reference(case, name), atol=tol, rtol=0)


def test_merging_accumulators_of_different_precision_raises():
    X, Y = _data()
    a = CrossMoments(precision="float32").update(X, Y)
    b = CrossMoments(precision="float64").update(X, Y)
    with pytest.raises(ValueError, match=r"different precision: other has precision='float64'"):
        a.merge(b)
    with pytest.raises(ValueError, match="precision"):
        StreamingMeasure("linear_cka").merge(StreamingMeasure("linear_cka", precision="float64").update(X, Y))
    with pytest.raises(ValueError, match="precision"):  # even when the other is empty
        b.merge(CrossMoments(precision="float32"))


def _power_law(n: int, d: int, p: float, g: torch.Generator) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * torch.arange(1, d + 1) ** -p) @ Q.T


@pytest.mark.parametrize("p", [0.0, 1.5])
def test_cca_on_float32_sums_is_bounded_or_refused(monkeypatch, p):
    """Well-conditioned covariances: the CCA family within 1e-7; condition numbers ~1e7: refused."""
    monkeypatch.setattr(streaming, "FLOAT32_MIN_WORK", 0)  # float32 products at this width
    g = torch.Generator().manual_seed(3)
    n = 8192
    X = _power_law(n, 128, p, g)
    Y = (torch.cat([X, _power_law(n, 128, p, g)], 1) @ torch.randn(256, 192, generator=g, dtype=torch.float64)) / 16
    X, Y = X.float()[None], (Y + _power_law(n, 192, p, g)).float()[None]
    f32 = CrossMoments(precision="float32").update(X, Y)
    f64 = CrossMoments(precision="float64").update(X, Y)
    assert f32.f32_rows > n // 2
    opts = {"cca_rho": {}, "cca_r2": {}, "svcca": {"variance_kept": 0.9}, "pwcca": {"weights_from": "y"}}
    for name, o in opts.items():
        if p == 0.0:
            assert f32.float32_error(name, **o) <= 1e-7
            assert float((f32.compute(name, **o) - f64.compute(name, **o)).abs().max()) <= 1e-7
        elif name != "svcca":  # svcca keeps the well-conditioned leading directions
            with pytest.raises(ValueError, match=rf"{name}: .*precision='float64'"):
                f32.compute(name, **o)
    assert float((f32.compute("procrustes") - f64.compute("procrustes")).abs().max()) <= 1e-7
    with pytest.raises(ValueError, match="float32_error is for the CCA family"):
        f32.float32_error("linear_cka")


# ---------------------------------------------------------------------------------------------- declared sums
def test_sums_are_declared_once_and_allocated_from_the_declaration():
    X, Y = _data()
    full = CrossMoments().update(X, Y)
    lean = CrossMoments(debiased=False).update(X, Y)
    assert set(full._sums) == {s.name for s in streaming.SUMS}
    assert set(lean._sums) == {s.name for s in streaming.SUMS if not s.debiased}
    La, da, Lb, db = 3, 7, 2, 5
    shapes = {"sx": (La, da), "sy": (Lb, db), "cxx": (La, da, da), "cyy": (Lb, db, db), "cxy": (La, Lb, da, db),
              "sa": (La,), "sb": (Lb,), "saa": (La,), "sbb": (Lb,), "sab": (La, Lb), "sax": (La, da),
              "sby": (Lb, db), "say": (La, Lb, db), "sbx": (Lb, La, da)}
    assert {s.name for s in streaming.SUMS} == set(shapes)
    for name, shape in shapes.items():
        assert getattr(full, name).shape == shape and getattr(full, name).dtype == torch.float64
    u, v = X.double() - full._cx[:, None], Y.double() - full._cy[:, None]
    torch.testing.assert_close(full.cxy, torch.einsum("aip,biq->abpq", u, v))
    torch.testing.assert_close(full.sbx, torch.einsum("bi,aip->bap", (v * v).sum(-1), u))
    moved = full.to("cpu")
    assert moved is full and full.cxy.device.type == "cpu"
    torch.testing.assert_close(full.compute("debiased_cka"), compute("debiased_cka", X, Y, precision="float64"))


def test_every_declared_sum_is_reexpressed_exactly_at_a_new_shift():
    X, Y = _data(seed=2)
    X, Y = X + 50.0, Y - 20.0
    at_means = CrossMoments(precision="float64").update(X, Y)  # shift: the column means
    at_row = CrossMoments(precision="float64").update(X[:, :1], Y[:, :1]).update(X[:, 1:], Y[:, 1:])  # first row
    assert float((at_row._cx - at_means._cx).abs().max()) > 0.5
    before = {spec.name: float(getattr(at_row, spec.name).abs().max()) for spec in streaming.SUMS}
    at_row._move_shift(at_means._cx, at_means._cy)
    for spec in streaming.SUMS:
        want = getattr(at_means, spec.name)
        scale = max(float(want.abs().max()), before[spec.name])  # sums at the means can be ~0
        torch.testing.assert_close(getattr(at_row, spec.name), want, rtol=0, atol=1e-11 * scale, msg=spec.name)


def test_update_reuses_its_buffers():
    X, Y = _wide("drift")  # the drift moves the shift: the sums are re-expressed in place too

    def pointers(acc):
        out = {k: t.data_ptr() for k, t in acc._sums.items()}
        out.update({f"{dt}.{k}": t.data_ptr() for dt, ws in acc._ws.items() for k, t in ws.items()})
        return out

    acc = CrossMoments().update(X[:, :1300], Y[:, :1300])
    before = pointers(acc)
    for s in (slice(1300, 2500), slice(2500, 2501), slice(2501, WIDE_N)):
        acc.update(X[:, s], Y[:, s])
    assert pointers(acc) == before  # every sum accumulated in place, workspaces reused, nothing new kept
    assert acc.f32_rows > 0


def test_an_accumulator_is_never_merged_into_itself():
    from homoscope.measures.streaming import MinibatchCKA, StreamingMeasure

    X = torch.randn(1, 20, 3, dtype=torch.float64)
    for acc in (StreamingMeasure("debiased_cka"), MinibatchCKA()):
        acc.update(X, X * 2)
        with pytest.raises(ValueError, match="into itself"):
            acc.merge(acc)
