"""Fuzzing every registered measure with awkward inputs.

Random shapes (n from 1, widths from 1, one or two layers per side), dtypes (float16, bfloat16,
float32, float64), scales from 1e-30 to 1e30, large offsets, constant columns, constant layers,
duplicate rows and identical or related sides. The contract under test (DESIGN.md): every result
is a finite ``[La, Lb]`` tensor inside the measure's declared ``value_range``, or the call raises
ValueError. Any other exception, a NaN, an inf or a value out of range fails.

Runs derandomized (the same examples every time) with a modest budget so the file stays fast;
set ``HOMOSCOPE_FUZZ_EXAMPLES`` (examples per measure) and ``HOMOSCOPE_FUZZ_RANDOM=1`` for a longer,
freshly random search.
"""
from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homoscope.measures import compute, get_measure, list_measures

MEASURES = list_measures()
EXAMPLES = int(os.environ.get("HOMOSCOPE_FUZZ_EXAMPLES", "40"))
RANDOM = os.environ.get("HOMOSCOPE_FUZZ_RANDOM", "") not in ("", "0")
# Round-off allowance at the ends of a value range (values are float64).
RANGE_TOL = 1e-6

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SCALES = (1e-30, 1e-8, 1e-3, 1.0, 1e3, 1e8, 1e30)
OFFSETS = (0.0, 1.0, 1e4, 1e8)


@st.composite
def stacks(draw):
    """A pair of stacks ``X [La, n, da]``, ``Y [Lb, n, db]`` and a description for failure messages."""
    n = draw(st.integers(1, 24))
    la, lb = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    da, db = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from(SCALES))
    offset = draw(st.sampled_from(OFFSETS))
    relation = draw(st.sampled_from(("independent", "related", "same")))
    seed = draw(st.integers(0, 2**31 - 1))
    const_a = draw(st.sets(st.integers(0, da - 1), max_size=da))
    const_b = draw(st.sets(st.integers(0, db - 1), max_size=db))
    const_layer = draw(st.sampled_from((None, "X", "Y")))
    dups = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=max(1, n // 2)))

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(la, n, da, generator=g, dtype=torch.float64)
    if relation == "same":
        lb, db, const_b = la, da, set(const_a)
        Y = X.clone()
    elif relation == "related":
        Y = torch.tanh(X[:1] @ torch.randn(da, db, generator=g, dtype=torch.float64)).expand(lb, n, db).clone()
        Y += 0.1 * torch.randn(lb, n, db, generator=g, dtype=torch.float64)
    else:
        Y = torch.randn(lb, n, db, generator=g, dtype=torch.float64)
    X, Y = X * scale + offset, Y * scale + offset
    for c in const_a:
        X[..., c] = offset + scale
    for c in const_b:
        Y[..., c] = offset - scale
    if const_layer == "X":
        X[-1] = offset + scale
    elif const_layer == "Y":
        Y[-1] = offset + scale
    for src, dst in dups:
        X[:, dst] = X[:, src]
        Y[:, dst] = Y[:, src]
    X, Y = X.to(dtype), Y.to(dtype)
    desc = (f"n={n} La={la} Lb={lb} da={da} db={Y.shape[2]} dtype={dtype} scale={scale} offset={offset} "
            f"relation={relation} seed={seed} const_a={sorted(const_a)} const_b={sorted(const_b)} "
            f"const_layer={const_layer} dups={dups}")
    return X, Y, desc


def _check(name: str, X: torch.Tensor, Y: torch.Tensor, desc: str) -> None:
    info = get_measure(name)
    try:
        S = compute(name, X, Y)
    except ValueError:
        return  # a named refusal is an allowed outcome
    lo, hi = info.value_range
    assert isinstance(S, torch.Tensor), f"{name} returned {type(S).__name__} for {desc}"
    assert tuple(S.shape) == (X.shape[0], Y.shape[0]), f"{name} returned shape {tuple(S.shape)} for {desc}"
    S = S.double()
    assert bool(torch.isfinite(S).all()), f"{name} returned a non-finite value {S.tolist()} for {desc}"
    assert bool((S >= lo - RANGE_TOL).all() and (S <= hi + RANGE_TOL).all()), (
        f"{name} returned {S.tolist()} outside its range [{lo}, {hi}] for {desc}")


_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", MEASURES)
@_SETTINGS
@given(data=stacks())
def test_measure_is_finite_and_in_range_or_raises_value_error(name, data):
    X, Y, desc = data
    _check(name, X, Y, desc)


@pytest.mark.parametrize("name", MEASURES)
def test_measure_edge_cases(name):
    """Hand-picked corners the random search may miss."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 12, 4, generator=g, dtype=torch.float64)
    cases = {
        "one row": (base[:, :1], base[:, :1]),
        "two rows": (base[:, :2], base[:, :2] * 2),
        "all rows duplicated": (base[:, :1].expand(1, 12, 4).clone(), base),
        "width 1": (base[..., :1], base[..., 1:2]),
        "zero": (torch.zeros(1, 12, 4, dtype=torch.float64), base),
        "float16 overflow": ((base * 1e5).half(), base.half()),
        "bfloat16": (base.bfloat16(), (base * 3 + 1).bfloat16()),
        "half duplicated rows": (torch.cat([base[:, :6], base[:, :6]], 1), torch.cat([base[:, 6:], base[:, 6:]], 1)),
        "nan": (torch.full((1, 12, 4), float("nan"), dtype=torch.float64), base),
        "row counts differ": (base, base[:, :10]),
    }
    for label, (X, Y) in cases.items():
        _check(name, X, Y, label)


@pytest.mark.parametrize("name", MEASURES)
@pytest.mark.parametrize("scale", [1e77, 1e150, 1e-100, 1e-150])
def test_measure_at_extreme_float64_scales(name, scale):
    """Float64 stacks scaled so far that squared Gram entries leave the float64 range.

    Such values cannot come out of a float32/float16 extraction, but a measure handed them must
    still answer (every measure here is invariant to isotropic scaling) or refuse with ValueError.
    """
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, 12, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(1, 12, 4, generator=g, dtype=torch.float64)
    _check(name, X * scale, Y * scale, f"X, Y = randn(1, 12, 4) (seed 0) x {scale:g}, float64")
