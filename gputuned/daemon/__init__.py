"""The daemon: the composition root that wires collectors, store, scheduler and exporter."""
