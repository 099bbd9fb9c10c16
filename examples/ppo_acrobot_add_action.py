"""PPO, Acrobot: the agent could only use torques -1 and 0; now it may use +1 too.

The actor's output space (``out/0``, its logits) has IDs (torque-1, torque0) in the old network
and (torque-1, torque0, torque+1) in the new one; the critic's value is no action space and is
moved whole. The new action's logit starts:

- ``fresh``: from the new network's own initialisation;
- ``mean``: the mean of the old logits minus 1e-3, so the greedy action is kept, but the
  sampled policy gives the new action about the old actions' average probability;
- ``policy``: the mean minus 20, so its probability is below e^-20 of the old ones' average and
  the sampled policy is kept (KL below 1e-6 on the old agent's observations).

    python examples/ppo_acrobot_add_action.py --seeds 20
"""

import flaxsurgery as fs
from experiments.dqn import ACROBOT_THRESHOLD
from experiments.ppo import PPOExperiment, main
from flaxsurgery.rl import EnvView
from flaxsurgery.rl.ppo import ACTIONS, PPOConfig

EXPERIMENT = PPOExperiment(
    name="ppo_acrobot_add_action",
    old_view=EnvView("Acrobot-v1", action_ids=("torque-1", "torque0")),
    new_view=EnvView("Acrobot-v1"),
    old_hidden=(64, 64),
    new_hidden=(64, 64),
    config=PPOConfig(),
    threshold=ACROBOT_THRESHOLD,
    arms={
        "fresh": {"rules": {ACTIONS: fs.fresh()}},
        "mean": {"rules": {ACTIONS: fs.mean(offset=-1e-3)}},
        # The stochastic-policy preset; once the core has it: {"preset": "policy"}.
        "policy": {"rules": {ACTIONS: fs.mean(offset=-20.0)}},
    },
)

if __name__ == "__main__":
    main(EXPERIMENT)
