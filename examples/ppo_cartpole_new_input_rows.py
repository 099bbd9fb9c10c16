"""PPO CartPole add observations, and where the new features' weights end up.

Runs ``ppo_cartpole_add_observations.py``'s experiment (the same keys, so the same curves) and
then prints, per arm, the size of the first-layer rows that read the new features (x,
theta_dot) against the rows that read the old ones (x_dot, theta), in the actor and in the
critic, and how the new rows' size goes with each seed's final return.

    python examples/ppo_cartpole_new_input_rows.py --seeds 20 --out /tmp/results
"""

import numpy as np
from ppo_cartpole_add_observations import EXPERIMENT

from experiments.ppo import main

NEW_FEATURES, OLD_FEATURES = ("x", "theta_dot"), ("x_dot", "theta")


def row_norms(params, net: str, features) -> np.ndarray:
    """(seeds,): the mean L2 norm of the first-layer kernel rows of ``features``."""
    kernel = np.asarray(params["params"][net]["Dense_0"]["kernel"])  # (seeds, obs, hidden)
    rows = [EXPERIMENT.new_view.obs_ids.index(f) for f in features]
    return np.linalg.norm(kernel[:, rows], axis=-1).mean(axis=1)


if __name__ == "__main__":
    summary, params = main(EXPERIMENT)
    for arm in ("transplant", "transplant_seed", "scratch"):
        final = np.array(summary["arms"][arm]["final_per_seed"])
        print(f"{arm}:")
        for net in ("actor", "critic"):
            new = row_norms(params[arm], net, NEW_FEATURES)
            old = row_norms(params[arm], net, OLD_FEATURES)
            corr = np.corrcoef(new, final)[0, 1] if final.std() > 0 else float("nan")
            print(f"  {net}: new-feature rows {new.mean():.3f} (min {new.min():.3f}, max"
                  f" {new.max():.3f}), old-feature rows {old.mean():.3f};"
                  f" correlation of the new rows' norm with the final return {corr:+.2f}")
        print("  per seed (actor new rows, final): "
              + ", ".join(f"({n:.2f}, {f:.0f})" for n, f in zip(row_norms(params[arm], 'actor', NEW_FEATURES), final)))
