"""`nvidia-smi --query-gpu=... --format=csv,noheader,nounits` over the fake NVML's `hgx8` board.

The GPU check (bench/gpu.py) compares the daemon's series with nvidia-smi read at the
same time; on a host without a GPU it runs against `gputuned run --nvml-module
gputuned.testing.fake_nvml:hgx8` with this in nvidia-smi's place (`--smi`). It answers
only the fields the check asks for, in nvidia-smi's units: MiB, W, MHz, %, degrees C, and
"[N/A]" for what the GPU does not report, as the real one does.

GPUTUNED_FAKE_SMI_SKEW="temperature.gpu=10,..." adds to fields, so a test can see the
check catch a disagreement.

    python -m gputuned.testing.fake_nvidia_smi --query-gpu=memory.used,temperature.gpu --format=csv,noheader,nounits
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import pynvml

from gputuned.testing.fake_nvml import FakeNvml, hgx8

MIB = 2**20


def readers(nvml: FakeNvml) -> dict[str, Callable[[Any], float]]:
    """Each answered field, read from a device handle through the fake's NVML functions."""
    return {
        "utilization.gpu": lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu,
        "memory.used": lambda h: nvml.nvmlDeviceGetMemoryInfo(h, pynvml.nvmlMemory_v2).used / MIB,
        "memory.total": lambda h: nvml.nvmlDeviceGetMemoryInfo(h).total / MIB,
        "power.draw": lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000,
        "temperature.gpu": lambda h: nvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "clocks.sm": lambda h: nvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        "pcie.link.gen.current": lambda h: nvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
        "pcie.link.width.current": lambda h: nvml.nvmlDeviceGetCurrPcieLinkWidth(h),
    }


def skews(text: str) -> dict[str, float]:
    pairs = (item.partition("=") for item in text.split(",") if item)
    return {name: float(value) for name, _, value in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nvidia-smi")
    parser.add_argument("--query-gpu", required=True)
    parser.add_argument("--format", required=True)
    args = parser.parse_args(argv)
    if args.format != "csv,noheader,nounits":
        print(f"fake nvidia-smi answers --format=csv,noheader,nounits only, not {args.format}", file=sys.stderr)
        return 2
    nvml = hgx8()
    nvml.nvmlInit()
    read = readers(nvml)
    fields = args.query_gpu.split(",")
    unknown = [name for name in fields if name not in read]
    if unknown:
        print(f'Field "{unknown[0]}" is not a valid field to query.', file=sys.stderr)
        return 2
    offsets = skews(os.environ.get("GPUTUNED_FAKE_SMI_SKEW", ""))
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        cells = []
        for name in fields:
            try:
                value = read[name](handle) + offsets.get(name, 0.0)
            except nvml.NVMLError:
                cells.append("[N/A]")
                continue
            cells.append(f"{value:.2f}" if name == "power.draw" else f"{value:.0f}")
        print(", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
