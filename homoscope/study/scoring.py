"""Stage: score model pairs with every measure at all layer pairs, into the tidy frame.

Where the rows fit under ``pairwise_rows``, every measure and its controls run in memory on all
rows. Above it:

- the exact linear measures (``linear_cka``, ``debiased_cka``, the CCA family, ``procrustes``) stream
  both models' shards through :class:`~homoscope.measures.streaming.CrossMoments`, layer pairs in
  blocks whose sums fit in ``memory_mb``: memory does not grow with n, and the values equal the
  in-memory path on all rows;
- the measures that need ``n x n`` matrices (``rbf_cka``, ``mutual_knn``, ``cknna``, ``rsa``,
  ``minibatch_cka``) and the Monte-Carlo permutation nulls and bootstraps run on one seeded subsample
  of ``pairwise_rows`` rows, the same rows for every model; the frame's ``n`` (and ``control_n``) say
  how many rows each value (and its controls) used. The CCA family's drawn nulls need ``pairwise_rows``
  above the two widths and are skipped with a warning otherwise;
- the bootstrap of the streamed measures is exact on all rows: it resamples whole groups (documents,
  bundled into at most ``bootstrap_groups`` runs of consecutive documents; runs of consecutive rows
  without documents), and each replicate is the measure on the resampled rows, formed by merging the
  groups' streamed sums with their multiplicities (:class:`~homoscope.measures.grouped.GroupedMoments`).

The permutation null of ``linear_cka`` and ``debiased_cka`` is never drawn: its mean, standard deviation,
skewness and Pearson type III p-value come in closed form from per-model moment sums streamed over all
rows (:mod:`homoscope.measures.nulls`; Josse, Pages & Husson 2008), at any n.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch

from .._memory import return_freed_memory
from .._spelling import typed
from ..extract.words import sample_rows
from ..measures.controls import resampled_groups
from ..measures.controls import percentile_interval
from .scorecache import ScoreCache, groups_digest, warning_category
from .shards import InMemoryStack, _Rows

# the subsample of the n x n measures and the Monte-Carlo controls is drawn with seed + this offset
SUBSAMPLE_SEED_OFFSET = 104_729
CCA_FAMILY = ("cca_rho", "cca_r2", "svcca", "pwcca")
# measures whose permutation null is in closed form (homoscope.measures.nulls)
ANALYTIC_NULLS = ("linear_cka", "debiased_cka")
ANALYTIC_MIN_N = 6  # the third permutation moment needs 6 rows; below, the null is drawn


def model_pairs(names: list[str], how: str) -> list[tuple[str, str]]:
    """Ordered model pairs to score: ``all`` (a before b) or ``first-vs-rest``."""
    if how == "first-vs-rest":
        return [(names[0], b) for b in names[1:]]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def score_pairs(
    stacks: dict,
    pairs: list[tuple[str, str]],
    measures: list[str],
    *,
    unit: str = "sentence",
    permutations: int = 0,
    bootstrap: int = 0,
    groups=None,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
    controls: dict | None = None,
    memory_mb: int = 512,
    pairwise_rows: int = 1024,
    bootstrap_groups: int = 32,
    store=None,
    log=None,
) -> pd.DataFrame:
    """Score every pair with every measure at all layer pairs; return the tidy frame of DESIGN.md.

    Args:
        stacks: ``{model name: [L, n, d]}``, tensors or :class:`~.shards.ShardedStack` s (same n).
        pairs: model pairs (see :func:`model_pairs`); asymmetric measures are scored both ways.
        measures: measure names.
        permutations, bootstrap: Monte-Carlo draws of the permutation null (``null_mean``,
            ``null_std``, ``p_value``) and the bootstrap (95 % ``ci_low``, ``ci_high``, resampling
            whole ``groups`` when given: one id per row); 0 = off.
        controls: random-init stacks keyed by the same model names: the frame's ``random_init`` is
            the measure between the controls of model_a and model_b at the same layers.
        memory_mb: memory budget of the streamed sums (MiB).
        pairwise_rows: row cap of the ``n x n`` measures and the Monte-Carlo controls (see module doc).
        bootstrap_groups: above ``pairwise_rows``, the most groups the exact bootstrap resamples.
        store: a :class:`~homoscope.extract.RepresentationStore` where each pair's scores are kept as soon as
            they are computed and read back by a rerun with the same stacks and options
            (:mod:`~homoscope.study.scorecache`; stacks held in memory are never kept); None: not kept.
        log: where to say how many pairs were read back from ``store`` (a callable taking one line).

    Raises:
        ValueError: stacks with different n, and the measures' errors (naming the two models).
        StudyWriteError: a pair's scores cannot be written to ``store`` (pairs kept before are reused).
    """
    src = {k: _source(v) for k, v in stacks.items()}
    csrc = {k: _source(v) for k, v in (controls or {}).items()}
    setup = PairScoring.build(_common_n(src), pairs, measures, unit=unit, permutations=permutations,
                              bootstrap=bootstrap, groups=groups, seed=seed, device=device, progress=progress,
                              memory_mb=memory_mb, pairwise_rows=pairwise_rows, bootstrap_groups=bootstrap_groups,
                              store=store)
    frames = _score_jobs(setup, src, csrc if controls is not None else None, progress, log)
    return setup.frame(frames)


@dataclasses.dataclass
class PairScoring:
    """What scoring every model pair shares, fixed before the first pair: the plan (subsample, bootstrap,
    nulls), the ordered pairs with their measures (``jobs``: ``{(a, b): measures}``; an asymmetric measure
    both ways), the store's score cache (None: not kept) and the unit."""

    plan: "_Plan"
    jobs: dict
    cache: ScoreCache | None
    unit: str

    @classmethod
    def build(cls, n: int, pairs, measures, *, unit, permutations, bootstrap, groups, seed, device, progress,
              memory_mb, pairwise_rows, bootstrap_groups, store) -> "PairScoring":
        """The scoring of ``pairs`` over stacks of ``n`` rows; the arguments are :func:`score_pairs`'s."""
        from ..measures import MIN_BOOTSTRAP_GROUPS, get_measure

        if bootstrap and (type(bootstrap_groups) is not int or bootstrap_groups < MIN_BOOTSTRAP_GROUPS):
            raise ValueError(f"bootstrap_groups must be an integer >= {MIN_BOOTSTRAP_GROUPS}; got "
                             f"bootstrap_groups={bootstrap_groups!r}")
        groups = list(groups) if groups is not None and not hasattr(groups, "__len__") else groups  # read once
        groups = resampled_groups(groups, n) if bootstrap else groups
        sub = None if n <= pairwise_rows else sample_rows(n, pairwise_rows, seed + SUBSAMPLE_SEED_OFFSET)
        plan = _Plan(permutations, bootstrap, groups, seed, device, memory_mb, sub, progress, bootstrap_groups)
        jobs: dict[tuple[str, str], list[str]] = {}
        for a, b in pairs:
            for m in measures:
                jobs.setdefault((a, b), []).append(m)
                if not get_measure(m).symmetric:
                    jobs.setdefault((b, a), []).append(m)
        cache = None if store is None else ScoreCache(store, {
            "unit": unit, "permutations": permutations, "bootstrap": bootstrap, "groups": groups_digest(groups),
            "seed": seed, "device": str(device), "memory_mb": memory_mb, "pairwise_rows": pairwise_rows,
            "bootstrap_groups": bootstrap_groups})
        return cls(plan, jobs, cache, unit)

    def key(self, a: str, b: str, src: dict, csrc: dict | None) -> str | None:
        """The score cache's key of the ordered pair (a, b) over these stacks (None: not kept)."""
        if self.cache is None:
            return None
        return self.cache.key(a, b, (src[a], src[b], (csrc or {}).get(a), (csrc or {}).get(b)), self.jobs[a, b])

    def frame(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        """The study's frame from the pairs' frames: integer columns, ``control_n`` filled, the interval check."""
        frame = pd.concat(frames, ignore_index=True)
        if "control_n" in frame:  # only where the controls used fewer rows than the value
            frame["control_n"] = frame["control_n"].fillna(frame["n"])
        for c in ("layer_a", "layer_b", "n", "d_a", "d_b") + (("control_n",) if "control_n" in frame else ()):
            frame[c] = frame[c].astype("int64")
        _flag_outside_interval(frame)
        return frame


def _score_jobs(setup: PairScoring, src: dict, csrc: dict | None, progress: bool, log) -> list[pd.DataFrame]:
    """The frames of every ordered pair of ``setup.jobs``: read back from the cache where kept, else scored and
    kept; each pair's warnings are raised again either way."""
    from tqdm.auto import tqdm

    frames, reused = [], 0
    jobs = setup.jobs
    for (a, b), names in tqdm(list(jobs.items()), desc="scoring", unit="pair", disable=not progress, leave=False):
        key = setup.key(a, b, src, csrc)
        kept = setup.cache.get(key) if key is not None else None
        reused += kept is not None
        if kept is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                frame = score_pair(setup.plan, a, b, names, src, csrc, setup.unit)
            kept = (frame, [(w.category.__name__, str(w.message)) for w in caught])
            _keep(setup.cache, key, *kept)
        raise_again(kept[1])
        frames.append(kept[0])
    log_read_back(log, reused, len(jobs))
    return frames


def log_read_back(log, reused: int, total: int) -> None:
    """Say how many ordered pairs' scores came back from the store (nothing when none did)."""
    if reused and log is not None:
        log(f"scores of {reused} of {total} model pairs read back from the store")


def raise_again(caught: list[tuple[str, str]]) -> None:
    """Warn again with the ``(category name, message)`` pairs a pair's scoring raised (computed or read back)."""
    for category, message in caught:
        warnings.warn(message, warning_category(category), stacklevel=3)


def score_pair(plan: "_Plan", a: str, b: str, names: list[str], src: dict, csrc: dict | None, unit: str,
               streamed: tuple | None = None) -> pd.DataFrame:
    """The tidy rows of ``names`` between models a (X) and b (Y), with their controls.

    ``streamed``: the streamed sums' results of the pair and of its controls (two :class:`Streamed`, from
    :meth:`_Plan.stream_block` over every block of :meth:`_Plan.stream_blocks`, joined by
    :meth:`Streamed.joined`) where they were computed elsewhere; None: streamed here."""
    X, Y = src[a], src[b]
    ours, theirs = streamed or (None, None)
    try:
        scored = plan.score(names, X, Y, keys=(a, b), streamed=ours)
        random = (plan.score(names, csrc[a], csrc[b], with_controls=False, streamed=theirs,
                             keys=(f"{a} (random-init)", f"{b} (random-init)")) if csrc is not None else None)
    except ValueError as err:  # name the models: the measure only knows X and Y
        raise ValueError(f"{', '.join(names)} between {a!r} (X) and {b!r} (Y): {err}") from None
    return pd.concat([_frame(a, b, m, scored[m], random[m] if random else None, X, Y, unit) for m in names],
                     ignore_index=True)


def _keep(cache: ScoreCache | None, key: str | None, frame: pd.DataFrame, caught: list) -> None:
    """Keep a pair's scores in the store, with the warnings raised while computing them."""
    if cache is None or key is None:
        return
    try:
        cache.put(key, frame, caught)
    except OSError as err:
        from .options import StudyWriteError, _os_reason

        raise StudyWriteError(
            f"could not write the scores of a model pair to the store {str(cache.store.root)!r}: {_os_reason(err)}; "
            "free space or fix permissions there, or pass another --store; the representations and the pairs "
            "scored before are kept and reused by the next run") from err


def _flag_outside_interval(frame: pd.DataFrame) -> None:
    """Warn, per measure, where scores lie outside their own bootstrap percentile interval (a resampling
    distribution that is skewed or biased against the estimate; the interval is then hard to read)."""
    if "ci_low" not in frame:
        return
    outside = (frame["value"] < frame["ci_low"]) | (frame["value"] > frame["ci_high"])
    counts = frame[outside].groupby("measure", sort=False).size()
    if counts.empty:
        return
    total = frame[frame["ci_low"].notna()].groupby("measure", sort=False).size()
    which = "; ".join(f"{m}: {k} of {total[m]}" for m, k in counts.items())
    warnings.warn(f"bootstrap: scores outside their own 95% percentile interval ({which} layer pairs); the "
                  "resampled values there are skewed or biased against the estimate, so read those intervals "
                  "with care (more documents or rows narrow the bias)", RuntimeWarning, stacklevel=3)


def _source(stack) -> _Rows:
    return stack if isinstance(stack, _Rows) else InMemoryStack(torch.as_tensor(stack))


def _common_n(src: dict) -> int:
    ns = {name: s.n for name, s in src.items()}
    if len(set(ns.values())) > 1:
        raise ValueError(f"the models' stacks have different numbers of rows: {ns}")
    return next(iter(ns.values()))


class _Plan:
    """How one study scores a model pair: in memory, or streamed plus a subsample (see module doc)."""

    def __init__(self, permutations, bootstrap, groups, seed, device, memory_mb, sub, progress=False,
                 bootstrap_groups=32):
        self.permutations, self.bootstrap, self.seed = permutations, bootstrap, seed
        self.groups, self.device, self.memory_mb, self.sub = groups, device, memory_mb, sub
        self.progress, self.bootstrap_groups = progress, bootstrap_groups
        self._moments: dict = {}
        self._boot = None

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.device is None else t.to(self.device)

    def _controls(self, names: list[str], n: int, with_controls: bool) -> tuple[list, int, bool]:
        """``(measures with a closed-form null, drawn permutations, whether any control runs)`` for n rows."""
        closed = with_controls and self.permutations and n >= ANALYTIC_MIN_N
        analytic = [m for m in names if m in ANALYTIC_NULLS] if closed else []
        drawn = self.permutations if any(m not in analytic for m in names) else 0
        return analytic, drawn, with_controls and bool(drawn or self.bootstrap)

    def _streaming(self, names: list[str], n: int, with_controls: bool) -> tuple[list, object]:
        """``(the measures streamed over all rows, the bootstrap plan of their sums or None)``."""
        from ..measures import STREAMING_MEASURES

        if self.sub is None:
            return [], None
        streamed = [m for m in names if m in STREAMING_MEASURES]
        controlled = self._controls(names, n, with_controls)[2]
        return streamed, (self._boot_plan(n) if controlled and self.bootstrap and streamed else None)

    def stream_blocks(self, names: list[str], X: _Rows, Y: _Rows, with_controls: bool = True) -> int:
        """How many blocks of layer pairs the streamed sums of (X, Y) take (:func:`layer_blocks`); 0 where the
        pair is scored in memory or streams nothing."""
        streamed, boot = self._streaming(names, X.n, with_controls)
        return len(_stream_blocks(X, Y, self.memory_mb, boot)) if streamed else 0

    def stream_block(self, names: list[str], X: _Rows, Y: _Rows, block: int, with_controls: bool = True,
                     label: str = "") -> "Streamed":
        """The streamed measures of (X, Y) at one block of layer pairs (elsewhere NaN), as :meth:`score` computes
        them (``label``: the pair's name in warnings); :meth:`Streamed.joined` puts the blocks together."""
        streamed, boot = self._streaming(names, X.n, with_controls)
        return stream_measures(streamed, X, Y, memory_mb=self.memory_mb, device=self.device, boot=boot,
                               blocks=[block], label=label)

    def join_blocks(self, names: list[str], X: _Rows, Y: _Rows, parts: list, with_controls: bool = True) -> "Streamed":
        """The pair's streamed measures from one :meth:`stream_block` result per block, in block order."""
        streamed, boot = self._streaming(names, X.n, with_controls)
        return Streamed.joined(parts, X, Y, self.memory_mb, boot)

    def score(self, names: list[str], X: _Rows, Y: _Rows, with_controls: bool = True, keys=None,
              streamed: "Streamed | None" = None) -> dict:
        """``{measure: (value [La, Lb], n, controls or None, control n)}`` for one ordered pair.

        ``keys`` name the two stacks (moment sums of the closed-form nulls are kept per name). ``streamed``:
        the streamed measures' results where computed elsewhere (:meth:`stream_block`), else None.
        """
        analytic, drawn, controlled = self._controls(names, X.n, with_controls)
        if self.sub is None:  # every row fits: all in memory, as one call shares the work across measures
            Xm, Ym = self._to(X.load()), self._to(Y.load())
            out = {m: (*v, X.n) for m, v in self._in_memory(names, Xm, Ym, self.groups, controlled, drawn).items()}
        else:
            out = self._streamed(names, X, Y, controlled, drawn, analytic, keys, streamed, with_controls)
        for m in analytic:
            value, n, res, k = out[m]
            null = self._analytic(m, keys, X, Y, value)
            out[m] = (value, n, _Controls(null, res.ci if res is not None else None), k)
        return out

    def _streamed(self, names, X: _Rows, Y: _Rows, controlled: bool, drawn: int, analytic: list, keys=None,
                  got: "Streamed | None" = None, with_controls: bool = True) -> dict:
        """Exact linear measures and their bootstrap streamed over all rows (``got``: computed elsewhere); the
        rest and the drawn nulls on the subsample (``analytic``: measures whose null is in closed form)."""
        streamed, boot = self._streaming(names, X.n, with_controls)
        if got is None:
            got = stream_measures(streamed, X, Y, memory_mb=self.memory_mb, device=self.device,
                                  progress=self.progress, boot=boot, label=" vs ".join(keys) if keys else "")
        cis = {m: percentile_interval(r) for m, r in (got.replicates or {}).items()}
        rest = [m for m in names if m not in streamed]
        k = len(self.sub)
        nulls = [m for m in streamed if controlled and drawn and m not in analytic and _fits(m, k, X.width, Y.width)]
        small = {}
        if rest or nulls:
            Xs, Ys = self._to(X.rows(self.sub)), self._to(Y.rows(self.sub))
            groups = None if self.groups is None else [self.groups[i] for i in self.sub]
            groups = resampled_groups(groups, k, f" of the {k}-row subsample") if controlled else groups
            small = self._in_memory(rest, Xs, Ys, groups, controlled, drawn) if rest else {}
            small.update(self._in_memory(nulls, Xs, Ys, None, bool(nulls), drawn, bootstrap=0) if nulls else {})
        out = {}
        for m in streamed:
            null = small[m][2].null if m in small else None
            ci = cis.get(m)
            ctl = _Controls(null, ci) if null is not None or ci is not None else None
            out[m] = (got.values[m], X.n, ctl, k if null is not None else X.n)
        out.update({m: (small[m][0], k, small[m][2], k) for m in rest})
        return out

    def _boot_plan(self, n: int):
        """``(unit of each row [n], counts [bootstrap, G])`` of the streamed bootstrap, drawn once per study."""
        if self._boot is None:
            from ..measures import MIN_BOOTSTRAP_GROUPS, bootstrap_weights

            units = bootstrap_units(self.groups, n, self.bootstrap_groups)
            if self.groups is not None and int(units.max()) + 1 < MIN_BOOTSTRAP_GROUPS:
                warnings.warn(f"bootstrap: the documents bundle into {int(units.max()) + 1} groups of rows (a few "
                              f"documents hold most rows), fewer than the {MIN_BOOTSTRAP_GROUPS} a group bootstrap "
                              "needs; runs of consecutive rows are resampled instead", RuntimeWarning, stacklevel=5)
                units = bootstrap_units(None, n, self.bootstrap_groups)
            self._boot = (units, bootstrap_weights(int(units.max()) + 1, self.bootstrap, seed=self.seed))
        return self._boot

    def _in_memory(self, names, X, Y, groups, controlled, drawn, bootstrap=None) -> dict:
        """``{measure: (value, n, Controlled or None)}`` on the rows given (``bootstrap``: replicates, default
        the study's)."""
        from ..measures import compute, with_controls

        boots = self.bootstrap if bootstrap is None else bootstrap
        if controlled:  # one call shares Gram matrices, null and bootstrap sums across the measures
            res = with_controls(names, X, Y, n_permutations=drawn or None,
                                n_boot=boots or None, groups=groups, seed=self.seed)
            return {m: (res[m].value, X.shape[1], res[m]) for m in names}
        return {m: (compute(m, X, Y), X.shape[1], None) for m in names}

    def _analytic(self, measure: str, keys, X: _Rows, Y: _Rows, observed: torch.Tensor):
        """The closed-form permutation null of ``measure`` at the observed values, on all rows."""
        from ..measures import debiased_cka_null, linear_cka_null

        mx = self._stack_moments(keys[0], X)
        my = self._stack_moments(keys[1], Y)
        fn = linear_cka_null if measure == "linear_cka" else debiased_cka_null
        return fn(mx, my, observed.double().cpu())

    def _stack_moments(self, key, stack: _Rows):
        """The null moments of ``stack``, kept per model name ``key``."""
        if key not in self._moments:
            self._moments[key] = stack_moments(stack, seed=self.seed, progress=self.progress, name=key)
        return self._moments[key]

    def seed_moments(self, moments: dict) -> None:
        """Take null moments computed elsewhere (``{model name: LayerMoments}``, as :func:`stack_moments` gives)."""
        self._moments.update(moments)


def _fits(measure: str, k: int, da: int, db: int) -> bool:
    """Whether the drawn null of a streamed measure can run on ``k`` subsample rows (the CCA family needs
    more rows than columns); warns, naming ``pairwise_rows``, where it cannot."""
    if measure not in CCA_FAMILY or measure == "svcca" or k > da + db:
        return True
    warnings.warn(f"{measure}: no permutation null: the drawn null runs on {typed('pairwise_rows', k)} rows, "
                  f"which must exceed the widths d_x + d_y = {da + db} for canonical correlations; raise "
                  f"{typed('pairwise_rows')} above that (memory grows with its square)", RuntimeWarning, stacklevel=3)
    return False


class _Controls(NamedTuple):
    """A score's controls where the null is in closed form: ``null`` (an AnalyticNull), ``ci`` (or None)."""

    null: object
    ci: object


def stack_moments(stack: _Rows, *, seed: int = 0, progress: bool = False, name: str = "X"):
    """The per-layer statistics of the closed-form permutation nulls (:class:`~homoscope.measures.LayerMoments`)
    of a stack ``[L, n, d]``, from two passes over its rows (one shard at a time)."""
    from tqdm.auto import tqdm

    from ..measures import MomentSums

    first = MomentSums()
    with tqdm(total=2 * stack.n, desc=f"null moments of {name}", unit="row", disable=not progress,
              leave=False) as bar:
        for chunk in stack.chunks():
            first.update(chunk)
            bar.update(chunk.shape[1])
        second = first.second_pass(seed=seed)
        start = 0
        for chunk in stack.chunks():
            second.update(chunk, start=start)
            start += chunk.shape[1]
            bar.update(chunk.shape[1])
    return second.compute()


class Streamed(NamedTuple):
    """What :func:`stream_measures` returns: ``values`` ``{measure: [La, Lb]}`` and, with a bootstrap plan,
    ``replicates`` ``{measure: [R, La, Lb]}`` (NaN where a replicate is degenerate; else None)."""

    values: dict
    replicates: dict | None

    @staticmethod
    def joined(parts: list["Streamed"], X: _Rows, Y: _Rows, memory_mb: int, boot) -> "Streamed":
        """The whole pair from ``parts[i]``, which holds block ``i`` of :func:`_stream_blocks` (one per block)."""
        blocks = _stream_blocks(X, Y, memory_mb, boot)
        if len(parts) != len(blocks):
            raise ValueError(f"{len(parts)} parts for {len(blocks)} blocks of layer pairs")
        first = parts[0]
        values = {m: v.clone() for m, v in first.values.items()}
        reps = None if first.replicates is None else {m: r.clone() for m, r in first.replicates.items()}
        for part, (xs, ys) in zip(parts[1:], blocks[1:]):
            for m in values:
                values[m][xs, ys] = part.values[m][xs, ys]
                if reps is not None:
                    reps[m][:, xs, ys] = part.replicates[m][:, xs, ys]
        return Streamed(values, reps)


def _stream_blocks(X: _Rows, Y: _Rows, memory_mb: int, boot) -> list[tuple[slice, slice]]:
    """The blocks of layer pairs :func:`stream_measures` takes (one set of sums per bootstrap group)."""
    G = 1 if boot is None else int(boot[1].shape[1])
    return layer_blocks(X.layers, Y.layers, X.width, Y.width, memory_mb, copies=G)


def stream_measures(names: list[str], X: _Rows, Y: _Rows, *, memory_mb: int = 512,
                    device: torch.device | None = None, progress: bool = False, boot=None,
                    label: str = "", blocks: list[int] | None = None) -> Streamed:
    """Exact linear measures of all layer pairs, and their group bootstrap, from sums streamed over both stacks.

    Layer pairs go in blocks whose sums (one set per bootstrap group) fit in half of ``memory_mb`` (see
    :func:`layer_blocks`); each block is one pass over the rows, one shard at a time.

    Args:
        names: measures of :data:`~homoscope.measures.streaming.STREAMING_MEASURES`.
        X, Y: stacks ``[La, n, da]``, ``[Lb, n, db]`` (:class:`~.shards.ShardedStack` or
            :class:`~.shards.InMemoryStack`) of the same rows.
        boot: ``(unit of each row [n] int64 in 0 .. G-1, counts [R, G])`` (see :func:`bootstrap_units`);
            each replicate is the measure on the rows of the drawn units, repeated by their counts.
        blocks: indices of the blocks of layer pairs to compute (None: all); the others are NaN.

    Returns a :class:`Streamed` (float64, CPU); the values equal the in-memory measures on all rows.

    Raises:
        ValueError: the measures' input rules (too few rows, a constant layer, n <= d for CCA).
    """
    from tqdm.auto import tqdm

    from ..measures import CrossMoments, GroupedMoments

    out = {m: torch.full((X.layers, Y.layers), float("nan"), dtype=torch.float64) for m in names}
    units, W = boot if boot is not None else (None, None)
    reps = {m: torch.full((W.shape[0], X.layers, Y.layers), float("nan"), dtype=torch.float64)
            for m in names} if boot else None
    if not names:
        return Streamed(out, reps)
    G = 1 if boot is None else int(W.shape[1])
    every = _stream_blocks(X, Y, memory_mb, boot)
    blocks = every if blocks is None else [every[i] for i in blocks]
    one = 8 * G * (X.width * Y.width + X.width**2 + Y.width**2) / 2**20  # MiB of one layer pair's sums
    if one > memory_mb / 2:
        warnings.warn(f"{label or 'streamed scoring'}: one layer pair of widths {X.width} x {Y.width} needs "
                      f"{one:,.0f} MiB of sums{f' for {G} bootstrap groups' if boot is not None else ''}, above half "
                      f"of {typed('memory_mb', memory_mb)}; it runs anyway: raise {typed('memory_mb')}"
                      + (f", or lower {typed('bootstrap_groups')}" if boot is not None else ""), RuntimeWarning,
                      stacklevel=2)
    # float32 products keep CKA and Procrustes within 1e-7; the CCA family's error grows with the
    # covariances' condition number (1e4 - 1e8 on hidden states), so it streams in float64
    cka_boot = boot is not None and "linear_cka" in names  # its bootstrap terms use the debiased sums
    opts = dict(debiased="debiased_cka" in names or cka_boot, precision="float64" if any(m in CCA_FAMILY for m in names) else "float32")
    move = (lambda t: t) if device is None else (lambda t: t.to(device))  # noqa: E731
    what = f"{label}: " if label else ""
    means = _column_means(X, Y) if boot is not None else None  # one pass, shared by every block
    with tqdm(total=X.n * len(blocks), desc=f"{what}streaming {len(blocks)} layer block(s)", unit="row",
              disable=not progress, leave=False) as bar:
        for xs, ys in blocks:
            acc = CrossMoments(**opts) if boot is None else GroupedMoments(G, means=(means[0][xs], means[1][ys]), **opts)
            start = 0
            for cx, cy in zip_rows(X.chunks(xs), Y.chunks(ys)):
                m = cx.shape[1]
                acc.update(move(cx), move(cy), *(() if boot is None else (units[start : start + m],)))
                start += m
                bar.update(m)
            whole = acc if boot is None else acc.merged()
            for m in names:
                out[m][xs, ys] = whole.compute(m).cpu()
            if boot is not None:
                bar.set_postfix_str(f"{W.shape[0]} bootstrap replicates", refresh=True)
                for m, r in acc.replicates(names, W, memory_mb=max(1, memory_mb // 8)).items():
                    reps[m][:, xs, ys] = r
            del acc, whole
            return_freed_memory()  # the next block's sums reuse the pages, not new ones
    return Streamed(out, reps)


def _column_means(X: _Rows, Y: _Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 column means ``([La, da], [Lb, db])`` of every layer of X and Y (one pass over each)."""
    out = []
    for S in (X, Y):
        total = None
        for chunk in S.chunks():
            part = chunk.sum(1, dtype=torch.float64)  # no float64 copy of the chunk
            total = part if total is None else total + part
        out.append(total / S.n)
    return out[0], out[1]


def bootstrap_units(groups, n: int, cap: int) -> torch.Tensor:
    """The resampling unit of each row for the streamed bootstrap: ``[n]`` int64 ids ``0 .. G-1``, ``2 <= G <= cap``.

    With ``groups`` (one id per row, e.g. document ids; equal ids as values, 1 == 1.0) of at least two ids:
    each group is a unit, numbered by first appearance; with more than ``cap`` groups, consecutive groups
    are bundled into at most ``cap`` units of about ``n / cap`` rows (a group is never split). Otherwise:
    ``min(cap, n)`` runs of consecutive rows.

    Raises:
        ValueError: ``cap`` below 2, or ``groups`` not one id per row or with a missing id.
    """
    if type(cap) is not int or cap < 2:
        raise ValueError(f"bootstrap_groups must be an integer >= 2; got bootstrap_groups={cap!r}")
    if groups is not None:
        from ..measures import group_codes

        codes = group_codes(groups, n)  # by first appearance, equal as values
        G = int(codes.max()) + 1 if n else 0
        if G >= 2:
            if G > cap:
                codes = _bundle(np.bincount(codes, minlength=G), n / cap, cap)[codes]
            return torch.from_numpy(codes)
    return torch.from_numpy(np.arange(n, dtype=np.int64) * min(cap, n) // n)


def _bundle(sizes: np.ndarray, target: float, cap: int) -> np.ndarray:
    """The bundle of each group (sizes in order): a bundle closes before a group that would take it past
    ``target`` rows; then the adjacent pair of bundles with the fewest rows merges until ``cap`` remain."""
    bounds, rows = [0], 0
    for i, size in enumerate(sizes):
        if rows and rows + size > target:
            bounds.append(i)
            rows = 0
        rows += size
    parts = [list(range(a, b)) for a, b in zip(bounds, bounds[1:] + [len(sizes)])]
    while len(parts) > cap:
        pair = [sizes[parts[k]].sum() + sizes[parts[k + 1]].sum() for k in range(len(parts) - 1)]
        k = int(np.argmin(pair))
        parts[k : k + 2] = [parts[k] + parts[k + 1]]
    out = np.empty(len(sizes), dtype=np.int64)
    for unit, members in enumerate(parts):
        out[members] = unit
    return out


def check_rows_above_widths(measures, n: int, widths: dict, what: str = "texts") -> None:
    """Refuse, before extraction, a measure that needs more rows than columns (n > d:
    :data:`~homoscope.measures.cca.ROWS_ABOVE_WIDTH`) where a model is at least ``n`` wide.

    ``widths``: ``{model name: hidden width}`` of the models known so far; ``what``: the rows in words
    (``texts``, ``words``, ``tokens``). The measure counts non-constant columns, at most the width, so
    this refuses only where the measure would, unless that many columns are constant.

    Raises:
        ValueError: naming the measures, the widest such model, n, and the options that change it.
    """
    from ..measures.cca import ROWS_ABOVE_WIDTH

    strict = [m for m in measures if m in ROWS_ABOVE_WIDTH]
    wide = {name: d for name, d in widths.items() if d >= n}
    if not strict or not wide:
        return
    name, d = max(wide.items(), key=lambda item: item[1])
    more = typed("sentences") + ("" if what == "texts" else f" (and {typed('max_rows')})")
    raise ValueError(f"{', '.join(strict)} need(s) more rows than columns (n > d), but the study has n={n:,} {what} "
                     f"and model {name!r} is {d:,} wide; give more {what} with {more}, use svcca, or leave "
                     f"{', '.join(strict)} out of {typed('measures')}")


def warn_layer_blocks(shapes: dict, pairs, memory_mb: int, copies: int) -> None:
    """Warn where the streamed sums of ``copies`` bootstrap groups fit so few layer pairs into ``memory_mb`` that a
    model pair takes more layer blocks (each a pass over all rows) than the larger model has layers; the warning
    names the ``memory_mb`` that would do with no more blocks than that, and ``bootstrap_groups``.

    ``shapes``: ``{model name: (layers, width)}`` of the models known so far; pairs of unknown models are skipped.
    """
    worst = None
    for a, b in pairs:
        if a in shapes and b in shapes:
            (La, da), (Lb, db) = shapes[a], shapes[b]
            k = len(layer_blocks(La, Lb, da, db, memory_mb, copies))
            if k > max(La, Lb) and (worst is None or k > worst[0]):
                worst = (k, a, b)
    if worst is None:
        return
    k, a, b = worst
    (La, da), (Lb, db) = shapes[a], shapes[b]
    enough = memory_mb
    while len(layer_blocks(La, Lb, da, db, enough, copies)) > max(La, Lb):
        enough *= 2
    warnings.warn(f"streamed scoring: at {typed('memory_mb', memory_mb)} the sums of {copies} bootstrap groups fit "
                  f"few layer pairs at a time, so {a!r} vs {b!r} takes {k} layer blocks, each a pass over all rows "
                  f"(slow); {typed('memory_mb', enough)} takes at most {max(La, Lb)}, or lower "
                  f"{typed('bootstrap_groups')}", RuntimeWarning, stacklevel=2)


def layer_blocks(La: int, Lb: int, da: int, db: int, memory_mb: int, copies: int = 1) -> list[tuple[slice, slice]]:
    """Blocks of layer pairs ``(X layers, Y layers)`` whose sums fit in half of ``memory_mb``.

    A block of ``bx`` X and ``by`` Y layers keeps ``copies (bx by da db + bx da^2 + by db^2)`` float64 values
    (cross sums and each layer's own; ``copies``: one set per bootstrap group); one layer pair at least.
    Each block forms its layers' own products again, so among the splits that fit, the one with the
    fewest products per row is taken (then the fewest blocks); layers are split into even parts.
    """
    budget = memory_mb * 2**20 // 2 // (8 * max(1, copies))
    best = None
    for nx in range(1, La + 1):
        for ny in range(1, Lb + 1):
            bx, by = -(-La // nx), -(-Lb // ny)
            if (bx, by) != (1, 1) and bx * by * da * db + bx * da * da + by * db * db > budget:
                continue
            key = (ny * La * da * da + nx * Lb * db * db, nx * ny)
            if best is None or key < best[0]:
                best = (key, nx, ny)
    _, nx, ny = best
    return [(slice(int(x[0]), int(x[-1]) + 1), slice(int(y[0]), int(y[-1]) + 1))
            for x in np.array_split(np.arange(La), nx) for y in np.array_split(np.arange(Lb), ny)]


def zip_rows(gx: Iterator[torch.Tensor], gy: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Chunks ``[L, m, d]`` of two row streams re-cut at common boundaries, so both hold the same rows.

    Raises:
        ValueError: the streams have different numbers of rows.
    """
    x = y = None
    while True:
        if x is None or x.shape[1] == 0:
            x = next(gx, None)
        if y is None or y.shape[1] == 0:
            y = next(gy, None)
        if x is None or y is None:
            if (x is None) != (y is None):
                raise ValueError("the two stacks have different numbers of rows")
            return
        m = min(x.shape[1], y.shape[1])
        if m:
            yield x[:, :m], y[:, :m]
        x, y = x[:, m:], y[:, m:]


def _frame(a, b, m, scored, random, X: _Rows, Y: _Rows, unit: str) -> pd.DataFrame:
    """The tidy rows of one measure between models a and b."""
    value, n, res, control_n = scored
    values = value.double().cpu().numpy()
    la, lb = values.shape
    ia, ib = np.meshgrid(np.arange(la), np.arange(lb), indexing="ij")
    cols = {"model_a": a, "layer_a": ia.ravel(), "model_b": b, "layer_b": ib.ravel(), "measure": m,
            "value": values.ravel(), "n": n, "d_a": X.width, "d_b": Y.width, "unit": unit}
    if res is not None and res.null is not None:
        cols["null_mean"] = _np(res.null.mean).ravel()
        cols["null_std"] = _np(res.null.std).ravel()
        cols["p_value"] = _np(res.null.p_value).ravel()
    if random is not None:
        cols["random_init"] = random[0].double().cpu().numpy().ravel()
    if res is not None and res.ci is not None:
        cols["ci_low"] = _np(res.ci.low).ravel()
        cols["ci_high"] = _np(res.ci.high).ravel()
    if res is not None and control_n != n:
        cols["control_n"] = control_n
    return pd.DataFrame(cols)


def _np(t) -> np.ndarray:
    return t.double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)
