"""Loading the model a worker serves, and its signature: the built-in one, a TorchScript
file, a torch.export archive, or a Python `module:factory`.

A model takes one or more named inputs, called positionally in the order of its signature.
The signature comes from the command line (`--input`), else from the model: a factory's
module may carry a `gputuned_signature` (a plain dict, so the factory needs no gputuned
import), an exported program carries its placeholders' names, dtypes and dynamic
dimensions; a model with none takes one input of `--input-shape`. A dimension of -1 is the
sequence: every variable input of a request has the same length, at most `max_length`,
and the worker pads a batch of different lengths to its longest request. An input marked
`mask` (by default one named `attention_mask`) is the attention mask, which the worker
builds: 1 over a request's own tokens, 0 over the padding; a client may leave it out.

Every model is run at load time on a zero batch (for a variable one, at one token and at
the longest length it takes), so a model that cannot take its declared input
fails at start with the cause, not on the first request; the same runs tell us the
outputs' names, dtypes and shapes for the model metadata, and which output dimensions
follow the sequence (those are returned to each request at its own length).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gputuned.datatypes import DATATYPES
from gputuned.inputs import MASK_NAME, VARIABLE, parse_input_text

BUILTIN_MODEL = "resnet-mini"
BUILTIN_INPUT_SHAPE = (3, 64, 64)

# Open Inference Protocol datatypes <-> torch and numpy dtypes (BF16: numpy holds its raw words).
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    name: (getattr(torch, datatype.torch_name), np.dtype(datatype.numpy)) for name, datatype in DATATYPES.items()
}
_TORCH_TO_DATATYPE = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}


class ModelLoadError(Exception):
    """The model could not be loaded, has no usable signature, or does not accept it."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor of the model's signature; `shape` excludes the batch dimension, and -1
    (VARIABLE) marks the sequence. `mask`: the attention mask, built by the worker."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    mask: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.datatype][0]

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.datatype][1]

    @property
    def variable(self) -> bool:
        return VARIABLE in self.shape

    @property
    def sequence_axis(self) -> int:
        """The axis of a batch of this tensor (batch first) that follows the sequence; 0 for a fixed shape."""
        return 1 + self.shape.index(VARIABLE) if self.variable else 0

    def at_length(self, length: int) -> tuple[int, ...]:
        """The shape for a request of `length` tokens (the shape itself when fixed)."""
        return tuple(length if d == VARIABLE else d for d in self.shape)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}


@dataclass(frozen=True)
class LoadedModel:
    name: str
    module: Any  # a callable: nn.Module, ScriptModule or exported module, called with the inputs in order
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    device: torch.device
    platform: str
    max_length: int = 0  # the longest sequence a variable-length model takes; 0: fixed shapes

    @property
    def variable(self) -> bool:
        return self.max_length > 0


@dataclass(frozen=True)
class Signature:
    """A model's inputs and the longest sequence it takes (0: fixed shapes)."""

    inputs: tuple[TensorSpec, ...]
    max_length: int = 0
    output_names: tuple[str, ...] = ()  # the model's own names for its outputs; else output0, output1...


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


def one_input(shape: tuple[int, ...], datatype: str = "FP32", name: str = "input") -> Signature:
    """The signature of a model that takes one tensor of a fixed shape."""
    if datatype not in DATATYPES:
        raise ValueError(f"input {name}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    return Signature((TensorSpec(name, datatype, shape),))


def parse_input(text: str) -> TensorSpec:
    """An input of the signature from its text form (gputuned/inputs.py)."""
    name, datatype, shape, mask = parse_input_text(text)
    return TensorSpec(name, datatype, shape, mask)


def checked_signature(inputs: Sequence[TensorSpec], max_length: int, source: str, output_names: Sequence[str] = ()) -> Signature:
    """The signature, or ModelLoadError saying what is wrong with it."""
    if not inputs:
        raise ModelLoadError(f"{source}: a model takes at least one input")
    names = [spec.name for spec in inputs]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{source}: input names repeat: {', '.join(names)}")
    variable = [spec for spec in inputs if spec.variable]
    for spec in inputs:
        if spec.shape.count(VARIABLE) > 1:
            raise ModelLoadError(f"{source}: input {spec.name} has several -1 dimensions; only the sequence may vary")
        if spec.mask and not spec.variable:
            raise ModelLoadError(f"{source}: the mask {spec.name} must follow the sequence (a -1 dimension)")
        if spec.mask and spec.datatype not in ("INT64", "INT32", "BOOL", "FP32", "FP16", "BF16"):
            raise ModelLoadError(f"{source}: the mask {spec.name} cannot be {spec.datatype}")
    if variable and max_length < 1:
        raise ModelLoadError(
            f"{source}: inputs {', '.join(s.name for s in variable)} vary in length; give the longest (--max-length)"
        )
    if variable and all(spec.mask for spec in variable):
        raise ModelLoadError(f"{source}: only the mask varies in length; a request's length must come from its own input")
    if len(set(output_names)) != len(output_names) or not all(isinstance(n, str) and n for n in output_names):
        raise ModelLoadError(f"{source}: output names must be distinct non-empty strings: {list(output_names)}")
    return Signature(tuple(inputs), max_length if variable else 0, tuple(output_names))


def declared_signature(declaration: Any, source: str) -> Signature:
    """A factory's `gputuned_signature`: {"inputs": [{"name", "datatype", "shape", "mask"?}],
    "max_length"?, "outputs"?: [names]}."""
    if not isinstance(declaration, dict) or not isinstance(declaration.get("inputs"), list):
        raise ModelLoadError(f"{source}: gputuned_signature must be a dict with a list of 'inputs'")
    inputs = []
    for entry in declaration["inputs"]:
        try:
            shape = ",".join(str(d) for d in entry["shape"])
            text = f"{entry['name']}:{entry['datatype']}:{shape}" + (":mask" if entry.get("mask") else "")
            inputs.append(parse_input(text))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: gputuned_signature input {entry!r}: {exc}") from None
    outputs = declaration.get("outputs", [])
    if not isinstance(outputs, list):
        raise ModelLoadError(f"{source}: gputuned_signature's 'outputs' must be a list of names")
    return checked_signature(inputs, int(declaration.get("max_length", 0)), source, outputs)


def export_signature(program: Any, source: str) -> Signature:
    """An exported program's inputs: its user inputs' names and dtypes, a dynamic dimension
    past the batch as the sequence, and the upper bound torch.export recorded for it as the
    longest length."""
    names = list(program.graph_signature.user_inputs)
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    inputs, longest = [], 0
    for name in names:
        value = placeholders[name].meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.dtype not in _TORCH_TO_DATATYPE:
            raise ModelLoadError(f"{source}: input {name} is not a tensor with a batch dimension of a supported dtype")
        dims = []
        for dim in value.shape[1:]:
            if isinstance(dim, int):
                dims.append(dim)
                continue
            dims.append(VARIABLE)
            bound = program.range_constraints.get(dim.node.expr)
            upper = getattr(bound, "upper", None)
            if upper is not None and str(upper) not in ("oo", "int_oo"):
                longest = max(longest, int(upper))
        inputs.append(TensorSpec(name, _TORCH_TO_DATATYPE[value.dtype], tuple(dims), mask=name == MASK_NAME))
    return checked_signature(inputs, longest, source)


def _load_module(spec: str, device: torch.device) -> tuple[Any, str, str, Signature | None]:
    """(module on `device`, platform, default name, the signature it carries or None) for a model spec."""
    if spec in ("", BUILTIN_MODEL, "builtin"):
        return (
            build_builtin_model().to(device),
            "pytorch",
            BUILTIN_MODEL,
            Signature(one_input(BUILTIN_INPUT_SHAPE).inputs, output_names=("logits",)),
        )
    path = Path(spec)
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
            if device.type != "cpu":
                program = torch.export.passes.move_to_device_pass(program, device)  # type: ignore[attr-defined]
            # An exported program keeps the mode it was traced in; it has no .eval().
            module = program.module()
        except Exception as exc:  # any load failure becomes one clear error
            raise ModelLoadError(f"cannot load torch.export archive {path}: {exc}") from exc
        return module, "pytorch_export", path.stem, export_signature(program, str(path))
    if path.suffix in (".pt", ".pth", ".ts", ".torchscript") or path.exists():
        try:
            return torch.jit.load(str(path), map_location=device).eval(), "pytorch_libtorch", path.stem, None
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
    except Exception as exc:
        raise ModelLoadError(f"cannot build model {spec}: {type(exc).__name__}: {exc}") from exc
    declaration = getattr(module, "gputuned_signature", None)
    return module, "pytorch", factory_name, None if declaration is None else declared_signature(declaration, spec)


def probe_inputs(signature: Signature, length: int, device: torch.device) -> list[torch.Tensor]:
    """A batch of one at `length`: zeros, and ones in the mask (every token real)."""
    tensors = []
    for spec in signature.inputs:
        fill = torch.ones if spec.mask else torch.zeros
        tensors.append(fill((1, *spec.at_length(length)), dtype=spec.torch_dtype, device=device))
    return tensors


def _output_specs(spec: str, results_by_length: dict[int, tuple[Any, ...]], names: Sequence[str]) -> tuple[TensorSpec, ...]:
    """The outputs' specs; a dimension that follows the probes' lengths is the sequence (-1)."""
    lengths = sorted(results_by_length)
    first = results_by_length[lengths[0]]
    if names and len(names) != len(first):
        raise ModelLoadError(f"model {spec} returns {len(first)} outputs; its signature names {len(names)}")
    outputs = []
    for index, tensor in enumerate(first):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1 or tensor.shape[0] != 1:
            raise ModelLoadError(f"model {spec}: output {index} is not a tensor with a batch dimension")
        if tensor.dtype not in _TORCH_TO_DATATYPE:
            raise ModelLoadError(f"model {spec}: output {index} has unsupported dtype {tensor.dtype}")
        dims = list(tensor.shape[1:])
        for length in lengths[1:]:
            other = results_by_length[length][index].shape[1:]
            for axis, (a, b) in enumerate(zip(dims, other)):
                if a != b:
                    if (a, b) != (lengths[0], length):
                        raise ModelLoadError(f"model {spec}: output {index} dimension {axis + 1} changes but not with the length")
                    dims[axis] = VARIABLE
        if dims.count(VARIABLE) > 1:
            raise ModelLoadError(f"model {spec}: output {index} has several dimensions that follow the length")
        name = names[index] if names else f"output{index}"
        outputs.append(TensorSpec(name, _TORCH_TO_DATATYPE[tensor.dtype], tuple(dims)))
    return tuple(outputs)


def load_model(
    spec: str, device: torch.device, signature: Signature | None = None, name: str | None = None, max_length: int = 0
) -> LoadedModel:
    """Loads, moves to `device`, and runs a zero batch (at two lengths for a variable-length
    model) to check the signature and learn the outputs. `signature` overrides the model's
    own; `max_length` the longest sequence it allows (a model may take more than a host should serve)."""
    module, platform, default_name, carried = _load_module(spec, device)
    if signature is not None and carried is not None and not signature.output_names:
        signature = replace(signature, output_names=carried.output_names)  # the model's names for its outputs stay
    signature = signature or carried
    if signature is None:
        raise ModelLoadError(f"model {spec}: declare its input (--input-shape 3,224,224, or --input NAME:DATATYPE:DIMS)")
    if max_length:
        signature = checked_signature(signature.inputs, max_length, spec, signature.output_names)
    lengths = sorted({1, signature.max_length}) if signature.max_length else [0]
    results_by_length = {}
    for length in lengths:
        try:
            with torch.inference_mode():
                result = module(*probe_inputs(signature, length, device))
        except Exception as exc:
            shown = ", ".join(f"{s.name} {s.datatype}{list(s.at_length(length))}" for s in signature.inputs)
            raise ModelLoadError(f"model {spec} fails on its declared input {shown}: {type(exc).__name__}: {exc}") from exc
        results_by_length[length] = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    outputs = _output_specs(spec, results_by_length, signature.output_names)
    return LoadedModel(name or default_name, module, signature.inputs, outputs, device, platform, signature.max_length)
