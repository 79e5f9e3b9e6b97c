"""Word and token units: words as character spans, token -> word maps from offsets, aligned rows."""
import json

import pandas as pd
import pytest
import torch

from homoscope.extract import extract, extract_rows, outlier_report
from homoscope.extract.words import (
    check_same_tokens,
    encode_tokens,
    encode_words,
    plan_tokens,
    plan_words,
    sample_rows,
    split_words,
    word_groups,
    word_map,
)
from homoscope.models.tiny import TINY_TEXT, tiny_model, tiny_tokenizer
from homoscope.study import Study, extract_model, run_study

CENSUS = "census in 1850 was 63,700"
CENSUS_WORDS = ["census", "in", "1850", "was", "63,700"]


# ------------------------------------------------------------------ tokenizers built by hand
def _fast(tok, **kw):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, **kw)


def _merged(pieces, merges):
    vocab: dict[str, int] = {}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab


def byte_level_bpe():
    """GPT-2 / SmolLM style: byte-level BPE, digits one by one, offsets keep the leading space."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces = list("censuiwa18506370,") + ["\u0120"]  # \u0120 is the byte-level space
    merges = [("c", "e"), ("ce", "n"), ("s", "u"), ("su", "s"), ("\u0120", "i"), ("\u0120i", "n"),
              ("\u0120", "w"), ("\u0120w", "a"), ("\u0120wa", "s")]
    tok = Tokenizer(models.BPE(vocab=_merged(pieces, merges), merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return _fast(tok, eos_token=None)


def metaspace_bpe():
    """SentencePiece / Llama style: Metaspace BPE with ``<s>`` in front; '\u2581' is a bare space."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    m = "\u2581"
    pieces = ["<s>"] + list("censuiwa18506370,") + [m]
    merges = [(m, "c"), (m + "c", "e"), (m + "ce", "n"), (m + "cen", "s"), ("u", "s"), (m, "i"), (m + "i", "n"),
              ("1", "8"), ("5", "0"), (m, "w"), (m + "w", "a"), (m + "wa", "s"), ("6", "3"), ("7", "0")]
    tok = Tokenizer(models.BPE(vocab=_merged(pieces, merges), merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=m, prepend_scheme="first")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return _fast(tok, bos_token="<s>")


def _group_strings(tok, text, groups):
    enc = tok(text, return_offsets_mapping=True)
    return ["".join(text[s:e] for s, e in (enc["offset_mapping"][t] for t in g)).strip() for g in groups]


# ------------------------------------------------------------------ words and maps
def test_split_words_rules():
    assert [CENSUS[s:e] for s, e in split_words(CENSUS)] == CENSUS_WORDS
    split = [CENSUS[s:e] for s, e in split_words(CENSUS, "split")]
    assert split == ["census", "in", "1850", "was", "63", ",", "700"]
    t = "  Héllo,\tworld...  (30%)\n"
    assert [t[s:e] for s, e in split_words(t)] == ["Héllo,", "world...", "(30%)"]
    assert [t[s:e] for s, e in split_words(t, "split")] == ["Héllo", ",", "world", ".", ".", ".", "(", "30", "%", ")"]
    assert split_words("   ") == []
    with pytest.raises(ValueError, match="punctuation='glue'"):
        split_words(CENSUS, "glue")


def test_leading_space_offsets_give_the_same_map():
    words = split_words("the cat")
    assert word_map([(0, 3), (3, 7)], words) == [(0,), (1,)]
    assert word_map([(0, 3), (4, 7)], words) == [(0,), (1,)]


def test_special_bare_space_and_straddling_tokens():
    words = split_words("ab cd")  # (0, 2), (3, 5)
    # [CLS]=(0,0) special, a bare space token, a token straddling both words
    m = word_map([(0, 0), (0, 1), (1, 4), (2, 3), (4, 5)], words, special_mask=[1, 0, 0, 0, 0])
    assert m == [(), (0,), (0, 1), (), (1,)]
    assert word_groups(m, 2) == [[1, 2], [2, 4]]


@pytest.mark.parametrize("kind", ["byte_bpe", "metaspace", "wordpiece"])
def test_census_gives_five_words_with_expected_groups(kind):
    tok = {"byte_bpe": byte_level_bpe, "metaspace": metaspace_bpe,
           "wordpiece": lambda: tiny_tokenizer("bert")}[kind]()
    expected = {
        # cen sus Ġin Ġ 1 8 5 0 Ġwas Ġ 6 3 , 7 0 0
        "byte_bpe": [[0, 1], [2], [4, 5, 6, 7], [8], [10, 11, 12, 13, 14, 15]],
        # <s> ▁cens us ▁in ▁ 18 50 ▁was ▁ 63 , 70 0
        "metaspace": [[1, 2], [3], [5, 6], [7], [9, 10, 11, 12]],
        # [CLS] c ##e ##n ##s ##u ##s in 1 ##8 ##5 ##0 was 6 ##3 , 7 ##0 ##0 [SEP]
        "wordpiece": [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10, 11], [12], [13, 14, 15, 16, 17, 18]],
    }[kind]
    plan = plan_words([CENSUS])
    enc = encode_words(tok, [CENSUS], plan, max_length=64, name=kind)
    assert len(plan.rows) == 5 and enc.covered == [True] * 5
    assert enc.groups == [expected]
    assert _group_strings(tok, CENSUS, expected) == CENSUS_WORDS
    # bare-space tokens and special tokens belong to no word
    in_words = {t for g in expected for t in g}
    toks = tok.convert_ids_to_tokens(enc.ids[0])
    for t, piece in enumerate(toks):
        if t not in in_words:
            assert piece in ("\u0120", "\u2581", "<s>", "[CLS]", "[SEP]"), (t, piece)


def test_truncated_words_are_uncovered():
    tok = tiny_tokenizer("bert")
    plan = plan_words([CENSUS])
    # [CLS] + 10 tokens + [SEP]: "census" (6) "in" (1) "1850" cut after 3 of its 4 tokens
    enc = encode_words(tok, [CENSUS], plan, max_length=12)
    assert enc.covered == [True, True, False, False, False] and enc.truncated == 1
    assert enc.uncovered == [2, 3, 4]


def test_plan_sampling_is_deterministic_and_ordered():
    texts = list(TINY_TEXT)
    full = plan_words(texts, max_rows=0)
    a = plan_words(texts, max_rows=30, seed=3)
    b = plan_words(texts, max_rows=30, seed=3)
    c = plan_words(texts, max_rows=30, seed=4)
    assert len(a.rows) == 30 and a.rows == b.rows and a.digest() == b.digest()
    assert a.rows != c.rows and a.digest() != c.digest()
    assert list(a.rows) == sorted(a.rows) and set(a.rows) <= set(full.rows)
    assert full.total == len(full.rows) == sum(len(t.split()) for t in texts)
    assert plan_words(texts, punctuation="split").digest() != full.digest()
    assert list(sample_rows(5, 10, 0)) == [0, 1, 2, 3, 4]
    table = a.row_table(texts)
    assert list(table.columns) == ["row", "text_index", "text_id", "word_index", "start", "end", "word"]
    assert all(texts[r.text_index][r.start:r.end] == r.word for r in table.itertuples())


def test_slow_tokenizer_names_the_model():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="model 'old-bert' has a slow tokenizer"):
        encode_words(Slow(), [CENSUS], plan_words([CENSUS]), 64, name="old-bert")
    with pytest.raises(ValueError, match="model 'old-bert' has a slow tokenizer"):
        encode_tokens(Slow(), [CENSUS], 64, name="old-bert")


# ------------------------------------------------------------------ extraction
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_word_rows_do_not_depend_on_batch_composition(kind):
    m = tiny_model(kind, seed=0)
    texts = [CENSUS] + list(TINY_TEXT[:5])
    plan = plan_words(texts)
    enc = encode_words(m.tokenizer, texts, plan, 64)
    assert all(enc.covered)
    together = extract_rows(m, enc.ids, enc.special, enc.groups, batch_tokens=8192, progress=False)
    alone = extract_rows(m, enc.ids, enc.special, enc.groups, batch_tokens=max(map(len, enc.ids)), progress=False)
    # the census text alone, then with the others in one padded batch
    only = extract_rows(m, enc.ids[:1], enc.special[:1], enc.groups[:1], progress=False)
    assert together.shape == (3, len(plan.rows), 32)
    assert torch.allclose(together, alone, atol=1e-5, rtol=0), (together - alone).abs().max()
    assert torch.allclose(only, together[:, :5], atol=1e-5, rtol=0), (only - together[:, :5]).abs().max()
    left = extract_rows(m, enc.ids, enc.special, enc.groups, padding_side="left", progress=False)
    assert torch.allclose(left, together, atol=1e-4, rtol=0)


def test_word_pooling_modes_and_sentence_equivalence():
    m = tiny_model("gpt2", seed=0)
    plan = plan_words([CENSUS])
    enc = encode_words(m.tokenizer, [CENSUS], plan, 64)
    # one group holding every content token = the sentence mean
    content = [[p for p, s in enumerate(enc.special[0]) if not s]]
    whole = extract_rows(m, enc.ids, enc.special, [content], progress=False)
    sent = extract(m, [CENSUS], progress=False)
    assert torch.allclose(whole[:, 0], sent[:, 0], atol=1e-5)
    first = extract_rows(m, enc.ids, enc.special, enc.groups, pooling="first", progress=False)
    last = extract_rows(m, enc.ids, enc.special, enc.groups, pooling="last", progress=False)
    mean = extract_rows(m, enc.ids, enc.special, enc.groups, pooling="mean", progress=False)
    assert torch.allclose(first[:, 1], last[:, 1]) and torch.allclose(mean[:, 1], first[:, 1])  # "in": one token
    assert not torch.allclose(first[:, 0], last[:, 0])
    with pytest.raises(ValueError, match="pooling='cls'"):
        extract_rows(m, enc.ids, enc.special, enc.groups, pooling="cls", progress=False)
    with pytest.raises(ValueError, match="no row"):
        extract_rows(m, enc.ids, enc.special, [[]], progress=False)


def test_outlier_report_finds_the_dimension_and_the_row():
    x = torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(0))
    x[1, :, 3] *= 100
    x[1, 7] *= 1000
    rep = outlier_report(x, labels=[f"r{i}" for i in range(50)])
    assert rep[1]["top_dim"] == 3 and rep[1]["top_dim_share"] > 0.9
    assert rep[1]["max_norm_row"] == 7 and rep[1]["max_norm_label"] == "r7" and rep[1]["norm_ratio"] > 100
    assert rep[0]["top_dim_share"] < 0.5
    assert outlier_report(x, rows=[0, 1, 2])[1]["max_norm_row"] in (0, 1, 2)


def test_outlier_moments_over_shards_equal_the_whole_stack_and_leave_the_input_alone():
    from homoscope.extract.outliers import OutlierMoments

    x = torch.randn(3, 90, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10 + 1e3
    before = x.clone()
    acc = OutlierMoments()
    for part in (x[:, :7], x[:, 7:50], x[:, 50:]):
        acc.update(part)
    assert torch.equal(x, before)
    torch.testing.assert_close(acc.mean, x.mean(1), rtol=0, atol=1e-10)
    torch.testing.assert_close(acc.m2 / acc.n, x.var(1, unbiased=False), rtol=1e-10, atol=0)
    torch.testing.assert_close(torch.cat(acc.norms, 1), x.norm(dim=2), rtol=1e-12, atol=0)
    assert acc.report() == [pytest.approx(r, rel=1e-12) for r in outlier_report(x)]


# ------------------------------------------------------------------ study
@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n".join(list(TINY_TEXT[:8]) + [CENSUS]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models():
    return {"bert": tiny_model("bert", seed=0), "gpt2": tiny_model("gpt2", seed=0), "llama": tiny_model("llama", seed=0)}


@pytest.fixture(scope="module")
def word_result(tmp_path_factory, corpus_file, models):
    out = tmp_path_factory.mktemp("words")
    study = Study(models=list(models), corpus=str(corpus_file), sentences=None, out=str(out / "out"),
                  store=str(out / "store"), measures=["linear_cka"], unit="word", pooling="last", max_length=24)
    return run_study(study, progress=False, loaded_models=models, log=None)


def test_word_study_rows_aligned_and_reported(word_result, models):
    r = word_result
    texts = list(TINY_TEXT[:8]) + [CENSUS]
    plan = plan_words(texts)
    rows = r.manifest["rows"]
    # max_length=24 truncates the long texts (for gpt2), so some words are dropped for all models alike
    assert rows["dropped_words"] > 0 and rows["n"] == plan.total - rows["dropped_words"]
    assert max(rows["dropped_by_model"].values()) <= rows["dropped_words"]
    n = rows["n"]
    assert {s.shape[1] for s in r.representations.values()} == {n}
    assert (r.frame["n"] == n).all() and (r.frame["unit"] == "word").all()
    table = pd.read_csv(r.out / "rows.csv", keep_default_na=False)
    assert len(table) == n and list(table["row"]) == list(range(n))
    assert table["word"].tolist()[-5:] == CENSUS_WORDS
    manifest = json.loads((r.out / "manifest.json").read_text())
    for m in manifest["models"]:
        assert m["extract"]["dropped_words"] == rows["dropped_by_model"][m["name"]]
        assert len(m["outliers"]) == models[m["name"]].model.config.num_hidden_layers + 1
        assert {"top_dim_share", "max_norm_row", "max_norm_label"} <= set(m["outliers"][0])
    # no stored row of a dropped word leaks: every kept row is non-zero for every model
    for s in r.representations.values():
        assert (s.abs().sum(dim=2) > 0).all()


def test_word_and_sentence_stacks_never_collide(word_result, corpus_file, models, tmp_path):
    store = word_result.manifest["study"]["store"]
    again = run_study(Study.from_toml(word_result.out / "study.toml"), progress=False, loaded_models=models, log=None)
    assert all(m["reused"] for m in again.manifest["models"])
    pd.testing.assert_frame_equal(again.frame, word_result.frame)
    s = Study(models=list(models), corpus=str(corpus_file), sentences=None, out=str(tmp_path / "s"), store=store,
              measures=["linear_cka"], max_length=24)
    sent = run_study(s, progress=False, loaded_models=models, log=None)
    assert not any(m["reused"] for m in sent.manifest["models"])
    keys = {m["store_key"] for m in sent.manifest["models"]} & {m["store_key"] for m in again.manifest["models"]}
    assert not keys


def test_token_unit_needs_identical_tokenizers(corpus_file, models, tmp_path):
    same = {"a": models["bert"], "b": tiny_model("bert", seed=1)}
    study = Study(models=list(same), corpus=str(corpus_file), sentences=None, out=str(tmp_path / "tok"),
                  store=str(tmp_path / "store"), measures=["linear_cka"], unit="token", max_rows=50)
    r = run_study(study, progress=False, loaded_models=same, log=None)
    assert r.manifest["rows"]["n"] == 50 and (r.frame["unit"] == "token").all()
    assert "[CLS]" not in set(r.rows["token"])
    diff = {"a": models["bert"], "g": models["gpt2"]}
    study = Study(models=list(diff), corpus=str(corpus_file), sentences=None, out=str(tmp_path / "tok2"),
                  store=str(tmp_path / "store"), measures=["linear_cka"], unit="token")
    with pytest.raises(ValueError, match="identical token sequences.*unit='word'"):
        run_study(study, progress=False, loaded_models=diff, log=None)


def test_token_plan_with_special_positions():
    tok = tiny_tokenizer("bert")
    _, tokens = encode_tokens(tok, [CENSUS], 64, include_special=True)
    assert tokens[0][0] == "[CLS]" and tokens[0][-1] == "[SEP]"
    _, tokens2 = encode_tokens(tok, [CENSUS], 64)
    assert len(tokens2[0]) == len(tokens[0]) - 2
    plan = plan_tokens(tokens2, reference="x")
    check_same_tokens(plan, tokens2, "y")
    with pytest.raises(ValueError, match="split text 0 differently"):
        check_same_tokens(plan, tokens, "y")


def test_study_validation_for_units():
    with pytest.raises(ValueError, match="pooling='cls' does not apply to unit='word'"):
        Study(models=["a", "b"], unit="word", pooling="cls").validate()
    with pytest.raises(ValueError, match="unit='phrase' is not one of sentence, word, token"):
        Study(models=["a", "b"], unit="phrase").validate()
    with pytest.raises(ValueError, match="punctuation='x'"):
        Study(models=["a", "b"], unit="word", punctuation="x").validate()
    with pytest.raises(ValueError, match="max_rows=-1"):
        Study(models=["a", "b"], unit="word", max_rows=-1).validate()


def test_extract_model_word_unit_directly(tmp_path, corpus_file):
    from homoscope.corpora import load_corpus
    from homoscope.extract import RepresentationStore

    corpus = load_corpus(str(corpus_file), sentences=None)
    m = tiny_model("llama", seed=0)
    study = Study(models=["a", "b"], unit="word", max_rows=20, seed=1)
    stack, rec = extract_model(study, "llama", "<mem>", corpus, RepresentationStore(tmp_path), torch.device("cpu"),
                               progress=False, loaded=m)
    assert stack.shape == (3, 20, 32) and rec["extract"]["rows"] == 20 and rec["plan"].digest()
    stats = rec["extract"]
    assert stats["texts_run"] <= len(corpus) and stats["dropped_words"] == len(rec["uncovered"])
