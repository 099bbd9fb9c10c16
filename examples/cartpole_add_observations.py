"""Experiment 1: the agent saw only x_dot and theta; now it sees all four CartPole features.

The old network's input space ``obs`` has IDs (x_dot, theta); the new one's (x, x_dot, theta,
theta_dot). The transplant moves each kept feature's kernel row to its ID's new position; the
rows of x and theta_dot start at zero (preserving) or fresh (seed rules). Both networks are the
CartPole default (120-84) trained with the CartPole defaults (flaxsurgery.rl.defaults).

Arms of the new phase: the restart protocol (transplant, transplant_seed, scratch), the
transplant continued (continue) and the old agent going on without surgery (control);
``--arms`` picks others (continue_seed), ``--reuse`` takes the rest from an earlier summary.

    python examples/cartpole_add_observations.py --seeds 20
"""

from experiments.dqn import CARTPOLE_THRESHOLD, CONTINUE_ARMS, Experiment, main
from flaxsurgery.rl import EnvView
from flaxsurgery.rl.defaults import default_config

EXPERIMENT = Experiment(
    name="cartpole_add_observations",
    old_view=EnvView("CartPole-v1", obs_ids=("x_dot", "theta")),
    new_view=EnvView("CartPole-v1"),
    old_hidden=(120, 84),
    new_hidden=(120, 84),
    config=default_config("CartPole-v1"),
    threshold=CARTPOLE_THRESHOLD,
)

if __name__ == "__main__":
    main(EXPERIMENT, arms=CONTINUE_ARMS)
