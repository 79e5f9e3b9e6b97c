"""Fixtures shared by the study tests."""
import pytest

from homoscope.models.tiny import TINY_TEXT


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n".join(TINY_TEXT) + "\n", encoding="utf-8")
    return path
