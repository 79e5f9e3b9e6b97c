"""Representational similarity measures: all layer pairs of two representation stacks in one op.

Every measure takes stacks ``X [La, n, da]`` and ``Y [Lb, n, db]`` of the same n units (a single
``[n, d]`` matrix is a stack of one), on any torch device and in any real dtype (float16/bfloat16 are
upcast to float64 before any Gram matrix or norm), and returns a ``[La, Lb]`` float64 tensor on X's
device. Pure tensor code: no model or I/O imports.

Registry (a study names measures by string; the report and CLI read the metadata)::

    from homoscope.measures import compute, get_measure, list_measures
    S = compute("linear_cka", X, Y)           # [La, Lb]
    info = get_measure("linear_cka")          # MeasureInfo: name, fn, kind, symmetric, value_range,
                                              # invariances, min_n, reference, description, options, ...

Measures (one file per family): ``linear_cka``, ``debiased_cka``, ``rbf_cka``, ``minibatch_cka``
(cka.py); ``cca_rho``, ``cca_r2``, ``svcca``, ``pwcca`` (cca.py; pwcca is asymmetric, weights from X);
``procrustes``, ``procrustes_distance`` (procrustes.py); ``mutual_knn``, ``cknna`` (knn.py); ``rsa``
(rsa.py).

Controls (controls.py), for every registered measure, fast paths for the CKA family, kNN and RSA::

    null = permutation_null("debiased_cka", X, Y, n_permutations=200, seed=0)
    null.observed, null.mean, null.std, null.p_value        # each [La, Lb]; p has the +1 correction
    low, high = bootstrap_ci("debiased_cka", X, Y, n_boot=200, groups=doc_ids, level=0.95, seed=0)
    res = with_controls(["linear_cka", "debiased_cka"], X, Y)   # both controls, shared Gram work
    res["linear_cka"].value, res["linear_cka"].null, res["linear_cka"].ci

Y's rows are the ones shuffled; ``groups`` (one id per row, e.g. document ids) makes the bootstrap
resample whole groups. Consecutive control calls on the same X and Y tensors reuse one cached set of
Gram matrices (``controls.clear_cache()`` frees it).

Streaming (streaming.py): exact accumulators from sums, mergeable in any order::

    acc = StreamingMeasure("debiased_cka")    # or CrossMoments() for several measures at once
    for x, y in chunks:
        acc.update(x, y)                      # [La, m, da], [Lb, m, db]
    shard.merge(other_shard); acc.compute()   # [La, Lb], equal to the one-shot value within 1e-10

Closed-form permutation nulls (nulls.py) of ``linear_cka`` and ``debiased_cka``: mean, std, skewness
and a Pearson type III p-value from per-layer statistics (Josse, Pages & Husson 2008), no shuffles drawn;
the statistics stream in two passes over the rows (``MomentSums``, then ``.second_pass()``)::

    null = analytic_null("linear_cka", X, Y)                # in memory
    null = linear_cka_null(mx, my, observed)                # mx, my: LayerMoments of X and Y

Bad input (row counts that differ, too few rows for an estimator, n <= d for CCA, k out of range,
NaN/inf, constant layers, layers whose rows differ only by the rounding of their dtype, out-of-range
options) raises a ValueError naming the argument, the value and the rule; never a silent NaN. Values of
any magnitude, subnormal ones included, and large common offsets keep every declared invariance (powers
of two and float64 centering; ``tests/test_measures_extremes.py`` states the tolerance).
"""

from .cca import cca_r2, cca_rho, pwcca, svcca
from .cka import debiased_cka, linear_cka, minibatch_cka, rbf_cka
from .controls import (
    MIN_BOOTSTRAP_GROUPS,
    ConfidenceInterval,
    Controlled,
    NullResult,
    bootstrap_ci,
    bootstrap_weights,
    group_codes,
    permutation_null,
    percentile_interval,
    permutations,
    with_controls,
)
from .grouped import GroupedMoments
from .knn import cknna, mutual_knn
from .nulls import (
    AnalyticNull,
    LayerMoments,
    MomentSums,
    ThirdMomentSums,
    analytic_null,
    debiased_cka_null,
    layer_moments,
    linear_cka_null,
)
from .procrustes import procrustes, procrustes_distance
from .registry import MeasureInfo, compute, get_measure, list_measures, register
from .rsa import rsa
from .streaming import STREAMING_MEASURES, CrossMoments, MinibatchCKA, StreamingMeasure

__all__ = [
    "AnalyticNull",
    "ConfidenceInterval",
    "Controlled",
    "CrossMoments",
    "GroupedMoments",
    "LayerMoments",
    "MeasureInfo",
    "MomentSums",
    "MinibatchCKA",
    "NullResult",
    "STREAMING_MEASURES",
    "StreamingMeasure",
    "ThirdMomentSums",
    "analytic_null",
    "bootstrap_ci",
    "bootstrap_weights",
    "group_codes",
    "MIN_BOOTSTRAP_GROUPS",
    "percentile_interval",
    "cca_r2",
    "cca_rho",
    "cknna",
    "compute",
    "with_controls",
    "debiased_cka",
    "debiased_cka_null",
    "get_measure",
    "layer_moments",
    "linear_cka",
    "linear_cka_null",
    "list_measures",
    "minibatch_cka",
    "mutual_knn",
    "permutation_null",
    "permutations",
    "procrustes",
    "procrustes_distance",
    "pwcca",
    "register",
    "rbf_cka",
    "rsa",
    "svcca",
]
