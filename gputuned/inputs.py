"""The text form of a model's inputs, as `gputuned worker --input` and a worker's `inputs`
in the config write them (pure: no torch, so the daemon checks a config without it).

    NAME:DATATYPE:DIMS[:mask]     e.g. input_ids:INT64:-1, attention_mask:INT64:-1:mask

DIMS excludes the batch dimension; -1 marks the sequence, whose length changes from
request to request. `mask` marks the attention mask, which the worker builds; an input
named `attention_mask` is the mask unless declared otherwise.
"""

from __future__ import annotations

from gputuned.datatypes import DATATYPES

VARIABLE = -1  # a dimension that changes from request to request (the sequence)
MASK_NAME = "attention_mask"


def parse_shape(text: str, variable: bool = False) -> tuple[int, ...]:
    """'3,224,224' -> (3, 224, 224); every dimension a positive integer, or -1 (the
    sequence) where `variable`."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"shape {text!r} is not comma-separated integers, e.g. 3,224,224") from None
    if not shape or any(d <= 0 and not (variable and d == VARIABLE) for d in shape):
        allowed = "positive dimensions, or -1 for the sequence" if variable else "positive dimensions"
        raise ValueError(f"shape {text!r} must list {allowed}")
    return shape


def parse_input_text(text: str) -> tuple[str, str, tuple[int, ...], bool]:
    """(name, datatype, dimensions, mask?) of 'NAME:DATATYPE:DIMS[:mask]'; ValueError saying what is wrong."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "mask") or not parts[0]:
        raise ValueError(f"input {text!r} is not NAME:DATATYPE:DIMS[:mask], e.g. input_ids:INT64:-1")
    name, datatype, dims = parts[:3]
    if datatype not in DATATYPES:
        raise ValueError(f"input {name}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    return name, datatype, parse_shape(dims, variable=True), len(parts) == 4 or name == MASK_NAME
