"""Experiment 1: the agent saw only x_dot and theta; now it sees all four CartPole features.

The old network's input space ``obs`` has IDs (x_dot, theta); the new one's (x, x_dot, theta,
theta_dot). The transplant moves each kept feature's kernel row to its ID's new position; the
rows of x and theta_dot start at zero (preserving) or fresh (seed rules).

    python examples/cartpole_add_observations.py --seeds 20
"""

from flaxsurgery.rl import DQNConfig, EnvView
from flaxsurgery.rl.experiment import CARTPOLE_THRESHOLD, Experiment, main

EXPERIMENT = Experiment(
    name="cartpole_add_observations",
    old_view=EnvView("CartPole-v1", obs_ids=("x_dot", "theta")),
    new_view=EnvView("CartPole-v1"),
    old_hidden=(16, 16),
    new_hidden=(16, 16),
    config=DQNConfig(),
    threshold=CARTPOLE_THRESHOLD,
)

if __name__ == "__main__":
    main(EXPERIMENT)
