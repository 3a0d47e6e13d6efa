"""Reading /proc and /sys: pure text -> value parsers, and the one reader they share.

Reading and parsing are split (node_exporter's getLoad/parseLoad, prometheus/procfs) so that
every parser is tested on strings copied from real hosts. Readers take their root (`/proc`,
`/sys`, or a fixture tree) as an argument; nothing here holds a path of its own. The
collectors, the config (CPU lists), the daemon (placement) and the control socket (peer
groups) all read the machine through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class ParseError(ValueError):
    """A file whose content does not have the kernel's format."""


def read_text(root: Path, *parts: str | int) -> str:
    """Reads a /proc or /sys file below `root`; raises OSError like open() does."""
    return root.joinpath(*map(str, parts)).read_text(encoding="ascii", errors="replace")


def describe_os_error(exc: OSError) -> str:
    """'cannot read /proc/vmstat: No such file or directory' for logs and notes."""
    return f"cannot read {exc.filename}: {exc.strerror or exc}"


def parse_key_value_counters(text: str) -> dict[str, int]:
    """'key value' lines (/proc/vmstat, nodeN/numastat) -> {key: value}.

    Lines that are not a name followed by one integer are skipped: kernels add fields,
    and a truncated last line must not lose the others.
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            values[parts[0]] = int(parts[1])
        except ValueError:
            continue
    return values


def parse_node_meminfo(text: str) -> dict[str, int]:
    """/sys/devices/system/node/nodeN/meminfo -> {field: bytes}.

    Lines look like 'Node 0 MemTotal:  4810964 kB'; counts without a unit (HugePages_*)
    are kept as plain numbers.
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] != "Node" or not parts[2].endswith(":"):
            continue
        try:
            number = int(parts[3])
        except ValueError:
            continue
        unit = parts[4] if len(parts) > 4 else ""
        values[parts[2][:-1]] = number * 1024 if unit == "kB" else number
    return values


def parse_cpulist(text: str) -> list[int]:
    """Kernel cpulist format ('0-3,8,10-11', possibly empty) -> sorted CPU numbers."""
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return []
    for part in text.split(","):
        low, sep, high = part.partition("-")
        try:
            if sep:
                cpus.update(range(int(low), int(high) + 1))
            else:
                cpus.add(int(low))
        except ValueError:
            raise ParseError(f"bad cpulist element {part!r}") from None
    return sorted(cpus)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat that the collectors use."""

    comm: str
    state: str
    minor_faults: int
    major_faults: int


def parse_proc_stat(text: str) -> ProcStat:
    """/proc/PID/stat -> ProcStat.

    The command name is in parentheses and may itself contain spaces and ')', so the
    fields are counted from the last ')' (as procps does).
    """
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ParseError("no '(comm)' field in /proc/PID/stat")
    rest = text[close_paren + 1 :].split()
    # rest[0] is field 3 (state); minflt is field 10, majflt field 12.
    if len(rest) < 10:
        raise ParseError(f"/proc/PID/stat has {len(rest) + 2} fields, expected at least 12")
    try:
        return ProcStat(
            comm=text[open_paren + 1 : close_paren],
            state=rest[0],
            minor_faults=int(rest[7]),
            major_faults=int(rest[9]),
        )
    except ValueError as exc:
        raise ParseError(f"non-numeric fault count in /proc/PID/stat: {exc}") from None


def parse_numa_maps(text: str) -> dict[int, int]:
    """/proc/PID/numa_maps -> {node: resident bytes}.

    Each mapping line lists 'N<node>=<pages>' and 'kernelpagesize_kB=<size>'; huge-page
    mappings count in their own page size.
    """
    resident: dict[int, int] = {}
    for line in text.splitlines():
        pages_by_node: list[tuple[int, int]] = []
        page_bytes = 4096
        for token in line.split()[2:]:
            key, sep, value = token.partition("=")
            if not sep:
                continue
            if key == "kernelpagesize_kB" and value.isdigit():
                page_bytes = int(value) * 1024
            elif key[:1] == "N" and key[1:].isdigit() and value.isdigit():
                pages_by_node.append((int(key[1:]), int(value)))
        for node, pages in pages_by_node:
            resident[node] = resident.get(node, 0) + pages * page_bytes
    return resident


def parse_status_field(text: str, name: str) -> str | None:
    """The value of one 'Name:\tvalue' line of /proc/PID/status, or None if absent."""
    prefix = name + ":"
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def parse_status_groups(text: str) -> set[int]:
    """A process's real gid and supplementary groups, from /proc/PID/status ('Gid:', 'Groups:')."""
    groups: set[int] = set()
    gid, supplementary = parse_status_field(text, "Gid"), parse_status_field(text, "Groups")
    if gid:
        groups.add(int(gid.split()[0]))
    if supplementary:
        groups.update(int(g) for g in supplementary.split())
    return groups


def parse_int_file(text: str) -> int:
    """A sysfs file holding one integer (e.g. /sys/bus/pci/devices/BDF/numa_node)."""
    try:
        return int(text.strip())
    except ValueError:
        raise ParseError(f"expected one integer, got {text.strip()[:40]!r}") from None


def nvml_bus_id_to_sysfs(bus_id: str) -> str:
    """NVML's '00000000:3B:00.0' -> sysfs's '0000:3b:00.0' (4-digit domain, lower case)."""
    domain, sep, rest = bus_id.strip().partition(":")
    if not sep or not rest:
        raise ParseError(f"bad PCI bus id {bus_id!r}")
    try:
        domain_number = int(domain, 16)
    except ValueError:
        raise ParseError(f"bad PCI domain in {bus_id!r}") from None
    return f"{domain_number:04x}:{rest.lower()}"


# A pod's cgroup carries its UID: "pod<uid>" with the UID's dashes as they are (cgroupfs
# driver: /kubepods/burstable/pod0a1b.../<container>) or as underscores (systemd driver:
# /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b_....slice/cri-containerd-<id>.scope).
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def parse_cgroup_pod_uid(text: str) -> str | None:
    """/proc/PID/cgroup -> the UID of the Kubernetes pod the process runs in, or None."""
    for line in text.splitlines():
        match = _POD_UID.search(line.rpartition(":")[2])
        if match:
            return match[1].replace("_", "-")
    return None


def parse_pod_log_dir(name: str) -> tuple[str, str, str] | None:
    """A directory of /var/log/pods, NAMESPACE_NAME_UID (the CRI's log layout) -> (uid,
    namespace, pod), or None. Namespaces and pod names are DNS labels and subdomains: they
    hold no underscore, so the split is unambiguous."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    namespace, pod, uid = parts
    return uid, namespace, pod
