"""Which of the worker's modules run compiled, and whether a compiled one is out of date.

setup.py compiles the serving path with mypyc into extension modules beside their sources
(in place, for an editable install). Python imports an extension module before a source
file of the same name, so a source edited after the build would go unseen: the worker
warns of that at start, and the tests fail on it (tests/unit/test_compiled.py).
"""

from __future__ import annotations

from pathlib import Path

WORKER = Path(__file__).parent
# A wheel's files are unpacked in no set order, within a second; an edit comes later than that.
UNPACKING_SECONDS = 2.0


def compiled(directory: Path = WORKER) -> list[str]:
    """The modules in `directory` built as extension modules: Python imports those first."""
    return sorted({built.name.split(".")[0] for built in directory.glob("*.so")})


def describe() -> str:
    """What runs the serving path, as the worker's start-up line and the benches say it."""
    names = compiled()
    return f"compiled: {', '.join(names)}" if names else "interpreted"


def out_of_date(directory: Path = WORKER) -> list[str]:
    """The sources in `directory` changed since they were compiled (their extension modules shadow them)."""
    stale = []
    for name in compiled(directory):
        source, built = directory / f"{name}.py", max(path.stat().st_mtime for path in directory.glob(f"{name}.*.so"))
        if source.exists() and source.stat().st_mtime > built + UNPACKING_SECONDS:
            stale.append(source.name)
    return stale
