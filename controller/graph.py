"""Dependency graphs between resources: cycles, closures, inversion.

Pure: no I/O. An edge ``reader -> source`` means the reader's inputs read the source's outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def invert(edges: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Return ``source -> readers`` for edges given as ``reader -> sources``."""
    readers: dict[str, set[str]] = {}
    for reader, sources in edges.items():
        for source in sources:
            readers.setdefault(source, set()).add(reader)
    return readers


def closure(start: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
    """Every node reachable from ``start`` (start included) following ``edges``."""
    seen = set(start)
    todo = list(seen)
    while todo:
        node = todo.pop()
        for nxt in edges.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return one cycle as a list of nodes (each reads the next, the last reads the first), or None.

    Iterative depth-first search, so deep graphs do not hit Python's recursion limit. Deterministic: nodes
    and their edges are visited in sorted order.
    """
    white, grey, black = 0, 1, 2
    colour: dict[str, int] = {}
    for root in sorted(edges):
        if colour.get(root, white) != white:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(edges.get(root, ())))]
        colour[root] = grey
        path = [root]
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            state = colour.get(nxt, white)
            if state == grey:
                return path[path.index(nxt) :]
            if state == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append((nxt, sorted(edges.get(nxt, ()))))
    return None


def describe_cycle(cycle: list[str]) -> str:
    """``a -> b -> a`` for a cycle in which a reads b and b reads a."""
    return " -> ".join([*cycle, cycle[0]])
