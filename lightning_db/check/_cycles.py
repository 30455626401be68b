"""Cycle search over a transaction dependency graph, for the list-append
checker (:mod:`lightning_db.check.listappend`).

The graph is a list of adjacency dicts: ``adj[a][b]`` is a bitmask of the
edge types from transaction ``a`` to ``b``. Searches work inside one strongly
connected component at a time and use shortest-path BFS (plain, or over
small product graphs that track the type of the last edge), so the cost is
polynomial: no enumeration of simple cycles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

__all__ = ["WW", "WR", "RW", "RT", "PR", "NAMES", "successors", "tarjan", "find_cycles"]

WW, WR, RW, RT, PR = 1, 2, 4, 8, 16
NAMES = {WW: "ww", WR: "wr", RW: "rw", RT: "realtime", PR: "process"}
_PREFER = (WW, WR, PR, RT, RW)  # the label shown when a pair has several edges
_ATTEMPTS = 32  # rw edges tried per component for G-nonadjacent and G2

_Adj = list[dict[int, int]]
_Step = tuple[int, int, int]


def successors(adj: _Adj, mask: int,
               members: set[int] | None = None) -> Callable[[int], list[int]]:
    """A successor function over edges of a type in mask (within members)."""
    if members is None:
        return lambda v: [w for w, m in adj[v].items() if m & mask]
    return lambda v: [w for w, m in adj[v].items() if m & mask and w in members]


def tarjan(nodes: Iterable[Hashable],
           succ: Callable[[Any], Iterable[Hashable]]) -> list[list[Any]]:
    """Strongly connected components (iterative Tarjan), each emitted after
    every component reachable from it (reverse topological order)."""
    index: dict[Any, int] = {}
    low: dict[Any, int] = {}
    stack: list[Any] = []
    on_stack: set[Any] = set()
    out: list[list[Any]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(succ(root)))]
        while work:
            v, it = work[-1]
            pushed = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ(w))))
                    pushed = True
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            if pushed:
                continue
            work.pop()
            if work and low[v] < low[work[-1][0]]:
                low[work[-1][0]] = low[v]
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


def _label(m: int) -> int:
    return next(t for t in _PREFER if m & t)


def _bfs(adj: _Adj, src: int, dst: int, mask: int, members: set[int]) -> list[_Step] | None:
    """The shortest path src -> dst over edges in mask, as steps."""
    parent: dict[int, int] = {src: src}
    queue = deque([src])
    while queue and dst not in parent:
        u = queue.popleft()
        for w, m in adj[u].items():
            if m & mask and w in members and w not in parent:
                parent[w] = u
                queue.append(w)
    if dst not in parent:
        return None
    steps: list[_Step] = []
    v = dst
    while v != src:
        u = parent[v]
        steps.append((u, _label(adj[u][v] & mask), v))
        v = u
    return steps[::-1]


def _close(adj: _Adj, comp: list[int], close: int, mask: int) -> list[_Step] | None:
    """A cycle in comp made of one edge of a type in close (a -> b) and a
    shortest path b -> a over mask."""
    members = set(comp)
    for a in comp:
        for b, m in adj[a].items():
            if m & close and b in members:
                path = _bfs(adj, b, a, mask, members)
                if path is not None:
                    return path + [(a, _label(m & close), b)]
    return None


def _state_bfs(adj: _Adj, members: set[int], dep: int, start: tuple,
               goal: Callable[[tuple], bool],
               step: Callable[[tuple, int, int], tuple | None]) -> list[_Step] | None:
    """BFS over (node, ...) states; edges are dep types or rw."""
    parent: dict[tuple, tuple[tuple, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        if goal(s):
            steps: list[_Step] = []
            while parent[s] is not None:
                prev, t = parent[s]  # type: ignore[misc]
                steps.append((prev[0], t, s[0]))
                s = prev
            return steps[::-1]
        for w, m in adj[s[0]].items():
            if w not in members:
                continue
            for t in ((_label(m & dep),) if m & dep else ()) + ((RW,) if m & RW else ()):
                ns = step(s, w, t)
                if ns is not None and ns not in parent:
                    parent[ns] = (s, t)
                    queue.append(ns)
    return None


def _classify(cycle: list[_Step]) -> str:
    rw = [t == RW for _, t, _ in cycle]
    if not any(rw):
        return "G1c" if any(t == WR for _, t, _ in cycle) else "G0"
    if sum(rw) == 1:
        return "G-single"
    return "G2" if any(rw[i] and rw[i - 1] for i in range(len(rw))) else "G-nonadjacent"


def _pick(walk: list[_Step], kind: str) -> list[_Step] | None:
    """Split a closed walk into simple cycles; return one of class kind."""
    stack: list[_Step] = []
    where: dict[int, int] = {}
    for step in walk:
        where.setdefault(step[0], len(stack))
        stack.append(step)
        if step[2] in where:
            i = where[step[2]]
            cycle = stack[i:]
            del stack[i:]
            for u, _, _ in cycle:
                where.pop(u, None)
            if _classify(cycle) == kind:
                return cycle
    return None


def _rw_edges(adj: _Adj, scc: list[int], members: set[int]) -> list[tuple[int, int]]:
    return [(a, b) for a in scc for b, m in adj[a].items() if m & RW and b in members]


def find_cycles(adj: _Adj, scc: list[int], dep: int) -> dict[str, list[_Step]]:
    """One example cycle per class found in one strongly connected component.
    dep is the set of non-rw edge types allowed (ww, wr and any extras)."""
    members = set(scc)
    found: dict[str, list[_Step]] = {}
    g0 = dep & ~WR
    for comp in tarjan(scc, successors(adj, g0, members)):
        if len(comp) > 1 and (cyc := _close(adj, comp, g0, g0)):
            found["G0"] = cyc
            break
    dep_comps = tarjan(scc, successors(adj, dep, members))
    for comp in dep_comps:
        if len(comp) > 1 and (cyc := _close(adj, comp, WR, dep)):
            found["G1c"] = cyc
            break
    rw = _rw_edges(adj, scc, members)
    if not rw:
        return found
    # G-single: rw a -> b closed by a dep path b -> a; bitset reachability
    # over the condensation of the dep subgraph tells which rw edges close.
    cid: dict[int, int] = {}
    for ci, comp in enumerate(dep_comps):
        for v in comp:
            cid[v] = ci
    reach: list[int] = []
    succ = successors(adj, dep, members)
    for ci, comp in enumerate(dep_comps):
        r = 1 << ci
        for v in comp:
            for w in succ(v):
                if cid[w] != ci:
                    r |= reach[cid[w]]
        reach.append(r)
    for a, b in rw:
        if reach[cid[b]] >> cid[a] & 1:
            path = _bfs(adj, b, a, dep, members)
            if path is not None:
                found["G-single"] = path + [(a, RW, b)]
                break
    # G-nonadjacent: states (node, last edge was rw); a cycle in this product
    # graph has no two adjacent rw edges. Try rw edges lying on such a cycle.
    def psucc(s: tuple[int, int]) -> list[tuple[int, int]]:
        out = []
        for w, m in adj[s[0]].items():
            if w in members:
                if m & dep:
                    out.append((w, 0))
                if m & RW and not s[1]:
                    out.append((w, 1))
        return out

    pcid: dict[tuple[int, int], int] = {}
    pstates = [(v, s) for v in scc for s in (0, 1)]
    for ci, comp in enumerate(tarjan(pstates, psucc)):
        for s in comp:
            pcid[s] = ci
    tries = [(a, b) for a, b in rw if pcid[(a, 0)] == pcid[(b, 1)]]
    for a, b in tries[:_ATTEMPTS]:
        path = _state_bfs(
            adj, members, dep, (b, 1, 0),
            lambda s, a=a: s[0] == a and s[1] == 0 and s[2] == 1,
            lambda s, w, t: (w, 0, s[2]) if t != RW else (None if s[1] else (w, 1, 1)))
        if path is not None and (cyc := _pick(path + [(a, RW, b)], "G-nonadjacent")):
            found["G-nonadjacent"] = cyc
            break
    # G2: a cycle with two adjacent rw edges (the closing edge counts).
    for a, b in rw[:_ATTEMPTS]:
        path = _state_bfs(
            adj, members, dep, (b, 1, 0),
            lambda s, a=a: s[0] == a and (s[1] == 1 or s[2] == 1),
            lambda s, w, t: (w, 0, s[2]) if t != RW else (w, 1, s[2] | s[1]))
        if path is not None and (cyc := _pick(path + [(a, RW, b)], "G2")):
            found["G2"] = cyc
            break
    return found
