"""Layouts: which space each axis of each parameter leaf belongs to.

A layout maps a leaf path (``"params/Dense_0/kernel"``) to one entry per axis of that leaf: a
space name, ``None`` for an axis that carries no units (a conv kernel's spatial axes), or a
:class:`Flat` for a dense axis fed by a flattened conv output. The last mapped axis of a leaf is
its *output* axis (a unit's incoming weights: kernel columns, biases, norm scales); the other
mapped axes are *input* axes (a unit's outgoing weights: kernel rows, embedding rows).
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


AxisSpec = str | Flat | Concat | Grid | None
Layout = Mapping[str, tuple]


def as_grid(axis: AxisSpec) -> AxisSpec:
    """A Flat as the Grid it stands for; other entries as they are."""
    return Grid((axis.positions, axis.space)) if isinstance(axis, Flat) else axis


def spaces_in(axis: AxisSpec) -> tuple:
    """Every space an axis entry names, in order (with repeats)."""
    axis = as_grid(axis)
    if isinstance(axis, (Concat, Grid)):
        return tuple(s for part in axis.parts for s in spaces_in(part))
    return () if axis is None or isinstance(axis, int) else (axis,)


def space_of(axis: AxisSpec) -> str | None:
    """The space a plain or Flat axis entry names, or None."""
    return axis.space if isinstance(axis, Flat) else axis


def output_axis(axes: Sequence[AxisSpec]) -> int | None:
    """Index of a leaf's output axis: its last mapped axis (None if no axis is mapped)."""
    mapped = [i for i, a in enumerate(axes) if a is not None]
    return mapped[-1] if mapped else None


def chain_layout(
    spaces: Sequence[AxisSpec],
    layers: Sequence[str],
    *,
    prefix: str = "params",
    spatial_dims: int | Mapping[str, int] = 0,
) -> dict[str, tuple]:
    """The layout of a chain of Dense/Conv layers (an MLP or a plain CNN).

    Args:
      spaces: ``len(layers) + 1`` entries; entry ``i`` is layer ``i``'s input and layer
        ``i-1``'s output. A :class:`Flat` entry is a flattened conv output: the conv before it
        outputs the plain space, the dense after it reads the flat axis.
      layers: layer names in order (``"Dense_0"``, ``"Conv_0"``, ...).
      prefix: path of the layers' parent (``"params"`` for Linen variables, ``""`` for a bare
        params dict or NNX state).
      spatial_dims: a conv layer's number of spatial axes (an int for every layer, or a
        mapping layer -> int; 0 or missing means Dense).

    Returns:
      ``{leaf path: axes}`` for every kernel and bias.

    >>> chain_layout(["obs", "Dense_0", "out"], ["Dense_0", "Dense_1"])
    {'params/Dense_0/kernel': ('obs', 'Dense_0'), 'params/Dense_0/bias': ('Dense_0',), \
'params/Dense_1/kernel': ('Dense_0', 'out'), 'params/Dense_1/bias': ('out',)}
    """
    if len(spaces) != len(layers) + 1:
        raise ValueError(
            f"chain_layout needs len(layers) + 1 spaces, got {len(spaces)} spaces for "
            f"{len(layers)} layers"
        )
    layout = {}
    for i, layer in enumerate(layers):
        rank = spatial_dims.get(layer, 0) if isinstance(spatial_dims, Mapping) else spatial_dims
        base = f"{prefix}/{layer}" if prefix else layer
        out = space_of(spaces[i + 1])
        layout[f"{base}/kernel"] = (None,) * rank + (spaces[i], out)
        layout[f"{base}/bias"] = (out,)
    return layout
