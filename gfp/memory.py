"""How much memory this process can still take, for refusing work up front that would not fit.

A process that outgrows the machine is not always told so with an error: past its cgroup's limit, or with
no memory left and no swap, the kernel's out-of-memory killer ends it (a whole folder run with it). Only
Linux is read (no new dependency); elsewhere nothing is known and nothing is refused.
"""

from __future__ import annotations

import resource
from pathlib import Path


def available_memory(root: Path = Path("/")) -> int | None:
    """Bytes this process can still allocate: the least of the system's ``MemAvailable`` and free swap, the
    room under its cgroup's limit (v2 ``memory.max`` and the swap it may still fill, v1
    ``memory.limit_in_bytes``; reclaimable file cache counted as free) and under its address-space limit
    (``ulimit -v``); None where none of them can be read.
    ``root`` is where ``/proc`` and ``/sys`` are looked up (tests give a folder of fake files)."""
    meminfo = _read(root / "proc/meminfo")  # read once: the cgroups' swap room is bounded by its free swap
    swap_free = _field(meminfo, "SwapFree", 1024) or 0
    rooms = [_meminfo_available(meminfo, swap_free), _cgroup_room(root, swap_free), _address_space_room(root)]
    known = [room for room in rooms if room is not None]
    return max(0, min(known)) if known else None


def size_text(count: int) -> str:
    """A number of bytes as a message says it: GiB with one decimal from 1 GiB, else whole MiB (KiB below
    1 MiB, which would read "0 MiB")."""
    if count < 2**20:
        return f"{count / 2**10:.0f} KiB"
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _field(text: str | None, name: str, unit: int = 1) -> int | None:
    """The number after ``name`` in a ``name value`` (or ``name: value kB``) listing, times ``unit``."""
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[0] == name and parts[1].isdigit():
            return int(parts[1]) * unit
    return None


def _meminfo_available(meminfo: str | None, swap_free: int) -> int | None:
    """``MemAvailable`` and the free swap: past the memory the kernel swaps pages out (slower) and kills only
    once swap is full too, so a detection that needs some of it runs, as it did before it was checked."""
    available = _field(meminfo, "MemAvailable", 1024)
    return None if available is None else available + swap_free


def _cgroup_room(root: Path, swap_free: int) -> int | None:
    """The process's cgroup limit less its usage (less its inactive file cache, which the kernel reclaims
    before it kills): the smallest such room up the hierarchy, None without a limit."""
    rooms = []
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2
            base, swap = root / "sys/fs/cgroup", ("memory.swap.max", "memory.swap.current")
            limit, usage, cache = "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):  # v1
            base, swap = root / "sys/fs/cgroup/memory", None
            limit, usage, cache = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        folder = base / path.strip().lstrip("/")
        while True:  # from the process's own cgroup up to the root of what is mounted
            room = _room(folder, limit, usage, cache)
            if room is not None and swap is not None:
                room += _swap_room(folder, *swap, swap_free)
            if room is not None:
                rooms.append(room)
            if folder == base:
                break
            folder = folder.parent
    return min(rooms) if rooms else None


def _room(folder: Path, limit_file: str, usage_file: str, cache_field: str) -> int | None:
    limit, usage = (_read(folder / limit_file) or "").strip(), (_read(folder / usage_file) or "").strip()
    if not (limit.isdigit() and usage.isdigit()) or int(limit) >= 1 << 60:  # "max", or v1's no limit
        return None
    cache = _field(_read(folder / "memory.stat"), cache_field) or 0
    return int(limit) - max(0, int(usage) - cache)


def _swap_room(folder: Path, limit_file: str, usage_file: str, system: int) -> int:
    """The swap a v2 cgroup may still fill (its ``memory.swap.max`` less its use, at most the system's free
    swap, ``system``): past ``memory.max`` the kernel swaps the cgroup's pages out, and kills only once that
    is full."""
    limit, usage = (_read(folder / limit_file) or "").strip(), (_read(folder / usage_file) or "").strip()
    if limit == "max":
        return system
    return min(system, max(0, int(limit) - int(usage))) if limit.isdigit() and usage.isdigit() else 0


def _address_space_room(root: Path) -> int | None:
    """``ulimit -v`` less the process's virtual size (where an allocation past it fails with an error)."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    size = _field(_read(root / "proc/self/status"), "VmSize", 1024)
    return None if size is None else limit - size
