"""Transplant speed and memory: against a plain copy, a Python loop over units, and a loop over agents."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import flaxsurgery as fs
from bench.common import host_seconds, record, seconds
from flaxsurgery.paths import flatten

# ----------------------------------------------------------------------------- the big tree


def dense_chain(key, widths, prefix):
    """{prefix: {Dense_i: {kernel, bias}}} with random weights."""
    keys = jax.random.split(key, len(widths) - 1)
    return {f"Dense_{i}": {"kernel": jax.random.normal(k, (a, b), jnp.float32) * 0.01,
                           "bias": jnp.zeros((b,), jnp.float32)}
            for i, (k, a, b) in enumerate(zip(keys, widths[:-1], widths[1:]))}


def conv_net(key, channels, positions, dense, outputs):
    """Conv_i (3x3) over `channels`, flattened into Dense_0 (dense units) and Dense_1."""
    keys = jax.random.split(key, len(channels) + 1)
    net = {f"Conv_{i}": {"kernel": jax.random.normal(k, (3, 3, a, b), jnp.float32) * 0.1,
                         "bias": jnp.zeros((b,), jnp.float32)}
           for i, (k, a, b) in enumerate(zip(keys, channels[:-1], channels[1:]))}
    net.update(dense_chain(keys[-1], [positions * channels[-1], dense, outputs], ""))
    return net


def big_trees(scale: int):
    """Old and new trees: an MLP (about 100M float32 parameters at scale 1) and a CNN.

    The change: 28 more inputs, every hidden layer and two conv layers widened by about 3%-50%,
    an identity layer inserted into the MLP, one more conv input channel.
    """
    width, new_width, hidden = 4096 // scale, 4224 // scale, 6
    key_old, key_new = jax.random.split(jax.random.PRNGKey(0))
    old = {"mlp": dense_chain(key_old, [100] + [width] * hidden + [18], ""),
           "cnn": conv_net(key_old, [4, 32, 64], 49, 512 // scale, 18)}
    new = {"mlp": dense_chain(key_new, [128] + [new_width] * (hidden + 1) + [18], ""),
           "cnn": conv_net(key_new, [5, 48, 96], 49, 512 // scale, 18)}
    hs = [f"h{i}" for i in range(hidden)]
    old_layout = {**fs.chain_layout(["obs", *hs, "out"], [f"Dense_{i}" for i in range(hidden + 1)], prefix="mlp"),
                  **fs.chain_layout(["pixels", "c0", fs.Flat("c1", 49), "d0", "cnn_out"],
                                    ["Conv_0", "Conv_1", "Dense_0", "Dense_1"], prefix="cnn",
                                    spatial_dims={"Conv_0": 2, "Conv_1": 2})}
    new_hs = hs[:3] + ["hx"] + hs[3:]  # the inserted layer Dense_3 outputs space hx
    new_layout = {**fs.chain_layout(["obs", *new_hs, "out"], [f"Dense_{i}" for i in range(hidden + 2)], prefix="mlp"),
                  **{k: v for k, v in old_layout.items() if k.startswith("cnn")}}
    layer_map = {f"mlp/Dense_{i + 1}": f"mlp/Dense_{i}" for i in range(3, hidden + 1)}
    layer_map["mlp/Dense_3"] = None
    plan = fs.plan(old, new, old_layout, new_layout=new_layout, layer_map=layer_map,
                   spaces={"obs": (100, 128), "pixels": (4, 5)})
    return old, new, plan


# ----------------------------------------------------------------------------- the naive way


def naive_transplant(old_tree, plan, fresh_tree):
    """The plan applied the obvious way: NumPy, a Python loop over the units of every axis."""
    old_leaves = {p: np.asarray(v) for p, v in flatten(old_tree)[0].items()}
    fresh_leaves = {p: np.asarray(v) for p, v in flatten(fresh_tree)[0].items()}
    out = {}
    for leaf, arrays in zip(plan.leaves, plan.arrays):
        fresh = fresh_leaves[leaf.path]
        if leaf.init != "gather":  # the inserted layer: identity kernel, zero bias
            if leaf.kernel_axes is None:
                out[leaf.path] = np.full(leaf.shape, leaf.neutral, leaf.dtype)
                continue
            kernel = np.zeros(leaf.shape, leaf.dtype)
            centre = tuple((n - 1) // 2 for n in leaf.shape[:-2])
            for j, i in enumerate(arrays.match):
                if i >= 0:
                    kernel[centre + (i, j)] = 1.0
            out[leaf.path] = kernel
            continue
        x = old_leaves[leaf.source]
        for axis, ax in enumerate(leaf.axes):
            if not ax.gather:
                continue
            src = arrays.axes[axis].src
            shape = list(x.shape)
            shape[axis] = len(src)
            y = np.empty(shape, x.dtype)
            lead = (slice(None),) * axis
            for j, s in enumerate(src):
                y[lead + (j,)] = x[lead + (max(int(s), 0),)]
            x = y
        for axis in leaf.fill_order():
            lead = (slice(None),) * axis
            fills = leaf.axes[axis].fills
            for j in np.flatnonzero(arrays.axes[axis].src < 0):
                kind = fills[0] if len(fills) == 1 else fills[arrays.axes[axis].kind[j]]
                x[lead + (j,)] = fresh[lead + (j,)] if kind == "fresh" else leaf.neutral
        out[leaf.path] = x
    return out


# ----------------------------------------------------------------------------- benchmarks


def bench_transplant(quick: bool) -> list[dict]:
    scale = 4 if quick else 1
    old, fresh, plan = big_trees(scale)
    n_new = sum(x.size for x in jax.tree_util.tree_leaves(fresh))
    n_old = sum(x.size for x in jax.tree_util.tree_leaves(old))
    print(f"  transplant: old {n_old / 1e6:.1f}M -> new {n_new / 1e6:.1f}M float32 parameters")

    transplant = jax.jit(lambda o, f: fs.transplant(o, plan, f))
    copy = jax.jit(lambda f: jax.tree_util.tree_map(jnp.copy, f))
    start = time.perf_counter()
    compiled = transplant.lower(old, fresh).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    copy.lower(fresh).compile()
    copy_compile_s = time.perf_counter() - start

    repeats = 5 if quick else 7
    t_ours = seconds(lambda: compiled(old, fresh), repeats)
    t_copy = seconds(lambda: copy(fresh), repeats)
    rows = [record("transplant_vs_copy", "time", t_ours, t_copy, "s",
                   old_params=n_old, new_params=n_new, compile_s=compile_s, copy_compile_s=copy_compile_s)]

    memory = compiled.memory_analysis()
    if memory is not None:  # XLA's own accounting; 1.0 means no hidden copies
        peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        rows.append(record("transplant_peak_memory", "bytes", float(peak), float(4 * (n_old + 2 * n_new)),
                           "bytes", temp_bytes=int(memory.temp_size_in_bytes),
                           baseline_is="old + fresh (arguments) + new (output) trees"))

    start = time.perf_counter()
    naive = naive_transplant(old, plan, fresh)
    t_naive = time.perf_counter() - start
    ours = flatten(compiled(old, fresh))[0]
    for path, value in naive.items():  # the naive loop is the same transplant
        np.testing.assert_allclose(np.asarray(ours[path]), value, err_msg=path)
    rows.append(record("transplant_vs_naive_loop", "time", t_ours, t_naive, "s", new_params=n_new))
    return rows


def bench_plan_build(quick: bool) -> list[dict]:
    rows = []
    for n_leaves in (100, 1000) if quick else (100, 1000, 10000):
        layers = n_leaves // 2
        spaces = ["obs"] + [f"h{i}" for i in range(layers - 1)] + ["out"]
        names = [f"Dense_{i}" for i in range(layers)]
        old = {n: {"kernel": jax.ShapeDtypeStruct((8, 8), jnp.float32), "bias": jax.ShapeDtypeStruct((8,), jnp.float32)}
               for n in names}
        new = {n: {"kernel": jax.ShapeDtypeStruct((10, 10), jnp.float32), "bias": jax.ShapeDtypeStruct((10,), jnp.float32)}
               for n in names}
        layout = fs.chain_layout(spaces, names, prefix="")
        t_plan = seconds(lambda o=old, n=new, lay=layout: fs.plan(o, n, lay), 3, warmup=1)
        t_flatten = seconds(lambda o=old, n=new: (flatten(o), flatten(n)), 3, warmup=1)
        rows.append(record("plan_build", "time", t_plan, t_flatten, "s", leaves=n_leaves,
                           baseline_is="flattening both trees with key paths"))
    return rows


def bench_plan_vocabulary(quick: bool) -> list[dict]:
    """A vocabulary of named tokens grown by one: plan building must be linear in the IDs
    (target: 1e6 named IDs in under 2 s), against building the ID lookup dicts alone."""
    n = 200_000 if quick else 1_000_000
    old_ids = [f"tok{i}" for i in range(n)]
    new_ids = old_ids[1:] + [old_ids[0], "<new>"]
    old = {"embed": {"embedding": jax.ShapeDtypeStruct((n, 8), jnp.float32)}}
    new = {"embed": {"embedding": jax.ShapeDtypeStruct((n + 1, 8), jnp.float32)}}
    layout = {"embed/embedding": ("vocab", "d")}
    t_plan = host_seconds(lambda: fs.plan(old, new, layout, spaces={"vocab": (old_ids, new_ids)}), 3)
    t_dicts = host_seconds(lambda: ({u: i for i, u in enumerate(old_ids)}, {u: i for i, u in enumerate(new_ids)}), 3)
    return [record("plan_vocabulary", "time", t_plan, t_dicts, "s", ids=n, target_s=2.0,
                   baseline_is="building a dict over each ID list")]


def bench_population(quick: bool) -> list[dict]:
    agents = 256 if quick else 1024
    keys = jax.random.split(jax.random.PRNGKey(1), agents)
    old = jax.vmap(lambda k: dense_chain(k, [2, 64, 64, 2], ""))(keys)
    fresh = jax.vmap(lambda k: dense_chain(k, [4, 64, 64, 2], ""))(keys + 1)
    layout = fs.chain_layout(["obs", "h0", "h1", "out"], ["Dense_0", "Dense_1", "Dense_2"], prefix="")
    one = jax.tree_util.tree_map(lambda x: x[0], old)
    plan = fs.plan(one, jax.tree_util.tree_map(lambda x: x[0], fresh), layout,
                   spaces={"obs": (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])})
    population = jax.jit(jax.vmap(lambda o, f: fs.transplant(o, plan, f)))
    single = jax.jit(lambda o, f: fs.transplant(o, plan, f))
    olds = [jax.tree_util.tree_map(lambda x, i=i: x[i], old) for i in range(agents)]
    freshes = [jax.tree_util.tree_map(lambda x, i=i: x[i], fresh) for i in range(agents)]
    t_vmap = seconds(lambda: population(old, fresh), 5)
    t_loop = seconds(lambda: [single(o, f) for o, f in zip(olds, freshes)], 3)
    return [record("population_transplant", "time", t_vmap, t_loop, "s", agents=agents)]
