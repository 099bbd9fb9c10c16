"""What the gymnax trainers (the DQN and the PPO) share: greedy evaluation, its schedule, the
start of a run, and the loop of training intervals that each end in an evaluation.

Each trainer keeps its own state and transition types (a DQN's ``DQNState`` carries a target
network and a replay buffer, a PPO's ``PPOState`` an observation normaliser); what is the same
in both lives here, and each trainer imports it from here.

Example:
  >>> import jax.numpy as jnp
  >>> from flaxsurgery.rl.common import evaluation_steps, run_with_evaluations
  >>> evaluation_steps(total_steps=300, eval_every=100)
  array([  0, 100, 200, 300])
  >>> # a "training" that adds 1 per interval, "evaluated" as the value itself
  >>> state, scores = run_with_evaluations(lambda s: s + 1, lambda s: s * 1.0, jnp.float32(0),
  ...                                      evaluation_steps(300, 100))
  >>> state, scores
  (Array(3., dtype=float32), Array([0., 1., 2., 3.], dtype=float32))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.rl.envs import EnvView

State = TypeVar("State")


def evaluation_steps(total_steps: int, eval_every: int) -> np.ndarray:
    """int (total_steps // eval_every + 1,): the step of every evaluation of a run, 0 and each
    ``eval_every``."""
    return np.arange(0, total_steps + 1, eval_every)


def evaluation_keys(eval_seed: int, eval_episodes: int) -> jax.Array:
    """One key per evaluation episode, from ``eval_seed`` alone: every seed and every arm of an
    experiment is evaluated on the same episodes."""
    return jax.random.split(jax.random.key(eval_seed), eval_episodes)


def evaluate(view: EnvView, apply: Callable, params, keys: jax.Array) -> jax.Array:
    """Mean undiscounted return of the greedy policy over one episode per key.

    ``apply(params, obs)`` gives one score per action (Q-values or logits); the policy takes
    their argmax. Every episode runs to the environment's time limit; rewards after its end are
    masked.
    """

    def episode(key):
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = view.reset(key_reset)

        def step(carry, key):
            obs, env_state, total, alive = carry
            action = jnp.argmax(apply(params, obs))
            obs, env_state, reward, terminated, truncated, _ = view.step(key, env_state, action)
            total = total + jnp.where(alive, reward, 0.0)
            alive = alive & ~(terminated | truncated)
            return (obs, env_state, total, alive), None

        carry = (obs, env_state, jnp.float32(0.0), jnp.bool_(True))
        (_, _, total, _), _ = jax.lax.scan(step, carry, jax.random.split(key_steps, view.max_steps))
        return total

    return jnp.mean(jax.vmap(episode)(keys))


def reset_envs(view: EnvView, key: jax.Array, num_envs: int) -> tuple[jax.Array, Any]:
    """``(obs, env_state)`` of ``num_envs`` environments reset with keys split from ``key``;
    leaves (num_envs, ...)."""
    return jax.vmap(view.reset)(jax.random.split(key, num_envs))


def start_count(init: Any) -> jax.Array:
    """() int32: a run's counter at its start, 0 or a given count (an old run's, to go on)."""
    return jnp.int32(0) if init is None else jnp.asarray(init, jnp.int32)


def run_with_evaluations(
    advance: Callable[[State], State],
    score: Callable[[State], jax.Array],
    state: State,
    eval_steps: np.ndarray,
    progress: Callable[[int], None] | None = None,
) -> tuple[State, jax.Array]:
    """Evaluate ``state``, then ``len(eval_steps) - 1`` times train an interval and evaluate.

    Args:
      advance: trains one evaluation interval (``eval_every`` environment steps).
      score: the mean greedy return of a state.
      state: where the run starts.
      eval_steps: the step of every evaluation, 0 first (`evaluation_steps`).
      progress: optional host function called with the environment step after every interval
        (through ``jax.debug.callback``, once per evaluation even under ``vmap``).

    Returns:
      ``(final state, returns)``, returns (len(eval_steps),): the score at each of
      ``eval_steps``.
    """

    def interval(state, step: jax.Array):
        state = advance(state)
        returns = score(state)
        if progress is not None:
            # ``step`` comes from the scan's (unbatched) xs: one call per evaluation.
            jax.debug.callback(progress, step)
        return state, returns

    first = score(state)
    state, returns = jax.lax.scan(interval, state, jnp.asarray(eval_steps[1:]))
    return state, jnp.concatenate([first[None], returns])


def renamed(module: str, names: dict[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module's ``__getattr__`` that still gives each old name in ``names`` (``{old: (new
    name, object)}``) with a DeprecationWarning that says the new one; other names raise the
    usual AttributeError."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_name, value = names[name]
        warnings.warn(f"{module}.{name} is renamed {new_name}; the old name goes in a later"
                      " release", DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
