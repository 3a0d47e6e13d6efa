"""Exec shim: `python -m gputuned.daemon.placement_exec --node N --cpus LIST -- COMMAND...`

Runs in the worker's process before the worker itself: pins the CPU affinity, sets a
memory policy preferring node N (so first-touch pages land there), then execs COMMAND,
which inherits both. If the kernel refuses the memory policy (e.g. under a seccomp
filter) the affinity still applies and the refusal is printed.
"""

from __future__ import annotations

import argparse
import os
import sys

from gputuned.daemon.placement import set_preferred_node
from gputuned.procfs import ParseError, parse_cpulist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="placement_exec")
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--cpus", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    try:
        os.sched_setaffinity(0, parse_cpulist(args.cpus))
    except (OSError, ParseError) as exc:
        print(f"placement: cannot set CPU affinity {args.cpus}: {exc}", file=sys.stderr)
    try:
        set_preferred_node(args.node)
    except OSError as exc:
        print(f"placement: memory policy not set, CPU affinity only: {exc}", file=sys.stderr)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"placement: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
    return 127  # only reached when exec failed


if __name__ == "__main__":
    raise SystemExit(main())
