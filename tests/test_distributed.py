"""The Ray executor: the same results as the local executor, shard reuse, faults (a replica killed in the middle
of a shard, two writers of one shard), and its errors. A local Ray cluster of 2 CPUs, started once."""
from __future__ import annotations

import dataclasses
import glob
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from homoscope.models.lstm import LSTMLanguageModel
from homoscope.models.tiny import TINY_TEXT, tiny_model
from homoscope.study import Study, run_study
from homoscope.study.distributed import STORE_ID_FILE, check_store_id, store_id
from homoscope.study.scoring import PairScoring, Streamed, stream_measures
from homoscope.study.shards import InMemoryStack

ray = pytest.importorskip("ray")  # the [ray] extra; CI installs it
STREAMED = ["linear_cka", "debiased_cka", "svcca", "procrustes"]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: 2 CPUs, as CI has."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """114 texts: above the 16-row subsample, so the exact measures stream over the store's shards."""
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n".join(f"{t} (copy {i})" for i in range(6) for t in TINY_TEXT) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models():
    return {"bert": tiny_model("bert", seed=0, width=128), "gpt2": tiny_model("gpt2", seed=0, width=128)}


def _study(root: Path, corpus: Path, name: str, **kw) -> Study:
    base = dict(models=["bert", "gpt2"], corpus=str(corpus), sentences=None, out=str(root / f"out-{name}"),
                store=str(root / f"store-{name}"), measures=STREAMED + ["rbf_cka"], max_length=16,
                outliers=False, pairwise_rows=16, memory_mb=64, permutations=12, bootstrap=12,
                random_init=True, shard_size=16)
    return Study(**{**base, **kw})


def _local(study: Study, models: dict, threads: int = 1):
    """The local executor with as many torch threads as a replica has: float32 GEMMs round by thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_study(study, progress=False, loaded_models=models, log=None)
    finally:
        torch.set_num_threads(before)


def _max_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    pd.testing.assert_frame_equal(a, b, rtol=0, atol=1e-12)
    numbers = a.select_dtypes("number").columns
    return float((a[numbers] - b[numbers]).abs().max().max())


# ------------------------------------------------------------------------------------------ no cluster needed
def test_blocks_of_layer_pairs_join_into_the_whole_pair():
    """Each block of a pair's streamed sums computed alone, then joined, is the pair streamed in one go: the unit
    of a Ray scoring task loses nothing."""
    g = torch.Generator().manual_seed(0)
    X = InMemoryStack(torch.randn(4, 300, 24, generator=g, dtype=torch.float64), chunk_rows=64)
    Y = InMemoryStack(torch.randn(3, 300, 40, generator=g, dtype=torch.float64), chunk_rows=64)
    setup = PairScoring.build(300, [("x", "y")], STREAMED, unit="sentence", permutations=0, bootstrap=8,
                              groups=[str(i // 10) for i in range(300)], seed=3, device=None, progress=False,
                              memory_mb=1, pairwise_rows=64, bootstrap_groups=10, store=None)
    plan = setup.plan
    count = plan.stream_blocks(STREAMED, X, Y)
    assert count >= 3  # 1 MiB cuts the 12 layer pairs into blocks
    joined = plan.join_blocks(STREAMED, X, Y, [plan.stream_block(STREAMED, X, Y, i) for i in range(count)])
    whole = stream_measures(STREAMED, X, Y, memory_mb=1, boot=plan._boot_plan(300))
    for m in STREAMED:
        assert torch.equal(joined.values[m], whole.values[m]) and not joined.values[m].isnan().any()
        assert torch.equal(joined.replicates[m].nan_to_num(7.0), whole.replicates[m].nan_to_num(7.0))
    with pytest.raises(ValueError, match=f"2 parts for {count} blocks"):
        Streamed.joined([joined, joined], X, Y, 1, plan._boot_plan(300))


def test_a_worker_that_does_not_see_the_store_is_refused(tmp_path):
    ident = store_id(tmp_path)
    assert store_id(tmp_path) == ident and len(ident) == 32  # written once
    check_store_id(str(tmp_path), ident)
    for root, why in ((tmp_path / "elsewhere", "missing"), (tmp_path, "another")):
        with pytest.raises(ValueError, match=f"is not the driver's \\(its {STORE_ID_FILE} is {why}\\).*give store a folder every node mounts"):
            check_store_id(str(root), ident if why == "missing" else "0" * 32)


def test_the_ray_flag_sets_the_executor_and_the_address(tmp_path):
    from homoscope.cli import build_parser, build_study

    path = tmp_path / "study.toml"
    path.write_text('models = ["a", "b"]\n', encoding="utf-8")
    parse = build_parser().parse_args
    assert build_study(parse(["run", str(path), "--ray"])).executor == "ray"
    study = build_study(parse(["run", str(path), "--ray", "auto"]))
    assert (study.executor, study.ray_address) == ("ray", "auto")
    assert build_study(parse(["run", str(path)])).executor == "local"
    with pytest.raises(ValueError, match="--ray runs on a Ray cluster but --executor=local"):
        build_study(parse(["run", str(path), "--ray", "--executor", "local"]))
    with pytest.raises(ValueError, match="name two clusters"):
        build_study(parse(["run", str(path), "--ray", "a:1", "--ray-address", "b:2"]))


def test_an_address_where_no_cluster_answers_is_refused_at_once(monkeypatch):
    """Ray retries a silent address for minutes; the study says at once that nothing answers there."""
    import socket
    import time

    from homoscope.study.distributed import answering

    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=f"^ray_address='127.0.0.1:{port}': no Ray cluster answers at 127.0.0.1:{port} "):
        answering(f"127.0.0.1:{port}")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="ray_address='auto': .*a stale record\\? 'ray stop' clears it"):
        answering("auto")
    assert time.monotonic() - t0 < 10
    for bad in ("bogus", "none", "", "host:", "ray://host"):
        with pytest.raises(ValueError, match="is not auto, HOST:PORT or ray://HOST:PORT"):
            Study(models=["a", "b"], executor="ray", ray_address=bad).validate()
    with pytest.warns(RuntimeWarning, match=r"replicas=2 is unused: the study runs here \(executor='local'\)"):
        Study(models=["a", "b"], replicas=2).validate()


# ------------------------------------------------------------------------------------------ on the cluster
@pytest.mark.ray
def test_ray_gives_the_local_results_and_reuses_every_shard(tmp_path, corpus, models, cluster):
    local = _local(_study(tmp_path, corpus, "local"), models)
    logs = []
    study = _study(tmp_path, corpus, "ray", executor="ray", replicas=2)
    first = run_study(study, progress=False, loaded_models=models, log=logs.append)
    assert _max_difference(local.frame, first.frame) == 0.0
    assert first.manifest["run"] == local.manifest["run"]  # where it ran is not part of what it computed
    assert sorted(first.manifest["warnings"]) == sorted(local.manifest["warnings"])
    assert [m["shards"] for m in first.manifest["models"]] == [8, 8]  # 114 texts in shards of 16
    assert [m["shards_reused"] for m in first.manifest["models"]] == [0, 0]
    # the pair streamed in more than one block of layer pairs, each a task of its own
    X, Y = first.representations.stacks["bert"], first.representations.stacks["gpt2"]
    setup = PairScoring.build(X.n, [("bert", "gpt2")], list(study.measures), unit="sentence",
                              permutations=12, bootstrap=12, groups=None, seed=0, device=None, progress=False,
                              memory_mb=64, pairwise_rows=16, bootstrap_groups=32, store=None)
    assert setup.plan.stream_blocks(list(study.measures), X, Y) > 1
    again = run_study(study, progress=False, loaded_models=models, log=logs.append)
    assert [m["shards_reused"] for m in again.manifest["models"]] == [8, 8]
    assert all(c["reused"] for c in again.manifest["controls"]["random_init"])
    assert "scores of 1 of 1 model pairs read back from the store" in logs
    assert _max_difference(first.frame, again.frame) == 0.0
    # the local executor reads back what Ray stored, and the other way round
    here = _local(dataclasses.replace(study, executor="local", out=str(tmp_path / "out-here")), models)
    assert [m["shards_reused"] for m in here.manifest["models"]] == [8, 8]
    assert _max_difference(first.frame, here.frame) == 0.0


@pytest.mark.ray
@pytest.mark.parametrize("unit", ["word", "token"])
def test_word_and_token_rows_on_ray_equal_the_local_rows(tmp_path, corpus, models, cluster, unit):
    kw = dict(unit=unit, random_init=False, permutations=0, bootstrap=0, measures=["linear_cka", "rbf_cka"],
              pairwise_rows=64, max_rows=300, models=["bert", "bert2"] if unit == "token" else ["bert", "gpt2"])
    given = {**models, "bert2": tiny_model("bert", seed=1, width=128)}
    local = _local(_study(tmp_path, corpus, "local", **kw), given)
    remote = run_study(_study(tmp_path, corpus, "ray", executor="ray", **kw), progress=False, loaded_models=given,
                       log=None)
    assert _max_difference(local.frame, remote.frame) == 0.0
    assert remote.manifest["rows"] == local.manifest["rows"]


class KillsItsWorker(LSTMLanguageModel):
    """An LSTM language model whose first forward pass kills its process (SIGKILL), once: ``marker`` records it."""

    marker = ""

    def layers(self, input_ids, attention_mask):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().layers(input_ids, attention_mask)


class SlowLSTM(LSTMLanguageModel):
    """An LSTM language model that takes a tenth of a second more per forward pass."""

    def layers(self, input_ids, attention_mask):
        import time

        time.sleep(0.1)
        return super().layers(input_ids, attention_mask)


DRIVER = """
import sys, ray
sys.path.insert(0, {tests!r})
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
import test_distributed as t
ray.cloudpickle.register_pickle_by_value(t)
from homoscope.models.loading import from_module
from homoscope.models.tiny import tiny_model
from homoscope.study import Study, run_study
lstm = tiny_model("lstm", seed=0)
slow = t.SlowLSTM(lstm.model.config)
slow.load_state_dict(lstm.model.state_dict())
models = {{"lstm": from_module(slow, lstm.tokenizer, "lstm"), "gpt2": tiny_model("gpt2", seed=0)}}
run_study(Study(**{study!r}), progress=False, loaded_models=models, log=None)
"""


@pytest.mark.ray
def test_a_killed_driver_is_rerun_and_reuses_every_finished_shard(tmp_path, corpus, cluster):
    import subprocess
    import time

    from homoscope.models.loading import from_module

    kw = dict(models=["lstm", "gpt2"], random_init=False, measures=["linear_cka"], shard_size=4, bootstrap=0,
              permutations=0)
    study = _study(tmp_path, corpus, "ray", executor="ray", **kw)
    code = DRIVER.format(tests=str(Path(__file__).parent), address=ray.get_runtime_context().gcs_address,
                         study={k: v for k, v in study.__dict__.items()})
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = Path(study.store)
    deadline = time.monotonic() + 120
    while len(list(store.glob("lstm-*.json"))) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()[-2000:]
    finished = len(list(store.glob("lstm-*.json")))
    assert 3 <= finished < 29  # killed in the middle of the model's 29 shards
    lstm = tiny_model("lstm", seed=0)
    slow = SlowLSTM(lstm.model.config)
    slow.load_state_dict(lstm.model.state_dict())
    models = {"lstm": from_module(slow, lstm.tokenizer, "lstm"), "gpt2": tiny_model("gpt2", seed=0)}
    again = run_study(study, progress=False, loaded_models=models, log=None)
    assert again.manifest["models"][0]["shards_reused"] >= finished
    local = _local(_study(tmp_path, corpus, "local", **kw), {"lstm": lstm, "gpt2": tiny_model("gpt2", seed=0)})
    assert _max_difference(local.frame, again.frame) == 0.0


@pytest.mark.ray
def test_a_replica_killed_in_the_middle_of_a_shard_gives_the_same_results(tmp_path, corpus, cluster):
    from homoscope.models.loading import from_module

    lstm = tiny_model("lstm", seed=0, width=32)
    killer = KillsItsWorker(lstm.model.config)
    killer.load_state_dict(lstm.model.state_dict())
    KillsItsWorker.marker = str(tmp_path / "killed")
    dying = {"lstm": from_module(killer, lstm.tokenizer, "lstm"), "gpt2": tiny_model("gpt2", seed=0)}
    kw = dict(models=["lstm", "gpt2"], random_init=False, measures=["linear_cka", "procrustes"])
    remote = run_study(_study(tmp_path, corpus, "ray", executor="ray", **kw), progress=False, loaded_models=dying,
                       log=None)
    assert Path(KillsItsWorker.marker).exists()  # a replica died in its first shard and was restarted
    calm = {"lstm": lstm, "gpt2": tiny_model("gpt2", seed=0)}
    local = _local(_study(tmp_path, corpus, "local", **kw), calm)
    assert _max_difference(local.frame, remote.frame) == 0.0
    assert glob.glob(str(tmp_path / "store-ray" / ".*.tmp")) == []  # the killed write left nothing behind


def _put_after_both_started(root: str, tag: int, value: float) -> None:
    """Write one shard once both writers have started (each leaves a file, then waits for the other's)."""
    import time

    from homoscope.extract import RepresentationStore

    Path(root, f"started-{tag}").touch()
    while len(list(Path(root).glob("started-*"))) < 2:
        time.sleep(0.01)
    RepresentationStore(root).put("m", "k" * 64, torch.full((3, 500, 64), value), {"texts": [0, 500]})


@pytest.mark.ray
def test_two_workers_writing_one_shard_leave_one_intact_entry(tmp_path, corpus, models, cluster):
    import json

    from homoscope.corpora import load_corpus
    from homoscope.extract import RepresentationStore
    from homoscope.study.distributed import ModelReplica, ModelTask, Shipped

    # two tasks write different stacks under one key at the same moment: one whole entry, one writer's stack
    root = tmp_path / "race"
    root.mkdir()
    put = ray.remote(_put_after_both_started).options(num_cpus=1)
    ray.get([put.remote(str(root), tag, float(tag)) for tag in (1, 2)])
    stack, record = RepresentationStore(root).get("m", "k" * 64)
    assert stack.unique().tolist() in ([1.0], [2.0]) and record["shape"] == [3, 500, 64]
    assert sorted(p.suffix for p in root.glob("m-*")) == [".json", ".safetensors"]
    assert glob.glob(str(root / ".*.tmp")) == []
    # two replicas of one model asked for the same shard at once: one entry, intact, as the model gives it
    store = tmp_path / "store"
    store.mkdir()
    ident = store_id(store)
    study = _study(tmp_path, corpus, "race", shard_size=114, store=str(store))
    texts = load_corpus(str(corpus), sentences=None)
    task = ModelTask("bert", "bert", [ray.put(texts)], [ray.put(Shipped.of(models["bert"]))])
    replica = ray.remote(ModelReplica).options(num_cpus=1)
    both = [replica.remote(study, str(store), ident) for _ in range(2)]
    try:
        records = [rec for rec, _ in ray.get([r.run.remote(task, "model", 0) for r in both])]
    finally:
        for r in both:
            ray.kill(r)
    assert not all(r["reused"] for r in records)
    entries = sorted(store.glob("bert-*"))
    assert [p.suffix for p in entries] == [".json", ".safetensors"]
    key = json.loads(entries[0].read_text())["key"]
    got, _ = RepresentationStore(store).get("bert", key)
    from homoscope.extract import extract

    want = extract(models["bert"], texts.texts, max_length=16, progress=False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.ray
def test_errors_on_ray_name_the_option_or_come_as_raised_in_the_worker(tmp_path, corpus, models, cluster):
    for option, value in (("cpus_per_model", 64.0), ("gpus_per_model", 1.0)):
        with pytest.raises(ValueError, match=f"{option}={value!r}: no node of the Ray cluster has"):
            run_study(_study(tmp_path, corpus, "ray", executor="ray", **{option: value}), progress=False,
                      loaded_models=models, log=None)
    # a worker that does not see the driver's store refuses every call with the reason (not restarted in vain)
    from homoscope.study.distributed import ModelReplica, ModelTask

    elsewhere = ray.remote(ModelReplica).options(num_cpus=1).remote(
        _study(tmp_path, corpus, "ray"), str(tmp_path / "elsewhere"), "0" * 32)
    with pytest.raises(ray.exceptions.RayTaskError) as refused:
        ray.get(elsewhere.open.remote(ModelTask("bert", "bert", [ray.put(None)]), "model"))
    assert isinstance(refused.value.cause, ValueError) and "is not the driver's" in str(refused.value.cause)
    ray.kill(elsewhere)
    # a model's own error, raised in a worker, reaches the driver as the local executor raises it
    kw = dict(pooling="cls", random_init=False)
    with pytest.raises(ValueError) as here:
        _local(_study(tmp_path, corpus, "local", **kw), models)
    with pytest.raises(ValueError) as there:
        run_study(_study(tmp_path, corpus, "ray", executor="ray", **kw), progress=False, loaded_models=models,
                  log=None)
    assert str(there.value) == str(here.value)


@pytest.mark.ray
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_replicas_on_a_gpu_give_the_local_gpu_results(tmp_path, corpus, models):
    """On a machine with a GPU: replicas holding half a GPU each, the scoring tasks on the GPU too."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        kw = dict(device="auto", random_init=False)
        here = _local(_study(tmp_path, corpus, "local", **kw), models)
        there = run_study(_study(tmp_path, corpus, "ray", executor="ray", gpus_per_model=0.5, **kw), progress=False,
                          loaded_models=models, log=None)
        assert there.manifest["device"].startswith("cuda") and here.manifest["device"].startswith("cuda")
        pd.testing.assert_frame_equal(here.frame, there.frame, rtol=0, atol=1e-6)
    finally:
        if started:
            ray.shutdown()
