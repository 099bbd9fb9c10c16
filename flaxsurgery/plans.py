"""The plan type: what the host computed, per leaf and per space, and its report.

A [`Plan`][flaxsurgery.Plan] holds, for every leaf of the new tree, its source leaf in the old tree and one
int32 index array per axis (``-1`` marks a unit the old network lacks), plus the static
description of how new entries are filled; [`flaxsurgery.plan`][flaxsurgery.plan] builds it and
[`flaxsurgery.transplant`][flaxsurgery.transplant.transplant] applies it.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import numpy as np

from flaxsurgery import rules as rules_lib
from flaxsurgery.rules import PRESERVED, Preserved, Role, Side
from flaxsurgery.units import Fill, index_by_id

# How an axis of a new leaf relates to its units: a rule's side (their incoming weights on the
# leaf's output axis, their outgoing weights on an input axis), or no units (a window, a kept axis).
AxisSide = Side | Literal["unitless"]


class AxisArrays(NamedTuple):
    """The per-unit arrays of one gathered axis (NumPy on the host; device arrays under jit).

    Attributes:
      src: int32, each new unit's index into the old axis; -1 where a fill applies.
      kind: int32, which of the axis's fills a unit takes (a Concat of spaces with different
        rules), else None.
      scale: float32 multipliers (Net2Net split), else None.
      offset: float32 addends (a new unit's bias margin), else None.
      own: int32, each unit's own old index, -1 if it is new, where `src` copies another unit.
    """

    src: np.ndarray
    kind: np.ndarray | None = None
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    own: np.ndarray | None = None


class LeafArrays(NamedTuple):
    """A leaf's arrays: one `AxisArrays` per axis (None where the axis is kept as it is),
    and for an identity kernel, each output unit's matching input unit."""

    axes: tuple = ()
    match: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """How one axis of a new leaf is filled (static; the index arrays live in `Plan.arrays`).

    Attributes:
      side: ``"incoming"`` (the leaf's output axis: its units' incoming weights),
        ``"outgoing"`` (an input axis) or ``"unitless"`` (a window, or an axis without units).
      gather: whether the axis is gathered by its ``src`` array (False: the old axis as it is).
      fills: how entries whose ``src`` is -1 start ([`Fill`][flaxsurgery.Fill]): one kind,
        or several (a ``Concat`` of spaces with different rules), told apart by the per-unit
        ``kind`` array.
      scaled: whether a per-unit ``scale`` multiplies the gathered values (Net2Net split).
      offset: whether a per-unit ``offset`` is added, after the fills (a new unit's bias).
      prefix: when ``src`` is ``0, 1, ..., prefix-1`` then only -1 (units kept in order, new
        ones appended: the usual widening), the gather is a slice and a pad, which XLA fuses
        better than a general gather.
      copied: whether some new units gather another unit's values (``copy``, ``split``); the
        ``own`` array then says which units are new, for optimizer state.
    """

    side: AxisSide
    gather: bool
    fills: tuple[Fill, ...] = ()
    scaled: bool = False
    offset: bool = False
    prefix: int | None = None
    copied: bool = False


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """What one leaf of the new tree is made of (static).

    Attributes:
      path: the new leaf's path.
      source: the old leaf's path, or None for a leaf initialised whole by `init`.
      init: ``"gather"`` (from `source`), or a layer init (``"identity"``, ``"near_identity"``,
        ``"fresh"``, ``"zeros"``: `LayerInit`).
      shape, dtype: the new leaf's.
      axes: one `AxisPlan` per axis (for ``"gather"``).
      neutral: the value ``zeros`` means here (None where the leaf's name does not say it and
        no rule needs it).
      kernel_axes: for an identity kernel, its (input, output) axes.
    """

    path: str
    source: str | None
    init: str
    shape: tuple
    dtype: Any
    axes: tuple = ()
    neutral: float | None = 0.0
    kernel_axes: tuple | None = None

    @property
    def needs_fresh(self) -> bool:
        return self.init in ("fresh", "near_identity") or any(Fill.FRESH in a.fills for a in self.axes)

    def fill_order(self) -> tuple:
        """Axes whose new entries are filled, weakest claim first: incoming, outgoing, unitless.

        A new unit's outgoing weights override the incoming rule of the unit it feeds, and
        spatial padding of a grown conv kernel is always zero.
        """
        rank = {"incoming": 0, "outgoing": 1, "unitless": 2}
        filled = [i for i, a in enumerate(self.axes) if a.fills]
        return tuple(sorted(filled, key=lambda i: rank[self.axes[i].side]))


@dataclasses.dataclass(frozen=True)
class SpaceInfo:
    """A space's IDs, role and rule, and what the plan preserves of it.

    Attributes:
      role: the part the space plays: ``"input"``, ``"hidden"`` or ``"output"``.
      preserves: ``"function"``, ``"policy"``, ``"greedy"`` or ``"none"``, derived from what
        the plan does.
      why: when `preserves` is weaker than what the rule preserves at best, the reason.
    """

    name: str
    old_ids: tuple
    new_ids: tuple
    role: Role
    rule: rules_lib.Rule
    in_old: bool = True
    preserves: Preserved = "function"
    why: str = ""

    def index(self) -> np.ndarray:
        return self._index

    def exactness(self) -> str:
        """Renamed: the `preserves` attribute (this name warns, and goes in a later release)."""
        warnings.warn("SpaceInfo.exactness() is now SpaceInfo.preserves", DeprecationWarning, stacklevel=2)
        return self.preserves

    @functools.cached_property
    def _index(self) -> np.ndarray:  # computed once: a vocabulary can hold a million IDs
        index = index_by_id(self.new_ids, self.old_ids)
        index.flags.writeable = False
        return index



@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A transplant plan: static leaf plans plus their index arrays (the pytree's leaves).

    ``layer_inits`` holds ``(layer, init, preserves)`` per new or dropped layer and
    ``layer_notes`` ``(layer, why)`` where the report gives a reason.

    Build one with [`plan`][flaxsurgery.plan]; apply it with [`flaxsurgery.transplant`][flaxsurgery.transplant.transplant]. A plan can be
    closed over or passed into ``jax.jit``: its arrays are its only pytree leaves, and they are
    read-only, so a plan cannot be changed after it is built.
    """

    leaves: tuple
    arrays: tuple
    old_shapes: tuple
    old_treedef: Any
    new_treedef: Any
    spaces: tuple
    layer_inits: tuple
    layer_notes: tuple = ()

    def tree_flatten(self):
        static = (self.leaves, self.old_shapes, self.old_treedef, self.new_treedef, self.spaces,
                  self.layer_inits, self.layer_notes)
        return (self.arrays,), static

    @classmethod
    def tree_unflatten(cls, static, children):
        leaves, old_shapes, old_treedef, new_treedef, spaces, layer_inits, layer_notes = static
        return cls(leaves, children[0], old_shapes, old_treedef, new_treedef, spaces, layer_inits,
                   layer_notes)

    @functools.cached_property
    def old_leaves(self) -> dict[str, tuple[tuple, np.dtype]]:
        """``{old leaf path: (shape, dtype)}``: the old tree the plan was built for."""
        return {path: (shape, np.dtype(dtype)) for path, shape, dtype in self.old_shapes}

    @property
    def sources(self) -> set[str]:
        """The old leaves some new leaf takes from."""
        return {leaf.source for leaf in self.leaves if leaf.source is not None}

    def restricted(self, paths: Iterable[str]) -> Plan:
        """The part of this plan that makes the new leaves `paths`, over flat ``{path: leaf}``
        dicts: the old tree holds only their sources. Applied to a flat dict of the old leaves,
        it gives exactly those new leaves.

        >>> from flaxsurgery import plan
        >>> tree = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}
        >>> part = plan(tree, tree, {}).restricted({"w"})
        >>> print(*[leaf.path for leaf in part.leaves])
        w

        Raises:
          ValueError: naming the paths the plan does not make.
        """
        wanted = set(paths)
        known = {leaf.path for leaf in self.leaves}
        if wanted - known:
            raise ValueError(f"the plan has no new leaves {sorted(wanted - known)}; its leaves are {sorted(known)}")
        # A flat dict flattens in sorted key order: the leaf plans must follow it.
        picked = sorted((pair for pair in zip(self.leaves, self.arrays) if pair[0].path in wanted),
                        key=lambda pair: pair[0].path)
        sources = {leaf.source for leaf, _ in picked if leaf.source is not None}
        return dataclasses.replace(
            self,
            leaves=tuple(leaf for leaf, _ in picked),
            arrays=tuple(arrays for _, arrays in picked),
            old_shapes=tuple(entry for entry in self.old_shapes if entry[0] in sources),
            old_treedef=jax.tree_util.tree_structure({path: 0 for path in sources}),
            new_treedef=jax.tree_util.tree_structure({leaf.path: 0 for leaf, _ in picked}),
        )

    def renamed(self, names: Mapping[str, str]) -> Plan:
        """This plan with its old and new leaves renamed by `names` (``{path: new name}``,
        covering every old and new leaf), over flat dicts keyed by the new names (as
        `restricted` gives).

        >>> from flaxsurgery import plan
        >>> tree = {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)}
        >>> part = plan(tree, tree, {}).renamed({"a": "z", "b": "y"})
        >>> [(leaf.path, leaf.source) for leaf in part.leaves]  # in the new names' order
        [('y', 'y'), ('z', 'z')]

        Raises:
          ValueError: naming the leaves `names` does not cover, or two leaves given one name.
        """
        paths = {leaf.path for leaf in self.leaves} | {p for p, _, _ in self.old_shapes}
        missing = sorted(paths - set(names))
        if missing:
            raise ValueError(f"renamed: names must cover every leaf; missing {missing}")
        for kind, group in (("new", [leaf.path for leaf in self.leaves]), ("old", [p for p, _, _ in self.old_shapes])):
            if len({names[p] for p in group}) != len(group):
                raise ValueError(f"renamed: two {kind} leaves would get one name")
        # A flat dict flattens in sorted key order: the leaf plans must follow the new names'.
        pairs = sorted(((dataclasses.replace(leaf, path=names[leaf.path], source=names.get(leaf.source)), arr)
                        for leaf, arr in zip(self.leaves, self.arrays)), key=lambda pair: pair[0].path)
        return dataclasses.replace(
            self, leaves=tuple(leaf for leaf, _ in pairs), arrays=tuple(arr for _, arr in pairs),
            old_shapes=tuple((names[p], shape, dtype) for p, shape, dtype in self.old_shapes),
            old_treedef=jax.tree_util.tree_structure({names[p]: 0 for p, _, _ in self.old_shapes}),
            new_treedef=jax.tree_util.tree_structure({leaf.path: 0 for leaf, _ in pairs}),
        )

    def space(self, name: str) -> SpaceInfo:
        for info in self.spaces:
            if info.name == name:
                return info
        raise ValueError(f"unknown space {name!r}; the plan's spaces are {[s.name for s in self.spaces]}")

    def index(self, space: str) -> np.ndarray:
        """For each new unit ID of `space`, its position among the old IDs, or -1 if it is new.

        >>> from flaxsurgery import plan
        >>> p = plan({"w": np.zeros((2, 3), np.float32)}, {"w": np.zeros((3, 3), np.float32)}, {"w": ("in", None)},
        ...          spaces={"in": (["a", "b"], ["b", "c", "a"])})
        >>> p.index("in")
        array([ 1, -1,  0], dtype=int32)
        """
        return self.space(space).index()

    def preserves(self) -> str:
        """What the plan preserves: the weakest over every space and new layer, ``"function"``
        (outputs on the old units unchanged), ``"policy"``, ``"greedy"`` or ``"none"``."""
        levels = [s.preserves for s in self.spaces] + [e for _, _, e in self.layer_inits]
        return min(levels, key=PRESERVED.index, default="function")

    def exactness(self) -> str:
        """Renamed: `preserves` (this name warns, and goes in a later release)."""
        warnings.warn("Plan.exactness() is now Plan.preserves()", DeprecationWarning, stacklevel=2)
        return self.preserves()

    def report(self) -> str:
        """A human-readable account: per space its units and rule, per new layer its init, and
        what each preserves (with the reason where it is less than the rule preserves at best)."""
        lines = ["space             role     old  new  kept added removed  rule               preserves"]
        for s in self.spaces:
            if not s.in_old:
                lines.append(f"{s.name:<17} {s.role:<7}    - {len(s.new_ids):>4}  (a new layer's space)")
                continue
            kept = int((s.index() >= 0).sum())
            lines.append(
                f"{s.name:<17} {s.role:<7} {len(s.old_ids):>4} {len(s.new_ids):>4} {kept:>5} "
                f"{len(s.new_ids) - kept:>5} {len(s.old_ids) - kept:>7}  {s.rule.name:<18} "
                f"{s.preserves}"
            )
            if s.why:
                lines.append(f"  {s.name}: {s.why}")
        notes = dict(self.layer_notes)
        for layer, init, exact in self.layer_inits:
            if init == "dropped":
                lines.append(f"dropped old layer {layer}: preserves {exact}")
                continue
            lines.append(f"new layer {layer}: {init}, preserves {exact}")
            if layer in notes:
                lines.append(f"  {layer}: {notes[layer]}")
        lines.append(f"overall: preserves {self.preserves()}")
        return "\n".join(lines)
