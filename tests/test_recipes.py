"""Recipes: one `fs.surgery` on the agents of RL code a user holds, then its own training goes on.

The recipes here need no client library (CleanRL's script and purejaxql's PQN are written here
as those script repositories have them); those that run against brax, rejax and distrax are in
tests/integrations/test_jax_recipes.py (`make test-integrations`). Each test builds (or trains)
an agent the way its library does, moves it to a new observation
space (and, for discrete policies, a new action) with at most three lines of flaxsurgery calls
(the lines between the ``# --- surgery`` and ``# --- end`` markers; docs/agents_recipes.md shows
the same code), checks what the issue's "done when" asks, and runs the library's own training
step on the result. Networks are small and loops a few steps long.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import flaxsurgery as fs
from flaxsurgery.rl import EnvView

# Acrobot: the old agents see the two links' angles and choose between the two torques; the new
# ones also see the angular velocities and may apply no torque.
ACROBOT_OBS = (("cos1", "sin1", "cos2", "sin2"), ("cos1", "sin1", "cos2", "sin2", "dtheta1", "dtheta2"))
ACROBOT_ACTIONS = (("torque-1", "torque+1"), ("torque-1", "torque0", "torque+1"))


def acrobot(which: int) -> EnvView:
    return EnvView("Acrobot-v1", obs_ids=ACROBOT_OBS[which], action_ids=ACROBOT_ACTIONS[which])


@functools.cache
def rollout_obs(view: EnvView, steps: int = 64, seed: int = 0) -> jnp.ndarray:
    """Observations of a random walk in `view`: samples for surgery and checks."""

    def step(carry, key):
        state, obs = carry
        k_act, k_env = jax.random.split(key)
        action = jax.random.randint(k_act, (), 0, view.num_actions)
        next_obs, state, *_ = view.step(k_env, state, action)
        return (state, next_obs), obs

    @jax.jit
    def walk(key):
        keys = jax.random.split(key, steps + 1)
        obs, state = view.reset(keys[0])
        return jax.lax.scan(step, (state, obs), keys[1:])[1]

    return walk(jax.random.key(seed))


# ============================================================================ CleanRL dqn_jax.py
# CleanRL is a script repository: cleanrl/dqn_jax.py trains QNetwork (Dense 120, 84, actions) in
# a TrainState subclass with target_params, and saves flax.serialization.to_bytes(q_state.params)
# (the variables dict of q_network.init). Its update step and loop are written here as the
# script has them: epsilon-greedy on a gymnasium vector environment, a replay buffer, a TD step
# every few steps, a hard target update.

LANDER_OBS = (("x", "y", "vx", "vy", "angle", "angular_velocity"),
              ("x", "y", "vx", "vy", "angle", "angular_velocity", "left_leg", "right_leg"))
LANDER_ACTIONS = (("noop", "fire_left", "fire_right"), ("noop", "fire_left", "fire_main", "fire_right"))


class QNetwork(nn.Module):
    action_dim: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.action_dim)(x)


class QTrainState(train_state.TrainState):
    target_params: flax.core.FrozenDict


def make_cleanrl_update(q_network, gamma=0.99):
    @jax.jit
    def update(q_state, obs, actions, next_obs, rewards, dones):
        q_next = q_network.apply(q_state.target_params, next_obs).max(axis=-1)
        target = rewards + (1 - dones) * gamma * q_next

        def mse_loss(params):
            q = q_network.apply(params, obs)[jnp.arange(obs.shape[0]), actions]
            return ((q - target) ** 2).mean()

        loss, grads = jax.value_and_grad(mse_loss)(q_state.params)
        return loss, q_state.apply_gradients(grads=grads)

    return update


def run_cleanrl(q_state, q_network, view, steps, seed=0, learning_starts=16, train_every=2,
                target_every=8, batch_size=16, epsilon=0.5):
    """CleanRL's loop, short: returns the state and the TD losses of its updates."""
    from flaxsurgery.rl.host import real_next_obs

    envs, rng = view.make_vector(1), np.random.default_rng(seed)
    update, q_values = make_cleanrl_update(q_network), jax.jit(q_network.apply)  # as the script jits
    obs, _ = envs.reset(seed=seed)
    obs = view.observe(obs)
    buffer, losses = [], []
    for step in range(steps):
        if rng.random() < epsilon:
            actions = rng.integers(view.num_actions, size=1)
        else:
            actions = np.asarray(q_values(q_state.params, obs).argmax(axis=-1))
        next_obs, rewards, terminated, _, info = envs.step(view.action_index[actions])
        real_next = view.observe(real_next_obs(next_obs, info))
        buffer.append((obs[0], actions[0], real_next[0], rewards[0], terminated[0]))
        obs = view.observe(next_obs)
        if step >= learning_starts and step % train_every == 0:
            picked = [buffer[i] for i in rng.integers(len(buffer), size=batch_size)]
            o, a, n, r, d = (np.stack(x) for x in zip(*picked))
            loss, q_state = update(q_state, o, a, n, r.astype(np.float32), d.astype(np.float32))
            losses.append(float(loss))
        if step % target_every == 0:
            q_state = q_state.replace(target_params=q_state.params)
    envs.close()
    return q_state, losses


def cleanrl_q_state(q_network, params):
    return QTrainState.create(apply_fn=q_network.apply, params=params, target_params=params,
                              tx=optax.adam(learning_rate=2.5e-4))


def test_cleanrl_dqn_checkpoint_recipe(tmp_path):
    pytest.importorskip("Box2D")  # LunarLander
    from flaxsurgery.rl.host import HostView

    old_view, new_view = (HostView("LunarLander-v3", obs_ids=LANDER_OBS[i], action_ids=LANDER_ACTIONS[i])
                          for i in (0, 1))
    q_network = QNetwork(old_view.num_actions)
    q_state = cleanrl_q_state(q_network, q_network.init(jax.random.key(0), np.zeros((1, old_view.obs_size))))
    q_state, _ = run_cleanrl(q_state, q_network, old_view, steps=40)
    (tmp_path / "dqn.cleanrl_model").write_bytes(flax.serialization.to_bytes(q_state.params))

    # The recipe: template -> surgery -> bytes.
    new_network = QNetwork(new_view.num_actions)
    envs = old_view.make_vector(1)
    envs.reset(seed=1)
    obs = np.concatenate([old_view.observe(envs.step(envs.action_space.sample())[0]) for _ in range(64)])
    envs.close()
    template = q_network.init(jax.random.key(0), obs[:1])
    new_template = new_network.init(jax.random.key(1), np.zeros((1, new_view.obs_size)))
    # --- surgery (1 flaxsurgery call)
    old_params = flax.serialization.from_bytes(template, (tmp_path / "dqn.cleanrl_model").read_bytes())
    new = fs.surgery(q_network, old_params, new_network, new_template, obs,
                     spaces={"x": LANDER_OBS, "out": LANDER_ACTIONS})  # x: QNetwork's argument
    (tmp_path / "dqn_new.cleanrl_model").write_bytes(flax.serialization.to_bytes(new.state))
    # --- end
    report = new.verify(obs)
    print("cleanrl:", report, new.plan.exactness())
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    assert new.plan.exactness() == "greedy"

    # CleanRL's evaluation and training load the bytes into the new network's template.
    params = flax.serialization.from_bytes(new_template, (tmp_path / "dqn_new.cleanrl_model").read_bytes())
    q_new = lambda x: new_network.apply(params, x)
    assert fs.verify(lambda x: q_network.apply(q_state.params, x), q_new, obs, new.plan).max_abs_diff <= 1e-5
    trained, losses = run_cleanrl(cleanrl_q_state(new_network, params), new_network, new_view, steps=40)
    assert len(losses) > 0 and np.all(np.isfinite(losses)) and int(trained.step) == len(losses)


# ============================================================================ adapters


@dataclasses.dataclass(frozen=True)
class FiveValueEnv:
    """rejax 0.1.3 steps environments as gymnax did before 1.0 (obs, state, reward, done, info);
    gymnax 1.0.1 (our pin) returns terminated and truncated apart. This adapter joins them."""

    view: EnvView

    @property
    def default_params(self):
        return self.view.env_params

    def observation_space(self, params):
        from gymnax.environments import spaces
        return spaces.Box(-jnp.inf, jnp.inf, self.view.obs_shape, jnp.float32)

    def action_space(self, params):
        from gymnax.environments import spaces
        return spaces.Discrete(self.view.num_actions)

    def reset(self, key, params):
        return self.view.reset(key)

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self.view.step(key, state, action)
        return obs, state, reward, jnp.logical_or(terminated, truncated), info
