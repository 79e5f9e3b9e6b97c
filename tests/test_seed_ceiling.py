"""The seed ceiling: two seeds of one training recipe as the ceiling every cross-model score is read against
(the random-init control being the floor), in the analysis, the homogenization index and the report.

The synthetic study: two recipes of three seeds each (``zoo-lstm``, recurrent; ``zoo-gpt``, decoder) and one
encoder without a recipe; 3 layers per model, the best cell (1, 1) of a pair holds its value ``v``, the final cell
(2, 2) holds ``v - 0.1`` and every other cell ``v / 2``; bootstrap bounds ``v -+ 0.02`` in every cell, the
random-init control 0.3 and a permutation null of mean 0.05 (p = 0.001; the pair lstm-s0 and bert is never above
its null: p = 0.5).
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_report import _tiny  # noqa: E402
from test_report_document import _same_content  # noqa: E402

from homoscope.report import (  # noqa: E402
    findings_record,
    gather,
    homogenization_index,
    load_results,
    rebuild_report,
    resolve_measure_info,
    write_outputs,
    write_report_html,
    write_report_md,
)
from homoscope.report.analysis import (  # noqa: E402
    CEILING_DEFINITION,
    SEED_FAMILY,
    controls_table,
    family_table,
    findings,
    index_text,
    model_recipes,
    pair_ceilings,
    seed_ceilings,
    seed_pair,
)

#: report.md of the synthetic study without recipes, as the report was written before the seed ceiling existed.
#: A deliberate change of the report's wording or layout rewrites this file (render it anew).
BEFORE = Path(__file__).parent / "data" / "seed_study_without_recipes.md"

MEASURE = "debiased_cka"

# name, recipe, seed, kind
SEED_MODELS = [
    ("lstm-s0", "zoo-lstm", 0, "recurrent"), ("lstm-s1", "zoo-lstm", 1, "recurrent"),
    ("lstm-s2", "zoo-lstm", 2, "recurrent"),
    ("gpt-s0", "zoo-gpt", 0, "decoder"), ("gpt-s1", "zoo-gpt", 1, "decoder"), ("gpt-s2", "zoo-gpt", 2, "decoder"),
    ("bert", "", None, "encoder"),
]
SEED_VALUES = {  # the seed pairs of each recipe
    ("lstm-s0", "lstm-s1"): 0.80, ("lstm-s0", "lstm-s2"): 0.84, ("lstm-s1", "lstm-s2"): 0.88,
    ("gpt-s0", "gpt-s1"): 0.70, ("gpt-s0", "gpt-s2"): 0.74, ("gpt-s1", "gpt-s2"): 0.78,
}
NS_PAIR = ("lstm-s0", "bert")
RANDOM_INIT = 0.3


def seed_value(a: str, b: str) -> float:
    """The best score of the pair (a, b) in the synthetic study."""
    if (a, b) in SEED_VALUES:
        return SEED_VALUES[(a, b)]
    ka, kb = a.split("-")[0], b.split("-")[0]
    if {ka, kb} == {"lstm", "gpt"}:
        return 0.50 + 0.01 * (int(a[-1]) + 3 * int(b[-1]))  # 0.50 .. 0.58
    return 0.45 if "lstm" in (ka, kb) else 0.60  # with bert


def seed_frame(random_init: dict | None = None) -> pd.DataFrame:
    """The synthetic results frame; ``random_init`` overrides the control of some pairs ``{(a, b): b}``."""
    rows = []
    names = [m[0] for m in SEED_MODELS]
    for a, b in itertools.combinations(names, 2):
        v = seed_value(a, b)
        ri = (random_init or {}).get((a, b), RANDOM_INIT)
        for i in range(3):
            for j in range(3):
                val = v if (i, j) == (1, 1) else v - 0.1 if (i, j) == (2, 2) else v / 2
                rows.append(dict(model_a=a, layer_a=i, model_b=b, layer_b=j, measure=MEASURE, value=val, n=80,
                                 d_a=16, d_b=16, unit="sentence", ci_low=val - 0.02, ci_high=val + 0.02,
                                 null_mean=0.05, null_std=0.01, p_value=0.5 if (a, b) == NS_PAIR else 0.001,
                                 random_init=ri))
    return pd.DataFrame(rows)


def seed_manifest(recipes: bool = True) -> dict:
    """The study's manifest; without ``recipes`` its models carry no recipe or seed at all."""
    models = []
    for name, recipe, seed, kind in SEED_MODELS:
        m = {"name": name, "spec": f"zoo/{name}", "architecture": "Net", "kind": kind, "blocks": 2, "width": 16,
             "n_params": 10_000, "dtype": "float32", "license": "MIT", "notes": "", "fingerprint": name[:4],
             "source_kind": "folder", "location": f"zoo/{name}"}
        if recipes:
            m.update(recipe=recipe, seed=seed)
        models.append(m)
    return {"study": {"unit": "sentence", "pooling": "mean", "measures": [MEASURE]},
            "corpus": {"name": "seed-corpus", "source": "packaged", "n": 80, "n_docs": 8},
            "models": models, "created": "2026-01-01T00:00:00+00:00",
            "versions": {"python": "3.11", "homoscope": "0.1.0"}}


# ------------------------------------------------------------------------------------------------ tests


LSTM = [m[0] for m in SEED_MODELS if m[1] == "zoo-lstm"]
GPT = [m[0] for m in SEED_MODELS if m[1] == "zoo-gpt"]


def _infos(frame):
    return {m: resolve_measure_info(m) for m in frame.measure.unique()}


def _pairs():
    names = [m[0] for m in SEED_MODELS]
    return list(itertools.combinations(names, 2))


def _ceiling_by_hand(names):
    vals = [SEED_VALUES[p] for p in itertools.combinations(names, 2)]
    return np.mean(vals), np.mean(vals) - 0.02, np.mean(vals) + 0.02, np.mean(vals) - 0.1


def _c_by_hand(a, b, ceil):
    cs = [ceil[r] for r in {_recipe_of(a), _recipe_of(b)} if r in ceil]
    return np.mean(cs) if cs else math.nan


def _recipe_of(name):
    return {"lstm": "zoo-lstm", "gpt": "zoo-gpt"}.get(name.split("-")[0])


def _h_seed_by_hand(ceil, random_init=None):
    """H_seed over the cross-model pairs by its definition: (value, low, high, pairs left out as c <= b)."""
    terms, lows, highs, left_out = [], [], [], []
    for a, b in _pairs():
        if _recipe_of(a) is not None and _recipe_of(a) == _recipe_of(b):
            continue  # a seed pair
        c, floor = _c_by_hand(a, b, ceil), (random_init or {}).get((a, b), RANDOM_INIT)
        if math.isnan(c):
            continue
        if c <= floor:
            left_out.append((a, b))
            continue
        s = seed_value(a, b)

        def t(x):
            return min(max((x - floor) / (c - floor), 0.0), 1.0)

        ns = (a, b) == NS_PAIR  # never above its null: counts 0
        terms.append(0.0 if ns else t(s))
        lows.append(0.0 if ns else t(s - 0.02))
        highs.append(t(s + 0.02))
    return np.mean(terms), np.mean(lows), np.mean(highs), left_out, len(terms)


def test_seed_ceilings_are_the_means_of_each_recipes_seed_pairs():
    frame, manifest = seed_frame(), seed_manifest()
    table = seed_ceilings(frame, manifest, _infos(frame))
    assert list(table.recipe) == ["zoo-lstm", "zoo-gpt"]  # bert, without a recipe, has no row
    for r, names, kind in zip(table.itertuples(), (LSTM, GPT), ("recurrent", "decoder")):
        ceiling, low, high, final = _ceiling_by_hand(names)
        assert r.kind == kind and r.n_seeds == 3 and r.seeds == [0, 1, 2] and r.n_pairs == 3 and r.n_final == 3
        assert r.ceiling == pytest.approx(ceiling) and r.final == pytest.approx(final)
        assert (r.ceiling_low, r.ceiling_high) == (pytest.approx(low), pytest.approx(high))
        assert (r.final_low, r.final_high) == (pytest.approx(final - 0.02), pytest.approx(final + 0.02))
    assert table.ceiling.tolist() == pytest.approx([0.84, 0.74])
    assert seed_ceilings(frame, seed_manifest(recipes=False), _infos(frame)).empty


def test_pair_ceilings_average_the_recipes_that_have_one_and_are_missing_where_none_has():
    frame, manifest = seed_frame(), seed_manifest()
    infos = _infos(frame)
    table = controls_table(frame, MEASURE, infos[MEASURE])
    recipes = model_recipes(manifest)
    ceilings = seed_ceilings(frame, manifest, infos)
    got = dict(zip(zip(table.model_a, table.model_b), pair_ceilings(table, recipes, ceilings)))
    ceil = {"zoo-lstm": 0.84, "zoo-gpt": 0.74}
    for (a, b), c in got.items():
        if seed_pair(a, b, recipes):
            assert math.isnan(c), (a, b)
        else:
            assert c == pytest.approx(_c_by_hand(a, b, ceil)), (a, b)
    assert got[("lstm-s0", "gpt-s1")] == pytest.approx((0.84 + 0.74) / 2)
    assert got[("gpt-s2", "bert")] == pytest.approx(0.74)
    # the gpt models without their recipe: gpt x bert and gpt x gpt have no ceiling; lstm x gpt only the lstm one
    manifest["models"] = [{**m, "recipe": ""} if m["name"] in GPT else m for m in manifest["models"]]
    recipes = model_recipes(manifest)
    ceilings = seed_ceilings(frame, manifest, infos)
    assert list(ceilings.recipe) == ["zoo-lstm"]
    got = dict(zip(zip(table.model_a, table.model_b), pair_ceilings(table, recipes, ceilings)))
    assert math.isnan(got[("gpt-s0", "bert")]) and math.isnan(got[("gpt-s0", "gpt-s1")])
    assert got[("lstm-s2", "gpt-s0")] == pytest.approx(0.84) and math.isnan(got[("lstm-s0", "lstm-s1")])


def test_the_index_leaves_seed_pairs_out():
    frame, manifest = seed_frame(), seed_manifest()
    idx = homogenization_index(frame, manifest, _infos(frame))
    terms, lows, highs = [], [], []
    for a, b in _pairs():
        if _recipe_of(a) is not None and _recipe_of(a) == _recipe_of(b):
            continue
        s, ns = seed_value(a, b), (a, b) == NS_PAIR

        def h(x):
            return min(max((x - RANDOM_INIT) / (1 - RANDOM_INIT), 0.0), 1.0)

        terms.append(0.0 if ns else h(s))
        lows.append(0.0 if ns else h(s - 0.02))
        highs.append(h(s + 0.02))
    assert idx.n_pairs == len(terms) == 15 and idx.n_seed_pairs == 6
    assert idx.value == pytest.approx(np.mean(terms))
    assert (idx.low, idx.high) == (pytest.approx(np.mean(lows)), pytest.approx(np.mean(highs)))
    assert "6 seed pairs (two seeds of one recipe) left out" in idx.note
    assert set(map(tuple, idx.pairs.loc[idx.pairs.seed_pair, ["model_a", "model_b"]].to_numpy())) == set(SEED_VALUES)
    plain = homogenization_index(frame, seed_manifest(recipes=False), _infos(frame))
    assert plain.n_pairs == 21 and plain.n_seed_pairs == 0 and not plain.seed_computed and plain.seed_note == ""
    assert "seed" not in plain.note and "H_seed" not in index_text(plain).plain()


def test_h_seed_reads_each_cross_model_pair_between_its_floor_and_its_ceiling():
    frame, manifest = seed_frame(), seed_manifest()
    idx = homogenization_index(frame, manifest, _infos(frame))
    value, low, high, left_out, n = _h_seed_by_hand({"zoo-lstm": 0.84, "zoo-gpt": 0.74})
    assert idx.seed_computed and idx.n_ceiling_pairs == n == 15 and not left_out and idx.below_floor == ()
    assert idx.seed_value == pytest.approx(value)
    assert (idx.seed_low, idx.seed_high) == (pytest.approx(low), pytest.approx(high))
    assert idx.seed_low <= idx.seed_value <= idx.seed_high
    text = index_text(idx).plain()
    assert (f"H_seed = {value:.3f} (interval {low:.3f}\u2013{high:.3f}; 15 cross-model pairs with a seed "
            "ceiling)") in text
    assert f"{value:.0%} of the way from their floor to their seed ceiling" in text


def test_pairs_whose_ceiling_is_not_above_their_floor_are_left_out_of_h_seed_and_named():
    above = {("gpt-s0", "bert"): 0.80, ("lstm-s1", "gpt-s2"): 0.795}  # c = 0.74 and 0.79
    frame, manifest = seed_frame(random_init=above), seed_manifest()
    idx = homogenization_index(frame, manifest, _infos(frame))
    value, low, high, left_out, n = _h_seed_by_hand({"zoo-lstm": 0.84, "zoo-gpt": 0.74}, above)
    assert set(idx.below_floor) == set(left_out) == set(above) and idx.n_ceiling_pairs == n == 13
    assert idx.seed_value == pytest.approx(value) and (idx.seed_low, idx.seed_high) == (pytest.approx(low),
                                                                                          pytest.approx(high))
    assert "2 pairs whose ceiling is not above its floor (c \u2264 b) left out" in idx.seed_note
    assert idx.n_pairs == 15  # H keeps them (each counts 0: below its floor)
    text = index_text(idx).plain()
    assert "Left out of H_seed, their seed ceiling not above their floor (c \u2264 b): " in text
    assert "lstm-s1 and gpt-s2" in text and "gpt-s0 and bert" in text
    # every floor above every ceiling: H_seed is not computed and says why
    frame = seed_frame(random_init={p: 0.95 for p in _pairs()})
    idx = homogenization_index(frame, manifest, _infos(frame))
    assert not idx.seed_computed and idx.seed_note.startswith("not computed") and len(idx.below_floor) == 15
    assert "H_seed (between the floor and the seed ceiling): not computed" in index_text(idx).plain()


def test_a_study_of_seeds_alone_has_no_cross_model_pair():
    frame, manifest = seed_frame(), seed_manifest()
    lstm = frame[frame.model_a.isin(LSTM) & frame.model_b.isin(LSTM)].reset_index(drop=True)
    idx = homogenization_index(lstm, manifest, _infos(lstm))
    assert not idx.computed and idx.n_seed_pairs == 3 and "no cross-model pair" in idx.note


def test_family_table_puts_seed_pairs_in_a_group_of_their_own():
    frame, manifest = seed_frame(), seed_manifest()
    fam = family_table(frame, manifest, _infos(frame)).set_index("family")
    assert list(fam.index) == [SEED_FAMILY, "decoder / encoder", "decoder / recurrent", "encoder / recurrent"]
    assert fam.loc[SEED_FAMILY, "scope"] == "seeds" and fam.loc[SEED_FAMILY, "n_pairs"] == 6
    assert fam.loc[SEED_FAMILY, "mean"] == pytest.approx(np.mean(list(SEED_VALUES.values())))
    cross = [seed_value(a, b) for a in LSTM for b in GPT]
    dr = fam.loc["decoder / recurrent"]
    assert dr.n_pairs == 9 and dr.scope == "across families"
    assert fam.loc["decoder / recurrent", "mean"] == pytest.approx(np.mean(cross))
    assert (fam.loc["decoder / recurrent", "low"], fam.loc["decoder / recurrent", "high"]) == (
        pytest.approx(np.mean(cross) - 0.02), pytest.approx(np.mean(cross) + 0.02))
    # without the gpt recipe its models are three decoders of one family, no longer seeds
    manifest["models"] = [{**m, "recipe": ""} if m["name"] in GPT else m for m in manifest["models"]]
    fam = family_table(frame, manifest, _infos(frame)).set_index("family")
    assert fam.loc["decoder / decoder", "scope"] == "within family" and fam.loc["decoder / decoder", "n_pairs"] == 3
    assert fam.loc["decoder / decoder", "mean"] == pytest.approx(0.74)
    assert fam.loc[SEED_FAMILY, "n_pairs"] == 3 and fam.loc[SEED_FAMILY, "mean"] == pytest.approx(0.84)


def test_seed_pairs_are_not_read_as_decoders_resembling_each_other():
    models = ["enc-a", "enc-b", "dec-a", "dec-b"]
    kinds = {"enc-a": "encoder", "enc-b": "encoder", "dec-a": "decoder", "dec-b": "decoder"}
    values = {("enc-a", "enc-b"): 0.5, ("dec-a", "dec-b"): 0.9, ("enc-a", "dec-a"): 0.3, ("enc-a", "dec-b"): 0.3,
              ("enc-b", "dec-a"): 0.3, ("enc-b", "dec-b"): 0.3}
    f, manifest = _tiny(models, values, kinds)
    assert any(t.plain().startswith("Decoders resemble") for t in findings(f, manifest, _infos(f)))
    for m in manifest["models"]:
        if m["name"].startswith("dec"):
            m.update(recipe="zoo-gpt", seed=int(m["name"] == "dec-b"))
    assert not any(t.plain().startswith("Decoders resemble") for t in findings(f, manifest, _infos(f)))


def test_the_report_has_the_seed_ceiling_section_and_each_pairs_ceiling(tmp_path):
    frame, manifest = seed_frame(), seed_manifest()
    write_report_md(frame, manifest, tmp_path, {})
    write_report_html(frame, manifest, tmp_path, {})
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    _same_content(md, page)
    assert "\n## Seed ceiling\n" in md and "<h2>Seed ceiling</h2>" in page and 'href="#ceiling"' in page
    assert "Seed ceiling of a training recipe: where the study has two or more models of one recipe" in md
    assert ("| recipe | kind | models (seeds) | seed pairs | ceiling | interval | at layers | random-init | final | "
            "final interval |") in md
    assert ("| zoo-lstm | recurrent | 3 (0, 1, 2) | 3 | **0.840** | 0.820–0.860 | 1/1, 1/1, 1/1 | 0.300 | 0.740 | "
            "0.720–0.760 |") in md
    assert "| family | scope | pairs | mean best | interval |" in md
    assert "| decoder / recurrent | across families | 9 | **0.540** | 0.520–0.560 |" in md
    assert "| pair | best | 95% CI | seed ceiling | random-init |" in md
    assert "| lstm-s0 vs gpt-s0 | **0.500** | 0.480–0.520 | 0.790 | 0.300 |" in md
    assert "| lstm-s0 vs lstm-s1 | **0.800** | 0.780–0.820 | same recipe | 0.300 |" in md
    assert "| **bert** | Net | encoder | 2 | 16 | 10k | float32 | – | MIT | folder `zoo/bert` |  | – | – |" in md
    assert "H\\_seed = " in md and "Two seeds of one recipe are not a cross-model pair" in md
    record = findings_record(gather(frame, manifest, tmp_path))
    assert record["seed_ceiling"]["definition"] == CEILING_DEFINITION
    assert [r["ceiling"] for r in record["seed_ceiling"]["recipes"]] == pytest.approx([0.84, 0.74])
    assert record["homogenization_index"]["n_seed_pairs"] == 6
    assert record["homogenization_index"]["seed_value"] == pytest.approx(homogenization_index(
        frame, manifest, _infos(frame)).seed_value)
    json.dumps(record, allow_nan=False)


def test_a_study_without_recipes_renders_as_before(tmp_path):
    frame = seed_frame()
    expected = BEFORE.read_text(encoding="utf-8")
    empty = seed_manifest()  # every model states no recipe, as a model loaded from outside a zoo does
    empty["models"] = [{**m, "recipe": "", "seed": None} for m in empty["models"]]
    for name, manifest in (("none", seed_manifest(recipes=False)), ("empty", empty)):
        write_report_md(frame, manifest, tmp_path / name, {})
        assert (tmp_path / name / "report.md").read_text(encoding="utf-8") == expected, name
        record = findings_record(gather(frame, manifest, tmp_path / name))
        assert "seed_ceiling" not in record and "seed_value" not in record["homogenization_index"]


def test_a_rebuild_carries_recipe_and_seed_through_the_manifest(tmp_path):
    keep = ["lstm-s0", "lstm-s1", "bert"]
    frame = seed_frame()
    frame = frame[frame.model_a.isin(keep) & frame.model_b.isin(keep)].reset_index(drop=True)
    study = tmp_path / "study"
    write_outputs(frame, seed_manifest(), study, progress=False, dpi=30)
    _, manifest, _ = load_results(study)
    got = {m["name"]: (m["recipe"], m["seed"]) for m in manifest["models"]}
    assert got["lstm-s1"] == ("zoo-lstm", 1) and got["bert"] == ("", None)
    original = (study / "report.md").read_bytes()
    assert b"\n## Seed ceiling\n" in original
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("similarity.parquet", "manifest.json"):
        shutil.copy(study / name, bare / name)
    rebuild_report(bare, progress=False, dpi=30)
    assert (bare / "report.md").read_bytes() == original


def test_most_alike_names_two_models_not_two_seeds_of_one_recipe():
    f = seed_frame()
    said = [t.plain() for t in findings(f, seed_manifest(), _infos(f))]
    top = next(s for s in said if s.startswith("Most alike"))
    # the seed pairs score 0.70-0.88; the best cross-model pair is a zoo-gpt seed with bert (0.60)
    assert "bert" in top and "0.600" in top, top
    f2 = seed_frame()
    plain = [t.plain() for t in findings(f2, seed_manifest(recipes=False), _infos(f2))]
    assert "0.880" in next(s for s in plain if s.startswith("Most alike"))  # without recipes: a pair like any other


def test_two_runs_with_one_seed_or_models_of_another_kind_are_no_seed_pairs():
    manifest = seed_manifest()
    by_name = {m["name"]: m for m in manifest["models"]}
    by_name["lstm-s2"]["seed"] = 0  # the same run as lstm-s0
    by_name["bert"].update(recipe="zoo-gpt", seed=7)  # an encoder claimed by a decoder recipe
    recipes = model_recipes(manifest)
    assert "lstm-s2" not in recipes and "bert" not in recipes and recipes["lstm-s1"] == "zoo-lstm"
    assert not seed_pair("lstm-s0", "lstm-s2", recipes) and seed_pair("lstm-s0", "lstm-s1", recipes)
    f = seed_frame()
    row = seed_ceilings(f, manifest, _infos(f)).set_index("recipe").loc["zoo-lstm"]
    assert row["n_pairs"] == 1 and row["ceiling"] == pytest.approx(SEED_VALUES[("lstm-s0", "lstm-s1")])


def test_the_lead_names_the_most_alike_models_not_two_seeds(tmp_path):
    frame = seed_frame()
    write_report_md(frame, seed_manifest(), tmp_path, {})
    lead = (tmp_path / "report.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert "the most alike pair is **gpt-s0** and **bert** (0.600" in lead, lead  # ties: the first pair
    write_report_md(frame, seed_manifest(recipes=False), tmp_path, {})
    lead = (tmp_path / "report.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert "the most alike pair is **lstm-s1** and **lstm-s2** (0.880" in lead, lead


@pytest.mark.parametrize("k, says", [(16, True), (4, False)])
def test_h_avg_over_many_models_is_read_against_its_null(k, says):
    from homoscope.report.analysis import _sets_findings

    s = pd.DataFrame([dict(measure="h_avg", groups="instances", value=16151.6, k=k, null_mean=3.2, p_value=0.001)])
    text = _sets_findings(s)[0].plain()
    assert ("read h_avg against its null mean rather than against 1" in text) is says
    assert f"Over {k} models" in text if says else "Over" not in text
