"""Layouts traced from the forward pass: the JAX counterpart of Torch-Pruning's DepGraph.

[`trace_layout`][flaxsurgery.trace_layout] runs the model's apply function under `jax.make_jaxpr` and walks the
jaxpr equation by equation. Every axis of every value is a node of a union-find; an equation
unions each output axis with the input axes it carries units from (a ``dot_general`` unions the
contracted axes of its operands, an element-wise op unions aligned axes, a reshape that flattens
``(H, W, C)`` records that the flat axis is a grid of three parts, channels fastest, ...). The
classes that touch a parameter axis are the *spaces* of the layout.

Spaces are named so that users can refer to them:

- an input's feature axis by the argument's name (``obs``; ``carry/0`` for a leaf of a pytree
  argument; ``name:axis`` for an input's other unit-carrying axes);
- the model's output by ``out`` (``out/0``, ``out/key`` for pytree outputs);
- a hidden space by the layer whose parameter outputs it (``Dense_0``; Linen's collection
  prefix ``params/`` is dropped), the first such layer in forward order;
- a segment of a sliced space by ``name[start:stop]``;
- anything else by the first parameter axis in it, ``layer:axis``.

Two entries extend the core's layout format where a plain space name cannot say it:
[`Concat`][flaxsurgery.Concat] (an axis made of consecutive segments, e.g. a dense layer reading two inputs
concatenated, or the four gates of an optimized LSTM) and [`Grid`][flaxsurgery.Grid] (an axis that is the
row-major flattening of several parts, when it is not a [`Flat`][flaxsurgery.Flat]).
The tracer emits them only where nothing simpler fits.

The package, one job a module: `graph` (the union-find over axes and its constraints),
`primitives` (the handler of each primitive, the table, and `register_primitive`),
`shape_ops` (the handlers of the primitives that move axes), `walk` (the jaxpr walk),
`naming` (input names, space names, layout entries) and `traced` (the entry points).
"""

from flaxsurgery.layout import WINDOW, AxisSpec, Concat, Flat, Grid
from flaxsurgery.trace.graph import Axis, AxisGraph
from flaxsurgery.trace.naming import DEFAULT_INPUT, argument_names
from flaxsurgery.trace.primitives import (
    Handler,
    elementwise,
    register_elementwise,
    register_primitive,
    unregister_primitive,
)
from flaxsurgery.trace.traced import TracedModel, trace_layout, traced_model

__all__ = (
    "DEFAULT_INPUT",
    "WINDOW",
    "Axis",
    "AxisGraph",
    "AxisSpec",
    "Concat",
    "Flat",
    "Grid",
    "Handler",
    "TracedModel",
    "argument_names",
    "elementwise",
    "register_elementwise",
    "register_primitive",
    "trace_layout",
    "traced_model",
    "unregister_primitive",
)
