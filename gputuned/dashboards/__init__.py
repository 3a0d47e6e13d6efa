"""Grafana dashboards generated from code (`build.py`, with grafana-foundation-sdk, the
`dashboards` extra) and their provisioning files (`provisioning.py`, no SDK: `gputuned
install` uses it on a host that has only the daemon installed)."""
