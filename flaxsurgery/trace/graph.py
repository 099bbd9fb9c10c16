"""The axis graph: a union-find over the axes of every value in a forward pass.

Every axis of every value is a node. A primitive's handler unions each output axis with the
input axes it carries units from; a class (a set of unioned nodes) that touches a parameter
axis is a *space*. A class may be *structured*: the concatenation of consecutive segments, or
the row-major flattening (a grid) of several parts. Some facts are only checkable once every
union is known ("this axis must carry no units"): handlers record them as constraints.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence


@dataclasses.dataclass
class _Structure:
    kind: str  # "concat" (segments) or "grid" (row-major product, last part fastest)
    parts: list


@dataclasses.dataclass
class _Constraint:
    nodes: list
    reason: str


@dataclasses.dataclass
class Axis:
    """One axis of a parameter leaf, an input or an output, and its node in the graph."""

    node: int
    owner: str  # leaf path, input name or output name
    axis: int


class AxisGraph:
    """Union-find over axes; each class may be structured as a concat or grid of other nodes.

    What a primitive handler uses (see `register_primitive`): `fresh_axes` for the nodes of a
    new value, `union` (or `union_axes`) for axes that carry the same units, `constrain` for
    axes that must carry none (a pooled or reversed axis), and the `mixing` set for axes whose
    units the operation combines (a sum over features).
    """

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.structure: dict[int, _Structure] = {}
        self.part_of: dict[int, tuple[int, str, int]] = {}  # node -> (parent node, kind, index)
        self.window: set[int] = set()  # nodes that are conv kernel window axes (never units)
        self.blank: set[int] = set()  # other nodes that never carry units (depthwise in-channel)
        self.units: set[int] = set()  # nodes known to carry units though no parameter axis is in
        # their class (a depthwise conv's input channels and channel multiplier)
        self.mixing: set[int] = set()  # nodes whose units are combined (reductions, act x act)
        self.param_axes: set[int] = set()  # the nodes of the parameters' own axes
        self.derived: set[int] = set()  # axes of values computed from parameters alone
        self.unflattened: set[int] = set()  # axes a reshape split into parts (GroupNorm's groups)
        self.slid: set[int] = set()  # axes a conv window slides over (positions, never units)
        self.constraints: list[_Constraint] = []

    def fresh(self, size: int) -> int:
        """A new node: an axis of `size` entries, coupled with nothing yet."""
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def fresh_axes(self, shape: Sequence[int]) -> list[int]:
        """New nodes for the axes of a value of this shape."""
        return [self.fresh(n) for n in shape]

    def find(self, node: int) -> int:
        """The root of `node`'s class."""
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: int, b: int, where: str) -> int:
        """Records that axes `a` and `b` carry the same units (they must have one size)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise ValueError(
                f"trace_layout: internal error at {where}: coupling axes of sizes "
                f"{self.size[ra]} and {self.size[rb]}; please report this model"
            )
        sa, sb = self.structure.pop(ra, None), self.structure.pop(rb, None)
        self.parent[rb] = ra
        if sa is None or sb is None:
            if sa or sb:
                self.structure[ra] = sa or sb
            return ra
        self.structure[ra] = sa
        same_shape = sa.kind == sb.kind and [self.size[p] for p in sa.parts] == [
            self.size[p] for p in sb.parts
        ]
        if same_shape:
            for pa, pb in zip(sa.parts, sb.parts):
                self.union(pa, pb, where)
        else:
            self.constrain([ra], f"{where}: one axis split two incompatible ways")
        return self.find(ra)

    def union_axes(self, a: Sequence[int], b: Sequence[int], where: str) -> None:
        """`union` of two values' axes, pairwise (both of one rank)."""
        for x, y in zip(a, b, strict=True):
            self.union(x, y, where)

    def constrain(self, nodes: Sequence[int], reason: str) -> None:
        """Records that these axes must carry no units (checked once all unions are known)."""
        self.constraints.append(_Constraint(list(nodes), reason))

    def structured(self, kind: str, parts: Sequence[int]) -> int:
        """A new node made of `parts`: their concatenation, or their row-major grid."""
        node = self.fresh(sum(self.size[p] for p in parts) if kind == "concat" else
                          math.prod(self.size[p] for p in parts))
        self._set_structure(node, kind, list(parts))
        return node

    def _set_structure(self, node: int, kind: str, parts: list) -> None:
        self.structure[self.find(node)] = _Structure(kind, parts)
        for i, p in enumerate(parts):
            self.part_of.setdefault(p, (node, kind, i))

    def merge_grid(self, parts: Sequence[int]) -> int:
        """The node of a flattened axis whose row-major parts are `parts`."""
        for p in parts[:1]:
            owner = self.part_of.get(p)
            if owner and owner[1] == "grid":
                st = self.structure.get(self.find(owner[0]))
                if st and [self.find(x) for x in st.parts] == [self.find(x) for x in parts]:
                    return owner[0]  # unflatten then flatten: the same axis again
        return self.structured("grid", parts)

    def split_grid(self, node: int, sizes: Sequence[int], where: str) -> list[int]:
        """The parts of `node` unflattened into `sizes` (row-major)."""
        st = self.structure.get(self.find(node))
        if st is None:
            parts = self.fresh_axes(sizes)
            self._set_structure(node, "grid", parts)
            self.unflattened.add(node)
            return parts
        if st.kind == "grid" and [self.size[p] for p in st.parts] == list(sizes):
            return list(st.parts)
        parts = self.fresh_axes(sizes)
        self.constrain([node, *parts], f"{where}: reshape splits an axis that is already "
                                       "split another way")
        return parts

    def segment(self, node: int, start: int, stop: int) -> int | None:
        """The node of `node[start:stop]`; None where the axis is a grid (cannot be cut)."""
        root = self.find(node)
        if start == 0 and stop == self.size[root]:
            return root
        st = self.structure.get(root)
        if st is None:
            bounds = (0, start, stop, self.size[root])
            pieces = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
            parts = [self.fresh(b - a) for a, b in pieces]
            self._set_structure(root, "concat", parts)
            return parts[pieces.index((start, stop))]
        if st.kind != "concat":
            return None
        offsets = [0]
        for p in st.parts:
            offsets.append(offsets[-1] + self.size[p])
        first = max(i for i, o in enumerate(offsets[:-1]) if o <= start)
        last = max(i for i, o in enumerate(offsets[:-1]) if o < stop)
        if first == last:
            return self.segment(st.parts[first], start - offsets[first], stop - offsets[first])
        head = self.segment(st.parts[first], start - offsets[first], self.size[st.parts[first]])
        tail = self.segment(st.parts[last], 0, stop - offsets[last])
        if head is None or tail is None:
            return None
        return self.structured("concat", [head, *st.parts[first + 1:last], tail])


def unit_classes(g: AxisGraph, param_axes: list[Axis]) -> tuple[set[int], set[int]]:
    """Roots of the classes that carry units, propagated through concat and grid structure, and
    the roots of flattened axes none of whose parts is known to carry units (ambiguous).

    An axis of units that a reshape splits into parts (a GroupNorm's groups x channels, a
    distributional head's actions x atoms) is not ambiguous: each unit is a cell of the parts,
    so every part of more than one entry carries units; unless a conv slides over a part (a
    dense layer's output reshaped into an image), which makes it positions.
    """
    known: set[int] = set()
    slid = {g.find(n) for n in g.slid}
    while True:
        carrying, ambiguous = _propagate(g, param_axes, known)
        unflattened = {g.find(n) for n in g.unflattened}
        parts = [[g.find(p) for p in g.structure[root].parts] for root in ambiguous & unflattened]
        split = {p for group in parts if not slid & set(group) for p in group if g.size[p] > 1}
        if not split:
            return carrying, ambiguous
        known |= split


def _propagate(g: AxisGraph, param_axes: list[Axis], known: set[int]) -> tuple[set[int], set[int]]:
    carrying = {g.find(a.node) for a in param_axes if g.find(a.node) not in
                {g.find(w) for w in g.window | g.blank}} | {g.find(n) for n in g.units | known}
    ambiguous = set()
    changed = True
    while changed:
        changed = False
        for root, st in list(g.structure.items()):
            root = g.find(root)
            parts = [g.find(p) for p in st.parts]
            new = set()
            if any(p in carrying for p in parts):
                new.add(root)
            if root in carrying and st.kind == "concat":
                new.update(parts)
            wide = [p for p in parts if g.size[p] > 1]
            if root in carrying and st.kind == "grid" and len(wide) > 1 and \
                    not any(p in carrying for p in parts):
                ambiguous.add(root)  # which of the flattened axes are units? never guess
            elif root in carrying and st.kind == "grid" and len(wide) == 1:
                new.add(wide[0])
            if not new <= carrying:
                carrying |= new
                changed = True
    return carrying, ambiguous - {r for r in ambiguous if any(
        g.find(p) in carrying for p in g.structure[r].parts)}
