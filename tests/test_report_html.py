"""report.html: self-contained, escaped, rendered in headless Chromium; the comparison report; rebuilding a
results folder with ``homoscope report`` without any model; file names that stay inside the output folder.

The browser test drives the Debian packages ``chromium`` and ``chromium-driver`` through selenium. Where they
are missing it fails under CI (``CI=true``) and is skipped elsewhere.
"""
from __future__ import annotations

import base64
import html
import os
import re
import json
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from test_report import (  # noqa: E402
    CORPUS_NAME,
    EVIL,
    MODELS,
    make_extra,
    make_frame,
    make_manifest,
    rendered,
)

from homoscope.cli import main  # noqa: E402
from homoscope.report import INDEX_DEFINITION, load_results, write_outputs  # noqa: E402
from homoscope.report._common import file_stems, inside  # noqa: E402
from homoscope.report.markdown import heatmap_relpath  # noqa: E402

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
FIGURE_KEYS = ("heatmaps", "summaries", "controls", "agreement")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return rendered(tmp_path_factory)


def _compare_manifest() -> dict:
    m = make_manifest()
    m["study"] = {**m["study"], "pairs": "first-vs-rest", "measures": ["linear_cka"]}
    return m


@pytest.fixture(scope="module")
def compare_outputs(tmp_path_factory):
    """A comparison: the first model against the two others, linear_cka only, no agreement frames; the measure
    descriptions come from the manifest, as they do when a results folder is read back."""
    frame = make_frame()
    frame = frame[(frame.model_a == MODELS[0][0]) & (frame.measure == "linear_cka")].reset_index(drop=True)
    out = tmp_path_factory.mktemp("compare") / "out"
    files = write_outputs(frame, _compare_manifest(), out, progress=False, dpi=60)
    return out, files, frame


def _figures(files) -> list[Path]:
    return [p for k in FIGURE_KEYS for p in files[k]]


# --------------------------------------------------------------------------------------------- the page


def test_html_embeds_every_figure_and_loads_nothing(outputs):
    out, files = outputs
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for attr in re.findall(r'\b(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:", "#")), attr  # no network, no file outside the page
    assert not re.search(r"<script|<iframe|<object|<embed|<link rel=\"stylesheet\"|@import|url\(", page, re.I)
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    figures = _figures(files)
    assert len(embedded) == len(figures) == 9 + 6 + 1 + 1
    assert {base64.b64decode(x) for x in embedded} == {p.read_bytes() for p in figures}


def test_html_escapes_every_string_from_data(outputs):
    out, _ = outputs
    page = (out / "report.html").read_text(encoding="utf-8")
    for raw in (EVIL, CORPUS_NAME, "<b>arts</b> & 'co'"):
        assert raw not in page
        assert html.escape(raw, quote=True) in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;q&#x27;" in page
    body = re.sub(r"<img [^>]*>", "", page)  # the alt texts are checked above; now the markup itself
    tags = set(re.findall(r"</?([a-zA-Z][a-zA-Z0-9]*)", body))
    assert tags <= {"html", "head", "meta", "link", "title", "style", "body", "main", "header", "h1", "h2", "h3", "p",
                    "span", "strong", "code", "pre", "nav", "a", "section", "div", "ul", "li", "details", "summary",
                    "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption", "br", "footer"}, tags


def test_html_has_every_section_and_marks_null_scores(outputs):
    out, _ = outputs
    page = (out / "report.html").read_text(encoding="utf-8")
    for sec in ("findings", "study", "similarity", "layers", "controls", "agreement", "provenance"):
        assert f'<section id="{sec}">' in page, sec
    assert 'class="index"' in page and "H = " in page and html.escape(INDEX_DEFINITION) in page
    for word in ("Gemma Terms of Use", "22.7M", "homoscope run results/demo/study.toml", "2 texts truncated",
                 "Fleiss 1971", "Most alike", "random-init", "probe accuracy by relative depth",
                 "<code>cohen_kappa</code>", "h_avg"):
        assert word in page, word
    controls = page.split('<section id="controls">')[1].split("</section>")[0]
    row = next(r for r in controls.split("<tr>") if html.escape(EVIL) in r and "gemma-3-270m" in r)
    assert 'class="num ns"' in row and "n.s." in row and "not distinguishable from its null" in row
    assert "No control computed for <code>pwcca</code>" in controls
    agreement = page.split('<section id="agreement">')[1].split("</section>")[0]
    assert agreement.count("<tr>") == 3 * (1 + 3)  # probes, pairs (directions merged), sets: header + 3 rows each
    assert "\u2190 0.770" in agreement and "<code>error_overlap_conditional</code>" in agreement  # b -> a shown
    assert "minilm-l6 (random-init)" in page and "<code>f00d</code>" in page


# ---------------------------------------------------------------------------------------- the browser


def _driver(profile: str):
    """A headless Chromium browser driven by selenium; where a piece is missing, the message naming it (CI:
    the test then fails) or a skip (elsewhere)."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver (chromium-driver)", driver)) if p is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        msg = ("the html report check needs " + ", ".join(missing)
               + "; install: apt-get install -y chromium chromium-driver && pip install selenium")
        if CI:
            return msg
        pytest.skip(msg)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def browser():
    """Checked before the report fixtures, so that a missing browser skips at once (outside CI)."""
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory(prefix="homoscope-chromium-") as profile:
        mp.setenv("SE_OFFLINE", "true")  # selenium must not look for drivers online
        drv = _driver(profile)
        if isinstance(drv, str):
            yield drv
            return
        try:
            yield drv
        finally:
            drv.quit()


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_html_renders_in_headless_chromium(browser, outputs, compare_outputs, tmp_path):
    if isinstance(browser, str):  # under CI a missing browser is a failure, never a skip
        pytest.fail(browser)
    out, files = outputs
    pages = ((out, len(_figures(files))), (compare_outputs[0], len(_figures(compare_outputs[1]))))
    for folder, expected in pages:
        browser.get((folder / "report.html").resolve().as_uri())
        state = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const imgs = Array.from(document.images);"
            "Promise.all(imgs.map(i => i.decode().then(() => true, () => false))).then(ok => done({"
            " n: imgs.length, decoded: ok.filter(x => x).length,"
            " loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
            " scripts: document.scripts.length, title: document.title,"
            " height: document.documentElement.scrollHeight, text: document.body.innerText}));")
        assert state["n"] == expected and state["loaded"] == expected and state["decoded"] == expected
        assert state["scripts"] == 0
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == [], errors
        if folder != out:
            assert "Comparison" in state["text"] and "Not computed in this study" in state["text"]
            continue
        assert EVIL in state["text"] and CORPUS_NAME in state["title"]  # shown as text, never run
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": state["height"], "scale": 1}})
        full = tmp_path / "report-full.png"
        full.write_bytes(base64.b64decode(shot["data"]))
        assert _png_size(full)[0] >= 1200 and _png_size(full)[1] >= 2000
        top = tmp_path / "report.png"
        assert browser.save_screenshot(str(top))
        img = mpimg.imread(top)
        assert img.shape[1] >= 1200 and float(img[..., :3].std()) > 0.05
        print(f"screenshots: {top} and {full}")


# ------------------------------------------------------------------------------------------- comparison


def test_comparison_report_answers_for_the_new_model(compare_outputs):
    out, files, frame = compare_outputs
    new, refs = MODELS[0][0], [MODELS[1][0], MODELS[2][0]]
    page = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert page.index('<section id="compare">') < page.index('<section id="study">')
    assert "homoscope comparison: minilm-l6 against 2 references" in page
    section = page.split('<section id="compare">')[1].split("</section>")[0]
    best = frame.loc[frame.value.idxmax()]
    assert f"{new}</strong> is most alike <strong class=\"name\">{html.escape(best.model_b)}" in section
    assert f"{best.value:.3f}" in section and "Spearman rho" in section
    per_layer = section.split("Each layer of")[1]
    assert per_layer.count("<tr>") == 1 + MODELS[0][1]  # header + one row per layer of the new model
    for layer, cells in frame[frame.model_b == refs[1]].groupby("layer_a"):
        b = cells.loc[cells.value.idxmax()]
        expected = (f'<td class="num">{b.layer_b} ({b.layer_b / 6:.2f})</td>'
                    f'<td class="num"><strong>{b.value:.3f}</strong>')
        assert expected in per_layer, layer
    assert "## Comparison: minilm-l6 against the references" in md and "### Overall similarity" in md
    assert "Not computed in this study: no probe, agreement or homogenization tables were given." in md
    assert len(files["heatmaps"]) == 2 and len(files["summaries"]) == 2  # no dendrogram: ref pairs not measured


# ------------------------------------------------------------------------------- rebuilding a results folder


def test_report_command_rebuilds_the_same_report_without_a_model(compare_outputs, tmp_path, monkeypatch, capsys):
    loaded_before = "homoscope.models" in sys.modules
    if loaded_before:  # another test imported the model code: make any use of it fail here
        def no_model(*_a, **_k):
            raise AssertionError("a report rebuild must not load a model")

        monkeypatch.setattr(sys.modules["homoscope.models"], "load_model", no_model)
    src, _, _ = compare_outputs
    dst = tmp_path / "rebuilt"
    assert main(["report", str(src), "--out", str(dst), "--dpi", "60", "-q"]) == 0
    assert "rebuilt" in capsys.readouterr().out
    for name in ("report.md", "report.html", "summary.csv", "similarity.csv", "manifest.json"):
        assert (dst / name).read_text(encoding="utf-8") == (src / name).read_text(encoding="utf-8"), name
    if not loaded_before:
        assert "homoscope.models" not in sys.modules  # the rebuild never imported the model code
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_load_results_reads_csv_manifest_and_extra_tables(outputs, compare_outputs, tmp_path):
    out, _ = outputs
    frame, manifest, extra = load_results(out)
    pd.testing.assert_frame_equal(frame, make_frame())
    assert manifest["corpus"]["name"] == CORPUS_NAME
    assert set(extra) == {"probes", "agreement", "homogenization"}
    for key, df in make_extra().items():
        pd.testing.assert_frame_equal(extra[key], df, check_dtype=False)
    csv_only = tmp_path / "csv"
    csv_only.mkdir()
    shutil.copy(compare_outputs[0] / "similarity.csv", csv_only)
    with pytest.raises(ValueError, match="manifest.json' is missing"):  # a folder without its manifest
        load_results(csv_only)
    shutil.copy(compare_outputs[0] / "manifest.json", csv_only)
    frame2, manifest2, extra2 = load_results(csv_only)
    pd.testing.assert_frame_equal(frame2, compare_outputs[2], check_dtype=False)
    assert manifest2 == json.loads((compare_outputs[0] / "manifest.json").read_text()) and extra2 == {}
    (csv_only / "similarity.csv").unlink()
    with pytest.raises(ValueError, match="neither similarity.parquet nor similarity.csv"):
        load_results(csv_only)


# ------------------------------------------------------------------------------------------- file names


def test_file_names_from_model_names_cannot_leave_the_output_folder(tmp_path):
    names = ["../../../etc/passwd", "/abs/model", "..", "a\\..\\b", "<script>x</script>"]
    out = tmp_path / "deep" / "out"
    stems = file_stems(names)
    for a in names:
        for b in names:
            if a != b:
                rel = heatmap_relpath("linear_cka", a, b, stems)
                assert inside(out / rel, out) and Path(rel).parts[0] == "heatmaps" and len(Path(rel).parts) == 2
    rows = [dict(model_a=a, layer_a=i, model_b=b, layer_b=j, measure="linear_cka", value=0.5 + 0.1 * (i + j),
                 n=10, d_a=4, d_b=4, unit="sentence") for a, b in [(names[0], names[1])] for i in range(2)
            for j in range(2)]
    extra = {"../../escape": pd.DataFrame({"x": [1]})}
    files = write_outputs(pd.DataFrame(rows), {}, out, progress=False, dpi=30, extra=extra,
                          measure_info=lambda _n: {"kind": "similarity", "value_range": (0, 1), "symmetric": True})
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert all(out.resolve() in p.resolve().parents for p in written), written
    extra_csv = [p for p in files["tables"] if p.name.startswith("extra_")]
    assert len(extra_csv) == 1 and extra_csv[0].parent == out and re.fullmatch(r"[\w.-]+\.csv", extra_csv[0].name)
    assert np.isfinite(pd.read_csv(out / "summary.csv").best).all()


@pytest.mark.parametrize("n", [30, 31])
def test_a_study_of_many_pairs_shows_its_heatmaps_from_their_files(tmp_path, n):
    from homoscope.report.analysis import T
    from homoscope.report.document import Document, Figure, FigureGrid, Section
    from homoscope.report.html import EMBEDDED_HEATMAPS, render_html

    assert EMBEDDED_HEATMAPS == 30
    (tmp_path / "heatmaps").mkdir()
    figs = []
    for i in range(n):
        Image.new("RGB", (20, 10), (i, 0, 0)).save(tmp_path / "heatmaps" / f"m__a{i} b__vs__c.png")
        figs.append(Figure(f"heatmaps/m__a{i} b__vs__c.png", f"pair {i}"))
    Image.new("RGB", (20, 10)).save(tmp_path / "summary_m_best.png")
    doc = Document(T("t"), (), (Section("s", T("s"), 2, (FigureGrid((Figure("summary_m_best.png", "sum"),)),)),
                                Section("layers", T("l"), 2, (FigureGrid(tuple(figs)),))), T("f"))
    page = render_html(doc, tmp_path)
    linked = re.findall(r'src="(heatmaps/[^"]+)"', page)
    assert page.count("data:image/png;base64,") == (1 if n > 30 else n + 1)  # the summary stays embedded
    assert linked == ([f"heatmaps/m__a{i}%20b__vs__c.png" for i in range(n)] if n > 30 else [])
