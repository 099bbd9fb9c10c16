"""What every transplant experiment shares: the arms, the plan between two networks, the arms
stacked into one population, progress lines and the command line.

An experiment trains an old network (arm ``old``), transplants every seed into a new network
with the function-preserving rules (arm ``transplant``) and the seeds' rules
(``transplant_seed``), and trains the new network from each transplant and from scratch
(``scratch``). The DQN (:mod:`experiments.dqn`), PPO (:mod:`experiments.ppo`) and digits
(:mod:`experiments.digits`) experiments build on these pieces.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import flaxsurgery as fs
from flaxsurgery.rl.envs import UnitView

ARMS = ("old", "transplant", "transplant_seed", "scratch")
PRESETS = {"transplant": "preserving", "transplant_seed": "seed"}


def traced(network: nn.Module, input_shape: Sequence[int]):
    """``(shapes, layout)``: the network's parameter shapes and its traced layout."""
    sample = jnp.zeros((2, *input_shape))  # a batch of 2 tells the batch axis from units
    shapes = jax.eval_shape(network.init, jax.random.key(0), sample)
    return shapes, fs.trace_layout(network.apply, shapes, sample)


def plan_between(
    old: tuple[nn.Module, Sequence[int]],
    new: tuple[nn.Module, Sequence[int]],
    spaces: Mapping[str, tuple[Sequence, Sequence]],
    **plan_kwargs,
) -> fs.Plan:
    """The plan from one network to another, both layouts traced from their forward passes.

    Args:
      old: the old network and the shape of one of its inputs.
      new: the new network and the shape of one of its inputs.
      spaces: unit IDs ``{space: (old IDs, new IDs)}``.
      **plan_kwargs: the rest of :func:`flaxsurgery.plan`'s arguments (``preset=``, ``rules=``,
        ``layer_map=``).
    """
    old_shapes, old_layout = traced(*old)
    new_shapes, new_layout = traced(*new)
    return fs.plan(old_shapes, new_shapes, old_layout, new_layout=new_layout,
                   spaces=dict(spaces), **plan_kwargs)


@dataclasses.dataclass(frozen=True)
class ViewChange:
    """What every RL experiment has: an old network on the view it was trained on, a new one on
    its view. Subclasses say which network a width list builds (:meth:`build`).

    Attributes:
      name: the results folder's name.
      old_view: the environment as the old network sees it (an ``EnvView``, or a ``HostView``
        for an environment that steps on the host).
      new_view: the environment as the new network sees it.
      old_hidden: the old network's hidden widths.
      new_hidden: the new network's hidden widths.
      config: the learner's hyperparameters of every phase; ``total_steps`` is each phase's
        budget.
      threshold: the greedy evaluation return counted as solved.
    """

    name: str
    old_view: UnitView
    new_view: UnitView
    old_hidden: tuple[int, ...]
    new_hidden: tuple[int, ...]
    config: Any
    threshold: float

    def build(self, hidden: tuple[int, ...], num_actions: int) -> nn.Module:
        raise NotImplementedError

    @property
    def old_network(self) -> nn.Module:
        return self.build(self.old_hidden, self.old_view.num_actions)

    @property
    def new_network(self) -> nn.Module:
        return self.build(self.new_hidden, self.new_view.num_actions)

    def plan(self, actions: str, spaces: Mapping[str, tuple] | None = None,
             **plan_kwargs) -> fs.Plan:
        """The plan from the old network to the new one: layouts traced, the IDs of the input
        space ``obs`` and of the action space ``actions`` from the views, ``spaces`` on top."""
        old_view, new_view = self.old_view, self.new_view
        return plan_between(
            (self.old_network, old_view.obs_shape),
            (self.new_network, new_view.obs_shape),
            {"obs": (old_view.obs_ids, new_view.obs_ids),
             actions: (old_view.action_ids, new_view.action_ids), **(spaces or {})},
            **plan_kwargs,
        )


def stack_arms(starts: Mapping[str, Any], key: jax.Array, seeds: int):
    """Every arm's starts as one population, and its training keys: arm ``a`` seed ``i`` trains
    on the same key for every ``a``.

    Args:
      starts: ``{arm: pytree with a leading seed axis}``, in the order the arms train.
      key: the training key of the new phase.
      seeds: seeds per arm.

    Returns:
      ``(stacked, keys)``: the starts concatenated on their seed axis, and (arms * seeds,) keys.
    """
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *starts.values())
    return stacked, jnp.concatenate([jax.random.split(key, seeds)] * len(starts))


def split_arms(arms: Sequence[str], population: Any, seeds: int) -> dict[str, Any]:
    """``{arm: its seeds}`` of a population stacked by :func:`stack_arms`: every leaf
    (arms * seeds, ...) cut into (seeds, ...) per arm."""
    return {arm: jax.tree.map(lambda leaf, i=i: leaf[i * seeds:(i + 1) * seeds], population)
            for i, arm in enumerate(arms)}


class Progress:
    """Host-side progress line of one training phase, called once per evaluation: the step,
    the seconds so far and, from the second call on, an estimate of the phase's time left."""

    def __init__(self, experiment: str, phase: str, seeds: int, total_steps: int):
        self.prefix = f"[{experiment}] {phase}: {seeds} seeds"
        self.total_steps = total_steps
        self.start = time.perf_counter()
        self.first: tuple[int, float] | None = None  # (step, time) of the first call
        print(f"{self.prefix}, compiling and training {total_steps:,} steps", flush=True)

    def __call__(self, step) -> None:
        now, step = time.perf_counter(), int(step)
        line = f"{self.prefix}, step {step:,}/{self.total_steps:,}, {now - self.start:.0f}s"
        if self.first is None:
            self.first = (step, now)
        elif step > self.first[0]:
            # The pace since the first call: the time before it includes compiling.
            rate = (now - self.first[1]) / (step - self.first[0])
            line += f", about {rate * (self.total_steps - step):.0f}s left"
        print(line, flush=True)


def parse_args(description: str, argv: Sequence[str] | None, *, seeds: int, steps: int,
               steps_help: str, arms: Sequence[str] | None = None,
               arms_help: str = "arms to train", reuse_help: str | None = None
               ) -> argparse.Namespace:
    """An example's command line: ``--seeds`` (at least 2), ``--steps`` (per phase), ``--out``;
    given default ``arms``, ``--arms`` (comma-separated names); given ``reuse_help``,
    ``--reuse`` (an earlier summary.json)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, default=seeds, help="seeds per arm (at least 2)")
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    if arms is not None:
        parser.add_argument("--arms", type=lambda text: tuple(text.split(",")),
                            default=tuple(arms), help=f"{arms_help} (comma-separated)")
    if reuse_help is not None:
        parser.add_argument("--reuse", type=Path, default=None, help=reuse_help)
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the 95%% interval needs two)")
    return args


def init_population(network: nn.Module, input_shape: Sequence[int], keys: jax.Array) -> Any:
    """The network's own initialisation per key, stacked on a leading seed axis; ``input_shape``
    is the shape of the sample it is initialised on."""
    return jax.vmap(lambda k: network.init(k, jnp.zeros(input_shape)))(keys)
