"""Sharded transplant on 8 host CPU devices (a child process: the device count is fixed when JAX
starts), against plain ``jax.jit(fs.transplant, out_shardings=...)`` in the same run.

Rows: per-device memory of the compiled transplant (arguments + outputs + temporaries) against
a perfect 1/8 share of the old, fresh and new trees; bytes of all-gathers that materialise a
whole leaf, against plain jit's; wall time against plain jit's.

    python -m bench.sharding_bench [--quick]     # the child; prints its rows as JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

DEVICES = 8


def bench_sharded(quick: bool) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"}
    out = subprocess.run([sys.executable, "-m", "bench.sharding_bench", *(["--quick"] if quick else [])],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"sharding bench failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rows(quick: bool) -> list[dict]:
    import itertools
    import random
    import re

    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import flaxsurgery as fs
    from bench.common import record, seconds
    from flaxsurgery import sharding as fsh
    from flaxsurgery.paths import flatten

    width, new_width, hidden = (512, 576, 3) if quick else (2048, 2304, 4)
    rng = np.random.default_rng(0)

    def net(widths):
        return {f"Dense_{i}": {"kernel": rng.standard_normal((a, b), np.float32) * 0.02,
                               "bias": np.zeros(b, np.float32)}
                for i, (a, b) in enumerate(itertools.pairwise(widths))}

    old = net([256] + [width] * hidden + [64])
    fresh = net([272] + [new_width] * hidden + [72])
    spaces = ["obs", *[f"h{i}" for i in range(hidden)], "out"]
    layout = fs.chain_layout(spaces, [f"Dense_{i}" for i in range(hidden + 1)], prefix="")
    perm = list(range(width))
    random.Random(0).shuffle(perm)
    h1 = (list(range(width)), perm + [f"n{i}" for i in range(new_width - width)])  # permuted, then widened
    plan = fs.plan(old, fresh, layout, spaces={"obs": (256, 272), "h1": h1, "out": (64, 72)})

    mesh = jax.make_mesh((DEVICES,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    spec = lambda x: NamedSharding(mesh, P(None, "model") if x.ndim == 2 else P("model"))
    old_s, fresh_s = (jax.tree.map(lambda x: jax.device_put(x, spec(x)), t) for t in (old, fresh))
    ours = fsh.transplant_fn(plan, fsh.tree_shardings(fresh_s))
    plain = jax.jit(lambda o, f: fs.transplant(o, plan, f), out_shardings=jax.tree.map(lambda x: x.sharding, fresh_s))
    compiled = {"ours": ours.lower(old_s, fresh_s).compile(), "plain": plain.lower(old_s, fresh_s).compile()}

    def gathered(text):
        lines = fsh.whole_leaf_gathers(text, plan)
        return sum(int(np.prod([int(d) for d in re.search(r"\[([\d,]*)\]", line).group(1).split(",") if d])) * 4
                   for line in lines)

    new_bytes = sum(int(np.prod(leaf.shape)) * 4 for leaf in plan.leaves)
    whole = sum(x.nbytes for x in jax.tree.leaves([old, fresh])) + new_bytes
    memory = compiled["ours"].memory_analysis()
    per_device = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    plain_memory = compiled["plain"].memory_analysis()
    result = ours(old_s, fresh_s)
    want = flatten(fs.transplant(old, plan, fresh))[0]
    worst = max(float(np.abs(np.asarray(result_leaf) - want[p]).max()) for p, result_leaf in flatten(result)[0].items())
    repeats = 3 if quick else 5
    return [
        record("sharded_transplant_per_device_bytes", "bytes", per_device, whole / DEVICES, "bytes",
               devices=DEVICES, temp_bytes=memory.temp_size_in_bytes,
               plain_jit_per_device=plain_memory.argument_size_in_bytes + plain_memory.output_size_in_bytes
               + plain_memory.temp_size_in_bytes, max_abs_diff=worst,
               baseline_is="old + fresh + new trees / devices"),
        record("sharded_whole_leaf_gather_bytes", "bytes", gathered(compiled["ours"].as_text()),
               gathered(compiled["plain"].as_text()), "bytes", devices=DEVICES,
               baseline_is="plain jit(transplant, out_shardings)"),
        record("sharded_transplant_vs_plain_jit", "time", seconds(lambda: ours(old_s, fresh_s), repeats),
               seconds(lambda: plain(old_s, fresh_s), repeats), "s", devices=DEVICES,
               new_params=new_bytes // 4, baseline_is="plain jit(transplant, out_shardings)"),
    ]


if __name__ == "__main__":
    print(json.dumps(_rows("--quick" in sys.argv)))
