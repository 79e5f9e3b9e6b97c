"""LSTM language models as :class:`~homoscope.models.modules.LayeredModule`: Flair's character LMs and the zoo's.

An :class:`LSTMLanguageModel` is an embedding, ``L`` single-layer LSTMs stacked, and a linear decoder to the
vocabulary (Akbik et al. 2018, "Contextual String Embeddings for Sequence Labeling", COLING; the forward and
backward character LMs of Flair). Layer 0 is the embedding, layer ``i`` the output of LSTM ``i``; an
embedding narrower than the LSTMs (Flair's: 100 wide, LSTM 1024) is padded with zero columns to the width
``d``, which changes no Gram matrix (so no kernel measure) and is stated in the model's notes.

A ``backward`` model reads each text from its last unit to its first; its states are returned in the text's
order, so row ``p`` is the state after reading units ``p .. end``. Padding on either side is read around:
each text's real units are gathered in reading order, run, and put back, so a real unit's state never sees
a pad.
"""
from __future__ import annotations

import torch
from torch import nn

from .modules import LayeredModule, ModuleConfig, register_module

DIRECTIONS = ("forward", "backward")
#: The options of an :class:`LSTMLanguageModel`'s config.
OPTIONS = ("embedding_size", "direction")


def reading_order(attention_mask: torch.Tensor, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps ``(order, back)`` int64 ``[batch, units]`` for a right- or left-padded mask (contiguous 1s).

    ``x.gather(1, order)`` puts each text's real units first, in reading order (last to first when
    ``backward``), pads after them; ``y.gather(1, back)`` puts states read that way back at their units. Both
    are clamped into range at pad positions, whose values are never read.
    """
    b, t = attention_mask.shape
    mask = attention_mask.to(torch.long)
    pos = torch.arange(t, device=mask.device).expand(b, t)
    length = mask.sum(dim=1, keepdim=True)
    start = mask.argmax(dim=1, keepdim=True)  # first real unit (0 for an all-pad row, never read)
    if backward:
        order, back = start + length - 1 - pos, start + length - 1 - pos
    else:
        order, back = start + pos, pos - start
    return order.clamp(0, t - 1), back.clamp(0, t - 1)


@register_module("lstm-lm")
class LSTMLanguageModel(LayeredModule):
    """An LSTM language model over units of a fast tokenizer (characters for Flair's, subwords for the zoo's).

    Config options: ``embedding_size`` (int), ``direction`` (``forward`` or ``backward``). Kind ``recurrent``.
    Word rows: the forward model's state at a word's last unit, the backward model's at its first (Flair).

    Raises ValueError (at construction) for a direction not in :data:`DIRECTIONS` or a non-positive size.
    """

    def __init__(self, config: ModuleConfig):
        super().__init__(config)
        opts = config.options
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise ValueError(f"options holds {', '.join(map(repr, unknown))}, which an LSTM language model does "
                             f"not take; it takes {', '.join(OPTIONS)}")
        direction, e = opts.get("direction", "forward"), opts.get("embedding_size", config.hidden_size)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r} must be one of {', '.join(DIRECTIONS)}")
        if not isinstance(e, int) or not 0 < e <= config.hidden_size:
            raise ValueError(f"embedding_size={e!r} must be a positive integer <= hidden_size {config.hidden_size}")
        h = config.hidden_size
        self.backward = direction == "backward"
        self.embeddings = nn.Embedding(config.vocab_size, e)
        self.lstms = nn.ModuleList(nn.LSTM(e if i == 0 else h, h, batch_first=True)
                                     for i in range(config.num_hidden_layers))
        self.decoder = nn.Linear(h, config.vocab_size)

    @property
    def word_pooling(self) -> str:  # type: ignore[override]
        return "first" if self.backward else "last"

    def read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The layers in reading order (real units first, read in this model's direction) and the map back."""
        order, back = reading_order(attention_mask, self.backward)
        x = self.embeddings(input_ids.gather(1, order))
        states = [x]
        for lstm in self.lstms:
            x, _ = lstm(x)
            states.append(x)
        return states, back

    def layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """``L + 1`` float tensors ``[batch, units, hidden_size]`` in the text's order (layer 0 zero-padded)."""
        states, back = self.read(input_ids, attention_mask)
        h = self.config.hidden_size
        out = []
        for s in states:
            s = s.gather(1, back[..., None].expand(*back.shape, s.shape[-1]))
            out.append(s if s.shape[-1] == h else nn.functional.pad(s, (0, h - s.shape[-1])))
        return out

    def next_unit_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, units, vocab]`` in reading order: position ``j`` predicts the unit read at ``j + 1``
        (the next unit for a forward model, the previous one for a backward model): the targets are
        :meth:`reading_ids` shifted by one."""
        states, _ = self.read(input_ids, attention_mask)
        return self.decoder(states[-1])

    def reading_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids`` in this model's reading order (the targets of :meth:`next_unit_logits`, shifted by one)."""
        order, _ = reading_order(attention_mask, self.backward)
        return input_ids.gather(1, order)


def lstm_config(*, vocab_size: int, hidden_size: int, num_layers: int, embedding_size: int | None = None,
                direction: str = "forward") -> ModuleConfig:
    """The :class:`ModuleConfig` of an :class:`LSTMLanguageModel` (kind ``recurrent``, no length limit)."""
    return ModuleConfig(module="lstm-lm", kind="recurrent", num_hidden_layers=num_layers, hidden_size=hidden_size,
                        vocab_size=vocab_size,
                        options={"embedding_size": embedding_size or hidden_size, "direction": direction})


def bits_per_unit(model: LSTMLanguageModel, tokenizer, texts: list[str], batch_size: int = 64) -> tuple[float, int]:
    """Bits per unit of ``model`` on ``texts`` (bits per character for a character model), read in its direction.

    Each text is encoded by ``tokenizer`` with its markers; every unit read after the first (the marker the
    model starts from, never a target) is predicted from the ones before it (:meth:`~LSTMLanguageModel.next_unit_logits`
    against :meth:`~LSTMLanguageModel.reading_ids`), the end marker included. Returns ``(bits, units)``: the
    mean cross-entropy in bits over all predicted units (float) and their count (int). Runs on the model's
    device without gradients, ``batch_size`` texts of like lengths at a time. Raises ValueError for no text or a
    text with nothing to predict.
    """
    if not texts:
        raise ValueError("texts is empty: nothing to predict")
    device = next(model.parameters()).device
    texts = sorted(texts, key=len)  # batches of like lengths: little padding to run
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i: i + batch_size], padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        with torch.no_grad():
            logits = model.next_unit_logits(ids, mask)[:, :-1].float()
            targets = model.reading_ids(ids, mask)[:, 1:]
        lengths = mask.sum(dim=1, keepdim=True)
        keep = torch.arange(1, ids.shape[1], device=device)[None, :] < lengths  # real units read first
        if not bool(keep.any(dim=1).all()):
            raise ValueError("a text has no unit to predict after its first")
        nats = nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
        total, count = total + float(nats), count + int(keep.sum())
    return total / count / float(torch.log(torch.tensor(2.0))), count
