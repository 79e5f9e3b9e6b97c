"""One end-to-end check of probes and agreement on a real packaged model (``pytest -m real``).

Uses ``minilm-l6`` (installed on first use) on 200 BBC News sentences, against a tiny random-init
BERT as the control.
"""
from __future__ import annotations

import warnings

import pandas as pd
import pytest

from homoscope.agreement import native_head_agreement, run_agreement, tokenizer_groups
from homoscope.models.tiny import tiny_model


@pytest.mark.real
def test_real_minilm_probe_beats_chance_and_native_heads_refuse_other_tokenizers():
    from homoscope.corpora import load_corpus
    from homoscope.extract import extract
    from homoscope.models import load_model

    corpus = load_corpus("bbc", sentences=200, seed=0)
    minilm = load_model("minilm-l6", device="cpu", auto_install=True)
    tiny = tiny_model("bert", 0)
    stacks = {"minilm-l6": extract(minilm, corpus.texts, max_length=64, progress=False),
              "random-bert": extract(tiny, corpus.texts, max_length=64, progress=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = run_agreement(stacks, corpus, permutations=100)
    probes = res.frames["probes"]
    best = probes[probes.best].set_index("model")
    assert best.loc["minilm-l6", "value"] > best.loc["minilm-l6", "chance"] + 0.2
    assert best.loc["minilm-l6", "value"] > best.loc["random-bert", "value"]
    assert tokenizer_groups({"minilm-l6": minilm, "tiny": tiny}, corpus.texts[:4]) == [["minilm-l6"], ["tiny"]]
    with pytest.raises(ValueError, match="tokenizers differ|head"):
        native_head_agreement({"minilm-l6": minilm, "tiny": tiny_model("bert", 1, head=True)}, corpus.texts[:4])
    assert not pd.isna(res.frames["agreement"].value).any()
