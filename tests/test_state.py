"""Everything shaped like the parameters (optax state, target networks), and Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
