"""Experiment 3: one hidden layer of 120 becomes two layers of 120.

The new second layer (Dense_1) has no source: it starts as the identity (preserving; exact after
the ReLU before it) or near-identity (seed rules). The new output layer Dense_2 takes the old
output layer Dense_1's weights. The new layer is square so that it can start as the identity;
120-120 was checked to learn CartPole from scratch with the CartPole defaults before any
transplant arm was run (docs/experiments.md).

Arms of the new phase: the restart protocol (transplant, transplant_seed, scratch), the
transplant continued (continue) and the old agent going on without surgery (control).

    python examples/cartpole_add_layer.py --seeds 20
"""

from experiments.dqn import CARTPOLE_THRESHOLD, CONTINUE_ARMS, Experiment, main
from flaxsurgery.rl import EnvView
from flaxsurgery.rl.defaults import default_config

EXPERIMENT = Experiment(
    name="cartpole_add_layer",
    old_view=EnvView("CartPole-v1"),
    new_view=EnvView("CartPole-v1"),
    old_hidden=(120,),
    new_hidden=(120, 120),
    config=default_config("CartPole-v1"),
    threshold=CARTPOLE_THRESHOLD,
    layer_map={"params/Dense_1": None, "params/Dense_2": "params/Dense_1"},
)

if __name__ == "__main__":
    main(EXPERIMENT, arms=CONTINUE_ARMS)
