"""Architectures RL code uses, traced as a new user would write them: GroupNorm, a C51-style
distributional head, nn.Sequential, a vmapped critic ensemble, an OptimizedLSTMCell. Every claim
a report makes here is checked with fs.verify."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flaxsurgery as fs
from flaxsurgery.layout import MIXING, OUTPUTS
from tests.conftest import examples

X = jnp.ones((4, 5))
SAMPLES = jax.random.normal(jax.random.key(7), (64, 5))


def overall(result) -> str:
    return result.plan.report().splitlines()[-1]


def line_of(result, space: str) -> str:
    return next(line for line in result.plan.report().splitlines() if line.split()[:1] == [space])


class GroupNormNet(nn.Module):
    width: int = 16
    groups: int = 4

    @nn.compact
    def __call__(self, obs):
        hidden = nn.Dense(self.width)(obs)
        return nn.Dense(3)(nn.relu(nn.GroupNorm(num_groups=self.groups)(hidden)))


def test_groupnorm_splits_its_space_into_groups_and_channels():
    old, new = GroupNormNet(16), GroupNormNet(20)
    old_vars, new_vars = old.init(jax.random.key(0), X), new.init(jax.random.key(1), X)
    layout = fs.trace_layout(old.apply, old_vars, X)
    grouped = fs.Grid(("Dense_0.0", "Dense_0.1"))  # 4 groups x 4 channels, channels fastest
    assert layout["params/Dense_0/kernel"] == ("obs", grouped)
    assert layout["params/GroupNorm_0/scale"] == (grouped,)
    assert layout[MIXING] == ("Dense_0.1",)  # a group's statistics span its channels
    # a permutation of the channels, the same in every group: exact
    same = fs.surgery(old, old_vars, old, old_vars, X, spaces={"Dense_0.1": ([0, 1, 2, 3], [3, 1, 0, 2])})
    assert overall(same) == "overall: preserves function"
    assert same.verify(SAMPLES).max_abs_diff < 1e-5
    # one more channel a group: the statistics change, and the report says so
    wider = fs.surgery(old, old_vars, new, new_vars, X, spaces={"Dense_0.1": (4, 5)})
    assert "mixes this space's units" in wider.plan.report() and overall(wider) == "overall: preserves none"
    assert wider.verify(SAMPLES).max_abs_diff > 1e-3  # the claim is not below what holds


@settings(max_examples=examples(16), deadline=None)
@given(groups=st.integers(2, 3), channels=st.integers(2, 3), added=st.integers(0, 1), seed=st.integers(0, 99))
def test_every_claim_on_a_grouped_space_holds(groups, channels, added, seed):
    """Channels of every group permuted, and some added: what the report claims, verify finds."""
    old, new = GroupNormNet(groups * channels, groups), GroupNormNet(groups * (channels + added), groups)
    old_vars, new_vars = old.init(jax.random.key(seed), X), new.init(jax.random.key(seed + 1), X)
    order = [int(i) for i in np.random.default_rng(seed).permutation(channels)]
    result = fs.surgery(old, old_vars, new, new_vars, X,
                        spaces={"Dense_0.1": (list(range(channels)), order + list(range(channels, channels + added)))})
    report = result.verify(SAMPLES)
    assert overall(result) == ("overall: preserves none" if added else "overall: preserves function")
    if not added:  # exact up to rounding: the permutation reorders each group's sums, and the
        # normalisation divides them by the group's spread (seed 70 gave 7.5e-6 relative)
        assert report.max_rel_diff < 8 * fs.ROUNDING["float32"]


class C51(nn.Module):
    actions: int = 3
    atoms: int = 11
    width: int = 16

    @nn.compact
    def __call__(self, obs):
        hidden = nn.relu(nn.Dense(self.width)(obs))
        logits = nn.Dense(self.actions * self.atoms)(hidden)
        return jax.nn.softmax(logits.reshape(obs.shape[0], self.actions, self.atoms), axis=-1)


ATOMS = jnp.linspace(-10.0, 10.0, 11)


def q_values(model, variables):
    """The greedy policy reads the expected return of each action's distribution."""
    return lambda obs: (model.apply(variables, obs) * ATOMS).sum(-1)


def test_a_distributional_head_is_actions_by_atoms():
    old = C51()
    old_vars = old.init(jax.random.key(0), X)
    layout = fs.trace_layout(old.apply, old_vars, X)
    assert layout["params/Dense_1/kernel"] == ("Dense_0", fs.Grid(("out:1", "out")))
    assert set(layout[OUTPUTS]) == {"out", "out:1"} and layout[MIXING] == ("out",)  # softmax over atoms
    # widening the hidden layer keeps every action's distribution
    new = C51(width=24)
    wider = fs.surgery(old, old_vars, new, new.init(jax.random.key(1), X), X, spaces={"Dense_0": (16, 24)})
    assert overall(wider) == "overall: preserves function"
    assert fs.verify(q_values(old, old_vars), q_values(new, wider.state), SAMPLES, wider.plan,
                     outputs="out:1").max_abs_diff < 1e-5
    # a new action: the softmax cancels a copy's offset, so no rule is claimed to keep the greedy
    more = C51(actions=4)
    added = fs.surgery(old, old_vars, more, more.init(jax.random.key(1), X), X, spaces={"out:1": (3, 4)},
                       rules={"out:1": fs.copy_of(0, offset=-0.01)})
    assert line_of(added, "out:1").split()[-1] == "none"
    assert fs.verify(q_values(old, old_vars), q_values(more, added.state), SAMPLES, added.plan,
                     outputs="out:1").max_abs_diff < 1e-5  # the old actions' values are kept


def test_sequential_names_its_input_obs():
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    variables = model.init(jax.random.key(0), X)
    assert fs.trace_layout(model.apply, variables, X)["params/layers_0/kernel"] == ("obs", "layers_0")
    new = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    new_vars = new.init(jax.random.key(1), jnp.ones((4, 6)))
    result = fs.surgery(model, variables, new, new_vars, X, spaces={"obs": (5, 6)})
    assert result.input_space == "obs" and result.verify(SAMPLES).max_abs_diff < 1e-5


class Critic(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, obs, action):
        hidden = nn.relu(nn.Dense(self.width)(jnp.concatenate([obs, action], -1)))
        return nn.Dense(1)(hidden)


class Ensemble(nn.Module):
    """Two critics in one vmapped module, as SAC and TD3 implementations build them."""

    width: int = 16

    @nn.compact
    def __call__(self, obs, action):
        critics = nn.vmap(Critic, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=None, out_axes=0, axis_size=2)
        return critics(self.width)(obs, action)


@pytest.mark.parametrize("model", [Critic, Ensemble])
def test_a_critic_widens_without_the_ids_of_its_inputs(model):
    action = jnp.ones((4, 2))
    old, new = model(16), model(24)
    old_vars = old.init(jax.random.key(0), X, action)
    new_vars = new.init(jax.random.key(1), X, action)
    hidden = "Dense_0" if model is Critic else "VmapCritic_0/Dense_0"
    result = fs.surgery(old, old_vars, new, new_vars, (X, action), spaces={hidden: (16, 24)})
    assert overall(result) == "overall: preserves function"
    actions = jax.random.normal(jax.random.key(8), (64, 2))
    report = fs.verify(lambda o: old.apply(old_vars, o, actions), lambda o: new.apply(result.state, o, actions),
                       SAMPLES, result.plan, inputs="obs", outputs="out")
    assert report.max_abs_diff < 1e-5


class Recurrent(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, obs):
        return nn.Dense(3)(nn.RNN(nn.OptimizedLSTMCell(self.width))(obs)[:, -1])


def test_widening_an_optimized_lstm_cell_is_claimed_exact():
    sequences = jnp.ones((4, 6, 5))
    old, new = Recurrent(8), Recurrent(12)
    old_vars, new_vars = old.init(jax.random.key(0), sequences), new.init(jax.random.key(1), sequences)
    layout = fs.trace_layout(old.apply, old_vars, sequences)
    assert MIXING not in layout  # the gates' kernels are concatenated: parameters, not activations
    result = fs.surgery(old, old_vars, new, new_vars, sequences, spaces={"OptimizedLSTMCell_0/hi": (8, 12)})
    assert overall(result) == "overall: preserves function"
    assert result.verify(jax.random.normal(jax.random.key(2), (32, 6, 5))).max_abs_diff < 1e-5


def test_a_dense_output_reshaped_into_an_image_stays_refused():
    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, obs):
            image = nn.Dense(36)(obs).reshape(obs.shape[0], 6, 6)[..., None]
            return nn.Conv(2, (3, 3))(image).reshape(obs.shape[0], -1)

    model = Decoder()
    variables = model.init(jax.random.key(0), X)
    # a conv slides over the 6 x 6 parts: positions, not units, so they are not spaces
    with pytest.raises(ValueError, match=r"reads a flattening of axes \(6, 6\)"):
        fs.trace_layout(model.apply, variables, X)
