"""Experiment 2: two hidden layers of 4 units grow to two layers of 16.

Hidden spaces keep their IDs by position: units 0..3 of each layer are the old ones, 4..15 are
new (fresh incoming weights and zero outgoing under the preserving rules; fresh under the seeds').

    python examples/cartpole_add_units.py --seeds 20
"""

from flaxsurgery.rl import DQNConfig, EnvView
from flaxsurgery.rl.experiment import CARTPOLE_THRESHOLD, Experiment, main

EXPERIMENT = Experiment(
    name="cartpole_add_units",
    old_view=EnvView("CartPole-v1"),
    new_view=EnvView("CartPole-v1"),
    old_hidden=(4, 4),
    new_hidden=(16, 16),
    config=DQNConfig(),
    threshold=CARTPOLE_THRESHOLD,
)

if __name__ == "__main__":
    main(EXPERIMENT)
