"""Every metric family gputuned can export, in one list.

Dashboards and tests check their queries against it, so a renamed metric breaks a test
instead of silently emptying a panel.
"""

from __future__ import annotations

from gputuned.collectors import gpm, host, kubelet, numa, nvml, pcie, tuner, worker
from gputuned.exporter import SELF_SPECS
from gputuned.samples import MetricSpec

METRIC_SPECS: tuple[MetricSpec, ...] = (
    *nvml.SPECS,
    *gpm.SPECS,
    *pcie.SPECS,
    *numa.SPECS,
    *host.SPECS,
    *kubelet.SPECS,
    *worker.SPECS,
    *tuner.SPECS,
    *SELF_SPECS,
)
