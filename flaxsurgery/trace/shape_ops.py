"""Handlers for the primitives that move axes without combining units: reshapes, transposes,
broadcasts, concatenation, slices and gathers, pads and reversals.

Each is a primitive handler (see `register_primitive`): ``handler(g, eqn, ins, where)`` returns
the nodes of each output's axes, after unioning them with the input axes they carry units from.
"""

from __future__ import annotations

from flaxsurgery.trace.graph import AxisGraph


def out_shapes(eqn) -> list[tuple]:
    """The shape of each output of `eqn`."""
    return [tuple(v.aval.shape) for v in eqn.outvars]


def squeeze(g: AxisGraph, eqn, ins, where):
    dims = {d % len(ins[0]) for d in eqn.params["dimensions"]}
    return [[n for i, n in enumerate(ins[0]) if i not in dims]]


def transpose(g: AxisGraph, eqn, ins, where):
    return [[ins[0][p] for p in eqn.params["permutation"]]]


def broadcast_in_dim(g: AxisGraph, eqn, ins, where):
    shape = eqn.params["shape"]
    op_shape = eqn.invars[0].aval.shape
    out = g.fresh_axes(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if op_shape[i] == shape[d]:
            g.union(ins[0][i], out[d], where)
    return [out]


def reshape_groups(in_shape, out_shape):
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


def reshape(g: AxisGraph, eqn, ins, where):
    if eqn.params.get("dimensions") is not None:
        raise ValueError(f"trace_layout: {where}: reshape with `dimensions` is not supported")
    in_shape = tuple(eqn.invars[0].aval.shape)
    out_shape = tuple(eqn.params["new_sizes"])
    out = g.fresh_axes(out_shape)
    for gi, go in reshape_groups(in_shape, out_shape):
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


def pad(g: AxisGraph, eqn, ins, where):
    out = g.fresh_axes(out_shapes(eqn)[0])
    for axis, config in enumerate(eqn.params["padding_config"]):
        if tuple(config) == (0, 0, 0):
            g.union(ins[0][axis], out[axis], where)
        else:
            g.constrain([ins[0][axis], out[axis]], f"{where}: pad changes axis {axis}")
    return [out]


def rev(g: AxisGraph, eqn, ins, where):
    out = g.fresh_axes(out_shapes(eqn)[0])
    for axis, node in enumerate(ins[0]):
        if axis in eqn.params["dimensions"]:
            g.constrain([node, out[axis]], f"{where}: rev reverses axis {axis}")
        else:
            g.union(node, out[axis], where)
    return [out]


def concatenate(g: AxisGraph, eqn, ins, where):
    dim = eqn.params["dimension"]
    shape = out_shapes(eqn)[0]
    out = g.fresh_axes(shape)
    for axes in ins:
        for axis, node in enumerate(axes):
            if axis != dim:
                g.union(node, out[axis], where)
    g.union(g.structured("concat", [axes[dim] for axes in ins]), out[dim], where)
    return [out]


def _cut(g: AxisGraph, node, start, stop, where):
    part = g.segment(node, start, stop)
    if part is None:
        part = g.fresh(stop - start)
        g.constrain([node, part], f"{where}: slices a flattened axis")
    return part


def split(g: AxisGraph, eqn, ins, where):
    axis = eqn.params["axis"]
    outs, start = [], 0
    for size in eqn.params["sizes"]:
        axes = list(ins[0])
        axes[axis] = _cut(g, ins[0][axis], start, start + int(size), where)
        outs.append(axes)
        start += int(size)
    return outs


def slice_(g: AxisGraph, eqn, ins, where):
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


def dynamic_slice(g: AxisGraph, eqn, ins, where):
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


def dynamic_update_slice(g: AxisGraph, eqn, ins, where):
    operand, update = ins[0], ins[1]
    for axis, (a, b) in enumerate(zip(operand, update)):
        if eqn.invars[0].aval.shape[axis] == eqn.invars[1].aval.shape[axis]:
            g.union(a, b, where)
        else:
            g.constrain([a, b], f"{where}: dynamic update of part of axis {axis}")
    return [operand]


def gather(g: AxisGraph, eqn, ins, where):
    """`jnp.take`-style gathers: indexed axes stay with the operand, whole axes pass through."""
    dn = eqn.params["dimension_numbers"]
    if dn.operand_batching_dims:
        raise ValueError(f"trace_layout: {where}: gather with batching dims is not supported")
    operand, indices = ins
    op_shape = eqn.invars[0].aval.shape
    out = g.fresh_axes(out_shapes(eqn)[0])
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


SHAPE_HANDLERS = {
    "broadcast_in_dim": broadcast_in_dim,
    "reshape": reshape,
    "squeeze": squeeze,
    "transpose": transpose,
    "concatenate": concatenate,
    "split": split,
    "slice": slice_,
    "dynamic_slice": dynamic_slice,
    "dynamic_update_slice": dynamic_update_slice,
    "gather": gather,
    "pad": pad,
    "rev": rev,
}
