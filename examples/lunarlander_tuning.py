"""Scratch-only tuning of the LunarLander DQN (host path): no transplant arm is trained here.

Trains ``--seeds`` agents of the new network (all four actions) from their own initialisation
with `BASE`, changed by ``--set field=value``, and appends one row (settings, greedy returns, wall time, load, command)
to ``results/tuning_lunarlander/runs.json``. The experiment's settings were fixed from these
rows before any transplant arm was run.

    python examples/lunarlander_tuning.py --seeds 20 --hidden 64,64 --set batch_size=128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from examples.lunarlander_add_actions import EXPERIMENT
from experiments import results
from experiments.common import Progress
from flaxsurgery.rl import DQNConfig, QNetwork
from flaxsurgery.rl.host import make_host_train

ROWS = Path("results/tuning_lunarlander/runs.json")

# Where the tuning started: the experiment's earlier settings (64-64 network, 100,000 steps,
# a 50,000-transition buffer, Adam at 6.3e-4, the target copied every 250 gradient steps,
# epsilon 1 -> 0.1 over 12,000 steps, batch 64, 0.5 gradient steps per environment step).
# Every row records its whole config.
BASE = DQNConfig(
    total_steps=100_000,
    buffer_size=50_000,
    learning_rate=6.3e-4,
    target_period=250,
    epsilon_end=0.1,
    epsilon_steps=12_000,
    eval_every=10_000,
    eval_episodes=5,
)


def parse_value(text: str):
    """``"128"`` -> 128, ``"6.3e-4"`` -> 0.00063, ``"true"`` -> True, else the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="the key of the run")
    parser.add_argument("--hidden", default=",".join(map(str, EXPERIMENT.new_hidden)))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a DQNConfig field changed from BASE")
    parser.add_argument("--name", default=None, help="the row's name")
    args = parser.parse_args(argv)
    changes = dict(item.split("=", 1) for item in args.set)
    config = dataclasses.replace(BASE, **{k: parse_value(v) for k, v in changes.items()})
    hidden = tuple(int(h) for h in args.hidden.split(","))
    view = EXPERIMENT.new_view
    name = args.name or f"{'-'.join(map(str, hidden))} " + " ".join(args.set)
    progress = Progress("lunarlander_tuning", name, args.seeds, config.total_steps)
    train = make_host_train(config, view, QNetwork(hidden, view.num_actions), progress)
    start = time.perf_counter()
    out = train(jax.random.split(jax.random.key(args.seed), args.seeds))
    wall_s = time.perf_counter() - start
    returns = np.asarray(out.returns)
    row = {
        "name": name,
        "hidden": list(hidden),
        "changes": changes,
        "config": dataclasses.asdict(config),
        "seeds": args.seeds,
        "seed": args.seed,
        "summary": results.summarise_arm(config.eval_steps, returns, EXPERIMENT.threshold),
        "returns": returns.tolist(),
        "wall_s": wall_s,
        "load_average": os.getloadavg(),
        "command": "python " + " ".join(sys.argv),
    }
    rows = json.loads(ROWS.read_text()) if ROWS.exists() else []
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    ROWS.write_text(json.dumps([*rows, row], indent=1) + "\n")
    s = row["summary"]
    print(f"{name}: final {s['final_return']:.1f} {s['final_ci95']}, reached 200: "
          f"{s.get('reached')}/{args.seeds}, {wall_s:.0f}s", flush=True)
    return row


if __name__ == "__main__":
    main()
