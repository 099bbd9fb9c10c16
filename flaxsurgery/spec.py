"""Plans: what the host computes once, from layouts, unit IDs, a layer map and init rules.

Everything here is NumPy on the host. A :class:`Plan` holds, for every leaf of the new tree, its
source leaf in the old tree and one int32 index array per axis (``-1`` marks a unit the old
network lacks), plus the static description of how new entries are filled. Applying it
(:func:`flaxsurgery.transplant`) is pure ``jax.numpy``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from flaxsurgery import init as rules_lib
from flaxsurgery.layout import Concat, Grid, as_grid, output_axis, space_of, spaces_in
from flaxsurgery.paths import flatten, layer_of, leaf_name

IdSpec = int | Sequence[Hashable]
NEUTRAL_ONE = ("scale", "var")  # norm leaves whose neutral value is 1
EXACTNESS = ("none", "greedy", "function")  # weakest first


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """How one axis of a new leaf is filled (static; the index arrays live in `Plan.arrays`).

    Attributes:
      role: ``"input"``, ``"output"`` or ``"spatial"`` (an unmapped axis).
      gather: whether the axis is gathered by its ``src`` array (False: the old axis as it is).
      fills: how entries whose ``src`` is -1 start (``"fresh"``, ``"zeros"``, ``"mean"``,
        ``"zero"``): one kind, or several (a ``Concat`` of spaces with different rules), told
        apart by the per-unit ``kind`` array; empty when the axis has no such entry.
      scaled: whether a per-unit ``scale`` multiplies the gathered values (Net2Net split).
      offset: whether a per-unit ``offset`` is added, after the fills (a new unit's bias).
      prefix: when ``src`` is ``0, 1, ..., prefix-1`` then only -1 (units kept in order, new
        ones appended: the usual widening), the gather is a slice and a pad, which XLA fuses
        better than a general gather.
    """

    role: str
    gather: bool
    fills: tuple = ()
    scaled: bool = False
    offset: bool = False
    prefix: int | None = None


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """What one leaf of the new tree is made of (static).

    Attributes:
      path: the new leaf's path.
      source: the old leaf's path, or None for a leaf initialised whole by `init`.
      init: ``"gather"`` (from `source`), or a layer init (``"identity"``, ``"near_identity"``,
        ``"fresh"``, ``"zeros"``, ``"zero"``).
      shape, dtype: the new leaf's.
      axes: one :class:`AxisPlan` per axis (for ``"gather"``).
      neutral: the value ``zeros`` means here (1 for norm scale and variance).
      kernel_axes: for an identity kernel, its (input, output) axes.
    """

    path: str
    source: str | None
    init: str
    shape: tuple
    dtype: Any
    axes: tuple = ()
    neutral: float = 0.0
    kernel_axes: tuple | None = None

    @property
    def needs_fresh(self) -> bool:
        return self.init in ("fresh", "near_identity") or any("fresh" in a.fills for a in self.axes)

    def fill_order(self) -> tuple:
        """Axes whose new entries are filled, weakest claim first: output, inputs, spatial.

        A new unit's outgoing weights override the incoming rule of the unit it feeds, and
        spatial padding of a grown conv kernel is always zero.
        """
        rank = {"output": 0, "input": 1, "spatial": 2}
        filled = [i for i, a in enumerate(self.axes) if a.fills]
        return tuple(sorted(filled, key=lambda i: rank[self.axes[i].role]))


@dataclasses.dataclass(frozen=True)
class SpaceInfo:
    """A space's IDs, role and rule, for reports and :meth:`Plan.index`."""

    name: str
    old_ids: tuple
    new_ids: tuple
    role: str
    rule: rules_lib.Rule
    in_old: bool = True

    def index(self) -> np.ndarray:
        return index_by_id(self.new_ids, self.old_ids)

    def exactness(self) -> str:
        if not self.in_old:
            return "function"  # a new layer's space: its init decides, see Plan.layer_inits
        index = self.index()
        added = int((index < 0).sum())
        removed = len(self.old_ids) - (len(self.new_ids) - added)
        if removed:
            return "none"  # a removed unit's contribution is lost
        return self.rule.exactness(self.role) if added else "function"


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A transplant plan: static leaf plans plus their index arrays (the pytree's leaves).

    Build one with :func:`plan`; apply it with :func:`flaxsurgery.transplant`. A plan can be
    closed over or passed into ``jax.jit``: its arrays are its only pytree leaves.
    """

    leaves: tuple
    arrays: tuple
    old_shapes: tuple
    old_treedef: Any
    new_treedef: Any
    spaces: tuple
    layer_inits: tuple

    def tree_flatten(self):
        static = (self.leaves, self.old_shapes, self.old_treedef, self.new_treedef, self.spaces,
                  self.layer_inits)
        return (self.arrays,), static

    @classmethod
    def tree_unflatten(cls, static, children):
        leaves, old_shapes, old_treedef, new_treedef, spaces, layer_inits = static
        return cls(leaves, children[0], old_shapes, old_treedef, new_treedef, spaces, layer_inits)

    def space(self, name: str) -> SpaceInfo:
        for info in self.spaces:
            if info.name == name:
                return info
        raise ValueError(f"unknown space {name!r}; the plan's spaces are {[s.name for s in self.spaces]}")

    def index(self, space: str) -> np.ndarray:
        """For each new unit ID of `space`, its position among the old IDs, or -1 if it is new.

        >>> p = plan({"w": np.zeros((2, 3), np.float32)}, {"w": np.zeros((3, 3), np.float32)}, {"w": ("in", None)},
        ...          spaces={"in": (["a", "b"], ["b", "c", "a"])})
        >>> p.index("in")
        array([ 1, -1,  0], dtype=int32)
        """
        return self.space(space).index()

    def exactness(self) -> str:
        """The weakest guarantee over every space and new layer: ``"function"`` (outputs on the
        old units unchanged, identity layers assumed after ReLU), ``"greedy"`` or ``"none"``."""
        levels = [s.exactness() for s in self.spaces] + [e for _, _, e in self.layer_inits]
        return min(levels, key=EXACTNESS.index, default="function")

    def for_state(self) -> Plan:
        """The same plan with every new entry zero and no bias offsets: for optimizer moments
        such as Adam's (a negative second moment would make the update NaN)."""
        def zeroed(leaf: LeafPlan) -> LeafPlan:
            if leaf.init != "gather":
                return dataclasses.replace(leaf, init="zero")
            axes = tuple(dataclasses.replace(a, fills=("zero",) if a.fills else (), offset=False)
                         for a in leaf.axes)
            return dataclasses.replace(leaf, axes=axes)

        return dataclasses.replace(self, leaves=tuple(zeroed(leaf) for leaf in self.leaves))

    def report(self) -> str:
        """A human-readable account: per space its units and rule, per new layer its init, and
        what each preserves."""
        lines = ["space             role     old  new  kept added removed  rule               preserves"]
        for s in self.spaces:
            if not s.in_old:
                lines.append(f"{s.name:<17} {s.role:<7}    - {len(s.new_ids):>4}  (a new layer's space)")
                continue
            index = s.index()
            kept = int((index >= 0).sum())
            lines.append(
                f"{s.name:<17} {s.role:<7} {len(s.old_ids):>4} {len(s.new_ids):>4} {kept:>5} "
                f"{len(s.new_ids) - kept:>5} {len(s.old_ids) - kept:>7}  {s.rule.name:<18} "
                f"{s.exactness()}"
            )
        for layer, init, exact in self.layer_inits:
            note = " (after an idempotent activation such as ReLU)" if init == "identity" else ""
            lines.append(f"new layer {layer}: {init}, preserves {exact}{note}")
        lines.append(f"overall: preserves {self.exactness()}")
        return "\n".join(lines)


def plan(
    old_tree: Any,
    new_tree: Any,
    layout: Mapping[str, tuple],
    *,
    new_layout: Mapping[str, tuple] | None = None,
    spaces: Mapping[str, tuple[IdSpec, IdSpec]] | None = None,
    layer_map: Mapping[str, str | None] | None = None,
    rules: Mapping[str, rules_lib.Rule] | None = None,
    preset: str = "preserving",
    leaf_rules: Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
) -> Plan:
    """Computes, on the host, how every leaf of `new_tree` is made from `old_tree`.

    Args:
      old_tree: the trained parameters (or any tree of arrays / ``jax.ShapeDtypeStruct``).
      new_tree: the new network's parameters or their shapes (``jax.eval_shape(model.init, ...)``).
      layout: the old tree's layout (see :mod:`flaxsurgery.layout`); leaves it omits have no
        mapped axis.
      new_layout: the new tree's layout (default: `layout`).
      spaces: ``{space: (old_ids, new_ids)}``; an int ``n`` means IDs ``0..n-1``. Spaces not
        named keep their IDs by position.
      layer_map: ``{new layer path: old layer path or None}``; by default a new layer takes from
        the old layer of the same path, if any.
      rules: ``{space: Rule}`` for the new units of a space; the preset covers the others by
        the space's role (input, hidden or output).
      preset: ``"preserving"`` (function-preserving rules) or ``"seed"`` (the original paper's).
      leaf_rules: ``{new leaf path: layer init}`` to initialise a leaf whole, ignoring its source.
      drop: old leaf or layer paths that may be left out of the new tree.

    Returns:
      A :class:`Plan`.

    Raises:
      ValueError: listing every problem at once (leaf path, axis, space, IDs).

    >>> old = {"Dense_0": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    >>> new = {"Dense_0": {"kernel": np.ones((4, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    >>> layout = {"Dense_0/kernel": ("obs", "h"), "Dense_0/bias": ("h",)}
    >>> p = plan(old, new, layout, spaces={"obs": (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])})
    >>> p.index("obs")
    array([-1,  0,  1, -1], dtype=int32)
    """
    if preset not in rules_lib.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(rules_lib.PRESETS)}")
    problems: list[str] = []
    old_leaves, old_treedef = flatten(old_tree)
    new_leaves, new_treedef = flatten(new_tree)
    old_axes = _resolve_layout(old_leaves, layout, "old", problems)
    new_axes = _resolve_layout(new_leaves, layout if new_layout is None else new_layout, "new", problems)
    given_ids = {name: pair for name, pair in (spaces or {}).items() if isinstance(pair, (tuple, list)) and len(pair) == 2}
    old_sizes = _space_sizes(old_leaves, old_axes, {k: _ids(v[0]) for k, v in given_ids.items()}, "old", problems)
    new_sizes = _space_sizes(new_leaves, new_axes, {k: _ids(v[1]) for k, v in given_ids.items()}, "new", problems)
    ids = _space_ids(dict(spaces or {}), old_sizes, new_sizes, problems)
    roles = {**_roles(old_axes), **_roles(new_axes)}
    chosen = _space_rules(dict(rules or {}), roles, rules_lib.PRESETS[preset], ids, problems)
    sources = _leaf_sources(old_leaves, new_leaves, dict(layer_map or {}), dict(leaf_rules or {}),
                            drop, problems)

    ctx = _Context(ids, chosen, problems)
    leaf_plans, arrays, layer_inits = [], [], {}
    for path, new in new_leaves.items():
        source = sources[path]
        entries = new_axes[path] + (old_axes[source] if source else ())
        if any(name not in ids for entry in entries for name in spaces_in(entry)):
            continue  # a space without a known size: reported above, the plan is not built
        if source is None:
            init = (leaf_rules or {}).get(path, rules_lib.PRESETS[preset].layer)
            leaf, arr = _init_leaf(path, new, new_axes[path], init, ctx)
            layer_inits.setdefault(layer_of(path), set()).add((init, _init_exactness(leaf, arr, ctx)))
        else:
            leaf, arr = _gather_leaf(path, new, new_axes[path], source, old_leaves[source],
                                     old_axes[source], ctx)
        leaf_plans.append(leaf)
        arrays.append(arr)

    if problems:
        raise ValueError("the transplant spec does not fit the parameters:\n  - " + "\n  - ".join(problems))
    infos = tuple(
        SpaceInfo(name, ids[name][0], ids[name][1], roles[name], chosen[name], name in old_sizes)
        for name in sorted(ids, key=str)
    )
    return Plan(
        leaves=tuple(leaf_plans),
        arrays=tuple(arrays),
        old_shapes=tuple((p, tuple(np.shape(x)), np.dtype(x.dtype)) for p, x in old_leaves.items()),
        old_treedef=old_treedef,
        new_treedef=new_treedef,
        spaces=infos,
        layer_inits=tuple(_summarise_layer(layer, inits) for layer, inits in sorted(layer_inits.items())),
    )


# ----------------------------------------------------------------------------- validation


def _resolve_layout(leaves, layout, which, problems) -> dict[str, tuple]:
    """Every leaf's axes (all None where the layout omits it); checks axis counts."""
    for path in layout:
        if path not in leaves:
            problems.append(f"{which} layout names leaf {path!r}, which the {which} tree lacks")
    resolved = {}
    for path, leaf in leaves.items():
        ndim = len(np.shape(leaf))
        axes = tuple(layout.get(path, (None,) * ndim))
        if len(axes) != ndim:
            problems.append(f"{which} leaf {path!r} has {ndim} axes {tuple(np.shape(leaf))}, "
                            f"but its layout gives {len(axes)}: {axes}")
            axes = (None,) * ndim
        resolved[path] = axes
    return resolved


def _entry_size(entry, sizes) -> int | None:
    """Units along an axis entry, or None while a space in it has no known size."""
    entry = as_grid(entry)
    if isinstance(entry, int):
        return entry
    if isinstance(entry, (Concat, Grid)):
        parts = [_entry_size(part, sizes) for part in entry.parts]
        if any(p is None for p in parts):
            return None
        return sum(parts) if isinstance(entry, Concat) else int(np.prod(parts, dtype=np.int64))
    return sizes.get(entry)


def _solve_size(entry, space, total, sizes) -> int | None:
    """The size of `space` (the entry's one unknown) that makes the entry `total` long."""
    lo, hi = 0, total
    while lo <= hi:  # an entry's size grows with each space's size
        mid = (lo + hi) // 2
        size = _entry_size(entry, {**sizes, space: mid})
        if size == total:
            return mid
        lo, hi = (mid + 1, hi) if size < total else (lo, mid - 1)
    return None


def _space_sizes(leaves, axes_of, given, which, problems) -> dict[str, int]:
    """Each space's unit count, checked to agree on every axis that carries it.

    Plain entries give sizes directly; then given IDs; then composite entries (Flat, Grid,
    Concat) are solved for their one unknown space, repeatedly.
    """
    sizes, seen_at, composite = {}, {}, []
    for path, axes in axes_of.items():
        shape = np.shape(leaves[path])
        for axis, spec in enumerate(axes):
            if spec is None:
                continue
            where = f"{path!r} axis {axis}"
            if not isinstance(spec, str):
                composite.append((where, spec, shape[axis]))
            elif spec in sizes and sizes[spec] != shape[axis]:
                problems.append(f"space {spec!r} has {sizes[spec]} {which} units at {seen_at[spec]}, "
                                f"but {shape[axis]} at {where}")
            else:
                sizes.setdefault(spec, shape[axis])
                seen_at.setdefault(spec, where)
    for name, unit_ids in given.items():
        if name not in sizes and any(name in spaces_in(spec) for _, spec, _ in composite):
            sizes[name] = len(unit_ids)
    while composite:
        unsolved = []
        for where, spec, total in composite:
            unknown = sorted({s for s in spaces_in(spec) if s not in sizes})
            if len(unknown) == 1:
                solved = _solve_size(spec, unknown[0], total, sizes)
                if solved is None:
                    problems.append(f"{which} leaf {where}: size {total} fits no size of space "
                                    f"{unknown[0]!r} in {spec!r}")
                    continue
                sizes[unknown[0]] = solved
                seen_at[unknown[0]] = where
            elif unknown:
                unsolved.append((where, spec, total))
            elif _entry_size(spec, sizes) != total:
                problems.append(f"{which} leaf {where}: size {total}, but {spec!r} has "
                                f"{_entry_size(spec, sizes)} units ({', '.join(f'{s!r}: {sizes[s]}' for s in dict.fromkeys(spaces_in(spec)))})")
        if len(unsolved) == len(composite):
            for where, spec, _ in unsolved:
                unknown = sorted({s for s in spaces_in(spec) if s not in sizes})
                problems.append(f"{which} leaf {where}: cannot tell the sizes of spaces {unknown} apart in "
                                f"{spec!r}; give their IDs in spaces=")
            break
        composite = unsolved
    return sizes


def index_by_id(ids: Sequence[Hashable], among: Sequence[Hashable]) -> np.ndarray:
    """int32: each of `ids`' position in `among`, or -1 where `among` lacks it."""
    position = {uid: i for i, uid in enumerate(among)}
    return np.array([position.get(uid, -1) for uid in ids], dtype=np.int32)


def _ids(spec: IdSpec) -> tuple:
    return tuple(range(spec)) if isinstance(spec, (int, np.integer)) else tuple(spec)


def _space_ids(given, old_sizes, new_sizes, problems) -> dict[str, tuple[tuple, tuple]]:
    """Old and new unit IDs of every space: as given, else by position."""
    ids = {}
    for name in sorted(set(old_sizes) | set(new_sizes), key=str):
        ids[name] = (tuple(range(old_sizes.get(name, 0))), tuple(range(new_sizes.get(name, 0))))
    for name, pair in given.items():
        if name not in ids:
            problems.append(f"spaces names unknown space {name!r}; the layouts' spaces are "
                            f"{sorted(ids, key=str)}")
            continue
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            problems.append(f"space {name!r}: expected (old_ids, new_ids), got {pair!r}")
            continue
        both = []
        for which, spec, sizes in (("old", pair[0], old_sizes), ("new", pair[1], new_sizes)):
            unit_ids = _ids(spec)
            dupes = sorted({u for u in unit_ids if unit_ids.count(u) > 1}, key=repr)
            if dupes:
                problems.append(f"space {name!r}: duplicate {which} IDs {dupes}")
            if name in sizes and len(unit_ids) != sizes[name]:
                problems.append(f"space {name!r}: {len(unit_ids)} {which} IDs {list(unit_ids)} but "
                                f"the {which} parameters have {sizes[name]} units")
            both.append(unit_ids if name in sizes else ())
        ids[name] = tuple(both)
    return ids


def _roles(axes_of) -> dict[str, str]:
    """A space's role: only on input axes -> input, only on output axes -> output, else hidden."""
    seen: dict[str, set] = {}
    for axes in axes_of.values():
        out = output_axis(axes)
        for axis, spec in enumerate(axes):
            for name in spaces_in(spec):
                seen.setdefault(name, set()).add("output" if axis == out else "input")
    return {name: roles.pop() if len(roles) == 1 else "hidden" for name, roles in seen.items()}


def _space_rules(given, roles, preset, ids, problems) -> dict[str, rules_lib.Rule]:
    """The rule of every space: given, else the preset's for its role; sources checked."""
    for name, rule in given.items():
        if name not in roles:
            problems.append(f"rules names unknown space {name!r}")
        elif not isinstance(rule, rules_lib.Rule):
            problems.append(f"rules[{name!r}] must be a flaxsurgery Rule (fs.zeros(), fs.mean(), ...), got {rule!r}")
    chosen = {}
    for name, role in roles.items():
        rule = given.get(name)
        chosen[name] = rule if isinstance(rule, rules_lib.Rule) else preset.rule_for(role)
    for name, rule in chosen.items():
        if rule.incoming != "copy" or name not in ids:
            continue
        old_ids, new_ids = set(ids[name][0]), ids[name][1]
        added = [u for u in new_ids if u not in old_ids]
        missing = sorted({rule.source_of(u) for u in added if rule.source_of(u) not in old_ids}, key=repr)
        if missing:
            problems.append(f"space {name!r}: {rule.name} names source IDs {missing} that are not old "
                            f"units of the space (old IDs: {list(ids[name][0])})")
    return chosen


def _leaf_sources(old_leaves, new_leaves, layer_map, leaf_rules, drop, problems) -> dict:
    """Each new leaf's old source leaf (or None); checks the layer map and what is dropped."""
    old_layers = {layer_of(p) for p in old_leaves}
    new_layers = {layer_of(p) for p in new_leaves}
    for new_layer, old_layer in layer_map.items():
        if new_layer not in new_layers:
            problems.append(f"layer_map names new layer {new_layer!r}, which the new tree lacks")
        if old_layer is not None and old_layer not in old_layers:
            problems.append(f"layer_map maps {new_layer!r} to old layer {old_layer!r}, which the old tree lacks")
    for path in leaf_rules:
        if path not in new_leaves:
            problems.append(f"leaf_rules names leaf {path!r}, which the new tree lacks")
        elif leaf_rules[path] not in rules_lib.LAYER_INITS:
            problems.append(f"leaf_rules[{path!r}] = {leaf_rules[path]!r}; choose one of {rules_lib.LAYER_INITS}")

    sources, used = {}, set()
    for path in new_leaves:
        layer = layer_of(path)
        old_layer = layer_map.get(layer, layer if layer in old_layers else None)
        candidate = f"{old_layer}/{leaf_name(path)}" if old_layer else leaf_name(path)
        found = old_layer is not None and candidate in old_leaves
        if found:
            used.add(candidate)
        sources[path] = candidate if found and path not in leaf_rules else None

    def dropped_explicitly(path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in drop)

    for d in drop:
        if not any(p == d or p.startswith(d.rstrip("/") + "/") for p in old_leaves):
            problems.append(f"drop names {d!r}, which matches no old leaf")
    lost = [p for p in old_leaves if p not in used and not dropped_explicitly(p)]
    if lost:
        problems.append(f"old leaves {lost} would be dropped: no new leaf takes from them; map their "
                        f"layer in layer_map, or list them (or their layer) in drop=")
    return sources


# ----------------------------------------------------------------------------- leaf plans


@dataclasses.dataclass
class _Context:
    ids: dict
    rules: dict
    problems: list


def _neutral(path: str) -> float:
    return 1.0 if leaf_name(path) in NEUTRAL_ONE else 0.0


def _shape_dtype(x) -> tuple[tuple, Any]:
    return tuple(np.shape(x)), np.dtype(x.dtype)


@dataclasses.dataclass
class _Units:
    """Per-unit arrays of one axis (host side): where each new unit comes from and how it starts."""

    src: np.ndarray  # int32 index into the old axis, -1 for a new unit
    fill: np.ndarray  # object: the fill kind of each new unit, None where src >= 0
    scale: np.ndarray | None = None  # float32 multiplier (Net2Net split)
    offset: np.ndarray | None = None  # float32 addend (a copied unit's bias)


def _gather_leaf(path, new, new_axes, source, old, old_axes, ctx):
    """The plan of a new leaf that takes its values from an old leaf."""
    new_shape, dtype = _shape_dtype(new)
    old_shape, old_dtype = _shape_dtype(old)
    leaf = LeafPlan(path, source, "gather", new_shape, dtype, neutral=_neutral(path))
    if old_dtype != dtype:
        ctx.problems.append(f"leaf {path!r}: dtype {dtype} but its source {source!r} is {old_dtype}")
    if len(old_shape) != len(new_shape):
        ctx.problems.append(f"leaf {path!r} has {len(new_shape)} axes but its source {source!r} has {len(old_shape)}")
        return leaf, {}
    out = output_axis(new_axes)
    axes, arrays = [], {}
    for axis, (old_spec, new_spec) in enumerate(zip(old_axes, new_axes)):
        where = f"leaf {path!r} axis {axis} (source {source!r})"
        if new_spec is None and old_spec is None:
            units, role = _spatial_units(old_shape[axis], new_shape[axis]), "spatial"
        else:
            role = "output" if axis == out else "input"
            units = _entry_units(old_spec, new_spec, role, leaf_name(path), ctx, where)
        if units is None:
            continue
        if "mean" in set(units.fill) and not isinstance(new_spec, str):
            ctx.problems.append(f"{where}: rule mean needs a plain space, not {new_spec!r}")
        ax, arr = _axis_plan(role, units, old_shape[axis])
        axes.append(ax)
        arrays.update({f"{k}{axis}": v for k, v in arr.items()})
    if len(axes) != len(new_shape):
        return leaf, {}
    return dataclasses.replace(leaf, axes=tuple(axes)), arrays


def _axis_plan(role: str, units: _Units, old_size: int) -> tuple[AxisPlan, dict]:
    """The static AxisPlan and the arrays of one axis; an unchanged axis needs neither."""
    fills = tuple(dict.fromkeys(f for f in units.fill if f is not None))
    if not fills and units.scale is None and units.offset is None and len(units.src) == old_size \
            and np.array_equal(units.src, np.arange(old_size)):
        return AxisPlan(role, gather=False), {}
    arrays = {"src": units.src}
    if len(fills) > 1:
        arrays["kind"] = np.array([fills.index(f) if f else -1 for f in units.fill], np.int32)
    if units.scale is not None:
        arrays["scale"] = units.scale
    if units.offset is not None:
        arrays["offset"] = units.offset
    ax = AxisPlan(role, gather=True, fills=fills, scaled=units.scale is not None,
                  offset=units.offset is not None, prefix=_prefix_length(units.src))
    return ax, arrays


def _prefix_length(src: np.ndarray) -> int | None:
    """k if `src` is ``0..k-1`` followed only by -1, else None."""
    k = int((src >= 0).sum())
    return k if np.array_equal(src[:k], np.arange(k)) and (src[k:] < 0).all() else None


def _no_fill(n: int) -> np.ndarray:
    return np.full(n, None, dtype=object)


def _spatial_units(old_size: int, new_size: int) -> _Units:
    """An axis without units: kept, or a kernel grown (zero-padded) / shrunk around its centre."""
    shift = (new_size - 1) // 2 - (old_size - 1) // 2  # the tap SAME padding centres on
    src = np.arange(new_size) - shift
    src = np.where((src >= 0) & (src < old_size), src, -1).astype(np.int32)
    fill = _no_fill(new_size)
    fill[src < 0] = "zeros"
    return _Units(src, fill)


def _entry_units(old_spec, new_spec, role, name, ctx, where) -> _Units | None:
    """The units of an axis entry, recursively through Grid and Concat; None on a mismatch."""
    old_spec, new_spec = as_grid(old_spec), as_grid(new_spec)
    if isinstance(new_spec, str) and isinstance(old_spec, str):
        return _space_units(old_spec, new_spec, role, name, ctx)
    if isinstance(new_spec, int) and new_spec == old_spec:
        return _Units(np.arange(new_spec, dtype=np.int32), _no_fill(new_spec))
    if type(old_spec) is not type(new_spec) or not isinstance(new_spec, (Concat, Grid)) \
            or len(old_spec.parts) != len(new_spec.parts):
        ctx.problems.append(f"{where}: old axis is {old_spec!r} but new axis is {new_spec!r}; only "
                            f"the units of a space can change, not the axis's structure")
        return None
    parts = [_entry_units(o, n, role, name, ctx, where) for o, n in zip(old_spec.parts, new_spec.parts)]
    if any(p is None for p in parts):
        return None
    old_sizes = [_entry_size(o, {k: len(v[0]) for k, v in ctx.ids.items()}) for o in old_spec.parts]
    combine = _concat_units if isinstance(new_spec, Concat) else _grid_units
    return combine(parts, old_sizes)


def _concat_units(parts: list, old_sizes: list) -> _Units:
    """Segments end to end: each segment's old indices shifted by the old segments before it."""
    starts = np.cumsum([0] + old_sizes[:-1])
    src = np.concatenate([np.where(p.src >= 0, p.src + start, -1) for p, start in zip(parts, starts)])
    return _Units(src.astype(np.int32), np.concatenate([p.fill for p in parts]),
                  _joined([p.scale for p in parts], [len(p.src) for p in parts], 1.0, np.concatenate),
                  _joined([p.offset for p in parts], [len(p.src) for p in parts], 0.0, np.concatenate))


def _grid_units(parts: list, old_sizes: list) -> _Units:
    """Row-major product, last part fastest: a unit is new if any of its parts' units is."""
    src = np.zeros(1, np.int64)
    fill = _no_fill(1)
    for part, old_size in zip(parts, old_sizes):
        src = np.where((src[:, None] >= 0) & (part.src[None, :] >= 0),
                       src[:, None] * old_size + part.src[None, :], -1).reshape(-1)
        # The fastest new part decides the fill (as the last new input axis does for a leaf).
        fill = np.where(part.fill[None, :] != None, part.fill[None, :], fill[:, None]).reshape(-1)
    sizes = [len(p.src) for p in parts]

    def outer(values, neutral, combine):
        if all(v is None for v in values):
            return None
        grid = np.full(1, neutral, np.float32)
        for v, n in zip(values, sizes):
            grid = combine(grid[:, None], (np.full(n, neutral, np.float32) if v is None else v)[None, :]).reshape(-1)
        return grid

    return _Units(src.astype(np.int32), fill, outer([p.scale for p in parts], 1.0, np.multiply),
                  outer([p.offset for p in parts], 0.0, np.add))


def _joined(values, sizes, neutral, join):
    if all(v is None for v in values):
        return None
    return join([np.full(n, neutral, np.float32) if v is None else v for v, n in zip(values, sizes)])


def _space_units(old_space: str, new_space: str, role: str, name: str, ctx) -> _Units:
    """Index, fill, scale and offset of a space's units, by unit ID and the space's rule."""
    old_ids = ctx.ids[old_space][0]
    new_ids = ctx.ids[new_space][1]
    rule = ctx.rules[new_space]
    src = index_by_id(new_ids, old_ids)
    added = src < 0
    fill = _no_fill(len(src))
    if not added.any():
        return _Units(src, fill)
    offset = np.where(added, rule.offset, 0.0).astype(np.float32) if name == "bias" and rule.offset else None
    if rule.incoming != "copy":
        fill[added] = rule.incoming if role == "output" else rule.outgoing
        return _Units(src, fill, offset=offset if role == "output" else None)

    from_unit = index_by_id([rule.source_of(uid) for uid in new_ids], old_ids)
    if (from_unit[added] < 0).any():  # reported by _space_rules
        return _Units(src, fill)
    if role == "output":
        copied = np.where(added, from_unit, src).astype(np.int32)
        return _Units(copied, fill, offset=offset)
    if rule.outgoing != "split":  # copy: a new unit's outgoing weights start at zero
        fill[added] = "zeros"
        return _Units(src, fill)
    # Net2Net split: the source unit keeps 1 - ratio * (its number of splits) of its outgoing weights.
    splits = np.bincount(from_unit[added], minlength=len(old_ids))
    scale = np.where(added, rule.ratio, 1.0 - rule.ratio * splits[np.maximum(src, 0)]).astype(np.float32)
    return _Units(np.where(added, from_unit, src).astype(np.int32), fill, scale=scale)


def _init_leaf(path, new, new_axes, init, ctx):
    """The plan of a leaf with no source: a new layer's kernel, bias or norm parameters."""
    shape, dtype = _shape_dtype(new)
    leaf = LeafPlan(path, None, init, shape, dtype, neutral=_neutral(path))
    mapped = [i for i, spec in enumerate(new_axes) if spec is not None]
    if init not in ("identity", "near_identity") or len(mapped) == 1:
        return leaf, {}
    if len(mapped) != 2 or any(not isinstance(new_axes[i], str) for i in mapped):
        ctx.problems.append(
            f"new leaf {path!r} (axes {new_axes}) has no source and {init} needs a kernel with one input "
            f"and one output space; give it a source in layer_map or a leaf_rules entry such as 'fresh'")
        return leaf, {}
    in_ids = ctx.ids[space_of(new_axes[mapped[0]])][1]
    out_ids = ctx.ids[space_of(new_axes[mapped[1]])][1]
    match = index_by_id(out_ids, in_ids)
    return dataclasses.replace(leaf, kernel_axes=tuple(mapped)), {"match": match}


def _init_exactness(leaf: LeafPlan, arrays: dict, ctx) -> str:
    if leaf.init == "fresh" or leaf.init == "near_identity" and leaf.kernel_axes:
        return "none"
    if leaf.init == "zeros" and leaf.kernel_axes is None and len(leaf.shape) >= 2:
        return "none"
    if "match" in arrays:
        match = arrays["match"]
        if (match < 0).any() or len(set(match.tolist())) != leaf.shape[leaf.kernel_axes[0]]:
            return "none"  # not a permutation-free identity: some unit is not passed through
    return "function"


def _summarise_layer(layer: str, inits: set) -> tuple[str, str, str]:
    names = "/".join(sorted({init for init, _ in inits}))
    exact = min((e for _, e in inits), key=EXACTNESS.index)
    return layer, names, exact
