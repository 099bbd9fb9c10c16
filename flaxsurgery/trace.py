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
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
from jax.extend import core as jcore

from flaxsurgery.activations import activations_after
from flaxsurgery.forward import trace_forward
from flaxsurgery.layout import (
    ACTIVATIONS,
    MIXING,
    OUTPUTS,
    WINDOW,
    AxisSpec,
    Concat,
    Flat,
    Grid,
    spaces_in,
)
from flaxsurgery.paths import path_name
from flaxsurgery.units import problems_error

try:  # Only for error messages; private, so its absence must not break tracing.
    from jax._src import source_info_util as _source_info
except ImportError:  # pragma: no cover
    _source_info = None


# ----------------------------------------------------------------------------------------------
# The union-find over axes.


@dataclasses.dataclass
class _Structure:
    kind: str  # "concat" (segments) or "grid" (row-major product, last part fastest)
    parts: list


@dataclasses.dataclass
class _Constraint:
    nodes: list
    reason: str


class _AxisGraph:
    """Union-find over axes; each class may be structured as a concat or grid of other nodes."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.structure: dict[int, _Structure] = {}
        self.part_of: dict[int, tuple[int, str, int]] = {}  # node -> (parent node, kind, index)
        self.window: set[int] = set()  # nodes that are conv kernel window axes (never units)
        self.blank: set[int] = set()  # other nodes that never carry units (depthwise in-channel)
        self.units: set[int] = set()  # nodes known to carry units though no parameter axis is in
        # their class (a depthwise conv's input channels and channel multiplier)
        self.mixing: set[int] = set()  # nodes whose units are combined (reductions, act x act)
        self.param_axes: set[int] = set()  # the nodes of the parameters' own axes
        self.derived: set[int] = set()  # axes of values computed from parameters alone
        self.unflattened: set[int] = set()  # axes a reshape split into parts (GroupNorm's groups)
        self.slid: set[int] = set()  # axes a conv window slides over (positions, never units)
        self.constraints: list[_Constraint] = []

    def fresh(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def fresh_axes(self, shape: Sequence[int]) -> list[int]:
        return [self.fresh(n) for n in shape]

    def find(self, node: int) -> int:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise ValueError(
                f"trace_layout: internal error at {where}: coupling axes of sizes "
                f"{self.size[ra]} and {self.size[rb]}; please report this model"
            )
        sa, sb = self.structure.pop(ra, None), self.structure.pop(rb, None)
        self.parent[rb] = ra
        if sa is None or sb is None:
            if sa or sb:
                self.structure[ra] = sa or sb
            return ra
        self.structure[ra] = sa
        same_shape = sa.kind == sb.kind and [self.size[p] for p in sa.parts] == [
            self.size[p] for p in sb.parts
        ]
        if same_shape:
            for pa, pb in zip(sa.parts, sb.parts):
                self.union(pa, pb, where)
        else:
            self.constrain([ra], f"{where}: one axis split two incompatible ways")
        return self.find(ra)

    def union_axes(self, a: Sequence[int], b: Sequence[int], where: str) -> None:
        for x, y in zip(a, b, strict=True):
            self.union(x, y, where)

    def constrain(self, nodes: Sequence[int], reason: str) -> None:
        """Records that these axes must carry no units (checked once all unions are known)."""
        self.constraints.append(_Constraint(list(nodes), reason))

    def structured(self, kind: str, parts: Sequence[int]) -> int:
        node = self.fresh(sum(self.size[p] for p in parts) if kind == "concat" else
                          math.prod(self.size[p] for p in parts))
        self._set_structure(node, kind, list(parts))
        return node

    def _set_structure(self, node: int, kind: str, parts: list) -> None:
        self.structure[self.find(node)] = _Structure(kind, parts)
        for i, p in enumerate(parts):
            self.part_of.setdefault(p, (node, kind, i))

    def merge_grid(self, parts: Sequence[int]) -> int:
        """The node of a flattened axis whose row-major parts are `parts`."""
        for p in parts[:1]:
            owner = self.part_of.get(p)
            if owner and owner[1] == "grid":
                st = self.structure.get(self.find(owner[0]))
                if st and [self.find(x) for x in st.parts] == [self.find(x) for x in parts]:
                    return owner[0]  # unflatten then flatten: the same axis again
        return self.structured("grid", parts)

    def split_grid(self, node: int, sizes: Sequence[int], where: str) -> list[int]:
        """The parts of `node` unflattened into `sizes` (row-major)."""
        st = self.structure.get(self.find(node))
        if st is None:
            parts = self.fresh_axes(sizes)
            self._set_structure(node, "grid", parts)
            self.unflattened.add(node)
            return parts
        if st.kind == "grid" and [self.size[p] for p in st.parts] == list(sizes):
            return list(st.parts)
        parts = self.fresh_axes(sizes)
        self.constrain([node, *parts], f"{where}: reshape splits an axis that is already "
                                       "split another way")
        return parts

    def segment(self, node: int, start: int, stop: int) -> int | None:
        """The node of `node[start:stop]`; None where the axis is a grid (cannot be cut)."""
        root = self.find(node)
        if start == 0 and stop == self.size[root]:
            return root
        st = self.structure.get(root)
        if st is None:
            bounds = (0, start, stop, self.size[root])
            pieces = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
            parts = [self.fresh(b - a) for a, b in pieces]
            self._set_structure(root, "concat", parts)
            return parts[pieces.index((start, stop))]
        if st.kind != "concat":
            return None
        offsets = [0]
        for p in st.parts:
            offsets.append(offsets[-1] + self.size[p])
        first = max(i for i, o in enumerate(offsets[:-1]) if o <= start)
        last = max(i for i, o in enumerate(offsets[:-1]) if o < stop)
        if first == last:
            return self.segment(st.parts[first], start - offsets[first], stop - offsets[first])
        head = self.segment(st.parts[first], start - offsets[first], self.size[st.parts[first]])
        tail = self.segment(st.parts[last], 0, stop - offsets[last])
        if head is None or tail is None:
            return None
        return self.structured("concat", [head, *st.parts[first + 1:last], tail])


# ----------------------------------------------------------------------------------------------
# Rules: one per primitive. Each takes (graph, eqn, input axes, where) and returns output axes.


def _out_shapes(eqn) -> list[tuple]:
    return [tuple(v.aval.shape) for v in eqn.outvars]


def _elementwise(g: _AxisGraph, eqn, ins, where):
    (shape,) = {s for s in _out_shapes(eqn)}
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
    return [g.fresh_axes(s) for s in _out_shapes(eqn)]


def _reduce(g, eqn, ins, where):
    axes = set(eqn.params["axes"])
    g.mixing.update(ins[0][i] for i in axes)  # a sum, max or mean over units mixes them
    return [[n for i, n in enumerate(ins[0]) if i not in axes]]


def _cumulative(g, eqn, ins, where):
    """cumsum and friends: element-wise in shape, but each entry mixes those before it."""
    g.mixing.add(ins[0][eqn.params["axis"]])
    return _elementwise(g, eqn, ins, where)


def _squeeze(g, eqn, ins, where):
    dims = {d % len(ins[0]) for d in eqn.params["dimensions"]}
    return [[n for i, n in enumerate(ins[0]) if i not in dims]]


def _transpose(g, eqn, ins, where):
    return [[ins[0][p] for p in eqn.params["permutation"]]]


def _broadcast_in_dim(g, eqn, ins, where):
    shape = eqn.params["shape"]
    op_shape = eqn.invars[0].aval.shape
    out = g.fresh_axes(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if op_shape[i] == shape[d]:
            g.union(ins[0][i], out[d], where)
    return [out]


def _reshape_groups(in_shape, out_shape):
    """Pairs runs of input and output axes with equal products.

    Size-1 axes carry at most one unit and no product tells where they go: they are paired
    only with size-1 axes between the same two runs, right-aligned (Flax reshapes a bias
    ``(C,)`` to ``(1, ..., 1, C)``; a value head ``(1,)`` to ``(1, 1)``).
    """
    ins = [i for i, n in enumerate(in_shape) if n != 1]
    outs = [j for j, n in enumerate(out_shape) if n != 1]
    groups, gi, go = [], [], []
    pi = po = 1
    i = j = 0
    while i < len(ins) or j < len(outs):
        if (pi <= po and i < len(ins)) or j == len(outs):
            gi.append(ins[i])
            pi *= in_shape[ins[i]]
            i += 1
        else:
            go.append(outs[j])
            po *= out_shape[outs[j]]
            j += 1
        if pi == po and gi and go:
            groups.append((gi, go))
            gi, go, pi, po = [], [], 1, 1
    groups += _unit_axis_pairs(in_shape, out_shape, groups)
    return groups


def _unit_axis_pairs(in_shape, out_shape, groups):
    def gaps(shape, side):
        by_gap: dict[int, list[int]] = {}
        for axis, n in enumerate(shape):
            if n == 1:
                gap = sum(1 for grp in groups if max(grp[side]) < axis)
                by_gap.setdefault(gap, []).append(axis)
        return by_gap
    in_gaps, out_gaps = gaps(in_shape, 0), gaps(out_shape, 1)
    pairs = []
    for gap, in_axes in in_gaps.items():
        out_axes = out_gaps.get(gap, [])
        k = min(len(in_axes), len(out_axes))
        pairs += [([a], [b]) for a, b in zip(in_axes[len(in_axes) - k:], out_axes[len(out_axes) - k:])]
    return pairs


def _reshape(g, eqn, ins, where):
    if eqn.params.get("dimensions") is not None:
        raise ValueError(f"trace_layout: {where}: reshape with `dimensions` is not supported")
    in_shape = tuple(eqn.invars[0].aval.shape)
    out_shape = tuple(eqn.params["new_sizes"])
    out = g.fresh_axes(out_shape)
    for gi, go in _reshape_groups(in_shape, out_shape):
        if len(gi) == 1 and len(go) == 1:
            g.union(ins[0][gi[0]], out[go[0]], where)
        elif len(go) == 1:  # flatten: the output axis is a grid of the input axes
            g.union(g.merge_grid([ins[0][i] for i in gi]), out[go[0]], where)
        elif len(gi) == 1:  # unflatten
            parts = g.split_grid(ins[0][gi[0]], [out_shape[j] for j in go], where)
            g.union_axes(parts, [out[j] for j in go], where)
        else:
            g.constrain(
                [ins[0][i] for i in gi] + [out[j] for j in go],
                f"{where}: reshape {in_shape} -> {out_shape} regroups axes "
                f"{tuple(in_shape[i] for i in gi)} into {tuple(out_shape[j] for j in go)}",
            )
    return [out]


def _dot_general(g, eqn, ins, where):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    if not _is_parameter(g, lhs) and not _is_parameter(g, rhs):  # activation x activation
        g.mixing.update(lhs[a] for a in lc)
    for a, b in zip(lc, rc):
        g.union(lhs[a], rhs[b], where)
    for a, b in zip(lb, rb):
        g.union(lhs[a], rhs[b], where)
    lhs_free = [n for i, n in enumerate(lhs) if i not in lc and i not in lb]
    rhs_free = [n for i, n in enumerate(rhs) if i not in rc and i not in rb]
    return [[lhs[a] for a in lb] + lhs_free + rhs_free]


def _is_parameter(g, axes) -> bool:
    """Whether a value is a parameter, or computed from parameters alone (OptimizedLSTMCell
    concatenates its gates' kernels before the product): not an activation."""
    return bool(axes) and all(n in g.param_axes or n in g.derived for n in axes)


def _conv(g, eqn, ins, where):
    if eqn.params["batch_group_count"] != 1:
        raise ValueError(f"trace_layout: {where}: conv with batch_group_count != 1 is not "
                         "supported")
    lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    out = g.fresh_axes(_out_shapes(eqn)[0])
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
    out = g.fresh_axes(_out_shapes(eqn)[0])
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


def _pad(g, eqn, ins, where):
    out = g.fresh_axes(_out_shapes(eqn)[0])
    for axis, config in enumerate(eqn.params["padding_config"]):
        if tuple(config) == (0, 0, 0):
            g.union(ins[0][axis], out[axis], where)
        else:
            g.constrain([ins[0][axis], out[axis]], f"{where}: pad changes axis {axis}")
    return [out]


def _rev(g, eqn, ins, where):
    out = g.fresh_axes(_out_shapes(eqn)[0])
    for axis, node in enumerate(ins[0]):
        if axis in eqn.params["dimensions"]:
            g.constrain([node, out[axis]], f"{where}: rev reverses axis {axis}")
        else:
            g.union(node, out[axis], where)
    return [out]


def _concatenate(g, eqn, ins, where):
    dim = eqn.params["dimension"]
    shape = _out_shapes(eqn)[0]
    out = g.fresh_axes(shape)
    for axes in ins:
        for axis, node in enumerate(axes):
            if axis != dim:
                g.union(node, out[axis], where)
    g.union(g.structured("concat", [axes[dim] for axes in ins]), out[dim], where)
    return [out]


def _cut(g, node, start, stop, where):
    part = g.segment(node, start, stop)
    if part is None:
        part = g.fresh(stop - start)
        g.constrain([node, part], f"{where}: slices a flattened axis")
    return part


def _split(g, eqn, ins, where):
    axis = eqn.params["axis"]
    outs, start = [], 0
    for size in eqn.params["sizes"]:
        axes = list(ins[0])
        axes[axis] = _cut(g, ins[0][axis], start, start + int(size), where)
        outs.append(axes)
        start += int(size)
    return outs


def _slice(g, eqn, ins, where):
    p = eqn.params
    strides = p["strides"] or (1,) * len(ins[0])
    in_shape = eqn.invars[0].aval.shape
    out = []
    for axis, node in enumerate(ins[0]):
        start, stop, stride = p["start_indices"][axis], p["limit_indices"][axis], strides[axis]
        if stride == 1:
            out.append(_cut(g, node, start, stop, where))
        else:
            part = g.fresh(len(range(start, stop, stride)))
            g.constrain([node, part], f"{where}: strided slice of axis {axis} "
                                      f"(size {in_shape[axis]})")
            out.append(part)
    return [out]


def _dynamic_slice(g, eqn, ins, where):
    in_shape = eqn.invars[0].aval.shape
    out = []
    for axis, (node, size) in enumerate(zip(ins[0], eqn.params["slice_sizes"])):
        if size == in_shape[axis]:
            out.append(node)
        else:
            part = g.fresh(size)
            g.constrain([node, part], f"{where}: dynamic slice of axis {axis}")
            out.append(part)
    return [out]


def _dynamic_update_slice(g, eqn, ins, where):
    operand, update = ins[0], ins[1]
    for axis, (a, b) in enumerate(zip(operand, update)):
        if eqn.invars[0].aval.shape[axis] == eqn.invars[1].aval.shape[axis]:
            g.union(a, b, where)
        else:
            g.constrain([a, b], f"{where}: dynamic update of part of axis {axis}")
    return [operand]


def _gather(g, eqn, ins, where):
    """`jnp.take`-style gathers: indexed axes stay with the operand, whole axes pass through."""
    dn = eqn.params["dimension_numbers"]
    if dn.operand_batching_dims:
        raise ValueError(f"trace_layout: {where}: gather with batching dims is not supported")
    operand, indices = ins
    op_shape = eqn.invars[0].aval.shape
    out = g.fresh_axes(_out_shapes(eqn)[0])
    kept = [a for a in range(len(operand)) if a not in dn.collapsed_slice_dims]
    for a, d in zip(kept, dn.offset_dims):
        if eqn.params["slice_sizes"][a] == op_shape[a]:
            g.union(operand[a], out[d], where)
        else:
            g.constrain([operand[a], out[d]], f"{where}: gather of a window of axis {a}")
    batch_out = [d for d in range(len(out)) if d not in dn.offset_dims]
    for node, d in zip(indices[:-1], batch_out):
        if g.size[g.find(node)] == g.size[g.find(out[d])]:
            g.union(node, out[d], where)
    return [out]


_ELEMENTWISE = frozenset(["abs", "acos", "acosh", "add", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "clamp", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh", "digamma", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "igamma", "imag", "integer_pow", "is_finite", "le", "lgamma", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "population_count", "pow", "real", "reduce_precision", "rem", "round", "rsqrt", "select_n", "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh", "sqrt", "square", "stop_gradient", "sub", "tan", "tanh", "xor"])

_RULES: dict[str, Callable] = {
    **{name: _elementwise for name in _ELEMENTWISE},
    **{name: _reduce for name in ["reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor", "argmax", "argmin"]},
    **{name: _cumulative for name in ["cumlogsumexp", "cummax", "cummin", "cumprod", "cumsum"]},
    **{name: _window_reduce for name in (
        "reduce_window_sum", "reduce_window_max", "reduce_window_min")},
    **{name: _fresh_outputs for name in ["iota", "random_bits", "random_seed", "random_wrap", "random_unwrap", "random_split", "random_fold_in", "threefry2x32", "rng_bit_generator", "rng_uniform"]},
    **{name: _passthrough for name in ["optimization_barrier", "sharding_constraint", "name", "mesh_cast", "reshard"]},
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "squeeze": _squeeze,
    "transpose": _transpose,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "concatenate": _concatenate,
    "split": _split,
    "slice": _slice,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "gather": _gather,
    "pad": _pad,
    "rev": _rev,
}

# Primitives that call a sub-jaxpr with the equation's operands, returning its outputs.
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr"}


# ----------------------------------------------------------------------------------------------
# The walk.


def _place(eqn) -> str:
    """`file:line (function)` of the user code that emitted `eqn`, or ""."""
    if _source_info is None:
        return ""
    try:
        return _source_info.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - only decorates an error message
        return ""


def _scope(eqn, context: tuple[str, str]) -> tuple[str, str]:
    """(module path, source place) of `eqn`; inside a jit both continue the caller's."""
    outer_scope, outer_place = context
    stack = str(eqn.source_info.name_stack)
    scope = "/".join(s for s in (outer_scope, stack) if s)
    return scope, _place(eqn) or outer_place


def _where(eqn, context: tuple[str, str]) -> str:
    scope, place = _scope(eqn, context)
    return f"`{eqn.primitive.name}` in {scope or '<top level>'}" + (f" at {place}" if place else "")


class _Walker:
    def __init__(self, graph: _AxisGraph, param_nodes: dict[int, int]):
        self.g = graph
        self.param_nodes = param_nodes  # first axis node of each parameter leaf -> leaf index
        self.use_order: list[int] = []  # parameter leaves in the order equations read them

    def walk(self, jaxpr, consts, ins, context=("", "")):
        env = {}
        for v, axes in zip(jaxpr.constvars, consts):
            env[v] = axes
        for v, axes in zip(jaxpr.invars, ins, strict=True):
            env[v] = axes
        for eqn in jaxpr.eqns:
            args = [self._read(env, x) for x in eqn.invars]
            outs = self._equation(eqn, args, context)
            for v, axes in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, jcore.DropVar):
                    env[v] = axes
        return [self._read(env, v) for v in jaxpr.outvars]

    def _read(self, env, x):
        if isinstance(x, jcore.Literal):
            return self.g.fresh_axes(getattr(x.aval, "shape", ()))
        return env[x]

    def _note_use(self, args):
        for axes in args:
            leaf = self.param_nodes.get(axes[0]) if axes else None
            if leaf is not None and leaf not in self.use_order:
                self.use_order.append(leaf)

    def _sub(self, closed, args, context):
        if isinstance(closed, jcore.ClosedJaxpr):
            consts = [self.g.fresh_axes(getattr(c, "shape", ())) for c in closed.consts]
            return self.walk(closed.jaxpr, consts, args, context)
        return self.walk(closed, [], args, context)

    def _equation(self, eqn, args, context):
        name = eqn.primitive.name
        where = _where(eqn, context)
        inner = _scope(eqn, context)
        if name in _CALLS:
            return self._sub(eqn.params[_CALLS[name]], args, inner)
        if name == "scan":
            return self._scan(eqn, args, inner, where)
        if name == "while":
            return self._while(eqn, args, inner, where)
        if name == "cond":
            outs = [self._sub(branch, args[1:], inner) for branch in eqn.params["branches"]]
            for other in outs[1:]:
                for a, b in zip(outs[0], other):
                    self.g.union_axes(a, b, where)
            return outs[0]
        rule = _RULES.get(name)
        if rule is None:
            raise ValueError(
                f"trace_layout: unsupported primitive {where}. The tracer knows which axes "
                "carry units only for the primitives it lists; write this model's layout by "
                "hand (or ask for the primitive to be supported)."
            )
        self._note_use(args)
        outs = rule(self.g, eqn, args, where)
        if self._from_parameters(eqn, args):
            self.g.derived.update(n for axes in outs for n in axes)
        return outs

    def _from_parameters(self, eqn, args) -> bool:
        """Whether every operand but literals is a parameter or computed from parameters alone."""
        operands = [axes for v, axes in zip(eqn.invars, args) if not isinstance(v, jcore.Literal)]
        return bool(operands) and all(_is_parameter(self.g, axes) for axes in operands)

    def _scan(self, eqn, args, context, where):
        p = eqn.params
        n_consts, n_carry = p["num_consts"], p["num_carry"]
        consts, carry, xs = args[:n_consts], args[n_consts:n_consts + n_carry], args[n_consts + n_carry:]
        outs = self._sub(p["jaxpr"], [*consts, *carry, *[x[1:] for x in xs]], context)
        for a, b in zip(carry, outs[:n_carry]):  # loop-carried values keep their units
            self.g.union_axes(a, b, where)
        ys = [[self.g.fresh(p["length"]), *y] for y in outs[n_carry:]]
        return [*carry, *ys]

    def _while(self, eqn, args, context, where):
        p = eqn.params
        cond_consts = args[:p["cond_nconsts"]]
        body_consts = args[p["cond_nconsts"]:p["cond_nconsts"] + p["body_nconsts"]]
        carry = args[p["cond_nconsts"] + p["body_nconsts"]:]
        outs = self._sub(p["body_jaxpr"], [*body_consts, *carry], context)
        for a, b in zip(carry, outs):
            self.g.union_axes(a, b, where)
        self._sub(p["cond_jaxpr"], [*cond_consts, *carry], context)
        return carry


# ----------------------------------------------------------------------------------------------
# From classes to layout entries.


@dataclasses.dataclass
class _Axis:
    node: int
    owner: str  # leaf path, input name or output name
    axis: int


def _unit_classes(g: _AxisGraph, param_axes: list[_Axis]) -> tuple[set[int], set[int]]:
    """Roots of the classes that carry units, propagated through concat and grid structure, and
    the roots of flattened axes none of whose parts is known to carry units (ambiguous).

    An axis of units that a reshape splits into parts (a GroupNorm's groups x channels, a
    distributional head's actions x atoms) is not ambiguous: each unit is a cell of the parts,
    so every part of more than one entry carries units; unless a conv slides over a part (a
    dense layer's output reshaped into an image), which makes it positions.
    """
    known: set[int] = set()
    slid = {g.find(n) for n in g.slid}
    while True:
        carrying, ambiguous = _propagate(g, param_axes, known)
        unflattened = {g.find(n) for n in g.unflattened}
        parts = [[g.find(p) for p in g.structure[root].parts] for root in ambiguous & unflattened]
        split = {p for group in parts if not slid & set(group) for p in group if g.size[p] > 1}
        if not split:
            return carrying, ambiguous
        known |= split


def _propagate(g: _AxisGraph, param_axes: list[_Axis], known: set[int]) -> tuple[set[int], set[int]]:
    carrying = {g.find(a.node) for a in param_axes if g.find(a.node) not in
                {g.find(w) for w in g.window | g.blank}} | {g.find(n) for n in g.units | known}
    ambiguous = set()
    changed = True
    while changed:
        changed = False
        for root, st in list(g.structure.items()):
            root = g.find(root)
            parts = [g.find(p) for p in st.parts]
            new = set()
            if any(p in carrying for p in parts):
                new.add(root)
            if root in carrying and st.kind == "concat":
                new.update(parts)
            wide = [p for p in parts if g.size[p] > 1]
            if root in carrying and st.kind == "grid" and len(wide) > 1 and \
                    not any(p in carrying for p in parts):
                ambiguous.add(root)  # which of the flattened axes are units? never guess
            elif root in carrying and st.kind == "grid" and len(wide) == 1:
                new.add(wide[0])
            if not new <= carrying:
                carrying |= new
                changed = True
    return carrying, ambiguous - {r for r in ambiguous if any(
        g.find(p) in carrying for p in g.structure[r].parts)}


def _last_unit_axes(axes: list[_Axis], g, carrying) -> dict[str, int]:
    last = {}
    for a in axes:
        if g.find(a.node) in carrying:
            last[a.owner] = a.axis
    return last


class _Namer:
    """Gives each unit-carrying class a predictable, unique name."""

    def __init__(self, g, carrying, inputs, outputs, producers, params, layer_of_leaf):
        self.g, self.carrying = g, carrying
        self.candidates: dict[int, list[str]] = {}
        for group in (inputs, outputs, producers):
            last = _last_unit_axes(group, g, carrying)
            for a in group:
                root = g.find(a.node)
                if root not in carrying:
                    continue
                owner = layer_of_leaf(a.owner) if group is producers else a.owner
                if group is producers:
                    if last.get(a.owner) != a.axis:
                        continue
                    name = owner
                else:
                    name = owner if last[a.owner] == a.axis else f"{owner}:{a.axis}"
                self.candidates.setdefault(root, []).append(name)
        self.fallback: dict[int, str] = {}
        for a in params:
            self.fallback.setdefault(g.find(a.node), f"{layer_of_leaf(a.owner)}:{a.axis}")
        self.names: dict[int, str] = {}
        self.taken: set[str] = set()

    def name(self, root: int) -> str:
        root = self.g.find(root)
        if root in self.names:
            return self.names[root]
        options = list(self.candidates.get(root, []))
        owner = self.g.part_of.get(root)
        if owner is None:
            for node, info in self.g.part_of.items():
                if self.g.find(node) == root:
                    owner = info
                    break
        if owner is not None:
            parent, kind, index = owner
            base = self.name(parent)
            if kind == "concat":
                st = self.g.structure.get(self.g.find(parent))
                start = sum(self.g.size[self.g.find(p)] for p in st.parts[:index]) if st else 0
                options.append(f"{base}[{start}:{start + self.g.size[root]}]")
            else:
                options.append(f"{base}.{index}")
        if root in self.fallback:
            options.append(self.fallback[root])
        options.append(f"space_{root}")
        name = next((o for o in options if o not in self.taken), None)
        if name is None:
            k = 1
            while f"{options[0]}#{k}" in self.taken:
                k += 1
            name = f"{options[0]}#{k}"
        self.names[root] = name
        self.taken.add(name)
        return name


def _entry(g, root, carrying, namer) -> AxisSpec:
    root = g.find(root)
    if root not in carrying:
        return WINDOW if root in {g.find(w) for w in g.window} else None
    st = g.structure.get(root)
    if st is None:
        return namer.name(root)
    if st.kind == "concat":
        parts = []
        for p in st.parts:
            e = _entry(g, p, carrying, namer)
            parts.extend(e.parts if isinstance(e, Concat) else [e])
        return Concat(tuple(parts))
    items: list = []
    for p in st.parts:
        e = _entry(g, p, carrying, namer) if g.find(p) in carrying else g.size[g.find(p)]
        for item in _grid_items(e):
            if isinstance(item, int) and items and isinstance(items[-1], int):
                items[-1] *= item
            elif item != 1:
                items.append(item)
    if len(items) == 1:
        return items[0]
    if len(items) == 2 and isinstance(items[0], int) and isinstance(items[1], str):
        return Flat(items[1], items[0])
    return Grid(tuple(items))


def _grid_items(entry) -> list:
    """A grid part as a list of grid items: nested grids and Flat entries are spliced in."""
    if isinstance(entry, Grid):
        return list(entry.parts)
    if isinstance(entry, Flat):
        return [entry.positions, entry.space]
    return [entry]


# ----------------------------------------------------------------------------------------------
# Public API.


DEFAULT_INPUT = "obs"  # a Linen module's one input when its __call__ names none (nn.Sequential)


def argument_names(fn: Callable, count: int, skip: int) -> list[str]:
    """Names of the sample inputs: the apply function's parameter names (a Linen module's
    ``__call__``'s for its ``apply``; ``obs`` for the one input of a module whose ``__call__``
    takes only ``*args``, as ``nn.Sequential``'s does), else ``arg{i}``."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__self__", None)
    if module is not None and callable(module) and target.__name__ == "apply":
        target, skip = type(module).__call__, 1  # Linen: names come from Module.__call__
        if count == 1 and _only_var_positional(target, skip):
            return [DEFAULT_INPUT]
    try:
        params = list(inspect.signature(target).parameters.values())[skip:]
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(count):
        p = params[i] if i < len(params) else None
        usable = p is not None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        names.append(p.name if usable else f"arg{i}")
        if p is not None and p.kind == p.VAR_POSITIONAL:
            params = []
    return names


def _only_var_positional(fn: Callable, skip: int) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0].kind == inspect.Parameter.VAR_POSITIONAL


def _leaves_named(base: str, tree: Any) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(f"{base}/{path_name(p)}" if p else base, leaf) for p, leaf in flat]


def _collection_layer(has_collections: bool) -> Callable[[str], str]:
    def layer(path: str) -> str:
        parts = path.split("/")
        if has_collections and len(parts) > 1:
            parts = parts[1:]
        return "/".join(parts[:-1]) or parts[-1]
    return layer


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
      ValueError: for a primitive the tracer does not know, for units moved in a way a layout
        cannot express (a reshape that regroups unit axes, pooling over channels, ...), and for
        variables the forward pass never reads; every problem at once, with where it happened.

    >>> import flax.linen as nn, jax.numpy as jnp
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
    leaves = _leaves_named("", variables)
    leaves = [(path.lstrip("/"), leaf) for path, leaf in leaves]
    closed, out_shape = trace_forward(apply, variables, inputs)

    g = _AxisGraph()
    params = [_Axis(n, path, i) for path, leaf in leaves
              for i, n in enumerate(g.fresh_axes(leaf.shape))]
    g.param_axes.update(a.node for a in params)
    by_leaf = {path: [a.node for a in params if a.owner == path] for path, _ in leaves}
    input_axes = []
    in_nodes = [by_leaf[path] for path, _ in leaves]
    for name, x in zip(names, inputs):
        for leaf_name, leaf in _leaves_named(name, x):
            nodes = g.fresh_axes(getattr(leaf, "shape", ()))
            input_axes += [_Axis(n, leaf_name, i) for i, n in enumerate(nodes)]
            in_nodes.append(nodes)
    first_node = {nodes[0]: i for i, nodes in enumerate(by_leaf.values()) if nodes}
    walker = _Walker(g, first_node)
    consts = [g.fresh_axes(getattr(c, "shape", ())) for c in closed.consts]
    outs = walker.walk(closed.jaxpr, consts, in_nodes)
    output_axes = [
        _Axis(n, name, i)
        for (name, _), nodes in zip(_leaves_named("out", out_shape), outs, strict=True)
        for i, n in enumerate(nodes)
    ]
    layout, sizes = _resolve(g, leaves, params, input_axes, output_axes, walker.use_order,
                             isinstance(variables, dict) and "params" in variables)
    paths = [path for path, _ in leaves]
    layout[ACTIVATIONS] = activations_after(closed, paths, layout)  # what identity layers keep
    first = [paths[i] for i in walker.use_order]
    order = tuple(dict.fromkeys(first + paths))
    return TracedModel(layout, order, tuple(names), types.MappingProxyType(sizes))


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


def _resolve(g, leaves, params, input_axes, output_axes, use_order, has_collections):
    carrying, ambiguous = _unit_classes(g, params)
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
    if problems:
        raise problems_error("trace_layout cannot build a layout for this model", problems)
    first_used = [paths[i] for i in use_order]
    ordered = first_used + [p for p in paths if p not in set(first_used)]
    order = {p: k for k, p in enumerate(ordered)}
    producers = sorted(params, key=lambda a: (order[a.owner], a.axis))
    namer = _Namer(g, carrying, input_axes, output_axes, producers, producers,
                   _collection_layer(has_collections))
    layout = {}
    for path, _ in leaves:
        layout[path] = tuple(_entry(g, a.node, carrying, namer)
                             for a in params if a.owner == path)
    mixing = sorted({space for n in g.mixing if g.find(n) in carrying
                     for space in spaces_in(_entry(g, n, carrying, namer))}, key=str)
    if mixing:
        layout[MIXING] = tuple(mixing)
    outputs = sorted({space for a in output_axes if g.find(a.node) in carrying
                      for space in spaces_in(_entry(g, a.node, carrying, namer))}, key=str)
    if outputs:
        layout[OUTPUTS] = tuple(outputs)
    named = {space for axes in layout.values() for entry in axes for space in spaces_in(entry)}
    sizes = {name: g.size[root] for root, name in namer.names.items() if name in named}
    return layout, sizes
