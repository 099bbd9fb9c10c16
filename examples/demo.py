"""``make demo``: experiment 1 (CartPole, add observations) with the transplant that continues
training beside the one that restarts it and beside scratch, smaller than the published run.

The old agents see two of CartPole's four features; the new network sees all four. Three arms
train the new network, paired by seed: ``continue`` (the preserving transplant going on from the
old run: its replay buffer moved through the surgery, exploration and counters kept),
``transplant`` (the same transplant restarting: an empty buffer, epsilon back at 1) and
``scratch``. 6 seeds per arm at the full budget (300,000 steps per phase, the CartPole
defaults); results/cartpole_add_observations has the 20-seed run with the control. Progress
lines estimate each phase's time left.

Measured: 234 s of experiment, 240 s for the whole process, on two AMD EPYC CPU cores shared
with a test run, load average about 3.5 (results/demo_measured/timing.json).
"""

from cartpole_add_observations import EXPERIMENT

from experiments import results
from experiments.dqn import main

SEEDS = 6
ARMS = ("transplant", "scratch", "continue")

CLAIMS_AND_CHECKS = """\
How to read the two plans' reports above:
- A report's "preserves" is a claim about EVERY input: "function" means the new network computes
  the old one's Q-values on any observation (the new features x and theta_dot included).
- The seeds' rules give the new features' kernel rows fresh weights, so wherever x or theta_dot
  is not 0 the Q-values change: no claim holds on every input, and the report says "preserves
  none".
- The check under each report is a check on SAMPLES: 1,000 random observations of the old
  features, given to the new network with the new features at 0 (the old network has no input
  for them). There the fresh rows multiply 0, so it prints max difference 0 and 100%
  agreement. It shows what holds on those samples, not on every input: both are true at once."""


def phases_line(seeds: int, arms: tuple[str, ...]) -> str:
    """What the demo trains, phase by phase, so that each phase's progress can be placed."""
    return (f"Two phases: the old agents ({seeds} seeds), then the new network from each start "
            f"({len(arms)} arms x {seeds} seeds: {', '.join(arms)}). Each progress line says "
            "about how long its phase has left.")


if __name__ == "__main__":
    print(phases_line(SEEDS, ARMS), flush=True)
    summary = main(EXPERIMENT, ["--seeds", str(SEEDS), "--out", "results/demo"], arms=ARMS)
    print(f"{CLAIMS_AND_CHECKS}\n\nheadline ({SEEDS} seeds; results/cartpole_add_observations has"
          f" the 20-seed run):\n{results.headline(summary)}\n"
          f"plot: results/demo/{summary['experiment']}/curves.png")
