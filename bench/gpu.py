"""The GPU run: transplant and whole-agent surgery at 1B parameters, a 1024-seed DQN
population, and a 20-seed continuation experiment, within 8 minutes on one GPU.

    python -m bench.gpu              # on a GPU (make gpu); rows into bench/results.json
    python -m bench.gpu --small      # the same parts at toy sizes: a few seconds on a CPU

Parts, each in its own process (so that each starts with the device's whole memory, and one
that would overrun the budget is stopped):

- ``transplant``: a jitted core transplant of an MLP whose hidden layers grow (1.1B new
  parameters), against a jitted device copy of the new tree, both timed in one run.
- ``surgery``: ``fs.surgery`` of a flax ``TrainState`` with Adam at that size (trace, plan and
  move of parameters and both moments), against a jitted copy of the new state; the first call
  (compilation included) is reported beside the median of the later ones.
- ``population``: environment steps/s of the CartPole DQN with its default settings, 1024
  seeds in one ``jax.jit(jax.vmap(train))``, against 1 seed.
- ``continuation``: ``examples/cartpole_add_units.py``'s experiment, 20 seeds, arms
  ``scratch,continue,control``, its summary under ``results/gpu_<device>/``.

Rows are keyed by ``(name, params)``: a rerun replaces the rows it measures again and keeps the
rest. Each part's time limit is what is left of the budget, less the shares kept for the parts
after it; a part that reaches its limit is stopped, and the run says so.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BUDGET_S = 480.0

# Each part's share of the budget: the time kept for it while earlier parts run.
SHARES = {"transplant": 0.2, "surgery": 0.3, "population": 0.2, "continuation": 0.3}

# Sizes per mode. MLP: inputs, hidden widths (old -> new), hidden layers, outputs. At full size
# the new MLP has 1024*16384 + 4*16384**2 + 16384*1024 weights: 1.11B parameters.
SIZES = {
    "full": {"inputs": 1024, "old_width": 15360, "new_width": 16384, "hidden": 5,
             "outputs": 1024, "repeats": 5, "seeds": 1024, "population_steps": 40_000,
             "experiment_seeds": 20, "experiment_steps": None},
    "small": {"inputs": 8, "old_width": 24, "new_width": 32, "hidden": 3, "outputs": 4,
              "repeats": 2, "seeds": 8, "population_steps": 800, "experiment_seeds": 2,
              "experiment_steps": 1_200},
}
# A child's exit status when its part's trees do not fit in the device's memory.
DOES_NOT_FIT = 3
EXPERIMENT = "cartpole_add_units"
# The continue arm and its control, with scratch: the summary pairs every arm against scratch.
EXPERIMENT_ARMS = "scratch,continue,control"


def log(message: str) -> None:
    print(f"  {message}", flush=True)


def mlp_widths(size: dict, width_key: str) -> list[int]:
    """Inputs, ``hidden`` layers of the width under ``width_key``, outputs."""
    return [size["inputs"], *[size[width_key]] * size["hidden"], size["outputs"]]


def parameters(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def fits_in_memory(needed_bytes: float, what: str) -> bool:
    """Whether ``needed_bytes`` fit in 80% of the device's memory (always, where the device
    reports none: a CPU); says so when they do not."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if limit is None or needed_bytes <= 0.8 * limit:
        return True
    log(f"stopped: {what} needs about {needed_bytes / 1e9:.1f} GB, the device has"
        f" {limit / 1e9:.1f} GB")
    return False


# ----------------------------------------------------------------------------- the parts


def part_transplant(size: dict) -> list[dict]:
    """A jitted transplant of a growing MLP against a jitted copy of the new tree."""
    import flaxsurgery as fs
    from bench.common import record, seconds
    from bench.transplant_bench import dense_chain

    old_widths, new_widths = mlp_widths(size, "old_width"), mlp_widths(size, "new_width")
    shapes = {"old": jax.eval_shape(lambda: dense_chain(jax.random.key(0), old_widths, "")),
              "new": jax.eval_shape(lambda: dense_chain(jax.random.key(1), new_widths, ""))}
    n_old, n_new = parameters(shapes["old"]), parameters(shapes["new"])
    log(f"transplant: {n_old / 1e9:.3f}B -> {n_new / 1e9:.3f}B float32 parameters")
    if not fits_in_memory(4 * (n_old + 3 * n_new), "the transplant (old, fresh, new, copy)"):
        return []
    spaces = ["obs", *[f"h{i}" for i in range(size["hidden"])], "out"]
    layout = fs.chain_layout(spaces, [f"Dense_{i}" for i in range(size["hidden"] + 1)], prefix="")
    start = time.perf_counter()
    plan = fs.plan(shapes["old"], shapes["new"], layout)
    plan_s = time.perf_counter() - start
    old = jax.jit(lambda k: dense_chain(k, old_widths, ""))(jax.random.key(0))
    fresh = jax.jit(lambda k: dense_chain(k, new_widths, ""))(jax.random.key(1))
    transplant = jax.jit(lambda o, f: fs.transplant(o, plan, f))
    copy = jax.jit(lambda f: jax.tree.map(jnp.copy, f))
    start = time.perf_counter()
    compiled = transplant.lower(old, fresh).compile()
    compile_s = time.perf_counter() - start
    log(f"planned in {plan_s:.2f}s, compiled in {compile_s:.2f}s; timing")
    t_ours = seconds(lambda: compiled(old, fresh), size["repeats"])
    t_copy = seconds(lambda: copy(fresh), size["repeats"])
    log(f"transplant {t_ours * 1e3:.2f} ms, copy {t_copy * 1e3:.2f} ms")
    row = record("gpu_transplant_vs_copy", "time", t_ours, t_copy, "s", old_params=n_old,
                 new_params=n_new, baseline_is="a jitted copy of the new tree")
    row["measured"] = {"plan_s": plan_s, "compile_s": compile_s}
    return [row]


def part_surgery(size: dict) -> list[dict]:
    """``fs.surgery`` of a TrainState with Adam against a jitted copy of the new state."""
    import flax.linen as nn
    import optax
    from flax.training import train_state

    import flaxsurgery as fs
    from bench.common import record, seconds

    class MLP(nn.Module):
        widths: tuple[int, ...]

        @nn.compact
        def __call__(self, x):
            for width in self.widths[:-1]:
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(self.widths[-1])(x)

    def make_state(model, key):
        params = model.init(key, jnp.zeros((1, size["inputs"])))
        return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                             tx=optax.adam(1e-3))

    old_model = MLP(tuple(mlp_widths(size, "old_width")[1:]))
    new_model = MLP(tuple(mlp_widths(size, "new_width")[1:]))
    shapes = {name: jax.eval_shape(lambda m=m: make_state(m, jax.random.key(0)))
              for name, m in (("old", old_model), ("new", new_model))}
    n_old, n_new = parameters(shapes["old"].params), parameters(shapes["new"].params)
    log(f"surgery: TrainState with Adam, {n_old / 1e9:.3f}B -> {n_new / 1e9:.3f}B parameters"
        " (three times as many numbers with Adam's moments)")
    if not fits_in_memory(4 * 3 * (n_old + 3 * n_new), "the surgery (old, fresh, new, copy)"):
        return []
    old_state = jax.jit(lambda k: make_state(old_model, k))(jax.random.key(0))
    # Adam's moments of a trained agent are not zero: give them values, so that they move.
    old_state = old_state.replace(opt_state=jax.jit(
        lambda s: jax.tree.map(lambda x: x + 0.01 if x.ndim else x, s))(old_state.opt_state))
    new_state = jax.jit(lambda k: make_state(new_model, k))(jax.random.key(1))
    samples = jax.random.normal(jax.random.key(2), (8, size["inputs"]))

    def operate():
        return fs.surgery(old_model, old_state, new_model, new_state, samples)

    start = time.perf_counter()
    result = operate()
    jax.block_until_ready(result.state)
    first_s = time.perf_counter() - start
    report = result.verify(samples)
    log(f"first call (trace, plan, compile, move) {first_s:.2f}s; verify: max |old - new|"
        f" {report.max_abs_diff:.2e}; timing")
    del result
    t_surgery = seconds(lambda: operate().state, size["repeats"], warmup=0)
    copy = jax.jit(lambda s: jax.tree.map(jnp.copy, s))
    t_copy = seconds(lambda: copy(new_state), size["repeats"])
    log(f"surgery {t_surgery:.3f}s, copy {t_copy:.3f}s")
    row = record("gpu_surgery_vs_copy", "time", t_surgery, t_copy, "s", old_params=n_old,
                 new_params=n_new, optimizer="adam",
                 baseline_is="a jitted copy of the new TrainState")
    row["measured"] = {"first_call_s": first_s, "max_abs_diff": float(report.max_abs_diff)}
    return [row]


def population_config(total_steps: int):
    """The CartPole defaults for ``total_steps`` steps, evaluated at the start and the end."""
    import dataclasses

    from flaxsurgery.rl.defaults import default_config

    return dataclasses.replace(
        default_config("CartPole-v1"), total_steps=total_steps, eval_every=total_steps,
        epsilon_steps=total_steps // 2, learning_starts=total_steps // 4)


def part_population(size: dict) -> list[dict]:
    """Environment steps/s of ``size["seeds"]`` DQN seeds at once against 1 seed."""
    from bench.common import record
    from bench.dqn_bench import steps_per_second
    from flaxsurgery.rl import EnvView, QNetwork, make_train
    from flaxsurgery.rl.defaults import default_hidden

    steps, seeds = size["population_steps"], size["seeds"]
    config, view = population_config(steps), EnvView("CartPole-v1")
    network = QNetwork(default_hidden("CartPole-v1"), view.num_actions)

    def train(key):
        return make_train(config, view, network)(key).returns

    one = steps_per_second(train, 1, steps)
    log(f"1 seed: {one:,.0f} steps/s; now {seeds} seeds")
    many = steps_per_second(train, seeds, steps)
    log(f"{seeds} seeds: {many:,.0f} steps/s")
    return [record("gpu_dqn_population", "throughput", many, one, "steps/s", seeds=seeds,
                   total_steps=steps, env="CartPole-v1", hidden=str(default_hidden("CartPole-v1")),
                   baseline_is="1 seed")]


def part_continuation(size: dict, results_dir: pathlib.Path) -> list[dict]:
    """The continuation experiment's continue arm, its control and scratch (20 seeds at full
    size), its summary under ``results_dir``. The row: the experiment's wall time (old phase,
    surgery, the three arms) against training its old phase alone."""
    from bench.common import record
    from bench.dqn_bench import load_experiment
    from experiments.dqn import main
    from flaxsurgery.rl import make_train
    from flaxsurgery.rl.defaults import scaled

    experiment = load_experiment(EXPERIMENT)
    steps = size["experiment_steps"] or experiment.config.total_steps
    seeds = size["experiment_seeds"]
    argv = ["--seeds", str(seeds), "--steps", str(steps), "--arms", EXPERIMENT_ARMS,
            "--out", str(results_dir)]
    log(f"{EXPERIMENT}: {' '.join(argv)}")
    start = time.perf_counter()
    main(experiment, argv)
    wall = time.perf_counter() - start
    config = experiment.config if steps == experiment.config.total_steps else scaled(
        experiment.config, steps)  # what main(--steps) ran
    train = make_train(config, experiment.old_view, experiment.old_network)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(0), seeds)
    jax.block_until_ready(jax.jit(jax.vmap(train))(keys).returns)
    old_phase = time.perf_counter() - start
    log(f"experiment {wall:.1f}s, its old phase alone {old_phase:.1f}s")
    return [record("gpu_continuation_wall", "time", wall, old_phase, "s", experiment=EXPERIMENT,
                   seeds=seeds, arms=EXPERIMENT_ARMS, steps_per_phase=steps,
                   summary=str(results_dir / EXPERIMENT / "summary.json"),
                   baseline_is="the old phase alone")]


# ----------------------------------------------------------------------------- the run


def row_key(row: dict) -> tuple[str, str]:
    return row["name"], json.dumps(row["params"], sort_keys=True)


def merge_rows(existing: list[dict], new: list[dict]) -> list[dict]:
    """``existing`` with every row that ``new`` measures again by ``(name, params)`` replaced,
    in place, and ``new``'s other rows appended."""
    fresh = {row_key(row): row for row in new}
    merged = [fresh.pop(row_key(row), row) for row in existing]
    return merged + [row for row in new if row_key(row) in fresh]


def device_slug() -> str:
    """The device kind as a folder name: ``NVIDIA H200`` -> ``nvidia_h200``."""
    return re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower()).strip("_")


def run_part(part: str, args: argparse.Namespace, limit_s: float) -> tuple[list[dict], str]:
    """Run one part in a child process, stopped at ``limit_s``: ``(its rows, how it ended)``."""
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = pathlib.Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "bench.gpu", "--part", part, "--rows", str(rows_file)]
        command += ["--small"] if args.small else []
        command += [] if args.results_dir is None else ["--results-dir", str(args.results_dir)]
        steps = args.experiment_steps
        command += [] if steps is None else ["--experiment-steps", str(steps)]
        try:
            done = subprocess.run(command, check=False, timeout=limit_s,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            return [], f"stopped at its limit of {limit_s:.0f}s (the budget would be exceeded)"
        if done.returncode == DOES_NOT_FIT:
            return [], "stopped: its trees do not fit in the device's memory (printed above)"
        if done.returncode != 0:
            return [], f"failed (exit status {done.returncode}; its error is printed above)"
        return json.loads(rows_file.read_text()), "done"


def orchestrate(args: argparse.Namespace) -> int:
    parts = [part for part in SHARES if part in args.parts]
    start = time.perf_counter()
    rows, ends = [], {}
    for i, part in enumerate(parts):
        elapsed = time.perf_counter() - start
        kept_for_later = sum(SHARES[p] for p in parts[i + 1:]) * args.budget_s
        limit = args.budget_s - elapsed - kept_for_later
        print(f"[{elapsed:6.1f}s] {part}: limit {limit:.0f}s; at most"
              f" {args.budget_s - elapsed:.0f}s left for {len(parts) - i} parts", flush=True)
        if limit < 1:
            ends[part] = "not started: no time left in the budget"
            continue
        part_rows, ends[part] = run_part(part, args, limit)
        rows += part_rows
    out = pathlib.Path(args.out)
    existing = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(merge_rows(existing, rows), indent=1) + "\n")
    from bench.__main__ import table
    print(table(rows) if rows else "no rows")
    for part, end in ends.items():
        print(f"{part}: {end}")
    print(f"wrote {len(rows)} rows to {out} in {time.perf_counter() - start:.0f}s"
          f" (budget {args.budget_s:.0f}s)")
    return 0 if all(end == "done" for end in ends.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="toy sizes: seconds on a CPU")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).with_name("results.json")),
                        help="the results file the rows are merged into")
    parser.add_argument("--results-dir", type=pathlib.Path, default=None,
                        help="the experiment's summary folder (default results/gpu_<device>)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole run's limit")
    parser.add_argument("--parts", type=lambda text: text.split(","), default=list(SHARES),
                        help=f"comma-separated, of {','.join(SHARES)}")
    parser.add_argument("--experiment-steps", type=int, default=None,
                        help="steps per phase of the continuation experiment (default: the"
                        " experiment's own budget at full size)")
    parser.add_argument("--part", choices=list(SHARES), help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--rows", type=pathlib.Path, help=argparse.SUPPRESS)  # a child's output
    args = parser.parse_args(argv)
    unknown = [part for part in args.parts if part not in SHARES]
    if unknown:
        parser.error(f"unknown parts {unknown}; the parts are {list(SHARES)}")
    if args.part is None:  # the parent starts no backend: the children get the whole device
        return orchestrate(args)
    if args.results_dir is None:
        args.results_dir = pathlib.Path("results") / f"gpu_{device_slug()}"
    size = SIZES["small" if args.small else "full"]
    if args.experiment_steps is not None:
        size = {**size, "experiment_steps": args.experiment_steps}
    print(f"  device {jax.devices()[0].device_kind} ({jax.devices()[0].platform})", flush=True)
    if args.part == "continuation":
        rows = part_continuation(size, args.results_dir)
    else:
        rows = {"transplant": part_transplant, "surgery": part_surgery,
                "population": part_population}[args.part](size)
    args.rows.write_text(json.dumps(rows))
    return 0 if rows else DOES_NOT_FIT  # a part measures nothing only when it does not fit


if __name__ == "__main__":
    sys.exit(main())
