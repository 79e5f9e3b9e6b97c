"""Linear probes: one logistic regression per model and layer on pooled representations.

A probe is ``StandardScaler`` (fit on the training rows) followed by a multinomial
``LogisticRegression`` (lbfgs, L2 penalty ``C``, at most ``max_iter`` iterations), as in the usual
probing set-up (Alain and Bengio 2016; Hewitt and Liang 2019 for the caveats). Representations are
upcast to float64 first. BLAS is held to one thread per fit (many small fits run faster that way
on shared machines); ``n_jobs`` fits layers in parallel threads.

The best layer of each model is chosen without looking at the test rows: with
``select='validation'`` (the default) the training rows are split again by document
(:func:`split_by_document`, 25 % held out), every layer's probe is fit on the inner training part
and scored on the held-out part, and the layer with the highest held-out accuracy wins (ties: the
lower layer). ``select='test'`` picks by test accuracy instead (optimistic; for comparison only).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from ..measures._validate import as_labels, as_numbers, as_tensor, describe
from .split import split_by_document

SELECT = ("validation", "test")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927), without continuity correction;
    95 % by default (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).

    Raises:
        ValueError: ``successes`` or ``n`` not a whole number, ``n < 1`` or ``successes`` outside ``[0, n]``.
    """
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a whole number (a count); got {describe(value)}")
    if n < 1:
        raise ValueError(f"n={n} must be >= 1 for a confidence interval")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}]")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class ProbeResult:
    """Probes of several models on one train/test split.

    Attributes:
        classes: the label names, in class-code order (code c <-> ``classes[c]``).
        train_idx, test_idx: row positions (int64) used for training and testing.
        y_test: true class codes of the test rows, int64 ``[n_test]``.
        layers: ``{model: [layer, ...]}`` probed.
        predictions: ``{(model, layer): int64 [n_test]}`` predicted class codes.
        proba: ``{(model, layer): float64 [n_test, C]}`` predicted class distributions.
        best_layers: ``{model: layer}`` chosen as the module docstring says.
        frame: one row per model and layer: ``model, layer, measure ('probe_accuracy'), value,
            ci_low, ci_high`` (95 % Wilson interval over test rows), ``n`` (test rows), ``n_train``,
            ``d``, ``n_classes``, ``chance`` (accuracy of always predicting the most frequent
            training label), ``val_accuracy`` (held-out accuracy used for selection; NaN with
            ``select='test'``), ``best`` (bool), ``converged`` (lbfgs stopped before
            ``max_iter``), ``n_iter``.
        select: how ``best_layers`` were chosen.
    """

    classes: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    y_test: np.ndarray
    layers: dict
    predictions: dict
    proba: dict
    best_layers: dict
    frame: pd.DataFrame
    select: str = "validation"
    settings: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """Model names in the order given."""
        return list(self.layers)

    def accuracy(self, model: str, layer: int) -> float:
        """Test accuracy of one probe."""
        return float(np.mean(self.predictions[(model, layer)] == self.y_test))


def _check_stacks(stacks: Mapping, n: int | None = None) -> dict[str, torch.Tensor]:
    if not isinstance(stacks, Mapping) or not stacks:
        raise ValueError("stacks must be a non-empty {model name: [L+1, n, d] tensor} mapping; "
                         f"got {describe(stacks)}")
    out = {}
    for name, S in stacks.items():
        S = as_tensor(S, f"stacks[{name!r}]", "[L+1, n, d]")
        if S.ndim == 2:
            S = S.unsqueeze(0)
        if S.ndim != 3 or min(S.shape) == 0:
            raise ValueError(f"stacks[{name!r}] must be [L+1, n, d] with no empty axis; got {tuple(S.shape)}")
        if n is not None and S.shape[1] != n:
            raise ValueError(f"stacks[{name!r}] has n={S.shape[1]} rows but there are {n} labels")
        out[str(name)] = S
    return out


def _resolve_layers(layers, n_layers: int, name: str) -> list[int]:
    if isinstance(layers, str):
        if layers == "all":
            return list(range(n_layers))
        if layers == "last":
            return [n_layers - 1]
        raise ValueError(f"layers={layers!r} must be 'all', 'last' or a list of layer indices")
    if isinstance(layers, Mapping):
        if name not in layers:
            raise ValueError(f"layers has no entry for model {name!r}")
        return _resolve_layers(layers[name], n_layers, name)
    try:
        items = [int(x) for x in layers]
    except (TypeError, ValueError):
        raise ValueError(f"layers={layers!r} must be 'all', 'last' or a list of layer indices") from None
    if not items:
        raise ValueError("layers is an empty list; give at least one layer index")
    out = []
    for li in items:
        j = li + n_layers if li < 0 else li
        if not 0 <= j < n_layers:
            raise ValueError(
                f"layer {li} is out of range for model {name!r} with {n_layers} layers (0..{n_layers - 1}, "
                "or negative from the end)"
            )
        if j not in out:
            out.append(j)
    return out


def _check_indices(idx, n: int, name: str) -> np.ndarray:
    a = as_numbers(idx, name, "[m] (row positions)")
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of row positions; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer row positions; got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= n:
        raise ValueError(f"{name} has a row position outside [0, {n})")
    if np.unique(a).size != a.size:
        raise ValueError(f"{name} repeats a row position")
    return a.astype(np.int64)


def _fit_one(X: np.ndarray, y: np.ndarray, train: np.ndarray, evals: Sequence[np.ndarray], n_classes: int,
             C: float, max_iter: int, seed: int):
    """Fit scaler + logistic regression on ``train``; return (proba per eval set, n_iter)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scaler = StandardScaler().fit(X[train])
        clf = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4, random_state=seed)
        clf.fit(scaler.transform(X[train]), y[train])
        outs = []
        for ev in evals:
            P = np.zeros((ev.size, n_classes))
            P[:, clf.classes_] = clf.predict_proba(scaler.transform(X[ev]))
            outs.append(P)
    return outs, int(np.max(clf.n_iter_))


@dataclass(frozen=True)
class _ProbeTask:
    """What every probe of one :func:`fit_probes` call shares: class codes, row splits and settings.

    ``inner`` is ``(inner_train, inner_validation)`` for ``select='validation'``, else None.
    """

    y: np.ndarray
    train: np.ndarray
    test: np.ndarray
    inner: tuple[np.ndarray, np.ndarray] | None
    n_classes: int
    C: float
    max_iter: int
    seed: int


def _class_codes(labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Encode n labels as ``(classes in numpy.unique order, int64 codes [n])``.

    Raises ValueError unless ``labels`` is a non-empty 1-D sequence.
    """
    lab = as_labels(labels, "labels")
    classes, y = np.unique(lab.astype(str) if lab.dtype.kind not in "iu" else lab, return_inverse=True)
    return classes, y.astype(np.int64)


def _check_fit_settings(y_train: np.ndarray, C: float, max_iter: int) -> None:
    """Raise a ValueError for training codes with fewer than two classes, a bad ``max_iter`` or ``C``."""
    if np.unique(y_train).size < 2:
        raise ValueError(
            f"the training rows hold {np.unique(y_train).size} distinct label(s); a probe needs at least two"
        )
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r} must be a positive integer")
    if not C > 0:
        raise ValueError(f"C={C!r} must be positive")


def _inner_split(
    y: np.ndarray, train: np.ndarray, groups: Sequence | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the training rows by document (25 % held out, stratified by ``y``) for layer selection.

    ``groups``: n document ids, or None to split by row. Returns ``(inner_train, inner_validation)``.
    """
    if groups is not None:
        g = as_labels(groups, "groups", "document ids")
        if g.size != y.size:
            raise ValueError(f"groups has {g.size} entries but there are {y.size} labels")
        try:
            a, b = split_by_document(g[train], 0.25, seed, labels=y[train])
        except ValueError as err:
            raise ValueError(
                f"select='validation' needs at least two training documents to hold some out ({err}); "
                "use select='test' for tiny corpora"
            ) from None
    else:
        a, b = split_by_document(np.arange(train.size), 0.25, seed, labels=y[train])
    inner_tr, inner_val = train[a], train[b]
    if np.unique(y[inner_tr]).size < 2:
        raise ValueError("the inner training part holds a single label; use select='test' or more data")
    return inner_tr, inner_val


def _probe_layer(S: dict, name: str, li: int, task: _ProbeTask) -> tuple:
    """Fit the probe of layer ``li`` of model ``name`` in stacks ``S``.

    Returns ``(name, layer, test distributions [n_test, C], n_iter, validation accuracy or NaN)``.
    """
    X = S[name][li].detach().to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(X)):
        raise ValueError(f"stacks[{name!r}] layer {li} holds non-finite values (NaN or inf)")
    K, C, max_iter, seed = task.n_classes, task.C, task.max_iter, task.seed
    (P_test,), it = _fit_one(X, task.y, task.train, [task.test], K, C, max_iter, seed)
    val = float("nan")
    if task.inner is not None:
        inner_tr, inner_val = task.inner
        (P_val,), _ = _fit_one(X, task.y, inner_tr, [inner_val], K, C, max_iter, seed)
        val = float(np.mean(P_val.argmax(axis=1) == task.y[inner_val]))
    return name, li, P_test, it, val


def _fit_layers(S: dict, per_model: dict, task: _ProbeTask, n_jobs: int) -> list[tuple]:
    """Fit the probes of ``per_model = {model: [layer, ...]}`` in ``n_jobs`` threads.

    Returns one :func:`_probe_layer` tuple per probe, models and layers in the order given.
    """
    tasks = [(name, li) for name, ls in per_model.items() for li in ls]
    if n_jobs and n_jobs != 1:
        from joblib import Parallel, delayed

        jobs = (delayed(_probe_layer)(S, nm, li, task) for nm, li in tasks)
        return Parallel(n_jobs=n_jobs, prefer="threads")(jobs)
    return [_probe_layer(S, nm, li, task) for nm, li in tasks]


def _accuracy_frame(S: dict, results: list[tuple], task: _ProbeTask) -> tuple[dict, dict, pd.DataFrame]:
    """Turn :func:`_fit_layers` tuples into the ``(predictions, proba, frame)`` of a :class:`ProbeResult`.

    The frame's ``best`` column is all False; :func:`_mark_best_layers` sets it.
    """
    y, train, test = task.y, task.train, task.test
    majority = int(np.argmax(np.bincount(y[train], minlength=task.n_classes)))
    chance = float(np.mean(y[test] == majority))
    predictions, proba, rows = {}, {}, []
    y_test = y[test]
    for name, li, P, it, val in results:
        pred = P.argmax(axis=1).astype(np.int64)
        predictions[(name, li)] = pred
        proba[(name, li)] = P
        correct = int(np.sum(pred == y_test))
        lo, hi = wilson_interval(correct, test.size)
        rows.append({
            "model": name, "layer": li, "measure": "probe_accuracy", "value": correct / test.size,
            "ci_low": lo, "ci_high": hi, "n": int(test.size), "n_train": int(train.size),
            "d": int(S[name].shape[2]), "n_classes": task.n_classes, "chance": chance, "val_accuracy": val,
            "best": False, "converged": it < task.max_iter, "n_iter": it,
        })
    return predictions, proba, pd.DataFrame(rows)


def _mark_best_layers(frame: pd.DataFrame, per_model: dict, select: str) -> dict:
    """Set ``best`` in the probe ``frame`` on each model's best layer, chosen by ``select``.

    Returns ``{model: best layer}``.
    """
    best = {}
    for name in per_model:
        sub = frame[frame.model == name].sort_values("layer", kind="stable")
        score = sub["val_accuracy"] if select == "validation" else sub["value"]
        best[name] = int(sub["layer"].to_numpy()[int(np.argmax(score.to_numpy()))])
        frame.loc[(frame.model == name) & (frame.layer == best[name]), "best"] = True
    return best


def fit_probes(
    stacks: Mapping[str, torch.Tensor],
    labels: Sequence,
    train_idx,
    test_idx,
    layers="all",
    seed: int = 0,
    *,
    select: str = "validation",
    groups: Sequence | None = None,
    C: float = 1.0,
    max_iter: int = 200,
    n_jobs: int = 1,
) -> ProbeResult:
    """Fit one linear probe per model per layer on the training rows; predict the test rows.

    Args:
        stacks: ``{model: tensor [L+1, n, d]}`` pooled representations (any float dtype, CPU or
            GPU; copied to float64 numpy one layer at a time).
        labels: n labels (strings or ints); class codes follow ``numpy.unique`` order.
        train_idx, test_idx: disjoint int row positions (e.g. from :func:`split_by_document`).
        layers: ``'all'`` (default), ``'last'``, a list of indices (negative from the end) used for
            every model, or ``{model: list}``.
        seed: seed of the probes and of the inner validation split.
        select: ``'validation'`` (default) or ``'test'``: how the best layer is chosen (module doc).
        groups: n document ids for the inner validation split (default: split by row).
        C: inverse L2 strength of the logistic regression.
        max_iter: lbfgs iteration cap (probes that hit it are marked ``converged = False``).
        n_jobs: layers fitted in parallel threads.

    Returns:
        :class:`ProbeResult`.

    Raises:
        ValueError: an argument of the wrong kind, naming it (a stack that is not a tensor or array of
            numbers, labels or groups that are not one string or number per row, indices that are not
            integers), empty or ill-shaped stacks, stacks whose n differs from ``len(labels)``,
            overlapping or out-of-range indices, fewer than two classes among the training labels,
            non-finite representations, unknown ``select``, or a bad layer index.
    """
    if select not in SELECT:
        raise ValueError(f"select={select!r} is not one of {', '.join(SELECT)}")
    classes, y = _class_codes(labels)
    n = y.size
    S = _check_stacks(stacks, n)
    train = _check_indices(train_idx, n, "train_idx")
    test = _check_indices(test_idx, n, "test_idx")
    if np.intersect1d(train, test).size:
        raise ValueError("train_idx and test_idx share rows; a probe must not be tested on its training rows")
    _check_fit_settings(y[train], C, max_iter)
    inner = _inner_split(y, train, groups, seed) if select == "validation" else None
    task = _ProbeTask(y=y, train=train, test=test, inner=inner, n_classes=len(classes), C=C, max_iter=max_iter,
                      seed=seed)
    per_model = {name: _resolve_layers(layers, St.shape[0], name) for name, St in S.items()}
    results = _fit_layers(S, per_model, task, n_jobs)
    predictions, proba, frame = _accuracy_frame(S, results, task)
    best = _mark_best_layers(frame, per_model, select)
    return ProbeResult(
        classes=classes, train_idx=train, test_idx=test, y_test=y[test], layers=per_model,
        predictions=predictions, proba=proba, best_layers=best, frame=frame, select=select,
        settings={"C": C, "max_iter": max_iter, "seed": seed, "select": select, "scaler": "standard",
                  "classifier": "LogisticRegression(lbfgs, multinomial, l2)"},
    )
