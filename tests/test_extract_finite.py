"""The probe runner's finite checks and tokenization: NaN/inf on a real token is always an error
(with its exact count), whatever its pooling weight; NaN/inf on pad positions never reaches a vector."""
import pytest
import torch

from homoscope.extract import NonFiniteHiddenStateError, extract, extract_rows
from homoscope.extract.runner import tokenize
from homoscope.models.tiny import TINY_TEXT, tiny_model

TEXTS = list(TINY_TEXT[:6])


def _poison(m, layer_index, where):
    """Hook layer ``layer_index`` of a tiny BERT so that its output is NaN where ``where(attn)`` is
    True (``attn`` the batch's attention mask ``[b, t]``); returns the hook handles."""
    seen = {}

    def pre(_module, _args, kwargs):
        seen["attn"] = kwargs["attention_mask"]

    def post(_module, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        mask = where(seen["attn"]).to(h.device)[:, :, None]
        h = h.masked_fill(mask, float("nan"))
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    return [m.model.register_forward_pre_hook(pre, with_kwargs=True),
            m.model.encoder.layer[layer_index].register_forward_hook(post)]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["mean", "first", "last"])
def test_nan_on_pad_positions_never_reaches_a_vector(side, pooling):
    m = tiny_model("bert", seed=0)
    clean = extract(m, TEXTS, pooling=pooling, padding_side=side, progress=False)
    # the last block's output (layer 2) is NaN on pad positions only (no later block reads it)
    handles = _poison(m, -1, lambda attn: attn == 0)
    try:
        got = extract(m, TEXTS, pooling=pooling, padding_side=side, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert got.shape[0] == 3
    torch.testing.assert_close(got, clean, atol=1e-6, rtol=0)


def test_nan_on_a_zero_weight_real_token_is_an_error_with_its_count():
    m = tiny_model("bert", seed=0)
    width = m.model.config.hidden_size
    # NaN on the first position ([CLS], weight 0 for mean pooling) of every text, from layer 2 on
    handles = _poison(m, 1, lambda attn: torch.zeros_like(attn, dtype=torch.bool).index_fill(1, torch.tensor([0]), True))
    try:
        with pytest.raises(NonFiniteHiddenStateError,
                           match=rf"produced {len(TEXTS) * width} non-finite values \(NaN/inf\) in layer 2 "
                                 r"\(0 = embeddings\) on real tokens"):
            extract(m, TEXTS, pooling="mean", progress=False)
    finally:
        for h in handles:
            h.remove()


def test_nonfinite_check_covers_rows_of_several_tokens():
    m = tiny_model("bert", seed=0)
    ids, special, _ = tokenize(m.tokenizer, TEXTS, 32)
    groups = [[[1], [2, 3]] for _ in ids]
    clean = extract_rows(m, ids, special, groups, progress=False)
    assert clean.shape[1] == 2 * len(TEXTS) and torch.isfinite(clean).all()
    handles = _poison(m, 1, lambda attn: attn.bool())
    try:
        with pytest.raises(NonFiniteHiddenStateError, match="in layer 2"):
            extract_rows(m, ids, special, groups, progress=False)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_tokenize_matches_a_truncating_call(kind):
    m = tiny_model(kind, seed=0)
    texts = [" ".join(["cat"] * 40), "the cat sat", " ".join(TINY_TEXT[:3]), "dog"]
    ids, special, n_trunc = tokenize(m.tokenizer, texts, 12)
    ref = m.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=12, return_special_tokens_mask=True)
    assert ids == ref["input_ids"] and special == ref["special_tokens_mask"]
    full = m.tokenizer(texts, add_special_tokens=True)["input_ids"]
    assert n_trunc == sum(len(f) > 12 for f in full) >= 1
