"""The serving path as setup.py builds it: compiled by mypyc where a C compiler is found, and never out of date."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
from pathlib import Path

import pytest

from gputuned.worker.compiled import UNPACKING_SECONDS, compiled, out_of_date

ROOT = Path(__file__).parent.parent.parent


def setup_compiles() -> list[str]:
    """setup.py's COMPILED, read from its source (running setup.py would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    [assignment] = [node for node in tree.body if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED"]
    return [path.removesuffix(".py").replace("/", ".") for path in ast.literal_eval(assignment.value)]


def test_no_compiled_module_in_this_checkout_is_older_than_its_source():
    assert out_of_date() == [], "rebuild the compiled serving path: pip install -e . (scripts/setup.sh)"


@pytest.mark.skipif(
    os.environ.get("GPUTUNED_PURE_PYTHON") is not None, reason="installed without compiling (GPUTUNED_PURE_PYTHON)"
)
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: setup.py installs the pure-Python modules")
def test_where_a_compiler_is_found_the_serving_path_runs_compiled():
    assert compiled() == sorted(name.rpartition(".")[2] for name in setup_compiles())
    for name in setup_compiles():
        assert importlib.import_module(name).__file__.endswith(".so"), name


def test_no_compiled_function_names_two_kinds_of_exception_alike():
    """mypyc types a name by its first binding: `except QueueFull as exc` after `except
    BadRequest as exc` in one function raised TypeError at run time, compiled, and only there."""
    clashes = []
    for module in setup_compiles():
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)):
            caught: dict[str, str] = {}
            for handler in (node for node in ast.walk(function) if isinstance(node, ast.ExceptHandler) and node.name):
                kind = ast.unparse(handler.type) if handler.type else "BaseException"
                if caught.setdefault(handler.name, kind) != kind:
                    clashes.append(f"{module}.{function.name}: {handler.name} is {caught[handler.name]} and {kind}")
    assert clashes == []


def test_a_source_edited_after_its_build_is_out_of_date_and_one_unpacked_with_it_is_not(tmp_path):
    built, source, other = tmp_path / "codec.cpython-311-x86_64-linux-gnu.so", tmp_path / "codec.py", tmp_path / "stats.py"
    for path in (built, source, other):
        path.write_bytes(b"")
    built_at = built.stat().st_mtime
    os.utime(source, (built_at + UNPACKING_SECONDS / 2, built_at + UNPACKING_SECONDS / 2))  # unpacked from one wheel
    os.utime(other, (built_at + 3600, built_at + 3600))  # not compiled: its age means nothing
    assert out_of_date(tmp_path) == []
    os.utime(source, (built_at + 3600, built_at + 3600))  # edited an hour later
    assert out_of_date(tmp_path) == ["codec.py"]
