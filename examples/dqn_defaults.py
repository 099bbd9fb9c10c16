"""The per-environment DQN defaults, trained from scratch: the runs that chose them.

No transplant here: one arm, ``scratch``, the default network (``default_hidden``) on the
environment's full view with ``default_config``. Writes ``results/defaults_<env>/`` like an
experiment (summary.json with every seed's curve, curves.png).

    python examples/dqn_defaults.py --env CartPole-v1 --seeds 20
    python examples/dqn_defaults.py --env Acrobot-v1 --seeds 20
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from experiments import results
from experiments.common import Progress
from experiments.dqn import ACROBOT_THRESHOLD, CARTPOLE_THRESHOLD, population_train
from flaxsurgery.rl import EnvView, QNetwork
from flaxsurgery.rl.defaults import default_config, default_hidden

THRESHOLDS = {"CartPole-v1": CARTPOLE_THRESHOLD, "Acrobot-v1": ACROBOT_THRESHOLD}


def parse(default, text: str):
    """A --set value, as the type of the field's default."""
    if text == "None":
        return None
    if isinstance(default, bool):
        return text == "True"
    return type(default)(text) if default is not None else float(text)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(THRESHOLDS), required=True)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="a shorter run (default: the budget)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="other hidden widths")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="DQNConfig fields to change (scratch-only tuning runs)")
    parser.add_argument("--tag", default="", help="suffix of the results folder's name")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    config = default_config(args.env, args.steps)
    changes = dict(item.split("=") for item in args.set)
    config = dataclasses.replace(config, **{k: parse(getattr(config, k), v) for k, v in changes.items()})
    hidden = tuple(args.hidden) if args.hidden else default_hidden(args.env)
    view = EnvView(args.env)
    name = f"defaults_{args.env.split('-')[0].lower()}" + (
        "" if args.hidden is None else "_" + "_".join(map(str, hidden))) + args.tag
    start = time.perf_counter()
    train = population_train(config, view, QNetwork(hidden, view.num_actions),
                             Progress(name, "scratch", args.seeds, config.total_steps))
    returns = np.asarray(train(jax.random.split(jax.random.key(0), args.seeds)).returns)
    wall = time.perf_counter() - start
    threshold = THRESHOLDS[args.env]
    summary = {
        "experiment": name, "env": args.env, "seeds": args.seeds,
        "steps_per_phase": config.total_steps, "threshold": threshold, "wall_s": wall,
        "config": {"dqn": dataclasses.asdict(config), "hidden": list(hidden), "changes": args.set},
        "arms": {"scratch": results.summarise_arm(config.eval_steps, returns, threshold)},
    }
    results.write(summary, args.out / name, xlabel="environment steps",
                  ylabel="greedy evaluation return", title=f"{name} ({args.env})")
    final = returns[:, -1]
    print(f"\n{name}: {args.seeds} seeds, {config.total_steps:,} steps, {wall:.0f}s; final "
          f"{final.mean():.1f} +- {final.std(ddof=1):.1f} (min {final.min():.1f}, max {final.max():.1f})"
          f"\n\n{results.markdown_table(summary)}\n", flush=True)
    return summary


if __name__ == "__main__":
    main()
