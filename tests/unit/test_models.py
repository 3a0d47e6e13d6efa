"""Model loading: built-in, TorchScript, torch.export, module:factory, and clear failures."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from gputuned.inputs import parse_shape
from gputuned.worker.models import ModelLoadError, build_builtin_model, load_model, one_input

CPU = torch.device("cpu")


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().sum(dim=1) * 2


def doubler() -> nn.Module:
    return Doubler()


def broken() -> nn.Module:
    raise RuntimeError("weights missing")


def test_builtin_model_is_deterministic_and_declares_its_signature():
    model = load_model("resnet-mini", CPU)
    assert model.name == "resnet-mini"
    assert (model.inputs[0].name, model.inputs[0].datatype, model.inputs[0].shape) == ("input", "FP32", (3, 64, 64))
    assert [(o.name, o.datatype, o.shape) for o in model.outputs] == [("logits", "FP32", (10,))]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(build_builtin_model()(x), build_builtin_model()(x))


def test_torchscript_file(tmp_path):
    path = tmp_path / "doubler.pt"
    torch.jit.script(Doubler()).save(str(path))
    model = load_model(str(path), CPU, one_input((4,)))
    assert model.name == "doubler" and model.platform == "pytorch_libtorch"
    assert model.outputs[0].shape == ()
    assert model.module(torch.ones(1, 4)).tolist() == [8.0]


def test_torch_export_archive(tmp_path):
    path = tmp_path / "doubler.pt2"
    torch.export.save(
        torch.export.export(Doubler(), (torch.ones(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path)
    )
    model = load_model(str(path), CPU, one_input((4,)), name="exported")
    assert model.name == "exported" and model.platform == "pytorch_export"
    assert model.module(torch.ones(3, 4)).tolist() == [8.0, 8.0, 8.0]


def test_module_factory_with_an_integer_input():
    model = load_model(f"{__name__}:doubler", CPU, one_input((5,), "INT64"))
    assert model.inputs[0].datatype == "INT64"
    assert model.module(torch.ones(1, 5, dtype=torch.int64)).tolist() == [10.0]


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        ("/nonexistent/model.pt", (4,), "cannot load TorchScript file /nonexistent/model.pt"),
        ("/nonexistent/model.pt2", (4,), "cannot load torch.export archive /nonexistent/model.pt2"),
        ("no_such_module:factory", (4,), "cannot build model no_such_module:factory: ModuleNotFoundError"),
        (f"{__name__}:broken", (4,), "RuntimeError: weights missing"),
        ("not-a-model", (4,), "is neither 'resnet-mini'"),
        (f"{__name__}:doubler", None, "declare its input"),
        ("resnet-mini", (3, 32), "fails on its declared input input FP32[3, 32]"),
    ],
)
def test_a_model_that_cannot_load_is_a_clear_error(spec, shape, message):
    with pytest.raises(ModelLoadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_model(spec, CPU, None if shape is None else one_input(shape))


def test_an_unknown_datatype_is_a_clear_error():
    with pytest.raises(ValueError, match="datatype 'FP8' is not one of"):
        one_input((4,), "FP8")


def test_a_corrupt_torchscript_file_names_the_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match=f"cannot load TorchScript file {path}"):
        load_model(str(path), CPU, one_input((4,)))


def test_parse_shape():
    assert parse_shape("3,224,224") == (3, 224, 224)
    with pytest.raises(ValueError, match="positive"):
        parse_shape("3,0")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_shape("3x224")


assert __name__ in sys.modules  # the factory specs above import this module by name
