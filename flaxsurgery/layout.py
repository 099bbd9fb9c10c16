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
from typing import Optional, Union


@dataclasses.dataclass(frozen=True)
class Flat:
    """A dense axis fed by a flattened conv output: ``positions`` spatial positions of `space`'s
    channels, channels fastest (Flax's NHWC flatten puts channel ``c`` at rows
    ``c, c+C, c+2C, ...``).
    """

    space: str
    positions: int


AxisSpec = Optional[Union[str, Flat]]
Layout = Mapping[str, tuple]


def space_of(axis: AxisSpec) -> Optional[str]:
    """The space an axis entry names, or None."""
    return axis.space if isinstance(axis, Flat) else axis


def output_axis(axes: Sequence[AxisSpec]) -> Optional[int]:
    """Index of a leaf's output axis: its last mapped axis (None if no axis is mapped)."""
    mapped = [i for i, a in enumerate(axes) if a is not None]
    return mapped[-1] if mapped else None


def chain_layout(
    spaces: Sequence[AxisSpec],
    layers: Sequence[str],
    *,
    prefix: str = "params",
    spatial_dims: Union[int, Mapping[str, int]] = 0,
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
