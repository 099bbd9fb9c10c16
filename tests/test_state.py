"""Everything shaped like the parameters (optax state, target networks), and Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flaxsurgery as fs
from flaxsurgery.paths import flatten, path_name
from tests.test_transplant import MLP, init, mlp_layout

OBS = (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])


def regression_data(n=256):
    x = jax.random.normal(jax.random.PRNGKey(7), (n, 4))
    y = jnp.stack([jnp.sin(x[:, 1]) + x[:, 2], x[:, 0] * x[:, 3]], axis=-1)
    return x, y


def train(model, params, opt_state, opt, x, y, steps):
    def loss_fn(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    @jax.jit
    def step(carry, _):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), None, length=steps)
    return params, opt_state, losses


def test_adam_state_and_target_network_transplant_and_training_continues():
    x, y = regression_data()
    old_m, new_m = MLP((16, 2)), MLP((32, 2))
    opt = optax.adam(1e-2)
    old = init(old_m, 0, (2,))
    old, old_state, old_losses = train(old_m, old, opt.init(old), opt, x[:, 1:3], y, 200)
    target = jax.tree_util.tree_map(lambda v: v * 0.9, old)  # a lagging copy

    fresh = init(new_m, 1, (4,))
    plan = fs.plan(old, fresh, mlp_layout(2), spaces={"obs": OBS})
    new = fs.transplant(old, plan, fresh)
    new_target = fs.transplant(target, plan, fresh)
    new_state = fs.transplant_state(old_state, plan, opt.init(fresh))

    mu = new_state[0].mu["params"]
    np.testing.assert_array_equal(mu["Dense_0"]["kernel"][:, 16:], 0.0)  # new hidden units
    np.testing.assert_array_equal(mu["Dense_0"]["kernel"][np.array([0, 3])], 0.0)  # new inputs
    np.testing.assert_array_equal(mu["Dense_0"]["kernel"][1:3, :16], old_state[0].mu["params"]["Dense_0"]["kernel"])
    assert int(new_state[0].count) == 200
    reset = fs.transplant_state(old_state, plan, opt.init(fresh), reset=["bias_correction"])
    assert int(reset[0].count) == 0
    np.testing.assert_allclose(new_m.apply(new_target, fs.map_units(x[:, 1:3], plan, "obs")),
                               old_m.apply(target, x[:, 1:3]), atol=1e-5)

    _, _, new_losses = train(new_m, new, new_state, opt, x, y, 200)
    assert abs(float(new_losses[0]) - float(old_losses[-1])) < 1e-3 * max(1.0, float(old_losses[-1])) + 1e-2
    # With all four features, the new network fits what the old one could not see.
    assert float(new_losses[-1]) < 0.5 * float(old_losses[-1])


class NnxMLP(nnx.Module):
    def __init__(self, n_in, hidden, n_out, rngs):
        self.Dense_0 = nnx.Linear(n_in, hidden, rngs=rngs)
        self.Dense_1 = nnx.Linear(hidden, n_out, rngs=rngs)

    def __call__(self, x):
        return self.Dense_1(nnx.relu(self.Dense_0(x)))


def as_nnx(linen_params, n_in, hidden, n_out):
    graphdef, state = nnx.split(NnxMLP(n_in, hidden, n_out, nnx.Rngs(0)))
    values = {p: v for p, v in flatten(linen_params["params"])[0].items()}
    state = jax.tree_util.tree_map_with_path(lambda path, _: values[path_name(path)], state)
    return graphdef, state


def test_linen_and_nnx_give_the_same_transplant():
    old_m, new_m = MLP((8, 2)), MLP((12, 2))
    old, fresh = init(old_m, 0, (2,)), init(new_m, 1, (4,))
    linen_plan = fs.plan(old, fresh, mlp_layout(2), spaces={"obs": OBS})
    linen_new = fs.transplant(old, linen_plan, fresh)

    _, old_state = as_nnx(old, 2, 8, 2)
    new_graph, fresh_state = as_nnx(fresh, 4, 12, 2)
    nnx_layout = fs.chain_layout(["obs", "Dense_0", "out"], ["Dense_0", "Dense_1"], prefix="")
    nnx_plan = fs.plan(old_state, fresh_state, nnx_layout, spaces={"obs": OBS})
    nnx_new = jax.jit(fs.transplant)(old_state, nnx_plan, fresh_state)
    assert isinstance(nnx_new, nnx.State)

    linen_leaves = flatten(linen_new["params"])[0]
    for path, value in flatten(nnx_new)[0].items():
        np.testing.assert_array_equal(value, linen_leaves[path], err_msg=path)
    model = nnx.merge(new_graph, nnx_new)
    x = jax.random.normal(jax.random.PRNGKey(2), (32, 4))
    np.testing.assert_allclose(model(x), new_m.apply(linen_new, x), atol=1e-6)


def test_new_units_start_with_zero_moments_whatever_their_rule():
    # Rules that add to a new unit's bias (mean with a margin, copy with an offset) must not
    # leak into Adam's moments (a negative second moment makes the next update NaN), and a copied
    # unit must not inherit its source's moments.
    old_m, new_m = MLP((8, 2)), MLP((8, 3))
    old, fresh = init(old_m, 0, (4,)), init(new_m, 1, (4,))
    opt = optax.adam(1e-3)
    _, old_state = opt.update(ones_like(old), opt.init(old), old)
    spaces = {"out": (["a", "b"], ["a", "b", "c"])}
    for rule in (fs.mean(offset=-1.0), fs.copy_of("a", offset=-1.0)):
        plan = fs.plan(old, fresh, mlp_layout(2), spaces=spaces, rules={"out": rule})
        state = fs.transplant_state(old_state, plan, opt.init(fresh))
        for moment in (state[0].mu, state[0].nu):
            bias = moment["params"]["Dense_1"]["bias"]
            np.testing.assert_array_equal(bias[2], 0.0)
            np.testing.assert_array_equal(moment["params"]["Dense_1"]["kernel"][:, 2], 0.0)
        new = fs.transplant(old, plan, fresh)
        updates, _ = opt.update(ones_like(new), state, new)
        assert all(bool(jnp.isfinite(u).all()) for u in jax.tree_util.tree_leaves(updates))


def ones_like(tree):
    return jax.tree_util.tree_map(jnp.ones_like, tree)


# ----------------------------------------------------------------------------- jit


def adam_case(rule=None):
    """An Adam state after one update, a plan that widens the network and adds two inputs (and
    an output when `rule` is given for it), and the fresh state."""
    old_m, new_m = MLP((8, 2)), MLP((12, 3 if rule else 2))
    old, fresh = init(old_m, 0, (2,)), init(new_m, 1, (4,))
    opt = optax.adam(1e-3)
    _, old_state = opt.update(ones_like(old), opt.init(old), old)
    spaces = {"obs": OBS, **({"out": (["a", "b"], ["a", "b", "c"])} if rule else {})}
    plan = fs.plan(old, fresh, mlp_layout(2), spaces=spaces, rules={"out": rule} if rule else None)
    return {"params": old, "opt": old_state}, plan, {"params": fresh, "opt": opt.init(fresh)}


def test_transplant_state_under_jit_matches_eager_and_compiles_once():
    # The host plans from shapes alone, so the state may be traced; the plan may be closed over
    # or passed in (its index arrays then traced too: statistics fill wherever an index is -1).
    old, plan, fresh = adam_case(fs.mean(offset=-1.0))
    eager = fs.transplant_state(old, plan, fresh)
    closed = jax.jit(lambda o, f: fs.transplant_state(o, plan, f))
    passed = jax.jit(fs.transplant_state)
    for got in (closed(old, fresh), passed(old, plan, fresh)):
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(eager)
        for path, value in flatten(eager)[0].items():
            np.testing.assert_array_equal(flatten(got)[0][path], value, err_msg=path)
    passed(old, plan, fresh)
    assert passed._cache_size() == 1  # no retrace on a second call with the same plan and shapes


def test_transplant_state_moves_every_leaf_in_one_compiled_call():
    from flaxsurgery import state as state_lib

    old, plan, fresh = adam_case()
    moves = state_lib.plan_state(plan, flatten(old)[0], flatten(fresh)[0]).moves
    before = state_lib._moved._cache_size()
    fs.transplant_state(old, plan, fresh)
    fs.transplant_state(old, plan, fresh)
    # params, mu and nu of both layers' kernels and biases; the counts are kept, not moved.
    assert len(moves) == 12
    assert state_lib._moved._cache_size() - before <= 1


# ----------------------------------------------------------------------------- state fields


@pytest.fixture
def field_registry(monkeypatch):
    """The registry of state fields, restored after the test: a registration does not leak."""
    from flaxsurgery import state as state_lib

    monkeypatch.setattr(state_lib, "_FIELD_KINDS", dict(state_lib._FIELD_KINDS))
    return state_lib


def trace_case():
    """A state with a field flaxsurgery does not know, holding a statistic (every entry 0.5
    fresh, as Adagrad's initial accumulator) of a network that gains hidden units and inputs."""
    old_m, new_m = MLP((8, 2)), MLP((12, 2))
    old, fresh = init(old_m, 0, (2,)), init(new_m, 1, (4,))
    plan = fs.plan(old, fresh, mlp_layout(2), spaces={"obs": OBS})
    old_trace = jax.tree_util.tree_map(lambda v: v + 1.0, old)
    fresh_trace = jax.tree_util.tree_map(lambda v: jnp.full_like(v, 0.5), fresh)
    return plan, {"my_trace": old_trace}, {"my_trace": fresh_trace}


def test_a_registered_field_moves_as_its_kind(field_registry):
    plan, old, fresh = trace_case()
    with pytest.raises(ValueError, match="register_state_field"):
        fs.transplant_state(old, plan, fresh)

    field_registry.register_state_field("my_trace", "statistic")
    assert field_registry.state_field_kinds()["my_trace"] == "statistic"
    kernel = fs.transplant_state(old, plan, fresh)["my_trace"]["params"]["Dense_0"]["kernel"]
    old_kernel = old["my_trace"]["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(kernel[1:3, :8], old_kernel)  # kept units keep theirs
    np.testing.assert_array_equal(kernel[:, 8:], 0.5)  # new hidden units: the fresh value
    np.testing.assert_array_equal(kernel[np.array([0, 3])], 0.5)  # new inputs: the fresh value
    # The registry and kinds= are the same statement; kinds= still wins for one call.
    by_kinds = fs.transplant_state(old, plan, fresh, kinds={"my_trace": "statistic"})
    for path, value in flatten(by_kinds)[0].items():
        np.testing.assert_array_equal(flatten(fs.transplant_state(old, plan, fresh))[0][path], value)
    as_params = fs.transplant_state(old, plan, fresh, kinds={"my_trace": "params"})
    expected = fs.transplant(old["my_trace"], plan, fresh["my_trace"])
    for path, value in flatten(expected)[0].items():
        np.testing.assert_array_equal(flatten(as_params["my_trace"])[0][path], value, err_msg=path)


def test_a_field_registered_as_params_moves_like_the_parameters(field_registry):
    plan, old, fresh = trace_case()
    field_registry.register_state_field("my_trace", "params")
    moved = fs.transplant_state(old, plan, fresh)
    expected = fs.transplant(old["my_trace"], plan, fresh["my_trace"])
    for path, value in flatten(expected)[0].items():
        np.testing.assert_array_equal(flatten(moved["my_trace"])[0][path], value, err_msg=path)


def test_registrations_do_not_leak_between_tests():
    from flaxsurgery.state import state_field_kinds

    assert "my_trace" not in state_field_kinds()
    assert state_field_kinds()["mu"] == "statistic"
    assert state_field_kinds()["target_params"] == "params"


def test_register_state_field_names_every_problem(field_registry):
    with pytest.raises(ValueError) as error:
        field_registry.register_state_field("a/b", "moment")
    assert "one path component" in str(error.value) and "'moment'" in str(error.value)
    with pytest.raises(ValueError, match="already registered as 'statistic'.*kinds="):
        field_registry.register_state_field("mu", "params")
    with pytest.raises(ValueError, match="Adafactor"):
        field_registry.register_state_field("v_row", "statistic")
    field_registry.register_state_field("mu", "statistic")  # the same statement again: fine
    assert field_registry.state_field_kinds()["mu"] == "statistic"
