"""Limits, a failure case: the actions' meaning is swapped while their IDs are kept.

The old agent (the CartPole default, 120-84, with the CartPole defaults) learned CartPole with
output units ``left`` (push the cart left) and ``right``.
In the new environment the wiring is reversed: the unit still called ``left`` pushes the cart
right. The spec pairs units by their IDs, as it should, but the IDs no longer mean what they
meant, so the transplant copies the network exactly and its greedy policy is exactly wrong.
Nothing is added, so both presets give the same copy. With honest IDs (``out`` from
``("left", "right")`` to ``("right", "left")``) the plan would permute the two output rows and
keep the policy; the point here is what happens when the IDs lie.

    python examples/cartpole_swapped_actions.py --seeds 20
"""

from experiments.dqn import CARTPOLE_THRESHOLD, Experiment, main
from flaxsurgery.rl import EnvView
from flaxsurgery.rl.defaults import default_config

EXPERIMENT = Experiment(
    name="cartpole_swapped_actions",
    old_view=EnvView("CartPole-v1"),
    new_view=EnvView("CartPole-v1", action_ids=("right", "left")),  # agent action 0 pushes right
    old_hidden=(120, 84),
    new_hidden=(120, 84),
    config=default_config("CartPole-v1"),
    threshold=CARTPOLE_THRESHOLD,
    spaces={"out": (("left", "right"), ("left", "right"))},  # the IDs as kept, by position
)

if __name__ == "__main__":
    main(EXPERIMENT)
