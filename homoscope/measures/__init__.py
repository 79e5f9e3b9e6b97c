"""Representational similarity measures: all layer pairs of two representation stacks in one op.

Every measure takes stacks ``X [La, n, da]`` and ``Y [Lb, n, db]`` of the same n units (a single
``[n, d]`` matrix is a stack of one), on any torch device and in any real dtype (float16/bfloat16 are
upcast to float64 before any Gram matrix or norm), and returns a ``[La, Lb]`` float64 tensor on X's
device. Measures are named by string through the registry::

    from homoscope.measures import compute, get_measure, list_measures
    S = compute("linear_cka", X, Y)           # [La, Lb]
    info = get_measure("linear_cka")          # kind, symmetric, value_range, invariances, min_n, ...

Bad input (row counts that differ, too few rows, NaN/inf, constant layers, out-of-range options)
raises a ValueError naming the argument, the value and the rule.
"""
from .cca import cca_r2, cca_rho, pwcca, svcca
from .cka import debiased_cka, linear_cka, minibatch_cka, rbf_cka
from .controls import (
    ConfidenceInterval,
    Controlled,
    NullResult,
    bootstrap_ci,
    bootstrap_weights,
    with_controls,
    permutation_null,
    permutations,
)
from .knn import cknna, mutual_knn
from .procrustes import procrustes, procrustes_distance
from .registry import MeasureInfo, compute, get_measure, list_measures, register
from .rsa import rsa
from .streaming import STREAMING_MEASURES, CrossMoments, MinibatchCKA, StreamingMeasure

__all__ = [
    "ConfidenceInterval",
    "Controlled",
    "CrossMoments",
    "MeasureInfo",
    "MinibatchCKA",
    "NullResult",
    "STREAMING_MEASURES",
    "StreamingMeasure",
    "bootstrap_ci",
    "bootstrap_weights",
    "cca_r2",
    "cca_rho",
    "cknna",
    "compute",
    "with_controls",
    "debiased_cka",
    "get_measure",
    "linear_cka",
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
