"""The measure registry: a study names measures by string; the report and CLI read the metadata.

Invariance vocabulary used in :attr:`MeasureInfo.invariances`:

- ``translation``: adding the same vector to every row.
- ``isotropic_scaling``: multiplying all features by one positive number.
- ``orthogonal``: right-multiplying by an orthogonal matrix (rotations, reflections).
- ``permutation``: reordering features (columns).
- ``invertible_linear``: right-multiplying by any invertible matrix (at full column rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import cca as _cca
from . import cka as _cka
from . import knn as _knn
from . import procrustes as _procrustes
from . import rsa as _rsa

KINDS = ("similarity", "distance")


@dataclass(frozen=True)
class MeasureInfo:
    """Metadata of one registered measure.

    Attributes:
        name: registry name, e.g. ``"linear_cka"``.
        fn: ``fn(X, Y, **options) -> Tensor [La, Lb]`` on stacks ``[La, n, da]``, ``[Lb, n, db]``.
        kind: ``"similarity"`` (higher = more alike) or ``"distance"`` (lower = more alike).
        symmetric: whether ``fn(X, Y) == fn(Y, X).T``; when False compute both orders.
        value_range: ``(low, high)`` the value always lies in.
        invariances: transformations of one side that leave the value unchanged (see module doc).
        min_n: smallest number of rows the estimator accepts (some measures add rules, e.g. n > d).
        reference: the paper followed.
        description: one line for reports and ``--help``.
        options: option names and defaults accepted by ``fn``.
        family: ``"cka"``, ``"cca"``, ``"procrustes"``, ``"knn"`` or ``"rsa"``.
        streaming: whether an exact streaming accumulator exists (see ``streaming.py``).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str
    symmetric: bool
    value_range: tuple[float, float]
    invariances: tuple[str, ...]
    min_n: int
    reference: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    streaming: bool = False

    @property
    def higher_is_more_alike(self) -> bool:
        """True for similarities, False for distances."""
        return self.kind == "similarity"


_REGISTRY: dict[str, MeasureInfo] = {}


def register(info: MeasureInfo) -> MeasureInfo:
    """Add a measure to the registry (replacing one of the same name) and return it.

    Raises:
        ValueError: an unknown ``kind`` or a malformed ``value_range``.
    """
    if info.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got kind={info.kind!r} for measure {info.name!r}")
    lo, hi = info.value_range
    if not lo < hi:
        raise ValueError(f"value_range must be (low, high) with low < high; got {info.value_range!r}")
    _REGISTRY[info.name] = info
    return info


def list_measures() -> list[str]:
    """Names of all registered measures, in registration order."""
    return list(_REGISTRY)


def get_measure(name: str) -> MeasureInfo:
    """Return the :class:`MeasureInfo` registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown measure {name!r}; valid names: {', '.join(_REGISTRY)}") from None


def compute(name: str, X: Any, Y: Any, **options: Any) -> torch.Tensor:
    """Compute measure ``name`` for all layer pairs: ``[La, n, da] x [Lb, n, db] -> [La, Lb]``.

    Raises:
        ValueError: unknown measure, or any input rule of the measure.
        TypeError: an option the measure does not take.
    """
    return get_measure(name).fn(X, Y, **options)


_T = ("translation", "isotropic_scaling", "orthogonal", "permutation")
_KORNBLITH = "Kornblith, Norouzi, Lee & Hinton 2019, Similarity of Neural Network Representations Revisited (ICML)"

register(
    MeasureInfo(
        "linear_cka",
        _cka.linear_cka,
        "similarity",
        True,
        (0.0, 1.0),
        _T,
        2,
        _KORNBLITH,
        "linear CKA, biased HSIC estimator",
        {"route": "auto", "precision": "float32"},
        "cka",
        True,
    )
)
register(
    MeasureInfo(
        "debiased_cka",
        _cka.debiased_cka,
        "similarity",
        True,
        (-1.0, 1.0),
        _T,
        4,
        "Song, Smola, Gretton, Bedo & Borgwardt 2012, Feature Selection via Dependence Maximization (JMLR); "
        "CKA as in " + _KORNBLITH,
        "linear CKA, unbiased HSIC estimator (near 0 for unrelated representations)",
        {"route": "auto", "precision": "float32"},
        "cka",
        True,
    )
)
register(
    MeasureInfo(
        "rbf_cka",
        _cka.rbf_cka,
        "similarity",
        True,
        (-1.0, 1.0),
        _T,
        2,
        _KORNBLITH,
        "CKA with a Gaussian kernel, bandwidth = threshold x median pairwise distance",
        {"threshold": 1.0, "debiased": False},
        "cka",
        False,
    )
)
register(
    MeasureInfo(
        "minibatch_cka",
        _cka.minibatch_cka,
        "similarity",
        True,
        (-1.0, 1.0),
        _T,
        4,
        "Nguyen, Raghu & Kornblith 2021, Do Wide and Deep Networks Learn the Same Things? (ICLR)",
        "linear CKA from HSIC sums accumulated over minibatches",
        {"batch_size": 256, "debiased": True, "precision": "float32"},
        "cka",
        True,
    )
)

_CCA_INV = ("translation", "isotropic_scaling", "orthogonal", "permutation", "invertible_linear")
register(
    MeasureInfo(
        "cca_rho",
        _cca.cca_rho,
        "similarity",
        True,
        (0.0, 1.0),
        _CCA_INV,
        2,
        "Hotelling 1936, Relations Between Two Sets of Variates (Biometrika); as used by Raghu et al. 2017",
        "mean canonical correlation (needs n > d)",
        {},
        "cca",
        True,
    )
)
register(
    MeasureInfo(
        "cca_r2",
        _cca.cca_r2,
        "similarity",
        True,
        (0.0, 1.0),
        _CCA_INV,
        2,
        "Hotelling 1936; mean squared canonical correlation (Kornblith et al. 2019, R^2_CCA)",
        "mean squared canonical correlation (needs n > d)",
        {},
        "cca",
        True,
    )
)
register(
    MeasureInfo(
        "svcca",
        _cca.svcca,
        "similarity",
        True,
        (0.0, 1.0),
        _T,
        2,
        "Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, SVCCA: Singular Vector Canonical Correlation Analysis "
        "for Deep Learning Dynamics and Interpretability (NeurIPS)",
        "mean canonical correlation after keeping the top singular directions holding 99% of the variance",
        {"variance_kept": 0.99},
        "cca",
        True,
    )
)
register(
    MeasureInfo(
        "pwcca",
        _cca.pwcca,
        "similarity",
        False,
        (0.0, 1.0),
        ("translation", "isotropic_scaling", "permutation"),
        2,
        "Morcos, Raghu & Bengio 2018, Insights on representational similarity in neural networks with "
        "canonical correlation (NeurIPS)",
        "projection-weighted mean canonical correlation, weights from X (the first argument) unless weights_from='y'",
        {"weights_from": "x"},
        "cca",
        True,
    )
)
register(
    MeasureInfo(
        "procrustes",
        _procrustes.procrustes,
        "similarity",
        True,
        (0.0, 1.0),
        _T,
        2,
        "Schoenemann 1966; Ding, Denain & Steinhardt 2021, Grounding Representation Similarity with "
        "Statistical Testing (NeurIPS)",
        "orthogonal Procrustes similarity: nuclear norm of the cross-covariance of centered, unit-norm inputs",
        {},
        "procrustes",
        True,
    )
)
register(
    MeasureInfo(
        "procrustes_distance",
        _procrustes.procrustes_distance,
        "distance",
        True,
        (0.0, 2.0),
        _T,
        2,
        "Ding, Denain & Steinhardt 2021, Grounding Representation Similarity with Statistical Testing (NeurIPS)",
        "squared orthogonal Procrustes distance 2 - 2 * procrustes (0 = same up to rotation, scale, shift)",
        {},
        "procrustes",
        True,
    )
)
_HUH = "Huh, Cheung, Wang & Isola 2024, The Platonic Representation Hypothesis (ICML)"
register(
    MeasureInfo(
        "mutual_knn",
        _knn.mutual_knn,
        "similarity",
        True,
        (0.0, 1.0),
        ("isotropic_scaling", "orthogonal", "permutation"),
        3,
        _HUH,
        "share of each unit's k cosine nearest neighbours found in both representations",
        {"k": 10, "center": False},
        "knn",
        False,
    )
)
register(
    MeasureInfo(
        "cknna",
        _knn.cknna,
        "similarity",
        True,
        (-1.0, 1.0),
        ("isotropic_scaling", "orthogonal", "permutation"),
        3,
        _HUH,
        "centered kernel alignment restricted to mutual k-nearest-neighbour pairs",
        {"k": 10, "center": False},
        "knn",
        False,
    )
)
register(
    MeasureInfo(
        "rsa",
        _rsa.rsa,
        "similarity",
        True,
        (-1.0, 1.0),
        ("isotropic_scaling", "permutation"),
        3,
        "Kriegeskorte, Mur & Bandettini 2008, Representational similarity analysis - connecting the branches "
        "of systems neuroscience (Front. Syst. Neurosci.)",
        "Spearman correlation of correlation-distance RDMs",
        {},
        "rsa",
        False,
    )
)
