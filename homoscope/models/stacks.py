"""The decoder stack of an encoder-decoder model (T5, BART), measured on request.

By default an encoder-decoder model is measured at its encoder (:func:`~homoscope.models.loading.encoder_of`).
The spec ``decoder:<spec>`` measures its decoder instead: :class:`DecoderStack` runs the text through the
encoder and, teacher-forced, through the decoder, whose input is the decoder start unit followed by the same
text's units. The decoder's state at text unit ``k`` has read units ``0 .. k`` (after the start unit), as a
decoder-only model's does, so its rows align with the encoder's and with every other model's. The model is
named ``<name> (decoder)`` and its store key differs from the encoder's, so the two stacks never mix.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

#: The spec prefix that asks for an encoder-decoder model's decoder stack.
DECODER_PREFIX = "decoder:"


def split_stack(spec: str) -> tuple[str, str]:
    """``(stack, inner spec)``: ``('decoder', 't5-small')`` for ``'decoder:t5-small'``, else ``('', spec)``."""
    if spec.strip().lower().startswith(DECODER_PREFIX):
        return "decoder", spec.strip()[len(DECODER_PREFIX):]
    return "", spec


def decoder_blocks(config) -> int:
    """Blocks of the decoder of an encoder-decoder config (``num_decoder_layers`` for T5, ``decoder_layers`` for
    BART). Raises ValueError when the config states neither."""
    for attr in ("num_decoder_layers", "decoder_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"config of model_type={getattr(config, 'model_type', None)!r} states no decoder layer count")


def _start_column(config, batch: int, device) -> torch.Tensor:
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(config, "pad_token_id", None) or 0
    return torch.full((batch, 1), int(start), dtype=torch.long, device=device)


class DecoderStack(nn.Module):
    """An encoder-decoder model measured at its decoder, teacher-forced on the text it encodes.

    ``forward(input_ids, attention_mask)`` (int64 ``[batch, units]``, right-padded: the runner pads right for
    this module, since a left pad would sit between the start unit and the text) returns an object whose
    ``hidden_states`` are the decoder's ``L + 1`` layers ``[batch, units, d]``, the start unit's position
    dropped. ``config`` is the model's config with ``num_hidden_layers`` set to the decoder's block count.
    """

    right_padding_only = True

    def __init__(self, seq2seq: nn.Module):
        super().__init__()
        if not getattr(getattr(seq2seq, "config", None), "is_encoder_decoder", False):
            raise ValueError(f"{type(seq2seq).__name__} is not an encoder-decoder model; {DECODER_PREFIX!r} "
                             "applies to models with an encoder and a decoder (T5, BART)")
        self.seq2seq = seq2seq
        config = copy.deepcopy(seq2seq.config)
        config.num_hidden_layers = decoder_blocks(config)
        self.config = config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = True, return_dict: bool = True):
        """The decoder's layers for the text (see the class docstring)."""
        from .modules import LayerOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        start = _start_column(self.seq2seq.config, input_ids.shape[0], input_ids.device)
        out = self.seq2seq(input_ids=input_ids, attention_mask=attention_mask,
                           decoder_input_ids=torch.cat([start, input_ids], dim=1),
                           decoder_attention_mask=torch.cat([torch.ones_like(start), attention_mask], dim=1),
                           output_hidden_states=True, return_dict=True)
        return LayerOutput(hidden_states=tuple(h[:, 1:] for h in out.decoder_hidden_states))
