"""The study's extraction and scoring stages on a Ray cluster (``executor = "ray"``), with the local stages' results.

- **Extraction.** Each model gets ``replicas`` Ray actors (:class:`ModelReplica`), each holding the loaded model
  on its worker's device with ``cpus_per_model`` cores and ``gpus_per_model`` GPUs. The driver hands a model's
  shards to its replicas one at a time as each finishes one; a replica runs a shard exactly as the local
  executor does (:func:`~.extraction.run_shard`: from the store if there, else from the model into the store),
  so a rerun reuses every finished shard. With ``random_init`` the same replicas then take the shards of the
  model's random-init control. All models' replicas are asked for at once; Ray runs as many as the cluster's
  resources hold.
- **Scoring.** As soon as both models of a pair (and their controls) are stored, each ordered pair is cut into
  blocks of layers of its first model; a Ray task scores one block against every layer of the second model
  (:func:`~.scoring.score_block`), reading the shards from the store. The closed-form nulls' per-model
  moments are one task per model, shared by its pairs' tasks. The driver joins the blocks into each pair's
  rows, keeps them in the store's score cache (as the local executor does: either executor reads back what
  the other kept) and builds the one results frame. Word and token rows are aligned over all models first.
- **Faults.** A replica whose process dies is restarted by Ray (``MAX_RESTARTS``), loads its model again and
  redoes the shard it had in flight; a shard is written whole or not at all (the store renames a finished
  file under its lock), so two writers of one shard leave one intact entry.

The store must be one folder every node sees at the same path: the driver writes an id into it
(``.homoscope-store-id``) and every replica checks it before it loads a model.
"""
from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .._spelling import typed
from .extraction import RANDOM_INIT_SUFFIX, finish_job, open_job, random_init_seed, run_shard, shard_plan
from .options import Study

#: Restarts of a replica whose process died, and retries of the call it had in flight.
MAX_RESTARTS = 3
STORE_ID_FILE = ".homoscope-store-id"


# ------------------------------------------------------------------------------------------ on the workers
class ModelReplica:
    """One replica of one model on a Ray worker: the loaded model and, with ``random_init``, its control.

    Every call names its phase (``"model"`` or ``"control"``), so a replica that Ray restarted in the middle
    of the control's shards builds the control again from the reloaded model.
    """

    def __init__(self, study: Study, name: str, spec: str, corpus, store_root: str, store_id: str, plan=None,
                 loaded=None):
        from ..extract import RepresentationStore
        from .extraction import _load
        from .options import best_device

        check_store_id(store_root, store_id)
        torch.set_num_threads(max(1, int(study.cpus_per_model)))
        self.study, self.name, self.corpus, self.plan = study, name, corpus, plan
        self.store = RepresentationStore(store_root)
        self.device = best_device(study.device)
        t0 = time.perf_counter()
        self.loaded = loaded.load(self.device) if loaded is not None else _load(study, name, spec, self.device)
        self.load_s = time.perf_counter() - t0
        self.jobs: dict = {}

    def _job(self, phase: str):
        """``(job, shards)`` of the phase, opened on first use (the control is built from the loaded model)."""
        if phase not in self.jobs:
            from ..models import random_init_like

            if phase == "control":
                self.jobs.pop("model", None)
                loaded = random_init_like(self.loaded, seed=random_init_seed(self.study.seed, self.name))
                name = self.name + RANDOM_INIT_SUFFIX
            else:
                loaded, name = self.loaded, self.name
            job = open_job(self.study, name, loaded, self.corpus, self.store, self.device, plan=self.plan,
                           progress=False)
            self.jobs[phase] = (job, shard_plan(job))
        return self.jobs[phase]

    def shards(self, phase: str):
        """``(number of shards, the job's row plan)``; warnings raised are returned beside them."""
        return _caught(lambda: (len(self._job(phase)[1]), self._job(phase)[0].plan))

    def run(self, phase: str, index: int):
        """Shard ``index`` of the phase from the store or the model (:func:`~.extraction.run_shard`)."""
        job, shards = self._job(phase)
        return _caught(lambda: run_shard(job, shards[index]))

    def finish(self, phase: str, records: list):
        """The phase's ``(stack, record)`` once all its shards are stored (:func:`~.extraction.finish_job`)."""
        job, shards = self._job(phase)
        return _caught(lambda: finish_job(job, shards, records, self.load_s))


@dataclass
class Shipped:
    """A loaded model in a form Ray can send to a worker (a loaded transformers model does not pickle): how
    to build its architecture (:func:`~homoscope.models.loading.architecture`), its weights, dtype, tokenizer
    and info (its fingerprint included)."""

    recipe: tuple
    state: dict
    dtype: torch.dtype
    tokenizer: object
    info: object

    @classmethod
    def of(cls, loaded) -> "Shipped":
        from ..models.loading import architecture

        state = {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}
        dtype = next(loaded.model.parameters()).dtype
        return cls(architecture(loaded), state, dtype, loaded.tokenizer, loaded.info)

    def load(self, device: torch.device):
        """The model again, on ``device``: its architecture built, then its weights loaded (all of them)."""
        from ..models.loading import LoadedModel, build_architecture

        with torch.random.fork_rng(devices=[]):  # the initial weights are replaced: keep the worker's stream
            model = build_architecture(self.recipe)
        model.load_state_dict(self.state, strict=True)
        return LoadedModel(model.to(device=device, dtype=self.dtype).eval(), self.tokenizer, self.info)


def _caught(fn):
    """``(fn(), [(warning category name, message), ...])``: a worker's warnings travel to the driver."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fn()
    return got, [(w.category.__name__, str(w.message)) for w in caught]


def _null_moments(plan, name: str, stack):
    """The closed-form nulls' moments of one model's stack, computed once for all its pairs."""
    from .scoring import stack_moments

    return stack_moments(stack, seed=plan.seed, progress=False, name=name)


def _pair_task(plan, a: str, b: str, names: list, src: dict, csrc: dict | None, unit: str, streamed,
               moments_a, moments_b, threads: int):
    """One ordered pair's rows (:func:`~.scoring.score_pair`), with its streamed sums' results where its blocks
    were tasks of their own, and the models' null moments (None: computed here where needed)."""
    from .scoring import score_pair

    torch.set_num_threads(threads)
    plan.seed_moments({k: v for k, v in ((a, moments_a), (b, moments_b)) if v is not None})
    return _caught(lambda: score_pair(plan, a, b, names, src, csrc, unit, streamed))


def _block_task(plan, names: list, X, Y, block: int, with_controls: bool, threads: int):
    """The streamed sums of one block of layer pairs of a pair (:meth:`~.scoring._Plan.stream_block`)."""
    torch.set_num_threads(threads)
    return _caught(lambda: plan.stream_block(names, X, Y, block, with_controls))


def check_store_id(root: str, expected: str) -> None:
    """Raise ValueError unless the store folder ``root`` holds the id the driver wrote: a worker whose node does
    not see the driver's store would write shards nobody reads."""
    import socket

    try:
        got = (Path(root) / STORE_ID_FILE).read_text().strip()
    except OSError:
        got = None
    if got != expected:
        raise ValueError(f"the store folder {root!r} on node {socket.gethostname()!r} is not the driver's (its "
                         f"{STORE_ID_FILE} is {'missing' if got is None else 'another'}): on a cluster give "
                         f"{typed('store')} a folder every node mounts at the same path (a shared filesystem)")


def store_id(root: Path) -> str:
    """The store's id: written once into ``root/.homoscope-store-id`` (atomically, under the store's write lock)."""
    from filelock import FileLock

    from .._paths import atomic_path

    path = root / STORE_ID_FILE
    with FileLock(str(root / ".write.lock")):
        if not path.exists():
            with atomic_path(path) as tmp:
                Path(tmp).write_text(uuid.uuid4().hex + "\n")
    return path.read_text().strip()


# ------------------------------------------------------------------------------------------ on the driver
def connect(study: Study, log):
    """``(ray, started)``: the Ray session in use, else one joined at ``ray_address`` or started on this machine
    (``started``: this run started it and shuts it down). Raises ValueError naming ``ray_address`` where no
    cluster answers there."""
    import ray

    if ray.is_initialized():
        return ray, False
    quiet = dict(logging_level="ERROR", log_to_driver=False, namespace="homoscope")
    try:
        if study.ray_address is None:
            ray.init(include_dashboard=False, **quiet)
        else:
            ray.init(address=study.ray_address, **quiet)
    except (ConnectionError, RuntimeError) as err:
        raise ValueError(f"{typed('ray_address', study.ray_address)}: no Ray cluster answers there ({err}); start "
                         "one with 'ray start --head' on the head node, or leave "
                         f"{typed('ray_address')} out to start one on this machine") from None
    where = "on this machine" if study.ray_address is None else f"at {study.ray_address}"
    log(f"ray: joined a cluster {where} with {ray.cluster_resources().get('CPU', 0):g} CPUs and "
        f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
    return ray, True


def run_on_ray(study: Study, ctx, loaded_models: dict | None, progress: bool, log):
    """The extraction and scoring stages of :func:`~.run.run_study` on a Ray cluster: ``(Extracted, frame)``,
    equal to the local stages' (see the module doc). Raises what the local stages raise (the workers' errors
    as they were raised there), ValueError for a cluster that cannot hold one replica
    (``cpus_per_model``, ``gpus_per_model``) and RuntimeError for a replica that died more than
    :data:`MAX_RESTARTS` times."""
    ray, started = connect(study, log)
    try:
        return _Driver(ray, study, ctx, loaded_models or {}, progress, log).run()
    finally:
        if started:
            ray.shutdown()


def check_resources(ray, study: Study) -> None:
    """Raise ValueError where no node of the cluster has the CPUs and GPUs of one replica, or the cluster has not
    those of a model's replicas together (Ray would wait for ever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for what, option in (("CPU", "cpus_per_model"), ("GPU", "gpus_per_model")):
        want = getattr(study, option)
        most = max((n.get(what, 0) for n in nodes), default=0)
        if want > most:
            raise ValueError(f"{typed(option, want)}: no node of the Ray cluster has {want:g} {what}s (the most on one "
                             f"node: {most:g}); lower {typed(option)}"
                             + (" (0 runs on CPUs)" if what == "GPU" else ""))
        total = sum(n.get(what, 0) for n in nodes)
        if want * study.replicas > total:
            raise ValueError(f"{typed('replicas', study.replicas)} x {typed(option, want)} needs "
                             f"{want * study.replicas:g} {what}s at once; the Ray cluster has {total:g}: lower "
                             f"{typed('replicas')}")


def scoring_device(study: Study) -> torch.device:
    """The device of the scoring tasks: the study's, else CUDA where replicas hold GPUs, else the CPU."""
    if study.device != "auto":
        return torch.device(study.device)
    return torch.device("cuda" if study.gpus_per_model > 0 else "cpu")


@dataclass
class _ModelRun:
    """One model's extraction on the cluster: its replicas, the phase, the shards handed out and returned."""

    name: str
    actors: list
    group: object = None
    given: object = None
    phase: str = "model"
    count: int = 0
    handed: int = 0
    records: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)


class _Driver:
    """The driver's loop: Ray calls in flight, each with what to do with its result."""

    def __init__(self, ray, study: Study, ctx, loaded_models: dict, progress: bool, log):
        from tqdm.auto import tqdm

        from .run import Extracted

        self.ray, self.study, self.ctx, self.given, self.log = ray, study, ctx, loaded_models, log
        check_resources(ray, study)
        self.store_id = store_id(ctx.store.root)
        self.corpus = ray.put(ctx.corpus)
        self.ext = Extracted({}, {}, [], [], groups=ctx.corpus.doc_ids)
        self.records: dict = {}
        self.control_records: dict = {}
        self.runs: dict[str, _ModelRun] = {}
        self.waiting: dict = {}
        self.setup = None
        self.submitted: set = set()
        self.blocks: dict = {}
        self.frames: dict = {}
        self.moments: dict = {}
        self.bar = tqdm(desc="ray: shards", unit="shard", total=0, disable=not progress, leave=False)
        ctx.device = scoring_device(study)

    # -- the loop
    def run(self):
        """Start every model (the first alone where a token plan comes from it), then answer results until none
        is in flight; returns ``(Extracted, frame)``."""
        specs = self.study.model_specs()
        first_alone = self.study.unit == "token" and self.ctx.plan is None
        for name, spec in specs[:1] if first_alone else specs:
            self._start(name, spec)
        if self.study.unit == "sentence":
            self._open_scoring()
        from .scoring import raise_again

        try:
            while self.waiting:
                ready, _ = self.ray.wait(list(self.waiting), num_returns=1)
                then, relay = self.waiting.pop(ready[0])
                value, caught = self._get(ready[0])
                if relay:
                    raise_again(caught)
                    then(value)
                else:
                    then((value, caught))
        except BaseException:
            self._abort()
            raise
        finally:
            self.bar.close()
        return self.ext, self._frame()

    def _call(self, ref, then, relay: bool = True) -> None:
        """Wait for ``ref``; give its value to ``then`` (``relay``: its warnings raised here first; else
        ``then`` takes ``(value, warnings)``)."""
        self.waiting[ref] = (then, relay)

    def _get(self, ref):
        """``(value, warnings)`` of a Ray call; a worker's error raised as it was raised there."""
        from ray.exceptions import RayActorError, RayTaskError

        try:
            got = self.ray.get(ref)
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except RayActorError as err:
            raise RuntimeError(f"a Ray actor of the study died {MAX_RESTARTS + 1} times ({type(err).__name__}); "
                               "the shards it finished are kept in the store and a rerun reuses them") from None
        return got  # every call the driver waits for returns its warnings beside its value

    def _abort(self) -> None:
        """Stop what is in flight after an error: the replicas go, the tasks are cancelled."""
        for ref in self.waiting:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001 - an actor call cannot always be cancelled; its actor is killed
                pass
        for run in self.runs.values():
            self._release(run)
        self.waiting.clear()

    def _release(self, run: _ModelRun) -> None:
        """The model's replicas go and its part of the cluster is given back."""
        from ray.util.placement_group import remove_placement_group

        for actor in run.actors:
            self.ray.kill(actor)
        if run.group is not None:
            remove_placement_group(run.group)
        run.actors, run.group, run.given = [], None, None

    # -- extraction
    def _start(self, name: str, spec: str) -> None:
        """Ask for the model's replicas, placed together (a placement group: no model holds part of the cluster
        waiting for the rest of its replicas), and its shard count (each replica loads the model as it starts)."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        study, ray = self.study, self.ray
        bundle = {"CPU": study.cpus_per_model, **({"GPU": study.gpus_per_model} if study.gpus_per_model else {})}
        group = placement_group([bundle] * study.replicas, strategy="PACK")
        given = self.given.get(name)
        given = None if given is None else ray.put(Shipped.of(given))  # held here: a restarted replica reads it
        actors = [ray.remote(ModelReplica).options(
            num_cpus=study.cpus_per_model, num_gpus=study.gpus_per_model, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
        ).remote(study, name, spec, self.corpus, str(self.ctx.store.root), self.store_id, self.ctx.plan, given)
            for i in range(study.replicas)]
        run = self.runs[name] = _ModelRun(name, actors, group=group, given=given)
        self._call(actors[0].shards.remote(run.phase), lambda got: self._counted(run, *got))

    def _counted(self, run: _ModelRun, count: int, plan) -> None:
        """The phase's shard count is known: hand one shard to each replica (the token plan comes from the first
        model: the other models start once it is known)."""
        run.count, run.handed, run.records, run.t0 = count, 0, {}, time.perf_counter()
        self.bar.total += count
        self.bar.refresh()
        if self.ctx.plan is None and self.study.unit == "token":
            self.ctx.plan = plan
            for name, spec in self.study.model_specs()[1:]:
                self._start(name, spec)
        for actor in run.actors:
            self._hand(run, actor)

    def _hand(self, run: _ModelRun, actor) -> None:
        if run.handed < run.count:
            i, run.handed = run.handed, run.handed + 1
            self._call(actor.run.remote(run.phase, i), lambda rec: self._stored(run, actor, i, rec))

    def _stored(self, run: _ModelRun, actor, i: int, rec: dict) -> None:
        run.records[i] = rec
        self.bar.update(1)
        if len(run.records) < run.count:
            self._hand(run, actor)
            return
        records = [run.records[k] for k in range(run.count)]
        self._call(run.actors[0].finish.remote(run.phase, records), lambda got: self._finished(run, *got))

    def _finished(self, run: _ModelRun, stack, record: dict) -> None:
        """A phase of one model is stored: keep its stack and record; go on to the control or release."""
        from .run import report_model

        record["seconds"] = time.perf_counter() - run.t0
        self.ctx.timings[f"extract/{record['info']['name']}"] = record["seconds"]
        if run.phase == "model":
            self.ext.stacks[run.name], self.records[run.name] = stack, record
            report_model(self.study, self.ctx, stack, record, self.log)
            if self.study.random_init:
                run.phase = "control"
                self._call(run.actors[0].shards.remote(run.phase), lambda got: self._counted(run, *got))
                return
        else:
            self.ext.controls[run.name + RANDOM_INIT_SUFFIX], self.control_records[run.name] = stack, record
        self._release(run)
        self._extracted(run.name)

    def _extracted(self, name: str) -> None:
        """One model (and its control) is stored: score what is ready; after the last, align word or token rows."""
        from .run import _align_rows

        names = [n for n, _ in self.study.model_specs()]
        if len(self.records) == len(names) and (not self.study.random_init or len(self.control_records) == len(names)):
            self.ext.records = [self.records[n] for n in names]
            self.ext.control_records = [self.control_records[n] for n in names if n in self.control_records]
            self.ext.stacks = {n: self.ext.stacks[n] for n in names}
            if self.ctx.plan is not None:
                _align_rows(self.ctx.plan, self.ctx.corpus, self.ext)
            if self.setup is None:
                self._open_scoring()
        self._submit_ready()

    # -- scoring
    def _open_scoring(self) -> None:
        """Fix what every pair's scoring shares (rows, subsample, bootstrap plan), once the rows are known."""
        from .scoring import PairScoring, model_pairs

        study = self.study
        n = len(self.ctx.corpus) if study.unit == "sentence" else next(iter(self.ext.stacks.values())).n
        self.setup = PairScoring.build(
            n, model_pairs([name for name, _ in study.model_specs()], study.pairs), list(study.measures),
            unit=study.unit, permutations=study.permutations, bootstrap=study.bootstrap, groups=self.ext.groups,
            seed=study.seed, device=self.ctx.device, progress=False, memory_mb=study.memory_mb,
            pairwise_rows=study.pairwise_rows, bootstrap_groups=study.bootstrap_groups, store=self.ctx.store)
        self.plan = self.ray.put(self.setup.plan)
        self.t_scoring = time.perf_counter()

    def _ready(self, name: str) -> bool:
        return name in self.records and (not self.study.random_init or name in self.control_records)

    def _submit_ready(self) -> None:
        """Each ordered pair whose two models are stored: read back from the score cache, else its blocks of
        layer pairs (one task each, where it streams), then the pair (one task)."""
        if self.setup is None:  # word and token rows: after the last model, once aligned
            return
        src, csrc = self.ext.stacks, self._controls()
        for (a, b), names in self.setup.jobs.items():
            if (a, b) in self.submitted or not (self._ready(a) and self._ready(b)):
                continue
            self.submitted.add((a, b))
            key = self.setup.key(a, b, src, csrc)
            kept = self.setup.cache.get(key) if key is not None else None
            if kept is not None:
                self.frames[a, b] = kept
                continue
            sides = [(src[a], src[b], True)] + ([(csrc[a], csrc[b], False)] if csrc is not None else [])
            counts = [self.setup.plan.stream_blocks(names, X, Y, ctl) for X, Y, ctl in sides]
            self.blocks[a, b] = {"parts": [[None] * k for k in counts], "caught": []}
            if not any(counts):
                self._submit_pair((a, b))
            for side, ((X, Y, ctl), k) in enumerate(zip(sides, counts)):
                for i in range(k):
                    ref = self._task(_block_task).remote(self.plan, names, X, Y, i, ctl, self._threads())
                    self._call(ref, lambda got, pair=(a, b), side=side, i=i: self._streamed(pair, side, i, *got),
                               relay=False)

    def _task(self, fn):
        study = self.study
        return self.ray.remote(fn).options(num_cpus=study.cpus_per_model, num_gpus=min(1.0, study.gpus_per_model))

    def _threads(self) -> int:
        return max(1, int(self.study.cpus_per_model))

    def _streamed(self, pair: tuple, side: int, i: int, part, caught: list) -> None:
        """One block of a pair's streamed sums is in; with the last, the pair's task goes."""
        pending = self.blocks[pair]
        pending["parts"][side][i] = part
        pending["caught"] += caught
        if all(p is not None for parts in pending["parts"] for p in parts):
            self._submit_pair(pair)

    def _submit_pair(self, pair: tuple) -> None:
        a, b = pair
        names, plan = self.setup.jobs[pair], self.setup.plan
        src, csrc = self.ext.stacks, self._controls()
        sides = [(src[a], src[b], True)] + ([(csrc[a], csrc[b], False)] if csrc is not None else [])
        parts = self.blocks[pair]["parts"]
        streamed = None
        if any(parts):
            streamed = tuple(plan.join_blocks(names, X, Y, p, ctl) if p else None
                             for (X, Y, ctl), p in zip(sides, parts))
            streamed = streamed + (None,) * (2 - len(streamed))
        ref = self._task(_pair_task).remote(
            self.plan, a, b, names, {a: src[a], b: src[b]}, None if csrc is None else {a: csrc[a], b: csrc[b]},
            self.setup.unit, None if streamed is None else self.ray.put(streamed), self._moments(a),
            self._moments(b), self._threads())
        self._call(ref, lambda got: self._scored(pair, *got), relay=False)

    def _controls(self) -> dict | None:
        if not self.study.random_init:
            return None
        return {name[: -len(RANDOM_INIT_SUFFIX)]: stack for name, stack in self.ext.controls.items()}

    def _moments(self, name: str):
        """The Ray reference of the model's null moments (one task per model), None where no null is closed-form."""
        from .scoring import ANALYTIC_MIN_N, ANALYTIC_NULLS

        plan = self.setup.plan
        if not plan.permutations or not any(m in ANALYTIC_NULLS for m in self.study.measures):
            return None
        stack = self.ext.stacks[name]
        if stack.n < ANALYTIC_MIN_N:
            return None
        if name not in self.moments:
            task = self.ray.remote(_null_moments).options(num_cpus=self.study.cpus_per_model)
            self.moments[name] = task.remote(self.plan, name, stack)
        return self.moments[name]

    def _scored(self, pair: tuple, frame: pd.DataFrame, caught: list) -> None:
        """A pair is scored: its rows and its warnings (each once, its blocks' first), kept in the score cache."""
        from .scoring import _keep

        caught = list(dict.fromkeys(tuple(w) for w in self.blocks[pair]["caught"] + caught))
        _keep(self.setup.cache, self.setup.key(*pair, self.ext.stacks, self._controls()), frame, caught)
        self.frames[pair] = (frame, caught)
        del self.blocks[pair]

    def _frame(self) -> pd.DataFrame:
        """The study's frame from every pair's rows, in the local executor's order."""
        from .scoring import raise_again

        frames = []
        for pair in self.setup.jobs:
            raise_again(self.frames[pair][1])
            frames.append(self.frames[pair][0])
        self.ctx.timings["measures"] = time.perf_counter() - self.t_scoring
        return self.setup.frame(frames)
