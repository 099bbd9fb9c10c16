"""Conv surgery: a Breakout-MinAtar agent gets the ball-trail channel and a wider conv layer.

MinAtar observations are 10x10 grids with one boolean channel per object; the channels are
the input space ``obs``, with IDs (paddle, ball, trail, brick). The old agent sees no
``trail`` (which way the ball moves) and has 8 conv filters; the new one sees all four
channels and has 16. Both are ``ConvQNetwork``: Conv 3x3 -> ReLU -> flatten -> Dense(32) ->
ReLU -> Dense(3 actions). The layouts are traced from the forward pass (the flatten gives
``Dense_0``'s input axis as ``Flat(Conv_0, 100)``). Under the preserving rules the trail's
kernel slice is zero and the new filters have fresh incoming and zero outgoing weights (the
rows of ``Dense_0`` they feed); under the seeds' rules both are fresh.

The budget (20,000 steps per phase, one gradient step of 32 per 4 environment steps, 5 seeds)
was chosen from scratch-only runs before any transplant arm was run (docs/minatar.md).

    python examples/minatar_add_channel.py --seeds 5
"""

from experiments.dqn import Experiment, main
from flaxsurgery.rl import ConvQNetwork, DQNConfig, EnvView

# Mean greedy return (bricks hit per episode) counted as learned: four times the level of a
# fresh network (about 0.5), reached by scratch-only runs in 8,000-14,000 steps.
BREAKOUT_THRESHOLD = 2.0

EXPERIMENT = Experiment(
    name="minatar_add_channel",
    old_view=EnvView("Breakout-MinAtar", obs_ids=("paddle", "ball", "brick")),
    new_view=EnvView("Breakout-MinAtar"),
    old_hidden=(8, 32),
    new_hidden=(16, 32),
    config=DQNConfig(
        total_steps=20_000,
        gradient_steps=25,
        batch_size=32,
        target_period=250,
        epsilon_steps=4_000,
        eval_every=2_000,
    ),
    threshold=BREAKOUT_THRESHOLD,
    network=ConvQNetwork,
)

if __name__ == "__main__":
    main(EXPERIMENT)
