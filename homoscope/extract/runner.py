"""The probe runner: texts in, pooled hidden states of every layer out.

For one loaded model and a list of texts, :func:`extract` returns a float32 tensor
``[L+1, n, d]``: layer 0 is the embedding output, layer i the output of block i, as
``output_hidden_states=True`` returns them. Rows follow the order of the texts.

Padding never leaks into the statistics:

* texts are tokenized once, sorted by length and batched under a token budget;
* every batch is padded on the right by default, so real tokens keep their positions, and the
  attention mask is always passed; with ``padding_side="left"`` position ids are rebuilt from
  the mask for models whose forward accepts them;
* pooling weights are zero on pad tokens (and, for ``mean``, on special tokens).

So a text's pooled vector is the same alone or batched with longer texts (to float32
round-off), which ``tests/test_extract.py`` checks for BERT, GPT-2 and Llama configs.

A text may also yield several rows: :func:`extract_rows` takes, per text, groups of token
positions (one group per row: the tokens of a word, or a single token) and pools each group, so
word- and token-level representations go through the same batching, padding and finite checks
(see :mod:`homoscope.extract.words`).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .._spelling import typed
from ..measures._validate import as_texts, describe

POOLINGS = ("mean", "first", "last", "cls")
PADDING_SIDES = ("right", "left")


class ExtractionMemoryError(RuntimeError):
    """A model ran out of memory even with one text per batch."""


class NonFiniteHiddenStateError(ValueError):
    """A model produced NaN or inf in a hidden state of a real token."""


@dataclass
class ExtractStats:
    """What happened during one extraction (goes into the manifest).

    Attributes: n texts, number truncated to ``max_length``, number of batches, real tokens
    seen, batch-size reductions after out-of-memory errors, wall seconds, rows written (n for
    sentences; words or tokens for the other units), texts that went through the model (texts
    with no planned row are skipped), planned words this model's tokenizer gave no token
    (word unit; dropped for every model alike by the study).
    """

    n: int = 0
    truncated: int = 0
    batches: int = 0
    tokens: int = 0
    oom_retries: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    rows: int = 0
    texts_run: int = 0
    dropped_words: int = 0


def _check_options(pooling: str, padding_side: str, max_length: int, batch_tokens: int) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side={padding_side!r} is not one of {', '.join(PADDING_SIDES)}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2")
    if not isinstance(batch_tokens, int) or batch_tokens < max_length:
        raise ValueError(
            f"batch_tokens={batch_tokens!r} must be an integer >= max_length ({max_length}) "
            "so that at least one text fits in a batch"
        )


def _model_max_length(model, tokenizer) -> int | None:
    cfg = getattr(model, "config", None)
    m = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
    if m is not None and getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "mpnet", "camembert"):
        m -= 2  # these offset positions by padding_idx + 1
    tm = getattr(tokenizer, "model_max_length", None)
    if tm is not None and tm < 1_000_000:
        m = tm if m is None else min(m, tm)
    return m


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]], int]:
    """Tokenize texts with the model's special tokens, truncated to ``max_length`` tokens.

    Returns (input_ids, special_tokens_mask, n_truncated): ragged lists, one per text.
    Raises ValueError for a tokenizer without a fast backend (no offsets, no special mask).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; homoscope needs a "
            "tokenizers-backed (fast) tokenizer"
        )
    texts = list(texts)
    # one untruncated pass; only the texts over max_length are tokenized again with truncation
    # (a text that fits comes out the same either way). verbose=False: no text runs untruncated, so
    # transformers' warning that one "will result in indexing errors" would mislead
    enc = tokenizer(texts, add_special_tokens=True, truncation=False, return_special_tokens_mask=True, verbose=False)
    ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    long_ = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long_:
        cut = tokenizer([texts[i] for i in long_], add_special_tokens=True, truncation=True,
                        max_length=max_length, return_special_tokens_mask=True)
        for j, i in enumerate(long_):
            ids[i], special[i] = cut["input_ids"][j], cut["special_tokens_mask"][j]
    return ids, special, len(long_)


def make_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group text indices into batches under a padded-token budget.

    Texts are sorted by length (longest first, ties by index, so batching is deterministic);
    a batch holds as many texts as fit with ``len(batch) * longest <= batch_tokens``.
    Returns lists of original indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if cur and (len(cur) + 1) * new_longest > batch_tokens:
            batches.append(cur)
            cur, longest = [], 0
            new_longest = lengths[i]
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


def pool_weights(attention_mask: torch.Tensor, special_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooling weights ``[b, t]`` (float32, rows sum to 1) from masks ``[b, t]`` (1 = real / special).

    ``mean``: uniform over real non-special tokens (all real tokens if a text has only special
    ones); ``first``: the first real non-special token; ``last``: the last real non-special
    token; ``cls``: the first real token, which must be a special token (CLS/BOS).
    Raises ValueError for ``cls`` when the tokenizer adds no special token in front.
    """
    real = attention_mask.bool()
    content = real & ~special_mask.bool()
    empty = ~content.any(dim=1)
    if empty.any():
        content = torch.where(empty[:, None], real, content)
    t = attention_mask.shape[1]
    pos = torch.arange(t, device=attention_mask.device).expand_as(attention_mask)
    if pooling == "mean":
        w = content.float()
    elif pooling in ("first", "cls"):
        src = content if pooling == "first" else real
        big = torch.where(src, pos, torch.full_like(pos, t))
        idx = big.min(dim=1).values
        if pooling == "cls":
            is_special = special_mask.gather(1, idx[:, None]).squeeze(1).bool()
            if not bool(is_special.all()):
                raise ValueError(
                    "pooling='cls' needs a special token (CLS/BOS) at the start of every text, "
                    "but this tokenizer adds none; use pooling='first' or 'mean'"
                )
        w = torch.nn.functional.one_hot(idx, t).float()
    elif pooling == "last":
        small = torch.where(content, pos, torch.full_like(pos, -1))
        idx = small.max(dim=1).values
        w = torch.nn.functional.one_hot(idx, t).float()
    else:  # pragma: no cover - checked earlier
        raise ValueError(f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
    return w / w.sum(dim=1, keepdim=True)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _accepts_position_ids(model) -> bool:
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def effective_max_length(loaded, max_length: int) -> int:
    """``max_length`` capped at the model's own limit (positions and tokenizer), as the runner uses it."""
    cap = _model_max_length(loaded.model, loaded.tokenizer)
    if cap is not None and max_length > cap:
        return int(cap)
    return max_length


def check_loaded(loaded) -> None:
    """Raise a ValueError unless ``loaded`` is a loaded model (``.model`` and ``.tokenizer``, as
    ``homoscope.models.load_model`` returns)."""
    if not (hasattr(loaded, "model") and hasattr(loaded, "tokenizer")):
        raise ValueError(f"loaded must be a loaded model (homoscope.models.load_model(spec)); got {describe(loaded)}")


def _model_name(loaded) -> str:
    return getattr(getattr(loaded, "info", None), "name", type(loaded.model).__name__)


def extract(
    loaded,
    texts: list[str],
    *,
    pooling: str = "mean",
    max_length: int = 128,
    batch_tokens: int = 8192,
    padding_side: str = "right",
    progress: bool = True,
    stats: ExtractStats | None = None,
    include_special: bool = False,
) -> torch.Tensor:
    """Pooled hidden states of every layer for a list of texts.

    Args:
        loaded: a ``homoscope.models.LoadedModel`` (``.model``, ``.tokenizer``, ``.info.name``).
        texts: n strings.
        pooling: ``mean`` (default; masked mean over real, non-special tokens), ``first``,
            ``last`` (last real non-special token: the usual choice for decoders) or ``cls``.
        max_length: texts longer than this many tokens (special tokens included) are truncated;
            the count is in ``stats.truncated``. Capped at the model's maximum length.
        batch_tokens: padded tokens per forward pass (batch size x longest text); halved
            automatically after an out-of-memory error, down to one text per batch.
        padding_side: ``right`` (default) or ``left``; with ``left``, position ids are rebuilt from
            the attention mask so real tokens keep their positions.
        progress: show a tqdm bar (texts/s) named after the model.
        stats: an :class:`ExtractStats` to fill in.
        include_special: pool over special positions (BOS/CLS/SEP) too with ``mean``, ``first``
            and ``last`` (default False: they are excluded; ``cls`` always takes the first one).

    Returns:
        float32 CPU tensor ``[L+1, n, d]``: layer 0 = embeddings, layer i = block i.

    Raises:
        ValueError: ``loaded`` not a loaded model, ``texts`` not a non-empty list of strings (a single
            string, None, a non-string entry: the message names ``texts`` and the position), bad
            options, a model that returns no hidden states.
        NonFiniteHiddenStateError: NaN/inf in a real token's hidden state; names layer and count.
        ExtractionMemoryError (a RuntimeError): out of memory even at one text per batch.
    """
    import time

    check_loaded(loaded)
    texts = as_texts(texts)
    max_length = effective_max_length(loaded, max_length)
    _check_options(pooling, padding_side, max_length, batch_tokens)
    stats = stats if stats is not None else ExtractStats()
    t0 = time.perf_counter()

    ids, special, n_trunc = tokenize(loaded.tokenizer, texts, max_length)
    stats.n, stats.truncated = len(texts), n_trunc
    check_nonempty(ids, texts, _model_name(loaded))
    if pooling == "cls" and not all(s and s[0] for s in special):
        raise ValueError(f"model {_model_name(loaded)!r}: {typed('pooling', 'cls')} needs a special token (CLS/BOS) "
                         f"at the start of every text, but its tokenizer adds none; use {typed('pooling', 'first')} "
                         f"or {typed('pooling', 'mean')}")

    def weights(batch, attn, spec):
        if include_special and pooling != "cls":
            spec = torch.zeros_like(spec)
        return pool_weights(attn, spec, pooling)[:, None, :]

    out = _run_batches(loaded, ids, special, list(range(len(texts))), [1] * len(texts), weights,
                       batch_tokens=batch_tokens, padding_side=padding_side, progress=progress, stats=stats)
    stats.rows = len(texts)
    stats.seconds = time.perf_counter() - t0
    return out


def check_nonempty(ids: list[list[int]], texts: list[str], name: str) -> None:
    """Raise ValueError naming the first text that tokenizes to no token at all."""
    lengths = [len(x) for x in ids]
    if lengths and min(lengths) == 0:
        bad = lengths.index(0)
        raise ValueError(f"text {bad} tokenizes to nothing with model {name!r}: {texts[bad][:60]!r}")


def group_weights(groups: list[list[int]], length: int, pooling: str) -> torch.Tensor:
    """Pooling weights ``[rows, length]`` (float32, rows sum to 1) of token groups of one text.

    ``groups[r]`` holds the (ascending) token positions of row r; ``mean`` spreads the weight
    evenly over them, ``first`` / ``last`` put it all on the first / last one.
    Raises ValueError for an empty group, a position outside ``[0, length)`` or another pooling.
    """
    if pooling not in ("mean", "first", "last"):
        raise ValueError(f"pooling={pooling!r} for word or token rows must be one of mean, first, last")
    w = torch.zeros(len(groups), length, dtype=torch.float32)
    for r, g in enumerate(groups):
        if not g:
            raise ValueError(f"row {r} has no token to pool")
        if min(g) < 0 or max(g) >= length:
            raise ValueError(f"row {r} has token positions {g} outside a text of {length} tokens")
        if pooling == "mean":
            w[r, g] = 1.0 / len(g)
        else:
            w[r, g[0] if pooling == "first" else g[-1]] = 1.0
    return w


def extract_rows(
    loaded,
    ids: list[list[int]],
    special: list[list[int]],
    groups: list[list[list[int]]],
    *,
    pooling: str = "mean",
    batch_tokens: int = 8192,
    padding_side: str = "right",
    progress: bool = True,
    stats: ExtractStats | None = None,
) -> torch.Tensor:
    """Hidden states of every layer pooled over groups of tokens: several rows per text.

    Args:
        loaded: a ``homoscope.models.LoadedModel``.
        ids, special: per text, the token ids (special tokens included, already truncated) and the
            special-tokens mask, as :func:`tokenize` returns them.
        groups: per text, one list of token positions (indices into ``ids[i]``) per row; a text
            with no group is not run through the model.
        pooling: ``mean`` (default), ``first`` or ``last`` over each group's tokens.
        batch_tokens, padding_side, progress, stats: as for :func:`extract`.

    Returns:
        float32 CPU tensor ``[L+1, R, d]`` with ``R = sum(len(g) for g in groups)``: the rows of
        text 0 in group order, then those of text 1, and so on.

    Raises:
        ValueError: lists of different lengths, no row at all, an empty group or a position
            outside its text, bad options, a model that returns no hidden states.
        NonFiniteHiddenStateError, RuntimeError: as for :func:`extract`.
    """
    import time

    if not (len(ids) == len(special) == len(groups)):
        raise ValueError(
            f"ids, special and groups must have one entry per text; got {len(ids)}, {len(special)}, {len(groups)}")
    counts = [len(g) for g in groups]
    if sum(counts) == 0:
        raise ValueError("groups holds no row: nothing to extract")
    if pooling not in ("mean", "first", "last"):
        raise ValueError(f"pooling={pooling!r} for word or token rows must be one of mean, first, last")
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side={padding_side!r} is not one of {', '.join(PADDING_SIDES)}")
    longest = max(len(x) for x in ids)
    if not isinstance(batch_tokens, int) or batch_tokens < longest:
        raise ValueError(
            f"batch_tokens={batch_tokens!r} must be an integer >= the longest text ({longest} tokens) "
            "so that every text fits in a batch"
        )
    stats = stats if stats is not None else ExtractStats()
    t0 = time.perf_counter()
    todo = [i for i in range(len(ids)) if counts[i]]
    texts_w = {i: group_weights(groups[i], len(ids[i]), pooling) for i in todo}

    def weights(batch, attn, spec):
        b, t = attn.shape
        r = max(counts[i] for i in batch)
        w = torch.zeros(b, r, t, dtype=torch.float32)
        for j, i in enumerate(batch):
            k = len(ids[i])
            off = 0 if padding_side == "right" else t - k
            w[j, : counts[i], off : off + k] = texts_w[i]
        return w

    out = _run_batches(loaded, ids, special, todo, counts, weights, batch_tokens=batch_tokens,
                       padding_side=padding_side, progress=progress, stats=stats)
    stats.rows = sum(counts)
    stats.seconds += time.perf_counter() - t0
    return out


def _run_batches(loaded, ids, special, todo, counts, weights, *, batch_tokens, padding_side, progress, stats,
                 batches=None):
    """Run the texts ``todo`` through the model in length-sorted batches; rows of text i go to the
    ``counts[i]`` consecutive output rows after those of the texts before it.

    ``batches`` (lists of text indices covering ``todo``) replaces the length-sorted batches; the
    extraction benchmark uses it for its unsorted loader."""
    model, tokenizer = loaded.model, loaded.tokenizer
    name = _model_name(loaded)
    offsets = [0] * len(counts)
    acc = 0
    for i, c in enumerate(counts):
        offsets[i] = acc
        acc += c
    total = acc
    lengths = [len(x) for x in ids]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    pass_positions = padding_side == "left" and _accepts_position_ids(model)
    if padding_side == "left" and not pass_positions and _absolute_positions(model):
        padding_side = "right"  # left pads would shift every position; right pads are masked out alike

    out: torch.Tensor | None = None
    if batches is None:
        queue = [[todo[j] for j in b] for b in make_batches([lengths[i] for i in todo], batch_tokens)]
    else:
        queue = [list(b) for b in batches]
    bar = tqdm(total=len(todo), desc=f"extract {name}", unit="text", disable=not progress, leave=False)
    try:
        while queue:
            batch = queue.pop(0)
            try:
                pooled = _forward_batch(
                    model, ids, special, batch, pad_id, padding_side, pass_positions, weights, device, name
                )
            except Exception as err:  # noqa: BLE001 - only OOM is handled
                if not _is_oom(err):
                    raise
                if len(batch) == 1:
                    raise ExtractionMemoryError(
                        f"model {name!r} ran out of memory on a single text of {lengths[batch[0]]} tokens; "
                        "lower max_length or use a smaller dtype"
                    ) from err
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                stats.oom_retries += 1
                half = len(batch) // 2
                queue[:0] = [batch[:half], batch[half:]]
                continue
            if out is None:
                out = torch.empty(pooled.shape[0], total, pooled.shape[3], dtype=torch.float32)
            n_rows = [counts[i] for i in batch]
            dest = torch.tensor([offsets[i] + k for i, c in zip(batch, n_rows) for k in range(c)], dtype=torch.long)
            if pooled.shape[2] == 1:
                src = pooled[:, :, 0, :]
            else:
                keep = torch.arange(pooled.shape[2])[None, :] < torch.tensor(n_rows)[:, None]
                src = pooled[:, keep, :]  # [L+1, rows, d], rows of batch[0] first
            out.index_copy_(1, dest, src)
            stats.batches += 1
            stats.tokens += sum(lengths[i] for i in batch)
            stats.texts_run += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    assert out is not None
    return out


def _forward_batch(model, ids, special, batch, pad_id, padding_side, pass_positions, weights, device, name):
    """One padded forward pass; returns ``[L+1, b, r, d]`` (float32, on the CPU) pooled with
    ``weights(batch, attn, spec)`` (``[b, r, t]``, zero on pad positions).

    Raises NonFiniteHiddenStateError when a real token's hidden state holds NaN or inf."""
    inputs = model_inputs([ids[i] for i in batch], pad_id, padding_side=padding_side, pass_positions=pass_positions)
    attn = inputs["attention_mask"]
    spec = pad_rows([special[i] for i in batch], 0, padding_side)
    kwargs = {k: v.to(device) for k, v in inputs.items()}
    with torch.inference_mode():
        output = model(**kwargs, output_hidden_states=True, return_dict=True)
        hidden = getattr(output, "hidden_states", None)
        if hidden is None:
            raise ValueError(
                f"model {name!r} returned no hidden states with output_hidden_states=True; "
                "homoscope needs a model whose forward returns all layers"
            )
        w = weights(batch, attn, spec)
        r = w.shape[1]
        # one extra row per text with weight 1 on every real token: its pooled value is finite
        # exactly when every real token's hidden state is (IEEE: NaN/inf never cancel to a finite
        # sum), so one finite check on the small pooled tensor replaces a pass over all states
        w_all = torch.cat([w, attn[:, None, :].to(w.dtype)], dim=1).to(device)
        pooled = _pool_layers(hidden, w_all)
        # one reduction: the sum is finite when every pooled value is (a finite sum could only
        # overflow for values near 1e31; that case just takes the exact path below)
        if not math.isfinite(float(pooled.sum())):
            real = attn.bool().to(device)
            for li, h in enumerate(hidden):
                bad = int((~torch.isfinite(h[real])).sum())
                if bad:
                    raise NonFiniteHiddenStateError(
                        f"model {name!r} produced {bad} non-finite values (NaN/inf) in layer {li} "
                        f"(0 = embeddings) on real tokens; "
                        + (f"try dtype float32 instead of {str(h.dtype).replace('torch.', '')}"
                           if h.dtype in (torch.float16, torch.bfloat16) else "its weights or its code are broken")
                    )
            # finite on every real token: the NaN/inf sat on pad positions (weight 0, but
            # 0 * NaN = NaN); pool again with the pads zeroed so they cannot leak
            pad = ~real[:, :, None]
            pooled = _pool_layers([h.masked_fill(pad, 0) for h in hidden], w_all)
        return pooled[:, :, :r, :].cpu()


def pad_rows(rows: Sequence[Sequence[int]], fill: int, padding_side: str = "right") -> torch.Tensor:
    """Ragged integer rows as one int64 ``[b, t]`` tensor (``t`` the longest row), padded with ``fill`` on
    ``padding_side`` (``"right"`` or ``"left"``)."""
    t = max(len(x) for x in rows)
    if padding_side == "right":
        return torch.tensor([list(x) + [fill] * (t - len(x)) for x in rows], dtype=torch.long)
    return torch.tensor([[fill] * (t - len(x)) + list(x) for x in rows], dtype=torch.long)


def _absolute_positions(model) -> bool:
    """Whether the model adds learned absolute position embeddings (BART's encoder), which left padding would
    shift when position ids cannot be passed, or says it takes right padding only (``right_padding_only``)."""
    if getattr(model, "right_padding_only", False):
        return True
    return any("embed_positions" in n or "position_embeddings" in n for n, _ in model.named_modules())


def model_inputs(rows: Sequence[Sequence[int]], pad_id: int, *, padding_side: str = "right",
                 pass_positions: bool = False) -> dict[str, torch.Tensor]:
    """The padded forward-pass inputs of token-id rows: ``input_ids`` and ``attention_mask`` (int64
    ``[b, t]``, on the CPU), and with ``pass_positions`` the ``position_ids`` that count real tokens
    only (so left padding does not shift a decoder's positions)."""
    input_ids = pad_rows(rows, pad_id, padding_side)
    attn = pad_rows([[1] * len(x) for x in rows], 0, padding_side)
    out = {"input_ids": input_ids, "attention_mask": attn}
    if pass_positions:
        out["position_ids"] = (attn.cumsum(dim=1) - 1).clamp(min=0)
    return out


def _pool_layers(hidden, w: torch.Tensor) -> torch.Tensor:
    """``[L+1, b, r, d]`` float32: ``w [b, r, t] @ h [b, t, d]`` for every layer, one ``bmm`` per
    layer written straight into the output (no stacked copy of the hidden states)."""
    first = hidden[0]
    out = torch.empty(len(hidden), w.shape[0], w.shape[1], first.shape[-1], dtype=torch.float32, device=w.device)
    for li, h in enumerate(hidden):
        torch.bmm(w, h if h.dtype == torch.float32 else h.float(), out=out[li])
    return out


def suggested_batch_tokens(device: torch.device | str) -> int:
    """A padded-token budget per forward pass: 65,536 on a GPU, 8,192 on MPS, 1,024 on a CPU (where larger batches
    leave the caches: smollm2-135m on 300 BBC sentences runs 1.6x faster at 1,024 than at 8,192 on 2 threads)."""
    kind = torch.device(device).type
    return 65_536 if kind == "cuda" else 8192 if kind == "mps" else 1024
