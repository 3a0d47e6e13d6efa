"""What the test suite and the benchmarks share: starting real daemons, workers and a real
Prometheus on loopback (`processes`), and the fake NVML that stands in for a GPU host
(`fake_nvml`, checked against the real pynvml by the tests). Nothing here runs in the daemon.
"""
