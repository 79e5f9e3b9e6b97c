"""The probe runner: padding never leaks into a text's vectors, layers are counted and ordered right."""
import pytest
import torch

from homoscope.extract import ExtractStats, RepresentationStore, extract, make_batches, pool_weights
from homoscope.extract.store import fingerprint_key
from homoscope.models.tiny import tiny_model

KINDS = ["bert", "gpt2", "llama", "t5", "bart", "lstm", "char-lstm"]
SHORT = "the cat sat"
LONGER = [
    "the cat sat on the mat and looked at the dog for a very long time",
    "a dog and a cat and a bird and a fish went to the market on a sunny day",
    "market day",
]


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return tiny_model(request.param, seed=0)


@pytest.mark.parametrize("pooling", ["mean", "first", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_alone_equals_batched_with_longer_texts(model, pooling, side):
    alone = extract(model, [SHORT], pooling=pooling, padding_side=side, progress=False)
    batched = extract(model, LONGER + [SHORT], pooling=pooling, padding_side=side, progress=False)
    # one batch holds all four texts, so the short one is padded by many tokens
    assert len(make_batches([3, 20, 20, 20], 8192)) == 1
    assert torch.allclose(alone[:, 0], batched[:, -1], atol=1e-4, rtol=0), (
        (alone[:, 0] - batched[:, -1]).abs().max()
    )


def test_left_and_right_padding_agree(model):
    texts = LONGER + [SHORT]
    right = extract(model, texts, padding_side="right", progress=False)
    left = extract(model, texts, padding_side="left", progress=False)
    assert torch.allclose(right, left, atol=1e-4, rtol=0)


def test_batch_budget_does_not_change_vectors(model):
    texts = LONGER + [SHORT] * 3
    one_by_one = extract(model, texts, batch_tokens=64, max_length=32, progress=False)
    together = extract(model, texts, batch_tokens=8192, max_length=32, progress=False)
    assert torch.allclose(one_by_one, together, atol=1e-4, rtol=0)


def test_layer_count_is_blocks_plus_one(model):
    stack = extract(model, [SHORT, LONGER[0]], progress=False)
    cfg = model.model.config
    assert stack.shape == (cfg.num_hidden_layers + 1, 2, cfg.hidden_size)
    assert stack.dtype == torch.float32


def test_layer_zero_is_the_embedding_output():
    m = tiny_model("bert", seed=0)
    enc = m.tokenizer([SHORT], return_special_tokens_mask=True, return_tensors="pt")
    with torch.inference_mode():
        emb = m.model.embeddings(input_ids=enc["input_ids"])  # [1, t, d]
    content = (1 - enc["special_tokens_mask"][0]).bool()
    expected = emb[0, content].mean(0)
    stack = extract(m, [SHORT], progress=False)
    assert torch.allclose(stack[0, 0], expected, atol=1e-5)
    assert not torch.allclose(stack[1, 0], expected, atol=1e-3)


def test_masked_mean_ignores_pads_and_special_tokens():
    attn = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    special = torch.tensor([[1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1]])
    w = pool_weights(attn, special, "mean")
    assert torch.allclose(w[0], torch.tensor([0, 0.5, 0.5, 0, 0, 0]))
    assert torch.allclose(w[1], torch.tensor([0, 0.25, 0.25, 0.25, 0.25, 0]))
    assert torch.equal(pool_weights(attn, special, "last").argmax(1), torch.tensor([2, 4]))
    assert torch.equal(pool_weights(attn, special, "first").argmax(1), torch.tensor([1, 1]))
    assert torch.equal(pool_weights(attn, special, "cls").argmax(1), torch.tensor([0, 0]))


def test_pad_token_value_does_not_matter(model):
    texts = LONGER + [SHORT]
    a = extract(model, texts, progress=False)
    old = model.tokenizer.pad_token_id
    try:
        model.tokenizer.pad_token_id = 1 if old != 1 else 2
        b = extract(model, texts, progress=False)
    finally:
        model.tokenizer.pad_token_id = old
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_truncation_is_counted():
    m = tiny_model("bert", seed=0)
    stats = ExtractStats()
    extract(m, [" ".join(["cat"] * 50), SHORT], max_length=8, progress=False, stats=stats)
    assert stats.truncated == 1 and stats.n == 2


def test_bad_options_name_the_argument():
    m = tiny_model("bert", seed=0)
    with pytest.raises(ValueError, match="pooling='max'"):
        extract(m, [SHORT], pooling="max", progress=False)
    with pytest.raises(ValueError, match="texts is empty"):
        extract(m, [], progress=False)
    with pytest.raises(ValueError, match="padding_side='middle'"):
        extract(m, [SHORT], padding_side="middle", progress=False)


def test_cls_pooling_needs_a_leading_special_token():
    m = tiny_model("gpt2", seed=0)
    if m.tokenizer("x", return_special_tokens_mask=True)["special_tokens_mask"][:1] == [1]:
        pytest.skip("this tokenizer adds a leading special token")
    with pytest.raises(ValueError, match="pooling='cls'"):
        extract(m, [SHORT], pooling="cls", progress=False)


def test_nonfinite_hidden_state_names_the_layer():
    m = tiny_model("bert", seed=0)
    layer = m.model.encoder.layer[1]
    handle = layer.register_forward_hook(lambda mod, inp, out: (out[0] * float("nan"),) + tuple(out[1:])
                                         if isinstance(out, tuple) else out * float("nan"))
    try:
        with pytest.raises(ValueError, match="layer 2"):
            extract(m, [SHORT], progress=False)
    finally:
        handle.remove()


def test_store_round_trip_and_corruption(tmp_path):
    store = RepresentationStore(tmp_path / "store")
    key = fingerprint_key(model="abc", corpus="def", unit="sentence", pooling="mean")
    x = torch.randn(3, 5, 4)
    store.put("m/../x", key, x, {"note": 1})
    files = sorted(p.name for p in (tmp_path / "store").iterdir() if p.name != ".write.lock")
    assert all(not f.startswith(".") for f in files) and len(files) == 2
    got, rec = store.get("m/../x", key)
    assert torch.equal(got, x) and rec["note"] == 1
    # a truncated tensor file is never read as complete
    tfile = next((tmp_path / "store").glob("*.safetensors"))
    tfile.write_bytes(tfile.read_bytes()[:-10])
    assert store.get("m/../x", key) is None
    assert store.get("other", key) is None
    with pytest.raises(ValueError, match="is a file"):
        RepresentationStore(tfile)
