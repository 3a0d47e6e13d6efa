"""Value types that flow from the collectors to the store, the exporter and (later) the tuners.

They are plain immutable data: collectors build them, nothing else mutates them, so a
snapshot handed to a scrape or a tuner can never change under its reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MetricKind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family: its full exported name, type, help text and label names.

    Counters carry their `_total` suffix in `name`; `_info` families are gauges whose
    value is always 1 (the node_exporter convention), identity lives in their labels.
    """

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name} must end in _total")


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one series: `labels` are the label values, in `spec.labels` order."""

    spec: MetricSpec
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """A histogram series: cumulative counts per upper bound (the last bound is +Inf)."""

    spec: MetricSpec
    labels: tuple[str, ...]
    buckets: tuple[tuple[float, float], ...]
    sum: float


@dataclass(frozen=True, slots=True)
class WorkerTarget:
    """A worker process the per-process collectors look at, the GPU it runs on, and its name.

    `pid` is None when no worker is known; `gpu` is the NVML index of the worker's GPU,
    or None for a CPU worker; `name` is the `worker` label of its series.
    """

    pid: int | None = None
    gpu: int | None = None
    name: str = "worker"


@dataclass(slots=True)
class Collected:
    """What one collector produced in one tick.

    `errors` make the tick a failure (`gputuned_collector_success` 0) although the
    samples that could be read are still served; `notes` are permanent absences (an
    NVML field the GPU does not support, a kernel without NUMA) that are logged once and
    leave success at 1.
    """

    samples: list[Sample | HistogramSample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, spec: MetricSpec, value: float, *labels: str) -> None:
        _check_labels(spec, labels)
        self.samples.append(Sample(spec, labels, float(value)))

    def add_histogram(self, spec: MetricSpec, buckets: list[tuple[float, float]], total: float, *labels: str) -> None:
        _check_labels(spec, labels)
        self.samples.append(HistogramSample(spec, labels, tuple(buckets), float(total)))


def _check_labels(spec: MetricSpec, labels: tuple[str, ...]) -> None:
    if len(labels) != len(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, got {labels}")
