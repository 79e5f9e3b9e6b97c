"""The zoo's text: held-out documents, the one shared tokenizer, training windows, batch order and masking.

Every function here is deterministic: the held-out documents follow from the document ids alone, the
tokenizer from the training text alone, the batch order and the masks from a seeded ``torch.Generator``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .._spelling import typed

#: The tokenizer's special units, in id order: pad 0, unk 1, cls 2, sep 3, mask 4.
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Every text is encoded as ``[CLS] text [SEP]`` for all three families, so token rows line up.
TEMPLATE = "[CLS] $A [SEP]"
#: Units of the shared byte-level BPE vocabulary (specials and the 256 bytes included).
VOCAB_SIZE = 4096
#: Share of a masked LM's real tokens chosen for prediction, and the 80/10/10 rule (Devlin et al. 2019).
MASK_RATE, MASK_KEEP_RULE = 0.15, (0.8, 0.1, 0.1)
#: The label of tokens a loss ignores (``torch.nn.functional.cross_entropy``'s default ``ignore_index``).
IGNORE = -100


def document_hash(doc: str) -> str:
    """The sha256 hex of a document id (UTF-8): the order in which documents are held out."""
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def hold_out(corpus, sentences: int) -> tuple[list[int], list[int]]:
    """Split ``corpus`` by whole documents: ``(held, kept)`` text indices, each in corpus order.

    Documents (``corpus.doc_ids``; each text its own document where the corpus has none) are taken in the
    order of :func:`document_hash` of their id until at least ``sentences`` texts are held out; 0 holds out
    nothing. The rule reads no seed, so every model of every zoo on the same corpus holds out the same texts.

    Raises ValueError (naming ``holdout``) when holding out that many texts would leave none to train on.
    """
    docs = corpus.doc_ids if corpus.doc_ids is not None else corpus.ids
    by_doc: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        by_doc.setdefault(d, []).append(i)
    chosen: set[int] = set()
    for d in sorted(by_doc, key=lambda d: (document_hash(d), d)):
        if len(chosen) >= sentences:
            break
        chosen.update(by_doc[d])
    if len(chosen) == len(docs):
        raise ValueError(f"{typed('holdout', sentences)} holds out every text of the corpus ({len(docs)} texts in "
                         f"{len(by_doc)} documents); hold out fewer so that some are left to train on")
    return sorted(chosen), [i for i in range(len(docs)) if i not in chosen]


def write_heldout(corpus, rows: list[int], path: Path) -> None:
    """Write texts ``rows`` of ``corpus`` as JSON lines: ``text``, ``label`` (where the corpus has labels),
    ``doc`` (the document id; the text id where the corpus has none) and ``id`` (the text's corpus id).

    A study reads it with ``corpus = "heldout.jsonl"``, ``label_column = "label"``, ``doc_column = "doc"``.
    """
    docs = corpus.doc_ids if corpus.doc_ids is not None else corpus.ids
    with open(path, "w", encoding="utf-8") as f:
        for i in rows:
            record = {"text": corpus.texts[i]}
            if corpus.labels is not None:
                record["label"] = corpus.labels[i]
            record.update({"doc": docs[i], "id": corpus.ids[i]})
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def train_tokenizer(texts: list[str], *, vocab_size: int = VOCAB_SIZE, max_length: int = 64):
    """The zoo's one tokenizer: lowercasing byte-level BPE trained on ``texts`` with ``tokenizers``.

    GPT-2's byte-level BPE (Radford et al. 2019; every text is bytes, so no unit is unknown), with a space
    before each text so that its first word is split as every other word, after NFC and lowercasing; up to
    ``vocab_size`` units, of which the first five are :data:`SPECIALS` and the next 256 the bytes. Every text
    becomes ``[CLS] text [SEP]`` (:data:`TEMPLATE`) for every family. ``model_max_length`` is ``max_length``
    (the models' positions), so a study cuts every zoo model's texts at the same unit. Inputs are ``input_ids``
    and ``attention_mask`` only (no token type ids: a GPT-2 would read them as tokens).

    Byte-level BPE rather than WordPiece because its training is deterministic: ``tokenizers``' WordPiece
    trainer numbers its ``##`` units in hash order, so equal merge counts break ties differently from run to
    run. The same texts give the same ``tokenizer.json``.

    Returns a ``transformers.PreTrainedTokenizerFast`` (pad ``[PAD]``, unk ``[UNK]``, mask ``[MASK]``, cls
    and bos ``[CLS]``, sep and eos ``[SEP]``).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    marks = [("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=TEMPLATE, pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=marks)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]", model_max_length=max_length,
        padding_side="right", model_input_names=["input_ids", "attention_mask"])


def token_windows(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """int64 ``[n_windows, seq_len]``: the texts encoded (``[CLS] text [SEP]`` each), concatenated in their
    order and cut into consecutive windows of ``seq_len`` tokens; the tail shorter than a window is dropped.

    Texts are packed across their boundaries (as RoBERTa's FULL-SENTENCES input), so no token is a pad.
    Raises ValueError (naming ``seq_len``) when the texts hold fewer than ``seq_len`` tokens.
    """
    encoded = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=True)
    stream = torch.tensor([i for e in encoded for i in e.ids], dtype=torch.long)
    n = stream.numel() // seq_len
    if n == 0:
        raise ValueError(f"the training text holds {stream.numel()} tokens, fewer than one window of "
                         f"{typed('seq_len', seq_len)}; give more text or shorter windows")
    return stream[: n * seq_len].view(n, seq_len)


def unigram_entropy(ids: torch.Tensor, *, skip_below: int = 0) -> float:
    """The entropy in nats of the unit frequencies of ``ids`` (units below ``skip_below`` left out): the loss of
    a model that knows only how often each unit occurs, the level a trained model's loss must fall below."""
    ids = ids.flatten()
    counts = torch.bincount(ids[ids >= skip_below]).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def stream_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose (``data``, ``mask``) of training seed ``seed``: the streams of two
    purposes or two seeds never share a generator state."""
    return int.from_bytes(hashlib.sha256(f"homoscope-zoo/{purpose}/{seed}".encode()).digest()[:8], "big") >> 1


def batch_order(n_windows: int, steps: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """int64 ``[steps, batch_size]``: the windows of each training step, epoch after epoch, each epoch a
    fresh permutation of all windows drawn from ``generator`` (the last epoch's remainder is not used)."""
    need = steps * batch_size
    epochs = [torch.randperm(n_windows, generator=generator) for _ in range(-(-need // n_windows))]
    return torch.cat(epochs)[:need].view(steps, batch_size)


def mask_tokens(ids: torch.Tensor, *, mask_id: int, n_special: int, vocab_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A masked LM's ``(inputs, labels)`` for int64 ``ids`` ``[batch, units]`` (on the CPU).

    Each unit that is not special (id >= ``n_special``) is chosen with probability :data:`MASK_RATE`; a chosen
    unit is replaced by ``mask_id`` (80%), by a random non-special unit (10%) or kept (10%) (Devlin et al.
    2019, "BERT", NAACL, section 3.1). ``labels`` holds the chosen units' ids and :data:`IGNORE` elsewhere;
    at least one unit is chosen. Every call draws the same number of values from ``generator``.
    """
    eligible = ids >= n_special
    chosen = (torch.rand(ids.shape, generator=generator) < MASK_RATE) & eligible
    how = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(n_special, vocab_size, ids.shape, generator=generator)
    if not chosen.any() and eligible.any():
        chosen.view(-1)[eligible.view(-1).nonzero()[0]] = True
    keep_mask, keep_random = MASK_KEEP_RULE[0], MASK_KEEP_RULE[0] + MASK_KEEP_RULE[1]
    inputs = ids.clone()
    inputs[chosen & (how < keep_mask)] = mask_id
    swap = chosen & (how >= keep_mask) & (how < keep_random)
    inputs[swap] = random_ids[swap]
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE))
