"""The report package: tables, figures, controls, findings, manifest and report.md from a synthetic results frame.

The data builders here (``make_frame``, ``make_manifest``, ``make_extra``, ``rendered``) are shared with
test_report_html.py, so that one set of outputs serves both.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from homoscope.report import (  # noqa: E402
    SUMMARY_COLUMNS,
    escape_md,
    layer_matrix,
    plot_layer_heatmap,
    plot_summary_heatmap,
    resolve_measure_info,
    summary_matrix,
    summary_table,
    write_outputs,
    write_report_md,
    write_tables,
)
from homoscope.report._common import check_frame, file_stems  # noqa: E402
from homoscope.report.figures import _colour_scale  # noqa: E402

EVIL = "../evil|model/x*<b>`[1]_<script>alert(\"x\")</script>&'q'"
CORPUS_NAME = 'demo <script>alert("c")</script> & "news"'
MODELS = [("minilm-l6", 3, 384), (EVIL, 5, 768), ("gemma-3-270m", 7, 640)]  # name, layers incl. 0, width
PAIRS = [(0, 1), (0, 2), (1, 2)]
INFO = {  # stands in for the measure registry
    "linear_cka": {"kind": "similarity", "value_range": (0, 1), "symmetric": True,
                   "reference": "Kornblith et al. 2019"},
    "debiased_cka": {"kind": "similarity", "value_range": (-1, 1), "symmetric": True, "reference": "Song et al. 2012"},
    "pwcca": {"kind": "similarity", "value_range": (0, 1), "symmetric": False, "reference": "Morcos et al. 2018"},
}


def measure_info(name):
    return INFO[name]


def make_frame(seed: int = 0, ci: bool = True) -> pd.DataFrame:
    """3 models (3, 5, 7 layers); linear_cka with CI/null/p/random-init (the pair EVIL-gemma not above its
    null anywhere), pwcca without controls, in both directions."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(measure, x, y, with_ci):
        (na, la, da), (nb, lb, db) = MODELS[x], MODELS[y]
        for i in range(la):
            for j in range(lb):
                v = float(np.clip(0.9 - 0.6 * abs(i / (la - 1) - j / (lb - 1)) + 0.05 * rng.standard_normal(), 0, 1))
                row = dict(model_a=na, layer_a=i, model_b=nb, layer_b=j, measure=measure, value=v,
                           n=64, d_a=da, d_b=db, unit="sentence")
                if ci:
                    nan = float("nan")
                    p = (0.001 if v > 0.5 and (x, y) != (1, 2) else 0.3) if with_ci else nan
                    row.update(ci_low=v - 0.03 if with_ci else nan, ci_high=v + 0.03 if with_ci else nan,
                               null_mean=0.05 if with_ci else nan, null_std=0.01 if with_ci else nan,
                               p_value=p, random_init=0.4 + 0.1 * (i + j) / (la + lb) if with_ci else nan)
                rows.append(row)

    for x, y in PAIRS:
        add("linear_cka", x, y, True)
    for x, y in PAIRS:
        add("pwcca", x, y, False)
        add("pwcca", y, x, False)
    return pd.DataFrame(rows)


def make_manifest() -> dict:
    return {
        "study": {"corpus": "demo", "sentences": 64, "seed": 0, "unit": "sentence", "pooling": "mean",
                  "max_length": 128, "dtype": "float32", "device": "cpu",
                  "measures": ["linear_cka", "pwcca"], "out": "results/demo"},
        "corpus": {"name": CORPUS_NAME, "source": "packaged", "n": 64, "n_docs": 8,
                   "labels": {"sport": 30, "science|tech": 34, "<b>arts</b> & 'co'": 5}, "meta": {"language": "en"}},
        "models": [
            {"name": "minilm-l6", "spec": "minilm-l6", "architecture": "BertModel", "kind": "encoder", "blocks": 2,
             "width": 384, "n_params": 22_713_216, "dtype": "float32", "license": "Apache-2.0",
             "notes": "sentence encoder", "final_norm_in_last": True, "fingerprint": "ab12", "source_kind": "packaged",
             "location": "cache/minilm"},
            {"name": EVIL, "spec": "x", "architecture": "GPT2LMHeadModel", "kind": "decoder", "blocks": 4,
             "width": 768, "n_params": 124e6, "dtype": "float32", "license": "MIT", "notes": "odd | name",
             "final_norm_in_last": False, "fingerprint": "cd`34", "source_kind": "hub", "location": "x/y"},
            {"name": "gemma-3-270m", "spec": "google/gemma-3-270m", "architecture": "Gemma3ForCausalLM",
             "kind": "decoder", "blocks": 6, "width": 640, "n_params": 268e6, "dtype": "bfloat16",
             "license": "Gemma Terms of Use", "notes": "", "final_norm_in_last": True, "fingerprint": "ef56",
             "source_kind": "hub", "location": "google/gemma-3-270m"},
        ],
        "versions": {"python": "3.11", "torch": "2.5", "homoscope": "0.1.0"},
        "timings": {"load_corpus": 0.5, "extract/minilm-l6": 3.0, "measures": 1.5},
        "warnings": ["gemma-3-270m: 2 texts truncated"],
        "commands": ["homoscope run results/demo/study.toml"],
        "created": "2025-01-01T00:00:00+00:00",
        "measures": {k: {**v, "value_range": list(v["value_range"])} for k, v in INFO.items()},
        "controls": {"random_init": [{"name": "minilm-l6 (random-init)", "fingerprint": "f00d",
                                      "notes": "random weights", "reused": False}]},
    }


def make_extra() -> dict:
    """Prediction-agreement frames in the layout the agreement package writes."""
    def acc(k, layers):  # rises with depth, drops at the last layer
        return 0.4 + 0.4 * k / (layers - 1) - 0.1 * (k == layers - 1)

    probes = pd.DataFrame([
        dict(model=name, layer=k, measure="probe_accuracy", value=acc(k, L), ci_low=acc(k, L) - 0.05,
             ci_high=acc(k, L) + 0.05, n=120, chance=0.5, best=(k == L - 2), unit="sentence")
        for name, L, _ in MODELS for k in range(L)])
    pairs = [(MODELS[x][0], MODELS[x][1] - 2, MODELS[y][0], MODELS[y][1] - 2) for x, y in PAIRS]
    agreement = pd.DataFrame([
        dict(model_a=a, layer_a=la, model_b=b, layer_b=lb, measure=m, value=v, n=120, expected_independent=ind,
             ci_low=v - 0.05, ci_high=v + 0.05, selection="best")
        for a, la, b, lb in pairs for m, v, ind in (("agreement", 0.81, 0.62), ("cohen_kappa", 0.6, 0.0),
                                                    ("error_overlap", 0.5, 0.2), ("jsd", 0.08, float("nan")))]
        + [dict(model_a=b, layer_a=lb, model_b=a, layer_b=la, measure="error_overlap_conditional", value=0.77,
                n=120, expected_independent=0.3, ci_low=0.7, ci_high=0.84, selection="best")  # one direction, b -> a
           for a, la, b, lb in pairs])
    homogenization = pd.DataFrame([
        dict(selection="best", models=",".join(m for m, _, _ in MODELS), layers="1,3,5", k=3, groups=g, measure=m,
             value=v, expected_independent=ind, null_mean=nm, p_value=pv, n=120)
        for g, m, v, ind, nm, pv in (("instances", "fleiss_kappa", 0.58, 0.1, float("nan"), float("nan")),
                                     ("instances", "h_avg", 2.4, 1.0, 1.02, 0.001),
                                     ("labels", "h_worst", 3.1, 1.3, 1.3, 0.01))])
    return {"probes": probes, "agreement": agreement, "homogenization": homogenization}


_RENDERED: dict = {}


def rendered(tmp_path_factory):
    """Outputs of the full synthetic study, written once per test run and shared by the report tests."""
    if "out" not in _RENDERED:
        out = tmp_path_factory.mktemp("report") / "out"
        files = write_outputs(make_frame(), make_manifest(), out, measure_info=measure_info, progress=False,
                              extra=make_extra(), dpi=72)
        _RENDERED["out"] = (out, files)
    return _RENDERED["out"]


@pytest.fixture(scope="module")
def frame():
    return make_frame()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return rendered(tmp_path_factory)


def _by_hand(frame, measure, a, b):
    g = frame[(frame.measure == measure) & (frame.model_a == a) & (frame.model_b == b)]
    best = max(g.itertuples(), key=lambda r: r.value)
    final = g[(g.layer_a == g.layer_a.max()) & (g.layer_b == g.layer_b.max())].value.item()
    return best, final, g.value.mean()


# ---------------------------------------------------------------------------------------------- outputs


def test_write_outputs_writes_every_file_inside_out_dir(outputs):
    out, files = outputs
    assert set(files) == {"tables", "heatmaps", "summaries", "controls", "agreement", "manifest", "report"}
    assert len(files["heatmaps"]) == 3 + 6  # one symmetric measure, one asymmetric (both directions)
    assert len(files["summaries"]) == 2 * 2 + 2  # best + final per measure, a dendrogram per measure
    assert [p.name for p in files["controls"]] == ["controls_linear_cka.png"]  # the only measure with controls
    assert [p.name for p in files["agreement"]] == ["probes.png"]
    assert [p.name for p in files["report"]] == ["report.md", "report.html"]
    names = {p.name for p in files["tables"]}
    assert {"similarity.parquet", "similarity.csv", "summary.csv", "probes.csv", "agreement.csv",
            "homogenization.csv"} <= names
    root = out.resolve()
    for paths in files.values():
        for p in paths:
            assert p.is_file(), p
            assert root in p.resolve().parents, p
    for p in files["heatmaps"]:
        assert p.parent.resolve() == (out / "heatmaps").resolve()
        assert re.fullmatch(r"[A-Za-z0-9._-]+__[A-Za-z0-9._-]+__vs__[A-Za-z0-9._-]+\.png", p.name), p.name
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert {p.name for p in files["summaries"]} >= {"summary_linear_cka_best.png", "summary_pwcca_final.png"}


def test_no_figure_left_open(outputs):
    assert plt.get_fignums() == []


def test_parquet_and_csv_round_trip(outputs, frame):
    out, _ = outputs
    pd.testing.assert_frame_equal(pd.read_parquet(out / "similarity.parquet"), frame)
    csv = pd.read_csv(out / "similarity.csv", keep_default_na=True)
    assert list(csv.columns) == list(frame.columns)
    np.testing.assert_array_equal(csv["value"].to_numpy(), frame["value"].to_numpy())  # full precision
    assert csv["model_b"].tolist() == frame["model_b"].tolist()


def test_manifest_json_round_trips(outputs):
    out, files = outputs
    assert files["manifest"] == [out / "manifest.json"]
    text = (out / "manifest.json").read_text(encoding="utf-8")
    assert text.startswith('{\n  "study"')  # indent 2
    assert json.loads(text) == json.loads(json.dumps(make_manifest()))


def test_heatmaps_are_valid_images(outputs):
    _, files = outputs
    for p in files["heatmaps"] + files["summaries"] + files["controls"] + files["agreement"]:
        img = mpimg.imread(p)
        h, w = img.shape[:2]
        assert img.ndim == 3 and img.shape[2] in (3, 4)
        assert 150 <= h <= 1200 and 250 <= w <= 1200, (p.name, img.shape)  # 72 dpi
        assert float(img[..., :3].std()) > 0.05, f"{p.name} looks blank"


def test_report_md_escapes_names_and_links_resolve(outputs, frame):
    out, files = outputs
    report = (out / "report.md").read_text(encoding="utf-8")
    for name, _, _ in MODELS:
        assert escape_md(name) in report
    assert EVIL not in report  # never raw: its '|' would split a table row
    for word in ("Gemma Terms of Use", "Kornblith et al. 2019", "Morcos et al. 2018", "homoscope run results/demo",
                 "2 texts truncated", "science\\|tech", "load\\_corpus", "22.7M"):
        assert word in report, word
    links = re.findall(r"!\[(?:\\.|[^\]\\])*\]\(([^)\s]+)\)", report)
    assert len(links) == sum(len(files[k]) for k in ("heatmaps", "summaries", "controls", "agreement"))
    for link in links:
        assert not link.startswith("/") and ".." not in Path(link).parts
        assert (out / link).is_file(), link
    assert "](heatmaps/" in report
    # every table row of the models table has the same number of cells as its header
    models_section = report.split("### Models")[1].split("###")[0]
    table = [ln for ln in models_section.splitlines() if ln.startswith("| **")]
    assert len(table) == 3
    assert {len(re.split(r"(?<!\\)\|", ln)) for ln in table} == {len(re.split(r"(?<!\\)\|", table[0]))}


def test_report_summary_paragraph_names_most_and_least_similar(outputs, frame):
    out, _ = outputs
    report = (out / "report.md").read_text(encoding="utf-8")
    table = summary_table(frame, "linear_cka", measure_info=measure_info)
    top, low = table.loc[table.best.idxmax()], table.loc[table.best.idxmin()]
    paragraph = report.split("\n\n")[1]
    assert f"{top.best:.3f}" in paragraph and f"{low.best:.3f}" in paragraph
    assert escape_md(top.model_a) in paragraph and escape_md(low.model_b) in paragraph
    assert "\u2192" in paragraph  # the asymmetric measure states its direction


# ------------------------------------------------------------------------------------------------ tables


def test_summary_table_matches_values_by_hand(frame):
    for measure in ("linear_cka", "pwcca"):
        table = summary_table(frame, measure, measure_info=measure_info)
        assert list(table.columns) == SUMMARY_COLUMNS
        expected_pairs = [(MODELS[x][0], MODELS[y][0]) for x, y in PAIRS]
        if measure == "pwcca":
            expected_pairs = [p for x, y in PAIRS for p in ((MODELS[x][0], MODELS[y][0]), (MODELS[y][0], MODELS[x][0]))]
        assert list(zip(table.model_a, table.model_b, strict=True)) == expected_pairs
        for r in table.itertuples():
            best, final, mean = _by_hand(frame, measure, r.model_a, r.model_b)
            assert r.best == best.value
            assert (r.best_layer_a, r.best_layer_b) == (best.layer_a, best.layer_b)
            assert r.best_depth_a == pytest.approx(best.layer_a / (r.layers_a - 1))
            assert r.best_depth_b == pytest.approx(best.layer_b / (r.layers_b - 1))
            assert r.final == final and r.mean == pytest.approx(mean)
            assert r.n == 64
    cka = summary_table(frame, "linear_cka", measure_info=measure_info)
    assert (cka.best_ci_high - cka.best_ci_low).round(6).eq(0.06).all()
    assert summary_table(frame, "pwcca", measure_info=measure_info).best_ci_low.isna().all()


def test_summary_table_takes_min_for_a_distance(frame):
    dist = frame[frame.measure == "linear_cka"].assign(measure="cka_distance")
    info = {"kind": "distance", "value_range": (0, None), "symmetric": True, "reference": ""}
    table = summary_table(dist, "cka_distance", measure_info=lambda _n: info)
    for r in table.itertuples():
        g = dist[(dist.model_a == r.model_a) & (dist.model_b == r.model_b)]
        assert r.best == g.value.min()


def test_summary_matrix_mirrors_symmetric_and_keeps_directions(frame):
    m = summary_matrix(frame, "linear_cka", measure_info=measure_info)
    assert list(m.index) == [x[0] for x in MODELS]
    assert np.allclose(np.diag(m.to_numpy()), 1.0)
    assert np.allclose(m.to_numpy(), m.to_numpy().T)
    p = summary_matrix(frame, "pwcca", how="final", measure_info=measure_info)
    a, b = MODELS[0][0], MODELS[2][0]
    assert p.loc[a, b] == _by_hand(frame, "pwcca", a, b)[1]
    assert p.loc[b, a] == _by_hand(frame, "pwcca", b, a)[1]
    sub = summary_matrix(frame, "linear_cka", models=[MODELS[2][0], MODELS[0][0]], measure_info=measure_info)
    assert list(sub.columns) == [MODELS[2][0], MODELS[0][0]]
    with pytest.raises(ValueError, match="how="):
        summary_matrix(frame, "linear_cka", how="mean")


def test_layer_matrix_orientation_and_transpose(frame):
    a, b = MODELS[0][0], MODELS[2][0]
    m = layer_matrix(frame, a, b, "linear_cka", measure_info=measure_info)
    assert m.shape == (3, 7)
    row = frame[(frame.measure == "linear_cka") & (frame.model_a == a) & (frame.layer_a == 2) & (frame.layer_b == 5)]
    assert m.loc[2, 5] == row.value.item()
    t = layer_matrix(frame, b, a, "linear_cka", measure_info=measure_info)  # symmetric: stored as (a, b)
    np.testing.assert_array_equal(t.to_numpy(), m.to_numpy().T)
    only_ab = frame[~((frame.measure == "pwcca") & (frame.model_a == b) & (frame.model_b == a))]
    with pytest.raises(ValueError, match="asymmetric"):
        layer_matrix(only_ab, b, a, "pwcca", measure_info=measure_info)


def test_write_tables_without_optional_columns(tmp_path):
    bare = make_frame(ci=False)
    assert "ci_low" not in bare
    paths = write_tables(bare.set_index("model_a", drop=False), tmp_path)
    assert [p.name for p in paths] == ["similarity.parquet", "similarity.csv"]
    pd.testing.assert_frame_equal(pd.read_parquet(paths[0]), bare)
    assert summary_table(bare, "linear_cka", measure_info=measure_info).best_p_value.isna().all()


def test_bad_frames_raise_naming_the_problem(frame):
    with pytest.raises(ValueError, match="lacks columns \\['value'\\]"):
        check_frame(frame.drop(columns="value"))
    with pytest.raises(ValueError, match="more than one row"):
        check_frame(pd.concat([frame.head(2), frame.head(1)]))
    with pytest.raises(ValueError, match="layer_a"):
        check_frame(frame.head(3).assign(layer_a=-1))
    with pytest.raises(ValueError, match="no rows for measure='rsa'"):
        summary_table(frame, "rsa")
    with pytest.raises(ValueError, match="empty"):
        write_outputs(frame.head(0), {}, "unused", progress=False)


# ------------------------------------------------------------------------------------ names and measures


def test_escape_md_and_safe_unique_file_stems():
    assert escape_md("a|b*c_d<e>`f`[g]") == "a\\|b\\*c\\_d\\<e\\>\\`f\\`\\[g\\]"
    assert escape_md("line\nbreak") == "line break"
    assert escape_md("- item") == "\\- item" and escape_md("3.11.9") == "3.11.9"
    assert escape_md("---") == "\\---" and escape_md("=== x") == "\\=== x"  # no rule, no heading underline
    stems = file_stems(["a|b", "a/b", "../../etc", "ok-name"])
    assert len(set(stems.values())) == 4
    assert stems["ok-name"] == "ok-name"
    for s in stems.values():
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", s), s


def test_data_shows_control_and_bidirectional_characters_as_escapes():
    from homoscope.report.analysis import D, visible

    assert visible("a\x00b") == "a\\x00b" and visible("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert visible("\u2066x\u2069") == "\\u2066x\\u2069" and visible("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"
    assert D("x\u202ey") == ("d", "x\\u202ey")


def test_measure_info_sources():
    # the registry's declarations (beside each measure's code) are what the report reads
    from homoscope.measures import get_measure

    lin = resolve_measure_info("linear_cka")
    assert lin is get_measure("linear_cka") and lin.kind == "similarity" and lin.value_range == (0.0, 1.0)
    assert not resolve_measure_info("pwcca").symmetric
    nope = resolve_measure_info("nope")  # nobody describes it: a neutral similarity, unbounded
    assert nope.kind == "similarity" and nope.value_range == (-float("inf"), float("inf")) and nope.fn is None
    assert resolve_measure_info("my_dist").kind == "distance"
    # a manifest entry that leaves fields out: the registry fills them
    partial = resolve_measure_info("cknna", lambda _n: {"kind": "similarity"})
    assert partial.value_range == (-1.0, 1.0) and partial.colour_range == (0.0, 1.0) and partial.reference.startswith("Huh")
    deb = resolve_measure_info("debiased_cka", measure_info)
    assert deb.value_range == (-1.0, 1.0) and deb.colour_range == (0.0, 1.0)  # read on 0..1

    class Registry:  # attribute access, as the registry's dataclass
        kind, symmetric, value_range, reference, description = "distance", True, [0, None], "ref", "d"

    info = resolve_measure_info("my_distance", lambda _n: Registry())
    assert info.kind == "distance" and info.value_range == (0.0, float("inf")) and info.identity == 0.0
    with pytest.raises(ValueError, match="kind"):
        resolve_measure_info("x", lambda _n: {"kind": "closeness"})


def test_colour_scale_is_fixed_to_the_measure_range():
    info = resolve_measure_info("linear_cka", measure_info)
    assert _colour_scale(info, np.array([0.41, 0.43])) == (0.0, 1.0, "neither")
    deb = resolve_measure_info("debiased_cka", measure_info)
    assert _colour_scale(deb, np.array([-0.02, 0.5])) == (0.0, 1.0, "min")
    unbounded = resolve_measure_info("d", lambda _n: {"kind": "distance", "value_range": (0, None)})
    assert _colour_scale(unbounded, np.array([0.2, 1.7]))[:2] == (0.0, 1.7)


def test_single_plots_and_report_with_given_figures(tmp_path, frame):
    a, b = MODELS[1][0], MODELS[2][0]
    heat = plot_layer_heatmap(frame, a, b, "pwcca", tmp_path / "figs" / "h.png", measure_info=measure_info, dpi=72)
    summ = plot_summary_heatmap(frame, "linear_cka", tmp_path / "s.png", how="final", measure_info=measure_info,
                                dpi=72)
    assert mpimg.imread(heat).shape[0] > 150 and mpimg.imread(summ).shape[0] > 150
    with pytest.raises(ValueError, match="no rows"):
        plot_layer_heatmap(frame, a, "nobody", "pwcca", tmp_path / "x.png", measure_info=measure_info)
    with pytest.raises(ValueError, match="how="):
        plot_summary_heatmap(frame, "linear_cka", tmp_path / "x.png", how="worst", measure_info=measure_info)
    report = write_report_md(frame, {}, tmp_path, {"other": [heat]}, measure_info=measure_info)
    text = report.read_text(encoding="utf-8")
    assert "](figs/h.png)" in text and "## Other figures" in text
    assert plt.get_fignums() == []


# -------------------------------------------------------------------------- controls, index and findings

from homoscope.report import compare_view, controls_table, findings, homogenization_index  # noqa: E402
from homoscope.report._common import bh_adjust  # noqa: E402
from homoscope.report.analysis import VERDICT_ABOVE, VERDICT_NONE, VERDICT_NS, depth_profile  # noqa: E402


def _infos(frame):
    return {m: resolve_measure_info(m, measure_info) for m in frame.measure.unique()}


def _cells(frame, measure, a, b):
    return frame[(frame.measure == measure) & (frame.model_a == a) & (frame.model_b == b)]


def _bh_by_hand(p):
    """Benjamini-Hochberg by its definition: q_i = min over p_j >= p_i of m p_j / rank(p_j), at most 1."""
    p = np.asarray(p, dtype=float)
    m = p.size
    rank = {k: r + 1 for r, k in enumerate(np.argsort(p, kind="stable"))}
    return np.array([min(min(m * p[j] / rank[j] for j in range(m) if p[j] >= p[i]), 1.0) for i in range(m)])


def test_bh_adjust_matches_the_definition_and_skips_missing():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, size=(4, 6))
    p[1, 2] = p[2, 3]  # a tie
    np.testing.assert_allclose(bh_adjust(p), _bh_by_hand(p.ravel()).reshape(4, 6))
    with_nan = p.copy()
    with_nan[0, :3] = np.nan
    q = bh_adjust(with_nan)
    assert np.isnan(q[0, :3]).all()
    np.testing.assert_allclose(q[np.isfinite(q)], _bh_by_hand(with_nan[np.isfinite(with_nan)]))
    assert bh_adjust([0.9, 0.95]).max() <= 1.0 and bh_adjust([]).size == 0


def test_summary_table_carries_the_controls_of_the_best_and_final_cells(frame):
    table = summary_table(frame, "linear_cka", measure_info=measure_info)
    for r in table.itertuples():
        g = _cells(frame, "linear_cka", r.model_a, r.model_b).reset_index(drop=True)
        k = int(g.value.idxmax())
        q = bh_adjust(g.p_value.to_numpy())
        assert r.best_random_init == g.random_init[k] and r.best_null_mean == g.null_mean[k]
        assert r.best_q_value == pytest.approx(q[k]) and r.best_p_value == g.p_value[k]
        fin = int(np.flatnonzero((g.layer_a == g.layer_a.max()) & (g.layer_b == g.layer_b.max()))[0])
        assert r.final_random_init == g.random_init[fin] and r.final_ci_low == g.ci_low[fin]
        assert r.final_q_value == pytest.approx(q[fin])


def test_controls_verdicts_follow_the_stated_rule(frame):
    info = resolve_measure_info("linear_cka", measure_info)
    t = controls_table(frame, "linear_cka", info).set_index(["model_a", "model_b"])
    assert t.loc[(EVIL, MODELS[2][0]), "best_verdict"] == VERDICT_NS  # p = 0.3 in every cell
    assert t.loc[(MODELS[0][0], EVIL), "best_verdict"] == VERDICT_ABOVE
    assert (t.best_vs_random == "above").all()  # CI low (value - 0.03) lies above random-init (0.4..0.5)
    high = frame.assign(random_init=np.where(frame.measure == "linear_cka", 0.99, np.nan))
    assert (controls_table(high, "linear_cka", info).best_vs_random == "below").all()  # above every CI high
    same = frame.assign(random_init=np.where(frame.measure == "linear_cka", frame.value, np.nan))
    assert (controls_table(same, "linear_cka", info).best_vs_random == "within").all()  # inside every CI
    from homoscope.report.analysis import index_reading

    assert index_reading(0.0) == "The models are no more alike than untrained networks of the same shapes."
    assert index_reading(-0.2) == index_reading(0.0)
    assert index_reading(0.05).startswith("The models are barely more alike")
    pw = controls_table(frame, "pwcca", resolve_measure_info("pwcca", measure_info))
    assert (pw.best_verdict == VERDICT_NONE).all() and (pw.best_vs_random == "").all()


def test_homogenization_index_by_hand(frame):
    idx = homogenization_index(frame, make_manifest(), _infos(frame))
    assert idx.measure == "linear_cka" and idx.baseline == "random-init" and idx.n_pairs == 3
    terms, lows, highs = [], [], []
    for x, y in PAIRS:
        g = _cells(frame, "linear_cka", MODELS[x][0], MODELS[y][0])
        best = g.loc[g.value.idxmax()]

        def h(s, r=best.random_init):
            return min(max((s - r) / (1 - r), 0.0), 1.0)

        ns = (x, y) == (1, 2)  # never above its null: counts 0, never as similarity
        terms.append(0.0 if ns else h(best.value))
        lows.append(0.0 if ns else h(best.ci_low))
        highs.append(h(best.ci_high))
    assert idx.value == pytest.approx(np.mean(terms))
    assert (idx.low, idx.high) == (pytest.approx(np.mean(lows)), pytest.approx(np.mean(highs)))
    assert idx.low <= idx.value <= idx.high


def test_homogenization_index_without_random_init_says_what_it_used(frame):
    infos = _infos(frame)
    nulls = homogenization_index(frame.drop(columns="random_init"), make_manifest(), infos)
    assert nulls.computed and nulls.baseline == "permutation null mean" and "did not run" in nulls.note
    bare = make_frame(ci=False)
    none = homogenization_index(bare, make_manifest(), infos)
    assert not none.computed and "not computed" in none.note
    assert findings(bare, make_manifest(), infos)[0].plain().startswith("Homogenization index: not computed")


def test_findings_cite_numbers_and_intervals(frame):
    texts = [t.plain() for t in findings(frame, make_manifest(), _infos(frame), make_extra())]
    table = summary_table(frame, "linear_cka", measure_info=measure_info)
    sig = table[~((table.model_a == EVIL) & (table.model_b == MODELS[2][0]))]
    top = sig.loc[sig.best.idxmax()]
    most = next(t for t in texts if t.startswith("Most alike"))
    assert top.model_a in most and top.model_b in most
    assert f"{top.best:.3f} (95% CI {top.best_ci_low:.3f}\u2013{top.best_ci_high:.3f})" in most
    assert any("1 of 3 pairs' best scores are not distinguishable" in t and EVIL in t for t in texts)
    assert any(t.startswith("3 of 3 pairs score above their random-init baseline") for t in texts)
    assert any("relative depth" in t and "agree most" in t for t in texts)
    assert any("Fleiss' kappa over all 3 models: 0.580" in t for t in texts)
    assert any("h_avg = 2.400" in t and "null mean 1.020, p = 0.001" in t for t in texts)
    assert any("Cohen's kappa 0.600" in t for t in texts)


def _tiny(models, values, kinds=None, ci=0.05):
    """A frame with 2 x 2 layer pairs per model pair; the best cell (1, 1) holds ``values[pair]``."""
    rows = []
    for (a, b), v in values.items():
        for i in range(2):
            for j in range(2):
                val = v if (i, j) == (1, 1) else v / 2
                rows.append(dict(model_a=a, layer_a=i, model_b=b, layer_b=j, measure="linear_cka", value=val,
                                 n=50, d_a=8, d_b=8, unit="sentence", ci_low=val - ci, ci_high=val + ci))
    manifest = {"models": [{"name": m, "kind": (kinds or {}).get(m)} for m in models]}
    return pd.DataFrame(rows), manifest


def test_findings_compare_decoders_with_encoders():
    models = ["enc-a", "enc-b", "dec-a", "dec-b"]
    kinds = {"enc-a": "encoder", "enc-b": "encoder", "dec-a": "decoder", "dec-b": "decoder"}
    values = {("enc-a", "enc-b"): 0.5, ("dec-a", "dec-b"): 0.9, ("enc-a", "dec-a"): 0.3, ("enc-a", "dec-b"): 0.3,
              ("enc-b", "dec-a"): 0.3, ("enc-b", "dec-b"): 0.3}
    f, manifest = _tiny(models, values, kinds)
    texts = [t.plain() for t in findings(f, manifest, _infos(f))]
    kind = next(t for t in texts if t.startswith("Decoders resemble each other"))
    assert "more than encoders do" in kind and "0.900 (interval 0.850\u20130.950)" in kind
    assert "0.500 (interval 0.450\u20130.550)" in kind and "do not overlap" in kind and "Mixed" in kind
    f2, _ = _tiny(models, {**values, ("enc-a", "enc-b"): 0.88}, kinds)
    assert any("not established" in t.plain() for t in findings(f2, manifest, _infos(f2)))


def test_depth_profile_matches_layers_at_equal_relative_depth():
    rows = []
    for i in range(3):  # a: 3 layers; b: 5 layers; value = 1 - |depth_a - depth_b| / 2, peak at depth .5 and a boost
        for j in range(5):
            da, db = i / 2, j / 4
            v = 1 - abs(da - db) / 2 - (0.3 if da != 0.5 else 0.0)
            rows.append(dict(model_a="a", layer_a=i, model_b="b", layer_b=j, measure="linear_cka", value=v))
    f = pd.DataFrame(rows)
    info = resolve_measure_info("linear_cka", measure_info)
    prof = depth_profile(f, "linear_cka", info, bins=5)
    assert prof.n_pairs.tolist() == [1, 1, 1, 1, 1]
    # each layer of b (the deeper model) is matched with a's layer at the nearest relative depth
    expected = {0: 0.7, 1: np.mean([1 - 0.25 / 2 - 0.3]), 2: 1.0, 3: np.mean([1 - 0.25 / 2 - 0.3]), 4: 0.7}
    for b, v in expected.items():
        assert prof["mean"][b] == pytest.approx(v), b
    assert prof[["low", "high"]].isna().all().all()


def test_compare_view_finds_each_layers_best_match(frame):
    new, refs = MODELS[0][0], [MODELS[1][0], MODELS[2][0]]
    sub = frame[frame.model_a == new]
    manifest = {**make_manifest(), "study": {**make_manifest()["study"], "pairs": "first-vs-rest"}}
    view = compare_view(sub, manifest, _infos(sub))
    assert view.new == new and view.references == refs and view.measure == "linear_cka"
    for ref in refs:
        g = _cells(sub, "linear_cka", new, ref)
        got = view.per_layer[view.per_layer.reference == ref].set_index("layer")
        for layer, cells in g.groupby("layer_a"):
            best = cells.loc[cells.value.idxmax()]
            assert got.loc[layer, "best_layer"] == best.layer_b and got.loc[layer, "value"] == best.value
    assert set(view.overall) == {"linear_cka", "pwcca"}
    assert len(view.overall["pwcca"]) == 2  # the new model's direction of the asymmetric measure
    verdict = " ".join(t.plain() for t in view.verdict)
    top = summary_table(sub, "linear_cka", measure_info=measure_info).sort_values("best").iloc[-1]
    assert verdict.startswith(f"{new} is most alike {top.model_b}") and f"{top.best:.3f}" in verdict
    assert compare_view(frame, make_manifest(), _infos(frame)) is None  # not a comparison


def test_layer_heatmap_relative_axes_shared_scale_path_and_hatching(tmp_path, frame, monkeypatch):
    from homoscope.report import figures

    seen = {}
    original = figures._save

    def spy(fig, path, dpi, **kw):
        ax = fig.axes[0]
        seen[Path(path).name] = {
            "xticks": [t.get_text() for t in ax.get_xticklabels()],
            "norm": (ax.images[0].norm.vmin, ax.images[0].norm.vmax),
            "path": max(len(ln.get_xdata()) for ln in ax.get_lines()),
            "hatched": sum(len(c.get_paths()) for c in ax.collections if c.get_hatch()),
        }
        return original(fig, path, dpi, **kw)

    monkeypatch.setattr(figures, "_save", spy)
    a, b, c = (m[0] for m in MODELS)
    plot_layer_heatmap(frame, a, c, "linear_cka", tmp_path / "rel.png", measure_info=measure_info, dpi=40)
    plot_layer_heatmap(frame, b, c, "linear_cka", tmp_path / "ns.png", measure_info=measure_info, dpi=40,
                       vlim=(0.2, 0.8), relative=False)
    rel, ns = seen["rel.png"], seen["ns.png"]
    assert rel["xticks"] == ["0", ".25", ".5", ".75", "1"]  # 3 vs 7 layers: relative depth
    assert rel["norm"] == (0.0, 1.0) and ns["norm"] == (0.2, 0.8)
    assert rel["path"] == 3 and ns["path"] == 5  # one point per row of the best-matching path
    g = _cells(frame, "linear_cka", a, c)
    assert rel["hatched"] == int((bh_adjust(g.p_value.to_numpy()) >= 0.05).sum()) > 0
    assert ns["hatched"] == 5 * 7  # nothing of this pair is above its null
    assert ns["xticks"][:2] == ["0", "1"]  # layer indices


def test_probes_that_tie_are_read_as_one_value_with_every_model_named():
    from homoscope.report.analysis import _probe_finding

    probes = pd.DataFrame({"model": ["a", "a", "b", "b"], "layer": [0, 1, 0, 1], "accuracy": [1.0, 0.5, 1.0, 0.9],
                           "ci_low": [0.9] * 4, "ci_high": [1.0] * 4, "chance": [0.25] * 4,
                           "best": [True, False, True, False]})
    text = _probe_finding(probes)[0].plain()
    assert text.startswith("Linear probes at each model's best layer reach the same accuracy, 1.000")
    assert "a (layer 0), b (layer 0)" in text
