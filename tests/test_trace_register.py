"""Primitives the tracer does not know: the error that names one, where it is and how to register
it, and traces through handlers registered with fs.register_primitive / fs.register_elementwise.
Every claim a report makes here is checked with fs.verify; every registration ends with its
test."""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.extend.core import Primitive
from jax.interpreters import mlir

import flaxsurgery as fs
from flaxsurgery.layout import ACTIVATIONS

X = jax.random.normal(jax.random.key(3), (6, 3))
SETS = jax.random.normal(jax.random.key(4), (6, 5, 3))  # (batch, entities, features)


def _softsign(x):
    return x / (1 + jnp.abs(x))


# A primitive of the user's own, as a custom kernel would be: JAX runs and jits it, the tracer
# has never heard of it.
softsign_p = Primitive("softsign_test")
softsign_p.def_impl(_softsign)
softsign_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(softsign_p, mlir.lower_fun(_softsign, multiple_results=False))


class SoftsignNet(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, obs):
        return nn.Dense(3, name="head")(softsign_p.bind(nn.Dense(self.width, name="torso")(obs)))


class SortedSet(nn.Module):
    """Per-entity features, each hidden unit's values sorted over the entities (`sort`, which
    the tracer has no handler for), flattened into the head."""

    width: int = 8
    sort_axis: int = 1

    @nn.compact
    def __call__(self, sets):
        h = nn.relu(nn.Dense(self.width, name="torso")(sets))
        h = jnp.sort(h, axis=self.sort_axis)
        return nn.Dense(3, name="head")(h.reshape((h.shape[0], -1)))


def sort_handler(g, eqn, ins, where):
    """`lax.sort`: every axis passes through but the sorted one, whose entries it reorders."""
    dim = eqn.params["dimension"]
    outs = []
    for axes, var in zip(ins, eqn.outvars):
        out = list(axes)
        out[dim] = g.fresh(var.aval.shape[dim])
        g.constrain([axes[dim], out[dim]], f"{where}: sort reorders axis {dim}")
        outs.append(out)
    return outs


@contextlib.contextmanager
def registered(name, handler=None, **kw):
    """`name` registered (element-wise without a handler) for the block, forgotten after it."""
    if handler is None:
        fs.register_elementwise(name, **kw)
    else:
        fs.register_primitive(name, handler, **kw)
    try:
        yield
    finally:
        fs.unregister_primitive(name)


def variables(model, x, seed=0):
    return model.init(jax.random.key(seed), x)


def overall(result) -> str:
    return result.plan.report().splitlines()[-1]


def test_an_unknown_primitive_names_itself_its_place_and_how_to_register_it():
    model = SoftsignNet()
    with pytest.raises(ValueError) as info:
        fs.trace_layout(model.apply, variables(model, X), X)
    message = str(info.value)
    assert "unsupported primitive `softsign_test` in SoftsignNet at " in message
    assert "test_trace_register.py:" in message  # the user's own line
    assert "fs.register_primitive('softsign_test', handler)" in message
    assert "fs.register_elementwise('softsign_test')" in message


def test_a_registered_elementwise_primitive_traces_and_transplants_exactly():
    old, new = SoftsignNet(8), SoftsignNet(12)
    old_vars, new_vars = variables(old, X), variables(new, jnp.ones((6, 4)), seed=1)
    with registered("softsign_test"):
        layout = fs.trace_layout(old.apply, old_vars, X)
        result = fs.surgery(old, old_vars, new, new_vars, X, new_samples=jnp.ones((6, 4)),
                            spaces={"obs": (["a", "b", "c"], ["c", "a", "d", "b"]),
                                    "torso": (8, 12)})
    assert layout["params/torso/kernel"] == ("obs", "torso")
    assert layout["params/head/kernel"] == ("torso", "out")
    assert layout[ACTIVATIONS]["torso"] == "unknown"  # not followed through a new primitive
    assert overall(result) == "overall: preserves function"
    report = fs.verify(lambda o: old.apply(old_vars, o), lambda o: new.apply(result.state, o),
                       X, result.plan)
    assert report.max_abs_diff < 1e-5
    with pytest.raises(ValueError, match="unsupported primitive `softsign_test`"):
        fs.trace_layout(old.apply, old_vars, X)  # the registration ended with the block


def test_a_registered_handler_traces_a_sort_over_entities_and_transplants_exactly():
    old, new = SortedSet(8), SortedSet(12)
    old_vars, new_vars = variables(old, SETS), variables(new, SETS, seed=1)
    with pytest.raises(ValueError, match="unsupported primitive `sort` in SortedSet"):
        fs.trace_layout(old.apply, old_vars, SETS)
    with registered("sort", sort_handler):
        layout = fs.trace_layout(old.apply, old_vars, SETS)
        result = fs.surgery(old, old_vars, new, new_vars, SETS, spaces={"torso": (8, 12)})
    assert layout["params/head/kernel"] == (fs.Flat("torso", 5), "out")
    assert overall(result) == "overall: preserves function"
    report = fs.verify(lambda s: old.apply(old_vars, s), lambda s: new.apply(result.state, s),
                       SETS, result.plan)
    assert report.max_abs_diff < 1e-5


def test_a_handler_s_constraint_refuses_a_sort_over_units():
    model = SortedSet(sort_axis=2)
    with registered("sort", sort_handler), pytest.raises(
            ValueError, match=r"`sort` in SortedSet at .*: sort reorders axis 2, but that axis "
                              r"carries units"):
        fs.trace_layout(model.apply, variables(model, SETS), SETS)


@pytest.mark.parametrize("handler, problem", [
    (lambda g, eqn, ins, where: [ins[0][:-1]], r"returned \[\d+\] for output 0 of rank 2"),
    (lambda g, eqn, ins, where: [g.fresh_axes((7, 8))],
     "returned a node of size 7 for axis 0 of output 0, of size 6"),
    (lambda g, eqn, ins, where: ins[0], "returned 2 outputs for 1"),
])
def test_a_handler_that_returns_the_wrong_axes_is_named(handler, problem):
    model = SoftsignNet()
    with registered("softsign_test", handler), pytest.raises(
            ValueError, match=r"the handler registered for `softsign_test` at `softsign_test` in "
                              r"SoftsignNet at .*" + problem):
        fs.trace_layout(model.apply, variables(model, X), X)


def test_registration_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="`tanh` has a built-in handler; pass replace=True"):
        fs.register_primitive("tanh", sort_handler)
    with pytest.raises(ValueError, match="follows `scan` into its sub-jaxprs"):
        fs.register_primitive("scan", sort_handler)
    with pytest.raises(TypeError, match="must be callable"):
        fs.register_primitive("softsign_test", "elementwise")
    with pytest.raises(ValueError, match="no handler is registered for `softsign_test`"):
        fs.unregister_primitive("softsign_test")


def refuse_all(g, eqn, ins, where):
    out = fs.trace.elementwise(g, eqn, ins, where)
    g.constrain(out[0], f"{where}: refused by the test's handler")
    return out


def test_a_replaced_builtin_is_restored_when_unregistered():
    model = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(2)])
    model_vars = variables(model, X)
    before = fs.trace_layout(model.apply, model_vars, X)
    with registered("tanh", refuse_all, replace=True), pytest.raises(
            ValueError, match="refused by the test's handler, but that axis carries units"):
        fs.trace_layout(model.apply, model_vars, X)
    assert fs.trace_layout(model.apply, model_vars, X) == before
