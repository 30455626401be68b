"""Placement: what the kernel actually granted is what gets reported.

Pinning is exercised in a spawned actor (pinning the test process would
change pytest's own affinity); the sysfs and procfs parsers run on planted
files so that NUMA and huge-page paths are tested on any machine.
"""

from __future__ import annotations

import mmap
import os
import threading

import psutil
import pytest

from lightning_db import errors
from lightning_db.actors import (
    advise_huge_pages,
    bind_to_node,
    hugetlbfs_mounts,
    node_of,
    numa_nodes,
    pin,
    placement,
    placement_report,
    spawn,
    usable_cpus,
)
from lightning_db.actors.placement import batch_scheduling, mapping_page_size, parse_cpulist, thp_mode

from .sample_actors import EchoActor


def test_usable_cpus_is_the_affinity():
    assert usable_cpus() == sorted(os.sched_getaffinity(0))


def test_a_pinned_actor_reports_the_cpu_it_actually_got(runtime_dir):
    cpu = usable_cpus()[-1]
    ref = spawn(EchoActor, name="pinned", runtime_dir=runtime_dir, cpu=cpu)
    try:
        report = ref.stats().result(30)["placement"]
        assert report["pid"] == ref.pid
        assert (report["cpu"], report["cpus"], report["cpu_fallback"]) == (cpu, [cpu], None)
        assert report["node"] == node_of(cpu)
        proc = psutil.Process(ref.pid)
        assert proc.cpu_affinity() == [cpu]
        for thread in proc.threads():                 # zmq's and the watchdog's threads too
            assert os.sched_getaffinity(thread.id) == {cpu}
    finally:
        ref.stop()


def test_the_report_says_when_the_requested_cpu_was_not_obtained():
    cpus = usable_cpus()
    report = placement_report(requested_cpu=max(cpus) + 1)
    assert report["cpus"] == cpus and report["cpu"] == (cpus[0] if len(cpus) == 1 else None)
    assert "asked for cpu" in report["cpu_fallback"]
    assert placement_report()["cpu_fallback"] is None


def test_pin_refuses_cpus_outside_the_affinity():
    for bad in (max(usable_cpus()) + 1, -1, "0", None):
        with pytest.raises(errors.InvalidArgument):
            pin(bad)  # type: ignore[arg-type]
    assert usable_cpus() == sorted(os.sched_getaffinity(0))   # nothing changed


@pytest.mark.parametrize("text, cpus", [("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]), ("5", [5]), ("", [])])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


def test_numa_nodes_from_sysfs(tmp_path):
    for node, cpulist in ((0, "0-1"), (1, "2-3"), (2, "")):       # node 2: memory only
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(cpulist + "\n")
    (tmp_path / "online").write_text("0-2\n")
    (tmp_path / "nodefoo").mkdir()
    nodes = numa_nodes(str(tmp_path))
    assert nodes == {0: [0, 1], 1: [2, 3], 2: []}
    assert (node_of(3, nodes), node_of(0, nodes), node_of(99, nodes)) == (1, 0, 0)


def test_one_node_without_sysfs(tmp_path):
    assert numa_nodes(str(tmp_path / "absent")) == {0: list(range(os.cpu_count() or 1))}


def test_bind_to_node_does_nothing_on_one_node(monkeypatch):
    monkeypatch.setattr(placement, "numa_nodes", lambda: {0: [0, 1]})
    with mmap.mmap(-1, 1 << 16) as mm:
        assert bind_to_node(mm, 0) is False


def test_bind_to_node_checks_the_node(monkeypatch):
    monkeypatch.setattr(placement, "numa_nodes", lambda: {0: [0], 1: [1]})
    with mmap.mmap(-1, 1 << 16) as mm, pytest.raises(errors.InvalidArgument):
        bind_to_node(mm, 5)


def test_advise_huge_pages_answers_and_the_mapping_stays_usable():
    with mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE) as mm:
        accepted = advise_huge_pages(mm)     # private anonymous memory: THP's own ground
        assert accepted is (thp_mode() not in (None, "never") and hasattr(mmap, "MADV_HUGEPAGE"))
        mm[:] = b"x" * len(mm)
        size, reason = mapping_page_size(mm)
        assert size >= mmap.PAGESIZE and (reason is None) == (size > mmap.PAGESIZE)
        report = placement_report(segments=[mm])
        assert (report["page_size"], report["page_size_fallback"]) == (size, reason)


def test_the_report_gives_the_smallest_page_size_of_its_segments():
    with mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE) as huge, mmap.mmap(-1, 1 << 16) as small:
        advise_huge_pages(huge)
        huge[:] = b"x" * len(huge)
        small[:] = b"y" * len(small)
        report = placement_report(segments=[huge, small])
        assert (report["page_size"], report["page_size_fallback"]) == mapping_page_size(small)
        assert report["page_size"] == mmap.PAGESIZE and report["page_size_fallback"]


def _planted_smaps(tmp_path, mm: mmap.mmap, fields: str) -> str:
    start = placement._address(mm)
    text = (f"{start:x}-{start + len(mm):x} rw-p 00000000 00:00 0\n{fields}"
            f"{start + len(mm) + 4096:x}-{start + len(mm) + 8192:x} r--p 00000000 00:00 0\nKernelPageSize: 4 kB\n")
    path = tmp_path / "smaps"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("fields, expected_huge", [
    ("Size: 4096 kB\nKernelPageSize: 2048 kB\nAnonHugePages: 0 kB\n", True),        # hugetlbfs
    ("Size: 4096 kB\nKernelPageSize: 4 kB\nAnonHugePages: 2048 kB\n", True),        # THP
    ("Size: 4096 kB\nKernelPageSize: 4 kB\nFilePmdMapped: 2048 kB\n", True),        # THP on a file
    ("Size: 4096 kB\nKernelPageSize: 4 kB\nAnonHugePages: 0 kB\n", False),
])
def test_page_size_is_read_from_smaps(tmp_path, fields, expected_huge):
    with mmap.mmap(-1, 4 << 20) as mm:
        size, reason = mapping_page_size(mm, _planted_smaps(tmp_path, mm, fields))
    assert (size > mmap.PAGESIZE) is expected_huge
    assert (reason is None) is expected_huge


def test_page_size_falls_back_when_the_mapping_is_not_listed(tmp_path):
    (tmp_path / "smaps").write_text("")
    with mmap.mmap(-1, 1 << 16) as mm:
        assert mapping_page_size(mm, str(tmp_path / "smaps")) == (mmap.PAGESIZE, f"mapping not found in {tmp_path / 'smaps'}")


def test_hugetlbfs_mounts_and_thp_mode_from_planted_files(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nhugetlbfs /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n")
    assert hugetlbfs_mounts(str(mounts)) == ["/dev/hugepages"]
    assert hugetlbfs_mounts(str(tmp_path / "absent")) == []
    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    assert thp_mode(str(thp)) == "madvise"
    assert thp_mode(str(tmp_path / "absent")) is None


def _in_a_thread(fn):
    """Run *fn* in a new thread (a policy set there ends with it); its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    return out[0]


def test_batch_scheduling_sets_the_calling_thread_only_and_reports_the_kernel_policy():
    before = os.sched_getscheduler(0)

    def ask():
        got = batch_scheduling()
        return got, os.sched_getscheduler(0)

    got, policy = _in_a_thread(ask)
    assert (got, policy) == ("batch", os.SCHED_BATCH)      # no privilege is needed for it
    assert os.sched_getscheduler(0) == before              # this thread's policy is untouched


def test_batch_scheduling_refused_or_absent_reports_normal(monkeypatch):
    def refuse(*_):
        raise PermissionError(1, "Operation not permitted")

    before = os.sched_getscheduler(0)
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    got, policy = _in_a_thread(lambda: (batch_scheduling(), os.sched_getscheduler(0)))
    assert got == ("batch" if policy == os.SCHED_BATCH else "normal")     # what is in force, not what was asked
    if before == os.SCHED_OTHER:
        assert (got, policy) == ("normal", os.SCHED_OTHER)
    monkeypatch.delattr(os, "SCHED_BATCH")
    assert _in_a_thread(batch_scheduling) == "normal"
