"""The adapter interface for torch modules that are not transformers classes, and the LSTM language model."""
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from homoscope.extract import extract
from homoscope.models import (LayeredModule, LSTMLanguageModel, ModuleConfig, character_tokenizer, config_shape,
                              from_module, load_model, lstm_config, random_init_like, resolve, save_module)
from homoscope.models.lstm import reading_order
from homoscope.models.tiny import TINY_TEXT, save_tiny, tiny_model, tiny_tokenizer
from homoscope.study import Study, run_study

UNITS = ["<unk>", "\n", " "] + list("abcdefghijklmnopqrstuvwxyz.,")


class MeanContext(LayeredModule):
    """A module of the user's own, not registered: layer i is the running mean of layer i-1 (causal)."""

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size)
                                 for _ in range(config.num_hidden_layers))

    def layers(self, input_ids, attention_mask):
        x = self.embed(input_ids) * attention_mask[..., None]
        out = [x]
        count = attention_mask.cumsum(1).clamp(min=1)[..., None]
        for lin in self.mix:
            x = torch.tanh(lin(x.cumsum(1) / count)) * attention_mask[..., None]
            out.append(x)
        return out


def test_character_tokenizer_gives_one_unit_per_character_with_its_offsets():
    tok = character_tokenizer(UNITS, prefix="\n", suffix=" ", unk="<unk>")
    enc = tok(["ab c!"], return_offsets_mapping=True, return_special_tokens_mask=True)
    assert enc["input_ids"][0] == [1, 3, 4, 2, 5, 0, 2]  # "\n" a b " " c <unk> " "
    assert enc["offset_mapping"][0] == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 0)]
    assert enc["special_tokens_mask"][0] == [1, 0, 0, 0, 0, 0, 1]
    assert tok.pad_token_id == 0
    with pytest.raises(ValueError, match="prefix"):
        character_tokenizer(UNITS, prefix="#", suffix=None, unk="<unk>")
    with pytest.raises(ValueError, match="twice"):
        character_tokenizer(UNITS + ["a"], prefix=None, suffix=None, unk="<unk>")


@pytest.mark.parametrize("backward", [False, True])
def test_reading_order_reads_each_text_around_its_pads(backward):
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = torch.tensor([[1, 2, 3, 0, 0], [0, 0, 4, 5, 6], [7, 8, 9, 10, 11]])
    order, back = reading_order(mask, backward)
    read = ids.gather(1, order)
    want = [[1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]]
    for r, w in enumerate(want):
        assert read[r, : len(w)].tolist() == (w[::-1] if backward else w)
    assert torch.equal(read.gather(1, back)[mask.bool()], ids[mask.bool()])  # the way back


def test_a_backward_lstm_state_depends_on_the_text_after_it_only():
    tok = character_tokenizer(UNITS, prefix=" ", suffix="\n", unk="<unk>")
    torch.manual_seed(0)
    model = LSTMLanguageModel(lstm_config(vocab_size=len(UNITS), hidden_size=8, num_layers=1, embedding_size=4,
                                          direction="backward")).eval()
    a = tok(["abc de"], return_tensors="pt")
    b = tok(["xyc de"], return_tensors="pt")  # differs before position 3 only
    with torch.no_grad():
        la = model(**a).hidden_states[1]
        lb = model(**b).hidden_states[1]
        emb = model(**a).hidden_states[0]
    assert torch.equal(la[0, 3:], lb[0, 3:]) and not torch.allclose(la[0, :3], lb[0, :3])
    assert emb.shape[-1] == 8 and torch.all(emb[..., 4:] == 0)  # the narrower embedding, zero-padded


def test_a_module_of_ones_own_is_measured_through_the_runner_unchanged():
    tok = tiny_tokenizer("bert")
    config = ModuleConfig(module="mean-context", kind="decoder", num_hidden_layers=2, hidden_size=16,
                          vocab_size=len(tok))
    torch.manual_seed(0)
    loaded = from_module(MeanContext(config), tok, "mean-context")
    assert (loaded.info.kind, loaded.info.blocks, loaded.info.width) == ("decoder", 2, 16)
    texts = list(TINY_TEXT[:5])
    stack = extract(loaded, texts, progress=False)
    alone = torch.cat([extract(loaded, [t], progress=False) for t in texts], dim=1)
    assert stack.shape == (3, 5, 16) and torch.allclose(stack, alone, atol=1e-6)
    left = extract(loaded, texts, progress=False, padding_side="left")
    assert torch.allclose(stack, left, atol=1e-6)  # pads on either side are masked out: the runner passed the masks
    control = random_init_like(loaded, seed=3)
    assert type(control.model) is MeanContext and control.info.kind == "decoder"
    assert not torch.allclose(extract(control, texts, progress=False), stack)
    with pytest.raises(ValueError, match="not a registered module"):
        save_module(loaded.model, tok, "unused")


def test_a_module_that_returns_the_wrong_layers_is_refused():
    class Short(MeanContext):
        def layers(self, input_ids, attention_mask):
            return super().layers(input_ids, attention_mask)[:-1]

    tok = tiny_tokenizer("bert")
    config = ModuleConfig(module="short", kind="encoder", num_hidden_layers=2, hidden_size=8, vocab_size=len(tok))
    with pytest.raises(ValueError, match="returned 2 layers"):
        extract(from_module(Short(config), tok, "short"), ["a text"], progress=False)


@pytest.mark.parametrize("bad", [dict(kind="rnn"), dict(hidden_size=0), dict(num_hidden_layers=1.5)])
def test_a_bad_module_config_is_refused(bad):
    base = dict(module="lstm-lm", kind="recurrent", num_hidden_layers=1, hidden_size=8, vocab_size=10)
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModuleConfig(**{**base, **bad})


def test_a_saved_lstm_folder_loads_by_path_with_its_recipe_and_gives_the_same_rows(tmp_path):
    folder = save_tiny("char-lstm", tmp_path / "m", seed=2)
    (folder / "homoscope_model.json").write_text(json.dumps({"recipe": "zoo-lstm", "seed": 2}))
    loaded = load_model(str(folder), device="cpu")
    info = loaded.info
    assert (info.kind, info.architecture, info.blocks, info.width) == ("recurrent", "lstm-lm", 2, 32)
    assert (info.recipe, info.seed) == ("zoo-lstm", 2)
    assert config_shape(resolve(str(folder))) == (2, 32)
    texts = list(TINY_TEXT[:4])
    assert torch.equal(extract(loaded, texts, progress=False), extract(tiny_model("char-lstm", 2), texts, progress=False))
    with pytest.raises(ValueError, match="native-head"):
        load_model(str(folder), head=True)


def test_a_module_folder_is_refused_when_it_names_an_unknown_class_or_its_weights_do_not_fit(tmp_path):
    folder = save_tiny("lstm", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "homoscope_module": "gru-lm"}))
    with pytest.raises(ValueError, match="names module 'gru-lm'"):
        load_model(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(ValueError, match="does not fit module 'lstm-lm'"):
        load_model(str(folder))


def test_a_study_takes_lstm_folders_with_word_rows_by_flairs_rule(tmp_path, corpus_file):
    fwd, bwd = save_tiny("lstm", tmp_path / "fwd"), save_tiny("char-lstm", tmp_path / "bwd")
    study = Study(models=[str(fwd), str(bwd), str(save_tiny("bert", tmp_path / "bert"))], corpus=str(corpus_file),
                  sentences=None, unit="word", out=str(tmp_path / "out"), store=str(tmp_path / "store"),
                  measures=["linear_cka"], random_init=True)
    result = run_study(study, progress=False, log=None)
    assert np.isfinite(result.frame["value"]).all()
    assert {"fwd (random-init)", "bwd (random-init)"} <= set(result.controls)
    models = {m["name"]: m for m in result.manifest["models"]}
    assert models["fwd"]["kind"] == models["bwd"]["kind"] == "recurrent"
    assert {k: m["extract"]["pooling"] for k, m in models.items()} == {"fwd": "last", "bwd": "first", "bert": "mean"}
    # a word's row is the state at its last unit (forward) or its first character (backward), as in Flair
    rows = result.rows
    checked = 0
    for name, folder in (("fwd", fwd), ("bwd", bwd)):
        loaded = load_model(str(folder), device="cpu")
        for r in rows[rows.text_index == 2].itertuples():
            enc = loaded.tokenizer([TINY_TEXT[2]], return_offsets_mapping=True, return_tensors="pt")
            spans = enc.pop("offset_mapping")[0].tolist()
            units = [i for i, (s, e) in enumerate(spans) if e > s and s >= r.start and e <= r.end]
            with torch.no_grad():
                layers = loaded.model(enc["input_ids"], enc["attention_mask"]).hidden_states
            at = units[-1] if name == "fwd" else units[0]
            want = torch.stack([h[0, at] for h in layers])
            assert torch.allclose(result.representations[name][:, r.row], want, atol=1e-5)
            checked += 1
    assert checked >= 10


def test_a_study_warns_when_a_model_cuts_many_texts_at_max_length(tmp_path, corpus_file):
    study = Study(models=[str(save_tiny("char-lstm", tmp_path / "chars")), str(save_tiny("bert", tmp_path / "bert"))],
                  corpus=str(corpus_file), sentences=None, unit="word", max_length=40, out=str(tmp_path / "out"),
                  store=str(tmp_path / "store"), measures=["linear_cka"])
    result = run_study(study, progress=False, log=None)
    said = [w for w in result.manifest["warnings"] if "model 'chars' cut" in str(w)]
    assert len(said) == 1 and re.search(r"model 'chars' cut \d+ of 19 texts at 40 of its units \(lstm-lm\); a row "
                                        r"past the cut is dropped for every model: raise max_length \(now 40\)",
                                        str(said[0]))


@pytest.mark.parametrize("change, message", [
    ({"homoscope_module": ["lstm-lm"]}, "names module"),
    ({"options": [1, 2]}, "options=.* must be a table"),
    ({"options": {"directon": "backward", "embedding_size": 32}}, "'directon'.* does not take"),
    ({"max_position_embeddings": "x"}, "max_position_embeddings='x'"),
    ({"hidden_size": 10**13}, "cannot be built"),
    ({"hidden_size": 48}, "does not fit module .lstm-lm."),
])
def test_a_tampered_module_config_is_refused_in_one_line_before_anything_loads(tmp_path, change, message):
    folder = save_tiny("lstm", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        load_model(str(folder))


def test_a_module_folder_without_safetensors_or_tokenizer_is_named(tmp_path):
    folder = save_tiny("lstm", tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        load_model(str(folder))


@pytest.mark.parametrize("returned", [None, "ints"])
def test_layers_that_are_not_float_tensors_are_refused(returned):
    class Odd(MeanContext):
        def layers(self, input_ids, attention_mask):
            return None if returned is None else [input_ids] * 3

    tok = tiny_tokenizer("bert")
    config = ModuleConfig(module="odd", kind="encoder", num_hidden_layers=2, hidden_size=8, vocab_size=len(tok))
    with pytest.raises(ValueError, match="floating-point tensors"):
        extract(from_module(Odd(config), tok, "odd"), ["a text"], progress=False)


def test_a_module_without_parameters_is_refused():
    class Empty(LayeredModule):
        def layers(self, input_ids, attention_mask):
            return [torch.zeros(*input_ids.shape, 4)] * 2

    config = ModuleConfig(module="empty", kind="encoder", num_hidden_layers=1, hidden_size=4, vocab_size=10)
    with pytest.raises(ValueError, match="has no parameters"):
        from_module(Empty(config), tiny_tokenizer("bert"), "empty")


@pytest.mark.parametrize("used, advice", [(40, r"raise max_length \(now 40\)"),
                                          (16, r"16 is the model's own limit .* below max_length=40")])
def test_the_cut_warning_says_what_can_be_raised(used, advice):
    from homoscope.study.run import _warn_cut

    rec = {"info": {"name": "m", "architecture": "t5"}, "extract": {"truncated": 10, "max_length_used": used}}
    with pytest.warns(RuntimeWarning, match=advice):
        _warn_cut(rec, Study(models=["a", "b"], max_length=40), 19)
