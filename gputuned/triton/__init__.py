"""Tuning a Triton Inference Server: the adapter that makes a Triton model a gputuned worker.

`gputuned triton-adapter` speaks the control protocol on the daemon's side, as the built-in
worker does, and maps it onto Triton's own interfaces: knobs become the model's config,
loaded through the model repository extension; stats come from Triton's metrics, its
statistics extension and its request traces. It either starts and owns a `tritonserver`
(supervised) or watches one that runs already (attached).
"""
