"""Arguments of the wrong kind in the public Python API, and model folders with a damaged file.

Every public function, fed None, a string, a numpy object array, a ragged list, an int or a list of
None where it takes an array, raises a one-line ValueError whose message starts with the argument's
name as the caller typed it (``X``, ``groups``, ``pred['m1']``; some after the function's name), never
a TypeError or RuntimeError from inside numpy or torch. Nested lists of numbers are accepted where an array of numbers is taken; an
option a measure does not take is a ValueError that lists those it takes. A truncated
``model.safetensors``, a damaged ``pytorch_model.bin`` or a ``config.json`` that is not JSON is a
ValueError naming the file, and from the command line one line with exit status 2.
"""
from __future__ import annotations

import errno
import re
import shutil

import numpy as np
import pytest
import torch

import homoscope.agreement as A
import homoscope.measures as M
from _reliability_common import _own_cache, corpus, make_study, models, tables_only  # noqa: F401
from homoscope.cli import main as cli_main
from homoscope.corpora import load_corpus
from homoscope.extract import extract
from homoscope.models import load_model
from homoscope.models.tiny import TINY_TEXT, save_tiny
from homoscope.study import Study, StudyWriteError, run_study

N = 12
_rng = np.random.default_rng(0)
X = _rng.standard_normal((2, N, 3))
Y = _rng.standard_normal((2, N, 4))
LABELS = np.array(["a", "b", "c"] * (N // 3))
DOCS = [f"d{i // 2}" for i in range(N)]
PRED = {"m1": _rng.integers(0, 3, N), "m2": _rng.integers(0, 3, N)}
FAILURES = np.array([[1, 0] * (N // 2), [1, 1, 0] * (N // 3)])
STACKS = {"a": torch.tensor(X, dtype=torch.float32), "b": torch.tensor(Y, dtype=torch.float32)}
TRAIN, TEST = np.arange(0, 8), np.arange(8, N)

#: What is fed where an array of numbers is taken.
NUMBERS = {
    "None": None,
    "str": "abc",
    "object array": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=object),
    "ragged list": [[1.0, 2.0], [3.0]],
    "int": 7,
    "list of None": [None] * N,
}
#: What is fed where one label or id per row is taken (a list of lists is no such thing).
IDS = {
    "None": None,
    "str": "abc",
    "object array": np.array([object() for _ in range(N)], dtype=object),
    "ragged list": [[1, 2], [3]],
    "list of lists": [[0]] * N,
    "int": 7,
    "list of None": [None] * N,
}
#: The same for an optional argument, where None means "none given".
OPTIONAL_IDS = {k: v for k, v in IDS.items() if k != "None"}

# (argument name as typed, what it takes, the call with the bad value v)
CASES = [(f"{m}", "X", NUMBERS, lambda v, m=m: M.get_measure(m).fn(v, Y)) for m in M.list_measures()]
CASES += [(f"{m}", "Y", NUMBERS, lambda v, m=m: M.get_measure(m).fn(X, v)) for m in M.list_measures()]
CASES += [
    ("compute", "X", NUMBERS, lambda v: M.compute("linear_cka", v, Y)),
    ("with_controls", "X", NUMBERS, lambda v: M.with_controls("linear_cka", v, Y, n_permutations=4, n_boot=4)),
    ("with_controls", "Y", NUMBERS, lambda v: M.with_controls("rsa", X, v, n_permutations=4, n_boot=4)),
    ("with_controls", "groups", OPTIONAL_IDS,
     lambda v: M.with_controls("linear_cka", X, Y, n_permutations=None, n_boot=4, groups=v)),
    ("permutation_null", "X", NUMBERS, lambda v: M.permutation_null("debiased_cka", v, Y, 4)),
    ("bootstrap_ci", "Y", NUMBERS, lambda v: M.bootstrap_ci("procrustes", X, v, 4)),
    ("bootstrap_ci", "groups", OPTIONAL_IDS, lambda v: M.bootstrap_ci("linear_cka", X, Y, 4, groups=v)),
    ("bootstrap_weights", "groups", OPTIONAL_IDS, lambda v: M.bootstrap_weights(N, 4, groups=v)),
    ("group_codes", "groups", IDS, lambda v: M.group_codes(v, N)),
    ("percentile_interval", "values", NUMBERS, lambda v: M.percentile_interval(v)),
    ("analytic_null", "X", NUMBERS, lambda v: M.analytic_null("linear_cka", v, Y)),
    ("analytic_null", "Y", NUMBERS, lambda v: M.analytic_null("debiased_cka", X, v)),
    ("layer_moments", "X", NUMBERS, lambda v: M.layer_moments(v)),
    ("linear_cka_null", "observed", NUMBERS,
     lambda v: M.linear_cka_null(M.layer_moments(X), M.layer_moments(Y), v)),
    ("MomentSums.update", "chunk", NUMBERS, lambda v: M.MomentSums().update(v)),
    ("CrossMoments.update", "x", NUMBERS, lambda v: M.CrossMoments().update(v, Y)),
    ("CrossMoments.update", "y", NUMBERS, lambda v: M.CrossMoments().update(X, v)),
    ("StreamingMeasure.update", "x", NUMBERS, lambda v: M.StreamingMeasure("linear_cka").update(v, Y)),
    ("MinibatchCKA.update", "y", NUMBERS, lambda v: M.MinibatchCKA().update(X, v)),
    ("GroupedMoments.update", "x", NUMBERS, lambda v: M.GroupedMoments(3).update(v, Y, np.zeros(N, int))),
    ("GroupedMoments.update", "group", NUMBERS, lambda v: M.GroupedMoments(3).update(X, Y, v)),
    ("cohen_kappa", "a", IDS, lambda v: A.cohen_kappa(v, LABELS)),
    ("cohen_kappa", "b", IDS, lambda v: A.cohen_kappa(LABELS, v)),
    ("fleiss_kappa", "counts", NUMBERS, lambda v: A.fleiss_kappa(v)),
    ("category_counts", "ratings", NUMBERS, lambda v: A.category_counts(v)),
    ("jsd", "p", NUMBERS, lambda v: A.jsd(v, [0.5, 0.5])),
    ("jsd", "q", NUMBERS, lambda v: A.jsd([0.5, 0.5], v)),
    ("agreement_table", "pred['m1']", IDS, lambda v: A.agreement_table({"m1": v, "m2": PRED["m2"]}, PRED["m1"])),
    ("agreement_table", "y_true", IDS, lambda v: A.agreement_table(PRED, v)),
    ("agreement_table", "groups", OPTIONAL_IDS, lambda v: A.agreement_table(PRED, PRED["m1"], bootstrap=4, groups=v)),
    ("agreement_table", "proba['m1']", NUMBERS,
     lambda v: A.agreement_table(PRED, PRED["m1"], proba={"m1": v, "m2": np.full((N, 3), 1 / 3)})),
    ("homogenization", "failures", NUMBERS, lambda v: A.homogenization(v)),
    ("homogenization", "groups", OPTIONAL_IDS, lambda v: A.homogenization(FAILURES, v)),
    ("homogenization_null", "failures", NUMBERS, lambda v: A.homogenization_null(v, permutations=4)),
    ("split_by_document", "doc_ids", IDS, lambda v: A.split_by_document(v)),
    ("split_by_document", "labels", OPTIONAL_IDS, lambda v: A.split_by_document(DOCS, labels=v)),
    ("fit_probes", "stacks['a']", NUMBERS, lambda v: A.fit_probes({**STACKS, "a": v}, LABELS, TRAIN, TEST)),
    ("fit_probes", "labels", IDS, lambda v: A.fit_probes(STACKS, v, TRAIN, TEST)),
    ("fit_probes", "train_idx", NUMBERS, lambda v: A.fit_probes(STACKS, LABELS, v, TEST)),
    ("fit_probes", "groups", OPTIONAL_IDS, lambda v: A.fit_probes(STACKS, LABELS, TRAIN, TEST, groups=v)),
    ("wilson_interval", "successes", NUMBERS, lambda v: A.wilson_interval(v, 5)),
    ("Study", "models", IDS, lambda v: Study(models=v).validate()),
    ("Study", "measures", IDS, lambda v: Study(models=["a", "b"], measures=v).validate()),
]
PARAMS = [pytest.param(call, name, bad, id=f"{fn}({name}={what})")
          for fn, name, kind, call in CASES for what, bad in kind.items()]


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, f"error message spans lines: {text!r}"
    return text


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("call, name, bad", PARAMS)
def test_a_bad_argument_is_a_value_error_that_names_it(call, name, bad):
    with pytest.raises(ValueError) as err:
        call(bad)
    msg = _one_line(err.value)
    assert re.match(rf"(\w+: )?{re.escape(name)}(?!\w)", msg), msg  # the argument first (after the function's name)


def test_pred_that_is_not_a_mapping_and_the_study_arguments():
    with pytest.raises(ValueError, match=r"^pred must be a mapping \{model: predictions \[n\]\}; got list"):
        A.agreement_table([PRED["m1"], PRED["m2"]], LABELS)
    with pytest.raises(ValueError, match=r"^study must be a Study .*; got a str 'study.toml'"):
        run_study("study.toml")
    with pytest.raises(ValueError, match=r"^study must be a Study .*; got None"):
        run_study(None)
    with pytest.raises(ValueError, match=r"^loaded_models must be a mapping \{name: LoadedModel\}; got a list"):
        run_study(Study(models=["a", "b"]), loaded_models=[1, 2])
    with pytest.raises(ValueError, match=r"^loaded_models\['a'\]: loaded must be a loaded model"):
        run_study(Study(models=["a", "b"]), loaded_models={"a": "minilm-l6"})
    with pytest.raises(ValueError, match=r"^corpus spec 7 is neither 'bbc' nor a path"):
        load_corpus(7)
    with pytest.raises(ValueError, match=r"^names must be a measure name or a non-empty list of them; got None"):
        M.with_controls(None, X, Y)


def test_nested_lists_of_numbers_are_arrays():
    assert torch.allclose(M.linear_cka(X.tolist(), Y.tolist()), M.linear_cka(X, Y), atol=1e-12)
    assert torch.allclose(M.CrossMoments().update(X.tolist(), Y.tolist()).compute("linear_cka"),
                          M.linear_cka(X, Y), atol=1e-10)
    assert A.fleiss_kappa([[2, 0], [0, 2], [1, 1]]) == pytest.approx(A.fleiss_kappa(np.array([[2, 0], [0, 2], [1, 1]])))
    assert A.homogenization(FAILURES.tolist()) == A.homogenization(FAILURES)
    assert M.percentile_interval([[[0.1]], [[0.3]]], level=0.5).low.item() == pytest.approx(0.15)


@pytest.mark.parametrize("call, option", [
    (lambda: M.compute("rsa", X, Y, foo=1), "rsa takes no option 'foo'; its options: none"),
    (lambda: M.permutation_null("linear_cka", X, Y, 4, foo=1),
     "linear_cka takes no option 'foo'; its options: route, precision"),
    (lambda: M.bootstrap_ci("mutual_knn", X, Y, 4, foo=1), "mutual_knn takes no option 'foo'; its options: k, center"),
    (lambda: M.with_controls("linear_cka", X, Y, options={"linear_cka": {"foo": 1}}), "linear_cka takes no option 'foo'"),
    (lambda: M.with_controls("linear_cka", X, Y, options={"rsa": {}}), "options names measure 'rsa', which is not among"),
    (lambda: M.StreamingMeasure("svcca", foo=1), "svcca in streaming form takes no option 'foo'; its options: variance_kept"),
    (lambda: M.CrossMoments().update(X, Y).compute("procrustes", foo=1),
     "procrustes in streaming form takes no option 'foo'; its options: none"),
])
def test_an_unknown_option_is_a_value_error_listing_the_options(call, option):
    with pytest.raises(ValueError) as err:
        call()
    assert option in _one_line(err.value)


@pytest.mark.parametrize("call", [
    lambda: M.linear_cka(X, Y, foo=1), lambda: M.analytic_null("linear_cka", X, Y, foo=1),
    lambda: A.agreement_table(PRED, LABELS, foo=1), lambda: A.fit_probes(STACKS, LABELS, TRAIN, TEST, foo=1),
    lambda: load_corpus("bbc", foo=1), lambda: Study(models=["a", "b"], foo=1), lambda: run_study(None, foo=1),
])
def test_an_unknown_keyword_argument_is_named(call):
    """Functions without ``**kwargs``: Python's own TypeError names the argument."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        call()


# ------------------------------------------------------------------------------------------ texts
@pytest.mark.parametrize("bad, start", [
    (None, "texts must be a list of strings (one text per row); got None"),
    ("The cat sat.", "texts must be a list of strings (one text per row); got a str 'The cat sat.'"),
    ([TINY_TEXT[0], None], "texts[1] is None, not a string"),
    ([TINY_TEXT[0], 3], "texts[1] is int 3, not a string"),
    ([], "texts is empty: nothing to extract"),
    (7, "texts must be a list of strings (one text per row); got int 7"),
])
def test_extract_names_texts(models, bad, start):
    with pytest.raises(ValueError) as err:
        extract(models["bert"], bad, progress=False)
    assert _one_line(err.value).startswith(start)


def test_native_heads_name_their_arguments(models):
    with pytest.raises(ValueError, match=r"^loaded_models must be a \{name: LoadedModel\} mapping or a list; got None"):
        A.tokenizer_groups(None)
    with pytest.raises(ValueError, match=r"^loaded_models\['b'\]: loaded must be a loaded model"):
        A.native_head_agreement({"a": models["bert"], "b": "bert"}, ["A text."])
    with pytest.raises(ValueError, match=r"^texts must be a list of strings \(one text per row\); got a str"):
        A.native_head_agreement({"a": models["bert"], "b": models["gpt2"]}, "A text.")


def test_extract_names_loaded():
    with pytest.raises(ValueError, match=r"^loaded must be a loaded model \(homoscope.models.load_model\(spec\)\); "
                                         r"got a str 'minilm-l6'"):
        extract("minilm-l6", ["A text."], progress=False)


# ----------------------------------------------------------------------------- damaged model folders
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny("bert", tmp_path_factory.mktemp("models") / "bert-a", seed=0)


def _damage(folder, how: str) -> str:
    """Damage a copy of a tiny model folder; return the name of the file at fault."""
    if how == "truncated safetensors":
        p = folder / "model.safetensors"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return "model.safetensors"
    if how == "config not JSON":
        (folder / "config.json").write_text('{"model_type": "bert",', encoding="utf-8")
        return "config.json"
    (folder / "model.safetensors").unlink()  # damaged pickled weights
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    return "pytorch_model.bin"


HOW = ["truncated safetensors", "config not JSON", "damaged bin"]


@pytest.mark.parametrize("how", HOW)
def test_load_model_names_the_damaged_file(tmp_path, tiny_folder, how):
    folder = shutil.copytree(tiny_folder, tmp_path / "broken")
    name = _damage(folder, how)
    with pytest.raises(ValueError) as err:
        load_model(str(folder), device="cpu")
    msg = _one_line(err.value)
    assert msg.startswith(f"model folder {str(folder)!r}: {name} ") and "copy or download it again" in msg


@pytest.mark.parametrize("how", HOW)
def test_cli_names_the_damaged_file_in_one_line_before_any_model_runs(tmp_path, capsys, tiny_folder, how):
    good = shutil.copytree(tiny_folder, tmp_path / "good")
    broken = shutil.copytree(tiny_folder, tmp_path / "broken")
    name = _damage(broken, how)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TINY_TEXT[:6]) + "\n", encoding="utf-8")
    # pickled weights are read in full only when loading; the damaged model goes first there
    order = [str(broken), str(good)] if how == "damaged bin" else [str(good), str(broken)]
    code = _run_cli(tmp_path, order, texts)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith(f"homoscope: error: model folder {str(broken)!r}: {name} "), err
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").glob("*.safetensors")) == []


def _run_cli(tmp_path, models: list[str], corpus_path) -> int:
    toml = tmp_path / "study.toml"
    quoted = ", ".join(f"'{m}'" for m in models)
    toml.write_text(f"models = [{quoted}]\ncorpus = '{corpus_path}'\nout = '{tmp_path / 'out'}'\n"
                    f"store = '{tmp_path / 'store'}'\nmeasures = ['linear_cka']\noutliers = false\n",
                    encoding="utf-8")
    return cli_main(["run", str(toml), "-q"])


def test_a_full_disk_under_the_store_is_a_study_write_error(tmp_path, corpus, models, monkeypatch, tables_only):
    """safetensors says a full disk with its own error type; the store turns it into an OSError, the study
    into one StudyWriteError line that names the store."""
    from safetensors import SafetensorError

    import homoscope.extract.store as store_module

    def full_disk(*_a, **_k):
        raise SafetensorError(f"No space left on device (os error {errno.ENOSPC})")

    monkeypatch.setattr(store_module, "save_file", full_disk)
    with pytest.raises(StudyWriteError) as err:
        run_study(make_study(tmp_path, corpus), progress=False, loaded_models=models, log=None)
    msg = _one_line(err.value)
    assert re.search(r"could not write the representations of model 'bert' to the store '.*store'", msg), msg
    assert "No space left on device" in msg and "give another folder as store" in msg
