"""A results folder always holds one whole run.

- every output file carries the run's id, and a rerun of the same study writes the same files;
- a run killed while writing its outputs leaves the earlier run whole (the next run tidies up), a run that
  fails leaves no folder, a folder reused with fewer models keeps no stale figure;
- a second run on a folder in use is refused at once; a folder holding other files is refused;
- ``homoscope report`` refuses a folder whose files come from different runs, whose manifest is missing
  or malformed, or whose results are not finite, naming the file;
- a run killed while scoring keeps the pairs it finished: the rerun scores only the others, and its
  results equal a clean run's byte for byte.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from _reliability_common import tables_only  # noqa: F401
from homoscope.cli import main as cli_main
from homoscope.models.tiny import TINY_TEXT, tiny_model
from homoscope.report import load_results, rebuild_report
from homoscope.report.figures import PNG_RUN_KEY
from homoscope.report.folder import LOCK_NAME, ResultsFolder
from homoscope.study import Study, run_study

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REPO = Path(__file__).resolve().parents[1]
NAMES = ("a", "b", "c")

# a study of three tiny models in a subprocess, made to stall at one point so that it can be killed there
SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    from homoscope.models.tiny import tiny_model
    from homoscope.study import Study, run_study

    root, out, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    def stall(flag):
        (root / flag).touch()
        time.sleep(600)

    if where == "scores":  # after the first pair's scores are kept
        from homoscope.study import scorecache
        put = scorecache.ScoreCache.put
        def put_then_stall(self, *a, **k):
            put(self, *a, **k)
            stall("stalled")
        scorecache.ScoreCache.put = put_then_stall
    elif where == "outputs":  # in the middle of the figures
        from homoscope.report import figures
        save, seen = figures._save, []
        def save_then_stall(*a, **k):
            seen.append(save(*a, **k))
            if len(seen) == 3:
                stall("stalled")
            return seen[-1]
        figures._save = save_then_stall
    models = {"a": tiny_model("bert", seed=0), "b": tiny_model("gpt2", seed=0), "c": tiny_model("bert", seed=1)}
    study = Study(models=list(models), corpus=str(root / "corpus.txt"), sentences=int(sys.argv[4]),
                  out=str(root / out), store=str(root / "store"), measures=["linear_cka"], max_length=16,
                  outliers=False, seed=0)
    run_study(study, progress=False, loaded_models=models, log=None)
    (root / "finished").touch()
""")


@pytest.fixture(scope="module")
def models():
    return {"a": tiny_model("bert", seed=0), "b": tiny_model("gpt2", seed=0), "c": tiny_model("bert", seed=1)}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMOSCOPE_HOME", str(tmp_path / "home"))
    (tmp_path / "corpus.txt").write_text("\n".join(TINY_TEXT[:12]) + "\n", encoding="utf-8")
    return tmp_path


def _study(root: Path, out: str = "out", names=NAMES, sentences: int = 12, **kw) -> Study:
    return Study(models=list(names), corpus=str(root / "corpus.txt"), sentences=sentences, out=str(root / out),
                 store=str(root / "store"), measures=["linear_cka"], max_length=16, outliers=False, seed=0, **kw)


def _run(root, models, out="out", names=NAMES, **kw):
    return run_study(_study(root, out, names, **kw), progress=False, log=None,
                     loaded_models={k: models[k] for k in names})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def _killed_at(root: Path, where: str, out: str = "out", sentences: int = 12) -> None:
    """Run the study in a subprocess until it stalls at ``where``, then kill -9 it."""
    script = root / "run.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HOMOSCOPE_HOME": str(root / "home"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(script), str(root), out, where, str(sentences)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 240
        while not (root / "stalled").exists():
            if proc.poll() is not None:
                pytest.fail(f"the study ended (status {proc.returncode}) before it stalled:\n"
                            f"{proc.communicate()[1][-3000:]}")
            assert time.monotonic() < end, "the study did not stall in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and not (root / "finished").exists()
    (root / "stalled").unlink()


# ------------------------------------------------------------------------------------------ one run's id
def test_every_file_carries_the_run_id_and_a_rerun_writes_the_same_files(root, models):
    first = _run(root, models, names=("a", "b"))
    run = first.manifest["run"]
    assert len(run) == 16 and json.loads((first.out / "manifest.json").read_text())["run"] == run
    for name in ("similarity.csv", "summary.csv"):
        assert set(pd.read_csv(first.out / name)["run"].astype(str)) == {run}, name
    assert set(pd.read_parquet(first.out / "similarity.parquet")["run"]) == {run}
    assert "run" not in first.frame  # the frame in memory is the results only
    pngs = sorted(first.out.rglob("*.png"))
    assert pngs and all(Image.open(p).text.get(PNG_RUN_KEY) == run for p in pngs)
    assert json.loads((first.out / "findings.json").read_text())["run"] == run
    for name in ("report.md", "report.html"):
        assert run in (first.out / name).read_text(encoding="utf-8"), name
    assert (first.out / "study.toml").read_text().startswith(f"# homoscope run {run}\n")
    assert Study.from_toml(first.out / "study.toml").models == ["a", "b"]
    before = _snapshot(first.out)
    again = _run(root, models, names=("a", "b"))  # the same study again: the same id, the same tables
    assert again.manifest["run"] == run
    after = _snapshot(again.out)
    for name in ("similarity.csv", "similarity.parquet", "summary.csv", "findings.json", "study.toml"):
        assert after[name] == before[name], name
    other = _run(root, models, out="other", names=("a", "b"), sentences=10)  # another study: another id
    assert other.manifest["run"] != run


# ------------------------------------------------------------------------------------------ the swap
def test_kill_9_while_writing_outputs_leaves_the_earlier_run_whole(root, models):
    earlier = _run(root, models, sentences=10)
    before = _snapshot(earlier.out)
    _killed_at(root, "outputs", sentences=12)
    assert _snapshot(earlier.out) == before  # the earlier run, whole: not one figure of the killed one
    assert any(".staging-" in n for n in _beside(earlier.out))
    rebuild_report(earlier.out, progress=False, dpi=30)  # the folder reads as one run, and tidies up
    assert _beside(earlier.out) == []
    after = _run(root, models, sentences=12)
    assert after.manifest["run"] != earlier.manifest["run"]
    assert set(pd.read_csv(after.out / "similarity.csv")["n"]) == {12}


def test_a_failed_run_leaves_no_folder_and_a_reused_folder_no_stale_file(root, models, monkeypatch):
    from homoscope.study import run as run_mod

    def broken(*_a, **_k):
        raise ValueError("a measure failed")

    monkeypatch.setattr(run_mod, "score_pairs", broken)
    with pytest.raises(ValueError, match="a measure failed"):
        _run(root, models)
    assert not (root / "out").exists() and _beside(root / "out") == []
    monkeypatch.undo()
    monkeypatch.setenv("HOMOSCOPE_HOME", str(root / "home"))
    three = _run(root, models)
    assert len(list((three.out / "heatmaps").glob("*.png"))) == 3
    two = _run(root, models, names=("a", "b"))
    assert [p.name for p in (two.out / "heatmaps").glob("*.png")] == ["linear_cka__a__vs__b.png"]
    assert "dendrogram_linear_cka.png" not in os.listdir(two.out)  # three models drew one, two do not
    load_results(two.out)


def test_a_folder_in_use_or_holding_other_files_is_refused(root, models, capsys, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from homoscope.report.folder import ResultsFolder
        held = ResultsFolder({str(root / 'out')!r}).acquire()
        print("held", flush=True)
        time.sleep(600)
    """)], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=r"is in use by another homoscope run") as err:
            _run(root, models)
        assert "\n" not in str(err.value) and "out=" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    assert (root / "out").is_dir() and os.listdir(root / "out") == [LOCK_NAME]
    first = _run(root, models, names=("a", "b"))  # the holder is gone: the folder is free again
    (first.out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds 'notes.txt', which homoscope does not write"):
        _run(root, models, names=("a", "b"))
    assert (first.out / "notes.txt").read_text() == "mine"
    here = root / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    (root / "s.toml").write_text(f'models = ["a", "b"]\ncorpus = {json.dumps(str(root / "corpus.txt"))}\n')
    assert cli_main(["run", str(root / "s.toml"), "--out", "."]) == 2
    assert "is the current folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ reading back
def _refused(folder: Path, capsys, *words: str) -> None:
    with pytest.raises(ValueError) as err:
        load_results(folder)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert cli_main(["report", str(folder), "-q"]) == 2
    msg = capsys.readouterr().err
    assert msg.count("\n") == 1 and "Traceback" not in msg


def test_report_refuses_mixed_edited_or_malformed_folders(root, models, capsys, tables_only):
    ten = _run(root, models, out="ten", names=("a", "b"), sentences=10)
    twelve = _run(root, models, out="twelve", names=("a", "b"), sentences=12)
    cases = root / "cases"

    def case(name: str) -> Path:
        folder = cases / name
        shutil.copytree(twelve.out, folder)
        return folder

    mixed = case("mixed")
    shutil.copy(ten.out / "similarity.csv", mixed)
    (mixed / "similarity.parquet").unlink()
    _refused(mixed, capsys, "similarity.csv", ten.manifest["run"], "mixes files of different runs")
    for bad in ("nan", "inf", "-inf"):
        edited = case(f"edited-{bad}")
        frame = pd.read_csv(edited / "similarity.csv")
        frame.loc[1, "value"] = float(bad)
        frame.to_csv(edited / "similarity.csv", index=False)
        (edited / "similarity.parquet").unlink()
        _refused(edited, capsys, "similarity.csv", "row 3", "'value'", "not a finite number")
    deep = case("deep")  # a layer no model has: refused, not hours of drawing
    frame = pd.read_parquet(deep / "similarity.parquet")
    frame.loc[0, "layer_a"] = 100_000
    frame.to_parquet(deep / "similarity.parquet")
    _refused(deep, capsys, "layer_a", "from 0 to 9999", "100000")
    control = case("control")
    frame = pd.read_parquet(control / "similarity.parquet")
    frame["ci_low"] = float("inf")
    frame.to_parquet(control / "similarity.parquet")
    _refused(control, capsys, "similarity.parquet", "'ci_low'", "inf is not a finite number")
    missing = case("missing")
    (missing / "manifest.json").unlink()
    _refused(missing, capsys, "manifest.json' is missing")
    manifest = json.loads((twelve.out / "manifest.json").read_text())
    for key, value, words in [("models", "x", ("'models' must be a JSON array, got string",)),
                              ("timings", [1], ("'timings' must be a JSON object",)),
                              ("models", [{"name": 3}], ("models[0] must be an object with a text 'name'",)),
                              ("models", [{"name": "a", "outliers": "many"}], ("models[0].outliers",)),
                              ("study", {"measures": 5}, ("study.measures must be a list",)),
                              ("run", "0123456789abcdef", ("belongs to run", "mixes files"))]:
        broken = case(f"manifest-{key}-{len(list(cases.iterdir()))}")
        (broken / "manifest.json").write_text(json.dumps({**manifest, key: value}))
        _refused(broken, capsys, "manifest.json" if key != "run" else "similarity", *words)
    load_results(twelve.out)  # the untouched folder reads


# ------------------------------------------------------------------------------------------ resume scoring
def test_kill_9_while_scoring_keeps_the_finished_pairs(root, models, monkeypatch, tables_only):
    _killed_at(root, "scores")
    assert len(list((root / "store").glob("scores-*.json"))) == 1  # the first pair, kept whole
    assert os.listdir(root / "out") == [LOCK_NAME]  # no output of the killed run
    from homoscope.study import scoring

    scored, job = [], scoring.score_pair
    monkeypatch.setattr(scoring, "score_pair", lambda plan, a, b, *r: scored.append((a, b)) or job(plan, a, b, *r))
    again = _run(root, models)
    assert scored == [("a", "c"), ("b", "c")]  # (a, b) was read back, not computed
    clean_models = {k: tiny_model(kind, seed=s) for k, (kind, s) in zip(NAMES, [("bert", 0), ("gpt2", 0), ("bert", 1)])}
    clean = run_study(Study(**{**_study(root, "clean").__dict__, "store": str(root / "clean-store")}),
                      progress=False, log=None, loaded_models=clean_models)
    pd.testing.assert_frame_equal(again.frame, clean.frame, check_exact=True)
    assert (again.out / "similarity.csv").read_bytes() == (clean.out / "similarity.csv").read_bytes()


# ------------------------------------------------------------------------------------------ found by a breaking pass
def test_a_rebuild_refuses_run_files_of_another_run_and_impossible_values(root, models, capsys, tables_only):
    ten = _run(root, models, out="ten", names=("a", "b"), sentences=10)
    twelve = _run(root, models, out="twelve", names=("a", "b"), sentences=12)
    foreign = root / "foreign"
    shutil.copytree(twelve.out, foreign)
    shutil.copy(ten.out / "study.toml", foreign)
    with pytest.raises(ValueError, match=r"study.toml' belongs to run .* mixes files of different runs"):
        rebuild_report(foreign, progress=False, dpi=30)
    for column, value, words in [("value", 5.0, ("linear_cka = 5.0", "outside its range [0, 1]")),
                                 ("n", -5, ("column 'n'", "not a row count"))]:
        edited = root / f"edited-{column}"
        shutil.copytree(twelve.out, edited)
        frame = pd.read_parquet(edited / "similarity.parquet")
        frame.loc[0, column] = value
        frame.to_parquet(edited / "similarity.parquet")
        _refused(edited, capsys, *words)


def test_a_store_inside_the_output_folder_is_refused_and_a_linked_folder_is_replaced_at_its_target(root, models,
                                                                                                   tables_only):
    with pytest.raises(ValueError, match=r"store=.* lies inside out="):
        run_study(Study(**{**_study(root).__dict__, "store": str(root / "out" / "store")}), progress=False, log=None,
                  loaded_models=models)
    assert not (root / "out").exists()
    (root / "target").mkdir()
    (root / "link").symlink_to(root / "target", target_is_directory=True)
    first = _run(root, models, out="link", names=("a", "b"), sentences=10)
    second = _run(root, models, out="link", names=("a", "b"), sentences=12)
    assert (root / "link").is_symlink() and first.manifest["run"] != second.manifest["run"]
    assert json.loads((root / "target" / "manifest.json").read_text())["run"] == second.manifest["run"]
    assert [p.name for p in root.iterdir() if ".staging-" in p.name or ".replaced-" in p.name] == []


def test_a_file_of_ones_own_among_the_heatmaps_is_refused_and_numpy_numbers_are_options(root, models, tables_only):
    out = root / "out"
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "mine.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds 'heatmaps/mine.txt', which homoscope does not write"):
        _run(root, models, names=("a", "b"))
    (out / "heatmaps" / "mine.txt").unlink()
    import numpy as np

    study = _study(root, "np", ("a", "b"), sentences=np.int64(10))
    study.max_length = np.int32(16)
    study.validate()
    assert type(study.max_length) is int and study.max_length == 16 and type(study.sentences) is int
