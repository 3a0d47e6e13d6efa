"""Which of the worker's modules run compiled, and whether a compiled one is out of date.

setup.py compiles the serving path with mypyc into extension modules beside their sources
(in place, for an editable install). Python imports an extension module before a source
file of the same name, so a source edited after the build would go unseen: the worker
warns of that at start, and the tests fail on it (tests/unit/test_compiled.py).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).parent.parent  # the serving path spans worker/ and control/ (its histogram)
# A wheel's files are unpacked in no set order, within a second; an edit comes later than that.
UNPACKING_SECONDS = 2.0


def compiled(directory: Path = PACKAGE) -> list[str]:
    """The modules below `directory` built as extension modules: Python imports those first."""
    return sorted({built.name.split(".")[0] for built in directory.rglob("*.so")})


def describe() -> str:
    """What runs the serving path, as the worker's start-up line and the benches say it."""
    names = compiled()
    return f"compiled: {', '.join(names)}" if names else "interpreted"


def out_of_date(directory: Path = PACKAGE) -> list[str]:
    """The sources below `directory` changed since they were compiled (their extension modules shadow them)."""
    stale = set()
    for built in directory.rglob("*.so"):
        source = built.parent / f"{built.name.split('.')[0]}.py"
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime + UNPACKING_SECONDS:
            stale.add(source.name)
    return sorted(stale)
