"""Outcome homogenization (Bommasani, Creel, Kumar, Jurafsky, Liang 2022).

R. Bommasani, K. Creel, A. Kumar, D. Jurafsky, P. Liang, "Picking on the Same Person: Does
Algorithmic Monoculture lead to Outcome Homogenization?", NeurIPS 2022.

Setting: k systems ``h_1..h_k`` decide on the same n individuals; ``F[i, x] = 1`` when system i
fails individual x. Individuals are partitioned into groups g (``groups = instances``: each
individual is its own group; ``groups = labels``: one group per true label). With

- ``fail(h_i)``     = the overall failure rate of system i,
- ``fail_g(h_i)``   = its failure rate within group g,
- ``freq(g, i)``    = the share of system i's individuals in g (here the same for every system:
  ``p_g = |g| / n``, since all systems see the same individuals),

homogenization compares the observed rate of *systemic* failure (every system fails the same
individual) to the rate expected if the systems failed independently at their own rates,
``prod_i fail(h_i)``. The paper's three weightings, as in the authors' reference code
(github.com/rishibommasani/HomogenizationNeurIPS2022, ``src/homogenization.py``):

- average case: ``H_avg = sum_g prod_i [freq(g, i) fail_g(h_i)] / (prod_i fail(h_i) * sum_g prod_i freq(g, i))``
  ``= sum_g p_g^k prod_i fail_g(h_i) / (prod_i fail(h_i) * sum_g p_g^k)``;
- uniform:      ``H_unif = mean_g prod_i fail_g(h_i) / prod_i fail(h_i)``;
- worst case:   ``H_worst = max_g prod_i fail_g(h_i) / prod_i fail(h_i)``.

H = 1 when failures are independent (in expectation for ``H_avg`` and ``H_unif``), H > 1 means
systems fail the same individuals more often than chance (homogenization), H < 1 less often.
With ``groups = instances`` ``H_avg = H_unif = P(all fail) / prod_i fail(h_i)``, and
``H_worst = 1 / prod_i fail(h_i)`` as soon as one individual is failed by all systems. Worked
values: two systems with 10 % errors on 100 individuals give ``H_avg = H_unif = 10`` and
``H_worst = 100`` when their error sets coincide, 0 when they are disjoint; k identical systems
with error rate e give ``H_unif = e / e^k = e^(1-k)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..measures._validate import as_labels, as_numbers

H_MEASURES = ("h_avg", "h_unif", "h_worst")


def _as_failures(failures) -> np.ndarray:
    F = as_numbers(failures, "failures", "[k systems, n individuals]")
    if F.ndim == 1:
        F = F[None, :]
    if F.ndim != 2 or F.shape[0] == 0 or F.shape[1] == 0:
        raise ValueError(
            f"failures must be a non-empty [k systems, n individuals] array of 0/1; got shape {np.shape(failures)}"
        )
    if F.dtype != bool:
        if not np.all(np.isin(F, (0, 1))):
            raise ValueError("failures must hold only 0/1 (or booleans): 1 = the system fails the individual")
        F = F.astype(bool)
    return F


def _group_index(groups, n: int) -> tuple[np.ndarray, int]:
    if groups is None or (isinstance(groups, str) and groups == "instances"):
        return np.arange(n), n
    g = as_labels(groups, "groups", "group ids")
    if g.size != n:
        raise ValueError(f"groups must give one group per individual (n={n}); got shape {g.shape}")
    _, inv = np.unique(g.astype(str), return_inverse=True)
    return inv.astype(np.int64), int(inv.max()) + 1


def homogenization_terms(failures, groups=None, names=None) -> dict:
    """Numerators and denominators of the three homogenization metrics (see the module docstring).

    Args:
        failures: ``[k, n]`` 0/1 or bool, ``failures[i, x] = 1`` when system i fails individual x.
        groups: None or ``'instances'`` (each individual is its own group), or n group ids.
        names: the k systems' names, for messages (default: ``system i``).

    Returns:
        dict with ``h_avg``, ``h_unif``, ``h_worst`` and their parts: ``systemic_avg``,
        ``systemic_unif``, ``systemic_worst`` (the numerators, observed systemic failure rates),
        ``independent`` (the common denominator ``prod_i fail(h_i)``; for ``h_avg`` the paper's
        ``sum_g p_g^k`` appears in numerator and denominator and is divided out here),
        ``error_rates`` (k floats), ``k``, ``n``, ``n_groups``.

    Raises:
        ValueError: bad shapes or values, or a system with no failure at all (the expected rate
            ``prod_i fail(h_i)`` is 0 and H is undefined; the message names the system).
    """
    F = _as_failures(failures)
    k, n = F.shape
    rates = F.mean(axis=1)
    if np.any(rates == 0):
        i = int(np.argmax(rates == 0))
        who = f"model {names[i]!r}" if names is not None and i < len(names) else f"system {i}"
        raise ValueError(
            f"homogenization is undefined: {who} fails no individual (error rate 0), so the rate "
            "expected under independence, prod_i fail(h_i), is 0"
        )
    gi, G = _group_index(groups, n)
    size = np.bincount(gi, minlength=G).astype(np.float64)
    fails = np.zeros((k, G), dtype=np.float64)
    for i in range(k):
        fails[i] = np.bincount(gi, weights=F[i].astype(np.float64), minlength=G)
    fail_g = fails / size  # [k, G]
    joint_g = np.prod(fail_g, axis=0)  # prod_i fail_g(h_i)
    p_g = size / n
    w = p_g ** k
    independent = float(np.prod(rates))
    systemic_avg = float(np.dot(w, joint_g) / w.sum())
    systemic_unif = float(joint_g.mean())
    systemic_worst = float(joint_g.max())
    return {
        "h_avg": systemic_avg / independent,
        "h_unif": systemic_unif / independent,
        "h_worst": systemic_worst / independent,
        "systemic_avg": systemic_avg,
        "systemic_unif": systemic_unif,
        "systemic_worst": systemic_worst,
        "independent": independent,
        "error_rates": [float(r) for r in rates],
        "k": k,
        "n": n,
        "n_groups": G,
    }


def homogenization(failures, groups=None) -> dict:
    """Outcome homogenization ``H_avg``, ``H_unif``, ``H_worst`` of k systems (Bommasani et al. 2022).

    Args:
        failures: ``[k systems, n individuals]`` array of 0/1 or bool; 1 = the system fails the
            individual (e.g. a wrong prediction). A 1-D array is one system.
        groups: None / ``'instances'``: every individual is its own group; or a sequence of n
            group ids (e.g. the true labels: ``groups = labels``).

    Returns:
        ``{"h_avg": float, "h_unif": float, "h_worst": float}``: observed systemic failure rate
        over the rate expected under independence, with the paper's average-case, uniform and
        worst-case weighting of groups (formulas in the module docstring). 1 = independent.

    Raises:
        ValueError: not a ``[k, n]`` 0/1 array, groups of the wrong length, or a system without
            any failure (H undefined).
    """
    t = homogenization_terms(failures, groups)
    return {m: t[m] for m in H_MEASURES}


def homogenization_null(
    failures, groups=None, *, permutations: int = 1000, seed: int = 0, chunk: int = 256
) -> dict[str, np.ndarray]:
    """Permutation null of the three metrics: each system's failures shuffled over individuals.

    Each of the k failure vectors is permuted independently, which keeps every system's error
    count and makes the systems' failures independent of each other and of the groups: the null
    of the paper. Under it the expectation of ``H_avg`` and ``H_unif`` is exactly 1; ``H_worst``
    has no closed form and is what this null is for.

    Returns:
        ``{"h_avg": [B], "h_unif": [B], "h_worst": [B]}`` float64 arrays of null draws.

    Raises:
        ValueError: as :func:`homogenization_terms`, or ``permutations < 1``.
    """
    if not isinstance(permutations, (int, np.integer)) or permutations < 1:
        raise ValueError(f"permutations={permutations!r} must be a positive integer")
    F = _as_failures(failures)
    base = homogenization_terms(F, groups)
    k, n = F.shape
    gi, G = _group_index(groups, n)
    size = np.bincount(gi, minlength=G).astype(np.float64)
    onehot_needed = G < n
    p_g = size / n
    w = p_g ** k
    rng = np.random.default_rng(seed)
    out = {m: np.empty(permutations) for m in H_MEASURES}
    for start in range(0, permutations, chunk):
        b = min(chunk, permutations - start)
        P = rng.permuted(np.broadcast_to(F, (b, k, n)), axis=2).astype(np.float64)  # [b, k, n]
        if onehot_needed:
            counts = np.zeros((b, k, G))
            for gidx in range(G):
                counts[:, :, gidx] = P[:, :, gi == gidx].sum(axis=2)
            fail_g = counts / size
        else:
            fail_g = P[:, :, np.argsort(gi)]  # one individual per group: group order
        joint = np.prod(fail_g, axis=1)  # [b, G]
        out["h_avg"][start : start + b] = (joint @ w) / w.sum() / base["independent"]
        out["h_unif"][start : start + b] = joint.mean(axis=1) / base["independent"]
        out["h_worst"][start : start + b] = joint.max(axis=1) / base["independent"]
    return out
