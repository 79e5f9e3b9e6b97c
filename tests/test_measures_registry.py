"""The registry: names, metadata the report and CLI read, compute by name, devices."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from homoscope import measures
from homoscope.measures import (
    MeasureInfo,
    compute,
    get_measure,
    list_measures,
    register,
)
from homoscope.measures.streaming import STREAMING_MEASURES

EXPECTED = {
    "linear_cka",
    "debiased_cka",
    "rbf_cka",
    "minibatch_cka",
    "cca_rho",
    "cca_r2",
    "svcca",
    "pwcca",
    "procrustes",
    "procrustes_distance",
    "mutual_knn",
    "cknna",
    "rsa",
}
VOCABULARY = {"translation", "isotropic_scaling", "orthogonal", "permutation", "invertible_linear"}


def test_all_measures_registered_with_complete_metadata():
    assert set(list_measures()) == EXPECTED
    for name in list_measures():
        info = get_measure(name)
        assert isinstance(info, MeasureInfo) and info.name == name
        assert info.kind in ("similarity", "distance")
        assert isinstance(info.symmetric, bool)
        lo, hi = info.value_range
        assert lo < hi
        assert set(info.invariances) <= VOCABULARY
        assert isinstance(info.min_n, int) and info.min_n >= 2
        assert info.reference and info.description
        params = inspect.signature(info.fn).parameters
        for opt, default in info.options.items():
            assert params[opt].default == default, (name, opt)
        assert info.fn.__doc__ and "Raises" in info.fn.__doc__


def test_the_streamed_measures_are_the_exact_linear_ones():
    streamed = [m for m in list_measures() if get_measure(m).streaming]
    assert streamed == list(STREAMING_MEASURES) == ["linear_cka", "debiased_cka", "cca_rho", "cca_r2", "svcca",
                                                    "pwcca", "procrustes", "procrustes_distance"]


def test_only_distances_say_so_and_only_pwcca_is_asymmetric():
    assert [m for m in list_measures() if get_measure(m).kind == "distance"] == ["procrustes_distance"]
    assert [m for m in list_measures() if not get_measure(m).symmetric] == ["pwcca"]


def test_compute_by_name_equals_direct_call():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(2, 30, 4, generator=g), torch.randn(30, 3, generator=g)
    torch.testing.assert_close(compute("rbf_cka", X, Y, threshold=0.5), measures.rbf_cka(X, Y, threshold=0.5))


def test_register_a_custom_measure():
    def neg_linear(X, Y):
        return -measures.linear_cka(X, Y)

    info = register(MeasureInfo("tmp_neg", neg_linear, "similarity", True, (-1.0, 0.0), (), 2, "none", "test"))
    try:
        assert "tmp_neg" in list_measures()
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.kind = "distance"
        with pytest.raises(ValueError, match="kind must be one of"):
            register(MeasureInfo("bad", neg_linear, "score", True, (0.0, 1.0), (), 2, "", ""))
    finally:
        from homoscope.measures import registry

        registry._REGISTRY.pop("tmp_neg", None)


def test_a_measure_declared_beside_its_code_reaches_the_registry_and_the_report(tmp_path):
    """Adding a measure is one decorated function: its options come from its signature, and the study's
    frame and the report read the declared metadata."""
    from homoscope.measures._meta import measure
    from homoscope.report._measures import resolve_measure_info

    @measure("tmp_sq_cka", kind="similarity", symmetric=True, value_range=(0.0, 1.0), min_n=2,
             reference="test", description="linear CKA squared", family="cka", display_range=(0.0, 0.5))
    def tmp_sq_cka(X, Y, *, power: float = 2.0):
        """Linear CKA to a power. Raises: ValueError as linear_cka."""
        return measures.linear_cka(X, Y) ** power

    try:
        names = list_measures()
        assert names.index("tmp_sq_cka") == names.index("minibatch_cka") + 1  # family order, then declaration
        info = get_measure("tmp_sq_cka")
        assert info.options == {"power": 2.0} and info.fn is tmp_sq_cka
        g = torch.Generator().manual_seed(1)
        X, Y = torch.randn(2, 20, 3, generator=g), torch.randn(20, 4, generator=g)
        torch.testing.assert_close(compute("tmp_sq_cka", X, Y, power=3.0), measures.linear_cka(X, Y) ** 3)
        seen = resolve_measure_info("tmp_sq_cka")
        assert seen is info and seen.colour_range == (0.0, 0.5) and seen.identity == 1.0
        # the study scores it and the report describes it, from the one declaration
        from homoscope.report import write_outputs
        from homoscope.study import score_pairs

        B = X + 0.3 * torch.randn(2, 20, 3, generator=g)
        frame = score_pairs({"a": X, "b": B}, [("a", "b")], ["tmp_sq_cka"], progress=False)
        torch.testing.assert_close(torch.tensor(frame["value"].to_numpy()).view(2, 2),
                                   (measures.linear_cka(X, B) ** 2).double(), rtol=1e-6, atol=1e-7)
        write_outputs(frame, {"study": {"measures": ["tmp_sq_cka"]}}, tmp_path, progress=False, html=False)
        report = (tmp_path / "report.md").read_text()
        assert "linear CKA squared" in report and "`tmp_sq_cka`" in report
    finally:
        from homoscope.measures import registry

        registry._REGISTRY.pop("tmp_sq_cka", None)


def test_numpy_and_list_inputs_and_output_device():
    import numpy as np

    X = np.random.default_rng(0).normal(size=(20, 3))
    Y = X.tolist()
    out = compute("linear_cka", X, Y)
    assert out.item() == pytest.approx(1.0) and out.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_inputs_give_output_on_x_device():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 64, 8, generator=g)
    Y = torch.randn(3, 64, 6, generator=g)
    for name in list_measures():
        cpu = compute(name, X, Y)
        gpu = compute(name, X.cuda().half(), Y.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), compute(name, X.half(), Y), atol=1e-8, rtol=0)
        assert cpu.shape == gpu.shape
