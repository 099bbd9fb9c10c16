"""``make demo``: experiment 1 (CartPole, add observations), smaller than the published run.

10 seeds per arm instead of 20, at the full budget (300,000 steps per phase, the CartPole
defaults), so that it finishes in about 10 minutes on two CPU cores. Prints the headline (seeds
that reach 475, the paired difference in steps to it) before the tables.
"""

from cartpole_add_observations import EXPERIMENT

from experiments import results
from experiments.dqn import main

SEEDS = 10

if __name__ == "__main__":
    summary = main(EXPERIMENT, ["--seeds", str(SEEDS), "--out", "results/demo"])
    print(f"headline ({SEEDS} seeds; results/cartpole_add_observations has the 20-seed run):\n"
          f"{results.headline(summary)}\nplot: results/demo/{summary['experiment']}/curves.png")
