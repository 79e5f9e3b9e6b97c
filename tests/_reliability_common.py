"""Fixtures shared by the bad-input and reliability tests: tiny models, a small corpus, a study."""
from pathlib import Path

import pytest

from homoscope.models.tiny import TINY_TEXT, tiny_model
from homoscope.study import Study


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMOSCOPE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def models():
    return {"bert": tiny_model("bert", seed=0), "gpt2": tiny_model("gpt2", seed=0)}


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TINY_TEXT[:8]) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def tables_only(monkeypatch):
    """Write only the results tables (no figures, no report) where the report is not under test:
    the numbers are what these tests compare, and the figures cost seconds per run."""
    from homoscope import report
    from homoscope.report.folder import ResultsFolder
    from homoscope.report.tables import write_tables

    def write_outputs(frame, manifest, out, *, run_files=None, **_kw):
        with ResultsFolder(out) as folder:  # the run's swap, with the tables, manifest and run files only
            staging = folder.stage()
            write_tables(frame, staging, run=manifest.get("run"))
            report.write_manifest(manifest, staging)
            for name, data in (run_files or {}).items():
                (staging / name).write_bytes(data)
            folder.commit()
        return {"tables": [Path(out) / "similarity.parquet", Path(out) / "similarity.csv"]}

    monkeypatch.setattr(report, "write_outputs", write_outputs)


def make_study(tmp_path: Path, corpus: Path, **kw) -> Study:
    """A two-model tiny study writing into ``tmp_path`` (out, store), with overrides ``kw``."""
    base = {"models": ["bert", "gpt2"], "corpus": str(corpus), "sentences": None, "out": str(tmp_path / "out"),
            "store": str(tmp_path / "store"), "measures": ["linear_cka"], "outliers": False}
    base.update(kw)
    return Study(**base)
