"""Out-of-core checkpoint surgery: peak host memory against the checkpoint's size, and wall time
against an orbax restore + save of the same checkpoint.

Each step runs in its own child process; its peak RSS comes from ``os.wait4``'s resource usage,
its wall time (the operation only, not Python and JAX start-up) from the child itself. The
checkpoint is a chain of dense layers in float32; the surgery adds inputs, widens every hidden
layer by 64 units (rule ``mean``: new incoming weights the mean of the old ones, outgoing zero,
function-preserving and needing no fresh values) and adds outputs. The checkpoints are deleted
afterwards.

    python -m bench.checkpoint_bench make|restore_save|surgery DIR LAYERS WIDTH   # one child step
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH_DIR = os.environ.get("FLAXSURGERY_BENCH_DIR")  # default: the system temporary directory


ROUNDS = 2
GROW = 64  # units added to the inputs, every hidden layer and the outputs
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layer_names(layers: int) -> list[str]:
    return [f"Dense_{i}" for i in range(layers)]


def make(directory: str, layers: int, width: int) -> None:
    """Writes the old checkpoint a few layers at a time (so this step stays small too)."""
    import orbax.checkpoint.experimental.v1 as ocp

    rng = np.random.default_rng(0)
    names = _layer_names(layers)
    for start in range(0, layers, 4):
        part = {name: {"kernel": rng.standard_normal((width, width), np.float32) * 0.02,
                       "bias": rng.standard_normal(width, np.float32) * 0.02}
                for name in names[start:start + 4]}
        ocp.partial.save(os.path.join(directory, "old"), {"params": part})
    ocp.partial.finalize(os.path.join(directory, "old"))


def restore_save(directory: str, layers: int, width: int) -> float:
    """The baseline: orbax restores the whole checkpoint and saves it again (in the same storage
    chunks as the surgery writes)."""
    import orbax.checkpoint.experimental.v1 as ocp

    from flaxsurgery import checkpoint  # the same imports as the surgery, before the clock

    start = time.perf_counter()
    tree = ocp.load(os.path.join(directory, "old"))
    with checkpoint.saving_context(checkpoint.DEFAULT_CHUNK_BYTES):
        ocp.save(os.path.join(directory, "copy"), tree)
    seconds = time.perf_counter() - start
    shutil.rmtree(os.path.join(directory, "copy"))
    return seconds


def surgery(directory: str, layers: int, width: int) -> float:
    """Plan from the checkpoint's metadata, then transplant it out of core."""
    import flaxsurgery as fs
    from flaxsurgery import checkpoint

    start = time.perf_counter()
    old_path = os.path.join(directory, "old")
    old = checkpoint.checkpoint_shapes(old_path)
    grow = GROW
    new = {"params": {name: {"kernel": _shape((width + grow, width + grow)), "bias": _shape((width + grow,))}
                      for name in _layer_names(layers)}}
    spaces = ["obs", *[f"h{i}" for i in range(layers - 1)], "out"]
    layout = fs.chain_layout(spaces, _layer_names(layers), prefix="params")
    p = fs.plan(old, new, layout, spaces={"obs": (width, width + grow), "out": (width, width + grow)},
                rules={s: fs.mean() for s in spaces[1:-1]})
    checkpoint.transplant_checkpoint(old_path, os.path.join(directory, "new"), p)
    seconds = time.perf_counter() - start
    shutil.rmtree(os.path.join(directory, "new"))
    return seconds


def _shape(shape):
    import jax

    return jax.ShapeDtypeStruct(shape, np.float32)


STEPS = {"make": make, "restore_save": restore_save, "surgery": surgery}


def _mlp(grow: int):
    """``(apply, init, inputs)`` of the benchmark's chain of dense layers (for the command line)."""
    import flax.linen as nn
    import jax.numpy as jnp

    layers, width = int(os.environ["BENCH_LAYERS"]), int(os.environ["BENCH_WIDTH"]) + grow

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(layers - 1):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(width)(x)

    model, x = MLP(), jnp.zeros((2, width), jnp.float32)
    return model.apply, lambda key: model.init(key, x), (x,)


def old_model():
    return _mlp(0)


def new_model():
    return _mlp(GROW)


def _run(command: list[str], env: dict) -> tuple[str, int, float]:
    """Runs `command`: (its stdout, its peak RSS in bytes, its wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench command {command} failed with exit code {os.waitstatus_to_exitcode(status)}")
    return out, usage.ru_maxrss * 1024, seconds  # Linux: ru_maxrss in KiB


def _child(step: str, directory: str, layers: int, width: int) -> tuple[dict, int]:
    """Runs one step in a child process: (its JSON result, its peak RSS in bytes)."""
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    out, rss, _ = _run([sys.executable, "-m", "bench.checkpoint_bench", step, directory, str(layers), str(width)], env)
    return json.loads(out.strip().splitlines()[-1]), rss


def _command_line(directory: str, layers: int, width: int) -> tuple[dict, int]:
    """The same surgery through ``flaxsurgery apply`` (wall time includes the process's start)."""
    spec = os.path.join(directory, "spec.json")
    with open(spec, "w") as f:
        json.dump({"spaces": {"x": [width, width + GROW], "out": [width, width + GROW]},
                   "rules": {f"Dense_{i}": "mean" for i in range(layers - 1)}}, f)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "BENCH_LAYERS": str(layers), "BENCH_WIDTH": str(width)}
    command = [os.path.join(os.path.dirname(sys.executable), "flaxsurgery"), "apply",
               os.path.join(directory, "old"), os.path.join(directory, "cli"), "--quiet", "--spec", spec,
               "--old", "bench.checkpoint_bench:old_model", "--new", "bench.checkpoint_bench:new_model"]
    _, rss, seconds = _run(command, env)
    shutil.rmtree(os.path.join(directory, "cli"))
    return {"seconds": seconds}, rss


def bench_checkpoint(quick: bool) -> list[dict]:
    from bench.common import record

    layers, width = (8, 2048) if quick else (64, 4096)
    size = layers * (width * width + width) * 4
    directory = tempfile.mkdtemp(prefix="flaxsurgery-ckpt-bench-", dir=BENCH_DIR)
    try:
        _child("make", directory, layers, width)
        runs = {"surgery": [], "restore_save": []}
        for _ in range(ROUNDS):  # alternated, so that load from other work hits both alike
            for step, results in runs.items():
                results.append(_child(step, directory, layers, width))
        cli_out, cli_rss = _command_line(directory, layers, width)
        disk = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
                   os.walk(os.path.join(directory, "old")) for f in files)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    seconds = {step: [out["seconds"] for out, _ in results] for step, results in runs.items()}
    rss = {step: max(peak for _, peak in results) for step, results in runs.items()}
    return [
        record("checkpoint_surgery_peak_rss", "bytes", rss["surgery"], size, "bytes",
               checkpoint_bytes=size, disk_bytes=disk, layers=layers, width=width,
               restore_save_rss=rss["restore_save"], baseline_is="the checkpoint's array bytes"),
        record("checkpoint_surgery_vs_restore_save", "time", min(seconds["surgery"]), min(seconds["restore_save"]),
               "s", checkpoint_bytes=size, surgery_s=str(seconds["surgery"]),
               restore_save_s=str(seconds["restore_save"]),
               baseline_is=f"orbax restore + save of the whole checkpoint (fastest of {ROUNDS} each)"),
        record("checkpoint_cli_apply_vs_api", "time", cli_out["seconds"], min(seconds["surgery"]), "s",
               checkpoint_bytes=size, cli_peak_rss=cli_rss,
               baseline_is="transplant_checkpoint from Python (the surgery row's value)"),
    ]


if __name__ == "__main__":
    step, where, n_layers, n_width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seconds = STEPS[step](where, n_layers, n_width)
    print(json.dumps({"seconds": seconds}))
