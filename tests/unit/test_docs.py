"""The documents are checked like code: the generated references equal a fresh generation,
every link inside the repository resolves, every TOML snippet is a valid config, every
`gputuned` command of a shell snippet parses with the real command line, and every script,
benchmark and module a snippet runs exists with the options it is given."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from gputuned.catalog import METRIC_SPECS
from gputuned.cli import build_parser
from gputuned.config import config_from_mapping
from gputuned.reference import GENERATED

ROOT = Path(__file__).parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").rglob("*.md")]
)
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEREDOC = re.compile(r"<<'?(\w+)'?")
# Commands a snippet may run that are not this repository's: the system's and the tools it installs.
SYSTEM_COMMANDS = {"systemctl", "useradd", "rm", "podman", "helm", "journalctl", "cat", "nvidia-smi", "kubectl"}
PYTHON_MODULES_ELSEWHERE = {"build", "venv", "pip", "pytest"}


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def snippets(kind: str) -> list[tuple[str, str]]:
    """(document, text) of every fenced block of `kind` (sh takes bash and shell too)."""
    kinds = {"sh": ("sh", "bash", "shell")}.get(kind, (kind,))
    found = []
    for document in DOCUMENTS:
        for match in FENCE.finditer(document.read_text(encoding="utf-8")):
            if match.group(2) in kinds:
                found.append((name(document), "\n".join(line[len(match.group(1)) :] for line in match.group(3).splitlines())))
    return found


@pytest.mark.parametrize("document", sorted(GENERATED))
def test_the_generated_references_equal_a_fresh_generation(document):
    committed = (ROOT / "docs" / document).read_text(encoding="utf-8")
    assert committed == GENERATED[document](), f"run `python -m gputuned.reference docs` and commit docs/{document}"


def test_every_metric_family_is_in_the_metrics_reference():
    reference = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert [spec.name for spec in METRIC_SPECS if f"`{spec.name}`" not in reference] == []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = FENCE.sub("", document.read_text(encoding="utf-8"))
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_link_inside_the_repository_resolves(document):
    broken = []
    for target in LINK.findall(FENCE.sub("", document.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: outside the repository
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            broken.append(f"{target}: no {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: {name(resolved)} has no heading #{anchor}")
    assert broken == []


def heredocs(text: str) -> tuple[str, list[str]]:
    """The snippet without its here-documents, and their bodies."""
    lines, bodies, outside = text.splitlines(), [], []
    index = 0
    while index < len(lines):
        outside.append(lines[index])
        marker = HEREDOC.search(lines[index])
        index += 1
        if marker:
            end = lines.index(marker.group(1), index)
            bodies.append("\n".join(lines[index:end]))
            index = end + 1
    return "\n".join(outside), bodies


def toml_snippets() -> list[tuple[str, str]]:
    found = snippets("toml")
    for document, text in snippets("sh"):
        found += [(document, body) for body in heredocs(text)[1] if body.lstrip().startswith("[")]
    return found


@pytest.mark.parametrize(("document", "text"), toml_snippets(), ids=lambda value: value[:40])
def test_every_toml_snippet_is_a_valid_config(document, text):
    config_from_mapping(tomllib.loads(text))


def test_every_json_and_yaml_snippet_parses():
    for _, text in snippets("json"):
        json.loads(text)
    for _, text in snippets("yaml"):
        yaml.safe_load(text)


def commands(text: str) -> list[list[str]]:
    """Each command of a shell snippet as words: here-documents left out, continuations
    joined, comments dropped, split at && and ;, `sudo` and a trailing & removed."""
    text = heredocs(text)[0].replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", ";", "&"):
                if command:
                    found.append(command[1:] if command[0] == "sudo" else command)
                command = []
            elif not word.startswith("<<"):  # a here-document's marker: its body was taken out
                command.append(word.removesuffix(";"))
    return found


def options(script: Path) -> set[str]:
    """The --options a script's argparse parser declares."""
    declared = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            declared |= {arg.value for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("-")}
    return declared


def check_command(words: list[str]) -> str | None:
    """What is wrong with one command of a snippet, None if nothing."""
    program, args = words[0], words[1:]
    if program.endswith("gputuned"):
        try:
            build_parser().parse_args(args)
        except SystemExit:
            return f"gputuned refuses {shlex.join(args)}"
        return None
    if program.endswith(("python", "python3")):
        if args[:1] == ["-m"]:
            module = args[1]
            known = module in PYTHON_MODULES_ELSEWHERE or importlib.util.find_spec(module) is not None
            return None if known else f"no module {module}"
        script = ROOT / args[0]
        if not script.exists():
            return f"no script {args[0]}"
        unknown = [arg.split("=")[0] for arg in args[1:] if arg.startswith("--") and arg.split("=")[0] not in options(script)]
        return f"{args[0]} declares no {', '.join(unknown)}" if unknown else None
    if program == "bash":
        return None if (ROOT / args[0]).exists() else f"no script {args[0]}"
    if program.startswith(".venv/bin/") or program.endswith("/bin/pip"):
        return None  # the project's own tools (ruff, mypy, pip)
    if program in SYSTEM_COMMANDS:
        missing = [arg for arg in args if arg.startswith(("deploy/", "scripts/", "bench/")) and not (ROOT / arg).exists()]
        return f"no {missing[0]}" if missing else None
    return f"a command these checks do not know: {program} (teach tests/unit/test_docs.py)"


@pytest.mark.parametrize(("document", "text"), snippets("sh"), ids=lambda value: value[:40])
def test_every_shell_snippet_runs_what_exists_with_the_options_it_has(document, text):
    problems = [f"{shlex.join(words)}: {problem}" for words in commands(text) if (problem := check_command(words))]
    assert problems == []


def test_the_checks_catch_a_wrong_command():
    assert check_command(["gputuned", "tune", "--mode", "fast"]) == "gputuned refuses tune --mode fast"
    assert check_command(["python", "bench/tuning.py", "--runz", "3"]) == "bench/tuning.py declares no --runz"
    assert check_command(["bash", "scripts/nothing.sh"]) == "no script scripts/nothing.sh"
    assert check_command(["curl", "x"]) is not None
    assert commands("sudo systemctl a && b --c \\\n  d  # e\ncat > f <<'X'\nk = 1\nX\n") == [
        ["systemctl", "a"],
        ["b", "--c", "d"],
        ["cat", ">", "f"],
    ]


INLINE = re.compile(r"`((?:python3? bench/|python -m gputuned|gputuned )[^`]+)`")


def inline_commands() -> list[tuple[str, list[str]]]:
    """Commands written inline in the prose (`python bench/tuning.py --runs 10`): optional
    parts in brackets taken as given, the first of alternatives (a|b)."""
    found = []
    for document in DOCUMENTS:
        for text in INLINE.findall(FENCE.sub("", document.read_text(encoding="utf-8"))):
            words = shlex.split(text.replace("[", " ").replace("]", " "))
            found.append((name(document), [word.split("|")[0] for word in words if word != "..."]))
    return found


def help_text(command: str) -> str | None:
    """`gputuned COMMAND --help` as it prints it; None for a command gputuned does not have."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args([command, "--help"])
        except SystemExit as exit_:
            return out.getvalue() if exit_.code == 0 else None
    return None


def check_mention(words: list[str]) -> str | None:
    """A command named in the prose, perhaps with an option and no value (`gputuned tune
    --mode`): a gputuned command must exist and have the options named; a script as a snippet's."""
    if not words[0].endswith("gputuned"):
        return check_command(words)
    help_ = help_text(words[1])
    if help_ is None:
        return f"gputuned has no command {words[1]}"
    unknown = [word.split("=")[0] for word in words[2:] if word.startswith("--") and word.split("=")[0] not in help_]
    return f"gputuned {words[1]} has no {', '.join(unknown)}" if unknown else None


def test_every_command_written_in_the_prose_names_what_exists():
    problems = [
        f"{document}: {shlex.join(words)}: {problem}"
        for document, words in inline_commands()
        if (problem := check_mention(words))
    ]
    assert problems == []
    assert check_mention(["gputuned", "tune", "--speed"]) == "gputuned tune has no --speed"
    assert check_mention(["gputuned", "retune"]) == "gputuned has no command retune"
