"""The tracer's entry points: `trace_layout` and `traced_model`."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from flaxsurgery.activations import activations_after
from flaxsurgery.forward import trace_forward
from flaxsurgery.layout import ACTIVATIONS, MIXING, OUTPUTS, spaces_in
from flaxsurgery.trace.graph import Axis, AxisGraph, unit_classes
from flaxsurgery.trace.naming import (
    Namer,
    argument_names,
    collection_layer,
    entry,
    leaves_named,
)
from flaxsurgery.trace.walk import Walker
from flaxsurgery.units import problems_error


def trace_layout(
    fn: Any,
    *args: Any,
    input_names: Sequence[str] | None = None,
) -> dict[str, tuple]:
    """Traces a model's forward pass and returns its layout: the space of every parameter axis.

    Call it as ``trace_layout(model.apply, variables, *sample_inputs)`` for Linen (or any
    ``apply(variables, *inputs)`` function) and ``trace_layout(nnx_module, *sample_inputs)`` for
    NNX. Parameters may be arrays or `jax.ShapeDtypeStruct` (``jax.eval_shape`` of
    ``init``), so the new network's layout needs no initialisation. Use a batch size above 1:
    a size-1 batch axis cannot be told apart from a size-1 unit axis.

    Args:
      fn: ``apply(variables, *inputs)``, or an ``flax.nnx.Module``.
      *args: the variables (Linen / plain functions only), then the sample inputs.
      input_names: names of the input spaces, one per sample input; by default the argument
        names of ``Module.__call__`` or of ``fn`` (``arg{i}`` where none is known).

    Returns:
      ``{leaf path: tuple of axis entries}`` for every leaf of the variables, in the format
      [`flaxsurgery.plan`][flaxsurgery.plan] takes (entries: a space name, None, [`Flat`][flaxsurgery.Flat], and where
      needed [`Concat`][flaxsurgery.Concat] / [`Grid`][flaxsurgery.Grid]), and under ``ACTIVATIONS`` the activation that
      follows each space (see `flaxsurgery.activations`).

    Raises:
      ValueError: for a primitive the tracer does not know (register it with
        [`register_primitive`][flaxsurgery.register_primitive]), for units moved in a way a
        layout cannot express (a reshape that regroups unit axes, pooling over channels, ...),
        and for variables the forward pass never reads; every problem at once, with where it
        happened.

    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((4, 3)))
    >>> trace_layout(model.apply, variables, jnp.zeros((4, 3)), input_names=["obs"])
    {'params/layers_0/bias': ('layers_0',), 'params/layers_0/kernel': ('obs', 'layers_0'), \
'params/layers_2/bias': ('out',), 'params/layers_2/kernel': ('layers_0', 'out'), OUTPUTS: ('out',), \
ACTIVATIONS: {'layers_0': 'relu', 'out': 'linear'}}
    """
    return traced_model(fn, *args, input_names=input_names).layout


class TracedModel(NamedTuple):
    """What tracing a forward pass finds: the layout, the parameter leaves in the order the
    forward pass first reads them, the names given to the inputs, and each space's size (which
    a plan cannot always tell from the leaves: the parts of a Concat or Grid)."""

    layout: dict
    order: tuple
    input_names: tuple
    sizes: Mapping[str, int] = types.MappingProxyType({})  # {space: units}, as traced


def traced_model(fn: Any, *args: Any, input_names: Sequence[str] | None = None) -> TracedModel:
    """[`trace_layout`][flaxsurgery.trace_layout], with the forward order of the leaves and the input names."""
    apply, variables, inputs, names = _bind(fn, args, input_names)
    leaves = [(path.lstrip("/"), leaf) for path, leaf in leaves_named("", variables)]
    closed, out_shape = trace_forward(apply, variables, inputs)

    g = AxisGraph()
    params = [Axis(n, path, i) for path, leaf in leaves
              for i, n in enumerate(g.fresh_axes(leaf.shape))]
    g.param_axes.update(a.node for a in params)
    by_leaf = {path: [a.node for a in params if a.owner == path] for path, _ in leaves}
    input_axes, input_nodes = _input_axes(g, names, inputs)
    first_node = {nodes[0]: i for i, nodes in enumerate(by_leaf.values()) if nodes}
    walker = Walker(g, first_node)
    consts = [g.fresh_axes(getattr(c, "shape", ())) for c in closed.consts]
    outs = walker.walk(closed.jaxpr, consts, [by_leaf[path] for path, _ in leaves] + input_nodes)
    output_axes = [
        Axis(n, name, i)
        for (name, _), nodes in zip(leaves_named("out", out_shape), outs, strict=True)
        for i, n in enumerate(nodes)
    ]
    layout, sizes = _resolve(g, leaves, params, input_axes, output_axes, walker.use_order,
                             isinstance(variables, dict) and "params" in variables)
    paths = [path for path, _ in leaves]
    layout[ACTIVATIONS] = activations_after(closed, paths, layout)  # what identity layers keep
    first = [paths[i] for i in walker.use_order]
    order = tuple(dict.fromkeys(first + paths))
    return TracedModel(layout, order, tuple(names), types.MappingProxyType(sizes))


def _input_axes(g: AxisGraph, names, inputs) -> tuple[list[Axis], list[list[int]]]:
    """The axes of every leaf of the sample inputs, and each leaf's nodes, in argument order."""
    axes, nodes_per_leaf = [], []
    for name, x in zip(names, inputs):
        for leaf_name, leaf in leaves_named(name, x):
            nodes = g.fresh_axes(getattr(leaf, "shape", ()))
            axes += [Axis(n, leaf_name, i) for i, n in enumerate(nodes)]
            nodes_per_leaf.append(nodes)
    return axes, nodes_per_leaf


def _bind(fn, args, input_names):
    """(apply(variables, *inputs), variables, inputs, input names) for Linen or NNX."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        nnx = None
    if nnx is not None and isinstance(fn, nnx.Module):
        graphdef, state = nnx.split(fn)

        def apply(state, *inputs):
            return nnx.merge(graphdef, state)(*inputs)

        variables, inputs = state, args
        default = argument_names(type(fn).__call__, len(inputs), skip=1)
    else:
        if not args:
            raise ValueError("trace_layout(apply_fn, variables, *sample_inputs): missing the "
                             "variables")
        apply, variables, inputs = fn, args[0], args[1:]
        default = argument_names(fn, len(inputs), skip=1)
    if input_names is not None and len(input_names) != len(inputs):
        raise ValueError(f"trace_layout: {len(input_names)} input_names for {len(inputs)} "
                         "sample inputs")
    return apply, variables, inputs, list(input_names or default)


def _problems(g: AxisGraph, leaves, params, carrying, ambiguous, use_order) -> list[str]:
    """Everything that keeps the traced classes from being a layout."""
    problems = []
    for a in params:
        root = g.find(a.node)
        if root in ambiguous:
            sizes = tuple(g.size[g.find(p)] for p in g.structure[root].parts)
            problems.append(
                f"axis {a.axis} of {a.owner!r} reads a flattening of axes {sizes}, none of which is "
                f"known to carry units, so the tracer cannot tell which do (channels? pixels?); "
                f"write this leaf's layout by hand, e.g. Flat('obs', positions) when the last axis "
                f"holds the units")
    windows = {g.find(w) for w in g.window}
    for c in g.constraints:
        if any(g.find(n) in carrying for n in c.nodes):
            problems.append(f"{c.reason}, but that axis carries units")
    for a in params:
        if g.find(a.node) in windows and a.node not in g.window:
            problems.append(f"axis {a.axis} of {a.owner!r} is coupled with a conv kernel window")
    paths = [path for path, _ in leaves]
    used = {paths[i] for i in use_order} | {path for path, leaf in leaves if not leaf.shape}
    unused = [p for p in paths if p not in used]
    if unused:
        problems.append(
            "the forward pass never reads " + ", ".join(repr(p) for p in unused)
            + "; trace a function that uses them or write their layout by hand"
        )
    return problems


def _resolve(g, leaves, params, input_axes, output_axes, use_order, has_collections):
    """The layout and the traced size of every space it names (or one error naming every
    problem)."""
    carrying, ambiguous = unit_classes(g, params)
    problems = _problems(g, leaves, params, carrying, ambiguous, use_order)
    if problems:
        raise problems_error("trace_layout cannot build a layout for this model", problems)
    paths = [path for path, _ in leaves]
    first_used = [paths[i] for i in use_order]
    ordered = first_used + [p for p in paths if p not in set(first_used)]
    order = {p: k for k, p in enumerate(ordered)}
    producers = sorted(params, key=lambda a: (order[a.owner], a.axis))
    namer = Namer(g, carrying, input_axes, output_axes, producers, producers,
                  collection_layer(has_collections))
    layout = {path: tuple(entry(g, a.node, carrying, namer) for a in params if a.owner == path)
              for path in paths}

    def spaces_of(axes):
        return sorted({space for a in axes if g.find(a) in carrying
                       for space in spaces_in(entry(g, a, carrying, namer))}, key=str)

    mixing = spaces_of(g.mixing)
    if mixing:
        layout[MIXING] = tuple(mixing)
    outputs = spaces_of(a.node for a in output_axes)
    if outputs:
        layout[OUTPUTS] = tuple(outputs)
    named = {space for axes in layout.values() for e in axes for space in spaces_in(e)}
    sizes = {name: g.size[root] for root, name in namer.names.items() if name in named}
    return layout, sizes

