"""Declared invariances at extreme inputs: every registered measure, every invariance in its metadata.

Inputs are a related pair ``X [2, 48, 4]``, ``Y [1, 48, 4]``; each case applies the invariance's transform
to both sides, then an extreme of a transformation the measure is also invariant to (a translation by an
offset up to 1e8, an isotropic scaling from 1e-30 to 1e30 -- 1e-200 and 1e200 too in float64 --, or
scaling into the subnormal range: 1e-310 in float64, 1e-40 in float32), casts to float32 or float64, and
measures one-shot (``compute``) and, where the measure streams, over chunks of 16 rows in two merged
accumulators (``StreamingMeasure``; ``MinibatchCKA`` for ``minibatch_cka``). The result is compared with
the measure of the untransformed float64 pair.

The stated tolerance is ``1e-8 + 2 u``, with ``u`` the input's own rounding relative to its spread: the
spacing of the input's dtype at its largest magnitude (``eps * max |x|``, or the smallest subnormal step)
over its smallest standard deviation in any direction. For float64 inputs that is below 3e-7 in every case
here (errors found: at most 2e-9); for float32 it grows with the offset: 1e-4 at 1e2, 1e-2 at 1e4 (errors
found: at most 1e-4), and at 1e6, where float32 keeps about 6 bits of a unit spread, it bounds nothing
beyond finiteness (errors found: at most 1e-2). Otherwise the call must raise a ValueError that says why
(its message names the precision), and only where ``u > 1e-3``: rows that differ only in their last bits
(float32 at an offset of 1e8 steps by 8) have no variance to measure.
"""

from __future__ import annotations

import math

import pytest
import torch

from homoscope.measures import CrossMoments, GroupedMoments, MinibatchCKA, compute, get_measure, list_measures
from homoscope.measures.streaming import STREAMING_MEASURES, StreamingMeasure
from test_measures_properties import TRANSFORMS, _orthogonal

N, D, CHUNK = 48, 4, 16
OFFSETS = (1e2, 1e4, 1e6, 1e8)
SCALES = {torch.float64: (1e-200, 1e-30, 1e-15, 1e15, 1e30, 1e200), torch.float32: (1e-30, 1e-15, 1e15, 1e30)}
SUBNORMAL = {torch.float64: 1e-310, torch.float32: 1e-40}
# the transformation behind each kind of extreme: a measure is tested at the extremes it is invariant to
NEEDS = {"offset": "translation", "scale": "isotropic_scaling", "subnormal": "isotropic_scaling"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Inputs this small run fastest on one thread (no thread start-up per tiny GEMM or factorization)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    X = torch.stack([x, torch.tanh(x) + 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)])
    Y = torch.tanh(x @ torch.randn(D, D, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
        1, N, D, generator=g, dtype=torch.float64)
    return X, Y


# the property tests' transforms, with an invertible map of singular values 0.5 .. 2: far from orthogonal, yet
# it leaves every direction of the rows resolved at the extremes
INVARIANCES = {
    **TRANSFORMS,
    "invertible_linear": lambda Z, g: Z @ (_orthogonal(Z.shape[-1], g) * torch.linspace(0.5, 2.0, Z.shape[-1],
                                           dtype=torch.float64)) @ _orthogonal(Z.shape[-1], g),
}


def _extreme(kind, value, Z, g):
    if kind == "offset":  # a different offset per column, of either sign, at 0.5 to 1.5 times value
        size = 0.5 + torch.rand(Z.shape[-1], generator=g, dtype=torch.float64)
        return Z + value * size * torch.sign(torch.randn(Z.shape[-1], generator=g, dtype=torch.float64))
    return Z * value


def _rounding(Z: torch.Tensor, dtype: torch.dtype) -> float:
    """``u``: the spacing of ``dtype`` at the largest magnitude of ``Z`` over its smallest spread in any
    direction (the least singular value of the centered rows over sqrt(n - 1): what the CCA family, invariant
    to any invertible map, is as sensitive to as to any other direction)."""
    fi = torch.finfo(dtype)
    big = float(Z.abs().amax())
    W = Z / big  # scale-free (1e200 and subnormal values alike)
    spacing = max(fi.eps, fi.smallest_normal * fi.eps / big)
    spread = torch.linalg.svdvals(W - W.mean(dim=1, keepdim=True)).amin() / math.sqrt(Z.shape[1] - 1)
    return spacing / float(spread)


def _streamed(name, X, Y):
    """The streaming form over chunks of CHUNK rows, in two accumulators merged at the end."""
    make = (lambda: MinibatchCKA()) if name == "minibatch_cka" else (lambda: StreamingMeasure(name))
    halves = [make(), make()]
    for r in range(0, N, CHUNK):
        halves[r < N // 2].update(X[:, r : r + CHUNK], Y[:, r : r + CHUNK])
    return halves[0].merge(halves[1]).compute()


def _streams(name):
    return name in STREAMING_MEASURES or name == "minibatch_cka"


def _cases():
    """Every measure x declared invariance x kind of extreme input the measure is declared invariant to
    (an offset needs translation invariance to compare against the untransformed value)."""
    for name in list_measures():
        invariances = get_measure(name).invariances
        for inv in invariances:
            for kind in NEEDS:
                if NEEDS[kind] in invariances:
                    yield pytest.param(name, inv, kind, id=f"{name}-{inv}-{kind}")


@pytest.mark.parametrize("name, invariance, kind", list(_cases()))
def test_invariance_holds_at_extremes_or_the_call_says_why(name, invariance, kind):
    X, Y = _pair()
    base = compute(name, X, Y)
    base_batches = compute(name, X, Y, batch_size=CHUNK) if name == "minibatch_cka" else base
    for dtype in (torch.float64, torch.float32):
        values = {"offset": OFFSETS, "scale": SCALES[dtype], "subnormal": (SUBNORMAL[dtype],)}[kind]
        for value in values:
            g = torch.Generator().manual_seed(7)
            Xt = _extreme(kind, value, INVARIANCES[invariance](X, g), g)
            Yt = _extreme(kind, value, INVARIANCES[invariance](Y, g), g)
            u = max(_rounding(Xt, dtype), _rounding(Yt, dtype))
            tol = 1e-8 + 2 * u
            Xt, Yt = Xt.to(dtype), Yt.to(dtype)
            for mode in ("one-shot", "streamed") if _streams(name) else ("one-shot",):
                case = f"{name}: {invariance} at {kind} {value:g}, {dtype}, {mode} (u={u:.1e})"
                try:
                    got = compute(name, Xt, Yt) if mode == "one-shot" else _streamed(name, Xt, Yt)
                except ValueError as err:
                    assert u > 1e-3, f"{case}: refused input whose rounding is only {u:.1e} of its spread: {err}"
                    assert "precision" in str(err), f"{case}: the refusal does not say why: {err}"
                    continue
                want = base_batches if mode == "streamed" else base
                assert bool(torch.isfinite(got).all()), f"{case}: non-finite {got.tolist()}"
                err = float((got - want).abs().max())
                assert err <= tol, f"{case}: off by {err:.2e} > tolerance {tol:.2e}"


def test_float32_rows_at_an_offset_of_1e8_are_refused_by_name():
    X, Y = _pair()
    Xf, Yf = (3 * X + 1e8).float(), (Y - 1e8).float()  # float32 steps by 8 there: rows keep a few distinct values
    for run in (lambda: compute("linear_cka", Xf, Yf), lambda: CrossMoments().update(Xf, Yf).compute("cca_rho"),
                lambda: MinibatchCKA().update(Xf, Yf).compute()):
        with pytest.raises(ValueError, match=r"X layer 0 has no variance above float32 precision.*pass float64") as e:
            run()
        assert "identical" not in str(e.value)
    # rows within 4 of 1e8 all round to 1e8: identical as given, and the message says the cast may be why
    with pytest.raises(ValueError, match=r"all 48 rows are identical.*float32 precision near 1e\+08 is 8: rows that "
                                         r"differed by less became identical when cast"):
        compute("procrustes", (X + 1e8).float(), Yf)
    # the same rows in float64 keep their variance: measured, not refused
    torch.testing.assert_close(compute("linear_cka", X + 1e8, Y - 1e8), compute("linear_cka", X, Y), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", ["linear_cka", "cca_rho", "procrustes", "rbf_cka", "mutual_knn", "rsa"])
def test_identical_rows_are_still_named_identical(name):
    X, Y = _pair()
    X[1] = 1e8  # every row of layer 1 the same (exactly representable) vector
    with pytest.raises(ValueError, match=r"X layer 1 has zero variance after centering \(all 48 rows are identical\)"):
        compute(name, X, Y)
    if name in STREAMING_MEASURES:
        with pytest.raises(ValueError, match=r"X layer 1 has zero variance after centering \(all 48 rows"):
            StreamingMeasure(name).update(X, Y).compute()


def test_merging_accumulators_whose_rows_differ_in_units_is_exact():
    """Shards whose first chunks lie either side of 2^64 sum in different units; the merge re-expresses one."""
    X, Y = _pair()
    big = 2.0**60
    X, Y = X * big, Y * big
    X[:, N // 2 :] *= 64  # the second shard's rows beyond 2^64
    Y[:, N // 2 :] *= 64
    a = CrossMoments(precision="float64").update(X[:, : N // 2], Y[:, : N // 2])
    b = CrossMoments(precision="float64").update(X[:, N // 2 :], Y[:, N // 2 :])
    assert not torch.equal(a.units[0], b.units[0])
    merged = a.merge(b)
    for name in ("linear_cka", "debiased_cka", "cca_rho", "procrustes"):
        torch.testing.assert_close(merged.compute(name), compute(name, X, Y), atol=1e-10, rtol=0, msg=name)


@pytest.mark.parametrize("scale", [1e-310, 1e200])
def test_grouped_bootstrap_sums_at_extreme_scales(scale):
    X, Y = _pair()
    groups = torch.arange(N) % 4
    W = torch.tensor([[1, 1, 1, 1], [2, 0, 1, 1]])
    plain = GroupedMoments(4, precision="float64").update(X, Y, groups)
    for means in (None, ((X * scale).mean(1), (Y * scale).mean(1))):
        acc = GroupedMoments(4, precision="float64", means=means).update(X * scale, Y * scale, groups)
        for name in ("linear_cka", "debiased_cka", "cca_rho"):
            got = acc.replicates([name], W)[name]
            assert bool(torch.isfinite(got).all()), (name, means is None)
            torch.testing.assert_close(got, plain.replicates([name], W)[name], atol=1e-9, rtol=0, msg=name)
        want = compute("procrustes", X, Y)
        torch.testing.assert_close(acc.merged().compute("procrustes"), want, atol=1e-10, rtol=0)


def test_tolerance_is_tight_where_the_input_is():
    """The stated tolerance is no blanket: float64 inputs at these extremes are held to below 1e-6."""
    X, _ = _pair()
    for value in OFFSETS:
        assert 1e-8 + 2 * _rounding(_extreme("offset", value, X, torch.Generator().manual_seed(7)), torch.float64) < 1e-6
    assert 1e-8 + 2 * _rounding(X * 1e-310, torch.float64) < 1e-6
    assert math.isclose(_rounding(X * 1e200, torch.float64), _rounding(X, torch.float64), rel_tol=1e-12)
