"""The vLLM worker kind: an adapter that reads vLLM's /metrics and moves its scheduler's live
knobs through gputuned's plugin in the engine core (plugin.py), which ships alone as a small
wheel for vLLM's environment (wheel.py)."""
