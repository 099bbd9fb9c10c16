"""PPO, Acrobot add an action: how the new action's starting margin trades KL against learning.

The same old agents and new network as ``ppo_acrobot_add_action.py``; each arm starts the new
action's logit at the mean of the old logits minus a margin (``fs.mean(offset=-margin)``). A
margin of 20 keeps the sampled policy (KL below 1e-6) but the new action is then almost never
sampled; smaller margins move the policy more at the start and let PPO try the action.

    python examples/ppo_acrobot_policy_margins.py --seeds 20
"""

import dataclasses

from ppo_acrobot_add_action import EXPERIMENT as ADD_ACTION

import flaxsurgery as fs
from experiments.ppo import main
from flaxsurgery.rl.ppo import ACTIONS

MARGINS = (1.0, 3.0, 6.0, 10.0)

EXPERIMENT = dataclasses.replace(
    ADD_ACTION,
    name="ppo_acrobot_policy_margins",
    arms={f"margin_{m:g}": {"rules": {ACTIONS: fs.mean(offset=-m)}} for m in MARGINS},
)

if __name__ == "__main__":
    main(EXPERIMENT)
