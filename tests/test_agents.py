"""fs.surgery: one call from a whole trained agent to the new one."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import flaxsurgery as fs

OBS = (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])
ACTIONS = (["left", "right"], ["left", "noop", "right"])


class QNet(nn.Module):
    actions: int = 2
    depth: int = 1

    @nn.compact
    def __call__(self, obs):
        x = obs
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(self.actions)(x)


class DQNState(train_state.TrainState):
    target_params: Any


def dqn_state(model, n_obs, key, steps=0):
    params = model.init(jax.random.key(key), jnp.zeros((2, n_obs)))["params"]
    state = DQNState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3), target_params=params)
    for i in range(steps):
        grads = jax.tree_util.tree_map(lambda p, i=i: jnp.cos(p + i), state.params)
        state = state.apply_gradients(grads=grads)
    return state.replace(target_params=jax.tree_util.tree_map(lambda p: 0.5 * p, state.params))


def test_surgery_moves_a_whole_dqn_train_state_and_pairs_an_inserted_layer():
    old_m, new_m = QNet(2, 1), QNet(3, 2)
    old = dqn_state(old_m, 2, 0, steps=3)
    fresh = dqn_state(new_m, 4, 1)
    x = jax.random.normal(jax.random.key(2), (256, 2))
    result = fs.surgery(old_m, old, new_m, fresh, x[:8], spaces={"obs": OBS, "out": ACTIONS})
    assert "new layer params/Dense_1: identity, preserves function" in result.plan.report()
    report = result.verify(x)
    assert result.plan.preserves() == "greedy"
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    new = result.state
    assert int(new.step) == 3 and int(new.opt_state[0].count) == 3
    target_fn = lambda v: new_m.apply({"params": new.target_params}, v)
    old_target = lambda v: old_m.apply({"params": old.target_params}, v)
    assert fs.verify(old_target, target_fn, x, result.plan).max_abs_diff <= 1e-5
    np.testing.assert_array_equal(new.opt_state[0].mu["Dense_2"]["kernel"][:, 1], 0.0)  # new action
    new.apply_gradients(grads=jax.tree_util.tree_map(jnp.ones_like, new.params))  # training goes on


def test_a_removed_layer_pairs_by_place_too():
    old_m, new_m = QNet(2, 3), QNet(2, 2)  # three hidden layers -> two
    old, fresh = dqn_state(old_m, 2, 0), dqn_state(new_m, 2, 1)
    result = fs.surgery(old_m, old, new_m, fresh, jnp.ones((4, 2)))
    assert result.plan.preserves() == "none"  # a removed layer's work is lost, and said so
    assert "dropped old layer params/Dense_2: preserves none" in result.plan.report()
    sources = {leaf.path: leaf.source for leaf in result.plan.leaves}
    assert sources["params/Dense_1/kernel"] == "params/Dense_1/kernel"  # paired from the front
    assert sources["params/Dense_2/kernel"] == "params/Dense_3/kernel"  # the output layer


def test_ambiguous_pairings_raise_with_the_candidates():
    class Mixed(nn.Module):
        conv_first: bool

        @nn.compact
        def __call__(self, obs):
            x = obs[:, None, :]
            x = nn.relu(nn.Conv(4, (1,))(x)) if self.conv_first else x
            x = nn.LayerNorm()(x) if not self.conv_first else x
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    old_m, new_m = Mixed(True), Mixed(False)
    x = jnp.ones((4, 3))
    old = old_m.init(jax.random.key(0), x)
    fresh = new_m.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match="cannot pair layers by their place in the forward pass"):
        fs.surgery(old_m, old, new_m, fresh, x)


def test_policy_preset_keeps_the_sampled_policy():
    class Actor(nn.Module):
        actions: int

        @nn.compact
        def __call__(self, obs):
            return nn.Dense(self.actions)(nn.tanh(nn.Dense(32)(obs)))

    old_m, new_m = Actor(2), Actor(3)
    x = jax.random.normal(jax.random.key(0), (512, 6))
    old = old_m.init(jax.random.key(0), x)
    old = jax.tree_util.tree_map(lambda p: 3.0 * p, old)  # confident logits
    fresh = new_m.init(jax.random.key(1), x)
    preserving = fs.surgery(old_m, old, new_m, fresh, x[:4], spaces={"out": ACTIONS})
    policy = fs.surgery(old_m, old, new_m, fresh, x[:4], spaces={"out": ACTIONS}, preset="policy")
    assert preserving.plan.preserves() == "greedy" and policy.plan.preserves() == "policy"
    kept, moved = policy.verify(x, logits=True), preserving.verify(x, logits=True)
    assert kept.policy_kl <= 1e-6 and kept.greedy_agreement == 1.0
    assert moved.policy_kl > 1e-2  # the mean rule moves sampled probability to the new action


class Categorical:
    """A distribution object that is not a pytree, as some RL libraries return."""

    def __init__(self, logits):
        self.logits = logits


class DistActor(nn.Module):
    actions: int

    @nn.compact
    def __call__(self, obs):
        return Categorical(nn.Dense(self.actions)(nn.relu(nn.Dense(8)(obs))))


def test_an_output_selector_traces_distribution_outputs():
    old_m, new_m = DistActor(2), DistActor(3)
    x = jnp.ones((4, 3))
    old = old_m.init(jax.random.key(0), x)
    fresh = new_m.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match=r"output=lambda out: out.logits"):
        fs.trace_layout(old_m.apply, old, x)
    result = fs.surgery(old_m, old, new_m, fresh, x, spaces={"out": ACTIONS}, preset="policy",
                        output=lambda dist: dist.logits)
    assert result.verify(jax.random.normal(jax.random.key(2), (64, 3)), logits=True).policy_kl <= 1e-6


def test_input_names_survive_an_output_selector_and_unknown_spaces_raise():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, obs):
            return nn.Dense(2)(obs)

    x = jnp.ones((4, 2))
    old, new = Net().init(jax.random.key(0), x), Net().init(jax.random.key(1), jnp.ones((4, 3)))
    result = fs.surgery(Net(), old, Net(), new, x, spaces={"obs": (2, 3)}, output=lambda y: y)
    assert result.input_space == "obs"
    with pytest.raises(ValueError, match=r"spaces names \['x'\], which the old model does not have"):
        fs.surgery(Net(), old, Net(), new, x, spaces={"x": (2, 3)})
    with pytest.raises(ValueError, match="the new model does not run on the new samples"):
        fs.surgery(Net(), old, Net(), new, x)


def test_a_gaussian_head_grows_an_action_dimension():
    # The documented choice: a new dimension's mean starts at 0 (zero incoming weights) and its
    # log-std at the new network's init; the old dimensions' distribution is unchanged exactly.
    class Gaussian(nn.Module):
        dims: int

        @nn.compact
        def __call__(self, obs):
            loc = nn.Dense(self.dims)(nn.tanh(nn.Dense(16)(obs)))
            log_std = self.param("log_std", nn.initializers.constant(-0.5), (self.dims,))
            return loc, jnp.broadcast_to(log_std, loc.shape)

    old_m, new_m = Gaussian(2), Gaussian(3)
    x = jax.random.normal(jax.random.key(0), (64, 5))
    old, fresh = old_m.init(jax.random.key(0), x), new_m.init(jax.random.key(1), x)
    dims = (["steer", "gas"], ["steer", "gas", "brake"])
    result = fs.surgery(old_m, old, new_m, fresh, x[:4], spaces={"out/0": dims, "out/1": dims},
                        rules={"out/0": fs.zeros(), "out/1": fs.fresh()})
    for space in ("out/0", "out/1"):  # the means, then the log-stds, of the old dimensions
        assert result.verify(x, outputs=space).max_abs_diff <= 1e-6
    with pytest.raises(ValueError, match=r"the networks return several arrays \['out/0', 'out/1'\]"):
        result.verify(x, outputs="out")
    loc_new = result.new_fn(x)[0]
    np.testing.assert_allclose(loc_new[:, 2], 0.0, atol=1e-6)


def test_normalizer_statistics_move_along_the_observation_space():
    old_m, new_m = QNet(2), QNet(2)
    old, fresh = dqn_state(old_m, 2, 0), dqn_state(new_m, 4, 1)
    stats = {"mean": np.array([0.5, -1.0]), "var": np.array([2.0, 3.0]), "count": np.float64(1e4)}
    result = fs.surgery(old_m, old, new_m, fresh, jnp.ones((4, 2)), spaces={"obs": OBS}, normalizer=stats)
    moved = result.normalizer
    np.testing.assert_array_equal(moved["mean"], [0.0, 0.5, -1.0, 0.0])
    np.testing.assert_array_equal(moved["var"], [1.0, 2.0, 3.0, 1.0])
    assert moved["mean"].dtype == np.float64 and moved["count"] == 1e4


@flax.struct.dataclass
class RunningStatistics:  # Brax's running statistics: a UInt64-like count and a Python float
    count: jnp.ndarray
    mean: jnp.ndarray
    summed_variance: jnp.ndarray
    std: jnp.ndarray
    std_eps: float = 0.0


class RunningMeanStd:  # SB3's: a plain object holding float64 arrays
    def __init__(self, mean, var, count):
        self.mean, self.var, self.count = mean, var, count


def test_normalizers_of_several_kinds():
    plan = fs.plan({"w": np.ones((2, 3), np.float32)}, {"w": np.ones((4, 3), np.float32)},
                   {"w": ("obs", None)}, spaces={"obs": OBS})
    brax = RunningStatistics(count=jnp.array(10, jnp.uint32), mean=jnp.array([1.0, 2.0]),
                             summed_variance=jnp.array([40.0, 90.0]), std=jnp.array([2.0, 3.0]))
    moved = fs.transplant_normalizer(brax, plan, "obs")
    np.testing.assert_array_equal(moved.summed_variance, [10.0, 40.0, 90.0, 10.0])  # variance 1
    np.testing.assert_array_equal(moved.std, [1.0, 2.0, 3.0, 1.0])
    assert moved.std_eps == 0.0 and int(moved.count) == 10
    sb3 = RunningMeanStd(np.array([1.0, 2.0]), np.array([4.0, 9.0]), 100.0)
    out = fs.transplant_normalizer(sb3, plan, "obs")
    np.testing.assert_array_equal(out.var, [1.0, 4.0, 9.0, 1.0])
    assert out.var.dtype == np.float64 and sb3.var.shape == (2,)  # the original is untouched
    with pytest.raises(ValueError, match="does not tell a new feature's neutral value"):
        fs.transplant_normalizer({"m2": np.ones(2)}, plan, "obs")


def test_nnx_state_surgery():
    class Net(nnx.Module):
        def __init__(self, n_in, n_out, rngs):
            self.hidden = nnx.Linear(n_in, 8, rngs=rngs)
            self.head = nnx.Linear(8, n_out, rngs=rngs)

        def __call__(self, obs):
            return self.head(nnx.relu(self.hidden(obs)))

    old_m, new_m = Net(2, 2, nnx.Rngs(0)), Net(4, 3, nnx.Rngs(1))
    old_graph, old_state = nnx.split(old_m)
    new_graph, new_state = nnx.split(new_m)

    def apply_of(graph):
        return lambda state, obs: nnx.merge(graph, state)(obs)

    x = jax.random.normal(jax.random.key(2), (64, 2))
    result = fs.surgery(apply_of(old_graph), old_state, apply_of(new_graph), new_state, x[:4],
                        spaces={"obs": OBS, "out": ACTIONS})
    assert isinstance(result.state, nnx.State)
    report = result.verify(x)
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    nnx.update(new_m, result.state)  # the NNX module now holds the transplanted weights
    np.testing.assert_allclose(new_m(fs.map_units(x, result.plan, "obs"))[:, ::2], old_m(x), atol=1e-5)


def test_spec_values_build_their_plan_on_first_use():
    old_m, new_m = QNet(2), QNet(3)
    x = jnp.ones((4, 2))
    old, fresh = old_m.init(jax.random.key(0), x), new_m.init(jax.random.key(1), x)
    layout = fs.trace_layout(old_m.apply, old, x)
    spec = fs.Spec(layout, spaces={"out": ACTIONS})
    direct = fs.transplant(old, fs.plan(old, fresh, layout, spaces={"out": ACTIONS}), fresh)
    for got in (fs.transplant(old, spec, fresh), jax.jit(lambda o, f: fs.transplant(o, spec, f))(old, fresh)):
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(direct)):
            np.testing.assert_array_equal(a, b)
    assert spec.plan_for(old, fresh).preserves() == "greedy"
