"""Layouts: which space each axis of each parameter leaf belongs to.

A layout maps a leaf path (``"params/Dense_0/kernel"``) to one entry per axis of that leaf: a
space name; ``None`` for an axis that carries no units and keeps its size; [`WINDOW`][flaxsurgery.WINDOW] for a
conv kernel's spatial axis (no units, and the only kind of axis a plan may grow or shrink, around
its centre); or a [`Flat`][flaxsurgery.Flat] for a dense axis fed by a flattened conv output. The last axis
that carries units is the leaf's *output* axis (a unit's incoming weights: kernel columns, biases,
norm scales); the other unit axes are *input* axes (a unit's outgoing weights: kernel rows,
embedding rows).

Two keys of a layout are not leaf paths. [`MIXING`][flaxsurgery.MIXING] lists the spaces whose units the forward
pass combines other than through a parameter (a LayerNorm's statistics, a softmax, an
activation-by-activation product): adding or removing units of such a space changes what every
other unit computes, so no plan claims to preserve the function there. [`OUTPUTS`][flaxsurgery.OUTPUTS] lists
the spaces the model's outputs carry, which are output spaces whatever parameter axes carry them
(a tied embedding's vocabulary is an input axis of the embedding, and the model's output).
[`ACTIVATIONS`][flaxsurgery.ACTIVATIONS] says which element-wise activation follows each space (``{space: "relu"}``):
what an identity layer inserted before it keeps (see `flaxsurgery.activations`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Flat:
    """A dense axis fed by a flattened conv output: ``positions`` spatial positions of `space`'s
    channels, channels fastest (Flax's NHWC flatten puts channel ``c`` at rows
    ``c, c+C, c+2C, ...``).
    """

    space: str
    positions: int


@dataclasses.dataclass(frozen=True)
class Concat:
    """An axis made of consecutive segments, each an axis entry (a space name, Flat, Grid).

    A dense layer reading ``concatenate([a, b])`` has kernel rows ``Concat(("a", "b"))``: the
    rows of ``a``'s units, then those of ``b``'s. Adding a unit to ``a`` inserts a row at the
    end of the first segment. A space may appear in several segments (LSTM gates).
    """

    parts: tuple


@dataclasses.dataclass(frozen=True)
class Grid:
    """An axis that is the row-major flattening of several parts, the last part fastest.

    Each part is an axis entry (a space, Concat, ...) or an int: that many positions that carry
    no units. ``Grid((49, "Conv_1"))`` is ``Flat("Conv_1", 49)``; ``Grid(("heads", "head_dim"))``
    is an attention projection's heads x features axis.
    """

    parts: tuple


class _Window:
    """The entry of a conv kernel's spatial axis (use the [`WINDOW`][flaxsurgery.WINDOW] instance)."""

    def __repr__(self) -> str:
        return "WINDOW"

    def __reduce__(self):
        return "WINDOW"


class _Mixing:
    """The layout key that lists mixing spaces (use the [`MIXING`][flaxsurgery.MIXING] instance)."""

    def __repr__(self) -> str:
        return "MIXING"

    def __reduce__(self):
        return "MIXING"


class _Outputs:
    """The layout key that lists the model's output spaces (use the [`OUTPUTS`][flaxsurgery.OUTPUTS] instance)."""

    def __repr__(self) -> str:
        return "OUTPUTS"

    def __reduce__(self):
        return "OUTPUTS"


class _Activations:
    """The layout key that says which activation follows each space (use [`ACTIVATIONS`][flaxsurgery.ACTIVATIONS])."""

    def __repr__(self) -> str:
        return "ACTIVATIONS"

    def __reduce__(self):
        return "ACTIVATIONS"


WINDOW = _Window()
"""A layout entry for a conv kernel's spatial axis: a window, padded or cropped, no units."""
MIXING = _Mixing()
"""A layout key: its value lists the spaces whose units the forward pass mixes (a softmax, a norm)."""
OUTPUTS = _Outputs()
"""A layout key: its value lists the model's output spaces, output spaces whatever axes carry them."""
ACTIVATIONS = _Activations()
"""A layout key: its value maps each space to the element-wise activation that follows it."""
_NOT_LEAVES = (MIXING, OUTPUTS, ACTIVATIONS)

AxisSpec = str | Flat | Concat | Grid | _Window | None


def carries_units(axis: AxisSpec) -> bool:
    """Whether an axis entry names a space (not None, not a window)."""
    return axis is not None and axis is not WINDOW


def mixing_spaces(layout: Mapping) -> frozenset:
    """The spaces a layout's [`MIXING`][flaxsurgery.MIXING] key lists (empty if it has none)."""
    return frozenset(layout.get(MIXING, ()))


def output_spaces(layout: Mapping) -> frozenset:
    """The spaces a layout's [`OUTPUTS`][flaxsurgery.OUTPUTS] key lists (empty if it has none)."""
    return frozenset(layout.get(OUTPUTS, ()))


def activations_of(layout: Mapping) -> Mapping | None:
    """The layout's [`ACTIVATIONS`][flaxsurgery.ACTIVATIONS] entry ``{space: activation name}``, or None if it has
    none (then no claim rests on which activation follows a space)."""
    return layout.get(ACTIVATIONS)


def leaf_entries(layout: Mapping) -> dict:
    """A layout without its [`MIXING`][flaxsurgery.MIXING], [`OUTPUTS`][flaxsurgery.OUTPUTS] and [`ACTIVATIONS`][flaxsurgery.ACTIVATIONS] keys:
    ``{leaf path: axes}``."""
    return {path: axes for path, axes in layout.items() if not any(path is k for k in _NOT_LEAVES)}


def as_grid(axis: AxisSpec) -> AxisSpec:
    """A Flat as the Grid it stands for; other entries as they are."""
    return Grid((axis.positions, axis.space)) if isinstance(axis, Flat) else axis


def spaces_in(axis: AxisSpec) -> tuple:
    """Every space an axis entry names, in order (with repeats)."""
    axis = as_grid(axis)
    if isinstance(axis, (Concat, Grid)):
        return tuple(s for part in axis.parts for s in spaces_in(part))
    return (axis,) if isinstance(axis, str) else ()


def space_of(axis: AxisSpec) -> str | None:
    """The space a plain or Flat axis entry names, or None."""
    return axis.space if isinstance(axis, Flat) else axis


def output_axis(axes: Sequence[AxisSpec]) -> int | None:
    """Index of a leaf's output axis: its last mapped axis (None if no axis is mapped)."""
    mapped = [i for i, a in enumerate(axes) if carries_units(a)]
    return mapped[-1] if mapped else None


def chain_layout(
    spaces: Sequence[AxisSpec],
    layers: Sequence[str],
    *,
    prefix: str = "params",
    spatial_dims: int | Mapping[str, int] = 0,
    layer_norms: Mapping[str, str] | None = None,
    batch_norms: Mapping[str, str] | None = None,
    stats_prefix: str = "batch_stats",
) -> dict:
    """The layout of a chain of Dense/Conv layers (an MLP or a plain CNN), with its norm layers.

    Args:
      spaces: ``len(layers) + 1`` entries; entry ``i`` is layer ``i``'s input and layer
        ``i-1``'s output. A [`Flat`][flaxsurgery.Flat] entry is a flattened conv output: the conv before it
        outputs the plain space, the dense after it reads the flat axis.
      layers: Dense/Conv layer names in order (``"Dense_0"``, ``"Conv_0"``, ...).
      prefix: path of the layers' parent (``"params"`` for Linen variables, ``""`` for a bare
        params dict or NNX state).
      spatial_dims: a conv layer's number of spatial axes (an int for every layer, or a
        mapping layer -> int; 0 or missing means Dense).
      layer_norms: ``{LayerNorm layer: the space it normalises}``: its ``scale`` and ``bias``;
        the space is listed under [`MIXING`][flaxsurgery.MIXING] (the norm's statistics span its units).
      batch_norms: ``{BatchNorm layer: space}``: its ``scale`` and ``bias``, and its ``mean``
        and ``var`` under `stats_prefix`.
      stats_prefix: the collection that holds BatchNorm statistics.

    Returns:
      ``{leaf path: axes}`` for every kernel, bias and norm leaf named. A norm layer the chain
      has but these arguments do not name is not in the layout: if its size changes, the plan
      rejects it.

    >>> chain_layout(["obs", "Dense_0", "out"], ["Dense_0", "Dense_1"])
    {'params/Dense_0/kernel': ('obs', 'Dense_0'), 'params/Dense_0/bias': ('Dense_0',), \
'params/Dense_1/kernel': ('Dense_0', 'out'), 'params/Dense_1/bias': ('out',)}
    """
    if len(spaces) != len(layers) + 1:
        raise ValueError(
            f"chain_layout needs len(layers) + 1 spaces, got {len(spaces)} spaces for "
            f"{len(layers)} layers"
        )

    def under(root: str, layer: str, leaf: str) -> str:
        return "/".join(part for part in (root, layer, leaf) if part)

    layout: dict = {}
    for i, layer in enumerate(layers):
        rank = spatial_dims.get(layer, 0) if isinstance(spatial_dims, Mapping) else spatial_dims
        out = space_of(spaces[i + 1])
        layout[under(prefix, layer, "kernel")] = (WINDOW,) * rank + (spaces[i], out)
        layout[under(prefix, layer, "bias")] = (out,)
    for norm, space in {**(layer_norms or {}), **(batch_norms or {})}.items():
        layout[under(prefix, norm, "scale")] = (space,)
        layout[under(prefix, norm, "bias")] = (space,)
    for norm, space in (batch_norms or {}).items():
        layout[under(stats_prefix, norm, "mean")] = (space,)
        layout[under(stats_prefix, norm, "var")] = (space,)
    if layer_norms:
        layout[MIXING] = tuple(dict.fromkeys(layer_norms.values()))
    return layout
