"""A study never loses finished work, never reports a silently wrong number and never runs what it reads.

- the store: a partial, truncated, mismatched or orphaned file is never read as a complete entry;
  a write that fails half way leaves no file under its final name and earlier entries intact;
- disk full / no permission while writing the store or the outputs: one clear error, the models
  stored before are kept (and reused by the rerun), earlier output files stay whole;
- out of memory: smaller batches, the same numbers; then a clear error;
- numbers: fp16 overflow names model, layer and count; fp16/bf16 are upcast before any measure;
  two runs with the same seed are bit-identical on CPU;
- untrusted files: no pickle, ``torch.load`` only with ``weights_only=True``, ``trust_remote_code``
  off unless asked, safetensors preferred; names and texts escaped in the html report; files built
  from names stay inside the output folder;
- ``homoscope doctor``.

The kill -9 test lives in ``test_reliability_kill.py``.
"""
from __future__ import annotations

import ast
import dataclasses
import errno
import inspect
import json
import pickle
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import homoscope
from _reliability_common import _own_cache, corpus, make_study, models, tables_only  # noqa: F401
from homoscope.cli import main as cli_main
from homoscope.extract import ExtractStats, extract
from homoscope.extract.store import RepresentationStore
from homoscope.measures import compute
from homoscope.models.tiny import TINY_TEXT, save_tiny, tiny_model
from homoscope.study import Study, StudyWriteError, run_study

PACKAGE = Path(homoscope.__file__).resolve().parent


_study = make_study


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ store
def test_store_never_reads_a_partial_entry_as_complete(tmp_path):
    store = RepresentationStore(tmp_path / "store")
    key = "ab" * 32
    X = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    store.put("m", key, X, {"note": "first"})
    tpath, jpath = store._paths("m", key)
    good_t, good_j = tpath.read_bytes(), jpath.read_bytes()
    assert torch.equal(store.get("m", key)[0], X)

    def restore():
        tpath.write_bytes(good_t)
        jpath.write_bytes(good_j)

    tpath.write_bytes(good_t[: len(good_t) // 2])  # cut short
    assert store.get("m", key) is None
    restore()
    flipped = bytearray(good_t)
    flipped[-1] ^= 0xFF  # same size, one byte changed
    tpath.write_bytes(bytes(flipped))
    assert store.get("m", key) is None
    restore()
    jpath.unlink()  # killed between the tensor's rename and the record's
    assert store.get("m", key) is None
    restore()
    jpath.write_bytes(good_j[: len(good_j) // 2])  # record not JSON
    assert store.get("m", key) is None
    restore()
    # a newer tensor of the same shape beside the older record (overwrite interrupted between renames)
    other = RepresentationStore(tmp_path / "other")
    other.put("m", key, X + 1, {"note": "second"})
    tpath.write_bytes(other._paths("m", key)[0].read_bytes())
    assert store.get("m", key) is None
    restore()
    tpath.unlink()
    assert store.get("m", key) is None
    restore()
    # leftovers of killed writes are ignored and do not block the next write
    (store.root / f".{tpath.name}.x1.tmp").write_bytes(good_t[:10])
    assert torch.equal(store.get("m", key)[0], X)
    store.put("m", key, X * 2, {"note": "third"})
    assert torch.equal(store.get("m", key)[0], X * 2)


def _disk_full_on(monkeypatch, target_call: int, exc: OSError):
    """Make the store's tensor writer fail like a full disk on its ``target_call``-th call, after
    writing part of the file."""
    import homoscope.extract.store as store_mod

    real = store_mod.save_file
    calls = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == target_call:
            Path(filename).write_bytes(b"\0" * 100)
            raise exc
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(store_mod, "save_file", save_file)
    calls["real"] = real
    return calls


def test_store_write_that_fails_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    store = RepresentationStore(tmp_path / "store")
    X = torch.ones(1, 3, 2)
    store.put("m", "11" * 32, X, {})
    before = _snapshot(store.root)
    _disk_full_on(monkeypatch, 1, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        store.put("m", "22" * 32, X, {})
    assert _snapshot(store.root) == before
    assert store.get("m", "22" * 32) is None and torch.equal(store.get("m", "11" * 32)[0], X)


def test_disk_full_in_the_store_keeps_the_models_before(tmp_path, corpus, models, monkeypatch, tables_only):
    calls = _disk_full_on(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StudyWriteError) as err:
        run_study(_study(tmp_path, corpus), progress=False, loaded_models=models, log=None)
    msg = str(err.value)
    assert "\n" not in msg
    assert "could not write the representations of model 'gpt2' to the store" in msg
    assert "No space left on device (ENOSPC)" in msg and "give another folder as store" in msg
    assert "models stored before this one are kept and reused by the next run" in msg
    assert calls["n"] == 2 and _temporaries(tmp_path / "store") == []
    assert len(list((tmp_path / "store").glob("bert-*.json"))) == 1
    assert not list((tmp_path / "store").glob("gpt2-*"))
    import homoscope.extract.store as store_mod

    monkeypatch.setattr(store_mod, "save_file", calls["real"])  # space again
    again = run_study(_study(tmp_path, corpus), progress=False, loaded_models=models, log=None)
    assert [m["reused"] for m in again.manifest["models"]] == [True, False]


def test_write_error_in_the_outputs_keeps_earlier_results(tmp_path, corpus, models, monkeypatch):
    import matplotlib.figure

    first = run_study(_study(tmp_path, corpus), progress=False, loaded_models=models, log=None)
    before = _snapshot(first.out)
    for exc, reason in [(OSError(errno.ENOSPC, "No space left on device"), "No space left on device (ENOSPC)"),
                        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied (EACCES)")]:

        def savefig(self, fname, *args, exc=exc, **kwargs):
            Path(fname).write_bytes(b"\x89PNG partial")
            raise exc

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
        with pytest.raises(StudyWriteError) as err:
            run_study(_study(tmp_path, corpus), progress=False, loaded_models=models, log=None)
        msg = str(err.value)
        assert "\n" not in msg
        assert f"could not write the study outputs to {str(first.out)!r}: {reason}" in msg
        assert "or give another output folder as out" in msg and "a rerun recomputes none of them" in msg
        # the folder is the earlier run's, byte for byte, and nothing of the failed run is left beside it
        assert _snapshot(first.out) == before
        assert [p.name for p in first.out.parent.iterdir() if p.name.startswith(f".{first.out.name}")] == []


def test_cli_reports_a_write_error_in_one_line(tmp_path, monkeypatch, capsys):
    import homoscope.study as study_mod

    def fail(*_a, **_k):
        raise StudyWriteError("could not write the study outputs to 'x': No space left on device (ENOSPC); ...")

    monkeypatch.setattr(study_mod, "run_study", fail)
    toml = tmp_path / "s.toml"
    toml.write_text('models = ["a", "b"]\n')
    assert cli_main(["run", str(toml), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "homoscope: error: could not write the study outputs to 'x': No space left on device (ENOSPC); ..."


# ---------------------------------------------------------------------------------- out of memory
def _oom_when(model, rule):
    def hook(_module, _args, kwargs):
        if rule(kwargs["input_ids"].shape[0]):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def test_out_of_memory_retries_with_smaller_batches_then_fails_clearly():
    m = tiny_model("bert", seed=3)
    texts = list(TINY_TEXT[:8])
    clean = extract(m, texts, progress=False)
    handle = _oom_when(m.model, lambda b: b > 1)
    try:
        stats = ExtractStats()
        got = extract(m, texts, progress=False, stats=stats)
        assert stats.oom_retries >= 3 and stats.batches == len(texts)
        torch.testing.assert_close(got, clean, atol=1e-5, rtol=1e-5)
    finally:
        handle.remove()
    handle = _oom_when(m.model, lambda b: True)
    try:
        with pytest.raises(RuntimeError, match=r"model 'tiny-bert-s3' ran out of memory on a single text of \d+ "
                                               r"tokens; lower max_length or use a smaller dtype"):
            extract(m, texts, progress=False)
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------ numbers
def test_fp16_overflow_names_model_layer_and_count():
    m = tiny_model("gpt2", seed=5)
    m.model.half()
    with torch.no_grad():
        m.model.wte.weight.fill_(40000.0)
        m.model.wpe.weight.fill_(40000.0)  # 80000 > float16 max 65504: inf in the embedding output
    m = dataclasses.replace(m, info=dataclasses.replace(m.info, name="gpt2-fp16"))
    texts = ["The cat sat.", "A dog ran across the park."]
    n_tokens = sum(len(t) for t in m.tokenizer(texts)["input_ids"])
    width = m.model.config.n_embd
    with pytest.raises(ValueError) as err:
        extract(m, texts, progress=False)
    msg = str(err.value)
    assert (f"model 'gpt2-fp16' produced {n_tokens * width} non-finite values (NaN/inf) in layer 0 "
            "(0 = embeddings) on real tokens") in msg
    assert "float32" in msg


def test_half_precision_extraction_is_upcast_before_measures():
    m32 = tiny_model("bert", seed=2)
    mbf = tiny_model("bert", seed=2)
    mbf.model.to(torch.bfloat16)
    texts = list(TINY_TEXT[:10])
    s32 = extract(m32, texts, progress=False)
    sbf = extract(mbf, texts, progress=False)
    assert s32.dtype == sbf.dtype == torch.float32
    assert torch.isfinite(sbf).all()
    assert (sbf - s32).abs().max() < 0.1  # bf16 forward: close, not equal
    # the measures upcast a half-precision stack exactly, before any sum
    half = s32.to(torch.bfloat16)
    for name in ("linear_cka", "procrustes", "debiased_cka"):
        a = compute(name, half, s32)
        assert a.dtype == torch.float64
        assert torch.equal(a, compute(name, half.double(), s32.double())), name


def test_two_runs_with_the_same_seed_are_bit_identical(tmp_path, models, tables_only):
    corpus = tmp_path / "all.txt"
    corpus.write_text("\n".join(TINY_TEXT) + "\n", encoding="utf-8")
    runs = []
    for i in range(2):
        study = _study(tmp_path, corpus, out=str(tmp_path / f"out{i}"), store=str(tmp_path / f"store{i}"),
                       measures=["linear_cka", "cknna"], permutations=3, bootstrap=3, seed=7)
        runs.append(run_study(study, progress=False, loaded_models=models, log=None))
    a, b = runs
    assert not any(m["reused"] for r in runs for m in r.manifest["models"])
    pd.testing.assert_frame_equal(a.frame, b.frame, check_exact=True)
    for name in a.representations:
        assert torch.equal(a.representations[name], b.representations[name]), name
    for f in ("similarity.csv", "similarity.parquet"):
        assert (a.out / f).read_bytes() == (b.out / f).read_bytes(), f


# ---------------------------------------------------------------------------- untrusted files
def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""  # a method of a computed value, e.g. model.from_pretrained(...).eval()
    parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def test_package_source_loads_nothing_unsafely():
    """No pickle, no torch.load without weights_only=True, no numpy pickles, no yaml.load, no eval/exec,
    and trust_remote_code never switched on in code (only passed through from the user's flag)."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        src = path.read_text(encoding="utf-8")
        tree = ast.parse(src, filename=str(rel))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for n in names:
                if n.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"):
                    problems.append(f"{rel}:{node.lineno}: imports {n}")
        for call in _calls(tree):
            name = _dotted(call.func)
            where = f"{rel}:{call.lineno}"
            if name.endswith("torch.load") or name == "load" and "from torch import load" in src:
                wo = _kw(call, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if name.split(".")[-1] in ("read_pickle", "loads") and name.split(".")[0] in ("pd", "pandas", "pickle"):
                problems.append(f"{where}: {name}")
            if name in ("np.load", "numpy.load"):
                ap = _kw(call, "allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
            if name in ("yaml.load", "yaml.unsafe_load", "eval", "exec", "joblib.load"):
                problems.append(f"{where}: {name}")
            trc = _kw(call, "trust_remote_code")
            if isinstance(trc, ast.Constant) and trc.value is True:
                problems.append(f"{where}: trust_remote_code=True")
        # the plain-text view too, so that code hidden from the AST walk (strings passed to exec) shows
        for i, line in enumerate(src.splitlines(), 1):
            code = line.split("#", 1)[0]
            if "torch.load(" in code and "weights_only=True" not in code:
                problems.append(f"{rel}:{i}: torch.load( without weights_only=True")
            if "import pickle" in code or "pickle.load" in code:
                problems.append(f"{rel}:{i}: pickle")
    # the one reader of a pickle: Flair's model file, through the restricted unpickler only
    restricted = "homoscope/models/flair.py"
    allowed = [p for p in problems if p.startswith(restricted + ":")]
    assert problems == allowed, "\n".join(p for p in problems if p not in allowed)
    flair_src = (PACKAGE / "models" / "flair.py").read_text(encoding="utf-8")
    loads = [c for c in _calls(ast.parse(flair_src)) if _dotted(c.func).endswith("torch.load")]
    assert len(loads) == 1 and _dotted(_kw(loads[0], "pickle_module")) == "RESTRICTED_PICKLE"
    assert all(p.split(": ", 1)[1] in ("imports pickle", "pickle", "torch.load without weights_only=True",
                                      "torch.load( without weights_only=True") for p in allowed), allowed


def test_trust_remote_code_is_off_unless_the_user_asks(tmp_path, monkeypatch):
    from homoscope.cli import build_parser
    from homoscope.models import load_model, loading

    assert Study().trust_remote_code is False
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    args = build_parser().parse_args(["run", "s.toml"])
    assert args.trust_remote_code is None  # not an override unless the flag is given
    assert build_parser().parse_args(["run", "s.toml", "--trust-remote-code"]).trust_remote_code is True
    seen = []

    def spy(where, head, dtype, common, model_kw):
        seen.append((dict(common), dict(model_kw)))
        raise RuntimeError("stop here")

    monkeypatch.setattr(loading, "_from_pretrained", spy)
    folder = save_tiny("bert", tmp_path / "m")
    for flag in (False, True):
        with pytest.raises(RuntimeError, match="stop here"):
            load_model(folder, device="cpu", trust_remote_code=flag)
    assert [c["trust_remote_code"] for c, _ in seen] == [False, True]
    assert all(c["local_files_only"] is True and kw["use_safetensors"] is True for c, kw in seen)


class _Boom:
    """Unpickling this creates a file: the proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_never_run_code(tmp_path):
    from homoscope.models import load_model

    marker = tmp_path / "code-ran"
    folder = save_tiny("bert", tmp_path / "both")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": _Boom(marker)}))
    loaded = load_model(folder, device="cpu")  # safetensors preferred: the .bin is never opened
    assert loaded.info.blocks == 2 and not marker.exists()
    only_bin = tmp_path / "bin-only"
    only_bin.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            (only_bin / f.name).write_bytes(f.read_bytes())
    with pytest.raises(Exception):  # noqa: B017 - refused by the weights-only unpickler, in whatever words
        load_model(only_bin, device="cpu")
    assert not marker.exists()


def test_names_and_texts_are_escaped_and_files_stay_inside(tmp_path, models):
    evil_a = "<script>alert('a')</script>"
    evil_b = "../../escape/<img src=x onerror=alert(1)>"
    corpus = tmp_path / "evil.txt"
    corpus.write_text("\n".join([*TINY_TEXT[:6], "<script>alert('text')</script> and <b>bold</b> words"]) + "\n",
                      encoding="utf-8")
    study = _study(tmp_path, corpus, models=[{"name": evil_a, "spec": "a"}, {"name": evil_b, "spec": "b"}],
                   unit="word", outliers=True)
    result = run_study(study, progress=False, loaded_models={evil_a: models["bert"], evil_b: models["gpt2"]},
                       log=None)
    html = (result.out / "report.html").read_text(encoding="utf-8")
    for raw in ("<script>alert", "<img src=x", "<b>bold"):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(&#x27;a&#x27;)&lt;/script&gt;" in html
    md = (result.out / "report.md").read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", md, flags=re.DOTALL)  # fenced code shows text as it is, never as html
    for raw in ("<script", "<img", "<b>"):
        assert not re.search(r"(?<!\\)" + re.escape(raw), prose), raw
    out, store = result.out.resolve(), (tmp_path / "store").resolve()
    for p in tmp_path.rglob("*"):
        rp = p.resolve()
        assert rp == corpus.resolve() or out in rp.parents or store in rp.parents or rp in (out, store) \
            or (tmp_path / "home").resolve() in [rp, *rp.parents], p
    assert not list(tmp_path.parent.glob("escape*"))


# ------------------------------------------------------------------------------------------ doctor
def _fake_assembled(name: str, *, corrupt: bool = False) -> Path:
    """A tiny BERT assembled in the (test) cache under a packaged model's name."""
    from homoscope.models.registry import MARKER_FILE, MARKER_FORMAT, assembled_path

    folder = save_tiny("bert", assembled_path(name), seed=0)
    (folder / MARKER_FILE).write_text(json.dumps({"format": MARKER_FORMAT, "name": name}))
    if corrupt:
        w = folder / "model.safetensors"
        w.write_bytes(w.read_bytes()[:200])
    return folder


def test_doctor_reports_without_loading(tmp_path, capsys):
    from homoscope.doctor import diagnose, format_report

    store = RepresentationStore(tmp_path / "home" / "representations")
    store.put("m", "33" * 32, torch.zeros(1, 2, 2), {})
    (store.root / ".m-x.safetensors.abc.tmp").write_bytes(b"left by a kill")
    report = diagnose(load=False)
    assert report["ok"] is True
    assert report["versions"]["torch"] == torch.__version__
    assert report["device"]["selected"] in ("cpu", "cuda", "mps")
    assert report["cache"]["path"] == str(tmp_path / "home") and report["cache"]["size_bytes"] > 0
    assert report["store"]["entries"] == 1 and report["store"]["temporary"] == 1
    from homoscope.models import PACKAGED

    assert [m["name"] for m in report["models"]] == list(PACKAGED)
    assert {m["status"] for m in report["models"]} <= {"not installed", "not assembled"}
    text = format_report(report)
    for part in ("homoscope doctor", "versions", "torch", "device", "cache", str(tmp_path / "home"),
                 "packaged models", "minilm-l6", "1 temporary files left by interrupted runs", "checks passed"):
        assert part in text, part
    assert cli_main(["doctor", "--no-load"]) == 0
    assert "packaged models" in capsys.readouterr().out
    assert cli_main(["doctor", "--no-load", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_doctor_loads_each_assembled_model_and_fails_on_a_broken_one(monkeypatch, capsys):
    from homoscope.doctor import diagnose
    from homoscope.models import PACKAGED

    _fake_assembled("minilm-l6")
    monkeypatch.setitem(PACKAGED, "minilm-l6", dataclasses.replace(PACKAGED["minilm-l6"], blocks=2, width=32))
    report = diagnose(load=True, device="cpu")
    row = next(m for m in report["models"] if m["name"] == "minilm-l6")
    assert row["status"] == "ok" and "3 layers x width 32, finite" in row["detail"], row
    assert report["ok"] is True
    assert cli_main(["doctor", "--device", "cpu"]) == 0
    capsys.readouterr()

    monkeypatch.setitem(PACKAGED, "minilm-l6", dataclasses.replace(PACKAGED["minilm-l6"], blocks=6, width=384))
    report = diagnose(load=True, device="cpu")
    row = next(m for m in report["models"] if m["name"] == "minilm-l6")
    assert row["status"] == "failed" and "has 2 blocks, the registry says 6" in row["detail"]
    assert report["ok"] is False

    _fake_assembled("mpnet-base", corrupt=True)
    assert cli_main(["doctor", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] model mpnet-base loads and runs: does not load or run" in out
    assert "homoscope models install mpnet-base --force" in out
    assert "checks failed" in out


def test_store_keys_hash_every_part():
    """A different corpus, unit, pooling, length or dtype never reuses another entry."""
    from homoscope.extract.store import fingerprint_key

    base = {"model": "m", "corpus": "c", "unit": "sentence", "pooling": "mean", "max_length": 128,
            "dtype": "float32"}
    keys = {fingerprint_key(**base)}
    for k, v in [("model", "m2"), ("corpus", "c2"), ("unit", "word"), ("pooling", "last"), ("max_length", 64),
                 ("dtype", "float16")]:
        keys.add(fingerprint_key(**{**base, k: v}))
    assert len(keys) == 7


def test_store_sweeps_a_killed_writers_temporaries_and_says_when_it_waits(tmp_path, monkeypatch):
    import threading
    import time

    import torch
    from filelock import FileLock

    from homoscope.extract import store as store_mod

    root = tmp_path / "store"
    root.mkdir()
    orphan = root / ".m-0123.safetensors.abc.tmp"  # what a writer killed mid-write leaves
    orphan.write_bytes(b"partial")
    st = store_mod.RepresentationStore(root)
    monkeypatch.setattr(store_mod, "LOCK_NOTICE_S", 0.2)
    taken = threading.Event()

    def other_writer():  # holds the write lock for a second
        with FileLock(str(root / ".write.lock")):
            taken.set()
            time.sleep(1.0)

    threading.Thread(target=other_writer).start()
    taken.wait(5)
    with pytest.warns(RuntimeWarning, match=r"waiting for the write lock of the store .*held by another process"):
        st.put("m", "k" * 64, torch.ones(2, 3, 4), {})
    assert not orphan.exists() and not list(root.glob(".*.tmp"))
    assert torch.equal(st.read("m", "k" * 64), torch.ones(2, 3, 4))
