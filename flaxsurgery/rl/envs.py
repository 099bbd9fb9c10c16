"""gymnax environments seen through unit IDs.

An [`EnvView`][flaxsurgery.rl.EnvView] shows the agent a subset of an environment's observation features and
lets it use a subset of its actions, both named by unit ID. The units of an observation are
its last axis: the features of a flat observation (CartPole, Acrobot), the channels of an
image (MinAtar's (10, 10, C) grids). These are the IDs a transplant spec uses for the
network's input space (``obs``) and output space (``out``), so the view an agent was trained
on and the spec that moves it to a new view speak one language.

Example:
  >>> import jax
  >>> view = EnvView("CartPole-v1", obs_ids=("theta", "x_dot"))
  >>> obs, state = view.reset(jax.random.key(0))
  >>> obs.shape, view.num_actions
  ((2,), 2)
  >>> EnvView("Breakout-MinAtar", obs_ids=("paddle", "ball", "brick")).obs_shape
  (10, 10, 3)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from flaxsurgery.units import problems_error

# The unit IDs of each environment's full observation (its last axis: features or image
# channels) and of its actions (MinAtar: the minimal action set), in gymnax's order.
OBS_IDS: dict[str, tuple[str, ...]] = {
    "CartPole-v1": ("x", "x_dot", "theta", "theta_dot"),
    "Acrobot-v1": ("cos1", "sin1", "cos2", "sin2", "dtheta1", "dtheta2"),
    "Breakout-MinAtar": ("paddle", "ball", "trail", "brick"),
    "SpaceInvaders-MinAtar": (
        "cannon", "alien", "alien_left", "alien_right", "friendly_bullet", "enemy_bullet"
    ),
}
ACTION_IDS: dict[str, tuple[str, ...]] = {
    "CartPole-v1": ("left", "right"),
    "Acrobot-v1": ("torque-1", "torque0", "torque+1"),
    "Breakout-MinAtar": ("noop", "left", "right"),
    "SpaceInvaders-MinAtar": ("noop", "left", "right", "fire"),
}


@functools.cache
def _make(env_id: str) -> tuple[Any, Any]:
    """One gymnax environment and its default parameters per ID (cached).

    Made eagerly even when first asked for inside a trace, so that no tracer is cached.
    """
    with jax.ensure_compile_time_eval():
        return gymnax.make(env_id)


def _id_problems(kind: str, ids: tuple[str, ...], known: tuple[str, ...]) -> list[str]:
    """The problems with a view's ``ids`` (unknown or duplicate), as messages."""
    problems = [f"unknown {kind} ID {i!r} (known: {', '.join(known)})" for i in ids if i not in known]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    problems += [f"duplicate {kind} ID {i!r}" for i in duplicates]
    if not ids:
        problems.append(f"a view needs at least one {kind} ID")
    return problems


class UnitView:
    """What every view of an environment by unit ID has: the seen units and usable actions
    (``obs_ids``, ``action_ids``) among the environment's own (``env_obs_ids``,
    ``env_action_ids``), and the positions that map one onto the other.

    [`EnvView`][flaxsurgery.rl.EnvView] (gymnax) and `HostView` (gymnasium) are views.
    """

    env_id: str
    obs_ids: tuple[str, ...]
    action_ids: tuple[str, ...]
    env_obs_ids: tuple[str, ...]
    env_action_ids: tuple[str, ...]

    def check_ids(self, problems: list[str] = ()) -> None:
        """Raise one ValueError that lists ``problems`` and every unknown, duplicate or missing
        ID of the view."""
        problems = list(problems)
        if not problems:
            problems += _id_problems("observation", self.obs_ids, self.env_obs_ids)
            problems += _id_problems("action", self.action_ids, self.env_action_ids)
        if problems:
            raise problems_error(
                f"{type(self).__name__}({self.env_id!r}) does not fit the environment", problems)

    @property
    def obs_index(self) -> np.ndarray:
        """int32 (obs_size,): each seen unit's position on the full observation's last axis."""
        return np.array([self.env_obs_ids.index(i) for i in self.obs_ids], np.int32)

    @property
    def action_index(self) -> np.ndarray:
        """int32 (num_actions,): each agent action's environment action."""
        return np.array([self.env_action_ids.index(i) for i in self.action_ids], np.int32)

    @property
    def obs_size(self) -> int:
        """The number of observation units (features or channels) the view shows."""
        return len(self.obs_ids)

    @property
    def num_actions(self) -> int:
        return len(self.action_ids)


@dataclasses.dataclass(frozen=True)
class EnvView(UnitView):
    """A gymnax environment restricted to some observation features and actions, by ID.

    Attributes:
      env_id: a gymnax environment ID with known unit IDs (the keys of ``OBS_IDS``).
      obs_ids: the observation features (image channels) the agent sees, in the order it sees them
        (default: all, in the environment's order).
      action_ids: the actions the agent may use; agent action ``i`` is ``action_ids[i]``
        (default: all, in the environment's order).
    """

    env_id: str
    obs_ids: tuple[str, ...] | None = None
    action_ids: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.env_id not in OBS_IDS:
            raise ValueError(
                f"no unit IDs for environment {self.env_id!r}; known: {', '.join(OBS_IDS)}"
            )
        # Fill defaults and normalise lists to tuples (the view stays hashable).
        obs_ids = tuple(OBS_IDS[self.env_id] if self.obs_ids is None else self.obs_ids)
        action_ids = tuple(ACTION_IDS[self.env_id] if self.action_ids is None else self.action_ids)
        object.__setattr__(self, "obs_ids", obs_ids)
        object.__setattr__(self, "action_ids", action_ids)
        self.check_ids()

    @property
    def env_obs_ids(self) -> tuple[str, ...]:
        """The IDs of the environment's observation units, in its order."""
        return OBS_IDS[self.env_id]

    @property
    def env_action_ids(self) -> tuple[str, ...]:
        """The IDs of the environment's actions, in its order."""
        return ACTION_IDS[self.env_id]

    @property
    def env(self):
        """The underlying gymnax environment."""
        return _make(self.env_id)[0]

    @property
    def env_params(self):
        """The environment's default parameters."""
        return _make(self.env_id)[1]

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """One observation's shape: the environment's, with ``obs_size`` units on the last axis."""
        full_shape = self.env.observation_space(self.env_params).shape
        return (*full_shape[:-1], self.obs_size)

    @property
    def max_steps(self) -> int:
        """The episode's time limit (truncation)."""
        return int(self.env_params.max_steps_in_episode)

    def observe(self, full_obs: jax.Array) -> jax.Array:
        """(..., full_size) -> (..., obs_size): the units this view shows, on the last axis."""
        return full_obs[..., self.obs_index]

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        """Start an episode: ``(obs, state)``, obs shaped ``obs_shape``."""
        obs, state = self.env.reset(key, self.env_params)
        return self.observe(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array):
        """One gymnax 1.0 step with agent action ``action`` (an index into ``action_ids``).

        Returns:
          ``(obs, state, reward, terminated, truncated, info)`` as gymnax 1.0 does: after the
          last step of an episode ``obs`` is already the next episode's first observation and
          ``info["final_observation"]`` the real next observation; both are seen through the view.
        """
        env_action = jnp.asarray(self.action_index)[action]
        obs, state, reward, terminated, truncated, info = self.env.step(
            key, state, env_action, self.env_params
        )
        info = {**info, "final_observation": self.observe(info["final_observation"])}
        return self.observe(obs), state, reward, terminated, truncated, info
