"""The memory a process can still take (gfp.memory), read from fake /proc and /sys files."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from gfp.memory import available_memory

GIB = 2**30


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(autouse=True)
def no_address_space_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own ``ulimit -v`` (if any) is not what they read."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_memavailable_alone(tmp_path: Path) -> None:
    meminfo = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
    assert available_memory(_write(tmp_path, {"proc/meminfo": meminfo})) == 8000000 * 1024


def test_nothing_known_is_none(tmp_path: Path) -> None:
    assert available_memory(tmp_path) is None


def test_a_cgroup_v2_limit_counts_its_file_cache_as_free(tmp_path: Path) -> None:
    """A container's limit is smaller than the machine's free memory; its reclaimable cache is room."""
    root = _write(
        tmp_path,
        {
            "proc/meminfo": "MemAvailable:   20000000 kB\n",
            "proc/self/cgroup": "0::/job\n",
            "sys/fs/cgroup/job/memory.max": f"{4 * GIB}\n",
            "sys/fs/cgroup/job/memory.current": f"{3 * GIB}\n",
            "sys/fs/cgroup/job/memory.stat": f"anon {2 * GIB}\ninactive_file {GIB // 2}\n",
            "sys/fs/cgroup/memory.max": "max\n",
            "sys/fs/cgroup/memory.current": f"{10 * GIB}\n",
        },
    )
    assert available_memory(root) == 4 * GIB - (3 * GIB - GIB // 2)


def test_a_cgroup_v1_limit_and_no_limit(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "proc/meminfo": "MemAvailable:   2000000 kB\n",
            "proc/self/cgroup": "5:devices:/\n4:memory:/job\n",
            "sys/fs/cgroup/memory/job/memory.limit_in_bytes": f"{GIB}\n",
            "sys/fs/cgroup/memory/job/memory.usage_in_bytes": f"{GIB // 4}\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
            "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{5 * GIB}\n",
        },
    )
    assert available_memory(root) == GIB - GIB // 4


def test_ulimit_v_less_the_virtual_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ulimit -v``: an allocation past it fails however much the machine has free."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (6 * GIB, resource.RLIM_INFINITY))
    root = _write(
        tmp_path,
        {"proc/meminfo": "MemAvailable:   20000000 kB\n", "proc/self/status": "VmSize:\t 4194304 kB\n"},
    )
    assert available_memory(root) == 2 * GIB


def test_free_swap_is_room(tmp_path: Path) -> None:
    """Past the memory the kernel swaps (slower) and kills only once swap is full: a detection that needs
    some of it is no false refusal, on the machine or under a cgroup v2 limit that may swap."""
    meminfo = "MemAvailable:    1048576 kB\nSwapTotal:       8388608 kB\nSwapFree:        4194304 kB\n"
    assert available_memory(_write(tmp_path / "machine", {"proc/meminfo": meminfo})) == 5 * GIB
    job = {
        "proc/meminfo": meminfo,
        "proc/self/cgroup": "0::/job\n",
        "sys/fs/cgroup/job/memory.max": f"{GIB}\n",
    }
    job["sys/fs/cgroup/job/memory.current"] = f"{GIB // 2}\n"
    for swap_max, room in (
        ("max\n", GIB // 2 + 4 * GIB),
        (f"{GIB}\n", GIB // 2 + GIB // 4),
        ("0\n", GIB // 2),
    ):
        files = job | {"sys/fs/cgroup/job/memory.swap.max": swap_max}
        files["sys/fs/cgroup/job/memory.swap.current"] = f"{3 * GIB // 4}\n"
        assert available_memory(_write(tmp_path / swap_max.strip(), files)) == room
