"""Controls next to scores: a permutation null and a bootstrap confidence interval, per layer pair.

- :func:`permutation_null`: shuffle the rows of Y (seeded), recompute the measure, and report the
  null mean, null standard deviation and a one-sided p-value with the +1 correction,
  ``p = (1 + #{null at least as alike as observed}) / (1 + n_permutations)``.
- :func:`bootstrap_ci`: resample units with replacement (whole groups, e.g. documents, when
  ``groups`` is given), recompute, and report the percentile interval.
- :func:`with_controls`: both, for several measures at once, sharing the work (one Gram matrix per layer
  serves ``linear_cka`` and ``debiased_cka``, their nulls and their bootstraps).

Every registered measure works. Fast paths:

- ``linear_cka``, ``debiased_cka``, ``rbf_cka``: shuffling Y's rows permutes its centered Gram
  matrix, so the null for all layer pairs and a chunk of permutations is one GEMM of flattened upper
  triangles (``linear_cka`` and ``debiased_cka`` share it); the bootstrap is computed from the
  original Grams weighted by the resampling counts (no resampled data is formed), one GEMM per square
  block of the upper triangle for all replicates at once.
- ``mutual_knn``, ``cknna``, ``rsa``: each is ``<A_a, B_b>`` for per-layer ``[n, n]`` matrices, so the
  null is the same gathered GEMM; their bootstrap recomputes the measure per replicate.
- every other measure recomputes the measure per permutation / replicate (slower).

Permutations and resampling counts come from a CPU ``torch.Generator`` seeded with ``seed``, so the
same seed gives the same draws on every device and path. The large GEMMs of the fast paths run in
``precision`` (float32 by default; error below 1e-5 in measure units, tested) and everything else in
float64. Cost of the CKA fast paths: ``O((La + Lb) n^2)`` memory and ``O(La Lb n^2 (P + B) / 2)``
multiply-adds.

Bootstrap and repeated units: a resample repeats units, and two copies of one unit look perfectly
alike, which would inflate every pairwise measure (the unbiased CKA of unrelated data would no longer
be centred on 0). So copies of one unit are never compared with each other, as a unit is not compared
with itself: for the CKA family their kernel entry is 0 (the expected inner product of two distinct
units of centered data), for RSA their pair is left out of the RDMs, for kNN measures they are not
each other's neighbours. The RBF bandwidth is kept from the full sample. The intervals of the CCA
family, Procrustes and minibatch CKA come from plain resampling; repeated units lower the effective
sample size, which shifts these biased estimators upward, so read their intervals as spread rather
than location.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from . import _linalg as la
from . import knn as _knn
from . import rsa as _rsa
from ._hsic import unbiased_hsic
from ._validate import as_pair, as_tensor, describe, first_non_label, prepare_pair
from .cka import _check_positive_self, rbf_centered, unbiased_from_terms
from .registry import check_options, compute, get_measure

CKA_FAST = ("linear_cka", "debiased_cka")
PAIR_MATRIX = ("mutual_knn", "cknna", "rsa")
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class NullResult:
    """Permutation null of one measure, per layer pair (each tensor ``[La, Lb]`` float64).

    Attributes:
        observed: the measure on the unshuffled data.
        mean: mean of the measure over permutations.
        std: standard deviation over permutations (n - 1 denominator).
        p_value: one-sided, ``(1 + #{null >= observed}) / (1 + n_permutations)`` for similarities
            (``<=`` for distances); never 0.
        n_permutations: number of permutations drawn.
    """

    observed: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    p_value: torch.Tensor
    n_permutations: int


class ConfidenceInterval(NamedTuple):
    """Percentile bootstrap interval per layer pair: ``low``, ``high`` ``[La, Lb]`` float64."""

    low: torch.Tensor
    high: torch.Tensor


@dataclass(frozen=True)
class Controlled:
    """A score with its controls: ``value [La, Lb]``, ``null`` (or None), ``ci`` (or None)."""

    value: torch.Tensor
    null: NullResult | None
    ci: ConfidenceInterval | None


# ---------------------------------------------------------------------------------------------- draws
def permutations(n: int, n_permutations: int, seed: int = 0) -> torch.Tensor:
    """Seeded row permutations ``[n_permutations, n]`` (int64, CPU); row p maps new row i to old row p[i]."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(n, generator=g) for _ in range(n_permutations)])


#: The fewest distinct groups a group bootstrap resamples. With G groups there are only C(2G-1, G)
#: distinct resamples (10 for G = 3, 126 for G = 5, 92,378 for G = 10), and percentile intervals over few
#: clusters cover far less often than their level (Cameron, Gelbach & Miller 2008, "Bootstrap-based
#: improvements for inference with clustered errors", REStat 90:414-427: with 5 to 10 clusters, tests at
#: 5 % reject 10-20 % of the time). Below it, resample rows (a study does, and says so) or give more groups.
MIN_BOOTSTRAP_GROUPS = 10


#: What pandas infers for a sequence of ids that are all strings or numbers (the others are looked at one by one).
_ID_KINDS = ("string", "bytes", "integer", "floating", "mixed-integer-float", "boolean", "empty")


def group_codes(groups: Any, n: int, *, sort: bool = False) -> np.ndarray:
    """Group ids ``[n]`` (strings or numbers, equal as values: 1 == 1.0) as int64 codes ``0 .. G-1``, by first
    appearance, or with ``sort`` in sorted order of the ids where they can be sorted.

    Raises:
        ValueError: not one id per row (a string, a dict, an ``n x 1`` array, another length), a missing id
            (None or NaN) at some row, or an id that is not a string or a number (a list, an object).
    """
    ids = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else groups
    if isinstance(ids, (str, bytes, dict, set, frozenset)) or not hasattr(ids, "__len__"):
        raise ValueError(f"groups must be a sequence of one id per row (length n={n}); got {type(groups).__name__}")
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise ValueError(f"groups must give one id per row (length n={n}); got shape {tuple(ids.shape)}")
    ids = pd.Series(list(ids), dtype=object)
    if len(ids) != n:
        raise ValueError(f"groups must give one id per row (length n={n}); got length {len(ids)}")
    try:
        codes, _ = pd.factorize(ids, sort=sort, use_na_sentinel=True)
    except TypeError:  # ids of kinds that do not sort together (1 and "a"): by first appearance
        try:
            codes, _ = pd.factorize(ids, sort=False, use_na_sentinel=True)
        except TypeError as err:  # unhashable ids (lists, arrays)
            raise ValueError(f"groups must hold one hashable id per row (a string or a number); {err}") from None
    missing = np.flatnonzero(codes < 0)
    if missing.size:
        raise ValueError(f"groups has {missing.size} missing ids (None or NaN), first at row {int(missing[0])}; "
                         "give every row a group id, or groups=None to resample rows")
    if pd.api.types.infer_dtype(ids, skipna=False) not in _ID_KINDS:  # only then look at every entry
        i = first_non_label(ids)
        if i is not None:
            raise ValueError(f"groups[{i}] is {describe(ids[i])}, not an id; groups must hold one id per row "
                             "(a string or a number)")
    return codes.astype(np.int64)


def resampled_groups(groups: Any, n: int, where: str = "", stacklevel: int = 3):
    """The groups a bootstrap resamples: ``groups``, or None (rows) where they hold fewer than
    :data:`~homoscope.measures.MIN_BOOTSTRAP_GROUPS` distinct ids, with a RuntimeWarning saying so.

    Raises:
        ValueError: ``groups`` not one id per row, or with a missing id.
    """
    if groups is None:
        return None
    G = int(group_codes(groups, n).max()) + 1 if n else 0
    if G >= MIN_BOOTSTRAP_GROUPS:
        return groups
    warnings.warn(f"bootstrap{where}: the rows come from {G} document{'s' if G != 1 else ''}, fewer than the "
                  f"{MIN_BOOTSTRAP_GROUPS} a document bootstrap needs for its intervals to mean anything; rows are "
                  "resampled instead (runs of consecutive rows where the bootstrap is streamed), so the intervals "
                  "leave out the variation between documents", RuntimeWarning, stacklevel=stacklevel)
    return None


def bootstrap_weights(n: int, n_boot: int, groups: Any = None, seed: int = 0) -> torch.Tensor:
    """Resampling counts ``[n_boot, n]`` (float64, CPU): how often each unit appears in each replicate.

    Without ``groups``, n units are drawn with replacement. With ``groups`` (length n, strings or numbers,
    e.g. document ids), as many groups as there are distinct ids are drawn with replacement and every
    unit of a drawn group comes along (so replicate sizes vary).

    Raises:
        ValueError: ``groups`` not one id per row, a missing id, or fewer than :data:`MIN_BOOTSTRAP_GROUPS`
            distinct ids (too few for a percentile interval to mean anything).
    """
    g = torch.Generator().manual_seed(int(seed) + 1_000_003)
    if groups is None:
        draws = torch.randint(0, n, (n_boot, n), generator=g)
        return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(n_boot, n, dtype=torch.float64)
        )
    codes = group_codes(groups, n, sort=True)
    G = int(codes.max()) + 1 if n else 0
    if G < MIN_BOOTSTRAP_GROUPS:
        raise ValueError(f"groups has {G} distinct id{'s' if G != 1 else ''}; a group bootstrap needs at least "
                         f"{MIN_BOOTSTRAP_GROUPS} (with fewer, its intervals are too narrow to trust): give more "
                         "groups, or groups=None to resample rows")
    inverse = torch.from_numpy(codes)
    draws = torch.randint(0, G, (n_boot, G), generator=g)
    per_group = torch.zeros(n_boot, G, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, G, dtype=torch.float64)
    )
    return per_group[:, inverse]


def _check_names_options(names: Any, options: Any) -> tuple[list[str], dict[str, dict]]:
    """The measure names of :func:`with_controls` as a list and its per-measure options as dicts.

    Raises:
        ValueError: ``names`` not a measure name or a list of them, an unknown measure, ``options`` not a
            dict ``{measure: {option: value}}``, options for a measure not in ``names``, or an option the
            measure does not take.
    """
    given = names
    try:
        names = [names] if isinstance(names, str) else list(names)
    except TypeError:
        names = []
    if not names or not all(isinstance(nm, str) for nm in names):
        shown = " ".join(repr(given).split())
        raise ValueError(f"names must be a measure name or a non-empty list of them; got {shown[:80]}")
    for name in names:
        get_measure(name)
    if options is None:
        return names, {}
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict {{measure: {{option: value}}}}; got {type(options).__name__}")
    extra = [k for k in options if k not in names]
    if extra:
        raise ValueError(f"options names measure {extra[0]!r}, which is not among names={names!r}")
    return names, {nm: check_options(nm, opts) for nm, opts in options.items()}


def _check_controls_args(n_permutations=None, n_boot=None, level=None) -> None:
    for name, v in (("n_permutations", n_permutations), ("n_boot", n_boot)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2):
            raise ValueError(f"{name} must be an integer >= 2 (a spread needs two draws); got {name}={v!r}")
    if level is not None and not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1); got level={level!r}")


# ---------------------------------------------------------------------------------------------- GEMM cores
def _triangle(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0], iu[1]


def _pack(A: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Strict upper triangles of a stack ``[L, n, n] -> [L, N]`` in ``dtype``."""
    n = A.shape[-1]
    return A.reshape(A.shape[0], n * n).index_select(1, i0 * n + i1).to(dtype)


def _permuted_inner(
    A: torch.Tensor, B: torch.Tensor, perms: torch.Tensor, *, symmetric: bool, dtype: torch.dtype
) -> torch.Tensor:
    """``out[p, a, b] = <A_a, B_b[perm_p][:, perm_p]>`` for ``A [La, n, n]``, ``B [Lb, n, n]``: ``[P, La, Lb]``.

    Gathers the side with fewer layers (with the inverse permutation when that is A, which gives the
    same number). For symmetric matrices only the strict upper triangle is gathered and multiplied
    (in ``dtype``); the diagonal part is a small float64 product. One GEMM per chunk of permutations.
    """
    La, n, _ = A.shape
    Lb = B.shape[0]
    device = A.device
    perms = perms.to(device)
    swap = La < Lb
    if swap:
        A, B = B, A
        perms = torch.argsort(perms, dim=1)
    Lbig, Lsmall = A.shape[0], B.shape[0]
    P = perms.shape[0]
    out = torch.empty(P, Lbig, Lsmall, dtype=torch.float64, device=device)
    if symmetric:
        i0, i1 = _triangle(n, device)
        Apack = _pack(A, i0, i1, dtype)
        base_i, base_j, factor = i0, i1, 2.0
    else:
        Apack = A.reshape(Lbig, n * n).to(dtype)
        ar = torch.arange(n, device=device)
        base_i, base_j, factor = ar.repeat_interleave(n), ar.repeat(n), 1.0
    Bflat = B.reshape(Lsmall, n * n).to(dtype)
    N = Apack.shape[1]
    step = max(1, min(P, la.CHUNK_BYTES // max(N * Lsmall * Apack.element_size(), 1)))
    itype = torch.int32 if n * n < 2**31 else torch.int64  # flat positions; int32 halves the index traffic
    perms32 = perms.to(itype)
    base_i, base_j = base_i.to(itype), base_j.to(itype)
    # reused buffers: fresh large allocations (page faults) cost more than the gather itself
    ibuf = torch.empty(step, N, dtype=itype, device=device)
    jbuf = torch.empty(step, N, dtype=itype, device=device)
    gbuf = torch.empty(Lsmall * step * N, dtype=dtype, device=device)
    obuf = torch.empty(Lbig, Lsmall * step, dtype=dtype, device=device)
    for p0 in range(0, P, step):
        chunk = perms32[p0 : p0 + step]
        c = chunk.shape[0]
        idx, jdx = ibuf[:c], jbuf[:c]
        torch.index_select(chunk * n, 1, base_i, out=idx)
        torch.index_select(chunk, 1, base_j, out=jdx)
        idx.add_(jdx)  # flat positions (p_i, p_j)
        G = gbuf[: Lsmall * c * N].view(Lsmall, c * N)
        torch.index_select(Bflat, 1, idx.view(-1), out=G)
        part = obuf[:, : Lsmall * c]
        torch.mm(Apack, G.view(Lsmall * c, N).T, out=part)
        out[p0 : p0 + c] = factor * part.view(Lbig, Lsmall, c).permute(2, 0, 1).to(torch.float64)
    if symmetric:
        da, db = A.diagonal(dim1=-2, dim2=-1), B.diagonal(dim1=-2, dim2=-1)
        out += torch.einsum("ai,bpi->pab", da, db[:, perms])
    return out.transpose(1, 2) if swap else out


def _weighted_block_sums(
    K: torch.Tensor, L: torch.Tensor, W: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sum_ij W_ri W_rj K_a,ij L_b,ij`` for all layer pairs and replicates, and the self sums.

    ``K [La, n, n]``, ``L [Lb, n, n]`` symmetric, counts ``W [R, n]``. The upper triangle is covered by
    square blocks (off-diagonal blocks counted twice), so weights are outer products of slices and no
    index gather is needed; one GEMM ``[La*Lb + La + Lb, b^2] @ [b^2, R]`` per block, in ``dtype``,
    accumulated in float64. Returns ``([La, Lb, R], [La, R], [Lb, R])``.
    """
    La, n, _ = K.shape
    Lb = L.shape[0]
    R = W.shape[0]
    rows = La * Lb + La + Lb
    b = max(16, min(n, int(math.sqrt(la.CHUNK_BYTES / max((rows + R) * torch.finfo(dtype).bits // 8, 1)))))
    b = min(b, 128) if n > 256 else b
    Wd = W.to(dtype)
    Kd, Ld = K.to(dtype), L.to(dtype)
    acc = torch.zeros(rows, R, dtype=torch.float64, device=K.device)
    buf = torch.empty(rows, b * b, dtype=dtype, device=K.device)
    starts = list(range(0, n, b))
    for bi, r0 in enumerate(starts):
        r1 = min(n, r0 + b)
        for c0 in starts[bi:]:
            c1 = min(n, c0 + b)
            s = (r1 - r0) * (c1 - c0)
            kx = Kd[:, r0:r1, c0:c1].reshape(La, s)
            ly = Ld[:, r0:r1, c0:c1].reshape(Lb, s)
            prod = buf[:, :s]
            torch.mul(kx[:, None, :], ly[None, :, :], out=prod[: La * Lb].view(La, Lb, s))
            torch.mul(kx, kx, out=prod[La * Lb : La * Lb + La])
            torch.mul(ly, ly, out=prod[La * Lb + La :])
            w2 = (Wd[:, r0:r1, None] * Wd[:, None, c0:c1]).reshape(R, s)
            part = (prod @ w2.T).to(torch.float64)
            acc += part if c0 == r0 else 2.0 * part
    return acc[: La * Lb].view(La, Lb, R), acc[La * Lb : La * Lb + La], acc[La * Lb + La :]


def _bmm_weighted(U: torch.Tensor, V: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``out[r, a, b] = sum_i W_ri U_a,i,r V_b,i,r`` for ``U [La, n, R]``, ``V [Lb, n, R]``: ``[R, La, Lb]``."""
    Uw = (U * W.T[None]).permute(2, 0, 1)  # [R, La, n]
    return torch.bmm(Uw, V.permute(2, 1, 0))  # [R, n, Lb]


# ---------------------------------------------------------------------------------------------- CKA engine
class _CKAEngine:
    """Centered Gram matrices of both stacks and the terms every CKA control needs.

    ``K [La, n, n]`` and ``L [Lb, n, n]`` are double-centered kernel Grams (``K 1 = 0``): linear
    (``Xc Xc^T``) or RBF (``H K H``). Estimators are named ``"biased"`` (HSIC with centering) and
    ``"unbiased"`` (U-statistic of Song et al. 2012).
    """

    def __init__(self, K: torch.Tensor, L: torch.Tensor, dtype: torch.dtype):
        self.n = K.shape[-1]
        self.dtype = dtype
        self.K, self.L = K, L
        self.kx = self.K.diagonal(dim1=-2, dim2=-1).clone()
        self.ky = self.L.diagonal(dim1=-2, dim2=-1).clone()
        self.sx, self.sy = la.self_inner(self.K), la.self_inner(self.L)
        self.cross = la.flat_inner(self.K, self.L)
        # norms: the low-precision GEMMs run on unit-norm Grams (CKA is scale-free; scales restored in float64)
        self.fx, self.fy = torch.sqrt(self.sx), torch.sqrt(self.sy)
        # the null GEMM and the bootstrap sums are shared by both CKAs: keep the last of each
        self._null_key = self._null_T = self._boot_key = self._boot_sums = None

    def observed(self, name: str, measure: str) -> torch.Tensor:
        if name == "biased":
            return (self.cross / torch.sqrt(self.sx[:, None] * self.sy[None, :])).clamp(0.0, 1.0)
        cu, hx, hy = unbiased_from_terms(self.cross, self.sx, self.sy, self.kx, self.ky, self.n)
        _check_positive_self(hx, "X", measure)
        _check_positive_self(hy, "Y", measure)
        return (cu / torch.sqrt(hx[:, None] * hy[None, :])).clamp(-1.0, 1.0)

    def null(self, names: Sequence[str], perms: torch.Tensor) -> dict[str, torch.Tensor]:
        """Measure values under each permutation of Y's rows: name -> ``[P, La, Lb]``.

        ``<K, P L P^T>`` is shared by both CKAs; the unbiased estimator adds ``k . P l`` (float64).
        """
        if self._null_key is not None and torch.equal(self._null_key, perms):
            T = self._null_T
        else:
            Kn, Ln = self.K / self.fx[:, None, None], self.L / self.fy[:, None, None]
            T = _permuted_inner(Kn, Ln, perms, symmetric=True, dtype=self.dtype)
            T = T * (self.fx[:, None] * self.fy[None, :])[None]
            self._null_key, self._null_T = perms.clone(), T
        out = {}
        for name in names:
            if name == "biased":
                out[name] = (T / torch.sqrt(self.sx[:, None] * self.sy[None, :])[None]).clamp(0.0, 1.0)
            else:
                kl = torch.einsum("ai,bpi->pab", self.kx, self.ky[:, perms.to(self.ky.device)])
                cu, hx, hy = unbiased_hsic(T, self.sx, self.sy, kl, (self.kx * self.kx).sum(-1),
                                           (self.ky * self.ky).sum(-1), self.kx.sum(-1), self.ky.sum(-1), self.n)
                out[name] = (cu / torch.sqrt(hx[:, None] * hy[None, :])).clamp(-1.0, 1.0)
        return out

    def _boot_terms(self, W: torch.Tensor):
        """Weighted sums shared by both estimators for counts ``W [R, n]`` (see :meth:`bootstrap`)."""
        Kn, Ln = self.K / self.fx[:, None, None], self.L / self.fy[:, None, None]
        full, fullx, fully = _weighted_block_sums(Kn, Ln, W, self.dtype)
        kx, ky = self.kx, self.ky
        w2 = W * W
        # sum_ij w_i w_j K0_ij L0_ij = full sum minus its diagonal terms: [R, La, Lb], [R, La], [R, Lb]
        T0 = full.permute(2, 0, 1) * (self.fx[:, None] * self.fy[None, :])[None] - (w2[:, None, :] * kx[None]) @ ky.T
        S0x = fullx.T * (self.fx * self.fx)[None] - w2 @ (kx * kx).T
        S0y = fully.T * (self.fy * self.fy)[None] - w2 @ (ky * ky).T
        Wt64 = W.T.contiguous()  # [n, R]
        Wt = Wt64.to(self.dtype)
        # (K0 w)_i = (K w)_i - w_i k_i: row sums of the resample's K0 part, [L, n, R]
        ex = (self.K.to(self.dtype) @ Wt).to(torch.float64) - kx[:, :, None] * Wt64[None]
        ey = (self.L.to(self.dtype) @ Wt).to(torch.float64) - ky[:, :, None] * Wt64[None]
        qx = (ex * Wt64[None]).sum(1).T  # w' K0 w  [R, La]
        qy = (ey * Wt64[None]).sum(1).T  # [R, Lb]
        exy = _bmm_weighted(ex, ey, W)  # sum_i w_i (K0 w)_i (L0 w)_i  [R, La, Lb]
        exx = (ex * ex * Wt64[None]).sum(1).T
        eyy = (ey * ey * Wt64[None]).sum(1).T
        return T0, S0x, S0y, ex, ey, qx, qy, exy, exx, eyy

    def bootstrap(self, names: Sequence[str], W: torch.Tensor) -> dict[str, torch.Tensor]:
        """Measure values on each resample given by counts ``W [R, n]``: name -> ``[R, La, Lb]``.

        A resample repeats units. Two copies of one unit are not compared with each other: their
        kernel entry is 0 (the expected inner product of two distinct units of centered data), not the
        unit's self-similarity; otherwise copies inflate both estimators (the unbiased one would no
        longer be centred on 0 for unrelated data). Each replicate is then the measure on the
        resampled Gram ``K_b = S K0 S^T + diag(k[idx])`` (``K0`` = the centered Gram with zero
        diagonal, ``S`` the row selection), computed from sums over the original Grams weighted by
        the counts w (sum m); the resampled data are never formed:

        - ``sum_kl (S K0 S^T)_kl (S L0 S^T)_kl = sum_ij w_i w_j K0_ij L0_ij`` (one GEMM per block),
        - row sums ``(S K0 S^T 1)_k = (K0 w)_i``, totals ``w' K0 w``, and diagonal terms in ``w k``.
        """
        W = W.to(self.K.device)
        if self._boot_key is not None and torch.equal(self._boot_key, W):
            terms = self._boot_sums
        else:
            terms = self._boot_terms(W)
            self._boot_key, self._boot_sums = W.clone(), terms
        T0, S0x, S0y, ex, ey, qx, qy, exy, exx, eyy = terms
        kx, ky = self.kx, self.ky  # [La, n], [Lb, n] diagonals
        t = BootTerms(W.sum(-1), T0, S0x, S0y, qx, qy, exy, exx, eyy)
        if "biased" in names:  # the diagonal terms only the biased estimator keeps
            Wk, Wl = W.T[None] * kx[:, :, None], W.T[None] * ky[:, :, None]  # w_i k_i [La, n, R]
            t = t._replace(
                wk=W @ kx.T, wl=W @ ky.T, wkk=W @ (kx * kx).T, wll=W @ (ky * ky).T,
                wkl=(W[:, None, :] * kx[None]) @ ky.T,
                lk=torch.bmm(ex.permute(2, 0, 1), Wl.permute(2, 1, 0)),
                kl=torch.bmm(Wk.permute(2, 0, 1), ey.permute(2, 1, 0)),
                ekx=(ex * Wk).sum(1).T, ely=(ey * Wl).sum(1).T)
        return {name: cka_from_terms(name, t) for name in names}


class BootTerms(NamedTuple):
    """The sums a bootstrap replicate's CKA needs (see :meth:`_CKAEngine.bootstrap`), for counts ``w`` of
    the units, ``K0`` / ``L0`` the centered Grams with zero diagonal, ``k`` / ``l`` their diagonals.

    Shapes: ``m [R]`` (rows of each replicate, ``sum w``); ``[R, La, Lb]`` for ``T0``, ``exy``, ``wkl``,
    ``lk``, ``kl``; ``[R, La]`` / ``[R, Lb]`` for the others. The last eight only the biased estimator
    needs (None otherwise).
    """

    m: torch.Tensor
    T0: torch.Tensor  # sum_ij w_i w_j K0_ij L0_ij
    S0x: torch.Tensor  # sum_ij w_i w_j K0_ij^2
    S0y: torch.Tensor
    qx: torch.Tensor  # w' K0 w
    qy: torch.Tensor
    exy: torch.Tensor  # sum_i w_i (K0 w)_i (L0 w)_i
    exx: torch.Tensor  # sum_i w_i (K0 w)_i^2
    eyy: torch.Tensor
    wk: torch.Tensor | None = None  # sum_i w_i k_i
    wl: torch.Tensor | None = None
    wkk: torch.Tensor | None = None  # sum_i w_i k_i^2
    wll: torch.Tensor | None = None
    wkl: torch.Tensor | None = None  # sum_i w_i k_i l_i
    lk: torch.Tensor | None = None  # sum_i w_i (K0 w)_i l_i
    kl: torch.Tensor | None = None  # sum_i w_i k_i (L0 w)_i
    ekx: torch.Tensor | None = None  # sum_i w_i (K0 w)_i k_i
    ely: torch.Tensor | None = None


def cka_from_terms(kind: str, t: BootTerms) -> torch.Tensor:
    """CKA of each replicate ``[R, La, Lb]`` on the resampled Gram ``K_b = S K0 S^T + diag(k[idx])`` (copies of
    one unit not compared with each other): ``kind`` ``"biased"`` (linear / RBF CKA) or ``"unbiased"``."""
    m = t.m.to(t.T0)[:, None, None]
    mm = m[:, :, 0]
    qx, qy = t.qx[:, :, None], t.qy[:, None, :]
    if kind != "biased":  # unbiased HSIC on the zero-diagonal resampled Gram S K0 S^T
        cross = t.T0 + qx * qy / ((m - 1) * (m - 2)) - 2 / (m - 2) * t.exy
        hx = t.S0x + t.qx * t.qx / ((mm - 1) * (mm - 2)) - 2 / (mm - 2) * t.exx
        hy = t.S0y + t.qy * t.qy / ((mm - 1) * (mm - 2)) - 2 / (mm - 2) * t.eyy
        return (cross / torch.sqrt(hx[:, :, None] * hy[:, None, :])).clamp(-1.0, 1.0)
    # tr((A + Da) H (B + Db) H) with A = S K0 S^T, a = k[idx]
    wk, wl = t.wk[:, :, None], t.wl[:, None, :]
    cross = (t.T0 - 2 / m * t.exy + qx * qy / (m * m) - 2 / m * t.lk + qx * wl / (m * m) - 2 / m * t.kl
             + wk * qy / (m * m) + (1 - 2 / m) * t.wkl + wk * wl / (m * m))
    hx = (t.S0x - 2 / mm * t.exx + t.qx * t.qx / (mm * mm) - 4 / mm * t.ekx + 2 * t.qx * t.wk / (mm * mm)
          + (1 - 2 / mm) * t.wkk + t.wk * t.wk / (mm * mm))
    hy = (t.S0y - 2 / mm * t.eyy + t.qy * t.qy / (mm * mm) - 4 / mm * t.ely + 2 * t.qy * t.wl / (mm * mm)
          + (1 - 2 / mm) * t.wll + t.wl * t.wl / (mm * mm))
    return (cross / torch.sqrt(hx[:, :, None] * hy[:, None, :])).clamp(0.0, 1.0)


_ENGINE_CACHE: dict[str, Any] = {}


def _linear_engine(Xs: torch.Tensor, Ys: torch.Tensor, dtype: torch.dtype) -> _CKAEngine:
    Xc, Yc = la.pow2_scale(la.center(la.pow2_scale(Xs))), la.pow2_scale(la.center(la.pow2_scale(Ys)))
    return _CKAEngine(la.gram(Xc), la.gram(Yc), dtype)


def _cached_engine(X: Any, Y: Any, Xs: torch.Tensor, Ys: torch.Tensor, dtype: torch.dtype) -> _CKAEngine:
    """One-entry cache: consecutive control calls on the same (unmodified) X and Y tensors share the
    Gram matrices, the null GEMM and the bootstrap sums (e.g. permutation_null then bootstrap_ci, for
    linear_cka then debiased_cka). Keyed by tensor identity and in-place version; weak references only."""
    key = None
    if isinstance(X, torch.Tensor) and isinstance(Y, torch.Tensor):
        key = (X._version, Y._version, dtype)
        c = _ENGINE_CACHE
        if c and c["x"]() is X and c["y"]() is Y and c["key"] == key:
            return c["engine"]
    eng = _linear_engine(Xs, Ys, dtype)
    _ENGINE_CACHE.clear()
    if key is not None:
        _ENGINE_CACHE.update(x=weakref.ref(X), y=weakref.ref(Y), key=key, engine=eng)
    return eng


def clear_cache() -> None:
    """Drop the cached Gram matrices of the last control call (frees ``O((La + Lb) n^2)`` memory)."""
    _ENGINE_CACHE.clear()


# ---------------------------------------------------------------------------------------------- summaries
def _summarise_null(name: str, observed: torch.Tensor, null: torch.Tensor) -> NullResult:
    P = null.shape[0]
    if get_measure(name).kind == "similarity":
        hits = (null >= observed[None] - 1e-12).sum(0)
    else:
        hits = (null <= observed[None] + 1e-12).sum(0)
    p = (1.0 + hits.to(torch.float64)) / (1.0 + P)
    return NullResult(observed, null.mean(0), null.std(0, correction=1), p, P)


def percentile_interval(values: torch.Tensor, level: float = 0.95) -> ConfidenceInterval:
    """The percentile interval of bootstrap replicates ``values [R, La, Lb]`` at ``level``.

    Degenerate replicates (NaN: a resample with a constant layer) are left out, with a RuntimeWarning
    that counts them.

    Raises:
        ValueError: ``values`` not a tensor or array of numbers of shape ``[R, La, Lb]`` with R >= 1, or
            ``level`` outside (0, 1).
    """
    values = as_tensor(values, "values", "[R, La, Lb]")
    if values.ndim != 3 or values.shape[0] == 0:
        raise ValueError(f"values must be replicates of shape [R, La, Lb] with R >= 1; got shape {tuple(values.shape)}")
    _check_controls_args(level=level)
    values = values if values.is_floating_point() else values.double()
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        warnings.warn(
            f"{int(bad.any(dim=(1, 2)).sum())} of {values.shape[0]} bootstrap replicates were degenerate "
            "(a resample with a constant layer); they are left out of the interval",
            RuntimeWarning,
            stacklevel=3,
        )
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64, device=values.device)
    lo_hi = torch.nanquantile(values, q, dim=0)
    return ConfidenceInterval(lo_hi[0], lo_hi[1])


def _pair_matrices(name: str, S: torch.Tensor, side: str, options: dict) -> tuple[torch.Tensor, bool]:
    """Per-layer ``[L, n, n]`` matrices with ``measure = <A_a, B_b>``, and whether they are symmetric."""
    if name in ("mutual_knn", "cknna"):
        return _knn.pair_matrices(S, name, name=side, **options), False
    if name == "rsa":
        return _rsa.standardized_rank_rdms(S, side), True
    raise KeyError(name)


def _generic_null(name, Xs, Ys, perms, options) -> torch.Tensor:
    vals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in perms:
            vals.append(compute(name, Xs, Ys[:, p.to(Ys.device)], **options))
    return torch.stack(vals)


def _generic_boot(name, Xs, Ys, W, options) -> torch.Tensor:
    """The measure on each resample; for kNN and RSA measures copies of one unit are not each other's
    neighbours / compared pairs (like a unit and itself)."""
    vals = []
    base = torch.arange(Xs.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for w in W:
            rows = base.repeat_interleave(w.to(torch.int64)).to(Xs.device)
            try:
                if name in ("mutual_knn", "cknna"):
                    k = _knn._check_k(options.get("k", 10), rows.shape[0], name)
                    center = options.get("center", False)
                    Zx = _knn.unit_rows(Xs[:, rows], "X", name, center)
                    Zy = _knn.unit_rows(Ys[:, rows], "Y", name, center)
                    vals.append(_knn.knn_scores(name, Zx, Zy, k, ids=rows))
                elif name == "rsa":
                    rx = _rsa.rank_vectors(Xs[:, rows], "X", ids=rows)
                    ry = _rsa.rank_vectors(Ys[:, rows], "Y", ids=rows)
                    vals.append((rx @ ry.T).clamp_(-1.0, 1.0))
                else:
                    vals.append(compute(name, Xs[:, rows], Ys[:, rows], **options))
            except ValueError:
                vals.append(torch.full((Xs.shape[0], Ys.shape[0]), math.nan, dtype=torch.float64, device=Xs.device))
    return torch.stack(vals)


# ---------------------------------------------------------------------------------------------- public API
def with_controls(
    names: str | Iterable[str],
    X: Any,
    Y: Any,
    *,
    n_permutations: int | None = 200,
    n_boot: int | None = 200,
    groups: Any = None,
    level: float = 0.95,
    seed: int = 0,
    precision: str = "float32",
    options: dict[str, dict] | None = None,
) -> dict[str, Controlled]:
    """Scores with permutation nulls and bootstrap intervals for several measures, sharing work.

    Args:
        names: a registered measure name or several.
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device. Y's rows are the ones shuffled.
        n_permutations: permutations for the null (>= 2), or None / 0 to skip the null.
        n_boot: bootstrap replicates (>= 2), or None / 0 to skip the interval.
        groups: optional length-n ids (e.g. document ids); the bootstrap then resamples whole groups.
        level: confidence level of the percentile interval, in (0, 1).
        seed: seeds both the permutations and the resampling (CPU generator; device-independent).
        precision: ``'float32'`` (default) or ``'float64'`` for the large GEMMs of the fast paths.
        options: per-measure options, e.g. ``{"rbf_cka": {"threshold": 0.5}}``.

    Returns:
        ``{name: Controlled(value, null, ci)}`` with every tensor ``[La, Lb]`` float64 on X's device.
        ``value`` equals :func:`~homoscope.measures.registry.compute` of the measure.

    The Gram matrices, the null GEMM and the bootstrap sums of the last (X, Y) tensors are cached
    (one entry, weak references, invalidated by in-place changes), so ``permutation_null`` followed by
    ``bootstrap_ci``, for ``linear_cka`` and then ``debiased_cka``, builds them once; see
    :func:`clear_cache`.

    Raises:
        ValueError: ``names`` not a measure name or a list of them, unknown measure, ``options`` for a
            measure not in ``names`` or an option the measure does not take, any input rule of a measure
            (X or Y not a tensor or array of numbers of shape ``[L, n, d]``, ...), ``n_permutations``/
            ``n_boot`` < 2, ``level`` outside (0, 1), ``groups`` not one id per row or with a missing id,
            unknown precision.
    """
    names, options = _check_names_options(names, options)
    _check_controls_args(n_permutations or None, n_boot or None, level)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got precision={precision!r}")
    dtype = PRECISIONS[precision]
    Xs, Ys = as_pair(X, Y)
    n = Xs.shape[1]
    perms = permutations(n, n_permutations, seed) if n_permutations else None
    W = bootstrap_weights(n, n_boot, groups, seed) if n_boot else None

    out: dict[str, Controlled] = {}
    estimator = {"linear_cka": "biased", "debiased_cka": "unbiased"}
    cka_names = [nm for nm in names if nm in CKA_FAST and set(options.get(nm, {})) <= {"route", "precision"}]
    if cka_names:
        if "debiased_cka" in cka_names:
            prepare_pair(Xs, Ys, "debiased_cka", min_n=4, why="the unbiased HSIC estimator divides by n-3")
        else:
            prepare_pair(Xs, Ys, "linear_cka", min_n=2, why="centering needs two rows")
        eng = _cached_engine(X, Y, Xs, Ys, dtype)
        out.update(_engine_controls(eng, {nm: estimator[nm] for nm in cka_names}, perms, W, level))
    for name in names:
        if name not in out:
            opts = dict(options.get(name, {}))
            if "precision" in get_measure(name).options:
                opts.setdefault("precision", precision)  # the controls' precision, unless the measure's is given
            out[name] = _one_controlled(name, Xs, Ys, opts, perms, W, level, dtype)
    return {nm: out[nm] for nm in names}


def _one_controlled(name: str, Xs, Ys, opts: dict, perms, W, level: float, dtype) -> Controlled:
    """Value, null and interval of one measure outside the shared CKA engine (see :func:`with_controls`)."""
    value = compute(name, Xs, Ys, **opts)  # validates the input and the options
    if name == "rbf_cka":
        threshold, debiased = opts.get("threshold", 1.0), opts.get("debiased", False)
        eng = _CKAEngine(rbf_centered(Xs, threshold, False), rbf_centered(Ys, threshold, False), dtype)
        return _engine_controls(eng, {name: "unbiased" if debiased else "biased"}, perms, W, level)[name]
    null = ci = None
    if perms is not None:
        if name in PAIR_MATRIX:
            A, sym = _pair_matrices(name, Xs, "X", opts)
            B, _ = _pair_matrices(name, Ys, "Y", opts)
            lo, hi = get_measure(name).value_range
            vals = _permuted_inner(A, B, perms, symmetric=sym, dtype=dtype).clamp_(lo, hi)
        else:
            vals = _generic_null(name, Xs, Ys, perms, opts)
        null = _summarise_null(name, value, vals)
    if W is not None:
        ci = percentile_interval(_generic_boot(name, Xs, Ys, W, opts), level)
    return Controlled(value, null, ci)


def _engine_controls(eng: _CKAEngine, est: dict[str, str], perms, W, level) -> dict[str, Controlled]:
    """Controls of CKA measures (name -> 'biased' / 'unbiased') from one engine."""
    kinds = sorted(set(est.values()))
    nulls = eng.null(kinds, perms) if perms is not None else {}
    boots = eng.bootstrap(kinds, W) if W is not None else {}
    out = {}
    for name, kind in est.items():
        obs = eng.observed(kind, name)
        out[name] = Controlled(
            obs,
            _summarise_null(name, obs, nulls[kind]) if perms is not None else None,
            percentile_interval(boots[kind], level) if W is not None else None,
        )
    return out


def permutation_null(
    name: str, X: Any, Y: Any, n_permutations: int = 200, seed: int = 0, *, precision: str = "float32", **options: Any
) -> NullResult:
    """Permutation null of measure ``name`` per layer pair: rows of Y shuffled ``n_permutations`` times.

    Args:
        name: a registered measure.
        X: ``[La, n, da]`` or ``[n, da]``; Y: ``[Lb, n, db]`` or ``[n, db]``; any real dtype and device.
        n_permutations: number of seeded shuffles (>= 2).
        seed: seed of the CPU generator drawing the permutations.
        precision: ``'float32'`` or ``'float64'`` for the gathered GEMM of the fast paths.
        options: the measure's options.

    Returns:
        :class:`NullResult` with ``observed``, ``mean``, ``std``, ``p_value`` (each ``[La, Lb]`` float64).

    Raises:
        ValueError: unknown measure, any input rule of the measure, ``n_permutations`` < 2.
    """
    _check_controls_args(n_permutations=n_permutations)
    res = with_controls(
        name, X, Y, n_permutations=n_permutations, n_boot=None, seed=seed, precision=precision, options={name: options}
    )
    return res[name].null


def bootstrap_ci(
    name: str,
    X: Any,
    Y: Any,
    n_boot: int = 200,
    groups: Any = None,
    level: float = 0.95,
    seed: int = 0,
    *,
    precision: str = "float32",
    **options: Any,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of measure ``name`` per layer pair.

    Units (rows) are resampled with replacement; with ``groups`` (one id per row, e.g. document ids)
    whole groups are resampled instead. Copies of one unit within a replicate are not compared with
    each other (see the module docstring); the interval is the percentile interval of the replicates.

    Args:
        name: a registered measure.
        X: ``[La, n, da]`` or ``[n, da]``; Y: ``[Lb, n, db]`` or ``[n, db]``; any real dtype and device.
        n_boot: replicates (>= 2).
        groups: optional length-n group ids.
        level: confidence level in (0, 1).
        seed: seed of the CPU generator drawing the resamples.
        precision: ``'float32'`` or ``'float64'`` for the weighted GEMM of the CKA fast path.
        options: the measure's options.

    Returns:
        :class:`ConfidenceInterval` ``(low, high)``, each ``[La, Lb]`` float64.

    Raises:
        ValueError: unknown measure, any input rule of the measure, ``n_boot`` < 2, ``level`` outside
            (0, 1), ``groups`` of the wrong length.
    """
    _check_controls_args(n_boot=n_boot, level=level)
    res = with_controls(
        name,
        X,
        Y,
        n_permutations=None,
        n_boot=n_boot,
        groups=groups,
        level=level,
        seed=seed,
        precision=precision,
        options={name: options},
    )
    return res[name].ci
