"""``make demo``: experiment 1 (CartPole, add observations) with 20 seeds; prints its plot."""

from cartpole_add_observations import EXPERIMENT

from flaxsurgery.rl.experiment import main

if __name__ == "__main__":
    summary = main(EXPERIMENT, ["--seeds", "20"])
    print(f"plot: results/{summary['experiment']}/curves.png")
