"""A study end to end on tiny random-init models: frame, files, reuse, CKA sanity, configuration errors."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from homoscope.measures import debiased_cka, linear_cka
from homoscope.models.tiny import TINY_TEXT, tiny_model
from homoscope.study import Study, model_pairs, run_study

FRAME_COLUMNS = ["model_a", "layer_a", "model_b", "layer_b", "measure", "value", "n", "d_a", "d_b", "unit"]


@pytest.fixture(scope="module")
def models():
    return {
        "bert-a": tiny_model("bert", seed=0),
        "bert-b": tiny_model("bert", seed=1),
        "gpt2": tiny_model("gpt2", seed=0),
    }


@pytest.fixture(scope="module")
def result(tmp_path_factory, corpus_file, models):
    out = tmp_path_factory.mktemp("study")
    study = Study(models=list(models), corpus=str(corpus_file), sentences=None, out=str(out / "out"),
                  store=str(out / "store"), measures=["linear_cka", "debiased_cka"])
    return run_study(study, progress=False, loaded_models=models, log=None)


def test_frame_is_tidy_and_complete(result, models):
    f = result.frame
    assert list(f.columns[: len(FRAME_COLUMNS)]) == FRAME_COLUMNS
    n = len(TINY_TEXT)
    assert (f["n"] == n).all() and (f["unit"] == "sentence").all()
    for a, b in model_pairs(list(models), "all"):
        la = models[a].model.config.num_hidden_layers + 1
        lb = models[b].model.config.num_hidden_layers + 1
        for m in ("linear_cka", "debiased_cka"):
            cell = f[(f.model_a == a) & (f.model_b == b) & (f.measure == m)]
            assert len(cell) == la * lb
            assert set(cell.layer_a) == set(range(la)) and set(cell.layer_b) == set(range(lb))
    assert np.isfinite(f["value"]).all()


def test_frame_values_equal_the_measure_on_the_stacks(result):
    f, reps = result.frame, result.representations
    expected = linear_cka(reps["bert-a"], reps["gpt2"]).numpy()
    cell = f[(f.model_a == "bert-a") & (f.model_b == "gpt2") & (f.measure == "linear_cka")]
    got = cell.pivot(index="layer_a", columns="layer_b", values="value").to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_cka_of_a_model_with_itself_is_one_and_two_random_models_below(result):
    reps = result.representations
    for measure in (linear_cka, debiased_cka):
        self_sim = measure(reps["bert-a"], reps["bert-a"])
        assert torch.allclose(torch.diagonal(self_sim), torch.ones(self_sim.shape[0], dtype=torch.float64),
                              atol=1e-10)
    cross = linear_cka(reps["bert-a"], reps["bert-b"])
    assert (torch.diagonal(cross)[1:] < 0.999).all()


def test_outputs_written(result):
    out = result.out
    for name in ("similarity.csv", "similarity.parquet", "manifest.json", "report.md", "study.toml"):
        assert (out / name).is_file(), name
    pngs = list((out / "heatmaps").glob("*.png"))
    assert len(pngs) == 3 * 2  # three pairs, two measures
    csv = pd.read_csv(out / "similarity.csv")
    assert len(csv) == len(result.frame)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["bert-a", "bert-b", "gpt2"]
    assert all(m["fingerprint"] for m in manifest["models"])
    assert {"load_corpus", "measures", "extract/gpt2"} <= set(manifest["timings"])
    report = (out / "report.md").read_text()
    for png in pngs:
        assert f"heatmaps/{png.name}" in report


def test_rerun_reuses_stored_representations(result, corpus_file, models, tmp_path):
    study = Study.from_toml(result.out / "study.toml")
    study.out = str(tmp_path / "again")
    again = run_study(study, progress=False, loaded_models=models, log=None)
    assert all(m["reused"] for m in again.manifest["models"])
    pd.testing.assert_frame_equal(again.frame, result.frame)


def test_study_toml_errors_name_key_and_line(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('models = ["a", "b"]\nsentense = 10\n')
    with pytest.raises(ValueError, match=r"line 2: unknown key 'sentense'"):
        Study.from_toml(p)
    p.write_text('models = ["a", "b"]\nsentences = "ten"\n')
    with pytest.raises(ValueError, match=r"line 2: key 'sentences' must be int"):
        Study.from_toml(p)
    p.write_text('sentences = 10\n')
    with pytest.raises(ValueError, match="missing key 'models'"):
        Study.from_toml(p)


def test_study_validation_messages(tmp_path):
    with pytest.raises(ValueError, match="'nope' is not a known measure; valid: linear_cka"):
        Study(models=["a", "b"], measures=["nope"]).validate()
    with pytest.raises(ValueError, match=r"'rbf-cka' is not a known measure; valid: .*\(did you mean 'rbf_cka'\?\)$"):
        Study(models=["a", "b"], measures=["rbf-cka"]).validate()
    with pytest.raises(ValueError, match="'m' appear more than once"):
        Study(models=["x/m", "y/m"]).validate()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        Study(models=["a", "b"], out=str(f)).validate()
    with pytest.raises(ValueError, match="at least two models"):
        Study(models=["a"]).validate()


def test_config_or_tokenizer_change_is_not_reused(tmp_path, corpus_file, models):
    """A changed activation function keeps the weights but changes the numbers: nothing stale is reused."""
    import copy

    base = dict(corpus=str(corpus_file), sentences=None, store=str(tmp_path / "store"), measures=["linear_cka"],
                agreement="off", outliers=False)
    first = run_study(Study(models=["bert-a", "gpt2"], out=str(tmp_path / "a"), **base), progress=False,
                      loaded_models=models, log=None)
    changed = copy.deepcopy(models["bert-a"])
    changed.model.config.hidden_act = "relu"
    for layer in changed.model.encoder.layer:
        from transformers.activations import ACT2FN

        layer.intermediate.intermediate_act_fn = ACT2FN["relu"]
    again = run_study(Study(models=["bert-a", "gpt2"], out=str(tmp_path / "b"), **base), progress=False,
                      loaded_models={"bert-a": changed, "gpt2": models["gpt2"]}, log=None)
    reused = {m["name"]: m["reused"] for m in again.manifest["models"]}
    assert reused == {"bert-a": False, "gpt2": True}
    assert not torch.equal(again.representations["bert-a"], first.representations["bert-a"])


def test_duplicate_measures_and_unavailable_devices_fail_before_any_work():
    with pytest.raises(ValueError, match="'linear_cka' named more than once"):
        Study(models=["a", "b"], measures=["linear_cka", "linear_cka"]).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' is not available here"):
            Study(models=["a", "b"], device="cuda").validate()
    with pytest.raises(ValueError, match="device='tpu' is not a torch device"):
        Study(models=["a", "b"], device="tpu").validate()


def test_study_toml_round_trips_non_ascii_names(tmp_path):
    study = Study(models=["a", {"name": "modèle 😀", "spec": "b"}], name="étude 😀")
    path = tmp_path / "study.toml"
    path.write_text(study.to_toml(), encoding="utf-8")
    back = Study.from_toml(path)
    assert back.name == "étude 😀" and back.models[1]["name"] == "modèle 😀"
