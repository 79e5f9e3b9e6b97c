"""Closed-form permutation nulls: exact against enumeration, within Monte-Carlo error against shuffles,
streaming equal to in-memory for any chunking and merge order, bad input named."""

from __future__ import annotations

import itertools
import math
import pickle
import random

import numpy as np
import pytest
import torch

from homoscope.measures import (
    MomentSums,
    analytic_null,
    debiased_cka,
    debiased_cka_null,
    layer_moments,
    linear_cka,
    linear_cka_null,
    permutation_null,
    permutations,
)
from homoscope.measures.nulls import _pearson3_upper, _row_keys

F64 = torch.float64
MEASURES = {"linear_cka": (linear_cka, linear_cka_null), "debiased_cka": (debiased_cka, debiased_cka_null)}
STATS = ("t1", "t2", "t3", "s2", "b", "s3", "r", "u")


def _data(n, seed=0, effect=0.4):
    """X [3, n, 6] (Gaussian with a latent, cubed, Student-t 3) and Y [2, n, 5] (latent-driven, log-normal):
    skewed, heavy-tailed nulls. Only the pair (X0, Y0) is related."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 4, generator=g, dtype=F64)
    chi = torch.randn(n, 6, 3, generator=g, dtype=F64).pow(2).mean(-1)
    t3 = torch.randn(n, 6, generator=g, dtype=F64) / torch.sqrt(chi)
    X = torch.stack([
        Z @ torch.randn(4, 6, generator=g, dtype=F64) + torch.randn(n, 6, generator=g, dtype=F64) + 3.0,
        torch.randn(n, 6, generator=g, dtype=F64) ** 3,
        t3,
    ])
    Y = torch.stack([
        effect * Z[:, :2] @ torch.randn(2, 5, generator=g, dtype=F64) + torch.randn(n, 5, generator=g, dtype=F64),
        torch.randn(n, 5, generator=g, dtype=F64).exp() - 2.0,
    ])
    return X, Y


def _draws(name, X, Y, perms):
    """The measure on Y with rows shuffled by each permutation: ``[P, La, Lb]`` (the reference measure, with
    every permuted Y stacked as layers of one call)."""
    fn = MEASURES[name][0]
    P, Lb = perms.shape[0], Y.shape[0]
    Yp = Y[:, perms].transpose(0, 1).reshape(P * Lb, *Y.shape[1:])
    return fn(X, Yp, route="feature", precision="float64").reshape(X.shape[0], P, Lb).transpose(0, 1)


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", list(MEASURES))
def test_moments_equal_full_enumeration_of_permutations(name):
    X, Y = _data(7, seed=1)
    perms = torch.tensor(list(itertools.permutations(range(7))))
    v = _draws(name, X, Y, perms)  # all 5040 permutations
    mean, std = v.mean(0), v.std(0, unbiased=False)
    skew = ((v - mean) ** 3).mean(0) / std**3
    null = analytic_null(name, X, Y)
    assert null.approximation == "pearson3" and null.u_rows is None
    torch.testing.assert_close(null.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(null.std, std, rtol=1e-9, atol=0)
    torch.testing.assert_close(null.skewness, skew, rtol=0, atol=1e-8)


def test_debiased_null_std_depends_on_n_only():
    for n, seed in ((9, 0), (40, 1), (300, 2)):
        X, Y = _data(n, seed=seed)
        null = analytic_null("debiased_cka", X, Y)
        assert torch.all(null.mean == 0)
        torch.testing.assert_close(null.std, torch.full((3, 2), math.sqrt(2.0 / (n * (n - 3))), dtype=F64))


@pytest.mark.parametrize("a", [-2.5, -0.3, -5e-5, 0.0, 5e-5, 2e-4, 0.8, 3.0])
def test_pearson3_tail_matches_scipy(a):
    from scipy.stats import pearson3

    z = torch.linspace(-5.0, 9.0, 29, dtype=F64)
    got = _pearson3_upper(z, torch.full_like(z, a))
    want = torch.as_tensor(pearson3.sf(z.numpy(), a))
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-5 if abs(a) < 1e-4 else 1e-12)


# ---------------------------------------------------------------------------------------------- Monte Carlo
@pytest.mark.parametrize("n, P", [(200, 2000), (2000, 500)])
@pytest.mark.parametrize("name", list(MEASURES))
def test_mean_std_and_p_value_agree_with_monte_carlo(name, n, P):
    X, Y = _data(n, seed=n)
    perms = permutations(n, P, seed=3)
    v = _draws(name, X, Y, perms)
    mean, std = v.mean(0), v.std(0)
    m4 = ((v - mean) ** 4).mean(0)
    se_mean = std / math.sqrt(P)
    se_std = torch.sqrt((m4 - std**4).clamp(min=0) / P) / (2 * std)  # delta method on the sample variance
    observed = MEASURES[name][0](X, Y, precision="float64")
    p_mc = (1 + (v >= observed - 1e-12).sum(0)) / (1.0 + P)
    null = analytic_null(name, X, Y)
    assert torch.all((null.mean - mean).abs() <= 4 * se_mean), ((null.mean - mean) / se_mean)
    assert torch.all((null.std - std).abs() <= 4 * se_std), ((null.std - std) / se_std)
    # the real effect (X0, Y0): far in the tail of both
    assert p_mc[0, 0] == 1.0 / (P + 1) and null.p_value[0, 0] < 1.0 / P
    # no effect: within Monte-Carlo error of the MC p-value, plus 0.02 for the Pearson III approximation
    p, q = null.p_value.flatten()[1:], p_mc.flatten()[1:]
    assert torch.all((p - q).abs() <= 4 * torch.sqrt(q * (1 - q) / P) + 0.02), (p, q)


def test_monte_carlo_reference_is_the_projects_permutation_null():
    X, Y = _data(200, seed=200)
    perms = permutations(200, 100, seed=3)
    for name in MEASURES:
        v = _draws(name, X, Y, perms)
        ref = permutation_null(name, X, Y, n_permutations=100, seed=3, precision="float64")
        torch.testing.assert_close(ref.mean, v.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(ref.std, v.std(0), rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------------------------------------- streaming
def _stream(X, rng, precision="float32", **opts):
    n = X.shape[1]
    cuts = sorted(rng.sample(range(1, n), 5))
    slices = [slice(a, b) for a, b in zip([0] + cuts, cuts + [n])]
    firsts = [MomentSums(precision=precision).update(X[:, s]) for s in slices]
    rng.shuffle(firsts)
    first = firsts[0]
    for other in firsts[1:]:
        first = first.merge(other) if rng.random() < 0.5 else other.merge(first)
    seconds = [first.second_pass(**opts).update(X[:, s], start=s.start) for s in slices]
    rng.shuffle(seconds)
    second = seconds[0]
    for other in seconds[1:]:
        second = second.merge(other) if rng.random() < 0.5 else other.merge(second)
    return first, second


@pytest.mark.parametrize("precision", ["float64", "float32"])  # d=6: float32 runs float64 (narrow layers)
@pytest.mark.parametrize(
    "n, d, opts, route",
    [
        (300, 6, {}, "tensor"),
        (300, 6, {"max_tensor_bytes": 0}, "rows"),
        (3000, 6, {"max_tensor_bytes": 0, "sample_rows": 400, "seed": 7}, "sample"),
    ],
)
def test_streaming_equals_in_memory_for_any_chunking_and_merge_order(n, d, opts, route, precision):
    g = torch.Generator().manual_seed(n)
    X = torch.randn(2, n, d, generator=g, dtype=F64) * torch.linspace(0.5, 3.0, d, dtype=F64) + 50.0
    X[1] = X[1] ** 2 / 50.0
    want = layer_moments(X, **opts)
    rng = random.Random(0)
    for _ in range(3):
        first, second = _stream(X, rng, precision, **opts)
        assert second.route == route
        got = second.compute()
        assert got.n == n and got.u_rows == want.u_rows == (opts.get("sample_rows") if route == "sample" else n)
        for key in STATS:
            torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=1e-10, atol=0, msg=key)
        one = first.compute()
        assert not one.has_third
        for key in ("t1", "t2", "t3", "s2", "b"):
            torch.testing.assert_close(getattr(one, key), getattr(want, key), rtol=1e-10, atol=0, msg=key)


def test_first_pass_alone_gives_the_exact_mean_and_std():
    X, Y = _data(300, seed=4)
    mx, my = MomentSums().update(X).compute(), MomentSums().update(Y).compute()
    full = analytic_null("linear_cka", X, Y)
    null = linear_cka_null(mx, my, full.observed)
    assert null.approximation == "normal" and torch.all(null.skewness == 0)
    torch.testing.assert_close(null.mean, full.mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(null.std, full.std, rtol=1e-10, atol=0)


def test_subsampled_cube_is_reported_and_near_exact():
    X, Y = _data(3000, seed=5)
    exact = analytic_null("linear_cka", X, Y)
    sub = analytic_null("linear_cka", X, Y, max_tensor_bytes=0, sample_rows=500)
    assert exact.u_rows is None and sub.u_rows == 500
    torch.testing.assert_close(sub.std, exact.std, rtol=1e-12, atol=0)  # the mean and std never subsample
    assert torch.all((sub.skewness - exact.skewness).abs() <= 0.1 * exact.skewness.abs() + 0.02)


def test_t_method_for_debiased_cka():
    X, Y = _data(400, seed=6)
    null = analytic_null("debiased_cka", X, Y, method="t")
    pearson = analytic_null("debiased_cka", X, Y)
    assert null.approximation == "t" and null.p_value[0, 0] < 1e-6
    assert torch.all((null.p_value - pearson.p_value).abs()[null.p_value > 1e-3] < 0.15)


# ---------------------------------------------------------------------------------------------- float32
# The float32 default against the float64 in-memory statistics: what the statistics feed must hold (null
# mean and std 1e-6 relative; skewness 1e-4 relative, p-values 1e-6 absolute).
F32_OPTS = {"max_tensor_bytes": 0, "sample_rows": 512, "seed": 3}


def _f32_stack(kind, n=3000, d=96, seed=0):
    """``[2, n, d]`` float32 rows (power-law spectrum) of a kind that stresses float32 arithmetic."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2, n, d, generator=g, dtype=F64) * torch.arange(1, d + 1, dtype=F64) ** -0.7
    if kind in ("offset", "bf16"):
        X += 100.0  # a large common offset; bf16 then quantizes most features to a few values
    if kind == "massive":  # massive activations, one of them among the sampled rows of u
        keys = _row_keys(0, n, F32_OPTS["seed"])
        X[:, [7, n // 2, int(np.argmin(keys))]] *= 1e3
    if kind == "drift":  # the second half far from the shift of the first rows: centered in float64
        X[:, n // 2 :] += 20.0
    return X.to(torch.bfloat16 if kind == "bf16" else torch.float32)


def _two_passes(X, chunk, precision="float32", **opts):
    first = MomentSums(precision=precision)
    for s in range(0, X.shape[1], chunk):
        first.update(X[:, s : s + chunk])
    second = first.second_pass(**opts)
    for s in range(0, X.shape[1], chunk):
        second.update(X[:, s : s + chunk], start=s)
    return second.compute()


def _assert_null_close(got, want, mean_std=1e-6, skew=1e-4, p=1e-6):
    def rel(a, b):
        return float(((a - b).abs() / b.abs().clamp(min=1e-300)).max())

    for field in ("mean", "std"):
        assert rel(getattr(got, field), getattr(want, field)) <= mean_std, field
    assert rel(got.skewness, want.skewness) <= skew
    assert float((got.p_value - want.p_value).abs().max()) <= p


@pytest.mark.parametrize("kind", ["gauss", "offset", "massive", "bf16", "drift"])
def test_float32_default_within_bounds_of_float64(kind):
    X, Y = _f32_stack(kind), _f32_stack(kind, seed=1)
    Y = (0.6 * Y.to(F64) + 0.4 * X.to(F64)[:, :, torch.randperm(96, generator=torch.Generator().manual_seed(2))])
    Y = Y.to(X.dtype)
    got = [_two_passes(Z, 1100, **F32_OPTS) for Z in (X, Y)]
    want = [layer_moments(Z, **F32_OPTS) for Z in (X, Y)]
    assert got[0].u_rows == want[0].u_rows == 512
    for name, fn in MEASURES.items():
        ref = fn[1](*want, torch.zeros(2, 2, dtype=F64))
        for z in (0.0, 2.0, 4.0):  # in the bulk and in the tail of the null
            obs = (ref.mean + z * ref.std).clamp(max=1.0)
            _assert_null_close(fn[1](*got, obs), fn[1](*want, obs))


@pytest.mark.parametrize("opts", [{"max_tensor_bytes": 0}, {}])  # 'rows' route; 'tensor' route (float64 u)
def test_float32_rows_and_tensor_routes(opts):
    X, Y = _f32_stack("offset", n=400, d=64), _f32_stack("massive", n=400, d=64, seed=1)
    got = [_two_passes(Z, 150, **opts) for Z in (X, Y)]
    want = [layer_moments(Z, **opts) for Z in (X, Y)]
    assert got[0].u_rows == want[0].u_rows == 400
    for key in STATS:
        torch.testing.assert_close(getattr(got[0], key), getattr(want[0], key), rtol=1e-5, atol=0, msg=key)
    for name, fn in MEASURES.items():
        obs = fn[1](*want, torch.zeros(2, 2, dtype=F64))
        obs = obs.mean + 3 * obs.std
        _assert_null_close(fn[1](*got, obs), fn[1](*want, obs))


def test_float32_independent_of_chunking_and_merge_order():
    X = _f32_stack("offset", n=2500)
    want = layer_moments(X, **F32_OPTS)
    rng = random.Random(1)
    for _ in range(2):
        first, second = _stream(X, rng, **F32_OPTS)
        got = second.compute()
        assert second.route == "sample" and got.u_rows == 512
        assert torch.equal(second.compute().u, got.u)  # compute leaves the accumulator as it was
        for key in STATS:  # the subsample is the same rows; sums differ by float32 rounding only
            torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=1e-5, atol=0, msg=key)
        one = first.compute()
        for key in ("t1", "t2", "s2"):
            torch.testing.assert_close(getattr(one, key), getattr(want, key), rtol=1e-7, atol=0, msg=key)


def test_float32_accumulators_pickle_and_merge_with_float64():
    X = _f32_stack("gauss", n=1200)
    a = MomentSums().update(X[:, :700])
    a = pickle.loads(pickle.dumps(a))  # scratch buffers are left out
    a.merge(MomentSums(precision="float64").update(X[:, 700:]))
    want = layer_moments(X, third=False)
    for key in ("t1", "t2", "s2", "b"):
        torch.testing.assert_close(getattr(a.compute(), key), getattr(want, key), rtol=1e-6, atol=0, msg=key)
    with pytest.raises(ValueError, match="precision must be one of"):
        MomentSums(precision="float16")


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_naming_the_argument():
    X, Y = _data(40, seed=8)
    with pytest.raises(ValueError, match=r"X has n=5 rows.*n >= 6"):
        layer_moments(X[:, :5])
    bad = X.clone()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"X contains 1 non-finite.*layer 1"):
        layer_moments(bad)
    with pytest.raises(ValueError, match=r"X contains 1 non-finite"):
        MomentSums().update(bad)
    const = X.clone()
    const[2] = 1.5
    with pytest.raises(ValueError, match=r"X layer 2 has zero variance"):
        layer_moments(const)
    with pytest.raises(ValueError, match=r"X layer 2 has zero variance"):
        MomentSums().update(const).compute()
    with pytest.raises(ValueError, match=r"X has n=5 rows"):
        MomentSums().update(X[:, :5]).compute()
    with pytest.raises(ValueError, match="sample_rows"):
        layer_moments(X, sample_rows=1)
    mx, my = layer_moments(X), layer_moments(Y)
    obs = linear_cka(X, Y, precision="float64")
    with pytest.raises(ValueError, match=r"observed must have shape \[La, Lb\]=\[3, 2\]"):
        linear_cka_null(mx, my, obs.T)
    with pytest.raises(ValueError, match="observed contains NaN"):
        linear_cka_null(mx, my, torch.full((3, 2), float("inf")))
    with pytest.raises(ValueError, match=r"moments_x and moments_y.*n=40 and n=39"):
        linear_cka_null(mx, layer_moments(Y[:, :39]), obs)
    with pytest.raises(ValueError, match="method"):
        debiased_cka_null(mx, my, obs, method="exact")
    with pytest.raises(ValueError, match="name"):
        analytic_null("rbf_cka", X, Y)


def test_float32_route_names_non_finite_input():
    X = _f32_stack("gauss", n=300, d=64)
    bad = X.clone()
    bad[1, 250, 3] = float("nan")
    with pytest.raises(ValueError, match=r"X contains 1 non-finite value.*layer 1, row 250, column 3"):
        MomentSums().update(bad)
    first = MomentSums().update(X)
    second = first.second_pass()
    with pytest.raises(ValueError, match=r"X contains 1 non-finite value"):
        second.update(bad)
    assert first.n == 300 and second.rows == 0  # nothing of a bad chunk is added


def test_bad_streaming_input_raises_naming_the_argument():
    X, _ = _data(60, seed=9)
    first = MomentSums().update(X)
    with pytest.raises(ValueError, match=r"\(L, d\)=\(3, 5\), but earlier chunks had \(L, d\)=\(3, 6\)"):
        first.update(X[:, :, :5])
    second = first.second_pass(max_tensor_bytes=0, sample_rows=10)
    with pytest.raises(ValueError, match=r"start must be the global index.*start=None"):
        second.update(X[:, :30])
    second.update(X[:, :30], start=0)
    with pytest.raises(ValueError, match="start: the same global row index was given twice"):
        second.update(X[:, 20:40], start=20)
    with pytest.raises(ValueError, match=r"second pass saw 30 rows, the first pass n=60"):
        first.second_pass().update(X[:, :30]).compute()
    other = MomentSums().update(X[:, :50]).second_pass()
    with pytest.raises(ValueError, match="different first passes"):
        first.second_pass().merge(other)
