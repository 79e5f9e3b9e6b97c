"""Every option is checked before any model loads, and every message names the option as the user typed
it: the flag on the command line (``--max-length``), the key where a study file sets it, the keyword in
Python. One mechanism does it (:func:`homoscope._spelling.typed`, with the labels the command line sets).

Cases: a model folder that needs code of its own, ``max_length`` below the room for special tokens,
counts below their rule (sentences, permutations, bootstrap), ``pooling='cls'`` without a CLS token,
third-party warnings about truncated texts, model tables and corpus paths in Python, the CCA family with
fewer rows than columns, corpus columns and devices named by flag, and the streamed bootstrap's layer
blocks at a small ``memory_mb``.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest

from _reliability_common import _own_cache, corpus, make_study, models  # noqa: F401
from homoscope._spelling import spelled
from homoscope.cli import main as cli_main
from homoscope.models import load_model
from homoscope.models.tiny import TINY_TEXT, save_tiny, tiny_model
from homoscope.study import Study, run_study


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two tiny model folders and one whose config asks for code of its own (an unknown model type)."""
    root = tmp_path_factory.mktemp("models")
    bert, gpt2 = save_tiny("bert", root / "bert", seed=0), save_tiny("gpt2", root / "gpt2", seed=0)
    custom = shutil.copytree(bert, root / "custom")
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="homegrown", auto_map={"AutoConfig": "configuration_homegrown.HomegrownConfig",
                                                    "AutoModel": "modeling_homegrown.HomegrownModel"})
    (custom / "config.json").write_text(json.dumps(config))
    return {"bert": str(bert), "gpt2": str(gpt2), "custom": str(custom)}


@pytest.fixture()
def nothing_runs(monkeypatch):
    """Fail the test if any model is loaded or extracted."""
    import homoscope.models
    import homoscope.study.run

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded or extracted before the options were checked")

    monkeypatch.setattr(homoscope.models, "load_model", refuse)
    monkeypatch.setattr(homoscope.study.run, "extract_model", refuse)


def _cli(tmp_path, capsys, models: list[str], *flags: str, body: str = "", corpus=None) -> tuple[int, str]:
    """``homoscope run`` of a study file with ``models`` (and ``body``) and ``flags``: exit status, stderr."""
    if corpus is None:
        corpus = tmp_path / "texts.txt"
        corpus.write_text("\n".join(TINY_TEXT[:8]) + "\n", encoding="utf-8")
    toml = tmp_path / "study.toml"
    toml.write_text(f"models = {json.dumps(models)}\ncorpus = {json.dumps(str(corpus))}\n"
                    f"out = {json.dumps(str(tmp_path / 'out'))}\nstore = {json.dumps(str(tmp_path / 'store'))}\n"
                    + body, encoding="utf-8")
    code = cli_main(["run", str(toml), "-q", *flags])
    err = capsys.readouterr().err
    assert err.count("\n") <= 1, err  # one line
    return code, err.strip()


def _message(call) -> str:
    with pytest.raises(ValueError) as err:
        call()
    text = str(err.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------------- code of its own
def test_custom_code_refusal_is_one_line_naming_the_switch_before_any_model(tmp_path, capsys, folders, nothing_runs):
    code, err = _cli(tmp_path, capsys, [folders["bert"], folders["custom"]])
    assert code == 2
    assert "model 'custom' needs code of its own (configuration_homegrown.HomegrownConfig, " in err
    assert "--trust-remote-code" in err and "trust_remote_code" not in err and "hf.co" not in err
    study = make_study(tmp_path, tmp_path / "texts.txt", models=[folders["bert"], folders["custom"]])
    msg = _message(lambda: run_study(study, progress=False, log=None))
    assert "homoscope runs a model's own code only with trust_remote_code=True" in msg  # the keyword in Python


def test_load_model_refuses_custom_code_in_one_line(folders):
    msg = _message(lambda: load_model(folders["custom"], device="cpu"))
    assert msg.startswith("model 'custom' needs code of its own") and "hf.co" not in msg


# --------------------------------------------------------------------------------- counts and lengths
@pytest.mark.parametrize("flags, expected", [
    (["--max-length", "2"], "--max-length=2 must be an integer >= 4"),
    (["--sentences", "-5"], "--sentences=-5 must be 0 (every text) or an integer >= 4"),
    (["--permutations", "1"], "--permutations=1 must be 0 (off) or an integer >= 2"),
    (["--bootstrap", "1"], "--bootstrap=1 must be 0 (off) or an integer >= 2"),
])
def test_counts_below_their_rule_are_refused_by_flag(tmp_path, capsys, folders, nothing_runs, flags, expected):
    code, err = _cli(tmp_path, capsys, [folders["bert"], folders["gpt2"]], *flags)
    assert code == 2 and err == f"homoscope: error: {expected}"


def test_counts_below_their_rule_are_named_by_key_and_keyword(tmp_path, capsys, folders, nothing_runs):
    code, err = _cli(tmp_path, capsys, [folders["bert"], folders["gpt2"]], body="\nmax_length = 3\n")
    assert code == 2 and "study.toml line 6: max_length=3 must be an integer >= 4" in err
    for kw, expected in [({"sentences": -5}, "sentences=-5 must be 0 (every text) or an integer >= 4"),
                         ({"permutations": 1}, "permutations=1 must be 0 (off) or an integer >= 2"),
                         ({"bootstrap": 1}, "bootstrap=1 must be 0 (off) or an integer >= 2")]:
        msg = _message(lambda: Study(models=["a", "b"], **kw).validate())
        assert msg == expected  # and never "(or omitted)": leaving sentences out gives 1,000 texts


def test_special_tokens_that_leave_no_room_are_refused_before_extraction(tmp_path, corpus, models, monkeypatch):
    monkeypatch.setattr(models["bert"].tokenizer, "num_special_tokens_to_add", lambda pair=False: 4)
    msg = _message(lambda: run_study(make_study(tmp_path, corpus, max_length=4), progress=False,
                                     loaded_models=models, log=None))
    assert msg == ("model 'bert' adds 4 special tokens to every text, which leave no room for text in "
                   "max_length=4 tokens; raise max_length")
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("*.safetensors"))


def test_options_that_fail_together_are_refused_before_any_model(tmp_path, corpus, models, nothing_runs):
    msg = _message(lambda: Study(models=["a", "b"], batch_tokens=64).validate())
    assert msg == "batch_tokens=64 must be 0 (suited to the device) or at least max_length=128, so that a text fits " \
                  "in a batch"
    msg = _message(lambda: run_study(make_study(tmp_path, corpus, agreement="on"), progress=False,
                                     loaded_models=models, log=None))
    assert msg == "agreement='on' but the corpus has no labels (give label_column for a .jsonl/.csv corpus)"


# --------------------------------------------------------------------------------- pooling, truncation
def test_cls_pooling_refusal_names_the_model_and_the_option(tmp_path, corpus, models):
    study = make_study(tmp_path, corpus, pooling="cls")
    msg = _message(lambda: run_study(study, progress=False, loaded_models=models, log=None))
    assert msg.startswith("model 'gpt2': pooling='cls' needs a special token (CLS/BOS) at the start of every text")
    assert msg.endswith("use pooling='first' or pooling='mean'")
    with spelled({"pooling": "--pooling"}):
        msg = _message(lambda: run_study(study, progress=False, loaded_models=models, log=None))
    assert "model 'gpt2': --pooling=cls needs" in msg and msg.endswith("use --pooling=first or --pooling=mean")


def test_truncated_texts_give_no_third_party_indexing_warning():
    import logging

    from transformers.utils import logging as hf_logging

    from homoscope.extract import extract
    from homoscope.extract.words import encode_tokens, encode_words, plan_words

    fresh = tiny_model("bert", seed=0)  # a tokenizer of its own: transformers warns once per tokenizer
    texts = [" ".join(["the cat sat on the mat"] * 30), "a short text"]
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    hf = logging.getLogger("transformers")
    level = hf_logging.get_verbosity()
    hf.addHandler(handler)
    hf_logging.set_verbosity_warning()
    try:
        extract(fresh, texts, max_length=16, progress=False)
        encode_words(fresh.tokenizer, texts, plan_words(texts), 16)
        encode_tokens(fresh.tokenizer, texts, 16)
    finally:
        hf.removeHandler(handler)
        hf_logging.set_verbosity(level)
    assert not [m for m in said if "indexing errors" in m], said
    # transformers marks the warning as given (even where its logging is silenced) only when it is due
    assert not fresh.tokenizer.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")


# --------------------------------------------------------------------------------- Python values
@pytest.mark.parametrize("entry, expected", [
    ({"name": None, "spec": "b"}, "models holds the table {'name': None, 'spec': 'b'}; a model table has a string "
                                  "'spec' and an optional string 'name', nothing else"),
    ({"name": 7, "spec": "b"}, "models holds the table {'name': 7, 'spec': 'b'}"),
    ({"spec": "b", "dtype": "x"}, "nothing else (unknown: 'dtype')"),
    (3, "models holds int 3; each entry must be a model spec (a string)"),
])
def test_model_tables_follow_the_study_file_rules_in_python(entry, expected):
    assert expected in _message(lambda: Study(models=["a", entry]).validate())


def test_a_missing_or_undecodable_corpus_path_is_refused_before_any_model(tmp_path, capsys, folders, nothing_runs):
    missing = tmp_path / "nope.txt"
    msg = _message(lambda: Study(models=["a", "b"], corpus=str(missing)).validate())
    assert msg.startswith(f"corpus file {str(missing)!r} does not exist")
    msg = _message(lambda: Study(models=["a", "b"], corpus="caf\udce9.txt").validate())
    assert msg == "corpus: 'caf\\udce9.txt' is not valid UTF-8 (its bytes do not decode); rename it with a UTF-8 name"
    code, err = _cli(tmp_path, capsys, [folders["bert"], folders["gpt2"]], "--corpus", "caf\udce9.txt")
    assert code == 2 and "error: --corpus: 'caf\\udce9.txt' is not valid UTF-8" in err


def test_cca_with_no_more_rows_than_columns_fails_before_any_model(tmp_path, capsys, folders, corpus, models,
                                                                   nothing_runs):
    code, err = _cli(tmp_path, capsys, [folders["bert"], folders["gpt2"]], "--measures", "cca_rho,linear_cka")
    assert code == 2
    assert ("cca_rho need(s) more rows than columns (n > d), but the study has n=8 texts and model 'bert' is 32 "
            "wide; give more texts with --sentences, use svcca, or leave cca_rho out of --measures") in err
    study = make_study(tmp_path, corpus, measures=["pwcca"])  # widths of models given loaded
    assert "leave pwcca out of measures" in _message(lambda: run_study(study, progress=False, loaded_models=models,
                                                                       log=None))


# --------------------------------------------------------------------------------- flags, not keywords
def test_command_line_names_flags_and_study_file_keys(tmp_path, capsys, folders, nothing_runs):
    table = tmp_path / "texts.csv"
    table.write_text("body,topic\n" + "".join(f"{t.replace(',', ' ')},x\n" for t in TINY_TEXT[:8]), encoding="utf-8")
    specs = [folders["bert"], folders["gpt2"]]
    code, err = _cli(tmp_path, capsys, specs, "--text-column", "sentence", corpus=table)
    assert code == 2 and "name the right one with --text-column" in err and "text_column" not in err
    code, err = _cli(tmp_path, capsys, specs, body='text_column = "sentence"\n', corpus=table)
    assert code == 2 and "name the right one with text_column" in err  # the key the file set
    code, err = _cli(tmp_path, capsys, specs, "--device", "cuda:7")
    assert code == 2 and re.search(r"--device=cuda:7 is not available here .*; set --device to auto or cpu$", err)


def test_streamed_bootstrap_in_many_layer_blocks_warns_naming_memory_mb():
    from homoscope.study.run import _check_plan
    from homoscope.study.scoring import warn_layer_blocks

    shapes, pairs = {"a": (7, 384), "b": (13, 768)}, [("a", "b")]
    with pytest.warns(RuntimeWarning) as got:
        warn_layer_blocks(shapes, pairs, 512, 32)
    assert str(got[0].message) == (
        "streamed scoring: at memory_mb=512 the sums of 32 bootstrap groups fit few layer pairs at a time, so 'a' "
        "vs 'b' takes 91 layer blocks, each a pass over all rows (slow); memory_mb=2048 takes at most 13, or lower "
        "bootstrap_groups")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_layer_blocks(shapes, pairs, 2048, 32)  # enough: quiet
    study = Study(models=["a", "b"], unit="word", bootstrap=100)  # the words case: many rows, a bootstrap
    with spelled({"memory_mb": "--memory-mb", "bootstrap_groups": "--bootstrap-groups"}):
        with pytest.warns(RuntimeWarning, match=r"at --memory-mb=512 .* --memory-mb=2048 .*--bootstrap-groups$"):
            _check_plan(study, 20_000, shapes)
