"""Whole-agent surgery: trace, plan and move of a flax ``TrainState`` with Adam (parameters, both
moments and the step count) against a jitted copy of the new state, measured in the same run."""

from __future__ import annotations

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import flaxsurgery as fs
from bench.common import record

OBS, ACTIONS, DEPTH = 64, 18, 4  # inputs, outputs, hidden layers (three square kernels)
GROWTH = 64  # hidden units added to every hidden layer; 4 observation features are added


class MLP(nn.Module):
    widths: tuple

    @nn.compact
    def __call__(self, x):
        for width in self.widths[:-1]:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.widths[-1])(x)


def width_for(params: float) -> int:
    """A hidden width (a multiple of 64) whose new network has about `params` parameters."""
    return int(round((params / (DEPTH - 1)) ** 0.5 / 64) * 64) - GROWTH


def agents(width: int):
    """The old agent (`width` hidden units) and the new one: 4 more inputs, GROWTH more units in
    every hidden layer. Returns (old model, old state, new model, fresh new state, samples,
    spaces)."""
    old_m = MLP((width,) * DEPTH + (ACTIONS,))
    new_m = MLP((width + GROWTH,) * DEPTH + (ACTIONS,))
    x = jnp.zeros((2, OBS), jnp.float32)
    tx = optax.adam(1e-3)
    old_params = jax.jit(old_m.init)(jax.random.key(0), x)
    old = train_state.TrainState.create(apply_fn=old_m.apply, params=old_params, tx=tx)
    # One update, so that the moments hold values and the count is not 0.
    grads = jax.tree_util.tree_map(jnp.ones_like, old.params)
    old = jax.jit(lambda s, g: s.apply_gradients(grads=g))(old, grads)
    new_params = jax.jit(new_m.init)(jax.random.key(1), jnp.zeros((2, OBS + 4), jnp.float32))
    fresh = train_state.TrainState.create(apply_fn=new_m.apply, params=new_params, tx=tx)
    spaces = {"x": (OBS, OBS + 4)}  # named after the model's argument
    spaces.update({f"Dense_{i}": (width, width + GROWTH) for i in range(DEPTH)})
    return old_m, jax.block_until_ready(old), new_m, jax.block_until_ready(fresh), x, spaces


def n_params(tree) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def interleaved_seconds(fns: dict, repeats: int) -> dict:
    """Median wall time of each of `fns` (results blocked on), the calls taken in turn so that
    a change in the machine's load falls on all of them alike; one warm-up call each first."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def bench_agent_surgery(quick: bool) -> list[dict]:
    """The first call at about 24M parameters (trace, plan, compile, apply) against compiling
    and running a jitted copy of the new state; then later calls at about 24M and 57M against
    a jitted copy (target: at most 1.5 times from 50M parameters), and the state's move alone
    (`transplant_state` with the plan built: the device side) against the same copy. Each row
    says the machine's load (the 1-minute average) when it was measured."""
    sizes = (6e6,) if quick else (24e6, 57e6)
    rows = []
    for size in sizes:
        old_m, old, new_m, fresh, x, spaces = agents(width_for(size))
        params = n_params(fresh.params)

        def surgery(old_m=old_m, old=old, new_m=new_m, fresh=fresh, x=x, spaces=spaces):
            return fs.surgery(old_m, old, new_m, fresh, x, spaces=spaces)

        copy = jax.jit(lambda s: jax.tree_util.tree_map(jnp.copy, s))
        if size == sizes[0]:  # the first call of this process: nothing compiled yet
            start = time.perf_counter()
            jax.block_until_ready(surgery().state)
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            jax.block_until_ready(copy(fresh))
            copy_first_s = time.perf_counter() - start
            rows.append(record("agent_surgery_first_call", "time", first_s, copy_first_s, "s",
                               new_params=params, target_s=3.0, load=os.getloadavg()[0],
                               baseline_is="compiling and running a jitted copy of the new state"))
        plan = surgery().plan
        t = interleaved_seconds({
            "surgery": lambda surgery=surgery: surgery().state,
            "move": lambda old=old, plan=plan, fresh=fresh: fs.transplant_state(old, plan, fresh),
            "copy": lambda fresh=fresh, copy=copy: copy(fresh),
        }, 5 if quick else 9)
        state = "TrainState, adam (params, mu, nu, count)"
        rows.append(record("agent_surgery_vs_copy", "time", t["surgery"], t["copy"], "s",
                           new_params=params, state=state, target="<= 1.5 from 50M parameters",
                           load=os.getloadavg()[0],
                           baseline_is="a jitted copy of the new state"))
        rows.append(record("agent_state_move_vs_copy", "time", t["move"], t["copy"], "s",
                           new_params=params, state=state, load=os.getloadavg()[0],
                           baseline_is="a jitted copy of the new state"))
        print(f"  agent surgery at {params / 1e6:.1f}M parameters: {t['surgery']:.3f} s, the "
              f"state's move {t['move']:.3f} s, copy {t['copy']:.3f} s", flush=True)
        del old, fresh
    return rows
