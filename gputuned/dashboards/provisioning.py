"""Grafana provisioning files: a Prometheus datasource and a file provider for the dashboards.

Grafana reads them from /etc/grafana/provisioning/{datasources,dashboards}/ at start; the
provider points at DASHBOARD_DIR, where `gputuned install` puts the dashboard JSON. The
dashboards themselves take their datasource from a variable, so an existing Prometheus
datasource works as well as the one provisioned here.
"""

from __future__ import annotations

from pathlib import PurePosixPath

DASHBOARD_DIR = PurePosixPath("/var/lib/grafana/dashboards/gputuned")
DATASOURCE_FILE = "datasources/gputuned.yaml"
PROVIDER_FILE = "dashboards/gputuned.yaml"

DATASOURCE = """\
# Written by `gputuned dashboards build`; Grafana reads it from /etc/grafana/provisioning/datasources/.
# A Prometheus on this host that scrapes gputuned (job "gputuned", 127.0.0.1:9842).
apiVersion: 1
datasources:
  - name: gputuned Prometheus
    uid: gputuned-prometheus
    type: prometheus
    access: proxy
    url: http://127.0.0.1:9090
    isDefault: false
    editable: true
    jsonData:
      # Prometheus's default scrape interval; $__rate_interval is derived from it.
      timeInterval: 15s
"""

PROVIDER = f"""\
# Written by `gputuned dashboards build`; Grafana reads it from /etc/grafana/provisioning/dashboards/.
apiVersion: 1
providers:
  - name: gputuned
    folder: gputuned
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: {DASHBOARD_DIR}
"""


def provisioning_files() -> dict[str, str]:
    """Path below the provisioning directory -> file text."""
    return {DATASOURCE_FILE: DATASOURCE, PROVIDER_FILE: PROVIDER}
