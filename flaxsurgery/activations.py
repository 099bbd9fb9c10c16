"""Which element-wise activation follows each layer, read from the traced forward pass.

An identity layer inserted between two layers keeps the function only when the activation that
follows it, ``g``, leaves unchanged every value that reaches it (``f``'s outputs): ``g(f(z)) ==
f(z)``. That holds for ReLU after ReLU (``relu(relu(z)) == relu(z)``), ReLU6 after ReLU6,
hard-tanh after hard-tanh, and for no activation at all; not for tanh, sigmoid, GELU, SiLU,
leaky ReLU or ELU (``tanh(tanh(z)) != tanh(z)``). A layout's [`ACTIVATIONS`][flaxsurgery.ACTIVATIONS] key says, per
space, which activation the forward pass applies to the units after the layer that writes them;
[`flaxsurgery.trace_layout`][flaxsurgery.trace_layout] fills it in, and a hand-written layout may say it itself::

    layout[fs.ACTIVATIONS] = {"Dense_0": "relu", "Dense_1": "tanh", "out": "linear"}

The tracer follows each kernel's output through the bias and the element-wise operations after
it, up to the next layer that reads it, and recognises the function they compute by its values on
a grid from -1e6 to 1e6 (exactly, for the activations that keep some values unchanged). What it
cannot follow (a norm's statistics, a residual add, a pooling, a value read by two different
paths) is ``"unknown"``, and no claim rests on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from flaxsurgery.jaxprs import CALLS
from flaxsurgery.layout import carries_units, leaf_entries, output_axis

INF = math.inf


@dataclasses.dataclass(frozen=True)
class Activation:
    """What matters of an element-wise activation for an identity layer before it.

    Attributes:
      name: as in `KNOWN` and reports.
      values: a closed interval holding every value it returns.
      fixed: the closed interval on which it returns its input unchanged (None: no interval).
    """

    name: str
    values: tuple[float, float]
    fixed: tuple[float, float] | None


KNOWN: dict[str, Activation] = {a.name: a for a in (
    Activation("linear", (-INF, INF), (-INF, INF)),
    Activation("relu", (0.0, INF), (0.0, INF)),
    Activation("relu6", (0.0, 6.0), (0.0, 6.0)),
    Activation("hard_tanh", (-1.0, 1.0), (-1.0, 1.0)),
    Activation("leaky_relu", (-INF, INF), (0.0, INF)),
    Activation("elu", (-1.0, INF), (0.0, INF)),
    Activation("tanh", (-1.0, 1.0), None),
    Activation("sigmoid", (0.0, 1.0), None),
    Activation("gelu", (-0.2, INF), None),  # its minimum is about -0.17
    Activation("silu", (-0.3, INF), None),  # its minimum is about -0.28
    Activation("softplus", (0.0, INF), None),
    Activation("unknown", (-INF, INF), None),
)}


def keeps_identity(before: str, after: str) -> bool:
    """Whether an identity layer between activation `before` and activation `after` keeps the
    function: every value `before` returns lies where `after` is the identity.

    >>> keeps_identity("relu", "relu"), keeps_identity("tanh", "tanh"), keeps_identity("tanh", "linear")
    (True, False, True)
    """
    values = KNOWN.get(before, KNOWN["unknown"]).values
    fixed = KNOWN.get(after, KNOWN["unknown"]).fixed
    return fixed is not None and fixed[0] <= values[0] and values[1] <= fixed[1]


def identity_layer_claim(in_space, out_space, activations: Mapping | None,
                         input_spaces) -> tuple[str, str]:
    """What an identity layer from `in_space` to `out_space` keeps, and why.

    Args:
      in_space, out_space: the spaces its kernel reads and writes.
      activations: the new layout's [`ACTIVATIONS`][flaxsurgery.ACTIVATIONS] entry (None where it has none).
      input_spaces: the network's input spaces (raw values: any real number reaches the layer).
    """
    how = (f"trace the new model with fs.trace_layout, or say it in the new layout: "
           f"layout[fs.ACTIVATIONS] = {{{out_space!r}: 'relu'}} (or 'linear', 'tanh', ...)")
    if activations is None:
        return "none", f"the layout does not say which activation follows it; {how}"
    after = activations.get(out_space, "unknown")
    before = activations.get(in_space, "linear" if in_space in input_spaces else "unknown")
    if after == "unknown" or after not in KNOWN:
        return "none", (f"the activation that follows it could not be determined (a norm, a "
                        f"residual add or an unrecognised function); {how}")
    if keeps_identity(before, after):
        if after == "linear":
            return "function", "no activation follows it"
        return "function", f"{after} follows it and keeps the {before} values that reach it"
    said = "values of any sign" if before in ("unknown", "linear") else f"the values {before} returns"
    return "none", (f"{after} follows it and changes {said} ({after}({after}(x)) != {after}(x)); "
                    f"an identity layer keeps the function only where no activation follows it, "
                    f"or ReLU follows ReLU (ReLU6 after ReLU6, hard-tanh after hard-tanh)")


# ----------------------------------------------------------------------------------------------
# Recognising an activation by its values.


def _probe(dtype) -> np.ndarray:
    big = np.logspace(-6, 6, 121)
    grid = np.concatenate([-big, big, np.linspace(-8.0, 8.0, 1601), [0.0]])
    grid = grid[np.abs(grid) <= float(jnp.finfo(dtype).max)]  # float16 ends at 65504
    return np.asarray(grid, dtype=dtype)


_REFERENCES: dict[str, Callable] = {
    "linear": lambda z: z, "relu": jax.nn.relu, "relu6": jax.nn.relu6,
    "hard_tanh": jax.nn.hard_tanh, "leaky_relu": jax.nn.leaky_relu, "elu": jax.nn.elu,
    "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "gelu": jax.nn.gelu,
    "gelu_exact": lambda z: jax.nn.gelu(z, approximate=False), "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}


def classify(fn: Callable, dtype=np.float32) -> str:
    """The name of the activation `fn` computes, by its values on a probe grid; ``"unknown"``
    if none matches. An activation that keeps some values unchanged (so that an identity layer
    before it may keep the function) must match exactly; the others closely.

    >>> classify(lambda z: jnp.maximum(z, 0.0)), classify(jnp.tanh), classify(jnp.sin)
    ('relu', 'tanh', 'unknown')
    """
    z = _probe(dtype)
    try:
        got = np.asarray(fn(jnp.asarray(z)), np.float64)
    except Exception:  # noqa: BLE001 - an operation we cannot replay is an unknown activation
        return "unknown"
    if got.shape != z.shape:
        return "unknown"
    for name, ref in _REFERENCES.items():
        want = np.asarray(ref(jnp.asarray(z)), np.float64)
        base = "gelu" if name == "gelu_exact" else name
        exact = KNOWN[base].fixed is not None
        same = np.array_equal(got, want, equal_nan=True) if exact else \
            np.allclose(got, want, rtol=1e-3, atol=1e-3, equal_nan=True)
        if same:
            return base
    return "unknown"


# ----------------------------------------------------------------------------------------------
# Following each kernel's output through the jaxpr.

# Operations that change where values sit, not what they are: an activation commutes with them.
_SHAPE_OPS = frozenset(["reshape", "squeeze", "expand_dims", "broadcast_in_dim", "transpose", "copy",
                        "copy_p"])
_ELEMENTWISE = frozenset([
    "abs", "add", "atan", "cbrt", "ceil", "clamp", "convert_element_type", "cos", "cosh", "div",
    "eq", "erf", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "integer_pow", "le", "log",
    "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "not", "pow", "round", "rsqrt",
    "select_n", "sign", "sin", "sinh", "sqrt", "square", "stop_gradient", "sub", "tan", "tanh",
    "reduce_precision", "and", "or"])
_READERS = frozenset(["dot_general", "conv_general_dilated"])  # the next layer reads the values


@dataclasses.dataclass(frozen=True)
class _Param:
    path: str | None  # None: computed from parameters, not a leaf as it is


@dataclasses.dataclass(frozen=True)
class _Const:
    value: object


@dataclasses.dataclass(frozen=True, eq=False)
class _Fn:
    """A value computed element-wise from kernel `kernel`'s output: ``fn(pre-activation)``."""

    kernel: str
    fn: Callable
    biased: bool
    dtype: object


_OTHER = None


class _Follower:
    def __init__(self, kernels: set):
        self.kernels = kernels
        self.read: dict[str, set] = {}  # kernel -> the _Fn values the next layers read
        self.unknown: set = set()

    def walk(self, jaxpr, consts, ins, top=False):
        env = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, ins))
        for eqn in jaxpr.eqns:
            args = [_Const(x.val) if isinstance(x, jcore.Literal) else env.get(x) for x in eqn.invars]
            outs = self._equation(eqn, args)
            for v, tag in zip(eqn.outvars, outs):
                env[v] = tag
        outs = [_Const(v.val) if isinstance(v, jcore.Literal) else env.get(v) for v in jaxpr.outvars]
        if top:
            self._reads(outs)
        return outs

    def _reads(self, tags):
        for tag in tags:
            if isinstance(tag, _Fn):
                self.read.setdefault(tag.kernel, set()).add(tag)

    def _lose(self, tags):
        self.unknown.update(t.kernel for t in tags if isinstance(t, _Fn))

    def _equation(self, eqn, args):
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        if name in CALLS and eqn.params.get(CALLS[name]) is not None:
            closed = eqn.params[CALLS[name]]
            inner, consts = (closed.jaxpr, [_Const(c) for c in closed.consts]) \
                if isinstance(closed, jcore.ClosedJaxpr) else (closed, [])
            return self.walk(inner, consts, args)
        if name in _READERS:
            return [self._reader(eqn, args)]
        if name in _SHAPE_OPS and len(args) == 1:
            return [self._shape_op(eqn, args[0])]
        if name in _ELEMENTWISE:
            return [self._elementwise(eqn, args)]
        if all(isinstance(a, _Const) for a in args):
            return self._evaluate(eqn, args)
        self._lose(args)  # a reduction, a concatenation, a loop: not followed
        return [_OTHER] * n_out

    def _evaluate(self, eqn, args):
        try:
            out = eqn.primitive.bind(*[a.value for a in args], **eqn.params)
        except Exception:  # noqa: BLE001 - a constant we cannot compute is just not constant
            return [_OTHER] * len(eqn.outvars)
        return [_Const(o) for o in (out if eqn.primitive.multiple_results else [out])]

    def _reader(self, eqn, args):
        kernels = [a.path for a in args if isinstance(a, _Param) and a.path in self.kernels]
        fns = [a for a in args if isinstance(a, _Fn)]
        if len(kernels) == 1 and len(fns) <= 1:
            self._reads(fns)
            return _Fn(kernels[0], _identity, False, eqn.outvars[0].aval.dtype)
        self._lose(fns)
        return _OTHER

    def _shape_op(self, eqn, arg):
        if isinstance(arg, (_Param, _Fn)):
            return arg
        if isinstance(arg, _Const):
            return self._evaluate(eqn, [arg])[0]
        return _OTHER

    def _elementwise(self, eqn, args):
        if eqn.primitive.name == "convert_element_type" and isinstance(args[0], _Param):
            return args[0]  # a kernel cast to the computation's dtype is still that kernel
        fns = [a for a in args if isinstance(a, _Fn)]
        if all(isinstance(a, _Const) for a in args):
            return self._evaluate(eqn, args)[0]
        if not fns:
            return _Param(None) if all(isinstance(a, (_Param, _Const)) for a in args) else _OTHER
        kernel = fns[0].kernel
        params = [a for a in args if isinstance(a, _Param)]
        if any(f.kernel != kernel for f in fns) or any(a is _OTHER for a in args):
            self._lose(args)
            return _OTHER
        if params:  # the bias: added once, to the kernel's output itself
            first = fns[0]
            if eqn.primitive.name == "add" and len(fns) == 1 and len(params) == 1 \
                    and first.fn is _identity and not first.biased:
                return _Fn(kernel, _identity, True, first.dtype)
            self._lose(fns)
            return _OTHER
        scalars = [_scalar(a.value) if isinstance(a, _Const) else a for a in args]
        if any(s is _OTHER for s in scalars):
            self._lose(fns)
            return _OTHER
        return _Fn(kernel, _composed(eqn, scalars), True, fns[0].dtype)


def _identity(z):
    return z


def _scalar(value):
    """A constant as one scalar, or _OTHER when its entries differ (it is not element-wise)."""
    array = np.asarray(value)
    if array.size and np.all(array == array.reshape(-1)[0]):
        return _Const(array.reshape(-1)[0])
    return _OTHER


def _composed(eqn, args) -> Callable:
    """``z -> eqn(args)``, each _Fn argument computed from `z`."""
    prim, params = eqn.primitive, dict(eqn.params)
    params.pop("sharding", None)

    def fn(z):  # constants broadcast to the probe's shape: select_n takes no scalars
        values = [a.fn(z) if isinstance(a, _Fn) else
                  jnp.broadcast_to(jnp.asarray(a.value, np.asarray(a.value).dtype), z.shape)
                  for a in args]
        return prim.bind(*values, **params)

    return fn


def activations_after(closed, leaf_paths, layout: Mapping) -> dict:
    """``{space: activation name}`` for every space a kernel of `layout` writes.

    Args:
      closed: the closed jaxpr of ``apply(variables, *inputs)``.
      leaf_paths: the variables' leaf paths, in the order the jaxpr takes them.
      layout: the traced layout (leaf path -> axis entries).
    """
    entries = leaf_entries(layout)
    kernels = {p for p, axes in entries.items() if sum(carries_units(a) for a in axes) >= 2}
    follower = _Follower(kernels)
    n = len(leaf_paths)
    ins = [_Param(p) for p in leaf_paths] + [_OTHER] * (len(closed.jaxpr.invars) - n)
    try:
        follower.walk(closed.jaxpr, [_Const(c) for c in closed.consts], ins, top=True)
    except Exception:  # noqa: BLE001 - a form this walk does not know: nothing is claimed from it
        follower.unknown.update(kernels)
    found: dict = {}
    for kernel in sorted(kernels):
        axes = entries[kernel]
        space = axes[output_axis(axes)]
        if not isinstance(space, str):
            continue
        read = follower.read.get(kernel, set())
        fns = {id(t.fn) for t in read}
        if kernel in follower.unknown or len(fns) != 1:
            name = "unknown"
        else:
            tag = next(iter(read))
            name = classify(tag.fn, tag.dtype)
        found[space] = name if found.get(space, name) == name else "unknown"
    return found
