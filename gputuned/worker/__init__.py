"""The managed inference worker (needs the [worker] extra: torch, numpy).

`agent` is importable without torch: it is what a user's own server embeds.
"""
