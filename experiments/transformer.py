"""A Llama-style decoder that grows without forgetting: wider, more heads, deeper, more tokens.

The model: token embedding tied to the output projection, pre-norm blocks (RMSNorm, grouped-query
attention with rotary position embedding, SwiGLU MLP), a final RMSNorm, and a per-token output
bias. Its layout is traced from the forward pass (``fs.trace_layout``); each growth operation is
one ``fs.plan`` + ``fs.transplant`` (the width rule adds one exact step the plan cannot express,
see :func:`grow`).

Run ``python -m experiments.transformer --seeds 3`` for the training comparison: a small model
trained on generated arithmetic strings, grown (wider and one block deeper), trained on, against
the grown architecture trained from scratch and the small model trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxsurgery as fs

# ----------------------------------------------------------------------------------------------
# The model.


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of the decoder. `blocks` names the blocks in order: a name is a block's identity, so
    inserting a block renames none of the others (their weights pair by name, no layer map)."""

    vocab: int = 16
    d_model: int = 32
    mlp_hidden: int = 64
    kv_groups: int = 2
    heads_per_group: int = 2
    head_dim: int = 8
    blocks: tuple = ("b0", "b1")
    output_bias: bool = True


class RMSNorm(nn.Module):
    """x / rms(x) * scale; the mean of squares spans every feature (a MIXING space)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(mean_square + self.eps) * scale


def rotary_tables(length: int, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos and sin of RoPE angles, (length, head_dim), rotate-half pairing (i with i + d/2)."""
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, head_dim, 2) / head_dim))
    angles = jnp.arange(length)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """RoPE on the last axis; `cos`/`sin` broadcast against `x`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Kernel(nn.Module):
    """One weight tensor as its own layer, so that the tracer names its spaces after it."""

    shape: tuple
    std: float

    @nn.compact
    def __call__(self):
        return self.param("kernel", nn.initializers.normal(self.std), self.shape)


class Attention(nn.Module):
    """Causal grouped-query attention with rotary position embedding.

    Query heads are indexed (KV group, head in group), so a group's keys and values meet its
    queries through a batch axis of the score product: no ``repeat`` of keys and values. The
    kernels put the head axes last, where a head's incoming weights are, so new heads start
    with fresh incoming weights and zero outgoing ones. The rotary tables are computed here,
    per block: one table shared by every block would tie all blocks' head dimensions into one
    space of the layout.
    """

    kv_groups: int
    heads_per_group: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        d, h, g, r = x.shape[-1], self.head_dim, self.kv_groups, self.heads_per_group
        wq = Kernel((d, h, g, r), d ** -0.5, name="q")()
        wk = Kernel((d, h, g), d ** -0.5, name="k")()
        wv = Kernel((d, h, g), d ** -0.5, name="v")()
        wo = Kernel((g, r, h, d), (g * r * h) ** -0.5, name="o")()
        length = x.shape[1]
        cos, sin = rotary_tables(length, h)
        q = rotate(jnp.einsum("btd,dhgr->btgrh", x, wq), cos[:, None, None], sin[:, None, None])
        k = rotate(jnp.einsum("btd,dhg->btgh", x, wk), cos[:, None], sin[:, None])
        v = jnp.einsum("btd,dhg->btgh", x, wv)
        scores = jnp.einsum("btgrh,bsgh->bgrts", q, k) / math.sqrt(h)
        causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        heads = jnp.einsum("bgrts,bsgh->btgrh", weights, v)
        return jnp.einsum("btgrh,grhd->btd", heads, wo)


class SwiGLU(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        gate = nn.Dense(self.hidden, use_bias=False, name="gate")(x)
        up = nn.Dense(self.hidden, use_bias=False, name="up")(x)
        return nn.Dense(x.shape[-1], use_bias=False, name="down")(nn.silu(gate) * up)


class Block(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        attn = Attention(c.kv_groups, c.heads_per_group, c.head_dim, name="attn")
        x = x + attn(RMSNorm(name="attn_norm")(x))
        return x + SwiGLU(c.mlp_hidden, name="mlp")(RMSNorm(name="mlp_norm")(x))


class Transformer(nn.Module):
    """tokens (batch, time) int -> logits (batch, time, vocab)."""

    config: Config

    @nn.compact
    def __call__(self, tokens):
        c = self.config
        embed = nn.Embed(c.vocab, c.d_model, embedding_init=nn.initializers.normal(c.d_model ** -0.5),
                         name="embed")
        x = embed(tokens)
        for name in c.blocks:
            x = Block(c, name=name)(x)
        logits = embed.attend(RMSNorm(name="final_norm")(x))
        if c.output_bias:  # the one place a new token's logit can be set far below the others
            logits = logits + self.param("bias", nn.initializers.zeros, (c.vocab,))
        return logits


def init(config: Config, key: jax.Array, length: int = 8) -> dict:
    return Transformer(config).init(key, jnp.zeros((2, length), jnp.int32))


def apply_fn(config: Config):
    """`(variables, tokens) -> logits` of a config's model."""
    return Transformer(config).apply


def layout(config: Config, variables=None, length: int = 8) -> dict:
    """The traced layout of a config's model (from shapes only when `variables` is None)."""
    if variables is None:
        variables = jax.eval_shape(lambda: init(config, jax.random.key(0), length))
    return fs.trace_layout(apply_fn(config), variables, jnp.zeros((2, length), jnp.int32),
                           input_names=["tokens"])


# ----------------------------------------------------------------------------------------------
# Growth operations. Space names are the traced layout's: "embed" is d_model (the residual
# stream), "out" the vocabulary, "<block>/mlp/gate" an MLP's hidden units, "<block>/attn/k" the
# KV groups, "<block>/attn/q" the query heads of a group.


@dataclasses.dataclass(frozen=True)
class Growth:
    """One growth step: the new config and the plan's arguments.

    Attributes:
      config: the grown model's config.
      spaces, rules, leaf_rules: passed to ``fs.plan``.
      final_norm_factor: multiplies the final norm's scale after the transplant (see
        :func:`widen`); 1.0 for every other operation.
    """

    config: Config
    spaces: dict = dataclasses.field(default_factory=dict)
    rules: dict = dataclasses.field(default_factory=dict)
    leaf_rules: dict = dataclasses.field(default_factory=dict)
    final_norm_factor: float = 1.0


def duplicated(n: int) -> tuple[list, list, dict]:
    """Old IDs ``0..n-1``, new IDs with one copy ``("copy", i)`` of each, and copy -> original."""
    old = list(range(n))
    copies = [("copy", i) for i in old]
    return old, old + copies, dict(zip(copies, old))


def widen(config: Config, ratio: float = 0.4) -> Growth:
    """d_model and every MLP twice as wide: each old unit duplicated once (HyperCloning-like).

    ``fs.split`` copies a unit's incoming weights and shares its outgoing weights, ``ratio``
    to the copy and ``1 - ratio`` to the original. In the residual stream every writer (the
    embedding's columns, attention and MLP output kernels) is an incoming side, so the stream
    holds each old value twice, ``[x, x]``: its mean square, hence RMSNorm's statistics, is the
    old one exactly, whatever the ratio. Every reader (q/k/v and gate/up kernel rows) takes the
    two halves of a row, so it computes what it did. The one reader the plan cannot split is the
    tied embedding read as the output projection: the embedding's d_model axis is the incoming
    side of the input lookup, so the copies are whole there and the logits would double. Halving
    the final norm's scale (``final_norm_factor=0.5``) makes the logits exact again.

    An MLP's hidden units are element-wise (SwiGLU multiplies gate and up unit by unit), so the
    split is exact there for any ratio too. ``ratio=0.5`` keeps each copy identical to its
    original forever (equal weights, equal gradients); the default 0.4 lets them diverge.
    """
    d_old, d_new, d_source = duplicated(config.d_model)
    spaces = {"embed": (d_old, d_new)}
    rules = {"embed": fs.split(d_source, ratio)}
    for block in config.blocks:
        m_old, m_new, m_source = duplicated(config.mlp_hidden)
        spaces[f"{block}/mlp/gate"] = (m_old, m_new)
        rules[f"{block}/mlp/gate"] = fs.split(m_source, ratio)
    new = dataclasses.replace(config, d_model=2 * config.d_model, mlp_hidden=2 * config.mlp_hidden)
    return Growth(new, spaces, rules, final_norm_factor=0.5)


def more_heads(config: Config, groups: int = 1, heads: int = 1) -> Growth:
    """`groups` more KV groups and `heads` more query heads per group in every block.

    New heads take the preset's rule for hidden units (``fresh_in_zero_out``): fresh incoming
    weights (a new group's key and value columns, a new head's query columns) and zero outgoing
    ones (their rows of the output kernel), so they add exactly 0 to the residual stream. A new
    group's query columns are an outgoing side (the group axis is not the query kernel's last),
    so they start at zero: the group attends uniformly until its output rows move.
    """
    new = dataclasses.replace(config, kv_groups=config.kv_groups + groups,
                              heads_per_group=config.heads_per_group + heads)
    return Growth(new)


def insert_block(config: Config, name: str, after: str) -> Growth:
    """A new pre-norm block after block `after`: fresh reading kernels, zero output kernels.

    ``x + attn(norm(x)) @ 0`` is ``x`` exactly, and so is the MLP's half, so the block is an
    identity whatever its norms and reading kernels hold. The norms start at scale 1 (the
    preset's identity init of a norm); the kernels by ``leaf_rules``.
    """
    if name in config.blocks or after not in config.blocks:
        raise ValueError(f"insert_block: {name!r} must be a new block name and {after!r} one of "
                         f"{config.blocks}")
    blocks = list(config.blocks)
    blocks.insert(blocks.index(after) + 1, name)
    leaf_rules = {f"params/{name}/attn/{k}/kernel": "fresh" for k in "qkv"}
    leaf_rules |= {f"params/{name}/mlp/{k}/kernel": "fresh" for k in ("gate", "up")}
    leaf_rules |= {f"params/{name}/attn/o/kernel": "zeros", f"params/{name}/mlp/down/kernel": "zeros"}
    return Growth(dataclasses.replace(config, blocks=tuple(blocks)), leaf_rules=leaf_rules)


def grow_vocab(config: Config, added: int, offset: float = -20.0) -> Growth:
    """`added` new tokens: embedding rows at the mean of the old rows, output bias at the mean
    of the old biases plus `offset`.

    With tied embeddings a token's row is both its input embedding and its output projection,
    so the mean row gives a new token a logit equal to the mean of the old tokens' logits at
    every position: below the largest, never far below. Only a per-token output bias can push
    it down for every input; ``offset=-20`` puts a new token's probability below ``exp(-20)``
    times the most likely old token's. Without the bias (``output_bias=False``) the greedy token
    is kept but not the sampled distribution.
    """
    new = dataclasses.replace(config, vocab=config.vocab + added)
    return Growth(new, spaces={"out": (config.vocab, new.vocab)},
                  rules={"out": fs.mean(outgoing="mean", offset=offset)})


def grow(config: Config, variables: dict, growth: Growth, key: jax.Array) -> tuple[dict, fs.Plan]:
    """The grown model's variables, and the plan that made them."""
    fresh = init(growth.config, key)
    plan = fs.plan(variables, fresh, layout(config), new_layout=layout(growth.config),
                   spaces=growth.spaces, rules=growth.rules, leaf_rules=growth.leaf_rules)
    grown = fs.transplant(variables, plan, fresh)
    if growth.final_norm_factor != 1.0:
        scale = grown["params"]["final_norm"]["scale"] * growth.final_norm_factor
        grown = {**grown, "params": {**grown["params"],
                                     "final_norm": {**grown["params"]["final_norm"], "scale": scale}}}
    return grown, plan


def max_logit_diff(config: Config, variables: dict, growth: Growth, grown: dict, plan: fs.Plan,
                   tokens: jax.Array) -> fs.VerifyReport:
    """``fs.verify`` of the grown model against the old one on `tokens` (logits of old tokens)."""
    old = jax.jit(lambda t: apply_fn(config)(variables, t))
    new = jax.jit(lambda t: apply_fn(growth.config)(grown, t))
    return fs.verify(old, new, tokens, plan, outputs="out", x_new=tokens)
