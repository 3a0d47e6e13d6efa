"""Every metric family gputuned can export, in one list.

Dashboards and tests check their queries against it, so a renamed metric breaks a test
instead of silently emptying a panel.
"""

from __future__ import annotations

from gputuned.collectors import gpm, host, kubelet, numa, nvml, pcie, tuner, worker
from gputuned.exporter import SELF_SPECS
from gputuned.samples import MetricSpec

# (where the families come from, the families), in the order docs/metrics.md lists them.
METRIC_GROUPS: tuple[tuple[str, tuple[MetricSpec, ...]], ...] = (
    ("the `nvml` collector: GPUs, and each worker's share of them", nvml.SPECS),
    ("the `gpm` collector: GPU profiling counters (Hopper and newer)", gpm.SPECS),
    ("the `pcie` collector", pcie.SPECS),
    ("the `numa` collector", numa.SPECS),
    ("the `host` collector", host.SPECS),
    ("the `kubelet` collector: pods", kubelet.SPECS),
    ("supervised workers", worker.SPECS),
    ("the tuners", tuner.SPECS),
    ("the daemon itself", SELF_SPECS),
)
METRIC_SPECS: tuple[MetricSpec, ...] = tuple(spec for _, specs in METRIC_GROUPS for spec in specs)
