"""The actor runtime: actors in their own worker processes, reached through
refs (``tell``, ``ask -> Future``), placed on CPUs, NUMA nodes and huge pages.

Knows nothing of keys or storage. Talks through ``lightning_db.mailbox``
(never zmq directly).
"""

from __future__ import annotations

from .actor import Actor, ActorLoop
from .errors import ActorDead, ActorStartError, PlacementRefused, PoisonMessage
from .placement import (
    advise_huge_pages,
    bind_to_node,
    hugetlbfs_mounts,
    node_of,
    numa_nodes,
    pin,
    placement_report,
    usable_cpus,
)
from .runtime import DEFAULT_ASK_TIMEOUT, ActorRef, ipc_address, spawn

__all__ = [
    "Actor",
    "ActorLoop",
    "ActorRef",
    "spawn",
    "ipc_address",
    "DEFAULT_ASK_TIMEOUT",
    "ActorStartError",
    "ActorDead",
    "PoisonMessage",
    "PlacementRefused",
    "usable_cpus",
    "pin",
    "numa_nodes",
    "node_of",
    "bind_to_node",
    "advise_huge_pages",
    "hugetlbfs_mounts",
    "placement_report",
]
