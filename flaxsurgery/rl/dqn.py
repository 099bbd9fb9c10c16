"""A DQN whose whole training run is one jit-able function.

``make_train(config, view, network)`` returns ``train(key, init_params=None, ...)``; a population
of seeds runs as ``jax.jit(jax.vmap(train))(keys)`` with one key per seed. The run is three
nested ``lax.scan``s and no ``lax.cond`` (under ``vmap`` a ``cond`` runs both branches):

- evaluation intervals: ``eval_every`` environment steps, then a greedy evaluation;
- iterations: collect ``collect_steps`` steps in each of ``num_envs`` environments, then take
  ``gradient_steps`` gradient steps;
- the steps themselves.

Transitions bootstrap on ``terminated`` only: an episode cut by the time limit (``truncated``)
still has a future, and its real next observation is ``info["final_observation"]``.

Example:
  >>> import jax
  >>> from flaxsurgery.rl import DQNConfig, EnvView, QNetwork, make_train
  >>> config = DQNConfig(total_steps=200, eval_every=100, learning_starts=100, eval_episodes=2)
  >>> view = EnvView("CartPole-v1")
  >>> train = make_train(config, view, QNetwork(hidden=(8,), num_actions=view.num_actions))
  >>> out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 3))
  >>> out.returns.shape  # (seeds, evaluations): at steps 0, 100, 200
  (3, 3)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxsurgery.rl.common import (  # evaluate and evaluation_steps are imported from here too
    evaluate,
    evaluation_keys,
    evaluation_steps,
    renamed,
    reset_envs,
    run_with_evaluations,
    start_count,
)
from flaxsurgery.rl.envs import EnvView
from flaxsurgery.units import problems_error


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """DQN hyperparameters. Steps count environment transitions of one seed (all its envs).

    The class defaults are a generic starting point; the settings that solve each environment
    from scratch, used by the experiments, are [`flaxsurgery.rl.defaults.default_config`][flaxsurgery.rl.default_config]'s
    (docs/experiments.md says how they were chosen).

    Attributes:
      total_steps: environment steps of the run.
      num_envs: environments stepped in parallel per seed.
      collect_steps: K, steps of every environment per iteration.
      gradient_steps: G, gradient steps per iteration.
      buffer_size: replay buffer capacity, in transitions.
      batch_size: transitions per gradient step.
      learning_starts: transitions in the buffer before the first gradient step.
      learning_rate: Adam's step size.
      max_grad_norm: global gradient norm clip; ``None`` for no clipping.
      gamma: discount.
      target_period: gradient steps between target-network copies.
      epsilon_start: exploration rate at step 0.
      epsilon_end: exploration rate after ``epsilon_steps``.
      epsilon_steps: environment steps of the linear decay.
      double_dqn: pick the bootstrap action with the online network (Double DQN).
      huber: Huber loss instead of squared error.
      eval_every: environment steps between greedy evaluations.
      eval_episodes: episodes per evaluation (fixed keys, the same for every seed and arm).
      eval_seed: seed of the evaluation keys.
    """

    total_steps: int = 100_000
    num_envs: int = 4
    collect_steps: int = 25
    gradient_steps: int = 50
    buffer_size: int = 10_000
    batch_size: int = 64
    learning_starts: int = 1_000
    learning_rate: float = 1e-3
    max_grad_norm: float | None = 10.0
    gamma: float = 0.99
    target_period: int = 500
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_steps: int = 10_000
    double_dqn: bool = True
    huber: bool = True
    eval_every: int = 5_000
    eval_episodes: int = 10
    eval_seed: int = 0

    def __post_init__(self):
        per_iteration = self.collect_steps * self.num_envs
        problems = []
        if self.eval_every % per_iteration:
            problems.append(
                f"eval_every={self.eval_every} is not a multiple of collect_steps * num_envs"
                f" = {per_iteration}"
            )
        if self.total_steps % self.eval_every:
            problems.append(
                f"total_steps={self.total_steps} is not a multiple of eval_every={self.eval_every}"
            )
        if self.learning_starts < self.batch_size:
            problems.append(
                f"learning_starts={self.learning_starts} is below batch_size={self.batch_size}"
            )
        if problems:
            raise problems_error("DQNConfig does not fit together", problems)

    @property
    def eval_steps(self) -> np.ndarray:
        """int (num_evals + 1,): the step of every evaluation, 0 and each ``eval_every``."""
        return evaluation_steps(self.total_steps, self.eval_every)


class QNetwork(nn.Module):
    """An MLP from observation features to one Q-value per action (Dense_0, Dense_1, ...)."""

    hidden: Sequence[int]
    num_actions: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs  # the argument's name is the input space's name in a traced layout
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_actions)(x)


class ConvQNetwork(nn.Module):
    """A small CNN from image observations (..., H, W, C) to one Q-value per action.

    ``Conv_0`` (3x3, SAME padding) -> ReLU -> flatten (channels fastest) -> ``Dense_0`` ->
    ReLU -> ``Dense_1``. Takes a batch of images or a single one.

    Attributes:
      hidden: ``(conv filters, dense units)``.
      num_actions: Q-values out.
    """

    hidden: Sequence[int]
    num_actions: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        filters, units = self.hidden
        x = nn.relu(nn.Conv(filters, (3, 3))(obs))
        x = x.reshape((*x.shape[:-3], -1))
        x = nn.relu(nn.Dense(units)(x))
        return nn.Dense(self.num_actions)(x)


class Transition(NamedTuple):
    obs: jax.Array  # (..., *obs_shape)
    action: jax.Array  # (...,) int32, agent action index
    reward: jax.Array  # (...,)
    next_obs: jax.Array  # (..., *obs_shape), the real next observation
    terminated: jax.Array  # (...,) bool; truncation is not termination


class Buffer(NamedTuple):
    """A preallocated ring of transitions; ``count`` is how many were ever added."""

    data: Transition  # leaves (capacity, ...)
    count: jax.Array  # () int32


class DQNState(NamedTuple):
    """What a DQN run carries from one iteration to the next (`make_train`'s scans)."""

    params: Any
    target_params: Any
    opt_state: optax.OptState
    buffer: Buffer
    env_state: Any  # (num_envs, ...)
    obs: jax.Array  # (num_envs, *obs_shape)
    steps: jax.Array  # () int32, environment steps so far
    updates: jax.Array  # () int32, gradient steps applied so far
    key: jax.Array


class Actor(NamedTuple):
    """What the environment steps carry."""

    env_state: Any  # (num_envs, ...)
    obs: jax.Array  # (num_envs, *obs_shape)
    steps: jax.Array  # () int32, environment steps so far
    key: jax.Array


class Learner(NamedTuple):
    """What the gradient steps carry: the networks, Adam's state, and whether to learn yet."""

    params: Any
    target_params: Any
    opt_state: optax.OptState
    updates: jax.Array  # () int32, gradient steps applied so far
    ready: jax.Array  # () bool, the buffer holds learning_starts transitions


class Trained(NamedTuple):
    """What ``train`` returns; with ``vmap`` every leaf gains a leading seed axis.

    ``buffer``, ``steps`` and ``updates`` are where the run ended, so that a later run can go on
    from them (``train``'s ``init_buffer``, ``init_steps``, ``init_updates``); a trainer that
    does not keep them leaves them ``None``.
    """

    params: Any
    target_params: Any
    opt_state: optax.OptState
    returns: jax.Array  # (num_evals + 1,) mean greedy return at each of config.eval_steps
    buffer: Buffer | None = None
    steps: jax.Array | None = None  # () int32, environment steps at the end (epsilon's clock)
    updates: jax.Array | None = None  # () int32, gradient steps at the end


# ---------------------------------------------------------------------------------- buffer


def buffer_init(capacity: int, obs_shape: tuple[int, ...]) -> Buffer:
    """An empty buffer of ``capacity`` transitions of observations shaped ``obs_shape``."""
    data = Transition(
        obs=jnp.zeros((capacity, *obs_shape)),
        action=jnp.zeros((capacity,), jnp.int32),
        reward=jnp.zeros((capacity,)),
        next_obs=jnp.zeros((capacity, *obs_shape)),
        terminated=jnp.zeros((capacity,), bool),
    )
    return Buffer(data, jnp.int32(0))


def buffer_add(buffer: Buffer, batch: Transition) -> Buffer:
    """Append ``batch`` (leaves (n, ...)), overwriting the oldest transitions when full."""
    capacity = buffer.data.reward.shape[0]
    n = batch.reward.shape[0]
    slots = (buffer.count + jnp.arange(n)) % capacity
    data = jax.tree.map(lambda store, new: store.at[slots].set(new), buffer.data, batch)
    return Buffer(data, buffer.count + n)


def buffer_size(buffer: Buffer) -> jax.Array:
    """() int32: transitions currently held."""
    return jnp.minimum(buffer.count, buffer.data.reward.shape[0])


def buffer_sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Transition:
    """``batch_size`` transitions drawn uniformly, with replacement, from those held."""
    slots = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer_size(buffer), 1))
    return jax.tree.map(lambda store: store[slots], buffer.data)


# ---------------------------------------------------------------------------------- pieces


def epsilon(config: DQNConfig, step: jax.Array) -> jax.Array:
    """Exploration rate at environment step ``step``: linear decay, then constant."""
    fraction = jnp.clip(step / config.epsilon_steps, 0.0, 1.0)
    return config.epsilon_start + fraction * (config.epsilon_end - config.epsilon_start)


def td_loss(config: DQNConfig, apply: Callable, params, target_params, batch: Transition):
    """Mean TD loss of ``batch``; the bootstrap is cut only where an episode terminated."""
    q = apply(params, batch.obs)  # (B, A)
    q_taken = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]  # (B,)
    q_next_target = apply(target_params, batch.next_obs)  # (B, A)
    chooser = apply(params, batch.next_obs) if config.double_dqn else q_next_target
    next_action = jnp.argmax(chooser, axis=-1)  # (B,)
    next_value = jnp.take_along_axis(q_next_target, next_action[:, None], axis=-1)[:, 0]
    bootstrap = config.gamma * (1.0 - batch.terminated) * next_value
    error = q_taken - jax.lax.stop_gradient(batch.reward + bootstrap)  # (B,)
    return jnp.mean(optax.huber_loss(error) if config.huber else 0.5 * error**2)


def make_optimizer(config: DQNConfig) -> optax.GradientTransformation:
    """Adam, after global-norm clipping unless ``config.max_grad_norm`` is None.

    The chain has the same two states either way (``identity`` keeps the clip's place), so an
    optimizer state transplants the same whatever the clipping."""
    clip = (optax.identity() if config.max_grad_norm is None
            else optax.clip_by_global_norm(config.max_grad_norm))
    return optax.chain(clip, optax.adam(config.learning_rate))


def epsilon_greedy(
    config: DQNConfig, q: jax.Array, step: jax.Array, key_random: jax.Array, key_explore: jax.Array
) -> jax.Array:
    """int32 (...,): the greedy action of ``q`` (..., A), or with probability
    ``epsilon(config, step)`` a uniformly random one."""
    greedy = jnp.argmax(q, axis=-1)
    random = jax.random.randint(key_random, greedy.shape, 0, q.shape[-1])
    explore = jax.random.uniform(key_explore, greedy.shape) < epsilon(config, step)
    return jnp.where(explore, random, greedy)


def make_learn(
    config: DQNConfig, apply: Callable, tx: optax.GradientTransformation
) -> Callable[..., Learner]:
    """Build ``learn(params, target_params, opt_state, updates, buffer, key) -> Learner``: G
    gradient steps on G batches drawn from ``buffer`` with ``key``, applied only once the buffer
    holds ``learning_starts`` transitions. The G batches are drawn at once (the buffer does not
    change while learning), so the scan carries only the networks and Adam's state."""
    loss_and_grad = jax.value_and_grad(lambda p, t, b: td_loss(config, apply, p, t, b))

    def gradient_step(carry: Learner, batch: Transition) -> tuple[Learner, None]:
        """One gradient step, applied only once the buffer holds ``learning_starts``."""
        params, target, opt_state, updates, ready = carry
        _, grads = loss_and_grad(params, target, batch)
        change, new_opt_state = tx.update(grads, opt_state, params)
        # A select, not a cond: under vmap a cond whose predicate is batched runs both sides.
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(ready, new, old),
            (optax.apply_updates(params, change), new_opt_state),
            (params, opt_state),
        )
        updates = updates + ready
        sync = ready & (updates % config.target_period == 0)
        target = jax.tree.map(lambda p, t: jnp.where(sync, p, t), params, target)
        return Learner(params, target, opt_state, updates, ready), None

    def learn(params, target_params, opt_state, updates, buffer: Buffer, key) -> Learner:
        drawn = buffer_sample(buffer, key, config.gradient_steps * config.batch_size)
        batches = jax.tree.map(  # leaves (G, batch_size, ...)
            lambda x: x.reshape(config.gradient_steps, config.batch_size, *x.shape[1:]), drawn
        )
        ready = buffer_size(buffer) >= config.learning_starts
        learner = Learner(params, target_params, opt_state, updates, ready)
        learner, _ = jax.lax.scan(gradient_step, learner, batches)
        return learner

    return learn


# ---------------------------------------------------------------------------------- train


def start_learner(network: nn.Module, tx: optax.GradientTransformation, obs_shape, key,
                  init_params=None, init_target=None, init_opt_state=None):
    """A learner's ``(params, target_params, opt_state)`` at the start of training: the given
    ones (e.g. a transplant), else the network's own initialisation from ``key``, the target a
    copy of the parameters, and a fresh optimizer state."""
    if init_params is None:
        init_params = network.init(key, jnp.zeros(obs_shape))
    target = init_params if init_target is None else init_target
    opt_state = tx.init(init_params) if init_opt_state is None else init_opt_state
    return init_params, target, opt_state


def start_buffer(config: DQNConfig, obs_shape: tuple[int, ...], init_buffer: Buffer | None
                 ) -> Buffer:
    """The buffer a run starts with: ``init_buffer`` (e.g. moved through a surgery), else an
    empty one. A given buffer must hold ``config.buffer_size`` transitions of ``obs_shape``
    observations: a ring of another size would wrap at another place than the run expects."""
    if init_buffer is None:
        return buffer_init(config.buffer_size, obs_shape)
    expected = (config.buffer_size, *obs_shape)
    if init_buffer.data.obs.shape != expected or init_buffer.data.next_obs.shape != expected:
        raise ValueError(
            f"init_buffer holds observations shaped {init_buffer.data.obs.shape} (next_obs"
            f" {init_buffer.data.next_obs.shape}); this run needs {expected} (buffer_size,"
            " *the view's obs_shape)"
        )
    return init_buffer


def make_train(
    config: DQNConfig,
    view: EnvView,
    network: nn.Module,
    progress: Callable[[int], None] | None = None,
) -> Callable[..., Trained]:
    """Build the training function of one seed.

    Args:
      config: hyperparameters.
      view: the environment as the agent sees it; ``network`` maps its observations
        (``view.obs_shape``) to one Q-value per action of the view.
      network: a Linen module; its variables are ``{"params": ...}``.
      progress: optional host function called with the environment step after every
        evaluation (through ``jax.debug.callback``, once per evaluation even under ``vmap``).

    Returns:
      ``train(key, init_params=None, init_target=None, init_opt_state=None, init_buffer=None,
      init_steps=None, init_updates=None) -> Trained``.
      ``init_params`` (e.g. a transplant) replaces the network's own initialisation;
      ``init_target`` defaults to the initial parameters, ``init_opt_state`` to a fresh one.
      A run goes on from an earlier one with the rest: ``init_buffer`` (default empty; the
      first gradient step waits until it holds ``learning_starts`` transitions, so a full one
      learns at once), ``init_steps`` (default 0; epsilon follows this clock, so a kept count
      goes on exploring at the schedule's end value) and ``init_updates`` (default 0; the
      target network is copied whenever it is a multiple of ``target_period``).
    """
    tx = make_optimizer(config)
    apply = network.apply
    eval_keys = evaluation_keys(config.eval_seed, config.eval_episodes)
    iterations = config.eval_every // (config.collect_steps * config.num_envs)
    learn_batches = make_learn(config, apply, tx)

    def env_step(params, carry: Actor, _) -> tuple[Actor, Transition]:
        """Step every environment once, epsilon-greedy; return the transitions."""
        key, key_random, key_explore, key_env = jax.random.split(carry.key, 4)
        q = apply(params, carry.obs)  # (num_envs, num_actions)
        action = epsilon_greedy(config, q, carry.steps, key_random, key_explore)
        env_keys = jax.random.split(key_env, config.num_envs)
        obs, env_state, reward, terminated, _, info = jax.vmap(view.step)(
            env_keys, carry.env_state, action
        )
        transitions = Transition(carry.obs, action, reward, info["final_observation"], terminated)
        return Actor(env_state, obs, carry.steps + config.num_envs, key), transitions

    def collect(state: DQNState) -> DQNState:
        """K steps in every environment, stored in the buffer at once (K * num_envs)."""
        actor = Actor(state.env_state, state.obs, state.steps, state.key)
        actor, transitions = jax.lax.scan(
            functools.partial(env_step, state.params), actor, None, length=config.collect_steps
        )  # leaves (K, num_envs, ...)
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), transitions)
        return state._replace(buffer=buffer_add(state.buffer, flat), env_state=actor.env_state,
                              obs=actor.obs, steps=actor.steps, key=actor.key)

    def learn(state: DQNState) -> DQNState:
        """G gradient steps (`make_learn`)."""
        key, key_batches = jax.random.split(state.key)
        learner = learn_batches(state.params, state.target_params, state.opt_state,
                                state.updates, state.buffer, key_batches)
        return state._replace(params=learner.params, target_params=learner.target_params,
                              opt_state=learner.opt_state, updates=learner.updates, key=key)

    def iteration(state: DQNState, _) -> tuple[DQNState, None]:
        """Collect K steps in every environment, then take G gradient steps."""
        return learn(collect(state)), None

    def advance(state: DQNState) -> DQNState:
        """Train ``eval_every`` steps: ``eval_every / (collect_steps * num_envs)`` iterations."""
        state, _ = jax.lax.scan(iteration, state, None, length=iterations)
        return state

    def train(key, init_params=None, init_target=None, init_opt_state=None, init_buffer=None,
              init_steps=None, init_updates=None) -> Trained:
        key_init, key_reset, key_run = jax.random.split(key, 3)
        init_params, target, opt_state = start_learner(
            network, tx, view.obs_shape, key_init, init_params, init_target, init_opt_state
        )
        obs, env_state = reset_envs(view, key_reset, config.num_envs)
        state = DQNState(
            params=init_params,
            target_params=target,
            opt_state=opt_state,
            buffer=start_buffer(config, view.obs_shape, init_buffer),
            env_state=env_state,
            obs=obs,
            steps=start_count(init_steps),
            updates=start_count(init_updates),
            key=key_run,
        )
        state, returns = run_with_evaluations(  # returns (num_evals + 1,)
            advance, lambda s: evaluate(view, apply, s.params, eval_keys), state,
            config.eval_steps, progress)
        return Trained(state.params, state.target_params, state.opt_state, returns,
                       state.buffer, state.steps, state.updates)

    return train


# ``TrainState`` was this module's name for `DQNState`; PPO's state had the same name.
__getattr__ = renamed(__name__, {"TrainState": ("DQNState", DQNState)})
