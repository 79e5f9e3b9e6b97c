"""One document, two renderings: report.md and report.html say the same; findings.json holds what they quote;
a results folder rebuilds its report from its files alone; data stays escaped; the templates ship as package data.
"""
from __future__ import annotations

import fnmatch
import html
import json
import re
import shutil
import tomllib
from collections import Counter
from importlib.resources import files
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from test_report import MODELS, make_extra, make_frame, make_manifest, measure_info, rendered  # noqa: E402

from homoscope.report import (  # noqa: E402
    escape_md,
    findings,
    homogenization_index,
    rebuild_report,
    resolve_measure_info,
    summary_table,
    write_outputs,
    write_report_html,
    write_report_md,
)
from homoscope.report._templates import template_text  # noqa: E402
from homoscope.report.html import figure_html  # noqa: E402

NUMBER = re.compile(r"(?<![\d.])\d+\.\d{3}(?!\d)")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return rendered(tmp_path_factory)


def _infos(frame):
    return {m: resolve_measure_info(m, measure_info) for m in frame.measure.unique()}


def _md_plain(s: str) -> str:
    """Markdown inline text as plain text: escapes undone, emphasis and code fences dropped."""
    s = re.sub(r"(?<!\\)\*\*", "", s)
    s = re.sub(r"(?<!\\)`+", "", s)
    return re.sub(r"\\(.)", r"\1", s).strip()


def _html_plain(s: str, sep: str = "") -> str:
    return html.unescape(re.sub(r"<[^>]+>", sep, s)).strip()


def _html_body(page: str) -> str:
    """The page without its head (title, CSS) and without the figures' data."""
    body = page.split("<body>", 1)[1]
    return re.sub(r'src="data:[^"]*"', 'src=""', body)


def _md_tables(md: str) -> list[list[int]]:
    """Each markdown table as the cell count of each body row (the header and rule lines left out)."""
    tables, run = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            run.append(len(re.split(r"(?<!\\)\|", line)) - 2)
        elif run:
            tables.append(run[2:])
            run = []
    return tables


def _html_tables(page: str) -> list[list[int]]:
    out = []
    for body in re.findall(r"<tbody>(.*?)</tbody>", page, flags=re.S):
        out.append([row.count("<td") for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)])
    return out


# ------------------------------------------------------------------------------- the same in both formats


def _same_content(md: str, page: str) -> None:
    md_titles = [_md_plain(t) for t in re.findall(r"^#{1,3} (.*)$", md, flags=re.M)]
    html_titles = [_html_plain(t) for t in re.findall(r"<h[1-3][^>]*>(.*?)</h[1-3]>", page, flags=re.S)]
    assert md_titles == html_titles
    assert _md_tables(md) == _html_tables(page)
    text = _html_plain(_html_body(page), sep=" ")
    assert Counter(NUMBER.findall(md)) == Counter(NUMBER.findall(text))


def test_markdown_and_html_carry_the_same_sections_rows_and_numbers(outputs):
    out, _ = outputs
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    _same_content(md, page)
    assert len(NUMBER.findall(md)) > 100  # the comparison has something to compare
    for title in ("Findings", "Study", "Model-by-model similarity", "Layer by layer", "Controls", "Provenance"):
        assert f"\n## {title}\n" in md and f"<h2>{title}</h2>" in page


def test_a_comparison_and_a_study_without_controls_read_the_same_in_both_formats(tmp_path):
    frame = make_frame()
    cmp = frame[(frame.model_a == MODELS[0][0]) & (frame.measure == "linear_cka")].reset_index(drop=True)
    manifest = make_manifest()
    manifest["study"] = {**manifest["study"], "pairs": "first-vs-rest"}
    cases = {"compare": (cmp, manifest, None), "bare": (make_frame(ci=False), {}, make_extra())}
    for name, (f, m, extra) in cases.items():
        out = tmp_path / name
        write_report_md(f, m, out, {}, measure_info=measure_info, extra=extra)
        write_report_html(f, m, out, {}, measure_info=measure_info, extra=extra)
        _same_content((out / "report.md").read_text(encoding="utf-8"),
                      (out / "report.html").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------- findings.json


def test_findings_json_holds_the_index_and_the_numbers_the_report_quotes(outputs):
    out, files_ = outputs
    assert out / "findings.json" in files_["tables"]
    record = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    frame, manifest = make_frame(), make_manifest()
    index = homogenization_index(frame, manifest, _infos(frame))
    got = record["homogenization_index"]
    assert got["value"] == pytest.approx(index.value) and got["computed"] is True
    assert (got["low"], got["high"]) == (pytest.approx(index.low), pytest.approx(index.high))
    assert got["n_pairs"] == index.n_pairs and got["measure"] == index.measure == "linear_cka"
    assert got["baseline"] == index.baseline and got["note"] == index.note
    assert got["definition"].startswith("Homogenization index H of the model set")
    expected = [t.plain() for t in findings(frame, manifest, _infos(frame), make_extra(), index=index,
                                            include_index=False)]
    assert record["findings"] == expected
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"**Homogenization index H = {index.value:.3f}**" in md
    assert f'<span class="big">H = {index.value:.3f}</span>' in page
    table = summary_table(frame, "linear_cka", measure_info=measure_info)
    cka = record["measures"]["linear_cka"]
    top = table.loc[table.best.idxmax()]
    assert cka["most_alike"]["value"] == top.best and cka["pairs"] == 3
    assert (cka["most_alike"]["model_a"], cka["most_alike"]["layer_a"]) == (top.model_a, top.best_layer_a)
    assert cka["mean_best"] == pytest.approx(table.best.mean())
    assert cka["final_range"] == [table.final.min(), table.final.max()]
    assert cka["summary"] in _md_plain(md.split("\n\n")[1])  # the lead paragraph says the same sentence
    assert record["measures"]["pwcca"]["most_alike"]["ci_low"] is None  # missing numbers are null


# ------------------------------------------------------------------------------ rebuilding from the files


def test_rebuild_reproduces_report_md_byte_for_byte_from_the_files_alone(tmp_path):
    study = tmp_path / "study"
    write_outputs(make_frame(), make_manifest(), study, measure_info=measure_info, extra=make_extra(),
                  progress=False, dpi=30)
    original = {n: (study / n).read_bytes() for n in ("report.md", "findings.json")}
    bare = tmp_path / "bare"  # only what load_results reads: no figure, no report, no findings
    bare.mkdir()
    for name in ("similarity.parquet", "manifest.json", "probes.csv", "agreement.csv", "homogenization.csv"):
        shutil.copy(study / name, bare / name)
    for folder in (bare, bare, study):
        rebuild_report(folder, progress=False, dpi=30)
        for name, data in original.items():
            assert (folder / name).read_bytes() == data, (folder, name)


# -------------------------------------------------------------------------------------------- escaping


HOSTILE = ["<script>alert(1)</script>", "a|b", "tick`s``", "**bold**"]


def _hostile_frame() -> pd.DataFrame:
    rows = []
    for x, a in enumerate(HOSTILE):
        for b in HOSTILE[x + 1:]:
            for i in range(2):
                for j in range(2):
                    v = 0.5 + 0.1 * (i + j)
                    rows.append(dict(model_a=a, layer_a=i, model_b=b, layer_b=j, measure="linear_cka", value=v, n=20,
                                     d_a=4, d_b=4, unit="sentence", ci_low=v - 0.05, ci_high=v + 0.05, p_value=0.01,
                                     null_mean=0.1, random_init=0.3))
    return pd.DataFrame(rows)


def test_hostile_model_names_stay_text_in_both_formats(tmp_path):
    frame = _hostile_frame()
    manifest = {"models": [{"name": n, "notes": n, "license": n} for n in HOSTILE],
                "corpus": {"name": HOSTILE[0]}, "warnings": [HOSTILE[0]]}
    write_report_md(frame, manifest, tmp_path, {}, measure_info=measure_info)
    write_report_html(frame, manifest, tmp_path, {}, measure_info=measure_info)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"<script|<iframe|onerror", page, re.I)
    for name in HOSTILE:
        assert html.escape(name, quote=True) in page
        assert escape_md(name) in md
    assert not re.search(r"(?<!\\)<script", md)
    assert not re.search(r"(?<![\\*])\*\*bold\*\*", md)  # never bold markup
    assert "tick`s" not in md and "a|b" not in md
    models = md.split("### Models")[1].split("###")[0]
    counts = {len(re.split(r"(?<!\\)\|", ln)) for ln in models.splitlines() if ln.startswith("|")}
    assert len(counts) == 1  # a '|' in a name never adds a cell
    _same_content(md, page)


# ---------------------------------------------------------------------------------- templates and figures


def test_templates_ship_as_package_data_and_are_read_through_importlib_resources():
    folder = files("homoscope.report") / "templates"
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert {"report.md.j2", "report.html.j2", "blocks.md.j2", "blocks.html.j2", "report.css"} <= set(names)
    for name in names:
        assert template_text(name) == (folder / name).read_text(encoding="utf-8")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["homoscope.report"]
    assert all(any(fnmatch.fnmatch(f"templates/{n}", p) for p in patterns) for n in names)
    assert any(d.startswith("jinja2") for d in project["project"]["dependencies"])
    assert any(d.lower().startswith("pillow") for d in project["project"]["dependencies"])


def test_figure_html_embeds_at_physical_size_and_escapes_the_alt_text(tmp_path):
    path = tmp_path / "f.png"
    Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8)).save(path, dpi=(192, 192))
    tag = figure_html(path, 'a "<b>" & c', caption="x < y")
    assert 'width="30" height="20"' in tag  # 192 dpi shown at 96 css px per inch
    assert 'alt="a &quot;&lt;b&gt;&quot; &amp; c"' in tag and "<figcaption>x &lt; y</figcaption>" in tag
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(tmp_path / "g.png")  # no dpi: 1 px per css px
    assert 'width="12" height="10"' in figure_html(tmp_path / "g.png", "g")


def test_numeric_looking_model_names_survive_the_csv_and_an_empty_frame_is_refused(tmp_path):
    from homoscope.report import load_results, write_outputs, write_report_md

    rows = []
    for a, b in (("007", "nan"), ("007", "8"), ("nan", "8")):
        for la in range(2):
            for lb in range(2):
                rows.append({"model_a": a, "layer_a": la, "model_b": b, "layer_b": lb, "measure": "linear_cka",
                             "value": 0.1 + 0.1 * la + 0.2 * lb, "n": 10, "d_a": 4, "d_b": 4, "unit": "sentence"})
    frame = pd.DataFrame(rows)
    write_outputs(frame, {}, tmp_path, progress=False, html=False)
    (tmp_path / "similarity.parquet").unlink()
    back, _, _ = load_results(tmp_path)
    assert sorted(set(back["model_a"]) | set(back["model_b"])) == ["007", "8", "nan"]
    with pytest.raises(ValueError, match="frame is empty"):
        write_report_md(frame.iloc[:0], {}, tmp_path / "empty", {})


def test_the_index_headline_follows_its_interval():
    from homoscope.report.analysis import index_reading

    assert index_reading(0.658, "random-init", 0.0).startswith("Its interval reaches 0, so the models are not "
                                                                "distinguishably more alike than untrained")
    assert index_reading(0.658, "random-init", 0.5) == index_reading(0.658) == (
        "The models are substantially more alike than untrained networks of the same shapes.")
