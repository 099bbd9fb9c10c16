"""Sharded transplant checks, run by tests/test_sharding.py in fresh processes with 8 host CPU
devices (one process) or 2 processes of 4 devices joined by ``jax.distributed``.

    python -m tests.sharded_worker local TMPDIR
    python -m tests.sharded_worker multihost TMPDIR PROCESS_ID PORT
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys


def trees():
    """Old and fresh MLP parameters (NumPy) and a plan: wider inputs, permuted and widened
    hidden units, more outputs."""
    import numpy as np

    import flaxsurgery as fs

    rng = np.random.default_rng(0)

    def net(widths):
        return {"params": {f"Dense_{i}": {"kernel": rng.standard_normal((a, b)).astype(np.float32),
                                          "bias": rng.standard_normal(b).astype(np.float32)}
                           for i, (a, b) in enumerate(itertools.pairwise(widths))}}

    old, fresh = net([64, 256, 256, 16]), net([72, 320, 256, 24])
    layout = fs.chain_layout(["obs", "h0", "h1", "out"], ["Dense_0", "Dense_1", "Dense_2"], prefix="params")
    perm = list(range(256))
    random.Random(0).shuffle(perm)
    plan = fs.plan(old, fresh, layout, spaces={"obs": (64, 72), "h1": (list(range(256)), perm), "out": (16, 24)})
    return old, fresh, plan


def placed(tree, shardings):
    """`tree` (NumPy, the same on every process) as global arrays: each process gives its shards."""
    import jax

    from flaxsurgery.paths import flatten

    leaves, treedef = flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [
        jax.make_array_from_callback(x.shape, shardings[p], lambda index, x=x: x[index]) for p, x in leaves.items()])


def layouts(mesh):
    """Two shardings per leaf kind: kernels over their output axis or both axes, biases over theirs."""
    from jax.sharding import PartitionSpec as P

    two_d = len(mesh.axis_names) == 2
    kernel = P("data", "model") if two_d else P(None, "model")
    return lambda x: jax_named(mesh, kernel if x.ndim == 2 else P("model"))


def jax_named(mesh, spec):
    from jax.sharding import NamedSharding

    return NamedSharding(mesh, spec)


def check_addressable(result, want, shardings) -> float:
    """Largest difference between this process's shards and the reference; checks placements."""
    import numpy as np

    from flaxsurgery.paths import flatten

    worst = 0.0
    for path, array in flatten(result)[0].items():
        assert array.sharding == shardings[path], (path, array.sharding, shardings[path])
        for shard in array.addressable_shards:
            worst = max(worst, float(np.abs(np.asarray(shard.data) - want[path][shard.index]).max()))
    return worst


def run(tmp: str, report: dict, meshes: list) -> None:
    import jax
    import orbax.checkpoint.experimental.v1 as ocp

    import flaxsurgery as fs
    from flaxsurgery import checkpoint
    from flaxsurgery import sharding as fsh
    from flaxsurgery.paths import flatten

    old, fresh, plan = trees()
    want = flatten(fs.transplant(old, plan, fresh))[0]
    whole_bytes = sum(x.nbytes for x in jax.tree.leaves([old, fresh])) + sum(x.nbytes for x in want.values())
    for shape, names in meshes:
        mesh = jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
        spec = layouts(mesh)
        old_sh = {p: spec(x) for p, x in flatten(old)[0].items()}
        new_sh = {p: spec(x) for p, x in flatten(fresh)[0].items()}
        old_s, fresh_s = placed(old, old_sh), placed(fresh, new_sh)
        name = "x".join(map(str, shape))

        result = fsh.transplant_sharded(old_s, plan, fresh_s)
        report[f"{name}/max_diff"] = check_addressable(result, want, new_sh)
        compiled = fsh.transplant_fn(plan, new_sh).lower(old_s, fresh_s).compile()
        gathers = fsh.whole_leaf_gathers(compiled.as_text(), plan)
        report[f"{name}/whole_gathers"] = [g.split(" all-gather")[0] for g in gathers]
        plain = jax.jit(fs.transplant, out_shardings=jax.tree.map(lambda x: x.sharding, fresh_s))
        report[f"{name}/plain_whole_gathers"] = [
            g.split(" all-gather")[0] for g in fsh.whole_leaf_gathers(plain.lower(old_s, plan, fresh_s).compile().as_text(), plan)]
        memory = compiled.memory_analysis()
        per_device = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        report[f"{name}/per_device_over_whole"] = per_device / whole_bytes

        # Checkpoints: restore straight into the shardings; surgery a group at a time, sharded.
        path = os.path.join(tmp, f"old_{name}")
        ocp.save(path, old_s)
        shapes = checkpoint.checkpoint_shapes(path)
        restored = fsh.restore_sharded(path, shapes, jax.tree_util.tree_unflatten(
            jax.tree.structure(shapes), [old_sh[p] for p in flatten(shapes)[0]]))
        report[f"{name}/restore_diff"] = check_addressable(restored, flatten(old)[0], old_sh)
        out = os.path.join(tmp, f"new_{name}")
        checkpoint.transplant_checkpoint(path, out, plan, fresh_s, shardings=new_sh, max_group_bytes=100_000)
        loaded = fsh.restore_sharded(out, jax.eval_shape(lambda: fresh), jax.tree.map(lambda x: x.sharding, fresh_s))
        report[f"{name}/checkpoint_diff"] = check_addressable(loaded, want, new_sh)


def main() -> None:
    mode, tmp = sys.argv[1], sys.argv[2]
    devices = 8 if mode == "local" else 4
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import jax

    if mode == "multihost":
        process_id, port = int(sys.argv[3]), int(sys.argv[4])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
        jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    report = {"process_index": jax.process_index(), "devices": jax.device_count(),
              "local_devices": jax.local_device_count()}
    meshes = [((8,), ("model",)), ((2, 4), ("data", "model"))]
    run(tmp, report, meshes if mode == "local" else meshes[:1])  # one mesh across both processes
    print(json.dumps(report))


if __name__ == "__main__":
    main()
