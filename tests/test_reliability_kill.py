"""kill -9 at any point loses no finished work and never leaves a file that reads as complete.

- A study runs in a subprocess and is killed (SIGKILL) in the middle of its second model; the rerun
  reuses the first model without running it and gives results bit-identical to a clean run.
- A subprocess overwrites store entries in a loop and is killed at a random moment: every entry the
  store then returns is whole and matches its record.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
from _reliability_common import tables_only  # noqa: F401
import pytest
import torch

from homoscope.extract.store import RepresentationStore
from homoscope.models.tiny import TINY_TEXT, tiny_model
from homoscope.study import Study, run_study

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REPO = Path(__file__).resolve().parents[1]

STUDY_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    from homoscope.models.tiny import tiny_model
    from homoscope.study import Study, run_study

    root = Path(sys.argv[1])
    models = {"first": tiny_model("bert", seed=0), "second": tiny_model("gpt2", seed=0)}
    calls = {"n": 0}

    def stall(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # one batch of the second model done, the next one never finishes
            (root / "second-model-running").touch()
            time.sleep(600)

    models["second"].model.register_forward_pre_hook(stall, with_kwargs=True)
    study = Study(models=["first", "second"], corpus=str(root / "corpus.txt"), sentences=None,
                  out=str(root / "out"), store=str(root / "store"), measures=["linear_cka", "debiased_cka"],
                  max_length=16, batch_tokens=48, outliers=False)
    run_study(study, progress=False, loaded_models=models, log=None)
    (root / "finished").touch()
""")

STORE_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import torch
    from homoscope.extract.store import RepresentationStore

    store = RepresentationStore(sys.argv[1])
    i = 0
    while True:
        # three entries, overwritten in turn with new contents of the same size
        key = hashlib.sha256(str(i % 3).encode()).hexdigest()
        store.put("m", key, torch.full((4, 128, 256), float(i)), {"i": i})
        print(i, flush=True)
        i += 1
""")


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HOMOSCOPE_HOME"] = str(tmp_path / "home")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the study ended (status {proc.returncode}) before it was killed:\n{err[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout:.0f} s")
        time.sleep(0.05)


def _study(root: Path, out: str, store: str) -> Study:
    return Study(models=["first", "second"], corpus=str(root / "corpus.txt"), sentences=None, out=str(root / out),
                 store=str(root / store), measures=["linear_cka", "debiased_cka"], max_length=16, batch_tokens=48,
                 outliers=False)


def test_kill_9_in_the_middle_of_the_second_model_then_rerun(tmp_path, monkeypatch, tables_only):
    monkeypatch.setenv("HOMOSCOPE_HOME", str(tmp_path / "home"))
    (tmp_path / "corpus.txt").write_text("\n".join(TINY_TEXT[:12]) + "\n", encoding="utf-8")
    script = tmp_path / "study_run.py"
    script.write_text(STUDY_SCRIPT, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "second-model-running", proc, timeout=240)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "finished").exists()
    store = tmp_path / "store"
    assert len(list(store.glob("first-*.json"))) == 1 and len(list(store.glob("first-*.safetensors"))) == 1
    assert not list(store.glob("second-*"))  # nothing of the unfinished model under a final name
    assert not (tmp_path / "out" / "similarity.parquet").exists()

    # the rerun, in this process, with the same models (same seeds, same weights, same fingerprints)
    models = {"first": tiny_model("bert", seed=0), "second": tiny_model("gpt2", seed=0)}
    runs = {"first": 0, "second": 0}
    for name, m in models.items():
        m.model.register_forward_pre_hook(lambda *_a, name=name: runs.__setitem__(name, runs[name] + 1))
    again = run_study(_study(tmp_path, "out", "store"), progress=False, loaded_models=models, log=None)
    assert runs["first"] == 0, "the finished model was computed again"
    assert runs["second"] > 0
    assert [m["reused"] for m in again.manifest["models"]] == [True, False]

    clean = run_study(_study(tmp_path, "clean-out", "clean-store"), progress=False, loaded_models=models, log=None)
    assert [m["reused"] for m in clean.manifest["models"]] == [False, False]
    pd.testing.assert_frame_equal(again.frame, clean.frame, check_exact=True)
    for name in models:
        assert torch.equal(again.representations[name], clean.representations[name]), name
    assert (again.out / "similarity.csv").read_bytes() == (clean.out / "similarity.csv").read_bytes()


def test_kill_9_while_overwriting_store_entries(tmp_path):
    script = tmp_path / "store_loop.py"
    script.write_text(STORE_SCRIPT, encoding="utf-8")
    root = tmp_path / "store"
    rng = random.Random()
    proc = subprocess.Popen([sys.executable, str(script), str(root)], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        target = rng.randint(4, 12)
        for line in proc.stdout:
            if int(line) >= target:
                break
        else:
            pytest.fail(f"the writer ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside a later write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = RepresentationStore(root)
    found = 0
    for k in range(3):
        hit = store.get("m", hashlib.sha256(str(k).encode()).hexdigest())
        if hit is None:
            continue  # an interrupted overwrite reads as absent, never as complete
        tensor, record = hit
        assert tuple(tensor.shape) == (4, 128, 256)
        assert torch.all(tensor == float(record["i"])), f"entry {k} holds data that is not its record's"
        found += 1
    assert found >= 2  # at most the entry being written when the kill came is lost


SHARD_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path

    from homoscope.models.tiny import tiny_model
    from homoscope.study import Study, run_study

    root, victim, at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    models = {"first": tiny_model("bert", seed=0), "second": tiny_model("gpt2", seed=0)}
    calls = {"n": 0}

    def kill(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == at:  # kill -9 before this forward pass of the victim runs
            os.kill(os.getpid(), signal.SIGKILL)

    models[victim].model.register_forward_pre_hook(kill, with_kwargs=True)
    study = Study(models=["first", "second"], corpus=str(root / "corpus.txt"), sentences=None,
                  out=str(root / "out"), store=str(root / "store"), measures=["linear_cka", "debiased_cka"],
                  max_length=16, batch_tokens=16, shard_size=4, outliers=False)
    run_study(study, progress=False, loaded_models=models, log=None)
""")


def _shard_study(root: Path, out: str, store: str) -> Study:
    return Study(models=["first", "second"], corpus=str(root / "corpus.txt"), sentences=None, out=str(root / out),
                 store=str(root / store), measures=["linear_cka", "debiased_cka"], max_length=16, batch_tokens=16,
                 shard_size=4, outliers=False)


def _forward_counts(models: dict):
    runs = {k: 0 for k in models}
    for name, m in models.items():
        m.model.register_forward_pre_hook(lambda *_a, name=name: runs.__setitem__(name, runs[name] + 1))
    return runs


@pytest.mark.parametrize("trial", range(2))
def test_kill_9_at_a_random_forward_pass_loses_at_most_the_shard_in_flight(tmp_path, monkeypatch, tables_only,
                                                                            trial):
    monkeypatch.setenv("HOMOSCOPE_HOME", str(tmp_path / "home"))
    (tmp_path / "corpus.txt").write_text("\n".join(TINY_TEXT[:14]) + "\n", encoding="utf-8")
    models = {"first": tiny_model("bert", seed=0), "second": tiny_model("gpt2", seed=0)}
    clean_calls = _forward_counts(models)
    clean = run_study(_shard_study(tmp_path, "clean-out", "clean-store"), progress=False, loaded_models=models,
                      log=None)
    per_shard = max(clean_calls.values()) // 4 + 1  # 14 texts: shards of 4, 4, 4, 2 texts
    rng = random.Random(1000 + trial)
    victim = rng.choice(["first", "second"])
    at = rng.randint(2, clean_calls[victim])
    script = tmp_path / "shard_run.py"
    script.write_text(SHARD_SCRIPT, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), victim, str(at)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    models = {"first": tiny_model("bert", seed=0), "second": tiny_model("gpt2", seed=0)}
    runs = _forward_counts(models)
    again = run_study(_shard_study(tmp_path, "out", "store"), progress=False, loaded_models=models, log=None)
    lost = (at - 1) + runs[victim] - clean_calls[victim]  # forward passes done twice
    assert 0 <= lost < per_shard, (victim, at, runs, clean_calls)
    if victim == "second":
        assert runs["first"] == 0, "a model finished before the kill was computed again"
    assert (again.out / "similarity.csv").read_bytes() == (clean.out / "similarity.csv").read_bytes()


WRITER_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from homoscope.extract.store import RepresentationStore

    store = RepresentationStore(sys.argv[1])
    value = float(sys.argv[2])
    for i in range(25):
        store.put("m", "cd" * 32, torch.full((4, 64, 128), value + i), {"value": value + i})
""")


def test_two_processes_writing_one_entry_leave_one_whole_entry(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT, encoding="utf-8")
    root = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(v)], env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (0.0, 1000.0)]
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    hit = RepresentationStore(root).get("m", "cd" * 32)
    assert hit is not None, "two writers left no whole entry"
    tensor, record = hit
    assert torch.all(tensor == record["value"]), "the tensor and its record come from different writes"
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
