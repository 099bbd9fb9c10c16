"""The DQN on gymnasium environments: the environments step on the host, the network is jitted.

Most custom environments are gymnasium environments, not gymnax ones, so they cannot run inside
[`make_train`][flaxsurgery.rl.make_train]'s ``lax.scan``. `make_host_train` trains the same DQN
([`DQNConfig`][flaxsurgery.rl.DQNConfig], [`QNetwork`][flaxsurgery.rl.QNetwork], the same TD loss,
replay buffer, optimizer and schedule) with a Python loop: a gymnasium vector environment steps
on the host, and two jitted calls do the rest:

- ``act``: epsilon-greedy actions of every agent for one step of its environments;
- ``update``: add the K steps of every environment to the buffer, then G gradient steps
  (one ``lax.scan``).

A population of agents (seeds, or the arms of an experiment) trains at once: one vector
environment holds ``num_envs`` environments per agent, and ``act`` and ``update`` are vmapped
over agents, so a population costs one jitted call per step, not one per agent. A run can go
on from an earlier one, as [`make_train`][flaxsurgery.rl.make_train]'s can: ``train`` takes
and returns the replay buffers and the step and update counters.

gymnasium 1.x resets a finished environment by itself. The vector environment is made with
``AutoresetMode.SAME_STEP``: the step that ends an episode returns the next episode's first
observation, and the real last one in ``info["final_obs"]`` (see `real_next_obs`).
Transitions bootstrap on ``terminated`` only, as in the gymnax path.

Example:
  >>> import jax
  >>> from flaxsurgery.rl import DQNConfig, QNetwork
  >>> config = DQNConfig(total_steps=200, eval_every=100, learning_starts=100, eval_episodes=2)
  >>> view = HostView("CartPole-v1", obs_ids=("theta", "theta_dot"))
  >>> train = make_host_train(config, view, QNetwork(hidden=(8,), num_actions=view.num_actions))
  >>> out = train(jax.random.split(jax.random.key(0), 3))  # 3 agents at once
  >>> out.returns.shape  # (agents, evaluations): at steps 0, 100, 200
  (3, 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxsurgery.rl.dqn import (
    Buffer,
    DQNConfig,
    Trained,
    Transition,
    buffer_add,
    epsilon_greedy,
    make_learn,
    make_optimizer,
    start_buffer,
    start_learner,
)
from flaxsurgery.rl.envs import UnitView

# The unit IDs of some gymnasium environments' observations and actions, in their order.
OBS_IDS: dict[str, tuple[str, ...]] = {
    "CartPole-v1": ("x", "x_dot", "theta", "theta_dot"),
    "LunarLander-v3": (
        "x", "y", "vx", "vy", "angle", "angular_velocity", "left_leg", "right_leg",
    ),
}
ACTION_IDS: dict[str, tuple[str, ...]] = {
    "CartPole-v1": ("left", "right"),
    "LunarLander-v3": ("noop", "fire_left", "fire_main", "fire_right"),
}


@dataclasses.dataclass(frozen=True)
class HostView(UnitView):
    """A gymnasium environment restricted to some observation features and actions, by ID.

    The counterpart of [`EnvView`][flaxsurgery.rl.EnvView] for environments that step on the host.
    For an environment of your own, register it (``gymnasium.register(id=..., entry_point=...)``)
    and name its units with ``env_obs_ids`` and ``env_action_ids``.

    Attributes:
      env_id: a registered gymnasium ID, made with ``gymnasium.make``. Its observation must be a
        flat ``Box`` and its action space ``Discrete``.
      obs_ids: the observation features the agent sees, in its order (default: all).
      action_ids: the actions the agent may use; agent action ``i`` is ``action_ids[i]``
        (default: all).
      env_obs_ids: the IDs of the environment's observation features, in its order (default:
        `OBS_IDS` ``[env_id]``).
      env_action_ids: the IDs of the environment's actions ``0..n-1`` (default:
        `ACTION_IDS` ``[env_id]``).
      max_episode_steps: the time limit (truncation), if not the registered one.
    """

    env_id: str
    obs_ids: tuple[str, ...] | None = None
    action_ids: tuple[str, ...] | None = None
    env_obs_ids: tuple[str, ...] | None = None
    env_action_ids: tuple[str, ...] | None = None
    max_episode_steps: int | None = None

    def __post_init__(self):
        problems = []
        filled = {}
        for field, known in (("env_obs_ids", OBS_IDS), ("env_action_ids", ACTION_IDS)):
            ids = getattr(self, field)
            if ids is None and self.env_id not in known:
                problems.append(f"no {field} known for {self.env_id!r}: pass {field}=(...)")
            filled[field] = tuple(known.get(self.env_id, ()) if ids is None else ids)
        filled["obs_ids"] = tuple(filled["env_obs_ids"] if self.obs_ids is None else self.obs_ids)
        filled["action_ids"] = tuple(
            filled["env_action_ids"] if self.action_ids is None else self.action_ids
        )
        for field, value in filled.items():  # the view stays hashable
            object.__setattr__(self, field, value)
        self.check_ids(problems)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """One observation's shape: flat, ``obs_size`` features (as ``EnvView.obs_shape``)."""
        return (self.obs_size,)

    def observe(self, full_obs: np.ndarray) -> np.ndarray:
        """(..., full_size) -> float32 (..., obs_size): the features this view shows."""
        return np.asarray(full_obs, np.float32)[..., self.obs_index]

    def make(self) -> gym.Env:
        """One environment, checked against the view's unit IDs."""
        limit = {} if self.max_episode_steps is None else {"max_episode_steps": self.max_episode_steps}
        env = gym.make(self.env_id, **limit)
        obs_shape, actions = env.observation_space.shape, getattr(env.action_space, "n", None)
        if obs_shape != (len(self.env_obs_ids),) or actions != len(self.env_action_ids):
            env.close()
            raise ValueError(
                f"{self.env_id!r} has observations {obs_shape} and action space "
                f"{env.action_space}, but the view names {len(self.env_obs_ids)} observation "
                f"features and {len(self.env_action_ids)} discrete actions"
            )
        return env

    def make_vector(self, num_envs: int) -> gym.vector.SyncVectorEnv:
        """``num_envs`` environments stepped together, reset in the step that ends an episode."""
        return gym.vector.SyncVectorEnv(
            [self.make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
        )


def real_next_obs(obs: np.ndarray, info: dict) -> np.ndarray:
    """The observation each environment of a ``SAME_STEP`` vector step really reached.

    Where an episode ended, ``obs`` is already the next episode's first observation and the
    real last one is ``info["final_obs"]`` (marked by ``info["_final_obs"]``).

    Args:
      obs: (num_envs, ...) the observations the vector step returned.
      info: its info dict.

    Returns:
      A copy of ``obs`` with the final observations put back.
    """
    real = np.array(obs)
    for i in np.flatnonzero(info.get("_final_obs", ())):
        real[i] = info["final_obs"][i]
    return real


class HostAgents(NamedTuple):
    """A population's learner state on the device; every leaf has a leading agent axis. The
    replay buffers travel apart, so that ``update`` can reuse their memory (donation)."""

    params: Any
    target_params: Any
    opt_state: optax.OptState
    updates: jax.Array  # () int32 per agent, gradient steps applied so far
    key: jax.Array


def make_evaluate(view: HostView, apply: Callable, agents: int, config: DQNConfig):
    """Build ``evaluate(params) -> float (agents,)``: each agent's mean undiscounted return of
    the greedy policy over ``config.eval_episodes`` episodes, the same start states (seeds
    ``eval_seed + i``) for every agent and every call. Episodes run until they terminate or hit
    the time limit; only the environments still running are stepped."""
    episodes = config.eval_episodes
    envs = [view.make() for _ in range(agents * episodes)]
    greedy = jax.jit(jax.vmap(lambda p, o: jnp.argmax(apply(p, o), axis=-1)))

    def evaluate(params) -> np.ndarray:
        firsts = [env.reset(seed=config.eval_seed + i % episodes)[0] for i, env in enumerate(envs)]
        obs = view.observe(np.stack(firsts))  # (agents * episodes, obs_size)
        total = np.zeros(len(envs))
        running = np.ones(len(envs), bool)
        while running.any():
            action = np.asarray(greedy(params, obs.reshape(agents, episodes, -1))).ravel()
            for i in np.flatnonzero(running):
                full, reward, terminated, truncated, _ = envs[i].step(view.action_index[action[i]])
                obs[i] = view.observe(full)
                total[i] += reward
                running[i] = not (terminated or truncated)
        return total.reshape(agents, episodes).mean(axis=1)

    return evaluate


def collect(config: DQNConfig, view: HostView, act: Callable, env, agents: HostAgents,
            obs: np.ndarray, step: np.ndarray):
    """K steps of every environment of a population, epsilon-greedy.

    Args:
      config: hyperparameters (``collect_steps``, ``num_envs``).
      view: the environment as the agents see it.
      act: ``(params, obs, step, keys) -> (actions, keys)`` over the population, actions
        (agents, num_envs) indices into ``view.action_ids``.
      env: a ``SAME_STEP`` vector environment with ``num_envs`` environments per agent.
      agents: the population.
      obs: (agents, num_envs, obs_size) the current observations.
      step: (agents,) environment steps each agent took so far (epsilon's clock).

    Returns:
      ``(agents, transitions, obs, step)``: the agents with their next keys, the transitions
      (numpy leaves (agents, K * num_envs, ...), ordered as in the gymnax path), the last
      observations and the step count. A transition's ``next_obs`` is the real next
      observation, and ``terminated`` is False where the time limit cut the episode.
    """
    shape = obs.shape[:2]  # (agents, num_envs)
    steps = []
    for _ in range(config.collect_steps):
        action, key = act(agents.params, obs, step, agents.key)
        agents, action = agents._replace(key=key), np.asarray(action)
        full, reward, terminated, _, info = env.step(view.action_index[action.ravel()])
        next_obs = view.observe(real_next_obs(full, info)).reshape(obs.shape)
        steps.append(Transition(obs, action, np.asarray(reward, np.float32).reshape(shape),
                                next_obs, terminated.reshape(shape)))
        obs, step = view.observe(full).reshape(obs.shape), step + config.num_envs
    transitions = jax.tree.map(
        lambda *xs: np.stack(xs, axis=1).reshape(shape[0], -1, *xs[0].shape[2:]), *steps
    )
    return agents, transitions, obs, step


def make_host_train(
    config: DQNConfig,
    view: HostView,
    network: nn.Module,
    progress: Callable[[int], None] | None = None,
) -> Callable[..., Trained]:
    """Build the training function of a population of agents on a gymnasium environment.

    Args:
      config: hyperparameters; steps count each agent's environment transitions.
      view: the environment as the agents see it.
      network: a Linen module from ``view.obs_size`` features to ``view.num_actions`` Q-values.
      progress: optional function called with the environment step after every evaluation.

    Returns:
      ``train(keys, init_params=None, init_target=None, init_opt_state=None, init_buffer=None,
      init_steps=None, init_updates=None) -> Trained``: one agent per key (``keys`` (agents,));
      the ``init_*`` arguments, if given, have a leading agent axis, and so has every leaf of the
      result, as with ``jax.vmap`` of [`make_train`][flaxsurgery.rl.make_train], whose
      ``init_*`` arguments these are: a run goes on from an earlier one (its replay buffer, its
      environment-step counter that drives epsilon, its gradient-step counter that drives the
      target network's copies) and returns them where it ended. A given buffer is copied, never
      changed.
    """
    tx = make_optimizer(config)
    apply = network.apply
    iterations = config.eval_every // (config.collect_steps * config.num_envs)
    learn = make_learn(config, apply, tx)

    def act_one(params, obs, step, key):
        """Epsilon-greedy actions (num_envs,) of one agent, and its next key."""
        key, key_random, key_explore = jax.random.split(key, 3)
        return epsilon_greedy(config, apply(params, obs), step, key_random, key_explore), key

    def update_one(buffer: Buffer, agent: HostAgents, transitions: Transition):
        """Add one agent's K * num_envs transitions to its buffer, then G gradient steps."""
        buffer = buffer_add(buffer, transitions)
        key, key_batches = jax.random.split(agent.key)
        learner = learn(agent.params, agent.target_params, agent.opt_state, agent.updates,
                        buffer, key_batches)
        return buffer, HostAgents(learner.params, learner.target_params, learner.opt_state,
                                  learner.updates, key)

    act = jax.jit(jax.vmap(act_one))  # every agent on its own step count (epsilon's clock)
    update = jax.jit(jax.vmap(update_one), donate_argnums=0)  # the buffers are ours to reuse

    def start_one(key, init_params, init_target, init_opt_state, init_buffer, init_updates):
        """One agent's initial state (as [`make_train`][flaxsurgery.rl.make_train]'s), its
        buffer (given, else empty), and the seeds of its environments' first resets."""
        key_init, key_reset, key_run = jax.random.split(key, 3)
        params, target, opt_state = start_learner(
            network, tx, view.obs_shape, key_init, init_params, init_target, init_opt_state
        )
        updates = jnp.int32(0) if init_updates is None else jnp.asarray(init_updates, jnp.int32)
        agent = HostAgents(params, target, opt_state, updates, key_run)
        seeds = jax.random.randint(key_reset, (config.num_envs,), 0, 2**31 - 1)
        return agent, start_buffer(config, view.obs_shape, init_buffer), seeds

    start = jax.jit(jax.vmap(start_one))

    def train(keys, init_params=None, init_target=None, init_opt_state=None, init_buffer=None,
              init_steps=None, init_updates=None) -> Trained:
        if init_buffer is not None:  # ``update`` donates the buffers: work on a copy
            init_buffer = jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), init_buffer)
        agents, buffers, seeds = start(keys, init_params, init_target, init_opt_state,
                                       init_buffer, init_updates)
        evaluate = make_evaluate(view, apply, len(keys), config)
        env = view.make_vector(seeds.size)
        first, _ = env.reset(seed=np.asarray(seeds).ravel().tolist())
        obs = view.observe(first).reshape(len(keys), config.num_envs, -1)
        step = np.zeros(len(keys), np.int32) if init_steps is None else np.array(init_steps, np.int32)
        returns = [evaluate(agents.params)]
        for evaluation_step in config.eval_steps[1:]:  # steps of this run, as make_train's
            for _ in range(iterations):
                agents, transitions, obs, step = collect(config, view, act, env, agents, obs, step)
                buffers, agents = update(buffers, agents, transitions)
            returns.append(evaluate(agents.params))
            if progress is not None:
                progress(int(evaluation_step))
        env.close()
        return Trained(agents.params, agents.target_params, agents.opt_state,
                       jnp.asarray(np.stack(returns, axis=1)), buffers, jnp.asarray(step),
                       agents.updates)

    return train
