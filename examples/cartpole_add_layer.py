"""Experiment 3: one hidden layer of 8 becomes two layers of 8.

The new second layer (Dense_1) has no source: it starts as the identity (preserving; exact after
the ReLU before it) or near-identity (seed rules). The new output layer Dense_2 takes the old
output layer Dense_1's weights.

    python examples/cartpole_add_layer.py --seeds 20
"""

from flaxsurgery.rl import DQNConfig, EnvView
from flaxsurgery.rl.experiment import CARTPOLE_THRESHOLD, Experiment, main

EXPERIMENT = Experiment(
    name="cartpole_add_layer",
    old_view=EnvView("CartPole-v1"),
    new_view=EnvView("CartPole-v1"),
    old_hidden=(8,),
    new_hidden=(8, 8),
    config=DQNConfig(),
    threshold=CARTPOLE_THRESHOLD,
    layer_map={"params/Dense_1": None, "params/Dense_2": "params/Dense_1"},
)

if __name__ == "__main__":
    main(EXPERIMENT)
