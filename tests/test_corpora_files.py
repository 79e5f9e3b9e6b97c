"""User corpus files: .txt, .jsonl, .csv loaders and their error messages."""
from __future__ import annotations

import json
import warnings

import pytest

from homoscope.corpora import load_corpus, load_file


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# --- loaders -------------------------------------------------------------------------------------


def test_txt_one_text_per_line(tmp_path):
    path = _write(tmp_path, "notes.txt", "First  text here.\n\n   \nSecond\ttext.\r\nThird text.\n")
    c = load_file(path)
    assert c.texts == ["First text here.", "Second text.", "Third text."]
    assert c.ids == ["1", "4", "5"]  # 1-based line numbers
    assert c.labels is None and c.doc_ids is None
    assert c.name == "notes" and c.source == "file notes.txt"
    assert c.meta["blank_skipped"] == 2 and c.meta["records"] == 5 and c.meta["format"] == "txt"
    assert len(c.meta["file_sha256"]) == 64
    assert load_file(path, name="mine").name == "mine"


def test_jsonl_with_label_and_doc(tmp_path):
    rows = [
        {"sentence": "Alpha one.", "topic": "a", "doc": "d1"},
        {"sentence": "Beta two.", "topic": "b", "doc": "d1"},
        {"sentence": "Gamma three.", "topic": 7, "doc": "d2"},
    ]
    path = _write(tmp_path, "data.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    c = load_file(path, text_column="sentence", label_column="topic", doc_column="doc")
    assert c.texts == ["Alpha one.", "Beta two.", "Gamma three."]
    assert c.labels == ["a", "b", "7"]
    assert c.doc_ids == ["d1", "d1", "d2"]
    assert c.ids == ["d1#0", "d1#1", "d2#0"]
    plain = load_file(path, text_column="sentence")
    assert plain.labels is None and plain.ids == ["1", "2", "3"]


def test_csv_with_label_column_quotes_and_bom(tmp_path):
    content = '\ufefftext,label,doc\n"Hello, world.",pos,x\n"Two\nlines.",neg,x\n,neg,y\nPlain text.,pos,y\n'
    path = _write(tmp_path, "data.csv", content)
    c = load_file(path, label_column="label")
    assert c.texts == ["Hello, world.", "Two lines.", "Plain text."]
    assert c.labels == ["pos", "neg", "pos"]
    assert c.ids == ["2", "3", "6"]  # the line each row starts on
    assert c.meta["blank_skipped"] == 1 and c.meta["columns"] == ["text", "label", "doc"]
    with_doc = load_file(path, label_column="label", doc_column="doc")
    assert with_doc.ids == ["x#0", "x#1", "y#0"] and with_doc.doc_ids == ["x", "x", "y"]
    assert load_corpus(str(path), sentences=None, label_column="label").texts == c.texts


def test_file_sampling_deterministic_and_warns(tmp_path):
    path = _write(tmp_path, "many.txt", "".join(f"Text number {i}.\n" for i in range(50)))
    a = load_file(path, sentences=10, seed=4)
    assert a.ids == load_file(path, sentences=10, seed=4).ids != load_file(path, sentences=10, seed=5).ids
    assert [int(i) for i in a.ids] == sorted(int(i) for i in a.ids)
    with pytest.warns(UserWarning, match="60 sentences requested but only 50 are available"):
        c = load_file(path, sentences=60)
    assert len(c) == 50
    with pytest.warns(UserWarning, match="1000 sentences requested but only 50"):
        load_corpus(str(path))  # load_corpus keeps its default of 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_corpus(path, sentences=50)) == 50


# --- errors --------------------------------------------------------------------------------------


def test_not_utf8_reports_line_and_byte(tmp_path):
    path = _write(tmp_path, "bad.txt", b"fine line\nsecond line\nbad \xff here\n")
    with pytest.raises(ValueError) as err:
        load_file(path)
    msg = str(err.value)
    assert "is not UTF-8" in msg and "byte 0xff" in msg and "line 3" in msg
    assert "byte 5 of that line" in msg and "byte offset 26 in the file" in msg
    assert "re-save the file as UTF-8" in msg and "\n" not in msg


def test_not_utf8_csv_and_bom_offsets(tmp_path):
    path = _write(tmp_path, "bad.csv", b"\xef\xbb\xbftext\nok\n\xa3 sign\n")
    with pytest.raises(ValueError, match=r"0xa3 at line 3, byte 1 of that line \(byte offset 11 in the file\)"):
        load_file(path)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.txt", "", "is empty"),
        ("blank.txt", "\n   \n\t\n", "holds only blank lines"),
        ("blank.jsonl", "\n\n", "holds only blank lines"),
        ("header.csv", "text,label\n", "has a header but no data rows"),
        ("blanktexts.csv", "text,label\n ,a\n,b\n", "has only blank texts"),
        ("blanktexts.jsonl", '{"text": " "}\n{"text": null}\n', "has only blank texts"),
    ],
)
def test_empty_corpus(tmp_path, name, content, match):
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError, match=match) as err:
        load_file(path)
    assert "give at least one non-blank text" in str(err.value)


def test_missing_text_column_lists_columns(tmp_path):
    csv_path = _write(tmp_path, "c.csv", "sentence,label\nHello there.,a\n")
    with pytest.raises(ValueError, match=r"has no text column 'text'; columns found: 'sentence', 'label'"):
        load_file(csv_path)
    jl = _write(tmp_path, "j.jsonl", '{"body": "Hi.", "y": 1}\n')
    with pytest.raises(ValueError, match=r"has no text column 'text' at line 1; columns found: 'body', 'y'"):
        load_file(jl)
    with pytest.raises(ValueError, match=r"has no label column 'topic'; columns found: 'sentence', 'label'"):
        load_file(csv_path, text_column="sentence", label_column="topic")
    with pytest.raises(ValueError, match=r"has no document id column 'doc' at line 1"):
        load_file(jl, text_column="body", doc_column="doc")


def test_path_errors(tmp_path):
    with pytest.raises(ValueError, match=r"corpus file '.*nope\.txt' does not exist; give the path of a"):
        load_file(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"does not exist.*or 'bbc'"):
        load_corpus("bbcc")
    with pytest.raises(ValueError, match="is a folder"):
        load_corpus(str(tmp_path))
    other = _write(tmp_path, "data.parquet", "x")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.parquet'; supported: \.txt, \.jsonl, \.csv"):
        load_corpus(str(other))
    with pytest.raises(ValueError, match="corpus spec is blank"):
        load_corpus("  ")


def test_format_errors(tmp_path):
    jl = _write(tmp_path, "x.jsonl", '{"text": "Fine."}\n{"text": oops}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_file(jl)
    arr = _write(tmp_path, "y.jsonl", '["text"]\n')
    with pytest.raises(ValueError, match="line 1 is a JSON list, not an object"):
        load_file(arr)
    nested = _write(tmp_path, "z.jsonl", '{"text": {"a": 1}}\n')
    with pytest.raises(ValueError, match="holds dict"):
        load_file(nested)
    ragged = _write(tmp_path, "r.csv", "text,label\nHello, there.,a\n")
    with pytest.raises(ValueError, match="has 3 fields but the header has 2"):
        load_file(ragged)
    nolabel = _write(tmp_path, "n.csv", "text,label\nHello there.,\n")
    with pytest.raises(ValueError, match="label column 'label' is empty in the row at line 2"):
        load_file(nolabel, label_column="label")
    txt = _write(tmp_path, "t.txt", "Hello.\n")
    with pytest.raises(ValueError, match="is a .txt file with one text per line and no columns"):
        load_file(txt, label_column="label")
    with pytest.raises(ValueError, match="sentences=0 must be at least 1"):
        load_file(txt, sentences=0)


# --- values that are not data -------------------------------------------------------------------

_JSONL_OK = '{"text": "First text here.", "label": "a", "doc": "d1"}\n'


@pytest.mark.parametrize("line, column, expected", [
    ('{"text": "Two.", "label": NaN, "doc": "d1"}', "label", "label column 'label' at line 3 holds NaN, a number "
     "that is not finite, not a label; give a string or a finite number"),
    ('{"text": "Two.", "label": "b", "doc": Infinity}', "doc", "document id column 'doc' at line 3 holds Infinity"),
    ('{"text": "Two.", "label": -Infinity, "doc": "d2"}', "label", "label column 'label' at line 3 holds -Infinity"),
    ('{"text": "Two.", "label": 1e999, "doc": "d2"}', "label", "label column 'label' at line 3 holds inf"),
    ('{"text": NaN, "label": "b", "doc": "d2"}', "text", "text column 'text' at line 3 holds NaN, a number that is "
     "not finite, not a text; give the text as a JSON string, or null to skip the record"),
    ('{"text": 42, "label": "b", "doc": "d2"}', "text", "text column 'text' at line 3 holds the number 42, not a "
     'string; write the text as a JSON string ("42") if it is meant, or check text_column'),
])
def test_jsonl_non_finite_and_numeric_text_name_file_line_and_column(tmp_path, line, column, expected):
    path = _write(tmp_path, "data.jsonl", _JSONL_OK + "\n" + line + "\n")  # a blank line 2: line numbers count it
    with pytest.raises(ValueError) as err:
        load_file(path, label_column="label", doc_column="doc")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"corpus file {str(path)!r}: ") and expected in msg, msg


def test_jsonl_strings_that_spell_nan_are_text(tmp_path):
    path = _write(tmp_path, "s.jsonl", _JSONL_OK + '{"text": "NaN", "label": "inf", "doc": 7}\n'
                  '{"text": "x", "label": "b", "doc": 2.0, "other": NaN}\n')
    c = load_file(path, label_column="label", doc_column="doc")
    assert c.texts == ["First text here.", "NaN", "x"] and c.labels == ["a", "inf", "b"]
    assert c.doc_ids == ["d1", "7", "2"]  # finite numbers are ids; a column not named is not read


@pytest.mark.parametrize("row, column, cell, what", [
    ("Two.,nan,d2", "label", "nan", "label"),
    ("Two.,b,-Infinity", "doc", "-Infinity", "document id"),
    (" NaN ,b,d2", "text", "NaN", "text"),
    ("INF,b,d2", "text", "INF", "text"),
])
def test_csv_cells_that_read_as_non_finite_numbers_name_file_line_and_column(tmp_path, row, column, cell, what):
    # the row before spans lines 2-3 (a quoted line break), so the bad row starts on line 4
    path = _write(tmp_path, "table.csv", f'text,label,doc\n"One\ntext.",a,d1\n{row}\n')
    with pytest.raises(ValueError) as err:
        load_file(path, label_column="label", doc_column="doc")
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"corpus file {str(path)!r}: {what} column {column!r} reads {cell!r} in the row at line 4, "
                          f"a missing or non-finite number as pandas and numpy write one, not a {what}; "), msg
    if what == "text":
        assert 'leave the cell empty to skip the row; if the text is meant, give the corpus as a .jsonl file' in msg


def test_csv_other_spellings_are_text(tmp_path):
    path = _write(tmp_path, "t.csv", "text,label\nNA,None\nnull,nano\nInfinite loop.,inf-like\n")
    c = load_file(path, label_column="label")
    assert c.texts == ["NA", "null", "Infinite loop."] and c.labels == ["None", "nano", "inf-like"]
    unread = _write(tmp_path, "u.csv", "text,score\nFine.,nan\n")  # a column that is not named is not read
    assert load_file(unread).texts == ["Fine."]


def test_texts_that_show_nothing_are_blank_and_a_lone_surrogate_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a real text"}\n{"text": "\\u0000\\ufeff\\u200b \\u007f"}\n{"text": "another one"}\n',
                    encoding="utf-8")
    corpus = load_corpus(str(path), sentences=None)
    assert corpus.texts == ["a real text", "another one"] and corpus.meta["blank_skipped"] == 1
    path.write_text('{"text": "a real text"}\n{"text": "half \\ud800 a pair"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"c.jsonl'.*line 2 holds '.ud800', half of a UTF-16 surrogate pair"):
        load_corpus(str(path), sentences=None)
