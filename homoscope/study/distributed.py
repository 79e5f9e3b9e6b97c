"""The study's extraction and scoring stages on a Ray cluster (``executor = "ray"``), with the local stages' results.

- **Extraction.** As many Ray actors (:class:`ModelReplica`) as the cluster holds, each on a worker slot of
  ``cpus_per_model`` cores and ``gpus_per_model`` GPUs, each holding one model at a time. The driver hands out
  shards one at a time: a free replica takes more shards of the model it holds, else a model no replica has
  started (the largest first), else the model with the most shards left (at most ``replicas`` replicas on one
  model; 0: no limit). A replica runs a shard exactly as the local executor does
  (:func:`~.extraction.run_shard`: from the store if there, else from the model into the store), so a rerun
  reuses every finished shard. With ``random_init`` the replica that finished a model goes on with its
  random-init control.
- **Scoring.** As soon as both models of a pair (and their controls) are stored, the pair's streamed sums go as
  one Ray task per block of layer pairs (the blocks ``memory_mb`` sets, :meth:`~.scoring._Plan.stream_block`),
  then the pair as one task (:func:`~.scoring.score_pair`: the ``n x n`` measures, the drawn nulls, the
  closed-form nulls from one moments task per model), all reading the shards from the store. The driver keeps
  each pair's rows in the store's score cache (as the local executor does: either executor reads back what the
  other kept) and builds the one results frame. Word and token rows are aligned over all models first.
- **Faults.** A replica whose process dies is restarted by Ray (``MAX_RESTARTS``) and redoes the call it had in
  flight (loading its model again); a shard is written whole or not at all (the store renames a finished file
  under its lock), so two writers of one shard leave one intact entry.

The same frame as the local executor, to the last bit, where each process computes with as many torch threads
(``cpus_per_model``): float32 matrix products round by the number of threads. The store must be one folder every
node sees at the same path: the driver writes an id into it (``.homoscope-store-id``) and every replica and task
checks it first.
"""
from __future__ import annotations

import dataclasses
import math
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

class ReplicaLost(RuntimeError):
    """A replica's process, or its node, went away more often than Ray restarts it (the study stops; what was
    stored is kept)."""


#: Restarts of a replica whose process died, and retries of the call it had in flight.
MAX_RESTARTS = 3
STORE_ID_FILE = ".homoscope-store-id"


# ------------------------------------------------------------------------------------------ on the workers
@dataclass(frozen=True)
class ModelTask:
    """What a replica needs to hold one model: its name and spec, and, as one-element lists of Ray references the
    driver holds (so that a restarted replica reads them again), a :class:`Shipped` model given in memory
    (None: load ``spec``) and the word or token plan (None: none, or made from this model)."""

    name: str
    spec: str
    corpus: list
    given: list | None = None
    plan: list | None = None


class ModelReplica:
    """A Ray actor on one worker slot (``cpus_per_model`` cores, ``gpus_per_model`` GPUs) that holds one model at a
    time: a replica of the model the driver names in each call, loaded on first use (the one held before is
    freed), and its random-init control built from it.

    Every call names the model and the phase (``"model"`` or ``"control"``), so a replica that Ray restarted
    carries on from whatever call it is given: it loads the model again and opens the phase's job.
    """

    def __init__(self, study: Study, store_root: str, store_id: str):
        """A worker that does not see the driver's store refuses every call (a ValueError the driver raises as it
        is: refused in the constructor, Ray would restart the actor in vain)."""
        from ..extract import RepresentationStore
        from .options import best_device

        torch.set_num_threads(max(1, int(study.cpus_per_model)))
        self.study, self.corpus, self.refused = study, None, None
        try:
            check_store_id(store_root, store_id)
            self.store = RepresentationStore(store_root)
        except ValueError as err:
            self.refused = err
        self.device = best_device(study.device)
        self.held: str | None = None
        self.loaded, self.load_s, self.jobs = None, 0.0, {}

    def _hold(self, task: ModelTask) -> None:
        """Hold ``task``'s model (loading it, and freeing the one held before, unless it is held already)."""
        if self.refused is not None:
            raise self.refused
        if self.held == task.name:
            return
        import ray

        if self.corpus is None:
            self.corpus = ray.get(task.corpus[0])
        from .extraction import _free, _load

        self.held, self.loaded, self.jobs = None, None, {}
        _free(self.device)
        t0 = time.perf_counter()
        given = None if task.given is None else ray.get(task.given[0])
        self.loaded = (given.load(self.device) if given is not None
                       else _load(self.study, task.name, task.spec, self.device))
        self.load_s, self.held = time.perf_counter() - t0, task.name

    def _job(self, task: ModelTask, phase: str):
        """``(job, shards)`` of the model's phase, opened on first use (the control built from the model)."""
        self._hold(task)
        if phase not in self.jobs:
            import ray

            from ..models import random_init_like

            if phase == "control":
                self.jobs.pop("model", None)
                loaded = random_init_like(self.loaded, seed=random_init_seed(self.study.seed, task.name))
                name = task.name + RANDOM_INIT_SUFFIX
            else:
                loaded, name = self.loaded, task.name
            plan = None if task.plan is None else ray.get(task.plan[0])
            job = open_job(self.study, name, loaded, self.corpus, self.store, self.device, plan=plan, progress=False)
            self.jobs[phase] = (job, shard_plan(job))
        return self.jobs[phase]

    def open(self, task: ModelTask, phase: str):
        """``(number of shards, the job's row plan)`` of the model's phase; its warnings beside them."""
        return _caught(lambda: (len(self._job(task, phase)[1]), self._job(task, phase)[0].plan))

    def run(self, task: ModelTask, phase: str, index: int):
        """Shard ``index`` of the phase from the store or the model (:func:`~.extraction.run_shard`)."""
        def one():
            job, shards = self._job(task, phase)
            return run_shard(job, shards[index])

        return _caught(one)

    def finish(self, task: ModelTask, phase: str, records: list):
        """The phase's ``(stack, record)`` once all its shards are stored (:func:`~.extraction.finish_job`)."""
        return _caught(lambda: finish_job(*self._job(task, phase), records, self.load_s))


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


def _null_moments(store: tuple, plan, name: str, stack):
    """The closed-form nulls' moments of one model's stack, computed once for all its pairs (``store``: the
    store's root and id, checked first)."""
    from .scoring import stack_moments

    check_store_id(*store)
    return stack_moments(stack, seed=plan.seed, progress=False, name=name)


def _pair_task(store: tuple, plan, a: str, b: str, names: list, src: dict, csrc: dict | None, unit: str, streamed,
               moments_a, moments_b, threads: int):
    """One ordered pair's rows (:func:`~.scoring.score_pair`), with its streamed sums' results where its blocks
    were tasks of their own, and the models' null moments (None: computed here where needed)."""
    from .scoring import score_pair

    check_store_id(*store)
    torch.set_num_threads(threads)
    plan.seed_moments({k: v for k, v in ((a, moments_a), (b, moments_b)) if v is not None})
    return _caught(lambda: score_pair(plan, a, b, names, src, csrc, unit, streamed))


def _block_task(store: tuple, plan, names: list, X, Y, block: int, with_controls: bool, threads: int, label: str):
    """The streamed sums of one block of layer pairs of a pair (:meth:`~.scoring._Plan.stream_block`)."""
    check_store_id(*store)
    torch.set_num_threads(threads)
    return _caught(lambda: plan.stream_block(names, X, Y, block, with_controls, label))


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
    """``(ray, started)``: the Ray session in use, else one joined at ``ray_address`` or a new one started on this
    machine (``started``: this run started it and shuts it down). Raises ValueError naming ``ray_address`` where no
    cluster answers there (checked first with a plain connection: Ray itself retries for minutes)."""
    import ray

    if ray.is_initialized():
        return ray, False
    quiet = dict(logging_level="ERROR", log_to_driver=False, namespace="homoscope")
    address = study.ray_address
    if address is not None:
        answering(address)
    try:
        if address is None:  # "local": a new cluster of this run's own, never one found running here
            ray.init(address="local", include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError, ImportError) as err:
        hint = (" (a ray:// address needs the Ray Client: pip install \"ray[client]\")" if "client" in str(err).lower()
                else "")
        raise ValueError(f"{typed('ray_address', address)}: Ray could not join a cluster there: {err}{hint}; start "
                         "one with 'ray start --head' on the head node, or leave the address out (--ray alone) to "
                         "start one on this machine") from None
    where = "started a cluster on this machine" if address is None else \
        f"joined the cluster at {ray.get_runtime_context().gcs_address}"
    log(f"ray: {where} with {ray.cluster_resources().get('CPU', 0):g} CPUs and "
        f"{ray.cluster_resources().get('GPU', 0):g} GPUs")
    return ray, True


def answering(address: str, timeout: float = 5.0) -> None:
    """Raise ValueError naming ``ray_address`` unless something accepts a connection at the address (``auto``: the
    one in ``RAY_ADDRESS`` or the running cluster's record, where there is one; ``ray://HOST:PORT``: its Ray Client
    server)."""
    import os
    import socket
    import tempfile

    given = address
    if address == "auto":
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        address = os.environ.get("RAY_ADDRESS") or (record.read_text().strip() if record.is_file() else "")
        if not address:
            return  # no cluster recorded: Ray says so at once
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        stale = f" (the cluster recorded at {address}: a stale record? 'ray stop' clears it)" if given == "auto" else ""
        raise ValueError(f"{typed('ray_address', given)}: no Ray cluster answers at {address}{stale} "
                         f"({getattr(err, 'strerror', None) or err}); start one with 'ray start --head' on the head "
                         "node, or leave the address out (--ray alone) to start one on this machine") from None


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


def slot_count(ray, study: Study) -> int:
    """How many replicas the cluster holds at once (each node's CPUs and GPUs over ``cpus_per_model`` and
    ``gpus_per_model``), at most ``replicas`` per model (0: no limit). Raises ValueError, naming the option, where no node
    holds one (Ray would wait for ever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for what, option in (("CPU", "cpus_per_model"), ("GPU", "gpus_per_model")):
        want = getattr(study, option)
        most = max((n.get(what, 0) for n in nodes), default=0)
        if want > most:
            raise ValueError(f"{typed(option, want)}: no node of the Ray cluster has {want:g} {what}s (the most on one "
                             f"node: {most:g}); lower {typed(option)}"
                             + (" (0 runs on CPUs)" if what == "GPU" else ""))

    def fits(node: dict) -> int:
        cpus = math.floor(node.get("CPU", 0) / study.cpus_per_model + 1e-9)
        gpus = math.floor(node.get("GPU", 0) / study.gpus_per_model + 1e-9) if study.gpus_per_model else cpus
        return min(cpus, gpus)

    return min(sum(fits(n) for n in nodes), (study.replicas or math.inf) * len(study.models))


def scoring_device(study: Study) -> torch.device:
    """The device of the scoring tasks: the study's, else CUDA where replicas hold GPUs, else the CPU."""
    if study.device != "auto":
        return torch.device(study.device)
    return torch.device("cuda" if study.gpus_per_model > 0 else "cpu")


@dataclass
class _ModelRun:
    """One model's extraction on the cluster: its phase, the shards handed out and returned, the slots on it."""

    task: ModelTask
    phase: str = "model"
    count: int | None = None  # the phase's shards; None: not opened yet
    handed: int = 0
    records: dict = field(default_factory=dict)
    slots: set = field(default_factory=set)
    busy: bool = False  # opening or finishing the phase
    blocked: bool = False  # waiting for the token plan of the first model
    done: bool = False
    t0: float = field(default_factory=time.perf_counter)

    @property
    def name(self) -> str:
        return self.task.name

    def needs(self) -> str | None:
        """What the run can take from a free slot now: ``open``, ``shard``, or None."""
        if self.done or self.busy or self.blocked:
            return None
        if self.count is None:
            return "open"
        return "shard" if self.handed < self.count else None


@dataclass
class _Slot:
    """A replica actor and the run it works for."""

    actor: object
    run: _ModelRun | None = None
    busy: bool = False


class _Driver:
    """The driver's loop: Ray calls in flight, each with what to do with its result."""

    def __init__(self, ray, study: Study, ctx, loaded_models: dict, progress: bool, log):
        from tqdm.auto import tqdm

        from .run import Extracted

        self.ray, self.study, self.ctx, self.given, self.log = ray, study, ctx, loaded_models, log
        # no more replicas than there can be shards to hand out (a model's shards hold at most shard_size texts)
        most = len(study.models) * math.ceil(len(ctx.corpus) / (study.shard_size if study.unit == "sentence" else 1))
        self.slot_count = min(slot_count(ray, study), most)
        self.store_id = store_id(ctx.store.root)
        self.where = (str(ctx.store.root), self.store_id)  # what every task checks before it reads the store
        self.corpus = ray.put(ctx.corpus)
        self.ext = Extracted({}, {}, [], [], groups=ctx.corpus.doc_ids)
        self.records: dict = {}
        self.control_records: dict = {}
        self.runs: list[_ModelRun] = []
        self.slots: list[_Slot] = []
        self.plan = None if ctx.plan is None else ray.put(ctx.plan)  # the row plan, held here while replicas read it
        self.scoring = None  # the reference of the scoring plan, once the rows are known
        self.waiting: dict = {}
        self.setup = None
        self.submitted: set = set()
        self.read_back = 0
        self.blocks: dict = {}
        self.frames: dict = {}
        self.moments: dict = {}
        phases = len(study.models) * (2 if study.random_init else 1)
        self.bar = tqdm(desc="ray: extraction", unit="model", total=phases, disable=not progress, leave=False)
        self.shards_done = 0
        self.log = lambda line: self._say(log, line)
        ctx.device = scoring_device(study)

    # -- the loop
    def run(self):
        """Start the replicas and hand them the models, then answer results until none is in flight; returns
        ``(Extracted, frame)``."""
        from .scoring import raise_again

        self._start()
        if self.study.unit == "sentence":
            self._open_scoring()
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

    def _say(self, log, line: str) -> None:
        """A line to ``log`` above the progress bar."""
        if log is not None:
            with self.bar.external_write_mode():
                log(line)

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
            raise ReplicaLost(f"a replica of the study was lost ({type(err).__name__}): its node or the cluster went "
                               f"away, or it died more than {MAX_RESTARTS} times; the shards and pairs finished are "
                               "kept in the store and a rerun reuses them") from None
        return got  # every call the driver waits for returns its warnings beside its value

    def _abort(self) -> None:
        """Stop what is in flight after an error: the replicas go, the tasks are cancelled."""
        for ref in self.waiting:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001 - an actor call cannot always be cancelled; its actor is killed
                pass
        for slot in list(self.slots):
            self._retire(slot)
        self.waiting.clear()

    # -- extraction
    def _start(self) -> None:
        """The replicas (as many as the cluster holds, at most ``replicas`` per model) and the models' runs, the
        largest first (a token plan comes from the first model: the others wait for it)."""
        study, ray = self.study, self.ray
        replica = ray.remote(ModelReplica).options(
            num_cpus=study.cpus_per_model, num_gpus=study.gpus_per_model, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS)
        self.slots = [_Slot(replica.remote(study, *self.where)) for _ in range(self.slot_count)]
        wait_for_plan = study.unit == "token" and self.ctx.plan is None
        specs = study.model_specs()
        for k, (name, spec) in enumerate(specs[:1] + sorted(specs[1:], key=self._cost, reverse=True)
                                         if wait_for_plan else sorted(specs, key=self._cost, reverse=True)):
            given = self.given.get(name)
            given = None if given is None else [ray.put(Shipped.of(given))]  # held here: restarts read it
            task = ModelTask(name, spec, [self.corpus], given, None if self.plan is None else [self.plan])
            self.runs.append(_ModelRun(task, blocked=wait_for_plan and k > 0))
        self._dispatch()

    def _cost(self, model: tuple[str, str]) -> float:
        """A model's forward cost per token, blocks x width^2, from its info or config (inf where not known): the
        largest models start first, so the last to finish is a small one."""
        from ..models import config_shape, resolve

        name, spec = model
        info = getattr(self.given.get(name), "info", None)
        shape = (getattr(info, "blocks", None), getattr(info, "width", None))
        if None in shape:
            try:
                shape = config_shape(resolve(spec)) or (None, None)
            except (ValueError, OSError):
                shape = (None, None)
        return math.inf if None in shape else float(shape[0] * shape[1] ** 2)

    def _dispatch(self) -> None:
        """Give every free slot what there is to do: more shards of the model it holds, else a model that has
        fewer than ``replicas`` slots; retire slots that nothing is left for."""
        for slot in self.slots:
            if slot.busy:
                continue
            run = self._work_for(slot)
            if run is None:
                continue
            if slot.run is not run:
                if slot.run is not None:
                    slot.run.slots.discard(id(slot))
                slot.run = run
                run.slots.add(id(slot))
            slot.busy = True
            if run.needs() == "open":
                run.busy = True
                if run.phase == "model":
                    run.t0 = time.perf_counter()  # a model's time runs from its opening, not from the queue
                self._call(slot.actor.open.remote(run.task, run.phase), lambda got, s=slot: self._opened(s, *got))
            else:
                i, run.handed = run.handed, run.handed + 1
                self._call(slot.actor.run.remote(run.task, run.phase, i),
                           lambda rec, s=slot, i=i: self._stored(s, i, rec))
        if not any(r.needs() or r.busy or r.blocked or (r.phase == "model" and self.study.random_init and not r.done)
                   for r in self.runs):
            for slot in [s for s in self.slots if not s.busy]:
                self._retire(slot)  # nothing left for it: its CPUs go to scoring

    def _work_for(self, slot: _Slot) -> _ModelRun | None:
        """The run a free slot works for: its own while it has work, else a model not started yet (the largest
        first), else the model with the most shards left (two or more; at most ``replicas`` slots on one)."""
        if slot.run is not None and slot.run.needs():
            return slot.run
        fresh = next((r for r in self.runs if r.needs() == "open" and not r.slots), None)
        if fresh is not None:
            return fresh
        limit = self.study.replicas or math.inf
        left = [r for r in self.runs if r.needs() == "shard" and r.count - r.handed >= 2 and len(r.slots) < limit]
        return max(left, key=lambda r: r.count - r.handed, default=None)

    def _retire(self, slot: _Slot) -> None:
        self.ray.kill(slot.actor)
        self.slots.remove(slot)
        if slot.run is not None:
            slot.run.slots.discard(id(slot))

    def _opened(self, slot: _Slot, count: int, plan) -> None:
        """A phase is open: its shard count is known (the token plan too, from the first model)."""
        run = slot.run
        run.count, run.handed, run.records, run.busy, slot.busy = count, 0, {}, False, False
        if self.study.unit == "token" and self.plan is None:
            self.ctx.plan, self.plan = plan, self.ray.put(plan)
            for other in self.runs[1:]:
                other.task = dataclasses.replace(other.task, plan=[self.plan])
                other.blocked = False
        self._dispatch()

    def _stored(self, slot: _Slot, i: int, rec: dict) -> None:
        run = slot.run
        run.records[i] = rec
        self.shards_done += 1
        self.bar.set_postfix(shards=self.shards_done)
        if len(run.records) == run.count:  # the last shard: the slot that ran it finishes the phase
            run.busy = True
            records = [run.records[k] for k in range(run.count)]
            self._call(slot.actor.finish.remote(run.task, run.phase, records),
                       lambda got, s=slot: self._finished(s, *got))
            return
        slot.busy = False
        self._dispatch()

    def _finished(self, slot: _Slot, stack, record: dict) -> None:
        """A phase of one model is stored: keep its stack and record; go on to the control, or the model is done."""
        from .run import report_model

        run, slot.busy, name = slot.run, False, slot.run.name
        run.busy = False
        record["seconds"] = time.perf_counter() - run.t0
        self.bar.update(1)
        self.ctx.timings[f"extract/{record['info']['name']}"] = record["seconds"]
        if run.phase == "model":
            self.ext.stacks[name], self.records[name] = stack, record
            report_model(self.study, self.ctx, stack, record, self.log)
        else:
            self.ext.controls[name + RANDOM_INIT_SUFFIX], self.control_records[name] = stack, record
        if run.phase == "model" and self.study.random_init:
            run.phase, run.count, run.t0 = "control", None, time.perf_counter()
        else:
            run.done = True
            self._extracted(name)
        self._dispatch()

    def _extracted(self, name: str) -> None:
        """One model (and its control) is stored: score what is ready; after the last, align word or token rows."""
        from .run import _align_rows, _check_plan

        names = [n for n, _ in self.study.model_specs()]
        if len(self.records) == len(names) and (not self.study.random_init or len(self.control_records) == len(names)):
            self.ext.records = [self.records[n] for n in names]
            self.ext.control_records = [self.control_records[n] for n in names if n in self.control_records]
            self.ext.stacks = {n: self.ext.stacks[n] for n in names}
            if self.ctx.plan is not None:
                _align_rows(self.ctx.plan, self.ctx.corpus, self.ext)
            # as the local stages check after extraction: the rows and shapes as extracted
            _check_plan(self.study, next(iter(self.ext.stacks.values())).n,
                        {n: (st.layers, st.width) for n, st in self.ext.stacks.items()})
            if self.setup is None:
                self._open_scoring()
            self.t_scoring = time.perf_counter()  # scoring's time is what follows the last extraction
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
        self.scoring = self.ray.put(self.setup.plan)
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
                self.read_back += 1
                continue
            sides = [(src[a], src[b], True)] + ([(csrc[a], csrc[b], False)] if csrc is not None else [])
            counts = [self.setup.plan.stream_blocks(names, X, Y, ctl) for X, Y, ctl in sides]
            self.blocks[a, b] = {"parts": [[None] * k for k in counts], "caught": []}
            if not any(counts):
                self._submit_pair((a, b))
            for side, ((X, Y, ctl), k) in enumerate(zip(sides, counts)):
                for i in range(k):
                    label = f"{a} vs {b}" if ctl else f"{a}{RANDOM_INIT_SUFFIX} vs {b}{RANDOM_INIT_SUFFIX}"
                    ref = self._task(_block_task).remote(self.where, self.scoring, names, X, Y, i, ctl,
                                                         self._threads(), label)
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
        controls = None if csrc is None else {a: csrc[a], b: csrc[b]}
        ref = self._task(_pair_task).remote(
            self.where, self.scoring, a, b, names, {a: src[a], b: src[b]}, controls,
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
            self.moments[name] = task.remote(self.where, self.scoring, name, stack)
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
        from .scoring import log_read_back, raise_again

        frames = []
        for pair in self.setup.jobs:
            raise_again(self.frames[pair][1])
            frames.append(self.frames[pair][0])
        self.ctx.timings["measures"] = time.perf_counter() - self.t_scoring
        log_read_back(self.log, self.read_back, len(self.setup.jobs))
        return self.setup.frame(frames)
