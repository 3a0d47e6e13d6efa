"""The Open Inference Protocol's tensor datatypes, in one table (pure, no torch import).

Each datatype's numpy name, torch's, its size in bytes, and the name Triton's model
configuration uses for it. numpy has no bfloat16: a BF16 tensor travels as its raw 16-bit
words (uint16) and is viewed as bfloat16 by torch, which computes with it. The worker, the load
generator and the daemon (sizing the buffer pool) all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str  # as the protocol spells it: "FP32"
    numpy: str  # numpy's name: "float32" ("uint16" for BF16, its raw words)
    item_bytes: int
    triton: str  # Triton's config.pbtxt name: "TYPE_FP32"
    torch: str = ""  # torch's name where it differs from numpy's: "bfloat16"

    @property
    def torch_name(self) -> str:
        return self.torch or self.numpy


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("FP32", "float32", 4, "TYPE_FP32"),
        Datatype("FP16", "float16", 2, "TYPE_FP16"),
        Datatype("BF16", "uint16", 2, "TYPE_BF16", torch="bfloat16"),
        Datatype("FP64", "float64", 8, "TYPE_FP64"),
        Datatype("INT8", "int8", 1, "TYPE_INT8"),
        Datatype("INT16", "int16", 2, "TYPE_INT16"),
        Datatype("INT32", "int32", 4, "TYPE_INT32"),
        Datatype("INT64", "int64", 8, "TYPE_INT64"),
        Datatype("UINT8", "uint8", 1, "TYPE_UINT8"),
        Datatype("BOOL", "bool", 1, "TYPE_BOOL"),
    )
}
