"""Builds gputuned with its serving path compiled to C by mypyc, where a C compiler is found.

Every inference request the worker serves passes through these modules (the HTTP layer,
the routes, the codec, the request counters and their histogram), and where one core both serves and
computes, their interpreter time is taken from the model: compiled by mypyc (mypy's
compiler, from the same typed sources) they serve the transformer encoder of
bench/serving.py 2-4% faster. mypyc, not Cython: the sources stay plain typed Python,
which mypy already checks, and no second dialect is kept beside them.

Left interpreted, as measured: the batcher (its coroutines, compiled, cost ~10 us more a
batch, 85 against 74 us a request at batch 1) and the lanes (0.95x the encoder's goodput).

Without a compiler (or with GPUTUNED_PURE_PYTHON=1) the same modules are installed as
Python and behave the same; `gputuned worker` logs which it runs.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

COMPILED = [
    "gputuned/worker/httpserver.py",
    "gputuned/worker/server.py",
    "gputuned/worker/codec.py",
    "gputuned/worker/stats.py",
    "gputuned/control/histogram.py",
]


def compiled_modules() -> list[Extension]:
    if os.environ.get("GPUTUNED_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    # Imports from outside the compiled modules are taken as Any: type-checking torch's
    # sources took a minute and a half a build, and what they would type is called through
    # Python either way. mypy checks them in full (pyproject.toml's [tool.mypy]).
    extensions = mypycify(["--follow-imports=skip", *COMPILED], opt_level="3", group_name="gputuned_worker")
    for extension in extensions:
        extension.optional = True  # a failed compile leaves the pure-Python module in place
    return extensions


setup(ext_modules=compiled_modules())
