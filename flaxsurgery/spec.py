"""Planning: what the host computes once, from layouts, unit IDs, a layer map and init rules.

Everything here is NumPy on the host: the spaces' sizes and IDs, each new leaf's source, and
per axis the index arrays and fills of a :class:`~flaxsurgery.plans.Plan`. The arguments are
checked in :mod:`flaxsurgery.checks`, what the plan preserves is derived in
:mod:`flaxsurgery.claims`, and applying it (:func:`flaxsurgery.transplant`) is pure
``jax.numpy``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from flaxsurgery import rules as rules_lib
from flaxsurgery.checks import checked_arguments, full_names, given_ids, resolve_layout, show
from flaxsurgery.claims import (
    BIAS_NAMES,
    SpaceFacts,
    init_exactness,
    note_output_facts,
    space_info,
    summarise_layer,
)
from flaxsurgery.layout import (
    WINDOW,
    Concat,
    Grid,
    as_grid,
    carries_units,
    leaf_entries,
    mixing_spaces,
    output_axis,
    output_spaces,
    space_of,
    spaces_in,
)
from flaxsurgery.paths import flatten, layer_of, leaf_name
from flaxsurgery.plans import AxisArrays, AxisPlan, LeafArrays, LeafPlan, Plan
from flaxsurgery.units import Fill, Units, index_by_id, kept, no_fill, prefix_length

IdSpec = int | Sequence[Hashable]
NEUTRAL_BY_NAME = {"bias": 0.0, "b": 0.0, "beta": 0.0, "mean": 0.0, "kernel": 0.0,
                   "embedding": 0.0, "w": 0.0, "weight": 0.0,
                   "scale": 1.0, "gamma": 1.0, "var": 1.0, "variance": 1.0, "std": 1.0}


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """What to transplant, as a value: :func:`plan`'s arguments without the trees. Pass it where
    a plan goes (``fs.transplant(old, spec, fresh)``); it builds the plan on first use, once per
    tree structure and shapes, so it also works inside ``jax.jit``.

    >>> spec = Spec({"w": ("obs", None)}, spaces={"obs": (["a"], ["a", "b"])})
    >>> spec.plan_for({"w": np.ones((1, 2), np.float32)}, {"w": np.ones((2, 2), np.float32)}).index("obs")
    array([ 0, -1], dtype=int32)
    """

    layout: Mapping
    new_layout: Mapping | None = None
    spaces: Mapping | None = None
    layer_map: Mapping | None = None
    rules: Mapping | None = None
    preset: str = "preserving"
    leaf_rules: Mapping | None = None
    drop: Sequence[str] = ()
    neutral: Mapping | None = None
    _plans: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def plan_for(self, old_tree: Any, new_tree: Any) -> Plan:
        """The plan for these trees (built once per structure, shapes and dtypes)."""
        key = tuple((jax.tree_util.tree_structure(t),
                     tuple((np.shape(x), str(x.dtype)) for x in jax.tree_util.tree_leaves(t)))
                    for t in (old_tree, new_tree))
        if key not in self._plans:
            self._plans[key] = plan(
                old_tree, new_tree, self.layout, new_layout=self.new_layout, spaces=self.spaces,
                layer_map=self.layer_map, rules=self.rules, preset=self.preset,
                leaf_rules=self.leaf_rules, drop=self.drop, neutral=self.neutral)
        return self._plans[key]


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
    neutral: Mapping[str, float] | None = None,
) -> Plan:
    """Computes, on the host, how every leaf of `new_tree` is made from `old_tree`.

    Args:
      old_tree: the trained parameters (or any tree of arrays / ``jax.ShapeDtypeStruct``).
      new_tree: the new network's parameters or their shapes (``jax.eval_shape(model.init, ...)``).
      layout: the old tree's layout (see :mod:`flaxsurgery.layout`); leaves it omits have no
        unit axis, and must keep their shape.
      new_layout: the new tree's layout (default: `layout`).
      spaces: ``{space: (old_ids, new_ids)}``; an int ``n`` means IDs ``0..n-1``; a 1-D array
        means its values. Spaces not named keep their IDs by position.
      layer_map: ``{new layer: old layer or None}``, with or without Linen's collection prefix
        (``Dense_2`` or ``params/Dense_2``, as spaces are named); by default a new layer takes from
        the old layer of the same path, if any, as long as that layer plays the same part (a
        layer whose output was the network's output and is now hidden, or the reverse, means the
        layers were renamed, and is an error until `layer_map` says how they pair).
      rules: ``{space: Rule}`` for the new units of a space; the preset covers the others by
        the space's role (input, hidden or output).
      preset: ``"preserving"`` (function-preserving rules), ``"policy"`` (the same, with new
        actions' logits far below the old ones: the sampled policy is kept) or ``"seed"`` (the
        original paper's).
      leaf_rules: ``{new leaf path: layer init}`` to initialise a leaf whole, ignoring its source.
      drop: old leaf or layer paths that may be left out of the new tree.
      neutral: ``{leaf name or path: value}``: what ``zeros`` means for a one-axis leaf whose
        name does not say (``bias``/``mean`` are 0, ``scale``/``var``/``std`` are 1).

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
    problems: list[str] = []
    args = checked_arguments(old_tree, new_tree, layout, new_layout, spaces, layer_map, rules,
                              preset, leaf_rules, drop, neutral, problems)
    if problems:
        _raise(problems)
    old_leaves, old_treedef = flatten(old_tree)
    new_leaves, new_treedef = flatten(new_tree)
    args = full_names(args, old_leaves, new_leaves)
    old_axes = resolve_layout(old_leaves, args.layout, "old", problems)
    new_axes = resolve_layout(new_leaves, args.new_layout, "new", problems)
    mixing = mixing_spaces(args.layout) | mixing_spaces(args.new_layout)
    given = given_ids(args.spaces, problems)
    old_sizes = _space_sizes(old_leaves, old_axes, {k: v[0] for k, v in given.items()}, "old", problems)
    new_sizes = _space_sizes(new_leaves, new_axes, {k: v[1] for k, v in given.items()}, "new", problems)
    ids = _space_ids(given, set(args.spaces), old_sizes, new_sizes, problems)
    old_roles = _roles(old_axes, output_spaces(args.layout))
    new_roles = _roles(new_axes, output_spaces(args.new_layout))
    roles = {**old_roles, **new_roles}
    preset_rules = rules_lib.PRESETS[preset]
    chosen = _space_rules(args.rules, roles, preset_rules, ids, problems)
    sources = _leaf_sources(old_leaves, new_leaves, args.layer_map, args.leaf_rules, args.drop, problems)
    _check_pairing(sources, args.layer_map, old_axes, new_axes, old_roles, new_roles, problems)

    ctx = _Context(ids, chosen, problems, args.neutral)
    leaf_plans, arrays, new_layer_leaves = [], [], []
    for path, new in new_leaves.items():
        source = sources[path]
        entries = new_axes[path] + (old_axes[source] if source else ())
        if any(name not in ids for entry in entries for name in spaces_in(entry)):
            continue  # a space without a known size: reported above, the plan is not built
        if source is None:
            init = args.leaf_rules.get(path, preset_rules.layer)
            leaf, arr = _init_leaf(path, new, new_axes[path], init, ctx)
            new_layer_leaves.append((leaf, arr, new_axes[path]))
        else:
            leaf, arr = _gather_leaf(path, new, new_axes[path], source, old_leaves[source],
                                     old_axes[source], ctx)
        leaf_plans.append(leaf)
        arrays.append(_read_only(arr))

    layer_inits: dict = {layer: {("dropped", "none")} for layer in _dropped_layers(old_leaves, sources, args.drop)}
    for leaf, arr, axes in new_layer_leaves:
        out = output_axis(axes)
        writes_old = out is not None and any(s in ctx.self_paired for s in spaces_in(axes[out]))
        layer_inits.setdefault(layer_of(leaf.path), set()).add((leaf.init, init_exactness(leaf, arr, writes_old)))
    infos = tuple(
        space_info(name, ids[name], roles[name], chosen[name], name in old_sizes, name in mixing, ctx)
        for name in sorted(ids, key=str)
    )
    if problems:
        _raise(problems)
    return Plan(
        leaves=tuple(leaf_plans),
        arrays=tuple(arrays),
        old_shapes=tuple((p, tuple(np.shape(x)), np.dtype(x.dtype)) for p, x in old_leaves.items()),
        old_treedef=old_treedef,
        new_treedef=new_treedef,
        spaces=infos,
        layer_inits=tuple(summarise_layer(layer, inits) for layer, inits in sorted(layer_inits.items())),
    )


def _raise(problems: list[str]) -> None:
    raise ValueError("the transplant spec does not fit the parameters:\n  - " + "\n  - ".join(problems))


# ----------------------------------------------------------------------------- sizes


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
            if not carries_units(spec):
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
        if unit_ids is not None and name not in sizes and any(name in spaces_in(spec) for _, spec, _ in composite):
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


def _space_ids(given, named, old_sizes, new_sizes, problems) -> dict[str, tuple[tuple, tuple]]:
    """Old and new unit IDs of every space: as given, else by position."""
    ids = {}
    for name in sorted(set(old_sizes) | set(new_sizes), key=str):
        ids[name] = (tuple(range(old_sizes.get(name, 0))), tuple(range(new_sizes.get(name, 0))))
    for name in named:
        if name not in ids:
            problems.append(f"spaces names unknown space {show(name)}; the layouts' spaces are "
                            f"{sorted(ids, key=str)}")
    for name, pair in given.items():
        if name not in ids:
            continue
        both = []
        for which, unit_ids, sizes in (("old", pair[0], old_sizes), ("new", pair[1], new_sizes)):
            if unit_ids is not None and name in sizes and len(unit_ids) != sizes[name]:
                problems.append(f"space {name!r}: {len(unit_ids)} {which} IDs {show(list(unit_ids))} "
                                f"but the {which} parameters have {sizes[name]} units")
            both.append(unit_ids if unit_ids is not None and name in sizes else ids[name][len(both)])
        ids[name] = tuple(both)
    return ids


def roles_of(layout: Mapping) -> dict[str, str]:
    """Each space's role in a layout: input, hidden or output."""
    return _roles(leaf_entries(layout), output_spaces(layout))


def _roles(axes_of, outputs: frozenset = frozenset()) -> dict[str, str]:
    """A space's role: the model's output (listed in OUTPUTS) -> output; else only on input axes
    -> input, only on output axes -> output, else hidden."""
    seen: dict[str, set] = {}
    for axes in axes_of.values():
        out = output_axis(axes)
        for axis, spec in enumerate(axes):
            for name in spaces_in(spec):
                seen.setdefault(name, set()).add("output" if axis == out else "input")
    roles = {name: roles.pop() if len(roles) == 1 else "hidden" for name, roles in seen.items()}
    return {**roles, **{name: "output" for name in outputs if name in roles}}


def _space_rules(given, roles, preset, ids, problems) -> dict[str, rules_lib.Rule]:
    """The rule of every space: given, else the preset's for its role; sources checked."""
    for name, rule in given.items():
        if name not in roles:
            problems.append(f"rules names unknown space {show(name)}")
        elif not isinstance(rule, rules_lib.Rule):
            problems.append(f"rules[{name!r}] must be a flaxsurgery Rule (fs.zeros(), fs.mean(), ...), got {show(rule)}")
    chosen = {}
    for name, role in roles.items():
        rule = given.get(name)
        chosen[name] = rule if isinstance(rule, rules_lib.Rule) else preset.rule_for(role)
    for name, rule in chosen.items():
        if name in ids:
            problems.extend(rule.problems(name, ids[name]))
    return chosen


def _leaf_sources(old_leaves, new_leaves, layer_map, leaf_rules, drop, problems) -> dict:
    """Each new leaf's old source leaf (or None); checks the layer map and what is dropped."""
    old_layers = {layer_of(p) for p in old_leaves}
    new_layers = {layer_of(p) for p in new_leaves}
    for new_layer, old_layer in layer_map.items():
        if new_layer not in new_layers:
            problems.append(f"layer_map names new layer {show(new_layer)}, which the new tree lacks")
        if old_layer is not None and old_layer not in old_layers:
            problems.append(f"layer_map maps {show(new_layer)} to old layer {show(old_layer)}, which the old tree lacks")
    for path in leaf_rules:
        if path not in new_leaves:
            problems.append(f"leaf_rules names leaf {show(path)}, which the new tree lacks")
        elif leaf_rules[path] not in rules_lib.LAYER_INITS:
            problems.append(f"leaf_rules[{path!r}] = {show(leaf_rules[path])}; choose one of {rules_lib.LAYER_INITS}")

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
        problems.append(f"old leaves {show(lost)} would be dropped: no new leaf takes from them; map "
                        f"their layer in layer_map, or list them (or their layer) in drop=")
    return sources


def _dropped_layers(old_leaves, sources, drop) -> list[str]:
    """Old layers none of whose leaves a new leaf takes from (they were listed in `drop`)."""
    used = {layer_of(s) for s in sources.values() if s is not None}
    return sorted({layer_of(p) for p in old_leaves if layer_of(p) not in used
                   and any(p == d or p.startswith(d.rstrip("/") + "/") for d in drop)})


def _check_pairing(sources, layer_map, old_axes, new_axes, old_roles, new_roles, problems) -> None:
    """A layer paired by its name alone must play the same part in both networks.

    Linen names layers by position, so inserting a layer renames the ones after it: the old
    output layer ``Dense_1`` and the new hidden ``Dense_1`` share a name, not a job.
    """
    suspicious = {}
    for path, source in sources.items():
        if source is None or layer_of(path) in layer_map:
            continue
        for axis, (old_spec, new_spec) in enumerate(zip(old_axes[source], new_axes[path])):
            old_names, new_names = spaces_in(old_spec), spaces_in(new_spec)
            old_parts = {old_roles.get(s) for s in old_names} & {"input", "output"}
            new_parts = {new_roles.get(s) for s in new_names} & {"input", "output"}
            if old_parts != new_parts:
                suspicious.setdefault(layer_of(path), (axis, old_spec, new_spec, old_parts, new_parts))
    for layer, (axis, old_spec, new_spec, old_parts, new_parts) in sorted(suspicious.items()):
        def part(parts, spec):
            return f"the network's {'/'.join(sorted(parts))} space {spec!r}" if parts else f"hidden space {spec!r}"
        hint = _layer_map_hint(old_axes, new_axes, old_roles, new_roles)
        problems.append(
            f"new layer {layer!r} takes its weights from the old layer of the same name, but axis {axis} "
            f"is {part(old_parts, old_spec)} in the old network and {part(new_parts, new_spec)} in the "
            f"new one: the layers were probably renamed by an inserted or removed layer; say how they "
            f"pair with layer_map{hint}")


def _layer_map_hint(old_axes, new_axes, old_roles, new_roles) -> str:
    """A likely layer map: the layers that produce the network's output, paired."""
    def producer(axes_of, roles):
        for path, axes in axes_of.items():
            out = output_axis(axes)
            if out is not None and len([a for a in axes if carries_units(a)]) > 1 and \
                    any(roles.get(s) == "output" for s in spaces_in(axes[out])):
                return layer_of(path)
        return None

    old_out, new_out = producer(old_axes, old_roles), producer(new_axes, new_roles)
    if old_out and new_out and old_out != new_out:
        renamed = f", {old_out!r}: None" if any(layer_of(p) == old_out for p in new_axes) else ""
        return (f" (for example {{{new_out!r}: {old_out!r}{renamed}}}), or confirm the pairing by "
                f"name with {{layer: layer}}")
    return " (confirm a pairing by name with {layer: layer})"


# ----------------------------------------------------------------------------- leaf plans


@dataclasses.dataclass
class _Context:
    ids: dict
    rules: dict
    problems: list
    neutral: dict
    facts: dict = dataclasses.field(default_factory=dict)
    indices: dict = dataclasses.field(default_factory=dict)
    self_paired: set = dataclasses.field(default_factory=set)  # spaces an old leaf carries to the same space

    def index(self, old_space: str, new_space: str) -> np.ndarray:
        """Each new unit's position among the old units (cached: spaces recur across leaves)."""
        key = (old_space, new_space)
        if key not in self.indices:
            self.indices[key] = index_by_id(self.ids[new_space][1], self.ids[old_space][0])
        return self.indices[key].copy()

    def fact(self, space: str) -> SpaceFacts:
        return self.facts.setdefault(space, SpaceFacts())


def _neutral(path: str, axes: tuple, given: dict) -> float | None:
    """What ``zeros`` means for a leaf: 0 for weights (two unit axes or more), else by its name."""
    if path in given:
        return float(given[path])
    if leaf_name(path) in given:
        return float(given[leaf_name(path)])
    if sum(carries_units(a) for a in axes) > 1:
        return 0.0
    return NEUTRAL_BY_NAME.get(leaf_name(path))


def _shape_dtype(x) -> tuple[tuple, Any]:
    return tuple(np.shape(x)), np.dtype(x.dtype)


def _read_only(arrays: LeafArrays) -> LeafArrays:
    for value in jax.tree_util.tree_leaves(arrays):
        value.flags.writeable = False
    return arrays


def _gather_leaf(path, new, new_axes, source, old, old_axes, ctx):
    """The plan of a new leaf that takes its values from an old leaf."""
    new_shape, dtype = _shape_dtype(new)
    old_shape, old_dtype = _shape_dtype(old)
    leaf = LeafPlan(path, source, "gather", new_shape, dtype, neutral=_neutral(path, new_axes, ctx.neutral))
    if old_dtype != dtype:
        ctx.problems.append(f"leaf {path!r}: dtype {dtype} but its source {source!r} is {old_dtype}; "
                            f"cast one tree first (the plan does not cast)")
    if len(old_shape) != len(new_shape):
        ctx.problems.append(f"leaf {path!r} has {len(new_shape)} axes but its source {source!r} has {len(old_shape)}")
        return leaf, LeafArrays()
    out = output_axis(new_axes)
    axes, arrays = [], []
    for axis, (old_spec, new_spec) in enumerate(zip(old_axes, new_axes)):
        where = f"leaf {path!r} axis {axis} (source {source!r})"
        if not carries_units(new_spec) and not carries_units(old_spec):
            units, side = _unitless_units(old_spec, new_spec, old_shape[axis], new_shape[axis], ctx, where), "unitless"
        else:
            side = "incoming" if axis == out else "outgoing"
            units = _entry_units(old_spec, new_spec, side, path, ctx, where)
            ctx.self_paired.update(set(spaces_in(old_spec)) & set(spaces_in(new_spec)))
        if units is None:
            continue
        if Fill.MEAN in set(units.fill) and not isinstance(new_spec, str):
            ctx.problems.append(f"{where}: rule mean needs a plain space, not {new_spec!r}")
        ax, arr = _axis_plan(side, units, old_shape[axis])
        axes.append(ax)
        arrays.append(arr)
    if len(axes) != len(new_shape):
        return leaf, LeafArrays()
    if leaf.neutral is None and any(Fill.NEUTRAL in ax.fills for ax in axes):
        ctx.problems.append(
            f"leaf {path!r}: new units take the neutral value, but the name {leaf_name(path)!r} does "
            f"not say whether that is 0 (a shift: bias, mean) or 1 (a scale: scale, var, std); "
            f"say it with neutral={{{leaf_name(path)!r}: 0.0 or 1.0}}")
    note_output_facts(path, new_axes, leaf, axes, ctx)
    return dataclasses.replace(leaf, axes=tuple(axes)), LeafArrays(tuple(arrays))


def _axis_plan(side: str, units: Units, old_size: int) -> tuple[AxisPlan, AxisArrays | None]:
    """The static AxisPlan and the arrays of one axis; an unchanged axis needs neither."""
    fills = tuple(dict.fromkeys(f for f in units.fill[units.src < 0] if f is not None))
    if not fills and units.scale is None and units.offset is None and units.own is None \
            and len(units.src) == old_size and np.array_equal(units.src, np.arange(old_size)):
        return AxisPlan(side, gather=False), None
    kind = np.array([fills.index(f) if f else -1 for f in units.fill], np.int32) if len(fills) > 1 else None
    arrays = AxisArrays(units.src, kind, units.scale, units.offset, units.own)
    ax = AxisPlan(side, gather=True, fills=fills, scaled=units.scale is not None,
                  offset=units.offset is not None, prefix=prefix_length(units.src),
                  copied=units.own is not None)
    return ax, arrays


def _unitless_units(old_spec, new_spec, old_size, new_size, ctx, where) -> Units | None:
    """An axis without units: kept as it is; only a window may grow or shrink (around its centre)."""
    if old_size == new_size:
        return kept(np.arange(new_size, dtype=np.int32))
    if old_spec is WINDOW and new_spec is WINDOW:
        shift = (new_size - 1) // 2 - (old_size - 1) // 2  # the tap SAME padding centres on
        src = np.arange(new_size) - shift
        src = np.where((src >= 0) & (src < old_size), src, -1).astype(np.int32)
        fill = no_fill(new_size)
        fill[src < 0] = Fill.ZERO
        return Units(src, fill)
    said = {None: "None (no units, or the leaf is not in the layout)", WINDOW: "WINDOW"}
    ctx.problems.append(
        f"{where}: size changes from {old_size} to {new_size}, but the layout says "
        f"{said[old_spec]} in the old network and {said[new_spec]} in the new one: only a "
        f"conv window (WINDOW in both) may be padded or cropped; name the space this axis carries "
        f"(trace_layout finds it; chain_layout(layer_norms=..., batch_norms=...) covers norm layers)")
    return None


def _entry_units(old_spec, new_spec, side, path, ctx, where) -> Units | None:
    """The units of an axis entry, recursively through Grid and Concat; None on a mismatch."""
    old_spec, new_spec = as_grid(old_spec), as_grid(new_spec)
    if isinstance(new_spec, str) and isinstance(old_spec, str):
        return _space_units(old_spec, new_spec, side, path, ctx)
    if isinstance(new_spec, int) and new_spec == old_spec:
        return kept(np.arange(new_spec, dtype=np.int32))
    if type(old_spec) is not type(new_spec) or not isinstance(new_spec, (Concat, Grid)) \
            or len(old_spec.parts) != len(new_spec.parts):
        ctx.problems.append(f"{where}: old axis is {old_spec!r} but new axis is {new_spec!r}; only "
                            f"the units of a space can change, not the axis's structure")
        return None
    parts = [_entry_units(o, n, side, path, ctx, where) for o, n in zip(old_spec.parts, new_spec.parts)]
    if any(p is None for p in parts):
        return None
    old_sizes = [_entry_size(o, {k: len(v[0]) for k, v in ctx.ids.items()}) for o in old_spec.parts]
    combine = _concat_units if isinstance(new_spec, Concat) else _grid_units
    return combine(parts, old_sizes)


def _concat_units(parts: list, old_sizes: list) -> Units:
    """Segments end to end: each segment's old indices shifted by the old segments before it."""
    starts = np.cumsum([0] + old_sizes[:-1])

    def shifted(arrays):
        if all(a is None for a in arrays):
            return None
        return np.concatenate([np.where(a >= 0, a + start, -1) if a is not None else
                               np.where(p.src >= 0, p.src + start, -1)
                               for a, p, start in zip(arrays, parts, starts)]).astype(np.int32)

    sizes = [len(p.src) for p in parts]
    return Units(shifted([p.src for p in parts]), np.concatenate([p.fill for p in parts]),
                  _joined([p.scale for p in parts], sizes, 1.0, np.concatenate),
                  _joined([p.offset for p in parts], sizes, 0.0, np.concatenate),
                  shifted([p.own for p in parts]))


def _grid_units(parts: list, old_sizes: list) -> Units:
    """Row-major product, last part fastest: a unit is new if any of its parts' units is."""

    def product(indices):
        index = np.zeros(1, np.int64)
        for part_index, old_size in zip(indices, old_sizes):
            index = np.where((index[:, None] >= 0) & (part_index[None, :] >= 0),
                             index[:, None] * old_size + part_index[None, :], -1).reshape(-1)
        return index.astype(np.int32)

    fill = no_fill(1)
    for part in parts:
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

    own = None if all(p.own is None for p in parts) else product([p.src if p.own is None else p.own for p in parts])
    return Units(product([p.src for p in parts]), fill, outer([p.scale for p in parts], 1.0, np.multiply),
                  outer([p.offset for p in parts], 0.0, np.add), own)


def _joined(values, sizes, neutral, join):
    if all(v is None for v in values):
        return None
    return join([np.full(n, neutral, np.float32) if v is None else v for v, n in zip(values, sizes)])


def _space_units(old_space: str, new_space: str, side: str, path: str, ctx) -> Units:
    """A space's units on one axis: kept by unit ID, new ones as the space's rule says."""
    src = ctx.index(old_space, new_space)
    if not (src < 0).any():
        return kept(src)
    on_bias = side == "incoming" and leaf_name(path) in BIAS_NAMES
    return ctx.rules[new_space].units(src, side, (ctx.ids[old_space][0], ctx.ids[new_space][1]), on_bias)


def _init_leaf(path, new, new_axes, init, ctx):
    """The plan of a leaf with no source: a new layer's kernel, bias or norm parameters."""
    shape, dtype = _shape_dtype(new)
    leaf = LeafPlan(path, None, init, shape, dtype, neutral=_neutral(path, new_axes, ctx.neutral))
    mapped = [i for i, spec in enumerate(new_axes) if carries_units(spec)]
    if init in ("identity", "near_identity", "zeros") and len(shape) <= 1 and leaf.neutral is None:
        ctx.problems.append(
            f"new leaf {path!r} has no source and {init} gives it the neutral value, but the name "
            f"{leaf_name(path)!r} does not say whether that is 0 (a shift) or 1 (a scale); say it "
            f"with neutral={{{leaf_name(path)!r}: ...}} or give it a leaf_rules entry such as 'fresh'")
    if init not in ("identity", "near_identity") or len(mapped) <= 1 and len(shape) <= 1:
        return leaf, LeafArrays()
    if len(mapped) != 2 or any(not isinstance(new_axes[i], str) for i in mapped):
        ctx.problems.append(
            f"new leaf {path!r} (axes {new_axes}) has no source and {init} needs a kernel with one input "
            f"and one output space; give it a source in layer_map or a leaf_rules entry such as 'fresh'")
        return leaf, LeafArrays()
    in_ids = ctx.ids[space_of(new_axes[mapped[0]])][1]
    out_ids = ctx.ids[space_of(new_axes[mapped[1]])][1]
    match = index_by_id(out_ids, in_ids)
    return dataclasses.replace(leaf, kernel_axes=tuple(mapped)), LeafArrays(match=match)


