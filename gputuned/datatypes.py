"""The Open Inference Protocol's tensor datatypes, in one table (pure, no torch import).

Each datatype's numpy name (which is also torch's attribute name for the same dtype), its
size in bytes, and the name Triton's model configuration uses for it. The worker, the load
generator and the daemon (sizing the buffer pool) all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str  # as the protocol spells it: "FP32"
    numpy: str  # numpy's (and torch's) name: "float32"
    item_bytes: int
    triton: str  # Triton's config.pbtxt name: "TYPE_FP32"


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("FP32", "float32", 4, "TYPE_FP32"),
        Datatype("FP16", "float16", 2, "TYPE_FP16"),
        Datatype("FP64", "float64", 8, "TYPE_FP64"),
        Datatype("INT8", "int8", 1, "TYPE_INT8"),
        Datatype("INT16", "int16", 2, "TYPE_INT16"),
        Datatype("INT32", "int32", 4, "TYPE_INT32"),
        Datatype("INT64", "int64", 8, "TYPE_INT64"),
        Datatype("UINT8", "uint8", 1, "TYPE_UINT8"),
        Datatype("BOOL", "bool", 1, "TYPE_BOOL"),
    )
}
