"""Agreement between the predictions of models on the same test rows.

Measures (names as in the results frame):

- ``agreement``: share of rows where both models predict the same class.
- ``cohen_kappa``: Cohen (1960), ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from the two models'
  own predicted-class shares; equals ``sklearn.metrics.cohen_kappa_score``.
- ``fleiss_kappa``: Fleiss (1971), over k >= 2 models as raters of every row.
- ``error_overlap``: Jaccard index of the two error sets, ``|E_a & E_b| / |E_a | E_b|``.
- ``error_overlap_conditional``: ``P(b wrong | a wrong) = |E_a & E_b| / |E_a|`` (directional).
- ``jsd``: mean over rows of the Jensen-Shannon divergence between the two predictive
  distributions, in bits (0 = identical, 1 = disjoint support).

Every pairwise value comes with ``expected_independent``: its value if the two models had erred
independently, each at its own rates. Precisely, the null draws each model's prediction for a row
with true label y from that model's own confusion-matrix row for y, independently of the other
model. It keeps each model's accuracy, its per-label error rates, its confusions and its
predicted-class shares, and removes only the row-level coupling of the two models. Values:

- agreement: ``sum_y p(y) sum_c A[y, c] B[y, c]`` (A, B: row-normalised confusion matrices);
- error_overlap: ``E / (e_a + e_b - E)`` with ``E = sum_y p(y) e_a(y) e_b(y)`` (ratio of expectations);
- error_overlap_conditional: ``E / e_a``;
- cohen_kappa: ``(agreement_ind - p_e) / (1 - p_e)`` (plug-in: ``p_e`` is kept, since the null
  keeps the predicted-class shares in expectation);
- fleiss_kappa: the same plug-in with the mean of the pairwise ``agreement_ind`` as ``P_bar``;
- jsd: the mean JSD between model a's distribution on a row and model b's distribution on a row
  of the same true label, over all such ordered pairs (the row itself included).
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..measures._validate import as_labels, as_numbers
from ..measures.controls import bootstrap_weights, resampled_groups

PAIR_MEASURES = ("agreement", "cohen_kappa", "error_overlap", "error_overlap_conditional", "jsd")
LN2 = math.log(2.0)


# --------------------------------------------------------------------------- validation helpers
def _as_codes(x, name: str, n_classes: int) -> np.ndarray:
    """Integer class codes in ``[0, n_classes)`` as int64; raises naming ``name``."""
    a = as_labels(x, name)
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class codes; got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = (a < 0) | (a >= n_classes)
    if bad.any():
        raise ValueError(
            f"{name}[{int(np.argmax(bad))}] = {int(a[bad][0])} is not a class code in [0, {n_classes})"
        )
    return a


def encode_labels(*arrays: Sequence) -> tuple[list[np.ndarray], np.ndarray]:
    """Encode label arrays jointly as int64 codes into ``classes = sorted(union of values)``.

    Integer arrays are kept as codes (classes ``0..max``), so that columns of predicted
    probabilities keep their meaning. Returns ``(codes, classes)``.
    """
    arrs = [np.asarray(a) for a in arrays]
    if all(np.issubdtype(a.dtype, np.integer) for a in arrs):
        hi = max(int(a.max()) for a in arrs if a.size) + 1
        lo = min(int(a.min()) for a in arrs if a.size)
        if lo < 0:
            raise ValueError(f"integer labels must be class codes >= 0; found {lo}")
        return [a.astype(np.int64) for a in arrs], np.arange(hi)
    flat = np.concatenate([a.astype(str) for a in arrs])
    classes = np.unique(flat)
    return [np.searchsorted(classes, a.astype(str)).astype(np.int64) for a in arrs], classes


# --------------------------------------------------------------------------- kappas
def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa between two label sequences (Cohen 1960), unweighted.

    ``kappa = (p_o - p_e) / (1 - p_e)``, with ``p_o`` the share of identical labels and
    ``p_e = sum_c p_a(c) p_b(c)`` from each sequence's own label shares. Equals
    ``sklearn.metrics.cohen_kappa_score(a, b)``.

    Args:
        a, b: n labels each (ints or strings), the same n.

    Returns:
        float in [-1, 1]; 1 = identical labels.

    Raises:
        ValueError: empty or not 1-D input, lengths that differ, or ``p_e = 1`` (both sequences
            use one and the same single label, where kappa is undefined).
    """
    a, b = as_labels(a, "a"), as_labels(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a has {a.size} labels but b has {b.size}; give the same rows to both")
    (ca, cb), classes = encode_labels(a, b)
    return _kappa_codes(ca, cb, len(classes))


def _kappa_codes(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa of class codes ``[n]`` in ``0 .. n_classes-1`` (``sklearn.metrics.cohen_kappa_score``).

    Raises:
        ValueError: chance agreement 1 (both use one and the same single label), where kappa is undefined.
    """
    from sklearn.metrics import cohen_kappa_score

    if _chance_agreement(a, b, n_classes) >= 1.0 - 1e-15:
        raise ValueError(
            "cohen_kappa is undefined: both label sequences use the same single label (chance agreement 1)"
        )
    return float(cohen_kappa_score(a, b, labels=np.arange(n_classes)))


def _chance_agreement(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    """``p_e = sum_c p_a(c) p_b(c)`` from each sequence's own class shares."""
    n = a.size
    return float(np.dot(np.bincount(a, minlength=n_classes), np.bincount(b, minlength=n_classes))) / (n * n)


def category_counts(ratings, n_classes: int | None = None) -> np.ndarray:
    """Turn ratings ``[k, n]`` (k raters, n subjects, integer class codes) into counts ``[n, C]``.

    ``counts[i, c]`` = how many of the k raters put subject i in class c; every row sums to k.
    ``n_classes`` defaults to ``max code + 1``.

    Raises:
        ValueError: not 2-D, empty, or codes outside ``[0, n_classes)``.
    """
    r = as_numbers(ratings, "ratings", "[k raters, n subjects]")
    if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] == 0:
        raise ValueError(f"ratings must be a non-empty [k raters, n subjects] array; got shape {r.shape}")
    c = int(r.max()) + 1 if n_classes is None else int(n_classes)
    codes = np.stack([_as_codes(row, f"ratings[{j}]", c) for j, row in enumerate(r)])
    out = np.zeros((r.shape[1], c), dtype=np.int64)
    for row in codes:
        out[np.arange(r.shape[1]), row] += 1
    return out


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa for many raters (Fleiss 1971, "Measuring nominal scale agreement among many raters").

    With N subjects, m raters per subject and C categories, ``n_ic`` raters putting subject i in
    category c: ``P_i = (sum_c n_ic^2 - m) / (m (m - 1))``, ``P_bar = mean_i P_i``,
    ``p_c = sum_i n_ic / (N m)``, ``P_e = sum_c p_c^2``, ``kappa = (P_bar - P_e) / (1 - P_e)``.
    For predictions ``[k models, n rows]`` build the table with :func:`category_counts`.

    Args:
        counts: ``[N, C]`` non-negative integer counts, every row summing to the same m >= 2.

    Returns:
        float; 1 = all raters agree on every subject, 0 = agreement at chance.

    Raises:
        ValueError: not 2-D, empty, negative or non-integer counts, rows with different sums,
            m < 2, or ``P_e = 1`` (every rating in one category, kappa undefined).
    """
    t = as_numbers(counts, "counts", "[N subjects, C categories]")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"counts must be a non-empty [N subjects, C categories] table; got shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t != np.round(t)):
        raise ValueError("counts must hold non-negative whole numbers (raters per subject and category)")
    t = t.astype(np.float64)
    m = t.sum(axis=1)
    if not np.all(m == m[0]):
        i = int(np.argmax(m != m[0]))
        raise ValueError(f"counts row {i} sums to {m[i]:g} but row 0 to {m[0]:g}; every subject needs the same raters")
    m = float(m[0])
    if m < 2:
        raise ValueError(f"counts rows sum to {m:g} raters; Fleiss' kappa needs at least 2 raters per subject")
    N = t.shape[0]
    p_bar = float(np.mean(((t * t).sum(axis=1) - m) / (m * (m - 1.0))))
    p = t.sum(axis=0) / (N * m)
    p_e = float(np.dot(p, p))
    if p_e >= 1.0 - 1e-15:
        raise ValueError("fleiss_kappa is undefined: every rating falls in one category (chance agreement 1)")
    return (p_bar - p_e) / (1.0 - p_e)


# --------------------------------------------------------------------------- divergences
def jsd(p, q, *, base: float = 2.0) -> np.ndarray:
    """Jensen-Shannon divergence between distributions along the last axis (Lin 1991).

    ``JSD(p, q) = H(m) - (H(p) + H(q)) / 2`` with ``m = (p + q) / 2``; in bits by default
    (``base=2``: values in [0, 1]). Rows are renormalised to sum to 1; ``0 log 0 = 0``.
    This is the square of ``scipy.spatial.distance.jensenshannon(p, q, base=base)``.

    Args:
        p, q: arrays ``[..., C]`` of non-negative finite weights, broadcastable to each other.

    Returns:
        float64 array of the broadcast shape without the last axis.

    Raises:
        ValueError: negative or non-finite entries, or a row that sums to 0.
    """
    p = as_numbers(p, "p", "[..., C]").astype(np.float64)
    q = as_numbers(q, "q", "[..., C]").astype(np.float64)
    for name, x in (("p", p), ("q", q)):
        if x.ndim == 0:
            raise ValueError(f"{name} must have a class axis; got a scalar")
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError(f"{name} must hold non-negative finite probabilities")
        if np.any(x.sum(axis=-1) <= 0):
            raise ValueError(f"{name} has a row summing to 0; every row must be a distribution")
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    return _jsd_unchecked(p, q) / math.log(base)


def _jsd_unchecked(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JSD in nats of normalised distributions along the last axis (broadcast):
    ``scipy.spatial.distance.jensenshannon`` squared."""
    from scipy.spatial.distance import jensenshannon

    return np.square(jensenshannon(p, q, axis=-1))


def _expected_jsd(pa: np.ndarray, pb: np.ndarray, y: np.ndarray, chunk: int = 256) -> float:
    """Mean JSD (bits) between a's row i and b's row j over all (i, j) with y_i == y_j."""
    n = y.size
    total = 0.0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        B = pb[idx]
        s = 0.0
        for start in range(0, idx.size, chunk):
            A = pa[idx[start : start + chunk]]
            s += float(_jsd_unchecked(A[:, None, :], B[None, :, :]).sum())
        total += s / idx.size  # (1/m_c) sum_i sum_j = m_c * mean; weight m_c / n below
    return total / n / LN2


# --------------------------------------------------------------------------- pair measures
def confusion(pred: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix ``[C, C]``: ``P(pred = c | true = r)``; rows of absent labels are 0."""
    m = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(m, (y, pred), 1.0)
    rows = m.sum(axis=1, keepdims=True)
    return np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)


def expected_agreement(pred_a, pred_b, y, n_classes: int) -> float:
    """Agreement expected if a and b predicted independently given the true label (see module doc)."""
    p_y = np.bincount(y, minlength=n_classes) / y.size
    A, B = confusion(pred_a, y, n_classes), confusion(pred_b, y, n_classes)
    return float(np.dot(p_y, (A * B).sum(axis=1)))


def _expected_joint_error(pred_a, pred_b, y, n_classes: int) -> float:
    p_y = np.bincount(y, minlength=n_classes) / y.size
    A, B = confusion(pred_a, y, n_classes), confusion(pred_b, y, n_classes)
    ea, eb = 1.0 - np.diag(A), 1.0 - np.diag(B)
    present = p_y > 0
    return float(np.dot(p_y[present], ea[present] * eb[present]))


def pair_measures(
    pred_a, pred_b, y_true, n_classes: int, proba_a=None, proba_b=None
) -> list[tuple[str, bool, float, float]]:
    """All pairwise measures for one pair of models on the same rows.

    Args:
        pred_a, pred_b, y_true: int64 class codes ``[n]`` in ``[0, n_classes)``.
        n_classes: C.
        proba_a, proba_b: optional predictive distributions ``[n, C]`` (for ``jsd``).

    Returns:
        a list of ``(measure, reversed, value, expected_independent)``; ``reversed`` is True for
        the row of a directional measure that reads b -> a (``P(a wrong | b wrong)``). A measure
        that is undefined for this pair (e.g. no errors at all) is left out with a
        ``RuntimeWarning`` naming the reason.
    """
    a, b, y = pred_a, pred_b, y_true
    out: list[tuple[str, bool, float, float]] = []
    agree = float(np.mean(a == b))
    agree_ind = expected_agreement(a, b, y, n_classes)
    out.append(("agreement", False, agree, agree_ind))
    try:
        kappa = _kappa_codes(a, b, n_classes)
        pe = _chance_agreement(a, b, n_classes)
        out.append(("cohen_kappa", False, kappa, (agree_ind - pe) / (1.0 - pe)))
    except ValueError as err:
        warnings.warn(f"cohen_kappa left out: {err}", RuntimeWarning, stacklevel=3)
    wa, wb = a != y, b != y
    ea, eb = float(wa.mean()), float(wb.mean())
    both = float(np.mean(wa & wb))
    either = float(np.mean(wa | wb))
    joint_ind = _expected_joint_error(a, b, y, n_classes)
    if either > 0:
        out.append(("error_overlap", False, both / either, joint_ind / (ea + eb - joint_ind)))
    else:
        warnings.warn("error_overlap left out: neither model makes an error", RuntimeWarning, stacklevel=3)
    for rev, e_given in ((False, ea), (True, eb)):
        if e_given > 0:
            out.append(("error_overlap_conditional", rev, both / e_given, joint_ind / e_given))
        else:
            warnings.warn(
                "error_overlap_conditional left out for one direction: the conditioning model makes no error",
                RuntimeWarning, stacklevel=3,
            )
    if proba_a is not None and proba_b is not None:
        value = float(np.mean(_jsd_unchecked(proba_a, proba_b))) / LN2
        out.append(("jsd", False, value, _expected_jsd(proba_a, proba_b, y)))
    return out


def _bootstrap_pair(a, b, y, C, pa, pb, W) -> dict[tuple[str, bool], np.ndarray]:
    """Replicate values of every pair measure; NaN where a replicate leaves it undefined."""
    tot = W.sum(axis=1)
    eq = (a == b).astype(np.float64)
    agree = W @ eq / tot
    oa = np.eye(C)[a]
    ob = np.eye(C)[b]
    ma, mb = (W @ oa) / tot[:, None], (W @ ob) / tot[:, None]
    pe = (ma * mb).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(pe < 1 - 1e-15, (agree - pe) / (1 - pe), np.nan)
        wa, wb = (a != y).astype(np.float64), (b != y).astype(np.float64)
        both = W @ (wa * wb)
        either = W @ np.maximum(wa, wb)
        ca, cb = W @ wa, W @ wb
        res = {
            ("agreement", False): agree,
            ("cohen_kappa", False): kappa,
            ("error_overlap", False): np.where(either > 0, both / either, np.nan),
            ("error_overlap_conditional", False): np.where(ca > 0, both / ca, np.nan),
            ("error_overlap_conditional", True): np.where(cb > 0, both / cb, np.nan),
        }
    if pa is not None and pb is not None:
        res[("jsd", False)] = W @ (_jsd_unchecked(pa, pb) / LN2) / tot
    return res


def _key(k) -> tuple[str, int]:
    if isinstance(k, tuple):
        if len(k) != 2:
            raise ValueError(f"prediction key {k!r} must be a model name or a (model, layer) pair")
        return str(k[0]), int(k[1])
    return str(k), -1


def _check_pairs(pred: Mapping, pairs: Sequence[tuple] | None, bootstrap: int) -> Sequence[tuple]:
    """Check the pairs to score against the keys of ``pred``, and the bootstrap count.

    Returns the pairs; by default every unordered pair of keys, in the order of ``pred``.
    """
    if not isinstance(pred, Mapping):
        raise ValueError(f"pred must be a mapping {{model: predictions [n]}}; got {type(pred).__name__}")
    keys = list(pred)
    if pairs is None:
        if len(keys) < 2:
            raise ValueError(f"pred has {len(keys)} model(s); agreement needs at least two")
        pairs = list(itertools.combinations(keys, 2))
    for pa_, pb_ in pairs:
        for k in (pa_, pb_):
            if k not in pred:
                raise ValueError(f"pair key {k!r} is not in pred (keys: {keys})")
    if not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap!r} must be a non-negative integer")
    return pairs


def _encode_predictions(pred: Mapping, y_true: Sequence) -> tuple[np.ndarray, dict, int]:
    """Encode true labels and every model's predictions jointly (:func:`encode_labels`).

    Returns ``(true codes [n], {key: predicted codes [n]}, number of classes)``.
    """
    y = as_labels(y_true, "y_true")
    n = y.size
    arrays = []
    for k in pred:
        p = as_labels(pred[k], f"pred[{k!r}]")
        if p.size != n:
            raise ValueError(f"pred[{k!r}] has {p.size} rows but y_true has {n}; give the same rows")
        arrays.append(p)
    codes, classes = encode_labels(y, *arrays)
    return codes[0], dict(zip(pred, codes[1:])), len(classes)


def _normalised_proba(proba: Mapping, pred: Mapping, n: int, C: int) -> tuple[dict, int]:
    """Check the predictive distributions ``{key: [n, C']}`` and renormalise every row to sum to 1.

    Returns ``({key: [n, C] float64}, C)``: C the widest of ``C`` and the columns given, zero-padded.
    """
    probs: dict = {}
    for k, P in proba.items():
        if k not in pred:
            raise ValueError(f"proba key {k!r} is not in pred")
        P = as_numbers(P, f"proba[{k!r}]", f"[n={n}, C]").astype(np.float64)
        if P.ndim != 2 or P.shape[0] != n:
            raise ValueError(f"proba[{k!r}] must be [n={n}, C]; got shape {P.shape}")
        if P.shape[1] < C:
            raise ValueError(f"proba[{k!r}] has {P.shape[1]} columns but the labels use {C} classes")
        if P.shape[1] > C:
            C = P.shape[1]
        if not np.all(np.isfinite(P)) or np.any(P < 0) or np.any(P.sum(axis=1) <= 0):
            raise ValueError(f"proba[{k!r}] must hold non-negative finite rows with positive sums")
        probs[k] = P / P.sum(axis=1, keepdims=True)
    for k, P in probs.items():
        if P.shape[1] < C:
            probs[k] = np.pad(P, ((0, 0), (0, C - P.shape[1])))
    return probs, C


def _pair_row(
    names: tuple, measure: str, rev: bool, value: float, expected: float, n: int, reps: dict | None
) -> dict:
    """One :func:`agreement_table` row for ``names = ((model, layer), (model, layer))``, swapped if ``rev``.

    With bootstrap replicates ``reps`` (from :func:`_bootstrap_pair`) it adds the 95 % percentile interval.
    """
    (ma, la), (mb, lb) = names
    row = {
        "model_a": mb if rev else ma, "layer_a": lb if rev else la,
        "model_b": ma if rev else mb, "layer_b": la if rev else lb,
        "measure": measure, "value": value, "expected_independent": expected, "n": n,
    }
    if reps is not None:
        r = reps[(measure, rev)]
        r = r[np.isfinite(r)]
        row["ci_low"], row["ci_high"] = (
            (float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))) if r.size else (np.nan, np.nan)
        )
    return row


def agreement_table(
    pred: Mapping,
    y_true: Sequence,
    proba: Mapping | None = None,
    *,
    pairs: Sequence[tuple] | None = None,
    bootstrap: int = 0,
    groups: Sequence | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Pairwise agreement between models' predictions on the same rows, as a tidy frame.

    Args:
        pred: ``{key: predictions [n]}``; a key is a model name (``layer`` is then -1, "not a
            layer") or a ``(model, layer)`` pair. Predictions are class codes (ints) or labels
            (strings), encoded jointly with ``y_true``.
        y_true: the n true labels, same encoding as the predictions.
        proba: optional ``{key: [n, C] predictive distributions}`` with columns in class order
            (class codes 0..C-1, or the sorted label strings); adds ``jsd``.
        pairs: which key pairs to score (each ``(key_a, key_b)``); default all unordered pairs
            in the order of ``pred``.
        bootstrap: number of bootstrap resamples for 95 % percentile intervals (0 = none).
        groups: n group ids (documents) to resample whole groups; default rows.
        seed: bootstrap seed.

    Returns:
        DataFrame with columns ``model_a, layer_a, model_b, layer_b, measure, value,
        expected_independent, n`` (+ ``ci_low, ci_high`` with ``bootstrap``), one row per pair and
        measure (measures in :data:`PAIR_MEASURES`; ``error_overlap_conditional`` twice, one row per
        direction, ``P(model_b wrong | model_a wrong)``). See the module docstring for the
        definitions and the independence null.

    Raises:
        ValueError: fewer than two keys (unless ``pairs`` is given), lengths that differ from
            ``y_true``, a proba of the wrong shape, a pair naming an unknown key, or
            ``bootstrap < 0``.
    """
    pairs = _check_pairs(pred, pairs, bootstrap)
    yc, code_of, C = _encode_predictions(pred, y_true)
    n = yc.size
    probs, C = _normalised_proba(proba, pred, n, C) if proba is not None else ({}, C)
    if groups is not None and len(as_labels(groups, "groups", "document ids")) != n:
        raise ValueError(f"groups has {len(groups)} entries but y_true has {n}")
    groups = resampled_groups(groups, n, " of the agreement's test rows", stacklevel=4) if bootstrap else groups
    W = bootstrap_weights(n, bootstrap, groups, seed).numpy() if bootstrap else None
    rows = []
    for ka, kb in pairs:
        a, b = code_of[ka], code_of[kb]
        pa, pb = probs.get(ka), probs.get(kb)
        names = _key(ka), _key(kb)
        reps = _bootstrap_pair(a, b, yc, C, pa, pb, W) if W is not None else None
        for measure, rev, value, expected in pair_measures(a, b, yc, C, pa, pb):
            rows.append(_pair_row(names, measure, rev, value, expected, n, reps))
    cols = ["model_a", "layer_a", "model_b", "layer_b", "measure", "value", "expected_independent", "n"]
    if W is not None:
        cols += ["ci_low", "ci_high"]
    frame = pd.DataFrame(rows, columns=cols)
    for c in ("layer_a", "layer_b", "n"):
        frame[c] = frame[c].astype("int64")
    return frame


def fleiss_rows(pred_codes: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[float, float]:
    """Fleiss' kappa of ``[k, n]`` predictions and its value under the independence null.

    Returns ``(kappa, expected_independent)``; the null's ``P_bar`` is the mean over model pairs
    of :func:`expected_agreement`, ``P_e`` the observed pooled class shares (plug-in).
    """
    k = pred_codes.shape[0]
    kappa = fleiss_kappa(category_counts(pred_codes, n_classes))
    pairs = list(itertools.combinations(range(k), 2))
    p_bar = float(np.mean([expected_agreement(pred_codes[i], pred_codes[j], y, n_classes) for i, j in pairs]))
    share = np.bincount(pred_codes.ravel(), minlength=n_classes) / pred_codes.size
    p_e = float(np.dot(share, share))
    return kappa, (p_bar - p_e) / (1.0 - p_e)
