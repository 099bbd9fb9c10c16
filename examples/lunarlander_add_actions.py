"""LunarLander: the agent could fire only its side engines; now it has all four actions.

gymnax has no LunarLander, so this experiment trains through the host path
(:mod:`flaxsurgery.rl.host`): gymnasium's ``LunarLander-v3`` (Box2D) steps on the host, the
network and its updates are jitted, and all agents of a phase train at once. The output space
``out`` has IDs (fire_left, fire_right) in the old network and (noop, fire_left, fire_main,
fire_right) in the new one. The new actions' Q-values start as the mean of the old ones
(preserving: the greedy action is kept) or fresh (seed rules).

    python examples/lunarlander_add_actions.py --seeds 5 --steps 100000
"""

from experiments.dqn import Experiment, main
from flaxsurgery.rl import DQNConfig
from flaxsurgery.rl.host import HostView, make_host_train

# Fixed before any transplant arm was run: our DQN's defaults, with a larger buffer, 10%
# final exploration and a 12,000-step decay, a smaller step size and a shorter target period
# (as common LunarLander DQN settings have them), and 5 evaluation episodes every 10,000
# steps to keep the host-side evaluation affordable (docs/host_envs.md).
CONFIG = DQNConfig(
    total_steps=100_000,
    buffer_size=50_000,
    learning_rate=6.3e-4,
    target_period=250,
    epsilon_end=0.1,
    epsilon_steps=12_000,
    eval_every=10_000,
    eval_episodes=5,
)

LUNAR_LANDER_THRESHOLD = 200.0

EXPERIMENT = Experiment(
    name="lunarlander_add_actions",
    old_view=HostView("LunarLander-v3", action_ids=("fire_left", "fire_right")),
    new_view=HostView("LunarLander-v3"),
    old_hidden=(64, 64),
    new_hidden=(64, 64),
    config=CONFIG,
    threshold=LUNAR_LANDER_THRESHOLD,
)

if __name__ == "__main__":
    main(EXPERIMENT, trainer=make_host_train, default_seeds=5)
