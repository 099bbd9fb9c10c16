"""Experiment 2: two hidden layers of 16 units grow to the CartPole default, 120 and 84.

Hidden spaces keep their IDs by position: units 0..15 of each layer are the old ones, the rest
are new (fresh incoming weights and zero outgoing under the preserving rules; fresh under the
seeds'). The old network is narrower than the defaults were chosen for: a 16-16 network learns
CartPole less reliably, and that is what the wider network is for.

Arms of the new phase: the restart protocol (transplant, transplant_seed, scratch), the
transplant continued (continue), its ablation (continue_buffer, continue_explore), the seeds'
rules continued (continue_seed) and the old agent going on without surgery (control);
``--arms`` picks some, ``--reuse`` takes the rest from an earlier summary (docs/experiments.md).

    python examples/cartpole_add_units.py --seeds 20
"""

from experiments.dqn import ABLATION_ARMS, CARTPOLE_THRESHOLD, Experiment, main
from flaxsurgery.rl import EnvView
from flaxsurgery.rl.defaults import default_config

EXPERIMENT = Experiment(
    name="cartpole_add_units",
    old_view=EnvView("CartPole-v1"),
    new_view=EnvView("CartPole-v1"),
    old_hidden=(16, 16),
    new_hidden=(120, 84),
    config=default_config("CartPole-v1"),
    threshold=CARTPOLE_THRESHOLD,
)

if __name__ == "__main__":
    main(EXPERIMENT, arms=(*ABLATION_ARMS, "continue_seed"))
