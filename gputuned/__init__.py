"""gputuned: monitors GPUs, PCIe and NUMA, exports Prometheus metrics, and tunes an inference worker."""

__version__ = "0.2.0"
