"""Every kind of bad input a study can meet gets a one-line error that names the thing at fault and
what to do, and never costs finished work: configuration problems fail before the first model runs.

Cases: empty or all-blank corpus, a corpus that is not UTF-8, texts longer than the model takes
(truncated and counted, never a crash), a model spec that resolves to nothing, a model that returns
no hidden states, study TOML with an unknown key / a wrong type / a missing field, an unknown measure,
an output folder that is a file or read-only, a read-only store, two models with one name and a corpus
value that is not data (a JSON ``NaN`` text). The
same messages come out of the ``homoscope`` command as one line on stderr with exit status 2.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from _reliability_common import _own_cache, corpus, make_study, models, tables_only  # noqa: F401
from homoscope.cli import main as cli_main
from homoscope.corpora import load_corpus
from homoscope.models import LoadedModel, resolve
from homoscope.models.tiny import TINY_TEXT, save_tiny, tiny_model
from homoscope.study import Study, run_study


_study = make_study


def _stored(tmp_path) -> list[str]:
    store = tmp_path / "store"
    return sorted(p.name for p in store.iterdir()) if store.is_dir() else []


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, f"error message spans lines: {text!r}"
    return text


def _deny_writes_in(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only for this process: chmod, and (as root, whom chmod does not stop) the
    write probe refused the way the system refuses it."""
    folder.chmod(0o555)
    real = tempfile.mkstemp

    def refuse(*args, **kwargs):
        where = kwargs.get("dir")
        if where is not None and Path(where).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real(*args, **kwargs)

    if hasattr(os, "geteuid") and os.geteuid() == 0:
        monkeypatch.setattr(tempfile, "mkstemp", refuse)


# ----------------------------------------------------------------------------------------- corpora
@pytest.mark.parametrize("content, what", [("", "is empty"), ("\n  \n\t\n\n", "holds only blank lines")])
def test_empty_or_blank_corpus(tmp_path, models, content, what):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        run_study(_study(tmp_path, path), progress=False, loaded_models=models, log=None)
    msg = _one_line(err.value)
    assert f"corpus file {str(path)!r} {what}; give at least one non-blank text" in msg
    assert _stored(tmp_path) == []


def test_corpus_not_utf8_names_line_and_byte(tmp_path, models):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond line\nna\u00efve caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError) as err:
        run_study(_study(tmp_path, path), progress=False, loaded_models=models, log=None)
    msg = _one_line(err.value)
    assert "is not UTF-8: invalid byte 0xef at line 3, byte 3 of that line (byte offset 25 in the file)" in msg
    assert "re-save the file as UTF-8" in msg


# ------------------------------------------------------------------------------- text too long
def test_text_longer_than_the_model_is_truncated_and_counted(tmp_path, models, tables_only):
    """max_length above the models' limit (64 positions) and a text far longer than both: no crash,
    the texts are cut to the model's limit, and the manifest counts them per model."""
    long_text = " ".join(["the cat sat on the mat"] * 60)  # ~360 tokens
    path = tmp_path / "long.txt"
    path.write_text("\n".join([*TINY_TEXT[:6], long_text, long_text + " again"]) + "\n", encoding="utf-8")
    lines = []
    result = run_study(_study(tmp_path, path, max_length=512), progress=False, loaded_models=models,
                       log=lines.append)
    on_disk = json.loads((result.out / "manifest.json").read_text())
    for rec in on_disk["models"]:
        assert rec["extract"]["truncated"] == 2, rec["name"]
        assert rec["extract"]["max_length_used"] == 64, rec["name"]
    assert any("2 of 8 texts truncated to 64 tokens" in line for line in lines), lines
    assert torch.isfinite(torch.tensor(result.frame["value"].to_numpy())).all()


# ------------------------------------------------------------------------------------- models
def test_model_spec_that_resolves_to_nothing_lists_what_was_tried(tmp_path, corpus, models):
    study = _study(tmp_path, corpus, models=["bert", "gpt2", "./no-such-model"])
    with pytest.raises(ValueError) as err:
        run_study(study, progress=False, loaded_models=models, log=None)
    msg = _one_line(err.value)
    assert msg.startswith("cannot resolve model spec './no-such-model'; tried: packaged names (minilm-l6, ")
    assert "local folder" in msg and "does not exist" in msg
    assert "hub id: './no-such-model' does not look like one" in msg
    # it fails before any model is extracted, not after the first two
    assert _stored(tmp_path) == []


def test_unresolvable_spec_near_a_packaged_name_suggests_it():
    with pytest.raises(ValueError, match=r"tried: packaged names .*did you mean the packaged model 'minilm-l6'"):
        resolve("./minilm-l5")


class _NoHiddenStates(torch.nn.Module):
    """A transformers model wrapper whose forward drops the hidden states."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids=None, attention_mask=None, **_kw):
        from transformers.modeling_outputs import BaseModelOutput

        out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
        return BaseModelOutput(last_hidden_state=out.last_hidden_state)


def test_model_that_returns_no_hidden_states(tmp_path, corpus, models):
    m = models["gpt2"]
    broken = LoadedModel(model=_NoHiddenStates(m.model), tokenizer=m.tokenizer,
                         info=dataclasses.replace(m.info, name="gpt2"))
    with pytest.raises(ValueError) as err:
        run_study(_study(tmp_path, corpus), progress=False, loaded_models={**models, "gpt2": broken}, log=None)
    msg = _one_line(err.value)
    assert "model 'gpt2' returned no hidden states with output_hidden_states=True" in msg
    assert "needs a model whose forward returns all layers" in msg


def test_two_models_with_the_same_name(tmp_path, corpus, models):
    study = _study(tmp_path, corpus, models=["org-a/model", "org-b/model"])
    with pytest.raises(ValueError) as err:
        run_study(study, progress=False, loaded_models=models, log=None)
    msg = _one_line(err.value)
    assert "the name(s) 'model' appear more than once" in msg
    assert '{name = "...", spec = "..."}' in msg


# ----------------------------------------------------------------------------------- study TOML
def _toml(tmp_path, text: str) -> Path:
    p = tmp_path / "study.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_toml_unknown_key_names_key_line_and_the_likely_one(tmp_path):
    p = _toml(tmp_path, 'models = ["a", "b"]\n\n# a comment\nsentense = 10\n')
    with pytest.raises(ValueError) as err:
        Study.from_toml(p)
    msg = _one_line(err.value)
    assert f"{p} line 4: unknown key 'sentense' (did you mean 'sentences'?); valid keys: " in msg


def test_toml_unknown_table_names_its_line(tmp_path):
    p = _toml(tmp_path, 'models = ["a", "b"]\n\n[extras]\nx = 1\n')
    with pytest.raises(ValueError, match=r"line 3: unknown key 'extras'"):
        Study.from_toml(p)


@pytest.mark.parametrize("text, line, expected", [
    ('models = ["a", "b"]\nsentences = "ten"\n', 2, "key 'sentences' must be int, got str 'ten'"),
    ('models = ["a", "b"]\nsentences = 1e3\n', 2, "key 'sentences' must be int, got float 1000.0"),
    ('models = ["a", "b"]\noutliers = 1\n', 2, "key 'outliers' must be bool, got int 1"),
    ('models = ["a", "b"]\nmeasures = "linear_cka"\n', 2, "key 'measures' must be list, got str"),
    ('name = "x"\nmodels = ["a", 2]\n', 2, "key 'models' holds int 2; each entry must be a model spec"),
    ('models = ["a", {name = "b"}]\n', 1,
     "key 'models' holds the table {'name': 'b'}; a model table has a string 'spec'"),
    ('models = ["a", {spec = "b", dtype = "x"}]\n', 1, "(unknown: 'dtype')"),
    ('models = ["a", "b"]\n\nmeasures = ["linear_cka", 3]\n', 3, "key 'measures' holds int 3"),
])
def test_toml_wrong_type_names_key_and_line(tmp_path, text, line, expected):
    p = _toml(tmp_path, text)
    with pytest.raises(ValueError) as err:
        Study.from_toml(p)
    msg = _one_line(err.value)
    assert f"line {line}: " in msg and expected in msg


def test_toml_missing_field_and_syntax_error(tmp_path):
    with pytest.raises(ValueError, match=r"missing key 'models' \(a list of model specs\)"):
        Study.from_toml(_toml(tmp_path, "sentences = 10\n"))
    with pytest.raises(ValueError, match=r"not valid TOML: .*line 2"):
        Study.from_toml(_toml(tmp_path, 'models = ["a", "b"\nsentences = 10\n'))
    with pytest.raises(ValueError, match=r"study file '.*nope\.toml' does not exist"):
        Study.from_toml(tmp_path / "nope.toml")


# --------------------------------------------------------------------------------------- measures
def test_unknown_measure_lists_the_valid_ones(tmp_path, corpus, models):
    from homoscope.measures import list_measures

    with pytest.raises(ValueError) as err:
        run_study(_study(tmp_path, corpus, measures=["linear_cka", "cka_linear"]), progress=False,
                  loaded_models=models, log=None)
    msg = _one_line(err.value)
    assert "measures: 'cka_linear' is not a known measure; valid: " in msg
    for name in list_measures():
        assert name in msg


# ------------------------------------------------------------------------------- output folders
def test_output_folder_that_is_a_file(tmp_path, corpus, models):
    f = tmp_path / "results"
    f.write_text("not a folder")
    with pytest.raises(ValueError) as err:
        run_study(_study(tmp_path, corpus, out=str(f)), progress=False, loaded_models=models, log=None)
    assert f"out={str(f)!r} is a file; give a folder for the study's outputs" in _one_line(err.value)
    with pytest.raises(ValueError) as err:
        run_study(_study(tmp_path, corpus, out=str(f / "sub")), progress=False, loaded_models=models, log=None)
    assert f"out={str(f / 'sub')!r}: {str(f)!r} is a file, not a folder" in _one_line(err.value)
    assert _stored(tmp_path) == []


def test_read_only_output_folder_fails_before_any_model(tmp_path, corpus, models, monkeypatch):
    ro = tmp_path / "readonly"
    ro.mkdir()
    _deny_writes_in(monkeypatch, ro)
    try:
        for out in (ro, ro / "new-sub-folder"):
            with pytest.raises(ValueError) as err:
                run_study(_study(tmp_path, corpus, out=str(out)), progress=False, loaded_models=models, log=None)
            msg = _one_line(err.value)
            assert f"out={str(out)!r} is not writable" in msg and "Permission denied (EACCES)" in msg
            assert "give another output folder as out" in msg  # the keyword, as typed in Python
        assert _stored(tmp_path) == []
    finally:
        ro.chmod(0o755)


def test_read_only_store_fails_before_any_model(tmp_path, corpus, models, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    _deny_writes_in(monkeypatch, store)
    try:
        with pytest.raises(ValueError) as err:
            run_study(_study(tmp_path, corpus), progress=False, loaded_models=models, log=None)
        msg = _one_line(err.value)
        assert f"store={str(store)!r} is not writable" in msg and "give another folder as store" in msg
        assert list(store.iterdir()) == []
    finally:
        store.chmod(0o755)


# ------------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [str(save_tiny("bert", root / "bert-a", seed=0)), str(save_tiny("bert", root / "bert-b", seed=1))]


@pytest.mark.parametrize("case", ["unknown key", "wrong type", "missing models", "unknown measure",
                                  "same name", "out is a file", "empty corpus", "not utf-8", "no such model",
                                  "nan text"])
def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, model_folders, case):
    good = tmp_path / "ok.txt"
    good.write_text("\n".join(TINY_TEXT[:6]) + "\n", encoding="utf-8")
    models = json.dumps(model_folders)
    corpus, body, expected = str(good), "", ""
    if case == "unknown key":
        body, expected = "sentense = 4\n", "line 5: unknown key 'sentense'"
    elif case == "wrong type":
        body, expected = "sentences = '4'\n", "line 5: key 'sentences' must be int"
    elif case == "missing models":
        models, expected = None, "missing key 'models'"
    elif case == "unknown measure":
        body, expected = 'measures = ["nope"]\n', "'nope' is not a known measure; valid: linear_cka"
    elif case == "same name":
        models, expected = json.dumps([model_folders[0], model_folders[0]]), "appear more than once"
    elif case == "out is a file":
        (tmp_path / "out").write_text("x")
        expected = "is a file; give a folder"
    elif case == "empty corpus":
        (tmp_path / "empty.txt").write_text("\n\n")
        corpus, expected = str(tmp_path / "empty.txt"), "holds only blank lines; give at least one non-blank text"
    elif case == "not utf-8":
        (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe bad\n")
        corpus, expected = str(tmp_path / "bad.txt"), "is not UTF-8: invalid byte 0xff at line 2, byte 1"
    elif case == "nan text":
        (tmp_path / "nan.jsonl").write_text('{"text": "A fine text."}\n{"text": NaN}\n')
        corpus, expected = str(tmp_path / "nan.jsonl"), "text column 'text' at line 2 holds NaN, a number that is not finite"
    elif case == "no such model":
        models, expected = json.dumps([model_folders[0], str(tmp_path / "gone")]), "cannot resolve model spec"
    lines = [f"out = {json.dumps(str(tmp_path / 'out'))}", f"store = {json.dumps(str(tmp_path / 'store'))}",
             f"corpus = {json.dumps(corpus)}"]
    if models is not None:
        lines.append(f"models = {models}")
    toml = tmp_path / "study.toml"
    toml.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    code = cli_main(["run", str(toml), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("homoscope: error: "), err
    assert expected in err, err
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").iterdir()) == []


def test_corpus_loader_gives_the_same_messages(tmp_path):
    """The corpus loader alone gives the same messages (used by every corpus kind)."""
    p = tmp_path / "blank.csv"
    p.write_text("text,label\n ,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has only blank texts .*give at least one non-blank text"):
        load_corpus(str(p), label_column="label")
