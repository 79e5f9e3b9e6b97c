"""Word maps on the real packaged tokenizers (``pytest -m real``; skipped where a model is not assembled)."""
import pytest

from homoscope.extract.words import encode_words, plan_words

pytestmark = pytest.mark.real

TEXTS = [
    "census in 1850 was 63,700",
    "  Héllo,\tworld...  prices rose 3.5% in 2024 (a record) — reportedly.",
]


@pytest.mark.parametrize("name", ["minilm-l6", "mpnet-base", "smollm2-135m", "gemma3-270m"])
@pytest.mark.parametrize("punctuation", ["attach", "split"])
def test_every_word_has_its_own_characters(name, punctuation):
    from transformers import AutoTokenizer

    from homoscope.models import is_assembled, resolve

    if not is_assembled(name):
        pytest.skip(f"{name} is not assembled")
    tok = AutoTokenizer.from_pretrained(resolve(name).location, local_files_only=True)
    plan = plan_words(TEXTS, punctuation=punctuation)
    enc = encode_words(tok, TEXTS, plan, max_length=128, name=name)
    assert all(enc.covered), enc.uncovered
    per_text = plan.per_text()
    for ti, text in enumerate(TEXTS):
        offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
        for wi, group in zip(per_text[ti], enc.groups[ti]):
            s, e = plan.spans[ti][wi]
            covered = "".join(text[a:b] for a, b in (offsets[t] for t in group)).strip()
            # the group's characters hold the word (a straddling token may add a neighbour's characters)
            assert text[s:e] in covered, (name, text[s:e], covered)
    if punctuation == "attach":
        assert [len(g) >= 1 for g in enc.groups[0]] == [True] * 5
