"""Primitive handlers: how each JAX primitive moves units from its operands to its outputs.

A handler is called once per equation of the jaxpr as ``handler(g, eqn, ins, where)`` and
returns the axis nodes of each output (see `register_primitive`). The built-in table covers
element-wise ops, reductions, ``dot_general``, convolutions, pooling and the axis-moving
primitives of `shape_ops`; users add primitives with `register_primitive` or
`register_elementwise`, and take them away again with `unregister_primitive`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence

from flaxsurgery.jaxprs import CALLS
from flaxsurgery.trace.graph import AxisGraph
from flaxsurgery.trace.shape_ops import SHAPE_HANDLERS, out_shapes

# (g, eqn, input axes, where) -> output axes: one list of nodes per output.
Handler = Callable[[AxisGraph, object, list, str], Sequence[Sequence[int]]]


def elementwise(g: AxisGraph, eqn, ins, where):
    """Element-wise ops with broadcasting: aligned axes of equal size carry the same units."""
    (shape,) = {s for s in out_shapes(eqn)}
    out = g.fresh_axes(shape)
    for operand, axes in zip(eqn.invars, ins):
        op_shape = tuple(operand.aval.shape)
        if not op_shape:
            continue  # a scalar broadcast to every element couples nothing
        if len(op_shape) != len(shape):
            raise ValueError(f"trace_layout: {where}: operand of rank {len(op_shape)} in an "
                             f"element-wise op of rank {len(shape)}")
        for axis, (n, m) in enumerate(zip(op_shape, shape)):
            if n == m:  # a size-1 axis broadcast against a larger one carries no units across
                g.union(axes[axis], out[axis], where)
    return [out for _ in eqn.outvars]


def _passthrough(g, eqn, ins, where):
    return list(ins[: len(eqn.outvars)])


def _fresh_outputs(g, eqn, ins, where):
    return [g.fresh_axes(s) for s in out_shapes(eqn)]


def _reduce(g, eqn, ins, where):
    axes = set(eqn.params["axes"])
    g.mixing.update(ins[0][i] for i in axes)  # a sum, max or mean over units mixes them
    return [[n for i, n in enumerate(ins[0]) if i not in axes]]


def _cumulative(g, eqn, ins, where):
    """cumsum and friends: element-wise in shape, but each entry mixes those before it."""
    g.mixing.add(ins[0][eqn.params["axis"]])
    return elementwise(g, eqn, ins, where)


def is_parameter(g: AxisGraph, axes) -> bool:
    """Whether a value is a parameter, or computed from parameters alone (OptimizedLSTMCell
    concatenates its gates' kernels before the product): not an activation."""
    return bool(axes) and all(n in g.param_axes or n in g.derived for n in axes)


def _dot_general(g, eqn, ins, where):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    if not is_parameter(g, lhs) and not is_parameter(g, rhs):  # activation x activation
        g.mixing.update(lhs[a] for a in lc)
    for a, b in zip(lc, rc):
        g.union(lhs[a], rhs[b], where)
    for a, b in zip(lb, rb):
        g.union(lhs[a], rhs[b], where)
    lhs_free = [n for i, n in enumerate(lhs) if i not in lc and i not in lb]
    rhs_free = [n for i, n in enumerate(rhs) if i not in rc and i not in rb]
    return [[lhs[a] for a in lb] + lhs_free + rhs_free]


def _conv(g, eqn, ins, where):
    if eqn.params["batch_group_count"] != 1:
        raise ValueError(f"trace_layout: {where}: conv with batch_group_count != 1 is not "
                         "supported")
    lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    out = g.fresh_axes(out_shapes(eqn)[0])
    g.union(lhs[lhs_spec[0]], out[out_spec[0]], where)  # batch
    g.window.update(rhs[d] for d in rhs_spec[2:])
    g.slid.update(lhs[d] for d in lhs_spec[2:])
    groups = eqn.params["feature_group_count"]
    rhs_shape = eqn.invars[1].aval.shape
    per_group_in, total_out = rhs_shape[rhs_spec[1]], rhs_shape[rhs_spec[0]]
    lhs_c, rhs_i, rhs_o, out_c = lhs[lhs_spec[1]], rhs[rhs_spec[1]], rhs[rhs_spec[0]], out[out_spec[1]]
    g.union(rhs_o, out_c, where)
    if groups == 1:
        g.union(lhs_c, rhs_i, where)
    elif per_group_in == 1:  # depthwise: output channel o reads input channel o // multiplier
        g.blank.add(rhs_i)
        if total_out == groups:
            g.union(lhs_c, rhs_o, where)
        else:  # output channel = input channel * multiplier + m: both parts carry units
            group, multiplier = g.split_grid(rhs_o, [groups, total_out // groups], where)
            g.union(lhs_c, group, where)
            g.units.update((group, multiplier))
    else:  # grouped: channel = group * per_group + unit, groups are positions
        in_group, in_unit = g.split_grid(lhs_c, [groups, per_group_in], where)
        out_group, out_unit = g.split_grid(rhs_o, [groups, total_out // groups], where)
        g.union(in_group, out_group, where)
        g.units.add(out_unit)
        g.union(in_unit, rhs_i, where)
    return [out]


def _window_reduce(g, eqn, ins, where):
    """Pooling: axes with a trivial window pass through, the others mix positions."""
    out = g.fresh_axes(out_shapes(eqn)[0])
    p = eqn.params
    for axis, node in enumerate(ins[0]):
        trivial = (p["window_dimensions"][axis] == 1 and p["window_strides"][axis] == 1
                   and tuple(p["padding"][axis]) == (0, 0) and p["base_dilation"][axis] == 1
                   and p["window_dilation"][axis] == 1)
        if trivial:
            g.union(node, out[axis], where)
        else:
            g.constrain([node, out[axis]], f"{where}: {eqn.primitive.name} pools over axis {axis}")
    return [out]


_ELEMENTWISE = frozenset(["abs", "acos", "acosh", "add", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "clamp", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh", "digamma", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "igamma", "imag", "integer_pow", "is_finite", "le", "lgamma", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "population_count", "pow", "real", "reduce_precision", "rem", "round", "rsqrt", "select_n", "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh", "sqrt", "square", "stop_gradient", "sub", "tan", "tanh", "xor"])

BUILTIN: types.MappingProxyType[str, Handler] = types.MappingProxyType({
    **{name: elementwise for name in _ELEMENTWISE},
    **{name: _reduce for name in ["reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor", "argmax", "argmin"]},
    **{name: _cumulative for name in ["cumlogsumexp", "cummax", "cummin", "cumprod", "cumsum"]},
    **{name: _window_reduce for name in (
        "reduce_window_sum", "reduce_window_max", "reduce_window_min")},
    **{name: _fresh_outputs for name in ["iota", "random_bits", "random_seed", "random_wrap", "random_unwrap", "random_split", "random_fold_in", "threefry2x32", "rng_bit_generator", "rng_uniform"]},
    **{name: _passthrough for name in ["optimization_barrier", "sharding_constraint", "name", "mesh_cast", "reshard"]},
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    **SHAPE_HANDLERS,
})

# Primitives the walker follows into their sub-jaxprs itself (no handler can replace it).
WALKED = frozenset([*CALLS, "scan", "while", "cond"])

_REGISTERED: dict[str, Handler] = {}  # the user's handlers, by primitive name


def register_primitive(name: str, handler: Handler, *, replace: bool = False) -> None:
    """Teaches the tracer how a primitive moves units, for every later trace in this process.

    The tracer follows the jaxpr of the forward pass equation by equation; every axis of every
    value is a node of an axis graph, and a primitive's handler says which output axes carry
    the same units as which input axes. It is called once per equation as
    ``handler(g, eqn, ins, where)``:

    - ``g``: the axis graph (`flaxsurgery.trace.AxisGraph`). ``g.fresh_axes(shape)`` gives
      new nodes for a value; ``g.union(a, b, where)`` records that nodes ``a`` and ``b`` carry
      the same units (they must have one size); ``g.constrain(nodes, reason)`` records that
      these axes must carry no units (the trace then fails with `reason` if one does: a sort
      or a pooling over features); ``g.mixing.add(node)`` records that the equation combines
      the units of that axis (a sum over features: no plan then claims to keep the function
      when units are added there).
    - ``eqn``: the equation (`jax.extend.core.JaxprEqn`): ``eqn.params`` holds the
      primitive's parameters, ``eqn.invars[i].aval.shape`` and ``eqn.outvars[j].aval.shape``
      the operands' and outputs' shapes.
    - ``ins``: for each operand, the list of its axes' nodes (one per dimension).
    - ``where``: the primitive, module path and source line, for messages.

    It returns, for each output, the list of its axes' nodes, one per dimension: an input's
    own nodes where the axis passes through unchanged, else fresh nodes unioned with the
    input axes they carry units from. An axis unioned with nothing carries no units of any
    space. The tracer checks the count and sizes of what a registered handler returns.

    Args:
      name: the primitive's name, as the error for an unknown primitive shows it
        (``eqn.primitive.name``).
      handler: ``handler(g, eqn, ins, where) -> list of lists of nodes``.
      replace: allow replacing a built-in handler (`unregister_primitive` restores it).

    Raises:
      ValueError: for a name the tracer walks into itself (``jit``, ``scan``, ``cond``, ...),
        and for a built-in primitive unless ``replace=True``.
      TypeError: for a name that is not a string or a handler that is not callable.

    >>> from flaxsurgery.trace import elementwise
    >>> register_primitive("my_activation", elementwise)
    >>> unregister_primitive("my_activation")
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_primitive: the primitive's name must be a string, got {name!r}")
    if not callable(handler):
        raise TypeError(f"register_primitive({name!r}, ...): the handler must be callable "
                        f"(g, eqn, ins, where) -> output axes, got {type(handler).__name__}")
    if name in WALKED:
        raise ValueError(f"register_primitive: the tracer follows `{name}` into its sub-jaxprs "
                         "itself; its handler cannot be replaced")
    if name in BUILTIN and not replace:
        raise ValueError(f"register_primitive: `{name}` has a built-in handler; pass "
                         "replace=True to replace it (unregister_primitive restores it)")
    _REGISTERED[name] = _checked(name, handler)


def register_elementwise(name: str, *, replace: bool = False) -> None:
    """Registers a primitive whose every output entry depends only on the same entry of each
    operand (scalars and size-1 axes broadcast), as ``add`` or ``tanh`` do.

    `register_primitive` with the tracer's own element-wise handler.

    >>> register_elementwise("my_activation")
    >>> unregister_primitive("my_activation")
    """
    register_primitive(name, elementwise, replace=replace)


def unregister_primitive(name: str) -> None:
    """Forgets the handler registered for `name` (a replaced built-in gets its own back).

    Raises:
      ValueError: when no handler is registered for `name`.
    """
    if name not in _REGISTERED:
        raise ValueError(f"unregister_primitive: no handler is registered for `{name}`"
                         + (" (its handler is built in)" if name in BUILTIN else ""))
    del _REGISTERED[name]


def handler_for(name: str, where: str) -> Handler:
    """The handler of primitive `name`: the user's, else the built-in one.

    Raises:
      ValueError: for a primitive the tracer does not know, naming it, where it is and how
        to register it.
    """
    handler = _REGISTERED.get(name) or BUILTIN.get(name)
    if handler is None:
        raise ValueError(
            f"trace_layout: unsupported primitive {where}. The tracer knows which axes carry "
            f"units only for the primitives it lists; tell it how `{name}` moves units with "
            f"fs.register_primitive({name!r}, handler) (fs.register_elementwise({name!r}) when "
            "each output entry depends only on the same entry of its operands), or write this "
            "model's layout by hand."
        )
    return handler


def _checked(name: str, handler: Handler) -> Handler:
    """`handler`, with its result checked against the equation's outputs."""

    def checked(g, eqn, ins, where):
        outs = handler(g, eqn, ins, where)
        shapes = out_shapes(eqn)
        problem = _result_problem(g, outs, shapes)
        if problem:
            raise ValueError(
                f"trace_layout: the handler registered for `{name}` at {where} {problem}; "
                f"it must return one list of nodes per output, one node per axis of that "
                f"output (the outputs' shapes: {shapes})")
        return [list(axes) for axes in outs]

    return checked


def _result_problem(g: AxisGraph, outs, shapes: list[tuple]) -> str:
    """What is wrong with a handler's result for outputs of these shapes, or ""."""
    if not isinstance(outs, (list, tuple)) or len(outs) != len(shapes):
        count = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
        return f"returned {count} outputs for {len(shapes)}"
    for j, (axes, shape) in enumerate(zip(outs, shapes)):
        if not isinstance(axes, (list, tuple)) or len(axes) != len(shape):
            return f"returned {axes!r} for output {j} of rank {len(shape)}"
        for axis, (node, n) in enumerate(zip(axes, shape)):
            if not isinstance(node, int) or not 0 <= node < len(g.size):
                return f"returned {node!r} for axis {axis} of output {j}, not a node of the graph"
            if g.size[g.find(node)] != n:
                return (f"returned a node of size {g.size[g.find(node)]} for axis {axis} of "
                        f"output {j}, of size {n}")
    return ""
