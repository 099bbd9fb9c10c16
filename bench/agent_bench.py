"""Whole-agent surgery: trace, plan and move of a flax ``TrainState`` with Adam (parameters, both
moments and the step count) against a jitted copy of the new state, measured in the same run."""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import flaxsurgery as fs
from bench.common import record, seconds

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


def bench_agent_surgery(quick: bool) -> list[dict]:
    """The first call at about 24M parameters (trace, plan, compile, apply) against compiling
    and running a jitted copy, then every later call at about 24M and 57M against a jitted copy
    of the new state (target: at most 1.5 times from 50M parameters)."""
    sizes = (6e6,) if quick else (24e6, 57e6)
    rows = []
    for size in sizes:
        old_m, old, new_m, fresh, x, spaces = agents(width_for(size))
        params = n_params(fresh.params)

        def surgery(old_m=old_m, old=old, new_m=new_m, fresh=fresh, x=x, spaces=spaces):
            return fs.surgery(old_m, old, new_m, fresh, x, spaces=spaces).state

        copy = jax.jit(lambda s: jax.tree_util.tree_map(jnp.copy, s))
        if size == sizes[0]:  # the first call of this process: nothing compiled yet
            start = time.perf_counter()
            jax.block_until_ready(surgery())
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            jax.block_until_ready(copy(fresh))
            copy_first_s = time.perf_counter() - start
            rows.append(record("agent_surgery_first_call", "time", first_s, copy_first_s, "s",
                               new_params=params, target_s=3.0,
                               baseline_is="compiling and running a jitted copy of the new state"))
        repeats = 3 if quick else 5
        t_surgery = seconds(surgery, repeats)
        t_copy = seconds(lambda fresh=fresh, copy=copy: copy(fresh), repeats)
        rows.append(record("agent_surgery_vs_copy", "time", t_surgery, t_copy, "s",
                           new_params=params, state="TrainState, adam (params, mu, nu, count)",
                           target="<= 1.5 from 50M parameters",
                           baseline_is="a jitted copy of the new state"))
        print(f"  agent surgery at {params / 1e6:.1f}M parameters: {t_surgery:.3f} s, "
              f"copy {t_copy:.3f} s ({t_surgery / t_copy:.2f}x)", flush=True)
        del old, fresh
    return rows
