"""What a weight fingerprint sees, and where a run keeps its files.

- ``stat`` (the default) reuses a file's cached sha256 while its path, size, modification time, change
  time and inode hold: a file rewritten in place with size and modification time set back is still
  hashed again, because the change time moved;
- ``content`` hashes every weight file on every run, so even a file system that keeps no change time
  cannot hide new weights (a stale store entry would give CKA 1.0 where the truth is lower);
- with ``store`` and ``out`` given, a run writes nothing under the homoscope cache folder: the
  fingerprints' cache lives in the store.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import struct
import time

import numpy as np
import pytest
import torch

from _reliability_common import _own_cache, corpus, tables_only  # noqa: F401
from homoscope.models import file_sha256, fingerprint
from homoscope.models.tiny import save_tiny
from homoscope.study import Study, run_study


def _rewrite_in_place(path) -> None:
    """New values for one float32 tensor of a safetensors file, written over the old bytes: the same size,
    inode and modification time (set back); only the change time moves, as the system keeps it."""
    before = path.stat()
    time.sleep(0.02)  # past the clock tick of the file system's timestamps
    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"
                    and "embeddings" in k)
        start, end = header[name]["data_offsets"]
        fh.seek(8 + size + start)
        values = np.frombuffer(fh.read(end - start), dtype="<f4")
        fh.seek(8 + size + start)
        noise = np.random.default_rng(0).standard_normal(values.shape).astype("<f4")
        fh.write((values + noise).astype("<f4").tobytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_stat_mode_sees_the_change_time_and_content_mode_reads_the_bytes(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    f = tmp_path / "model.safetensors"
    save_file({"embeddings.weight": torch.ones(16, 8), "layer.bias": torch.zeros(8)}, str(f))
    cache = tmp_path / "cache"
    hashed = []
    real = fingerprint._hash_file
    monkeypatch.setattr(fingerprint, "_hash_file", lambda p: hashed.append(p) or real(p))
    first = file_sha256(f, cache=cache)
    assert file_sha256(f, cache=cache) == first and len(hashed) == 1  # stat: the cached digest
    assert file_sha256(f, mode="content", cache=cache) == first and len(hashed) == 2  # content: read again
    assert len(list(cache.glob("*.json"))) == 1 and not (tmp_path / "home").exists()
    _rewrite_in_place(f)
    assert file_sha256(f, cache=cache) != first  # the change time moved: hashed again
    with pytest.raises(ValueError, match="mode='mtime' is not one of stat, content"):
        file_sha256(f, mode="mtime")


def test_content_mode_sees_weights_changed_in_place_and_a_run_keeps_its_files_in_store_and_out(
        tmp_path, corpus, monkeypatch, tables_only):
    bert, gpt2 = save_tiny("bert", tmp_path / "m" / "bert", seed=0), save_tiny("gpt2", tmp_path / "m" / "gpt2", seed=0)
    store, out = tmp_path / "store", tmp_path / "my results"
    study = Study(models=[str(bert), str(gpt2)], corpus=str(corpus), sentences=None, out=str(out),
                  store=str(store), measures=["linear_cka"], outliers=False, max_length=16)
    first = run_study(study, progress=False, log=None)
    assert not (tmp_path / "home").exists()  # nothing under the cache folder: the fingerprints are in the store
    assert len(list((store / "fingerprints").glob("*.json"))) == 2
    assert first.manifest["commands"] == [f"homoscope run {shlex.quote(str(out / 'study.toml'))}"]
    assert first.manifest["commands"][0].endswith("results/study.toml'")  # quoted: the folder has a space

    _rewrite_in_place(bert / "model.safetensors")
    # a file system that keeps no change time: stat mode sees the same path, size and modification time
    monkeypatch.setattr(fingerprint, "_stat_key", lambda p: {"path": str(p), "size": p.stat().st_size,
                                                             "mtime_ns": p.stat().st_mtime_ns})
    stale = run_study(study, progress=False, log=None)
    assert [m["reused"] for m in stale.manifest["models"]] == [True, True]
    np.testing.assert_array_equal(stale.frame.value, first.frame.value)  # the old weights' numbers

    fresh = run_study(dataclasses.replace(study, fingerprint="content"), progress=False, log=None)
    assert [m["reused"] for m in fresh.manifest["models"]] == [False, True]
    truth = run_study(dataclasses.replace(study, store=str(tmp_path / "new store")), progress=False, log=None)
    np.testing.assert_allclose(fresh.frame.value, truth.frame.value, rtol=0, atol=1e-6)
    assert np.abs(fresh.frame.value.to_numpy() - first.frame.value.to_numpy()).max() > 1e-3


def test_a_tokenizer_cut_shorter_is_extracted_again(tmp_path, corpus, tables_only):
    """The length texts are cut to (max_length capped at the tokenizer's model_max_length) is in the key."""
    bert, gpt2 = save_tiny("bert", tmp_path / "m" / "bert", seed=0), save_tiny("gpt2", tmp_path / "m" / "gpt2", seed=0)
    study = Study(models=[str(bert), str(gpt2)], corpus=str(corpus), sentences=None, out=str(tmp_path / "out"),
                  store=str(tmp_path / "store"), measures=["linear_cka"], outliers=False, max_length=16)
    first = run_study(study, progress=False, log=None)
    config = bert / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 6}))
    again = run_study(study, progress=False, log=None)
    assert [m["reused"] for m in again.manifest["models"]] == [False, True]
    assert again.manifest["models"][0]["extract"]["max_length_used"] == 6
    assert first.manifest["run"] != again.manifest["run"]
