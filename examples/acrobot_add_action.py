"""Experiment 4: the Acrobot agent could only use torques -1 and 0; now it may use +1 too.

The output space ``out`` has IDs (torque-1, torque0) in the old network and (torque-1,
torque0, torque+1) in the new one. The new action's Q-value starts as the mean of the old ones
(preserving: the greedy action is kept) or fresh (seed rules). Both networks are the Acrobot
default (120-84) trained with the Acrobot defaults (flaxsurgery.rl.defaults).

Arms of the new phase: the restart protocol (transplant, transplant_seed, scratch), the
transplant continued (continue: the buffers' actions keep their IDs) and the old agent going
on without surgery (control).

    python examples/acrobot_add_action.py --seeds 20
"""

from experiments.dqn import ACROBOT_THRESHOLD, CONTINUE_ARMS, Experiment, main
from flaxsurgery.rl import EnvView
from flaxsurgery.rl.defaults import default_config

EXPERIMENT = Experiment(
    name="acrobot_add_action",
    old_view=EnvView("Acrobot-v1", action_ids=("torque-1", "torque0")),
    new_view=EnvView("Acrobot-v1"),
    old_hidden=(120, 84),
    new_hidden=(120, 84),
    config=default_config("Acrobot-v1"),
    threshold=ACROBOT_THRESHOLD,
)

if __name__ == "__main__":
    main(EXPERIMENT, arms=CONTINUE_ARMS)
