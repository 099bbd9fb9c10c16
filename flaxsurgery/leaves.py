"""Leaf plans: how each leaf of the new tree is made, per axis, from its source leaf and the
rules of its spaces (host side, NumPy). [`flaxsurgery.spec.plan`][flaxsurgery.plan] calls these once per leaf.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from flaxsurgery.layout import (
    WINDOW,
    Concat,
    Grid,
    as_grid,
    carries_units,
    output_axis,
    space_of,
)
from flaxsurgery.paths import leaf_name
from flaxsurgery.plans import AxisArrays, AxisPlan, LeafArrays, LeafPlan
from flaxsurgery.spaces import entry_size
from flaxsurgery.units import Fill, Units, index_by_id, kept, no_fill, prefix_length

# One-axis leaves that add to their space's units: where a rule's offset (a margin) lands.
BIAS_NAMES = ("bias", "b", "beta")
# The value a new unit takes under the NEUTRAL fill on a one-axis leaf, by the leaf's name: a shift
# is neutral at 0, a scale at 1. A leaf of another name must be told (plan(neutral=...)).
NEUTRAL_BY_NAME = {"bias": 0.0, "b": 0.0, "beta": 0.0, "mean": 0.0, "kernel": 0.0,
                   "embedding": 0.0, "w": 0.0, "weight": 0.0,
                   "scale": 1.0, "gamma": 1.0, "var": 1.0, "variance": 1.0, "std": 1.0}


@dataclasses.dataclass
class Context:
    """What planning reads across leaves: each space's (old, new) IDs and rule, the neutral
    values given, and the collector of problems. Nothing a leaf's plan learns is left here:
    what the plan preserves is derived from the finished leaf plans (`flaxsurgery.claims`)."""

    ids: dict
    rules: dict
    problems: list
    neutral: dict
    indices: dict = dataclasses.field(default_factory=dict)  # a cache, see `index`

    def index(self, old_space: str, new_space: str) -> np.ndarray:
        """Each new unit's position among the old units (cached: spaces recur across leaves)."""
        key = (old_space, new_space)
        if key not in self.indices:
            self.indices[key] = index_by_id(self.ids[new_space][1], self.ids[old_space][0])
        return self.indices[key].copy()


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


def read_only(arrays: LeafArrays) -> LeafArrays:
    for value in jax.tree_util.tree_leaves(arrays):
        value.flags.writeable = False
    return arrays


def gather_leaf(path, new, new_axes, source, old, old_axes, ctx):
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
    old_sizes = [entry_size(o, {k: len(v[0]) for k, v in ctx.ids.items()}) for o in old_spec.parts]
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


def init_leaf(path, new, new_axes, init, ctx):
    """The plan of a leaf with no source: a new layer's kernel, bias or norm parameters."""
    shape, dtype = _shape_dtype(new)
    leaf = LeafPlan(path, None, init, shape, dtype, neutral=_neutral(path, new_axes, ctx.neutral))
    mapped = [i for i, spec in enumerate(new_axes) if carries_units(spec)]
    if init in ("identity", "near_identity", "zeros") and len(shape) <= 1 and leaf.neutral is None:
        ctx.problems.append(
            f"new leaf {path!r} has no source and {init} gives it the neutral value, but the name "
            f"{leaf_name(path)!r} does not say whether that is 0 (a shift) or 1 (a scale); say it "
            f"with neutral={{{leaf_name(path)!r}: ...}} or give it a leaf_inits entry such as 'fresh'")
    if init not in ("identity", "near_identity") or len(mapped) <= 1 and len(shape) <= 1:
        return leaf, LeafArrays()
    if len(mapped) != 2 or any(not isinstance(new_axes[i], str) for i in mapped):
        ctx.problems.append(
            f"new leaf {path!r} (axes {new_axes}) has no source and {init} needs a kernel with one input "
            f"and one output space; give it a source in layer_map or a leaf_inits entry such as 'fresh'")
        return leaf, LeafArrays()
    in_ids = ctx.ids[space_of(new_axes[mapped[0]])][1]
    out_ids = ctx.ids[space_of(new_axes[mapped[1]])][1]
    match = index_by_id(out_ids, in_ids)
    return dataclasses.replace(leaf, kernel_axes=tuple(mapped)), LeafArrays(match=match)
