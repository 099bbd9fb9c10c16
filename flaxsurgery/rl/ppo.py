"""A PPO whose whole training run is one jit-able function (purejaxrl's structure).

``make_train(config, view, network)`` returns ``train(key, init_params=None,
init_opt_state=None)``; a population of seeds runs as ``jax.jit(jax.vmap(train))(keys)`` with
one key per seed. The run is nested ``lax.scan``s and no ``lax.cond``:

- evaluation intervals: ``eval_every`` environment steps, then a greedy evaluation;
- updates: a rollout of ``rollout_steps`` steps in each of ``num_envs`` environments, its
  advantages (GAE), then ``update_epochs`` epochs of ``num_minibatches`` clipped-PPO steps;
- the environment steps, the advantage recursion, the epochs and the minibatches.

The actor and the critic are separate MLPs ([`ActorCritic`][flaxsurgery.rl.ActorCritic]), so the actor's logits are
the network output whose units are actions. The advantage bootstraps on ``terminated`` only:
at a truncation (the time limit) the value of the real next observation,
``info["final_observation"]``, is used; at a termination zero. The recursion is cut at every
episode end, terminated or truncated, since the next step belongs to another episode.

A run can continue another: ``train``'s ``init_*`` arguments take what an old run's
`Trained` holds (parameters, Adam's state, the observation normaliser's statistics, the
step-size schedule's count), moved through a surgery where the network changed.

Example:
  >>> import jax
  >>> from flaxsurgery.rl import EnvView
  >>> from flaxsurgery.rl.ppo import ActorCritic, PPOConfig, make_train
  >>> config = PPOConfig(total_steps=256, num_envs=2, rollout_steps=64, eval_every=128,
  ...                    eval_episodes=2)
  >>> view = EnvView("CartPole-v1")
  >>> train = make_train(config, view, ActorCritic(hidden=(8,), num_actions=view.num_actions))
  >>> out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 3))
  >>> out.returns.shape  # (seeds, evaluations): at steps 0, 128, 256
  (3, 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxsurgery.rl.common import (
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
class PPOConfig:
    """PPO hyperparameters. Steps count environment transitions of one seed (all its envs).

    The defaults are CartPole-v1's (docs/ppo.md says how they were chosen).

    Attributes:
      total_steps: environment steps of the run.
      num_envs: environments stepped in parallel per seed.
      rollout_steps: steps of every environment per update.
      update_epochs: passes over each rollout.
      num_minibatches: minibatches per epoch (the rollout's ``num_envs * rollout_steps``
        transitions, shuffled).
      learning_rate: Adam's step size at the start of the run.
      anneal_lr: decay the step size linearly to zero over the run's updates (counted from 0,
        or from ``train``'s ``init_updates``: a continued run's count goes on from where the old
        run stopped; past the end the step size stays at zero).
      gamma: discount.
      gae_lambda: the advantage's lambda.
      clip_eps: the policy ratio's (and the value change's) clip range.
      ent_coef: weight of the entropy bonus.
      vf_coef: weight of the value loss.
      max_grad_norm: global gradient norm clip.
      normalize_obs: feed the networks observations standardised by running statistics of every
        observation the rollouts have seen (`ObsNormalizer`), clipped to
        ``[-obs_clip, obs_clip]``; off, the statistics are carried but not used.
      obs_clip: the clip of a standardised observation.
      eval_every: environment steps between greedy evaluations.
      eval_episodes: episodes per evaluation (fixed keys, the same for every seed and arm).
      eval_seed: seed of the evaluation keys.
    """

    total_steps: int = 512_000
    num_envs: int = 4
    rollout_steps: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_obs: bool = False
    obs_clip: float = 10.0
    eval_every: int = 10_240
    eval_episodes: int = 10
    eval_seed: int = 0

    def __post_init__(self):
        problems = []
        if self.eval_every % self.batch_size:
            problems.append(f"eval_every={self.eval_every} is not a multiple of num_envs *"
                            f" rollout_steps = {self.batch_size}")
        if self.total_steps % self.eval_every:
            problems.append(f"total_steps={self.total_steps} is not a multiple of"
                            f" eval_every={self.eval_every}")
        if self.batch_size % self.num_minibatches:
            problems.append(f"num_envs * rollout_steps = {self.batch_size} is not a multiple of"
                            f" num_minibatches={self.num_minibatches}")
        if problems:
            raise problems_error("PPOConfig does not fit together", problems)

    @property
    def batch_size(self) -> int:
        """Transitions per rollout: ``num_envs * rollout_steps``."""
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        """Rollouts (and PPO updates) in the run."""
        return self.total_steps // self.batch_size

    @property
    def eval_steps(self) -> np.ndarray:
        """int (num_evals + 1,): the step of every evaluation, 0 and each ``eval_every``."""
        return evaluation_steps(self.total_steps, self.eval_every)


class MLP(nn.Module):
    """Dense layers with tanh between them, orthogonally initialised (gain sqrt 2, and
    ``out_scale`` for the last layer), zero biases."""

    hidden: Sequence[int]
    out_size: int
    out_scale: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.tanh(nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.out_size, kernel_init=nn.initializers.orthogonal(self.out_scale))(x)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs on the same observation.

    ``apply(variables, obs) -> (logits, value)``: logits (..., num_actions) from ``actor``, a
    value (..., 1) from ``critic``. In a traced layout the input space is ``obs``, the logits'
    space (the actions) ``out/0`` and the value's ``out/1``.

    Attributes:
      hidden: the hidden widths of each MLP.
      num_actions: logits out.
    """

    hidden: Sequence[int]
    num_actions: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = MLP(self.hidden, self.num_actions, out_scale=0.01, name="actor")(obs)
        value = MLP(self.hidden, 1, out_scale=1.0, name="critic")(obs)
        return logits, value


# The space names of an ActorCritic's traced layout.
ACTIONS = "out/0"
VALUE = "out/1"


class RolloutStep(NamedTuple):
    """One environment step of a rollout; leaves (rollout_steps, num_envs) in a rollout.

    Not a replay transition (`flaxsurgery.rl.dqn.Transition`): it keeps what the policy and the
    value said when the step was taken, and whether the episode was cut by the time limit."""

    obs: jax.Array  # (..., *obs_shape)
    action: jax.Array  # (...,) int32
    log_prob: jax.Array  # (...,) log pi(action | obs) when it was taken
    value: jax.Array  # (...,) V(obs)
    reward: jax.Array  # (...,)
    next_value: jax.Array  # (...,) V(real next observation), info["final_observation"]
    terminated: jax.Array  # (...,) bool: no future
    truncated: jax.Array  # (...,) bool: the time limit; the future exists but is not seen


class Batch(NamedTuple):
    """What a PPO step trains on; leaves (batch, ...)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array  # advantage + value: the value's regression target


class ObsNormalizer(NamedTuple):
    """Running statistics of the observations (leaves ``obs_shape``, ``count`` a scalar).

    The field names are those [`flaxsurgery.transplant_normalizer`][flaxsurgery.transplant_normalizer] knows: a new feature
    starts at ``mean`` 0 and ``var`` 1, and the shared ``count`` is kept.
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array  # () float32: observations seen (a tiny start, so the first update rules)


class PPOState(NamedTuple):
    """What a PPO run carries from one update to the next (`make_train`'s scans)."""

    params: Any
    opt_state: optax.OptState
    env_state: Any  # (num_envs, ...)
    obs: jax.Array  # (num_envs, *obs_shape), as the environment gives it
    normalizer: ObsNormalizer
    updates: jax.Array  # () int32, PPO updates applied so far (the step-size schedule)
    key: jax.Array


class Trained(NamedTuple):
    """What ``train`` returns; with ``vmap`` every leaf gains a leading seed axis.

    ``params``, ``opt_state``, ``normalizer`` and ``updates`` are what a continued run starts
    from (``train``'s ``init_*`` arguments)."""

    params: Any
    opt_state: optax.OptState
    returns: jax.Array  # (num_evals + 1,) mean greedy return at each of config.eval_steps
    normalizer: ObsNormalizer
    updates: jax.Array  # () int32, the schedule's count at the end of the run


# ---------------------------------------------------------------------------------- pieces


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam's scaling with step size 1 (``eps=1e-5``).

    The step size is applied by the training loop from its own update count, so that Adam's
    state holds only what a transplant moves (its moments and their count).
    """
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm), optax.scale_by_adam(eps=1e-5)
    )


def step_size(config: PPOConfig, updates: jax.Array) -> jax.Array:
    """The step size after ``updates`` updates: constant, or linear to zero over
    ``config.num_updates`` and zero after (a continued count past the end never turns the step
    size negative)."""
    if not config.anneal_lr:
        return jnp.float32(config.learning_rate)
    return config.learning_rate * jnp.maximum(0.0, 1.0 - updates / config.num_updates)


def fresh_normalizer(obs_shape: Sequence[int]) -> ObsNormalizer:
    """Statistics that have seen nothing: mean 0, variance 1, a count of 1e-4 (as gym's
    ``NormalizeObservation``), so the first batch sets them."""
    return ObsNormalizer(jnp.zeros(obs_shape), jnp.ones(obs_shape), jnp.float32(1e-4))


def update_normalizer(config: PPOConfig, stats: ObsNormalizer, obs: jax.Array) -> ObsNormalizer:
    """The statistics with a batch ``obs`` (batch, *obs_shape) added (Chan et al.'s parallel
    update of mean and variance); unchanged when ``config.normalize_obs`` is off."""
    if not config.normalize_obs:
        return stats
    batch_mean, batch_var = obs.mean(axis=0), obs.var(axis=0)
    batch_count = obs.shape[0]
    total = stats.count + batch_count
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * batch_count / total
    summed = stats.var * stats.count + batch_var * batch_count + (
        delta**2 * stats.count * batch_count / total)
    return ObsNormalizer(mean, summed / total, total)


def normalize(config: PPOConfig, stats: ObsNormalizer, obs: jax.Array) -> jax.Array:
    """What the networks see of ``obs``: standardised by ``stats`` and clipped, or ``obs``
    itself when ``config.normalize_obs`` is off."""
    if not config.normalize_obs:
        return obs
    standard = (obs - stats.mean) / jnp.sqrt(stats.var + 1e-8)
    return jnp.clip(standard, -config.obs_clip, config.obs_clip)


def advantages(config: PPOConfig, rollout: RolloutStep) -> jax.Array:
    """GAE over a rollout (leaves (T, ...)): (T, ...) advantages.

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)`` with ``s'_t`` the real next
    observation, so a truncated step bootstraps and a terminated one does not; the recursion
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}`` stops at every episode end and at
    the rollout's end.
    """

    def backward(next_advantage, t: RolloutStep):
        delta = t.reward + config.gamma * (1.0 - t.terminated) * t.next_value - t.value
        done = t.terminated | t.truncated
        advantage = delta + config.gamma * config.gae_lambda * (1.0 - done) * next_advantage
        return advantage, advantage

    _, result = jax.lax.scan(backward, jnp.zeros_like(rollout.reward[0]), rollout, reverse=True)
    return result


def ppo_loss(config: PPOConfig, apply: Callable, params, batch: Batch) -> jax.Array:
    """Clipped surrogate + ``vf_coef`` * clipped value loss - ``ent_coef`` * entropy."""
    logits, value = apply(params, batch.obs)
    value = value[..., 0]
    log_probs = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_probs, batch.action[:, None], axis=-1)[:, 0]

    value_clipped = batch.value + jnp.clip(value - batch.value, -config.clip_eps, config.clip_eps)
    value_loss = 0.5 * jnp.mean(
        jnp.maximum((value - batch.target) ** 2, (value_clipped - batch.target) ** 2)
    )
    ratio = jnp.exp(log_prob - batch.log_prob)
    advantage = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    clipped = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    actor_loss = -jnp.mean(jnp.minimum(ratio * advantage, clipped * advantage))
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
    return actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy


def greedy_apply(config: PPOConfig, network: nn.Module) -> Callable:
    """``((variables, normalizer), obs) -> logits``: the actor alone on the normalised
    observation, for greedy evaluation (the statistics frozen)."""
    return lambda agent, obs: network.apply(agent[0], normalize(config, agent[1], obs))[0]


def policy_kl(old_logits: jax.Array, new_logits: jax.Array, index: np.ndarray) -> jax.Array:
    """KL(old policy || new policy) per sample, for sampled (softmax) policies.

    Args:
      old_logits: (..., old actions).
      new_logits: (..., new actions).
      index: int (new actions,): each new action's old action, ``-1`` for an action the old
        policy lacks (it has probability zero there, so only old actions contribute); e.g.
        ``plan.index(ACTIONS)``.
    """
    index = np.asarray(index)
    kept = np.flatnonzero(index >= 0)
    old_log = jax.nn.log_softmax(old_logits)[..., index[kept]]
    new_log = jax.nn.log_softmax(new_logits)[..., kept]
    return jnp.sum(jnp.exp(old_log) * (old_log - new_log), axis=-1)


def make_rollout(config: PPOConfig, view: EnvView, apply: Callable) -> Callable:
    """Build ``rollout(params, env_state, obs, key, normalizer=None) -> ((env_state, obs,
    normalizer), RolloutStep)``: ``rollout_steps`` steps of every environment with sampled
    actions; the transitions' leaves are (rollout_steps, num_envs, ...).

    ``obs`` are the environment's observations; every step first adds them to the normaliser's
    statistics (by default `fresh_normalizer`), then the networks see them normalised
    (`normalize`), and the transitions store what the networks saw."""

    def env_step(params, carry, key) -> tuple[tuple, RolloutStep]:
        """Step every environment once with a sampled action."""
        env_state, obs, stats = carry
        key_action, key_env = jax.random.split(key)
        stats = update_normalizer(config, stats, obs)
        seen = normalize(config, stats, obs)
        logits, value = apply(params, seen)  # (num_envs, A), (num_envs, 1)
        action = jax.random.categorical(key_action, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
        env_keys = jax.random.split(key_env, config.num_envs)
        next_obs, env_state, reward, terminated, truncated, info = jax.vmap(view.step)(
            env_keys, env_state, action
        )
        # The real next observation: next_obs except where an episode ended (then a reset's).
        _, next_value = apply(params, normalize(config, stats, info["final_observation"]))
        transition = RolloutStep(seen, action, log_prob, value[:, 0], reward, next_value[:, 0],
                                terminated, truncated)
        return (env_state, next_obs, stats), transition

    def rollout(params, env_state, obs, key, normalizer=None):
        if normalizer is None:
            normalizer = fresh_normalizer(obs.shape[1:])
        return jax.lax.scan(
            lambda carry, k: env_step(params, carry, k),
            (env_state, obs, normalizer),
            jax.random.split(key, config.rollout_steps),
        )

    return rollout


# ---------------------------------------------------------------------------------- train


def make_train(
    config: PPOConfig,
    view: EnvView,
    network: nn.Module,
    progress: Callable[[int], None] | None = None,
) -> Callable[..., Trained]:
    """Build the training function of one seed.

    Args:
      config: hyperparameters.
      view: the environment as the agent sees it; ``network`` maps its observations
        (``view.obs_shape``) to ``(logits over the view's actions, value)``.
      network: a Linen module such as [`ActorCritic`][flaxsurgery.rl.ActorCritic]; its variables are ``{"params": ...}``.
      progress: optional host function called with the environment step after every
        evaluation (through ``jax.debug.callback``, once per evaluation even under ``vmap``).

    Returns:
      ``train(key, init_params=None, init_opt_state=None, init_normalizer=None,
      init_updates=None) -> Trained``. ``init_params`` (e.g. a transplant) replaces the
      network's own initialisation, ``init_opt_state`` a fresh Adam state, ``init_normalizer``
      (e.g. [`flaxsurgery.transplant_normalizer`][flaxsurgery.transplant_normalizer] of an old run's) `fresh_normalizer`'s
      statistics, and ``init_updates`` (an old run's ``Trained.updates``, to continue its
      step-size schedule) the count 0.
    """
    tx = make_optimizer(config)
    apply = network.apply
    eval_keys = evaluation_keys(config.eval_seed, config.eval_episodes)
    updates_per_interval = config.eval_every // config.batch_size
    minibatch = config.batch_size // config.num_minibatches
    loss_grad = jax.grad(lambda p, b: ppo_loss(config, apply, p, b))
    collect = make_rollout(config, view, apply)
    greedy = greedy_apply(config, network)

    def minibatch_step(carry, batch: Batch):
        params, opt_state, lr = carry
        change, opt_state = tx.update(loss_grad(params, batch), opt_state, params)
        params = jax.tree.map(lambda p, c: p - lr * c, params, change)
        return (params, opt_state, lr), None

    def epoch(carry, key):
        """One pass over the rollout in shuffled minibatches."""
        params, opt_state, lr, batch = carry
        order = jax.random.permutation(key, config.batch_size)
        minibatches = jax.tree.map(  # leaves (num_minibatches, minibatch, ...)
            lambda x: x[order].reshape(config.num_minibatches, minibatch, *x.shape[1:]), batch
        )
        (params, opt_state, lr), _ = jax.lax.scan(
            minibatch_step, (params, opt_state, lr), minibatches
        )
        return (params, opt_state, lr, batch), None

    def update(state: PPOState, _) -> tuple[PPOState, None]:
        """A rollout, its advantages, then ``update_epochs`` epochs of PPO steps."""
        key, key_rollout, key_epochs = jax.random.split(state.key, 3)
        (env_state, obs, normalizer), rollout = collect(
            state.params, state.env_state, state.obs, key_rollout, state.normalizer)
        advantage = advantages(config, rollout)
        batch = Batch(rollout.obs, rollout.action, rollout.log_prob, rollout.value, advantage,
                      advantage + rollout.value)
        batch = jax.tree.map(lambda x: x.reshape(config.batch_size, *x.shape[2:]), batch)
        lr = step_size(config, state.updates)
        (params, opt_state, _, _), _ = jax.lax.scan(
            epoch, (state.params, state.opt_state, lr, batch),
            jax.random.split(key_epochs, config.update_epochs),
        )
        return PPOState(params, opt_state, env_state, obs, normalizer, state.updates + 1,
                          key), None

    def advance(state: PPOState) -> PPOState:
        """Train ``eval_every`` steps: ``eval_every / batch_size`` updates."""
        state, _ = jax.lax.scan(update, state, None, length=updates_per_interval)
        return state

    def train(key, init_params=None, init_opt_state=None, init_normalizer=None,
              init_updates=None) -> Trained:
        key_init, key_reset, key_run = jax.random.split(key, 3)
        if init_params is None:
            init_params = network.init(key_init, jnp.zeros(view.obs_shape))
        opt_state = tx.init(init_params) if init_opt_state is None else init_opt_state
        if init_normalizer is None:
            init_normalizer = fresh_normalizer(view.obs_shape)
        updates = start_count(init_updates)
        obs, env_state = reset_envs(view, key_reset, config.num_envs)
        state = PPOState(init_params, opt_state, env_state, obs, init_normalizer, updates,
                           key_run)
        state, returns = run_with_evaluations(  # returns (num_evals + 1,)
            advance, lambda s: evaluate(view, greedy, (s.params, s.normalizer), eval_keys),
            state, config.eval_steps, progress)
        return Trained(state.params, state.opt_state, returns, state.normalizer, state.updates)

    return train



# Renamed so that neither reads as the DQN's type of the same name.
__getattr__ = renamed(__name__, {"TrainState": ("PPOState", PPOState),
                                 "Transition": ("RolloutStep", RolloutStep)})
