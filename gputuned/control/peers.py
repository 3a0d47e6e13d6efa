"""Who is at the other end of a Unix socket, from the kernel (SO_PEERCRED), and whether to let them in."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from gputuned.procfs import parse_status_groups, read_text

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return PeerCredentials(pid, uid, gid)


def peer_groups(pid: int, proc_root: Path = Path("/proc")) -> set[int]:
    """The peer's primary and supplementary groups, from /proc/PID/status ('Groups:')."""
    try:
        return parse_status_groups(read_text(proc_root, pid, "status"))
    except (OSError, ValueError):
        return set()  # gone, or not a status file: let in by uid alone


def peer_allowed(creds: PeerCredentials, group: int | None, own_uid: int, proc_root: Path = Path("/proc")) -> bool:
    """Same uid as us, root, or a member of the configured group."""
    if creds.uid in (own_uid, 0):
        return True
    if group is None:
        return False
    return creds.gid == group or group in peer_groups(creds.pid, proc_root)
