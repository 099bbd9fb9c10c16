"""Issue 6, part 4: one table of every experiment's arms, from results/*/summary.json.

Rows per experiment: the function-preserving rules (arm ``transplant``), the seeds' rules
(``transplant_seed``) and ``scratch``. For ``digits_classes`` the return is test accuracy.

    python examples/rules_table.py [--results results] [--headline]
"""

import argparse
import json
from pathlib import Path

from experiments import results


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    parser.add_argument("--headline", action="store_true",
                        help="the short table: preserving transplant against scratch only")
    args = parser.parse_args(argv)
    paths = sorted(args.results.glob("*/summary.json"))
    if not paths:
        parser.error(f"no */summary.json under {args.results}")
    summaries = [json.loads(path.read_text()) for path in paths]
    # The DQN and digits transplant experiments: the defaults' scratch-only runs have no old
    # agent, and PPO's and the transformer's summaries have arms of their own (docs/ppo.md,
    # docs/transformer.md tabulate them).
    summaries = [s for s in summaries if {"old", "transplant", "transplant_seed"} <= set(s["arms"])
                 and s.get("learner", "dqn") != "ppo"]
    table = (results.headline_table if args.headline else results.rules_table)(summaries)
    print(table)
    return table


if __name__ == "__main__":
    main()
