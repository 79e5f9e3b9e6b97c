"""Exact group bootstrap from per-group streamed sums (homoscope.measures.grouped)."""
import pytest
import torch

from homoscope.measures import STREAMING_MEASURES, CrossMoments, GroupedMoments, bootstrap_weights, compute


def _pair(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2, n, 6, generator=g, dtype=torch.float64) * 2 + 50
    Y = (X[:, :, :4] - 50) @ torch.randn(4, 5, generator=g, dtype=torch.float64) + torch.randn(2, n, 5, generator=g, dtype=torch.float64)
    return X, Y


def _resampled(m, X, Y, units, w):
    """The replicate by the in-memory definitions: CKA from the engine (copies of a row not compared with
    each other), the other measures on the resampled rows."""
    if m in ("linear_cka", "debiased_cka"):
        from homoscope.measures.controls import _linear_engine

        kind = "biased" if m == "linear_cka" else "unbiased"
        return _linear_engine(X.double(), Y.double(), torch.float64).bootstrap([kind], w[units][None].double())[kind][0]
    rows = torch.arange(X.shape[1]).repeat_interleave(w[units].long())
    return compute(m, X[:, rows], Y[:, rows])


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_each_replicate_is_the_measure_on_the_resampled_rows(precision):
    X, Y = _pair()
    g = torch.Generator().manual_seed(1)
    units = torch.randint(0, 7, (240,), generator=g)  # interleaved groups: chunks hold rows of many groups
    acc = GroupedMoments(7, precision=precision)
    for s in range(0, 240, 33):
        acc.update(X[:, s : s + 33], Y[:, s : s + 33], units[s : s + 33])
    W = bootstrap_weights(7, 6, seed=4)
    names = [m for m in STREAMING_MEASURES if m != "procrustes_distance"]
    reps = acc.replicates(names, W, memory_mb=1)  # one replicate per batch
    tol = 1e-10 if precision == "float64" else 1e-7
    for m in names:
        for r, w in enumerate(W):
            assert (reps[m][r] - _resampled(m, X, Y, units, w)).abs().max() <= tol, (m, r)
    assert acc.n == 240 and acc.group_n.sum() == 240
    whole = acc.merged()
    one = CrossMoments(precision=precision).update(X, Y)
    for m in names:
        assert (whole.compute(m) - one.compute(m)).abs().max() <= tol, m


def test_degenerate_replicates_are_nan_and_bad_input_raises():
    X, Y = _pair(n=40)
    X[:, 20:] = 3.0  # group 1 is constant: a replicate drawing only group 1 has a constant layer
    acc = GroupedMoments(2, precision="float64").update(X, Y, torch.arange(40) // 20)
    reps = acc.replicates(["procrustes"], torch.tensor([[0.0, 2.0], [1.0, 1.0]]))["procrustes"]
    assert torch.isnan(reps[0]).all() and torch.isfinite(reps[1]).all()
    with pytest.raises(ValueError, match="one integer id per row"):
        acc.update(X, Y, torch.zeros(39, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must lie in 0 \.\. 1"):
        acc.update(X, Y, torch.full((40,), 2))
    with pytest.raises(ValueError, match=r"integer counts .* of shape \[R, 2\]"):
        acc.replicates(["linear_cka"], torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"integer counts"):
        acc.replicates(["linear_cka"], torch.full((1, 2), 0.5))
    # mistakes of the call raise, never hide as degenerate (NaN) replicates
    for m in ("debiased_cka", "linear_cka"):  # the CKA bootstrap terms use the debiased sums
        with pytest.raises(ValueError, match="debiased=True"):
            GroupedMoments(2, debiased=False).update(X, Y, torch.arange(40) // 20).replicates([m], torch.ones(1, 2))
    with pytest.raises(ValueError, match="variance_kept"):
        acc.replicates(["svcca"], torch.ones(1, 2), options={"svcca": {"variance_kept": 5}})
    # a bad chunk is refused whole: no group takes its rows
    bad = Y.clone()
    bad[0, 30, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite|NaN|nan"):
        acc.update(X, bad, torch.arange(40) // 20)
    assert acc.n == 40
    with pytest.raises(ValueError, match="disagrees with earlier chunks"):
        acc.update(X[:1], Y, torch.arange(40) // 20)
    # numpy ids of any integer dtype and stride
    import numpy as np

    acc.update(X, Y, (np.arange(40, dtype=np.uint8) // 20)[::-1][::-1])
    assert acc.n == 80
    with pytest.raises(ValueError, match="no streaming form"):
        acc.replicates(["rbf_cka"], torch.ones(1, 2))
    with pytest.raises(ValueError, match="empty"):
        GroupedMoments(3).replicates(["linear_cka"], torch.ones(1, 3))
    with pytest.raises(ValueError, match="n_groups"):
        GroupedMoments(0)


def test_float32_products_with_a_shared_workspace():
    # wide enough for float32 GEMMs; each group passes its float64 warm-up rows first
    g = torch.Generator().manual_seed(3)
    X = torch.randn(1, 5000, 1024, generator=g) + 5
    Y = X * 0.5 + torch.randn(1, 5000, 1024, generator=g)
    units = torch.arange(5000) // 2500
    acc = GroupedMoments(2)
    for s in range(0, 5000, 1250):
        acc.update(X[:, s : s + 1250], Y[:, s : s + 1250], units[s : s + 1250])
    assert sum(p.f32_rows for p in acc.parts) > 0
    W = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    reps = acc.replicates(["linear_cka"], W)["linear_cka"]
    for r, w in enumerate(W[:1]):
        assert (reps[r] - _resampled("linear_cka", X.double(), Y.double(), units, w)).abs().max() <= 1e-7


def test_given_means_keep_every_group_in_place_and_the_replicates_exact():
    X, Y = _pair(n=200, seed=7)
    units = torch.arange(200) % 5  # interleaved groups
    means = (X.mean(1), Y.mean(1))
    acc = GroupedMoments(5, precision="float64", means=means)
    for s in range(0, 200, 64):
        acc.update(X[:, s : s + 64], Y[:, s : s + 64], units[s : s + 64])
    W = bootstrap_weights(5, 4, seed=2)
    reps = acc.replicates(["linear_cka", "debiased_cka", "cca_rho"], W)
    assert all(torch.equal(p._cx, means[0]) for p in acc.parts)  # no group's sums were re-expressed
    for m in ("linear_cka", "debiased_cka", "cca_rho"):
        for r, w in enumerate(W):
            assert (reps[m][r] - _resampled(m, X, Y, units, w)).abs().max() <= 1e-10, (m, r)


def test_means_that_are_not_the_rows_means_are_not_trusted():
    from homoscope.measures.controls import _linear_engine

    X, Y = _pair(n=60, seed=3)
    ids = torch.arange(60) % 6
    W = bootstrap_weights(6, 3, seed=1)
    ref = _linear_engine(X, Y, torch.float64).bootstrap(["biased"], W[:, ids])["biased"]
    off = GroupedMoments(6, precision="float64", means=(X.mean(1) + 1, Y.mean(1))).update(X, Y, ids)
    assert (off.replicates(["linear_cka"], W)["linear_cka"] - ref).abs().max() <= 1e-10
    with pytest.raises(ValueError, match=r"means must have shapes \(2, 6\) and \(2, 5\)"):
        GroupedMoments(6, means=(X.mean(1)[0], Y.mean(1))).update(X, Y, ids)


def test_cca_replicates_rewhitened_from_the_whole_sample_equal_the_resampled_rows():
    """Replicates of the CCA family whiten relative to the whole sample's basis (a Cholesky factor, not an
    eigendecomposition per replicate); a direction without variance in a replicate falls back to its own."""
    from homoscope.measures import streaming

    g = torch.Generator().manual_seed(3)
    n, G = 600, 6
    scale = torch.logspace(0, -3, 12, dtype=torch.float64)  # covariance condition number ~1e6
    X = torch.randn(2, n, 12, generator=g, dtype=torch.float64) * scale + 7.0
    Y = X[:, :, :8] @ torch.randn(8, 9, generator=g, dtype=torch.float64) + torch.randn(2, n, 9, generator=g, dtype=torch.float64)
    units = torch.arange(n) * G // n
    X[1, :, 11] = 0.0
    X[1, units == 2, 11] = torch.randn(int((units == 2).sum()), generator=g, dtype=torch.float64)  # only group 2 varies
    acc = GroupedMoments(G, precision="float64").update(X, Y, units)
    W = torch.tensor([[1.0] * G, [2, 0, 0, 1, 2, 1], [0, 1, 0, 3, 1, 1]])  # the last two omit group 2
    calls = {"own": 0}
    whitening = streaming._whitening

    def counted(*a):
        calls["own"] += 1
        return whitening(*a)

    streaming._whitening = counted
    try:
        reps = acc.replicates(["cca_rho", "cca_r2", "pwcca"], W)
    finally:
        streaming._whitening = whitening
    assert calls["own"] == 2 + 2  # the whole sample's two sides, then one X side per replicate omitting group 2
    for m, r in reps.items():
        for i, w in enumerate(W):
            assert (r[i] - _resampled(m, X, Y, units, w)).abs().max() <= 1e-10, (m, i)
