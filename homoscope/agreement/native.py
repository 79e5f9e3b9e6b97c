"""Agreement of models' own language-modelling heads, where the models share a tokenizer.

Probes ask what a linear readout of a representation predicts; the native head asks what the model
itself predicts. Two models can only be compared token by token when they cut text into the same
tokens, so :func:`native_head_agreement` refuses models whose tokenizers differ.

- Masked LMs (``kind == 'encoder'``): in every text a share ``mask_rate`` of the non-special
  tokens (at least one) is replaced by the mask token, at positions drawn from
  ``numpy.random.default_rng([seed, text index])``, the same for every model. Each model predicts
  the masked tokens; its top-1 prediction at a position is right when it is the original token.
- Causal LMs (``kind == 'decoder'``): at every real position whose next token is not a special
  token, each model predicts the next token from the prefix.

Measures per pair of models, on the same positions (``unit = 'token'``):

- ``agreement``: share of positions with the same top-1 token; ``expected_independent`` is the
  chance agreement of two independent predictors with the models' own top-1 token shares
  (``sum_t p_a(t) p_b(t)``; per-token confusion rows cannot be estimated over a vocabulary);
- ``jsd``: mean Jensen-Shannon divergence (bits) of the two full next/masked-token distributions;
  ``expected_independent`` pairs model a's distribution at each position with model b's at
  another position of the same batch (positions shifted by one: a shuffled-rows control);
- ``error_overlap``: Jaccard index of the positions each model gets wrong; ``expected_independent``
  is ``e_a e_b / (e_a + e_b - e_a e_b)`` (errors independent at the overall rates).

Per model: ``native_top1_accuracy`` with a Wilson 95 % interval. Over all models: systemic failure
and homogenization over positions (Bommasani et al. 2022, groups = instances).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..extract.runner import check_loaded
from ..measures._validate import as_texts, describe
from .probes import wilson_interval
from .run import AGREEMENT_COLUMNS, SET_COLUMNS, failure_rows

TASKS = {"encoder": "masked-lm", "decoder": "next-token"}


@dataclass
class NativeHeadResult:
    """Native-head comparison of models sharing a tokenizer.

    Attributes:
        frames: ``{"accuracy", "agreement", "homogenization"}`` frames (columns as in
            :func:`homoscope.agreement.run_agreement`; ``task`` is ``masked-lm`` or ``next-token``,
            ``unit`` is ``token``, ``selection`` is ``head``).
        predictions: ``{model: int64 [P]}`` top-1 token ids at the P compared positions.
        targets: int64 ``[P]`` the true tokens at those positions.
        meta: JSON-able settings and counts.
    """

    frames: dict
    predictions: dict
    targets: np.ndarray
    meta: dict = field(default_factory=dict)


def _as_models(loaded_models) -> dict:
    """``{name: LoadedModel}`` from a mapping or a list of loaded models (named by ``info.name``).

    Raises a ValueError naming ``loaded_models`` for anything else, or an entry that is not a loaded model.
    """
    if isinstance(loaded_models, Mapping):
        out = {str(k): v for k, v in loaded_models.items()}
    elif isinstance(loaded_models, (list, tuple)):
        out = {}
        for lm in loaded_models:
            name = str(getattr(getattr(lm, "info", None), "name", f"model{len(out)}"))
            if name in out:
                raise ValueError(f"two models are named {name!r}; pass a {{name: model}} mapping")
            out[name] = lm
    else:
        raise ValueError("loaded_models must be a {name: LoadedModel} mapping or a list; "
                         f"got {describe(loaded_models)}")
    for name, lm in out.items():
        try:
            check_loaded(lm)
        except ValueError as err:
            raise ValueError(f"loaded_models[{name!r}]: {err}") from None
    return out


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list, list]:
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length,
                    return_special_tokens_mask=True)
    return enc["input_ids"], enc["special_tokens_mask"]


def tokenizer_difference(tok_a, tok_b, texts: Sequence[str] = (), max_length: int = 128) -> str | None:
    """Why two tokenizers cannot be compared token by token, or None when they act the same.

    They must have the same vocabulary (token -> id), the same mask token (if any), and turn each
    of ``texts`` into the same token ids and special-token marks.
    """
    if tok_a is tok_b:
        return None
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        only = len(set(va) ^ set(vb))
        return (f"vocabularies differ ({len(va)} vs {len(vb)} entries, {only} tokens in only one)"
                if only else "the same tokens map to different ids")
    if getattr(tok_a, "mask_token_id", None) != getattr(tok_b, "mask_token_id", None):
        return "mask tokens differ"
    if texts:
        ia, sa = _encode(tok_a, texts, max_length)
        ib, sb = _encode(tok_b, texts, max_length)
        for i, (x, y, u, v) in enumerate(zip(ia, ib, sa, sb)):
            if x != y or u != v:
                return f"text {i} is tokenized differently ({texts[i][:40]!r})"
    return None


def tokenizer_groups(loaded_models, texts: Sequence[str] = (), max_length: int = 128) -> list[list[str]]:
    """Partition models into groups that share a tokenizer and a head kind (encoder / decoder).

    Groups keep the input order; a model alone in its group cannot be compared natively.
    """
    models = _as_models(loaded_models)
    groups: list[list[str]] = []
    for name, lm in models.items():
        for g in groups:
            ref = models[g[0]]
            if ref.info.kind == lm.info.kind and tokenizer_difference(ref.tokenizer, lm.tokenizer, texts,
                                                                       max_length) is None:
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


def _check_head(name: str, lm, allow_random_head: bool) -> None:
    model = lm.model
    get = getattr(model, "get_output_embeddings", None)
    if get is None or get() is None:
        raise ValueError(
            f"model {name!r} has no language-modelling head; load it with "
            "homoscope.models.load_model(spec, head=True)"
        )
    if getattr(lm.info, "head_loaded", None) is False and not allow_random_head:
        raise ValueError(
            f"model {name!r}: the head weights are missing from its checkpoint and were randomly "
            "initialised, so its predictions mean nothing (pass allow_random_head=True to compare anyway)"
        )


def _positions(kind: str, ids: list, special: list, mask_rate: float, seed: int):
    """Per text: (input ids to feed, positions to read, target ids)."""
    out = []
    for i, (x, s) in enumerate(zip(ids, special)):
        x = list(x)
        if kind == "encoder":
            cand = [t for t, sp in enumerate(s) if not sp]
            if not cand:
                out.append((x, [], []))
                continue
            m = max(1, int(round(mask_rate * len(cand))))
            rng = np.random.default_rng([seed, i])
            pos = sorted(int(p) for p in rng.choice(cand, size=min(m, len(cand)), replace=False))
            out.append((x, pos, [x[p] for p in pos]))
        else:
            pos = [t for t in range(len(x) - 1) if not s[t + 1]]
            out.append((x, pos, [x[p + 1] for p in pos]))
    return out


def _jsd_rows(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """JSD in bits between rows of log-probabilities ``[P, V]`` (float64)."""
    lm = torch.logaddexp(la, lb) - math.log(2.0)
    pa, pb = la.exp(), lb.exp()
    kl_a = torch.where(pa > 0, pa * (la - lm), torch.zeros_like(pa)).sum(-1)
    kl_b = torch.where(pb > 0, pb * (lb - lm), torch.zeros_like(pb)).sum(-1)
    return (0.5 * (kl_a + kl_b)).clamp_min(0.0) / math.log(2.0)


def native_head_agreement(
    loaded_models,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    mask_rate: float = 0.15,
    seed: int = 0,
    batch_size: int = 8,
    permutations: int = 1000,
    allow_random_head: bool = False,
    progress: bool = False,
) -> NativeHeadResult:
    """Compare the top-1 predictions and predictive distributions of models' own LM heads.

    Args:
        loaded_models: ``{name: LoadedModel}`` (or a list, named by ``info.name``), at least two,
            all masked LMs or all causal LMs, loaded with their heads
            (``load_model(spec, head=True)`` or ``tiny_model(kind, seed, head=True)``).
        texts: the texts (n >= 1).
        max_length: tokens per text (special tokens included); longer texts are truncated.
        mask_rate: share of non-special tokens masked per text (masked LMs), in (0, 1].
        seed: mask-position seed and permutation seed.
        batch_size: texts per forward pass (memory grows with batch x length x vocabulary).
        permutations: permutation-null draws for homogenization over positions (0 = none).
        allow_random_head: compare even when a head was randomly initialised.
        progress: show a progress bar.

    Returns:
        :class:`NativeHeadResult` (measures and nulls in the module docstring).

    Raises:
        ValueError: ``loaded_models`` not a mapping or list of loaded models, or ``texts`` not a non-empty
            list of strings (each naming the argument); fewer than two models; a mix of masked and
            causal LMs; a model without a head
            (or with a random one); tokenizers that differ (the message names the two models and
            why, and points to probes for comparing them); a masked LM tokenizer without a mask
            token; no position to compare; bad ``mask_rate`` or ``batch_size``.
    """
    models = _as_models(loaded_models)
    names = list(models)
    kind, task = _check_models(models, texts, mask_rate, batch_size, allow_random_head)
    caps = [int(getattr(models[m].info, "max_length", max_length) or max_length) for m in names]
    max_length = int(min([max_length, *caps]))
    _check_tokenizers(models, list(texts), max_length)
    ref = models[names[0]].tokenizer
    ids, special = _encode(ref, list(texts), max_length)
    mask_id = getattr(ref, "mask_token_id", None)
    if kind == "encoder" and mask_id is None:
        raise ValueError(f"the tokenizer of {names[0]!r} has no mask token; a masked-LM comparison needs one")
    pad_id = ref.pad_token_id if ref.pad_token_id is not None else (ref.eos_token_id or 0)
    items = _positions(kind, ids, special, float(mask_rate), seed)
    order = sorted((i for i, it in enumerate(items) if it[1]), key=lambda i: (-len(items[i][0]), i))
    if not order:
        raise ValueError("no position to compare: every text is too short (or all special tokens)")
    heads = _run_heads(models, items, order, mask_id if kind == "encoder" else None, pad_id, batch_size,
                       f"native heads ({task})", progress)
    frames = _native_frames(models, heads, task, permutations, seed)
    meta = {"task": task, "models": names, "positions": heads.targets.size, "texts": len(order),
            "max_length": max_length, "mask_rate": float(mask_rate) if kind == "encoder" else None, "seed": seed,
            "vocab_sizes": sorted(heads.vocab_sizes)}
    return NativeHeadResult(frames=frames, predictions=heads.predictions, targets=heads.targets, meta=meta)


def _check_models(models: dict, texts, mask_rate, batch_size, allow_random_head) -> tuple[str, str]:
    """``(kind, task)`` of the models to compare; raises where they cannot be compared (see the caller)."""
    names = list(models)
    if len(names) < 2:
        raise ValueError(f"native_head_agreement needs at least two models; got {len(names)}")
    as_texts(texts)
    if not 0.0 < float(mask_rate) <= 1.0:
        raise ValueError(f"mask_rate={mask_rate!r} must lie in (0, 1]")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    kinds = {m: models[m].info.kind for m in names}
    if len(set(kinds.values())) != 1:
        raise ValueError(
            "native heads compare like with like: all masked LMs or all causal LMs; got "
            + ", ".join(f"{m} ({k})" for m, k in kinds.items())
        )
    kind = kinds[names[0]]
    if kind not in TASKS:
        raise ValueError(f"model kind {kind!r} has no native head task (masked LM or causal LM)")
    for m in names:
        _check_head(m, models[m], allow_random_head)
    return kind, TASKS[kind]


def _check_tokenizers(models: dict, texts: list, max_length: int) -> None:
    """Raise unless every model cuts ``texts`` into the same tokens as the first."""
    names = list(models)
    ref = models[names[0]].tokenizer
    for m in names[1:]:
        why = tokenizer_difference(ref, models[m].tokenizer, texts, max_length)
        if why is not None:
            raise ValueError(
                f"native-head agreement is refused for {names[0]!r} and {m!r}: their tokenizers differ "
                f"({why}), so their predictions are not over the same tokens; compare them through probes "
                "(run_agreement) instead"
            )


@dataclass
class _Heads:
    """What the heads predicted at the compared positions (see :func:`_run_heads`)."""

    predictions: dict  # {model: int64 [P]} top-1 token ids
    targets: np.ndarray  # int64 [P]
    jsd: dict  # {(a, b): mean JSD in bits}
    jsd_null: dict  # {(a, b): mean JSD against the positions shifted by one, or NaN}
    vocab_sizes: set


def _run_heads(models: dict, items: list, order: list, mask_id, pad_id: int, batch_size: int, desc: str,
               progress: bool) -> _Heads:
    """Run every model's head on the texts ``order`` (``batch_size`` at a time, the masked positions set to
    ``mask_id`` where given) with the probe runner's padding; top-1 predictions and JSD sums per pair."""
    from tqdm.auto import tqdm

    from ..extract.runner import model_inputs

    names = list(models)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    preds, targets, vocab = {m: [] for m in names}, [], set()
    jsd, null = dict.fromkeys(pairs, 0.0), dict.fromkeys(pairs, 0.0)
    null_count = 0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        batch = order[start : start + batch_size]
        rows, cols, xs = [], [], []
        for r, i in enumerate(batch):
            x, pos, tg = items[i]
            masked = set(pos) if mask_id is not None else set()
            xs.append([mask_id if p in masked else t for p, t in enumerate(x)])
            rows += [r] * len(pos)
            cols += pos
            targets += tg
        logp = _head_logprobs(models, model_inputs(xs, pad_id), rows, cols, vocab)
        for m in names:
            preds[m].append(logp[m].argmax(dim=-1).numpy().astype(np.int64))
        for a, b in pairs:
            jsd[(a, b)] += float(_jsd_rows(logp[a], logp[b]).sum())
            if len(rows) > 1:
                null[(a, b)] += float(_jsd_rows(logp[a], torch.roll(logp[b], 1, dims=0)).sum())
        null_count += len(rows) if len(rows) > 1 else 0
    P = len(targets)
    return _Heads({m: np.concatenate(preds[m]) for m in names}, np.asarray(targets, dtype=np.int64),
                  {p: v / P for p, v in jsd.items()},
                  {p: v / null_count if null_count else np.nan for p, v in null.items()}, vocab)


def _head_logprobs(models: dict, inputs: dict, rows: list, cols: list, vocab: set) -> dict:
    """``{model: float64 [P, V]}`` log-probabilities at positions ``(rows, cols)`` of one padded batch, over
    the vocabulary all heads share (the first ``V`` ids)."""
    logits = {}
    for m, lm in models.items():
        dev = next(lm.model.parameters()).device
        with torch.inference_mode():
            out = lm.model(**{k: v.to(dev) for k, v in inputs.items()}, return_dict=True)
        lg = out.logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]
        logits[m] = lg.to("cpu", torch.float64)
        vocab.add(lg.shape[-1])
    v = min(lg.shape[-1] for lg in logits.values())
    return {m: torch.log_softmax(lg[:, :v], dim=-1) for m, lg in logits.items()}


def _native_frames(models: dict, heads: _Heads, task: str, permutations: int, seed: int) -> dict:
    """The ``accuracy``, ``agreement`` and ``homogenization`` frames of :class:`NativeHeadResult`."""
    names, y, pred = list(models), heads.targets, heads.predictions
    P = y.size
    layer = {m: int(models[m].info.blocks) for m in names}
    width = {m: int(models[m].info.width) for m in names}
    acc_rows = []
    for m in names:
        correct = int(np.sum(pred[m] == y))
        lo, hi = wilson_interval(correct, P)
        acc_rows.append({"model": m, "layer": layer[m], "measure": "native_top1_accuracy", "value": correct / P,
                         "ci_low": lo, "ci_high": hi, "n": P, "d": width[m], "unit": "token", "task": task})
    pair_rows = []
    for a, b in heads.jsd:
        base = {"model_a": a, "layer_a": layer[a], "model_b": b, "layer_b": layer[b], "n": P, "d_a": width[a],
                "d_b": width[b], "unit": "token", "selection": "head", "task": task}
        pair_rows += [{**base, **r} for r in _pair_rows(pred[a], pred[b], y, heads.jsd[(a, b)],
                                                        heads.jsd_null[(a, b)])]
    agreement = pd.DataFrame(pair_rows).reindex(columns=AGREEMENT_COLUMNS)
    failures = np.stack([pred[m] != y for m in names])
    base = {"selection": "head", "models": json.dumps(names, ensure_ascii=False),
            "layers": json.dumps([layer[m] for m in names]), "k": len(names), "n": P, "unit": "token", "task": task}
    sets = pd.DataFrame(failure_rows(failures, base, ("instances",), y, permutations, seed, "native heads"))
    return {"accuracy": pd.DataFrame(acc_rows), "agreement": agreement, "homogenization": sets.reindex(columns=SET_COLUMNS)}


def _pair_rows(pa: np.ndarray, pb: np.ndarray, y: np.ndarray, jsd: float, jsd_null: float) -> list[dict]:
    """``agreement``, ``jsd`` and (where either model errs) ``error_overlap`` of two models' top-1 tokens,
    each with its ``expected_independent`` (see the module doc)."""
    P = y.size
    ua, ca = np.unique(pa, return_counts=True)
    ub, cb = np.unique(pb, return_counts=True)
    _, ia, ib = np.intersect1d(ua, ub, return_indices=True)
    out = [{"measure": "agreement", "value": float(np.mean(pa == pb)),
            "expected_independent": float(np.dot(ca[ia], cb[ib])) / (P * P)},
           {"measure": "jsd", "value": jsd, "expected_independent": jsd_null}]
    wa, wb = pa != y, pb != y
    either = float(np.mean(wa | wb))
    if either > 0:
        ea, eb = float(wa.mean()), float(wb.mean())
        out.append({"measure": "error_overlap", "value": float(np.mean(wa & wb)) / either,
                    "expected_independent": ea * eb / (ea + eb - ea * eb)})
    return out
