"""Scratch-only PPO runs that choose the hyperparameters (no transplant arm is involved).

Each run trains the full-view agent from scratch on one environment and writes its returns
and configuration to ``results/ppo_tuning/<env>_<tag>.json``; docs/ppo.md lists the runs.

    python examples/ppo_tune.py --env Acrobot-v1 --seeds 4 --tag lr1e-3 --set learning_rate=1e-3
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from flaxsurgery.rl import EnvView
from flaxsurgery.rl.ppo import ActorCritic, PPOConfig, make_train


def parse_value(text: str):
    """``"1e-3"`` -> 1e-3, ``"64,64"`` -> (64, 64), ``"false"`` -> False."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "," in text:
        return tuple(int(v) for v in text.split(",") if v)
    return float(text) if any(c in text for c in ".e") else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=100,
                        help="population key (not the experiments')")
    parser.add_argument("--hidden", default="64,64")
    parser.add_argument("--tag", default="default")
    parser.add_argument("--set", nargs="*", default=[], help="PPOConfig fields, name=value")
    parser.add_argument("--out", type=Path, default=Path("results/ppo_tuning"))
    args = parser.parse_args()

    changes = dict(item.split("=", 1) for item in args.set)
    config = PPOConfig(**{k: parse_value(v) for k, v in changes.items()})
    hidden = parse_value(args.hidden + ",")
    view = EnvView(args.env)
    network = ActorCritic(hidden, view.num_actions)
    start = time.perf_counter()

    def progress(step):
        print(f"[{args.env} {args.tag}] step {int(step):,}/{config.total_steps:,}, "
              f"{time.perf_counter() - start:.0f}s", flush=True)

    train = jax.jit(jax.vmap(make_train(config, view, network, progress)))
    returns = np.asarray(train(jax.random.split(jax.random.key(args.seed), args.seeds)).returns)
    wall = time.perf_counter() - start
    mean = returns.mean(0)
    record = {
        "env": args.env, "tag": args.tag, "seeds": args.seeds, "hidden": list(hidden),
        "config": dataclasses.asdict(config), "wall_s": wall,
        "steps": config.eval_steps.tolist(), "returns": returns.tolist(),
        "final_mean": float(mean[-1]), "final_per_seed": returns[:, -1].tolist(),
        "last5_mean": float(returns[:, -5:].mean()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.env}_{args.tag}_{args.seeds}seeds.json"
    path.write_text(json.dumps(record) + "\n")
    every = max(1, len(mean) // 10)
    shown = zip(config.eval_steps[::every], mean[::every])
    print(" ".join(f"{s // 1000}k:{m:.0f}" for s, m in shown))
    print(f"final mean {mean[-1]:.1f}; per seed {np.round(returns[:, -1], 1).tolist()}; "
          f"last 5 evals mean {record['last5_mean']:.1f}; {wall:.0f}s")


if __name__ == "__main__":
    main()
