"""PPO, Acrobot add an action: continue the old run through the surgery instead of restarting it.

The change of ``ppo_acrobot_add_action.py`` (torques -1 and 0, then -1, 0 and +1; 64-64 actor
and critic; the same budget and keys), with a learner that standardises its observations by
running statistics (``PPOConfig(normalize_obs=True)``), the way practitioners' PPO often runs.
Every transplanted arm starts the new action's logit with the ``mean`` rule (the mean of the
old logits minus 1e-3: the greedy action kept) and moves the actor, the critic and Adam's state:

- ``restart``: the new phase starts the way a fresh run does, with fresh normaliser statistics
  and the step-size schedule from its start (what ``ppo_acrobot_add_action.py`` does);
- ``continue``: the old run's normaliser moved through the surgery
  (:func:`flaxsurgery.transplant_normalizer`), the schedule restarted, since the old run
  annealed it linearly to zero;
- ``continue_kept_schedule``: the normaliser moved and the schedule's count kept (its step
  size stays at zero);
- ``control``: the old agent going on with its own network, normaliser and view, the schedule
  restarted, on the same keys;
- ``scratch``: the new network from its own initialisation.

These settings were fixed before any of their results were seen.

    python examples/ppo_acrobot_continue.py --seeds 20
"""

import dataclasses

from ppo_acrobot_add_action import EXPERIMENT as ADD_ACTION

import flaxsurgery as fs
from experiments.ppo import Continue, main
from flaxsurgery.rl.ppo import ACTIONS

MEAN = {"rules": {ACTIONS: fs.mean(offset=-1e-3)}}

EXPERIMENT = dataclasses.replace(
    ADD_ACTION,
    name="ppo_acrobot_continue",
    config=dataclasses.replace(ADD_ACTION.config, normalize_obs=True),
    arms={
        "restart": MEAN,
        "continue": Continue(MEAN, keep_schedule=False),
        "continue_kept_schedule": Continue(MEAN, keep_schedule=True),
    },
    control=True,
    restart="restart",
)

if __name__ == "__main__":
    main(EXPERIMENT)
