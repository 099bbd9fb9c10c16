"""The walk: each equation of the forward pass's jaxpr, in order, through its handler.

The walker holds the axis nodes of every value, calls each primitive's handler (see
`primitives`), follows calls, loops and branches into their sub-jaxprs, and records the order in
which equations first read the parameter leaves (the layers' forward order, used in naming).
"""

from __future__ import annotations

from jax.extend import core as jcore

from flaxsurgery.jaxprs import CALLS
from flaxsurgery.trace.graph import AxisGraph
from flaxsurgery.trace.primitives import handler_for, is_parameter

try:  # Only for error messages; private, so its absence must not break tracing.
    from jax._src import source_info_util as _source_info
except ImportError:  # pragma: no cover
    _source_info = None


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


class Walker:
    """Walks a jaxpr over an axis graph, from the axis nodes of its inputs to its outputs'."""

    def __init__(self, graph: AxisGraph, param_nodes: dict[int, int]):
        self.g = graph
        self.param_nodes = param_nodes  # first axis node of each parameter leaf -> leaf index
        self.use_order: list[int] = []  # parameter leaves in the order equations read them

    def walk(self, jaxpr, consts, ins, context=("", "")):
        """The axis nodes of `jaxpr`'s outputs, given its constants' and inputs'."""
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
        if name in CALLS:
            return self._sub(eqn.params[CALLS[name]], args, inner)
        if name == "scan":
            return self._scan(eqn, args, inner, where)
        if name == "while":
            return self._while(eqn, args, inner, where)
        if name == "cond":
            return self._cond(eqn, args, inner, where)
        handler = handler_for(name, where)
        self._note_use(args)
        outs = handler(self.g, eqn, args, where)
        if self._from_parameters(eqn, args):
            self.g.derived.update(n for axes in outs for n in axes)
        return outs

    def _from_parameters(self, eqn, args) -> bool:
        """Whether every operand but literals is a parameter or computed from parameters alone."""
        operands = [axes for v, axes in zip(eqn.invars, args) if not isinstance(v, jcore.Literal)]
        return bool(operands) and all(is_parameter(self.g, axes) for axes in operands)

    def _cond(self, eqn, args, context, where):
        outs = [self._sub(branch, args[1:], context) for branch in eqn.params["branches"]]
        for other in outs[1:]:  # every branch's outputs carry the same units
            for a, b in zip(outs[0], other):
                self.g.union_axes(a, b, where)
        return outs[0]

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
