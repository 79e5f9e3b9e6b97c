"""The study schema: one declaration per option, from which the Study, its TOML form and checks,
and the command line's study options are made."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from homoscope import cli
from homoscope.cli import build_parser, build_study
from homoscope.cli import main as cli_main
from homoscope.study import Study
from homoscope.study.options import OPTIONS, Option

ON_CLI = [o for o in OPTIONS if o.flag is not None]
BOUNDED = [o for o in OPTIONS if o.choices is not None or o.minimum is not None or o.maximum is not None]
COMMANDS = ("demo", "run", "compare")
# values the schema cannot make up: known measures, model tables, a device every machine has
# and a corpus that exists (the BBC corpus is named in any case), padded tokens that hold a text
SAMPLES = {"models": ["a", {"name": "b", "spec": "folder/b"}], "measures": ["rbf_cka", "linear_cka"], "device": "cpu",
           "corpus": "BBC", "batch_tokens": 4096,
           "ray_address": "auto"}


def sample(opt: Option):
    """A valid value of ``opt`` that is not its default, made from the schema."""
    if opt.name in SAMPLES:
        return SAMPLES[opt.name]
    if opt.choices is not None:
        return next(c for c in opt.choices if c != opt.default)
    if bool in opt.types:
        return not opt.default
    if float in opt.types:
        return (opt.minimum + opt.maximum) / 4 if opt.maximum is not None else opt.minimum + 0.5
    if int in opt.types:
        return int(opt.minimum or 0) + 7
    return f"value of {opt.name}"


def wrong_type(opt: Option) -> str:
    """A TOML value of a type ``opt`` does not take."""
    return "1" if str in opt.types or bool in opt.types else '"x"'


def out_of_range(opt: Option):
    """A value of ``opt``'s type that breaks its choices or bounds."""
    if opt.choices is not None:
        return "nope"
    if opt.minimum is not None:
        return opt.minimum - (0 if opt.exclusive else 1)
    return opt.maximum + (0 if opt.exclusive else 1)


def _one_line(err) -> str:
    """The message on one line (wrapped messages read whole)."""
    return " ".join(str(err).split())


def _toml_file(tmp_path, body: str = ""):
    """A study file with two models and ``body``."""
    p = tmp_path / "study.toml"
    p.write_text('models = ["a", "b"]\n' + body, encoding="utf-8")
    return p


def _argv(command: str, tmp_path, flags: list[str]) -> list[str]:
    """The command line of ``command`` with ``flags`` (a study file for run, a reference for compare)."""
    if command == "run":
        return ["run", str(_toml_file(tmp_path)), *flags]
    if command == "compare":
        return ["compare", "new-model", "--against", "ref", *flags]
    return ["demo", *flags]


def _flags(opt: Option, value) -> list[str]:
    """The flags that set ``opt`` to ``value``: ``--x``/``--no-x`` for a switch, else ``--x TEXT``."""
    if isinstance(value, bool):
        return [opt.flag if value else "--no-" + opt.flag[2:]]
    return [opt.flag, opt.show(value)]


# ------------------------------------------------------------------------------------------ the schema
def test_the_schema_is_the_study():
    assert [o.name for o in OPTIONS] == [f.name for f in dataclasses.fields(Study)]
    for o in OPTIONS:
        assert o.help and o.types, o.name
        assert o.flag is None or o.flag == "--" + o.name.replace("_", "-"), o.flag
        default = list(o.default) if isinstance(o.default, tuple) else o.default
        assert getattr(Study(), o.name) == default, o.name
        o.check(default)
        assert f"\n        {o.name}: " in Study.__doc__, o.name
    assert Study().models is not Study().models  # a fresh list per study
    assert [o.name for o in OPTIONS if o.flag is None] == ["models"]  # per command: demo --models, compare NEW


def test_schema_holds_the_rules_that_were_written_by_hand():
    rules = {o.name: o.rule for o in OPTIONS}
    assert rules["shard_size"] == "an integer >= 1" and rules["memory_mb"] == "an integer >= 64"
    assert rules["pairwise_rows"] == "an integer >= 16" and rules["max_length"] == "an integer >= 4"
    assert rules["max_rows"] == "a non-negative integer"
    assert rules["bootstrap"] == rules["permutations"] == "0 (off) or an integer >= 2"
    assert rules["sentences"] == "0 (every text) or an integer >= 4"
    assert rules["probe_test_size"] == "a number strictly between 0 and 1"
    assert rules["unit"] == "one of sentence, word, token" and rules["agreement"] == "one of auto, on, off"
    # no "(or omitted)": leaving sentences out gives 1,000 texts, not every text
    with pytest.raises(ValueError, match=r"^sentences=-1 must be 0 \(every text\) or an integer >= 4$"):
        Study(models=["a", "b"], sentences=-1).validate()
    with pytest.raises(ValueError, match=r"^label_column=3 must be a string \(or omitted\)$"):
        Study(models=["a", "b"], label_column=3).validate()
    with pytest.raises(ValueError, match=r"probe_test_size=nan must be a number strictly between 0 and 1"):
        Study(models=["a", "b"], probe_test_size=float("nan")).validate()
    with pytest.raises(ValueError, match=r"memory_mb=True must be an integer >= 64"):
        Study(models=["a", "b"], memory_mb=True).validate()


# ------------------------------------------------------------------------------------------ TOML
def _roundtrip(tmp_path, study: Study):
    """The study file ``study.to_toml()`` writes."""
    p = tmp_path / "roundtrip.toml"
    p.write_text(study.to_toml(), encoding="utf-8")
    return p


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.name)
def test_every_option_round_trips_through_toml(tmp_path, opt):
    value = sample(opt)
    study = Study(**{"models": ["a", "b"], opt.name: value})
    study.validate()
    back = Study.from_toml(_roundtrip(tmp_path, study))
    assert getattr(back, opt.name) == value and back == study


def test_all_options_at_once_round_trip(tmp_path):
    study = Study(**{o.name: sample(o) for o in OPTIONS})
    study.validate()
    assert Study.from_toml(_roundtrip(tmp_path, study)) == study
    assert Study.from_dict(dataclasses.asdict(study)) == study


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.name)
def test_toml_wrong_type_names_key_and_line(tmp_path, opt):
    p = tmp_path / "study.toml"
    head = 'name = "x"' if opt.name == "models" else 'models = ["a", "b"]'
    p.write_text(f"{head}\n\n{opt.name} = {wrong_type(opt)}\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        Study.from_toml(p)
    assert f"{p} line 3: key {opt.name!r} must be {opt.type_names}, got " in _one_line(err.value)


@pytest.mark.parametrize("opt", BOUNDED, ids=lambda o: o.name)
def test_toml_out_of_range_names_key_and_line(tmp_path, opt):
    bad = out_of_range(opt)
    p = _toml_file(tmp_path, f"# the value below breaks the rule\n{opt.name} = {json.dumps(bad)}\n")
    with pytest.raises(ValueError) as err:
        Study.from_toml(p)
    verb = "is not" if opt.choices is not None else "must be"
    assert f"{p} line 3: {opt.name}={bad!r} {verb} {opt.rule}" in _one_line(err.value)
    with pytest.raises(ValueError, match=re.escape(f"{opt.name}={bad!r} {verb} {opt.rule}")):
        Study(**{"models": ["a", "b"], opt.name: bad}).validate()


def test_toml_unknown_key_keeps_the_hint(tmp_path):
    with pytest.raises(ValueError, match=r"line 2: unknown key 'shard_sise' \(did you mean 'shard_size'\?\)"):
        Study.from_toml(_toml_file(tmp_path, "shard_sise = 10\n"))


# ------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("opt", ON_CLI, ids=lambda o: o.name)
def test_every_option_reaches_the_study_from_the_command_line(tmp_path, command, opt):
    values = [True, False] if bool in opt.types else [sample(opt)]
    for value in values:
        args = build_parser().parse_args(_argv(command, tmp_path, _flags(opt, value)))
        study = build_study(args)
        assert getattr(study, opt.name) == value, (command, opt.name, value)


def test_each_command_keeps_its_defaults(tmp_path):
    demo = build_study(build_parser().parse_args(["demo"]))
    assert (demo.random_init, demo.permutations, demo.out, demo.install) == (True, 100, cli.DEMO_OUT, True)
    compare = build_study(build_parser().parse_args(["compare", "org/new-model", "--against", "ref"]))
    assert compare.models == ["org/new-model", "ref"] and compare.pairs == "first-vs-rest"
    assert compare.out == "homoscope-compare-new-model" and compare.name == "org/new-model compared with ref"
    toml = _toml_file(tmp_path, "seed = 3\nshard_size = 64\n")
    run = build_study(build_parser().parse_args(["run", str(toml), "--shard-size", "128"]))
    assert (run.seed, run.shard_size, run.random_init, run.permutations) == (3, 128, False, 0)
    assert build_parser().parse_args(["run", str(toml)]).shard_size is None  # not given: no override


@pytest.mark.parametrize("opt", [o for o in ON_CLI if o.types[0] in (int, float)], ids=lambda o: o.name)
def test_cli_wrong_type_names_the_flag(tmp_path, opt):
    args = build_parser().parse_args(_argv("run", tmp_path, [opt.flag, "lots"]))
    with pytest.raises(ValueError, match=re.escape(f"{opt.flag}=lots must be {opt.rule}")):
        build_study(args)


@pytest.mark.parametrize("opt", [o for o in BOUNDED if o.flag], ids=lambda o: o.name)
def test_cli_out_of_range_names_the_flag(tmp_path, opt):
    bad = out_of_range(opt)
    args = build_parser().parse_args(_argv("demo", tmp_path, [opt.flag, str(bad)]))
    verb = "is not" if opt.choices is not None else "must be"
    with pytest.raises(ValueError, match=re.escape(f"{opt.flag}={bad} {verb} {opt.rule}")):  # as typed
        build_study(args)


def test_cli_prints_the_flag_in_one_line(tmp_path, capsys):
    assert cli_main(["demo", "--shard-size", "0", "-q"]) == 2
    err = capsys.readouterr().err
    assert err == "homoscope: error: --shard-size=0 must be an integer >= 1\n"
    assert cli_main(["run", str(_toml_file(tmp_path)), "--measures", ",", "-q"]) == 2
    assert "--measures=, names nothing; give comma-separated names" in capsys.readouterr().err
    assert cli_main(["demo", "--unit", "a phrase", "-q"]) == 2
    assert "--unit='a phrase' is not one of sentence, word, token" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_option_with_its_help(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as done:
        cli_main([command, "--help"])
    assert done.value.code == 0
    flat = re.sub(r"\s+", "", capsys.readouterr().out)
    for opt in ON_CLI:
        assert opt.flag in flat and re.sub(r"\s+", "", opt.help) in flat, (command, opt.name)
    shown = cli.COMMAND_DEFAULTS[command]
    assert ("(default:on)" if shown.get("random_init") else "(default:off)") in flat


@pytest.mark.parametrize("kw, message", [
    (dict(seed=2**70), r"seed=\d+ must be an integer between 0 and 4,294,967,295"),
    (dict(random_init="no"), r"random_init='no' must be true or false"),
    (dict(shard_size=4.0), r"shard_size=4\.0 must be an integer >= 1"),
    (dict(sentences=2), r"sentences=2 must be 0 \(every text\) or an integer >= 4"),
    (dict(out=""), r"out='' is empty"),
    (dict(store=" "), r"store=' ' is empty; give a folder or file name or leave it out"),
])
def test_python_api_values_are_checked_like_the_study_file(kw, message):
    with pytest.raises(ValueError, match=message):
        Study(**kw).validate()


def test_sentences_zero_takes_every_text(tmp_path):
    from homoscope.study.run import _check, _prepare

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"text number {i} here" for i in range(7)) + "\n")
    from homoscope.models.tiny import tiny_model

    study = Study(models=["bert", "gpt2"], corpus=str(corpus), sentences=0, out=str(tmp_path / "o"),
                  store=str(tmp_path / "s"))
    loaded = {"bert": tiny_model("bert", seed=0), "gpt2": tiny_model("gpt2", seed=0)}
    folder, sources = _check(study, loaded)
    with folder:
        ctx = _prepare(study, folder, sources, loaded, lambda *a, **k: None)
    assert len(ctx.corpus.texts) == 7


def test_a_misspelt_measure_or_flag_is_named_with_what_was_meant():
    from homoscope.cli import build_parser

    with pytest.raises(ValueError, match=r"did you mean one of 'linear_cka', 'debiased_cka', 'rbf_cka', 'minibatch_cka'\?"):
        Study(models=["a", "b"], measures=["cka"]).validate()
    with pytest.raises(ValueError, match=r"did you mean 'pwcca'\?"):
        Study(models=["a", "b"], measures=["pwca"]).validate()
    with pytest.raises(SystemExit):  # no prefix matching: --sentence is not --sentences
        build_parser().parse_args(["demo", "--sentence", "100"])
    assert build_parser().parse_args(["demo", "--sentences", "100"]).sentences == "100"  # checked by the schema
