"""DQN transplant experiments: train an old agent, change its network, train on from the transplant.

An :class:`Experiment` is an old network with the environment view it was trained on, a new
network with its view, and the spec between them (unit IDs of the views, a layer map). A run:

1. ``old``: train the old network, one population of seeds in one jitted, vmapped call.
2. transplant every seed's parameters, target network and Adam state into the new network,
   with the function-preserving rules (arm ``transplant``) and the seeds' rules
   (arm ``transplant_seed``): one vmapped call per plan.
3. train the new network from each transplant and from scratch (arm ``scratch``): all three
   arms in one jitted, vmapped call, arm ``a`` seed ``i`` with the same training key.

Phases train with gymnax (:func:`population_train`) by default; ``trainer=`` swaps in
:func:`flaxsurgery.rl.host.make_host_train` for gymnasium environments (views are then
``HostView`` objects, which name units the same way).

It writes ``<out>/<name>/summary.json`` and ``<out>/<name>/curves.png`` and prints a markdown
table of the arms.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

import flaxsurgery as fs
from experiments import results
from experiments.common import (
    ARMS,
    PRESETS,
    Progress,
    ViewChange,
    init_population,
    parse_args,
    split_arms,
    stack_arms,
)
from flaxsurgery.rl.defaults import scaled
from flaxsurgery.rl.dqn import DQNConfig, QNetwork, Trained, make_optimizer, make_train
from flaxsurgery.rl.envs import EnvView


@dataclasses.dataclass(frozen=True)
class Experiment(ViewChange):
    """An old Q-network, a new one, and the spec between them: the attributes of
    :class:`~experiments.common.ViewChange` (``config`` a :class:`~flaxsurgery.rl.DQNConfig`)
    and these.

    Attributes:
      layer_map: ``{new layer path: old layer path or None}`` for networks whose layers do not
        pair by name (an inserted layer); see :func:`flaxsurgery.plan`.
      network: builds a Q-network from ``(hidden widths, number of actions)``: the MLP
        :class:`~flaxsurgery.rl.QNetwork` or the CNN :class:`~flaxsurgery.rl.ConvQNetwork`.
      spaces: unit IDs ``{space: (old IDs, new IDs)}`` that replace what the views say; empty
        for every honest experiment. A failure case uses it to keep IDs whose meaning changed.
    """

    config: DQNConfig
    layer_map: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    network: Callable[[tuple[int, ...], int], nn.Module] = QNetwork
    spaces: Mapping[str, tuple[Sequence, Sequence]] = dataclasses.field(default_factory=dict)

    def build(self, hidden: tuple[int, ...], num_actions: int) -> nn.Module:
        return self.network(hidden, num_actions)


# The mean evaluation return that counts as solving each environment.
CARTPOLE_THRESHOLD = 475.0
ACROBOT_THRESHOLD = -100.0


# ---------------------------------------------------------------------------------- spec


def make_plan(experiment: Experiment, preset: str) -> fs.Plan:
    """The transplant plan from the old network to the new one, by unit ID. The layouts are
    traced from the networks' forward passes: input space ``obs``, hidden spaces named after
    the layer that outputs them, output space ``out``. The views give the IDs of ``obs`` and
    ``out`` unless ``experiment.spaces`` says otherwise."""
    return experiment.plan("out", experiment.spaces, layer_map=dict(experiment.layer_map),
                           preset=preset)


def transplant_agents(plan: fs.Plan, old: Trained, fresh_params, fresh_opt_state):
    """Every seed's parameters, target network and Adam state, transplanted in one call.

    Args:
      plan: from :func:`make_plan`.
      old: the trained old population (leading seed axis).
      fresh_params: the new network's initialisation per seed, where fresh units come from.
      fresh_opt_state: a fresh optimizer state per seed (its structure for the new network).

    Returns:
      ``(params, target_params, opt_state)``, each with a leading seed axis.
    """

    def one(params, target, opt_state, fresh, fresh_opt):
        return (
            fs.transplant(params, plan, fresh),
            fs.transplant(target, plan, fresh),
            fs.transplant_state(opt_state, plan, fresh_opt),
        )

    return jax.jit(jax.vmap(one))(
        old.params, old.target_params, old.opt_state, fresh_params, fresh_opt_state
    )


def verify_first_seed(experiment: Experiment, plan: fs.Plan, old_params, new_params):
    """Compare seed 0's old and transplanted Q-networks on standard-normal observations."""
    old_0, new_0 = jax.tree.map(lambda leaf: leaf[0], (old_params, new_params))
    shape = (1000, *experiment.old_view.obs_shape)
    x = np.random.default_rng(0).standard_normal(shape, np.float32)
    return fs.verify(
        lambda v: experiment.old_network.apply(old_0, v),
        lambda v: experiment.new_network.apply(new_0, v),
        x,
        plan,
        inputs="obs",
        outputs="out",
    )


# ---------------------------------------------------------------------------------- run


def population_train(
    config: DQNConfig, view: EnvView, network: QNetwork, progress: Callable[[int], None]
) -> Callable[..., Trained]:
    """gymnax: every seed of a population in one jitted, vmapped call of
    :func:`~flaxsurgery.rl.make_train`; ``(keys, *init) -> Trained`` with a leading seed axis.
    :func:`flaxsurgery.rl.host.make_host_train` is the same for gymnasium environments."""
    return jax.jit(jax.vmap(make_train(config, view, network, progress)))


def run(
    experiment: Experiment, seeds: int = 20, seed: int = 0, trainer: Callable = population_train
) -> dict:
    """Run all phases of ``experiment`` with ``seeds`` seeds per arm; ``trainer`` builds each
    phase's population training function (:func:`population_train`'s signature).

    Returns:
      ``{arm: returns}``, each returns array (seeds, evaluations) of mean greedy returns at
      ``experiment.config.eval_steps``.
    """
    config, name = experiment.config, experiment.name
    tx = make_optimizer(config)
    key_old, key_new, key_init = jax.random.split(jax.random.key(seed), 3)

    # Phase 1: the old network, on the old view.
    progress = Progress(name, "old", seeds, config.total_steps)
    train_old = trainer(config, experiment.old_view, experiment.old_network, progress)
    old = train_old(jax.random.split(key_old, seeds))

    # Phase 2: transplant every seed, with each plan. Fresh values (and the scratch arm) come
    # from the same per-seed initialisation of the new network.
    new_net, new_view = experiment.new_network, experiment.new_view
    fresh = init_population(new_net, new_view.obs_shape, jax.random.split(key_init, seeds))
    fresh_opt = jax.vmap(tx.init)(fresh)
    starts = {}  # arm -> (params, target_params, opt_state), leading seed axis
    for arm, preset in PRESETS.items():
        plan = make_plan(experiment, preset)
        starts[arm] = transplant_agents(plan, old, fresh, fresh_opt)
        check = verify_first_seed(experiment, plan, old.params, starts[arm][0])
        print(
            f"[{name}] {arm} (preset {preset!r}):\n{plan.report()}\n"
            f"seed 0 on 1,000 random observations: max |Q_new - Q_old| = {check.max_abs_diff:.3g},"
            f" greedy agreement {check.greedy_agreement:.1%}",
            flush=True,
        )
    starts["scratch"] = (fresh, fresh, fresh_opt)

    # Phase 3: the new network from each start, every arm's seed i on the same key.
    new_arms = list(starts)
    progress = Progress(name, " + ".join(new_arms), len(new_arms) * seeds, config.total_steps)
    train_new = trainer(config, new_view, new_net, progress)
    stacked, keys = stack_arms(starts, key_new, seeds)
    new = train_new(keys, *stacked)
    return {"old": np.asarray(old.returns), **split_arms(new_arms, np.asarray(new.returns), seeds)}


# ---------------------------------------------------------------------------------- report


def _view_config(view: EnvView, hidden: Sequence[int], network: nn.Module) -> dict:
    return {"obs_ids": list(view.obs_ids), "action_ids": list(view.action_ids),
            "network": type(network).__name__, "hidden": list(hidden)}


def report(experiment: Experiment, returns: dict, wall_s: float, out: Path) -> dict:
    """Write ``summary.json`` and ``curves.png`` under ``out / experiment.name``; print the table."""
    config = experiment.config
    seeds = returns["old"].shape[0]
    summary = {
        "experiment": experiment.name,
        "env": experiment.new_view.env_id,
        "seeds": seeds,
        "steps_per_phase": config.total_steps,
        "threshold": experiment.threshold,
        "wall_s": wall_s,
        "config": {
            "dqn": dataclasses.asdict(config),
            "old": _view_config(experiment.old_view, experiment.old_hidden, experiment.old_network),
            "new": _view_config(experiment.new_view, experiment.new_hidden, experiment.new_network),
            "layer_map": dict(experiment.layer_map),
            "spaces": {space: [list(old), list(new)] for space, (old, new) in experiment.spaces.items()},
        },
        "arms": {
            arm: results.summarise_arm(config.eval_steps, returns[arm], experiment.threshold)
            for arm in ARMS
        },
        "paired_vs_scratch": {
            arm: results.paired_difference(returns[arm], returns["scratch"], config.eval_steps,
                                           experiment.threshold)
            for arm in PRESETS
        },
    }
    results.write(summary, out / experiment.name, xlabel="environment steps (0 = transplant)",
                  ylabel="greedy evaluation return", title=f"{experiment.name} ({summary['env']})")
    print(f"\n{results.headline(summary)}\n\n{experiment.name}: {seeds} seeds, "
          f"{config.total_steps:,} steps per phase, {wall_s:.0f}s\n\n"
          f"{results.markdown_table(summary)}\n", flush=True)
    return summary


def main(
    experiment: Experiment,
    argv: Sequence[str] | None = None,
    trainer: Callable = population_train,
    default_seeds: int = 20,
) -> dict:
    """Command line of an example: ``--seeds``, ``--steps`` (per phase), ``--out``; ``trainer``
    as in :func:`run`."""
    args = parse_args(
        f"Transplant experiment {experiment.name}.", argv, seeds=default_seeds,
        steps=experiment.config.total_steps,
        steps_help="environment steps per phase (keeps the number of evaluations and the shares"
        " of the run that explore and that wait for learning to start)",
    )
    if args.steps != experiment.config.total_steps:
        experiment = dataclasses.replace(experiment, config=scaled(experiment.config, args.steps))
    start = time.perf_counter()
    returns = run(experiment, seeds=args.seeds, trainer=trainer)
    return report(experiment, returns, time.perf_counter() - start, args.out)
