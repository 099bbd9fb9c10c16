"""What float rounding alone gives a function-preserving width change, per dtype.

Both hidden layers of a 64-64 ReLU Q-network (6 observations, 3 actions; the output layer
scaled so that its Q-values reach 120 on the samples, as a trained agent's do) grow to 96 units
by ``fs.surgery`` (new units: fresh incoming weights, zero outgoing). The new network computes
the same function, but its sums have more (zero) terms, which XLA may order differently, so the
outputs differ by rounding. ``fs.verify`` measures it over 4,096 standard-normal inputs, 5
seeds, in float32, float16 and bfloat16: ``max_abs_diff`` grows with the outputs' magnitude,
``max_rel_diff`` stays within ``fs.ROUNDING[dtype]`` (docs/errors.md). The summary also holds
each dtype's machine epsilon and ``fs.ROUNDING`` value, and the greedy margin
(``fs.rules.greedy_margin``) a new action would need on each network (docs/rules.md).

    python examples/verify_rounding.py [--seeds 5] [--samples 4096]
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import flaxsurgery as fs
from flaxsurgery.rl.dqn import QNetwork

DTYPES = ("float32", "float16", "bfloat16")
OLD_HIDDEN, NEW_HIDDEN = (64, 64), (96, 96)
OBSERVATIONS, ACTIONS = 6, 3
Q_MAX = 120.0  # the largest |Q| on the samples: a trained Acrobot or CartPole agent's order


def q_network(key: jax.Array, hidden: tuple[int, ...], x: jax.Array) -> tuple[QNetwork, dict]:
    """A Q-network of `hidden` widths and its float32 variables."""
    model = QNetwork(hidden=hidden, num_actions=ACTIONS)
    return model, model.init(key, x[:2])


def scaled_head(model: QNetwork, variables: dict, x: jax.Array, q_max: float) -> dict:
    """`variables` with the output layer (kernel and bias) scaled so that max |Q| on `x` is `q_max`."""
    scale = q_max / float(jnp.max(jnp.abs(model.apply(variables, x))))
    head = f"Dense_{len(model.hidden)}"
    params = dict(variables["params"])
    params[head] = jax.tree_util.tree_map(lambda p: p * scale, params[head])
    return {"params": params}


def cast(tree, dtype: str):
    return jax.tree_util.tree_map(lambda p: p.astype(dtype), tree)


def output_magnitude(variables: dict, head: str) -> float:
    """``max_j |b_j| + sum_i |W_ij|``: the magnitude ``fs.rules.greedy_margin`` reads (R = 1)."""
    kernel = np.asarray(variables["params"][head]["kernel"], np.float32)
    bias = np.asarray(variables["params"][head]["bias"], np.float32)
    return float(np.max(np.abs(bias) + np.abs(kernel).sum(axis=0)))


def measure(seed: int, dtype: str, samples: int) -> dict:
    """One seed's width change in `dtype`: what ``fs.verify`` reports, and the greedy margin."""
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (samples, OBSERVATIONS))
    old_model, old = q_network(keys[1], OLD_HIDDEN, x)
    old = cast(scaled_head(old_model, old, x, Q_MAX), dtype)
    new_model, fresh = q_network(keys[2], NEW_HIDDEN, x)
    x = x.astype(dtype)
    result = fs.surgery(old_model, old, new_model, cast(fresh, dtype), x[:4])
    report = result.verify(x)
    head = f"Dense_{len(OLD_HIDDEN)}"
    return {
        "claim": result.plan.preserves(),
        "max_abs_q": float(jnp.max(jnp.abs(old_model.apply(old, x).astype(jnp.float32)))),
        "max_abs_diff": report.max_abs_diff,
        "max_rel_diff": report.max_rel_diff,
        "greedy_agreement": report.greedy_agreement,
        "greedy_margin": fs.rules.greedy_margin(output_magnitude(old, head), OLD_HIDDEN[-1], [dtype]),
    }


def summarise(runs: list[dict], dtype: str) -> dict:
    """One dtype's seeds: the largest differences over them, each seed's, and the dtype's bounds."""
    per_seed = {k: [run[k] for run in runs] for k in runs[0] if k != "claim"}
    return {
        "claims": sorted({run["claim"] for run in runs}),
        "eps": float(jnp.finfo(dtype).eps),
        "rounding": fs.ROUNDING[dtype],
        "max_abs_q": max(per_seed["max_abs_q"]),
        "max_abs_diff": max(per_seed["max_abs_diff"]),
        "max_rel_diff": max(per_seed["max_rel_diff"]),
        "min_greedy_agreement": min(per_seed["greedy_agreement"]),
        "within_rounding": max(per_seed["max_rel_diff"]) <= fs.ROUNDING[dtype],
        "per_seed": per_seed,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per dtype")
    parser.add_argument("--samples", type=int, default=4096, help="inputs fs.verify compares on")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    dtypes = {dtype: summarise([measure(seed, dtype, args.samples) for seed in range(args.seeds)], dtype)
              for dtype in DTYPES}
    summary = {
        "experiment": "verify_rounding",
        "network": {"observations": OBSERVATIONS, "actions": ACTIONS, "old_hidden": list(OLD_HIDDEN),
                    "new_hidden": list(NEW_HIDDEN), "q_max": Q_MAX},
        "seeds": args.seeds,
        "samples": args.samples,
        "dtypes": dtypes,
        "wall_s": time.perf_counter() - start,
    }
    path = args.out / "verify_rounding" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"verify_rounding: {OLD_HIDDEN} -> {NEW_HIDDEN}, {args.seeds} seeds, {args.samples} inputs")
    print(f"{'dtype':9} {'max |Q|':>8} {'max_abs_diff':>12} {'max_rel_diff':>12} {'ROUNDING':>9} "
          f"{'eps':>8} {'margin':>8}")
    for dtype, row in dtypes.items():
        print(f"{dtype:9} {row['max_abs_q']:8.1f} {row['max_abs_diff']:12.2e} {row['max_rel_diff']:12.2e} "
              f"{row['rounding']:9.2e} {row['eps']:8.1e} {max(row['per_seed']['greedy_margin']):8.2e}")
    print(f"summary: {path}")
    return summary


if __name__ == "__main__":
    main()
