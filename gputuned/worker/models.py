"""Loading the model a worker serves: the built-in one, a TorchScript file, a torch.export
archive, or a Python `module:factory`, with its declared input shape and dtype.

Every model is run once on a zero batch at load time, so a model that cannot take its
declared input fails at start with the cause, not on the first request; the same run
tells us the outputs' names, dtypes and shapes for the model metadata.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gputuned.datatypes import DATATYPES

BUILTIN_MODEL = "resnet-mini"
BUILTIN_INPUT_SHAPE = (3, 64, 64)

# Open Inference Protocol datatypes <-> torch and numpy dtypes (numpy's names are torch's too).
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    name: (getattr(torch, datatype.numpy), np.dtype(datatype.numpy)) for name, datatype in DATATYPES.items()
}
_TORCH_TO_DATATYPE = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}


class ModelLoadError(Exception):
    """The model could not be loaded or does not accept its declared input."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor of the model's signature; `shape` excludes the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.datatype][0]

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.datatype][1]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}


@dataclass(frozen=True)
class LoadedModel:
    name: str
    module: Any  # a callable: nn.Module, ScriptModule or exported module
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    device: torch.device
    platform: str


class _ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetMini(nn.Module):
    """A small ResNet (stem + 3 stages of residual blocks + linear head) for 3x64x64 images.

    Big enough that batching and threading change its throughput the way they change a
    real CNN's, small enough to serve hundreds of images a second on two CPU cores.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.Sequential(_ResidualBlock(16, 16, 1), _ResidualBlock(16, 32, 2), _ResidualBlock(32, 64, 2))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_builtin_model(seed: int = 0) -> ResNetMini:
    """ResNetMini with deterministic random weights: the same seed gives the same outputs."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ResNetMini()
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def parse_shape(text: str) -> tuple[int, ...]:
    """'3,224,224' -> (3, 224, 224); every dimension a positive integer."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"input shape {text!r} is not comma-separated integers, e.g. 3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input shape {text!r} must list positive dimensions")
    return shape


def _load_module(spec: str, device: torch.device) -> tuple[Any, str, str]:
    """(module on `device`, platform, default name) for a model spec."""
    if spec in ("", BUILTIN_MODEL, "builtin"):
        return build_builtin_model().to(device), "pytorch", BUILTIN_MODEL
    path = Path(spec)
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
            if device.type != "cpu":
                program = torch.export.passes.move_to_device_pass(program, device)  # type: ignore[attr-defined]
            # An exported program keeps the mode it was traced in; it has no .eval().
            return program.module(), "pytorch_export", path.stem
        except Exception as exc:  # any load failure becomes one clear error
            raise ModelLoadError(f"cannot load torch.export archive {path}: {exc}") from exc
    if path.suffix in (".pt", ".pth", ".ts", ".torchscript") or path.exists():
        try:
            return torch.jit.load(str(path), map_location=device).eval(), "pytorch_libtorch", path.stem
        except Exception as exc:  # any load failure becomes one clear error
            raise ModelLoadError(f"cannot load TorchScript file {path}: {exc}") from exc
    module_name, sep, factory_name = spec.partition(":")
    if not sep:
        raise ModelLoadError(f"model {spec!r} is neither '{BUILTIN_MODEL}', an existing .pt/.ts/.pt2 file, nor module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
        module = factory()
        if isinstance(module, nn.Module):
            module = module.to(device).eval()
        return module, "pytorch", factory_name
    except Exception as exc:
        raise ModelLoadError(f"cannot build model {spec}: {type(exc).__name__}: {exc}") from exc


def load_model(
    spec: str,
    device: torch.device,
    input_shape: tuple[int, ...] | None = None,
    input_datatype: str = "FP32",
    name: str | None = None,
    input_name: str = "input",
) -> LoadedModel:
    """Loads, moves to `device`, and runs one zero batch to learn the outputs."""
    if input_datatype not in DATATYPES:
        raise ModelLoadError(f"input dtype {input_datatype!r} is not one of {', '.join(DATATYPES)}")
    module, platform, default_name = _load_module(spec, device)
    if input_shape is None:
        if default_name != BUILTIN_MODEL:
            raise ModelLoadError(f"model {spec}: declare its input shape (e.g. --input-shape 3,224,224)")
        input_shape = BUILTIN_INPUT_SHAPE
    input_spec = TensorSpec(input_name, input_datatype, tuple(input_shape))
    try:
        with torch.inference_mode():
            result = module(torch.zeros((1, *input_shape), dtype=input_spec.torch_dtype, device=device))
    except Exception as exc:
        raise ModelLoadError(
            f"model {spec} fails on its declared input {input_datatype}{list(input_shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    results = result if isinstance(result, (tuple, list)) else (result,)
    outputs = []
    for index, tensor in enumerate(results):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1 or tensor.shape[0] != 1:
            raise ModelLoadError(f"model {spec}: output {index} is not a tensor with a batch dimension")
        if tensor.dtype not in _TORCH_TO_DATATYPE:
            raise ModelLoadError(f"model {spec}: output {index} has unsupported dtype {tensor.dtype}")
        output_name = "logits" if default_name == BUILTIN_MODEL and len(results) == 1 else f"output{index}"
        outputs.append(TensorSpec(output_name, _TORCH_TO_DATATYPE[tensor.dtype], tuple(tensor.shape[1:])))
    return LoadedModel(name or default_name, module, input_spec, tuple(outputs), device, platform)
