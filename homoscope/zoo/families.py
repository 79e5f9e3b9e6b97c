"""The zoo's three families of language models, their configs, objectives and matched parameter budgets.

- ``lstm``: an :class:`~homoscope.models.LSTMLanguageModel` (embedding, stacked LSTMs, untied decoder), next-token
  prediction (Merity et al. 2018, "Regularizing and Optimizing LSTM Language Models", ICLR, without their
  regularisers); kind ``recurrent``.
- ``gpt``: a GPT-2 causal Transformer (``transformers.GPT2LMHeadModel``, tied input and output embeddings),
  next-token prediction (Radford et al. 2019); kind ``decoder``.
- ``bert``: a BERT masked language model (``transformers.BertForMaskedLM``), masked-token prediction with the
  80/10/10 rule (Devlin et al. 2019, NAACL); kind ``encoder``.

Budgets are matched on **non-embedding parameters** (Kaplan et al. 2020, "Scaling Laws for Neural Language
Models": parameters other than the vocabulary and position embeddings): here every parameter but the token,
position and token-type embeddings and the output projection onto the vocabulary (the LSTM's untied decoder,
BERT's output bias), so that the three are counted alike. No dropout: the models see each window at most a
few times.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._spelling import typed
from .data import IGNORE

FAMILIES = ("lstm", "gpt", "bert")
#: How far a family's non-embedding parameters may lie from the budget (relative).
MATCH_TOLERANCE = 0.10


@dataclass(frozen=True)
class Family:
    """What a family is: its name, the kind homoscope gives it, its training objective, a description and the
    peak learning rate it trains at by default (the best of 1e-3, 2e-3, 3e-3, 5e-3 and 1e-2 for the default
    zoo's held-out loss; LSTMs take larger steps than Transformers)."""

    name: str
    kind: str
    objective: str
    description: str
    lr: float


FAMILY = {
    "lstm": Family("lstm", "recurrent", "next-token", "LSTM language model", 1e-2),
    "gpt": Family("gpt", "decoder", "next-token", "GPT-2 causal Transformer language model", 3e-3),
    "bert": Family("bert", "encoder", "masked-token", "BERT masked Transformer language model", 2e-3),
}


def non_embedding_params(family: str, width: int, blocks: int) -> int:
    """Non-embedding parameters of a model of ``family`` at hidden width ``width`` with ``blocks`` blocks.

    A Transformer block (feed-forward 4 x width) holds ``12 d^2 + 13 d``; GPT-2 adds its final layer norm
    (``2 d``), BERT its embedding layer norm and its masked-LM transform (dense and layer norm, ``d^2 + 5 d``).
    An LSTM layer reading width-``h`` inputs holds ``8 h^2 + 8 h`` (PyTorch keeps two bias vectors).
    ``tests/test_zoo.py`` checks these against the models' own counts (:func:`parameter_counts`).
    """
    d = width
    if family == "lstm":
        return blocks * (8 * d * d + 8 * d)
    block = 12 * d * d + 13 * d
    return blocks * block + (2 * d if family == "gpt" else d * d + 5 * d)


def choose_widths(budget: int, families, *, blocks: int, heads: int) -> dict[str, int]:
    """Hidden widths per family whose non-embedding parameters lie nearest ``budget``.

    The LSTM's width is any integer; the Transformers share one width, a multiple of ``heads``, chosen to
    minimise the larger relative miss of the two (so the causal and the masked model differ only in attention
    mask, objective and head). Raises ValueError (naming ``params``) when a family misses the budget by more
    than :data:`MATCH_TOLERANCE`.
    """
    def miss(family: str, width: int) -> float:
        return abs(non_embedding_params(family, width, blocks) - budget) / budget

    def best(step: int, members: list[str]) -> int:
        width, found = step, step
        while min(non_embedding_params(f, width, blocks) for f in members) <= budget:
            width += step
        for w in range(step, width + 1, step):
            if max(miss(f, w) for f in members) < max(miss(f, found) for f in members):
                found = w
        return found

    widths = {}
    transformers_ = [f for f in families if f != "lstm"]
    if "lstm" in families:
        widths["lstm"] = best(1, ["lstm"])
    if transformers_:
        widths.update({f: best(heads, transformers_) for f in transformers_})
    for f in families:
        if miss(f, widths[f]) > MATCH_TOLERANCE:
            raise ValueError(
                f"{typed('params', budget)} cannot be matched within {MATCH_TOLERANCE:.0%}: the nearest {f} model "
                f"(width {widths[f]}, {blocks} blocks) has {non_embedding_params(f, widths[f], blocks):,} "
                "non-embedding parameters; give a larger budget")
    return widths


def family_config(family: str, width: int, *, vocab_size: int, blocks: int, heads: int, positions: int,
                  tokenizer):
    """The config of a ``family`` model: ``blocks`` blocks of hidden width ``width`` (Transformers: ``heads``
    heads, feed-forward ``4 x width``, ``positions`` learned positions), no dropout, the tokenizer's pad, cls
    and sep ids. Returns a ``transformers`` config or a :class:`~homoscope.models.ModuleConfig`."""
    from transformers import BertConfig, GPT2Config

    from ..models.lstm import lstm_config

    if family == "lstm":
        return lstm_config(vocab_size=vocab_size, hidden_size=width, num_layers=blocks)
    if family == "gpt":
        return GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=width, n_layer=blocks, n_head=heads,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.cls_token_id,
                          eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    return BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=blocks, num_attention_heads=heads,
                      intermediate_size=4 * width, max_position_embeddings=positions, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)


def build_model(family: str, config) -> nn.Module:
    """A freshly initialised ``family`` model (its class's own initialiser, drawing from torch's global RNG:
    seed it first), in training mode."""
    from transformers import BertForMaskedLM, GPT2LMHeadModel

    from ..models.lstm import LSTMLanguageModel

    cls = {"lstm": LSTMLanguageModel, "gpt": GPT2LMHeadModel, "bert": BertForMaskedLM}[family]
    return cls(config).train()


def parameter_counts(model: nn.Module, vocab_size: int) -> tuple[int, int]:
    """``(total, non_embedding)`` parameters of ``model``, each tensor counted once (tied weights once).

    Embedding parameters are those of ``nn.Embedding`` modules (token, position, token type) and of linear maps
    onto the vocabulary (``out_features == vocab_size``: an output projection and its bias); the rest are
    non-embedding (the module docstring gives the source of the convention).
    """
    params = {id(p): p.numel() for p in model.parameters()}
    embedding: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and module.out_features == vocab_size):
            embedding.update(id(p) for p in module.parameters(recurse=False))
    total = sum(params.values())
    return total, total - sum(params[i] for i in embedding)


def family_logits(family: str, model: nn.Module, ids: torch.Tensor, chosen: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``model`` on int64 ``ids`` ``[batch, units]`` (no pads): ``[batch, units, vocab]`` for ``lstm``
    and ``gpt`` (position ``j`` predicts unit ``j + 1``), ``[chosen units, vocab]`` for ``bert`` (the masked-LM
    head runs on the units where the bool ``chosen`` is True only)."""
    if family == "bert":
        return model.cls(model.bert(input_ids=ids).last_hidden_state[chosen])
    if family == "lstm":
        return model.next_unit_logits(ids, torch.ones_like(ids))
    return model(input_ids=ids).logits


def family_loss(family: str, model: nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-token cross-entropy in nats of ``model`` on int64 ``ids`` ``[batch, units]`` (no pads).

    ``lstm`` and ``gpt``: next-token prediction over units ``1 .. units - 1``. ``bert``: ``ids`` are the masked
    inputs and ``labels`` the chosen units (:data:`~homoscope.zoo.data.IGNORE` elsewhere,
    :func:`~homoscope.zoo.data.mask_tokens`).
    """
    if family == "bert":
        chosen = labels != IGNORE
        return nn.functional.cross_entropy(family_logits(family, model, ids, chosen), labels[chosen])
    logits = family_logits(family, model, ids)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
