"""Tiny, deterministic models and tokenizers built locally (no download), for tests and demos.

``tiny_model("bert" | "gpt2" | "llama", seed)`` gives a ``LoadedModel`` with random weights drawn from
``seed`` and a fast tokenizer built in milliseconds from ``TINY_TEXT``: WordPiece for BERT, byte-level
BPE for GPT-2, Metaspace BPE with a ``<s>`` prefix for Llama. Same kind and seed, same weights and
fingerprint; different seeds, different weights. ``save_tiny`` writes one as a local Hugging Face
folder so folder loading can be exercised offline.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .loading import LoadedModel, from_module

KINDS = ("bert", "gpt2", "llama", "t5", "bart", "lstm", "char-lstm")
#: The tiny kinds behind the adapter interface (:class:`~homoscope.models.lstm.LSTMLanguageModel`).
MODULE_KINDS = ("lstm", "char-lstm")

TINY_TEXT: tuple[str, ...] = (
    "The cat sat on the mat and looked at the dog.",
    "A dog ran across the park to catch the red ball.",
    "Models trained on the same data often learn similar features.",
    "Representations in early layers capture words; later layers capture meaning.",
    "She read the book twice because the ending surprised her.",
    "Rain fell all night, so the river rose over its banks.",
    "The committee approved the budget after a long debate.",
    "Neural networks map sentences to vectors of numbers.",
    "He bought bread, milk, cheese and apples at the market.",
    "Similarity between two models can be measured layer by layer.",
    "Birds sing in the morning when the sun comes up.",
    "The old bridge was closed for repairs during the winter.",
    "Students asked questions, and the teacher answered each one.",
    "Prices went up in March, then fell again in May.",
    "It is not what you say, but how you say it.",
    "Translation between languages remains a hard problem.",
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "In 2024, 3 of 10 runs (30%) failed; why? Nobody knew.",
)


_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-%&/"


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a tiny model kind; choose one of {', '.join(KINDS)}")
    return kind


def _wordpiece_vocab(text: list[str], size: int) -> list[str]:
    """A deterministic WordPiece vocabulary: characters, ``##`` characters, common suffixes, then the
    most frequent words of ``text`` (ties by spelling), up to ``size`` entries."""
    import re
    from collections import Counter

    chars = sorted(set(_ALPHABET.lower()))
    pieces = chars + ["##" + c for c in chars if c.isalnum()]
    pieces += [p for p in ("##ed", "##ing", "##ly", "##er", "##est", "##tion") if p not in pieces]
    words = Counter(w for line in text for w in re.findall(r"[a-z0-9]+", line.lower()) if len(w) > 1)
    ranked = sorted(words, key=lambda w: (-words[w], w))
    seen = set(pieces)
    for w in ranked:
        if len(pieces) >= size:
            break
        if w not in seen:
            pieces.append(w)
            seen.add(w)
    return pieces


def _bert_tokenizer(text: list[str], vocab_size: int):
    """A lowercasing WordPiece fast tokenizer over a rule-built vocabulary of ``text`` (``vocab_size`` entries)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = _wordpiece_vocab(text, vocab_size - len(specials))
    vocab = {t: i for i, t in enumerate(specials + pieces)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64, padding_side="right",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _gpt2_tokenizer(text: list[str], vocab_size: int):
    """A byte-level BPE fast tokenizer trained on ``text`` up to ``vocab_size`` entries, GPT-2's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=64, padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


def _llama_tokenizer(text: list[str], vocab_size: int):
    """A Metaspace BPE fast tokenizer trained on ``text`` up to ``vocab_size`` entries, ``<s>`` prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(set("".join(text)) | set(_ALPHABET))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=alphabet))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=64, padding_side="left", model_input_names=["input_ids", "attention_mask"],
    )


def tiny_tokenizer(kind: str, vocab_size: int = 300):
    """Build a fast tokenizer for a tiny model of ``kind`` from ``TINY_TEXT`` (deterministic).

    - ``bert``: lowercasing WordPiece (vocabulary built by rule, not trained), ``[CLS] ... [SEP]``
      template, pad ``[PAD]``, mask ``[MASK]``.
    - ``gpt2``: byte-level BPE, ``<|endoftext|>`` as bos/eos/unk, no pad token (as GPT-2 ships).
    - ``llama``: Metaspace BPE, ``<s>`` prepended, eos ``</s>``, no pad token (as Llama ships).
    - ``t5``, ``bart``, ``lstm``: the ``bert`` tokenizer (the encoder-decoder tests need a pad token, not T5's
      own vocabulary).
    - ``char-lstm``: single characters (:func:`~homoscope.models.modules.character_tokenizer`) with Flair's
      markers, read backward: ``" "`` before and ``"\n"`` after each text.

    Returns:
        a transformers fast tokenizer (``is_fast`` True, character offsets available).

    Raises:
        ValueError: unknown ``kind``.
    """
    _check_kind(kind)
    build = {"bert": _bert_tokenizer, "gpt2": _gpt2_tokenizer, "llama": _llama_tokenizer,
             "t5": _bert_tokenizer, "bart": _bert_tokenizer, "lstm": _bert_tokenizer, "char-lstm": _char_tokenizer}[kind]
    return build(list(TINY_TEXT), vocab_size)


def _char_tokenizer(text: list[str], vocab_size: int):
    from .modules import character_tokenizer

    units = ["<unk>", "\n", " "] + sorted(set(_ALPHABET))
    return character_tokenizer(units, prefix=" ", suffix="\n", unk="<unk>")


def _module(kind: str, vocab_size: int, blocks: int, width: int):
    """A tiny LSTM language model: ``lstm`` forward over subwords, ``char-lstm`` backward over characters with an
    embedding half as wide as the LSTMs (zero-padded in layer 0, as Flair's)."""
    from .lstm import LSTMLanguageModel, lstm_config

    char = kind == "char-lstm"
    return LSTMLanguageModel(lstm_config(vocab_size=vocab_size, hidden_size=width, num_layers=blocks,
                                         embedding_size=width // 2 if char else width,
                                         direction="backward" if char else "forward"))


def tiny_config(kind: str, vocab_size: int, tokenizer=None, *, blocks: int = 2, width: int = 32):
    """A small transformers config of ``kind`` (``blocks`` blocks, hidden size ``width``, 4 heads).

    Raises:
        ValueError: unknown ``kind``, or ``width`` not divisible by 4.
    """
    from transformers import BartConfig, BertConfig, GPT2Config, LlamaConfig, T5Config

    _check_kind(kind)
    if width % 4:
        raise ValueError(f"width={width} must be divisible by 4 (the number of attention heads)")
    tid = (lambda attr: getattr(tokenizer, attr, None)) if tokenizer is not None else (lambda attr: None)
    if kind == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=blocks,
                          num_attention_heads=4, intermediate_size=2 * width, max_position_embeddings=64,
                          type_vocab_size=2, pad_token_id=tid("pad_token_id") or 0)
    if kind == "t5":
        pad = tid("pad_token_id") or 0
        return T5Config(vocab_size=vocab_size, d_model=width, d_kv=width // 4, d_ff=2 * width, num_layers=blocks,
                        num_decoder_layers=blocks, num_heads=4, pad_token_id=pad, decoder_start_token_id=pad,
                        eos_token_id=tid("sep_token_id") or 1)
    if kind == "bart":
        pad = tid("pad_token_id") or 0
        return BartConfig(vocab_size=vocab_size, d_model=width, encoder_layers=blocks, decoder_layers=blocks,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * width,
                          decoder_ffn_dim=2 * width, max_position_embeddings=64, pad_token_id=pad,
                          bos_token_id=tid("cls_token_id") or 1, eos_token_id=tid("sep_token_id") or 2,
                          decoder_start_token_id=tid("sep_token_id") or 2, forced_eos_token_id=None)
    if kind == "gpt2":
        eos = tid("eos_token_id") or 0
        return GPT2Config(vocab_size=vocab_size, n_embd=width, n_layer=blocks, n_head=4, n_positions=64,
                          bos_token_id=eos, eos_token_id=eos)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                       num_hidden_layers=blocks, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64, bos_token_id=tid("bos_token_id"),
                       eos_token_id=tid("eos_token_id"), tie_word_embeddings=False)


def _build(kind: str, seed: int, head: bool, blocks: int, width: int):
    from transformers import (BartModel, BertForMaskedLM, BertModel, GPT2LMHeadModel, GPT2Model, LlamaForCausalLM,
                              LlamaModel, T5Model)

    if head and kind in ("t5", "bart", *MODULE_KINDS):
        raise ValueError(f"kind={kind!r}: tiny encoder-decoder and LSTM models come without a language-model head")
    tok = tiny_tokenizer(kind)
    if kind in MODULE_KINDS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return _module(kind, len(tok), blocks, width).eval(), tok
    config = tiny_config(kind, len(tok), tok, blocks=blocks, width=width)
    cls = {
        ("bert", False): BertModel, ("bert", True): BertForMaskedLM,
        ("gpt2", False): GPT2Model, ("gpt2", True): GPT2LMHeadModel,
        ("llama", False): LlamaModel, ("llama", True): LlamaForCausalLM,
        ("t5", False): T5Model, ("bart", False): BartModel,
    }[(kind, bool(head))]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = cls(config)
    model.eval()
    return model, tok


def tiny_model(kind: str, seed: int = 0, *, head: bool = False, blocks: int = 2, width: int = 32) -> LoadedModel:
    """A tiny random-init model of ``kind`` with a locally built fast tokenizer, as a ``LoadedModel``.

    Deterministic: the same (kind, seed, head, blocks, width) gives the same weights and fingerprint;
    the global torch RNG is left untouched. Decoders get pad_token = eos_token (set by
    ``from_module``); GPT-2 pads right, Llama pads left. On CPU, float32, eval mode.

    Args:
        kind: ``bert``, ``gpt2``, ``llama``, the encoder-decoders ``t5`` and ``bart`` (held as their
            encoder, :func:`~homoscope.models.loading.encoder_of`), or the LSTM language models ``lstm`` and
            ``char-lstm`` (:data:`MODULE_KINDS`, behind the adapter interface).
        seed: weight seed.
        head: with the masked-LM / causal-LM head.
        blocks: number of blocks L (L + 1 layers).
        width: hidden size d (divisible by 4).

    Raises:
        ValueError: unknown ``kind`` or bad ``width``.
    """
    model, tok = _build(_check_kind(kind), seed, head, blocks, width)
    return from_module(model, tok, name=f"tiny-{kind}-s{seed}", license="Apache-2.0",
                       notes=f"tiny random-init {kind} (seed {seed}) for tests")


def save_tiny(kind: str, folder: str | os.PathLike, seed: int = 0, *, head: bool = False, blocks: int = 2,
              width: int = 32) -> Path:
    """Save a tiny model of ``kind`` and its tokenizer as a local Hugging Face folder; return the folder.

    The folder holds ``config.json``, ``model.safetensors`` and the fast tokenizer files, so
    ``load_model(folder)`` works offline.
    """
    model, tok = _build(_check_kind(kind), seed, head, blocks, width)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind in MODULE_KINDS:
        from .modules import save_module

        return save_module(model, tok, folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


#: Attention heads and key/value heads of the tiny GGUF model.
_GGUF_HEADS, _GGUF_KV_HEADS = 4, 2


def _gguf_vocab() -> tuple[list[str], list[str], int]:
    """The tiny GPT-2 tokenizer as GGUF wants it: ``(tokens in id order, merges as 'a b', eos id)``."""
    import json

    tok = tiny_tokenizer("gpt2")
    backend = json.loads(tok.backend_tokenizer.to_str())
    vocab = backend["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in backend["model"]["merges"]]
    return tokens, merges, vocab["<|endoftext|>"]


def _add_gguf_metadata(
    w, name: str, blocks: int, width: int, tokens: list[str], merges: list[str], eos: int
) -> None:
    """Write the Llama hyperparameters and the byte-level BPE tokenizer of the tiny model to GGUF writer ``w``."""
    w.add_name(name)
    w.add_context_length(64)
    w.add_embedding_length(width)
    w.add_block_count(blocks)
    w.add_feed_forward_length(2 * width)
    w.add_head_count(_GGUF_HEADS)
    w.add_head_count_kv(_GGUF_KV_HEADS)
    w.add_rope_dimension_count(width // _GGUF_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if i == eos else 1 for i in range(len(tokens))])
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)


def _add_gguf_tensors(w, rng, qtype, blocks: int, width: int, n_vocab: int) -> None:
    """Add random Llama weights to GGUF writer ``w``: matrices stored as ``qtype``, norms as F32.

    Draws from ``rng`` in tensor order, so a seed gives the same file.
    """
    import gguf
    import numpy as np
    from gguf.quants import quantize

    head_dim, inter = width // _GGUF_HEADS, 2 * width
    kv = _GGUF_KV_HEADS * head_dim

    def matrix(name: str, rows: int, cols: int) -> None:
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(width)).astype(np.float32))

    matrix("token_embd.weight", n_vocab, width)
    for b in range(blocks):
        norm(f"blk.{b}.attn_norm.weight")
        matrix(f"blk.{b}.attn_q.weight", width, width)
        matrix(f"blk.{b}.attn_k.weight", kv, width)
        matrix(f"blk.{b}.attn_v.weight", kv, width)
        matrix(f"blk.{b}.attn_output.weight", width, width)
        norm(f"blk.{b}.ffn_norm.weight")
        matrix(f"blk.{b}.ffn_gate.weight", inter, width)
        matrix(f"blk.{b}.ffn_up.weight", inter, width)
        matrix(f"blk.{b}.ffn_down.weight", width, inter)
    norm("output_norm.weight")
    matrix("output.weight", n_vocab, width)


def save_tiny_gguf(path: str | os.PathLike, seed: int = 0, *, quant: str = "Q4_1", blocks: int = 2,
                   width: int = 32) -> Path:
    """Write a tiny Llama-architecture GGUF file (random weights, byte-level BPE tokenizer); return its path.

    The block matrices are stored quantized as ``quant`` (``Q4_1``, ``Q8_0`` or ``F32``) and norms as F32,
    like a real quantized checkpoint, so GGUF loading and ``convert_gguf`` can be tested offline in
    seconds. Deterministic in ``seed``.

    Raises:
        ValueError: unknown ``quant``, or ``width`` not a multiple of 32 (the quantization block).
    """
    import gguf
    import numpy as np

    if quant not in ("Q4_1", "Q8_0", "F32"):
        raise ValueError(f"quant={quant!r} must be one of Q4_1, Q8_0, F32")
    if width % 32:
        raise ValueError(f"width={width} must be a multiple of 32 (the GGUF quantization block)")
    tokens, merges, eos = _gguf_vocab()
    rng = np.random.default_rng(int(seed))
    qtype = getattr(gguf.GGMLQuantizationType, quant)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    _add_gguf_metadata(w, f"tiny-llama-gguf-s{seed}", blocks, width, tokens, merges, eos)
    _add_gguf_tensors(w, rng, qtype, blocks, width, len(tokens))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
