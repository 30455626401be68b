"""Where a worker runs and where its memory lives: CPU pinning, NUMA nodes,
huge pages (worker process, at start for ``pin``/``bind_to_node``/
``advise_huge_pages``; any process for the queries), and the batch
scheduling policy a front end's event-loop thread asks for
(``batch_scheduling``).

Every setter may be refused by the OS (a cpuset that shrank, no NUMA, huge
pages disabled); each degrades cleanly. ``placement_report`` therefore reads
what is in force from the kernel (affinity, /proc/self/smaps, numa_maps, the
THP setting) and gives a ``*_fallback`` reason for whatever is not as asked:
it never reports what was only requested.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform
from collections.abc import Sequence
from typing import Any

import psutil

from ..errors import InvalidArgument
from .errors import PlacementRefused

__all__ = [
    "PlacementRefused",
    "usable_cpus",
    "pin",
    "numa_nodes",
    "node_of",
    "bind_to_node",
    "advise_huge_pages",
    "thp_mode",
    "hugetlbfs_mounts",
    "mapping_page_size",
    "placement_report",
    "batch_scheduling",
]

SYSFS_NODES = "/sys/devices/system/node"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_SHMEM = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
THP_PMD_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"
MPOL_BIND = 2
MPOL_MF_MOVE = 1 << 1
_SYS_MBIND = {"x86_64": 237, "aarch64": 235, "ppc64le": 259, "s390x": 235}


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), ascending."""
    return sorted(os.sched_getaffinity(0))


def pin(cpu: int) -> list[int]:
    """Pin every thread of the calling process to *cpu* and return the
    affinity actually in force afterwards (read back from the kernel).

    Raises InvalidArgument when *cpu* is not one of ``usable_cpus()`` and
    PlacementRefused when the kernel says no. Threads started later inherit
    the affinity of the thread that starts them, so pin early.
    """
    allowed = usable_cpus()
    if type(cpu) is not int or cpu not in allowed:
        raise InvalidArgument(f"cpu {cpu!r} is not one of the usable cpus {allowed}")
    try:
        psutil.Process().cpu_affinity([cpu])      # the main thread (the tgid)
        for tid in os.listdir("/proc/self/task"):  # and every other thread already running
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except ProcessLookupError:             # a thread that just ended
                pass
    except (psutil.Error, OSError, ValueError) as exc:
        raise PlacementRefused(f"cannot pin to cpu {cpu}: {exc}") from None
    return usable_cpus()


def batch_scheduling() -> str:
    """Ask the kernel to schedule the calling thread (only it, and threads
    it starts later) as a batch thread: SCHED_BATCH, the same share of the
    CPU and the same nice value as before, but its wake-ups do not preempt
    the thread running, so a thread woken by one client's request runs once
    the running one yields and then finds more requests ready (a front end's
    event loop: bench/RESULTS.md). Returns the policy in force afterwards,
    read back from the kernel: "batch", or "normal" where the kernel refused
    or has no such policy."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError:
            pass
        try:
            if os.sched_getscheduler(0) == policy:
                return "batch"
        except OSError:
            pass
    return "normal"


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def numa_nodes(root: str = SYSFS_NODES) -> dict[int, list[int]]:
    """NUMA node -> its CPUs, from sysfs. One node holding every CPU when the
    directory is absent (no NUMA support) or unreadable."""
    nodes: dict[int, list[int]] = {}
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        if name.startswith("node") and name[4:].isdigit():
            try:
                with open(os.path.join(root, name, "cpulist"), encoding="ascii") as f:
                    nodes[int(name[4:])] = parse_cpulist(f.read())
            except (OSError, ValueError):
                nodes[int(name[4:])] = []
    if not nodes:
        nodes = {0: list(range(os.cpu_count() or 1))}
    return dict(sorted(nodes.items()))


def node_of(cpu: int, nodes: dict[int, list[int]] | None = None) -> int:
    """The NUMA node of *cpu* (0 when no node lists it)."""
    for node, cpus in (nodes if nodes is not None else numa_nodes()).items():
        if cpu in cpus:
            return node
    return 0


def _address(mm: mmap.mmap) -> int:
    """Start address of a mapping (writable maps only: ctypes needs a
    writable buffer). The temporary export is released before returning, so
    the mmap can still be closed."""
    view = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def bind_to_node(mm: mmap.mmap, node: int) -> bool:
    """Bind the pages of *mm* to NUMA *node* (mbind MPOL_BIND, moving pages
    already there). Does nothing and returns False on a single-node machine,
    an unknown architecture, a read-only or empty map, or when the kernel
    refuses; True when the kernel accepted the policy."""
    nodes = numa_nodes()
    if len(nodes) <= 1:
        return False
    if node not in nodes:
        raise InvalidArgument(f"NUMA node {node} is not one of {sorted(nodes)}")
    nr = _SYS_MBIND.get(platform.machine())
    if nr is None or len(mm) == 0:
        return False
    try:
        addr = _address(mm)
    except TypeError:
        return False
    bits = 64 * (max(nodes) // 64 + 1)
    mask = (ctypes.c_ulong * (bits // 64))()
    mask[node // 64] |= 1 << (node % 64)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_void_p(addr), ctypes.c_ulong(len(mm)), ctypes.c_int(MPOL_BIND),
                      mask, ctypes.c_ulong(bits + 1), ctypes.c_uint(MPOL_MF_MOVE))
    return rc == 0


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent huge page mode ('always', 'madvise',
    'never'), or None when the kernel has no THP."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def advise_huge_pages(mm: mmap.mmap) -> bool:
    """Ask for transparent huge pages on *mm* (madvise MADV_HUGEPAGE).
    Returns whether the kernel accepted the advice; False where Python or the
    kernel lack it or THP is 'never'. Accepted advice is not a promise: see
    ``mapping_page_size`` for what was obtained."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or thp_mode() in (None, "never"):
        return False
    try:
        mm.madvise(advice)
    except (OSError, ValueError):
        return False
    return True


def hugetlbfs_mounts(path: str = "/proc/mounts") -> list[str]:
    """Mount points of hugetlbfs file systems (segments placed there get
    huge pages for certain)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [fields[1] for fields in (line.split() for line in lines) if len(fields) > 2 and fields[2] == "hugetlbfs"]


def _pmd_size() -> int:
    try:
        with open(THP_PMD_SIZE, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2 << 20


def mapping_page_size(mm: mmap.mmap, smaps: str = "/proc/self/smaps") -> tuple[int, str | None]:
    """(page size actually backing *mm*, fallback reason or None), read from
    /proc/self/smaps: the kernel page size of the mapping (huge on
    hugetlbfs), or the THP size when transparent huge pages back part of it."""
    base = mmap.PAGESIZE
    try:
        addr = _address(mm)
    except TypeError:
        return base, "read-only mapping: its address (and page size) cannot be looked up"
    fields: dict[str, int] = {}
    try:
        with open(smaps, encoding="utf-8", errors="replace") as f:
            inside = False
            for line in f:
                head = line.split(None, 1)[0] if line.strip() else ""
                if "-" in head and ":" not in head:
                    if inside:
                        break
                    lo, _, hi = head.partition("-")
                    inside = int(lo, 16) <= addr < int(hi, 16)
                elif inside and head.endswith(":"):
                    parts = line.split()
                    if len(parts) >= 3 and parts[2] == "kB":
                        fields[head[:-1]] = int(parts[1]) * 1024
    except (OSError, ValueError):
        return base, f"{smaps} is unreadable"
    if not fields:
        return base, f"mapping not found in {smaps}"
    kernel = fields.get("KernelPageSize", base)
    if kernel > base:
        return kernel, None
    if any(fields.get(k, 0) > 0 for k in ("AnonHugePages", "ShmemPmdMapped", "FilePmdMapped")):
        return _pmd_size(), None
    mode = thp_mode()
    if mode in (None, "never"):
        return base, f"transparent huge pages are {mode or 'absent'} in this kernel"
    return base, (f"no huge page backs the mapping (THP '{mode}', shared-memory THP "
                  f"'{thp_mode(THP_SHMEM)}'; disk-file mappings need hugetlbfs)")


def _policy_bound(mm: mmap.mmap, node: int, numa_maps: str = "/proc/self/numa_maps") -> bool:
    try:
        addr = _address(mm)
        with open(numa_maps, encoding="utf-8", errors="replace") as f:
            for line in f:
                start, _, rest = line.partition(" ")
                if int(start, 16) == addr:
                    return rest.startswith(f"bind:{node}")
    except (OSError, ValueError, TypeError):
        pass
    return False


def placement_report(requested_cpu: int | None = None, segments: Sequence[mmap.mmap] = ()) -> dict[str, Any]:
    """What this process actually obtained: its CPU (from the affinity in
    force), NUMA node, and the page size backing *segments* (the smallest
    among them; the base page size when there are none). Each of cpu, node
    and page_size comes with a ``*_fallback`` reason (None when nothing was
    refused or there was nothing to do)."""
    cpus = usable_cpus()
    cpu = cpus[0] if len(cpus) == 1 else None
    cpu_fallback = None
    if requested_cpu is not None and cpu != requested_cpu:
        cpu_fallback = f"asked for cpu {requested_cpu}; the kernel's affinity for this process is {cpus}"
    nodes = numa_nodes()
    node = node_of(cpu, nodes) if cpu is not None else (next(iter(nodes)) if len(nodes) == 1 else None)
    node_fallback = None
    if len(nodes) == 1:
        node_fallback = "single NUMA node: nothing to bind"
    elif node is None:
        node_fallback = "not pinned to one cpu: no home node"
    elif any(not _policy_bound(mm, node) for mm in segments):
        node_fallback = f"some segments are not bound to node {node} (mbind refused or not asked)"
    page_size, page_fallback = mmap.PAGESIZE, None
    if segments:
        found = [mapping_page_size(mm) for mm in segments]
        page_size = min(size for size, _ in found)
        page_fallback = next((reason for size, reason in found if size == page_size and reason), None)
    return {
        "pid": os.getpid(),
        "cpu": cpu,
        "cpus": cpus,
        "cpu_fallback": cpu_fallback,
        "node": node,
        "numa_nodes": len(nodes),
        "node_fallback": node_fallback,
        "page_size": page_size,
        "page_size_fallback": page_fallback,
        "thp": thp_mode(),
        "hugetlbfs": hugetlbfs_mounts(),
    }
