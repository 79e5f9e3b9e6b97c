"""What the report says in words, computed from the results frame: controls, the homogenization index,
the seed ceiling, the depth profile, the findings and the comparison of one new model with references.

Nothing here recomputes a measure: every number is a value, an interval, a control or a p-value of the
results frame (and of the optional prediction-agreement frames), combined by the rules stated in
:data:`INDEX_DEFINITION`, :data:`CEILING_DEFINITION`, :data:`SEED_INDEX_DEFINITION`, :data:`NULL_RULE` and
:data:`MEAN_INTERVAL_RULE`, which the report prints.

Sentences are :class:`Text` objects: runs of fixed wording, data (model names, labels) and code
(measure names), so that each output format escapes data its own way.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._common import ALPHA, bh_adjust, column, finite, measures_of, model_order, num
from ._format import f3, int_txt, interval, p_is, plural, span
from ._measures import MeasureInfo
from .tables import pair_rows, summary_table

__all__ = [
    "Text", "T", "B", "C", "D", "join", "controls_table", "homogenization_index", "HomogenizationIndex", "depth_profile", "findings",
    "CompareView", "compare_view", "primary_measure", "model_kinds", "normalize_extra", "agreement_rows",
    "probe_best", "index_text", "index_details", "index_reading", "MeasureSummary", "PairBest", "measure_summary",
    "summary_text", "AGREEMENT_LABELS", "model_recipes", "seed_pair", "seed_ceilings", "pair_ceilings",
    "family_table", "seed_text", "seed_reading", "CEILING_COLUMNS", "FAMILY_COLUMNS", "SEED_FAMILY",
    "INDEX_DEFINITION", "CEILING_DEFINITION", "SEED_INDEX_DEFINITION", "NULL_RULE", "MEAN_INTERVAL_RULE",
    "VERDICT_ABOVE", "VERDICT_NS", "VERDICT_NONE",
]

VERDICT_ABOVE = "above its null"
VERDICT_NS = "not distinguishable from its null"
VERDICT_NONE = "no null computed"

#: How "not distinguishable from its null" is decided; printed in the report.
NULL_RULE = (
    f"A score is not distinguishable from its permutation null when its Benjamini-Hochberg adjusted p-value "
    f"(q, over all layer pairs of one model pair and measure) is at least {ALPHA:g}. Such a score is shown as "
    "n.s., never as similarity. p-values come from the permutation test (rows of one side shuffled). For "
    "linear and debiased CKA no permutation is drawn: the permutation distribution's mean, standard deviation "
    "and skewness are exact (closed form on all n rows; Josse, Pages & Husson 2008) and p is the upper tail of "
    "the Pearson type III distribution with those moments; debiased CKA's null standard deviation is "
    "sqrt(2 / (n (n - 3))) whatever the data, so it repeats in every cell. For the other measures P "
    "permutations are drawn and the smallest possible p is 1 / (P + 1); where the frame has a control_n "
    "column, the drawn null used that many rows (a seeded subsample, the same for every model). Intervals are "
    "bootstrap 95% percentile intervals over resamples of whole documents (runs of rows where the corpus has "
    "none); under CKA two copies of one row in a resample are not compared with each other. Above "
    "pairwise_rows rows the linear measures' resamples are exact on all rows and draw bundles of consecutive "
    "documents (at most bootstrap_groups of them); the n x n measures resample their subsample."
)

#: How an interval of a mean over pairs is formed; printed in the report.
MEAN_INTERVAL_RULE = (
    "An interval of a mean over model pairs is the mean of the pairs' bootstrap 95% bounds. It treats the "
    "pairs' errors as moving together, so it is at least as wide as the interval of the mean of independent "
    "pairs: a conservative interval."
)

#: The homogenization index, as the report defines it.
INDEX_DEFINITION = (
    "Homogenization index H of the model set: the mean over the model pairs of "
    "max(0, (s \u2212 b) / (1 \u2212 b)), clipped to [0, 1], for the primary measure (`debiased_cka` where "
    "the study has it, whose null level is 0 at any n; else the first similarity measure of the study). s is the pair's score at its best-matching layer pair, b the random-init control "
    "at the same layers (the same measure between random-weight versions of the two architectures, run "
    "through the same pipeline), and 1 the score of identical representations. H = 0: no pair is more alike "
    "than untrained networks of the same shapes; H = 1: every pair is identical at its best layers. A pair "
    "whose score is not distinguishable from its permutation null counts 0. Interval: the same formula "
    "applied to each pair's bootstrap 95% bounds (b held fixed), averaged over the pairs (conservative, see "
    "above). Where a pair lacks the random-init control, the permutation null mean at the same layers "
    "stands in for b, and the report says so."
)

#: The seed ceiling, as the report defines it.
CEILING_DEFINITION = (
    "Seed ceiling of a training recipe: where the study has two or more models of one recipe (the same training "
    "recipe run with different seeds), the mean over their pairs (the seed pairs) of each pair's score s at its "
    "best-matching layer pair. Its interval is the mean of the seed pairs' bootstrap 95% bounds (conservative, "
    "see the definitions), and its final-layer value the mean of their scores final layer against final layer. It "
    "is how alike two runs of one recipe are when only the seed differs: the ceiling every cross-model score is "
    "read against, as the random-init control is the floor. The ceiling c_ab of a pair (a, b) of models of "
    "different recipes is the mean of the ceilings of a's and b's recipes over those that have one; a pair where "
    "neither model's recipe has one has no ceiling. The ceiling table gives it under the primary measure, each "
    "controls table under its own measure."
)

#: The homogenization index read between the random-init floor and the seed ceiling; the report prints it where
#: the study has a seed ceiling.
SEED_INDEX_DEFINITION = (
    "Two seeds of one recipe are not a cross-model pair: H and H_seed leave such seed pairs out. H_seed reads "
    "each cross-model pair between its floor and its ceiling: the mean over the cross-model pairs that have a "
    "seed ceiling c (c_ab of the seed ceiling's definition) of max(0, min(1, (s \u2212 b) / (c \u2212 b))), s "
    "and b as for H, for the primary measure. H_seed = 0: the pairs are no more alike than untrained networks "
    "of the same shapes; H_seed = 1: they are as alike as two seeds of one recipe (or more; each pair is clipped "
    "at 1). A pair whose score is not distinguishable from its permutation null counts 0; a pair whose ceiling "
    "is not above its floor (c \u2264 b) has no term: it is left out and named. Interval: the same formula "
    "applied to each pair's bootstrap 95% bounds (b and c held fixed), averaged over the pairs."
)

#: The family of a pair of two seeds of one recipe in :func:`family_table`.
SEED_FAMILY = "same recipe (seeds)"

#: Columns of :func:`seed_ceilings`, in order.
CEILING_COLUMNS = ["recipe", "kind", "n_seeds", "seeds", "n_pairs", "ceiling", "ceiling_low", "ceiling_high",
                   "final", "final_low", "final_high", "n_final", "layers", "random_init"]

#: Columns of :func:`family_table`, in order.
FAMILY_COLUMNS = ["family", "scope", "n_pairs", "mean", "low", "high"]


#: What each pairwise prediction-agreement measure is, for table notes.
AGREEMENT_LABELS = {
    "agreement": "share of identical predictions",
    "cohen_kappa": "agreement beyond chance (Cohen 1960)",
    "error_overlap": "shared errors / errors of either model (Jaccard)",
    "error_overlap_jaccard": "shared errors / errors of either model (Jaccard)",
    "error_overlap_conditional": "P(second model wrong | first model wrong)",
    "p_b_wrong_given_a_wrong": "P(second model wrong | first model wrong)",
    "jsd": "Jensen-Shannon divergence of predictive distributions (bits; lower = more alike)",
}


# ------------------------------------------------------------------------------------------------ text


@dataclass(frozen=True)
class Text:
    """A sentence in runs: ``('t', fixed wording)``, ``('b', data shown in bold)``, ``('d', data)``,
    ``('c', code such as a measure name)``. Each output format escapes the runs its own way."""

    runs: tuple[tuple[str, str], ...] = ()

    def plain(self) -> str:
        """The sentence without markup."""
        return "".join(s for _, s in self.runs)

    def __add__(self, other: Text) -> Text:
        return Text(self.runs + other.runs)


def T(*parts: Any) -> Text:
    """Build a :class:`Text`: a str is fixed wording, a ``(kind, str)`` tuple a run, a Text is spliced."""
    runs: list[tuple[str, str]] = []
    for p in parts:
        if p is None:
            continue
        if isinstance(p, Text):
            runs += list(p.runs)
        elif isinstance(p, tuple):
            runs.append((p[0], str(p[1])))
        else:
            runs.append(("t", str(p)))
    return Text(tuple(runs))


# control characters and the marks that reorder text on screen (bidirectional overrides and isolates)
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(s: Any) -> str:
    """``str(s)`` with control characters and bidirectional marks written as ``\\xNN`` / ``\\uNNNN``, so data
    (a model name, a label) shows as what it is and cannot reorder or hide the text around it."""
    return _HIDDEN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(s))


def B(s: Any) -> tuple[str, str]:
    """Data shown in bold (a model name)."""
    return ("b", visible(s))


def C(s: Any) -> tuple[str, str]:
    """Code (a measure name)."""
    return ("c", visible(s))


def D(s: Any) -> tuple[str, str]:
    """Data shown plain (a label, a task)."""
    return ("d", visible(s))


def join(texts: Iterable[Text], sep: str = ", ") -> Text:
    """The texts one after the other with ``sep`` (fixed wording) between them."""
    out = T()
    for k, t in enumerate(texts):
        out = out + (T(sep) if k else T()) + t
    return out


# ---------------------------------------------------------------------------------------------- helpers


def model_kinds(manifest: Mapping[str, Any] | None) -> dict[str, str]:
    """``{model name: 'encoder' | 'decoder' | ...}`` from ``manifest['models']`` (lower case)."""
    out = {}
    for m in (manifest or {}).get("models") or []:
        if isinstance(m, Mapping) and m.get("name") is not None and m.get("kind"):
            out[str(m["name"])] = str(m["kind"]).lower()
    return out


def model_recipes(manifest: Mapping[str, Any] | None) -> dict[str, str]:
    """``{model name: training recipe}`` from ``manifest['models']``, for the models whose ``recipe`` is a
    non-empty text and whose ``seed`` is an integer (models of one recipe differ only in their seed). A model
    is left out whose seed another model of its recipe already has (the same run twice is no seed pair) or
    whose kind differs from that of its recipe's first model (not one recipe)."""
    out: dict[str, str] = {}
    taken: set[tuple[str, int]] = set()
    kinds: dict[str, Any] = {}
    for m in (manifest or {}).get("models") or []:
        if not (isinstance(m, Mapping) and m.get("name") is not None and isinstance(m.get("recipe"), str)
                and m["recipe"] and isinstance(m.get("seed"), int) and not isinstance(m.get("seed"), bool)):
            continue
        recipe, seed = m["recipe"], m["seed"]
        if (recipe, seed) in taken or kinds.setdefault(recipe, m.get("kind")) != m.get("kind"):
            continue
        taken.add((recipe, seed))
        out[str(m["name"])] = recipe
    return out


def seed_pair(a: Any, b: Any, recipes: Mapping[str, str]) -> bool:
    """True when models ``a`` and ``b`` are two seeds of one recipe (``recipes`` from :func:`model_recipes`)."""
    r = recipes.get(str(a))
    return bool(r) and str(a) != str(b) and r == recipes.get(str(b))


def cross_model_pairs(table: pd.DataFrame, manifest: Mapping[str, Any] | None) -> pd.DataFrame:
    """The rows of a per-pair ``table`` (``model_a``, ``model_b``) that are not two seeds of one recipe (those
    make the seed ceiling); the whole table where that would leave none."""
    recipes = model_recipes(manifest)
    if not recipes or table.empty:
        return table
    cross = table[[not seed_pair(a, b, recipes) for a, b in zip(table["model_a"], table["model_b"])]]
    return cross if not cross.empty else table


def primary_measure(frame: pd.DataFrame, manifest: Mapping[str, Any] | None,
                    infos: Mapping[str, MeasureInfo]) -> str | None:
    """The primary measure: ``debiased_cka`` where the study has it (its null level is 0 at any n, where
    linear CKA's grows as n shrinks), else the first similarity measure in the study's order
    (``manifest['study']['measures']``, else the frame's order); None where every measure is a distance."""
    present = measures_of(frame)
    study = ((manifest or {}).get("study") or {}).get("measures") or []
    order = [m for m in study if m in present] + [m for m in present if m not in study]
    order = sorted(order, key=lambda m: m != "debiased_cka")
    for m in order:
        if infos[m].higher_is_more_alike:
            return m
    return None


# what the report adds after a best score that is not above its random-init baseline
_BASELINE_CLAUSE = {
    "within": " That is not above its random-init baseline: untrained networks of these shapes are as alike.",
    "below": " That is below its random-init baseline: untrained networks of these shapes are more alike.",
}


def _better(a: float, b: float, info: MeasureInfo) -> bool:
    """True when ``a`` is more alike than ``b``."""
    return a > b if info.higher_is_more_alike else a < b


def _verdict(q: float, p: float) -> str:
    if math.isfinite(q):
        return VERDICT_NS if q >= ALPHA else VERDICT_ABOVE
    if math.isfinite(p):
        return VERDICT_NS if p >= ALPHA else VERDICT_ABOVE
    return VERDICT_NONE


def controls_table(frame: pd.DataFrame, measure: str, info: MeasureInfo) -> pd.DataFrame:
    """The summary table of ``measure`` with the verdicts of its controls.

    Adds to :func:`homoscope.report.summary_table`, for ``where`` in ``best`` and ``final``:
    ``{where}_verdict`` (:data:`VERDICT_ABOVE`, :data:`VERDICT_NS` or :data:`VERDICT_NONE`, by
    :data:`NULL_RULE`), ``{where}_baseline`` (the random-init control, else NaN) and
    ``{where}_vs_random`` (``'above'``, ``'within'``, ``'below'`` or ``''``: above / below = the bootstrap
    interval, or the value where there is none, lies wholly on the more / less alike side of the
    random-init control; within = it holds the control).
    """
    table = summary_table(frame, measure, measure_info=lambda _n: info)
    for where in ("best", "final"):
        verdicts, vs = [], []
        for r in table.itertuples(index=False):
            verdicts.append(_verdict(num(getattr(r, f"{where}_q_value")), num(getattr(r, f"{where}_p_value"))))
            ri = num(getattr(r, f"{where}_random_init"))
            v = num(getattr(r, where))
            lo, hi = num(getattr(r, f"{where}_ci_low")), num(getattr(r, f"{where}_ci_high"))
            if not (math.isfinite(ri) and math.isfinite(v)):
                vs.append("")
                continue
            both = math.isfinite(lo) and math.isfinite(hi)
            near, far = ((lo, hi) if info.higher_is_more_alike else (hi, lo)) if both else (v, v)
            vs.append("above" if _better(near, ri, info) else "below" if _better(ri, far, info) else "within")
        table[f"{where}_verdict"] = verdicts
        table[f"{where}_vs_random"] = vs
    return table


# ------------------------------------------------------------------------------------------ per measure


@dataclass(frozen=True)
class PairBest:
    """One model pair at its best-matching layer pair: value, layers and bootstrap interval (NaN where none)."""

    model_a: str
    model_b: str
    value: float
    layer_a: int | None
    layer_b: int | None
    ci_low: float
    ci_high: float

    def key(self, symmetric: bool) -> frozenset | tuple[str, str]:
        """The pair as a set (a symmetric measure) or as an ordered (a, b)."""
        return frozenset((self.model_a, self.model_b)) if symmetric else (self.model_a, self.model_b)


@dataclass(frozen=True)
class MeasureSummary:
    """What the report's summary says of one measure.

    Attributes:
        measure: the measure; symmetric: whether (a, b) and (b, a) are one pair.
        n_pairs: pairs with a finite best value.
        most, least: the most and least alike pair at their best layers (None without a finite value).
        mean_best: mean of the best values over those pairs.
        final_low, final_high, n_final: range of the final-layer values and the pairs that have one.
    """

    measure: str
    symmetric: bool
    n_pairs: int
    most: PairBest | None
    least: PairBest | None
    mean_best: float
    final_low: float
    final_high: float
    n_final: int


def _pair_best(r: pd.Series) -> PairBest:
    def layer(v: Any) -> int | None:
        return int(v) if finite(v) else None

    return PairBest(str(r["model_a"]), str(r["model_b"]), num(r["best"]), layer(r["best_layer_a"]),
                    layer(r["best_layer_b"]), num(r["best_ci_low"]), num(r["best_ci_high"]))


def measure_summary(table: pd.DataFrame, info: MeasureInfo) -> MeasureSummary:
    """Summarize one measure from its :func:`controls_table` (or summary table) rows.

    Returns:
        A :class:`MeasureSummary`: the most and least alike pair by their best value (largest or smallest
        by the measure's direction), the mean best value and the range of the final-layer values.
    """
    best = table["best"].astype(float)
    ok = table[np.isfinite(best)]
    fin = table["final"].astype(float)
    fin = fin[np.isfinite(fin)]
    most = least = None
    if not ok.empty:
        hi = info.higher_is_more_alike
        most = _pair_best(ok.loc[ok["best"].idxmax() if hi else ok["best"].idxmin()])
        least = _pair_best(ok.loc[ok["best"].idxmin() if hi else ok["best"].idxmax()])
    return MeasureSummary(
        info.name, bool(info.symmetric), len(ok), most, least,
        float(ok["best"].mean()) if len(ok) else math.nan,
        float(fin.min()) if len(fin) else math.nan, float(fin.max()) if len(fin) else math.nan, len(fin))


def summary_text(s: MeasureSummary) -> Text:
    """One or two sentences on a measure: the most and least alike pair at their best layers, the mean
    best value (over three or more pairs) and the range of the final-layer values."""
    if s.most is None or s.least is None:
        return T("Under ", C(s.measure), " no pair has a finite value.")
    sep = " and " if s.symmetric else " \u2192 "

    def pair(p: PairBest) -> Text:
        return T(B(p.model_a), sep, B(p.model_b))

    def at(p: PairBest) -> str:
        ci = f", CI {span(p.ci_low, p.ci_high)}" if finite(p.ci_low, p.ci_high) else ""
        return f"{f3(p.value)} at layers {int_txt(p.layer_a)} and {int_txt(p.layer_b)}{ci}"

    if s.n_pairs == 1:
        out = T("Under ", C(s.measure), ", the one pair, ", pair(s.most), f", reaches {at(s.most)} at best")
    else:
        out = T("Under ", C(s.measure), ", the most alike pair is ", pair(s.most), f" ({at(s.most)}) and the least "
                "alike is ", pair(s.least), f" ({at(s.least)}), comparing each pair at its best-matching layers")
    if s.n_pairs > 2:
        out += T(f"; averaged over the {s.n_pairs} pairs, the best value is {f3(s.mean_best)}")
    if s.n_final > 1:
        out += T(f"; final layer against final layer, values run from {f3(s.final_low)} to {f3(s.final_high)}")
    elif s.n_final == 1:
        out += T(f"; final layer against final layer it is {f3(s.final_low)}")
    return out + T(".")


# ------------------------------------------------------------------------------------------ seed ceiling


def _recipe_members(frame: pd.DataFrame, manifest: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """The manifest's model records of each recipe with two or more models in the frame, in study order."""
    recipes, present = model_recipes(manifest), set(model_order(frame))
    members: dict[str, list[Mapping[str, Any]]] = {}
    for m in manifest.get("models") or []:
        name = str(m.get("name")) if isinstance(m, Mapping) else ""
        if name in present and name in recipes and all(str(x.get("name")) != name
                                                        for x in members.get(recipes[name], [])):
            members.setdefault(recipes[name], []).append(m)
    return {r: ms for r, ms in members.items() if len(ms) >= 2}


def seed_ceilings(frame: pd.DataFrame, manifest: Mapping[str, Any] | None, infos: Mapping[str, MeasureInfo],
                  measure: str | None = None, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The seed ceiling of each training recipe with two or more models in the study (see
    :data:`CEILING_DEFINITION`).

    Args:
        frame: the results frame; manifest: the study manifest (``models`` with ``recipe``, ``seed`` and
            ``kind`` are read); infos: :class:`MeasureInfo` of every measure of the frame.
        measure: the measure (default: the primary measure, :func:`primary_measure`).
        table: the :func:`controls_table` of ``measure`` where already computed.

    Returns:
        One row per recipe, in the order of its first model in the manifest, with the columns
        :data:`CEILING_COLUMNS`: recipe, kind (the models' ``kind``; several joined by ``' / '``), n_seeds
        (its models in the study), seeds (their seeds in study order, None where not stated), n_pairs (its seed
        pairs with a best score; under an asymmetric measure each direction is a pair, as in the index),
        ceiling (the mean of their best scores), ceiling_low, ceiling_high (the mean of their bootstrap bounds,
        by :data:`MEAN_INTERVAL_RULE`; NaN where a pair has none), final, final_low, final_high, n_final (the
        same final layer against final layer, over the pairs with a final score), layers (each seed pair's
        best-matching layers, ``a/b``, comma-separated), random_init (the mean of the seed pairs' random-init
        control at their best layers; NaN where none). Empty (with those columns) where no recipe has two models
        in the study or no measure applies.
    """
    manifest = manifest or {}
    measure = measure or primary_measure(frame, manifest, infos)
    members = _recipe_members(frame, manifest)
    if measure is None or not members:
        return pd.DataFrame(columns=CEILING_COLUMNS)
    table = table if table is not None else controls_table(frame, measure, infos[measure])
    recipes, kinds = model_recipes(manifest), model_kinds(manifest)
    rows = []
    for recipe, ms in members.items():
        mine = [seed_pair(a, b, recipes) and recipes[str(a)] == recipe for a, b in zip(table["model_a"],
                                                                                      table["model_b"])]
        sub = table[mine]
        best = sub[np.isfinite(sub["best"].astype(float))]
        fin = sub[np.isfinite(sub["final"].astype(float))]
        names = [str(m["name"]) for m in ms]
        kind = " / ".join(sorted({kinds[n] for n in names if n in kinds}))
        seeds = [m.get("seed") if isinstance(m.get("seed"), int) and not isinstance(m.get("seed"), bool) else None
                 for m in ms]
        layers = ", ".join(f"{int_txt(r.best_layer_a)}/{int_txt(r.best_layer_b)}" for r in best.itertuples())
        floor = best["best_random_init"].astype(float) if "best_random_init" in best else pd.Series(dtype=float)
        floor = floor[np.isfinite(floor)]
        rows.append([recipe, kind, len(ms), seeds, len(best), *_mean_ci(best, "best", "best_ci_low", "best_ci_high"),
                     *_mean_ci(fin, "final", "final_ci_low", "final_ci_high"), len(fin), layers,
                     float(floor.mean()) if len(floor) else math.nan])
    return pd.DataFrame(rows, columns=CEILING_COLUMNS)


def pair_ceilings(table: pd.DataFrame, recipes: Mapping[str, str], ceilings: pd.DataFrame) -> np.ndarray:
    """The seed ceiling c_ab of each row (model pair) of a controls table (see :data:`CEILING_DEFINITION`).

    Args:
        table: rows with ``model_a`` and ``model_b``; recipes: from :func:`model_recipes`; ceilings: from
            :func:`seed_ceilings` for the table's measure.

    Returns:
        float64 array, one value per row: the mean of the ceilings of the two models' recipes over those that
        have one; NaN for a seed pair (two seeds of one recipe) and where neither recipe has a ceiling.
    """
    by = {str(r.recipe): num(r.ceiling) for r in ceilings.itertuples(index=False)}
    out = np.full(len(table), np.nan)
    for k, (a, b) in enumerate(zip(table["model_a"], table["model_b"])):
        if seed_pair(a, b, recipes):
            continue
        cs = [by[r] for r in (recipes.get(str(a)), recipes.get(str(b))) if r in by and math.isfinite(by[r])]
        if cs:
            out[k] = float(np.mean(cs))
    return out


def _family(a: Any, b: Any, kinds: Mapping[str, str], recipes: Mapping[str, str]) -> tuple[str, str]:
    """``(family, scope)`` of a model pair: :data:`SEED_FAMILY` and ``'seeds'`` for two seeds of one recipe,
    else the two kinds in alphabetical order (``'decoder / encoder'``; ``'unknown'`` without a kind) and
    ``'within family'`` or ``'across families'``."""
    if seed_pair(a, b, recipes):
        return SEED_FAMILY, "seeds"
    ka, kb = sorted((kinds.get(str(a), "unknown"), kinds.get(str(b), "unknown")))
    return f"{ka} / {kb}", ("within family" if ka == kb else "across families")


def family_table(frame: pd.DataFrame, manifest: Mapping[str, Any] | None, infos: Mapping[str, MeasureInfo],
                 measure: str | None = None, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model pairs grouped by family: the two models' kinds (unordered), with the pairs of two seeds of one
    recipe as a group of their own (:data:`SEED_FAMILY`): what within-family and cross-family similarity is read
    from.

    Arguments as :func:`seed_ceilings`.

    Returns:
        One row per family with the columns :data:`FAMILY_COLUMNS`: family, scope (``'seeds'``,
        ``'within family'`` or ``'across families'``), n_pairs (pairs with a best score), mean (of their best
        scores), low, high (the mean of their bootstrap bounds, by :data:`MEAN_INTERVAL_RULE`; NaN where a pair
        has none); seeds first, then within and across families, each by family name. Empty (with those
        columns) where no measure applies or no pair has a best score.
    """
    manifest = manifest or {}
    measure = measure or primary_measure(frame, manifest, infos)
    if measure is None:
        return pd.DataFrame(columns=FAMILY_COLUMNS)
    table = table if table is not None else controls_table(frame, measure, infos[measure])
    ok = table[np.isfinite(table["best"].astype(float))]
    kinds, recipes = model_kinds(manifest), model_recipes(manifest)
    keys = [_family(a, b, kinds, recipes) for a, b in zip(ok["model_a"], ok["model_b"])]
    rows = []
    for key in sorted(set(keys), key=lambda k: (["seeds", "within family", "across families"].index(k[1]), k[0])):
        sub = ok[[k == key for k in keys]]
        rows.append([key[0], key[1], len(sub), *_mean_ci(sub, "best", "best_ci_low", "best_ci_high")])
    return pd.DataFrame(rows, columns=FAMILY_COLUMNS)


# ------------------------------------------------------------------------------------------ the index


@dataclass
class HomogenizationIndex:
    """The homogenization index of a model set (see :data:`INDEX_DEFINITION`) and, beside it, H_seed: the index
    read between the random-init floor and the seed ceiling (see :data:`SEED_INDEX_DEFINITION`).

    Attributes:
        measure: the primary measure, or None.
        value, low, high: the index and its interval (NaN where not computed / no bootstrap).
        baseline: ``'random-init'``, ``'permutation null mean'``, ``'random-init and permutation null mean'``
            or ``''`` (not computed).
        n_pairs: cross-model pairs averaged; n_missing: cross-model pairs left out for want of any baseline.
        pairs: one row per pair: model_a, model_b, best, baseline, baseline_kind, verdict, term,
            term_low, term_high, seed_pair (two seeds of one recipe: in neither index), ceiling (the pair's
            seed ceiling c_ab, NaN where none), seed_term, seed_term_low, seed_term_high (its H_seed term and
            the term's bounds, NaN where it has none).
        note: one line on how it was computed, or why not.
        n_seed_pairs: pairs of two seeds of one recipe, left out of both indices.
        seed_value, seed_low, seed_high: H_seed and its interval (NaN where not computed / no bootstrap).
        n_ceiling_pairs: cross-model pairs averaged in H_seed.
        below_floor: ``(model_a, model_b)`` of the pairs whose ceiling is not above their floor (c <= b), left
            out of H_seed.
        seed_note: one line on what H_seed left out, or why it was not computed; '' where no cross-model pair
            has a seed ceiling.
    """

    measure: str | None
    value: float = math.nan
    low: float = math.nan
    high: float = math.nan
    baseline: str = ""
    n_pairs: int = 0
    n_missing: int = 0
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    note: str = ""
    n_seed_pairs: int = 0
    seed_value: float = math.nan
    seed_low: float = math.nan
    seed_high: float = math.nan
    n_ceiling_pairs: int = 0
    below_floor: tuple[tuple[str, str], ...] = ()
    seed_note: str = ""

    @property
    def computed(self) -> bool:
        return math.isfinite(self.value)

    @property
    def seed_computed(self) -> bool:
        """Whether H_seed was computed."""
        return math.isfinite(self.seed_value)


def _term(s: float, b: float, top: float) -> float:
    if not (math.isfinite(s) and math.isfinite(b)):
        return math.nan
    if top - b <= 0:
        return 0.0
    return float(np.clip((s - b) / (top - b), 0.0, 1.0))


def _seed_term(s: float, b: float, c: float) -> float:
    """A pair's H_seed term: ``max(0, min(1, (s - b) / (c - b)))``; NaN where a value is missing or c <= b."""
    if not finite(s, b, c) or c <= b:
        return math.nan
    return float(np.clip((s - b) / (c - b), 0.0, 1.0))


_PAIR_COLUMNS = ["model_a", "model_b", "best", "baseline", "baseline_kind", "verdict", "term", "term_low", "term_high",
                 "seed_pair", "ceiling", "seed_term", "seed_term_low", "seed_term_high"]


def _index_pairs(table: pd.DataFrame, top: float, recipes: Mapping[str, str], ceiling: np.ndarray) -> pd.DataFrame:
    """One row per pair of the primary measure's controls table with its baseline, its H term and its H_seed
    term (columns :data:`_PAIR_COLUMNS`); a pair not distinguishable from its null counts 0 in both."""
    rows = []
    for r, c in zip(table.itertuples(index=False), ceiling):
        ri, nm = num(r.best_random_init), num(r.best_null_mean)
        if math.isfinite(ri):
            b, kind = ri, "random-init"
        elif math.isfinite(nm):
            b, kind = nm, "permutation null mean"
        else:
            b, kind = math.nan, ""
        s, s_lo, s_hi = num(r.best), num(r.best_ci_low), num(r.best_ci_high)
        t, lo, hi = _term(s, b, top), _term(s_lo, b, top), _term(s_hi, b, top)
        st, st_lo, st_hi = _seed_term(s, b, c), _seed_term(s_lo, b, c), _seed_term(s_hi, b, c)
        if r.best_verdict == VERDICT_NS:  # never counted as similarity
            if math.isfinite(t):
                t, lo = 0.0, (0.0 if math.isfinite(lo) else lo)
            if math.isfinite(st):
                st, st_lo = 0.0, (0.0 if math.isfinite(st_lo) else st_lo)
        rows.append([r.model_a, r.model_b, s, b, kind, r.best_verdict, t, lo, hi,
                     seed_pair(r.model_a, r.model_b, recipes), float(c), st, st_lo, st_hi])
    return pd.DataFrame(rows, columns=_PAIR_COLUMNS)


def _mean_terms(ok: pd.DataFrame, col: str) -> tuple[float, float, float]:
    """The mean of the terms ``col`` and of their bounds (NaN bounds where any pair lacks one)."""
    lo, hi = ok[f"{col}_low"].astype(float), ok[f"{col}_high"].astype(float)
    has_ci = bool(np.isfinite(lo).all() and np.isfinite(hi).all())
    return (float(ok[col].mean()), float(lo.mean()) if has_ci else math.nan,
            float(hi.mean()) if has_ci else math.nan)


def _seed_index(cross: pd.DataFrame) -> dict[str, Any]:
    """H_seed over the cross-model pairs that have a seed ceiling, as :class:`HomogenizationIndex` fields;
    ``{}`` where none has one."""
    has_c = cross[np.isfinite(cross["ceiling"].astype(float))]
    if has_c.empty:
        return {}
    c, b = has_c["ceiling"].astype(float), has_c["baseline"].astype(float)
    below = has_c[np.isfinite(b) & (c <= b)]
    floor = tuple((str(r.model_a), str(r.model_b)) for r in below.itertuples(index=False))
    ok = has_c[np.isfinite(has_c["seed_term"].astype(float))]
    other = len(has_c) - len(ok) - len(below)  # without a baseline or a score
    parts = ([f"{plural(len(below), 'pair')} whose ceiling is not above its floor (c \u2264 b) left out"] if floor
             else []) + ([f"{other} pair(s) without any baseline left out"] if other else [])
    if ok.empty:
        return {"below_floor": floor, "seed_note": "not computed: no cross-model pair with a seed ceiling has a "
                                                   "term (" + "; ".join(parts) + ")"}
    value, low, high = _mean_terms(ok, "seed_term")
    if not finite(low, high):
        parts.append("no interval (the study ran no bootstrap)")
    return {"seed_value": value, "seed_low": low, "seed_high": high, "n_ceiling_pairs": len(ok),
            "below_floor": floor, "seed_note": "; ".join(parts)}


def _baseline_note(kinds: set[str], ok: pd.DataFrame) -> tuple[str, str]:
    """The index's baseline and the start of its note, from the kinds of baseline its pairs used."""
    if kinds == {"random-init"}:
        return "random-init", "baseline: the random-init control"
    if kinds == {"permutation null mean"}:
        return "permutation null mean", ("baseline: the permutation null mean, standing in for the random-init "
                                         "control, which this study did not run")
    n_null = int((ok["baseline_kind"] == "permutation null mean").sum())
    return "random-init and permutation null mean", (f"baseline: the random-init control, and the permutation null "
                                                     f"mean for the {n_null} pair(s) without it")


def homogenization_index(frame: pd.DataFrame, manifest: Mapping[str, Any] | None,
                         infos: Mapping[str, MeasureInfo]) -> HomogenizationIndex:
    """Compute the homogenization index of :data:`INDEX_DEFINITION` from the results frame, and H_seed of
    :data:`SEED_INDEX_DEFINITION` where a cross-model pair has a seed ceiling; pairs of two seeds of one recipe
    (``manifest['models']``' ``recipe``) are left out of both.

    Returns:
        A :class:`HomogenizationIndex`; its value is NaN, and its note says why, where it is not computed.
    """
    measure = primary_measure(frame, manifest, infos)
    if measure is None:
        return HomogenizationIndex(None, note="not computed: every measure of the study is a distance; the index "
                                               "is defined for a similarity")
    info = infos[measure]
    table = controls_table(frame, measure, info)
    recipes = model_recipes(manifest)
    ceiling = pair_ceilings(table, recipes, seed_ceilings(frame, manifest, infos, measure, table))
    pairs = _index_pairs(table, info.identity, recipes, ceiling)
    cross = pairs[~pairs["seed_pair"].astype(bool)]
    seed: dict[str, Any] = {"n_seed_pairs": len(pairs) - len(cross), **_seed_index(cross)}
    ok = cross[np.isfinite(cross["term"].astype(float))]
    missing = len(cross) - len(ok)
    if ok.empty:
        note = ("not computed: every pair is two seeds of one recipe (the seed ceiling), so the study has no "
                "cross-model pair" if cross.empty else
                "not computed: the study has neither the random-init control nor a permutation null, and the "
                "index is not defined without a baseline")
        return HomogenizationIndex(measure, pairs=pairs, n_missing=missing, note=note, **seed)
    value, low, high = _mean_terms(ok, "term")
    baseline, note = _baseline_note(set(cross["baseline_kind"]) - {""}, ok)
    if missing:
        note += f"; {missing} pair(s) without any baseline left out"
    if seed["n_seed_pairs"]:
        note += (f"; {plural(seed['n_seed_pairs'], 'seed pair')} (two seeds of one recipe) left out: they make the "
                 "seed ceiling and are not cross-model pairs")
    if not finite(low, high):
        note += "; no interval (the study ran no bootstrap)"
    return HomogenizationIndex(measure, value, low, high, baseline, len(ok), missing, pairs, note, **seed)


# ------------------------------------------------------------------------------------------ depth profile


def depth_profile(frame: pd.DataFrame, measure: str, info: MeasureInfo, bins: int = 5) -> pd.DataFrame:
    """The measure along equal relative depth, averaged over model pairs, in ``bins`` depth bins.

    For each pair, each layer of the model with more layers is matched with the layer of the other at the
    nearest relative depth (layer / last layer); the matched values are averaged within each bin of
    relative depth, then over pairs (each pair weighs the same). ``low``/``high`` average the matched
    cells' bootstrap bounds in the same way (see :data:`MEAN_INTERVAL_RULE`); NaN where any is missing.

    Returns a frame with columns ``bin_low, bin_high, mean, low, high, n_pairs``.
    """
    sub = frame[frame["measure"] == measure]
    edges = np.linspace(0.0, 1.0, bins + 1)
    per_pair = []
    for (_a, _b), g in sub.groupby(["model_a", "model_b"], sort=False):
        la, lb = g["layer_a"].astype(int).to_numpy(), g["layer_b"].astype(int).to_numpy()
        na, nb = int(la.max()) + 1, int(lb.max()) + 1
        vals = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(la, lb, strict=True))}
        v, lo, hi = column(g, "value"), column(g, "ci_low"), column(g, "ci_high")
        rows = []
        if na >= nb:
            for i in range(na):
                d = i / max(na - 1, 1)
                rows.append((d, vals.get((i, round(d * (nb - 1))))))
        else:
            for j in range(nb):
                d = j / max(nb - 1, 1)
                rows.append((d, vals.get((round(d * (na - 1)), j))))
        rec = []
        for d, k in rows:
            if k is None or not math.isfinite(v[k]):
                continue
            rec.append((min(int(d * bins), bins - 1), v[k], lo[k], hi[k]))
        if rec:
            per_pair.append(pd.DataFrame(rec, columns=["bin", "value", "low", "high"]).groupby("bin").mean())
    out = []
    for b in range(bins):
        parts = [p.loc[b] for p in per_pair if b in p.index]
        if not parts:
            out.append((edges[b], edges[b + 1], math.nan, math.nan, math.nan, 0))
            continue
        df = pd.DataFrame(parts)
        lo_ok = np.isfinite(df["low"]).all() and np.isfinite(df["high"]).all()
        out.append((edges[b], edges[b + 1], float(df["value"].mean()),
                    float(df["low"].mean()) if lo_ok else math.nan,
                    float(df["high"].mean()) if lo_ok else math.nan, len(df)))
    return pd.DataFrame(out, columns=["bin_low", "bin_high", "mean", "low", "high", "n_pairs"])


# ------------------------------------------------------------------------------------------ extra frames


def normalize_extra(extra: Mapping[str, pd.DataFrame] | None) -> dict[str, pd.DataFrame]:
    """The prediction-agreement frames in one shape, whatever the writer named the columns.

    ``probes``: ``accuracy`` (from ``value`` where absent) and ``n_test`` (from ``n``); ``agreement`` and
    ``homogenization`` as given. Frames that are None or empty are dropped. Other keys pass through.

    Raises:
        TypeError: a value is not a DataFrame.
        ValueError: a known frame lacks a column it cannot do without (named).
    """
    out: dict[str, pd.DataFrame] = {}
    for key, df in (extra or {}).items():
        if df is None:
            continue
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"extra[{key!r}] must be a pandas DataFrame, got {type(df).__name__}")
        if df.empty:
            continue
        df = df.copy()
        if key == "probes":
            if "accuracy" not in df and "value" in df:
                df["accuracy"] = df["value"]
            if "n_test" not in df and "n" in df:
                df["n_test"] = df["n"]
            need = ["model", "layer", "accuracy"]
        elif key == "agreement":
            need = ["model_a", "model_b", "measure", "value"]
        elif key == "homogenization":
            need = ["measure", "value"]
        else:
            need = []
        lacking = [c for c in need if c not in df]
        if lacking:
            raise ValueError(f"extra[{key!r}] lacks columns {lacking}; it needs {need} (has {list(df.columns)})")
        out[str(key)] = df
    return out


def _sel(df: pd.DataFrame, selection: str = "best") -> pd.DataFrame:
    if "selection" in df and (df["selection"] == selection).any():
        return df[df["selection"] == selection]
    return df


def probe_best(probes: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the probe at its best layer (``best`` column where given, else top accuracy)."""
    rows = []
    for model, g in probes.groupby("model", sort=False):
        if "best" in g and g["best"].fillna(False).astype(bool).any():
            r = g[g["best"].fillna(False).astype(bool)].iloc[0]
        else:
            r = g.loc[pd.to_numeric(g["accuracy"], errors="coerce").idxmax()]
        last = int(pd.to_numeric(g["layer"], errors="coerce").max())
        fin = g[pd.to_numeric(g["layer"], errors="coerce") == last]
        rows.append({"model": model, "layer": int(r["layer"]), "last_layer": last, "accuracy": num(r["accuracy"]),
                     "ci_low": num(r.get("ci_low")), "ci_high": num(r.get("ci_high")),
                     "final_accuracy": num(fin["accuracy"].iloc[0]) if len(fin) else math.nan,
                     "chance": num(r.get("chance")), "n_test": num(r.get("n_test"))})
    return pd.DataFrame(rows)


def agreement_rows(agree: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """The pairwise agreement frame as one row per selection and unordered pair of (model, layer).

    Returns ``(measures, rows)``: the measures in order of appearance, and rows with ``selection``,
    ``a`` and ``b`` (``(model, layer)``, in the order first seen) and ``cells``: ``{measure: (forward,
    reverse)}`` where each is a record dict (``value``, ``expected_independent``, ``ci_low``, ``ci_high``)
    or None; ``reverse`` is the b -> a row of a directional measure.
    """
    measures = list(dict.fromkeys(agree["measure"].astype(str)))
    has_layers = "layer_a" in agree and "layer_b" in agree
    rows: dict[tuple, dict] = {}
    for r in agree.to_dict("records"):
        a = (str(r["model_a"]), int(num(r["layer_a"])) if has_layers and finite(r["layer_a"]) else None)
        b = (str(r["model_b"]), int(num(r["layer_b"])) if has_layers and finite(r["layer_b"]) else None)
        sel = str(r.get("selection")) if r.get("selection") is not None and str(r.get("selection")) != "nan" else ""
        key = (sel, frozenset((a, b)))
        row = rows.setdefault(key, {"selection": sel, "a": a, "b": b, "cells": {}})
        fwd, rev = row["cells"].get(str(r["measure"]), (None, None))
        if (a, b) == (row["a"], row["b"]):
            fwd = r
        else:
            rev = r
        row["cells"][str(r["measure"])] = (fwd, rev)
    return measures, list(rows.values())


# ------------------------------------------------------------------------------------------ findings


def _pair_text(a: str, b: str, info: MeasureInfo) -> Text:
    return T(B(a), " \u2192 " if not info.symmetric else " and ", B(b))


def _mean_ci(df: pd.DataFrame, col: str, lo: str, hi: str) -> tuple[float, float, float]:
    v = df[col].astype(float)
    lo_v, hi_v = df[lo].astype(float), df[hi].astype(float)
    ok = np.isfinite(lo_v).all() and np.isfinite(hi_v).all()
    return float(v.mean()), (float(lo_v.mean()) if ok else math.nan), (float(hi_v.mean()) if ok else math.nan)


def findings(
    frame: pd.DataFrame, manifest: Mapping[str, Any] | None, infos: Mapping[str, MeasureInfo],
    extra: Mapping[str, pd.DataFrame] | None = None, index: HomogenizationIndex | None = None,
    include_index: bool = True, summaries: Mapping[str, MeasureSummary] | None = None,
) -> list[Text]:
    """Plain sentences generated from the numbers, each citing its value and interval.

    In order: the homogenization index (unless ``include_index`` is False: a report that shows it
    apart); the most and least alike pair under the primary measure;
    the controls (pairs above their random-init baseline, pairs not distinguishable from their null);
    encoders against decoders (where the manifest gives each model's kind and both kinds have pairs; two seeds
    of one recipe are left out: they are the seed ceiling);
    the relative depth at which models agree most; final layers against best layers; whether the other
    measures agree with the primary one on the most alike pair; and, where the agreement frames are given,
    probes, pairwise agreement, Fleiss' kappa and outcome homogenization.

    Args:
        frame: the tidy results frame.
        manifest: the study manifest (``models`` with ``kind`` and ``outliers`` are read), or None.
        infos: :class:`MeasureInfo` of every measure of the frame.
        extra: the optional prediction-agreement frames.
        index: the homogenization index where already computed.
        include_index: start with the index sentence.
        summaries: :func:`measure_summary` of every measure where already computed.

    Returns:
        The sentences, as :class:`Text`.
    """
    manifest = manifest or {}
    index = index if index is not None else homogenization_index(frame, manifest, infos)
    m = index.measure or primary_measure(frame, manifest, infos) or measures_of(frame)[0]
    info = infos[m]
    out: list[Text] = [index_text(index)] if include_index else []
    table = controls_table(frame, m, info)
    ok = table[np.isfinite(table["best"].astype(float))]
    if not ok.empty:
        cross = cross_model_pairs(ok, manifest)  # two seeds of one recipe are the ceiling, not the most alike
        out += _extreme_findings(cross, m, info, seeds_aside=len(cross) < len(ok))
        out += _control_findings(ok, info)
        out += _kind_finding(ok, manifest, m, info)
        out += _depth_finding(frame, ok, m, info)
        out += _final_finding(ok, m, info)
    if summaries is None:
        summaries = {x: measure_summary(cross_model_pairs(controls_table(frame, x, infos[x]), manifest), infos[x])
                     for x in measures_of(frame)}
    out += _measures_agree(m, summaries)
    out += _outlier_findings(manifest)
    out += _agreement_findings(normalize_extra(extra))
    return out


def index_text(index: HomogenizationIndex) -> Text:
    """The homogenization index in one sentence: value, interval, pairs, primary measure, baseline and
    reading; or why it was not computed."""
    if not index.computed:
        return T("Homogenization index: ", index.note, ".")
    return T("Homogenization index H = ", f3(index.value), " ", index_details(index))


def index_details(index: HomogenizationIndex) -> Text:
    """What follows the value of a computed index: ``'(interval …; 3 model pairs; primary measure …;
    baseline …). <reading>'``."""
    iv = f"interval {span(index.low, index.high)}; " if finite(index.low, index.high) else ""
    out = T(f"({iv}{plural(index.n_pairs, 'model pair')}; primary measure ", C(index.measure),
            f"; {index.note}). ", index_reading(index.value, index.baseline, index.low))
    seed = seed_text(index)
    return out + T(" ") + seed if seed.runs else out


def seed_text(index: HomogenizationIndex) -> Text:
    """H_seed in one sentence (value, interval, pairs, what was left out, reading), followed by the pairs whose
    ceiling is not above their floor; why it was not computed; an empty :class:`Text` where no cross-model pair
    has a seed ceiling."""
    if not index.seed_note and not index.seed_computed:
        return T()
    floor = (T(" Left out of H_seed, their seed ceiling not above their floor (c \u2264 b): ",
               join(T(B(a), " and ", B(b)) for a, b in index.below_floor), ".") if index.below_floor else T())
    if not index.seed_computed:
        return T(f"H_seed (between the floor and the seed ceiling): {index.seed_note}.") + floor
    iv = f"interval {span(index.seed_low, index.seed_high)}; " if finite(index.seed_low, index.seed_high) else ""
    note = f"; {index.seed_note}" if index.seed_note else ""
    return T(f"Between the floor and the seed ceiling, H_seed = {f3(index.seed_value)} ({iv}"
             f"{plural(index.n_ceiling_pairs, 'cross-model pair')} with a seed ceiling{note}): "
             f"{seed_reading(index.seed_value, index.seed_low)}.") + floor


def seed_reading(h: float, low: float = math.nan) -> str:
    """H_seed in words: where the cross-model pairs lie between the floor (0) and the seed ceiling (1); an
    interval whose lower end ``low`` is 0 (or below) is read as not distinguishable from the floor."""
    if math.isfinite(low) and low <= 0 < h:
        return "its interval reaches 0, so the cross-model pairs are not distinguishably above their floor"
    if h <= 0:
        return "the cross-model pairs are no more alike than their floor"
    if h >= 1:
        return "the cross-model pairs are as alike as two seeds of one recipe"
    return f"on average the cross-model pairs lie {h:.0%} of the way from their floor to their seed ceiling"


def _extreme_findings(ok: pd.DataFrame, m: str, info: MeasureInfo, seeds_aside: bool = False) -> list[Text]:
    """The most alike pair among those above their null, and the least alike pair (``seeds_aside``: ``ok`` holds
    no seed pair, and the sentences say so)."""
    sig = ok[ok["best_verdict"] != VERDICT_NS]
    hi = info.higher_is_more_alike
    if sig.empty:
        return [T("No pair's best score under ", C(m), " is distinguishable from its permutation null: "
                  "the data do not show these models to be alike.")]
    top = sig.loc[sig["best"].idxmax() if hi else sig["best"].idxmin()]
    aside = " (two seeds of one recipe aside: they make the seed ceiling)" if seeds_aside else ""
    out = [T(f"Most alike{aside}: ", _pair_text(top.model_a, top.model_b, info), ", ", C(m), " ",
             f3(top.best), f" ({interval(top.best_ci_low, top.best_ci_high)}) at layers "
             f"{int_txt(top.best_layer_a)} of {top.layers_a - 1} and {int_txt(top.best_layer_b)} of "
             f"{top.layers_b - 1} (relative depth {f3(top.best_depth_a, 2)} and "
             f"{f3(top.best_depth_b, 2)})", _controls_clause(top, "best"), ".",
             _BASELINE_CLAUSE.get(top.best_vs_random))]
    if len(ok) > 1:
        low = ok.loc[ok["best"].idxmin() if hi else ok["best"].idxmax()]
        if (low.model_a, low.model_b) != (top.model_a, top.model_b):
            ns = " (not distinguishable from its null)" if low.best_verdict == VERDICT_NS else ""
            out.append(T("Least alike: ", _pair_text(low.model_a, low.model_b, info), ", ", C(m), " ",
                         f3(low.best), f" ({interval(low.best_ci_low, low.best_ci_high)}) at their "
                         f"best-matching layers{ns}."))
    return out


def _control_findings(ok: pd.DataFrame, info: MeasureInfo) -> list[Text]:
    """Pairs above their random-init baseline; pairs not distinguishable from their permutation null."""
    out = []
    with_ri = ok[ok["best_vs_random"] != ""]
    if not with_ri.empty:
        above = int((with_ri["best_vs_random"] == "above").sum())
        out.append(T(f"{above} of {len(with_ri)} pairs score above their random-init baseline at their best "
                     f"layers (mean baseline {f3(with_ri['best_random_init'].mean())}, mean score "
                     f"{f3(with_ri['best'].mean())}); a score within its baseline says as much about the "
                     "architectures and the data as about training."))
    tested = ok[ok["best_verdict"] != VERDICT_NONE]
    if tested.empty:
        return out
    ns = tested[tested["best_verdict"] == VERDICT_NS]
    if ns.empty:
        every = {1: "The one pair's", 2: "Both pairs'"}.get(len(tested), f"All {len(tested)} pairs'")
        out.append(T(f"{every} best scores are distinguishable from their permutation null (BH q < {ALPHA:g})."
                     if len(tested) > 1 else
                     f"{every} best score is distinguishable from its permutation null (BH q < {ALPHA:g})."))
        return out
    listed = join(_pair_text(r.model_a, r.model_b, info) for r in ns.head(3).itertuples(index=False))
    more = f" and {len(ns) - 3} more" if len(ns) > 3 else ""
    out.append(T(f"{len(ns)} of {len(tested)} pairs' best scores are not distinguishable from their "
                 "permutation null: ", listed, more, "."))
    return out


def _depth_finding(frame: pd.DataFrame, ok: pd.DataFrame, m: str, info: MeasureInfo) -> list[Text]:
    """The relative depth at which the models agree most and least (see :func:`depth_profile`)."""
    prof = depth_profile(frame, m, info)
    prof = prof[np.isfinite(prof["mean"])]
    if len(prof) < 2:
        return []
    hi = info.higher_is_more_alike
    best_bin = prof.loc[prof["mean"].idxmax() if hi else prof["mean"].idxmin()]
    worst_bin = prof.loc[prof["mean"].idxmin() if hi else prof["mean"].idxmax()]
    return [T("Along equal relative depth, models agree most at relative depth "
              f"{best_bin.bin_low:.1f}\u2013{best_bin.bin_high:.1f} (mean ", C(m), " ", f3(best_bin["mean"]),
              f", {interval(best_bin.low, best_bin.high, 'interval')}) and least at "
              f"{worst_bin.bin_low:.1f}\u2013{worst_bin.bin_high:.1f} ({f3(worst_bin['mean'])}); "
              f"best-matching layers lie at a mean relative depth of "
              f"{f3(((ok['best_depth_a'] + ok['best_depth_b']) / 2).mean(), 2)}.")]


def _final_finding(ok: pd.DataFrame, m: str, info: MeasureInfo) -> list[Text]:
    """Final layers against the best-matching layers, as means over the pairs with a final value."""
    fin = ok[np.isfinite(ok["final"].astype(float))]
    if fin.empty:
        return []
    fm, flo, fhi = _mean_ci(fin, "final", "final_ci_low", "final_ci_high")
    bm, blo, bhi = _mean_ci(fin, "best", "best_ci_low", "best_ci_high")
    word = "less" if _better(bm, fm, info) and abs(bm - fm) > 1e-9 else "as"
    return [T(f"Final layers are {word} alike {'than' if word == 'less' else 'as'} the best-matching "
              "layers: mean ", C(m), f" {f3(fm)} ({interval(flo, fhi, 'interval')}) final against final, "
              f"{f3(bm)} ({interval(blo, bhi, 'interval')}) at the best layers, over {plural(len(fin), 'pair')}.")]


def index_reading(h: float, baseline: str = "random-init", low: float = math.nan) -> str:
    """One sentence reading a homogenization index value against its baseline; an interval whose lower
    end ``low`` is 0 (or below) is read as not distinguishable from the baseline, whatever the value."""
    than = {"random-init": "untrained networks of the same shapes",
            "permutation null mean": "their permutation null (the random-init control was not run)"}.get(
        baseline, "their baselines (random-init where run, else the permutation null)")
    if math.isfinite(low) and low <= 0 < h:
        return (f"Its interval reaches 0, so the models are not distinguishably more alike than {than} "
                "(more rows or documents narrow it).")
    if h <= 0:  # every pair at or below its baseline (the index clips each pair at 0)
        return f"The models are no more alike than {than}."
    if h < 0.1:
        return f"The models are barely more alike than {than}."
    if h < 0.4:
        return f"The models are somewhat more alike than {than}."
    if h < 0.7:
        return f"The models are substantially more alike than {than}."
    if h < 0.9:
        return f"The models are strongly alike at their best-matching layers, well above {than}."
    return f"The models are close to identical at their best-matching layers, well above {than}."


def _controls_clause(r: Any, where: str) -> str:
    parts = []
    ri = num(getattr(r, f"{where}_random_init"))
    if math.isfinite(ri):
        parts.append(f"random-init {f3(ri)}")
    nm = num(getattr(r, f"{where}_null_mean"))
    if math.isfinite(nm):
        parts.append(f"null {f3(nm)}, {p_is('q', getattr(r, f'{where}_q_value'))}")
    return f"; {', '.join(parts)}" if parts else ""


#: A model kind in the plural, as a sentence reads it.
KIND_PLURALS = {"encoder": "encoders", "decoder": "decoders", "encoder-decoder": "encoder-decoder models",
                "recurrent": "recurrent language models"}


def _kind_finding(ok: pd.DataFrame, manifest: Mapping[str, Any], m: str, info: MeasureInfo) -> list[Text]:
    kinds, recipes = model_kinds(manifest), model_recipes(manifest)
    if not kinds:
        return []
    groups: dict[str, list[int]] = {}
    for k, r in enumerate(ok.itertuples(index=False)):
        ka, kb = kinds.get(str(r.model_a)), kinds.get(str(r.model_b))
        if ka is None or kb is None or seed_pair(r.model_a, r.model_b, recipes):  # seeds: the ceiling
            continue
        key = ka if ka == kb else ("mixed" if {ka, kb} == {"encoder", "decoder"} else None)
        if key is not None:  # pairs with a recurrent or encoder-decoder model: the family table reads them
            groups.setdefault(key, []).append(k)
    if not ("decoder" in groups and "encoder" in groups):
        present = sorted(set(kinds.values()))
        if len(present) == 1 and len(ok) > 0:
            return [T(f"All models are {KIND_PLURALS.get(present[0], present[0] + ' models')}, so decoders and "
                      "encoders cannot be compared here.")]
        return []
    stats = {}
    for key, idx in groups.items():
        sub = ok.iloc[idx]
        stats[key] = (*_mean_ci(sub, "best", "best_ci_low", "best_ci_high"), len(sub))
    dm, dlo, dhi, dn = stats["decoder"]
    em, elo, ehi, en = stats["encoder"]
    more = _better(dm, em, info)
    overlap = finite(dlo, dhi, elo, ehi) and not (dlo > ehi or elo > dhi)
    tail = (" The intervals overlap, so the difference is not established." if overlap
            else (" The intervals do not overlap." if finite(dlo, dhi, elo, ehi) else ""))
    mixed = (f" Mixed encoder\u2013decoder pairs: {f3(stats['mixed'][0])} over {stats['mixed'][3]}."
             if "mixed" in stats else "")
    return [T(f"Decoders resemble each other {'more' if more else 'less'} than encoders do: mean best ", C(m),
              f" {f3(dm)} ({interval(dlo, dhi, 'interval')}) over {dn} decoder pair{'s' if dn != 1 else ''} "
              f"against {f3(em)} ({interval(elo, ehi, 'interval')}) over {en} encoder pair{'s' if en != 1 else ''}.",
              mixed, tail)]


#: a layer whose largest dimension holds more than this share of the variance is flagged
OUTLIER_SHARE = 0.5


def _outlier_findings(manifest: Mapping[str, Any]) -> list[Text]:
    """One sentence per model with massive activations: layers where a single dimension holds more than
    :data:`OUTLIER_SHARE` of the variance (from the manifest's per-layer outlier report). CKA on such
    layers mostly compares that one dimension."""
    out = []
    for model in manifest.get("models") or []:
        layers = [r for r in model.get("outliers") or [] if num(r.get("top_dim_share")) > OUTLIER_SHARE]
        if not layers:
            continue
        top = max(layers, key=lambda r: num(r.get("top_dim_share")))
        dims = sorted({int(r["top_dim"]) for r in layers if "top_dim" in r})
        out.append(T("In ", B(model.get("name", "?")), f", one dimension holds more than "
                     f"{OUTLIER_SHARE:.0%} of the variance in {len(layers)} of {len(model['outliers'])} layers "
                     f"(up to {num(top.get('top_dim_share')):.1%} at layer {int_txt(top.get('layer'))}; "
                     f"dimension{'s' if len(dims) > 1 else ''} {', '.join(map(str, dims[:5]))}). Similarity "
                     "scores at those layers mostly compare that one dimension (massive activations); read them "
                     "with care."))
    return out


def _measures_agree(primary: str, summaries: Mapping[str, MeasureSummary]) -> list[Text]:
    """Whether the other measures pick the same most alike pair as the primary measure."""
    tops = {x: s.most.key(s.symmetric) for x, s in summaries.items() if s.most is not None}
    others = [x for x in summaries if x != primary]
    if not others or primary not in tops or len(tops) < 2:
        return []
    same = [x for x in others if x in tops and tops[x] == tops[primary]]
    differ = [x for x in others if x in tops and tops[x] != tops[primary]]
    if not differ:
        return [T(f"The other measure{'s' if len(same) > 1 else ''} (", join(T(C(x)) for x in same),
                  ") agree" if len(same) > 1 else ") agrees", " on the most alike pair.")]
    return [T("The measures disagree on the most alike pair: ", join(T(C(x)) for x in differ),
              " pick" if len(differ) > 1 else " picks", " a different pair than ", C(primary), ".")]


def _agreement_findings(extra: Mapping[str, pd.DataFrame]) -> list[Text]:
    """Sentences on the probes, the pairwise agreement and the agreement over all models, where given."""
    out: list[Text] = []
    if extra.get("probes") is not None:
        out += _probe_finding(extra["probes"])
    if extra.get("agreement") is not None:
        out += _pairwise_finding(_sel(extra["agreement"]))
    if extra.get("homogenization") is not None:
        out += _sets_findings(_sel(extra["homogenization"]))
    return out


def _probe_finding(probes: pd.DataFrame) -> list[Text]:
    best = probe_best(probes)
    best = best[np.isfinite(best["accuracy"])]
    if best.empty:
        return []
    hi, lo = best.loc[best["accuracy"].idxmax()], best.loc[best["accuracy"].idxmin()]
    chance = f"; chance {f3(hi.chance)}" if math.isfinite(hi.chance) else ""
    if f3(hi.accuracy) == f3(lo.accuracy):  # every model alike: one value, every model named
        named = join([T(B(r.model), f" (layer {r.layer})") for r in best.itertuples()])
        return [T(f"Linear probes at each model's best layer reach the same accuracy, {f3(hi.accuracy)} "
                  f"({interval(hi.ci_low, hi.ci_high)}): ") + named + T(f"{chance}.")]
    return [T("Linear probes at each model's best layer reach accuracy from ", f3(lo.accuracy),
              f" ({interval(lo.ci_low, lo.ci_high)}; ", B(lo.model), f", layer {lo.layer}) to ",
              f3(hi.accuracy), f" ({interval(hi.ci_low, hi.ci_high)}; ", B(hi.model), f", layer {hi.layer}){chance}.")]


def _pairwise_finding(a: pd.DataFrame) -> list[Text]:
    """The mean pairwise Cohen's kappa (else agreement) of the probes' predictions."""
    for measure, label in (("cohen_kappa", "Cohen's kappa"), ("agreement", "agreement")):
        g = a[a["measure"] == measure]
        if g.empty:
            continue
        ind = column(g, "expected_independent")
        ind_txt = (f"; {f3(np.nanmean(ind))} if the models erred independently at their own rates"
                   if np.isfinite(ind).any() else "")
        lo, hi = column(g, "ci_low"), column(g, "ci_high")
        lo_hi = f", interval {span(lo.mean(), hi.mean())}" if np.isfinite(lo).all() and np.isfinite(hi).all() else ""
        v = column(g, "value")
        mean = float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan
        return [T(f"Probe predictions: mean pairwise {label} {f3(mean)} over {plural(len(g), 'pair')}{lo_hi}{ind_txt}.")]
    return []


def _sets_findings(s: pd.DataFrame) -> list[Text]:
    """Fleiss' kappa over all models and the outcome homogenization h_avg over instances."""
    out = []
    fk = s[s["measure"] == "fleiss_kappa"]
    if not fk.empty:
        r = fk.iloc[0]
        k = f" over all {int(num(r.get('k')))} models" if math.isfinite(num(r.get("k"))) else ""
        ind = num(r.get("expected_independent"))
        out.append(T(f"Fleiss' kappa{k}: {f3(r['value'])}"
                     + (f" (independent errors would give {f3(ind)})" if math.isfinite(ind) else "") + "."))
    h = s[s["measure"] == "h_avg"]
    if "groups" in h:
        h = h[h["groups"] == "instances"] if (h["groups"] == "instances").any() else h
    if h.empty:
        return out
    r = h.iloc[0]
    extra_txt = ""
    if math.isfinite(num(r.get("null_mean"))):
        extra_txt = f"; null mean {f3(r.get('null_mean'))}, {p_is('p', r.get('p_value'))}"
    p = num(r.get("p_value"))
    if math.isfinite(p) and p >= ALPHA:
        reading = (f"not distinguishable from independent failures ({p_is('p', p)}), so no claim of shared "
                   "failures is made")
    elif num(r["value"]) > 1:
        reading = "failures concentrate on the same instances more than independent models' would"
    else:
        reading = "failures are no more shared than independent models' would be"
    k = num(r.get("k"))
    many = (f" Over {int(k)} models the rate at which all fail together, had they failed independently, is the "
            "product of their error rates, which shrinks fast as models are added: read h_avg against its null "
            "mean rather than against 1.") if math.isfinite(k) and k > 4 else ""
    out.append(T(f"Outcome homogenization h_avg = {f3(r['value'])} over instances (1 = failures as if "
                 f"independent{extra_txt}): {reading}.{many}"))
    return out


# ------------------------------------------------------------------------------------------ compare


@dataclass
class CompareView:
    """One new model against references (``manifest['study']['pairs'] == 'first-vs-rest'``).

    Attributes:
        new: the new model (first of ``manifest['models']``); references: the others, in order.
        measure: the measure of the per-layer table (the primary measure).
        per_layer: one row per layer of the new model and reference: reference, layer, depth,
            best_layer, best_depth, value, ci_low, ci_high, q_value, random_init.
        overall: per measure, :func:`controls_table` rows of the pairs (new, reference).
        order: per reference, Spearman's rho between the new model's layer and its best-matching
            reference layer (NaN where undefined).
        verdict: the verdict paragraph.
    """

    new: str
    references: list[str]
    measure: str
    per_layer: pd.DataFrame
    overall: dict[str, pd.DataFrame]
    order: dict[str, float]
    verdict: list[Text]


def compare_view(frame: pd.DataFrame, manifest: Mapping[str, Any] | None,
                 infos: Mapping[str, MeasureInfo]) -> CompareView | None:
    """The comparison of the first model with the others, where the study is a comparison
    (``manifest['study']['pairs'] == 'first-vs-rest'``); None otherwise."""
    manifest = manifest or {}
    if str((manifest.get("study") or {}).get("pairs") or "") != "first-vs-rest":
        return None
    names = [str(m.get("name")) for m in manifest.get("models") or [] if isinstance(m, Mapping) and m.get("name")]
    order_ = model_order(frame, names)
    if len(order_) < 2:
        return None
    new, refs = order_[0], order_[1:]
    m = primary_measure(frame, manifest, infos) or measures_of(frame)[0]
    info = infos[m]
    better = np.nanargmax if info.higher_is_more_alike else np.nanargmin
    rows, spear = [], {}
    for ref in refs:
        try:
            g, transposed = pair_rows(frame, new, ref, m, info)
        except ValueError:
            continue
        la, lb = ("layer_b", "layer_a") if transposed else ("layer_a", "layer_b")
        ia, ib = g[la].astype(int).to_numpy(), g[lb].astype(int).to_numpy()
        na, nb = int(ia.max()) + 1, int(ib.max()) + 1
        cols = {c: np.full((na, nb), np.nan) for c in ("value", "ci_low", "ci_high", "p_value", "random_init")}
        for c in cols:
            cols[c][ia, ib] = column(g, c)
        q = bh_adjust(cols["p_value"])
        path = []
        for i in range(na):
            if not np.isfinite(cols["value"][i]).any():
                continue
            j = int(better(cols["value"][i]))
            path.append((i, j))
            rows.append({"reference": ref, "layer": i, "depth": i / max(na - 1, 1), "best_layer": j,
                         "best_depth": j / max(nb - 1, 1), "value": cols["value"][i, j],
                         "ci_low": cols["ci_low"][i, j], "ci_high": cols["ci_high"][i, j], "q_value": q[i, j],
                         "random_init": cols["random_init"][i, j]})
        spear[ref] = _spearman([p[0] for p in path], [p[1] for p in path])
    per_layer = pd.DataFrame(rows, columns=["reference", "layer", "depth", "best_layer", "best_depth", "value",
                                            "ci_low", "ci_high", "q_value", "random_init"])
    overall = {}
    for x in measures_of(frame):
        t = controls_table(frame, x, infos[x])
        keep = [(r.model_a == new and r.model_b in refs) or (infos[x].symmetric and r.model_b == new
                                                                and r.model_a in refs)
                for r in t.itertuples(index=False)]
        overall[x] = t[keep].reset_index(drop=True)
    view = CompareView(new, refs, m, per_layer, overall, spear, [])
    view.verdict = _compare_verdict(view, info)
    return view


def _spearman(x: Sequence[int], y: Sequence[int]) -> float:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def _compare_verdict(view: CompareView, info: MeasureInfo) -> list[Text]:
    t = view.overall.get(view.measure)
    if t is None or t.empty:
        return [T("No reference has scores against ", B(view.new), ".")]
    ok = t[np.isfinite(t["best"].astype(float))].copy()
    ok["ref"] = [r.model_b if r.model_a == view.new else r.model_a for r in ok.itertuples(index=False)]
    sig = ok[ok["best_verdict"] != VERDICT_NS]
    ns = ok[ok["best_verdict"] == VERDICT_NS]
    hi = info.higher_is_more_alike
    out: list[Text] = []
    if sig.empty:
        out.append(T(B(view.new), " is not distinguishable from its permutation null against any reference under ",
                     C(view.measure), ": the data do not show it to resemble them."))
        return out
    top = sig.loc[sig["best"].idxmax() if hi else sig["best"].idxmin()]
    s = T(B(view.new), " is most alike ", B(top.ref), " under ", C(view.measure), ": ", f3(top.best),
          f" ({interval(top.best_ci_low, top.best_ci_high)}) at its layer {int_txt(top.best_layer_a)} of "
          f"{top.layers_a - 1} and layer {int_txt(top.best_layer_b)} of {top.layers_b - 1} of the reference",
          _controls_clause(top, "best"), ".")
    if top.best_vs_random in _BASELINE_CLAUSE:
        s = s + T(_BASELINE_CLAUSE[top.best_vs_random])
    elif top.best_vs_random == "above":
        s = s + T(" That is above the random-init baseline.")
    out.append(s)
    if len(ok) > 1:
        low = ok.loc[ok["best"].idxmin() if hi else ok["best"].idxmax()]
        if low.ref != top.ref:
            out.append(T("It is least alike ", B(low.ref), f": {f3(low.best)} "
                         f"({interval(low.best_ci_low, low.best_ci_high)})"
                         + (", not distinguishable from its null" if low.best_verdict == VERDICT_NS else "") + "."))
    fin = ok[np.isfinite(ok["final"].astype(float))]
    if not fin.empty:
        ftop = fin.loc[fin["final"].idxmax() if hi else fin["final"].idxmin()]
        out.append(T("Final layer against final layer it is closest to ", B(ftop.ref),
                     f" ({f3(ftop.final)}, {interval(ftop.final_ci_low, ftop.final_ci_high)})."))
    rho = view.order.get(top.ref, math.nan)
    if math.isfinite(rho):
        how = ("in the same order" if rho >= 0.8 else "roughly in order" if rho >= 0.4
               else "out of order")
        out.append(T("Its layers map onto ", B(top.ref), f"'s {how} (Spearman rho {rho:.2f} between its layer and "
                     "the best-matching reference layer)."))
    if not ns.empty:
        names = join(T(B(r.ref)) for r in ns.itertuples(index=False))
        out.append(T("Not distinguishable from the null against: ", names, "."))
    return out
