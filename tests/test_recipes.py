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
from typing import Any

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
    print("cleanrl:", report, new.plan.preserves())
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    assert new.plan.preserves() == "greedy"

    # CleanRL's evaluation and training load the bytes into the new network's template.
    params = flax.serialization.from_bytes(new_template, (tmp_path / "dqn_new.cleanrl_model").read_bytes())
    q_new = lambda x: new_network.apply(params, x)
    assert fs.verify(lambda x: q_network.apply(q_state.params, x), q_new, obs, new.plan).max_abs_diff <= 1e-5
    trained, losses = run_cleanrl(cleanrl_q_state(new_network, params), new_network, new_view, steps=40)
    assert len(losses) > 0 and np.all(np.isfinite(losses)) and int(trained.step) == len(losses)


# ============================================================================ adapters


@dataclasses.dataclass(frozen=True)
class FiveValueEnv:
    """purejaxql's PQN and rejax 0.1.3 step environments as gymnax did before 1.0 (obs, state,
    reward, done, info), with the environment's params; gymnax 1.0.1 (our pin) returns
    terminated and truncated apart. This adapter joins them and takes the params."""

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


# ============================================================================ purejaxql PQN
# purejaxql is a script repository (purejaxql/pqn_gymnax.py), not a package: its structure is
# written here. A Q-network with a BatchNorm on the input (always there, used only with
# NORM_INPUT, so every configuration has the same variables) and a LayerNorm after each hidden
# Dense; a TrainState subclass that carries batch_stats and the script's own counters
# (timesteps, n_updates, grad_steps); optax.chain(clip_by_global_norm, radam(linearly decayed
# lr)). Epsilon is a schedule of n_updates, the learning rate one of optax's count. Each update
# collects NUM_STEPS x NUM_ENVS transitions epsilon-greedily, computes Q(lambda) targets
# backwards, and runs NUM_EPOCHS epochs of NUM_MINIBATCHES minibatch steps (the training pass
# updates batch_stats). The whole train() builds its state inside, from a key.

PQN_CONFIG = {"NUM_ENVS": 4, "NUM_STEPS": 8, "NUM_MINIBATCHES": 2, "NUM_EPOCHS": 2, "LR": 1e-3,
              "MAX_GRAD_NORM": 10.0, "GAMMA": 0.99, "LAMBDA": 0.65, "EPS_START": 1.0,
              "EPS_FINISH": 0.05, "DECAY_UPDATES": 4}


class PQNNetwork(nn.Module):
    action_dim: int
    hidden: int = 32
    norm_input: bool = False

    @nn.compact
    def __call__(self, obs, train: bool = False):
        normed = nn.BatchNorm(use_running_average=not train)(obs)
        x = normed if self.norm_input else obs
        for _ in range(2):
            x = nn.relu(nn.LayerNorm()(nn.Dense(self.hidden)(x)))
        return nn.Dense(self.action_dim)(x)


class PQNState(train_state.TrainState):
    batch_stats: Any
    timesteps: int = 0
    n_updates: int = 0
    grad_steps: int = 0


def pqn_schedules(config=PQN_CONFIG):
    """Epsilon over n_updates; the learning rate over optax's count (minibatch steps)."""
    steps_per_update = config["NUM_MINIBATCHES"] * config["NUM_EPOCHS"]
    epsilon = optax.linear_schedule(config["EPS_START"], config["EPS_FINISH"], config["DECAY_UPDATES"])
    lr = optax.linear_schedule(config["LR"], 1e-20, config["DECAY_UPDATES"] * steps_per_update)
    return epsilon, lr


def pqn_state(network, view, key, config=PQN_CONFIG):
    """What PQN's train() builds first: the network's variables, the optimizer, the state."""
    variables = network.init(key, jnp.zeros((1, *view.obs_shape)), train=False)
    tx = optax.chain(optax.clip_by_global_norm(config["MAX_GRAD_NORM"]), optax.radam(learning_rate=pqn_schedules(config)[1]))
    return PQNState.create(apply_fn=network.apply, params=variables["params"],
                           batch_stats=variables["batch_stats"], tx=tx)


def make_pqn_train(network, env, config=PQN_CONFIG):
    """PQN's update loop from a given state, on an environment with the five-value step."""
    n_envs, params = config["NUM_ENVS"], env.default_params
    epsilon_at = pqn_schedules(config)[0]

    def q_values(state, obs):
        return network.apply({"params": state.params, "batch_stats": state.batch_stats}, obs, train=False)

    def env_step(carry, _):
        state, env_state, obs, key = carry
        key, k_explore, k_random, k_env = jax.random.split(key, 4)
        q = q_values(state, obs)
        explore = jax.random.uniform(k_explore, (n_envs,)) < epsilon_at(state.n_updates)
        action = jnp.where(explore, jax.random.randint(k_random, (n_envs,), 0, q.shape[-1]), q.argmax(-1))
        next_obs, env_state, reward, done, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, n_envs), env_state, action, params)
        return (state, env_state, next_obs, key), (obs, action, reward, done.astype(jnp.float32), q)

    def lambda_targets(state, last_obs, reward, done, q):
        """Q(lambda) returns, backwards from the last step's bootstrap."""
        last_q = q_values(state, last_obs).max(-1) * (1 - done[-1])
        last_return = reward[-1] + config["GAMMA"] * last_q

        def back(carry, t):
            lambda_return, next_q = carry
            r, d, q_t = t
            bootstrap = r + config["GAMMA"] * (1 - d) * next_q
            lambda_return = bootstrap + config["GAMMA"] * config["LAMBDA"] * (lambda_return - next_q)
            lambda_return = (1 - d) * lambda_return + d * r
            return (lambda_return, q_t.max(-1)), lambda_return

        _, earlier = jax.lax.scan(back, (last_return, last_q), (reward[:-1], done[:-1], q[1:]), reverse=True)
        return jnp.concatenate([earlier, last_return[None]])

    def minibatch_step(state, batch):
        obs, action, target = batch

        def loss_fn(p):
            q, updates = network.apply({"params": p, "batch_stats": state.batch_stats}, obs, train=True,
                                       mutable=["batch_stats"])
            chosen = jnp.take_along_axis(q, action[:, None], axis=-1)[:, 0]
            return 0.5 * jnp.square(chosen - target).mean(), updates

        (_, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads)
        return state.replace(batch_stats=updates["batch_stats"], grad_steps=state.grad_steps + 1), None

    def update(runner, _):
        runner, (obs, action, reward, done, q) = jax.lax.scan(env_step, runner, None, config["NUM_STEPS"])
        state, env_state, last_obs, key = runner
        targets = lambda_targets(state, last_obs, reward, done, q)
        data = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), (obs, action, targets))

        def epoch(carry, _):
            state, key = carry
            key, k_perm = jax.random.split(key)
            perm = jax.random.permutation(k_perm, config["NUM_STEPS"] * n_envs)
            batches = jax.tree_util.tree_map(
                lambda x: x[perm].reshape((config["NUM_MINIBATCHES"], -1) + x.shape[1:]), data)
            return (jax.lax.scan(minibatch_step, state, batches)[0], key), None

        (state, key), _ = jax.lax.scan(epoch, (state, key), None, config["NUM_EPOCHS"])
        state = state.replace(timesteps=state.timesteps + config["NUM_STEPS"] * n_envs,
                              n_updates=state.n_updates + 1)
        return (state, env_state, last_obs, key), None

    def train(state, key, updates):
        """`updates` updates from `state`, with fresh environments."""
        k_reset, key = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, n_envs), params)
        return jax.lax.scan(update, (state, env_state, obs, key), None, updates)[0][0]

    return jax.jit(train, static_argnums=2)


def radam_count(state) -> jnp.ndarray:
    return state.opt_state[1][0].count  # chain(clip, radam = chain(scale_by_radam, lr schedule))


def lr_schedule_count(state) -> jnp.ndarray:
    return state.opt_state[1][1].count


def test_purejaxql_pqn_recipe():
    old_view, new_view = acrobot(0), acrobot(1)
    old_net = PQNNetwork(old_view.num_actions)
    # The old agent: PQN's own loop, until epsilon and the learning rate reach their ends.
    old_state = make_pqn_train(old_net, FiveValueEnv(old_view))(
        pqn_state(old_net, old_view, jax.random.key(0)), jax.random.key(1), PQN_CONFIG["DECAY_UPDATES"])
    epsilon_at, lr_at = pqn_schedules()
    assert epsilon_at(old_state.n_updates) == np.float32(PQN_CONFIG["EPS_FINISH"])
    assert float(lr_at(lr_schedule_count(old_state))) < 1e-12
    new_net = PQNNetwork(new_view.num_actions)
    obs = rollout_obs(old_view)
    # --- surgery (1 flaxsurgery call)
    fresh = pqn_state(new_net, new_view, jax.random.key(2))  # what PQN's train() would build
    new = fs.surgery(old_net, old_state, new_net, fresh, obs,
                     spaces={"obs": ACROBOT_OBS, "out": ACROBOT_ACTIONS}, reset=("schedule",))
    state = new.state.replace(n_updates=0)  # epsilon is a schedule of PQN's own counter
    # --- end
    report = new.verify(obs)
    print("purejaxql PQN:", report, new.plan.preserves())
    assert new.plan.preserves() == "greedy"
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    # Surgery keeps the script's counters (they count the old run) and optax's Adam count; it
    # restarted the learning-rate schedule's count. The user restarts epsilon's.
    assert int(new.state.n_updates) == int(old_state.n_updates) == PQN_CONFIG["DECAY_UPDATES"]
    assert int(new.state.timesteps) == int(old_state.timesteps) and int(new.state.grad_steps) == int(old_state.grad_steps)
    assert int(radam_count(new.state)) == int(radam_count(old_state)) > 0
    assert int(lr_schedule_count(new.state)) == 0 and lr_at(lr_schedule_count(state)) == np.float32(PQN_CONFIG["LR"])
    assert epsilon_at(state.n_updates) == np.float32(PQN_CONFIG["EPS_START"])
    # The input BatchNorm's statistics moved with the observations: the new features neutral.
    moved, kept = state.batch_stats["BatchNorm_0"], old_state.batch_stats["BatchNorm_0"]
    np.testing.assert_array_equal(moved["mean"], jnp.concatenate([kept["mean"], jnp.zeros(2)]))
    np.testing.assert_array_equal(moved["var"], jnp.concatenate([kept["var"], jnp.ones(2)]))

    trained = make_pqn_train(new_net, FiveValueEnv(new_view))(state, jax.random.key(3), 1)  # its own loop
    assert int(trained.n_updates) == 1
    assert int(trained.grad_steps) == int(state.grad_steps) + PQN_CONFIG["NUM_MINIBATCHES"] * PQN_CONFIG["NUM_EPOCHS"]
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), trained.params, state.params)
    assert max(jax.tree_util.tree_leaves(moved)) > 0
