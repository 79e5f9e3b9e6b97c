"""``train_zoo``: hold out documents, train the shared tokenizer, train every family and seed, write the folder."""
from __future__ import annotations

import contextlib

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from .._spelling import typed
from .curves import plot_curves, write_curves
from .data import SPECIALS, TEMPLATE, hold_out, token_windows, train_tokenizer, unigram_entropy, write_heldout
from .families import FAMILIES, FAMILY, MATCH_TOLERANCE, choose_widths, family_config, parameter_counts
from .training import Recipe, heldout_losses, train_model

#: The default budget of non-embedding parameters per model (Transformers of width 128, an LSTM of width 158).
DEFAULT_PARAMS = 400_000
#: ``final_loss`` is the mean batch loss of this many last steps (fewer when training is shorter).
FINAL_STEPS = 10
#: The held-out loss reads at most this many windows of the held-out texts (in corpus order).
HELDOUT_WINDOWS = 256
HOLDOUT_RULE = ("whole documents in the order of the sha256 of their id (each text its own document where the "
                "corpus has no document ids), until at least the asked number of texts is held out")
NON_EMBEDDING_RULE = ("every parameter but the token, position and token-type embeddings and the output "
                      "projection onto the vocabulary (Kaplan et al. 2020)")


@dataclass
class Zoo:
    """What :func:`train_zoo` wrote: the folder, each model's folder by name (``gpt-s0``) and ``zoo.json``."""

    out: Path
    folders: dict[str, Path]
    summary: dict


#: The largest non-embedding parameter budget the zoo takes.
MAX_PARAMS = 10**9


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{typed(name, value)} must be an integer >= {minimum}")
    return value


def _families(value) -> tuple[str, ...]:
    """The families asked for (a sequence of names or one comma-separated string), checked."""
    names = [x.strip() for x in value.split(",")] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(x, str) and x for x in names):
        raise ValueError(f"{typed('families', value)} must name families: {', '.join(FAMILIES)}")
    unknown = [x for x in names if x not in FAMILIES]
    if unknown:
        raise ValueError(f"{typed('families', value)} names unknown family {unknown[0]!r}; "
                         f"choose from {', '.join(FAMILIES)}")
    if len(set(names)) < len(names):
        raise ValueError(f"{typed('families', value)} names a family twice")
    return tuple(names)


def _device(value) -> torch.device:
    """``value`` as a usable torch device (None: :func:`~homoscope.models.best_device`)."""
    from ..models import best_device

    if value is None or value == "auto":
        return best_device()
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{typed('device', value)} is not a device; give cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{typed('device', value)} is not a device to train on; give cpu, cuda or cuda:N")
    mps = getattr(torch.backends, "mps", None)
    cuda_ok = torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    if (dev.type == "cuda" and not cuda_ok) or (dev.type == "mps" and not (mps and mps.is_available())):
        raise ValueError(f"{typed('device', value)} is not available here; give cpu")
    return dev


def _out_folder(out) -> Path:
    """``out`` as a Path to a new or empty folder. Raises ValueError naming ``out`` otherwise."""
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise ValueError(f"{typed('out', out)} must be a folder path")
    path = Path(out).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "holds files" if path.is_dir() else "is a file"
        raise ValueError(f"{typed('out', out)} {what}; give a new or empty folder")
    return path


@contextlib.contextmanager
def _held(target: Path):
    """Hold the zoo's lock (``.<name>.zoo.lock`` beside it; filelock) and remove the staging folders a killed run
    left; a second run into the same folder is refused at once, in one line."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(target.parent / f".{target.name}.zoo.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{typed('out', str(target))}: another zoo is being trained into this folder") from None
    try:
        for stale in target.parent.glob(f".{target.name}.zoo-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        lock.release()


def _corpus(spec):
    """The whole corpus ``spec`` names: a :class:`~homoscope.corpora.Corpus`, ``bbc`` or a file (every text)."""
    from ..corpora import Corpus, load_corpus

    return spec if isinstance(spec, Corpus) else load_corpus(spec, sentences=None)


def _versions() -> dict:
    import tokenizers
    import transformers

    from .. import __version__

    return {"homoscope": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def train_zoo(out, *, corpus="bbc", seeds: int = 3, families=FAMILIES, steps: int = Recipe.steps,
              params: int = DEFAULT_PARAMS, blocks: int = 2, heads: int = 4, batch_size: int = Recipe.batch_size,
              seq_len: int = Recipe.seq_len, lr: float | None = None, holdout: int = 1000, device=None,
              progress: bool = True) -> Zoo:
    """Train matched small models of the three families of NLP foundation models into the folder ``out``.

    Families (:mod:`homoscope.zoo.families`): ``lstm`` (LSTM LM), ``gpt`` (GPT-2 causal Transformer LM),
    ``bert`` (BERT masked LM); each with ``blocks`` blocks and non-embedding parameters within 10% of
    ``params``; seeds ``0 .. seeds - 1`` each. Whole documents of ``corpus`` (``bbc``, a .txt/.jsonl/.csv path
    read whole, or a :class:`~homoscope.corpora.Corpus`) are held out until at least ``holdout`` texts are
    (``heldout.jsonl``); the rest trains one shared lowercasing byte-level BPE tokenizer of 4,096 units and
    every model, for ``steps`` steps of ``batch_size`` windows of ``seq_len`` tokens (:class:`Recipe`; peak
    learning rate ``lr``, or None for each family's own, :data:`~homoscope.zoo.families.FAMILY`), on
    ``device`` (None: cuda, then mps, then cpu). The same options and seed give bit-identical weights on the
    CPU (same torch version and thread count).

    Writes ``out/<family>-s<seed>/`` (a model folder :func:`homoscope.models.load_model` loads; recipe
    ``zoo-<family>``, the seed, parameter counts and losses in ``homoscope_model.json``), ``heldout.jsonl``,
    ``curves.csv`` (loss per step per model, nats per token), ``curves.png`` and ``zoo.json``. The folder is
    built beside ``out`` and moved there when complete. Returns a :class:`Zoo`.

    Raises:
        ValueError: naming the option: ``out`` holds files; a count below its minimum (``seeds``, ``steps``,
            ``blocks``, ``heads``, ``batch_size`` >= 1, ``seq_len`` >= 8, ``holdout`` >= 0); an unknown or
            repeated family; ``lr`` not a positive number; a device that is not available; a budget no width matches
            within 10%; a holdout that leaves no text to train on; a corpus error (:func:`load_corpus`).
    """
    seeds, steps, blocks, heads = (_int(n, v, 1) for n, v in
                                   (("seeds", seeds), ("steps", steps), ("blocks", blocks), ("heads", heads)))
    batch_size, seq_len = _int("batch_size", batch_size, 1), _int("seq_len", seq_len, 8)
    holdout, params = _int("holdout", holdout, 0), _int("params", params, 1)
    if params > MAX_PARAMS:
        raise ValueError(f"{typed('params', params)} must be at most {MAX_PARAMS:,}: the zoo trains small models")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
        raise ValueError(f"{typed('lr', lr)} must be a positive number")
    names, dev, target = _families(families), _device(device), _out_folder(out)
    widths = choose_widths(params, names, blocks=blocks, heads=heads)
    recipes = {f: Recipe(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=float(lr or FAMILY[f].lr))
               for f in names}
    text = _corpus(corpus)
    held, kept = hold_out(text, holdout)
    plan = _Plan(names, seeds, widths, params, blocks, heads, recipes, dev, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _held(target):
        staging = target.parent / f".{target.name}.zoo-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            zoo = _build(staging, text, held, kept, plan)
            if target.exists():
                target.rmdir()
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Zoo(out=target, folders={k: target / k for k in zoo["folders"]}, summary=zoo)


@dataclass(frozen=True)
class _Plan:
    families: tuple[str, ...]
    seeds: int
    widths: dict
    params: int
    blocks: int
    heads: int
    recipes: dict
    device: torch.device

    @property
    def recipe(self) -> Recipe:
        """The options all families share (the first family's recipe; only ``lr`` differs between them)."""
        return next(iter(self.recipes.values()))
    progress: bool


def _build(folder: Path, text, held: list[int], kept: list[int], plan: _Plan) -> dict:
    """Train the tokenizer and every model into ``folder``; write the curves and ``zoo.json``. Returns it."""
    start = time.perf_counter()
    train_texts = [text.texts[i] for i in kept]
    tokenizer = train_tokenizer(train_texts, max_length=plan.recipe.seq_len)
    windows = token_windows(tokenizer, train_texts, plan.recipe.seq_len)
    held_windows = None
    if held:
        write_heldout(text, held, folder / "heldout.jsonl")
        held_texts = [text.texts[i] for i in held]
        if sum(len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch(held_texts)) >= plan.recipe.seq_len:
            held_windows = token_windows(tokenizer, held_texts, plan.recipe.seq_len)[:HELDOUT_WINDOWS]
    entropy = {"next-token": unigram_entropy(windows[:, 1:]),
               "masked-token": unigram_entropy(windows, skip_below=len(SPECIALS))}
    context = _context(text, held, kept, tokenizer, windows, plan)
    models, curves, counts = [], {}, {}
    for family in plan.families:
        config = family_config(family, plan.widths[family], vocab_size=len(tokenizer), blocks=plan.blocks,
                               heads=plan.heads, positions=plan.recipe.seq_len, tokenizer=tokenizer)
        for seed in range(plan.seeds):
            name = f"{family}-s{seed}"
            trained = train_model(family, config, windows, seed, plan.recipes[family], device=plan.device,
                                  progress=plan.progress, label=name)
            if held_windows is not None:
                trained.heldout = heldout_losses(family, trained.model, held_windows,
                                                 batch_size=plan.recipe.batch_size)
            counts[family] = parameter_counts(trained.model, len(tokenizer))
            models.append(_save_model(folder / name, family, seed, trained, tokenizer, counts[family], context))
            curves[(family, seed)] = trained.losses
            _say(plan.progress, models[-1])
    write_curves(folder / "curves.csv", curves)
    title = (f"homoscope zoo: {plan.params:,} non-embedding parameters, {plan.blocks} blocks, "
             f"{plan.recipe.steps} steps of {plan.recipe.batch_size} x {plan.recipe.seq_len} tokens")
    plot_curves(folder / "curves.png", curves, entropy=entropy, title=title)
    summary = _summary(context, plan, counts, entropy, models, time.perf_counter() - start)
    (folder / "zoo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _held_text(losses: dict) -> str:
    """``", held-out 4.965"`` (and ``" (6.880 at [MASK] inputs)"`` for a masked LM), or '' without held-out texts."""
    text = "" if losses.get("heldout_loss") is None else f", held-out {losses['heldout_loss']:.3f}"
    at_mask = losses.get("heldout_loss_at_mask")
    return text + ("" if at_mask is None else f" ({at_mask:.3f} at [MASK] inputs)")


def _say(progress: bool, model: dict) -> None:
    if progress:
        from tqdm.auto import tqdm

        held = _held_text(model)
        tqdm.write(f"{model['folder']}: {model['steps']} steps in {model['seconds']:.0f} s; {model['objective']} "
                   f"loss {model['final_loss']:.3f} nats per token{held}")


def _context(text, held: list[int], kept: list[int], tokenizer, windows: torch.Tensor, plan: _Plan) -> dict:
    """What every model's marker and ``zoo.json`` say about the corpus, the held-out texts and the tokenizer."""
    docs = text.doc_ids if text.doc_ids is not None else text.ids
    license_note = text.meta.get("license") or f"the license of {text.source}"
    tok_json = tokenizer.backend_tokenizer.to_str()
    return {
        "corpus": {"name": text.name, "source": text.source, "texts": len(text), "documents": len(set(docs)),
                   "license": license_note},
        "holdout": {"rule": HOLDOUT_RULE, "texts": len(held), "documents": len({docs[i] for i in held}),
                    "file": "heldout.jsonl" if held else None, "train_texts": len(kept),
                    "train_documents": len({docs[i] for i in kept}),
                    "study": {"corpus": "heldout.jsonl", "label_column": "label" if text.labels else None,
                              "doc_column": "doc", "sentences": 0} if held else None},
        "tokenizer": {"model": "byte-level BPE", "lowercase": True, "vocab_size": len(tokenizer),
                      "specials": list(SPECIALS), "template": TEMPLATE, "model_max_length": plan.recipe.seq_len,
                      "trained_on": "the training texts (held-out documents excluded)",
                      "sha256": hashlib.sha256(tok_json.encode("utf-8")).hexdigest()},
        "training": {**dataclasses.asdict(plan.recipe), "lr": {f: r.lr for f, r in plan.recipes.items()},
                     "optimizer": "AdamW", "schedule": "linear warmup, cosine decay",
                     "train_tokens": windows.numel(), "windows": len(windows),
                     "epochs": round(plan.recipe.steps * plan.recipe.batch_size / len(windows), 3),
                     "device": str(plan.device)},
    }


def _save_model(folder: Path, family: str, seed: int, trained, tokenizer, counts: tuple[int, int],
                context: dict) -> dict:
    """Save one trained model as a model folder with its ``homoscope_model.json``; return its zoo.json entry."""
    from ..models import save_module
    from ..models.registry import MARKER_FILE, MARKER_FORMAT

    model, fam, train = trained.model, FAMILY[family], context["training"]
    total, non_embedding = counts
    final = sum(trained.losses[-FINAL_STEPS:]) / len(trained.losses[-FINAL_STEPS:])
    width = model.config.hidden_size
    held = _held_text(trained.heldout)
    notes = (f"{fam.description} ({model.config.num_hidden_layers} blocks, width "
             f"{width}) trained by homoscope zoo, recipe zoo-{family}, seed {seed}: {train['steps']} steps of "
             f"{train['batch_size']} x {train['seq_len']} tokens of {context['corpus']['source']} (held-out "
             f"documents excluded); {total:,} parameters, {non_embedding:,} non-embedding; {fam.objective} loss "
             f"{final:.3f} nats per token{held}. License: same as the corpus ({context['corpus']['license']}).")
    if family == "bert":
        notes += (" Its pooler is not trained (no next-sentence objective) and not saved: loaded as a BertModel it "
                  "is initialised at random; no layer homoscope measures passes through it.")
    marker = {"format": MARKER_FORMAT, "name": folder.name, "recipe": f"zoo-{family}", "seed": seed,
              "architecture": model.config.model_type, "kind": fam.kind, "blocks": model.config.num_hidden_layers,
              "width": width, "license": "same as the corpus", "corpus_license": context["corpus"]["license"],
              "notes": notes, "params": total, "non_embedding_params": non_embedding, "steps": train["steps"],
              "final_loss": final, "heldout_loss": None, **trained.heldout,
              "objective": fam.objective,
              "loss_unit": "nats per token", "tokenizer_sha256": context["tokenizer"]["sha256"],
              "recipe_options": {**{k: train[k] for k in dataclasses.asdict(Recipe())}, "lr": train["lr"][family]},
              "versions": _versions()}
    if family == "lstm":
        save_module(model, tokenizer, folder, marker)
    else:
        from ..models.installer import _quiet_transformers

        with _quiet_transformers(False):  # the zoo's own progress only
            model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return {"folder": folder.name, "family": family, "seed": seed, "kind": fam.kind, "recipe": f"zoo-{family}",
            "objective": fam.objective, "steps": train["steps"], "final_loss": final,
            "heldout_loss": None, **trained.heldout, "seconds": round(trained.seconds, 1)}


def _summary(context: dict, plan: _Plan, counts: dict, entropy: dict, models: list, seconds: float) -> dict:
    """The contents of ``zoo.json``."""
    families = {}
    for family in plan.families:
        total, non_embedding = counts[family]
        families[family] = {"description": FAMILY[family].description, "kind": FAMILY[family].kind,
                            "objective": FAMILY[family].objective, "width": plan.widths[family],
                            "blocks": plan.blocks, "heads": None if family == "lstm" else plan.heads,
                            "params": total, "non_embedding_params": non_embedding,
                            "embedding_params": total - non_embedding,
                            "budget_miss": round((non_embedding - plan.params) / plan.params, 4)}
    return {"format": 1, **context,
            "budget": {"non_embedding_params": plan.params, "tolerance": MATCH_TOLERANCE, "blocks": plan.blocks,
                       "heads": plan.heads, "non_embedding": NON_EMBEDDING_RULE},
            "families": families,
            "loss": {"unit": "nats per token (natural-log cross-entropy)",
                     "final_loss": f"mean batch loss of the last {FINAL_STEPS} steps",
                     "heldout_loss": f"on up to {HELDOUT_WINDOWS} windows of the held-out texts; the masked LM on "
                                     "masks drawn once for every seed",
                     "heldout_loss_at_mask": "the masked LM's held-out loss at the chosen tokens whose input is "
                                             "[MASK] (80% of them), which only the context can predict",
                     "unigram_entropy": entropy},
            "models": models, "folders": [m["folder"] for m in models], "seconds": round(seconds, 1),
            "versions": _versions()}
