"""PPO, CartPole: the agent saw only x_dot and theta; now it sees all four features.

The old actor's and critic's input space ``obs`` has IDs (x_dot, theta); the new one's (x,
x_dot, theta, theta_dot). The transplant moves each kept feature's kernel rows (in the actor
and in the critic) to its ID's new position; the rows of x and theta_dot start at zero
(``transplant``: the policy and the value are unchanged) or fresh (``transplant_seed``).

    python examples/ppo_cartpole_add_observations.py --seeds 20
"""

from experiments.dqn import CARTPOLE_THRESHOLD
from experiments.ppo import PPOExperiment, main
from flaxsurgery.rl import EnvView
from flaxsurgery.rl.ppo import PPOConfig

EXPERIMENT = PPOExperiment(
    name="ppo_cartpole_add_observations",
    old_view=EnvView("CartPole-v1", obs_ids=("x_dot", "theta")),
    new_view=EnvView("CartPole-v1"),
    old_hidden=(64, 64),
    new_hidden=(64, 64),
    config=PPOConfig(),
    threshold=CARTPOLE_THRESHOLD,
    arms={"transplant": {"preset": "preserving"}, "transplant_seed": {"preset": "seed"}},
)

if __name__ == "__main__":
    main(EXPERIMENT)
